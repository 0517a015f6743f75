"""RelayService assembly: queue exposed, runner started and stopped."""

from __future__ import annotations

import random

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
