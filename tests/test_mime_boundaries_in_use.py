"""The boundaries the common mail programs write -- Thunderbird, Outlook
and Exchange, Gmail, Apple Mail, mutt, JavaMail, Lotus Notes, Python's
``email`` package -- are followed by the relay's 7-bit copy and by the
POP3 downgrade alike: a message with 8-bit parts under such a boundary
is converted part by part (never ``Unconvertible``: a bounce), and one
with UTF-8 part header fields has a downgraded form (never refused to a
client without UTF8), with the parts Python's ``email`` package finds."""

from __future__ import annotations

import io
from email import policy
from email.parser import BytesParser

import pytest

from txmailhub.downgrade import PartHeaders, downgrade_header, header_end
from txmailhub.relay.mime7bit import to_7bit

# (Content-Type parameters as each writes them, folded as they fold them)
BOUNDARIES = {
    "thunderbird": ('multipart/mixed;\n boundary="------------0A1B2C3D4E5F6G7H8I9J0K1L"',
                    "------------0A1B2C3D4E5F6G7H8I9J0K1L"),
    "outlook": ('multipart/alternative;\n\tboundary="----=_NextPart_000_0001_01D12345.6789ABCD"',
                "----=_NextPart_000_0001_01D12345.6789ABCD"),
    "exchange": ('multipart/mixed;\n\tboundary="_004_DB7PR01MB1234EURP_"',
                 "_004_DB7PR01MB1234EURP_"),
    "gmail": ('multipart/alternative; boundary="000000000000a1b2c3d4e5f6"',
              "000000000000a1b2c3d4e5f6"),
    "gmail-token": ("multipart/alternative; boundary=000000000000a1b2c3d4e5f6",
                    "000000000000a1b2c3d4e5f6"),
    "apple-mail": ('multipart/alternative;\n\tboundary="Apple-Mail=_0A1B2C3D-4E5F-6789-ABCD-EF01"',
                   "Apple-Mail=_0A1B2C3D-4E5F-6789-ABCD-EF01"),
    "apple-mail-old": ("multipart/mixed; boundary=Apple-Mail-2--123456789",
                       "Apple-Mail-2--123456789"),
    "javamail": ('multipart/mixed; \n\tboundary="----=_Part_123_456.789"',
                 "----=_Part_123_456.789"),
    "mutt": ('multipart/signed; micalg=pgp-sha256;\n\tprotocol="application/pgp-signature";'
             ' boundary="k+w/mQv8wyuph6w0"', "k+w/mQv8wyuph6w0"),
    "roundcube": ('multipart/mixed;\n boundary="=_abc"', "=_abc"),
    "lotus-notes": ('multipart/alternative; boundary="=_alternative 0036A2B8C1257F40_="',
                    "=_alternative 0036A2B8C1257F40_="),
    "python-email": ('multipart/mixed; boundary="===============1234567890123456789=="',
                     "===============1234567890123456789=="),
    "evolution": ('multipart/mixed; boundary="=-ABCdef+/1234=="', "=-ABCdef+/1234=="),
}


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


def message(content_type: str, boundary: str, inner: str, nl: str) -> bytes:
    text = (f"From: Jörg <j@example.net>\nTo: c@example.org\nSubject: Grüße\n"
            f"MIME-Version: 1.0\nContent-Type: {content_type}\n\n"
            f"--{boundary}\nContent-Type: multipart/alternative; boundary=\"{inner}\"\n\n"
            f"--{inner}\nContent-Type: text/plain; charset=UTF-8; format=flowed\n"
            f"Content-Transfer-Encoding: 8bit\nContent-Description: Grüße\n\nGrüße aus Köln\n"
            f"--{inner}\nContent-Type: text/html; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n<p>Grüße</p>\n--{inner}--\n\n"
            f"--{boundary}\nContent-Type: message/rfc822\n"
            f"Content-Disposition: attachment; filename=\"Grüße.eml\"\n\n"
            f"From: x@example.net\nSubject: Grüße\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\nHallo Grüße\n"
            f"--{boundary}--\n")
    return text.replace("\n", nl).encode()


def tree(msg) -> list:
    return [(p.get_content_type(), p.get_filename(), str(p.get("content-description")))
            for p in msg.walk()]


@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("who", sorted(BOUNDARIES))
def test_the_7bit_copy_converts_the_parts_under_a_boundary_in_common_use(who, nl):
    content_type, boundary = BOUNDARIES[who]
    data = message(content_type, boundary, "in" + boundary, nl)
    out = io.BytesIO()
    to_7bit(io.BytesIO(data), out)
    copy = out.getvalue()
    body = copy.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
    assert body.isascii()
    original, converted = parse(data), parse(copy)
    assert tree(converted) == tree(original)
    assert len(tree(converted)) == 6
    texts = [p.get_content() for p in converted.walk() if p.get_content_maintype() == "text"]
    assert [t.strip() for t in texts] == ["Grüße aus Köln", "<p>Grüße</p>", "Hallo Grüße"]


@pytest.mark.parametrize("nl", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("who", sorted(BOUNDARIES))
def test_pop3_downgrades_the_parts_under_a_boundary_in_common_use(who, nl):
    content_type, boundary = BOUNDARIES[who]
    data = message(content_type, boundary, "in" + boundary, nl)
    end = header_end(data)
    assert PartHeaders.has_parts(data[:end])
    parts = PartHeaders(data[:end])
    copy = downgrade_header(data[:end]) + parts.feed(data[end:]) + parts.finish()
    headers = [line for line in copy.replace(b"\r\n", b"\n").split(b"\n")
               if line[:1].isalpha() and b":" in line]
    assert all(line.isascii() for line in headers
               if not line.startswith((b"Gr", b"Hallo", b"<p>")))
    assert tree(parse(copy)) == tree(parse(data))
    assert parse(copy).get_payload()[1].get_payload()[0]["subject"] == "Grüße"
