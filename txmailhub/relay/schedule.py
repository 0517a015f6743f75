"""The retry schedule of the outbound queue, as pure functions.

Owns the arithmetic of "when is the next attempt", "has this message
been queued too long" and "is it time for the one 'delayed' warning".
Every function takes the current time as an argument: nothing here
reads a clock, touches the disk or knows about Twisted.

The default schedule (``[relay] retry_schedule``) is 1m, 5m, 15m, 30m,
1h, 2h, then every 4h: the n-th failed attempt waits ``schedule[n-1]``
seconds, and the last step repeats for as long as the message may stay
in the queue (``[relay] queue_lifetime``, 5 days by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

__all__ = [
    "DEFAULT_SCHEDULE",
    "delay_after",
    "describe_delay",
    "due_by",
    "expired",
    "is_date",
    "longest_wait",
    "next_attempt",
    "utc_text",
    "warn_delayed",
]

DEFAULT_SCHEDULE: tuple[int, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)


def delay_after(failures: int, schedule: Sequence[int] = DEFAULT_SCHEDULE) -> int:
    """Seconds to wait after the ``failures``-th failed attempt (1-based).

    The last step of ``schedule`` repeats forever.  ``failures`` below 1
    means nothing has failed yet: no wait."""
    if failures < 1:
        return 0
    if not schedule:
        raise ValueError("the retry schedule is empty")
    return int(schedule[min(failures, len(schedule)) - 1])


def next_attempt(
    now: float,
    failures: int,
    created: float,
    lifetime: int,
    schedule: Sequence[int] = DEFAULT_SCHEDULE,
) -> float:
    """When to try again after ``failures`` failed attempts, at time ``now``.

    Never later than the moment the message expires (``created +
    lifetime``): the final attempt happens at the deadline, and a
    failure then bounces it."""
    when = now + delay_after(failures, schedule)
    deadline = created + lifetime
    if now < deadline < when:
        return deadline
    return when


#: the least ``longest_wait``: a pass that only owed a notice (no attempt
#: counted) comes back after a minute, and must not be made to spin
LEAST_WAIT = 60.0


def longest_wait(failures: int, schedule: Sequence[int] = DEFAULT_SCHEDULE,
                 least: float = LEAST_WAIT) -> float:
    """The longest an entry with ``failures`` failed attempts can be meant
    to wait from now: the step its last failure set, or ``least``.

    A retry time further away than that was written by a clock ahead of
    the one reading it: the clock was set back (an NTP correction, a
    virtual machine restored from a snapshot) or the queue came from
    another machine."""
    return max(float(delay_after(failures, schedule)), least)


def due_by(next_attempt: float, failures: int, now: float,
           schedule: Sequence[int] = DEFAULT_SCHEDULE, least: float = LEAST_WAIT) -> float:
    """When an entry whose record says ``next_attempt`` is really tried:
    never later than ``longest_wait`` from ``now``.  One rule for the
    runner and for what ``mailhub queue list`` shows.

    A ``next_attempt`` of NaN (a hand-edited record: JSON reads ``NaN``)
    is ``now``: no clock ever reaches it, every comparison with it being
    false, and the entry was never tried again."""
    if math.isnan(next_attempt):
        return now
    return min(next_attempt, now + longest_wait(failures, schedule, least))


def expired(now: float, created: float, lifetime: int) -> bool:
    """Whether a message queued at ``created`` has outlived ``lifetime``."""
    return now >= created + lifetime


def warn_delayed(now: float, created: float, delay_warning: int, already_warned: bool) -> bool:
    """Whether to send the RFC 3464 "delayed" notice now.

    Once per message, after ``delay_warning`` seconds in the queue;
    ``delay_warning == 0`` turns the notice off."""
    if already_warned or delay_warning <= 0:
        return False
    return now >= created + delay_warning


def describe_delay(seconds: float) -> str:
    """A short human form of a duration: ``"45s"``, ``"5m"``, ``"4h"``, ``"2d 3h"``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f" {s % 60}s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600}h" + (f" {s % 3600 // 60}m" if s % 3600 // 60 else "")
    return f"{s // 86400}d" + (f" {s % 86400 // 3600}h" if s % 86400 // 3600 else "")


def _date(ts: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def is_date(ts: float) -> bool:
    """Whether ``ts`` is a time some date is: from the year 1 to the year
    9999 (what ``datetime`` holds).  ``NaN``, an infinity and a finite
    ``1e300`` (a queue record edited by hand) are not: a lifetime reckoned
    from one never ends (or ended before it began), and no ``Date:``,
    ``Arrival-Date`` or Maildir name can be made from it.  A time a few
    days ahead (a record written by a clock set back since) is a date."""
    if _FIRST_DATE <= ts <= _LAST_DATE:
        return True  # every time the queue holds, without making a datetime
    return _date(ts) is not None  # NaN, or beyond: a fraction may round in


# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the first and last whole
# seconds ``datetime`` holds
_FIRST_DATE = -62135596800.0
_LAST_DATE = 253402300799.0


def utc_text(ts: float) -> str:
    """A queue time as ``queue list`` and the log show it: ISO 8601, UTC.

    A time no date can be (``NaN``, an infinity, ``1e300``: a queue
    record edited by hand, ``is_date``) is its number, one word as a date
    is (``nan``): what ``queue list`` and ``queue show`` print of that
    record, not a traceback."""
    date = _date(ts)
    if date is None:
        return repr(float(ts))
    # the year by hand: glibc's %Y does not pad a year before 1000
    return f"{date.year:04d}-{date:%m-%dT%H:%M:%SZ}"
