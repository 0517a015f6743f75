"""Making writes durable: fsyncs off the reactor thread.

Owns ``Syncer`` (asynchronous, batched "make this durable" requests) and
``durable_write``/``fsync_dir`` (the synchronous shape of STYLE practice
11, for small records).  It knows nothing about messages, Maildirs or
queues: callers say which file or directory must reach the disk and wait
for the Deferred.

Why group commit
----------------
One fsync costs ~0.7 ms on our disks, and a stored message needs two
(its data, then the directory entry in ``new/``).  Done on the reactor
thread that is a hard ceiling of a few hundred messages a second and no
concurrency at all.  The ``Syncer`` takes requests on the reactor thread
and runs them in its own worker threads.  While one batch is being
synced, new requests wait; when it completes, everything that arrived in
the meantime becomes the next batch.  Ten sessions therefore share their
fsyncs: the more load, the bigger the batches, the cheaper each message.

A Deferred returned by the ``Syncer`` never fires before the fsync (or
syncfs) that covers its target has returned successfully; when that call
fails, the Deferred errbacks with the ``OSError``.

Three ways to sync (``method=``):

* ``"aio"`` (what ``"auto"``, the default, means where the kernel has
  it): no batches and no threads -- each request is an fsync request to
  the kernel, its result back on the reactor thread
  (``txmailhub.store.aio``, which says why and what it measured).
  ``start()`` falls back to ``"fsync"`` where ``io_setup`` fails, and so
  does a kernel that refuses the request itself.  Not with injected
  ``run_in_thread`` (tests order every step through it).
* ``"fsync"`` (``"auto"`` without AIO): one ``fsync``
  per distinct target (duplicate requests in a batch are merged), all in
  one thread job per batch: writeback of every file descriptor is
  started first (``start_writeback``: ``posix_fadvise(DONTNEED)``, which
  on Linux starts writing dirty pages without waiting), then the fsyncs
  run one after the other -- the first journal commit covers the
  others' blocks.  Each target gets its own outcome.  Eight 1 KiB files
  (median of 15): loop ext4 sequential 2.26 ms, one thread each 1.73 ms,
  writeback-then-fsync 0.94 ms; root ext4 0.79 / 1.24 / 0.55 ms.  One
  job per target on several threads (the first version) cost more CPU:
  every job is a hand-off between threads (futex calls, GIL switches;
  ``strace -c`` counted ~40 futex calls per message).  Hub under
  ``smtp-source`` (1 KiB, 10 sessions, 3,000 messages, loop ext4, 9
  interleaved pairs on a saturated machine): one job per batch used less
  CPU in 8 of 9 pairs, medians 0.947 -> 0.853 and 0.913 -> 0.855 ms/msg;
  the rate moved within the noise (604 -> 464, 510 -> 634 msg/s).
* ``"syncfs"``: one ``syncfs(2)`` (through ctypes) per filesystem in the
  batch -- usually one call, whatever the batch size.  It also flushes
  every other process's dirty data on that filesystem, and one error
  fails the whole batch.  Only for a filesystem of its own (Linux 5.8 and
  later report writeback errors through it; ``syncfs_available()``).

Why fsync, not syncfs, is the fallback: the production ``state_dir`` is
``/var/lib/txmailhub``, usually on the root filesystem, shared with
package updates, logs and backups.  One 1 KiB file made durable right
after another process left 300 MB of dirty data on the same (root) ext4
filesystem, twice each: ``fsync`` 0.4 / 0.2 ms, ``syncfs`` 181 / 190 ms
-- syncfs waits for the neighbour's data, and with group commit every
waiting session waits with it.  Without such a neighbour the two are
alike: the hub under ``smtp-source`` (1 KiB, 10 sessions, one connection
per message, 3,000 messages, interleaved medians of 4-5 runs, 2 shared
cores) on a loop-mounted ext4 of its own: 0.957 vs 0.787 and 0.720 vs
0.842 ms CPU/msg, 1,049 vs 1,284 and 1,358 vs 1,176 msg/s (syncfs vs
fsync) -- within the run-to-run noise; on the root filesystem with a
neighbour writing 50 MB/s without syncing, 3 runs each: syncfs 854-897
msg/s, fsync 695-1,451 msg/s.  (An earlier measurement, with Twisted's
thread pool in place of ``_Workers``, favoured syncfs: 1,494-2,412 vs
1,239-1,920 msg/s for a loop of create/sync/link/sync-dir; the hand-off
cost per thread job that made one call per batch cheaper is gone.)

Data, then names (``sync_then``): a message is stored in two durable
steps -- its data, then its name in ``new/`` -- and the second may only
start once the first is done, or a crash could leave an empty or partial
file visible.  As two requests that is two batches, two hand-offs
between threads and two trips through the reactor per message.
``sync_then(target, publication)`` puts both in one batch: the worker
fsyncs the files, runs each publication (links or renames, on the worker
thread), fsyncs the directories they name once per batch, and lets each
publication settle.  What it buys is latency -- one group-commit wait
per message instead of two, and one trip through the reactor -- not
CPU: under ``strace -c -f`` (1 KiB, 10 sessions, 2,000 messages) two-step
and one-job batches made 28-32 futex calls per message alike, and the
one-job batches more fsyncs (1.8 against 1.5 per message), since each
gathers only its own messages' directory syncs.  Alternated runs of the
reference load (3 of each build, 1 KiB, 10 sessions) were level within
this machine's noise (stored msg/s as a ratio to ``twistd mail`` 1.05 /
0.82 / 0.77 before, 0.77 / 0.94 / 1.11 after).  Each system call on a
worker thread costs a GIL hand-over with the reactor thread (about four
futex calls), so the worker does as few as it can: no ``fadvise`` for a
batch of one file, a rename rather than link + unlink for one mailbox
(37.5 -> 31.5 futex calls per message, with spool names drawn without
``getrandom``).  Their cost in time is below what this machine can show:
with the state on tmpfs the hub used 0.575 ms per message with the worker
thread and 0.567 ms with every job run inline on the reactor thread
(6 interleaved pairs); the kernel's own work for the fsyncs on ext4 is
the bigger price (0.69-0.85 ms per message there).

``max_batches`` lets more than one batch be in flight; it did not pay
here, so the default is 1, classic group commit.  (Overlapping fsyncs
did pay once they cost no thread hand-offs: that is the ``"aio"`` method.)  Measure on the target
machine before changing either knob.

Lifecycle: ``start()`` starts the worker threads (and opens the AIO
ring), ``stop()`` lets the batch under way, the kernel requests in flight
and everything already requested finish, then stops them and closes the
ring (it returns a Deferred); ``call()`` jobs under way count as
requested.  A request made before ``start()`` starts
them itself (and asks the reactor to ``stop()`` it before shutdown);
the threads are daemon threads, so a forgotten ``stop()`` never hangs an
exiting process; a request made after ``stop()`` errbacks (``LocalError``),
so a late message is refused rather than acknowledged unsynced.  A
``start()`` while a ``stop()`` is still draining cancels that stop's
tear-down: its Deferred still fires once everything is done, and the
syncer stays started.  Tests inject ``run_in_thread`` (``f -> Deferred``)
and need no threads at all.

Lanes (``Syncer.lane(name)``): a share of the worker threads for jobs
that may wait on the disk for long, each started only while fewer than
``lane_jobs`` of that lane's are on the workers (by default all the
threads but one, never fewer than one); the others wait in the lane, in
the order they came, and each is started on the reactor thread when one
of the lane's jobs is over.  The POP3 sessions' jobs (``POP3_LANE``: a
login's lock and listing, a session end's renames and deletions, sizes
measured, header sections downgraded) go through one: on a hung disk
four logins whose jobs hung held all four workers, and every spool file
made ahead, new Maildir's folders and copy -- on the thread path every
fsync batch too -- waited behind them, so POP3 clients reconnecting
every few minutes held up the hub's mail delivery until the disk came
back.  A job waiting in a lane counts for ``stop()`` as one under way;
one whose caller no longer wants it (``wanted``: a login whose client
left) is never run (``CallAbandoned``), so it takes neither a worker
nor what the job would have taken (a mailbox's lock).  SMTP's jobs
(``call()``) pay nothing for it.

After ``fork``: only the forking thread lives on in the child, and the
AIO context is the parent's alone (``txmailhub.store.aio``, "After
fork").  A hook (``os.register_at_fork``) lets every ``Syncer`` of the
child give both up at once -- the threads' results and the ring's
completions are then never delivered there, and nothing of the parent's
is destroyed or read -- and the child's first request starts threads and
a ring of its own.  What was requested before the fork is the parent's:
its Deferreds fire in the parent only (never the child's copies: their
callbacks would answer, from the child, on connections the two processes
share), and the child's ``stop()`` does not wait for it.  The jobs
waiting in a lane are the parent's too: the child forgets them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
import queue
import re
import stat
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.errors import LocalError
from txmailhub.store.aio import AioSyncs, open_ring

__all__ = [
    "POP3_LANE",
    "CallAbandoned",
    "Lane",
    "Syncer",
    "all_done",
    "durable_write",
    "fsync_dir",
    "fsync_path",
    "give_to",
    "lane_call",
    "makedirs_durably",
    "missing_folders",
    "owner_of",
    "remove_stale_temporaries",
    "rename_noreplace",
    "sync_parents",
    "syncfs",
    "syncfs_available",
]

log = Logger()

RunInThread = Callable[..., defer.Deferred]
Target = str | int

POP3_LANE = "pop3"
"""The lane (``Syncer.lane``) of the POP3 sessions' jobs: a login's lock
and listing, a session end's renames and deletions, sizes measured and
header sections downgraded.  Named here so that the store and the POP3
protocol share one."""

_libc: Any = None


def syncfs(fd: int, close: bool = False) -> None:
    """``syncfs(2)``: commit the whole filesystem holding ``fd``
    (``close=True`` closes ``fd`` afterwards, whatever happens)."""
    try:
        if _load_libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        if close:
            os.close(fd)


def syncfs_available() -> bool:
    """Whether ``syncfs`` exists and reports writeback errors (Linux >= 5.8)."""
    if not sys.platform.startswith("linux"):
        return False
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    if m is None or (int(m.group(1)), int(m.group(2))) < (5, 8):
        return False
    try:
        return hasattr(_load_libc(), "syncfs")
    except OSError:
        return False


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """``rename(2)`` that never replaces: ``FileExistsError`` when ``dst``
    exists.  A plain rename silently unlinks whatever had that name -- in
    a Maildir, another message whose unique part is the same (a foreign
    delivery agent's).  ``renameat2(RENAME_NOREPLACE)`` where the libc and
    the filesystem have it (Linux 3.15, glibc 2.28); otherwise ``link``
    then ``unlink`` (the message is in both folders for that moment)."""
    call = None
    if sys.platform.startswith("linux"):
        try:
            call = getattr(_load_libc(), "renameat2", None)
        except OSError:
            call = None
    if call is not None:
        if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # not: a filesystem without it
            raise OSError(err, os.strerror(err), src, None, dst)
    os.link(src, dst)
    os.unlink(src)


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def fsync_path(target: Target) -> None:
    """fsync an open file descriptor, or a file or directory by path."""
    if isinstance(target, int):
        os.fsync(target)
        return
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fsync_path(path)


def missing_folders(path: str) -> list[str]:
    """The folders of ``path`` (``path`` included) that are not there yet,
    outermost first: what a ``makedirs`` of it would make."""
    missing: list[str] = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def sync_parents(folders: Iterable[str]) -> None:
    """fsync the folder holding each of ``folders`` (once each), outermost
    first: a folder just made is only there after a crash once the entry
    naming it is durable, and a file made durable in it (``durable_write``
    syncs the file's own folder) would otherwise go with the folder."""
    for parent in dict.fromkeys(os.path.dirname(os.path.abspath(f)) for f in folders):
        fsync_dir(parent)


def makedirs_durably(path: str, mode: int = 0o777) -> list[str]:
    """``os.makedirs(path, mode, exist_ok=True)``, then the entry of every
    folder it made fsynced (``sync_parents``); returns those folders."""
    missing = missing_folders(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    sync_parents(missing)
    return missing


def durable_write(path: str, data: bytes, mode: int = 0o600, *,
                  new_owner: tuple[int, int] | None = None, keep_mode: bool = False,
                  dir_fd: int | None = None) -> None:
    """Replace ``path`` atomically and durably with ``data`` (synchronous).

    The file keeps the owner it had; one that does not exist yet gets
    ``new_owner`` (``None``: whoever writes it).  With ``keep_mode`` it
    keeps its permission bits too, exactly, whatever the umask of the
    writer (root's 077 must not make a 0644 aliases file one the hub's
    user can no longer read), and a new one gets ``mode`` exactly, for
    the same reason; without it a new one gets ``mode`` less the umask.

    The one shape for small records: write a temporary file next to it,
    flush, fsync, rename over ``path``, fsync the directory.  A crash at
    any moment leaves either the old content or the new one, never a mix.
    For small files only: it blocks the calling thread for two fsyncs.

    A process killed before the rename leaves its temporary file behind;
    each write removes those of earlier writers of the same ``path``
    that are gone (``remove_stale_temporaries``).

    ``dir_fd``: ``path``'s folder, open: the file is made and renamed in
    that folder, whatever its path leads to by then (a folder on the way
    that another user may replace with a link, ``trusted_links``); its
    errors name the files by their whole paths all the same.
    """
    directory = os.path.dirname(os.path.abspath(path))
    unique = f"{os.getpid()}.{os.urandom(4).hex()}"
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{unique}.tmp")
    named = path  # (as errors name it)
    if dir_fd is not None:
        path = os.path.basename(path)
        tmp = os.path.basename(tmp)
    if dir_fd is None:
        owner = owner_of(path) or new_owner
        old_mode = _mode_of(path) if keep_mode else None
    else:
        try:
            st = os.stat(path, dir_fd=dir_fd)
        except FileNotFoundError:
            owner, old_mode = new_owner, None
        except OSError as e:
            _name_whole(e, directory, dir_fd)
            raise
        else:
            owner = (st.st_uid, st.st_gid)
            old_mode = stat.S_IMODE(st.st_mode) if keep_mode else None
    if keep_mode and old_mode is None:
        old_mode = mode  # none to keep: the mode asked for, not the umask's
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     mode, dir_fd=dir_fd)
    except OSError as e:
        _name_whole(e, directory, dir_fd)
        raise
    try:
        # held until the rename: the sign that this temporary file is
        # being written (the lock goes with the process, if it dies)
        _lock_quietly(fd)
        # root replacing the hub's file (`mailhub user add` run as root):
        # the new file keeps the old one's owner, or the hub, running as
        # its own user, could no longer read it
        give_to(fd, owner)
        if old_mode is not None:
            os.fchmod(fd, old_mode)  # after the chown, which may clear set-id bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        _unlink_quietly(tmp, dir_fd)
        if isinstance(e, OSError) and e.filename is None:
            # write(2) and fsync(2) errors name no file: say which, and
            # that it is still as it was
            raise OSError(e.errno, f"{e.strerror} (unchanged)", named) from e
        raise
    try:
        if dir_fd is None:
            os.replace(tmp, path)
        else:
            os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as e:
        _unlink_quietly(tmp, dir_fd)
        if isinstance(e, OSError):
            _name_whole(e, directory, dir_fd)
        raise
    finally:
        os.close(fd)
    if dir_fd is None:
        remove_stale_temporaries(path)
        fsync_dir(directory)
    else:
        remove_stale_temporaries(path, dir_fd=dir_fd)
        os.fsync(dir_fd)


# A temporary file of ``durable_write`` younger than this is never taken
# for a dead writer's, locked or not: its writer may be between the
# open(2) that made it and the flock(2) that follows (microseconds), or
# be an older version of the hub, which wrote without the lock.
STALE_TEMPORARY_AGE = 60.0


def remove_stale_temporaries(path: str, now: float | None = None, *,
                             dir_fd: int | None = None) -> list[str]:
    """Remove the temporary files of ``durable_write`` for ``path`` that
    no writer is writing any more; the names removed.

    A writer killed between the temporary's open and its rename (a
    ``kill -9``, a power cut, an OOM kill) leaves ``.<name>.<pid>.<random>.tmp``
    next to ``path``; nothing reads it and, without this, nothing ever
    removes it.  Whether its writer is still at it is told by the
    ``flock`` every writer holds on its temporary until the rename: the
    kernel drops it when the writer's process ends, however it ends.  Not
    by the process id in the name: a dead writer's id may belong to a
    live process (reused; the hub often has the same one in a container
    after every restart), and another PID namespace (a container's
    ``mailhub user add`` next to a hub on the host, one volume) sees
    other ids.  A temporary is removed only when it is a regular file,
    at least ``STALE_TEMPORARY_AGE`` old, and its lock could be taken at
    once; one that cannot be opened (another user's), or on a file
    system without ``flock`` (the lock fails), stays.  Best effort:
    errors are no reason to fail the write that called it.  ``dir_fd``:
    ``path``'s folder, open (``durable_write``'s)."""
    directory = os.path.dirname(os.path.abspath(path))
    ours = re.compile(re.escape(f".{os.path.basename(path)}.") + r"\d+\.[0-9a-f]{8}\.tmp")
    try:
        names = [n for n in os.listdir(directory if dir_fd is None else dir_fd)
                 if ours.fullmatch(n)]
    except OSError:
        return []
    if not names:
        return []
    now = time.time() if now is None else now
    if dir_fd is not None:
        return [name for name in names if _remove_if_abandoned(name, now, dir_fd)]
    return [name for name in names
            if _remove_if_abandoned(os.path.join(directory, name), now)]


def _remove_if_abandoned(tmp: str, now: float, dir_fd: int | None = None) -> bool:
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(tmp, flags, dir_fd=dir_fd)
    except OSError:  # renamed in the meantime, or not ours to open
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_TEMPORARY_AGE:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its writer is alive (or this file system has no flock)
            return False
        # still the file that was judged (the names are never reused, but
        # the check costs one stat)
        now_there = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
        if (now_there.st_dev, now_there.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(tmp, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def owner_of(path: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``path``; ``None`` when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_uid, st.st_gid


def _mode_of(path: str) -> int | None:
    """The permission bits of ``path``; ``None`` when it does not exist."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def give_to(fd: int, owner: tuple[int, int] | None) -> None:
    """Make the file open as ``fd`` ``owner``'s where it is not ours (a
    user other than root cannot: then it stays as it is)."""
    if owner is not None and owner != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, *owner)
        except PermissionError:
            pass


def _lock_quietly(fd: int) -> None:
    """``flock`` a temporary file just made (see ``remove_stale_temporaries``);
    never waits, and a file system without ``flock`` writes without it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass


def _name_whole(error: OSError, directory: str, dir_fd: int | None) -> None:
    """Make the names ``error`` gives whole paths: a call by ``dir_fd``
    names the file by its bare name, which leaves the admin reading
    "mailhub: .users.123.0a1b2c3d.tmp: No space left on device" to
    guess the folder (``directory``, the one opened as ``dir_fd``)."""
    if dir_fd is not None:
        for attr in ("filename", "filename2"):
            name = getattr(error, attr)
            if isinstance(name, str) and not os.path.isabs(name):
                setattr(error, attr, os.path.join(directory, name))


def _unlink_quietly(path: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


class _Workers:
    """A small pool of daemon threads that hands results back to the reactor.

    Twisted's ``ThreadPool`` + ``deferToThreadPool`` costs 30-60 us of CPU
    per round trip here (a coordinator thread, context copies, a lock per
    hand-off); a ``SimpleQueue`` and one ``callFromThread`` cost 15-20 us.
    The syncer makes one round trip per thread job, so that is paid on
    every stored message.  Results that finish while the reactor has not
    yet picked up earlier ones ride the same ``callFromThread`` (fsyncs
    that one journal commit completes return together): one wake-up of
    the reactor for all of them.  Threads are started on demand, up to
    ``size``; ``stop()`` joins them (after the jobs already queued have
    run).
    """

    def __init__(self, reactor: Any, size: int, name: str) -> None:
        self.reactor = reactor
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread has taken yet
        self._done: list[tuple[defer.Deferred, bool, Any]] = []  # for the reactor
        self._lock = threading.Lock()
        self._abandoned = False

    def submit(self, f: Callable[[], Any]) -> defer.Deferred:
        """Run ``f`` on a worker thread; always a Deferred.  A thread that
        cannot be started ("can't start new thread": a TasksMax or
        RLIMIT_NPROC limit) is forgotten, and the job fails with that
        error when no other thread will take it -- raising here instead
        would leave the job counted as under way by the ``Syncer``, and
        its ``stop()`` (the hub's SIGTERM) waiting for it for ever."""
        d: defer.Deferred = defer.Deferred()
        with self._lock:
            self._queued += 1
            spawn = self._queued > self._idle and len(self._threads) < self.size
            if spawn:
                t = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._threads.append(t)
        if spawn:
            # started before the job is queued: a job no thread will ever
            # take must not be left in the queue
            try:
                t.start()
            except Exception:
                failure = Failure()
                with self._lock:
                    self._threads.remove(t)
                    alone = not self._threads  # those left run until stop()
                    if alone:
                        self._queued -= 1
                if alone:
                    log.failure("cannot start a worker thread", failure)
                    return defer.fail(failure)
        self._queue.put((f, d))
        return d

    def _work(self) -> None:
        get, call_back = self._queue.get, self.reactor.callFromThread
        lock, done = self._lock, self._done
        while True:
            with lock:
                self._idle += 1
            job = get()
            with lock:
                self._idle -= 1
                self._queued -= 1
            if job is None:
                return
            f, d = job
            try:
                outcome = (d, True, f())
            except BaseException:
                outcome = (d, False, Failure())
            with lock:
                done.append(outcome)
                wake = len(done) == 1  # else a wake-up is already on its way
            if wake:
                call_back(self._deliver)
            # Nothing of this job may outlive it while the thread waits for
            # the next one: the locals held the function with its arguments
            # (a POP3 session's mailbox, and through its ``gone`` the
            # session itself) and the result (a snapshot of 20,000
            # messages) until this thread ran another job -- each idle
            # worker kept the last session it served.
            job = f = d = outcome = None  # type: ignore[assignment]

    def _deliver(self) -> None:
        """On the reactor thread: fire every result that is in."""
        if self._abandoned:  # a wake-up queued before a fork, run in the child
            return
        with self._lock:
            done = self._done[:]
            self._done.clear()
        for d, ok, result in done:
            if self._abandoned:  # a callback forked: the rest is the parent's
                return
            if ok:
                d.callback(result)
            else:
                d.errback(result)

    def stop(self) -> None:
        threads, self._threads = self._threads, []
        for _ in threads:
            with self._lock:
                self._queued += 1
            self._queue.put(None)
        for t in threads:
            t.join()

    def abandon(self) -> None:
        """In the child of a ``fork``: the threads did not come along, and
        the results they had made are the parent's.  Takes no lock: a
        worker may have held it at the fork, and it stays held here."""
        self._abandoned = True
        self._done = []
        self._threads = []


class _Request:
    __slots__ = ("deferred", "target", "then")

    def __init__(self, target: Target, then: Any = None) -> None:
        self.target = target
        self.then = then
        self.deferred: defer.Deferred = defer.Deferred()


class CallAbandoned(Exception):
    """A job that waited in a ``Lane`` was never run: its caller no longer
    wanted it (``wanted``: a login whose client left)."""


class Lane:
    """A share of a ``Syncer``'s worker threads (module docstring, "Lanes").

    At most ``cap`` of the lane's jobs are on the workers at once; the
    others wait here, in the order they came, and each is started on the
    reactor thread when one of the lane's jobs is over.  Why: jobs that
    may hang on the disk (a login's lock on a hung disk) must not take
    every worker, or the store's delivery work waits behind them.  Made
    by ``Syncer.lane``; nothing of it is on the hot path of ``call()``.
    """

    def __init__(self, syncer: Syncer, cap: int) -> None:
        self.syncer = syncer
        self.cap = cap
        self.running = 0  # jobs handed to the workers and not yet over
        self._waiting: deque[tuple[Callable[..., Any], tuple, Any, defer.Deferred]] = deque()

    @property
    def waiting(self) -> int:
        """How many jobs wait for their turn."""
        return len(self._waiting)

    def call(self, f: Callable[..., Any], *args: Any,
             wanted: Callable[[], bool] | None = None) -> defer.Deferred:
        """``Syncer.call`` in this lane's turn; fires with ``f(*args)``.

        ``stop()`` waits for a job waiting here as for one under way (and
        for what its callbacks request).  ``wanted``: asked before the job
        starts (and whenever another job comes to wait); once it says no,
        the job is never run and errbacks with ``CallAbandoned`` -- a
        login whose client left while its job waited takes no lock, and no
        worker, for nobody."""
        syncer = self.syncer
        if syncer._stopped:
            return defer.fail(LocalError("the syncer is stopped"))
        syncer._calls += 1  # from now on: stop() waits for it, waiting or not
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((f, args, wanted, d))
        # the jobs whose callers left meanwhile go now: a client that
        # reconnects again and again while the lane is full piles up none
        self._drop_unwanted()
        self._fill()
        return d

    def _drop_unwanted(self) -> None:
        gone = [job for job in self._waiting if not _still_wanted(job[2], job[3])]
        if not gone:
            return
        # all taken out before any is refused: a refusal's callbacks run
        # now, and one that asks for another job comes back here
        out = {id(job) for job in gone}
        self._waiting = deque(job for job in self._waiting if id(job) not in out)
        generation = self.syncer._generation
        for job in gone:
            if generation != self.syncer._generation:  # a refusal's callback forked:
                return  # the rest are the parent's (never refused in the child)
            self._abandon(job[3])

    def _fill(self) -> None:
        """Start the waiting jobs, first come first, while there is room."""
        while self.running < self.cap and self._waiting:
            f, args, wanted, d = self._waiting.popleft()
            if not _still_wanted(wanted, d):
                self._abandon(d)
                continue
            syncer = self.syncer
            # taken before the job starts: one that is over at once fires
            # its caller's callbacks below, and one that forks makes the
            # rest the parent's (``_settled`` must then count nothing)
            generation = syncer._generation
            self.running += 1
            try:
                inner = syncer._run(_bind_args(f, args))
            except Exception:  # a bug: fail this job, never keep stop() waiting
                inner = defer.fail(Failure())
            inner.chainDeferred(d)
            inner.addBoth(self._settled, generation)

    def _abandon(self, d: defer.Deferred) -> None:
        syncer = self.syncer
        generation = syncer._generation
        if not d.called:  # (a caller's cancel() answered it already)
            d.errback(CallAbandoned("its caller no longer wants it"))
        if generation != syncer._generation:  # a callback forked: the parent's
            return
        syncer._calls -= 1
        syncer._maybe_idle()

    def _settled(self, _: Any, generation: int) -> None:
        syncer = self.syncer
        if generation != syncer._generation:  # the parent's job, in a forked child
            return
        self.running -= 1
        # the next one starts before this one counts as over: stop()
        # never sees the lane idle while a job waits in it
        self._fill()
        if generation != syncer._generation:
            return
        syncer._calls -= 1
        syncer._maybe_idle()

    def _forked(self) -> None:
        """In a forked child: the jobs under way and waiting are the parent's."""
        self.running = 0
        self._waiting = deque()


def _still_wanted(wanted: Callable[[], bool] | None, d: defer.Deferred) -> bool:
    """Whether a job waiting in a lane is to run: not once its Deferred
    was cancelled by the caller, nor once ``wanted`` says no.  A
    ``wanted`` that raises (a bug of the caller's) is logged and counts
    as a yes: the lane goes on for the other jobs, and ``stop()`` is not
    left waiting for a job that can neither run nor be dropped."""
    return not d.called and _wants(wanted)


def _wants(wanted: Callable[[], bool] | None) -> bool:
    """``wanted()``, ``True`` when there is none or when it raises (logged;
    see ``_still_wanted``)."""
    if wanted is None:
        return True
    try:
        return bool(wanted())
    except Exception:
        log.failure("a lane job's wanted() check failed: the job runs")
        return True


def lane_call(syncer: Any, name: str) -> Callable[..., defer.Deferred] | None:
    """``syncer.lane(name).call``, for code that may be given another
    syncer: one without lanes (an application's own, a test's fake) has
    its ``call`` used, with the same ``wanted`` (asked once, at once);
    one without ``call``: ``None`` (the caller then does the work on its
    own thread, as before)."""
    lane = getattr(syncer, "lane", None)
    if lane is not None:
        return lane(name).call
    call = getattr(syncer, "call", None)
    if call is None:
        return None

    def plain(f: Callable[..., Any], *args: Any,
              wanted: Callable[[], bool] | None = None) -> defer.Deferred:
        if not _wants(wanted):  # a check that raises runs the job, as in a lane
            return defer.fail(CallAbandoned("its caller no longer wants it"))
        return call(f, *args)

    return plain


def _bind_args(f: Callable[..., Any], args: tuple) -> Callable[[], Any]:
    return lambda: f(*args)


class Syncer:
    """Off-reactor fsyncs: kernel AIO requests or batched thread jobs (see
    the module docstring).

    ``reactor`` delivers results back to its thread.  ``method`` is
    ``"auto"``, ``"aio"``, ``"syncfs"`` or ``"fsync"`` (``method`` then
    names the thread path: ``"fsync"`` or ``"syncfs"``; ``aio`` is the
    ``AioSyncs`` in use, if any, once started); ``threads`` caps the worker
    pool (a batch is one thread job; the others serve ``call()`` and
    ``max_batches`` > 1); ``max_batches`` is how many batches may be syncing at
    once (1: classic group commit).  ``lane_jobs`` is how many jobs of
    one ``lane()`` may be on the workers at once (``None``: all the
    threads but one, at least one).  ``run_in_thread(f) -> Deferred``
    replaces the worker threads (tests, or an application that wants its
    own threads).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        method: str = "auto",
        threads: int = 4,
        max_batches: int = 1,
        run_in_thread: RunInThread | None = None,
        lane_jobs: int | None = None,
    ) -> None:
        if method not in ("auto", "aio", "fsync", "syncfs"):
            raise LocalError(f"unknown sync method {method!r}")
        # "auto": the kernel's AIO where it has it, else fsync in threads
        # (robust on a shared filesystem, module docstring); never AIO
        # with injected threads, which tests use to order every step
        self._want_aio = method == "aio" or (method == "auto" and run_in_thread is None)
        self.reactor = reactor
        self.method = "syncfs" if method == "syncfs" else "fsync"  # without AIO
        self.aio: AioSyncs | None = None
        self._aio_busy = 0
        self._calls = 0  # call() jobs not yet over
        self.threads = max(threads, max_batches)
        self.max_batches = max_batches
        # all the threads but one by default: a lane's jobs that hang
        # leave a worker for the rest (module docstring, "Lanes")
        self.lane_jobs = max(1, self.threads - 1 if lane_jobs is None else lane_jobs)
        self._lanes: dict[str, Lane] = {}
        self._run_injected = run_in_thread
        self._pool: _Workers | None = None
        self._pending: list[_Request] = []
        self._in_flight = 0
        self._trigger_added = False
        self._stopped = False
        self._stop_wanted = False  # a stop() not cancelled by a later start()
        self._generation = 0  # one more in a forked child: older batches are the parent's
        self._idle_waiters: list[defer.Deferred] = []
        _syncers.add(self)
        #: counters for tests and benchmarks
        self.batches = 0
        self.requests = 0
        self.syscalls = 0

    @property
    def publishes_inline(self) -> bool:
        """Whether ``sync_then``'s publication runs on the caller's (the
        reactor's) thread: with the kernel's AIO, or before ``start()``
        where it is wanted.  A store then does its own slow calls before
        the publication (a Maildir's folders made the first time) in a
        ``call()`` job of their own, not in ``run()``."""
        if self.aio is not None:
            return not self.aio.broken
        return self._want_aio

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads, or the AIO ring (idempotent).  While
        a ``stop()`` is still draining, this cancels its tear-down: the
        syncer stays started."""
        self._stopped = False
        self._stop_wanted = False
        if self._run_injected is None and self._pool is None:
            self._pool = _Workers(self.reactor, self.threads, "txmailhub-sync")
        if self._want_aio and self.aio is None and hasattr(self.reactor, "addReader"):
            ring = open_ring()
            if ring is None:
                self._want_aio = False
                log.info("no Linux native AIO here: fsync in worker threads")
            else:
                self.aio = AioSyncs(self.reactor, ring)

    def stop(self) -> defer.Deferred:
        """Finish everything requested so far, then stop the workers.

        Fires once the last batch is durable and the threads are gone --
        or, when ``start()`` was called meanwhile, once the last batch is
        durable (the syncer then stays started)."""
        self._stop_wanted = True
        d = self._wait_idle()

        def stop_pool(_: Any) -> None:
            if not self._stop_wanted:  # start() since: it wins
                return
            self._stopped = True
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.stop()
            aio, self.aio = self.aio, None
            if aio is not None:
                aio.close()

        return d.addCallback(stop_pool)

    def _forked(self) -> None:
        """In the child of a ``fork``, from the hook (module docstring):
        give up the parent's threads and ring, and forget what was in
        flight; the next request starts this process's own."""
        self._generation += 1
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.abandon()
        aio, self.aio = self.aio, None
        if aio is not None:
            aio.abandon()
        self._aio_busy = 0
        self._calls = 0
        self._in_flight = 0
        self._pending = []
        self._idle_waiters = []
        for lane in self._lanes.values():
            lane._forked()

    def _busy(self) -> bool:
        """Anything requested and not yet over, on either path."""
        return bool(self._aio_busy or self._in_flight or self._pending or self._calls)

    def _wait_idle(self) -> defer.Deferred:
        if not self._busy():
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    # -- requests ------------------------------------------------------------

    def sync_file(self, target: Target) -> defer.Deferred:
        """Make a file's data and metadata durable.  ``target`` is a path,
        or a file descriptor the caller keeps open until the Deferred fires."""
        return self._request(target)

    def sync_dir(self, path: str) -> defer.Deferred:
        """Make the entries of a directory (links, renames, unlinks) durable."""
        return self._request(path)

    def sync(self, files: Iterable[Target] = (), dirs: Iterable[str] = ()) -> defer.Deferred:
        """All of them at once; fires ``None`` when every one is durable,
        errbacks with the first error otherwise -- in either case only
        once every request is over, so a descriptor in ``files`` may be
        closed when it fires (with AIO one request can fail at once while
        another still waits for room in the ring, its descriptor not yet
        the kernel's)."""
        return all_done(self.sync_each([*files, *dirs]))

    def sync_then(self, target: Target, publication: Any) -> defer.Deferred:
        """Make ``target`` durable, then publish it, all in one batch.

        ``publication`` has two methods, both run on the worker thread
        (on the reactor thread with AIO):
        ``run()``, once ``target``'s fsync has succeeded, makes the new
        names (links, renames) and returns the directories whose entries
        must become durable; ``settle(failed)``, after those directories
        were synced, gets ``{directory: OSError}`` for the ones that
        could not be, and returns the Deferred's result.  Errbacks with
        the ``OSError`` of ``target`` (``run`` is then never called), or
        with what ``run``/``settle`` raised.

        Why: a message is stored in two durable steps (its data, then its
        name in ``new/``).  As two requests they cost two batches, two
        hand-offs between threads and two trips through the reactor per
        message; as one, the second step rides in the batch of the first.
        """
        return self._request(target, then=publication)

    def call(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run another blocking filesystem call (``f(*args)``) on the worker
        threads, outside any batch; fires with its result.  For work that
        would stall the reactor, like creating inodes ahead of time or
        copying a message into a Maildir.

        ``stop()`` waits for it as for a sync request, and for the
        requests the caller's callbacks make when it fires (they run
        before the job counts as done): a message copied at shutdown is
        still fsynced and acknowledged, rather than refused half-way."""
        if self._stopped:
            return defer.fail(LocalError("the syncer is stopped"))
        self._calls += 1
        outer: defer.Deferred = defer.Deferred()
        inner = self._run(lambda: f(*args))
        inner.chainDeferred(outer)
        inner.addBoth(self._call_settled, self._generation)
        return outer

    def lane(self, name: str) -> Lane:
        """The ``Lane`` called ``name`` (made the first time): its jobs are
        ``call()`` jobs of which at most ``lane_jobs`` are on the workers
        at once, the others waiting their turn (module docstring, "Lanes")."""
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(self, self.lane_jobs)
        return lane

    def _call_settled(self, _: Any, generation: int) -> None:
        if generation != self._generation:  # the parent's job, in a forked child
            return
        self._calls -= 1
        self._maybe_idle()

    def sync_each(self, targets: Iterable[Target]) -> list[defer.Deferred]:
        """One Deferred per target (files or directories), all requested in
        the same batch, each with its own outcome."""
        ds = [self._request(t, launch=False) for t in targets]
        if self._pending and self._in_flight < self.max_batches:
            self._launch()
        return ds

    def _request(self, target: Target, launch: bool = True, then: Any = None) -> defer.Deferred:
        if self._stopped:
            return defer.fail(LocalError("the syncer is stopped: nothing can be made durable"))
        self.requests += 1
        if self._want_aio and self.aio is None:
            self._run_start()  # a request before start(): as for the threads
        aio = self.aio
        if aio is not None and not aio.broken:
            # the caller's callbacks run before the request counts as done:
            # a follow-up request they make keeps stop() waiting, as a
            # batch's results are delivered before the batch is done
            inner: defer.Deferred = defer.Deferred()
            outer: defer.Deferred = defer.Deferred()
            self._aio_busy += 1
            inner.chainDeferred(outer)
            inner.addBoth(self._aio_settled, self._generation)
            try:
                aio.request(target, then, inner)
            except Exception:  # a bug: fail this request, never keep stop() waiting
                if inner.called:
                    log.failure("an AIO sync request failed after its answer")
                else:
                    inner.errback(Failure())
            return outer
        req = _Request(target, then)
        self._pending.append(req)
        if launch and self._in_flight < self.max_batches:
            self._launch()
        return req.deferred

    def _aio_settled(self, _: Any, generation: int) -> None:
        if generation != self._generation:  # a caller's callback forked: the parent's
            return
        self._aio_busy -= 1
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """Fire ``stop()``'s waiters once nothing is left on either path:
        after a refusal (``EINVAL``) the ring's requests still in flight
        and the threads' batches finish side by side, and the ring may be
        closed only after the last of them."""
        if self._busy():
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        generation = self._generation
        for d in waiters:
            if generation != self._generation:  # one forked: the rest are the parent's
                return
            d.callback(None)

    # -- batches -------------------------------------------------------------

    def _run_start(self) -> None:
        self.start()
        if not self._trigger_added and hasattr(self.reactor, "addSystemEventTrigger"):
            # started by a request, not by a service: finish before shutdown
            self._trigger_added = True
            self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def _run(self, f: Callable[[], Any]) -> defer.Deferred:
        if self._run_injected is not None:
            try:
                return self._run_injected(f)
            except Exception:
                return defer.fail(Failure())
        if self._pool is None:
            self._run_start()
        return self._pool.submit(f)  # type: ignore[union-attr]

    def _launch(self) -> None:
        batch, self._pending = self._pending, []
        self._in_flight += 1
        self.batches += 1
        try:
            groups = self._plan(batch)
        except Exception:  # a bug: fail this batch, never wedge the syncer
            log.failure("cannot plan a sync batch")
            groups = [(_bind(_raise_now, Failure()), batch)]
        self.syscalls += len(groups)
        published = [
            (i, req) for i, (_, reqs) in enumerate(groups) for req in reqs if req.then is not None
        ]
        if len(groups) == 1 and not published:
            self._run(groups[0][0]).addBoth(self._deliver, groups[0][1], [1], self._generation)
            return
        # One thread job for the whole batch, whatever the method: every
        # job costs hand-offs between threads (futex calls, GIL
        # switches), and the calls of a batch are cheap together.  For
        # fsync, writeback of every file descriptor starts first, so the
        # journal commit of the first fsync covers the others' blocks.
        fds = [reqs[0].target for _, reqs in groups if isinstance(reqs[0].target, int)]
        work = _Batch(
            [job for job, _ in groups],
            fds if self.method == "fsync" else [],
            [(i, req.then) for i, req in published],
            self.method,
        )
        self._run(work.run).addBoth(self._deliver_groups, groups, published, self._generation)

    def _plan(self, batch: list[_Request]) -> list[tuple[Callable[[], Any], list[_Request]]]:
        """Group the batch into syscalls: one fsync per distinct target, or
        one syncfs per filesystem."""
        groups: dict[Any, list[_Request]] = {}
        if self.method == "fsync":
            for req in batch:
                groups.setdefault(req.target, []).append(req)
            return [(_bind(fsync_path, t), reqs) for t, reqs in groups.items()]
        jobs: list[tuple[Callable[[], Any], list[_Request]]] = []
        for req in batch:
            try:
                dev = os.fstat(req.target).st_dev if isinstance(req.target, int) else (
                    os.stat(req.target).st_dev
                )
            except OSError:
                jobs.append((_bind(_raise_now, Failure()), [req]))
                continue
            groups.setdefault(dev, []).append(req)
        for reqs in groups.values():
            jobs.append((_bind(_syncfs_one_of, [r.target for r in reqs]), reqs))
        return jobs

    def _deliver(self, result: Any, reqs: list[_Request], left: list[int],
                 generation: int) -> None:
        # the generation is checked again after every callback: one that
        # forks goes on in the child, where the rest is the parent's
        for req in reqs:
            if generation != self._generation:  # the parent's batch, in a forked child
                return
            if isinstance(result, Failure):
                req.deferred.errback(result)
            else:
                req.deferred.callback(None)
        if generation != self._generation:
            return
        left[0] -= 1
        if not left[0]:
            self._batch_done()

    def _deliver_groups(self, results: Any, groups: list, published: list,
                        generation: int) -> None:
        if generation != self._generation:  # the parent's batch, in a forked child
            return
        if isinstance(results, Failure):  # _Batch.run itself failed: a bug
            results = ([results] * len(groups), [results] * len(published))
        outcomes, settled = results
        then_outcome = {id(req): out for (_, req), out in zip(published, settled)}
        left = [len(groups)]
        for outcome, (_, reqs) in zip(outcomes, groups):
            plain = []
            for req in reqs:
                if generation != self._generation:  # a callback forked (see _deliver)
                    return
                if req.then is None:
                    plain.append(req)
                    continue
                out = outcome if outcome is not None else then_outcome[id(req)]
                if isinstance(out, _Settled):
                    req.deferred.callback(out.value)
                else:
                    req.deferred.errback(out)
            self._deliver(outcome, plain, left, generation)  # counts the group as done

    def _batch_done(self) -> None:
        self._in_flight -= 1
        if self._pending:
            self._launch()
            return
        self._maybe_idle()


_syncers: weakref.WeakSet[Syncer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """``os.register_at_fork``'s hook: every ``Syncer`` of this (child)
    process gives up its parent's threads and ring.  Never raises: it
    runs inside ``os.fork()``."""
    for syncer in list(_syncers):
        try:
            syncer._forked()
        except Exception:  # a fork must never fail for it
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def all_done(ds: list[defer.Deferred]) -> defer.Deferred:
    """Fires ``None`` once every Deferred of ``ds`` has fired, or errbacks
    with the first failure (in list order) -- not before the others are
    done, unlike ``gatherResults``: a caller that closes a descriptor
    then must not close it under a request still waiting for it."""
    if not ds:
        return defer.succeed(None)
    if len(ds) == 1:
        return ds[0]

    def first_failure(results: list[tuple[bool, Any]]) -> Any:
        for ok, result in results:
            if not ok:
                return result
        return None

    return defer.DeferredList(ds, consumeErrors=True).addCallback(first_failure)


def _bind(f: Callable[[Any], Any], arg: Any) -> Callable[[], Any]:
    return lambda: f(arg)


def _raise_now(failure: Failure) -> None:
    failure.raiseException()


def _syncfs_one_of(targets: list[Target]) -> None:
    """One syncfs through the first target that can be opened (they are
    all on the same filesystem).  A descriptor the caller already holds
    comes first: syncfs reports a writeback error only to descriptions
    opened before it happened, so one opened just now could miss an error
    that lost this batch's data."""
    error: OSError | None = None
    for target in targets:
        if isinstance(target, int):
            syncfs(target)
            return
    for target in targets:
        if isinstance(target, int):  # not reached: the loop above used it
            continue
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:  # gone since the request: try the next
            error = error or e
            continue
        syncfs(fd, close=True)
        return
    assert error is not None
    raise error


class _Settled:
    """A publication's result (its ``settle()`` value), told apart from a
    failure on the way back to the reactor."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Batch:
    """One batch, run on a worker thread: start the writeback of the file
    descriptors, run every sync job (each outcome kept: ``None`` or the
    ``Failure``), then the publications of ``sync_then`` whose target is
    durable, one sync of the directories they name, and their
    ``settle``."""

    def __init__(
        self,
        jobs: list[Callable[[], Any]],
        fds: list[int],
        publications: list[tuple[int, Any]],
        method: str,
    ) -> None:
        self.jobs = jobs
        self.fds = fds
        self.publications = publications
        self.method = method

    def run(self) -> tuple[list[Any], list[Any]]:
        if len(self.fds) > 1:  # overlapping writeback needs two files at least
            for fd in self.fds:
                start_writeback(fd)
        outcomes: list[Any] = []
        for job in self.jobs:
            try:
                job()
            except Exception:
                outcomes.append(Failure())
            else:
                outcomes.append(None)
        if not self.publications:
            return outcomes, []
        settled: list[Any] = []
        ran: list[tuple[int, Any]] = []
        dirs: dict[str, None] = {}
        for n, (group, publication) in enumerate(self.publications):
            if outcomes[group] is not None:
                settled.append(None)  # the target's own failure stands
                continue
            try:
                for path in publication.run():
                    dirs[path] = None
            except Exception:
                settled.append(Failure())
                continue
            settled.append(None)
            ran.append((n, publication))
        failed = _sync_dirs(list(dirs), self.method) if dirs else {}
        for n, publication in ran:
            try:
                settled[n] = _Settled(publication.settle(failed))
            except Exception:
                settled[n] = Failure()
        return outcomes, settled


def _sync_dirs(dirs: list[str], method: str) -> dict[str, OSError]:
    """Make the entries of ``dirs`` durable; the ones that failed, with
    their error (for syncfs, every directory of a filesystem whose call
    failed)."""
    failed: dict[str, OSError] = {}
    if method == "fsync":
        for path in dirs:
            try:
                fsync_path(path)
            except OSError as e:
                failed[path] = e
        return failed
    by_dev: dict[int, list[str]] = {}
    for path in dirs:
        try:
            by_dev.setdefault(os.stat(path).st_dev, []).append(path)
        except OSError as e:
            failed[path] = e
    for paths in by_dev.values():
        try:
            _syncfs_one_of(list(paths))
        except OSError as e:
            for path in paths:
                failed[path] = e
    return failed


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without
    waiting (``POSIX_FADV_DONTNEED`` does that on Linux; clean pages are
    dropped from the cache, dirty ones stay until written).  Best effort:
    the fsync that follows is what makes the data durable."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
