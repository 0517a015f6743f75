"""docs/deployment.rst, "Backup and restore": a copy of ``state_dir``
taken while the hub runs (``cp -a``), started on another machine (here:
another folder, with the first hub still running)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from txmailhub.address import Address
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay.queue import OutboundQueue
from txmailhub.service import MailHub

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")


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
        # a second one, whose message the copy will miss (deleted, the
        # entry done, between the copy's reading of its record and of it)
        gone = queue.enqueue(Envelope(sender=Address("joe", "example.org"),
                                      recipients=(Address("carol", "remote.test"),)),
                             SpooledMessage(str(message), 20, 23)).result
        # a record being rewritten (its temporary file)
        (state / "queue" / f".{qid}.json.tmp").write_bytes(b'{"half": ')
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
        (Path(new.hub.state_dir) / "queue" / f"{gone}.msg").unlink()
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
        # the queue is there, its message read from the new folder; the
        # temporary file is gone, the record without its message set aside
        assert restored.components.queue.ids() == [qid]
        assert not (new_state / "queue" / f".{qid}.json.tmp").exists()
        assert (new_state / "queue" / "corrupt" / f"{gone}.json").exists()
        entry = restored.components.queue.read(qid)
        assert entry.message_path.startswith(str(new_state))
        assert Path(entry.message_path).read_bytes() == message.read_bytes()
        # the Maildir is as copied; tmp/ is no message (no POP3 client sees it)
        md = new_state / "mail" / "example.org" / "joe"
        assert len(list((md / "new").iterdir())) == 1
    finally:
        restored.stopService()
        running.stopService()


def _backup_section() -> str:
    text = (Path(__file__).parent.parent / "docs" / "deployment.rst").read_text()
    start = text.index("Backup and restore\n---")
    return " ".join(text[start:].split("\n\n\n")[0].split())


def _copy_folder(src: Path, dst: Path, delete: bool = False) -> None:
    """One pass of ``rsync -a`` (``--delete``) over a folder of files."""
    dst.mkdir(exist_ok=True)
    if delete:
        for p in dst.iterdir():
            if not (src / p.name).exists():
                p.unlink()
    for p in sorted(src.iterdir()):
        shutil.copy2(p, dst / p.name)


def test_a_message_moving_during_a_live_copy_can_be_in_neither_place(tmp_path: Path) -> None:
    # rsync copies a Maildir's cur/ before its new/: a message a POP3
    # client reads meanwhile (moved from new/ to cur/, with its S flag)
    # is in neither folder of the copy.  The page said such a message is
    # never lost, and that a second rsync gives a copy with none of this:
    # without --delete, the second pass keeps new/'s old name too
    md, copy = tmp_path / "joe", tmp_path / "copy"
    for sub in ("cur", "new"):
        (md / sub).mkdir(parents=True)
    copy.mkdir()
    name = "1796029301.M1P1Q1R1.mail.example.org,S=20,W=23"
    (md / "new" / name).write_bytes(b"Subject: hi\n\nhello\n")
    _copy_folder(md / "cur", copy / "cur")
    (md / "new" / name).rename(md / "cur" / f"{name}:2,S")  # a RETR (mark_seen)
    _copy_folder(md / "new", copy / "new")
    assert [*(copy / "cur").iterdir(), *(copy / "new").iterdir()] == []
    # one copied before the move and again after: twice, unless the
    # second pass deletes what is no longer there
    (md / "cur" / f"{name}:2,S").rename(md / "new" / name)
    for delete, found in ((False, 2), (True, 1)):
        again = tmp_path / f"again-{delete}"
        again.mkdir()
        for sub in ("cur", "new"):
            _copy_folder(md / sub, again / sub)
        (md / "new" / name).rename(md / "cur" / f"{name}:2,S")
        for sub in ("cur", "new"):
            _copy_folder(md / sub, again / sub, delete=delete)
        assert len([*(again / "cur").iterdir(), *(again / "new").iterdir()]) == found
        (md / "cur" / f"{name}:2,S").rename(md / "new" / name)
    doc = _backup_section()
    assert "never lost" not in doc
    assert "or in neither" in doc and "rsync -a --delete" in doc
