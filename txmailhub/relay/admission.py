"""Admission: which due queue entries the runner takes now, and how many.

The queue runner (``runner.py``) keeps the due times and handles each
entry it takes; deciding which ones it takes at a look (``kick``) is a
rule of its own, kept here: entries in order of their due time, no more
than ``ENTRIES_PER_SLOT`` per delivery slot in all, and for each remote
destination no more than it can use at once (``max_per_destination``,
or one while its MX lookup is under way, or while none of its hosts
answers: ``failing.py``), so that entries that could
only wait do not hold the room other destinations' mail needs.

``Admission`` is a part of ``QueueRunner`` (its base class) and works on
the runner's state (its due times, the entries under way and their
open destinations); nothing here delivers or writes a record.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.relay.failing import FailingDestinations
from txmailhub.relay.running import _Running

__all__ = ["ENTRIES_PER_SLOT", "Admission", "DueTimes"]

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


class DueTimes(dict[str, float]):
    """The runner's due times (queue id -> next attempt), counting its
    changes (``version``): a look at them (``Admission._pass``) sorts them
    again only once one changed, not at each of its looks -- every second
    and at many events, over a backlog of perhaps many thousands."""

    version = 0

    def __setitem__(self, key: str, value: float) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:  # type: ignore[override]
        self.version += 1
        return super().pop(*args)

    def popitem(self) -> tuple[str, float]:
        self.version += 1
        return super().popitem()

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: float) -> float:  # type: ignore[override]
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
        it can take few: the order of the due times is kept from one look
        to the next while none of them changed (``DueTimes.version``), and
        an entry whose every destination is known to be as busy as it can
        be is passed over with one set comparison."""
        now = self.clock.seconds()
        inf = float("inf")
        due = self.due
        wait_get = self._wait.get
        for qid, when in due.items():
            # a clock set back while the hub runs: no wait longer than its
            # step (``_longest_wait``); inf is an entry being handled
            wait = wait_get(qid)
            if wait is not None and now + wait < when < inf:
                due[qid] = now + wait
        room = ENTRIES_PER_SLOT * self.relay.max_concurrent_deliveries - len(self._entries)
        if room <= 0:
            return
        busy: dict[str, int] = {}  # destination -> entries taken with it open
        for running in self._entries.values():
            for dest in running.open_dests or ():
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
        for when, qid in self._in_due_order():
            if room <= 0 or when > now:
                break
            if qid in entries or due_get(qid, inf) > now:
                # taken, or handled already in this pass (an attempt that
                # ended at once): its due time here is from before that
                continue
            dests, local = dests_get(qid, nowhere)
            if not local and dests and dests <= full and qid not in unrecorded:
                continue  # (as below, its destinations found full already)
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
            room -= 1
            for dest in dests:
                busy[dest] = busy.get(dest, 0) + 1
            self._take(qid, set(dests))
            d = defer.maybeDeferred(self._process, qid)
            d.addErrback(self._crashed, qid)
            d.addBoth(self._finished, qid)

    _order: tuple[int, list[tuple[float, str]]] | None = None

    def _in_due_order(self) -> list[tuple[float, str]]:
        """The due entries as ``(due time, queue id)``, earliest first (ties
        in the order they became due, as before); sorted again only once a due time changed
        since the last look.  A list of its own: the look changes the
        due times as it takes entries."""
        due = self.due
        version = getattr(due, "version", None)
        if version is not None and self._order is not None and self._order[0] == version:
            return self._order[1]
        order = sorted([(when, qid) for qid, when in due.items()], key=itemgetter(0))
        if version is not None:
            self._order = (version, order)
        return order

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

