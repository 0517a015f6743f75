"""glibc's ``malloc``, told to give large blocks back to the kernel.

Every password check (scrypt, N=2^14, r=8: ``txmailhub.users``) allocates
one block of 16 MiB, on one of the reactor's pool threads.  glibc serves a
block that large with ``mmap`` at first, and unmaps it when freed; but
each such free also raises its "mmap threshold" (up to 32 MiB), so from
then on the 16 MiB come from the thread's malloc arena, and the arena
keeps them once freed, for the next allocation of the same arena.  With
the pool's ten threads, and threads moving between arenas when they
collide (up to eight arenas per core), a hub that ran 56 MiB of RSS at its
start held 338 MiB after a few thousand sessions with about a thousand
logins, for good: every Python object was gone, the memory was not.

A threshold set explicitly (``mallopt(M_MMAP_THRESHOLD, ...)``) stops
glibc from moving it: the 16 MiB are mapped and unmapped at each check,
and after a burst of logins the RSS is back where it was.  What it costs:
a block of ``MMAP_THRESHOLD`` or more is a fresh mapping each time (a
system call and its page faults): some 4,000 faults per password check,
measured at 40 -> 47 ms of CPU per check here, once per login.

Only for the hub run by twistd, like the open-files limit and the
collector's thresholds (``txmailhub.process_limits``): an application that embeds
``MailHub`` owns its allocator.  An administrator who tuned malloc through
the environment (a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``, or one
of the ``MALLOC_*`` variables glibc takes for them, ``MALLOC_ENVIRONMENT``)
keeps that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["MALLOC_ENVIRONMENT", "MMAP_THRESHOLD", "tune_malloc"]

#: blocks this large or larger are mapped, and unmapped when freed: under
#: the 16 MiB of a password check, well over the buffers of a session
MMAP_THRESHOLD = 4 * 1024 * 1024

#: ``M_MMAP_THRESHOLD`` of glibc's ``<malloc.h>``
_M_MMAP_THRESHOLD = -3


def _glibc() -> Any:
    """The C library's functions when it is glibc, else None (musl, macOS
    and Windows have no such threshold, or another allocator)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (AttributeError, ValueError, OSError):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


#: the environment variables glibc reads as its ``glibc.malloc`` tunables
#: (``MALLOC_TRIM_THRESHOLD_`` alone, say, fixes the mmap threshold too, at
#: glibc's 128 KiB: raising it to ``MMAP_THRESHOLD`` would undo that)
MALLOC_ENVIRONMENT = ("MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST", "MALLOC_CHECK_",
                      "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_PERTURB_",
                      "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")


def _tuned_by_environment(environ: Mapping[str, str]) -> bool:
    """Whether the administrator tuned malloc: any ``glibc.malloc`` tunable,
    under its own name in ``GLIBC_TUNABLES`` or its older one."""
    return (any(name in environ for name in MALLOC_ENVIRONMENT)
            or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""))


def tune_malloc(threshold: int = MMAP_THRESHOLD, libc: Any = None,
                environ: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at ``threshold``; True when it was set.

    False, and nothing done, where the C library is not glibc or the
    environment tunes malloc already.  ``libc`` and ``environ`` are for
    tests (the real ones by default)."""
    if _tuned_by_environment(os.environ if environ is None else environ):
        return False
    if libc is None:
        libc = _glibc()
    if libc is None:
        return False
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except AttributeError:  # a C library without mallopt
        return False
