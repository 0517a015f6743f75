"""txmailhub.store.sync: group commit and the durable-write shape."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import gc
import os
import stat
import threading
import time
import weakref

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmailhub.errors import LocalError
from txmailhub.store import sync
from txmailhub.store.sync import Syncer, durable_write, fsync_path


class ManualThreads:
    """A ``run_in_thread`` whose jobs run only when the test says so."""

    def __init__(self):
        self.jobs = []

    def __call__(self, f):
        d = defer.Deferred()
        self.jobs.append((f, d))
        return d

    def run_all(self):
        jobs, self.jobs = self.jobs, []
        for f, d in jobs:
            try:
                d.callback(f())
            except Exception:
                d.errback(Failure())
        return len(jobs)


class ManualWorkers:
    """A ``run_in_thread`` that is a pool of ``size`` workers, as
    ``_Workers`` is: the jobs are taken first come first, ``size`` at a
    time, and each runs only when the test says so (``finish``) -- a
    worker whose job hangs until then, as on a disk that does not answer.
    ``jobs`` holds them in the order they came: the first ``size`` are on
    a worker, the others wait for one."""

    def __init__(self, size):
        self.size = size
        self.jobs = []

    def __call__(self, f):
        d = defer.Deferred()
        self.jobs.append((f, d))
        return d

    @property
    def waiting(self):
        """How many jobs wait for a worker (none is free)."""
        return max(0, len(self.jobs) - self.size)

    def finish(self, index=0):
        """Run the job on worker ``index`` (the one that came first by
        default) and hand its result back."""
        assert index < self.size, "that job waits for a worker: it cannot run"
        f, d = self.jobs.pop(index)
        try:
            result = f()
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def finish_all(self):
        while self.jobs:
            self.finish()


class SyscallSpy:
    """Replaces the syscalls sync.py makes and records them in order."""

    def __init__(self, testcase, fail=None):
        self.calls = []
        self.fail = fail or {}
        testcase.patch(sync, "fsync_path", self.fsync_path)
        testcase.patch(sync, "_syncfs_one_of", self.syncfs)

    def fsync_path(self, target):
        self.calls.append(("fsync", target))
        if target in self.fail:
            raise self.fail[target]

    def syncfs(self, targets):
        self.calls.append(("syncfs", targets[0]))
        if targets[0] in self.fail:
            raise self.fail[targets[0]]


class GroupCommitTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.threads = ManualThreads()

    def syncer(self, method):
        return Syncer(None, method=method, run_in_thread=self.threads)

    def test_nothing_fires_before_the_sync_returns(self):
        spy = SyscallSpy(self)
        s = self.syncer("fsync")
        d = s.sync_file("/a")
        self.assertNoResult(d)
        self.assertEqual(spy.calls, [])
        self.assertEqual(self.threads.run_all(), 1)
        self.assertEqual(spy.calls, [("fsync", "/a")])
        self.assertIsNone(self.successResultOf(d))

    def test_requests_during_a_batch_form_the_next_batch(self):
        spy = SyscallSpy(self)
        s = self.syncer("fsync")
        first = s.sync_file("/a")
        later = [s.sync_file("/b"), s.sync_dir("/new"), s.sync_dir("/new")]
        self.assertEqual(len(self.threads.jobs), 1)  # only /a is being synced
        self.threads.run_all()
        self.successResultOf(first)
        for d in later:
            self.assertNoResult(d)
        # the second batch merged the duplicate directory request; one
        # thread job runs the whole batch
        self.assertEqual(self.threads.run_all(), 1)
        self.assertEqual(spy.calls, [("fsync", "/a"), ("fsync", "/b"), ("fsync", "/new")])
        for d in later:
            self.successResultOf(d)
        self.assertEqual((s.batches, s.requests, s.syscalls), (2, 4, 3))

    def test_fsync_errors_are_per_target(self):
        SyscallSpy(self, fail={"/bad": OSError(5, "EIO")})
        s = self.syncer("fsync")
        s.sync_file("/x")
        good, bad = s.sync_file("/good"), s.sync_file("/bad")
        self.threads.run_all()
        self.threads.run_all()
        self.successResultOf(good)
        self.assertEqual(self.failureResultOf(bad, OSError).value.errno, 5)

    def test_fsync_batch_starts_writeback_of_every_file_first(self):
        spy = SyscallSpy(self, fail={"/bad": OSError(5, "EIO")})
        self.patch(sync, "start_writeback", lambda fd: spy.calls.append(("writeback", fd)))
        s = self.syncer("fsync")
        s.sync_dir("/busy")
        self.threads.run_all()
        spy.calls.clear()
        ds = s.sync_each([7, "/new", 8, "/bad", 7])
        self.assertEqual(self.threads.run_all(), 1)
        # writeback of both files starts before the first fsync; the
        # duplicate request for 7 is merged; each target has its outcome
        self.assertEqual(spy.calls, [("writeback", 7), ("writeback", 8), ("fsync", 7),
                                     ("fsync", "/new"), ("fsync", 8), ("fsync", "/bad")])
        for i in (0, 1, 2, 4):
            self.successResultOf(ds[i])
        self.failureResultOf(ds[3], OSError)

    def test_syncfs_makes_one_call_per_filesystem(self):
        spy = SyscallSpy(self)
        s = self.syncer("syncfs")
        a, b = os.path.join(self.dir, "a"), os.path.join(self.dir, "b")
        for p in (a, b):
            open(p, "wb").close()
        s.sync_file(a)
        ds = [s.sync_file(b), s.sync_dir(self.dir), s.sync_file(a)]
        self.threads.run_all()
        spy.calls.clear()
        self.assertEqual(self.threads.run_all(), 1)
        self.assertEqual(spy.calls, [("syncfs", b)])
        for d in ds:
            self.successResultOf(d)

    def test_syncfs_error_fails_its_batch_and_a_missing_target_fails_alone(self):
        p = os.path.join(self.dir, "a")
        open(p, "wb").close()
        SyscallSpy(self, fail={p: OSError(28, "ENOSPC")})
        s = self.syncer("syncfs")
        s.sync_dir(self.dir)
        missing = s.sync_file(os.path.join(self.dir, "nope"))
        d1, d2 = s.sync_file(p), s.sync_dir(self.dir)
        self.threads.run_all()
        # one thread job for the batch: the missing target's error and the
        # filesystem's syncfs, each outcome delivered to its own requests
        self.assertEqual(self.threads.run_all(), 1)
        self.failureResultOf(missing, FileNotFoundError)
        self.failureResultOf(d1, OSError)
        self.failureResultOf(d2, OSError)

    def test_sync_many_waits_for_all(self):
        SyscallSpy(self, fail={"/bad": OSError(5, "EIO")})
        s = self.syncer("fsync")
        d = s.sync(files=["/f"], dirs=["/d"])
        self.assertEqual(self.threads.run_all(), 1)  # one batch (one job) for both
        self.successResultOf(d)
        s.sync_file("/busy")
        d = s.sync(files=["/f", "/bad"])
        self.threads.run_all()
        self.assertNoResult(d)  # waited for the batch under way
        self.threads.run_all()
        self.failureResultOf(d, OSError)
        self.successResultOf(s.sync())

    def test_stop_drains_then_refuses(self):
        SyscallSpy(self)
        s = self.syncer("fsync")
        d = s.sync_file("/a")
        stopped = s.stop()
        self.assertNoResult(stopped)
        late = s.sync_dir("/new")  # still accepted while draining
        self.threads.run_all()
        self.assertNoResult(stopped)
        self.threads.run_all()
        self.successResultOf(d)
        self.successResultOf(late)
        self.successResultOf(stopped)
        self.failureResultOf(s.sync_file("/b"), LocalError)
        s.start()
        d = s.sync_file("/b")
        self.threads.run_all()
        self.successResultOf(d)

    def test_start_while_a_stop_drains_ends_started(self):
        # a service restarted quickly: start() came before stop()'s
        # Deferred; the stop's tear-down must not win afterwards
        SyscallSpy(self)
        s = self.syncer("fsync")
        d = s.sync_file("/a")
        stopped = s.stop()
        s.start()
        self.threads.run_all()
        self.successResultOf(d)
        self.successResultOf(stopped)  # still: everything before it is durable
        later = s.sync_file("/b")
        self.threads.run_all()
        self.successResultOf(later)
        called = s.call(lambda: 5)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(called), 5)

    def test_stop_start_stop_ends_stopped(self):
        SyscallSpy(self)
        s = self.syncer("fsync")
        d = s.sync_file("/a")
        first, _, second = s.stop(), s.start(), s.stop()
        self.threads.run_all()
        self.successResultOf(d)
        self.successResultOf(first)
        self.successResultOf(second)
        self.failureResultOf(s.sync_file("/b"), LocalError)

    def test_a_forked_child_forgets_the_parents_batches(self):
        # what os.fork's hook does in the child (the real fork:
        # RealForkTests): the batch in flight and the one waiting for it
        # are the parent's; the child's stop() does not wait for them, and
        # their results never fire there (their callbacks are the parent's)
        spy = SyscallSpy(self)
        s = self.syncer("fsync")
        in_flight = s.sync_file("/a")
        waiting = s.sync_file("/b")
        parents_stop = s.stop()
        s._forked()
        self.threads.run_all()  # the parent's job, finishing in the child
        self.assertNoResult(in_flight)
        self.assertNoResult(waiting)
        self.assertNoResult(parents_stop)
        self.assertEqual(spy.calls, [("fsync", "/a")])  # /b is the parent's to launch
        mine = s.sync_file("/c")
        self.threads.run_all()
        self.successResultOf(mine)
        self.assertEqual(spy.calls, [("fsync", "/a"), ("fsync", "/c")])  # never /b here
        self.assertNoResult(waiting)
        self.successResultOf(s.stop())
        self.assertNoResult(in_flight)
        self.assertNoResult(parents_stop)  # the child's idle is not the parent's

    def test_a_forked_child_does_not_wait_for_the_parents_call_jobs(self):
        # a copy into a Maildir (call()) under way at the fork is the
        # parent's: the child's stop() must not wait for it for ever
        s = self.syncer("fsync")
        parents = s.call(lambda: 5)
        s._forked()
        self.successResultOf(s.stop())
        self.threads.run_all()  # should the parent's job finish here after all
        self.assertEqual(s._calls, 0)
        self.assertEqual(self.successResultOf(parents), 5)

    def test_a_fork_in_a_callback_leaves_the_rest_of_the_batch_to_the_parent(self):
        # inlineCallbacks code that forks when a sync fires: the rest of
        # the delivery runs on in the child, and must neither fire the
        # parent's other requests there nor count the batch done twice
        SyscallSpy(self)
        s = self.syncer("fsync")
        for targets in (["/a", "/a"], ["/a", "/b"]):  # one group; two groups
            first, second = s.sync_each(targets)
            first.addCallback(lambda _: s._forked())
            self.threads.run_all()
            self.assertNoResult(second)
            self.assertEqual(s._in_flight, 0)
            mine = s.sync_file("/c")
            self.threads.run_all()
            self.successResultOf(mine)
            self.assertEqual(s._in_flight, 0)
        self.successResultOf(s.stop())

    def test_a_fork_in_a_stop_callback_leaves_the_other_waiters_to_the_parent(self):
        # two stop()s wait for the same batch; the first one's caller forks
        # when it fires: the second is the parent's, never fired in the child
        SyscallSpy(self)
        s = self.syncer("fsync")
        s.sync_file("/a")
        first, second = s.stop(), s.stop()
        first.addCallback(lambda _: s._forked())
        self.threads.run_all()
        self.successResultOf(first)
        self.assertNoResult(second)

    def test_every_syncer_is_known_to_the_fork_hook(self):
        s = self.syncer("fsync")
        self.assertIn(s, list(sync._syncers))
        forked = []
        self.patch(s, "_forked", lambda: forked.append(True))
        self.patch(sync, "_syncers", [s, object()])  # a broken one is skipped
        sync._after_fork_in_child()
        self.assertEqual(forked, [True])

    def test_max_batches_lets_a_second_batch_start(self):
        spy = SyscallSpy(self)
        s = Syncer(None, method="fsync", max_batches=2, run_in_thread=self.threads)
        d1 = s.sync_file("/a")
        d2 = s.sync_file("/b")  # launched at once, beside the first
        d3 = s.sync_file("/c")  # waits: two batches are in flight
        self.assertEqual(len(self.threads.jobs), 2)
        f, d = self.threads.jobs.pop(1)
        d.callback(f())  # the second batch returns first
        self.successResultOf(d2)
        self.assertNoResult(d1)
        self.assertEqual(len(self.threads.jobs), 2)  # /c took the free slot
        self.threads.run_all()
        self.successResultOf(d1)
        self.successResultOf(d3)
        self.assertEqual(spy.calls, [("fsync", "/b"), ("fsync", "/a"), ("fsync", "/c")])
        self.successResultOf(s.stop())

    def test_call_runs_on_the_workers_outside_batches(self):
        s = self.syncer("fsync")
        d = s.call(lambda a, b: a + b, 2, 3)
        self.assertNoResult(d)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(d), 5)
        self.assertEqual(s.batches, 0)
        self.successResultOf(s.stop())
        self.failureResultOf(s.call(print), LocalError)

    def test_stop_waits_for_call_jobs_and_what_their_callers_request(self):
        # A Maildir copy is made by call() and then fsynced: stop() during
        # the copy must let the fsync that follows be requested and done,
        # or a message copied at shutdown is refused half-way.
        spy = SyscallSpy(self)
        s = self.syncer("fsync")
        synced = []
        d = s.call(lambda: "/copy")
        d.addCallback(lambda path: s.sync_file(path).addCallback(synced.append))
        stopped = s.stop()
        self.assertNoResult(stopped)  # the copy is under way
        self.threads.run_all()  # the copy; its callback requests the fsync
        self.assertNoResult(stopped)
        self.threads.run_all()  # the fsync
        self.assertEqual(spy.calls, [("fsync", "/copy")])
        self.assertEqual(synced, [None])
        self.successResultOf(stopped)
        # a failing job counts as over too
        s = self.syncer("fsync")
        d = s.call(lambda: 1 / 0)
        stopped = s.stop()
        self.threads.run_all()
        self.failureResultOf(d, ZeroDivisionError)
        self.successResultOf(stopped)

    def test_syncfs_through_any_target_that_still_exists(self):
        calls = []
        self.patch(sync, "syncfs", lambda fd, close=False: calls.append(fd) or (
            close and os.close(fd)))
        gone = os.path.join(self.dir, "gone")
        os.mkdir(gone)
        s = self.syncer("syncfs")
        s.sync_dir(self.dir)
        d1, d2 = s.sync_each([gone, self.dir])
        self.threads.run_all()
        os.rmdir(gone)  # vanishes between the request and the sync
        self.threads.run_all()
        self.assertEqual(len(calls), 2)
        self.successResultOf(d1)
        self.successResultOf(d2)
        # every target gone by then: the error reaches the callers
        os.mkdir(gone)
        s.sync_dir(self.dir)
        d3 = s.sync_dir(gone)
        self.threads.run_all()
        os.rmdir(gone)
        self.threads.run_all()
        self.failureResultOf(d3, FileNotFoundError)
        self.assertEqual(len(calls), 3)

    def test_a_planning_bug_fails_the_batch_without_wedging(self):
        s = self.syncer("fsync")
        SyscallSpy(self)

        def broken(batch):
            raise RuntimeError("bug")

        patched = self.patch(s, "_plan", broken)
        d = s.sync_file("/a")
        self.threads.run_all()
        self.failureResultOf(d, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        patched.restore()
        d = s.sync_file("/b")
        self.threads.run_all()
        self.successResultOf(d)

    def test_unknown_method(self):
        self.assertRaises(LocalError, Syncer, None, method="fdatasync-maybe")

    def test_auto_means_fsync_without_the_kernels_aio(self):
        # syncfs waits for every other process's dirty data on a shared
        # filesystem: only chosen on purpose (module docstring); AIO is
        # tried at start (tests/test_aio.py)
        self.assertEqual(Syncer(None).method, "fsync")
        self.assertEqual(Syncer(None, method="auto").method, "fsync")



class LaneTests(SynchronousTestCase):
    """``Syncer.lane``: a kind of job that may hang (the POP3 sessions')
    holds at most ``lane_jobs`` workers; the others of it wait their turn,
    in order, and the rest of the store's work still gets a worker."""

    def setUp(self):
        self.workers = ManualWorkers(4)
        self.syncer = Syncer(None, method="fsync", threads=4, run_in_thread=self.workers)

    def test_the_cap_is_all_workers_but_one_and_never_below_one(self):
        self.assertEqual(self.syncer.lane_jobs, 3)
        self.assertEqual(Syncer(None, threads=1).lane_jobs, 1)
        self.assertEqual(Syncer(None, threads=2).lane_jobs, 1)
        self.assertEqual(Syncer(None, threads=4, lane_jobs=2).lane_jobs, 2)
        self.assertEqual(Syncer(None, threads=4, lane_jobs=0).lane_jobs, 1)
        self.assertIs(self.syncer.lane("pop3"), self.syncer.lane("pop3"))  # one per name

    def test_jobs_over_the_cap_wait_and_a_plain_call_still_gets_a_worker(self):
        lane, ran = self.syncer.lane("pop3"), []
        ds = [lane.call(ran.append, n) for n in range(5)]
        self.assertEqual(len(self.workers.jobs), 3)  # 3 on the workers, one left free
        self.assertEqual(lane.waiting, 2)
        smtp = self.syncer.call(lambda: "spool file")
        self.assertEqual(self.workers.waiting, 0)  # on the worker left free
        self.workers.finish(3)
        self.assertEqual(self.successResultOf(smtp), "spool file")
        self.assertEqual(ran, [])  # the lane's jobs still hang
        self.workers.finish()  # one of them is over: the next one comes in
        self.assertEqual(ran, [0])
        self.assertEqual((len(self.workers.jobs), lane.waiting), (3, 1))
        self.workers.finish_all()
        self.assertEqual(ran, [0, 1, 2, 3, 4])  # in the order they came
        for d in ds:
            self.successResultOf(d)
        self.assertEqual((lane.running, lane.waiting, self.syncer._calls), (0, 0, 0))

    def test_a_job_asked_for_by_a_callback_waits_behind_those_already_waiting(self):
        lane = Syncer(None, method="fsync", threads=2, run_in_thread=self.workers).lane("x")
        ran = []
        first = lane.call(ran.append, "first")
        lane.call(ran.append, "second")
        first.addCallback(lambda _: lane.call(ran.append, "third"))
        self.workers.finish_all()
        self.assertEqual(ran, ["first", "second", "third"])

    def test_stop_waits_for_the_jobs_waiting_in_the_lane_and_their_follow_ups(self):
        spy = SyscallSpy(self)
        lane = self.syncer.lane("pop3")
        for n in range(4):
            lane.call(lambda n=n: f"/dir{n}").addCallback(self.syncer.sync_dir)
        self.assertEqual(lane.waiting, 1)
        stopped = self.syncer.stop()
        while self.workers.jobs:  # the jobs, the one that waited, their fsyncs
            self.assertNoResult(stopped)
            self.workers.finish()
        self.successResultOf(stopped)
        self.assertEqual(sorted(c[1] for c in spy.calls), [f"/dir{n}" for n in range(4)])
        self.failureResultOf(lane.call(print), LocalError)  # stopped: refused

    def test_a_waiting_job_whose_caller_left_never_runs(self):
        lane, ran, there = self.syncer.lane("pop3"), [], {n: True for n in range(6)}
        ds = [lane.call(ran.append, n, wanted=lambda n=n: there[n]) for n in range(6)]
        there[3] = False  # left while its job waits
        self.failureResultOf(lane.call(ran.append, 9, wanted=lambda: False), sync.CallAbandoned)
        self.failureResultOf(ds[3], sync.CallAbandoned)  # dropped when another came
        self.assertEqual(lane.waiting, 2)
        there[4] = False  # left while its job waits: dropped at its turn
        stopped = self.syncer.stop()
        self.workers.finish_all()
        self.failureResultOf(ds[4], sync.CallAbandoned)
        self.assertEqual(ran, [0, 1, 2, 5])
        self.successResultOf(stopped)  # nothing left for it to wait for

    def test_a_job_cancelled_while_it_waits_never_runs_and_the_lane_goes_on(self):
        lane, ran = self.syncer.lane("pop3"), []
        ds = [lane.call(ran.append, n) for n in range(5)]
        ds[3].cancel()  # its caller gave up on it while it waited
        self.failureResultOf(ds[3], defer.CancelledError)
        stopped = self.syncer.stop()
        self.workers.finish_all()
        self.assertEqual(ran, [0, 1, 2, 4])
        self.successResultOf(stopped)
        self.assertEqual((lane.running, lane.waiting, self.syncer._calls), (0, 0, 0))

    def test_a_wanted_check_that_raises_runs_the_job_and_the_lane_goes_on(self):
        lane, ran = self.syncer.lane("pop3"), []

        def broken():
            raise RuntimeError("a bug in the caller's check")

        ds = [lane.call(ran.append, n) for n in range(3)]
        odd = lane.call(ran.append, "odd", wanted=broken)
        later = lane.call(ran.append, "later")  # asks every waiting job's check
        stopped = self.syncer.stop()
        self.workers.finish_all()
        self.assertEqual(ran, [0, 1, 2, "odd", "later"])
        for d in [*ds, odd, later]:
            self.successResultOf(d)
        self.successResultOf(stopped)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))  # said, at each look

    def test_a_forked_child_forgets_the_lane(self):
        # the jobs under way and those waiting at the fork are the parent's
        lane, ran = self.syncer.lane("pop3"), []
        parents = [lane.call(ran.append, n) for n in range(5)]
        self.syncer._forked()
        self.successResultOf(self.syncer.stop())  # nothing of the parent's waited for
        self.syncer.start()
        self.assertEqual((lane.running, lane.waiting), (0, 0))
        self.workers.finish()  # the parent's job, finishing in the child
        self.assertEqual(len(self.workers.jobs), 2)  # starts none of the parent's waiting
        mine = [lane.call(ran.append, n) for n in (10, 11, 12, 13)]
        self.assertEqual((lane.running, lane.waiting), (3, 1))  # the child's own cap
        self.workers.finish_all()
        self.assertEqual(ran, [0, 1, 2, 10, 11, 12, 13])
        for d in mine:
            self.successResultOf(d)
        for d in parents[3:]:
            self.assertNoResult(d)  # never run, never fired here
        self.assertEqual(self.syncer._calls, 0)

    def test_a_fork_in_a_refusal_s_callback_leaves_the_other_refusals_to_the_parent(self):
        # two waiting logins whose clients left are dropped together; the
        # first one's errback forks (inlineCallbacks code): the second is
        # the parent's, never refused in the child, and the child's stop()
        # does not count it (it waited for -1 jobs, for ever)
        lane, there = self.syncer.lane("pop3"), {"a": True, "b": True}
        for _ in range(3):
            lane.call(lambda: None)
        first = lane.call(lambda: None, wanted=lambda: there["a"])
        second = lane.call(lambda: None, wanted=lambda: there["b"])
        first.addErrback(lambda _: self.syncer._forked())
        there["a"] = there["b"] = False
        lane.call(lambda: None)  # drops both, at once
        self.assertNoResult(second)
        self.assertEqual(self.syncer._calls, 0)
        self.successResultOf(self.syncer.stop())

    def test_a_fork_in_the_callback_of_a_job_that_ran_at_once_leaves_its_end_to_the_parent(self):
        # a run_in_thread that runs a job inline (an application's own):
        # the job that waited in the lane fires while the lane starts it,
        # and its caller forks then -- its end is the parent's, not counted
        # in the child (whose stop() then waited for -1 jobs, for ever)
        workers = ManualWorkers(2)
        s = Syncer(None, method="fsync", threads=2, run_in_thread=workers)
        lane = s.lane("pop3")
        lane.call(lambda: "first")
        second = lane.call(lambda: "second")
        self.assertEqual(lane.waiting, 1)
        second.addCallback(lambda _: s._forked())
        inline = defer.maybeDeferred
        s._run_injected = inline  # from now on every job runs at once
        workers.finish()  # the first is over: the second starts, runs and forks
        self.assertEqual((lane.running, lane.waiting, s._calls), (0, 0, 0))
        self.successResultOf(s.stop())

    def test_lane_call_on_a_syncer_without_lanes(self):
        class Plain:
            def call(self, f, *args):
                return defer.succeed(f(*args))

        call = sync.lane_call(Plain(), "pop3")
        self.assertEqual(self.successResultOf(call(lambda a: a + 1, 1)), 2)
        self.failureResultOf(call(print, wanted=lambda: False), sync.CallAbandoned)
        self.assertIsNone(sync.lane_call(object(), "pop3"))
        self.assertEqual(sync.lane_call(self.syncer, "pop3").__self__, self.syncer.lane("pop3"))

    def test_lane_call_without_lanes_runs_the_job_of_a_wanted_check_that_raises(self):
        # as a lane does: the check's bug is logged and the job runs; it
        # raised out of a call whose caller takes a Deferred (a login on an
        # application's own syncer failed instead)
        class Plain:
            def call(self, f, *args):
                return defer.succeed(f(*args))

        def broken():
            raise RuntimeError("a bug in the caller's check")

        call = sync.lane_call(Plain(), "pop3")
        self.assertEqual(self.successResultOf(call(lambda a: a + 1, 1, wanted=broken)), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ThreadCallRecorder:
    """A reactor that keeps what worker threads hand it (callFromThread)."""

    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *args):
        self.calls.append((f, args))

class RealThreadTests(TestCase):
    """The worker pool with the real reactor (fast: a few syscalls)."""

    timeout = 20

    @defer.inlineCallbacks
    def test_real_syncs_in_both_methods(self):
        from twisted.internet import reactor

        base = self.mktemp()
        os.makedirs(base)
        for method in ("fsync", "syncfs"):
            s = Syncer(reactor, method=method, threads=2)
            s.start()
            paths = []
            for i in range(5):
                p = os.path.join(base, f"{method}{i}")
                with open(p, "wb") as f:
                    f.write(b"x\n")
                paths.append(p)
            fd = os.open(paths[0], os.O_RDONLY)
            try:
                yield defer.gatherResults(
                    [s.sync_file(fd)] + [s.sync_file(p) for p in paths] + [s.sync_dir(base)]
                )
            finally:
                os.close(fd)
            self.assertGreaterEqual(s.batches, 1)
            yield s.stop()
            self.assertIsNone(s._pool)

    def test_workers_are_daemon_threads(self):
        from twisted.internet import reactor

        s = Syncer(reactor, method="fsync")
        s.start()
        done = []
        s._pool.submit(lambda: done.append(threading.current_thread().daemon))
        s._pool.stop()  # joins: the job has run
        self.assertEqual(done, [True])

    def test_results_in_before_the_reactor_looks_share_one_wakeup(self):
        r = ThreadCallRecorder()
        w = sync._Workers(r, 3, "test")
        ds = [w.submit(lambda i=i: i) for i in range(3)]
        ds.append(w.submit(lambda: 1 / 0))
        w.stop()  # joins: every job has run; the reactor has not looked yet
        self.assertEqual(len(r.calls), 1)
        for d in ds:
            self.assertNoResult(d)
        f, args = r.calls[0]
        f(*args)
        self.assertEqual([self.successResultOf(d) for d in ds[:3]], [0, 1, 2])
        self.failureResultOf(ds[3], ZeroDivisionError)

    def test_an_idle_worker_keeps_nothing_of_its_last_job(self):
        # A POP3 login lists the Maildir and measures sizes on the workers:
        # the job's arguments reach the session, its result is the
        # snapshot.  A worker waiting for its next job held both (its
        # locals), so every idle worker kept the last session it served.
        class Thing:
            pass

        r = ThreadCallRecorder()
        w = sync._Workers(r, 1, "test")
        arg, result = Thing(), Thing()
        arg_ref, result_ref = weakref.ref(arg), weakref.ref(result)
        ran = threading.Event()

        def job(a, out=[result]):  # noqa: B006 - the result leaves with the job
            ran.set()
            return out.pop()

        d = w.submit(functools.partial(job, arg))
        del arg, result
        self.assertTrue(ran.wait(10))
        deadline = time.monotonic() + 10
        while not r.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        f, args = r.calls.pop()
        f(*args)  # the reactor takes the result ...
        got = []
        d.addCallback(got.append)
        got.clear()  # ... and is done with it
        del d
        deadline = time.monotonic() + 5
        while (arg_ref() is not None or result_ref() is not None) and \
                time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
        try:
            self.assertIsNone(arg_ref())
            self.assertIsNone(result_ref())
        finally:
            w.stop()

    def test_an_abandoned_pool_delivers_nothing_and_takes_no_lock(self):
        # in a forked child: a wake-up the parent's workers had queued
        # runs there; and a worker may have held the lock at the fork
        r = ThreadCallRecorder()
        w = sync._Workers(r, 1, "test")
        ds = [w.submit(lambda i=i: i) for i in range(2)]
        w.stop()
        ds[0].addCallback(lambda _: w.abandon())  # a callback that forks
        f, args = r.calls[0]
        f(*args)
        self.successResultOf(ds[0])
        self.assertNoResult(ds[1])  # the parent's
        w._lock.acquire()  # held by a thread that is not in the child
        f(*args)  # returns at once

    def test_a_forked_syncer_abandons_its_pool(self):
        # the wake-up the parent's worker had queued runs in the child:
        # the syncer's pool must be the abandoned one, or the parent's
        # call() fires there
        r = ThreadCallRecorder()
        s = Syncer(r, method="fsync", threads=1)
        parents = s.call(lambda: 5)
        pool = s._pool
        pool.stop()  # the job has run; its wake-up waits for the reactor
        s._forked()
        f, args = r.calls[0]
        f(*args)
        self.assertNoResult(parents)
        self.assertIsNone(s._pool)

    @defer.inlineCallbacks
    def test_real_error_reaches_the_caller(self):
        from twisted.internet import reactor

        s = Syncer(reactor, method="fsync")
        try:
            yield s.sync_file(os.path.join(self.mktemp(), "missing"))
        except FileNotFoundError:
            pass
        else:
            self.fail("a missing file was reported durable")
        finally:
            yield s.stop()


class ThreadStartFailureTests(SynchronousTestCase):
    """A worker thread that cannot be started ("can't start new thread":
    a TasksMax or RLIMIT_NPROC limit reached)."""

    class Reactor:
        def callFromThread(self, f, *args):
            raise AssertionError("no thread ran, nothing can call back")

    def refuse_threads(self):
        def start(thread):
            raise RuntimeError("can't start new thread")

        self.patch(threading.Thread, "start", start)

    def test_a_call_job_fails_and_stop_still_ends(self):
        # the job has no thread to run it: its Deferred fails, and it no
        # longer counts as under way -- stop() (the hub's SIGTERM) would
        # otherwise wait for it for ever
        s = Syncer(self.Reactor(), method="fsync")
        s.start()
        self.refuse_threads()
        d = s.call(lambda: 1)
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # said in the log
        self.successResultOf(s.stop())

    def test_a_sync_request_fails_and_stop_still_ends(self):
        # a batch with no thread: its requests errback (a message gets 451,
        # never 250) and the batch is over
        s = Syncer(self.Reactor(), method="fsync")
        s.start()
        self.refuse_threads()
        d = s.sync_file(self.mktemp())
        self.failureResultOf(d, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        self.successResultOf(s.stop())

    def test_a_thread_that_did_not_start_is_not_joined(self):
        # the pool forgets it: stop() joins only threads that run
        w = sync._Workers(self.Reactor(), 2, "test")
        self.refuse_threads()
        self.failureResultOf(w.submit(lambda: 1), RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(w._threads, [])
        w.stop()  # no "cannot join thread before it is started"

    def test_a_thread_already_running_takes_the_job(self):
        calls = []

        class Reactor:
            def callFromThread(self, f, *args):
                calls.append((f, args))

        w = sync._Workers(Reactor(), 2, "test")
        busy, go = threading.Event(), threading.Event()

        def first_job():
            busy.set()
            go.wait(10)
            return "first"

        first = w.submit(first_job)
        busy.wait(10)  # the one thread is busy: the next job asks for another
        self.refuse_threads()
        second = w.submit(lambda: "second")
        self.assertEqual(len(w._threads), 1)
        go.set()
        w.stop()  # joins: the running thread took both jobs
        for f, args in calls:
            f(*args)
        self.assertEqual(self.successResultOf(first), "first")
        self.assertEqual(self.successResultOf(second), "second")
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])  # nothing lost: no error


class DurableWriteTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "users")

    def test_write_and_replace(self):
        durable_write(self.path, b"one\n")
        durable_write(self.path, b"two\n", mode=0o640)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        self.assertEqual(os.listdir(self.dir), ["users"])

    def test_keep_mode_keeps_the_old_files_mode_whatever_the_umask(self):
        # root's `mailhub alias add` under umask 077 on a 0644 aliases
        # file: the hub's user must still be able to read the new one
        durable_write(self.path, b"one\n", mode=0o644)
        os.chmod(self.path, 0o644)
        old = os.umask(0o077)
        try:
            durable_write(self.path, b"two\n", mode=0o600, keep_mode=True)
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
            durable_write(self.path, b"three\n")  # without it: the mode given
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
            os.unlink(self.path)
            # none to keep: the mode asked for, exactly (an aliases file
            # made again by root must stay readable by the hub's user)
            durable_write(self.path, b"new\n", mode=0o640, keep_mode=True)
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        finally:
            os.umask(old)

    def test_private_unless_told_otherwise(self):
        durable_write(self.path, b"one\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_a_failed_rename_leaves_no_temporary_file(self):
        os.makedirs(self.path)  # the name is a directory: rename(2) fails
        self.assertRaises(OSError, durable_write, self.path, b"one\n")
        self.assertEqual(os.listdir(self.dir), ["users"])
        self.assertEqual(os.listdir(self.path), [])

    def test_replacement_keeps_the_owner_of_the_old_file(self):
        # `mailhub user add` run as root on the users file of a hub that
        # runs as `mailhub`: the new file must stay mailhub's
        durable_write(self.path, b"one\n")
        st = os.stat(self.path)
        self.assertEqual(sync.owner_of(self.path), (st.st_uid, st.st_gid))
        self.assertIsNone(sync.owner_of(self.path + ".missing"))
        owner = (st.st_uid + 4242, st.st_gid + 4343)  # another user's file
        self.patch(sync, "owner_of", lambda path: owner if path == self.path else None)
        given = []
        self.patch(os, "fchown", lambda fd, uid, gid: given.append((uid, gid)))
        durable_write(self.path, b"two\n")
        self.assertEqual(given, [owner])

    def test_a_full_disk_names_the_file_and_leaves_it_as_it_was(self):
        durable_write(self.path, b"one\n")

        def full(fd, data):
            raise OSError(28, "No space left on device")

        self.patch(os, "write", full)
        with self.assertRaises(OSError) as info:
            durable_write(self.path, b"two\n")
        self.assertEqual(info.exception.errno, 28)
        self.assertEqual(info.exception.filename, self.path)
        self.assertEqual(str(info.exception),
                         f"[Errno 28] No space left on device (unchanged): '{self.path}'")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"one\n")
        self.assertEqual(os.listdir(self.dir), ["users"])

    def test_a_new_file_or_our_own_is_not_chowned(self):
        given = []
        self.patch(os, "fchown", lambda fd, uid, gid: given.append((uid, gid)))
        durable_write(self.path, b"one\n")
        durable_write(self.path, b"two\n")
        self.assertEqual(given, [])

    def test_order_is_write_fsync_rename_fsync_dir(self):
        events = []
        real_fsync, real_replace = os.fsync, os.replace

        def spy_fsync(fd):
            events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def spy_replace(a, b):
            events.append(("rename", os.path.basename(b)))
            real_replace(a, b)

        self.patch(os, "fsync", spy_fsync)
        self.patch(os, "replace", spy_replace)
        durable_write(self.path, b"data\n")
        real_dir = os.path.realpath(self.dir)
        self.assertEqual(len(events), 3)
        self.assertEqual(events[0][0], "fsync")
        self.assertTrue(os.path.basename(events[0][1]).startswith(".users."))
        self.assertEqual(events[1:], [("rename", "users"), ("fsync", real_dir)])

    def test_failed_fsync_keeps_the_old_content_and_no_temp_file(self):
        durable_write(self.path, b"old\n")

        def broken(fd):
            raise OSError(5, "EIO")

        self.patch(os, "fsync", broken)
        self.assertRaises(OSError, durable_write, self.path, b"new\n")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"old\n")
        self.assertEqual(os.listdir(self.dir), ["users"])

    def _leftover(self, pid=4242, age=3600.0, name=None):
        """A temporary file as a writer of ``self.path`` leaves it when
        killed before its rename, ``age`` seconds old."""
        tmp = os.path.join(self.dir, name or f".users.{pid}.0badf00d.tmp")
        with open(tmp, "wb") as f:
            f.write(b"half a users fi")
        old = time.time() - age
        os.utime(tmp, (old, old))
        return tmp

    def test_a_dead_writer_s_temporary_file_is_removed_by_the_next_write(self):
        # a `mailhub user add` killed between the open and the rename:
        # its temporary file was never read nor removed, for good
        durable_write(self.path, b"one\n")
        dead = self._leftover()
        ours = self._leftover(pid=os.getpid(), name=f".users.{os.getpid()}.12345678.tmp")
        other = self._leftover(name=".users.lock.4242.0badf00d.tmp")  # another file's
        look_alike = self._leftover(name=".users.4242.not-ours.tmp")
        durable_write(self.path, b"two\n")
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(["users", os.path.basename(other),
                                 os.path.basename(look_alike)]))
        self.assertFalse(os.path.exists(dead) or os.path.exists(ours))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"two\n")

    def test_a_temporary_file_being_written_is_left_alone(self):
        # the lock its writer holds says it is alive, however old the file
        # and whatever process id its name carries
        tmp = self._leftover()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            durable_write(self.path, b"one\n")
            self.assertEqual(sync.remove_stale_temporaries(self.path), [])
            self.assertTrue(os.path.exists(tmp))
        finally:
            os.close(fd)  # the writer dies: its lock goes with it
        self.assertEqual(sync.remove_stale_temporaries(self.path), [os.path.basename(tmp)])

    def test_a_fresh_temporary_file_is_left_alone(self):
        # made a moment ago: its writer may not have taken its lock yet
        tmp = self._leftover(age=1.0)
        durable_write(self.path, b"one\n")
        self.assertTrue(os.path.exists(tmp))
        self.assertEqual(sync.remove_stale_temporaries(
            self.path, now=time.time() + sync.STALE_TEMPORARY_AGE), [os.path.basename(tmp)])

    def test_two_writers_of_one_file_leave_each_other_alone(self):
        # a second write of the same file while the first one is between
        # its open and its rename (another thread, another process): the
        # first one's temporary file is not taken for a leftover, even old
        real_fsync = os.fsync
        nested = []

        def fsync_then_write_again(fd):
            real_fsync(fd)
            if not nested and stat.S_ISREG(os.fstat(fd).st_mode):
                nested.append(True)
                os.utime(fd, (0, 0))  # as old as can be
                durable_write(self.path, b"second\n")

        self.patch(os, "fsync", fsync_then_write_again)
        durable_write(self.path, b"first\n")  # its rename must still find its file
        self.assertEqual(nested, [True])
        self.assertEqual(os.listdir(self.dir), ["users"])
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"first\n")

    def test_another_process_s_temporary_file_is_left_alone_while_it_lives(self):
        import subprocess
        import sys

        tmp = self._leftover()
        writer = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "sys.stdin.read()\n", tmp],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(writer.stdout.readline(), "locked\n")
            durable_write(self.path, b"one\n")
            self.assertTrue(os.path.exists(tmp))
        finally:
            writer.stdin.close()
            writer.wait(10)
            writer.stdout.close()
        durable_write(self.path, b"two\n")  # the writer is gone
        self.assertFalse(os.path.exists(tmp))

    def test_fsync_path_accepts_fd_and_path(self):
        durable_write(self.path, b"x")
        synced = []
        real_fsync = os.fsync

        def spy(fd):
            synced.append(os.fstat(fd).st_ino)
            real_fsync(fd)

        self.patch(os, "fsync", spy)
        inode = os.stat(self.path).st_ino
        fsync_path(self.path)
        self.assertEqual(synced, [inode])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fsync_path(fd)
            self.assertEqual(synced, [inode, inode])
            os.fstat(fd)  # a given fd is left open: it is the caller's
        finally:
            os.close(fd)
        self.assertRaises(FileNotFoundError, fsync_path, self.path + ".missing")


class Publication:
    """A ``sync_then`` publication that records what the worker ran."""

    def __init__(self, calls, dirs=(), run_error=None, name="p"):
        self.calls = calls
        self.dirs = list(dirs)
        self.run_error = run_error
        self.name = name
        self.failed = None

    def run(self):
        self.calls.append(("run", self.name))
        if self.run_error is not None:
            raise self.run_error
        return self.dirs

    def settle(self, failed):
        self.calls.append(("settle", self.name))
        self.failed = failed
        return ("settled", self.name)


class SyncThenTests(SynchronousTestCase):
    """One batch: the target's fsync, the publication, its directories."""

    def setUp(self):
        self.threads = ManualThreads()

    def test_publication_runs_after_the_target_and_before_its_directories(self):
        spy = SyscallSpy(self)
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        pub = Publication(spy.calls, dirs=["/md/new"])
        d = s.sync_then(3, pub)
        self.assertNoResult(d)
        self.assertEqual(self.threads.run_all(), 1)  # one thread job for all of it
        self.assertEqual(spy.calls, [("fsync", 3), ("run", "p"), ("fsync", "/md/new"),
                                     ("settle", "p")])
        self.assertEqual(self.successResultOf(d), ("settled", "p"))
        self.assertEqual(pub.failed, {})
        self.assertEqual(s.batches, 1)

    def test_directories_named_twice_in_a_batch_are_synced_once(self):
        spy = SyscallSpy(self)
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        s.sync_file("/busy")  # keeps the syncer busy: the next two share a batch
        ds = [s.sync_then(fd, Publication(spy.calls, dirs=["/md/new"], name=str(fd)))
              for fd in (4, 5)]
        self.threads.run_all()
        spy.calls.clear()
        self.assertEqual(self.threads.run_all(), 1)
        self.assertEqual(spy.calls, [("fsync", 4), ("fsync", 5), ("run", "4"), ("run", "5"),
                                     ("fsync", "/md/new"), ("settle", "4"), ("settle", "5")])
        self.assertEqual([self.successResultOf(d) for d in ds],
                         [("settled", "4"), ("settled", "5")])

    def test_a_fork_in_a_publications_callback_leaves_the_rest_to_the_parent(self):
        # as for plain requests: the other publications of the batch are
        # the parent's once a caller's callback has forked
        spy = SyscallSpy(self)
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        s.sync_file("/busy")  # keeps the syncer busy: the next two share a batch
        first, second = (s.sync_then(fd, Publication(spy.calls, name=str(fd)))
                         for fd in (4, 5))
        first.addCallback(lambda _: s._forked())
        self.threads.run_all()
        self.threads.run_all()
        self.assertEqual(self.successResultOf(first), None)
        self.assertNoResult(second)
        self.assertEqual(s._in_flight, 0)

    def test_a_batch_job_that_raises_fails_each_of_its_requests(self):
        # _Batch.run raising is a bug; every request of the batch hears of
        # it, and stop() is not kept waiting for them
        spy = SyscallSpy(self)
        self.patch(sync._Batch, "run", lambda batch: 1 / 0)
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        plain = s.sync_file("/busy")  # keeps the syncer busy: the next two share a batch
        ds = [s.sync_file("/a"), s.sync_then(4, Publication(spy.calls))]
        self.threads.run_all()
        self.successResultOf(plain)  # one request alone is no _Batch
        self.threads.run_all()
        for d in ds:
            self.failureResultOf(d, ZeroDivisionError)
        self.successResultOf(s.stop())

    def test_a_failed_target_is_never_published(self):
        error = OSError(5, "I/O error")
        spy = SyscallSpy(self, fail={6: error})
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        d = s.sync_then(6, Publication(spy.calls, dirs=["/md/new"]))
        self.threads.run_all()
        self.assertEqual(spy.calls, [("fsync", 6)])
        self.assertIs(self.failureResultOf(d, OSError).value, error)

    def test_a_failed_directory_reaches_settle(self):
        error = OSError(28, "No space left on device")
        spy = SyscallSpy(self, fail={"/md/new": error})
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        pub = Publication(spy.calls, dirs=["/md/new", "/other/new"])
        d = s.sync_then(7, pub)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(d), ("settled", "p"))
        self.assertEqual(pub.failed, {"/md/new": error})

    def test_syncfs_directory_failures_reach_settle(self):
        # a filesystem whose syncfs fails, and a directory gone since run():
        # neither may settle as durable
        base, other = self.mktemp(), self.mktemp()
        os.makedirs(base)
        os.makedirs(other)
        target = os.path.join(other, "f")
        open(target, "wb").close()
        error = OSError(5, "I/O error")
        spy = SyscallSpy(self, fail={base: error})
        s = Syncer(None, method="syncfs", run_in_thread=self.threads)
        gone = os.path.join(base, "gone")
        pub = Publication(spy.calls, dirs=[base, gone])
        d = s.sync_then(target, pub)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(d), ("settled", "p"))
        self.assertEqual(set(pub.failed), {base, gone})
        self.assertIs(pub.failed[base], error)
        self.assertIsInstance(pub.failed[gone], FileNotFoundError)

    def test_a_publication_that_raises_fails_alone(self):
        spy = SyscallSpy(self)
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        s.sync_file("/busy")
        bad = s.sync_then(8, Publication(spy.calls, run_error=ValueError("bug"), name="bad"))
        good = s.sync_then(9, Publication(spy.calls, dirs=["/d"], name="good"))
        plain = s.sync_file(8)  # the same target as the bad one, asked for plainly
        self.threads.run_all()
        self.threads.run_all()
        self.failureResultOf(bad, ValueError)
        self.assertEqual(self.successResultOf(good), ("settled", "good"))
        self.assertIsNone(self.successResultOf(plain))
        self.assertEqual(s._in_flight, 0)
        self.assertNotIn(("settle", "bad"), spy.calls)

    def test_syncfs_syncs_the_directories_through_their_filesystem(self):
        spy = SyscallSpy(self)
        d = self.mktemp()
        os.makedirs(d)
        s = Syncer(None, method="syncfs", run_in_thread=self.threads)
        result = s.sync_then(d, Publication(spy.calls, dirs=[d]))
        self.threads.run_all()
        self.assertEqual(spy.calls, [("syncfs", d), ("run", "p"), ("syncfs", d),
                                     ("settle", "p")])
        self.assertEqual(self.successResultOf(result), ("settled", "p"))

    def test_after_stop_nothing_is_published(self):
        s = Syncer(None, method="fsync", run_in_thread=self.threads)
        self.successResultOf(s.stop())
        calls = []
        d = s.sync_then(3, Publication(calls))
        self.failureResultOf(d, LocalError)
        self.assertEqual(calls, [])

    def test_real_threads_publish_real_links(self):
        """With the worker threads: the link exists once the Deferred fires."""
        base = self.mktemp()
        os.makedirs(os.path.join(base, "new"))
        src = os.path.join(base, "spool")
        fd = os.open(src, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        dst = os.path.join(base, "new", "m")

        class Link:
            def run(self):
                os.link(src, dst)
                return [os.path.join(base, "new")]

            def settle(self, failed):
                return failed

        done = threading.Event()
        results = []

        class Reactor:
            def callFromThread(self, f, *a):
                f(*a)
                done.set()

        s = Syncer(Reactor(), method="fsync")
        s.start()
        try:
            s.sync_then(fd, Link()).addBoth(results.append)
            self.assertTrue(done.wait(10))
        finally:
            os.close(fd)
            s.stop()
        self.assertEqual(results, [{}])
        self.assertTrue(os.path.exists(dst))


def test_syncfs_goes_through_a_held_descriptor_first(tmp_path, monkeypatch):
    # syncfs reports a writeback error only to descriptions opened before
    # it: a descriptor the caller holds beats a directory opened just now.
    used = []
    def syncfs(fd, close=False):
        used.append((fd, close))
        if close:
            os.close(fd)

    monkeypatch.setattr(sync, "syncfs", syncfs)
    with open(tmp_path / "f", "wb") as f:
        sync._syncfs_one_of([str(tmp_path), f.fileno()])
        assert used == [(f.fileno(), False)]
    used.clear()
    sync._syncfs_one_of([str(tmp_path / "gone"), str(tmp_path)])  # paths only: first that opens
    assert len(used) == 1 and used[0][1] is True


def test_syncfs_reports_a_failed_call(tmp_path, monkeypatch):
    # syncfs(2) returns -1 and sets errno (EIO: writeback lost data): the
    # error reaches the caller, or a lost batch would be acknowledged
    class Libc:
        def syncfs(self, fd):
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(sync, "_load_libc", Libc)
    fd = os.open(tmp_path, os.O_RDONLY)
    with pytest.raises(OSError) as caught:
        sync.syncfs(fd, close=True)
    assert caught.value.errno == errno.EIO
    with pytest.raises(OSError):
        os.fstat(fd)  # closed all the same


@pytest.mark.parametrize("libc_has_it", [True, False])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, libc_has_it):
    sync_module = sync
    if not libc_has_it:  # an old libc: link, then unlink
        class NoRenameat2:
            pass

        monkeypatch.setattr(sync_module, "_load_libc", NoRenameat2)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        sync_module.rename_noreplace(str(a), str(b))
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    b.unlink()
    sync_module.rename_noreplace(str(a), str(b))
    assert b.read_bytes() == b"A" and not a.exists()
    with pytest.raises(FileNotFoundError):
        sync_module.rename_noreplace(str(a), str(b))


@pytest.mark.parametrize(("release", "available"), [("5.4.0-150-generic", False),
                                                    ("4.19.0", False), ("5.7.19", False),
                                                    ("5.8.0", True),
                                                    ("6.1.0-13-amd64", True)])
def test_syncfs_counts_only_from_linux_5_8(monkeypatch, release, available):
    # before 5.8 syncfs(2) does not report writeback errors: a batch whose
    # data was lost would be acknowledged
    monkeypatch.setattr(sync.sys, "platform", "linux")
    monkeypatch.setattr(sync.platform, "release", lambda: release)
    monkeypatch.setattr(sync, "_load_libc", lambda: type("Libc", (), {"syncfs": None})())
    assert sync.syncfs_available() is available


# A real fork after start(), in a process of its own (a fork inside pytest
# would copy the test run).  The parent forks in a callback of a sync (the
# rest of that callback chain then runs in the child too) with another
# sync in flight, then waits for the child without turning its reactor
# (whose epoll set and waker pipe Twisted shares between the two).  The
# child syncs a file and a directory and stops the syncer, each step
# within a time limit.  Then, "both": the parent's request in flight and
# a new one complete on the parent's own threads or ring; "leave": the
# parent leaves without its reactor, as when daemonizing, and the child
# shuts its reactor down, with nothing logged as failed.  A heartbeat
# keeps the reactors turning: a wake-up through the shared waker pipe may
# reach the other process.
_FORK_SCRIPT = r"""
import os, sys, traceback

method, reactor_name, mode, base = sys.argv[1:5]
if reactor_name != "default":
    import importlib
    importlib.import_module(f"twisted.internet.{reactor_name}reactor").install()
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from txmailhub.store.sync import Syncer

LIMIT = 10
failures = []
globalLogPublisher.addObserver(
    lambda e: e.get("log_failure") is not None and failures.append(e["log_failure"]))


def write(name):
    path = os.path.join(base, name)
    with open(path, "wb") as f:
        f.write(b"x\n")
    return path


def within(d):
    return d.addTimeout(LIMIT, reactor)


def child(s, parents_ring):
    code = 3
    try:
        yield within(s.sync_file(write("child")))
        yield within(s.sync_dir(base))
        if method == "aio":
            assert s.aio is not None and s.aio is not parents_ring, "no ring of its own"
            assert not s.aio.broken, "the child fell back to fsync here"
            assert s.aio.requests == 2, s.aio.requests
        yield within(s.stop())
        code = 0
    except BaseException:
        traceback.print_exc()
    if mode == "both" or code:
        os._exit(code)
    reactor.stop()


@defer.inlineCallbacks
def main():
    s = Syncer(reactor, method=method)
    s.start()
    yield within(s.sync_file(write("before")))  # the threads or ring at work
    parents_ring = s.aio
    in_flight = s.sync_file(write("in-flight"))  # the parent's, over the fork
    pid = os.fork()
    if pid == 0:
        yield from child(s, parents_ring)
        return
    _, status = os.waitpid(pid, 0)
    if mode == "leave":
        os._exit(os.waitstatus_to_exitcode(status))
    try:
        yield within(in_flight)
        yield within(s.sync_file(write("parent")))
        if method == "aio":
            assert s.aio is parents_ring and not s.aio.broken
        yield within(s.stop())
    except BaseException:
        traceback.print_exc()
        status = 1 << 8 if not status else status
    print("child", os.waitstatus_to_exitcode(status), flush=True)
    reactor.stop()


task.LoopingCall(lambda: None).start(0.05)
reactor.callWhenRunning(main)
reactor.run()
for failure in failures:
    print(failure.getTraceback(), file=sys.stderr)
os._exit(4 if failures else 0)
"""


@pytest.mark.parametrize("mode", ["both", "leave"])
@pytest.mark.parametrize("reactor_name", ["default", "poll"])
@pytest.mark.parametrize("method", ["fsync", "aio"])
def test_a_fork_after_start_syncs_in_child_and_parent(tmp_path, method, reactor_name, mode):
    import subprocess
    import sys

    import txmailhub

    if method == "aio":
        ring = sync.open_ring()
        if ring is None:
            pytest.skip("no native AIO here")
        ring.close()
    script = tmp_path / "fork.py"
    script.write_text(_FORK_SCRIPT)
    base = tmp_path / "files"
    base.mkdir()
    root = os.path.dirname(os.path.dirname(txmailhub.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = subprocess.run(
        [sys.executable, str(script), method, reactor_name, mode, str(base)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    if mode == "both":
        assert "child 0" in run.stdout, (run.stdout, run.stderr)
        assert sorted(os.listdir(base)) == ["before", "child", "in-flight", "parent"]
    else:
        assert sorted(os.listdir(base)) == ["before", "child", "in-flight"]


def test_makedirs_durably_fsyncs_the_parent_of_each_folder_it_made(tmp_path, monkeypatch):
    # the hub's state_dir: acknowledged mail lives under it, so its name
    # and the names of the folders made on the way must survive a crash
    synced: list[str] = []
    monkeypatch.setattr(sync, "fsync_dir", synced.append)
    target = tmp_path / "a" / "b" / "state"
    made = sync.makedirs_durably(str(target), mode=0o700)
    assert made == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(target)]
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    synced.clear()
    assert sync.makedirs_durably(str(target)) == [] and synced == []


def test_sync_parents_fsyncs_a_shared_parent_once(tmp_path, monkeypatch):
    synced: list[str] = []
    monkeypatch.setattr(sync, "fsync_dir", synced.append)
    sync.sync_parents([str(tmp_path / "a" / "x"), str(tmp_path / "b"), str(tmp_path / "a" / "y")])
    assert synced == [str(tmp_path / "a"), str(tmp_path)]


def test_missing_folders_are_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sync.missing_folders(os.path.join("a", "b")) == [
        str(tmp_path / "a"), str(tmp_path / "a" / "b")]


def test_a_dangling_link_is_no_missing_folder(tmp_path):
    # makedirs would not make it (the link is in the way): nothing to sync
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert sync.missing_folders(str(tmp_path / "link")) == []


def test_a_write_by_folder_descriptor_names_its_files_whole_in_errors(tmp_path):
    # ``mailhub user`` and ``mailhub alias`` write in their file's folder
    # held open (``dir_fd``): a failure to make the temporary file or to
    # rename it named the file by its bare name, and the admin read
    # "mailhub: .users.123.0a1b2c3d.tmp: File name too long" with no folder
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        long_name = str(tmp_path / ("u" * 240))  # its temporary file's name is too long
        with pytest.raises(OSError) as made:
            durable_write(long_name, b"x\n", dir_fd=fd)
        assert made.value.errno == errno.ENAMETOOLONG
        assert os.path.dirname(made.value.filename) == str(tmp_path)
        folder = tmp_path / "users"
        (folder / "in").mkdir(parents=True)  # no file may replace a folder
        with pytest.raises(OSError) as renamed:
            durable_write(str(folder), b"x\n", dir_fd=fd)
        assert os.path.dirname(renamed.value.filename) == str(tmp_path)
        assert renamed.value.filename2 == str(folder)
        assert str(tmp_path) in str(renamed.value)
        assert sorted(os.listdir(tmp_path)) == ["users"]  # no temporary file left
    finally:
        os.close(fd)
