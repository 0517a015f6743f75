"""Stored message bytes -> the POP3 wire form of RETR and TOP, chunk by chunk.

A stored message has LF line endings (``txmailhub.store.maildir``).  On
the wire it is in CRLF form -- the rule ``MessageInfo.size`` counts, see
``CRLFEncoder`` -- then dot-stuffed (RFC 1939 section 3) and ended by
``.\\r\\n``.  Everything here works on whole chunks with ``bytes.replace``
and ``bytes.find``: no Python loop per line (TOP loops once per body line
it keeps, and only those).  Correct across chunk boundaries, including a
CR/LF pair or a line-leading dot split between two chunks.

Sans-IO: no files, no transport; ``txmailhub.pop3.protocol`` feeds it.
"""

from __future__ import annotations

import re

from txmailhub.downgrade import PartHeaders
from txmailhub.pop3.replies import TERMINATOR
from txmailhub.store.maildir import CRLFEncoder

__all__ = ["MessageEncoder", "PartsEncoder", "encode_whole"]


_STUFF_BY_SLICES = 16
"""Dot-stuff this many lines by slicing; more go through one ``replace``."""
# A line that starts with "."?  sre looks for the LF and checks the next
# octet: about 0.6x the time of bytes.find for this two-octet needle, whose
# first octet starts every line (per 64 KiB chunk: 49 against 79 us here).
_LF_DOT = re.compile(rb"\n\.").search


def encode_whole(data: bytes, head: bytes = b"") -> bytes:
    """``head`` then a whole stored message in its CRLF, dot-stuffed form,
    then ``.\\r\\n``, built with one join at the end."""
    if 0x0D in data:  # CR (an int: bytes `in` bytes pays for a TypeError)
        data = data.replace(b"\r\n", b"\n")
    body = data.replace(b"\n", b"\r\n")
    tail = b"\r\n" + TERMINATOR if body and body[-1:] != b"\n" else TERMINATOR
    parts = [head]
    if body[:1] == b".":
        parts.append(b".")
    i = body.find(b"\n.")
    if i >= 0:
        _stuff(parts, body, i)
    else:
        parts.append(body)
    parts.append(tail)
    return b"".join(parts)


def _stuff(parts: list[bytes], body: bytes, i: int) -> None:
    """Append ``body`` to ``parts`` with the dot after each ``\\n.`` doubled,
    the first at ``i``.  A message has a few such lines, usually: slices
    cost less than ``replace`` with a two-octet pattern; past
    ``_STUFF_BY_SLICES`` of them the rest goes through one ``replace``."""
    start = 0
    for _ in range(_STUFF_BY_SLICES):
        parts.append(body[start : i + 1])
        parts.append(b".")
        start = i + 1
        i = body.find(b"\n.", start)
        if i < 0:
            parts.append(body[start:])
            return
    parts.append(body[start:].replace(b"\n.", b"\n.."))


class MessageEncoder:
    """Encode a message chunk by chunk; ``body_lines`` limits it as TOP does.

    ``encode(chunk)`` returns the wire bytes for that chunk; ``finish()``
    the rest, terminator included.  Once ``done`` is true (TOP has all
    its lines) further input is ignored and the reader can stop.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self.size = 0  # the octets encoded so far in CRLF form, before dot-stuffing
        self._crlf = CRLFEncoder()
        self._at_line_start = True
        self._remaining = body_lines
        self._in_header = body_lines is not None
        self._tail = b"\n"  # as if a line had just ended: "\r\n" first is an empty header
        self.done = False

    def encode(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._crlf.encode(chunk)
        if self._remaining is not None:
            data = self._limit(data)
        self.size += len(data)
        return self._stuff(data)

    def finish(self) -> bytes:
        if self.done:
            return TERMINATOR
        self.done = True
        tail = self._crlf.finish()
        self.size += len(tail)
        return self._stuff(tail) + TERMINATOR

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        if _LF_DOT(data) is not None:
            data = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            data = b"." + data
        self._at_line_start = data[-1:] == b"\n"
        return data

    def _limit(self, data: bytes) -> bytes:
        """Cut CRLF-form ``data`` after the header and ``_remaining`` body lines."""
        head = b""
        if self._in_header:
            probe = self._tail + data
            i = probe.find(b"\n\r\n")
            if i < 0:
                self._tail = probe[-2:]
                return data
            end = i + 3 - len(self._tail)
            self._in_header = False
            head, data = data[:end], data[end:]
        pos = 0
        remaining = self._remaining
        assert remaining is not None
        while remaining > 0:
            j = data.find(b"\n", pos)
            if j < 0:
                self._remaining = remaining
                return head + data if head else data
            pos = j + 1
            remaining -= 1
        self._remaining = 0
        self.done = True
        return head + data[:pos]


class PartsEncoder:
    """A ``MessageEncoder`` fed through ``PartHeaders``: the rest of a
    message sent downgraded to a client without UTF8 (RFC 6857), its MIME
    part header sections downgraded as they pass (``parts``, not strict:
    the same body was measured strictly first)."""

    __slots__ = ("_encoder", "_parts")

    def __init__(self, parts: PartHeaders, encoder: MessageEncoder) -> None:
        self._parts = parts
        self._encoder = encoder

    @property
    def done(self) -> bool:
        return self._encoder.done

    @property
    def size(self) -> int:
        return self._encoder.size

    def encode(self, chunk: bytes) -> bytes:
        return self._encoder.encode(self._parts.feed(chunk))

    def finish(self) -> bytes:
        rest = self._parts.finish()
        return (self._encoder.encode(rest) if rest else b"") + self._encoder.finish()
