"""The junction at the end of DATA: one spooled message -> its recipients.

Owns the routing of an accepted message to the mailbox store (local
recipients) and to the outbound queue (remote recipients, and local
mailboxes that failed and must be retried), and the per-recipient replies
that result.  Called by the SMTP adapter after the final "." and by the
relay's bounce code to deliver a DSN "through the normal path".

It must not parse SMTP, touch sockets, or decide whether a recipient is
allowed (the SMTP server did that at RCPT time); it only moves a durable
spool file to where it must go and then discards the spool file.

``accept_spooled`` is the SMTP server's entry point: it takes the spool
writer before its final fsync, so that for mail to local mailboxes only
(an MX's daily bread) the store can make the copies in the same worker
job as that fsync (``ISpoolingStore``); anything else is
``writer.finish()`` and then ``accept_message``.

Per-recipient fate (RFC 5321 6.1): each recipient gets its own ``Reply``.
A local mailbox that fails is handed to the queue, whose runner retries it
through the store, so the client is told 250 and never re-sends to the
recipients that did succeed.  Only when there is no queue (no relay
configured) does a failed mailbox stay a 451; ``summarize`` then answers
451 for the whole message, because a 250 would leave that recipient's copy
with nobody responsible for it (a duplicate for the others is the lesser
harm, RFC 5321 6.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.address import Address
from txmailhub.envelope import Envelope, RecipientDSN, SpooledMessage
from txmailhub.interfaces import ISpoolingStore
from txmailhub.logsafe import listed, log_failure, loggable, plural
from txmailhub.smtp import replies
from txmailhub.smtp.reply import Reply

__all__ = ["DELIVERED", "QUEUED", "accept_message", "accept_spooled", "summarize"]

log = Logger(namespace="txmailhub.delivery")

DELIVERED = replies.DELIVERED  # that recipient's copy is in its Maildir
QUEUED = replies.QUEUED  # that recipient's copy is in the outbound queue


def accept_message(
    components: Any, envelope: Envelope, message: SpooledMessage
) -> defer.Deferred[dict[Address, Reply]]:
    """Deliver ``message`` to every recipient of ``envelope``.

    Local recipients (``components.router.is_local_domain``) go to
    ``components.store.deliver``; remote ones to
    ``components.queue.enqueue`` (with an envelope naming only them); a
    local mailbox that fails is enqueued as well, so the queue retries it.
    Fires with one ``Reply`` per recipient: 250 once that copy is durable
    (in a Maildir or in the queue), 451 when it could not be made durable.
    Never errbacks.  The spool file is discarded afterwards in every case.
    """
    router = components.router
    local: list[Address] = []
    remote: list[Address] = []
    for rcpt in envelope.recipients:
        (local if router.is_local_domain(rcpt.domain) else remote).append(rcpt)
    return _Delivery(components, envelope, message).run(local, remote)


def accept_spooled(
    components: Any, envelope: Envelope, writer: Any, message_id: str = ""
) -> defer.Deferred[dict[Address, Reply]]:
    """Finish the spool ``writer`` and deliver its message, like
    ``writer.finish()`` followed by ``accept_message``.

    When every recipient is local and the store is an ``ISpoolingStore``,
    the copies are made in the same sync batch as the spool file's fsync:
    one trip through the sync worker per message instead of two, which is
    what an inbound MX does all day.  Anything else takes the general path.
    Errbacks (nothing delivered) when the spool file cannot be made
    durable.  ``message_id`` (the SMTP server's) goes with any copy that
    is queued, so that the queue tools can find it."""
    router = components.router
    local: list[Address] = []
    remote: list[Address] = []
    for rcpt in envelope.recipients:
        (local if router.is_local_domain(rcpt.domain) else remote).append(rcpt)
    store = components.store
    if local and not remote and ISpoolingStore.providedBy(store) and not _wants_success(envelope):
        delivery = _Delivery(components, envelope, None, message_id)
        d = store.deliver_spooled(writer, local, components.spooler.discard)
        return d.addCallback(delivery.spooled, local)
    d = writer.finish()
    return d.addCallback(
        lambda message: _Delivery(components, envelope, message, message_id).run(local, remote))


def summarize(results: dict[Address, Reply], message_id: str) -> Reply:
    """The one SMTP reply after DATA for per-recipient ``results``.

    250 when every recipient's copy is durable (delivered or queued);
    otherwise the first failure (451 when any failure is temporary, so
    nothing accepted-but-lost can happen)."""
    failures = [r for r in results.values() if not r.is_positive]
    if not failures:
        return replies.accepted(message_id)
    for r in failures:
        if r.is_transient:
            return r
    return failures[0]


class _Delivery:
    """One run of ``accept_message`` (keeps the callbacks flat)."""

    def __init__(
        self, components: Any, envelope: Envelope, message: SpooledMessage | None,
        message_id: str = "",
    ) -> None:
        self.components = components
        self.envelope = envelope
        self.message_id = message_id
        self.message = message
        self.results: dict[Address, Reply] = {}

    def run(self, local: list[Address], remote: list[Address]) -> defer.Deferred:
        if not remote:
            d = self._deliver_local(local)
        else:
            d = self._enqueue(remote, replies.QUEUE_UNAVAILABLE)
            if local:
                d.addCallback(self._local_after_queue, local, remote)
        if self.envelope.expanded:
            d.addCallback(self._enqueue_expanded)
        d.addCallbacks(self._discard, self._unexpected)
        return d

    def _local_after_queue(self, _: Any, local: list[Address], remote: list[Address]) -> Any:
        """The local copies, once the queue holds the remote recipients'.

        SMTP has one reply for the whole message: when the queue cannot
        take its part (a full disk), the reply is 451 and the client sends
        the message again, to every recipient.  Copies already in the local
        mailboxes would then arrive twice; so they are made only after the
        queue has taken its part, and not at all when it could not."""
        refused = [self.results[r] for r in remote if not self.results[r].is_positive]
        if refused:
            for rcpt in local:
                self.results[rcpt] = refused[0]  # the same answer: the same retry
            return None
        return self._deliver_local(local)

    def _enqueue_expanded(self, _: Any) -> Any:
        """RFC 3461 6.2.7.3: one "expanded" notice per alias of several
        members that asked NOTIFY=SUCCESS, once the message is accepted
        (not when the client will send it again: a notice each time)."""
        if self.envelope.sender is None or not all(r.is_positive for r in self.results.values()):
            return None
        return self._enqueue_notices(list(self.envelope.expanded), "expanded")

    def _unexpected(self, f: Any) -> Any:
        log.failure("delivery failed unexpectedly", f)
        for rcpt in self.envelope.recipients:
            self.results.setdefault(rcpt, replies.LOCAL_ERROR)
        return self._discard(None)

    def spooled(self, out: tuple[SpooledMessage, dict, bool], local: list[Address]) -> Any:
        """The outcome of ``ISpoolingStore.deliver_spooled``."""
        message, outcome, discarded = out
        self.message = message
        d = self._local_outcome(outcome, local)
        if d is None:
            return self.results if discarded else self._discard(None)
        d.addCallbacks(self._discard, self._unexpected)
        return d

    def _deliver_local(self, local: list[Address]) -> defer.Deferred:
        try:
            d = self.components.store.deliver(self.message, local)
        except Exception as e:
            d = defer.fail(e)

        def store_failed(f: Any) -> Any:
            log_failure(log, f, "mailbox store failed for {count} {recipients}", count=len(local),
                        recipients=plural(len(local), "recipient", "recipients"))
            return self._enqueue(local, replies.LOCAL_ERROR)

        d.addCallbacks(self._local_outcome, store_failed, callbackArgs=(local,))
        return d

    def _local_outcome(self, outcome: dict, local: list[Address]) -> Any:
        """Enter the store's per-mailbox outcome; the failed mailboxes go
        to the queue, and so do the success notices owed for the others (a
        Deferred), or ``None`` when there is nothing to queue."""
        failed = []
        notices = []
        for rcpt in local:
            err = outcome.get(rcpt, _MISSING)
            if err is None:
                self.results[rcpt] = DELIVERED
                if _wants_success(self.envelope, rcpt):
                    notices.append(rcpt)
            else:
                if err is _MISSING:
                    err = RuntimeError("the store gave no result for this mailbox")
                log.warn(
                    "local delivery to {recipient} failed: {error}; queueing for retry",
                    recipient=loggable(str(rcpt), 1 << 20),
                    error=str(err),
                )
                failed.append(rcpt)
        pending = []
        if failed:
            pending.append(self._enqueue(failed, replies.LOCAL_ERROR))
        if notices:
            wanted = set(notices)
            pending.append(self._enqueue_notices(
                [p for p in self.envelope.recipient_dsn if p[0] in wanted]))
        if not pending:
            return None
        return pending[0] if len(pending) == 1 else defer.gatherResults(pending)

    def _enqueue_notices(self, pairs: list[tuple[Address, RecipientDSN]],
                         notice: str = "delivered") -> defer.Deferred:
        """RFC 3461 6.2.1: a success notice ("delivered", or "expanded" for
        an alias) for the recipients in ``pairs`` (address, its DSN
        parameters), who asked NOTIFY=SUCCESS.  The queue sends it
        (durably, with retries, as it does the other notices).  The copies
        are in their mailboxes whatever happens here, so a failure is
        logged and the reply stays 250: a 451 would bring the message
        again."""
        rcpts = [a for a, _ in pairs]
        queue = self.components.queue
        if queue is None:
            log.warn("no outbound queue: the success notice to <{sender}> for {recipients} "
                     "is not sent", sender=loggable(self.envelope.sender_text, 1 << 20),
                     recipients=listed(rcpts))
            return defer.succeed(None)
        env = self._envelope_for(rcpts, tuple(pairs))
        try:
            d = queue.enqueue(env, self.message, delivered=tuple(rcpts), notice=notice)
        except Exception as e:
            d = defer.fail(e)

        def failed(f: Any) -> None:
            log.failure("could not queue the success notice to <{sender}>", f,
                        sender=loggable(self.envelope.sender_text, 1 << 20))

        return d.addErrback(failed)

    def _enqueue(self, rcpts: list[Address], without_queue: Reply) -> defer.Deferred | None:
        queue = self.components.queue
        if queue is None:
            for rcpt in rcpts:
                self.results[rcpt] = without_queue
            return defer.succeed(None)
        wanted = set(rcpts)
        env = self._envelope_for(
            rcpts, tuple(p for p in self.envelope.recipient_dsn if p[0] in wanted))
        try:
            d = queue.enqueue(env, self.message)
        except Exception as e:
            d = defer.fail(e)

        def queued(_: Any) -> None:
            for rcpt in rcpts:
                self.results[rcpt] = QUEUED

        def failed(f: Any) -> None:
            log_failure(log, f, "enqueue failed for {count} {recipients}", count=len(rcpts),
                        recipients=plural(len(rcpts), "recipient", "recipients"))
            reply = replies.local_failure(f.value)  # 452 4.3.1 for a full disk
            for rcpt in rcpts:
                self.results[rcpt] = reply

        d.addCallbacks(queued, failed)
        return d

    def _envelope_for(self, rcpts: list[Address],
                      dsn: tuple[tuple[Address, RecipientDSN], ...]) -> Envelope:
        """The envelope of a queue entry for some of the recipients."""
        return dataclasses.replace(
            self.envelope, recipients=tuple(rcpts), recipient_dsn=dsn, expanded=(),
            message_id=self.message_id or self.envelope.message_id)

    def _discard(self, _: Any) -> Any:
        """Remove the spool file; the results stand whatever happens."""
        try:
            d = self.components.spooler.discard(self.message)
        except Exception:
            # an OSError (EIO, EROFS) is one line: the file goes at the next
            # start with the spool's other leftovers
            log_failure(log, Failure(), "could not discard spool file {path}",
                        path=self.message.path)
            return self.results
        if not isinstance(d, defer.Deferred):
            return self.results

        def done(_: Any) -> dict[Address, Reply]:
            return self.results

        def discard_failed(f: Any) -> dict[Address, Reply]:
            log_failure(log, f, "could not discard spool file {path}", path=self.message.path)
            return self.results

        d.addCallbacks(done, discard_failed)
        return d


_MISSING = object()


def _wants_success(envelope: Envelope, rcpt: Address | None = None) -> bool:
    """Whether ``rcpt`` (or any recipient) asked for a success notice
    (RFC 3461 NOTIFY=SUCCESS); nobody is told anything about mail from <>."""
    if envelope.sender is None:
        return False
    if rcpt is None and envelope.expanded:
        return True
    return any("SUCCESS" in (n.upper() for n in dsn.notify)
               for addr, dsn in envelope.recipient_dsn if rcpt is None or addr == rcpt)
