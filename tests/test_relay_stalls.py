"""The relay's timers and a stall of the hub's reactor thread.

A timer runs before the reads of its reactor turn: after the thread was
held (a call blocked on a hung disk, ``fsfreeze``, the process stopped)
the reply the next hop sent meanwhile, or the room its socket made, is
still unread when the timer fires, and a command written just before the
stall left only after it.  ``conftest.stalled_turn`` stands for such a
stall: the clock jumps, then only the timed calls due run; what the
server sent is delivered by the test afterwards, as the turn's reads.
Ordinary time passes second by second (``Clock.pump``), so that the
stall record's heartbeat is never late but in a stall."""

from __future__ import annotations

import random

import pytest
from conftest import stalled_turn
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent

from tests.relay_fakes import FakeNetwork, FakeResolver
from tests.test_relay_attempt import BOB, ZONE, entry, settings
from tests.test_relay_body_timing import REPLIES, _HeldLink
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.relay.attempt import DeliveryAgent, SMTPClientProtocol
from txmailhub.relay.mx import MXResolver
from txmailhub.relay.service import RelayService
from txmailhub.smtp.client import ClientSession, Phase
from txmailhub.stalls import ReactorStalls
from txmailhub.testing import MemoryMailboxStore, StaticRouter

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")


def _client(tmp_path, stalls=True, body=b"Subject: x\n\nhello\n", replies=REPLIES):
    """A client session on a ``Clock`` with a running stall record (or
    none), fed ``replies``; its clock, protocol and transport."""
    (tmp_path / "m").write_bytes(body)
    clock = Clock()
    record = None
    if stalls:
        record = ReactorStalls(clock)
        record.startService()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)],
                            size=len(body), tls="none")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None,
                               str(tmp_path / "c"), stalls=record)
    transport = StringTransport()
    proto.makeConnection(transport)
    for reply in replies:
        proto.dataReceived(reply)
    return clock, proto, transport


def _timed_out(proto, transport) -> bool:
    if not transport.disconnecting:
        return False
    proto.connectionLost(None)
    return True


# --- the wait for a reply (RFC 5321 4.5.3.2) -----------------------------------------


def test_a_reply_that_came_during_a_stall_of_the_hub_is_read_not_timed_out(tmp_path):
    # MAIL written, then the hub's thread held for longer than MAIL's 5
    # minutes; the server's 250 waits in the socket meanwhile
    clock, proto, transport = _client(tmp_path, replies=REPLIES[:2])
    assert proto.session.phase is Phase.MAIL
    clock.pump([1] * 10)
    stalled_turn(clock, 400)
    proto.dataReceived(b"250 ok\r\n")  # the turn's reads
    assert not transport.disconnecting
    assert proto.session.phase is Phase.RCPT


def test_without_a_record_the_reply_read_after_a_stall_still_counts(tmp_path):
    # no stall record (a relay built without one): the second look one
    # turn later still reads what came during the stall first
    clock, proto, transport = _client(tmp_path, stalls=False, replies=REPLIES[:2])
    stalled_turn(clock, 400)
    assert not transport.disconnecting
    proto.dataReceived(b"250 ok\r\n")
    clock.advance(0)
    assert not transport.disconnecting and proto.session.phase is Phase.RCPT


def test_a_command_held_in_the_hub_by_a_stall_gets_the_stall_back(tmp_path):
    # MAIL written just before the stall left only after it: the server
    # could not answer within the stall; its 5 minutes are due later by
    # the time the record counted (399 s: it misses up to HEARTBEAT +
    # TOLERANCE of a stall), and it is cut only if it stays silent for them
    clock, proto, transport = _client(tmp_path, replies=REPLIES[:2])
    stalled_turn(clock, 400)
    clock.advance(0)  # the next turn: nothing came
    assert not transport.disconnecting
    clock.pump([1] * 298)  # t=698
    assert not transport.disconnecting
    clock.pump([1])  # t=699
    assert _timed_out(proto, transport)
    assert proto.done.result.session_error.text() == (
        "421 4.4.2 timeout waiting for the server (MAIL)")


def test_a_silent_server_is_still_timed_out_with_the_record_running(tmp_path):
    clock, proto, transport = _client(tmp_path, replies=REPLIES[:2])
    clock.pump([1] * 299)
    assert not transport.disconnecting
    clock.pump([1])
    assert _timed_out(proto, transport)
    assert proto.done.result.phase == Phase.MAIL.value


# --- the message data: the data block and MIN_DATA_RATE -----------------------------


def test_a_data_block_taken_during_a_stall_is_not_timed_out(tmp_path):
    # the socket drained during the stall; the transport says so (asks for
    # more) in the turn's reads, after the timers
    clock, proto, transport = _client(tmp_path, body=b"x" * 100_000)
    transport.producer.resumeProducing()
    stalled_turn(clock, 200)  # past the data block's 3 minutes
    transport.producer.resumeProducing()
    clock.advance(0)
    assert not transport.disconnecting and proto.session.phase is Phase.BODY


def _take_blocks(clock, transport, every, blocks):
    for _ in range(blocks):
        if transport.disconnecting or transport.producer is None:
            return
        clock.pump([1] * every)
        if transport.disconnecting or transport.producer is None:
            return
        transport.producer.resumeProducing()


def test_a_stall_of_the_hub_is_not_counted_against_the_data_rate(tmp_path):
    # 16 KiB every 50 s (328 octets a second): within the 300 s grace and
    # the data block's timeout, but at t=350 (7 blocks taken) the next hop
    # may only go on to t=300 + 7 * 16 = 412 at that pace; the hub then
    # stalls 100 s (no data goes meanwhile), and the next hop takes the
    # rest quickly
    clock, proto, transport = _client(tmp_path, body=b"x" * 200_000)
    transport.producer.resumeProducing()  # t=0
    _take_blocks(clock, transport, 50, 7)  # t=350
    stalled_turn(clock, 100)  # t=450: past 412
    clock.advance(0)
    assert not transport.disconnecting
    _take_blocks(clock, transport, 1, 100)
    assert not transport.disconnecting
    assert transport.producer is None and proto.session.phase is Phase.DATA_END


def test_a_slow_next_hop_is_still_cut_with_the_record_running(tmp_path, log_events):
    events = log_events
    clock, proto, transport = _client(tmp_path, body=b"x" * 200_000)
    transport.producer.resumeProducing()
    _take_blocks(clock, transport, 100, 3)  # t=300: 300 + 48 s allowed
    clock.pump([1] * 47)
    assert not transport.disconnecting
    clock.pump([1])
    assert _timed_out(proto, transport)
    assert proto.done.result.session_error.status == "4.4.2"
    assert any("took the message data too slowly (49152 octets in 348 s" in formatEvent(e)
               for e in events)


def test_the_time_of_a_stall_is_not_in_the_too_slow_verdict(tmp_path, log_events):
    # a slow next hop cut after a stall: the seconds it is told of are
    # its own, without the hub's stall
    events = log_events
    clock, proto, transport = _client(tmp_path, body=b"x" * 200_000)
    transport.producer.resumeProducing()
    _take_blocks(clock, transport, 100, 1)  # t=100
    stalled_turn(clock, 50)  # t=150, 49 s of it counted (the beat due at 101)
    clock.advance(0)
    _take_blocks(clock, transport, 100, 10)
    assert _timed_out(proto, transport)
    [line] = [formatEvent(e) for e in events if "too slowly" in formatEvent(e)]
    # at t=350 it had taken 3 blocks, which it may take until 300 + 48 s of
    # its own: t=397 with the stall; told as 348 s, the stall aside
    assert "(49152 octets in 348 s" in line, line


# --- the wiring: the hub's record reaches each session -----------------------------


def test_the_agent_gives_its_record_to_each_session(tmp_path):
    clock = Clock()
    record = ReactorStalls(clock)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=25,
                    rng=random.Random(0))
    link = _HeldLink()
    agent = DeliveryAgent(settings(tmp_path), mx, clock, endpoint=link.endpoint,
                          tls_options=lambda host, verify: None, stalls=record)
    agent.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    [proto] = agent._sessions
    assert proto.stalls is record


def test_the_relay_uses_the_components_stall_record(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n')
    clock = Clock()
    record = ReactorStalls(clock)
    for stalls in (record, None):
        c = Components(settings=load_text(cfg.read_text(), str(cfg)), reactor=clock,
                       router=StaticRouter({}), store=MemoryMailboxStore(), spooler=None,
                       portal=None, stalls=stalls)
        svc = RelayService(c, resolver=FakeResolver({}), endpoint=FakeNetwork(clock).endpoint,
                           rng=random.Random(0))
        svc.startService()
        try:
            assert svc.agent.stalls is stalls
        finally:
            svc.stopService()


# --- under TLS: the room the socket made comes through a timed call -----------------


class _TLSLikeTransport(StringTransport):
    """As Twisted's TLS layer: a pull producer is driven by a cooperator's
    ticks, timed calls, not from the reads.  When the socket under it
    drains (``drained``, in a turn's I/O), the producer is asked for more
    in a timed call that I/O made for at once -- run in the next turn."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def drained(self):
        self.clock.callLater(0, self.producer.resumeProducing)


def _tls_like_client(tmp_path, body):
    """``_client``'s session at DATA, without a stall record, on a
    ``_TLSLikeTransport``."""
    (tmp_path / "m").write_bytes(body)
    clock = Clock()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)],
                            size=len(body), tls="none")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None,
                               str(tmp_path / "c"))
    transport = _TLSLikeTransport(clock)
    proto.makeConnection(transport)
    for reply in REPLIES:
        proto.dataReceived(reply)
    return clock, proto, transport


def _drained_during_the_stall(clock, transport, tls_like):
    """The turn after a stall: its I/O a moment after its timed calls finds
    the socket drained; a plain transport asks for more then and there, a
    TLS one in a timed call; then the next turn's timed calls."""
    clock.rightNow += 0.001
    if tls_like:
        transport.drained()
    else:
        transport.producer.resumeProducing()
    stalled_turn(clock, 0.001)  # the next turn's timed calls


@pytest.mark.parametrize("tls_like", [False, True])
def test_a_data_block_taken_during_a_stall_is_not_timed_out_under_tls_either(tmp_path,
                                                                            tls_like):
    # no record: only the second look keeps the data block's 3 minutes
    # from cutting a next hop whose socket drained while the hub was held
    clock, proto, transport = _tls_like_client(tmp_path, b"x" * 100_000)
    transport.producer.resumeProducing()  # t=0, the first chunk
    stalled_turn(clock, 200)  # past the data block's 3 minutes
    _drained_during_the_stall(clock, transport, tls_like)
    assert not transport.disconnecting
    clock.advance(0)
    assert not transport.disconnecting and proto.session.phase is Phase.BODY


@pytest.mark.parametrize("tls_like", [False, True])
def test_a_data_rate_kept_but_for_a_stall_is_not_cut_under_tls_either(tmp_path, tls_like):
    # no record: 16 KiB every 50 s, then at t=350 (due at 300 + 7 * 16 =
    # 412) the hub is held 100 s; the socket drained meanwhile, and the
    # 16 s the next chunk is worth would have come in time
    clock, proto, transport = _tls_like_client(tmp_path, b"x" * 200_000)
    transport.producer.resumeProducing()  # t=0
    _take_blocks(clock, transport, 50, 7)  # t=350
    stalled_turn(clock, 65)  # t=415: past 412, the data block not due (530)
    _drained_during_the_stall(clock, transport, tls_like)
    assert not transport.disconnecting
    clock.advance(0)
    assert not transport.disconnecting and proto.session.phase is Phase.BODY
