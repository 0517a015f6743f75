"""A POP3 login whose disk hangs, against a running hub, with poplib.

The hub is started through a launcher that makes one Maildir's lock
hang (``_lock_mailbox`` waits for a file the test makes, as a call on
a disk that does not answer waits for the disk): the other sessions are
answered meanwhile, a client that hangs up during the hang leaves no
lock behind, and the mailbox is free once the "disk" answers.  Only the
hub's own process is touched, through the launcher: nothing in
txmailhub knows about it.
"""

from __future__ import annotations

import json
import os
import poplib
import smtplib
import sys
import time
from pathlib import Path

import conftest
import pytest
from pop3util import RawPOP3, drop

ENV = "TXMAILHUB_TEST_HUNG_LOCK"
ALICE, ALICE_PW = "alice@example.org", "alice-secret"
BOB, BOB_PW = "bob@example.org", "bob-secret"

_LAUNCHER = """\
#!{python}
import json, os, sys, time
spec = json.loads(os.environ.get({env!r}) or "{{}}")
if spec:
    from txmailhub.store import maildir
    original = maildir._lock_mailbox

    hung_dirs = set(spec.get("maildirs") or [spec["maildir"]])

    def hung(md):
        # the lock of spec["maildir"] (or of each of spec["maildirs"]) hangs
        # until the test makes spec["go"] (60 s at most: a test that failed
        # must not leave a hub stuck); "entered" gets a line for each
        if md in hung_dirs and not os.path.exists(spec["go"]):
            with open(spec["entered"], "a") as f:
                f.write(md + "\\n")
            deadline = time.monotonic() + 60
            while not os.path.exists(spec["go"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(md)

    maildir._lock_mailbox = hung
from twisted.scripts.twistd import run
sys.exit(run())
"""


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def hung(make_hub, tmp_path, monkeypatch):
    launcher = tmp_path / "twistd-hung"
    launcher.write_text(_LAUNCHER.format(python=sys.executable, env=ENV))
    launcher.chmod(0o755)
    monkeypatch.setattr(conftest, "TWISTD", str(launcher))
    hub = make_hub(start=False)
    drop(hub.maildir(ALICE), b"Subject: one\n\nfirst\n")
    drop(hub.maildir(BOB), b"Subject: two\n\nsecond\n")
    spec = {"maildir": str(hub.maildir(ALICE)), "entered": str(tmp_path / "entered"),
            "go": str(tmp_path / "go")}
    monkeypatch.setenv(ENV, json.dumps(spec))
    hub.start()
    hub.entered, hub.go = Path(spec["entered"]), Path(spec["go"])
    yield hub
    hub.go.touch()  # whatever happened, the hub is not left hanging


def test_a_login_whose_lock_hangs_holds_up_no_other_session(hung):
    """docs/deployment.rst "A slow or hung disk": the lock file's open at
    a login is no call on the hub's main thread any more.  While alice's
    login waits for her Maildir's lock, bob's session and a new
    connection are answered; alice hangs up meanwhile, and once the disk
    answers her mailbox is free (no lock left held by the gone login)."""
    bob = poplib.POP3("127.0.0.1", hung.pop3_port, timeout=20)
    bob.user(BOB)
    assert bob.pass_(BOB_PW).startswith(b"+OK")
    alice = RawPOP3(hung.pop3_port, timeout=20)
    assert alice.line().startswith(b"+OK")
    alice.send(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\n".encode())
    assert alice.line().startswith(b"+OK")  # USER
    wait_for(hung.entered)  # her login's job waits for the disk now
    # the hub answers the others meanwhile (before: nobody until the disk did)
    assert bob.noop().startswith(b"+OK")
    assert bob.stat() == (1, len(b"Subject: two\r\n\r\nsecond\r\n"))
    other = poplib.POP3("127.0.0.1", hung.pop3_port, timeout=20)
    assert other.getwelcome().startswith(b"+OK")
    other.quit()
    alice.close()  # she gives up during the hang
    hung.go.touch()  # the disk answers
    deadline = time.monotonic() + 20
    while True:  # until the hub has seen the gone login's job end
        again = poplib.POP3("127.0.0.1", hung.pop3_port, timeout=20)
        again.user(ALICE)
        try:
            assert again.pass_(ALICE_PW).startswith(b"+OK")
            break
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0] and time.monotonic() < deadline, e
            again.close()
            time.sleep(0.05)
    assert again.stat()[0] == 1
    again.quit()
    bob.quit()
    hung.stop()
    log = hung.log_text()
    assert "txmailhub stopped" in log and "Traceback" not in log
    assert os.path.exists(hung.maildir(ALICE) / ".txmailhub.lock")


HANGING = [f"user{n}@example.org" for n in range(4)]
ERIN = "erin@example.org"


@pytest.fixture
def hung_four(make_hub, tmp_path, monkeypatch):
    """A hub whose four users' Maildir locks hang (HANGING), and ERIN,
    whose Maildir the hub has not made yet."""
    launcher = tmp_path / "twistd-hung"
    launcher.write_text(_LAUNCHER.format(python=sys.executable, env=ENV))
    launcher.chmod(0o755)
    monkeypatch.setattr(conftest, "TWISTD", str(launcher))
    hub = make_hub(users={a: "pw-" + a for a in [*HANGING, ERIN]}, start=False)
    for address in HANGING:
        drop(hub.maildir(address), b"Subject: one\n\nfirst\n")
    spec = {"maildirs": [str(hub.maildir(a)) for a in HANGING],
            "entered": str(tmp_path / "entered"), "go": str(tmp_path / "go")}
    monkeypatch.setenv(ENV, json.dumps(spec))
    hub.start()
    hub.entered, hub.go = Path(spec["entered"]), Path(spec["go"])
    yield hub
    hub.go.touch()


def test_four_pop3_logins_that_hang_leave_a_worker_for_delivery(hung_four):
    """docs/deployment.rst "A slow or hung disk": four POP3 logins whose
    jobs hang took all four of the hub's worker threads, and a message for
    a user whose Maildir had to be made (a job on those threads) got no
    250 until the disk answered.  Now the POP3 jobs hold three at most:
    the message is stored meanwhile, and the fourth login gets its +OK
    once the disk answers."""
    hub = hung_four
    clients = []
    for address in HANGING:
        client = RawPOP3(hub.pop3_port, timeout=30)
        assert client.line().startswith(b"+OK")
        client.send(f"USER {address}\r\nPASS pw-{address}\r\n".encode())
        assert client.line().startswith(b"+OK")  # USER
        clients.append(client)
    deadline = time.monotonic() + 30
    while not hub.entered.exists() or len(hub.entered.read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, "three logins never reached the lock"
        time.sleep(0.01)
    # time for the fourth login's PASS to reach the store: before, its job
    # took the last worker then (a fourth line in "entered"); a shorter
    # wait can only let the old hub pass, never fail the new one
    time.sleep(1.0)
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=20) as smtp:
        smtp.sendmail("someone@example.net", [ERIN], b"Subject: hi\r\n\r\nhello\r\n")
    assert len(hub.entered.read_text().splitlines()) == 3  # the fourth waits its turn
    assert len(os.listdir(hub.maildir(ERIN) / "new")) == 1  # stored during the hang
    hub.go.touch()  # the disk answers
    for client in clients:
        assert client.line().startswith(b"+OK"), "a login not answered after the hang"
        client.send(b"QUIT\r\n")
        assert client.line().startswith(b"+OK")
        client.close()
    hub.stop()
    log = hub.log_text()
    assert "txmailhub stopped" in log and "Traceback" not in log
