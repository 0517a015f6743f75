"""What the submission service adds to a message (RFC 6409 section 8).

A message submitted by a user's program is often incomplete: scripts that
talk SMTP by hand, and some libraries, send no ``Date`` or no
``Message-ID``.  RFC 5322 3.6 requires a Date field in every message and
asks for a Message-ID; RFC 6409 8.3 says an MSA SHOULD add a missing
Message-ID and 8.2 lets it add a missing Date.  Large receivers refuse
mail without a Message-ID, so a hub that relays such a message unchanged
gets it bounced.

``MissingFields`` watches the header section as the data streams into
the spool file (stored form, LF line ends, whole lines per piece, the
same pieces the trace code sees) and adds what is missing at the end of
the header section, where the order of fields does not matter (RFC 5322
3.6).  It never buffers more than the piece it is given.  Fields the
client sent are left as they are.
"""

from __future__ import annotations

import re

__all__ = ["MissingFields"]

# RFC 5322 3.6.8: a field name is printable US-ASCII except ":"; obsolete
# syntax (4.5.3) allows white space before the colon.
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_WANTED = re.compile(rb"^(date|message-id)[ \t]*:", re.IGNORECASE | re.MULTILINE)


class MissingFields:
    """Adds ``Date`` and ``Message-ID`` to a header section that lacks them.

    ``date`` is an RFC 5322 date-time, ``message_id`` a msg-id with its
    angle brackets.  ``feed`` returns each piece to store in its place;
    once the data has ended, ``finish`` returns what is still to be added
    (a message that is all header section and no body)."""

    __slots__ = ("_date", "_first", "_message_id", "done", "seen_date", "seen_id")

    def __init__(self, date: str, message_id: str) -> None:
        self._date = date
        self._message_id = message_id
        self._first = True
        self.seen_date = False
        self.seen_id = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return data
        first, self._first = self._first, False
        if first and data[:1] != b"\n" and not _FIELD.match(data):
            # No header section at all (the seed's DATA is just text): ours
            # becomes the whole of it, ended by an empty line, so the text
            # stays the body.
            self.done = True
            return self._missing() + b"\n" + data
        if data[:1] == b"\n":  # the empty line that ends the header section
            head, ended = b"", True
        else:
            end = data.find(b"\n\n")
            ended = end >= 0
            head = data[: end + 1] if ended else data
        for name in _WANTED.findall(head):
            if name[:1] in b"dD":
                self.seen_date = True
            else:
                self.seen_id = True
        if not ended:
            return data  # the header section goes on in the next piece
        self.done = True
        missing = self._missing()
        return head + missing + data[len(head):] if missing else data

    def finish(self) -> bytes:
        """What to append when the data ended inside the header section."""
        if self.done:
            return b""
        self.done = True
        return self._missing()

    def _missing(self) -> bytes:
        out = b""
        if not self.seen_date:
            out += f"Date: {self._date}\n".encode("ascii")
        if not self.seen_id:
            out += f"Message-ID: {self._message_id}\n".encode("ascii")
        return out
