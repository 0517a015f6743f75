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

from typing import Any

from twisted.internet import tcp

__all__ = ["ResponseWriter", "set_reading"]


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
