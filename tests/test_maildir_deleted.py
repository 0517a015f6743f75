"""The note a POP3 session leaves in a Maildir of the keyed copies (the
queue runner's local retries) it deletes, so that the runner's retry
after a crash between such a copy and its record does not deliver it
again.  Real Maildirs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.logger import formatEvent

from txmailhub.address import Address
from txmailhub.store import mailbox as mailbox_module
from txmailhub.store.mailbox import DELETED_NAME, note_deleted, was_deleted
from txmailhub.store.maildir import MaildirStore
from txmailhub.testing import SyncerSpy

JOE = Address("joe", "example.org")
KEYED = "1700000123.M250000K1A2B3C.mail.example.org"
PLAIN = "1700000124.M1P1Q1R0a.mail.example.org"
DAY = 86400


def _md(tmp_path: Path) -> Path:
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    return md


def test_a_note_is_found_and_only_its_own(tmp_path) -> None:
    md = _md(tmp_path)
    assert not was_deleted(str(md), KEYED)  # no file yet
    note_deleted(str(md), [KEYED], 1_700_000_200, DAY)
    assert was_deleted(str(md), KEYED)
    assert not was_deleted(str(md), KEYED[:-1])
    assert stat.S_IMODE(os.stat(md / DELETED_NAME).st_mode) == 0o600


def test_a_long_note_drops_the_copies_no_retry_comes_for(tmp_path, monkeypatch) -> None:
    md = _md(tmp_path)
    monkeypatch.setattr(mailbox_module, "DELETED_PRUNE_AT", 10)
    old = "1600000000.M1K1.h"
    note_deleted(str(md), [old, KEYED], 1_700_000_200, DAY)  # (the file was empty)
    assert was_deleted(str(md), old)
    newer = "1700000150.M1K2.h"
    note_deleted(str(md), [newer], 1_700_000_200, DAY)
    assert not was_deleted(str(md), old)  # made long before: no retry comes now
    assert was_deleted(str(md), KEYED) and was_deleted(str(md), newer)


def test_a_pipe_at_the_notes_name_is_not_waited_on(tmp_path) -> None:
    md = _md(tmp_path)
    os.mkfifo(md / DELETED_NAME)
    with pytest.raises(OSError):
        note_deleted(str(md), [KEYED], 1_700_000_200, DAY)
    assert not was_deleted(str(md), KEYED)


def _session_deletes(store: MaildirStore) -> None:
    box = []
    store.open_mailbox(JOE).addCallback(box.append)
    (mailbox,) = box
    done = []
    mailbox.update([], list(range(len(mailbox.list_messages())))).addCallback(done.append)
    assert done == [None]
    mailbox.close()


def test_a_session_notes_the_keyed_copies_it_deletes_only(tmp_path) -> None:
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    md = Path(store.maildir_path(JOE))
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    (md / "new" / f"{PLAIN},S=3,W=4").write_bytes(b"a\nb")
    _session_deletes(store)
    assert not (md / DELETED_NAME).exists()  # no keyed copy: no note
    (md / "cur" / f"{KEYED},S=3,W=4:2,S").write_bytes(b"a\nb")
    _session_deletes(store)
    assert os.listdir(md / "cur") == []
    assert was_deleted(str(md), KEYED)


def test_a_note_that_cannot_be_written_is_a_warning_and_the_deletion_goes_on(
        tmp_path, log_events) -> None:
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    md = Path(store.maildir_path(JOE))
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    (md / "new" / f"{KEYED},S=3,W=4").write_bytes(b"a\nb")
    os.mkfifo(md / DELETED_NAME)
    _session_deletes(store)
    assert os.listdir(md / "new") == []
    assert [e for e in log_events if "cannot note" in formatEvent(e)]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "plain"])
def test_a_few_deletions_with_a_keyed_copy_are_a_job_on_the_workers(tmp_path, keyed) -> None:
    """``delete`` of a few messages unlinks them on the caller's thread
    (the reactor's), but a keyed copy's note is fsynced first: a job on
    the syncer's workers then, so that a hung disk holds no session."""
    syncer = SyncerSpy()
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", syncer)
    md = Path(store.maildir_path(JOE))
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    (md / "new" / f"{KEYED if keyed else PLAIN},S=3,W=4").write_bytes(b"a\nb")
    box = []
    store.open_mailbox(JOE).addCallback(box.append)
    (mailbox,) = box
    before = syncer.calls_run
    done = []
    mailbox.delete([0]).addCallback(done.append)
    assert done == [None] and os.listdir(md / "new") == []
    assert syncer.calls_run - before == (1 if keyed else 0)
    assert was_deleted(str(md), KEYED) is keyed
    mailbox.close()


def test_a_host_name_beyond_ascii_is_noted_as_its_file_name_is(tmp_path) -> None:
    md = _md(tmp_path)
    unique = "1700000123.M250000K1A2B3C.mäil.example.org"
    note_deleted(str(md), [unique], 1_700_000_200, DAY)
    assert was_deleted(str(md), unique)
    assert not was_deleted(str(md), KEYED)


def test_a_long_note_whose_read_fails_keeps_its_notes(tmp_path, monkeypatch) -> None:
    """The list read for pruning could not be read (EIO, no file
    descriptor left): the new note is appended, and the notes before it
    stay -- not a list rewritten with the new note alone, whose retries
    would bring the copies deleted before back."""
    md = _md(tmp_path)
    monkeypatch.setattr(mailbox_module, "DELETED_PRUNE_AT", 10)
    note_deleted(str(md), [KEYED, "1700000130.M1K9.h"], 1_700_000_200, DAY)
    real = mailbox_module._read_deleted
    monkeypatch.setattr(mailbox_module, "_read_deleted", lambda md: None)
    newer = "1700000150.M1K2.h"
    note_deleted(str(md), [newer], 1_700_000_200, DAY)
    monkeypatch.setattr(mailbox_module, "_read_deleted", real)
    assert was_deleted(str(md), KEYED) and was_deleted(str(md), newer)


def test_a_note_cut_short_does_not_take_the_next_one_with_it(tmp_path) -> None:
    """A line a full disk cut short is ended by the next note, which is
    found on a line of its own."""
    md = _md(tmp_path)
    (md / DELETED_NAME).write_bytes(KEYED.encode() + b"\n1700000140.M1K")
    newer = "1700000150.M1K2.h"
    note_deleted(str(md), [newer], 1_700_000_200, DAY)
    assert was_deleted(str(md), KEYED) and was_deleted(str(md), newer)
