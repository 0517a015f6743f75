"""Notices (DSNs): making and sending the ones a queue entry owes its sender.

The queue runner (``runner.py``) handles an entry's attempts; once they are
recorded, the notices the entry owes -- failures, the one "delayed"
warning, RFC 3461 success notices -- are made (``bounce.py``), sent, and
marked done in its record here.  Kept apart from the runner's scheduling
and slot bookkeeping because it is a step of its own, with its own rules:
a notice is sent once per recipient even when the record saying so could
not be written, is tried again at the schedule's steps, and is given up a
queue lifetime after the failure or delivery it is about.

``NoticeSender`` is a part of ``QueueRunner`` (its base class): it uses
the runner's queue, settings, ``send_dsn`` and its memory of the notices
sent but not yet recorded.  Its log lines keep the runner's namespace,
``txmailhub.relay.runner``, as before this module was split off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.address import Address
from txmailhub.logsafe import REPLY_LOG_MAX, listed, loggable
from txmailhub.relay import bounce, schedule
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.record import BOUNCED, FAILED, QueueEntry, RecipientRecord
from txmailhub.relay.recording import delivered_at, failure_since, success_notices

__all__ = ["NoticeSender"]

# the runner's namespace: these lines were the runner's, and a filter on it
# (an operator's, a test's) must still see them
log = Logger(namespace="txmailhub.relay.runner")

#: ``_noted``'s answer when the record went while a notice was being made
_DELETED: Any = object()


class NoticeSender:
    """Sends the notices a queue entry owes (``_notify``); a base class of
    ``QueueRunner``, whose attributes below it uses."""

    queue: OutboundQueue
    components: Any
    settings: Any
    relay: Any
    send_dsn: Callable[..., defer.Deferred]
    # notices sent whose record could not be written: (action, recipient)
    # pairs per queue id, not sent again (``_send_once``)
    _notified: dict[str, set[tuple[str, Address]]]

    @defer.inlineCallbacks
    def _notify(self, entry: QueueEntry, now: float) -> Any:
        """Sends the notices ``entry`` owes now and marks each sent one in
        its record: fires with the entry as then written, ``None`` when
        that finished it, or ``_DELETED`` when its record had gone."""
        failed = list(entry.failed)
        if failed:
            wanted = [r for r in failed if bounce.wants_notice(entry, r, bounce.FAILED)]
            if entry.envelope.sender is None:
                # mail from <> (a notice itself) never gets a notice back
                for r in failed:
                    log.warn("{queue_id}: a message from <> (a notice) could not be delivered "
                             "to {recipient}: {reply}; dropping it", queue_id=entry.id,
                             recipient=loggable(str(r.address), 1 << 20),
                             reply=loggable(r.last_reply.text(), REPLY_LOG_MAX, marked=True)
                             if r.last_reply is not None else "-")
            ok = True
            if wanted:
                ok = yield self._send_once(entry, wanted, bounce.FAILED, now)
            # a notice that cannot be made yet (the spool or the queue
            # refused it) is tried again, for as long as one queued would
            # be: a queue lifetime from the failure, not from the message's
            # arrival (a message that expired would get one try)
            since = failure_since(entry)
            if not ok and schedule.expired(now, since, self.relay.queue_lifetime):
                log.error("{queue_id}: giving up on the failure notice to <{sender}> after "
                          "the queue lifetime: it could not be made since the failure at "
                          "{since}", queue_id=entry.id,
                          sender=loggable(entry.envelope.sender_text, 1 << 20),
                          since=schedule.utc_text(since))
                ok = True
            if ok:
                done = {r.address for r in failed}
                qid = entry.id
                entry = yield self._noted(entry.id, lambda e: e.with_recipients({
                    r.address: dataclasses.replace(r, state=BOUNCED)
                    for r in e.recipients if r.address in done and r.state == FAILED}))
                if entry is None or entry is _DELETED:
                    return entry
                self._told_recorded(qid, lambda action, address: (
                    action == bounce.FAILED and address in done))
        for action, recs in success_notices(entry).items():
            ok = yield self._send_once(entry, recs, action, now)
            # a success notice that cannot be made is given up as a failure
            # notice is, a queue lifetime after the delivery: it kept the
            # delivered message in the queue for ever
            delivered = delivered_at(entry, recs)
            if not ok and schedule.expired(now, delivered, self.relay.queue_lifetime):
                log.error("{queue_id}: giving up on the {action} notice to <{sender}> after "
                          "the queue lifetime: it could not be made since the delivery at "
                          "{since}", queue_id=entry.id, action=action,
                          sender=loggable(entry.envelope.sender_text, 1 << 20),
                          since=schedule.utc_text(delivered))
                ok = True
            if ok:
                names = {r.address for r in recs}
                qid = entry.id
                entry = yield self._noted(entry.id, lambda e, names=names: (
                    e.with_recipients({r.address: dataclasses.replace(r, notice=None)
                                       for r in e.recipients if r.address in names})))
                if entry is None or entry is _DELETED:
                    return entry
                self._told_recorded(qid, lambda told, address, action=action, names=names: (
                    told == action and address in names))
        # not once the queue lifetime is over (recipients kept pending past
        # it by a hold or a release during the attempt): the notice would
        # promise retries until a time gone by, and what comes next is the
        # final outcome, told then
        if (entry.pending
                and schedule.warn_delayed(now, entry.created, self.relay.delay_warning,
                                          entry.delay_warned)
                and not schedule.expired(now, entry.created, self.relay.queue_lifetime)):
            wanted = [r for r in entry.pending if bounce.wants_notice(entry, r, bounce.DELAYED)]
            ok = True
            if wanted:
                ok = yield self._send_once(entry, wanted, bounce.DELAYED, now)
            if ok:
                qid = entry.id
                entry = yield self._noted(
                    entry.id, lambda e: dataclasses.replace(e, delay_warned=True))
                if entry is not None and entry is not _DELETED:
                    self._told_recorded(qid, lambda action, _: action == bounce.DELAYED)
        return entry

    def _told_recorded(self, qid: str, which: Callable[[str, Address], bool]) -> None:
        """The notices ``which`` picks ((action, recipient)) are in
        ``qid``'s record now: no longer remembered (``_notified`` holds
        those whose record could not be written; the record keeps the
        others from being sent again, and a stop reads no record for them)."""
        told = self._notified.get(qid)
        if told is None:
            return
        told.difference_update([pair for pair in told if which(*pair)])
        if not told:
            del self._notified[qid]

    def _noted(self, qid: str, change: Callable[[QueueEntry], QueueEntry]) -> defer.Deferred:
        """``queue.update(qid, change)`` for a notice made: fires with the
        new entry, ``None`` when that finished it (removed), or
        ``_DELETED`` when its record had gone meanwhile (``mailhub queue
        delete`` while the notice was being made): the log says which."""
        found: list[bool] = []

        def noted(e: QueueEntry) -> QueueEntry:
            found.append(True)
            return change(e)

        return self.queue.update(qid, noted).addCallback(
            lambda e: _DELETED if e is None and not found else e)

    @defer.inlineCallbacks
    def _send_once(self, entry: QueueEntry, recs: list[RecipientRecord], action: str,
                   now: float) -> Any:
        """``_send``, for the recipients not already told (a notice sent
        whose record could not be written is not sent again)."""
        told = self._notified.setdefault(entry.id, set())
        todo = [r for r in recs if (action, r.address) not in told]
        if todo:
            ok = yield self._send(entry, todo, action, now)
            if not ok:
                return False
            told.update((action, r.address) for r in todo)
        return True

    @defer.inlineCallbacks
    def _send(self, entry: QueueEntry, recs: list[RecipientRecord], action: str,
              now: float) -> Any:
        s = self.settings
        try:
            data = bounce.build_dsn(
                entry, recs, action, hostname=s.hub.hostname,
                primary_domain=s.hub.primary_domain, now=now,
                will_retry_until=entry.created + self.relay.queue_lifetime)
            env = bounce.dsn_envelope(entry, s.hub.hostname, has_8bit=not data.isascii())
            how = yield self.send_dsn(self.components, env, data)
        except (bounce.DSNRefused, OSError) as e:
            # expected, and the operator's to fix (a full disk, a quota,
            # the users file away): one line per try, which the schedule
            # repeats for a queue lifetime, not a traceback each time
            log.error("{queue_id}: could not send the {action} notice to <{sender}> "
                      "({error}); will try again", queue_id=entry.id, action=action,
                      sender=loggable(entry.envelope.sender_text, 1 << 20),
                      error=loggable(str(e), REPLY_LOG_MAX, marked=True))
            return False
        except Exception:
            log.failure("{queue_id}: could not send the {action} notice to <{sender}>; "
                        "will try again", queue_id=entry.id, action=action,
                        sender=loggable(entry.envelope.sender_text, 1 << 20))
            return False
        log.info("{queue_id}: {action} notice for {recipients} to <{sender}>: {how}",
                 queue_id=entry.id, action=action,
                 sender=loggable(entry.envelope.sender_text, 1 << 20),
                 recipients=listed([r.address for r in recs]),
                 how=how or "sent")
        return True
