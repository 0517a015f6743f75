"""Failing destinations: one delivery at a time to a destination none of
whose hosts answers, until one of its deliveries connects.

A destination whose hosts drop every connection (no reply to the SYN)
holds a delivery slot for each one's whole connect timeout.  The agent
remembers it for a while (``attempt.py``'s unreachable memory) and defers
the deliveries meanwhile at once; but the first attempts, and every
retry once that memory is over, started ``[relay] max_per_destination``
of its entries at once, each waiting out the timeout in a slot -- with
``max_per_destination`` at ``max_concurrent_deliveries`` or above, every
slot of the hub, and every other domain's mail waited.  So, as Postfix's
destination concurrency feedback does: once a delivery to a destination
ends with no host reached (``DeliveryResult.unreachable``: connections
refused or timed out, not a reply), the runner gives it one delivery at
a time (``Admission._room_for``, and ``turn`` for an entry taken for its
other destinations), until a delivery to it connects (a host answered,
whatever it said).  Its other entries keep their due times and their
place, and hold no slot while they wait; nothing of what is recorded,
nor any retry time, changes.

Fairness.  An entry for such a destination and for others (a mailing
list's message with a member there) is taken for its other destinations'
room, and its delivery there waits for the turn; one for that destination
alone waits unslotted, untaken.  Counted against the destination's one
delivery, each of those taken for other domains held the one for it
alone back: with list mail due at each turn, it waited as long as that
went on (up to ``ENTRIES_PER_SLOT * max_concurrent_deliveries`` of them
queued ahead of it at once, a connect timeout each).  So an entry taken
for other destinations' room (``_Running.beyond``) is not counted against
a failing destination's (``Admission._pass``), and waits for the turn
behind the ones taken within it (``turn(..., ahead=True)``): of those
there is one at a time once the destination is failing (its room is one),
so the turn alternates -- an entry for it alone has the next turn once it
is taken (at the first look after it is due and the one taken within the
room is done: one turn at most, two when it was due while that one
waited), and between two turns of the entries taken beyond the room
comes one other at most.  The entries taken before the destination was
marked count as within its room (``beyond`` is worked out only while a
destination is failing): one for it alone waits behind those once, up
to ``max_per_destination`` turns.  Nothing else changes: no delivery is
made twice or left out, and no due time moves.

This module owns only that knowledge (which destinations are failing,
and whose turn it is at each); the runner asks it and tells it what each
delivery gave.  It is kept in memory only: a start of the runner forgets
it (as the agent's memory of unreachable destinations), and so does a
restart of the hub.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.relay.attempt import DeliveryResult

__all__ = ["FAILING_KEPT", "FailingDestinations", "reached"]

# the runner's namespace: a filter on it sees these lines with the others
log = Logger(namespace="txmailhub.relay.runner")

# destinations marked at most (they are recipients' domains, chosen by
# strangers): the oldest mark is forgotten past it, that destination back
# to its full concurrency -- as before this feedback, no worse
FAILING_KEPT = 10000


def reached(results: Sequence[DeliveryResult]) -> bool | None:
    """What a delivery's ``results`` say of its destination: ``True``
    when a host answered (a message delivered, a reply from the server, a
    refusal too, or a session with a host before the last one's connection
    failed: ``unreachable`` false), ``False`` when no host could be
    connected to (every result ``unreachable``), ``None`` when they say
    neither (a DNS failure, a local error, a delivery a stop gave up, no
    result; an agent that does not tell)."""
    if any(r.kind == "delivered" or r.remote_mta is not None or r.unreachable is False
           for r in results):
        return True
    if results and all(r.unreachable is True for r in results):
        return False
    return None


class _Turns:
    """The turns at one failing destination: the deliveries waiting for
    theirs (``waiting``), one after the other, the first ``ahead`` of
    them those of entries taken within the destination's room (before
    the others: the fairness above); the object itself is the turn the
    one under way holds."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred] = []
        self.ahead = 0


class FailingDestinations:
    """The destinations given one delivery at a time (``in``), and the
    turns of their deliveries (``turn``, ``turn_over``)."""

    def __init__(self, limit: int = FAILING_KEPT) -> None:
        self.limit = limit
        self._failing: dict[str, None] = {}  # oldest first
        # destination -> its turns: a key present, one delivery has its
        # turn now, the others wait for theirs
        self._turns: dict[str, _Turns] = {}
        self._handing: list[tuple[str, _Turns | None]] = []  # turns over, to hand on
        self._handing_on = False

    def __contains__(self, destination: object) -> bool:
        return destination in self._failing

    def __len__(self) -> int:
        return len(self._failing)

    def learn(self, destination: str, results: Sequence[DeliveryResult],
              max_per_destination: int) -> None:
        """A delivery to ``destination`` gave ``results``: it is marked
        failing when no host could be connected to, and recovers when one
        answered.  Logged once each way, not once per entry."""
        seen = reached(results)
        if seen is False and destination not in self._failing:
            while len(self._failing) >= self.limit > 0:
                del self._failing[next(iter(self._failing))]
            self._failing[destination] = None
            log.warn("{destination}: no host answered (connections refused or timed out): "
                     "one delivery at a time to it until one connects",
                     destination=destination)
        elif seen is True and destination in self._failing:
            del self._failing[destination]
            log.info("{destination}: a host answered again: up to {limit} deliveries at a "
                     "time to it", destination=destination, limit=max_per_destination)
            # the waiting ones go; the one under way keeps its turn: marked
            # again before it is over, the destination has that one turn,
            # not a second one for a delivery woken now
            self._wake_waiting(destination)

    def clear(self) -> None:
        """Forget every destination (a start of the runner tries each
        afresh); the deliveries waiting for a turn go."""
        self._failing.clear()
        for destination in list(self._turns):
            self._wake_all(destination)

    def turn(self, destination: str, ahead: bool = False) -> defer.Deferred:
        """Fires when a delivery to ``destination`` may wait for its slots:
        at once unless it is failing and another delivery to it has its
        turn.  Fires with the turn it holds (``None``: none, as for a
        destination not failing), to be handed on with ``turn_over``
        once that delivery no longer needs it.  ``ahead``: the delivery
        is of an entry taken within the destination's room, and waits
        before those taken beyond it (after the others taken within)."""
        if destination not in self._failing:
            # (a turn still held from before a recovery is handed on, or
            # dropped, when that delivery is over)
            return defer.succeed(None)
        turns = self._turns.get(destination)
        if turns is None:
            turns = self._turns[destination] = _Turns()
            return defer.succeed(turns)
        d: defer.Deferred = defer.Deferred()
        if ahead:
            turns.waiting.insert(turns.ahead, d)
            turns.ahead += 1
        else:
            turns.waiting.append(d)
        return d

    def turn_over(self, destination: str, turns: _Turns | None) -> None:
        """A delivery's turn at ``destination`` (``turns``, what ``turn``
        gave it) is over: the next waiting one's comes, or every one's if
        it is failing no longer.  A turn from before ``clear`` hands
        nothing on: its successors have gone.  One held across a recovery
        is still the destination's (those waiting then went at once): marked
        again meanwhile, the deliveries waiting now had to wait for it."""
        self._handing.append((destination, turns))
        if self._handing_on:
            # from within a turn handed on (a delivery answered at once, a
            # remembered DNS failure): handed on by the loop below, not in
            # a call within this one -- a thousand waiting deliveries
            # would reach Python's recursion limit
            return
        self._handing_on = True
        try:
            while self._handing:
                self._hand_on(*self._handing.pop(0))
        finally:
            self._handing_on = False

    def _hand_on(self, destination: str, turns: _Turns | None) -> None:
        if turns is None or self._turns.get(destination) is not turns:
            return
        if not turns.waiting:
            del self._turns[destination]
        elif destination in self._failing:
            turns.ahead = max(turns.ahead - 1, 0)
            turns.waiting.pop(0).callback(turns)
        else:
            self._wake_all(destination)

    def _wake_all(self, destination: str) -> None:
        turns = self._turns.pop(destination, None)
        for d in [] if turns is None else turns.waiting:
            d.callback(None)  # no turn to hand on: one at a time no more

    def _wake_waiting(self, destination: str) -> None:
        """The deliveries waiting for a turn at ``destination`` go (it is
        failing no more); the turn of the one under way stays its own."""
        turns = self._turns.get(destination)
        if turns is None:
            return
        waiting, turns.waiting = turns.waiting, []
        turns.ahead = 0
        for d in waiting:
            d.callback(None)
