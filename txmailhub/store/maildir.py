"""The Maildir mailbox store (IMailboxStore) and its locked POP3 view (IMailbox).

Owns ``state_dir/mail/<domain>/<localpart>/{tmp,new,cur}`` (local part
lower-cased) and three small files in each Maildir's root:
``.txmailhub.lock`` (the POP3 exclusive lock) and ``.txmailhub-sizes``
(the CRLF sizes of messages other programs dropped in).  It does not
route, parse messages or speak any protocol.

Delivery (``MaildirStore.deliver``): the spool file is already fsynced,
so each copy is a hard link straight into ``new/`` -- a complete file
appears there atomically, never a partial one -- then the ``new/``
directories (and any directory just created) are made durable through the
``Syncer``, all mailboxes of a message in one batch.  Where a link is not
possible (another filesystem, link limit) the message is copied into
``tmp/``, fsynced, renamed into ``new/`` and ``new/`` fsynced.  Each
mailbox has its own outcome; a copy whose directory could not be made
durable is removed again (best effort), so a retry does not duplicate it.

Names follow the Maildir convention:
``<sec>.M<usec>P<pid>Q<counter>R<random>.<host>,S=<size>,W=<crlf size>``
(``/``, ``:`` and ``,`` in the host escaped as ``\\057``, ``\\072``,
``\\054``), plus ``:2,<flags>`` once in ``cur/``.  ``S`` is the size on
disk, ``W`` the octets POP3 sends (``CRLFEncoder``), so a snapshot lists
without reading or even stat-ing files.  The POP3 UIDL is the unique part
(before ``,`` and ``:``): stable across sessions and flag changes.

A message another program dropped in with a plain name (no ``W=``) keeps
its name (other programs may hold it); its CRLF size is computed once and
cached in ``.txmailhub-sizes`` (JSON, keyed by the unique part and
checked against inode, mtime and size, so a replaced file is measured
again), written with ``durable_write``.

Stored messages keep LF line endings, as mutt and other Maildir readers
expect.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.address import Address
from txmailhub.envelope import SpooledMessage
from txmailhub.errors import LocalError, MailboxInUse
from txmailhub.interfaces import IMailbox, IMailboxStore
from txmailhub.store.sync import durable_write, fsync_dir

__all__ = [
    "CRLFCounter",
    "CRLFEncoder",
    "MaildirMailbox",
    "MaildirStore",
    "MessageInfo",
    "crlf_size_of",
    "uid_for_name",
]

log = Logger()

LOCK_NAME = ".txmailhub.lock"
SIZES_NAME = ".txmailhub-sizes"
STALE_TMP_SECONDS = 36 * 3600  # the Maildir convention for tmp/ leftovers
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20
# link(2) failures that mean "this filesystem cannot link here": copy instead
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


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
        self._last = (head + chunk)[-1:]
        return head + chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

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
        self._added += chunk.count(b"\n") - chunk.count(b"\r\n")
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


def _crlf_size_of_file(path: str) -> tuple[int, int]:
    counter = CRLFCounter()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            counter.feed(chunk)
    return counter.size, counter.crlf_size


# --- names ------------------------------------------------------------------

_UID_OK = re.compile(r"^[\x21-\x7e]{1,70}$")
_ORDER = re.compile(r"^(\d+)\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?")
_FIELD = re.compile(r",([A-Za-z])=(\d+)")


def uid_for_name(name: str) -> str:
    """The UIDL of a Maildir file name: its unique part (before ``:`` info
    and before the first ``,`` field such as ``,S=``), or a SHA-1 of it when
    that is not 1-70 printable ASCII characters."""
    base = _base(name)
    if _UID_OK.match(base):
        return base
    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def _base(name: str) -> str:
    return name.split(":", 1)[0].split(",", 1)[0]


def _fields(name: str) -> dict[str, int]:
    return {k: int(v) for k, v in _FIELD.findall(name.split(":", 1)[0])}


def _escape_host(hostname: str) -> str:
    host = hostname or "localhost"
    for ch, esc in (("\\", "\\134"), ("/", "\\057"), (":", "\\072"), (",", "\\054")):
        host = host.replace(ch, esc)
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in host)


def _path_component(text: str, what: str) -> str:
    if not text or text in (".", "..") or "/" in text or "\x00" in text:
        raise LocalError(f"{what} {text!r} cannot name a Maildir folder")
    return text


# --- the store ----------------------------------------------------------------


@implementer(IMailboxStore)
class MaildirStore:
    """``IMailboxStore`` over ``mail_dir`` (see the module docstring).

    ``syncer`` is a ``txmailhub.store.sync.Syncer`` (or anything with its
    ``sync_each``/``sync``).  ``clock`` (seconds since the epoch) and
    ``link`` are injectable for tests.
    """

    def __init__(
        self,
        mail_dir: str,
        hostname: str,
        syncer: Any,
        *,
        clock: Callable[[], float] = time.time,
        link: Callable[[str, str], None] = os.link,
    ) -> None:
        self.mail_dir = os.path.abspath(mail_dir)
        self.hostname = hostname
        self.syncer = syncer
        self._clock = clock
        self._link = link
        self._host = _escape_host(hostname)
        self._counter = itertools.count(1)
        # Maildir -> directories whose new entries (from creating it) are
        # not yet known to be durable; a delivery syncs them, then forgets.
        self._unsynced: dict[str, set[str]] = {}
        self._known: set[str] = set()
        if not os.path.isdir(self.mail_dir):
            os.makedirs(self.mail_dir, mode=0o700, exist_ok=True)
            fsync_dir(os.path.dirname(self.mail_dir))

    # -- paths ---------------------------------------------------------------

    def maildir_path(self, address: Address) -> str:
        """``mail_dir/<domain>/<local part, lower-cased>``."""
        domain = _path_component(address.domain.rstrip(".").lower(), "domain")
        local = _path_component(address.local.lower(), "local part")
        return os.path.join(self.mail_dir, domain, local)

    def _ensure(self, md: str) -> tuple[str, ...]:
        """Create ``md`` and its tmp/new/cur as needed; returns the
        directories whose entries must still be made durable."""
        if md not in self._known:
            made: list[str] = []
            for path in (os.path.dirname(md), md):
                try:
                    os.mkdir(path, 0o700)
                    made.append(os.path.dirname(path))
                except FileExistsError:
                    pass
            for sub in ("tmp", "new", "cur"):
                try:
                    os.mkdir(os.path.join(md, sub), 0o700)
                    made.append(md)
                except FileExistsError:
                    pass
            if made:
                self._unsynced.setdefault(md, set()).update(made)
            self._known.add(md)
        return tuple(sorted(self._unsynced.get(md, ())))

    def _synced(self, md: str, dirs: tuple[str, ...]) -> None:
        left = self._unsynced.get(md)
        if left is not None:
            left.difference_update(dirs)
            if not left:
                del self._unsynced[md]

    def unique_name(self, message: SpooledMessage) -> str:
        now = self._clock()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        rand = os.urandom(4).hex()
        return (
            f"{sec}.M{usec}P{os.getpid()}Q{next(self._counter)}R{rand}.{self._host}"
            f",S={message.size},W={message.crlf_size}"
        )

    # -- delivery ------------------------------------------------------------

    def deliver(self, message: SpooledMessage, mailboxes: list[Address]) -> defer.Deferred:
        results: dict[Address, Exception | None] = {}
        linked: list[tuple[Address, str, str, tuple[str, ...]]] = []
        copies: list[tuple[Address, str, str, int, tuple[str, ...]]] = []
        for address in dict.fromkeys(mailboxes):
            try:
                md = self.maildir_path(address)
                name = self.unique_name(message)
                new = os.path.join(md, "new", name)
                dirs = self._ensure(md)
                try:
                    self._link_into(message.path, new, md)
                    linked.append((address, md, new, dirs))
                except OSError as e:
                    if e.errno not in _LINK_FALLBACK:
                        raise
                    tmp = os.path.join(md, "tmp", name)
                    fd = _copy_to(message.path, tmp)
                    copies.append((address, md, tmp, fd, dirs))
            except Exception as e:
                log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                          error=str(e))
                results[address] = e

        targets: list[Any] = []
        for _, md, _, dirs in linked:
            targets.extend([*dirs, os.path.join(md, "new")])
        for _, _, _, fd, dirs in copies:
            targets.extend([fd, *dirs])
        ds = iter(self.syncer.sync_each(targets))

        pending: list[defer.Deferred] = []
        for address, md, new, dirs in linked:
            mine = [next(ds) for _ in range(len(dirs) + 1)]
            d = _all(mine)
            d.addCallback(lambda _, md=md, dirs=dirs: self._synced(md, dirs))
            d.addErrback(self._undo, new)
            pending.append(self._record(d, results, address))
        for address, md, tmp, fd, dirs in copies:
            mine = [next(ds) for _ in range(len(dirs) + 1)]
            d = _all(mine)
            d.addBoth(_close_fd_passing, fd)
            d.addCallback(self._publish_copy, md, tmp, dirs)
            d.addErrback(self._undo, tmp)
            pending.append(self._record(d, results, address))
        return defer.DeferredList(pending).addCallback(lambda _: results)

    def _link_into(self, src: str, new: str, md: str) -> None:
        try:
            self._link(src, new)
        except FileNotFoundError:
            if not os.path.exists(src):
                raise
            self._known.discard(md)  # someone removed the Maildir: make it again
            self._ensure(md)
            self._link(src, new)

    def _publish_copy(self, _: Any, md: str, tmp: str, dirs: tuple[str, ...]) -> defer.Deferred:
        new = os.path.join(md, "new", os.path.basename(tmp))
        os.rename(tmp, new)
        d = self.syncer.sync(dirs=[os.path.join(md, "new")])
        d.addCallback(lambda _: self._synced(md, dirs))
        d.addErrback(self._undo, new)
        return d

    def _undo(self, failure: Any, path: str) -> Any:
        try:
            os.unlink(path)
        except OSError:
            pass
        return failure

    def _record(self, d: defer.Deferred, results: dict, address: Address) -> defer.Deferred:
        def ok(_: Any) -> None:
            results[address] = None

        def failed(f: Any) -> None:
            log.error("delivery to {mailbox} not durable: {error}", mailbox=str(address),
                      error=f.getErrorMessage())
            results[address] = f.value

        return d.addCallbacks(ok, failed)

    # -- POP3 access -----------------------------------------------------------

    def open_mailbox(self, address: Address) -> defer.Deferred:
        try:
            md = self.maildir_path(address)
            self._ensure(md)
            fd = os.open(os.path.join(md, LOCK_NAME), os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        except Exception as e:
            return defer.fail(e)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return defer.fail(MailboxInUse(f"{address} is in use by another session"))
            return defer.fail(e)
        try:
            _clean_tmp(md, self._clock())
            snapshot = scan(md)
        except Exception as e:
            os.close(fd)
            return defer.fail(e)
        return defer.succeed(MaildirMailbox(self, md, fd, snapshot))


def _all(ds: list[defer.Deferred]) -> defer.Deferred:
    if len(ds) == 1:
        return ds[0]
    d = defer.gatherResults(ds, consumeErrors=True)
    return d.addErrback(lambda f: f.value.subFailure)


def _close_fd_passing(result: Any, fd: int) -> Any:
    os.close(fd)
    return result


def _copy_to(src: str, dst: str) -> int:
    """Copy ``src`` into a new file ``dst``; returns its fd, still open."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        try:
            os.unlink(dst)
        except OSError:
            pass
        raise
    return fd


def _clean_tmp(md: str, now: float) -> None:
    tmp = os.path.join(md, "tmp")
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(tmp, name)
        try:
            if now - os.stat(path).st_mtime > STALE_TMP_SECONDS:
                os.unlink(path)
        except OSError:
            pass


# --- the snapshot -------------------------------------------------------------


def scan(md: str) -> list[MessageInfo]:
    """The messages of Maildir ``md`` (new/ and cur/) in delivery order.

    Names with ``W=`` are listed without touching the file; plain names
    get their sizes from the cache (measured and cached on first sight)."""
    entries: list[tuple[tuple, MessageInfo]] = []
    cache = _SizeCache(md)
    for sub in ("new", "cur"):
        folder = os.path.join(md, sub)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            fields = _fields(name)
            info = name.partition(":")[2]
            seen = info.startswith("2,") and "S" in info[2:]
            m = _ORDER.match(name)
            if "W" in fields and "S" in fields:
                size, crlf = fields["S"], fields["W"]
                mtime = 0.0
            else:
                try:
                    st = os.stat(path)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    size, crlf = cache.sizes(name, path, st)
                except FileNotFoundError:
                    continue
                mtime = st.st_mtime
            if m:
                order = (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))
            else:
                order = (int(mtime), 0, 0)
            entries.append(((*order, name), MessageInfo(uid_for_name(name), crlf, path, size,
                                                        seen)))
    cache.save()
    entries.sort(key=lambda e: e[0])
    out: list[MessageInfo] = []
    uids: set[str] = set()
    for _, mi in entries:
        if mi.uid in uids:  # the same unique part twice: keep UIDLs distinct
            name = os.path.basename(mi.path)
            mi = dataclasses.replace(mi, uid=hashlib.sha1(name.encode(
                "utf-8", "surrogateescape")).hexdigest())
        uids.add(mi.uid)
        out.append(mi)
    return out


class _SizeCache:
    """``.txmailhub-sizes``: ``{unique part: [inode, mtime_ns, size, crlf]}``."""

    def __init__(self, md: str) -> None:
        self.path = os.path.join(md, SIZES_NAME)
        self.entries: dict[str, list[int]] = {}
        self.used: set[str] = set()
        self.dirty = False
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
            if isinstance(doc, dict) and doc.get("version") == 1:
                self.entries = {
                    k: v for k, v in doc.get("sizes", {}).items()
                    if isinstance(v, list) and len(v) == 4
                }
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warn("ignoring unreadable size cache {path}: {error}", path=self.path,
                     error=str(e))
            self.dirty = True

    def sizes(self, name: str, path: str, st: os.stat_result) -> tuple[int, int]:
        key = name.split(":", 1)[0]  # the flags change, this does not
        self.used.add(key)
        got = self.entries.get(key)
        if got is not None and got[0] == st.st_ino and got[1] == st.st_mtime_ns and (
            got[2] == st.st_size
        ):
            return got[2], got[3]
        size, crlf = _crlf_size_of_file(path)
        self.entries[key] = [st.st_ino, st.st_mtime_ns, size, crlf]
        self.dirty = True
        return size, crlf

    def save(self) -> None:
        stale = set(self.entries) - self.used
        for key in stale:
            del self.entries[key]
        if not (self.dirty or stale):
            return
        data = json.dumps({"version": 1, "sizes": self.entries}, sort_keys=True).encode()
        try:
            durable_write(self.path, data)
        except OSError as e:  # a cache: the sizes are measured again next time
            log.warn("cannot write size cache {path}: {error}", path=self.path, error=str(e))


# --- one locked session ---------------------------------------------------------


@implementer(IMailbox)
class MaildirMailbox:
    """A locked snapshot of one Maildir (see ``IMailbox``)."""

    def __init__(self, store: MaildirStore, md: str, lock_fd: int,
                 snapshot: list[MessageInfo]) -> None:
        self.store = store
        self.path = md
        self._lock_fd: int | None = lock_fd
        self._messages = snapshot

    def list_messages(self) -> list[MessageInfo]:
        return list(self._messages)

    def _locate(self, index: int) -> str:
        """The message's path now; if another Maildir reader renamed it
        (flags), find it again by its unique part."""
        info = self._messages[index]
        if os.path.exists(info.path):
            return info.path
        base = _base(os.path.basename(info.path))
        for sub in ("cur", "new"):
            folder = os.path.join(self.path, sub)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                if _base(name) == base:
                    path = os.path.join(folder, name)
                    self._messages[index] = dataclasses.replace(info, path=path)
                    return path
        return info.path

    def open_message(self, index: int) -> Any:
        return open(self._locate(index), "rb")

    def mark_seen(self, index: int) -> None:
        try:
            info = self._messages[index]
            path = self._locate(index)
            name = os.path.basename(path)
            unique, _, flags = name.partition(":")
            if flags.startswith("2,"):
                if "S" in flags[2:]:
                    if os.path.basename(os.path.dirname(path)) == "cur":
                        return
                    new_flags = flags
                else:
                    new_flags = "2," + "".join(sorted(flags[2:] + "S"))
            else:
                new_flags = "2,S"
            target = os.path.join(self.path, "cur", f"{unique}:{new_flags}")
            os.rename(path, target)
            self._messages[index] = dataclasses.replace(info, path=target, seen=True)
        except (OSError, IndexError) as e:
            log.warn("cannot mark message {index} of {maildir} seen: {error}",
                     index=index, maildir=self.path, error=str(e))

    def delete(self, indices: list[int]) -> defer.Deferred:
        """Unlink the messages, then fsync the folders.  Fires ``None``;
        errbacks with the first error (the other messages are still
        removed and synced)."""
        dirs: set[str] = set()
        error: Exception | None = None
        for index in dict.fromkeys(indices):
            try:
                path = self._locate(index)
                os.unlink(path)
            except FileNotFoundError:
                continue
            except (OSError, IndexError) as e:
                log.error("cannot delete message {index} of {maildir}: {error}",
                          index=index, maildir=self.path, error=str(e))
                error = error or e
                continue
            dirs.add(os.path.dirname(path))
        d = self.store.syncer.sync(dirs=sorted(dirs)) if dirs else defer.succeed(None)
        if error is not None:
            d.addCallback(lambda _: defer.fail(error))
        return d

    def close(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def closed(self) -> bool:
        return self._lock_fd is None
