"""Maildir file names and message sizes: the rules the store, the POP3
server and the test doubles share.

Owns ``MessageInfo`` (one message of a mailbox snapshot) and ``Snapshot``
(a whole snapshot, kept in columns), the CRLF rule
(``CRLFEncoder``/``CRLFCounter``/``crlf_size_of``: what POP3 sends for a
stored LF message, and how many octets that is) and the name rules
(``uid_for_name``, the ``,S=``/``,W=`` fields, delivery order).  Pure
functions and values: no disk, no Twisted.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

__all__ = [
    "CRLFCounter",
    "CRLFEncoder",
    "MAX_SIZE",
    "MessageInfo",
    "Snapshot",
    "base_name",
    "columns",
    "crlf_size_of",
    "escape_host",
    "keyed_unique",
    "name_fields",
    "order_key",
    "own_sizes",
    "uid_for_name",
    "with_sizes",
]


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a mailbox snapshot.

    * ``uid``: the POP3 UIDL (0x21-0x7E, at most 70 characters), stable
      across sessions and flag changes, never reused.
    * ``size``: the exact number of octets RETR sends for the message
      (its CRLF form, see ``CRLFEncoder``), before dot-stuffing.
    * ``path``: where the file is now (kept current by ``mark_seen``).
    * ``stored_size``: octets on disk (LF line endings).
    * ``seen``: whether it carries the Maildir S flag.
    """

    uid: str
    size: int
    path: str
    stored_size: int
    seen: bool = False


MAX_SIZE = 1 << 62
"""The largest message size a ``Snapshot`` takes (its columns are 64-bit
arrays; a client's size, the downgraded copy's, adds a little to it).  A
name whose ``,S=`` or ``,W=`` says more is no file's true size: its sizes
are measured instead, as for a name without them."""

_CUR = 1  # in cur/ (else new/)
_SEEN = 2  # the S flag
_NAMED = 4  # a name of its own (``Snapshot._names``), not the usual one
_PATH = 8  # a whole path of its own, elsewhere (``Snapshot._names``)


# ``Snapshot.moved`` and ``Snapshot.copy``: a copy taken on one thread
# while another thread's move is half made would hold a name without its
# flags, or flags naming a name it lacks (module-wide: moves are rare,
# one per message flagged, and never wait for anything under it)
_MOVING = threading.Lock()


class Snapshot(Sequence[MessageInfo]):
    """A mailbox snapshot of ``MessageInfo``, kept in columns.

    A POP3 session holds its snapshot for as long as it lasts, and a
    mailbox kept for years has tens of thousands of messages: one object
    per message, with its path, its UID and two sizes as objects of their
    own, cost some 500 octets each.  Here the UIDs are one list (the one
    string per message that UIDL needs as it is), the sizes two arrays,
    and the file's place one octet of flags: a name in the shape the hub
    gives (``<uid>,S=<stored>,W=<size>``, plus ``:2,S`` in ``cur/``) is
    made again from those when a path is asked for; any other name is
    kept whole.  Some 130 octets a message, most of it the UID; a name
    kept whole (Postfix's, or Dovecot's with flags other than ``S``)
    costs some 150 more (the string and its dict entry).

    ``snapshot[i]`` builds the ``MessageInfo``; ``uids`` and ``sizes``
    are the columns, read directly where every message is needed (LIST,
    UIDL, STAT).  Neither changes once made; ``moved`` records a message's
    new name or flags (``mark_seen``).
    """

    __slots__ = ("__weakref__", "_dirs", "_flags", "_names", "folder", "sizes",
                 "stored_sizes", "uids")

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._dirs = (os.path.join(folder, "new") + os.sep, os.path.join(folder, "cur") + os.sep)
        self.uids: list[str] = []
        self.sizes = array("q")
        self.stored_sizes = array("q")
        self._flags = bytearray()
        self._names: dict[int, str] = {}

    def append(self, uid: str, size: int, stored_size: int, cur: bool, name: str,
               seen: bool) -> None:
        """One more message: file ``name`` in ``cur/`` or ``new/``."""
        index = len(self.uids)
        self.uids.append(uid)
        self.sizes.append(size)
        self.stored_sizes.append(stored_size)
        self._flags.append((_CUR if cur else 0) | (_SEEN if seen else 0))
        if name != self._usual(index):
            self._flags[index] |= _NAMED
            self._names[index] = name

    def _usual(self, index: int) -> str:
        name = f"{self.uids[index]},S={self.stored_sizes[index]},W={self.sizes[index]}"
        return name + ":2,S" if self._flags[index] & _CUR else name

    def name(self, index: int) -> str:
        """The file name of message ``index`` (no folder)."""
        if index < 0:
            index += len(self.uids)
        flags = self._flags[index]
        if flags & _PATH:  # a whole path is kept: its last part
            return os.path.basename(self._names[index])
        if flags & _NAMED:
            return self._names[index]
        return self._usual(index)

    def path(self, index: int) -> str:
        """Where the file of message ``index`` is (as last known).  On
        every RETR: one format, no call beyond it."""
        if index < 0:
            index += len(self.uids)
        flags = self._flags[index]
        if flags & (_NAMED | _PATH):
            name = self._names[index]
            return name if flags & _PATH else self._dirs[flags & _CUR] + name
        if flags & _CUR:
            return (f"{self._dirs[1]}{self.uids[index]},S={self.stored_sizes[index]},"
                    f"W={self.sizes[index]}:2,S")
        return (f"{self._dirs[0]}{self.uids[index]},S={self.stored_sizes[index]},"
                f"W={self.sizes[index]}")

    def seen(self, index: int) -> bool:
        return bool(self._flags[index] & _SEEN)

    def seen_in_cur(self, index: int) -> bool:
        """Whether message ``index`` has the S flag and is in ``cur/``:
        ``mark_seen`` has nothing to do (asked on every RETR)."""
        return self._flags[index] & (_SEEN | _CUR | _PATH) == _SEEN | _CUR

    def moved(self, index: int, path: str, seen: bool) -> None:
        """Message ``index`` is now at ``path``, with or without the S flag.
        Not atomic (its name goes before its flags are set: a path asked
        for meanwhile has flags naming no name, a ``KeyError``), so one
        snapshot is moved and read on one thread at a time; ``copy`` gives
        another thread one of its own."""
        with _MOVING:
            self._move(index, path, seen)

    def _move(self, index: int, path: str, seen: bool) -> None:
        index = range(len(self.uids))[index]
        folder, name = os.path.split(path)
        flags = _SEEN if seen else 0
        self._names.pop(index, None)
        if folder + os.sep == self._dirs[1]:
            flags |= _CUR
        elif folder + os.sep != self._dirs[0]:  # not in this Maildir: kept whole
            self._flags[index] = flags | _PATH
            self._names[index] = path
            return
        self._flags[index] = flags
        if name != self._usual(index):
            self._flags[index] = flags | _NAMED
            self._names[index] = name

    def copy(self) -> Snapshot:
        """A snapshot whose places and flags (``moved``) are its own, the
        columns that never change (UIDs, sizes) shared: for changes made
        on a worker thread while another thread still reads this one's
        paths (a session's end flagging messages seen while answers are
        still sent, ``MaildirMailbox.for_changes``).  ``moved`` is not
        atomic, so neither thread may see the other's half-made move.
        Taken under ``_MOVING``, so a move under way elsewhere is in it
        whole or not at all."""
        other = Snapshot.__new__(Snapshot)
        other.folder = self.folder
        other._dirs = self._dirs
        other.uids = self.uids
        other.sizes = self.sizes
        other.stored_sizes = self.stored_sizes
        with _MOVING:
            other._flags = bytearray(self._flags)
            other._names = dict(self._names)
        return other

    def __len__(self) -> int:
        return len(self.uids)

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...

    @overload
    def __getitem__(self, index: slice) -> list[MessageInfo]: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self.uids))[index]]
        index = range(len(self.uids))[index]  # negative, and IndexError
        return MessageInfo(self.uids[index], self.sizes[index], self.path(index),
                           self.stored_sizes[index], bool(self._flags[index] & _SEEN))

    def __iter__(self) -> Iterator[MessageInfo]:
        return (self[i] for i in range(len(self.uids)))


def columns(messages: Sequence[Any]) -> tuple[Sequence[str], Sequence[int]]:
    """The UIDs and sizes of a snapshot, as two sequences: a ``Snapshot``'s
    own columns (nothing copied), or read once from any sequence of
    objects with ``uid`` and ``size``."""
    if isinstance(messages, Snapshot):
        return messages.uids, messages.sizes
    return [m.uid for m in messages], array("q", [m.size for m in messages])


# --- the CRLF rule ------------------------------------------------------------


class CRLFEncoder:
    """Turns stored (LF) message bytes into the CRLF form POP3 sends.

    The rule, which ``MessageInfo.size`` counts: every LF not preceded by
    CR becomes CRLF (a stored CRLF stays as it is), bare CRs stay, and a
    message whose last byte is not LF gets a final CRLF.  Feed chunks in
    order to ``encode``; ``finish`` returns the tail to send (``b""`` or
    ``b"\\r\\n"``).  Dot-stuffing is the protocol's job, after this.
    """

    def __init__(self) -> None:
        self._last = b""

    def encode(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        head = b""
        if self._last == b"\r" and chunk[:1] == b"\n":
            head, chunk = b"\n", chunk[1:]
        self._last = chunk[-1:] or head
        # rare in stored mail: only then undo stored CRLFs.  CR as an int:
        # bytes `in` bytes pays for a TypeError on every call.
        if 0x0D in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        return head + chunk.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        return b"\r\n" if self._last not in (b"", b"\n") else b""


class CRLFCounter:
    """Counts, chunk by chunk, the octets ``CRLFEncoder`` would produce."""

    def __init__(self) -> None:
        self.size = 0
        self._added = 0
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        # Stored data has no CR as a rule: memchr for one (an int: see
        # smtp/_data.py on `in`) is some 50 times cheaper than counting
        # the pairs, which is a second pass over every message.
        pairs = chunk.count(b"\r\n") if 13 in chunk else 0
        self._added += chunk.count(b"\n") - pairs
        if self._last == b"\r" and chunk[:1] == b"\n":
            self._added -= 1
        self._last = chunk[-1:]

    @property
    def crlf_size(self) -> int:
        tail = 2 if self.size and self._last != b"\n" else 0
        return self.size + self._added + tail


def crlf_size_of(data: bytes) -> int:
    """``len`` of ``data`` in the CRLF form of ``CRLFEncoder`` (whole message)."""
    c = CRLFCounter()
    c.feed(data)
    return c.crlf_size


# --- names ------------------------------------------------------------------

_UID_OK = re.compile(r"[\x21-\x7e]{1,70}")
ORDER = re.compile(r"^(\d+)\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?")
_FIELD = re.compile(r",([A-Za-z])=(\d+)")


def uid_for_name(name: str) -> str:
    """The UIDL of a Maildir file name: its unique part (before ``:`` info
    and before the first ``,`` field such as ``,S=``), or a SHA-1 of it when
    that is not 1-70 printable ASCII characters."""
    base = base_name(name)
    if _UID_OK.fullmatch(base):  # not match: "$" would let a final LF through
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def base_name(name: str) -> str:
    return name.split(":", 1)[0].split(",", 1)[0]


def name_fields(name: str) -> dict[str, int]:
    return {k: int(v) for k, v in _FIELD.findall(name.split(":", 1)[0])}


# the unique part of a name the hub gives (``MaildirStore.unique_name``,
# ``keyed_name``): ``<sec>.M<usec>P<pid>Q<counter>R<random>.`` or
# ``<sec>.M<usec>K<tag>.``.  Dovecot 2.3's are ``<sec>.M<usec>P<pid>.``,
# Postfix's ``<sec>.V<dev>I<ino>M<usec>.``: neither matches.  The hub has
# always written the ``R``; a name without it passes too, for the seeds
# bench/pop3.py and the tests write (``P1Q<n>.``), so Python's
# ``mailbox.Maildir`` names match as well -- it writes no ``,W=``.
_OWN_NAME = re.compile(r"\d+\.M\d+(?:P\d+Q\d+(?:R[0-9a-f]+)?|K[0-9A-Za-z]*)\.")


# the unique part of a copy the queue runner's retries make
# (``MaildirStore.keyed_name``): ``<sec>.M<usec>K<tag>.<host>``
_KEYED_NAME = re.compile(r"\d+\.M\d+K[0-9A-Za-z]*\.")


def keyed_unique(name: str) -> str | None:
    """The unique part of ``name`` when it is a keyed copy's, else None."""
    base = base_name(name)
    return base if _KEYED_NAME.match(base) else None


def own_sizes(name: str) -> tuple[int, int] | None:
    """The ``(S, W)`` of a name the hub gave, to be taken without reading
    the file; ``None`` for any other name, whose sizes are measured.

    Another program's ``,W=`` is counted by its own rule, not the one
    ``CRLFEncoder`` sends by: Dovecot's leaves out the CRLF that a
    message without a final newline gets before the terminating line, so
    the hub's LIST would promise 2 octets fewer than its RETR sends (RFC
    1939 5: LIST gives the exact size).  Its ``,S=`` is measured with
    it: the read of a message expects that many octets."""
    if not _OWN_NAME.match(name):
        return None
    fields = name_fields(name)
    size, crlf = fields.get("S", -1), fields.get("W", -1)
    if 0 <= size <= MAX_SIZE and 0 <= crlf <= MAX_SIZE:
        return size, crlf
    return None


def with_sizes(name: str, size: int, crlf: int) -> str:
    """``name`` with its ``,S=`` made ``size`` and its ``,W=`` ``crlf``:
    the unique part (so the UIDL), any other field and the flags after
    ``:`` as they were.  For a name ``own_sizes`` takes, whose file is
    not the size the name gives (``scan``)."""
    base, colon, info = name.partition(":")

    def field(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "S":
            return f",S={size}"
        if key == "W":
            return f",W={crlf}"
        return m.group(0)

    return _FIELD.sub(field, base) + colon + info


def escape_host(hostname: str) -> str:
    host = hostname or "localhost"
    for ch, esc in (("\\", "\\134"), ("/", "\\057"), (":", "\\072"), (",", "\\054")):
        host = host.replace(ch, esc)
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in host)


def order_key(name: str, mtime: float = 0.0) -> tuple[int, int, int]:
    """Delivery order of a Maildir name: seconds, microseconds, counter
    (``mtime`` for names that do not start with the delivery time)."""
    m = ORDER.match(name)
    if m:
        return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return int(mtime), 0, 0
