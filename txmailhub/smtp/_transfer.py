"""Message transfer in the SMTP engine: DATA and BDAT (RFC 5321, RFC 3030).

Owns the switch from command lines to message data and back: the
``StartMessage`` request and its answers, feeding the readers of ``_data``
(dot-stuffed DATA, counted BDAT chunks), the end of a message
(``MessageComplete`` or ``MessageAborted``) and BDAT chunks that arrive
out of sequence (read to their end, then refused, so the data never
turns into commands).  A part of ``SMTPServer`` (``server``), which it
relies on for the session state, replies and events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from txmailhub.envelope import Envelope
from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp import replies
from txmailhub.smtp._data import ChunkReader, DotReader
from txmailhub.smtp._parse import ascii_upper
from txmailhub.smtp._part import EnginePart
from txmailhub.smtp._states import State
from txmailhub.smtp.events import MessageAborted, MessageComplete, StartMessage
from txmailhub.smtp.reply import Reply

__all__ = ["MessageTransfer"]

# The size of a BDAT line refused before its verb is read: the digits
# after the verb (a CR, as a bare CR's line has it, counts as a blank)
_BDAT_SIZE = re.compile(rb"[ \t]*BDAT[ \t\r]+([0-9]+)", re.IGNORECASE)
# Such a line whose verb is BDAT (ended where the engine ends a verb; a CR
# as above), whatever follows it
_BDAT_VERB = re.compile(rb"[ \t]*BDAT(?:[ \t\r]|\Z)", re.IGNORECASE)
# The blanks of a BDAT line are SP and HTAB (RFC 3030 2: "BDAT" SP
# chunk-size [ SP end-marker]); a line the engine refuses is still read
# for the size a client that splits at any white space (str.split(), C's
# isspace) sends: a VT, FF, FS..US or a Unicode blank where a blank
# belongs (``BDAT 3<VT>LAST``, ``BDAT<FF>3``).  Only to drain that chunk.
# White space is what such a client takes: ``str.isspace`` (``\s``: C's
# isspace and FS..US, NEL, Unicode blanks).  A NUL or another control
# (``BDAT<NUL>3``, ``BDAT 3<SOH>``) is no blank to any of them, so no size
# is read across it: taking one for a blank would read as a chunk
# octets that no client announced (after a line refused for its NUL,
# the command that follows it).
_LOOSE_BLANKS = r"\s"
_LOOSE_SIZE = re.compile(rf"{_LOOSE_BLANKS}*([0-9]+)(?:{_LOOSE_BLANKS}|\Z)")
_LOOSE_BDAT = re.compile(rf"[Bb][Dd][Aa][Tt]{_LOOSE_BLANKS}+([0-9]+)(?:{_LOOSE_BLANKS}|\Z)")

#: the most digits a BDAT chunk size may have past its leading zeros: no
#: real chunk comes near 10**20 octets.  The line limit alone does not
#: bound the digits (an embedder may raise ``max_line``), and ``int()``
#: of more than Python's 4300 digits raises ValueError
MAX_SIZE_DIGITS = 20

#: what a longer size is read as: more octets than a client can send in
#: a session, so that its chunk is drained, as any chunk refused for its
#: size is, and never read as commands
UNREAL_SIZE = 10 ** MAX_SIZE_DIGITS


def chunk_size(digits: str) -> int:
    """The chunk size ``digits`` (ASCII digits) names, or ``UNREAL_SIZE``
    for one of more than ``MAX_SIZE_DIGITS`` digits past its leading
    zeros (those count towards ``int()``'s limit too)."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_SIZE_DIGITS:
        return UNREAL_SIZE
    return int(significant or "0")


class MessageTransfer(EnginePart):
    """DATA and BDAT for ``SMTPServer`` (a mixin: it uses the engine's
    ``state``, ``config``, ``reply``, ``_to``, ``_answer``, ``_request``,
    ``_envelope``, ``_reset_transaction`` and the transaction fields)."""

    _bdat_draining: bool  # defaults in SMTPServer
    _bdat_failed: bool
    _data_envelope: Envelope | None  # set by the engine's _reset_transaction
    _reader: DotReader | ChunkReader | None
    _chunks: ChunkReader | None
    _bdat_first: tuple[int, bool] | None
    _used_bdat: bool
    _buf: bytes
    _events: list[Any]
    _chunk_size: int

    # Answers to StartMessage.

    def message_started(self, sink: Callable[[bytes], object]) -> None:
        self._answer(StartMessage)
        if self.state is State.RCPT and self._bdat_first is not None:
            size, last = self._bdat_first
            self._bdat_first = None
            self._reader = ChunkReader(sink, self.config.max_message_size)
            self._reader.start(size, last)
            self._to(State.BDAT)
        else:
            self._reader = DotReader(sink, self.config.max_message_size)
            self._to(State.DATA)
            self.reply(replies.DATA_START)

    def message_refused(self, reply: Reply) -> None:
        self._answer(StartMessage)
        if self._bdat_first is not None:  # the chunk is on its way: drain it
            size, last = self._bdat_first
            self._bdat_first = None
            self._reader = ChunkReader(None, self.config.max_message_size)
            self._reader.refuse(reply)
            self._reader.start(size, last)
            self._to(State.BDAT)
            return
        self.reply(reply)
        self._reset_transaction()
        self._to(State.READY)

    def fail_message(self, reply: Reply) -> None:
        """The sink broke (disk full...): refuse the message, keep draining."""
        if self._reader is not None:
            self._reader.fail(reply)

    # Data.

    def _feed_reader(self) -> None:
        reader = self._reader
        assert reader is not None
        rest = reader.feed(self._buf)
        if rest is None:
            self._buf = b""
            return
        self._buf = rest
        if isinstance(reader, DotReader):
            self._reader = None
            self._end_of_message(reader.error, reader.size)
            return
        # The end of one BDAT chunk.
        if self._bdat_draining:
            self._bdat_draining = False
            self._reader = None
            self.reply(reader.error or replies.BAD_SEQUENCE)
            return
        if reader.error is not None:
            # The unfinished line is checked too, or the reply would depend
            # on where the network cut the chunk (see _data._PRECEDENCE).
            self._reader = None
            error = reader.finish() if reader.last else reader.settle()
            self._end_of_message(error, reader.size)
            self._bdat_failed = not reader.last
            return
        if not reader.last:
            self._reader = None
            self._chunks = reader  # parked until the next BDAT
            self._to(State.RCPT)
            self.reply(replies.bdat_chunk(self._chunk_size))
            if not self._chunk_size:
                # an empty chunk that does not end the message moves no
                # mail: without this a client pipelining "BDAT 0" kept the
                # hub busy for the whole idle timeout (max_junk_commands)
                self._count_junk()
            return
        self._reader = None
        self._end_of_message(reader.finish(), reader.size)

    def _end_of_message(self, error: Reply | None, size: int) -> None:
        env = self._data_envelope or self._envelope()
        if error is not None:
            self._events.append(MessageAborted(env, error, size))
            self.reply(error)
            self._reset_transaction()
            self._to(State.READY)
            return
        self._request(MessageComplete(env, size))

    # Commands.

    def _data(self, arg: str) -> None:
        if arg:
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT)
        if self._used_bdat:
            raise RemoteProtocolError(replies.BDAT_AFTER_DATA)
        # Nothing can change the envelope until the end of the data: the
        # end of message reuses it.
        self._data_envelope = env = self._envelope()
        self._request(StartMessage(env))

    @staticmethod
    def _bdat_args(arg: str) -> tuple[int | None, bool]:
        # RFC 3030: chunk-size = 1*DIGIT, however many.  A size we refused
        # for its length would leave the chunk to be read as commands; one
        # too big for max_message_size is drained and refused instead.  One
        # of more digits than any real chunk has is refused as a line we
        # cannot take (``_bad_bdat``: its chunk drained, then BDAT_BAD_SIZE),
        # without int() of all its digits (``chunk_size``).
        # split at SP and HTAB only: "BDAT 3<VT>LAST" is no LAST chunk
        parts = arg.replace("\t", " ").split(" ")
        parts = [p for p in parts if p] if "" in parts else parts
        if not parts or len(parts) > 2 or not parts[0].isascii() or not parts[0].isdigit():
            return None, False
        if len(parts) == 2 and ascii_upper(parts[1]) != "LAST":
            return None, False
        size = chunk_size(parts[0])
        if size >= UNREAL_SIZE:
            return None, False
        return size, len(parts) == 2

    @staticmethod
    def _readable_size(arg: str) -> int | None:
        """The size of a BDAT line that ``_bdat_args`` refused, when it can
        be read all the same (``BDAT 6 LASTX``, ``BDAT 3<VT>LAST``): the
        ASCII digits the argument starts with, any white space before and
        after them (not ``6x``: no number a client sends).  The client
        sends that many octets whatever we answer."""
        m = _LOOSE_SIZE.match(arg)
        return None if m is None else chunk_size(m.group(1))

    def _bad_bdat(self, arg: str) -> None:
        """A BDAT line we cannot take: ``501``.  When its size can be read,
        only once its chunk has been read, so that the chunk never runs as
        commands.  Inside a transaction the refused chunk ends it, as any
        failed chunk does (RFC 3030 2: the transaction "should be considered
        failed"): the chunks pipelined after it are discarded, never joined
        into a message that lacks this one."""
        size = self._readable_size(arg)
        if size is None:
            raise RemoteProtocolError(replies.BDAT_BAD_SIZE)
        self._refuse_chunk(size, replies.BDAT_BAD_SIZE)

    def _refuse_chunk(self, size: int, refusal: Reply) -> None:
        """Read the ``size`` octets of a BDAT line refused for itself, then
        answer ``refusal``; inside a transaction that ends it."""
        if self.state is State.RCPT:
            if self._chunks is not None:
                self._events.append(MessageAborted(self._envelope(), refusal,
                                                   self._chunks.size))
            self._reset_transaction()
            self._to(State.READY)
            self._bdat_failed = True
        self._discard(size, False, refusal)

    def _unreadable_line(self, line: bytes, refusal: Reply) -> None:
        """A command line refused before its verb is read (a NUL, a bare
        CR, octets that are not UTF-8): ``refusal``.  A BDAT line's chunk
        follows whatever we answer, so when the line names a size (the
        digits after ``BDAT``, whatever follows them; or after a blank a
        client that splits at any white space takes, as ``_unknown_command``
        reads ``BDAT<FF>3``) the chunk is read to its end first and refused
        then, as ``_bad_bdat`` does: the chunk's octets never run as
        commands."""
        bdat = _BDAT_SIZE.match(line)
        size = None if bdat is None else bdat.group(1).decode("ascii")
        if size is None:
            # the octets that are not UTF-8 stand in as U+FFFD, no blank
            loose = _LOOSE_BDAT.match(line.decode("utf-8", "replace").lstrip(" \t"))
            if loose is not None:
                size = loose.group(1)
                if _BDAT_VERB.match(line) is None:
                    # no verb the hub has (BDAT<FF>3): another command, as
                    # ``_line`` takes one before ``_unknown_command``, so
                    # the chunks pipelined after a failed one are over
                    # (whether the line is UTF-8 changes only its refusal)
                    self._bdat_failed = False
        if size is not None:
            # outside the engine's guard of a command (``_line``): int() of
            # a digit run past Python's limit raised ValueError out of
            # ``receive_data``; ``chunk_size`` bounds it
            self._refuse_chunk(chunk_size(size), refusal)
            return
        self._bdat_failed = False  # another command: the failed chunks are over
        self.reply(refusal)

    def _unknown_command(self, verb: str, arg: str) -> None:
        """A verb the engine does not have: ``500``.  When it is BDAT and a
        size joined by a blank that is no SP or HTAB (``BDAT<FF>3``), a
        client that splits at any white space sends that chunk: it is read
        to its end and refused then, never run as commands."""
        bdat = _LOOSE_BDAT.match(f"{verb} {arg}") if verb[:4].upper() == "BDAT" else None
        if bdat is None:
            self.reply(replies.UNKNOWN_COMMAND)
            return
        self._refuse_chunk(chunk_size(bdat.group(1)), replies.UNKNOWN_COMMAND)

    def _discard(self, size: int, last: bool, refusal: Reply) -> None:
        """Read a chunk of ``size`` octets to its end and answer ``refusal``."""
        self._reader = ChunkReader(None, self.config.max_message_size)
        self._reader.refuse(refusal)
        self._reader.start(size, last)
        self._bdat_draining = True

    def _bdat(self, arg: str) -> None:
        size, last = self._bdat_args(arg)
        if size is None:
            self._bad_bdat(arg)
            return
        self._chunk_size = size
        if self._chunks is not None:  # a later chunk of the same message
            self._reader, self._chunks = self._chunks, None
            self._reader.start(size, last)
            self._to(State.BDAT)
            return
        self._used_bdat = True
        self._bdat_first = (size, last)
        self._request(StartMessage(self._envelope()))

    def _abort_message(self) -> None:
        if self._chunks is not None:  # BDAT chunks received, no LAST yet
            self._events.append(MessageAborted(self._envelope(), replies.RESET,
                                               self._chunks.size))

    def _drain_chunk(self, arg: str) -> None:
        """BDAT out of sequence: the chunk follows the command whatever we
        answer, so read it to its end and refuse it then."""
        size, last = self._bdat_args(arg)
        if size is None:
            try:
                self._bad_bdat(arg)
            except RemoteProtocolError as e:
                self.reply(e.reply)
            return
        if self._bdat_failed:
            # RFC 3030 2: the server "MUST be prepared to accept and discard
            # additional BDAT chunks already in the pipeline after the failed
            # BDAT": no error of the client's (max_errors), but no free
            # command either (max_junk_commands)
            refusal = replies.BDAT_DISCARDED
            self._bdat_failed = not last
            self._count_junk()
        else:
            refusal = (replies.RCPT_NEEDED if self.state is State.MAIL
                       else replies.HELO_REQUIRED if self.state is State.INIT
                       else replies.MAIL_NEEDED)
            # this BDAT is the failed one: the chunks pipelined after it
            # (the RCPTs they followed were refused) are discarded too
            self._bdat_failed = not last
        self._discard(size, last, refusal)
