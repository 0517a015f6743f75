"""8-bit -> 7-bit conversion (RFC 6152 section 3), checked by parsing back."""

from __future__ import annotations

import io
from email import policy
from email.parser import BytesParser

from txmailhub.relay.mime7bit import convert_file, has_8bit, to_7bit


def convert(data: bytes) -> bytes:
    out = io.BytesIO()
    to_7bit(io.BytesIO(data), out)
    return out.getvalue()


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


def test_plain_8bit_text_becomes_quoted_printable():
    src = ("From: a@example.org\nSubject: hi\nContent-Type: text/plain; charset=utf-8\n"
           "Content-Transfer-Encoding: 8bit\n\nGrüße aus Köln\n.leading dot\n").encode()
    out = convert(src)
    assert out.isascii()
    msg = parse(out)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content() == "Grüße aus Köln\n.leading dot\n"
    assert b"\r" not in out


def test_binary_attachment_becomes_base64_and_text_part_qp():
    # any octet but CR and LF (DATA cannot carry bare ones: RFC 5321 2.3.8)
    blob = bytes(b for b in range(256) if b not in (10, 13)) * 4
    src = (b"From: a@example.org\nMIME-Version: 1.0\n"
           b"Content-Type: multipart/mixed; boundary=XX\nContent-Transfer-Encoding: 8bit\n\n"
           b"--XX\nContent-Type: text/plain; charset=iso-8859-1\n"
           b"Content-Transfer-Encoding: 8bit\n\ncaf\xe9\n"
           b"--XX\nContent-Type: application/octet-stream\n"
           b"Content-Transfer-Encoding: binary\n\n" + blob
           + b"\n--XX--\n")
    out = convert(src)
    assert out.isascii()
    msg = parse(out)
    assert msg["Content-Transfer-Encoding"] == "7bit"
    text, attachment = list(msg.iter_parts())
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content() == "café"  # the LF before the boundary belongs to it
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_content() == blob


def test_7bit_parts_untouched():
    src = (b"From: a@example.org\nContent-Type: text/plain\n\nplain ascii\n")
    out = convert(src)
    assert out == src


def test_8bit_header_becomes_encoded_word():
    src = "From: a@example.org\nSubject: Grüße\n\nbody\n".encode()
    out = convert(src)
    assert out.isascii()
    assert parse(out)["Subject"] == "Grüße"


def test_already_encoded_parts_kept():
    src = (b"From: a@example.org\nContent-Type: text/plain; charset=utf-8\n"
           b"Content-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe\n")
    assert convert(src) == src


def test_convert_file_and_has_8bit(tmp_path):
    src = tmp_path / "m"
    src.write_bytes("Subject: x\n\nnaïve\n".encode())
    assert has_8bit(str(src))
    dst = tmp_path / "m7"
    size = convert_file(str(src), str(dst))
    assert size == dst.stat().st_size
    assert not has_8bit(str(dst))
    assert parse(dst.read_bytes()).get_content() == "naïve\n"
