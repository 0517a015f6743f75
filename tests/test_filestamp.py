"""When a re-read file's stamp can be trusted (txmailhub.filestamp)."""

from __future__ import annotations

import os

from txmailhub.filestamp import RACY_SECONDS, FileStamp


def _st(mtime: float, size: int = 10, ino: int = 7) -> os.stat_result:
    ns = int(mtime * 1e9)
    # mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime (+ the _ns fields)
    return os.stat_result((0o100600, ino, 1, 1, 0, 0, size, int(mtime), int(mtime), int(mtime),
                           mtime, mtime, mtime, ns, ns, ns))


def test_a_stamp_read_in_its_own_clock_tick_is_not_trusted() -> None:
    """The whole stamp the same (inode, size, mtime, ctime), as after a
    second change within one tick: read again until RACY_SECONDS past."""
    now = [100.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    st = _st(100.0)
    assert stamp.stale(st)
    stamp.read(st)
    assert stamp.stale(st)  # a change within this tick would keep it
    now[0] = 100.0 + RACY_SECONDS
    stamp.read(st)
    assert not stamp.stale(st)
    assert stamp.stale(_st(100.0, size=11)) and stamp.stale(_st(100.0, ino=8))


def test_an_old_file_is_trusted_at_once_and_a_future_one_after_a_while() -> None:
    now = [1000.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    stamp.read(_st(10.0))
    assert not stamp.stale(_st(10.0))
    future = _st(5000.0)  # dated ahead of the clock: not read at every lookup for ever
    stamp.read(future)
    assert stamp.stale(future)
    now[0] += RACY_SECONDS
    stamp.read(future)
    assert not stamp.stale(future)
    stamp.forget()
    assert stamp.stale(future)


def test_a_wall_clock_set_back_does_not_make_the_file_fresh_for_hours() -> None:
    wall, mono = [1000.0], [5.0]
    stamp = FileStamp(lambda: wall[0], lambda: mono[0])
    st = _st(999.5)  # just changed
    stamp.read(st)
    wall[0] -= 3600  # NTP steps the clock back an hour
    mono[0] += RACY_SECONDS
    stamp.read(st)
    assert not stamp.stale(st)


def test_a_lookup_without_a_lock_never_trusts_a_new_stamp_before_its_reader_does() -> None:
    """The users file is looked up without a lock when its stamp is
    trusted: at no instant of ``read()`` may a new, not yet trustworthy
    stamp pass for trusted (the old stamp's trust with the new stamp),
    or a lookup in that instant skips a read it needed."""
    now = [100.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    stamp.read(_st(10.0))  # an old file: trusted
    new = _st(99.5, size=11)  # changed just now: not to be trusted yet
    seen: list[bool] = []

    class Watched(FileStamp):
        def __setattr__(self, name: str, value: object) -> None:
            object.__setattr__(self, name, value)
            seen.append(self.stale(new))  # what a lookup between two stores sees

    stamp.__class__ = Watched
    stamp.read(new)
    assert stamp.stale(new)
    assert seen and all(seen)


def test_settled_is_the_trust_of_the_text_last_read() -> None:
    """``settled``: whether what was read is the whole file for sure.  A
    file changed within RACY_SECONDS of the read may be one rewritten in
    place and caught half-written; the router and the login checker
    answer a miss in it with a temporary failure."""
    now = [100.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    assert not stamp.settled  # nothing read yet
    st = _st(99.5)
    stamp.read(st)
    assert not stamp.settled
    now[0] = 99.5 + RACY_SECONDS
    stamp.read(st)
    assert stamp.settled
    stamp.forget()
    assert not stamp.settled


def test_a_file_that_changed_during_its_read_is_not_settled() -> None:
    """A writer that began while the file was read (``after``, the open
    file's fstat once read, differs from the stat taken before): the text
    may be half of the file, however long ago the file had changed
    before.  Read again at the next lookup."""
    now = [1000.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    before = _st(10.0)
    stamp.read(before, after=_st(1000.0, size=4))
    assert not stamp.settled and stamp.stale(before)
    stamp.read(before, after=before)  # read again, and nothing moved meanwhile
    assert stamp.settled and not stamp.stale(before)


def test_a_fresh_text_that_ends_as_a_finished_file_does_is_settled() -> None:
    """``whole``: a text that ends with a line end is taken as the whole
    file at once (a writer caught half-way has seldom stopped at a line's
    end); it is still read again at every lookup until its stamp can be
    trusted.  A change during the read unsettles it whatever it holds."""
    now = [100.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    st = _st(99.5)
    stamp.read(st, whole=True)
    assert stamp.settled and stamp.stale(st)
    stamp.read(st, whole=False)
    assert not stamp.settled
    stamp.read(st, after=_st(99.9, size=4), whole=True)
    assert not stamp.settled


def test_the_doubt_lasts_the_two_seconds_the_docs_give() -> None:
    """docs/configuration.rst: "for two seconds after a change it reads the
    file at every lookup" -- FAT's two-second clock, not one, not three."""
    now = [100.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    st = _st(100.0)
    stamp.read(st)
    now[0] = 101.9
    stamp.read(st)
    assert stamp.stale(st) and not stamp.settled
    now[0] = 102.0
    stamp.read(st)
    assert not stamp.stale(st) and stamp.settled


def test_a_change_that_kept_inode_size_and_mtime_is_seen_by_its_ctime() -> None:
    # rewritten in place with a hash of the same length, then its mtime
    # put back (``touch -r``, ``rsync -t --inplace``): only ctime moved,
    # which no one can set back
    now = [1000.0]
    stamp = FileStamp(lambda: now[0], lambda: now[0])
    st = _st(10.0)
    stamp.read(st)
    assert not stamp.stale(st)
    fields = list(st)
    fields[9] = 999  # st_ctime (int)
    ctime_moved = os.stat_result((*fields, 10.0, 10.0, 999.0, int(10e9), int(10e9),
                                  int(999e9)))
    assert ctime_moved.st_mtime_ns == st.st_mtime_ns and ctime_moved.st_size == st.st_size
    assert stamp.stale(ctime_moved)
