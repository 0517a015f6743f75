"""txmailhub.stalls: the hub-wide record of the reactor thread's stalls."""

from __future__ import annotations

from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from txmailhub.interfaces import IStallRecord
from txmailhub.stalls import HEARTBEAT, TOLERANCE, ReactorStalls


def started(clock: Clock) -> ReactorStalls:
    stalls = ReactorStalls(clock)
    stalls.startService()
    return stalls


def test_it_provides_its_interface() -> None:
    assert verifyObject(IStallRecord, ReactorStalls(Clock()))


def test_a_heartbeat_on_time_counts_nothing() -> None:
    clock = Clock()
    stalls = started(clock)
    clock.pump([HEARTBEAT] * 1000)
    clock.pump([0.1] * 100)
    assert stalls.held(clock.seconds()) == 0


def test_a_late_beat_counts_its_lateness() -> None:
    # the reactor was held: the beat due at 1 s runs at 31 s
    clock = Clock()
    stalls = started(clock)
    clock.advance(31)
    assert stalls.held(clock.seconds()) == 30
    clock.pump([HEARTBEAT] * 10)  # on time again
    assert stalls.held(clock.seconds()) == 30
    clock.advance(HEARTBEAT + 5)  # another stall
    assert stalls.held(clock.seconds()) == 35


def test_lateness_within_the_tolerance_is_jitter() -> None:
    clock = Clock()
    stalls = started(clock)
    for _ in range(100):
        clock.advance(HEARTBEAT + TOLERANCE)
    assert stalls.held(clock.seconds()) == 0


def test_a_stall_under_way_is_counted_before_the_beat_runs() -> None:
    # read within the turn that is late (no timer has run yet): the time
    # since the beat was due, the same the beat counts when it runs
    clock = Clock()
    stalls = started(clock)
    clock.pump([HEARTBEAT] * 3)
    before = stalls.held(clock.seconds())
    clock.rightNow += 100  # held: no timed call runs
    now = clock.seconds()
    assert stalls.held(now) - before == 99  # from the beat's due time on
    assert stalls.held(now - 50) - before == 49  # an earlier reading of the turn
    clock.advance(0)  # the beat runs
    assert stalls.held(clock.seconds()) - before == 99


def test_no_heartbeat_no_credit() -> None:
    # never started (a factory built without MailHub), or stopped
    clock = Clock()
    stalls = ReactorStalls(clock)
    clock.advance(100)
    assert stalls.held(clock.seconds()) == 0
    assert clock.getDelayedCalls() == []
    stalls.startService()
    stalls.stopService()
    clock.rightNow += 100
    assert stalls.held(clock.seconds()) == 0


def test_stopping_leaves_no_timed_call_and_a_restart_beats_again() -> None:
    clock = Clock()
    stalls = started(clock)
    assert len(clock.getDelayedCalls()) == 1
    stalls.startService()  # started twice: still one heartbeat
    assert len(clock.getDelayedCalls()) == 1
    stalls.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    stalls.startService()
    clock.advance(11)
    assert stalls.held(clock.seconds()) == 10
    stalls.stopService()
    assert clock.getDelayedCalls() == []


def test_a_clock_set_back_credits_nothing_and_one_set_forward_its_step() -> None:
    # reactor time is the wall clock.  Set back, it makes no reading
    # negative or smaller than the total, and the beat waits (as every
    # timed call of the reactor) until the clock is at its due time again:
    # on time then, nothing counted.  Set forward (an NTP step), the step
    # is counted as a stall: the clock readings a message is timed by
    # moved on as much, so what the data rate counts is unchanged
    clock = Clock()
    stalls = started(clock)
    clock.pump([HEARTBEAT] * 10)
    clock.rightNow -= 3600
    assert stalls.held(clock.seconds()) == 0
    clock.pump([HEARTBEAT] * 100)
    assert stalls.held(clock.seconds()) == 0
    clock.pump([HEARTBEAT] * 3600)
    assert stalls.held(clock.seconds()) == 0
    before = clock.seconds() - stalls.held(clock.seconds())
    clock.rightNow += 3600
    clock.advance(0)
    after = clock.seconds() - stalls.held(clock.seconds())
    assert stalls.held(clock.seconds()) == 3600 - HEARTBEAT
    assert 0 <= after - before <= HEARTBEAT + TOLERANCE


def test_the_time_left_after_stalls_goes_back_by_the_tolerance_at_most() -> None:
    # ``at - held(at)`` (the time the reactor thread could run) grows with
    # ``at``, a stall under way or not, across beats -- but for one step
    # back of up to ``TOLERANCE`` where a beat becomes overdue (lateness
    # under it is jitter, over it the whole lateness is a stall): a
    # message's counted time (SMTP's ``_counted_time``) never shrinks by
    # more while the clock runs on
    clock = Clock()
    stalls = started(clock)
    last = clock.seconds() - stalls.held(clock.seconds())
    worst = 0.0
    for step in [0.1, 0.5, 1.0, 1.2, 1.3, 5.0, 0.0, 30.0, 0.25, 1.26, 100.0] * 20:
        # readings within a turn (no timed call runs)...
        for k in range(1, 101):
            at = clock.seconds() + step * k / 100
            now = at - stalls.held(at)
            worst = max(worst, last - now)
            last = now
        clock.rightNow += step  # ...then the turn's timed calls
        clock.advance(0)
        now = clock.seconds() - stalls.held(clock.seconds())
        worst = max(worst, last - now)
        last = now
    assert 0 < worst <= TOLERANCE + 1e-9
