"""Reading a file that must be a regular one, without ever blocking.

A plain ``open()`` of a FIFO (named pipe) put where a file is expected
waits for a writer, for ever: a hub's reactor or a ``mailhub`` command
would hang there.  ``O_NONBLOCK`` makes the open return at once, and
``fstat`` of what was opened (not a ``stat`` of the name before, which a
swap could outrun) tells a regular file from anything else.  A socket
cannot be opened at all (``ENXIO``, "No such device or address", which
names neither the socket nor the cure): refused as the FIFO is."""

from __future__ import annotations

import errno
import os
import select
import stat


class NotRegularFile(OSError):
    """What was opened is a FIFO, a device or a socket, not a file."""

    def __init__(self, path: str) -> None:
        super().__init__("not a regular file (a named pipe, device or socket)")
        self.path = path


def read_regular(path: str, *, follow: bool = True, limit: int = -1,
                 pipe_wait: float | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at ``path`` and its ``fstat`` once
    read (the caller may compare it with a ``stat`` from before).  A
    folder raises ``IsADirectoryError`` as ``open()`` does; anything else
    that is no regular file ``NotRegularFile``; ``follow=False`` refuses
    a symbolic link (``ELOOP``).  ``limit``: at most that many octets
    (the first ones), for a file that has no business being large.
    ``pipe_wait``: seconds to wait for a pipe to give something, which is
    then read to its end (shell process substitution, ``<(...)``, ``cat f
    | cmd -c /dev/stdin``, or a writer that opens a named pipe only once
    a reader has); a pipe that gives nothing by then raises
    ``TimeoutError``.  Without it a pipe is refused as no regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ENXIO and _is_socket(path, follow):
            raise NotRegularFile(path) from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if pipe_wait is not None and stat.S_ISFIFO(st.st_mode):
        try:
            _await_pipe(fd, path, pipe_wait)
        except BaseException:
            os.close(fd)
            raise
    elif not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        raise NotRegularFile(path)
    with open(fd, "rb") as f:
        return f.read(limit), os.fstat(fd)


def _await_pipe(fd: int, path: str, seconds: float) -> None:
    """Wait up to ``seconds`` for the pipe ``fd`` to be readable, then make
    it blocking so that it is read to its writer's end.  Readable covers
    data and a writer that came and went; a named pipe no writer ever
    opened stays unreadable (Linux reports no hang-up for a writer that
    never was), so it times out rather than waits for ever."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(max(0, int(seconds * 1000))):
        raise TimeoutError(errno.ETIMEDOUT, f"nothing written to the pipe in {seconds:g} s", path)
    os.set_blocking(fd, True)


def _is_socket(path: str, follow: bool) -> bool:
    """Whether ``path`` names a socket now (after an open's ``ENXIO``)."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode)
