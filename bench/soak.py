#!/usr/bin/env python3
"""A steady mixed load on one txmailhub for a while: does anything grow?

The other benchmarks run for minutes, at full speed.  A hub in service runs
for weeks at a low rate, and a leak of a few hundred bytes per session only
shows over time: a cache that never stops growing, a timer or a Deferred
kept per connection, a descriptor left open by an error path.  This script
runs one hub (``twistd -y`` on a small ``.tac`` that builds it as ``twistd
mailhub`` does and adds a SIGUSR2 dump, see ``TAC``) with SMTP, submission
(plain and implicit TLS), POP3 (plain and TLS), local users and a relay
route to a smarthost on 127.0.0.1 that this script plays itself, and keeps
a mixed load on it from ``--workers`` threads:

* SMTP: plain deliveries, pipelined transactions, STARTTLS, AUTH that
  fails and AUTH that succeeds, ``RSET`` and bad commands, ``QUIT`` in the
  middle of DATA, a connection cut in the middle of DATA, sessions left
  idle until the hub's idle timeout (``IDLE``);
* relayed mail to the smarthost, which takes some recipients (250),
  defers others (451: the queue retries them, sends a "delayed" notice and
  bounces them at ``queue_lifetime``) and refuses others (550: a bounce at
  once); the bounces go to local users;
* POP3 sessions that list, retrieve, delete and quit, or are cut in the
  middle;
* now and then a ``SIGHUP`` (reload) and a ``SIGUSR1`` (log rotation).

Every ``--sample`` seconds it records the hub's resident memory, open
descriptors and threads (``/proc``), and from the hub's SIGUSR2 dump the
reactor's delayed calls, readers and writers, live Deferreds and objects of
txmailhub's classes, and the files in the queue, the spool and the
Maildirs' ``tmp/``.  After ``--minutes`` of load it waits for the queue to
drain (at most ``--drain`` seconds) and for the hub to go quiet, and
compares the last sample with the one taken before the load (after one
session of each kind, so that what a first use makes is in it).

``SOAK_TRACEMALLOC=1`` has the hub trace its allocations (slower) and each
dump name the 15 places whose memory grew most since the first dump.

It does not take the benchmarks' lock (``bench.lock``): its load is light.
Needs the project's ``.venv``; no peers, no root.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import poplib
import random
import shutil
import signal
import smtplib
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import benchlib as bl

TAC = '''
import collections, gc, json, os, signal, threading

from twisted.application.service import Application
from twisted.internet import defer, reactor

from txmailhub import tap

if os.environ.get("SOAK_TRACEMALLOC"):
    import tracemalloc
    tracemalloc.start(8)
_first = []

options = tap.Options()
options.parseOptions(["--config", os.environ["SOAK_CONFIG"]])
application = Application("mailhub")
tap.makeService(options).setServiceParent(application)


def _dump():
    gc.collect()
    objects = gc.get_objects()
    out = {
        "timers": sorted(getattr(c.func, "__qualname__", repr(c.func))
                         for c in reactor.getDelayedCalls()),
        "readers": len(reactor.getReaders()),
        "writers": len(reactor.getWriters()),
        "deferreds": sum(1 for o in objects if isinstance(o, defer.Deferred)),
        "threads": [t.name for t in threading.enumerate()],
        "gc_objects": len(objects),
        "objects": collections.Counter(
            type(o).__module__ + "." + type(o).__qualname__ for o in objects
            if str(getattr(type(o), "__module__", "")).startswith(("txmailhub.", "twisted."))),
        "types": dict(collections.Counter(type(o).__qualname__ for o in objects).most_common(40)),
    }
    del objects
    if os.environ.get("SOAK_TRACEMALLOC"):
        snap = tracemalloc.take_snapshot()
        if not _first:
            _first.append(snap)
        out["tracemalloc"] = [str(s) for s in snap.compare_to(_first[0], "traceback")[:15]
                              for s in [s] if s.size_diff > 0]
        out["tracemalloc_tb"] = ["\\n".join(s.traceback.format())
                                 for s in snap.compare_to(_first[0], "traceback")[:5]]
    path = os.environ["SOAK_STATS"]
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(_dump))
'''

IDLE = 20  # seconds: the SMTP idle timeout
DOMAIN = "example.org"
USERS = {f"alice@{DOMAIN}": "alice-soak-secret", f"bob@{DOMAIN}": "bob-soak-secret"}
REMOTE = "remote.test"
# the project's .venv, or the one that runs this script
BIN = bl.PROJECT_BIN if os.path.isdir(bl.PROJECT_BIN) else os.path.dirname(sys.executable)


def text(n: int, size: int = 2000) -> bytes:
    head = (f"From: soak <alice@{DOMAIN}>\r\nSubject: soak {n}\r\n"
            f"Message-ID: <soak-{n}@{DOMAIN}>\r\n\r\n")
    line = f"message {n}, a line of soak text.\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


# ----------------------------------------------------------------- smarthost


class Smarthost(socketserver.ThreadingTCPServer):
    """The relay's next hop: RCPT to ``soft*`` gets 451, ``hard*`` 550,
    anything else 250; DATA after an accepted RCPT 250."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SmarthostSession)
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


class SmarthostSession(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: Smarthost = self.server  # type: ignore[assignment]
        w = self.wfile
        w.write(b"220 sink.remote.test ESMTP\r\n")
        accepted = 0
        while True:
            line = self.rfile.readline(2000)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                w.write(b"250-sink.remote.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                        b"250 SIZE 10000000\r\n")
            elif verb == b"MAIL":
                accepted = 0
                w.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                local = line.split(b"<", 1)[-1].lower()
                if local.startswith(b"soft"):
                    server.count("451")
                    w.write(b"451 4.3.0 try again later\r\n")
                elif local.startswith(b"hard"):
                    server.count("550")
                    w.write(b"550 5.1.1 no such user\r\n")
                else:
                    accepted += 1
                    w.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                if not accepted:
                    w.write(b"554 5.5.1 no valid recipients\r\n")
                    continue
                w.write(b"354 go ahead\r\n")
                w.flush()
                while True:
                    data = self.rfile.readline(1 << 20)
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                server.count("delivered")
                w.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                w.flush()
                return
            else:
                w.write(b"250 ok\r\n")
            w.flush()


# ----------------------------------------------------------------------- hub


def make_certificate(folder: str) -> tuple[str, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def hub_config(home: str, ports: dict[str, int], smarthost: int, dead: int) -> str:
    cert, key = make_certificate(home)

    def listen(role: str) -> str:
        return json.dumps([f"tcp:{ports[role]}:interface=127.0.0.1"])

    path = os.path.join(home, "mailhub.toml")
    with open(path, "w") as f:
        f.write(f"""# generated by bench/soak.py
[hub]
hostname = "mail.soak.test"
state_dir = "state"
domains = ["{DOMAIN}"]
log_files_kept = 3

[users]
file = "users"

[tls]
certificate = {json.dumps(cert)}
key = {json.dumps(key)}

[smtp]
listen = {listen("smtp")}
idle_timeout = "{IDLE}s"
auth_failure_delay = 0.2
max_connections = 200

[submission]
listen = {listen("submission")}
tls_listen = {listen("smtps")}

[pop3]
listen = {listen("pop3")}
tls_listen = {listen("pop3s")}
idle_timeout = "{IDLE}s"
auth_failure_delay = 0.2

[relay]
smarthost = "127.0.0.1:{smarthost}"
smarthost_tls = "none"
nameservers = ["127.0.0.1:{dead}"]
retry_schedule = ["15s", "30s"]
delay_warning = "40s"
queue_lifetime = "90s"
""")
    open(os.path.join(home, "users"), "w").close()
    mailhub = os.path.join(BIN, "mailhub")
    for user, password in USERS.items():
        done = subprocess.run([mailhub, "--config", path, "user", "add", user, "--password-stdin"],
                              input=password + "\n", capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"user add: {done.stderr or done.stdout}")
    return path


class Hub:
    def __init__(self, home: str) -> None:
        self.home = home
        self.smarthost = Smarthost()
        dead = bl.free_port()
        self.ports = bl.pick_ports(("smtp", "submission", "smtps", "pop3", "pop3s"))
        self.config = hub_config(home, self.ports, self.smarthost.server_address[1], dead)
        tac = os.path.join(home, "soak.tac")
        with open(tac, "w") as f:
            f.write(TAC)
        self.stats = os.path.join(home, "stats.json")
        env = dict(os.environ, SOAK_CONFIG=self.config, SOAK_STATS=self.stats)
        self.log = os.path.join(home, "twistd.log")
        with open(os.path.join(home, "twistd.out"), "ab") as out:
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "-l", self.log,
                 "-y", tac], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=home, env=env, start_new_session=True)
        for role in self.ports:
            bl.wait_port(self.ports[role], 60, self.proc)
        self.ctx = ssl.create_default_context(cafile=os.path.join(home, "cert.pem"))
        self.dump_lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def dump(self) -> dict:
        with self.dump_lock:
            with contextlib.suppress(OSError):
                os.unlink(self.stats)
            os.kill(self.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 120
            while not os.path.exists(self.stats):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("no dump from the hub")
                time.sleep(0.05)
            with open(self.stats) as f:
                return json.load(f)

    def files(self) -> dict[str, int]:
        state = os.path.join(self.home, "state")

        def count(*parts: str) -> int:
            total = 0
            for _, _, names in os.walk(os.path.join(state, *parts)):
                total += sum(not name.startswith(".") for name in names)
            return total

        tmp = sum(len(os.listdir(os.path.join(root, "tmp")))
                  for root, dirs, _ in os.walk(os.path.join(state, "mail")) if "tmp" in dirs)
        return {"queue": count("queue"), "spool": count("spool"), "maildir_tmp": tmp}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.smarthost.shutdown()


# ------------------------------------------------------------------ sessions


class Clients:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.n = 0
        self.lock = threading.Lock()
        # the numbers of the messages stored for local users (a 250 after
        # their data), of those whose session ended before the data did,
        # and of those retrieved over POP3
        self.acked: set[int] = set()
        self.cut: set[int] = set()
        self.seen: set[int] = set()

    def ack(self, n: int) -> None:
        with self.lock:
            self.acked.add(n)

    def fetched(self, lines: list[bytes]) -> None:
        for line in lines:
            if not line:
                return  # the end of the header section
            if line.startswith(b"Subject: soak "):
                with self.lock:
                    self.seen.add(int(line.split()[-1]))
                return

    def next(self) -> int:
        with self.lock:
            self.n += 1
            return self.n

    def _raw(self, role: str) -> tuple[socket.socket, object]:
        s = socket.create_connection(("127.0.0.1", self.hub.ports[role]), timeout=60)
        return s, s.makefile("rb")

    @staticmethod
    def _reply(f) -> bytes:
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    def deliver(self) -> None:
        n = self.next()
        with smtplib.SMTP("127.0.0.1", self.hub.ports["smtp"], timeout=60) as c:
            c.ehlo("soak.example")
            if n % 3 == 0:
                c.docmd("FROB", "nothing")
                c.rset()
            c.sendmail(f"x@{REMOTE}", [random.choice(list(USERS))], text(n, 1000 + n % 7000))
        self.ack(n)

    def pipelined(self) -> None:
        n = self.next()
        s, f = self._raw("smtp")
        self._reply(f)
        msg = text(n).replace(b"\r\n.", b"\r\n..")
        s.sendall(b"EHLO soak.example\r\n")
        self._reply(f)
        s.sendall(f"MAIL FROM:<x@{REMOTE}>\r\nRCPT TO:<alice@{DOMAIN}>\r\n"
                  f"RCPT TO:<bob@{DOMAIN}>\r\nRCPT TO:<nobody@{DOMAIN}>\r\nDATA\r\n".encode())
        for _ in range(5):
            self._reply(f)
        s.sendall(msg + b".\r\nMAIL FROM:<>\r\nRCPT TO:<bob@" + DOMAIN.encode()
                  + b">\r\nDATA\r\n")
        replies = [self._reply(f) for _ in range(4)]
        s.sendall(msg + b".\r\nQUIT\r\n")
        replies.append(self._reply(f))
        self._reply(f)
        s.close()
        if replies[0].startswith(b"250") and replies[4].startswith(b"250"):
            self.ack(n)

    def starttls(self) -> None:
        n = self.next()
        with smtplib.SMTP("127.0.0.1", self.hub.ports["smtp"], timeout=60) as c:
            c.starttls(context=self.hub.ctx)
            c.sendmail(f"x@{REMOTE}", [f"alice@{DOMAIN}"], text(n))
        self.ack(n)

    def submit(self) -> None:
        """AUTH on submission, after STARTTLS or over implicit TLS; one in
        four gets the password wrong.  Mail to a local user and relayed."""
        n = self.next()
        user = random.choice(list(USERS))
        if n % 2:
            c = smtplib.SMTP_SSL("127.0.0.1", self.hub.ports["smtps"], timeout=60,
                                 context=self.hub.ctx)
        else:
            c = smtplib.SMTP("127.0.0.1", self.hub.ports["submission"], timeout=60)
            c.starttls(context=self.hub.ctx)
        with c:
            if n % 4 == 0:
                try:
                    c.login(user, "wrong password")
                except smtplib.SMTPAuthenticationError:
                    pass
                return
            c.login(user, USERS[user])
            c.sendmail(user, [random.choice(list(USERS))], text(n))
        self.ack(n)

    def relay(self) -> None:
        """Relayed mail: most accepted by the smarthost, some deferred
        (451), some refused (550), some a mix."""
        n = self.next()
        kind = n % 10
        rcpts = [f"ok{n}@{REMOTE}"]
        if kind == 1:
            rcpts = [f"soft{n}@{REMOTE}"]
        elif kind == 2:
            rcpts = [f"hard{n}@{REMOTE}"]
        elif kind == 3:
            rcpts = [f"ok{n}@{REMOTE}", f"soft{n}@{REMOTE}", f"hard{n}@{REMOTE}"]
        sender = random.choice(list(USERS))
        with smtplib.SMTP("127.0.0.1", self.hub.ports["smtp"], timeout=60) as c:
            c.sendmail(sender, rcpts, text(n))

    def rset_abort(self) -> None:
        n = self.next()
        with smtplib.SMTP("127.0.0.1", self.hub.ports["smtp"], timeout=60) as c:
            c.ehlo("soak.example")
            c.mail(f"x@{REMOTE}")
            c.rcpt(f"bob@{DOMAIN}")
            c.rset()
            c.mail(f"x@{REMOTE}")
            c.rcpt(f"alice@{DOMAIN}")
            if c.data(text(n))[0] == 250:
                self.ack(n)

    def quit_in_data(self) -> None:
        n = self.next()
        self.cut.add(n)
        s, f = self._raw("smtp")
        self._reply(f)
        s.sendall(f"EHLO c\r\nMAIL FROM:<x@{REMOTE}>\r\nRCPT TO:<bob@{DOMAIN}>\r\n"
                  "DATA\r\n".encode())
        for _ in range(4):
            self._reply(f)
        s.sendall(text(n)[:900] + b"\r\nQUIT\r\n")
        s.close()

    def cut_in_data(self) -> None:
        n = self.next()
        self.cut.add(n)
        s, f = self._raw("smtp")
        self._reply(f)
        s.sendall(f"EHLO c\r\nMAIL FROM:<x@{REMOTE}>\r\nRCPT TO:<bob@{DOMAIN}>\r\n"
                  f"RCPT TO:<ok{n}@{REMOTE}>\r\nDATA\r\n".encode())
        for _ in range(5):
            self._reply(f)
        s.sendall(text(n, 30000)[: random.randint(10, 30000)])
        if n % 2:  # a reset rather than a FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()

    def idle(self) -> None:
        role = random.choice(["smtp", "pop3", "submission"])
        s, f = self._raw(role)
        f.readline()
        if role == "smtp":
            s.sendall(b"EHLO idle\r\nMAIL FROM:<x@remote.test>\r\n")
            self._reply(f)
            self._reply(f)
        s.settimeout(IDLE * 3 + 30)
        while s.recv(1000):  # the goodbye, then the close
            pass
        s.close()

    def pop3(self) -> None:
        n = self.next()
        user = random.choice(list(USERS))
        if n % 3 == 0:
            p = poplib.POP3_SSL("127.0.0.1", self.hub.ports["pop3s"], context=self.hub.ctx,
                                timeout=60)
        else:
            p = poplib.POP3("127.0.0.1", self.hub.ports["pop3"], timeout=60)
        try:
            if n % 7 == 0:
                try:
                    p.user(user)
                    p.pass_("wrong password")
                except poplib.error_proto:
                    pass
                p.close()
                return
            p.user(user)
            try:
                p.pass_(USERS[user])
            except poplib.error_proto:  # [IN-USE]: another session has it
                p.close()
                return
            p.list()
            p.uidl()
            count, _ = p.stat()
            for i in range(1, min(count, 40) + 1):
                self.fetched(p.retr(i)[1])
                p.dele(i)
            if n % 5 == 0:
                p.close()  # cut: nothing is deleted
                return
            p.quit()
        except BaseException:
            p.close()
            raise

    def pop3_cut(self) -> None:
        s, f = self._raw("pop3")
        f.readline()
        user = random.choice(list(USERS))
        s.sendall(f"USER {user}\r\nPASS {USERS[user]}\r\nLIST\r\nRETR 1\r\n".encode())
        f.readline()
        f.readline()
        s.close()

    MIX = {"deliver": 20, "pipelined": 6, "starttls": 6, "submit": 8, "relay": 12,
           "rset_abort": 4, "quit_in_data": 4, "cut_in_data": 4, "idle": 1, "pop3": 12,
           "pop3_cut": 3}


# ------------------------------------------------------------------ the soak


def sample(hub: Hub, t0: float) -> dict:
    pid = hub.pid
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        fds = threads = -1
    d = hub.dump()
    return {"t": time.monotonic() - t0, "rss_kb": bl.rss_kb([pid]), "hwm_kb": bl.peak_rss_kb([pid]),
            "fds": fds, "threads": threads, "cpu_s": bl.cpu_seconds([pid]),
            "timers": len(d["timers"]), "timer_names": Counter(d["timers"]),
            "readers": d["readers"], "writers": d["writers"], "deferreds": d["deferreds"],
            "gc_objects": d["gc_objects"], "objects": d["objects"], "types": d["types"],
            "tracemalloc": d.get("tracemalloc"), **hub.files()}


def line(s: dict) -> str:
    return (f"{s['t'] / 60:6.1f} min  RSS {s['rss_kb'] / 1024:6.1f} MiB  fds {s['fds']:3d}  "
            f"threads {s['threads']:2d}  timers {s['timers']:3d}  readers {s['readers']:3d}  "
            f"deferreds {s['deferreds']:4d}  gc {s['gc_objects']:7d}  queue {s['queue']:3d}  "
            f"spool {s['spool']:2d}  tmp {s['maildir_tmp']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=35, help="minutes of load")
    p.add_argument("--rate", type=float, default=8, help="sessions a second")
    p.add_argument("--workers", type=int, default=8, help="client threads")
    p.add_argument("--sample", type=float, default=30, help="seconds between samples")
    p.add_argument("--hup-every", type=float, default=120, help="seconds between SIGHUPs")
    p.add_argument("--rotate-every", type=float, default=180,
                   help="seconds between SIGUSR1s (log rotation)")
    p.add_argument("--drain", type=float, default=300,
                   help="at most this many seconds for the queue to drain after the load")
    p.add_argument("--out", default="", help="also write every sample here (JSON lines)")
    args = p.parse_args()

    home = os.path.join(bl.BENCH_HOME, "soak")
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    hub = Hub(home)
    out = open(args.out, "w") if args.out else None
    errors: Counter = Counter()
    done: Counter = Counter()
    lock = threading.Lock()
    samples: list[dict] = []
    clients = Clients(hub)

    def one(kind: str) -> None:
        try:
            getattr(clients, kind)()
            ok = True
        except (OSError, smtplib.SMTPException, poplib.error_proto, EOFError) as exc:
            ok = False
            with lock:
                errors[f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
        with lock:
            done[kind if ok else kind + " (error)"] += 1

    def record(s: dict) -> None:
        samples.append(s)
        print(line(s), flush=True)
        if out:
            out.write(json.dumps(s) + "\n")
            out.flush()

    try:
        t0 = time.monotonic()
        record(sample(hub, t0))
        for kind in Clients.MIX:  # each kind once: first uses in the baseline
            if kind != "idle":
                one(kind)
        baseline = sample(hub, t0)
        record(baseline)
        rng = random.Random(1)
        kinds, weights = list(Clients.MIX), list(Clients.MIX.values())
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start + args.sample
        next_hup = start + args.hup_every
        next_rotate = start + args.rotate_every
        with ThreadPoolExecutor(args.workers) as pool:
            due = start
            pending: list = []
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    record(sample(hub, t0))
                    next_sample += args.sample
                if now >= next_hup:
                    os.kill(hub.pid, signal.SIGHUP)
                    done["SIGHUP"] += 1
                    next_hup += args.hup_every
                if now >= next_rotate:
                    os.kill(hub.pid, signal.SIGUSR1)
                    done["SIGUSR1"] += 1
                    next_rotate += args.rotate_every
                pending = [f for f in pending if not f.done()]
                if len(pending) < args.workers * 2:
                    pending.append(pool.submit(one, rng.choices(kinds, weights)[0]))
                due += 1 / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -5:
                    due = time.monotonic()
        load_end = time.monotonic()
        # the queue drains (retries, then bounces at queue_lifetime); the
        # bounces are fetched
        deadline = load_end + args.drain
        while time.monotonic() < deadline and hub.files()["queue"] > 0:
            time.sleep(5)
        time.sleep(IDLE + 5)
        for user, password in USERS.items():
            pp = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
            pp.user(user)
            pp.pass_(password)
            count, _ = pp.stat()
            for i in range(1, count + 1):
                clients.fetched(pp.retr(i)[1])
                pp.dele(i)
            pp.quit()
        time.sleep(5)
        final = sample(hub, t0)
        record(final)
        alive = hub.proc.poll() is None
    finally:
        hub.stop()
        if out:
            out.close()

    print()
    print(f"{sum(v for k, v in done.items() if not k.startswith('SIG'))} sessions in "
          f"{(load_end - start) / 60:.1f} min, hub alive at the end: {alive}")
    print("sessions:", dict(sorted(done.items())))
    print("smarthost:", dict(hub.smarthost.counts))
    missing = clients.acked - clients.seen
    extra = clients.seen & clients.cut
    print(f"integrity: {len(clients.acked)} messages stored for local users, "
          f"{len(clients.seen)} retrieved, {len(missing)} missing, {len(extra)} retrieved "
          f"that were cut before the end of their data")
    if errors:
        print("client errors:")
        for k, v in errors.most_common(15):
            print(f"  {v:5d}  {k}")
    warm = [s for s in samples if s["t"] - (start - t0) >= 600]
    if len(warm) >= 2:
        rss = [s["rss_kb"] for s in warm]
        print(f"after 10 min of load: RSS {rss[0] / 1024:.1f} -> {rss[-1] / 1024:.1f} MiB "
              f"(min {min(rss) / 1024:.1f}, max {max(rss) / 1024:.1f})")
    print("baseline:", line(baseline))
    print("final:   ", line(final))
    grown = {k: (baseline["objects"].get(k, 0), v) for k, v in final["objects"].items()
             if v > baseline["objects"].get(k, 0)}
    print("objects grown since the baseline:", grown)
    print("timers at the end:", dict(final["timer_names"]))
    if final.get("tracemalloc"):
        print("\n".join(final["tracemalloc"]))
    return 0 if alive and not missing and not extra else 1


if __name__ == "__main__":
    sys.exit(main())
