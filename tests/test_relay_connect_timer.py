"""The relay's connect timeout and a stall of the hub's reactor thread.

``TimingReactor`` keeps a connect's timeout as Twisted's connectors do
(``BaseConnector.connect``: a timed call that fails the attempt), which
``MemoryReactor`` leaves out; ``conftest.stalled_turn`` is the stall,
after which the test makes the connection the kernel made meanwhile, as
the turn's I/O would."""

from __future__ import annotations

import socket

import pytest
from conftest import stalled_turn
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txmailhub.relay.attempt import CONNECT_TIMEOUT, DeliveryAgent, default_endpoint
from txmailhub.relay.connect_reason import reason
from txmailhub.stalls import ReactorStalls


class TimingReactor(MemoryReactorClock):
    """``connectTCP`` with Twisted's own connect timeout."""

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        connector = super().connectTCP(host, port, factory, timeout, bindAddress)
        if timeout is not None:
            # a no-op once the connection was made (or the attempt cancelled)
            self.callLater(timeout, factory.clientConnectionFailed, connector,
                           Failure(ConnectTimeoutError()))
        return connector


def _record(reactor, running=True):
    if not running:
        return None
    record = ReactorStalls(reactor)
    record.startService()
    return record


def _made(reactor, n=0):
    """The kernel made connection ``n``; the turn's I/O says so."""
    host, port, factory, _timeout, _ = reactor.tcpClients[n]
    factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(StringTransport())


def _smarthost_connect(reactor, addresses, factory):
    """Connect ``factory`` to the smarthost "smart.example", whose name
    resolves to ``addresses``, with a running stall record: the relay
    races its addresses, each with the connect timeout."""
    record = _record(reactor)

    def resolve(name, port):
        return defer.succeed([(socket.AF_INET, address) for address in addresses])

    return default_endpoint(reactor, resolve, stalls=record)("smart.example", 25).connect(
        factory)


def _failure(d):
    """The one failure ``d`` has already fired with."""
    failure = []
    d.addErrback(failure.append)
    [f] = failure
    return f


@pytest.mark.parametrize("running", [True, False])
def test_a_connection_made_during_a_stall_of_the_hub_is_used(running):
    # connecting, the hub's thread is held past the connect timeout; the
    # connection made meanwhile is seen in the turn's I/O, after its
    # timers (with no record, the verdict's second look still waits for it)
    reactor = TimingReactor()
    record = _record(reactor, running)
    proto = Protocol()
    d = default_endpoint(reactor, stalls=record)("192.0.2.1", 25).connect(
        Factory.forProtocol(lambda: proto))
    reactor.pump([1] * 5)
    stalled_turn(reactor, 60)
    _made(reactor)
    assert d.result is proto


def test_a_smarthost_connection_made_during_a_stall_is_used():
    # the smarthost by name: its addresses are raced, each with the timeout
    reactor = TimingReactor()
    proto = Protocol()
    d = _smarthost_connect(reactor, ["192.0.2.7", "192.0.2.8"], Factory.forProtocol(lambda: proto))
    stalled_turn(reactor, 60)
    _made(reactor)
    assert d.result is proto


def test_a_smarthost_address_held_up_by_a_stall_gets_the_stall_back():
    # the record reaches the connects NameEndpoint races (not only the
    # second look): after the stall the address still has its time
    reactor = TimingReactor()
    d = _smarthost_connect(reactor, ["192.0.2.7"], Factory.forProtocol(Protocol))
    stalled_turn(reactor, 60)
    reactor.advance(0)
    reactor.pump([1] * 28)
    assert not d.called
    _made(reactor)
    assert d.called and not isinstance(d.result, Failure)


def test_a_connect_held_up_by_a_stall_gets_the_stall_back():
    # a stall right after the connect began: its SYN left only after it; it
    # has its 30 seconds after the stall, less what the record missed of it
    # (the second before the heartbeat was due): until t=60 + 29
    reactor = TimingReactor()
    record = _record(reactor)
    d = default_endpoint(reactor, stalls=record)("192.0.2.1", 25).connect(
        Factory.forProtocol(Protocol))
    stalled_turn(reactor, 60)
    reactor.advance(0)
    reactor.pump([1] * 28)
    assert not d.called
    reactor.pump([1])
    f = _failure(d)
    assert f.check(ConnectTimeoutError) and reason(f) == "timed out"


def test_a_connect_that_never_comes_still_times_out_and_is_given_up():
    reactor = TimingReactor()
    record = _record(reactor)
    d = default_endpoint(reactor, stalls=record)("192.0.2.1", 25).connect(
        Factory.forProtocol(Protocol))
    reactor.pump([1] * (CONNECT_TIMEOUT - 1))
    assert not d.called
    reactor.pump([1])
    f = _failure(d)
    assert f.check(ConnectTimeoutError) and reason(f) == "timed out"
    assert reactor.connectors[0].stoppedConnecting  # the socket is let go
    assert reactor.getDelayedCalls() == [c for c in reactor.getDelayedCalls()
                                         if getattr(c.func, "__self__", None) is record]


def test_cancelling_the_connect_cancels_the_tcp_attempt_and_its_timer():
    reactor = TimingReactor()
    d = default_endpoint(reactor)("192.0.2.1", 25).connect(Factory.forProtocol(Protocol))
    d.cancel()
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(ConnectingCancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_the_agent_connects_with_its_stall_record(tmp_path):
    from tests.test_relay_attempt import settings

    reactor = TimingReactor()
    record = _record(reactor)
    a = DeliveryAgent(settings(tmp_path), None, reactor, tls_options=lambda h, v: None,
                      stalls=record)
    proto = Protocol()
    d = a.endpoint("192.0.2.1", 25).connect(Factory.forProtocol(lambda: proto))
    stalled_turn(reactor, 60)
    # the stall is given back (without the record the second look, one
    # turn on, would fail it): the connection made after it is used
    reactor.advance(0)
    reactor.pump([1] * 28)
    assert not d.called
    _made(reactor)
    assert d.result is proto

