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
``close_notify`` are out (``stop_reading_under_tls``), and the close grace
still ends it (an abort)."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

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
