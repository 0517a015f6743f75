"""MailHub embedded as docs/embedding.rst shows it, on the real reactor.

Two hubs in one process, each with a state directory of its own, started
and stopped twice, with smtplib and poplib as their clients: after each
stop nothing of them is left (timers, descriptors, the syncer's threads,
a listening port), the next start serves again, neither reads the
other's mail, and the process is as the application had it (signal
handlers, umask, working directory, ``sys.excepthook``, the log
observers, the reactor's thread pool size)."""

from __future__ import annotations

import gc
import os
import poplib
import signal
import smtplib
import socket
import sys
import threading
from typing import Any

import pytest
from twisted.internet import defer, reactor, threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from txmailhub.config import load
from txmailhub.password_hash import hash_password
from txmailhub.service import MailHub
from txmailhub.testing import StaticResolver

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")

PASSWORD = "correct horse battery staple 9"
LISTEN = "tcp:0:interface=127.0.0.1"


def _descriptors() -> dict[str, str]:
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


def _process_state() -> dict[str, Any]:
    umask = os.umask(0o022)
    os.umask(umask)
    pool = reactor.getThreadPool()
    return {
        "umask": umask, "cwd": os.getcwd(), "excepthook": sys.excepthook,
        "signals": {s: signal.getsignal(s) for s in signal.valid_signals()
                    if s not in (signal.SIGKILL, signal.SIGSTOP)},
        "observers": list(globalLogPublisher._observers),
        "thread pool": (pool.min, pool.max), "gc": gc.get_threshold(),
    }


def _hub(base: str, domain: str) -> MailHub:
    os.makedirs(base)
    with open(os.path.join(base, "users"), "w") as f:
        f.write(f"joe@{domain} {hash_password(PASSWORD)}\n")
    config = os.path.join(base, "mailhub.toml")
    with open(config, "w") as f:
        f.write(f'[hub]\nhostname = "mail.{domain}"\ndomains = ["{domain}"]\n'
                f'state_dir = "state"\n[users]\nfile = "users"\n'
                f'[smtp]\nlisten = ["{LISTEN}"]\n[submission]\nlisten = []\n'
                f'[pop3]\nlisten = ["{LISTEN}"]\n')
    # no DNS of the machine's: its resolver is the application's
    return MailHub(load(config), resolver=StaticResolver())


def _port(hub: MailHub, role: str) -> int:
    return hub.getServiceNamed(f"{role} {LISTEN}").port.getHost().port


def _send_and_read(smtp: int, pop3: int, domain: str, subject: str) -> list[bytes]:
    """Mail to joe@``domain`` over SMTP, then every Subject line in his
    mailbox over POP3 (left in it)."""
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
        s.sendmail("ann@example.net", [f"joe@{domain}"], f"Subject: {subject}\r\n\r\nhi\r\n")
    box = poplib.POP3("127.0.0.1", pop3, timeout=10)
    try:
        box.user(f"joe@{domain}")
        box.pass_(PASSWORD)
        count = box.stat()[0]
        return [line for i in range(1, count + 1) for line in box.top(i, 0)[1]
                if line.startswith(b"Subject:")]
    finally:
        box.quit()


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class TwoHubsTwoRunsTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_each_stop_leaves_nothing_and_each_start_serves_again(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        hubs = {"a.example": _hub(os.path.join(base, "a"), "a.example"),
                "b.example": _hub(os.path.join(base, "b"), "b.example")}
        yield threads.deferToThread(lambda: None)  # the reactor runs: its own handlers in
        before = _process_state()
        timers = set(reactor.getDelayedCalls())  # trial's timeout, other tests' leftovers
        descriptors: dict[str, str] | None = None
        for run in (1, 2):
            for hub in hubs.values():
                hub.privilegedStartService()
                hub.startService()
            self.assertEqual(_process_state(), before)
            for domain, hub in hubs.items():
                subjects = yield threads.deferToThread(
                    _send_and_read, _port(hub, "smtp"), _port(hub, "pop3"), domain,
                    f"{domain} {run}")
                # its own mail only, the last run's still there
                self.assertEqual(subjects, [f"Subject: {domain} {n}".encode()
                                            for n in range(1, run + 1)])
            ports = [_port(hub, role) for hub in hubs.values() for role in ("smtp", "pop3")]
            yield defer.gatherResults([hub.stopService() for hub in hubs.values()])
            yield threads.deferToThread(lambda: None)  # a turn for the closed ports
            self.assertTrue(all(_refused(port) for port in ports))
            self.assertEqual(set(reactor.getDelayedCalls()) - timers, set())
            self.assertEqual([t.name for t in threading.enumerate()
                              if t.name.startswith("txmailhub")], [])
            self.assertEqual(_process_state(), before)
            gc.collect()
            if descriptors is None:  # Twisted's reserve (/dev/null) is the process's
                descriptors = _descriptors()
            else:
                self.assertEqual(_descriptors(), descriptors)
            for hub in hubs.values():
                hub.check_state_dir()  # given up: another hub may have it
