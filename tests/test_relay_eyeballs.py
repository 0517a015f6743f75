"""Staggered connection attempts (RFC 8305 4 and 5) over a Clock and
Deferreds the tests fire."""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.task import Clock

from txmailhub.relay.eyeballs import (
    CONNECTION_ATTEMPT_DELAY,
    RaceLost,
    family_of,
    interleave,
    race,
)


class Attempts:
    """``n`` attempts whose Deferreds the test fires; ``started`` in order."""

    def __init__(self, n: int) -> None:
        self.started: list[int] = []
        self.deferreds: dict[int, defer.Deferred] = {}
        self.cancelled: list[int] = []
        self.calls = [self._make(i) for i in range(n)]

    def _make(self, i: int):
        def start() -> defer.Deferred:
            self.started.append(i)
            d = defer.Deferred(lambda _: self.cancelled.append(i))
            self.deferreds[i] = d
            return d
        return start


def test_interleave_alternates_families_from_the_first_ones():
    six = [(socket.AF_INET6, "a"), (socket.AF_INET6, "b")]
    four = [(socket.AF_INET, "c"), (socket.AF_INET, "d"), (socket.AF_INET, "e")]
    got = interleave(six + four, lambda p: p[0])
    assert [p[1] for p in got] == ["a", "c", "b", "d", "e"]
    assert [p[1] for p in interleave(four + six, lambda p: p[0])] == ["c", "a", "d", "b", "e"]
    assert interleave([], lambda p: p) == []


def test_the_next_starts_after_the_delay_or_at_once_on_a_failure():
    clock, a = Clock(), Attempts(4)
    d = race(clock, a.calls)
    assert a.started == [0]
    clock.advance(CONNECTION_ATTEMPT_DELAY - 0.01)
    assert a.started == [0]
    clock.advance(0.01)
    assert a.started == [0, 1]
    a.deferreds[1].errback(ConnectionError("refused"))
    assert a.started == [0, 1, 2]  # at once, not after the delay
    a.deferreds[0].callback("zero")
    assert d.result == (0, "zero")
    assert a.cancelled == [2]
    clock.advance(10)
    assert a.started == [0, 1, 2]


def test_all_failed_names_each_and_may_start_stops_the_rest():
    clock, a = Clock(), Attempts(3)
    allowed = [True]
    d = race(clock, a.calls, may_start=lambda: allowed[0])
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    allowed[0] = False
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert a.started == [0, 1]
    a.deferreds[1].errback(ConnectionError("one"))
    assert not d.called  # the first is still under way
    a.deferreds[0].errback(ConnectionError("zero"))
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    assert f.check(RaceLost)
    assert [n for n, _ in f.value.failures] == [1, 0] and f.value.unstarted == 1


def test_cancelling_cancels_every_attempt_and_starts_no_more():
    clock, a = Clock(), Attempts(3)
    d = race(clock, a.calls)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    d.cancel()
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    assert sorted(a.cancelled) == [0, 1]
    assert not clock.getDelayedCalls()  # the third's start is called off at once
    clock.advance(10)
    assert a.started == [0, 1]
    assert not clock.getDelayedCalls()


def test_an_attempt_that_raises_counts_as_failed_and_the_race_still_ends():
    # an endpoint that raises instead of returning a failed Deferred (a
    # bad TLS context, say) started after a failure or by the timer: the
    # race must still end (the delivery slot is not held for ever) and
    # go on with the addresses after it
    clock, a = Clock(), Attempts(3)

    def boom() -> defer.Deferred:
        raise RuntimeError("no endpoint")

    calls = [a.calls[0], boom, a.calls[2]]
    d = race(clock, calls)
    a.deferreds[0].errback(ConnectionError("zero"))
    assert a.started == [0, 2]  # the raising one failed at once, the next started
    a.deferreds[2].errback(ConnectionError("two"))
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    assert [n for n, _ in f.value.failures] == [0, 1, 2]
    assert f.value.failures[1][1].check(RuntimeError)
    assert not clock.getDelayedCalls()


def test_no_timer_outlives_a_win_or_the_last_failure():
    # the stagger timer armed for the third start is called off when the
    # first connects, and when every attempt started has failed with
    # may_start saying no more (a reactor's delayed calls hold nothing of
    # a race that is over)
    clock, a = Clock(), Attempts(3)
    d = race(clock, a.calls)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert clock.getDelayedCalls()  # the third's start, armed
    a.deferreds[0].callback("zero")
    assert d.result == (0, "zero") and not clock.getDelayedCalls()

    clock, a = Clock(), Attempts(3)
    allowed = [True]
    d = race(clock, a.calls, may_start=lambda: allowed[0])
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    allowed[0] = False
    a.deferreds[0].errback(ConnectionError("zero"))
    a.deferreds[1].errback(ConnectionError("one"))
    d.addErrback(lambda f: f.trap(RaceLost))
    assert d.called and not clock.getDelayedCalls()


def test_family_of_tells_ipv6_from_ipv4_by_the_colon():
    # the agent interleaves an MX host's addresses by it: all AF_INET
    # would leave a host's IPv4 address after all of its IPv6 ones
    assert family_of("2001:db8::1") == socket.AF_INET6
    assert family_of("::ffff:192.0.2.1") == socket.AF_INET6  # still an IPv6 socket
    assert family_of("192.0.2.1") == socket.AF_INET


def test_the_default_delay_is_rfc_8305s_250_milliseconds():
    assert CONNECTION_ATTEMPT_DELAY == 0.25
    clock, a = Clock(), Attempts(2)
    race(clock, a.calls)
    clock.advance(0.2499)
    assert a.started == [0]
    clock.advance(0.0001)
    assert a.started == [0, 1]


def test_may_start_is_not_asked_for_the_first_attempt():
    # a race always tries one address: a budget already spent is the
    # caller's to check before racing, not a race of none
    clock, a = Clock(), Attempts(2)
    asked = []

    def may_start() -> bool:
        asked.append(len(a.started))
        return False

    d = race(clock, a.calls, may_start=may_start)
    assert a.started == [0] and asked == []
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert a.started == [0] and asked == [1]
    a.deferreds[0].errback(ConnectionError("zero"))
    d.addErrback(lambda f: f.trap(RaceLost))
    assert d.called


def test_no_timer_is_armed_after_the_last_start():
    # nothing is left to start: no wake-up that would only find that out
    clock, a = Clock(), Attempts(2)
    race(clock, a.calls)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert a.started == [0, 1]
    assert not clock.getDelayedCalls()
