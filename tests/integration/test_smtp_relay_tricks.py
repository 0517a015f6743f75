"""Never an open relay: the classic tricks, refused with nothing queued or stored."""

from __future__ import annotations

import smtplib

import pytest
from conftest import DEFAULT_USERS

TRICKS = [
    "user%remote.test@example.org",
    '"user@remote.test"@example.org',
    "user@remote.test@example.org",
    "@example.org:user@remote.test",
    "@example.org,@example.net:user@remote.test",
    "remote.test!user@example.org",
    "user@[127.0.0.1]",
    "user@[IPv6:::1]",
    "user@remote.test.",
    "USER@REMOTE.TEST",
    "user@Example.org.remote.test",
    "postmaster@remote.test",
    "alice@example.org@remote.test",
]


@pytest.fixture
def closed_hub(make_hub):
    """Loopback is not a relay network here, so relaying needs AUTH."""
    return make_hub(sections={"smtp": {"relay_networks": [], "max_errors": 100}})


def queued(hub) -> str:
    r = hub.mailhub("queue", "list")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def stored_mailboxes(hub) -> list[str]:
    root = hub.state_dir / "mail"
    return sorted(
        f"{d.parent.name}/{d.name}" for d in root.glob("*/*")
        if any((d / sub).is_dir() and any((d / sub).iterdir()) for sub in ("new", "cur"))
    ) if root.is_dir() else []


def test_relay_tricks_refused(closed_hub):
    hub = closed_hub
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("c.test")
        for trick in TRICKS:
            assert s.mail("spammer@remote.test")[0] == 250
            code, text = s.docmd(f"RCPT TO:<{trick}>")
            assert code in (550, 501, 553), (trick, code, text)
            code, _ = s.docmd("DATA")
            assert code in (503, 554), trick
            s.rset()
        # The same without brackets (the lenient form) and through VRFY.
        s.mail("spammer@remote.test")
        assert s.docmd("RCPT TO: user@remote.test")[0] == 550
        s.rset()
    assert queued(hub) == ""
    assert stored_mailboxes(hub) == []


def test_relay_after_auth_only(closed_hub):
    hub = closed_hub
    with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=10) as s:
        s.ehlo("c.test")
        assert s.mail("alice@example.org")[0] == 530
        s.rset()
        for trick in TRICKS[:3]:
            assert s.docmd(f"RCPT TO:<{trick}>")[0] == 503  # no MAIL accepted
    assert queued(hub) == ""
    # and after a real AUTH, the same port relays (loopback may AUTH in clear)
    with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=10) as s:
        s.login("alice@example.org", DEFAULT_USERS["alice@example.org"])
        assert s.sendmail("alice@example.org", ["friend@remote.test"],
                          b"Subject: out\r\n\r\nrelayed\r\n") == {}
    assert "friend@remote.test" in queued(hub)


def test_local_variants_still_delivered(closed_hub):
    hub = closed_hub
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        for rcpt in ("ALICE@EXAMPLE.ORG", "alice@example.org.", '"alice"@example.org',
                     "Postmaster"):
            s.sendmail("x@remote.test", [rcpt], b"Subject: v\r\n\r\nvariant\r\n")
        s.mail("x@remote.test")
        assert s.docmd("RCPT TO:<@relay.test:alice@example.org>")[0] == 250
        s.data(b"Subject: v\r\n\r\nsource route\r\n")
    assert len(hub.messages("alice@example.org")) == 4
    assert len(hub.messages("postmaster@example.org")) == 1
    assert queued(hub) == ""


def test_smtputf8_message(hub):
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("c.test")
        assert s.has_extn("smtputf8")
        s.sendmail("jörg@bücher.test", ["alice@example.org"],
                   "Subject: grüße\r\n\r\nÜnïcödé\r\n".encode(),
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        # not without SMTPUTF8: 550 for a sender, 553 for a recipient (RFC 6531 3.5)
        assert s.mail("jörg@bücher.test")[0] == 550
        s.rset()
        assert s.mail("joerg@example.net")[0] == 250
        s.send("RCPT TO:<jörg@bücher.test>\r\n".encode())  # smtplib sends only ASCII here
        assert s.getreply()[0] == 553
    (m,) = hub.messages("alice@example.org")
    assert "Return-Path: <jörg@bücher.test>".encode() in m
    assert m.endswith("\nÜnïcödé\n".encode())
