"""One Maildir as a POP3 session sees it: a locked snapshot.

Owns ``scan`` (the snapshot of new/ and cur/ in delivery order, and the
renames of the hub's names whose file a read found of another length),
the size cache ``.txmailhub-sizes`` (the sizes of plain-named messages,
and the sizes of downgraded copies, RFC 6857, that POP3 measured), the clean-up
of stale ``tmp/`` files, and ``MaildirMailbox`` (``IMailbox``: reading,
the Seen flag, deletion).  The ``tmp/`` clean-up never removes a file a
delivery of this process is still writing (``writing_tmp``).  The lock itself is taken by
``MaildirStore.open_mailbox``; the mailbox only releases it.  Never
delivers mail.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from platform import python_version
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.interfaces import (
    ICRLFSizeFound,
    IDowngradedSizes,
    IMailbox,
    IMailboxUpdate,
    INoWaitRead,
)
from txmailhub.store.format import (
    MAX_SIZE,
    CRLFCounter,
    Snapshot,
    keyed_unique,
    order_key,
    own_sizes,
    uid_for_name,
    with_sizes,
)
from txmailhub.store.kept_uidls import KeptUIDLs
from txmailhub.store.kept_uidls import apply as keep_uidls
from txmailhub.store.nowait import pread_nowait, read_nowait
from txmailhub.store.sync import (
    POP3_LANE,
    all_done,
    durable_write,
    fsync_dir,
    lane_call,
    rename_noreplace,
)

__all__ = [
    "DELETED_NAME",
    "LOCK_NAME",
    "SIZES_NAME",
    "STALE_TMP_SECONDS",
    "MaildirMailbox",
    "clean_tmp",
    "done_writing_tmp",
    "note_deleted",
    "scan",
    "was_deleted",
    "writing_tmp",
]

log = Logger()

LOCK_NAME = ".txmailhub.lock"
SIZES_NAME = ".txmailhub-sizes"
# the unique parts of the keyed copies (the queue runner's local retries:
# ``MaildirStore.keyed_name``) a POP3 session deleted, one a line
# (``note_deleted``, ``was_deleted``)
DELETED_NAME = ".txmailhub-deleted"
#: past this size, the next note drops the lines of copies made more than
#: the store's ``keep_deleted`` seconds ago
DELETED_PRUNE_AT = 64 * 1024
#: a longer file is no list of the hub's, and is not read
DELETED_READ_LIMIT = 4 << 20
STALE_TMP_SECONDS = 36 * 3600  # the Maildir convention for tmp/ leftovers
#: how long a note of a deleted keyed copy is kept by default (``note_deleted``)
KEEP_DELETED = 35 * 86400
_CHUNK = 1 << 20
_T = TypeVar("_T")
# O_NOFOLLOW: a symlink dropped into new/ or cur/ by whoever can write
# there must not make the hub read any file it can read.  O_NONBLOCK: a
# named pipe made at a message's name after the scan (which skips pipes)
# must not hold the open until some writer comes, on the thread that
# serves every session; a regular file reads the same with it (Linux and
# the BSDs ignore it for regular files), and ``_open_regular`` (or, for
# the small messages read whole, ``_read_regular``) refuses anything
# else once it is open.
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_NONBLOCK", 0)


def _not_regular(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "not a regular file", path)


def _open_unchecked(path: str) -> int:
    """A read-only descriptor of what is at ``path``, a symbolic link
    refused (``FileNotFoundError``); a pipe opened without waiting."""
    try:
        return os.open(path, _READ_FLAGS)
    except OSError as e:
        if e.errno != errno.ELOOP:  # ELOOP: a symbolic link (O_NOFOLLOW)
            raise
        raise _not_regular(path) from None


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path``.  Anything
    else there (a pipe, a directory, a symbolic link: put at a message's
    name after the scan, which lists regular files only) is no message:
    ``FileNotFoundError``, as for a message another program removed, not
    a storage fault that asking again could mend."""
    return _open_regular_stat(path)[0]


def _open_regular_stat(path: str) -> tuple[int, os.stat_result]:
    """``_open_regular``, with the ``fstat`` it made of the file."""
    fd = _open_unchecked(path)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path)
    return fd, st


def _read_regular(fd: int, path: str, read: Callable[[int], bytes], expected: int) -> bytes:
    """``read(fd)`` of a descriptor ``_open_unchecked`` gave, told from
    the read what it is, with no ``fstat`` where it is the message: a
    small ``RETR`` costs open, one read and close, as it did before pipes
    were looked for.  A folder says ``EISDIR``, a pipe ``ESPIPE`` to a
    read at an offset; a plain read of a pipe (``O_NONBLOCK``) says
    ``EAGAIN`` or gives what its writer wrote, nothing without one.  Only
    a read that is not ``expected`` octets long (nor ``EAGAIN``) costs an
    ``fstat``; a pipe that gives exactly that many octets gives what a
    file its writer could have put there would.  ``FileNotFoundError``
    for anything but a regular file, as ``_open_regular``."""
    try:
        data = read(fd)
    except OSError as e:
        if e.errno in (errno.EISDIR, errno.ESPIPE) or (
                e.errno == errno.EAGAIN and not stat.S_ISREG(os.fstat(fd).st_mode)):
            raise _not_regular(path) from None
        raise  # BlockingIOError of a regular file: not cached (RWF_NOWAIT)
    if len(data) != expected and not stat.S_ISREG(os.fstat(fd).st_mode):
        raise _not_regular(path)
    return data


def _crlf_size_of_file(path: str) -> tuple[int, int]:
    """Counted from the file ``_open_regular`` opens: ``scan`` saw a
    regular file there, but a pipe renamed into its place since would
    hold a plain open for ever (``FileNotFoundError``: skipped)."""
    counter = CRLFCounter()
    with open(_open_regular(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            counter.feed(chunk)
    return counter.size, counter.crlf_size


def note_deleted(md: str, uniques: list[str], now: float, keep: float) -> None:
    """Say durably in Maildir ``md``'s ``DELETED_NAME`` that the keyed
    copies ``uniques`` (their unique parts) are deleted, before they are
    (``MaildirMailbox._unlink``): the queue runner's retry of such a copy
    after a crash between the copy and its record tells it from one never
    made (``was_deleted``), and does not deliver it again.  Lines are
    appended and the file fsynced (and ``md`` when the file is new); one
    past ``DELETED_PRUNE_AT`` is rewritten (``durable_write``) without
    the lines of copies made more than ``keep`` seconds before ``now``:
    no retry comes that late.  A list whose read fails is appended to
    rather than rewritten, so no note is lost to it."""
    path = os.path.join(md, DELETED_NAME)
    lines = b"".join(os.fsencode(u) + b"\n" for u in uniques)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                 | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        old = _read_deleted(md) if st.st_size > DELETED_PRUNE_AT else None
        if old is not None or st.st_size > DELETED_READ_LIMIT:
            # (a list too long to be read is of no use to ``was_deleted``:
            # started afresh; one whose read failed is appended to, not
            # rewritten without the notes it holds)
            kept = [line for line in (old or b"").splitlines(keepends=True)
                    if _made_since(line, now - keep)]
            durable_write(path, b"".join(kept) + lines)
            return
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            # the line a write cut short (a full disk) is ended, not run
            # on into the first of these
            lines = b"\n" + lines
        view = memoryview(lines)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if st.st_size == 0:
        fsync_dir(md)  # (made now, or empty: its name durable either way)


def _made_since(line: bytes, since: float) -> bool:
    """Whether the keyed copy of a ``DELETED_NAME`` line was made at or
    after ``since`` (its name begins with that time; a line that does not
    is dropped)."""
    head = line.split(b".", 1)[0]
    return head.isdigit() and int(head) >= since


def was_deleted(md: str, unique: str) -> bool:
    """Whether a POP3 session noted the keyed copy ``unique`` deleted
    from Maildir ``md`` (``note_deleted``).  A list that cannot be read
    (or is no regular file, or too long to be the hub's) says no: the
    copy is delivered again, a duplicate rather than a loss."""
    data = _read_deleted(md)
    return data is not None and os.fsencode(unique) in data.splitlines()


def _read_deleted(md: str) -> bytes | None:
    """``md``'s ``DELETED_NAME`` whole, or None: not there, not a
    regular file (a pipe is not waited on), longer than
    ``DELETED_READ_LIMIT``, or a read that failed."""
    try:
        fd = os.open(os.path.join(md, DELETED_NAME),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > DELETED_READ_LIMIT:
            return None
        chunks = []
        left = DELETED_READ_LIMIT
        while left > 0 and (chunk := os.read(fd, min(left, _CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


# the tmp/ paths deliveries of this process are writing (or have written
# and not yet renamed into new/), counted (two retries under one key may
# overlap): clean_tmp runs on worker threads
_writing: Counter[str] = Counter()
_writing_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """``os.register_at_fork``'s hook: a worker thread of the parent may
    have held ``_writing_lock`` (``clean_tmp``) at the fork, and in the
    child no thread is left to let it go -- the child's first copy into
    a ``tmp/`` would wait for it forever.  The marks stay: the parent,
    another process now, may still be writing those files, and the
    child must not take them either."""
    global _writing_lock
    _writing_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def writing_tmp(paths: Iterable[str]) -> None:
    """Mark ``paths`` (in some Maildir's ``tmp/``) as being written by a
    delivery of this process, before the files are made: ``clean_tmp``
    leaves them alone until ``done_writing_tmp``."""
    with _writing_lock:
        _writing.update(paths)


def done_writing_tmp(paths: Iterable[str]) -> None:
    """The delivery that marked ``paths`` is over (renamed, removed, failed)."""
    paths = list(paths)
    with _writing_lock:
        _writing.subtract(paths)
        for path in paths:
            if _writing[path] <= 0:
                del _writing[path]


def clean_tmp(md: str, now: float) -> None:
    """Remove the files of ``md``'s ``tmp/`` not changed for
    ``STALE_TMP_SECONDS`` (the leftovers of a crashed delivery).

    The age is the clock's word only: after the clock jumped forward by
    more than that, a file a delivery is writing right now looks as old,
    and removing it would fail that delivery at its rename.  A file a
    delivery of this process marked (``writing_tmp``) is therefore never
    removed here; other programs' files keep the Maildir convention."""
    tmp = os.path.join(md, "tmp")
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(tmp, name)
        try:
            # lstat: a link there is judged by its own age (a dangling
            # one would stay for good), and only the link is removed
            if now - os.lstat(path).st_mtime > STALE_TMP_SECONDS:
                with _writing_lock:
                    if path in _writing:
                        continue
                    # under the lock: a delivery cannot mark it in between
                    os.unlink(path)
        except OSError:
            pass


# --- the snapshot -------------------------------------------------------------


def scan(md: str) -> Snapshot:
    """The messages of Maildir ``md`` (new/ and cur/) in delivery order.

    The names the hub gives (``own_sizes``: ``S=`` and ``W=`` by its own
    rule) are listed without touching the file; any other name (plain,
    or another program's ``S=`` and ``W=``, Dovecot's), and names whose
    sizes no file has (over ``MAX_SIZE``), get their sizes from the cache
    (measured and cached on first sight, an ``lstat`` each scan).

    A name of the hub's whose file a POP3 session found of another length
    (changed in place: ``MaildirMailbox.save_downgraded_sizes`` marks it
    in the cache) is looked at (``lstat``) and, if its file is not the
    ``S=`` the name gives, measured and renamed to the name with its true
    ``S=`` and ``W=`` (``_heal``: the UIDL and the flags stay); where the
    rename fails, the sizes measured are listed, and kept in the cache
    for the next scans.  Only such names cost a look: the others are
    listed from their names, unread.

    Only regular files are messages: the directory listing tells the type
    (``d_type``) at no extra cost, so a directory or a symbolic link is
    skipped whatever its name says.  Blocking (directory listings, reads,
    renames, a durable write): the store runs it on the syncer's worker
    threads.

    The UIDLs are the names' (``uid_for_name``), but where
    ``.txmailhub-uidls`` keeps another (``txmailhub.store.kept_uidls``:
    the UIDLs Dovecot gave, read from its ``dovecot-uidlist`` at the
    first login that lists a message).

    A ``Snapshot`` (columns, see there), made from one flat row per
    message: the peak of a big listing is a few objects a message."""
    rows: list[tuple] = []  # (sec, usec, counter, name, seq, cur, size, crlf)
    listed = [_regular_names(os.path.join(md, sub)) for sub in ("new", "cur")]
    # listed first: the cache is read only as far as these names need it;
    # the kept UIDLs before it, which looks whether the cache is there
    kept = KeptUIDLs(md, len(listed[0]) + len(listed[1]))
    cache = _SizeCache(md, len(listed[0]) + len(listed[1]))
    vanished = False  # a file of new/ gone since new/ was listed
    renamed: set[str] = set()  # the folders of the renames ``_heal`` made
    for cur, sub in enumerate(("new", "cur")):
        folder = os.path.join(md, sub)
        found, listed[cur] = listed[cur], []
        if cur and vanished:
            # another reader moved it to cur/, perhaps after cur/ was
            # listed: listed again, so it is in one of the two listings
            found = _regular_names(folder)
        for name in found:
            own = own_sizes(name)
            if own is not None and not (cache.entries and cache.misnamed(name, own)):
                size, crlf = own
                mtime = 0.0
                if cache.entries:  # a downgraded size POP3 measured (no stat here)
                    cache.keep(name)
            else:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)  # a symlink is no message of this Maildir
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    mtime = st.st_mtime
                    if own is None:
                        size, crlf = cache.sizes(name, path, st)
                    else:
                        name, size, crlf = _heal(cache, folder, name, own, st, renamed)
                except FileNotFoundError:
                    if own is None or not cur:
                        if own is not None:
                            cache.keep(name)  # still marked: put right where it went
                        vanished = vanished or not cur
                        continue
                    # renamed (flags) or removed since cur/ was listed: listed
                    # by its name, as it is unmarked (a read finds it, ``_find``)
                    cache.keep(name)
                    size, crlf = own
                    mtime = 0.0
            # the sequence number settles ties as the stable sort did
            rows.append((*order_key(name, mtime), name, len(rows), cur, size, crlf))
        del found
    for folder in sorted(renamed):
        try:
            fsync_dir(folder)  # the renames, before the cache forgets their marks
        except OSError as e:
            log.warn("the renames of message files in {folder} may not survive a crash: "
                     "{error}", folder=folder, error=str(e))
    cache.save()
    rows.sort()
    uids = [uid_for_name(row[3]) for row in rows]
    _distinct_uids(uids, rows)
    names = [row[3] for row in rows]
    kept.prune(names)
    keep_uidls(uids, names, kept.uidls)
    snapshot = Snapshot(md)
    for uid, (_, _, _, name, _, cur, size, crlf) in zip(uids, rows):
        info = name.partition(":")[2]
        seen = info.startswith("2,") and "S" in info[2:]
        snapshot.append(uid, crlf, size, bool(cur), name, seen)
    return snapshot


def _heal(cache: _SizeCache, folder: str, name: str, own: tuple[int, int],
          st: os.stat_result, renamed: set[str]) -> tuple[str, int, int]:
    """File ``name`` in ``folder`` (``st``: its ``lstat``), a name of the
    hub's (``own``: the sizes it gives) that the cache marks as not its
    file's (``_SizeCache.misnamed``): the name and sizes to list it by.

    The file is measured (a marked one alone costs that read): one of
    the sizes the name gives is listed by its name (its content put
    back; the mark goes).  Any other is renamed, in its folder, to
    ``with_sizes``'s name (``rename_noreplace``: never over another
    file; ``renamed`` gets the folder, fsynced by ``scan``), as Dovecot
    does with a wrong ``S=`` of its own names: the next logins list it by
    its name again, with no look at it.  Not renamed -- the rename
    refused (a read-only folder, a file of that name already there), or
    another file at the name since the ``lstat`` -- it is listed at the
    sizes measured, which the cache keeps (so the next scans look at it
    once, and read it only if it changed).  ``FileNotFoundError`` when
    the file went (another program renamed or removed it): ``scan``
    skips it in ``new/`` as any file gone there (found in ``cur/`` if it
    went there), lists it by its name in ``cur/``, and its mark stays
    for the next scan."""
    key = name.split(":", 1)[0]
    path = os.path.join(folder, name)
    try:
        size, crlf = cache.sizes(name, path, st)  # measured; the mark gives way
    except FileNotFoundError:
        raise
    except OSError as e:  # listed by its name's sizes: no login fails for it
        cache.keep(name)
        log.warn("message file {path} is {length} octets, not the {named} its name gives, "
                 "and cannot be measured: {error}", path=path, length=st.st_size,
                 named=own[0], error=str(e))
        return name, own[0], own[1]
    if (size, crlf) == own:
        cache.forget(key)  # its sizes are the name's again (its content put back)
        return name, size, crlf
    now = os.lstat(path)
    if size != st.st_size or (now.st_ino, now.st_size, now.st_mtime_ns) != (
            st.st_ino, st.st_size, st.st_mtime_ns):
        return name, size, crlf  # changed meanwhile: looked at again next time
    target = with_sizes(name, size, crlf)
    try:
        rename_noreplace(path, os.path.join(folder, target))
    except FileNotFoundError:
        raise
    except OSError as e:
        log.warn("message file {path} is {size} octets ({crlf} in CRLF form), not the "
                 "{named} ({named_crlf}) its name gives, and cannot be renamed to {target}: "
                 "{error}; listed at its own sizes, kept in {cache}", path=path, size=size,
                 crlf=crlf, named=own[0], named_crlf=own[1], target=target, error=str(e),
                 cache=SIZES_NAME)
        return name, size, crlf
    cache.forget(key)
    renamed.add(folder)
    log.info("message file {path} was {size} octets ({crlf} in CRLF form), not the {named} "
             "({named_crlf}) its name gave: renamed to {target} (its UIDL stays)", path=path,
             size=size, crlf=crlf, named=own[0], named_crlf=own[1], target=target)
    return target, size, crlf


def _regular_names(folder: str) -> list[str]:
    """The names of the regular files in ``folder`` not starting with a
    dot (``[]`` if it is missing): ``d_type`` tells, no ``stat``."""
    try:
        with os.scandir(folder) as listing:
            return [e.name for e in listing
                    if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _distinct_uids(uids: list[str], rows: list[tuple]) -> None:
    """Give files that share a unique part (foreign files; ours never do)
    UIDLs of their own (``uids`` in place; ``rows`` as ``scan`` makes them).
    *Every* file of such a group gets a hash of its own name, never the
    plain unique part: when one of them goes, the survivor then shows the
    client a UIDL it has never seen (a second download at worst), and
    never takes over the gone message's UIDL (the client would think it
    already had it: a loss, RFC 1939 section 7)."""
    counts = Counter(uids)
    if len(counts) == len(uids):
        return
    shared = [i for i, uid in enumerate(uids) if counts[uid] > 1]
    by_stem = Counter(_stem(rows[i][3]) for i in shared)
    for i in shared:
        # the name without its flags if that tells them apart (stable
        # across flag changes), else the whole name with its folder
        name, cur = rows[i][3], rows[i][5]
        stem = _stem(name)
        key = stem if by_stem[stem] == 1 else os.path.join("cur" if cur else "new", name)
        uids[i] = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()


def _stem(name: str) -> str:
    return name.split(":", 1)[0]


# ``delete`` of more messages than this unlinks them off the reactor thread
# (the syncer's workers); fewer cost less than the hand-off.  (The POP3
# UPDATE state uses ``update``, always off the reactor thread: one unlink
# on a hung disk held every session of the hub.)
INLINE_DELETES = 64
DELETE_CHUNK = 2000  # unlinks, or renames and unlinks (``update``), per worker job


DOWNGRADE_RULES = 7
"""The rules a downgraded size in ``.txmailhub-sizes`` was measured by
(the sixth field of its entry): a size measured by other rules is of
another copy than POP3 sends, and is measured again.  Rules 2 downgrade
the header sections of a message's MIME parts as well as its own
(``txmailhub.downgrade.PartHeaders``); rules 3 find a multipart's
boundary in RFC 2231 forms too (``boundary*=``, ``boundary*0=``...), as
MIME readers do; rules 4 keep NBSP, U+3000 and Unicode's other spaces
at the ends of a display name and between an address field's comments
(RFC 5322's white space is SP and HTAB alone); rules 5 give no
downgraded form to a multipart whose downgraded Content-Type would not
name its boundary (a part's was sent as stored where the size counted
the field rewritten); rules 6 keep every parameter of a Content-Type or
Content-Disposition with UTF-8 where two have one name (``filename=``
and ``filename*=``, RFC 2231 sections), of which rules 5 kept one;
rules 7 read a boundary as the stdlib's reader does in more of its
spellings (``boundary="<b>"`` is "b", a comment parts a token), and a
type (``(c)multipart/mixed`` is no multipart there), and give
no downgraded form to a multipart whose boundary readers take
differently (``boundary=a''b``), nor to a Content-Type whose rewrite
names a multipart or message the original is not; an
entry of five fields has a size by rules 1, the
message's header section alone.  A change to the copy needs new rules
(``tests/test_downgrade_rules.py`` fails until they are named)."""

DOWNGRADE_MARK = f"{DOWNGRADE_RULES} python {python_version()}"
"""What the sixth field of an entry in ``.txmailhub-sizes`` holds: the
rules, and the Python release that measured the size -- the copy's
parameter fields are folded by its ``email`` package, whose output
changes between releases (fixes included): after a Python upgrade each
downgraded size is measured again once.  (An older version's entries
hold the rules alone, a number: not taken, and they take none of these.)"""


class _SizeCache:
    """``.txmailhub-sizes``: ``{name before ":": [inode, mtime_ns, size,
    crlf]}``, plus a fifth and sixth field, the size of the copy
    downgraded for a POP3 client without UTF8 (RFC 6857), once POP3
    measured it, and the rules it was measured by (``DOWNGRADE_MARK``).

    Keyed by the name without its flags (a flag rename keeps the entry),
    checked against inode, mtime and size (a replaced file is measured
    again, and its downgraded size with it: a new entry has none);
    entries of files that are gone are dropped on save.  Names that carry
    their sizes (``S=`` and ``W=``) have an entry only for a downgraded
    size (with the name's sizes), checked against the file when it is
    asked for; or one with other sizes (``misnamed``): a mark, that a
    read found their file of another length (``MISNAMED``), or the
    sizes measured of a file the rename to its true sizes failed for
    (``_heal``).  An entry of
    four fields, or five (caches of older versions), is read: the
    downgraded size is then not known yet.  Written with ``durable_write`` when it
    changed; unreadable means empty, and so does one larger than
    ``ENTRY_OCTETS`` for each of the ``messages`` the Maildir holds (a
    file nobody but the hub should write, read whole into the process
    that serves every mailbox: whoever can write into the Maildir could
    make it any size).  Nothing in it keeps a login from the mailbox:
    at worst every size is measured again."""

    #: the most one entry takes: a name of 255 octets, each a six-octet
    #: ``\u`` escape in JSON (one not UTF-8), and six 64-bit numbers
    ENTRY_OCTETS = 2048

    def __init__(self, md: str, messages: int) -> None:
        self.path = os.path.join(md, SIZES_NAME)
        self.entries: dict[str, list[Any]] = {}
        self.used: set[str] = set()
        self.dirty = False
        limit = self.ENTRY_OCTETS * (messages + 1)
        try:
            # not read through a link (to /dev/zero: read without end) nor
            # from a pipe (waited on for ever): whoever can write into the
            # Maildir could put either here.  Such a cache is unreadable,
            # and the save replaces it with a file.
            with open(_open_regular(self.path), "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise ValueError(f"more than {limit} octets for {messages} messages")
            doc = json.loads(data)
            if isinstance(doc, dict) and doc.get("version") == 1:
                sizes = doc.get("sizes", {})
                if not isinstance(sizes, dict):
                    raise ValueError("its sizes are no JSON object")
                self.entries = {
                    k: v for k, v in sizes.items()
                    if isinstance(v, list) and len(v) in (4, 5, 6)
                }
        except FileNotFoundError:
            if os.path.lexists(self.path):  # there, but no regular file
                log.warn("ignoring size cache {path}: not a regular file", path=self.path)
                self.dirty = True
        except (OSError, ValueError, RecursionError) as e:
            # RecursionError: JSON nested deeper than the parser goes
            log.warn("ignoring unreadable size cache {path}: {error}", path=self.path,
                     error=str(e))
            self.dirty = True

    @staticmethod
    def _valid(got: list[int] | None, st: os.stat_result) -> bool:
        """Whether entry ``got`` is of the file ``st`` describes."""
        # both sizes go into the snapshot's integer columns: 2.0 == 2, but
        # a float there is a TypeError (and the mailbox unopenable)
        return got is not None and got[0] == st.st_ino and got[1] == st.st_mtime_ns and (
            got[2] == st.st_size and type(got[2]) is int
            and type(got[3]) is int and 0 <= got[3] <= MAX_SIZE
        )

    def sizes(self, name: str, path: str, st: os.stat_result) -> tuple[int, int]:
        key = name.split(":", 1)[0]  # the flags change, this does not
        self.used.add(key)
        got = self.entries.get(key)
        if self._valid(got, st):
            return got[2], got[3]  # type: ignore[index]
        size, crlf = _crlf_size_of_file(path)
        self.entries[key] = [st.st_ino, st.st_mtime_ns, size, crlf]
        self.dirty = True
        return size, crlf

    def misnamed(self, name: str, own: tuple[int, int]) -> bool:
        """Whether the entry of file ``name``, a name that gives its sizes
        (``own``), has other sizes: a POP3 session found the file of
        another length (``mark_misnamed``), or a rename to its true sizes
        failed (``_heal``).  An entry of a downgraded size has the
        name's (``remember``)."""
        got = self.entries.get(name.split(":", 1)[0])
        return got is not None and (got[2] != own[0] or got[3] != own[1])

    #: the entry of a name whose sizes a POP3 session found wrong: no
    #: file's (no inode 0), nor valid to a version without ``misnamed``
    MISNAMED = (0, 0, -1, -1)

    def mark_misnamed(self, key: str) -> None:
        """The file whose name before ``:`` is ``key`` (one whose name
        gives its sizes) was found of another length than the name's
        ``S=``: the next ``scan`` looks at it (``_heal``)."""
        if self.entries.get(key) != list(self.MISNAMED):
            self.entries[key] = list(self.MISNAMED)
            self.dirty = True

    def forget(self, key: str) -> None:
        """No entry for ``key`` any more."""
        self.used.discard(key)
        if self.entries.pop(key, None) is not None:
            self.dirty = True

    def keep(self, name: str) -> None:
        """The file ``name`` (one that carries its sizes) is still there:
        its entry, if it has one, stays."""
        key = name.split(":", 1)[0]
        if key in self.entries:
            self.used.add(key)

    def downgraded(self, name: str, st: os.stat_result) -> int | None:
        """The downgraded size kept for file ``name`` as ``st`` describes
        it; ``None`` when not known (no entry, one of another file or
        version, or one measured by other rules, ``DOWNGRADE_MARK``)."""
        got = self.entries.get(name.split(":", 1)[0])
        if not self._valid(got, st) or len(got) != 6 or got[5] != DOWNGRADE_MARK:  # type: ignore[arg-type,index]
            return None
        size = got[4]  # type: ignore[index]
        return size if type(size) is int and 0 <= size else None

    def remember(self, name: str, st: os.stat_result, size: int) -> None:
        """Keep ``size`` as the downgraded size of file ``name`` as ``st``
        describes it.  A file with an entry that does not match ``st`` (a
        plain-named file changed since it was measured) gets none: its
        sizes are the next scan's to measure, and it forgets this one."""
        key = name.split(":", 1)[0]
        got = self.entries.get(key)
        if self._valid(got, st):
            entry = [*got[:4], size, DOWNGRADE_MARK]  # type: ignore[index]
        else:
            # only where the name gives the sizes, as ``scan`` trusts them
            # (another program's ``,W=`` kept here would pass for measured)
            own = own_sizes(name)
            if own is None or own[0] != st.st_size:
                return
            entry = [st.st_ino, st.st_mtime_ns, st.st_size, own[1], size, DOWNGRADE_MARK]
        if entry != got:
            self.entries[key] = entry
            self.dirty = True

    def save(self, prune: bool = True) -> None:
        """Write the cache if it changed; ``prune``: drop the entries of
        files ``sizes`` and ``keep`` were not told of (``scan`` lists them
        all; a POP3 session that only adds downgraded sizes does not)."""
        stale = set(self.entries) - self.used if prune else set()
        for key in stale:
            del self.entries[key]
        if not (self.dirty or stale):
            return
        # a POP3 session may remember a size on the reactor thread while
        # this runs on a worker: written from a copy, and marked clean
        # before it is taken, so such a size is written by the next save
        self.dirty = False
        entries = dict(self.entries)
        data = json.dumps({"version": 1, "sizes": entries}, sort_keys=True).encode()
        try:
            durable_write(self.path, data)
        except OSError as e:  # a cache: the sizes are measured again next time
            log.warn("cannot write size cache {path}: {error}", path=self.path, error=str(e))


# --- one locked session ---------------------------------------------------------


@implementer(IMailbox, IDowngradedSizes, IMailboxUpdate, INoWaitRead, ICRLFSizeFound)
class MaildirMailbox:
    """A locked snapshot of one Maildir (see ``IMailbox``).

    ``store`` is the ``MaildirStore`` (its ``syncer`` makes deletions
    durable); ``lock_fds`` hold the ``flock`` (the lock file's and the
    folder's, see ``_lock_mailbox``), released by ``close``."""

    def __init__(self, store: Any, md: str, lock_fds: tuple[int, ...],
                 snapshot: Snapshot) -> None:
        self.store = store
        self.path = md
        self._lock_fds = lock_fds
        self._messages = snapshot
        self._cur = os.path.join(md, "cur")
        # for ``_find``, made on its first call: the names in new/ and cur/
        # (sorted), their mtimes then, and the snapshot's messages that
        # share a unique part (rare: foreign files)
        self._listing: tuple[list[str], list[str]] | None = None
        self._stamp: tuple[int, int] | None = None
        self._shared: dict[str, list[int]] | None = None
        # the size cache, read when a downgraded size is first asked for
        # (a client without UTF8, a message with UTF-8 header fields)
        self._size_cache: _SizeCache | None = None
        # the mailbox holding the lock, for a view of it (``for_changes``)
        self._holder: MaildirMailbox | None = None
        # the names (before ":") of the hub's whose file a read found of
        # another length than the name gives (``_length_found``): marked in
        # the size cache by the next ``save_downgraded_sizes``
        self._misnamed: set[str] = set()
        # the errors of ``note_deleted`` on a worker thread, logged by
        # ``_sync_deleted``
        self._unnoted: list[str] = []

    def list_messages(self) -> Snapshot:
        """The snapshot itself, not a copy (a copy of 20,000 messages is
        what a session must not hold twice); its paths and Seen flags
        follow ``mark_seen``."""
        return self._messages

    def _locate(self, index: int) -> str:
        """The message's path now (one ``lstat``); see ``_find``.
        What is at its name if that is a regular file; else (gone, or a
        folder, pipe or link made there since the scan: not the message,
        and not ours to remove) where ``_find`` finds it, as a read does.
        ``FileNotFoundError`` if no regular file is found."""
        path = self._messages.path(index)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return path
        except FileNotFoundError:
            pass
        # gone, or something else at its name: the message may still be
        # where another reader renamed it (as ``_open_fd`` looks for it)
        path = self._find(index)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise _not_regular(path)
        return path

    def _find(self, index: int) -> str:
        """Where message ``index`` went if another Maildir reader renamed
        it (flags, or new/ to cur/): found again by its unique part, and
        remembered.  The recorded path if it is nowhere.  A file that is
        another message of the snapshot is never taken for it (foreign
        files may share a unique part: DELE of one must not remove the
        other).

        A mail client that flagged every message makes a session look for
        each of them: a listing of cur/ (and new/) per lookup was O(n^2) in
        all (minutes for 20,000 messages).  The folders are listed once
        into ``_listing`` and listed again only when a name found there is
        gone (renamed once more), or when the message is not in it and a
        folder changed since (its mtime: a file moved back, or one the
        listing missed while it was renamed); a message deleted for good
        costs no listing of its own."""
        snapshot = self._messages
        index = range(len(snapshot))[index]  # negative, and IndexError
        recorded = snapshot.path(index)
        stem = _stem(snapshot.name(index))  # survives flag changes
        others = {snapshot.path(j) for j in self._sharing().get(stem, ()) if j != index}
        listing = self._listing
        for _ in range(2):
            fresh = listing is None
            if listing is None:
                listing = self._list()
            stale = False
            for path in self._named(listing, stem):
                if path in others:
                    continue  # another message's file
                if not os.path.lexists(path):
                    stale = True  # renamed again since the listing
                    continue
                flags = os.path.basename(path).partition(":")[2]
                seen = flags.startswith("2,") and "S" in flags[2:]
                self._moved(index, path, seen)
                return path
            if not stale and (fresh or self._stamps() == self._stamp):
                break
            listing = None
        return recorded

    def _list(self) -> tuple[list[str], list[str]]:
        """The names in new/ and cur/, each sorted (found by unique part
        with ``bisect``: a list of the names is all a session keeps, some
        100 octets a message, where a dict of paths by unique part cost
        600).  new/ is listed before cur/: a file a reader moves from new/
        to cur/ meanwhile is in one of the two listings."""
        self._stamp = self._stamps()  # before: a change meanwhile shows later
        found: list[list[str]] = []
        for sub in ("new", "cur"):
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                names = []
            names.sort()
            found.append(names)
        self._listing = listing = (found[0], found[1])
        return listing

    def _named(self, listing: tuple[list[str], list[str]], stem: str) -> Iterator[str]:
        """The paths in cur/, then new/, of the listing's names with
        unique part ``stem``."""
        for sub, names in (("cur", listing[1]), ("new", listing[0])):
            folder = os.path.join(self.path, sub)
            i = bisect.bisect_left(names, stem)
            while i < len(names) and names[i].startswith(stem):
                name = names[i]
                if len(name) == len(stem) or name[len(stem)] == ":":
                    yield os.path.join(folder, name)
                i += 1

    def _stamps(self) -> tuple[int, int]:
        """The mtimes of new/ and cur/ (-1 if missing): any file created,
        renamed or removed there changes them."""
        stamps = []
        for sub in ("new", "cur"):
            try:
                stamps.append(os.stat(os.path.join(self.path, sub)).st_mtime_ns)
            except FileNotFoundError:
                stamps.append(-1)
        return stamps[0], stamps[1]

    def _sharing(self) -> dict[str, list[int]]:
        """Unique part -> the snapshot's messages with it, for the unique
        parts more than one message has (foreign files; usually none):
        only their paths can be another message's file.  Their paths are
        asked of the snapshot at each lookup, so they follow ``moved``."""
        if self._shared is None:
            snapshot = self._messages
            stems = [_stem(snapshot.name(i)) for i in range(len(snapshot))]
            counts = Counter(stems)
            shared: dict[str, list[int]] = {}
            if len(counts) != len(stems):
                for i, stem in enumerate(stems):
                    if counts[stem] > 1:
                        shared.setdefault(stem, []).append(i)
            self._shared = shared
        return self._shared

    def _moved(self, index: int, path: str, seen: bool) -> None:
        """``Snapshot.moved``, and the listing kept current (a rename of
        our own needs no new listing)."""
        snapshot = self._messages
        old = snapshot.path(index)
        snapshot.moved(index, path, seen)
        new = snapshot.path(index)
        if old != new:
            self._listed(old, False)
            self._listed(new, True)

    def _listed(self, path: str, there: bool) -> None:
        """The listing (if made) told that ``path`` is there now, or gone:
        our own renames and unlinks need no new listing."""
        listing = self._listing
        if listing is None:
            return
        folder, name = os.path.split(path)
        if folder == os.path.join(self.path, "new"):
            names = listing[0]
        elif folder == os.path.join(self.path, "cur"):
            names = listing[1]
        else:
            return
        i = bisect.bisect_left(names, name)
        if i < len(names) and names[i] == name:
            if not there:
                del names[i]
        elif there:
            names.insert(i, name)

    def _current(self) -> bool:
        """Whether the listing shows the folders now (their mtimes as
        recorded), asked before a change of our own: then the record is
        brought up to date after it, so the change makes no new listing."""
        return self._stamp is not None and self._stamps() == self._stamp

    def _at_message(self, index: int, use: Callable[[str], _T]) -> _T:
        """``use(path)`` of message ``index``: the recorded path, else
        where ``_find`` finds it, else where a second lookup does (a
        reader that renamed it again between the lookup and the open).
        FileNotFoundError only when it is gone (POP3 answers that as
        removed by another program, not as a read to try again)."""
        try:
            return use(self._messages.path(index))
        except FileNotFoundError:
            pass
        try:
            return use(self._find(index))
        except FileNotFoundError:
            return use(self._find(index))

    def _open_fd(self, index: int) -> int:
        """A descriptor of message ``index``, read-only (``_at_message``);
        the ``fstat`` that tells a regular file tells its length too
        (``_length_found``)."""
        fd, st = self._at_message(index, _open_regular_stat)
        if st.st_size != self._messages.stored_sizes[index]:
            self._length_found(index, st.st_size)
        return fd

    def _length_found(self, index: int, length: int) -> None:
        """A read found message ``index``'s file ``length`` octets long
        (``-1``: longer than read), not its snapshot's size: where its
        name is one of the hub's that gives another ``S=`` (changed in
        place), it is marked for the next ``save_downgraded_sizes``, and
        the next login puts the name right (``scan``).  POP3 refuses the
        message for this session all the same (its size was given)."""
        name = self._messages.name(index)
        own = own_sizes(name)
        if own is not None and own[0] != length:
            self._misnamed.add(name.split(":", 1)[0])

    def _read_found(self, index: int, got: int, limit: int) -> None:
        """A read of at most ``limit`` octets of message ``index`` gave
        ``got``: ``_length_found`` where that tells another length than
        the snapshot's."""
        expected = self._messages.stored_sizes[index]
        if got != expected and (got < limit or expected < limit):
            self._length_found(index, got if got < limit else -1)

    def crlf_size_found(self, index: int, size: int) -> None:
        """POP3 read message ``index`` whole, of the length listed, and
        its CRLF form is ``size`` octets (``ICRLFSizeFound``): a name of
        the hub's whose ``W=`` is another (changed in place, a line end
        for another octet) is marked as ``_length_found`` marks one of
        another length."""
        name = self._messages.name(index)
        own = own_sizes(name)
        if own is not None and own[1] != size:
            self._misnamed.add(name.split(":", 1)[0])

    def open_message(self, index: int) -> Any:
        """An unbuffered binary file: each ``read(n)`` is one ``read(2)``,
        so a small message costs open, two fstats (``_open_regular``'s and
        the file object's), read and close.  The recorded
        path is tried first; only if it is gone is the message looked for."""
        return open(self._open_fd(index), "rb", buffering=0)

    def _read_whole(self, index: int, read: Callable[[int], bytes]) -> bytes:
        """``read(fd)`` of message ``index``, found as ``_open_fd`` finds
        it, with no ``fstat`` of its own (``_read_regular``)."""
        expected = self._messages.stored_sizes[index]

        def read_at(path: str) -> bytes:
            fd = _open_unchecked(path)
            try:
                return _read_regular(fd, path, read, expected)
            finally:
                os.close(fd)

        return self._at_message(index, read_at)

    def read_message(self, index: int, limit: int) -> bytes | None:
        """The stored bytes if shorter than ``limit``: open, one read(2),
        close (no file object, and no fstat, ``_read_regular``)."""
        data = self._read_whole(index, lambda fd: os.read(fd, limit))
        self._read_found(index, len(data), limit)
        return data if len(data) < limit else None

    def read_message_nowait(self, index: int, limit: int) -> bytes | None:
        """``read_message``, or ``BlockingIOError`` if the kernel does not
        hold the message (``INoWaitRead``): open, one ``preadv2``, close."""
        data = self._read_whole(index, lambda fd: pread_nowait(fd, limit, 0))
        self._read_found(index, len(data), limit)
        return data if len(data) < limit else None

    def read_nowait(self, file: Any, size: int) -> bytes:
        """``file.read(size)``, or ``BlockingIOError`` (``INoWaitRead``)."""
        return read_nowait(file, size)

    def mark_seen(self, index: int) -> None:
        error = self._flag_seen(index)
        if error is not None:
            log.warn("cannot mark message {index} of {maildir} seen: {error}",
                     index=index, maildir=self.path, error=error)

    def _flag_seen(self, index: int, moved: set[str] | None = None) -> str | None:
        """``mark_seen`` without its log line (it may run on a worker
        thread): what went wrong, or ``None``.  ``moved`` gets the two
        folders of a rename made (where it was, ``cur/``)."""
        try:
            snapshot = self._messages
            if snapshot.seen_in_cur(index):
                return  # already in cur/ with S: nothing to rename
            path = snapshot.path(index)
            folder, name = os.path.split(path)
            unique, _, flags = name.partition(":")
            if flags.startswith("2,"):
                if "S" in flags[2:]:
                    if folder == self._cur:
                        return
                    new_flags = flags
                else:
                    new_flags = "2," + "".join(sorted(flags[2:] + "S"))
            else:
                new_flags = "2,S"
            target = f"{self._cur}/{unique}:{new_flags}"
            try:
                # never over another file: one of the same unique part (two
                # delivery agents' names can meet) would be lost, outside
                # UPDATE and without a DELE (RFC 1939 6); then the message
                # stays where it is, unflagged (logged below)
                # our own rename changes the folders' mtimes: the listing
                # stays current (``_moved``), so it is not made again for it
                current = self._current()
                rename_noreplace(path, target)
            except FileNotFoundError:
                # Renamed by another reader since the snapshot: find it
                # and work out the flags from its present name.
                if self._find(index) == path:
                    raise
                return self._flag_seen(index, moved)
            if moved is not None:
                moved.update((folder, self._cur))
            self._moved(index, target, True)
            if current:
                self._stamp = self._stamps()
        except (OSError, IndexError) as e:
            return str(e)
        return None

    def for_changes(self) -> MaildirMailbox:
        """A view of this mailbox for ``update`` on the worker threads
        while answers still read messages through this one on other
        threads (a session ending without QUIT, its client's answers
        still being sent): its own copy of the snapshot's places and
        flags (``Snapshot.copy``), its own listing for ``_find``.  The
        two threads shared them -- the listing, and a move half made
        (``Snapshot.moved``): a read of a message being flagged met its
        name gone, a ``KeyError``.  This one's snapshot does not learn of
        the view's renames; a read finds the file again as it finds one
        another program renamed (``_find``).  It holds no lock: this one
        keeps it, and lets it go (``close``) once ``update`` is over; the
        view is ``closed`` when this one is."""
        view = MaildirMailbox(self.store, self.path, (), self._messages.copy())
        view._holder = self
        return view

    def update(self, seen: list[int], deleted: list[int]) -> defer.Deferred:
        """The POP3 UPDATE state's disk changes (``IMailboxUpdate``): the
        messages ``seen`` moved to cur/ with the S flag (``mark_seen``),
        those ``deleted`` unlinked, then the folders of the renames and of
        the unlinks fsynced, so that the ``+OK`` to ``QUIT`` follows them
        all: a rename into cur/ that a crash took back would bring a
        message deleted from there by a later session back into new/.
        All on the syncer's worker threads, ``DELETE_CHUNK``
        changes to a job: a rename or an unlink on the reactor thread held
        every session of the hub while a hung disk held it.  Fires ``None``,
        or errbacks with the first error of a deletion (as ``delete``); a
        message that cannot be flagged is logged and fails nothing."""
        # the renames first, then the unlinks, DELETE_CHUNK to a job: chunks
        # of the two lists, not a tuple per change (a million-message
        # session's QUIT built 100 MB of them on the reactor thread)
        flag = list(dict.fromkeys(seen))
        doomed = list(dict.fromkeys(deleted))
        dirs: set[str] = set()
        moved: set[str] = set()  # the folders of the renames into cur/
        errors: list[tuple[int, Exception]] = []
        unflagged: list[tuple[int, str]] = []
        # in the POP3 sessions' lane (txmailhub.store.sync, "Lanes"); no
        # ``wanted``: a session gone still has what it retrieved flagged
        call = lane_call(self.store.syncer, POP3_LANE)
        run = call if call is not None else defer.maybeDeferred
        d: defer.Deferred = defer.succeed(None)
        for start in range(0, len(flag) + len(doomed), DELETE_CHUNK):
            end = start + DELETE_CHUNK
            first = flag[start:end]
            second = doomed[max(0, start - len(flag)):max(0, end - len(flag))]
            d.addCallback(lambda _, first=first, second=second: run(
                self._change, first, second, dirs, errors, unflagged, moved))

        def settle(_: Any) -> defer.Deferred:
            for index, error in unflagged:
                log.warn("cannot mark message {index} of {maildir} seen: {error}",
                         index=index, maildir=self.path, error=error)
            return self._sync_deleted(dirs, errors, moved)

        return d.addCallback(settle)

    def _change(self, seen: list[int], deleted: list[int], dirs: set[str],
                errors: list[tuple[int, Exception]], unflagged: list[tuple[int, str]],
                moved: set[str]) -> None:
        """One worker job of ``update``: ``seen`` flagged, then ``deleted``
        unlinked; what failed goes to ``errors`` and ``unflagged``, logged
        on the reactor thread, the folders of the renames to ``moved``."""
        for index in seen:
            error = self._flag_seen(index, moved)
            if error is not None:
                unflagged.append((index, error))
        if deleted:
            self._unlink(deleted, dirs, errors)

    def delete(self, indices: list[int]) -> defer.Deferred:
        """Unlink the messages, then fsync the folders.  Fires ``None``;
        errbacks with the first error (the other messages are still
        removed and synced).  More than ``INLINE_DELETES`` unlinks run on
        the syncer's worker threads, ``DELETE_CHUNK`` to a job: 120,000 of
        them took the reactor thread 7 s, every session of the hub waiting,
        and one job for them all would keep a worker from fsyncs as long."""
        unique = list(dict.fromkeys(indices))
        dirs: set[str] = set()
        errors: list[tuple[int, Exception]] = []
        run = defer.maybeDeferred
        # (a keyed copy's note is fsynced before its unlink: never here)
        if len(unique) > INLINE_DELETES:
            run = lane_call(self.store.syncer, POP3_LANE) or self.store.syncer.call
        elif self._keyed(unique):  # (a syncer without workers: here after all)
            run = lane_call(self.store.syncer, POP3_LANE) or getattr(
                self.store.syncer, "call", defer.maybeDeferred)
        d: defer.Deferred = defer.succeed(None)
        for start in range(0, len(unique), DELETE_CHUNK):
            chunk = unique[start : start + DELETE_CHUNK]
            d.addCallback(lambda _, chunk=chunk: run(self._unlink, chunk, dirs, errors))
        return d.addCallback(lambda _: self._sync_deleted(dirs, errors))

    def _unlink(self, indices: list[int], dirs: set[str],
                errors: list[tuple[int, Exception]]) -> None:
        """Unlink; ``dirs`` gets the folders that lost a message, ``errors``
        what failed (logged by ``_sync_deleted``, on the reactor thread).
        The keyed copies among them (the queue runner's local retries)
        are noted first (``note_deleted``); a note that cannot be written
        is a warning, and the deletion goes on."""
        keyed = self._keyed(indices)
        if keyed:
            store = self.store
            try:
                note_deleted(self.path, keyed, getattr(store, "_clock", time.time)(),
                             getattr(store, "keep_deleted", KEEP_DELETED))
            except Exception as e:  # the deletion goes on whatever the note met
                self._unnoted.append(str(e))
        for index in indices:
            try:
                path = self._locate(index)
                # our own unlinks change the folder's mtime too: without
                # this, each message another reader deleted that is looked
                # up after one of them would list the folders again
                current = self._current()
                os.unlink(path)
                self._listed(path, False)
                if current:
                    self._stamp = self._stamps()
            except FileNotFoundError:
                continue
            except (OSError, IndexError) as e:
                errors.append((index, e))
                continue
            dirs.add(os.path.dirname(path))

    def _keyed(self, indices: list[int]) -> list[str]:
        """The unique parts of the keyed copies among ``indices``."""
        keyed = []
        for index in indices:
            try:
                unique = keyed_unique(self._messages.name(index))
            except IndexError:
                continue
            if unique is not None:
                keyed.append(unique)
        return keyed

    def _sync_deleted(self, dirs: set[str], errors: list[tuple[int, Exception]],
                      moved: set[str] | None = None) -> defer.Deferred:
        """fsync the folders that lost a message (``dirs``: their failure
        is the deletions' failure) and those of the renames into cur/
        (``moved``: a failure there is logged, the flags being no
        deletion), all requested at once; fires once every one is over."""
        for index, e in errors:
            log.error("cannot delete message {index} of {maildir}: {error}",
                      index=index, maildir=self.path, error=str(e))
        unnoted, self._unnoted = self._unnoted, []
        for error in unnoted:
            log.warn("cannot note in {maildir} the deletion of a copy the queue delivered: "
                     "{error}; a retry of it after a crash before its record delivers it "
                     "again", maildir=self.path, error=error)
        d = self.store.syncer.sync(dirs=sorted(dirs)) if dirs else defer.succeed(None)
        flags_only = sorted((moved or set()) - dirs)
        if flags_only:
            def unsynced(failure: Any) -> None:
                log.warn("the seen flags of {maildir} may not survive a crash: {error}",
                         maildir=self.path, error=failure.getErrorMessage())

            flagged = self.store.syncer.sync(dirs=flags_only).addErrback(unsynced)
            d = all_done([d, flagged])
        if errors:
            first = errors[0][1]
            d.addCallback(lambda _: defer.fail(first))
        return d

    # -- IDowngradedSizes: kept in the size cache ``scan`` uses --------------

    def _cache(self) -> _SizeCache:
        if self._size_cache is None:
            self._size_cache = _SizeCache(self.path, len(self._messages))
        return self._size_cache

    def downgraded_size(self, index: int, file: Any) -> int | None:
        return self._cache().downgraded(self._messages.name(index), os.fstat(file.fileno()))

    def remember_downgraded_size(self, index: int, file: Any, size: int) -> None:
        self._cache().remember(self._messages.name(index), os.fstat(file.fileno()), size)

    def save_downgraded_sizes(self) -> None:
        """Under the mailbox's lock only: ``scan`` writes the cache too, in
        the next session to hold it.  (One that closes while this writes
        lets the next scan start meanwhile; the file stays whole either
        way -- ``durable_write`` -- and at worst a size is measured again.)
        The names a read found wrong (``_length_found``) are marked in it
        too (``_SizeCache.mark_misnamed``), for the next login to put
        right; a mark lost costs one more session that refuses the
        message, and finds it again."""
        if self.closed:
            return
        misnamed = self._misnamed
        if misnamed:
            cache = self._cache()
            for key in list(misnamed):
                misnamed.discard(key)
                cache.mark_misnamed(key)
        cache = self._size_cache
        if cache is None or not cache.dirty:
            return
        cache.save(prune=False)

    def close_soon(self, call_later: Callable[..., Any]) -> None:
        """The session is gone, and closes this once a last
        ``save_downgraded_sizes`` is written (under the lock: ``scan``
        writes the cache too).  A login of the same user meanwhile (a
        client that reconnects at once) waits for ``close`` rather than
        being told the mailbox is in use (``MaildirStore.open_mailbox``),
        for ``GONE_SAVE_WAIT`` seconds at most (``call_later``: the
        reactor's ``callLater``)."""
        if not self.closed:
            self.store.close_soon(self.path, call_later)

    def close(self) -> None:
        fds, self._lock_fds = self._lock_fds, ()
        for fd in fds:
            os.close(fd)  # closing the descriptor releases the flock
        if fds:
            self.store.closed(self.path)

    @property
    def closed(self) -> bool:
        holder = self._holder
        return not self._lock_fds if holder is None else holder.closed
