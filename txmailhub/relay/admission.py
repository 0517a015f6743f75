"""Admission: which due queue entries the runner takes now, and how many.

The queue runner (``runner.py``) keeps the due times and handles each
entry it takes; deciding which ones it takes at a look (``kick``) is a
rule of its own, kept here: entries in order of their due time, no more
than ``ENTRIES_PER_SLOT`` per delivery slot in all, and for each remote
destination no more than it can use at once (``max_per_destination``,
or one while its MX lookup is under way, or while none of its hosts
answers: ``failing.py``), so that entries that could
only wait do not hold the room other destinations' mail needs.  At a
failing destination, an entry taken for its other destinations' room
(``_Running.beyond``) does not count against that destination's one: an
entry for it alone waits for one turn, not for every entry taken for
other domains too (``failing.py``'s fairness).

``Admission`` is a part of ``QueueRunner`` (its base class) and works on
the runner's state (its due times, the entries under way and their
open destinations); nothing here delivers or writes a record.
"""

from __future__ import annotations

import bisect
import heapq
from itertools import repeat
from operator import itemgetter
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.relay.failing import FailingDestinations
from txmailhub.relay.running import _Running

__all__ = ["ENTRIES_PER_SLOT", "Admission", "DueTimes"]

_NONE: frozenset[str] = frozenset()

# the runner's namespace: a filter on it (an operator's, a test's) sees
# the runner's lines whichever of its parts logs them
log = Logger(namespace="txmailhub.relay.runner")

# entries handled at once per delivery slot ([relay] max_concurrent_deliveries):
# the ones beyond the slots wait for one, their records read.  Each whose
# delivery has begun holds its attempt marker open (queue.py; one that
# only waits for a slot does not, but one whose other destination waits
# keeps it): ``twistd mailhub``'s open-files warning counts them all
# (``process_limits.fd_limit_warning``)
ENTRIES_PER_SLOT = 2


class DueTimes(dict[str, Any]):
    """The runner's due times (queue id -> next attempt), or its entries'
    destinations, counting their changes (``version``): a look at them
    (``Admission._pass``) sorts and groups them again only once one
    changed, not at each of its looks -- every second and at many events,
    over a backlog of perhaps many thousands."""

    version = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:  # type: ignore[override]
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> tuple[str, Any]:
        self.version += 1
        return super().popitem()

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any) -> Any:  # type: ignore[override]
        self.version += 1
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> DueTimes:  # type: ignore[override]
        self.version += 1
        return super().__ior__(other)


class Admission:
    """Takes the due entries there is room for (``kick``); a base class
    of ``QueueRunner``, whose state it works on and whose ``_process``,
    ``_crashed`` and ``_finished`` handle each entry taken."""

    # of the runner (``QueueRunner.__init__`` says what each is)
    running: bool
    agent: Any
    clock: Any
    relay: Any
    due: dict[str, float]
    _entries: dict[str, _Running]
    _kicking: bool
    _kick_again: bool
    _wait: dict[str, float]
    _destinations: dict[str, tuple[frozenset[str], bool]]
    _unrecorded: dict[str, Any]
    _watching: set[str]
    _failing: FailingDestinations

    def kick(self) -> None:
        """Start every due entry there is room for.

        Never raises: it is called where something else ends (a
        delivery, an entry's handling, a lookup), and an error out of a
        look (the agent failing when asked about a destination) must not
        become that one's -- a delivery made taken for a failed one, sent
        again.  It is logged, and the runner's next look (a second
        later) tries again."""
        if not self.running:
            return
        if self._kicking:
            # from within a pass (an attempt that ended at once, a lookup's
            # end): the pass counts what it has taken, and looks again after
            self._kick_again = True
            return
        self._kicking = True
        try:
            self._kick_again = True
            while self._kick_again and self.running:
                self._kick_again = False
                self._pass()
        except Exception:
            log.failure("queue runner: a look at the due entries failed")
        finally:
            self._kicking = False

    def _pass(self) -> None:
        """``kick``'s one look at the due entries.

        Run every second and at many events, with a backlog perhaps of
        many thousands of entries (a destination down for a day) of which
        it can take few: the order of the due times, and the entries
        grouped by their destinations, are kept from one look to the next
        while none of them changed (``_in_due_order``), and the entries of
        a group whose destinations are all found as busy as they can be
        are passed over at once, not one by one (the ones whose try only
        enters their results, ``_unrecorded``, still go)."""
        now = self.clock.seconds()
        inf = float("inf")
        due = self.due
        self._clock_set_back(now)
        room = ENTRIES_PER_SLOT * self.relay.max_concurrent_deliveries - len(self._entries)
        if room <= 0:
            return
        # destination -> entries taken with it open; at a failing one, only
        # those taken within its room: an entry taken for its other
        # destinations' room waits for the turn there behind them, and an
        # entry for it alone must not wait for every one of those (a
        # mailing list's), only for the one within its room (``failing.py``'s
        # fairness)
        failing = self._failing
        busy: dict[str, int] = {}
        for running in self._entries.values():
            beyond = running.beyond
            for dest in running.open_dests or ():
                if beyond and dest in beyond and dest in failing:
                    continue
                busy[dest] = busy.get(dest, 0) + 1
        # destinations found as busy as they can be: they stay so for the
        # rest of this pass (a queue of many entries for one of them is
        # passed over without asking about each)
        full: set[str] = set()

        def no_room(dest: str) -> bool:
            if dest in full:
                return True
            if busy.get(dest, 0) < self._room_for(dest):
                return False
            full.add(dest)
            return True

        entries = self._entries
        unrecorded = self._unrecorded
        dests_get = self._destinations.get
        due_get = due.get
        nowhere: tuple[frozenset[str], bool] = (frozenset(), True)
        order, groups, where_version = self._in_due_order()
        # the next entry of each group, earliest first: its place in
        # ``order`` (-1 as the group: one entry of its own)
        heap = [(idx[0], g) for g, (_dests, _local, idx) in enumerate(groups)]
        heapq.heapify(heap)
        ahead = [1] * len(groups)  # each group's next entry in its list
        while heap:
            i, g = heapq.heappop(heap)
            when, qid = order[i]
            if room <= 0 or when > now:
                break
            if g >= 0:
                gdests, glocal, idx = groups[g]
                k = ahead[g]
                if k < len(idx):
                    ahead[g] = k + 1
                    if (not glocal and gdests and gdests <= full
                            and where_version is not None
                            and getattr(self._destinations, "version", None) == where_version):
                        # its destinations all full for the rest of this
                        # pass: its other entries would each be passed
                        # over (below), but for those with only results
                        # to enter
                        for other in unrecorded:
                            if dests_get(other) != (gdests, glocal):
                                continue  # of another group
                            at = self._place(other, order, idx, k)
                            if at is not None:
                                heapq.heappush(heap, (at, -1))
                    else:
                        heapq.heappush(heap, (idx[k], g))
            if qid in entries or due_get(qid, inf) > now:
                # taken, or handled already in this pass (an attempt that
                # ended at once): its due time here is from before that
                continue
            dests, local = dests_get(qid, nowhere)
            if qid in unrecorded:
                # its try only enters the results it has (``_process``): no
                # delivery, so none of its destinations' room is needed,
                # and its results must not wait for another's session
                dests = frozenset()
            if not local and dests and all(no_room(dest) for dest in dests):
                # every destination of it as busy as it can be: it would
                # only wait, holding room another destination's entry can
                # use (its turn comes when one of them is done)
                continue
            beyond = self._beyond(dests, local, failing, no_room) if failing else _NONE
            room -= 1
            for dest in dests:
                if dest not in beyond or dest not in failing:
                    busy[dest] = busy.get(dest, 0) + 1
            self._take(qid, set(dests), beyond)
            d = defer.maybeDeferred(self._process, qid)
            d.addErrback(self._crashed, qid)
            d.addBoth(self._finished, qid)

    @staticmethod
    def _beyond(dests: frozenset[str], local: bool, failing: FailingDestinations,
                no_room: Any) -> frozenset[str]:
        """The failing destinations of an entry being taken that it is
        taken beyond the room of: all of them when it goes for another
        destination (one not failing with room, or local mailboxes),
        whether or not they have room; else those with none.  Its delivery
        there waits for the turn behind the entries taken within the room,
        and does not count against it (``failing.py``'s fairness).  An
        entry taken for failing destinations' room alone is counted at
        each that had room: not counted at any, every entry for two of
        them was taken, each only to wait for the turn.  Asked only of an
        entry taken, while a destination is failing."""
        if not any(dest in failing for dest in dests):
            return _NONE
        roomy = [dest for dest in dests if not no_room(dest)]
        other = local or any(dest not in failing for dest in roomy)
        return frozenset(dest for dest in dests if dest in failing
                         and (other or dest not in roomy))

    def _place(self, qid: str, order: list[tuple[float, str]], idx: list[int],
               k: int) -> int | None:
        """``qid``'s place in ``order`` if it is among the places
        ``idx[k:]`` of a group (found by its due time; one changed since
        ``order`` was made, by a look), else None."""
        when = self.due.get(qid)
        if when is not None:
            j = bisect.bisect_left(idx, when, lo=k, key=lambda at: order[at][0])
            while j < len(idx) and order[idx[j]][0] == when:
                if order[idx[j]][1] == qid:
                    return idx[j]
                j += 1
        for at in idx[k:]:
            if order[at][1] == qid:
                return at
        return None

    _checked: tuple[int, float] | None = None

    def _clock_set_back(self, now: float) -> None:
        """A clock set back while the hub runs: no wait longer than its
        step (``_longest_wait``); inf is an entry being handled.  Each due
        time is looked at only when one changed (or its wait, which
        changes with it) since the last look, or the clock went back:
        else each is still within ``now`` and its wait."""
        due = self.due
        version = getattr(due, "version", None)
        checked = self._checked
        if (version is not None and checked is not None and checked[0] == version
                and now >= checked[1]):
            return
        inf = float("inf")
        wait_get = self._wait.get
        for qid, when in due.items():
            wait = wait_get(qid)
            if wait is not None and now + wait < when < inf:
                due[qid] = now + wait
        if version is not None:
            self._checked = (getattr(due, "version", version), now)

    _order: tuple[int, Any] | None = None

    def _in_due_order(self) -> tuple[list[tuple[float, str]],
                                     list[tuple[frozenset[str], bool, list[int]]],
                                     int | None]:
        """The due entries as ``(due time, queue id)``, earliest first (ties
        in the order they became due, as before); their places in that
        list grouped by their destinations (``(destinations, local,
        places)``); and the version of the destinations the groups are of
        (``_pass`` passes a group over only while they have not changed
        since).  Made again only once a due time changed since the last
        look (a destination's entry changes with its due time: ``_index``).
        Lists of their own: the look changes the due times as it takes
        entries."""
        due = self.due
        version = getattr(due, "version", None)
        if version is not None and self._order is not None and self._order[0] == version:
            return self._order[1]  # type: ignore[no-any-return]
        order = sorted([(when, qid) for qid, when in due.items()], key=itemgetter(0))
        nowhere: tuple[frozenset[str], bool] = (frozenset(), True)
        places: dict[tuple[frozenset[str], bool], list[int]] = {}
        for i, key in enumerate(map(self._destinations.get, map(itemgetter(1), order),
                                    repeat(nowhere))):
            at = places.get(key)
            if at is None:
                at = places[key] = []
            at.append(i)
        groups = [(dests, local, at) for (dests, local), at in places.items()]
        made = (order, groups, getattr(self._destinations, "version", None))
        if version is not None:
            self._order = (version, made)
        return made

    def _room_for(self, dest: str) -> int:
        """How many entries for ``dest`` can be under way at once: one
        while its MX lookup is under way (the others would wait for that
        lookup's answer, in the shared lookup or for its slot; a domain
        whose name servers never answer made them wait a minute, holding
        the room other domains' mail needed), else
        ``max_per_destination``.  One too while none of its hosts
        answers (``failing.py``): the others would each hold a slot for
        a connect timeout.  Asked again for each entry: the one
        taken just before may have begun that lookup."""
        if dest in self._watching or dest in self._failing:
            return 1
        try:
            over = self._lookup_in_flight(dest)
        except Exception:
            # the agent failing when asked (a bug, perhaps for this domain
            # alone, at every look): the look goes on, or every entry due
            # after this one waited for ever.  Its entry is taken, and its
            # attempt meets that error where an entry's errors are handled
            # (logged, retried a minute later)
            return self.relay.max_per_destination
        if over is None:
            return self.relay.max_per_destination
        self._watching.add(dest)
        # its end, whatever it comes as: an error must not leave ``dest``
        # watched for ever (one entry at a time to it, each at a tick)
        over.addBoth(self._lookup_over, dest)
        return 1

    def _lookup_in_flight(self, dest: str) -> defer.Deferred | None:
        look = getattr(self.agent, "lookup_in_flight", None)  # a test's fake may have none
        return None if look is None else look(dest)

    def _lookup_over(self, _: Any, dest: str) -> None:
        """A lookup ``kick`` held entries back for is over: they go now
        (the answer is cached, or its failure remembered)."""
        self._watching.discard(dest)
        if self.running:
            self.kick()

