"""Splitting POP3 client input into lines, with a bound on memory.

``LineReader`` queues complete lines (CRLF or bare LF stripped).  A line
reaching ``limit`` octets is never kept: its bytes are dropped as they
arrive and ``None`` is queued in its place, so the engine can answer it
with an error and carry on.  Sans-IO; the engine owns one.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LineReader"]


class LineReader:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[bytes | None] = deque()
        """Complete lines, oldest first (``None``: one that was too long)."""
        self._partial = b""
        self._discarding = False

    def feed(self, data: bytes) -> None:
        if (
            not self._partial
            and data[-2:] == b"\r\n"
            and data.find(b"\n") == len(data) - 1
            and len(data) - 1 < self.limit
            and not self._discarding
        ):
            # The usual case: exactly one whole CRLF line (a lock-step client).
            self.lines.append(data[:-2])
            return
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._discarding = False
            self.lines.append(None)
        buf = self._partial + data if self._partial else data
        if 0x0A not in buf:  # LF (an int: bytes `in` bytes pays for a TypeError)
            self._partial = buf
        else:
            *lines, self._partial = buf.split(b"\n")
            limit = self.limit
            for line in lines:
                if len(line) >= limit:
                    self.lines.append(None)
                else:
                    self.lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._partial) >= self.limit:
            self._partial = b""
            self._discarding = True

    def pop(self) -> bytes | None:
        """The next line, or ``None`` for one that was too long."""
        return self.lines.popleft()

    @property
    def has_line(self) -> bool:
        return bool(self.lines)

    @property
    def buffered(self) -> int:
        """Octets held, line ends included."""
        return len(self._partial) + sum(len(x) + 2 for x in self.lines if x is not None)

    def clear(self) -> None:
        self.lines.clear()
        self._partial = b""
        self._discarding = False
