"""Reads that do not wait for the disk: ``preadv2(..., RWF_NOWAIT)``.

Owns the two reads the POP3 sessions try on the reactor thread before
they hand a read to the store's worker threads -- ``pread_nowait`` (a
descriptor, at an offset) and ``read_nowait`` (a file object, where it
stands) -- and the decision, made once a process, whether the kernel
offers them.  Must not decide where the read goes instead: that is the
caller's (``txmailhub.pop3.protocol``).

Why: a read of data the kernel has not cached waits for the device, and
on a hung one (a stuck NFS, SAN or device-mapper device) a read on the
reactor thread held every session of the hub.  A hand-off to a worker
thread for every read costs more CPU than a whole small ``RETR`` (tens
to a hundred and more microseconds against some 50), and nearly every
read is of mail the kernel holds (mail is mostly read soon after it
came).  With ``RWF_NOWAIT`` (Linux 4.14, and a filesystem that supports
it: ext4, XFS, btrfs) a read of cached data
costs what a plain one does, and one that would wait fails at once with
``EAGAIN`` (``BlockingIOError``) and reads nothing: only that one goes
to a worker.  Where the flag is missing (``ENOSYS``, or no
``os.RWF_NOWAIT``) every read here is a plain one, as before.  Where a
filesystem refuses it (``EOPNOTSUPP``, ``EINVAL``: tmpfs does on Linux
6.18, where ext4 takes it) the reads of that filesystem are plain
ones from its first refusal on, and the others' are still tried without
waiting: the decision is made once a filesystem (its device number),
not once a process -- a refusal by one mount (a Maildir on tmpfs, or on
another disk) turned the flag off for every Maildir of the hub.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from twisted.logger import Logger

__all__ = ["nowait_available", "pread_nowait", "read_nowait"]

log = Logger(namespace="txmailhub.store")

_FLAG: int | None = getattr(os, "RWF_NOWAIT", None)
_REFUSED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)

# None until a read tells: True once one worked, False once the kernel
# refused (``ENOSYS``) or there is no flag at all: then every read here
# is a plain one
_works: bool | None = None if _FLAG is not None and hasattr(os, "preadv") else False

# The page cache holds files in whole pages (folios of one page or more,
# each at an offset that is a multiple of the page size): a read without
# waiting that stops short because the next page is not cached stops at a
# multiple of it.  One that stops anywhere else stopped at the end of the
# file (as a plain read does), and another try there could only say so.
_PAGE = mmap.PAGESIZE

# the devices (``st_dev``) of the filesystems that refused the flag: their
# reads are plain ones.  Only the reactor thread changes it.
_refused_devices: set[int] = set()


def nowait_available() -> bool:
    """Whether reads here may raise ``BlockingIOError`` (not known to be
    refused by the kernel; a filesystem may still refuse it): callers
    that have nowhere to send a read that would wait need not try."""
    return _works is not False


def _plain(fd: int) -> bool:
    """Whether reads of ``fd`` are plain ones: the flag is not available,
    or ``fd``'s filesystem refused it.  An ``fstat`` only once a
    filesystem refused it (none where all take it)."""
    if _works is False:
        return True
    return bool(_refused_devices) and os.fstat(fd).st_dev in _refused_devices


def _refused(error: OSError, fd: int) -> None:
    """The flag refused for ``fd``: by its filesystem, or (``ENOSYS``) by
    the kernel.  Logged once a filesystem."""
    global _works
    dev = None
    if error.errno != errno.ENOSYS:
        try:
            dev = os.fstat(fd).st_dev
        except OSError:
            pass  # which filesystem cannot be told: none is tried again
    if dev is None:
        _works = False
        where = "for any filesystem"
    else:
        _refused_devices.add(dev)
        where = f"for the filesystem of device {os.major(dev)}:{os.minor(dev)}"
    log.info("reads without waiting for the disk (RWF_NOWAIT) not available here ({error}) "
             "{where}: POP3 reads of its mail the kernel has not cached wait on the main "
             "thread", error=os.strerror(error.errno) if error.errno else str(error),
             where=where)


def _set(value: bool | None) -> None:
    """For tests: pretend the kernel refused the flag (``False``), or
    forget what was learnt (``None``), the filesystems' refusals too."""
    global _works
    _works = value if _FLAG is not None else False
    _refused_devices.clear()


def pread_nowait(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` octets of ``fd`` from ``offset`` (fewer only at the
    end of the file, as ``os.pread`` gives a regular file), read only if
    the kernel holds them all: ``BlockingIOError`` otherwise, nothing
    read.  A plain ``os.pread`` where the flag is not available."""
    if _plain(fd):
        return os.pread(fd, size, offset)
    got = _preadv_nowait(fd, size, offset)
    if got is None:  # refused here: from now on plain reads on this filesystem
        return os.pread(fd, size, offset)
    buf, n = got
    if n == size:
        return bytes(buf)
    if not n:
        return b""
    del buf[n:]
    if (offset + n) % _PAGE:
        # ended within a page: the end of the file (``_PAGE``), so the
        # small message RETR reads whole costs one preadv2, not a second
        # one that returns 0
        return bytes(buf)
    # A short read at a page boundary is the end of the file, or the end
    # of what the kernel holds: the rest is asked for (0 at the end;
    # BlockingIOError if not cached, and then none of it counts as read)
    return bytes(buf) + pread_nowait(fd, size - n, offset + n)


def _preadv_nowait(fd: int, size: int, offset: int) -> tuple[bytearray, int] | None:
    """One ``preadv2(RWF_NOWAIT)`` of ``size`` octets at ``offset`` (-1:
    the file's position, which it moves): the buffer and how many octets
    it holds; ``BlockingIOError`` when the kernel would wait; ``None``
    when the flag is refused for ``fd`` (noted: the caller reads plainly)."""
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, _FLAG)  # type: ignore[arg-type]
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno not in _REFUSED:
            raise
        _refused(e, fd)
        return None
    if _works is None:
        _learnt()
    return buf, n


def _learnt() -> None:
    global _works
    if _works is None:
        _works = True


def read_nowait(f: Any, size: int) -> bytes:
    """``f.read(size)`` of an unbuffered file over a regular file (what
    ``MaildirMailbox.open_message`` gives), read only if the kernel holds
    it all: ``BlockingIOError`` otherwise, and the file is where it was
    (a worker's ``f.read(size)`` then reads the same octets).  A plain
    ``f.read`` where the flag is not available."""
    fd = f.fileno()
    if _plain(fd):
        return f.read(size)
    return _read_here(fd, size)


def _read_here(fd: int, size: int) -> bytes:
    """``pread_nowait`` from the file's position, which it moves (offset
    -1: one system call, as a plain read)."""
    got = _preadv_nowait(fd, size, -1)
    if got is None:  # refused here: from now on plain reads on this filesystem
        return os.read(fd, size)
    buf, n = got
    if n == size:
        return bytes(buf)
    if not n:
        return b""
    try:
        rest = _read_here(fd, size - n)
    except BlockingIOError:
        os.lseek(fd, -n, os.SEEK_CUR)  # back to where the read began
        raise
    del buf[n:]
    return bytes(buf) + rest
