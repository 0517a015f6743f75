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
        self._lines: deque[bytes | None] = deque()
        self._partial = b""
        self._discarding = False

    def feed(self, data: bytes) -> None:
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._discarding = False
            self._lines.append(None)
        buf = self._partial + data if self._partial else data
        if b"\n" not in buf:
            self._partial = buf
        else:
            *lines, self._partial = buf.split(b"\n")
            limit = self.limit
            for line in lines:
                if len(line) >= limit:
                    self._lines.append(None)
                else:
                    self._lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._partial) >= self.limit:
            self._partial = b""
            self._discarding = True

    def pop(self) -> bytes | None:
        """The next line, or ``None`` for one that was too long."""
        return self._lines.popleft()

    @property
    def has_line(self) -> bool:
        return bool(self._lines)

    @property
    def buffered(self) -> int:
        """Octets held, line ends included."""
        return len(self._partial) + sum(len(x) + 2 for x in self._lines if x is not None)

    def clear(self) -> None:
        self._lines.clear()
        self._partial = b""
        self._discarding = False
