"""The smarthost's name is looked up as its IDNA2008 A-labels, and each of
its addresses is tried in turn (no real DNS, no real connection)."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TCPTimedOutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txmailhub.relay.attempt import CONNECT_TIMEOUT, default_endpoint
from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY
from txmailhub.relay.hostname import MAX_ADDRESSES, lookup_name

ALABEL = b"xn--fa-hia.example"  # faß.example in IDNA2008; IDNA2003 says fass.example


class FakeGAI:
    """``socket.getaddrinfo`` over a table, converting a ``str`` name as
    CPython does (the ``idna`` codec, IDNA2003) and recording what it
    asked for."""

    def __init__(self, table):
        self.table = table
        self.asked: list[bytes] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.encode("idna") if isinstance(host, str) else host
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in self.table[name]:
            if ":" in address:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return out


class GAINameResolver:
    """What the reactor's own resolver does with a name: getaddrinfo."""

    def __init__(self, gai):
        self.gai = gai

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        receiver.resolutionBegan(self)
        try:
            infos = self.gai(hostName, portNumber)
        except OSError:
            infos = []
        for family, _, _, _, sockaddr in infos:
            kind = IPv6Address if family == socket.AF_INET6 else IPv4Address
            receiver.addressResolved(kind("TCP", sockaddr[0], portNumber))
        receiver.resolutionComplete()
        return self


def _reactor(gai):
    reactor = MemoryReactorClock()
    reactor.nameResolver = GAINameResolver(gai)
    return reactor


@pytest.mark.parametrize("configured", ["faß.example", "xn--fa-hia.example", "Faß.Example"])
def test_an_idn_smarthost_is_looked_up_as_its_idna2008_a_label(monkeypatch, configured):
    # Twisted's HostnameEndpoint turned the A-label back into Unicode and
    # getaddrinfo encoded that with IDNA2003: fass.example, another domain
    gai = FakeGAI({ALABEL: ["192.0.2.7"], b"fass.example": ["198.51.100.66"]})
    monkeypatch.setattr(socket, "getaddrinfo", gai)
    reactor = _reactor(gai)
    default_endpoint(reactor)(configured, 587).connect(Factory.forProtocol(Protocol))
    reactor.advance(1)
    assert gai.asked == [ALABEL]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("192.0.2.7", 587)]


def test_a_name_without_an_idna2008_form_is_not_looked_up(monkeypatch):
    gai = FakeGAI({b"xn--n3h.example": ["192.0.2.8"]})  # the snowman's IDNA2003 form
    monkeypatch.setattr(socket, "getaddrinfo", gai)
    d = default_endpoint(_reactor(gai))("☃.example", 25).connect(Factory.forProtocol(Protocol))
    failure = []
    d.addErrback(failure.append)
    assert gai.asked == []
    [f] = failure
    assert f.check(DNSLookupError) and "no IDNA2008" in f.getErrorMessage()


def test_lookup_name_keeps_the_order_and_drops_repeats(monkeypatch):
    gai = FakeGAI({ALABEL: ["2001:db8::7", "192.0.2.7", "2001:db8::7"]})
    monkeypatch.setattr(socket, "getaddrinfo", gai)
    assert lookup_name("faß.example", 25) == [(socket.AF_INET6, "2001:db8::7"),
                                               (socket.AF_INET, "192.0.2.7")]


def _resolver(addresses):
    asked = []

    def resolve(name, port):
        asked.append((name, port))
        return defer.succeed(addresses)

    return resolve, asked


def test_a_failed_connection_falls_through_to_the_next_address():
    reactor = MemoryReactorClock()
    resolve, asked = _resolver([(socket.AF_INET6, "2001:db8::7"), (socket.AF_INET, "192.0.2.7"),
                                (socket.AF_INET, "192.0.2.8")])
    proto = Protocol()
    d = default_endpoint(reactor, resolve)("faß.example", 25).connect(
        Factory.forProtocol(lambda: proto))
    assert asked == [("faß.example", 25)]
    # the connect timeout is the relay's own (connect_timer), not Twisted's
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    assert (host, port, timeout) == ("2001:db8::7", 25, None)
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert not d.called
    host, port, factory, timeout, _ = reactor.tcpClients[1]
    assert (host, port, timeout) == ("192.0.2.7", 25, None)
    factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(StringTransport())
    assert d.result is proto
    assert len(reactor.tcpClients) == 2  # the third address is never tried


def test_when_every_address_fails_the_error_names_each():
    reactor = MemoryReactorClock()
    resolve, _ = _resolver([(socket.AF_INET, "192.0.2.7"), (socket.AF_INET, "192.0.2.8")])
    d = default_endpoint(reactor, resolve)("smart.example", 25).connect(
        Factory.forProtocol(Protocol))
    for i in range(2):
        reactor.tcpClients[i][2].clientConnectionFailed(
            reactor.connectors[i], Failure(ConnectionRefusedError()))
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    assert "192.0.2.7" in f.getErrorMessage() and "192.0.2.8" in f.getErrorMessage()


def test_at_most_ten_addresses_are_tried():
    reactor = MemoryReactorClock()
    resolve, _ = _resolver([(socket.AF_INET, f"192.0.2.{i}") for i in range(1, 20)])
    d = default_endpoint(reactor, resolve)("smart.example", 25).connect(
        Factory.forProtocol(Protocol))
    for i in range(MAX_ADDRESSES):
        reactor.tcpClients[i][2].clientConnectionFailed(
            reactor.connectors[i], Failure(ConnectionRefusedError()))
    assert len(reactor.tcpClients) == MAX_ADDRESSES == 10
    d.addErrback(lambda f: None)
    assert d.called


def test_cancelling_the_connect_cancels_the_attempt_under_way():
    # the agent cancels connections when the hub stops (abort_all, quiesce)
    reactor = MemoryReactorClock()
    resolve, _ = _resolver([(socket.AF_INET, "192.0.2.7"), (socket.AF_INET, "192.0.2.8")])
    d = default_endpoint(reactor, resolve)("smart.example", 25).connect(
        Factory.forProtocol(Protocol))
    d.cancel()
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(defer.CancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert len(reactor.tcpClients) == 1


def test_an_address_goes_straight_to_tcp():
    reactor = MemoryReactorClock()
    default_endpoint(reactor, lambda *a: pytest.fail("looked up"))("192.0.2.9", 25).connect(
        Factory.forProtocol(Protocol))
    assert reactor.tcpClients[0][:2] == ("192.0.2.9", 25)


def test_a_name_that_does_not_resolve_says_so(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", FakeGAI({}))
    with pytest.raises(DNSLookupError) as e:
        lookup_name("faß.example", 25)
    assert "faß.example (xn--fa-hia.example): Name or service not known" in str(e.value)


def test_the_smarthost_addresses_stop_at_the_attempt_time_budget(tmp_path, monkeypatch):
    # hosts_time_budget: an attempt starts no further address once it has
    # spent the budget.  The smarthost's addresses are raced inside one
    # connection (NameEndpoint), one started every 250 ms while none
    # answers (RFC 8305 5): with a budget of one second the fifth and the
    # later ones wait for the next retry, as an MX host's would.
    from tests.test_relay_attempt import BOB, entry, settings
    from txmailhub.relay.attempt import SMARTHOST, DeliveryAgent

    gai = FakeGAI({b"smart.example": [f"192.0.2.{i}" for i in range(1, 11)]})
    monkeypatch.setattr(socket, "getaddrinfo", gai)
    reactor = MemoryReactorClock()
    s = settings(tmp_path, 'smarthost = "smart.example:25"\nhosts_time_budget = "1s"')
    a = DeliveryAgent(s, None, reactor, tls_options=lambda host, verify: None)
    d = a.deliver(entry(tmp_path, BOB), SMARTHOST, [BOB])
    reactor.advance(0)  # the lookup, in the reactor's thread pool in a real hub
    for _ in range(20):
        reactor.advance(CONNECTION_ATTEMPT_DELAY)
    assert [c[0] for c in reactor.tcpClients] == [f"192.0.2.{i}" for i in range(1, 5)]
    reactor.advance(CONNECT_TIMEOUT)
    for i in range(4):
        reactor.tcpClients[i][2].clientConnectionFailed(
            reactor.connectors[i], Failure(TCPTimedOutError()))
    [r] = d.result
    assert r.kind == "transient" and r.reply.status == "4.4.1"
    assert r.reply.text() == "451 4.4.1 connection to smart.example:25 failed: timed out"


def test_a_smarthost_none_of_whose_addresses_connected_says_why(tmp_path, monkeypatch):
    # the kept error names the reason of the first address started that
    # got an answer, not the black-holed one's timeout before it
    from tests.test_relay_attempt import BOB, entry, settings
    from txmailhub.relay.attempt import SMARTHOST, DeliveryAgent

    gai = FakeGAI({b"smart.example": ["2001:db8::7", "192.0.2.7"]})
    monkeypatch.setattr(socket, "getaddrinfo", gai)
    reactor = MemoryReactorClock()
    s = settings(tmp_path, 'smarthost = "smart.example:25"\nsmarthost_tls = "none"')
    a = DeliveryAgent(s, None, reactor, tls_options=lambda host, verify: None)
    d = a.deliver(entry(tmp_path, BOB), SMARTHOST, [BOB])
    reactor.advance(0)
    reactor.advance(CONNECTION_ATTEMPT_DELAY)
    assert [c[0] for c in reactor.tcpClients] == ["2001:db8::7", "192.0.2.7"]
    reactor.tcpClients[1][2].clientConnectionFailed(
        reactor.connectors[1], Failure(ConnectionRefusedError()))
    reactor.tcpClients[0][2].clientConnectionFailed(
        reactor.connectors[0], Failure(TCPTimedOutError()))
    [r] = d.result
    assert r.reply.text() == "451 4.4.1 connection to smart.example:25 failed: connection refused"


def test_an_address_begun_within_the_budget_is_not_cut_and_the_error_says_why():
    reactor = MemoryReactorClock()
    resolve, _ = _resolver([(socket.AF_INET, f"192.0.2.{i}") for i in range(1, 4)])
    d = default_endpoint(reactor, resolve, budget=0.4)("smart.example", 25).connect(
        Factory.forProtocol(Protocol))
    reactor.advance(CONNECTION_ATTEMPT_DELAY)  # the second starts at 0.25 s
    reactor.advance(CONNECTION_ATTEMPT_DELAY)  # the third not at 0.5 s: over 0.4 s
    assert len(reactor.tcpClients) == 2
    reactor.advance(CONNECT_TIMEOUT - 1)  # both begun within the budget: not cut
    assert not d.called
    for i in range(2):
        reactor.tcpClients[i][2].clientConnectionFailed(
            reactor.connectors[i], Failure(TCPTimedOutError()))
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    assert len(reactor.tcpClients) == 2
    assert "within 0.4 seconds" in f.getErrorMessage()
    assert "192.0.2.2" in f.getErrorMessage() and "1 not tried" in f.getErrorMessage()


def _connect(reactor, addresses, proto=None):
    resolve, _ = _resolver(addresses)
    return default_endpoint(reactor, resolve)("smart.example", 25).connect(
        Factory.forProtocol(lambda: proto or Protocol()))


def test_an_address_that_drops_packets_does_not_hold_the_next_for_the_timeout():
    # RFC 8305 5: the IPv6 address black-holes; the IPv4 one is started
    # 250 ms later, not after the 30-second connect timeout, and the first
    # connection made is used, the other attempt cancelled
    reactor = MemoryReactorClock()
    proto = Protocol()
    d = _connect(reactor, [(socket.AF_INET6, "2001:db8::7"), (socket.AF_INET, "192.0.2.7")],
                 proto)
    assert [c[0] for c in reactor.tcpClients] == ["2001:db8::7"]
    reactor.advance(CONNECTION_ATTEMPT_DELAY)
    assert [c[0] for c in reactor.tcpClients] == ["2001:db8::7", "192.0.2.7"]
    host, port, factory, _timeout, _ = reactor.tcpClients[1]
    factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(StringTransport())
    assert d.result is proto
    assert reactor.connectors[0].stoppedConnecting  # the IPv6 attempt given up


def test_the_families_alternate_and_a_late_answer_still_wins():
    # RFC 8305 4: IPv6, IPv4, IPv6, ... whatever order the resolver gave;
    # an earlier attempt that connects after a later one started still wins
    reactor = MemoryReactorClock()
    proto = Protocol()
    d = _connect(reactor, [(socket.AF_INET6, "2001:db8::1"), (socket.AF_INET6, "2001:db8::2"),
                           (socket.AF_INET, "192.0.2.1"), (socket.AF_INET, "192.0.2.2")], proto)
    for _ in range(3):
        reactor.advance(CONNECTION_ATTEMPT_DELAY)
    assert [c[0] for c in reactor.tcpClients] == [
        "2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]
    host, port, factory, _timeout, _ = reactor.tcpClients[0]
    factory.buildProtocol(IPv6Address("TCP", host, port)).makeConnection(StringTransport())
    assert d.result is proto
    assert [c.stoppedConnecting for c in reactor.connectors] == [False, True, True, True]
    reactor.advance(CONNECT_TIMEOUT)
    assert len(reactor.tcpClients) == 4  # nothing more started


def test_the_reason_is_that_of_the_first_address_started_that_answered():
    # the second address is refused first, the first then finds no route:
    # as for an MX host, the first started that got an answer is named
    # (NoAddressConnected keeps the failures in the order started)
    from twisted.internet.error import NoRouteError

    from txmailhub.relay.connect_reason import reason

    reactor = MemoryReactorClock()
    d = _connect(reactor, [(socket.AF_INET, "192.0.2.7"), (socket.AF_INET, "192.0.2.8")])
    reactor.advance(CONNECTION_ATTEMPT_DELAY)
    reactor.tcpClients[1][2].clientConnectionFailed(
        reactor.connectors[1], Failure(ConnectionRefusedError()))
    reactor.tcpClients[0][2].clientConnectionFailed(
        reactor.connectors[0], Failure(NoRouteError()))
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    assert reason(f.value) == "no route to host"
