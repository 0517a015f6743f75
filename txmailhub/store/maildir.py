"""The Maildir mailbox store (IMailboxStore) and its locked POP3 view (IMailbox).

Placeholder while the store is written: the value type and the size rules
that ``txmailhub.testing`` and the POP3 server share.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["CRLFEncoder", "MessageInfo", "crlf_size_of", "uid_for_name"]


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
        self._last = (head + chunk)[-1:]
        return head + chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        return b"\r\n" if self._last not in (b"", b"\n") else b""


def crlf_size_of(data: bytes) -> int:
    """``len`` of ``data`` in the CRLF form of ``CRLFEncoder`` (whole message)."""
    extra = data.count(b"\n") - data.count(b"\r\n")
    tail = 2 if data and not data.endswith(b"\n") else 0
    return len(data) + extra + tail


_UID_OK = re.compile(r"^[\x21-\x7e]{1,70}$")


def uid_for_name(name: str) -> str:
    """The UIDL of a Maildir file name: its unique part (before ``:`` info
    and before the first ``,`` field such as ``,S=``), or a SHA-1 of it when
    that is not 1-70 printable ASCII characters."""
    base = name.split(":", 1)[0].split(",", 1)[0]
    if _UID_OK.match(base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()
