"""UIDLs kept from the POP3 server a Maildir comes from.

Owns ``.txmailhub-uidls`` in a Maildir's root: the POP3 UIDLs that
messages of the Maildir keep instead of the hub's own, so that a client
that leaves mail on the server does not fetch every message again after
a move to the hub.  JSON, ``{"version": 1, "uidls": {name: uidl}}``, the
name a message file's name before its ``:`` (the flags change, it does
not); an empty file is an empty map.  Written with ``durable_write``.

A Maildir the hub makes gets it empty at once (``maildir._make_maildir``);
one made by another program gets it at the first POP3 login
(``mailbox.scan``) that lists a message of the Maildir, once.  Where
the Maildir holds Dovecot's ``dovecot-uidlist`` and no
``.txmailhub-sizes`` (a Maildir an older version of the hub listed has
one as soon as it holds a message of another program's name, and its
clients have the hub's UIDLs), each message of that list gets the UIDL
Dovecot's POP3 gives it with its default ``pop3_uidl_format``
(``%08Xu%08Xv``: its UID and the list's UIDVALIDITY, eight lowercase
hex digits each), or the one the list saved for it (its ``P`` field).
Anywhere else it is made empty: the hub's UIDLs stay, whatever list
Dovecot makes later.  An
administrator may write one (another server's UIDLs); the hub never
replaces a file that is there but the entries of messages that are gone.

Read at each login, bounded as the size cache is (``ENTRY_OCTETS`` a
message, at least ``LEAST_LIMIT``), never through a link or from a
pipe.  Never trusted blindly: an entry is used only when it is a UIDL
RFC 1939 allows (1-70 of 0x21 to 0x7E), no other message of the
listing has it, and no other entry gives it (``apply``).  Does not
read or change messages; ``mailbox.scan`` calls it under the mailbox's
POP3 lock, on the store's worker threads.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable

from twisted.logger import Logger

from txmailhub.store.sync import durable_write

__all__ = ["DOVECOT_UIDLIST", "KEPT_NAME", "KeptUIDLs", "apply", "dovecot_uidls"]

log = Logger()

KEPT_NAME = ".txmailhub-uidls"
DOVECOT_UIDLIST = "dovecot-uidlist"
_SIZES_NAME = ".txmailhub-sizes"  # mailbox.SIZES_NAME (which imports this module)
#: the most one entry may take in either file, for the bound on a read
ENTRY_OCTETS = 1024
#: the least that bound is: a file that another program's deletions left
#: larger than its messages need (pruned at the next login) is still read
LEAST_LIMIT = 4 << 20
_UIDL = re.compile(r"[\x21-\x7e]{1,70}")
_READ = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _read_small(path: str, limit: int) -> bytes:
    """The whole of regular file ``path``; ``ValueError`` beyond ``limit``
    octets or for anything but a regular file (a link is not followed,
    a pipe not waited on)."""
    fd = os.open(path, _READ)  # ELOOP for a link: an OSError, no FileNotFoundError
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than {limit} octets")
    return data


def dovecot_uidls(data: bytes) -> dict[str, str]:
    """The POP3 UIDLs of a ``dovecot-uidlist`` (versions 3 and 1) by file
    name without flags, as Dovecot gives them with its default
    ``pop3_uidl_format`` (``%08Xu%08Xv``), or its ``P`` field where the
    entry has one; an entry whose UIDL RFC 1939 forbids is left out.
    ``ValueError`` for a list of another version or
    without a UIDVALIDITY; a line that is no entry is skipped."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    head = lines[0].split()
    validity = None
    if head[:1] == ["3"]:
        for field in head[1:]:
            if field[:1] == "V" and field[1:].isdigit():
                validity = int(field[1:])
    elif head[:1] == ["1"] and len(head) >= 2 and head[1].isdigit():
        validity = int(head[1])
    else:
        raise ValueError(f"a list of version {head[0] if head else '(none)'!r}, "
                         "not 3 or 1")
    if validity is None or not 0 < validity < 2**32:
        raise ValueError("no UIDVALIDITY in its first line")
    version3 = head[0] == "3"
    out: dict[str, str] = {}
    for line in lines[1:]:
        if version3:
            fields, sep, name = line.partition(" :")
            if not sep:
                continue
            uid_text, *extensions = fields.split(" ")
        else:
            uid_text, _, name = line.partition(" ")
            extensions = []
        if not uid_text.isdigit() or not 0 < int(uid_text) < 2**32 or not name:
            continue
        uidl = f"{int(uid_text):08x}{validity:08x}"
        for ext in extensions:
            if ext[:1] == "P" and ext[1:]:
                uidl = ext[1:]
        # one RFC 1939 forbids (a P field of other octets, or over 70):
        # the hub's, in this session as in every later one (they read
        # the entries back through the same rule)
        if _UIDL.fullmatch(uidl):
            out[name.split(":", 1)[0]] = uidl
    return out


class KeptUIDLs:
    """The kept UIDLs of Maildir ``md`` (``uidls``) at a login whose
    listing has ``messages`` files, read or made (module docstring)."""

    def __init__(self, md: str, messages: int) -> None:
        self.path = os.path.join(md, KEPT_NAME)
        self.uidls: dict[str, str] = {}
        limit = max(ENTRY_OCTETS * (messages + 1), LEAST_LIMIT)
        try:
            data = _read_small(self.path, limit)
        except FileNotFoundError:
            if messages:  # no UIDL given out yet: nothing to choose before
                self._first_sight(md, limit)
            return
        except (OSError, ValueError) as e:
            log.warn("ignoring kept UIDLs {path}: {error}", path=self.path, error=str(e))
            return
        try:
            doc = json.loads(data) if data.strip() else {"version": 1, "uidls": {}}
            if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(
                    doc.get("uidls"), dict):
                raise ValueError('not {"version": 1, "uidls": {...}}')
        except (ValueError, RecursionError) as e:
            log.warn("ignoring kept UIDLs {path}: {error}", path=self.path, error=str(e))
            return
        self.uidls = {k: v for k, v in doc["uidls"].items()
                      if isinstance(v, str) and _UIDL.fullmatch(v)}

    def _first_sight(self, md: str, limit: int) -> None:
        """No kept UIDLs yet: Dovecot's, where the hub has not listed
        ``md`` before; an empty file in any case, so that a list Dovecot
        makes later (a Maildir both serve) never changes the UIDLs the
        hub gave."""
        source = os.path.join(md, DOVECOT_UIDLIST)
        try:
            # opened, not looked for first: no more calls than before at
            # the login of a Maildir without one
            data = _read_small(source, limit)
            if not os.path.lexists(os.path.join(md, _SIZES_NAME)):
                self.uidls = dovecot_uidls(data)
                log.info("keeping the POP3 UIDLs of {count} messages from {source} in "
                         "{path}", count=len(self.uidls), source=source, path=self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warn("not keeping the UIDLs of {source}: {error}; the messages get "
                     "the hub's", source=source, error=str(e))
        # Dovecot's UIDLs are shown only once this choice is on disk: not
        # written, a later login could choose the hub's (the size cache
        # this one writes), and a client would fetch every message again.
        # The login fails ([SYS/TEMP] for a full disk) until it can be
        self._save(must=bool(self.uidls))

    def _save(self, *, must: bool = False) -> None:
        data = json.dumps({"version": 1, "uidls": self.uidls}, sort_keys=True).encode()
        try:
            durable_write(self.path, data)
        except OSError as e:
            log.warn("cannot write kept UIDLs {path}: {error}{then}", path=self.path,
                     error=str(e), then="; the login is refused until it can be" if must
                     else "")
            if must:
                raise

    def prune(self, names: Iterable[str]) -> None:
        """Drop the entries of messages not among ``names`` (every file
        name of the listing), and write the file if any went."""
        if not self.uidls:
            return
        there = {name.split(":", 1)[0] for name in names}
        gone = [k for k in self.uidls if k not in there]
        if gone:
            for k in gone:
                del self.uidls[k]
            self._save()


def apply(uids: list[str], names: list[str], kept: dict[str, str]) -> None:
    """Give the messages (``names``, their UIDLs ``uids``, in place) the
    UIDLs ``kept`` has for them: one that no other message of the listing
    has, and that no other entry gives (a file of the hub's name never
    loses its own to a crafted entry; two files of one name before
    ``:`` keep theirs)."""
    if not kept:
        return
    chosen = [kept.get(name.split(":", 1)[0]) for name in names]
    counts = Counter(c for c in chosen if c is not None)
    own = set(uids)
    for i, uidl in enumerate(chosen):
        if uidl is not None and counts[uidl] == 1 and uidl not in own:
            uids[i] = uidl
