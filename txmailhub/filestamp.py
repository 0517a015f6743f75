"""When a file the hub re-reads while it runs must be read again.

Owns ``FileStamp``: the users and aliases files are looked at (one
``stat``) at every lookup and read again when their stamp -- inode, size,
mtime, ctime -- differs from the one they had when last read.  A stamp
alone can lie: a file changed twice within one tick of the file system's
clock (a second on some, two on FAT, a few milliseconds on others) keeps
its mtime and ctime, and a change that keeps the size (a password hash
replaced by one of the same length, an alias renamed to a name of the same
length) keeps the whole stamp.  So a stamp is trusted only when the read
that saw it came ``RACY_SECONDS`` after the file's mtime, or after an
earlier read that saw the same stamp (a file dated in the future); until
then the file is read at every lookup -- for a couple of seconds after a
change, not for good.  Knows nothing of what the files hold.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["RACY_SECONDS", "FileStamp"]

# Longer than the coarsest file system clock the files may live on (FAT's
# two seconds), as the Maildir quota's (``txmailhub.store.quota``).
RACY_SECONDS = 2.0


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileStamp:
    """The stamp of a file as last read, and whether it can be trusted.

    ``stale(st)`` before reading: whether the file must be read (again);
    ``read(st)`` after a read begun with that ``st`` (taken before the
    read, so a change during it makes the next stamp differ);
    ``forget()`` when the file is away or the read failed."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        # wall-clock seconds: what mtimes are compared with
        self.clock = clock
        # and seconds no clock step moves, for "seen that long ago": a wall
        # clock set back an hour must not have the file read at every
        # lookup for that hour
        self.monotonic = monotonic
        # (stamp, trusted) as one value: the users file is looked up
        # without a lock while its stamp is trusted, so a lookup must never
        # see a new stamp with the trust of the one it replaces
        self._state: tuple[tuple[int, ...] | None, bool] = (None, False)
        self._first_read = 0.0  # when that stamp was first read (monotonic)

    def stale(self, st: os.stat_result) -> bool:
        stamp, trusted = self._state
        return not trusted or _stamp(st) != stamp

    def now(self) -> tuple[float, float]:
        """The time (wall clock, monotonic) to pass to ``read()``: taken
        before the read begins."""
        return self.clock(), self.monotonic()

    def read(self, st: os.stat_result, began: tuple[float, float] | None = None) -> None:
        """``began``: ``now()`` taken before the read.  What the stamp's
        trust rests on is when the text was read, not when the reader
        (a thread held up, a long parse) came to note it: a second change
        in the file's clock tick may have followed the read."""
        wall, now = began if began is not None else self.now()
        stamp = _stamp(st)
        if stamp != self._state[0]:
            self._first_read = now
        trusted = (wall - st.st_mtime >= RACY_SECONDS
                   or now - self._first_read >= RACY_SECONDS)
        self._state = (stamp, trusted)

    def forget(self) -> None:
        self._state = (None, False)
