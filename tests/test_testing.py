"""The public test doubles in txmailhub.testing: interfaces and behaviour."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmailhub.address import Address
from txmailhub.envelope import Envelope
from txmailhub.errors import LocalError, MailboxInUse, Rejected
from txmailhub.interfaces import (
    IMailbox,
    IMailboxStore,
    IOutboundQueue,
    IRecipientRouter,
    ISpooler,
    ISpoolWriter,
)
from txmailhub.smtp import replies
from txmailhub.testing import (
    MemoryMailboxStore,
    MemorySpooler,
    QueueSpy,
    StaticRouter,
)

JOE = Address("joe", "example.org")
ANN = Address("ann", "example.org")


class VerifyTests(SynchronousTestCase):
    def test_every_fake_provides_its_interface(self):
        spooler = MemorySpooler()
        store = MemoryMailboxStore(spooler)
        self.assertTrue(verifyObject(ISpooler, spooler))
        self.assertTrue(verifyObject(ISpoolWriter, spooler.open()))
        self.assertTrue(verifyObject(IMailboxStore, store))
        box = self.successResultOf(store.open_mailbox(JOE))
        self.assertTrue(verifyObject(IMailbox, box))
        self.assertTrue(verifyObject(IRecipientRouter, StaticRouter({"joe": None})))
        self.assertTrue(verifyObject(IOutboundQueue, QueueSpy()))


class SpoolAndStoreTests(SynchronousTestCase):
    def spool(self, spooler, data):
        w = spooler.open()
        w.write(data)
        return self.successResultOf(w.finish())

    def test_spool_finish_reports_sizes(self):
        spooler = MemorySpooler()
        msg = self.spool(spooler, b"Subject: hi\n\nbody\n")
        self.assertEqual(msg.size, 18)
        self.assertEqual(msg.crlf_size, 21)
        self.assertEqual(spooler.contents(msg), b"Subject: hi\n\nbody\n")
        spooler.discard(msg)
        self.assertEqual(spooler.discarded, [msg.path])
        self.assertNotIn(msg.path, spooler.files)

    def test_writer_misuse_is_a_local_error(self):
        w = MemorySpooler().open()
        w.abort()
        self.assertRaises(LocalError, w.write, b"x\n")

    def test_hold_and_failures(self):
        spooler = MemorySpooler()
        store = MemoryMailboxStore(spooler, hold=True, fail={ANN: OSError("disk full")})
        msg = self.spool(spooler, b"x\n")
        d = store.deliver(msg, [JOE, ANN])
        self.assertNoResult(d)
        store.release()
        outcome = self.successResultOf(d)
        self.assertIsNone(outcome[JOE])
        self.assertIsInstance(outcome[ANN], OSError)
        self.assertEqual(store.messages(JOE), [b"x\n"])
        self.assertEqual(store.messages(ANN), [])

    def test_spooler_failure(self):
        spooler = MemorySpooler(fail_finish=OSError("EIO"))
        w = spooler.open()
        w.write(b"x\n")
        self.failureResultOf(w.finish(), OSError)

    def test_mailbox_lock_and_snapshot(self):
        store = MemoryMailboxStore()
        store.add(JOE, b"one\n", uid="u1")
        store.add("JOE@Example.org", b"two\r\n", uid="u2")
        box = self.successResultOf(store.open_mailbox(JOE))
        self.failureResultOf(store.open_mailbox(Address("Joe", "example.org")), MailboxInUse)
        store.add(JOE, b"three\n")  # arrives during the session: not shown
        infos = box.list_messages()
        self.assertEqual([i.uid for i in infos], ["u1", "u2"])
        self.assertEqual([i.size for i in infos], [5, 5])
        self.assertEqual(box.open_message(1).read(), b"two\r\n")
        box.mark_seen(0)
        self.assertTrue(box.list_messages()[0].seen)
        self.successResultOf(box.delete([0]))
        box.close()
        box.close()
        self.assertFalse(store.is_locked(JOE))
        self.assertEqual(store.messages(JOE), [b"two\r\n", b"three\n"])
        again = self.successResultOf(store.open_mailbox(JOE))
        self.assertEqual(len(again.list_messages()), 2)


class StaticRouterTests(SynchronousTestCase):
    def router(self):
        return StaticRouter(
            {"joe": None, "list": ["joe", "ann", "bob@remote.test", "joe"], "ann": []},
            domains=["example.org", "example.net"],
        )

    def test_resolution(self):
        r = self.router()
        self.assertEqual(r.resolve(Address("JOE", "example.org")), ((JOE,), ()))
        local, remote = r.resolve(Address("list", "example.org"))
        self.assertEqual(local, (JOE, ANN))
        self.assertEqual(remote, (Address("bob", "remote.test"),))
        self.assertEqual(r.resolve(Address("x", "other.test")), ((), (Address("x", "other.test"),)))
        self.assertTrue(r.is_local_domain("EXAMPLE.net."))

    def test_unknown_and_postmaster(self):
        r = self.router()
        with self.assertRaises(Rejected) as cm:
            r.resolve(Address("nobody", "example.org"))
        self.assertEqual(cm.exception.reply, replies.UNKNOWN_USER)
        pm = Address("postmaster", "example.org")
        self.assertEqual(r.resolve(Address("PostMaster", "example.net")), ((pm,), ()))
        self.assertRaises(Rejected, r.verify, Address("nobody", "example.net"))


class QueueSpyTests(SynchronousTestCase):
    def test_records_and_holds(self):
        q = QueueSpy(hold=True)
        env = Envelope(sender=None, recipients=(JOE,))
        d = q.enqueue(env, "msg")
        self.assertNoResult(d)
        q.release()
        self.assertEqual(self.successResultOf(d), "Q1")
        self.assertEqual(q.enqueued, [(env, "msg")])
        q.wake()
        self.assertEqual(q.wakes, 1)
        self.failureResultOf(QueueSpy(fail=OSError("x")).enqueue(env, "msg"), OSError)
