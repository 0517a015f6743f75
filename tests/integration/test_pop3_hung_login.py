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

    def hung(md):
        # the lock of spec["maildir"] hangs until the test makes spec["go"]
        # (60 s at most: a test that failed must not leave a hub stuck)
        if md == spec["maildir"] and not os.path.exists(spec["go"]):
            open(spec["entered"], "a").close()
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
