"""Implicit TLS in memory, for the adapters' tests: Twisted's own TLS layer
(``TLSMemoryBIOFactory``, as ``service.py`` wraps a ``tls_listen`` factory)
over Twisted's own socket-transport logic (``abstract.FileDescriptor``: the
write buffer, pausing the registered producer when it is full, resuming it
when it drains, a close that waits for both), with a stdlib ``ssl`` client
on the other side and no socket.  The test plays the reactor: ``flush()``
is one writable event, ``room`` what the client's socket takes."""

from __future__ import annotations

import ssl

from twisted.internet import abstract, error
from twisted.internet._newtls import ConnectionMixin
from twisted.internet.address import IPv4Address
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from txmailhub.service import tls_options

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class MemorySocket(abstract.FileDescriptor):
    """A connected socket transport whose peer takes ``room`` octets."""

    def __init__(self, reactor, protocol) -> None:
        super().__init__(reactor)
        self.protocol = protocol
        self.connected = 1
        self.room = 0
        self.sent = bytearray()  # on its way to the client, not yet read by it
        self.lost: Failure | None = None

    def getPeer(self):
        return PEER

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 995)

    def writeSomeData(self, data: bytes) -> int:
        n = min(len(data), self.room)
        self.sent += data[:n]
        self.room -= n
        return n

    def reading(self) -> bool:
        return self in self.reactor.getReaders()

    def writing(self) -> bool:
        return self in self.reactor.getWriters()

    def drain(self) -> None:
        """The client reads everything the server has written so far."""
        while self.writing():
            self.room = 1 << 30
            self.flush()
        self.room = 0

    def flush(self) -> None:
        """What the reactor does when the socket is writable."""
        if self.writing():
            why = self.doWrite()
            if why is not None:
                self.connectionLost(Failure(why))

    def abortConnection(self) -> None:
        if self.connected:
            self.connectionLost(Failure(error.ConnectionAborted()))

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason
        super().connectionLost(reason)
        self.protocol.connectionLost(reason)


class StartTLSSocket(ConnectionMixin, MemorySocket):
    """A ``MemorySocket`` that can start TLS the way Twisted's TCP
    connections do (``startTLS``: the TLS layer goes between the socket and
    the protocol, and a registered producer is moved into it)."""

    _tlsClientDefault = False  # the server side

    def startTLS(self, ctx, normal: bool = True) -> None:
        super().startTLS(ctx, normal)
        # Twisted's startTLS gives the TLS layer the global reactor to time
        # its write aggregation; the test's clock must drive it instead.
        aggregator = getattr(self.protocol, "_aggregator", None)
        if aggregator is not None:
            aggregator._clock = self.reactor


class TLSClient:
    """A stdlib ``ssl`` client over memory BIOs, connected to ``factory``
    through Twisted's TLS layer and a ``MemorySocket``."""

    def __init__(self, factory, clock, cert_and_key, socket=None) -> None:
        cert, key = cert_and_key
        self.clock = clock
        if socket is None:  # implicit TLS: the listener's factory wrapped
            tls = TLSMemoryBIOFactory(tls_options(str(cert), str(key)), False, factory,
                                      clock=clock)
            self.server = tls.buildProtocol(PEER)
            self.socket = MemorySocket(clock, self.server)
            self.server.makeConnection(self.socket)
            self.socket.startReading()
        else:  # STARTTLS/STLS: the server started TLS on ``socket``
            self.server = socket.protocol
            self.socket = socket
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context(cafile=str(cert))
        self.ssl = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        self._got = bytearray()  # read and not yet returned by receive()
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_wire()
                self._got += self._read()
        self._send_wire()  # the client's Finished
        self._got += self._read()

    def _send_wire(self) -> None:
        wire = self._out.read()
        if wire:
            assert self.socket.reading(), "the server does not read"
            self.server.dataReceived(wire)

    def send(self, data: bytes) -> None:
        self.ssl.write(data)
        self._send_wire()

    def receive(self) -> bytes:
        """Read everything the server has sent (and lets it send more)."""
        got, self._got = bytes(self._got), bytearray()
        return got + self._read()

    def _read(self) -> bytes:
        got = bytearray()
        for _ in range(1000):
            self.clock.advance(0)  # the TLS layer's write aggregation
            self.socket.room = 1 << 30
            self.socket.flush()
            if not self.socket.sent:
                break
            self._in.write(bytes(self.socket.sent))
            self.socket.sent.clear()
            while True:
                try:
                    data = self.ssl.read(1 << 16)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not data:
                    break
                got += data
        self.socket.room = 0  # until the next receive()
        return bytes(got)

    def close_notify(self) -> None:
        """End the TLS session, as a client's ``SSLSocket.unwrap()`` or
        asyncio's ``close()`` does, without reading what is pending."""
        try:
            self.ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._send_wire()

    def send_and_close_notify(self, data: bytes) -> None:
        """``data`` and then the end of the TLS session in one read of the
        server's socket: a client that writes its last commands, closes
        (``SSLSocket.unwrap()``, asyncio's ``close()``) and whose TCP
        segments arrive together.  The TLS layer hands the server ``data``
        and then closes the socket on its own in the same ``dataReceived``."""
        self.ssl.write(data)
        try:
            self.ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._send_wire()

    def close_notify_while_paused(self) -> MemorySocket:
        """``close_notify`` to a server that Twisted has paused (replies pile
        up unread) and that still reads: the TLS layer closes the socket on
        its own, and the connection must really end.  Returns the socket."""
        sock = self.socket
        assert sock.producerPaused and sock.reading()
        self.close_notify()
        assert sock.disconnecting  # the TLS layer's close, not ours
        self.receive()
        assert sock.lost is not None and not sock.writing()
        return sock
