"""Connection attempts to one host's addresses with staggered starts
(RFC 8305, "Happy Eyeballs" 2, sections 4 and 5).

Tried strictly one after the other, an address that drops packets (an
IPv6 route that is broken somewhere, common enough) held every address
after it for the whole connect timeout, 30 seconds each.  Here the next
address is started ``CONNECTION_ATTEMPT_DELAY`` after the one before it
when that one has not connected yet, or at once when it failed; the first
connection made wins and the attempts still under way are cancelled.  The
families alternate (``interleave``), so that a host's IPv4 address is not
started after all of its IPv6 ones.  Sans policy: what to start, and
whether another start is still allowed (a time budget), is the caller's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["CONNECTION_ATTEMPT_DELAY", "RaceLost", "family_of", "interleave", "race"]

# RFC 8305 5: "A simple implementation can have a fixed delay for how long
# to wait before starting the next connection attempt ... the recommended
# value for a default delay is 250 milliseconds"
CONNECTION_ATTEMPT_DELAY = 0.25

T = TypeVar("T")


def interleave(items: Sequence[T], family: Callable[[T], int]) -> list[T]:
    """``items`` with their address families alternating, starting with
    the first item's family, each family keeping its own order (RFC 8305
    4: "the client SHOULD ... alternate between IP families")."""
    if not items:
        return []
    first = family(items[0])
    mine = [i for i in items if family(i) == first]
    others = [i for i in items if family(i) != first]
    out: list[T] = []
    for n in range(max(len(mine), len(others))):
        out.extend(x[n] for x in (mine, others) if n < len(x))
    return out


def family_of(address: str) -> int:
    """``AF_INET6`` for an IPv6 address, else ``AF_INET``."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class RaceLost(Exception):
    """No attempt connected: ``failures`` (index, ``Failure``) of those
    started, in the order they failed; ``unstarted`` how many were left
    unstarted because ``may_start`` said no."""

    def __init__(self, failures: list[tuple[int, Failure]], unstarted: int) -> None:
        super().__init__(f"{len(failures)} failed, {unstarted} not started")
        self.failures = failures
        self.unstarted = unstarted


def race(clock: Any, attempts: Sequence[Callable[[], defer.Deferred]], *,
         delay: float = CONNECTION_ATTEMPT_DELAY,
         may_start: Callable[[], bool] = lambda: True) -> defer.Deferred:
    """Start ``attempts[0]()``, and each next one ``delay`` seconds after
    the last start while none has connected, or at once when one fails.
    ``may_start()`` is asked before each start after the first.  An
    attempt that raises counts as one that failed.  Fires
    ``(index, result)`` of the first to succeed, the
    others cancelled; errbacks with ``RaceLost`` when all started failed
    and none more may start.  Cancelling it cancels what is under way."""
    pending: dict[int, defer.Deferred] = {}
    failures: list[tuple[int, Failure]] = []
    timer: list[Any] = []
    started = [0]
    over: list[bool] = []  # cancelled

    def stop_timer() -> None:
        for call in timer:
            if call.active():
                call.cancel()
        timer.clear()

    def cancel(_: defer.Deferred) -> None:
        over.append(True)  # the failures of the cancelled start nothing
        stop_timer()
        for d in list(pending.values()):
            d.cancel()

    result: defer.Deferred = defer.Deferred(cancel)

    def start_next() -> None:
        stop_timer()
        if result.called or over:
            return
        n = started[0]
        if n < len(attempts) and (n == 0 or may_start()):
            started[0] += 1
            # one that raises (rather than failing its Deferred) is an
            # attempt that failed: raised from a timer or from another's
            # failure it would leave the race never ending
            d = defer.maybeDeferred(attempts[n])
            pending[n] = d
            d.addCallbacks(won, lost, callbackArgs=(n,), errbackArgs=(n,))
            if started[0] < len(attempts) and not result.called and n in pending:
                timer.append(clock.callLater(delay, start_next))
        elif not pending:
            result.errback(RaceLost(failures, len(attempts) - n))

    def won(value: Any, n: int) -> None:
        pending.pop(n, None)
        if result.called:
            return
        stop_timer()
        result.callback((n, value))  # first: the cancelled ones then fail quietly
        for d in list(pending.values()):
            d.cancel()

    def lost(failure: Failure, n: int) -> None:
        pending.pop(n, None)
        if result.called or over:
            return
        failures.append((n, failure))
        start_next()  # a failure starts the next at once (RFC 8305 5)

    start_next()
    return result
