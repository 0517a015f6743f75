"""The lingering close, shared by SMTP and POP3.

A socket closed with input unread is answered with a TCP reset, and a
client still sending (the rest of a message, pipelined commands) could
lose the hub's last line (``421``, ``-ERR``) to it (``ECONNRESET``)
instead of reading it and the end of the stream.  So on plain TCP a
session the hub ends -- its stop, an idle timeout, too many errors, a
data rate too slow, an autologout -- shuts down its sending side only and
reads on, dropping what comes, until the client closes, ``LINGER_OCTETS``
have come, or the close's time is up: the stop's close grace, else
``LINGER_SECONDS`` from the moment all we sent is out.  A close the
client asked for (``QUIT``) closes at once, as before.

Under TLS (implicit, or after STARTTLS/STLS) there is no half-close, and
none is needed: Twisted's ``loseConnection`` sends the last line and
``close_notify`` and then keeps reading, waiting for the client's
``close_notify`` or the end of its TCP stream before it closes (measured
over loopback with a stdlib ``ssl`` client still sending: it reads the
line and the end of the TLS session, no reset).  That close lingers too
(``lingers``): what comes meanwhile is dropped, ``LINGER_OCTETS`` at most
(it was read and decrypted for as long as the close grace, 30 s): past
them reading stops and the TCP connection closes once our line and
``close_notify`` are out (``stop_reading_under_tls``).  Its time is
bounded as plain TCP's (``TLSCloseWatch``): once the TCP transport under
the TLS layer has handed our line and ``close_notify`` to the kernel, a
client that stays quiet ``LINGER_SECONDS`` is closed (the TCP
connection; it waited for the close grace), while one still sending is
read from as before; the close grace still ends it (an abort: a TCP
close needs the socket writable, which a client that reads nothing may
never make it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IPullProducer, ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

LINGER_OCTETS = 64 * 1024
"""Octets of input read and dropped during a lingering close."""

LINGER_SECONDS = 2.0
"""Seconds a lingering close goes on once our last line and end of stream
are out (the protocol's close grace bounds the wait for them): a client
that read them and never closes must not hold its connection slot (and a
POP3 mailbox's lock) for the close grace's 30 s."""


def can_linger(transport: Any, tls: bool) -> bool:
    """Whether ``transport`` can half-close: plain TCP or a ``unix:``
    socket.  Not under TLS (implicit, or after STARTTLS/STLS): Twisted's
    TLS transport has no half-close, and a TCP one under it would skip
    close_notify."""
    return not tls and not ISSLTransport.providedBy(transport) and hasattr(
        transport, "loseWriteConnection")


def lingers(transport: Any, tls: bool) -> bool:
    """Whether a close the hub decides on ``transport`` reads on after our
    end of stream: a half-close (``can_linger``), or under TLS Twisted's
    own close, which waits for the client's ``close_notify`` (its
    ``loseConnection``; see ``end_output``)."""
    return tls or ISSLTransport.providedBy(transport) or can_linger(transport, tls)


def end_output(transport: Any, tls: bool) -> None:
    """Send our end of stream after what is buffered, and read on: a TCP
    half-close, or under TLS ``close_notify`` (never skipped: RFC 8446
    6.1, RFC 5246 7.2.1) by Twisted's ``loseConnection``, which then
    waits for the client's before it closes the TCP connection."""
    if can_linger(transport, tls):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()


def shorten(call: Any, reactor: Any, seconds: float = LINGER_SECONDS) -> None:
    """Bring the close's timer ``call`` (``reactor.callLater``'s) forward
    to ``seconds`` from now, if it is due later: called once our end of
    stream is out (``writeConnectionLost``)."""
    if call is not None and call.active() and call.getTime() - reactor.seconds() > seconds:
        call.reset(seconds)


def drop_input(transport: Any, left: int, data: bytes, tls: bool = False) -> int:
    """Drop ``data`` read during a lingering close; ``left``, the octets
    it may still read, less them is returned.  Past the bound the
    connection is closed, come what may (``stop_reading_under_tls`` under
    TLS)."""
    left -= len(data)
    if left < 0:
        if tls or ISSLTransport.providedBy(transport):
            stop_reading_under_tls(transport)
        else:
            transport.loseConnection()
    return left


def tls_layer(transport: Any) -> TLSMemoryBIOProtocol | None:
    """Twisted's TLS layer of a protocol's ``transport``: the transport
    itself for implicit TLS (``TLSMemoryBIOFactory``), the TCP transport's
    ``protocol`` after ``startTLS`` (STARTTLS, STLS); None if neither (a
    test transport, another TLS implementation)."""
    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport
    layer = getattr(transport, "protocol", None)
    return layer if isinstance(layer, TLSMemoryBIOProtocol) else None


def stop_reading_under_tls(transport: Any) -> None:
    """Past ``LINGER_OCTETS`` under TLS: read no more and close the TCP
    connection once what it holds is out, as plain TCP's
    ``loseConnection`` does.  Our last line and ``close_notify`` may still
    wait there for a client that sends without reading; an abort threw
    them away (it read the end of the stream, or a reset, and no line).
    The TLS layer's own transport is closed (what Twisted's TLS does once
    both ``close_notify`` are exchanged), once ours is made; else reading
    only stops, and the close's timer ends it."""
    layer = tls_layer(transport)
    if layer is None:
        transport.abortConnection()
        return
    try:
        sent = bool(layer.getHandle().get_shutdown() & SSL.SENT_SHUTDOWN)
    except Exception:  # its connection is gone already
        sent = False
    if sent:
        layer.transport.loseConnection()
    else:
        transport.pauseProducing()


@implementer(IPullProducer)
class TLSCloseWatch:
    """The end of a lingering close under TLS, as plain TCP's half-close
    gives it: ``LINGER_SECONDS`` once our last line and ``close_notify``
    are out, that is once the TCP transport under Twisted's TLS layer has
    handed everything it holds to the kernel -- the moment plain TCP's
    ``writeConnectionLost`` comes.

    How it knows: it registers as a pull producer on that TCP transport
    (``IConsumer``), after ``close_notify`` was written there.  A socket
    transport asks a pull producer for more (``resumeProducing``) when its
    buffer is empty: once when it is registered (ignored), then when the
    buffer holding ``close_notify`` has drained.  It unregisters then, so
    a close of the TCP connection (Twisted's TLS layer closes it once the
    client's ``close_notify`` comes) is never held up by it.

    Each read of the client's input restarts the ``LINGER_SECONDS``, read
    from the TCP connection (``start`` puts ``_tcp_input`` before the TLS
    layer's ``dataReceived``): a record decrypts to nothing until it is
    whole, and one of a client on a slow link may take longer than that
    to arrive.  So a client still sending (within ``LINGER_OCTETS``)
    keeps the close grace's bound it had, and only one that has gone
    quiet -- it read our
    line and ``close_notify`` and does not close -- is closed
    ``LINGER_SECONDS`` later, not after the close grace's 30 s.  That
    close is of the TCP connection (our ``close_notify`` is out; the
    client's is not waited for any longer), as past ``LINGER_OCTETS``."""

    def __init__(self, layer: TLSMemoryBIOProtocol, reactor: Any,
                 on_out: Callable[[], None] | None = None) -> None:
        self.layer = layer
        self.reactor = reactor
        self.on_out = on_out
        self.out = False  # our close_notify is out (the TCP buffer drained)
        self.call: Any = None  # the close once quiet for LINGER_SECONDS
        self._registered = False
        self._registering = False
        self._hooked = False
        self._tls_input: Callable[[bytes], None] = self.layer.dataReceived
        self._own_input: Any = None  # a dataReceived set on the layer itself

    def start(self) -> bool:
        """Watch the TCP transport; False when that is not possible (its
        producer slot is taken), and the close grace alone bounds the
        close, as before."""
        tcp = self.layer.transport
        # (a transport that is gone already calls stopProducing instead)
        self._registered = self._registering = True
        try:
            tcp.registerProducer(self, False)
        except RuntimeError:  # another producer: Twisted's TLS layer's
            self._registered = False
            return False
        finally:
            self._registering = False
        if self._registered:  # (not if the transport was gone: stopProducing)
            # The TCP transport looks its protocol's dataReceived up at each
            # read: the TLS layer's own, with ours in front for as long as
            # we watch (cancel takes it away)
            self._own_input = vars(self.layer).get("dataReceived")
            self._tls_input = self.layer.dataReceived
            self.layer.dataReceived = self._tcp_input  # type: ignore[method-assign]
            self._hooked = True
        return True

    def _tcp_input(self, data: bytes) -> None:
        """Bytes of the client came over TCP: not quiet, whether or not
        they complete a record; then the TLS layer's own handling."""
        self.heard()
        self._tls_input(data)

    def resumeProducing(self) -> None:
        """The TCP transport wants data: its buffer is empty (``close_notify``
        is out) -- but for the call ``registerProducer`` makes at once."""
        if self._registering or self.out:
            return
        self.out = True
        self._unregister()
        self.call = self.reactor.callLater(LINGER_SECONDS, self._quiet)
        if self.on_out is not None:
            self.on_out()

    def stopProducing(self) -> None:
        """The TCP connection is gone (or closing with us registered)."""
        self._registered = False
        self.cancel()

    def heard(self) -> None:
        """The client sent more: ``LINGER_SECONDS`` from now again."""
        call = self.call
        if call is not None and call.active():
            call.reset(LINGER_SECONDS)

    def cancel(self) -> None:
        """The connection ended: no timer, no producer left behind."""
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()
        self._unregister()
        if self._hooked:
            self._hooked = False
            layer = vars(self.layer)
            if layer.get("dataReceived") == self._tcp_input:  # ours still
                if self._own_input is None:
                    del layer["dataReceived"]  # the class's again
                else:
                    layer["dataReceived"] = self._own_input

    def close_if_out(self) -> bool:
        """The close's time is up (the close grace, the stop's): close the
        TCP connection, as ``_quiet`` does, if our line and
        ``close_notify`` are out -- no reset, as a half-close's end on
        plain TCP -- and say so; False where they are not (the caller
        aborts: a TCP close waits for a buffer a client that reads nothing
        never drains)."""
        tcp = self.layer.transport
        if not self.out or tcp is None or getattr(tcp, "dataBuffer", b"") or getattr(
                tcp, "_tempDataLen", 0):
            # (what the TLS layer wrote since would hold up the close,
            # with nothing left to end it)
            return False
        self.cancel()
        close_tcp(self.layer)
        return True

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            tcp = self.layer.transport
            if tcp is not None and getattr(tcp, "producer", self) is self:
                tcp.unregisterProducer()

    def _quiet(self) -> None:
        self.call = None
        close_tcp(self.layer)


def watch_tls_close(transport: Any, reactor: Any,
                    on_out: Callable[[], None] | None = None) -> TLSCloseWatch | None:
    """A ``TLSCloseWatch`` of ``transport``'s lingering close, once its
    ``loseConnection`` has written our ``close_notify``; None where that is
    not so (no Twisted TLS layer; close_notify held back until buffered
    output is out; the client's came already: the TCP connection is
    closing) -- the close grace bounds those, as before."""
    layer = tls_layer(transport)
    if layer is None or getattr(layer, "transport", None) is None:
        return None
    try:
        shutdown = layer.getHandle().get_shutdown()
    except Exception:  # its connection is gone already
        return None
    if not shutdown & SSL.SENT_SHUTDOWN or shutdown & SSL.RECEIVED_SHUTDOWN:
        return None
    watch = TLSCloseWatch(layer, reactor, on_out)
    return watch if watch.start() else None


def close_tcp(layer: TLSMemoryBIOProtocol) -> None:
    """Close the TCP connection under Twisted's TLS ``layer`` once what it
    holds is out (``loseConnection`` of the TLS transport does nothing
    more once it sent ``close_notify``)."""
    tcp = layer.transport
    if tcp is not None:
        tcp.loseConnection()
