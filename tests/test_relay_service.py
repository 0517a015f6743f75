"""RelayService assembly: queue exposed, runner started and stopped."""

from __future__ import annotations

import os
import random

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tests.relay_fakes import FakeNetwork, FakeResolver, ScriptedSMTPServer
from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.interfaces import IOutboundQueue
from txmailhub.relay.service import RelayService
from txmailhub.testing import MemoryMailboxStore, StaticRouter

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")


def test_relay_service_delivers_and_stops(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   '[relay]\nport = 2525\n')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    net = FakeNetwork(clock)
    net.servers[("192.0.2.9", 2525)] = ScriptedSMTPServer
    resolver = FakeResolver({"remote.test": {"A": ["192.0.2.9"]}})
    c = Components(settings=settings, reactor=clock, router=StaticRouter({}),
                   store=MemoryMailboxStore(), spooler=None, portal=None)
    svc = RelayService(c, resolver=resolver, endpoint=net.endpoint, rng=random.Random(0))
    assert verifyObject(IOutboundQueue, svc.queue)
    svc.startService()
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = svc.queue.enqueue(Envelope(sender=Address("a", "example.org"),
                                     recipients=(Address("b", "remote.test"),)),
                            SpooledMessage(str(spool), 17, 20)).result
    assert qid
    net.run()
    assert svc.queue.ids() == []
    [(_, rcpts, body)] = net.server_protocols[0].messages
    assert rcpts == [b"b@remote.test"] and body == b"Subject: x\r\n\r\nbody\r\n"
    d = svc.stopService()
    assert d.called


def _relay_service(tmp_path, relay: str, resolver) -> tuple[RelayService, Clock]:
    """A relay service of a hub whose config's ``[relay]`` section is
    ``relay``, on a test clock, asking ``resolver``, not started."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   '[relay]\n' + relay)
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    c = Components(settings=settings, reactor=clock, router=StaticRouter({}),
                   store=MemoryMailboxStore(), spooler=None, portal=None)
    svc = RelayService(c, resolver=resolver, endpoint=FakeNetwork(clock).endpoint,
                       rng=random.Random(0))
    return svc, clock


def test_the_start_logs_where_outbound_mail_goes(tmp_path):
    # a smarthost set in the config, or a typo that left it out, is seen
    # in the log at start, not only when the first message goes out
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for relay in ('port = 2525\n', 'smarthost = "smtp.provider.example:587"\n',
                      'smarthost = "[192.0.2.25]:25"\nsmarthost_tls = "none"\n'
                      'smarthost_auth_file = "auth"\n'):
            (tmp_path / "auth").write_text("user:secret\n")
            svc, _clock = _relay_service(tmp_path, relay, FakeResolver({}))
            svc.startService()
            svc.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "txmailhub.relay.service"]
    assert lines == [
        "relay: outbound mail goes to each domain's MX hosts, port 2525 (no [relay] smarthost)",
        'relay: outbound mail goes to the smarthost smtp.provider.example:587 '
        '(smarthost_tls = "verify")',
        'relay: outbound mail goes to the smarthost [192.0.2.25]:25 (smarthost_tls = "none", '
        'with AUTH from smarthost_auth_file)',
    ]


def test_the_dns_failure_memory_is_the_shortest_retry_step_and_a_restart_forgets(tmp_path):
    from twisted.names import error as dns_error

    for schedule, memory in (("[30, 600]", 30), ("[900, 600, 3600]", 300), (None, 60)):
        relay = f"retry_schedule = {schedule}\n" if schedule else ""
        resolver = FakeResolver({"dead.test": dns_error.DNSServerError("dead.test")})
        svc, clock = _relay_service(tmp_path, relay, resolver)
        svc.startService()
        assert svc.mx.dns_failure_memory == memory
        svc.mx.resolve("dead.test").addErrback(lambda f: None)
        svc.mx.resolve("dead.test").addErrback(lambda f: None)
        assert resolver.queries.count(("dead.test", "MX")) == 1  # remembered
        svc.stopService()
        svc.startService()  # a restart asks again
        svc.mx.resolve("dead.test").addErrback(lambda f: None)
        assert resolver.queries.count(("dead.test", "MX")) == 2
        svc.stopService()
        clock.advance(1)


def test_the_host_names_addresses_are_looked_up_through_io_at_start_not_inline(
        tmp_path, monkeypatch):
    # a hub on a wildcard address: getaddrinfo(gethostname()) ran on the
    # reactor thread while the relay was built (a slow DNS server held the
    # start up); now it is handed to ``io`` (a thread) when the relay starts
    from twisted.internet import defer

    from txmailhub.relay import mx

    asked: list[str] = []
    monkeypatch.setattr(mx.socket, "gethostname", lambda: "box.hub.test")
    monkeypatch.setattr(mx.socket, "getaddrinfo",
                        lambda host, *a, **k: asked.append(host) or [])
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    c = Components(settings=settings, reactor=clock, router=StaticRouter({}),
                   store=MemoryMailboxStore(), spooler=None, portal=None)
    c.listening.append(("0.0.0.0", settings.relay.port))
    held: list = []

    def io(f, *args):
        held.append((f, args))
        return defer.Deferred()

    svc = RelayService(c, resolver=FakeResolver({}), endpoint=FakeNetwork(clock).endpoint,
                       io=io, rng=random.Random(0))
    svc.startService()
    try:
        assert asked == []  # not inline
        assert any(f is mx.own_addresses for f, _ in held)
    finally:
        svc.stopService()


def test_a_stop_leaves_no_marker_of_an_attempt_in_the_applications_dns(tmp_path):
    # an application's resolver (MailHub(resolver=...)) is not stopped with
    # the relay: an MX lookup of it under way runs on past the stop, here
    # for ever.  The attempt's marker stayed, locked: `mailhub queue list`
    # said "delivering" for a stopped hub, whose descriptor stayed open
    from twisted.internet import defer
    from twisted.names.common import ResolverBase

    from txmailhub.relay import inflight

    class Silent(ResolverBase):
        def _lookup(self, name, cls, type, timeout):
            return defer.Deferred()  # no answer, no timeout: the application's

    svc, _clock = _relay_service(tmp_path, "", Silent())
    svc.startService()
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = svc.queue.enqueue(Envelope(sender=Address("a", "example.org"),
                                     recipients=(Address("b", "remote.test"),)),
                            SpooledMessage(str(spool), 17, 20)).result
    assert svc.queue.attempt_since(qid) is not None  # delivering: its MX lookup
    d = svc.stopService()
    assert d.called  # a lookup is given up at once
    assert svc.queue.attempt_since(qid) is None
    assert not os.path.exists(svc.queue.attempt_path(qid))
    assert inflight._held == set()
    assert qid in svc.runner.active  # (its delivery still waits for the answer)


def test_a_restart_of_the_relay_while_a_message_is_queued_delivers_it(tmp_path):
    # the application restarts the relay service while a message is being
    # queued (its record's write waits for a pool thread): the start's
    # clean-up leaves it, the message is committed with its file and
    # delivered once
    from twisted.internet import defer

    from txmailhub.relay.queue import inline_io

    held: list = []

    def io(fn, *args):
        if getattr(fn, "__name__", "") == "write_file" and args[0].endswith(".json.tmp"):
            d = defer.Deferred()
            held.append((d, fn, args))
            return d
        return inline_io(fn, *args)

    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   '[relay]\nport = 2525\n')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    net = FakeNetwork(clock)
    net.servers[("192.0.2.9", 2525)] = ScriptedSMTPServer
    resolver = FakeResolver({"remote.test": {"A": ["192.0.2.9"]}})
    c = Components(settings=settings, reactor=clock, router=StaticRouter({}),
                   store=MemoryMailboxStore(), spooler=None, portal=None)
    svc = RelayService(c, resolver=resolver, endpoint=net.endpoint, io=io,
                       rng=random.Random(0))
    svc.startService()
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    queued = svc.queue.enqueue(Envelope(sender=Address("a", "example.org"),
                                        recipients=(Address("b", "remote.test"),)),
                               SpooledMessage(str(spool), 17, 20))
    assert len(held) == 1 and not queued.called
    assert svc.stopService().called
    svc.startService()
    d, fn, args = held.pop()
    d.callback(fn(*args))
    assert queued.result  # the client hears 250
    net.run()
    assert svc.queue.ids() == []
    assert [m[1] for p in net.server_protocols for m in p.messages] == [[b"b@remote.test"]]
    assert not os.path.exists(os.path.join(settings.queue_dir, "corrupt"))
    assert svc.stopService().called
