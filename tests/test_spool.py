"""txmailhub.store.spool: streaming to O_EXCL files, durability, recovery."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
import types

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmailhub.envelope import SpooledMessage
from txmailhub.errors import LocalError
from txmailhub.interfaces import ISpooler, ISpoolWriter
from txmailhub.store import spool as spool_module
from txmailhub.store.maildir import CRLFEncoder, crlf_size_of
from txmailhub.store.spool import Spooler
from txmailhub.testing import SyncerSpy


def open_spooler(case, *args, **kwargs) -> Spooler:
    """A ``Spooler`` that is closed when ``case`` ends.

    Each spooler holds its lock and up to ``precreate`` ready spool files
    open: 17 descriptors that, left to the garbage collector (which does
    not close raw descriptors), stayed open for the rest of the run --
    1,700 after this module, enough to push a later test's descriptors
    past select()'s limit of 1024."""
    spooler = Spooler(*args, **kwargs)
    case.addCleanup(spooler.close)
    return spooler


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.syncer = SyncerSpy(hold=True)
        self.spooler = open_spooler(self, self.dir, self.syncer)

    def test_interfaces(self):
        self.assertTrue(verifyObject(ISpooler, self.spooler))
        w = self.spooler.open()
        self.assertTrue(verifyObject(ISpoolWriter, w))
        w.abort()

    def test_streams_to_disk_and_fires_only_once_synced(self):
        w = self.spooler.open()
        w.write(b"Subject: x\n\n")
        # the bytes are in the file already, not held in memory
        with open(w.path, "rb") as f:
            self.assertEqual(f.read(), b"Subject: x\n\n")
        w.write(b"body\n")
        d = w.finish()
        self.assertNoResult(d)
        self.assertEqual(len(self.syncer.calls), 1)
        kind, target = self.syncer.calls[0]
        self.assertEqual(kind, "file")
        self.assertIsInstance(target, int)  # the open fd, kept open while syncing
        os.fstat(target)
        self.syncer.release()
        msg = self.successResultOf(d)
        self.assertEqual(msg, SpooledMessage(w.path, 17, 20))
        self.assertRaises(OSError, os.fstat, target)  # closed after the sync
        with open(msg.path, "rb") as f:
            self.assertEqual(f.read(), b"Subject: x\n\nbody\n")
        self.assertEqual(os.stat(msg.path).st_mode & 0o777, 0o600)
        self.spooler.discard(msg)
        self.assertFalse(os.path.exists(msg.path))
        self.spooler.discard(msg)  # already gone: fine

    def test_unique_exclusive_names(self):
        writers = [self.spooler.open() for _ in range(50)]
        self.assertEqual(len({w.path for w in writers}), 50)
        for w in writers:
            w.abort()
        self.spooler.close()
        self.assertEqual(os.listdir(self.dir), [])

    def test_abort_removes_the_file(self):
        w = self.spooler.open()
        w.write(b"partial")
        w.abort()
        self.assertFalse(os.path.exists(w.path))
        self.assertRaises(LocalError, w.write, b"more")
        self.assertRaises(LocalError, w.finish)
        w.abort()  # idempotent

    def test_abort_while_syncing(self):
        w = self.spooler.open()
        w.write(b"x\n")
        d = w.finish()
        w.abort()
        self.syncer.release()
        self.failureResultOf(d, LocalError)
        self.assertFalse(os.path.exists(w.path))

    def test_sync_failure_removes_the_file(self):
        syncer = SyncerSpy()
        spooler = open_spooler(self, self.dir, syncer)
        w = spooler.open()
        w.write(b"x\n")
        syncer.fail = {w._fd: OSError(5, "EIO")}
        self.failureResultOf(w.finish(), OSError)
        self.assertFalse(os.path.exists(w.path))

    def test_disk_full_is_reported_at_finish(self):
        w = self.spooler.open()
        w.write(b"first\n")

        def full(fd, data):
            raise OSError(28, "No space left on device")

        self.patch(spool_module.os, "write", full)
        w.write(b"second\n")
        w.write(b"third\n")  # ignored, no exception: the protocol keeps draining
        self.assertFalse(os.path.exists(w.path))
        f = self.failureResultOf(w.finish(), OSError)
        self.assertEqual(f.value.errno, 28)
        self.assertEqual(self.syncer.calls, [])

    def test_writes_after_a_disk_error_are_ignored_even_once_there_is_room(self):
        # the disk has room again (another process freed some): the message
        # is still refused with its first error, and no later write raises
        w = self.spooler.open()
        w.write(b"first\n")

        def full(fd, data):
            raise OSError(28, "No space left on device")

        patcher = self.patch(spool_module.os, "write", full)
        w.write(b"second\n")
        patcher.restore()
        w.write(b"third\n")
        self.assertFalse(os.path.exists(w.path))
        f = self.failureResultOf(w.finish(), OSError)
        self.assertEqual(f.value.errno, 28)

    def test_the_spool_folder_is_private(self):
        # message data (and the names that count them) are the hub's only
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)

    def test_short_writes_are_completed(self):
        real = os.write

        def short(fd, data):
            return real(fd, bytes(data[:3]))

        self.patch(spool_module.os, "write", short)
        w = self.spooler.open()
        w.write(b"0123456789\n")
        with open(w.path, "rb") as f:
            self.assertEqual(f.read(), b"0123456789\n")
        w.abort()

    def test_a_leftover_with_our_next_name_is_left_alone(self):
        # an earlier process with our pid left a file of the name we would
        # make next: O_EXCL, and the name after it
        self.patch(spool_module.os, "urandom", lambda n: b"\0" * n)
        spooler = open_spooler(self, self.dir + "-2", SyncerSpy(), recover=False, precreate=0)
        leftover = os.path.join(spooler.spool_dir, f"{os.getpid()}-1-00000000")
        with open(leftover, "wb") as f:
            f.write(b"old data\n")
        w = spooler.open()
        self.assertNotEqual(w.path, leftover)
        w.write(b"new\n")
        w.abort()
        with open(leftover, "rb") as f:
            self.assertEqual(f.read(), b"old data\n")

    def test_discard_refuses_paths_outside_the_spool(self):
        self.assertRaises(LocalError, self.spooler.discard, SpooledMessage("/etc/passwd", 1, 1))

    def test_room_is_what_an_unprivileged_writer_may_still_write(self):
        # the blocks kept for root (f_bfree - f_bavail) are not ours: a
        # fixed answer, so that other writers on the machine cannot move it
        asked: list[str] = []
        real = os.statvfs(self.dir)

        def statvfs(path):
            asked.append(path)
            return os.statvfs_result((4096, 1024, 1000, 300, 250, 0, 0, 0, 0, 255))

        self.patch(spool_module.os, "statvfs", statvfs)
        self.assertEqual(self.spooler.room(), 250 * 1024)  # f_bavail in f_frsize units
        self.assertEqual(asked, [self.spooler.spool_dir])
        # and the real filesystem's answer is a number, below its size
        self.patch(spool_module.os, "statvfs", os.statvfs)
        room = self.spooler.room()
        self.assertIsInstance(room, int)
        self.assertLess(room, real.f_blocks * real.f_frsize)

    def test_room_is_unknown_when_the_filesystem_cannot_say(self):
        def broken(path):
            raise OSError(38, "Function not implemented")

        self.patch(spool_module.os, "statvfs", broken)
        self.assertIsNone(self.spooler.room())

    def test_room_is_unknown_on_a_filesystem_without_block_counts(self):
        # ramfs and some FUSE filesystems: zero blocks in all, zero free --
        # not a full disk (every MAIL SIZE= would be refused)
        real = os.statvfs(self.dir)
        blank = os.statvfs_result((real.f_bsize, real.f_frsize, 0, 0, 0, 0, 0, 0, 0, 255))
        self.patch(spool_module.os, "statvfs", lambda path: blank)
        self.assertIsNone(self.spooler.room())

    def test_sizes_across_chunk_boundaries(self):
        syncer = SyncerSpy()
        spooler = open_spooler(self, self.dir, syncer)
        w = spooler.open()
        for chunk in (b"a\r", b"\nb\n", b"\r\n", b"c"):
            w.write(chunk)
        msg = self.successResultOf(w.finish())
        data = b"a\r\nb\n\r\nc"
        self.assertEqual(msg.size, len(data))
        self.assertEqual(msg.crlf_size, crlf_size_of(data))
        self.assertEqual(msg.crlf_size, len(data) + 1 + 2)


class HeldWorkers(SyncerSpy):
    """Worker threads that are busy (behind a slow disk's fsyncs): each job
    waits in ``jobs`` as ``(deferred, f, args)`` until the test runs it and
    fires its Deferred."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list = []

    def call(self, f, *args):
        from twisted.internet import defer

        self.calls_run += 1
        d = defer.Deferred()
        self.jobs.append((d, f, args))
        return d


class PrecreateTests(SynchronousTestCase):
    """Inodes made ahead on the worker threads, so open() does not stall."""

    def setUp(self):
        self.dir = self.mktemp()
        self.syncer = SyncerSpy()

    def store_one_line(self, spooler, w):
        """Write, finish and read back one message; then discard it."""
        w.write(b"x\n")
        msg = self.successResultOf(w.finish())
        with open(msg.path, "rb") as f:
            self.assertEqual(f.read(), b"x\n")
        spooler.discard(msg)

    def test_open_takes_files_made_ahead(self):
        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        w1 = spooler.open()  # none ready: made inline, then a refill of 4
        self.assertEqual(self.syncer.calls_run, 1)
        self.assertEqual(len(os.listdir(self.dir)), 5)
        ready = {p for p, _ in spooler._ready}
        w2 = spooler.open()
        self.assertIn(w2.path, ready)
        self.assertEqual(self.syncer.calls_run, 1)  # 3 left: above the low mark
        w3 = spooler.open()  # 2 left: at the low mark, refilled to 4
        self.assertEqual(self.syncer.calls_run, 2)
        self.assertEqual(len(spooler._ready), 4)
        w4 = spooler.open()
        for w in (w1, w2, w3, w4):
            self.assertEqual(os.stat(w.path).st_mode & 0o777, 0o600)
            self.store_one_line(spooler, w)
        spooler.close()
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(self.syncer.calls_run, 2)

    def test_open_after_close_makes_nothing_until_claimed_again(self):
        # close() is the hub's stop giving the state directory up, and
        # another hub may own it next: a late open() (an embedding
        # application keeping the components, a callback firing after the
        # stop) used to make a spool file in it anyway
        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        self.store_one_line(spooler, spooler.open())
        spooler.close()
        self.assertEqual(os.listdir(self.dir), [])
        with self.assertRaises(LocalError) as caught:
            spooler.open()
        self.assertIn("the hub has stopped", str(caught.exception))
        self.assertEqual(os.listdir(self.dir), [])  # nothing made, inline or ahead
        self.assertEqual(self.syncer.calls_run, 1)
        # started again (a restart): usable again
        self.assertTrue(spooler.claim())
        self.store_one_line(spooler, spooler.open())

    def test_refill_failure_falls_back_to_inline_creation(self):
        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)

        def broken(count):
            raise OSError(28, "No space left on device")

        self.patch(spooler, "_create_many", broken)
        w = spooler.open()
        self.assertFalse(spooler._refilling)
        self.assertEqual(len(spooler._ready), 0)
        w.abort()

    def test_partial_refill_keeps_what_was_made(self):
        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        real = spooler._create
        made = []

        def flaky():
            if len(made) == 2:
                raise OSError(24, "Too many open files")
            made.append(1)
            return real()

        self.patch(spooler, "_create", flaky)
        made_ahead = spooler._create_many(4)
        spool_module._drop(made_ahead)  # not handed to the spooler: ours to close
        self.assertEqual(len(made_ahead), 2)

    def test_a_partial_refill_of_one_file_is_logged_in_the_singular(self):
        from twisted.logger import formatEvent

        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        real = spooler._create
        made = []

        def flaky():
            if made:
                raise OSError(24, "Too many open files")
            made.append(1)
            return real()

        self.patch(spooler, "_create", flaky)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        made_ahead = spooler._create_many(4)
        spool_module._drop(made_ahead)  # not handed to the spooler: ours to close
        self.assertEqual([formatEvent(e) for e in observer
                          if "ahead" in e.get("log_format", "")],
                         ["could create only 1 spool file ahead: [Errno 24] Too many open files"])

    def test_no_call_no_precreation(self):
        class Plain:
            def sync_file(self, target):
                from twisted.internet import defer

                return defer.succeed(None)

        spooler = open_spooler(self, self.dir, Plain())
        spooler.open().abort()
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_spool_folder_removed_while_running_is_made_again(self):
        # Without this, every message got 451 until a restart.  The files
        # made ahead went with the old folder: the messages written to them
        # are lost (451) until the next refill finds the folder gone, and no
        # more than that.
        import shutil

        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        spooler.open().abort()
        self.assertEqual(len(spooler._ready), 4)
        shutil.rmtree(self.dir)
        lost = 0
        while True:
            w = spooler.open()
            w.write(b"x\n")
            msg = self.successResultOf(w.finish())
            if os.path.exists(msg.path):
                break
            lost += 1
        self.assertLessEqual(lost, 4 // 2)
        with open(msg.path, "rb") as f:
            self.assertEqual(f.read(), b"x\n")
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)
        # the lost files' descriptors are closed, not leaked
        held = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{n}")]
        self.assertEqual([p for p in held if p.startswith(os.path.abspath(self.dir))
                          and p.endswith("(deleted)")], [])
        spooler.discard(msg)
        shutil.rmtree(self.dir)
        # nothing made ahead: open() itself finds the folder gone
        spool_module._drop(list(spooler._ready))
        spooler._ready.clear()
        w = spooler.open()
        self.assertTrue(os.path.exists(w.path))
        w.abort()
        spooler.close()

    def test_files_a_refill_made_before_the_folder_went_are_not_kept_ready(self):
        # The folder removed while a worker makes its batch (on a slow
        # disk, 16 creations take a while): the creation that finds it gone
        # makes it again, and the files made before it went with the old
        # one.  They were kept ready with the rest of the batch: each given
        # to a message as an unlinked file, a 451.
        import shutil

        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0)
        real = spooler._create
        made = []

        def create():
            if len(made) == 3:  # one made inline, two by the worker: the folder goes
                shutil.rmtree(self.dir)
            made.append(real())
            return made[-1]

        self.patch(spooler, "_create", create)
        spooler.open().abort()  # made inline, then a refill of 4 on the worker
        self.assertEqual(self.syncer.calls_run, 1)
        ready = [path for path, _ in spooler._ready]
        self.assertEqual([p for p in ready if not os.path.exists(p)], [])
        # their descriptors are closed, not leaked
        held = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{n}")]
        self.assertEqual([p for p in held if p.startswith(os.path.abspath(self.dir))
                          and p.endswith("(deleted)")], [])

    def test_a_removed_folder_costs_at_most_the_files_ready_with_a_refill_held_up(self):
        # smtp.rst said "at most 8" (half of ``precreate``, when a refill
        # starts and notices): with the worker threads busy (a slow disk's
        # fsyncs ahead of the refill) every file then ready was given out
        # before it ran.  At most those, and the folder is made again.
        import shutil

        workers = HeldWorkers()
        held = workers.jobs
        spooler = open_spooler(self, self.dir, workers, precreate=4, ahead_after=0)
        spooler.open().abort()
        d, f, args = held.pop()
        d.callback(f(*args))
        self.assertEqual(len(spooler._ready), 4)
        shutil.rmtree(self.dir)
        lost = 0
        for _ in range(6):
            w = spooler.open()
            lost += not os.path.exists(w.path)
            w.abort()
        self.assertEqual(lost, 4)  # more than half: the refill had not run
        d, f, args = held.pop()
        d.callback(f(*args))
        w = spooler.open()
        self.assertTrue(os.path.exists(w.path))
        w.abort()

    def test_a_batch_made_before_the_folder_went_is_not_kept_when_it_comes_back_late(self):
        # The worker made its batch in the folder; the folder was removed
        # before the batch came back to the reactor thread, and a message's
        # open() made the folder again meanwhile.  The batch's own check
        # saw nothing (no creation of its failed) and it was kept ready:
        # every file unlinked, a 451 for each message given one.
        import shutil

        workers = HeldWorkers()
        held = workers.jobs
        spooler = open_spooler(self, self.dir, workers, precreate=4, ahead_after=0)
        spooler.open().abort()
        d, f, args = held.pop()
        result = f(*args)  # the batch made, in the folder, not yet back
        shutil.rmtree(self.dir)
        w = spooler.open()  # finds the folder gone and makes it again
        self.assertTrue(os.path.exists(w.path))
        w.abort()
        d.callback(result)
        ready = [path for path, _ in spooler._ready]
        self.assertEqual([p for p in ready if not os.path.exists(p)], [])
        lost = 0
        for _ in range(4):
            w = spooler.open()
            lost += not os.path.exists(w.path)
            w.abort()
        self.assertEqual(lost, 0)
        spooler.close()

    def test_precreate_zero_hands_no_empty_job_to_the_workers(self):
        # nothing to make ahead: each message's open() still sent a job
        # making 0 files to a worker thread (a GIL hand-over per message,
        # and behind a slow disk's fsyncs)
        spooler = open_spooler(self, self.dir, self.syncer, precreate=0, ahead_after=0)
        for _ in range(3):
            spooler.open().abort()
        self.assertEqual(self.syncer.calls_run, 0)

    def test_claiming_keeps_the_files_made_ahead(self):
        # recover=False, claimed later (the hub's service): files made
        # ahead before the claim are this spooler's, not a crash's leftovers
        spooler = open_spooler(self, self.dir, self.syncer, precreate=4, ahead_after=0,
                               recover=False)
        spooler.open().abort()  # makes 4 ahead
        ready = [p for p, _ in spooler._ready]
        self.assertEqual(len(ready), 4)
        self.assertTrue(spooler.claim())
        for path in ready:
            self.assertTrue(os.path.exists(path), path)
        w = spooler.open()
        self.assertIn(w.path, ready)
        self.store_one_line(spooler, w)
        spooler.close()

    def test_a_refill_that_ends_after_a_stop_and_a_new_claim_is_dropped(self):
        # The worker made its files, then the hub stopped (close) and
        # started again (claim: recovery removes them, none being ready)
        # before the refill's result came: they went to the ready files,
        # each unlinked -- a 451 for every message given one.
        workers = HeldWorkers()
        spooler = open_spooler(self, self.dir, workers, precreate=4, ahead_after=0,
                               recover=False)
        self.assertTrue(spooler.claim())
        spooler.open().abort()  # the refill runs
        self.assertEqual(len(workers.jobs), 1)
        d, f, args = workers.jobs.pop()
        result = f(*args)  # the work done, its result not yet back
        spooler.close()
        self.assertTrue(spooler.claim())  # recovery removes the worker's 4
        d.callback(result)
        for path, _ in spooler._ready:
            self.assertTrue(os.path.exists(path), path)
        w = spooler.open()
        self.assertTrue(os.path.exists(w.path))
        w.abort()

    def test_a_crash_leaves_ready_files_to_recovery(self):
        spooler = Spooler(self.dir, self.syncer, precreate=4, ahead_after=0)
        spooler.open().abort()
        self.assertEqual(len(os.listdir(self.dir)), 4)
        for _, fd in spooler._ready:
            os.close(fd)
        os.close(spooler._lock_fd)  # the crash: the kernel drops the lock
        open_spooler(self, self.dir, self.syncer)
        self.assertEqual(os.listdir(self.dir), [])


class MadeAheadWhenSlowTests(SynchronousTestCase):
    """By default a spool file is created on the reactor thread (cheaper:
    no GIL hand-over with a worker per file); a creation that takes longer
    than ``ahead_after`` -- a busy or stuck journal -- turns making files
    ahead on the worker threads on, for ``AHEAD_FOR`` seconds after the
    last creation that slow."""

    def setUp(self):
        self.dir = self.mktemp()
        self.syncer = SyncerSpy()
        self.now = 1000.0
        self.create_takes = 0.0001  # seconds each creation takes, by our clock
        self.patch(spool_module, "_clock", lambda: self.now)
        self.spooler = open_spooler(self, self.dir, self.syncer, precreate=4)
        real = self.spooler._create

        def create():
            self.now += self.create_takes
            return real()

        self.patch(self.spooler, "_create", create)

    def open_and_abort(self):
        w = self.spooler.open()
        w.abort()
        return w

    def test_fast_creation_makes_nothing_ahead(self):
        for _ in range(10):
            self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, 0)
        self.assertEqual(len(self.spooler._ready), 0)
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_slow_creation_turns_making_ahead_on_then_it_lapses(self):
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, 0)
        self.create_takes = 0.05  # 50 ms: the journal is busy
        self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, 1)  # made ahead on a worker
        self.assertEqual(len(self.spooler._ready), 4)
        self.assertEqual(
            [formatEvent(e) for e in observer if "ahead" in e.get("log_format", "")],
            ["creating a spool file took 50.0 ms (a busy or slow disk): making them ahead "
             "on worker threads for the next 10 minutes"])
        # the workers' creations are as slow: the time is renewed, the ready
        # files are taken and made again, and the log says it once
        for _ in range(6):
            self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, 4)  # at 2 left each second open
        self.assertEqual(len([e for e in observer if "ahead" in e.get("log_format", "")]), 1)
        # the disk is well again: once AHEAD_FOR has passed since the last
        # slow creation, the files left ready are removed and no more made
        self.create_takes = 0.0001
        self.now += spool_module.AHEAD_FOR
        calls = self.syncer.calls_run
        for _ in range(8):
            self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, calls)
        self.assertEqual(len(self.spooler._ready), 0)
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_worker_slowed_only_by_the_interpreter_lock_lets_it_lapse(self):
        # A worker takes the interpreter's lock back after each creation,
        # from a reactor thread that may hold it for the switch interval:
        # with the main thread busy that was 3-5.5 ms a file on tmpfs
        # (0.015 ms idle).  Counted as the disk's, it renewed making files
        # ahead on a busy hub for as long as it stayed busy.
        gil_wait = sys.getswitchinterval()
        self.assertGreater(gil_wait, spool_module.SLOW_CREATE)
        real_many = self.spooler._create_many

        def on_worker(count):
            inline, self.create_takes = self.create_takes, 0.0001 + gil_wait
            try:
                return real_many(count)
            finally:
                self.create_takes = inline

        self.patch(self.spooler, "_create_many", on_worker)
        self.create_takes = 0.05
        self.open_and_abort()  # a slow disk: making ahead is on
        self.create_takes = 0.0001
        self.now += spool_module.AHEAD_FOR - 1
        for _ in range(4):  # ready files taken, made again on the worker
            self.open_and_abort()
        self.assertGreater(self.syncer.calls_run, 1)
        self.now += 2  # AHEAD_FOR after the slow creation, the disk fast since
        calls = self.syncer.calls_run
        for _ in range(8):
            self.open_and_abort()
        self.assertEqual(self.syncer.calls_run, calls)
        self.assertEqual(len(self.spooler._ready), 0)

    def test_a_worker_slower_than_the_lock_explains_renews_it(self):
        real_many = self.spooler._create_many

        def on_worker(count):
            inline, self.create_takes = self.create_takes, 0.05
            try:
                return real_many(count)
            finally:
                self.create_takes = inline

        self.patch(self.spooler, "_create_many", on_worker)
        self.create_takes = 0.05
        self.open_and_abort()
        self.create_takes = 0.0001
        self.now += spool_module.AHEAD_FOR - 1
        for _ in range(4):
            self.open_and_abort()
        self.now += 2
        calls = self.syncer.calls_run
        for _ in range(8):
            self.open_and_abort()
        self.assertGreater(self.syncer.calls_run, calls)  # still on: the disk is slow

    def test_files_left_ready_after_it_lapses_are_not_given_out_of_a_removed_folder(self):
        # smtp.rst: a spool folder removed while the hub runs costs at most
        # the messages given the files then ready, as a refill then
        # notices.  Once making ahead had lapsed no
        # refill came: every file left ready (up to 16) went to a message,
        # each unlinked with its folder -- a 451 for each.
        import shutil

        self.create_takes = 0.05
        self.open_and_abort()
        self.assertEqual(len(self.spooler._ready), 4)
        self.create_takes = 0.0001
        self.now += spool_module.AHEAD_FOR + 1  # the disk fast since: it lapses
        shutil.rmtree(self.dir)
        lost = 0
        for _ in range(4):
            w = self.spooler.open()
            lost += not os.path.exists(w.path)
            w.abort()
        self.assertLessEqual(lost, self.spooler.precreate // 2)

    def test_ahead_after_zero_makes_ahead_always(self):
        spooler = open_spooler(self, self.dir + "-2", SyncerSpy(), precreate=4, ahead_after=0)
        spooler.open().abort()
        self.assertEqual(len(spooler._ready), 4)


class RecoveryTests(SynchronousTestCase):
    def test_leftovers_of_a_crash_are_deleted(self):
        d = self.mktemp()
        os.makedirs(d)
        # whatever pid a name carries -- a live process (twistd's parent
        # before the daemon fork), ours, none: nobody holds the lock
        for name in (f"{os.getppid()}-1-aaaa", f"{os.getpid()}-7-bbbb", "junk"):
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"partial")
        s = open_spooler(self, d, SyncerSpy())
        self.assertEqual(os.listdir(d), [])
        s.close()

    def test_the_log_tells_files_made_ahead_from_messages_cut_short(self):
        # After a kill -9 the spool holds its empty files made ahead
        # (``precreate``): no message was in them, and the log must not
        # count them as unacknowledged messages, which alarms for nothing.
        d = self.mktemp()
        os.makedirs(d)
        for name in ("1-1-aaaa", "1-2-aaaa", "1-3-aaaa"):
            open(os.path.join(d, name), "wb").close()
        with open(os.path.join(d, "1-4-aaaa"), "wb") as f:
            f.write(b"partial")
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        s = open_spooler(self, d, SyncerSpy(), precreate=0)
        from twisted.logger import formatEvent
        lines = [formatEvent(e) for e in observer]
        self.assertEqual(os.listdir(d), [])
        self.assertIn("removed 1 unacknowledged spool file left by a crash", lines)
        self.assertIn("removed 3 empty spool files made ahead (no message was in them)",
                      lines)
        s.close()

    def test_the_log_counts_one_spool_file_in_the_singular(self):
        # "removed 1 empty spool files" read as a slip; the singular keeps
        # the words to grep for ("spool file") in both forms
        from twisted.logger import formatEvent

        d = self.mktemp()
        os.makedirs(d)
        open(os.path.join(d, "1-1-aaaa"), "wb").close()
        for name in ("1-2-aaaa", "1-3-aaaa"):
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"partial")
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        s = open_spooler(self, d, SyncerSpy(), precreate=0)
        lines = [formatEvent(e) for e in observer]
        self.assertIn("removed 2 unacknowledged spool files left by a crash", lines)
        self.assertIn("removed 1 empty spool file made ahead (no message was in them)", lines)
        s.close()

    def test_a_running_hubs_spool_is_left_alone(self):
        d = self.mktemp()
        os.makedirs(d)
        running = open_spooler(self, d, SyncerSpy(), precreate=0)
        w = running.open()
        w.write(b"in flight")
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        second = open_spooler(self, d, SyncerSpy())  # a second hub on the same state_dir
        self.assertEqual(os.listdir(d), [os.path.basename(w.path)])
        self.assertIn("in use by another running hub", observer[0]["log_format"])
        second.close()
        running.close()  # the lock goes with it: the next start may clean up
        third = open_spooler(self, d, SyncerSpy())
        self.assertEqual(os.listdir(d), [])
        third.close()
        w.abort()  # its file went with the recovery: this closes its descriptor

    def test_the_lock_survives_a_fork(self):
        # twistd daemonises after the hub is built: the child must keep the
        # lock when the parent exits.
        d = self.mktemp()
        os.makedirs(d)
        code = (
            "import os, sys, time\n"
            "from txmailhub.store.spool import Spooler\n"
            "from txmailhub.testing import SyncerSpy\n"
            f"s = Spooler({d!r}, SyncerSpy())\n"
            "open(os.path.join(s.spool_dir, 'x'), 'w').close()\n"
            "if os.fork():\n"
            "    os._exit(0)\n"  # the parent goes, as twistd's does
            "print(os.getpid(), flush=True)\n"
            "time.sleep(30)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        daemon = int(child.stdout.readline())
        try:
            child.wait()
            Spooler(d, SyncerSpy()).close()
            self.assertEqual(os.listdir(d), ["x"])  # the daemon still holds it
        finally:
            os.kill(daemon, signal.SIGKILL)
            child.stdout.close()
        for _ in range(500):  # killed: the kernel drops the lock
            s = Spooler(d, SyncerSpy())
            s.close()
            if not os.listdir(d):
                break
            time.sleep(0.01)
        self.assertEqual(os.listdir(d), [])

    def test_a_spool_that_is_a_link_is_not_cleaned_through_it(self):
        # twistd started as root recovers before it switches to --uid, in
        # a state_dir that user owns: a link put in the spool's place must
        # not have root remove every file of the folder it names
        base = os.path.abspath(self.mktemp())
        elsewhere = os.path.join(base, "etc")
        os.makedirs(elsewhere)
        for name in ("passwd", f"{os.getpid()}-1-aaaa"):
            with open(os.path.join(elsewhere, name), "wb") as f:
                f.write(b"precious")
        state = os.path.join(base, "state")
        os.makedirs(state)
        os.symlink(elsewhere, os.path.join(state, "spool"))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        s = open_spooler(self, os.path.join(state, "spool"), SyncerSpy())
        self.assertEqual(sorted(os.listdir(elsewhere)), sorted(["passwd", f"{os.getpid()}-1-aaaa"]))
        self.assertEqual(s.recover(), 0)
        self.assertEqual(len(os.listdir(elsewhere)), 2)
        self.assertTrue(any(e.get("what") == "a symbolic link" and "is {what}" in e["log_format"]
                            for e in observer))

    def test_a_lock_that_is_a_link_is_refused_and_not_followed(self):
        # the same moment, the same owner: a spool.lock linking to a file
        # root has not got (an empty /etc/nologin locks every other user
        # out) is neither made nor opened; the start says why and stops
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        target = os.path.join(base, "nologin")
        os.symlink(target, os.path.join(base, "spool.lock"))
        for recover in (True, False):
            with self.assertRaises(OSError) as cm:
                open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=recover)
            self.assertIn("not followed", str(cm.exception))
            self.assertEqual(cm.exception.filename, os.path.join(base, "spool.lock"))
            self.assertFalse(os.path.lexists(target))

    def test_a_lock_that_is_no_regular_file_is_refused(self):
        base = self.mktemp()
        os.makedirs(base)
        os.mkfifo(os.path.join(base, "spool.lock"))
        with self.assertRaises(OSError) as cm:
            open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=False)
        self.assertIn("not a regular file", str(cm.exception))

    def test_a_lock_that_is_a_hard_link_is_refused(self):
        # twistd started as root opens spool.lock and keeps
        # the descriptor (it holds the lock) after it switches user: a
        # hard link the hub's user made to a root file must not be it
        base = self.mktemp()
        os.makedirs(base)
        victim = os.path.join(base, "shadow")
        with open(victim, "w") as f:
            f.write("root's\n")
        os.link(victim, os.path.join(base, "spool.lock"))
        with self.assertRaises(OSError) as cm:
            open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=False)
        self.assertIn("not a regular file with one name", str(cm.exception))
        with open(victim) as f:
            self.assertEqual(f.read(), "root's\n")

    def test_the_lock_is_held_on_a_read_only_descriptor(self):
        # the lock is held for as long as the hub runs: a descriptor open
        # for writing would keep the admin's ``mount -o remount,ro`` of the
        # state directory's file system (a failing disk, a full one being
        # moved) refused with EBUSY.  ``flock`` needs no write access.
        base = self.mktemp()
        os.makedirs(base)
        for recover in (True, False):
            s = open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=recover)
            self.assertTrue(s.claim())
            flags = fcntl.fcntl(s._lock_fd, fcntl.F_GETFL)
            self.assertEqual(flags & os.O_ACCMODE, os.O_RDONLY)
            s.close()

    def test_the_lock_is_taken_where_an_exclusive_flock_needs_a_write_descriptor(self):
        # NFS makes an ``flock`` a POSIX lock, and refuses an exclusive one
        # on a descriptor not open for writing (EBADF): a hub with its
        # state directory there must still start, and still be alone
        def nfs_flock(fd: int, op: int) -> None:
            if op & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                raise OSError(errno.EBADF, "Bad file descriptor")
            fcntl.flock(fd, op)

        self.patch(spool_module, "fcntl", types.SimpleNamespace(
            flock=nfs_flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))
        base = self.mktemp()
        os.makedirs(base)
        first = open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=False)
        self.assertTrue(first.available())
        self.assertTrue(first.claim())
        flags = fcntl.fcntl(first._lock_fd, fcntl.F_GETFL)
        self.assertEqual(flags & os.O_ACCMODE, os.O_RDWR)
        second = open_spooler(self, os.path.join(base, "spool"), SyncerSpy(), recover=False)
        self.assertFalse(second.available())
        self.assertFalse(second.claim())
        first.close()
        self.assertTrue(second.claim())
        second.close()

    def test_recover_false_keeps_files(self):
        d = self.mktemp()
        os.makedirs(d)
        open(os.path.join(d, "junk"), "wb").close()
        s = open_spooler(self, d, SyncerSpy(), recover=False)
        self.assertEqual(os.listdir(d), ["junk"])
        self.assertEqual(s.recover(), 1)


class CRLFRuleTests(SynchronousTestCase):
    """The size the spool reports is the byte count CRLFEncoder produces."""

    @given(st.lists(st.binary(max_size=20).map(
        lambda b: b.replace(b"x", b"\n").replace(b"y", b"\r")), max_size=8))
    def test_writer_and_encoder_agree(self, chunks):
        d = self.mktemp()
        spooler = Spooler(d, SyncerSpy())
        try:
            self.check_writer_and_encoder(spooler, chunks)
        finally:
            spooler.close()  # per example: addCleanup would wait for all 100

    def check_writer_and_encoder(self, spooler, chunks):
        w = spooler.open()
        enc = CRLFEncoder()
        out = b""
        for c in chunks:
            w.write(c)
            out += enc.encode(c)
        out += enc.finish()
        msg = self.successResultOf(w.finish())
        data = b"".join(chunks)
        self.assertEqual(msg.size, len(data))
        self.assertEqual(msg.crlf_size, len(out))
        self.assertEqual(crlf_size_of(data), len(out))
        # every LF on the wire is preceded by CR, and the text is unchanged
        self.assertEqual(out.count(b"\n"), out.count(b"\r\n"))
        expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if data and not data.endswith(b"\n"):
            expected += b"\r\n"
        self.assertEqual(out, expected)
        spooler.discard(msg)


class FinishThenTests(SynchronousTestCase):
    """``finish_then``: the spool fsync and a publication in one request."""

    def setUp(self):
        self.dir = self.mktemp()
        self.syncer = SyncerSpy(hold=True)
        self.spooler = open_spooler(self, self.dir, self.syncer)

    def test_publishes_once_durable_and_fires_with_message_and_result(self):
        seen = []

        class Pub:
            def run(self):
                seen.append("run")
                return ["/some/new"]

            def settle(self, failed):
                seen.append(("settle", failed))
                return "published"

        w = self.spooler.open()
        w.write(b"x\n")
        d = w.finish_then(lambda message: (seen.append(message), Pub())[1])
        self.assertEqual(seen, [SpooledMessage(w.path, 2, 3)])  # made at once
        self.assertNoResult(d)
        (kind, fd), = self.syncer.calls
        self.assertEqual(kind, "file")
        self.syncer.release()
        message, result = self.successResultOf(d)
        self.assertEqual((message, result), (SpooledMessage(w.path, 2, 3), "published"))
        self.assertEqual(seen[1:], ["run", ("settle", {})])
        self.assertRaises(OSError, os.fstat, fd)  # closed
        self.assertTrue(os.path.exists(w.path))  # the caller's now

    def test_abort_after_finish_then_leaves_the_copies_alone(self):
        class Pub:
            def run(self):
                return []

            def settle(self, failed):
                return "ok"

        w = self.spooler.open()
        w.write(b"x\n")
        d = w.finish_then(lambda message: Pub())
        w.abort()
        self.syncer.release()
        self.assertEqual(self.successResultOf(d)[1], "ok")
        self.assertTrue(os.path.exists(w.path))

    def test_a_publication_that_cannot_be_made_removes_the_file(self):
        w = self.spooler.open()
        w.write(b"x\n")

        def broken(message):
            raise LocalError("no publication")

        self.failureResultOf(w.finish_then(broken), LocalError)
        self.assertFalse(os.path.exists(w.path))
        self.assertEqual(self.syncer.calls, [])

    def test_a_failed_fsync_removes_the_file_and_publishes_nothing(self):
        self.syncer.hold = False
        self.syncer.fail_kind["file"] = OSError(5, "I/O error")
        ran = []

        class Pub:
            def run(self):
                ran.append(1)
                return []

            def settle(self, failed):
                return None

        w = self.spooler.open()
        w.write(b"x\n")
        self.failureResultOf(w.finish_then(lambda m: Pub()), OSError)
        self.assertFalse(os.path.exists(w.path))
        self.assertEqual(ran, [])
