"""The public test doubles in txmailhub.testing: interfaces and behaviour."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names import error as dns_error
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
    StaticResolver,
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
        self.assertTrue(verifyObject(IResolver, StaticResolver({})))


class StaticResolverTests(SynchronousTestCase):
    ZONE = {"Example.NET.": {"MX": [(10, "mx.example.net")]},
            "mx.example.net": {"A": ["192.0.2.25"], "AAAA": ["2001:db8::25"]}}

    def test_answers_mx_a_and_aaaa_from_its_dict(self):
        r = StaticResolver(self.ZONE)
        answers, authority, additional = self.successResultOf(
            r.lookupMailExchange("example.net"))
        self.assertEqual([(a.type, a.payload.preference, str(a.payload.name)) for a in answers],
                         [(dns.MX, 10, "mx.example.net")])
        self.assertEqual((authority, additional), ([], []))
        [a] = self.successResultOf(r.lookupAddress("MX.example.net."))[0]
        self.assertEqual(a.payload.dottedQuad(), "192.0.2.25")
        [aaaa] = self.successResultOf(r.lookupIPV6Address("mx.example.net"))[0]
        self.assertEqual(aaaa.type, dns.AAAA)
        # a name without the type: no records; a name not there: NXDOMAIN
        self.assertEqual(self.successResultOf(r.lookupAddress("example.net"))[0], [])
        self.failureResultOf(r.lookupMailExchange("nowhere.test"), dns_error.DNSNameError)
        self.assertEqual(r.queries[:3], [("example.net", "MX"), ("MX.example.net.", "A"),
                                         ("mx.example.net", "AAAA")])

    def test_an_exception_is_the_answer_and_hold_waits_for_release(self):
        r = StaticResolver({"down.test": dns_error.DNSServerError("SERVFAIL"),
                            "half.test": {"MX": defer.TimeoutError()}}, hold=True)
        mx = r.lookupMailExchange("down.test")
        half = r.lookupMailExchange("half.test")
        self.assertNoResult(mx)
        self.assertNoResult(half)
        r.release()
        self.failureResultOf(mx, dns_error.DNSServerError)
        self.failureResultOf(half, defer.TimeoutError)

    def test_the_relay_resolves_through_it(self):
        from twisted.internet.task import Clock

        from txmailhub.relay.mx import MXResolver

        mx = MXResolver(StaticResolver(self.ZONE), Clock(), "mail.example.org",
                        is_local_address=lambda a: False)
        [host] = self.successResultOf(mx.resolve("example.net"))
        self.assertEqual((host.name, set(host.addresses)),
                         ("mx.example.net", {"192.0.2.25", "2001:db8::25"}))


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
