"""Next-hop SMTP servers nobody here wrote, for the relay's interop tests
(test_relay_interop.py), all on 127.0.0.1:

* ``SinkServer``: Postfix's ``smtp-sink`` as a subprocess (each message
  dumped to a file, its MAIL and RCPT arguments included); its options
  drop EHLO features, refuse chosen commands or hang up after them.
* ``AioServer``: aiosmtpd's controller (its own event loop on a thread),
  with STARTTLS and AUTH when asked; replies per recipient.
* ``twisted_server``: Twisted's own ``ESMTP`` in the test's reactor
  (no 8BITMIME, SIZE, PIPELINING or DSN), with STARTTLS and AUTH (cred)
  when asked, refusing chosen recipients, or hanging up after DATA's 354.

A missing program or package skips the test that needs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.mail import smtp
from twisted.mail.imap4 import PLAINCredentials
from zope.interface import implementer


def free_port() -> int:
    """A port free now, released: another process may take it before the
    caller binds it (``SinkServer`` tries again on a new one then)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on 127.0.0.1:``port`` (/proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == want and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """The socket inodes process ``pid`` holds."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


class SinkServer:
    """``smtp-sink OPTIONS 127.0.0.1:PORT``, dumping each message into a
    folder of its own."""

    def __init__(self, *options: str) -> None:
        program = shutil.which("smtp-sink") or (
            "/usr/sbin/smtp-sink" if os.access("/usr/sbin/smtp-sink", os.X_OK) else None)
        if program is None:
            pytest.skip("Postfix's smtp-sink is not installed")
        # Not under pytest's tmp_path: as root, smtp-sink must run as another
        # user (-u), who cannot enter /tmp/pytest-of-root -- which every
        # pytest session starting meanwhile makes private again.
        self.folder = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        self._seen: list[str] = []  # the dump files, in the order dumps() first saw them
        user: list[str] = []
        if os.geteuid() == 0:  # it refuses to run as root without -u
            user = ["-u", "nobody"]
            self.folder.chmod(0o777)
        # smtp-sink must be given its port: one picked free and released,
        # which another process (the suite runs in parallel) may bind
        # first.  smtp-sink then exits ("Address already in use"), and is
        # started again on a new port, a few times.  A connection that
        # succeeds proves nothing (it may reach that other process): the
        # port counts as smtp-sink's once its own socket listens there.
        for _ in range(self.TRIES):
            self.port = self._pick_port()
            self.proc = subprocess.Popen(
                [program, "-4", *user, "-d", f"{self.folder}/m.", *options,
                 f"127.0.0.1:{self.port}", "10"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            # (a cap for a loaded machine: it listens within milliseconds)
            deadline = time.monotonic() + 30
            while self.proc.poll() is None:
                if _listening_inodes(self.port) & _socket_inodes(self.proc.pid):
                    return
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"smtp-sink {options} did not start")
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"smtp-sink {options} did not start in {self.TRIES} tries")

    #: how many ports smtp-sink is tried on
    TRIES = 5

    @staticmethod
    def _pick_port() -> int:
        return free_port()

    def dumps(self) -> list[tuple[dict[str, list[str]], bytes]]:
        """Each message: (smtp-sink's own fields, the message as received),
        in the order the calls first saw them.  The dump files' names are
        random and their times may be equal (a coarse clock): a caller
        that delivers several messages calls this after each delivery."""
        new = sorted(set(glob.glob(f"{self.folder}/m.*")) - set(self._seen))
        assert len(new) <= 1, f"more than one new dump, their order unknown: {new}"
        self._seen += new
        out = []
        for path in self._seen:
            data = Path(path).read_bytes()
            fields: dict[str, list[str]] = {}
            while data.startswith(b"X-"):
                line, data = data.split(b"\n", 1)
                name, _, value = line.decode().partition(": ")
                fields.setdefault(name, []).append(value)
            # its three-line Received field ends what it added; it ends the
            # dump with an empty line of its own
            data = data.split(b"\n", 3)[3]
            out.append((fields, data[:-1] if data.endswith(b"\n") else data))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        shutil.rmtree(self.folder, ignore_errors=True)


class _AioHandler:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []
        self.rcpt_replies: dict[str, str] = {}  # local part -> reply

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = self.rcpt_replies.get(address.split("@")[0])
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.original_content, list(envelope.mail_options)))
        return "250 2.0.0 OK"


class AioServer:
    """aiosmtpd's ``Controller`` on 127.0.0.1; ``options`` go to its SMTP class
    (``tls_context``, ``require_starttls``, ``authenticator``, ...)."""

    def __init__(self, **options: Any) -> None:
        controller = pytest.importorskip("aiosmtpd.controller")

        class Controller(controller.Controller):
            """Binds port 0 and takes the port the kernel gave: a port picked
            free and bound later may be taken in between by another
            process (the suite runs in parallel)."""

            def _create_server(self) -> Any:
                async def bind() -> Any:
                    server = await super(Controller, self)._create_server()
                    # before start() connects to self.port (its readiness check)
                    self.port = server.sockets[0].getsockname()[1]
                    return server
                return bind()

        self.handler = _AioHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=0, **options)
        self.controller.start()
        self.port = self.controller.port

    @property
    def messages(self) -> list[tuple[str, list[str], bytes, list[str]]]:
        return self.handler.messages

    def stop(self) -> None:
        self.controller.stop()


def aio_authenticator(login: bytes, password: bytes) -> Callable[..., Any]:
    """An aiosmtpd authenticator taking only ``login:password``."""
    AuthResult = pytest.importorskip("aiosmtpd.smtp").AuthResult

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = (data.login, data.password) == (login, password)
        return AuthResult(success=ok, handled=False)  # handled=False: it says 535

    return check


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, store: list[tuple[str, bytes]], rcpt: str, proto: Any,
                 hang_up: bool) -> None:
        self.store, self.rcpt, self.proto, self.hang_up = store, rcpt, proto, hang_up
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        if self.hang_up:
            self.proto.transport.abortConnection()
            return
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        self.store.append((self.rcpt, b"".join(x + b"\n" for x in self.lines)))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, server: TwistedServer, proto: Any) -> None:
        self.server, self.proto = server, proto

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Callable[[], _Message]:
        rcpt = str(user.dest)
        code = self.server.refuse.get(user.dest.local.decode())
        if code is not None:
            raise smtp.SMTPBadRcpt(rcpt, code=code)
        return lambda: _Message(self.server.messages, rcpt, self.proto, self.server.hang_up)


class TwistedServer(Factory):
    """Twisted's ``ESMTP``: ``refuse`` maps local parts to a reply code;
    ``hang_up`` drops the connection at the first line of data;
    ``tls`` a server context factory (STARTTLS); ``login`` a
    ``(user, password)`` it takes with AUTH PLAIN or LOGIN (``mechanisms``)."""

    def __init__(self, refuse: dict[str, int] | None = None, hang_up: bool = False,
                 tls: Any = None, login: tuple[bytes, bytes] | None = None,
                 mechanisms: tuple[bytes, ...] = (b"PLAIN", b"LOGIN")) -> None:
        self.refuse = refuse or {}
        self.hang_up = hang_up
        self.tls = tls
        self.messages: list[tuple[str, bytes]] = []
        self.portal = None
        self.challengers: dict[bytes, Any] = {}
        if login is not None:
            known = {b"PLAIN": PLAINCredentials, b"LOGIN": smtp.LOGINCredentials}
            self.challengers = {m: known[m] for m in mechanisms}
            checker = InMemoryUsernamePasswordDatabaseDontUse(**{login[0].decode(): login[1]})
            self.portal = Portal(_Realm(self), [checker])

    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        proto = smtp.ESMTP(chal=self.challengers, contextFactory=self.tls)
        proto.factory = self
        proto.host = b"twisted.test"
        if self.portal is not None:
            proto.portal = self.portal
        else:
            proto.delivery = _Delivery(self, proto)
        return proto


@implementer(IRealm)
class _Realm:
    def __init__(self, server: TwistedServer) -> None:
        self.server = server

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return smtp.IMessageDelivery, _Delivery(self.server, None), lambda: None
