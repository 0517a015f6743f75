"""How ``txmailhub-sendmail`` reads the message on standard input: the
lone-dot rule, line ends made CRLF, bare CRs, long lines folded, the
header section split from the body, and the body kept in a spool.

Owns only the reading.  ``txmailhub.sendmail`` decides what the header
fields become; ``txmailhub.sendmail_smtp`` sends the result.

Memory stays flat whatever the size of the input: stdin is read in pieces
of at most ``READ_SIZE`` octets (a line longer than that is handled piece
by piece, never joined), and the body goes into a spool that keeps up to
``SPOOL_IN_MEMORY`` octets in memory and moves to an unnamed temporary file
beyond.  Only the header section is held whole: the command must read it
all (``-t`` takes the recipients from it, Bcc is removed) before it knows
the envelope, and it is bounded by ``[smtp] max_message_size`` like the
rest.  The spool is also why the input is read to its end *before* the
command connects to the hub: a slow producer (``backup | sendmail``)
cannot keep a hub connection open past its idle timeout, and input over
the size limit is refused without the hub ever seeing a byte.
"""

from __future__ import annotations

import io
import itertools
import os
import select
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from txmailhub.rfc5322 import escaped

__all__ = ["READ_SIZE", "SPOOL_IN_MEMORY", "MessageTooBig", "StdinMessage", "StdinUnreadable",
           "read_message", "waiting"]

#: octets asked of stdin at a time (a line longer than this comes in pieces)
READ_SIZE = 65536
#: octets of body kept in memory before the spool moves to a temporary file
SPOOL_IN_MEMORY = 1 << 20
_LINE_TEXT = 998  # octets of a line before its CRLF (RFC 5321 4.5.3.1.6)


class MessageTooBig(Exception):
    """Standard input held more than the hub would take (exit 65)."""


class StdinUnreadable(Exception):
    """Reading standard input failed (exit 74, as for one closed): one
    opened for writing only (EBADF), a terminal that hung up (EIO).  Apart
    from the spool's ``OSError`` (no room: exit 75, try again later), which
    a retry may get past and this never does."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.error = error


@dataclass
class StdinMessage:
    """The input, read: header fields as ``(lower-case name, the field's
    CRLF lines)``, and the rest (the empty line that ended the header
    section dropped) in ``body``, positioned at its start."""

    fields: list[tuple[bytes, bytes]]
    body: BinaryIO
    body_size: int
    body_8bit: bool

    def close(self) -> None:
        self.body.close()


class _WaitingReader(io.RawIOBase):
    """Reads descriptor ``fd`` as a blocking one would, whatever its
    O_NONBLOCK: a read that would block waits until there is data."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while True:
            try:
                return os.readv(self._fd, [buffer])
            except BlockingIOError:
                select.select([self._fd], [], [])

    def close(self) -> None:  # the descriptor is the caller's (stdin)
        self._fd = -1
        super().close()


def waiting(stream: BinaryIO) -> BinaryIO:
    """A reader of ``stream``'s descriptor that waits for data, or
    ``stream`` itself when it has none.  A standard input left
    O_NONBLOCK (a pipe a parent process set so: the flag is the whole
    pipe's, not the process's) reads as empty whenever the writer is
    slower than the reader: ``readline`` returned a line cut short, or
    nothing, which read as the end of the input, and the message was
    sent cut there without a word.  Taken whether or not the flag is set
    now: a parent sharing the pipe (its own stdin, handed down) may set
    it while the command reads (Node.js does once it opens its stdin,
    a pipe).  On a blocking descriptor its reads are the same system
    calls.  Called before anything is read from ``stream``: what its
    buffer held would be skipped."""
    try:
        fd = stream.fileno()
        os.get_blocking(fd)  # a descriptor that is open
    except (OSError, ValueError, AttributeError):  # no descriptor (BytesIO), closed
        return stream
    return io.BufferedReader(_WaitingReader(fd), READ_SIZE)  # type: ignore[return-value]


def _stdin_lines(stream: BinaryIO, ignore_dots: bool) -> Iterator[tuple[bytes, bool]]:
    """``(text, ends_line)`` pieces of stdin's lines, their line end (LF or
    CRLF) removed; a CR that no LF follows is left in the text.  A line
    longer than ``READ_SIZE`` comes in several pieces, the last one with
    ``ends_line``.  Without ``ignore_dots`` a line of one ``.`` ends the
    input, and what follows it is not read."""
    carry = b""  # a CR that ended one read: the next one may start with its LF
    at_start = True
    while True:
        try:
            piece = stream.readline(READ_SIZE)
        except OSError as e:
            raise StdinUnreadable(e) from e
        data, carry = carry + piece, b""
        if not data:
            if not at_start:
                yield b"", True  # a last line without its line end
            return
        ends = data.endswith(b"\n")
        # readline stops short of its size without a LF only at the end
        last = not ends and len(piece) < READ_SIZE
        if ends:
            text = data[:-1].removesuffix(b"\r")
        elif last:
            text = data.removesuffix(b"\r")  # a last line's CR ends it
        else:
            if data.endswith(b"\r"):
                carry, data = b"\r", data[:-1]
            text = data
        if at_start and (ends or last) and not ignore_dots and text == b".":
            return
        if text or ends or last:
            yield text, ends or last
        if last:
            return
        at_start = ends


class _LineWriter:
    """Writes text to ``out`` as CRLF lines of at most 998 octets.

    A longer line is cut, each piece after the first starting with a
    space -- in the body it is one space more, as Postfix's
    ``smtp_line_length_limit`` does.  In a header field (``header``) the
    cut goes before white space of the field where there is some (not a
    blank a backslash quotes: a quoted-pair, RFC 5322 3.2.1, is never
    split, nor by a cut without white space), which is folding (RFC 5322
    2.2.3): the field unfolds to what it was.  The hub refuses a message with a
    longer line (RFC 5321 4.5.3.1.6: 500 5.5.2), so a long log line in a
    cron job's output would lose the whole mail.  A cut never splits a
    UTF-8 sequence.  Holds at most one line piece in memory."""

    def __init__(self, write: Callable[[bytes], object], limit: int, already: int = 0,
                 *, header: bool = False) -> None:
        self._write_out = write
        self._limit = limit
        self._header = header
        self._line = bytearray()
        self._lead = 0  # 1 when the line held is a continuation (its space written)
        self._out = bytearray()  # written, not yet handed to ``write``
        self.size = already  # octets written, with ``already`` written elsewhere
        self.eight_bit = False

    def lines(self, parts: list[bytes], ends: bool) -> None:
        """``parts`` of text (no CR or LF in them): the first continues the
        current line, each ends a line but the last, which ends one when
        ``ends``.  Short lines go out in one piece (the common case)."""
        last = parts.pop()
        if parts:
            self.add(parts[0])
            self.end()
            rest = parts[1:]
            if rest and max(map(len, rest)) <= _LINE_TEXT:
                self._write(b"\r\n".join(rest) + b"\r\n")
            else:
                for part in rest:
                    self.add(part)
                    self.end()
        self.add(last)
        if ends:
            self.end()

    def add(self, text: bytes) -> None:
        """More of the current line (no CR or LF in ``text``)."""
        self._line += text
        if len(self._line) + self._lead > _LINE_TEXT:
            self._fold()

    def end(self) -> None:
        """The current line ends."""
        self._line += b"\r\n"
        self._write(self._line)
        self._line = bytearray()
        self._lead = 0

    def flush(self) -> None:
        """Hand what was written to ``write``."""
        if self._out:
            self._write_out(bytes(self._out))
            self._out.clear()

    def _fold(self) -> None:
        line, pos = self._line, 0
        while len(line) - pos + self._lead > _LINE_TEXT:
            width = _LINE_TEXT - self._lead
            if self._header:
                # RFC 5322 2.2.3: fold before white space that is there, so
                # unfolding gives the field back as it was (a long To: read
                # by -t keeps its addresses whole); only a run of more than
                # 998 octets without any is cut with a space added
                space = max(line.rfind(b" ", pos + 1, pos + width + 1),
                            line.rfind(b"\t", pos + 1, pos + width + 1))
                while space > pos and escaped(line, space):
                    # the blank a backslash quotes (RFC 5322 3.2.1): a
                    # fold there would split the quoted-pair
                    space = max(line.rfind(b" ", pos + 1, space),
                                line.rfind(b"\t", pos + 1, space))
                if space > pos and line[pos:space].strip():
                    self._write(line[pos:space] + b"\r\n")
                    pos, self._lead = space, 0
                    continue
                # none: the space the cut adds goes after a comma if the
                # line has one, where it changes no address of a list
                # (",".join(addresses) from a script), not inside one
                comma = line.rfind(b",", pos, pos + width)
                if comma >= pos:
                    self._write(line[pos:comma + 1] + b"\r\n ")
                    pos, self._lead = comma + 1, 1
                    continue
            cut = pos + width
            while cut > pos + width - 4 and 0x80 <= line[cut] < 0xC0:
                cut -= 1  # line[cut] continues a UTF-8 sequence: cut before it
            if self._header and escaped(line, cut):
                # a backslash quotes line[cut] (RFC 5322 3.2.1): the space
                # the cut adds would be the quoted character instead, and
                # a quoted '"' or ')' would end its string or comment
                cut -= 1
            self._write(line[pos:cut] + b"\r\n ")
            pos, self._lead = cut, 1
        self._line = line[pos:]

    def _write(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        if self.size > self._limit:
            raise MessageTooBig(f"the message is over the hub's limit of {self._limit} "
                                "octets ([smtp] max_message_size)")
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        self._out += data
        if len(self._out) >= READ_SIZE:
            self.flush()


def _field_name(line: bytes) -> bytes | None:
    name, colon, _ = line.partition(b":")
    # white space before the colon is RFC 5322 4.5.8's obs-optional
    # ("Bcc : x"): no field, that line would start the body, and every
    # field below it -- a Bcc too -- would be moved there for all to read
    name = name.rstrip(b" \t")
    if colon and name and all(33 <= c <= 126 for c in name):
        return name.lower()
    return None


def read_message(stream: BinaryIO, ignore_dots: bool, limit: int) -> StdinMessage:
    """Standard input as the message, every line ending in CRLF (LF alone
    too).  Raise ``MessageTooBig`` beyond ``limit`` octets, without
    reading on.  The caller closes the result (its spool).

    The header section ends at the empty line (dropped here) or at the
    first line that is no field (which starts the body).  A leading mbox
    ``From `` line is dropped, as sendmail does.

    A CR that no LF follows (a progress meter in a cron job's output)
    ends a line in the body: RFC 5321 2.3.8 forbids it on the wire, and
    the hub refuses a message with one (550 5.6.11), which would lose the
    mail.  In a header field it becomes a space instead: RFC 5322 allows
    CR only before LF, and taken as a line end it would end the header
    section early (``Subject: a\\rb``: "b" is no field) and move the fields
    after it -- a Bcc among them -- into the body, or start a field of its
    own (``Subject: x\\rBcc: y``)."""
    lines = _stdin_lines(waiting(stream), ignore_dots)
    piece = next(lines, None)
    if piece is not None and piece[0].startswith(b"From "):
        while not piece[1]:  # the rest of the mbox line
            piece = next(lines)
        piece = next(lines, None)
    header = bytearray()
    head = _LineWriter(header.extend, limit, header=True)
    starts: list[tuple[bytes, int]] = []  # each field's name and offset in ``header``
    first: tuple[bytes, bool] | None = None  # the body's first piece
    line_start = True
    # (itertools.chain: breaking out of it leaves ``lines`` open for the body)
    for text, ends in itertools.chain([piece] if piece is not None else [], lines):
        if line_start:
            if text == b"" and ends:
                break  # the empty line: the body follows
            continuation = text[:1] in (b" ", b"\t") and bool(starts)
            name = starts[-1][0] if continuation else _field_name(text)
            if name is None:
                first = (text, ends)
                break
            if not continuation:
                starts.append((name, head.size))
        head.add(text.replace(b"\r", b" "))
        if ends:
            head.end()
        line_start = ends
    head.flush()
    ends_at = [offset for _, offset in starts[1:]] + [head.size]
    fields = [(name, bytes(header[offset:end])) for (name, offset), end in zip(starts, ends_at)]
    del header
    spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)  # the caller closes it
    try:
        body = _LineWriter(spool.write, limit, already=head.size)
        pieces = itertools.chain([first] if first is not None else [], lines)
        for text, ends in pieces:
            body.lines(text.split(b"\r"), ends)
        body.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return StdinMessage(fields, spool, body.size - head.size,  # type: ignore[arg-type]
                        body.eight_bit)

