"""Stopping: the queue runner's stop, and what it waits for or gives up.

A stop (``QueueRunner.stop``) picks no more entries and waits a little
for the attempts in flight: only for what must be finished (a session, a
local delivery, an outcome being recorded, a notice); an entry whose
deliveries only look up DNS or connect, or wait for a slot, is given up
at once, and so is one whose last answer is recorded while the stop waits
(``_look_again``).  What is left when its grace is over is given up
(``_give_up_now``): its connections are cut, it records nothing, and the
stop is over once they are closed.  Kept apart from the runner's
scheduling (``runner.py``) and admission (``admission.py``) because it is
a step of its own with its own rules: a second stop, a start within a
stop's grace, the log lines counting what is given up.

``Stopping`` is a part of ``QueueRunner`` (its base class) and works on
the runner's state (``running.py``'s objects of the entries under way);
its log lines keep the runner's namespace, ``txmailhub.relay.runner``,
as before this module was split off.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.logsafe import log_failure, plural
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.running import _Running

__all__ = ["CUT_GRACE", "LAST_WRITES_FLOOR", "SHUTDOWN_GRACE", "Stopping"]

# the runner's namespace: these lines were the runner's, and a filter on it
# (an operator's, a test's) must still see them
log = Logger(namespace="txmailhub.relay.runner")

SHUTDOWN_GRACE = 10.0  # stopService waits at most this long for attempts in flight
# then at most this long, all together, for what follows: the connections it
# cut to be closed (a transport reports an aborted connection lost a reactor
# turn later; this bounds a transport that never does), the writes of what
# they settled, the attempt markers' removals and the last writes
# (``Stopping._stop_wait``: one deadline, not one wait after another)
CUT_GRACE = 2.0
# but the writes that wait for the cut sessions' end (what they settled),
# and the last writes with the markers' removals, each begin with this long
# at least ahead of them (``Stopping._floor``): cut sessions closing late in
# that wait must not leave writes a healthy disk makes in a fraction of a
# second no time, and a start in a new process sending their messages again
# (RFC 5321 6.1 takes a duplicate over a loss, not over a short wait).  A
# stop on a hung disk is over CUT_GRACE + 2 * LAST_WRITES_FLOOR after its
# grace at most
LAST_WRITES_FLOOR = 1.0


class Stopping:
    """The stop (``stop``), and its looks at what it still waits for
    (``_look_again``, ``_one_over``); a base class of ``QueueRunner``,
    whose state it works on and whose ``_event``, ``_waits_for_a_slot``,
    ``_settling_writes``, ``_unmark`` and ``_unmarks_under_way`` it uses."""

    # of the runner (``QueueRunner.__init__`` says what each is)
    running: bool
    queue: OutboundQueue
    agent: Any
    clock: Any
    _entries: dict[str, _Running]
    _generation: int
    _give_up_timer: Any
    _loop: task.LoopingCall | None
    _idle: list[defer.Deferred]
    _cuts: dict[int, list[defer.Deferred]]
    _cut_over: dict[int, list[defer.Deferred]]
    _last_writes: Any  # () -> Deferred: ``QueueRunner._last_writes``
    _unmarking: list[list[defer.Deferred]]
    # when the stop's waits after its grace end (``_stop_wait``): set as
    # they begin (``_waits_begin``)
    _stop_by: float | None

    def stop(self, grace: float = SHUTDOWN_GRACE) -> defer.Deferred:
        """Stop picking entries; wait a little for attempts in flight.

        Only what must be finished is waited for (``_must_finish``): a
        session, a local delivery, an outcome being recorded, a notice.
        An entry whose deliveries only look up DNS or connect loses nothing
        when given up: it is given up at once, and its deliveries connect
        no more.  Whatever still runs after ``grace`` (``SHUTDOWN_GRACE``)
        is given up too: its connections are cut, it records nothing (the
        queue stays as last recorded, for the next start: the hub's lock
        is released once this Deferred fires, and another hub may take the
        queue at once) -- but what a cut session's earlier transactions
        settled for good (``QueueRunner._record_cut``), written before
        this Deferred fires -- and no new connection is made.  The attempt
        markers of the entries given up are removed as they are given up,
        and this Deferred fires once they are (``_let_go``).  A stop made
        while an earlier one waits for the sessions it cut, and for those
        writes, fires once that wait is over too (the entries' handling
        may end before their writes do).  Last, what the runner knows in
        memory only -- outcomes and notices whose record could not be
        written -- is written once more (``QueueRunner._last_writes``:
        the entries' writes together; what fails is logged, naming what a
        start in a new process sends again).  All that follows the grace
        -- the cut connections' close, the writes of what they settled,
        the markers' removals, the last writes -- ends ``CUT_GRACE`` after
        it, together (``_stop_wait``), but that the settled writes and
        then the last ones have ``LAST_WRITES_FLOOR`` at least each
        (``_floor``): ``CUT_GRACE + 2 * LAST_WRITES_FLOOR`` at most."""
        # the cut waits under way (``_give_up_now``), asked before this
        # stop may begin one of its own
        earlier = []
        for waiters in self._cut_over.values():
            earlier.append(defer.Deferred())
            waiters.append(earlier[-1])
        d = self._stop(grace)
        if earlier:
            d = defer.DeferredList([d, *earlier], consumeErrors=True)
        # then what is known in memory only is written once more
        # (``QueueRunner._last_writes``): the next start may be another
        # process's, which has only the records.  Not before: the results
        # of the attempts given up enter that memory as their handling ends
        # (``_keep_given_up``), after their cut sessions have closed.  The
        # removals of the attempt markers under way need nothing of that:
        # waited for beside those writes, within the same deadline
        return d.addCallback(lambda _: self._last_waits())

    def _last_waits(self) -> defer.Deferred:
        """The end of a stop: its last writes and the attempt markers'
        removals still under way, waited for together until the stop's
        deadline (``_stop_wait``), ``LAST_WRITES_FLOOR`` at least
        (``_floor``)."""
        self._floor()
        waits = [self._last_writes()]
        gone = self._markers_gone()
        if gone is not None:
            waits.append(gone)
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def _waits_begin(self) -> None:
        """The stop's wait for attempts in flight is over (its grace ran
        out, or nothing is left to wait for): what it still waits for --
        cut connections' close, the writes of what they settled, marker
        removals, last writes -- is waited for ``CUT_GRACE`` from now,
        all together (``_stop_wait``; the writes' floor, ``_floor``)."""
        self._stop_by = self.clock.seconds() + CUT_GRACE

    def _floor(self) -> None:
        """The stop's deadline moved to ``LAST_WRITES_FLOOR`` from now
        when it is sooner: the writes about to be waited for have that
        long at least, whatever the waits before them took."""
        if self._stop_by is not None:
            self._stop_by = max(self._stop_by, self.clock.seconds() + LAST_WRITES_FLOOR)

    def _stop_wait(self, d: defer.Deferred) -> defer.Deferred:
        """``d`` waited for until the stop's deadline (``_waits_begin``),
        then cancelled: at once when that is over already.  Each wait after
        the grace has what is left of the one ``CUT_GRACE`` (the writes
        ``LAST_WRITES_FLOOR`` at least, ``_floor``), not one of its own: a
        stop on a hung disk whose cut connections do not close either is
        over ``CUT_GRACE + LAST_WRITES_FLOOR`` after its grace, not a
        multiple of ``CUT_GRACE``."""
        left = (CUT_GRACE if self._stop_by is None
                else self._stop_by - self.clock.seconds())
        if left > 0:
            return d.addTimeout(left, self.clock)
        d.cancel()
        return d

    def _stop(self, grace: float) -> defer.Deferred:
        """``stop``, but for the wait of an earlier stop's cut."""
        self.running = False
        # a start listens again (recover() then reads every entry anew)
        self.queue.unlisten(self._event)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self.active:
            # (the last attempts' markers may still be being removed: waited
            # for with the last writes, ``_last_waits``)
            self._waits_begin()
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        timer = self._give_up_timer
        if grace > 0 and timer is not None and timer.active():
            # a second stop: the wait ends when the shorter grace does
            if timer.getTime() > self.clock.seconds() + grace:
                timer.reset(grace)
            return d
        keep = {qid for qid in self.active if self._must_finish(qid)}
        if grace <= 0 or not keep:
            self._give_up_now()
            return d
        dropped = self.active - keep
        # those only waiting for a slot are named so, as the last line
        # names them: they had not begun to look up DNS or to connect
        # (all were called "only looking up DNS or connecting")
        waiting = sum(1 for qid in dropped if self._waits_for_a_slot(qid))
        for qid in dropped:
            self._entries[qid].dropped = True
            self._let_go(qid)
        self.agent.quiesce(keep)
        told = []
        if len(dropped) > waiting:
            told.append(f"{len(dropped) - waiting} only looking up DNS or connecting")
        if waiting:
            told.append(f"{waiting} more waiting for a free slot (max_per_destination, "
                        "max_concurrent_deliveries)")
        log.info("stopping: waiting up to {grace:g} s for {count} delivery {attempts} in "
                 "flight{dropped}", grace=grace, count=len(keep),
                 attempts=plural(len(keep), "attempt", "attempts"),
                 dropped=f" ({', '.join(told)}: given up, retried at the next start)"
                 if dropped else "")
        self._give_up_timer = self.clock.callLater(grace, self._give_up_now)
        return d

    def _must_finish(self, qid: str) -> bool:
        """Whether giving ``qid`` up now could lose or repeat something.

        Outside its deliveries an entry records an outcome or sends a
        notice: giving it up would forget a delivery made (a second one at
        the next start).  During them, a local delivery begun, a remote
        host's answer not yet recorded (or being recorded), or a delivery
        past connecting (the agent knows) must be finished too, and so must
        an entry whose destinations are all done (its record follows).  What
        is left -- deliveries waiting for a slot, looking up DNS,
        connecting, beside destinations whose results are recorded already
        -- loses nothing."""
        running = self._entries.get(qid)
        if running is not None and running.dropped:
            return False
        att = None if running is None else running.attempt
        if att is None:
            return True
        return att.kept > 0 or self.agent.connected(qid) or not att.open

    def _give_up_now(self) -> None:
        """End a stop's wait: give up what is in flight, fire its Deferreds."""
        if self._give_up_timer is not None and self._give_up_timer.active():
            self._give_up_timer.cancel()
        self._give_up_timer = None
        self._waits_begin()
        # the generation given up (``_give_up`` moves on from it): the
        # writes of what its cut sessions settled are this cut's
        # (``QueueRunner._record_cut``), apart from those of a later stop's
        # cut -- a stop, a start and a stop again within its wait
        cut = self._generation
        # with the writes of what earlier transactions settled under way
        # (``QueueRunner._settling_writes``): one between two connections
        # of a delivery has no session the cut waits for
        self._cuts[cut] = self._settling_writes()
        self._cut_over[cut] = []  # the later stops that wait for this one's end
        # taken first: an attempt the cut ends within ``_give_up`` (its
        # handling over, ``_one_over``) must not fire them before what it
        # settled is written
        idle, self._idle = self._idle, []
        gone = self._give_up()
        # (the markers of the attempts given up, being removed from now on,
        # ``_let_go``: waited for with the last writes, ``_last_waits``)

        def fire(_: Any = None) -> None:
            self._cuts.pop(cut, None)
            for d in idle + self._cut_over.pop(cut, []):
                if not d.called:
                    d.callback(None)

        def written(_: Any = None) -> Any:
            # and once what the attempts it cut had settled for good is
            # written (``QueueRunner._record_cut``): the next start may be
            # another hub's, which knows nothing else of it.  The writes
            # begun until now: none begins after this look (a result that
            # comes later stays in memory, for this runner's next try), or
            # it could land once this stop is over, the queue another hub's
            writes = self._cuts.pop(cut, [])
            if not writes:
                return None
            # (begun as their sessions ended: within what is left of the
            # stop's one wait, ``_stop_wait``, ``LAST_WRITES_FLOOR`` at
            # least, ``_floor``; a write not begun by its end is not made)
            self._floor()
            return self._stop_wait(defer.DeferredList(writes, consumeErrors=True))

        if not isinstance(gone, defer.Deferred):
            # nothing to wait for (sessions that ended within ``abort_all``):
            # what they settled is written all the same
            gone = defer.succeed(None)
        else:
            # the stop is over once the cut connections are closed: until
            # then their sockets and Twisted's call that reports them lost
            # are still on the reactor (docs/embedding.rst: nothing of the
            # hub is left once its stop has fired).  Whether or not it has
            # fired: one ``called`` may still wait on another Deferred (and
            # the timeout of one that has is cancelled at once)
            self._stop_wait(gone)
        gone.addBoth(written).addBoth(fire)

    def _give_up(self) -> Any:
        """The attempts in flight record nothing from now on, and their
        connections are cut; returns what the agent's ``abort_all`` does
        (a Deferred of the cut connections' close, or None)."""
        # the entries taken (up to twice max_concurrent_deliveries) are
        # not all under way: those whose every open destination waits for a
        # slot are counted apart (a count of them all read as if the limits
        # were not kept).  Entries, as the stop's other lines count them:
        # one to two domains is one attempt, and one delivering locally
        # (no slot of the relay's) or recording is in flight too.  Not
        # those an earlier line of this stop gave up (``dropped``): a
        # reader adding the lines up counted them twice
        left = [qid for qid, r in self._entries.items() if not r.dropped]
        waiting = sum(1 for qid in left if self._waits_for_a_slot(qid))
        running = len(left) - waiting
        self._generation += 1
        for qid, r in self._entries.items():
            self._let_go(qid)
            r.dropped = False  # the generation covers them now
            # what they still wait for (another's MX lookup, a slot)
            # delivers nothing now: a start before they are over must not
            # count them as deliveries of their destinations (``_pass``)
            r.open_dests = None
        if left or not self.active:
            log.info("stopping with {count} delivery {attempts} in flight{waiting}: given "
                     "up, retried at the next start", count=running,
                     attempts=plural(running, "attempt", "attempts"),
                     waiting=f" and {waiting} more waiting for a free slot "
                             "(max_per_destination, max_concurrent_deliveries)"
                             if waiting else "")
        try:
            return self.agent.abort_all()
        except Exception:
            # an agent's fault must not hold the hub's stop for ever: what
            # its sessions settled is in the entries' records or retried
            log_failure(log, Failure(), "the delivery agent could not cut its sessions; "
                        "the stop goes on without waiting for them")
            return None

    def _let_go(self, qid: str) -> None:
        """A stop gives ``qid``'s attempt up: its attempt marker goes now
        (removed, its descriptor closed), not when its deliveries are
        over.  One given up while it only looks up DNS ends when the lookup
        does -- an application's resolver's may take a minute, or never
        end --, and until then the marker of a stopped hub said
        "delivering" to ``mailhub queue`` and its descriptor stayed open
        in the application.  None is made for that attempt after."""
        running = self._entries.get(qid)
        att = None if running is None else running.attempt
        if att is None:
            return
        att.unmarked = True
        marked, att.mark = att.mark, None
        if marked is not None:
            self._unmark(qid, marked)

    def _markers_gone(self) -> defer.Deferred | None:
        """Fires once the attempt markers being removed now are (until the
        stop's deadline at most, ``_stop_wait``: a slow disk); ``None``
        when none is."""
        ends = self._unmarks_under_way()
        if not ends:
            return None
        return self._stop_wait(defer.DeferredList(ends, consumeErrors=True)).addBoth(
            lambda _: None)

    def _look_again(self) -> None:
        """While a stop waits: give up the entries that need no more
        waiting for (what they had to record is recorded; the rest only
        looks up DNS or connects), or everything when none is left."""
        if not self._idle or self.running:
            return
        if not any(self._must_finish(q) for q in self.active):
            self._give_up_now()
            return
        loose = {q for q, r in self._entries.items()
                 if not r.dropped and not self._must_finish(q)}
        if loose:
            # those whose rest only waits for a free slot are named so, as
            # the stop's first and last lines name them (they were said to
            # "only look up DNS or connect", not begun either)
            waiting = sum(1 for q in loose if self._waits_for_a_slot(q))
            for q in loose:
                self._entries[q].dropped = True
                self._let_go(q)
            self.agent.quiesce({q for q, r in self._entries.items() if not r.dropped})
            slot = "waits for a free slot (max_per_destination, max_concurrent_deliveries)"
            if not waiting:
                rest = "the rest only looks up DNS or connects"
            elif waiting == len(loose):
                rest = f"the rest {slot}"
            else:
                rest = (f"the rest of {len(loose) - waiting} only looks up DNS or connects, "
                        f"of {waiting} {slot}")
            log.info("stopping: {count} more delivery {attempts} given up (what they had to "
                     "record is recorded; {rest}), retried at the next start",
                     count=len(loose), attempts=plural(len(loose), "attempt", "attempts"),
                     rest=rest)

    def _one_over(self) -> None:
        """An entry's handling is over (``_finished``): a stop that waited
        for the last one is over, else it looks again at the others."""
        if not self._entries:
            if self._give_up_timer is not None and self._give_up_timer.active():
                self._give_up_timer.cancel()
            idle, self._idle = self._idle, []
            if idle:
                # (the last attempts' markers, still being removed maybe:
                # waited for with the last writes, ``_last_waits``)
                self._waits_begin()
            for d in idle:
                if not d.called:
                    d.callback(None)
        else:
            self._look_again()
