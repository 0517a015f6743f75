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
change, not for good.

The same doubt covers what was read: a file rewritten in place (truncated,
then written, as ``cat > file`` and some editors do) may have been read
half-written.  ``settled`` says whether the text last read can be taken
as the file's whole: not when the file was seen changing during the
read, nor while the stamp is not trusted unless the text looks finished
(it ends with a line end: every writer ends its last line, and a writer
caught half-way has written a whole number of its buffers, which seldom
ends where a line does).  A lookup that finds nothing in a
text that is not settled may have looked in a half-written file, so the
router and the login checker answer it with a temporary failure.  Knows
nothing of what the files hold.
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
    ``settled`` whether the text last read is the whole file for sure;
    ``forget()`` when the file is away or the read failed."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        # wall-clock seconds: what mtimes are compared with
        self.clock = clock
        # and seconds no clock step moves, for "seen that long ago": a wall
        # clock set back an hour must not have the file read at every
        # lookup for that hour
        self.monotonic = monotonic
        # (stamp, trusted, settled) as one value: the users file is looked
        # up without a lock while its stamp is trusted, so a lookup must
        # never see a new stamp with the trust of the one it replaces
        self._state: tuple[tuple[int, ...] | None, bool, bool] = (None, False, False)
        self._first_read = 0.0  # when that stamp was first read (monotonic)

    def stale(self, st: os.stat_result) -> bool:
        stamp, trusted, _ = self._state
        return not trusted or _stamp(st) != stamp

    def now(self) -> tuple[float, float]:
        """The time (wall clock, monotonic) to pass to ``read()``: taken
        before the read begins."""
        return self.clock(), self.monotonic()

    @property
    def settled(self) -> bool:
        """Whether the text last read is the file's whole, as far as can
        be told: it did not change during the read, and either its stamp
        is trusted (the read came ``RACY_SECONDS`` after the last change)
        or the text looked finished (``whole``).  A file just written
        whole (``mailhub user add``, an editor's save) is settled at once:
        a miss in it is the permanent refusal it should be, not two
        seconds of "try again".  False before the first read and after
        ``forget()``.  Costs no system call: it was
        judged when the file was read, and a file that is not settled is
        read again at every lookup, so it is judged again at each."""
        return self._state[2]

    def read(self, st: os.stat_result, began: tuple[float, float] | None = None,
             after: os.stat_result | None = None, whole: bool = False) -> None:
        """``began``: ``now()`` taken before the read.  What the stamp's
        trust rests on is when the text was read, not when the reader
        (a thread held up, a long parse) came to note it: a second change
        in the file's clock tick may have followed the read.  ``after``:
        the open file's ``fstat`` once the text was read; a stamp other
        than ``st``'s means the file changed while it was read (a writer
        that began then, into a file last changed long ago), so what was
        read may be half of it: not trusted, and read again.  ``whole``:
        the text read ends as a finished file does (with a line end); an
        empty text never does (a truncated file not yet written)."""
        wall, now = began if began is not None else self.now()
        stamp = _stamp(st)
        if stamp != self._state[0]:
            self._first_read = now
        still = after is None or _stamp(after) == stamp
        aged = (wall - st.st_mtime >= RACY_SECONDS
                or now - self._first_read >= RACY_SECONDS)
        self._state = (stamp, aged and still, still and (aged or whole))

    def forget(self) -> None:
        self._state = (None, False, False)
