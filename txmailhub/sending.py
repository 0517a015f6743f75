"""Writing protocol responses to the transport with as few system calls as possible.

``ResponseWriter`` owns one thing: getting the bytes of a response onto
the connection.  On a plain TCP transport whose send buffer is empty (the
usual case for a lock-step client) it hands the bytes to the socket's
``send()`` at once: one system call, and no registering and unregistering
of the descriptor for writability, which ``transport.write`` followed by a
flush costs (two ``epoll_ctl`` calls per response).  Whatever the kernel
does not take, and every write on any other transport (TLS, STLS, UNIX
sockets, test transports) or while earlier bytes still wait, goes through
``transport.write``, so ordering, back-pressure (``pauseProducing``) and
connection-loss handling stay Twisted's.

Shared by the SMTP and POP3 adapters (both answer lock-step clients whose
latency is dominated by per-response overhead).  It must not decide what
is sent nor when a connection closes: the protocols do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.protocols.policies import ProtocolWrapper

__all__ = ["ResponseWriter", "closed_under_us", "set_reading", "socket_flusher"]


def set_reading(transport: Any, reading: bool, want: bool) -> bool:
    """Pause or resume reading from ``transport`` when ``want`` differs
    from ``reading`` (what the caller last asked); returns ``want``.  One
    place for the SMTP and POP3 adapters' flow control."""
    if want != reading:
        if want:
            transport.resumeProducing()
        else:
            transport.pauseProducing()
    return want


def _socket_of(transport: Any) -> Any:
    """The socket transport under ``transport``: TLS over a listener wraps
    it (after STARTTLS the socket transport is the protocol's own)."""
    return transport.transport if isinstance(transport, ProtocolWrapper) else transport


def closed_under_us(transport: Any) -> bool:
    """Whether the connection under ``transport`` is being closed without
    the protocol asking: a TLS layer closes the socket on its own when the
    peer ends the TLS session (close_notify) or breaks it, and tells the
    protocol nothing until ``connectionLost``.  That never comes while the
    protocol stays registered as a producer: Twisted resumes a producer it
    paused rather than close under it.  So a producer resumed while this is
    true must unregister (and close) for the connection to end."""
    return bool(getattr(_socket_of(transport), "disconnecting", False))


def socket_flusher(transport: Any) -> Callable[[], None] | None:
    """A function that writes what Twisted holds for the socket under
    ``transport`` now, in this reactor turn, instead of on the next one (a
    lock-step client waits for it); None where there is no such socket
    (test transports).

    It stands aside once the socket is closing: the socket transport's
    ``doWrite`` then reports "done" to its caller, which is meant to be the
    reactor (it disconnects on that answer).  Called by a protocol, the
    answer is lost and the socket stays open with nothing watching it;
    that happens when a TLS layer closes the socket on its own (the peer
    ended the TLS session) and a late reply is written after it."""
    sock = _socket_of(transport)
    do_write = getattr(sock, "doWrite", None)
    if do_write is None:
        return None

    def flush() -> None:
        if getattr(sock, "connected", True) and not sock.disconnecting:
            do_write()

    return flush


class ResponseWriter:
    """Writes to ``transport``; ``write(data)`` returns whether bytes were
    left in the transport's buffer (a flush, ``doWrite``, may send them
    in the same reactor turn)."""

    __slots__ = ("_send", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        # Only Twisted's own TCP connections: a wrapping transport (TLS
        # over a listener, a test double) may forward attribute lookups to
        # the socket underneath, which must never be written around it.
        if isinstance(transport, tcp.Connection):
            self._send = transport.socket.send
        else:
            self._send = None

    def write(self, data: bytes) -> bool:
        t = self._transport
        send = self._send
        if (
            send is None
            or t.TLS  # STLS started: bytes go through the TLS layer
            or t.dataBuffer  # earlier bytes still wait: keep the order
            or t._tempDataLen
            or not t.connected
            or t.disconnecting
        ):
            t.write(data)
            return True
        try:
            sent = send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # The connection is broken: let the transport find out and
            # report it through connectionLost as it always does.
            t.write(data)
            return True
        if sent < len(data):
            t.write(data[sent:])
            return True
        return False
