"""The durable outbound queue: format, recovery, crash points, admin ops."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from pathlib import Path

import pytest
from conftest import leased, not_waiting_on
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, Envelope, RecipientDSN, SpooledMessage
from txmailhub.interfaces import IOutboundQueue
from txmailhub.relay import record
from txmailhub.relay.queue import CHANGED, FLUSH, FileSystem, OutboundQueue
from txmailhub.smtp.reply import Reply

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")

BODY = b"Subject: hi\n\nhello\n"


class SimulatedCrash(Exception):
    pass


class CrashingFS(FileSystem):
    """Performs the first ``n - 1`` steps, then "crashes" before step n."""

    def __init__(self, n: int | None = None) -> None:
        super().__init__()
        self.n = n
        self.steps: list[str] = []

    def _step(self, name):
        if self.n is not None and len(self.steps) + 1 >= self.n:
            raise SimulatedCrash(name)
        self.steps.append(name)

    def link_or_copy(self, src, dst):
        self._step("link")
        super().link_or_copy(src, dst)

    def copy(self, src, dst):
        super().copy(src, dst)

    def write_file(self, path, data):
        self._step("write")
        super().write_file(path, data)

    def fsync_file(self, path):
        self._step("fsync_file")
        super().fsync_file(path)

    def rename(self, src, dst):
        self._step("rename")
        super().rename(src, dst)

    def unlink(self, path):
        self._step("unlink")
        super().unlink(path)

    def fsync_dir(self, path):
        self._step("fsync_dir")
        super().fsync_dir(path)


def envelope(*rcpts: str, sender: str | None = "alice@example.org") -> Envelope:
    addrs = tuple(Address(*r.split("@")) for r in rcpts)
    return Envelope(
        sender=None if sender is None else Address(*sender.split("@")),
        recipients=addrs,
        helo="client.example.org",
        client_address="127.0.0.1",
        authenticated_as="alice@example.org",
        body_8bit=True,
        dsn=DSNRequest(ret="HDRS", envid="ENV1"),
        recipient_dsn=((addrs[0], RecipientDSN(notify=("FAILURE", "DELAY"),
                                               orcpt="rfc822;" + rcpts[0])),),
    )


@pytest.fixture
def spool(tmp_path):
    path = tmp_path / "spool" / "msg1"
    path.parent.mkdir()
    path.write_bytes(BODY)
    return SpooledMessage(str(path), len(BODY), len(BODY) + BODY.count(b"\n"))


def make_queue(tmp_path, fs=None, clock=None):
    clock = clock or Clock()
    clock.advance(1_700_000_000)
    return OutboundQueue(str(tmp_path / "queue"), clock, fs=fs)


def queue_files(q):
    return sorted(n for n in os.listdir(q.directory) if not n.startswith(".lock"))


def test_provides_interface(tmp_path):
    assert verifyObject(IOutboundQueue, make_queue(tmp_path))


def test_enqueue_writes_message_and_record(tmp_path, spool):
    q = make_queue(tmp_path)
    seen = []
    q.listen(seen.append)
    d = q.enqueue(envelope("bob@remote.test", "carol@remote.test"), spool)
    qid = d.result
    assert seen == [qid]
    assert queue_files(q) == [qid + ".json", qid + ".msg"]
    with open(q.message_path(qid), "rb") as f:
        assert f.read() == BODY
    # a hard link: the spool file can be discarded, the data stays
    os.unlink(spool.path)
    assert open(q.message_path(qid), "rb").read() == BODY
    data = json.loads(open(q.record_path(qid), "rb").read())
    assert data["format"] == record.FORMAT
    assert [r["state"] for r in data["recipients"]] == ["pending", "pending"]
    entry = q.read(qid)
    assert entry.envelope.sender == Address("alice", "example.org")
    assert entry.envelope.dsn == DSNRequest(ret="HDRS", envid="ENV1")
    assert entry.recipients[0].notify == ("FAILURE", "DELAY")
    assert entry.recipients[0].orcpt == "rfc822;bob@remote.test"
    assert entry.envelope.body_8bit is True
    assert entry.next_attempt == entry.created  # attempted at once
    assert (entry.size, entry.crlf_size) == (spool.size, spool.crlf_size)


@pytest.mark.parametrize("rcpts, words", [
    (("bob@remote.test",), "for 1 recipient"),
    (("bob@remote.test", "carol@remote.test"), "for 2 recipients"),
])
def test_the_queued_line_names_its_recipients_in_words(tmp_path, spool, rcpts, words):
    # "for 1 recipient(s)" on every message queued, beside the hub's other
    # counts, which take the singular for 1
    from twisted.logger import formatEvent, globalLogPublisher

    q = make_queue(tmp_path)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        qid = q.enqueue(envelope(*rcpts), spool).result
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if formatEvent(e).startswith("queued ")]
    assert lines == [f"queued {qid}: from <alice@example.org> {words}"]


def test_record_roundtrip_keeps_everything(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test", sender=None), spool).result
    reply = Reply.of(451, "4.7.1", "greylisted", "try later")

    def change(e):
        r = dataclasses.replace(e.recipients[0], attempts=2, last_reply=reply,
                                last_attempt=5.0, remote_mta="mx.remote.test")
        return dataclasses.replace(e.with_recipients({r.address: r}), attempts=2,
                                   held=True, delay_warned=True)

    new = q.update(qid, change).result
    again = q.read(qid)
    assert again == new
    assert again.envelope.sender is None
    assert again.recipients[0].last_reply == reply
    assert again.last_reply == reply


def test_unreadable_record_is_set_aside(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    with open(q.record_path(qid), "wb") as f:
        f.write(b"{not json")
    assert q.recover() == []
    assert sorted(os.listdir(os.path.join(q.directory, "corrupt"))) == [
        qid + ".json", qid + ".msg"]


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_a_record_that_cannot_be_opened_for_now_is_not_set_aside(tmp_path, spool,
                                                                 monkeypatch, error):
    # out of file descriptors at the start's recovery, a good entry was
    # taken for an unusable one and moved to corrupt/: never delivered
    # unless an admin moved it back.  The error is raised instead (the
    # start fails, and the next one finds the entry where it was)
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    real = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith(".json"):
            raise OSError(error, os.strerror(error), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(OSError) as caught:
        OutboundQueue(q.directory, Clock()).recover()
    assert caught.value.errno == error
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(q.directory, "corrupt"))
    [entry] = OutboundQueue(q.directory, Clock()).recover()
    assert entry.id == qid


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reopens through /proc/self/fd")
def test_a_record_under_a_lease_at_the_start_is_read_not_set_aside(tmp_path, spool):
    # a record another program holds a lease on (a queue folder Samba or
    # an NFS server shares): its non-blocking open fails with EWOULDBLOCK,
    # which set a good entry aside to corrupt/, never delivered.  The
    # start waits for the lease to be given up, as a plain open does
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    with leased(Path(q.record_path(qid))):
        entries = OutboundQueue(q.directory, Clock()).recover()
    assert [e.id for e in entries] == [qid]
    assert not os.path.exists(os.path.join(q.directory, "corrupt"))


def test_a_record_that_cannot_be_opened_otherwise_is_set_aside(tmp_path, spool, monkeypatch):
    # an error that is no shortage (EIO: a bad block) says the entry is
    # unusable: set aside to corrupt/, as a record that is no JSON is, and
    # the start goes on
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    real = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith(".json"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    assert OutboundQueue(q.directory, Clock()).recover() == []
    monkeypatch.undo()
    assert sorted(os.listdir(os.path.join(q.directory, "corrupt"))) == [
        qid + ".json", qid + ".msg"]


def test_a_record_that_is_a_named_pipe_is_set_aside_not_waited_on(tmp_path, spool):
    # a FIFO where a record is: a plain open() waited for a writer for
    # ever, and the hub's start (recover) with it.  It is no record the hub
    # wrote: set aside to corrupt/ with its message, and the start goes on
    q = make_queue(tmp_path)
    good = q.enqueue(envelope("bob@remote.test"), spool).result
    odd = "abcdefgh1234"
    with open(q.message_path(odd), "wb") as f:
        f.write(BODY)
    fifo = Path(q.record_path(odd))
    os.mkfifo(fifo)
    entries = not_waiting_on(fifo, OutboundQueue(q.directory, Clock()).recover)
    assert [e.id for e in entries] == [good]
    assert sorted(os.listdir(os.path.join(q.directory, "corrupt"))) == [
        odd + ".json", odd + ".msg"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_an_entry_whose_message_is_no_file_is_set_aside_at_the_start(tmp_path, spool, kind):
    # only "missing" was looked for: a FIFO or a folder in the message's
    # place was taken as a message, and an attempt's open() of a FIFO
    # waits for a writer on the reactor's thread.  Set aside to corrupt/,
    # as an entry whose message is gone
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    path = Path(q.message_path(qid))
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    assert OutboundQueue(q.directory, Clock()).recover() == []
    assert sorted(os.listdir(os.path.join(q.directory, "corrupt"))) == [
        qid + ".json", qid + ".msg"]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_reading_a_record_that_is_no_file_says_so(tmp_path, kind):
    # the runner and ``mailhub queue`` read records one by one: a FIFO is
    # refused rather than waited on, a folder is no "Is a directory"
    # OSError that ends ``queue list``; both are records it cannot use
    q = make_queue(tmp_path)
    odd = "abcdefgh1234"
    path = Path(q.record_path(odd))
    if kind == "fifo":
        os.mkfifo(path)
        with pytest.raises(record.RecordError) as caught:
            not_waiting_on(path, lambda: q.read(odd))
        assert str(caught.value) == ("its record is not a regular file (a named pipe, "
                                     "device or socket)")
    else:
        path.mkdir()
        with pytest.raises(record.RecordError) as caught:
            q.read(odd)
        assert str(caught.value) == "its record is a folder"


def test_wake_tells_every_listener_even_after_one_that_fails(tmp_path, logged_failures):
    # IOutboundQueue.wake (an embedder's flush): each listener hears None;
    # one that raises is logged and does not keep the others from hearing
    q = make_queue(tmp_path)
    first, last = [], []

    def broken(queue_id):
        first.append(queue_id)
        raise RuntimeError("a listener's bug")

    q.listen(broken)
    q.listen(last.append)
    q.wake()
    assert first == [None] and last == [None]
    [event] = logged_failures
    assert event["log_format"] == "queue listener failed"
    assert event["log_failure"].check(RuntimeError)


def test_a_message_is_found_past_an_unreadable_record(tmp_path, spool):
    # `mailhub queue show <message id>`: an entry whose record is damaged
    # is not the message's, and does not stop the search
    q = make_queue(tmp_path)
    bad = q.enqueue(dataclasses.replace(envelope("bob@remote.test"), message_id="M1"),
                    spool).result
    with open(q.record_path(bad), "wb") as f:
        f.write(b"{not json")
    good = q.enqueue(dataclasses.replace(envelope("carol@remote.test"), message_id="M1"),
                     spool).result
    assert q.find_message("M1") == [good]
    assert q.find_message("") == [] and q.find_message("M2") == []


def test_copy_when_link_impossible(tmp_path, spool, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    assert open(q.message_path(qid), "rb").read() == BODY
    assert os.stat(q.message_path(qid)).st_ino != os.stat(spool.path).st_ino


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_failed_copy_leaves_no_message_file(tmp_path, spool, monkeypatch, where):
    """Where the spool file cannot be linked, the queue copies it; a copy
    that fails half-way (a full disk, an I/O error at its fsync) must not
    leave its partial file in queue/ until the next start: a client
    retrying against a full disk would fill what little room is left."""
    import shutil

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    def half_copy(fin, fout, length=0):
        fout.write(fin.read(5))
        fout.flush()
        raise OSError(28, "No space left on device")

    def no_fsync(fd):
        raise OSError(5, "Input/output error")

    q = make_queue(tmp_path)
    monkeypatch.setattr(os, "link", no_link)
    if where == "write":
        monkeypatch.setattr(shutil, "copyfileobj", half_copy)
    else:
        monkeypatch.setattr(os, "fsync", no_fsync)
    d = q.enqueue(envelope("bob@remote.test"), spool)
    failure = d.result
    d.addErrback(lambda f: None)
    assert isinstance(failure.value, OSError)
    assert queue_files(q) == []


def test_enqueue_order_of_durable_steps(tmp_path, spool):
    fs = CrashingFS()
    q = make_queue(tmp_path, fs=fs)
    q.enqueue(envelope("bob@remote.test"), spool)
    # message linked and its directory entry synced before the record is
    # written, synced, renamed into place and the directory synced again
    assert fs.steps == ["link", "fsync_dir", "write", "fsync_file", "rename", "fsync_dir"]


class SyncerSpy:
    def __init__(self):
        self.requests = []

    def sync_file(self, path):
        self.requests.append(("file", os.path.basename(path)))
        return defer.succeed(None)

    def sync_dir(self, path):
        self.requests.append(("dir", os.path.basename(path)))
        return defer.succeed(None)


def test_enqueue_uses_the_group_commit_syncer(tmp_path, spool):
    syncer = SyncerSpy()
    clock = Clock()
    q = OutboundQueue(str(tmp_path / "queue"), clock, syncer=syncer)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    assert syncer.requests == [("dir", "queue"), ("file", f".{qid}.json.tmp"), ("dir", "queue")]
    assert q.read(qid) is not None


def test_enqueue_waits_for_the_syncer(tmp_path, spool):
    pending = []

    class SlowSyncer(SyncerSpy):
        def sync_dir(self, path):
            d = defer.Deferred()
            pending.append(d)
            return d

    q = OutboundQueue(str(tmp_path / "queue"), Clock(), syncer=SlowSyncer())
    d = q.enqueue(envelope("bob@remote.test"), spool)
    assert not d.called
    pending.pop().callback(None)  # the message's directory entry
    assert not d.called
    pending.pop().callback(None)  # the record's
    assert d.called and q.read(d.result) is not None


def test_two_entries_of_one_millisecond_never_share_an_id(tmp_path, spool, monkeypatch):
    # the id is free while its message file is not there, and the store
    # makes that file a turn of the reactor later: a second entry of the
    # same millisecond whose random octets come out the same must not
    # take the id of the first, still being stored
    held = []

    def io(fn, *args):
        d = defer.Deferred()
        held.append((fn, args, d))
        return d

    octets = iter(["abcdef", "abcdef", "123456"])
    monkeypatch.setattr("txmailhub.relay.queue.secrets.token_hex", lambda n: next(octets))
    q = OutboundQueue(str(tmp_path / "queue"), Clock(), io=io)
    first = q.enqueue(envelope("bob@remote.test"), spool)
    second = q.enqueue(envelope("carol@remote.test"), spool)
    while held:
        fn, args, d = held.pop(0)
        d.callback(fn(*args))
    ids = [first.result, second.result]
    assert [i[-6:] for i in ids] == ["ABCDEF", "123456"]
    assert [str(r.address) for i in ids for r in q.read(i).recipients] == [
        "bob@remote.test", "carol@remote.test"]
    # and the id is free again once its entry is stored, or failed
    assert not q._ids_in_flight


def test_failed_enqueue_leaves_nothing(tmp_path, spool):
    class DiskFull(FileSystem):
        def write_file(self, path, data):
            raise OSError(28, "No space left on device")

    q = OutboundQueue(str(tmp_path / "queue"), Clock(), fs=DiskFull())
    d = q.enqueue(envelope("bob@remote.test"), spool)
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert queue_files(q) == []


def test_a_link_that_fails_removes_nothing_it_did_not_make(tmp_path, spool):
    # the link fails because the name is taken (an id collision the id check
    # missed): the file there is another entry's, and stays
    class Taken(FileSystem):
        def link_or_copy(self, src, dst):
            with open(dst, "wb") as f:
                f.write(b"another entry's message\n")
            raise FileExistsError(17, "File exists", dst)

    q = OutboundQueue(str(tmp_path / "queue"), Clock(), fs=Taken())
    failures = []
    q.enqueue(envelope("bob@remote.test"), spool).addErrback(failures.append)
    assert failures and failures[0].check(FileExistsError)
    [left] = queue_files(q)
    with open(os.path.join(q.directory, left), "rb") as f:
        assert f.read() == b"another entry's message\n"


def test_a_failed_sync_after_the_commit_takes_the_entry_back(tmp_path, spool):
    # The client hears 451 and sends the message again: the entry must not
    # stay behind to be delivered a second time.
    class LastSyncFails(SyncerSpy):
        def sync_dir(self, path):
            super().sync_dir(path)
            if len(self.requests) == 3:
                return defer.fail(OSError(5, "Input/output error"))
            return defer.succeed(None)

    q = OutboundQueue(str(tmp_path / "queue"), Clock(), syncer=LastSyncFails())
    seen = []
    q.listen(seen.append)
    failures = []
    q.enqueue(envelope("bob@remote.test"), spool).addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert queue_files(q) == [] and seen == []


def test_queue_files_are_private_whatever_the_umask(tmp_path, spool, monkeypatch):
    old = os.umask(0o022)
    try:
        monkeypatch.setattr(os, "link", lambda src, dst: (_ for _ in ()).throw(
            OSError(18, "Invalid cross-device link")))
        q = make_queue(tmp_path)
        qid = q.enqueue(envelope("bob@remote.test"), spool).result
        q.request_flush()
        q.note_change()
        assert {FLUSH, CHANGED} <= set(os.listdir(q.directory))
        for name in os.listdir(q.directory):
            mode = os.stat(os.path.join(q.directory, name)).st_mode & 0o777
            assert mode == 0o600, (name, oct(mode))
        assert os.stat(q.directory).st_mode & 0o777 == 0o700
        assert {qid + ".json", qid + ".msg"} <= set(os.listdir(q.directory))
    finally:
        os.umask(old)


def test_a_new_queue_folder_is_made_durable(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr("txmailhub.store.sync.fsync_dir", synced.append)
    make_queue(tmp_path)
    assert synced == [str(tmp_path)]
    make_queue(tmp_path)  # it exists now: nothing to do
    assert synced == [str(tmp_path)]


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_enqueue_crash_points(tmp_path, spool, crash_at):
    fs = CrashingFS(crash_at)
    q = make_queue(tmp_path, fs=fs)
    d = q.enqueue(envelope("bob@remote.test"), spool)
    acked = []
    d.addCallbacks(acked.append, lambda f: f.trap(SimulatedCrash))
    # "restart": a new queue object over the same directory
    q2 = OutboundQueue(q.directory, Clock())
    entries = q2.recover()
    if acked:
        assert [e.id for e in entries] == acked
        assert open(entries[0].message_path, "rb").read() == BODY
    elif crash_at <= 5:
        # never committed: nothing left behind, not even a temp file
        assert entries == []
        assert [n for n in os.listdir(q.directory) if not n.startswith(".lock")] == []
    else:
        # renamed into place but the directory sync did not happen: not
        # acknowledged (the client sends again), yet complete if it survives
        assert len(entries) == 1
        assert open(entries[0].message_path, "rb").read() == BODY
    assert (acked == []) == (crash_at <= 6)


@pytest.mark.parametrize("crash_at", range(1, 6))
def test_update_crash_points_leave_old_or_new(tmp_path, spool, crash_at):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    old = q.read(qid)
    q.fs = CrashingFS(crash_at)
    d = q.update(qid, lambda e: dataclasses.replace(e, attempts=7))
    d.addErrback(lambda f: f.trap(SimulatedCrash))
    entries = OutboundQueue(q.directory, Clock()).recover()
    assert len(entries) == 1
    assert entries[0].attempts in (old.attempts, 7)
    if crash_at >= 4:  # renamed into place (at worst the final directory sync missing)
        assert entries[0].attempts == 7


def test_an_update_the_disk_cannot_take_leaves_the_old_record_and_no_temporary(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    before = queue_files(q)

    class DiskFull(FileSystem):
        def fsync_file(self, path):  # the write went to the page cache; the blocks did not
            raise OSError(28, "No space left on device")

    q.fs = DiskFull()
    failures = []
    q.update(qid, lambda e: dataclasses.replace(e, attempts=7)).addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert queue_files(q) == before  # no .<id>.json.tmp per failed attempt
    assert q.read(qid).attempts == 0


def test_update_order_of_durable_steps(tmp_path, spool):
    # a crash test that raises cannot see a missing fsync: the order can
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    q.fs = fs = CrashingFS()
    q.update(qid, lambda e: dataclasses.replace(e, attempts=7))
    assert fs.steps == ["write", "fsync_file", "rename", "fsync_dir"]


@pytest.mark.parametrize("crash_at", range(1, 6))
def test_remove_crash_points(tmp_path, spool, crash_at):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    q.fs = CrashingFS(crash_at)

    def deliver_all(e):
        return e.with_recipients({r.address: dataclasses.replace(r, state=record.DELIVERED)
                                  for r in e.recipients})

    crashed = []
    d = q.update(qid, deliver_all)
    d.addErrback(lambda f: crashed.append(f.trap(SimulatedCrash)))
    # the removal's steps are unlink (the record), fsync_dir, unlink (the
    # message), fsync_dir: a crash point past them is no crash at all
    assert crashed == ([SimulatedCrash] if crash_at <= 4 else [])
    q2 = OutboundQueue(q.directory, Clock())
    entries = q2.recover()
    # either still whole (record removal never happened) or gone entirely
    assert bool(entries) == (crash_at == 1)
    if entries:
        assert entries[0].id == qid
        assert os.path.exists(entries[0].message_path)
    else:
        assert [n for n in os.listdir(q.directory) if not n.startswith(".lock")] == []


def test_finished_entry_is_removed(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test", "carol@remote.test"), spool).result
    bob = Address("bob", "remote.test")
    carol = Address("carol", "remote.test")

    def one(state, who):
        return lambda e: e.with_recipients(
            {who: dataclasses.replace(e.recipient(who), state=state)})

    assert q.update(qid, one(record.DELIVERED, bob)).result is not None
    assert q.update(qid, one(record.FAILED, carol)).result is not None  # bounce still owed
    assert q.update(qid, one(record.BOUNCED, carol)).result is None
    assert q.ids() == []
    assert queue_files(q) == []


def test_success_notice_keeps_entry(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    bob = Address("bob", "remote.test")
    e = q.update(qid, lambda e: e.with_recipients({bob: dataclasses.replace(
        e.recipient(bob), state=record.DELIVERED, notice="relayed")})).result
    assert e is not None and not e.finished


def test_update_of_deleted_entry_does_not_resurrect(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    assert q.delete(qid) is True
    assert q.update(qid, lambda e: dataclasses.replace(e, attempts=3)).result is None
    assert q.ids() == []
    assert q.delete(qid) is False
    assert q.take_flag(CHANGED) is True
    assert q.take_flag(CHANGED) is False


def test_an_absent_flag_is_looked_for_without_an_unlink(tmp_path, spool, monkeypatch):
    # the runner asks every tick on the reactor thread; an unlink, even of
    # a missing name, waits for write access that a frozen disk never gives
    q = make_queue(tmp_path)
    unlinked = []
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        unlinked.append(os.path.basename(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    assert q.take_flag(FLUSH) is False
    assert q.take_flag(CHANGED) is False
    assert unlinked == []
    q.request_flush()
    assert q.take_flag(FLUSH) is True
    assert unlinked == [FLUSH]


def test_hold_release_and_flush_flags(tmp_path, spool):
    clock = Clock()
    q = make_queue(tmp_path, clock=clock)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    q.update(qid, lambda e: dataclasses.replace(e, next_attempt=e.next_attempt + 3600))
    assert q.set_held(qid, True).held is True
    assert q.read(qid).held is True
    released = q.set_held(qid, False)
    assert released.held is False
    assert released.next_attempt == clock.seconds()
    assert q.set_held("NOSUCHID00", True) is None
    q.request_flush()
    assert q.take_flag(FLUSH) is True
    assert q.take_flag(FLUSH) is False


def test_recover_resumes_every_entry(tmp_path, spool):
    q = make_queue(tmp_path)
    ids = [q.enqueue(envelope(f"u{i}@remote.test"), spool).result for i in range(3)]
    entries = OutboundQueue(q.directory, Clock()).recover()
    assert sorted(e.id for e in entries) == sorted(ids)
    assert all(e.pending for e in entries)


def test_recover_removes_temporary_files_a_crash_left(tmp_path, spool):
    # a delivery attempt's 7-bit copy and a half-written record update,
    # both left by a crash mid-work: gone, the entry itself untouched
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    message = q.read(qid).message_path
    before = queue_files(q)
    seven = f"{message}.0a1b2c3d.7bit"
    tmp = os.path.join(q.directory, f".{qid}.json.tmp")
    for path in (seven, tmp):
        with open(path, "wb") as f:
            f.write(b"partial")
    [entry] = OutboundQueue(q.directory, Clock()).recover()
    assert entry.id == qid and open(entry.message_path, "rb").read() == BODY
    assert queue_files(q) == before


def test_read_rejects_path_tricks(tmp_path):
    q = make_queue(tmp_path)
    assert q.read("../../etc/passwd") is None
    assert q.read("x") is None


def test_a_reply_the_hub_made_up_stays_its_own_across_a_restart():
    from txmailhub.smtp.reply import LocalReply

    mine = LocalReply(421, "4.4.2", ("timeout waiting for the server (DATA)",))
    theirs = Reply.of(450, "4.2.0", "mailbox busy")
    for reply in (mine, theirs):
        back = record.reply_from_json(json.loads(json.dumps(record.reply_to_json(reply))))
        assert back == reply and type(back) is type(reply)


def test_a_copied_message_is_fsynced_before_the_commit(tmp_path, spool, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "fsync", fsync)
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    assert os.stat(q.message_path(qid)).st_ino in synced


def test_an_entry_whose_message_is_gone_is_set_aside(tmp_path, spool):
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    os.unlink(q.message_path(qid))
    assert q.recover() == []
    assert os.listdir(os.path.join(q.directory, "corrupt")) == [qid + ".json"]
    assert q.ids() == []


def test_ids_are_oldest_first(tmp_path, spool):
    clock = Clock()
    q = make_queue(tmp_path, clock=clock)
    ids = []
    for i in range(20):
        ids.append(q.enqueue(envelope(f"u{i}@remote.test"), spool).result)
        clock.advance(1)
    assert q.ids() == ids


def test_8bit_data_is_noticed_without_body_8bitmime(tmp_path):
    # a client that sent 8-bit octets without BODY=8BITMIME: the relay must
    # still know, to convert for a server without 8BITMIME (RFC 6152)
    q = make_queue(tmp_path)
    for body, expected in (("Subject: x\n\nGrüße\n".encode(), True), (BODY, False)):
        path = tmp_path / f"spool-{expected}"
        path.write_bytes(body)
        msg = SpooledMessage(str(path), len(body), len(body) + body.count(b"\n"))
        env = dataclasses.replace(envelope("bob@remote.test"), body_8bit=False)
        qid = q.enqueue(env, msg).result
        assert q.read(qid).eight_bit is expected


@pytest.mark.parametrize(("raw", "why"), [
    (b"\xff{}", "the queue record is not UTF-8 (octet 0)"),
    (b'{"format": 1', "the queue record is not JSON (line 1, column 13)"),
    (b'{"format": %d}' % record.FORMAT, "the queue record lacks 'envelope'"),
    (b'{"format": %d, "envelope": {}, "recipients": 3}' % record.FORMAT,
     "bad queue record: 'int' object is not iterable"),
])
def test_an_unreadable_record_says_why_once(raw, why):
    with pytest.raises(record.RecordError) as info:
        record.QueueEntry.from_json(raw)
    assert str(info.value) == why


def test_delete_rejects_path_tricks(tmp_path, spool):
    q = make_queue(tmp_path)
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"{}")
    assert q.delete("../victim") is False
    assert victim.exists()


def test_a_new_id_never_takes_a_queued_message_s_name(tmp_path, spool, monkeypatch):
    # same millisecond, same random part: the second id must differ, and
    # the first entry's message must not be touched
    from txmailhub.relay import queue as queue_module

    q = make_queue(tmp_path)
    first = q.enqueue(envelope("bob@remote.test"), spool).result
    tokens = iter([first[-6:], "ABCDEF"])
    monkeypatch.setattr(queue_module.secrets, "token_hex", lambda n: next(tokens))
    second = q.enqueue(envelope("carol@remote.test"), spool).result
    assert isinstance(second, str) and second != first
    assert open(q.message_path(first), "rb").read() == BODY
    assert q.read(first).recipients[0].address == Address("bob", "remote.test")


def test_remove_order_of_durable_steps(tmp_path, spool):
    # the record's removal is durable before the message goes: a crash in
    # between never leaves a record whose message is missing
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    q.fs = fs = CrashingFS()
    assert q.delete(qid)
    assert fs.steps == ["unlink", "fsync_dir", "unlink", "fsync_dir"]


def test_an_update_holds_the_lock_against_mailhub_queue(tmp_path, spool):
    # ``mailhub queue`` in another process takes the same flock: while a
    # record is read, changed and written nobody else may even read it
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    fd = os.open(os.path.join(q.directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    blocked = []

    def change(e):
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            blocked.append(True)
        return e

    try:
        q.update_now(qid, change)
    finally:
        os.close(fd)
    assert blocked == [True]


def _record_json(**changes):
    entry = record.QueueEntry.new("0000000000ABCDEF", envelope("bob@remote.test"), 1.0)
    data = json.loads(entry.to_json())
    data.update(changes)
    return data


def test_a_record_of_another_format_is_refused():
    raw = json.dumps(_record_json(format=record.FORMAT + 1)).encode()
    with pytest.raises(record.RecordError, match="unknown queue record format"):
        record.QueueEntry.from_json(raw)


def test_an_unknown_recipient_state_is_refused():
    data = _record_json()
    data["recipients"][0]["state"] = "sent"
    with pytest.raises(record.RecordError, match="unknown recipient state"):
        record.QueueEntry.from_json(json.dumps(data).encode())


def test_a_recipient_given_twice_is_queued_once():
    entry = record.QueueEntry.new(
        "0000000000ABCDEF", envelope("bob@remote.test", "bob@remote.test"), 1.0)
    assert [str(r.address) for r in entry.recipients] == ["bob@remote.test"]


def test_last_reply_leaves_out_delivered_recipients():
    # `queue list` shows why the mail is still queued, not a later 250
    entry = record.QueueEntry.new(
        "0000000000ABCDEF", envelope("bob@remote.test", "carol@remote.test"), 1.0)
    bob, carol = entry.recipients
    later = Reply.of(451, "4.7.1", "greylisted")
    entry = entry.with_recipients({
        bob.address: dataclasses.replace(bob, state=record.DELIVERED, last_attempt=9.0,
                                         last_reply=Reply.of(250, "2.0.0", "ok")),
        carol.address: dataclasses.replace(carol, last_attempt=5.0, last_reply=later)})
    assert entry.last_reply == later


def test_an_orcpt_without_notify_and_smtputf8_survive_a_restart(tmp_path, spool):
    # both matter to the next hop: ORCPT is passed on to a server offering
    # DSN (RFC 3461), SMTPUTF8 decides MAIL FROM and the 7-bit conversion
    bob = Address("bob", "remote.test")
    env = dataclasses.replace(envelope("bob@remote.test"), smtputf8=True, recipient_dsn=(
        (bob, RecipientDSN(orcpt="rfc822;bob@remote.test")),))
    q = make_queue(tmp_path)
    again = q.read(q.enqueue(env, spool).result)
    assert again.envelope.smtputf8 is True
    assert dict(again.envelope.recipient_dsn)[bob] == RecipientDSN(orcpt="rfc822;bob@remote.test")


def test_envid_and_orcpt_as_sent_survive_a_restart(tmp_path, spool):
    # RFC 3461 5.2.1: relayed as received, so kept on disk beside the
    # decoded forms the notices show
    bob = Address("bob", "remote.test")
    dsn = RecipientDSN(("FAILURE",), "rfc822;Joe+X@Example.COM", "rfc822;Joe+2BX@Example.COM")
    env = dataclasses.replace(envelope("bob@remote.test"),
                              dsn=DSNRequest("HDRS", "aAb", "a+41b"), recipient_dsn=((bob, dsn),))
    q = make_queue(tmp_path)
    again = q.read(q.enqueue(env, spool).result)
    assert again.envelope.dsn == DSNRequest("HDRS", "aAb", "a+41b")
    assert dict(again.envelope.recipient_dsn)[bob] == dsn
    assert again.recipient(bob).orcpt_raw == "rfc822;Joe+2BX@Example.COM"


@pytest.mark.parametrize("where", ["envelope", "recipient"])
def test_a_form_as_sent_that_is_not_text_is_a_bad_record(where):
    data = json.loads(record.QueueEntry.new(
        "0000000000ABCDEF", envelope("bob@remote.test"), 1.0).to_json())
    if where == "envelope":
        data["envelope"]["envid_raw"] = 7
    else:
        data["recipients"][0]["orcpt_raw"] = ["x"]
    with pytest.raises(record.RecordError):
        record.QueueEntry.from_json(json.dumps(data).encode())


def test_a_release_is_counted_in_the_record(tmp_path, spool):
    # The runner tells a release made while it delivered the entry by the
    # count changing between the attempt's start and its record.
    q = make_queue(tmp_path)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    assert q.read(qid).releases == 0
    q.set_held(qid, True)
    assert q.read(qid).releases == 0
    assert q.set_held(qid, False).releases == 1
    assert q.set_held(qid, False).releases == 2
    assert q.read(qid).releases == 2  # and it survives a restart


def test_the_submitter_survives_the_queue_and_old_records_read_without_it(tmp_path, spool):
    # RFC 4954 5: who the hub vouches for as the submitter goes on as
    # AUTH=<mailbox> when the entry is relayed, after a restart too
    jorg = Address("j\u00f6rg", "b\u00fccher.example")
    q = make_queue(tmp_path)
    for who in (Address("alice", "example.org"), jorg, None):
        env = dataclasses.replace(envelope("bob@remote.test"), submitter=who)
        qid = q.enqueue(env, spool).result
        data = json.loads(open(q.record_path(qid), "rb").read())
        assert data["envelope"]["submitter"] == (None if who is None else str(who))
        assert q.read(qid).envelope.submitter == who
    # a record written before the field existed: readable, nobody vouched for
    old = _record_json()
    del old["envelope"]["submitter"]
    entry = record.QueueEntry.from_json(json.dumps(old).encode())
    assert entry.envelope.submitter is None
    assert entry.envelope.authenticated_as == "alice@example.org"  # not taken for it
    bad = _record_json()
    bad["envelope"]["submitter"] = "no-at-sign"
    with pytest.raises(record.RecordError, match="bad address"):
        record.QueueEntry.from_json(json.dumps(bad).encode())


def test_a_huge_remote_reply_is_kept_short_in_the_record():
    # A reply may have 200 lines of 4 KiB; kept whole it went into the
    # record once per recipient (100 recipients refused by one MAIL: 80 MB
    # written, fsynced, re-read at every update).  What notices and queue
    # show use -- the beginning -- is kept.
    from txmailhub.smtp.reply import LocalReply
    lines = tuple(f"{i:03d} " + "x" * 4000 for i in range(200))
    for kind in (Reply, LocalReply):
        reply = kind(550, "5.7.1", lines)
        stored = record.reply_to_json(reply)
        assert len(json.dumps(stored)) < 3000
        back = record.reply_from_json(stored)
        assert type(back) is kind and back.code == 550 and back.status == "5.7.1"
        assert back.text()[:900] == reply.text()[:900]
        assert back.text().endswith("...")
    # an ordinary reply is kept as it is
    small = Reply(451, "4.7.1", ("greylisted", "try again later"))
    assert record.reply_from_json(record.reply_to_json(small)) == small


@pytest.mark.parametrize("lines", [
    ("x" * 1998, "y" * 10),  # no room left for " / ..." after the first line
    ("x" * 1995, "y" * 10),
    ("x" * 1993, "y" * 10),
])
def test_a_cut_reply_stays_within_the_record_limit(lines):
    # the rule _stored_lines states: Reply.text() of what is kept stays
    # within MAX_STORED_REPLY, and a cut shows as "..." at the end
    back = record.reply_from_json(record.reply_to_json(Reply(550, "5.7.1", lines)))
    text = " / ".join(back.lines)
    assert len(text) <= record.MAX_STORED_REPLY and text.endswith("...")
    assert text.startswith("x" * 1990)


def test_a_reply_cut_in_a_later_line_is_kept_up_to_exactly_the_limit():
    # lines of 100 with " / " between: 19 whole, the 20th cut so that the
    # text is exactly MAX_STORED_REPLY long; one that fits exactly is whole
    lines = tuple(chr(ord("a") + i % 26) * 100 for i in range(30))
    back = record.reply_from_json(record.reply_to_json(Reply(550, "5.7.1", lines)))
    text = " / ".join(back.lines)
    assert len(text) == record.MAX_STORED_REPLY == 2000
    assert back.lines[:19] == lines[:19] and text.endswith("t" * 40 + "...")
    exact = ("x" * 997, "y" * 1000)  # 997 + 3 + 1000
    assert record.reply_from_json(record.reply_to_json(Reply(550, None, exact))).lines == exact


def test_notify_without_orcpt_survives_a_restart(tmp_path, spool):
    # RFC 3461 5.2: NOTIFY is passed on to a next hop offering DSN; the
    # relay takes it from the envelope's recipient_dsn, rebuilt from the
    # record when the queue is read again
    bob = Address("bob", "remote.test")
    env = dataclasses.replace(envelope("bob@remote.test"), recipient_dsn=(
        (bob, RecipientDSN(notify=("SUCCESS", "DELAY"))),))
    q = make_queue(tmp_path)
    again = q.read(q.enqueue(env, spool).result)
    assert dict(again.envelope.recipient_dsn)[bob] == RecipientDSN(notify=("SUCCESS", "DELAY"))


@pytest.mark.parametrize("text", ["@remote.test", "bob@", "bob"])
def test_a_recipient_address_without_a_local_part_or_domain_is_a_bad_record(text):
    data = json.loads(record.QueueEntry.new(
        "0000000000ABCDEF", envelope("bob@remote.test"), 1.0).to_json())
    data["recipients"][0]["address"] = text
    with pytest.raises(record.RecordError, match="bad address"):
        record.QueueEntry.from_json(json.dumps(data).encode())


def test_a_quoted_local_part_with_an_at_sign_survives_the_record():
    # RFC 5321 4.1.2: a Quoted-string local part may hold "@"; the domain
    # never does, so the address splits at the last one
    odd = Address("a@b", "remote.test")
    env = dataclasses.replace(envelope("bob@remote.test"), recipients=(odd,), recipient_dsn=())
    again = record.QueueEntry.from_json(record.QueueEntry.new("0000000000ABCDEF", env,
                                                              1.0).to_json())
    assert again.recipients[0].address == odd and again.envelope.recipients == (odd,)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"1"])
def test_a_record_that_is_no_json_object_is_a_bad_record(raw):
    with pytest.raises(record.RecordError):
        record.QueueEntry.from_json(raw)


def test_failed_lists_the_recipients_not_told_yet_and_last_reply_is_the_newest():
    # the module's states: "failed" is failed with the notice not yet
    # sent, "bounced" told; ``last_reply`` the most recent reply of a
    # recipient not delivered, whichever recipient comes first
    env = dataclasses.replace(envelope("bob@remote.test", "carol@remote.test",
                                       "dave@remote.test"), recipient_dsn=())
    entry = record.QueueEntry.new("0000000000ABCDEF", env, 1.0)
    bob, carol, dave = (r.address for r in entry.recipients)
    old, new = Reply.of(450, "4.2.0", "busy"), Reply.of(550, "5.1.1", "unknown")
    entry = entry.with_recipients({
        bob: dataclasses.replace(entry.recipient(bob), state=record.BOUNCED,
                                 last_reply=new, last_attempt=30.0),
        carol: dataclasses.replace(entry.recipient(carol), state=record.FAILED,
                                   last_reply=new, last_attempt=20.0),
        dave: dataclasses.replace(entry.recipient(dave), last_reply=old, last_attempt=10.0),
    })
    again = record.QueueEntry.from_json(entry.to_json())
    assert [r.address for r in again.failed] == [carol]
    entry = entry.with_recipients({
        bob: dataclasses.replace(entry.recipient(bob), last_reply=new, last_attempt=20.0),
        carol: dataclasses.replace(entry.recipient(carol), last_reply=old, last_attempt=10.0),
        dave: dataclasses.replace(entry.recipient(dave), last_reply=old, last_attempt=5.0),
    })
    assert entry.last_reply is new


def test_an_attempts_end_never_takes_the_next_attempts_marker(tmp_path, monkeypatch):
    # The hub does its marker work in a thread pool.  The end of one
    # attempt (its marker removed: a look at the name, then the unlink)
    # and the start of the entry's next one (a new marker renamed to the
    # same name: a release during the attempt starts it at once) must not
    # run at once in two threads: the unlink took the new marker, and
    # `queue list` did not say "delivering" for the whole new attempt.
    from txmailhub.relay import inflight

    jobs: list = []

    def io(f, *args):  # a thread pool whose jobs the test runs
        d = defer.Deferred()
        jobs.append((f, args, d))
        return d

    def run_one():
        f, args, d = jobs.pop(0)
        d.callback(f(*args))

    queue = OutboundQueue(str(tmp_path / "queue"), Clock(), io=io)
    qid = "0123456789ABCDEF"
    first = queue.mark_attempt(qid, 1.0)
    run_one()
    queue.unmark_attempt(qid, first)  # the first attempt ends...
    second = queue.mark_attempt(qid, 2.0)  # ...and the next one begins
    real_stat = os.stat

    def stat(path, *args, **kw):
        # the other thread: whatever marker work is ready runs now, between
        # this look at the marker's name and what follows it
        result = real_stat(path, *args, **kw)
        if str(path).endswith(inflight.SUFFIX) and jobs:
            run_one()
        return result

    with monkeypatch.context() as m:
        m.setattr(inflight.os, "stat", stat)
        while jobs:
            run_one()
    assert queue.attempt_since(qid) == 2.0
    queue.unmark_attempt(qid, second)
    while jobs:
        run_one()
    assert queue.attempt_since(qid) is None
    assert [n for n in os.listdir(queue.directory) if inflight.is_marker(n)] == []


# A hub that, mid-attempt, forks a child which lives on (an embedding
# application's worker, forked without an exec), and then ends.
_FORKING_HUB = """
import os, select, sys
from txmailhub.relay import inflight
directory, release = sys.argv[1], int(sys.argv[2])
fd = inflight.mark(directory, "Q1", 5.0)
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # not the test's pipes: their end is the hub's
    os.dup2(null, 2)
    select.select([release], [], [], 60)  # lives until the test lets it go
    os._exit(0)
# the child has let go of the marker, not of the hub's lock on it
print(pid, inflight.since(directory, "Q1"), flush=True)
os._exit(0)  # ends mid-attempt: the kernel drops the hub's lock
"""


def test_a_child_forked_during_an_attempt_does_not_keep_its_marker_locked(tmp_path):
    # a flock belongs to the open file, which a fork shares: the marker
    # read "delivering" for as long as the child lived, the hub gone
    import subprocess
    import sys

    import txmailhub
    from txmailhub.relay import inflight

    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(txmailhub.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH")) if p)
    release, let_go = os.pipe()
    try:
        hub = subprocess.run([sys.executable, "-c", _FORKING_HUB, str(tmp_path), str(release)],
                             pass_fds=(release,), capture_output=True, text=True, env=env,
                             timeout=60, check=True)
        child, said = hub.stdout.split()
        assert said == "5.0"  # the hub's attempt, while the hub ran
        os.kill(int(child), 0)  # the child lives on
        assert os.path.exists(inflight.marker_path(str(tmp_path), "Q1"))  # left, as by a kill
        assert inflight.since(str(tmp_path), "Q1") is None
    finally:
        os.close(let_go)
        os.close(release)


def test_an_entry_set_aside_is_durable_in_corrupt_before_the_queue_forgets_it(tmp_path, spool):
    # recover() moves an unusable entry to corrupt/ and then fsyncs the
    # queue folder, which lost it: corrupt/ must be synced first, or a
    # crash could leave the admin's only copy in neither folder
    fs = CrashingFS()
    q = make_queue(tmp_path, fs=fs)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    with open(q.record_path(qid), "wb") as f:
        f.write(b"{not json")
    synced: list[str] = []
    fs.fsync_dir = lambda path: synced.append(path) or FileSystem.fsync_dir(fs, path)
    assert q.recover() == []
    corrupt = os.path.join(q.directory, "corrupt")
    assert corrupt in synced
    assert synced.index(corrupt) < len(synced) - 1 - synced[::-1].index(q.directory)


def test_the_corrupt_folder_made_for_an_entry_is_named_durably_before_it_is_filled(
        tmp_path, spool, monkeypatch):
    # corrupt/ made by the set-aside: its entry in the queue folder is
    # fsynced before the files go in, or a crash could take the folder,
    # and the admin's copy in it, away
    from txmailhub.store import sync

    fs = CrashingFS()
    q = make_queue(tmp_path, fs=fs)
    qid = q.enqueue(envelope("bob@remote.test"), spool).result
    with open(q.record_path(qid), "wb") as f:
        f.write(b"{not json")
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(sync, "fsync_dir", lambda path: events.append(("made", path)))
    fs.fsync_dir = lambda path: events.append(("fs", path)) or FileSystem.fsync_dir(fs, path)
    assert q.recover() == []
    corrupt = os.path.join(q.directory, "corrupt")
    assert ("made", q.directory) in events
    assert events.index(("made", q.directory)) < events.index(("fs", corrupt))
    assert os.stat(corrupt).st_mode & 0o777 == 0o700  # whatever the umask


class _Statvfs:
    def __init__(self, bavail: int, frsize: int = 4096, blocks: int = 1000,
                 files: int = 1000, favail: int = 500) -> None:
        self.f_bavail, self.f_frsize, self.f_blocks = bavail, frsize, blocks
        self.f_files, self.f_favail = files, favail


@pytest.mark.parametrize("fs,room", [
    (_Statvfs(bavail=16), True),  # 64 KiB free
    (_Statvfs(bavail=15), False),
    (_Statvfs(bavail=0), False),
    (_Statvfs(bavail=100, favail=0), False),  # no inode for the new record
    (_Statvfs(bavail=100, files=0, favail=0), True),  # no inode counts (btrfs)
    (_Statvfs(bavail=0, blocks=0), True),  # no block counts: cannot tell
    (OSError(5, "Input/output error"), True),  # cannot tell either
])
def test_room_for_an_attempts_outcome(tmp_path, monkeypatch, fs, room):
    from txmailhub.relay import queue as queue_module

    q = make_queue(tmp_path)

    def statvfs(path):
        assert path == q.directory
        if isinstance(fs, Exception):
            raise fs
        return fs

    monkeypatch.setattr(queue_module.os, "statvfs", statvfs)
    assert q.has_room_for_outcome("0123456789ABCDEF") is room


def test_room_for_an_attempts_outcome_counts_a_large_record_twice(tmp_path, monkeypatch):
    from txmailhub.relay import queue as queue_module

    q = make_queue(tmp_path)
    qid = "0123456789ABCDEF"
    with open(q.record_path(qid), "wb") as f:
        f.write(b" " * 50_000)
    monkeypatch.setattr(queue_module.os, "statvfs", lambda path: _Statvfs(bavail=24))  # 96 KiB
    assert not q.has_room_for_outcome(qid)
    monkeypatch.setattr(queue_module.os, "statvfs", lambda path: _Statvfs(bavail=25))  # 100 KiB
    assert q.has_room_for_outcome(qid)
