"""The Maildir mailbox store (IMailboxStore): delivery and POP3 locking.

Owns ``state_dir/mail/<domain>/<localpart>/{tmp,new,cur}`` (local part
lower-cased) and, in each Maildir's root, ``.txmailhub.lock`` (the POP3
exclusive lock, an ``flock`` taken by ``open_mailbox``) and
``.txmailhub-sizes`` (the CRLF sizes of messages other programs dropped
in, kept by ``txmailhub.store.mailbox``), ``.txmailhub-uidls`` (the
UIDLs kept from another server, ``txmailhub.store.kept_uidls``) and
``.txmailhub-deleted`` (the keyed copies a POP3 session deleted:
``mailbox.note_deleted``).  The snapshot and the session
view live in ``store/mailbox.py``, the name and size rules in
``store/format.py`` (re-exported here).  It does not route, parse
messages or speak any protocol.

Delivery, hot path (``MaildirStore.deliver_spooled``, ``ISpoolingStore``):
the spool file's fsync, the copies into ``new/`` and the fsync of the
``new/`` directories, one after the other, through ``Syncer.sync_then``
(``_Publication``): kernel AIO requests, or one job on the syncer's
worker thread; one mailbox gets the spool file by ``rename(2)``,
several get hard links.  A Maildir this process meets for the first
time has its folders and POP3 lock file made in that job, before the
links (with AIO, where the publication runs on the reactor thread, in a
``syncer.call`` job of their own before it: ``_make_unknown``).  A copy
the filesystem cannot link (or whose Maildir vanished) goes through
``deliver`` afterwards.

Delivery (``MaildirStore.deliver``): the spool file is already fsynced,
so each copy is a hard link straight into ``new/`` -- a complete file
appears there atomically, never a partial one -- then the ``new/``
directories (and any directory just created) are made durable through the
``Syncer``, all mailboxes of a message in one batch.  Where a link is not
possible (another filesystem, link limit) the message is copied into
``tmp/`` on the syncer's worker threads (``syncer.call``: a copy reads
and writes the whole message), fsynced, renamed into ``new/`` and
``new/`` fsynced (``_copy_off``).  The folders of a Maildir met for the
first time are made before, in one ``syncer.call`` job
(``_make_unknown``; for ``deliver_keyed``, in its lookup job).  Each
mailbox has its own outcome; a
copy whose directory could not be made durable is removed again (best
effort), so a retry does not duplicate it.
``deliver_keyed`` (the queue runner's local retries) first looks for the
copy an earlier attempt under the same key made, on the syncer's worker
threads: under any name of its unique part, in ``new/`` or ``cur/``, which
may list both folders, as long as the mailbox is -- but not for the
first attempt of an entry queued by this process, which looks at two
names only.

Names follow the Maildir convention:
``<sec>.M<usec>P<pid>Q<counter>R<random>.<host>,S=<size>,W=<crlf size>``
(``/``, ``:`` and ``,`` in the host escaped as ``\\057``, ``\\072``,
``\\054``), plus ``:2,<flags>`` once in ``cur/``.  ``S`` is the size on
disk, ``W`` the octets POP3 sends (``CRLFEncoder``), so a snapshot lists
without reading or even stat-ing files.  The POP3 UIDL is the unique part
(before ``,`` and ``:``): stable across sessions and flag changes.

A message another program dropped in keeps its name (other programs may
hold it), whether plain or with ``S=`` and ``W=`` of its own (Dovecot's,
whose ``W=`` leaves out the CRLF a message without a final newline ends
with in POP3: ``format.own_sizes``); its CRLF size is computed once and
cached in ``.txmailhub-sizes`` (JSON, keyed by the name without its
flags and checked against inode, mtime and size, so a replaced file is
measured again), written with ``durable_write``.  The same cache keeps,
for any message POP3 downgraded for a client without UTF8 (RFC 6857),
the size of the downgraded copy, checked the same way.  Renaming the file
instead would change a name other programs may hold; the cache is
recomputable, so losing it costs one more read, never a wrong size.
The one file the hub renames for its sizes is one of its own names whose
file was changed in place to another length than its ``S=`` (a POP3 read
finds it, and the cache marks it): the next login renames it to its true
``S=`` and ``W=``, unique part and flags kept (``mailbox.scan``).

``open_mailbox`` makes the Maildir's folders (the first time), opens
the lock file, takes the lock (``flock`` with ``LOCK_NB``: a second
session in this process or another fails at once with
``MailboxInUse``, and the kernel drops the lock when the process dies,
so it never goes stale; only a session of this process that is gone
and writes a last size cache entry, ``close_soon``, is waited for) and
lists the Maildir in one job on the syncer's worker threads
(``_open_locked``): a mkdir or an open on a hung disk must not hold
the reactor thread.  That job, like the session end's (``MaildirMailbox.update``),
goes through the POP3 sessions' lane (``txmailhub.store.sync``,
"Lanes"): logins that hang leave a worker for delivery, and one whose
client left while it waited there is never run.  The logins of one Maildir take their turns, one
job at a time, in the order they came.  Names within a domain are
folded to lower case, like ``Address.key``; a local part that cannot be
a folder name (``/``, ``.``, ``..``) fails that mailbox alone with
``LocalError``.

Stored messages keep LF line endings, as mutt and other Maildir readers
expect.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import time
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import Address, canonical_domain, canonical_local
from txmailhub.disk_names import on_disk
from txmailhub.envelope import SpooledMessage
from txmailhub.errors import MailboxInUse, MailboxNameError, MailboxTurnAbandoned
from txmailhub.interfaces import IKeyedStore, IMailboxStore, ISpoolingStore
from txmailhub.logsafe import quoted
from txmailhub.store.format import (
    CRLFCounter,
    CRLFEncoder,
    MessageInfo,
    Snapshot,
    base_name,
    crlf_size_of,
    escape_host,
    uid_for_name,
)
from txmailhub.store.kept_uidls import KEPT_NAME
from txmailhub.store.mailbox import (
    KEEP_DELETED,
    LOCK_NAME,
    SIZES_NAME,
    MaildirMailbox,
    clean_tmp,
    done_writing_tmp,
    scan,
    was_deleted,
    writing_tmp,
)
from txmailhub.store.sync import (
    POP3_LANE,
    CallAbandoned,
    all_done,
    lane_call,
    makedirs_durably,
)

__all__ = [
    "LOCK_NAME",
    "SIZES_NAME",
    "CRLFCounter",
    "CRLFEncoder",
    "MaildirMailbox",
    "MaildirStore",
    "MessageInfo",
    "Snapshot",
    "crlf_size_of",
    "maildir_path",
    "scan",
    "uid_for_name",
]

log = Logger()

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a lock file that is a link is not followed
# The lock file is opened without waiting: a named pipe in its place
# (whoever can write into the Maildir can make one) would hold an open
# for writing alone, or reading alone, until its other end is opened --
# for ever, and delivery's on the reactor thread.  Harmless for a file.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_LOCK_MAKE = os.O_WRONLY | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK
#: the empty kept-UIDLs file of a Maildir ``_make_maildir`` makes
_KEPT_MAKE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW

#: Seconds a login waits for the lock of a gone session of this process
#: that writes a last size cache entry (``close_soon``) before it is
#: refused as in use after all: that write is one small file, but a disk
#: whose fsync hangs must not hold a reconnecting client (nor pile up
#: waiting logins) for as long as it hangs.
GONE_SAVE_WAIT = 5.0
# A Maildir's new/ from its path (maildir_path's, which never ends with a
# separator), without a posixpath.join per message
_NEW = os.sep + "new"
_CHUNK = 1 << 20
# link(2) failures that mean "this filesystem cannot link here": copy instead
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


#: the most octets a name in a folder may have: NAME_MAX of Linux's file
#: systems (ext4, XFS, Btrfs, tmpfs) and of most others
NAME_MAX = 255


def _cannot_be_folder(name: str) -> bool:
    return not name or name in (".", "..") or "/" in name or "\x00" in name


def _too_long(name: str) -> str | None:
    """Why ``name`` is too long for a folder's name, or ``None``."""
    if len(name) * 4 <= NAME_MAX:  # (a name of 63 characters or fewer fits)
        return None
    octets = len(name.encode("utf-8", "surrogateescape"))
    if octets <= NAME_MAX:
        return None
    return (f"its Maildir folder's name would be {octets} octets, over the {NAME_MAX} a "
            "file system takes in one name (NAME_MAX)")


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` (a local part or domain as the store spells its folder,
    ``canonical_local``/``canonical_domain``) can be no Maildir folder's
    name, or ``None``: empty, ``.`` or ``..``, a ``/`` or NUL in it, or
    over ``NAME_MAX`` octets in the file system's encoding (UTF-8).  The
    one rule of the store (``maildir_path``), ``mailhub check`` and
    ``mailhub user add``."""
    if _cannot_be_folder(name):
        return "it cannot name a Maildir folder (no '/', not '.' or '..')"
    return _too_long(name)


def _path_component(text: str, what: str) -> str:
    if _cannot_be_folder(text):
        raise MailboxNameError(f"{what} {quoted(text)} cannot name a Maildir folder",
                               part=what)
    why = _too_long(text)
    if why is not None:
        # one line of the log, not a screenful
        raise MailboxNameError(f"{what} {quoted(text[:40])}...: {why}", part=what)
    return text


# --- the store ----------------------------------------------------------------

# Every store of this process, to refresh their name parts after a fork.
_STORES: weakref.WeakSet[MaildirStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._new_process()
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def maildir_path(mail_dir: str, address: Address) -> str:
    """``mail_dir/<domain>/<local part, lower-cased>``: where ``address``'s
    mail is (``LocalError`` for a name no folder may have), the names in
    UTF-8 on disk (``on_disk``).  The one rule, for the store and for
    ``mailhub user list --usage``."""
    domain = _path_component(canonical_domain(address.domain), "domain")
    local = _path_component(canonical_local(address.local), "local part")
    return os.path.join(mail_dir, on_disk(domain), on_disk(local))


@implementer(IMailboxStore, ISpoolingStore, IKeyedStore)
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
        rename: Callable[[str, str], None] = os.rename,
        keep_deleted: float = KEEP_DELETED,
    ) -> None:
        self.mail_dir = os.path.abspath(mail_dir)
        # how long a POP3 session's note of a keyed copy it deleted is kept
        # (``mailbox.note_deleted``): longer than a queued message lives
        self.keep_deleted = keep_deleted
        self.hostname = hostname
        self.syncer = syncer
        self._clock = clock
        self._link = link
        self._rename = rename
        self._host = escape_host(hostname)
        self._counter = itertools.count(1)
        # pid and a random tag once per process: with the time and the
        # counter they make every name unique (no system call per message)
        self._process = ""
        self._tag = ""
        self._new_process()
        _STORES.add(self)
        # Maildir -> directories whose new entries (from creating it) are
        # not yet known to be durable; a delivery syncs them, then forgets.
        self._unsynced: dict[str, set[str]] = {}
        self._known: set[str] = set()
        # the Maildirs whose folders a ``_make_unknown`` job is making, and
        # the deliveries waiting for it (each told the outcome)
        self._making: dict[str, list[defer.Deferred]] = {}
        self._paths: dict[Address, str] = {}  # maildir_path's memory
        # Maildir -> the logins waiting for its lock, held by a session of
        # this process that is gone but still saving (``close_soon``)
        # (each with whether its client is still there: ``wanted``)
        self._closing: dict[str, list[tuple[defer.Deferred, Callable[[], bool] | None]]] = {}
        self._closing_timers: dict[str, Any] = {}  # -> GONE_SAVE_WAIT's call
        # Maildir -> the logins waiting for their turn at its lock while
        # another login's job runs on a worker thread (``_open``)
        self._turns: dict[str, list[tuple[Any, ...]]] = {}
        # Maildir -> how often a session of this process let go of its lock
        # (``closed``) while logins took their turns (kept for those only)
        self._releases: dict[str, int] = {}
        if not os.path.isdir(self.mail_dir):
            makedirs_durably(self.mail_dir, mode=0o700)

    # -- paths ---------------------------------------------------------------

    def maildir_path(self, address: Address) -> str:
        """``mail_dir/<domain>/<local part, lower-cased>``.

        Remembered per address (a few thousand at most): the same mailboxes
        get mail all day, and the canonical forms, the checks and the join
        cost a dozen Python calls per message."""
        md = self._paths.get(address)
        if md is None:
            md = maildir_path(self.mail_dir, address)
            if len(self._paths) >= 4096:
                self._paths.clear()
            self._paths[address] = md
        return md

    def _ensure(self, md: str) -> tuple[str, ...]:
        """Create ``md`` and its tmp/new/cur as needed, on this thread;
        returns the directories whose entries must still be made durable.
        Delivery makes the folders of a Maildir it has not met on the
        worker threads (``_make_unknown``, ``_Publication.run``): this
        is for the rare ones left (a Maildir removed under a delivery,
        ``_link_into``; a syncer without ``call``)."""
        if md not in self._known:
            self._note_new(md)
            _make_maildir(md)
            _make_lock(md)
            self._known.add(md)
        return self._unsynced_of(md)

    def _note_new(self, md: str) -> None:
        """The first time this process meets a Maildir, every entry on the
        way to it is synced once, whoever made it: a mkdir that failed
        half-way, a POP3 login that created the folders, a run that
        crashed before its fsync -- none may leave an acknowledged message
        in a folder whose name is not durable.  (Recorded before the
        mkdirs, so a failing one leaves them recorded.)"""
        domain_dir = os.path.dirname(md)
        self._unsynced.setdefault(md, set()).update(
            (os.path.dirname(domain_dir), domain_dir, md))

    def _unsynced_of(self, md: str) -> tuple[str, ...]:
        return tuple(sorted(self._unsynced.get(md, ())))

    def _folders(self, mailboxes: list[Address]) -> dict[Address, str]:
        """Each mailbox's Maildir; one that cannot be a folder is left out
        (``_deliver`` reports it, for that mailbox alone)."""
        folders: dict[Address, str] = {}
        for address in dict.fromkeys(mailboxes):
            try:
                folders[address] = self.maildir_path(address)
            except Exception:
                continue
        return folders

    def _make_unknown(self, mds: Any) -> defer.Deferred | None:
        """Make the folders (and POP3 lock file) of the Maildirs of
        ``mds`` this process has not met yet, in one job on the syncer's
        worker threads (on this thread when it has no ``call``): a mkdir
        on a hung disk must not hold every session of the hub.  None when
        every one is known -- the common case, which costs no job.  Fires
        with ``{Maildir: error}`` for those that could not be made (each
        that delivery's own failure); never errbacks.

        A Maildir whose job is already under way (another message for the
        same new user) waits for that job's outcome instead of a job of
        its own: on a hung disk, one worker thread held per new Maildir,
        not one per message."""
        fresh = [md for md in dict.fromkeys(mds) if md not in self._known]
        if not fresh:
            return None
        new: list[str] = []
        waits: list[defer.Deferred] = []
        for md in fresh:
            waiters = self._making.get(md)
            if waiters is None:
                self._note_new(md)
                new.append(md)
                waiters = self._making[md] = []
            waits.append(defer.Deferred())
            waiters.append(waits[-1])
        if new:
            call = getattr(self.syncer, "call", None)
            try:
                if call is None:
                    d = defer.maybeDeferred(_make_maildirs, new)
                else:
                    d = call(_make_maildirs, new)
            except Exception:
                # a job that could not even be asked for fails these copies
                # as a refused one does: raised here, it left its Maildirs
                # in ``_making`` and every later message for them waiting
                d = defer.fail()

            def made(outcomes: list[Exception | None]) -> dict[str, Exception]:
                return self._made(new, outcomes)

            def not_made(failure: Any) -> dict[str, Exception]:  # the syncer is stopped
                return dict.fromkeys(new, failure.value)

            def tell(broken: dict[str, Exception]) -> None:
                for md in new:
                    for waiter in self._making.pop(md, []):
                        waiter.callback(broken.get(md))

            d.addCallbacks(made, not_made).addCallback(tell)
            d.addErrback(lambda f: log.failure("making Maildir folders failed", f))

        def gathered(errors: list[Exception | None]) -> dict[str, Exception]:
            return {md: e for md, e in zip(fresh, errors) if e is not None}

        return defer.gatherResults(waits).addCallback(gathered)

    def _made(self, fresh: list[str], outcomes: list[Exception | None]) -> dict[str, Exception]:
        broken: dict[str, Exception] = {}
        for md, error in zip(fresh, outcomes):
            if error is None:
                self._known.add(md)
            else:
                broken[md] = error
        return broken

    def _synced(self, md: str, dirs: tuple[str, ...]) -> None:
        left = self._unsynced.get(md)
        if left is not None:
            left.difference_update(dirs)
            if not left:
                del self._unsynced[md]

    def _new_process(self) -> None:
        """Draw the per-process parts of the names again: at start, and in
        the child of a fork -- twistd's daemonizing, or an embedding that
        forks workers after making the store.  Two children with the
        parent's pid, tag and counter would make the same names, and the
        rename of one copy into ``new/`` replaces the other's."""
        self._process = f"P{os.getpid()}"
        self._tag = f"R{os.urandom(4).hex()}.{self._host}"

    def _forked(self) -> None:
        """In the child of a fork: the folder jobs (``_making``) and POP3
        login jobs (``_turns``) under way are the parent's -- its threads
        did not come along, and their results are delivered there only
        (``txmailhub.store.sync``, "After fork").  Their waiters are the
        parent's too and are not fired here; forgetting them lets the
        child's messages and logins for those Maildirs run jobs of their
        own instead of waiting for ever."""
        self._making = {}
        self._turns = {}
        self._releases = {}

    def unique_name(self, message: SpooledMessage) -> str:
        now = self._clock()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return (
            f"{sec}.M{usec}{self._process}Q{next(self._counter)}{self._tag}"
            f",S={message.size},W={message.crlf_size}"
        )

    def keyed_name(self, message: SpooledMessage, key: tuple[float, str]) -> str:
        """The name of the copy made under ``key`` (``deliver_keyed``): the
        same on every attempt and in every process, and in the usual shape
        (``<sec>.M<usec>K<name>.<host>``), so it sorts by ``when``."""
        when, tag = key
        sec = int(when)
        usec = int((when - sec) * 1_000_000)
        tag = "".join(c for c in tag if c.isascii() and c.isalnum())[:40]
        return (f"{sec}.M{usec}K{tag}.{self._host}"
                f",S={message.size},W={message.crlf_size}")

    # -- delivery ------------------------------------------------------------

    def deliver(self, message: SpooledMessage, mailboxes: list[Address]) -> defer.Deferred:
        """See ``IMailboxStore``.  A Maildir met for the first time has its
        folders made first, in one job on the worker threads
        (``_make_unknown``); one already known costs no job."""
        d = self._make_unknown(self._folders(mailboxes).values())
        if d is None:
            return self._deliver(message, mailboxes, None)
        return d.addCallback(lambda broken: self._deliver(message, mailboxes, None,
                                                          broken=broken))

    def deliver_keyed(self, message: SpooledMessage, mailboxes: list[Address],
                      key: tuple[float, str], first: bool = False) -> defer.Deferred:
        """``IKeyedStore``: ``deliver`` under a name made from ``key``; a
        Maildir that already has that copy -- under its name in ``new/``,
        or under any name of its unique part in ``new/`` or ``cur/``: read
        over POP3 meanwhile (moved to ``cur/`` with its flags), or renamed
        by a login to its true ``,S=`` and ``,W=`` -- gets no second copy.
        The queue runner's local retries use it, so a crash after the copy
        and before its record leaves one copy, not two, after the restart.
        A copy the user has already deleted over the hub's POP3 is noted
        so before the unlink (``mailbox.note_deleted``), and counts as
        delivered; one another program deleted cannot be told from one
        never made, and is delivered again (a duplicate, which RFC 5321
        6.1 prefers to a loss).

        Whether a Maildir has the copy is looked up on the syncer's worker
        threads (``syncer.call``; as in ``open``, on the caller's thread
        when the syncer has no ``call``), all mailboxes in one job: unless
        the copy is in ``new/`` or in ``cur/`` as POP3 leaves it, ``cur/``
        and ``new/`` are listed, and a mailbox kept for years holds tens
        of thousands of names -- listed on the reactor thread, every
        session would wait.  ``first``: no attempt under ``key`` can have
        been made before (the caller queued the message itself and has not
        tried it yet), so nothing is listed -- the common case costs two
        looks at names, not a listing of each mailbox."""
        name = self.keyed_name(message, key)
        folders = self._folders(mailboxes)
        if not folders:
            return self._deliver(message, mailboxes, key, {})
        # the folders of a Maildir met for the first time are made in the
        # same job, before the look (``_make_unknown``)
        fresh = [md for md in dict.fromkeys(folders.values()) if md not in self._known]
        for md in fresh:
            self._note_new(md)

        def looked(out: tuple[list[Exception | None], list[_Found]]) -> defer.Deferred:
            made, found = out
            return self._deliver(message, mailboxes, key, dict(zip(folders, found)),
                                 broken=self._made(fresh, made))

        def not_looked(failure: Any) -> defer.Deferred:  # the syncer is stopped
            # the new Maildirs were not made either: ``broken``, or
            # ``_ensure`` would make them here, on the reactor thread
            return self._deliver(message, mailboxes, key, dict.fromkeys(folders, failure.value),
                                 broken=dict.fromkeys(fresh, failure.value))

        call = getattr(self.syncer, "call", None)  # as open(): a syncer may have none
        if call is None:
            d = defer.maybeDeferred(_make_then_look, fresh, list(folders.values()), name,
                                    not first)
        else:
            d = call(_make_then_look, fresh, list(folders.values()), name, not first)
        return d.addCallbacks(looked, not_looked)

    def _deliver(self, message: SpooledMessage, mailboxes: list[Address],
                 key: tuple[float, str] | None,
                 made: dict[Address, _Found] | None = None,
                 broken: dict[str, Exception] | None = None) -> defer.Deferred:
        """Deliver, under the name ``key`` makes when it is given; ``made``
        then says, for each mailbox, where a copy under that name already
        is (``_made_before``, or the error that lookup met).  ``broken``:
        the Maildirs whose folders could not be made (``_make_unknown``),
        each that mailbox's failure alone."""
        results: dict[Address, Exception | None] = {}
        linked: list[tuple[Address, str, str, tuple[str, ...]]] = []
        to_copy: list[tuple[Address, str, str]] = []  # (address, md, its tmp/ path)
        # keyed copies found under another name: (address, md, dirs, folder)
        found: list[tuple[Address, str, tuple[str, ...], str]] = []
        for address in dict.fromkeys(mailboxes):
            try:
                md = self.maildir_path(address)
                name = self.unique_name(message) if key is None else self.keyed_name(message, key)
                new = os.path.join(md, "new", name)
                if broken and md in broken:
                    raise broken[md]
                self._ensure(md)  # known by now: no mkdir (see _make_unknown)
                if key is not None:
                    there = (made or {}).get(address)
                    if isinstance(there, Exception):
                        raise there
                    if there == _DELETED:
                        # made by an earlier attempt, then read and deleted
                        # over POP3 before that attempt was recorded (its
                        # note was durable before the unlink): delivered
                        log.info("the copy of the queued message for {mailbox} was "
                                 "deleted over POP3 already: not delivered again",
                                 mailbox=str(address))
                        results[address] = None
                        continue
                    if there == ("new", name):  # made by a run that may not have synced it
                        linked.append((address, md, new, self._ensure(md)))
                        continue
                    if there is not None:
                        # Read meanwhile, or renamed by a login.  The run
                        # that made it may have died before syncing new/,
                        # and POP3 renames into cur/ without a sync: its
                        # folder is synced before the runner may record
                        # the copy and drop its own.
                        found.append((address, md, self._ensure(md), there[0]))
                        continue
                try:
                    self._link_into(message.path, new, md)
                    linked.append((address, md, new, self._ensure(md)))
                except OSError as e:
                    if e.errno not in _LINK_FALLBACK:
                        raise
                    # copied on the syncer's worker threads (_copy_off)
                    to_copy.append((address, md, os.path.join(md, "tmp", name)))
            except Exception as e:
                log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                          error=str(e))
                results[address] = e

        targets: list[Any] = []
        for _, md, _, dirs in linked:
            targets.extend([*dirs, os.path.join(md, "new")])
        for _, md, dirs, sub in found:
            targets.extend([*dirs, os.path.join(md, sub)])
        ds = iter(self.syncer.sync_each(targets) if targets else ())

        pending: list[defer.Deferred] = []
        for address, md, new, dirs in linked:
            mine = [next(ds) for _ in range(len(dirs) + 1)]
            d = all_done(mine)
            if dirs:
                d.addCallback(lambda _, md=md, dirs=dirs: self._synced(md, dirs))
            pending.append(self._record(d, results, address, new))
        for address, md, dirs, _ in found:
            d = all_done([next(ds) for _ in range(len(dirs) + 1)])
            if dirs:
                d.addCallback(lambda _, md=md, dirs=dirs: self._synced(md, dirs))
            # no path to take back: the copy is the user's, read already
            pending.append(self._record(d, results, address, None))
        if to_copy:
            pending.append(self._copy_off(message.path, to_copy, key is not None, results))
        if len(pending) == 1:  # the common case: no DeferredList
            return pending[0].addCallback(_give, results)
        if not pending:
            return defer.succeed(results)
        return defer.DeferredList(pending).addCallback(_give, results)

    def deliver_spooled(
        self, writer: Any, mailboxes: list[Address], discard: Any = None
    ) -> defer.Deferred:
        """``ISpoolingStore``: finish ``writer`` and link the message into
        each mailbox in the same sync batch (see ``_Publication``).

        A mailbox whose link fails because the filesystem cannot link
        there, or because the Maildir vanished, goes through ``deliver``
        afterwards (copy, or re-create the folders), like any delivery."""
        results: dict[Address, Exception | None] = {}
        broken: dict[str, Exception] = {}

        def make(message: SpooledMessage) -> _Publication:
            publication = _Publication(message, self._link, self._rename, discard)
            for address in dict.fromkeys(mailboxes):
                try:
                    md = self.maildir_path(address)
                    if md in broken:
                        raise broken[md]
                    fresh = md not in self._known
                    if fresh:  # made by run(), on the worker thread
                        self._note_new(md)
                    # (md comes from maildir_path: no trailing separator)
                    new = f"{md}{_NEW}{os.sep}{self.unique_name(message)}"
                except Exception as e:
                    log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                              error=str(e))
                    results[address] = e
                    continue
                publication.add(address, md, new, self._unsynced_of(md), fresh)
            if results:  # the caller needs the spool file for those
                publication.discard = None
            return publication

        d: defer.Deferred | None = None
        if getattr(self.syncer, "publishes_inline", False):
            # With the kernel's AIO the publication runs on the reactor
            # thread: a Maildir met for the first time gets its folders in
            # a job of its own first (one more job, that time only).
            d = self._make_unknown(self._folders(mailboxes).values())
        if d is None:
            d = writer.finish_then(make)
        else:
            def made(more: dict[str, Exception]) -> defer.Deferred:
                broken.update(more)
                return defer.maybeDeferred(writer.finish_then, make)

            d.addCallback(made)
        d.addCallback(self._spooled, results)
        return d

    def _spooled(self, out: tuple[SpooledMessage, _Publication], results: dict) -> Any:
        message, publication = out
        self._known.update(publication.made)
        for md, dirs in publication.synced:
            self._synced(md, dirs)
        retry = []
        for address, error in publication.results.items():
            if _link_impossible(error):
                if isinstance(error, FileNotFoundError):
                    # the Maildir vanished (or was never made): deliver
                    # makes it again, on the worker threads
                    with contextlib.suppress(Exception):
                        self._known.discard(self.maildir_path(address))
                retry.append(address)
            else:
                if error is not None:
                    log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                              error=str(error))
                results[address] = error
        if not retry:
            return message, results, publication.discarded
        d = self.deliver(message, retry)

        def merged(more: dict) -> tuple[SpooledMessage, dict, bool]:
            results.update(more)
            return message, results, False

        return d.addCallback(merged)

    def _copy_off(self, source: str, wanted: list[tuple[Address, str, str]], replace: bool,
                  results: dict) -> defer.Deferred:
        """Copy ``source`` into the ``tmp/`` path of each mailbox of
        ``wanted`` (``(address, Maildir, tmp path)``, where it could not be
        linked), then make each copy durable and rename it into ``new/``
        (``_publish_copy``).  Fires when every mailbox's outcome is in
        ``results``; never errbacks.

        Why on the syncer's worker threads (``syncer.call``; on the
        caller's thread when the syncer has none, as ``open_mailbox``):
        a copy reads and writes the whole message -- tens of MiB at the
        size limit, on another filesystem that may be slow -- and on the
        reactor thread every other session would wait for it.  The links
        before it stay on the reactor thread: a few metadata calls, and
        a hand-off to a thread for each of them would cost every delivery
        what only these copies need (the mkdirs of a new Maildir, once,
        are a job: ``_make_unknown``).  All mailboxes in one
        job, each with its own outcome (``_copy_each``).  ``replace``: a
        keyed name, the same on every attempt, whose leftover in ``tmp/``
        is removed first (see ``_copy_each``).  A syncer that is stopped
        refuses the job: that is every such mailbox's error, and no
        ``tmp/`` file is made."""
        jobs = [(source, tmp, replace) for _, _, tmp in wanted]
        # a POP3 login's tmp/ clean-up must not take these files away while
        # they are written, synced and renamed: after a forward clock jump
        # they look old (``clean_tmp``)
        paths = [tmp for _, _, tmp in wanted]
        writing_tmp(paths)
        call = getattr(self.syncer, "call", None)
        if call is None:
            d = defer.maybeDeferred(_copy_each, jobs)
        else:
            d = call(_copy_each, jobs)

        def copied(fds: list[int | Exception]) -> defer.Deferred:
            copies: list[tuple[Address, str, str, int, tuple[str, ...]]] = []
            for (address, md, tmp), fd in zip(wanted, fds):
                try:
                    if isinstance(fd, Exception):
                        raise fd
                    try:
                        dirs = self._ensure(md)  # what is still not durable, now
                    except BaseException:
                        _drop_copy(fd, tmp)
                        raise
                except Exception as e:
                    log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                              error=str(e))
                    results[address] = e
                    continue
                copies.append((address, md, tmp, fd, dirs))
            return self._publish_copies(copies, results)

        def not_copied(failure: Any) -> None:  # the syncer is stopped
            for address, _, _ in wanted:
                log.error("delivery to {mailbox} failed: {error}", mailbox=str(address),
                          error=failure.getErrorMessage())
                results[address] = failure.value

        d.addCallbacks(copied, not_copied)
        return d.addBoth(_passing, done_writing_tmp, paths)

    def _publish_copies(self, copies: list[tuple[Address, str, str, int, tuple[str, ...]]],
                        results: dict) -> defer.Deferred:
        """Sync each copy's data (its descriptor) and the folders just
        made for it, all in one batch; then ``_publish_copy``.  A copy
        whose sync fails is removed from ``tmp/``, for that mailbox
        alone."""
        targets: list[Any] = []
        for _, _, _, fd, dirs in copies:
            targets.extend([fd, *dirs])
        ds = iter(self.syncer.sync_each(targets) if targets else ())
        pending = []
        for address, md, tmp, fd, dirs in copies:
            mine = [next(ds) for _ in range(len(dirs) + 1)]
            d = all_done(mine)  # the fd's own request over too: then it may close
            d.addBoth(_passing, os.close, fd)
            d.addCallback(self._publish_copy, md, tmp, dirs)
            pending.append(self._record(d, results, address, tmp))
        return all_done(pending)

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

    def _record(
        self, d: defer.Deferred, results: dict, address: Address, path: str | None
    ) -> defer.Deferred:
        """Enter the outcome of one copy in ``results``; a copy that did
        not become durable is removed again (``path``, best effort; None:
        one that is not ours to remove)."""

        def ok(_: Any) -> None:
            results[address] = None

        def failed(f: Any) -> None:
            if path is not None:
                self._undo(f, path)
            log.error("delivery to {mailbox} not durable: {error}", mailbox=str(address),
                      error=f.getErrorMessage())
            results[address] = f.value

        return d.addCallbacks(ok, failed)

    # -- POP3 access -----------------------------------------------------------

    def open_mailbox(self, address: Address,
                     wanted: Callable[[], bool] | None = None) -> defer.Deferred:
        """Lock ``address``'s Maildir and fire with its ``MaildirMailbox``.
        ``wanted``: whether the login's client is still there, asked while
        it waits for a gone session's lock (``close_soon``): one that left
        must not take the lock ahead of one still waiting."""
        return self._open(address, wanted, may_wait=True)

    def _open(self, address: Address, wanted: Callable[[], bool] | None,
              may_wait: bool) -> defer.Deferred:
        """``open_mailbox``; ``may_wait``: whether a lock held by a session
        closing soon is waited for (false for the one try again after that
        wait, so a login waits once at most).

        What touches the disk -- the folders made the first time (as
        ``_ensure``), the lock file opened or made and locked, the listing
        -- is one job on the syncer's worker threads (``_open_locked``):
        on the reactor thread a hung disk held every session of the hub
        at one login.  The logins of one Maildir take their turns
        (``_turns``), one job at a time in the order they came, so the
        first still wins the lock and a second is told it is in use (or
        waits for a gone session, ``close_soon``) as when the lock was
        taken here."""
        try:
            md = self.maildir_path(address)
        except Exception as e:
            return defer.fail(e)
        d: defer.Deferred = defer.Deferred()
        queue = self._turns.get(md)
        if queue is None:
            self._turns[md] = []
            self._take_turn(md, address, wanted, may_wait, d)
        else:
            # the logins whose clients left meanwhile are dropped now: a
            # client that reconnects again and again while a job hangs
            # piles up no turns (nor jobs to run after it)
            _drop_gone(queue)
            queue.append((address, wanted, may_wait, d))
        return d

    def _take_turn(self, md: str, address: Address, wanted: Callable[[], bool] | None,
                   may_wait: bool, d: defer.Deferred) -> None:
        """Run one login's job for ``md``; the next login's once it is over."""
        make = md not in self._known
        if make:
            # recorded before the folders are made, as ``_ensure`` does: a
            # failing mkdir leaves them recorded for the next delivery
            domain_dir = os.path.dirname(md)
            self._unsynced.setdefault(md, set()).update(
                (os.path.dirname(domain_dir), domain_dir, md))
        releases = self._releases.get(md, 0)
        # in the POP3 sessions' lane: logins whose jobs hang on the disk
        # leave a worker for delivery (txmailhub.store.sync, "Lanes"); a
        # login whose client leaves while its job waits there never runs
        call = lane_call(self.syncer, POP3_LANE)  # none: on this thread, as before
        try:
            if call is None:
                job = defer.maybeDeferred(_open_locked, md, make, self._clock())
            else:
                job = call(_open_locked, md, make, self._clock(), wanted=wanted)
        except Exception as e:
            job = defer.fail(e)

        def over(result: Any) -> Any:
            released = self._releases.get(md, 0) != releases
            self._next_turn(md)
            if isinstance(result, Failure):
                if result.check(CallAbandoned):  # its client left: no lock taken
                    return defer.fail(_left(address))
                if result.check(BlockingIOError):
                    if released and (wanted is None or wanted()):
                        # a session of this process let go while the job
                        # found the lock held: try again, as a login on the
                        # reactor thread after that release would have --
                        # not for a client that left meanwhile (a job, and
                        # the lock taken, for nobody)
                        return self._open(address, wanted, may_wait)
                    if released:
                        return defer.fail(_left(address))
                    return self._in_use(md, address, wanted, may_wait)
                return result
            fds, snapshot, there = result
            if make and there:  # (one not made yet is made by its first delivery)
                self._known.add(md)
            try:
                return MaildirMailbox(self, md, tuple(fds), snapshot)
            except BaseException:
                for held in fds:
                    os.close(held)
                raise

        job.addBoth(over).chainDeferred(d)

    def _next_turn(self, md: str) -> None:
        queue = self._turns.get(md)
        if queue:
            _drop_gone(queue)  # no job for a client that left
        if not queue:
            self._turns.pop(md, None)
            self._releases.pop(md, None)
            return
        self._take_turn(md, *queue.pop(0))

    def _in_use(self, md: str, address: Address, wanted: Callable[[], bool] | None,
                may_wait: bool) -> defer.Deferred:
        """The lock of ``md`` is held: ``MailboxInUse``, or -- held by a
        session of this process that is gone and lets go once its last
        save is written (a client reconnecting at once must not be told
        IN-USE) -- a try again then, once (another may get in first); or
        the refusal after GONE_SAVE_WAIT (a save that hangs)."""
        waiting = self._closing.get(md) if may_wait else None
        if waiting is None:
            return defer.fail(MailboxInUse(f"{address} is in use by another session"))
        d: defer.Deferred = defer.Deferred()
        # the logins whose clients left meanwhile are dropped now: a
        # client that reconnects again and again piles up no waiters
        for gone in [w for w in waiting if w[1] is not None and not w[1]()]:
            waiting.remove(gone)
            gone[0].callback(False)
        waiting.append((d, wanted))

        def retry(let_go: bool) -> defer.Deferred:
            if not let_go:
                if wanted is not None and not wanted():
                    return defer.fail(_left(address))  # no wait over for anyone
                return defer.fail(MailboxInUse(f"{address} is in use by another session"))
            return self._open(address, wanted, may_wait=False)

        return d.addCallback(retry)

    def close_soon(self, md: str, call_later: Callable[..., Any] | None = None) -> None:
        """The session holding ``md``'s lock is gone but keeps it until a
        last small write is done (``MaildirMailbox.close_soon``): until
        ``closed(md)``, or for ``GONE_SAVE_WAIT`` seconds (``call_later``,
        the reactor's), a login that finds the lock held waits for it.
        Without ``call_later`` nothing waits (the wait must be bounded)."""
        if call_later is None or md in self._closing:
            return
        self._closing[md] = []
        self._closing_timers[md] = call_later(GONE_SAVE_WAIT, self._closing_over, md, False)

    def closed(self, md: str) -> None:
        """``md``'s lock was let go: the logins waiting for it try now."""
        if md in self._turns:  # a login job that found it held tries again
            self._releases[md] = self._releases.get(md, 0) + 1
        self._closing_over(md, True)

    def _closing_over(self, md: str, let_go: bool) -> None:
        """No more waiting for ``md``'s lock: it was let go (the waiting
        logins try it), or ``GONE_SAVE_WAIT`` passed (they are refused,
        and so is any login until it is let go, at once, as before)."""
        timer = self._closing_timers.pop(md, None)
        if let_go and timer is not None and timer.active():
            timer.cancel()
        for d, wanted in self._closing.pop(md, ()):
            # a login whose client left is refused, not given the lock
            d.callback(let_go and (wanted is None or wanted()))


def _drop_gone(queue: list[tuple[Any, ...]]) -> None:
    """Refuse (``MailboxTurnAbandoned``, as a gone waiter of ``close_soon`` is)
    the logins of ``queue`` (``MaildirStore._turns``) whose clients are
    no longer there (their ``wanted``), and take them out of it."""
    gone = [turn for turn in queue if turn[1] is not None and not turn[1]()]
    if not gone:
        return
    # all taken out before any is refused: a refusal's callbacks run now,
    # and one that asks for the mailbox again comes back here
    out = {id(turn) for turn in gone}
    queue[:] = [turn for turn in queue if id(turn) not in out]
    for turn in gone:
        turn[3].errback(_left(turn[0]))


def _left(address: Address) -> MailboxTurnAbandoned:
    """The refusal of a login whose client left before its turn at the
    lock (or before its try again): nobody reads it, the log does -- as
    the client's leaving, not as a mailbox in use."""
    return MailboxTurnAbandoned(f"the client of {address} left before its turn at the lock")


def _lock_mailbox(md: str) -> list[int]:
    """Take the POP3 lock of Maildir ``md``: the descriptors that hold it
    (closing them releases it).  The lock file, and the folder as well:
    a session that could only lock the folder (``_open_lock`` on a full
    disk) must exclude one that locks the file, and the reverse.  A
    filesystem that cannot lock a folder (NFS) keeps the file lock alone.
    Raises ``BlockingIOError`` when another session holds it, ``OSError``
    when the lock cannot be taken at all."""
    fd = _open_lock(os.path.join(md, LOCK_NAME))
    fds = [fd]
    try:
        _flock(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return fds  # the folder itself, already
        folder = os.open(md, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        fds.append(folder)
        try:
            _flock(folder)
        except BlockingIOError:
            raise
        except OSError:
            fds.pop()
            os.close(folder)
        return fds
    except BaseException:
        for held in fds:
            os.close(held)
        raise


def _flock(fd: int) -> None:
    """An exclusive ``flock`` without waiting; ``BlockingIOError`` when it
    is held (some systems say EACCES for that)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(errno.EWOULDBLOCK, "the lock is held") from None
        raise


def _open_lock(path: str) -> int:
    """The POP3 lock file, for ``flock``.  Made when missing; an existing
    one is opened read-only when it cannot be opened for writing (a
    read-only or full filesystem): ``flock`` needs no write access, and the
    mailbox can still be read.  A missing one that cannot be made (no
    inode left) gives way to the Maildir folder itself, which needs none:
    a full disk must not lock its users out of the mailboxes whose
    deletions would make room.  (Delivery makes the lock file with the
    Maildir, so that is only a Maildir another program made.)"""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK,
                       0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _linked_lock(path) from None
        if e.errno not in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES):
            raise
        try:
            return os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK)
        except FileNotFoundError:
            pass
        except OSError as again:
            if again.errno == errno.ELOOP:
                raise _linked_lock(path) from None
            raise
        try:
            return os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except OSError:
            raise e from None


def _linked_lock(path: str) -> PermissionError:
    """The error for a lock file that is a symbolic link.  Never followed:
    whoever can write into a Maildir could otherwise have the hub make, or
    lock, a file of its choosing elsewhere.  An administrator removes it
    (a ``PermissionError``: POP3 answers ``[SYS/PERM]``)."""
    return PermissionError(errno.ELOOP, "the POP3 lock file is a symbolic link, not "
                           "followed: remove it", path)


def _link_impossible(error: Exception | None) -> bool:
    """A link failure that ``deliver`` knows how to get around."""
    return isinstance(error, OSError) and (
        error.errno in _LINK_FALLBACK or error.errno == errno.ENOENT
    )


class _Publication:
    """The copies of one spooled message in its mailboxes, made right after
    the message's data became durable (``Syncer.sync_then``): on the
    reactor thread when the syncer uses the kernel's AIO, otherwise on a
    sync worker thread in the same batch.

    ``run`` makes the folders of a Maildir met for the first time (``add``'s
    ``make``), puts the file into each ``new/`` and names the directories to
    sync: hard links, or -- one mailbox, and the spool file may go -- a
    ``rename(2)`` of the spool file itself, one system call instead of a
    link and an unlink (each system call on a worker thread costs a GIL
    hand-over with the reactor thread).  ``settle`` takes back a copy
    whose directory could not be synced (so a retry does not duplicate
    it; a moved file goes back to the spool), fills ``results``
    (``{Address: None | OSError}``) and, when every copy is durable,
    ``discard``\\ s the spool file there and then (``discarded``).  The
    reactor side reads ``results``, ``synced`` and ``discarded`` only
    after ``settle``."""

    def __init__(self, message: SpooledMessage, link: Callable[[str, str], None],
                 rename: Callable[[str, str], None], discard: Any) -> None:
        self.message = message
        self.discard = discard
        self._link = link
        self._rename = rename
        self._moved = False
        self._copies: list[tuple[Address, str, str, tuple[str, ...], bool]] = []
        self._linked: list[tuple[Address, str, str, tuple[str, ...], bool]] = []
        self.results: dict[Address, Exception | None] = {}
        self.synced: list[tuple[str, tuple[str, ...]]] = []
        self.made: list[str] = []  # the Maildirs whose folders run() made
        self.discarded = False

    def add(self, address: Address, md: str, new: str, dirs: tuple[str, ...],
            make: bool = False) -> None:
        """A copy at ``new`` in Maildir ``md``; ``dirs``: those whose entries
        are still not durable; ``make``: its folders (and POP3 lock file)
        are made first, by ``run`` -- on the worker thread, where a mkdir
        on a hung disk holds no session."""
        self._copies.append((address, md, new, dirs, make))

    def run(self) -> list[str]:
        source = self.message.path
        move = self.discard is not None and len(self._copies) == 1
        dirs: list[str] = []
        making: dict[str, Exception | None] = {}
        for copy in self._copies:
            address, md, new, created, make = copy
            if make:
                if md not in making:
                    making[md] = _make_maildirs([md])[0]
                    if making[md] is None:
                        self.made.append(md)
                if making[md] is not None:
                    self.results[address] = making[md]
                    continue
            try:
                (self._rename if move else self._link)(source, new)
            except OSError as e:
                self.results[address] = e
                continue
            self._moved = move
            self._linked.append(copy)
            dirs.extend(created)
            dirs.append(md + _NEW)
        return dirs

    def settle(self, failed: dict[str, OSError]) -> _Publication:
        for address, md, new, created, _ in self._linked:
            error = failed.get(md + _NEW)
            for path in created:
                error = error or failed.get(path)
            if error is None:
                self.results[address] = None
                if created:
                    self.synced.append((md, created))
                continue
            try:
                if self._moved:  # the caller needs the spool file back
                    self._rename(new, self.message.path)
                    self._moved = False
                else:
                    os.unlink(new)
            except OSError:
                # Could not go back: the spool name is gone, so the queue
                # cannot take the message either and the client hears 451
                # and sends it again.  Left in new/, it would be shown by
                # POP3 now and be a second copy then.
                try:
                    os.unlink(new)
                except OSError:
                    pass
            self.results[address] = error
        if self._moved:
            self.discarded = True  # the spool name is gone with the rename
        elif self.discard is not None and not any(self.results.values()):
            try:
                self.discard(self.message)
                self.discarded = True
            except Exception:  # the reactor side discards again, and logs
                pass
        return self


def _made_each(mds: list[str], name: str, look: bool) -> list[_Found]:
    """``_made_before`` for each Maildir (run by ``syncer.call``: it may
    list ``new/`` and ``cur/``), each with its own outcome."""
    found: list[_Found] = []
    for md in mds:
        try:
            found.append(_made_before(md, name, look))
        except Exception as e:
            found.append(e)
    return found


def _made_before(md: str, name: str, look: bool) -> tuple[str, str] | None:
    """Where Maildir ``md`` holds the copy made under the keyed name
    ``name`` (``deliver_keyed``): ``(folder, file name)`` -- ``"new"`` or
    ``"cur"`` -- ``_DELETED`` for a copy the hub's POP3 deleted
    (``mailbox.was_deleted``), or None.  The name itself in ``new/`` and the one POP3
    gives it in ``cur/`` cost a look each.  ``look`` (an attempt after
    one that may have made the copy): then ``new/`` and ``cur/`` are
    listed for any name of the same unique part (the part before the
    first ``,`` or ``:``), whatever a Maildir reader made of the rest --
    other flags, a ``,S=`` or ``,W=`` put right (``mailbox.scan``), a
    size field of its own."""
    if os.path.exists(os.path.join(md, "new", name)):
        return "new", name
    seen = name + ":2,S"
    if os.path.exists(os.path.join(md, "cur", seen)):
        return "cur", seen  # what POP3 makes of it: no listing needed
    if not look:
        return None
    unique = base_name(name)  # a keyed name's host has no "," or ":" (escape_host)
    # new/ first: a reader moves a message from new/ to cur/, never back,
    # so one moved while the two are listed is in the second listing
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(md, sub)) as listing:
                for entry in listing:
                    if base_name(entry.name) == unique:
                        return sub, entry.name
        except FileNotFoundError:
            pass
    if was_deleted(md, unique):
        return _DELETED  # made, and deleted by a POP3 session since
    return None


#: ``_made_before``'s word for a copy a POP3 session deleted
_DELETED = ("", "")


def _make_maildirs(mds: list[str]) -> list[Exception | None]:
    """Make each Maildir of ``mds`` (``_make_maildir``) and its POP3 lock
    file (``_make_lock``), each with its own outcome: delivery's job for
    the Maildirs it meets for the first time (``_make_unknown``, or
    ``_Publication.run``)."""
    out: list[Exception | None] = []
    for md in mds:
        try:
            _make_maildir(md)
            _make_lock(md)
            out.append(None)
        except Exception as e:
            out.append(e)
    return out


def _make_then_look(fresh: list[str], mds: list[str], name: str, look: bool
                    ) -> tuple[list[Exception | None], list[_Found]]:
    """``deliver_keyed``'s one job: the Maildirs met for the first time
    made (``_make_maildirs``), then each looked in (``_made_each``)."""
    return _make_maildirs(fresh), _made_each(mds, name, look)


def _make_lock(md: str) -> None:
    """Make the POP3 lock file of a new Maildir now, while there is room
    (``_open_lock``); a failure leaves it to the first login."""
    try:
        os.close(os.open(os.path.join(md, LOCK_NAME), _LOCK_MAKE, 0o600))
    except OSError:
        pass


def _make_maildir(md: str) -> None:
    """Make ``md``, its domain folder and its tmp/new/cur where missing,
    in that order (the lock file is made by ``_make_lock`` or
    ``_open_lock``).  A Maildir made here gets an empty
    ``.txmailhub-uidls`` before its ``new/``: no other server listed it
    first, so the hub's UIDLs are its UIDLs whatever list another makes
    later, and its first login has nothing to decide and write (a write
    a frozen or hung disk would hold that login on)."""
    for path in (os.path.dirname(md), md, *(os.path.join(md, sub)
                                           for sub in ("tmp", "new", "cur"))):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        if path == md:
            try:
                os.close(os.open(os.path.join(md, KEPT_NAME), _KEPT_MAKE, 0o600))
            except OSError:
                pass  # (no room: the first login decides, ``kept_uidls``)


def _open_locked(md: str, make: bool, now: float) -> tuple[list[int], Snapshot, bool]:
    """A POP3 login's disk work, one job on the syncer's worker threads
    (``MaildirStore._open``): the folders made (``make``: the first time
    this process meets ``md``), the lock taken (``_lock_mailbox``:
    ``BlockingIOError`` when it is held), the stale ``tmp/`` files
    removed and the snapshot listed.  The descriptors that hold the lock
    go back with the snapshot; when anything after the lock fails they
    are closed here, so a failed job holds nothing.  The last item says
    whether ``md`` is there: one that cannot be made for want of room (a
    full or read-only disk) and has no messages folder is an empty
    mailbox (``_absent``), made by the first delivery."""
    if make:
        try:
            _make_maildir(md)
        except OSError as e:
            if e.errno not in _NO_ROOM or any(
                    os.path.lexists(os.path.join(md, sub)) for sub in ("new", "cur")):
                raise
            return [_absent(md)], Snapshot(md), False
    fds = _lock_mailbox(md)
    try:
        clean_tmp(md, now)
        return fds, scan(md), True
    except BaseException:
        for held in fds:
            os.close(held)
        raise


#: what ``_made_before`` says of one Maildir: where the copy is, or the
#: error the look met
_Found = tuple[str, str] | Exception | None

#: what making a Maildir meets on a full or read-only disk
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _absent(md: str) -> int:
    """The descriptor of a session of Maildir ``md`` not made yet (its
    nearest folder that is there, read-only): it holds no lock -- an
    absent mailbox has no messages, and two sessions of it nothing to
    share -- but a mailbox without a descriptor is a closed one."""
    path = os.path.dirname(md)
    while True:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except FileNotFoundError:
            if os.path.dirname(path) == path:
                raise
            path = os.path.dirname(path)


def _give(_: Any, results: dict) -> dict:
    return results


def _passing(result: Any, f: Any, *args: Any) -> Any:
    """``f(*args)``, then ``result`` on: a clean-up in a Deferred's chain
    (``addBoth``) that leaves its result or failure as it was."""
    f(*args)
    return result


def _copy_each(jobs: list[tuple[str, str, bool]]) -> list[int | Exception]:
    """``_copy_to`` for each ``(source, tmp path, replace)`` (run by
    ``syncer.call``: the copies read and write the whole message), each
    with its own outcome: the copy's descriptor, still open, or the
    error.  ``replace``: the tmp name is a keyed one, the same on every
    attempt -- a crash between an earlier copy and its rename left this
    file, which only the next attempt under the key would make; without
    removing it ``O_EXCL`` would refuse every retry until ``tmp/`` was
    cleaned, 36 hours on."""
    out: list[int | Exception] = []
    try:
        for source, tmp, replace in jobs:
            try:
                if replace:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                out.append(_copy_to(source, tmp))
            except Exception as e:
                out.append(e)
    except BaseException:  # nobody will get the descriptors: leave nothing
        for (_, tmp, _), fd in zip(jobs, out):
            if isinstance(fd, int):
                _drop_copy(fd, tmp)
        raise
    return out


def _drop_copy(fd: int, tmp: str) -> None:
    """Close and remove a copy that will not be published (best effort)."""
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


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
