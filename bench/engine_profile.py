"""In-process cost of one SMTP session: calls, time and instructions.

Drives the real SMTP server path -- ``SMTPFactory``/``SMTPProtocol`` from
``txmailhub.smtp.protocol``, built from ``service.build_components`` exactly
as ``twistd mailhub`` builds them (the real ``Router``, ``UsersDB``,
``Spooler``, ``MaildirStore`` and ``Syncer``) -- through N complete
sessions of the benchmark's load, without sockets or a reactor loop:

    connectionMade
    EHLO client.example                       (one dataReceived each)
    MAIL FROM:<sender@example.net>
    RCPT TO:<user@example.org>
    DATA
    <headers + 1 KiB body>\\r\\n.\\r\\n        (--size; one read, as smtp-source's
                                              body and "." arrive; strace
                                              counts 6 reads per message;
                                              --split-dot makes it two)
    QUIT
    connectionLost

What is real and what is not:

* The state directory is a fresh folder on tmpfs (``/dev/shm``, or
  ``--dir``): spool files, fsync, the rename into ``Maildir/new`` and the
  directory fsync all happen, through the real ``Syncer``.  With
  ``--sync aio`` (the default, the path ``twistd mailhub`` takes on
  Linux) the ``Syncer`` makes its kernel requests (``AioSyncs``) to a
  ring on this thread: each fsync is made with ``os.fsync`` once the read
  that asked for it has been handled, and reaped then, as the eventfd
  wakes the reactor in a later turn (its other jobs, ``call()``, run as
  with ``--sync threads``).  With ``--sync threads`` its batch
  jobs run on the calling thread (the ``Syncer``'s ``run_in_thread``
  hook, as in the tests) instead of on its worker thread, at the same
  moment, every message its own batch (under load the real hub gathers a
  few per batch).  So the numbers leave out the kernel's or the worker
  thread's hand-offs (and Twisted's sockets, ``epoll`` and the accept),
  and include everything the reactor thread runs in Python for a
  message.
* The transport is Twisted's ``StringTransport``, with the replies sent
  as ``ResponseWriter`` sends them to a TCP socket (see ``_Wire``); the
  clock is a ``MemoryReactorClock`` reading ``time.time`` as the real
  reactor does (the idle timer is armed and cancelled as for real).
* Logging: by default every event goes to an observer that drops it
  (our side of the log line is counted, Twisted's file observer is not);
  ``--log text`` writes them to ``/dev/null`` through the observer
  ``twistd mailhub --logfile`` uses (``txmailhub.logtext``: the lines of
  Twisted's ``textFileLogObserver``, made for less CPU).
* The garbage collector is tuned as ``twistd mailhub`` tunes it
  (``tap.tune_gc``).
* Every session is checked: the replies must be 220/250/250/250/354/250/221
  and the message must be in ``Maildir/new``; the stored files are
  removed between repetitions (outside the timed part).

Modes (all print per-session figures):

    python bench/engine_profile.py time [--sessions 500 --reps 15]
        CPU time (process_time: time the process was descheduled is not
        in it) and wall time per session, median and spread of reps
    python bench/engine_profile.py profile [--sessions 500 --top 25]
        cProfile: calls per session per function (top N by calls and by
        own time), and the total Python calls per session
    python bench/engine_profile.py callgrind [--small 50 --large 250]
        runs itself twice under ``valgrind --tool=callgrind`` (needs
        valgrind; PYTHONHASHSEED=0 unless set) and prints (Ir(large) - Ir(small)) / (large - small):
        user-space instructions per session, the steadiest measure on a
        noisy machine
    python bench/engine_profile.py run --sessions N
        just N sessions (what the callgrind mode runs under valgrind)

Only the repository (and its virtualenv) is needed:
``.venv/bin/python bench/engine_profile.py profile``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# this checkout's txmailhub first; and not bench/ itself, whose profile.py
# would shadow the standard library's (cProfile imports it)
sys.path[:] = [os.path.dirname(HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from twisted.internet import defer  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from txmailhub.config import load  # noqa: E402
from txmailhub.logtext import ClassicTextObserver  # noqa: E402
from txmailhub.sending import ResponseWriter  # noqa: E402
from txmailhub.service import build_components  # noqa: E402
from txmailhub.smtp import protocol as smtp_protocol  # noqa: E402
from txmailhub.smtp.protocol import SMTPFactory  # noqa: E402
from txmailhub.tap import tune_gc  # noqa: E402
from txmailhub.users import UsersDB  # noqa: E402

DOMAIN = "example.org"
USER = "user"
EXPECTED = (b"220", b"250", b"250", b"250", b"354", b"250", b"221")


def body(size: int = 1024) -> bytes:
    """A message like smtp-source's: a few header fields, then ``size``
    octets of text in lines of 78, CRLF, ending with the end-of-data line."""
    head = (b"From: <sender@example.net>\r\nTo: <user@example.org>\r\n"
            b"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            b"Message-Id: <1.2.3@client.example>\r\n\r\n")
    line = b"La de da de da " * 5 + b"La da\r\n"  # 80 octets with CRLF
    text = (line * (size // len(line) + 1))[:size]
    text = text[: text.rfind(b"\r\n") + 2]
    return head + text


class _Wire(StringTransport):
    """A ``StringTransport`` that the adapter's ``ResponseWriter`` writes to
    as it writes to a TCP socket under the reactor: ``send`` takes every
    octet at once (the replies are small), nothing is left in Twisted's
    buffer, so -- as for real -- no producer is registered and no flush is
    scheduled."""

    TLS = False
    dataBuffer = b""
    _tempDataLen = 0
    connected = True

    def send(self, data: bytes) -> int:
        self.io.write(data)
        return len(data)


class _WireWriter(ResponseWriter):
    __slots__ = ()

    def __init__(self, transport: Any) -> None:
        super().__init__(transport)
        if isinstance(transport, _Wire):
            self._send = transport.send


smtp_protocol.ResponseWriter = _WireWriter  # type: ignore[misc]


class Bench:
    """One hub's components on a fresh state directory, and sessions against it."""

    def __init__(self, where: str, log: str = "drop", split_dot: bool = False,
                 size: int = 1024, sync: str = "aio") -> None:
        self.root = tempfile.mkdtemp(prefix="txmh-engine-", dir=where)
        config = os.path.join(self.root, "mailhub.toml")
        with open(config, "w") as f:
            f.write(f"""[hub]
hostname = "bench.localhost"
state_dir = "var"
domains = ["{DOMAIN}"]

[users]
file = "users"

[smtp]
listen = []
max_connections = 1000

[submission]
listen = []

[pop3]
listen = []
""")
        open(os.path.join(self.root, "users"), "w").close()
        settings = load(config)
        UsersDB(settings.users.file, settings.hub.primary_domain,
                settings.hub.domains).add(USER, "bench-password")
        # a users file as a running hub sees it: not changed in the last
        # seconds (txmailhub.filestamp reads a freshly changed file again at
        # every lookup for RACY_SECONDS, which is not the steady state)
        past = time.time() - 60
        os.utime(settings.users.file, (past, past))
        self.settings = settings
        self.clock = MemoryReactorClock()
        # the real reactor's clock is time.time itself (a C function)
        self.clock.seconds = time.time  # type: ignore[method-assign]
        self.components = c = build_components(settings, self.clock)
        # The Syncer's work runs on this thread (see the module docstring).
        c.syncer._want_aio = False  # never a real ring
        if sync == "aio":
            self.jobs = _InlineRing(self.clock)
            c.syncer.aio = self.jobs.syncs
            # its other work (call(): the spool's files made ahead) as for
            # --sync threads: worker threads need a real reactor
            c.syncer._run_injected = self.jobs.calls
        else:
            self.jobs = _Jobs()
            c.syncer._run_injected = self.jobs
        c.spooler.claim()
        self.factory = SMTPFactory(c)
        self.maildir_new = os.path.join(settings.mail_dir, DOMAIN, USER, "new")
        data = body(size)
        commands = [b"EHLO client.example\r\n", b"MAIL FROM:<sender@example.net>\r\n",
                    b"RCPT TO:<user@example.org>\r\n", b"DATA\r\n"]
        if split_dot:
            commands += [data, b".\r\n"]
        else:
            commands.append(data + b".\r\n")
        commands.append(b"QUIT\r\n")
        self.commands = commands
        self.stored = 0
        if log == "text":
            sink = open(os.devnull, "w")  # lives as long as the process
            observers = [ClassicTextObserver(sink)]  # as twistd mailhub --logfile
        else:
            observers = [lambda event: None]
        globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False,
                                         discardBuffer=True)
        tune_gc()

    def session(self, port: int) -> StringTransport:
        addr = IPv4Address("TCP", "127.0.0.1", port)
        proto = self.factory.buildProtocol(addr)
        t = _Wire(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
        proto.makeConnection(t)
        jobs = self.jobs
        for chunk in self.commands:
            proto.dataReceived(chunk)
            jobs.run()
        proto.connectionLost(Failure(ConnectionDone()))
        return t

    def sessions(self, n: int, check: bool = True) -> None:
        transports = [self.session(1024 + i % 60000) for i in range(n)]
        self.stored += n
        if check:
            for t in transports:
                codes = tuple(line[:3] for line in t.value().split(b"\r\n")
                              if line[:3].isdigit() and line[3:4] == b" ")
                if codes != EXPECTED:
                    raise SystemExit(f"unexpected replies: {t.value()!r}")
            found = len(os.listdir(self.maildir_new))
            if found != self.stored:
                raise SystemExit(f"{found} messages in new/, {self.stored} expected")

    def clean(self) -> None:
        for name in os.listdir(self.maildir_new):
            os.unlink(os.path.join(self.maildir_new, name))
        self.stored = 0

    def close(self) -> None:
        self.components.spooler.close()
        shutil.rmtree(self.root, ignore_errors=True)


class _Jobs:
    """The ``Syncer``'s ``run_in_thread``: a job is run once the current
    read has been handled, and its Deferred fired then -- as the worker
    thread's result reaches the reactor thread in a later turn, so the
    callbacks run as they do for real (all on one fired Deferred)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, defer.Deferred]] = []

    def __call__(self, f: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append((f, d))
        return d

    def run(self) -> None:
        while self.pending:
            f, d = self.pending.pop(0)
            try:
                result = f()
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)


class _InlineRing:
    """The kernel's side of the ``Syncer``'s AIO path (``txmailhub.store.aio``),
    on this thread: each fsync asked for is made (``os.fsync``) once the
    current read has been handled, and its completion reaped then, as the
    eventfd wakes the reactor in a later turn."""

    def __init__(self, reactor: Any) -> None:
        from txmailhub.store.aio import AioSyncs

        self.submitted: list[tuple[int, int]] = []
        self.calls = _Jobs()  # the Syncer's call()s, on this thread too
        reactor.addReader = lambda reader: None  # the ring is never polled
        self.syncs = AioSyncs(reactor, self)

    def fileno(self) -> int:
        return -1

    def submit(self, fd: int, key: int) -> None:
        self.submitted.append((fd, key))

    def reap(self) -> list[tuple[int, int]]:
        done = []
        for fd, key in self.submitted:
            try:
                os.fsync(fd)
            except OSError as e:
                done.append((key, -(e.errno or 5)))
            else:
                done.append((key, 0))
        self.submitted = []
        return done

    def close(self) -> None:
        pass

    def run(self) -> None:
        while self.submitted or self.calls.pending:
            self.calls.run()
            if self.submitted:
                self.syncs.reap()


def cmd_time(b: Bench, args: argparse.Namespace) -> None:
    b.sessions(args.warmup)
    b.clean()
    wall, cpu = [], []
    for _ in range(args.reps):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        b.sessions(args.sessions, check=False)
        cpu.append((time.process_time() - c0) / args.sessions * 1e6)
        wall.append((time.perf_counter() - t0) / args.sessions * 1e6)
        b.clean()
    for name, per in (("CPU", sorted(cpu)), ("wall", sorted(wall))):
        print(f"{name} time per session: median {statistics.median(per):.1f} us, "
              f"min {per[0]:.1f}, max {per[-1]:.1f} ({args.reps} reps x {args.sessions} sessions)")


def cmd_profile(b: Bench, args: argparse.Namespace) -> None:
    b.sessions(args.warmup)
    b.clean()
    prof = cProfile.Profile()
    prof.enable()
    b.sessions(args.sessions, check=False)
    prof.disable()
    b.sessions(1)  # the check, outside the profile
    st = pstats.Stats(prof)
    n = args.sessions
    rows = []
    total = 0
    python = 0  # calls of functions written in Python (not builtins)
    for (path, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        total += nc
        python += nc if path != "~" else 0
        repo = os.path.dirname(HERE) + os.sep
        short = path[len(repo):] if path.startswith(repo) else path.split("site-packages/")[-1]
        rows.append((nc / n, tt / n * 1e6, f"{short}:{line}({name})", ct / n * 1e6))
    print(f"calls per session: {total / n:.1f}, of Python functions {python / n:.1f} "
          f"({n} sessions)")
    print(f"\ntop {args.top} by calls per session:")
    print(f"{'calls':>8} {'own us':>8}  function")
    for calls, own, where, _ in sorted(rows, key=lambda r: (-r[0], r[2]))[: args.top]:
        print(f"{calls:8.2f} {own:8.2f}  {where}")
    print(f"\ntop {args.top} by own time per session (cProfile-inflated):")
    for calls, own, where, _ in sorted(rows, key=lambda r: -r[1])[: args.top]:
        print(f"{calls:8.2f} {own:8.2f}  {where}")
    if args.cumulative:
        print(f"\ntop {args.top} by cumulative time per session (cProfile-inflated):")
        print(f"{'calls':>8} {'cum us':>8}  function")
        for calls, _, where, cum in sorted(rows, key=lambda r: -r[3])[: args.top]:
            print(f"{calls:8.2f} {cum:8.2f}  {where}")


def cmd_run(b: Bench, args: argparse.Namespace) -> None:
    b.sessions(args.sessions)


def _callgrind(small: int, large: int, extra: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            out = os.path.join(tmp, f"cg.{n}")
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 sys.executable, os.path.abspath(__file__), "run", "--sessions", str(n),
                 *extra],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                # one hash seed for both runs and every build: string hashes
                # move dict and set probes, about 1% of the count otherwise
                env={**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")})
            with open(out) as f:
                text = f.read()
            m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
            if m is None:
                raise SystemExit(f"no instruction total in {out}")
            counts[n] = int(m.group(1))
    per = (counts[large] - counts[small]) / (large - small)
    print(f"instructions per session: {per:,.0f} "
          f"(Ir {counts[small]:,} for {small}, {counts[large]:,} for {large})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["time", "profile", "callgrind", "run"])
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--large", type=int, default=250)
    p.add_argument("--cumulative", action="store_true",
                   help="profile: also list the top functions by cumulative time")
    p.add_argument("--size", type=int, default=1024,
                   help="octets of message text after the header fields (default 1024)")
    p.add_argument("--log", choices=["drop", "text"], default="drop")
    p.add_argument("--sync", choices=["aio", "threads"], default="aio",
                   help="the Syncer's path: kernel AIO requests (as twistd mailhub "
                        "on Linux) or its worker-thread batches")
    p.add_argument("--split-dot", action="store_true",
                   help="send the final '.' in a read of its own")
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                   help="where the state directory is made (default /dev/shm)")
    args = p.parse_args()
    if args.mode == "callgrind":
        extra = ["--log", args.log, "--size", str(args.size), "--sync", args.sync]
        extra += ["--split-dot"] if args.split_dot else []
        if args.dir:
            extra += ["--dir", args.dir]
        _callgrind(args.small, args.large, extra)
        return
    b = Bench(args.dir, args.log, args.split_dot, args.size, args.sync)
    try:
        {"time": cmd_time, "profile": cmd_profile, "run": cmd_run}[args.mode](b, args)
    finally:
        b.close()


if __name__ == "__main__":
    main()
