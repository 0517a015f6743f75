"""Queue events: what the runner learns of its queue, and when it looks.

The queue runner (``runner.py``) handles the entries it takes; knowing
each queued entry's next attempt is a step of its own, kept here: the
queue's word that an entry was written (``_event``), the runner's look
every second at the control files ``mailhub queue`` leaves (a flush, and
a hold, release or delete: ``_tick``), reading an entry again then
(``_rescan``, ``_reindex``) and knowing when it is due, held, and where
it goes (``_index``) -- a retry time further away than its schedule's
step (a clock set back) is held to that step.

``QueueEvents`` is a part of ``QueueRunner`` (its base class) and works
on the runner's state (its due times, held entries, and the entries under
way, read again once they are done); its log lines keep the runner's
namespace, ``txmailhub.relay.runner``, as before this module was split
off.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.logsafe import log_failure
from txmailhub.relay import schedule
from txmailhub.relay.queue import CHANGED, FLUSH, OutboundQueue
from txmailhub.relay.record import QueueEntry
from txmailhub.relay.recording import ERROR_RETRY
from txmailhub.relay.running import _Running

__all__ = ["QueueEvents"]

# the runner's namespace: these lines were the runner's, and a filter on it
# (an operator's, a test's) must still see them
log = Logger(namespace="txmailhub.relay.runner")


class QueueEvents:
    """What the runner knows of each queued entry's next attempt, kept up
    to date from the queue and ``mailhub queue``'s control files; a base
    class of ``QueueRunner``, whose state it works on and whose ``kick``
    and ``_forget`` it calls."""

    # of the runner (``QueueRunner.__init__`` says what each is)
    queue: OutboundQueue
    agent: Any
    components: Any
    clock: Any
    relay: Any
    due: dict[str, float]
    _held: set[str]
    _wait: dict[str, float]
    _destinations: dict[str, tuple[frozenset[str], bool]]
    _unrecorded: dict[str, Any]
    _notified: dict[str, Any]
    _queued_here: set[str]
    _entries: dict[str, _Running]

    def _event(self, queue_id: str | None) -> None:
        if queue_id is not None:
            if not (queue_id in self.due or queue_id in self._held
                    or queue_id in self._entries or queue_id in self._unrecorded):
                # queued by this process (``_process``), and not taken yet:
                # the word comes once the record's folder is synced, and a
                # rescan or a start may have read the record and tried it
                self._queued_here.add(queue_id)
            try:
                entry = self.queue.read(queue_id)
            except Exception:
                # committed, and answered 250: a record that cannot be read
                # at once (out of file descriptors) must not leave it unknown
                # -- nothing else would take it before a restart.  Taken at
                # the retry after an error, whose handling reads it again
                # and meets the error there, if it lasts
                log_failure(log, Failure(), "cannot read the new queue entry {queue_id}; "
                            "trying it again later", queue_id=queue_id)
                if queue_id not in self.due and queue_id not in self._held:
                    self.due[queue_id] = self.clock.seconds() + ERROR_RETRY
            else:
                if entry is not None:
                    self._index(entry)
                else:  # (done already: never handled again)
                    self._queued_here.discard(queue_id)
        self.kick()

    def _tick(self) -> None:
        try:
            if self.queue.take_flag(FLUSH):
                log.info("queue flush requested")
                self._rescan()
                self._flush()
            elif self.queue.take_flag(CHANGED):
                self._rescan()
        except Exception:
            # a control file that cannot be taken (EIO, a read-only remount)
            # is one line, and must not stop the due entries being started
            log_failure(log, Failure(), "queue runner tick failed")
        self.kick()  # (never raises: it logs a failed look itself)

    def _index(self, entry: QueueEntry, quiet: bool = False) -> None:
        """Know ``entry``'s next attempt.  Only ``mailhub queue`` (another
        process) holds and releases entries: each change found is logged
        here, the hub's log being where an operator looks (``quiet``: the
        entries found at start)."""
        qid = entry.id
        if entry.held:
            if not quiet and qid not in self._held:
                log.info("queue entry {queue_id} held (mailhub queue hold)", queue_id=qid)
            self.due.pop(qid, None)
            self._held.add(qid)
        else:
            if not quiet and qid in self._held:
                log.info("queue entry {queue_id} released (mailhub queue release)", queue_id=qid)
            self._held.discard(qid)
            # a retry time written by a clock ahead of this one (set back
            # since, or another machine's) would hold the entry back by the
            # whole step of the clock, days perhaps: the rule ``mailhub
            # queue list`` shows the next attempt by (``schedule.due_by``)
            self._wait[qid] = self._longest_wait(entry)
            self._destinations[qid] = self._where(entry)
            self.due[qid] = schedule.due_by(entry.next_attempt, entry.steps,
                                            self.clock.seconds(), self.relay.retry_schedule,
                                            ERROR_RETRY)

    def _where(self, entry: QueueEntry) -> tuple[frozenset[str], bool]:
        """``entry``'s pending recipients' remote destinations, and whether
        some of them are local (as ``_attempt`` groups them).  One that
        cannot be told (the router failing) is taken as local: ``kick``
        takes the entry as it did, and its attempt meets that error where
        the entry's other errors are handled."""
        router = self.components.router
        dests = set()
        local = False
        for r in entry.pending:
            try:
                if router.is_local_domain(r.address.domain):
                    local = True
                else:
                    dests.add(self.agent.destination(r.address))
            except Exception:
                local = True
        return frozenset(dests), local

    def _longest_wait(self, entry: QueueEntry) -> float:
        """The longest ``entry`` can be meant to wait from now
        (``schedule.longest_wait``; at least the minute of a pass that
        only owed a notice), which ``kick`` holds it to as well."""
        return schedule.longest_wait(entry.steps, self.relay.retry_schedule, ERROR_RETRY)

    def _rescan(self) -> None:
        seen = set()
        for qid in self.queue.ids():
            seen.add(qid)
            if qid in self._entries:
                # what its handling writes last may predate this change (a
                # hold, or a release after the attempt was recorded): look
                # again when it is done
                self._entries[qid].changed = True
                continue
            self._reindex(qid)
        for qid in {*self.due, *self._held, *self._unrecorded, *self._notified}:
            if qid in seen:
                continue
            if qid in self._entries:
                # deleted while being handled: looked at once that is over
                # (what it writes last finds no record, or it wrote all it
                # had before the delete: ``_finished``)
                self._entries[qid].changed = True
                continue
            log.info("queue entry {queue_id} deleted (mailhub queue delete): "
                     "no delivery, no notice", queue_id=qid)
            self._forget(qid)

    def _reindex(self, qid: str, gone: str | None = None) -> None:
        """Read ``qid`` again and know its next attempt.  ``gone``: what
        the log says when its record went meanwhile (``mailhub queue
        delete`` while it was being handled, its last write before that),
        and it is forgotten (it stayed due until its next try)."""
        try:
            entry = self.queue.read(qid)
        except Exception:
            log.failure("cannot read queue entry {queue_id}", queue_id=qid)
            return
        if entry is not None:
            self._index(entry)
        elif gone is not None:
            log.info("queue entry {queue_id} deleted (mailhub queue delete): {what}",
                     queue_id=qid, what=gone)
            self._forget(qid)

    def _flush(self) -> None:
        now = self.clock.seconds()
        # an attempt now, not a deferral by a failure remembered before it
        forget = getattr(self.agent, "forget_failures", None)
        if forget is not None:
            forget()
        for qid in self.due:
            self.due[qid] = min(self.due[qid], now)
