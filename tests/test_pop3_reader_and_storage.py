"""POP3 sessions on a real Maildir: a client that reads a pipelined backlog
slowly, a message another reader removed (cases found by fuzzing)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

import pytest
from conftest import not_waiting_on
from test_pop3_protocol import make_settings
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub import linger
from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.interfaces import IMailbox
from txmailhub.pop3 import replies as R
from txmailhub.pop3.protocol import POP3Factory
from txmailhub.store.maildir import MaildirStore
from txmailhub.store.sync import Syncer
from txmailhub.testing import SyncerSpy

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
JOE = Address("joe", "example.org")


@implementer(IRealm)
class Realm:
    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatar_id, mind, *interfaces):
        local, _, domain = avatar_id.decode().rpartition("@")
        d = self.store.open_mailbox(Address(local, domain),
                                    wanted=mind if callable(mind) else None)
        return d.addCallback(lambda box: (IMailbox, box, box.close))


class Transport(StringTransport):
    """Pauses its producer above ``limit`` buffered octets, like a socket
    whose peer reads slowly; ``read()`` is the peer reading it all."""

    def __init__(self, limit=None):
        super().__init__(peerAddress=LOOPBACK)
        self.limit = limit
        self.received = bytearray()
        self.aborted = False

    def setTcpNoDelay(self, enabled):
        pass

    def write(self, data):
        self.received += data
        super().write(data)
        if self.limit is not None and self.producer is not None and \
                len(self.io.getvalue()) > self.limit:
            self.producer.pauseProducing()

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()

    def read(self, proto):
        self.clear()
        if self.producer is not None and not self.disconnecting:
            proto.resumeProducing()


def make_env(tmp_path, **pop3):
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy(),
                         clock=clock.seconds)
    md = store.maildir_path(JOE)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    db = InMemoryUsernamePasswordDatabaseDontUse(**{"joe@example.org": b"joepw"})
    components = Components(settings=make_settings(**pop3), reactor=clock, router=None, store=store,
                            spooler=None, portal=Portal(Realm(store), [db]), tls=None)
    return clock, components, md


def connect(components, limit=None):
    proto = POP3Factory(components).buildProtocol(LOOPBACK)
    t = Transport(limit)
    proto.makeConnection(t)
    return proto, t


def logging_in(components):
    """A POP3 session that has sent joe's USER and PASS (its login job
    may still wait for the store's worker)."""
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    return proto, t


def test_pipelined_commands_answered_to_a_reading_client_are_not_autologged_out(tmp_path):
    """RFC 1939 3 / RFC 2449 6.6 (PIPELINING): a client that sends its
    commands at once and then keeps reading the answers is not inactive.
    Small RETRs are answered as the client reads; each counts as received
    when it is answered, so the autologout does not cut the session in the
    middle of the responses (as the streaming of a message of 64 KiB or
    more never did)."""
    clock, components, md = make_env(tmp_path, idle_timeout=600)
    body = b"Subject: x\n\n" + b"y" * 60 + b"\n"
    data = body * 800  # 58,400 octets stored, 60,800 sent: the small (one write) RETR path
    with open(os.path.join(md, "new", "1600000001.M1P1Q1.fuzz"), "wb") as f:
        f.write(data)
    proto, t = connect(components, limit=100_000)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert b"+OK Logged in" in bytes(t.received)
    proto.dataReceived(b"RETR 1\r\n" * 100)  # ~5.8 MB of answers, pipelined
    # the client reads 100 KB every 60 s (about 1.7 KB/s), all along
    for _ in range(30):
        clock.advance(60)
        answered = bytes(t.received).count(b" octets\r\n")
        assert not t.aborted, f"aborted while the client was reading, after {answered} of 100"

        t.read(proto)
    # the client goes: the mailbox's lock and the message being sent are
    # let go (else two descriptors stay open for the rest of the run)
    proto.connectionLost(Failure(ConnectionDone()))


def test_message_removed_by_another_client_is_one_log_line_not_a_traceback(tmp_path, log_events):
    """Another Maildir reader (or a cleanup job) removes message 1 after
    the session took its snapshot: RETR answers -ERR, and the log has one
    error line for the OSError (``txmailhub.logsafe.log_failure``), no
    traceback: it is an event of the storage, not a bug of ours."""
    events = log_events
    _clock, components, md = make_env(tmp_path)
    path = os.path.join(md, "new", "1600000001.M1P1Q1.fuzz")
    with open(path, "wb") as f:
        f.write(b"Subject: x\n\nhello\n")
    proto, t = logging_in(components)
    os.unlink(path)  # behind the session's back
    t.received.clear()
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received).startswith(b"-ERR")
    proto.dataReceived(b"DELE 1\r\nQUIT\r\n")
    assert bytes(t.received).endswith(b"+OK Bye (0 messages left)\r\n")
    tracebacks = [e.get("log_format") for e in events if "log_failure" in e]
    assert tracebacks == []


def _replaced_after_login(tmp_path, make):
    """joe's one message, logged in to, then replaced behind the session's
    back by ``make(path)`` at the same name (another program, or the
    mailbox's owner: a ``mkfifo``, a ``mkdir``, a ``ln -s``)."""
    _clock, components, md = make_env(tmp_path)
    path = os.path.join(md, "new", "1600000001.M1P1Q1.fuzz")
    with open(path, "wb") as f:
        f.write(b"Subject: x\n\nhello\n")
    proto, t = logging_in(components)
    assert b"+OK Logged in, 1 message" in bytes(t.received)
    os.unlink(path)
    make(path)
    t.received.clear()
    return proto, t, path


@pytest.mark.parametrize("command", [b"LIST\r\n", b"RETR 1\r\n", b"TOP 1 0\r\n"])
def test_a_fifo_put_in_place_of_a_message_is_not_waited_on(tmp_path, command):
    """The scan at login skips a named pipe, but one made at a message's
    name after it was opened for reading plainly: the open waits for a
    writer, on the thread that serves every session of the hub.  It is no
    message, so it is answered as one another program removed."""
    proto, t, path = _replaced_after_login(tmp_path, os.mkfifo)
    # one opening per call: the helper lets one waiting open go, not two
    not_waiting_on(Path(path), lambda: proto.dataReceived(command))
    not_waiting_on(Path(path), lambda: proto.dataReceived(b"RETR 1\r\n"))
    assert bytes(t.received).endswith(R.MESSAGE_GONE.to_bytes())
    proto.dataReceived(b"QUIT\r\n")
    assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")


@pytest.mark.parametrize("make", [os.mkdir, lambda p: os.symlink("/etc/passwd", p)],
                         ids=["directory", "symlink"])
def test_an_entry_put_in_place_of_a_message_is_answered_as_gone(tmp_path, make):
    """Not "[SYS/TEMP] cannot be read" (asking again would never help):
    the message is gone, as if another program removed it; and DELE of
    it then leaves the entry alone and the QUIT is ``+OK`` (a directory
    made no UPDATE fail with ``[SYS/PERM]``)."""
    proto, t, path = _replaced_after_login(tmp_path, make)
    proto.dataReceived(b"RETR 1\r\n")
    assert bytes(t.received) == R.MESSAGE_GONE.to_bytes()
    t.received.clear()
    proto.dataReceived(b"TOP 1 0\r\n")
    assert bytes(t.received) == R.MESSAGE_GONE.to_bytes()
    proto.dataReceived(b"DELE 1\r\nQUIT\r\n")
    assert bytes(t.received).endswith(b"+OK Bye (0 messages left)\r\n")
    assert os.path.lexists(path)


def test_quit_whose_deletions_are_not_durable_answers_err_and_claims_nothing(
        tmp_path, log_events):
    """RFC 1939 6: "-ERR some deleted messages not removed" when the UPDATE
    fails -- here the folder's fsync after the unlinks (EIO), so the
    removals may not survive a crash.  The connection is closed all the
    same, the lock is let go, and the log does not count the messages as
    deleted: it says how many were to go and that their removal is not
    durable."""
    import errno

    from twisted.logger import LogLevel, formatEvent

    _clock, components, md = make_env(tmp_path)
    for i in (1, 2, 3):
        with open(os.path.join(md, "new", f"160000000{i}.M1P1Q{i}.x"), "wb") as f:
            f.write(b"Subject: x\n\nhello\n")
    components.store.syncer.fail_kind["dir"] = OSError(errno.EIO, "Input/output error")
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nDELE 1\r\nDELE 2\r\n")
    t.received.clear()
    proto.dataReceived(b"QUIT\r\n")
    assert bytes(t.received) == b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
    assert t.disconnecting
    assert proto.mailbox is None  # the lock is let go
    lines = [formatEvent(e) for e in log_events]
    assert not [line for line in lines if line.startswith("POP3 logout")
                and "deleted" in line and "not" not in line]
    [failed] = [e for e in log_events if "UPDATE failed" in formatEvent(e)]
    assert failed["log_level"] == LogLevel.error
    assert formatEvent(failed) == (
        "POP3 UPDATE failed for joe@example.org from 127.0.0.1: 2 messages to delete, "
        "not all removed durably: [Errno 5] Input/output error")


# -- the UPDATE state's changes, off the reactor thread ------------------------


class HeldJobs(SyncerSpy):
    """A ``SyncerSpy`` whose ``call`` jobs wait in ``jobs`` until the test
    runs them (``run``): a worker thread that has not got to them yet, or
    a disk that does not answer."""

    def __init__(self):
        super().__init__()
        self.jobs = []
        self.holding = False  # set once the logins' scans are done

    def call(self, f, *args):
        if not self.holding:
            return super().call(f, *args)
        d = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def run(self):
        while self.jobs:
            self.run_one(0)

    def run_one(self, index=-1):
        """Run one job (the last asked for by default), and only that one."""
        f, args, d = self.jobs.pop(index)
        try:
            result = f(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)


def held_env(tmp_path, names):
    clock, components, md = make_env(tmp_path)
    components.store.syncer = syncer = HeldJobs()
    for i, name in enumerate(names):
        with open(os.path.join(md, "new", name), "wb") as f:
            f.write(b"Subject: %d\n\nhello\n" % i)
    return clock, components, md, syncer


def listing(md):
    return {sub: sorted(os.listdir(os.path.join(md, sub))) for sub in ("new", "cur")}


def login(components):
    syncer = components.store.syncer
    syncer.holding = False
    proto, t = logging_in(components)
    assert b"+OK Logged in" in bytes(t.received)
    t.received.clear()
    syncer.holding = True
    return proto, t


NAMES = ["1600000001.M1P1Q1.x", "1600000002.M1P1Q2.x", "1600000003.M1P1Q3.x"]


def test_retr_renames_nothing_and_quit_answers_once_the_job_made_the_changes(tmp_path):
    """RETR only records that the message was read: its move to cur/
    with S is made at QUIT, with the deletions, in one job on the store's
    worker threads (a rename on the reactor thread held every session of
    the hub while the disk hung), and the +OK comes once that job is done
    (RFC 1939 6).  Until then the mailbox stays locked: a second login is
    told it is in use, and never sees a half-made UPDATE."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES)
    before = listing(md)
    proto, t = login(components)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 3\r\nDELE 2\r\n")
    assert bytes(t.received).endswith(b"+OK Message 2 deleted\r\n")
    assert listing(md) == before and syncer.jobs == []  # nothing renamed at RETR
    # another reader (Dovecot) flags message 3 meanwhile: its flags are kept
    os.rename(os.path.join(md, "new", NAMES[2]), os.path.join(md, "cur", NAMES[2] + ":2,F"))
    t.received.clear()
    proto.dataReceived(b"QUIT\r\n")
    assert bytes(t.received) == b""  # no answer before the changes
    assert len(syncer.jobs) == 1  # renames and unlinks: one job
    assert os.path.exists(os.path.join(md, "new", NAMES[0]))
    _other, t2 = logging_in(components)
    assert len(syncer.jobs) == 2  # the login's lock, on a worker too
    syncer.run_one()
    assert b"-ERR [IN-USE]" in bytes(t2.received)
    syncer.run()
    assert bytes(t.received) == b"+OK Bye (2 messages left)\r\n" and t.disconnecting
    assert listing(md) == {"new": [], "cur": [NAMES[0] + ":2,S", NAMES[2] + ":2,FS"]}
    assert ("dir", os.path.join(md, "new")) in syncer.calls  # the deletion made durable
    again, t3 = login(components)  # free again
    again.dataReceived(b"UIDL\r\n")
    # the UIDLs of the messages left are those they had (the unique part)
    assert bytes(t3.received).split(b"\r\n")[1:3] == [b"1 1600000001.M1P1Q1.x",
                                                       b"2 1600000003.M1P1Q3.x"]


def test_a_dropped_session_deletes_nothing_and_flags_what_it_retrieved_after_it(tmp_path):
    """A connection that ends without QUIT deletes nothing (RFC 1939 6);
    the messages it retrieved are flagged seen as at a QUIT (so does
    Dovecot at a session's end), in a job on the worker threads, the lock
    held until it is done.  A login of the same user meanwhile waits for
    it rather than being told the mailbox is in use."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:2])
    before = listing(md)
    proto, _ = login(components)
    proto.dataReceived(b"RETR 1\r\nDELE 2\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert listing(md) == before and len(syncer.jobs) == 1
    _other, t2 = logging_in(components)
    assert b"+OK Logged in" not in bytes(t2.received)
    assert b"IN-USE" not in bytes(t2.received)  # it waits
    syncer.run()
    assert listing(md) == {"new": [NAMES[1]], "cur": [NAMES[0] + ":2,S"]}
    assert b"+OK Logged in" in bytes(t2.received)


def test_the_stop_waits_for_an_update_that_only_flags_messages(tmp_path):
    """The hub's stop waits for the UPDATE jobs under way, the ones that
    only flag messages too: nothing is half made when it fires."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    proto, t = login(components)
    proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    stopped = proto.factory.shut_down()
    assert not stopped.called
    assert listing(md) == {"new": [NAMES[0]], "cur": []}
    assert b"+OK Bye" not in bytes(t.received)
    syncer.run()
    assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert stopped.called
    assert listing(md) == {"new": [], "cur": [NAMES[0] + ":2,S"]}


def test_the_stop_waits_for_the_flags_of_the_sessions_it_cuts(tmp_path):
    """A session the hub's stop cuts deletes nothing; the messages it
    retrieved are flagged after the cut, on the worker threads, and the
    stop waits for that (and for sessions dropped just before it)."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    proto, t = login(components)
    proto.dataReceived(b"RETR 1\r\n")
    idle = proto.factory.buildProtocol(LOOPBACK)  # retrieved nothing: waited for its close
    idle.makeConnection(Transport())
    stopped = proto.factory.shut_down()
    # told -ERR and closed politely (the message was sent whole)
    assert t.value().endswith(b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n")
    assert t.disconnecting and not stopped.called
    idle.connectionLost(Failure(ConnectionDone()))
    assert not stopped.called
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(syncer.jobs) == 1 and not stopped.called
    assert listing(md) == {"new": [NAMES[0]], "cur": []}
    syncer.run()
    assert stopped.called
    assert listing(md) == {"new": [], "cur": [NAMES[0] + ":2,S"]}
    assert proto.mailbox is None  # the lock is let go



def test_rset_unmarks_the_seen_flags_of_the_messages_retrieved_before_it(tmp_path):
    """RSET takes back what the session would change at its end: the
    deletion marks (RFC 1939 5) and the seen flags of the messages RETR
    sent before it, as Dovecot's RSET drops its pending seen changes.  A
    RETR after it flags its message as ever, at QUIT or at a drop."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES)
    proto, t = login(components)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nRSET\r\nRETR 2\r\nQUIT\r\n")
    syncer.run()
    assert bytes(t.received).endswith(b"+OK Bye (3 messages left)\r\n")
    assert listing(md) == {"new": [NAMES[0], NAMES[2]], "cur": [NAMES[1] + ":2,S"]}
    # a dropped session: the same; and one that retrieved nothing since
    # its RSET is not waited for by a stop
    again, _ = login(components)
    again.dataReceived(b"RETR 1\r\nRSET\r\n")
    assert not again.retrieved_any()
    again.dataReceived(b"RETR 3\r\n")
    assert again.retrieved_any()
    again.connectionLost(Failure(ConnectionDone()))
    syncer.run()
    assert listing(md) == {"new": [NAMES[0]], "cur": [NAMES[1] + ":2,S", NAMES[2] + ":2,S"]}


def test_the_session_ends_changes_of_a_large_mailbox_cost_little_memory_on_the_reactor(tmp_path):
    """What QUIT builds on the reactor thread for the UPDATE job of a
    large mailbox (every message retrieved, half of them deleted): the
    indices and their chunks, not an object per change (a tuple a change
    and a set of the deletions were some 110 octets a message, 110 MB
    for a million: more than the session's snapshot)."""
    import tracemalloc

    from txmailhub.store.mailbox import DELETE_CHUNK

    _clock, components, _md, syncer = held_env(tmp_path, NAMES[:1])
    proto, _ = login(components)
    n = 200_000
    deleted = tuple(range(0, n, 2))
    proto._unseen = bytearray(b"\x01") * n
    made = []  # the worker jobs' changes (the messages are not there)
    proto.mailbox._change = lambda seen, deleted, *_: made.append((seen, deleted))
    tracemalloc.start()
    try:
        seen = proto._take_unseen(deleted)
        d = proto.mailbox.update(seen, list(deleted))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == list(range(1, n, 2))
    done = []
    d.addBoth(done.append)
    assert len(syncer.jobs) == 1 and done == []  # the caller's part only
    assert peak < 80 * n, peak / n  # 112 octets a message before
    # the jobs, DELETE_CHUNK changes each: every rename, then every unlink
    syncer.run()
    assert len(done) == 1
    assert {len(a) + len(b) for a, b in made} == {DELETE_CHUNK}
    assert [i for a, _ in made for i in a] == seen
    assert [i for _, b in made for i in b] == list(deleted)


def test_the_stop_waits_for_the_flags_of_a_session_dropped_before_it(tmp_path):
    """A client that hung up just before the stop has its retrieved
    messages flagged in a job that may still run when the stop begins:
    the stop waits for it (the state directory is given up after it)."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    proto, _ = login(components)
    proto.dataReceived(b"RETR 1\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(syncer.jobs) == 1
    stopped = proto.factory.shut_down()
    assert not stopped.called
    syncer.run()
    assert stopped.called
    assert listing(md) == {"new": [], "cur": [NAMES[0] + ":2,S"]}


def test_quit_whose_unlink_fails_half_way_answers_err_and_keeps_the_flags_made(
        tmp_path, monkeypatch):
    """One job renames and unlinks; an unlink that fails (EIO) does not
    stop the others, and QUIT answers -ERR as RFC 1939 6 has it ("some
    deleted messages not removed"), the flags made kept, the failure
    logged, the lock released."""
    from twisted.logger import formatEvent, globalLogPublisher

    _clock, components, md, syncer = held_env(tmp_path, NAMES)
    proto, t = login(components)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nDELE 2\r\nDELE 3\r\n")
    t.received.clear()
    unlink = os.unlink

    def failing(path, *args, **kwargs):
        if path.endswith(NAMES[2]):
            raise OSError(5, "Input/output error")
        return unlink(path, *args, **kwargs)

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto.dataReceived(b"QUIT\r\n")
        monkeypatch.setattr(os, "unlink", failing)
        syncer.run()
        monkeypatch.setattr(os, "unlink", unlink)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert bytes(t.received) == b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
    assert t.disconnecting
    assert listing(md) == {"new": [NAMES[2]], "cur": [NAMES[0] + ":2,S"]}
    said = [formatEvent(e) for e in events]
    assert any(line.startswith("cannot delete message 2 of ") for line in said), said
    assert any(line.startswith("POP3 UPDATE failed for joe@example.org") for line in said), said
    login(components)  # the lock is free


# -- the login's disk work, off the reactor thread -------------------------------


LOCK = ".txmailhub.lock"


def descriptors():
    return len(os.listdir("/proc/self/fd"))


def lock_is_free(md):
    fd = os.open(os.path.join(md, LOCK), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_login_opens_and_locks_the_lock_file_only_in_a_worker_job(tmp_path):
    """The lock file's open (and creation) is no call on the reactor thread
    (docs/deployment.rst, "A slow or hung disk"): the +OK waits for the
    login's job, and until it runs no lock file is made."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    syncer.holding = True
    proto, t = logging_in(components)
    assert bytes(t.received).endswith(b"+OK Send your password\r\n")
    assert not os.path.exists(os.path.join(md, LOCK))
    assert len(syncer.jobs) == 1
    syncer.run()
    assert bytes(t.received).endswith(R.logged_in(1, 21).to_bytes())
    assert not lock_is_free(md)
    proto.dataReceived(b"QUIT\r\n")
    syncer.run()
    proto.connectionLost(Failure(ConnectionDone()))
    assert lock_is_free(md)


def test_a_first_login_makes_the_maildir_in_its_job(tmp_path):
    """A Maildir no delivery made yet is made by the login's job (mkdir
    blocks on a hung disk too); the others' sessions go on meanwhile."""
    _clock, components, md, syncer = held_env(tmp_path, [])
    shutil.rmtree(os.path.dirname(md))
    syncer.holding = True
    proto, t = logging_in(components)
    assert not os.path.exists(os.path.dirname(md))
    syncer.run()
    assert b"+OK Logged in" in bytes(t.received)
    assert sorted(os.listdir(md)) == [".txmailhub-uidls", LOCK, "cur", "new", "tmp"]
    proto.connectionLost(Failure(ConnectionDone()))


def test_a_client_that_hangs_up_during_the_login_job_leaves_no_lock_held(tmp_path):
    """The client leaves while its login's job runs: what the job took
    (the lock's descriptors) is let go when it is over, nothing leaks,
    and the next login gets the mailbox."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    before = descriptors()
    syncer.holding = True
    proto, t = logging_in(components)
    assert not os.path.exists(os.path.join(md, LOCK))  # nothing taken yet
    proto.connectionLost(Failure(ConnectionDone()))
    syncer.run()
    assert b"+OK Logged in" not in bytes(t.received)
    assert proto.mailbox is None
    assert lock_is_free(md)
    assert descriptors() == before
    again, _ = login(components)
    again.connectionLost(Failure(ConnectionDone()))


def test_a_second_login_during_the_first_ones_job_is_told_in_use(tmp_path):
    """Two logins of one user while the first one's job has not run: they
    take their turns at the lock in the order they came; the first gets
    the mailbox, the second [IN-USE] (RFC 2449 8.1.1), as when the lock
    was taken on the reactor thread."""
    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    syncer.holding = True
    first, t1 = logging_in(components)
    second, t2 = logging_in(components)
    assert b"IN-USE" not in bytes(t2.received)  # not before the lock was tried
    assert len(syncer.jobs) == 1  # the second's waits for the first's
    syncer.run()
    assert b"+OK Logged in" in bytes(t1.received)
    assert bytes(t2.received).endswith(R.MAILBOX_IN_USE.to_bytes())
    first.connectionLost(Failure(ConnectionDone()))
    second.connectionLost(Failure(ConnectionDone()))
    assert lock_is_free(md)


def test_a_login_whose_client_left_before_its_turn_is_logged_so_not_in_use(
        tmp_path, log_events):
    """The second of two logins of one user hangs up while its turn at the
    lock waits for the first one's job: nobody refused it, and no reply
    goes to it -- the log says its client left, not [IN-USE]; the login of
    a client still there in its place is told IN-USE as before."""
    from twisted.logger import formatEvent

    _clock, components, md, syncer = held_env(tmp_path, NAMES[:1])
    syncer.holding = True
    first, t1 = logging_in(components)
    gone, t2 = logging_in(components)
    stays, t3 = logging_in(components)
    gone.connectionLost(Failure(ConnectionDone()))
    syncer.run()
    assert b"+OK Logged in" in bytes(t1.received)
    assert b"IN-USE" not in bytes(t2.received)
    assert bytes(t3.received).endswith(R.MAILBOX_IN_USE.to_bytes())
    lines = [formatEvent(e) for e in log_events if "POP3 login" in formatEvent(e)]
    left = [line for line in lines if "left before its turn" in line]
    refused = [line for line in lines if "refused: IN-USE" in line]
    assert len(left) == 1 and "not answered" in left[0], lines
    assert len(refused) == 1, lines  # the client still there alone
    for p in (first, stays):
        p.connectionLost(Failure(ConnectionDone()))
    assert lock_is_free(md)


@pytest.mark.parametrize("error, reply", [
    (PermissionError(errno.EACCES, "Permission denied"), R.MAILBOX_PERM_FAILURE),
    (OSError(errno.EIO, "Input/output error"), R.MAILBOX_TEMP_FAILURE),
])
def test_a_maildir_that_cannot_be_made_is_answered_after_the_job(
        tmp_path, monkeypatch, error, reply):
    """The folders are made in the login's job; one that cannot be made is
    [SYS/PERM] (an administrator must act) or [SYS/TEMP] (RFC 3206 4), as
    before, once the job is over."""
    _clock, components, md, syncer = held_env(tmp_path, [])
    shutil.rmtree(md)
    syncer.holding = True

    def failing(path, mode=0o777):
        raise error

    monkeypatch.setattr(os, "mkdir", failing)
    proto, t = logging_in(components)
    assert b"-ERR" not in bytes(t.received)  # the reply waits for the job
    syncer.run()
    assert bytes(t.received).endswith(reply.to_bytes())
    proto.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_maildir_not_made_yet_on_a_full_or_read_only_disk_logs_in_empty(
        tmp_path, monkeypatch, code):
    """RFC 1939: a user with no mail yet has an empty maildrop, full disk
    or not: ``+OK``, ``STAT`` 0 messages, ``QUIT`` ``+OK``; the Maildir
    is made by the first delivery, not the login."""
    _clock, components, md, syncer = held_env(tmp_path, [])
    shutil.rmtree(md)
    syncer.holding = False

    def no_room(path, mode=0o777):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(os, "mkdir", no_room)
    proto, t = logging_in(components)
    assert b"+OK Logged in" in bytes(t.received), bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"STAT\r\nQUIT\r\n")
    assert bytes(t.received).startswith(b"+OK 0 0\r\n+OK"), bytes(t.received)
    assert not os.path.lexists(md)
    proto.connectionLost(Failure(ConnectionDone()))


def test_the_stop_waits_for_a_login_job_and_the_lock_is_let_go(tmp_path):
    """The hub stops while a login's job runs: the session is told
    ``-ERR [SYS/TEMP]`` and closed, the syncer's stop waits for the job,
    and once it is over the lock it took is let go (the stop fires after
    that), with nothing more written."""
    clock, components, md, _ = held_env(tmp_path, NAMES[:1])
    jobs = []

    def held(f):
        d = defer.Deferred()
        jobs.append((f, d))
        return d

    syncer = Syncer(clock, method="fsync", run_in_thread=held)
    syncer.start()
    components.store.syncer = syncer
    before = descriptors()
    proto, t = logging_in(components)
    assert len(jobs) == 1 and not os.path.exists(os.path.join(md, LOCK))
    cut = proto.factory.shut_down()
    assert bytes(t.received).endswith(R.SHUTTING_DOWN.to_bytes())
    assert not t.aborted  # a polite close, no longer a cut
    written = bytes(t.received)
    proto.connectionLost(Failure(ConnectionDone()))
    assert cut.called  # nothing of the login's to wait for in the listener
    stopped = syncer.stop()
    assert not stopped.called
    f, d = jobs.pop()
    d.callback(f())
    assert stopped.called
    assert proto.mailbox is None and lock_is_free(md)
    assert bytes(t.received) == written
    assert descriptors() == before


# -- the POP3 sessions' jobs leave a worker for delivery -----------------------

USERS = ["ann", "bob", "cat", "dan"]


def lane_env(tmp_path, messages=1):
    """Four users with one message each, a real ``Syncer`` whose four
    workers are ``ManualWorkers`` (each job hangs until the test finishes
    it, as on a disk that does not answer), shared by the store and the
    POP3 sessions as in the hub."""
    from test_sync import ManualWorkers

    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    workers = ManualWorkers(4)
    syncer = Syncer(clock, method="fsync", threads=4, run_in_thread=workers)
    syncer.start()
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", syncer,
                         clock=clock.seconds)
    mds = {}
    for name in USERS:
        mds[name] = md = store.maildir_path(Address(name, "example.org"))
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub))
        for n in range(1, messages + 1 if name == "ann" else 2):
            with open(os.path.join(md, "new", f"16000000{n:02d}.M1P1Q1.{name}"), "wb") as f:
                f.write(b"Subject: hi\n\nhello\n")
    db = InMemoryUsernamePasswordDatabaseDontUse(**{f"{n}@example.org": b"pw" for n in USERS})
    components = Components(settings=make_settings(), reactor=clock, router=None, store=store,
                            spooler=None, portal=Portal(Realm(store), [db]), tls=None,
                            syncer=syncer)
    return components, syncer, workers, mds


def logins(components, names=USERS):
    """A session for each of ``names`` that has sent USER and PASS."""
    sessions = {}
    for name in names:
        proto, t = connect(components)
        proto.dataReceived(b"USER %s\r\nPASS pw\r\n" % name.encode())
        sessions[name] = (proto, t)
    return sessions


def smtp_side_job(syncer):
    """A job of the SMTP side on the workers (a spool file made ahead, a
    copy into a Maildir): its result, once it has run."""
    done = []
    syncer.call(lambda: "made ahead").addCallback(done.append)
    return done


def test_pop3_logins_whose_jobs_hang_leave_a_worker_for_delivery(tmp_path):
    """docs/deployment.rst, "A slow or hung disk": four logins whose lock
    jobs hang held all four workers, and the SMTP side's jobs (spool files
    made ahead, new Maildirs' folders, copies) waited behind them until
    the disk came back.  Now the POP3 sessions' jobs hold three workers at
    most; the fourth login waits for one of those and runs once it is
    over, and the SMTP side's job runs meanwhile."""
    components, syncer, workers, _mds = lane_env(tmp_path)
    sessions = logins(components)
    assert len(workers.jobs) == 3  # ann's, bob's and cat's hang; dan's waits in the lane
    made = smtp_side_job(syncer)
    assert workers.waiting == 0  # it has a worker of its own
    workers.finish(3)
    assert made == ["made ahead"]
    assert all(b"+OK Logged in" not in bytes(t.received) for _, t in sessions.values())
    workers.finish(0)  # ann's job is over: dan's takes its worker
    assert b"+OK Logged in" in bytes(sessions["ann"][1].received)
    assert len(workers.jobs) == 3 and workers.waiting == 0
    workers.finish_all()
    assert all(b"+OK Logged in" in bytes(t.received) for _, t in sessions.values())
    for proto, _ in sessions.values():
        proto.connectionLost(Failure(ConnectionDone()))


def test_an_uncached_read_whose_client_left_while_it_waited_is_dropped(tmp_path, monkeypatch):
    """A RETR whose read waits its turn in the lane (three reads ahead of
    it hang on the disk) and whose client then leaves: the lane drops the
    job at its next look, as it drops a gone login's, rather than keeping
    it -- and the session with it -- until the disk comes back."""
    from txmailhub.store.mailbox import MaildirMailbox
    from txmailhub.store.sync import POP3_LANE

    components, syncer, workers, _mds = lane_env(tmp_path)
    sessions = {}
    for name in USERS:
        sessions.update(logins(components, [name]))
        workers.finish()

    def not_cached(self, index, limit):
        raise BlockingIOError(errno.EAGAIN, "not in the page cache")

    monkeypatch.setattr(MaildirMailbox, "read_message_nowait", not_cached)
    for proto, t in sessions.values():
        t.received.clear()
        proto.dataReceived(b"RETR 1\r\n")
    lane = syncer.lane(POP3_LANE)
    assert len(workers.jobs) == 3 and lane.waiting == 1  # dan's read waits its turn
    dan, _ = sessions["dan"]
    dan.connectionLost(Failure(ConnectionDone()))
    lane.call(lambda: None)  # the next POP3 job: the lane looks again
    assert lane.waiting == 1  # that one; dan's is gone
    workers.finish_all()
    for name in ("ann", "bob", "cat"):
        proto, t = sessions[name]
        assert bytes(t.received).startswith(b"+OK") and b"hello" in bytes(t.received)
        proto.connectionLost(Failure(ConnectionDone()))
    workers.finish_all()  # the session ends: their locks let go
    assert bytes(sessions["dan"][1].received) == b""


def test_session_ends_take_their_turn_with_the_logins(tmp_path):
    """A session's end (its Seen renames and deletions) is a POP3 job too:
    three that hang leave the fourth worker to the SMTP side, and the
    stop waits for a fourth that waited its turn, which then runs."""
    components, syncer, workers, mds = lane_env(tmp_path)
    sessions = {}
    for name in USERS:
        sessions.update(logins(components, [name]))
        workers.finish()
    for proto, t in sessions.values():
        assert b"+OK Logged in" in bytes(t.received)
        t.received.clear()
        proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    assert len(workers.jobs) == 3  # dan's session end waits in the lane
    made = smtp_side_job(syncer)
    workers.finish(3)
    assert made == ["made ahead"]
    stopped = syncer.stop()
    workers.finish()
    # dan's now (the stop did not refuse it), beside bob's and cat's and
    # the fsync of the folders ann's session end renamed in
    assert len(workers.jobs) == 4
    workers.finish_all()
    for name, (proto, t) in sessions.items():
        assert bytes(t.received).endswith(b"+OK Bye (1 message left)\r\n")
        assert os.listdir(os.path.join(mds[name], "cur")) == [f"1600000001.M1P1Q1.{name}:2,S"]
        proto.connectionLost(Failure(ConnectionDone()))
    assert stopped.called


def test_a_login_whose_client_left_while_it_waited_for_a_worker_takes_nothing(
        tmp_path, log_events):
    """The client leaves while its login's job waits its turn in the lane:
    the job is never run -- no worker, no lock file made, no lock taken for
    nobody -- and the log says the client left; the stop waits for nothing
    of it."""
    from twisted.logger import formatEvent

    components, syncer, workers, mds = lane_env(tmp_path)
    before = descriptors()
    sessions = logins(components)
    dan, _ = sessions["dan"]
    dan.connectionLost(Failure(ConnectionDone()))
    workers.finish(0)  # ann's is over: dan's turn, but dan left
    assert len(workers.jobs) == 2  # bob's and cat's still hang; nothing of dan's
    assert not os.path.exists(os.path.join(mds["dan"], LOCK))
    stopped = syncer.stop()
    for name in ("ann", "bob", "cat"):
        sessions[name][0].connectionLost(Failure(ConnectionDone()))
    workers.finish_all()
    assert stopped.called
    assert not os.path.exists(os.path.join(mds["dan"], LOCK))
    assert all(lock_is_free(mds[name]) for name in ("ann", "bob", "cat"))
    assert descriptors() == before
    lines = [formatEvent(e) for e in log_events if "POP3 login dan" in formatEvent(e)]
    assert len(lines) == 1 and "left before its turn" in lines[0], lines


def test_a_login_s_size_measuring_takes_its_turn_with_the_logins(tmp_path):
    """The sizes a login measures for a client without UTF8 (a mailbox of
    more than ``INLINE_SIZES`` messages) are a POP3 job too: with it and
    two logins' jobs hanging, a third login waits, and the SMTP side's
    job still gets a worker."""
    from txmailhub.pop3.protocol import INLINE_SIZES

    components, syncer, workers, _mds = lane_env(tmp_path, messages=INLINE_SIZES + 1)
    sessions = logins(components, ["ann"])
    workers.finish()  # ann's lock and listing; her sizes are measured next
    assert len(workers.jobs) == 1 and b"+OK Logged in" not in bytes(sessions["ann"][1].received)
    sessions.update(logins(components, ["bob", "cat", "dan"]))
    assert len(workers.jobs) == 3  # dan's login waits in the lane
    made = smtp_side_job(syncer)
    workers.finish(3)
    assert made == ["made ahead"]
    workers.finish_all()
    assert all(b"+OK Logged in" in bytes(t.received) for _, t in sessions.values())
    for proto, _ in sessions.values():
        proto.connectionLost(Failure(ConnectionDone()))


def test_three_session_ends_that_hang_hold_up_a_login_of_another_user(tmp_path):
    """docs/deployment.rst, "A slow or hung disk": three POP3 jobs that
    hang -- here three session ends whose renames wait for the disk --
    hold up the login of a fourth user whose mailbox needs no disk the
    others wait for; the SMTP side's job still gets its worker, and the
    login runs once one of the three is over."""
    components, syncer, workers, _mds = lane_env(tmp_path)
    sessions = {}
    for name in USERS[:3]:
        sessions.update(logins(components, [name]))
        workers.finish()
    for proto, t in sessions.values():
        assert b"+OK Logged in" in bytes(t.received)
        proto.dataReceived(b"RETR 1\r\nQUIT\r\n")
    assert len(workers.jobs) == 3  # the three session ends hang
    dan, t = logins(components, ["dan"])["dan"]
    assert syncer.lane("pop3").waiting == 1 and len(workers.jobs) == 3
    made = smtp_side_job(syncer)
    workers.finish(3)
    assert made == ["made ahead"]
    assert b"+OK Logged in" not in bytes(t.received)
    workers.finish()  # a session end is over: dan's login takes its worker
    # (and the fsync of the folders that session end renamed in, another)
    assert syncer.lane("pop3").waiting == 0 and len(workers.jobs) == 4
    workers.finish_all()
    assert b"+OK Logged in" in bytes(t.received)
    for proto, _ in [*sessions.values(), (dan, t)]:
        proto.connectionLost(Failure(ConnectionDone()))


class HalfClosingTransport(Transport):
    """A Transport that can shut down its sending side alone, as a plain
    TCP one can: a close the hub decides lingers on it
    (``txmailhub.linger.can_linger``)."""

    write_lost = False

    def loseWriteConnection(self):
        self.write_lost = True


@pytest.mark.parametrize("close", ["too many errors", "autologout"])
def test_a_lingering_close_lets_the_mailbox_go_at_once_a_login_gets_in(tmp_path, close):
    """A close the hub decides (too many errors, the autologout) lingers
    on plain TCP; once its line is decided the session needs nothing of
    its mailbox (no UPDATE state): the message RETR sent is flagged seen
    and the lock let go when the lingering close starts.  The session held
    the lock until the client closed, ``LINGER_SECONDS`` after our end of
    stream at most: a client that logged in again meanwhile (one retrying
    after the -ERR, the autologged-out user back on another connection)
    waited for it."""
    clock, components, md = make_env(tmp_path, max_errors=1, idle_timeout=600)
    with open(os.path.join(md, "new", "1600000001.M1P1Q1.x"), "wb") as f:
        f.write(b"Subject: x\n\nhello\n")
    first = POP3Factory(components).buildProtocol(LOOPBACK)
    t1 = HalfClosingTransport()
    first.makeConnection(t1)
    first.dataReceived(b"USER joe\r\nPASS joepw\r\nRETR 1\r\n")
    assert b"hello\r\n.\r\n" in bytes(t1.received)
    if close == "autologout":
        clock.advance(600)
        clock.advance(0)  # the second look
    else:
        first.dataReceived(b"FOO\r\n")
        assert bytes(t1.received).endswith(R.TOO_MANY_ERRORS.to_bytes())
    assert t1.write_lost and not t1.disconnecting  # lingering
    assert first.mailbox is None  # let go
    assert os.listdir(os.path.join(md, "new")) == []
    [name] = os.listdir(os.path.join(md, "cur"))
    assert name.endswith(":2,S")  # flagged seen first, under the lock
    second, t2 = logging_in(components)
    assert b"+OK Logged in, 1 message" in bytes(t2.received), bytes(t2.received)
    assert not t1.disconnecting  # the first still lingers
    first.dataReceived(b"STAT\r\n")  # read and dropped: no mailbox used
    first.writeConnectionLost()
    clock.advance(linger.LINGER_SECONDS)
    assert t1.disconnecting
    first.connectionLost(Failure(ConnectionDone()))
    assert second.mailbox is not None  # the first's end takes nothing from the second
    second.connectionLost(Failure(ConnectionDone()))


def test_a_session_the_autologout_cut_is_not_drained_by_the_stop_before_it_is_gone(tmp_path):
    """The autologout of a client that does not read (its answers piled
    up) cuts the connection (an abort: a polite close would wait for a
    buffer that never drains); the connection is gone a reactor turn
    later.  A hub's stop in between took it for a session in the middle
    of an answer: it read on from the aborted transport and armed the
    answer's grace, as for a client still there.  It only waits for it
    to be gone now, and its mailbox lock with it."""
    clock, components, md = make_env(tmp_path, idle_timeout=600)
    with open(os.path.join(md, "new", "1600000001.M1P1Q1.x"), "wb") as f:
        f.write(b"Subject: x\n\n" + b"hello\n" * 100)
    factory = POP3Factory(components)
    proto = factory.buildProtocol(LOOPBACK)
    t = Transport(limit=200)
    proto.makeConnection(t)
    t.read(proto)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nRETR 1\r\n")
    assert proto._write_paused  # the client reads no more
    clock.advance(600)
    clock.advance(0)  # the second look: cut
    assert t.aborted
    stopped = factory.shut_down()  # before the connection's end comes
    assert not [c for c in clock.getDelayedCalls()
                if c.active() and c.func.__name__ == "_drain_cut"]
    assert not stopped.called  # it waits for the session's end
    proto.connectionLost(Failure(ConnectionDone()))
    assert stopped.called
    assert proto.mailbox is None


def test_a_maildir_whose_cur_is_a_link_is_read_through_it(tmp_path):
    # an admin who moved a Maildir's cur/ to another disk with a link gets
    # what delivery and the quota already give it: POP3 lists and serves
    # the messages there and moves a read one into it (only the hub's own
    # user can make such a link, so refusing it would guard against no one
    # and hide the mail of a working set-up)
    _clock, components, md = make_env(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "1600000001.M1P1Q1.x:2,S").write_bytes(b"Subject: old\n\nkept\n")
    os.rmdir(os.path.join(md, "cur"))
    os.symlink(elsewhere, os.path.join(md, "cur"))
    name = "1600000002.M1P1Q2.fuzz"
    with open(os.path.join(md, "new", name), "wb") as f:
        f.write(b"Subject: new\n\nhello\n")
    proto, t = logging_in(components)
    assert b"+OK Logged in, 2 messages" in bytes(t.received)
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nQUIT\r\n")
    assert b"kept" in bytes(t.received) and b"hello" in bytes(t.received)
    assert bytes(t.received).endswith(b"+OK Bye (2 messages left)\r\n")
    assert os.listdir(os.path.join(md, "new")) == []
    assert sorted(os.listdir(elsewhere)) == ["1600000001.M1P1Q1.x:2,S", name + ":2,S"]


def test_dele_of_a_message_another_reader_moved_removes_it_where_it_went(tmp_path):
    # another reader flagged the message (new/ to cur/) and something
    # else was then made at its old name: that entry is not the message,
    # but the message is still there, under its new name, and DELE must
    # remove it (RETR found it; DELE took the entry for the message and
    # left both, answering the QUIT +OK)
    _clock, components, md = make_env(tmp_path)
    name = "1600000001.M1P1Q1.fuzz"
    old = os.path.join(md, "new", name)
    with open(old, "wb") as f:
        f.write(b"Subject: x\n\nhello\n")
    proto, t = logging_in(components)
    assert b"+OK Logged in, 1 message" in bytes(t.received)
    moved = os.path.join(md, "cur", name + ":2,S")
    os.rename(old, moved)
    os.mkdir(old)
    proto.dataReceived(b"DELE 1\r\nQUIT\r\n")
    assert bytes(t.received).endswith(b"+OK Bye (0 messages left)\r\n")
    assert not os.path.lexists(moved)
    assert os.path.isdir(old)


def _read_and_quit(tmp_path, **syncer):
    """A session that RETRs the one message in new/ and sends QUIT, its
    syncer's ``hold`` and ``fail`` set before the QUIT."""
    _clock, components, md = make_env(tmp_path)
    with open(os.path.join(md, "new", "1600000001.M1P1Q1.x"), "wb") as f:
        f.write(b"Subject: x\n\nhello\n")
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nRETR 1\r\n")
    spy = components.store.syncer
    spy.hold = syncer.get("hold", False)
    if "fail" in syncer:
        spy.fail = syncer["fail"]
    spy.events.clear()
    t.received.clear()
    proto.dataReceived(b"QUIT\r\n")
    return md, spy, t


def test_quit_answers_once_the_folders_of_the_seen_renames_are_fsynced(tmp_path):
    # a rename into cur/ that a crash took back would bring a message that
    # a later session deleted from cur/ back into new/
    md, spy, t = _read_and_quit(tmp_path, hold=True)
    assert bytes(t.received) == b""
    synced = {path for kind, path in spy.events if kind == "dir"}
    assert {os.path.join(md, "new"), os.path.join(md, "cur")} <= synced
    spy.release()
    assert bytes(t.received).startswith(b"+OK ")
    assert os.listdir(os.path.join(md, "cur")) == ["1600000001.M1P1Q1.x:2,S"]


def test_a_failed_fsync_of_the_seen_renames_is_logged_not_a_failed_quit(tmp_path, log_events):
    # the flags are no deletion: RFC 1939's -ERR is for messages not removed
    from twisted.logger import formatEvent

    md = os.path.join(str(tmp_path), "mail")  # (the Maildir is below it)
    _md, _spy, t = _read_and_quit(tmp_path, fail=_EveryFolderUnder(md))
    assert bytes(t.received).startswith(b"+OK ")
    said = [formatEvent(e) for e in log_events]
    assert any(line.startswith("the seen flags of ") for line in said), said


class _EveryFolderUnder(dict):
    """A ``fail`` map that fails the fsync of every folder under ``root``."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root

    def get(self, key, default=None):
        if isinstance(key, str) and key.startswith(self.root + os.sep):
            return OSError(5, "Input/output error")
        return default


def test_a_read_error_mid_message_handles_no_pipelined_command_behind_it(
        tmp_path, monkeypatch):
    """A read fails (EIO) after a streamed message's +OK and first chunk:
    the connection is cut, and the DELE and QUIT the client pipelined
    behind the RETR are not handled -- they deleted the message it never
    got whole, and answered onto the connection cut."""
    from txmailhub.store.mailbox import MaildirMailbox

    clock, components, md = make_env(tmp_path)
    big = b"Subject: long\n\n" + b"line of text\n" * 12000
    with open(os.path.join(md, "new", "1600000001.M1P1Q1.fuzz"), "wb") as f:
        f.write(big)
    real = MaildirMailbox.open_message

    class Failing:
        def __init__(self, f):
            self.f, self.reads = f, 0

        def read(self, n):
            self.reads += 1
            if self.reads > 1:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(MaildirMailbox, "open_message", lambda box, i: Failing(real(box, i)))
    proto, t = connect(components)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    clock.advance(0)
    assert b"+OK Logged in" in bytes(t.received)
    t.received.clear()
    proto.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    clock.advance(0)
    out = bytes(t.received)
    assert out.startswith(b"+OK ") and t.aborted
    assert b"deleted" not in out and b"Bye" not in out and not out.endswith(b"\r\n.\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(1)
    assert os.listdir(os.path.join(md, "new")) == ["1600000001.M1P1Q1.fuzz"]
