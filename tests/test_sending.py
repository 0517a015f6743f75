"""ResponseWriter: straight to the socket when nothing waits, else through Twisted."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from txmailhub.sending import ResponseWriter


def connection():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    reactor = MemoryReactor()
    t = tcp.Connection(ours, Protocol(), reactor)
    t.connected = True
    return t, peer, reactor


def drain(peer):
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk



def flush_all(t, peer) -> bytes:
    """Flush ``t`` as the reactor would until its buffers are empty; what
    the peer read meanwhile."""
    got = b""
    while t.doWrite() is None and (t.dataBuffer or t._tempDataBuffer):
        got += drain(peer)
    return got + drain(peer)

def test_sends_at_once_without_registering_for_writes():
    t, peer, reactor = connection()
    w = ResponseWriter(t)
    assert w.write(b"+OK 5 octets\r\nhello\r\n.\r\n") is False
    assert drain(peer) == b"+OK 5 octets\r\nhello\r\n.\r\n"
    assert t not in reactor.getWriters()
    assert t.dataBuffer == b"" and not t._tempDataBuffer


def test_what_the_kernel_does_not_take_is_buffered_in_order():
    t, peer, reactor = connection()
    w = ResponseWriter(t)
    big = bytes(range(256)) * 40000  # more than any socket buffer
    assert w.write(big) is True
    assert t in reactor.getWriters()  # the reactor sends the rest
    # later responses queue behind it rather than overtaking it
    assert w.write(b"+OK next\r\n") is True
    got = drain(peer)
    got += flush_all(t, peer)
    assert got == big + b"+OK next\r\n"


def test_tls_and_other_transports_go_through_write():
    t, peer, _ = connection()
    w = ResponseWriter(t)
    t.TLS = True  # as after startTLS
    written = []
    t.write = written.append
    assert w.write(b"+OK\r\n") is True
    assert written == [b"+OK\r\n"] and drain(peer) == b""
    st = StringTransport()
    assert ResponseWriter(st).write(b"+OK\r\n") is True
    assert st.value() == b"+OK\r\n"


def test_a_lost_connection_is_left_to_the_transport():
    t, peer, _ = connection()
    w = ResponseWriter(t)
    t.connected = False
    assert w.write(b"+OK\r\n") is True  # FileDescriptor.write drops it
    assert drain(peer) == b""
    t2, peer2, _ = connection()
    peer2.close()
    # a broken socket (EPIPE): the bytes go to transport.write, and its
    # doWrite reports the loss as it would have without us
    assert ResponseWriter(t2).write(b"+OK\r\n") is True
    assert t2._tempDataBuffer == [b"+OK\r\n"]
    assert isinstance(t2.doWrite(), Exception)


def test_a_partly_flushed_buffer_is_not_overtaken():
    # Twisted moved what waited into dataBuffer and sent part of it; the
    # client has read that: the next response still goes behind the rest
    t, peer, _ = connection()
    w = ResponseWriter(t)
    big = bytes(range(256)) * 40000
    assert w.write(big) is True
    got = drain(peer)
    assert t.doWrite() is None  # one flush: some sent, the rest in dataBuffer
    assert t.dataBuffer and not t._tempDataBuffer
    got += drain(peer)
    assert w.write(b"+OK next\r\n") is True
    got += flush_all(t, peer)
    assert got == big + b"+OK next\r\n"


def test_bytes_waiting_in_twisteds_buffer_are_not_overtaken():
    # the rest of a big response waits in Twisted's buffer, not yet flushed;
    # the client reads meanwhile and the kernel has room again
    t, peer, _ = connection()
    w = ResponseWriter(t)
    big = bytes(range(256)) * 40000
    assert w.write(big) is True
    got = drain(peer)
    assert t._tempDataBuffer
    assert w.write(b"+OK next\r\n") is True
    got += flush_all(t, peer)
    assert got == big + b"+OK next\r\n"


def test_the_last_octet_the_kernel_did_not_take_is_buffered():
    class OneShort:
        def __init__(self, sock):
            self._sock = sock

        def send(self, data):
            return self._sock.send(data[:-1])

        def __getattr__(self, name):
            return getattr(self._sock, name)

    t, peer, _ = connection()
    t.socket = OneShort(t.socket)
    w = ResponseWriter(t)
    assert w.write(b"+OK\r\n") is True
    assert drain(peer) == b"+OK\r"
    assert t._tempDataBuffer == [b"\n"]


def test_a_wrapping_transport_is_never_written_around():
    # TLS over a listener is a ProtocolWrapper: its attribute lookups reach
    # the TCP connection underneath (its socket, its TLS flag), and bytes
    # sent around it would go out in the clear
    from twisted.internet.protocol import Factory
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    t, peer, _ = connection()
    wrapper = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), Protocol())
    wrapper.makeConnection(t)
    written = []
    wrapper.write = written.append
    assert ResponseWriter(wrapper).write(b"+OK\r\n") is True
    assert written == [b"+OK\r\n"] and drain(peer) == b""
