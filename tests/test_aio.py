"""txmailhub.store.aio: fsync as kernel requests, results on the reactor."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmailhub.errors import LocalError
from txmailhub.store import aio, sync
from txmailhub.store.aio import AioSyncs, KernelRing
from txmailhub.store.sync import Syncer


class FakeRing:
    """A ring whose requests complete only when the test says so."""

    def __init__(self, room=100):
        self.room = room
        self.submitted = []  # (fd, key), in order
        self.refuse = None  # an OSError for the next submit
        self._done = []
        self.closed = False
        self.abandoned = False

    def fileno(self):
        return 99

    def submit(self, fd, key):
        if self.refuse is not None:
            e, self.refuse = self.refuse, None
            raise e
        if len(self.in_flight()) >= self.room:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.submitted.append((fd, key))

    def in_flight(self):
        done = {k for k, _ in self._done}
        return [(fd, k) for fd, k in self.submitted if k not in done]

    def complete(self, index=0, res=0):
        """Complete the ``index``-th request still in flight."""
        fd, key = self.in_flight()[index]
        self._done.append((key, res))
        return fd

    def reap(self):
        done, self._done = self._done, []
        # completed requests leave the ring for good
        keys = {k for k, _ in done}
        self.submitted = [(fd, k) for fd, k in self.submitted if k not in keys]
        return done

    def close(self):
        self.closed = True

    def abandon(self):
        self.abandoned = True


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.readers = []

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)


class Publication:
    def __init__(self, calls, dirs=(), run_error=None, settle_error=None):
        self.calls = calls
        self.dirs = list(dirs)
        self.run_error = run_error
        self.settle_error = settle_error

    def run(self):
        self.calls.append("run")
        if self.run_error:
            raise self.run_error
        return self.dirs

    def settle(self, failed):
        self.calls.append(("settle", dict(failed)))
        if self.settle_error:
            raise self.settle_error
        return "settled"


def _buggy_completion(res):
    raise RuntimeError("a bug in a completion")


class _Quiet:
    def failure(self, *a, **k):
        pass

    def warn(self, *a, **k):
        pass


class AioSyncsTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.ring = FakeRing()
        self.aio = AioSyncs(self.reactor, self.ring)
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def ask(self, target, then=None):
        d = defer.Deferred()
        self.aio.request(target, then, d)
        return d

    def finish(self, index=0, res=0):
        fd = self.ring.complete(index, res)
        self.aio.reap()
        return fd

    def test_the_eventfd_is_a_reader_until_closed(self):
        (reader,) = self.reactor.readers
        self.assertEqual(reader.fileno(), 99)
        self.aio.close()
        self.assertEqual(self.reactor.readers, [])
        self.assertTrue(self.ring.closed)

    def test_nothing_fires_before_the_kernel_says_done(self):
        d = self.ask(7)
        self.assertEqual(self.ring.submitted[0][0], 7)
        self.assertNoResult(d)
        self.assertFalse(self.aio.idle())
        self.finish()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.aio.idle())

    def test_a_kernel_error_is_the_callers_oserror(self):
        d = self.ask(7)
        self.finish(res=-errno.EIO)
        error = self.failureResultOf(d, OSError).value
        self.assertEqual(error.errno, errno.EIO)

    def test_only_a_zero_result_is_a_success(self):
        # fsync(2) gives 0 or -errno; anything else is no report of a
        # durable file (an event misread, a kernel that means something
        # else by it): the message is not acknowledged on it
        calls = []
        file_d = self.ask(7)
        published = self.ask(8, Publication(calls, dirs=[self.dir]))
        self.finish(res=1)
        self.assertEqual(self.failureResultOf(file_d, OSError).value.errno, errno.EIO)
        self.finish(res=0)
        self.assertEqual(calls, ["run"])
        self.finish(res=5)  # the directory's sync
        self.assertEqual(self.successResultOf(published), "settled")
        self.assertEqual(calls[-1][0], "settle")
        self.assertEqual(calls[-1][1][self.dir].errno, errno.EIO)
        path_d = self.ask(self.dir)
        self.finish(res=2**40)
        self.assertEqual(self.failureResultOf(path_d, OSError).value.errno, errno.EIO)

    def test_descriptors_are_never_grouped(self):
        ds = [self.ask(7), self.ask(7)]
        self.assertEqual([fd for fd, _ in self.ring.submitted], [7, 7])
        self.finish()
        self.successResultOf(ds[0])
        self.assertNoResult(ds[1])  # its own fsync: the first may predate its writes

    def test_a_path_is_opened_for_its_sync_and_closed_after(self):
        path = os.path.join(self.dir, "f")
        open(path, "wb").close()
        before = len(os.listdir("/proc/self/fd"))
        plain = self.ask(path)
        published = self.ask(path, Publication([]))
        for fd, _ in self.ring.submitted:
            self.assertEqual(os.fstat(fd).st_ino, os.stat(path).st_ino)
        self.finish()
        self.finish()
        self.successResultOf(plain)
        self.successResultOf(published)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_a_failing_close_still_answers(self):
        # the descriptor was opened only for the sync: its close failing
        # (EIO on some network filesystems) must not leave callers waiting
        path = os.path.join(self.dir, "f")
        open(path, "wb").close()
        real_close = os.close

        def close(fd):
            real_close(fd)
            raise OSError(errno.EIO, "close failed")

        plain = self.ask(path)
        published = self.ask(path, Publication([]))
        self.patch(aio.os, "close", close)
        self.finish()
        self.finish()
        self.successResultOf(plain)
        self.successResultOf(published)
        self.assertTrue(self.aio.idle())

    def test_a_missing_path_fails_without_a_request(self):
        d = self.ask(os.path.join(self.dir, "missing"))
        self.failureResultOf(d, FileNotFoundError)
        self.assertEqual(self.ring.submitted, [])
        self.assertTrue(self.aio.idle())

    def test_a_path_that_cannot_be_opened_at_all_fails_alone(self):
        # os.open raises ValueError (a NUL in the name), not OSError: the
        # request fails, and neither the path nor idle() stays stuck
        for _ in range(2):
            for then in (None, Publication([])):
                d = self.ask("bad\0name", then)
                self.failureResultOf(d, ValueError)
                self.assertEqual(self.ring.submitted, [])
                self.assertTrue(self.aio.idle())
        calls = []
        d = self.ask(5, Publication(calls, dirs=[self.dir, "bad\0name"]))
        self.finish()
        self.finish()
        self.assertIsInstance(calls[-1][1]["bad\0name"], ValueError)
        self.assertEqual(self.successResultOf(d), "settled")
        self.assertTrue(self.aio.idle())

    def test_a_bug_at_submit_from_the_backlog_fails_that_request_only(self):
        self.patch(aio, "log", _Quiet())
        self.ring.room = 1
        first, second, third = self.ask(5), self.ask(6), self.ask(7)
        real_submit = self.ring.submit

        def submit_once_broken(fd, key):
            self.patch(self.ring, "submit", real_submit)
            raise RuntimeError("a bug")

        self.patch(self.ring, "submit", submit_once_broken)
        self.finish()  # room again: the backlog goes on
        self.successResultOf(first)
        self.assertEqual(self.failureResultOf(second, OSError).value.errno, errno.EIO)
        self.assertEqual([fd for fd, _ in self.ring.submitted], [7])
        self.finish()
        self.successResultOf(third)
        self.assertTrue(self.aio.idle())

    def test_requests_for_a_busy_path_wait_for_the_next_sync_together(self):
        first = self.ask(self.dir)
        later = [self.ask(self.dir), self.ask(self.dir)]
        self.assertEqual(len(self.ring.submitted), 1)  # one in flight per path
        self.finish()
        self.successResultOf(first)
        for d in later:
            self.assertNoResult(d)  # the first sync may have missed their entries
        self.assertEqual(len(self.ring.submitted), 1)  # one for both
        self.finish()
        for d in later:
            self.successResultOf(d)
        self.assertTrue(self.aio.idle())

    def test_idle_is_true_when_the_last_callback_runs(self):
        seen = []
        d = self.ask(self.dir)
        d.addCallback(lambda _: seen.append(self.aio.idle()))
        self.finish()
        self.assertEqual(seen, [True])

    def test_a_callback_asking_for_the_same_path_gets_a_new_sync(self):
        again = []
        first = self.ask(self.dir)
        waiting = self.ask(self.dir)
        first.addCallback(lambda _: again.append(self.ask(self.dir)))
        self.finish()
        # the waiting request and the callback's share the next sync
        self.assertEqual(len(self.ring.in_flight()), 1)
        self.finish()
        self.successResultOf(waiting)
        self.successResultOf(again[0])
        self.assertTrue(self.aio.idle())

    def test_a_failed_path_sync_fails_its_group_only(self):
        first = self.ask(self.dir)
        later = self.ask(self.dir)
        self.finish(res=-errno.ENOSPC)
        self.assertEqual(self.failureResultOf(first, OSError).value.errno, errno.ENOSPC)
        self.finish()
        self.successResultOf(later)

    def test_publication_after_the_file_then_its_directories(self):
        calls = []
        other = os.path.join(self.dir, "other")
        os.makedirs(other)
        pub = Publication(calls, dirs=[self.dir, other, self.dir])
        d = self.ask(5, pub)
        self.assertEqual(calls, [])
        self.finish()  # the file is durable: published, its directories asked for
        self.assertEqual(calls, ["run"])
        self.assertEqual(len(self.ring.submitted), 2)  # each directory once
        self.finish()
        self.assertNoResult(d)  # one directory still syncing
        self.finish()
        self.assertEqual(calls, ["run", ("settle", {})])
        self.assertEqual(self.successResultOf(d), "settled")

    def test_a_failed_file_is_never_published(self):
        calls = []
        d = self.ask(5, Publication(calls, dirs=[self.dir]))
        self.finish(res=-errno.EIO)
        self.failureResultOf(d, OSError)
        self.assertEqual(calls, [])

    def test_a_failed_directory_reaches_settle(self):
        calls = []
        gone = os.path.join(self.dir, "gone")
        pub = Publication(calls, dirs=[self.dir, gone])
        d = self.ask(5, pub)
        self.finish()
        self.finish(res=-errno.EIO)  # self.dir's sync
        self.assertEqual(self.successResultOf(d), "settled")
        failed = calls[-1][1]
        self.assertEqual(set(failed), {self.dir, gone})
        self.assertEqual(failed[self.dir].errno, errno.EIO)
        self.assertIsInstance(failed[gone], FileNotFoundError)

    def test_a_publication_without_directories_settles_at_once(self):
        calls = []
        d = self.ask(5, Publication(calls))
        self.finish()
        self.assertEqual(self.successResultOf(d), "settled")

    def test_publication_errors_reach_the_caller(self):
        calls = []
        bad_run = self.ask(5, Publication(calls, run_error=ValueError("run")))
        bad_settle = self.ask(6, Publication(calls, settle_error=KeyError("settle")))
        self.finish()
        self.finish()
        self.failureResultOf(bad_run, ValueError)
        self.failureResultOf(bad_settle, KeyError)
        self.assertTrue(self.aio.idle())

    def test_a_full_ring_queues_until_a_completion(self):
        self.ring.room = 1
        ds = [self.ask(5), self.ask(6), self.ask(7)]
        self.assertEqual([fd for fd, _ in self.ring.submitted], [5])
        self.finish()
        self.successResultOf(ds[0])
        self.assertEqual([fd for fd, _ in self.ring.submitted], [6])
        self.finish()
        self.finish()
        for d in ds:
            self.successResultOf(d)
        self.assertTrue(self.aio.idle())

    def test_an_error_at_submit_is_that_requests_error(self):
        self.ring.refuse = OSError(errno.EBADF, "bad fd")
        d = self.ask(5)
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.EBADF)
        self.assertFalse(self.aio.broken)
        self.assertTrue(self.aio.idle())

    def test_einval_at_submit_syncs_here_and_gives_the_ring_up(self):
        synced = []
        self.patch(aio.os, "fsync", synced.append)
        self.ring.refuse = OSError(errno.EINVAL, "no AIO fsync")
        refused = self.ask(7)
        self.assertTrue(self.aio.broken)
        self.assertEqual(synced, [7])
        self.successResultOf(refused)
        self.assertTrue(self.aio.idle())

    def test_a_sandbox_that_forbids_the_request_gives_the_ring_up_too(self):
        for error in (errno.ENOSYS, errno.EPERM):
            ring = FakeRing()
            a = AioSyncs(FakeReactor(), ring)
            synced = []
            self.patch(aio.os, "fsync", synced.append)
            ring.refuse = OSError(error, "seccomp")
            d = defer.Deferred()
            a.request(5, None, d)
            self.successResultOf(d)
            self.assertEqual(synced, [5])
            self.assertTrue(a.broken)

    def test_einval_for_a_waiting_request_syncs_the_rest_here(self):
        synced = []
        self.patch(aio.os, "fsync", synced.append)
        self.ring.room = 1
        ds = [self.ask(5), self.ask(6), self.ask(7)]  # two wait for room
        self.ring.refuse = OSError(errno.EINVAL, "no AIO fsync")
        self.finish()
        self.assertTrue(self.aio.broken)
        self.assertEqual(synced, [6, 7])
        for d in ds:
            self.successResultOf(d)
        self.assertTrue(self.aio.idle())

    def test_a_failing_completion_does_not_stop_the_others(self):
        self.patch(aio, "log", _Quiet())
        self.aio._submit(5, _buggy_completion)
        good = self.ask(6)
        self.ring.complete(0)
        self.ring.complete(0)
        self.aio.reap()  # does not raise: the reactor keeps the reader
        self.successResultOf(good)
        self.assertTrue(self.aio.idle())

    def test_a_failing_completion_from_the_backlog_does_not_escape(self):
        self.patch(aio, "log", _Quiet())
        self.ring.room = 1
        first = self.ask(5)
        self.aio._submit(6, _buggy_completion)  # waits for room
        good = self.ask(7)
        self.ring.refuse = OSError(errno.EBADF, "bad fd")  # the backlog's first submit
        self.finish()  # does not raise
        self.successResultOf(first)
        self.finish()
        self.successResultOf(good)
        self.assertTrue(self.aio.idle())

    def test_an_unreadable_ring_fails_what_is_in_it_and_gives_it_up(self):
        self.patch(aio, "log", _Quiet())
        ds = [self.ask(5), self.ask(6)]

        def broken():
            raise OSError(errno.EFAULT, "bad address")

        self.ring.reap = broken
        self.aio.reap()
        for d in ds:
            self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.EIO)
        self.assertTrue(self.aio.broken)
        self.assertTrue(self.aio.idle())

    def test_a_full_ring_of_others_polls_again(self):
        # no request of ours is in flight, so no completion will wake us
        self.ring.room = 0
        d = self.ask(5)
        self.assertNoResult(d)
        self.reactor.advance(0.01)  # still no room: tries again later
        self.assertNoResult(d)
        self.ring.room = 1
        self.reactor.advance(0.01)
        self.assertEqual([fd for fd, _ in self.ring.submitted], [5])
        self.finish()
        self.successResultOf(d)


class SyncerWithAioTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.ring = FakeRing()
        self.patch(sync, "open_ring", lambda: self.ring)

    def test_auto_uses_the_ring_and_stop_waits_for_it(self):
        s = Syncer(self.reactor)
        s.start()
        self.assertIsNotNone(s.aio)
        d = s.sync_file(5)
        stopped = s.stop()
        self.assertNoResult(stopped)
        s.aio.ring.complete()
        s.aio.reap()
        self.successResultOf(d)
        self.successResultOf(stopped)
        self.assertTrue(self.ring.closed)
        self.assertEqual(self.reactor.readers, [])
        self.failureResultOf(s.sync_file(5), LocalError)

    def test_a_follow_up_request_made_on_a_result_keeps_stop_waiting(self):
        s = Syncer(self.reactor)
        s.start()
        follow = []
        s.sync_file(5).addCallback(lambda _: follow.append(s.sync_dir("/")))
        stopped = s.stop()
        self.ring.complete()
        s.aio.reap()
        self.assertNoResult(stopped)  # the directory's sync is under way
        self.assertNoResult(follow[0])
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(follow[0])
        self.successResultOf(stopped)

    def test_a_request_the_ring_cannot_take_never_keeps_stop_waiting(self):
        s = Syncer(self.reactor)
        s.start()
        d = s.sync_dir("bad\0name")
        self.failureResultOf(d, ValueError)
        self.successResultOf(s.stop())
        self.assertTrue(self.ring.closed)

    def test_a_bug_in_the_ring_fails_the_request_not_stop(self):
        s = Syncer(self.reactor)
        s.start()

        def broken_submit(fd, key):
            raise RuntimeError("a bug")

        self.patch(self.ring, "submit", broken_submit)
        self.patch(aio, "log", _Quiet())
        self.assertEqual(self.failureResultOf(s.sync_file(5), OSError).value.errno, errno.EIO)
        folder = self.mktemp()
        os.makedirs(folder)
        for _ in range(2):  # the folder is not left "being synced"
            self.assertEqual(self.failureResultOf(s.sync_dir(folder), OSError).value.errno,
                             errno.EIO)
        self.successResultOf(s.stop())

    def test_a_request_that_raises_fails_alone(self):
        s = Syncer(self.reactor)
        s.start()

        def request(target, then, d):
            raise RuntimeError("a bug")

        self.patch(s.aio, "request", request)
        self.failureResultOf(s.sync_file(5), RuntimeError)
        self.successResultOf(s.stop())

    def test_a_request_before_start_starts_the_ring(self):
        s = Syncer(self.reactor, method="aio")
        d = s.sync_dir("/")
        self.assertIsNotNone(s.aio)
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(d)

    def test_injected_threads_or_fsync_never_use_the_ring(self):
        s = Syncer(self.reactor, run_in_thread=lambda f: defer.succeed(f()))
        s.start()
        self.assertIsNone(s.aio)
        s = Syncer(self.reactor, method="fsync")
        s.start()
        self.assertIsNone(s.aio)
        s._pool.stop()

    def test_without_a_ring_the_threads_do_it(self):
        self.patch(sync, "open_ring", lambda: None)
        s = Syncer(self.reactor, run_in_thread=None)
        s.start()
        self.assertIsNone(s.aio)
        self.assertEqual(s.method, "fsync")
        s._pool.stop()

    def test_after_einval_new_requests_go_to_the_threads(self):
        jobs = []
        s = Syncer(self.reactor, method="aio")
        s.start()
        s._run_injected = lambda f: jobs.append(f) or defer.Deferred()
        self.patch(aio.os, "fsync", lambda fd: None)
        self.ring.refuse = OSError(errno.EINVAL, "no AIO fsync")
        self.successResultOf(s.sync_file(5))  # synced where it was refused
        s.sync_file(6)
        self.assertEqual(len(jobs), 1)  # a batch for the worker threads
        self.assertEqual(len(self.ring.submitted), 0)

    def test_stop_waits_for_the_ring_when_threads_took_over_meanwhile(self):
        # a request in the kernel when another is refused (EINVAL): the
        # threads' batch may finish first, and closing the ring then
        # would drop the first request's result (its caller never hears)
        batches = []
        s = Syncer(self.reactor, method="aio")
        s.start()
        s._run_injected = lambda f: batches.append(defer.Deferred()) or batches[-1]
        self.patch(aio.os, "fsync", lambda fd: None)
        in_ring = s.sync_file(5)
        self.ring.refuse = OSError(errno.EINVAL, "no AIO fsync")
        self.successResultOf(s.sync_file(6))  # synced here; the ring is given up
        threaded = s.sync_file(7)
        stopped = s.stop()
        batches.pop().callback(None)  # the threads' batch is done
        self.successResultOf(threaded)
        self.assertNoResult(stopped)
        self.assertFalse(self.ring.closed)
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(in_ring)
        self.successResultOf(stopped)
        self.assertTrue(self.ring.closed)

    def test_start_while_a_stop_drains_keeps_the_ring(self):
        s = Syncer(self.reactor)
        s.start()
        d = s.sync_file(5)
        stopped = s.stop()
        s.start()
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(d)
        self.successResultOf(stopped)
        self.assertFalse(self.ring.closed)
        self.assertEqual(len(self.reactor.readers), 1)
        later = s.sync_file(6)
        self.assertEqual(self.ring.submitted[-1][0], 6)
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(later)
        self.successResultOf(s.stop())
        self.assertTrue(self.ring.closed)

    def test_a_forked_child_gets_a_ring_of_its_own(self):
        # what os.fork's hook does in the child (the real fork:
        # tests/test_sync.py RealForkTests): the parent's ring is given up,
        # never closed (io_destroy), its reader left where it is; what
        # was in flight is the parent's; the next request opens a new ring
        s = Syncer(self.reactor)
        s.start()
        parents = s.aio
        in_flight = s.sync_file(5)
        parents_stop = s.stop()
        s._forked()
        self.assertIsNone(s.aio)
        self.assertTrue(self.ring.abandoned)
        self.assertFalse(self.ring.closed)
        self.ring.complete()  # the parent's completion, seen by the child's reactor
        parents._reader.doRead()
        self.assertNoResult(in_flight)
        self.assertNoResult(parents_stop)
        mine = FakeRing()
        self.patch(sync, "open_ring", lambda: mine)
        d = s.sync_file(7)
        self.assertIsNot(s.aio, parents)
        self.assertEqual(mine.submitted[0][0], 7)
        mine.complete()
        s.aio.reap()
        self.successResultOf(d)
        self.successResultOf(s.stop())  # not waiting for the parent's request
        self.assertTrue(mine.closed)
        self.assertFalse(self.ring.closed)
        self.assertEqual(self.reactor.readers, [parents._reader])
        self.assertNoResult(in_flight)
        # the child's reactor, removing it at shutdown, is given no
        # descriptor: epoll's would unregister the number in the kernel
        self.assertLess(parents._reader.fileno(), -1)

    def test_a_fork_in_a_callback_leaves_the_rest_to_the_parent(self):
        # the rest of the reap runs on in the child: the parent's other
        # completion is not given there, and nothing is counted twice
        s = Syncer(self.reactor)
        s.start()
        first, second = s.sync_file(5), s.sync_file(6)
        first.addCallback(lambda _: s._forked())
        self.ring.complete()
        self.ring.complete()
        s.aio.reap()
        self.assertNoResult(second)
        self.assertEqual(s._aio_busy, 0)
        mine = FakeRing()
        self.patch(sync, "open_ring", lambda: mine)
        d = s.sync_dir("/")
        mine.complete()
        s.aio.reap()
        self.successResultOf(d)
        self.assertEqual(s._aio_busy, 0)
        self.successResultOf(s.stop())

    def test_sync_fires_only_when_every_request_is_over(self):
        # the caller closes its descriptors when sync() fires: one still
        # waiting for room in the ring is not yet the kernel's, and its
        # number could name another file by the time it is submitted
        s = Syncer(self.reactor)
        s.start()
        self.ring.room = 1
        base = self.mktemp()
        os.makedirs(base)
        busy = s.sync_dir(base)  # fills the ring
        d = s.sync(files=[5], dirs=[os.path.join(base, "gone")])  # the folder fails at once
        self.assertNoResult(d)
        self.ring.complete()
        s.aio.reap()
        self.successResultOf(busy)
        self.assertEqual([fd for fd, _ in self.ring.submitted], [5])
        self.assertNoResult(d)
        self.ring.complete()
        s.aio.reap()
        self.failureResultOf(d, FileNotFoundError)


def _ring_or_skip() -> KernelRing:
    try:
        return KernelRing(8)
    except OSError as e:
        pytest.skip(f"no native AIO here: {e}")


class RealKernelTests(TestCase):
    """The real ring with the real reactor."""

    timeout = 20

    @defer.inlineCallbacks
    def test_real_syncs_and_a_real_publication(self):
        from twisted.internet import reactor

        _ring_or_skip().close()
        base = self.mktemp()
        os.makedirs(os.path.join(base, "new"))
        s = Syncer(reactor)
        s.start()
        self.assertIsNotNone(s.aio)
        src = os.path.join(base, "spool")
        dst = os.path.join(base, "new", "m")
        fd = os.open(src, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x\n")

        class Move:
            def run(self):
                os.rename(src, dst)
                return [os.path.join(base, "new")]

            def settle(self, failed):
                return failed

        try:
            failed = yield s.sync_then(fd, Move())
            yield defer.gatherResults([s.sync_dir(base), s.sync_file(dst), s.sync_dir(base)])
        finally:
            os.close(fd)
        self.assertEqual(failed, {})
        self.assertTrue(os.path.exists(dst))
        self.assertGreaterEqual(s.aio.requests, 4)
        with self.assertRaises(FileNotFoundError):
            yield s.sync_file(os.path.join(base, "missing"))
        yield s.stop()
        self.assertIsNone(s.aio)

    @defer.inlineCallbacks
    def test_a_full_real_ring_queues_and_loses_nothing(self):
        # hundreds of requests at once on the smallest ring the kernel
        # makes: some wait for room (EAGAIN), every one completes once
        from twisted.internet import reactor

        _ring_or_skip().close()
        full = []
        real_submit = KernelRing.submit

        def submit(ring, fd, key):
            try:
                real_submit(ring, fd, key)
            except BlockingIOError:
                full.append(key)
                raise

        self.patch(KernelRing, "submit", submit)
        self.patch(sync, "open_ring", lambda: aio.open_ring(1))
        base = self.mktemp()
        dirs = [os.path.join(base, f"d{i}") for i in range(5)]
        for d in dirs:
            os.makedirs(d)
        s = Syncer(reactor, method="aio")
        s.start()
        fds, ds = [], []
        try:
            for i in range(300):
                fd = os.open(os.path.join(dirs[i % 5], f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o600)
                fds.append(fd)
                os.write(fd, b"x\n")
                ds += [s.sync_file(fd), s.sync_dir(dirs[i % 5])]
            results = yield defer.DeferredList(ds, consumeErrors=True)
        finally:
            for fd in fds:
                os.close(fd)
        self.assertEqual([r for ok, r in results if not ok], [])
        self.assertTrue(full, "the ring never filled up")
        self.assertFalse(s.aio.broken)
        self.assertTrue(s.aio.idle())
        yield s.stop()

    def test_an_abandoned_ring_never_reads_the_parents_eventfd(self):
        # abandon() in this process stands for the child of a fork: the
        # descriptor number stays open but is another eventfd, which never
        # becomes readable; the original (the parent's) keeps its wake-up
        import select

        ring = _ring_or_skip()
        ctx = ring._ctx.value
        number = ring.fileno()
        parents = os.dup(number)
        base = self.mktemp()
        os.makedirs(base)
        fd = os.open(base, os.O_RDONLY)
        try:
            ring.submit(fd, 1)
            ring.abandon()
            self.assertEqual(ring.fileno(), number)
            self.assertTrue(select.select([parents], [], [], 5)[0])  # the parent's wake-up
            self.assertEqual(select.select([number], [], [], 0)[0], [])
            self.assertEqual(os.eventfd_read(parents), 1)
            ring.close()
            # no io_destroy of what is not ours: the context is still there
            self.assertEqual(ring._syscall(ring._destroy, ctypes.c_ulong(ctx)), 0)
            ctx = None
        finally:
            os.close(fd)
            if ctx is not None:
                ring._syscall(ring._destroy, ctypes.c_ulong(ctx))
            os.close(parents)

    def test_a_bad_descriptor_is_refused_at_submit(self):
        ring = _ring_or_skip()
        try:
            with self.assertRaises(OSError) as caught:
                ring.submit(1_000_000, 1)
            self.assertEqual(caught.exception.errno, errno.EBADF)
            self.assertEqual(ring.reap(), [])
        finally:
            ring.close()

    def test_many_at_once_fill_and_drain_the_ring(self):
        ring = _ring_or_skip()
        base = self.mktemp()
        os.makedirs(base)
        fd = os.open(base, os.O_RDONLY)
        try:
            n = 0
            while True:
                try:
                    ring.submit(fd, n + 1)
                except BlockingIOError:
                    break
                n += 1
                self.assertLess(n, 10_000)
            self.assertGreaterEqual(n, 8)
            got = []
            import select

            # poll, not select: run after other tests, the eventfd's number
            # can be over select's 1024
            poller = select.poll()
            poller.register(ring.fileno(), select.POLLIN)
            while len(got) < n:
                poller.poll(5000)
                got.extend(ring.reap())
            self.assertEqual(sorted(k for k, _ in got), list(range(1, n + 1)))
            self.assertEqual({r for _, r in got}, {0})
        finally:
            os.close(fd)
            ring.close()


def _texts(events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def test_no_ring_is_said_once_at_start(monkeypatch, log_events):
    monkeypatch.setattr(sync, "open_ring", lambda: None)
    s = Syncer(FakeReactor())
    s.start()
    s.start()
    said = [t for t in _texts(log_events) if "AIO" in t]
    assert said == ["no Linux native AIO here: fsync in worker threads"]
    s._pool.stop()


def test_a_refusing_kernel_is_said_once(monkeypatch, log_events):
    monkeypatch.setattr(aio.os, "fsync", lambda fd: None)
    ring = FakeRing()
    a = AioSyncs(FakeReactor(), ring)
    for fd in (5, 6):
        ring.refuse = OSError(errno.EINVAL, "no")
        a.request(fd, None, defer.Deferred())
    said = [t for t in _texts(log_events) if "AIO" in t]
    assert len(said) == 1 and "worker threads from now on" in said[0]


def test_the_ring_reports_what_a_kernel_without_aio_says(monkeypatch):
    class NoSyscalls:
        def __init__(self, *a, **k):
            self.syscall = lambda *a: -1

    monkeypatch.setattr(aio.ctypes, "CDLL", NoSyscalls)
    monkeypatch.setattr(aio.ctypes, "get_errno", lambda: errno.ENOSYS)
    with pytest.raises(aio.AioUnsupported) as caught:
        KernelRing()
    assert caught.value.errno == errno.ENOSYS
    assert aio.open_ring() is None


def test_a_32_bit_process_on_a_64_bit_kernel_is_refused_before_any_call(monkeypatch):
    # os.uname() says what the kernel is, not what this process is: a
    # 32-bit Python (i386 or x32 on x86_64, armhf on aarch64) has other
    # system call numbers -- on i386, 206-209 are setgroups32, fchown32,
    # setresuid32 and getresuid32 -- and other struct sizes.
    calls = []

    class Recording:
        def __init__(self, *a, **k):
            def syscall(*args):
                calls.append(args[0])
                return 0

            self.syscall = syscall

    class Uname:
        machine = "x86_64"

    monkeypatch.setattr(aio.ctypes, "CDLL", Recording)
    monkeypatch.setattr(aio.os, "uname", lambda: Uname())
    monkeypatch.setattr(aio, "_POINTER_SIZE", 4, raising=False)
    with pytest.raises(aio.AioUnsupported):
        KernelRing().close()
    assert calls == []


def test_the_structures_are_laid_out_as_the_kernel_reads_them():
    # <linux/aio_abi.h>, little-endian: struct iocb is 64 bytes, aio_key
    # before aio_rw_flags (the other way round on big-endian, which the
    # ring refuses), struct io_event 32; checked against gcc's offsetof
    import ctypes

    iocb = {name: getattr(aio._Iocb, name).offset for name, _ in aio._Iocb._fields_}
    assert ctypes.sizeof(aio._Iocb) == 64
    assert iocb == {
        "aio_data": 0, "aio_key": 8, "aio_rw_flags": 12, "aio_lio_opcode": 16,
        "aio_reqprio": 18, "aio_fildes": 20, "aio_buf": 24, "aio_nbytes": 32,
        "aio_offset": 40, "aio_reserved2": 48, "aio_flags": 56, "aio_resfd": 60,
    }
    event = {name: getattr(aio._IoEvent, name).offset for name, _ in aio._IoEvent._fields_}
    assert ctypes.sizeof(aio._IoEvent) == 32
    assert event == {"data": 0, "obj": 8, "res": 16, "res2": 24}
    assert aio._IOCB_CMD_FSYNC == 2 and aio._IOCB_FLAG_RESFD == 1
    # io_setup, io_destroy, io_getevents, io_submit: <asm/unistd_64.h>, asm-generic
    assert aio._SYSCALLS["x86_64"] == (206, 207, 208, 209)
    assert aio._SYSCALLS["aarch64"] == aio._SYSCALLS["riscv64"] == (0, 1, 4, 2)
