"""A ``421`` in the middle of the message data over Twisted's own TLS layer
(``TLSMemoryBIOProtocol`` on Twisted's socket-transport logic, in memory:
``tls_loopback.MemorySocket``; a stdlib ``ssl`` server as the next hop):
the TLS layer drives the pull producer with a cooperator of its own, and
the session's stop of the producer must end that too -- not one octet
more of the message, no failure logged."""

from __future__ import annotations

import ssl
from unittest import mock

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tests.test_relay_attempt import BOB
from tests.tls_loopback import MemorySocket
from txmailhub.relay.attempt import SMTPClientProtocol
from txmailhub.smtp.client import ClientSession

PEER = IPv4Address("TCP", "127.0.0.1", 25)


class _Socket(MemorySocket):
    """A ``MemorySocket`` aborted as Twisted's TCP transport is: nothing
    more read or written, and the connection lost in a later turn (the
    TLS layer aborts it from inside its own ``dataReceived``)."""

    def abortConnection(self) -> None:
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self.stopReading()
        self.stopWriting()
        self.reactor.callLater(0, self.connectionLost, Failure(error.ConnectionAborted()))


class _Server:
    """The next hop: a stdlib ``ssl`` server over memory BIOs, reading
    from the hub's socket what it lets it send (``room`` a step)."""

    def __init__(self, clock, socket, cert_and_key) -> None:
        self.clock, self.socket = clock, socket
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, cert_and_key))
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self.read = b""  # what it read of the hub's data

    def step(self, room: int = 1 << 20) -> None:
        """A turn: the hub's timed calls (the TLS layer's cooperator), the
        hub's socket sends up to ``room`` octets, the server reads them and
        answers what it has to send."""
        self.clock.advance(0)
        self.socket.room = room
        self.socket.flush()
        self.socket.room = 0
        self._in.write(bytes(self.socket.sent))
        self.socket.sent.clear()
        try:
            self.ssl.do_handshake()
            while data := self.ssl.read(65536):
                self.read += data
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        wire = self._out.read()
        if wire and self.socket.reading():
            self.socket.protocol.dataReceived(wire)

    def send(self, data: bytes) -> None:
        self.ssl.write(data)
        self.step()

    def until(self, done, room: int = 1 << 20) -> None:
        for _ in range(1000):
            if done():
                return
            self.step(room)
        raise AssertionError("never")


@pytest.mark.parametrize("close", ["abort", "loseConnection"])
def test_no_message_data_after_a_421_in_the_middle_of_it_under_tls(tmp_path, tls_files, close):
    # "abort": the TLS layer's cooperator still asks for data until the
    # TCP transport says the connection is lost, a turn later (what it is
    # given then goes nowhere, but the hub read it and handed it on);
    # "loseConnection": a transport without abortConnection, which the
    # hub closes politely, and Twisted's TLS layer then waits for a
    # registered producer to finish -- the rest of the message, "."
    # included, sent to a server that ended the session.  The session
    # stops the producer at the 421: nothing more is written either way
    body = b"x" * 2_000_000
    (tmp_path / "m").write_bytes(body)
    clock = MemoryReactorClock()
    # Twisted's TLS layer turns a pull producer into a push one with the
    # global cooperator, which the global reactor (not running) would
    # drive: one of the test's clock, a call for data per turn (not as
    # many as 10 ms of real time allow)
    cooperator = Cooperator(terminationPredicateFactory=lambda: lambda: True,
                            scheduler=lambda f: clock.callLater(0, f))
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        with mock.patch("twisted.internet._producer_helpers.cooperate", cooperator.cooperate):
            session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)],
                                    size=len(body), tls="none")
            proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None,
                                       str(tmp_path / "c"))
            creator = optionsForClientTLS(
                "localhost", trustRoot=Certificate.loadPEM(tls_files[0].read_bytes()))
            wrapper = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: proto),
                                          clock=clock).buildProtocol(PEER)
            if close == "loseConnection":
                wrapper.abortConnection = None
            socket = _Socket(clock, wrapper)
            wrapper.makeConnection(socket)
            socket.startReading()
            server = _Server(clock, socket, tls_files)
            server.until(lambda: server.ssl.version() is not None)
            server.send(b"220 hi\r\n")
            for reply in (b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
                server.until(lambda: server.read.endswith(b"\r\n"))
                server.read = b""
                server.send(reply)
            # the data streams, a little at a time: the server reads some
            server.until(lambda: len(server.read) > 100_000, room=16384)
            producer = proto._producer
            assert producer is not None and not producer.dot_written
            server.send(b"421 4.3.2 shutting down\r\n")
            assert proto._closing
            written = producer.octets
            for _ in range(200):  # the server reads on: whatever comes now
                server.step()
            assert producer.octets == written < len(body)
            assert proto._producer is None and proto._file is None
            if close == "abort":
                assert proto._lost
                assert proto.done.result.session_error.code == 421
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [formatEvent(e) for e in events if e.get("log_failure") is not None] == []
