"""Record changes and notice times: what the runner writes, as pure functions.

The queue runner (``runner.py``) decides when to write an entry's record
and keeps the state of the attempts in flight; what goes into the record
-- each recipient's new state after an attempt, the next attempt's time,
when an owed notice (DSN) is given up, the log line of each result -- is
computed here from the entry, the results and the ``[relay]`` settings
alone.  Kept apart so that these rules can be read, and tested, without a
runner, a queue or a clock; nothing here touches the runner's state, the
queue's files or the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from txmailhub.address import Address
from txmailhub.logsafe import REPLY_LOG_MAX, loggable
from txmailhub.relay import bounce, schedule
from txmailhub.relay.attempt import DeliveryResult
from txmailhub.relay.record import (
    BOUNCED,
    DELIVERED,
    FAILED,
    PENDING,
    QueueEntry,
    RecipientRecord,
)
from txmailhub.smtp.reply import LocalReply

if TYPE_CHECKING:
    from txmailhub.config import RelaySettings

__all__ = [
    "ERROR_RETRY",
    "apply_results",
    "delivered_at",
    "delivery_needs_record",
    "failed_at",
    "failure_since",
    "mend_times",
    "notice_ends",
    "notice_owed",
    "owes_notice",
    "pending_in",
    "record_results",
    "result_line",
    "states_change",
    "success_notices",
    "told_written",
]

# an entry whose handling crashed, or that only owed a notice, is retried
# after this: schedule.LEAST_WAIT, the least wait `mailhub queue list`
# reckons with too (one number, so the two never disagree)
ERROR_RETRY = schedule.LEAST_WAIT


def pending_in(entry: QueueEntry, address: Address) -> bool:
    """Whether ``address`` is a recipient ``entry`` has still to deliver."""
    try:
        return entry.recipient(address).state == PENDING
    except KeyError:
        return False


def delivery_needs_record(entry: QueueEntry) -> bool:
    """Whether a delivery attempt of ``entry`` may end with an outcome that
    only a record write keeps: a copy sent to some recipients while others
    stay pending, or a success notice still owed.  Not so for one pending
    recipient whose delivery finishes the entry (its record is removed,
    which a full disk allows): its other outcomes send no copy, so a retry
    that has forgotten them sends none twice either."""
    pending = entry.pending
    if len(pending) != 1:
        return bool(pending)
    if any(not r.done for r in entry.recipients if r.state != PENDING):
        return True
    return bounce.wants_notice(entry, pending[0], bounce.DELIVERED)


def owes_notice(entry: QueueEntry) -> bool:
    """Whether ``entry`` still owes its sender a failure or success notice."""
    return bool(entry.failed) or any(r.notice for r in entry.recipients)


def notice_owed(entry: QueueEntry, action: str, address: Address) -> bool:
    """Whether ``entry``'s record still owes the ``action`` notice
    (``bounce.FAILED``, ``DELAYED``, or a success notice's) about
    ``address``: one sent whose record could not be written says so."""
    try:
        rec = entry.recipient(address)
    except KeyError:
        return False
    if action == bounce.FAILED:
        return rec.state == FAILED
    if action == bounce.DELAYED:
        return not entry.delay_warned and bool(entry.pending)
    return rec.notice == action


def told_written(told: set[tuple[str, Address]]) -> Callable[[QueueEntry], QueueEntry]:
    """The record change that says the notices ``told`` ((action,
    recipient) pairs) are sent, as ``NoticeSender._notify`` writes each:
    a failure notice's recipient ``bounced``, a success notice no longer
    owed, the "delayed" warning given."""

    def change(e: QueueEntry) -> QueueEntry:
        updates: dict[Address, RecipientRecord] = {}
        for r in e.recipients:
            if (bounce.FAILED, r.address) in told and r.state == FAILED:
                updates[r.address] = dataclasses.replace(r, state=BOUNCED)
            elif r.notice is not None and (r.notice, r.address) in told:
                updates[r.address] = dataclasses.replace(r, notice=None)
        if any(action == bounce.DELAYED for action, _ in told):
            e = dataclasses.replace(e, delay_warned=True)
        return e.with_recipients(updates) if updates else e

    return change


def failed_at(entry: QueueEntry, rcpt: RecipientRecord) -> float:
    """When ``rcpt`` failed for good: its record says so, or (written
    before it did) its last attempt, or the message's arrival."""
    if rcpt.failed_at is not None:
        return rcpt.failed_at
    return rcpt.last_attempt if rcpt.last_attempt is not None else entry.created


def mend_times(e: QueueEntry, now: float) -> tuple[QueueEntry, list[dict]]:
    """``e`` with its ``created`` and each recipient's ``failed_at`` and
    ``last_attempt`` that is no time (NaN or an infinity: JSON reads
    ``NaN`` and ``Infinity`` in a hand-edited record; or a number no date
    can be, ``1e300``, past the year 9999: ``schedule.is_date``) taken as
    ``now``, and a log line's fields for each.  The queue lifetime of the
    message and of a notice is reckoned from these: from NaN, +inf or
    1e300 it never ends (a message no host takes retried for ever, its
    sender never told, a notice tried for ever), from -inf or -1e300 it is
    over at once (given up untried, and the notice's Arrival-Date no
    date).  ``now`` gives it a whole lifetime of tries and loses nothing;
    written back, it is mended once.  A time that is a date stays as it
    is, one days ahead of ``now`` too (written by a clock set back
    since: the lifetime runs from it, as it always did)."""
    updates: dict[Address, RecipientRecord] = {}
    lines: list[dict] = []
    when = schedule.utc_text(now)
    if not schedule.is_date(e.created):
        lines.append({"queue_id": e.id, "field": "created", "what": "created",
                      "value": repr(e.created), "now": when})
        e = dataclasses.replace(e, created=now)
    for r in e.recipients:
        changes = {name: now for name in ("failed_at", "last_attempt")
                   if getattr(r, name) is not None and not schedule.is_date(getattr(r, name))}
        for name in changes:
            recipient = loggable(str(r.address), 1 << 20)
            lines.append({"queue_id": e.id, "field": name, "value": repr(getattr(r, name)),
                          "recipient": recipient, "what": f"{name} of {recipient}",
                          "now": when})
        if changes:
            updates[r.address] = dataclasses.replace(r, **changes)
    return (e.with_recipients(updates) if updates else e), lines


def failure_since(entry: QueueEntry) -> float:
    """Since when the failure notice of ``entry`` (which has failed
    recipients) is owed: its latest failure, the notice being about all."""
    return max(failed_at(entry, r) for r in entry.failed)


def delivered_at(entry: QueueEntry, recs: list[RecipientRecord]) -> float:
    """Since when the success notice about ``recs`` is owed: the latest
    of their deliveries."""
    return max(r.last_attempt if r.last_attempt is not None else entry.created for r in recs)


def success_notices(entry: QueueEntry) -> dict[str, list[RecipientRecord]]:
    """The success notices ``entry`` owes: the recipients of each action."""
    notices: dict[str, list[RecipientRecord]] = {}
    for r in entry.recipients:
        if r.notice:
            notices.setdefault(r.notice, []).append(r)
    return notices


def notice_ends(entry: QueueEntry, lifetime: float) -> list[float]:
    """When each notice ``entry`` owes is given up if it cannot be made:
    a queue lifetime after the failure or the delivery it is about."""
    ends = [failure_since(entry) + lifetime] if entry.failed else []
    ends += [delivered_at(entry, recs) + lifetime
             for recs in success_notices(entry).values()]
    return ends


def states_change(final: list[DeliveryResult], now: float, lines: list[dict],
                  relay: RelaySettings) -> Callable[[QueueEntry], QueueEntry]:
    """The record change that writes the recipients of ``final``
    (delivered or failed for good) alone, before the entry's own
    record; ``lines`` gets their log lines, of the version written.
    ``relay``: the hub's ``[relay]`` settings (its queue lifetime)."""

    def change(e: QueueEntry) -> QueueEntry:
        del lines[:]
        expired = schedule.expired(now, e.created, relay.queue_lifetime)
        updates = apply_results(e, final, now, expired)
        for res in final:
            rec = updates.get(res.address)
            if rec is not None:
                lines.append(result_line(e, res, rec, None))
        return e.with_recipients(updates)

    return change


def record_results(e: QueueEntry, results: list[DeliveryResult], now: float,
                   relay: RelaySettings,
                   lines: list[dict] | None = None, released: bool = False) -> QueueEntry:
    """``e`` with ``results`` in it; ``lines`` gets the log line of each
    result, to be logged once the record is written (a record that
    cannot be written keeps its results for the next try: logged then).
    ``released``: ``mailhub queue release`` was run while these results
    were being made; the admin asked for an attempt now, and the
    schedule's next retry must not overrule that.  ``relay``: the hub's
    ``[relay]`` settings (queue lifetime, retry schedule, delay warning)."""
    # an entry held while this attempt ran (``mailhub queue hold``) is
    # kept, as one held before it: its lifetime is reckoned at its
    # release, by the attempt that follows, never by this one.  One
    # released while it ran (held before or not) has the attempt that
    # release asked for still to come: that one reckons it
    expired = (schedule.expired(now, e.created, relay.queue_lifetime)
               and not e.held and not released)
    updates = apply_results(e, results, now, expired)
    if expired:  # a recipient not attempted now (say, a crash) still expires
        for rec in e.recipients:
            if rec.state == PENDING and rec.address not in updates:
                updates[rec.address] = dataclasses.replace(rec, state=FAILED,
                                                           failed_at=now)
    e = e.with_recipients(updates)
    attempts = e.attempts + (1 if results else 0)
    # a pass that only owed a notice is no attempt, but moves the
    # schedule on as one does: a notice the spool or the queue refuses
    # is tried again at the schedule's steps, not every minute for a
    # queue lifetime at the step of the message's last attempt
    notice_tries = e.notice_tries + (0 if results else 1)
    lifetime = relay.queue_lifetime
    if e.pending:
        nxt = schedule.next_attempt(now, attempts + notice_tries, e.created, lifetime,
                                    relay.retry_schedule)
    else:  # only notices are owed: the message's deadline is no concern
        nxt = now + schedule.delay_after(attempts + notice_tries,
                                         relay.retry_schedule)
    for end in notice_ends(e, lifetime):
        # a notice that cannot be made has its last try when its
        # lifetime is over, as a message has its last attempt at its
        # deadline: not given up a whole step of the schedule late
        if now < end < nxt:
            nxt = end
    if not results:  # only notices were owed: never spin on this entry
        nxt = max(nxt, now + ERROR_RETRY)
    warn_at = e.created + relay.delay_warning
    if (e.pending and not e.delay_warned and relay.delay_warning > 0
            and now < warn_at < nxt
            and any(bounce.wants_notice(e, r, bounce.DELAYED) for r in e.pending)):
        # the "delayed" notice is due before the next retry: come back
        # then (one more attempt, and the notice if it still fails),
        # not up to a whole step of the schedule late.  Only when
        # someone is to get it: NOTIFY without DELAY, or a notice from
        # <>, keeps the entry to its schedule
        nxt = warn_at
    if released:
        nxt = min(nxt, now)
    if lines is not None:
        for res in results:
            rec = updates.get(res.address)
            if rec is None:
                continue  # not pending any more: its line was logged then
            lines.append(result_line(e, res, rec, nxt, held=e.held))
    return dataclasses.replace(e, attempts=attempts, notice_tries=notice_tries,
                               next_attempt=nxt)


def apply_results(e: QueueEntry, results: list[DeliveryResult], now: float,
           expired: bool) -> dict[Address, RecipientRecord]:
    """The new records of the recipients ``results`` are about that are
    still pending in ``e`` (one recorded already, by a destination's
    own update or a record written before, stays as it is)."""
    updates: dict[Address, RecipientRecord] = {}
    for res in results:
        try:
            rec = e.recipient(res.address)
        except KeyError:
            continue
        if rec.state != PENDING:
            continue
        rec = dataclasses.replace(rec, attempts=rec.attempts + 1, last_attempt=now,
                                  last_reply=res.reply, remote_mta=res.remote_mta)
        if res.kind == "delivered":
            notice = None
            if bounce.wants_notice(e, rec, bounce.DELIVERED):
                if res.remote_mta is None:
                    notice = bounce.DELIVERED
                elif not res.dsn_passed:
                    notice = bounce.RELAYED
            rec = dataclasses.replace(rec, state=DELIVERED, notice=notice)
        elif res.kind == "permanent" or expired:
            rec = dataclasses.replace(rec, state=FAILED, failed_at=now)
        updates[res.address] = rec
    return updates


def result_line(e: QueueEntry, res: DeliveryResult, rec: RecipientRecord,
          nxt: float | None, held: bool = False) -> dict:
    """The log fields of one recorded result: the server's words (a
    remote queue id on success), or the hub's own account (marked, as
    in `queue show`), and what next (``nxt``: a pending one's retry).
    ``held``: the entry was held (``mailhub queue hold``) while this
    attempt ran; it has no next attempt until its release, and the
    line says so rather than name a retry time that will not come
    (``queue list`` says ``held`` there too)."""
    who = "hub: " if isinstance(res.reply, LocalReply) else ""
    if rec.state == DELIVERED:
        then = ""
    elif rec.state == FAILED:
        then = "; failed" if res.kind == "permanent" else "; failed: too long queued"
    elif held:
        then = "; held: no next attempt until its release (mailhub queue release)"
    else:
        then = "" if nxt is None else f"; next attempt {schedule.utc_text(nxt)}"
    # the server's words as the log takes them: a CR or an ESC a
    # hostile next hop put in its reply must not forge or hide lines
    return dict(queue_id=e.id, recipient=loggable(str(res.address), 1 << 20), who=who,
                reply=loggable(res.reply.text(), REPLY_LOG_MAX, marked=True), then=then)
