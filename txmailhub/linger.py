"""The hub's stop's lingering close, shared by SMTP and POP3.

A socket closed with input unread is answered with a TCP reset, and a
client still sending (the rest of a message, pipelined commands) could
lose the stop's last line (``421``, ``-ERR [SYS/TEMP]``) to it
(``ECONNRESET``) instead of reading it and the end of the stream.  So on
plain TCP a session told the stop shuts down its sending side only and
reads on, dropping what comes, until the client closes, ``LINGER_OCTETS``
have come, or the stop's close grace has passed."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport

LINGER_OCTETS = 64 * 1024
"""Octets of input read and dropped during the stop's lingering close."""


def can_linger(transport: Any, tls: bool) -> bool:
    """Whether ``transport`` can half-close: plain TCP or a ``unix:``
    socket.  Not under TLS (implicit, or after STARTTLS/STLS): Twisted's
    TLS transport has no half-close, and a TCP one under it would skip
    close_notify."""
    return not tls and not ISSLTransport.providedBy(transport) and hasattr(
        transport, "loseWriteConnection")


def drop_input(transport: Any, left: int, data: bytes) -> int:
    """Drop ``data`` read during the lingering close; ``left``, the octets
    it may still read, less them is returned.  Past the bound the
    connection is closed, come what may."""
    left -= len(data)
    if left < 0:
        transport.loseConnection()
    return left
