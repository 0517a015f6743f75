"""The queue runner: picks due entries and records what happened.

Owns the lifecycle of queued mail after it is accepted: a new entry is
attempted at once, then per the retry schedule (``schedule.py``); every
second it looks for due entries and for the control files ``mailhub
queue`` leaves (flush, and hold/release/delete changes).  For each entry
it delivers local recipients through the mailbox store and remote ones
through the delivery agent -- within per-destination and global
concurrency limits.  A destination's delivered and permanently failed
recipients are written to the record as soon as that destination is done
while others of the entry still run (one update per destination, in
turn per entry), so a stop that gives the rest up, or a crash, leaves
only the unfinished destinations pending; the last one's results go with
the entry's own bookkeeping in one update.  Then it sends the
DSNs that are owed (failures, the one "delayed" warning, RFC 3461 success
notices) and lets the queue remove the entry once it is finished.  An
exception while handling one entry is logged and that entry rescheduled;
it never stalls the others.

It must not touch the queue's files itself (``queue.py`` does) nor speak
SMTP (``attempt.py`` does).  What a result changes in a record, and when
the next attempt is, are pure functions of ``recording.py``.  Its other
parts are base classes of ``QueueRunner``, each in a module of its own:
the notices are made and sent by ``notices.py`` (``NoticeSender``); which
due entries are taken at a look is ``admission.py``'s (``Admission``); a
remote delivery's wait for its slots, ``slots.py``'s (``Slots``); a stop,
and what it waits for or gives up, ``stopping.py``'s (``Stopping``); what
it learns of its queue (each entry's next attempt, ``mailhub queue``'s
changes), ``events.py``'s (``QueueEvents``); and what is kept of each
entry under way is one object of ``running.py``'s (``RunningEntries``),
made when it is taken and dropped when it is done.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.address import Address
from txmailhub.envelope import SpooledMessage
from txmailhub.errors import MailboxNameError
from txmailhub.interfaces import IKeyedStore
from txmailhub.logsafe import listed, log_failure, loggable, plural
from txmailhub.relay import bounce, recording, schedule
from txmailhub.relay.admission import ENTRIES_PER_SLOT as ENTRIES_PER_SLOT  # process_limits' import
from txmailhub.relay.admission import Admission, DueTimes
from txmailhub.relay.attempt import DeliveryResult
from txmailhub.relay.events import QueueEvents
from txmailhub.relay.failing import FailingDestinations
from txmailhub.relay.notices import _DELETED, NoticeSender
from txmailhub.relay.queue import CHANGED, FLUSH, RECORD_ROOM, OutboundQueue
from txmailhub.relay.record import QueueEntry
from txmailhub.relay.recording import (
    ERROR_RETRY,
    notice_owed,
    owes_notice,
    pending_in,
    told_written,
)
from txmailhub.relay.running import RunningEntries, _Attempt, _Running
from txmailhub.relay.slots import Slots
from txmailhub.relay.stopping import CUT_GRACE as CUT_GRACE  # interfaces.py names it here
from txmailhub.relay.stopping import SHUTDOWN_GRACE as SHUTDOWN_GRACE
from txmailhub.relay.stopping import Stopping
from txmailhub.smtp.reply import LocalReply, Reply

__all__ = ["QueueRunner"]

log = Logger(namespace="txmailhub.relay.runner")

# a record's write refused so is a full disk or a quota (``_note_write``)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)

POLL_INTERVAL = 1.0  # seconds between looks at the clock and the control files
# ERROR_RETRY (imported above, so still importable from here): how soon an
# entry whose handling crashed, or that only owed a notice, is retried; it
# is defined in recording.py, with the rule that sets the next attempt
# SHUTDOWN_GRACE and CUT_GRACE (imported above, so still importable from
# here): how long a stop waits for the attempts in flight, then for the
# connections it cut; defined in stopping.py, with the stop


def _log_mended(mended: list[dict]) -> None:
    """Log each time ``recording.mend_times`` took as now (its fields)."""
    for fields in mended:
        log.warn("{queue_id}: the record's {what} is not a time ({value}); "
                 "taken as now, {now}", **fields)


class _AttemptFailed(Exception):
    """A delivery of an attempt failed with an error out of the agent (a
    bug): raised once the attempt's other deliveries are over too, with
    what they gave (``results``), so that none runs on unknown to the
    runner and what they delivered is not sent again."""

    def __init__(self, failure: Failure, results: list[DeliveryResult]) -> None:
        super().__init__(failure.getErrorMessage())
        self.failure = failure
        self.results = results


def _done_again(final: list[DeliveryResult]) -> list[str]:
    """What a start in a new process does again for the delivered and
    refused-for-good recipients ``final`` whose record a stop left
    unwritten (each a clause of a log line's "a start in a new process
    ...")."""
    told = []
    sent = [r.address for r in final if r.kind == "delivered"]
    if sent:
        told.append(f"sends the message again to {listed(sent)}")
    refused = [r.address for r in final if r.kind == "permanent"]
    if refused:
        told.append(f"tries {listed(refused)} again (refused for good)")
    return told


class QueueRunner(Admission, QueueEvents, Slots, NoticeSender, Stopping, RunningEntries):
    """Runs the queue: ``start()``, ``stop()``, and ``kick()`` to look now."""

    def __init__(self, queue: OutboundQueue, agent: Any, components: Any, clock: Any,
                 send_dsn: Callable[..., defer.Deferred] | None = None) -> None:
        self.queue = queue
        self.agent = agent
        self.components = components
        self.clock = clock
        self.settings = components.settings
        self.relay = self.settings.relay
        self.send_dsn = send_dsn or bounce.send_dsn
        self.due: dict[str, float] = DueTimes()  # queue id -> next attempt (held: absent)
        self._held: set[str] = set()  # held entries (to log a hold or a release once)
        # The entries under way (``active``), one ``running._Running`` each:
        # their destinations not done yet, whether a stop gave them up,
        # and, while their deliveries run, what a stop must wait for
        # (``_must_finish``: ``running._Attempt``).  Made when an entry is
        # taken (``kick``), dropped when it is done (``_finished``).
        self._entries: dict[str, _Running] = {}
        self._generation = 0  # bumped when a stop gives up the attempts in flight
        self._give_up_timer: Any = None
        # Where each entry known goes: its pending recipients' remote
        # destinations, and whether it has local ones (``_index``).
        # ``kick`` takes no more entries for a destination than it can use
        # at once (``_room_for``): the ones beyond would hold the room
        # other destinations' entries need, waiting for a slot they cannot
        # have.
        self._destinations: dict[str, tuple[frozenset[str], bool]] = DueTimes()
        # destinations whose MX lookup under way ``kick`` waits for (one
        # look at its end each: ``_lookup_over``)
        self._watching: set[str] = set()
        # destinations none of whose hosts answered the last delivery: one
        # delivery at a time until one connects (``failing.py``); in memory
        # only, forgotten at each start
        self._failing = FailingDestinations()
        self._kicking = False  # a kick is under way (``kick``)
        self._kick_again = False
        # Results of attempts whose record could not be written (no
        # descriptor, no inode): entered at the next try instead of
        # delivering those copies again.  In memory only: after a crash the
        # copies go again, a duplicate rather than a loss (RFC 5321 6.1).
        self._unrecorded: dict[str, list[DeliveryResult]] = {}
        # The same for notices: sent, but the record saying so could not be
        # written.  (action, recipient) pairs per queue id.
        self._notified: dict[str, set[tuple[str, Address]]] = {}
        # Entries this process queued (``_event``) and has not handled
        # yet: no attempt can have made a local copy of them, so the
        # store need not look for one (``_deliver_local``)
        self._queued_here: set[str] = set()
        # The release count (``QueueEntry.releases``) an attempt started
        # with, and when it started, kept with its unrecorded results: the
        # release that arrived during that attempt is still honoured when
        # they are recorded (if that attempt began within the lifetime).
        self._release_seen: dict[str, tuple[int, float]] = {}
        # Entries not attempted because the queue folder had no room to
        # record the outcome (``_wait_for_room``): said when the first of
        # them begins to wait, and when the last finds room
        # (``_record_room_found``)
        self._roomless: set[str] = set()
        # When a record's write was last refused for want of room (ENOSPC,
        # or EDQUOT: a quota, which ``statvfs`` does not show), and why;
        # ``None`` once a write succeeds.  For ``ERROR_RETRY`` after it no
        # attempt whose outcome must be written begins (``_has_room``), as
        # for a full queue folder
        self._refused: tuple[float, str] | None = None
        self.running = False
        self._semaphores: dict[str, defer.DeferredSemaphore] = {}
        self._global = defer.DeferredSemaphore(self.relay.max_concurrent_deliveries)
        # queue id -> the longest its next attempt may be away (``_longest_wait``)
        self._wait: dict[str, float] = {}
        self._loop: task.LoopingCall | None = None
        self._idle: list[defer.Deferred] = []
        # a stop gave the attempts in flight up and waits for the sessions
        # it cut to close: per generation given up, the writes of what
        # those had settled for good (``_record_cut``), and the later
        # stops waiting for that stop's end.  It is over once they are
        # (``Stopping``); a stop after a start within that wait has its own
        self._cuts: dict[int, list[defer.Deferred]] = {}
        self._cut_over: dict[int, list[defer.Deferred]] = {}
        # the writes of ``_transaction_settled`` under way, each with
        # whether a stop's cut took it and whether that cut's wait for it
        # is over (``_settling_writes``)
        self._settling: list[tuple[defer.Deferred, list[bool], list[bool]]] = []
        # the attempt markers being removed (``_unmark``), each with the
        # Deferreds of the stops that wait for its end (``_unmarks_under_way``)
        self._unmarking: list[list[defer.Deferred]] = []
        # when a stop's waits after its grace end (``Stopping._stop_wait``)
        self._stop_by: float | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self.running and self._loop is not None and self._loop.running:
            # running already: a second loop would tick on after the stop,
            # which stops only the last one made
            return
        self.running = True
        if self._give_up_timer is not None and self._give_up_timer.active():
            # started again within a stop's grace: what the last run left in
            # flight is given up now, or its timer would end this run's
            # (and the stop that waited for them is over: its Deferred fires)
            self._give_up_now()
        self._give_up_timer = None
        # the lookups watched by the last run (``_room_for``) may be ones
        # this run shares no more (``MXResolver.forget``): watched anew
        self._watching.clear()
        self._failing.clear()  # tried afresh, as the agent's memory of them
        self._roomless.clear()  # a full queue folder is said again by this run
        # an entry the last run was told of may have been taken by another
        # hub meanwhile (the queue is handed over at a stop): looked for
        self._queued_here.clear()
        self.agent.resume()
        now = self.clock.seconds()
        entries = self.queue.recover()
        # what the last run knew of entries gone since (deleted, or taken
        # and delivered by another hub once this one stopped): not queued
        # any more, whatever that run still had in memory
        found = {entry.id for entry in entries}
        for qid in {*self.due, *self._held, *self._unrecorded, *self._notified}:
            if qid in found:
                continue
            if qid in self._entries:  # the last run's, given up: looked at at its end
                self._entries[qid].changed = True
            else:
                self._forget(qid)
        for entry in entries:
            self._index(entry, quiet=True)
            if entry.id in self.due and not entry.pending and owes_notice(entry):
                # The last run recorded the final outcome and died before
                # sending the notice it owed: that was due then, not at the
                # retry time the record carries (hours away late in the
                # schedule).  With recipients still to deliver, their retry
                # time stands, and the notice goes with that attempt.
                self.due[entry.id] = min(self.due[entry.id], now)
        if self.queue.take_flag(FLUSH):
            self._flush()
        self.queue.take_flag(CHANGED)
        self.queue.listen(self._event)
        # Counted before the first tick: that tick attempts what is due at
        # once, and an attempt that ends within it (a local delivery, a
        # refusal) took its entry out of the count, so that a start with
        # queued mail could say "0 queued messages".
        count = len(self.due) + len(self._held)
        log.info("queue runner started with {count} queued {messages}{held}",
                 count=count, messages=plural(count, "message", "messages"),
                 held=f", {len(self._held)} held" if self._held else "")
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(POLL_INTERVAL, now=True)

    # --- one entry's end ----------------------------------------------------------

    def _crashed(self, failure: Any, qid: str) -> None:
        self._note_write(failure)  # (a notice's record: ``_noted``)
        # an OSError (its record cannot be written: a full disk) is one line
        log_failure(log, failure, "handling queue entry {queue_id} failed; retrying later",
                    queue_id=qid)
        if qid in self.due:
            self.due[qid] = self.clock.seconds() + ERROR_RETRY
            self._where_now(qid)

    def _where_now(self, qid: str) -> None:
        """Know ``qid``'s destinations as its record has them now: after a
        handling that failed, which may have written some of them done
        (``_record_known``).  Known as they were, the entry was taken at
        its retry for a destination it no longer has -- beyond the room of
        a failing one it still has, its delivery there waiting for the
        turn behind every entry taken so (a mailing list's), not as the
        entry for that destination alone it is (``failing.py``).  Its due
        time stays the retry's; a record that cannot be read (or gone, or
        held: ``_finished`` looks at those changes) leaves it as it was."""
        try:
            entry = self.queue.read(qid)
        except Exception:
            return  # its retry reads it again, and meets the error there
        if entry is None or entry.held or qid in self._unrecorded:
            # (with results not written yet, its retry only enters them:
            # ``kick`` counts no destination of it then)
            return
        self._destinations[qid] = self._where(entry)

    def _finished(self, _: Any, qid: str) -> None:
        running = self._drop(qid)
        if running is not None and running.changed:
            if self.running and (qid in self.due or qid in self._held):
                self._reindex(qid, gone="no more attempts, no notice")
        self._one_over()
        if self.running:
            self.kick()

    # --- one entry -------------------------------------------------------------------

    @defer.inlineCallbacks
    def _process(self, qid: str) -> Any:
        first = qid in self._queued_here  # (its first handling, whatever it does)
        self._queued_here.discard(qid)
        entry = self.queue.read(qid)
        if entry is None:
            self._forget(qid)
            return
        if entry.held:
            self._index(entry)
            return
        self.due[qid] = float("inf")  # not due again until recorded below
        if recording.mend_times(entry, self.clock.seconds())[1]:
            # a time a hand edit left no number (recording.mend_times),
            # mended and written before the attempt: a local copy's Maildir
            # name is made from ``created`` (none can be from NaN), and the
            # name a crash replays must be the one the copy was made under
            before = self._generation
            entry = yield self._mend(qid)
            if before != self._generation or not self.running:
                # stopped meanwhile (given up, or a stop waiting): no attempt
                # begins after a stop did; the next start takes it again
                if self.running:
                    self.due[qid] = self.clock.seconds()
                return
            if entry is None:
                log.info("queue entry {queue_id} deleted (mailhub queue delete): "
                         "no more attempts, no notice", queue_id=qid)
                self._forget(qid)
                return
            if entry.held:
                # `mailhub queue hold` while the mend was written: the
                # record in hand says held, as at the read above
                self._index(entry)
                return
        owed = self._told_unwritten(entry)
        if owed:
            # notices sent whose record could not be written: written
            # before anything else is done for the entry (a delivery whose
            # outcome could not be written either would leave two outcomes
            # in memory only, for a crash to lose); a write that fails
            # again is retried as a handling that failed (``_crashed``)
            before = self._generation
            entry = yield self._write(qid, told_written(owed))
            self._told_recorded(qid, lambda *pair: pair in owed)
            if before != self._generation or not self.running:
                if self.running:
                    self.due[qid] = self.clock.seconds()
                return
            if entry is None:
                self._forget(qid)
                log.info("{queue_id} done: removed from the queue", queue_id=qid)
                return
            if entry.held:
                self._index(entry)
                return
        results: list[DeliveryResult] = self._unrecorded.pop(qid, [])
        if (results and entry.pending
                and not any(pending_in(entry, r.address) for r in results)):
            # written after all (a write a stop gave up that landed): no
            # try of their own, the entry's pending recipients are attempted
            results = []
        # a release counted after this (`mailhub queue release` during the
        # attempt) is honoured when the outcome is recorded
        releases, started = self._release_seen.pop(qid, (entry.releases, self.clock.seconds()))
        generation = self._generation
        if not (entry.pending and not results) and self._room_back(qid):
            # no delivery this time (results known already, to be recorded;
            # only notices owed): its destinations' room, counted when it
            # was taken, is for their other entries
            self.kick()
        withheld = False  # a delivery not made: the entry held or deleted as it waited
        if entry.pending and not results:
            if recording.delivery_needs_record(entry):
                # a copy sent now whose outcome cannot be written is sent
                # again after a restart: none is, until there is room.  An
                # entry that one delivery finishes is still attempted: its
                # removal needs no room, and frees some
                if not self._has_room(qid):
                    self._wait_for_room(entry)
                    return
                self._record_room_found(qid)
            self._roomless.discard(qid)  # (one that needs no record any more)
            att = self._start_attempt(qid)
            att.first = first and not results
            try:
                results = yield self._attempt(entry, generation, att)
                withheld = att.withheld
            except _AttemptFailed as e:
                # the other destinations' outcomes are written; the entry is
                # retried as one whose handling failed (``_crashed``)
                if generation != self._generation or self._is_dropped(qid):
                    self._keep_given_up(qid, e.results)
                yield self._record_known(qid, e.results, generation)
                e.failure.raiseException()
            finally:
                marked = self._end_attempt(qid, att)
                if marked is not None:
                    self._unmark(qid, marked)
        if generation != self._generation or self._is_dropped(qid):
            # given up by a stop: the queue may be another hub's now.  If
            # this runner runs again meanwhile, the entry is retried by it.
            # (what a session it cut had settled for good was written as
            # that destination's delivery ended: ``_record_partial``)
            self._keep_given_up(qid, results)
            if self.running:
                self.due[qid] = self.clock.seconds()
            return
        now = self.clock.seconds()
        found = []
        lines: list[dict] = []

        def honoured(e: QueueEntry) -> bool:
            """Whether a release made during this attempt brings another
            one at once: not when this attempt itself began after the
            queue lifetime (it was the last one that release, or an
            earlier one, could ask for: every release landing during an
            attempt would otherwise keep an expired message for ever)."""
            return (e.releases != releases
                    and not schedule.expired(started, e.created, self.relay.queue_lifetime))

        mended: list[dict] = []

        def record(e: QueueEntry) -> QueueEntry | None:
            found.append(e)
            del lines[:]  # the lines of the version that is written
            # a time a hand-edited record holds that is no number (NaN):
            # now, as the lifetimes it decides must end (recording.mend_times)
            e, mended[:] = recording.mend_times(e, now)
            if withheld and not results:
                # held while its deliveries waited, none made: kept as the
                # hold left it, as one held before it was taken (no
                # attempt counted, its schedule not moved on).  So is one
                # released since (before this write): the release made it
                # due at once; recorded as a pass, it had a notice try
                # counted and its schedule moved on by a step for nothing
                return e
            return self._record(e, results, now, lines, released=honoured(e))

        try:
            entry = yield self._write(qid, record)
        except Exception:
            if results:
                self._unrecorded[qid] = results
                self._release_seen[qid] = (releases, started)
            raise
        if not found:  # the record went while the attempt ran
            log.info("queue entry {queue_id} deleted (mailhub queue delete): "
                     "no more attempts, no notice", queue_id=qid)
            self._forget(qid)
            return
        _log_mended(mended)
        for fields in lines:
            log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)
        if entry is not None and honoured(found[-1]) and not entry.held:
            log.info("queue entry {queue_id} released (mailhub queue release) during its "
                     "delivery attempt: tried again at once", queue_id=qid)
        if generation != self._generation:
            # given up while the record was written: no notice from here
            # (the queue may be another hub's now).  What it wrote is known
            # though: a start meanwhile read the record before it, and would
            # take the entry again at once as that said, or keep one
            # finished since as due
            if entry is None:
                self._forget(qid)
                log.info("{queue_id} done: removed from the queue", queue_id=qid)
            else:
                self._index(entry)
            return
        if entry is not None and entry.held and withheld and not results:
            self._index(entry)  # nothing done: no notice either, until its release
            return
        if entry is not None:
            entry = yield self._notify(entry, now)
        if entry is _DELETED:
            log.info("queue entry {queue_id} deleted (mailhub queue delete): no more "
                     "attempts; a notice made meanwhile is sent", queue_id=qid)
            self._forget(qid)
            return
        if entry is None:
            self._forget(qid)
            log.info("{queue_id} done: removed from the queue", queue_id=qid)
        else:
            self._index(entry)

    def _told_unwritten(self, entry: QueueEntry) -> set[tuple[str, Address]]:
        """The notices sent for ``entry`` (``_notified``) that its record
        still owes: the write that would have said so failed."""
        return {(action, address) for action, address in self._notified.get(entry.id, ())
                if notice_owed(entry, action, address)}

    def _last_writes(self) -> defer.Deferred:
        """At the end of a stop: what this runner keeps in memory only (an
        outcome or a notice whose record could not be written) is written
        once more, for the next start may be another process's, which
        has only the records.  What still cannot be written is logged,
        naming the recipients a start in a new process sends the message
        again, and the notices it sends again.  Fires when done, never
        with an error; the writes are made together, until the stop's
        deadline at most (``Stopping._stop_wait``: what is left of its one
        ``CUT_GRACE`` after the grace, ``LAST_WRITES_FLOOR`` at least,
        ``Stopping._last_waits``; none is begun once it is over)."""
        if self.running:
            return defer.succeed(None)  # started again: its next try writes them
        qids = sorted({*self._unrecorded, *self._notified})
        return defer.DeferredList([self._last_write(qid) for qid in qids],
                                  consumeErrors=True).addCallback(lambda _: None)

    def _last_write(self, qid: str) -> defer.Deferred:
        """``_last_writes`` for the entry ``qid``."""
        results = self._unrecorded.get(qid, [])
        final = [r for r in results if r.kind in ("delivered", "permanent")]
        try:
            entry = self.queue.read(qid)
        except Exception:
            entry = None  # its write tells
        if entry is not None:
            final = [r for r in final if pending_in(entry, r.address)]
            owed = self._told_unwritten(entry)
        else:
            owed = set(self._notified.get(qid, ()))
        if not final and not owed:
            return defer.succeed(None)
        now = self.clock.seconds()
        lines: list[dict] = []
        states = self._states_change(final, now, lines)
        notices = told_written(owed)

        def written(_: Any) -> None:
            for fields in lines:
                log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)
            self._told_recorded(qid, lambda *pair: pair in owed)
            rest = [r for r in self._unrecorded.get(qid, ())
                    if r.kind not in ("delivered", "permanent")]
            if rest:
                self._unrecorded[qid] = rest
            else:
                self._unrecorded.pop(qid, None)

        def failed(f: Failure) -> None:
            # (``addTimeout`` makes its cancel a TimeoutError)
            said = [] if not f.check(defer.CancelledError, defer.TimeoutError) else [
                f"not written within {CUT_GRACE:g} s (unless that write still lands)"]
            error = "" if said else f" ({f.getErrorMessage()})"
            sender = ("the sender" if entry is None
                      else f"<{loggable(entry.envelope.sender_text, 1 << 20)}>")
            told = _done_again(final)
            for action in sorted({a for a, _ in owed}):
                to = sorted((a for act, a in owed if act == action), key=str)
                told.append(f"sends the {action} notice for {listed(to)} to {sender} again")
            log.error("{queue_id}: its record cannot be written as the hub stops{error}"
                      "{late}: a start in a new process {what}", queue_id=qid, error=error,
                      late=f", {said[0]}" if said else "", what="; ".join(told))

        late: list[bool] = []

        def change(e: QueueEntry) -> QueueEntry:
            if late:
                # its turn on a thread came after the stop's wait: the stop
                # is over, the queue maybe another hub's (no write of this
                # one begins then; one begun still finishes)
                raise defer.CancelledError()
            return notices(states(e))

        def timed_out(f: Failure) -> Failure:
            if f.check(defer.CancelledError, defer.TimeoutError):
                late.append(True)
            return f

        if self._stop_by is not None and self._stop_by <= self.clock.seconds():
            # the stop's wait is over already (its cut connections, or the
            # writes of what they settled, took it all): not begun
            return defer.fail(defer.TimeoutError()).addCallbacks(written, failed)
        d = self._stop_wait(self._write(qid, change))
        return d.addErrback(timed_out).addCallbacks(written, failed)

    def _wait_for_room(self, entry: QueueEntry) -> None:
        """``entry`` is not attempted now: the queue folder has no room to
        record the outcome.  Retried like an entry whose handling failed
        (no attempt counted), but said once, as a warning, for all the
        entries that wait so: a full disk under a large queue would
        otherwise log a line per entry per minute."""
        qid = entry.id
        if not self._roomless:
            why = (f"no inode free, or less than {RECORD_ROOM // 1024} KiB"
                   if self._refused is None
                   else f"a record's write was refused: {self._refused[1]}")
            log.warn("the queue folder {path} has no room to record a delivery attempt's "
                     "outcome ({why}): entries whose outcome must be written are not "
                     "attempted until it has", path=self.queue.directory, why=why)
        self._roomless.add(qid)
        self.due[qid] = self.clock.seconds() + ERROR_RETRY
        self._destinations[qid] = self._where(entry)

    def _tick(self) -> None:
        # while entries wait for room, a look each second (one ``statvfs``)
        # makes them due as soon as there is some, not at their retry
        if self._roomless:
            try:
                self._look_for_room()
            except Exception:
                log.failure("queue runner: a look at the queue folder's room failed")
        super()._tick()

    def _look_for_room(self) -> None:
        """Make the entries that wait for room due now if there is some
        (for one of them: each looks again for itself).  Those held or
        gone since wait no more (and are not said to have found room:
        with none left, a later wait is said anew)."""
        waiting = self._roomless
        waiting.intersection_update(self.due.keys())
        # (not while a write was refused for room and none written since:
        # the entries' own tries find out, one a minute, ``_has_room``)
        if (not waiting or self._refused is not None
                or not self.queue.has_room_for_outcome(min(waiting))):
            return
        now = self.clock.seconds()
        for qid in waiting:
            if now < self.due[qid] < float("inf"):  # (inf: under way)
                self.due[qid] = now

    def _has_room(self, qid: str) -> bool:
        """Whether an attempt of ``qid`` whose outcome must be written may
        begin: no record's write was refused for want of room in the last
        ``ERROR_RETRY`` (a quota is seen so alone), or none since this one
        was let find out again (one a minute), and the queue folder has
        room (``OutboundQueue.has_room_for_outcome``)."""
        if self._refused is not None:
            now = self.clock.seconds()
            if now < self._refused[0] + ERROR_RETRY:
                return False
            # none written since: this attempt finds out again (the entries
            # whose outcome waits in memory try each minute too), and the
            # others wait for what its write says, or another minute: taken
            # at once (the write is on a thread), they would all deliver a
            # copy whose outcome cannot be written either
            if not self.queue.has_room_for_outcome(qid):
                return False
            self._refused = (now, self._refused[1])
            return True
        return self.queue.has_room_for_outcome(qid)

    def _note_write(self, result: Any) -> Any:
        """A record's write is over (``result``: its result or Failure):
        one refused for want of room (ENOSPC; EDQUOT, a quota) holds the
        attempts whose outcome must be written (``_has_room``), one that
        writes a record ends that (a removal, ``None``, needs no room and
        tells nothing)."""
        if not isinstance(result, Failure):
            if result is not None:
                self._refused = None
        elif result.check(OSError) and result.value.errno in _NO_ROOM:
            self._refused = (self.clock.seconds(), str(result.value))
        return result

    def _record_room_found(self, qid: str) -> None:
        """``qid`` found room for its outcome: when it was the last entry
        waiting for room (``_wait_for_room``), attempts go on, said once."""
        if qid not in self._roomless:
            return
        self._roomless.discard(qid)
        if not self._roomless:
            log.info("the queue folder {path} has room again: delivery attempts resume",
                     path=self.queue.directory)

    def _keep_given_up(self, qid: str, results: list[DeliveryResult]) -> None:
        """A stop gave ``qid``'s attempt up: of what it had, the recipients
        delivered or failed for good are entered at this runner's next try
        of it, as a record that cannot be written is (``_unrecorded``).  A
        destination's own write may not have been made (it waited behind
        another's on a slow disk, or failed): sending those copies again
        at a start of this runner would be a duplicate with no crash.  One
        written already stays as it is (``recording.apply_results``); a cut session's
        results (temporary) are no outcome and are not kept."""
        final = [r for r in results if r.kind in ("delivered", "permanent")]
        if final:
            known = {r.address for r in final}
            self._unrecorded[qid] = [r for r in self._unrecorded.get(qid, [])
                                     if r.address not in known] + final

    def _forget(self, qid: str) -> None:
        self.due.pop(qid, None)
        self._destinations.pop(qid, None)
        self._wait.pop(qid, None)
        self._held.discard(qid)
        self._unrecorded.pop(qid, None)
        self._notified.pop(qid, None)
        self._release_seen.pop(qid, None)
        self._queued_here.discard(qid)

    @defer.inlineCallbacks
    def _mend(self, qid: str) -> Any:
        """Write ``qid``'s record with the times that are no number taken as
        now (``recording.mend_times``), and log each; fires with the entry
        as written, or ``None`` when it went meanwhile."""
        now = self.clock.seconds()
        mended: list[dict] = []

        def mend(e: QueueEntry) -> QueueEntry:
            e, mended[:] = recording.mend_times(e, now)
            return e

        entry = yield self._write(qid, mend)
        _log_mended(mended)
        return entry

    def _write(self, qid: str, change: Callable[[QueueEntry], QueueEntry | None],
               guard: Callable[[], bool] | None = None) -> defer.Deferred:
        """``queue.update(qid, change)`` once the updates of ``qid`` before
        it are written (none at all when ``guard()`` is false by then)."""
        # the entry's own lock while it is under way (all its writes are);
        # one of its own otherwise
        running = self._entries.get(qid)
        lock = running.lock if running is not None else defer.DeferredLock()

        def update() -> defer.Deferred:
            if guard is not None and not guard():
                return defer.succeed(None)
            return self.queue.update(qid, change).addBoth(self._note_write)

        return lock.run(update)

    def _mark(self, qid: str, att: _Attempt) -> None:
        """The first delivery of ``qid``'s attempt ``att`` begins: `mailhub
        queue list` (another process) says "delivering" from now on, while
        this marker is held (queue.py: a killed hub's is stale).  Not
        before: an entry that only waits for a slot is not being
        delivered."""
        if att.live and att.mark is None and not att.unmarked:
            att.mark = self.queue.mark_attempt(qid, self.clock.seconds())

    def _unmark(self, qid: str, marked: defer.Deferred) -> None:
        """Remove ``qid``'s attempt marker (``marked``: ``_mark``'s), and
        with it close its descriptor: at the attempt's end, or when a stop
        gives the attempt up (``Stopping._let_go``).  A stop is over only
        once the removals under way are (``_unmarks_under_way``)."""
        waiters: list[defer.Deferred] = []
        self._unmarking.append(waiters)

        def over(_: Any) -> None:
            if waiters in self._unmarking:
                self._unmarking.remove(waiters)
            for d in waiters:
                if not d.called:
                    d.callback(None)

        self.queue.unmark_attempt(qid, marked).addErrback(
            lambda f: log_failure(log, f, "{queue_id}: the attempt marker cannot be removed",
                                  queue_id=qid)).addBoth(over)

    def _unmarks_under_way(self) -> list[defer.Deferred]:
        """A Deferred for the end of each marker removal under way
        (``_unmark``): fires, never fails, once that removal is over."""
        ends = []
        for waiters in self._unmarking:
            waiters.append(defer.Deferred())
            ends.append(waiters[-1])
        return ends

    def _keep(self, att: _Attempt) -> None:
        att.kept += 1

    def _unkeep(self, att: _Attempt) -> None:
        att.kept = max(att.kept - 1, 0)

    def _room_back(self, qid: str) -> bool:
        """``qid``'s destinations, counted as open when it was taken, are
        for their other entries now: whether it had any."""
        running = self._entries.get(qid)
        if running is None:
            return False
        dests, running.open_dests = running.open_dests, None
        return bool(dests)

    def _attempt(self, entry: QueueEntry, generation: int, att: _Attempt) -> defer.Deferred:
        router = self.components.router
        local: list[Address] = []
        groups: dict[str, list[Address]] = {}
        for r in entry.pending:
            if router.is_local_domain(r.address.domain):
                local.append(r.address)
            else:
                groups.setdefault(self.agent.destination(r.address), []).append(r.address)
        att.open = len(groups) + (1 if local else 0)  # (before any is done)
        running = self._entries[entry.id]
        taken_for = running.open_dests
        running.open_dests = set(groups)  # as they are now
        if taken_for is not None and not taken_for <= running.open_dests and self.running:
            # taken for a destination it no longer has (its recipients there
            # done by an attempt whose handling failed after, which left
            # what the runner knew of it as it was): that room, counted by
            # the look that took it, is for another entry now, not at the
            # next tick (``kick`` from within that look looks again)
            self.kick()
        # each started as a Deferred of its own: an error out of the agent
        # or the store while one is started (raised, not a failed
        # Deferred) fails that delivery alone, and the ones started before
        # it are waited for and recorded, not left running unknown to the
        # runner (their answers counted for ever, the copies sent again)
        ds = [defer.maybeDeferred(self._limited, dest, entry, rcpts, generation, att)
              for dest, rcpts in groups.items()]
        if local:
            ds.append(defer.maybeDeferred(self._deliver_local, entry, local, generation, att))

        def closed(result: Any) -> Any:
            if att.live:
                att.open -= 1
                self._look_again()
            return result

        def gathered(outcomes: list[tuple[bool, Any]]) -> list[DeliveryResult]:
            results = [r for ok, rs in outcomes if ok for r in rs]
            for ok, failure in outcomes:
                if not ok:
                    raise _AttemptFailed(failure, results)
            return results

        # every delivery waited for, an error too: one that ran on after
        # the entry was handled as failed was retried beside it (a second
        # copy), its outcome never recorded
        d = defer.DeferredList([d.addBoth(closed) for d in ds], consumeErrors=True)
        return d.addCallback(gathered)

    @defer.inlineCallbacks
    def _record_known(self, qid: str, results: list[DeliveryResult],
                      generation: int) -> Any:
        """Write the delivered and permanently failed recipients of an
        attempt one of whose deliveries failed with an error, as a
        destination's own update does (``_record_partial``); what cannot
        be written is entered at the next try instead."""
        final = [r for r in results if r.kind in ("delivered", "permanent")]
        if not final or generation != self._generation or self._is_dropped(qid):
            return
        lines: list[dict] = []
        try:
            yield self._write(qid, self._states_change(final, self.clock.seconds(), lines))
        except Exception:
            log_failure(log, Failure(), "{queue_id}: the results of its other destinations "
                        "cannot be recorded yet; recorded at the next try", queue_id=qid)
            self._unrecorded[qid] = final
            return
        for fields in lines:
            log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)

    def _record_cut(self, qid: str, final: list[DeliveryResult]) -> defer.Deferred:
        """Write the delivered and permanently failed recipients ``final``
        of one destination of ``qid``'s attempt that a stop gave up
        (``_cut_by_stop``'s results: those an earlier transaction of a cut
        session settled), while that stop still waits for its cut sessions
        to close (``_record_partial``, as that destination's delivery ends:
        the attempt's other deliveries may end after the stop).  The next
        start may be another process, with no memory of them
        (``_keep_given_up``): a delivered recipient left pending there got
        a second copy.  Only the recipients' states change; fires when
        written or not (what is not stays for this runner's next try)."""
        lines: list[dict] = []
        states = self._states_change(final, self.clock.seconds(), lines)
        what = "; ".join(_done_again(final))
        late: list[bool] = []

        def change(e: QueueEntry) -> QueueEntry:
            if late:
                # its turn on a thread came after the stop's wait for it: the
                # stop may be over, the queue another hub's (no write of this
                # one begins then; one begun still finishes)
                raise defer.CancelledError()
            return states(e)

        def written(_: Any) -> None:
            for fields in lines:
                log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)

        def failed(f: Failure) -> None:
            if f.check(defer.CancelledError):
                # not written within the stop's wait (``CUT_GRACE``: a slow
                # disk): no error of the hub's.  A write on its thread may
                # still land (under the queue's file lock); one not begun
                # is not made
                late.append(True)
                log.warn("{queue_id}: the results of the attempt the stop cut were not "
                         "written within {grace:g} s (unless that write still lands): a "
                         "start in a new process {what}", queue_id=qid, grace=CUT_GRACE,
                         what=what)
                return
            log_failure(log, f, "{queue_id}: the results of the attempt the stop cut cannot "
                        "be recorded; a start in a new process {what}", queue_id=qid,
                        what=what)

        d = self._write(qid, change)
        return d.addCallbacks(written, failed)

    def _deliver_local(self, entry: QueueEntry, rcpts: list[Address],
                       generation: int, att: _Attempt) -> defer.Deferred:
        message = SpooledMessage(entry.message_path, entry.size, entry.crlf_size)
        store = self.components.store
        self._keep(att)  # a copy made must be recorded: a stop waits for it
        self._mark(entry.id, att)  # no slot to wait for: delivering at once
        if IKeyedStore.providedBy(store):
            # The outcome is recorded only after the copy is made: after a
            # crash in between, the key lets the store see the copy is there
            # instead of making a second one of an acknowledged message.
            # (``att.first``: the first attempt of an entry queued by this
            # process, where no copy can be: the store lists no folder)
            d = defer.maybeDeferred(store.deliver_keyed, message, rcpts,
                                    (entry.created, entry.id), first=att.first)
        else:
            d = defer.maybeDeferred(store.deliver, message, rcpts)

        def done(outcome: dict) -> list[DeliveryResult]:
            out = []
            for a in rcpts:
                err = outcome.get(a, "no result from the mailbox store")
                if err is None:
                    out.append(DeliveryResult(a, "delivered", Reply.of(250, "2.0.0",
                                                                       "Delivered")))
                elif isinstance(err, MailboxNameError):
                    # no Maildir folder can have its name (a users file line
                    # written by hand): no attempt will ever do better, so
                    # the sender hears it now, not at the queue's lifetime
                    out.append(DeliveryResult(a, "permanent", LocalReply.of(
                        550, "5.3.5", f"local delivery failed: {err}")))
                else:
                    out.append(DeliveryResult(a, "transient", LocalReply.of(
                        451, "4.3.0", f"local delivery failed: {err}")))
            return out

        def failed(f: Any) -> list[DeliveryResult]:
            log.failure("local delivery of {queue_id} failed", f, queue_id=entry.id)
            reply = LocalReply.of(451, "4.3.0", f"local delivery failed: {f.getErrorMessage()}")
            return [DeliveryResult(a, "transient", reply) for a in rcpts]

        d.addCallbacks(done, failed)
        return d.addCallback(lambda results: self._record_partial(
            entry, "local mailboxes", results, generation, att, True))

    def _record_partial(self, entry: QueueEntry, dest: str, results: list[DeliveryResult],
                        generation: int, att: _Attempt, kept: bool) -> defer.Deferred:
        """Write ``dest``'s delivered and permanently failed recipients
        now, while other destinations of ``entry`` still run: a stop that
        gives those up, or a crash, must not leave a delivered recipient
        pending (it would get the message again at the next start).

        Only the recipients' states change here; the entry's attempt count,
        next attempt and notices are the final record's (``_process``),
        which skips what is recorded already.  The last destination to
        finish writes nothing here: the final record follows at once.
        Fires with ``results`` whatever happens: a write that fails leaves
        them to the final record.  ``kept``: ``dest`` holds one of its
        attempt ``att``'s ``kept`` counts, given back once nothing of it is
        left to record."""
        qid = entry.id
        final = [r for r in results if r.kind in ("delivered", "permanent")]
        if final and generation in self._cuts:
            # given up by a stop that still waits for the sessions it cut
            # (this one's among them): what it had settled for good is
            # written before that stop is over, whatever the attempt's
            # other deliveries still do (``_record_cut``)
            self._cuts[generation].append(self._record_cut(qid, final))
            return defer.succeed(results)
        if (not final or not att.live or att.open <= 1
                or generation != self._generation or self._is_dropped(qid)):
            return defer.succeed(results)
        lines: list[dict] = []
        change = self._states_change(final, self.clock.seconds(), lines)

        def live() -> bool:
            return generation == self._generation and not self._is_dropped(qid)

        self._keep(att)  # a stop waits for the write

        def written(_: Any) -> None:
            for fields in lines:
                log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)
            if kept and len(final) == len(results):
                self._unkeep(att)  # all of it recorded: no longer waited for

        def failed(f: Failure) -> None:
            log_failure(log, f, "{queue_id}: the results for {destination} cannot be "
                        "recorded yet; recorded with the others", queue_id=qid,
                        destination=dest)

        d = self._write(qid, change, live)
        d.addCallbacks(written, failed)

        def done(_: Any) -> list[DeliveryResult]:
            self._unkeep(att)
            return results

        return d.addCallback(done)

    def _transaction_settled(self, entry: QueueEntry, dest: str, generation: int
                             ) -> Callable[[list[DeliveryResult]], defer.Deferred]:
        """The ``settled`` of a delivery of ``entry`` to ``dest``
        (``IDeliveryAgent.deliver``): the delivered and permanently failed
        recipients of a transaction that another follows, on the same
        connection or a new one, written to the record before that one
        begins (the agent waits for the Deferred).  A crash during a later transaction
        must not leave them pending: the next start would send them the
        message again.  A session of one transaction makes no such call:
        its results go with the delivery's own write (``_record_partial``,
        or the final record).  As there, only the recipients' states
        change; the Deferred fires whether or not the write succeeded (one
        that failed leaves them to the delivery's end, as before).  A stop
        whose cut comes while such a write is under way is over once it
        is (``_settling_writes``): between two connections of a delivery
        no session is left for the cut to wait for."""
        qid = entry.id

        def live() -> bool:
            return generation == self._generation and not self._is_dropped(qid)

        def settled(results: list[DeliveryResult]) -> defer.Deferred:
            final = [r for r in results if r.kind in ("delivered", "permanent")]
            if not final or not live():
                # given up by a stop: what the cut session settled is its
                # write (``_record_cut``)
                return defer.succeed(None)
            lines: list[dict] = []

            def written(_: Any) -> None:
                for fields in lines:
                    log.info("{queue_id} to {recipient}: {who}{reply}{then}", **fields)

            def failed(f: Failure) -> None:
                if late and f.check(defer.CancelledError):
                    return  # not made after the stop's cut (its lines say what is left)
                log_failure(log, f, "{queue_id}: the results of a transaction with "
                            "{destination} cannot be recorded yet; recorded when its "
                            "delivery ends", queue_id=qid, destination=dest)

            # taken by a stop's cut, it is made all the same: that stop waits
            # for it, and the delivery it settled records nothing more.  But
            # not once that wait is over (``late``): one whose turn on a
            # thread comes after is not made, the stop maybe over, the queue
            # another hub's (one begun still finishes)
            taken = [False]
            late: list[bool] = []
            states = self._states_change(final, self.clock.seconds(), lines)

            def change(e: QueueEntry) -> QueueEntry:
                if late:
                    raise defer.CancelledError()
                return states(e)

            d = self._write(qid, change, lambda: not late and (taken[0] or live()))
            mine = (d, taken, late)
            self._settling.append(mine)

            def over(result: Any) -> Any:
                if mine in self._settling:
                    self._settling.remove(mine)
                return result

            d.addBoth(over)
            return d.addCallbacks(written, failed)

        return settled

    def _settling_writes(self) -> list[defer.Deferred]:
        """A stop's cut takes the writes of ``_transaction_settled`` under
        way (or waiting for the entry's earlier writes): each is made, past
        the generation given up, and the cut waits for it (``Stopping``),
        as for its cut sessions' (``_record_cut``).  A Deferred for the end
        of each; cancelled (the cut's wait over), a write not begun by then
        is not made."""
        ends = []
        for d, taken, late in self._settling:
            taken[0] = True
            # the cut's wait for it over (cancelled): not begun by then, it
            # is not made (``_transaction_settled``)
            end: defer.Deferred = defer.Deferred(lambda _, late=late: late.append(True))

            def over(result: Any, end: defer.Deferred = end) -> Any:
                if not end.called:
                    end.callback(None)
                return result

            d.addBoth(over)
            ends.append(end)
        return ends

    # --- recording ---------------------------------------------------------------------
    # (the record changes themselves are ``recording.py``'s pure functions)

    def _states_change(self, final: list[DeliveryResult], now: float,
                       lines: list[dict]) -> Callable[[QueueEntry], QueueEntry]:
        """``recording.states_change`` with this runner's ``[relay]`` settings."""
        return recording.states_change(final, now, lines, self.relay)

    def _record(self, e: QueueEntry, results: list[DeliveryResult], now: float,
                lines: list[dict] | None = None, released: bool = False) -> QueueEntry:
        """``recording.record_results`` with this runner's ``[relay]`` settings."""
        return recording.record_results(e, results, now, self.relay, lines, released)
