"""Text a client chose, made fit for one log line.

User names, HELO names and addresses come from the network.  Written into
a text log as they are, a CR or an escape sequence forges or hides lines,
and undecodable bytes (kept as surrogates) make Twisted's formatter drop
the whole event.  Every such value passes through ``loggable`` first."""

from __future__ import annotations

from typing import Any

__all__ = ["loggable", "log_failure"]


def loggable(text: str, limit: int = 200) -> str:
    """``text`` with undecodable bytes as ``\\xNN``, control characters as
    ``\\xNN``, and at most ``limit`` characters."""
    try:  # bytes that were not UTF-8 come back as bytes, then as \xNN
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


def log_failure(logger: Any, failure: Any, text: str, **fields: Any) -> None:
    """Log ``failure`` (a ``twisted.python.failure.Failure``) under ``text``.

    An ``OSError`` (a full disk, a quota, a permission) is the operator's
    to fix, not a bug: one error line naming it, so that a full disk does
    not write a traceback per message.  Anything else gets its traceback."""
    if isinstance(failure.value, OSError):
        logger.error(text + ": {error}", error=str(failure.value), **fields)
    else:
        logger.failure(text, failure, **fields)
