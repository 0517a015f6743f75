"""The connect timeout of the relay's TCP connections, which a stall of
the hub's reactor thread does not turn into a failed connection.

Twisted's own connect timeout (``connectTCP(..., timeout=)``) is a timed
call, and timed calls run before the I/O of their reactor turn: after a
stall of the reactor thread (a call blocked on a hung disk, ``fsfreeze``,
the process stopped) longer than what was left of it, it fails the
attempt "timed out" before the turn sees the connection the kernel made
meanwhile -- and a host that fails so is remembered as failed for a
while (``mx.HostHealth``) and the next one tried.  So the relay makes
its TCP connections without Twisted's timeout, under ``TimedTCPEndpoint``'s:
when it runs, the time the hub's stall record (``IStallRecord``) counted
since the connect began is given back, and the verdict waits one turn
more, after that turn's I/O, as the SMTP client's reply timers do
(``attempt.SMTPClientProtocol``).  A connection not made by then is
cancelled and fails with Twisted's own ``TimeoutError`` (which
``connect_reason`` calls "timed out", as before).

Owns only that timer; where to connect, and what to race, is the
caller's (``attempt.default_endpoint``, ``hostname.NameEndpoint``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.interfaces import IStallRecord

__all__ = ["TimedTCPEndpoint", "within"]


def within(clock: Any, attempt: defer.Deferred, timeout: float,
           stalls: IStallRecord | None = None) -> defer.Deferred:
    """``attempt`` (a connect's Deferred), failed with ``TimeoutError``
    and cancelled when it has not fired ``timeout`` seconds on: seconds
    of ``clock`` less the stalls ``stalls`` counted meanwhile (``None``:
    none), judged one reactor turn after they are up.  Cancelling the
    result cancels ``attempt`` (its own error, ``ConnectingCancelledError``
    for a TCP endpoint's, is the result's)."""

    def held(now: float) -> float:
        return 0.0 if stalls is None else stalls.held(now)

    timer: Any = None
    started = clock.seconds()
    held_at = held(started)
    due = started + timeout

    def stop() -> None:
        nonlocal timer
        if timer is not None and timer.active():
            timer.cancel()
        timer = None

    def cancel(_: defer.Deferred) -> None:
        stop()
        attempt.cancel()

    result: defer.Deferred = defer.Deferred(cancel)

    def check(second_look: bool = False) -> None:
        nonlocal timer, held_at, due
        timer = None
        now = clock.seconds()
        now_held = held(now)
        if now_held > held_at:  # the hub's stall: due that much later
            due += now_held - held_at
            held_at = now_held
            if due > now:
                timer = clock.callLater(due - now, check)
                return
        if not second_look:
            # a call made now runs in the next turn, after its I/O: a
            # connection made during a stall is seen first
            timer = clock.callLater(0, check, True)
            return
        result.errback(Failure(ConnectTimeoutError()))
        attempt.cancel()

    def settled(outcome: Any) -> None:
        stop()
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        elif not isinstance(outcome, Failure):
            # made after the verdict (an endpoint that ignores a cancel):
            # nobody will use it
            transport = getattr(outcome, "transport", None)
            if transport is not None:
                transport.abortConnection()

    timer = clock.callLater(timeout, check)
    attempt.addBoth(settled)
    return result


@implementer(IStreamClientEndpoint)
class TimedTCPEndpoint:
    """TCP to ``host`` (an IPv4 or IPv6 address) and ``port`` on
    ``reactor``, given up after ``timeout`` seconds of the next hop's
    (``within``: a stall of the hub's reactor thread the record
    ``stalls`` counted is not among them)."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float,
                 stalls: IStallRecord | None = None) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        self._stalls = stalls

    def connect(self, factory: Any) -> defer.Deferred:
        kind = TCP6ClientEndpoint if ":" in self._host else TCP4ClientEndpoint
        # no timeout of Twisted's: it would run before the turn's I/O
        attempt = kind(self._reactor, self._host, self._port, timeout=None).connect(factory)
        return within(self._reactor, attempt, self._timeout, self._stalls)
