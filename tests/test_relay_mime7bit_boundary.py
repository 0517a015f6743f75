"""The relay's 7-bit copy finds a multipart's parts as mail readers do.

The copy keeps every delimiter line as stored and re-encodes the parts
between them: where the converter finds other parts than a reader
(Python's ``email`` package, ``policy.default``) would, a reader of the
copy sees other content than the original's."""

from __future__ import annotations

import io
from email import policy
from email.parser import BytesParser

import pytest

from txmailhub.relay.mime7bit import Unconvertible, to_7bit


def convert(data: bytes) -> bytes:
    out = io.BytesIO()
    to_7bit(io.BytesIO(data), out)
    return out.getvalue()


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


# --- a multipart with no part ----------------------------------------------------------

_OUTER = b"From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n"


@pytest.mark.parametrize(("src", "inner"), [
    # no delimiter at all
    (b"Content-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n", False),
    # a close delimiter first
    (b"Content-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n--b--\nepi\n", False),
    # an inner multipart cut short by the outer one's delimiter
    (_OUTER + b"--o\nContent-Type: multipart/mixed; boundary=b\n\nGr\xc3\xbc\xc3\x9fe\n"
     b"--o\nContent-Type: text/plain\n\nx\n--o--\n", True),
    # one that goes on past the limit of a line
    (b"Content-Type: multipart/mixed; boundary=b\n\n" + b"x" * 1200 + b"\n--b--\n", False),
], ids=["none", "close", "inner", "long"])
def test_a_multipart_with_no_part_has_no_7bit_form_when_it_is_not_7bit(src, inner):
    # the email package shows what precedes no delimiter as the
    # multipart's body (a preamble before parts is shown to nobody): the
    # copy's "?" for its 8-bit octets, a long line broken, would change it
    msg = parse(src)
    shown = (msg.get_payload(0) if inner else msg).get_payload(decode=True)
    assert "Grüße".encode() in shown or b"x" * 1200 in shown
    with pytest.raises(Unconvertible, match="a multipart without parts"):
        convert(src)
    # 7-bit and short: it goes as it came
    src = src.replace("ü".encode(), b"u").replace("ß".encode(), b"ss").replace(
        b"x" * 1200, b"x" * 10)
    out = convert(src)
    assert out == src
