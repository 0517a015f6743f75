"""Shared pieces of the third-party client tests (curl, msmtp, aiosmtplib,
openssl s_client, Perl's Net::SMTP/Net::POP3).

Each test sends the same corpus of messages with one client and reads it
back over POP3 with another, then compares octet for octet: the only
changes allowed are the trace fields the hub puts in front (Return-Path,
Received; RFC 5321 4.4) and dot-stuffing on the wire, which each client
undoes itself (RFC 5321 4.5.2, RFC 1939 3).  Every message carries Date
and Message-ID, so submission (RFC 6409 8) has nothing to add.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import ssl
from pathlib import Path

SENDER = "carol@example.net"
ALICE, ALICE_PW = "alice@example.org", "alice-secret"
BOB, BOB_PW = "bob@example.org", "bob-secret"

_HEAD = (
    "From: Carol <carol@example.net>\r\n"
    "To: Alice <alice@example.org>\r\n"
    "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
    "Message-ID: <{name}.{tag}@client.test>\r\n"
    "Subject: interop {name} {tag}\r\n"
)


def _message(name: str, tag: str, body: bytes, extra: str = "") -> bytes:
    return (_HEAD.format(name=name, tag=tag) + extra + "\r\n").encode() + body


def corpus(tag: str, *, big: bool = True) -> dict[str, bytes]:
    """The messages every client sends, CRLF line ends, keyed by name.

    ``tag`` goes into Subject and Message-ID so that the copies different
    clients left in one mailbox can be told apart."""
    msgs = {
        "ascii": _message("ascii", tag, b"Hello Alice,\r\n\r\njust plain ASCII.\r\n"),
        "8bit": _message(
            "8bit", tag,
            "Grüße, ¡olé! € 日本\r\n".encode() + b"Latin-1 octets: \xe9\xe8\r\n",
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n",
        ),
        "dots": _message(
            "dots", tag,
            b".\r\n..\r\n...\r\n.leading dot\r\n..two dots\r\n. space\r\n"
            b"middle . dot\r\n\r\n.\r\n"),
        # RFC 5321 4.5.3.1.6: 998 octets of text is the longest line; the
        # second one starts with a dot, so it is 999 on the wire.
        "long": _message("long", tag, b"x" * 998 + b"\r\n." + b"y" * 997 + b"\r\nend\r\n"),
    }
    if big:
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        body = b"".join(
            (b"." if i % 97 == 0 else b"") + line for i in range((1 << 20) // len(line) + 64)
        )
        msgs["big"] = _message("big", tag, body)
        assert len(msgs["big"]) > 1 << 20
    return msgs


_TRACE = re.compile(rb"\A(?:(?:Return-Path|Received):[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+")


def strip_trace(message: bytes) -> bytes:
    """``message`` (CRLF) without the trace fields in front of it."""
    return _TRACE.sub(b"", message, count=1)


def trace_of(message: bytes) -> bytes:
    """Only the trace fields in front of ``message``."""
    m = _TRACE.match(message)
    return m.group(0) if m else b""


def subject_of(message: bytes) -> str:
    m = re.search(rb"^Subject: interop (\S+ \S+)\r\n", message, re.M)
    assert m, message[:300]
    return m.group(1).decode()


def by_subject(messages: list[bytes]) -> dict[str, bytes]:
    """``{"<name> <tag>": message}`` for messages of the corpus."""
    out = {subject_of(m): m for m in messages}
    assert len(out) == len(messages), "two messages with one subject"
    return out


def assert_same(sent: dict[str, bytes], tag: str, retrieved: list[bytes]) -> None:
    """``retrieved`` (CRLF, unstuffed) holds each message of ``sent`` exactly
    once, equal to it after the trace fields."""
    got = {k: v for k, v in by_subject(retrieved).items() if k.endswith(" " + tag)}
    assert sorted(got) == sorted(f"{n} {tag}" for n in sent)
    for name, data in sent.items():
        message = got[f"{name} {tag}"]
        assert message.startswith(b"Return-Path: <"), message[:200]
        assert b"\r\nReceived: from " in trace_of(message), message[:400]
        body = strip_trace(message)
        assert body == data, (name, _first_difference(body, data))


def _first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at {i} of {len(a)}/{len(b)}: {a[i - 20:i + 40]!r} != {b[i - 20:i + 40]!r}"


def fetch_poplib(port: int, user: str, password: str, *, delete: bool = False,
                 utf8: bool = False) -> list[bytes]:
    """Every message of the mailbox, read with poplib (which undoes the
    dot-stuffing) and joined back with CRLF.  ``utf8``: issue UTF8 first
    (RFC 6856), which a message with UTF-8 header fields needs."""
    p = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        if utf8:
            p.utf8()
        p.user(user)
        p.pass_(password)
        out = []
        for i in range(1, len(p.list()[1]) + 1):
            _resp, lines, _octets = p.retr(i)
            out.append(b"".join(line + b"\r\n" for line in lines))
            if delete:
                p.dele(i)
        return out
    finally:
        p.quit()


def send_smtplib(port: int, messages: dict[str, bytes], recipients: list[str]) -> None:
    """Deliver ``messages`` over the MX port with smtplib (no AUTH needed)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        for data in messages.values():
            assert s.sendmail(SENDER, recipients, data, mail_options=["BODY=8BITMIME"]) == {}


def tls_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def hub_log_is_clean(log: str) -> None:
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


# The Received "with" word each listener's way of sending gets (RFC 3848),
# keyed as the interop tests name the ways
WITH_WORDS = {
    "mx": b" with ESMTP\r\n",
    "starttls": b" with ESMTPS (TLSv1.3 ",
    "submission": b" with ESMTPSA (TLSv1.3 ",
    "smtps": b" with ESMTPSA (TLSv1.3 ",
}


def assert_both_got(hub, sent: dict[str, dict[str, bytes]], withs: dict[str, bytes]) -> None:
    """Alice and Bob each got every message of ``sent`` (by the way it was
    sent), byte for byte but the trace fields; each way's Received field
    has its ``with`` word from ``withs``; the hub logged no error."""
    for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW)):
        got = fetch_poplib(hub.pop3_port, user, pw)
        for way, msgs in sent.items():
            assert_same(msgs, way, got)
        protocols = {s.split()[1]: m for s, m in by_subject(got).items()}
        for way, word in withs.items():
            assert word in protocols[way], (way, word)
    hub_log_is_clean(hub.log_text())
