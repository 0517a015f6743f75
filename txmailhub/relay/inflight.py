"""Attempt markers: how ``mailhub queue``, in another process, knows that
the running hub is delivering a queue entry right now.

Owns the file ``queue/.<id>.attempt`` and nothing else: the queue runner
makes one when an attempt begins (``mark``) and removes it when the
attempt ends (``unmark``); ``queue list``, ``queue show`` and ``mailq``
ask ``since``.  The file holds the hub's pid and when the attempt began
(JSON), and the hub keeps it open and ``flock``-ed for as long as the
attempt runs.  That lock, not the pid or the marker's age, is what says
"under way": the kernel drops it when the process ends, however it ends
(``kill -9`` included), so a marker left by a hub that stopped or was
killed mid-attempt is stale and never read as an attempt -- a pid may
be reused, and an attempt may rightly last long.  The next start
removes stale markers (``is_marker``, in ``OutboundQueue.recover``).

Markers are advisory: not fsynced, no part of an entry's commit, and a
marker that cannot be made (a full disk, no descriptor left) only leaves
the attempt unannounced.  Every function here blocks on the disk: the
runner calls them through the queue's ``io``, never on the reactor.

A ``flock`` belongs to the open file, not to the process: a child an
embedding application forks (without an exec, which ``O_CLOEXEC``
covers) shares it, and the marker read "delivering" for as long as that
child lived -- after the attempt, after the hub's own end.  The
descriptors held are closed in every such child (``os.register_at_fork``):
the parent's lock is untouched (only an unlock, not a close, would drop
it for both).  Only the descriptors listed are ever closed here, so the
end of an attempt that runs in such a child (``unmark``) touches
neither a file of the child's that has the number now nor the parent's
marker.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading

from twisted.logger import Logger

__all__ = ["SUFFIX", "is_marker", "mark", "marker_path", "since", "unmark"]

log = Logger(namespace="txmailhub.relay.queue")

#: ``.<id>.attempt``: an attempt under way
SUFFIX = ".attempt"
_TMP_SUFFIX = ".attempt-tmp"  # ``.<id>.<hex>.attempt-tmp``, before its rename

# The markers' descriptors this process holds (made or being made), for a
# forked child to close.  The lock keeps a fork out of the moments in
# which a descriptor is open and not yet listed, or unlisted and not yet
# closed (the child would keep the first, or close another file that
# reused the second's number); the functions here run in the queue's
# threads, a fork may come from any thread.
_held: set[int] = set()
_held_lock = threading.Lock()


def _close_in_child() -> None:
    """In a forked child: close the markers' descriptors the parent holds
    (their locks stay the parent's), then let the child make its own."""
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _held_lock.release()


os.register_at_fork(before=_held_lock.acquire, after_in_parent=_held_lock.release,
                    after_in_child=_close_in_child)


def _open_held(path: str, flags: int) -> int:
    with _held_lock:
        fd = os.open(path, flags, 0o600)
        _held.add(fd)
    return fd


def _close_held(fd: int) -> None:
    """Close ``fd``, a marker's descriptor this process holds; nothing when
    it holds none by that number (``_holds``)."""
    with _held_lock:
        if fd not in _held:
            return
        _held.discard(fd)
        os.close(fd)


def _holds(fd: int) -> bool:
    """Whether ``fd`` is a marker's descriptor this process holds.  Not in
    a child forked since it was made (``_close_in_child`` closed it there):
    should the end of that attempt run in the child (its copy of the hub's
    objects), the number may be another file's by then, one ``unmark``
    must neither close nor take for the marker."""
    with _held_lock:
        return fd in _held


def marker_path(directory: str, queue_id: str) -> str:
    return os.path.join(directory, "." + queue_id + SUFFIX)


def is_marker(name: str) -> bool:
    """Whether ``name`` in the queue folder is a marker (or one being made)."""
    return name.startswith(".") and name.endswith((SUFFIX, _TMP_SUFFIX))


def mark(directory: str, queue_id: str, when: float) -> int | None:
    """Make ``queue_id``'s marker, saying its attempt began at ``when``;
    returns the descriptor that holds its lock (for ``unmark``), or
    ``None`` when it could not be made.

    Made whole and locked under a name of its own, then renamed: a reader
    never finds the marker empty or unlocked while the attempt runs, and
    one an earlier attempt left is replaced."""
    tmp = os.path.join(directory, f".{queue_id}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    fd = -1
    try:
        fd = _open_held(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": when}).encode("ascii"))
        os.rename(tmp, marker_path(directory, queue_id))
    except OSError as e:
        log.debug("{queue_id}: no attempt marker ({why})", queue_id=queue_id, why=str(e))
        if fd >= 0:
            _close_held(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None
    return fd


def unmark(directory: str, queue_id: str, fd: int) -> None:
    """Remove the marker ``mark`` made (``fd``) and release its lock; in a
    process that does not hold it (a forked child), nothing."""
    if not _holds(fd):
        return
    path = marker_path(directory, queue_id)
    try:
        mine, there = os.fstat(fd), os.stat(path)
        # only our own: a start since (recover) may have removed it, and a
        # later attempt of the entry put its own in its place
        if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("{queue_id}: attempt marker not removed ({why})", queue_id=queue_id,
                  why=str(e))
    finally:
        _close_held(fd)  # and with it the lock: stale from now on, whatever is left


def since(directory: str, queue_id: str) -> float | None:
    """When the attempt under way of ``queue_id`` began (UTC seconds; 0.0
    when its marker does not say), or ``None`` when none is: no marker,
    or one nobody holds locked."""
    try:
        fd = os.open(marker_path(directory, queue_id),
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the hub is delivering it
        except OSError:
            return None
        else:
            return None  # nobody holds it: stale (our lock goes with the close)
        try:
            when = json.loads(os.read(fd, 4096).decode("ascii"))["since"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0
        return float(when) if isinstance(when, (int, float)) else 0.0
    finally:
        os.close(fd)
