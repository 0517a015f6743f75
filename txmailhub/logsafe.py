"""Text a client chose, made fit for one log line.

User names, HELO names, addresses and a next hop's replies come from the
network.  Written into a text log as they are, a CR or an escape
sequence forges or hides lines, and undecodable bytes (kept as
surrogates) make Twisted's formatter drop the whole event.  Every such
value passes through ``loggable`` first.

A warning a client can set off at will (one per ``RCPT``, say) passes
through a ``RepeatLimit``: once per key and interval, so that a client
cannot fill the log with it."""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CUT", "LIST_LOG_MAX", "REPLY_LOG_MAX", "RepeatLimit", "listed", "loggable",
           "log_failure", "plural", "quoted", "shown",
           "shown_lines", "shown_message", "shown_traceback", "utf8_joined"]


#: ``loggable``'s limit for a remote server's reply (the relay's log
#: lines): a real reply, a few lines of text, fits whole, but the server
#: chooses its length -- up to 200 lines of 4096 octets
#: (``txmailhub.smtp._client_reply``), and the relay logs a line per
#: recipient and attempt -- so the log keeps its first 2000 characters;
#: the queue record (``mailhub queue show``) keeps the whole reply
REPLY_LOG_MAX = 2000

#: what ends a text a log line quotes cut to its limit: a reply cut to
#: ``REPLY_LOG_MAX`` (``loggable(..., marked=True)``), the first item of
#: a list ``listed`` cut to its limit; not counted in the limit.  The
#: hub's one mark of a cut: a reply kept in the queue record
#: (``txmailhub.relay.record``) and a client's text echoed in a reply
#: (``txmailhub.smtp.replies``) end with it too
CUT = "..."

#: ``listed``'s limit for a list of recipients in one log line: the list
#: is as long as the message has recipients (``max_recipients`` of up to
#: a few hundred characters each, escaped), so one line could be hundreds
#: of kilobytes; the log keeps about its first 2000 characters and the
#: count of the rest
LIST_LOG_MAX = 2000



# a run of octets kept as surrogates (``surrogateescape``)
_ESCAPED_OCTETS = re.compile("[\udc80-\udcff]+")


def utf8_joined(text: str) -> str:
    """``text`` with each run of surrogates whose octets are UTF-8 made
    the characters they spell.  A name Python decoded with a file system
    encoding that is not UTF-8 (``LC_ALL=C`` without UTF-8 mode: ASCII)
    holds ``d\u00e9p\u00f4t`` as the surrogates of its UTF-8 octets, which the
    log would show as ``d\\xc3\\xa9p...``; it is the name the hub under a
    UTF-8 locale logs.  Text decoded as UTF-8 (a client's) is unchanged:
    its surrogates are octets that were not UTF-8, and stay so.  A run
    cannot join a character beside it (a character's UTF-8 is whole)."""
    if _ESCAPED_OCTETS.search(text) is None:
        return text
    return _ESCAPED_OCTETS.sub(
        lambda m: m.group().encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape"),
        text)


def loggable(text: str, limit: int = 200, *, ascii_only: bool = False,
             marked: bool = False) -> str:
    """``text`` as one unambiguous log line of at most ``limit`` characters.

    Bytes that were not UTF-8 (kept as surrogates) come out as ``\\xNN``
    (surrogates whose octets are UTF-8, a path the file system encoding
    could not read, as their characters: ``utf8_joined``),
    other unprintable characters as ``\\xNN`` (ASCII), ``\\uNNNN`` or
    ``\\UNNNNNNNN``, and a backslash as ``\\\\``, so that an escape the
    client typed cannot pass for one made here.  ``ascii_only`` escapes
    every non-ASCII character too: for names that should be ASCII (HELO),
    where a printable look-alike of a space could forge the text around
    them.  The limit counts what comes out; an escape is never cut.
    ``marked``: a text cut ends with ``CUT`` (which the limit does not
    count), so that what is shown does not pass for the whole (a next
    hop's reply, ``REPLY_LOG_MAX``)."""
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    out: list[str] = []
    room = limit
    for c in utf8_joined(text):
        piece = _escape(c, ascii_only)
        room -= len(piece)
        if room < 0:
            return "".join(out) + (CUT if marked else "")
        out.append(piece)
    return "".join(out)


def listed(items: Sequence[object], limit: int = LIST_LOG_MAX) -> str:
    """``items`` (addresses, or ``address: code`` pairs) as one log
    line's list, ``", "`` between them, each ``loggable``: whole items as
    long as the list stays within ``limit`` characters, then `` and N
    more`` for the ``N`` left out (which the limit does not count).  The
    first item is always there, so a list cut short names at least one
    item: one longer than ``limit`` is cut to it and ends with
    ``CUT`` (not counted either), so that the part shown does not
    pass for the whole item.  A list within the limit is
    the same text as ``loggable`` of the items joined, which it was
    before it had a limit."""
    parts = [str(i) for i in items]
    text = ", ".join(parts)
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    out: list[str] = []
    room = limit
    for part in parts:
        piece = loggable(part, 1 << 62)
        room -= len(piece) + (2 if out else 0)
        if room < 0 and out:
            break
        out.append(piece if room >= 0 else loggable(part, limit, marked=True))
    left = len(parts) - len(out)
    return ", ".join(out) + (f" and {left} more" if left else "")


# C0 controls but the tab, DEL, C1 controls; the line and paragraph
# separators (a line break to str.splitlines and many viewers); the bidi
# embeddings, overrides and isolates (they reorder what follows on screen,
# so a reply could make a queue line read as something else)
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# and, for ``shown``, a backslash that starts the text of an escape
# (``\x{``): escaped as ``\x{5C}``, so that every ``\x{`` shown is one
_SHOWN = re.compile(_CONTROLS.pattern + r"|\\(?=x\{)")


def _controls_escaped(text: str) -> str:
    return _CONTROLS.sub(lambda m: f"\\x{{{ord(m.group()):X}}}", text)


def shown(text: str) -> str:
    """``text`` a remote server wrote (a reply kept in the queue), fit to
    show a person: on a terminal (``mailhub queue``) or in a notice.

    An ESC starts a terminal escape sequence (a remote could retitle the
    admin's window, hide a line, or worse), so every C0 and C1 control but
    the tab comes out as ``\\x{HEX}``; so do U+2028 and U+2029 (a line
    break to ``str.splitlines``: one ``queue list`` line would read as
    two) and the bidi embeddings, overrides and isolates (U+202A-U+202E,
    U+2066-U+2069: they reorder the text after them on screen).  Nothing else changes: a reply
    within RFC 5321's grammar (printable ASCII and tabs, UTF-8 after
    SMTPUTF8) is shown verbatim, as ``queue list`` promises, but for the
    one backslash that would read as an escape's: before ``x{`` it is
    ``\\x{5C}`` (a reply holding the text ``\\x{1B}`` was shown as one
    holding an ESC).  Every ``\\x{HEX}`` shown is then an escape, and any
    other backslash the text's own -- the two cases ``quoted`` tells apart
    by doubling every backslash, which a reply shown verbatim cannot do.

    For a value.  A message made of values already ``quoted`` (or
    ``shown``) goes through ``shown_message``, which adds no escape of a
    backslash to theirs."""
    return _SHOWN.sub(lambda m: f"\\x{{{ord(m.group()):X}}}", text)


def shown_message(text: str) -> str:
    """``text``, a message whose values are ``quoted`` or ``shown``
    already, with its controls escaped as ``shown`` escapes them (a
    value put in as it is still cannot act on the terminal), and its
    backslashes left as those functions wrote them."""
    return _controls_escaped(text)


def shown_lines(text: str) -> str:
    """``text``, a message, with ``shown_message``'s escapes, line by
    line: a message of more than one line (a config problem with its
    hint) keeps its line breaks, and whatever a line holds stays on it."""
    return "\n".join(shown_message(line) for line in text.split("\n"))


def shown_traceback(error: BaseException) -> str:
    """``error``'s traceback as Python prints it, fit for a terminal.

    An exception's text may hold what the command read (a line of the
    message, an address): as it is, an ESC in it reaches the terminal.
    So each exception's own text, and each of its notes' lines, is
    ``shown`` (one line, as the one-line message above the traceback
    shows it: a line break in it is ``\\x{A}``), and every other line
    (the frames: file names, source lines) keeps its line breaks with
    its controls escaped (``shown_lines``).  The members of an exception
    group, and the exceptions chained to them, are printed behind a
    margin (``    | ``) that Python puts before each of their lines: their
    text is found without it, ``shown`` alike, and put back behind the
    margin, on one line."""
    top = traceback.TracebackException.from_exception(error)
    own: set[str] = set()  # the pieces that are an exception's text, in the whole chain
    todo, seen = [top], set()
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        own.update(exc.format_exception_only())
        todo.extend(e for e in (exc.__cause__, exc.__context__, *(exc.exceptions or ()))
                    if e is not None)
    out = []
    for piece in top.format():
        margin, text = _behind_margin(piece)
        body, end = (text[:-1], "\n") if text.endswith("\n") else (text, "")
        if text in own:
            out.append(margin + shown(body) + end)
        else:
            out.append(shown_lines(piece[:-1] if end else piece) + end)
    return "".join(out)


# the margin of a group member's lines (``traceback``'s ``_ExceptionPrintContext``:
# two blanks per level of nesting, then "| " or "+ ")
_MARGIN = re.compile(r"(?: {2})*[|+] ")


def _behind_margin(piece: str) -> tuple[str, str]:
    """A piece of a formatted traceback as (its margin, its text): a
    group member's pieces have the margin before each of their lines
    (``textwrap.indent``, which cuts the lines as ``str.splitlines``
    does), a piece outside any group none (``""``, the piece)."""
    found = _MARGIN.match(piece)
    if found is None:
        return "", piece
    margin = found.group()
    lines = piece.splitlines(keepends=True)
    if not all(line.startswith(margin) for line in lines):
        return "", piece
    return margin, "".join(line[len(margin):] for line in lines)


def quoted(value: object) -> str:
    """A name or value read from a file or an argument, in quotes, for a
    message that refuses or names it (``address 'x\\x{1B}y' contains ...``).

    The one form of escape the hub shows a person, ``shown``'s
    ``\\x{HEX}``, for every character that would not print (Python's
    ``repr`` wrote ``'\\x1b'`` there, a users file line ``\\x{1B}``, and
    ``str.isprintable`` counts a zero-width space or a soft hyphen among
    the invisible ones).  A backslash is doubled and a quote escaped, as
    ``repr`` did: else a name holding the four characters ``\\x{1B}``
    printed as one holding an ESC, and ``it's`` read as a name ended
    early.  Anything else is its ``repr``, escaped alike."""
    if not isinstance(value, str):
        return shown(repr(value))
    value = value.replace("\\", "\\\\").replace("'", "\\'")
    if not value.isprintable():
        value = "".join(c if c.isprintable() else f"\\x{{{ord(c):X}}}" for c in value)
    return f"'{_controls_escaped(value)}'"


def plural(count: int, one: str, many: str) -> str:
    """``one`` for a count of 1, else ``many``: a log line's noun after its
    count ("removed 1 empty spool file"), a field of its own beside
    ``count`` so that the event keeps the number.  Both forms are given
    whole (alias, aliases), and the line stays greppable by the singular."""
    return one if count == 1 else many


def _escape(c: str, ascii_only: bool) -> str:
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: a byte that was not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if c == "\\":
        return "\\\\"
    if c.isprintable() and (o < 0x80 or not ascii_only):
        return c
    if o < 0x80:
        return f"\\x{o:02x}"
    # \xNN is kept for bytes that were not UTF-8: a character is \uNNNN
    # even below U+0100, so that "caf\xe9" (a Latin-1 byte) and "caf\u00e9"
    # (the letter) do not read the same
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def log_failure(logger: Any, failure: Any, text: str, **fields: Any) -> None:
    """Log ``failure`` (a ``twisted.python.failure.Failure``) under ``text``.

    An ``OSError`` (a full disk, a quota, a permission) is the operator's
    to fix, not a bug: one error line naming it, so that a full disk does
    not write a traceback per message.  Anything else gets its traceback."""
    if isinstance(failure.value, OSError):
        logger.error(text + ": {error}", error=str(failure.value), **fields)
    else:
        logger.failure(text, failure, **fields)


class RepeatLimit:
    """Whether a warning about ``key`` (a mailbox, say) is due: at most
    once per ``interval`` seconds for each key, with a count of the times
    it was held back in between.  At most ``keep`` keys are remembered
    (the one said longest ago is forgotten first, and may then be said
    again early): the memory stays bounded whatever a client names."""

    def __init__(self, interval: float, keep: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.interval = interval
        self.keep = keep
        self.clock = clock
        # key -> (when it was last said, times held back since); in the
        # order they were last said
        self._said: dict[str, tuple[float, int]] = {}

    def due(self, key: str) -> int | None:
        """``None``: said less than ``interval`` ago, so keep quiet (this
        time is counted).  Else say it now: the number of times it was
        held back since it was last said (0 the first time)."""
        now = self.clock()
        said = self._said
        held = 0
        last = said.get(key)
        if last is not None:
            when, held = last
            # (a time in the future: the clock was set back; say it, or it
            # would stay quiet until the clock caught up)
            if 0 <= now - when < self.interval:
                said[key] = (when, held + 1)  # keeps its place in the order
                return None
            del said[key]
        if len(said) >= self.keep:
            del said[next(iter(said))]
        said[key] = (now, 0)
        return held

    def __len__(self) -> int:
        return len(self._said)
