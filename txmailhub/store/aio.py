"""fsync without threads: Linux native AIO, completions on the reactor.

Owns ``KernelRing`` (an ``io_setup(2)`` context whose completions are
signalled on an ``eventfd``) and ``AioSyncs`` (the ``Syncer``'s ``"aio"``
method: every file and directory sync as a kernel request, its result
back on the reactor thread).

Why
---
A stored message needs its data durable, then its name in ``new/``.
With worker threads (the ``"fsync"`` method) every batch is a hand-off
between the reactor thread and a worker: the job goes through a queue,
each system call on the worker takes and gives back the GIL, and the
result comes back through ``callFromThread`` -- about 30 ``futex`` calls
per message -- and one batch at a time reaches the disk (group commit;
letting several batches overlap cost more in hand-offs than it won).
``IOCB_CMD_FSYNC`` (Linux 4.18) gives the fsync to the kernel instead:
``io_submit`` returns at once, the kernel runs the fsync in its own
worker, and the result waits in the ring until the reactor, woken by the
``eventfd`` as by a socket, collects it.  No Python thread, no GIL
hand-over, and every message's fsync runs as soon as it is asked for,
so the filesystem's journal commits concurrent ones together.  The
least a Twisted server can do to store mail durably
(``bench/peers/floor_maildir.py``, 1 KiB, 10 sessions, loop ext4) stored
1,123 msg/s with one worker thread and group commit and 1,768-2,126
msg/s this way, at the same CPU per message in the process (0.31 and
0.30-0.32 ms) and less for the whole machine (0.70-0.78 against 0.59-0.62
ms per message beside the client: the kernel's workers are not free,
but cheaper than Python threads).

Durability is the same as ``os.fsync``'s: the kernel calls the same
``vfs_fsync`` on the same open file, and the result (0 or ``-errno``)
is what fsync(2) would have returned.  Renames and links of a
``sync_then`` publication run on the reactor thread between the file's
fsync and the directory's (they are quick metadata operations; the
fsyncs are what waits for the disk).

A directory's syncs are grouped (any path's, in fact): one in flight per
path, and the requests made while it runs wait for the next (a sync
covers only what was there when it started).  File descriptors are
never grouped: each is the caller's own file.

When it is used: ``Syncer(method="auto")`` (what ``twistd mailhub``
builds) picks it where ``io_setup`` works; otherwise, or when the kernel
refuses the fsync request itself (``EINVAL``: older than 4.18, or a
filesystem without fsync; ``ENOSYS``/``EPERM``: a sandbox that forbids
``io_submit`` but not ``io_setup``), the syncer goes on with worker
threads and says so once in the log.

After ``fork``
--------------
A context made by ``io_setup`` belongs to the process that made it: the
child of a ``fork`` gets no share in it (its ``io_submit``,
``io_getevents`` and ``io_destroy`` with the parent's context all say
``EINVAL``; the parent's requests go on unharmed), but it does get a copy
of the ring's ``eventfd``, the same kernel object as the parent's -- a
child that read it would take the parent's wake-up.  ``abandon()`` (the
``Syncer`` calls it in the child) therefore destroys nothing: the child's
copy of the descriptor is replaced by an ``eventfd`` of its own that
never becomes readable, under the same number, and whatever was in
flight is forgotten (its results are the parent's).  The reader stays
registered with the child's copy of the reactor, which is not asked to
remove it: with ``epoll``, whose interest list a forked child shares with
its parent, that would unregister the parent's ``eventfd``.  The number
stays taken (a new descriptor of the child's under it would be mistaken
for the old one by the reactor's books), and the reader names no
descriptor any more, so that the child's reactor, when it removes every
reader at shutdown, forgets it without a word to the kernel.  With
``epoll`` shared, the child may still be woken while the parent's
``eventfd`` is readable (its reader then does nothing); that, like the
rest of the reactor's ``epoll`` set and its waker pipe, is Twisted's to
share between the two processes, not the ring's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["AioSyncs", "AioUnsupported", "KernelRing", "open_ring"]

log = Logger()

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# x86-64 and arm64 system call numbers (asm-generic for arm64 and riscv),
# for 64-bit processes only: os.uname() names the kernel's machine, and a
# 32-bit process on it (i386 or x32 on x86_64, armhf on aarch64) has other
# numbers -- on i386, 206-209 are setgroups32, fchown32, setresuid32 and
# getresuid32 -- and a 4-byte aio_context_t and timespec
_POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
    "riscv64": (0, 1, 4, 2),
}
_IOCB_CMD_FSYNC = 2
# io_submit's answers that mean "not here", not "not this file"
_NOT_HERE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP))
_IOCB_FLAG_RESFD = 1


class AioUnsupported(OSError):
    """The kernel cannot run fsync requests here: use threads."""


class _Iocb(ctypes.Structure):
    # struct iocb of <linux/aio_abi.h>, little-endian layout
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class KernelRing:
    """One AIO context: ``submit(fd, key)`` asks for an fsync of ``fd``,
    ``reap()`` returns the ``(key, result)`` pairs that are done
    (``result`` 0 or ``-errno``); ``fileno()`` becomes readable when
    there are some.  The kernel copies each request at ``io_submit``, so
    one request structure serves them all."""

    def __init__(self, depth: int = 256) -> None:
        machine = os.uname().machine
        if not sys.platform.startswith("linux") or machine not in _SYSCALLS or \
                _POINTER_SIZE != 8 or sys.byteorder != "little" or not hasattr(os, "eventfd"):
            raise AioUnsupported(errno.ENOSYS, "no Linux native AIO here")
        self._setup, self._destroy, self._getevents, self._submit = _SYSCALLS[machine]
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, depth, ctypes.byref(self._ctx)) < 0:
            err = ctypes.get_errno()
            raise AioUnsupported(err, f"io_setup: {os.strerror(err)}")
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            self._syscall(self._destroy, self._ctx)
            raise
        self.depth = depth
        self._iocb = _Iocb()
        self._iocb.aio_lio_opcode = _IOCB_CMD_FSYNC
        self._iocb.aio_flags = _IOCB_FLAG_RESFD
        self._iocb.aio_resfd = self._efd
        self._one = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_IoEvent * depth)()
        self._now = ctypes.byref(_Timespec(0, 0))
        self.abandoned = False

    def fileno(self) -> int:
        return self._efd

    def submit(self, fd: int, key: int) -> None:
        """Raises ``BlockingIOError`` when the ring is full, ``OSError``
        for anything else the kernel refused."""
        self._iocb.aio_fildes = fd
        self._iocb.aio_data = key
        if self._syscall(self._submit, self._ctx, 1, self._one) != 1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def reap(self) -> list[tuple[int, int]]:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        done: list[tuple[int, int]] = []
        while True:
            n = self._syscall(self._getevents, self._ctx, 0, self.depth, self._events, self._now)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                raise OSError(err, f"io_getevents: {os.strerror(err)}")
            events = self._events
            done.extend((events[i].data, events[i].res) for i in range(n))
            if n < self.depth:
                return done

    def close(self) -> None:
        if self._efd >= 0:
            if not self.abandoned:
                self._syscall(self._destroy, self._ctx)
            os.close(self._efd)
            self._efd = -1

    def abandon(self) -> None:
        """In the child of a ``fork``: let go of the parent's context
        without touching it (module docstring, "After fork").  The
        descriptor number stays open, on an ``eventfd`` of this process's
        that nothing writes to; nothing is submitted or reaped again."""
        if self.abandoned or self._efd < 0:
            return
        self.abandoned = True
        self._ctx = ctypes.c_ulong(0)
        try:
            quiet = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:  # no descriptor to spare: keep the copy, never read it
            return
        try:
            os.dup2(quiet, self._efd, inheritable=False)
        finally:
            os.close(quiet)


def open_ring(depth: int = 256) -> KernelRing | None:
    """A ring, or ``None`` where this system has none (logged once by the caller)."""
    try:
        return KernelRing(depth)
    except OSError:
        return None


# What an abandoned reader gives as its descriptor: no descriptor at all,
# and not -1, which reactors take as "closed, look up the number it had"
_NOT_A_DESCRIPTOR = -2


class _Reader:
    """The ring's eventfd as a reactor reader.

    Abandoned (in a forked child), it names no descriptor: a reactor that
    removes it (the child's shutdown) then only forgets it in its own
    books -- epoll's would otherwise ask the kernel to unregister a
    number whose registration, if any, is the parent's (module
    docstring, "After fork"), and raise when it is not there."""

    def __init__(self, ring: Any, on_ready: Callable[[], None]) -> None:
        self._ring = ring
        self._on_ready = on_ready
        self.abandoned = False

    def fileno(self) -> int:
        if self.abandoned:
            return _NOT_A_DESCRIPTOR
        return self._ring.fileno()

    def doRead(self) -> None:
        self._on_ready()

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "txmailhub-aio"


class _DirState:
    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running = False
        self.waiting: list[Callable[[Exception | None], None]] = []


class AioSyncs:
    """The ``Syncer``'s requests as kernel fsyncs (see the module docstring).

    ``ring`` is a ``KernelRing`` (tests give a fake); ``reactor`` must
    have ``addReader``/``removeReader``.  Each method takes the request's
    Deferred and fires it.  ``broken`` turns true when the kernel refused
    a request as not possible here (``_refused``; that one, and any still
    waiting, are then fsynced on the reactor thread; the ``Syncer`` sends
    new requests to its threads).  ``idle()`` tells whether nothing is in
    flight.  ``abandon()`` is for the child of a ``fork``: nothing of
    the parent's is completed there, ever.
    """

    def __init__(self, reactor: Any, ring: Any) -> None:
        self.reactor = reactor
        self.ring = ring
        self.broken = False
        self.abandoned = False
        self._ops: dict[int, Callable[[int], None]] = {}
        self._backlog: list[tuple[int, Callable[[int], None]]] = []
        self._dirs: dict[str, _DirState] = {}
        self._key = 0
        self._poll: Any = None
        self._reader = _Reader(ring, self.reap)
        reactor.addReader(self._reader)
        self.requests = 0  # fsyncs asked of the kernel, for tests and benchmarks

    def idle(self) -> bool:
        return not self._ops and not self._backlog and not self._dirs

    def close(self) -> None:
        if self.abandoned:  # the reader stays, on purpose (abandon())
            return
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self.reactor.removeReader(self._reader)
        self.ring.close()

    def abandon(self) -> None:
        """In the child of a ``fork`` (the ``Syncer`` calls it there, from
        ``os.register_at_fork``): the requests in flight are the parent's
        -- their callers' copies here never hear of them, since firing
        them would run the parent's callbacks (a reply on a connection
        the two processes share) in the child -- and the ring is given
        up without touching the parent's (module docstring, "After
        fork").  Touches nothing but this object and the ring: the
        reactor is left alone, and ``reap`` does nothing from now on."""
        self.abandoned = True
        self._reader.abandoned = True
        self._ops = {}
        self._backlog = []
        self._dirs = {}
        self.ring.abandon()

    # -- requests ------------------------------------------------------------

    def request(self, target: Any, then: Any, d: defer.Deferred) -> None:
        """fsync ``target`` (a descriptor the caller keeps open, or a path);
        then, with ``then``, publish it and sync the directories it names.
        A path with nothing to publish joins the syncs of that path
        (usually a directory): one in flight, the rest wait for the next."""
        if self.abandoned:  # the rest of a request of the parent's (a callback forked)
            return
        if then is None and not isinstance(target, int):
            self._path(target, d)
            return
        if isinstance(target, int):
            fd, own = target, False
        else:
            try:
                fd, own = os.open(target, os.O_RDONLY | _O_CLOEXEC), True
            except Exception:  # OSError, or ValueError for a NUL in the name
                d.errback(Failure())
                return

        def synced(res: int) -> None:
            if own:
                _close_quietly(fd)
            if res != 0:
                d.errback(_error(res))
            elif then is None:
                d.callback(None)
            else:
                self._publish(then, d)

        self._submit(fd, synced)

    def _path(self, path: str, d: defer.Deferred) -> None:

        def done(error: Exception | None) -> None:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

        self._dir(path, done)

    # -- inside ----------------------------------------------------------------

    def _publish(self, publication: Any, d: defer.Deferred) -> None:
        try:
            dirs = list(dict.fromkeys(publication.run()))
        except Exception:
            d.errback(Failure())
            return
        failed: dict[str, Exception] = {}
        left = [len(dirs)]

        def settle() -> None:
            try:
                result = publication.settle(failed)
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)

        if not dirs:
            settle()
            return
        for path in dirs:

            def one(error: Exception | None, path: str = path) -> None:
                if error is not None:
                    failed[path] = error
                left[0] -= 1
                if not left[0]:
                    settle()

            self._dir(path, one)

    def _dir(self, path: str, done: Callable[[Exception | None], None]) -> None:
        if self.abandoned:  # the rest of a request of the parent's (a callback forked)
            return
        state = self._dirs.get(path)
        if state is None:
            state = self._dirs[path] = _DirState()
        state.waiting.append(done)
        if not state.running:
            self._dir_next(path, state)

    def _dir_next(self, path: str, state: _DirState) -> None:
        group, state.waiting = state.waiting, []
        if not group:
            del self._dirs[path]
            return
        state.running = True
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except Exception as e:  # OSError, or ValueError for a NUL in the name:
            # either way this group's answer, never a path left "running"
            self._dir_settle(path, state, group, e)
            return

        def synced(res: int) -> None:
            _close_quietly(fd)
            self._dir_settle(path, state, group, _error(res) if res != 0 else None)

        self._submit(fd, synced)

    def _dir_settle(self, path: str, state: _DirState,
                    group: list[Callable[[Exception | None], None]],
                    error: Exception | None) -> None:
        # the path's state first: what the callbacks see (idle(), a new
        # request for the path) is then already true
        state.running = False
        if not state.waiting:
            del self._dirs[path]
        for done in group:
            if self.abandoned:  # a callback forked: the rest is the parent's
                return
            try:
                done(error)
            except Exception:  # a bug in a caller's callback: never wedge the directory
                log.failure("a directory sync's caller failed")
        # those that came while it ran, unless a callback's request started them
        if not self.abandoned and state.waiting and not state.running and \
                self._dirs.get(path) is state:
            self._dir_next(path, state)

    def _submit(self, fd: int, on_done: Callable[[int], None]) -> None:
        if self.abandoned:  # the rest of a request of the parent's (a callback forked)
            return
        self.requests += 1
        if not self._backlog and not self.broken:
            self._key += 1
            try:
                self.ring.submit(fd, self._key)
            except BlockingIOError:  # the ring is full: after the next completion
                if not self._ops:
                    self._poll_later()  # others' requests fill it: none will wake us
            except OSError as e:
                self._refused(fd, e, on_done)
                return
            except Exception:  # a bug: this request fails, the others go on
                log.failure("cannot submit an fsync request")
                on_done(-errno.EIO)
                return
            else:
                self._ops[self._key] = on_done
                return
        if self.broken:
            on_done(_fsync_now(fd))
            return
        self._backlog.append((fd, on_done))

    def _poll_later(self) -> None:
        if self._poll is None or not self._poll.active():
            self._poll = self.reactor.callLater(0.01, self.reap)

    def _refused(self, fd: int, error: OSError, on_done: Callable[[int], None]) -> None:
        """``io_submit`` said no.  ``EINVAL``: the kernel has no AIO fsync
        (older than 4.18) or the file's filesystem cannot take one this
        way; ``ENOSYS``, ``EPERM``, ``EACCES``, ``EOPNOTSUPP``: a sandbox
        (a seccomp filter) lets ``io_setup`` through but not the request.
        Either way: fsync it here, once, and let the ``Syncer`` use its
        threads from now on -- not 451 for every message.  Anything else
        (``EBADF``) is this request's error."""
        if error.errno in _NOT_HERE:
            if not self.broken:
                log.warn("the kernel refuses fsync through AIO ({error}): syncing with "
                         "worker threads from now on",
                         error=errno.errorcode.get(error.errno, error.errno))
                self.broken = True
            on_done(_fsync_now(fd))
        else:
            on_done(-(error.errno or errno.EIO))

    def reap(self) -> None:
        """On the reactor thread, when the eventfd is readable.  Never
        raises: the reactor would drop the reader, and every later request
        would wait for good."""
        if self.abandoned:  # the parent's, seen by a forked child's reactor
            return
        try:
            done = self.ring.reap()
        except OSError:
            # The ring cannot be read (never seen): what is in it may never
            # be known, so it counts as failed (451 for a message, never a
            # 250), and the threads take over.
            log.failure("cannot read the kernel's AIO completions: syncing with worker "
                        "threads from now on")
            self.broken = True
            done = [(key, -errno.EIO) for key in list(self._ops)]
        for key, res in done:
            if self.abandoned:  # a callback forked: the rest is the parent's
                return
            on_done = self._ops.pop(key, None)
            if on_done is not None:
                _complete(on_done, res)
        while self._backlog and not self.abandoned:
            if self.broken:
                fd, on_done = self._backlog.pop(0)
                _complete(on_done, _fsync_now(fd))
                continue
            fd, on_done = self._backlog[0]
            self._key += 1
            try:
                self.ring.submit(fd, self._key)
            except BlockingIOError:
                if not self._ops:
                    self._poll_later()
                return
            except OSError as e:
                del self._backlog[0]
                try:
                    self._refused(fd, e, on_done)
                except Exception:
                    log.failure("a sync's completion failed")
                continue
            except Exception:  # a bug: this request fails, the others go on
                del self._backlog[0]
                log.failure("cannot submit an fsync request")
                _complete(on_done, -errno.EIO)
                continue
            del self._backlog[0]
            self._ops[self._key] = on_done


def _complete(on_done: Callable[[int], None], res: int) -> None:
    """Give a request its result; a bug in what it runs is logged, and the
    other requests go on (``reap`` must never raise)."""
    try:
        on_done(res)
    except Exception:
        log.failure("a sync's completion failed")


def _error(res: int) -> OSError:
    """The error of a completion whose result is not 0.  fsync(2) gives 0
    or ``-errno``; anything else is no report of a durable file (an event
    misread, a kernel meaning something else by it), so it is ``EIO``:
    only a 0 lets a message be acknowledged."""
    if 0 < -res < 4096:  # -errno: the kernel's errors are 1 to 4095
        return OSError(-res, os.strerror(-res))
    return OSError(errno.EIO, f"fsync request completed with {res}, neither 0 nor -errno")


def _close_quietly(fd: int) -> None:
    """Close a descriptor opened only to be synced: the sync's result is
    what counts, and an error here must not keep its callers waiting."""
    try:
        os.close(fd)
    except OSError:
        pass


def _fsync_now(fd: int) -> int:
    """fsync on this thread, as a kernel result (0 or ``-errno``)."""
    try:
        os.fsync(fd)
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0
