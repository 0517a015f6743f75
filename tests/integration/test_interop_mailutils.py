"""GNU Mailutils (GnuTLS, GNU SASL) against the hub: ``movemail`` moves a
mailbox from ``pop://`` (which takes STLS whenever CAPA offers it) and
``pops://``, with USER/PASS or APOP, deleting or keeping the messages
(``--uidl``: each fetched once), and ``mail`` submits over STARTTLS and
implicit TLS with AUTH (its ``sendmail`` variable set to an ``smtp://``
or ``smtps://`` mailer URL).

Mailutils 3.15 does not check the server's certificate at all (it has no
setting for a trust file on the client side), so the tests give it none.

``mail`` rewrites what it sends: its own ``Date`` instead of the
message's, ``To`` with the display name quoted, a ``User-Agent`` field at
the end of the header section.  So the tests compare the body octet for
octet, the other header fields line for line, and the stored size with
the ``SIZE=`` ``mail`` declared for what it sent (RFC 1870).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    SENDER,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
    send_smtplib,
    strip_trace,
    trace_of,
)


def mailutils_program(name: str) -> str | None:
    """Debian names the Mailutils programs ``NAME.mailutils`` (``movemail``
    and ``mail`` are alternatives other packages provide too)."""
    for candidate in (f"{name}.mailutils", name):
        path = shutil.which(candidate)
        if path is not None:
            r = subprocess.run([path, "--version"], capture_output=True, timeout=60)
            if b"GNU Mailutils" in r.stdout:
                return path
    return None


MOVEMAIL = mailutils_program("movemail")
MAIL = mailutils_program("mail")
pytestmark = pytest.mark.skipif(MOVEMAIL is None or MAIL is None,
                                reason="GNU Mailutils is not installed")


def unprefixed(output: bytes) -> bytes:
    """Mailutils output without the program name in front of each line."""
    return re.sub(rb"(?m)^[\w.-]+: ", b"", output)


def pop_url(scheme: str, user: str, password: str, port: int, *, apop: bool = False,
            notls: bool = False) -> str:
    auth = ";auth=+APOP" if apop else ""
    tail = ";notls" if notls else ""
    return f"{scheme}://{user.replace('@', '%40')}:{password}{auth}@127.0.0.1:{port}{tail}"


def movemail(source: str, dest: Path, *options: str, kind: str = "maildir") -> tuple[int, str]:
    """Run movemail into the ``kind`` mailbox ``dest``; its exit status and
    POP3 transcript (``C:``/``S:`` lines on stderr).  Its home (where it
    looks for a ticket file) is a folder of the test's own."""
    home = dest.parent / "home"
    home.mkdir(exist_ok=True)
    r = subprocess.run([MOVEMAIL, "--no-config", "--debug-level=mailbox.prot", *options,
                        source, f"{kind}://{dest}"], capture_output=True, timeout=60,
                       env=dict(os.environ, HOME=str(home)))
    return r.returncode, unprefixed(r.stdout + r.stderr).decode(errors="replace")


def maildir_messages(folder: Path) -> list[bytes]:
    """The messages movemail stored in a Maildir, back in CRLF form."""
    new = folder / "new"
    if not new.is_dir():
        return []
    return [p.read_bytes().replace(b"\n", b"\r\n") for p in sorted(new.iterdir())]


_MU_FIELDS = re.compile(rb"^(?:X-UIDL|X-IMAPbase|X-UID): [^\n]*\n", re.M)


def mbox_messages(path: Path) -> list[bytes]:
    """The messages of a Mailutils mbox, in CRLF form, without the ``From``
    separator line and the blank line after each message, and without the
    fields Mailutils adds to the header section for its own bookkeeping
    (``X-UIDL``, the source's UIDL; ``X-IMAPbase``, ``X-UID``).  The corpus
    has no body line starting with ``From ``, which mbox would quote."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data.endswith(b"\n\n"), data[-100:]
    out = []
    # each message ends with its line end and an empty line
    for chunk in re.split(rb"(?:\A|\n)From [^\n]*\n", data[:-1])[1:]:
        head, sep, body = chunk.partition(b"\n\n")
        out.append((_MU_FIELDS.sub(b"", head + b"\n")[:-1] + sep + body)
                   .replace(b"\n", b"\r\n"))
    return out


def assert_same(got: list[bytes], sent: dict[str, bytes]) -> None:
    """``got`` holds each message of ``sent`` once, exactly as sent after
    the hub's trace fields."""
    assert sorted(strip_trace(m) for m in got) == sorted(sent.values())
    for m in got:
        trace = trace_of(m)
        assert trace.startswith(f"Return-Path: <{SENDER}>\r\n".encode()), trace
        assert b"by mail.example.org (txmailhub) with ESMTP\r\n" in trace, trace


@pytest.mark.parametrize("scheme", ["pop", "pops"])
def test_movemail_moves_over_tls(make_hub, tmp_path: Path, scheme: str):
    """``pop://`` goes over STLS, ``pops://`` over implicit TLS; without
    ``-p`` movemail deletes what it moved.

    The 1 MiB message goes in a session of its own: Mailutils 3.15 drops
    a few KiB from the middle of such a message when it comes after
    another one in the same session, into a Maildir or an mbox alike,
    while the RETR reply on the wire holds all of it (LIST's size, and
    the same octets as stored, less the dot-stuffing: RFC 1939 3)."""
    hub = make_hub(tls=True)
    sent = corpus(scheme)  # dot-stuffed lines, a 998-octet line, 1 MiB
    big = {"big": sent.pop("big")}
    send_smtplib(hub.smtp_port, sent, [ALICE])
    port = hub.pop3_port if scheme == "pop" else hub.pop3s_port
    source = pop_url(scheme, ALICE, ALICE_PW, port)
    dest = tmp_path / "md"
    code, out = movemail(source, dest)
    assert code == 0, out[-3000:]
    if scheme == "pop":
        assert "C: STLS\nS: +OK Begin TLS negotiation\nC: USER " in out, out
    else:
        assert "STLS" not in out and "C: USER alice@example.org\n" in out, out
    for n in range(1, 5):
        assert f"C: RETR {n}\n" in out and f"C: DELE {n}\n" in out, out[-3000:]
    assert "S: +OK Bye (0 messages left)" in out, out[-3000:]
    assert_same(maildir_messages(dest), sent)
    assert hub.message_files(ALICE) == []

    shutil.rmtree(dest)
    send_smtplib(hub.smtp_port, big, [ALICE])
    code, out = movemail(source, dest)
    assert code == 0 and "C: RETR 1\n" in out and "C: DELE 1\n" in out, out[-3000:]
    assert_same(maildir_messages(dest), big)
    assert hub.message_files(ALICE) == []

    # the mailbox is empty now: movemail logs in, finds nothing, moves nothing
    shutil.rmtree(dest)
    code, out = movemail(source, dest)
    assert code == 0 and "S: +OK 0 0\n" in out and "RETR" not in out, out
    assert maildir_messages(dest) == []
    hub_log_is_clean(hub.log_text())


def test_movemail_uidl_moves_each_message_once(make_hub, tmp_path: Path):
    """``-p -u``: the messages stay on the server, and movemail skips those
    whose UIDL the destination mbox already records (X-UIDL)."""
    hub = make_hub(tls=True)
    first = corpus("keep1", big=False)
    send_smtplib(hub.smtp_port, first, [ALICE])
    source = pop_url("pops", ALICE, ALICE_PW, hub.pop3s_port)
    dest = tmp_path / "mbox"
    code, out = movemail(source, dest, "-p", "-u", kind="mbox")
    assert code == 0, out[-3000:]
    assert out.count("C: RETR ") == len(first) and "DELE" not in out, out[-3000:]
    assert_same(mbox_messages(dest), first)
    assert len(hub.message_files(ALICE)) == len(first)

    code, out = movemail(source, dest, "-p", "-u", kind="mbox")
    assert code == 0 and "C: UIDL 1\n" in out and "RETR" not in out, out[-3000:]
    assert len(mbox_messages(dest)) == len(first)

    later = {"late": corpus("keep2", big=False)["dots"]}
    send_smtplib(hub.smtp_port, later, [ALICE])
    code, out = movemail(source, dest, "-p", "-u", kind="mbox")
    assert code == 0 and out.count("C: RETR ") == 1, out[-3000:]
    assert_same(mbox_messages(dest), {**first, **later})
    assert len(hub.message_files(ALICE)) == len(first) + 1
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("user,password,apop,login", [
    (ALICE, ALICE_PW, True, "C: APOP alice@example.org "),
    (BOB, BOB_PW, False, "C: USER bob@example.org\n"),
])
def test_movemail_without_tls_on_loopback(make_hub, tmp_path: Path, user: str, password: str,
                                          apop: bool, login: str):
    """``;notls``: USER/PASS without TLS is allowed from loopback
    (docs/pop3.rst), and APOP (``;auth=+APOP``) for a user added with it."""
    hub = make_hub(tls=True)
    sent = {"dots": corpus("notls", big=False)["dots"]}
    send_smtplib(hub.smtp_port, sent, [user])
    dest = tmp_path / "md"
    code, out = movemail(pop_url("pop", user, password, hub.pop3_port, apop=apop, notls=True),
                         dest)
    assert code == 0, out
    assert login in out and "STLS\n" not in out.replace("S: STLS\n", ""), out
    assert_same(maildir_messages(dest), sent)
    assert hub.message_files(user) == []
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("user,password,apop", [(ALICE, "wrong", False), (BOB, BOB_PW, True)])
def test_movemail_refused_login(make_hub, tmp_path: Path, user: str, password: str, apop: bool):
    """A wrong password, and APOP for a user added without it: ``-ERR
    [AUTH]`` (RFC 3206 4), movemail says so, exits 1 and moves nothing."""
    hub = make_hub(tls=True)
    send_smtplib(hub.smtp_port, {"ascii": corpus("refused", big=False)["ascii"]}, [user])
    dest = tmp_path / "md"
    code, out = movemail(pop_url("pop", user, password, hub.pop3_port, apop=apop),
                         dest)
    assert code == 1, out
    assert "S: -ERR [AUTH] Authentication failed\n" in out, out
    assert "': cannot open: Authentication failed" in out, out
    assert maildir_messages(dest) == [] and len(hub.message_files(user)) == 1
    hub_log_is_clean(hub.log_text())


def mail(hub, home: Path, url: str, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` with ``mail -t`` (recipients from its header) through
    the mailer ``url``; exit status and the SMTP transcript."""
    home.mkdir(exist_ok=True)
    r = subprocess.run(
        [MAIL, "--no-config", "-n", "-t", "-r", SENDER, "-E", f"set sendmail={url}",
         "--debug-level=mailer.prot"],
        input=data.replace(b"\r\n", b"\n"), capture_output=True, timeout=60,
        env=dict(os.environ, HOME=str(home), MAIL=str(home / "spool")),
    )
    return r.returncode, unprefixed(r.stdout + r.stderr)


@pytest.mark.parametrize("way", ["submission", "smtps"])
def test_mail_submits_with_auth_over_tls(make_hub, tmp_path: Path, way: str):
    hub = make_hub(tls=True)
    if way == "submission":
        url = f"smtp://{SENDER.replace('@', '%40')}:carol-secret@127.0.0.1:{hub.submission_port}"
    else:
        url = f"smtps://{SENDER.replace('@', '%40')}:carol-secret@127.0.0.1:{hub.smtps_port}"
    sent = corpus(way)
    sizes = {}
    for name, data in sent.items():
        code, out = mail(hub, tmp_path / "home", url, data)
        text = out.decode(errors="replace")
        assert code == 0, text[-3000:]
        assert ("C: STARTTLS\n" in text) == (way == "submission"), text[:3000]
        for line in ("C: AUTH LOGIN\n", "S: 235 2.7.0 ", f"C: RCPT TO:<{ALICE}>\n",
                     "S: 250 2.0.0 "):
            assert line in text, (line, text[-3000:])
        m = re.search(rf"C: MAIL FROM:<{re.escape(SENDER)}> SIZE=(\d+)\n", text)
        assert m, text[:3000]
        sizes[name] = int(m.group(1))
    got = {}
    for message in fetch_poplib(hub.pop3_port, ALICE, ALICE_PW):
        assert b" with ESMTPSA (TLSv1.3 " in trace_of(message), message[:600]
        assert trace_of(message).startswith(f"Return-Path: <{SENDER}>\r\n".encode())
        stored = strip_trace(message)
        name = re.search(rb"^Subject: interop (\S+) ", stored, re.M).group(1).decode()
        got[name] = stored
    assert sorted(got) == sorted(sent)
    for name, data in sent.items():
        head, _, body = data.partition(b"\r\n\r\n")
        stored_head, _, stored_body = got[name].partition(b"\r\n\r\n")
        assert stored_body == body, name
        # what mail sent, nothing added: its own Date, and the Message-ID
        # the message has, so the hub adds neither (RFC 6409 8.2, 8.3)
        assert len(got[name]) == sizes[name], name
        fields = stored_head.split(b"\r\n")
        assert fields[-1].startswith(b"User-Agent: mail (GNU Mailutils "), fields
        assert [f.split(b":")[0] for f in fields].count(b"Date") == 1, fields
        assert [f.split(b":")[0] for f in fields].count(b"Message-ID") == 1, fields
        for field in head.split(b"\r\n"):
            if not field.startswith((b"To:", b"Date:")):
                assert field in fields, (name, field, fields)
        assert b'To: "Alice" <alice@example.org>' in fields, fields
    hub_log_is_clean(hub.log_text())


def test_mail_refused_login(make_hub, tmp_path: Path):
    """A wrong password gets ``535 5.7.8`` (RFC 4954 6); mail says it
    cannot send, exits 1, keeps the message in dead.letter, and the hub
    delivers nothing."""
    hub = make_hub(tls=True)
    url = f"smtp://{SENDER.replace('@', '%40')}:wrong@127.0.0.1:{hub.submission_port}"
    data = corpus("refused", big=False)["ascii"]
    code, out = mail(hub, tmp_path / "home", url, data)
    text = out.decode(errors="replace")
    assert code == 1, text
    assert "S: 535 5.7.8 Authentication credentials invalid\n" in text, text
    assert "cannot send message: Operation rejected by remote party" in text, text
    assert "MAIL FROM" not in text, text
    dead = (tmp_path / "home" / "dead.letter").read_bytes()
    assert data.partition(b"\r\n\r\n")[2].replace(b"\r\n", b"\n") in dead
    assert hub.messages(ALICE) == []
    hub_log_is_clean(hub.log_text())


def test_mail_with_an_unknown_recipient(make_hub, tmp_path: Path):
    """``550 5.1.1`` for one recipient of three: mail sends the message to
    the other two and exits 0 without a word about the third, whose
    refusal only its debug output shows."""
    hub = make_hub(tls=True)
    url = f"smtp://{SENDER.replace('@', '%40')}:carol-secret@127.0.0.1:{hub.submission_port}"
    data = corpus("partial", big=False)["dots"].replace(
        b"To: Alice <alice@example.org>\r\n",
        b"To: Alice <alice@example.org>, nobody@example.org, bob@example.org\r\n")
    code, out = mail(hub, tmp_path / "home", url, data)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert "C: RCPT TO:<nobody@example.org>\nS: 550 5.1.1 " in text, text
    assert "S: 250 2.0.0 " in text, text
    body = data.partition(b"\r\n\r\n")[2]
    for user in (ALICE, BOB):
        [stored] = hub.messages(user)
        assert stored.replace(b"\n", b"\r\n").endswith(b"\r\n\r\n" + body), stored[-300:]
    assert not (tmp_path / "home" / "dead.letter").exists()
    hub_log_is_clean(hub.log_text())
