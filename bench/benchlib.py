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
    """A port free on 127.0.0.1 a moment ago (bound, read, released).

    Released: another process may take it before the server binds it.
    ``Server.start`` picks its ports with this and starts the server again
    on new ones when that happened (``PortTaken``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """A port picked for a server was another process's when the server
    came to bind it: something else listens there, or the server exited
    with "address already in use".  ``Server.start`` tries new ports."""


class ServerExited(RuntimeError):
    """The server exited before it listened."""


_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp
_LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _proc_net_address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: network-order 32-bit words, each
    printed as a host-order number."""
    raw = b"".join(int(hexaddr[i:i + 8], 16).to_bytes(4, sys.byteorder)
                   for i in range(0, len(hexaddr), 8))
    return ipaddress.ip_address(raw)


def listening_inodes(port: int) -> set[int]:
    """The inodes of the TCP sockets listening where a connection to
    127.0.0.1:``port`` lands, or a server's bind of it collides with:
    127.0.0.1 and the wildcard addresses, IPv4 or IPv6 (an IPv6 one may be
    IPv6-only; counted all the same)."""
    found: set[int] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            address, _, hexport = fields[1].rpartition(":")
            if int(hexport, 16) != port:
                continue
            ip = _proc_net_address(address)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip.is_unspecified or ip == _LOOPBACK:
                found.add(int(fields[9]))
    return found


def socket_inodes(pids: list[int]) -> tuple[set[int], bool]:
    """The inodes of the sockets open in ``pids``, and whether every one
    of their descriptor tables could be read (another user's process
    cannot be, unless we are root)."""
    inodes: set[int] = set()
    complete = True
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue  # gone meanwhile
        except PermissionError:
            complete = False
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:
                continue
            except PermissionError:
                complete = False
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    return inodes, complete


def port_owner(port: int, pids: list[int]) -> str:
    """Who listens on 127.0.0.1:``port``: ``"none"``; ``"ours"`` when every
    listener there is a socket of ``pids``; ``"foreign"`` when one is not;
    ``"unknown"`` when one is in none of the descriptor tables of ``pids``
    that could be read and some could not."""
    listening = listening_inodes(port)
    if not listening:
        return "none"
    ours, complete = socket_inodes(pids)
    if listening <= ours:
        return "ours"
    return "foreign" if complete else "unknown"


def wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Return once ``proc`` (or a process it started) listens on
    127.0.0.1:``port`` and answers there.

    A connection that succeeds proves nothing alone: the port was picked
    free and released before the server was started, and another process
    may listen there now -- the server then dies with "address already in
    use", or measures go to the wrong server.  So the listening sockets
    on the port (/proc/net/tcp) must be ``proc``'s process tree's (or a
    process of it we adopted, ``adopted``); another one raises
    ``PortTaken`` at once.  ``ServerExited`` when ``proc`` ends
    first, ``RuntimeError`` when nothing listens after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode} before listening "
                               f"on {port}")
        owner = port_owner(port, process_tree(proc.pid))
        if owner == "foreign":
            # once more with a new look at the tree: a process it started
            # after the first look may hold the socket, or one whose parent
            # exited meanwhile, adopted by us (a daemon's fork)
            owner = port_owner(port, process_tree(proc.pid) + adopted())
            if owner == "foreign":
                raise PortTaken(f"127.0.0.1:{port} is another process's listening port")
        if owner in ("ours", "unknown"):
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def adopted() -> list[int]:
    """The processes this harness adopted as their subreaper
    (``become_subreaper``), with their descendants: what a server left
    outside its tree when a process of it exited before its children (a
    daemon forks and its parent exits).  Such a process, listening on the
    server's port, is the server's, not another process that took the
    port.  Servers still in use (``_LIVE_SERVER_PIDS``, their trees are
    theirs) and this process itself are not counted."""
    kids = _children_map()
    out: list[int] = []
    todo = [p for p in kids.get(os.getpid(), []) if p not in _LIVE_SERVER_PIDS]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def pick_ports(roles: tuple[str, ...]) -> dict[str, int]:
    """A distinct free port (``free_port``) for each of ``roles``."""
    ports: dict[str, int] = {}
    for role in roles:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[role] = port
    return ports


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


#: how many times ``Server.start`` starts a server on new ports after a collision
START_TRIES = 5


@dataclass
class Server:
    """A server process this harness started (in its own process group).

    ``command`` gets a port for each of ``roles`` (its listeners, e.g.
    ``("smtp", "pop3")``), writes whatever configuration names them, and
    returns the command line: ``start`` picks the ports at each try, so a
    server whose port another process took in the meantime is started
    again on new ones."""

    name: str
    command: Callable[[dict[str, int]], list[str]]
    roles: tuple[str, ...]
    log: str
    env: dict[str, str] | None = None
    cwd: str | None = None
    #: the role ``port`` names (default: the first of ``roles``)
    main: str = ""
    #: other files the server writes its errors to ("address already in use")
    logs: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    # PID files of descendants that leave our process group (Postfix's master).
    extra_pidfiles: tuple[str, ...] = ()
    #: the ports of the current (or last) start, by role, and its command line
    ports: dict[str, int] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _log_offsets: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def port(self) -> int:
        """The port of the ``main`` listener, the one the benchmark uses."""
        return self.ports[self.main or self.roles[0]]

    @property
    def pop3_port(self) -> int | None:
        return self.ports.get("pop3")

    def start(self, timeout: float = 60, tries: int = START_TRIES) -> None:
        """Start the server on new ports and wait until each of its
        listeners is its own (``wait_port``).  A port taken by another
        process meanwhile (``PortTaken``) stops it and starts it again on
        new ports, up to ``tries`` times; any other failure stops it and
        is raised."""
        for tries_left in range(tries - 1, -1, -1):
            self.ports = pick_ports(self.roles)
            self.argv = self.command(dict(self.ports))
            self._spawn()
            try:
                for role in self.roles:
                    wait_port(self.ports[role], timeout, self.proc)
                return
            except PortTaken as exc:
                self.stop()
                if not tries_left:
                    raise
                print(f"{self.name}: {exc}; starting it again on new ports", flush=True)
            except ServerExited as exc:
                self.stop()
                taken = self._collided()
                if taken is None:
                    raise
                if not tries_left:
                    raise PortTaken(f"{exc}: {taken}") from exc
                print(f"{self.name}: {exc}: {taken}; starting it again on new ports",
                      flush=True)
            except RuntimeError:
                self.stop()
                raise

    def _spawn(self) -> None:
        self._log_offsets = {}
        for path in (self.log, *self.logs):
            try:
                self._log_offsets[path] = os.path.getsize(path)
            except OSError:
                self._log_offsets[path] = 0
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

    def _collided(self) -> str | None:
        """Why a server that exited (and was stopped) could not have its
        ports, or ``None``: another process listens on one (none of ours
        is left to), or its logs of this start say "address already in
        use"."""
        for role, port in self.ports.items():
            if listening_inodes(port):
                return f"another process listens on its {role} port {port}"
        for path, offset in self._log_offsets.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    text = f.read(1 << 20).decode(errors="replace")
            except OSError:
                continue
            if "address already in use" in text.lower():
                return f"address already in use ({os.path.basename(path)})"
        return None

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
        # What it left outside its tree and group, adopted by us, that
        # still listens on its ports (a daemon's fork: its parent exited):
        # not stopped, each try of ``start`` left one, listening for good
        listening = set().union(*(listening_inodes(port) for port in self.ports.values()))
        for pid in adopted() if listening else ():
            if socket_inodes([pid])[0] & listening:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
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
               extra_twistd: tuple[str, ...] = (), main: str = "smtp") -> Server:
    """txmailhub under twistd, listening for SMTP and POP3 (``main``: the
    one ``Server.port`` names)."""
    config = hub_config(workdir, state_dir, 0, 0)
    hub_add_user(config)
    # TXMH_BENCH_TWISTD: another twistd entry point (a script run with the
    # project's Python), e.g. one that instruments the process.
    twistd = os.environ.get("TXMH_BENCH_TWISTD")
    launcher = [os.path.join(PROJECT_BIN, "python"), twistd] if twistd else \
        [os.path.join(PROJECT_BIN, "twistd")]
    twistd_log = os.path.join(workdir, "twistd.log")

    def command(ports: dict[str, int]) -> list[str]:
        hub_config(workdir, state_dir, ports["smtp"], ports["pop3"])
        return [*launcher, "-n", "--pidfile=", "-l", twistd_log, *extra_twistd,
                "mailhub", "--config", config]

    return Server(name, command, ("smtp", "pop3"), os.path.join(workdir, "twistd.out"),
                  cwd=workdir, main=main, logs=(twistd_log,))


def hub_maildir(state_dir: str) -> str:
    return os.path.join(state_dir, "mail", DOMAIN, USER)


# --------------------------------------------------------------------- peers


def aiosmtpd_server(workdir: str, root: str, fsync: bool, name: str) -> Server:
    def command(ports: dict[str, int]) -> list[str]:
        argv = [VENV_AIO, os.path.join(HERE, "peers", "aiosmtpd_maildir.py"),
                "--listen", f"127.0.0.1:{ports['smtp']}", "--root", root, "--domain", DOMAIN]
        return argv if fsync else [*argv, "--no-fsync"]

    os.makedirs(workdir, exist_ok=True)
    return Server(name, command, ("smtp",), os.path.join(workdir, f"{name}.log"))


def twistd_mail_server(workdir: str, root: str, name: str = "twistd-mail",
                       smtp: bool = True, pop3: bool = True, nodelay: bool = False) -> Server:
    """Stock ``twistd mail`` (with the Python 3 type fixes) on a Maildir domain;
    the user's Maildir is ``root/user``."""
    os.makedirs(workdir, exist_ok=True)
    twistd_log = os.path.join(workdir, f"{name}.twistd.log")

    def command(ports: dict[str, int]) -> list[str]:
        argv = [VENV_TWISTED, os.path.join(HERE, "peers", "twistd_mail.py"), "-n",
                "--pidfile=", "-l", twistd_log, "mail",
                f"--maildirdbmdomain={DOMAIN}={root}", f"--user={USER}={PASSWORD}"]
        argv += ["--smtp", f"tcp:{ports['smtp']}:interface=127.0.0.1"] if smtp else \
            ["--no-smtp"]
        argv += ["--pop3", f"tcp:{ports['pop3']}:interface=127.0.0.1"] if pop3 else \
            ["--no-pop3"]
        return argv

    env = dict(os.environ)
    if nodelay:
        env["TXMH_BENCH_POP3_NODELAY"] = "1"
    roles = tuple(role for role, on in (("smtp", smtp), ("pop3", pop3)) if on)
    return Server(name, command, roles, os.path.join(workdir, f"{name}.log"), env=env,
                  cwd=workdir, logs=(twistd_log,))


def dovecot_server(workdir: str, maildir: str, name: str = "dovecot") -> Server:
    inst = os.path.join(workdir, name)

    def command(ports: dict[str, int]) -> list[str]:
        return [sys.executable, os.path.join(HERE, "peers", "dovecot_pop3.py"), "--dir", inst,
                "--port", str(ports["pop3"]), "--maildir", maildir, "--user", RCPT,
                "--password", PASSWORD]

    os.makedirs(workdir, exist_ok=True)
    return Server(name, command, ("pop3",), os.path.join(workdir, f"{name}.log"),
                  logs=(os.path.join(inst, "dovecot.log"),))


def postfix_server(workdir: str, root: str, name: str = "postfix") -> Server:
    """Private Postfix, virtual(8) delivery to ``root/vmail/DOMAIN/USER``."""
    inst = os.path.join(root, "instance")

    def command(ports: dict[str, int]) -> list[str]:
        return [sys.executable, os.path.join(HERE, "peers", "postfix_instance.py"), "--dir",
                inst, "--port", str(ports["smtp"]), "--maildir-base",
                os.path.join(root, "vmail"), "--domain", DOMAIN, "--user", USER]

    os.makedirs(workdir, exist_ok=True)
    return Server(name, command, ("smtp",), os.path.join(workdir, f"{name}.log"),
                  logs=(os.path.join(inst, "postfix.log"),),
                  extra_pidfiles=(os.path.join(inst, "queue", "pid", "master.pid"),))


def floor_server(workdir: str, maildir: str, sync: str, name: str) -> Server:
    """The floor (``peers/floor_maildir.py``): canned replies and the file
    work only, on the project's own Twisted; ``sync`` is none, inline,
    thread, pool or aio."""
    def command(ports: dict[str, int]) -> list[str]:
        return [os.path.join(PROJECT_BIN, "python"),
                os.path.join(HERE, "peers", "floor_maildir.py"),
                "--listen", f"127.0.0.1:{ports['smtp']}", "--maildir", maildir, "--sync", sync]

    os.makedirs(workdir, exist_ok=True)
    return Server(name, command, ("smtp",), os.path.join(workdir, f"{name}.log"))


def smtp_sink_server(workdir: str) -> Server:
    def command(ports: dict[str, int]) -> list[str]:
        return ["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{ports['smtp']}", "1024"]

    return Server("smtp-sink", command, ("smtp",), os.path.join(workdir, "smtp-sink.log"))


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
