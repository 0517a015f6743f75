"""The common spellings of a listen endpoint -- ``tcp:PORT``,
``tcp:PORT:interface=ADDR``, ``tcp6:...``, ``unix:PATH`` -- read without
importing Twisted's endpoint machinery.

Why: ``txmailhub-sendmail`` reads ``[smtp] listen`` on every run (cron
sends mail often), and ``twisted.internet.endpoints`` costs more to import
than the rest of the command.  The hub itself imports Twisted anyway.

Owns reading a description exactly as ``serverFromString`` does: ``:``
between arguments, ``name=value`` for a named one (an ``=`` inside a value
is text), a backslash taking the next character as it is, the arguments
of each type in Twisted's positional order with its defaults.  What it is
not sure of -- an unknown or repeated argument, a number ``int()`` would
read that is not plain ASCII digits, the type named after an option -- is
``None``: the caller asks Twisted then, so every string means what it
meant before, and every error message stays the one Twisted's parse gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ListenSpec", "parse_listen"]


@dataclass(frozen=True)
class ListenSpec:
    """What a listen endpoint binds: a TCP port on an interface (``""``
    for every IPv4 address, ``"::"`` the tcp6 default) or a socket path."""

    kind: str            # "tcp", "tcp6" or "unix"
    port: int = 0
    interface: str = ""
    path: str | None = None


# Twisted's argument order: _parseTCP(port, interface, backlog),
# _TCP6ServerParser._parseServer(port, backlog, interface),
# _parseUNIX(address, mode, backlog, lockfile)
_PARAMS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}
_DEFAULT_INTERFACE = {"tcp": "", "tcp6": "::"}
_DIGITS = re.compile(r"[0-9]+\Z")   # int() also takes " 25", "+25", "2_5", "٢٥"
_OCTAL = re.compile(r"[0-7]+\Z")    # unix mode, read with int(mode, 8)
_NUMBERS = {"port": _DIGITS, "backlog": _DIGITS, "lockfile": _DIGITS, "mode": _OCTAL}


def _number(name: str, value: str) -> bool:
    """Whether Twisted reads ``value`` as the number ``name`` is with no
    doubt: plain digits, and not more decimal ones than ``int()`` takes
    (``sys.get_int_max_str_digits``: Twisted's parse then raises)."""
    if not _NUMBERS[name].match(value):
        return False
    try:
        int(value, 8 if name == "mode" else 10)
    except ValueError:
        return False
    return True


def _arguments(description: str) -> list[tuple[str, ...]] | None:
    """The ``:``-separated arguments: ``(value,)`` for a positional one,
    ``(name, value)`` for a named one; None for a trailing backslash."""
    items: list[tuple[str, ...]] = []
    pieces: list[str] = []
    current, ops = "", ":="
    chars = iter(description)
    for c in chars:
        if c in ops:
            pieces.append(current)
            current = ""
            if c == ":":
                items.append(tuple(pieces))
                pieces, ops = [], ":="
            else:
                ops = ":"  # the rest of the argument is the value
        elif c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return None
            current += escaped
        else:
            current += c
    items.append((*pieces, current))
    return items


def parse_listen(description: str) -> ListenSpec | None:
    """``description`` read as Twisted reads it, or None when this parser
    is not sure (the caller then asks Twisted).  A port out of range is
    read: judging it is the config's job."""
    items = _arguments(description)
    if not items or len(items[0]) != 1 or items[0][0] not in _PARAMS:
        return None
    kind = items[0][0]
    names = _PARAMS[kind]
    positional = [item[0] for item in items[1:] if len(item) == 1]
    if len(positional) > len(names):
        return None
    by_position = dict(zip(names, positional, strict=False))
    given = dict(by_position)
    for item in items[1:]:
        if len(item) == 2:
            name, value = item
            if name not in names or name in by_position:
                return None  # Twisted: unexpected keyword, or multiple values
            given[name] = value  # a name given twice: the last one, as Twisted
    if any(name in given and not _number(name, given[name]) for name in _NUMBERS):
        return None
    if kind == "unix":
        if "address" not in given:
            return None
        return ListenSpec("unix", path=given["address"])
    if "port" not in given:
        return None
    return ListenSpec(kind, int(given["port"]),
                      given.get("interface", _DEFAULT_INTERFACE[kind]))
