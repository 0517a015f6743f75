"""A loopback TCP connection served by Twisted's real transport on an
epoll reactor of its own, stepped by hand: what a test of the stop's
lingering close needs (a close with input unread is a reset only on a
real socket, and a hand-stepped reactor makes every run the same)."""

from __future__ import annotations

import socket
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


def step_until_closed(reactor: Any, transport: Any, turns: int = 50) -> None:
    """Step the reactor until ``transport`` is disconnected, or ``turns``
    steps have gone by (the caller asserts which)."""
    for _ in range(turns):
        if not transport.connected:
            return
        reactor.iterate(0.005)
