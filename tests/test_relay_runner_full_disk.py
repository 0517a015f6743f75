"""The queue runner when its records cannot be written (a full disk, a
quota, an I/O error): what it keeps in memory only, and what a stop and a
start in a new process make of it.  A fake agent, a real queue directory
and a Clock; each write fails by a patched ``update`` (``OSError``)."""

from __future__ import annotations

import dataclasses
import errno

import pytest
from twisted.internet import defer
from twisted.logger import formatEvent

from tests.test_relay_runner import (
    BOB,
    CAROL,
    LATER,
    NO,
    OK,
    _held_updates,
    _write_held,
    enqueue,
    make_hub,
    next_runner,
)
from txmailhub.address import Address
from txmailhub.envelope import Envelope
from txmailhub.relay import bounce, recording
from txmailhub.relay.attempt import DeliveryResult
from txmailhub.relay.record import BOUNCED, FAILED, PENDING, QueueEntry
from txmailhub.relay.runner import CUT_GRACE, SHUTDOWN_GRACE


@pytest.fixture
def hub(tmp_path):
    h = make_hub(tmp_path)
    yield h
    h.runner.stop()


def failing_writes(hub, monkeypatch, after: int = 0, error: int = errno.ENOSPC) -> list[int]:
    """Queue record updates fail with ``OSError(error)`` from the
    ``after``-th one on, as many times as the returned list's ``[0]``
    says (set it to 0 for the disk to have room again); ``[1]`` counts
    the updates asked for."""
    real = hub.queue.update
    state = [1 << 30, 0]

    def update(qid, change):
        state[1] += 1
        if state[1] > after and state[0] > 0:
            state[0] -= 1
            return defer.fail(OSError(error, "No space left on device"))
        return real(qid, change)

    monkeypatch.setattr(hub.queue, "update", update)
    return state


def bob_delivered_carol(kind: str, reply):
    """An agent script: bob's copy is taken, carol's gets ``kind``."""
    def script(entry, dest, rcpts):
        return [DeliveryResult(a, "delivered" if a == BOB else kind,
                               OK if a == BOB else reply, "mx") for a in rcpts]
    return script


def error_lines(log_events) -> list[str]:
    return [formatEvent(e) for e in log_events
            if e.get("log_level") is not None and e["log_level"].name == "error"]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_an_outcome_unwritten_at_a_stop_is_written_then_and_a_new_process_sends_no_copy_again(
        hub, monkeypatch, error):
    # bob's copy is taken, carol's deferred; the record saying so cannot
    # be written (the disk full, a quota, an I/O error), nor at the tries
    # after.  The runner delivers nothing more meanwhile.  Then the disk
    # has room, and the hub stops before the next try: the stop writes it.
    # It wrote nothing: a start in a new process (which has only the
    # records) sent bob a second copy
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch, error=error)
    qid = enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2
    for _ in range(3):
        hub.clock.advance(60)  # each try of the write fails; no delivery
    assert len(hub.agent.calls) == 2 and qid in hub.runner._unrecorded
    assert fails[1] == 5  # bob's destination's own write, the attempt's, 3 tries
    fails[0] = 0  # room again
    hub.runner.stop()
    entry = hub.queue.read(qid)
    assert [r.address for r in entry.pending] == [CAROL]
    monkeypatch.undo()
    with next_runner(hub) as agent:
        hub.clock.advance(1)
    assert agent.calls == [(qid, "other.test", [CAROL])]


def test_a_stop_that_cannot_write_an_outcome_says_who_a_new_process_sends_it_again(
        hub, monkeypatch, log_events):
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("permanent", NO)
    failing_writes(hub, monkeypatch)
    qid = enqueue(hub, BOB, CAROL)
    del log_events[:]
    hub.runner.stop()
    lines = error_lines(log_events)
    assert lines == [
        f"{qid}: its record cannot be written as the hub stops ([Errno 28] No space left "
        "on device): "
        "a start in a new process sends the message again to bob@remote.test; tries "
        "carol@other.test again (refused for good)"], lines
    assert [r.state for r in hub.queue.read(qid).recipients] == [PENDING, PENDING]


def test_a_notice_whose_record_cannot_be_written_holds_the_entrys_next_delivery(
        hub, monkeypatch, log_events):
    # carol is refused for good, bob deferred: the failure notice is sent,
    # and the record saying so cannot be written.  Each try of the entry
    # writes that first, and delivers nothing while it fails: a delivery
    # made meanwhile whose outcome could not be written either left two
    # outcomes in memory only.  (It was made at the first try, a minute
    # later, before bob's retry was due.)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    fails = failing_writes(hub, monkeypatch, after=2)  # the outcome is written
    qid = enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2 and len(hub.dsn.sent) == 1
    assert hub.queue.read(qid).recipient(CAROL).state == FAILED
    for _ in range(30):
        hub.clock.advance(60)
    assert len(hub.agent.calls) == 2 and len(hub.dsn.sent) == 1
    assert hub.queue.read(qid).recipient(CAROL).state == FAILED
    # a stop that cannot write it either says the notice goes again
    del log_events[:]
    hub.runner.stop()
    assert error_lines(log_events) == [
        f"{qid}: its record cannot be written as the hub stops ([Errno 28] No space left "
        "on device): "
        "a start in a new process sends the failed notice for carol@other.test to "
        "<alice@example.org> again"]
    fails[0] = 0
    hub.runner.start()
    hub.clock.advance(1)
    assert hub.queue.read(qid).recipient(CAROL).state == BOUNCED
    hub.clock.advance(3600)
    later = [c[2] for c in hub.agent.calls[2:]]  # bob's retries, carol's done
    assert later and all(rcpts == [BOB] for rcpts in later), later
    assert len(hub.dsn.sent) == 1


def test_a_notice_unwritten_at_a_stop_is_written_then(hub, monkeypatch):
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    fails = failing_writes(hub, monkeypatch, after=2)
    qid = enqueue(hub, BOB, CAROL)
    fails[0] = 0
    hub.runner.stop()
    assert hub.queue.read(qid).recipient(CAROL).state == BOUNCED
    monkeypatch.undo()
    with next_runner(hub):
        hub.clock.advance(3600)
    assert len(hub.dsn.sent) == 1


def _entry(*states: str, notice: str | None = None, delay_warned: bool = False) -> QueueEntry:
    rcpts = tuple(Address(f"r{i}", "remote.test") for i in range(len(states)))
    e = QueueEntry.new("0123456789ABCDEF", Envelope(sender=Address("s", "example.org"),
                                                    recipients=rcpts), 0.0)
    return dataclasses.replace(e, delay_warned=delay_warned, recipients=tuple(
        dataclasses.replace(r, state=s, notice=notice if s == "delivered" else None)
        for r, s in zip(e.recipients, states, strict=True)))


def test_which_notices_a_record_still_owes_and_the_change_that_says_them_sent():
    e = _entry(FAILED, "delivered", PENDING, notice=bounce.DELIVERED)
    r0, r1, r2 = (r.address for r in e.recipients)
    told = {(bounce.FAILED, r0), (bounce.DELIVERED, r1), (bounce.DELAYED, r2)}
    assert {t for t in told if recording.notice_owed(e, *t)} == told
    assert not recording.notice_owed(e, bounce.FAILED, r2)
    assert not recording.notice_owed(e, bounce.RELAYED, r1)
    assert not recording.notice_owed(e, bounce.FAILED, Address("x", "remote.test"))
    written = recording.told_written(told)(e)
    assert [(r.state, r.notice) for r in written.recipients] == [
        (BOUNCED, None), ("delivered", None), (PENDING, None)]
    assert written.delay_warned
    assert not any(recording.notice_owed(written, *t) for t in told)
    # a change of nothing told changes nothing
    assert recording.told_written(set())(e) == e
    # each notice says only its own: a failure notice's recipient that is
    # no longer failed (the record changed since) stays as it is, and
    # only the "delayed" warning says the warning was given
    assert recording.told_written({(bounce.FAILED, r2)})(e) == e
    failed_only = recording.told_written({(bounce.FAILED, r0)})(e)
    assert failed_only.recipient(r0).state == BOUNCED and not failed_only.delay_warned
    assert recording.told_written({(bounce.DELIVERED, r1)})(e).delay_warned is False


@pytest.mark.parametrize("error", [errno.EDQUOT, errno.ENOSPC])
def test_a_write_refused_for_room_holds_the_other_entries_attempts_as_a_full_disk_does(
        hub, monkeypatch, log_events, error):
    # the hub's quota is used up: statvfs shows room, every record's write
    # fails with EDQUOT.  The first entry's outcome is kept in memory; a
    # second entry was attempted all the same, and a third, each outcome
    # in memory only (a crash: every copy sent again).  They wait now, as
    # for a full queue folder, until a record is written again
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch, error=error)
    first = enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2 and first in hub.runner._unrecorded
    del log_events[:]
    second = enqueue(hub, BOB, CAROL)
    for _ in range(120):
        hub.clock.advance(1)
    assert len(hub.agent.calls) == 2
    warned = [formatEvent(e) for e in log_events if "has no room" in e.get("log_format", "")]
    assert len(warned) == 1 and "a record's write was refused" in warned[0], warned
    fails[0] = 0  # the quota has room again
    hub.clock.advance(60)  # the first's outcome is written at its next try
    assert first not in hub.runner._unrecorded
    hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls[2:]] == [second, second]
    assert any("has room again" in e.get("log_format", "") for e in log_events)


@pytest.mark.parametrize("held", [False, True])
def test_after_a_minute_of_refused_writes_one_attempt_finds_out_not_every_waiting_one(
        hub, monkeypatch, held):
    # the quota is used up (statvfs shows room) and the writes run on a
    # thread, as in the hub: a refusal is known a moment after the write
    # began.  The first entry's outcome waits in memory (its write tried
    # each minute; or the entry is held, `mailhub queue hold`, and it is
    # not).  Three entries wait.  A minute after the refusal one attempt
    # finds out again (relay.rst) -- not all three at once, each a copy
    # delivered whose outcome cannot be written either (a crash: sent
    # again); the others wait for what its write says
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    real = hub.queue.update
    refusing = [True]

    def update(qid, change):
        if not refusing[0]:
            return real(qid, change)
        d = defer.Deferred()
        hub.clock.callLater(0, d.errback, OSError(errno.EDQUOT, "Disk quota exceeded"))
        return d

    monkeypatch.setattr(hub.queue, "update", update)
    first = enqueue(hub, BOB, CAROL)
    hub.clock.advance(0)
    assert first in hub.runner._unrecorded and len(hub.agent.calls) == 2
    if held:
        hub.queue.set_held(first, True)
        hub.runner._event(first)
    waiting = [enqueue(hub, BOB, CAROL) for _ in range(3)]
    assert len(hub.agent.calls) == 2
    for _ in range(61):
        hub.clock.advance(1)
    tried = {c[0] for c in hub.agent.calls[2:]}
    assert len(tried) == 1 and tried <= set(waiting), hub.agent.calls[2:]
    # refused again: the next finds out a minute later, one at a time
    for _ in range(60):
        hub.clock.advance(1)
    again = {c[0] for c in hub.agent.calls[2:]} - tried
    assert len(again) == 1 and again <= set(waiting), hub.agent.calls[2:]
    # the quota has room: the next attempt's write lands, and the one
    # left goes at once
    refusing[0] = False
    for _ in range(61):
        hub.clock.advance(1)
    assert {c[0] for c in hub.agent.calls[2:]} == set(waiting)


def test_the_stops_last_writes_are_made_together_two_seconds_at_most_in_all(
        hub, monkeypatch):
    # three entries' outcomes are in memory only (an I/O error); at the
    # stop the disk hangs: each last write waits 2 s at most, and they are
    # made together -- the stop is over 2 s after it began them, not 6
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    failing_writes(hub, monkeypatch, error=errno.EIO)
    qids = [enqueue(hub, BOB, CAROL) for _ in range(3)]
    assert all(qid in hub.runner._unrecorded for qid in qids)
    begun = []
    monkeypatch.setattr(hub.queue, "update",
                        lambda qid, change: begun.append(qid) or defer.Deferred())
    fired = []
    hub.runner.stop().addBoth(fired.append)
    assert sorted(begun) == sorted(qids) and fired == []
    hub.clock.advance(1.9)
    assert fired == []
    hub.clock.advance(0.1)
    assert fired == [None]


def test_a_stop_reads_no_record_for_notices_whose_record_was_written(hub, monkeypatch):
    # carol refused for good, bob deferred: the failure notice is sent and
    # written.  The runner keeps no memory of it then, and the stop's last
    # writes read no record of it (a queue of thousands of entries each
    # with a notice of this run -- a day's "delayed" warnings -- read one
    # by one in the reactor at every stop, for nothing to write)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    qids = [enqueue(hub, BOB, CAROL) for _ in range(3)]
    assert len(hub.dsn.sent) == 3
    assert all(hub.queue.read(q).recipient(CAROL).state == BOUNCED for q in qids)
    assert hub.runner._notified == {}
    reads = []
    real = hub.queue.read
    monkeypatch.setattr(hub.queue, "read", lambda qid: reads.append(qid) or real(qid))
    hub.runner.stop()
    assert reads == []


def test_a_last_write_not_begun_within_the_stops_wait_is_never_made(hub, monkeypatch):
    # the record writes run on the reactor's threads, a few at once: on a
    # disk that hangs, the stop's last writes wait in the pool's line.  The
    # stop is over 2 s on (its state directory another hub's); a write
    # that had not begun by then must not begin after (embedding.rst: no
    # write of this hub starts once the stop's Deferred has fired)
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch, error=errno.EIO)
    qid = enqueue(hub, BOB, CAROL)
    assert qid in hub.runner._unrecorded
    fails[0] = 0  # the disk works again, but slowly: jobs wait for a thread
    line: list = []

    def pooled(fn, *args):
        d = defer.Deferred()
        line.append((d, fn, args))
        return d

    monkeypatch.setattr(hub.queue, "_io", pooled)
    fired = []
    hub.runner.stop().addBoth(fired.append)
    assert len(line) == 1 and fired == []
    hub.clock.advance(2)
    assert fired == [None]
    d, fn, args = line.pop()
    try:
        d.callback(fn(*args))  # its turn on a thread, after the stop
    except Exception as e:
        d.errback(e)
    # the record as the stop left it: bob still pending (a new process
    # sends him the message again, as the stop's error line said)
    assert [r.address for r in hub.queue.read(qid).pending] == [BOB, CAROL]


def test_a_last_write_that_times_out_is_said_so(hub, monkeypatch, log_events):
    # the disk hangs at the stop: the line says the write was not made in
    # time, not the timeout's own words ("(2, 'Deferred')")
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    failing_writes(hub, monkeypatch, error=errno.EIO)
    qid = enqueue(hub, BOB, CAROL)
    monkeypatch.setattr(hub.queue, "update", lambda qid, change: defer.Deferred())
    del log_events[:]
    hub.runner.stop()
    hub.clock.advance(2)
    assert error_lines(log_events) == [
        f"{qid}: its record cannot be written as the hub stops, not written within 2 s "
        "(unless that write still lands): a start in a new process sends the message again "
        "to bob@remote.test"]


def test_a_notice_whose_record_was_written_is_not_written_again(hub, monkeypatch):
    # carol's failure notice is sent and its record written: bob's retries
    # later write their own outcomes only, nothing for the notice told
    # long ago (a write the disk may not have room for, held in front of
    # each of them)
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    qid = enqueue(hub, BOB, CAROL)
    assert len(hub.dsn.sent) == 1
    assert hub.queue.read(qid).recipient(CAROL).state == BOUNCED
    writes = failing_writes(hub, monkeypatch)
    writes[0] = 0  # none fails: counted only
    calls = len(hub.agent.calls)
    hub.clock.advance(3600)  # bob's retries
    retries = hub.agent.calls[calls:]
    assert retries and all(c[2] == [BOB] for c in retries), retries
    assert writes[1] == len(retries)  # one write each: its outcome
    assert len(hub.dsn.sent) == 1


def _carol_refused_notice_unwritten(hub, monkeypatch) -> str:
    """Carol refused for good, bob deferred: the failure notice is sent and
    its record's write fails; the disk has room again from here on."""
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    fails = failing_writes(hub, monkeypatch, after=2)
    qid = enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2 and len(hub.dsn.sent) == 1
    assert hub.queue.read(qid).recipient(CAROL).state == FAILED
    fails[0] = 0
    monkeypatch.undo()
    return qid


def test_the_notice_owed_is_the_first_write_once_the_disk_has_room(hub, monkeypatch):
    qid = _carol_refused_notice_unwritten(hub, monkeypatch)
    real = hub.queue.update
    written: list = []

    def update(q, change):
        return real(q, change).addCallback(lambda e: written.append(e) or e)

    monkeypatch.setattr(hub.queue, "update", update)
    hub.clock.advance(60)  # the entry's next try
    assert written and written[0].id == qid and written[0].recipient(CAROL).state == BOUNCED
    assert len(hub.dsn.sent) == 1


def test_a_try_given_up_in_its_owed_notices_write_goes_on_at_once_after_a_start(
        tmp_path, monkeypatch):
    # the entry's try (a minute on) writes the notice's record first, on a
    # slow disk; the hub's stop gives it up in that write, and a start
    # comes before the write ends.  Once it lands, the entry is tried at
    # once by the new run, as the try would have gone on without the stop
    # -- not left for bob's retry ten minutes on (the record's time, which
    # the start read)
    hub = make_hub(tmp_path, 'max_per_destination = 1\nqueue_lifetime = "1d"\n'
                             'retry_schedule = ["10m"]\n')
    try:
        qid = _carol_refused_notice_unwritten(hub, monkeypatch)
        held = _held_updates(hub, monkeypatch)
        hub.clock.advance(60)  # the entry's next try: the notice's record first
        assert len(held) == 1 and qid in hub.runner.active
        calls = len(hub.agent.calls)
        fired: list = []
        hub.runner.stop().addBoth(fired.append)
        hub.clock.advance(SHUTDOWN_GRACE)  # given up
        hub.clock.advance(CUT_GRACE)  # (the stop's last write of the notice, held too)
        assert fired == [None]
        hub.runner.start()
        assert len(hub.agent.calls) == calls  # (the entry still under way)
        _write_held(hub, held)
        assert hub.queue.read(qid).recipient(CAROL).state == BOUNCED
        assert [c[2] for c in hub.agent.calls[calls:]] == [[BOB]]
    finally:
        hub.runner.stop()


def test_a_try_given_up_in_its_owed_notices_write_is_not_said_done_when_deleted_meanwhile(
        hub, monkeypatch, log_events):
    # as above, with `mailhub queue delete` while the hub was stopped: the
    # write finds no record once it runs, after the start.  The log says
    # the entry was deleted -- not that it was done, which the given-up
    # try, gone on as if no stop had come, said
    qid = _carol_refused_notice_unwritten(hub, monkeypatch)
    held = _held_updates(hub, monkeypatch)
    hub.clock.advance(60)
    assert len(held) == 1 and qid in hub.runner.active
    hub.runner.stop()
    hub.clock.advance(SHUTDOWN_GRACE)
    hub.clock.advance(CUT_GRACE)
    assert hub.queue.delete(qid)
    hub.runner.start()
    del log_events[:]
    _write_held(hub, held)
    said = [formatEvent(e) for e in log_events if qid in formatEvent(e)]
    assert said == [f"queue entry {qid} deleted (mailhub queue delete): no more attempts, "
                    "no notice"], said
    assert qid not in hub.runner.due and qid not in hub.runner.active


def test_an_entry_held_while_its_owed_notice_is_written_is_not_delivered(hub, monkeypatch):
    # `mailhub queue hold` while the notice's record is written, before
    # the delivery that write holds back: the entry is held, bob's copy
    # not sent
    qid = _carol_refused_notice_unwritten(hub, monkeypatch)
    real = hub.queue.update
    held: list = []

    def update(q, change):
        d = defer.Deferred()
        held.append(lambda: real(q, change).chainDeferred(d))
        return d

    monkeypatch.setattr(hub.queue, "update", update)
    hub.clock.advance(60)  # the entry's next try: the notice's record first
    assert len(held) == 1 and qid in hub.runner.active
    hub.queue.set_held(qid, True)
    held[0]()
    hub.clock.advance(1)
    assert len(hub.agent.calls) == 2
    assert hub.queue.read(qid).recipient(CAROL).state == BOUNCED
    assert qid in hub.runner._held and qid not in hub.runner.due


def test_a_stop_that_cannot_read_the_record_still_names_the_notice_sent_again(
        hub, monkeypatch, log_events):
    # the record cannot be read as the hub stops either (an I/O error):
    # the notices told are named all the same, to "the sender"
    qid = _carol_refused_notice_unwritten(hub, monkeypatch)
    failing_writes(hub, monkeypatch)

    def read(q):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hub.queue, "read", read)
    del log_events[:]
    hub.runner.stop()
    assert error_lines(log_events) == [
        f"{qid}: its record cannot be written as the hub stops ([Errno 28] No space left "
        "on device): "
        "a start in a new process sends the failed notice for carol@other.test to "
        "the sender again"]


def test_a_stop_names_each_kind_of_notice_sent_again_with_its_own_recipients(
        hub, monkeypatch, log_events):
    # carol's failure notice: its record's write lands, then reports an
    # error (an fsync after the rename), so the runner still remembers the
    # notice.  Four hours on, bob's "delayed" warning is sent and its
    # record cannot be written (a full disk); at the stop the record cannot
    # be read either (an I/O error): both notices are named as sent again,
    # each with its own recipient -- not both recipients for each
    from twisted.python.failure import Failure

    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    real = hub.queue.update
    bounced: list = []

    def update(q, change):
        def checked(e):
            new = change(e)
            if new is not None and new.delay_warned and not e.delay_warned:
                raise OSError(errno.ENOSPC, "No space left on device")
            if (new is not None and e.recipient(CAROL).state == FAILED
                    and new.recipient(CAROL).state == BOUNCED):
                bounced.append(True)
            return new

        def landed(result):
            if bounced == [True]:
                bounced.append(False)  # once
                return Failure(OSError(errno.EIO, "Input/output error"))
            return result

        return real(q, checked).addCallback(landed)

    monkeypatch.setattr(hub.queue, "update", update)
    qid = enqueue(hub, BOB, CAROL)
    assert len(hub.dsn.sent) == 1 and hub.queue.read(qid).recipient(CAROL).state == BOUNCED
    for _ in range(5 * 60):
        hub.clock.advance(60)  # bob's retries, past the delay warning's 4 hours
    assert len(hub.dsn.sent) == 2 and not hub.queue.read(qid).delay_warned

    def read(q):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hub.queue, "read", read)
    del log_events[:]
    hub.runner.stop()
    assert error_lines(log_events) == [
        f"{qid}: its record cannot be written as the hub stops ([Errno 5] Input/output "
        "error): a start in a new process sends the delayed notice for "
        "bob@remote.test to the sender again; sends the failed notice for carol@other.test "
        "to the sender again"]


def test_a_stop_writes_nothing_for_an_outcome_whose_write_landed_though_it_failed(
        hub, monkeypatch, log_events):
    # bob's copy is taken; the write of that outcome lands, then reports an
    # error (an fsync after the rename): bob stays in memory, but the
    # record says him delivered.  A stop that cannot write does not name
    # him as sent again, nor does it write for him
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    real = hub.queue.update

    def update(q, change):
        return real(q, change).addCallback(
            lambda _: defer.fail(OSError(errno.EIO, "Input/output error")))

    monkeypatch.setattr(hub.queue, "update", update)
    qid = enqueue(hub, BOB, CAROL)
    assert qid in hub.runner._unrecorded
    assert hub.queue.read(qid).recipient(BOB).state == "delivered"
    fails = failing_writes(hub, monkeypatch)
    del log_events[:]
    hub.runner.stop()
    assert error_lines(log_events) == [] and fails[1] == 0


def test_a_stop_writes_the_outcomes_for_good_and_keeps_a_deferred_one_for_the_next_try(
        hub, monkeypatch):
    # bob's copy is taken, carol's deferred, neither written; the stop
    # writes bob's (what a new process would send again).  Carol's deferral
    # stays in memory: a start in the same process writes it at its try,
    # and does not try carol again before her retry is due
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch)
    qid = enqueue(hub, BOB, CAROL)
    fails[0] = 0
    hub.runner.stop()
    entry = hub.queue.read(qid)
    assert entry.recipient(BOB).state == "delivered"
    assert entry.recipient(CAROL).attempts == 0
    assert [r.kind for r in hub.runner._unrecorded[qid]] == ["transient"]
    hub.runner.start()
    hub.clock.advance(1)
    carol = hub.queue.read(qid).recipient(CAROL)
    assert carol.attempts == 1 and carol.last_reply == LATER
    assert len(hub.agent.calls) == 2


def test_an_outcome_the_stop_writes_is_logged_as_written_then(hub, monkeypatch, log_events):
    # the result line of bob's delivery, said when its record is written:
    # by the stop's last write here
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch)
    qid = enqueue(hub, BOB, CAROL)
    fails[0] = 0
    del log_events[:]
    hub.runner.stop()
    said = [formatEvent(e) for e in log_events
            if e.get("log_format", "").startswith("{queue_id} to {recipient}:")]
    assert len(said) == 1 and said[0].startswith(f"{qid} to bob@remote.test: "), said


def test_a_write_refused_for_room_holds_attempts_a_minute_then_one_finds_out_again(
        hub, monkeypatch):
    # the entry whose write was refused (a quota) is deleted, so no
    # outcome waits in memory to be written and end the wait: a minute
    # after the refusal an attempt may begin all the same, and finds out
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch, error=errno.EDQUOT)
    first = enqueue(hub, BOB, CAROL)
    assert first in hub.runner._unrecorded
    fails[0] = 0  # the quota has room again
    assert hub.queue.delete(first)
    second = enqueue(hub, BOB, CAROL)
    assert len(hub.agent.calls) == 2  # held: a write was refused just now
    for _ in range(65):
        hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls[2:]] == [second, second]


def test_a_record_written_after_a_refusal_for_room_lets_attempts_go_on_at_once(
        hub, monkeypatch):
    # the quota has room again, and the first entry's outcome is written
    # (a queue flush tries it at once): the second entry, held by the
    # refusal of a moment ago, is attempted at once, not a minute after
    # the refusal
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    fails = failing_writes(hub, monkeypatch, error=errno.EDQUOT)
    first = enqueue(hub, BOB, CAROL)
    second = enqueue(hub, BOB, CAROL)
    assert [c[0] for c in hub.agent.calls] == [first, first]
    fails[0] = 0
    hub.queue.request_flush()
    for _ in range(3):
        hub.clock.advance(1)
    assert first not in hub.runner._unrecorded
    assert [c[0] for c in hub.agent.calls[2:]] == [second, second]


def test_a_removal_after_a_refusal_for_room_tells_nothing_of_room(hub, monkeypatch):
    # the refused write was the first entry's last outcome: written at its
    # flush, it removes the record, which needs no room and so says
    # nothing of the quota.  The second entry waits out the minute
    hub.runner.start()
    fails = failing_writes(hub, monkeypatch, error=errno.EDQUOT)
    first = enqueue(hub, BOB)
    second = enqueue(hub, BOB, CAROL)
    assert [c[0] for c in hub.agent.calls] == [first]
    fails[0] = 0
    hub.queue.request_flush()
    for _ in range(3):
        hub.clock.advance(1)
    assert hub.queue.read(first) is None and len(hub.agent.calls) == 1
    for _ in range(60):
        hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls[1:]] == [second, second]


def test_a_write_failing_otherwise_than_for_room_holds_no_other_entry(hub, monkeypatch):
    # an I/O error says nothing of room: the second entry is attempted as
    # it comes (its outcome kept in memory too, if its write fails)
    hub.runner.start()
    hub.agent.script = bob_delivered_carol("transient", LATER)
    failing_writes(hub, monkeypatch, error=errno.EIO)
    first = enqueue(hub, BOB, CAROL)
    assert first in hub.runner._unrecorded
    second = enqueue(hub, BOB, CAROL)
    hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls] == [first, first, second, second]


def test_a_notices_record_refused_for_room_holds_the_other_entries_attempts(
        hub, monkeypatch):
    # the write refused for want of room (a quota) is the failure notice's
    # record, not an outcome's: the other entries wait all the same
    hub.runner.start()
    hub.agent.script = lambda e, d, r: [
        DeliveryResult(a, "permanent" if a == CAROL else "transient",
                       NO if a == CAROL else LATER, "mx") for a in r]
    fails = failing_writes(hub, monkeypatch, after=2, error=errno.EDQUOT)
    first = enqueue(hub, BOB, CAROL)
    assert len(hub.dsn.sent) == 1 and first not in hub.runner._unrecorded
    second = enqueue(hub, BOB, CAROL)
    for _ in range(30):
        hub.clock.advance(1)
    assert [c[0] for c in hub.agent.calls] == [first, first]
    fails[0] = 0
    hub.clock.advance(60)  # the notice's record is written, and the wait ends
    assert [c[0] for c in hub.agent.calls[2:]].count(second) == 2
