"""Maildir file names and message sizes: the rules the store, the POP3
server and the test doubles share.

Owns ``MessageInfo`` (one message of a mailbox snapshot), the CRLF rule
(``CRLFEncoder``/``CRLFCounter``/``crlf_size_of``: what POP3 sends for a
stored LF message, and how many octets that is) and the name rules
(``uid_for_name``, the ``,S=``/``,W=`` fields, delivery order).  Pure
functions and values: no disk, no Twisted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "CRLFCounter",
    "CRLFEncoder",
    "MessageInfo",
    "base_name",
    "crlf_size_of",
    "escape_host",
    "name_fields",
    "order_key",
    "uid_for_name",
]


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a mailbox snapshot.

    * ``uid``: the POP3 UIDL (0x21-0x7E, at most 70 characters), stable
      across sessions and flag changes, never reused.
    * ``size``: the exact number of octets RETR sends for the message
      (its CRLF form, see ``CRLFEncoder``), before dot-stuffing.
    * ``path``: where the file is now (kept current by ``mark_seen``).
    * ``stored_size``: octets on disk (LF line endings).
    * ``seen``: whether it carries the Maildir S flag.
    """

    uid: str
    size: int
    path: str
    stored_size: int
    seen: bool = False


# --- the CRLF rule ------------------------------------------------------------


class CRLFEncoder:
    """Turns stored (LF) message bytes into the CRLF form POP3 sends.

    The rule, which ``MessageInfo.size`` counts: every LF not preceded by
    CR becomes CRLF (a stored CRLF stays as it is), bare CRs stay, and a
    message whose last byte is not LF gets a final CRLF.  Feed chunks in
    order to ``encode``; ``finish`` returns the tail to send (``b""`` or
    ``b"\\r\\n"``).  Dot-stuffing is the protocol's job, after this.
    """

    def __init__(self) -> None:
        self._last = b""

    def encode(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        head = b""
        if self._last == b"\r" and chunk[:1] == b"\n":
            head, chunk = b"\n", chunk[1:]
        self._last = chunk[-1:] or head
        # rare in stored mail: only then undo stored CRLFs.  CR as an int:
        # bytes `in` bytes pays for a TypeError on every call.
        if 0x0D in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        return head + chunk.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        return b"\r\n" if self._last not in (b"", b"\n") else b""


class CRLFCounter:
    """Counts, chunk by chunk, the octets ``CRLFEncoder`` would produce."""

    def __init__(self) -> None:
        self.size = 0
        self._added = 0
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        # Stored data has no CR as a rule: memchr for one (an int: see
        # smtp/_data.py on `in`) is some 50 times cheaper than counting
        # the pairs, which is a second pass over every message.
        pairs = chunk.count(b"\r\n") if 13 in chunk else 0
        self._added += chunk.count(b"\n") - pairs
        if self._last == b"\r" and chunk[:1] == b"\n":
            self._added -= 1
        self._last = chunk[-1:]

    @property
    def crlf_size(self) -> int:
        tail = 2 if self.size and self._last != b"\n" else 0
        return self.size + self._added + tail


def crlf_size_of(data: bytes) -> int:
    """``len`` of ``data`` in the CRLF form of ``CRLFEncoder`` (whole message)."""
    c = CRLFCounter()
    c.feed(data)
    return c.crlf_size


# --- names ------------------------------------------------------------------

_UID_OK = re.compile(r"[\x21-\x7e]{1,70}")
ORDER = re.compile(r"^(\d+)\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?")
_FIELD = re.compile(r",([A-Za-z])=(\d+)")


def uid_for_name(name: str) -> str:
    """The UIDL of a Maildir file name: its unique part (before ``:`` info
    and before the first ``,`` field such as ``,S=``), or a SHA-1 of it when
    that is not 1-70 printable ASCII characters."""
    base = base_name(name)
    if _UID_OK.fullmatch(base):  # not match: "$" would let a final LF through
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def base_name(name: str) -> str:
    return name.split(":", 1)[0].split(",", 1)[0]


def name_fields(name: str) -> dict[str, int]:
    return {k: int(v) for k, v in _FIELD.findall(name.split(":", 1)[0])}


def escape_host(hostname: str) -> str:
    host = hostname or "localhost"
    for ch, esc in (("\\", "\\134"), ("/", "\\057"), (":", "\\072"), (",", "\\054")):
        host = host.replace(ch, esc)
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in host)


def order_key(name: str, mtime: float = 0.0) -> tuple[int, int, int]:
    """Delivery order of a Maildir name: seconds, microseconds, counter
    (``mtime`` for names that do not start with the delivery time)."""
    m = ORDER.match(name)
    if m:
        return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return int(mtime), 0, 0
