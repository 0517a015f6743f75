"""Text a client chose, made fit for one log line.

User names, HELO names and addresses come from the network.  Written into
a text log as they are, a CR or an escape sequence forges or hides lines,
and undecodable bytes (kept as surrogates) make Twisted's formatter drop
the whole event.  Every such value passes through ``loggable`` first."""

from __future__ import annotations

__all__ = ["loggable"]


def loggable(text: str, limit: int = 200) -> str:
    """``text`` with undecodable bytes as ``\\xNN``, control characters as
    ``\\xNN``, and at most ``limit`` characters."""
    try:  # bytes that were not UTF-8 come back as bytes, then as \xNN
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
