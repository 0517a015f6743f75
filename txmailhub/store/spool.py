"""The spool: where message data streams to disk while it arrives.

Owns ``state_dir/spool`` and the files in it (``Spooler``, ``SpoolWriter``,
providing ``ISpooler``/``ISpoolWriter``).  Each message being received is
one ``O_EXCL`` file, written with ``os.write`` chunk by chunk (nothing is
buffered beyond the chunk the caller hands over).  ``finish()`` makes it
durable through the ``Syncer`` and hands a ``SpooledMessage`` to the
caller, who gives it to the mailbox store and/or the outbound queue (both
hard-link it: the spool lives on the same filesystem as ``mail/`` and
``queue/``) and then ``discard``\\ s the spool name.

A spool file is never acknowledged by itself, so whatever is left in the
directory after a crash was never answered 250: ``recover()`` (run by the
constructor) deletes it.  Who may recover is decided by an ``flock`` on
``spool.lock`` (next to the spool folder), held for as long as the
spooler is open: the kernel drops it when its process dies, a forked
daemon inherits it, and a second hub started on the same state directory
finds it taken, touches nothing and refuses to start (``claim`` is False
at its start; see ``MailHub``).  Process ids could not do this: twistd
forks after the spooler is made, so the files carry a dead parent's pid,
and a crashed hub's pid may be a zombie or reused.  Files are named
``<pid>-<counter>-<random tag of the spooler>``, which only makes them
unique.

Why a spool at all (rather than writing straight into the first
recipient's Maildir ``tmp/``): the recipients' fate is decided only once
the data is durable (local, queued, several mailboxes), and a spool file
is never acknowledged, so crash recovery is one ``listdir``.

``finish_then`` makes the file durable and publishes it in the same
request to the ``Syncer`` (``sync_then``): the mailbox store's hot path,
where the copies are made right after the fsync (on the reactor thread
when the syncer uses the kernel's AIO, else on its worker thread).
There a single mailbox gets the spool file itself by ``rename(2)``.  When
that was first measured by time (link+unlink vs rename, 1 KiB, 10
sessions, interleaved medians: 0.833 vs 0.933 ms CPU/msg) the difference
drowned in the noise of this shared machine; counted instead, every
system call on a worker thread costs a GIL hand-over with the reactor
thread (about four futex calls), and ``strace -c -f`` of the hub under
``smtp-source`` (2,000 messages) went from 37.5 to 31.5 futex calls per
message with the rename and with spool names drawn without a
``getrandom`` per file.

This module does not parse messages, add headers or decide where mail
goes.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import stat
import sys
import time
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.envelope import SpooledMessage
from txmailhub.errors import LocalError
from txmailhub.interfaces import ISpooler, ISpoolWriter
from txmailhub.logsafe import plural
from txmailhub.store.format import CRLFCounter

__all__ = ["SpoolWriter", "Spooler", "spool_in_use"]

log = Logger()


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: A spool file whose creation on the reactor thread took longer than this
#: (seconds) turns making files ahead on (``Spooler``'s ``ahead_after``).
SLOW_CREATE = 0.002
#: ... for this long after the last creation that slow (seconds).
AHEAD_FOR = 600.0
_clock = time.monotonic  # the tests' seam


@implementer(ISpoolWriter)
class SpoolWriter:
    """One message being received (see ``ISpoolWriter``).

    ``write`` never raises for a disk error: the first ``OSError`` (disk
    full, I/O error) is kept, the partial file removed, later writes are
    ignored, and ``finish()`` errbacks with that error -- the protocol
    keeps draining the data and answers once, at the end.
    """

    def __init__(self, spooler: Spooler, path: str, fd: int) -> None:
        self._spooler = spooler
        self.path = path
        self._fd: int | None = fd
        self._counter = CRLFCounter()
        self.error: OSError | None = None
        self.state = "open"  # open -> finishing -> finished | aborted
        self._publishing = False

    def write(self, data: bytes) -> None:
        if self.state != "open":
            raise LocalError(f"write on a {self.state} spool writer")
        if not data or self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]  # type: ignore[arg-type]
        except OSError as e:
            self.error = e
            log.error("spool write to {path} failed: {error}", path=self.path, error=str(e))
            self._remove()
            return
        self._counter.feed(data)

    @property
    def size(self) -> int:
        """Octets written so far."""
        return self._counter.size

    @property
    def crlf_size(self) -> int:
        """Octets of the CRLF form (the rule of ``maildir.CRLFEncoder``)."""
        return self._counter.crlf_size

    def finish(self) -> defer.Deferred:
        return self._finish(None)

    def finish_then(self, make_publication: Any) -> defer.Deferred:
        """``finish()``, and publish the message in the same sync batch.

        ``make_publication(message)`` is called at once, on the caller's
        thread, with the ``SpooledMessage``; what it returns goes to
        ``Syncer.sync_then``, which runs it once the data is durable (on a
        worker thread, or on the reactor thread with the kernel's AIO).
        Fires with ``(message, settle() result)``; the spool file is the
        caller's afterwards, as with ``finish()``."""
        return self._finish(make_publication)

    def _finish(self, make_publication: Any) -> defer.Deferred:
        if self.state != "open":
            raise LocalError(f"finish on a {self.state} spool writer")
        if self.error is not None:
            self.state = "aborted"
            return defer.fail(self.error)
        self.state = "finishing"
        fd = self._fd
        message = SpooledMessage(self.path, self.size, self.crlf_size)
        if make_publication is None:
            d = self._spooler.syncer.sync_file(fd)
        else:
            try:
                publication = make_publication(message)
            except Exception:
                self.state = "aborted"
                self._remove()
                return defer.fail()
            self._publishing = True
            d = self._spooler.syncer.sync_then(fd, publication)

        def synced(result: Any) -> Any:
            self._close()
            if self.state == "aborted":  # abort() arrived while syncing
                self._unlink()
                raise LocalError(f"spool file {self.path} was aborted")
            self.state = "finished"
            return message if make_publication is None else (message, result)

        def failed(f: Any) -> Any:
            log.error("storing spool file {path} failed: {error}", path=self.path,
                      error=f.getErrorMessage())
            self.state = "aborted"
            self._remove()
            return f

        return d.addCallbacks(synced, failed)

    def abort(self) -> None:
        """Throw the message away.  After ``finish()`` has fired this does
        nothing (the file is the caller's: ``Spooler.discard`` it); while
        ``finish()`` is still syncing, the file is removed when the sync
        returns and ``finish()``'s Deferred errbacks.  After
        ``finish_then()`` it does nothing: the publication may already
        have made copies, and those stand."""
        if self.state == "open":
            self.state = "aborted"
            self._remove()
        elif self.state == "finishing" and not self._publishing:
            self.state = "aborted"

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot remove spool file {path}: {error}", path=self.path, error=str(e))

    def _remove(self) -> None:
        self._close()
        self._unlink()


@implementer(ISpooler)
class Spooler:
    """``ISpooler`` over ``spool_dir``; ``syncer`` is a ``sync.Syncer``.

    ``open()`` creates its file on the calling (reactor) thread, about
    10-20 us of kernel time on a healthy journalled filesystem.  On a
    disk whose journal is busy or stuck a creation can take milliseconds
    or block, and every session waits for it; so a creation slower than
    ``ahead_after`` seconds (``SLOW_CREATE``, 2 ms) turns making files
    ahead on for ``AHEAD_FOR`` seconds (renewed by every creation that
    slow, here or on the workers -- there, slower than that beyond the
    interpreter's switch interval, which a worker may spend waiting for
    the lock after each creation): the spooler then keeps up to
    ``precreate`` empty spool files ready, created on the syncer's worker
    threads (``syncer.call``), and ``open()`` takes one.  ``ahead_after=0``
    makes them ahead always, as every hub did up to 2026-11-30; it was
    measured then to cost more than it saves on a healthy disk: each
    creation on a worker hands the GIL to and fro with the reactor thread
    (about 3 futex calls per message), and creating inline stored
    1,033-1,211 msg/s at 0.69-0.84 ms of CPU per message against
    1,022-1,055 at 0.84-0.86 (4 alternated pairs, 1 KiB, 10 sessions,
    3,000 messages, 3 reps; docs/performance.md, twenty-third session).
    Unused ready files are deleted by ``close()`` or, after
    a crash, by recovery like any other leftover.  Measured with
    ``bench/smtp.py`` (txmailhub alone, 1 KiB, 10 sessions, 2,000
    messages, runs alternated, other processes using 0.2-1.3 of the 2
    cores): ``precreate=0`` 533 / 464 / 468 msg/s, ``precreate=16``
    710 / 381 / 892 msg/s, the same CPU per message.  Measured again
    with the syncer's own worker threads (method syncfs then; 3,000
    messages, 5 interleaved runs, medians): ``precreate=16`` 0.957 ms
    CPU/msg, 1,049 msg/s; ``precreate=0`` 0.960 ms, 1,012 msg/s -- the
    same then, while the fsyncs themselves ran on worker threads.
    ``recover=False`` skips the crash clean-up (tests, tools that only
    read).
    """

    def __init__(
        self, spool_dir: str, syncer: Any, *, recover: bool = True, precreate: int = 16,
        ahead_after: float = SLOW_CREATE,
    ) -> None:
        self.spool_dir = os.path.abspath(spool_dir)
        # os.path.join(spool_dir, name) for our names, without a call per file
        self._dir_prefix = os.path.join(self.spool_dir, "")
        self.syncer = syncer
        self.precreate = precreate
        self.ahead_after = ahead_after
        self._ahead_until = float("-inf")  # making files ahead until then (_clock)
        self._counter = itertools.count(1)
        self._prefix = f"{os.getpid()}-"
        self._tag = os.urandom(4).hex()
        self._ready: deque[tuple[str, int]] = deque()
        self._generation = 0  # bumped when the spool folder had to be made again
        self._refilling = False
        self._closed = False
        self._closings = 0  # bumped by close(): a refill begun before is not for after
        self._lock_fd: int | None = None
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        if recover:
            self.recover()
        else:
            # made now, by whoever builds the spooler (twistd started as root
            # gives what it made to the hub's user), locked by ``claim``
            os.close(_open_lock(self.spool_dir + ".lock"))

    def open(self) -> SpoolWriter:
        """A writer on a new spool file.  Raises ``LocalError`` after
        ``close()`` (until ``claim()``): the hub's stop has given the state
        directory up, and another hub may own it now -- a late caller (an
        embedding application holding the components, a callback that
        fires after the stop) must not make files in it."""
        if self._closed:
            raise LocalError(f"the spool {self.spool_dir} is closed: the hub has stopped")
        if self._ready and self.ahead_after > 0 and not self._refilling \
                and _clock() >= self._ahead_until:
            # making ahead has lapsed: no refill comes any more to notice a
            # spool folder removed meanwhile, and every file left ready (up
            # to ``precreate``) would be an unlinked one, a 451 each; nor is
            # the disk slow now.  Given up, as ``close`` does
            left, self._ready = list(self._ready), deque()
            _drop(left)
        if self._ready:
            path, fd = self._ready.popleft()
        elif self.ahead_after > 0:
            started = _clock()
            path, fd = self._create()
            self._timed(_clock() - started, 1)
        else:
            path, fd = self._create()
        self._refill()
        return SpoolWriter(self, path, fd)

    def _timed(self, took: float, count: int, waits: float = 0.0) -> None:
        """``count`` spool files took ``took`` seconds to create: slower
        than ``ahead_after`` each, make files ahead for ``AHEAD_FOR``.
        ``waits``: what each creation may have spent waiting for the
        interpreter's lock rather than for the disk (a worker's)."""
        if self.ahead_after <= 0 or took <= (self.ahead_after + waits) * count:
            return
        now = _clock()
        if now >= self._ahead_until:
            log.info("creating a spool file took {ms:.1f} ms (a busy or slow disk): making "
                     "them ahead on worker threads for the next {minutes:g} minutes",
                     ms=took / count * 1000, minutes=AHEAD_FOR / 60)
        self._ahead_until = now + AHEAD_FOR

    def _create(self) -> tuple[str, int]:
        # pid, counter and a tag drawn once per spooler: unique without a
        # getpid/getrandom system call per file (O_EXCL catches the rest)
        prefix = self._prefix
        remade = False
        while True:
            name = f"{prefix}{next(self._counter)}-{self._tag}"
            path = self._dir_prefix + name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
            except FileExistsError:  # a leftover of an earlier process with our pid
                continue
            except FileNotFoundError:
                if remade:
                    raise
                # Removed while we run (a clean-up gone wrong): without it
                # every message would get 451 until a restart.
                log.warn("the spool folder {path} was gone: made again", path=self.spool_dir)
                os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
                remade = True
                self._generation += 1  # what was made ahead went with the old folder
                continue
            return path, fd

    def _create_many(self, count: int) -> list[tuple[str, int]]:
        """Runs on a worker thread."""
        made: list[tuple[str, int]] = []
        try:
            for _ in range(count):
                generation = self._generation
                made.append(self._create())
                if self._generation != generation:
                    # the folder was gone and is made again: the files made
                    # before went with it (unlinked: a 451 for each message
                    # given one), only the last one is in the new folder
                    _drop(made[:-1])
                    del made[:-1]
        except OSError as e:
            if not made:
                raise
            log.warn("could create only {count} spool {files} ahead: {error}",
                     count=len(made), files=plural(len(made), "file", "files"), error=str(e))
        return made

    def _make_ahead(self, count: int) -> tuple[list[tuple[str, int]], float]:
        """Runs on a worker thread: ``_create_many`` and how long it took."""
        started = _clock()
        made = self._create_many(count)
        return made, _clock() - started

    def _refill(self) -> None:
        call = getattr(self.syncer, "call", None)
        if (
            call is None or self._refilling or self._closed or self.precreate <= 0
            or len(self._ready) > self.precreate // 2
            or (self.ahead_after > 0 and _clock() >= self._ahead_until)
        ):
            return
        self._refilling = True
        generation = self._generation
        closings = self._closings
        d = call(self._make_ahead, self.precreate - len(self._ready))

        def done(result: tuple[list[tuple[str, int]], float]) -> None:
            made, took = result
            # A worker takes the interpreter's lock back after each
            # creation, from a reactor thread that may hold it up to the
            # switch interval (5 ms): 3-5.5 ms a file on tmpfs with the
            # main thread busy, against 0.015 ms idle.  Only what is over
            # that is the disk's; counted whole, a busy hub's own work kept
            # making files ahead on for good.
            self._timed(took, max(len(made), 1), sys.getswitchinterval())
            self._refilling = False
            if self._closed or self._closings != closings:
                # stopped meanwhile; and if claimed again since, recovery
                # has removed these (none was ready then): each would be
                # an unlinked file, a 451 for the message given it
                _drop(made)
                return
            if self._generation != generation:
                # The folder was removed under us and made again: the files
                # still ready are unlinked, and data written to them could
                # never be published (a 451 each).  Noticed here, on the
                # worker's ENOENT, rather than by a system call per message.
                lost, self._ready = list(self._ready), deque()
                # Of the batch, only the files still linked: the folder may
                # have gone (and been made again by an open() here) after
                # the worker made some or all of them, its own check seeing
                # nothing.  A descriptor's link count says it, one fstat
                # each, and only on this rare path.
                kept = [(path, fd) for path, fd in made if _linked(fd)]
                lost += [item for item in made if item not in kept]
                made = kept
                _drop(lost)
            self._ready.extend(made)

        def failed(f: Any) -> None:
            self._refilling = False
            log.warn("cannot create spool files ahead: {error}", error=f.getErrorMessage())

        d.addCallbacks(done, failed)

    def close(self) -> None:
        """Delete the spool files made ahead and give the lock up (the hub
        has stopped); ``open()`` refuses from now on, until ``claim()``."""
        self._closed = True
        self._closings += 1
        ready, self._ready = list(self._ready), deque()
        _drop(ready)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the lock

    def claim(self) -> bool:
        """Hold ``<spool_dir>.lock`` (again, after ``close``), clean up
        what a crash left, and make spool files again; False when another
        live spooler holds it (another hub runs on this state directory:
        the hub then refuses to start)."""
        if self._lock_fd is None:  # not yet, or given up by ``close``
            if not self._lock():
                return False
            self.recover()
        self._closed = False
        return True

    def available(self) -> bool:
        """Whether ``claim`` would succeed now, without claiming (twistd asks
        before it forks: an error after the fork leaves it waiting)."""
        if self._lock_fd is not None:
            return True
        fd = self._try_lock()
        if fd is None:
            return False
        os.close(fd)  # and with it the lock
        return True

    def _lock(self) -> bool:
        """Take ``<spool_dir>.lock`` (once); False if another live spooler has it."""
        if self._lock_fd is None:
            self._lock_fd = self._try_lock()
        return self._lock_fd is not None

    def _try_lock(self) -> int | None:
        """A descriptor holding ``<spool_dir>.lock``, or None when another
        live spooler holds it."""
        path = self.spool_dir + ".lock"
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            if e.errno != errno.EBADF:
                raise
            # NFS makes an ``flock`` a POSIX lock, whose exclusive kind
            # needs a descriptor open for writing: that file system gets one
            fd = _open_lock(path, write=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
        return fd

    def discard(self, message: SpooledMessage) -> None:
        if os.path.dirname(os.path.abspath(message.path)) != self.spool_dir:
            raise LocalError(f"{message.path} is not a spool file of {self.spool_dir}")
        try:
            os.unlink(message.path)
        except FileNotFoundError:
            pass

    def room(self) -> int | None:
        try:
            st = os.statvfs(self.spool_dir)
        except OSError:
            return None
        if st.f_blocks == 0:
            # ramfs and some FUSE and network filesystems report no blocks at
            # all: that is "cannot tell", not "full"
            return None
        return st.f_bavail * st.f_frsize  # what an unprivileged writer gets

    def recover(self) -> int:
        """Delete spool files left by a crash; returns how many.

        Only with the spool's lock: when another spooler holds it (another
        hub is running on this state directory), its files are in use and
        nothing is touched."""
        if not self._lock():
            log.warn("the spool {path} is in use by another running hub: no clean-up",
                     path=self.spool_dir)
            return 0
        # Through the folder's descriptor, never through a link: twistd
        # started as root runs this before it switches to --uid, and
        # state_dir is that user's, who may have put a link to /etc in the
        # spool's place (every file there would go, removed by root)
        try:
            folder = os.open(self.spool_dir,
                             os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            # (O_DIRECTORY on a link says ENOTDIR, as on a plain file)
            what = "a symbolic link" if os.path.islink(self.spool_dir) else "not a folder"
            log.warn("the spool {path} is {what}: not followed, and what a crash "
                     "left in it stays (make it a folder)", path=self.spool_dir, what=what)
            return 0
        removed = empty = 0
        ours = {path for path, _fd in self._ready}
        try:
            for name in os.listdir(folder):
                path = self._dir_prefix + name
                if path in ours:
                    continue
                try:
                    st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    os.unlink(name, dir_fd=folder)
                    removed += 1
                    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                        empty += 1  # made ahead (``precreate``), never written
                except IsADirectoryError:
                    log.warn("unexpected directory {path} in the spool", path=path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(folder)
        # the files made ahead are empty: a kill -9 leaves up to
        # ``precreate`` of them, and counting them as messages cut short
        # would alarm the admin for nothing
        if removed - empty:
            log.info("removed {count} unacknowledged spool {files} left by a crash",
                     count=removed - empty, files=plural(removed - empty, "file", "files"))
        if empty:
            log.info("removed {count} empty spool {files} made ahead (no message was in them)",
                     count=empty, files=plural(empty, "file", "files"))
        return removed


#: the kernel's list of the file locks held now (Linux, proc(5)), readable by anyone
PROC_LOCKS = "/proc/locks"
#: this process's mounts (proc(5)): the device number the kernel's lists use
PROC_MOUNTINFO = "/proc/self/mountinfo"


def _unescape_mount_point(field: str) -> str:
    """A mount point as mountinfo writes it: space, tab, newline and
    backslash as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_device(path: str, mountinfo: str) -> str | None:
    """The device number (``maj:min`` in hex, as ``/proc/locks`` writes
    it) of the mount ``path`` is on, from ``mountinfo``'s lines: the last
    mount whose mount point is the longest one above ``path``.  None if
    none is found."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        words = line.split(" ")
        if len(words) < 5:
            continue
        point = _unescape_mount_point(words[4])
        if point != "/" and path != point and not path.startswith(point + "/"):
            continue
        major, _, minor = words[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        if best is None or len(point) >= best[0]:  # a later mount over it hides it
            best = (len(point), f"{int(major):02x}:{int(minor):02x}")
    return None if best is None else best[1]


def spool_in_use(spool_dir: str, locks: str | None = None,
                 mounts: str | None = None) -> bool | None:
    """Whether a process holds ``<spool_dir>.lock`` now, as a running hub
    does (``Spooler.claim``), found by looking only: None when that cannot
    be told (no ``/proc/locks``, not Linux; the lock file out of reach).

    Taking the lock and letting it go (``available``) would be the sure
    test, but for a command run beside the hub (``mailhub queue flush``)
    it is not harmless: a hub starting at that moment would find the lock
    taken and refuse to start.  The kernel lists every lock held, by the
    device and inode of its file, which ``lstat`` of the name gives; the
    file is neither opened nor made.  A hub starting at that very moment
    may not hold it yet: the answer is as of the look.

    The device of a lock the kernel lists is its file system's, which
    ``stat`` does not give on every file system: btrfs gives a
    subvolume's, an overlay of several file systems the file's layer's.
    The device of the mount the file is on (``/proc/self/mountinfo``, as
    ``findmnt`` reads it) is taken as well: with ``stat``'s alone a hub
    holding the lock on btrfs was never found."""
    lock = spool_dir + ".lock"
    try:
        st = os.lstat(lock)
    except FileNotFoundError:  # a hub makes it at its start, and never removes it
        return False
    except OSError:  # state_dir not this user's to look into
        return None
    held = {f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"}
    try:
        with open(locks or PROC_LOCKS, encoding="ascii", errors="replace") as f:
            listed = f.read()
    except OSError:
        return None
    try:
        with open(mounts or PROC_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            # the folder resolved, not the name: lstat looked at the name itself
            where = os.path.join(os.path.realpath(os.path.dirname(lock)), os.path.basename(lock))
            device = _mount_device(where, f.read())
    except OSError:
        device = None
    if device is not None:
        held.add(f"{device}:{st.st_ino}")
    for line in listed.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:131090 0 EOF"; a process
        # waiting for a lock has "->" before the kind, and holds nothing
        words = line.split()
        if len(words) > 5 and words[1] == "FLOCK" and words[5] in held:
            return True
    return False


def _open_lock(path: str, write: bool = False) -> int:
    """Open (or make) ``spool.lock`` for ``flock``; never through a link.

    twistd started as root opens it before it switches to ``--uid``, in
    ``state_dir``, which is that user's: a symbolic link put there would
    have root make, or open for writing, any file it names (an empty
    ``/etc/nologin`` locks every other user out).  ``O_NOFOLLOW`` refuses a
    link, ``O_NONBLOCK`` keeps a FIFO from holding the start, and anything
    but a regular file with one name is refused (``OSError`` naming it:
    the start says so and stops).  A hard link the hub's user made to a
    root file would be opened by root, and the descriptor, which holds the
    lock, kept by the hub after it switched user.

    Opened read-only (``O_CREAT`` still makes it; ``flock`` needs no write
    access): the descriptor is held for as long as the hub runs, and one
    open for writing makes the kernel refuse ``mount -o remount,ro`` of
    the file system under ``state_dir`` (EBUSY), which an admin does to a
    failing disk while the hub keeps serving POP3.  ``write``: opened for
    writing, for NFS, which refuses an exclusive ``flock`` on a read-only
    descriptor (EBADF: it makes it a POSIX lock)."""
    why = "not a regular file with one name (a link?): not followed; remove it"
    access = os.O_RDWR if write else os.O_RDONLY
    try:
        fd = os.open(path, access | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC,
                     0o600)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(e.errno, why, path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EINVAL, why, path)
    return fd


def _linked(fd: int) -> bool:
    """Whether the file open on ``fd`` still has a name (a folder removed
    under it leaves it unlinked: data written there is never published)."""
    try:
        return os.fstat(fd).st_nlink > 0
    except OSError:
        return False


def _drop(files: list[tuple[str, int]]) -> None:
    for path, fd in files:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
