"""txmailhub.store.maildir: delivery, durability order, snapshots, locking."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import pytest
from conftest import not_waiting_on
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txmailhub.address import Address
from txmailhub.errors import LocalError, MailboxInUse, MailboxTurnAbandoned
from txmailhub.interfaces import IMailbox, IMailboxStore, ISpoolingStore
from txmailhub.store import mailbox as mailbox_module
from txmailhub.store import maildir as maildir_module
from txmailhub.store import nowait as nowait_module
from txmailhub.store import sync as sync_module
from txmailhub.store.mailbox import scan
from txmailhub.store.maildir import (
    SIZES_NAME,
    CRLFEncoder,
    MaildirStore,
    MessageInfo,
    Snapshot,
    crlf_size_of,
    maildir_path,
    uid_for_name,
)
from txmailhub.store.spool import Spooler
from txmailhub.store.sync import Syncer
from txmailhub.testing import SyncerSpy

JOE = Address("joe", "example.org")
ANN = Address("ann", "example.org")
BODY = b"Return-Path: <a@b.test>\nSubject: hi\n\nline one\n.leading dot\n"


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        self.now += 0.001
        return self.now


class CallRecorder(SyncerSpy):
    """A ``SyncerSpy`` whose ``call()`` keeps each job for the test to run,
    as the worker threads would: later, and not on the caller's thread
    (``run_jobs`` runs them on a thread of their own, then fires their
    Deferreds on the caller's, as the reactor would)."""

    def __init__(self):
        super().__init__()
        self.jobs = []

    def call(self, f, *args):
        d = defer.Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_jobs(self):
        """Run the jobs asked for so far (not those their results ask for)."""
        jobs, self.jobs = self.jobs, []
        for f, args, d in jobs:
            out = []

            def work(f=f, args=args, out=out):
                try:
                    out.append((True, f(*args)))
                except Exception as e:
                    out.append((False, e))

            worker = threading.Thread(target=work, name="test-worker")
            worker.start()
            worker.join()
            ok, value = out[0]
            if ok:
                d.callback(value)
            else:
                d.errback(value)


class _Timer:
    """A ``callLater`` call that never fires by itself (``close_soon``)."""

    def active(self):
        return True

    def cancel(self):
        pass


class Base(SynchronousTestCase):
    def setUp(self):
        self.state = os.path.abspath(self.mktemp())
        self.syncer = SyncerSpy()
        self.spooler = Spooler(os.path.join(self.state, "spool"), self.syncer)
        # its lock and up to 16 ready spool files: descriptors, not memory
        self.addCleanup(self.spooler.close)
        self.clock = Clock()
        self.store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org",
                                  self.syncer, clock=self.clock)
        self.addCleanup(self._no_marks_left)

    def _no_marks_left(self):
        # every delivery over (copied, failed, refused by a stopped
        # syncer, not durable): none of its tmp/ paths is still marked
        # (writing_tmp), or the marks would grow for the life of the hub;
        # cleared after the look, so one test's leak fails that test alone
        left = dict(mailbox_module._writing)
        mailbox_module._writing.clear()
        self.assertEqual(left, {})

    def spool(self, data=BODY):
        w = self.spooler.open()
        w.write(data)
        hold, self.syncer.hold = self.syncer.hold, False
        try:
            return self.successResultOf(w.finish())
        finally:
            self.syncer.hold = hold

    def deliver(self, mailboxes, data=BODY):
        msg = self.spool(data)
        out = self.successResultOf(self.store.deliver(msg, mailboxes))
        self.spooler.discard(msg)
        return out

    def store_without_links(self, code=errno.EXDEV):
        """A second store on the same folders whose hard links all fail
        with ``code`` (another filesystem by default): it copies."""
        def refuse(src, dst):
            raise OSError(code, os.strerror(code))

        return MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer, link=refuse)

    def md(self, address=JOE):
        return self.store.maildir_path(address)

    def names(self, address=JOE, sub="new"):
        return sorted(os.listdir(os.path.join(self.md(address), sub)))

    def open(self, address=JOE):
        return self.successResultOf(self.store.open_mailbox(address))


class DeliveryTests(Base):
    def test_interfaces(self):
        self.assertTrue(verifyObject(IMailboxStore, self.store))
        box = self.open()
        self.assertTrue(verifyObject(IMailbox, box))
        box.close()

    def test_hard_link_from_the_spool_file(self):
        msg = self.spool()
        out = self.successResultOf(self.store.deliver(msg, [JOE, ANN]))
        self.assertEqual(out, {JOE: None, ANN: None})
        spool_ino = os.stat(msg.path).st_ino
        for who in (JOE, ANN):
            (name,) = self.names(who)
            path = os.path.join(self.md(who), "new", name)
            self.assertEqual(os.stat(path).st_ino, spool_ino)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), BODY)  # LF line endings, as given
            self.assertTrue(name.endswith(f",S={len(BODY)},W={crlf_size_of(BODY)}"))
        self.assertEqual(os.stat(msg.path).st_nlink, 3)
        self.spooler.discard(msg)
        (name,) = self.names(JOE)
        self.assertEqual(os.stat(os.path.join(self.md(), "new", name)).st_nlink, 2)

    def test_layout_is_domain_then_lower_cased_local_part(self):
        self.deliver([Address("Joe.Smith", "Example.ORG")])
        md = os.path.join(self.state, "mail", "example.org", "joe.smith")
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(md, sub)))
        self.assertEqual(len(os.listdir(os.path.join(md, "new"))), 1)

    def test_maildir_folders_are_private(self):
        # mail is the user's alone: no other local account may list it
        self.deliver([JOE])
        md = self.md()
        for path in (os.path.dirname(md), md, *(os.path.join(md, s) for s in ("tmp", "new",
                                                                             "cur"))):
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o700, path)

    def test_a_new_mail_directory_is_made_durable_in_its_parent(self):
        synced = []
        self.patch(sync_module, "fsync_dir", synced.append)
        state = os.path.abspath(self.mktemp())
        os.mkdir(state)
        MaildirStore(os.path.join(state, "mail"), "mail.example.org", self.syncer)
        self.assertEqual(synced, [state])
        MaildirStore(os.path.join(state, "mail"), "mail.example.org", self.syncer)
        self.assertEqual(synced, [state])  # only when it was made

    def test_nothing_is_acknowledged_before_the_directories_are_durable(self):
        msg = self.spool()
        self.syncer.calls.clear()
        self.syncer.hold = True
        d = self.store.deliver(msg, [JOE, ANN])
        self.assertNoResult(d)
        synced = [t for _, t in self.syncer.calls]
        mail = os.path.join(self.state, "mail")
        for who in (JOE, ANN):
            self.assertIn(os.path.join(self.md(who), "new"), synced)
            self.assertIn(self.md(who), synced)  # tmp/new/cur were just created
        self.assertIn(os.path.join(mail, "example.org"), synced)
        self.assertIn(mail, synced)
        self.syncer.release()
        self.assertEqual(self.successResultOf(d), {JOE: None, ANN: None})

        # the second delivery only syncs new/: the creation is durable now
        self.syncer.calls.clear()
        d = self.store.deliver(msg, [JOE])
        self.assertEqual(self.syncer.calls, [("dir", os.path.join(self.md(), "new"))])
        self.syncer.release()
        self.successResultOf(d)

    def test_the_whole_path_in_order(self):
        events = []
        syncer = SyncerSpy(events=events)
        spooler = Spooler(os.path.join(self.state, "spool2"), syncer)
        self.addCleanup(spooler.close)

        def link(src, dst):
            events.append(("link", os.path.basename(os.path.dirname(dst))))
            os.link(src, dst)

        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer, link=link)
        self.deliver([JOE])  # the Maildir exists and is durable
        # a store's first visit to a Maildir also syncs the path to it, once
        self.successResultOf(store.deliver(self.spool(), [JOE]))
        del events[:]
        w = spooler.open()
        w.write(BODY)
        syncer.hold = True
        d = w.finish()
        self.assertEqual([kind for kind, _ in events], ["file"])  # data first
        syncer.release()
        msg = self.successResultOf(d)
        out = store.deliver(msg, [JOE])
        self.assertNoResult(out)  # linked, but the directory is not durable yet
        self.assertEqual(events[1:], [("link", "new"), ("dir", os.path.join(self.md(), "new"))])
        syncer.release()
        self.assertEqual(self.successResultOf(out), {JOE: None})

    def test_each_mailbox_fails_on_its_own(self):
        self.deliver([JOE, ANN])  # both Maildirs exist
        msg = self.spool()
        boom = OSError(errno.EIO, "I/O error")
        self.syncer.fail[os.path.join(self.md(ANN), "new")] = boom
        bad = Address("a/b", "example.org")
        out = self.successResultOf(self.store.deliver(msg, [JOE, ANN, bad, JOE]))
        self.assertEqual(set(out), {JOE, ANN, bad})
        self.assertIsNone(out[JOE])
        self.assertIs(out[ANN], boom)
        self.assertIsInstance(out[bad], LocalError)
        self.assertEqual(len(self.names(JOE)), 2)
        # the copy that could not be made durable is taken back: no duplicate on retry
        self.assertEqual(len(self.names(ANN)), 1)

    def test_a_failed_creation_is_synced_again_next_time(self):
        mail = os.path.join(self.state, "mail", "example.org")
        self.syncer.fail[mail] = OSError(errno.EIO, "I/O error")
        out = self.deliver([JOE])
        self.assertIsInstance(out[JOE], OSError)
        self.assertEqual(self.names(JOE), [])
        del self.syncer.fail[mail]
        self.syncer.calls.clear()
        self.assertEqual(self.deliver([JOE]), {JOE: None})
        self.assertIn(("dir", mail), self.syncer.calls)

    def test_copy_when_links_are_impossible(self):
        store = self.store_without_links()
        self.deliver([JOE])  # make the Maildir first
        self.successResultOf(store.deliver(self.spool(), [JOE]))  # store's first visit
        msg = self.spool()
        self.syncer.calls.clear()
        self.syncer.hold = True
        d = store.deliver(msg, [JOE])
        tmp = os.listdir(os.path.join(self.md(), "tmp"))
        self.assertEqual(len(tmp), 1)
        self.assertEqual(len(self.names()), 2)  # nothing new visible yet
        (kind, fd), = self.syncer.calls
        self.assertEqual(kind, "file")
        self.assertIsInstance(fd, int)
        self.syncer.release()  # the copy is durable: now it is renamed into new/
        self.assertNoResult(d)
        self.assertEqual(self.syncer.calls[-1], ("dir", os.path.join(self.md(), "new")))
        self.assertEqual(len(self.names()), 3)
        self.syncer.release()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(os.listdir(os.path.join(self.md(), "tmp")), [])
        new = [n for n in self.names() if n.startswith(tmp[0])]
        path = os.path.join(self.md(), "new", new[0])
        self.assertNotEqual(os.stat(path).st_ino, os.stat(msg.path).st_ino)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), BODY)

    def test_a_copy_is_private_whatever_the_umask(self):
        self.addCleanup(os.umask, os.umask(0o022))
        store = self.store_without_links()
        self.assertEqual(self.successResultOf(store.deliver(self.spool(), [JOE])), {JOE: None})
        [name] = self.names()
        self.assertEqual(os.stat(os.path.join(self.md(), "new", name)).st_mode & 0o777, 0o600)

    def test_failed_copy_leaves_nothing(self):
        store = self.store_without_links(errno.EMLINK)
        self.deliver([JOE])
        self.successResultOf(store.deliver(self.spool(), [JOE]))  # store's first visit
        msg = self.spool()
        self.syncer.hold = True
        self.syncer.calls.clear()
        self.syncer.fail_kind["file"] = OSError(errno.EIO, "I/O error")
        d = store.deliver(msg, [JOE])
        (kind, _fd), = self.syncer.calls
        self.assertEqual(kind, "file")
        self.assertEqual(len(os.listdir(os.path.join(self.md(), "tmp"))), 1)
        self.syncer.release()
        self.assertIsInstance(self.successResultOf(d)[JOE], OSError)
        self.assertEqual(os.listdir(os.path.join(self.md(), "tmp")), [])
        self.assertEqual(len(self.names()), 2)

    def test_every_cannot_link_error_falls_back_to_a_copy(self):
        # EPERM: a filesystem without hard links (vfat, some FUSE ones);
        # EMLINK: the link limit; EXDEV: another filesystem; ENOTSUP
        self.deliver([JOE])
        codes = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)
        for code in codes:
            store = self.store_without_links(code)
            self.assertEqual(self.successResultOf(store.deliver(self.spool(), [JOE])),
                             {JOE: None}, errno.errorcode[code])
        self.assertEqual(len(self.names()), 1 + len(codes))

    def test_a_copy_whose_new_folder_is_not_durable_is_taken_back(self):
        store = self.store_without_links()
        self.deliver([JOE])
        self.successResultOf(store.deliver(self.spool(), [JOE]))  # store's first visit
        self.syncer.fail[os.path.join(self.md(), "new")] = OSError(errno.EIO, "I/O error")
        out = self.successResultOf(store.deliver(self.spool(), [JOE]))
        self.assertEqual(out[JOE].errno, errno.EIO)
        self.assertEqual(len(self.names()), 2)  # no duplicate when the queue retries it
        self.assertEqual(os.listdir(os.path.join(self.md(), "tmp")), [])

    def test_a_copy_keeps_its_descriptor_until_its_own_sync_is_over(self):
        # A folder made for the copy can fail its sync at once while the
        # copy's fsync still waits (for room in the kernel's AIO ring):
        # its descriptor must stay open until that request is over.
        requests = {}

        class Syncer(SyncerSpy):
            def sync_each(self, targets):
                ds = []
                for t in targets:
                    d = requests[t] = defer.Deferred()
                    if isinstance(t, str):
                        d.errback(OSError(errno.EIO, "I/O error"))
                    ds.append(d)
                return ds

        def refuse(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        msg = self.spool()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", Syncer(), link=refuse)
        d = store.deliver(msg, [JOE])  # the first visit: its folders are made
        (fd,) = [t for t in requests if isinstance(t, int)]
        self.assertTrue([t for t in requests if isinstance(t, str)])
        self.assertNoResult(d)
        os.fstat(fd)  # still open
        requests[fd].callback(None)
        self.assertIsInstance(self.successResultOf(d)[JOE], OSError)
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(os.listdir(os.path.join(self.md(), "tmp")), [])

    def test_a_copy_is_complete_after_short_writes_and_its_file_is_closed(self):
        store = self.store_without_links()
        msg = self.spool()
        real = os.write

        def short(fd, data):
            return real(fd, bytes(data[:3]))

        self.patch(maildir_module.os, "write", short)
        self.syncer.calls.clear()
        self.assertEqual(self.successResultOf(store.deliver(msg, [JOE])), {JOE: None})
        (fd,) = [t for kind, t in self.syncer.calls if kind == "file"]
        self.assertRaises(OSError, os.fstat, fd)  # closed once synced
        (name,) = self.names()
        with open(os.path.join(self.md(), "new", name), "rb") as f:
            self.assertEqual(f.read(), BODY)

    def test_a_copy_that_cannot_be_written_leaves_nothing(self):
        store = self.store_without_links()
        self.deliver([JOE])
        msg = self.spool()

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(maildir_module.os, "write", full)
        out = self.successResultOf(store.deliver(msg, [JOE]))
        self.assertEqual(out[JOE].errno, errno.ENOSPC)
        self.assertEqual(os.listdir(os.path.join(self.md(), "tmp")), [])
        self.assertEqual(len(self.names()), 1)

    def copy_spy(self, fail=None):
        """Record the thread of every ``_copy_to`` (the data copy); ``fail``
        maps a Maildir to the error its copy raises."""
        threads = []
        real = maildir_module._copy_to

        def spy(src, dst):
            threads.append(threading.current_thread())
            for md, error in (fail or {}).items():
                if dst.startswith(md + os.sep):
                    raise error
            return real(src, dst)

        self.patch(maildir_module, "_copy_to", spy)
        return threads

    def test_the_copy_runs_on_the_syncer_threads_not_the_reactor(self):
        # A 50 MiB message copied to another filesystem: on the reactor
        # thread, every other session would wait for the whole copy.
        bob = Address("bob", "example.org")
        self.deliver([JOE, ANN, bob])  # the Maildirs exist

        def link(src, dst):  # JOE's folder can link, the others cannot
            if not dst.startswith(self.md(JOE) + os.sep):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            os.link(src, dst)

        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer, link=link)
        threads = self.copy_spy()
        before = self.names(ANN)
        msg = self.spool()
        d = store.deliver(msg, [JOE, ANN, bob])
        # this store meets the Maildirs for the first time: a job of its
        # own looks at their folders first
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.assertEqual(threads, [])  # nothing copied on the caller's thread
        for who in (ANN, bob):
            self.assertEqual(self.names(who, "tmp"), [])
        self.assertNoResult(d)
        self.assertEqual(len(syncer.jobs), 1)  # both copies in one job
        syncer.run_jobs()
        self.assertEqual(len(threads), 2)
        self.assertNotIn(threading.current_thread(), threads)
        self.assertEqual({t.name for t in threads}, {"test-worker"})
        self.assertEqual(self.successResultOf(d), {JOE: None, ANN: None, bob: None})
        for who in (JOE, ANN, bob):
            self.assertEqual(len(self.names(who)), 2)
            self.assertEqual(self.names(who, "tmp"), [])
        (new,) = set(self.names(ANN)) - set(before)
        path = os.path.join(self.md(ANN), "new", new)
        self.assertNotEqual(os.stat(path).st_ino, os.stat(msg.path).st_ino)  # a copy
        with open(path, "rb") as f:
            self.assertEqual(f.read(), BODY)
        # every step after the copy is still there: its data synced, then
        # the rename into new/, then new/ synced
        fds = [t for kind, t in syncer.calls if kind == "file"]
        self.assertEqual(len(fds), 2)
        for fd in fds:
            self.assertRaises(OSError, os.fstat, fd)  # closed once synced
        self.assertIn(("dir", os.path.join(self.md(ANN), "new")), syncer.calls)
        self.spooler.discard(msg)

    def a_copy_held_before_its_sync(self):
        """A copy (no hard links) of a message to JOE, written into tmp/
        and held there before its data sync: the recording syncer and the
        delivery's Deferred."""
        store = self.store_without_links()
        self.deliver([JOE])
        self.successResultOf(store.deliver(self.spool(), [JOE]))  # store's first visit
        syncer = CallRecorder()
        store.syncer = syncer
        syncer.hold = True
        d = store.deliver(self.spool(), [JOE])
        syncer.run_jobs()
        return syncer, d

    def test_a_copy_off_the_reactor_is_not_visible_before_its_data_is_durable(self):
        syncer, d = self.a_copy_held_before_its_sync()
        self.assertEqual(len(self.names(sub="tmp")), 1)  # copied, in tmp/ alone
        self.assertEqual(len(self.names()), 2)
        ((kind, _fd),) = syncer.calls
        self.assertEqual(kind, "file")
        syncer.release()  # the data is durable: renamed into new/, new/ synced
        self.assertNoResult(d)
        self.assertEqual(len(self.names()), 3)
        self.assertEqual(syncer.calls[-1], ("dir", os.path.join(self.md(), "new")))
        syncer.release()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(self.names(sub="tmp"), [])

    def test_a_copy_being_written_survives_a_login_after_a_forward_clock_jump(self):
        # The clock jumps 40 hours forward while a copy waits in tmp/ for
        # its sync: a POP3 login's clean-up (36 hours) must not take it.
        syncer, d = self.a_copy_held_before_its_sync()
        [copy] = self.names(sub="tmp")
        stale = os.path.join(self.md(), "tmp", "left-by-a-crash")
        open(stale, "wb").close()
        for name in (copy, "left-by-a-crash"):
            os.utime(os.path.join(self.md(), "tmp", name), (self.clock.now,) * 2)
        self.clock.now += 40 * 3600
        self.open().close()
        self.assertEqual(self.names(sub="tmp"), [copy])  # the crash's leftover went
        syncer.release()
        syncer.release()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(self.names(sub="tmp"), [])
        self.assertEqual(len(self.names()), 3)
        # done: a leftover under that name would be cleaned again
        open(os.path.join(self.md(), "tmp", copy), "wb").close()
        os.utime(os.path.join(self.md(), "tmp", copy), (self.clock.now - 40 * 3600,) * 2)
        self.open().close()
        self.assertEqual(self.names(sub="tmp"), [])

    def test_a_copy_that_fails_fails_that_mailbox_alone(self):
        bob = Address("bob", "example.org")
        self.deliver([JOE, ANN, bob])
        store = self.store_without_links()
        self.copy_spy(fail={self.md(ANN): OSError(errno.ENOSPC, "No space left on device")})
        self.syncer.fail[os.path.join(self.md(bob), "new")] = OSError(errno.EIO, "I/O error")
        out = self.successResultOf(store.deliver(self.spool(), [JOE, ANN, bob]))
        self.assertIsNone(out[JOE])
        self.assertEqual(out[ANN].errno, errno.ENOSPC)  # the copy itself
        self.assertEqual(out[bob].errno, errno.EIO)  # its new/ could not be synced
        self.assertEqual(len(self.names(JOE)), 2)
        for who in (ANN, bob):
            self.assertEqual(len(self.names(who)), 1)  # nothing left: no duplicate on retry
            self.assertEqual(self.names(who, "tmp"), [])

    def test_a_stopped_syncer_fails_each_copy_and_spares_the_links(self):
        self.deliver([JOE, ANN])

        def link(src, dst):
            if dst.startswith(self.md(ANN) + os.sep):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            os.link(src, dst)

        store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer, link=link)
        # the store has met both Maildirs (a first meeting is a job too)
        self.successResultOf(store.deliver(self.spool(), [JOE, ANN]))
        self.syncer.call = lambda f, *args: defer.fail(LocalError("the syncer is stopped"))
        out = self.successResultOf(store.deliver(self.spool(), [JOE, ANN]))
        self.assertIsNone(out[JOE])
        self.assertIsInstance(out[ANN], LocalError)
        self.assertEqual(len(self.names(JOE)), 3)
        self.assertEqual(len(self.names(ANN)), 2)
        self.assertEqual(self.names(ANN, "tmp"), [])  # no copy was even begun

    def test_a_copy_whose_syncer_stops_before_its_fsync_leaves_nothing(self):
        self.deliver([JOE])
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer,
                             link=self.store_without_links()._link)
        store._ensure(self.md())
        store._synced(self.md(), store._ensure(self.md()))
        d = store.deliver(self.spool(), [JOE])
        syncer.fail_kind["file"] = LocalError("the syncer is stopped")  # meanwhile
        syncer.run_jobs()
        self.assertIsInstance(self.successResultOf(d)[JOE], LocalError)
        ((_, fd),) = syncer.calls
        self.assertRaises(OSError, os.fstat, fd)  # closed
        self.assertEqual(self.names(sub="tmp"), [])
        self.assertEqual(len(self.names()), 1)

    def test_a_syncer_without_call_copies_on_the_callers_thread(self):
        class Plain:
            def __init__(self, spy):
                self.sync_each, self.sync = spy.sync_each, spy.sync

        threads = self.copy_spy()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", Plain(self.syncer),
                             link=self.store_without_links()._link)
        self.assertEqual(self.successResultOf(store.deliver(self.spool(), [JOE])),
                         {JOE: None})
        self.assertEqual(threads, [threading.current_thread()])
        self.assertEqual(len(self.names()), 1)

    def test_other_link_errors_fail_that_mailbox(self):
        def denied(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

        store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer, link=denied)
        msg = self.spool()
        out = self.successResultOf(store.deliver(msg, [JOE]))
        self.assertEqual(out[JOE].errno, errno.ENOSPC)

    def test_first_visit_syncs_every_entry_on_the_way(self):
        # Folders someone else made (a POP3 login, an earlier run that
        # crashed before its fsync) are not known to be durable.
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.md(), sub))
        mail = os.path.join(self.state, "mail")
        self.syncer.calls.clear()
        self.assertEqual(self.deliver([JOE]), {JOE: None})
        dirs = {t for kind, t in self.syncer.calls if kind == "dir"}
        self.assertEqual(dirs, {mail, os.path.join(mail, "example.org"), self.md(),
                                os.path.join(self.md(), "new")})
        self.syncer.calls.clear()
        self.deliver([JOE])
        self.assertEqual([t for kind, t in self.syncer.calls if kind == "dir"],
                         [os.path.join(self.md(), "new")])

    def fail_mkdir_once(self, suffix):
        """The first mkdir of a folder named ``...suffix`` fails (no space)."""
        real_mkdir = os.mkdir
        failed = []

        def mkdir(path, mode=0o777):
            if path.endswith(suffix) and not failed:
                failed.append(path)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_mkdir(path, mode)

        self.patch(os, "mkdir", mkdir)

    def test_a_mkdir_that_fails_half_way_still_gets_its_parents_synced(self):
        self.fail_mkdir_once("tmp")
        out = self.deliver([JOE])
        self.assertIsInstance(out[JOE], OSError)
        self.syncer.calls.clear()
        self.assertEqual(self.deliver([JOE]), {JOE: None})
        mail = os.path.join(self.state, "mail")
        dirs = {t for kind, t in self.syncer.calls if kind == "dir"}
        self.assertTrue({mail, os.path.join(mail, "example.org"), self.md()} <= dirs, dirs)

    def test_a_mkdir_that_failed_is_tried_again_next_time(self):
        # cur/ could not be made (no inode left, say): the next delivery
        # makes it, or POP3 could never move a message out of new/
        self.fail_mkdir_once("cur")
        self.assertIsInstance(self.deliver([JOE])[JOE], OSError)
        self.assertEqual(self.deliver([JOE]), {JOE: None})
        self.assertTrue(os.path.isdir(os.path.join(self.md(), "cur")))

    def test_dot_and_dot_dot_name_no_folder(self):
        for local in (".", ".."):
            bad = Address(local, "example.org")
            out = self.deliver([bad, JOE])
            self.assertIsInstance(out[bad], LocalError)
            self.assertIsNone(out[JOE])
        self.assertEqual(os.listdir(os.path.join(self.state, "mail", "example.org")), ["joe"])

    def test_one_maildir_however_the_domain_is_spelled(self):
        # a final dot, an internationalized domain as its A-label: the same
        # domain, so the same folder (canonical_domain, as Address.key)
        for domain in ("bücher.example", "xn--bcher-kva.example", "bücher.example."):
            self.assertEqual(self.deliver([Address("joe", domain)]),
                             {Address("joe", domain): None})
        self.assertEqual(os.listdir(os.path.join(self.state, "mail")), ["bücher.example"])
        self.assertEqual(len(self.names(Address("joe", "bücher.example"))), 3)

    def test_a_removed_maildir_is_made_again(self):
        self.deliver([JOE])
        import shutil

        shutil.rmtree(self.md())
        self.syncer.calls.clear()
        self.assertEqual(self.deliver([JOE]), {JOE: None})
        self.assertEqual(len(self.names()), 1)
        # the directories made again are synced with the delivery
        self.assertIn(("dir", self.md()), self.syncer.calls)
        self.assertIn(("dir", os.path.dirname(self.md())), self.syncer.calls)

    def test_unique_names_and_uids(self):
        store = MaildirStore(os.path.join(self.state, "mail"), "we/ird:host,name",
                             self.syncer, clock=lambda: 1_700_000_000.5)
        msg = self.spool()
        for _ in range(300):
            self.successResultOf(store.deliver(msg, [JOE]))
        names = self.names()
        self.assertEqual(len(set(names)), 300)
        for name in names:
            self.assertNotIn("/", name)
            self.assertEqual(name.count(":"), 0)
            self.assertIn(r"we\057ird\072host\054name", name)
            self.assertRegex(name, r"^1700000000\.M500000P\d+Q\d+R[0-9a-f]{8}\.")
            uid = uid_for_name(name)
            self.assertRegex(uid, r"^[\x21-\x7e]{1,70}$")
        self.assertEqual(len({uid_for_name(n) for n in names}), 300)

    def test_a_forked_child_names_its_copies_apart_from_its_parent(self):
        # twistd forks to daemonize, an embedding may fork workers: with the
        # parent's pid, tag and counter, two processes would make the same
        # names, and a rename into new/ would replace the other's copy
        msg = self.spool()
        parent = self.store.unique_name(msg)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its next name, and leave at once
            try:
                os.write(w, self.store.unique_name(msg).encode())
            finally:
                os._exit(0)
        os.close(w)
        child = os.read(r, 4096).decode()
        os.close(r)
        os.waitpid(pid, 0)
        self.assertIn(f"P{os.getpid()}Q", parent)
        self.assertIn(f"P{pid}Q", child)
        tag = re.compile(r"R[0-9a-f]{8}\.")
        self.assertNotEqual(tag.search(parent).group(), tag.search(child).group())

    def test_concurrent_deliveries_share_a_batch(self):
        msgs = [self.spool(b"m%d\n" % i) for i in range(5)]
        self.syncer.hold = True
        self.syncer.calls.clear()
        ds = [self.store.deliver(m, [JOE, ANN]) for m in msgs]
        for d in ds:
            self.assertNoResult(d)
        self.syncer.release()
        for d in ds:
            self.assertEqual(self.successResultOf(d), {JOE: None, ANN: None})
        self.assertEqual(len(self.names(JOE)), 5)
        box = self.open()
        got = [box.open_message(i).read() for i in range(5)]
        self.assertEqual(got, [b"m%d\n" % i for i in range(5)])  # delivery order
        box.close()


class MaildirPathTests(Base):
    def test_the_remembered_paths_stay_bounded_and_right_for_many_addresses(self):
        # a path per address is remembered (the same mailboxes get mail all
        # day); a hub that meets more addresses than that keeps no more
        # than 4096, and one met again after they were let go still gets
        # its own folder
        for i in [*range(5000), 0]:
            address = Address(f"User{i}", "Example.ORG")
            self.assertEqual(self.store.maildir_path(address),
                             maildir_path(self.store.mail_dir, address))
            self.assertTrue(self.store.maildir_path(address).endswith(f"/user{i}"))
            self.assertLessEqual(len(self.store._paths), 4096)


class DeliverSpooledTests(Base):
    """``deliver_spooled``: the spool fsync and the copies in one batch."""

    def writer(self, data=BODY):
        w = self.spooler.open()
        w.write(data)
        return w

    def test_interface(self):
        self.assertTrue(verifyObject(ISpoolingStore, self.store))

    def test_links_then_syncs_new_and_discards_the_spool_file(self):
        w = self.writer()
        self.syncer.calls.clear()
        self.syncer.hold = True
        discarded = []
        d = self.store.deliver_spooled(w, [JOE, ANN, JOE], discarded.append)
        self.assertNoResult(d)
        # nothing visible before the data is durable; not even the new
        # Maildirs' folders: they are made in the publication's job
        self.assertFalse(os.path.exists(self.md(JOE)))
        self.syncer.release()
        message, results, gone = self.successResultOf(d)
        self.assertEqual(results, {JOE: None, ANN: None})
        self.assertTrue(gone)
        self.assertEqual(discarded, [message])
        kinds = [k for k, _ in self.syncer.calls]
        self.assertEqual(kinds[0], "file")  # the data first, then the directories
        synced = [t for _, t in self.syncer.calls[1:]]
        for who in (JOE, ANN):
            self.assertIn(os.path.join(self.md(who), "new"), synced)
            self.assertIn(self.md(who), synced)  # tmp/new/cur were just created
            (name,) = self.names(who)
            with open(os.path.join(self.md(who), "new", name), "rb") as f:
                self.assertEqual(f.read(), BODY)
            self.assertTrue(name.endswith(f",S={len(BODY)},W={crlf_size_of(BODY)}"))
        # the creation is durable now: the next message only syncs new/
        self.syncer.hold = False
        self.syncer.calls.clear()
        self.successResultOf(self.store.deliver_spooled(self.writer(), [JOE], None))
        self.assertEqual([t for _, t in self.syncer.calls[1:]],
                         [os.path.join(self.md(JOE), "new")])

    def test_a_directory_that_cannot_be_synced_fails_that_mailbox_alone(self):
        self.deliver([JOE, ANN])  # both Maildirs exist and are durable
        self.syncer.fail[os.path.join(self.md(ANN), "new")] = OSError(errno.EIO, "I/O error")
        discarded = []
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(self.writer(b"second\n"), [JOE, ANN], discarded.append))
        self.assertIsNone(results[JOE])
        self.assertEqual(results[ANN].errno, errno.EIO)
        self.assertFalse(gone)  # the caller still needs it for ANN
        self.assertEqual(discarded, [])
        self.assertTrue(os.path.exists(message.path))
        self.assertEqual(len(self.names(JOE)), 2)
        self.assertEqual(len(self.names(ANN)), 1)  # the unsynced copy was removed again

    def test_a_new_maildir_that_cannot_be_made_durable_fails_that_mailbox_alone(self):
        self.deliver([JOE])  # JOE's Maildir exists and is durable; ANN's is new
        self.syncer.fail[self.md(ANN)] = OSError(errno.EIO, "I/O error")
        discarded = []
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(self.writer(), [JOE, ANN], discarded.append))
        self.assertIsNone(results[JOE])
        self.assertEqual(results[ANN].errno, errno.EIO)
        self.assertFalse(gone)  # the caller still needs it for ANN
        self.assertEqual(discarded, [])
        self.assertTrue(os.path.exists(message.path))
        self.assertEqual(self.names(ANN), [])  # taken back: the queue's retry makes it again
        # the folders are synced again with the next delivery
        del self.syncer.fail[self.md(ANN)]
        self.syncer.calls.clear()
        self.successResultOf(self.store.deliver_spooled(self.writer(), [ANN], None))
        self.assertIn(("dir", self.md(ANN)), self.syncer.calls)

    def test_a_link_the_filesystem_refuses_falls_back_to_a_copy(self):
        def no_links(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.store._link = self.store._rename = no_links
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(self.writer(), [JOE], lambda m: None))
        self.assertEqual(results, {JOE: None})
        self.assertFalse(gone)
        (name,) = self.names(JOE)
        path = os.path.join(self.md(), "new", name)
        self.assertNotEqual(os.stat(path).st_ino, os.stat(message.path).st_ino)  # a copy
        with open(path, "rb") as f:
            self.assertEqual(f.read(), BODY)

    def test_one_mailbox_gets_the_spool_file_itself(self):
        w = self.writer()
        inode = os.stat(w.path).st_ino
        discarded = []
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(w, [JOE], discarded.append))
        self.assertEqual(results, {JOE: None})
        self.assertTrue(gone)
        self.assertEqual(discarded, [])  # renamed: nothing left to discard
        self.assertFalse(os.path.exists(message.path))
        (name,) = self.names(JOE)
        path = os.path.join(self.md(), "new", name)
        self.assertEqual(os.stat(path).st_ino, inode)
        self.assertEqual(os.stat(path).st_nlink, 1)

    def test_a_moved_copy_that_is_not_durable_goes_back_to_the_spool(self):
        self.deliver([JOE])
        self.syncer.fail[os.path.join(self.md(), "new")] = OSError(errno.EIO, "I/O error")
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(self.writer(b"again\n"), [JOE], lambda m: None))
        self.assertEqual(results[JOE].errno, errno.EIO)
        self.assertFalse(gone)
        with open(message.path, "rb") as f:  # back in the spool, for the queue
            self.assertEqual(f.read(), b"again\n")
        self.assertEqual(len(self.names(JOE)), 1)

    def test_a_moved_copy_that_cannot_go_back_is_not_left_visible(self):
        """The rename back to the spool fails too (a failing disk): the
        copy must not stay in new/, where POP3 shows it, while the client
        hears 451 (the queue cannot take a spool file that is gone) and
        sends the message again -- that would be a second copy."""
        self.deliver([JOE])
        renames = []

        def rename(src, dst):
            renames.append(dst)
            if len(renames) > 1:  # the way back
                raise OSError(errno.EIO, "I/O error")
            os.rename(src, dst)

        store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org",
                             self.syncer, clock=self.clock, rename=rename)
        self.syncer.fail[os.path.join(self.md(), "new")] = OSError(errno.EIO, "I/O error")
        _, results, gone = self.successResultOf(
            store.deliver_spooled(self.writer(b"again\n"), [JOE], lambda m: None))
        self.assertEqual(len(renames), 2)
        self.assertEqual(results[JOE].errno, errno.EIO)
        self.assertTrue(gone)  # no spool file left for anyone to discard
        self.assertEqual(len(self.names(JOE)), 1)  # the first message only

    def test_a_vanished_maildir_is_made_again(self):
        import shutil

        self.deliver([JOE])
        shutil.rmtree(self.md())
        _, results, _ = self.successResultOf(
            self.store.deliver_spooled(self.writer(), [JOE], lambda m: None))
        self.assertEqual(results, {JOE: None})
        self.assertEqual(len(self.names(JOE)), 1)

    def test_a_mailbox_that_cannot_be_a_folder_fails_alone(self):
        bad = Address("..", "example.org")
        message, results, gone = self.successResultOf(
            self.store.deliver_spooled(self.writer(), [bad, JOE], lambda m: None))
        self.assertIsInstance(results[bad], LocalError)
        self.assertIsNone(results[JOE])
        self.assertFalse(gone)
        self.assertTrue(os.path.exists(message.path))

    def test_spool_sync_failure_delivers_nothing(self):
        self.syncer.fail_kind["file"] = OSError(errno.EIO, "I/O error")
        w = self.writer()
        d = self.store.deliver_spooled(w, [JOE], lambda m: None)
        self.failureResultOf(d, OSError)
        self.assertFalse(os.path.exists(w.path))
        self.assertFalse(os.path.isdir(os.path.join(self.md(), "new")) and self.names(JOE))


class _InlinePublisher(CallRecorder):
    """A ``CallRecorder`` that runs ``sync_then``'s publication on the
    caller's thread, as the real ``Syncer`` does with the kernel's AIO."""

    publishes_inline = True


class NewMaildirTests(Base):
    """A Maildir met for the first time: its folders and POP3 lock file
    are made off the reactor thread (on a hung disk a mkdir there held
    every session of the hub), in delivery's worker job."""

    def mkdir_spy(self):
        """The threads each Maildir folder is made on (``os.mkdir``)."""
        threads = []
        real = os.mkdir

        def mkdir(path, mode=0o777):
            threads.append(threading.current_thread())
            return real(path, mode)

        self.patch(maildir_module.os, "mkdir", mkdir)
        return threads

    def test_deliver_makes_a_new_maildir_in_a_worker_job_and_a_known_one_costs_none(self):
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        threads = self.mkdir_spy()
        msg = self.spool()
        d = store.deliver(msg, [JOE])
        self.assertNoResult(d)
        self.assertFalse(os.path.exists(self.md()))  # nothing made on this thread
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(len(threads), 5)  # domain, Maildir, tmp, new, cur
        self.assertEqual({t.name for t in threads}, {"test-worker"})
        self.assertTrue(os.path.isfile(os.path.join(self.md(), maildir_module.LOCK_NAME)))
        # every entry on the way to the new Maildir made durable, as before
        synced = {t for kind, t in syncer.calls if kind == "dir"}
        self.assertLessEqual({store.mail_dir, os.path.dirname(self.md()), self.md(),
                              os.path.join(self.md(), "new")}, synced)
        self.spooler.discard(msg)
        # a Maildir already met: no job at all (the common case)
        syncer.calls.clear()
        msg = self.spool()
        self.assertEqual(self.successResultOf(store.deliver(msg, [JOE])), {JOE: None})
        self.assertEqual(syncer.jobs, [])
        self.assertEqual(len(threads), 5)
        self.assertEqual(syncer.calls, [("dir", os.path.join(self.md(), "new"))])
        self.assertEqual(len(self.names()), 2)

    def test_a_maildir_that_cannot_be_made_fails_that_mailbox_alone(self):
        bad = Address("ann", "bad.test")
        os.makedirs(os.path.join(self.state, "mail"), exist_ok=True)
        with open(os.path.join(self.state, "mail", "bad.test"), "w"):
            pass  # a file where the domain's folder should be
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        msg = self.spool()
        d = store.deliver(msg, [bad, JOE])
        syncer.run_jobs()
        out = self.successResultOf(d)
        self.assertIsNone(out[JOE])
        self.assertIsInstance(out[bad], NotADirectoryError)
        self.assertEqual(len(self.names()), 1)
        # and through deliver_spooled, in the publication's job
        w = self.spooler.open()
        w.write(BODY)
        _, results, _ = self.successResultOf(store.deliver_spooled(w, [bad, ANN], None))
        self.assertIsInstance(results[bad], NotADirectoryError)
        self.assertIsNone(results[ANN])
        self.assertEqual(len(self.names(ANN)), 1)

    def test_deliver_keyed_makes_a_new_maildir_in_its_lookup_job(self):
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        threads = self.mkdir_spy()
        msg = self.spool()
        d = store.deliver_keyed(msg, [JOE], (1_700_000_000.5, "k1"))
        self.assertFalse(os.path.exists(self.md()))
        self.assertEqual(len(syncer.jobs), 1)  # the same single job as before
        syncer.run_jobs()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual({t.name for t in threads}, {"test-worker"})
        self.assertEqual(len(self.names()), 1)

    def test_messages_at_once_to_a_new_maildir_share_one_job(self):
        # several sessions with mail for the same new user: one job makes
        # its folders and all wait for it (on a hung disk one worker
        # thread is held, not one per message), each told its outcome
        syncer = _InlinePublisher()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        ds = []
        for _ in range(3):
            w = self.spooler.open()
            w.write(BODY)
            ds.append(store.deliver_spooled(w, [JOE], None))
        ds.append(store.deliver(self.spool(), [JOE, ANN]))
        self.assertEqual(len(syncer.jobs), 2)  # JOE's, then ANN's alone
        syncer.run_jobs()
        self.assertEqual(syncer.jobs, [])
        for d in ds[:3]:
            self.assertEqual(self.successResultOf(d)[1], {JOE: None})
        self.assertEqual(self.successResultOf(ds[3]), {JOE: None, ANN: None})
        self.assertEqual(len(self.names()), 4)
        # a job that fails tells every message waiting for it
        bad = Address("ann", "bad.test")
        with open(os.path.join(self.state, "mail", "bad.test"), "w"):
            pass
        ds = [store.deliver(self.spool(), [bad]) for _ in range(2)]
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        for d in ds:
            self.assertIsInstance(self.successResultOf(d)[bad], NotADirectoryError)
        ds = [store.deliver(self.spool(), [bad])]  # not remembered: tried again
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.assertIsInstance(self.successResultOf(ds[0])[bad], NotADirectoryError)

    def test_a_folder_job_left_in_the_parent_holds_up_no_delivery_in_a_forked_child(self):
        # a fork while a new Maildir's folder job runs: the job (and its
        # result) is the parent's, never delivered in the child -- a
        # message there for the same user makes a job of its own rather
        # than wait for that one for ever
        syncer = _InlinePublisher()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        parent = store.deliver(self.spool(), [JOE])
        self.assertEqual(len(syncer.jobs), 1)
        maildir_module._after_fork_in_child()  # the hook, as in the child
        syncer.jobs.clear()  # the parent's threads did not come along
        d = store.deliver(self.spool(), [JOE])
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertNoResult(parent)  # never fired in the child

    def test_a_login_job_left_in_the_parent_holds_up_no_login_in_a_forked_child(self):
        # the same for a POP3 login's turn at the lock: the job under way
        # at the fork is the parent's, and a login in the child takes a
        # turn of its own instead of queueing behind it for ever
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        parent = store.open_mailbox(JOE)
        self.assertEqual(len(syncer.jobs), 1)
        maildir_module._after_fork_in_child()
        syncer.jobs.clear()
        d = store.open_mailbox(JOE)
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.successResultOf(d).close()
        self.assertNoResult(parent)

    def test_a_folder_job_that_cannot_be_asked_for_fails_that_copy_and_leaves_nothing(self):
        # a syncer whose call() raises (a broken embedding's, or a thread
        # that cannot start): that mailbox's delivery fails, and the next
        # message for it asks again instead of waiting on a job never made
        syncer = _InlinePublisher()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        real = syncer.call
        syncer.call = lambda f, *args: (_ for _ in ()).throw(RuntimeError("no thread"))
        out = self.successResultOf(store.deliver(self.spool(), [JOE]))
        self.assertIsInstance(out[JOE], RuntimeError)
        syncer.call = real
        d = store.deliver(self.spool(), [JOE])
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(store._making, {})

    def test_deliver_keyed_with_a_stopped_syncer_makes_no_folder_here(self):
        # the hub stops: the lookup job is refused, and that mailbox's
        # delivery fails with it -- without making the new Maildir's
        # folders on the caller's (the reactor's) thread instead
        syncer = CallRecorder()
        syncer.call = lambda f, *args: defer.fail(LocalError("the syncer is stopped"))
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        threads = self.mkdir_spy()
        out = self.successResultOf(store.deliver_keyed(self.spool(), [JOE],
                                                       (1_700_000_000.5, "k1")))
        self.assertIsInstance(out[JOE], LocalError)
        self.assertEqual(threads, [])
        self.assertFalse(os.path.exists(self.md()))

    def test_deliver_spooled_makes_a_new_maildir_in_the_publication_job(self):
        # the worker-thread path: no job of its own, first time or not
        store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer)
        made_in_run = []
        real_run = maildir_module._Publication.run

        def run(publication):
            made_in_run.append(os.path.exists(self.md()))
            return real_run(publication)

        self.patch(maildir_module._Publication, "run", run)
        jobs = []
        call = self.syncer.call
        self.syncer.call = lambda f, *args: (jobs.append(f), call(f, *args))[1]
        for _ in range(2):
            w = self.spooler.open()
            w.write(BODY)
            _, results, _ = self.successResultOf(store.deliver_spooled(w, [JOE], None))
            self.assertEqual(results, {JOE: None})
        self.assertEqual(made_in_run, [False, True])  # not there before the job ran
        # no job of the store's own (the spooler's spare files aside)
        self.assertEqual([f for f in jobs if f.__module__ == maildir_module.__name__], [])
        self.assertTrue(os.path.isfile(os.path.join(self.md(), maildir_module.LOCK_NAME)))

    def test_with_aio_a_new_maildir_is_one_job_before_the_publication(self):
        # the publication runs on the reactor thread: the folders of a
        # Maildir met for the first time get a job of their own, once
        syncer = _InlinePublisher()
        store = MaildirStore(os.path.join(self.state, "mail"), "h", syncer)
        threads = self.mkdir_spy()
        w = self.spooler.open()
        w.write(BODY)
        self.syncer.calls.clear()
        d = store.deliver_spooled(w, [JOE], None)
        self.assertFalse(os.path.exists(self.md()))
        self.assertEqual(self.syncer.calls, [])  # the data waits for the folders
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        _, results, _ = self.successResultOf(d)
        self.assertEqual(results, {JOE: None})
        self.assertEqual({t.name for t in threads}, {"test-worker"})
        self.assertIn(("dir", self.md()), self.syncer.calls)  # made durable, as before
        w = self.spooler.open()
        w.write(BODY)
        _, results, _ = self.successResultOf(store.deliver_spooled(w, [JOE], None))
        self.assertEqual(results, {JOE: None})
        self.assertEqual(syncer.jobs, [])  # a known Maildir: no job
        self.assertEqual(len(self.names()), 2)


class UIDTests(SynchronousTestCase):
    def test_uid_rules(self):
        self.assertEqual(uid_for_name("123.M4P5.host,S=10,W=12:2,S"), "123.M4P5.host")
        self.assertEqual(uid_for_name("123.M4P5.host,S=10,W=12"), "123.M4P5.host")
        self.assertEqual(uid_for_name("plain"), "plain")
        long = "x" * 71
        self.assertRegex(uid_for_name(long), r"^[0-9a-f]{40}$")
        self.assertRegex(uid_for_name("caf\u00e9.host"), r"^[0-9a-f]{40}$")
        self.assertRegex(uid_for_name("a b"), r"^[0-9a-f]{40}$")
        self.assertEqual(uid_for_name("x" * 70), "x" * 70)
        # a file name ending in a line feed: its UIDL line must not break
        # the listing (RFC 1939 7: 0x21-0x7E only)
        self.assertRegex(uid_for_name("1700000001.evil.host\n"), r"^[0-9a-f]{40}$")

    def test_encoder_examples(self):
        enc = CRLFEncoder()
        out = enc.encode(b"a\nb\r") + enc.encode(b"\nc") + enc.finish()
        self.assertEqual(out, b"a\r\nb\r\nc\r\n")
        self.assertEqual(crlf_size_of(b"a\nb\r\nc"), len(out))
        self.assertEqual(crlf_size_of(b""), 0)
        self.assertEqual(CRLFEncoder().finish(), b"")


class SnapshotTests(SynchronousTestCase):
    """``Snapshot``: the columns give back every ``MessageInfo`` as it was
    made, names in the hub's shape without keeping them."""

    def test_round_trip_and_what_is_kept(self):
        snap = Snapshot("/m/joe")
        usual = "1.M1P1Q1.host,S=10,W=12"
        snap.append("1.M1P1Q1.host", 12, 10, False, usual, False)
        snap.append("1.M1P1Q1.host2", 12, 10, True, "1.M1P1Q1.host2,S=10,W=12:2,S", True)
        snap.append("plain", 7, 6, True, "plain:2,FS", True)  # other flags: kept
        snap.append("a" * 40, 5, 4, False, "caf\u00e9", False)  # a hashed UID: kept
        self.assertEqual(list(snap), [
            MessageInfo("1.M1P1Q1.host", 12, "/m/joe/new/" + usual, 10, False),
            MessageInfo("1.M1P1Q1.host2", 12, "/m/joe/cur/1.M1P1Q1.host2,S=10,W=12:2,S", 10,
                        True),
            MessageInfo("plain", 7, "/m/joe/cur/plain:2,FS", 6, True),
            MessageInfo("a" * 40, 5, "/m/joe/new/caf\u00e9", 4, False),
        ])
        self.assertEqual(snap._names, {2: "plain:2,FS", 3: "caf\u00e9"})
        self.assertEqual(snap[-1], snap[3])
        self.assertEqual(snap[1:3], [snap[1], snap[2]])
        self.assertEqual(snap.path(-2), snap[2].path)
        self.assertEqual((list(snap.uids), list(snap.sizes)), (
            ["1.M1P1Q1.host", "1.M1P1Q1.host2", "plain", "a" * 40], [12, 12, 7, 5]))
        with self.assertRaises(IndexError):
            snap[4]

    def test_moved(self):
        snap = Snapshot("/m/joe")
        snap.append("1.M1P1Q1.host", 12, 10, False, "1.M1P1Q1.host,S=10,W=12", False)
        self.assertFalse(snap.seen_in_cur(0))
        snap.moved(0, "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,S", True)
        self.assertEqual((snap[0].path, snap[0].seen, snap._names), (
            "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,S", True, {}))
        self.assertTrue(snap.seen_in_cur(0))
        snap.moved(0, "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,RS", True)
        self.assertEqual(snap[0].path, "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,RS")
        snap.moved(0, "/m/joe/new/1.M1P1Q1.host,S=10,W=12", False)
        self.assertEqual((snap[0].path, snap[0].seen, snap._names), (
            "/m/joe/new/1.M1P1Q1.host,S=10,W=12", False, {}))
        snap.moved(0, "/elsewhere/x", True)
        self.assertEqual((snap[0].path, snap[0].seen), ("/elsewhere/x", True))
        self.assertFalse(snap.seen_in_cur(0))
        # its name is the kept path's (``_find`` looks for it by its stem)
        self.assertEqual(snap.name(0), "x")

    def test_a_copy_moves_on_its_own(self):
        """``copy``: the places and flags of its own (a session's end
        flags messages on a worker thread through one while its answers
        read the other), the columns that never change shared."""
        snap = Snapshot("/m/joe")
        snap.append("1.M1P1Q1.host", 12, 10, False, "1.M1P1Q1.host,S=10,W=12", False)
        snap.append("plain", 7, 6, False, "plain", False)
        copy = snap.copy()
        self.assertEqual(list(copy), list(snap))
        self.assertIs(copy.uids, snap.uids)
        copy.moved(0, "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,S", True)
        copy.moved(1, "/m/joe/cur/plain:2,S", True)
        self.assertEqual([m.path for m in snap], [
            "/m/joe/new/1.M1P1Q1.host,S=10,W=12", "/m/joe/new/plain"])
        self.assertEqual((snap._names, [m.seen for m in snap]), ({1: "plain"}, [False, False]))
        self.assertEqual([m.path for m in copy], [
            "/m/joe/cur/1.M1P1Q1.host,S=10,W=12:2,S", "/m/joe/cur/plain:2,S"])


class MailboxTests(Base):
    def test_snapshot_lists_without_reading(self):
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"two\ntwo\n")

        def no_reading(path):
            raise AssertionError("a file was read to learn its size")

        self.patch(mailbox_module, "_crlf_size_of_file", no_reading)
        box = self.open()
        infos = box.list_messages()
        self.assertEqual([(i.size, i.stored_size, i.seen) for i in infos],
                         [(5, 4, False), (10, 8, False)])
        self.assertEqual(infos[0].uid, uid_for_name(os.path.basename(infos[0].path)))
        box.close()

    def test_new_mail_during_a_session_is_not_shown(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        self.deliver([JOE], b"two\n")
        self.assertEqual(len(box.list_messages()), 1)
        box.close()
        box = self.open()
        self.assertEqual(len(box.list_messages()), 2)
        box.close()

    def test_exclusive_lock_in_process(self):
        box = self.open()
        self.failureResultOf(self.store.open_mailbox(Address("JOE", "example.org")),
                             MailboxInUse)
        other = self.open(ANN)  # another mailbox is independent
        box.close()
        box.close()  # idempotent
        self.assertTrue(box.closed)
        again = self.open()
        again.close()
        other.close()

    def test_a_read_only_store_can_still_be_read_over_pop3(self):
        # the lock file cannot be opened for writing (a read-only or full
        # filesystem): an existing one is locked read-only, and the
        # mailbox lists its messages; still exclusive
        self.deliver([JOE])
        self.open().close()  # the lock file exists now
        real_open = os.open

        def read_only(path, flags, *args):
            if path.endswith(".txmailhub.lock") and flags & (os.O_RDWR | os.O_WRONLY):
                raise OSError(errno.EROFS, "Read-only file system", path)
            return real_open(path, flags, *args)

        patched = self.patch(maildir_module.os, "open", read_only)
        box = self.open()
        self.assertEqual(len(box.list_messages()), 1)
        self.failureResultOf(self.store.open_mailbox(JOE), MailboxInUse)
        box.close()
        # a lock file that is not there cannot be made (no inode left, say):
        # the Maildir folder itself is locked, exclusive all the same -- a
        # full disk must not lock users out of the mailboxes that would
        # free it
        box = self.open(ANN)
        self.assertFalse(os.path.exists(os.path.join(self.md(ANN), ".txmailhub.lock")))
        self.failureResultOf(self.store.open_mailbox(ANN), MailboxInUse)
        # room again: a session that makes the lock file must still wait
        patched.restore()
        self.failureResultOf(self.store.open_mailbox(ANN), MailboxInUse)
        self.assertTrue(os.path.exists(os.path.join(self.md(ANN), ".txmailhub.lock")))
        box.close()
        box = self.open(ANN)  # now with the file (and the folder)
        patched = self.patch(maildir_module.os, "open", read_only)
        os.unlink(os.path.join(self.md(ANN), ".txmailhub.lock"))  # and no room to make it
        self.failureResultOf(self.store.open_mailbox(ANN), MailboxInUse)
        box.close()
        self.open(ANN).close()

    def test_a_maildir_not_made_yet_on_a_full_or_read_only_disk_is_an_empty_mailbox(self):
        # a user with no mail yet logs in while the disk is full or
        # read-only: an absent Maildir has no messages (RFC 1939 "+OK 0
        # messages"), and making it waits for the first delivery
        for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            real_mkdir = os.mkdir

            def no_room(path, mode=0o777, code=code):
                raise OSError(code, os.strerror(code), path)

            patched = self.patch(maildir_module.os, "mkdir", no_room)
            box = self.open(ANN)
            self.assertEqual(len(box.list_messages()), 0)
            self.assertFalse(box.closed)
            self.assertFalse(os.path.lexists(self.md(ANN)))
            second = self.open(ANN)  # nothing to share: no lock to wait for
            box.close()
            second.close()
            self.assertTrue(box.closed)
            patched.restore()
            self.assertIs(maildir_module.os.mkdir, real_mkdir)
        # the first delivery makes it, as for a Maildir never opened
        self.deliver([ANN])
        box = self.open(ANN)
        self.assertEqual(len(box.list_messages()), 1)
        self.failureResultOf(self.store.open_mailbox(ANN), MailboxInUse)
        box.close()

    def test_a_maildir_with_messages_that_cannot_be_completed_is_not_taken_as_empty(self):
        # its tmp/ gone and no room to make it again: the messages in new/
        # are there, so the login is refused as before, not told 0 messages
        self.deliver([ANN])
        os.rmdir(os.path.join(self.md(ANN), "tmp"))
        store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org",
                             self.syncer, clock=self.clock)
        real_mkdir = os.mkdir

        def no_room(path, mode=0o777):
            if os.path.exists(path):
                return real_mkdir(path, mode)  # FileExistsError, as the disk says
            raise OSError(errno.ENOSPC, "No space left on device", path)

        self.patch(maildir_module.os, "mkdir", no_room)
        f = self.failureResultOf(store.open_mailbox(ANN), OSError)
        self.assertEqual(f.value.errno, errno.ENOSPC)

    def test_a_maildir_that_cannot_be_made_is_no_mailbox_in_use(self):
        # permission denied is the error it is, not "in use by another session"
        def denied(path, mode=0o777):
            raise PermissionError(errno.EACCES, "Permission denied", path)

        self.patch(maildir_module.os, "mkdir", denied)
        f = self.failureResultOf(self.store.open_mailbox(ANN), PermissionError)
        self.assertNotIsInstance(f.value, MailboxInUse)

    def test_delivery_makes_the_lock_file_with_the_maildir(self):
        # made while there is room: a login later needs no new inode
        self.deliver([JOE])
        self.assertTrue(os.path.exists(os.path.join(self.md(), ".txmailhub.lock")))
        self.assertEqual(len(self.names()), 1)

    def test_a_symlinked_lock_file_is_never_followed(self):
        # whoever can write into a Maildir must not make the hub create (or
        # lock) a file elsewhere through a link named .txmailhub.lock: a
        # login is refused as needing an administrator ([SYS/PERM]) and
        # delivery, which makes the lock file with the Maildir, leaves it
        self.deliver([JOE])
        lock = os.path.join(self.md(), ".txmailhub.lock")
        os.unlink(lock)
        target = os.path.join(self.state, "elsewhere")
        os.symlink(target, lock)
        f = self.failureResultOf(self.store.open_mailbox(JOE), PermissionError)
        self.assertIn("symbolic link", str(f.value))
        self.assertFalse(os.path.exists(target))
        # a store meeting the Maildir anew (a restarted hub) delivers there
        # without making the link's target either
        store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer)
        msg = self.spool()
        self.successResultOf(store.deliver(msg, [JOE]))
        self.spooler.discard(msg)
        self.assertFalse(os.path.exists(target))
        self.assertTrue(os.path.islink(lock))

    def test_a_lock_file_that_is_a_fifo_holds_up_nothing(self):
        # a named pipe in place of .txmailhub.lock (whoever can write into
        # a Maildir can make one): an open for writing alone, or for
        # reading alone, waits for the other end, for ever -- delivery's
        # on the reactor thread (every session of the hub), a login's on
        # a worker (that user's turns).  Here such an open fails the test
        # instead of waiting, as the kernel would have it wait.
        self.deliver([JOE])
        lock = os.path.join(self.md(), ".txmailhub.lock")
        os.unlink(lock)
        os.mkfifo(lock, 0o600)
        real_open = os.open
        waited = []

        def fifo_open(path, flags, *args, **kwargs):
            if (os.fspath(path) == lock and not flags & os.O_NONBLOCK
                    and flags & os.O_ACCMODE != os.O_RDWR):
                waited.append(flags)
                raise AssertionError("this open would wait for the pipe's other end")
            return real_open(path, flags, *args, **kwargs)

        self.patch(maildir_module.os, "open", fifo_open)
        # a store meeting the Maildir anew (a restarted hub) delivers
        store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer)
        msg = self.spool()
        self.assertEqual(self.successResultOf(store.deliver(msg, [JOE])), {JOE: None})
        self.spooler.discard(msg)
        self.assertEqual(waited, [])
        # a login on a disk where the lock cannot be opened for writing
        # (read-only, full) opens it for reading
        def read_only(path, flags, *args, **kwargs):
            if os.fspath(path) == lock and flags & os.O_ACCMODE == os.O_RDWR:
                raise OSError(errno.EROFS, "Read-only file system", path)
            return fifo_open(path, flags, *args, **kwargs)

        self.patch(maildir_module.os, "open", read_only)
        self.open().close()
        self.assertEqual(waited, [])

    def test_snapshot_runs_on_the_worker_threads_and_a_failure_releases_the_lock(self):
        self.deliver([JOE])
        before = self.syncer.calls_run
        self.open().close()
        self.assertEqual(self.syncer.calls_run, before + 1)

        def broken(md):
            raise OSError(errno.EIO, "I/O error")

        patched = self.patch(maildir_module, "scan", broken)
        self.failureResultOf(self.store.open_mailbox(JOE), OSError)
        patched.restore()
        self.open().close()  # not locked by the failed attempt

    def held_store(self):
        """A store whose worker jobs wait for the test (``CallRecorder``)."""
        syncer = CallRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org", syncer,
                             clock=self.clock)
        return store, syncer

    def login_that_can_leave(self, store):
        """A login of JOE (its ``Deferred``) and what its client's hanging
        up is: until then it is ``wanted``, after it the login's turn is a
        gone client's, which must take no job and hold no lock."""
        here = [True]
        d = store.open_mailbox(JOE, wanted=lambda: here[0])

        def leave():
            here[0] = False

        return d, leave

    def test_a_login_makes_the_folders_and_the_lock_file_on_a_worker_thread(self):
        # a hung disk blocks a mkdir or a create: on the reactor thread
        # that held every session of the hub, so a login does neither
        # there -- nothing is made before its job runs, on another thread
        store, syncer = self.held_store()
        md = store.maildir_path(JOE)
        threads = []
        lock_mailbox = maildir_module._lock_mailbox

        def recording(path):
            threads.append(threading.current_thread())
            return lock_mailbox(path)

        self.patch(maildir_module, "_lock_mailbox", recording)
        d = store.open_mailbox(JOE)
        self.assertNoResult(d)
        self.assertFalse(os.path.exists(os.path.dirname(md)))
        self.assertEqual(threads, [])
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        box = self.successResultOf(d)
        self.assertEqual([t.name for t in threads], ["test-worker"])
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(md, sub)))
        self.assertTrue(os.path.exists(os.path.join(md, ".txmailhub.lock")))
        # the folders made are still made durable by the first delivery
        self.assertIn(os.path.dirname(md), store._ensure(md))
        box.close()

    def test_the_folders_are_made_at_the_first_login_only(self):
        # the mkdirs are for a Maildir this process has not met: a login
        # after the first one (or after a delivery) makes none
        store, syncer = self.held_store()
        made = []
        real_mkdir = os.mkdir

        def mkdir(path, mode=0o777):
            made.append(path)
            return real_mkdir(path, mode)

        self.patch(maildir_module.os, "mkdir", mkdir)
        for _ in range(2):
            d = store.open_mailbox(JOE)
            syncer.run_jobs()
            self.successResultOf(d).close()
        self.assertEqual(len(made), 5)  # domain, Maildir, tmp, new, cur
        msg = self.spool()
        d = store.deliver(msg, [ANN])
        syncer.run_jobs()  # the folders of a new Maildir, off the reactor thread
        self.assertEqual(self.successResultOf(d), {ANN: None})
        self.spooler.discard(msg)
        d = store.open_mailbox(ANN)
        syncer.run_jobs()
        self.successResultOf(d).close()
        self.assertEqual(len(made), 10)

    def test_a_second_login_waits_for_the_first_ones_job_then_is_in_use(self):
        # the logins of one Maildir take their turns at its lock, in the
        # order they came: the first wins, as when the lock was taken at once
        store, syncer = self.held_store()
        first = store.open_mailbox(JOE)
        second = store.open_mailbox(Address("JOE", "example.org"))
        other = store.open_mailbox(ANN)  # another Maildir: no turn to wait for
        self.assertEqual(len(syncer.jobs), 2)
        syncer.run_jobs()
        box = self.successResultOf(first)
        self.successResultOf(other).close()
        self.assertNoResult(second)  # its job is asked for only now
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()
        f = self.failureResultOf(second, MailboxInUse)
        self.assertNotIsInstance(f.value, MailboxTurnAbandoned)  # its client is there
        self.assertEqual(store._turns, {})
        box.close()

    def test_a_login_whose_client_left_before_its_turn_runs_no_job(self):
        # a client that reconnects again and again while the first job
        # hangs leaves no turn and no job behind each time it gives up
        store, syncer = self.held_store()
        first = store.open_mailbox(JOE)
        second, second_leaves = self.login_that_can_leave(store)
        second_leaves()
        third, third_leaves = self.login_that_can_leave(store)
        # dropped as the third came: refused as a client that left (the
        # log says so), a MailboxInUse still to a caller that knows no more
        self.failureResultOf(second, MailboxTurnAbandoned)
        self.assertEqual(len(store._turns[self.md()]), 1)
        third_leaves()
        syncer.run_jobs()
        box = self.successResultOf(first)
        self.failureResultOf(third, MailboxTurnAbandoned)
        self.assertIsInstance(MailboxTurnAbandoned("x"), MailboxInUse)
        self.assertEqual(syncer.jobs, [])  # none for the gone third
        self.assertEqual(store._turns, {})
        box.close()

    def test_a_login_asked_for_by_a_refused_gone_login_loses_no_mailbox(self):
        # the refusal of a gone client's turn runs its callbacks at once;
        # one that asks for the mailbox again (an embedding's) must find
        # the turns in order: before, the second gone turn was taken out
        # twice, a ValueError took the place of the first login's mailbox
        # and its lock's descriptors were never closed
        store, syncer = self.held_store()
        first = store.open_mailbox(JOE)
        a, a_leaves = self.login_that_can_leave(store)
        b, b_leaves = self.login_that_can_leave(store)
        asked = []
        a.addErrback(lambda f: asked.append(store.open_mailbox(JOE)))
        a_leaves()
        b_leaves()
        syncer.run_jobs()
        box = self.successResultOf(first)
        self.failureResultOf(b, MailboxInUse)
        self.assertEqual(len(asked), 1)
        syncer.run_jobs()
        self.failureResultOf(asked[0], MailboxInUse)  # the first holds it
        box.close()
        self.assertEqual(store._turns, {})
        self.open().close()

    def test_a_login_whose_job_finds_the_lock_of_a_gone_session_waits_for_it(self):
        # close_soon: a session that is gone but saves holds the lock; the
        # login's job finds it held, and the login waits, then tries again
        store, syncer = self.held_store()
        opening = store.open_mailbox(JOE)
        syncer.run_jobs()
        box = self.successResultOf(opening)
        calls = []
        box.close_soon(lambda *args: calls.append(args) or _Timer())
        again = store.open_mailbox(JOE)
        syncer.run_jobs()
        self.assertNoResult(again)
        self.assertEqual(syncer.jobs, [])
        box.close()
        syncer.run_jobs()  # the try again, on a worker too
        self.successResultOf(again).close()

    def test_a_release_while_the_job_found_the_lock_held_tries_again(self):
        # the job ran while a session of this process held the lock, which
        # let go before its result came back: not in use any more
        store, syncer = self.held_store()
        opening = store.open_mailbox(JOE)
        syncer.run_jobs()
        box = self.successResultOf(opening)
        again = store.open_mailbox(JOE)
        f, args, d = syncer.jobs.pop()
        try:
            f(*args)
        except BlockingIOError as e:
            box.close()  # on the reactor thread, before the result is in
            d.errback(e)
        self.assertNoResult(again)
        syncer.run_jobs()
        self.successResultOf(again).close()

    def test_a_release_during_the_job_of_a_client_that_left_runs_no_other_job(self):
        # the client of the login hung up while its job found the lock
        # held, and the holder let go meanwhile: no try again for it (a
        # job, and the lock taken for nobody), it is refused as a gone
        # client's turn is
        store, syncer = self.held_store()
        opening = store.open_mailbox(JOE)
        syncer.run_jobs()
        box = self.successResultOf(opening)
        again, again_leaves = self.login_that_can_leave(store)
        f, args, d = syncer.jobs.pop()
        with self.assertRaises(BlockingIOError) as raised:
            f(*args)
        box.close()
        again_leaves()
        d.errback(raised.exception)
        self.failureResultOf(again, MailboxInUse)
        self.assertEqual(syncer.jobs, [])
        self.assertEqual(store._turns, {})

    def test_a_failed_login_job_holds_no_descriptor(self):
        # the scan fails after the lock was taken: the job closes what it took
        store, syncer = self.held_store()
        self.open().close()  # the folders exist

        def broken(md):
            raise OSError(errno.EIO, "I/O error")

        before = len(os.listdir("/proc/self/fd"))
        patched = self.patch(maildir_module, "scan", broken)
        d = store.open_mailbox(JOE)
        syncer.run_jobs()
        self.failureResultOf(d, OSError)
        patched.restore()
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        opening = store.open_mailbox(JOE)
        syncer.run_jobs()
        self.successResultOf(opening).close()

    def test_a_maildir_that_cannot_be_made_fails_in_the_job(self):
        store, syncer = self.held_store()
        made = []

        def denied(path, mode=0o777):
            made.append(threading.current_thread().name)
            raise PermissionError(errno.EACCES, "Permission denied", path)

        self.patch(maildir_module.os, "mkdir", denied)
        d = store.open_mailbox(ANN)
        self.assertEqual(made, [])
        syncer.run_jobs()
        self.failureResultOf(d, PermissionError)
        self.assertEqual(made, ["test-worker"])
        self.assertEqual(store._turns, {})

    def test_uidl_is_stable_across_sessions_and_flags(self):
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"two\n")
        box = self.open()
        before = [i.uid for i in box.list_messages()]
        box.mark_seen(0)
        box.mark_seen(1)
        self.assertEqual([i.uid for i in box.list_messages()], before)
        box.close()
        box = self.open()
        self.assertEqual([i.uid for i in box.list_messages()], before)
        self.assertTrue(all(i.seen for i in box.list_messages()))
        box.close()

    def test_mark_seen(self):
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"two\n")
        box = self.open()
        new_name = os.path.basename(box.list_messages()[0].path)
        box.mark_seen(0)
        info = box.list_messages()[0]
        self.assertTrue(info.seen)
        self.assertEqual(info.path, os.path.join(self.md(), "cur", new_name + ":2,S"))
        self.assertTrue(os.path.exists(info.path))
        self.assertEqual(box.open_message(0).read(), b"one\n")
        box.mark_seen(0)  # twice: nothing changes
        self.assertEqual(box.list_messages()[0].path, info.path)
        # a message already in cur/ with other flags gets S added, sorted
        p1 = box.list_messages()[1].path
        flagged = os.path.join(self.md(), "cur", os.path.basename(p1) + ":2,F")
        os.rename(p1, flagged)
        box.mark_seen(1)
        self.assertTrue(box.list_messages()[1].path.endswith(":2,FS"))
        self.assertEqual(box.open_message(1).read(), b"two\n")
        box.mark_seen(7)  # out of range: logged, not raised
        box.close()

    def test_mark_seen_keeps_the_flags_in_ascii_order(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        p = box.list_messages()[0].path
        os.rename(p, os.path.join(self.md(), "cur", os.path.basename(p) + ":2,T"))
        box.mark_seen(0)
        self.assertTrue(box.list_messages()[0].path.endswith(":2,ST"))
        box.close()

    def test_only_the_info_of_the_2_semantics_carries_flags(self):
        # Maildir: "2," then the flags; an "S" in other info (the
        # experimental "1," semantics) is no Seen flag
        self.deliver([JOE], b"one\n")
        p = os.path.join(self.md(), "new", self.names()[0])
        os.rename(p, os.path.join(self.md(), "cur", os.path.basename(p) + ":1,S"))
        box = self.open()
        self.assertFalse(box.list_messages()[0].seen)
        box.mark_seen(0)
        self.assertTrue(box.list_messages()[0].path.endswith(":2,S"))
        box.close()

    def test_a_seen_message_left_in_new_is_moved_to_cur(self):
        self.deliver([JOE], b"one\n")
        p = os.path.join(self.md(), "new", self.names()[0])
        os.rename(p, p + ":2,S")  # another program's doing
        box = self.open()
        box.mark_seen(0)
        self.assertEqual(os.path.dirname(box.list_messages()[0].path),
                         os.path.join(self.md(), "cur"))
        box.close()

    def test_mark_seen_of_a_vanished_file_is_quiet(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        os.unlink(box.list_messages()[0].path)
        box.mark_seen(0)
        self.assertFalse(box.list_messages()[0].seen)
        box.close()

    def test_mark_seen_never_replaces_a_message_of_the_same_unique_name(self):
        # another delivery agent's message whose unique part is ours, seen
        # already: flagging ours must not unlink it (RFC 1939 6: nothing is
        # removed but in UPDATE, and only what DELE marked)
        self.deliver([JOE], b"ours\n")
        box = self.open()
        path = box.list_messages()[0].path
        unique = os.path.basename(path).partition(":")[0]
        theirs = os.path.join(self.md(), "cur", unique + ":2,S")
        with open(theirs, "wb") as f:
            f.write(b"theirs\n")
        box.mark_seen(0)
        self.assertFalse(box.list_messages()[0].seen)
        self.assertEqual(box.open_message(0).read(), b"ours\n")
        with open(theirs, "rb") as f:
            self.assertEqual(f.read(), b"theirs\n")
        box.close()

    def test_a_file_renamed_by_another_reader_is_found(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        path = box.list_messages()[0].path
        moved = os.path.join(self.md(), "cur", os.path.basename(path) + ":2,R")
        os.rename(path, moved)
        self.assertEqual(box.open_message(0).read(), b"one\n")
        self.assertEqual(box.list_messages()[0].path, moved)
        box.close()

    def test_mark_seen_of_a_file_renamed_by_another_reader(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        path = box.list_messages()[0].path
        moved = os.path.join(self.md(), "cur", os.path.basename(path) + ":2,R")
        os.rename(path, moved)
        box.mark_seen(0)
        info = box.list_messages()[0]
        self.assertEqual(info.path, moved[: -len("R")] + "RS")
        self.assertTrue(info.seen)
        self.assertEqual(os.listdir(os.path.join(self.md(), "cur")),
                         [os.path.basename(info.path)])
        self.assertEqual(box.open_message(0).read(), b"one\n")
        box.close()

    def test_update_flags_and_deletes_in_one_worker_job_and_logs_what_it_cannot_flag(self):
        # The POP3 UPDATE state's changes (IMailboxUpdate): the renames of
        # the messages RETR sent and the unlinks, one job on the syncer's
        # workers for a few messages (none on the caller's thread), then
        # the folders that lost one fsynced.  A message that cannot be
        # flagged (gone) is a warning, logged on the caller's thread.
        from txmailhub.interfaces import IMailboxUpdate

        for body in (b"one\n", b"two\n", b"three\n"):
            self.deliver([JOE], body)
        box = self.open()
        self.assertTrue(verifyObject(IMailboxUpdate, box))
        paths = [box.list_messages()[i].path for i in range(3)]
        os.unlink(paths[2])  # removed by another program
        before = self.syncer.calls_run
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.successResultOf(box.update([0, 2, 0], [1]))
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(self.syncer.calls_run, before + 1)
        self.assertEqual(os.listdir(os.path.join(self.md(), "new")), [])
        self.assertEqual(os.listdir(os.path.join(self.md(), "cur")),
                         [os.path.basename(paths[0]) + ":2,S"])
        self.assertIn(("dir", os.path.join(self.md(), "new")), self.syncer.calls)
        warned = [formatEvent(e) for e in events if "seen" in formatEvent(e)]
        self.assertEqual(len(warned), 1)
        self.assertIn("cannot mark message 2 of", warned[0])
        box.close()

    def test_update_fires_only_once_its_seen_renames_are_durable(self):
        # the +OK to QUIT follows UPDATE: a rename into cur/ a crash took
        # back would bring a message a later session deleted from cur/
        # back into new/, so both folders of each rename are fsynced first
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"two\n")
        box = self.open()
        self.syncer.calls.clear()
        self.syncer.hold = True
        d = box.update([0], [])
        self.assertNoResult(d)
        self.assertEqual(sorted(self.syncer.calls), [
            ("dir", os.path.join(self.md(), "cur")), ("dir", os.path.join(self.md(), "new"))])
        self.syncer.release()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.names(sub="cur")), 1)
        box.close()

    def test_a_seen_flag_that_cannot_be_synced_is_logged_and_fails_no_quit(self):
        # the flags are no deletion: a folder's failed fsync after them is
        # a warning, and QUIT's answer stays +OK
        self.deliver([JOE], b"one\n")
        box = self.open()
        self.syncer.fail_kind["dir"] = OSError(errno.EIO, "I/O error")
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.assertIsNone(self.successResultOf(box.update([0], [])))
        finally:
            globalLogPublisher.removeObserver(events.append)
        warned = [formatEvent(e) for e in events if "may not survive" in formatEvent(e)]
        self.assertEqual(len(warned), 1)
        box.close()

    def test_delete_of_a_file_renamed_by_another_reader(self):
        # flags changed by another Maildir reader after the snapshot: the
        # message marked with DELE still goes (RFC 1939 6), found again by
        # its unique part; the others stay
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"two\n")
        box = self.open()
        path = box.list_messages()[0].path
        moved = os.path.join(self.md(), "cur", os.path.basename(path) + ":2,R")
        os.rename(path, moved)
        self.successResultOf(box.delete([0]))
        self.assertFalse(os.path.exists(moved))
        box.close()
        box = self.open()
        self.assertEqual([box.open_message(i).read() for i in range(1)], [b"two\n"])
        box.close()

    def test_delete_of_a_renamed_message_whose_old_name_is_now_a_pipe(self):
        # another reader renamed it, and a pipe was made at its old name:
        # the message is removed where it went, the pipe is left alone
        self.deliver([JOE], b"one\n")
        box = self.open()
        path = box.list_messages()[0].path
        moved = os.path.join(self.md(), "cur", os.path.basename(path) + ":2,R")
        os.rename(path, moved)
        os.mkfifo(path)
        self.successResultOf(box.delete([0]))
        self.assertFalse(os.path.lexists(moved))
        self.assertTrue(stat.S_ISFIFO(os.lstat(path).st_mode))
        box.close()

    def test_open_message_of_a_pipe_at_its_name_is_a_message_gone(self):
        # the file object RETR of a message past the small-read limit uses:
        # a pipe made at the name since the scan is no message (opened,
        # it reads nothing, and a writer could feed it anything)
        self.deliver([JOE], b"one\n")
        box = self.open()
        path = box.list_messages()[0].path
        os.unlink(path)
        os.mkfifo(path)
        with self.assertRaises(FileNotFoundError):
            not_waiting_on(Path(path), lambda: box.open_message(0))
        box.close()

    def test_a_message_not_in_the_page_cache_is_not_taken_for_one_gone(self):
        # a read without waiting that says EAGAIN of a regular file is the
        # kernel's "not cached" (the session reads it on a worker), never
        # "no regular file", which POP3 answers as a message removed
        self.deliver([JOE], b"one\n")
        box = self.open()

        def not_cached(fd, size, offset):
            raise BlockingIOError(errno.EAGAIN, "not cached")

        self.patch(mailbox_module, "pread_nowait", not_cached)
        with self.assertRaises(BlockingIOError):
            box.read_message_nowait(0, 1000)
        box.close()

    def test_a_message_whose_fstat_fails_is_not_left_open(self):
        self.deliver([JOE], b"one\n")
        box = self.open()
        real_fstat, seen = os.fstat, []

        def failing(fd):
            seen.append(fd)
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "fstat", failing)
        with self.assertRaises(OSError) as raised:
            box.open_message(0)
        self.assertEqual(raised.exception.errno, errno.EIO)
        self.patch(os, "fstat", real_fstat)
        with self.assertRaises(OSError) as closed:
            os.fstat(seen[0])
        self.assertEqual(closed.exception.errno, errno.EBADF)
        box.close()

    def test_open_message_is_unbuffered(self):
        self.deliver([JOE], b"x" * 5000 + b"\n")
        box = self.open()
        with box.open_message(0) as f:
            # unbuffered (no read-ahead, no extra fstat/lseek/ioctl): each
            # read(n) is one read(2)
            self.assertIsInstance(f, io.RawIOBase)
            self.assertEqual(len(f.read(65536)), 5001)
            self.assertEqual(f.read(65536), b"")
        box.close()

    def test_a_small_message_read_whole_costs_no_fstat(self):
        # the small-message RETR is open, one read and close: telling a
        # regular file from a pipe or folder put at its name added an
        # fstat to every one; the read itself tells them apart
        self.deliver([JOE], b"one\n")
        box = self.open()
        path = box.list_messages()[0].path
        calls = []
        real_fstat = os.fstat

        def counting(fd):
            calls.append(fd)
            return real_fstat(fd)

        nowait_module._set(False)  # plain reads: nowait's own fstat is not asked
        self.addCleanup(nowait_module._set, None)
        self.patch(os, "fstat", counting)
        self.assertEqual(box.read_message(0, 100), b"one\n")
        self.assertEqual(box.read_message_nowait(0, 100), b"one\n")
        self.assertEqual(calls, [])
        # and what is no message at its name is still answered as gone
        for make in (os.mkdir, os.mkfifo):
            os.unlink(path) if os.path.isfile(path) else os.rmdir(path)
            make(path)
            for read in (box.read_message, box.read_message_nowait):
                self.assertRaises(FileNotFoundError, read, 0, 100)
        # a pipe with a writer: nothing written yet (EAGAIN), then fewer
        # octets than the message's
        writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.addCleanup(os.close, writer)
        self.assertRaises(FileNotFoundError, box.read_message, 0, 100)
        os.write(writer, b"on")
        self.assertRaises(FileNotFoundError, box.read_message, 0, 100)
        box.close()

    def test_read_message_whole_or_none(self):
        self.deliver([JOE], b"one\n")
        self.deliver([JOE], b"y" * 99 + b"\n")
        box = self.open()
        self.assertEqual(box.read_message(0, 100), b"one\n")
        self.assertIsNone(box.read_message(1, 100))  # 100 octets: not shorter
        self.assertEqual(box.read_message(1, 101), b"y" * 99 + b"\n")
        # renamed by another reader (S taken away): found, and no longer seen
        box.mark_seen(0)
        path = box.list_messages()[0].path
        moved = path[: -len(":2,S")] + ":2,R"
        os.rename(path, moved)
        self.assertEqual(box.read_message(0, 100), b"one\n")
        self.assertEqual(box.list_messages()[0].path, moved)
        self.assertFalse(box.list_messages()[0].seen)
        box.mark_seen(0)  # so S is added again
        self.assertTrue(box.list_messages()[0].path.endswith(":2,RS"))
        self.assertTrue(os.path.exists(box.list_messages()[0].path))
        box.close()

    def test_delete_is_durable_before_it_fires(self):
        for i in range(3):
            self.deliver([JOE], b"m%d\n" % i)
        box = self.open()
        box.mark_seen(1)
        self.syncer.hold = True
        self.syncer.calls.clear()
        d = box.delete([0, 1, 1])
        self.assertNoResult(d)
        self.assertEqual(sorted(t for _, t in self.syncer.calls),
                         [os.path.join(self.md(), "cur"), os.path.join(self.md(), "new")])
        self.syncer.release()
        self.successResultOf(d)
        box.close()
        box = self.open()
        self.assertEqual([box.open_message(i).read() for i in range(1)], [b"m2\n"])
        # deleting a message that is already gone is not an error
        os.unlink(box.list_messages()[0].path)
        self.syncer.hold = False
        self.successResultOf(box.delete([0]))
        box.close()

    def test_a_long_delete_unlinks_on_the_worker_threads(self):
        # 120,000 unlinks on the reactor thread stalled every session for 7 s
        self.patch(mailbox_module, "INLINE_DELETES", 2)
        for i in range(4):
            self.deliver([JOE], b"m%d\n" % i)
        box = self.open()
        before = self.syncer.calls_run
        self.successResultOf(box.delete([0, 1]))  # few: inline
        self.assertEqual(self.syncer.calls_run, before)
        self.successResultOf(box.delete([2, 3, 3]))
        self.assertEqual(self.syncer.calls_run, before)  # two distinct: still inline
        box.close()
        for i in range(3):
            self.deliver([JOE], b"n%d\n" % i)
        box = self.open()
        self.syncer.calls.clear()
        before = self.syncer.calls_run
        self.successResultOf(box.delete([0, 1, 2]))
        self.assertEqual(self.syncer.calls_run, before + 1)  # one worker job for all
        self.assertEqual(self.syncer.calls, [("dir", os.path.join(self.md(), "new"))])
        self.assertEqual(self.names(), [])
        box.close()
        # in jobs of DELETE_CHUNK, so one delete never holds a worker long
        self.patch(mailbox_module, "DELETE_CHUNK", 2)
        for i in range(5):
            self.deliver([JOE], b"p%d\n" % i)
        box = self.open()
        before = self.syncer.calls_run
        self.successResultOf(box.delete([0, 1, 2, 3, 4]))
        self.assertEqual(self.syncer.calls_run, before + 3)
        self.assertEqual(self.names(), [])
        box.close()

    def test_a_delete_that_fails_is_reported_and_the_others_still_go(self):
        for i in range(2):
            self.deliver([JOE], b"m%d\n" % i)
        box = self.open()
        stuck = box.list_messages()[0].path
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            if path == stuck:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_unlink(path, *args, **kwargs)

        self.patch(mailbox_module.os, "unlink", unlink)
        self.syncer.calls.clear()
        self.failureResultOf(box.delete([0, 1]), PermissionError)
        self.assertEqual(self.names(), [os.path.basename(stuck)])
        self.assertEqual(self.syncer.calls, [("dir", os.path.join(self.md(), "new"))])
        box.close()

    def test_delivery_order_follows_the_time_not_the_counter(self):
        # two processes' copies within one second: the microseconds order
        # them, the per-process counter only breaks ties
        self.deliver([JOE], b"x\n")  # the Maildir exists
        later, earlier = "1800000000.M900P1Q1R0.h,S=2,W=3", "1800000000.M100P2Q7R0.h,S=2,W=3"
        for name in (later, earlier):
            with open(os.path.join(self.md(), "new", name), "wb") as f:
                f.write(b"x\n")
        names = [os.path.basename(i.path) for i in scan(self.md())]
        self.assertEqual(names[1:], [earlier, later])

    def test_a_name_with_sizes_no_file_has_does_not_break_the_listing(self):
        # A foreign or hand-made name whose ,S= or ,W= is beyond what a
        # size column holds (2**63 and up) is measured like a name without
        # sizes: one such file must not make the whole mailbox unopenable.
        self.deliver([JOE], b"x\n")
        odd = ["1800000000.M1P1Q1R0.h,S=99999999999999999999,W=3",
               "1800000001.M1P1Q2R0.h,S=2,W=99999999999999999999:2,S"]
        for sub, name in zip(("new", "cur"), odd):
            with open(os.path.join(self.md(), sub, name), "wb") as f:
                f.write(b"x\n")
        box = self.open()
        infos = box.list_messages()
        self.assertEqual([(os.path.basename(i.path), i.size, i.stored_size, i.seen)
                          for i in infos[1:]],
                         [(odd[0], 3, 2, False), (odd[1], 3, 2, True)])
        self.assertEqual([i.uid for i in infos[1:]],
                         ["1800000000.M1P1Q1R0.h", "1800000001.M1P1Q2R0.h"])
        box.close()

    def open_with_size_cache_entry(self, stored_size, crlf_size):
        """The mailbox with a second message (``x\\n``) whose size-cache entry
        matches the file's inode and mtime but holds ``stored_size(st_size)``
        and ``crlf_size``: an entry the cache must not trust as it is."""
        self.deliver([JOE], b"x\n")
        name = "1800000000.M1P1Q1R0.h"
        path = os.path.join(self.md(), "new", name)
        with open(path, "wb") as f:
            f.write(b"x\n")
        st = os.stat(path)
        with open(os.path.join(self.md(), SIZES_NAME), "w") as f:
            json.dump({"version": 1, "sizes": {
                name: [st.st_ino, st.st_mtime_ns, stored_size(st.st_size), crlf_size]}}, f)
        return self.open()

    def test_a_size_cache_entry_no_column_holds_is_measured_again(self):
        box = self.open_with_size_cache_entry(int, 2 ** 64)
        self.assertEqual(box.list_messages()[1].size, 3)
        box.close()

    def test_a_size_cache_entry_whose_stored_size_is_no_integer_is_measured_again(self):
        # 2.0 == 2 (the file's st_size) passed the check, and the float
        # went into the snapshot's integer column: TypeError, and every
        # login to the mailbox failed
        box = self.open_with_size_cache_entry(float, 3)
        info = box.list_messages()[1]
        self.assertEqual((info.size, info.stored_size), (3, 2))
        box.close()

    def test_stale_tmp_files_are_cleaned(self):
        self.deliver([JOE])
        tmp = os.path.join(self.md(), "tmp")
        old, fresh = os.path.join(tmp, "old"), os.path.join(tmp, "fresh")
        for p in (old, fresh):
            open(p, "wb").close()
        os.utime(old, (self.clock.now - 40 * 3600,) * 2)
        os.utime(fresh, (self.clock.now - 3600,) * 2)
        self.open().close()
        self.assertEqual(os.listdir(tmp), ["fresh"])


class PlainNameTests(Base):
    def drop(self, name, data, sub="new"):
        self.deliver([JOE], b"ours\n")  # the Maildir exists
        path = os.path.join(self.md(), sub, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_plain_file_sized_once_and_cached(self):
        data = b"From: x\r\nSubject: crlf\r\n\r\nbody\nno final newline"
        path = self.drop("1600000000.12345_1.otherhost", data)
        calls = []
        real = mailbox_module._crlf_size_of_file

        def counting(p):
            calls.append(p)
            return real(p)

        self.patch(mailbox_module, "_crlf_size_of_file", counting)
        box = self.open()
        infos = box.list_messages()
        plain = infos[0]  # 1600000000 sorts before our delivery
        self.assertEqual(plain.path, path)
        self.assertEqual(plain.uid, "1600000000.12345_1.otherhost")
        enc = CRLFEncoder()
        self.assertEqual(plain.size, len(enc.encode(data) + enc.finish()))
        self.assertEqual(plain.stored_size, len(data))
        self.assertEqual(calls, [path])
        box.mark_seen(0)  # renamed: the cache key survives it
        box.close()
        with open(os.path.join(self.md(), SIZES_NAME), "rb") as f:
            cached = json.load(f)
        self.assertEqual(list(cached["sizes"]), ["1600000000.12345_1.otherhost"])

        box = self.open()
        self.assertEqual(box.list_messages()[0].size, plain.size)
        self.assertEqual(len(calls), 1)  # not measured again
        box.close()

    def test_a_rewritten_file_is_measured_again(self):
        path = self.drop("plainname", b"short\n")
        box = self.open()
        self.assertEqual(box.list_messages()[-1].size, 7)
        box.close()
        with open(path, "wb") as f:
            f.write(b"a much longer message\n\n")
        os.utime(path, ns=(1, 1))
        box = self.open()
        info = next(i for i in box.list_messages() if i.path == path)
        self.assertEqual(info.size, 25)
        box.close()

    def listed_size(self, path):
        """The size a fresh POP3 listing gives the file at ``path``."""
        box = self.open()
        try:
            return next(i.size for i in box.list_messages() if i.path == path)
        finally:
            box.close()

    def test_a_replaced_file_with_the_same_size_and_mtime_is_measured_again(self):
        path = self.drop("plainname", b"a\nb\nc\n")  # 6 octets, 9 as CRLF
        self.assertEqual(self.listed_size(path), 9)
        st = os.stat(path)
        tmp = os.path.join(self.md(), "tmp", "plainname")
        with open(tmp, "wb") as f:
            f.write(b"abcde\n")  # 6 octets, 7 as CRLF
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # rsync -t, a restore...
        os.rename(tmp, path)  # a new inode
        self.assertEqual(self.listed_size(path), 7)

    def test_a_file_rewritten_in_place_with_the_same_size_is_measured_again(self):
        path = self.drop("plainname", b"a\nb\n")  # 4 octets, 6 as CRLF
        self.assertEqual(self.listed_size(path), 6)
        st = os.stat(path)
        with open(path, "r+b") as f:  # the same inode, the same size
            f.write(b"abc\n")  # 5 as CRLF
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        self.assertEqual(self.listed_size(path), 5)

    def test_a_name_with_w_but_no_s_is_measured(self):
        path = self.drop("1600000000.1.other,W=99", b"a\nb\n")
        box = self.open()
        info = next(i for i in box.list_messages() if i.path == path)
        self.assertEqual((info.size, info.stored_size), (6, 4))
        box.close()

    def test_entries_of_vanished_files_are_pruned_and_junk_cache_ignored(self):
        path = self.drop("plainname", b"x\n")
        self.open().close()
        os.unlink(path)
        self.open().close()
        with open(os.path.join(self.md(), SIZES_NAME), "rb") as f:
            self.assertEqual(json.load(f)["sizes"], {})
        with open(os.path.join(self.md(), SIZES_NAME), "wb") as f:
            f.write(b"{not json")
        self.drop("other", b"y\n")
        box = self.open()
        self.assertEqual(sorted(i.size for i in box.list_messages()), [3, 6, 6])
        box.close()

    def test_dotfiles_and_directories_are_not_messages(self):
        self.drop(".hidden", b"x\n")
        os.mkdir(os.path.join(self.md(), "cur", "adir"))
        box = self.open()
        self.assertEqual(len(box.list_messages()), 1)
        box.close()

    def test_duplicate_unique_parts_get_distinct_uids(self):
        self.drop("1.dup,S=2", b"a\n", sub="new")
        with open(os.path.join(self.md(), "cur", "1.dup,S=2:2,S"), "wb") as f:
            f.write(b"b\n")
        box = self.open()
        uids = [i.uid for i in box.list_messages()]
        self.assertEqual(len(uids), len(set(uids)))
        box.close()


    def test_a_survivor_never_takes_over_a_gone_messages_uid(self):
        # Two foreign files with one unique part: when one goes, the other
        # must not show the client the UIDL it already saw for the first.
        self.drop("1.dup,S=1", b"first\n", sub="new")
        self.drop("1.dup,S=2", b"second\n", sub="new")
        self.drop("1.same", b"x\n", sub="new")
        for flags in ("S", "F"):
            with open(os.path.join(self.md(), "cur", f"1.same:2,{flags}"), "wb") as f:
                f.write(b"y\n")
        box = self.open()
        seen = {i.uid for i in box.list_messages()}
        box.close()
        uids = [i.uid for i in scan(self.md())]
        self.assertEqual(len(uids), len(set(uids)))  # all distinct, the three 1.same too
        self.assertNotIn("1.dup", seen)
        self.assertNotIn("1.same", seen)
        os.unlink(os.path.join(self.md(), "new", "1.dup,S=1"))
        after = {i.uid for i in scan(self.md())}
        self.assertIn("1.dup", after)  # a UIDL never shown before: fetched again, not lost

    def test_a_gone_file_is_never_found_again_as_another_message(self):
        # Two foreign files with one unique part: when one goes (another
        # reader deleted it, or renamed it), looking for it by its unique
        # part must not take the other one -- DELE of the first would remove
        # a message the client never marked (RFC 1939 6), RETR send it.
        def two_sharing(stem):
            """new/STEM ("x") and cur/STEM:2,S ("y"): a box, new/STEM's index."""
            self.drop(stem, b"x\n", sub="new")
            with open(os.path.join(self.md(), "cur", stem + ":2,S"), "wb") as f:
                f.write(b"y\n")
            box = self.open()
            [first] = [i for i, m in enumerate(box.list_messages())
                       if m.path.endswith("/new/" + stem)]
            return box, first

        box, first = two_sharing("1.same")
        other = os.path.join(self.md(), "cur", "1.same:2,S")
        os.unlink(os.path.join(self.md(), "new", "1.same"))
        self.assertRaises(FileNotFoundError, box.open_message, first)
        self.successResultOf(box.delete([first]))  # already gone: not an error
        self.assertTrue(os.path.exists(other))
        box.close()
        # renamed rather than deleted: found, the other left alone
        box, first = two_sharing("2.same")
        moved = os.path.join(self.md(), "cur", "2.same:2,T")
        os.rename(os.path.join(self.md(), "new", "2.same"), moved)
        self.assertEqual(box.open_message(first).read(), b"x\n")
        self.successResultOf(box.delete([first]))
        self.assertFalse(os.path.exists(moved))
        self.assertTrue(os.path.exists(os.path.join(self.md(), "cur", "2.same:2,S")))
        box.close()

    def test_symlinks_are_not_followed(self):
        self.deliver([JOE], b"ours\n")  # the Maildir exists
        secret = os.path.join(self.state, "secret")
        with open(secret, "wb") as f:
            f.write(b"not yours\n")
        os.symlink(secret, os.path.join(self.md(), "new", "2.link"))
        os.symlink(secret, os.path.join(self.md(), "new", "3.link,S=10,W=11"))
        # a name of the hub's own shape, whose sizes are taken unread (no lstat)
        own = "1796221587.M228360P32037Q9R712dd309.hub,S=10,W=11"
        os.symlink(secret, os.path.join(self.md(), "new", own))
        box = self.open()
        infos = box.list_messages()
        names = [os.path.basename(i.path) for i in infos]
        self.assertNotIn("2.link", names)
        self.assertNotIn("3.link,S=10,W=11", names)  # whatever its name says
        self.assertNotIn(own, names)
        os.mkdir(os.path.join(self.md(), "new", "4.dir,S=10,W=11"))
        self.assertEqual(len(scan(self.md())), len(infos))  # nor a directory
        box.close()
        # and a link that appears after the listing is still not read through
        box = self.open()
        real = box.list_messages()[0].path
        os.unlink(real)
        os.symlink(secret, real)
        with self.assertRaises(OSError):
            box.open_message(0)
        self.assertRaises(OSError, box.read_message, 0, 1 << 16)
        box.close()


LOCK_HOLDER = textwrap.dedent("""
    import sys
    from txmailhub.address import Address
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy
    store = MaildirStore(sys.argv[1], "h", SyncerSpy())
    results = []
    store.open_mailbox(Address("joe", "example.org")).addBoth(results.append)
    print(type(results[0]).__name__, flush=True)
    sys.stdin.read()
""")

CRASHER = textwrap.dedent("""
    import os, sys
    from twisted.internet import reactor, defer
    from txmailhub.address import Address
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.store.spool import Spooler
    from txmailhub.store.sync import Syncer
    state = sys.argv[1]
    syncer = Syncer(reactor)
    spooler = Spooler(os.path.join(state, "spool"), syncer)
    store = MaildirStore(os.path.join(state, "mail"), "h", syncer)
    rcpts = [Address("joe", "example.org"), Address("ann", "example.org")]

    @defer.inlineCallbacks
    def session(i):
        n = 0
        while True:
            n += 1
            body = (b"Message-ID: <%d.%d>\\n\\n" % (i, n)) + b"x" * 2000 + b"\\n"
            w = spooler.open()
            for k in range(0, len(body), 700):
                w.write(body[k:k + 700])
            msg = yield w.finish()
            out = yield store.deliver(msg, rcpts)
            spooler.discard(msg)
            if all(v is None for v in out.values()):
                sys.stdout.write("acked %d.%d\\n" % (i, n))
                sys.stdout.flush()

    syncer.start()
    for i in range(5):
        reactor.callWhenRunning(session, i)
    reactor.run()
""")


class ProcessTests(SynchronousTestCase):
    """Real processes: the lock across processes, and a SIGKILL under load."""

    def run_child(self, script, *args):
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(script)
        return subprocess.Popen([sys.executable, path, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def test_lock_across_processes_and_no_stale_lock(self):
        mail = self.mktemp()
        store = MaildirStore(mail, "h", SyncerSpy())
        child = self.run_child(LOCK_HOLDER, mail)
        try:
            self.assertEqual(child.stdout.readline().strip(), "MaildirMailbox")
            self.failureResultOf(store.open_mailbox(JOE), MailboxInUse)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stdin.close()
        box = self.successResultOf(store.open_mailbox(JOE))  # no stale lock
        # and the other direction: we hold it, a second process is refused
        child = self.run_child(LOCK_HOLDER, mail)
        try:
            self.assertEqual(child.stdout.readline().strip(), "Failure")
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
            child.stdin.close()
        box.close()

    def test_a_forked_child_can_mark_tmp_files_while_a_parents_thread_held_the_lock(self):
        # A worker thread of the parent is in clean_tmp (the marks' lock
        # held) when an embedding forks: the child has no such thread, so
        # the lock it inherited must not stay taken -- its first copy into
        # a tmp/ (writing_tmp, on its reactor thread) would hang for good.
        # The parent's marks stay in the child: those files are the
        # parent's, still being written.
        parents = os.path.join(self.mktemp(), "tmp", "the-parents-copy")
        mailbox_module.writing_tmp([parents])
        self.addCleanup(mailbox_module.done_writing_tmp, [parents])
        held, let_go = threading.Event(), threading.Event()

        def cleaning() -> None:
            with mailbox_module._writing_lock:
                held.set()
                let_go.wait(30)

        worker = threading.Thread(target=cleaning)
        worker.start()
        try:
            held.wait(30)
            pid = os.fork()
            if pid == 0:  # the child: a verdict in the exit status, nothing else
                code = 3
                try:
                    mine = os.path.join(os.path.dirname(parents), "the-childs-copy")
                    marking = threading.Thread(target=mailbox_module.writing_tmp,
                                               args=([mine],), daemon=True)
                    marking.start()
                    marking.join(5)
                    if marking.is_alive():
                        code = 1  # waits for a lock nobody holds any more
                    elif parents not in mailbox_module._writing:
                        code = 2
                    else:
                        code = 0
                finally:
                    os._exit(code)
        finally:
            let_go.set()
            worker.join()
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)

    def test_sigkill_under_load_leaves_only_complete_messages(self):
        state = self.mktemp()
        child = self.run_child(CRASHER, state)
        acked = []
        try:
            while len(acked) < 60:
                line = child.stdout.readline()
                if not line:
                    break
                acked.append(line.split()[1])
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stdin.close()
        self.assertEqual(len(acked), 60)
        store = MaildirStore(os.path.join(state, "mail"), "h", SyncerSpy())
        Spooler(os.path.join(state, "spool"), SyncerSpy()).close()  # recovery
        self.assertEqual(os.listdir(os.path.join(state, "spool")), [])
        for who in (JOE, ANN):
            box = self.successResultOf(store.open_mailbox(who))
            ids = []
            for i, info in enumerate(box.list_messages()):
                data = box.open_message(i).read()
                self.assertEqual(len(data), info.stored_size)
                self.assertEqual(len(data), 2000 + 1 + len(data.split(b"\n")[0]) + 2)
                ids.append(re.match(rb"Message-ID: <([\d.]+)>", data).group(1).decode())
            self.assertEqual(len(ids), len(set(ids)))  # each message exactly once
            self.assertTrue(set(acked) <= set(ids))
            self.assertEqual(os.listdir(os.path.join(store.maildir_path(who), "tmp")), [])
            box.close()


class RealSyncerCopyTests(TestCase):
    """The copy fallback with a real ``Syncer`` in thread mode and the real
    reactor (a few small files)."""

    timeout = 20

    def setUp(self):
        from twisted.internet import reactor

        self.state = os.path.abspath(self.mktemp())
        spy = SyncerSpy()
        self.spooler = Spooler(os.path.join(self.state, "spool"), spy)
        self.addCleanup(self.spooler.close)
        self.syncer = Syncer(reactor, method="fsync", threads=2)
        self.syncer.start()
        self.addCleanup(self.syncer.stop)

        def refuse(src, dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        self.store = MaildirStore(os.path.join(self.state, "mail"), "h", self.syncer,
                                  link=refuse)
        self.threads = []
        real = maildir_module._copy_to

        def spy_copy(src, dst):
            self.threads.append(threading.current_thread())
            return real(src, dst)

        self.patch(maildir_module, "_copy_to", spy_copy)

    def spool(self):
        w = self.spooler.open()
        w.write(BODY)
        return self.successResultOf(w.finish())

    def new(self, address=JOE):
        return os.listdir(os.path.join(self.store.maildir_path(address), "new"))

    @defer.inlineCallbacks
    def test_the_copy_runs_on_a_worker_thread(self):
        msg = self.spool()
        out = yield self.store.deliver(msg, [JOE, ANN])
        self.assertEqual(out, {JOE: None, ANN: None})
        self.assertEqual(len(self.threads), 2)
        self.assertNotIn(threading.current_thread(), self.threads)
        self.assertEqual({t.name for t in self.threads}, {"txmailhub-sync"})
        for who in (JOE, ANN):
            (name,) = self.new(who)
            with open(os.path.join(self.store.maildir_path(who), "new", name), "rb") as f:
                self.assertEqual(f.read(), BODY)
            self.assertEqual(os.listdir(os.path.join(self.store.maildir_path(who), "tmp")), [])

    @defer.inlineCallbacks
    def test_stop_during_the_copy_still_delivers_and_a_stopped_syncer_refuses(self):
        msg = self.spool()
        d = self.store.deliver(msg, [JOE])
        stopped = self.syncer.stop()  # while the copy is on the worker
        out = yield d
        yield stopped
        self.assertEqual(out, {JOE: None})  # copied, fsynced, renamed, synced
        self.assertEqual(len(self.new()), 1)
        # stopped: a clean error for the mailbox, no hang, nothing in tmp/
        out = yield self.store.deliver(msg, [JOE])
        self.assertIsInstance(out[JOE], LocalError)
        self.assertEqual(len(self.new()), 1)
        self.assertEqual(os.listdir(os.path.join(self.store.maildir_path(JOE), "tmp")), [])


class KeyedDeliveryTests(Base):
    """``deliver_keyed``: the queue runner's retries make one copy per key,
    whatever a crash before the runner's record left behind."""

    KEY = (1_700_000_123.25, "1A2B3C4D5E6F7A8B9")

    def test_interface(self):
        from txmailhub.interfaces import IKeyedStore
        self.assertTrue(verifyObject(IKeyedStore, self.store))

    def test_second_delivery_under_the_key_makes_no_copy(self):
        msg = self.spool()
        self.assertEqual(self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY)),
                         {JOE: None})
        (name,) = self.names()
        self.assertTrue(name.startswith("1700000123.M250000K1A2B3C4D5E6F7A8B9."), name)
        self.syncer.calls.clear()
        self.assertEqual(self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY)),
                         {JOE: None})
        self.assertEqual(self.names(), [name])
        # the copy an earlier run made may not be durable yet: synced again
        self.assertIn(("dir", os.path.join(self.md(), "new")), self.syncer.calls)
        self.spooler.discard(msg)

    def test_a_syncer_without_call_looks_on_the_callers_thread(self):
        # MaildirStore takes "anything with the Syncer's sync_each/sync";
        # open() looks on the caller's thread when there is no call(), and
        # so must the keyed lookup (it raised AttributeError)
        class Plain:
            def __init__(self, spy):
                self.sync_each, self.sync = spy.sync_each, spy.sync

        store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org",
                             Plain(self.syncer))
        msg = self.spool()
        self.assertEqual(self.successResultOf(store.deliver_keyed(msg, [JOE], self.KEY)),
                         {JOE: None})
        self.assertEqual(self.successResultOf(store.deliver_keyed(msg, [JOE], self.KEY)),
                         {JOE: None})
        self.assertEqual(len(self.names()), 1)
        self.spooler.discard(msg)

    def test_copy_read_meanwhile_is_found_in_cur_under_any_flags(self):
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        for who, flags in ((JOE, "2,S"), (ANN, "2,FS")):
            (name,) = self.names(who)
            os.rename(os.path.join(self.md(who), "new", name),
                      os.path.join(self.md(who), "cur", f"{name}:{flags}"))
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        self.assertEqual(out, {JOE: None, ANN: None})
        for who in (JOE, ANN):
            self.assertEqual(self.names(who), [])
            self.assertEqual(len(self.names(who, "cur")), 1)
        self.spooler.discard(msg)

    def test_another_key_is_another_copy(self):
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        self.successResultOf(self.store.deliver_keyed(msg, [JOE], (self.KEY[0], "OTHER1")))
        self.assertEqual(len(self.names()), 2)
        self.spooler.discard(msg)

    def test_copy_left_in_tmp_by_a_crash_does_not_block_the_retry(self):
        # Another filesystem: the copy is written in tmp/ under the keyed
        # name, then renamed.  A crash between the two leaves tmp/<name>;
        # the retry under the same key must replace it, not fail on
        # O_EXCL until the 36-hour tmp cleaning (and a POP3 login) runs.
        store = self.store_without_links()
        msg = self.spool()
        name = store.keyed_name(msg, self.KEY)
        store._ensure(self.md())
        with open(os.path.join(self.md(), "tmp", name), "wb") as f:
            f.write(b"half a cop")
        out = self.successResultOf(store.deliver_keyed(msg, [JOE], self.KEY))
        self.assertEqual(out, {JOE: None})
        self.assertEqual(self.names(), [name])
        self.assertEqual(self.names(sub="tmp"), [])
        with open(os.path.join(self.md(), "new", name), "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.spooler.discard(msg)

    def test_a_keyed_copy_replaces_the_leftover_on_the_syncer_threads(self):
        store = self.store_without_links()
        syncer = CallRecorder()
        store.syncer = syncer
        msg = self.spool()
        name = store.keyed_name(msg, self.KEY)
        store._ensure(self.md())
        leftover = os.path.join(self.md(), "tmp", name)
        with open(leftover, "wb") as f:
            f.write(b"half a cop")
        d = store.deliver_keyed(msg, [JOE], self.KEY)
        syncer.run_jobs()  # the lookup: not there
        self.assertNoResult(d)
        with open(leftover, "rb") as f:  # untouched on the caller's thread
            self.assertEqual(f.read(), b"half a cop")
        self.assertEqual(len(syncer.jobs), 1)
        syncer.run_jobs()  # the copy
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(self.names(), [name])
        self.assertEqual(self.names(sub="tmp"), [])
        # the retry under the key finds it: still one copy
        d = store.deliver_keyed(msg, [JOE], self.KEY)
        syncer.run_jobs()
        self.assertEqual(self.successResultOf(d), {JOE: None})
        self.assertEqual(syncer.jobs, [])  # no copy job this time
        self.assertEqual(self.names(), [name])
        with open(os.path.join(self.md(), "new", name), "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.spooler.discard(msg)

    def test_copy_found_in_cur_is_synced_before_it_counts(self):
        # A run killed after the link and before the sync of new/, then a
        # POP3 read (mark_seen renames into cur/ without a sync): the
        # runner records "delivered" and drops its own copy on this
        # answer, so cur/ must be durable first.
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        (name,) = self.names()
        os.rename(os.path.join(self.md(), "new", name),
                  os.path.join(self.md(), "cur", f"{name}:2,S"))
        self.syncer.calls.clear()
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        self.assertEqual(out, {JOE: None})
        self.assertIn(("dir", os.path.join(self.md(), "cur")), self.syncer.calls)
        self.assertEqual(self.names(), [])
        self.spooler.discard(msg)

    def test_the_lookup_lists_cur_on_the_syncer_threads_not_the_reactor(self):
        # A mailbox kept for years has tens of thousands of names in cur/:
        # listed on the reactor thread, every session waits for it.
        class ListingRecorder(CallRecorder):
            """Runs each job where the worker threads would, marked in
            ``listed``."""

            def run_jobs(self):
                while self.jobs:
                    f, args, d = self.jobs.pop(0)
                    listed.append("<worker>")
                    d.callback(f(*args))
                    listed.append("</worker>")

        listed = []
        scandir = os.scandir

        def spy(path):
            listed.append(path)
            return scandir(path)

        self.patch(os, "scandir", spy)
        syncer = ListingRecorder()
        store = MaildirStore(os.path.join(self.state, "mail"), "mail.example.org", syncer)
        msg = self.spool()
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        self.assertEqual(out, {JOE: None, ANN: None})
        (name,) = self.names(JOE)
        os.rename(os.path.join(self.md(JOE), "new", name),
                  os.path.join(self.md(JOE), "cur", f"{name}:2,FS"))  # not POP3's flags
        for i in range(3):  # and others, read over the years
            open(os.path.join(self.md(JOE), "cur", f"{i}.M1P1.h:2,S"), "wb").close()
        listed.clear()
        d = store.deliver_keyed(msg, [JOE, ANN], self.KEY)
        self.assertEqual(listed, [])  # nothing listed on the caller's thread
        self.assertNoResult(d)
        self.assertEqual(len(syncer.jobs), 1)  # every mailbox in one job
        syncer.run_jobs()
        # new/ and cur/ listed once, inside the job; ANN's copy is still in new/
        self.assertEqual(listed, ["<worker>", os.path.join(self.md(JOE), "new"),
                                  os.path.join(self.md(JOE), "cur"), "</worker>"])
        self.assertEqual(self.successResultOf(d), {JOE: None, ANN: None})
        self.assertEqual(self.names(JOE), [])  # no second copy
        self.assertEqual(self.names(ANN), [name])  # the one copy, synced again
        self.assertIn(("dir", os.path.join(self.md(JOE), "cur")), syncer.calls)
        self.assertIn(("dir", os.path.join(self.md(ANN), "new")), syncer.calls)
        # and a stopped syncer is every mailbox's failure, as a failed sync is
        syncer.call = lambda f, *args: defer.fail(LocalError("the syncer is stopped"))
        out = self.successResultOf(store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        self.assertIsInstance(out[JOE], LocalError)
        self.assertIsInstance(out[ANN], LocalError)
        self.spooler.discard(msg)

    def test_copy_renamed_to_other_sizes_is_found_by_its_unique_part(self):
        # a login renames a file of the hub's whose ,S= is not its own
        # (changed in place) to its true sizes, in new/ or in cur/ with its
        # flags: the same copy, found by its unique part, its folder synced
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        (name,) = self.names(JOE)
        unique = name.split(",", 1)[0]
        os.rename(os.path.join(self.md(JOE), "new", name),
                  os.path.join(self.md(JOE), "new", f"{unique},S=99,W=101"))
        os.rename(os.path.join(self.md(ANN), "new", name),
                  os.path.join(self.md(ANN), "cur", f"{unique},S=99,W=101:2,RS"))
        self.syncer.calls.clear()
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE, ANN], self.KEY))
        self.assertEqual(out, {JOE: None, ANN: None})
        self.assertEqual(self.names(JOE), [f"{unique},S=99,W=101"])
        self.assertEqual(self.names(ANN), [])
        self.assertEqual(self.names(ANN, "cur"), [f"{unique},S=99,W=101:2,RS"])
        self.assertIn(("dir", os.path.join(self.md(JOE), "new")), self.syncer.calls)
        self.assertIn(("dir", os.path.join(self.md(ANN), "cur")), self.syncer.calls)
        self.spooler.discard(msg)

    def test_copy_moved_to_cur_while_the_folders_are_listed_is_found(self):
        # a POP3 session (or another reader) moves the copy, under a name
        # of its own, from new/ to cur/ between the two listings: it is
        # in the second, and no second copy is made
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        (name,) = self.names(JOE)
        unique = name.split(",", 1)[0]
        md = self.md(JOE)
        renamed = f"{unique},S=99,W=101"
        os.rename(os.path.join(md, "new", name), os.path.join(md, "new", renamed))
        listings = []
        scandir = os.scandir

        def listing(path):
            listings.append(path)
            if len(listings) == 2 and os.path.exists(os.path.join(md, "new", renamed)):
                os.rename(os.path.join(md, "new", renamed),
                          os.path.join(md, "cur", renamed + ":2,S"))
            return scandir(path)

        self.patch(os, "scandir", listing)
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        self.assertEqual(out, {JOE: None})
        self.assertEqual(len(self.names(JOE) + self.names(JOE, "cur")), 1)
        self.spooler.discard(msg)

    def test_a_first_attempt_lists_no_folder(self):
        # ``first``: no earlier call under the key, so no listing -- the
        # copy's own name in new/, and POP3's in cur/, are still looked at
        listed = []
        scandir = os.scandir
        self.patch(os, "scandir", lambda path: listed.append(path) or scandir(path))
        msg = self.spool()
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY, first=True))
        self.assertEqual(out, {JOE: None})
        (name,) = self.names()
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY, first=True))
        self.assertEqual((out, self.names()), ({JOE: None}, [name]))
        self.assertEqual(listed, [])
        self.spooler.discard(msg)

    def test_copy_found_in_cur_that_cannot_be_synced_is_no_delivery(self):
        msg = self.spool()
        self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        (name,) = self.names()
        seen = os.path.join(self.md(), "cur", f"{name}:2,S")
        os.rename(os.path.join(self.md(), "new", name), seen)
        self.syncer.fail[os.path.join(self.md(), "cur")] = OSError(errno.EIO, "EIO")
        out = self.successResultOf(self.store.deliver_keyed(msg, [JOE], self.KEY))
        self.assertIsInstance(out[JOE], OSError)
        self.assertTrue(os.path.exists(seen))  # the user's copy stays
        self.spooler.discard(msg)


class FindTests(Base):
    """``MaildirMailbox._find``: a message another Maildir reader renamed
    (flags, or new/ to cur/) after the snapshot is found again, at a cost
    that does not grow with the mailbox for each message."""

    def fill(self, count):
        """``count`` messages in new/ (plus the one delivered to make the
        Maildir): their names, in delivery order."""
        self.deliver([JOE], b"ours\n")
        names = [f"{1_600_000_000 + i}.M1P1Q1.test,S=2,W=3" for i in range(count)]
        for name in names:
            with open(os.path.join(self.md(), "new", name), "wb") as f:
                f.write(b"x\n")
        return names

    def count_listings(self):
        listed = []
        real = os.listdir

        def listdir(path="."):
            listed.append(path)
            return real(path)

        self.patch(os, "listdir", listdir)
        return listed

    def test_a_session_finding_every_renamed_message_lists_the_folders_a_few_times(self):
        # A mail client moved all 200 to cur/ with its flags after the
        # snapshot: before, each lookup listed cur/ again (and new/ when
        # not found there): 200 listings here, O(n^2) work in all (minutes
        # for 20,000 messages).
        names = self.fill(200)
        box = self.open()
        infos = box.list_messages()
        indices = {os.path.basename(infos[i].path): i for i in range(len(infos))}
        cur = os.path.join(self.md(), "cur")
        for name in names:
            os.rename(os.path.join(self.md(), "new", name), os.path.join(cur, name + ":2,S"))
        listed = self.count_listings()
        for n, name in enumerate(names):
            i = indices[name]
            if n % 2:
                self.assertEqual(box.open_message(i).read(), b"x\n")
            else:
                self.assertEqual(box.read_message(i, 100), b"x\n")
            self.assertEqual(infos[i].path, os.path.join(cur, name + ":2,S"))
            self.assertTrue(infos.seen(i))  # the flag of the new name
        self.assertEqual(len(listed), 2)  # one listing of cur/ and new/
        # renamed once more (the client flagged them trashed): the index is
        # stale, found so at the first lookup, and made again once
        for name in names:
            os.rename(os.path.join(cur, name + ":2,S"), os.path.join(cur, name + ":2,ST"))
        self.successResultOf(box.delete([indices[name] for name in names]))
        self.assertEqual(len(listed), 4)
        self.assertEqual(len(os.listdir(cur)), 0)
        self.assertEqual(len(os.listdir(os.path.join(self.md(), "new"))), 1)  # "ours" stays
        box.close()

    def test_messages_another_reader_deleted_cost_one_listing_in_all(self):
        # gone for good: the recorded path, as before, and no listing each
        names = self.fill(100)
        box = self.open()
        infos = box.list_messages()
        paths = {os.path.join(self.md(), "new", name) for name in names}
        gone = [i for i in range(len(infos)) if infos[i].path in paths]
        for path in paths:
            os.unlink(path)
        listed = self.count_listings()
        for i in gone:
            recorded = infos[i].path
            self.assertRaises(FileNotFoundError, box.open_message, i)
            self.assertEqual(infos[i].path, recorded)
        self.successResultOf(box.delete(gone))
        self.assertEqual(len(listed), 2)
        box.close()

    def test_a_message_renamed_twice_is_found_each_time(self):
        (name,) = self.fill(1)
        box = self.open()
        infos = box.list_messages()
        [i] = [j for j in range(len(infos)) if infos[j].path.endswith(name)]
        first = os.path.join(self.md(), "cur", name + ":2,F")
        os.rename(os.path.join(self.md(), "new", name), first)
        self.assertEqual(box.open_message(i).read(), b"x\n")
        self.assertEqual(infos[i].path, first)
        self.assertFalse(infos.seen(i))
        second = os.path.join(self.md(), "cur", name + ":2,FS")
        os.rename(first, second)
        self.assertEqual(box.read_message(i, 100), b"x\n")
        self.assertEqual(infos[i].path, second)
        self.assertTrue(infos.seen(i))
        box.close()

    def test_a_message_renamed_again_between_its_lookup_and_its_open_is_read(self):
        # Another reader flags it once more after ``_find`` found it and
        # before the open: FileNotFoundError there would be answered as a
        # message removed by another program (pop3 MESSAGE_GONE); it is
        # only renamed, and one more lookup finds it.
        (name,) = self.fill(1)
        box = self.open()
        infos = box.list_messages()
        [i] = [j for j in range(len(infos)) if infos[j].path.endswith(name)]
        first = os.path.join(self.md(), "cur", name + ":2,F")
        second = os.path.join(self.md(), "cur", name + ":2,FR")
        os.rename(os.path.join(self.md(), "new", name), first)
        real_find = box._find
        renames = []

        def find(index):
            path = real_find(index)
            if not renames:
                os.rename(first, second)
                renames.append(second)
            return path

        self.patch(box, "_find", find)
        self.assertEqual(box.open_message(i).read(), b"x\n")
        self.assertEqual(infos[i].path, second)
        os.rename(second, first)
        renames.clear()
        self.assertEqual(box.read_message(i, 100), b"x\n")
        self.assertEqual(infos[i].path, second)
        box.close()

    def test_a_path_another_message_took_in_the_session_is_never_taken(self):
        # Two foreign files share a unique part: A (new/1.same) and B
        # (cur/1.same:2,F).  The paths of the snapshot's messages that the
        # lookup must leave alone change during the session (A found at a
        # new name, then flagged by mark_seen); B gone, its DELE must not
        # remove A, nor RETR send it.
        self.deliver([JOE], b"ours\n")
        new, cur = os.path.join(self.md(), "new"), os.path.join(self.md(), "cur")
        with open(os.path.join(new, "1.same"), "wb") as f:
            f.write(b"a\n")
        with open(os.path.join(cur, "1.same:2,F"), "wb") as f:
            f.write(b"b\n")
        box = self.open()
        infos = box.list_messages()
        [a] = [i for i in range(len(infos)) if infos[i].path == os.path.join(new, "1.same")]
        [b] = [i for i in range(len(infos)) if infos[i].path == os.path.join(cur, "1.same:2,F")]
        os.rename(os.path.join(new, "1.same"), os.path.join(cur, "1.same:2,T"))
        self.assertEqual(box.open_message(a).read(), b"a\n")  # found: cur/1.same:2,T
        box.mark_seen(a)
        self.assertEqual(infos[a].path, os.path.join(cur, "1.same:2,ST"))
        os.unlink(os.path.join(cur, "1.same:2,F"))
        self.assertRaises(FileNotFoundError, box.open_message, b)
        self.assertEqual(infos[b].path, os.path.join(cur, "1.same:2,F"))
        self.successResultOf(box.delete([b]))
        with open(os.path.join(cur, "1.same:2,ST"), "rb") as f:
            self.assertEqual(f.read(), b"a\n")
        box.close()


class FindAfterTheListingTests(Base):
    """A file that comes back under a message's unique part after the
    session's listing was made is found, as it was when every lookup
    listed the folders."""

    fill = FindTests.fill
    count_listings = FindTests.count_listings

    def test_a_message_moved_away_and_back_after_the_listing_is_found(self):
        # Another reader moves A out of the Maildir (a mail client's
        # Trash), a lookup for B makes the listing, then A is moved back
        # (undeleted, same unique part, new flags): RETR A must find it,
        # not answer that it is gone.
        a_name, b_name = self.fill(2)
        box = self.open()
        infos = box.list_messages()
        [a] = [i for i in range(len(infos)) if infos[i].path.endswith(a_name)]
        [b] = [i for i in range(len(infos)) if infos[i].path.endswith(b_name)]
        new, cur = os.path.join(self.md(), "new"), os.path.join(self.md(), "cur")
        trash = os.path.join(self.md(), "trash")
        os.mkdir(trash)
        os.rename(os.path.join(new, a_name), os.path.join(trash, a_name))
        os.rename(os.path.join(new, b_name), os.path.join(cur, b_name + ":2,F"))
        self.assertEqual(box.open_message(b).read(), b"x\n")  # the listing is made
        back = os.path.join(cur, a_name + ":2,S")
        os.rename(os.path.join(trash, a_name), back)
        self.assertEqual(box.read_message(a, 100), b"x\n")
        self.assertEqual(infos[a].path, back)
        self.assertTrue(infos.seen(a))
        box.close()

    def test_our_own_flagging_does_not_make_the_listing_again(self):
        # RETR of the messages still there (each flagged Seen: a rename in
        # new/ and cur/), between lookups of ones deleted for good: one
        # listing, not one per deleted message.
        names = self.fill(20)
        box = self.open()
        infos = box.list_messages()
        index = {os.path.basename(infos[i].path): i for i in range(len(infos))}
        for name in names[::2]:
            os.unlink(os.path.join(self.md(), "new", name))
        listed = self.count_listings()
        for gone, there in zip(names[::2], names[1::2]):
            self.assertRaises(FileNotFoundError, box.open_message, index[gone])
            self.assertEqual(box.read_message(index[there], 100), b"x\n")
            box.mark_seen(index[there])
        self.assertEqual(len(listed), 2)
        self.assertEqual(len(os.listdir(os.path.join(self.md(), "cur"))), 10)
        box.close()

    def test_the_lookup_keeps_little_more_than_the_names_for_the_session(self):
        # One message renamed by another reader: what the session keeps to
        # find it (and the next ones) lasts as long as the session.  A dict
        # of paths by unique part and a count of the snapshot's paths kept
        # some 600 octets a message (12 MB for 20,000: four times the
        # snapshot); the sorted names keep about 100.
        self.fill(2000)
        box = self.open()
        infos = box.list_messages()
        path = infos[0].path
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            os.rename(path, path.replace(os.sep + "new" + os.sep, os.sep + "cur" + os.sep) + ":2,S")
            self.assertIsNotNone(box.read_message(0, 100))
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        self.assertLess(kept, 2000 * 200)
        box.close()


class FindWhileDeletingTests(Base):
    """UPDATE's own unlinks change the folders' mtimes, as ``mark_seen``'s
    renames do: they must not make the listing again for each message
    another reader deleted."""

    fill = FindTests.fill
    count_listings = FindTests.count_listings

    def test_our_own_unlinks_do_not_make_the_listing_again(self):
        # every other message deleted by another reader, then a DELE of
        # all: the misses are interleaved with our unlinks.  Each unlink
        # is given a new folder mtime (as a fine-grained clock does), so
        # the test does not depend on the filesystem's timestamp grain.
        names = self.fill(40)
        box = self.open()
        infos = box.list_messages()
        index = {os.path.basename(infos[i].path): i for i in range(len(infos))}
        for name in names[1::2]:
            os.unlink(os.path.join(self.md(), "new", name))
        real = os.unlink
        tick = [2_000_000_000 * 10**9]

        def unlink(path, *args, **kwargs):
            real(path, *args, **kwargs)
            tick[0] += 10**6
            os.utime(os.path.dirname(path), ns=(tick[0], tick[0]))

        self.patch(os, "unlink", unlink)
        listed = self.count_listings()
        self.successResultOf(box.delete([index[name] for name in names]))
        self.assertEqual(len(listed), 2)  # one listing of new/ and cur/
        self.assertEqual(os.listdir(os.path.join(self.md(), "cur")), [])
        self.assertEqual(len(os.listdir(os.path.join(self.md(), "new"))), 1)  # "ours"
        box.close()


def _old_tmp_file(tmp_path, name="1.leftover") -> tuple[str, str, float]:
    """A Maildir whose tmp/ holds one file: (md, its path, its mtime)."""
    md = tmp_path / "md"
    (md / "tmp").mkdir(parents=True)
    path = md / "tmp" / name
    path.write_bytes(b"x")
    os.utime(path, (1_700_000_000, 1_700_000_000))  # whole seconds: exact sums
    return str(md), str(path), os.stat(path).st_mtime


def test_a_tmp_mark_taken_twice_holds_until_both_are_done(tmp_path):
    # two tries under one keyed name may overlap: the first done must not
    # let the clean-up take the file the second is still writing
    md, path, mtime = _old_tmp_file(tmp_path)
    later = mtime + mailbox_module.STALE_TMP_SECONDS + 10
    mailbox_module.writing_tmp([path])
    mailbox_module.writing_tmp([path])
    try:
        mailbox_module.done_writing_tmp([path])
        mailbox_module.clean_tmp(md, later)
        assert os.path.exists(path)
    finally:
        mailbox_module.done_writing_tmp([path])
    assert path not in mailbox_module._writing
    mailbox_module.clean_tmp(md, later)
    assert not os.path.exists(path)


def test_done_writing_tmp_takes_any_iterable(tmp_path):
    # a generator is read once: every mark it names still goes
    md, path, mtime = _old_tmp_file(tmp_path)
    mailbox_module.writing_tmp(p for p in [path])
    mailbox_module.done_writing_tmp(p for p in [path])
    assert path not in mailbox_module._writing
    mailbox_module.clean_tmp(md, mtime + mailbox_module.STALE_TMP_SECONDS + 10)
    assert not os.path.exists(path)


def test_a_tmp_file_is_stale_only_after_stale_tmp_seconds(tmp_path):
    md, path, mtime = _old_tmp_file(tmp_path)
    mailbox_module.clean_tmp(md, mtime + mailbox_module.STALE_TMP_SECONDS)
    assert os.path.exists(path)
    mailbox_module.clean_tmp(md, mtime + mailbox_module.STALE_TMP_SECONDS + 1)
    assert not os.path.exists(path)


def test_a_stale_link_in_tmp_is_judged_by_its_own_age_not_its_target_s(tmp_path):
    # a link left in tmp/ is a leftover like any file there: stat() went
    # through it, so a dangling one (its target gone) stayed for good, and
    # one to a file changed lately stayed as long as that file was fresh;
    # removing it removes the link alone, never what it points to
    md, target, mtime = _old_tmp_file(tmp_path)
    os.utime(target, (mtime + 100_000, mtime + 100_000))  # fresh next to the links
    dangling = os.path.join(md, "tmp", "2.dangling")
    linked = os.path.join(md, "tmp", "3.linked")
    os.symlink(os.path.join(md, "tmp", "gone"), dangling)
    os.symlink(target, linked)
    for link in (dangling, linked):
        os.utime(link, (mtime, mtime), follow_symlinks=False)
    mailbox_module.clean_tmp(md, mtime + mailbox_module.STALE_TMP_SECONDS + 1)
    assert not os.path.lexists(dangling) and not os.path.lexists(linked)
    assert os.path.exists(target)


def _empty_md(tmp_path) -> Path:
    """An empty Maildir (``tmp``, ``new``, ``cur``) at ``tmp_path/md``."""
    md = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    return md


def _md_with_plain_message(tmp_path) -> tuple[str, str]:
    """A Maildir holding one message whose name carries no sizes (another
    delivery agent's): ``scan`` measures it.  (md, its path)."""
    md = _empty_md(tmp_path)
    path = md / "new" / "1600000001.M1P1Q1.other"
    path.write_bytes(b"Subject: x\n\nhello\n")
    return str(md), str(path)


def _wrong_size_cache(path: str) -> bytes:
    """A size cache, valid JSON, that matches the message at ``path`` by
    inode, mtime and size but gives it 999 octets, wrong on purpose: were
    the cache taken, 999 would be listed."""
    st = os.stat(path)
    entry = {os.path.basename(path): [st.st_ino, st.st_mtime_ns, st.st_size, 999]}
    return json.dumps({"version": 1, "sizes": entry}).encode()


def test_a_size_cache_that_is_a_pipe_is_not_waited_on(tmp_path):
    # whoever can write into a Maildir could make .txmailhub-sizes a pipe:
    # read plainly, the login's scan waited for a writer for ever, holding
    # the mailbox's lock and a worker thread; it is ignored and replaced
    md, _ = _md_with_plain_message(tmp_path)
    cache = Path(md) / mailbox_module.SIZES_NAME
    os.mkfifo(cache)
    snapshot = not_waiting_on(cache, lambda: scan(md))
    assert [m.size for m in snapshot] == [21]
    assert cache.is_file() and not cache.is_symlink()


def test_a_size_cache_that_is_a_link_is_not_read_through_it(tmp_path):
    # nor is the cache read through a link (to /dev/zero it was read
    # without end): the sizes a file elsewhere claims are not taken
    md, path = _md_with_plain_message(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(_wrong_size_cache(path))
    cache = Path(md) / mailbox_module.SIZES_NAME
    cache.symlink_to(elsewhere)
    assert [m.size for m in scan(md)] == [21]
    assert not cache.is_symlink()


def test_a_message_made_a_pipe_while_scan_measures_it_is_skipped_not_waited_on(
        tmp_path, monkeypatch):
    # scan takes a plain name for a regular file by its lstat, then opens
    # it to count its octets: a pipe put there in between (a rename) held
    # that open until some writer came
    md, path = _md_with_plain_message(tmp_path)
    real_lstat = os.lstat

    def lstat_then_swap(p, *args, **kwargs):
        st = real_lstat(p, *args, **kwargs)
        if p == path:
            os.unlink(path)
            os.mkfifo(path)
        return st

    monkeypatch.setattr(os, "lstat", lstat_then_swap)
    snapshot = not_waiting_on(Path(path), lambda: scan(md))
    assert len(snapshot) == 0


def test_a_size_cache_that_is_no_regular_file_is_warned_of_and_replaced(tmp_path, log_events):
    # even when scan measures nothing (every name carries its sizes), the
    # pipe at the cache's name is said and replaced with a file
    md = _empty_md(tmp_path)
    (md / "new" / "1600000001.M1P1Q1.host,S=6,W=7").write_bytes(b"hello\n")
    cache = md / mailbox_module.SIZES_NAME
    os.mkfifo(cache)
    snapshot = not_waiting_on(cache, lambda: scan(str(md)))
    assert [m.size for m in snapshot] == [7]
    assert cache.is_file() and not cache.is_symlink()
    assert [formatEvent(e) for e in log_events if "size cache" in formatEvent(e)] == [
        f"ignoring size cache {cache}: not a regular file"]


def _dovecot_maildir(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A Maildir as Dovecot 2.3's LDA leaves it (names, flags, index and
    keyword files), built by hand: its ``,W=`` leaves out the CRLF that a
    message without a final newline gets before POP3's terminating line."""
    md = _empty_md(tmp_path)
    files = {
        "new/1796221599.M334445P32236.vm,S=16,W=18": b"Subject: x\n\nlast",
        "cur/1796221599.M302178P32232.vm,S=17,W=20:2,Fa": b"Subject: y\n\nbody\n",
        "cur/1796221599.M320441P32235.vm,S=18,W=18:2,FSa": b"Subject: z\r\n\r\nab\r\n",
    }
    for name, data in files.items():
        (md / name).write_bytes(data)
    for name in ("dovecot-uidlist", "dovecot-keywords", "dovecot.index.log",
                 "dovecot.index.cache", "dovecot-uidvalidity"):
        (md / name).write_bytes(b"3 V1796221599 N4\n")
    return md, files


def test_dovecot_sizes_in_a_name_are_measured_so_list_is_what_retr_sends(tmp_path: Path) -> None:
    """RFC 1939 5: LIST gives the exact size of the message, the octets
    RETR sends before dot-stuffing.  For a message without a final
    newline that is its CRLF form plus the CRLF before the terminating
    line, which Dovecot's ``,W=`` leaves out (18 where RETR sends 20):
    a name the hub did not give has its sizes measured."""
    md, files = _dovecot_maildir(tmp_path)
    snapshot = scan(str(md))
    sent = {}
    for info in snapshot:
        encoder = CRLFEncoder()
        with open(info.path, "rb") as f:
            data = f.read()
        sent[os.path.relpath(info.path, md)] = (info.size, info.stored_size,
                                               len(encoder.encode(data) + encoder.finish()))
    assert sent == {name: (len(crlf), len(data), len(crlf)) for name, data in files.items()
                    for crlf in [data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                                 + (b"" if data.endswith(b"\n") else b"\r\n")]}
    assert sent["new/1796221599.M334445P32236.vm,S=16,W=18"] == (20, 16, 20)
    # Dovecot's files are no messages, and the next scan takes the sizes
    # measured from the cache, as for a plain name
    assert len(snapshot) == 3
    assert [m.size for m in scan(str(md))] == [m.size for m in snapshot]


def test_the_hubs_own_names_are_listed_from_their_sizes_unread(tmp_path: Path) -> None:
    """The names the hub gives still cost no read (nor stat): their
    ``,W=`` is counted by the rule RETR sends by."""
    md = _empty_md(tmp_path)
    names = ["1796221587.M228360P32037Q1R712dd309.hub,S=5,W=99",
             "1796221588.M1Kq1x2.hub,S=5,W=98"]
    for name in names:
        (md / "new" / name).write_bytes(b"a\nb\nc")  # sizes the names do not say
    assert [(m.size, m.stored_size) for m in scan(str(md))] == [(99, 5), (98, 5)]


def test_a_dovecot_name_measured_once_is_taken_from_the_cache_at_the_next_login(
        tmp_path: Path, monkeypatch) -> None:
    """A mailbox of Dovecot's names costs one read of each file at the
    first login and an ``lstat`` at each later one: the sizes measured are
    kept (keyed by the name without flags, so a rename to ``cur/`` keeps
    them)."""
    md, files = _dovecot_maildir(tmp_path)
    first = [(m.size, m.stored_size) for m in scan(str(md))]
    cached = json.loads((md / mailbox_module.SIZES_NAME).read_bytes())["sizes"]
    assert sorted(cached) == sorted(name.split("/")[1].split(":")[0] for name in files)
    new = md / "new" / "1796221599.M334445P32236.vm,S=16,W=18"
    new.rename(md / "cur" / (new.name + ":2,S"))

    def no_read(path: str) -> tuple[int, int]:
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(mailbox_module, "_crlf_size_of_file", no_read)
    assert [(m.size, m.stored_size) for m in scan(str(md))] == first


@pytest.mark.parametrize("doc", [
    b'{"version": 1, "sizes": []}',
    b'{"version": 1, "sizes": "1600000001.M1P1Q1.other"}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser goes
])
def test_a_size_cache_of_the_wrong_shape_does_not_stop_the_login(
        tmp_path, log_events, doc: bytes) -> None:
    # an AttributeError (sizes no object) or a RecursionError (nesting)
    # came out of scan, and every login to the mailbox failed
    md, _ = _md_with_plain_message(tmp_path)
    cache = Path(md) / mailbox_module.SIZES_NAME
    cache.write_bytes(doc)
    assert [m.size for m in scan(md)] == [21]
    assert json.loads(cache.read_bytes())["version"] == 1  # replaced
    assert [e for e in log_events if "unreadable size cache" in formatEvent(e)]


def test_a_size_cache_far_larger_than_its_mailbox_needs_is_not_read(tmp_path, log_events) -> None:
    # whoever can write into the Maildir could make the cache any size,
    # and it was read whole into the process that serves every mailbox.
    # (Here valid JSON with a wrong size for the message: were it read,
    # that size would be listed.)
    md, path = _md_with_plain_message(tmp_path)
    doc = _wrong_size_cache(path)
    cache = Path(md) / mailbox_module.SIZES_NAME
    cache.write_bytes(doc + b" " * (1 << 20))
    assert [m.size for m in scan(md)] == [21]
    assert len(cache.read_bytes()) < 200
    assert [e for e in log_events if "unreadable size cache" in formatEvent(e)]


def test_the_cache_of_the_longest_names_is_within_its_bound(tmp_path, monkeypatch) -> None:
    """The bound leaves room for any name: 255 octets, none of them
    UTF-8 (each ``\\udcXX`` in the JSON).  Measured once, then taken."""
    md = _empty_md(tmp_path)
    for i in range(2):
        (md / os.fsdecode(b"new/" + bytes([0x30 + i]) + b"\xff" * 254)).write_bytes(b"a\nb")
    first = [(m.size, m.stored_size) for m in scan(str(md))]
    assert first == [(6, 3), (6, 3)]
    monkeypatch.setattr(mailbox_module, "_crlf_size_of_file", None)  # not called again
    assert [(m.size, m.stored_size) for m in scan(str(md))] == first


def test_a_plain_named_message_moved_to_cur_while_scan_runs_is_listed(tmp_path, monkeypatch):
    # scan lists new/ and cur/ before it reads the size cache (whose size
    # it bounds by theirs): a message another reader moves from new/ to
    # cur/ after that, before scan's lstat of it, is in cur/ all the same
    md, path = _md_with_plain_message(tmp_path)
    moved = os.path.join(md, "cur", os.path.basename(path) + ":2,S")
    real_lstat = os.lstat

    def moving_first(p, *args, **kwargs):
        if p == path:
            os.rename(path, moved)
        return real_lstat(p, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", moving_first)
    snapshot = scan(md)
    assert [(m.path, m.size, m.seen) for m in snapshot] == [(moved, 21, True)]


@pytest.mark.parametrize("sizes", ["", ",W=99", ",S=5", ",S=77"])
def test_a_name_of_the_hubs_shape_without_both_sizes_is_measured(tmp_path: Path, sizes) -> None:
    """A name of the hub's shape that lacks ``S=`` or ``W=`` (Python's
    ``mailbox.Maildir`` writes neither) says no size to list: LIST gives
    the octets RETR sends, measured, not a size made up for the missing
    field."""
    md = _empty_md(tmp_path)
    (md / "new" / f"1796221587.M228360P32037Q1.hub{sizes}").write_bytes(b"a\nb\nc")
    assert [(m.size, m.stored_size) for m in scan(str(md))] == [(9, 5)]


def test_a_size_cache_is_read_up_to_its_bound_and_not_an_octet_more(tmp_path, log_events) -> None:
    # the bound is ENTRY_OCTETS for each message and one more: a cache of
    # exactly that many octets is taken (here its size for the message,
    # wrong on purpose, is listed), one octet more is ignored and measured
    md, path = _md_with_plain_message(tmp_path)
    doc = _wrong_size_cache(path)
    cache = Path(md) / mailbox_module.SIZES_NAME
    bound = mailbox_module._SizeCache.ENTRY_OCTETS * 2
    assert bound == 4096
    cache.write_bytes(doc + b" " * (bound - len(doc)))
    assert [m.size for m in scan(md)] == [999]
    assert not [e for e in log_events if "unreadable size cache" in formatEvent(e)]
    cache.write_bytes(doc + b" " * (bound + 1 - len(doc)))
    assert [m.size for m in scan(md)] == [21]
    assert [e for e in log_events if "unreadable size cache" in formatEvent(e)]
