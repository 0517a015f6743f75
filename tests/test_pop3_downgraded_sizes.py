"""The sizes of downgraded copies (RFC 6857) that LIST and STAT report to a
client without UTF8, kept in the Maildir's size cache: measuring one means
rewriting the UTF-8 header section (some 0.6 us an octet), and only the
first login after a message arrives may pay for it.  Real Maildirs, POP3
sessions over StringTransport."""

from __future__ import annotations

import errno
import json
import os

import pytest
from test_pop3_reader_and_storage import connect, make_env
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from txmailhub.address import Address
from txmailhub.downgrade import downgrade_header, header_end
from txmailhub.interfaces import IDowngradedSizes
from txmailhub.pop3 import protocol as pop3_protocol
from txmailhub.pop3 import replies as R
from txmailhub.store import mailbox as mailbox_module
from txmailhub.store.format import crlf_size_of
from txmailhub.store.mailbox import SIZES_NAME, MaildirMailbox

INTL = "From: Jörg <jörg@example.net>\nSubject: Grüße {n}\n\nKörper\n".format
ASCII = b"From: joe@example.org\nSubject: plain\n\nbody\n"
JOE = Address("joe", "example.org")


def downgraded_size(data: bytes) -> int:
    end = header_end(data)
    return crlf_size_of(downgrade_header(data[:end]) + data[end:])


def drop(md: str, data: bytes, n: int, ours: bool) -> str:
    """A message file: named as the hub names its own (sizes in the name,
    no stat at a scan), or plainly, as another program may."""
    name = f"17000000{n:02d}.M{n}P1Q{n}.h"
    if ours:
        name += f",S={len(data)},W={crlf_size_of(data)}"
    path = os.path.join(md, "new", name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _login_sent(components):
    """A client connects and sends its USER and PASS at once, as most do;
    its answer may wait (a save of the mailbox's sizes under way):
    ``(proto, transport)``."""
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    return proto, t


def stat_list(clock, components) -> tuple[bytes, bytes]:
    """A login without UTF8: STAT's reply and LIST's, then QUIT."""
    proto, t = _login_sent(components)
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"STAT\r\n")
    stat = bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"LIST\r\n")
    listing = bytes(t.received)
    clock.advance(0)  # the sizes measured are kept after the command
    proto.dataReceived(b"QUIT\r\n")
    clock.advance(1)
    proto.connectionLost(Failure(ConnectionDone()))
    return stat, listing


def env(tmp_path, monkeypatch, workers: bool):
    clock, components, md = make_env(tmp_path)
    if workers:  # measured at the login, in jobs on the worker threads
        components.syncer = components.store.syncer
        monkeypatch.setattr(pop3_protocol, "INLINE_SIZES", 0)
    return clock, components, md


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("ours", [True, False], ids=["sized-name", "plain-name"])
def test_the_second_login_does_not_downgrade_again(tmp_path, monkeypatch, downgrades,
                                                   workers, ours):
    clock, components, md = env(tmp_path, monkeypatch, workers)
    intl = [INTL(n=n).encode() for n in range(2)]
    for n, data in enumerate([*intl, ASCII]):
        drop(md, data, n, ours)
    want = sum(downgraded_size(d) for d in intl) + crlf_size_of(ASCII)
    first = stat_list(clock, components)
    assert first[0] == f"+OK 3 {want}\r\n".encode()
    assert len(downgrades) == 2  # the ASCII message is never downgraded
    assert components.syncer is None or components.syncer.calls_run > 0
    second = stat_list(clock, components)
    assert second == first
    assert len(downgrades) == 2  # nothing downgraded at the second login


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_changed_file_is_measured_again(tmp_path, monkeypatch, downgrades, workers):
    clock, components, md = env(tmp_path, monkeypatch, workers)
    ours = drop(md, INTL(n=1).encode(), 1, ours=True)
    plain = drop(md, INTL(n=2).encode(), 2, ours=False)
    stat_list(clock, components)
    assert len(downgrades) == 2
    # a plain-named file rewritten in place (a new size and mtime): the
    # scan measures it again, and its downgraded size goes with the entry
    new_plain = INTL(n="zwei, länger").encode()
    with open(plain, "wb") as f:
        f.write(new_plain)
    st = os.stat(plain)
    os.utime(plain, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    # one of the hub's names replaced by another file of the same size
    # (a restore, say): a new inode
    same_size = INTL(n=9).encode()
    tmp = os.path.join(md, "tmp", "x")
    with open(tmp, "wb") as f:
        f.write(same_size)
    os.rename(tmp, ours)
    stat, _ = stat_list(clock, components)
    assert len(downgrades) == 4
    want = downgraded_size(same_size) + downgraded_size(new_plain)
    assert stat == f"+OK 2 {want}\r\n".encode()
    stat_list(clock, components)
    assert len(downgrades) == 4


def test_a_cache_of_an_older_version_is_read(tmp_path, monkeypatch, downgrades):
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    drop(md, INTL(n=1).encode(), 1, ours=True)
    drop(md, INTL(n=2).encode(), 2, ours=False)
    first = stat_list(clock, components)
    cache_path = os.path.join(md, SIZES_NAME)
    with open(cache_path, "rb") as f:
        doc = json.load(f)
    assert sorted(len(v) for v in doc["sizes"].values()) == [6, 6]
    # as an older version wrote it: the plain file's sizes, four fields,
    # and nothing for the file whose name gives its sizes
    doc["sizes"] = {k: v[:4] for k, v in doc["sizes"].items() if ",S=" not in k}
    with open(cache_path, "w") as f:
        json.dump(doc, f)
    measured: list[str] = []
    real = mailbox_module._crlf_size_of_file

    def counting(path: str) -> tuple[int, int]:
        measured.append(path)
        return real(path)

    monkeypatch.setattr(mailbox_module, "_crlf_size_of_file", counting)
    assert stat_list(clock, components) == first
    assert measured == []  # its plain sizes are taken as they are
    assert len(downgrades) == 4  # the downgraded sizes were not known yet
    with open(cache_path, "rb") as f:
        assert sorted(len(v) for v in json.load(f)["sizes"].values()) == [6, 6]
    assert stat_list(clock, components) == first
    assert len(downgrades) == 4


def _one_utf8_message(tmp_path, workers: bool):
    """A mailbox holding one message with a UTF-8 header section, whose
    size cache is saved inline or by the store's worker threads; the
    clock, the components and the message."""
    clock, components, md = make_env(tmp_path)
    if workers:
        components.syncer = components.store.syncer
    data = INTL(n=1).encode()
    drop(md, data, 1, ours=True)
    return clock, components, data


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_sizes_measured_just_before_a_pipelined_quit_are_kept(tmp_path, monkeypatch,
                                                              downgrades, workers):
    clock, components, data = _one_utf8_message(tmp_path, workers)
    for _ in range(2):
        proto, t = connect(components)
        proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\nQUIT\r\n")
        clock.advance(1)
        assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
        assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
    assert len(downgrades) == 1


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_sizes_measured_by_a_list_before_a_hangup_without_quit_are_kept(
        tmp_path, monkeypatch, downgrades, workers):
    # the connection is lost before the save after LIST runs: kept then,
    # before the lock goes, and the lock let go (the next login gets in)
    clock, components, data = _one_utf8_message(tmp_path, workers)
    for _ in range(2):
        proto, t = connect(components)
        proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
        assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
        assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
        proto.connectionLost(Failure(ConnectionDone()))
        assert proto.mailbox is None
        clock.advance(1)
    assert len(downgrades) == 1


def test_entries_of_files_that_are_gone_are_dropped(tmp_path, monkeypatch, downgrades):
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    gone = drop(md, INTL(n=1).encode(), 1, ours=True)
    kept = drop(md, INTL(n=2).encode(), 2, ours=True)
    stat_list(clock, components)
    os.unlink(gone)
    stat_list(clock, components)  # the scan drops the entry of the file gone
    with open(os.path.join(md, SIZES_NAME), "rb") as f:
        assert list(json.load(f)["sizes"]) == [os.path.basename(kept)]
    assert len(downgrades) == 2


def test_a_client_with_utf8_neither_measures_nor_writes_the_cache(tmp_path, monkeypatch,
                                                                  downgrades):
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    drop(md, INTL(n=1).encode(), 1, ours=True)
    proto, t = connect(components)
    proto.dataReceived(b"UTF8\r\nUSER joe\r\nPASS joepw\r\nSTAT\r\nLIST\r\nQUIT\r\n")
    clock.advance(1)
    assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert downgrades == []
    assert not os.path.exists(os.path.join(md, SIZES_NAME))


def test_the_maildir_mailbox_provides_the_interface():
    assert IDowngradedSizes.implementedBy(MaildirMailbox)


def test_a_size_remembered_while_a_save_writes_is_kept_by_the_next_save(tmp_path, monkeypatch):
    # the save runs on a worker thread; a LIST n on the reactor thread may
    # remember a size meanwhile: the save writes a copy, and the size
    # remembered during it is written by the next one
    _clock, components, md = make_env(tmp_path)
    paths = [drop(md, INTL(n=n).encode(), n, ours=True) for n in range(2)]
    box = components.store.open_mailbox(JOE).result
    writes: list[dict] = []
    real = mailbox_module.durable_write

    def writing(path: str, data: bytes) -> None:
        writes.append(json.loads(data)["sizes"])
        if len(writes) == 1:
            with open(paths[1], "rb") as f:
                box.remember_downgraded_size(1, f, 222)  # "on the other thread"
        real(path, data)

    monkeypatch.setattr(mailbox_module, "durable_write", writing)
    with open(paths[0], "rb") as f:
        box.remember_downgraded_size(0, f, 111)
    box.save_downgraded_sizes()
    box.save_downgraded_sizes()
    box.save_downgraded_sizes()  # nothing more to write
    assert [sorted(v[4] for v in w.values()) for w in writes] == [[111], [111, 222]]
    box.close()
    box.save_downgraded_sizes()  # closed: the lock is let go, nothing is written
    assert len(writes) == 2


def test_a_size_remembered_again_replaces_the_one_before(tmp_path):
    _clock, components, md = make_env(tmp_path)
    path = drop(md, INTL(n=1).encode(), 1, ours=True)
    box = components.store.open_mailbox(JOE).result
    with open(path, "rb") as f:
        box.remember_downgraded_size(0, f, 111)
        box.remember_downgraded_size(0, f, 112)
        assert box.downgraded_size(0, f) == 112
    box.save_downgraded_sizes()
    box.close()
    with open(os.path.join(md, SIZES_NAME), "rb") as f:
        (entry,) = json.load(f)["sizes"].values()
    assert len(entry) == 6 and entry[4] == 112, entry


@pytest.mark.parametrize("ours", [False, True])
def test_a_file_changed_since_the_scan_keeps_no_downgraded_size(tmp_path, ours):
    # the file was rewritten after the login listed it: its entry (a plain
    # name's) or its name's S= (one of the hub's) no longer says its size,
    # so the size measured from it is not kept; the next scan measures it
    _clock, components, md = make_env(tmp_path)
    path = drop(md, INTL(n=1).encode(), 1, ours=ours)
    box = components.store.open_mailbox(JOE).result
    with open(path, "ab") as f:
        f.write(b"more\n")
    with open(path, "rb") as f:
        box.remember_downgraded_size(0, f, 111)
        assert box.downgraded_size(0, f) is None
    box.close()


class _HeldJobs:
    """Worker jobs (``syncer.call``) held until ``run``: a save still
    waiting for its turn on a busy worker."""

    def __init__(self) -> None:
        self.jobs: list = []

    def call(self, f, *args):
        d = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for d, f, args in jobs:
            try:
                result = f(*args)
            except Exception as e:  # as a worker's failure (a lock held)
                d.errback(e)
            else:
                d.callback(result)


def _hang_up_after_list(components, clock, data):
    """A session that LISTs and hangs up without QUIT before the save of
    the downgraded size runs: the save left waiting for a worker."""
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
    assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
    proto.connectionLost(Failure(ConnectionDone()))
    assert components.syncer.jobs  # the save, not yet run


def _save_held_after_a_gone_session(tmp_path):
    """One UTF-8 message, a session that LISTed it and hung up, and the
    save of its downgraded size held (``_HeldJobs``: run by the test)."""
    clock, components, data = _one_utf8_message(tmp_path, workers=False)
    components.syncer = _HeldJobs()
    _hang_up_after_list(components, clock, data)
    return clock, components, data


def _cached_downgraded_sizes(components) -> list:
    md = components.store.maildir_path(JOE)
    with open(os.path.join(md, SIZES_NAME), "rb") as f:
        return [v[4] for v in json.load(f)["sizes"].values() if len(v) == 6]


@pytest.mark.parametrize("order", ["login-first", "save-first"])
def test_a_client_that_reconnects_while_its_last_save_waits_gets_in(
        tmp_path, downgrades, order):
    # the session gone keeps the lock until the save is written (``scan``
    # writes the cache too); a login meanwhile waits for it rather than
    # being told IN-USE, then sees the size saved (measured only once)
    clock, components, data = _save_held_after_a_gone_session(tmp_path)
    proto, t = connect(components)
    if order == "save-first":
        components.syncer.run()
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert b"IN-USE" not in bytes(t.received)
    if order == "login-first":
        assert b"+OK Logged in" not in bytes(t.received)  # waiting for the lock
        components.syncer.run()
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    assert _cached_downgraded_sizes(components) == [downgraded_size(data)]
    t.received.clear()
    proto.dataReceived(b"LIST\r\nQUIT\r\n")
    clock.advance(1)
    components.syncer.run()
    assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
    assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(downgrades) == 1
    # the bound on the wait (GONE_SAVE_WAIT) was called off with the save
    assert not [c for c in clock.getDelayedCalls()
                if getattr(c.func, "__qualname__", "").startswith("MaildirStore")]


def test_a_session_still_open_is_not_waited_for(tmp_path):
    clock, components, _data = _one_utf8_message(tmp_path, workers=False)
    first, _ = connect(components)
    first.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
    proto, t = _login_sent(components)
    clock.advance(5)
    assert b"-ERR [IN-USE]" in bytes(t.received), bytes(t.received)
    first.connectionLost(Failure(ConnectionDone()))
    proto.connectionLost(Failure(ConnectionDone()))


def test_a_login_waits_for_a_stuck_save_a_bounded_time_then_is_in_use(tmp_path):
    # a save that never ends (a disk whose fsync hangs) must not hold a
    # reconnecting client forever: after ``GONE_SAVE_WAIT`` it is refused as
    # before the wait existed, and a login after that is refused at once
    from txmailhub.store import maildir

    wait = getattr(maildir, "GONE_SAVE_WAIT", 5)
    clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    proto, t = _login_sent(components)
    clock.advance(wait - 0.5)
    assert b"IN-USE" not in bytes(t.received)  # still waiting
    clock.advance(1)
    assert b"-ERR [IN-USE]" in bytes(t.received), bytes(t.received)
    late, t2 = _login_sent(components)
    assert b"-ERR [IN-USE]" in bytes(t2.received), bytes(t2.received)
    # the save, done at last, lets the lock go: the next login gets in
    components.syncer.run()
    again, t3 = _login_sent(components)
    assert b"+OK Logged in" in bytes(t3.received), bytes(t3.received)
    for p in (proto, late, again):
        p.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()
    assert not [c for c in clock.getDelayedCalls() if c.active()
                and c.func.__qualname__.startswith("MaildirStore")]


def test_a_waiting_login_whose_client_left_does_not_take_the_lock_from_one_still_there(
        tmp_path):
    # a client that gave up waiting (hung up) and reconnected: its first
    # login must not take the lock when the save is done and leave its
    # second told IN-USE; the login gone is dropped
    _clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    components.store.syncer = components.syncer  # a Maildir listed by a worker
    gave_up, _ = _login_sent(components)
    gave_up.connectionLost(Failure(ConnectionDone()))
    proto, t = _login_sent(components)
    components.syncer.run()  # the save: the lock goes
    components.syncer.run()  # the listing of the Maildir for the login
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    proto.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()


def test_a_waiting_login_whose_client_closed_with_a_fin_leaves_the_lock_to_one_still_there(
        tmp_path):
    # as above, but the client that gave up closed as TCP clients do, with
    # a FIN (it had read all it was sent): the hub sees the end of its
    # data, as for a half-close, and its login goes on.  It took the lock
    # when the save was written and held it until the connection was
    # gone, and the login still there was told IN-USE; now the session
    # that can be sent nothing more lets the mailbox go once its +OK is out
    _clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    components.store.syncer = components.syncer  # a Maildir listed by a worker
    gave_up, t0 = _login_sent(components)
    gave_up.readConnectionLost()  # its FIN
    proto, t = _login_sent(components)
    components.syncer.run()  # the save: the lock goes
    components.syncer.run()  # the first login's listing: it gets the lock
    assert b"+OK Logged in" in bytes(t0.received)
    assert gave_up.mailbox is None  # let go with its answer
    components.syncer.run()  # the second login's listing
    assert b"IN-USE" not in bytes(t.received), bytes(t.received)
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    gave_up.connectionLost(Failure(ConnectionDone()))
    assert proto.mailbox is not None  # the first's end takes nothing from the second
    proto.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()


def test_the_stop_is_not_held_by_a_login_waiting_for_a_gone_sessions_save(tmp_path):
    from test_pop3_reader_and_storage import Transport

    from txmailhub.pop3.protocol import POP3Factory

    _clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    factory = POP3Factory(components)
    proto = factory.buildProtocol(None)
    t = Transport()
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    stopped = factory.shut_down()
    assert t.disconnecting or t.disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert stopped.called
    components.syncer.run()  # the save done: the login gone does not take the lock
    again, t2 = _login_sent(components)
    assert b"+OK Logged in" in bytes(t2.received), bytes(t2.received)
    again.connectionLost(Failure(ConnectionDone()))


def test_the_first_of_two_waiting_logins_gets_in_and_neither_is_refused_before(tmp_path):
    # both clients are still there: neither is told IN-USE while the save
    # writes; the first to wait tries first
    clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    sessions = [connect(components) for _ in range(2)]
    for proto, _t in sessions:
        proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert not any(b"IN-USE" in bytes(t.received) for _p, t in sessions)
    components.syncer.run()
    answers = [bytes(t.received).split(b"\r\n")[2][:13] for _p, t in sessions]
    assert answers == [b"+OK Logged in", b"-ERR [IN-USE]"]
    clock.advance(5)  # nothing more for either once the wait is over
    assert [bytes(t.received).split(b"\r\n")[2][:13] for _p, t in sessions] == answers
    for proto, _t in sessions:
        proto.connectionLost(Failure(ConnectionDone()))


def test_a_waiting_login_whose_client_left_alone_leaves_the_lock_free(tmp_path):
    # no other login came meanwhile: the save done, the lock is not taken
    # for a client that is gone, and the next login gets in at once
    _clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    gave_up, _ = _login_sent(components)
    gave_up.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()
    again, t = _login_sent(components)
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    again.connectionLost(Failure(ConnectionDone()))


def test_a_waiting_login_whose_client_left_is_logged_as_gone_not_in_use(tmp_path, log_events):
    # it waited for a gone session's save, not for its turn at a lock
    # someone else holds: the log says the client left, not IN-USE

    _clock, components, _data = _save_held_after_a_gone_session(tmp_path)
    gave_up, t = _login_sent(components)
    gave_up.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()
    assert b"IN-USE" not in bytes(t.received)
    lines = [formatEvent(e) for e in log_events if "POP3 login" in formatEvent(e)]
    assert any("left before its turn" in line for line in lines), lines
    assert not any("IN-USE" in line for line in lines), lines


def test_no_last_save_nor_wait_for_it_while_the_hub_stops(tmp_path):
    # the stop does not wait for that job: the lock goes at once
    clock, components, data = _one_utf8_message(tmp_path, workers=False)
    components.syncer = _HeldJobs()
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
    assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
    proto.factory.stopping = True
    proto.connectionLost(Failure(ConnectionDone()))
    assert not components.syncer.jobs
    assert not [c for c in clock.getDelayedCalls()
                if c.func.__qualname__.startswith("MaildirStore")]


def test_the_store_wait_for_a_closing_session_without_wanted_and_after_close(tmp_path):
    # ``open_mailbox`` with no ``wanted`` (an embedding's caller) waits and
    # gets the mailbox; a mailbox already closed makes nothing wait
    clock, components, _data = _one_utf8_message(tmp_path, workers=False)
    store = components.store
    [first] = _results(store.open_mailbox(JOE))
    first.close_soon(clock.callLater)
    waiting = store.open_mailbox(JOE)
    assert not waiting.called
    first.close()
    [second] = _results(waiting)
    assert isinstance(second, MaildirMailbox) and not second.closed
    second.close()
    second.close_soon(clock.callLater)  # closed already: no wait set up
    assert not [c for c in clock.getDelayedCalls() if c.active()]


def _results(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_the_bound_on_the_wait_is_the_documented_five_seconds():
    from pathlib import Path

    from txmailhub.store import maildir

    text = " ".join((Path(__file__).parent.parent / "docs" / "pop3.rst").read_text().split())
    assert maildir.GONE_SAVE_WAIT == 5.0
    assert "for 5 seconds at most" in text


def test_a_lingering_close_after_a_list_keeps_its_sizes_though_the_client_closes_first(
        tmp_path, downgrades, log_events):
    # too many errors right after a LIST that measured a downgraded size:
    # the lingering close ends the session at its start, the save first
    # (on a worker), then the lock.  The client closing before that save
    # ran ended the session a second time: its line logged again and the
    # lock let go under the save, which then wrote nothing
    from test_pop3_reader_and_storage import HalfClosingTransport

    from txmailhub.pop3.protocol import POP3Factory

    _clock, components, md = make_env(tmp_path, max_errors=1)
    data = INTL(n=1).encode()
    drop(md, data, 1, ours=True)
    components.syncer = _HeldJobs()
    proto = POP3Factory(components).buildProtocol(("127.0.0.1", 50000))
    t = HalfClosingTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\nFOO\r\n")
    assert f"+OK 1 message ({downgraded_size(data)} octets)".encode() in bytes(t.received)
    assert t.write_lost  # lingering
    assert components.syncer.jobs  # the save, waiting for a worker
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.mailbox is not None and not proto.mailbox.closed  # held for the save
    components.syncer.run()
    assert proto.mailbox is None
    assert _cached_downgraded_sizes(components) == [downgraded_size(data)]
    left = [e for e in log_events if "left without QUIT" in formatEvent(e)]
    assert len(left) == 1, [formatEvent(e) for e in left]


@pytest.mark.parametrize("end", ["hang-up", "autologout", "quit"])
def test_a_save_already_on_a_worker_keeps_the_lock_until_it_is_written(tmp_path, end):
    # the save after LIST had started (its job handed to a busy worker)
    # when the session ended: a hang-up, a lingering close (the
    # autologout) or a QUIT's UPDATE let the mailbox go at once, and the
    # save, run later, found it closed and kept nothing -- measured again
    # by the next login.  The end waits for it, as for a save not started
    from test_pop3_reader_and_storage import HalfClosingTransport

    clock, components, data = _one_utf8_message(tmp_path, workers=False)
    components.syncer = _HeldJobs()
    proto = pop3_protocol.POP3Factory(components).buildProtocol(None)
    t = HalfClosingTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
    clock.advance(0)  # the save's turn: its job waits for a worker
    assert len(components.syncer.jobs) == 1
    if end == "hang-up":
        proto.connectionLost(Failure(ConnectionDone()))
    elif end == "autologout":
        clock.advance(components.settings.pop3.idle_timeout)
        clock.advance(0)
        assert t.write_lost  # lingering
    else:
        proto.dataReceived(b"QUIT\r\n")
    components.syncer.run()
    assert _cached_downgraded_sizes(components) == [downgraded_size(data)]
    if end == "quit":
        assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    components.syncer.run()
    again, t2 = _login_sent(components)
    assert b"+OK Logged in" in bytes(t2.received), bytes(t2.received)
    again.connectionLost(Failure(ConnectionDone()))


def test_two_saves_on_workers_at_once_keep_the_lock_until_both_are_written(
        tmp_path, monkeypatch, downgrades):
    # one LIST measured a downgraded size from the kernel's cache (its save
    # handed to a worker), a size not cached went to a worker job cut short
    # (``SIZE_JOB_SECONDS``), and the next one, measured back on the reactor
    # thread, started a second save while the first still waited: the
    # session's end waited for the last one only, and the lock went under
    # the first (two writers of the cache, one of them without the lock)
    clock, components, md = make_env(tmp_path)
    datas = [INTL(n=n).encode() for n in (1, 2, 3)]
    for n, data in enumerate(datas, 1):
        drop(md, data, n, ours=True)
    monkeypatch.setattr(pop3_protocol, "SIZE_JOB_SECONDS", -1.0)  # one a job
    real = MaildirMailbox.read_nowait
    calls = []

    def second_not_cached(self, file, size):
        calls.append(size)
        if len(calls) == 2:
            raise BlockingIOError(11, "not cached")
        return real(self, file, size)

    monkeypatch.setattr(MaildirMailbox, "read_nowait", second_not_cached)
    components.syncer = _HeldJobs()
    proto, _t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    components.syncer.run()  # the login's jobs, if any
    proto.dataReceived(b"LIST\r\n")
    clock.advance(0)  # the first save's turn
    jobs = components.syncer.jobs
    assert [f.__name__ for _d, f, _a in jobs] == ["_measure_sizes", "_save_downgraded_sizes"]
    components.syncer.jobs = [jobs[1]]  # the first save, on a busy worker
    d, f, args = jobs[0]
    d.callback(f(*args))  # message 2 measured; message 3 back on this thread
    clock.advance(0)  # the second save's turn
    mailbox = proto.mailbox
    proto.connectionLost(Failure(ConnectionDone()))  # a hang-up meanwhile
    closed_when_run, at_once = [], []
    while components.syncer.jobs:
        jobs = components.syncer.jobs
        at_once.append(len(jobs))
        # the latest first, as the other worker may take it
        components.syncer.jobs = jobs[:-1]
        d, f, args = jobs[-1]
        assert f.__name__ == "_save_downgraded_sizes"
        closed_when_run.append(mailbox.closed)
        d.callback(f(*args))
    assert closed_when_run == [False, False]  # both under the lock
    assert max(at_once) == 1  # one after the other: one writer
    assert mailbox.closed and proto.mailbox is None


@pytest.mark.parametrize("end", ["hang-up", "quit"])
def test_a_save_on_a_worker_that_fails_lets_the_lock_go_and_is_logged_once(
        tmp_path, monkeypatch, log_events, end):
    # the end waits for a save already on a worker: one that raises there
    # (a bug, not a disk error, which the cache logs as a warning) must
    # still let the lock go, finish a QUIT, and be logged once
    from test_pop3_reader_and_storage import HalfClosingTransport

    def broken(self):
        raise RuntimeError("broken save")

    monkeypatch.setattr(MaildirMailbox, "save_downgraded_sizes", broken)
    clock, components, _data = _one_utf8_message(tmp_path, workers=False)
    components.syncer = _HeldJobs()
    proto = pop3_protocol.POP3Factory(components).buildProtocol(None)
    t = HalfClosingTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nLIST\r\n")
    clock.advance(0)  # the save's job, waiting for a worker
    mailbox = proto.mailbox
    if end == "hang-up":
        proto.connectionLost(Failure(ConnectionDone()))
    else:
        proto.dataReceived(b"QUIT\r\n")
    assert not mailbox.closed
    components.syncer.run()
    assert mailbox.closed and proto.mailbox is None
    if end == "quit":
        assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
        proto.connectionLost(Failure(ConnectionDone()))
    not_kept = [e for e in log_events if "sizes of joe" in formatEvent(e)]
    assert len(not_kept) == 1, [formatEvent(e) for e in not_kept]


def _opens_failing(monkeypatch, times: int) -> list:
    """The first ``times`` opens of the first message's file (what
    measuring its size does; a small RETR reads without it) fail with
    EMFILE: the list of the indexes whose open failed."""
    failed = []
    real = MaildirMailbox.open_message

    def open_message(self, index):
        if index == 0 and len(failed) < times:
            failed.append(index)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(self, index)

    monkeypatch.setattr(MaildirMailbox, "open_message", open_message)
    return failed


def _end(clock, proto, t) -> None:
    _commands(proto, t, clock, b"QUIT")
    clock.advance(1)
    proto.connectionLost(Failure(ConnectionDone()))


def _next_login_sends(components, clock, size: int, *more: bytes) -> list[bytes]:
    """A new session lists message 1 at ``size`` and sends that many
    octets for it; the answers to ``more`` (UIDL, say) for the caller."""
    proto, t = _login_sent(components)
    clock.advance(0)
    again = _commands(proto, t, clock, b"LIST 1", b"RETR 1", *more)
    _end(clock, proto, t)
    assert again[0] == b"+OK 1 %d\r\n" % size
    status, sent = again[1].split(b"\r\n", 1)
    assert status == b"+OK %d octets" % size and len(sent) == size + len(b".\r\n")
    return again[2:]


def _commands(proto, t, clock, *commands: bytes) -> list[bytes]:
    answers = []
    for command in commands:
        t.received.clear()
        proto.dataReceived(command + b"\r\n")
        clock.advance(0)
        answers.append(bytes(t.received))
    return answers


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_size_that_could_not_be_measured_is_the_size_for_the_session(
        tmp_path, monkeypatch, workers):
    """The downgraded copy's size cannot be measured when LIST needs it
    (EMFILE: every measure of it fails, at the login's job too): LIST and
    STAT give the stored size, and that is the message's size for the
    session (RFC 1939 5: LIST's size is the exact size).  RETR and TOP do
    not send the copy, of another size: -ERR [SYS/TEMP], and the sizes
    stay as listed; the rest of the mailbox works, UIDL is unchanged, and
    the next session lists and sends the copy at one size."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    intl = INTL(n=1).encode()
    drop(md, intl, 1, ours=False)
    drop(md, ASCII, 2, ours=False)
    failed = _opens_failing(monkeypatch, 2 if workers else 1)
    stored, copy = crlf_size_of(intl), downgraded_size(intl)
    assert copy != stored
    proto, t = _login_sent(components)
    clock.advance(0)
    listed = b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (
        stored + crlf_size_of(ASCII), stored, crlf_size_of(ASCII))
    uids = _commands(proto, t, clock, b"UIDL")[0]
    answers = _commands(proto, t, clock, b"LIST", b"RETR 1", b"TOP 1 0", b"LIST", b"STAT",
                        b"RETR 2", b"UIDL")
    assert failed == [0] * (2 if workers else 1)
    assert answers[0] == answers[3] == listed
    assert answers[1] == answers[2] == R.MESSAGE_SIZE_CHANGED.to_bytes()
    assert answers[4] == b"+OK 2 %d\r\n" % (stored + crlf_size_of(ASCII))
    assert answers[5].startswith(b"+OK %d octets\r\n" % crlf_size_of(ASCII))
    assert answers[6] == uids
    _end(clock, proto, t)
    proto, t = _login_sent(components)
    clock.advance(0)
    again = _commands(proto, t, clock, b"LIST 1", b"RETR 1", b"UIDL")
    assert again[0] == b"+OK 1 %d\r\n" % copy
    assert again[1].startswith(b"+OK %d octets\r\n" % copy)
    assert len(again[1].split(b"\r\n", 1)[1]) == copy + len(b".\r\n")
    assert again[2] == uids
    _end(clock, proto, t)


def test_the_size_a_retr_gave_is_the_one_listed_after_it(tmp_path, monkeypatch):
    """No LIST before it: the RETR that downgrades the message gives its
    size, which LIST, STAT and a RETR after it give again."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    intl = INTL(n=1).encode()
    drop(md, intl, 1, ours=False)
    copy = downgraded_size(intl)
    proto, t = _login_sent(components)
    clock.advance(0)
    answers = _commands(proto, t, clock, b"RETR 1", b"LIST 1", b"STAT", b"RETR 1")
    assert answers[0].startswith(b"+OK %d octets\r\n" % copy)
    assert answers[1:3] == [b"+OK 1 %d\r\n" % copy, b"+OK 1 %d\r\n" % copy]
    assert answers[3] == answers[0]
    _end(clock, proto, t)


def _drop_named(md: str, data: bytes, n: int, kind: str) -> str:
    """``drop``, or (``kind`` "dovecot") a name of Dovecot's shape, whose
    ``S=`` and ``W=`` the hub measures instead of taking."""
    if kind != "dovecot":
        return drop(md, data, n, kind == "ours")
    path = os.path.join(md, "new", f"17000000{n:02d}.M{n}P1.h,S={len(data)},"
                                   f"W={crlf_size_of(data)}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _files_of(md: str, path: str) -> list[str]:
    """The names in new/ and cur/ with the unique part of ``path``'s."""
    unique = os.path.basename(path).split(",")[0]
    return sorted(os.path.join(sub, name) for sub in ("new", "cur")
                  for name in os.listdir(os.path.join(md, sub))
                  if name.split(",")[0].split(":")[0] == unique)


@pytest.mark.parametrize("utf8", [True, False], ids=["utf8", "no-utf8"])
@pytest.mark.parametrize("streamed", [False, True], ids=["small", "streamed"])
@pytest.mark.parametrize("kind", ["ours", "plain", "dovecot"],
                         ids=["sized-name", "plain-name", "dovecot-name"])
def test_a_file_of_another_length_than_listed_is_refused_for_the_session(
        tmp_path, monkeypatch, utf8, streamed, kind):
    """Another program replaced a message's file after the login, with
    one of another length: RETR's +OK would give the size listed and send
    other octets (RFC 1939 5).  RETR and TOP of it answer -ERR [SYS/TEMP]
    instead; LIST, STAT and UIDL stay as they were, the other message is
    sent.  The next session lists and sends the file as it is then, with
    the same UIDL: a name of the hub's shape, whose sizes are taken
    unread, is renamed to its true sizes (its unique part kept); any
    other name is measured, and keeps its name."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    pad = b"x" * 70_000 + b"\n" if streamed else b""
    data = ASCII + pad
    path = _drop_named(md, data, 1, kind)
    _drop_named(md, ASCII, 2, kind)
    new = ASCII.replace(b"body", b"a longer body") + pad
    proto, t = connect(components)
    proto.dataReceived((b"UTF8\r\n" if utf8 else b"") + b"USER joe\r\nPASS joepw\r\n")
    clock.advance(0)
    before = _commands(proto, t, clock, b"LIST", b"STAT", b"UIDL")
    tmp = os.path.join(md, "tmp", "new")
    with open(tmp, "wb") as f:
        f.write(new)
    os.rename(tmp, path)
    names = _files_of(md, path)
    answers = _commands(proto, t, clock, b"RETR 1", b"TOP 1 0", b"RETR 2",
                        b"LIST", b"STAT", b"UIDL")
    assert answers[0] == answers[1] == R.MESSAGE_SIZE_CHANGED.to_bytes()
    assert answers[2].startswith(b"+OK %d octets\r\n" % crlf_size_of(ASCII))
    assert answers[3:] == before
    _end(clock, proto, t)
    assert _files_of(md, path) == names  # nothing renamed under the session
    size = crlf_size_of(new)
    [uids] = _next_login_sends(components, clock, size, b"UIDL")
    assert uids == before[2]  # the same UIDLs
    unique = os.path.basename(path).split(",")[0]
    if kind == "ours":  # (in cur/ with the S flag: the RETR at the second session)
        assert _files_of(md, path) == [f"cur/{unique},S={len(new)},W={size}:2,S"]
    else:
        assert _files_of(md, path) == [f"cur/{os.path.basename(path)}:2,S"]


def _changed_in_place(md: str, path: str, data: bytes) -> None:
    """``path`` rewritten with ``data`` (another length), inode kept."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_misnamed_file_refused_before_a_hangup_is_put_right_at_the_next_login(
        tmp_path, monkeypatch, workers):
    """The client hangs up without QUIT right after the refusal: what the
    read found is kept all the same (as downgraded sizes measured are),
    and the next login lists and sends the message, same UIDL."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    path = drop(md, ASCII, 1, ours=True)
    proto, t = _login_sent(components)
    clock.advance(0)
    uidl = _commands(proto, t, clock, b"UIDL 1")[0]
    new = ASCII.replace(b"body", b"a longer body")
    _changed_in_place(md, path, new)
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received).endswith(R.MESSAGE_SIZE_CHANGED.to_bytes())
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(1)
    proto, t = _login_sent(components)
    clock.advance(0)
    again = _commands(proto, t, clock, b"UIDL 1", b"RETR 1")
    _end(clock, proto, t)
    assert again[0] == uidl
    assert again[1].startswith(b"+OK %d octets\r\n" % crlf_size_of(new))


def test_a_misnamed_file_that_cannot_be_renamed_is_sent_at_its_measured_size(
        tmp_path, monkeypatch, log_events):
    """Where the rename is refused (a folder the hub may not write, a
    file of the new name there), the login lists the sizes measured, and
    RETR sends the file; the next logins take them from the cache."""
    clock, components, md = env(tmp_path, monkeypatch, workers=False)
    path = drop(md, ASCII, 1, ours=True)
    real = mailbox_module.rename_noreplace

    def refuse_in_folder(src: str, dst: str) -> None:
        if os.path.dirname(src) == os.path.dirname(dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src)
        real(src, dst)  # the moves to cur/ of the messages sent

    monkeypatch.setattr(mailbox_module, "rename_noreplace", refuse_in_folder)
    proto, t = _login_sent(components)
    clock.advance(0)
    new = ASCII.replace(b"body", b"a longer body")
    _changed_in_place(md, path, new)
    assert _commands(proto, t, clock, b"RETR 1") == [R.MESSAGE_SIZE_CHANGED.to_bytes()]
    _end(clock, proto, t)
    size = crlf_size_of(new)
    for _ in range(2):
        _next_login_sends(components, clock, size)
        monkeypatch.setattr(mailbox_module, "_crlf_size_of_file", None)  # not read again
    assert os.listdir(os.path.join(md, "cur")) == [os.path.basename(path) + ":2,S"]
    assert [e for e in log_events if "cannot be renamed" in formatEvent(e)]


@pytest.mark.parametrize("during", [False, True], ids=["before-login", "during-session"])
@pytest.mark.parametrize("ours", [True, False], ids=["sized-name", "plain-name"])
@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
def test_a_file_changed_in_place_to_its_length_with_other_line_ends_is_refused(
        tmp_path, monkeypatch, during, ours, workers):
    """Another program rewrote a message in place at the same length but
    with another number of line ends, so another CRLF size: RETR's +OK
    gave the size listed and sent another number of octets (RFC 1939 5).
    RETR and TOP refuse it with -ERR [SYS/TEMP] for the session (another
    program's name changed before the login is measured by it); the next
    login lists and sends it at its true size, with the same UIDL (a name
    of the hub's shape renamed to its true W=)."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    old, new = b"Subject: a\n\nhi\n", b"Subject: a\n\nh\n\n"
    assert len(old) == len(new) and crlf_size_of(old) != crlf_size_of(new)
    path = drop(md, old, 1, ours=ours)
    if not during:
        _changed_in_place(md, path, new)
    proto, t = _login_sent(components)
    clock.advance(0)
    uidl = _commands(proto, t, clock, b"UIDL 1")[0]
    if during:
        _changed_in_place(md, path, new)
    answers = _commands(proto, t, clock, b"RETR 1", b"TOP 1 0")
    if ours or during:
        assert answers == [R.MESSAGE_SIZE_CHANGED.to_bytes()] * 2
    else:  # another program's name, measured at the login
        assert answers[0].startswith(b"+OK %d octets\r\n" % crlf_size_of(new))
    _end(clock, proto, t)
    proto, t = _login_sent(components)
    clock.advance(0)
    again = _commands(proto, t, clock, b"LIST 1", b"RETR 1", b"UIDL 1")
    _end(clock, proto, t)
    size = crlf_size_of(new)
    assert again[0] == b"+OK 1 %d\r\n" % size
    assert again[1] == b"+OK %d octets\r\nSubject: a\r\n\r\nh\r\n\r\n.\r\n" % size
    assert again[2] == uidl


# stored under 64 KiB, over it in CRLF form: opened, then read whole
_MANY_LINES = b"Subject: a\n\n" + b"\n" * 40_000
_STREAMED = b"Subject: long\n\n" + b"line of text\n" * 6000


@pytest.mark.parametrize("during", [False, True], ids=["before-login", "during-session"])
@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("data", [_MANY_LINES, _STREAMED], ids=["read-whole", "streamed"])
def test_a_larger_file_changed_in_place_to_its_length_with_other_line_ends(
        tmp_path, monkeypatch, during, workers, data):
    """The same for a message of 64 KiB or more in CRLF form.  One read
    whole after its open is refused as a small one is.  One streamed has
    had its +OK and part of its octets sent when the count is known: it
    gets no terminating line, the connection is cut (no other size passes
    for the message; nothing deleted, not flagged seen), and the next
    login lists and sends it at its true size, same UIDL."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    i = data.index(b"\n", len(data) // 2)
    new = data[:i] + b"x" + data[i + 1:]  # a line end made another octet
    assert len(new) == len(data) and crlf_size_of(new) == crlf_size_of(data) - 1
    path = drop(md, data, 1, ours=True)
    if not during:
        _changed_in_place(md, path, new)
    proto, t = _login_sent(components)
    clock.advance(0)
    uidl = _commands(proto, t, clock, b"UIDL 1")[0]
    if during:
        _changed_in_place(md, path, new)
    t.received.clear()
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    clock.advance(0)
    answer = bytes(t.received)
    if data is _MANY_LINES:
        assert answer.startswith(R.MESSAGE_SIZE_CHANGED.to_bytes())
        _end(clock, proto, t)
    else:
        assert answer.startswith(b"+OK %d octets\r\n" % crlf_size_of(data))
        assert t.aborted and not answer.endswith(b"\r\n.\r\n")
        assert b"+OK" not in answer[20:]  # the QUIT behind it was not answered
        proto.connectionLost(Failure(ConnectionDone()))
        clock.advance(1)
    assert os.listdir(os.path.join(md, "cur")) == []  # not flagged seen
    assert _next_login_sends(components, clock, crlf_size_of(new), b"UIDL 1") == [uidl]


# a UTF-8 header section: downgraded for a client without UTF8, streamed
_INTL_STREAMED = INTL(n=1).encode() + b"line of text\n" * 6000
_INTL_PARTS = (
    "From: Jörg <jörg@example.net>\nSubject: Grüße\nMIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=b\n\n--b\n"
    "Content-Type: text/plain; charset=utf-8\nContent-Description: Größe\n\n"
).encode() + b"line of text\n" * 6000 + b"--b--\n"


@pytest.mark.parametrize("during", [False, True], ids=["before-login", "during-session"])
@pytest.mark.parametrize("workers", [False, True], ids=["inline", "workers"])
@pytest.mark.parametrize("data", [_INTL_STREAMED, _INTL_PARTS], ids=["header", "parts"])
def test_a_downgraded_copy_changed_in_place_to_its_length_is_cut_at_its_end(
        tmp_path, monkeypatch, log_events, during, workers, data):
    """The downgraded copy (RFC 6857) of a message of 64 KiB or more sent
    to a client without UTF8, whose file another program changed in place
    to the same length with another count of line ends, is checked at its
    end as a plain one is: no terminating line, the connection cut (the
    QUIT behind it not handled, nothing flagged seen), and the next login
    lists and sends the copy at its true size, same UIDL."""
    clock, components, md = env(tmp_path, monkeypatch, workers)
    i = data.index(b"\n", len(data) // 2)
    new = data[:i] + b"x" + data[i + 1:]  # a line end made another octet
    assert len(new) == len(data) and crlf_size_of(new) == crlf_size_of(data) - 1
    path = drop(md, data, 1, ours=True)
    if not during:
        _changed_in_place(md, path, new)
    proto, t = _login_sent(components)
    clock.advance(0)
    uidl, listed = _commands(proto, t, clock, b"UIDL 1", b"LIST 1")
    listed_size = int(listed.split()[2])
    assert listed_size > crlf_size_of(data)  # the downgraded copy's size
    if during:
        _changed_in_place(md, path, new)
    t.received.clear()
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    clock.advance(0)
    answer = bytes(t.received)
    assert answer.startswith(b"+OK %d octets\r\n" % listed_size)
    assert t.aborted and not answer.endswith(b"\r\n.\r\n")
    assert b"+OK" not in answer[20:]  # the QUIT behind it was not answered
    assert [e for e in log_events if "downgraded copy is" in formatEvent(e)]
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(1)
    assert os.listdir(os.path.join(md, "cur")) == []  # not flagged seen
    assert _next_login_sends(components, clock, listed_size - 1, b"UIDL 1") == [uidl]
