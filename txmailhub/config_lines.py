"""Where each key of a TOML text is written: the line numbers that
``config.py`` adds to its problems.

``tomllib`` gives values, not positions, so a problem with a key or a
value (an unknown key, a wrong type, a bad list item) could only name the
key: in a long file the user had to search for it.  This module reads the
text once more, as TOML's grammar has it, only far enough to know which
line each key, table header and list item starts on: strings (the
multi-line ones too, whose lines look like keys), arrays over several
lines, inline tables, comments, dotted and quoted keys, ``[a.b]`` and
``[[array]]`` headers.

It is only ever given text ``tomllib`` has read without an error, and it
owns no judgement of that text: anything it does not follow makes it give
no line at all, and a position it found for a path the parsed document
does not hold is dropped -- a problem without its line, never with a
wrong one.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any

__all__ = ["Path", "key_lines"]

#: a key as ``tomllib`` nests it: table and key names, and for a list
#: (an array, or an array of tables) the item's index
Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_BLANKS = re.compile(r"[ \t]*")
# a number, a boolean, a date or time: up to what ends a value
_SCALAR = re.compile(r"[^ \t\r\n,\]}#]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME_AFTER_DATE = re.compile(r" [0-9]{2}:")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.S)
_ESCAPED = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _NotFollowed(Exception):
    """The text holds something this reader does not follow."""


def key_lines(text: str, doc: dict[str, Any] | None = None) -> dict[Path, int]:
    """The line (from 1) each key path of ``text`` is written on.

    A key's path is the tables it is in and its own name (``[smtp]`` /
    ``max_connections = 5``, ``smtp.max_connections = 5`` at the top and
    ``smtp = {max_connections = 5}`` all give ``("smtp",
    "max_connections")``); a table's path (``("smtp",)``) is the line that
    first names it, header or dotted key; an item of a list adds its index
    (``("hub", "domains", 1)``, on the line the item starts on), as does
    each ``[[name]]`` table (``("name", 0)``).  With ``doc`` (``text`` as
    ``tomllib`` read it), only the paths ``doc`` holds are kept.  Empty
    when the text is not followed to its end."""
    try:
        found = _Scanner(text).document()
    except (_NotFollowed, IndexError):
        return {}
    if doc is None:
        return found
    return {path: line for path, line in found.items() if _holds(doc, path)}


def _holds(doc: Any, path: Path) -> bool:
    """Whether ``path`` names something in ``doc``."""
    value = doc
    for part in path:
        if isinstance(part, str) and isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(part, int) and isinstance(value, list) and 0 <= part < len(value):
            value = value[part]
        else:
            return False
    return True


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] in "uU" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code in _ESCAPED:
        return _ESCAPED[code]
    raise _NotFollowed(f"escape \\{code}")


class _Scanner:
    """One pass over the text, keeping the line of every path."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.lines: dict[Path, int] = {}
        # the number of tables each [[array]] has so far
        self.arrays: dict[Path, int] = {}

    # --- positions -------------------------------------------------------

    def line(self, pos: int) -> int:
        return bisect_right(self.starts, pos)

    def note(self, path: Path, pos: int) -> None:
        """``path`` first named at ``pos`` (a table named again, by a
        header or a dotted key, keeps its first line)."""
        self.lines.setdefault(path, self.line(pos))

    def note_all(self, base: Path, keys: tuple[str, ...], pos: int) -> Path:
        """Each table a dotted key runs through, and the key; its path."""
        path = base
        for key in keys:
            path += (key,)
            self.note(path, pos)
        return path

    # --- the grammar -----------------------------------------------------

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_space(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            start = self.pos
            if self.text.startswith("[[", start):
                self.pos += 2
                keys = self.header("]]")
                parent = self.resolve(keys[:-1], start)
                array = self.note_all(parent, keys[-1:], start)
                index = self.arrays.get(array, 0)
                self.arrays[array] = index + 1
                table = (*array, index)
                self.note(table, start)
            elif self.text.startswith("[", start):
                self.pos += 1
                keys = self.header("]")
                table = self.resolve(keys, start)
                self.note(table, start)
            else:
                self.key_value(table)
            self.end_of_line()

    def header(self, closing: str) -> tuple[str, ...]:
        self.blanks()
        keys = self.key()
        self.blanks()
        self.expect(closing)
        return keys

    def resolve(self, keys: tuple[str, ...], start: int) -> Path:
        """A header's keys as a path: a name that is an array of tables
        stands for its last table so far (``[[a]]`` then ``[a.b]``)."""
        path: Path = ()
        for key in keys:
            path += (key,)
            self.note(path, start)
            if path in self.arrays:
                path += (self.arrays[path] - 1,)
        return path

    def key_value(self, table: Path) -> None:
        start = self.pos
        keys = self.key()
        self.blanks()
        self.expect("=")
        self.blanks()
        self.value(self.note_all(table, keys, start))

    def key(self) -> tuple[str, ...]:
        keys = [self.simple_key()]
        while True:
            mark = self.pos
            self.blanks()
            if self.text.startswith(".", self.pos):
                self.pos += 1
                self.blanks()
                keys.append(self.simple_key())
            else:
                self.pos = mark
                return tuple(keys)

    def simple_key(self) -> str:
        text, pos = self.text, self.pos
        if text.startswith('"', pos):
            end = self.basic_end(pos + 1)
            self.pos = end + 1
            return _ESCAPE.sub(_unescape, text[pos + 1:end])
        if text.startswith("'", pos):
            end = text.find("'", pos + 1)
            if end < 0:
                raise _NotFollowed("literal key")
            self.pos = end + 1
            return text[pos + 1:end]
        m = _BARE.match(text, pos)
        if not m:
            raise _NotFollowed(f"key at {pos}")
        self.pos = m.end()
        return m.group()

    def basic_end(self, pos: int) -> int:
        """Where the one-line basic string whose text starts at ``pos`` ends."""
        text = self.text
        while True:
            c = text[pos]
            if c == "\\":
                pos += 2
            elif c == '"':
                return pos
            elif c == "\n":
                raise _NotFollowed("newline in a string")
            else:
                pos += 1

    def value(self, path: Path) -> None:
        text, pos = self.text, self.pos
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            self.multi_line_string(text[pos])
        elif text.startswith('"', pos):
            self.pos = self.basic_end(pos + 1) + 1
        elif text.startswith("'", pos):
            end = text.find("'", pos + 1)
            if end < 0 or "\n" in text[pos:end]:
                raise _NotFollowed("literal string")
            self.pos = end + 1
        elif text.startswith("[", pos):
            self.array(path)
        elif text.startswith("{", pos):
            self.inline_table(path)
        else:
            m = _SCALAR.match(text, pos)
            if not m:
                raise _NotFollowed(f"value at {pos}")
            self.pos = m.end()
            if _DATE.fullmatch(m.group()) and _TIME_AFTER_DATE.match(text, self.pos):
                # "1979-05-27 07:32:00": a space between date and time
                self.pos = _SCALAR.match(text, self.pos + 1).end()  # type: ignore[union-attr]

    def multi_line_string(self, quote: str) -> None:
        delimiter = quote * 3
        text, pos = self.text, self.pos + 3
        while True:
            if quote == '"' and text[pos] == "\\":
                pos += 2
            elif text.startswith(delimiter, pos):
                pos += 3
                # up to two quotes just before the delimiter are the string's
                for _ in range(2):
                    if text.startswith(quote, pos):
                        pos += 1
                self.pos = pos
                return
            else:
                pos += 1

    def array(self, path: Path) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_space(newlines=True)
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return
            item = (*path, index)
            self.note(item, self.pos)
            self.value(item)
            index += 1
            self.skip_space(newlines=True)
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                raise _NotFollowed(f"array at {self.pos}")

    def inline_table(self, path: Path) -> None:
        self.pos += 1
        self.blanks()
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return
        while True:
            self.blanks()
            self.key_value(path)
            self.blanks()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.text.startswith("}", self.pos):
                self.pos += 1
                return
            else:
                raise _NotFollowed(f"inline table at {self.pos}")

    # --- blanks, comments, line ends ------------------------------------

    def blanks(self) -> None:
        self.pos = _BLANKS.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def skip_space(self, newlines: bool) -> None:
        """Blanks and comments, and with ``newlines`` line ends too."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t":
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif newlines and (c == "\n" or text.startswith("\r\n", self.pos)):
                self.pos += 1 if c == "\n" else 2
            else:
                return

    def end_of_line(self) -> None:
        self.skip_space(newlines=False)
        text = self.text
        if self.pos >= len(text):
            return
        if text.startswith("\n", self.pos) or text.startswith("\r\n", self.pos):
            return
        raise _NotFollowed(f"after a line at {self.pos}")

    def expect(self, what: str) -> None:
        if not self.text.startswith(what, self.pos):
            raise _NotFollowed(f"{what!r} at {self.pos}")
        self.pos += len(what)
