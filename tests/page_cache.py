"""The page cache, as tests of reads that must not wait for the disk need
it: how many of a file's pages it holds, and dropping them for sure."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Callable

import pytest

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def cached_pages(fd: int) -> int:
    """How many pages of the file open as ``fd`` the page cache holds now.

    Asked of the kernel with ``mincore(2)`` over a mapping of the file that
    is never touched, so the asking reads nothing in: a probe read would
    (a read with ``RWF_NOWAIT`` that says EAGAIN still starts the kernel's
    readahead).  Linux answers for a file mapping only to a caller who may
    write the file, as these tests' own files are."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap of the message failed")
    try:
        vector = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        if _libc.mincore(address, size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore of the message failed")
        return sum(byte & 1 for byte in vector.raw)
    finally:
        _libc.munmap(address, size)


def drop_pages(fd: int, tries: int = 200) -> bool:
    """Drop the pages of the file open as ``fd`` from the page cache and
    make sure they went (``cached_pages``); False if some stayed.

    ``POSIX_FADV_DONTNEED`` leaves a page that is being read in (as a
    read with ``RWF_NOWAIT`` that says EAGAIN starts one) or that another
    CPU still holds for a moment, and under load (tests run in parallel)
    that happens: the drop is tried again while a page stays."""
    os.fsync(fd)
    for _ in range(tries):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if cached_pages(fd) == 0:
            return True
        time.sleep(0.01)
    return False


#: how many times a read of pages just dropped is tried before a test
#: gives up seeing it not wait (``until_not_cached``)
TRIES = 50


def until_not_cached(fd: int, read: Callable[[], object], tries: int = TRIES) -> bool:
    """Drop the pages of the file open as ``fd`` and ``read`` (a read that
    must not wait for the disk: ``RWF_NOWAIT``), until it says
    ``BlockingIOError``; True then, False if every try got the data (the
    test is skipped if a drop leaves pages).

    Such a read of pages not cached starts reading them in, then looks
    again and says EAGAIN if they are not there yet; on a fast disk, the
    reading process descheduled in between (a loaded machine: the suite's
    other workers), they are, and the read returns the data.  So a test
    that must see the EAGAIN tries again, on a fresh drop, a few times: a
    read that does not use the flag at all gets the data every time."""
    for _ in range(tries):
        if not drop_pages(fd):  # no fault of the code the test is about
            pytest.skip(f"the page cache kept {cached_pages(fd)} pages of the file here")
        try:
            read()
        except BlockingIOError:
            return True
    return False
