"""The message data's timers: the wait for the reply to the final "."
starts when the transport took it, not when it was written (RFC 5321
4.5.3.2.5, 4.5.3.2.6)."""

from __future__ import annotations

import errno
import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from tests.relay_fakes import FakeResolver
from tests.test_relay_attempt import BOB, ZONE, entry, settings
from txmailhub.relay.attempt import DeliveryAgent, SMTPClientProtocol, _maybe_delivered
from txmailhub.relay.mx import MXResolver
from txmailhub.smtp.client import ClientSession, Phase

REPLIES = (b"220 hi\r\n", b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")


def _client(tmp_path, body=b"Subject: x\n\nhello\n"):
    (tmp_path / "m").write_bytes(body)
    clock = Clock()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)],
                            size=len(body), tls="none")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None, str(tmp_path / "c"))
    transport = StringTransport()
    proto.makeConnection(transport)
    for reply in REPLIES:
        proto.dataReceived(reply)
    return clock, proto, transport


def _write_until_the_dot(transport):
    """The transport asks for data until the final "." is written (a
    StringTransport never asks by itself: each call stands for "all I was
    given is sent")."""
    for _ in range(1000):
        if transport.value().endswith(b"\r\n.\r\n"):
            return
        transport.producer.resumeProducing()
    raise AssertionError("the final dot was never written")


def test_the_dot_still_in_the_buffer_is_timed_as_a_data_block(tmp_path):
    # the "." is written but the transport has not taken it (a server that
    # reads slowly): still the data block's 3 minutes, and a timeout then
    # is no "the server may have the message" (it cannot have the ".")
    clock, proto, transport = _client(tmp_path)
    _write_until_the_dot(transport)
    assert proto.session.phase is Phase.BODY
    clock.advance(179)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.phase == Phase.BODY.value
    assert not _maybe_delivered(outcome)


def test_the_reply_wait_starts_once_the_transport_took_the_dot(tmp_path):
    clock, proto, transport = _client(tmp_path)
    _write_until_the_dot(transport)
    clock.advance(170)  # the "." waits in the buffer nearly a data block's time
    transport.producer.resumeProducing()  # ... then it is sent
    assert transport.producer is None
    assert proto.session.phase is Phase.DATA_END
    clock.advance(599)  # RFC 5321 4.5.3.2.6: 10 minutes from then on
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.phase == Phase.DATA_END.value and _maybe_delivered(outcome)


def test_a_reply_to_the_dot_before_the_transport_said_it_took_it_counts(tmp_path):
    # a transport that asks its producer for more only at its idle times
    # (the in-memory one of the tests) can deliver the server's reply first
    _, proto, transport = _client(tmp_path)
    _write_until_the_dot(transport)
    proto.dataReceived(b"250 2.0.0 queued\r\n")
    assert transport.producer is None
    assert [r.kind for r in proto.session.outcome.recipients] == ["delivered"]
    assert transport.value().endswith(b"QUIT\r\n")


class _HeldLink:
    """Endpoints whose server answers every command but takes message data
    only when the test says so (``link.transports[i].producer``)."""

    def __init__(self):
        self.transports: list[StringTransport] = []
        self.connections: list[str] = []

    def endpoint(self, host, port):
        link = self

        class Endpoint:
            def connect(self, factory):
                link.connections.append(host)
                proto = factory.buildProtocol(None)
                transport = StringTransport()
                proto.makeConnection(transport)
                link.transports.append(transport)
                for reply in REPLIES:
                    proto.dataReceived(reply)
                return defer.succeed(proto)

        return Endpoint()


def _held_agent(tmp_path):
    """An agent whose connections are ``_HeldLink``'s (transports that take
    data only when the test says so), its link and its clock."""
    clock = Clock()
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=25,
                    rng=random.Random(0))
    link = _HeldLink()
    agent = DeliveryAgent(settings(tmp_path), mx, clock, endpoint=link.endpoint,
                          tls_options=lambda host, verify: None)
    return agent, link, clock


def test_a_dot_never_taken_leaves_the_next_mx_its_turn(tmp_path):
    # The first MX host reads the data too slowly to take the final "."
    # within a data block's time: the session fails in the data, where the
    # host cannot have the message, so the next host is tried at once (it
    # used to be judged "may have been delivered" after 10 minutes, and no
    # other host was tried before the next retry).
    a, link, clock = _held_agent(tmp_path)
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    _write_until_the_dot(link.transports[0])
    clock.advance(180)
    assert link.transports[0].disconnecting
    [proto] = a._sessions
    proto.connectionLost(None)  # (a StringTransport does not call it)
    assert link.connections == ["2001:db8::1", "192.0.2.2"]  # mx1, then mx2
    assert not d.called


# --- the least data rate (MIN_DATA_RATE after MIN_DATA_RATE_GRACE) -------------


def _take_blocks(clock, transport, every, blocks):
    """The transport takes a block every ``every`` seconds, ``blocks`` times
    (fewer when the connection is dropped meanwhile)."""
    for _ in range(blocks):
        if transport.disconnecting or transport.producer is None:
            return
        clock.advance(every)
        if transport.disconnecting or transport.producer is None:
            return
        transport.producer.resumeProducing()


def test_a_next_hop_that_takes_the_data_too_slowly_is_cut(tmp_path):
    # 16 KiB every 100 s (164 octets a second): within every RFC 5321
    # timeout, and a 10 MB message would hold the slot for 17 hours.  The
    # hub wants 1024 octets a second (MIN_DATA_RATE) after 300 s
    # (MIN_DATA_RATE_GRACE): a message of N octets may take 300 + N / 1024 s
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, proto, transport = _client(tmp_path, body=b"x" * 200_000)  # no line ends
        transport.producer.resumeProducing()  # t=0: the first block
        _take_blocks(clock, transport, 100, 3)  # t=300: 3 blocks taken
        # by then it may have taken 3 * 16384 octets in 300 + 48 seconds
        clock.advance(47)
        assert not transport.disconnecting
        clock.advance(1)
        assert transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(events.append)
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.phase == Phase.BODY.value and not _maybe_delivered(outcome)
    assert outcome.session_error.code == 421 and outcome.session_error.status == "4.4.2"
    assert outcome.session_error.text() == (
        "421 4.4.2 the server took the message data too slowly: 49152 octets in 348 seconds, "
        "under the 1024 octets a second (after the first 300 seconds) the hub allows; "
        "will retry")
    assert any("took the message data too slowly (49152 octets in 348 s" in formatEvent(e)
               for e in events)


def test_a_next_hop_at_the_least_rate_is_not_cut(tmp_path):
    # 16 KiB every 15 s (1092 octets a second), after a first block that
    # took the whole grace and more
    clock, proto, transport = _client(tmp_path, body=b"x" * 1_000_000)
    transport.producer.resumeProducing()
    _take_blocks(clock, transport, 170, 1)
    _take_blocks(clock, transport, 15, 200)
    assert not transport.disconnecting
    assert transport.producer is None and proto.session.phase is Phase.DATA_END


def test_the_reply_wait_is_not_cut_by_the_rate(tmp_path):
    # once the "." was taken only the server's 10 minutes for its reply count
    clock, proto, transport = _client(tmp_path, body=b"x" * 20_000)
    transport.producer.resumeProducing()
    _take_blocks(clock, transport, 100, 3)  # slow, but done before the grace ran out
    assert transport.producer is None and proto.session.phase is Phase.DATA_END
    clock.advance(599)
    assert not transport.disconnecting


def test_a_transfer_cut_for_its_rate_is_retried_and_says_why(tmp_path):
    a, link, clock = _held_agent(tmp_path)
    d = a.deliver(entry(tmp_path, BOB, body=b"x" * 300_000), "remote.test", [BOB])
    for i in range(2):  # both MX hosts take 16 KiB every 100 s
        transport = link.transports[i]
        transport.producer.resumeProducing()
        _take_blocks(clock, transport, 100, 10)
        assert transport.disconnecting
        [proto] = a._sessions
        proto.connectionLost(None)
    assert link.connections == ["2001:db8::1", "192.0.2.2"]
    [r] = d.result
    assert r.kind == "transient" and r.reply.status == "4.4.2"
    assert "took the message data too slowly" in r.reply.text()


# --- a local error while the data streams ------------------------------------------


class _FailingRead:
    """The queued message, whose second read fails (a disk error)."""

    def __init__(self, f):
        self._f = f
        self.reads = 0

    def read(self, n=-1):
        self.reads += 1
        if self.reads > 1:
            raise OSError(errno.EIO, "Input/output error")
        return self._f.read(n)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_a_read_error_mid_stream_ends_the_session_as_a_local_error(tmp_path, monkeypatch):
    # Twisted's TLS layer drives a pull producer from a loop of its own:
    # when resumeProducing raises, it logs that and unregisters the producer
    # without telling it.  The transfer's Deferred then never fired, the
    # session waited out the data block's 3 minutes and blamed the server
    # (a timeout in the data, so the next MX host was tried, with the same
    # local error); on a plain connection the error dropped the connection,
    # blamed on the server too.  It is the hub's: 451 4.3.0, the connection
    # dropped without the final ".".
    import txmailhub.relay.attempt as attempt_module

    opened = []

    def failing_open(path):
        opened.append(_FailingRead(open(path, "rb")))
        return opened[-1]

    monkeypatch.setattr(attempt_module, "open_regular", failing_open)
    clock, proto, transport = _client(tmp_path, body=b"x" * 100_000)

    def pull_as_the_tls_layer_does():
        producer = transport.producer
        try:
            producer.resumeProducing()
        except Exception:
            transport.unregisterProducer()

    pull_as_the_tls_layer_does()  # the first block
    pull_as_the_tls_layer_does()  # the read fails
    assert transport.disconnecting
    assert not transport.value().endswith(b"\r\n.\r\n")
    assert opened[0]._f.closed
    proto.connectionLost(None)
    [r] = proto.done.result.recipients
    assert (r.reply.code, r.reply.status) == (451, "4.3.0")
    assert "local error" in r.reply.text()
    assert not clock.getDelayedCalls()


def test_the_data_rate_says_nothing_of_a_session_the_timeout_already_cut(tmp_path):
    # the next hop took one block and then nothing: the data block's
    # timeout cuts the session (3 minutes); the rate's deadline, later,
    # must not judge it again -- one verdict, the timeout, in the log and
    # in the outcome
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, proto, transport = _client(tmp_path, body=b"x" * 200_000)
        transport.producer.resumeProducing()  # t=0: the first block
        clock.advance(180)
        assert transport.disconnecting  # the timeout's cut
        for _ in range(60):  # well past the rate's deadline (300 + 16 s)
            clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not any("too slowly" in formatEvent(e) for e in events)
    proto.connectionLost(None)
    outcome = proto.done.result
    assert "too slowly" not in outcome.session_error.text()
    assert outcome.session_error.status == "4.4.2"


def test_the_data_taken_after_the_server_ended_the_session_changes_nothing(tmp_path):
    # the server says 421 in the middle of the data and the session closes;
    # calls for more that still reach the producer (a layer that held on
    # to it) are no data sent for the session to wait on -- no reply timer
    # armed, no timeout said for a session already over in the server's
    # words
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, proto, transport = _client(tmp_path, body=b"x" * 100_000)
        producer = transport.producer
        producer.resumeProducing()
        proto.dataReceived(b"421 4.3.2 shutting down\r\n")
        assert transport.disconnecting
        sent = transport.value()
        for _ in range(10):
            producer.resumeProducing()
        assert transport.value() == sent
        for _ in range(60):
            clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not any("timeout waiting for the server" in formatEvent(e) for e in events), [
        formatEvent(e) for e in events]
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.session_error.code == 421 and "shutting down" in outcome.session_error.text()


# --- no message data after the server ended the session ------------------------------


class _NoAbortTransport(StringTransport):
    """A transport without ``abortConnection`` (``ITransport`` does not
    require it): the client closes it with ``loseConnection``."""

    abortConnection = None


def _drain(transport):
    """What a transport closed with ``loseConnection`` does with a pull
    producer still registered (Twisted's ``FileDescriptor.doWrite``): each
    time its buffer is empty it asks the producer for more, and closes only
    once none is registered."""
    for _ in range(1000):
        if transport.producer is None:
            return
        transport.producer.resumeProducing()
    raise AssertionError("the producer never let go")


@pytest.mark.parametrize("transport_class", [StringTransport, _NoAbortTransport],
                         ids=["abort", "loseConnection"])
def test_no_message_data_is_written_after_a_421_in_the_middle_of_it(tmp_path, transport_class):
    # the next hop says 421 while the data streams: not one octet more of
    # the message goes to the server that ended the session, whether the
    # transport is aborted or closed with loseConnection (which would ask
    # the producer for the rest, ".", included, before it closed)
    body = b"x" * 100_000
    (tmp_path / "m").write_bytes(body)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)],
                                size=len(body), tls="none")
        proto = SMTPClientProtocol(session, Clock(), str(tmp_path / "m"), None,
                                   str(tmp_path / "c"))
        transport = transport_class()
        proto.makeConnection(transport)
        for reply in REPLIES:
            proto.dataReceived(reply)
        producer = transport.producer
        producer.resumeProducing()
        producer.resumeProducing()
        written = len(transport.value())
        assert written > 2 * 16_000
        proto.dataReceived(b"421 4.3.2 shutting down\r\n")
        assert transport.disconnecting
        assert transport.producer is None  # unregistered at once
        _drain(transport)
        for _ in range(5):  # a call for more that still comes, from a layer that held it
            producer.resumeProducing()
        assert len(transport.value()) == written
        assert proto._file is None  # the transfer is over: the message file closed
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [formatEvent(e) for e in events if e.get("log_failure") is not None]
    assert failures == []
    proto.connectionLost(None)
    outcome = proto.done.result
    # the session's outcome is what the 421 made it: a temporary failure
    assert outcome.session_error.code == 421 and "shutting down" in outcome.session_error.text()
    assert outcome.phase == Phase.BODY.value and not _maybe_delivered(outcome)


def test_a_421_in_the_middle_of_the_data_leaves_the_entry_queued(tmp_path):
    # both MX hosts end the session with a 421 while the data streams: the
    # recipient waits for the next retry, and no host got more of the
    # message after its 421
    a, link, _ = _held_agent(tmp_path)
    d = a.deliver(entry(tmp_path, BOB, body=b"x" * 300_000), "remote.test", [BOB])
    for i in range(2):
        transport = link.transports[i]
        producer = transport.producer
        producer.resumeProducing()
        written = len(transport.value())
        [proto] = a._sessions
        proto.dataReceived(b"421 4.3.2 shutting down\r\n")
        producer.resumeProducing()
        assert transport.producer is None and len(transport.value()) == written
        proto.connectionLost(None)
    assert link.connections == ["2001:db8::1", "192.0.2.2"]
    [r] = d.result
    assert r.kind == "transient" and r.reply.code == 421
    assert "shutting down" in r.reply.text()
