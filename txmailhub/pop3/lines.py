"""Splitting POP3 client input into lines, with a bound on memory.

``LineReader`` gives complete lines (CRLF or bare LF stripped).  A line
reaching ``limit`` octets is never kept: its bytes are dropped as they
arrive and ``None`` is given in its place, so the engine can answer it
with an error and carry on.  Its first ``HEAD`` octets are kept
(``dropped_head``), so the engine can still tell what the line was (an
``AUTH PLAIN`` with an initial response is logged for log watchers at
any length, as SMTP logs one).  Sans-IO; the engine owns one.

Received lines are kept as the blocks of bytes they arrived in and cut
one at a time as the engine asks for them: a read of pipelined commands
costs its own size in memory, not a Python object per line (a 64 KiB
read of ``AB`` LF is 21,845 lines; split at once they took about 1 MiB).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

__all__ = ["HEAD", "LineReader"]

HEAD = 255
"""Octets kept of a line that was too long (``LineReader.dropped_head``):
RFC 2449's whole command line, enough for any verb and its first words."""


class _Dropped:
    """Where a line too long to keep was: its first ``HEAD`` octets."""

    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head


class LineReader:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Blocks of whole lines (each block ends with LF), oldest first, or
        # a _Dropped where a line too long to keep was dropped.
        self._blocks: deque[bytes | _Dropped] = deque()
        self._pos = 0  # where the next line starts in _blocks[0]
        self._held = 0  # octets of _blocks not handed out yet
        self._partial = b""
        self._discarding = False
        self._dropping = b""  # the head of the line being dropped
        #: the first ``HEAD`` octets of the line the last ``pop`` gave as
        #: ``None`` (too long), its line end never included
        self.dropped_head = b""

    def feed(self, data: bytes) -> None:
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1 :]
            self._discarding = False
            self._blocks.append(_Dropped(self._dropping))
            self._held += len(self._dropping)  # what it keeps counts: see buffered
            self._dropping = b""
        buf = self._partial + data if self._partial else data
        end = buf.rfind(b"\n") + 1
        if end:
            block = buf if end == len(buf) else buf[:end]
            self._partial = buf[end:]
            self._blocks.append(block)
            self._held += end
        else:
            self._partial = buf
        if len(self._partial) >= self.limit:
            self._dropping = self._partial[:HEAD]
            self._partial = b""
            self._discarding = True

    def pop(self) -> bytes | None:
        """The next line, or ``None`` for one that was too long (its first
        octets are then ``dropped_head``)."""
        blocks = self._blocks
        block = blocks[0]
        if type(block) is _Dropped:
            blocks.popleft()
            self._held -= len(block.head)
            self.dropped_head = block.head
            return None
        pos = self._pos
        nl = block.index(b"\n", pos)
        if nl + 1 == len(block):
            blocks.popleft()
            self._pos = 0
        else:
            self._pos = nl + 1
        self._held -= nl + 1 - pos
        if nl - pos >= self.limit:  # what precedes the LF, a CR included
            end = nl - 1 if block[nl - 1] == 0x0D else nl
            self.dropped_head = block[pos:min(end, pos + HEAD)]
            return None
        if nl > pos and block[nl - 1] == 0x0D:  # CR
            nl -= 1
        return block[pos:nl]

    def peek(self) -> bytes | None:
        """The next line as ``pop`` will give it, without taking it (its
        line end left on: callers look at its first word only)."""
        block = self._blocks[0]
        if type(block) is _Dropped:
            return None
        pos = self._pos
        return block[pos:block.index(b"\n", pos)]

    def lines(self) -> Iterator[bytes | None]:
        """The lines held, in order, as ``pop`` will give them (``None``
        for one too long), none of them taken."""
        limit = self.limit
        pos = self._pos
        for block in self._blocks:
            if type(block) is _Dropped:
                yield None
                continue
            end = len(block)
            while pos < end:
                nl = block.index(b"\n", pos)
                if nl - pos >= limit:
                    yield None
                else:
                    stop = nl - 1 if nl > pos and block[nl - 1] == 0x0D else nl
                    yield block[pos:stop]
                pos = nl + 1
            pos = 0

    @property
    def has_line(self) -> bool:
        return bool(self._blocks)

    @property
    def buffered(self) -> int:
        """Octets held, line ends included, and the heads kept of the lines
        dropped that wait for their turn: a client that sends line after
        over-long line while its session is busy (a login's delay) is
        held to the adapter's input limit by them too."""
        return self._held + len(self._partial)

    def clear(self) -> None:
        self._blocks.clear()
        self._pos = 0
        self._held = 0
        self._partial = b""
        self._discarding = False
        self._dropping = b""
