"""Streams a message's data to the next hop and tells when the final "."
has left the hub.

RFC 5321 4.5.3.2.5 times each data block the client sends (3 minutes) and
4.5.3.2.6 the wait for the reply to the final "." (10 minutes), which
starts once the "." is *sent*.  A transport's ``write`` only buffers: to a
server that reads slowly, the last blocks and the "." may wait in the
hub's buffers for many minutes after they were written.  Starting the
10-minute wait at the write cut such transfers short, and since a session
that ends without a reply to its "." may have delivered the message, the
attempt then gave no other MX host a try.

So the producer is a pull producer (``IPullProducer``): the transport asks
it for more (``resumeProducing``) when it wants data -- a TCP transport at
registration and then each time everything it was given has gone to the
kernel.  The data goes out a chunk per call, then the final "."; the call
after that one says the "." has left the hub's buffers (``done`` fires).
Every call is progress, which restarts the data-block timer (``progress``).

Twisted's TLS layer turns a pull producer into a push one that it calls
in a loop while the TCP connection under it is not paused (it pauses it
above 64 KiB buffered, and resumes it once that buffer is empty), and
gathers small writes itself, up to 64,000 octets, before it encrypts
them: under TLS ``done`` may fire with up to about 128 KiB of the
message still in the hub's buffers (a whole message under that size),
never before the "." was written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.smtp._data import DotStuffer

__all__ = ["CHUNK_SIZE", "BodyProducer", "BodyStopped"]

CHUNK_SIZE = 2**14  # octets of the stored message read per call (16 KiB)


class BodyStopped(Exception):
    """The transport stopped the producer (the connection was closed), or
    the session did (``BodyProducer.stop``)."""


@implementer(IPullProducer)
class BodyProducer:
    """Writes ``file`` (from where it stands) through ``encoder`` to
    ``consumer``, then the final ".", a chunk per ``resumeProducing``.

    ``done`` fires (``None``) at the first call after the one that wrote
    the ".": the transport took it.  It errbacks with ``BodyStopped`` when
    the transport stops the producer first or ``stop`` ends the transfer,
    and with the error when making the data fails (the producer is
    unregistered then).  ``progress()`` is called at each call before
    anything is written.  ``dot_written`` tells whether the "." was handed
    to the transport; ``octets`` counts what was, and ``taken`` what it
    took (all it was given before its last call)."""

    def __init__(self, file: IO[bytes], consumer: IConsumer, encoder: DotStuffer,
                 progress: Callable[[], Any] = lambda: None) -> None:
        self._file = file
        self._consumer = consumer
        self._encoder = encoder
        self._progress = progress
        self.done: defer.Deferred[None] = defer.Deferred()
        self.dot_written = False
        self.octets = 0
        self.taken = 0  # octets the transport took: those written before its last call
        self._over = False

    def start(self) -> defer.Deferred[None]:
        """Register with the consumer (which may ask for data at once)."""
        self._consumer.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self._over:
            return
        try:
            self._produce()
        except Exception:
            # (a disk error reading the message): told through ``done``.
            # Raised to the transport it would be lost -- Twisted's TLS
            # layer logs it and unregisters the producer without telling
            # it, so ``done`` never fired; a plain connection drops itself
            # -- and the session would blame the server
            failure = Failure()
            if not self.done.called:
                if not self._over:
                    self._end()
                self.done.errback(failure)

    def _produce(self) -> None:
        self.taken = self.octets
        self._progress()
        if self._over:  # the progress callback ended the transfer
            return
        if self.dot_written:
            self._end()
            self.done.callback(None)
            return
        data = b""
        while not data:
            chunk = self._file.read(CHUNK_SIZE)
            if not chunk:
                data = self._encoder.finish()
                self.dot_written = True
                break
            data = self._encoder.encode(chunk)  # b"" only for a lone CR held back
        self.octets += len(data)
        self._consumer.write(data)

    def pauseProducing(self) -> None:
        """Not asked of a pull producer (Twisted's TLS layer pauses its own
        wrapper of it instead)."""

    def stopProducing(self) -> None:
        if self._over:
            return
        self._over = True
        self.done.errback(BodyStopped("the connection stopped the transfer"))

    def stop(self) -> None:
        """The session ended while the data was on its way (the server
        said ``421`` in the middle of it, a timeout, the hub's stop): not
        one more octet is written, whatever the transport does next.  A
        transport closed with ``loseConnection`` asks a registered pull
        producer for the rest of the message before it closes -- data for
        a server that ended the session -- so the producer is unregistered
        now, and a call for more that still comes writes nothing.
        ``done`` errbacks with ``BodyStopped``, as when the transport
        stops the producer."""
        if self._over:
            return
        self._end()
        self.done.errback(BodyStopped("the session ended during the transfer"))

    def finish_early(self) -> None:
        """The server answered the "." before the transport said it took
        it (a transport that asks for more only at its idle times): the
        reply says the server has it, so the transfer is over."""
        if self._over:
            return
        self._end()
        self.done.callback(None)

    def _end(self) -> None:
        self._over = True
        self._consumer.unregisterProducer()
