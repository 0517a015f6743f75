"""Message data on the wire: reading DATA/BDAT bodies, writing them back.

Owns the transformation between the SMTP wire form of a message body
(CRLF lines, dot-stuffed for DATA) and the stored form (LF lines, no
stuffing), in both directions:

* ``DotReader`` reads a DATA body, ``ChunkReader`` a BDAT chunk (RFC 3030).
  Both work on whole buffers with ``bytes.find``/``replace``/``count``;
  there is no Python call per line.  They write the stored form to a sink
  (the spool writer's ``write``) and keep every problem they find as a
  ``Reply``, while they keep reading to the real end of the data; the
  one answered is chosen by a fixed precedence (``_PRECEDENCE``).
* ``DotStuffer`` (and the one-shot ``stuff``) turn stored data back into
  the wire form, for the SMTP client (relay).

Rules, enforced here and documented in docs/smtp.rst:

* Only CRLF "." CRLF ends DATA.  ``LF . LF``, ``CR . CR`` and every mix
  are ordinary data (they defeat SMTP smuggling, CVE-2023-51764).
* Bare LF and bare CR (RFC 5321 2.3.8): the message is refused with
  550 5.6.11 once the data has been read to its real end; nothing is
  stored.  We never guess what a bare line ending was meant to be.
* Sending, a bare CR in stored data (a queue record not written by the
  hub) goes as a line end, CRLF, and is dot-stuffed as one (RFC 5321
  2.3.8 lets a client send CR only so; documented in docs/relay.rst).
* A text line longer than 1000 octets with its CRLF (RFC 5321 4.5.3.1.6;
  the transparency dot is not counted) refuses the message (500 5.5.2),
  again only at the real end of the data: the session never drops back
  into command mode in the middle of a body.  A line that never ends costs
  at most ``MAX_LINE`` octets of memory.
* Over ``max_size`` octets (RFC 1870's size: CRLF counted, transparency
  dots and the end-of-data line not): 552 5.3.4 at the end.

This module must not know about sessions, files or the reactor.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from txmailhub.smtp import replies
from txmailhub.smtp.reply import Reply

__all__ = [
    "MAX_LINE",
    "ChunkReader",
    "DotReader",
    "DotStuffer",
    "stuff",
]

MAX_LINE = 1000  # octets including CRLF, not counting a transparency dot
_TEXT = MAX_LINE - 2  # octets of text before the CRLF

# Octets are tested as ints (``CR in data``) and longer needles with
# find(): ``b"x" in data`` first tries the needle as an int and pays
# for a TypeError on every call.
CR = 0x0D
# A line that starts with "."?  sre looks for the LF and checks the next
# octet: about 0.6x the time of bytes.find or replace for this two-octet
# needle, whose first octet starts every line.
_LF_DOT = re.compile(rb"\n\.").search
# A CR that is not the first half of a CRLF pair: sre stops at each CR
# and looks at the next octet, about half the time of counting the
# two-octet pairs with bytes.count.
_BARE_CR = re.compile(rb"\r(?!\n)").search

Sink = Callable[[bytes], object]


# A body can break several rules at once.  Which one is answered must not
# depend on how TCP cut the stream, so every rule is checked to the real end
# and the reply is chosen by this fixed precedence (the lower number wins),
# not by which problem happened to be seen first.  The size comes last among
# the content rules: the size of a body with bare line ends or an over-long
# line is not well defined (its lines are not counted), so it is only
# decided for bodies that break neither.  Anything else (the spool failed:
# 451) comes after every content rule: a client should not retry a message
# that cannot be accepted anyway.
_PRECEDENCE = {replies.MESSAGE_BARE_CR_LF: 1, replies.MESSAGE_LINE_TOO_LONG: 2,
               replies.MESSAGE_TOO_BIG: 3}
_BARE = _PRECEDENCE[replies.MESSAGE_BARE_CR_LF]
_OTHER = 4  # a failure from outside the data (the spool)
_REFUSED = 0  # the message was refused before its data: nothing overrides that


class _BodyFilter:
    """Checks and converts complete CRLF lines; shared by both readers."""

    __slots__ = ("_precedence", "error", "max_size", "sink", "size", "stuffed")

    def __init__(self, sink: Sink | None, max_size: int, stuffed: bool) -> None:
        self.sink = sink
        self.max_size = max_size
        self.size = 0
        self.error: Reply | None = None
        self._precedence = _OTHER + 1
        # DATA lines may carry a transparency dot that is not part of the
        # text; BDAT chunks carry none.
        self.stuffed = stuffed

    def fail(self, reply: Reply, precedence: int | None = None) -> None:
        """Refuse the message; the reply is the one of the lowest
        precedence number seen (``_PRECEDENCE``)."""
        if precedence is None:
            precedence = _PRECEDENCE.get(reply, _OTHER)
        if precedence < self._precedence:
            self.error, self._precedence = reply, precedence
        self.sink = None

    def block(self, block: bytes) -> bytes | None:
        """Check a run of complete wire lines (ending with LF).

        Returns the block with CRLF turned into LF, or None when the block
        itself breaks a line rule.  Checks go on after an error (see
        ``_PRECEDENCE``); the caller stores only while ``sink`` is set."""
        self.size += len(block)
        if self._precedence <= _BARE:
            # The answer cannot change any more (a bare line end, or refused
            # before the data): counting the octets is all that is left.
            return None
        if self.size > self.max_size and (
            # RFC 1870 does not count transparency dots; DotReader takes
            # them off ``size`` as it unstuffs, this block's are still in.
            not self.stuffed
            or self.size - block.count(b"\n.") - (block[:1] == b".") > self.max_size
        ):
            self.fail(replies.MESSAGE_TOO_BIG)
        # CRLF -> LF by dropping every CR: a one-octet replace is several
        # times faster than a two-octet one.  It is right only when every
        # CR and every LF belongs to a CRLF pair: as many CRs as LFs as
        # pairs, or there was a bare CR or a bare LF.
        out = block.replace(b"\r", b"")
        crs = len(block) - len(out)
        # (as many CRLF pairs as CRs, when no CR stands alone)
        if crs != out.count(b"\n") or _BARE_CR(block) is not None:
            # Nothing else is checked from here on: no other rule can win
            # over this one (_PRECEDENCE).  Checking each line's length, as
            # was done, made a body of bare LFs cost a Python call per line.
            self.fail(replies.MESSAGE_BARE_CR_LF)
            return None
        # A line is a piece of split(LF): at most _TEXT octets before its
        # CRLF, plus (DATA only) a transparency dot that does not count.
        if len(out) > _TEXT and _long_piece(out):
            if any(map(self._too_long, out.split(b"\n"))):
                self.fail(replies.MESSAGE_LINE_TOO_LONG)
                return None
        return out

    def _too_long(self, text: bytes) -> bool:
        # At most _TEXT octets, plus (DATA only) a transparency dot.
        n = len(text)
        return n > _TEXT and (not self.stuffed or n > _TEXT + 1 or text[:1] != b".")

    def overflow(self, dropped: bytes) -> None:
        """An unfinished line grew past ``MAX_LINE``; ``dropped`` (no LF in
        it) is thrown away.  Each CR in it is bare: no LF follows it."""
        self.size += len(dropped)
        if CR in dropped:
            self.fail(replies.MESSAGE_BARE_CR_LF)
        self.fail(replies.MESSAGE_LINE_TOO_LONG)


def _long_piece(data: bytes) -> bool:
    """Whether a piece of ``data.split(LF)`` is longer than ``_TEXT``.

    Such a piece is a run of at least ``_TEXT + 1`` octets without an LF,
    and every such run covers one of the offsets 0, _TEXT + 1, 2 * (_TEXT
    + 1)...: only the runs around those offsets are measured (two C
    searches each), instead of splitting the whole block into a list of
    lines (a 100 KiB message is some 1,300 of them; about half the time)."""
    n = len(data)
    find = data.find
    rfind = data.rfind
    for at in range(0, n, _TEXT + 1):
        if data[at] == 10:  # LF
            continue
        end = find(b"\n", at)
        if end < 0:
            end = n
        if end - rfind(b"\n", 0, at) - 1 > _TEXT:
            return True
    return False


class DotReader:
    """Reads one DATA body: dot-stuffed CRLF lines up to CRLF "." CRLF.

    ``feed(data)`` returns ``None`` while the body goes on, and the bytes
    that follow the end-of-data line once it has been seen (possibly
    ``b""``; they are the next pipelined commands).  ``error`` is then the
    reply that refuses the message, or ``None`` if it may be accepted;
    ``size`` is the number of octets received.  Stored data goes to
    ``sink`` as it is read, in pieces of whole lines.
    """

    __slots__ = ("_after_crlf", "_filter", "_pending")

    def __init__(self, sink: Sink | None, max_size: int) -> None:
        self._filter = _BodyFilter(sink, max_size, stuffed=True)
        self._pending = b""  # the start of an unfinished line (< MAX_LINE)
        self._after_crlf = True  # _pending starts right after a real CRLF

    @property
    def error(self) -> Reply | None:
        return self._filter.error

    @property
    def size(self) -> int:
        return self._filter.size

    def fail(self, reply: Reply) -> None:
        """Refuse the message (e.g. the spool failed); keep draining.  A
        body that breaks a rule of its own gets that rule's reply instead."""
        self._filter.fail(reply)

    def feed(self, data: bytes) -> bytes | None:
        buf = self._pending + data if self._pending else data
        if self._after_crlf and buf[:3] == b".\r\n":
            self._pending = b""
            return buf[3:]
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            self._emit(buf[: end + 2])
            self._pending = b""
            return buf[end + 5 :]
        cut = buf.rfind(b"\n") + 1
        if cut:
            self._emit(buf[:cut])
            self._after_crlf = cut >= 2 and buf[cut - 2] == 13
            buf = buf[cut:]
        if len(buf) > MAX_LINE:
            # Keep only what could still start the end marker.
            self._filter.overflow(buf[:-1])
            buf = buf[-1:]
            self._after_crlf = False
        self._pending = buf
        return None

    def _emit(self, block: bytes) -> None:
        f = self._filter
        out = f.block(block)
        if out is None:
            return
        # Unstuffed even when nothing is stored any more (the spool
        # failed): the size, which RFC 1870 counts without the dots,
        # must come out the same.
        # Dot-unstuffing: a line that starts with "." loses that dot.
        n = len(out)
        if self._after_crlf and out[:1] == b".":
            out = out[1:]
        if _LF_DOT(out) is not None:
            out = out.replace(b"\n.", b"\n")
        f.size -= n - len(out)  # RFC 1870: the size leaves out transparency dots
        if out and f.sink is not None:
            f.sink(out)


class ChunkReader:
    """Reads the octets of BDAT chunks (RFC 3030): no stuffing, no marker.

    ``start(size, last)`` announces a chunk; ``feed(data)`` consumes up to
    the announced size and returns the bytes after the chunk once it is
    complete (``None`` while more are needed).  Line rules and the size
    limit are the same as for DATA; ``finish()`` checks the message ends
    with a complete line and returns the refusing reply, if any.
    """

    __slots__ = ("_filter", "_pending", "_remaining", "last")

    def __init__(self, sink: Sink | None, max_size: int) -> None:
        self._filter = _BodyFilter(sink, max_size, stuffed=False)
        self._remaining = 0
        self._pending = b""  # an unfinished line (< MAX_LINE)
        self.last = False

    @property
    def error(self) -> Reply | None:
        return self._filter.error

    @property
    def size(self) -> int:
        return self._filter.size + len(self._pending)

    def fail(self, reply: Reply) -> None:
        """As ``DotReader.fail``."""
        self._filter.fail(reply)

    def refuse(self, reply: Reply) -> None:
        """Drain the chunk and answer ``reply`` whatever it holds (the
        message was refused before its data)."""
        self._filter.fail(reply, _REFUSED)

    def start(self, size: int, last: bool) -> None:
        self._remaining = size
        self.last = last

    @property
    def remaining(self) -> int:
        return self._remaining

    def feed(self, data: bytes) -> bytes | None:
        take = self._remaining
        if len(data) < take:
            piece, rest = data, None
        else:
            piece, rest = data[:take], data[take:]
        self._remaining -= len(piece)
        buf = self._pending + piece if self._pending else piece
        cut = buf.rfind(b"\n") + 1
        if cut:
            out = self._filter.block(buf[:cut])
            if out is not None and self._filter.sink is not None:
                self._filter.sink(out)
            buf = buf[cut:]
        if len(buf) > MAX_LINE:
            # The last octet stays: a CR there may meet its LF next.
            self._filter.overflow(buf[:-1])
            buf = buf[-1:]
        self._pending = buf
        if self._remaining:
            return None
        return rest if rest is not None else b""

    def settle(self) -> Reply | None:
        """The message ends after a chunk that is not the LAST one (the
        chunk broke a rule): every CR of the unfinished line is bare but a
        final one, whose LF could have come with the next chunk.  Returns
        the refusing reply, chosen among all the problems found."""
        tail, self._pending = self._pending, b""
        self._filter.size += len(tail)
        if CR in tail[:-1]:
            self._filter.fail(replies.MESSAGE_BARE_CR_LF)
        return self._filter.error

    def finish(self) -> Reply | None:
        """After the LAST chunk: flush an unterminated last line."""
        if self._pending:
            tail = self._pending
            self._pending = b""
            if CR in tail:
                self._filter.size += len(tail)
                self._filter.fail(replies.MESSAGE_BARE_CR_LF)
            else:
                # RFC 3030 does not require a final CRLF; store one.  It is
                # not counted: RFC 1870's size is what the client sent.
                self._filter.size -= 2
                out = self._filter.block(tail + b"\r\n")
                if out is not None and self._filter.sink is not None:
                    self._filter.sink(out)
        return self._filter.error


# --- the other direction: stored form -> wire form ---------------------------


class DotStuffer:
    """Turns stored message data (LF lines) into a DATA body on the wire.

    Feed the stored bytes in any pieces to ``encode``; each call returns
    the wire bytes for them (CRLF line ends, a "." doubled at the start of
    every line).  ``finish()`` returns the end-of-data line, preceded by a
    CRLF when the data did not end with a line end.  CRLF in the input is
    accepted too (it is not doubled).  A bare CR -- one no LF follows,
    which only a queue record edited by hand or written by another program
    holds: the hub's server refuses such data -- ends a line too, a CRLF
    on the wire, and is dot-stuffed as any line start: RFC 5321 2.3.8 lets
    a client send CR "only as a <CRLF> sequence", and a CR passed through
    is what SMTP smuggling rides on (a next hop reading ``<CR>.<CR>`` as
    the end of the data).  A line end rather than a refusal: the message
    was accepted, and a bounce for an octet the sender may never have
    written helps nobody.  Used by the SMTP client::

        stuffer = DotStuffer()
        for chunk in chunks:
            transport.write(stuffer.encode(chunk))
        transport.write(stuffer.finish())
    """

    __slots__ = ("_at_line_start", "_cr")

    def __init__(self) -> None:
        self._at_line_start = True
        self._cr = False  # the previous piece ended with CR

    def encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._cr = True
            if not data:
                return b""
        if CR in data:  # (stored data has none: one scan, and no more, for it)
            # CRLF a line end, and each CR left a bare one: one too (see above)
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if _LF_DOT(data) is not None:
            data = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            data = b"." + data
        self._at_line_start = data[-1:] == b"\n"
        return data.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        head = b""
        if self._cr:
            head = b"\r\n"  # a lone trailing CR: end the line cleanly
            self._cr = False
            self._at_line_start = True
        if self._at_line_start:
            return head + b".\r\n"
        return head + b"\r\n.\r\n"


def stuff(data: bytes) -> bytes:
    """The whole DATA body for stored ``data``, end-of-data line included."""
    s = DotStuffer()
    return s.encode(data) + s.finish()

