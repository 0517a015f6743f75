"""A hub-wide record of the time the reactor thread could not run.

Everything the hub does on its one thread -- an SMTP spool write, a POP3
rename, the queue runner, a log line -- holds every session while it
runs.  When such a call blocks (ext4 waiting on a hung journal,
``fsfreeze``, the process stopped with ``SIGSTOP`` or a suspended VM),
no client is read meanwhile, so a verdict that measures a client by the
clock (SMTP's minimum data rate) must not count that time against it.

The record is a heartbeat: a timed call every ``HEARTBEAT`` seconds that
adds its own lateness beyond ``TOLERANCE`` to a running total.  A timed
call can only be late because the thread was busy or blocked since it
was due, whatever the cause, so this catches stalls of any origin, and
costs one timed call a second for the whole hub: nothing on the way of a
message.  ``held(at)`` also counts a stall still under way -- the
heartbeat overdue *now*: a session whose read comes in the same reactor
turn as the blocked call (before the heartbeat could run) gets that time
too.

Precision: a stall is counted from the moment the heartbeat was due, so
up to ``HEARTBEAT`` seconds of its start may be missed, and lateness
under ``TOLERANCE`` (ordinary scheduling jitter) is not counted.  With no
heartbeat running (``start`` not called: a factory built without the
hub's services, as in most tests) ``held`` is constant and nothing is
credited.

This module owns only the record; what a protocol does with it is the
protocol's business.  It touches nothing but the reactor it is given.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.application.service import Service
from zope.interface import implementer

from txmailhub.interfaces import IStallRecord

__all__ = ["HEARTBEAT", "TOLERANCE", "ReactorStalls"]

HEARTBEAT = 1.0
"""Seconds between two beats: the most of a stall's start that may go
uncounted."""
TOLERANCE = 0.25
"""Lateness of a beat up to this is scheduling jitter, not a stall."""


@implementer(IStallRecord)
class ReactorStalls(Service):
    """The running total of seconds the reactor thread was held, kept by a
    heartbeat that runs while this service does (``MailHub`` starts and
    stops it with the hub; no timed call is left after ``stopService``)."""

    def __init__(self, reactor: Any, interval: float = HEARTBEAT,
                 tolerance: float = TOLERANCE) -> None:
        self.reactor = reactor
        self.interval = interval
        self.tolerance = tolerance
        self.total = 0.0  # seconds counted by beats that came late
        # when the next beat is due plus the tolerance: a clock reading past
        # it means the thread has been held since the beat was due
        # (infinite while no heartbeat runs)
        self._overdue_at = math.inf
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        if self._call is None:
            self._schedule(self.reactor.seconds())

    def stopService(self) -> None:
        super().stopService()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._overdue_at = math.inf

    def held(self, at: float) -> float:
        """Seconds the reactor thread has been held up to ``at``: the total,
        plus the stall under way if the heartbeat is overdue at ``at``.
        The difference of two readings is the stall time between them;
        ``at`` is a ``reactor.seconds()`` reading of the current reactor
        turn (no beat runs within a turn, so a reading taken earlier in
        the turn may be passed later)."""
        if at <= self._overdue_at:
            return self.total
        return self.total + at - (self._overdue_at - self.tolerance)

    def _schedule(self, now: float) -> None:
        self._overdue_at = now + self.interval + self.tolerance
        self._call = self.reactor.callLater(self.interval, self._beat)

    def _beat(self) -> None:
        now = self.reactor.seconds()
        self.total = self.held(now)
        self._schedule(now)
