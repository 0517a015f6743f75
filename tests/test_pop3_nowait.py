"""RETR and TOP of mail the kernel has not cached: the read goes to the
store's worker threads, everything else stays as it was.

The mailbox is a real Maildir behind ``Uncached``, an ``INoWaitRead``
whose reads tried without waiting say EAGAIN (``BlockingIOError``) for
the tries a test picks, as ``preadv2(RWF_NOWAIT)`` does for data not in
the page cache; the worker threads are ``HeldJobs``, whose jobs run when
the test says.  The bytes a client gets are compared with those of the
same commands in a session where every read was cached.  The reads
themselves (``txmailhub.store.nowait``) are tested on real files at the
end."""

from __future__ import annotations

import errno
import mmap
import os

import pytest
from page_cache import TRIES, drop_pages, until_not_cached
from test_pop3_reader_and_storage import HeldJobs, Realm, connect, logging_in, make_env
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.interfaces import IDowngradedSizes, IMailbox, IMailboxUpdate, INoWaitRead
from txmailhub.pop3 import replies as R
from txmailhub.pop3.protocol import CHUNK_SIZE, STOP_ANSWER_GRACE
from txmailhub.store import nowait

ALWAYS = "always"


@implementer(IMailbox, IMailboxUpdate, IDowngradedSizes, INoWaitRead)
class Uncached:
    """A ``MaildirMailbox`` whose tries without waiting numbered in
    ``uncached`` (0 the first of the session; ``ALWAYS``: every one) say
    the data is not cached, having read nothing.  ``plain_error``: what
    the plain reads (the worker's) raise instead of reading."""

    def __init__(self, box, uncached):
        self._box = box
        self.uncached = uncached
        self.tries = 0
        self.plain_error = None

    def __getattr__(self, name):
        return getattr(self._box, name)

    def _try(self):
        n, self.tries = self.tries, self.tries + 1
        if self.uncached == ALWAYS or n in self.uncached:
            raise BlockingIOError(errno.EAGAIN, "not cached")

    def read_message_nowait(self, index, limit):
        self._try()
        return self._box.read_message_nowait(index, limit)

    def read_nowait(self, file, size):
        self._try()
        return self._box.read_nowait(file, size)

    def read_message(self, index, limit):
        if self.plain_error is not None:
            raise self.plain_error
        return self._box.read_message(index, limit)


class UncachedRealm(Realm):
    def __init__(self, store, uncached):
        super().__init__(store)
        self.uncached = uncached
        self.boxes = []

    def requestAvatar(self, avatar_id, mind, *interfaces):
        def wrap(result):
            iface, box, logout = result
            self.boxes.append(Uncached(box, self.uncached))
            return iface, self.boxes[-1], logout
        return super().requestAvatar(avatar_id, mind, *interfaces).addCallback(wrap)


def env(tmp_path, messages, uncached=(), **pop3):
    """joe's Maildir with ``messages`` (stored bytes), his sessions' reads
    uncached as ``uncached`` says, and held worker jobs."""
    clock, components, md = make_env(tmp_path, **pop3)
    components.store.syncer = components.syncer = syncer = HeldJobs()
    for i, data in enumerate(messages):
        with open(os.path.join(md, "new", f"16000000{i:02d}.M1P1Q{i}.x"), "wb") as f:
            f.write(data)
    realm = UncachedRealm(components.store, uncached)
    db = InMemoryUsernamePasswordDatabaseDontUse(**{"joe@example.org": b"joepw"})
    components.portal = Portal(realm, [db])
    return clock, components, md, syncer, realm


_open_sessions = []


@pytest.fixture(autouse=True)
def _end_sessions():
    """Each test's sessions are dropped at its end (their locks let go)."""
    yield
    while _open_sessions:
        proto, syncer = _open_sessions.pop()
        if not proto._lost:
            proto.connectionLost(Failure(ConnectionDone()))
        syncer.holding = False
        syncer.run()


def session(components, syncer, utf8=False):
    """A logged-in session (its login job run at once), output cleared."""
    syncer.holding = False
    proto, t = connect(components)
    _open_sessions.append((proto, syncer))
    proto.dataReceived(b"UTF8\r\n" if utf8 else b"")
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert b"+OK Logged in" in bytes(t.received)
    t.received.clear()
    syncer.holding = True
    return proto, t


def cached_answer(tmp_path, messages, commands, utf8=False):
    """What a session whose every read is cached answers to ``commands``."""
    _clock, components, _md, syncer, _realm = env(tmp_path / "cached", messages)
    proto, t = session(components, syncer, utf8)
    proto.dataReceived(commands)
    run_all(syncer)  # none but a long UTF-8 header section's downgrade
    assert proto._disk_waits == 0
    return bytes(t.received)


def run_all(syncer, limit=100):
    """Run the held jobs, and the ones they lead to, one at a time."""
    for _ in range(limit):
        if not syncer.jobs:
            return
        syncer.run_one(0)
    raise AssertionError("jobs keep coming")


SMALL = b"Subject: small\n\n.leading dot\nhello\n"
# over a chunk: streamed, with dot-stuffing across chunk boundaries
BIG = b"Subject: big\n\n" + b"".join(b".%06d line\n" % i for i in range(20_000))
assert len(BIG) > 3 * CHUNK_SIZE


def test_small_retr_not_cached_is_answered_after_the_worker_read_it(tmp_path):
    """The reply waits for the job; the bytes are those of a cached RETR."""
    expected = cached_answer(tmp_path, [SMALL], b"RETR 1\r\n")
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received) == b""  # nothing before the read
    assert len(syncer.jobs) == 1
    syncer.run_one()
    assert bytes(t.received) == expected
    assert expected.startswith(b"+OK") and b"\r\n..leading dot\r\n" in expected
    assert realm.boxes[0].tries == 1


def test_a_streamed_retr_whose_chunks_are_not_cached_sends_the_same_bytes(tmp_path):
    """The first chunk and a later one uncached: each waits for its job
    (read and encoded on the worker), the rest goes on from the reactor
    thread, and the client gets exactly what a cached RETR sends."""
    expected = cached_answer(tmp_path, [BIG], b"RETR 1\r\n")
    _clock, components, _md, syncer, _realm = env(tmp_path, [BIG], uncached={0, 2, 3})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received) == b"" and len(syncer.jobs) == 1
    syncer.run_one()  # the first chunk: +OK, that chunk and the next one sent
    sent = len(t.received)
    assert 0 < sent < len(expected) and len(syncer.jobs) == 1
    syncer.run_one()  # the third
    assert sent < len(t.received) < len(expected) and len(syncer.jobs) == 1
    run_all(syncer)
    assert bytes(t.received) == expected
    assert expected.endswith(b"\r\n.\r\n") and b"\r\n..019999 line\r\n" in expected


def test_a_retr_read_on_the_worker_when_the_hub_stops_is_sent_then_err(tmp_path):
    """The stop comes while RETR's read waits for the disk: the message
    goes out once read, then the stop's -ERR and a FIN; the QUIT
    pipelined behind it is not handled (nothing deleted)."""
    expected = cached_answer(tmp_path, [SMALL], b"RETR 1\r\n")
    _clock, components, md, syncer, _realm = env(tmp_path, [SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    stopped = proto.factory.shut_down()
    assert bytes(t.received) == b"" and not t.disconnecting
    syncer.run_one()
    assert bytes(t.received) == expected + R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.aborted
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)  # the seen flag, at the session's end
    assert stopped.called
    assert len(os.listdir(os.path.join(md, "cur"))) == 1  # retrieved, not deleted


def test_a_retr_read_on_the_worker_at_the_stop_is_read_by_the_client_before_the_err(tmp_path):
    """The message read on the worker as the hub stops fills the client's
    buffer (it does not read yet): the stop's -ERR and FIN wait until it
    has read it, within the answer's grace, not the close's shorter one
    from the moment it was written."""
    expected = cached_answer(tmp_path, [SMALL], b"RETR 1\r\n")
    clock, components, _md, syncer, _realm = env(tmp_path, [SMALL], uncached={0})
    proto, t = session(components, syncer)
    t.clear()
    t.limit = 10  # its message alone fills what the client has not read
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    stopped = proto.factory.shut_down()
    syncer.run_one()
    assert bytes(t.received) == expected and not t.disconnecting
    clock.advance(STOP_ANSWER_GRACE - 1)  # past the close's grace (2 s)
    assert bytes(t.received) == expected and not t.disconnecting and not t.aborted
    t.read(proto)
    assert bytes(t.received) == expected + R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.aborted
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    assert stopped.called


def test_a_long_utf8_header_downgraded_on_the_worker_at_the_stop_is_sent_then_err(tmp_path):
    """The stop comes while RETR's first chunk is read on the worker, and
    its header section, UTF-8 and longer than a chunk, is then downgraded
    on the worker too (a client without UTF8): the session waits for that
    second job before the stop's -ERR, and the message goes out whole."""
    long_utf8 = b"Subject: " + "\u00e9".encode() * CHUNK_SIZE + b"\n\nbody\n"
    expected = cached_answer(tmp_path, [long_utf8], b"RETR 1\r\n")
    _clock, components, _md, syncer, _realm = env(tmp_path, [long_utf8], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    stopped = proto.factory.shut_down()
    syncer.run_one()  # the first chunk: the downgrade's job follows
    assert bytes(t.received) == b"" and not t.disconnecting and syncer.jobs
    run_all(syncer)
    assert bytes(t.received) == expected + R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.aborted
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    assert stopped.called


@pytest.mark.parametrize("messages, uncached", [([SMALL], {0}), ([BIG], {1})])
def test_a_read_back_from_the_worker_after_the_stop_cut_its_session_writes_nothing(
        tmp_path, messages, uncached):
    """The stop's grace is over while RETR's read (the whole message, or a
    chunk of a streamed one) waits for the disk: the session is cut.  A
    read back before the cut connection is gone (its ``connectionLost``
    comes a reactor turn later, and the workers' results are taken first)
    wrote the message to the aborted transport, and a streamed one's
    next chunks were read for it until its buffer was full; the file is
    closed and nothing written now."""
    clock, components, _md, syncer, realm = env(tmp_path, messages, uncached=uncached)
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert len(syncer.jobs) == 1
    sent = len(t.received)
    stopped = proto.factory.shut_down()
    clock.advance(STOP_ANSWER_GRACE)
    assert t.aborted and not stopped.called
    tries = realm.boxes[0].tries
    syncer.run_one()
    assert len(t.received) == sent and realm.boxes[0].tries == tries
    assert not syncer.jobs
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    assert stopped.called


def test_top_not_cached_counts_its_lines_as_before(tmp_path):
    expected = cached_answer(tmp_path, [SMALL, BIG], b"TOP 1 1\r\nTOP 2 7000\r\n")
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, BIG], uncached=ALWAYS)
    proto, t = session(components, syncer)
    proto.dataReceived(b"TOP 1 1\r\nTOP 2 7000\r\n")
    assert bytes(t.received) == b""
    run_all(syncer)
    assert bytes(t.received) == expected
    assert expected.count(b"\r\n.\r\n") == 2


def test_pipelined_commands_wait_for_the_read_and_are_answered_in_order(tmp_path):
    commands = b"RETR 1\r\nNOOP\r\nRETR 2\r\nSTAT\r\nRETR 1\r\n"
    expected = cached_answer(tmp_path, [SMALL, BIG], commands)
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, BIG], uncached={0, 1})
    proto, t = session(components, syncer)
    proto.dataReceived(commands)
    assert bytes(t.received) == b""  # not even the NOOP's +OK
    syncer.run_one()
    # RETR 1 sent, NOOP answered, RETR 2 waits for its first chunk
    assert bytes(t.received) == expected[:len(t.received)]
    assert bytes(t.received).count(b"+OK") == 2 and len(syncer.jobs) == 1
    run_all(syncer)
    assert bytes(t.received) == expected


def test_a_client_without_utf8_gets_the_downgraded_copy_after_the_read(tmp_path):
    """RFC 6857: the header section is downgraded on the reactor thread
    once the worker read the message, as for a cached one."""
    data = "Subject: caf\u00e9\nFrom: J\u00f6 <joe@example.org>\n\nbody\n".encode()
    expected = cached_answer(tmp_path, [data, BIG], b"RETR 1\r\nLIST 1\r\n")
    assert b"=?utf-8?" in expected.lower()
    _clock, components, _md, syncer, _realm = env(tmp_path, [data, BIG], uncached=ALWAYS)
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nLIST 1\r\n")
    run_all(syncer)
    assert bytes(t.received) == expected


def test_a_message_removed_before_the_worker_read_it_is_message_gone(tmp_path):
    _clock, components, md, syncer, _realm = env(tmp_path, [SMALL, SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    for name in os.listdir(os.path.join(md, "new")):
        if ".M1P1Q0." in name:
            os.unlink(os.path.join(md, "new", name))  # another program
    syncer.run_one()
    assert bytes(t.received) == R.MESSAGE_GONE.to_bytes() + b"+OK\r\n"


def test_a_read_that_fails_on_the_worker_is_the_read_failed_err(tmp_path, log_events):
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL], uncached={0})
    proto, t = session(components, syncer)
    realm.boxes[0].plain_error = OSError(errno.EIO, "Input/output error")
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    syncer.run_one()
    assert bytes(t.received) == R.MESSAGE_READ_FAILED.to_bytes() + b"+OK\r\n"
    lines = [formatEvent(e) for e in log_events]
    assert "POP3 cannot read message 1 of joe@example.org: [Errno 5] Input/output error" in lines


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_a_client_that_leaves_while_a_chunk_is_read_gets_nothing_more(tmp_path):
    """The file stays open for the worker that reads it, and is closed
    when the job is back; nothing is written after the hang-up."""
    _clock, components, _md, syncer, _realm = env(tmp_path, [BIG], uncached={1})
    before = open_descriptors()
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert len(syncer.jobs) == 1 and not t.disconnecting
    sent = len(t.received)
    stream = proto._stream
    proto.stopProducing()  # what the transport does as it goes
    proto.connectionLost(Failure(ConnectionDone()))
    assert not stream.file.closed  # the worker may be reading it
    run_all(syncer)  # the chunk's job, then the session end's
    assert stream.file.closed
    assert len(t.received) == sent
    assert open_descriptors() == before


def test_a_client_that_leaves_while_a_small_message_is_read_gets_nothing(tmp_path):
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL], uncached={0})
    before = open_descriptors()
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    assert bytes(t.received) == b""
    assert open_descriptors() == before


def test_a_resume_while_a_chunk_is_read_reads_nothing_twice(tmp_path):
    """Flow control: the transport resumes its producer while the worker
    reads the next chunk; nothing else is read, and the bytes are right."""
    expected = cached_answer(tmp_path, [BIG], b"RETR 1\r\n")
    _clock, components, _md, syncer, realm = env(tmp_path, [BIG], uncached={1})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    proto.pauseProducing()
    proto.resumeProducing()
    assert len(syncer.jobs) == 1 and realm.boxes[0].tries == 2
    proto.pauseProducing()  # the client stops reading meanwhile
    syncer.run_one()
    tries = realm.boxes[0].tries
    assert tries == 2  # paused: the chunk is sent, no more read
    proto.resumeProducing()
    run_all(syncer)
    assert bytes(t.received) == expected


def test_the_idle_timer_does_not_cut_a_client_waiting_for_its_data(tmp_path):
    """A client waiting for a chunk from a slow disk is not idle (RFC 1939
    3 counts the client's inactivity): no autologout while the job runs,
    and the whole timeout after the data came."""
    clock, components, _md, syncer, _realm = env(tmp_path, [BIG], uncached={1}, idle_timeout=600)
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert len(syncer.jobs) == 1
    for _ in range(5):
        clock.advance(600)
    assert not t.disconnecting and not proto._lost
    run_all(syncer)
    clock.advance(599)
    assert not t.disconnecting
    assert bytes(t.received).endswith(b"\r\n.\r\n")


def test_the_session_end_says_how_many_reads_were_not_cached(tmp_path, log_events):
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, BIG], uncached={0, 1, 3})
    proto, _t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nQUIT\r\n")
    run_all(syncer)
    lines = [formatEvent(e) for e in log_events if "POP3 logout" in formatEvent(e)]
    assert lines == ["POP3 logout joe@example.org from 127.0.0.1: 0 messages deleted "
                     "(3 reads of uncached mail on a worker thread)"]


def test_cached_reads_take_no_job(tmp_path):
    """The common case: mail the kernel holds is read on the reactor
    thread, with no hand-off to a worker."""
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL, BIG])
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nTOP 2 3\r\n")
    assert syncer.jobs == [] and realm.boxes[0].tries > 3
    assert bytes(t.received).count(b"\r\n.\r\n") == 3


# -- the reads themselves, on real files ---------------------------------------


@pytest.fixture
def learnt_afresh():
    nowait._set(None)
    yield
    nowait._set(None)


needs_flag = pytest.mark.skipif(getattr(os, "RWF_NOWAIT", None) is None,
                                reason="no RWF_NOWAIT here")


@needs_flag
def test_reads_of_cached_files_are_plain_reads(tmp_path, learnt_afresh):
    path = tmp_path / "m"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nowait.pread_nowait(fd, 1000, 5) == data[5:1005]
        assert nowait.pread_nowait(fd, len(data) + 1, 0) == data
        assert nowait.pread_nowait(fd, 10, len(data)) == b""
    finally:
        os.close(fd)
    with open(path, "rb", buffering=0) as f:
        assert nowait.read_nowait(f, CHUNK_SIZE) == data[:CHUNK_SIZE]
        assert f.tell() == CHUNK_SIZE
        assert nowait.read_nowait(f, len(data)) == data[CHUNK_SIZE:]
        assert nowait.read_nowait(f, 10) == b""


@needs_flag
def test_a_read_partly_cached_reads_nothing(tmp_path, learnt_afresh, monkeypatch):
    """The kernel gives what it holds (a short read) and says EAGAIN for
    the rest: the file is left where it was, so a worker's plain read
    gets the same octets."""
    path = tmp_path / "m"
    path.write_bytes(b"x" * 10_000)
    real = os.preadv
    calls = []
    # the kernel's short reads end where a page the cache holds ends
    short = [mmap.PAGESIZE - 7, mmap.PAGESIZE]

    def short_then_eagain(fd, buffers, offset, flags=0):
        calls.append(offset)
        if len(calls) == 1:
            return real(fd, [memoryview(buffers[0])[:short[0]]], offset, flags)
        raise BlockingIOError(errno.EAGAIN, "not cached")

    monkeypatch.setattr(os, "preadv", short_then_eagain)
    with open(path, "rb", buffering=0) as f:
        f.seek(7)
        with pytest.raises(BlockingIOError):
            nowait.read_nowait(f, mmap.PAGESIZE + 1000)
        assert f.tell() == 7
    calls.clear()
    short.pop(0)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            nowait.pread_nowait(fd, mmap.PAGESIZE + 1000, 0)
        assert calls == [0, mmap.PAGESIZE]
    finally:
        os.close(fd)


def count_preadv(monkeypatch) -> list[tuple[int, int]]:
    """Every ``os.preadv`` from now on, as ``(offset, flags)``, made as it
    would be."""
    real = os.preadv
    calls: list[tuple[int, int]] = []

    def counted(fd, buffers, at, flags=0):
        calls.append((at, flags))
        return real(fd, buffers, at, flags)

    monkeypatch.setattr(os, "preadv", counted)
    return calls


@needs_flag
@pytest.mark.parametrize("size, offset", [(1024, 0), (1, 0), (mmap.PAGESIZE + 5, 0),
                                          (3000, 100)])
def test_a_read_that_ends_within_a_page_is_one_system_call(
        tmp_path, learnt_afresh, monkeypatch, size, offset):
    """A short read that stops within a page stopped at the end of the
    file (the cache holds whole pages): no second ``preadv2`` is made to
    hear 0 there.  The small message RETR reads whole (a buffer one
    octet longer than its CRLF size) is read with one."""
    path = tmp_path / "m"
    data = bytes(range(256)) * (size // 256 + 1)
    path.write_bytes(data[:size])
    calls = count_preadv(monkeypatch)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = nowait.pread_nowait(fd, size - offset + 20, offset)
    finally:
        os.close(fd)
    assert got == data[offset:size]
    assert calls == [(offset, os.RWF_NOWAIT)]


@needs_flag
def test_a_small_retr_reads_its_message_with_one_system_call(tmp_path, learnt_afresh,
                                                              monkeypatch):
    """RETR of a small message the kernel holds: open, one ``preadv2``,
    close, and the bytes a session whose reads are plain ones sends."""
    nowait._set(False)  # plain reads
    expected = cached_answer(tmp_path, [SMALL], b"RETR 1\r\n")
    nowait._set(None)
    assert expected.startswith(b"+OK ")
    assert expected.endswith(b"\r\n..leading dot\r\nhello\r\n.\r\n")
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL])
    proto, t = session(components, syncer)
    calls = count_preadv(monkeypatch)
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received) == expected
    assert [at for at, _ in calls] == [0] and syncer.jobs == []


@needs_flag
def test_a_read_that_ends_at_a_page_boundary_asks_for_the_rest(
        tmp_path, learnt_afresh, monkeypatch):
    """At a page boundary a short read may be the end of what the cache
    holds: the rest is asked for (here it is the end of the file)."""
    path = tmp_path / "m"
    path.write_bytes(b"p" * mmap.PAGESIZE)
    calls = count_preadv(monkeypatch)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nowait.pread_nowait(fd, mmap.PAGESIZE + 1, 0) == b"p" * mmap.PAGESIZE
    finally:
        os.close(fd)
    assert [at for at, _ in calls] == [0, mmap.PAGESIZE]


@pytest.mark.parametrize("code, everywhere", [
    (errno.EOPNOTSUPP, False),  # the filesystem of the file (tmpfs, NFS)
    (errno.ENOSYS, True),  # the kernel: no filesystem is tried again
])
def test_a_kernel_that_refuses_the_flag_gets_plain_reads_from_then_on(
        tmp_path, learnt_afresh, monkeypatch, log_events, code, everywhere):
    path = tmp_path / "m"
    path.write_bytes(b"y" * 5000)
    refused = []

    def refuse(fd, buffers, offset, flags=0):
        refused.append(offset)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "preadv", refuse)
    monkeypatch.setattr(nowait, "_FLAG", 8)
    with open(path, "rb", buffering=0) as f:
        assert nowait.read_nowait(f, 4000) == b"y" * 4000
        assert nowait.read_nowait(f, 4000) == b"y" * 1000
    fd = os.open(path, os.O_RDONLY)
    try:
        assert nowait.pread_nowait(fd, 10, 0) == b"y" * 10
    finally:
        os.close(fd)
    assert len(refused) == 1  # decided once
    assert nowait.nowait_available() is not everywhere
    assert len([e for e in log_events if "RWF_NOWAIT" in formatEvent(e)]) == 1


@needs_flag
def test_a_page_cache_drop_is_seen_as_not_cached(tmp_path, learnt_afresh):
    """On a filesystem that honours POSIX_FADV_DONTNEED (ext4, XFS) and
    RWF_NOWAIT: the read says EAGAIN, and a plain read after it gets the
    data.  (The kernel starts reading the data in as it says EAGAIN: a
    worker's read that comes a little later may find it cached.)"""
    path = tmp_path / "m"
    path.write_bytes(b"z" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        if not until_not_cached(fd, lambda: nowait.pread_nowait(fd, 1000, 0)):
            pytest.skip(f"RWF_NOWAIT is refused here, or the page cache kept the file's "
                        f"pages, or the disk answered each of {TRIES} reads at once")
        assert nowait.nowait_available()
        assert os.pread(fd, 1000, 0) == b"z" * 1000
    finally:
        os.close(fd)


LONG_HEADER = b"".join(b"X-Long-%05d: %s\n" % (i, b"v" * 60) for i in range(1500))  # ~110 KB


@pytest.mark.parametrize("subject", [b"plain", "caf\u00e9".encode()])
def test_a_long_header_section_not_cached_is_scanned_on_the_worker(tmp_path, subject):
    """A client without UTF8, a header section longer than a chunk: its
    scan, the first chunk read again after it, and the streaming all go
    to the worker when not cached; the bytes are those of a cached RETR
    (as stored for an ASCII section, downgraded for a UTF-8 one)."""
    data = b"Subject: " + subject + b"\n" + LONG_HEADER + b"\n" + BIG
    expected = cached_answer(tmp_path, [data], b"RETR 1\r\nNOOP\r\n")
    assert expected.endswith(b"\r\n.\r\n+OK\r\n")
    _clock, components, _md, syncer, _realm = env(tmp_path, [data], uncached=ALWAYS)
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    assert bytes(t.received) == b""
    run_all(syncer)
    assert bytes(t.received) == expected
    assert proto._disk_waits >= 3


# -- LIST and STAT sizes for a client without UTF8 (a small mailbox) -----------

INTL = "Subject: caf\u00e9\nFrom: J\u00f6 <joe@example.org>\n\nbody\n".encode()


def test_list_sizes_not_cached_are_measured_on_the_worker(tmp_path):
    """A client without UTF8 gets the downgraded copy's size (RFC 6857),
    which means reading each message's header section: where the kernel
    has not cached one, the sizes are measured on a worker thread and
    LIST (and what was pipelined after it) waits for them."""
    commands = b"LIST\r\nNOOP\r\nSTAT\r\nLIST 2\r\n"
    expected = cached_answer(tmp_path, [SMALL, INTL, SMALL], commands)
    assert expected.split(b"\r\n")[2] != b"2 %d" % (len(INTL) + INTL.count(b"\n"))
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL, INTL, SMALL], uncached={1})
    proto, t = session(components, syncer)
    proto.dataReceived(commands)
    assert bytes(t.received) == b"" and len(syncer.jobs) == 1
    syncer.run_one()
    assert bytes(t.received) == expected
    assert realm.boxes[0].tries == 2  # the first message's read, the second's EAGAIN
    assert syncer.jobs == []


def test_sizes_are_not_measured_for_commands_that_do_not_report_them(tmp_path):
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL, INTL], uncached=ALWAYS)
    proto, t = session(components, syncer)
    proto.dataReceived(b"UIDL\r\nNOOP\r\n")
    assert syncer.jobs == [] and realm.boxes[0].tries == 0
    assert bytes(t.received).endswith(b"\r\n.\r\n+OK\r\n")


def test_a_client_that_leaves_while_its_sizes_are_measured_gets_nothing(tmp_path):
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, INTL], uncached={0})
    before = open_descriptors()
    proto, t = session(components, syncer)
    proto.dataReceived(b"STAT\r\nQUIT\r\n")
    assert len(syncer.jobs) == 1
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    assert bytes(t.received) == b""
    assert open_descriptors() == before


def test_the_engine_says_which_command_reports_sizes():
    from txmailhub.pop3.server import POP3Server

    engine = POP3Server(hostname="h", timestamp="", plaintext_allowed=True,
                        tls_available=False, tls_active=False, max_auth_failures=3,
                        auth_failure_delay=0, auth_failures=0, primary_domain="example.org")
    engine.greeting()
    engine.receive_data(b"LIST\r\n")
    assert not engine.next_needs_sizes()  # not logged in
    engine.next_action()
    engine.receive_data(b"USER joe\r\nPASS pw\r\n")
    engine.next_action()
    engine.next_action()
    engine.login_succeeded([], lambda index: 0)
    for line, wanted in [(b"stat", True), (b"LIST 1", True), (b"rset", True),
                         (b"LISTX", False), (b"UIDL", False), (b"RETR 1", False),
                         (b"      ", False), (b"", False)]:
        engine.receive_data(line + b"\r\n")
        assert engine.next_needs_sizes() is wanted, line
        assert engine.has_line  # peeked, not taken
        engine.next_action()


def test_no_command_needs_sizes_without_a_size_of():
    # a login given no size_of: the stored sizes are the ones reported,
    # nothing is there to measure first
    from txmailhub.pop3.server import POP3Server

    engine = POP3Server(hostname="h", timestamp="", plaintext_allowed=True,
                        primary_domain="example.org")
    engine.receive_data(b"USER joe\r\nPASS pw\r\n")
    engine.next_action()
    engine.next_action()
    engine.login_succeeded([])
    for line in (b"STAT", b"LIST", b"RSET"):
        engine.receive_data(line + b"\r\n")
        assert not engine.next_needs_sizes(), line
        engine.next_action()


def test_a_syncer_that_runs_jobs_at_once_streams_and_lists_all_the_same(tmp_path):
    """An application's syncer (or ``SyncerSpy``) may run a job at once,
    on the reactor thread: the session goes on from there -- every chunk
    of a long message not cached, without a frame of the stack each (and
    below, the commands after a LIST whose sizes were not cached)."""
    huge = b"Subject: huge\n\n" + b"".join(b".%07d\n" % i for i in range(300_000))
    commands = b"RETR 1\r\nLIST\r\nNOOP\r\nRETR 2\r\nNOOP\r\n"
    expected = cached_answer(tmp_path, [huge, INTL], commands)
    _clock, components, _md, syncer, _realm = env(tmp_path, [huge, INTL], uncached=ALWAYS)
    proto, t = session(components, syncer)
    syncer.holding = False  # each job runs as it is asked for
    depth = []
    real = proto._chunk_back

    def spy(result, stream):
        import inspect
        depth.append(len(inspect.stack(0)))
        return real(result, stream)

    proto._chunk_back = spy
    proto.dataReceived(commands)
    assert bytes(t.received) == expected
    assert len(depth) > 40 and max(depth) - min(depth) <= 2


def test_a_syncer_that_runs_jobs_at_once_answers_after_a_list_not_cached(tmp_path):
    commands = b"LIST\r\nNOOP\r\nRETR 2\r\nNOOP\r\n"
    expected = cached_answer(tmp_path, [SMALL, INTL], commands)
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, INTL], uncached={0})
    proto, t = session(components, syncer)
    syncer.holding = False  # each job runs as it is asked for
    proto.dataReceived(commands)
    assert bytes(t.received) == expected


class _Stat:
    def __init__(self, st_dev):
        self.st_dev = st_dev


def test_a_filesystem_that_refuses_the_flag_leaves_it_on_for_the_others(
        tmp_path, learnt_afresh, monkeypatch, log_events):
    """The flag is refused by a filesystem, not by the kernel alone: tmpfs
    refuses it where ext4 takes it (Linux 6.x), and a Maildir may be on
    another mount than the rest.  A refusal on one makes that one's reads
    plain ones (logged once for it); reads on the others still say EAGAIN
    rather than wait.  A refusal once turned the flag off for the whole
    process, every Maildir's reads back on the main thread."""
    refusing, other = tmp_path / "on-tmpfs", tmp_path / "on-ext4"
    refusing.write_bytes(b"r" * 5000)
    other.write_bytes(b"o" * 5000)
    fd_r, fd_o = os.open(refusing, os.O_RDONLY), os.open(other, os.O_RDONLY)
    devices = {fd_r: 7, fd_o: 8}
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: _Stat(devices[fd]) if fd in devices
                        else real_fstat(fd))
    tried = []

    def preadv(fd, buffers, offset, flags=0):
        tried.append(fd)
        if fd == fd_r:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        raise BlockingIOError(errno.EAGAIN, "not cached")

    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(nowait, "_FLAG", 8)
    nowait._set(None)
    try:
        assert nowait.pread_nowait(fd_r, 10, 0) == b"r" * 10  # refused: a plain read
        with pytest.raises(BlockingIOError):
            nowait.pread_nowait(fd_o, 10, 0)
        assert nowait.pread_nowait(fd_r, 10, 0) == b"r" * 10
        with open(other, "rb", buffering=0) as f:
            devices[f.fileno()] = 8
            with pytest.raises(BlockingIOError):
                nowait.read_nowait(f, 10)
            assert f.tell() == 0
    finally:
        os.close(fd_r)
        os.close(fd_o)
    assert tried.count(fd_r) == 1  # the refusing one is not asked again
    assert nowait.nowait_available()
    refusals = [formatEvent(e) for e in log_events if "RWF_NOWAIT" in formatEvent(e)]
    assert len(refusals) == 1 and "device 0:7" in refusals[0], refusals


def test_lists_waiting_for_the_disk_hold_up_no_other_users_login(tmp_path):
    """Two clients without UTF8 whose LIST waits for header sections not
    cached (a hung disk: their jobs never come back) take none of the
    ``WORKER_JOBS`` that measuring sizes and downgrading share: a third
    user's login to a large mailbox, measured at the login on a worker,
    still gets its +OK.  Those reads had taken both, and every such login
    and downgrade of the hub waited for the disk."""
    from test_pop3_reader_and_storage import connect

    from txmailhub.address import Address
    from txmailhub.pop3.protocol import INLINE_SIZES

    many = [SMALL] * (INLINE_SIZES + 1)
    _clock, components, _md, syncer, _realm = env(tmp_path, many, uncached={0})
    db = next(iter(components.portal.checkers.values()))
    hung = []
    for name in ("ann", "bob"):
        db.addUser(f"{name}@example.org".encode(), b"pw")
        md = components.store.maildir_path(Address(name, "example.org"))
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        for i, data in enumerate([SMALL, INTL]):
            with open(os.path.join(md, "new", f"17000000{i:02d}.M1P1Q{i}.x"), "wb") as f:
                f.write(data)
        syncer.holding = False
        proto, t = connect(components)
        _open_sessions.append((proto, syncer))
        proto.dataReceived(b"USER %s\r\nPASS pw\r\n" % name.encode())
        assert b"+OK Logged in" in bytes(t.received)
        syncer.holding = True
        t.received.clear()
        proto.dataReceived(b"LIST\r\n")
        assert bytes(t.received) == b""  # its sizes' job hangs
        hung.append(proto)
    assert len(syncer.jobs) == 2
    proto, t = session(components, syncer)  # joe's +OK: his sizes measured at the login
    assert proto._sizes[INLINE_SIZES] >= 0


@needs_flag
def test_a_tmpfs_file_read_first_leaves_the_flag_on_for_a_disk(tmp_path, learnt_afresh):
    """The same on real filesystems, where they are at hand: a file on
    tmpfs (``/dev/shm``, which refuses the flag on Linux 6.18), then one
    on the disk of the test's folder whose pages were dropped."""
    import tempfile

    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no tmpfs beside the test's folder")
    path = tmp_path / "m"
    path.write_bytes(b"z" * 100_000)
    with tempfile.TemporaryFile(dir=shm) as t, open(path, "rb", buffering=0) as d:
        t.write(b"t" * 100)
        t.flush()
        try:
            os.preadv(t.fileno(), [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            pytest.skip("tmpfs says EAGAIN here")
        except OSError:
            pass  # refused, as expected
        else:
            pytest.skip("tmpfs takes the flag here")
        disk = d.fileno()
        try:  # does the test's folder take the flag?
            os.preadv(disk, [bytearray(1)], 50_000, os.RWF_NOWAIT)
        except BlockingIOError:
            pass
        except OSError:
            pytest.skip("the test's folder refuses the flag too")
        if not drop_pages(disk):
            pytest.skip("the page cache kept pages of the file here")
        assert nowait.pread_nowait(t.fileno(), 100, 0) == b"t" * 100  # a plain read

        def read_from_the_start() -> bytes:
            d.seek(0)
            return nowait.read_nowait(d, 1000)

        # a read that does not use the flag (turned off for every
        # filesystem) gets the data each time; one that does may too, now
        # and then, on a loaded machine (``until_not_cached``)
        assert until_not_cached(disk, read_from_the_start)
        assert d.tell() == 0


# -- sizes at the edges: the bytes of a session whose reads were not cached
# are those of one whose reads were

_EXACT = b"Subject: x\n\n" + b"a" * (CHUNK_SIZE - 13) + b"\n"  # one chunk, to the octet
_EDGES = [
    b"",  # 0 octets
    _EXACT,
    _EXACT + b"b",  # a chunk and one octet
    b"Subject: y\n\n" + b"\n" * (CHUNK_SIZE - 100),  # under a chunk stored, over it with CRLF
    b"Subject: only a header section",
    INTL,
    BIG,
]


def _answers(tmp_path, messages, commands, utf8, uncached):
    """All a session answers to ``commands``, its jobs run and the next
    turns of the reactor let come (one downgrade a turn)."""
    clock, components, _md, syncer, _realm = env(tmp_path, messages, uncached=uncached)
    proto, t = session(components, syncer, utf8)
    proto.dataReceived(commands)
    for _ in range(20):
        run_all(syncer)
        clock.advance(0)
    return bytes(t.received), proto._disk_waits


@pytest.mark.parametrize("utf8", [False, True])
@pytest.mark.parametrize("uncached", [ALWAYS, {1, 3}])
@pytest.mark.parametrize("command", [b"RETR %d", b"TOP %d 0", b"TOP %d 99999999999"])
def test_messages_at_the_edges_not_cached_send_the_same_bytes(tmp_path, utf8, uncached, command):
    assert len(_EXACT) == CHUNK_SIZE
    commands = b"".join(command % (i + 1) + b"\r\n" for i in range(len(_EDGES)))
    commands += b"LIST\r\nQUIT\r\n"
    expected, waits = _answers(tmp_path / "cached", _EDGES, commands, utf8, ())
    assert expected.endswith(b"\r\n.\r\n+OK Bye (7 messages left)\r\n") and not waits
    got, waits = _answers(tmp_path, _EDGES, commands, utf8, uncached)
    assert got == expected
    assert waits > 0


def test_a_long_utf8_header_section_list_measures_reads_on_without_waiting(tmp_path):
    """A client without UTF8, a small mailbox, a message whose UTF-8
    header section is longer than the 8 KiB read first: measuring the
    size of its downgraded copy reads on, and that read too says EAGAIN
    where the kernel has not cached it -- the size is then measured on a
    worker and LIST waits for it.  That read was a plain one on the
    reactor thread, which held every session while the disk hung."""
    data = "Subject: caf\u00e9\n".encode() + LONG_HEADER[:20_000] + b"\nbody\n"
    commands = b"LIST\r\nNOOP\r\n"
    expected = cached_answer(tmp_path, [SMALL, data], commands)
    _clock, components, _md, syncer, realm = env(tmp_path, [SMALL, data], uncached={2})
    proto, t = session(components, syncer)
    proto.dataReceived(commands)
    assert realm.boxes[0].tries == 3  # SMALL's 8 KiB, data's, and the rest of data's
    assert bytes(t.received) == b"" and len(syncer.jobs) == 1
    syncer.run_one()
    assert bytes(t.received) == expected
    assert proto._disk_waits == 1


def _second_login(components, syncer):
    """Another session of joe's: its login job run at once, the held
    ones left waiting.  The session and its transport."""
    syncer.holding = False
    try:
        proto, t = logging_in(components)
    finally:
        syncer.holding = True
    _open_sessions.append((proto, syncer))
    return proto, t


@pytest.mark.parametrize("message", [SMALL, BIG], ids=["whole", "streamed"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "fin-then-reset"])
def test_a_client_that_closes_while_its_read_waits_for_the_disk_lets_the_lock_go(
        tmp_path, log_events, message, reset):
    """A client that closes (a FIN: a full close looks the same as a
    half-close) while its RETR waits for a hung disk, with no command
    behind it, can send no QUIT: no UPDATE state can come, and nothing the
    read does needs the lock.  It goes at once, as before the half-close
    was answered: a login of the same user gets in before the disk
    answers (it was told IN-USE until then), and keeps the lock when the
    late read comes back.  That read is still sent to a client that only
    half-closed; after a reset (the full close seen) nothing is written,
    nothing raised or logged as an error, and the lock not let go twice."""
    _clock, components, _md, syncer, realm = env(tmp_path, [message], uncached={0, 1})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert len(syncer.jobs) == 1  # the read, waiting for the disk
    tries = realm.boxes[0].tries
    proto.readConnectionLost()
    assert proto.mailbox is None  # let go at once
    second, t2 = _second_login(components, syncer)
    assert b"+OK Logged in" in bytes(t2.received)
    if reset:
        proto.connectionLost(Failure(ConnectionDone()))
    sent = len(t.received)
    run_all(syncer)  # the disk answers
    if reset:
        assert len(t.received) == sent
    else:
        assert bytes(t.received).startswith(b"+OK")
        assert bytes(t.received).endswith(b"\r\n.\r\n")
        assert t.disconnecting  # all answered: closed
        if message is BIG:
            # the rest of the message is still read without waiting for
            # the disk on the reactor thread (a chunk not cached: a job)
            assert realm.boxes[0].tries > tries
    assert second.mailbox is not None and not second.mailbox.closed
    _third, t3 = _second_login(components, syncer)
    assert b"-ERR [IN-USE]" in bytes(t3.received)
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


def test_a_half_closed_clients_late_read_of_a_message_grown_since_its_listing_is_answered(
        tmp_path, log_events):
    """The lock goes at the half-close while a small message's read waits
    for the disk (above); if that read finds the file longer than it was
    listed (rewritten meanwhile) the message is opened again.  That open
    went through the session's mailbox, gone with the lock: the
    half-closed client got ``-ERR`` and an error was logged for an
    ``AttributeError``; it is opened through the mailbox the answer still
    reads with, and found another length than listed: refused for the
    session (RFC 1939 5, not sent at another size than listed)."""
    _clock, components, md, syncer, _realm = env(tmp_path, [SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\n")
    assert len(syncer.jobs) == 1  # the read, waiting for the disk
    proto.readConnectionLost()
    assert proto.mailbox is None  # let go at once
    path = os.path.join(md, "new", "1600000000.M1P1Q0.x")
    with open(path, "ab") as f:
        f.write(b"x" * CHUNK_SIZE + b"\n")
    run_all(syncer)
    # (an open that went through the mailbox let go gave MESSAGE_READ_FAILED)
    assert bytes(t.received) == R.MESSAGE_SIZE_CHANGED.to_bytes()
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


_BEHIND = (b"LIST\r\nUIDL 2\r\nTOP 2 0\r\nRETR 3\r\nDELE 1\r\nSTAT\r\nRSET\r\nDELE 2\r\n"
           b"NOOP\r\nFOO\r\n")


@pytest.mark.parametrize("uncached", [{0}, ALWAYS], ids=["its-read", "every-read"])
@pytest.mark.parametrize("utf8", [False, True])
def test_a_client_that_closes_with_commands_but_no_quit_behind_its_read_lets_the_lock_go(
        tmp_path, log_events, uncached, utf8):
    """As with nothing behind the read (above), when the commands behind
    it hold no QUIT: none can come, so no UPDATE state and nothing deleted
    (RFC 1939 6), and the lock goes at once.  It was held until the disk
    answered (a login of the same user told IN-USE meanwhile).  A client
    that only half-closed still gets every answer, in order, the same
    bytes as a session whose reads were cached: messages read (and sizes
    measured, for a client without UTF8) through the mailbox kept for
    them, a DELE answered as ever (nothing is deleted without a QUIT)."""
    messages = [SMALL, INTL, BIG]
    commands = b"RETR 1\r\n" + _BEHIND
    expected, _ = _answers(tmp_path / "cached", messages, commands, utf8, ())
    assert b"\r\n.\r\n" + R.deleted(1).to_bytes() in expected  # RETR 3 whole, DELE 1
    assert expected.endswith(b"+OK\r\n-ERR Unknown command\r\n")
    clock, components, md, syncer, _realm = env(tmp_path, messages, uncached=uncached)
    proto, t = session(components, syncer, utf8)
    proto.dataReceived(commands)
    assert bytes(t.received) == b"" and len(syncer.jobs) == 1  # RETR 1's read waits
    proto.readConnectionLost()
    assert proto.mailbox is None  # let go at once
    second, t2 = _second_login(components, syncer)
    assert b"+OK Logged in" in bytes(t2.received)
    for _ in range(20):  # the disk answers
        run_all(syncer)
        clock.advance(0)
    assert bytes(t.received) == expected
    assert t.disconnecting  # all answered: closed
    proto.connectionLost(Failure(ConnectionDone()))
    assert second.mailbox is not None and not second.mailbox.closed
    assert sorted(os.listdir(os.path.join(md, "new"))) == [
        f"16000000{i:02d}.M1P1Q{i}.x" for i in range(3)]  # nothing deleted, nor flagged
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


def test_a_client_that_closes_with_a_quit_behind_its_read_keeps_the_lock_for_it(
        tmp_path, log_events):
    """A QUIT among the commands behind the read: its UPDATE state needs
    the lock, held until the deletions are made and answered."""
    _clock, components, md, syncer, _realm = env(tmp_path, [SMALL, SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nNOOP\r\nDELE 2\r\nquit\r\n")
    proto.readConnectionLost()
    assert proto.mailbox is not None and not proto.mailbox.closed
    _second, t2 = _second_login(components, syncer)
    assert b"-ERR [IN-USE]" in bytes(t2.received)
    run_all(syncer)
    got = bytes(t.received)
    assert got.startswith(b"+OK") and got.endswith(
        R.deleted(2).to_bytes() + R.bye_updated(1).to_bytes())
    assert t.disconnecting and proto.mailbox is None
    assert len(os.listdir(os.path.join(md, "new")) + os.listdir(os.path.join(md, "cur"))) == 1
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


def test_a_message_removed_by_the_next_session_is_answered_as_gone_after_the_fin(
        tmp_path, log_events):
    """Once the lock went at the FIN (no QUIT behind the read), the
    session that takes it may delete a message a command behind the read
    asks for: that command gets the -ERR of a message another program
    removed, and one line in the log, as during any session."""
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, SMALL], uncached={0})
    proto, t = session(components, syncer)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nNOOP\r\n")
    proto.readConnectionLost()
    assert proto.mailbox is None
    second, t2 = _second_login(components, syncer)
    syncer.holding = False  # its deletion done at once
    try:
        second.dataReceived(b"DELE 2\r\nQUIT\r\n")
    finally:
        syncer.holding = True
    assert bytes(t2.received).endswith(R.bye_updated(1).to_bytes())
    run_all(syncer)  # the first session's read
    got = bytes(t.received)
    assert got.startswith(b"+OK") and got.endswith(
        b"hello\r\n.\r\n" + R.MESSAGE_GONE.to_bytes() + R.NOOP.to_bytes())
    assert t.disconnecting
    lines = [formatEvent(e) for e in log_events if "removed by another program" in formatEvent(e)]
    assert lines == ["POP3 message 2 of joe@example.org was removed by another program"]
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


#: the names ``env`` gives two messages
_TWO_NAMES = [f"16000000{i:02d}.M1P1Q{i}.x" for i in range(2)]


def _behind_a_waiting_read(tmp_path, commands: bytes, sent: int):
    """Two small messages, the second's read not cached, ``commands`` sent
    in one read (RETR 1 and 2 first): what a session whose reads were
    cached answers (``sent`` messages in it), the session's clock, Maildir
    and syncer, its realm, and the session and its transport, RETR 2's
    read waiting."""
    messages = [SMALL, SMALL]
    expected, _ = _answers(tmp_path / "cached", messages, commands, False, ())
    assert expected.count(b"hello\r\n.\r\n") == sent
    clock, components, md, syncer, realm = env(tmp_path, messages, uncached={1})
    proto, t = session(components, syncer)
    proto.dataReceived(commands)
    assert len(syncer.jobs) == 1  # RETR 2's read waits; RETR 1 sent
    return expected, clock, md, syncer, realm, proto, t


@pytest.mark.parametrize("rset", [b"RSET\r\n", b"rset\r\nNOOP\r\n"])
def test_an_rset_behind_the_read_takes_back_the_seen_flags_after_the_fin(
        tmp_path, log_events, rset):
    """RSET takes back the seen flags of the messages retrieved before it
    (as Dovecot's does): a client that pipelines RETR 1, RETR 2, RSET and
    closes leaves message 1 unseen.  With RETR 2's read waiting for the
    disk at the FIN, the session's end flagged message 1 seen at once,
    before the RSET behind it was handled."""
    expected, clock, md, syncer, _realm, proto, t = _behind_a_waiting_read(
        tmp_path, b"RETR 1\r\nRETR 2\r\n" + rset, sent=2)
    proto.readConnectionLost()
    for _ in range(20):
        run_all(syncer)
        clock.advance(0)
    assert bytes(t.received) == expected
    assert t.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert sorted(os.listdir(os.path.join(md, "new"))) == _TWO_NAMES  # nothing flagged seen
    assert os.listdir(os.path.join(md, "cur")) == []
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


class _Preempted(dict):
    """A snapshot's names whose ``pop`` (the first step of
    ``Snapshot.moved``) is followed by ``step``: another thread's turn,
    where the interpreter may hand the GIL over (after a call)."""

    def __init__(self, names, step):
        super().__init__(names)
        self.step = step

    def pop(self, *args):
        found = super().pop(*args)
        step, self.step = self.step, None
        if step is not None:
            step()
        return found


def _give_the_reactor_its_turn(realm, monkeypatch, where: str, turn) -> None:
    """Have the flags' job, when it runs, hand over to ``turn`` (the
    reactor thread's) ``where`` another thread may get the GIL: in the
    middle of its snapshot update (``_Preempted``) or right after its
    rename of the message to cur/."""
    box = realm.boxes[0]._box
    if where == "in-its-snapshot-update":
        box._messages._names = _Preempted(box._messages._names, turn)
        return
    from txmailhub.store import mailbox as mailbox_module
    real = mailbox_module.rename_noreplace

    def renamed(source, target):
        real(source, target)
        monkeypatch.setattr(mailbox_module, "rename_noreplace", real)
        turn()

    monkeypatch.setattr(mailbox_module, "rename_noreplace", renamed)


@pytest.mark.parametrize("where", ["in-its-snapshot-update", "after-its-rename"])
def test_the_seen_flags_made_after_the_fin_leave_the_answers_mailbox_alone(
        tmp_path, log_events, monkeypatch, where):
    """A FIN while RETR 2's read waits for the disk, RETR 1 sent before
    and asked for again behind it: the session's end flags message 1 seen
    in a worker job while the answers still due read through the same
    mailbox on the reactor thread.  The job updated the snapshot those
    answers read (``Snapshot.moved``: its name dropped, then its place
    and flags): the reactor's turn in the middle of it found message 1's
    name gone (a ``KeyError``), and the client got ``-ERR`` for it and a
    traceback was logged.  The job's changes are made on a view of its
    own, so the answers' state is never half changed: they get what a
    session whose reads were cached sends, and message 1 is flagged seen
    all the same.  The reactor's turn right after the job's rename (the
    file gone from where the answers' snapshot says) was and is
    harmless: the read finds it in cur/ as it finds one another program
    renamed."""
    expected, clock, md, syncer, realm, proto, t = _behind_a_waiting_read(
        tmp_path, b"RETR 1\r\nRETR 2\r\nRETR 1\r\n", sent=3)
    read = syncer.jobs[0]
    proto.readConnectionLost()
    assert proto.mailbox is not None  # its seen flags first, under the lock
    assert len(syncer.jobs) == 2  # and the job that makes them
    steps = []

    def the_reactors_turn():
        # the disk answers RETR 2's read, and the reactor thread sends it
        # and handles the RETR 1 behind it, while the worker is where it is
        if read in syncer.jobs:
            steps.append(where)
            syncer.run_one(syncer.jobs.index(read))

    _give_the_reactor_its_turn(realm, monkeypatch, where, the_reactors_turn)
    syncer.run_one(1 - syncer.jobs.index(read))  # the flags' job, on its worker
    for _ in range(20):
        run_all(syncer)
        clock.advance(0)
    assert bytes(t.received) == expected
    # the reactor's turn came in the middle of the job after its rename;
    # the snapshot the answers read the job no longer changes at all
    assert steps == ([where] if where == "after-its-rename" else [])
    assert t.disconnecting and proto.mailbox is None
    proto.connectionLost(Failure(ConnectionDone()))
    assert os.listdir(os.path.join(md, "new")) == [_TWO_NAMES[1]]
    assert os.listdir(os.path.join(md, "cur")) == [_TWO_NAMES[0] + ":2,S"]
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


@pytest.mark.parametrize("where", ["in-its-snapshot-update", "after-its-rename"])
def test_the_seen_flags_made_at_a_fin_behind_answers_not_read_leave_their_mailbox_alone(
        tmp_path, log_events, monkeypatch, where):
    """The same (above) where the commands wait for a client that does
    not read its answers (its TCP window full), not for the disk: the FIN
    lets the lock go once message 1, retrieved before it, is flagged seen
    in a worker job, and the client may read on meanwhile, its LIST,
    RETR 1 again and RETR 2 answered on the reactor thread through the
    same mailbox.  The job's changes are made on a view of their own here
    too: the answers are those of a session whose client read all."""
    commands = b"RETR 1\r\nLIST\r\nRETR 1\r\nRETR 2\r\n"
    expected = cached_answer(tmp_path / "cached", [SMALL, SMALL], commands)
    assert expected.count(b"hello\r\n.\r\n") == 3
    clock, components, md, syncer, realm = env(tmp_path, [SMALL, SMALL])
    proto, t = session(components, syncer)
    t.limit = 10  # the client reads nothing more for now
    proto.dataReceived(commands)
    assert proto._write_paused and proto.engine.has_line  # RETR 1 sent, the rest held
    assert not syncer.jobs
    proto.readConnectionLost()
    assert proto.mailbox is not None  # its seen flags first, under the lock
    assert len(syncer.jobs) == 1  # and the job that makes them
    steps = []

    def the_reactors_turn():
        # the client reads on, and the reactor thread answers what it
        # sent, while the worker is where it is
        if t.limit is not None:
            steps.append(where)
            t.limit = None
            t.read(proto)

    _give_the_reactor_its_turn(realm, monkeypatch, where, the_reactors_turn)
    syncer.run_one(0)  # the flags' job, on its worker
    assert proto.mailbox is None  # the lock is gone
    the_reactors_turn()
    for _ in range(20):
        run_all(syncer)
        clock.advance(0)
    assert bytes(t.received) == expected
    assert steps == [where]
    assert t.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert os.listdir(os.path.join(md, "new")) == [_TWO_NAMES[1]]
    assert os.listdir(os.path.join(md, "cur")) == [_TWO_NAMES[0] + ":2,S"]
    assert not [e for e in log_events if e.get("log_failure") or e.get("log_level").name in (
        "error", "critical")]


# -- long UTF-8 header sections: downgraded to be measured on a worker ------

LONG_INTL = "Subject: caf\u00e9\n".encode() + LONG_HEADER + b"\nbody\n"
assert LONG_INTL.index(b"\n\n") > CHUNK_SIZE


class _OpenFails(Uncached):
    """Opening message ``failing`` fails once (the login's job: a read
    error the next command may not meet)."""

    failing = 1

    def open_message(self, index):
        if index == self.failing and not getattr(self, "failed", False):
            self.failed = True
            raise OSError(errno.EIO, "input/output error")
        return self._box.open_message(index)


class _OpenFailsRealm(UncachedRealm):
    def requestAvatar(self, avatar_id, mind, *interfaces):
        d = super().requestAvatar(avatar_id, mind, *interfaces)

        def wrap(result):
            iface, box, logout = result
            self.boxes[-1] = _OpenFails(box._box, self.uncached)
            return iface, self.boxes[-1], logout
        return d.addCallback(wrap)


def test_a_size_the_logins_job_could_not_measure_is_downgraded_on_a_worker(
        tmp_path, downgrades):
    """A mailbox measured at the login on a worker (over ``INLINE_OCTETS``)
    whose long UTF-8 header section could not be read then: the LIST that
    needs its size measures it on a worker too, and what was pipelined
    behind waits for it.  It was downgraded on the reactor thread, every
    session of the hub held up to a second or two (the sender chooses the
    length)."""
    commands = b"LIST\r\nNOOP\r\nSTAT\r\n"
    expected = cached_answer(tmp_path, [SMALL, LONG_INTL], commands)
    assert len(downgrades) == 1
    downgrades.clear()
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, LONG_INTL])
    components.portal = Portal(_OpenFailsRealm(components.store, ()),
                               components.portal.checkers.values())
    proto, t = session(components, syncer)
    assert downgrades == [] and proto._sizes[1] == -1  # the login's job could not read it
    proto.dataReceived(commands)
    assert downgrades == [] and bytes(t.received) == b"" and len(syncer.jobs) == 1
    syncer.run_one()
    assert downgrades == [LONG_INTL.index(b"\n\n") + 1]
    assert bytes(t.received) == expected
    assert proto._disk_waits == 0  # no read that waited for the disk


def test_a_message_grown_since_the_listing_is_downgraded_on_a_worker(tmp_path, downgrades):
    """A small mailbox, measured on the reactor thread when LIST needs it,
    where a message got a long UTF-8 header section since the login's
    listing (rewritten in place by another program): no more than
    ``DOWNGRADE_HERE`` is downgraded on the reactor thread, the rest of
    the measuring is a worker's."""
    _clock, components, md, syncer, _realm = env(tmp_path, [SMALL, INTL])
    proto, t = session(components, syncer)
    path = os.path.join(md, "new", sorted(os.listdir(os.path.join(md, "new")))[1])
    with open(path, "wb") as f:
        f.write(LONG_INTL)
    proto.dataReceived(b"LIST\r\nNOOP\r\n")
    assert downgrades == [] and bytes(t.received) == b"" and len(syncer.jobs) == 1
    syncer.run_one()
    assert downgrades == [LONG_INTL.index(b"\n\n") + 1]
    assert bytes(t.received).startswith(b"+OK 2 messages")
    assert bytes(t.received).endswith(b"\r\n.\r\n+OK\r\n")


@pytest.mark.parametrize("end", ["quit", "hang-up"])
def test_a_session_that_ends_while_a_long_header_is_measured(tmp_path, downgrades, end):
    """A QUIT pipelined behind the LIST is answered after it, and the size
    measured on the worker is kept in the Maildir's cache for the next
    login (``IDowngradedSizes``); a client that hangs up meanwhile gets
    nothing, and its files are closed."""
    _clock, components, _md, syncer, _realm = env(tmp_path, [SMALL, LONG_INTL])
    components.portal = Portal(_OpenFailsRealm(components.store, ()),
                               components.portal.checkers.values())
    before = open_descriptors()
    proto, t = session(components, syncer)
    proto.dataReceived(b"LIST\r\nQUIT\r\n")
    assert bytes(t.received) == b"" and len(syncer.jobs) == 1
    if end == "hang-up":
        proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    if end == "hang-up":
        assert bytes(t.received) == b""
        assert open_descriptors() == before
        return
    got = bytes(t.received)
    assert got.startswith(b"+OK 2 messages")
    assert got.endswith(b"\r\n.\r\n+OK Bye (2 messages left)\r\n")
    assert downgrades == [LONG_INTL.index(b"\n\n") + 1]
    downgrades.clear()
    proto.connectionLost(Failure(ConnectionDone()))
    run_all(syncer)
    proto, t = session(components, syncer)  # all measured on the login's job
    proto.dataReceived(b"LIST\r\n")
    run_all(syncer)
    assert bytes(t.received) == got.removesuffix(b"+OK Bye (2 messages left)\r\n")
    assert downgrades == []  # the size was kept
