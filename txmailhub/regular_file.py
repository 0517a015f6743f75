"""Reading a file that must be a regular one, without ever blocking.

A plain ``open()`` of a FIFO (named pipe) put where a file is expected
waits for a writer, for ever: a hub's reactor or a ``mailhub`` command
would hang there.  ``O_NONBLOCK`` makes the open return at once, and
``fstat`` of what was opened (not a ``stat`` of the name before, which a
swap could outrun) tells a regular file from anything else.  A socket
cannot be opened at all (``ENXIO``, "No such device or address", which
names neither the socket nor the cure): refused as the FIFO is.  A
regular file another program holds a lease on makes the non-blocking
open fail with ``EWOULDBLOCK``, where a plain one waits for the lease
to be given up: that file is opened again so (``_open_leased``)."""

from __future__ import annotations

import errno
import math
import os
import select
import stat
import time
from typing import BinaryIO

#: octets read from a pipe at a time
_PIPE_PIECE = 65536


class PipeTimeout(TimeoutError):
    """A pipe was not read to its end in the time given: ``read`` octets
    came (0: nothing was written), and its writer had not closed it."""

    def __init__(self, path: str, seconds: float, read: int) -> None:
        what = ("nothing written to the pipe" if read == 0 else
                f"the pipe's writer did not close it ({read} octets read)")
        super().__init__(errno.ETIMEDOUT, f"{what} in {seconds:g} s", path)
        self.seconds = seconds
        self.read = read


class NotRegularFile(OSError):
    """What was opened is a FIFO, a device or a socket, not a file."""

    def __init__(self, path: str) -> None:
        super().__init__("not a regular file (a named pipe, device or socket)")
        self.path = path


class FileTooLarge(OSError):
    """A file holds more than the most its reader takes (``read_regular``'s
    ``most``)."""

    def __init__(self, path: str, most: int) -> None:
        super().__init__(f"larger than {size_text(most)}, the most the hub reads of it")
        self.path = path
        self.most = most


def size_text(octets: int) -> str:
    """``16 MiB``, ``64 KiB``: a bound as the docs and messages say it."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if octets >= unit and octets % unit == 0:
            return f"{octets // unit} {name}"
    return f"{octets} octets"


def read_regular(path: str, *, follow: bool = True, limit: int = -1,
                 pipe_wait: float | None = None,
                 most: int | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at ``path`` and its ``fstat`` once
    read (the caller may compare it with a ``stat`` from before).  A
    folder raises ``IsADirectoryError`` as ``open()`` does; anything else
    that is no regular file ``NotRegularFile``; ``follow=False`` refuses
    a symbolic link (``ELOOP``).  ``limit``: at most that many octets
    (the first ones), for a file that has no business being large.
    ``pipe_wait``: seconds a pipe is given to be read to its end -- its
    writer's close, or ``limit`` octets (shell process substitution,
    ``<(...)``, ``cat f | cmd -c /dev/stdin``, or a writer that opens a
    named pipe only once a reader has); one that is not by then raises
    ``PipeTimeout`` (a ``TimeoutError``): a writer that never closes it
    would otherwise hold the reader for ever once its first octet came.
    Without it a pipe is refused as no regular file.  ``most``: a file
    that must hold at most that many octets; one that holds more raises
    ``FileTooLarge`` once ``most`` and one more are read, never the whole
    of it (a log or an image put in the place of a users file)."""
    if most is not None:
        data, st = read_regular(path, follow=follow, limit=most + 1, pipe_wait=pipe_wait)
        if len(data) > most:
            raise FileTooLarge(path, most)
        return data, st
    fd = _open_unwaited(path, follow)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if pipe_wait is not None and stat.S_ISFIFO(st.st_mode):
        try:
            return _read_pipe(fd, path, pipe_wait, limit), os.fstat(fd)
        finally:
            os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise NotRegularFile(path)
    with open(fd, "rb") as f:
        if limit < 0:
            return f.read(), os.fstat(fd)
        # to its size and one octet more (grown since the fstat?):
        # ``read(limit)`` would take ``limit`` octets of memory first,
        # 4 MiB for every config read, whatever the file's size
        data = f.read(min(limit, st.st_size + 1))
        if len(data) > st.st_size:
            data += f.read(limit - len(data))
        return data, os.fstat(fd)


def open_regular(path: str) -> BinaryIO:
    """The regular file at ``path`` opened to read (binary, buffered), as
    ``open(path, "rb")`` opens it -- but what is no regular file is never
    waited on nor read: a folder raises ``IsADirectoryError``, a FIFO, a
    device or a socket ``NotRegularFile``, as ``read_regular``.  For a
    file read in pieces (a queued message, streamed to the next hop)."""
    fd = _open_unwaited(path, True)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise NotRegularFile(path)
    return open(fd, "rb")


def _open_unwaited(path: str, follow: bool) -> int:
    """``path`` opened to read without waiting on what is no regular file
    (``O_NONBLOCK``: a FIFO opens at once, a socket is ``NotRegularFile``),
    a link followed only where ``follow``; a regular file under another
    program's lease is opened once the lease is given up
    (``_open_leased``), as a plain open waits for it."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ENXIO and _is_socket(path, follow):
            raise NotRegularFile(path) from None
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise
        return _open_leased(path, flags, e)


def _read_pipe(fd: int, path: str, seconds: float, limit: int) -> bytes:
    """The pipe ``fd`` (non-blocking) read to its writer's end, or to
    ``limit`` octets, within ``seconds`` in all.  Readable covers data and
    a writer that came and went (its end: an empty read); a named pipe no
    writer ever opened stays unreadable (Linux reports no hang-up for a
    writer that never was), so it times out rather than waits for ever."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    pieces: list[bytes] = []
    got = 0
    while limit < 0 or got < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(math.ceil(left * 1000)):
            raise PipeTimeout(path, seconds, got)
        want = _PIPE_PIECE if limit < 0 else min(_PIPE_PIECE, limit - got)
        try:
            piece = os.read(fd, want)
        except BlockingIOError:  # readable, then drained by another reader
            continue
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _open_leased(path: str, flags: int, refused: OSError) -> int:
    """The file at ``path`` opened as a plain ``open()`` would have, after
    its non-blocking open was ``refused`` with ``EWOULDBLOCK``: a regular
    file another program holds a lease on (Samba's oplocks, an NFS
    server's delegations, ``fcntl(F_SETLEASE)``), asked by that open to
    give it up.  Opened without ``O_NONBLOCK``, the open waits for that,
    at most the kernel's ``lease-break-time`` (45 s by default).  The name
    is first opened ``O_PATH`` (no lease is broken, nothing is read) and
    what it names looked at: only a regular file is opened so, through
    ``/proc/self/fd``, the very one looked at -- a FIFO put there since is
    never waited on.  Without ``/proc``, ``refused`` is raised."""
    where = os.open(path, os.O_PATH | (flags & (os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))))
    try:
        if not stat.S_ISREG(os.fstat(where).st_mode):
            raise refused
        try:
            return os.open(f"/proc/self/fd/{where}", flags & ~os.O_NONBLOCK)
        except FileNotFoundError:
            raise refused from None  # no /proc
    finally:
        os.close(where)


def _is_socket(path: str, follow: bool) -> bool:
    """Whether ``path`` names a socket now (after an open's ``ENXIO``)."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode)
