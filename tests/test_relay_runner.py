"""The queue runner with a fake agent, a real queue directory and a Clock."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import random
import re
from collections.abc import Callable, Iterator

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from tests.relay_fakes import FakeNetwork, FakeResolver, FakeTLS, ScriptedSMTPServer
from tests.test_relay_attempt import ZONE, GreylistsCarolTakesOnePerMessage, SilentAfterOneMessage
from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, RecipientDSN, SpooledMessage
from txmailhub.relay import admin, schedule
from txmailhub.relay.attempt import DeliveryAgent, DeliveryResult
from txmailhub.relay.mx import MXResolver
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.recording import ERROR_RETRY
from txmailhub.relay.runner import CUT_GRACE, SHUTDOWN_GRACE, QueueRunner
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.testing import MemoryMailboxStore, StaticRouter

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")

ALICE = Address("alice", "example.org")
BOB = Address("bob", "remote.test")
CAROL = Address("carol", "other.test")
LOCAL = Address("joe", "example.org")
OK = Reply.of(250, "2.0.0", "ok")
LATER = Reply.of(451, "4.7.1", "greylisted")
NO = Reply.of(550, "5.1.1", "no such user")


class FakeAgent:
    """Its deliveries in flight are sessions (``connected``), except for
    the queue ids in ``resolving`` (a DNS lookup, a connect)."""

    def __init__(self):
        self.calls = []
        self.script = lambda entry, dest, rcpts: [DeliveryResult(a, "delivered", OK, "mx")
                                                  for a in rcpts]
        self.in_flight: dict[str, int] = {}
        self.resolving: set[str] = set()
        self.quiesced = None

    def destination(self, address):
        return address.domain

    def deliver(self, entry, dest, rcpts, settled=None):
        self.calls.append((entry.id, dest, list(rcpts)))
        self.in_flight[entry.id] = self.in_flight.get(entry.id, 0) + 1

        def over(result):
            self.in_flight[entry.id] -= 1
            return result

        return defer.maybeDeferred(self.script, entry, dest, rcpts).addBoth(over)

    def connected(self, queue_id):
        return bool(self.in_flight.get(queue_id)) and queue_id not in self.resolving

    def quiesce(self, keep):
        self.quiesced = set(keep)

    aborted = 0

    def hold(self):
        """Answer no delivery until the test fires it: the list of
        ``(Deferred, recipients)`` the attempts wait on."""
        pending = []

        def script(e, d, r):
            x = defer.Deferred()
            pending.append((x, r))
            return x

        self.script = script
        return pending

    def abort_all(self):
        self.aborted += 1

    def resume(self):
        self.quiesced = None


class DSNSpy:
    def __init__(self, clock=None):
        self.sent = []
        self.fail = False
        self.clock = clock
        self.tried = []  # when each notice was tried, sent or not

    def __call__(self, components, envelope, data):
        if self.clock is not None:
            self.tried.append(self.clock.seconds())
        if self.fail:
            return defer.fail(RuntimeError("spool full"))
        self.sent.append((envelope, data))
        return defer.succeed(None)


@pytest.fixture
def hub(tmp_path):
    h = make_hub(tmp_path)
    yield h
    h.runner.stop()


def _answer_all(pending, answer=None) -> None:
    """Answer every delivery the agent holds, oldest first, and those the
    answers start too (``answer(recipients)`` gives the results; all
    delivered when it is not given)."""
    while pending:
        d, rcpts = pending.pop(0)
        d.callback(answer(rcpts) if answer is not None
                   else [DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])


def make_hub(tmp_path, relay='max_per_destination = 1\nqueue_lifetime = "1d"\n'):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   f'[relay]\n{relay}')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    clock.advance(1_700_000_000)
    store = MemoryMailboxStore()
    components = Components(settings=settings, reactor=clock,
                            router=StaticRouter({"joe": None, "alice": None}), store=store,
                            spooler=None, portal=None)
    queue = OutboundQueue(settings.queue_dir, clock)
    components.queue = queue
    agent = FakeAgent()
    dsn = DSNSpy(clock)
    runner = QueueRunner(queue, agent, components, clock, send_dsn=dsn)

    class Hub:
        pass

    h = Hub()
    h.__dict__.update(settings=settings, clock=clock, store=store, components=components,
                      queue=queue, agent=agent, dsn=dsn, runner=runner, tmp=tmp_path)
    return h


@contextlib.contextmanager
def next_runner(hub, queue=None) -> Iterator[FakeAgent]:
    """The next process's runner over the hub's queue directory (through
    ``queue``, or a queue object of its own), started with an agent of its
    own; yields that agent, and stops the runner on the way out."""
    if queue is None:
        queue = OutboundQueue(hub.settings.queue_dir, hub.clock)
    agent = FakeAgent()
    runner = QueueRunner(queue, agent, hub.components, hub.clock, send_dsn=hub.dsn)
    runner.start()
    try:
        yield agent
    finally:
        runner.stop()


def enqueue(hub, *rcpts, sender=ALICE, notify=None):
    path = hub.tmp / f"spool-{len(os.listdir(hub.tmp))}"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    env = Envelope(sender=sender, recipients=rcpts,
                   recipient_dsn=tuple((r, RecipientDSN(notify=notify)) for r in rcpts)
                   if notify else ())
    return hub.queue.enqueue(env, SpooledMessage(str(path), 20, 23)).result


def _second_waiting_for_its_slot(hub) -> tuple[list, str, str]:
    """The runner started, the agent holding its deliveries and two
    entries for remote.test (max_per_destination = 1): the first being
    delivered, the second waiting for the first's slot.  (The agent's
    pending deliveries, first, second.)"""
    hub.runner.start()
    pending = hub.agent.hold()
    first = enqueue(hub, BOB)
    second = enqueue(hub, BOB)
    assert [c[0] for c in hub.agent.calls] == [first]
    return pending, first, second


def test_new_entry_attempted_at_once_and_removed(hub):
    hub.runner.start()
    qid = enqueue(hub, BOB)
    assert hub.agent.calls == [(qid, "remote.test", [BOB])]
    assert hub.queue.ids() == []
    assert hub.dsn.sent == []


def test_transient_retried_per_schedule(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    entry = hub.queue.read(qid)
    assert entry.recipients[0].attempts == 1
    assert entry.recipients[0].last_reply == LATER
    assert entry.next_attempt == hub.clock.seconds() + 60
    hub.clock.advance(59)
    assert len(hub.agent.calls) == 1
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 2
    assert hub.queue.read(qid).next_attempt == hub.clock.seconds() + 300
    hub.agent.script = FakeAgent().script
    hub.clock.advance(300)
    assert len(hub.agent.calls) == 3
    assert hub.queue.ids() == []


def test_permanent_failure_bounces_that_recipient_only(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == BOB else "delivered", NO if a == BOB else OK,
                       "mx.remote.test") for a in r]
    enqueue(hub, BOB, CAROL)
    assert hub.queue.ids() == []
    [(env, data)] = hub.dsn.sent
    assert env.sender is None and env.recipients == (ALICE,)
    assert b"Final-Recipient: rfc822; bob@remote.test" in data
    assert b"carol@other.test" not in data.split(b"message/delivery-status")[1]
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in data


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_a_bounce_whose_message_cannot_be_opened_for_now_is_made_again_later(
        hub, monkeypatch, log_events, error):
    # out of file descriptors when the failure notice reads the message's
    # header section: the notice went out for good with an empty
    # text/rfc822-headers part (the sender could not tell which message it
    # was about) and without In-Reply-To; it is made again later instead
    from txmailhub.relay import bounce

    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    real = open
    failing = [True]

    def fake_open(path, mode="r", *args, **kwargs):
        if failing[0] and str(path).endswith(".msg"):
            raise OSError(error, os.strerror(error), str(path))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(bounce, "open_regular", lambda path: fake_open(path, "rb"))
    qid = enqueue(hub, BOB)
    assert hub.dsn.sent == [] and hub.queue.read(qid).recipients[0].state == "failed"
    lines = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.error]
    assert len(lines) == 1 and lines[0].startswith(f"{qid}: could not send the failed notice")
    assert os.strerror(error) in lines[0]
    failing[0] = False
    hub.clock.advance(60)
    assert len(hub.agent.calls) == 1  # not delivered again, only the bounce
    [(_env, data)] = hub.dsn.sent
    assert hub.queue.ids() == []
    returned = data.split(b"Content-Type: text/rfc822-headers")[1]
    assert b"Subject: hi" in returned.split(b"\n--")[0]


def test_bounce_retried_when_it_cannot_be_sent(hub):
    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    assert hub.queue.read(qid).recipients[0].state == "failed"
    hub.dsn.fail = False
    hub.clock.advance(60)
    assert len(hub.agent.calls) == 1  # not delivered again, only the bounce
    assert hub.queue.ids() == [] and len(hub.dsn.sent) == 1


def test_null_sender_never_bounced(hub):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
        hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
        enqueue(hub, BOB)  # an ordinary sender gets its notice
        enqueue(hub, BOB, sender=None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert hub.queue.ids() == [] and len(hub.dsn.sent) == 1  # the first one's only
    # the dropped one is named, with the recipient and why
    [line] = [formatEvent(e) for e in events if "dropping it" in formatEvent(e)]
    assert line.endswith(f"a message from <> (a notice) could not be delivered to {BOB}: "
                         f"{NO.text()}; dropping it")


def test_notify_never_and_success(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    enqueue(hub, BOB, notify=("NEVER",))
    assert hub.dsn.sent == [] and hub.queue.ids() == []
    hub.agent.script = FakeAgent().script
    enqueue(hub, BOB, notify=("SUCCESS",))
    [(_, data)] = hub.dsn.sent
    assert b"Action: relayed" in data
    assert hub.queue.ids() == []


def test_lifetime_expiry_bounces(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    for _ in range(40):
        hub.clock.advance(4 * 3600)
        if not hub.queue.ids():
            break
    assert hub.queue.ids() == []
    warnings = [d for _, d in hub.dsn.sent if b"Action: delayed" in d]
    failures = [d for _, d in hub.dsn.sent if b"Action: failed" in d]
    assert len(warnings) == 1  # the delay warning, once
    assert len(failures) == 1
    assert b"451 4.7.1 greylisted" in failures[0]
    # the last attempt happened at the deadline, not after it
    assert hub.clock.seconds() - 1_700_000_000 <= 86400 + 4 * 3600
    assert qid


def test_the_delay_warning_goes_out_when_it_is_due(hub):
    # Default schedule 1m 5m 15m 30m 1h 2h 4h: after the 2h step the next
    # retry would be at about 3h51m + 4h; the 4-hour warning must not wait
    # for it (the audit saw it at 7h51m).
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    start = hub.clock.seconds()
    enqueue(hub, BOB)
    sent_at = None
    while hub.clock.seconds() - start < 12 * 3600 and sent_at is None:
        hub.clock.advance(60)
        if any(b"Action: delayed" in d for _, d in hub.dsn.sent):
            sent_at = hub.clock.seconds() - start
    assert sent_at is not None and 4 * 3600 <= sent_at <= 4 * 3600 + 60


@pytest.mark.parametrize("notify,sender", [(("NEVER",), ALICE), (("FAILURE",), ALICE),
                                           (None, None)])
def test_no_extra_attempt_for_a_delay_warning_nobody_gets(hub, notify, sender):
    # The attempt moved to the warning's moment exists to send the notice
    # if it fails; when no recipient wants one (NOTIFY without DELAY, or a
    # notice itself, from <>), the entry keeps to its retry schedule.
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    start = hub.clock.seconds()
    enqueue(hub, BOB, sender=sender, notify=notify)
    tried = []
    while hub.clock.seconds() - start < 9 * 3600:
        n = len(hub.agent.calls)
        hub.clock.advance(60)
        if len(hub.agent.calls) > n:
            tried.append(int(hub.clock.seconds() - start) // 60)
    # 1m 5m 15m 30m 1h 2h 4h: minutes 1, 6, 21, 51, 111, 231, 471; no try at 240
    assert tried == [1, 6, 21, 51, 111, 231, 471]
    assert hub.dsn.sent == []


def test_flush_and_hold_release(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    hub.queue.request_flush()
    hub.clock.advance(1)  # the runner looks every second
    assert len(hub.agent.calls) == 2
    hub.queue.set_held(qid, True)
    hub.clock.advance(1)
    hub.queue.request_flush()
    hub.clock.advance(1)
    hub.clock.advance(3600)
    assert len(hub.agent.calls) == 2  # held: never attempted
    hub.agent.script = FakeAgent().script
    hub.queue.set_held(qid, False)
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 3 and hub.queue.ids() == []


def test_each_result_is_logged_with_what_happens_next(hub):
    from twisted.logger import formatEvent, globalLogPublisher

    carol, dave = Address("carol", "remote.test"), Address("dave", "remote.test")
    timeout = LocalReply(451, "4.4.2", ("timeout waiting for the reply to DATA",))
    results = {BOB: ("delivered", OK), carol: ("transient", timeout), dave: ("permanent", NO)}
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
        hub.agent.script = lambda e, d, r: [DeliveryResult(a, *results[a], "mx") for a in r]
        qid = enqueue(hub, BOB, carol, dave)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if formatEvent(e).startswith(f"{qid} to ")]
    nxt = schedule.utc_text(hub.queue.read(qid).next_attempt)
    assert sorted(lines) == sorted([
        f"{qid} to {BOB}: {OK.text()}",
        f"{qid} to {carol}: hub: {timeout.text()}; next attempt {nxt}",
        f"{qid} to {dave}: {NO.text()}; failed",
    ])
    # at the end of the queue lifetime a temporary failure is final
    events.clear()
    globalLogPublisher.addObserver(events.append)
    try:
        hub.clock.advance(2 * 86400)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if formatEvent(e).startswith(f"{qid} to ")]
    assert lines == [f"{qid} to {carol}: hub: {timeout.text()}; failed: too long queued"]


def test_queue_commands_are_logged_by_the_hub(hub):
    # `mailhub queue hold/release/delete` run in another process; the hub's
    # log is where an operator looks for who dropped a message
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
        hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx")
                                            for a in r]
        qid = enqueue(hub, BOB)
        hub.queue.set_held(qid, True)
        hub.clock.advance(1)
        hub.clock.advance(1)  # seen once: logged once
        hub.queue.set_held(qid, False)
        hub.clock.advance(1)
        hub.queue.set_held(qid, True)
        hub.clock.advance(1)
        assert hub.queue.delete(qid)  # a held entry
        hub.clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if f"queue entry {qid}" in formatEvent(e)]
    assert lines == [
        f"queue entry {qid} held (mailhub queue hold)",
        f"queue entry {qid} released (mailhub queue release)",
        f"queue entry {qid} held (mailhub queue hold)",
        f"queue entry {qid} deleted (mailhub queue delete): no delivery, no notice",
    ]


def test_a_hold_or_delete_during_an_attempt_is_logged_too(hub):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    waiting = []
    try:
        hub.runner.start()

        def slow(e, d, r):
            waiting.append(defer.Deferred())
            return waiting[-1]

        hub.agent.script = slow
        held = enqueue(hub, BOB)
        hub.queue.set_held(held, True)  # while its attempt runs
        hub.clock.advance(1)
        waiting.pop().callback([DeliveryResult(BOB, "transient", LATER, "mx")])
        deleted = enqueue(hub, BOB)
        assert hub.queue.delete(deleted)
        hub.clock.advance(1)
        waiting.pop().callback([DeliveryResult(BOB, "delivered", OK, "mx")])
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events]
    assert f"queue entry {held} held (mailhub queue hold)" in lines
    assert (f"queue entry {deleted} deleted (mailhub queue delete): no more attempts, no notice"
            in lines)
    assert f"{deleted} done: removed from the queue" not in lines
    assert hub.queue.ids() == [held]


def test_delete_while_running(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    assert hub.queue.delete(qid)
    hub.clock.advance(1)
    hub.clock.advance(3600)
    assert len(hub.agent.calls) == 1


def test_exception_in_one_entry_does_not_stall_others(hub):
    hub.runner.start()

    def script(e, d, r):
        if d == "remote.test":
            raise RuntimeError("boom")
        return [DeliveryResult(a, "delivered", OK, "mx") for a in r]

    hub.agent.script = script
    bad = enqueue(hub, BOB)
    enqueue(hub, CAROL)
    assert hub.queue.ids() == [bad]
    assert len(hub.agent.calls) == 2
    hub.clock.advance(60)
    assert len(hub.agent.calls) == 3  # retried after a minute


def test_a_router_that_fails_for_one_entry_does_not_stop_the_start(hub, monkeypatch):
    # the runner tells where each entry goes when it reads it (to take no
    # more entries for a destination than it can use): a router failing
    # there must not end the start, nor keep the other entries back
    bad = enqueue(hub, BOB)
    good = enqueue(hub, CAROL)
    real = hub.components.router.is_local_domain

    def failing(domain):
        if domain == "remote.test":
            raise RuntimeError("the router failed")
        return real(domain)

    monkeypatch.setattr(hub.components.router, "is_local_domain", failing)
    hub.runner.start()
    assert good not in hub.queue.ids()  # delivered
    assert hub.queue.ids() == [bad]  # its attempt failed as the router did: retried later


def hold_record_writes(hub, monkeypatch) -> list:
    """Every queue record update waits in the returned list until the
    test calls it (then it is written, and its Deferred fires)."""
    real = hub.queue.update
    held = []

    def update(qid, change):
        d = defer.Deferred()
        held.append(lambda: real(qid, change).chainDeferred(d))
        return d

    monkeypatch.setattr(hub.queue, "update", update)
    return held


def records_cannot_be_written(hub, monkeypatch) -> list[bool]:
    """Every queue record update fails (no descriptor left) while the
    returned flag's ``[0]`` is true."""
    real = hub.queue.update
    broken = [True]

    def update(qid, change):
        if broken[0]:
            return defer.fail(OSError(24, "Too many open files"))
        return real(qid, change)

    monkeypatch.setattr(hub.queue, "update", update)
    return broken


def answer_delivered(sessions: list, rcpt) -> None:
    """The held session of ``hub.agent.hold()``'s list that has ``rcpt``
    alone answers "delivered", and leaves the list."""
    x, rcpts = next(s for s in sessions if s[1] == [rcpt])
    sessions.remove((x, rcpts))
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])


def enqueue_unrecorded(hub, monkeypatch, *rcpts) -> str:
    """A message enqueued and tried while its record cannot be written: its
    results wait in the runner's memory for the next try (the writes work
    again, and ``monkeypatch``'s other changes are undone)."""
    broken = records_cannot_be_written(hub, monkeypatch)
    qid = enqueue(hub, *rcpts)
    assert qid in hub.runner._unrecorded
    broken[0] = False
    monkeypatch.undo()
    return qid


def test_a_delivery_whose_record_cannot_be_written_is_not_made_twice(hub, monkeypatch):
    # No descriptor or inode left for the record: the copy is delivered, the
    # update fails.  The next try enters the known result instead of
    # delivering again (each minute, for as long as the condition lasted).
    hub.runner.start()
    broken = records_cannot_be_written(hub, monkeypatch)
    qid = enqueue(hub, BOB, LOCAL)
    assert len(hub.agent.calls) == 1 and len(hub.store.messages(LOCAL)) == 1
    hub.clock.advance(60)  # still failing: nothing delivered again
    assert len(hub.agent.calls) == 1 and len(hub.store.messages(LOCAL)) == 1
    broken[0] = False
    hub.clock.advance(60)
    assert len(hub.agent.calls) == 1 and len(hub.store.messages(LOCAL)) == 1
    assert hub.queue.ids() == []  # recorded as delivered, and done
    assert qid not in hub.runner._unrecorded


def test_results_kept_for_an_entry_that_is_deleted_are_dropped(hub, monkeypatch):
    hub.runner.start()
    monkeypatch.setattr(hub.queue, "update",
                        lambda qid, change: defer.fail(OSError(28, "No space left")))
    qid = enqueue(hub, BOB)
    assert qid in hub.runner._unrecorded
    hub.queue.delete(qid)  # `mailhub queue delete`
    hub.runner._rescan()
    assert qid not in hub.runner._unrecorded and qid not in hub.runner.due


def test_a_notice_whose_record_cannot_be_written_is_not_sent_twice(hub, monkeypatch):
    # The same for notices: sent, then the update that says so fails.
    hub.runner.start()
    real = hub.queue.update
    calls = [0]
    broken = [True]

    def update(qid, change):
        calls[0] += 1
        if broken[0] and calls[0] % 2 == 0:  # _record works, clearing the notice fails
            return defer.fail(OSError(24, "Too many open files"))
        return real(qid, change)

    monkeypatch.setattr(hub.queue, "update", update)
    path = hub.tmp / "spool-notice"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    env = Envelope(sender=ALICE, recipients=(LOCAL,),
                   recipient_dsn=((LOCAL, RecipientDSN(notify=("SUCCESS",))),))
    qid = hub.queue.enqueue(env, SpooledMessage(str(path), 20, 23), delivered=(LOCAL,)).result
    for _ in range(3):
        hub.clock.advance(60)
    broken[0] = False
    hub.clock.advance(60)
    sent = [d for _, d in hub.dsn.sent if b"Action: delivered" in d]
    assert len(sent) == 1
    assert hub.queue.ids() == [] and qid not in hub.runner._notified


def test_per_destination_limit(hub):
    hub.runner.start()
    pending = hub.agent.hold()
    enqueue(hub, BOB)
    enqueue(hub, BOB)
    enqueue(hub, CAROL)
    # max_per_destination = 1: the second remote.test entry waits
    assert [c[1] for c in hub.agent.calls] == ["remote.test", "other.test"]
    x, r = pending.pop(0)
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert [c[1] for c in hub.agent.calls] == ["remote.test", "other.test", "remote.test"]
    for x, r in pending:
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.ids() == []


def test_no_more_entries_for_one_destination_are_taken_than_it_can_use(hub):
    # max_per_destination = 1: the other remote.test entries would only
    # wait for its slot, holding the room (twice max_concurrent_deliveries
    # entries) that other domains' entries need
    hub.runner.start()
    pending = hub.agent.hold()
    bobs = [enqueue(hub, BOB) for _ in range(3)]
    carol = enqueue(hub, CAROL)
    assert hub.runner.active == {bobs[0], carol}
    _answer_all(pending)
    assert [c[0] for c in hub.agent.calls] == [bobs[0], carol, bobs[1], bobs[2]]
    assert hub.queue.ids() == []


def _watch_lookups(hub) -> dict[str, list[defer.Deferred]]:
    """Gives ``hub.agent`` a ``lookup_in_flight`` that says a lookup is under
    way for each destination the returned dict has, and keeps each waiter
    the runner asks for there, for the test to fire."""
    in_flight: dict[str, list[defer.Deferred]] = {}

    def lookup_in_flight(dest):
        if dest not in in_flight:
            return None
        waiter: defer.Deferred = defer.Deferred()
        in_flight[dest].append(waiter)
        return waiter

    hub.agent.lookup_in_flight = lookup_in_flight
    return in_flight


def test_one_entry_for_a_destination_whose_lookup_is_under_way(tmp_path):
    # its lookup's answer is not in yet: the other entries would only wait
    # for it; taken once it is in (the failure remembered, or cached)
    hub = make_hub(tmp_path, "max_per_destination = 5\n")
    in_flight = _watch_lookups(hub)  # the lookups' waiters, by destination
    first: defer.Deferred = defer.Deferred()
    asked = []

    def script(e, d, r):
        asked.append(e.id)
        if d == "remote.test" and len(asked) == 1:
            in_flight["remote.test"] = []  # the first delivery looks it up
            return first.addCallback(lambda _: [DeliveryResult(a, "transient", LATER)
                                                for a in r])
        return [DeliveryResult(a, "transient", LATER) for a in r]

    hub.agent.script = script
    bobs = [enqueue(hub, BOB) for _ in range(3)]
    hub.clock.advance(1)
    carol = enqueue(hub, CAROL)
    hub.runner.start()
    try:
        assert carol in asked and len([q for q in asked if q in bobs]) == 1
        assert sum(q in hub.runner.active for q in bobs) == 1
        for waiter in in_flight.pop("remote.test"):  # the answer is in
            waiter.callback(None)
        assert sorted(q for q in asked if q in bobs) == sorted(bobs)  # at once
        first.callback(None)
    finally:
        hub.runner.stop()


def test_a_pass_asks_about_a_full_destination_once(hub):
    # a queue of many entries for one busy destination is passed over at
    # every kick: not with a question to the agent about each of them
    asked = []
    hub.agent.lookup_in_flight = lambda dest: asked.append(dest)
    pending = hub.agent.hold()
    for _ in range(50):
        enqueue(hub, BOB)
    hub.runner.start()
    assert len(hub.runner.active) == 1  # max_per_destination = 1
    del asked[:]
    hub.runner.kick()
    assert asked == ["remote.test"]
    hub.runner.stop(grace=0)
    for x, r in pending:  # its attempt ends: its marker is closed
        x.callback([DeliveryResult(a, "transient", LATER) for a in r])


def test_global_limit_on_deliveries_in_flight(tmp_path):
    # [relay] max_concurrent_deliveries caps all destinations together
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   '[relay]\nmax_concurrent_deliveries = 2\nmax_per_destination = 5\n')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    components = Components(settings=settings, reactor=clock, router=StaticRouter({}),
                            store=MemoryMailboxStore(), spooler=None, portal=None)
    queue = OutboundQueue(settings.queue_dir, clock)
    components.queue = queue
    agent = FakeAgent()
    pending = agent.hold()
    runner = QueueRunner(queue, agent, components, clock, send_dsn=DSNSpy())
    runner.start()
    try:
        h = type("H", (), {"tmp": tmp_path, "queue": queue})()
        for domain in ("a.test", "b.test", "c.test", "d.test"):
            enqueue(h, Address("x", domain))
        assert len(agent.calls) == 2  # two in flight, whatever the destinations
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert len(agent.calls) == 3  # one done: the next starts
        _answer_all(pending)
        assert len(agent.calls) == 4 and queue.ids() == []
    finally:
        runner.stop()


def test_local_recipients_go_to_the_store(hub):
    hub.runner.start()
    enqueue(hub, LOCAL, BOB)
    assert hub.store.messages(LOCAL) == [b"Subject: hi\n\nhello\n"]
    assert hub.agent.calls[0][2] == [BOB]
    assert hub.queue.ids() == []


def test_local_failure_retried(hub):
    hub.store.fail[LOCAL] = OSError("disk full")
    hub.runner.start()
    qid = enqueue(hub, LOCAL)
    rec = hub.queue.read(qid).recipients[0]
    assert rec.state == "pending" and "disk full" in rec.last_reply.text()
    del hub.store.fail[LOCAL]
    hub.clock.advance(60)
    assert hub.queue.ids() == [] and len(hub.store.messages(LOCAL)) == 1


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_a_new_entry_whose_record_cannot_be_read_at_once_is_attempted_later(
        hub, monkeypatch, log_events, error):
    # the runner learns of a new entry by reading its record as the queue
    # says it was written; out of file descriptors there, the entry (its
    # client told 250) was known to nobody: never attempted until a restart
    hub.runner.start()
    real = os.open
    failing = [True]

    def fake_open(path, *args, **kwargs):
        if failing[0] and str(path).endswith(".json"):
            failing[0] = False  # that one read only
            raise OSError(error, os.strerror(error), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    qid = enqueue(hub, BOB)
    assert not failing[0] and hub.agent.calls == [] and hub.queue.ids() == [qid]
    lines = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.error]
    assert lines == [f"cannot read the new queue entry {qid}; trying it again later: "
                     f"[Errno {error}] {os.strerror(error)}: '{hub.queue.record_path(qid)}'"]
    assert not any("log_failure" in e for e in log_events)
    hub.clock.advance(ERROR_RETRY)
    assert [c[0] for c in hub.agent.calls] == [qid] and hub.queue.ids() == []


def test_restart_resumes_entries(hub):
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    qid = enqueue(hub, BOB)
    hub.runner.stop()
    # a new process: new queue object and runner over the same directory
    queue2 = OutboundQueue(hub.settings.queue_dir, hub.clock)
    with next_runner(hub, queue2) as agent2:
        assert agent2.calls == []  # not due yet
        hub.clock.advance(60)
        assert agent2.calls == [(qid, "remote.test", [BOB])]
        assert queue2.ids() == []


def test_a_runner_started_again_listens_to_its_queue_once(hub, monkeypatch):
    # every start added the runner to the queue's listeners again, and no
    # stop took it off: after n restarts each new entry was read n more times
    reads = []
    read = hub.queue.read
    monkeypatch.setattr(hub.queue, "read", lambda qid: reads.append(qid) or read(qid))
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    first = enqueue(hub, BOB)
    fresh = reads.count(first)  # what a runner started once reads for a new entry
    for _ in range(5):
        hub.runner.stop()
        hub.runner.start()
    hub.runner.stop()
    assert len(hub.queue._listeners) == 0
    hub.runner.start()
    assert len(hub.queue._listeners) == 1
    second = enqueue(hub, BOB)
    assert reads.count(second) == fresh
    assert hub.agent.calls[-1] == (second, "remote.test", [BOB])


def test_stop_waits_for_attempts_in_flight(hub):
    hub.runner.start()
    held = defer.Deferred()
    hub.agent.script = lambda e, d, r: held.addCallback(
        lambda _: [DeliveryResult(a, "delivered", OK, "mx") for a in r])
    enqueue(hub, BOB)
    stopped = hub.runner.stop()
    assert not stopped.called
    held.callback(None)
    assert stopped.called
    assert hub.queue.ids() == []


def test_a_stop_counts_the_attempts_in_flight_apart_from_those_waiting_for_a_slot(
        tmp_path, log_events):
    # the runner takes up to twice max_concurrent_deliveries entries at a
    # time: a stop said "100 delivery attempt(s) in flight" with the
    # default limit of 50 in all, 50 of them running
    from twisted.logger import formatEvent

    hub = make_hub(tmp_path, "max_concurrent_deliveries = 1\n")
    hub.runner.start()
    hub.agent.hold()
    for domain in ("a.test", "b.test", "c.test"):
        enqueue(hub, Address("x", domain))
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 1 and len(hub.runner.active) == 2
    hub.runner.stop(grace=0)
    lines = [formatEvent(e) for e in log_events
             if e.get("log_format", "").startswith("stopping")]
    assert lines == ["stopping with 1 delivery attempt in flight and 1 more waiting for "
                     "a free slot (max_per_destination, max_concurrent_deliveries): given "
                     "up, retried at the next start"]


def _stop_lines(log_events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in log_events
            if e.get("log_format", "").startswith("stopping")]


def test_a_stop_that_waits_names_an_entry_waiting_for_a_slot_as_such(tmp_path, log_events):
    # an entry taken while the slots were busy is given up at once, as one
    # only looking up DNS is; the first line called it "only looking up DNS
    # or connecting" (it had neither begun), where the last line of a stop
    # that does not wait says "waiting for a free slot"
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 1\n")
    hub.runner.start()
    hub.agent.hold()
    enqueue(hub, Address("x", "a.test"))
    enqueue(hub, Address("x", "b.test"))
    looking = enqueue(hub, Address("x", "c.test"))
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 1 and len(hub.runner.active) == 2
    assert looking not in hub.runner.active  # not even taken
    hub.runner.stop(grace=10)
    hub.clock.advance(10)
    assert _stop_lines(log_events) == [
        "stopping: waiting up to 10 s for 1 delivery attempt in flight (1 more waiting for "
        "a free slot (max_per_destination, max_concurrent_deliveries): given up, retried at "
        "the next start)",
        "stopping with 1 delivery attempt in flight: given up, retried at the next start"]


def test_a_stop_that_waits_counts_entries_only_looking_up_dns_and_those_waiting_apart(
        tmp_path, log_events):
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 2\n")
    hub.runner.start()
    pending = hub.agent.hold()
    enqueue(hub, Address("x", "a.test"))  # in its session: the stop waits for it
    looking = enqueue(hub, Address("x", "b.test"))
    hub.agent.resolving.add(looking)  # only looking up DNS
    for domain in ("c.test", "d.test"):  # taken, waiting for a slot
        enqueue(hub, Address("x", domain))
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 2 and len(hub.runner.active) == 4
    hub.runner.stop(grace=10)
    assert _stop_lines(log_events) == [
        "stopping: waiting up to 10 s for 1 delivery attempt in flight (1 only looking up "
        "DNS or connecting, 2 more waiting for a free slot (max_per_destination, "
        "max_concurrent_deliveries): given up, retried at the next start)"]
    _answer_all(pending)


def test_a_stop_counts_an_entry_with_two_deliveries_running_once(hub, log_events):
    # the line counts delivery attempts (queue entries), as the stop's first
    # line does: one entry to two domains is not two attempts given up
    hub.runner.start()
    hub.agent.hold()
    enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2
    hub.runner.stop(grace=10)
    hub.clock.advance(10)
    assert _stop_lines(log_events) == [
        "stopping: waiting up to 10 s for 1 delivery attempt in flight",
        "stopping with 1 delivery attempt in flight: given up, retried at the next start"]


def test_a_stop_counts_an_entry_whose_local_delivery_runs(tmp_path, log_events):
    # a local delivery takes no slot of the relay's: the entry is in
    # flight all the same (it said "0 delivery attempt(s) in flight")
    hub = make_hub(tmp_path)
    hub.components.store = MemoryMailboxStore(hold=True)
    hub.runner.start()
    enqueue(hub, LOCAL)
    assert hub.components.store._holder.held == 1
    hub.runner.stop(grace=0)
    assert _stop_lines(log_events) == [
        "stopping with 1 delivery attempt in flight: given up, retried at the next start"]


def test_a_stop_counts_an_entry_with_one_delivery_running_and_one_waiting_as_in_flight(
        hub, log_events):
    hub.runner.start()
    hub.agent.hold()
    first = enqueue(hub, BOB)
    second = enqueue(hub, BOB, CAROL)  # BOB waits for first's slot, CAROL runs
    assert [c[:2] for c in hub.agent.calls] == [(first, "remote.test"), (second, "other.test")]
    third = enqueue(hub, BOB)  # not even taken: remote.test has no slot for it
    assert third not in {c[0] for c in hub.agent.calls} and third not in hub.runner.active
    hub.runner.stop(grace=0)
    assert _stop_lines(log_events) == [
        "stopping with 2 delivery attempts in flight: given up, retried at the next start"]


@pytest.mark.parametrize("session", ["hangs", "ends"])
def test_a_stops_last_line_counts_no_attempt_an_earlier_line_gave_up(hub, log_events, session):
    # the first line gives up the entry that only looks up DNS; the last
    # one counted it again ("stopping with 2 delivery attempts in flight",
    # or, once the session had ended, "with 1"): 3 or 2 given up for 2
    hub.runner.start()
    pending = hub.agent.hold()
    enqueue(hub, BOB)  # in its session: the stop waits for it
    looking = enqueue(hub, CAROL)
    hub.agent.resolving.add(looking)  # only looking up DNS: given up at once
    stopped = hub.runner.stop(grace=10)
    first = ("stopping: waiting up to 10 s for 1 delivery attempt in flight (1 only looking "
             "up DNS or connecting: given up, retried at the next start)")
    if session == "hangs":
        hub.clock.advance(10)
        assert _stop_lines(log_events) == [
            first,
            "stopping with 1 delivery attempt in flight: given up, retried at the next start"]
    else:
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert _stop_lines(log_events) == [first]  # nothing left it has not told
    assert stopped.called


def test_stop_gives_up_after_grace(hub):
    hub.runner.start()
    in_flight: defer.Deferred = defer.Deferred()
    hub.agent.script = lambda e, d, r: in_flight
    qid = enqueue(hub, BOB)
    hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls] == [qid]  # the attempt is in flight
    stopped = hub.runner.stop()
    hub.clock.advance(10)
    assert stopped.called and hub.agent.aborted == 1  # the sessions in flight are cut
    assert hub.queue.ids() == [qid]  # left on disk for the next start
    before = hub.queue.read(qid)
    # The attempt ends after the stop (another hub may own the queue by
    # then): it records nothing.
    in_flight.callback([DeliveryResult(BOB, "delivered", OK, "mx")])
    assert hub.queue.read(qid) == before


def test_a_stop_that_gives_up_fires_once_the_cut_sessions_are_gone(hub):
    # the agent's cut connections close a turn later (abortConnection): the
    # stop, and with it the hub's, waits for that, and at most CUT_GRACE
    from txmailhub.relay.runner import CUT_GRACE

    hub.runner.start()
    hub.agent.script = lambda e, d, r: defer.Deferred()
    enqueue(hub, BOB)
    hub.clock.advance(1)
    gone: defer.Deferred = defer.Deferred()
    hub.agent.abort_all = lambda: gone
    stopped = hub.runner.stop()
    hub.clock.advance(10)
    assert not stopped.called
    gone.callback(None)
    assert stopped.called
    assert not hub.clock.getDelayedCalls()
    # a transport that never says its connection is lost holds no stop for good
    hub.runner.start()
    hub.clock.advance(1)
    hub.agent.abort_all = lambda: defer.Deferred()
    stopped = hub.runner.stop()
    hub.clock.advance(10)
    assert not stopped.called
    hub.clock.advance(CUT_GRACE)
    assert stopped.called


def _markers(hub) -> list[str]:
    return sorted(n for n in os.listdir(hub.settings.queue_dir) if n.endswith(".attempt"))


def test_a_stop_removes_the_markers_of_the_attempts_it_gives_up(hub):
    # an attempt given up may run on past the stop (an application's
    # resolver answers its lookup a minute later, or never): its marker
    # stayed on disk, locked, and `mailhub queue list` said "delivering"
    # for a hub that had stopped, whose application kept its descriptor
    # open (listed for the fork hook) for as long as that delivery ran
    from txmailhub.relay import inflight

    hub.runner.start()
    pending = hub.agent.hold()
    in_session = enqueue(hub, BOB)
    looking = enqueue(hub, CAROL)
    hub.agent.resolving.add(looking)  # only looking up DNS: given up at once
    assert _markers(hub) == sorted(f".{q}.attempt" for q in (in_session, looking))
    stopped = hub.runner.stop(grace=10)
    assert _markers(hub) == [f".{in_session}.attempt"]  # the one the stop waits for
    assert hub.queue.attempt_since(looking) is None
    assert len(inflight._held) == 1
    hub.clock.advance(10)  # then given up too
    assert stopped.called
    assert _markers(hub) == [] and inflight._held == set()
    assert hub.queue.attempt_since(in_session) is None
    # their deliveries end after the stop: nothing is marked again
    _answer_all(pending)
    assert _markers(hub) == [] and inflight._held == set()
    assert len(hub.runner.active) == 0


def test_a_stop_is_over_once_the_markers_it_removes_are(tmp_path):
    # the markers go through the queue's io (a thread of the reactor's in
    # a hub): the stop fires once they are removed, not before -- the
    # queue may be another hub's by then
    from txmailhub.relay import inflight
    from txmailhub.relay.queue import inline_io

    held = []

    def io(f, *args):
        if f is inflight.unmark:  # a removal waits for the test
            d = defer.Deferred()
            held.append((d, f, args))
            return d
        return inline_io(f, *args)

    hub = make_hub(tmp_path)
    hub.queue._io = io
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    assert _markers(hub) == [f".{qid}.attempt"]
    fired = []
    hub.runner.stop(grace=0).addBoth(fired.append)
    assert len(held) == 1 and fired == []
    d, f, args = held.pop()
    d.callback(f(*args))
    assert fired == [None]
    assert _markers(hub) == [] and inflight._held == set()
    _answer_all(pending)
    assert held == []


def test_unsendable_bounce_given_up_after_lifetime(hub):
    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    calls = len(hub.agent.calls)
    hub.clock.advance(1)
    hub.clock.advance(1)
    assert hub.queue.ids() == [qid]  # retried later, not in a tight loop
    for _ in range(12):
        hub.clock.advance(4 * 3600)
    assert hub.queue.ids() == []
    assert len(hub.agent.calls) == calls


def test_the_start_line_counts_held_entries_too(hub):
    from twisted.logger import formatEvent, globalLogPublisher

    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, True)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert "queue runner started with 1 queued message, 1 held" in [
        formatEvent(e) for e in events]


@pytest.mark.parametrize("count, line", [
    (0, "queue runner started with 0 queued messages"),
    (2, "queue runner started with 2 queued messages"),
])
def test_the_start_line_counts_in_words_a_log_reader_expects(hub, count, line):
    # "1 queued message", "0 queued messages": the plural's "(s)" read as
    # a placeholder the hub forgot to fill in, beside its other counts
    from twisted.logger import formatEvent, globalLogPublisher

    for _ in range(count):
        enqueue(hub, BOB)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
    finally:
        globalLogPublisher.removeObserver(events.append)
    started = [formatEvent(e) for e in events
               if formatEvent(e).startswith("queue runner started")]
    assert started == [line]
    assert [e["count"] for e in events if "count" in e
            and formatEvent(e).startswith("queue runner started")] == [count]


def test_a_start_within_a_stops_grace_gives_the_old_attempts_up_and_runs(hub):
    # started again before the grace is over: the last run's attempts are
    # given up at once, and its timer must not end the new run
    in_flight: defer.Deferred = defer.Deferred()
    hub.agent.script = lambda e, d, r: in_flight
    hub.runner.start()
    qid = enqueue(hub, BOB)
    hub.clock.advance(1)
    hub.runner.stop()
    hub.runner.start()
    assert hub.agent.aborted == 1  # given up at the start, not 10 s later
    hub.clock.advance(10)
    assert hub.agent.aborted == 1
    # the old attempt ends now: it records nothing, and this run retries it
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    in_flight.callback([DeliveryResult(BOB, "transient", LATER, "mx")])
    hub.clock.advance(1)
    assert hub.queue.ids() == []  # delivered by the new run
    assert [c[0] for c in hub.agent.calls].count(qid) == 2


def test_a_pass_that_only_owes_a_notice_waits_at_least_a_minute(tmp_path):
    """A failure notice that cannot be sent keeps its entry, and the next
    passes have no delivery to make: with a retry step shorter than a
    minute, they must not come back at that step (a spin on a spool that
    keeps failing), but after ERROR_RETRY at the least."""
    hub = make_hub(tmp_path, 'retry_schedule = ["10s"]\nqueue_lifetime = "1d"\n')
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    hub.dsn.fail = True
    attempts = hub.dsn.tried
    hub.runner.start()
    try:
        qid = enqueue(hub, BOB)
        start = hub.clock.seconds()
        assert attempts == [start]  # the delivery pass tried the notice at once
        assert hub.queue.read(qid).next_attempt == start + 10  # the schedule's step
        hub.clock.pump([1] * 200)
        assert len(hub.agent.calls) == 1  # failed recipients are never tried again
        # the first notice-only pass at the step; after it, a minute apart
        assert attempts[:2] == [start, start + 10]
        assert all(b - a >= 60 for a, b in itertools.pairwise(attempts[1:]))
        assert len(attempts) == 5  # +0, +10, +70, +130, +190 (not every 10 s)
        hub.dsn.fail = False
        hub.clock.pump([1] * 60)
        assert hub.queue.ids() == [] and len(hub.dsn.sent) == 1
    finally:
        hub.runner.stop()


def test_no_new_connection_for_an_attempt_that_waited_past_a_stop(hub):
    # max_per_destination = 1: the second entry for remote.test waits for
    # the first's slot.  A stop gives both up; when the first ends, the
    # second must not connect (the queue may be another hub's by then).
    pending, first, second = _second_waiting_for_its_slot(hub)
    stopped = hub.runner.stop(grace=0)
    assert stopped.called and hub.agent.aborted == 1
    x, r = pending.pop(0)
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert [c[0] for c in hub.agent.calls] == [first]  # no second connection
    assert sorted(hub.queue.ids()) == sorted([first, second])


def test_no_notice_after_a_stop_gave_the_attempt_up_while_it_was_recorded(hub, monkeypatch):
    # given up while its record was being written: the queue may be another
    # hub's now, which sends the notice itself
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    held = hold_record_writes(hub, monkeypatch)
    qid = enqueue(hub, BOB)
    assert len(held) == 1  # the attempt's record is being written
    assert hub.runner.stop(grace=0).called
    held.pop()()
    assert hub.dsn.sent == []
    assert hub.queue.read(qid).failed  # recorded, the notice left to the next run


def test_at_most_twice_max_concurrent_deliveries_entries_are_in_flight(tmp_path):
    # the entries waiting for a delivery slot are bounded too: each holds
    # its record and its results in memory
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 2\nmax_per_destination = 5\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        for i in range(8):
            enqueue(hub, Address("x", f"d{i}.test"))
        assert len(hub.runner.active) == 4 and len(hub.agent.calls) == 2
        _answer_all(pending)
        assert len(hub.agent.calls) == 8 and hub.queue.ids() == []
        assert hub.runner._semaphores == {}  # one per destination only while in use
    finally:
        hub.runner.stop()


def test_the_attempt_markers_held_are_what_the_open_files_warning_counts(tmp_path):
    # every entry being delivered holds its attempt marker open (for its
    # lock); one only waiting for a delivery slot holds none.  At most
    # twice max_concurrent_deliveries descriptors besides the sessions (an
    # entry one of whose destinations is done while another waits for a
    # slot keeps its marker), which the open-files warning of `twistd
    # mailhub` must reckon with
    from txmailhub.process_limits import SESSION_DESCRIPTORS
    from txmailhub.tap import FD_MARGIN, fd_limit_warning

    hub = make_hub(tmp_path, "max_concurrent_deliveries = 2\nmax_per_destination = 5\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        for i in range(8):
            enqueue(hub, Address("x", f"d{i}.test"))
        markers = [n for n in os.listdir(hub.settings.queue_dir) if n.endswith(".attempt")]
        assert len(hub.runner.active) == 4
        assert len(markers) == 2 == hub.settings.relay.max_concurrent_deliveries
        held = _open_descriptors(hub.settings.queue_dir)
        assert held is None or held == 2  # one each, held
        s = hub.settings
        sessions = SESSION_DESCRIPTORS * (s.smtp.max_connections + s.pop3.max_connections)
        # a relay session and the message it sends, each
        sessions += 2 * s.relay.max_concurrent_deliveries
        most = 2 * s.relay.max_concurrent_deliveries
        assert fd_limit_warning(s, sessions + most + FD_MARGIN) is None
        assert fd_limit_warning(s, sessions + most + FD_MARGIN - 1) is not None
        _answer_all(pending)
    finally:
        hub.runner.stop()


def test_a_recipient_the_store_says_nothing_about_is_not_delivered(hub, monkeypatch):
    monkeypatch.setattr(hub.store, "deliver", lambda message, rcpts: defer.succeed({}))
    hub.runner.start()
    qid = enqueue(hub, LOCAL)
    rec = hub.queue.read(qid).recipients[0]
    assert rec.state == "pending" and rec.last_reply.code == 451


def test_a_result_for_a_recipient_no_longer_pending_changes_nothing(hub):
    # results kept from a pass whose record was written after all (a failed
    # directory sync) must not bounce a recipient twice
    qid = enqueue(hub, BOB)
    entry = hub.queue.read(qid)
    bob = dataclasses.replace(entry.recipients[0], state="bounced", attempts=1)
    entry = entry.with_recipients({BOB: bob})
    new = hub.runner._record(entry, [DeliveryResult(BOB, "permanent", NO, "mx")],
                             hub.clock.seconds())
    assert new.recipients[0] == bob


def test_a_success_notice_for_a_local_mailbox_says_delivered(hub):
    # RFC 3464 2.3.3: "delivered" for final delivery, "relayed" for a next
    # hop that does not pass notices on
    hub.runner.start()
    enqueue(hub, LOCAL, notify=("SUCCESS",))
    [(_, data)] = hub.dsn.sent
    assert b"Action: delivered" in data


def test_no_success_notice_when_the_next_hop_takes_dsn_over(hub):
    # RFC 3461: NOTIFY went on to a server offering DSN, which reports now
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx", True)
                                        for a in r]
    enqueue(hub, BOB, notify=("SUCCESS",))
    assert hub.dsn.sent == [] and hub.queue.ids() == []


def test_at_expiry_a_recipient_without_a_result_fails_too(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx")
                                        for a in r if a == BOB]
    enqueue(hub, BOB, CAROL)
    for _ in range(40):
        hub.clock.advance(4 * 3600)
        if not hub.queue.ids():
            break
    assert hub.queue.ids() == []
    [failure] = [d for _, d in hub.dsn.sent if b"Action: failed" in d]
    assert b"carol@other.test" in failure


def test_passes_that_only_owe_a_notice_are_not_attempts(hub):
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    hub.dsn.fail = True
    hub.runner.start()
    qid = enqueue(hub, BOB)
    hub.clock.pump([60] * 10)
    assert len(hub.dsn.tried) > 2 and hub.queue.read(qid).attempts == 1


def test_a_delay_notice_that_cannot_be_sent_does_not_make_the_entry_spin(hub):
    hub.runner.start()

    def script(e, d, r):
        if len(hub.agent.calls) > 20:  # a spin: stop it here (it never ends)
            return defer.Deferred()
        return [DeliveryResult(a, "transient", LATER, "mx") for a in r]

    hub.agent.script = script
    enqueue(hub, BOB)
    hub.dsn.fail = True
    hub.clock.pump([60] * 5 * 60)  # five hours: the warning is due after four
    assert len(hub.agent.calls) <= 10


def test_notify_failure_alone_gets_no_delay_notice(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    enqueue(hub, BOB, notify=("FAILURE",))
    hub.clock.pump([600] * 6 * 6)
    assert hub.dsn.sent == []


def test_the_delay_notice_says_until_when_it_is_retried(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    enqueue(hub, BOB)
    hub.clock.pump([600] * 6 * 5)
    [(_, data)] = hub.dsn.sent
    assert b"Action: delayed" in data and b"Will-Retry-Until: " in data


def test_local_retry_not_delivered_twice_after_a_crash(tmp_path, monkeypatch):
    """A queued local copy (its first delivery failed) is delivered by the
    runner and then recorded.  A crash between the two (kill -9 while the
    record is written) left the entry pending, and the next start put a
    second copy of the acknowledged message into the same Maildir.  The
    crash is played by a record write that fails and a runner that is then
    dropped, as the process would be; a new runner plays the restart."""
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    h.components.store = store
    qid = enqueue(h, joe)

    def crash(*args, **kwargs):
        raise OSError(5, "the hub was killed while writing the record")

    monkeypatch.setattr(h.queue, "update", crash)
    h.runner.start()
    h.runner.stop()
    new = tmp_path / "mail" / "example.org" / "joe" / "new"
    assert len(os.listdir(new)) == 1
    assert h.queue.ids() == [qid]  # still pending: the record was never written

    monkeypatch.undo()  # the restart: a fresh queue and runner on the same files
    queue = OutboundQueue(h.settings.queue_dir, h.clock)
    h.components.queue = queue
    runner = QueueRunner(queue, h.agent, h.components, h.clock, send_dsn=h.dsn)
    queue.recover()
    runner.start()
    h.clock.advance(3600)
    runner.stop()
    assert queue.ids() == []  # recorded as delivered this time
    assert len(os.listdir(new)) == 1, os.listdir(new)


def test_local_retry_read_before_the_restart_is_not_delivered_again(tmp_path, monkeypatch):
    """As above, but the copy was read over POP3 (moved to cur/ with the S
    flag) before the restart: still one copy."""
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    h.components.store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    enqueue(h, joe)

    def crash(*args, **kwargs):
        raise OSError(5, "the hub was killed while writing the record")

    monkeypatch.setattr(h.queue, "update", crash)
    h.runner.start()
    h.runner.stop()
    md = tmp_path / "mail" / "example.org" / "joe"
    (name,) = os.listdir(md / "new")
    os.rename(md / "new" / name, md / "cur" / f"{name}:2,S")

    monkeypatch.undo()
    queue = OutboundQueue(h.settings.queue_dir, h.clock)
    h.components.queue = queue
    runner = QueueRunner(queue, h.agent, h.components, h.clock, send_dsn=h.dsn)
    runner.start()
    h.clock.advance(3600)
    runner.stop()
    assert queue.ids() == []
    assert os.listdir(md / "new") == []
    assert os.listdir(md / "cur") == [f"{name}:2,S"]


def _crashed_local_copy(tmp_path, monkeypatch):
    """A queued local copy made by the runner, then a crash before its
    record (a record write that fails, a runner dropped as the process
    would be): ``(hub, store, Maildir, name of the copy)``."""
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    h.components.store = store
    enqueue(h, joe)

    def crash(*args, **kwargs):
        raise OSError(5, "the hub was killed while writing the record")

    monkeypatch.setattr(h.queue, "update", crash)
    h.runner.start()
    h.runner.stop()
    md = tmp_path / "mail" / "example.org" / "joe"
    (name,) = os.listdir(md / "new")
    monkeypatch.undo()
    return h, store, md, name


def _restarted(h):
    """The restart: a new queue and runner on the same files, run an hour."""
    queue = OutboundQueue(h.settings.queue_dir, h.clock)
    h.components.queue = queue
    runner = QueueRunner(queue, h.agent, h.components, h.clock, send_dsn=h.dsn)
    runner.start()
    h.clock.advance(3600)
    runner.stop()
    return queue


def _read_over_pop3(store, md, flags_too: bool) -> None:
    """A POP3 session (the store's API, as the POP3 server drives it)
    retrieves message 1 and quits: moved to cur/ with the S flag; with
    ``flags_too``, a reader then adds a flag of its own."""
    from txmailhub.store.mailbox import MaildirMailbox

    box = []
    store.open_mailbox(Address("joe", "example.org")).addCallback(box.append)
    (mailbox,) = box
    assert isinstance(mailbox, MaildirMailbox) and len(mailbox.list_messages()) == 1
    done = []
    mailbox.update([0], []).addCallback(done.append)
    assert done == [None]
    mailbox.close()
    (seen,) = os.listdir(md / "cur")
    assert seen.endswith(":2,S") and os.listdir(md / "new") == []
    if flags_too:
        os.rename(md / "cur" / seen, md / "cur" / (seen[:-1] + "FS"))


def _renamed_by_a_login(md, name: str) -> str:
    """The copy changed in place to another length (a script that
    rewrites delivered mail), found so by a POP3 read, renamed by the next
    login to its true ``,S=`` and ``,W=`` (``mailbox.scan``)."""
    from txmailhub.store import mailbox as mailbox_module

    where = "cur" if not os.listdir(md / "new") else "new"
    (now,) = os.listdir(md / where)
    with open(md / where / now, "ab") as f:
        f.write(b"a line more\n")
    cache = mailbox_module._SizeCache(str(md), 1)
    cache.mark_misnamed(now.split(":", 1)[0])
    cache.save(prune=False)
    mailbox_module.scan(str(md))
    (healed,) = os.listdir(md / where)
    assert healed != now and healed.split(",", 1)[0] == name.split(",", 1)[0]
    return healed


@pytest.mark.parametrize("meanwhile", ["read", "read-flagged", "renamed", "read-renamed"])
def test_local_retry_finds_the_copy_a_reader_renamed_before_the_restart(
        tmp_path, monkeypatch, meanwhile):
    """The copy a crash left unrecorded is looked for under any name a
    Maildir reader may have given it meanwhile -- its unique part the
    same, in new/ or cur/, any flags, a ,S= and ,W= a login put right --
    and the retry after the restart makes no second copy."""
    h, store, md, name = _crashed_local_copy(tmp_path, monkeypatch)
    if meanwhile.startswith("read"):
        _read_over_pop3(store, md, flags_too=meanwhile == "read-flagged")
    if meanwhile.endswith("renamed"):
        _renamed_by_a_login(md, name)
    before = sorted(os.listdir(md / "new")) + sorted(os.listdir(md / "cur"))
    queue = _restarted(h)
    assert queue.ids() == []  # recorded as delivered this time
    assert sorted(os.listdir(md / "new")) + sorted(os.listdir(md / "cur")) == before


@pytest.mark.parametrize("read", [True, False], ids=["read-then-deleted", "deleted"])
def test_local_retry_of_a_copy_deleted_over_pop3_before_the_restart_does_not_bring_it_back(
        tmp_path, monkeypatch, log_events, read):
    """The copy a crash left unrecorded was deleted by its user over POP3
    before the retry (RETR and DELE, or DELE alone, then QUIT): the
    session noted it in the Maildir before the unlink, so the retry counts
    it delivered and the message does not come back (RFC 5321 6.1: no
    loss; and no duplicate)."""
    from txmailhub.store.mailbox import DELETED_NAME

    h, store, md, name = _crashed_local_copy(tmp_path, monkeypatch)
    box = []
    store.open_mailbox(Address("joe", "example.org")).addCallback(box.append)
    (mailbox,) = box
    done = []
    mailbox.update([0] if read else [], [0]).addCallback(done.append)
    assert done == [None]
    mailbox.close()
    assert os.listdir(md / "new") == os.listdir(md / "cur") == []
    assert (md / DELETED_NAME).read_bytes() == name.split(",", 1)[0].encode() + b"\n"
    queue = _restarted(h)
    assert queue.ids() == []  # recorded as delivered
    assert os.listdir(md / "new") == os.listdir(md / "cur") == []
    assert [e for e in log_events if "deleted over POP3 already" in formatEvent(e)]


def test_local_retry_of_a_copy_another_program_deleted_delivers_it_again(
        tmp_path, monkeypatch):
    """Deleted by another program (no note): not told from a copy never
    made, so delivered again -- a duplicate rather than a loss."""
    h, _, md, name = _crashed_local_copy(tmp_path, monkeypatch)
    os.unlink(md / "new" / name)
    queue = _restarted(h)
    assert queue.ids() == []
    assert os.listdir(md / "new") == [name]


def test_the_first_local_attempt_of_an_entry_queued_here_lists_no_folder(
        tmp_path, monkeypatch):
    """An entry this process queued, attempted for the first time, can
    have no copy from an earlier attempt: the store looks at the copy's
    two names, and lists neither new/ nor cur/ (a mailbox kept for years
    holds tens of thousands of names).  A retry does list them."""
    from txmailhub.store import maildir as maildir_module
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    h.components.store = MaildirStore(str(tmp_path / "mail"), "mail.example.org",
                                      SyncerSpy())
    md = tmp_path / "mail" / "example.org" / "joe"
    listed = []
    real = os.scandir

    def spy(path):
        listed.append(os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(maildir_module.os, "scandir", spy)
    h.runner.start()
    enqueue(h, joe)  # attempted at once
    assert h.queue.ids() == []
    assert len(os.listdir(md / "new")) == 1
    assert [p for p in listed if p.startswith(str(md))] == []
    h.runner.stop()


def test_an_entry_queued_before_a_restart_of_the_runner_is_looked_for(tmp_path, monkeypatch):
    """An entry the runner was told of but did not handle before it was
    stopped may have been taken by another hub meanwhile (the queue is
    handed over at a stop): its first attempt after the runner starts
    again looks for an earlier copy as any retry does."""
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    h = make_hub(tmp_path)
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    h.components.store = store
    firsts = []
    real = store.deliver_keyed

    def spy(message, mailboxes, key, first=False):
        firsts.append(first)
        return real(message, mailboxes, key, first=first)

    monkeypatch.setattr(store, "deliver_keyed", spy)
    h.runner.start()
    with monkeypatch.context() as m:
        m.setattr(h.runner, "kick", lambda: None)  # told of it, not handling it yet
        enqueue(h, Address("joe", "example.org"))
        h.runner.stop()
    h.runner.start()
    h.clock.advance(60)
    h.runner.stop()
    assert firsts == [False] and h.queue.ids() == []
    # and one queued while it runs is its first attempt
    h.runner.start()
    enqueue(h, Address("joe", "example.org"))
    h.runner.stop()
    assert firsts == [False, True]


def test_control_file_that_cannot_be_taken_does_not_stop_the_queue(hub, monkeypatch, log_events):
    """``.flush`` or ``.changed`` that cannot be removed (EIO, a read-only
    remount) stopped every tick before it started the due entries, and
    wrote a critical traceback each second."""
    from twisted.logger import LogLevel, formatEvent

    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    enqueue(hub, BOB)
    assert len(hub.agent.calls) == 1

    def stuck(name):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(hub.queue, "take_flag", stuck)
    hub.agent.script = FakeAgent().script
    hub.clock.advance(schedule.DEFAULT_SCHEDULE[0] + 1)
    assert len(hub.agent.calls) == 2 and hub.queue.ids() == []
    mine = [e for e in log_events if "tick failed" in formatEvent(e)]
    assert mine and all(e["log_level"] == LogLevel.error and "log_failure" not in e
                        for e in mine)


# --- `mailhub queue release` while the message's attempt is in flight ----------


def test_a_release_during_an_attempt_makes_the_next_attempt_immediate(hub):
    # The admin's release must not be overwritten by the attempt's own
    # outcome (the next retry a minute later): the retry comes at once.
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    assert len(hub.agent.calls) == 1
    assert hub.queue.set_held(qid, False) is not None  # `mailhub queue release`
    hub.clock.advance(1)  # the hub sees .changed while the attempt runs
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert len(hub.agent.calls) == 2  # at once, not 60 s later
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    # that release is spent: the schedule applies again, no spinning
    entry = hub.queue.read(qid)
    assert entry.attempts == 2 and entry.next_attempt == hub.clock.seconds() + 300
    hub.clock.advance(299)
    assert len(hub.agent.calls) == 2


def test_a_hold_and_release_during_an_attempt_end_released_and_immediate(hub):
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, True)
    hub.clock.advance(1)
    hub.queue.set_held(qid, False)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert not hub.queue.read(qid).held
    assert len(hub.agent.calls) == 2
    _answer_all(pending)


def test_a_hold_after_a_release_during_an_attempt_wins(hub):
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, False)
    hub.queue.set_held(qid, True)  # the admin's last word
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    hub.clock.advance(3600)
    assert hub.queue.read(qid).held and len(hub.agent.calls) == 1


def test_a_hold_during_an_attempt_that_ends_past_the_lifetime_keeps_the_message(hub):
    # `mailhub queue hold` keeps a message.  An attempt under way when it
    # was held, failing for now once the queue lifetime is over (a server
    # that stalled to its timeout), must not bounce and drop it: a held
    # entry is given up on only after its release, as one held before.
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, True)
    hub.clock.advance(86400 + 1)  # the session outlives the lifetime
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    entry = hub.queue.read(qid)
    assert entry is not None and entry.held
    assert [rec.state for rec in entry.recipients] == ["pending"]
    assert not [d for _, d in hub.dsn.sent if b"Action: failed" in d]
    hub.queue.set_held(qid, False)  # released: tried once more, then bounced
    hub.clock.advance(1)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert hub.queue.ids() == []
    assert len([d for _, d in hub.dsn.sent if b"Action: failed" in d]) == 1


def test_no_delay_notice_promising_retries_until_a_time_gone_by(hub):
    # An attempt held while it ran keeps its recipients pending past the
    # queue lifetime.  The "delayed" notice then due would tell the
    # sender "it will be retried until" a moment already past (and
    # Will-Retry-Until says so too): the lifetime is over, what comes
    # next is the final outcome, as for a message held before its warning.
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, True)
    hub.clock.advance(86400 + 1)  # the session outlives lifetime and warning
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert hub.queue.read(qid).held
    assert not [d for _, d in hub.dsn.sent if b"Action: delayed" in d]
    hub.queue.set_held(qid, False)
    hub.clock.advance(1)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert [b"Action: failed" in d for _, d in hub.dsn.sent] == [True]


@pytest.mark.parametrize("hold_first", [True, False])
def test_a_release_during_an_attempt_that_ends_past_the_lifetime_brings_one_more(
        hub, hold_first):
    # A release is the admin asking for an attempt now, and the hub logs
    # "tried again at once": an attempt under way when it came (held then
    # released during it, or only released) that fails for now after the
    # queue lifetime must not bounce the message without that attempt.
    # The same as a release after the attempt: one more, then the DSN.
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    if hold_first:
        hub.queue.set_held(qid, True)
    hub.clock.advance(86400 + 1)  # the session outlives the lifetime
    hub.queue.set_held(qid, False)  # `mailhub queue release`, still during it
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert len(hub.agent.calls) == 2  # the attempt the release asked for
    assert [rec.state for rec in hub.queue.read(qid).recipients] == ["pending"]
    assert not [d for _, d in hub.dsn.sent if b"Action: failed" in d]
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert hub.queue.ids() == []  # that release is spent: bounced, once
    assert len([d for _, d in hub.dsn.sent if b"Action: failed" in d]) == 1
    hub.clock.advance(3600)
    assert len(hub.agent.calls) == 2


@pytest.mark.parametrize("hold_first", [True, False])
def test_releases_during_every_attempt_past_the_lifetime_do_not_keep_it_for_ever(
        hub, hold_first):
    # A release during an attempt that ends past the queue lifetime brings
    # one more attempt (above).  That attempt began after the lifetime: a
    # release during it, and during each one after, must not bring yet
    # another -- the message was kept queued (and retried at once) for as
    # long as the releases kept landing during attempts.  It bounces when
    # that attempt ends, with the failure notice.
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    if hold_first:
        hub.queue.set_held(qid, True)
    hub.clock.advance(86400 + 1)  # the first session outlives the lifetime
    for _ in range(5):
        if not pending:
            break
        hub.queue.set_held(qid, False)  # `mailhub queue release`, during it
        hub.clock.advance(1)
        x, r = pending.pop()
        x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert len(hub.agent.calls) == 2  # the first, and the one its release asked for
    assert hub.queue.ids() == []
    [failure] = [d for _, d in hub.dsn.sent if b"Action: failed" in d]
    assert b"451 4.7.1 greylisted" in failure


def test_a_release_during_the_schedules_last_attempt_brings_no_other(hub):
    # The schedule's last attempt is made when the queue lifetime runs out
    # (docs/relay.rst, "Retry schedule"): it began with the lifetime over,
    # and a release during it brings no other -- the message bounces as it
    # ends, as after the attempt a release brought
    later = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]  # noqa: E731
    hub.runner.start()
    hub.agent.script = later
    qid = enqueue(hub, BOB)
    deadline = hub.queue.read(qid).created + 86400
    while hub.queue.read(qid).next_attempt < deadline:
        hub.clock.advance(hub.queue.read(qid).next_attempt - hub.clock.seconds() + 1)
    assert hub.queue.read(qid).next_attempt == deadline
    pending = hub.agent.hold()
    hub.clock.advance(deadline - hub.clock.seconds() + 1)
    assert len(pending) == 1  # the last attempt, under way
    hub.queue.set_held(qid, False)  # `mailhub queue release`, during it
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert pending == [] and hub.queue.ids() == []
    assert len([d for _, d in hub.dsn.sent if b"Action: failed" in d]) == 1


def test_a_release_during_a_last_attempt_is_not_logged_as_tried_again(hub, log_events):
    from twisted.logger import formatEvent

    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.clock.advance(86400 + 1)
    hub.queue.set_held(qid, False)  # honoured: one more attempt
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    hub.queue.set_held(qid, False)  # during that one: the message bounces
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert hub.queue.ids() == []
    said = [formatEvent(e) for e in log_events if "tried again" in formatEvent(e)]
    assert said == [f"queue entry {qid} released (mailhub queue release) during its "
                    "delivery attempt: tried again at once"]  # the first release only


def test_a_release_during_an_attempt_that_delivers_everything_leaves_nothing(hub):
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, False)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.read(qid) is None and hub.queue.ids() == []
    assert len(hub.agent.calls) == 1


def test_the_result_line_of_an_entry_held_during_its_attempt_says_held(hub, log_events):
    # held while the attempt ran: no retry time comes until its release, so
    # the line must not name one (queue list says "held" there too)
    from twisted.logger import formatEvent

    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, True)
    hub.clock.advance(1)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    lines = [formatEvent(e) for e in log_events if formatEvent(e).startswith(f"{qid} to ")]
    assert lines == [f"{qid} to {BOB}: {LATER.text()}; held: no next attempt until its "
                     "release (mailhub queue release)"]
    assert hub.queue.read(qid).held
    hub.clock.advance(3600)
    assert len(hub.agent.calls) == 1


def test_a_release_during_an_attempt_is_logged(hub):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
        pending = hub.agent.hold()
        qid = enqueue(hub, BOB)
        hub.queue.set_held(qid, False)
        hub.clock.advance(1)
        x, r = pending.pop()
        x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if formatEvent(e).startswith(f"{qid} to ")]
    assert lines == [f"{qid} to {BOB}: {LATER.text()}; next attempt "
                     f"{schedule.utc_text(hub.clock.seconds())}"]
    assert (f"queue entry {qid} released (mailhub queue release) during its delivery "
            "attempt: tried again at once" in [formatEvent(e) for e in events])
    _answer_all(pending)


def test_a_release_while_a_notice_is_sent_is_not_lost(tmp_path):
    # The attempt's record is written, then a notice goes out (here: it
    # fails, so nothing more is written).  A release meanwhile is on disk;
    # the hub, which skipped the entry while busy with it, must see it too.
    h = make_hub(tmp_path)
    notices = []

    def send_dsn(components, envelope, data):
        notices.append(defer.Deferred())
        return notices[-1]

    h.runner.send_dsn = send_dsn
    try:
        h.runner.start()
        h.agent.script = lambda e, d, r: [
            DeliveryResult(a, "permanent" if a == BOB else "transient",
                           NO if a == BOB else LATER, "mx") for a in r]
        qid = enqueue(h, BOB, CAROL)
        assert len(h.agent.calls) == 2 and len(notices) == 1
        assert h.queue.read(qid).next_attempt == h.clock.seconds() + 60
        h.queue.set_held(qid, False)  # `mailhub queue release`
        h.clock.advance(1)  # seen while the notice is on its way
        notices.pop().errback(RuntimeError("spool full"))
        assert len(h.agent.calls) == 3  # CAROL again, at once
    finally:
        h.runner.stop()


def test_a_release_during_an_attempt_whose_record_failed_is_honoured_later(hub, monkeypatch):
    # The outcome could not be written (no descriptor); a minute later the
    # kept results are recorded: the release made during that attempt still
    # counts, and the next attempt is at once, not a schedule step later.
    hub.runner.start()
    broken = records_cannot_be_written(hub, monkeypatch)
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    hub.queue.set_held(qid, False)
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert qid in hub.runner._unrecorded and len(hub.agent.calls) == 1
    broken[0] = False
    hub.clock.advance(60)
    assert hub.queue.read(qid).attempts == 1
    assert len(hub.agent.calls) == 2
    _answer_all(pending)


def test_a_bounce_of_an_smtputf8_message_is_an_rfc_6533_notice(hub):
    # through the queue: a message sent with SMTPUTF8 to a UTF-8 address
    # fails; its notice is message/global-delivery-status naming the
    # address as it is, and goes out with SMTPUTF8 (RFC 6533)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx.remote.test")
                                        for a in r]
    jorg = Address("jörg", "remote.test")
    path = hub.tmp / "spool-utf8"
    raw = "Subject: Grüße\n\nhello\n".encode()
    path.write_bytes(raw)
    env = Envelope(sender=ALICE, recipients=(jorg,), smtputf8=True, body_8bit=True)
    hub.queue.enqueue(env, SpooledMessage(str(path), len(raw), len(raw) + raw.count(b"\n")))
    [(env, data)] = hub.dsn.sent
    assert env.sender is None and env.recipients == (ALICE,) and env.smtputf8
    assert b'report-type="global-delivery-status"' in data
    assert b"Content-Type: message/global-delivery-status\n" in data
    assert "\nFinal-Recipient: utf-8; jörg@remote.test\n".encode() in data
    assert b"Content-Type: message/global-headers\n" in data
    assert b"message/delivery-status" not in data


# --- a stop waits only for what must be finished -------------------------------------

RELAY_ZONE = {
    "remote.test": {"MX": [(10, "mx.remote.test")]},
    "mx.remote.test": {"A": ["192.0.2.1"]},
    "other.test": {"A": ["192.0.2.50"]},
}


def relay_hub(tmp_path, *held_domains):
    """``make_hub`` with the real delivery agent: MX answers from a table,
    those for ``held_domains`` only when the test calls ``hub.answer(domain)``
    (a DNS server that does not answer); SMTP over in-memory connections
    that move only in ``hub.net.run()`` (a session in flight until then)."""
    import random

    from tests.relay_fakes import FakeNetwork, FakeResolver, FakeTLS, ScriptedSMTPServer
    from txmailhub.relay.attempt import DeliveryAgent
    from txmailhub.relay.mx import MXResolver

    h = make_hub(tmp_path)
    mx = MXResolver(FakeResolver(RELAY_ZONE), h.clock, "mail.example.org", port=25,
                    rng=random.Random(0))
    real = mx.resolve
    waiting: dict[str, list[defer.Deferred]] = {}

    def resolve(domain):
        if domain not in held_domains:
            return real(domain)
        d = defer.Deferred()
        waiting.setdefault(domain, []).append(d)
        return d

    mx.resolve = resolve
    h.answer = lambda domain: [real(domain).chainDeferred(d) for d in waiting.pop(domain)]
    h.net = FakeNetwork(h.clock)
    for address in ("192.0.2.1", "192.0.2.50"):
        h.net.servers[(address, 25)] = ScriptedSMTPServer
    h.agent = DeliveryAgent(h.settings, mx, h.clock, endpoint=h.net.endpoint,
                            tls_options=lambda host, verify: FakeTLS(host))
    h.runner = QueueRunner(h.queue, h.agent, h.components, h.clock, send_dsn=h.dsn)
    return h


def test_a_stop_with_only_a_dns_lookup_in_flight_gives_it_up_at_once(tmp_path):
    # the DNS server does not answer: nothing is being sent, and giving the
    # attempt up loses nothing -- the stop must not wait the grace for it
    hub = relay_hub(tmp_path, "remote.test")
    hub.runner.start()
    qid = enqueue(hub, BOB)
    before = hub.queue.read(qid)
    stopped = hub.runner.stop()
    assert stopped.called
    hub.answer("remote.test")  # the answer comes after all
    hub.net.run()
    assert hub.net.connections == []  # connects nowhere
    assert hub.queue.read(qid) == before  # records nothing: retried at the next start


def test_a_stop_waits_for_a_session_then_gives_up_the_dns_lookups_left(tmp_path):
    hub = relay_hub(tmp_path, "other.test")
    hub.runner.start()
    first = enqueue(hub, BOB)  # in its SMTP session
    second = enqueue(hub, CAROL)  # waiting for DNS
    before = hub.queue.read(second)
    assert hub.net.connections == [("192.0.2.1", 25)]
    start = hub.clock.seconds()
    stopped = hub.runner.stop()
    hub.clock.advance(2)
    assert not stopped.called  # the session goes on
    hub.net.run()  # it ends, and its outcome is recorded
    assert stopped.called and hub.clock.seconds() == start + 2  # then, not at 10 s
    assert first not in hub.queue.ids()  # delivered, and recorded so
    assert hub.queue.read(second) == before


def test_a_dns_answer_that_comes_during_the_grace_starts_no_connection(tmp_path):
    hub = relay_hub(tmp_path, "other.test")
    hub.runner.start()
    enqueue(hub, BOB)  # in its SMTP session: the stop waits for it
    second = enqueue(hub, CAROL)
    before = hub.queue.read(second)
    stopped = hub.runner.stop()
    hub.answer("other.test")
    assert hub.net.connections == [("192.0.2.1", 25)]  # it would only be cut
    assert hub.queue.read(second) == before  # no attempt counted for it either
    assert not stopped.called
    hub.net.run()
    assert stopped.called and hub.queue.ids() == [second]


def _local_copy_held(hub, monkeypatch) -> defer.Deferred:
    """The local copies the hub makes (its store's ``deliver``) are under
    way until the test fires the Deferred returned, with what they
    recorded (``{recipient: None}``)."""
    copied: defer.Deferred = defer.Deferred()
    monkeypatch.setattr(hub.store, "deliver", lambda message, rcpts: copied)
    return copied


def test_an_entry_with_a_session_and_a_dns_lookup_is_given_up_once_the_session_is_recorded(
        tmp_path, monkeypatch):
    # one entry, two destinations: one in its session, one waiting for DNS.
    # The stop waits for the session; once its outcome is recorded, what is
    # left of the entry only looks up DNS: given up, it connects no more.
    hub = relay_hub(tmp_path, "other.test")
    copied = _local_copy_held(hub, monkeypatch)
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL)
    enqueue(hub, LOCAL)  # another entry the stop waits for
    stopped = hub.runner.stop()
    assert not stopped.called
    hub.net.run()  # the session to remote.test is over, and recorded
    assert [r.state for r in hub.queue.read(qid).recipients] == ["delivered", "pending"]
    assert not stopped.called  # the local copy is still being made
    copied.callback({LOCAL: None})
    assert stopped.called
    hub.answer("other.test")
    hub.net.run()
    assert hub.net.connections == [("192.0.2.1", 25)]  # other.test: never connected
    assert hub.queue.ids() == [qid]


def test_the_line_of_attempts_given_up_later_takes_the_singular_for_one(
        tmp_path, monkeypatch, log_events):
    # "1 more delivery attempt(s) given up": the stop's other lines and the
    # hub's other counts take the singular for 1, and so does this one
    hub = relay_hub(tmp_path, "other.test")
    copied = _local_copy_held(hub, monkeypatch)
    hub.runner.start()
    enqueue(hub, BOB, CAROL)
    enqueue(hub, LOCAL)
    stopped = hub.runner.stop()
    hub.net.run()  # remote.test's session recorded: other.test only looks up DNS
    assert [x for x in _stop_lines(log_events) if "more" in x] == [
        "stopping: 1 more delivery attempt given up (what they had to record is recorded; "
        "the rest only looks up DNS or connects), retried at the next start"]
    copied.callback({LOCAL: None})
    assert stopped.called


def test_an_entry_with_a_session_and_a_dns_lookup_records_the_session_then_gives_up(tmp_path):
    hub = relay_hub(tmp_path, "other.test")
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL)
    before = hub.queue.read(qid)
    stopped = hub.runner.stop()
    hub.clock.advance(1)
    assert not stopped.called  # in its session to remote.test
    hub.net.run()
    assert stopped.called  # recorded: the DNS lookup left is not waited for
    after = hub.queue.read(qid)
    assert after.recipient(BOB).state == "delivered"
    assert after.recipient(CAROL) == before.recipient(CAROL)
    assert after.attempts == before.attempts and after.next_attempt == before.next_attempt


def two_destinations(hub, bob=("delivered", OK)):
    """BOB's destination answers ``bob`` at once; CAROL's hangs (a slow
    server, in its session): the Deferreds it waits on."""
    hung = []

    def script(e, d, r):
        if d == "remote.test":
            return [DeliveryResult(a, bob[0], bob[1], "mx.remote.test") for a in r]
        x = defer.Deferred()
        hung.append((x, r))
        return x

    hub.agent.script = script
    return hung


def test_a_destination_done_is_recorded_while_another_hangs(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL)
    entry = hub.queue.read(qid)
    assert entry.recipient(BOB).state == "delivered"
    assert entry.recipient(BOB).remote_mta == "mx.remote.test"
    assert entry.recipient(CAROL).state == "pending"
    assert entry.attempts == 0  # the entry's own count is the final record's
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER, "mx.other.test") for a in r])
    entry = hub.queue.read(qid)
    assert entry.attempts == 1 and entry.recipient(CAROL).attempts == 1
    assert entry.recipient(BOB).attempts == 1  # not counted twice
    assert entry.next_attempt == hub.clock.seconds() + 60


def test_a_stop_that_gives_up_a_hung_destination_keeps_the_other_delivered(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL)
    stopped = hub.runner.stop()
    assert not stopped.called  # the session to other.test goes on ...
    hub.clock.advance(10)
    assert stopped.called and hub.agent.aborted == 1  # ... until the grace is over
    hung[0][0].callback([DeliveryResult(CAROL, "delivered", OK, "mx")])  # too late
    assert [r.state for r in hub.queue.read(qid).recipients] == ["delivered", "pending"]
    # the next start: only other.test is tried again
    with next_runner(hub) as agent2:
        assert agent2.calls == [(qid, "other.test", [CAROL])]
        assert hub.queue.ids() == []


def test_a_crash_after_one_destination_leaves_it_delivered(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL)
    # the process dies here: a new one reads the same queue directory
    queue2 = OutboundQueue(hub.settings.queue_dir, hub.clock)
    [entry] = queue2.recover()
    assert entry.id == qid and entry.recipient(BOB).state == "delivered"
    assert [r.address for r in entry.pending] == [CAROL]
    with next_runner(hub, queue2) as agent2:
        assert agent2.calls == [(qid, "other.test", [CAROL])]
        assert queue2.ids() == []
    _answer_all(hung)  # (the dead process's attempt, ended for its marker)


def test_a_failure_recorded_early_is_bounced_once_at_the_end(hub):
    hub.runner.start()
    hung = two_destinations(hub, bob=("permanent", NO))
    qid = enqueue(hub, BOB, CAROL)
    assert hub.queue.read(qid).recipient(BOB).state == "failed"
    assert hub.dsn.sent == []  # the notice is the final record's
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "delivered", OK, "mx.other.test") for a in r])
    [(env, data)] = hub.dsn.sent
    assert env.recipients == (ALICE,)
    assert b"Final-Recipient: rfc822; bob@remote.test" in data
    assert b"carol@other.test" not in data.split(b"message/delivery-status")[1]
    assert hub.queue.ids() == []
    hub.clock.advance(3600)
    assert len(hub.dsn.sent) == 1


def test_a_failure_recorded_before_a_stop_is_bounced_once_by_the_next_start(hub):
    hub.runner.start()
    two_destinations(hub, bob=("permanent", NO))
    qid = enqueue(hub, BOB, CAROL)
    hub.runner.stop(grace=0)
    assert hub.dsn.sent == []
    with next_runner(hub) as agent2:
        assert agent2.calls == [(qid, "other.test", [CAROL])]
        [(_, data)] = hub.dsn.sent
        assert b"Final-Recipient: rfc822; bob@remote.test" in data
        assert hub.queue.ids() == []


DAVE = Address("dave", "third.test")


def three_destinations_with_held_writes(hub, monkeypatch):
    """An entry for bob, carol and ``DAVE`` (three destinations), its
    deliveries held (``pending``: the agent's Deferreds and recipients) and
    every queue record update held in ``held`` until the test calls it."""
    pending = hub.agent.hold()
    held = hold_record_writes(hub, monkeypatch)
    hub.runner.start()
    return enqueue(hub, BOB, CAROL, DAVE), pending, held


def test_the_updates_of_one_entry_are_written_one_at_a_time(hub, monkeypatch):
    qid, pending, held = three_destinations_with_held_writes(hub, monkeypatch)
    by_rcpt = {r[0]: x for x, r in pending}
    by_rcpt[BOB].callback([DeliveryResult(BOB, "delivered", OK, "mx")])
    by_rcpt[CAROL].callback([DeliveryResult(CAROL, "permanent", NO, "mx")])
    assert len(held) == 1  # the second waits for the first
    held.pop(0)()
    assert len(held) == 1
    held.pop(0)()
    entry = hub.queue.read(qid)
    assert [r.state for r in entry.recipients] == ["delivered", "failed", "pending"]
    # a stop now waits for dave's session only; its outcome is the final record
    stopped = hub.runner.stop()
    by_rcpt[DAVE].callback([DeliveryResult(DAVE, "delivered", OK, "mx")])
    assert len(held) == 1 and not stopped.called
    held.pop(0)()
    assert hub.queue.read(qid).recipient(DAVE).state == "delivered"
    while held:  # then the bounce for carol, and its record
        assert not stopped.called
        held.pop(0)()
    assert stopped.called and hub.queue.ids() == [] and len(hub.dsn.sent) == 1


def test_a_stop_waits_for_an_outcome_being_recorded(hub, monkeypatch):
    # the session is over and its 250 in hand: an outcome given up while it
    # is written would deliver the message a second time at the next start
    pending = hub.agent.hold()
    hub.runner.start()
    first = enqueue(hub, BOB)
    second = enqueue(hub, CAROL)
    hub.agent.resolving.add(second)  # only looking up DNS
    held = hold_record_writes(hub, monkeypatch)
    x, r = pending.pop(0)
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert len(held) == 1  # the outcome is being written
    start = hub.clock.seconds()
    stopped = hub.runner.stop()
    hub.clock.advance(5)
    assert not stopped.called and hub.agent.quiesced == {first}
    held.pop()()
    assert stopped.called and hub.clock.seconds() == start + 5  # not at 10 s
    assert hub.queue.ids() == [second]  # the first's delivery is recorded
    assert hub.agent.aborted == 1


def test_a_stop_waits_for_a_local_delivery(hub, monkeypatch):
    copied = _local_copy_held(hub, monkeypatch)
    hub.agent.hold()
    hub.runner.start()
    first = enqueue(hub, LOCAL)
    second = enqueue(hub, CAROL)
    hub.agent.resolving.add(second)
    stopped = hub.runner.stop()
    hub.clock.advance(5)
    assert not stopped.called
    copied.callback({LOCAL: None})
    assert stopped.called
    assert first not in hub.queue.ids()  # the copy is recorded: never made twice
    assert hub.queue.ids() == [second]


def attempt_in_flight(hub) -> None:
    """The runner started, with one remote attempt in flight that never ends."""
    hub.agent.script = lambda e, d, r: defer.Deferred()
    hub.runner.start()
    enqueue(hub, BOB)
    hub.clock.advance(1)


def test_a_start_within_a_stops_grace_ends_that_stop(hub):
    # the restart gives the last run's attempts up: the stop that waited
    # for them is over, and its Deferred fires then, not when the new run
    # happens to have nothing in flight (a busy queue: maybe never)
    attempt_in_flight(hub)
    stopped = hub.runner.stop()
    assert not stopped.called
    hub.runner.start()
    assert stopped.called and hub.agent.aborted == 1


def test_a_second_stop_without_grace_gives_up_at_once(hub):
    attempt_in_flight(hub)
    first = hub.runner.stop()
    second = hub.runner.stop(grace=0)
    assert first.called and second.called and hub.agent.aborted == 1


def test_a_second_stop_with_a_shorter_grace_ends_the_wait_sooner(hub):
    attempt_in_flight(hub)
    first = hub.runner.stop()
    hub.clock.advance(1)
    second = hub.runner.stop(grace=2)
    hub.clock.advance(2)
    assert first.called and second.called and hub.agent.aborted == 1
    # a longer grace asked for later does not make the stop wait longer
    attempt_in_flight(hub)
    first = hub.runner.stop(grace=2)
    second = hub.runner.stop(grace=30)
    hub.clock.advance(2)
    assert first.called and second.called and hub.agent.aborted == 2


def test_a_destination_whose_record_cannot_be_written_is_recorded_with_the_others(hub,
                                                                                   monkeypatch):
    hub.runner.start()
    hung = two_destinations(hub)
    real = hub.queue.update
    calls = []

    def update(qid, change):
        calls.append(qid)
        if len(calls) == 1:  # the early record of remote.test
            return defer.fail(OSError(24, "Too many open files"))
        return real(qid, change)

    monkeypatch.setattr(hub.queue, "update", update)
    qid = enqueue(hub, BOB, CAROL)
    assert len(calls) == 1 and hub.queue.read(qid).recipient(BOB).state == "pending"
    # its answer is still to be recorded: a stop waits for the entry, though
    # its other destination only looks up DNS
    hub.agent.resolving.add(qid)
    stopped = hub.runner.stop()
    assert not stopped.called
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert stopped.called
    entry = hub.queue.read(qid)
    assert entry.recipient(BOB).state == "delivered" and entry.recipient(BOB).attempts == 1
    assert entry.recipient(CAROL).state == "pending" and entry.attempts == 1


def test_a_destination_with_a_temporary_answer_left_is_still_waited_for(hub):
    # remote.test took bob and answered 451 for dave: bob is recorded at
    # once, dave's answer only with the entry's final record -- a stop
    # waits for it, though other.test only looks up DNS
    dave = Address("dave", "remote.test")
    hung = two_destinations(hub)
    script = hub.agent.script
    hub.agent.script = lambda e, d, r: (
        [DeliveryResult(BOB, "delivered", OK, "mx"), DeliveryResult(dave, "transient", LATER, "mx")]
        if d == "remote.test" else script(e, d, r))
    hub.runner.start()
    qid = enqueue(hub, BOB, dave, CAROL)
    assert hub.queue.read(qid).recipient(BOB).state == "delivered"
    hub.agent.resolving.add(qid)
    stopped = hub.runner.stop()
    assert not stopped.called
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER) for a in r])
    assert stopped.called
    entry = hub.queue.read(qid)
    assert entry.recipient(dave).last_reply == LATER and entry.recipient(dave).attempts == 1


# --- early records of a destination: notices, hold/release/delete, stop ---------

def test_an_early_record_keeps_one_success_notice(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL, notify=("SUCCESS",))
    assert hub.queue.read(qid).recipient(BOB).notice is not None
    assert hub.dsn.sent == []
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert len(hub.dsn.sent) == 1 and b"bob@remote.test" in hub.dsn.sent[0][1]
    hub.agent.script = FakeAgent().script
    hub.clock.advance(3600)
    assert len(hub.dsn.sent) == 2
    assert b"bob@remote.test" not in hub.dsn.sent[1][1].split(b"message/delivery-status")[1]
    assert hub.queue.ids() == []


def test_a_release_during_an_attempt_with_an_early_record_is_honoured(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL)
    assert hub.queue.set_held(qid, True) is not None
    assert hub.queue.set_held(qid, False) is not None
    assert len(hung) == 1
    x, r = hung.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    e = hub.queue.read(qid)
    assert e.next_attempt <= hub.clock.seconds() and e.attempts == 1
    _answer_all(hung)  # the attempt the release brought


def test_a_hold_during_an_attempt_with_an_early_record_is_kept(hub):
    hub.runner.start()
    hung = two_destinations(hub)
    qid = enqueue(hub, BOB, CAROL)
    assert hub.queue.set_held(qid, True) is not None
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    e = hub.queue.read(qid)
    assert e.held and e.recipient(BOB).state == "delivered"


def test_a_delete_after_an_early_record_sends_no_notice(hub):
    hub.runner.start()
    hung = two_destinations(hub, bob=("permanent", NO))
    qid = enqueue(hub, BOB, CAROL)
    assert hub.queue.delete(qid)
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.ids() == [] and hub.dsn.sent == []


def test_an_early_record_queued_behind_another_is_not_written_after_give_up(hub, monkeypatch):
    qid, pending, held = three_destinations_with_held_writes(hub, monkeypatch)
    by = {r[0]: x for x, r in pending}
    by[BOB].callback([DeliveryResult(BOB, "delivered", OK, "mx")])
    by[CAROL].callback([DeliveryResult(CAROL, "delivered", OK, "mx")])
    assert len(held) == 1
    stopped = hub.runner.stop()
    hub.clock.advance(10)
    assert stopped.called
    held.pop(0)()  # the one in flight lands (cannot be stopped)
    assert held == []  # the queued one is not written
    by[DAVE].callback([DeliveryResult(DAVE, "delivered", OK, "mx")])
    assert held == []  # nor the final record
    assert [r.state for r in hub.queue.read(qid).recipients] == [
        "delivered", "pending", "pending"]


def test_a_stop_waits_for_an_early_record_in_flight_then_gives_up(hub, monkeypatch):
    pending = hub.agent.hold()
    held = hold_record_writes(hub, monkeypatch)
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL)
    by = {r[0]: x for x, r in pending}
    by[BOB].callback([DeliveryResult(BOB, "delivered", OK, "mx")])
    assert len(held) == 1
    hub.agent.resolving.add(qid)
    stopped = hub.runner.stop()
    assert not stopped.called
    held.pop(0)()
    assert stopped.called  # recorded; carol only resolves
    assert hub.queue.read(qid).recipient(BOB).state == "delivered"


def test_one_destination_is_one_record_update(hub, monkeypatch):
    real = hub.queue.update
    calls = []
    monkeypatch.setattr(hub.queue, "update", lambda q, c: (calls.append(q), real(q, c))[1])
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    dave = Address("dave", "remote.test")
    qid = enqueue(hub, BOB, dave)
    assert calls == [qid]


def test_an_early_failure_whose_final_record_failed_is_bounced_once(hub, monkeypatch):
    # bob fails at once (written early), carol is delivered, and the final
    # record cannot be written: the next try enters it without delivering
    # carol again, and bob gets one failure notice
    hub.runner.start()
    hung = two_destinations(hub, bob=("permanent", NO))
    real = hub.queue.update
    calls = []

    def update(qid, change):
        calls.append(qid)
        if len(calls) == 2:  # the final record
            return defer.fail(OSError(28, "No space left on device"))
        return real(qid, change)

    monkeypatch.setattr(hub.queue, "update", update)
    qid = enqueue(hub, BOB, CAROL)
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.read(qid).recipient(CAROL).state == "pending" and hub.dsn.sent == []
    hub.clock.advance(60)
    assert len(hub.agent.calls) == 2  # no new delivery
    [(_, data)] = hub.dsn.sent
    assert b"Final-Recipient: rfc822; bob@remote.test" in data
    assert hub.queue.ids() == []
    hub.clock.advance(3600)
    assert len(hub.dsn.sent) == 1


def test_the_delay_warning_names_only_what_is_still_pending_after_an_early_record(hub):
    hub.runner.start()
    start = hub.clock.seconds()
    hung = two_destinations(hub)
    script = hub.agent.script
    qid = enqueue(hub, BOB, CAROL)
    [(x, r)] = hung
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    hub.agent.script = lambda e, d, r: (
        [DeliveryResult(a, "transient", LATER, "mx") for a in r] if d == "other.test"
        else script(e, d, r))
    while hub.clock.seconds() - start < 5 * 3600 and not hub.dsn.sent:
        hub.clock.advance(60)
    [(_, data)] = hub.dsn.sent
    status = data.split(b"message/delivery-status")[1]
    assert b"Action: delayed" in status and b"carol@other.test" in status
    assert b"bob@remote.test" not in status
    entry = hub.queue.read(qid)
    assert entry.delay_warned and entry.recipient(BOB).attempts == 1
    assert [c[1] for c in hub.agent.calls].count("remote.test") == 1


def test_a_protocol_error_mid_batch_keeps_the_message_queued_and_frees_the_slot_at_once(
        tmp_path):
    # The next hop answers the pipelined batch out of order, having taken
    # DATA: the session is dropped at once (no QUIT read as message data,
    # no minute waited for its reply), nothing is recorded as delivered,
    # and the message waits for its retry with the hub's account of why.
    from tests.test_relay_attempt import _MisbehavingBatch

    hub = relay_hub(tmp_path)
    hub.net.servers[("192.0.2.1", 25)] = _MisbehavingBatch
    hub.runner.start()
    qid = enqueue(hub, BOB)
    start = hub.clock.seconds()
    hub.net.run()
    entry = hub.queue.read(qid)
    [bob] = entry.recipients
    assert hub.clock.seconds() == start
    assert bob.state == "pending" and bob.attempts == 1
    assert isinstance(bob.last_reply, LocalReply)  # "hub:" in queue show
    assert bob.last_reply.text().startswith("421 4.5.0 reply 354 makes no sense for RCPT")
    assert entry.attempts == 1 and entry.next_attempt > start
    [server] = hub.net.server_protocols
    assert server.in_data and not server.messages and b"QUIT" not in server.buf
    assert not hub.agent.connected(qid) and qid not in hub.runner._attempting  # slot free


def test_a_hostile_reply_is_logged_escaped(hub, log_events):
    # the next hop's words go into the hub's log as each result's line: a
    # CR or an ESC in them must not forge or hide log lines (logsafe)
    from twisted.logger import formatEvent

    hostile = Reply.of(550, "5.1.1", "no\x1b[2K\rsuch\\user")
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", hostile, "mx")
                                        for a in r]
    qid = enqueue(hub, BOB)
    enqueue(hub, BOB, sender=None)  # a notice that failed: dropped, and logged
    lines = [formatEvent(e) for e in log_events]
    escaped = "550 5.1.1 no\\x1b[2K\\x0dsuch\\\\user"
    assert f"{qid} to {BOB}: {escaped}; failed" in lines
    [dropped] = [line for line in lines if "dropping it" in line]
    assert dropped.endswith(f"could not be delivered to {BOB}: {escaped}; dropping it")
    assert not any("\x1b" in line or "\r" in line for line in lines)


def test_a_reply_of_the_most_a_server_may_send_makes_a_bounded_log_line(hub, log_events):
    # a next hop may send a reply of 200 lines of 4096 octets (the client's
    # limits, _client_reply): the log line of each recipient's result
    # quotes its start, not 800 KB per recipient and attempt
    from twisted.logger import formatEvent

    from txmailhub.smtp._client_reply import MAX_REPLY_LINE, MAX_REPLY_LINES

    huge = Reply.of(550, "5.1.1", *["x" * (MAX_REPLY_LINE - 4)] * MAX_REPLY_LINES)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", huge, "mx") for a in r]
    qid = enqueue(hub, BOB)
    lines = [formatEvent(e) for e in log_events]
    [result] = [line for line in lines if line.startswith(f"{qid} to {BOB}: 550 5.1.1 xxx")]
    assert len(result) < 4096, len(result)
    assert result.endswith("x...; failed")  # no whole reply to a reader
    assert max(map(len, lines)) < 4096


def test_a_notice_owed_when_the_hub_was_killed_goes_at_the_next_start(hub):
    """Killed after recording an attempt's outcome and before sending the
    notice it owed, a hub left a record with only a failed recipient
    (and one with a success notice owed) and the entry's next retry --
    four hours away late in the schedule.  Nothing is left to deliver, so
    the next start sends the notices at once: they were due when the
    attempt ended, not at that retry."""
    qid = enqueue(hub, BOB, CAROL, notify=("SUCCESS", "FAILURE"))
    now = hub.clock.seconds()

    def as_killed(e):
        return dataclasses.replace(e.with_recipients({
            BOB: dataclasses.replace(e.recipient(BOB), state="failed", attempts=7,
                                     last_attempt=now, last_reply=NO, remote_mta="mx"),
            CAROL: dataclasses.replace(e.recipient(CAROL), state="delivered", attempts=7,
                                       last_attempt=now, last_reply=OK, remote_mta="mx",
                                       notice="relayed"),
        }), attempts=7, next_attempt=now + 4 * 3600)

    hub.queue.update_now(qid, as_killed)
    with next_runner(hub) as agent:
        hub.clock.advance(1)
        assert agent.calls == []  # nothing delivered again
        actions = sorted(b"Action: failed" in data for _, data in hub.dsn.sent)
        assert actions == [False, True]  # the failure notice and the success notice
        assert hub.queue.ids() == []


def test_a_start_keeps_the_retry_of_an_entry_with_recipients_to_deliver(hub):
    """The same, with a recipient still pending: its retry time stands
    (an attempt at the start would hit a greylisting server again at
    once); the failure notice goes with that attempt."""
    qid = enqueue(hub, BOB, CAROL)
    now = hub.clock.seconds()

    def as_killed(e):
        return dataclasses.replace(e.with_recipients({
            BOB: dataclasses.replace(e.recipient(BOB), state="failed", attempts=1,
                                     last_attempt=now, last_reply=NO, remote_mta="mx"),
            CAROL: dataclasses.replace(e.recipient(CAROL), attempts=1, last_attempt=now,
                                       last_reply=LATER, remote_mta="mx"),
        }), attempts=1, next_attempt=now + 300)

    hub.queue.update_now(qid, as_killed)
    with next_runner(hub) as agent:
        hub.clock.advance(1)
        assert agent.calls == [] and hub.dsn.sent == []
        hub.clock.advance(300)
        assert agent.calls == [(qid, "other.test", [CAROL])]
        assert len(hub.dsn.sent) == 1 and hub.queue.ids() == []


def test_client_addresses_are_logged_escaped(hub, log_events):
    # An MX client may give any sender (and an authenticated one any
    # remote recipient) with a bidi override in it (SMTPUTF8 lets it
    # through the parser, as no control character is): the queue's and
    # the runner's lines name them escaped, as the SMTP server's own
    # transaction line does, or the override reorders the rest of the
    # line on the admin's screen (logsafe)
    from twisted.logger import formatEvent

    forged = Address("x\u202eevil", "remote.test")
    far = Address("y\u2066far", "other.test")
    hub.runner.start()
    qid = enqueue(hub, far, sender=forged, notify=("SUCCESS",))
    path = hub.tmp / "spool-notice"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    env = Envelope(sender=forged, recipients=(LOCAL,),
                   recipient_dsn=((LOCAL, RecipientDSN(notify=("SUCCESS",))),))
    notice = hub.queue.enqueue(env, SpooledMessage(str(path), 20, 23), delivered=(LOCAL,)).result
    hub.clock.advance(60)
    lines = [formatEvent(e) for e in log_events]
    assert f"{qid} to y\\u2066far@other.test: 250 2.0.0 ok" in lines
    assert any(line.startswith(f"queued {notice}") and line.endswith(
        f"the delivered notice to <x\\u202eevil@remote.test> for {LOCAL}") for line in lines)
    assert f"{notice}: delivered notice for {LOCAL} to <x\\u202eevil@remote.test>: sent" in lines
    assert not any("\u202e" in line or "\u2066" in line for line in lines)


def test_addresses_in_the_notice_failure_lines_are_escaped(hub, log_events):
    # the same for the lines about a notice that cannot be sent, one given
    # up on, and a failed message from <> dropped
    from twisted.logger import formatEvent

    forged = Address("x\u202eevil", "remote.test")
    far = Address("y\u2066far", "other.test")
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    hub.dsn.fail = True
    enqueue(hub, BOB, sender=forged)
    enqueue(hub, far, sender=None)
    hub.clock.advance(2 * 86400)
    lines = [formatEvent(e) for e in log_events]
    hub.dsn.fail = False
    assert any("could not send the failed notice to <x\\u202eevil@remote.test>" in line
               for line in lines)
    assert any("giving up on the failure notice to <x\\u202eevil@remote.test>" in line
               for line in lines)
    assert any("could not be delivered to y\\u2066far@other.test" in line for line in lines)
    assert not any("\u202e" in line or "\u2066" in line for line in lines)


def test_a_clock_set_back_between_runs_does_not_stretch_a_retry_wait(hub):
    # the clock is set back a day (an NTP correction, a VM restored from a
    # snapshot) while the hub is down: the retry time in the record, a
    # minute after its attempt by the old clock, is a day and a minute
    # away by the new one.  No wait is ever longer than the step of the
    # schedule that set it, so the entry is tried a minute later, not a day.
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    qid = enqueue(hub, BOB)
    hub.runner.stop()
    assert hub.queue.read(qid).next_attempt == hub.clock.seconds() + 60
    hub.clock.rightNow -= 86400
    with next_runner(hub) as agent2:
        agent2.script = hub.agent.script
        hub.clock.advance(59)
        assert agent2.calls == []
        hub.clock.advance(1)
        assert agent2.calls == [(qid, "remote.test", [BOB])]
        # the next wait is the schedule's second step, from the new clock
        assert hub.queue.read(qid).next_attempt == hub.clock.seconds() + 300


def test_a_clock_set_back_while_running_does_not_stretch_a_retry_wait(hub):
    # set back while the hub runs: the wait is cut to its step at the
    # runner's next look (a tick, or new mail arriving)
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    qid = enqueue(hub, BOB)
    hub.clock.rightNow -= 86400
    hub.runner.kick()
    assert [c[0] for c in hub.agent.calls] == [qid]  # its step from now, not at once
    hub.clock.advance(59)
    hub.runner.kick()
    assert [c[0] for c in hub.agent.calls] == [qid]
    hub.clock.advance(1)
    hub.runner.kick()
    assert [c[0] for c in hub.agent.calls] == [qid, qid]


def test_a_clock_set_back_is_bounded_by_the_configured_schedule(tmp_path):
    # [relay] retry_schedule's first step (2 minutes), not the default's
    # minute, is the longest the entry can be meant to wait
    hub = make_hub(tmp_path, 'retry_schedule = ["2m", "10m"]\nqueue_lifetime = "1d"\n')
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    try:
        qid = enqueue(hub, BOB)
        assert hub.queue.read(qid).next_attempt == hub.clock.seconds() + 120
        hub.runner.stop()
        hub.clock.rightNow -= 86400
        with next_runner(hub) as agent2:
            agent2.script = hub.agent.script
            hub.clock.advance(119)
            assert agent2.calls == []
            hub.clock.advance(1)
            assert agent2.calls == [(qid, "remote.test", [BOB])]
    finally:
        hub.runner.stop()


def test_a_start_of_a_running_runner_makes_no_second_loop(hub):
    hub.runner.start()
    hub.runner.start()
    hub.runner.stop()
    assert hub.clock.getDelayedCalls() == []


def test_an_attempt_under_way_is_marked_for_mailhub_queue(hub):
    # `mailhub queue list` runs in another process: it learns that the hub
    # is delivering an entry from the marker the runner holds meanwhile
    hub.runner.start()
    pending = hub.agent.hold()
    qid = enqueue(hub, BOB)
    began = hub.clock.seconds()
    assert hub.queue.attempt_since(qid) == began
    hub.clock.advance(30)
    assert hub.queue.attempt_since(qid) == began  # all the attempt long
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])
    assert hub.queue.attempt_since(qid) is None
    assert not [n for n in os.listdir(hub.settings.queue_dir) if "attempt" in n]
    hub.clock.advance(60)  # the retry: marked again, from its own start
    assert hub.queue.attempt_since(qid) == hub.clock.seconds()
    x, r = pending.pop()
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.ids() == [] and hub.queue.attempt_since(qid) is None
    assert not [n for n in os.listdir(hub.settings.queue_dir) if "attempt" in n]


def test_an_entry_waiting_for_a_slot_is_not_marked_as_being_delivered(tmp_path):
    # the runner takes twice max_concurrent_deliveries entries: the ones
    # beyond the slots wait for one, and `mailhub queue list` said
    # "delivering" for them all the same (a marker from when they were taken)
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 1\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        first = enqueue(hub, BOB)
        second = enqueue(hub, CAROL)
        assert hub.runner.active == {first, second} and len(hub.agent.calls) == 1
        assert hub.queue.attempt_since(first) == hub.clock.seconds()
        assert hub.queue.attempt_since(second) is None  # only waiting
        assert not os.path.exists(hub.queue.attempt_path(second))
        hub.clock.advance(30)
        x, r = pending.pop()
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        # its slot is had: delivering, since then
        assert hub.queue.attempt_since(second) == hub.clock.seconds()
        assert hub.queue.attempt_since(first) is None
        x, r = pending.pop()
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert hub.queue.attempt_since(second) is None and hub.queue.ids() == []
    finally:
        hub.runner.stop()


def test_an_attempt_that_cannot_be_marked_goes_on(hub, monkeypatch):
    # no descriptor or a full disk for the marker: the delivery does not care
    def refuse(*args, **kw):
        raise OSError(28, "No space left on device")

    hub.runner.start()
    real_open = os.open
    monkeypatch.setattr("txmailhub.relay.queue.os.open",
                        lambda path, *a, **kw: refuse()
                        if "attempt" in os.path.basename(path)
                        else real_open(path, *a, **kw))
    qid = enqueue(hub, BOB)
    assert len(hub.agent.calls) == 1 and hub.queue.ids() == []
    assert hub.queue.attempt_since(qid) is None


def _open_descriptors(queue_dir: str) -> int | None:
    """Descriptors this process holds on the attempt markers of
    ``queue_dir`` (unlinked or not, made or being made): counting all of
    the process's made the test depend on what other tests' leftovers
    (their hubs' markers among them) the collector happened to close
    meanwhile."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    held = 0
    prefix = os.path.join(os.path.realpath(queue_dir), "")
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        except OSError:  # closed since the listing (the listing's own)
            continue
        held += target.startswith(prefix) and ".attempt" in os.path.basename(target)
    return held


@pytest.mark.parametrize("how", ["delivered", "transient", "permanent", "exception", "deleted",
                                 "held", "released", "stopped"])
def test_every_end_of_an_attempt_removes_its_marker_and_closes_it(hub, how):
    # whatever ends the attempt, the marker goes and its descriptor (which
    # holds the lock) is closed: nothing says "delivering" afterwards, and
    # a long-running hub does not run out of descriptors
    hub.runner.start()
    pending = hub.agent.hold()
    before = _open_descriptors(hub.settings.queue_dir)
    qid = enqueue(hub, BOB)
    assert hub.queue.attempt_since(qid) is not None
    if before is not None:
        # the marker, held open for its lock
        assert _open_descriptors(hub.settings.queue_dir) == before + 1
    if how == "deleted":
        hub.queue.delete(qid)  # `mailhub queue delete`, during the attempt
    elif how in ("held", "released"):
        hub.queue.set_held(qid, True)
        if how == "released":
            hub.queue.set_held(qid, False)
    elif how == "stopped":
        stopped = hub.runner.stop(grace=5)
        hub.clock.advance(6)  # given up: its connections are cut, and it ends
    x, r = pending.pop()
    if how == "exception":
        x.errback(RuntimeError("the agent failed"))
    else:
        kind = how if how in ("delivered", "permanent") else "transient"
        reply = {"delivered": OK, "permanent": NO}.get(how, LATER)
        x.callback([DeliveryResult(a, kind, reply, "mx") for a in r])
    if how == "released":  # the release's own attempt, at once: marked in turn
        assert hub.queue.attempt_since(qid) == hub.clock.seconds()
        x, r = pending.pop()
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    if how == "stopped":
        assert stopped.called
    assert pending == [] and hub.queue.attempt_since(qid) is None
    assert not [n for n in os.listdir(hub.settings.queue_dir) if "attempt" in n]
    if before is not None:
        assert _open_descriptors(hub.settings.queue_dir) == before


def test_a_hundred_attempts_leave_no_descriptor_open(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    before = _open_descriptors(hub.settings.queue_dir)
    for _ in range(100):
        hub.queue.set_held(qid, False)  # a release: the next attempt at once
        hub.clock.advance(1)
    assert len(hub.agent.calls) == 101 and hub.queue.attempt_since(qid) is None
    if before is not None:
        assert _open_descriptors(hub.settings.queue_dir) <= before


def test_a_failure_notice_that_cannot_be_made_at_expiry_is_tried_for_a_lifetime(
        hub, log_events):
    # a message that expires bounces at its last attempt, after the queue
    # lifetime by definition: a notice the spool or the queue refused then
    # (a full disk for a minute) was given up at that first try, and the
    # sender never heard the message was not delivered.  It is tried again
    # for a lifetime from the failure, as a notice queued would be
    from twisted.logger import formatEvent

    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.dsn.fail = True
    qid = enqueue(hub, BOB)
    for _ in range(7):
        hub.clock.advance(4 * 3600)  # past the 1d lifetime: the last attempt bounced
    [rec] = hub.queue.read(qid).recipients
    assert rec.state == "failed" and rec.failed_at is not None
    failed_at = rec.failed_at
    tries = len(hub.dsn.tried)
    assert tries >= 1
    hub.clock.advance(4 * 3600)  # the schedule's step
    assert hub.queue.ids() == [qid]  # kept, the notice still owed
    assert len(hub.dsn.tried) == tries + 1  # and tried again
    hub.dsn.fail = False
    hub.clock.advance(4 * 3600)
    [(env, data)] = hub.dsn.sent
    assert env.sender is None and env.recipients == (ALICE,)
    assert b"Action: failed" in data
    assert hub.queue.ids() == []
    # one the spool never takes is given up a lifetime after the failure,
    # not later, and the line says since when
    hub.dsn.fail = True
    qid = enqueue(hub, BOB)
    for _ in range(7):
        hub.clock.advance(4 * 3600)
    failed_at = hub.queue.read(qid).recipients[0].failed_at
    while hub.clock.seconds() < failed_at + 86400 - 3600:
        hub.clock.advance(3600)
    assert hub.queue.ids() == [qid]  # tried at the schedule's steps until then
    hub.clock.advance(3600)
    assert hub.queue.ids() == []
    lines = [formatEvent(e) for e in log_events]
    assert (f"{qid}: giving up on the failure notice to <{ALICE}> after the queue lifetime: "
            f"it could not be made since the failure at {schedule.utc_text(failed_at)}"
            in lines)


def test_the_failure_time_round_trips_and_an_old_record_reads_without_it():
    from txmailhub.relay.record import FAILED, PENDING, RecipientRecord

    rec = RecipientRecord(address=BOB, state=FAILED, failed_at=1_700_000_123.5)
    assert RecipientRecord.from_json(rec.to_json()) == rec
    old = RecipientRecord(address=BOB, state=PENDING)
    assert "failed_at" not in old.to_json()
    assert RecipientRecord.from_json(old.to_json()).failed_at is None
    with pytest.raises(ValueError):
        RecipientRecord.from_json({**rec.to_json(), "failed_at": "soon"})


def test_a_destination_done_while_its_entry_runs_on_frees_its_room_at_once(hub):
    # max_per_destination = 1: the first entry's delivery to remote.test
    # ends while its other destination runs on; the second entry for
    # remote.test, passed over while it ran, is taken then, not at the
    # next tick of the clock (it waited for that slot itself before)
    hub.runner.start()
    pending = hub.agent.hold()
    first = enqueue(hub, BOB, CAROL)
    second = enqueue(hub, BOB)
    assert hub.runner.active == {first}
    x, r = next((x, r) for x, r in pending if r == [BOB])
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert second in hub.runner.active
    assert [c[0] for c in hub.agent.calls] == [first, first, second]
    for x, r in pending:
        if not x.called:
            x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
    assert hub.queue.ids() == []


def test_a_lookup_whose_end_comes_as_an_error_still_lets_the_entries_go(tmp_path):
    # the agent's lookup_in_flight fires once the lookup ends; one that
    # fires with an error (an agent of an embedding application, a bug)
    # left the destination watched for ever: one entry at a time to it
    # from then on, each taken only at the runner's next tick
    hub = make_hub(tmp_path, "max_per_destination = 5\n")
    in_flight = _watch_lookups(hub)
    pending = hub.agent.hold()
    hold = hub.agent.script

    def script(e, d, r):
        if len(hub.agent.calls) == 1:
            in_flight["remote.test"] = []  # the first delivery looks it up
        return hold(e, d, r)

    hub.agent.script = script
    bobs = [enqueue(hub, BOB) for _ in range(3)]
    hub.runner.start()
    try:
        assert len(hub.agent.calls) == 1
        for waiter in in_flight.pop("remote.test"):  # the lookup ends, oddly
            waiter.errback(RuntimeError("the lookup's end, as an error"))
        assert sorted(c[0] for c in hub.agent.calls) == sorted(bobs)  # at once
        assert hub.runner._watching == set()
        _answer_all(pending)
        assert hub.queue.ids() == []
    finally:
        hub.runner.stop()


def test_an_entry_that_only_records_known_results_is_no_delivery_of_its_destination(
        hub, monkeypatch):
    # max_per_destination = 1.  The results of an attempt whose record
    # could not be written are entered at the next try, without a
    # delivery: that try held remote.test's room all the same, and the
    # other remote.test entry waited for its record to be written (a slow
    # or full disk) with no delivery to the domain under way
    hub.runner.start()
    first = enqueue_unrecorded(hub, monkeypatch, BOB)
    held = hold_record_writes(hub, monkeypatch)
    hub.clock.advance(60)  # its next try: the known result is being recorded
    assert first in hub.runner.active and held
    second = enqueue(hub, BOB)
    assert second in hub.runner.active
    assert [c[0] for c in hub.agent.calls] == [first, second]
    while held:
        held.pop(0)()
    assert hub.queue.ids() == []


@pytest.mark.parametrize("refusal, said", [
    (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    ("DSNRefused", "451 4.3.0 local delivery failed: the queue is full"),
])
def test_a_notice_that_cannot_be_made_is_one_line_per_try_not_a_traceback(
        hub, log_events, refusal, said):
    # a full disk keeps the failure notice from being made at every retry
    # of the notice (the schedule's steps for a queue lifetime: some thirty
    # over five days); each try logged the whole traceback of an expected
    # condition.  One error line per try says why, as the other writes do
    from twisted.logger import LogLevel, formatEvent

    from txmailhub.relay.bounce import DSNRefused

    error = DSNRefused(said) if refusal == "DSNRefused" else refusal
    tries = []

    def refuse(components, envelope, data):
        tries.append(hub.clock.seconds())
        return defer.fail(error)

    hub.runner.send_dsn = refuse
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    hub.clock.advance(4 * 3600)
    assert len(tries) >= 2 and hub.queue.ids() == [qid]
    mine = [e for e in log_events if "notice" in e.get("log_format", "")
            and e.get("queue_id") == qid and e["log_level"] >= LogLevel.warn]
    assert len(mine) == len(tries)
    assert all("log_failure" not in e and e["log_level"] == LogLevel.error for e in mine)
    assert formatEvent(mine[0]) == (f"{qid}: could not send the failed notice to <{ALICE}> "
                                    f"({said}); will try again")


def test_a_notice_kept_across_restarts_is_given_up_a_lifetime_after_the_failure(hub):
    # the failure time is on disk: a hub restarted (twice) while the notice
    # keeps failing gives it up a queue lifetime after the failure, not a
    # lifetime after each start
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.dsn.fail = True
    qid = enqueue(hub, BOB)
    hub.clock.advance(6 * 3600)
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    hub.clock.advance(4 * 3600)
    [rec] = hub.queue.read(qid).recipients
    failed_at = rec.failed_at
    assert rec.state == "failed" and failed_at == rec.last_attempt
    assert failed_at > hub.queue.read(qid).created + 6 * 3600
    hub.runner.stop()
    for _ in range(2):
        hub.clock.advance(10 * 3600)
        with next_runner(hub):
            hub.clock.advance(3600)
        assert hub.queue.ids() == [qid]
        assert hub.queue.read(qid).recipients[0].failed_at == failed_at
    with next_runner(hub):  # 22 h after the failure: until 24 h, tried
        while hub.clock.seconds() < failed_at + 86400 - 60:
            hub.clock.advance(60)
        assert hub.queue.ids() == [qid]
        hub.clock.advance(4 * 3600)
        assert hub.queue.ids() == []
    assert hub.dsn.sent == []


@pytest.mark.parametrize("last_attempt", [True, False])
def test_a_failed_recipient_recorded_without_its_failure_time(hub, last_attempt):
    # a record the version before wrote (no failed_at): its last attempt
    # stands in for the failure, or (none recorded) the message's arrival
    from txmailhub.relay.record import FAILED, QueueEntry

    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    created = hub.queue.read(qid).created
    hub.clock.advance(11 * 3600 + 600)  # (no multiple of the last step)
    when = hub.clock.seconds() if last_attempt else None

    def old(e):
        [r] = e.recipients
        return e.with_recipients({BOB: dataclasses.replace(
            r, state=FAILED, last_attempt=when, failed_at=None)})

    hub.queue.update_now(qid, old)
    raw = open(hub.queue.record_path(qid), "rb").read()
    assert b"failed_at" not in raw
    assert QueueEntry.from_json(raw).recipients[0].failed_at is None
    since = when if last_attempt else created
    with next_runner(hub):
        while hub.clock.seconds() < since + 86400 - 60:
            hub.clock.advance(60)
        assert hub.queue.ids() == [qid]
        # its last try when that lifetime is over, after the start's at once
        # and the schedule's from the record's attempts on (no notice_tries)
        hub.clock.advance(60)
        assert hub.queue.ids() == []
        assert hub.dsn.tried[-1] == since + 86400


def test_a_notice_that_cannot_be_made_is_tried_at_the_schedules_steps(hub, monkeypatch):
    # a message refused for good at its first attempt owes its failure
    # notice from then on; one the spool refuses (a full disk) was tried
    # again every minute for the whole queue lifetime (1,440 tries a day:
    # a pass that only owed a notice did not move the schedule on, and the
    # entry stayed at the step of its one attempt).  It goes by the
    # schedule's steps, as a delivery does
    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    start = hub.clock.seconds()
    for _ in range(24 * 60 - 2):
        hub.clock.advance(60)
    assert hub.queue.ids() == [qid]
    minutes = [round((t - start) / 60) for t in hub.dsn.tried]
    assert minutes == [0, 1, 6, 21, 51, 111, 231, 471, 711, 951, 1191, 1431]
    # no delivery attempt among them (queue list's count), and queue list's
    # next attempt is the runner's, not a minute from now
    entry = hub.queue.read(qid)
    assert entry.attempts == 1 and entry.notice_tries == 11
    from txmailhub.relay import admin

    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(hub.clock.seconds))
    shown = admin._next(entry, hub.settings.relay.retry_schedule)
    assert shown == "notice," + schedule.utc_text(entry.next_attempt)
    # (the last try comes at the message's deadline, a lifetime after it
    # came and failed: two minutes away, more than the minute of old)
    assert entry.next_attempt == entry.created + 86400 == hub.clock.seconds() + 120
    hub.clock.advance(120)  # a queue lifetime (1d) after the failure: given up
    assert hub.queue.ids() == []


def test_the_notice_tries_round_trip_and_an_old_record_reads_as_none():
    from txmailhub.relay.record import QueueEntry

    e = QueueEntry.new("Q1", Envelope(sender=ALICE, recipients=(BOB,)), 1_700_000_000.0)
    assert b"notice_tries" not in e.to_json()
    assert QueueEntry.from_json(e.to_json()).notice_tries == 0
    e = dataclasses.replace(e, attempts=2, notice_tries=3)
    assert QueueEntry.from_json(e.to_json()).notice_tries == 3
    assert QueueEntry.from_json(e.to_json()).steps == 5


def test_a_success_notice_that_cannot_be_made_is_given_up_a_lifetime_after_delivery(
        hub, log_events):
    # NOTIFY=SUCCESS to a next hop without DSN owes a "relayed" notice; one
    # the spool never takes kept the delivered message in the queue for
    # ever (tried at every step, days past its queue lifetime).  It is
    # given up as a failure notice is: a queue lifetime after the delivery
    from twisted.logger import formatEvent

    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    qid = enqueue(hub, BOB, notify=("SUCCESS",))
    delivered = hub.queue.read(qid).recipients[0].last_attempt
    while hub.clock.seconds() < delivered + 86400 - 60:
        hub.clock.advance(60)
    assert hub.queue.ids() == [qid]  # tried until then
    tries = len(hub.dsn.tried)
    assert tries > 5
    for _ in range(4 * 60):
        hub.clock.advance(60)
    assert hub.queue.ids() == []
    assert hub.dsn.sent == [] and len(hub.dsn.tried) == tries + 1
    lines = [formatEvent(e) for e in log_events]
    assert (f"{qid}: giving up on the relayed notice to <{ALICE}> after the queue lifetime: "
            f"it could not be made since the delivery at {schedule.utc_text(delivered)}"
            in lines)


def test_an_entry_that_only_records_known_results_is_taken_while_its_destination_is_busy(
        hub, monkeypatch):
    # max_per_destination = 1.  An entry whose last record could not be
    # written only enters the results it has at its next try, without a
    # delivery: it needs none of its destination's room.  It was passed
    # over while another remote.test delivery ran, its results (a
    # delivery made) left unrecorded until that delivery ended -- a
    # session of minutes, and a crash meanwhile sent the message again
    hub.runner.start()
    first = enqueue_unrecorded(hub, monkeypatch, BOB)
    sessions = hub.agent.hold()
    second = enqueue(hub, BOB)
    assert second in hub.runner.active and len(sessions) == 1
    hub.clock.advance(60)  # the first's next try
    assert hub.queue.read(first) is None  # recorded: delivered, done
    assert [c[0] for c in hub.agent.calls] == [first, second]  # no second copy
    assert hub.runner._open_dests == {second: {"remote.test"}}
    d, rcpts = sessions.pop()
    d.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
    assert hub.queue.ids() == []


@pytest.mark.parametrize("made", [False, True])
def test_an_entry_deleted_while_its_notice_is_tried_is_logged_deleted_and_forgotten(
        hub, log_events, made):
    # `mailhub queue delete` of an entry that only owes a notice, while
    # that notice is being made: the hub's log said nothing of the delete
    # (a notice refused), or that the entry was done (one made), and the
    # runner kept it as due until its next try
    from twisted.logger import formatEvent

    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    assert hub.queue.ids() == [qid] and len(hub.dsn.tried) == 1
    notices = []
    hub.runner.send_dsn = lambda *a: notices.append(defer.Deferred()) or notices[-1]
    hub.clock.advance(60)  # the notice's next try: being made
    assert qid in hub.runner.active and len(notices) == 1
    assert hub.queue.delete(qid)
    hub.clock.advance(1)  # the runner's tick sees the change
    if made:
        notices[0].callback(None)
    else:
        notices[0].errback(OSError(28, "No space left on device"))
    assert qid not in hub.runner.active and qid not in hub.runner.due
    lines = [formatEvent(e) for e in log_events]
    assert [x for x in lines if qid in x and ("deleted" in x or "done" in x)] == [
        f"queue entry {qid} deleted (mailhub queue delete): no more attempts"
        + ("; a notice made meanwhile is sent" if made else ", no notice")]


@pytest.mark.parametrize("kind", ["permanent", "delivered"])
def test_a_notice_that_cannot_be_made_is_given_up_when_its_lifetime_is_over(
        hub, monkeypatch, kind):
    # a notice the spool refuses is tried for a queue lifetime (1d here)
    # from the failure or the delivery, at the schedule's steps; its last
    # try is at that moment, as a message's last attempt is at its
    # deadline.  The message's deadline (a lifetime from its arrival,
    # earlier) took that place, and the notice was given up at the try
    # after: a whole step (4h) late, the message kept in the queue so long
    hub.runner.start()
    hub.dsn.fail = True
    outcome = {"permanent": NO, "delivered": OK}[kind]
    tries = []

    def script(e, d, r):
        tries.append(1)
        if len(tries) < 3:
            return [DeliveryResult(a, "transient", LATER, "mx") for a in r]
        return [DeliveryResult(a, kind, outcome, "mx") for a in r]

    hub.agent.script = script
    qid = enqueue(hub, BOB, notify=("SUCCESS", "FAILURE"))
    hub.clock.advance(60)
    hub.clock.advance(300)  # the third attempt: failed, or delivered
    assert len(tries) == 3
    since = hub.queue.read(qid).recipients[0].last_attempt
    assert since == hub.queue.read(qid).created + 360
    while hub.clock.seconds() < since + 86400 - 60:
        hub.clock.advance(60)
    entry = hub.queue.read(qid)
    assert entry is not None
    # queue list says when the last try comes: at the end of the lifetime
    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(hub.clock.seconds))
    assert admin._next(entry, hub.settings.relay.retry_schedule) == "notice," + schedule.utc_text(
        since + 86400)
    hub.clock.advance(60)
    assert hub.queue.ids() == []
    assert hub.dsn.tried[-1] == since + 86400


def test_an_error_out_of_one_destinations_delivery_waits_for_the_others(hub):
    # an entry for two domains whose delivery to one fails with an error
    # out of the agent (a bug) while the other's session runs: the entry
    # was handled as crashed at once, that session running on outside the
    # runner's count (the entry taken again a minute later, the message
    # sent to the other domain a second time while the first session still
    # ran, its outcome never recorded, a count of it kept for ever)
    hub.runner.start()
    sessions = []

    def script(e, d, r):
        if d == "remote.test":
            raise RuntimeError("the agent failed")
        x = defer.Deferred()
        sessions.append((x, r))
        return x

    hub.agent.script = script
    qid = enqueue(hub, BOB, CAROL)
    assert len(sessions) == 1
    assert qid in hub.runner.active  # the other session still runs
    hub.clock.advance(120)
    assert [c[1] for c in hub.agent.calls] == ["remote.test", "other.test"]
    x, rcpts = sessions.pop()
    x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
    assert qid not in hub.runner.active and not hub.runner._kept
    hub.agent.script = FakeAgent().script
    hub.clock.advance(60)  # retried after a minute: to remote.test only
    assert [c[1] for c in hub.agent.calls] == ["remote.test", "other.test", "remote.test"]
    assert hub.queue.ids() == []


def test_a_notice_that_cannot_be_made_does_not_move_the_pending_recipients_attempts(tmp_path):
    # one recipient refused for good at the first attempt, its failure
    # notice refused by the spool; another still deferred.  The notice is
    # tried with each attempt of the other, whose attempts keep to the
    # schedule as they do when the notice is made at once
    def run(refused: bool) -> tuple[list[int], list[int]]:
        (tmp_path / str(refused)).mkdir()
        hub = make_hub(tmp_path / str(refused))
        try:
            hub.runner.start()
            hub.dsn.fail = refused
            carol = []

            def script(e, d, r):
                if d == "other.test":
                    carol.append(hub.clock.seconds())
                return [DeliveryResult(a, "permanent", NO, "mx") if a == BOB
                        else DeliveryResult(a, "transient", LATER, "mx") for a in r]

            hub.agent.script = script
            enqueue(hub, BOB, CAROL)
            start = hub.clock.seconds()
            for _ in range(26 * 60):
                hub.clock.advance(60)
            return ([round((t - start) / 60) for t in carol],
                    [round((t - start) / 60) for t in hub.dsn.tried])
        finally:
            hub.runner.stop()

    refused, tried = run(True)
    made, _ = run(False)
    assert refused == made
    assert refused[:8] == [0, 1, 6, 21, 51, 111, 231, 240]  # (240: the delayed notice's)
    # the failure notice is tried with each of them (and the delayed one
    # at 240), no more often
    assert [t for t in tried if t < 240] == refused[:7]


def test_mailhub_queue_on_an_entry_that_only_owes_a_notice(hub, monkeypatch):
    # hold keeps its notice from being tried, release and flush try it at
    # the runner's next tick, and queue list gives the try after as the
    # next attempt (each try moving the schedule on)
    hub.runner.start()
    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "permanent", NO, "mx") for a in r]
    qid = enqueue(hub, BOB)
    for _ in range(60):
        hub.clock.advance(60)  # tries at 0, 1, 6, 21, 51 minutes
    assert len(hub.dsn.tried) == 5
    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(hub.clock.seconds))

    def shown():
        # "notice,": the entry only owes its failure notice
        return admin._next(hub.queue.read(qid), hub.settings.relay.retry_schedule)

    assert shown() == "notice," + schedule.utc_text(hub.dsn.tried[-1] + 3600)
    hub.queue.set_held(qid, True)
    hub.clock.advance(4 * 3600)
    assert len(hub.dsn.tried) == 5 and shown() == "notice,held"
    hub.queue.set_held(qid, False)  # mailhub queue release
    hub.clock.advance(1)
    assert len(hub.dsn.tried) == 6
    assert shown() == "notice," + schedule.utc_text(hub.clock.seconds() + 7200)
    hub.queue.request_flush()  # mailhub queue flush
    hub.clock.advance(1)
    assert len(hub.dsn.tried) == 7
    assert shown() == "notice," + schedule.utc_text(hub.clock.seconds() + 14400)
    assert hub.queue.read(qid).attempts == 1  # one delivery attempt: the notices are none


def test_a_start_forgets_the_entries_gone_while_stopped(hub, log_events):
    # entries deleted (or delivered by another hub, which may take the
    # queue once this one stopped) between a stop and the next start of
    # the same runner: the start counted them as queued, a held one for as
    # long as the hub ran, and the others were due until their next try
    from twisted.logger import formatEvent

    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    waiting = enqueue(hub, BOB)
    held = enqueue(hub, CAROL)
    hub.queue.set_held(held, True)
    hub.clock.advance(1)  # the runner sees the hold
    assert held in hub.runner._held and waiting in hub.runner.due
    hub.runner.stop()
    assert hub.queue.delete(waiting) and hub.queue.delete(held)
    kept = enqueue(hub, BOB)
    hub.runner.start()
    lines = [formatEvent(e) for e in log_events]
    assert [x for x in lines if x.startswith("queue runner started")][-1] == (
        "queue runner started with 1 queued message")
    assert set(hub.runner.due) == {kept} and hub.runner._held == set()


def test_an_entry_of_the_last_run_removed_while_stopped_is_forgotten_at_its_end(
        hub, log_events):
    # the last run's attempt, given up by a stop, still ran at the start
    # (a session the stop's abort has not ended yet); its entry was deleted
    # meanwhile.  At its end it stayed due, waiting for room at
    # remote.test behind another entry, until taken and found gone
    from twisted.logger import formatEvent

    hub.runner.start()
    sessions = hub.agent.hold()
    gone = enqueue(hub, BOB)
    hub.runner.stop(grace=0)
    assert gone in hub.runner.active
    assert hub.queue.delete(gone)
    hub.runner.start()
    other = enqueue(hub, BOB)  # taken: waits for the slot the old session holds
    assert other in hub.runner.active and len(sessions) == 1
    x, rcpts = sessions.pop(0)
    x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in rcpts])
    assert len(sessions) == 1  # the other's session, remote.test as busy as it may be
    assert gone not in hub.runner.active and gone not in hub.runner.due
    lines = [formatEvent(e) for e in log_events]
    assert (f"queue entry {gone} deleted (mailhub queue delete): no more attempts, no notice"
            in lines)
    _answer_all(sessions)


def test_a_destination_done_frees_its_slot_while_its_results_are_written(hub, monkeypatch):
    # max_per_destination = 1.  An entry for two domains: its session to
    # remote.test is over while the other still runs, and those results
    # are written at once (a slow disk: the write waits).  The slot and
    # the room of remote.test are another entry's meanwhile: they were
    # held until the write was done, and that entry was not even taken
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB, CAROL)
    assert len(sessions) == 2
    held = hold_record_writes(hub, monkeypatch)
    answer_delivered(sessions, BOB)
    assert len(held) == 1  # remote.test's results being written
    second = enqueue(hub, BOB)
    assert second in hub.runner.active
    assert [c[:2] for c in hub.agent.calls][-1] == (second, "remote.test")
    while held or sessions:
        while held:
            held.pop(0)()
        while sessions:
            x, rcpts = sessions.pop(0)
            x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
    assert hub.queue.ids() == [] and first not in hub.runner.active
    assert hub.store.messages(BOB) == [] and len(hub.agent.calls) == 3


def test_a_session_over_during_a_stop_is_recorded_though_its_slot_goes_at_once(tmp_path):
    # a stop waits for an entry whose session to remote.test runs; its
    # delivery to other.test only connects.  The session ends delivered:
    # its slot goes to an entry the stop gave up (it waited for a slot),
    # which ends at once -- and the stop, looking again then, must still
    # wait for the answer just had to be written, not give that entry up
    # with it (the recipient would get the message again at the next start)
    hub = make_hub(tmp_path, relay='max_concurrent_deliveries = 2\n'
                                   'max_per_destination = 1\nqueue_lifetime = "1d"\n')
    try:
        hub.runner.start()
        sessions = hub.agent.hold()
        first = enqueue(hub, BOB, CAROL)
        waiting = enqueue(hub, Address("dave", "third.test"))
        assert len(sessions) == 2 and waiting in hub.runner.active  # for a slot
        stopped = hub.runner.stop(grace=10)
        assert first not in hub.runner._dropped and waiting in hub.runner._dropped
        hub.agent.resolving.add(first)  # what runs of it now only connects
        answer_delivered(sessions, BOB)
        hub.clock.advance(10)  # the grace over: the rest is given up
        assert stopped.called
        assert hub.queue.read(first).recipient(BOB).state == "delivered"
    finally:
        hub.runner.stop(grace=0)


def test_results_waiting_to_be_written_at_a_stops_end_are_not_sent_again(hub, monkeypatch):
    # both sessions of an entry for two domains end delivered while a
    # slow disk holds the first one's write; the second one's write waits
    # behind it when the stop's grace ends.  The stop gives the entry up:
    # what it delivered but could not write is entered at this runner's
    # next try (as a record that cannot be written is), not sent again by
    # the runner started anew in this process
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB, CAROL)
    assert len(sessions) == 2
    held = hold_record_writes(hub, monkeypatch)
    while sessions:
        x, rcpts = sessions.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
    assert len(held) == 1  # the first write; the other waits for it
    stopped = hub.runner.stop(grace=10)
    hub.clock.advance(10)  # the grace over: the entry is given up
    assert stopped.called
    monkeypatch.undo()
    while held:
        held.pop(0)()
    calls = len(hub.agent.calls)
    hub.runner.start()
    hub.clock.advance(60)
    assert len(hub.agent.calls) == calls  # no copy sent again
    assert hub.queue.ids() == [] or not hub.queue.read(first).pending


def test_a_given_up_write_that_lands_late_does_not_delay_the_rest(hub, monkeypatch):
    # remote.test's session ends delivered and a slow disk holds its
    # write; the stop's grace ends (the entry given up) and other.test's
    # session is cut.  The write lands after all: the runner started anew
    # sends remote.test nothing and tries other.test at once, not at the
    # schedule's next step after a try that only entered bob again
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB, CAROL)
    held = hold_record_writes(hub, monkeypatch)
    answer_delivered(sessions, BOB)
    stopped = hub.runner.stop(grace=10)
    hub.clock.advance(10)
    assert stopped.called
    y, cut = sessions.pop(0)
    y.callback([DeliveryResult(a, "transient", LATER, None) for a in cut])
    monkeypatch.undo()
    while held:
        held.pop(0)()
    assert hub.queue.read(first).recipient(BOB).state == "delivered"
    hub.runner.start()
    assert [c[1] for c in hub.agent.calls] == ["remote.test", "other.test", "other.test"]
    assert hub.queue.read(first).attempts == 0
    _answer_all(sessions)


def test_a_failed_write_given_up_by_a_stop_is_not_sent_again(hub, monkeypatch):
    # remote.test's session ends delivered and its write fails (no
    # descriptor); the stop waits for other.test's session, and its grace
    # ends first.  Bob's copy, known but unwritten, is entered at the next
    # start of this runner, not sent again
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB, CAROL)
    broken = records_cannot_be_written(hub, monkeypatch)
    answer_delivered(sessions, BOB)
    broken[0] = False
    stopped = hub.runner.stop(grace=10)
    hub.clock.advance(10)
    assert stopped.called
    y, cut = sessions.pop(0)
    y.callback([DeliveryResult(a, "transient", LATER, None) for a in cut])
    assert hub.queue.read(first).recipient(BOB).state == "pending"
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    hub.runner.start()
    hub.clock.advance(24 * 3600)
    assert [c[1] for c in hub.agent.calls].count("remote.test") == 1
    assert hub.queue.ids() == []


def _running_counts(runner) -> dict:
    """The runner's counts of entries under way, by table: all empty when
    nothing runs."""
    return {name: getattr(runner, name) for name in (
        "active", "_attempting", "_kept", "_open", "_slot_waits", "_open_dests", "_marks",
        "_dropped", "_semaphores", "_record_locks") if getattr(runner, name)}


@pytest.mark.parametrize("second", [True, False])
def test_an_agent_raising_while_an_attempt_starts_leaves_no_count(hub, second):
    # the agent raises out of a delivery's start (its lookup_in_flight
    # asked for other.test): raised through the runner while the attempt
    # was started, it left a slot wait counted for ever, and the delivery
    # started before it (remote.test) ran on unknown to the runner -- its
    # outcome never recorded (BOB sent again at the retry) and its answer
    # counted as something a stop must wait for, at every later attempt
    sessions = hub.agent.hold()
    armed = [True]

    def lookup_in_flight(dest):
        # (asked when the entry is taken too: then it answers)
        if dest == "other.test" and armed[0] and hub.runner._attempting:
            armed[0] = False
            raise RuntimeError("the agent failed")
        return None

    hub.agent.lookup_in_flight = lookup_in_flight
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL) if second else enqueue(hub, CAROL)
    if second:
        assert len(sessions) == 1
        answer_delivered(sessions, BOB)
    assert _running_counts(hub.runner) == {}  # as if it had never started
    assert hub.runner._global.tokens == hub.runner._global.limit
    entry = hub.queue.read(qid)
    assert [r.state for r in entry.recipients] == (["delivered", "pending"] if second
                                                   else ["pending"])
    # a later delivery is not held back
    other = enqueue(hub, BOB)
    answer_delivered(sessions, BOB)
    assert other not in hub.queue.ids()
    hub.clock.advance(60)  # the retry: CAROL only
    assert hub.agent.calls[-1] == (qid, "other.test", [CAROL])
    assert [c[2] for c in hub.agent.calls].count([BOB]) == 2 if second else 1
    hub.agent.resolving.add(qid)  # only looking up DNS: a stop gives it up at once
    assert hub.runner.stop().called


def test_an_agent_raising_in_a_look_a_delivery_ends_with_loses_no_answer(hub):
    # a destination done while its entry runs on looks at the due entries
    # (its entries passed over go now): the agent raising there (its
    # lookup_in_flight asked about another entry's destination) came out
    # of that delivery as its error -- CAROL's delivery was taken for a
    # failure (sent again at the retry) and the entry handled as crashed
    sessions = hub.agent.hold()
    armed = [False]

    def lookup_in_flight(dest):
        if armed[0] and dest == "remote.test":
            armed[0] = False
            raise RuntimeError("the agent failed")
        return None

    hub.agent.lookup_in_flight = lookup_in_flight
    hub.runner.start()
    first = enqueue(hub, BOB, CAROL)
    second = enqueue(hub, BOB)  # waits: max_per_destination = 1
    armed[0] = True
    answer_delivered(sessions, CAROL)
    assert not armed[0]  # (the agent raised)
    assert hub.queue.read(first).recipient(CAROL).state == "delivered"
    answer_delivered(sessions, BOB)
    assert first not in hub.queue.ids()
    answer_delivered(sessions, BOB)  # the second entry's turn
    assert hub.queue.ids() == [] and second not in hub.runner.active
    assert [c[2] for c in hub.agent.calls] == [[BOB], [CAROL], [BOB]]
    assert _running_counts(hub.runner) == {}


def test_a_router_raising_while_an_attempt_starts_leaves_no_count(hub, monkeypatch):
    # the router asked about each recipient as the attempt groups them:
    # one raising for the second recipient fails the attempt before any
    # delivery starts, and nothing of it may stay counted (the entry is
    # retried a minute later, a stop does not wait for it)
    real = hub.components.router.is_local_domain
    failing = [False]

    def is_local_domain(domain):
        if failing[0] and domain == "other.test":
            raise RuntimeError("the router failed")
        return real(domain)

    monkeypatch.setattr(hub.components.router, "is_local_domain", is_local_domain)
    hub.runner.start()
    failing[0] = True
    qid = enqueue(hub, BOB, CAROL)
    assert hub.agent.calls == [] and hub.queue.ids() == [qid]
    assert _running_counts(hub.runner) == {}
    failing[0] = False
    hub.clock.advance(60)
    assert hub.queue.ids() == [] and _running_counts(hub.runner) == {}
    assert [c[2] for c in hub.agent.calls] == [[BOB], [CAROL]]


NO_ANSWER = LocalReply.of(451, "4.4.1", "connection to mx.remote.test[192.0.2.1]:25 failed: "
                          "timed out")


def _unreachable(rcpts):
    return [DeliveryResult(a, "transient", NO_ANSWER, unreachable=True) for a in rcpts]


def _feedback_lines(log_events):
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in log_events
            if "no host answered" in (e.get("log_format") or "")
            or "a host answered again" in (e.get("log_format") or "")]


def test_a_destination_none_of_whose_hosts_answers_gets_one_delivery_at_a_time(
        tmp_path, log_events):
    # every slot of the hub may go to one destination (max_per_destination
    # = max_concurrent_deliveries): once its deliveries find no host that
    # answers, each would hold a slot for a whole connect timeout, pass
    # after pass, and every other domain's mail waited.  One at a time to
    # it then, until one connects; the others keep their due times
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        bobs = [enqueue(hub, BOB) for _ in range(4)]
        assert len(pending) == 4  # nothing known yet: four at once
        _answer_all(pending, _unreachable)
        assert _feedback_lines(log_events) == [
            "remote.test: no host answered (connections refused or timed out): one delivery "
            "at a time to it until one connects"]
        assert all(hub.queue.read(q).next_attempt == hub.clock.seconds() + 60 for q in bobs)
        hub.clock.advance(60)  # each due again: one taken, the others wait unslotted
        assert len(pending) == 1 and len(hub.runner.active) == 1
        carol = enqueue(hub, CAROL)  # another domain has a slot at once
        assert [c[1] for c in hub.agent.calls[-2:]] == ["remote.test", "other.test"]
        x, r = pending.pop(1)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert carol not in hub.queue.ids()
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # still none answers: the next one, alone
        assert len(pending) == 1 and len(hub.runner.active) == 1
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "transient", LATER, "mx") for a in r])  # one answered
        assert len(pending) == 2  # the two left go at once
        assert len(_feedback_lines(log_events)) == 2  # one line each way, not one per entry
        assert _feedback_lines(log_events)[1] == (
            "remote.test: a host answered again: up to 4 deliveries at a time to it")
        _answer_all(pending, lambda r: [DeliveryResult(a, "transient", LATER, "mx") for a in r])
        # each tried once more, its retry schedule as ever (second failure: 5 min)
        for q in bobs:
            e = hub.queue.read(q)
            assert e.attempts == 2 and e.next_attempt == hub.clock.seconds() + 300
    finally:
        hub.runner.stop()


def test_an_entry_taken_for_another_destination_waits_its_turn_at_a_failing_one(tmp_path):
    # an entry for the failing destination and another is taken for the
    # other's room: its delivery to the failing one waits for the one
    # under way there, without a slot, and goes when that one is over
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        enqueue(hub, BOB)
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # marked failing
        hub.clock.advance(60)
        assert [c[1] for c in hub.agent.calls] == ["remote.test"] * 2
        both = enqueue(hub, BOB, CAROL)
        # its other.test delivery runs; its remote.test one waits its turn
        assert [c[1] for c in hub.agent.calls[2:]] == ["other.test"]
        assert hub.runner._slot_waits == {both: 1}
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # the turn is over: the next one's
        assert [c[1] for c in hub.agent.calls[2:]] == ["other.test", "remote.test"]
        x, r = pending.pop(1)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert both not in hub.queue.ids()
        assert not hub.runner._failing and not hub.runner._failing._turns
    finally:
        hub.runner.stop()


def _sessions_by_destination(hub):
    """The agent's deliveries held by ``(queue id, destination)``, and an
    answer for each: ``unreachable`` (no host answered) or delivered."""
    sessions: dict[tuple[str, str], tuple[defer.Deferred, list]] = {}

    def script(e, dest, rcpts):
        d = defer.Deferred()
        sessions[(e.id, dest)] = (d, list(rcpts))
        return d

    def answer(qid, dest, how="delivered"):
        d, rcpts = sessions.pop((qid, dest))
        d.callback(_unreachable(rcpts) if how == "unreachable"
                   else [DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])

    hub.agent.script = script
    return sessions, answer


def _remote_failing(tmp_path, max_per_destination):
    """A hub whose runner runs (``max_concurrent_deliveries = 4``), with
    remote.test marked failing by a first entry's delivery that reached no
    host: the hub, the sessions by destination, their answer and that
    first entry."""
    hub = make_hub(tmp_path, f"max_per_destination = {max_per_destination}\n"
                             "max_concurrent_deliveries = 4\n")
    sessions, answer = _sessions_by_destination(hub)
    hub.runner.start()
    first = enqueue(hub, BOB)
    answer(first, "remote.test", "unreachable")  # marked failing
    return hub, sessions, answer, first


def test_an_entry_for_a_failing_destination_alone_waits_one_turn_not_every_list_entry(
        tmp_path):
    # a failing destination has one delivery at a time; a mailing list's
    # messages (a member there, the others elsewhere) are taken for their
    # other domains' room, and their deliveries to it queue for its turn.
    # A message for it alone was passed over for as long as any of them
    # was taken with it open: with list mail due at each turn, it never
    # went (each turn a connect timeout; up to 2 x max_concurrent_deliveries
    # list messages queued ahead of it at once).  It goes at the next turn
    hub, sessions, answer, first = _remote_failing(tmp_path, 4)
    try:
        hub.clock.advance(60)  # its retry has the turn
        lists = [enqueue(hub, BOB, CAROL)]
        answer(lists[0], "other.test")  # its remote.test delivery waits for the turn
        single = enqueue(hub, BOB)  # due now, behind the turn under way
        singles = [single]
        turns = []  # whose delivery to remote.test has the turn, in order
        for n in range(8):
            (holder,) = [q for q, d in sessions if d == "remote.test"]
            turns.append(holder)
            if n == 3:
                singles.append(enqueue(hub, BOB))  # another one for it alone
            lists.append(enqueue(hub, BOB, CAROL))  # list mail keeps coming
            answer(lists[-1], "other.test")
            answer(holder, "remote.test", "unreachable")
        # the turn alternates: the one for remote.test alone waits for the
        # turn under way and one list entry's at most (it was due while
        # the first one had the turn: taken at its end, the list entry
        # waiting has the turn), not for every list entry; then the list
        # entries go on in turn, and the second one alone is next after
        # the turn under way when it came
        assert turns == [first, lists[0], single, lists[1], singles[1], *lists[2:5]], turns
        # nothing made twice: each of them one delivery to remote.test
        calls = [c[0] for c in hub.agent.calls if c[1] == "remote.test"]
        assert len(calls) == len(set(calls)) + 1  # (the first one's two tries)
        while sessions:  # (each answer hands the turn on)
            answer(*next(iter(sessions)), "unreachable")
        for q in lists + singles:  # each tried once, its retry a minute later as ever
            e = hub.queue.read(q)
            assert [p.address for p in e.pending] == [BOB]
            assert e.attempts == 1 and e.next_attempt == hub.clock.seconds() + 60
        assert not hub.runner.active and not hub.runner._failing._turns
    finally:
        hub.runner.stop()


def test_entries_for_two_failing_destinations_alone_are_taken_one_at_a_time(tmp_path):
    # an entry for two failing destinations and nothing else is taken for
    # their room: it is counted at both, and the others like it wait
    # untaken for the one turn there is, holding no room (counted at
    # neither, each was taken to wait for the turns, up to the look's room)
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    hub.agent.script = lambda e, d, r: _unreachable(r)
    hub.runner.start()
    try:
        enqueue(hub, BOB)
        enqueue(hub, CAROL)
        assert "remote.test" in hub.runner._failing and "other.test" in hub.runner._failing
        pending = hub.agent.hold()
        both = [enqueue(hub, BOB, CAROL) for _ in range(3)]
        assert set(hub.runner.active) == {both[0]} and len(pending) == 2
        hub.clock.advance(1)
        assert set(hub.runner.active) == {both[0]}
        _answer_all(pending, _unreachable)  # one after the other, each in turn
        assert not hub.runner.active and not hub.runner._failing._turns
        assert [c[0] for c in hub.agent.calls[2:]] == [q for q in both for _ in range(2)]
    finally:
        hub.runner.stop()


def test_a_start_forgets_the_failing_destinations(hub):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: _unreachable(r)
    enqueue(hub, BOB)
    assert "remote.test" in hub.runner._failing
    hub.runner.stop()
    hub.runner.start()  # as the agent's memory of them: tried afresh
    assert "remote.test" not in hub.runner._failing


def test_a_delivery_that_waited_for_a_slot_as_its_destination_failed_waits_its_turn(
        tmp_path):
    # taken before its destination was marked failing, it waited for a
    # hub slot; given one while another delivery to that destination has
    # the turn, it gives the slot back and waits for its own turn (it was
    # a second delivery to the destination at once)
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 2\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        first, carol, third, fourth = (enqueue(hub, BOB), enqueue(hub, CAROL),
                                       enqueue(hub, BOB), enqueue(hub, BOB))
        assert [c[0] for c in hub.agent.calls] == [first, carol]  # the two slots
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # marked failing; its slot to the third
        assert [c[0] for c in hub.agent.calls[2:]] == [third]
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])  # carol's slot
        assert [c[0] for c in hub.agent.calls[2:]] == [third]  # the fourth waits its turn
        assert hub.runner._slot_waits == {fourth: 1}
        x, r = pending.pop(0)
        x.callback(_unreachable(r))
        assert [c[0] for c in hub.agent.calls[2:]] == [third, fourth]
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert set(hub.queue.ids()) == {first, third}  # deferred: retried later
        assert not hub.runner._failing and not hub.runner._failing._turns
        assert hub.runner._global.tokens == 2
    finally:
        hub.runner.stop()


def test_a_turn_held_across_a_recovery_is_still_the_turn_when_marked_again(tmp_path):
    # a delivery given the turn at a failing destination waits for a hub
    # slot; a host answers another delivery (the destination recovers),
    # and a third finds none again (marked anew) before that one has its
    # slot: it still holds the one turn there is, or it and a delivery
    # woken by the recovery both went at once to a destination whose
    # hosts answer nothing
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 3\n")
    sessions: dict[tuple[str, str], defer.Deferred] = {}

    def script(e, dest, rcpts):
        d = sessions[(e.id, dest)] = defer.Deferred()
        return d

    def answer(qid, dest, how):
        d = sessions.pop((qid, dest))
        rcpts = [BOB] if dest == "remote.test" else [CAROL]
        if how == "unreachable":
            d.callback(_unreachable(rcpts))
        else:
            d.callback([DeliveryResult(a, "transient", LATER, "mx") for a in rcpts])

    hub.agent.script = script
    hub.runner.start()
    try:
        b1, b2, b3 = (enqueue(hub, BOB) for _ in range(3))  # the three slots
        answer(b1, "remote.test", "unreachable")  # marked failing
        c1 = enqueue(hub, CAROL)  # the free slot
        c2 = enqueue(hub, CAROL)  # waits for a slot
        x = enqueue(hub, BOB, CAROL)  # its remote.test delivery: the turn, no slot yet
        y = enqueue(hub, BOB, CAROL)  # its remote.test delivery: waits its turn
        assert set(sessions) == {(b2, "remote.test"), (b3, "remote.test"),
                                 (c1, "other.test")}
        answer(b2, "remote.test", "answered")  # a host answered: not failing
        assert "remote.test" not in hub.runner._failing
        answer(b3, "remote.test", "unreachable")  # marked again
        assert "remote.test" in hub.runner._failing
        answer(c1, "other.test", "answered")
        answer(c2, "other.test", "answered")
        for key in [k for k in sessions if k[1] == "other.test"]:
            answer(key[0], "other.test", "answered")
        remote = [k for k in sessions if k[1] == "remote.test"]
        assert len(remote) == 1, remote  # one delivery at a time to it
        assert remote == [(x, "remote.test")]
        answer(x, "remote.test", "unreachable")
        assert [k for k in sessions if k[1] == "remote.test"] == [(y, "remote.test")]
        answer(y, "remote.test", "unreachable")
        assert not hub.runner._failing._turns and hub.runner._global.tokens == 3
    finally:
        hub.runner.stop()


def test_a_delivery_a_stop_gave_up_says_nothing_of_its_destination_after_a_start(hub):
    # a start forgets the failing destinations, to try each afresh (as
    # the agent's memory of them); a delivery of the last run that ends
    # after it (the agent's remembered deferral comes a reactor turn
    # later) is no word of this run's: it must not mark its destination
    pending = hub.agent.hold()
    hub.runner.start()
    enqueue(hub, BOB)
    hub.runner.stop()
    hub.runner.start()
    x, r = pending.pop(0)
    x.callback(_unreachable(r))
    assert "remote.test" not in hub.runner._failing
    _answer_all(pending)  # this run's attempt
    hub.runner.stop()


@pytest.mark.parametrize("how", ["hold", "delete"])
def test_an_entry_held_or_deleted_while_it_waits_for_its_turn_is_not_delivered(tmp_path, how):
    # its delivery to a failing destination waits for the one under way
    # there; `mailhub queue hold` (or delete) meanwhile: when the turn
    # comes it is not made (before, the message went all the same)
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        enqueue(hub, BOB)
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # marked failing
        hub.clock.advance(60)  # its retry has the turn
        both = enqueue(hub, BOB, CAROL)  # its remote.test delivery waits for the turn
        assert hub.runner._slot_waits == {both: 1}
        if how == "hold":
            hub.queue.set_held(both, True)
        else:
            assert hub.queue.delete(both)
        hub.clock.advance(1)  # the runner's look at the queue finds the change
        x, r = pending.pop(0)
        x.callback(_unreachable(r))  # the turn is over: the waiting one's
        assert [c[0] for c in hub.agent.calls if c[1] == "remote.test"].count(both) == 0
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])  # other.test's
        assert both not in hub.runner.active
        if how == "hold":
            e = hub.queue.read(both)
            assert e.held and [p.address for p in e.pending] == [BOB]
        else:
            assert both not in hub.queue.ids()
        assert not hub.runner._failing._turns or "remote.test" not in hub.runner._failing._turns
    finally:
        hub.runner.stop()


def test_an_entry_held_while_it_waits_for_a_slot_is_not_delivered(tmp_path):
    # the hub's one slot is busy; the entry taken meanwhile waits for it,
    # is held, and is not delivered when the slot comes: it stays as the
    # hold left it, no attempt counted
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 1\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        carol = enqueue(hub, CAROL)
        bob = enqueue(hub, BOB)
        assert [c[0] for c in hub.agent.calls] == [carol]
        assert hub.runner._slot_waits == {bob: 1}
        hub.queue.set_held(bob, True)
        hub.clock.advance(1)
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        assert [c[0] for c in hub.agent.calls] == [carol]
        assert bob not in hub.runner.active and hub.runner._global.tokens == 1
        e = hub.queue.read(bob)
        assert e.held and e.attempts == 0 and e.notice_tries == 0
        hub.queue.set_held(bob, False)  # released: delivered then
        hub.clock.advance(1)
        assert [c[0] for c in hub.agent.calls] == [carol, bob]
        _answer_all(pending)
    finally:
        hub.runner.stop()


def test_an_agent_that_always_raises_in_a_look_for_one_destination_stalls_no_other(hub):
    # the agent raising each time it is asked about one destination's
    # lookup (a bug of its own, for that domain alone): each look at the
    # due entries stopped at the first entry for it, and every entry due
    # after it waited for ever (one traceback a second) -- one entry's
    # error must not stall the others.  It is taken, and its attempt
    # meets the error where an entry's errors are handled: retried later
    def lookup_in_flight(dest):
        if dest == "other.test":
            raise RuntimeError("the agent failed")
        return None

    hub.agent.lookup_in_flight = lookup_in_flight
    hub.runner.start()
    bad = enqueue(hub, CAROL)
    good = enqueue(hub, BOB)
    assert good not in hub.queue.ids()  # delivered at once
    assert hub.queue.ids() == [bad] and _running_counts(hub.runner) == {}
    hub.clock.advance(3600)
    assert good not in hub.queue.ids() and hub.queue.ids() == [bad]
    assert [c[2] for c in hub.agent.calls] == [[BOB]]


@pytest.mark.parametrize("outcome", ["transient", "delivered"])
def test_a_record_written_after_a_stop_gave_it_up_is_known_to_the_next_start(
        hub, monkeypatch, outcome):
    # the attempt's record waits for a slow disk; a stop gives the entry
    # up meanwhile, and a start reads the queue before that write lands.
    # What it wrote was known to no one then: the runner took the entry
    # again at once as the old record said (a deferred recipient tried
    # again a minute early), or kept one delivered and removed since as
    # due (here until its next look: the clock set back a second)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [DeliveryResult(
        a, outcome, LATER if outcome == "transient" else OK, "mx") for a in r]
    held = hold_record_writes(hub, monkeypatch)
    qid = enqueue(hub, BOB)
    assert len(held) == 1 and len(hub.agent.calls) == 1  # the final record, waiting
    assert hub.runner.stop(grace=0).called
    hub.clock.rightNow -= 1
    hub.runner.start()
    held.pop(0)()  # it lands
    assert qid not in hub.runner.active
    if outcome == "transient":
        assert hub.runner.due[qid] == hub.clock.seconds() + 60  # the retry, as written
        hub.clock.advance(59)
        assert len(hub.agent.calls) == 1  # not before the minute
    else:
        assert hub.queue.ids() == [] and qid not in hub.runner.due


def test_an_entry_held_as_it_waits_and_released_before_its_record_counts_no_attempt(tmp_path):
    # held while it waits for the hub's one slot: not delivered when the
    # slot comes; released just before its end is written (the window
    # between the slot and the record): no attempt was made, so none is
    # counted, nor a notice pass, and it is due at once
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 1\n")
    pending = hub.agent.hold()
    hub.runner.start()
    try:
        carol = enqueue(hub, CAROL)
        bob = enqueue(hub, BOB)
        hub.queue.set_held(bob, True)
        hub.clock.advance(1)  # the runner's look at the queue finds the hold
        update = hub.queue.update

        written = []

        def released_first(qid, change):
            if qid == bob and not written:
                hub.queue.set_held(bob, False)
                return update(qid, change).addCallback(written.append)
            return update(qid, change)

        hub.queue.update = released_first
        x, r = pending.pop(0)
        x.callback([DeliveryResult(a, "delivered", OK, "mx") for a in r])
        hub.queue.update = update
        [e] = written
        assert not e.held and e.attempts == 0 and e.notice_tries == 0
        assert e.next_attempt <= hub.clock.seconds()
        hub.clock.advance(1)
        assert [c[0] for c in hub.agent.calls] == [carol, bob]
        _answer_all(pending)
    finally:
        hub.runner.stop()


def test_an_entrys_last_destination_done_offers_its_room_while_its_record_is_written(
        hub, monkeypatch):
    # max_per_destination = 1.  The only session of one entry ends while
    # a slow disk holds its record's write; the other entry for the same
    # destination, passed over while that session ran, starts at once,
    # not at the runner's next look a second later
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB)
    second = enqueue(hub, BOB)
    assert second not in hub.runner.active and len(sessions) == 1
    held = hold_record_writes(hub, monkeypatch)
    answer_delivered(sessions, BOB)
    assert held and first in hub.runner.active  # its record being written
    assert second in hub.runner.active
    assert [c[:2] for c in hub.agent.calls][-1] == (second, "remote.test")
    while held or sessions:
        while held:
            held.pop(0)()
        _answer_all(sessions)
    assert hub.queue.ids() == [] and len(hub.agent.calls) == 2


def test_a_look_passes_a_full_destinations_backlog_over_at_once(hub, monkeypatch):
    # max_per_destination = 1.  Twenty entries wait for remote.test,
    # whose one session runs: a look (every second, and at many events)
    # asks about two of them, not each -- with a backlog of many
    # thousands (a domain down for a day) each look took a fifth of a
    # second.  One whose try only enters its results still goes
    hub.runner.start()
    sessions = hub.agent.hold()
    first = enqueue(hub, BOB)
    waiting = [enqueue(hub, BOB) for _ in range(20)]
    assert len(sessions) == 1 and not set(waiting) & set(hub.runner.active)
    asked = []

    class Asked(type(hub.runner._destinations)):  # each entry's destinations asked for
        def get(self, *a):
            asked.append(a[0])
            return super().get(*a)

    monkeypatch.setattr(hub.runner, "_destinations", Asked(hub.runner._destinations))
    hub.runner.due[first] = hub.runner.due[first]  # (a change: the look starts afresh)
    hub.runner.kick()
    asked.clear()
    hub.runner.kick()
    assert len(asked) <= 2 and first in hub.runner.active
    hub.runner._unrecorded[waiting[-1]] = []  # (as a failed write leaves it)
    asked.clear()
    hub.runner.kick()
    assert waiting[-1] in hub.runner.active and len(asked) <= 4
    monkeypatch.undo()
    _answer_all(sessions)
    hub.clock.advance(60)
    _answer_all(sessions)
    assert hub.queue.ids() == []


def test_a_look_takes_an_entry_one_of_whose_destinations_has_room_behind_one_that_is_full(
        tmp_path):
    # max_per_destination = 3.  remote.test has its three sessions all
    # along; entries for bob and carol (a group of two destinations) that
    # come due at once when other.test has room for three are taken while
    # it has room, not passed over as a group once remote.test alone is
    # found full
    hub = make_hub(tmp_path, relay='max_per_destination = 3\nqueue_lifetime = "1d"\n')
    try:
        hub.runner.start()
        sessions = hub.agent.hold()
        firsts = [enqueue(hub, BOB) for _ in range(3)]
        carols = [enqueue(hub, CAROL) for _ in range(3)]
        both = [enqueue(hub, BOB, CAROL) for _ in range(4)]
        assert set(hub.runner.active) == {*firsts, *carols}
        for qid in both:
            hub.runner.due[qid] = hub.clock.seconds() + 10
        for _ in carols:
            answer_delivered(sessions, CAROL)
        assert set(hub.runner.active) == set(firsts)
        hub.clock.advance(10)
        assert set(hub.runner.active) == {*firsts, *both[:3]}
        _answer_all(sessions)
        assert hub.queue.ids() == []
    finally:
        hub.runner.stop()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e300", "-1e300"])
def test_a_failure_time_edited_to_no_number_is_taken_as_now_not_kept_for_ever(
        hub, log_events, value):
    # a hand-edited record with "failed_at": NaN (json reads it, and inf):
    # no time is ever a queue lifetime past it, so a notice the spool
    # refuses was tried for ever.  It is taken as the time the runner
    # reads it (the notice keeps a whole lifetime of tries, the message is
    # not dropped), written back so, and said in one line
    from twisted.logger import formatEvent

    from txmailhub.relay.record import FAILED

    hub.dsn.fail = True
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)

    def failed(e):
        [r] = e.recipients
        return e.with_recipients({BOB: dataclasses.replace(
            r, state=FAILED, attempts=1, last_attempt=e.created, failed_at=1.0)})

    hub.queue.update_now(qid, failed)
    path = hub.queue.record_path(qid)
    raw = open(path, "rb").read()
    assert b'"failed_at": 1.0' in raw
    with open(path, "wb") as f:
        f.write(raw.replace(b'"failed_at": 1.0', b'"failed_at": ' + value.encode()))
    hub.clock.advance(3600)
    mended = hub.clock.seconds()
    with next_runner(hub):
        hub.clock.advance(1)
        assert hub.queue.read(qid).recipients[0].failed_at == mended
        while hub.clock.seconds() < mended + 86400 - 60:
            hub.clock.advance(60)
        assert hub.queue.ids() == [qid]  # tried for a lifetime from then
        hub.clock.advance(3 * 3600)
        assert hub.queue.ids() == []  # and given up then, not tried for ever
    lines = [formatEvent(e) for e in log_events if "not a time" in formatEvent(e)]
    assert lines == [f"{qid}: the record's failed_at of {BOB} is not a time "
                     f"({float(value)!r}); "
                     f"taken as now, {schedule.utc_text(mended)}"]


def _edit_record_time(hub, qid, field, value):
    """The record of ``qid`` with ``field`` (a time of the entry) set to
    ``value`` (the text JSON reads: ``NaN``, ``Infinity``), as by hand."""
    path = hub.queue.record_path(qid)
    raw = open(path, "rb").read()
    raw, count = re.subn(rb'"' + field.encode() + rb'": [-0-9.e+]+',
                         b'"' + field.encode() + b'": ' + value.encode(), raw)
    assert count == 1
    with open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e300", "-1e300",
                                   "253402300800"])
def test_a_queued_time_edited_to_no_number_is_taken_as_now_not_kept_for_ever(
        hub, log_events, value):
    # "created": NaN (or Infinity) in a hand-edited record: no time is ever
    # a queue lifetime past it, so a message no host takes was retried for
    # ever and its sender never told; from -Infinity it was given up at its
    # first failed try.  So from a number no date can be (1e300, or the
    # first second of the year 10000: past what a datetime holds), which
    # was kept as it was.  Taken as the time the runner reads it, written
    # back so, and said in one line
    from twisted.logger import formatEvent

    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    _edit_record_time(hub, qid, "created", value)
    hub.clock.advance(3600)
    mended = hub.clock.seconds()
    hub.runner.start()
    entry = hub.queue.read(qid)
    assert entry.recipients[0].attempts == 1
    assert entry.created == mended
    assert hub.dsn.sent == []  # not given up at its first try
    while hub.clock.seconds() < mended + 86400 - 3600:
        hub.clock.advance(600)
    assert hub.queue.ids() == [qid]  # retried for a lifetime from then
    hub.clock.advance(3 * 3600)
    assert hub.queue.ids() == []  # and given up then, its sender told
    actions = [b"Action: failed" in data for _envelope, data in hub.dsn.sent]
    assert actions == [False, True]  # the delay warning (4 hours on), the failure
    lines = [formatEvent(e) for e in log_events if "not a time" in formatEvent(e)]
    assert lines == [f"{qid}: the record's created is not a time ({float(value)!r}); "
                     f"taken as now, {schedule.utc_text(mended)}"]


def test_a_retry_time_edited_to_nan_is_due_at_once_not_never(hub, monkeypatch):
    # "next_attempt": NaN: a due time no clock reaches (every comparison
    # with NaN is false), so the entry was never tried again, and queue
    # list showed "nan"; it is due now, as an infinity in the past is
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    qid = enqueue(hub, BOB)
    _edit_record_time(hub, qid, "next_attempt", "NaN")
    hub.clock.advance(60)
    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(hub.clock.seconds))
    entry = hub.queue.read(qid)
    assert admin._next(entry, hub.settings.relay.retry_schedule) == schedule.utc_text(
        hub.clock.seconds())
    hub.runner.start()
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 1
    assert hub.queue.read(qid).next_attempt == hub.clock.seconds() - 1 + 60


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e300"])
def test_a_local_copy_of_a_message_whose_queued_time_is_no_number_is_delivered(
        tmp_path, value):
    # the Maildir name of a queued local copy is made from the record's
    # created (the key that keeps a crash from delivering it twice): from
    # NaN or an infinity none could be made, the attempt failed at each
    # try and the time was never mended (only a recorded pass mends it).
    # Mended and written before the attempt: one copy, under the mended time
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    h.components.store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    qid = enqueue(h, joe)
    _edit_record_time(h, qid, "created", value)
    h.clock.advance(60)
    mended = h.clock.seconds()
    h.runner.start()
    try:
        h.clock.advance(1)
    finally:
        h.runner.stop()
    assert h.queue.ids() == []
    (name,) = os.listdir(tmp_path / "mail" / "example.org" / "joe" / "new")
    assert name.startswith(f"{int(mended)}.M0K{qid}.")


def test_a_destination_an_entry_no_longer_has_is_room_for_another_at_once(hub):
    # an entry whose handling failed (the agent raised for remote.test)
    # after its other.test recipient was delivered is retried with the
    # destinations the runner knew of it, both: taken, it counted at
    # other.test, and an entry for other.test due with it was passed over
    # -- then its attempt found only remote.test to go to, and that room
    # was for no one until the next tick (a second, or a look at another
    # event)
    def script(e, dest, rcpts):
        if dest == "remote.test":
            raise RuntimeError("the agent failed as the delivery started")
        reply = OK if any(p.address == BOB for p in e.pending) else LATER
        return [DeliveryResult(a, "delivered" if reply is OK else "transient", reply, "mx")
                for a in rcpts]

    hub.agent.script = script
    hub.runner.start()
    first = enqueue(hub, BOB, CAROL)  # other.test delivered; retried in a minute
    other = enqueue(hub, CAROL)  # greylisted: retried in a minute too
    assert not hub.runner.active
    assert [p.address for p in hub.queue.read(first).pending] == [BOB]
    assert hub.runner.due[first] == hub.runner.due[other]
    pending = hub.agent.hold()
    hub.clock.advance(60)
    assert set(hub.runner.active) == {first, other}  # at this look, not the next
    assert [r for _d, r in pending] == [[BOB], [CAROL]]
    _answer_all(pending)
    assert hub.queue.ids() == []


def _mend_write_held(h, monkeypatch):
    """``h``'s queue with its next record update (the mend of a time that
    is no number, written before the attempt) held until the returned
    function is called; the updates after it go through."""
    real = h.queue.update
    held: list = []

    def update(qid, change):
        if held:
            return real(qid, change)
        d = defer.Deferred()
        held.append(lambda: real(qid, change).chainDeferred(d))
        return d

    monkeypatch.setattr(h.queue, "update", update)
    return lambda: held[0]()


def test_an_entry_held_while_its_queued_time_is_mended_is_not_delivered(
        hub, monkeypatch):
    # the mend is written before the attempt, the entry's record read
    # again: a `mailhub queue hold` that landed meanwhile is in the entry
    # the attempt is made from, and a held entry is not delivered (it was,
    # locally, the copy made with the hold in the runner's hands)
    qid = enqueue(hub, LOCAL)
    _edit_record_time(hub, qid, "created", "NaN")
    release = _mend_write_held(hub, monkeypatch)
    hub.runner.start()
    assert qid in hub.runner.active  # its mend being written
    hub.queue.set_held(qid, True)
    release()
    assert hub.store.messages(LOCAL) == []
    entry = hub.queue.read(qid)
    assert entry.held and entry.created == hub.clock.seconds()
    assert qid in hub.runner._held and qid not in hub.runner.due
    hub.queue.set_held(qid, False)
    hub.runner._rescan()
    hub.clock.advance(1)
    assert len(hub.store.messages(LOCAL)) == 1 and hub.queue.ids() == []


def test_a_stop_while_a_queued_time_is_mended_starts_no_delivery(tmp_path, monkeypatch):
    # a stop begun while the mend is written (the entry taken before it):
    # the entry is not tried after the stop began, the stop is over once
    # the mend is written, and the next start delivers it once
    h = make_hub(tmp_path)
    qid = enqueue(h, LOCAL, BOB)
    _edit_record_time(h, qid, "created", "NaN")
    release = _mend_write_held(h, monkeypatch)
    h.runner.start()
    stopped = h.runner.stop()
    assert not stopped.called  # it waits for the write
    release()
    assert stopped.called
    assert h.store.messages(LOCAL) == [] and h.agent.calls == []
    assert h.queue.read(qid).created == h.clock.seconds()
    h.runner.start()
    try:
        h.clock.advance(1)
    finally:
        h.runner.stop()
    assert len(h.store.messages(LOCAL)) == 1 and len(h.agent.calls) == 1
    assert h.queue.ids() == []


def test_a_local_copy_made_under_a_mended_queued_time_is_not_made_again_after_a_crash(
        tmp_path, monkeypatch):
    # the mend of created is written before the attempt; the hub killed
    # after the local copy was made, before its record was written: the
    # restart (an hour later, another "now") reads the mended time and makes
    # the copy's key from it again, so the store sees the copy is there
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    h = make_hub(tmp_path)
    h.components.store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    qid = enqueue(h, LOCAL)
    _edit_record_time(h, qid, "created", "NaN")
    real = h.queue.update
    writes = []

    def crash_after_the_mend(q, change):
        writes.append(q)
        if len(writes) == 1:
            return real(q, change)  # the mend
        raise OSError(5, "the hub was killed while writing the record")

    monkeypatch.setattr(h.queue, "update", crash_after_the_mend)
    h.runner.start()
    h.runner.stop()
    new = tmp_path / "mail" / "example.org" / "joe" / "new"
    # (the mend, the outcome, and the stop's last try of the outcome)
    assert len(os.listdir(new)) == 1 and len(writes) == 3
    mended = h.queue.read(qid).created
    assert mended == h.clock.seconds() and h.queue.read(qid).pending

    monkeypatch.undo()
    h.clock.advance(3600)
    queue = OutboundQueue(h.settings.queue_dir, h.clock)
    h.components.queue = queue
    with next_runner(h, queue):
        h.clock.advance(1)
    assert queue.ids() == []
    assert len(os.listdir(new)) == 1, os.listdir(new)


def test_an_entry_given_up_later_while_it_waits_for_a_slot_is_named_so(
        tmp_path, monkeypatch, log_events):
    # an entry the stop waited for (its local copy being made) whose other
    # destination waits for a free slot: once the copy is recorded it is
    # given up, and the line says what it waited for, as the stop's first
    # and last lines do (it said "the rest only looks up DNS or connects")
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 1\n")
    copied = _local_copy_held(hub, monkeypatch)
    hub.runner.start()
    sessions = hub.agent.hold()
    enqueue(hub, Address("x", "a.test"))  # in its session: the one slot
    both = enqueue(hub, LOCAL, Address("x", "b.test"))
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 1 and hub.runner._waits_for_a_slot(both) is False
    stopped = hub.runner.stop(grace=10)
    copied.callback({LOCAL: None})
    assert hub.queue.read(both).recipient(LOCAL).state == "delivered"
    assert [x for x in _stop_lines(log_events) if "more" in x] == [
        "stopping: 1 more delivery attempt given up (what they had to record is recorded; "
        "the rest waits for a free slot (max_per_destination, max_concurrent_deliveries)), "
        "retried at the next start"]
    _answer_all(sessions)
    assert stopped.called
    assert len(hub.agent.calls) == 1  # b.test: never begun


def test_an_entry_taken_beyond_a_failing_destinations_room_counts_there_once_it_recovers(
        tmp_path):
    # an entry taken for another destination's room while remote.test was
    # failing is not counted there (it waits for the turn); once remote.test
    # answers again its delivery there runs and holds the room like any
    # other: an entry for remote.test alone waits untaken for it
    hub, sessions, answer, first = _remote_failing(tmp_path, 1)
    try:
        hub.clock.advance(60)  # its retry has the turn
        both = enqueue(hub, BOB, CAROL)  # taken for other.test's room
        assert hub.runner._entries[both].beyond == {"remote.test"}
        answer(both, "other.test")
        answer(first, "remote.test")  # it answers again: no longer failing
        assert "remote.test" not in hub.runner._failing
        assert set(sessions) == {(both, "remote.test")}  # its delivery there runs
        single = enqueue(hub, BOB)
        hub.clock.advance(1)
        assert set(hub.runner.active) == {both}  # no room for it: not taken
        answer(both, "remote.test")
        assert set(sessions) == {(single, "remote.test")}
        answer(single, "remote.test")
        assert not hub.runner.active and not hub.queue.ids()
    finally:
        hub.runner.stop()


def test_an_entry_with_local_mailboxes_is_taken_beyond_a_failing_destinations_room(
        tmp_path):
    # an entry for a local mailbox and a failing destination is taken for
    # the local delivery: at the failing one it counts as beyond the room
    # even when that room was free, so an entry for the failing
    # destination alone is taken too and has the turn next, ahead of it
    hub, sessions, answer, _first = _remote_failing(tmp_path, 4)
    try:
        mixed = enqueue(hub, LOCAL, BOB)
        assert hub.runner._entries[mixed].beyond == {"remote.test"}
        assert set(sessions) == {(mixed, "remote.test")}  # it has the turn
        single = enqueue(hub, BOB)
        assert single in hub.runner.active  # taken: the room was not counted
        answer(mixed, "remote.test", "unreachable")
        assert set(sessions) == {(single, "remote.test")}
        answer(single, "remote.test", "unreachable")
        assert not hub.runner.active
    finally:
        hub.runner.stop()


def test_an_entry_for_failing_destinations_alone_counts_beyond_where_it_had_no_room(
        tmp_path):
    # an entry for two failing destinations, taken for the room of the one
    # that had it, counts as beyond the room of the other (its delivery
    # there waits for the turn): once that turn comes to it, an entry for
    # the other alone is taken, and has the next turn
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    sessions, answer = _sessions_by_destination(hub)
    hub.runner.start()
    try:
        bob = enqueue(hub, BOB)
        answer(bob, "remote.test", "unreachable")  # failing, retried in 60 s
        hub.clock.advance(30)
        carol = enqueue(hub, CAROL)
        answer(carol, "other.test", "unreachable")  # failing, retried in 60 s
        hub.clock.advance(30)  # bob's retry holds remote.test's room; other.test's is free
        assert set(sessions) == {(bob, "remote.test")}
        both = enqueue(hub, BOB, CAROL)
        assert hub.runner._entries[both].beyond == {"remote.test"}
        answer(both, "other.test", "unreachable")
        answer(bob, "remote.test", "unreachable")  # the turn is its
        assert set(sessions) == {(both, "remote.test")}
        single = enqueue(hub, BOB)
        assert single in hub.runner.active  # taken: not counted against it
        answer(both, "remote.test", "unreachable")
        assert set(sessions) == {(single, "remote.test")}
        answer(single, "remote.test", "unreachable")
    finally:
        hub.runner.stop()


def test_an_entry_deleted_while_its_queued_time_is_mended_is_forgotten(hub, monkeypatch):
    # `mailhub queue delete` while the mend is written: the write finds no
    # record, and the entry goes with no attempt, no notice and no error
    qid = enqueue(hub, LOCAL, BOB)
    _edit_record_time(hub, qid, "created", "NaN")
    from twisted.logger import formatEvent, globalLogPublisher

    release = _mend_write_held(hub, monkeypatch)
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.runner.start()
        assert qid in hub.runner.active
        assert hub.queue.delete(qid)
        release()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not hub.runner.active and qid not in hub.runner.due
    assert hub.store.messages(LOCAL) == [] and hub.agent.calls == []
    assert not [e for e in events if e.get("log_failure") is not None]
    assert any(f"queue entry {qid} deleted" in formatEvent(e) for e in events)



def test_a_queued_time_edited_to_no_number_during_the_attempt_is_mended_as_it_is_recorded(
        hub, log_events):
    # the record edited by hand while its delivery is under way (after the
    # mend before the attempt): the write of the attempt's outcome mends it
    # too, and says so, or the lifetime reckoned from it never ended
    from twisted.logger import LogLevel, formatEvent

    pending = hub.agent.hold()
    hub.runner.start()
    qid = enqueue(hub, BOB)
    assert len(pending) == 1
    _edit_record_time(hub, qid, "created", "NaN")
    hub.clock.advance(5)
    d, rcpts = pending.pop(0)
    d.callback([DeliveryResult(a, "transient", LATER, "mx") for a in rcpts])
    entry = hub.queue.read(qid)
    assert entry.created == hub.clock.seconds() and entry.attempts == 1
    said = [e for e in log_events if "is not a time" in e.get("log_format", "")]
    assert [formatEvent(e) for e in said] == [
        f"{qid}: the record's created is not a time (nan); taken as now, "
        f"{schedule.utc_text(hub.clock.seconds())}"]
    assert said[0]["log_level"] == LogLevel.warn  # a record that was wrong


def test_a_later_line_of_a_stop_counts_entries_looking_up_dns_and_those_waiting_apart(
        tmp_path, monkeypatch, log_events):
    # two entries the stop waited for (their local copies being made) found
    # loose by one look: one whose other destination only looks up DNS, one
    # whose other one waits for a free slot; the line names each for what
    # it waited for
    hub = make_hub(tmp_path, "max_concurrent_deliveries = 2\n")
    copies: list[defer.Deferred] = []

    def deliver(message, rcpts):
        copies.append(defer.Deferred())
        return copies[-1]

    monkeypatch.setattr(hub.store, "deliver", deliver)
    hub.runner.start()
    sessions = hub.agent.hold()
    enqueue(hub, Address("x", "a.test"))  # in its session: a slot
    looking = enqueue(hub, LOCAL, Address("x", "b.test"))
    hub.agent.resolving.add(looking)  # its b.test delivery: the other slot, looking up DNS
    waiting = enqueue(hub, LOCAL, Address("x", "c.test"))  # c.test waits for a slot
    hub.clock.advance(1)
    assert len(copies) == 2 and len(hub.agent.calls) == 2
    assert hub.runner._waits_for_a_slot(waiting) is False  # (its copy under way)
    stopped = hub.runner.stop(grace=10)
    look_again = hub.runner._look_again
    monkeypatch.setattr(hub.runner, "_look_again", lambda: None)  # one look for both
    for d in copies:
        d.callback({LOCAL: None})
    assert hub.runner._waits_for_a_slot(waiting) and not hub.runner._waits_for_a_slot(looking)
    look_again()
    assert [x for x in _stop_lines(log_events) if "more" in x] == [
        "stopping: 2 more delivery attempts given up (what they had to record is recorded; "
        "the rest of 1 only looks up DNS or connects, of 1 waits for a free slot "
        "(max_per_destination, max_concurrent_deliveries)), retried at the next start"]
    _answer_all(sessions)
    hub.clock.advance(10)
    assert stopped.called


@pytest.mark.parametrize("field", ["failed_at", "last_attempt"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e300, -1e300,
                                   253402300800.0, -62135596801.0])
def test_each_recipient_time_that_is_no_number_is_mended(hub, field, value):
    # recording.mend_times takes a recipient's failed_at and last_attempt
    # that are no time as now, each with its line; a time that is one stays
    from txmailhub.relay import recording
    from txmailhub.relay.record import FAILED

    qid = enqueue(hub, BOB, CAROL)
    entry = hub.queue.read(qid)
    bob, carol = entry.recipients
    times = {"failed_at": 5.0, "last_attempt": 4.0}
    entry = entry.with_recipients({
        BOB: dataclasses.replace(bob, state=FAILED, attempts=1, **{**times, field: value}),
        CAROL: dataclasses.replace(carol, state=FAILED, attempts=1, **times)})
    mended, lines = recording.mend_times(entry, 100.0)
    assert getattr(mended.recipient(BOB), field) == 100.0
    assert {k: getattr(mended.recipient(BOB), k) for k in times if k != field} == {
        k: v for k, v in times.items() if k != field}
    assert mended.recipient(CAROL) == entry.recipient(CAROL)
    assert mended.created == entry.created
    assert [(x["field"], x["recipient"], x["value"]) for x in lines] == [
        (field, str(BOB), repr(value))]
    assert recording.mend_times(mended, 200.0) == (mended, [])  # mended once


@pytest.mark.parametrize("value", [3 * 86400.0, 253402300799.0 - 1_800_000_000.0])
def test_a_time_in_the_future_that_is_a_date_is_not_mended(hub, log_events, value):
    # a record written by a clock ahead of this one (set back since, or
    # another machine's) holds times a few days from now; they are dates,
    # kept as they are (the lifetime runs from them, as it always did),
    # up to the last second of the year 9999.  Only a time beyond what a
    # date can be is taken as now
    from txmailhub.relay import recording

    qid = enqueue(hub, BOB)
    entry = hub.queue.read(qid)
    [bob] = entry.recipients
    ahead = hub.clock.seconds() + value
    entry = dataclasses.replace(entry, created=ahead).with_recipients(
        {BOB: dataclasses.replace(bob, attempts=1, last_attempt=ahead)})
    assert recording.mend_times(entry, hub.clock.seconds()) == (entry, [])
    if value > 3 * 86400:
        return
    hub.queue.update_now(qid, lambda e: dataclasses.replace(e, created=ahead))
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "transient", LATER, "mx") for a in r]
    hub.runner.start()
    try:
        hub.clock.advance(1)
        assert hub.queue.read(qid).created == ahead  # written back as it was
        assert len(hub.agent.calls) == 1
    finally:
        hub.runner.stop()
    assert not [e for e in log_events if "not a time" in e.get("log_format", "")]


def test_a_mended_times_line_names_a_recipient_with_its_controls_escaped(hub):
    # the recipient as a hand-edited record holds it: its line is one line,
    # with no control the terminal that shows the log would act on
    from txmailhub.relay import recording

    qid = enqueue(hub, BOB)
    entry = hub.queue.read(qid)
    [bob] = entry.recipients
    odd = Address("b\nob\x1b[2J", "remote.test")
    entry = dataclasses.replace(entry, recipients=(
        dataclasses.replace(bob, address=odd, last_attempt=float("nan")),))
    _mended, [line] = recording.mend_times(entry, 100.0)
    assert "\n" not in line["recipient"] and "\x1b" not in line["recipient"]
    assert line["what"] == f"last_attempt of {line['recipient']}"


def test_an_entry_taken_beyond_a_failing_destinations_room_is_not_counted_in_the_same_look(
        tmp_path, monkeypatch):
    # the look that takes an entry beyond a failing destination's room (with
    # a local mailbox) does not count it there for the entries after it in
    # that look: one for that destination alone is taken by the same look
    hub, sessions, answer, _first = _remote_failing(tmp_path, 4)
    try:
        hub.runner.stop()
        mixed = enqueue(hub, LOCAL, BOB)
        hub.clock.advance(1)
        single = enqueue(hub, BOB)
        hub.runner._failing.learn("remote.test", _unreachable([BOB]), 1)  # still failing
        # (a start forgets the failing destinations: not this one)
        monkeypatch.setattr(hub.runner._failing, "clear", lambda: None)
        hub.runner.start()  # one look takes both
        monkeypatch.undo()
        assert {mixed, single} <= set(hub.runner.active)
        assert hub.runner._entries[mixed].beyond == {"remote.test"}
        while sessions:  # their deliveries, one turn after the other
            answer(*next(iter(sessions)))
    finally:
        hub.runner.stop()


def test_an_entry_whose_handling_failed_goes_by_its_remaining_destinations(tmp_path):
    # an entry for remote.test and other.test whose handling failed (the
    # agent raised for remote.test) after other.test was delivered is
    # retried a minute later; the runner knew it by both destinations
    # still.  remote.test failing meanwhile (one delivery at a time), it was
    # taken for other.test's room, beyond remote.test's, and its delivery
    # there waited for the turn behind the list entries taken so: as the
    # entry for remote.test alone it is now, it has the next turn
    hub = make_hub(tmp_path, "max_per_destination = 4\nmax_concurrent_deliveries = 4\n")
    sessions, answer = _sessions_by_destination(hub)
    held = hub.agent.script
    raised = []

    def script(e, dest, rcpts):
        if dest == "remote.test" and not raised and CAROL in {r.address for r in e.recipients}:
            raised.append(e.id)
            raise RuntimeError("the agent failed as the delivery started")
        return held(e, dest, rcpts)

    hub.agent.script = script
    hub.runner.start()
    try:
        crashed = enqueue(hub, BOB, CAROL)
        answer(crashed, "other.test")  # delivered; its remote.test one raised
        assert raised == [crashed] and not hub.runner.active
        assert [p.address for p in hub.queue.read(crashed).pending] == [BOB]
        assert hub.runner._destinations[crashed] == (frozenset({"remote.test"}), False)
        first = enqueue(hub, BOB)
        answer(first, "remote.test", "unreachable")  # remote.test marked failing
        lists = []
        for _ in range(3):  # list mail: taken for other.test's room
            hub.clock.advance(1)
            lists.append(enqueue(hub, BOB, CAROL))
            answer(lists[-1], "other.test")
        hub.clock.advance(60)  # the crashed entry's retry (and the first's) due
        turns = []  # whose delivery to remote.test has the turn, in order
        while sessions:
            (holder,) = [q for q, d in sessions if d == "remote.test"]
            turns.append(holder)
            answer(holder, "remote.test", "unreachable")
        # the first list entry had the turn (free when it came); then the
        # crashed entry, for remote.test alone and due first, taken within
        # its room; then the turn alternates.  Before: behind all three
        # list entries, last
        assert turns == [lists[0], crashed, lists[1], first, lists[2]], turns
        for q in (crashed, first, *lists):
            assert [p.address for p in hub.queue.read(q).pending] == [BOB]
        calls = [c[0] for c in hub.agent.calls if c[1] == "remote.test"]
        assert calls.count(crashed) == 2  # the one that raised, its retry: nothing twice
    finally:
        hub.runner.stop()


@pytest.mark.parametrize("change", [
    lambda d: d.__setitem__("q3", 3.0),
    lambda d: d.__delitem__("q1"),
    lambda d: d.pop("q1"),
    lambda d: d.popitem(),
    lambda d: d.clear(),
    lambda d: d.update(q3=3.0),
    lambda d: d.setdefault("q3", 3.0),
    lambda d: d.__ior__({"q3": 3.0}),
], ids=["set", "del", "pop", "popitem", "clear", "update", "setdefault", "ior"])
def test_every_change_to_the_due_times_is_counted(change) -> None:
    # the runner sorts and groups its entries again only when the version
    # of its due times (or destinations) moved: a change that left it
    # would have entries looked at in a stale order, or not at all
    from txmailhub.relay.admission import DueTimes

    due = DueTimes(q1=1.0, q2=2.0)
    before, contents = due.version, dict(due)
    change(due)
    assert dict(due) != contents and due.version > before


def test_a_destination_done_beside_one_that_failed_is_not_sent_again_when_nothing_can_be_written(
        hub, monkeypatch, log_events):
    # BOB's destination takes the message, CAROL's delivery fails with an
    # error, and the disk is full: neither BOB's own record nor the one
    # written after the error can be made.  BOB's delivery is kept in
    # memory and recorded at the entry's retry; it is not sent to him again
    from twisted.logger import formatEvent

    from txmailhub.relay.runner import ERROR_RETRY

    hub.runner.start()
    hung = two_destinations(hub)
    real_update = hub.queue.update

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub.queue, "update", full)
    qid = enqueue(hub, BOB, CAROL)
    [(x, _r)] = hung
    x.errback(RuntimeError("the agent failed"))
    said = (f"{qid}: the results of its other destinations cannot be recorded yet; "
            "recorded at the next try: [Errno 28] No space left on device")
    assert said in [formatEvent(e) for e in log_events]
    monkeypatch.setattr(hub.queue, "update", real_update)
    calls = len(hub.agent.calls)
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    for _ in range(int(ERROR_RETRY) + 2):  # the runner's look, each second
        hub.clock.advance(1)
    # the retry writes what was kept (no delivery of its own) ...
    assert [c for c in hub.agent.calls[calls:] if c[1] == "remote.test"] == []
    entry = hub.queue.read(qid)
    assert entry.recipient(BOB).state == "delivered"
    assert entry.recipient(CAROL).state == "pending"
    # ... and CAROL's next attempt is hers alone
    for _ in range(3600):
        hub.clock.advance(1)
        if hub.queue.ids() == []:
            break
    assert [c for c in hub.agent.calls[calls:] if c[1] == "remote.test"] == []
    assert hub.agent.calls[calls:] == [(qid, "other.test", [CAROL])]
    assert hub.queue.ids() == []
    hub.runner.stop()


def test_a_delivery_that_fails_while_a_stop_waits_ends_the_wait_and_keeps_the_local_copy(hub):
    # an error out of the agent (not a result) while the stop waits for
    # the attempt: the stop fires then, not at its grace; the local copy
    # made beside it is recorded, so the next start makes no second one
    # and tries the remote recipient alone
    hub.runner.start()
    in_flight: defer.Deferred = defer.Deferred()
    hub.agent.script = lambda e, d, r: in_flight
    qid = enqueue(hub, BOB, LOCAL)
    assert len(hub.store.messages(LOCAL)) == 1
    stopped = hub.runner.stop()
    assert not stopped.called
    in_flight.errback(RuntimeError("the agent broke"))
    assert stopped.called
    assert hub.agent.aborted == 0  # nothing left to cut
    states = {r.address: r.state for r in hub.queue.read(qid).recipients}
    assert states == {BOB: "pending", LOCAL: "delivered"}
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    hub.runner.start()
    hub.clock.advance(1)
    assert [c[1:] for c in hub.agent.calls] == [("remote.test", [BOB])] * 2
    assert len(hub.store.messages(LOCAL)) == 1
    assert hub.queue.ids() == []


def test_a_store_that_fails_as_a_whole_leaves_its_recipients_for_a_retry(hub, monkeypatch):
    # the store's delivery fails outright (the spool file unreadable), not
    # per mailbox: every local recipient of the entry gets a 451 with the
    # store's reason and is tried again; the remote one is not held up
    def broken(message, mailboxes):
        return defer.fail(OSError("cannot read the spool file"))

    real = hub.store.deliver
    monkeypatch.setattr(hub.store, "deliver", broken)
    hub.runner.start()
    qid = enqueue(hub, LOCAL, BOB)
    recipients = {r.address: r for r in hub.queue.read(qid).recipients}
    assert recipients[BOB].state == "delivered"
    local = recipients[LOCAL]
    assert local.state == "pending"
    assert local.last_reply.code == 451
    assert "local delivery failed: cannot read the spool file" in local.last_reply.text()
    monkeypatch.setattr(hub.store, "deliver", real)
    hub.clock.advance(60)
    assert hub.queue.ids() == [] and len(hub.store.messages(LOCAL)) == 1


def test_an_entry_whose_record_went_while_it_waited_for_its_slot_is_not_delivered(hub):
    # the record removed behind the runner's back (another process, a hand
    # cleanup) while the entry waits for its destination's one slot: when
    # its turn comes it is read afresh, found gone and forgotten -- no
    # delivery of a message the queue no longer has
    pending, first, second = _second_waiting_for_its_slot(hub)
    os.unlink(hub.queue.record_path(second))
    _answer_all(pending)
    hub.clock.advance(60)
    assert [c[0] for c in hub.agent.calls] == [first]
    assert second not in hub.runner.due and hub.queue.ids() == []


def test_no_attempt_begins_while_the_queue_has_no_room_to_record_its_outcome(
        hub, monkeypatch, log_events):
    # An outcome whose record cannot be written (a full disk) is known to
    # this process only: after a restart before the disk had room again,
    # BOB, delivered, was sent the message again.  So no copy is sent while
    # the queue's file system has no room to write what became of it.
    from twisted.logger import formatEvent

    from txmailhub.relay.runner import ERROR_RETRY

    full = [True]
    real = getattr(hub.queue, "has_room_for_outcome", lambda qid: True)
    monkeypatch.setattr(hub.queue, "has_room_for_outcome",
                        lambda qid: not full[0] and real(qid), raising=False)
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "delivered" if a == BOB else "transient", OK if a == BOB else LATER,
                       "mx") for a in r]
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL)
    for _ in range(int(ERROR_RETRY) + 2):
        hub.clock.advance(1)
    assert hub.agent.calls == []
    assert [r.attempts for r in hub.queue.read(qid).recipients] == [0, 0]
    said = (f"the queue folder {hub.queue.directory} has no room to record a delivery "
            "attempt's outcome (no inode free, or less than 64 KiB): entries whose outcome "
            "must be written are not attempted until it has")
    assert said in [formatEvent(e) for e in log_events]
    full[0] = False
    hub.clock.advance(1)  # attempted at the runner's next look
    assert sorted(c[1] for c in hub.agent.calls) == ["other.test", "remote.test"]
    entry = hub.queue.read(qid)
    assert entry.recipient(BOB).state == "delivered"
    assert entry.recipient(CAROL).state == "pending"


@pytest.mark.parametrize("rcpts,notify,attempted", [
    ((BOB,), None, True),  # delivered: removed, which a full disk allows
    ((BOB,), ("SUCCESS",), False),  # delivered, a success notice owed: written
    ((BOB, CAROL), None, False),
])
def test_an_entry_one_delivery_finishes_is_attempted_on_a_full_disk(
        hub, monkeypatch, rcpts, notify, attempted):
    # a queue that filled the disk drains it: such an entry's removal
    # needs no room, and a retry that forgot its other outcomes (a 4xx, a
    # 5xx) sends no copy twice
    monkeypatch.setattr(hub.queue, "has_room_for_outcome", lambda qid: False)
    hub.runner.start()
    qid = enqueue(hub, *rcpts, notify=notify)
    assert bool(hub.agent.calls) is attempted
    assert (hub.queue.ids() == []) is attempted
    assert qid


def _queue_folder_full(hub, monkeypatch) -> list[bool]:
    """Start the runner on a queue folder with no room to record an
    outcome; set the returned flag's item False to give it room."""
    full = [True]
    monkeypatch.setattr(hub.queue, "has_room_for_outcome", lambda qid: not full[0])
    hub.runner.start()
    return full


def _room_lines(log_events) -> list[str]:
    """The lines that say the queue folder has no room, or room again."""
    from twisted.logger import formatEvent

    return [line for line in map(formatEvent, log_events)
            if "has no room to record" in line or "has room again" in line]


def test_a_full_queue_folder_is_said_once_and_attempts_resume_when_it_has_room(
        hub, monkeypatch, log_events):
    # a full disk under a queue of thousands must not log a line per entry
    # per minute: one warning when attempts stop, one line when they go on,
    # and that as soon as there is room (the runner looks each second)
    from twisted.logger import LogLevel, formatEvent

    full = _queue_folder_full(hub, monkeypatch)
    first = enqueue(hub, BOB, CAROL)
    hub.clock.advance(20)
    second = enqueue(hub, BOB, CAROL)
    for _ in range(200):
        hub.clock.advance(1)
    assert hub.agent.calls == []
    said = [formatEvent(e) for e in log_events if e["log_level"] >= LogLevel.warn]
    assert len(said) == 1 and "has no room to record" in said[0], said
    full[0] = False
    hub.clock.advance(1)  # a second, not the minute of a retry
    assert sorted({c[0] for c in hub.agent.calls}) == sorted([first, second])
    for _ in range(200):
        hub.clock.advance(1)
    said = _room_lines(log_events)
    assert sum("has no room to record" in line for line in said) == 1
    assert sum("has room again: delivery attempts resume" in line for line in said) == 1
    assert not [e for e in log_events if e["log_level"] >= LogLevel.error]


def test_an_entry_that_still_has_no_room_keeps_the_full_queue_folder_said_once(
        hub, monkeypatch, log_events):
    # room enough for a small record, not for a large one (many
    # recipients): the small entry goes, the large one waits, and the log
    # says neither "room again" nor "no room" each time one of them looks
    room = {"small": False, "big": False}
    ids: dict[str, str] = {}
    monkeypatch.setattr(hub.queue, "has_room_for_outcome",
                        lambda qid: room["big" if qid == ids.get("big") else "small"])
    hub.runner.start()
    big = ids["big"] = enqueue(hub, BOB, CAROL)
    small = enqueue(hub, BOB, CAROL)
    hub.clock.advance(30)
    room["small"] = True
    for _ in range(300):
        hub.clock.advance(1)
    assert {c[0] for c in hub.agent.calls} == {small}
    said = _room_lines(log_events)
    assert sum("has no room to record" in line for line in said) == 1
    assert not any("has room again" in line for line in said)
    room["big"] = True
    hub.clock.advance(1)
    assert {c[0] for c in hub.agent.calls} == {small, big}
    said = _room_lines(log_events)
    assert sum("has no room to record" in line for line in said) == 1
    assert sum("has room again" in line for line in said) == 1


def test_a_full_queue_folder_is_said_again_once_the_entries_that_waited_are_gone(
        hub, monkeypatch, log_events):
    # the entries that waited for room were deleted (mailhub queue delete)
    # before the disk had room: the disk that fills again later is said
    # again, where the runner kept quiet until its restart (and never said
    # "room again" either: nothing was waiting then)
    full = _queue_folder_full(hub, monkeypatch)
    first = enqueue(hub, BOB, CAROL)
    hub.clock.advance(5)
    assert hub.queue.delete(first)
    for _ in range(5):
        hub.clock.advance(1)
    full[0] = False
    for _ in range(5):
        hub.clock.advance(1)
    full[0] = True
    enqueue(hub, BOB, CAROL)
    for _ in range(5):
        hub.clock.advance(1)
    assert hub.agent.calls == []
    said = _room_lines(log_events)
    assert sum("has no room to record" in line for line in said) == 2, said
    assert not any("has room again" in line for line in said)


def _real_agent(hub, net: FakeNetwork) -> DeliveryAgent:
    """The real delivery agent, on ``net``, remote.test's MX hosts from
    ZONE."""
    mx = MXResolver(FakeResolver(ZONE), hub.clock, "mail.example.org", port=25,
                    rng=random.Random(0))
    return DeliveryAgent(hub.settings, mx, hub.clock, endpoint=net.endpoint,
                         tls_options=lambda host, verify: FakeTLS(host))


def _mx1_hangs_after_one_message(hub) -> tuple[FakeNetwork, DeliveryAgent]:
    """The network whose mx1 takes one recipient per message and hangs in
    the session's second transaction, and the real agent on it."""
    net = FakeNetwork(hub.clock)
    net.servers[("2001:db8::1", 25)] = SilentAfterOneMessage
    return net, _real_agent(hub, net)


def _bob_taken_alone(hub, *rcpts):
    """A runner started with the real agent on the network of
    _mx1_hangs_after_one_message; a message to bob and ``rcpts`` (the
    first, carol) queued and the network run until mx1 took bob alone in
    its first transaction: the runner, the network, the queue id and that
    server."""
    net, agent = _mx1_hangs_after_one_message(hub)
    runner = QueueRunner(hub.queue, agent, hub.components, hub.clock, send_dsn=hub.dsn)
    runner.start()
    qid = enqueue(hub, BOB, *rcpts)
    for _ in range(5):
        hub.clock.advance(0.1)
        net.run()
    [server] = net.server_protocols
    assert [m[1] for m in server.messages] == [[b"bob@remote.test"]]
    return runner, net, qid, server


def test_a_stop_in_a_later_transaction_keeps_the_earlier_delivery_for_the_next_start(hub):
    # the real agent: mx1 takes bob alone in the session's first message
    # ("too many" to carol) and hangs in the second transaction, carol's;
    # the stop's grace runs out and cuts it.  Bob has his copy: the record
    # says so before the stop is over, and the next start (another
    # process, a runner of its own) sends the message to carol alone --
    # with bob's delivery kept in memory only, he got a second copy there
    carol = Address("carol", "remote.test")
    runner, net, qid, _ = _bob_taken_alone(hub, carol)
    stopped = runner.stop()
    seen: list[dict] = []  # the record when the stop is over (the lock let go)
    stopped.addCallback(lambda _: seen.append(
        {str(r.address): r.state for r in hub.queue.read(qid).recipients}))
    for _ in range(int(10 + CUT_GRACE) + 2):
        hub.clock.advance(1)
        net.run()
    assert seen == [{"bob@remote.test": "delivered", "carol@remote.test": "pending"}]
    assert [str(r.address) for r in hub.queue.read(qid).pending] == ["carol@remote.test"]
    with next_runner(hub) as again:
        hub.clock.advance(1)
        assert again.calls == [(qid, "remote.test", [carol])]


def _cut_after_bob(hub, monkeypatch, *rcpts) -> tuple[QueueRunner, str, list]:
    """A runner with the real agent; the message to bob (mx1 takes him
    alone in its first transaction and hangs in the second, carol's) and
    to ``rcpts``; the local deliveries (joe's) wait until the test fires
    them (their Deferreds, in the list returned)."""
    local: list[defer.Deferred] = []

    def deliver(message, mailboxes):
        local.append(defer.Deferred())
        return local[-1]

    monkeypatch.setattr(hub.store, "deliver", deliver)
    runner, net, qid, _ = _bob_taken_alone(hub, Address("carol", "remote.test"), *rcpts)
    runner._net = net  # (the test runs it)
    return runner, qid, local


def test_a_stop_writes_the_earlier_delivery_while_another_destination_still_runs(
        hub, monkeypatch):
    # bob's copy went in the session's first transaction; the entry's
    # local delivery (joe's) does not end before the stop is over.  Bob's
    # delivery is written as his session's end tells it, not only once the
    # whole attempt is over: that was after the stop (nothing written), and
    # the next process sent bob a second copy
    runner, qid, local = _cut_after_bob(hub, monkeypatch, LOCAL)
    assert len(local) == 1
    stopped = runner.stop()
    seen: list[dict] = []
    stopped.addCallback(lambda _: seen.append(
        {str(r.address): r.state for r in hub.queue.read(qid).recipients}))
    for _ in range(int(10 + CUT_GRACE) + 2):
        hub.clock.advance(1)
        runner._net.run()
    assert seen == [{"bob@remote.test": "delivered", "carol@remote.test": "pending",
                     "joe@example.org": "pending"}]
    local[0].callback({LOCAL: None})  # ends after the stop: kept in memory only
    assert {str(r.address) for r in hub.queue.read(qid).pending} == {
        "carol@remote.test", "joe@example.org"}
    with next_runner(hub) as again:
        hub.clock.advance(1)
        assert again.calls == [(qid, "remote.test", [Address("carol", "remote.test")])]
        assert len(local) == 2  # joe's copy, tried again by that runner
        local[1].callback({LOCAL: None})


def _cut_ends_the_first_delivered(hub, pending: list, monkeypatch) -> None:
    """The agent's cut (``abort_all``) ends the first of the held
    deliveries with its recipients taken and the others with nothing."""

    def abort_all():
        d, rcpts = pending.pop(0)
        d.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
        while pending:
            d, rcpts = pending.pop(0)
            d.callback([DeliveryResult(a, "transient", LATER, "mx") for a in rcpts])

    monkeypatch.setattr(hub.agent, "abort_all", abort_all)


def _held_updates(hub, monkeypatch) -> list:
    """From now on each record update of the hub's queue waits until the
    test writes it (``(Deferred, queue id, change)`` in the list)."""
    held: list = []

    def update(qid, change):
        d: defer.Deferred = defer.Deferred()
        held.append((d, qid, change))
        return d

    monkeypatch.setattr(hub.queue, "update", update)
    return held


def _write_held(hub, held) -> None:
    d, qid, change = held.pop(0)
    d.callback(hub.queue.update_now(qid, change))


def test_no_write_of_a_stop_lands_after_it_is_over(hub, monkeypatch):
    # bob's delivery is being written (a slow disk) as the stop's cut
    # session closed; joe's local copy is made while the stop waits for
    # that write.  Joe's result, kept in memory, is written by the stop's
    # last try of what it keeps so, and the stop is over once that is
    # written: no write lands after it (the queue may be another hub's
    # then), and a start in a new process makes no second copy for joe
    runner, qid, local = _cut_after_bob(hub, monkeypatch, LOCAL)
    stopped = runner.stop()
    fired = []
    stopped.addBoth(fired.append)
    held = _held_updates(hub, monkeypatch)
    for _ in range(11):
        hub.clock.advance(1)
        runner._net.run()
    assert fired == [] and len(held) == 1  # bob's
    local[0].callback({LOCAL: None})
    _write_held(hub, held)
    assert fired == [] and len(held) == 1  # joe's, the stop's last try
    _write_held(hub, held)
    assert fired == [None] and held == []
    assert {str(r.address) for r in hub.queue.read(qid).pending} == {"carol@remote.test"}


def _stop_cutting_held(hub, monkeypatch, *others):
    """A message to bob and ``others`` (of other domains), each
    destination's delivery held, and a stop whose grace runs out: its cut
    (abort_all) ends bob's session with his message taken and the others'
    with nothing, and the record updates wait (held).  The queue id, the
    held updates and the stop's Deferred."""
    pending = hub.agent.hold()
    hub.runner.start()
    qid = enqueue(hub, BOB, *others)
    assert len(pending) == 1 + len(others)

    _cut_ends_the_first_delivered(hub, pending, monkeypatch)
    held = _held_updates(hub, monkeypatch)
    stopped = hub.runner.stop()
    hub.clock.advance(11)
    return qid, held, stopped


def test_a_stop_waits_for_the_writes_of_sessions_its_cut_closed_at_once(hub, monkeypatch):
    # an agent whose cut sessions end within abort_all (nothing left to
    # wait for: it returns None): what they delivered is written before
    # the stop is over, as for sessions that close later
    # bob's session had its message taken; carol's had nothing
    qid, held, stopped = _stop_cutting_held(hub, monkeypatch, CAROL)
    assert len(held) == 1 and not stopped.called
    _write_held(hub, held)
    assert stopped.called
    assert [str(r.address) for r in hub.queue.read(qid).pending] == ["carol@other.test"]


def test_a_stop_write_not_done_in_time_is_said_so_not_as_a_bug(hub, monkeypatch, log_events):
    # bob's delivery is being written when the stop's wait for it is over
    # (a slow disk): the stop is over all the same, and the log says the
    # write was not done in time -- a warning, not a traceback as of a bug,
    # nor a write said to have failed that may still land
    from twisted.logger import LogLevel, formatEvent

    runner, _, _ = _cut_after_bob(hub, monkeypatch)
    stopped = runner.stop()
    held = _held_updates(hub, monkeypatch)
    for _ in range(11):
        hub.clock.advance(1)
        runner._net.run()
    assert len(held) == 1 and not stopped.called
    hub.clock.advance(CUT_GRACE)
    assert stopped.called
    said = [e for e in log_events if "the stop cut" in formatEvent(e)]
    assert [(e["log_level"], "log_failure" in e) for e in said] == [(LogLevel.warn, False)]
    assert "not written within 2 s" in formatEvent(said[0])


def _pooled_updates(hub, monkeypatch) -> list:
    """From now on each record update of the hub's queue waits in a line,
    as for a thread of a pool whose threads a hung disk holds: ``(Deferred,
    function, arguments)`` in the list, for the test to run (the queue's
    other work is done at once)."""
    line: list = []
    io = hub.queue._io

    def pooled(fn, *args):
        if fn != hub.queue.update_now:
            return io(fn, *args)  # (an attempt's marker)
        d = defer.Deferred()
        line.append((d, fn, args))
        return d

    monkeypatch.setattr(hub.queue, "_io", pooled)
    return line


def _run_pooled(line) -> None:
    """The updates waiting in ``line`` each have their turn on a thread."""
    while line:
        d, fn, args = line.pop(0)
        try:
            d.callback(fn(*args))
        except Exception as e:
            d.errback(e)


def test_a_cut_sessions_write_not_begun_within_the_stops_wait_is_never_made(
        hub, monkeypatch, log_events):
    # the record writes run on the reactor's threads, a few at once: on a
    # disk that hangs, the write of what bob's cut session settled waits in
    # the pool's line.  The stop is over once its wait for it is (its state
    # directory maybe another hub's then); that write, not begun, must not
    # begin after (embedding.rst: no write of this hub starts once the
    # stop's Deferred has fired), and the log names what is left to the
    # next start
    pending = hub.agent.hold()
    hub.runner.start()
    qid = enqueue(hub, BOB, CAROL)

    _cut_ends_the_first_delivered(hub, pending, monkeypatch)
    line = _pooled_updates(hub, monkeypatch)
    fired = []
    hub.runner.stop().addBoth(fired.append)
    hub.clock.advance(11)
    assert len(line) == 1 and fired == []  # bob's, the cut's write
    for _ in range(3):
        hub.clock.advance(CUT_GRACE)  # (the stop's last writes' wait too)
    assert fired == [None]
    _run_pooled(line)  # their turn on a thread, after the stop
    # the record as the stop left it: bob still pending
    assert [r.address for r in hub.queue.read(qid).pending] == [BOB, CAROL]
    said = [formatEvent(e) for e in log_events if "the stop cut" in formatEvent(e)]
    assert len(said) == 1 and "not written within 2 s" in said[0]
    assert "a start in a new process sends the message again to bob@remote.test" in said[0]


def test_a_settled_write_the_cut_takes_not_begun_within_its_wait_is_never_made(
        hub, monkeypatch, log_events):
    # the real agent: mx1 takes bob alone in the session's first message
    # ("too many" to carol); the write of bob's delivery, which the
    # session waits for before carol's transaction, waits in the pool's
    # line (a hung disk) when the stop's grace runs out.  The cut takes
    # that write, and waits for it 2 s at most; once the stop is over,
    # the write, not begun, must not begin (the queue maybe another hub's)
    carol = Address("carol", "remote.test")
    line = _pooled_updates(hub, monkeypatch)
    runner, net, qid, _ = _bob_taken_alone(hub, carol)
    assert len(line) == 1  # bob's, settled
    fired = []
    runner.stop().addBoth(fired.append)
    for _ in range(int(10 + 3 * CUT_GRACE) + 2):
        hub.clock.advance(1)
        net.run()
    assert fired == [None]
    _run_pooled(line)  # their turn on a thread, after the stop
    assert [r.address for r in hub.queue.read(qid).pending] == [BOB, carol]
    # said by the stop's lines (bob named), not as a write failed after it
    said = [formatEvent(e) for e in log_events]
    assert any("the stop cut" in e and "again to bob@remote.test" in e for e in said)
    assert not any("cannot be recorded yet" in e for e in said)


def test_a_crash_in_a_later_transaction_sends_the_earlier_ones_recipients_nothing_again(hub):
    # the real agent: mx1 takes bob alone in the session's first message
    # ("too many" to carol) and hangs in the second transaction, carol's.
    # The process dies there (kill -9, a power loss: no stop, nothing more
    # of it runs).  Bob's delivery is in the record, written once his
    # transaction's "." was answered and before carol's began: the next
    # start (another process, on the same state_dir) sends to carol alone.
    # Written only as the delivery to remote.test ended, bob got a second copy
    carol = Address("carol", "remote.test")
    runner, _, qid, server = _bob_taken_alone(hub, carol)
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 2  # carol's is under way
    # the crash: this runner, its agent and its clock are dropped as they are
    _a_restart_sends_only(hub, runner, qid, carol, {
        "bob@remote.test": "delivered", "carol@remote.test": "pending"})


def _a_restart_sends_only(hub, runner, qid: str, rcpt, states: dict[str, str]) -> None:
    """After a crash (``runner``, its agent and its clock dropped as they
    are), the entry's record has ``states`` and a new runner on a new
    clock sends ``qid`` to ``rcpt`` alone."""
    clock = Clock()
    clock.advance(hub.clock.seconds())
    queue = OutboundQueue(hub.settings.queue_dir, clock)
    assert {str(r.address): r.state for r in queue.read(qid).recipients} == states
    again = FakeAgent()
    second = QueueRunner(queue, again, hub.components, clock, send_dsn=hub.dsn)
    second.start()
    try:
        clock.advance(1)
        assert again.calls == [(qid, "remote.test", [rcpt])]
    finally:
        second.stop()
        # what is left of the crashed runner: given up, as its process's end
        # would have (its markers' locks with it)
        runner.stop(grace=0)


def test_a_stop_whose_agent_fails_to_cut_its_sessions_is_over_all_the_same(
        hub, monkeypatch, log_events):
    # an agent (an embedding application's own) whose abort_all raises:
    # the stop still ends, after its grace, and says why it did not wait
    hub.agent.hold()
    hub.runner.start()
    enqueue(hub, BOB)

    def abort_all():
        raise RuntimeError("agent broken")

    monkeypatch.setattr(hub.agent, "abort_all", abort_all)
    stopped = hub.runner.stop()
    hub.clock.advance(11)
    assert stopped.called
    assert any("could not cut its sessions" in e.get("log_format", "") for e in log_events)


def test_a_second_stop_during_a_cut_wait_is_over_once_the_cut_write_is(hub, monkeypatch):
    # the first stop's grace is over: bob's delivery, ended by the cut, is
    # being written (a slow disk) and the entry's handling is over.  A
    # second stop made then is over when that write is, as the first one:
    # firing at once, it let the embedding application hand the queue to
    # another hub before bob's delivery was in the record
    qid, held, first = _stop_cutting_held(hub, monkeypatch)
    assert len(held) == 1 and not first.called
    assert not hub.runner.active  # the entry's handling is over
    second = hub.runner.stop()
    assert not second.called
    _write_held(hub, held)
    assert first.called and second.called
    assert qid not in hub.queue.ids()  # bob delivered: nothing left


def test_a_stop_after_a_start_within_an_earlier_stops_cut_wait_writes_its_own_cut(
        hub, monkeypatch):
    # stop, start, stop within the first stop's wait for its cut sessions
    # to close.  The first wait ends while the second stop's cut session
    # is still closing; that session then says carol's message was taken.
    # The second stop writes it before it is over: with one flag for both
    # stops, the first one's end cleared it, and carol's delivery stayed
    # in memory only (a new process sent her a second copy)
    pending = hub.agent.hold()
    closing: list[defer.Deferred] = []

    def abort_all():
        closing.append(defer.Deferred())
        return closing[-1]

    monkeypatch.setattr(hub.agent, "abort_all", abort_all)
    hub.runner.start()
    first_qid = enqueue(hub, BOB)
    d, _ = pending.pop(0)
    first = hub.runner.stop(0)
    d.callback([DeliveryResult(BOB, "transient", LATER, "mx")])  # cut: nothing taken
    assert not first.called  # its cut connection is still closing
    hub.runner.start()
    qid = enqueue(hub, CAROL)
    carol = [x for x in pending if x[1] == [CAROL]]
    assert len(carol) == 1
    second = hub.runner.stop(0)
    closing[0].callback(None)  # the first stop's cut is closed: it is over
    assert first.called and not second.called
    carol[0][0].callback([DeliveryResult(CAROL, "delivered", OK, "mx")])
    closing[1].callback(None)
    assert second.called
    assert qid not in hub.queue.ids()  # carol delivered, and written so
    assert first_qid in hub.queue.ids()


def test_the_next_transaction_waits_for_the_write_of_the_earlier_ones_results(
        hub, monkeypatch):
    # the real agent, a slow disk: bob's transaction is answered, and the
    # record update that says he is delivered waits.  carol's transaction
    # (its MAIL) goes only once that update is written
    held = _held_updates(hub, monkeypatch)
    runner, net, qid, server = _bob_taken_alone(hub, Address("carol", "remote.test"))
    assert len(held) == 1 and sum(c.startswith(b"MAIL") for c in server.commands) == 1
    _write_held(hub, held)
    net.run()
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 2
    assert {str(r.address): r.state for r in hub.queue.read(qid).recipients} == {
        "bob@remote.test": "delivered", "carol@remote.test": "pending"}
    runner.stop(grace=0)  # carol's session, hanging, is cut
    net.run()


def test_an_agent_written_before_settled_still_delivers(hub):
    # a delivery agent made to ``IDeliveryAgent`` as it was, whose
    # ``deliver`` takes no ``settled``: its deliveries are made and
    # recorded as the delivery ends, not failed with a TypeError each time
    calls = []

    def deliver(entry, dest, rcpts):
        calls.append(list(rcpts))
        return defer.succeed([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])

    hub.agent.deliver = deliver
    hub.runner.start()
    enqueue(hub, BOB)
    assert calls == [[BOB]]
    assert hub.queue.ids() == []


def test_a_stop_waits_for_the_write_of_a_round_settled_before_a_new_connection(
        hub, monkeypatch):
    # the next hop took bob alone ("too many" to carol): carol goes on a new
    # connection once bob's delivery is written.  The stop comes while
    # that write is under way (a slow disk), no session open to cut: it is
    # over once bob is in the record, not while his write may still land
    # after it (the queue another hub's by then, which sends to him again)
    carol = Address("carol", "remote.test")
    agent = _real_agent(hub, FakeNetwork(hub.clock))
    more = Reply.of(452, "4.5.3", "too many")
    rounds = [[DeliveryResult(BOB, "delivered", OK, "mx"),
               DeliveryResult(carol, "transient", more, "mx")],
              [DeliveryResult(carol, "transient", LATER, "mx")]]
    calls = []

    def fake(entry_, destination, recipients, *_):
        calls.append(list(recipients))
        return defer.succeed(rounds[len(calls) - 1])

    monkeypatch.setattr(agent, "_deliver", fake)
    runner = QueueRunner(hub.queue, agent, hub.components, hub.clock, send_dsn=hub.dsn)
    held = _held_updates(hub, monkeypatch)
    runner.start()
    qid = enqueue(hub, BOB, carol)
    assert calls == [[BOB, carol]] and len(held) == 1  # bob's write, under way
    stopped = runner.stop(grace=0)
    assert not stopped.called
    _write_held(hub, held)
    assert stopped.called
    assert {str(r.address): r.state for r in hub.queue.read(qid).recipients} == {
        "bob@remote.test": "delivered", "carol@remote.test": "pending"}
    assert runner._cuts == {} and runner._cut_over == {}


def test_a_delivery_settled_in_an_earlier_transaction_is_logged_once_written(
        hub, monkeypatch, log_events):
    # bob's copy, taken in the session's first transaction, is written
    # before carol's begins; its line per recipient is in the log as any
    # recorded delivery's, once written, not before
    from twisted.logger import formatEvent

    held = _held_updates(hub, monkeypatch)
    runner, qid, _ = _cut_after_bob(hub, monkeypatch)
    assert len(held) == 1

    def said() -> list[str]:
        return [formatEvent(e) for e in log_events
                if e.get("log_format") == "{queue_id} to {recipient}: {who}{reply}{then}"]

    assert said() == []  # not before it is written
    _write_held(hub, held)
    [line] = said()
    assert line.startswith(f"{qid} to bob@remote.test: ")
    runner.stop()
    for _ in range(11):
        hub.clock.advance(1)
        runner._net.run()


def test_a_cut_sessions_delivery_whose_write_fails_is_not_sent_again_by_this_runner(
        hub, monkeypatch):
    # bob's delivery, settled by a session the stop cut, cannot be written
    # while the stop waits: this runner keeps it in memory, and its next
    # start enters it rather than sending bob a second copy
    qid, held, stopped = _stop_cutting_held(hub, monkeypatch, CAROL)
    [(d, _, _)] = held
    held.clear()
    d.errback(OSError(28, "No space left on device"))
    assert stopped.called
    monkeypatch.undo()
    assert hub.queue.read(qid).recipient(BOB).state == "pending"
    hub.agent.script = lambda e, d, r: [DeliveryResult(a, "delivered", OK, "mx") for a in r]
    hub.runner.start()
    hub.clock.advance(24 * 3600)
    assert [c[1] for c in hub.agent.calls].count("remote.test") == 1
    assert hub.queue.ids() == []


class ClosesAfterOneMessage(SilentAfterOneMessage):
    """Takes bob alone in a message ("too many" to the others) and closes
    the connection once its reply to that message's final "." is out."""

    def dataReceived(self, data):
        had = len(self.messages)
        super().dataReceived(data)
        if not had and self.messages:
            self.transport.loseConnection()


def test_a_new_connection_waits_for_the_write_of_what_a_session_lost_meanwhile_settled(
        hub, monkeypatch):
    # the real agent, a slow disk: mx1 takes bob alone ("too many" to
    # carol) and closes the connection while bob's delivery is being
    # written (a transport that cannot stop reading: TLS from the first
    # octet, a port-465 smarthost).  carol's new connection waits for that
    # write as her next transaction on the same connection would: made at
    # once, a crash during it left bob pending, and he got a second copy
    carol = Address("carol", "remote.test")
    held = _held_updates(hub, monkeypatch)
    net = FakeNetwork(hub.clock)
    net.servers[("2001:db8::1", 25)] = ClosesAfterOneMessage
    runner = QueueRunner(hub.queue, _real_agent(hub, net), hub.components, hub.clock,
                         send_dsn=hub.dsn)
    runner.start()
    qid = enqueue(hub, BOB, carol)
    for _ in range(5):
        hub.clock.advance(0.1)
        net.run()
    assert len(held) == 1  # bob's write, under way
    assert len(net.connections) == 1
    [server] = net.server_protocols
    assert [m[1] for m in server.messages] == [[b"bob@remote.test"]]
    _write_held(hub, held)
    for _ in range(5):
        hub.clock.advance(0.1)
        net.run()
    assert net.connections[1] == ("2001:db8::1", 25)  # carol's, once bob is written
    assert hub.queue.read(qid).recipient(BOB).state == "delivered"
    runner.stop()


def test_a_crash_in_the_next_mx_hosts_session_sends_the_last_transactions_recipient_nothing_again(
        hub):
    # the real agent: mx1 takes bob in the session's first message,
    # greylists carol in a second that takes nobody, and takes u2 in a
    # third; carol goes on to mx2, which hangs, and the process dies there.
    # u2's delivery (the session's last transaction) is in the record: the
    # next start sends the message to carol alone.  Written only as the
    # delivery to remote.test ended, u2 got a second copy
    carol, u2 = Address("carol", "remote.test"), Address("u2", "remote.test")
    net = FakeNetwork(hub.clock)
    net.servers[("2001:db8::1", 25)] = GreylistsCarolTakesOnePerMessage
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(silent=True)
    runner = QueueRunner(hub.queue, _real_agent(hub, net), hub.components, hub.clock,
                         send_dsn=hub.dsn)
    runner.start()
    qid = enqueue(hub, BOB, carol, u2)
    for _ in range(5):
        hub.clock.advance(0.1)
        net.run()
    assert net.connections[-1] == ("192.0.2.2", 25)  # carol's session, hanging
    _a_restart_sends_only(hub, runner, qid, carol, {
        "bob@remote.test": "delivered", "carol@remote.test": "pending",
        "u2@remote.test": "delivered"})


def test_a_stop_whose_agents_cut_never_closes_is_over_after_cut_grace(hub, monkeypatch):
    # an agent (an embedding application's own) whose abort_all returns a
    # Deferred that has its result already but waits on another, which
    # never fires: the stop waits for it CUT_GRACE at most, as for any
    # other (``called`` is true of such a Deferred: taken for one that had
    # fired, it got no timeout, and the stop never ended)
    hub.agent.hold()
    hub.runner.start()
    enqueue(hub, BOB)
    monkeypatch.setattr(hub.agent, "abort_all",
                        lambda: defer.succeed(None).addCallback(lambda _: defer.Deferred()))
    stopped = hub.runner.stop()
    hub.clock.advance(11)
    assert not stopped.called
    hub.clock.advance(CUT_GRACE)
    assert stopped.called


def test_a_local_mailbox_whose_name_no_folder_can_have_bounces_at_once(hub, monkeypatch):
    # a users file line written by hand whose Maildir folder's name is over
    # the file system's 255 octets (or has a '/'): the store can never make
    # its folder, and each attempt was "451 4.3.0 local delivery failed",
    # retried until the queue's lifetime.  It fails for good at once: the
    # sender gets the bounce now; the other recipients are not held up
    from txmailhub.errors import MailboxNameError

    def unusable(message, mailboxes):
        return defer.succeed({a: MailboxNameError("local part 'joe': its Maildir folder's "
                                                  "name would be 300 octets, over the 255 "
                                                  "a file system takes in one name (NAME_MAX)")
                              for a in mailboxes})

    monkeypatch.setattr(hub.store, "deliver", unusable)
    hub.runner.start()
    enqueue(hub, LOCAL, BOB)
    assert hub.queue.ids() == []
    [(env, data)] = hub.dsn.sent
    assert env.recipients == (ALICE,)
    assert b"Final-Recipient: rfc822; joe@example.org" in data
    assert b"Status: 5.3.5" in data
    assert b"NAME_MAX" in data


def _held_pool(hub) -> tuple[list, list, Callable]:
    """A hung disk for the queue's pool: a stand-in for ``hub.queue._io``
    that holds each record update and each attempt marker's removal, in
    the two lists given back with it, as ``(d, fn, args)``
    (``_run_pooled`` runs them); other jobs run."""
    from txmailhub.relay import inflight

    line: list = []
    removals: list = []
    io = hub.queue._io

    def pooled(fn, *args):
        d = defer.Deferred()
        if fn is inflight.unmark:
            removals.append((d, fn, args))
        elif fn == hub.queue.update_now:
            line.append((d, fn, args))
        else:
            return io(fn, *args)
        return d

    return line, removals, pooled


def _everything_hangs(hub, monkeypatch, closes: bool) -> tuple[str, str, list, list, list]:
    """A stop on a hung disk: carol's delivery made, its record unwritten
    (a last write owed); bob's session under way when the stop's grace runs
    out, its cut closing at once with his message taken (``closes``) or
    never; each record update then waiting in the pool's line, each attempt
    marker's removal held.  Bob's and carol's queue ids, the line, the held
    removals and the stop's outcome (a list, empty until it fires)."""

    hub.runner.start()
    carol = enqueue_unrecorded(hub, monkeypatch, CAROL)
    pending = hub.agent.hold()
    if closes:
        _cut_ends_the_first_delivered(hub, pending, monkeypatch)
    else:
        monkeypatch.setattr(hub.agent, "abort_all", lambda: defer.Deferred())
    line, removals, pooled = _held_pool(hub)
    monkeypatch.setattr(hub.queue, "_io", pooled)
    bob = enqueue(hub, BOB)
    assert len(pending) == 1 and _markers(hub) == [f".{bob}.attempt"]
    fired: list = []
    hub.runner.stop().addBoth(fired.append)
    hub.clock.advance(SHUTDOWN_GRACE)
    assert len(removals) == 1 and fired == []  # bob's marker, given up with the cut
    return bob, carol, line, removals, fired


@pytest.mark.parametrize("closes", [False, True], ids=["cut-never-closes", "cut-closes"])
def test_a_stop_on_which_everything_hangs_is_over_one_cut_grace_and_a_floor_after_its_grace(
        hub, monkeypatch, log_events, closes):
    # the waits after the grace -- the cut sessions' close, the writes of
    # what they settled, the markers' removals, the last writes -- share
    # one CUT_GRACE, but for the LAST_WRITES_FLOOR the last writes have
    # of their own: a hung disk under sessions that do not close either
    # made the stop 3 CUT_GRACEs long (16 s after SIGTERM, for a unit that
    # allows 30).  Nothing is written once it is over, and the log names
    # what is then left to a start in a new process
    from txmailhub.relay.stopping import LAST_WRITES_FLOOR

    bob, carol, line, removals, fired = _everything_hangs(hub, monkeypatch, closes)
    hub.clock.advance(CUT_GRACE)
    assert fired == []
    hub.clock.advance(LAST_WRITES_FLOOR / 2)
    assert fired == []
    hub.clock.advance(LAST_WRITES_FLOOR / 2)
    assert fired == [None]
    said = [formatEvent(e) for e in log_events]
    [last] = [e for e in said if e.startswith(f"{carol}: its record cannot be written")]
    assert "not written within 2 s" in last
    assert "a start in a new process sends the message again to carol@other.test" in last
    if closes:
        [cut] = [e for e in said if "the stop cut" in e]
        assert cut.startswith(f"{bob}:") and "not written within 2 s" in cut
        assert "again to bob@remote.test" in cut
    # the writes' turn on a thread, after the stop: none is made
    _run_pooled(line)
    assert [r.address for r in hub.queue.read(carol).pending] == [CAROL]
    assert [r.address for r in hub.queue.read(bob).pending] == [BOB]
    while removals:  # (the descriptor closed)
        d, fn, args = removals.pop(0)
        d.callback(fn(*args))
    assert _markers(hub) == []


def test_a_stop_waits_for_a_markers_removal_and_its_last_writes_together(
        hub, monkeypatch, log_events):
    # nothing in flight, but carol's attempt marker still being removed and
    # her delivery's record owed, on a hung disk: the two need nothing of
    # each other and are waited for together, CUT_GRACE at most for both
    # (one after the other, the stop was twice that)

    hub.runner.start()
    line, removals, pooled = _held_pool(hub)
    hub.queue._io = pooled
    carol = enqueue_unrecorded(hub, monkeypatch, CAROL)
    assert len(removals) == 1 and not hub.runner.active
    fired: list = []
    hub.runner.stop().addBoth(fired.append)
    assert len(line) == 1 and fired == []  # carol's last write, on its way
    hub.clock.advance(CUT_GRACE)
    assert fired == [None]
    said = [formatEvent(e) for e in log_events if "as the hub stops" in formatEvent(e)]
    assert len(said) == 1 and said[0].startswith(f"{carol}:")
    assert "not written within 2 s" in said[0]
    _run_pooled(line)  # its turn on a thread, after the stop: not made
    assert [r.address for r in hub.queue.read(carol).pending] == [CAROL]
    d, fn, args = removals.pop(0)
    d.callback(fn(*args))
    assert _markers(hub) == []


def test_an_entry_taken_before_the_queues_word_of_it_is_not_a_first_attempt(
        tmp_path, monkeypatch):
    """The queue's word of a new entry (``_event``) comes once its
    record's folder is synced; the runner may have taken the entry before
    (a ``mailhub queue`` change rescanning the folder, a start reading it)
    and tried it.  A retry after that word is no first attempt: the store
    looks for the copy an earlier attempt may have made."""
    from txmailhub.store.maildir import MaildirStore
    from txmailhub.testing import SyncerSpy

    joe = Address("joe", "example.org")
    h = make_hub(tmp_path)
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", SyncerSpy())
    h.components.store = store
    firsts = []
    real = store.deliver_keyed

    def spy(message, mailboxes, key, first=False):
        firsts.append(first)
        if len(firsts) == 1:  # the first attempt meets a full disk
            return defer.succeed({a: OSError(errno.ENOSPC, "no room") for a in mailboxes})
        return real(message, mailboxes, key, first=first)

    monkeypatch.setattr(store, "deliver_keyed", spy)
    with monkeypatch.context() as m:
        m.setattr(h.queue, "_notify", lambda queue_id: None)  # its word not come yet
        qid = enqueue(h, joe)
    h.runner.start()  # reads the queue: the entry taken, and tried
    assert firsts == [False] and h.queue.ids() == [qid]
    h.queue._notify(qid)  # the word of it, late
    h.clock.advance(3600)
    h.runner.stop()
    assert h.queue.ids() == [] and firsts == [False, False]


def test_cut_sessions_closing_late_leave_the_last_writes_a_floor_of_their_own(
        hub, monkeypatch, log_events):
    # a healthy disk (each record write takes 0.2 s) and cut sessions that
    # close 1.9 s after the grace: what bob's session settled, then carol's
    # owed record, each get LAST_WRITES_FLOOR of their own, not the 0.1 s
    # left of the one CUT_GRACE.  Skipped, they made a start in a new
    # process send both messages again (RFC 5321 6.1 takes a duplicate over
    # a loss, never over a write that needed 0.2 s); the stop stays
    # bounded: CUT_GRACE and two floors after its grace at most
    from txmailhub.relay.stopping import LAST_WRITES_FLOOR

    hub.runner.start()
    carol = enqueue_unrecorded(hub, monkeypatch, CAROL)
    pending = hub.agent.hold()
    closed: defer.Deferred = defer.Deferred()
    monkeypatch.setattr(hub.agent, "abort_all", lambda: closed)
    io = hub.queue._io

    def pooled(fn, *args):
        if fn != hub.queue.update_now:
            return io(fn, *args)
        d = defer.Deferred()

        def turn() -> None:  # (its thread: it runs even once not waited for)
            try:
                done = fn(*args)
            except Exception as e:
                done = Failure(e)
            if not d.called:
                d.callback(done)

        hub.clock.callLater(0.2, turn)
        return d

    monkeypatch.setattr(hub.queue, "_io", pooled)
    bob = enqueue(hub, BOB)
    assert len(pending) == 1
    fired: list = []
    hub.runner.stop().addBoth(fired.append)
    hub.clock.advance(SHUTDOWN_GRACE)
    hub.clock.advance(1.9)
    d, rcpts = pending.pop(0)
    d.callback([DeliveryResult(a, "delivered", OK, "mx") for a in rcpts])
    closed.callback(None)
    for _ in range(int((CUT_GRACE + 2 * LAST_WRITES_FLOOR) / 0.1) + 1):
        hub.clock.advance(0.1)
    assert fired == [None]
    assert not [e for e in log_events if "not written within" in formatEvent(e)]
    # both delivered and recorded so: their entries are done
    assert hub.queue.read(carol) is None and hub.queue.read(bob) is None


def _held_record_writes(hub) -> list:
    """From now on each new entry's record write (its ``.json.tmp``) waits
    in a line, as on a pool thread a slow disk holds: ``(Deferred,
    function, arguments)`` for the test to run."""
    line: list = []
    io = hub.queue._io

    def pooled(fn, *args):
        if fn != hub.queue.fs.write_file or not args[0].endswith(".json.tmp"):
            return io(fn, *args)
        d = defer.Deferred()
        line.append((d, fn, args))
        return d

    hub.queue._io = pooled
    return line


def test_a_restart_while_an_entry_is_stored_keeps_its_message(hub):
    # an SMTP session's DATA for a remote recipient being queued when the
    # embedding application restarts the relay: its message is linked,
    # its record not written yet.  The start's clean-up is for what a
    # crash left, not for what this process is still storing: the entry
    # commits (the client hears 250) with its message, and is delivered
    hub.runner.start()
    pending = hub.agent.hold()
    line = _held_record_writes(hub)
    path = hub.tmp / "spool-restart"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    queued = hub.queue.enqueue(Envelope(sender=ALICE, recipients=(BOB,)),
                               SpooledMessage(str(path), 20, 23))
    assert len(line) == 1 and not queued.called
    hub.runner.stop()
    hub.runner.start()
    _run_pooled(line)
    qid = queued.result
    assert os.path.exists(hub.queue.message_path(qid))
    assert hub.agent.calls == [(qid, "remote.test", [BOB])]
    _answer_all(pending)
    assert hub.queue.read(qid) is None  # delivered, and gone
    assert not os.path.exists(os.path.join(hub.settings.queue_dir, "corrupt"))


def test_a_restart_while_an_attempts_outcome_is_written_sends_nothing_twice(
        hub, monkeypatch):
    # the last run's attempt is over (bob took the message) and its
    # outcome's write waits for a pool thread when the relay is started
    # again in the process: the start's clean-up reads the record under
    # the queue's lock, which that write holds once it runs, and leaves
    # it be; the new run sends the message to bob no second time
    pending = hub.agent.hold()
    hub.runner.start()
    qid = enqueue(hub, BOB)
    line = _pooled_updates(hub, monkeypatch)
    _answer_all(pending)
    assert len(line) == 1  # bob delivered, not written yet
    hub.runner.stop()
    hub.runner.start()
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 1  # not sent again while it is written
    _run_pooled(line)
    for _ in range(3):
        hub.clock.advance(SHUTDOWN_GRACE)
        _run_pooled(line)
        _answer_all(pending)
    assert hub.agent.calls == [(qid, "remote.test", [BOB])]
    assert hub.queue.read(qid) is None
    assert [n for n in os.listdir(hub.settings.queue_dir) if qid in n] == []


def _held_commit_syncs(hub) -> list:
    """From now on each sync of the queue folder that holds a record
    waits in a line (the sync after a new entry's commit, on a slow
    disk): the Deferreds for the test to fire."""
    line: list = []
    fs = hub.queue.fs
    real = fs.sync_dir

    def sync_dir(path):
        if any(name.endswith(".json") for name in os.listdir(path)):
            d = defer.Deferred()
            line.append(d)
            return d
        return real(path)

    fs.sync_dir = sync_dir
    return line


@pytest.mark.parametrize("synced", [True, False])
def test_a_restart_after_an_entrys_commit_before_its_sync_sends_it_once(hub, synced):
    # the relay restarted while a new entry's record is renamed in place
    # but the queue folder's sync after it not over: the start found the
    # record and began delivering the entry.  When that sync then fails
    # the store takes the entry back and the client hears 451 and sends
    # the message again: a second copy.  The entry is the runner's once
    # its store is over, as without a restart
    hub.runner.start()
    pending = hub.agent.hold()
    syncs = _held_commit_syncs(hub)
    path = hub.tmp / "spool-restart"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    queued = hub.queue.enqueue(Envelope(sender=ALICE, recipients=(BOB,)),
                               SpooledMessage(str(path), 20, 23))
    assert len(syncs) == 1 and not queued.called
    hub.runner.stop()
    hub.runner.start()
    assert hub.agent.calls == []
    if synced:
        syncs.pop().callback(None)
        qid = queued.result
        assert hub.agent.calls == [(qid, "remote.test", [BOB])]
        _answer_all(pending)
        assert hub.queue.read(qid) is None  # delivered, and gone
    else:
        syncs.pop().errback(OSError(errno.EIO, "Input/output error"))
        assert isinstance(queued.result.value, OSError)  # the client hears 451
        queued.addErrback(lambda _: None)
        assert hub.agent.calls == [] and hub.queue.ids() == []
