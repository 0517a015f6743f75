"""A live read-only remount: ``twistd mailhub`` with its state on a small
tmpfs that the test remounts read-only (``mount -o remount,ro``) while the
hub runs, then read-write again, with smtplib and poplib as clients.

What it shows:

* the remount is allowed: the hub holds no descriptor open for writing
  on that file system between sessions (the kernel refuses a read-only
  remount with EBUSY while one is open, and the hub's ``spool.lock`` is
  held for as long as it runs);
* read-only, a message gets ``451 4.3.0`` (try again later, nothing
  stored), and POP3 still logs in and reads; ``QUIT`` after ``DELE``
  answers ``-ERR [SYS/TEMP]`` and leaves the messages in place
  (docs/pop3.rst, "Mailbox semantics");
* read-write again, the same hub accepts and delivers mail, with no
  restart.

No message goes through SMTP before the remount: a spool file that took
long to create makes the hub create them ahead, open, for a while, and
those would keep the remount refused (docs/deployment.rst).

Skipped unless root with ``mount`` and ``umount`` at hand (a container
without the right to mount skips too).
"""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import subprocess
from typing import Any

import pytest
from pop3util import drop

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
CLIENT_TIMEOUT = 10.0
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
MESSAGE = b"From: someone@remote.test\r\nSubject: ro\r\n\r\nbody\r\n"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    path = shutil.which(tool, path=_SEARCH) or tool
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def state_on_tmpfs(make_hub: Any) -> Any:
    """A hub (not started) whose ``state_dir`` is a tmpfs mounted for it,
    unmounted after the test (after the hub's stop)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    for tool in ("mount", "umount"):
        if shutil.which(tool, path=_SEARCH) is None:
            pytest.skip(f"{tool} is not installed")
    hub = make_hub(start=False)
    hub.state_dir.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs",
                   str(hub.state_dir))
    if mounted.returncode != 0:
        pytest.skip(f"no tmpfs mount: {mounted.stderr.strip()}")
    try:
        yield hub
    finally:
        hub.stop()
        if _run("umount", str(hub.state_dir)).returncode != 0:
            _run("umount", "-l", str(hub.state_dir))


def _smtp_reply(hub: Any) -> int:
    """The code a message to alice gets (at DATA or after its data)."""
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT) as s:
        try:
            s.sendmail("someone@remote.test", [ALICE], MESSAGE)
        except smtplib.SMTPDataError as e:
            return e.smtp_code
        return 250


def test_a_read_only_remount_under_a_running_hub(state_on_tmpfs: Any) -> None:
    hub = state_on_tmpfs
    box = hub.maildir(ALICE)
    first = drop(box, b"Subject: one\n\nfirst\n")
    drop(box, b"Subject: two\n\nsecond\n")
    hub.start()
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=CLIENT_TIMEOUT)
    p.user(ALICE)
    p.pass_(ALICE_PW)  # the lock file made while the disk is writable
    p.quit()

    remount = _run("mount", "-o", "remount,ro", str(hub.state_dir))
    assert remount.returncode == 0, remount.stderr
    try:
        assert _smtp_reply(hub) == 451
        p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=CLIENT_TIMEOUT)
        p.user(ALICE)
        p.pass_(ALICE_PW)
        assert p.stat()[0] == 2
        assert b"first" in b"\n".join(p.retr(1)[1])
        p.dele(1)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
            p.quit()
        p.close()
        assert first.exists() and len(hub.message_files(ALICE)) == 2
    finally:
        _run("mount", "-o", "remount,rw", str(hub.state_dir))

    assert _smtp_reply(hub) == 250
    assert len(hub.message_files(ALICE)) == 3
    assert list((box / "tmp").iterdir()) == []
    assert "Traceback" not in hub.run_log()
