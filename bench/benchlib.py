"""Shared plumbing of the benchmark scripts (``smtp.py`` and ``pop3.py``).

Owns: reading /proc (process-tree CPU, peak RSS and its reset, machine CPU),
starting and stopping the servers under test (only processes this module
started, by PID / their own process group), the optional loop-mounted
benchmark filesystem, Maildir helpers, the generated txmailhub config, and
the peer command lines.  It never touches the project's sources or anything
outside its own work directory (default ``/tmp/txmailhub-bench``).

Needs root for the loop filesystem, /proc/PID/clear_refs and Dovecot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
BENCH_HOME = os.environ.get("BENCH_HOME", "/tmp/txmailhub-bench")
VENV_AIO = os.path.join(BENCH_HOME, "venv-aio", "bin", "python")
VENV_TWISTED = os.path.join(BENCH_HOME, "venv-twisted", "bin", "python")
PROJECT_BIN = os.path.join(PROJECT, ".venv", "bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "example.org"
USER = "user"
PASSWORD = "pass"
RCPT = f"{USER}@{DOMAIN}"
T = TypeVar("T")

# --------------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime+cutime+cstime summed over ``pids`` (reaped children count
    through their parent, so deltas of this over a tree are exact)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); utime is field 14 -> index 11.
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    return cpu_seconds(process_tree(pid))


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pids: list[int]) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, root or owner)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")


def peak_rss_kb(pids: list[int]) -> int:
    """The largest VmHWM among ``pids``."""
    return max((_status_kb(p, "VmHWM") for p in pids), default=0)


def rss_kb(pids: list[int]) -> int:
    return max((_status_kb(p, "VmRSS") for p in pids), default=0)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals) - idle) / CLK_TCK


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------ network


def check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing non-loopback address {host}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ------------------------------------------------------------------ servers

_LIVE_SERVER_PIDS: set[int] = set()


def become_subreaper() -> None:
    """Orphans of our servers (e.g. Postfix's children after its master has
    exited) are re-parented to us instead of PID 1, so we can reap them."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(timeout: float = 10) -> None:
    """Wait for our children that are not servers still in use (orphans
    handed to us as subreaper) to exit, and reap them."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        mine = [p for p in _children_map().get(me, []) if p not in _LIVE_SERVER_PIDS]
        for pid in mine:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        left = [p for p in mine if os.path.exists(f"/proc/{p}")]
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.05)


@dataclass
class Server:
    """A server process this harness started (in its own process group)."""

    name: str
    argv: list[str]
    port: int
    log: str
    env: dict[str, str] | None = None
    cwd: str | None = None
    pop3_port: int | None = None
    stop_signal: int = signal.SIGTERM
    # PID files of descendants that leave our process group (Postfix's master).
    extra_pidfiles: tuple[str, ...] = ()
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _LIVE_SERVER_PIDS.add(self.proc.pid)
        try:
            wait_port(self.port, timeout, self.proc)
            if self.pop3_port:
                wait_port(self.pop3_port, timeout, self.proc)
        except RuntimeError:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """``stop_signal`` (SIGTERM) to our process group, SIGKILL after 10 s."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: pgid == our child's pid
        tree = set(process_tree(pgid))
        for pidfile in self.extra_pidfiles:
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if pid in tree:  # only a process this server started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                    time.sleep(0.05)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(10)
        # Children of our group that outlived the leader (e.g. dovecot's).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_SERVER_PIDS.discard(pgid)
        self.proc = None
        reap_orphans()


class Servers(contextlib.ExitStack):
    """Starts servers and guarantees they are stopped on exit."""

    def __enter__(self) -> Servers:
        become_subreaper()
        return super().__enter__()

    def add(self, server: Server) -> Server:
        self.callback(server.stop)
        server.start()
        return server


def start_each(names: list[str], start: Callable[[str], T]) -> dict[str, T]:
    """``{name: start(name)}`` for each of ``names`` that starts; one that
    cannot (``RuntimeError``, ``OSError``: a server that never listens, a
    clone without the project's .venv for txmailhub) is said and left out.

    None started ends the run: ``SystemExit`` with a line (exit 1, no
    traceback), where the scripts went on to rotate an empty list of
    targets per rep and ended in a ZeroDivisionError."""
    started: dict[str, T] = {}
    for name in names:
        try:
            started[name] = start(name)
        except (RuntimeError, OSError) as exc:
            print(f"{name}: not started, left out of this run: {exc}", flush=True)
    if not started:
        raise SystemExit(f"no target started ({', '.join(names) or 'none given'}): "
                         "nothing to measure (see the lines above)")
    return started


# -------------------------------------------------------------------- lock


@contextlib.contextmanager
def exclusive(wait: float = 900):
    """One benchmark at a time on this machine: they share BENCH_HOME (work
    directories, the loop mount) and would disturb each other's numbers.
    Waits up to ``wait`` seconds for another run to finish."""
    import fcntl

    os.makedirs(BENCH_HOME, exist_ok=True)
    with open(os.path.join(BENCH_HOME, "bench.lock"), "a+") as f:
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit("another benchmark still holds "
                                     f"{f.name}; giving up after {wait:.0f} s") from None
                if not told:
                    f.seek(0)
                    print(f"waiting for another benchmark run ({f.read().strip()}) "
                          f"to finish...", file=sys.stderr, flush=True)
                    told = True
                time.sleep(1)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- filesystem


class BenchFS:
    """``loop``: a fresh ext4 in a sparse image, loop-mounted (noatime);
    ``tmp``: a plain directory.  Either way ``root`` holds every spool."""

    def __init__(self, kind: str, size: str = "4G", keep: bool = False) -> None:
        self.kind = kind
        self.keep = keep
        self.size = size
        self.image = os.path.join(BENCH_HOME, "fs.img")
        self.root = os.path.join(BENCH_HOME, "fs" if kind == "loop" else "spool")

    def __enter__(self) -> BenchFS:
        os.makedirs(BENCH_HOME, exist_ok=True)
        if self.kind == "loop":
            if os.path.ismount(self.root):
                subprocess.run(["umount", self.root], check=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)
            subprocess.run(["truncate", "-s", self.size, self.image], check=True)
            subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                 self.image],
                check=True,
            )
            os.makedirs(self.root, exist_ok=True)
            subprocess.run(["mount", "-o", "loop,noatime", self.image, self.root], check=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            os.makedirs(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            return
        if self.kind == "loop":
            subprocess.run(["umount", self.root], check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.image)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def describe(self) -> str:
        out = subprocess.run(["df", "-hT", self.root], capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1] if out.strip() else self.root


# ------------------------------------------------------------------- Maildir


def maildir_count(maildir: str, sub: str = "new") -> int:
    try:
        with os.scandir(os.path.join(maildir, sub)) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def maildir_clear(maildir: str) -> None:
    for sub in ("new", "cur", "tmp"):
        d = os.path.join(maildir, sub)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(os.path.join(d, name))


def fs_create_us(directory: str, n: int = 20) -> float:
    """Median cost of create+write+close of a small file in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    times = []
    for i in range(n):
        path = os.path.join(directory, f".probe-{os.getpid()}-{i}")
        t = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x" * 1024)
        os.close(fd)
        times.append(time.perf_counter() - t)
        os.unlink(path)
    times.sort()
    return times[len(times) // 2] * 1e6


# ------------------------------------------------------------------ txmailhub


def hub_config(workdir: str, state_dir: str, smtp_port: int, pop3_port: int,
               max_message_size: int = 64 * 1024 * 1024) -> str:
    """Write a bench config for txmailhub; return its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "mailhub.toml")
    with open(path, "w") as f:
        f.write(
            f"""# generated by bench/benchlib.py
[hub]
hostname = "bench.localhost"
state_dir = {json.dumps(state_dir)}
domains = [{json.dumps(DOMAIN)}]

[users]
file = "users"

[smtp]
listen = ["tcp:{smtp_port}:interface=127.0.0.1"]
max_message_size = {max_message_size}
max_connections = 1000

[submission]
listen = []

[pop3]
listen = ["tcp:{pop3_port}:interface=127.0.0.1"]
"""
        )
    users = os.path.join(workdir, "users")
    if not os.path.exists(users):
        open(users, "w").close()
    return path


def hub_add_user(config: str) -> None:
    mailhub = os.path.join(PROJECT_BIN, "mailhub")
    listed = subprocess.run([mailhub, "--config", config, "user", "list"],
                            capture_output=True, text=True, timeout=60)
    if RCPT in listed.stdout:
        return
    # --allow-weak: PASSWORD is a fixed, published one the peers share, for
    # a hub on 127.0.0.1 only (the warning it prints goes unread)
    done = subprocess.run(
        [mailhub, "--config", config, "user", "add", RCPT, "--password-stdin", "--allow-weak"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mailhub user add failed: {done.stderr.strip() or done.stdout}")


def hub_server(workdir: str, state_dir: str, name: str = "txmailhub",
               extra_twistd: tuple[str, ...] = (), pop3: bool = True) -> Server:
    smtp_port, pop3_port = free_port(), free_port()
    config = hub_config(workdir, state_dir, smtp_port, pop3_port)
    hub_add_user(config)
    # TXMH_BENCH_TWISTD: another twistd entry point (a script run with the
    # project's Python), e.g. one that instruments the process.
    twistd = os.environ.get("TXMH_BENCH_TWISTD")
    launcher = [os.path.join(PROJECT_BIN, "python"), twistd] if twistd else \
        [os.path.join(PROJECT_BIN, "twistd")]
    argv = [*launcher, "-n", "--pidfile=",
            "-l", os.path.join(workdir, "twistd.log"), *extra_twistd,
            "mailhub", "--config", config]
    return Server(name, argv, smtp_port, os.path.join(workdir, "twistd.out"),
                  cwd=workdir, pop3_port=pop3_port if pop3 else None)


def hub_maildir(state_dir: str) -> str:
    return os.path.join(state_dir, "mail", DOMAIN, USER)


# --------------------------------------------------------------------- peers


def aiosmtpd_server(workdir: str, root: str, fsync: bool, name: str) -> Server:
    port = free_port()
    argv = [VENV_AIO, os.path.join(HERE, "peers", "aiosmtpd_maildir.py"),
            "--listen", f"127.0.0.1:{port}", "--root", root, "--domain", DOMAIN]
    if not fsync:
        argv.append("--no-fsync")
    os.makedirs(workdir, exist_ok=True)
    return Server(name, argv, port, os.path.join(workdir, f"{name}.log"))


def twistd_mail_server(workdir: str, root: str, name: str = "twistd-mail",
                       smtp: bool = True, pop3: bool = True, nodelay: bool = False) -> Server:
    """Stock ``twistd mail`` (with the Python 3 type fixes) on a Maildir domain;
    the user's Maildir is ``root/user``."""
    os.makedirs(workdir, exist_ok=True)
    smtp_port, pop3_port = free_port(), free_port()
    argv = [VENV_TWISTED, os.path.join(HERE, "peers", "twistd_mail.py"), "-n", "--pidfile=",
            "-l", os.path.join(workdir, f"{name}.twistd.log"), "mail",
            f"--maildirdbmdomain={DOMAIN}={root}", f"--user={USER}={PASSWORD}"]
    argv += ["--smtp", f"tcp:{smtp_port}:interface=127.0.0.1"] if smtp else ["--no-smtp"]
    argv += ["--pop3", f"tcp:{pop3_port}:interface=127.0.0.1"] if pop3 else ["--no-pop3"]
    env = dict(os.environ)
    if nodelay:
        env["TXMH_BENCH_POP3_NODELAY"] = "1"
    port = smtp_port if smtp else pop3_port
    return Server(name, argv, port, os.path.join(workdir, f"{name}.log"), env=env, cwd=workdir,
                  pop3_port=pop3_port if (pop3 and smtp) else None)


def dovecot_server(workdir: str, maildir: str, name: str = "dovecot") -> Server:
    port = free_port()
    inst = os.path.join(workdir, name)
    argv = [sys.executable, os.path.join(HERE, "peers", "dovecot_pop3.py"), "--dir", inst,
            "--port", str(port), "--maildir", maildir, "--user", RCPT, "--password", PASSWORD]
    os.makedirs(workdir, exist_ok=True)
    return Server(name, argv, port, os.path.join(workdir, f"{name}.log"))


def postfix_server(workdir: str, root: str, name: str = "postfix") -> Server:
    """Private Postfix, virtual(8) delivery to ``root/vmail/DOMAIN/USER``."""
    port = free_port()
    inst = os.path.join(root, "instance")
    argv = [sys.executable, os.path.join(HERE, "peers", "postfix_instance.py"), "--dir", inst,
            "--port", str(port), "--maildir-base", os.path.join(root, "vmail"),
            "--domain", DOMAIN, "--user", USER]
    os.makedirs(workdir, exist_ok=True)
    return Server(name, argv, port, os.path.join(workdir, f"{name}.log"),
                  extra_pidfiles=(os.path.join(inst, "queue", "pid", "master.pid"),))


def floor_server(workdir: str, maildir: str, sync: str, name: str) -> Server:
    """The floor (``peers/floor_maildir.py``): canned replies and the file
    work only, on the project's own Twisted; ``sync`` is none, inline,
    thread, pool or aio."""
    port = free_port()
    argv = [os.path.join(PROJECT_BIN, "python"), os.path.join(HERE, "peers", "floor_maildir.py"),
            "--listen", f"127.0.0.1:{port}", "--maildir", maildir, "--sync", sync]
    os.makedirs(workdir, exist_ok=True)
    return Server(name, argv, port, os.path.join(workdir, f"{name}.log"))


def smtp_sink_server(workdir: str) -> Server:
    port = free_port()
    argv = ["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1024"]
    return Server("smtp-sink", argv, port, os.path.join(workdir, "smtp-sink.log"))


# ------------------------------------------------------------------ reporting


def versions() -> dict[str, str]:
    def run(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    out = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                           if ln.startswith("model name")), "?"),
        "postfix": run(["postconf", "-dh", "mail_version"]),
        "dovecot": run(["dovecot", "--version"]),
        "txmailhub_git": run(["git", "-C", PROJECT, "log", "-1", "--format=%h %cI %s",
                              "--", "txmailhub"]),
        "txmailhub_uncommitted": run(["git", "-C", PROJECT, "status", "--porcelain", "--",
                                      "txmailhub"]).replace("\n", "; ") or "none",
    }
    if os.path.exists(VENV_AIO):
        out["aiosmtpd"] = run([VENV_AIO, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"])
    if os.path.exists(VENV_TWISTED):
        out["twisted (peer)"] = run([VENV_TWISTED, "-c",
                                     "import twisted; print(twisted.__version__)"])
    hub_py = os.path.join(PROJECT_BIN, "python")
    if os.path.exists(hub_py):
        out["twisted (txmailhub)"] = run([hub_py, "-c",
                                          "import twisted; print(twisted.__version__)"])
    return out


def median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def publish(text: str, records: list[dict], markdown: str | None, out_path: str) -> int:
    """Print the tables (and write them to ``markdown``); exit 1 if any run failed."""
    print()
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")
    print(f"\nraw runs: {out_path}")
    return 0 if all(r.get("ok") for r in records) else 1
