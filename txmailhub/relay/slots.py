"""Slots: a remote delivery's wait for its destination's and the hub's slots.

Each remote destination of an entry is delivered to within two limits,
``[relay] max_per_destination`` (a semaphore per destination, dropped
when idle) and ``max_concurrent_deliveries`` (one for the hub) -- one at a time to a
destination none of whose hosts answered (``failing.py``).  Waiting
for them, giving them back as soon as the session is over (before its
results are written), and not holding them while another delivery's MX
lookup of the same destination is under way, are kept here, apart from
the runner's scheduling (``runner.py``) and admission (``admission.py``).

``Slots`` is a part of ``QueueRunner`` (its base class) and works on the
runner's state; the results are recorded by the runner's
``_record_partial``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.address import Address
from txmailhub.logsafe import log_failure
from txmailhub.relay.attempt import DeliveryResult
from txmailhub.relay.failing import FailingDestinations
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.record import QueueEntry
from txmailhub.relay.running import _Attempt, _Running

__all__ = ["Slots"]

log = Logger()


def _takes_settled(deliver: Callable[..., Any]) -> bool:
    """Whether an agent's ``deliver`` takes ``settled``, the fourth
    argument (``IDeliveryAgent``): one written before it was there takes
    three, and gets three -- its sessions' transactions are recorded as
    the delivery ends, as they were then -- rather than a TypeError at
    each delivery.  One whose signature cannot be read is given it."""
    try:
        inspect.signature(deliver).bind(None, None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): assume the interface's
        return True
    return True


class _LookupUnderWay:
    """What a delivery given its slots returns when an MX lookup of its
    destination is under way: the slots go back, and it waits for ``over``
    (the lookup's end) without them."""

    def __init__(self, over: defer.Deferred) -> None:
        self.over = over


class _TurnToWaitFor:
    """What a delivery given its slots returns when its destination was
    marked failing while it waited for them, and another delivery to it
    has the turn (``failing.py``): the slots go back, and it waits for its
    own turn (``turn``, which fires with it) without them."""

    def __init__(self, turn: defer.Deferred) -> None:
        self.turn = turn


class Slots:
    """A remote delivery within its slots (``_limited``), and whether an
    entry only waits for them (``_waits_for_a_slot``); a base class of
    ``QueueRunner``, whose state it works on, and whose ``_mark``,
    ``_keep``, ``_record_partial``, ``_transaction_settled``,
    ``_lookup_in_flight`` and ``kick`` it calls.  What it counts of an
    attempt (its slot waits, what a stop must wait for) is that
    attempt's (``running._Attempt``)."""

    # of the runner (``QueueRunner.__init__`` says what each is)
    running: bool
    agent: Any
    relay: Any
    _generation: int
    _entries: dict[str, _Running]
    _semaphores: dict[str, defer.DeferredSemaphore]
    _global: defer.DeferredSemaphore
    _failing: FailingDestinations
    queue: OutboundQueue

    def _waits_for_a_slot(self, qid: str) -> bool:
        """Whether every destination of ``qid`` not yet done waits for a
        slot: nothing of it is under way (no local delivery either)."""
        running = self._entries.get(qid)
        att = None if running is None else running.attempt
        return att is not None and att.slot_waits > 0 and att.slot_waits == att.open

    def _withdrawn(self, qid: str) -> bool:
        """Whether ``qid`` was held or deleted since it was taken: a wait
        for a slot, or for a failing destination's turn, can be long, and
        the admin's hold or delete meanwhile must stop the delivery, as
        it does one not yet taken.  Read only once the runner has seen a
        change to the queue while the entry ran (``_Running.changed``);
        a record that cannot be read is no hold (its end reads it again)."""
        running = self._entries.get(qid)
        if running is None or not running.changed:
            return False
        try:
            entry = self.queue.read(qid)
        except Exception:
            log_failure(log, Failure(), "cannot read queue entry {queue_id}", queue_id=qid)
            return False
        return entry is None or entry.held

    def _limited(self, dest: str, entry: QueueEntry, rcpts: list[Address],
                 generation: int, att: _Attempt) -> defer.Deferred:
        # Another delivery's MX lookup of ``dest`` is under way: its answer
        # is waited for without a slot (one holding a slot would only join
        # that lookup: a minute for a domain whose name servers never
        # answer, while other domains' mail waits for the slot).  Then the
        # answer is cached, or its failure remembered: this delivery's own
        # lookup is quick.  Asked before the slots are waited for, and
        # again once they are had (a lookup may have begun meanwhile: the
        # entry was taken while the slots were busy); waited for once at
        # most, so that lookups whose outcome is not kept (a permanent
        # failure) are not made one after the other, one per delivery.
        waited = [False]

        def lookup_under_way() -> defer.Deferred | None:
            if waited[0]:
                return None
            over = self._lookup_in_flight(dest)
            if over is not None:
                waited[0] = True
            return over

        def had() -> None:
            att.slot_waits = max(att.slot_waits - 1, 0)  # a slot is had

        def deliver(held: list[Any]) -> Any:
            if generation != self._generation or self._is_dropped(entry.id):
                had()
                return defer.succeed([])  # waited for a slot past a stop
            if self._withdrawn(entry.id):
                # held or deleted (``mailhub queue``) while it waited for
                # its slots or its turn: not made now (the slots and the
                # turn go to the next one); the entry's end reads it again
                had()
                att.withheld = True
                return defer.succeed([])
            try:
                over = lookup_under_way()
            except BaseException:
                had()  # an error out of the agent: this delivery's, waited for no more
                raise
            if over is not None:
                return _LookupUnderWay(over)  # the slots go back: ``again``
            if held[0] is None and dest in self._failing:
                # marked failing while this one waited for its slots (taken
                # before that): it needs the turn too, or it would be a
                # second delivery to it at once
                turn = self._failing.turn(dest, ahead())
                if not turn.called:
                    return _TurnToWaitFor(turn)  # the slots go back: ``again``
                held[0] = turn.result  # (it had none: this one's now)
            had()
            self._mark(entry.id, att)
            # the slots are held for the session only: what it gave is
            # recorded once they are given back (``delivered``)
            # each transaction that another follows in the session is
            # recorded before that one (``_transaction_settled``)
            if not _takes_settled(self.agent.deliver):
                return self.agent.deliver(entry, dest, rcpts).addCallback(answered)
            settled = self._transaction_settled(entry, dest, generation)
            return self.agent.deliver(entry, dest, rcpts, settled).addCallback(answered)

        kept = [False]

        def answered(results: list[DeliveryResult]) -> list[DeliveryResult]:
            # whether a host answered, learnt before the turn is handed on;
            # not from a delivery a stop gave up that ends after a start
            # (which forgot the failing destinations, to try each afresh)
            if generation == self._generation:
                self._failing.learn(dest, results, self.relay.max_per_destination)
            if any(r.remote_mta is not None or r.kind == "delivered" for r in results):
                # a remote host answered: to be recorded, whatever the other
                # destinations of this entry still do.  Counted before the
                # slots go back: one given to an entry a stop gave up ends
                # at once, and the stop looks again then (``_look_again``)
                kept[0] = True
                self._keep(att)
            return results

        def delivered(results: list[DeliveryResult]) -> Any:
            return self._record_partial(entry, dest, results, generation, att, kept[0])

        def run(held: list[Any]) -> defer.Deferred:
            return self._global.run(deliver, held)

        def take(_: Any = None) -> defer.Deferred:
            # a destination none of whose hosts answered: one delivery at
            # a time, the others waiting for their turn without a slot
            # (``failing.py``); asked at each take, as it is now
            return self._failing.turn(dest, ahead()).addCallback(slots)

        def ahead() -> bool:
            # taken within ``dest``'s room, not for another destination's:
            # before those at its turn (``failing.py``'s fairness)
            running = self._entries.get(entry.id)
            return running is None or dest not in running.beyond

        def slots(turn: Any) -> defer.Deferred:
            # the destination's semaphore as it is now: one made before a
            # wait may have been dropped since (``tidy``)
            sem = self._semaphores.get(dest)
            if sem is None:
                sem = self._semaphores[dest] = defer.DeferredSemaphore(
                    self.relay.max_per_destination)
            held = [turn]  # the turn this delivery holds (``deliver`` may take one)
            d = sem.run(run, held).addBoth(tidy, sem)
            return d.addBoth(hand_on, held).addCallback(again)

        def hand_on(result: Any, held: list[Any]) -> Any:
            self._failing.turn_over(dest, held[0])
            return result

        def tidy(result: Any, sem: defer.DeferredSemaphore) -> Any:
            if (sem.tokens == sem.limit and not sem.waiting
                    and self._semaphores.get(dest) is sem):
                self._semaphores.pop(dest, None)
            return result

        def again(result: Any) -> Any:
            if isinstance(result, _LookupUnderWay):
                return result.over.addBoth(take)  # ended, however
            if isinstance(result, _TurnToWaitFor):
                return result.turn.addCallback(slots)  # with the turn it fires with
            return result

        def done(result: Any) -> Any:
            running = self._entries.get(entry.id)
            dests = None if running is None else running.open_dests
            if dests is not None and dest in dests:
                dests.discard(dest)
                if att.live and self.running:
                    # ``dest``'s entries passed over for it go now, not at
                    # the next tick: the entry may run on (another
                    # destination, a local delivery), and its last one's
                    # end waits for its final record (a slow disk: a
                    # second), which ``_finished`` looks after.  A look is
                    # cheap even over a large backlog (``admission.py``)
                    self.kick()
            return result

        # asked before the wait is counted: an error out of the agent here
        # fails this delivery (``_attempt``) and must leave no wait counted
        over = lookup_under_way()
        att.slot_waits += 1
        d = take() if over is None else over.addBoth(take)  # ended, however
        # ``dest`` is done, its room and slots another entry's, while its
        # results are written (a slow disk held them for the write)
        return d.addBoth(done).addCallback(delivered)
