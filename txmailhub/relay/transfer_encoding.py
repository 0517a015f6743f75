"""Content-transfer-encoders that write as they are fed (RFC 2045 6.7, 6.8).

Owns the body sinks ``txmailhub.relay.mime7bit`` streams a leaf part
through: ``write(data)`` any number of times, then ``close()``.  Each
keeps at most one block of input (``QP_BLOCK`` / ``B64_BLOCK`` octets)
before it encodes and writes it.  ``SINKS`` maps the converter's modes
to them: "copy" (as is), "qp" (text to quoted-printable, LF stays a
line break, lines of at most 76 characters), "base64" (76-character
lines), "qp-fix" and "base64-fix" (an already encoded body with stray
8-bit octets or lines over ``LINE_TEXT`` octets, rewritten so that it
decodes to the same octets).  It knows nothing about MIME structure,
headers, SMTP or the queue.
"""

from __future__ import annotations

import binascii
import re
from typing import BinaryIO

__all__ = ["B64_BLOCK", "HIGH", "LINE_TEXT", "QP_BLOCK", "SINKS", "Base64", "Base64Fix",
           "Copy", "QPFix", "QuotedPrintable"]

HIGH = re.compile(rb"[\x80-\xff]")
B64_BLOCK = 57 * 1024  # raw octets per base64 write: whole 76-character lines
QP_BLOCK = 65536
# octets of a line before its line end (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)
LINE_TEXT = 998
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
# an "=" that is no =XX and no soft break (a line's last character but
# transport padding and a CR, RFC 2045 6.7 rule 5)
_STRAY_EQUALS = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\Z)")
_PADDING = re.compile(rb"[ \t]+(?=\r?\Z)")
# left out of the lines a long base64 line is re-cut into: CRs, and "-",
# which could start a line that reads as a boundary delimiter (RFC 2046
# 5.1.1); neither is in the base64 alphabet, so decoders skip both
_RECUT_SKIPPED = re.compile(rb"[\r-]")


class Copy:
    """The body as it is."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)

    def close(self, soft_end: bool = False) -> None:
        """The body is complete (``soft_end``: see ``QuotedPrintable``)."""


_ASCII = bytes(range(128))
_OCTET = [bytes((o,)) for o in range(256)]
_HEXED = _OCTET[:128] + [b"=%02X" % o for o in range(128, 256)]


def _hexed(data: bytes) -> bytes:
    """``data`` with each 8-bit octet written =XX (RFC 2045 6.7 rule 1,
    upper-case hex).  No Python call for each octet: this runs over every
    line of a quoted-printable body with raw 8-bit text.  A replace for
    each 8-bit value it has (the =XX put in hold none, so the replaces do
    not touch each other's), or, when it has many for its length (text of
    a non-Latin script), each octet looked up in a table, in C."""
    values = set(data.translate(None, _ASCII))
    if len(values) * 4 > len(data):
        return b"".join(map(_HEXED.__getitem__, data))
    for o in values:
        data = data.replace(_OCTET[o], _HEXED[o])
    return data


class QPFix(Copy):
    """A quoted-printable body with stray raw 8-bit octets: write them as
    =XX.  A line that had them is cut again where that made it longer than
    76 characters (RFC 2045 6.7 rule 5: each octet became three
    characters), with soft breaks, and a stray "=" in it written =3D (what
    RFC 2045 6.7 asks a decoder to make of it); so is a line over
    ``LINE_TEXT`` octets (no valid quoted-printable either), which no
    line of a 7-bit copy may be.  The other lines are copied as they
    came.

    One line is held at a time, up to ``QP_BLOCK`` octets: a longer one
    goes out a block at a time, each ended with a soft break
    (``_block``), so it is cut however long it is.  Only a line with half
    a block of nothing but blanks, CRs and "=" (nowhere to end one: a run
    of blanks may be padding a decoder deletes, if the line ends with it)
    goes through as it comes, its 8-bit octets written as =XX (and
    ``mime7bit``, which allows no line over ``LINE_TEXT``, refuses the
    copy)."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.line = bytearray()
        self.through = False  # the line has nowhere to end a block: written as it comes
        self.continued = False  # the line held goes on after a soft break

    def write(self, data: bytes) -> None:
        while data:
            nl = data.find(b"\n")
            piece = data if nl < 0 else data[:nl]
            if self.through:
                self.out.write(_hexed(piece))
            else:
                self.line += piece
                if len(self.line) > QP_BLOCK:
                    self._block()
            if nl < 0:
                return
            self._line()
            self.out.write(b"\n")
            data = data[nl + 1:]

    def _block(self) -> None:
        """The held line is over ``QP_BLOCK``: most of it goes out now,
        re-cut and ended with a soft break.  The block ends with a
        character that is no blank, CR or "=", and never inside an =XX:
        every "=" in it is read as it is in the whole line (an =XX, or a
        stray one -- "=4=", "=4 " -- written =3D), and none as a soft
        break, which only the line's real end has (``_tail``)."""
        line = bytes(self.line)
        end = len(line) - 2
        while end > 0 and (line[end - 1:end] in (b" ", b"\t", b"\r", b"=")
                           or (line[end - 2:end - 1] == b"=" and _HEX2.match(line, end - 1))):
            end -= 1
        if end < QP_BLOCK // 2:  # blanks, CRs and "=" only: nowhere to end it
            self.out.write(self._unbroken(_hexed(line)))
            self.line.clear()
            self.through = True
            return
        fixed = self._unbroken(_STRAY_EQUALS.sub(b"=3D", _hexed(line[:end])))
        del self.line[:end]
        self.out.write(_wrap(fixed + b"=") + b"\n")
        self.continued = True

    def _unbroken(self, line: bytes) -> bytes:
        """``line``, which goes on after a soft break: it must not start
        with "-" (a piece that reads as a delimiter, RFC 2046 5.1.1)."""
        if self.continued and line.startswith(b"-"):
            line = b"=2D" + line[1:]
        self.continued = False
        return line

    def _line(self) -> None:
        line = self._unbroken(bytes(self.line))
        self.line.clear()
        if self.through or (not HIGH.search(line)
                            and len(line) - line.endswith(b"\r") <= LINE_TEXT):
            self.through = False
            self.out.write(line)
            return
        fixed = _STRAY_EQUALS.sub(b"=3D", _hexed(line))
        if len(fixed) - fixed.endswith(b"\r") > LINE_TEXT:
            # its trailing blanks are padding a decoder deletes (RFC 2045
            # 6.7 rule 3): ``_wrap`` keeps them on its last line, which
            # they could make too long
            fixed = _PADDING.sub(b"", fixed)
        self.out.write(_wrap(fixed) if len(fixed) > 76 else fixed)

    def close(self, soft_end: bool = False) -> None:
        self._line()


class Base64Fix(Copy):
    """A base64 body with stray 8-bit octets: decoders skip them, so do we.
    A line over ``LINE_TEXT`` octets (a 7-bit copy has none; RFC 2045 6.8
    wants 76 characters at most) is broken after its first ``LINE_TEXT``
    octets, and its rest written in lines of 76, without its CRs and "-"
    (a new line starting "--b" would read as a boundary delimiter):
    decoders skip line breaks and every character outside the base64
    alphabet (RFC 2045 6.8), so it decodes as before.

    Dropping octets must not make a line start like a delimiter either
    (an 8-bit octet, then "--b", would leave "--b"; "--b" and one, a whole
    delimiter line, RFC 2046 5.1.1): the start of a line that begins with
    "-" once 8-bit octets are out is held (up to ``LINE_TEXT`` octets)
    until the line ends or that much of it is known, and where octets
    were dropped from it, its leading "-" go too ("-" is no base64
    character either).  A line that starts with "-" with nothing dropped
    is copied as it came, as is every other line."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.col = 0  # octets of the current line written
        self.long = False  # the line is over LINE_TEXT: its rest goes in lines of 76
        self.dropped = False  # 8-bit octets were dropped from the current line
        self.head: bytearray | None = None  # the start of a line held (see above)

    def write(self, data: bytes) -> None:
        # most calls: a line's content, then its end
        if self.head is None and data.isascii():
            if data == b"\n":
                self.out.write(data)
                self.col, self.long, self.dropped = 0, False, False
                return
            if not self.long and b"\n" not in data and (self.col or data[:1] != b"-") and (
                    self.col + len(data) - data.endswith(b"\r") <= LINE_TEXT):
                self.out.write(data)
                self.col += len(data)
                return
        while data:
            nl = data.find(b"\n")
            piece = data if nl < 0 else data[:nl]
            if not piece.isascii():
                piece = HIGH.sub(b"", piece)
                self.dropped = True
            self._start(piece)
            if nl < 0:
                return
            self._release()
            self.out.write(b"\n")
            self.col, self.long, self.dropped = 0, False, False
            data = data[nl + 1:]

    def close(self, soft_end: bool = False) -> None:
        self._release()

    def _start(self, piece: bytes) -> None:
        """Part of a line, 8-bit octets out, without a line end: held while
        the line's start is (see the class)."""
        if self.head is None and not self.col and not self.long and piece[:1] == b"-":
            self.head = bytearray()
        if self.head is None:
            self._piece(piece)
            return
        self.head += piece
        if len(self.head) - self.head.endswith(b"\r") > LINE_TEXT:
            self._release()

    def _release(self) -> None:
        """The held start of the line goes out, without its leading "-"
        where octets were dropped from it."""
        if self.head is None:
            return
        head = bytes(self.head)
        self.head = None
        if self.dropped:
            head = head.lstrip(b"-")
            if not head:
                return  # (all "-": what follows starts the line, and is held again)
        self._piece(head)

    def _piece(self, piece: bytes) -> None:
        """Part of a line, without a line end."""
        if not self.long:
            if self.col + len(piece) - piece.endswith(b"\r") <= LINE_TEXT:
                self.out.write(piece)
                self.col += len(piece)
                return
            room = max(0, LINE_TEXT - self.col)
            self.out.write(piece[:room])
            piece = _RECUT_SKIPPED.sub(b"", piece[room:])
            self.col, self.long = LINE_TEXT, True
        else:
            piece = _RECUT_SKIPPED.sub(b"", piece)
        while piece and self.col + len(piece) > 76:
            take = max(0, 76 - self.col)
            self.out.write(piece[:take] + b"\n")
            piece = piece[take:]
            self.col = 0
        self.out.write(piece)
        self.col += len(piece)


class Base64(Copy):
    """Any octets to base64, lines of 76 characters (the last line end is
    left to the caller: it belongs to the boundary that follows)."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.buf = bytearray()
        self.first = True

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= B64_BLOCK:
            n = len(self.buf) - len(self.buf) % 57
            self._emit(bytes(self.buf[:n]))
            del self.buf[:n]

    def _emit(self, raw: bytes) -> None:
        if not raw:
            return
        encoded = b"".join(binascii.b2a_base64(raw[i:i + 57]) for i in range(0, len(raw), 57))
        if not self.first:
            self.out.write(b"\n")
        self.out.write(encoded[:-1])  # the last line end is written by the next block
        self.first = False

    def close(self, soft_end: bool = False) -> None:
        self._emit(bytes(self.buf))
        self.buf.clear()


class QuotedPrintable(Copy):
    """Text to quoted-printable (RFC 2045 6.7) with LF as the line break;
    lines of at most 76 characters, soft breaks where a block ends
    inside a line."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__(out)
        self.buf = bytearray()
        self.continued = False  # the last line written ended with a soft break

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= QP_BLOCK:
            self._flush(final=False)

    def _flush(self, final: bool, soft_end: bool = False) -> None:
        if not self.buf:
            return
        raw = bytes(self.buf)
        self.buf.clear()
        if not final:
            cut = raw.rfind(b"\n") + 1
            if cut:  # whole lines now, the rest with the next block
                self.buf += raw[cut:]
                raw = raw[:cut]
        encoded = binascii.b2a_qp(raw, istext=True)
        soft = (soft_end or not final) and not raw.endswith(b"\n")
        lines = encoded.split(b"\n")
        if soft:
            lines[-1] += b"="
        out = []
        for i, line in enumerate(lines):
            if self.continued and line.startswith(b"--"):
                # the piece after a soft break is no line of the text: it
                # must not read as a boundary delimiter (RFC 2046 5.1.1)
                line = b"=2D" + line[1:]
            if len(line) > 76 or (soft and i == len(lines) - 1):
                line = _wrap(line)
            out.append(line)
            # a line ending in "=" ends in a soft break ("=" itself is =3D)
            self.continued = line.endswith(b"=")
        encoded = b"\n".join(out)
        if soft and not final:
            # a soft break is "=" at the end of a line (RFC 2045 6.7 rule 5):
            # the line goes on in the next block, on a line of its own
            encoded += b"\n"
        self.out.write(encoded)

    def close(self, soft_end: bool = False) -> None:
        """``soft_end``: the text ends without a line end, but the file must
        end with one (a soft break ends the last line)."""
        self._flush(final=True, soft_end=soft_end)


def _wrap(line: bytes) -> bytes:
    """An encoded line re-cut into lines of at most 76 characters with soft
    breaks (binascii leaves a line at 78 when it encodes a trailing blank;
    a block ending inside a line needs a soft break of its own).  Cut by
    slices, never between the characters of an =XX ("=" always starts
    one): this runs over every line of 8-bit text a relayed message has."""
    tail = _tail(line)
    end = len(line) - len(tail)
    out = []
    i = 0
    while True:
        # a line after a soft break never starts "--" (RFC 2046 5.1.1)
        head = b"=2D" if out and line[i:i + 1] == b"-" else b""
        i += bool(head)
        room = 75 - len(head)
        if end - i <= room:
            current = head + line[i:end]
            break
        cut = i + room  # at most 75 characters, never inside an =XX
        if line[cut - 1:cut] == b"=" and _HEX2.match(line, cut, end):
            cut -= 1
        elif line[cut - 2:cut - 1] == b"=" and _HEX2.match(line, cut - 1, end):
            cut -= 2
        out.append(head + line[i:cut] + b"=")
        i = cut
    if current and len(current) + len(tail) > 76:
        out.append(current + b"=")
        current = b""
    out.append(current + tail)
    return b"\n".join(out)


def _tail(line: bytes) -> bytes:
    """What ends an encoded line and stays with its last piece: a soft
    break ("=", a bare one is never anything else), the blanks a decoder
    deletes (RFC 2045 6.7: transport padding, after a soft break too) and
    a CR before the line end.  Cut apart, "=" and its padding or CR would
    be a literal "=" and a line break."""
    end = len(line) - 1 if line.endswith(b"\r") else len(line)
    start = len(line[:end].rstrip(b" \t"))
    if line[start - 1:start] == b"=":
        start -= 1
    return line[start:]


SINKS: dict[str, type[Copy]] = {
    "copy": Copy,
    "qp": QuotedPrintable,
    "base64": Base64,
    "qp-fix": QPFix,
    "base64-fix": Base64Fix,
}
