"""Reading SMTP replies on the client side.

Owns ``ReplyParser`` (server bytes -> ``Reply`` values: multi-line
replies, the RFC 3463 enhanced status stripped into ``Reply.status``,
limits on line length and line count).  Used by the
SMTP client engine (``txmailhub.smtp.client``); no I/O here.
"""

from __future__ import annotations

import re

from txmailhub.smtp.reply import Reply

__all__ = ["MAX_REPLY_LINE", "MAX_REPLY_LINES", "ReplyParser"]

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: +|$)")


class ReplyParser:
    """Bytes from the server -> complete ``Reply`` values (multi-line aware)."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[str] = []
        self._code: int | None = None
        self.error: str | None = None

    @property
    def pending(self) -> bool:
        """Whether part of a reply is waiting for more bytes."""
        return bool(self._buf or self._lines)

    def pending_may_be(self, code: int) -> bool:
        """Whether the part of a reply waiting for more bytes may still
        turn out to be a reply with ``code``."""
        if self._code is not None:
            return self._code == code
        head = self._buf[:4]
        digits = str(code).encode("ascii")
        return bool(head) and digits.startswith(head[:3]) and head[3:4] in (b"", b" ", b"-")

    def feed(self, data: bytes) -> list[Reply]:
        if self.error is not None:
            # nothing more is read; a server that goes on sending (while a
            # TLS close waits for its close_notify) must not grow the buffer
            self._buf = b""
            return []
        # Lines are taken by position and the rest kept once at the end:
        # cutting each line off the front of the buffer copied the rest of
        # the read every time, quadratic in the lines of one read (a next
        # hop sending 64 KiB of "250" lines cost 70 ms of the reactor)
        buf = self._buf + data if self._buf else data
        out = []
        pos = 0
        while self.error is None:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > MAX_REPLY_LINE:
                    self.error = "reply line too long"
                    buf, pos = b"", 0
                break
            if nl - pos > MAX_REPLY_LINE:
                # a whole line in one read (a socket gives up to 64 KiB at a
                # time) is held to the same limit as one still arriving
                self.error = "reply line too long"
                buf, pos = b"", 0
                break
            line = buf[pos:nl].rstrip(b"\r").decode("utf-8", "replace")
            pos = nl + 1
            reply = self._line(line)
            if reply is not None:
                out.append(reply)
        self._buf = buf[pos:]
        return out

    def _line(self, line: str) -> Reply | None:
        digits = line[:3]
        if (len(digits) < 3 or not (digits.isascii() and digits.isdigit())
                or line[3:4] not in ("", " ", "-")):
            self.error = f"malformed reply line {line[:80]!r}"
            return None
        code = int(digits)
        if self._code is not None and code != self._code:
            self.error = "reply code changed in a multi-line reply"
            return None
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self.error = "reply too long"
            return None
        if line[3:4] == "-":
            return None
        lines, self._lines, self._code = self._lines, [], None
        return _make_reply(code, lines)


def _make_reply(code: int, lines: list[str]) -> Reply:
    m = _STATUS.match(lines[0])
    status = None
    if m and m.group(1) == str(code)[0]:
        status = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        prefix = re.compile(r"^" + re.escape(status) + r"(?: +|$)")
        lines = [prefix.sub("", x, count=1) for x in lines]
    return Reply(code, status, tuple(lines))
