"""The relay's DNS client over real UDP sockets (txmailhub.relay.dnsport):
the answers of a DNS server on loopback, a fresh source port per query,
nothing left registered with the reactor, and not a line in the log."""

from __future__ import annotations

import socket

import pytest
from relayutil import DNSServer
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.names import dns, error
from twisted.trial.unittest import TestCase

from txmailhub.relay.dnsport import QueryPort
from txmailhub.relay.mx import make_resolver

ZONE = {
    "remote.test": {"MX": [(10, "mx1.remote.test")]},
    "mx1.remote.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
}


def resolver_for(test, server_spec: str):
    """``make_resolver`` on the real reactor, its cache's expiry timers
    cancelled when the test ends (trial wants a clean reactor)."""
    resolver = make_resolver([server_spec], reactor=test.reactor)

    def forget():
        for call in list(resolver.resolvers[0].cancel.values()):
            if call.active():
                call.cancel()

    test.addCleanup(forget)
    return resolver


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class ResolverOverUDPTests(TestCase):
    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def serve(self, **kwargs):
        server = DNSServer(ZONE, **kwargs)
        self.addCleanup(server.stop)
        return server

    def assert_clean(self):
        # Every query's socket is closed and unregistered again ...
        self.assertEqual([r for r in self.reactor.getReaders() if isinstance(r, QueryPort)], [])
        # ... and no port opened or closed on the way said so in the log.
        self.assertEqual([e.get("log_format") or e.get("message") for e in self.events], [])

    @defer.inlineCallbacks
    def test_answers_come_back_and_nothing_is_logged(self):
        server = self.serve()
        resolver = resolver_for(self, f"127.0.0.1:{server.port}")
        # one try each, given the time a loaded machine may take (the first
        # of twisted.names' own is a second: a query sent again is one more)
        answers, _, _ = yield resolver.lookupMailExchange("remote.test", timeout=[30])
        self.assertEqual([(a.payload.preference, a.payload.name.name) for a in answers],
                         [(10, b"mx1.remote.test")])
        answers, _, _ = yield resolver.lookupAddress("mx1.remote.test", timeout=[30])
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])
        answers, _, _ = yield resolver.lookupIPV6Address("mx1.remote.test", timeout=[30])
        self.assertEqual([socket.inet_ntop(socket.AF_INET6, a.payload.address)
                          for a in answers], ["::1"])
        self.assertEqual(server.queries, [("remote.test", dns.MX), ("mx1.remote.test", dns.A),
                                          ("mx1.remote.test", dns.AAAA)])
        # a new random source port for each query (no fixed port to forge
        # answers against), as twisted.names does it
        ports = [peer[1] for peer in server.peers]
        self.assertEqual(len(set(ports)), 3)
        self.assert_clean()

    @defer.inlineCallbacks
    def test_answers_are_kept_for_their_ttl(self):
        # twisted.names' chain reads its cache but never filled it: every
        # message relayed asked for its MX and addresses again
        server = self.serve()
        resolver = resolver_for(self, f"127.0.0.1:{server.port}")
        for _ in range(3):
            # (one try: a query sent again after a slow first second is one more)
            answers, _, _ = yield resolver.lookupMailExchange("remote.test", timeout=[30])
            self.assertEqual([a.payload.name.name for a in answers], [b"mx1.remote.test"])
        self.assertEqual(server.queries, [("remote.test", dns.MX)])
        self.assert_clean()

    @defer.inlineCallbacks
    def test_unknown_name(self):
        server = self.serve()
        resolver = resolver_for(self, f"127.0.0.1:{server.port}")
        with pytest.raises(error.DNSNameError):
            yield resolver.lookupMailExchange("nowhere.test")
        self.assert_clean()

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_times_out_after_the_retries(self):
        server = self.serve(silent=True)
        resolver = resolver_for(self, f"127.0.0.1:{server.port}")
        with pytest.raises(defer.TimeoutError):
            yield resolver.lookupAddress("remote.test", timeout=[0.1, 0.2])
        # sent, and sent again: every query of the lookup is in the server's
        # socket before it gave up, and its thread reads them in order, so
        # they are all counted once a datagram of the test's, sent now, is
        # (a cap for a loaded machine: a minute)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.bind(("127.0.0.1", 0))
            marker.sendto(b"the end", ("127.0.0.1", server.port))
            for _ in range(3000):
                if marker.getsockname() in server.peers:
                    break
                yield deferLater(self.reactor, 0.02, lambda: None)
            self.assertIn(marker.getsockname(), server.peers)
        self.assertEqual(len(server.peers), 3)  # the lookup's two and the marker
        self.assert_clean()

    @defer.inlineCallbacks
    def test_a_nameserver_over_ipv6(self):
        if not _ipv6_loopback():
            raise self.skipTest("no IPv6 loopback here")
        server = self.serve(host="::1")
        resolver = resolver_for(self, f"[::1]:{server.port}")
        answers, _, _ = yield resolver.lookupAddress("mx1.remote.test")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])
        self.assert_clean()


    @defer.inlineCallbacks
    def test_a_nameserver_given_as_a_v4_mapped_address(self):
        # the answer comes from "::ffff:127.0.0.1"; the setting may spell it
        # "::ffff:7f00:1": it must still be matched to the query
        if not _ipv6_loopback():
            raise self.skipTest("no IPv6 here")
        server = self.serve()
        resolver = resolver_for(self, f"[::ffff:7f00:1]:{server.port}")
        answers, _, _ = yield resolver.lookupAddress("mx1.remote.test", timeout=[30])
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])
        self.assert_clean()


class QueryPortTests(TestCase):
    def test_stop_listening_twice_and_a_closed_port_reads_nothing(self):
        from twisted.internet import reactor

        received = []

        class Protocol(dns.DNSDatagramProtocol):
            def datagramReceived(self, data, addr):
                received.append((data, addr))

        proto = Protocol(None, reactor=reactor)
        proto.noisy = False
        port = QueryPort(reactor, proto, "")
        host = port.getHost()
        self.assertEqual((host.type, host.host), ("UDP", "0.0.0.0"))
        self.assertIn(port, reactor.getReaders())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"x", ("127.0.0.1", host.port))
            import time

            time.sleep(0.05)
            port.doRead()
            self.assertEqual(received, [(b"x", ("127.0.0.1", peer.getsockname()[1]))])
        port.stopListening()
        port.stopListening()
        self.assertNotIn(port, reactor.getReaders())
        self.assertEqual(port.fileno(), -1)
        self.assertIsNone(proto.transport)
        port.doRead()  # a late wake-up: nothing to read, no error
        self.assertEqual(len(received), 1)


class FailureTests(TestCase):
    """What twisted.names' own port handles, and ours must too."""

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = DNSServer(ZONE)
        self.addCleanup(self.server.stop)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def resolver(self):
        return resolver_for(self, f"127.0.0.1:{self.server.port}")

    def test_source_ports_are_unprivileged_and_a_refused_one_is_retried(self):
        # a hub that dropped root cannot bind below 1024 (EACCES): another
        # port is tried, never a failed query
        import errno

        from txmailhub.relay import dnsport

        refusals = []
        real = socket.socket

        class Picky(real):
            def bind(self, address):
                if not refusals:
                    refusals.append(address[1])
                    raise PermissionError(errno.EACCES, "Permission denied")
                return super().bind(address)

        self.patch(dnsport.socket, "socket", Picky)
        sources = iter([0, 80, 64511])
        self.patch(dnsport.dns, "randomSource", lambda: next(sources))
        port = QueryPort(self.reactor, dns.DNSDatagramProtocol(None, reactor=self.reactor))
        try:
            self.assertEqual(refusals, [1024])
            self.assertEqual(port.getHost().port, 1024 + 80)
        finally:
            port.stopListening()

    @defer.inlineCallbacks
    def test_no_port_fails_the_query_and_the_next_lookup_still_works(self):
        import errno

        from twisted.internet.error import CannotListenError

        from txmailhub.relay import dnsport

        real = dnsport._bind_random
        calls = []

        def out_of_descriptors(family, interface):
            calls.append(1)
            if len(calls) == 1:
                raise CannotListenError(interface, 0, OSError(errno.EMFILE, "Too many open files"))
            return real(family, interface)

        self.patch(dnsport, "_bind_random", out_of_descriptors)
        resolver = self.resolver()
        with pytest.raises(CannotListenError):
            yield resolver.lookupAddress("mx1.remote.test")
        # twisted.names keeps a lookup in flight per name: a query that raised
        # instead of failing its Deferred would leave it there for good
        answers, _, _ = yield resolver.lookupAddress("mx1.remote.test")
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_a_port_the_reactor_drops_mid_query_means_a_retry(self):
        resolver = self.resolver()
        # (the retry's answer given the time a loaded machine may take)
        d = resolver.lookupAddress("mx1.remote.test", timeout=[0.3, 30])
        [port] = [r for r in self.reactor.getReaders() if isinstance(r, QueryPort)]
        self.reactor.removeReader(port)
        port.connectionLost(None)  # as the reactor does at shutdown
        answers, _, _ = yield d
        self.assertEqual([a.payload.dottedQuad() for a in answers], ["127.0.0.1"])
        self.assertEqual(len(self.server.peers), 2)  # the first answer was lost

    def test_a_datagram_that_breaks_the_protocol_is_logged_and_the_port_reads_on(self):
        received = []

        class Fragile(dns.DNSDatagramProtocol):
            def datagramReceived(self, data, addr):
                received.append(data)
                if data == b"bad":
                    raise ValueError("cannot parse")

        port = QueryPort(self.reactor, Fragile(None, reactor=self.reactor))
        self.addCleanup(port.stopListening)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"bad", ("127.0.0.1", port.getHost().port))
            peer.sendto(b"good", ("127.0.0.1", port.getHost().port))
            import time

            time.sleep(0.05)
            port.doRead()
        self.assertEqual(received, [b"bad", b"good"])
        self.assertIn(port, self.reactor.getReaders())
        [failure] = [e for e in self.events if "log_failure" in e]
        self.assertIsInstance(failure["log_failure"].value, ValueError)
        self.flushLoggedErrors(ValueError)

    def test_only_addresses_are_written_to(self):
        from twisted.internet.error import InvalidAddressError

        port = QueryPort(self.reactor, dns.DNSDatagramProtocol(None, reactor=self.reactor))
        self.addCleanup(port.stopListening)
        with pytest.raises(InvalidAddressError):
            port.write(b"query", ("dns.example", 53))


def test_a_truncated_answer_over_tcp_is_final():
    # a server that sets TC over TCP too made twisted.names ask again for as
    # long as it did (thousands of queries a second, an attempt that never
    # ended); one TCP retry, and its answer is taken (RFC 7766 5)
    from twisted.internet.task import Clock

    from txmailhub.relay.dnsport import ForeignAnswer, Resolver

    resolver = Resolver(servers=[("127.0.0.1", 53)], reactor=Clock())
    record = dns.RRHeader(b"x.test", dns.A, dns.IN, 60, dns.Record_A("192.0.2.1"))
    asked = []

    def query_tcp(queries, timeout=10):
        asked.append(queries)
        answer = dns.Message(trunc=1)
        answer.queries = list(queries)
        answer.answers = [record]
        return defer.succeed(answer)

    resolver.queryTCP = query_tcp
    udp = dns.Message(trunc=1)
    udp.queries = [dns.Query(b"x.test", dns.A)]
    out = []
    d = defer.maybeDeferred(resolver.filterAnswers, udp)
    d.addBoth(out.append)
    assert len(asked) == 1
    assert out == [([record], [], [])]
    # the TCP answer must answer the question too (RFC 5452 9.1)
    udp.queries = [dns.Query(b"other.test", dns.A)]
    resolver.queryTCP = lambda queries, timeout=10: defer.succeed(_answer_to(b"x.test"))
    out = []
    defer.maybeDeferred(resolver.filterAnswers, udp).addBoth(out.append)
    assert out[0].check(ForeignAnswer)


def _answer_to(name: bytes) -> dns.Message:
    message = dns.Message()
    message.queries = [dns.Query(name, dns.A)]
    return message


def test_an_answer_to_another_question_is_not_taken(monkeypatch):
    # RFC 5452 9.1: a forged reply must match the question as well as the
    # ID and the port
    from twisted.internet.task import Clock
    from twisted.names import client

    from txmailhub.relay.dnsport import ForeignAnswer, Resolver

    def reply(name):
        message = dns.Message()
        message.queries = [dns.Query(name, dns.MX)]
        return message

    resolver = Resolver(servers=[("127.0.0.1", 53)], reactor=Clock())
    asked = [dns.Query(b"remote.test", dns.MX)]
    for name, ok in ((b"Remote.TEST", True), (b"evil.test", False)):
        monkeypatch.setattr(client.Resolver, "_query",
                            lambda self, *args, name=name: defer.succeed(reply(name)))
        out = []
        resolver._query(("127.0.0.1", 53), asked, 5, 1).addBoth(out.append)
        if ok:
            assert out[0].queries[0].name.name == b"Remote.TEST"
        else:
            assert out[0].check(ForeignAnswer)


def test_an_error_reply_without_a_question_is_still_an_answer(monkeypatch):
    # RFC 1035 allows an error reply to leave the question out: its NXDOMAIN
    # stays an NXDOMAIN, not a failed query
    from twisted.internet.task import Clock
    from twisted.names import client

    from txmailhub.relay.dnsport import Resolver

    def reply(*args):
        message = dns.Message(rCode=dns.ENAME)
        return defer.succeed(message)

    monkeypatch.setattr(client.Resolver, "_query", lambda self, *args: reply())
    resolver = Resolver(servers=[("127.0.0.1", 53)], reactor=Clock())
    out = []
    resolver._query(("127.0.0.1", 53), [dns.Query(b"gone.test", dns.MX)], 5, 1).addBoth(
        out.append)
    assert isinstance(out[0], dns.Message) and out[0].rCode == dns.ENAME


class _TruncatingServer(DNSServer):
    """Answers over UDP with TC set and no records, in full over TCP on the
    same port number (one query a connection, then it closes)."""

    def __init__(self, zone: dict) -> None:
        import threading

        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(4)
        self.tcp.settimeout(0.2)
        self.port = self.tcp.getsockname()[1]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.zone, self.silent, self._stop = zone, False, False
        self.queries, self.peers = [], []
        self.tcp_queries: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._tcp_thread = threading.Thread(target=self._serve_tcp, daemon=True)
        self._tcp_thread.start()

    def stop(self) -> None:
        super().stop()
        self._tcp_thread.join(5)
        self.tcp.close()

    def _answer(self, data: bytes) -> bytes:
        full = dns.Message()
        full.fromStr(super()._answer(data))
        full.trunc = 1
        full.answers = []
        return full.toStr()

    def _serve_tcp(self) -> None:
        import struct

        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                query = data[2:]
                self.tcp_queries.append(query)
                answer = DNSServer._answer(self, query)
                conn.sendall(struct.pack("!H", len(answer)) + answer)


class TruncatedOverUDPTests(TestCase):
    @defer.inlineCallbacks
    def test_a_truncated_udp_answer_is_asked_again_over_tcp(self):
        # RFC 1035 4.2.1 / RFC 7766 5: TC set means the answer did not fit;
        # the query goes again over TCP, and its answer is the one taken
        from twisted.internet import reactor

        from txmailhub.relay.dnsport import Resolver

        server = _TruncatingServer(ZONE)
        self.addCleanup(server.stop)
        resolver = Resolver(servers=[("127.0.0.1", server.port)], reactor=reactor)
        answers, _, _ = yield resolver.lookupMailExchange("remote.test", timeout=[5])
        self.assertEqual([(a.payload.preference, a.payload.name.name) for a in answers],
                         [(10, b"mx1.remote.test")])
        self.assertEqual(len(server.tcp_queries), 1)
        # the server closes its end after the answer: the connection is
        # forgotten, and nothing of it is left on the reactor
        for _ in range(100):
            if not resolver.factory.connectors and not resolver.connections:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(resolver.factory.connectors, set())
        self.assertEqual(resolver.connections, [])
        self.assertEqual([r for r in reactor.getReaders() if isinstance(r, QueryPort)], [])
