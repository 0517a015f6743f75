"""End to end: a message sent with smtplib comes back through poplib
byte for byte, apart from the trace headers the hub adds in front."""

from __future__ import annotations

import poplib
import re
import smtplib

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
TRACE = re.compile(rb"^(Received|Return-Path|Delivered-To|X-Original-To):", re.I)

ORIGINAL = (
    b"From: Sender <sender@example.net>\r\n"
    b"To: Alice <alice@example.org>\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e.1@example.net>\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"a line with trailing spaces   \r\n"
    b"\r\n"
    + b"".join(b"body line %04d of the end-to-end message\r\n" % i for i in range(3000))
    + b"the end\r\n"
)


def split_trace(data: bytes) -> tuple[list[bytes], bytes]:
    """Leading trace header fields (with their folded lines) and the rest."""
    lines = data.split(b"\r\n")
    i = 0
    fields: list[bytes] = []
    while i < len(lines) and TRACE.match(lines[i]):
        field = lines[i]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field += b"\r\n" + lines[i]
            i += 1
        fields.append(field)
    return fields, b"\r\n".join(lines[i:])


def test_smtp_to_pop3_byte_exact(hub):
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
        s.ehlo("client.example.net")
        refused = s.sendmail("sender@example.net", [ALICE], ORIGINAL)
        assert refused == {}
    # the 250 came after the message was durable: it is there now, no waiting
    assert len(hub.message_files(ALICE)) == 1
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=30)
    p.user(ALICE)
    p.pass_(ALICE_PW)
    count, total = p.stat()
    assert count == 1
    _, lines, _octets = p.retr(1)
    p.quit()
    retrieved = b"".join(line + b"\r\n" for line in lines)
    assert len(retrieved) == total  # STAT counts exactly what RETR sends
    fields, rest = split_trace(retrieved)
    assert fields, "the hub adds at least a Received: header"
    assert any(f.lower().startswith(b"received:") for f in fields)
    assert rest == ORIGINAL
