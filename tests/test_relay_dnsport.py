"""txmailhub.relay.dnsport: the client resolver's own behaviour."""

from __future__ import annotations

import errno

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.names import dns

from txmailhub.relay import dnsport


def test_resolv_conf_that_cannot_be_opened_is_read_again_later(tmp_path, monkeypatch, log_events):
    """Out of descriptors (EMFILE) at the periodic look at resolv.conf:
    twisted.names raised out of the timed call and never looked again,
    so a later change of name servers went unseen until a restart."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    clock = Clock()
    resolver = dnsport.Resolver(resolv=str(conf).encode(), reactor=clock)
    assert [addr for addr, _ in resolver.dynServers] == ["192.0.2.1"]

    real_open = resolver._openFile

    def no_descriptors(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(resolver, "_openFile", no_descriptors)
    clock.advance(resolver._resolvReadInterval)  # must not raise
    assert [c for c in clock.getDelayedCalls() if c.active()]  # and looks again
    assert any("Too many open files" in str(e.get("error")) for e in log_events)

    monkeypatch.setattr(resolver, "_openFile", real_open)
    conf.write_text("nameserver 192.0.2.2\n")
    resolver._lastResolvTime = None  # the same second: mtime alone would not tell
    clock.advance(resolver._resolvReadInterval)
    assert [addr for addr, _ in resolver.dynServers] == ["192.0.2.2"]


def test_resolv_conf_path_is_logged_as_text(tmp_path, monkeypatch, log_events):
    """The hub names resolv.conf as bytes (b"/etc/resolv.conf", what
    twisted.names wants): the log line must show the path, not its repr."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    clock = Clock()
    resolver = dnsport.Resolver(resolv=str(conf).encode(), reactor=clock)

    def no_descriptors(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(resolver, "_openFile", no_descriptors)
    clock.advance(resolver._resolvReadInterval)
    (event,) = [e for e in log_events if "Too many open files" in str(e.get("error"))]
    assert event["path"] == str(conf)


class _ReaderClock(Clock):
    """A clock that also takes the query ports' ``addReader``."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: set = set()

    def addReader(self, reader) -> None:
        self.readers.add(reader)

    def removeReader(self, reader) -> None:
        self.readers.discard(reader)


def test_stop_ends_the_queries_under_way():
    # A server that does not answer: twisted.names resends for up to a
    # minute (1 + 3 + 11 + 45 s), a port open all along.  The relay
    # stopped (an application running on) left that going; stop() fails
    # the query at once (not as a timeout: that would be retried) and
    # closes its port.
    import socket

    from twisted.internet import defer

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        clock = _ReaderClock()
        resolver = dnsport.Resolver(servers=[silent.getsockname()], reactor=clock)
        d = resolver.lookupAddress("stalled.example")
        [port] = clock.readers
        assert clock.getDelayedCalls()  # the query's timeout and resend
        clock.advance(1)  # the first timeout: resent on a new port
        [port] = clock.readers
        resolver.stop()
        failures: list = []
        d.addErrback(failures.append)
        [failure] = failures
        assert failure.check(defer.CancelledError)
        assert clock.readers == set() and port.fileno() == -1  # closed
        assert clock.getDelayedCalls() == []
    finally:
        silent.close()


def test_a_tcp_connection_made_after_the_stop_is_cut():
    # A truncated answer is asked again over TCP: twisted.names connects,
    # and sends the query once connected.  stop() failed the query waiting
    # for that connection, but the connection went on: once made, it
    # joined the resolver's connections and stayed open (a socket of the
    # stopped relay on a reactor that runs on) until the server closed it.
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.names import dns

    reactor = MemoryReactorClock()
    resolver = dnsport.Resolver(servers=[("127.0.0.1", 53)], reactor=reactor)
    d = resolver.queryTCP([dns.Query(b"big.example", dns.MX)])
    [(_host, _port, factory, _timeout, _bind)] = reactor.tcpClients
    resolver.stop()
    failures: list = []
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(defer.CancelledError)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 53))
    transport = StringTransport()
    proto.makeConnection(transport)  # connected after the stop
    assert transport.disconnecting
    assert transport.value() == b""  # no query on it
    assert resolver.connections == []


def test_stop_ends_a_tcp_connection_attempt_under_way():
    # The connection attempt itself (a socket, and the connector's 30 s
    # timeout on the reactor) went on after stop() until it was made or
    # timed out: a server that does not answer the SYN kept both on the
    # reactor of an application that runs on, well after the relay's
    # Deferred had fired.  stop() stops the connecting.
    from twisted.internet.testing import MemoryReactorClock
    from twisted.names import dns

    reactor = MemoryReactorClock()
    resolver = dnsport.Resolver(servers=[("127.0.0.1", 53)], reactor=reactor)
    resolver.queryTCP([dns.Query(b"big.example", dns.MX)]).addErrback(lambda _: None)
    [connector] = reactor.connectors
    resolver.stop()
    assert connector.stoppedConnecting


def test_a_tcp_connection_that_cannot_be_made_fails_its_query_and_is_forgotten():
    # A name server that refuses the TCP retry of a truncated answer: the
    # query fails (a temporary error), and its connector is not kept --
    # one per truncated answer for the life of the hub, and a stop() later
    # would stop connectors long gone.
    from twisted.internet import error
    from twisted.internet.testing import MemoryReactorClock
    from twisted.names import dns
    from twisted.python.failure import Failure

    reactor = MemoryReactorClock()
    resolver = dnsport.Resolver(servers=[("127.0.0.1", 53)], reactor=reactor)
    d = resolver.queryTCP([dns.Query(b"big.example", dns.MX)])
    [connector] = reactor.connectors
    assert resolver.factory.connectors == {connector}
    resolver.factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
    failures: list = []
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(error.ConnectionRefusedError)
    assert resolver.factory.connectors == set()
    resolver.stop()
    assert not connector.stoppedConnecting


def test_stop_cuts_a_tcp_connection_whose_answer_is_awaited():
    # Connected, the query sent, no answer yet: stop() fails the query at
    # once (not a timeout, which would be retried), cancels its timeout and
    # cuts the connection -- it stayed open on the reactor of an
    # application that runs on until the server closed it.
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from twisted.names import dns

    reactor = MemoryReactorClock()
    resolver = dnsport.Resolver(servers=[("127.0.0.1", 53)], reactor=reactor)
    d = resolver.queryTCP([dns.Query(b"big.example", dns.MX)])
    [(_host, _port, factory, _timeout, _bind)] = reactor.tcpClients
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 53))
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() != b""  # the query went out
    assert resolver.connections == [proto]
    assert not d.called
    resolver.stop()
    failures: list = []
    d.addErrback(failures.append)
    [failure] = failures
    assert failure.check(defer.CancelledError)
    assert transport.disconnecting
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _answer(data: bytes, address: str) -> bytes:
    from twisted.names import dns

    query = dns.Message()
    query.fromStr(data)
    reply = dns.Message(id=query.id, answer=1, rCode=dns.OK)
    reply.queries = query.queries
    reply.answers = [dns.RRHeader(query.queries[0].name.name, dns.A, ttl=60,
                                  payload=dns.Record_A(address))]
    return reply.toStr()


def _read_when_ready(port) -> None:
    """The reactor's part: ``doRead`` once the port's socket is readable
    (a socket timeout, not a wall-clock bound on the answer)."""
    import select

    readable, _, _ = select.select([port.socket], [], [], 10)
    assert readable, "no datagram came"
    port.doRead()


def _lookup(resolver, clock, server) -> tuple:
    """A lookup of mx.example started, its query taken at ``server``: the
    query's port, the query, its source, and the list the lookup's result
    goes to."""
    results: list = []
    resolver.lookupAddress("mx.example").addBoth(results.append)
    [port] = clock.readers
    data, source = server.recvfrom(512)
    return port, data, source, results


def _answered(results: list) -> list[str]:
    """The addresses of the one answer in ``results`` (``_lookup``'s)."""
    [(answers, _, _)] = results
    return [a.payload.dottedQuad() for a in answers]


def _from_resolv_conf(tmp_path, monkeypatch, server, line: str, clock) -> dnsport.Resolver:
    """A resolver of a resolv.conf that has ``line``, its queries going
    to ``server``'s port (resolv.conf has no port: ``dns.PORT``)."""
    monkeypatch.setattr(dns, "PORT", server.getsockname()[1])
    conf = tmp_path / "resolv.conf"
    conf.write_text(line + "\n")
    return dnsport.Resolver(resolv=str(conf).encode(), reactor=clock)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("written, family, bind", [
    ("0:0:0:0:0:0:0:1", "AF_INET6", "::1"),
    ("0::1", "AF_INET6", "::1"),
    ("::FFFF:127.0.0.1", "AF_INET", "127.0.0.1"),  # a v4 server over the v6 port
])
def test_a_resolv_conf_server_written_another_way_has_its_answers_taken(
        tmp_path, monkeypatch, written, family, bind):
    """twisted.names takes an answer only from the address the query went
    to, compared as a string with the source ``recvfrom`` gives: a
    resolv.conf server written in another form than the kernel's had every
    answer dropped, and each lookup ran into its timeout (no relay at
    all).  Real sockets on the loopback; the test's server answers."""
    import socket

    from twisted.internet.address import IPv6Address

    server = socket.socket(getattr(socket, family), socket.SOCK_DGRAM)
    server.settimeout(10)
    server.bind((bind, 0))
    try:
        clock = _ReaderClock()
        resolver = _from_resolv_conf(tmp_path, monkeypatch, server, f"nameserver {written}", clock)
        port, data, source, results = _lookup(resolver, clock, server)
        # the port of a query to an IPv6 server is an IPv6 one, as it says
        host = port.getHost()
        assert isinstance(host, IPv6Address)
        assert host.port == port.socket.getsockname()[1]
        server.sendto(_answer(data, "192.0.2.7"), source)
        _read_when_ready(port)
        assert _answered(results) == ["192.0.2.7"]
        assert clock.readers == set() and port.fileno() == -1  # the query's port is closed
    finally:
        server.close()


def test_an_answer_from_another_address_is_dropped_and_the_servers_is_taken():
    """Of the datagrams waiting on a query's port, one from an address the
    query did not go to (a forgery that guessed the port and the ID) and
    one that is no DNS message are dropped; the server's answer behind
    them is taken."""
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.settimeout(10)
    server.bind(("127.0.0.1", 0))
    forger.bind(("127.0.0.1", 0))
    try:
        clock = _ReaderClock()
        resolver = dnsport.Resolver(servers=[server.getsockname()], reactor=clock)
        port, data, source, results = _lookup(resolver, clock, server)
        forger.sendto(_answer(data, "203.0.113.66"), source)
        forger.sendto(b"\x00", source)
        server.sendto(_answer(data, "192.0.2.7"), source)
        while not results:
            _read_when_ready(port)
        assert _answered(results) == ["192.0.2.7"]
    finally:
        server.close()
        forger.close()


def _parsed(tmp_path, text: str) -> dnsport.Resolver:
    conf = tmp_path / "resolv.conf"
    conf.write_text(text)
    return dnsport.Resolver(resolv=str(conf).encode(), reactor=Clock())


@pytest.mark.parametrize("line, servers", [
    # the address ends at a blank: what follows it is ignored
    ("nameserver 192.0.2.53 # office", ["192.0.2.53"]),
    ("nameserver\t192.0.2.53\tsecond", ["192.0.2.53"]),
    ("nameserver 192.0.2.53\r", ["192.0.2.53"]),
    # a comment begins a line (resolv.conf(5)): glued to the address it
    # makes no address, and glibc skips the line
    ("nameserver 192.0.2.53#office", ["127.0.0.1"]),
    ("nameserver\t192.0.2.53;office", ["127.0.0.1"]),
    ("nameserver fe80::1%lo#office", ["fe80::1"]),
    # the keyword starts the line, as for the C library
    ("  nameserver 192.0.2.53", ["127.0.0.1"]),
    ("\tnameserver 192.0.2.53", ["127.0.0.1"]),
    # no address: skipped (it raised out of the reading), 127.0.0.1 as with none
    ("nameserver", ["127.0.0.1"]),
    ("nameserver ns.example.net", ["127.0.0.1"]),
    ("nameserver 192.0.2.53:5353", ["127.0.0.1"]),  # resolv.conf has no port
    ("nameservers 192.0.2.9", ["127.0.0.1"]),  # no such keyword
    ("nameserver192.0.2.9", ["127.0.0.1"]),  # the keyword ends at a blank
    ("nameserver 192.0.2.5\x00", ["127.0.0.1"]),
    ("nameserver fe80::1%\u00e9", ["fe80::1"]),
    # the C library's inet_aton: a leading 0 is octal there, and so here
    ("nameserver 0127.0.0.1", ["87.0.0.1"]),
    ("nameserver 2001:DB8:0::53", ["2001:db8::53"]),
    ("nameserver ::FFFF:192.0.2.53", ["::ffff:192.0.2.53"]),
    # a zone counts on a link-local address only, as the interface's index
    ("nameserver 2001:db8::53%7", ["2001:db8::53"]),
    ("nameserver FE80::1%7", ["fe80::1%7"]),
    ("nameserver fe80::1%no-such-interface0", ["fe80::1"]),
    ("nameserver fe80::1%4294967296", ["fe80::1"]),  # no scope id: 32 bits
    ("nameserver fe80::1%4294967295", ["fe80::1%4294967295"]),  # the largest one is
])
def test_resolv_conf_name_servers_are_read_as_the_c_library_reads_them(tmp_path, line, servers):
    resolver = _parsed(tmp_path, f"# the servers\n{line}\nsearch example.org\n")
    assert [host for host, _ in resolver.dynServers] == servers
    assert resolver.search == [b"example.org"]  # the other lines as twisted.names reads them


def test_a_link_local_name_server_zone_is_its_interfaces_index(tmp_path):
    import socket

    index, name = socket.if_nameindex()[0]
    resolver = _parsed(tmp_path, f"nameserver fe80::1%{name}\nnameserver 192.0.2.1\n")
    assert resolver.dynServers == [(f"fe80::1%{index}", 53), ("192.0.2.1", 53)]


def test_a_link_local_answer_comes_with_its_scope_and_one_from_another_link_is_apart():
    """``recvfrom`` gives a link-local source's scope apart from the
    address: the answer is handed on as ``fe80::1%7``, the form the server
    is kept in; the same address on link 8 is another host."""
    assert dnsport._source(("fe80::1", 53, 0, 7)) == ("fe80::1%7", 53)
    assert dnsport._source(("fe80::1%eth0", 53, 0, 7)) == ("fe80::1%7", 53)
    assert dnsport._source(("2001:db8::53", 53, 0, 0)) == ("2001:db8::53", 53)
    assert dnsport._source(("192.0.2.53", 53)) == ("192.0.2.53", 53)

    class Proto:
        def __init__(self):
            self.got = []

        def makeConnection(self, transport):
            self.transport = transport

        def datagramReceived(self, data, address):
            self.got.append((data, address))

    class Socket:
        def __init__(self, datagrams):
            self.datagrams = datagrams

        def recvfrom(self, size):
            if not self.datagrams:
                raise BlockingIOError
            return self.datagrams.pop(0)

        def close(self):
            pass

    proto = Proto()
    port = dnsport.QueryPort(_ReaderClock(), proto)
    port.socket.close()
    port.socket = Socket([(b"a", ("fe80::1", 53, 0, 7)), (b"b", ("fe80::1", 53, 0, 8))])
    port.doRead()
    assert proto.got == [(b"a", ("fe80::1%7", 53)), (b"b", ("fe80::1%8", 53))]


def _link_local() -> tuple[str, str] | None:
    """An IPv6 link-local address of this host and its interface, if any
    (Linux: /proc/net/if_inet6)."""
    try:
        with open("/proc/net/if_inet6") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    for row in rows:
        if len(row) == 6 and row[0].startswith("fe80"):
            import ipaddress

            return str(ipaddress.IPv6Address(bytes.fromhex(row[0]))), row[5]
    return None


@pytest.mark.skipif(_link_local() is None, reason="no IPv6 link-local address")
def test_a_link_local_resolv_conf_server_has_its_answers_taken(tmp_path, monkeypatch):
    """``nameserver fe80::...%eth0`` (as NetworkManager writes it): the
    answer's source comes without the zone, and every answer was dropped.
    The test's server on this host's own link-local address answers."""
    import socket

    address, interface = _link_local()
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.settimeout(10)
    server.bind(("::", 0))
    try:
        clock = _ReaderClock()
        resolver = _from_resolv_conf(tmp_path, monkeypatch, server,
                                     f"nameserver {address}%{interface}", clock)
        port, data, source, results = _lookup(resolver, clock, server)
        server.sendto(_answer(data, "192.0.2.7"), source)
        _read_when_ready(port)
        assert _answered(results) == ["192.0.2.7"]
    finally:
        server.close()


def test_an_answer_from_another_host_on_the_servers_port_is_dropped():
    """The forgery from another host that also sends from port 53 (the
    server's port): the host alone tells it apart, and it is dropped."""
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.settimeout(10)
    try:
        server.bind(("127.0.0.1", 0))
        try:
            forger.bind(("127.0.0.2", server.getsockname()[1]))
        except OSError:
            pytest.skip("no 127.0.0.2 on this host's loopback")
        clock = _ReaderClock()
        resolver = dnsport.Resolver(servers=[server.getsockname()], reactor=clock)
        port, data, source, results = _lookup(resolver, clock, server)
        forger.sendto(_answer(data, "203.0.113.66"), source)
        _read_when_ready(port)
        assert results == []
        server.sendto(_answer(data, "192.0.2.7"), source)
        _read_when_ready(port)
        assert _answered(results) == ["192.0.2.7"]
    finally:
        server.close()
        forger.close()


def test_only_the_first_three_name_servers_count_as_for_the_c_library(tmp_path, log_events):
    # glibc's MAXNS: a fourth server is never asked by the rest of the host;
    # a line that names no address does not take a place
    resolver = _parsed(tmp_path, "nameserver ns.example\n" + "".join(
        f"nameserver 192.0.2.{i}\n" for i in range(1, 6)))
    assert resolver.dynServers == [(f"192.0.2.{i}", 53) for i in (1, 2, 3)]
    warned = [e["log_format"] for e in log_events if e.get("log_level") == LogLevel.warn]
    assert len(warned) == 3 and "only the first {n} name servers" in warned[-1]


def test_a_skipped_line_leaves_the_servers_after_it_and_its_warning_names_the_file(
        tmp_path, log_events):
    # an indented keyword and a line without an address are skipped alone:
    # the servers written after them are still asked
    conf = tmp_path / "resolv.conf"
    conf.write_text(" nameserver 192.0.2.1\nnameserver ns.example\nnameserver 192.0.2.2\n"
                    "nameserver 192.0.2.3\n")
    resolver = dnsport.Resolver(resolv=str(conf).encode(), reactor=Clock())
    assert resolver.dynServers == [("192.0.2.2", 53), ("192.0.2.3", 53)]
    warned = [e for e in log_events if e.get("log_level") == LogLevel.warn]
    assert [e["path"] for e in warned] == [str(conf), str(conf)]
    assert [e["line"] for e in warned] == ["nameserver 192.0.2.1", "nameserver ns.example"]
    assert "indented" in warned[0]["log_format"] and "no IP address" in warned[1]["log_format"]


def _an_unscoped_link_local_server_answers(tmp_path, monkeypatch, configured: bool) -> list:
    import socket

    address, _ = _link_local()
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.settimeout(10)
    server.bind(("::", 0))
    try:
        clock = _ReaderClock()
        if configured:
            resolver = dnsport.Resolver(servers=[(address, server.getsockname()[1])],
                                        reactor=clock)
        else:
            resolver = _from_resolv_conf(tmp_path, monkeypatch, server,
                                         f"nameserver {address}", clock)
        port, data, source, results = _lookup(resolver, clock, server)
        server.sendto(_answer(data, "192.0.2.7"), source)
        _read_when_ready(port)
        return results
    finally:
        server.close()


@pytest.mark.skipif(_link_local() is None, reason="no IPv6 link-local address")
@pytest.mark.parametrize("configured", [False, True])
def test_an_unscoped_link_local_servers_answer_is_taken(tmp_path, monkeypatch, configured):
    """``nameserver fe80::...`` without a zone (glibc: scope 0), or the same
    in ``[relay] nameservers``: the kernel sends the query on a link of its
    own choice, and the answer comes with that link's scope, which the
    server's form lacks: it was dropped, and every lookup timed out."""
    results = _an_unscoped_link_local_server_answers(tmp_path, monkeypatch, configured)
    assert _answered(results) == ["192.0.2.7"]


@pytest.mark.skipif(_link_local() is None, reason="no IPv6 link-local address")
@pytest.mark.parametrize("by_index", [False, True])
def test_a_configured_link_local_server_with_its_zone_has_its_answers_taken(by_index):
    """``[relay] nameservers = ["[fe80::...%eth0]:PORT"]``, the zone by
    name or by index as resolv.conf takes it: the config gives the server
    in the form its answers come from (``fe80::...%INDEX``), and the test's
    server on this host's own link-local address answers."""
    import socket

    from txmailhub.config import split_nameserver

    address, interface = _link_local()
    zone = str(socket.if_nametoindex(interface)) if by_index else interface
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.settimeout(10)
    server.bind(("::", 0))
    try:
        configured = split_nameserver(f"[{address}%{zone}]:{server.getsockname()[1]}")
        clock = _ReaderClock()
        resolver = dnsport.Resolver(servers=[configured], reactor=clock)
        port, data, source, results = _lookup(resolver, clock, server)
        server.sendto(_answer(data, "192.0.2.7"), source)
        _read_when_ready(port)
        assert _answered(results) == ["192.0.2.7"]
    finally:
        server.close()


def _mapped_is_link_local(address) -> bool:
    """``IPv6Address.is_link_local`` as Python 3.13 (and the security
    releases of gh-122792) has it: a v4-mapped address is link-local
    when its IPv4 address is (169.254.0.0/16)."""
    import ipaddress

    mapped = address.ipv4_mapped
    if mapped is not None:
        return mapped.is_link_local
    return address in ipaddress.IPv6Network("fe80::/10")


def test_a_v4_mapped_server_keeps_no_zone_as_its_answers_come_with_none(tmp_path, monkeypatch):
    """The kernel scopes fe80::/10 only: an answer from a v4-mapped
    address comes with scope 0, whatever the query was sent with.  Kept
    as ``::ffff:169.254.1.1%1``, as ``is_link_local`` of newer Pythons
    would have it, the server's every answer would be dropped."""
    import ipaddress
    import socket

    from txmailhub.config import split_nameserver

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for s in (server, client):
            s.settimeout(10)
        server.bind(("127.0.0.1", 0))
        client.bind(("::", 0))
        lo, name = socket.if_nameindex()[0]
        client.sendto(b"q", (f"::ffff:127.0.0.1%{lo}", server.getsockname()[1]))
        _, source = server.recvfrom(16)
        server.sendto(b"a", source)
        _, answer = client.recvfrom(16)
        assert dnsport._source(answer) == ("::ffff:127.0.0.1", server.getsockname()[1])
    finally:
        server.close()
        client.close()
    monkeypatch.setattr(ipaddress.IPv6Address, "is_link_local", property(_mapped_is_link_local))
    assert ipaddress.IPv6Address("::ffff:169.254.1.1").is_link_local
    assert split_nameserver(f"[::ffff:169.254.1.1%{name}]:53") == ("::ffff:169.254.1.1", 53)
    resolver = _parsed(tmp_path, f"nameserver ::ffff:169.254.1.1%{name}\n")
    assert resolver.dynServers == [("::ffff:169.254.1.1", 53)]
    # fe80::/10 keeps its zone, as before
    assert split_nameserver(f"fe80::1%{name}") == (f"fe80::1%{lo}", 53)
