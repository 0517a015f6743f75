"""The page cache, as tests of reads that must not wait for the disk need
it: how many of a file's pages it holds, and dropping them for sure."""

from __future__ import annotations

import ctypes
import mmap
import os
import time

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
