"""How POP3 sessions end, in random orders, against the real adapter.

Hypothesis drives up to three sessions of the same user on a real Maildir
(a temporary folder) over ``StringTransport``s that can half-close, with a
``MemoryReactorClock`` and every worker job held until a rule runs it (a
login's lock, a LIST's sizes save, an uncached RETR read, a session end's
flags and deletions): commands, QUIT, the client's half-close, its FIN
after it, a reset, idle time up to the autologout, too many errors, the
hub's stop, a second session of the same user logging in meanwhile, a job
done at any point, the latest first as well.  Some sequences are made
likely by rules of their own, as a few steps picked at random rarely hit
them: a LIST whose downgraded sizes' save waits on a worker (and a second
save behind it, when a size measured on a worker sends the next one back
to the reactor thread), a hang-up while a job of the session waits, a
client that stops reading with an answer under way, and the autologout
with the hub's stop right after it, before the ends it makes come.
Checked throughout:

* the mailbox lock is held by one session at most, and each mailbox opened
  is closed exactly once, eventually (once the clock runs past every grace
  and the held jobs are done);
* a job that writes under the lock (the sizes save, the end's flags and
  deletions) runs while it is held, and a read of a session still there
  too, but for one whose client's FIN ended it and let the lock go (no
  QUIT to come: its answers still due read on);
* messages are deleted only by a session in the UPDATE state (after its
  QUIT), and its client, if still there when they are done, is told
  ``+OK``; nothing else removes a message (one retrieved by a session that
  did not QUIT is flagged, not deleted);
* nothing is written to a transport after it was aborted or lost, nor is
  it read on from;
* no timer of a session is left active once its connection is gone;
* a session's "left without QUIT" (or the stop's) line is logged once at
  most, and nothing is logged as a failure;
* a close the hub decides (too many errors, the autologout, its stop)
  that lingers lets the mailbox go at its start unless a held job of the
  session may still use it;
* the hub's stop fires, and only once every session open at it is gone
  with its deletions or flags made; the sessions it cut delete nothing;
  one cut already (the autologout's abort) is waited for, not drained as
  one in the middle of an answer.

``POP3_END_EXAMPLES`` raises the number of examples (400 by default, a
few seconds, the same examples each run; set, new random ones each run:
a few thousand for a longer exploration).  Faults it found:
a sizes save already handed to a worker outlived the lock (the session's
end let the mailbox go at once and the save kept nothing), and the hub's
stop drained a session the autologout had cut (an abort) as one still
answering.  Each is found within the default examples with its fix
undone, as is a second sizes save started while the first was still on
a worker (two writers, the end waiting for the last only).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from test_pop3_reader_and_storage import LOOPBACK, HalfClosingTransport, HeldJobs, make_env
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from txmailhub.pop3 import protocol as pop3_protocol
from txmailhub.pop3.protocol import POP3Factory, POP3Protocol, State
from txmailhub.store.mailbox import MaildirMailbox

EXAMPLES = int(os.environ.get("POP3_END_EXAMPLES", "400"))
IDLE = 600
MAX_ERRORS = 3
END_LINES = ("left without QUIT", "closed as the hub stops")
MESSAGES = [
    # a UTF-8 header section: LIST measures a downgraded size, saved later
    "From: Jörg <jörg@example.net>\nSubject: Grüße\n\nKörper\n".encode(),
    b"Subject: plain\n\nhello\n",
    # another: a LIST whose second message is measured on a worker (not
    # in the kernel's cache) measures this one back on the reactor thread,
    # a second save while the first may still be on a worker
    "From: Zoë <zoë@example.net>\nSubject: Überall\n\nnoch\n".encode(),
]
COMMANDS = [
    b"USER joe\r\nPASS joepw\r\n", b"USER joe\r\nPASS joepw\r\n", b"USER joe\r\nPASS wrong\r\n",
    b"LIST\r\n", b"STAT\r\n",
    b"RETR 1\r\n", b"RETR 2\r\n", b"DELE 1\r\n", b"DELE 2\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"QUIT\r\n", b"FOO\r\n", b"TOP 1 0\r\n", b"RETR 1\r\nDELE 2\r\nQUIT\r\n",
    b"LIST\r\nDELE 1\r\nQUIT\r\n", b"FOO\r\nFOO\r\nFOO\r\n",
    # too many errors after a RETR (flags to make) or a LIST (sizes to save)
    b"RETR 2\r\nFOO\r\nFOO\r\nFOO\r\n", b"LIST\r\nFOO\r\nFOO\r\nFOO\r\n",
]

class Jobs(HeldJobs):
    """Every worker job (``call``) held until ``run_one``; the jobs that
    use a mailbox checked as they run."""

    def __init__(self, machine: EndModel) -> None:
        super().__init__()
        self.holding = True  # from the start: the logins' scans too
        self.machine = machine

    def run_one(self, index: int = -1) -> None:
        f, args, _d = self.jobs[index]
        self.machine.job_runs(f, args)
        super().run_one(index)


class EndTransport(HalfClosingTransport):
    """Plain TCP (a lingering close half-closes); a write after the
    connection was aborted or lost is a fault, noted in ``faults`` (an
    assert here could be swallowed by a Deferred's callback)."""

    gone = False

    def __init__(self, limit, faults: list) -> None:
        super().__init__(limit)
        self.faults = faults

    def write(self, data):
        if self.gone:
            self.faults.append(("written after the connection was gone", data))
        super().write(data)

    def resumeProducing(self):
        if self.gone:
            self.faults.append("read on from a connection that was aborted or lost")
        super().resumeProducing()

    def abortConnection(self):
        super().abortConnection()
        self.gone = True


class Session:
    def __init__(self, proto: POP3Protocol, t) -> None:
        self.proto = proto
        self.t = t
        self.eof = False  # the client half-closed (or sent its FIN)
        self.lost = False  # connectionLost delivered
        self.update_at_loss = False
        self.deleted = 0  # messages its UPDATE removed
        self.end_lines = 0


class EndModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="pop3end")
        self.clock, self.components, self.md = make_env(
            _Path(self.tmp), max_errors=MAX_ERRORS, idle_timeout=IDLE)
        for i, data in enumerate(MESSAGES):
            with open(os.path.join(self.md, "new", f"17000000{i}.M{i}P1Q{i}.h"), "wb") as f:
                f.write(data)
        self.jobs = Jobs(self)
        self.components.syncer = self.jobs
        self.components.store.syncer = self.jobs
        self.factory = POP3Factory(self.components)
        self.sessions: list[Session] = []
        self.boxes: dict[MaildirMailbox, Session | None] = {}
        self.closes: dict[MaildirMailbox, int] = {}
        self.stopped: defer.Deferred | None = None
        self.failures: list = []
        self.faults: list = []
        self.updating_at_stop: set = set()
        # message 2's header not in the kernel's cache: LIST measures it
        # on a worker (set by ``first``)
        self.sizes_uncached = False
        self._patch()
        globalLogPublisher.addObserver(self._observe)

    # -- instrumentation ------------------------------------------------------

    def _patch(self) -> None:
        store = self.components.store
        real_open = store.open_mailbox
        machine = self

        def open_mailbox(address, wanted=None, **kw):
            d = real_open(address, wanted=wanted, **kw)
            owner = getattr(wanted, "__self__", None)

            def opened(box):
                session = next((s for s in machine.sessions if s.proto is owner), None)
                machine.boxes[box] = session
                machine.closes[box] = 0
                if machine.open_boxes() > 1:
                    machine.faults.append("two sessions hold the lock")
                return box

            return d.addCallback(opened)

        store.open_mailbox = open_mailbox
        self._real_close = MaildirMailbox.close
        real_close = self._real_close

        def close(box):
            if not box.closed:
                machine.closes[box] = machine.closes.get(box, 0) + 1
            real_close(box)

        MaildirMailbox.close = close
        self._nowait = MaildirMailbox.read_message_nowait
        self._read_nowait = MaildirMailbox.read_nowait
        self._size_job = pop3_protocol.SIZE_JOB_SECONDS
        # one message measured per worker job: the rest back on this thread
        pop3_protocol.SIZE_JOB_SECONDS = -1.0
        real_read_nowait = self._read_nowait

        def read_nowait(box, file, size):
            if machine.sizes_uncached and os.fstat(file.fileno()).st_size == len(MESSAGES[1]):
                raise BlockingIOError(11, "not cached")
            return real_read_nowait(box, file, size)

        MaildirMailbox.read_nowait = read_nowait

    def open_boxes(self) -> int:
        return sum(1 for b in self.boxes if not b.closed)

    def job_runs(self, f, args) -> None:
        box = getattr(f, "__self__", None)
        if not isinstance(box, MaildirMailbox):
            box = next((a for a in args if isinstance(a, MaildirMailbox)), None)
        if box is None:
            return
        session = self.boxes.get(box)
        name = getattr(f, "__name__", repr(f))
        if name == "_save_downgraded_sizes" and session is not None and (
                session.proto._hub_stopped):
            return  # the hub's stop does not wait for a sizes save (docs/pop3.rst)
        if name in ("_change", "_save_downgraded_sizes"):
            # writes under the lock: it must still be held
            assert not box.closed, f"{name} ran after the lock was let go"
        elif session is not None and not session.lost and not (
                session.eof and session.proto._ended):
            # (after its client's FIN a session with no QUIT to come ends
            # and lets the lock go at once, and reads on for the answers
            # still due: docs/pop3.rst, "Mailbox semantics")
            assert not box.closed, f"{name} of a session still there ran without the lock"
        if name == "_change" and args[1]:
            assert session is not None
            engine = session.proto.engine
            assert engine is not None and engine.state is State.UPDATE, \
                "deletions without a QUIT"
            assert not session.proto._hub_stopped or session.proto in self.updating_at_stop, \
                "deletions by a session the hub's stop cut"
            session.deleted += len(args[1])

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.failures.append(event)
        text = event.get("log_format") or ""
        if "{why}: nothing deleted" in text and event.get("why") in END_LINES:
            frame = sys._getframe()
            while frame is not None:
                me = frame.f_locals.get("self")
                if isinstance(me, POP3Protocol):
                    for s in self.sessions:
                        if s.proto is me:
                            s.end_lines += 1
                    break
                frame = frame.f_back

    def teardown(self) -> None:
        try:
            if not self.failures:
                self.settle()
        finally:
            globalLogPublisher.removeObserver(self._observe)
            MaildirMailbox.close = self._real_close
            MaildirMailbox.read_message_nowait = self._nowait
            MaildirMailbox.read_nowait = self._read_nowait
            pop3_protocol.SIZE_JOB_SECONDS = self._size_job
            for s in self.sessions:
                if not s.lost:
                    s.lost = True
                    s.proto.connectionLost(Failure(ConnectionDone()))
            for box in self.boxes:
                self._real_close(box)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def settle(self) -> None:
        """Every job done, every close taken, the clock past every grace."""
        for _ in range(30):
            while self.jobs.jobs:
                self.jobs.run_one(0)
            for s in self.sessions:
                if not s.lost and (s.t.disconnecting or s.t.gone):
                    self._lose(s, ConnectionDone)
            self.clock.advance(IDLE + 10)
            if all(s.lost for s in self.sessions) and not self.jobs.jobs:
                break
        assert all(s.lost for s in self.sessions), "a session never ended"
        assert not self.jobs.jobs
        assert self.open_boxes() == 0, "a lock never let go"
        for box, n in self.closes.items():
            assert n == 1, (box, "let go", n, "times")
        left = [c for c in self.clock.getDelayedCalls() if c.active()]
        assert not left, left
        if self.stopped is not None:
            assert self.stopped.called, "the stop never fired"
        have = sum(len(os.listdir(os.path.join(self.md, sub))) for sub in ("new", "cur"))
        assert have == len(MESSAGES) - sum(s.deleted for s in self.sessions), have
        for s in self.sessions:
            if s.deleted and not s.update_at_loss:
                assert b"+OK Bye" in bytes(s.t.received), bytes(s.t.received)
        self.check_lines()

    def check_lines(self) -> None:
        assert not self.faults, self.faults
        for s in self.sessions:
            assert s.end_lines <= 1, "the session's end logged twice"

    # -- rules ---------------------------------------------------------------

    def live(self) -> list[Session]:
        return [s for s in self.sessions if not s.lost]

    @initialize(limit=st.sampled_from([None, None, 60]), uncached=st.booleans(),
                sizes_uncached=st.booleans())
    def first(self, limit, uncached: bool, sizes_uncached: bool) -> None:
        """Most runs are about sessions logged in: the first one is.
        ``sizes_uncached``: message 2's size is measured on a worker."""
        self.sizes_uncached = sizes_uncached
        self.connect(limit, uncached)
        first = self.sessions[0]
        first.t.read(first.proto)
        first.proto.dataReceived(COMMANDS[0])
        while self.jobs.jobs:
            self.jobs.run_one(0)
            first.t.read(first.proto)
        assert self.sessions[0].proto.mailbox is not None

    @precondition(lambda self: self.stopped is None and len(self.live()) < 3)
    @rule(limit=st.sampled_from([None, None, 60]), uncached=st.booleans())
    def connect(self, limit, uncached: bool) -> None:
        """A client connects; ``uncached``: from now on no message is in
        the kernel's cache (RETR and TOP read on a worker)."""
        if uncached:
            def not_cached(box, index, size):
                raise BlockingIOError(11, "not cached")
            MaildirMailbox.read_message_nowait = not_cached
        else:
            MaildirMailbox.read_message_nowait = self._nowait
        proto = self.factory.buildProtocol(LOOPBACK)
        t = EndTransport(limit, self.faults)
        s = Session(proto, t)
        self.sessions.append(s)
        proto.makeConnection(t)

    @precondition(lambda self: self.stopped is None and len(self.live()) < 3)
    @rule(limit=st.sampled_from([None, None, 60]), uncached=st.booleans())
    def another_login(self, limit, uncached: bool) -> None:
        """The same user logs in again on another connection, meanwhile."""
        self.connect(limit, uncached)
        self.sessions[-1].proto.dataReceived(COMMANDS[0])

    def _pick(self, data, usable) -> Session | None:
        choices = [s for s in self.sessions if usable(s)]
        if not choices:
            return None
        return data.draw(st.sampled_from(choices), label="session")

    @precondition(lambda self: any(_talks(s) for s in self.sessions))
    @rule(data=st.data(), commands=st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=4),
          turn=st.booleans())
    def send(self, data, commands: list[bytes], turn: bool) -> None:
        """Commands, pipelined; maybe the reactor's next turn after them
        (a save's job handed to a worker)."""
        s = self._pick(data, lambda s: not s.lost and not s.eof and not s.t.gone)
        if s is None:
            return
        s.proto.dataReceived(b"".join(commands))
        if turn:
            self.clock.advance(0)

    @precondition(lambda self: any(_talks(s) for s in self.sessions))
    @rule(data=st.data())
    def half_close(self, data) -> None:
        """The client's FIN: a half-close, or its close for good (the same
        until our next write)."""
        s = self._pick(data, lambda s: not s.lost and not s.eof and not s.t.gone)
        if s is None:
            return
        s.eof = True
        s.proto.readConnectionLost()

    def _lose(self, s: Session, reason) -> None:
        s.lost = True
        s.update_at_loss = s.proto._update_running
        s.t.gone = True
        s.proto.connectionLost(Failure(reason()))
        for c in self.clock.getDelayedCalls():
            if c.active():
                assert getattr(c.func, "__self__", None) is not s.proto, \
                    ("a timer of a gone session", c)

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), reason=st.sampled_from([ConnectionDone, ConnectionLost]))
    def connection_lost(self, data, reason) -> None:
        """A reset, or the end of a close (ours or the client's)."""
        s = self._pick(data, lambda s: not s.lost)
        if s is not None:
            self._lose(s, reason)

    @precondition(lambda self: any(s.t.limit for s in self.live()))
    @rule(data=st.data())
    def client_reads(self, data) -> None:
        s = self._pick(data, lambda s: not s.lost and not s.t.gone)
        if s is not None:
            s.t.read(s.proto)

    @precondition(lambda self: bool(self.jobs.jobs))
    @rule(data=st.data())
    def job_done(self, data) -> None:
        if self.jobs.jobs:
            self.jobs.run_one(data.draw(st.integers(0, len(self.jobs.jobs) - 1), label="job"))

    @rule(seconds=st.sampled_from([0, 0.5, 1, 2, 5, 30, IDLE]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.stopped is None)
    @rule(reads=st.booleans())
    def hub_stops(self, reads: bool) -> None:
        """The hub stops; ``reads``: the clients then read what they were
        sent (an answer under way goes on)."""
        self.updating_at_stop = set(self.factory.updating)
        open_then = self.live()
        cut = [s for s in open_then if s.t.gone]
        self.stopped = self.factory.shut_down()
        for s in cut:
            # cut already (the autologout's abort), its end a turn away:
            # waited for, not drained as a session in the middle of an answer
            if s.proto._draining or s.proto._drain_call is not None:
                self.faults.append("the stop drains a session cut before it")

        def fired(_):
            # the stop is over once every session open at it is gone, its
            # deletions or flags made (POP3Factory.shut_down)
            for s in open_then:
                if not s.lost or s.proto._update_running:
                    self.faults.append("the stop fired before a session's end")

        self.stopped.addCallback(fired)
        if reads:
            for s in open_then:
                if not s.lost and not s.t.gone:
                    s.t.read(s.proto)

    # -- sequences made likely ------------------------------------------------

    def _in_transaction(self, s: Session) -> bool:
        engine = s.proto.engine
        return (_talks(s) and engine is not None and engine.state is State.TRANSACTION
                and not s.proto._busy and not s.proto._closing and not s.proto._draining)

    @precondition(lambda self: any(self._in_transaction(s) for s in self.sessions))
    @rule(data=st.data(), measure=st.booleans())
    def list_saved_on_a_worker(self, data, measure: bool) -> None:
        """LIST measures downgraded sizes (a session without UTF8, 8-bit
        headers), and the reactor's next turn hands their save to a worker,
        where it waits; ``measure``: a size measured on a worker meanwhile
        (message 2, not cached), the next one then back on this thread and
        saved too, in another turn."""
        s = self._pick(data, self._in_transaction)
        if s is None:
            return
        s.proto.dataReceived(b"LIST\r\n")
        self.clock.advance(0)
        if measure:
            for i, (f, _args, _d) in enumerate(self.jobs.jobs):
                if getattr(f, "__name__", "") == "_measure_sizes":
                    self.jobs.run_one(i)
                    break
            self.clock.advance(0)

    def _waits_on_a_job(self, s: Session) -> bool:
        box = s.proto.mailbox
        return not s.lost and box is not None and any(
            box in args or getattr(f, "__self__", None) is box for f, args, _d in self.jobs.jobs)

    @precondition(lambda self: any(self._waits_on_a_job(s) for s in self.sessions))
    @rule(data=st.data(), reason=st.sampled_from([ConnectionDone, ConnectionLost]))
    def hangs_up_with_a_job_waiting(self, data, reason) -> None:
        """The client leaves while a job of its session waits for a
        worker (a sizes save, a read)."""
        s = self._pick(data, self._waits_on_a_job)
        if s is not None:
            self._lose(s, reason)

    @precondition(lambda self: bool(self.jobs.jobs))
    @rule()
    def last_job_done(self) -> None:
        """The latest job first (another worker took it)."""
        self.jobs.run_one(-1)

    @precondition(lambda self: any(self._in_transaction(s) for s in self.sessions))
    @rule(data=st.data(), retr=st.sampled_from([b"RETR 1\r\n", b"LIST\r\nRETR 3\r\n"]))
    def stops_reading(self, data, retr: bytes) -> None:
        """The client reads no more, with an answer under way."""
        s = self._pick(data, self._in_transaction)
        if s is None:
            return
        s.t.limit = 20
        s.proto.dataReceived(retr)

    @precondition(lambda self: any(self._in_transaction(s) for s in self.sessions))
    @rule(data=st.data(), quit=st.booleans())
    def closes_behind_a_read(self, data, quit: bool) -> None:
        """Commands pipelined behind a RETR, then the client's FIN: with
        answers still due -- the read under way (not cached), or commands
        held for a client that stopped reading -- and no QUIT among them
        (nor an RSET with seen flags to take back) the session ends at
        once (its lock let go, or going once its flags are made); a QUIT
        keeps it."""
        s = self._pick(data, self._in_transaction)
        if s is None:
            return
        p = s.proto
        p.dataReceived(b"RETR 2\r\nLIST\r\nDELE 1\r\nTOP 3 0\r\n"
                       + (b"QUIT\r\n" if quit else b""))
        # (not once a QUIT was handled, nor after too many errors)
        due = p._answers_due() and not (p.engine.finished or p._closing)
        # (a client that stopped reading may have sent a QUIT or an RSET before)
        keeps = p.engine.quit_waits() or (p.engine.rset_waits() and p.retrieved_any())
        assert keeps or not (quit and due)
        s.eof = True
        p.readConnectionLost()
        if due:
            assert p._ended is not keeps

    @precondition(lambda self: bool(self.live()))
    @rule(stop=st.booleans())
    def autologout(self, stop: bool) -> None:
        """The idle time runs out, and the second look a turn later; then,
        ``stop``, the hub's stop, before the ends that makes come."""
        self.clock.advance(IDLE)
        self.clock.advance(0)
        if stop and self.stopped is None:
            self.hub_stops(False)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def one_lock(self) -> None:
        if hasattr(self, "boxes"):
            self.check_lines()
            assert self.open_boxes() <= 1
            assert all(n <= 1 for n in self.closes.values()), self.closes

    @invariant()
    def a_lingering_close_keeps_the_lock_only_for_a_job(self) -> None:
        """Once a close the hub decides lingers, the session lets its
        mailbox go unless a held job of it may still use it."""
        if not hasattr(self, "sessions"):
            return
        for s in self.live():
            box = s.proto.mailbox
            if s.t.write_lost and box is not None:
                assert any(box in args or getattr(f, "__self__", None) is box
                           for f, args, _d in self.jobs.jobs), "a lingering close holds the lock"

    @invariant()
    def nothing_failed(self) -> None:
        if hasattr(self, "failures"):
            assert not self.failures, self.failures

    @invariant()
    def gone_sessions_keep_no_timer(self) -> None:
        if not hasattr(self, "sessions"):
            return
        gone = {id(s.proto) for s in self.sessions if s.lost}
        for c in self.clock.getDelayedCalls():
            if c.active():
                owner = getattr(c.func, "__self__", None)
                assert id(owner) not in gone or owner is None, ("timer of a gone session", c)


def _talks(s: Session) -> bool:
    return not s.lost and not s.eof and not s.t.gone


class _Path(str):
    """What ``make_env`` takes of pytest's ``tmp_path``: ``/``."""

    def __truediv__(self, other: str) -> str:
        return os.path.join(self, other)


assert pop3_protocol.CLOSE_GRACE < IDLE
TestPOP3Ends = EndModel.TestCase
TestPOP3Ends.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                                 # a longer run explores afresh each time
                                 derandomize="POP3_END_EXAMPLES" not in os.environ,
                                 suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.filter_too_much])
