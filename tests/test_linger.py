"""txmailhub.linger on its own: which signals make a close linger, what
happens past LINGER_OCTETS under TLS when Twisted's TLS layer is not
there or has not sent its close_notify, and the timer it shortens.  The
protocols' own tests (test_smtp_protocol, test_pop3_protocol) drive it
over real sockets; these pin the branches those cannot reach."""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import SSL
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import alsoProvides

from txmailhub import linger

DOCS = Path(__file__).resolve().parent.parent / "docs"


class _Transport(StringTransport):
    """A transport that records the ways it is closed or paused."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")


class _Handle:
    def __init__(self, shutdown: int | None) -> None:
        self.shutdown = shutdown

    def get_shutdown(self) -> int:
        if self.shutdown is None:
            raise SSL.Error("the connection is gone")
        return self.shutdown


class _Layer(TLSMemoryBIOProtocol):
    """Twisted's TLS layer as ``stop_reading_under_tls`` sees it: its
    handle's shutdown state and its own TCP transport."""

    def __init__(self, shutdown: int | None) -> None:  # (no factory, no TLS)
        self._handle = _Handle(shutdown)
        self.transport = _Transport()
        self.calls: list[str] = []

    def getHandle(self) -> _Handle:
        return self._handle

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")


def test_the_session_saying_tls_is_enough_to_linger() -> None:
    # a transport that does not say it is TLS, in a session that does (as
    # a test transport, or a TLS layer not Twisted's): a lingering close
    # all the same, with no half-close of a TLS stream
    assert linger.lingers(_Transport(), tls=True)
    t = _Transport()
    linger.end_output(t, tls=True)
    assert t.calls == ["loseConnection"]


def test_a_transport_saying_tls_is_enough_to_linger() -> None:
    t = _Transport()
    alsoProvides(t, ISSLTransport)
    assert linger.lingers(t, tls=False)
    linger.end_output(t, tls=False)
    assert t.calls == ["loseConnection"]


def test_past_the_bound_in_a_tls_session_without_twisted_tls_layer_it_aborts() -> None:
    # no layer to stop reading from: the abort, not a close that would
    # wait for our buffered output to a client that does not read
    t = _Transport()
    assert linger.drop_input(t, 10, b"x" * 11, tls=True) == -1
    assert t.calls == ["abortConnection"]


def test_past_the_bound_on_plain_tcp_it_closes() -> None:
    t = _Transport()
    assert linger.drop_input(t, 10, b"x" * 10) == 0
    assert t.calls == []
    assert linger.drop_input(t, 0, b"x") == -1
    assert t.calls == ["loseConnection"]


def test_past_the_bound_with_close_notify_sent_the_tcp_connection_closes() -> None:
    layer = _Layer(SSL.SENT_SHUTDOWN)
    linger.stop_reading_under_tls(layer)
    assert layer.transport.calls == ["loseConnection"] and layer.calls == []


def test_past_the_bound_before_close_notify_is_sent_reading_only_stops() -> None:
    # Twisted's TLS sends close_notify once what it holds is out (a
    # producer still registered): closing the TCP connection before would
    # lose it; reading stops, and the close's timer ends the connection
    for shutdown in (0, SSL.RECEIVED_SHUTDOWN, None):  # (None: the handle is gone)
        layer = _Layer(shutdown)
        linger.stop_reading_under_tls(layer)
        assert layer.transport.calls == [] and layer.calls == ["pauseProducing"], shutdown


def test_shorten_brings_a_later_timer_forward_only() -> None:
    clock = Clock()
    call = clock.callLater(30, lambda: None)
    linger.shorten(call, clock)
    assert call.getTime() == linger.LINGER_SECONDS
    soon = clock.callLater(1, lambda: None)
    linger.shorten(soon, clock)
    assert soon.getTime() == 1


def test_shorten_leaves_a_timer_that_went_or_was_cancelled() -> None:
    clock = Clock()
    linger.shorten(None, clock)
    cancelled = clock.callLater(30, lambda: None)
    cancelled.cancel()
    linger.shorten(cancelled, clock)  # no AlreadyCancelled
    went = clock.callLater(30, lambda: None)
    clock.advance(30)
    linger.shorten(went, clock)  # no AlreadyCalled
    assert not clock.getDelayedCalls()


def test_the_documented_linger_time_is_linger_seconds() -> None:
    # docs/smtp.rst and docs/pop3.rst say how long the close lingers once
    # the last line is out, next to the constant's name
    said = f"{linger.LINGER_SECONDS:g} seconds"
    for doc in ("smtp.rst", "pop3.rst"):
        text = re.sub(r"\s+", " ", (DOCS / doc).read_text(encoding="utf-8"))
        at = text.index("(``txmailhub.linger.LINGER_SECONDS``")
        assert said in text[at - 100:at], (doc, text[at - 100:at])


# -- TLSCloseWatch: the drain of close_notify under TLS ----------------------


class _Protocol:
    def connectionLost(self, reason) -> None:
        self.lost = reason


def _watched(shutdown: int = SSL.SENT_SHUTDOWN):
    """A TLS layer whose close_notify is in its TCP transport's buffer (a
    socket transport: Twisted's ``FileDescriptor``), and the watch of it."""
    from tls_loopback import MemorySocket
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    layer = _Layer(shutdown)
    layer.transport = MemorySocket(reactor, _Protocol())
    layer.transport.write(b"<close_notify>")
    outs: list[bool] = []
    return reactor, layer, linger.watch_tls_close(layer, reactor, lambda: outs.append(True)), outs


def test_the_watch_waits_for_the_buffer_holding_close_notify_to_drain() -> None:
    # the pull producer's resumeProducing at its registration is no drain:
    # only the one when the socket transport's buffer is empty again
    reactor, layer, watch, outs = _watched()
    tcp = layer.transport
    assert watch is not None and tcp.producer is watch
    assert not watch.out and outs == [] and watch.call is None
    tcp.room = 1 << 20
    tcp.flush()
    assert tcp.sent == b"<close_notify>"
    assert watch.out and outs == [True] and tcp.producer is None
    assert watch.call.getTime() == linger.LINGER_SECONDS
    reactor.advance(1)
    watch.heard()  # the client sent more: LINGER_SECONDS from now again
    assert watch.call.getTime() == 1 + linger.LINGER_SECONDS
    reactor.advance(linger.LINGER_SECONDS)
    assert tcp.disconnecting and watch.call is None  # the TCP connection closes


def test_the_watch_never_holds_up_a_close_of_the_tcp_connection() -> None:
    # Twisted's TLS layer closes the TCP connection once the client's
    # close_notify comes: a socket transport with a pull producer asks it
    # for more instead of closing; the watch lets go then
    reactor, layer, watch, _outs = _watched()
    tcp = layer.transport
    tcp.loseConnection()
    tcp.room = 1 << 20
    for _ in range(3):
        tcp.flush()
    assert tcp.lost is not None and tcp.producer is None
    # (the protocols cancel the watch in connectionLost; its timer on a
    # connection gone is harmless all the same)
    reactor.advance(linger.LINGER_SECONDS)
    assert watch.call is None


def test_no_watch_before_close_notify_is_sent_or_once_the_clients_came() -> None:
    # close_notify held back (output still buffered in the TLS layer), or
    # both sent and received (the TCP connection is closing): the close
    # grace bounds it, as before
    for shutdown in (0, SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN, None):
        _reactor, layer, watch, _outs = _watched(shutdown)
        assert watch is None and layer.transport.producer is None, shutdown
    assert linger.watch_tls_close(_Transport(), Clock()) is None  # no TLS layer


def test_no_watch_where_a_producer_is_registered_on_the_tcp_transport() -> None:
    _reactor, layer, _watch, _outs = _watched()
    other = layer.transport.producer
    layer.transport.unregisterProducer()
    layer.transport.registerProducer(other, True)
    assert linger.watch_tls_close(layer, Clock()) is None
    assert layer.transport.producer is other


def test_a_watch_cancelled_with_the_connection_leaves_nothing_behind() -> None:
    reactor, layer, watch, outs = _watched()
    watch.cancel()
    assert layer.transport.producer is None
    layer.transport.room = 1 << 20
    layer.transport.flush()
    assert outs == [] and not reactor.getDelayedCalls()
    # and the TLS layer reads its TCP input as it did before the watch
    assert "dataReceived" not in vars(layer)


def test_the_watch_hears_the_clients_bytes_over_tcp_not_only_whole_records() -> None:
    # a TLS record decrypts to nothing until it is whole: the client's
    # bytes coming over TCP restart the LINGER_SECONDS all the same
    reactor, layer, watch, _outs = _watched()
    watch.cancel()
    fed: list[bytes] = []
    layer.dataReceived = fed.append  # the TLS layer's handling of its input
    watch = linger.watch_tls_close(layer, reactor)
    assert watch is not None and layer.dataReceived != fed.append
    tcp = layer.transport
    tcp.room = 1 << 20
    tcp.flush()
    assert watch.out and watch.call.getTime() == linger.LINGER_SECONDS
    reactor.advance(1)
    layer.dataReceived(b"\x17\x03\x03\x40\x00 the start of a record")
    assert fed == [b"\x17\x03\x03\x40\x00 the start of a record"]
    assert watch.call.getTime() == 1 + linger.LINGER_SECONDS
    watch.cancel()
    assert layer.dataReceived == fed.append  # as it was before the watch
