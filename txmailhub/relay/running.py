"""Running entries: what the queue runner keeps of each entry it has taken.

An entry taken by the runner (``admission.py``'s ``kick``) is under way
until its handling is over (``runner.py``'s ``_finished``): meanwhile the
runner knows which of its destinations are not done yet, whether a stop
gave it up, whether ``mailhub queue`` changed it, and, while its
deliveries run, what a stop must wait for.  That used to be a dozen tables
keyed by queue id, each emptied on its own; a count left in one of them
and not in the others held later stops and deliveries back.  Here it is
one object per entry (``_Running``), made when the entry is taken and
dropped in one place when it is done, and one per attempt (``_Attempt``),
made when its deliveries start and ended in one place when they are all
over: a delivery's callbacks count on the attempt they belong to, so that
nothing of one can be counted in another.

``RunningEntries`` is a part of ``QueueRunner`` (its base class): it
keeps those objects and gives the old tables' reads (``active``,
``_attempting``, ``_kept``, ...) as views of them, for the runner's other
parts and for the tests that look at them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import KeysView

from twisted.internet import defer

__all__ = ["RunningEntries"]


@dataclasses.dataclass(eq=False)
class _Attempt:
    """One attempt's deliveries, from their start to the end of the last.

    ``open``: how many of its deliveries (one per destination, one for
    the local mailboxes) are not done yet; ``slot_waits``: how many of
    those wait for a slot; ``kept``: how many things it has to record that
    a stop must wait for (a local delivery begun, a remote host's answer
    not yet recorded, a destination's results being written); ``mark``:
    its attempt marker, once its first delivery has begun (``None`` again
    once a stop gave the attempt up: ``unmarked``, and none is made after);
    ``live``: false once it is over (a late callback counts nothing then);
    ``withheld``: a delivery of it was not made, its entry held or deleted
    while it waited for a slot or a turn (``Slots._withdrawn``);
    ``first``: its entry was queued by this process and never handled
    before, so no earlier attempt can have made a local copy."""

    open: int = 0
    slot_waits: int = 0
    kept: int = 0
    mark: defer.Deferred | None = None
    live: bool = True
    withheld: bool = False
    unmarked: bool = False
    first: bool = False


@dataclasses.dataclass(eq=False)
class _Running:
    """One entry taken by the runner, until its handling is over.

    ``open_dests``: its destinations not done yet, counted by ``kick``
    against each destination's room (``None`` once that room is given
    back: no delivery this time, or a stop gave it up); ``dropped``: a
    stop gave it up at once while it waits for others; ``changed``:
    ``mailhub queue`` changed it meanwhile (read again at its end);
    ``attempt``: its deliveries under way; ``lock``: one record update at
    a time (a destination's results and the entry's final record must not
    overtake each other); ``beyond``: its destinations that had no room
    left when it was taken (it was taken for another one's): at a failing
    destination its delivery waits for the turn behind the entries taken
    within that destination's room, and is not counted against that room
    (``admission.py``, ``failing.py``)."""

    open_dests: set[str] | None
    beyond: frozenset[str] = frozenset()
    dropped: bool = False
    changed: bool = False
    attempt: _Attempt | None = None
    lock: defer.DeferredLock = dataclasses.field(default_factory=defer.DeferredLock)


class RunningEntries:
    """The entries under way, one ``_Running`` each (``_entries``)."""

    _entries: dict[str, _Running]

    def _take(self, qid: str, dests: set[str],
              beyond: frozenset[str] = frozenset()) -> _Running:
        """``qid`` is taken, its ``dests`` counted as open (those of them
        ``beyond`` their room: taken for the others')."""
        running = self._entries[qid] = _Running(open_dests=dests, beyond=beyond)
        return running

    def _drop(self, qid: str) -> _Running | None:
        """``qid``'s handling is over: all that was kept of it goes (the
        one place it does)."""
        running = self._entries.pop(qid, None)
        if running is not None and running.attempt is not None:
            running.attempt.live = False  # (its end ran first: never so)
        return running

    def _start_attempt(self, qid: str) -> _Attempt:
        """``qid``'s deliveries are being started."""
        att = self._entries[qid].attempt = _Attempt()
        return att

    def _end_attempt(self, qid: str, att: _Attempt) -> defer.Deferred | None:
        """``att``'s deliveries are all over: its counts go with it (the
        one place they do); returns its attempt marker, to be removed."""
        att.live = False
        running = self._entries.get(qid)
        if running is not None and running.attempt is att:
            running.attempt = None
        mark, att.mark = att.mark, None
        return mark

    def _is_dropped(self, qid: str) -> bool:
        running = self._entries.get(qid)
        return running is not None and running.dropped

    # --- the old tables, as views (read only) -------------------------------

    @property
    def active(self) -> KeysView[str]:
        """The queue ids of the entries under way."""
        return self._entries.keys()

    @property
    def _attempting(self) -> set[str]:
        return {q for q, r in self._entries.items() if r.attempt is not None}

    @property
    def _kept(self) -> dict[str, int]:
        return {q: r.attempt.kept for q, r in self._entries.items()
                if r.attempt is not None and r.attempt.kept > 0}

    @property
    def _open(self) -> dict[str, int]:
        return {q: r.attempt.open for q, r in self._entries.items() if r.attempt is not None}

    @property
    def _slot_waits(self) -> dict[str, int]:
        return {q: r.attempt.slot_waits for q, r in self._entries.items()
                if r.attempt is not None and r.attempt.slot_waits > 0}

    @property
    def _marks(self) -> dict[str, defer.Deferred]:
        return {q: r.attempt.mark for q, r in self._entries.items()
                if r.attempt is not None and r.attempt.mark is not None}

    @property
    def _open_dests(self) -> dict[str, set[str]]:
        return {q: r.open_dests for q, r in self._entries.items() if r.open_dests is not None}

    @property
    def _dropped(self) -> set[str]:
        return {q for q, r in self._entries.items() if r.dropped}

    @property
    def _changed_while_active(self) -> set[str]:
        return {q for q, r in self._entries.items() if r.changed}

    @property
    def _record_locks(self) -> dict[str, defer.DeferredLock]:
        return {q: r.lock for q, r in self._entries.items() if r.lock.locked or r.lock.waiting}
