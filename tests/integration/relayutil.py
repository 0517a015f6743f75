"""Loopback helpers for the relay integration tests.

* ``DNSServer``: a tiny authoritative DNS server on 127.0.0.1 (UDP, a
  thread), answering MX/A/AAAA from a dict; messages are encoded and
  decoded with twisted.names.dns (no reactor involved).
* ``CaptureSMTP``: a small SMTP server on 127.0.0.1 (a thread per
  connection) playing the remote side: it records every message and its
  replies can be changed while a test runs (``rcpt_reply``).
* ``first_attempt``: a hub's relay queue, in the test's reactor, with
  one entry from alice for a next hop given as smarthost;
  ``attempt_recorded``: whether its record is done changing.
* ``smarthost_settings`` and ``queued_entry``: the settings and the
  queue entry a ``DeliveryAgent`` is given to send one message to a
  smarthost on loopback, without a queue.
"""

from __future__ import annotations

import dataclasses
import email
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.names import dns

from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay.record import QueueEntry
from txmailhub.relay.service import RelayService
from txmailhub.testing import MemoryMailboxStore, MemorySpooler, StaticRouter

ALICE = Address("alice", "example.org")


class DNSServer:
    """``zone = {"name": {"MX": [(10, "mx.name")], "A": ["127.0.0.1"], "AAAA": [...]}}``;
    a name missing from the zone is NXDOMAIN, ``"SERVFAIL"`` as the value fails it.
    ``silent=True``: it reads the queries and never answers."""

    def __init__(self, zone: dict, host: str = "127.0.0.1", silent: bool = False) -> None:
        self.zone = zone
        self.silent = silent
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, int]] = []
        self.peers: list[tuple] = []  # where each query came from
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer)
            if self.silent:
                continue
            try:
                self.sock.sendto(self._answer(data), peer)
            except Exception:  # a malformed query: ignore it
                continue

    def _answer(self, data: bytes) -> bytes:
        query = dns.Message()
        query.fromStr(data)
        q = query.queries[0]
        name = q.name.name.decode().lower().rstrip(".")
        self.queries.append((name, q.type))
        resp = dns.Message(id=query.id, answer=1, auth=1, recDes=query.recDes, recAv=1)
        resp.queries = [q]
        entry = self.zone.get(name)
        if entry is None:
            resp.rCode = dns.ENAME
        elif entry == "SERVFAIL":
            resp.rCode = dns.ESERVER
        else:
            kind = {dns.MX: "MX", dns.A: "A", dns.AAAA: "AAAA"}.get(q.type)
            for value in entry.get(kind, []) if kind else []:
                if kind == "MX":
                    payload = dns.Record_MX(value[0], value[1].encode(), ttl=60)
                elif kind == "A":
                    payload = dns.Record_A(value, ttl=60)
                else:
                    payload = dns.Record_AAAA(value, ttl=60)
                resp.answers.append(dns.RRHeader(q.name.name, q.type, dns.IN, 60, payload,
                                                 auth=True))
        return resp.toStr()


class LineSessionServer:
    """A next hop on 127.0.0.1 (a free port, ``port``), each connection
    served on its own thread by ``_session(rfile, wfile)``, which a
    subclass defines; ``say`` writes a reply and flushes it."""

    def _serve(self) -> None:
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._session(self.rfile, self.wfile)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile) -> None:
        raise NotImplementedError

    @staticmethod
    def say(wfile, data: bytes) -> None:
        wfile.write(data)
        wfile.flush()

    @staticmethod
    def read_data(rfile, each: Callable[[bytes], bool] = lambda data: False
                  ) -> list[bytes] | None:
        """The message data after DATA's 354, up to the final ".": its
        lines, unstuffed.  ``each(line)`` is called with each line as
        read; None when the connection ended before the "." or ``each``
        returned True (the session to end, nothing taken)."""
        chunks: list[bytes] = []
        while True:
            data = rfile.readline(65536)
            if not data:
                return None
            if data == b".\r\n":
                return chunks
            chunks.append(data[1:] if data.startswith(b"..") else data)
            if each(data):
                return None

    def answer_other(self, wfile, verb: bytes) -> bool:
        """Answer RSET, NOOP, QUIT or any other command the session does
        not serve itself (502): True after QUIT, the session over."""
        if verb in (b"RSET", b"NOOP"):
            self.say(wfile, b"250 2.0.0 ok\r\n")
        elif verb == b"QUIT":
            self.say(wfile, b"221 2.0.0 bye\r\n")
            return True
        else:
            self.say(wfile, b"502 5.5.1 not implemented\r\n")
        return False


class CaptureSMTP:
    """The remote mail server: records ``messages`` as (mail_from, rcpts, data)."""

    def __init__(self, extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10000000",
                                                      "ENHANCEDSTATUSCODES"),
                 tls: tuple[str, str] | None = None, auth: tuple[str, str] | None = None,
                 implicit_tls: bool = False, auth_offer: str = "PLAIN LOGIN") -> None:
        self.extensions = extensions
        self.auth_offer = auth_offer  # the mechanisms its EHLO names, with ``auth``
        self.implicit_tls = implicit_tls  # TLS from the first byte (RFC 8314), no STARTTLS
        self.tls_context = None
        if tls is not None:
            import ssl

            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(tls[0], tls[1])
        self.auth = auth
        self.auth_seen: list[str] = []
        self.auth_commands = 0  # AUTH commands received, whatever their mechanism
        self.tls_sessions = 0
        self.messages: list[tuple[str, list[str], bytes]] = []
        # the MAIL command line of each message, beside ``messages`` (both
        # added under ``lock``: sessions on other threads end at once)
        self.mail_lines: list[str] = []
        self.lock = threading.Lock()
        self.rcpt_reply: Callable[[str], bytes] = lambda addr: b"250 2.1.5 ok\r\n"
        self.sessions = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with outer.lock:
                    outer.sessions += 1
                outer._session(self)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int = 1, timeout: float = 60.0) -> list:
        """``messages`` once there are ``count`` (``timeout``: a bound for a
        hub that hangs, which fails)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} messages, not {count}, "
                                     f"in {timeout} s")
            time.sleep(0.05)
        return self.messages

    def _session(self, handler) -> None:
        rfile, wfile = handler.rfile, handler.wfile
        secure = False
        if self.implicit_tls:
            assert self.tls_context is not None
            conn = self.tls_context.wrap_socket(handler.request, server_side=True)
            handler.request = conn
            rfile, wfile = conn.makefile("rb"), conn.makefile("wb")
            secure = True
            self.tls_sessions += 1

        def say(data: bytes) -> None:
            wfile.write(data)
            wfile.flush()

        say(b"220 capture.test ESMTP\r\n")
        sender, rcpts, mail_line = "", [], ""
        while True:
            line = rfile.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "EHLO":
                ext = list(self.extensions)
                if self.tls_context is not None and not secure:
                    ext.append("STARTTLS")
                if self.auth is not None:
                    ext.append(f"AUTH {self.auth_offer}")
                lines = ["capture.test", *ext]
                say("".join(f"250-{x}\r\n" for x in lines[:-1]).encode()
                    + f"250 {lines[-1]}\r\n".encode())
            elif verb == "STARTTLS" and self.tls_context is not None and not secure:
                say(b"220 2.0.0 ready\r\n")
                conn = self.tls_context.wrap_socket(handler.request, server_side=True)
                handler.request = conn
                rfile, wfile = conn.makefile("rb"), conn.makefile("wb")
                secure = True
                self.tls_sessions += 1
            elif verb == "AUTH" and self.auth is not None:
                import base64

                self.auth_commands += 1
                token = base64.b64decode(cmd.split()[2]).split(b"\0")
                self.auth_seen.append(token[1].decode())
                if (token[1].decode(), token[2].decode()) == self.auth:
                    say(b"235 2.7.0 ok\r\n")
                else:
                    say(b"535 5.7.8 bad credentials\r\n")
            elif verb == "HELO":
                say(b"250 capture.test\r\n")
            elif verb == "MAIL":
                sender, rcpts = cmd.split("<", 1)[1].split(">", 1)[0], []
                mail_line = cmd
                say(b"250 2.1.0 ok\r\n")
            elif verb == "RCPT":
                addr = cmd.split("<", 1)[1].split(">", 1)[0]
                reply = self.rcpt_reply(addr)
                if reply.startswith(b"2"):
                    rcpts.append(addr)
                say(reply)
            elif verb == "DATA":
                if not rcpts:
                    say(b"554 5.5.1 no valid recipients\r\n")
                    continue
                say(b"354 go ahead\r\n")
                chunks = []
                while True:
                    data = rfile.readline(65536)
                    if not data or data == b".\r\n":
                        break
                    chunks.append(data[1:] if data.startswith(b"..") else data)
                with self.lock:
                    self.mail_lines.append(mail_line)
                    self.messages.append((sender, list(rcpts), b"".join(chunks)))
                say(b"250 2.0.0 captured\r\n")
            elif verb == "RSET":
                sender, rcpts = "", []
                say(b"250 2.0.0 ok\r\n")
            elif verb == "NOOP":
                say(b"250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                say(b"221 2.0.0 bye\r\n")
                return
            else:
                say(b"502 5.5.1 not implemented\r\n")


def wait_for(predicate: Callable[[], object], timeout: float = 60.0,
             what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something true (bounded in
    time: a cap for a loaded machine, not an expected duration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def smarthost_settings(state: Path, port: int, relay: str = 'smarthost_tls = "none"'):
    """The settings of a hub for example.org (state in ``state``, made
    if missing) whose relay sends to 127.0.0.1:``port``, with the
    ``[relay]`` lines ``relay`` besides."""
    state.mkdir(exist_ok=True)
    text = (f'[hub]\nhostname = "mail.example.org"\nstate_dir = "{state}"\n'
            f'domains = ["example.org"]\n[relay]\nsmarthost = "127.0.0.1:{port}"\n{relay}\n')
    return load_text(text, str(state / "hub.toml"))


def queued_entry(folder: Path, body: bytes, rcpts: Sequence[Address],
                 **envelope: Any) -> QueueEntry:
    """A queue entry for ``body`` (written to a new file in ``folder``),
    from alice unless ``envelope`` names a sender."""
    path = folder / f"{len(list(folder.iterdir()))}.msg"
    path.write_bytes(body)
    envelope.setdefault("sender", ALICE)
    e = QueueEntry.new("0123456789ABCDEF", Envelope(recipients=tuple(rcpts), **envelope), 0.0)
    return dataclasses.replace(e, message_path=str(path), size=len(body),
                               crlf_size=len(body) + body.count(b"\n"),
                               eight_bit=not body.isascii())


def attempt_recorded(entries: Sequence[QueueEntry | None]) -> bool:
    """Whether the queue's record of a first attempt is its last word
    for now: every entry read, attempted, owing no notice and not over.
    A recipient's notice is made (into the sender's mailbox) before its
    record drops the debt, and an entry that owes nothing more is
    removed after its record says so: a look between the two sees the
    notice and a record about to change (``failed`` for ``bounced``, a
    success notice still owed, an entry about to go)."""
    return all(e is not None and e.attempts and not e.failed and not e.finished
               and not any(r.notice for r in e.recipients) for e in entries)


@defer.inlineCallbacks
def first_attempt(state: Path, port: int, rcpts: Sequence[Address],
                  settled: Callable[[list[QueueEntry | None], list[bytes]], bool],
                  tries: int = 600, **envelope: Any):
    """The relay queue of a hub for example.org (state in ``state``)
    with 127.0.0.1:``port`` as its smarthost, one entry from alice for
    ``rcpts`` in it: once ``settled(entries, alice's messages)`` (asked
    every 0.1 s, ``tries`` times at most: a minute, a bound for a hub
    that hangs; never settled fails, rather than hand the caller a
    record still changing), the records of the recipients left in the
    queue, and the notices alice got."""
    from twisted.internet import reactor

    text = (f'[hub]\nhostname = "mail.example.org"\nstate_dir = "{state}"\n'
            f'domains = ["example.org"]\n[relay]\nsmarthost = "127.0.0.1:{port}"\n'
            # (no DNS is asked: a name server the system's resolver
            # would watch resolv.conf for, a timer left behind)
            'smarthost_tls = "none"\nnameservers = ["127.0.0.1:9"]\n')
    settings = load_text(text, str(state / "hub.toml"))
    spooler = MemorySpooler()
    store = MemoryMailboxStore(spooler=spooler)
    parts = Components(settings=settings, reactor=reactor,
                       router=StaticRouter({"alice": None}), store=store, spooler=spooler,
                       portal=None)
    service = RelayService(parts)
    parts.queue = service.queue
    service.startService()
    try:
        path = state / "in.msg"
        path.write_bytes(b"Subject: probe\nMessage-ID: <probe@example.org>\n\nbody\n")
        size = path.stat().st_size
        yield service.queue.enqueue(Envelope(sender=ALICE, recipients=tuple(rcpts), **envelope),
                                    SpooledMessage(str(path), size, size + 4))
        for _ in range(tries):
            yield task.deferLater(reactor, 0.1, lambda: None)
            entries = [service.queue.read(i) for i in service.queue.ids()]
            if settled(entries, store.messages("alice@example.org")):
                break
        else:
            raise AssertionError(f"the first attempt never settled: {entries}, "
                                 f"{len(store.messages('alice@example.org'))} notices")
        records = [r for i in service.queue.ids() for r in service.queue.read(i).recipients]
        notices: list[EmailMessage] = [
            email.message_from_bytes(m, policy=policy.default)
            for m in store.messages("alice@example.org")]
    finally:
        yield service.stopService()
    return records, notices
