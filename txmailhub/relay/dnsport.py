"""DNS queries over UDP without a log line per query.

twisted.names sends every UDP query from a port of its own, bound to a
random source port (the defence against forged answers that a fixed port
would lose), through ``reactor.listenUDP``.  Twisted logs each such port
as it opens and closes, and the datagram protocol logs its own start and
stop: four lines per query, a dozen or more per message relayed (MX, A
and AAAA lookups, retries on timeouts), which bury the lines an operator
reads the log for.

``Resolver`` keeps twisted.names' query logic (ids, retries, timeouts,
answer validation, the TCP retry of a truncated answer) and replaces only
the port: ``QueryPort`` is a UDP socket, on a fresh random port for each
query as before, registered with the reactor as a reader and silent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.names import client, dns
from zope.interface import implementer

from txmailhub.config import LINK_LOCAL

__all__ = ["QueryPort", "Resolver"]

log = Logger()

# A DNS message over UDP is at most 65,535 octets (EDNS lets servers send
# more than the classic 512).
_MAX_DATAGRAM = 65535
# Datagrams read per wake-up at most, so that a flood cannot hold the reactor.
_READS_PER_WAKEUP = 16
# Attempts to find a free random source port before giving up.
_BIND_ATTEMPTS = 100
# Source ports are drawn above the privileged ones: a hub that dropped
# root could not bind those (EACCES).
_FIRST_PORT = 1024
# Out of descriptors: another port will not help.
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


@implementer(IReadDescriptor)
class QueryPort:
    """The transport of one ``dns.DNSDatagramProtocol``: a non-blocking UDP
    socket bound to a random port of ``interface`` ("" for IPv4, "::" for
    IPv6).  Provides what that protocol and twisted.names' client use of it
    need: ``write(data, address)``, ``stopListening()`` and ``getHost()``."""

    def __init__(self, reactor: Any, protocol: Any, interface: str = "") -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.family = socket.AF_INET6 if interface and isIPv6Address(interface) else socket.AF_INET
        self.socket = _bind_random(self.family, interface)
        self._closed = False
        #: the destinations written to without a scope (``fe80::1``): their
        #: answers come with the scope of the link the kernel chose
        self._unscoped: set[tuple[str, int]] = set()
        protocol.makeConnection(self)
        reactor.addReader(self)

    # -- IReadDescriptor ---------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._closed else self.socket.fileno()

    def logPrefix(self) -> str:
        return "DNS query"

    def doRead(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if self._closed:
                return
            try:
                data, address = self.socket.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # a queued ICMP error: the query's timeout and retry deal with it
            except OSError as e:
                log.error("DNS: cannot read an answer: {error}", error=e)
                return
            try:
                self.protocol.datagramReceived(data, self._source(address))
            except Exception:
                # one bad datagram must not end the port: the answer the
                # query waits for may still come
                log.failure("DNS: cannot handle an answer from {address}", address=address[0])

    def _source(self, address: tuple) -> tuple[str, int]:
        """``_source``, but the answer to a query written to a link-local
        address without a zone (``nameserver fe80::1``, ``[relay]
        nameservers = ["fe80::1"]``) is handed on in that form: the
        kernel sent it on a link of its choice and reports the answer's
        scope, which the server's form lacks, and every answer was
        dropped."""
        source = _source(address)
        bare = (source[0].partition("%")[0], source[1])
        return bare if bare in self._unscoped else source

    def connectionLost(self, reason: Any) -> None:
        """The reactor dropped us (it is shutting down): close the socket,
        but leave the protocol attached.  A query still waiting then times
        out and is retried as usual (on a new port); stopped, its protocol
        would have no transport for twisted.names to stop after the query."""
        self._close()

    # -- the transport -----------------------------------------------------------

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        """Send one datagram.  A full socket buffer drops it (UDP: the query
        is retried on its timeout); other errors are raised, and
        twisted.names turns them into a failed query."""
        host = address[0]
        if not (isIPAddress(host) or isIPv6Address(host)):
            # a name would cost a blocking lookup here, on the reactor thread
            raise error.InvalidAddressError(host, "not an IP address")
        if "%" not in host and isIPv6Address(host):
            self._unscoped.add((host, address[1]))
        try:
            self.socket.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.socket.getsockname()[:2]
        if self.family == socket.AF_INET6:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    def stopListening(self) -> None:
        """Close the socket and stop the protocol (idempotent)."""
        self._close()
        if self.protocol.transport is self:
            self.protocol.doStop()

    def _close(self) -> None:
        if not self._closed:
            self.reactor.removeReader(self)
            self._closed = True
            self.socket.close()


def _bind_random(family: int, interface: str) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as e:
        raise error.CannotListenError(interface, 0, e) from None
    try:
        sock.setblocking(False)
        for attempt in range(_BIND_ATTEMPTS):
            port = _FIRST_PORT + dns.randomSource() % (65536 - _FIRST_PORT)
            try:
                sock.bind((interface, port))
                return sock
            except OSError as e:
                if e.errno in _NO_DESCRIPTORS or attempt == _BIND_ATTEMPTS - 1:
                    raise error.CannotListenError(interface, port, e) from None
    except BaseException:
        sock.close()
        raise
    raise AssertionError("unreachable")  # pragma: no cover


class _TCPFactory(client.DNSClientFactory):
    """twisted.names' factory for the TCP retry of a truncated answer, which
    remembers its connectors until their connection fails or ends, for
    ``Resolver.stop`` to stop those still connecting (twisted.names keeps
    none of them)."""

    def __init__(self, controller: Any, timeout: Any) -> None:
        super().__init__(controller, timeout)
        self.connectors: set[Any] = set()

    def startedConnecting(self, connector: Any) -> None:
        self.connectors.add(connector)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.connectors.discard(connector)
        super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        self.connectors.discard(connector)
        super().clientConnectionLost(connector, reason)


class Resolver(client.Resolver):
    """twisted.names' client resolver with a silent port per UDP query, and
    a ``stop()`` (``start()`` undoes it) for a relay that stops while the
    reactor runs on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: the UDP protocols of the queries under way (and some finished)
        self._udp: set[dns.DNSDatagramProtocol] = set()
        self._stopped = False  # from stop() to start()
        super().__init__(*args, **kwargs)
        self.factory = _TCPFactory(self, self.timeout)
        self.factory.noisy = False

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        proto = dns.DNSDatagramProtocol(self, reactor=self._reactor)
        proto.noisy = False  # no "Starting protocol" / "Stopping protocol" lines
        QueryPort(self._reactor, proto, interface)
        # remembered for stop(); those whose query is over go (a set of
        # the queries under way at once: a few dozen at most)
        self._udp = {p for p in self._udp if p.transport is not None}
        self._udp.add(proto)
        return proto

    def stop(self) -> None:
        """The relay has stopped, the reactor runs on (an application that
        embeds the hub): end what twisted.names keeps going by itself.

        Its look at ``resolv.conf`` every minute rescheduled itself for
        ever, and a query to a server that does not answer went on being
        resent for up to a minute (1 + 3 + 11 + 45 s) with its port open:
        timers and descriptors of a stopped hub on that reactor (and each
        hub built again kept its own resolver alive through them).  The
        queries under way fail with ``CancelledError`` (not a timeout,
        which would be retried), their ports are closed, and the TCP
        connections (the retry of a truncated answer) are cut, and one
        still connecting stops connecting (were it made all the same, it
        is cut then: ``connectionMade``)."""
        self._stopped = True
        call, self._parseCall = getattr(self, "_parseCall", None), None
        if call is not None and call.active():
            call.cancel()
        protocols, self._udp = [*self._udp, *self.connections], set()
        for proto in protocols:
            live, proto.liveMessages = dict(proto.liveMessages or {}), {}
            for d, timeout in live.values():
                if timeout.active():
                    timeout.cancel()
                d.errback(defer.CancelledError("the relay stopped"))
            transport = proto.transport
            if transport is None:
                continue
            if isinstance(transport, QueryPort):
                transport.stopListening()
            else:
                transport.abortConnection()
        pending, self.pending = self.pending, []
        for d, _queries, _timeout in pending:  # waiting for a TCP connection
            d.errback(defer.CancelledError("the relay stopped"))
        # and that connection itself: its socket and its connect timeout
        # (30 s) stayed on the reactor until it was made or timed out
        for connector in list(self.factory.connectors):
            try:
                connector.stopConnecting()
            except error.NotConnectingError:
                pass  # connected: cut above, or cut when made

    def start(self) -> None:
        """Look at ``resolv.conf`` again, and every minute from now on, after
        a ``stop()`` (nothing to do otherwise)."""
        self._stopped = False
        call = getattr(self, "_parseCall", None)
        if self.resolv is not None and (call is None or not call.active()):
            self.maybeParseConfig()

    def connectionMade(self, protocol: Any) -> None:
        """A TCP connection is made: twisted.names sends the queries that
        waited for it.  After ``stop()`` none does (they were failed), and
        the connection would stay open, kept for later queries, until the
        server closed it: it is cut."""
        if self._stopped:
            protocol.transport.abortConnection()
            return
        super().connectionMade(protocol)

    def maybeParseConfig(self) -> None:
        """twisted.names' periodic look at ``resolv.conf``, but one that
        cannot open the file (EMFILE, EACCES) is a line in the log and
        another look later: twisted.names raised out of the timed call (a
        critical traceback) and never looked again, so the hub kept its
        old name servers for the rest of its life."""
        try:
            super().maybeParseConfig()
        except OSError as e:
            # (twisted.names keeps the path as bytes: shown as text)
            log.error("cannot read {path}: {error}; trying again later",
                      path=os.fsdecode(self.resolv), error=str(e))
            self._parseCall = self._reactor.callLater(
                self._resolvReadInterval, self.maybeParseConfig)

    def parseConfig(self, resolvConf: Any) -> None:
        """Read ``resolv.conf``'s name servers as the C library does
        (resolv.conf(5), glibc's ``res_init``), each in the form a query's
        answer is matched against (``_source``); its other lines as
        twisted.names reads them.

        twisted.names took the word after ``nameserver`` as it stood and
        took an answer only from that string: a server written another way
        than the kernel reports a source (``2001:DB8::53``, ``0:0::1``) or
        with a link-local zone (``fe80::1%eth0``, as NetworkManager writes
        it) had every answer dropped, and each lookup ran into its timeout;
        a ``nameserver`` line without an address raised out of the reading
        (the relay did not start; at a later look, the file was never read
        again).  The keyword starts the line, the address ends at a blank
        (a comment begins a line, never behind an address: ``192.0.2.53#x``
        is no address), a line without one is skipped with a warning, and
        only the first ``MAXNS`` servers count, as for the C library, so
        the hub asks the servers the rest of the host asks; none:
        ``127.0.0.1``, as with none."""
        lines = list(resolvConf)
        # (twisted.names takes any line that begins with "nameserver")
        super().parseConfig([line for line in lines if not line.strip().startswith(b"nameserver")])
        path = os.fsdecode(self.resolv or b"resolv.conf")
        servers: list[tuple[str, int]] = []
        for line in lines:
            text = line.rstrip(b"\r\n")
            if not text.lstrip().startswith(b"nameserver"):
                continue
            if not text.startswith(b"nameserver"):
                log.warn("{path}: {line!r}: an indented keyword, which the C library "
                         "ignores: skipped", path=path, line=_shown(text))
                continue
            rest = text[len(b"nameserver"):]
            if rest and rest[:1] not in (b" ", b"\t"):
                continue  # another keyword ("nameservers"), which the C library ignores
            words = rest.split()
            host = _server_form(words[0]) if words else None
            if host is None:
                log.warn("{path}: {line!r} names no IP address: skipped",
                         path=path, line=_shown(text))
                continue
            if len(servers) == MAXNS:
                log.warn("{path}: {line!r}: only the first {n} name servers are asked, "
                         "as by the C library", path=path, line=_shown(text), n=MAXNS)
                continue
            servers.append((host, dns.PORT))
        self.dynServers = servers or [("127.0.0.1", dns.PORT)]

    def filterAnswers(self, message: dns.Message) -> Any:
        """twisted.names' filter, but a truncated answer is asked again
        over TCP once: an answer that comes over TCP is final even with
        the TC bit set (RFC 7766 5) -- twisted.names asked again for as
        long as the server set it, thousands of queries a second, and the
        delivery attempt never ended."""
        if message.trunc:
            d = self.queryTCP(message.queries)
            return d.addCallback(self._tcp_answers, message.queries)
        return super().filterAnswers(message)

    def _tcp_answers(self, message: dns.Message, queries: Any) -> Any:
        message = _same_question(message, queries)  # as for every UDP answer
        message.trunc = False
        return super().filterAnswers(message)

    def _query(self, *args: Any) -> defer.Deferred:
        # A query that cannot even be sent (no port: out of descriptors) must
        # fail its Deferred, not raise: twisted.names' lookup would keep its
        # entry for the name, and every later lookup of it would wait forever.
        try:
            d = super()._query(*args)
        except Exception:
            return defer.fail()
        return d.addCallback(_same_question, args[1])


#: the C library's limit on resolv.conf's name servers (resolv.h): it
#: asks the first three, and ignores the lines after them
MAXNS = 3


def _shown(line: bytes) -> str:
    return line.strip().decode("ascii", "replace")


def _server_form(word: bytes) -> str | None:
    """A resolv.conf name server's address read as the C library reads it
    (``inet_aton`` for IPv4, so ``0127.0.0.1`` is 87.0.0.1 there and here;
    ``inet_pton`` for IPv6), in ``_source``'s form; ``None`` when it is no
    address (a host name, ``192.0.2.53:5353``: resolv.conf has no port).

    A zone counts on a link-local address only, as an interface index
    (``fe80::1%eth0`` is ``fe80::1%2``): the kernel scopes no other
    address, and reports a source's scope as a number.  An interface
    that does not exist leaves the address unscoped, as the C library
    does: queries to it then fail at once."""
    text = word.decode("ascii", "replace")
    if ":" not in text:
        try:
            return socket.inet_ntoa(socket.inet_aton(text))
        except (OSError, ValueError):  # ValueError: a NUL, a character not ASCII
            return None
    address, _, zone = text.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError):
        return None
    host = socket.inet_ntop(socket.AF_INET6, packed)
    if not zone or ipaddress.IPv6Address(packed) not in LINK_LOCAL:
        return host
    if zone.isascii() and zone.isdigit():
        index = int(zone)
        if index > 0xFFFFFFFF:  # no scope id (32 bits): the C library ignores it
            return host
    else:
        try:
            index = socket.if_nametoindex(zone)
        except (OSError, ValueError):
            return host
    return f"{host}%{index}" if index else host


def _source(address: tuple) -> tuple[str, int]:
    """A datagram's source as twisted.names compares it with the server
    its query went to (``_server_form``): an IPv6 link-local one with its
    scope, the interface's index (``fe80::1%2``).  ``recvfrom`` gives the
    scope apart, and the bare address could never match the server
    written with its zone, without which a link-local server cannot be
    asked at all; the scope keeps an answer from the same address on
    another link apart."""
    host, port = address[0], address[1]
    if len(address) == 4 and address[3]:
        host = f"{host.partition('%')[0]}%{address[3]}"
    return host, port


def _question(queries: Any) -> list[tuple[bytes, int, int]]:
    return [(q.name.name.lower().rstrip(b"."), q.type, q.cls) for q in queries]


def _same_question(message: dns.Message, queries: Any) -> dns.Message:
    """An answer whose question is not the one asked is not ours (RFC 5452
    9.1: a forged reply that guessed the ID and the port still has to
    guess the question): it fails the query, a temporary error."""
    if not message.queries and message.rCode != dns.OK:
        return message  # an error reply may leave the question out (RFC 1035 4.1.1)
    if _question(message.queries) != _question(queries):
        raise ForeignAnswer(f"an answer to another question: {message.queries!r}")
    return message


class ForeignAnswer(Exception):
    """A DNS answer whose question section is not the query's."""
