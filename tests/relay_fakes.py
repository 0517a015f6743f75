"""Test doubles for the relay tests: a fake twisted.names resolver."""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error


class FakeResolver:
    """Answers from a table: ``{name: {"MX": [(pref, host)], "A": [...], "AAAA": [...]}}``.

    A name missing from the table is NXDOMAIN; a value that is an exception
    instance (for a name or one type) is raised instead."""

    def __init__(self, zone: dict) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: str, kind: str):
        self.queries.append((name, kind))
        entry = self.zone.get(name)
        if entry is None:
            return defer.fail(dns_error.DNSNameError(name))
        if isinstance(entry, Exception):
            return defer.fail(entry)
        value = entry.get(kind, [])
        if isinstance(value, Exception):
            return defer.fail(value)
        answers = []
        for item in value:
            if kind == "MX":
                payload = dns.Record_MX(item[0], item[1].encode())
                rtype = dns.MX
            elif kind == "A":
                payload, rtype = dns.Record_A(item), dns.A
            else:
                payload, rtype = dns.Record_AAAA(item), dns.AAAA
            answers.append(dns.RRHeader(name.encode(), rtype, dns.IN, 60, payload))
        return defer.succeed((answers, [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._lookup(name, "MX")

    def lookupAddress(self, name, timeout=None):
        return self._lookup(name, "A")

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup(name, "AAAA")


# --- a scripted SMTP server and an in-memory network --------------------------

from twisted.internet.protocol import Protocol  # noqa: E402
from twisted.test import iosim  # noqa: E402


class ScriptedSMTPServer(Protocol):
    """A minimal SMTP server for client tests.

    ``extensions``: EHLO keywords; ``replies``: ``{"MAIL": b"451 ...", "RCPT
    bob@x": b"550 ...", "EHLO": ..., "HELO": ..., "DATA": ..., "END": ...}`` overriding the default
    positive answers; ``silent``: never say anything (timeouts)."""

    def __init__(self, extensions=("PIPELINING", "8BITMIME", "SIZE 1000000"), replies=None,
                 greeting=b"220 fake.remote ESMTP\r\n", silent=False, tls_creator=None):
        self.extensions = tuple(extensions)
        self.replies = dict(replies or {})
        self.greeting = greeting
        self.silent = silent
        self.tls_creator = tls_creator
        self.buf = b""
        self.in_data = False
        self.commands: list[bytes] = []
        self.messages: list[tuple[bytes, list[bytes], bytes]] = []
        self.mail_from = b""
        self.rcpts: list[bytes] = []
        self.tls = False

    def connectionMade(self):
        if not self.silent:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        if self.silent:
            return
        self.buf += data
        while True:
            if self.in_data:
                if self.buf.startswith(b".\r\n"):
                    body, self.buf = b"", self.buf[3:]
                else:
                    end = self.buf.find(b"\r\n.\r\n")
                    if end < 0:
                        return
                    body, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
                self.in_data = False
                self.messages.append((self.mail_from, list(self.rcpts), body))
                self.transport.write(self.replies.get("END", b"250 2.0.0 queued\r\n"))
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            line, self.buf = self.buf[:nl], self.buf[nl + 2 :]
            self.commands.append(line)
            self._command(line)

    def _command(self, line):
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
        if verb == "EHLO":
            if "EHLO" in self.replies:
                self.transport.write(self.replies["EHLO"])
                return
            ext = [e for e in self.extensions if not (self.tls and e == "STARTTLS")]
            lines = ["fake.remote", *ext]
            out = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
            self.transport.write(out.encode())
        elif verb == "HELO":
            self.transport.write(self.replies.get("HELO", b"250 fake.remote\r\n"))
        elif verb == "STARTTLS" and "STARTTLS" in self.replies:
            self.transport.write(self.replies["STARTTLS"])  # a refusal: go on in clear
        elif verb == "STARTTLS":
            self.transport.write(b"220 2.0.0 go ahead\r\n")
            self.transport.startTLS(self.tls_creator)
            self.tls = True
        elif verb == "MAIL":
            self.mail_from = line
            self.rcpts = []
            self.transport.write(self.replies.get("MAIL", b"250 2.1.0 ok\r\n"))
        elif verb == "RCPT":
            addr = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
            reply = self.replies.get(f"RCPT {addr}", b"250 2.1.5 ok\r\n")
            if reply.startswith(b"2"):
                self.rcpts.append(addr.encode())
            self.transport.write(reply)
        elif verb == "DATA":
            reply = self.replies.get("DATA", b"354 go ahead\r\n")
            if reply.startswith(b"354"):
                self.in_data = True
            self.transport.write(reply)
        elif verb == "QUIT":
            self.transport.write(b"221 2.0.0 bye\r\n")
            self.transport.loseConnection()
        elif verb == "AUTH":
            self.auth_line = line
            self.transport.write(self.replies.get("AUTH", b"235 2.7.0 ok\r\n"))
        elif verb == "RSET":
            self.transport.write(b"250 ok\r\n")
        else:
            self.transport.write(b"500 5.5.1 what?\r\n")


class FakeTLS:
    """A TLS creator the in-memory transport understands (``iosimVerify``)."""

    def __init__(self, name="tls", ok=True):
        self.name = name
        self.ok = ok

    def iosimVerify(self, other):
        return self.ok and getattr(other, "ok", True)


class FakeNetwork:
    """``endpoint(host, port)`` for the delivery agent, wired with iosim.

    ``servers[(host, port)]`` is a zero-argument callable building the
    server protocol; a missing address refuses the connection."""

    def __init__(self, clock):
        self.clock = clock
        self.servers = {}
        self.pumps = []
        self.connections: list[tuple[str, int]] = []
        self.server_protocols = []

    def endpoint(self, host, port):
        return _FakeEndpoint(self, host, port)

    def run(self):
        for _ in range(200):
            moved = False
            for pump in list(self.pumps):
                if pump.flush(advanceClock=False):
                    moved = True
            if not moved:
                return


class _FakeEndpoint:
    def __init__(self, network, host, port):
        self.network, self.host, self.port = network, host, port

    def connect(self, factory):
        from twisted.internet import defer
        from twisted.internet.error import ConnectionRefusedError

        self.network.connections.append((self.host, self.port))
        make = self.network.servers.get((self.host, self.port))
        if make is None:
            return defer.fail(ConnectionRefusedError(self.host))
        server = make()
        self.network.server_protocols.append(server)
        client = factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                             iosim.makeFakeClient(client), greet=False, clock=self.network.clock)
        self.network.pumps.append(pump)
        return defer.succeed(client)
