"""The durable outbound queue in ``state_dir/queue/``.

Owns the on-disk format and every change to it.  One message is two
files named by its queue id:

* ``<id>.msg``  -- the message (a hard link to the fsynced spool file,
  or a copy when the spool is on another file system);
* ``<id>.json`` -- the ``QueueEntry`` record (``txmailhub.relay.record``),
  replaced atomically: write ``.<id>.json.tmp``, fsync, rename, fsync
  the directory.

The message is made durable first and the record last, so the record's
existence is the commit point: a crash before it leaves an orphan
``.msg`` that the next start removes (the client got no 250 and sends
again); a crash after it leaves a complete entry.  Removal runs the other
way (record first).  Control files shared with ``mailhub queue`` in
another process: ``.lock`` (``flock``, held while a record is read,
changed and written), ``.flush`` (retry everything now) and ``.changed``
(hold, release or delete: reload).  The runner polls for both.

While the hub delivers an entry, ``.<id>.attempt`` says so to ``mailhub
queue`` (``mark_attempt``, ``attempt_since``; ``txmailhub.relay.inflight``
owns that file): a marker the hub holds locked for as long as the attempt
runs, stale once it is not, and removed at the next start.

This module never delivers, resolves or sends notices: that is the
runner's job (it only records, with ``enqueue(delivered=...)``, a success
notice still owed).  Blocking file work is done through an injected ``io``
callable (the service runs it in a thread pool; tests run it inline).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmailhub.address import Address
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.interfaces import IOutboundQueue
from txmailhub.logsafe import listed, loggable, plural
from txmailhub.regular_file import NotRegularFile, read_regular
from txmailhub.relay import bounce, inflight
from txmailhub.relay.mime7bit import has_8bit
from txmailhub.relay.record import DELIVERED, QueueEntry, RecordError
from txmailhub.smtp.reply import Reply
from txmailhub.store.sync import fsync_dir, makedirs_durably

__all__ = ["RECORD_ROOM", "FileSystem", "OutboundQueue", "inline_io", "valid_queue_id"]

log = Logger(namespace="txmailhub.relay.queue")

# A recipient the mailbox store already has (enqueue's ``delivered``): the
# entry only carries the RFC 3461 success notice the sender asked for.
_IN_MAILBOX = Reply.of(250, "2.0.0", "Delivered to its mailbox")

LOCK = ".lock"
FLUSH = ".flush"
CHANGED = ".changed"
CORRUPT = "corrupt"

#: errors that pass (out of the process's or the system's file descriptors,
#: or of memory): no verdict on an entry
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

#: the least free room (bytes) the queue folder's file system must have for
#: a delivery attempt to begin: room for the record that says its outcome
#: (``has_room_for_outcome``), twice over and a margin
RECORD_ROOM = 64 * 1024


def valid_queue_id(text: str) -> bool:
    return 8 <= len(text) <= 40 and text.isalnum() and text.isascii()


def _message_problem(path: str) -> str | None:
    """Why the queue's copy of a message at ``path`` cannot be sent, or
    ``None``.  A named pipe or a device there is none the hub made: an
    attempt's plain open of it, on the reactor's thread, would wait for a
    writer (or read a device) for ever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "its message file is missing"
    if stat.S_ISDIR(st.st_mode):
        return "its message file is a folder"
    if not stat.S_ISREG(st.st_mode):
        return "its message file is not a regular file (a named pipe, device or socket)"
    return None


def inline_io(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """Run blocking file work at once (tests, the CLI)."""
    return defer.maybeDeferred(fn, *args)


class FileSystem:
    """The file operations the queue makes, one call per step.

    The blocking primitives (``link_or_copy``, ``write_file``, ``rename``,
    ``unlink``, ``fsync_file``, ``fsync_dir``) are what ``mailhub queue``
    and record updates use; ``sync_file``/``sync_dir`` return Deferreds
    and go through the hub's ``Syncer`` when there is one
    (``txmailhub.store.sync``), so that fsyncs never block the reactor and
    concurrent enqueues share their directory's.
    Tests substitute a subclass that "crashes" before the n-th step, to
    check that every crash point leaves a recoverable queue."""

    def __init__(self, syncer: Any = None, io: Callable[..., defer.Deferred] = inline_io) -> None:
        self.syncer = syncer
        self.io = io

    def link_or_copy(self, src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            self.copy(src, dst)

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to the new file ``dst`` and fsync it.  A copy that
        fails is removed: the caller cannot (it made nothing it knows of),
        and a client retrying against a full disk would otherwise leave a
        partial file per attempt until the next start."""
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with open(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 65536)
                    fout.flush()
                    os.fsync(fout.fileno())
            except BaseException:
                try:
                    os.unlink(dst)
                except OSError:
                    pass
                raise

    def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` (not yet durable: ``fsync_file``/``sync_file`` next)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def fsync_file(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fsync_dir(path)

    def sync_file(self, path: str) -> defer.Deferred:
        if self.syncer is not None:
            return self.syncer.sync_file(path)
        return self.io(self.fsync_file, path)

    def sync_dir(self, path: str) -> defer.Deferred:
        if self.syncer is not None:
            return self.syncer.sync_dir(path)
        return self.io(self.fsync_dir, path)


@implementer(IOutboundQueue)
class OutboundQueue:
    """The queue directory, shared by the running hub and ``mailhub queue``.

    ``clock`` provides ``seconds()``; ``io(fn, *args) -> Deferred`` runs
    blocking file work.  The runner registers itself with ``listen`` to be
    told when an entry is added or ``wake`` is called."""

    def __init__(
        self,
        directory: str,
        clock: Any,
        io: Callable[..., defer.Deferred] = inline_io,
        fs: FileSystem | None = None,
        syncer: Any = None,
        create: bool = True,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self._io = io
        self.fs = fs or FileSystem(syncer, io)
        self._listeners: list[Callable[[str | None], None]] = []
        # the attempt marker work of each queue id, one job at a time (see
        # ``_marker_work``)
        self._marker_locks: dict[str, defer.DeferredLock] = {}
        # ids handed out whose message is not stored yet: ``_new_id`` looks
        # for the message file, which the store makes only after a turn of
        # the reactor, so two entries of one millisecond could draw the same
        self._ids_in_flight: set[str] = set()
        if create and not os.path.isdir(directory):
            # acknowledged mail will live in it: its own name must be durable
            makedirs_durably(directory, mode=0o700)

    @property
    def exists(self) -> bool:
        """Whether the queue folder is there.  Raises ``OSError`` when that
        cannot be told (no permission on the way to it): an admin who runs
        ``mailhub queue list`` as the wrong user must hear so, not see an
        empty queue."""
        try:
            os.stat(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return os.path.isdir(self.directory)

    # --- paths -------------------------------------------------------------

    def record_path(self, queue_id: str) -> str:
        return os.path.join(self.directory, queue_id + ".json")

    def message_path(self, queue_id: str) -> str:
        return os.path.join(self.directory, queue_id + ".msg")

    def _tmp_path(self, queue_id: str) -> str:
        return os.path.join(self.directory, "." + queue_id + ".json.tmp")

    def attempt_path(self, queue_id: str) -> str:
        return inflight.marker_path(self.directory, queue_id)

    def has_room_for_outcome(self, queue_id: str) -> bool:
        """Whether the queue folder's file system has room now to write
        ``queue_id``'s record again (a new file, then renamed): an inode
        and at least ``RECORD_ROOM`` bytes, or twice the record's size.

        The runner asks before a delivery attempt.  An outcome that
        cannot be written is known to this process only: a restart before
        the disk has room again would send the recipients it delivered to
        another copy.  A file system that does not tell (no block or inode
        counts, or ``statvfs`` failing) has room; a quota (EDQUOT) is not
        seen here (the runner learns of it from a write refused so).
        Cheap: one ``statvfs`` and one ``stat``, no write."""
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return True
        if st.f_files and st.f_favail == 0:
            return False
        if not st.f_blocks:
            return True
        try:
            size = os.stat(self.record_path(queue_id)).st_size
        except OSError:
            size = 0
        return st.f_bavail * st.f_frsize >= max(RECORD_ROOM, 2 * size)

    # --- IOutboundQueue ----------------------------------------------------

    def enqueue(self, envelope: Envelope, message: SpooledMessage,
                delivered: tuple[Address, ...] = (),
                notice: str = bounce.DELIVERED) -> defer.Deferred:
        now = self.clock.seconds()
        queue_id = self._new_id(now)
        entry = dataclasses.replace(QueueEntry.new(queue_id, envelope, now),
                                    size=message.size, crlf_size=message.crlf_size)
        if delivered:
            entry = entry.with_recipients({
                r.address: dataclasses.replace(
                    r, state=DELIVERED, notice=notice, attempts=1, last_attempt=now,
                    last_reply=_IN_MAILBOX)
                for r in entry.recipients if r.address in delivered})
        self._ids_in_flight.add(queue_id)
        d = self._store_new(entry, message.path)

        def landed(result: Any) -> Any:
            self._ids_in_flight.discard(queue_id)
            return result

        d.addBoth(landed)

        def stored(entry: QueueEntry) -> str:
            # the sender is the client's (an MX client's, for a notice it
            # asked for): escaped, as every client text in the log is
            sender = loggable(envelope.sender_text, 1 << 20)
            what = (f"the {notice} notice to <{sender}> for "
                    + listed(delivered) if delivered else
                    f"from <{sender}> for {len(entry.recipients)} "
                    + plural(len(entry.recipients), "recipient", "recipients"))
            log.info("queued {queue_id}{message}: {what}", queue_id=queue_id, what=what,
                     sender=envelope.sender_text, message_id=envelope.message_id,
                     message=f" (message {envelope.message_id})" if envelope.message_id else "")
            self._notify(queue_id)
            return queue_id

        return d.addCallback(stored)

    def wake(self) -> None:
        self._notify(None)

    # --- the runner's side ---------------------------------------------------

    def listen(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(queue_id)`` for a new entry, ``listener(None)`` on wake."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[str | None], None]) -> None:
        """Stop calling ``listener`` (a runner that stops: one started again
        must not be called twice per entry, nor kept alive by the queue)."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def _notify(self, queue_id: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(queue_id)
            except Exception:
                log.failure("queue listener failed")

    def ids(self) -> list[str]:
        """The queue ids of every committed entry, oldest first."""
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(".json") and not name.startswith("."):
                qid = name[: -len(".json")]
                if valid_queue_id(qid):
                    out.append(qid)
        return sorted(out)

    def read(self, queue_id: str) -> QueueEntry | None:
        """The entry as it is on disk now, or ``None`` once it is gone."""
        if not valid_queue_id(queue_id):
            return None
        try:
            # never a plain open: one of a FIFO put in the queue folder
            # would wait for a writer for ever -- the hub's start
            # (``recover``), its runner and ``mailhub queue`` with it
            raw, _ = read_regular(self.record_path(queue_id))
        except FileNotFoundError:
            return None
        except (NotRegularFile, IsADirectoryError) as e:
            # no record the hub wrote: unusable, as one it cannot parse
            what = "a folder" if isinstance(e, IsADirectoryError) else str(e)
            raise RecordError(f"its record is {what}") from None
        return QueueEntry.from_json(raw, self.message_path(queue_id))

    def find_message(self, message_id: str) -> list[str]:
        """The ids of the entries holding the message the SMTP server
        called ``message_id`` (a message can be in several: its remote
        recipients, a local mailbox that failed, a success notice)."""
        found = []
        if not message_id:
            return found
        for qid in self.ids():
            try:
                entry = self.read(qid)
            except RecordError:
                continue
            if entry is not None and entry.envelope.message_id == message_id:
                found.append(qid)
        return found

    def recover(self) -> list[QueueEntry]:
        """Tidy up after a crash and return every entry (at startup).

        Removes half-written records and orphan messages (entries whose
        commit never happened), but not those of the entries this process
        is still storing (a restart within the process), which are not
        returned either: each is told to the listeners once stored; moves
        unreadable records, and records whose message is missing, to
        ``corrupt/`` with an error in the log."""
        with self._locked():
            names = set(os.listdir(self.directory))
            # what this process is storing (an enqueue under way, at a
            # restart within the process) is no crash's leftover: its
            # message and its record being written stay, for the commit
            storing = {*(qid + ".msg" for qid in self._ids_in_flight),
                       *(os.path.basename(self._tmp_path(qid)) for qid in self._ids_in_flight)}
            for name in names - storing:
                path = os.path.join(self.directory, name)
                if name.endswith((".json.tmp", ".7bit")):  # temporary files
                    self.fs.unlink(path)
                elif inflight.is_marker(name):
                    # an attempt marker a stopped or killed hub left: no
                    # attempt of this hub has begun yet (and none was
                    # read as one: nobody holds its lock)
                    self.fs.unlink(path)
                elif name.endswith(".msg") and name[:-4] + ".json" not in names:
                    log.warn("removing {name}: its record was never committed", name=name)
                    self.fs.unlink(path)
            entries = []
            for qid in self.ids():
                if qid in self._ids_in_flight:
                    # committed, its store not over (the folder's sync):
                    # not an entry until the store says so (``enqueue``
                    # tells the listeners), for a failure there takes it
                    # back, and the client sends it again
                    continue
                try:
                    entry = self.read(qid)
                    if entry is None:
                        continue
                    why = _message_problem(entry.message_path)
                    if why is not None:
                        raise RecordError(why)
                except (RecordError, OSError) as e:
                    if isinstance(e, OSError) and e.errno in _SHORTAGES:
                        # out of descriptors or memory says nothing of the
                        # entry: raised (the start fails), never set aside
                        raise
                    log.error("queue entry {queue_id} is unusable ({why}); moved to {where}",
                              queue_id=qid, why=str(e), where=CORRUPT)
                    self._set_aside(qid)
                    continue
                entries.append(entry)
            self.fs.fsync_dir(self.directory)
        return entries

    def update(
        self, queue_id: str, change: Callable[[QueueEntry], QueueEntry | None]
    ) -> defer.Deferred:
        """Read the entry, apply ``change`` and write the result durably.

        ``change`` returning ``None`` removes the entry; an entry that is
        ``finished`` after the change is removed too.  Fires with the new
        entry, or ``None`` when it is gone (removed now, or deleted by
        ``mailhub queue delete`` meanwhile)."""
        return self._io(self.update_now, queue_id, change)

    def update_now(
        self, queue_id: str, change: Callable[[QueueEntry], QueueEntry | None]
    ) -> QueueEntry | None:
        """``update``, blocking (for the CLI)."""
        with self._locked():
            entry = self.read(queue_id)
            if entry is None:
                return None
            new = change(entry)
            if new is None or new.finished:
                self._remove(queue_id)
                return None
            new = dataclasses.replace(new, id=queue_id, message_path=entry.message_path)
            self._write_record(new)
            return new

    # --- administration (used by ``mailhub queue`` and tests) ----------------

    def delete(self, queue_id: str) -> bool:
        """Drop an entry at once; ``False`` when there is no such entry.  A
        record that cannot be read is dropped too (the admin's way out)."""
        with self._locked():
            if not valid_queue_id(queue_id) or not os.path.exists(self.record_path(queue_id)):
                return False
            self._remove(queue_id)
        self.note_change()
        return True

    def set_held(self, queue_id: str, held: bool) -> QueueEntry | None:
        """Hold an entry, or release it: due at once, held or not.  A
        release is counted in the record (``releases``) so that a running
        hub delivering the entry right now can tell, when it records that
        attempt, that the admin wants the next one at once."""
        now = self.clock.seconds()

        def change(e: QueueEntry) -> QueueEntry:
            if held:
                return dataclasses.replace(e, held=True)
            return dataclasses.replace(e, held=False, next_attempt=min(e.next_attempt, now),
                                       releases=e.releases + 1)

        entry = self.update_now(queue_id, change)
        self.note_change()
        return entry

    # --- attempts under way (the runner marks them, ``mailhub queue`` reads) --

    def mark_attempt(self, queue_id: str, since: float) -> defer.Deferred:
        """Say, in ``.<id>.attempt``, that ``queue_id`` is being delivered
        since ``since``; fires with the marker's handle for
        ``unmark_attempt`` (``None`` when it could not be made: a full
        disk, no descriptor -- the delivery goes on unmarked).  Through
        ``io``: making a file waits for the disk, never on the reactor."""
        return self._marker_work(queue_id, inflight.mark, self.directory, queue_id, since)

    def unmark_attempt(self, queue_id: str, marked: defer.Deferred) -> defer.Deferred:
        """End what ``mark_attempt`` began (``marked`` is its Deferred):
        the marker is removed, and its lock released."""
        def unmark(fd: int | None) -> Any:
            return None if fd is None else self._marker_work(
                queue_id, inflight.unmark, self.directory, queue_id, fd)

        return marked.addCallback(unmark)

    def _marker_work(self, queue_id: str, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``io(fn, *args)`` once the marker work of ``queue_id`` begun
        before it is done.  ``io`` may run jobs at once in several threads:
        the end of one attempt (a look at the marker's name, then its
        unlink) and the start of the entry's next (a new marker renamed to
        that name, at once after a release during the attempt) would
        otherwise interleave, and the unlink take the new marker."""
        lock = self._marker_locks.get(queue_id)
        if lock is None:
            lock = self._marker_locks[queue_id] = defer.DeferredLock()

        def tidy(result: Any) -> Any:
            if (not lock.locked and not lock.waiting
                    and self._marker_locks.get(queue_id) is lock):
                del self._marker_locks[queue_id]
            return result

        return lock.run(self._io, fn, *args).addBoth(tidy)

    def attempt_since(self, queue_id: str) -> float | None:
        """When the attempt under way of ``queue_id`` began (UTC seconds),
        or ``None`` when none is: no marker, or one nobody holds locked
        (left by a hub that stopped or was killed meanwhile)."""
        if not valid_queue_id(queue_id):
            return None
        return inflight.since(self.directory, queue_id)

    def request_flush(self) -> None:
        self._touch(FLUSH)

    def note_change(self) -> None:
        self._touch(CHANGED)

    def take_flag(self, name: str) -> bool:
        """Whether the control file ``name`` was there (it is removed).

        Looked for before the unlink: the queue runner asks every few
        seconds, on the reactor thread, and an ``unlink`` -- even of a
        name that is not there -- waits for write access to the
        filesystem, which a frozen or hung disk never gives: every session
        of the hub stalled at the next tick.  A look is a read, answered
        from the cache, and the flag is almost always absent."""
        path = os.path.join(self.directory, name)
        if not os.path.lexists(path):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    # --- internals -------------------------------------------------------------

    def _new_id(self, now: float) -> str:
        while True:
            qid = f"{int(now * 1000):011X}{secrets.token_hex(3).upper()}"
            if qid not in self._ids_in_flight and not os.path.exists(self.message_path(qid)):
                return qid

    @defer.inlineCallbacks
    def _store_new(self, entry: QueueEntry, spool_path: str) -> Any:
        """Message first, record last; the record's rename is the commit."""
        msg = self.message_path(entry.id)
        tmp = self._tmp_path(entry.id)
        committed = linked = False
        try:
            yield self._io(self.fs.link_or_copy, spool_path, msg)
            linked = True  # (a link that failed made nothing of ours to remove)
            yield self.fs.sync_dir(self.directory)
            eight_bit = entry.envelope.body_8bit or (yield self._io(has_8bit, msg))
            entry = dataclasses.replace(entry, message_path=msg, eight_bit=eight_bit)
            yield self._io(self.fs.write_file, tmp, entry.to_json())
            yield self.fs.sync_file(tmp)
            yield self._io(self.fs.rename, tmp, self.record_path(entry.id))
            committed = True
            yield self.fs.sync_dir(self.directory)
        except Exception:
            # Leave nothing half-made behind (best effort).  After the commit
            # only the directory sync failed: the client hears 451 and sends
            # again, so the entry must go too, or it would be delivered twice.
            made = (tmp, msg) if not committed else (self.record_path(entry.id), msg)
            for path in made if linked else (tmp,):
                try:
                    self.fs.unlink(path)
                except Exception:
                    pass
            raise
        return entry

    def _write_record(self, entry: QueueEntry) -> None:
        tmp = self._tmp_path(entry.id)
        try:
            self.fs.write_file(tmp, entry.to_json())
            self.fs.fsync_file(tmp)
            self.fs.rename(tmp, self.record_path(entry.id))
        except BaseException:
            # the old record stands; the half-written new one must not stay
            # (a full disk would otherwise leave one per attempt)
            try:
                self.fs.unlink(tmp)
            except Exception:
                pass
            raise
        self.fs.fsync_dir(self.directory)

    def _remove(self, queue_id: str) -> None:
        self.fs.unlink(self.record_path(queue_id))
        self.fs.fsync_dir(self.directory)
        self.fs.unlink(self.message_path(queue_id))
        self.fs.fsync_dir(self.directory)

    def _set_aside(self, queue_id: str) -> None:
        """Move the entry's files to ``corrupt/``, durably there before the
        caller (``recover``) syncs the queue folder that lost them: never
        a moment after a crash where the admin's last copy is in neither."""
        where = os.path.join(self.directory, CORRUPT)
        makedirs_durably(where, mode=0o700)
        moved = False
        for path in (self.record_path(queue_id), self.message_path(queue_id)):
            if os.path.exists(path):
                os.replace(path, os.path.join(where, os.path.basename(path)))
                moved = True
        if moved:
            self.fs.fsync_dir(where)

    def _touch(self, name: str) -> None:
        os.close(os.open(os.path.join(self.directory, name),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

    @contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
