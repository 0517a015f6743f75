"""UIDLs kept from the server a Maildir comes from (``.txmailhub-uidls``):
a Maildir Dovecot served, moved under the hub, lists its messages with
the UIDLs Dovecot's POP3 gave them, so a client that leaves mail on the
server fetches none of them again.  Real Maildirs; the lists are in the
shape Dovecot 2.3 writes them (tests/integration/test_interop_dovecot.py
checks against Dovecot itself)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from txmailhub.store.format import uid_for_name
from txmailhub.store.kept_uidls import KEPT_NAME, dovecot_uidls
from txmailhub.store.mailbox import SIZES_NAME, scan

VALIDITY = 1796327577  # 0x6b11c899
DOVECOT = [  # Dovecot's names, as its LDA and doveadm save give them
    "1796327577.M714541P15015.vm,S=30,W=34",
    "1796327577.M755633P15019.vm,S=30,W=34",
    "1796327577.M790803P15020.vm,S=37,W=40",
]
UIDLIST = (
    f"3 V{VALIDITY} N5 Gb3289b2a99c8116ba73a000083ecc375\n"
    f"1 :{DOVECOT[0]}\n"
    f"2 G4f1e :{DOVECOT[1]}\n"
    f"4 :{DOVECOT[2]}\n"
)
WANT = ["000000016b11c899", "000000026b11c899", "000000046b11c899"]
HUBS = "1796327600.M1P1Q1R0a.hub,S=6,W=7"  # delivered by the hub after the move


def _dovecot_md(tmp_path: Path) -> Path:
    """A Maildir as Dovecot leaves it: its files in cur/ with flags (one
    seen), its uidlist and index files beside them."""
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    for name, flags in zip(DOVECOT, ("", "S", "")):
        size = int(name.split(",S=")[1].split(",")[0])
        (md / "cur" / f"{name}:2,{flags}").write_bytes(b"x" * (size - 1) + b"\n")
    (md / "dovecot-uidlist").write_text(UIDLIST)
    (md / "dovecot.index.log").write_bytes(b"\0" * 8)
    return md


def _uids(md: Path) -> dict[str, str]:
    return {os.path.basename(m.path).split(":")[0]: m.uid for m in scan(str(md))}


def _kept(md: Path) -> dict[str, str]:
    return json.loads((md / KEPT_NAME).read_bytes())["uidls"]


def test_dovecots_list_gives_the_uidls_its_pop3_gave() -> None:
    got = dovecot_uidls(UIDLIST.encode())
    assert got == dict(zip(DOVECOT, WANT))


def test_a_saved_pop3_uidl_and_a_version_1_list_are_read() -> None:
    assert dovecot_uidls(b"3 V1 N3\n1 P0001abc :a,S=1\n2 :b\nno entry\n") == {
        "a,S=1": "0001abc", "b": "0000000200000001"}
    assert dovecot_uidls(b"1 1000 3\n1 old.name\n2 other:2,S\n") == {
        "old.name": "00000001000003e8", "other": "00000002000003e8"}
    for bad in (b"2 V1 N2\n1 :a\n", b"3 N2\n1 :a\n", b""):
        with pytest.raises(ValueError):
            dovecot_uidls(bad)


def test_a_maildir_dovecot_served_keeps_dovecots_uidls(tmp_path: Path) -> None:
    md = _dovecot_md(tmp_path)
    assert _uids(md) == dict(zip(DOVECOT, WANT))
    assert _kept(md) == dict(zip(DOVECOT, WANT))
    # kept for good: Dovecot's list is no longer read, and what the hub
    # delivers later gets the hub's own UIDL
    (md / "dovecot-uidlist").unlink()
    (md / "new" / HUBS).write_bytes(b"hello\n")
    os.rename(md / "cur" / f"{DOVECOT[0]}:2,", md / "cur" / f"{DOVECOT[0]}:2,S")
    assert _uids(md) == {**dict(zip(DOVECOT, WANT)), HUBS: uid_for_name(HUBS)}


def test_the_entries_of_messages_that_went_are_dropped(tmp_path: Path) -> None:
    md = _dovecot_md(tmp_path)
    scan(str(md))
    os.unlink(md / "cur" / f"{DOVECOT[1]}:2,S")
    assert _uids(md) == {DOVECOT[0]: WANT[0], DOVECOT[2]: WANT[2]}
    assert _kept(md) == {DOVECOT[0]: WANT[0], DOVECOT[2]: WANT[2]}
    for name in DOVECOT[::2]:
        os.unlink(md / "cur" / f"{name}:2,")
    assert _uids(md) == {}
    # the file stays, empty: the choice is not made again
    assert _kept(md) == {}
    assert _uids(md) == {}


def test_a_maildir_the_hub_listed_before_keeps_the_hubs_uidls(tmp_path: Path) -> None:
    """A size cache: the hub listed this Maildir (its clients have the
    hub's UIDLs); Dovecot's list is not taken, then or later."""
    md = _dovecot_md(tmp_path)
    (md / SIZES_NAME).write_text('{"version": 1, "sizes": {}}')
    own = {name: uid_for_name(name) for name in DOVECOT}
    assert _uids(md) == own
    assert _kept(md) == {}
    (md / SIZES_NAME).unlink()
    assert _uids(md) == own


def test_a_list_dovecot_makes_after_the_first_login_is_not_taken(tmp_path: Path) -> None:
    """A Maildir the hub serves and Dovecot reads too: the hub's UIDLs
    stay what the first login gave."""
    md = _dovecot_md(tmp_path)
    (md / "dovecot-uidlist").unlink()
    own = {name: uid_for_name(name) for name in DOVECOT}
    assert _uids(md) == own
    assert _kept(md) == {}
    (md / "dovecot-uidlist").write_text(UIDLIST)
    assert _uids(md) == own


def test_an_entry_never_takes_a_uidl_another_message_has(tmp_path: Path) -> None:
    md = _dovecot_md(tmp_path)
    (md / "new" / HUBS).write_bytes(b"hello\n")
    (md / KEPT_NAME).write_text(json.dumps({"version": 1, "uidls": {
        DOVECOT[0]: uid_for_name(HUBS),  # the hub's message's own
        DOVECOT[1]: "same", DOVECOT[2]: "same",  # one UIDL for two messages
    }}))
    assert _uids(md) == {**{name: uid_for_name(name) for name in DOVECOT},
                         HUBS: uid_for_name(HUBS)}


def test_entries_rfc_1939_refuses_and_other_files_are_not_taken(tmp_path: Path) -> None:
    md = _dovecot_md(tmp_path)
    (md / KEPT_NAME).write_text(json.dumps({"version": 1, "uidls": {
        DOVECOT[0]: "has space", DOVECOT[1]: "x" * 71, DOVECOT[2]: "fine"}}))
    assert _uids(md)[DOVECOT[:2][0]] == uid_for_name(DOVECOT[0])
    assert _uids(md)[DOVECOT[1]] == uid_for_name(DOVECOT[1])
    assert _uids(md)[DOVECOT[2]] == "fine"
    # an empty file is an empty map (``touch`` opts a Maildir out)
    (md / KEPT_NAME).write_text("")
    assert _uids(md) == {name: uid_for_name(name) for name in DOVECOT}
    # a link is not followed, and not replaced with Dovecot's list
    (md / KEPT_NAME).unlink()
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps({"version": 1, "uidls": {DOVECOT[0]: "linked"}}))
    (md / KEPT_NAME).symlink_to(target)
    assert _uids(md) == {name: uid_for_name(name) for name in DOVECOT}
    assert (md / KEPT_NAME).is_symlink()


def test_a_saved_pop3_uidl_rfc_1939_refuses_is_not_given_even_at_the_first_login(
        tmp_path: Path) -> None:
    """A ``P`` field over 70 octets, or of an octet outside 0x21-0x7E:
    the hub's UIDL from the first login on, not that one first and the
    hub's at the next (a client would fetch the message again)."""
    md = _dovecot_md(tmp_path)
    (md / "dovecot-uidlist").write_bytes(
        f"3 V{VALIDITY} N5\n1 P{'a' * 71} :{DOVECOT[0]}\n".encode()
        + b"2 W34 Pab" + b"\xff" + f"cd :{DOVECOT[1]}\n".encode()
        + f"4 Pfine :{DOVECOT[2]}\n".encode())
    first = _uids(md)
    assert first == {DOVECOT[0]: uid_for_name(DOVECOT[0]),
                     DOVECOT[1]: uid_for_name(DOVECOT[1]), DOVECOT[2]: "fine"}
    assert _uids(md) == first
    assert _kept(md) == {DOVECOT[2]: "fine"}


def test_dovecots_uidls_are_shown_only_once_their_choice_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the first login: the login fails rather than give
    Dovecot's UIDLs that a later login, the size cache written, would
    not give again.  A Maildir without such a list still opens."""
    import errno

    from txmailhub.store import kept_uidls

    def full(path: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    md = _dovecot_md(tmp_path)
    plain = tmp_path / "plain"
    for sub in ("tmp", "new", "cur"):
        (plain / sub).mkdir(parents=True)
    (plain / "new" / HUBS).write_bytes(b"hello\n")
    monkeypatch.setattr(kept_uidls, "durable_write", full)
    with pytest.raises(OSError):
        scan(str(md))
    assert not (md / KEPT_NAME).exists()
    assert _uids(plain) == {HUBS: uid_for_name(HUBS)}
    monkeypatch.undo()
    assert _uids(md) == dict(zip(DOVECOT, WANT))
    assert _kept(md) == dict(zip(DOVECOT, WANT))


def test_a_login_to_an_empty_maildir_chooses_nothing_yet(tmp_path: Path) -> None:
    """No message listed, no UIDL given out: the first login that lists
    one chooses (Dovecot's list made meanwhile is taken)."""
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    assert _uids(md) == {}
    assert not (md / KEPT_NAME).exists()
    md.rename(tmp_path / "empty")
    _dovecot_md(tmp_path)
    assert _uids(md) == dict(zip(DOVECOT, WANT))


def test_a_file_left_larger_by_other_programs_deletions_is_read_and_pruned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program deleted most messages since the last login: the
    file is larger than the messages left need, and is still read (then
    pruned); one beyond every bound is ignored, and the log says so."""
    from txmailhub.store import kept_uidls

    md = _dovecot_md(tmp_path)
    many = {f"gone{i}": f"uidl{i}" for i in range(200)}
    (md / KEPT_NAME).write_text(json.dumps(
        {"version": 1, "uidls": {**many, **dict(zip(DOVECOT, WANT))}}))
    size = (md / KEPT_NAME).stat().st_size
    assert size > kept_uidls.ENTRY_OCTETS * (len(DOVECOT) + 1)
    monkeypatch.setattr(kept_uidls, "LEAST_LIMIT", size)
    assert _uids(md) == dict(zip(DOVECOT, WANT))
    assert _kept(md) == dict(zip(DOVECOT, WANT))
    (md / KEPT_NAME).write_text(json.dumps(
        {"version": 1, "uidls": {**many, **many, **dict(zip(DOVECOT, WANT))}}) + " " * size)
    assert _uids(md) == {name: uid_for_name(name) for name in DOVECOT}


def test_a_maildir_the_hub_makes_has_the_hubs_uidls_from_its_making(tmp_path: Path) -> None:
    # its first login decided (and wrote) the empty file: on a frozen or
    # hung state_dir that write held the login of a Maildir no other
    # server ever listed.  Made with the Maildir, the login has nothing to
    # write, and a list Dovecot makes later still changes no UIDL
    from txmailhub.store.maildir import _make_maildir

    md = tmp_path / "example.org" / "alice"
    _make_maildir(str(md))
    assert (md / KEPT_NAME).read_bytes() == b""
    (md / "new" / HUBS).write_bytes(b"hello\n")
    (md / "dovecot-uidlist").write_text(f"3 V{VALIDITY} N2\n1 :{HUBS}\n")
    stamp = (md / KEPT_NAME).stat()
    assert _uids(md) == {HUBS: uid_for_name(HUBS)}
    assert (md / KEPT_NAME).stat().st_mtime_ns == stamp.st_mtime_ns
    assert (md / KEPT_NAME).read_bytes() == b""


def test_a_maildir_there_before_the_hub_met_it_is_not_given_the_file(tmp_path: Path) -> None:
    # a delivery into a Maildir moved from Dovecot, before its user's first
    # login, must leave Dovecot's list to that login
    from txmailhub.store.maildir import _make_maildir

    md = _dovecot_md(tmp_path)
    _make_maildir(str(md))
    assert not (md / KEPT_NAME).exists()
    assert _uids(md) == dict(zip(DOVECOT, WANT))
