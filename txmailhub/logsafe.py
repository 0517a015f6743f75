"""Text a client chose, made fit for one log line.

User names, HELO names and addresses come from the network.  Written into
a text log as they are, a CR or an escape sequence forges or hides lines,
and undecodable bytes (kept as surrogates) make Twisted's formatter drop
the whole event.  Every such value passes through ``loggable`` first."""

from __future__ import annotations

from typing import Any

__all__ = ["loggable", "log_failure"]


def loggable(text: str, limit: int = 200, *, ascii_only: bool = False) -> str:
    """``text`` as one unambiguous log line of at most ``limit`` characters.

    Bytes that were not UTF-8 (kept as surrogates) come out as ``\\xNN``,
    other unprintable characters as ``\\xNN`` (ASCII), ``\\uNNNN`` or
    ``\\UNNNNNNNN``, and a backslash as ``\\\\``, so that an escape the
    client typed cannot pass for one made here.  ``ascii_only`` escapes
    every non-ASCII character too: for names that should be ASCII (HELO),
    where a printable look-alike of a space could forge the text around
    them.  The limit counts what comes out; an escape is never cut."""
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    out: list[str] = []
    room = limit
    for c in text:
        piece = _escape(c, ascii_only)
        room -= len(piece)
        if room < 0:
            break
        out.append(piece)
    return "".join(out)


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
