"""What the commands write: UTF-8 octets, whatever the locale says.

Owns the one rule every command line tool of the hub (``mailhub`` and all
its subcommands, ``txmailhub-sendmail`` and ``mailq``) writes its
standard output and standard error by.  Addresses (``josé@example.org``,
an IDN), the remote replies the queue keeps and file names are text that
the locale's encoding may not hold: under ``LC_ALL=C`` (without Python's
UTF-8 mode) or ``PYTHONIOENCODING=ascii`` a listing died with a
``UnicodeEncodeError`` traceback at the first such address.

The rule, as Postfix's tools print what they hold: the text's UTF-8
octets, written as they are, so that a listing stays machine-readable
and the same whatever the locale (``grep`` for an address finds the
octets the users file, the queue and the log hold).  Octets that were
not UTF-8 (a file name, a remote's reply, kept as surrogates by
``surrogateescape``) are written back as they were; a lone surrogate
that stands for no such octet, which nothing the hub stores should
hold, is written as an escape (``\\ud800``) rather than ending the command.

One exception: a terminal whose locale is not UTF-8 (a Latin-1 or
Latin-2 console) keeps its locale's encoding, and what it cannot spell is
written as an escape (``\\xe9``, ``\\u015b``).  UTF-8 octets would show
``josé`` garbled there, and worse: UTF-8 spells many letters with an
octet from 0x80-0x9F (``ś`` is C5 9B), which an 8-bit terminal reads as a
C1 control (0x9B starts an escape sequence), so a remote reply could act
on the terminal although ``logsafe.shown`` escaped its controls.  A
person reads a terminal; a script reads a pipe or a file, which keep the
rule.

It changes only how the streams encode; it must not decide what is
written.
"""

from __future__ import annotations

import codecs
import os
import sys
from typing import TextIO

__all__ = ["ERRORS", "ArgumentNotUTF8", "error_stream", "typed_text", "utf8_output"]

#: the codec error handler the streams get (registered on import)
ERRORS = "txmailhub.octets"


def _octets(error: UnicodeError) -> tuple[bytes, int]:
    """Encode what UTF-8 could not: only lone surrogates fail it."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for c in error.object[error.start:error.end]:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # surrogateescape: an octet that was not UTF-8
            out.append(o - 0xDC00)
        else:
            out += f"\\u{o:04x}".encode("ascii")
    return bytes(out), error.end


codecs.register_error(ERRORS, _octets)


def utf8_output(*streams: TextIO) -> None:
    """Make each text stream of ``streams`` write UTF-8 by the rule above
    (``sys.stdout`` and ``sys.stderr`` at a command's start).  A stream
    that cannot be told (a ``StringIO``: it holds text, not octets) is
    left as it is; so is one already writing by the rule."""
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        encoding = getattr(stream, "encoding", None)
        if reconfigure is None or encoding is None:
            continue
        utf8 = codecs.lookup(encoding).name == "utf-8"
        if not utf8 and _terminal(stream):
            # a person's 8-bit terminal: its own encoding, escapes for the rest
            if stream.errors != "backslashreplace":
                reconfigure(errors="backslashreplace")
            continue
        if utf8 and stream.errors == ERRORS:
            continue
        reconfigure(encoding="utf-8", errors=ERRORS)


def error_stream() -> TextIO:
    """Where a command's error lines go: ``sys.stderr``, or nowhere when
    it was closed (``2>&-``; Python then sets it to ``None``, and
    ``print(file=None)`` writes to *standard output*, into a listing or
    into the SMTP replies of ``sendmail -bs``)."""
    if sys.stderr is not None:
        return sys.stderr
    return open(os.devnull, "w", encoding="utf-8")  # open for the command's lifetime


def _terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):  # closed, or no file behind it
        return False


class ArgumentNotUTF8(ValueError):
    """A name or address on the command line whose octets are no UTF-8
    text: ``mailhub`` reports it as a usage error (exit status 2)."""


def typed_text(arg: str) -> str:
    """A command line argument as the UTF-8 text it was typed in.  Under a
    locale whose encoding is not UTF-8 (``LC_ALL=C`` without Python's UTF-8
    mode), Python keeps the octets of ``josé`` as surrogates, which no
    address takes; the files, the output and the hub are UTF-8 whatever the
    locale.  Octets that are not UTF-8 (a Latin-1 ``jos\\xe9`` under a UTF-8
    or the C locale) are refused here (``ArgumentNotUTF8``): the address checks
    take the surrogates Python makes of them, and writing the users or
    aliases file with one ended in a traceback."""
    try:
        return arg.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ArgumentNotUTF8(
            f"argument {shown}: not UTF-8 text (names and addresses are UTF-8, "
            "whatever the locale)") from None
