"""Shared fixtures: a real hub in a subprocess, test certificates, free ports.

``make_hub(...)`` writes a config into a temporary folder, adds users with
the real ``mailhub user add`` code path, starts ``twistd -n mailhub
--config ...`` and waits until every listener answers.  Its listeners are
``tcp:0`` (the kernel picks a free port as the hub binds it) and their
ports are read from the hub's "<role> listening on 127.0.0.1:<port>" log
lines, at every start: a port picked here and bound later, in the hub, may
be taken in between by any process on the machine ("Address already in
use" at the hub's start).  ``make_hub(fixed_ports=True)`` picks them here,
for the tests that need them before the hub starts, and starts the hub
again on new ports if one was taken in between.
``hub`` is ``make_hub()`` with the defaults.  Every hub is stopped (SIGTERM,
then SIGKILL) at the end of the test.

    def test_x(make_hub):
        hub = make_hub(tls=True, sections={"relay": {"port": 2526}})
        with smtplib.SMTP("127.0.0.1", hub.smtp_port) as s: ...
        assert hub.messages("alice@example.org")

Every test module must give back the file descriptors it opened
(``_no_descriptor_leaks``): a spooler or syncer left open keeps its
descriptors for the rest of the run, and once the process holds more than
1024 of them a later test's ``select()`` breaks.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import gc
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

BIN = Path(sys.executable).parent
TWISTD = shutil.which("twistd", path=str(BIN)) or "twistd"

#: the warnings of the default [submission] and [pop3] listeners, which
#: take connections from other machines (every address): configs without
#: [tls] have them, in tests of something else
DEFAULT_LISTENER_WARNING = re.compile(r": \[(submission|pop3)\] listen: the default ")


def no_logins(text: str) -> str:
    """``text`` with ``listen = []`` for [submission] and [pop3] when it
    has no such section: without [tls], their default listeners are a
    warning (``DEFAULT_LISTENER_WARNING``), in tests about something else."""
    return text + "".join(f"[{section}]\nlisten = []\n" for section in ("submission", "pop3")
                          if f"[{section}]" not in text)

# Hypothesis's deadline for each example (200 ms unless a test says
# otherwise) is a wall-clock limit: with the suite's workers and the hubs
# they start sharing two cores, an example slowed by them failed a test
# for no fault of the code.  None here; the tests that are about time
# compare CPU times or count steps.
hypothesis_settings.register_profile("txmailhub", deadline=None)
hypothesis_settings.load_profile("txmailhub")

DEFAULT_USERS: dict[str, str] = {
    "alice@example.org": "alice-secret",
    "bob@example.org": "bob-secret",
    "carol@example.net": "carol-secret",
}
APOP_USERS = ("alice@example.org",)


#: descriptors a test module may leave open: one-time allocations of the
#: process land in whichever module comes first (the global reactor's epoll
#: and waker pipe, Twisted's reserved descriptor for EMFILE: 4 in all); one
#: ``Spooler`` left open is up to 17 (its lock and, on a slow disk or with
#: ``ahead_after=0``, 16 files made ahead).
FD_LEAK_LIMIT = 10
#: and however they add up, never near select()'s FD_SETSIZE of 1024
FD_CEILING = 512


def open_descriptors() -> dict[int, str]:
    """This process's open descriptors and what each points at, after a
    garbage collection (file objects and sockets close when collected;
    raw ``os.open`` descriptors never do)."""
    gc.collect()
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, now closed
            pass
    return fds


@pytest.fixture(scope="module", autouse=True)
def _no_descriptor_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the module that leaves more than ``FD_LEAK_LIMIT`` descriptors
    open (an error at the teardown of its last test), naming what they
    point at; and the module after which, for the first time, more than
    ``FD_CEILING`` are open.

    Why: tests that made ``Spooler``s without closing them left ~1,700
    descriptors open after tests/test_spool.py, and an eventfd numbered
    above 1024 then broke a later select()-based test -- far from the
    cause, and only in some orders."""
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    before = open_descriptors()
    yield
    after = open_descriptors()
    grown = len(after) - len(before)
    # the ceiling blames only the module that crossed it, not every later one
    if grown > FD_LEAK_LIMIT or len(before) <= FD_CEILING < len(after):
        new = [target for fd, target in after.items() if before.get(fd) != target]
        # "spool/" for /tmp/.../spool/<name>, "pipe:" for pipe:[1234]
        common = collections.Counter(
            os.path.basename(os.path.dirname(t)) + "/" if t.startswith("/")
            else t.split("[")[0] for t in new
        ).most_common(5)
        pytest.fail(
            f"{request.module.__name__} left {grown} more file descriptors open "
            f"({len(after)} in all; limits: {FD_LEAK_LIMIT} per module, {FD_CEILING} "
            f"in all); close spoolers, stop syncers.  Most of them: {common}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so nothing (trial's ``mktemp``
    included) ever writes into the source tree."""
    monkeypatch.chdir(tmp_path)


#: the listen description that lets the kernel choose the port
EPHEMERAL = "tcp:0:interface=127.0.0.1"
#: (section, key) of each listener the fixture configures, by ``Hub.ports`` key
LISTENERS = {
    "smtp": ("smtp", "listen"),
    "submission": ("submission", "listen"),
    "submission_tls": ("submission", "tls_listen"),
    "pop3": ("pop3", "listen"),
    "pop3_tls": ("pop3", "tls_listen"),
}
#: txmailhub.service's log line for a bound listener, by ``ListenerService`` role
_LISTENING = re.compile(
    r"\] (smtp|submission|pop3)( \(implicit TLS\))? listening on 127\.0\.0\.1:(\d+)$",
    re.MULTILINE,
)


@pytest.fixture(autouse=True)
def _pop3_size_jobs_on_a_still_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A POP3 login's size-measuring job stops after SIZE_JOB_SECONDS of
    the real clock: a test expecting one job to measure several messages
    (three long UTF-8 header sections are some 0.35 s here) passed or
    failed with the machine's load, and an inline syncer recursed once
    per job.  Tests of that limit set ``_now`` themselves."""
    from txmailhub.pop3 import protocol

    monkeypatch.setattr(protocol, "_now", lambda: 0.0)


@pytest.fixture
def downgrades(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each header section the POP3 server downgrades (RFC
    6857), one entry a call: which reads a test's session paid for."""
    from txmailhub.downgrade import downgrade_header
    from txmailhub.pop3 import protocol

    calls: list[int] = []

    def counting(header: bytes) -> bytes:
        calls.append(len(header))
        return downgrade_header(header)

    monkeypatch.setattr(protocol, "downgrade_header", counting)
    return calls


def stalled_turn(clock: Any, seconds: float) -> None:
    """The reactor thread was stuck for ``seconds`` (a ``write`` on a frozen
    filesystem, a stopped process); then the timed-call half of its next
    turn runs: the calls due by now, but not those they make -- as in
    Twisted's ``runUntilCurrent``, those wait for the next turn, after its
    reads.  (``Clock.advance`` runs them at once, reads or not.)  What the
    client sent during the stall is for the test to deliver next, as the
    turn's reads would."""
    clock.rightNow += seconds
    due = sorted((c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()),
                 key=lambda c: c.getTime())
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def drawn_reads(data: Any, wire: bytes) -> list[bytes]:
    """``wire`` cut into the reads a client's TCP could make of it, drawn
    from hypothesis's ``data``: whole, one octet each (a short wire), or
    cut at up to six random places.  The stateful SMTP and POP3 models
    send their queued commands this way, so both explore the same cuts."""
    from hypothesis import strategies as st

    mode = data.draw(st.sampled_from(["whole", "random", "bytes"]), label="reads")
    if mode == "whole":
        return [wire]
    if mode == "bytes" and len(wire) < 400:
        return [wire[i : i + 1] for i in range(len(wire))]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)),
                                         max_size=6), label="cuts")))
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


def read_empty(fd: int) -> None:
    """Return once the reader of the pipe ``fd`` has taken every octet
    written to it (its ``FIONREAD`` count is 0; five seconds at most),
    and a little after: for a writer thread that must pause *after* the
    reader has read up to the pause -- a reader that took the pause for
    the end of its input is what the tests that use it catch."""
    import fcntl
    import termios

    empty = b"\0\0\0\0"
    for _ in range(500):
        if fcntl.ioctl(fd, termios.FIONREAD, empty) == empty:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # the reader is past the data by now


def not_waiting_on(fifo: Path, call: Callable[[], Any], seconds: float = 20) -> Any:
    """``call()``'s result, which must come without a writer ever opening
    the FIFO at ``fifo``: code that opens it plainly to read waits for
    one for ever.  Such a wait fails the test (after ``seconds``, a
    ceiling, no measure), and is ended by opening the FIFO for writing,
    so that no thread is left blocked.  ``call()``'s exception is raised."""
    import threading

    done: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            done.append((True, call()))
        except BaseException as e:  # handed to the test
            done.append((False, e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if not done:
        # the reader sees an end -- each time it opens the FIFO again (code
        # that reads it plainly may open it more than once), for a minute
        # at most: a thread still blocked then is left (a daemon)
        for _ in range(600):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader at this moment (ENXIO), or no FIFO any more
            t.join(0.1)
            if not t.is_alive():
                break
        pytest.fail(f"blocked opening the FIFO {fifo}")
    ok, value = done[0]
    if not ok:
        raise value
    return value


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's own, 0700, is root's alone),
    for commands run as another user (``as_user``)."""
    import tempfile

    folder = Path(tempfile.mkdtemp())
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def as_user(uid: int, gid: int, call: Callable[[], Any]) -> Any:
    """``call()`` in a forked child that runs as ``uid``:``gid`` (no
    supplementary groups), its value (or exception) pickled back: a test
    run as root sees what another user's command says, with the kernel's
    own refusals (root is refused nothing).  Root only.  Run ``call`` once
    as root first: a module it imports lazily may be in a folder that user
    may not read (an interpreter under /root).

    Whatever the child did is told: an exception (or value) pickle cannot
    carry comes back as a ``RuntimeError`` with its text and traceback, a
    failure to become that user as its own exception, and a child that
    died before answering (a signal) with its wait status.  A parent
    interrupted while it waits (pytest-timeout, ^C) kills and reaps the
    child, which would otherwise outlive the test."""
    import pickle
    import signal
    import traceback

    read, write = os.pipe()
    # signals held from before the fork until the parent is within its
    # ``try``: one that came between the two (the child run first, as on a
    # loaded machine, and interrupting the parent at once) left the child
    # running, never reaped
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            os.close(read)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                result: tuple[bool, Any] = (True, call())
            except BaseException as e:
                e.add_note("in the child, as uid " + str(uid) + ":\n"
                           + "".join(traceback.format_exception(e)))
                result = (False, e)
            try:
                data = pickle.dumps(result)
            except BaseException as e:  # a lock, a socket, a local class...
                told = ("".join(traceback.format_exception(result[1])) if not result[0]
                        else repr(result[1]))
                data = pickle.dumps((False, RuntimeError(
                    f"in the child, as uid {uid}: what it {'returned' if result[0] else 'raised'}"
                    f" cannot be pickled ({e!r}):\n{told}")))
            with os.fdopen(write, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            data = f.read()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if not data:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        raise RuntimeError(f"the child run as uid {uid} ended without an answer ({how})")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound, read, released).

    Released: another process may take one before it is used.  Only for a
    program that must be given its port, and then with a retry on
    "Address already in use" (``Hub.start`` for ``fixed_ports``); a port
    nothing may listen on is ``dead_port()``, a port to occupy is bound
    as port 0 and read back."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _reserve_port() -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to the same 127.0.0.1 port (port 0 for
    TCP, the same number for UDP, retried if that is taken)."""
    for _ in range(50):
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        # connected to itself, the UDP socket matches no datagram anyone
        # else sends: the kernel answers each with "port unreachable", as
        # for a port nobody holds
        udp.connect(("127.0.0.1", port))
        return tcp, udp
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A 127.0.0.1 port where nothing answers, for as long as the block
    runs: TCP connections are refused, UDP datagrams unanswered.

    A port picked free and released could be taken by any process before
    it is used (the suite's other workers start servers and hubs on port
    0): a test meaning "nothing listens there" would reach someone else's
    server.  The port stays bound here -- TCP bound but not listening, so
    connections are refused (ECONNREFUSED), and UDP bound -- and nobody
    else can bind it."""
    tcp, udp = _reserve_port()
    try:
        yield tcp.getsockname()[1]
    finally:
        tcp.close()
        udp.close()


def make_certificate(folder: Path, hostname: str = "localhost",
                     names: bool = True) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname`` and 127.0.0.1 (PEM files).

    Clients trust it with ``ssl.create_default_context(cafile=cert)``.
    ``names=False``: no subjectAltName at all, ``hostname`` only as the
    subject's common name (which no name check looks at any more)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = (
        builder
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)``: a self-signed pair for localhost/127.0.0.1."""
    return make_certificate(tmp_path / "tls")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_toml(path: Path, doc: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        lines.append("")
    path.write_text("\n".join(lines))


def mailhub(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``mailhub`` CLI (``python -m txmailhub``) against ``config``."""
    return subprocess.run(
        [sys.executable, "-m", "txmailhub", "--config", str(config), *args],
        input=input, capture_output=True, text=True, timeout=60,
    )


@dataclass
class Hub:
    folder: Path
    config_path: Path
    doc: dict[str, dict[str, Any]]
    ports: dict[str, int]
    users: dict[str, str]
    #: the command that runs twistd (its arguments follow); ``None``: twistd
    launcher: list[str] | None = None
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    #: where the current run's lines start in ``log_path`` (it is appended to)
    log_offset: int = field(init=False, default=0)
    #: ``make_hub(fixed_ports=True)``: picks new fixed ports and rewrites the
    #: config, for a start that failed with "Address already in use"
    repick: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.log_path = self.folder / "hub.log"

    # ports by role
    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def smtps_port(self) -> int:
        return self.ports["submission_tls"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3_tls"]

    @property
    def state_dir(self) -> Path:
        return self.folder / "var"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def maildir(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.state_dir / "mail" / domain.lower() / local.lower()

    def message_files(self, address: str) -> list[Path]:
        box = self.maildir(address)
        return sorted(p for sub in ("new", "cur") if (box / sub).is_dir()
                      for p in (box / sub).iterdir())

    def messages(self, address: str) -> list[bytes]:
        return [p.read_bytes() for p in self.message_files(address)]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mailhub(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return mailhub(self.config_path, *args, input=input)

    #: how many times a ``fixed_ports`` start is tried on new ports
    FIXED_PORT_TRIES = 5

    def start(self, wait: bool = True) -> Hub:
        """Start the hub; with ``wait``, return once every listener answers
        (and the ``tcp:0`` ones' ports are known, new at each start).

        Fixed ports (picked free, released, then bound by the hub) may have
        been taken in between by another process: such a start, which ends
        with "Address already in use", is tried again on new ports, a few
        times."""
        for tries_left in range(self.FIXED_PORT_TRIES - 1, -1, -1):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_listening()
                return self
            except AssertionError:
                if (self.repick is None or not tries_left or self.proc is None
                        or self.proc.poll() is None
                        or "Address already in use" not in self.run_log()):
                    raise
                self.proc = None
                self.repick()
        raise AssertionError("unreachable")

    def run_log(self) -> str:
        """The current run's lines of the log."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")
        self.log_offset = log.tell()
        self.proc = subprocess.Popen(
            [*(self.launcher or [TWISTD]), "-n", "--pidfile=", "--logfile=-", "mailhub",
             "--config",
             str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
        )
        log.close()

    def ephemeral_roles(self) -> set[str]:
        """The ``Hub.ports`` keys whose listener is ``tcp:0`` in the config."""
        return {role for role, (section, key) in LISTENERS.items()
                if EPHEMERAL in self.doc.get(section, {}).get(key, ())}

    def bound_ports(self) -> dict[str, int]:
        """The ports the current run logged as bound, by ``Hub.ports`` key
        (the first of a role's listeners)."""
        bound: dict[str, int] = {}
        for role, tls, port in _LISTENING.findall(self.run_log()):
            bound.setdefault(role + ("_tls" if tls else ""), int(port))
        return bound

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        unknown = self.ephemeral_roles()
        if self.repick is not None:
            # a fixed port answering may be another process's server, its
            # hub gone with "Address already in use": the hub's log line
            # says the port is its own
            unknown |= {role for role in self.ports if role in LISTENERS}
        pending = dict(self.ports)
        pending.pop("spare", None)
        while pending:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"hub exited with {self.proc.returncode} while starting:\n{self.log_text()}"
                )
            if unknown:
                # a port of this run, logged once bound; until then an old
                # run's port (or 0) must not be taken for an answer
                bound = self.bound_ports()
                for role in [r for r in unknown if r in bound]:
                    self.ports[role] = pending[role] = bound[role]
                    unknown.discard(role)
                if unknown:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"hub did not log a port for {sorted(unknown)}:\n{self.log_text()}"
                        )
                    time.sleep(0.05)
                    continue
            for role, port in list(pending.items()):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    del pending[role]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"hub not listening on {pending}:\n{self.log_text()}")
            if pending:
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the hub and wait; returns its exit code (None if not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Hub:
        self.stop()
        return self.start()

    def listen_on(self, role: str, port: int) -> None:
        """Point the ``role`` listener (a ``Hub.ports`` key) at ``port`` in
        the config file: a test that occupies a port binds port 0 itself,
        reads the port back, and gives it to the hub this way."""
        section, key = LISTENERS[role]
        self.doc[section][key] = [f"tcp:{port}:interface=127.0.0.1"]
        self.ports[role] = port
        write_toml(self.config_path, self.doc)


def _hub_config(
    folder: Path, ports: dict[str, int], tls: tuple[Path, Path] | None,
    sections: dict[str, dict[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    def listen(port: int) -> str:
        return EPHEMERAL if port == 0 else f"tcp:{port}:interface=127.0.0.1"

    doc: dict[str, dict[str, Any]] = {
        "hub": {"hostname": "mail.example.org", "state_dir": "var",
                "domains": ["example.org", "example.net"]},
        "users": {"file": "users"},
        "smtp": {"listen": [listen(ports["smtp"])]},
        "submission": {"listen": [listen(ports["submission"])]},
        "pop3": {"listen": [listen(ports["pop3"])]},
        # no DNS server exists in the test sandbox: point the relay at a dead
        # local port unless a test sets its own nameservers.
        "relay": {"nameservers": [f"127.0.0.1:{ports['spare']}"]},
    }
    if tls is not None:
        doc["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        doc["submission"]["tls_listen"] = [listen(ports["submission_tls"])]
        doc["pop3"]["tls_listen"] = [listen(ports["pop3_tls"])]
    for section, table in (sections or {}).items():
        doc.setdefault(section, {}).update(table)
    return doc


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Factory: ``make_hub(users=..., tls=False, sections=None, start=True,
    fixed_ports=False)``.

    ``users`` maps address -> password (default: alice, bob @example.org,
    carol@example.net; alice also with APOP).  ``sections`` updates the
    config tables (``{"smtp": {"max_recipients": 2}}``).  ``tls=True``
    generates a certificate and adds the implicit-TLS listeners; the
    certificate is ``hub.folder / "tls" / "cert.pem"``.  The listeners
    are ``tcp:0`` and ``hub.ports`` is filled in at each start (a restart
    gets new ports), unless ``fixed_ports``: then they are picked free here
    and known before the start (another process may take one before the
    hub binds it: ``Hub.start`` then tries again on new ports, which a test
    that wrote the old ones elsewhere must read back from ``hub.ports``).
    ``launcher`` runs twistd another way (a command whose arguments are
    twistd's)."""
    hubs: list[Hub] = []
    counter = iter(range(1000))
    spares = contextlib.ExitStack()

    def factory(
        users: dict[str, str] | None = None,
        tls: bool = False,
        sections: dict[str, dict[str, Any]] | None = None,
        start: bool = True,
        fixed_ports: bool = False,
        launcher: list[str] | None = None,
    ) -> Hub:
        folder = tmp_path / f"hub{next(counter)}"
        folder.mkdir()
        roles = ["smtp", "submission", "pop3", "spare"]
        if tls:
            roles += ["submission_tls", "pop3_tls"]
        # 0: the hub binds port 0 and its log says which port it got.  The
        # spare port is a dead DNS server's: held by dead_port() until the
        # fixture ends, as a port merely picked free could become another
        # test's (fake DNS) server meanwhile
        ports = dict.fromkeys(roles, 0)
        ports["spare"] = spares.enter_context(dead_port())
        picked = [r for r in roles if r != "spare"] if fixed_ports else []
        ports.update(zip(picked, free_ports(len(picked))))
        pair = make_certificate(folder / "tls") if tls else None
        doc = _hub_config(folder, ports, pair, sections)
        config = folder / "mailhub.toml"
        write_toml(config, doc)
        users = DEFAULT_USERS if users is None else users
        hub = Hub(folder, config, doc, ports, dict(users), launcher)
        if fixed_ports:
            def repick() -> None:
                # only the listeners still on their picked port (a test may
                # have pointed one elsewhere meanwhile, or at a UNIX socket)
                for role, port in zip(picked, free_ports(len(picked))):
                    section, key = LISTENERS[role]
                    old = f"tcp:{hub.ports.get(role)}:interface=127.0.0.1"
                    if role in hub.ports and hub.doc[section].get(key) == [old]:
                        hub.listen_on(role, port)
            hub.repick = repick
        _add_users(config, users)
        hubs.append(hub)
        if start:
            hub.start()
        return hub

    with spares:
        yield factory
        for hub in hubs:
            hub.stop()


def _add_users(config: Path, users: dict[str, str]) -> None:
    """Add users through ``UsersDB``, the code ``mailhub user add`` runs,
    with the password policy off (``--allow-weak``): test passwords such as
    ``alice-secret`` name their user, and tests pick short ones freely."""
    from txmailhub.config import load
    from txmailhub.users import UsersDB

    settings = load(str(config))
    db = UsersDB(settings.users.file, settings.hub.primary_domain, settings.hub.domains)
    for address, password in users.items():
        db.add(address, password, allow_apop=address in APOP_USERS, allow_weak=True)
    if users:
        settle(settings.users.file)


def settle(path: str | os.PathLike[str]) -> None:
    """Date ``path`` a minute back, as a file written well before the hub
    reads it.  A users or aliases file changed less than two seconds
    before a lookup may have been read half-written, and a recipient
    missing from it is answered 451, not 550 (``txmailhub.filestamp``):
    a test that starts a hub right after writing the file, and asks for
    an unknown recipient, means the file as it stands."""
    old = time.time() - 60
    os.utime(path, (old, old))


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    """A running hub with the default users and no TLS."""
    return make_hub()


@pytest.fixture
def no_marker_descriptor_left() -> Iterator[None]:
    """A test leaves no attempt marker's descriptor listed as held
    (``txmailhub.relay.inflight``).  One left belongs to an attempt the
    test never ended (a delivery on a ``Clock`` never answered, a stop
    still waiting for it): it stays open for the rest of the run, and the
    fork hook closes the listed numbers in every child a later test forks
    -- a number closed by other means and reused, that file (the pipe of
    ``as_user``'s child, once).  The test ends its attempts, or stops its
    runner without grace.  Used by every test module that makes queue
    runners or marks attempts (``pytestmark =
    pytest.mark.usefixtures("no_marker_descriptor_left")``).  What is left
    is closed (the attempt's end, should it come later, then touches
    nothing: ``inflight.unmark``), and the test fails."""
    from txmailhub.relay import inflight

    yield
    left = {}
    for fd in sorted(inflight._held):  # (no garbage collection first: it ended some)
        try:
            left[fd] = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            left[fd] = "?"
        inflight._close_held(fd)  # the next test's list is its own
    assert not left, ("attempt marker descriptors still listed as held: "
                      + ", ".join(f"{fd} ({name})" for fd, name in left.items()))


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every event logged through twisted.logger while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """The events logged while the test runs that carry a failure or are
    errors: a hub that answers well but logs a traceback has a fault."""
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@contextlib.contextmanager
def leased(path: Path) -> Iterator[list[int]]:
    """A write lease on ``path`` held by this process, given up when the
    kernel asks (SIGIO: another open of the file), as Samba or an NFS
    server gives up theirs; the signals that asked are counted."""
    asked: list[int] = []
    fd = os.open(path, os.O_RDONLY)

    def give_up(signum: int, frame: object) -> None:
        asked.append(signum)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    before = signal.signal(signal.SIGIO, give_up)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as e:  # leases off (fs.leases-enable), or a file system without
            pytest.skip(f"no lease can be taken here: {e}")
        yield asked
    finally:
        signal.signal(signal.SIGIO, before)
        os.close(fd)
