"""Dovecot reads the Maildir the hub delivers into, and the hub's POP3
reads it again after Dovecot changed it.

The hub names its files ``<unique>,S=<octets on disk>,W=<octets in CRLF
form>`` -- Dovecot's own fields -- and Dovecot trusts them without
reading the file: a wrong one is a broken message there (an error, a
cache record deleted), and a size Dovecot's POP3 LIST shows that RETR
does not keep.  Dovecot in turn moves messages to ``cur/`` with flags,
keeps its index files in the Maildir and delivers files of its own; the
hub's POP3 must show the same messages, sizes and UIDLs through all of
that.
"""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest
from dovecot import MISSING, Dovecot
from interop import ALICE, ALICE_PW, SENDER, corpus, hub_log_is_clean

from txmailhub.store.format import base_name, name_fields

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture
def hub(make_hub):
    """A hub whose state folder Dovecot can reach: as root, Dovecot works
    as ``nobody``, who cannot pass pytest's own folder (mode 0700).  The
    hub's ``var`` is a link to a folder of its own under the system's
    temporary folder, which everyone may pass (but not list), and so
    is ``hub.dovecot_folder``, for Dovecot's own files."""
    hub = make_hub(start=False)
    real = Path(tempfile.mkdtemp(prefix="txmailhub-dovecot-"))
    try:
        real.chmod(0o711)
        (real / "var").mkdir()
        os.symlink(real / "var", hub.state_dir)
        hub.dovecot_folder = real / "dovecot"
        yield hub.start()
    finally:
        hub.stop()
        shutil.rmtree(real)


def _head(name: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {ALICE}\r\nSubject: dovecot {name}\r\n"
            f"Message-ID: <{name}@dovecot.test>\r\n").encode()


def messages() -> dict[str, tuple[bytes, list[str]]]:
    """What the test sends: name -> (DATA, MAIL FROM parameters)."""
    eight = ["BODY=8BITMIME"]
    msgs = {name: (data, eight) for name, data in corpus("dovecot").items()}
    msgs.update({
        "empty-body": (_head("empty-body") + b"\r\n", []),
        "no-blank-line": (_head("no-blank-line").rstrip(b"\r\n"), []),
        "no-final-newline": (_head("no-final-newline") + b"\r\nlast line", []),
        # every line short: the CRLF form is near twice the stored size
        "crlf-heavy": (_head("crlf-heavy") + b"\r\n" + b"\r\n" * 700
                       + b"x\r\n.\r\n" * 300 + b"\r\n", []),
        "smtputf8": ("From: Jörg <jörg@example.net>\r\nTo: alice@example.org\r\n"
                     "Subject: dovecot smtputf8 Grüße\r\n"
                     "Message-ID: <smtputf8@dovecot.test>\r\n\r\nÜmlaut body\r\n".encode(),
                     ["SMTPUTF8", "BODY=8BITMIME"]),
    })
    return msgs


def send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        for data, options in messages().values():
            sender = "jörg@example.net" if "SMTPUTF8" in options else SENDER
            assert s.sendmail(sender, [ALICE], data, mail_options=options) == {}


def _alice_logged_in(hub) -> poplib.POP3:
    """A POP3 session of the hub's, in UTF8 mode, logged in as ALICE."""
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=20)
    try:
        p.utf8()
        p.user(ALICE)
        p.pass_(ALICE_PW)
    except BaseException:
        p.close()
        raise
    return p


def hub_pop3(hub, *, retr: bool = False, dele: tuple[int, ...] = (),
             exact: bool = True) -> dict[str, tuple[int, bytes]]:
    """The hub's POP3 view (UTF8 mode): UIDL -> (LIST size, RETR or b"").
    ``exact``: every RETR must send as many octets as LIST said."""
    p = _alice_logged_in(hub)
    try:
        sizes = {int(n): int(s) for n, s in (x.split() for x in p.list()[1])}
        uids = {int(n): u.decode() for n, u in (x.split() for x in p.uidl()[1])}
        out = {}
        for n in sorted(sizes):
            body = b""
            if retr:
                _, lines, _ = p.retr(n)
                body = b"".join(line + b"\r\n" for line in lines)
                assert not exact or len(body) == sizes[n], (uids[n], len(body), sizes[n])
            out[uids[n]] = (sizes[n], body)
        for n in dele:
            p.dele(n)
    finally:
        p.quit()
    return out


def dovecot_view(dove: Dovecot) -> dict[str, dict]:
    """doveadm's fetch, by the UIDL the hub gives the same file."""
    return {base_name(m["guid"]): m for m in dove.fetch()}


def dovecot_pop3(dove: Dovecot, count: int) -> tuple[dict[int, int], dict[int, str],
                                                      dict[int, bytes]]:
    """Dovecot's POP3: LIST sizes, UIDLs and RETR bodies, by message number."""
    replies = dove.pop3("LIST", "UIDL", *(f"RETR {n}" for n in range(1, count + 1)))
    for status, _ in replies:
        assert status.startswith(b"+OK"), status
    sizes = {int(n): int(s) for n, s in (x.split() for x in replies[0][1].splitlines())}
    uidls = {int(n): u.decode() for n, u in (x.split() for x in replies[1][1].splitlines())}
    bodies = {n: replies[1 + n][1] for n in range(1, count + 1)}
    return sizes, uidls, bodies


def test_dovecot_reads_what_the_hub_delivered(hub):
    send(hub.smtp_port)
    files = hub.message_files(ALICE)
    assert len(files) == len(messages())
    names = {base_name(p.name): p for p in files}
    # the hub's fields are the file's size and the size its own RETR sends
    before = hub_pop3(hub)
    assert sorted(before) == sorted(names)
    for uid, path in names.items():
        fields = name_fields(path.name)
        assert fields["S"] == path.stat().st_size, path.name
        assert fields["W"] == before[uid][0], path.name

    dove = Dovecot(hub.dovecot_folder, hub.maildir(ALICE).resolve())
    seen = dovecot_view(dove)  # stderr empty: no size in a name was wrong
    assert sorted(seen) == sorted(names)
    for uid, m in seen.items():
        fields = name_fields(names[uid].name)
        assert (int(m["size.physical"]), int(m["size.virtual"])) == (fields["S"], fields["W"]), uid

    # Dovecot's POP3 reads every message through (and, as RETR does
    # there, moves each to cur/ with the Seen flag)
    sizes, _, bodies = dovecot_pop3(dove, len(names))
    by_guid = {int(m["uid"]): uid for uid, m in seen.items()}
    for n, body in bodies.items():
        assert len(body) == sizes[n], (by_guid[n], len(body), sizes[n])
    assert sorted(sizes.values()) == sorted(size for size, _ in before.values())
    assert all(p.parent.name == "cur" for p in hub.message_files(ALICE))
    # and some flags of its own: F (flagged), R (answered), T (deleted)
    dove.doveadm("flags", "add", "\\Flagged", "uid", "1:3")
    dove.doveadm("flags", "add", "\\Answered", "uid", "2")
    dove.doveadm("flags", "add", "$Label1", "uid", "3")  # a keyword: letter "a"
    dove.doveadm("flags", "remove", "\\Seen", "uid", "4")

    # the hub sees the same messages: sizes, UIDLs, bodies byte for byte
    after = hub_pop3(hub, retr=True)
    assert {u: s for u, (s, _) in after.items()} == {u: s for u, (s, _) in before.items()}
    dove_bodies = {by_guid[n]: body for n, body in bodies.items()}
    for uid, (_, body) in after.items():
        assert body == dove_bodies[uid], uid
    # the hub's RETR added S where Dovecot took it away, and kept the rest
    # (in ASCII order, as the Maildir rules and Dovecot want them)
    flags = {base_name(p.name): p.name.partition(":2,")[2] for p in hub.message_files(ALICE)}
    first = [by_guid[n] for n in (1, 2, 3, 4)]
    assert [flags[u] for u in first] == ["FS", "FRS", "FSa", "S"], flags

    # Dovecot again: no error, the same UIDs and flags as the files say
    again = dovecot_view(dove)
    assert {u: m["uid"] for u, m in again.items()} == {u: m["uid"] for u, m in seen.items()}
    assert "\\Answered" in again[first[1]]["flags"]
    assert "$Label1" in again[first[2]]["flags"].split(), again[first[2]]
    # the hub deletes two: Dovecot sees them gone
    hub_pop3(hub, dele=(1, 2))
    assert sorted(dovecot_view(dove)) == sorted(set(names) - set(first[:2]))
    # Dovecot's files in the Maildir are no mailboxes to it but INBOX
    assert dove.doveadm("mailbox", "list").split() == ["INBOX"]
    hub_log_is_clean(hub.log_text())


SAVED = {
    "lf": b"Subject: saved lf\n\nbody\n",
    "no-final-newline": b"Subject: saved no final newline\n\nlast line",
    "crlf": b"Subject: saved crlf\r\n\r\nline one\r\nline two\r\n",
    "bare-cr": b"Subject: saved bare cr\n\nbare\rCR and CR CR LF\r\r\nend\n",
    "empty-line-end": b"Subject: saved\n\n\n\n",
}


def test_the_hub_reads_what_dovecot_delivered(hub):
    """Messages Dovecot saves into the Maildir (its own names, its own
    ``,S=``/``,W=``): the hub's RETR octets are Dovecot's POP3's, message
    for message, and its LIST sizes are what its RETR sends (RFC 1939 5).

    One difference from Dovecot (docs/pop3.rst, "Sizes"): for a message
    without a final newline, Dovecot's ``,W=`` leaves out the CRLF the
    last line needs, and Dovecot's POP3 sends 2 octets more than its
    LIST said.  The hub measures a name it did not give, so its LIST
    says those 2 octets too."""
    send(hub.smtp_port)  # the Maildir exists, with the hub's files in it
    dove = Dovecot(hub.dovecot_folder, hub.maildir(ALICE).resolve())
    for data in SAVED.values():
        dove.doveadm_input(data, "save")
    no_newline = {base_name(p.name) for p in hub.message_files(ALICE)
                  if not p.read_bytes().endswith(b"\n")}
    assert len(no_newline) == 1
    ours = hub_pop3(hub, retr=True)
    assert len(ours) == len(messages()) + len(SAVED)
    sizes, uidls, bodies = dovecot_pop3(dove, len(ours))
    # the hub made the Maildir: its UIDLs are the hub's, whatever list
    # Dovecot made since (docs/pop3.rst, "UIDL")
    assert not set(ours) & set(uidls.values())
    by_number = {int(m["uid"]): base for base, m in dovecot_view(dove).items()}
    for n, base in by_number.items():
        size, body = ours[base]
        assert body == bodies[n], (base, body[-40:], bodies[n][-40:])
        assert size == len(body) == sizes[n] + (2 if base in no_newline else 0), base
    hub_log_is_clean(hub.log_text())


def test_dovecot_moves_files_during_a_hub_session(hub):
    """Dovecot knows nothing of the hub's lock: while a hub POP3 session
    holds its snapshot, Dovecot moves every message to ``cur/`` and
    changes flags.  The hub's RETR still finds each message (by its
    unique part), sends it whole, and DELE removes the moved file.  A
    message Dovecot expunged meanwhile is an -ERR (docs/pop3.rst), and
    the session goes on."""
    send(hub.smtp_port)
    dove = Dovecot(hub.dovecot_folder, hub.maildir(ALICE).resolve())
    p = _alice_logged_in(hub)
    try:
        sizes = {int(n): int(s) for n, s in (x.split() for x in p.list()[1])}
        assert all(f.parent.name == "new" for f in hub.message_files(ALICE))
        dove.doveadm("flags", "add", "\\Flagged", "all")
        assert all(f.name.endswith(":2,F") for f in hub.message_files(ALICE))
        dove.doveadm("expunge", "mailbox", "INBOX", "uid", str(len(sizes)))
        for n in sorted(sizes)[:-1]:
            _, lines, _ = p.retr(n)
            assert sum(len(line) + 2 for line in lines) == sizes[n], n
        with pytest.raises(poplib.error_proto,
                           match=r"^b'-ERR Message was removed by another program'$"):
            p.retr(len(sizes))
        p.dele(1)
    finally:
        p.quit()
    left = hub.message_files(ALICE)
    assert len(left) == len(sizes) - 2
    assert all(f.name.endswith(":2,FS") for f in left), [f.name for f in left]
    assert len(dovecot_view(dove)) == len(sizes) - 2
    hub_log_is_clean(hub.log_text())


def test_a_maildir_moved_from_dovecot_keeps_its_uidls_and_sizes(hub):
    """docs/pop3.rst, "UIDL": a Maildir Dovecot delivered into and served,
    moved under the hub's ``state_dir``: the hub's POP3 lists the same
    messages with the UIDLs Dovecot's POP3 gave (a client that leaves
    mail on the server fetches none again) and sends the same octets;
    a message the hub delivers after the move gets a UIDL of its own."""
    old = hub.dovecot_folder.parent / "old" / "Maildir"
    old.mkdir(parents=True)
    old.parent.chmod(0o711)
    dove = Dovecot(hub.dovecot_folder, old)
    for data in SAVED.values():
        dove.doveadm_input(data, "save")
    dove.doveadm("flags", "add", "\\Seen", "uid", "1:2")
    sizes, uidls, bodies = dovecot_pop3(dove, len(SAVED))
    no_newline = {n for n, body in enumerate(SAVED.values(), 1) if not body.endswith(b"\n")}
    target = hub.maildir(ALICE)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(old, target)
    ours = hub_pop3(hub, retr=True)
    assert sorted(ours) == sorted(uidls.values())
    for n, uid in uidls.items():
        size, body = ours[uid]
        assert body == bodies[n], (n, body[-40:], bodies[n][-40:])
        assert size == len(body) == sizes[n] + (2 if n in no_newline else 0), n
    send(hub.smtp_port)
    again = hub_pop3(hub)
    assert len(again) == len(SAVED) + len(messages())
    assert {u: s for u, (s, _) in again.items() if u in ours} == {
        u: s for u, (s, _) in ours.items()}
    hub_log_is_clean(hub.log_text())
