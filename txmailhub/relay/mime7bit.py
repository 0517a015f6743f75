"""8-bit -> 7-bit conversion of a message (RFC 6152 section 3).

When a message has 8-bit content and the next hop does not offer
8BITMIME, the relay must send "an ASCII representation" instead.  This
module owns that conversion, done with the stdlib ``email`` package:
every leaf MIME part whose content is not 7-bit is re-encoded --
``quoted-printable`` for text parts, ``base64`` for everything else --
and its Content-Transfer-Encoding header changed; multipart and message
containers declared 8bit/binary are relabelled 7bit; header fields with
raw 8-bit text are re-encoded as RFC 2047 encoded words (UTF-8, or
Latin-1 when the bytes are not UTF-8).

Input and output are files with LF line endings, the queue's stored form.
The conversion parses the message in memory (the email package works that
way); it is needed only for the rare 8-bit message to an old server.
It must not know about SMTP or the queue.
"""

from __future__ import annotations

import base64
import quopri
from email import policy as email_policy
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.parser import BytesParser
from typing import BinaryIO

__all__ = ["convert_file", "has_8bit", "to_7bit"]

_POLICY = email_policy.compat32.clone(linesep="\n")
_CHUNK = 65536


def has_8bit(path: str) -> bool:
    """Whether the file holds any octet above 127 (read in chunks)."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return False
            if not chunk.isascii():
                return True


def _text_of(raw_value: str) -> str:
    """A header value as parsed with surrogateescape -> real text."""
    raw = raw_value.encode("ascii", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _fix_headers(part: Message) -> None:
    for name, value in list(part.raw_items()):
        if isinstance(value, str) and not value.isascii():
            text = _text_of(value).strip()
            encoded = Header(text, "utf-8", header_name=name).encode(linesep="\n")
            part.replace_header(name, encoded)


def _is_7bit(data: bytes) -> bool:
    if not data.isascii():
        return False
    return all(len(line) <= 998 for line in data.split(b"\n"))


def _convert_part(part: Message) -> None:
    _fix_headers(part)
    cte = (part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if part.is_multipart() or part.get_content_maintype() == "message":
        if cte in ("8bit", "binary"):
            part.replace_header("Content-Transfer-Encoding", "7bit")
        return
    if cte in ("quoted-printable", "base64"):
        payload = part.get_payload()
        if isinstance(payload, str) and payload.isascii():
            return
    raw = part.get_payload(decode=True) or b""
    if cte in ("7bit", "") and _is_7bit(raw):
        return
    if part.get_content_maintype() == "text":
        if part.get_param("charset") is None and not raw.isascii():
            # undeclared 8-bit text: say what it most likely is
            try:
                raw.decode("utf-8")
                part.set_param("charset", "utf-8")
            except UnicodeDecodeError:
                part.set_param("charset", "unknown-8bit")
        encoded = quopri.encodestring(raw).decode("ascii")
        new_cte = "quoted-printable"
    else:
        encoded = base64.encodebytes(raw).decode("ascii")
        new_cte = "base64"
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", new_cte)
    else:
        part["Content-Transfer-Encoding"] = new_cte
    part.set_payload(encoded)


def to_7bit(source: BinaryIO, target: BinaryIO) -> None:
    """Read a message from ``source``, write its 7-bit form to ``target``."""
    msg = BytesParser(policy=_POLICY).parse(source)
    for part in msg.walk():
        _convert_part(part)
    BytesGenerator(target, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(msg)


def convert_file(src: str, dst: str) -> int:
    """Write the 7-bit form of message file ``src`` to ``dst``; return its size."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        to_7bit(fin, fout)
        return fout.tell()
