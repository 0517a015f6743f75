"""A message file of the hub's naming (``,S=`` and ``,W=``, taken unread)
changed in place to another length: a POP3 session that finds it marks
it in the size cache, and the next login's ``scan`` renames it to its
true sizes (its unique part, so its UIDL, and its flags kept), or lists
it at the sizes measured where it cannot be renamed.  Real Maildirs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from twisted.logger import formatEvent

from txmailhub.address import Address
from txmailhub.store import mailbox as mailbox_module
from txmailhub.store.format import crlf_size_of, own_sizes, uid_for_name, with_sizes
from txmailhub.store.mailbox import SIZES_NAME, scan
from txmailhub.store.maildir import MaildirStore
from txmailhub.testing import SyncerSpy

DATA = b"Subject: x\n\nhello, a longer body\n"
UNIQUE = "1700000001.M1P1Q1R0a.hub"
NAME = f"{UNIQUE},S=10,W=12"  # sizes that are not DATA's
HEALED = f"{UNIQUE},S={len(DATA)},W={crlf_size_of(DATA)}"
JOE = Address("joe", "example.org")


def _md(tmp_path: Path) -> Path:
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    return md


def _mark(md: Path, *names: str) -> None:
    """What a POP3 session that found these files of another length
    leaves for the next login (``save_downgraded_sizes``)."""
    cache = mailbox_module._SizeCache(str(md), len(names))
    for name in names:
        cache.mark_misnamed(name.split(":", 1)[0])
    cache.save(prune=False)


def _cache(md: Path) -> dict:
    return json.loads((md / SIZES_NAME).read_bytes())["sizes"]


def _listed(snapshot) -> list[tuple[str, str, int, int, bool]]:
    return [(os.path.relpath(m.path, snapshot.folder), m.uid, m.size, m.stored_size, m.seen)
            for m in snapshot]


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """The folders ``scan`` fsyncs after its renames."""
    dirs: list[str] = []
    monkeypatch.setattr(mailbox_module, "fsync_dir", dirs.append)
    return dirs


def test_with_sizes_keeps_the_unique_part_other_fields_and_the_flags() -> None:
    assert with_sizes(f"{NAME}:2,RS", 5, 7) == f"{UNIQUE},S=5,W=7:2,RS"
    assert with_sizes(f"{UNIQUE},S=10,X=3,W=12", 5, 7) == f"{UNIQUE},S=5,X=3,W=7"
    assert uid_for_name(with_sizes(NAME, 5, 7)) == uid_for_name(NAME)
    assert own_sizes(with_sizes(NAME, 5, 7)) == (5, 7)


@pytest.mark.parametrize("where", ["new", "cur"])
def test_a_marked_file_is_renamed_to_its_true_sizes(tmp_path, synced, log_events, where):
    md = _md(tmp_path)
    flags = ":2,RS" if where == "cur" else ""
    (md / where / (NAME + flags)).write_bytes(DATA)
    before = _listed(scan(str(md)))  # unmarked: the name's word, unread
    assert before == [(f"{where}/{NAME}{flags}", UNIQUE, 12, 10, where == "cur")]
    _mark(md, NAME + flags)
    snapshot = scan(str(md))
    assert _listed(snapshot) == [(f"{where}/{HEALED}{flags}", UNIQUE, crlf_size_of(DATA),
                                  len(DATA), where == "cur")]
    assert os.listdir(md / where) == [HEALED + flags]
    assert (md / where / (HEALED + flags)).read_bytes() == DATA
    assert synced == [str(md / where)]
    assert _cache(md) == {}  # the mark is gone: the name tells the sizes again
    assert [e for e in log_events if "renamed to" in formatEvent(e)]


def test_only_a_marked_name_costs_a_look_at_the_login(tmp_path, monkeypatch, synced) -> None:
    """The hub's names are listed unread and unstat'ed, those with a
    downgraded size in the cache as well: the marked one alone is looked
    at."""
    md = _md(tmp_path)
    plain = "1700000002.M2P1Q2R0b.hub,S=3,W=4"
    downgraded = "1700000003.M3P1Q3R0c.hub,S=3,W=4"
    for name in (NAME, plain, downgraded):
        (md / "new" / name).write_bytes(DATA if name == NAME else b"a\nb")
    cache = mailbox_module._SizeCache(str(md), 3)
    cache.remember(downgraded, os.stat(md / "new" / downgraded), 9)
    cache.mark_misnamed(NAME)
    cache.save(prune=False)
    looked: list[str] = []
    real = os.lstat

    def lstat(path, *args, **kwargs):
        looked.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    assert [m.size for m in scan(str(md))] == [crlf_size_of(DATA), 4, 4]
    assert set(looked) == {NAME}
    looked.clear()
    scan(str(md))  # renamed: not even that one now
    assert looked == []
    assert list(_cache(md)) == [downgraded]  # its downgraded size kept


@pytest.mark.parametrize("error", [errno.EACCES, errno.EEXIST, errno.EROFS])
def test_a_file_that_cannot_be_renamed_is_listed_at_its_measured_sizes(
        tmp_path, monkeypatch, synced, log_events, error) -> None:
    md = _md(tmp_path)
    (md / "new" / NAME).write_bytes(DATA)
    _mark(md, NAME)
    tried: list[tuple[str, str]] = []

    def refuse(src: str, dst: str) -> None:
        tried.append((os.path.basename(src), os.path.basename(dst)))
        raise OSError(error, os.strerror(error), src)

    monkeypatch.setattr(mailbox_module, "rename_noreplace", refuse)
    want = [(f"new/{NAME}", UNIQUE, crlf_size_of(DATA), len(DATA), False)]
    assert _listed(scan(str(md))) == want
    assert tried == [(NAME, HEALED)]
    assert synced == []
    assert [e for e in log_events if "cannot be renamed" in formatEvent(e)]

    # the next logins take the sizes measured from the cache, unread
    def no_read(path: str) -> tuple[int, int]:
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(mailbox_module, "_crlf_size_of_file", no_read)
    assert _listed(scan(str(md))) == want
    # and a file changed once more is measured again
    monkeypatch.undo()
    monkeypatch.setattr(mailbox_module, "rename_noreplace", refuse)
    longer = DATA + b"more\n"
    (md / "new" / NAME).write_bytes(longer)
    st = os.stat(md / "new" / NAME)
    os.utime(md / "new" / NAME, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert [m.size for m in scan(str(md))] == [crlf_size_of(longer)]


def test_a_marked_file_of_its_names_sizes_again_keeps_its_name(tmp_path, synced) -> None:
    # its content put back (a restore): read once, no rename, no mark left
    md = _md(tmp_path)
    (md / "new" / NAME).write_bytes(b"x" * 10)
    _mark(md, NAME)
    assert _listed(scan(str(md))) == [(f"new/{NAME}", UNIQUE, 12, 10, False)]
    assert os.listdir(md / "new") == [NAME]
    assert _cache(md) == {}
    assert synced == []


def test_a_marked_file_of_its_names_length_and_other_line_ends_is_renamed(
        tmp_path, synced) -> None:
    """Changed in place to the name's length with another count of line
    ends (the CRLF size, ``W=``, is not the name's): renamed to its true
    ``W=``, as for another length."""
    md = _md(tmp_path)
    data = b"x\n" * 5  # 10 octets, 15 in CRLF form (the name says 12)
    (md / "new" / NAME).write_bytes(data)
    _mark(md, NAME)
    healed = f"{UNIQUE},S=10,W=15"
    assert _listed(scan(str(md))) == [(f"new/{healed}", UNIQUE, 15, 10, False)]
    assert os.listdir(md / "new") == [healed]
    assert synced == [str(md / "new")]
    assert _cache(md) == {}


def test_a_marked_file_another_reader_moves_to_cur_meanwhile_is_put_right_there(
        tmp_path, monkeypatch, synced) -> None:
    md = _md(tmp_path)
    (md / "new" / NAME).write_bytes(DATA)
    _mark(md, NAME)
    real = mailbox_module.rename_noreplace

    def moved_first(src: str, dst: str) -> None:
        if os.path.dirname(src) == str(md / "new"):  # the other reader is first
            os.rename(src, md / "cur" / (NAME + ":2,S"))
        real(src, dst)

    monkeypatch.setattr(mailbox_module, "rename_noreplace", moved_first)
    assert _listed(scan(str(md))) == [
        (f"cur/{HEALED}:2,S", UNIQUE, crlf_size_of(DATA), len(DATA), True)]
    assert os.listdir(md / "new") == []
    assert os.listdir(md / "cur") == [HEALED + ":2,S"]


def test_a_marked_file_renamed_in_cur_meanwhile_stays_listed_and_marked(
        tmp_path, monkeypatch, synced) -> None:
    # another reader flags it between the listing and the rename: listed
    # by the name it had (a read finds it by its unique part), not lost
    # from the session, and put right at the next login
    md = _md(tmp_path)
    (md / "cur" / (NAME + ":2,")).write_bytes(DATA)
    _mark(md, NAME)
    real = mailbox_module.rename_noreplace
    calls: list[str] = []

    def flagged_first(src: str, dst: str) -> None:
        if not calls:
            os.rename(src, md / "cur" / (NAME + ":2,S"))
        calls.append(src)
        real(src, dst)

    monkeypatch.setattr(mailbox_module, "rename_noreplace", flagged_first)
    assert [(m.uid, m.path) for m in scan(str(md))] == [
        (UNIQUE, str(md / "cur" / (NAME + ":2,")))]
    assert os.listdir(md / "cur") == [NAME + ":2,S"]  # there, untouched
    assert _listed(scan(str(md))) == [
        (f"cur/{HEALED}:2,S", UNIQUE, crlf_size_of(DATA), len(DATA), True)]


def test_a_marked_file_removed_meanwhile_is_not_listed(tmp_path, monkeypatch, synced) -> None:
    md = _md(tmp_path)
    (md / "new" / NAME).write_bytes(DATA)
    other = "1700000002.M2P1Q2R0b.hub,S=3,W=4"
    (md / "new" / other).write_bytes(b"a\nb")
    _mark(md, NAME)
    real = mailbox_module.rename_noreplace

    def removed_first(src: str, dst: str) -> None:
        os.unlink(src)
        real(src, dst)

    monkeypatch.setattr(mailbox_module, "rename_noreplace", removed_first)
    assert [m.uid for m in scan(str(md))] == [uid_for_name(other)]
    assert os.listdir(md / "new") == [other]


def test_the_mark_is_no_valid_entry_to_a_version_without_it(tmp_path) -> None:
    """Going back: a version before the mark checks each entry against
    the file (inode, mtime, size, a CRLF size of 0 or more); the mark
    matches no file, so it never gives a size, downgraded or other."""
    md = _md(tmp_path)
    (md / "new" / NAME).write_bytes(DATA)
    _mark(md, NAME)
    entry = _cache(md)[NAME]
    st = os.stat(md / "new" / NAME)
    assert not mailbox_module._SizeCache._valid(entry, st)
    assert entry[0] == 0 and entry[3] < 0


def _session(tmp_path):
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    md = Path(store.maildir_path(JOE))
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    return store, md


def _open(store):
    results: list = []
    store.open_mailbox(JOE).addBoth(results.append)
    (box,) = results
    assert not hasattr(box, "check"), box  # no Failure
    return box


@pytest.mark.parametrize("read", ["open", "read", "read-past-limit", "nowait"])
def test_a_read_that_finds_another_length_marks_the_name_at_the_save(
        tmp_path, read) -> None:
    store, md = _session(tmp_path)
    (md / "new" / NAME).write_bytes(b"x" * 10)
    box = _open(store)
    (md / "new" / NAME).write_bytes(DATA)  # changed in place
    if read == "open":
        box.open_message(0).close()
    elif read == "read":
        assert box.read_message(0, 1 << 16) == DATA
    elif read == "read-past-limit":
        assert box.read_message(0, 11) is None
    else:
        try:
            box.read_message_nowait(0, 1 << 16)
        except BlockingIOError:  # pragma: no cover - just written: in the kernel's cache
            pytest.skip("no RWF_NOWAIT here")
    assert not (md / SIZES_NAME).exists()  # kept until the save
    box.save_downgraded_sizes()
    assert _cache(md) == {NAME: [0, 0, -1, -1]}
    box.close()
    box = _open(store)
    assert [(m.path, m.size) for m in box.list_messages()] == [
        (str(md / "new" / HEALED), crlf_size_of(DATA))]
    assert box.read_message(0, 1 << 16) == DATA
    box.save_downgraded_sizes()
    assert _cache(md) == {}
    box.close()


def test_a_read_of_the_length_listed_marks_nothing(tmp_path) -> None:
    store, md = _session(tmp_path)
    (md / "new" / HEALED).write_bytes(DATA)
    plain = md / "new" / "1700000002.M2P1.other,S=3,W=4"  # another program's: measured
    plain.write_bytes(DATA)
    box = _open(store)
    measured = _cache(md)  # the other program's name's sizes
    assert list(measured) == [plain.name]
    plain.write_bytes(DATA + b"more\n")
    assert box.read_message(0, 1 << 16) == DATA
    box.open_message(0).close()
    assert box.read_message(1, 1 << 16) == DATA + b"more\n"  # not the hub's name
    box.save_downgraded_sizes()
    assert _cache(md) == measured
    box.close()


def test_a_file_changed_before_the_login_is_refused_by_one_session_then_renamed(
        tmp_path) -> None:
    """A file of the hub's naming changed in place while no session was
    open (a script that rewrites delivered mail) is listed by the next
    login at the sizes its name gives, unread: that session's read finds
    the other length (POP3 refuses it, [SYS/TEMP]) and marks it, and the
    login after it lists it at its true sizes (docs/deployment.rst,
    "Upgrading and going back")."""
    store, md = _session(tmp_path)
    (md / "new" / NAME).write_bytes(DATA)  # 10 octets named, not DATA's
    box = _open(store)
    assert [(m.path, m.size, m.stored_size) for m in box.list_messages()] == [
        (str(md / "new" / NAME), 12, 10)]  # the name's word: not looked at
    box.open_message(0).close()
    box.save_downgraded_sizes()
    assert _cache(md) == {NAME: [0, 0, -1, -1]}
    box.close()
    box = _open(store)
    assert [(m.path, m.size, m.stored_size) for m in box.list_messages()] == [
        (str(md / "new" / HEALED), crlf_size_of(DATA), len(DATA))]
    box.close()
