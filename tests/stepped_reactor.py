"""A loopback TCP connection served by Twisted's real transport on an
epoll reactor of its own, stepped by hand: what a test of the stop's
lingering close needs (a close with input unread is a reset only on a
real socket, and a hand-stepped reactor makes every run the same)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any


def loopback_pair(small_buffers: bool = False) -> tuple[socket.socket, socket.socket,
                                                          socket.socket]:
    """``(listener, client, ours)``: a connected pair on 127.0.0.1, both
    ends non-blocking, the client without Nagle's delay (what it sends is
    in our socket when ``send`` returns, not held for a delayed ACK, a
    kernel timer).  ``small_buffers``: the kernel holds little of our
    replies, the rest waits in Twisted's buffer until the client reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if small_buffers:  # before connect: the window follows it
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    ours, _ = listener.accept()
    if small_buffers:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    client.setblocking(False)
    return listener, client, ours


def new_reactor() -> Any:
    """An epoll reactor that is not installed and never runs by itself."""
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def close_reactor(reactor: Any) -> None:
    """Drop its connections and give back its waker pipe and epoll (a
    reactor that never ran does not)."""
    reactor.disconnectAll()
    if reactor.waker is not None:
        reactor.removeReader(reactor.waker)
        reactor.waker.connectionLost(None)
    reactor._poller.close()


def client_reads(reactor: Any, client: socket.socket, until: bytes | None = None,
                 turns: int = 200) -> bytes:
    """Step the reactor and read the client's side: until ``until`` is
    read, or else the end of the stream (``<EOF>`` appended); a reset
    raises (``ConnectionResetError``)."""
    got = b""
    for _ in range(turns):
        reactor.iterate(0.005)
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            continue
        if not chunk:
            return got + b"<EOF>"
        got += chunk
        if until is not None and until in got:
            return got
    return got


def reads_to_the_end(reactor: Any, client: socket.socket, turns: int = 200) -> bytes:
    """``client_reads`` to the end of the stream (``<EOF>`` appended if it
    came within ``turns`` steps); a reset fails the test: the hub closed
    with the client's input unread, and what it had not read yet may be
    lost."""
    import pytest

    try:
        return client_reads(reactor, client, turns=turns)
    except ConnectionResetError:
        pytest.fail("reset instead of the last answers and the end of the stream")


def sends_on_then_half_closes(reactor: Any, client: socket.socket,
                              data: bytes = b"QUIT\r\n") -> bytes:
    """The hub's close goes through (the reactor stepped, the client
    reading nothing), then the client, still sending, sends ``data``,
    shuts its sending side down (as ``nc -N`` does) and reads to the end:
    what it read (``client_reads``).  A reset on any of these fails the
    test: the hub's close with the client's input unread."""
    import pytest

    for _ in range(20):
        reactor.iterate(0)
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        return client_reads(reactor, client)
    except OSError as e:  # ECONNRESET, EPIPE, ENOTCONN: the connection was reset
        pytest.fail(f"reset instead of the last line and the end of the stream: {e}")


def step_until_closed(reactor: Any, transport: Any, turns: int = 50) -> None:
    """Step the reactor until ``transport`` is disconnected, or ``turns``
    steps have gone by (the caller asserts which)."""
    for _ in range(turns):
        if not transport.connected:
            return
        reactor.iterate(0.005)


def tcp_loopback(reactor: Any, factory: Any, peer: Any, small_buffers: bool = False,
                 transport: Any = None) -> tuple[Any, Any, socket.socket, socket.socket]:
    """A session of ``factory`` over Twisted's real TCP transport on a
    loopback socket served by ``reactor`` (``new_reactor()``), the client's
    raw socket as ``loopback_pair`` makes it: ``(protocol, transport,
    listener, client)``.  ``transport``: the connection's class
    (``tcp.Connection`` by default; one with Twisted's TLS server mixin
    for STARTTLS).  The caller closes ``listener`` and ``client``."""
    from twisted.internet import tcp

    listener, client, ours = loopback_pair(small_buffers)
    proto = factory.buildProtocol(peer)
    t = (transport or tcp.Connection)(ours, proto, reactor)
    t.connected = True
    t.getPeer = lambda: peer
    proto.makeConnection(t)
    t.startReading()
    return proto, t, listener, client


@contextlib.contextmanager
def loopback_session(factory: Any, peer: Any, small_buffers: bool = False,
                     transport: Any = None) -> Iterator[tuple[Any, Any, Any, socket.socket]]:
    """``tcp_loopback`` on a ``new_reactor()`` of its own:
    ``(protocol, transport, reactor, client)``, all of it closed at the
    end."""
    reactor = new_reactor()
    proto, t, listener, client = tcp_loopback(reactor, factory, peer, small_buffers, transport)
    try:
        yield proto, t, reactor, client
    finally:
        close_reactor(reactor)
        client.close()
        listener.close()


def tls_loopback(reactor: Any, factory: Any, cert_and_key: Any, peer: Any,
                 small_buffers: bool = False) -> tuple[Any, Any, Any, socket.socket]:
    """An implicit-TLS session of ``factory`` (wrapped as ``service.py``
    wraps a ``tls_listen`` factory) over Twisted's real TCP transport on a
    loopback socket served by ``reactor`` (``new_reactor()``), with a stdlib
    ``ssl`` client, non-blocking, its handshake done:
    ``(protocol, transport, listener, client)``; ``transport`` is the TCP
    one under the TLS layer.  The caller closes ``listener`` and ``client``.
    ``small_buffers`` as for ``loopback_pair``."""
    from twisted.internet import tcp
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from txmailhub.service import tls_options

    cert, key = cert_and_key
    # the TLS layer's write aggregation runs on the stepped reactor
    tls = TLSMemoryBIOFactory(tls_options(str(cert), str(key)), False, factory, clock=reactor)
    listener, raw, ours = loopback_pair(small_buffers)
    wrapper = tls.buildProtocol(peer)
    t = tcp.Connection(ours, wrapper, reactor)
    t.connected = True
    t.getPeer = lambda: peer
    wrapper.makeConnection(t)
    t.startReading()
    return wrapper.wrappedProtocol, t, listener, tls_client(reactor, raw, cert)


def tls_client(reactor: Any, raw: socket.socket, cert: Any) -> Any:
    """``raw`` wrapped in a stdlib ``ssl`` client that trusts ``cert``,
    non-blocking, its handshake done by stepping ``reactor`` (the server's
    side): at the start of an implicit-TLS session or after STARTTLS's 220.
    An end of stream without close_notify raises (``tls_reads`` tells it
    from the hub's close_notify)."""
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    client = context.wrap_socket(raw, server_hostname="localhost",
                                 do_handshake_on_connect=False, suppress_ragged_eofs=False)
    for _ in range(200):
        try:
            client.do_handshake()
            break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            reactor.iterate(0.005)
    return client


def tls_reads(reactor: Any, client: Any, until: bytes | None = None, turns: int = 200) -> bytes:
    """``client_reads`` for a ``tls_loopback`` client: ``<close_notify>``
    appended at the end of the TLS session (the hub's ``close_notify``),
    ``<EOF>`` at a TCP end without it; a reset raises
    (``ConnectionResetError``)."""
    import ssl

    got = b""
    for _ in range(turns):
        reactor.iterate(0.005)
        try:
            chunk = client.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        except ssl.SSLEOFError:  # suppress_ragged_eofs=False: no close_notify
            return got + b"<EOF>"
        if not chunk:  # the peer's close_notify
            return got + b"<close_notify>"
        got += chunk
        if until is not None and until in got:
            return got
    return got


def tls_send(client: Any, data: bytes) -> int:
    """Send what the client's socket takes now of ``data`` (non-blocking);
    how much.  A reset raises."""
    import ssl

    sent = 0
    while sent < len(data):
        try:
            sent += client.send(data[sent:sent + 16384])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            break
    return sent


def tls_sends_on(reactor: Any, client: Any, until: Callable[[], bool], extra: int = 20) -> int:
    """A ``tls_loopback`` client that keeps sending, reading nothing, 16 KiB
    at a time: as much as ``LINGER_OCTETS`` and ``extra`` chunks more at
    most, the reactor stepped after each, until ``until()`` holds or a
    send fails (the hub closed with the client's input unread).  How much
    it sent (the caller asserts where it stopped)."""
    from txmailhub.linger import LINGER_OCTETS

    sent = 0
    for _ in range(LINGER_OCTETS // 16384 + extra):
        try:
            sent += tls_send(client, b"x" * 16384)
        except OSError:
            break
        reactor.iterate(0)
        if until():
            break
    return sent


def tls_reads_all(reactor: Any, client: Any, turns: int) -> bytes:
    """``tls_reads`` a step at a time, to the end of the TLS session or of
    the stream, for ``turns`` steps at most: a read that fails ends it, its
    error named (``<SSLError>``, ``<ConnectionResetError>``), so that the
    caller's assertion shows what was read before it."""
    got = b""
    for _ in range(turns):
        try:
            got += tls_reads(reactor, client, turns=1)
        except OSError as e:
            got += f"<{type(e).__name__}>".encode()
        if got.endswith((b"<close_notify>", b"<EOF>", b"Error>")):
            break
    return got
