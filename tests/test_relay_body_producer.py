"""The relay's body producer writes a bounded piece per call, however the
message is cut into lines."""

from __future__ import annotations

import io

from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from txmailhub.relay.body_producer import CHUNK_SIZE, BodyProducer
from txmailhub.smtp._data import DotStuffer


@implementer(IConsumer)
class _Consumer:
    """Takes what it is given; asks for more only when the test says so
    (a pull producer's transport: a call per turn of its reactor)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer = None

    def registerProducer(self, producer, streaming) -> None:
        assert not streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_a_message_that_is_one_long_line_goes_a_chunk_per_call():
    # a 7-bit copy has no line over 998 octets, but a message put in the
    # queue by other means may be one line of megabytes: each call still
    # reads one chunk and writes its dot-stuffed form, never the line
    line = b"x." * (CHUNK_SIZE * 32) + b"\n.end\n"
    consumer = _Consumer()
    producer = BodyProducer(io.BytesIO(line), consumer, DotStuffer())
    done = []
    producer.start().addCallback(done.append)
    calls = 0
    while consumer.producer is not None:
        consumer.producer.resumeProducing()
        calls += 1
        assert calls <= len(line) // CHUNK_SIZE + 3
    assert done == [None]
    assert max(map(len, consumer.writes)) <= CHUNK_SIZE + 8  # (a stuffed dot, CRLF and ".")
    stuffer = DotStuffer()
    assert b"".join(consumer.writes) == stuffer.encode(line) + stuffer.finish()
