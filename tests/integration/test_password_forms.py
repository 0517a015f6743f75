"""Logins over loopback with a password typed in another Unicode form than
it was set in (RFC 8265 OpaqueString preparation), with smtplib and poplib."""

from __future__ import annotations

import base64
import poplib
import smtplib
import unicodedata

import pytest

# set precomposed (with a no-break space), sent decomposed with a plain one
SET = "cr\u00e8me\u00a0br\u00fbl\u00e9e-\u00e9t\u00e9"
SENT = unicodedata.normalize("NFD", SET).replace("\u00a0", " ")


def auth_plain(s: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """AUTH PLAIN through smtplib's own command path: its ``login()``
    encodes the response as ASCII and cannot send a non-ASCII password."""
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode("utf-8"))
    return s.docmd("AUTH", "PLAIN " + token.decode("ascii"))


def test_smtp_auth_plain_and_pop3_user_pass_take_the_other_form(make_hub):
    assert SENT != SET and SENT.encode() != SET.encode()
    hub = make_hub(users={"alice@example.org": SET, "bob@example.org": "bob-secret"})
    with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=10) as s:
        s.ehlo("c.test")
        assert "PLAIN" in s.esmtp_features["auth"]
        assert auth_plain(s, "alice", SENT + "x")[0] == 535
        assert auth_plain(s, "alice", SENT)[0] == 235
        s.sendmail("alice@example.org", ["bob@example.org"], b"Subject: nfd\r\n\r\nsent\r\n")
    assert len(hub.messages("bob@example.org")) == 1

    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    try:
        p.user("alice")
        p.pass_(SENT)  # poplib sends the password as UTF-8
        assert p.stat() == (0, 0)
    finally:
        p.quit()
    # and as it was set, of course
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    try:
        p.user("alice")
        p.pass_(SET)
    finally:
        p.quit()
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    try:
        p.user("alice")
        with pytest.raises(poplib.error_proto):
            p.pass_(SENT.replace(" ", ""))
    finally:
        p.quit()


def test_smtp_auth_login_and_pop3_auth_plain_take_the_other_form(make_hub):
    hub = make_hub(users={"alice@example.org": SET})
    b64 = base64.b64encode
    with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=10) as s:
        s.ehlo("c.test")
        assert s.docmd("AUTH", "LOGIN " + b64(b"alice").decode())[0] == 334
        assert s.docmd(b64(SENT.encode()).decode())[0] == 235
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    try:
        token = b64(b"\0alice\0" + SENT.encode()).decode()
        assert p._shortcmd("AUTH PLAIN " + token).startswith(b"+OK")
        assert p.stat() == (0, 0)
    finally:
        p.quit()
