"""A private Postfix instance for the interop tests (a root-only peer).

Its own config, queue and data folders under a folder of its own, the
system's Postfix (if any) left alone: ``/etc/postfix`` untouched, a queue
of its own.  It needs root (``postfix start`` runs its master as root, its
daemons as the ``postfix`` user); the test modules skip with
``SKIP_MARKS`` where Postfix, its user or root is missing.  No DNS, and
``start``/``stop`` never leave a master running on a removed queue.

``test_interop_postfix.py`` uses it as the hub's client (mail in with its
``sendmail -C``, relayed to the hub); ``test_interop_postfix_submission.py``
as a client of the submission listener with SMTP AUTH; ``test_relay_postfix.py`` as the
relay's next hop (smtpd on a 127.0.0.1 port, virtual(8) delivery into
Maildirs).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if os.access("/usr/sbin/postfix", os.X_OK)
                                      else None)


def postconf_default(name: str) -> str | None:
    """A parameter's default from Postfix itself (where its sendmail and
    postqueue are: not necessarily on PATH)."""
    postconf = os.path.join(os.path.dirname(POSTFIX or ""), "postconf")
    try:
        r = subprocess.run([postconf, "-d", "-h", name], capture_output=True, text=True,
                           timeout=30)
    except OSError:
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


SENDMAIL_BIN = postconf_default("sendmail_path") if POSTFIX else None
POSTQUEUE = (os.path.join(postconf_default("command_directory") or "/usr/sbin", "postqueue")
             if POSTFIX else None)


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


SKIP_MARKS = [
    pytest.mark.skipif(POSTFIX is None or SENDMAIL_BIN is None,
                       reason="postfix (and its sendmail) is not installed"),
    # its daemons and data folder are that user's: without it every test
    # would be an error in the fixture, not a skip
    pytest.mark.skipif(not has_user("postfix"), reason="there is no postfix user"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root"),
]

MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One private Postfix instance under ``root``: ``settings`` go into
    its main.cf over the defaults here, ``services`` are master.cf lines
    added to ``MASTER_CF``."""

    def __init__(self, root: Path, settings: dict[str, str], services: str = "") -> None:
        self.root = root
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.log = root / "maillog"
        for sub in ("etc", "spool", "data"):
            (root / sub).mkdir()
        shutil.chown(root / "data", "postfix", "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(root / "data"),
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(root),
            "myhostname": "postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "postfix.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtp_dns_support_level": "disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtp_tls_security_level": "none",
            # a bounce or a retry comes at once, not after minutes
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "message_size_limit": str(8 << 20),
            **settings,
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.etc / "master.cf").write_text(MASTER_CF + services)

    @classmethod
    def make(cls, settings: dict[str, str], services: str = "") -> Postfix:
        """An instance in a new folder, not started (``remove`` deletes it)."""
        # the postfix user must reach the queue: not under pytest's 0700 folder
        root = Path(tempfile.mkdtemp(prefix="txmailhub-postfix-"))
        root.chmod(0o755)
        try:
            return cls(root, settings, services)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def remove(self) -> None:
        """Stop the instance and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def postfix(self, *args: str) -> None:
        assert POSTFIX is not None
        r = subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, (args, r.stdout, r.stderr, self.log_text())

    def start(self) -> None:
        self.postfix("start")

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _is_master(self, pid: int) -> bool:
        """Whether ``pid`` is this instance's master: a process whose
        working folder is this queue (the master runs in its queue
        directory).  A master.pid outlives a master that died -- a failed
        start leaves one -- and its pid may be another process's since."""
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.spool.resolve()
        except OSError:
            return False

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is not None and not self._is_master(pid):
            pid = None  # not ours to wait for, nor to kill
        try:
            subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True,
                           timeout=60)
        except subprocess.TimeoutExpired:
            pass  # the master is killed below: never left running on a removed queue
        if pid is None:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if self._is_master(pid):
            os.kill(pid, signal.SIGKILL)

    def sendmail(self, data: bytes, sender: str, *recipients: str) -> None:
        r = subprocess.run([SENDMAIL_BIN, "-C", str(self.etc), "-i", "-f", sender, "--",
                            *recipients], input=data, capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stdout, r.stderr)

    def queue(self) -> str:
        r = subprocess.run([POSTQUEUE, "-c", str(self.etc), "-p"], capture_output=True,
                           text=True, timeout=60)
        return r.stdout + r.stderr

    def flush(self) -> None:
        """Ask Postfix to try its deferred mail now (postqueue -f)."""
        subprocess.run([POSTQUEUE, "-c", str(self.etc), "-f"], capture_output=True, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, *needles: str, timeout: float = 60.0) -> str:
        """The log once it holds every one of ``needles``.  Postfix's
        daemons hand their lines to postlogd, which writes them in its own
        time: a line may reach the file after what it tells of (a message
        sent, its queue file gone).  ``timeout``: a cap for a loaded
        machine."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            assert time.monotonic() < deadline, (missing, text[-3000:])
            time.sleep(0.05)
