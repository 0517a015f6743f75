"""The public test doubles in txmailhub.testing: interfaces and behaviour."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmailhub.address import Address
from txmailhub.envelope import Envelope, SpooledMessage
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
    SyncerSpy,
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

    def test_finish_then_runs_the_publication_in_line(self):
        class Pub:
            def run(self):
                return ["/d"]

            def settle(self, failed):
                return failed

        spooler = MemorySpooler()
        w = spooler.open()
        w.write(b"x\n")
        msg, result = self.successResultOf(w.finish_then(lambda m: Pub()))
        self.assertEqual(result, {})
        self.assertEqual(spooler.contents(msg), b"x\n")

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

    def test_store_reads_paths_the_spooler_does_not_hold_from_disk(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"queued\n")
        store = MemoryMailboxStore(MemorySpooler())
        out = self.successResultOf(store.deliver(SpooledMessage(path, 7, 8), [JOE]))
        self.assertEqual(out, {JOE: None})
        self.assertEqual(store.messages(JOE), [b"queued\n"])

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


class SyncerSpyTests(SynchronousTestCase):
    def test_same_api_as_the_real_syncer(self):
        import inspect

        from txmailhub.store.sync import Syncer

        for name in ("sync_file", "sync_dir", "sync_each", "sync", "sync_then", "call",
                     "start", "stop"):
            real = inspect.signature(getattr(Syncer, name))
            fake = inspect.signature(getattr(SyncerSpy, name))
            self.assertEqual(list(real.parameters), list(fake.parameters), name)

    def test_records_holds_and_fails(self):
        events = []
        spy = SyncerSpy(hold=True, events=events, fail={"/bad": OSError("EIO")})
        d1 = spy.sync_file(3)
        d2 = spy.sync(dirs=["/ok", "/bad"])
        self.assertNoResult(d1)
        self.assertEqual(spy.held, 3)
        spy.release()
        self.successResultOf(d1)
        self.failureResultOf(d2, OSError)
        self.assertEqual(events, [("file", 3), ("dir", "/ok"), ("dir", "/bad")])
        spy.hold = False
        spy.fail_kind["dir"] = OSError("EROFS")
        ok, bad = spy.sync_each([4, self.mktemp()])
        self.successResultOf(ok)
        self.successResultOf(bad)  # not a directory: counted as a file
        self.failureResultOf(spy.sync_dir("/x"), OSError)

    def test_sync_then_publishes_after_the_file_and_reports_failed_dirs(self):
        error = OSError("EIO")
        spy = SyncerSpy(hold=True, fail={"/bad": error})

        class Pub:
            def run(self):
                return ["/ok", "/bad"]

            def settle(self, failed):
                return failed

        d = spy.sync_then(5, Pub())
        self.assertEqual(spy.calls, [("file", 5)])
        spy.release()
        self.assertEqual(self.successResultOf(d), {"/bad": error})
        self.assertEqual(spy.calls, [("file", 5), ("dir", "/ok"), ("dir", "/bad")])
