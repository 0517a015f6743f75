"""docs/deployment.rst, "Backup and restore": a copy of ``state_dir``
taken while the hub runs (``cp -a``), started on another machine (here:
another folder, with the first hub still running)."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from txmailhub.address import Address
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay.queue import OutboundQueue
from txmailhub.service import MailHub


def _settings(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'state_dir = "{folder / "state"}"\n'
                      '[smtp]\nlisten = []\n[submission]\nlisten = []\n[pop3]\nlisten = []\n'
                      '[relay]\nsmarthost = "127.0.0.1:9"\nsmarthost_tls = "none"\n')
    return load_text(config.read_text(), str(config))


def test_a_live_copy_of_state_dir_starts_elsewhere(tmp_path: Path) -> None:
    first = _settings(tmp_path / "old")
    running = MailHub(first, reactor=MemoryReactorClock())
    running.startService()
    try:
        state = Path(first.hub.state_dir)
        # what a running hub has on disk: a queued message, a delivered
        # one, one being written into a Maildir's tmp/, one being received
        # (its spool file), the size cache and the locks
        message = tmp_path / "m"
        message.write_bytes(b"Subject: hi\n\nhello\n")
        queue = OutboundQueue(first.queue_dir, MemoryReactorClock())
        qid = queue.enqueue(Envelope(sender=Address("joe", "example.org"),
                                     recipients=(Address("bob", "remote.test"),)),
                            SpooledMessage(str(message), 20, 23)).result
        md = state / "mail" / "example.org" / "joe"
        for sub in ("new", "cur", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        (md / "new" / "1796029301.M1P1Q1R1.mail.example.org,S=20,W=23").write_bytes(
            message.read_bytes())
        (md / "tmp" / "1796029302.M1P1Q2R1.mail.example.org,S=20,W=23").write_bytes(b"Subj")
        (md / ".txmailhub-sizes").write_text('{"version": 1, "sizes": {}}')
        (state / "spool" / "1234-7-deadbeef").write_bytes(b"half a message")

        # cp -a while it runs, to a machine where the folder has another name
        new = _settings(tmp_path / "new")
        shutil.copytree(state, new.hub.state_dir, symlinks=True)
    except BaseException:
        running.stopService()
        raise
    restored = MailHub(new, reactor=MemoryReactorClock())
    try:
        restored.check_state_dir()  # no lock of the old hub's comes with the copy
        restored.startService()
        new_state = Path(new.hub.state_dir)
        # the message being received was never answered 250: dropped
        assert list((new_state / "spool").iterdir()) == []
        # the queue is there, its message read from the new folder
        assert restored.components.queue.ids() == [qid]
        entry = restored.components.queue.read(qid)
        assert entry.message_path.startswith(str(new_state))
        assert Path(entry.message_path).read_bytes() == message.read_bytes()
        # the Maildir is as copied; tmp/ is no message (no POP3 client sees it)
        md = new_state / "mail" / "example.org" / "joe"
        assert len(list((md / "new").iterdir())) == 1
    finally:
        restored.stopService()
        running.stopService()
