"""A live frozen disk: ``twistd mailhub`` with its state on a filesystem
that ``fsfreeze`` stops, with smtplib and poplib as clients.

docs/deployment.rst "A slow or hung disk" says what the hub answers
while its disk does not; the unit tests show it with fakes.  Here the
disk is real: a 64 MiB ext4 image, loop-mounted in the test's folder,
holds ``state_dir``; the test freezes it (``fsfreeze -f``) while clients
work and thaws it (``fsfreeze -u``).  What it shows:

* frozen, with a message's data already written to its spool file and
  the client about to send the final ``.``: a new SMTP session is
  answered (greeting, ``EHLO``, ``MAIL``, ``RCPT``, ``NOOP``), and so is a
  POP3 login of a user whose Maildir exists (``STAT``, ``LIST``), after
  a tick of the queue runner as before it;
* the ``.`` then gets no ``250`` while the filesystem is frozen (the
  message's name in ``new/`` is a rename, a write the freeze holds);
* after the thaw it gets its ``250``, the message is in ``new/`` once,
  nothing is left in ``tmp/`` and the hub logged no traceback;
* a message whose data arrives while frozen gets its ``250`` after the
  thaw as well, and a command another client sent meanwhile is answered
  (not cut as idle).

Whether other sessions are answered *after* that ``.`` depends on the
sync method (with the kernel's AIO the rename runs on the main thread
and holds every session until the thaw; see the docs), so it is not
asserted.

Safety: the filesystem frozen is only ever the one this test mounted
(checked by its loop device's backing file), the thaw and the unmount
are cleanups registered before the freeze, and a watchdog thread (and a
``sh`` process, should the test run be killed) thaws it after
``WATCHDOG`` seconds whatever happens.  Skipped unless root
with ``fsfreeze``, ``mkfs.ext4`` and loop mounts at hand.
"""

from __future__ import annotations

import os
import poplib
import shutil
import signal
import smtplib
import subprocess
import threading
import unittest
from pathlib import Path
from typing import Any

import pytest

from txmailhub.relay.runner import POLL_INTERVAL

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
#: seconds after the freeze at which the watchdog thaws, whatever happens
WATCHDOG = 20.0
#: the bound on every client call and on every wait of the test
CLIENT_TIMEOUT = 10.0


#: the programs the test runs; root's sbin folders are searched too (a
#: PATH without them is no reason to skip)
TOOLS = ("truncate", "mkfs.ext4", "mount", "umount", "losetup", "findmnt", "fsfreeze")
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``tool`` (one of ``TOOLS``), bounded in time."""
    path = shutil.which(tool, path=_SEARCH) or tool
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=30)


def _in_thread(send: Any, data: bytes, answer: Any) -> tuple[threading.Event, list[Any]]:
    """``send(data)`` then ``answer()`` on a thread of their own: the
    Event is set once the answer (or the error) is in the list."""
    done, result = threading.Event(), []

    def run() -> None:
        try:
            send(data)
            result.append(answer())
        except Exception as e:  # reported by the assertions
            result.append(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, result


class FrozenStateDirTests(unittest.TestCase):
    """A real hub whose ``state_dir`` is frozen under its sessions."""

    @pytest.fixture(autouse=True)
    def _fixtures(self, make_hub: Any, tmp_path: Path) -> None:
        self.make_hub = make_hub
        self.tmp = tmp_path

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("freezing a filesystem needs root")
        for tool in TOOLS:
            if shutil.which(tool, path=_SEARCH) is None:
                raise unittest.SkipTest(f"{tool} is not installed")
        image, self.mnt = self.tmp / "disk.img", self.tmp / "mnt"
        self.mnt.mkdir()
        made = _run("truncate", "-s", "64M", str(image))
        if made.returncode == 0:
            made = _run("mkfs.ext4", "-q", "-F", str(image))
        if made.returncode != 0:
            raise unittest.SkipTest(f"no ext4 image: {made.stderr.strip()}")
        mounted = _run("mount", "-o", "loop", str(image), str(self.mnt))
        if mounted.returncode != 0:
            raise unittest.SkipTest(f"no loop mount: {mounted.stderr.strip()}")
        self.ours = ""  # the loop device, once checked
        self.addCleanup(self._unmount)
        # never freeze anything but the filesystem mounted here
        source = _run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(self.mnt))
        device = source.stdout.strip()
        backing = _run("losetup", "-n", "-O", "BACK-FILE", device).stdout.strip()
        if not device.startswith("/dev/loop") or Path(backing) != image:
            self.fail(f"{self.mnt} is {device!r} backed by {backing!r}, not {image}")
        self.ours = device

    def _unmount(self) -> None:
        self._thaw()
        if _run("umount", str(self.mnt)).returncode != 0:
            _run("umount", "-l", str(self.mnt))  # busy: detach it all the same

    def _thaw(self) -> None:
        # thawing a filesystem that is not frozen fails harmlessly
        _run("fsfreeze", "-u", str(self.mnt))

    def _freeze(self) -> None:
        self.assertTrue(self.ours, "not the filesystem this test mounted")
        # the thaw is registered before the freeze, and a watchdog thaws
        # whatever the test does (a frozen filesystem left behind would
        # hang every later step that touches it)
        self.addCleanup(self._thaw)
        watchdog = threading.Timer(WATCHDOG, self._thaw)
        watchdog.daemon = True
        watchdog.start()
        self.addCleanup(watchdog.cancel)
        # and one outside this process, for a test run killed meanwhile
        fsfreeze = shutil.which("fsfreeze", path=_SEARCH) or "fsfreeze"
        outside = subprocess.Popen(
            ["sh", "-c", 'sleep "$1"; exec "$2" -u "$3"', "watchdog", str(int(WATCHDOG)),
             fsfreeze, str(self.mnt)],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(outside.wait, 10)
        self.addCleanup(outside.kill)
        froze = _run("fsfreeze", "-f", str(self.mnt))
        if froze.returncode != 0:
            raise unittest.SkipTest(f"fsfreeze failed: {froze.stderr.strip()}")

    def test_sessions_answered_while_frozen_and_the_250_after_the_thaw(self) -> None:
        """A frozen ``state_dir`` holds up no session that only talks or
        reads, until a message's ``.``; that message's ``250`` waits for
        the thaw (before it, the message is not in ``new/``: a ``250``
        then would be a lie about durability)."""
        state = self.mnt / "var"
        hub = self.make_hub(sections={"hub": {"state_dir": str(state)}})
        self.addCleanup(hub.stop)  # before the unmount (cleanups run last first)
        box = state / "mail" / "example.org" / "alice"

        # before the freeze: alice's Maildir made by a first message
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT) as s:
            s.sendmail("x@example.com", [ALICE], b"Subject: one\r\n\r\nfirst\r\n")
        self.assertEqual(len(os.listdir(box / "new")), 1)

        # a client with its whole message written to the spool, all but the "."
        waiting = self._client_in_data(hub)
        data = b"Subject: two\r\n\r\n" + b"second\r\n" * 50
        waiting.send(data)
        # frozen before the hub wrote it, the write would hold the hub
        self._wait_until_spooled(state / "spool", len(data))

        self._freeze()
        # past a tick of the queue runner (each second): its look for the
        # control files left by `mailhub queue` was an unlink, which a
        # frozen filesystem holds -- and with it every session of the hub
        threading.Event().wait(POLL_INTERVAL * 1.5)

        # frozen: other sessions are answered
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT) as s:
            self.assertEqual(s.ehlo()[0], 250)
            self.assertEqual(s.mail("y@example.com")[0], 250)
            self.assertEqual(s.rcpt(ALICE)[0], 250)
            self.assertEqual(s.noop()[0], 250)
            self.assertEqual(s.rset()[0], 250)
        pop = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=CLIENT_TIMEOUT)
        pop.user(ALICE)
        self.assertTrue(pop.pass_(ALICE_PW).startswith(b"+OK"))
        self.assertEqual(pop.stat()[0], 1)
        self.assertEqual(len(pop.list()[1]), 1)
        self.assertTrue(pop.quit().startswith(b"+OK"))  # nothing to change

        # the "." now: no 250 while frozen
        answered, reply = _in_thread(waiting.send, b".\r\n", waiting.getreply)
        self.assertFalse(answered.wait(1.0), f"answered while frozen: {reply}")
        self.assertEqual(len(os.listdir(box / "new")), 1)  # a read: frozen or not
        self._thaw()

        # thawed: the 250, the message once in new/, nothing left behind
        self._assert_answered(answered, reply, 250)
        self.assertEqual(waiting.quit()[0], 221)
        self._assert_stored_once(hub, box, b"second")

    def test_a_message_arriving_while_frozen_gets_its_250_after_the_thaw(self) -> None:
        """Its data write itself waits for the thaw (on the main thread,
        so the hub answers nobody meanwhile: the docs say so, this test
        does not pin it).  Then the hub goes on by itself: the message
        gets its 250, and a command another client sent during the freeze
        is answered, not cut as idle."""
        state = self.mnt / "var"
        hub = self.make_hub(sections={"hub": {"state_dir": str(state)}})
        self.addCleanup(hub.stop)
        box = state / "mail" / "example.org" / "alice"
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT) as s:
            s.sendmail("x@example.com", [ALICE], b"Subject: one\r\n\r\nfirst\r\n")
        waiting = self._client_in_data(hub)
        other = smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT)
        self.addCleanup(other.close)
        self.assertEqual(other.ehlo()[0], 250)

        self._freeze()
        message = b"Subject: three\r\n\r\n" + b"third\r\n" * 50 + b".\r\n"
        answered, reply = _in_thread(waiting.send, message, waiting.getreply)
        noop_answered, noop = _in_thread(other.putcmd, "noop", other.getreply)
        self.assertFalse(answered.wait(1.0), f"answered while frozen: {reply}")
        self._thaw()

        self._assert_answered(answered, reply, 250)
        self._assert_answered(noop_answered, noop, 250)
        self.assertEqual(waiting.quit()[0], 221)
        self.assertEqual(other.quit()[0], 221)
        self._assert_stored_once(hub, box, b"third")

    def _client_in_data(self, hub: Any) -> smtplib.SMTP:
        """A client whose message to alice had its ``354``: what it sends
        next is the message's data (closed when the test ends)."""
        client = smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=CLIENT_TIMEOUT)
        self.addCleanup(client.close)
        client.ehlo()
        self.assertEqual(client.mail("x@example.com")[0], 250)
        self.assertEqual(client.rcpt(ALICE)[0], 250)
        client.putcmd("data")
        self.assertEqual(client.getreply()[0], 354)
        return client

    def _wait_until_spooled(self, spool: Path, size: int) -> None:
        """Until a spool file holds ``size`` octets (the hub makes empty
        ones ahead, so their number says nothing)."""
        done = threading.Event()
        for _ in range(int(CLIENT_TIMEOUT * 100)):
            if any(p.stat().st_size >= size for p in spool.iterdir()):
                return
            done.wait(0.01)
        self.fail(f"the message's data never reached {spool}")

    def _assert_answered(self, done: threading.Event, reply: list[Any], code: int) -> None:
        self.assertTrue(done.wait(CLIENT_TIMEOUT), "no reply after the thaw")
        self.assertIsInstance(reply[0], tuple, reply)
        self.assertEqual(reply[0][0], code, reply)

    def _assert_stored_once(self, hub: Any, box: Path, line: bytes) -> None:
        """The first message and the one with ``line`` in ``new/``, once
        each; nothing in ``tmp/``; a clean stop with no traceback."""
        bodies = [(box / "new" / n).read_bytes() for n in os.listdir(box / "new")]
        self.assertEqual(len(bodies), 2)
        self.assertEqual(sum(line + b"\n" in b for b in bodies), 1)
        self.assertEqual(os.listdir(box / "tmp"), [])
        self.assertIn(hub.stop(), (0, -signal.SIGTERM))  # as twistd ends on SIGTERM
        log = hub.log_text()
        self.assertNotIn("Traceback", log)
        self.assertIn("txmailhub stopped", log)
