"""txmailhub.delivery: per-recipient fate at the end of DATA."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txmailhub.address import Address
from txmailhub.delivery import DELIVERED, QUEUED, accept_message, accept_spooled, summarize
from txmailhub.envelope import Envelope, RecipientDSN, SpooledMessage
from txmailhub.interfaces import ISpoolingStore
from txmailhub.smtp import replies


class Router:
    def __init__(self, domains=("example.org",)):
        self.domains = set(domains)

    def is_local_domain(self, domain):
        return domain.lower() in self.domains


class Store:
    def __init__(self, fail=(), explode=False, pending=False):
        self.fail = set(fail)
        self.explode = explode
        self.pending = pending
        self.calls = []
        self.waiting = None

    def deliver(self, message, mailboxes):
        self.calls.append((message, list(mailboxes)))
        if self.explode:
            return defer.fail(OSError("disk on fire"))
        result = {m: (OSError("quota") if m in self.fail else None) for m in mailboxes}
        if self.pending:
            self.waiting = defer.Deferred()
            self.waiting.addCallback(lambda _: result)
            return self.waiting
        return defer.succeed(result)


class Queue:
    def __init__(self, fail=False):
        self.fail = fail
        self.entries = []
        self.delivered = []

    def enqueue(self, envelope, message, delivered=(), notice="delivered"):
        self.entries.append((envelope, message))
        self.delivered.append(delivered)
        if self.fail:
            return defer.fail(OSError("queue disk full"))
        return defer.succeed(f"q{len(self.entries)}")

    def wake(self):
        pass


class Spooler:
    def __init__(self):
        self.discarded = []

    def discard(self, message):
        self.discarded.append(message)


class C:
    def __init__(self, store=None, queue=None):
        self.router = Router()
        self.store = store or Store()
        self.queue = queue
        self.spooler = Spooler()


MSG = SpooledMessage("/spool/1", 10, 12)
A = Address("alice", "example.org")
B = Address("bob", "example.org")
R = Address("rita", "remote.test")


def env(*rcpts):
    return Envelope(
        sender=Address("s", "x.test"),
        recipients=tuple(rcpts),
        recipient_dsn=tuple((r, RecipientDSN(notify=("FAILURE",))) for r in rcpts),
    )


class AcceptMessageTests(SynchronousTestCase):
    def test_all_local_delivered(self):
        c = C()
        res = self.successResultOf(accept_message(c, env(A, B), MSG))
        self.assertEqual(res, {A: DELIVERED, B: DELIVERED})
        self.assertEqual(c.store.calls, [(MSG, [A, B])])
        self.assertEqual(c.spooler.discarded, [MSG])
        self.assertEqual(summarize(res, "id1"), replies.accepted("id1"))

    def test_no_reply_before_durable_and_discard_after(self):
        c = C(store=Store(pending=True))
        d = accept_message(c, env(A), MSG)
        self.assertNoResult(d)
        self.assertEqual(c.spooler.discarded, [])
        c.store.waiting.callback(None)
        self.assertEqual(self.successResultOf(d), {A: DELIVERED})
        self.assertEqual(c.spooler.discarded, [MSG])

    def test_failed_mailbox_is_queued_for_retry_alone(self):
        q = Queue()
        c = C(store=Store(fail=[B]), queue=q)
        res = self.successResultOf(accept_message(c, env(A, B), MSG))
        self.assertEqual(res, {A: DELIVERED, B: QUEUED})
        self.assertEqual(len(q.entries), 1)
        queued_env, queued_msg = q.entries[0]
        self.assertEqual(queued_env.recipients, (B,))
        self.assertEqual([p[0] for p in queued_env.recipient_dsn], [B])
        self.assertIs(queued_msg, MSG)
        self.assertEqual(summarize(res, "x").code, 250)

    def test_failed_mailbox_without_queue_is_451(self):
        c = C(store=Store(fail=[B]))
        res = self.successResultOf(accept_message(c, env(A, B), MSG))
        self.assertEqual(res, {A: DELIVERED, B: replies.LOCAL_ERROR})
        self.assertEqual(summarize(res, "x"), replies.LOCAL_ERROR)
        self.assertEqual(c.spooler.discarded, [MSG])

    def test_store_errback_queues_everyone(self):
        q = Queue()
        c = C(store=Store(explode=True), queue=q)
        res = self.successResultOf(accept_message(c, env(A, B), MSG))
        self.assertEqual(res, {A: QUEUED, B: QUEUED})
        self.assertEqual(q.entries[0][0].recipients, (A, B))
        self.assertEqual(self.flushLoggedErrors(), [])  # an OSError: one line, no traceback

    def test_remote_goes_to_queue_with_only_remote_recipients(self):
        q = Queue()
        c = C(queue=q)
        res = self.successResultOf(accept_message(c, env(A, R), MSG))
        self.assertEqual(res, {A: DELIVERED, R: QUEUED})
        self.assertEqual(c.store.calls, [(MSG, [A])])
        self.assertEqual(q.entries[0][0].recipients, (R,))

    def test_local_copies_wait_for_the_queue_and_none_if_it_fails(self):
        # One reply for the whole message: a 451 brings it back for every
        # recipient, so no local copy may exist when the queue refused its
        # part (a full disk), or alice would get the message twice.
        c = C(queue=Queue(fail=True))
        res = self.successResultOf(accept_message(c, env(A, R), MSG))
        self.assertEqual(res, {A: replies.LOCAL_ERROR, R: replies.LOCAL_ERROR})
        self.assertEqual(c.store.calls, [])
        self.assertEqual(summarize(res, "x"), replies.LOCAL_ERROR)
        self.assertEqual(c.spooler.discarded, [MSG])
        self.assertEqual(self.flushLoggedErrors(), [])  # an OSError: one line, no traceback

        class Slow(Queue):
            def enqueue(self, envelope, message, delivered=(), notice="delivered"):
                self.entries.append((envelope, message))
                self.waiting = defer.Deferred()
                return self.waiting

        q = Slow()
        c = C(queue=q)
        d = accept_message(c, env(A, R), MSG)
        self.assertEqual(c.store.calls, [])  # not before the queue holds its part
        q.waiting.callback("q1")
        self.assertEqual(self.successResultOf(d), {A: DELIVERED, R: QUEUED})
        self.assertEqual(c.store.calls, [(MSG, [A])])

    def test_a_full_disk_under_the_queue_is_452(self):
        import errno

        class Full(Queue):
            def enqueue(self, envelope, message, delivered=(), notice="delivered"):
                return defer.fail(OSError(errno.ENOSPC, "No space left on device"))

        c = C(queue=Full())
        res = self.successResultOf(accept_message(c, env(A, R), MSG))
        self.assertEqual(res, {A: replies.STORAGE_FULL, R: replies.STORAGE_FULL})
        self.assertEqual(summarize(res, "x"), replies.STORAGE_FULL)
        self.assertEqual(c.store.calls, [])

    def test_remote_without_queue_is_temporary_refusal(self):
        c = C()
        res = self.successResultOf(accept_message(c, env(R), MSG))
        self.assertEqual(res, {R: replies.QUEUE_UNAVAILABLE})
        self.assertEqual(c.store.calls, [])
        self.assertTrue(summarize(res, "x").is_transient)

    def test_queue_failure_is_451_and_spool_still_discarded(self):
        c = C(queue=Queue(fail=True))
        res = self.successResultOf(accept_message(c, env(R), MSG))
        self.assertEqual(res, {R: replies.LOCAL_ERROR})
        self.assertEqual(c.spooler.discarded, [MSG])
        self.assertEqual(self.flushLoggedErrors(), [])  # an OSError: one line, no traceback

    def test_a_failure_for_one_recipient_is_logged_in_the_singular(self):
        # "enqueue failed for 1 recipients" read as a slip
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.successResultOf(accept_message(C(queue=Queue(fail=True)), env(R), MSG))
        self.successResultOf(accept_message(C(store=Store(explode=True)), env(A), MSG))
        self.successResultOf(accept_message(C(store=Store(explode=True)), env(A, B), MSG))
        lines = [formatEvent(e) for e in observer if "failed for" in e.get("log_format", "")]
        self.assertEqual(lines, ["enqueue failed for 1 recipient: queue disk full",
                                 "mailbox store failed for 1 recipient: disk on fire",
                                 "mailbox store failed for 2 recipients: disk on fire"])

    def test_store_result_missing_a_mailbox_counts_as_failure(self):
        class Partial(Store):
            def deliver(self, message, mailboxes):
                return defer.succeed({mailboxes[0]: None})

        c = C(store=Partial())
        res = self.successResultOf(accept_message(c, env(A, B), MSG))
        self.assertEqual(res[A], DELIVERED)
        self.assertEqual(res[B], replies.LOCAL_ERROR)

    def test_summarize_prefers_a_temporary_failure(self):
        # a 451 makes the client try again: never hidden behind a 5xx
        res = {A: DELIVERED, B: replies.UNKNOWN_USER, R: replies.LOCAL_ERROR}
        self.assertEqual(summarize(res, "x"), replies.LOCAL_ERROR)
        self.assertEqual(summarize({A: replies.UNKNOWN_USER}, "x"), replies.UNKNOWN_USER)

    def test_discard_failure_does_not_lose_results(self):
        c = C()

        def boom(message):
            raise OSError("cannot unlink")

        c.spooler.discard = boom
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            res = self.successResultOf(accept_message(c, env(A), MSG))
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(res, {A: DELIVERED})
        # a disk error is one error line, not a critical traceback (logsafe)
        self.assertEqual(self.flushLoggedErrors(OSError), [])
        [line] = [e for e in events if "discard" in formatEvent(e)]
        self.assertEqual(line["log_level"], LogLevel.error)
        self.assertIn("cannot unlink", formatEvent(line))


class Writer:
    """A spool writer whose ``finish`` fires with ``MSG``."""

    def __init__(self):
        self.finished = 0

    def finish(self):
        self.finished += 1
        return defer.succeed(MSG)


@implementer(ISpoolingStore)
class SpoolingStore(Store):
    """A ``Store`` that also takes the one-batch path."""

    def __init__(self, fail=(), discard_ok=True, **kw):
        super().__init__(fail=fail, **kw)
        self.spooled = []
        self.discard_ok = discard_ok

    def deliver_spooled(self, writer, mailboxes, discard):
        self.spooled.append(list(mailboxes))
        result = {m: (OSError("quota") if m in self.fail else None) for m in mailboxes}
        gone = False
        if not any(result.values()) and self.discard_ok:
            discard(MSG)
            gone = True
        return defer.succeed((MSG, result, gone))


class AcceptSpooledTests(SynchronousTestCase):
    def test_all_local_in_one_step(self):
        c = C(store=SpoolingStore())
        w = Writer()
        res = self.successResultOf(accept_spooled(c, env(A, B), w))
        self.assertEqual(res, {A: DELIVERED, B: DELIVERED})
        self.assertEqual(c.store.spooled, [[A, B]])
        self.assertEqual(w.finished, 0)  # the store finished it
        self.assertEqual(c.store.calls, [])
        self.assertEqual(c.spooler.discarded, [MSG])  # once, by the store

    def test_the_spool_file_is_discarded_when_the_store_did_not(self):
        c = C(store=SpoolingStore(discard_ok=False))
        res = self.successResultOf(accept_spooled(c, env(A), Writer()))
        self.assertEqual(res, {A: DELIVERED})
        self.assertEqual(c.spooler.discarded, [MSG])

    def test_a_failed_mailbox_is_queued_for_retry_then_discarded(self):
        q = Queue()
        c = C(store=SpoolingStore(fail=[B]), queue=q)
        res = self.successResultOf(accept_spooled(c, env(A, B), Writer()))
        self.assertEqual(res, {A: DELIVERED, B: QUEUED})
        (entry,) = q.entries
        self.assertEqual(entry[0].recipients, (B,))
        self.assertEqual(entry[1], MSG)
        self.assertEqual(c.spooler.discarded, [MSG])
        self.assertEqual(summarize(res, "i"), replies.accepted("i"))

    def test_a_failed_mailbox_without_a_queue_is_451(self):
        c = C(store=SpoolingStore(fail=[B]))
        res = self.successResultOf(accept_spooled(c, env(A, B), Writer()))
        self.assertEqual(res[B], replies.LOCAL_ERROR)
        self.assertEqual(summarize(res, "i").code, 451)

    def test_remote_recipients_take_the_general_path(self):
        q = Queue()
        c = C(store=SpoolingStore(), queue=q)
        w = Writer()
        res = self.successResultOf(accept_spooled(c, env(A, R), w))
        self.assertEqual(res, {A: DELIVERED, R: QUEUED})
        self.assertEqual(w.finished, 1)
        self.assertEqual(c.store.spooled, [])
        self.assertEqual(c.store.calls, [(MSG, [A])])

    def test_a_plain_store_takes_the_general_path(self):
        c = C()
        w = Writer()
        res = self.successResultOf(accept_spooled(c, env(A), w))
        self.assertEqual(res, {A: DELIVERED})
        self.assertEqual(w.finished, 1)
        self.assertEqual(c.store.calls, [(MSG, [A])])
        self.assertEqual(c.spooler.discarded, [MSG])

    def test_a_spool_failure_errbacks(self):
        @implementer(ISpoolingStore)
        class Broken(Store):
            def deliver_spooled(self, writer, mailboxes, discard):
                return defer.fail(OSError("fsync failed"))

        c = C(store=Broken())
        self.failureResultOf(accept_spooled(c, env(A), Writer()), OSError)
        self.assertEqual(c.spooler.discarded, [])


SENDER = Address("s", "x.test")


def env_notify(sender=SENDER, **notify):
    rcpts = tuple(Address(name, "example.org") for name in notify)
    return Envelope(
        sender=sender, recipients=rcpts,
        recipient_dsn=tuple((r, RecipientDSN(notify=notify[r.local])) for r in rcpts),
    )


class SuccessNoticeTests(SynchronousTestCase):
    """RFC 3461 NOTIFY=SUCCESS for mail that reaches a local mailbox."""

    def test_only_the_recipients_who_asked_get_a_notice_through_the_queue(self):
        q = Queue()
        c = C(queue=q)
        e = env_notify(alice=("SUCCESS", "FAILURE"), bob=("FAILURE",))
        res = self.successResultOf(accept_message(c, e, MSG))
        self.assertEqual(res, {A: DELIVERED, B: DELIVERED})
        ((queued_env, queued_msg),) = q.entries
        self.assertEqual(queued_env.recipients, (A,))
        self.assertEqual([p[0] for p in queued_env.recipient_dsn], [A])
        self.assertIs(queued_msg, MSG)
        self.assertEqual(q.delivered, [(A,)])
        self.assertEqual(c.spooler.discarded, [MSG])  # after the entry has its own link

    def test_nobody_is_told_about_mail_from_the_null_sender(self):
        q = Queue()
        c = C(queue=q)
        res = self.successResultOf(accept_message(c, env_notify(None, alice=("SUCCESS",)), MSG))
        self.assertEqual(res, {A: DELIVERED})
        self.assertEqual(q.entries, [])

    def test_a_notice_that_cannot_be_queued_leaves_the_250(self):
        c = C(queue=Queue(fail=True))
        res = self.successResultOf(accept_message(c, env_notify(alice=("SUCCESS",)), MSG))
        self.assertEqual(res, {A: DELIVERED})
        self.assertEqual(summarize(res, "i"), replies.accepted("i"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(c.spooler.discarded, [MSG])

    def test_without_a_queue_the_mail_is_still_delivered(self):
        c = C()
        res = self.successResultOf(accept_message(c, env_notify(alice=("SUCCESS",)), MSG))
        self.assertEqual(res, {A: DELIVERED})

    def test_the_sender_of_a_notice_is_logged_escaped(self):
        # the MX client chose the sender, a bidi override in it included
        # (SMTPUTF8): the lines about its notice escape it, as the
        # transaction line does (logsafe)
        forged = Address("x\u202eevil", "x.test")
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            for queue in (None, Queue(fail=True)):
                self.successResultOf(accept_message(
                    C(queue=queue), env_notify(forged, alice=("SUCCESS",)), MSG))
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.flushLoggedErrors(OSError)
        lines = [formatEvent(e) for e in events if "notice to" in formatEvent(e)]
        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertIn("<x\\u202eevil@x.test>", line)
            self.assertNotIn("\u202e", line)

    def test_a_failed_mailbox_is_retried_and_the_other_gets_its_notice(self):
        q = Queue()
        c = C(store=Store(fail=[B]), queue=q)
        e = env_notify(alice=("SUCCESS",), bob=("SUCCESS",))
        res = self.successResultOf(accept_message(c, e, MSG))
        self.assertEqual(res, {A: DELIVERED, B: QUEUED})
        self.assertEqual([x[0].recipients for x in q.entries], [(B,), (A,)])
        self.assertEqual(q.delivered, [(), (A,)])  # B's notice comes from its retry

    def test_no_expanded_notice_for_a_message_that_will_come_again(self):
        # a failed mailbox the queue cannot take: 451, and the client sends
        # the message again; an "expanded" notice now would be one of two
        import dataclasses

        q = Queue(fail=True)
        c = C(store=Store(fail=[B]), queue=q)
        staff = Address("staff", "example.org")
        e = dataclasses.replace(env_notify(alice=("FAILURE",), bob=("FAILURE",)),
                                expanded=((staff, RecipientDSN(notify=("SUCCESS",))),))
        res = self.successResultOf(accept_message(c, e, MSG))
        self.assertEqual(summarize(res, "i").code, 451)
        self.assertEqual([x[0].recipients for x in q.entries], [(B,)])

    def test_the_one_batch_path_is_not_taken_when_a_notice_is_owed(self):
        # that path may rename the spool file into the mailbox, and the
        # notice's queue entry needs a link of its own to the message
        q = Queue()
        c = C(store=SpoolingStore(), queue=q)
        w = Writer()
        res = self.successResultOf(accept_spooled(c, env_notify(alice=("SUCCESS",)), w))
        self.assertEqual(res, {A: DELIVERED})
        self.assertEqual((w.finished, c.store.spooled, c.store.calls), (1, [], [(MSG, [A])]))
        self.assertEqual(q.delivered, [(A,)])
        res = self.successResultOf(accept_spooled(c, env_notify(alice=("FAILURE",)), Writer()))
        self.assertEqual(c.store.spooled, [[A]])
