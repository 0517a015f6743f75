"""The Twisted adapter of the SMTP server engine.

Owns the connection: moving bytes between the transport and the sans-IO
engine (``txmailhub.smtp.server``), answering the engine's requests with
the components (spooler, ``txmailhub.delivery``, the cred portal, TLS),
flow control, the idle timeout, connection limits and the one summary log
line per transaction.  It must not parse SMTP or decide policy: that is
the engine's and ``txmailhub.smtp.policy``'s job.

* While a request is pending (storage, AUTH), input that arrives pauses
  the transport (``pauseProducing``): pipelined commands wait in the
  engine's buffer (at most what one read brought) and are answered
  strictly in order once the answer is in.  A lock-step client sends
  nothing while it waits, so reading is not paused for it: that saves
  two ``epoll_ctl`` calls and Twisted's bookkeeping on every message.
* Replies produced by one batch of input go out in one ``write``.
* The idle timeout uses ``components.reactor`` (a ``Clock`` in tests); it
  does not run while we are the ones keeping the client waiting.
* Failed AUTH attempts are answered after a delay that grows with each
  failure (``[smtp] auth_failure_delay`` times the count); after
  ``max_auth_failures`` the connection is closed.
* Anything unexpected becomes 451 plus ``log.failure``; no traceback or
  class name ever reaches the wire.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import Address, ascii_domain, ascii_form, client_ip, client_key
from txmailhub.auth import ClientCredentials, LoginAbandoned, turn_key
from txmailhub.delivery import accept_spooled, summarize
from txmailhub.errors import UsersUnavailable
from txmailhub.interfaces import ISMTPUser, IStallRecord
from txmailhub.limits import ConnectionLimits, FailureWindow, GoneWaiters, login_session
from txmailhub.linger import (
    LINGER_OCTETS,
    TLSCloseWatch,
    drop_input,
    end_output,
    lingers,
    shorten,
    watch_tls_close,
)
from txmailhub.logsafe import listed, log_failure, loggable
from txmailhub.sending import ResponseWriter, closed_under_us, set_reading, socket_flusher
from txmailhub.smtp import replies
from txmailhub.smtp.msa import HeaderDomains, MissingFields
from txmailhub.smtp.policy import RecipientPolicy
from txmailhub.smtp.received import (
    MAX_HOPS,
    HopCounter,
    ReturnPathFilter,
    header_separator,
    protocol_name,
    received,
    return_path,
    rfc5322_date,
)
from txmailhub.smtp.reply import Reply
from txmailhub.smtp.server import (
    AuthMalformed,
    AuthRequest,
    Close,
    MessageAborted,
    MessageComplete,
    ServerConfig,
    Session,
    SMTPServer,
    StartMessage,
    StartTLS,
)
from txmailhub.stalls import ReactorStalls
from txmailhub.tls import handshake_pending, tls_details, tls_failure

__all__ = ["SMTPFactory", "SMTPProtocol"]

log = Logger(namespace="txmailhub.smtp")

CLOSE_GRACE = 30.0  # seconds a polite close may take before it is cut
#: the same while the hub stops: the stop waits for the SMTP connections
#: to be gone (an application's reactor runs on; twistd exits after it)
STOP_CLOSE_GRACE = 2.0
MIN_DATA_RATE = 500
"""Octets per second a message's data must average, beyond the idle
timeout's grace: a message of N octets may take ``idle_timeout + N / 500``
seconds from DATA (or its first BDAT) on, 4 kbit/s at worst.  Without it a
client that sends a line every few minutes holds its connection slot for
as long as it likes, since every octet of data counts as activity.  With
BDAT the waits between chunks count too (else ``BDAT 1`` every few
minutes would hold the slot for ever), but the limit is never applied
*during* such a wait: there the session awaits a command, which only the
idle timeout may end (RFC 5321 4.5.3.2.7).  It is applied while message
data arrives and whenever the client sends something while a BDAT
message is open (the next chunk, a ``BDAT 0``, a NOOP): such a read is
judged once all of it has been processed and *before* any reply to it
is sent, so a chunk the limit cuts never gets its ``250`` (RFC 3030: that
250 says the server has the chunk), and a read that ends the message
with a whole ``LAST`` chunk is taken.  Off when the idle timeout is
(``idle_timeout`` 0): without its grace a small message would be cut for
a pause of seconds."""
INPUT_LIMIT = 16 * 1024  # octets held from a client that does not read our replies
WITHHELD_LIMIT = 16 * 1024
"""Octets of replies held back from a client whose BDAT message is behind
``MIN_DATA_RATE`` while a long pipelined read of it is answered over
several reactor turns (``REPLIES_HELD`` commands a turn): they go out
once the read ends the message (its ``LAST`` chunk), or are dropped for
the ``421``.  About 540 one-octet chunks; a message still open and
behind past that is cut (a real client's chunks are kilobytes, and it is
not behind)."""
# Closing replies that have a log line of their own already.
_CLOSE_LOGGED_ELSEWHERE = (
    replies.TIMEOUT, replies.DATA_TOO_SLOW, replies.TOO_MANY_CONNECTIONS,
    replies.TOO_MANY_CONNECTIONS_FROM_YOU)


def _is_loopback(host: str) -> bool:
    ip = client_ip(host)
    return ip is not None and ip.is_loopback


def _traced(recipient: Address) -> Address:
    """The ``for`` clause's address: routing names a local mailbox with
    its U-labels, which a message sent without SMTPUTF8 must not carry
    raw; its A-label form is the same mailbox."""
    text = ascii_form(recipient)
    if text is None or text == str(recipient):
        return recipient
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


@implementer(IPushProducer, IHalfCloseableProtocol)
class SMTPProtocol(Protocol):
    """One SMTP connection; see the module docstring."""

    _handlers: ClassVar[dict[type, Any]]  # event type -> handler(self, event); set below

    # Every attribute a session sets is a slot.  CPython 3.11 keeps an
    # instance's attributes in its compact, shared-key layout only while
    # there are fewer than 30 of them; from 30 on each instance gets a dict
    # of its own, and the interpreter's attribute-access shortcuts stop
    # applying (this class sets 38 names: about 2% of the instructions of
    # a whole in-process SMTP session).  Slots are fast whatever their
    # number.  Twisted's Protocol has no slots, so the instance keeps a
    # __dict__ (tests may still set what they like); tests check a session
    # leaves it empty.
    __slots__ = (
        "_auth_timer",
        "_close_reply",
        "_close_timer",
        "_counted",
        "_data_start",
        "_domains",
        "_draining",
        "_driving",
        "_eof",
        "_finish_only",
        "_gone",
        "_head",
        "_held_at_start",
        "_hops",
        "_hub_stopping",
        "_last_activity",
        "_linger_left",
        "_lingering",
        "_login_session",
        "_logout",
        "_message_held",
        "_message_id",
        "_message_started",
        "_msa",
        "_out",
        "_paused",
        "_producing",
        "_reading",
        "_refusing",
        "_return_paths",
        "_send_now",
        "_stop_after_wait",
        "_timed_reader",
        "_timer",
        "_tls",
        "_tls_close",
        "_turn",
        "_waited",
        "_withheld",
        "_write_closed",
        "_write_paused",
        "_writer",
        "client_name",
        "components",
        "connected",
        "engine",
        "factory",
        "host",
        "reactor",
        "transport",
    )

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self.transport: Any = None  # slots shadow Protocol's class defaults
        self.connected = 0
        self.components = factory.components
        self.reactor = factory.components.reactor
        self.engine: SMTPServer | None = None
        self.host = ""  # the client's IP address; "" for a UNIX socket
        # this connection in the login window: a login forgets the failures
        # of its name made on it, and no others (FailureWindow.succeeded)
        self._login_session = login_session()
        # how log lines name the client: its address, or "localhost" for
        # a UNIX socket (the name its Received field gets too)
        self.client_name = ""
        self._counted = False
        self._refusing = False  # refused, and counted in refusals_waiting until gone
        self._paused = False  # the engine waits for an answer (holds its input)
        self._waited = False  # it waited (storing, an AUTH check): idle time restarts after
        self._write_paused = False  # Twisted's buffer is full: the client is not reading
        self._eof = False  # the client shut down its sending side (plain TCP)
        self._producing = False  # registered as the transport's producer
        self._reading = True
        self._driving = False
        self._send_now: Any = None
        self._out: ResponseWriter | None = None
        self._writer: Any = None
        self._message_id = ""
        self._tls: tuple[str, str] | None = None  # see _tls_details
        self._head = b""  # the trace header, until the first chunk of data
        self._hops: Any = None  # a HopCounter per message (RFC 5321 6.3)
        self._return_paths: Any = None  # a ReturnPathFilter per message (RFC 5321 4.4)
        self._msa: MissingFields | None = None  # Date, Message-ID (RFC 6409 8)
        # with it, the address fields' domains (RFC 6409 4.2)
        self._domains: HeaderDomains | None = None
        self._timer: Any = None
        self._last_activity = 0.0
        self._message_started = 0.0  # when the last StartMessage came
        # the hub's stall record (IStallRecord) read then, and for the
        # message being timed: stalls of the reactor thread since are not
        # the client's time
        self._message_held = 0.0
        self._held_at_start = 0.0
        # MIN_DATA_RATE: the engine's message reader being timed, and when
        # its time began
        self._timed_reader: Any = None
        self._data_start = 0.0
        # replies to a read of a message behind MIN_DATA_RATE, held back
        # until all of the read is answered (WITHHELD_LIMIT)
        self._withheld = b""
        self._logout: Any = None
        self._gone = False  # connectionLost has run
        self._auth_timer: Any = None
        self._close_timer: Any = None
        self._close_reply: Reply | None = None
        self._turn: Any = None  # the call that answers the rest of a long batch
        self._stop_after_wait = False  # the hub stopped while we waited: 421 after the answer
        self._hub_stopping = False  # closed by the hub's stop: STOP_CLOSE_GRACE
        # the lingering close (txmailhub.linger): our side shut down, input read and
        # dropped (at most LINGER_OCTETS more) until the client closes
        self._lingering = False
        self._linger_left = LINGER_OCTETS
        self._write_closed = False  # writeConnectionLost: all we sent is out
        # under TLS: when our close_notify is out, and the close's end once
        # the client is quiet (txmailhub.linger.TLSCloseWatch)
        self._tls_close: TLSCloseWatch | None = None
        # the connection is lost, its input held is processed (_drain): the
        # session stays in limits.sessions until that ends (_end_session)
        self._draining = False
        # the connection is lost while its message was being made durable,
        # with nothing of its input to process: that store is finished
        # (a session to the hub's stop until then), nothing else
        self._finish_only = False

    # --- Twisted's side ----------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        peer = self.transport.getPeer()
        self.host = getattr(peer, "host", "") or ""
        self.client_name = self.host or "localhost"
        loopback, relay = f.classify(self.host)
        session = Session(
            client_host=self.client_name,
            loopback=loopback,
            relay_allowed=relay,
            submission=f.submission,
            tls=f.implicit_tls or ISSLTransport.providedBy(self.transport),
        )
        self.engine = SMTPServer(f.config, f.policy, session)
        self._out = ResponseWriter(self.transport)
        refusal = f.admit(self.host, exempt=loopback or relay)
        if refusal is not None:
            if not f.limits.refusal_may_wait(self.transport, f):
                # REFUSALS_WAITING refused connections wait for their close
                # already (clients that stall in the implicit-TLS handshake
                # the 421 waits for): no reply, no grace
                log.info("refused connection from {client}: {reply} (cut at once: {n} "
                         "refused connections are closing)", client=self.client_name,
                         reply=refusal.text(), n=f.limits.refusals_waiting)
                self.engine.abort()
                self.transport.abortConnection()
                return
            self._refusing = True
            log.info("refused connection from {client}: {reply}", client=self.client_name,
                     reply=refusal.text())
            self.engine.refuse_connection(refusal)
            self._drive()
            return
        self._counted = True
        f.limits.sessions.add(self)
        # Replies go straight to the socket when nothing is buffered
        # (ResponseWriter: one send, no epoll_ctl pair per reply).  What is
        # left in the transport's buffer goes in the same turn too
        # (socket_flusher; test transports have no socket: then the reactor
        # sends it).
        self._send_now = socket_flusher(self.transport)
        self.engine.greeting()
        self._last_activity = self.reactor.seconds()
        if f.settings.smtp.idle_timeout > 0:  # 0: no idle timeout (as for POP3)
            self._arm_timer(f.settings.smtp.idle_timeout)
        self._drive()

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            if self._tls_close is not None:
                self._tls_close.heard()  # still sending: not quiet yet
            self._linger_left = drop_input(self.transport, self._linger_left, data,
                                           self.engine.session.tls)
            return
        engine = self.engine
        # Idle means no command (RFC 5321 4.5.3.2), not no byte: a client
        # dribbling a line that never ends must not hold its slot.  Inside
        # a message every octet counts.  A line held while the client does
        # not read our replies counts once it is answered (resumeProducing):
        # held, it meets neither max_errors nor max_junk_commands, and a LF
        # every few minutes would hold the slot for INPUT_LIMIT idle periods.
        # (Not while a BDAT message is open: the data rate judges each read
        # then, held or not.)
        if engine.in_message or (0x0A in data and (  # LF (an int: see smtp/_data.py)
                not self._write_paused or engine.message_reader is not None)):
            self._last_activity = self.reactor.seconds()
        engine.receive_data(data)
        if self._write_paused:
            # held, not answered, until the client reads again; but a read
            # while a message behind MIN_DATA_RATE is open is judged all the
            # same -- after it is processed, as any read: a LAST chunk in it
            # has ended the message by then and is taken, and a chunk cut
            # for the rate gets no 250 (or BDAT 1 every few minutes, each a
            # command line, would hold the slot again)
            if engine.message_reader is not None and self._behind(
                    self.reactor.seconds(), after_read=True):
                self._drive(after_read=True)
                return
            self._flow()
            return
        self._drive(after_read=True)

    # --- IHalfCloseableProtocol: a client that shuts down its sending side ---------

    def readConnectionLost(self) -> None:
        """The client will send nothing more (``shutdown(SHUT_WR)`` after its
        last command) but may still read: what it sent is answered -- the
        250 of a message being stored included, or the client would send it
        again -- and then the connection is closed.  A message still
        arriving is given up as on a disconnect; but one whose rest is held
        unprocessed (the client does not read its replies) may be whole,
        and is processed first.  A login being checked (``AUTH``) is waited
        for as POP3's is: on success what the client pipelined behind it
        (``MAIL``, ``RCPT``, ``DATA`` and the message, ``QUIT``) is
        answered, the message stored.  A failed one (or one whose failure's
        delay runs) closes the session at once with no answer: the guess is
        counted, and a client that closed for good looks the same as one
        that half-closed, so waiting out the delay would let a guesser that
        hangs up hold a connection slot for it; answering at once would
        give a guesser that half-closes its answer without the delay.  (A
        check that could not be made, ``454``, is no guess: it goes at
        once, then the close.)
        (Plain TCP only: TLS reports the end of the client's data as a
        lost connection; see ``_sent_in_full``.)"""
        if self._lingering:
            self.transport.loseConnection()  # the client closed after our 421
            return
        if self._eof:
            return
        self._eof = True
        engine = self.engine
        timer = self._auth_timer
        if engine is None or (engine.in_message and not engine.has_input) or (
                engine.waiting and not (engine.storing or engine.checking_login)) or (
                timer is not None and timer.getTime() > self.reactor.seconds()):
            # a message cut short, a STARTTLS answered (a handshake the
            # client can no longer make), or a failed login's delay running:
            # nothing worth keeping the connection (and its slot) for.
            # (A 535 due now -- auth_failure_delay = 0, or the hub's stop
            # made it go -- is no delay: it goes, then the close.)
            if timer is not None and timer.active():
                # the delayed 535 is not sent: not while the close waits
                # for the client to read what is buffered, nor at the stop
                timer.cancel()
                self._auth_timer = None
            self._lose()
            return
        self._drive()

    def writeConnectionLost(self) -> None:
        # only the lingering close shuts down our sending side alone: once
        # our last reply and end of stream are out it goes on for
        # LINGER_SECONDS at most (the close grace is for getting them out)
        self._write_closed = True
        shorten(self._close_timer, self.reactor)

    def connectionLost(self, reason: Any = None) -> None:
        why = tls_failure(reason)
        if why:  # a client failing on our TLS (versions, ciphers) is seen in the log
            log.info("TLS with {client} failed: {why}", client=self.client_name, why=why)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._tls_close is not None:
            self._tls_close.cancel()
            self._tls_close = None
        self._timer = None
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        drain = self._sent_in_full(reason)
        engine = self.engine
        finish = (not drain and engine is not None and not engine.closed
                  and engine.storing)
        gone = False
        if self._counted:
            self._counted = False
            self.factory.release(self.host)
            if drain or finish:
                # still a session to the hub's stop: it waits for the
                # drain's end, and no more of the input is processed once
                # the hub stops (shut_down)
                self._draining = True
            else:
                gone = True  # once its end is done, below
        if self._refusing:
            self._refusing = False
            self.factory.limits.refusal_closed(self.transport)
        self._gone = True
        if drain:
            # the client's TLS session ended behind input still held (the
            # rest of a long batch, or what waits for a message to be
            # stored): it is processed as plain TCP's half-close does
            log.info("{client} ended its TLS session with {octets} octets of commands "
                     "unanswered: processing them, the replies have nowhere to go",
                     client=self.client_name, octets=self.engine.buffered)
            self._tls_details()  # for the Received fields: read while the session is here
            self._drain()
            return
        if finish:
            # its message is being made durable: the store goes on whether
            # or not anyone waits, and the hub's stop must (it stops the
            # syncer and gives the state directory up once the sessions
            # are gone); its answer, and whatever was sent behind, are
            # dropped once it is done (_drain)
            self._finish_only = True
            return
        try:
            self._end_session()
        finally:
            if gone:
                # only now: the hub's stop, which waits for the sessions to
                # be gone, closes the spool and gives the state directory up
                # next; a message cut here is dropped, and logged, before
                # that (and a bug in the end does not hold the stop up)
                self.factory.limits.session_gone(self)

    def _sent_in_full(self, reason: Any) -> bool:
        """Whether input the client sent before its connection ended is still
        to be processed: what a client whose TLS session ends (close_notify,
        or the TCP connection closed under it) sent in full -- a message
        and its QUIT in the same read as a long pipelined batch, or behind
        a message being stored -- must not be dropped.  On plain TCP the
        end of the client's data is a half-close (``readConnectionLost``),
        which does the same with the connection still open; Twisted's TLS
        layer reports it as a lost connection, after which no reply can go
        out.  Not after our own abort, a TLS failure, or while a login is
        being checked (nothing worth the work: a guesser that hangs up)."""
        engine = self.engine
        return (engine is not None and not engine.closed and engine.has_input
                and engine.session.tls
                and (not engine.waiting or engine.storing)
                and reason is not None
                and bool(reason.check(error.ConnectionDone, error.ConnectionLost))
                and not reason.check(error.ConnectionAborted))

    def _drain(self) -> None:
        """Process the input held when the connection was lost: messages
        received in full are stored (each after the one before is durable,
        as in the session), their replies dropped.  What stops with a
        login or STARTTLS, or never ends (a line, a message), is dropped."""
        self._turn = None
        engine = self.engine
        if self._driving or engine is None:
            return
        if (self._stop_after_wait or self._finish_only) and not engine.waiting:
            # the hub stopped: the message being stored is, and nothing
            # the client sent behind it is processed (as its 421 would
            # have said, had the client still been there); or only that
            # message was to be finished
            self._stop_after_wait = self._finish_only = False
            engine.data_to_send()
            self._withheld = b""
            self._end_session()
            return
        self._driving = True
        handlers = self._handlers
        ended = False
        try:
            while (event := engine.next_event()) is not None:
                if isinstance(event, AuthRequest | StartTLS):
                    ended = True  # a session of its own, with nobody there for it
                    break
                handlers[type(event)](self, event)
        except Exception:
            log.failure("SMTP session error with {client}", client=self.client_name)
            ended = True
        finally:
            self._driving = False
        held = engine.replies_held  # read before data_to_send, which clears it
        engine.data_to_send()  # the replies: there is no connection for them
        self._withheld = b""
        if ended or engine.closed:
            self._end_session()
        elif held:
            # the rest in the next reactor turn, as in the session
            self._turn = self.reactor.callLater(0, self._drain)
        elif not engine.waiting:  # all of it processed
            self._end_session()
        # else a message is being stored: _message_done drives on

    def _end_session(self) -> None:
        """What is left of the session after its connection: an open message
        is dropped, the engine closed, the login ended."""
        if self._writer is not None:
            # the connection ended in the middle of a message: nothing of
            # it is stored, and it was never answered -- the client went
            # away, or the hub closed the session (it stops: 421)
            if self._close_reply is not None:
                log.info("closed the session with {client} in the middle of message {id} "
                         "({reply}): nothing stored", client=self.client_name,
                         id=self._message_id or "-", reply=self._close_reply.text())
            else:
                log.info("{client} closed the connection in the middle of message {id}: "
                         "nothing stored", client=self.client_name, id=self._message_id or "-")
            self._writer.abort()
            self._writer = None
        if self.engine is not None:
            self.engine.abort()
        self._log_out()
        if self._draining:
            self._draining = False
            self.factory.limits.session_gone(self)

    # --- driving the engine ---------------------------------------------------

    def _drive(self, after_read: bool = False) -> None:
        """Run the engine until it needs input or an answer, then write once.

        An answer that arrives synchronously (a Deferred that has already
        fired) calls ``_drive`` again from inside a handler; that inner call
        returns at once and this loop carries on, so the replies of a batch
        still go out in one write.  At most ``REPLIES_HELD`` commands are
        answered per call (per reactor turn).  ``after_read``: the client's
        input drives it (``MIN_DATA_RATE`` judges an open message then; any
        other call, such as the client reading our replies or shutting down
        its side, ends no wait for a command)."""
        if self._driving:
            return
        if self._gone:  # the connection is lost: what it held is processed
            self._drain()
            return
        engine = self.engine
        handlers = self._handlers
        if self._stop_after_wait and not engine.waiting:
            # the answer the hub stopped during is in: it goes out, then
            # the 421 (not whatever the client sent behind it)
            self._stop_after_wait = False
            self._withheld = b""
            engine.timeout(replies.shutting_down(self.factory.config.hostname))
        self._driving = True
        started = self.reactor.seconds()  # the hub's own time from here: see _behind
        try:
            while (event := engine.next_event()) is not None:
                handlers[type(event)](self, event)
        except Exception:
            log.failure("SMTP session error with {client}", client=self.client_name)
            reply = replies.closing(replies.SESSION_ERROR, self.factory.config.hostname)
            engine.refuse_connection(reply)
            # its Close event is not handled (the handlers broke): the 421
            # is a close the hub decides all the same, which lingers (_lose)
            self._close_reply = reply
            self._flush()
            self._lose()  # unregisters us, and cuts a close the client does not take
            return
        finally:
            self._driving = False
        ended = self.reactor.seconds()
        # The time the hub spent on this is not the client's idle time
        # either: a spool file created on a hung disk held the 354 for
        # longer than the timeout, and the timer, overdue by then, cut the
        # client the next turn, before it could send its data.
        self._last_activity += ended - started
        held = engine.replies_held  # read before data_to_send, which clears it
        withheld = self._withheld
        # MIN_DATA_RATE judges the read before any of its replies is sent:
        # a chunk it cuts gets no 250.  A read answered over several turns
        # is judged once all of it is answered, its replies held back
        # meanwhile (a later turn of it is judged however it was started):
        # a LAST chunk at its end has ended the message by then, and is
        # taken.
        behind = (self._timed_reader is not None or engine.message_reader is not None) \
            and self._behind(ended, after_read or bool(withheld), started)
        out = engine.data_to_send()  # _flush, inlined: this runs for every read
        if behind:
            if not held or len(withheld) + len(out) > WITHHELD_LIMIT:
                self._too_slow()  # the replies of the read are dropped for the 421
                self._drive()  # the 421, and whatever the engine asks on the way out
                return
            self._withheld = withheld + out
            out = b""
        elif withheld:  # the read ended the message, or caught up: all goes
            self._withheld = b""
            out = withheld + out
        buffered = bool(out) and self._out.write(out)  # type: ignore[union-attr]
        if buffered and not engine.closed:
            if self._send_now is not None:
                # Send the replies in this reactor turn rather than the
                # next one (a lock-step client waits for them).
                self._send_now()
            if not self._producing:
                # Replies are piling up: from now on Twisted pauses us
                # when its buffer is full, so a client that sends
                # commands and never reads the replies cannot grow our
                # memory.  (Only then: registering costs nothing for
                # clients that read.)
                self._producing = True
                self.transport.registerProducer(self, True)
        # The engine answers REPLIES_HELD commands at a time.  The rest of
        # a long pipelined batch waits for the next reactor turn, so that
        # other sessions get theirs first (one 64 KiB read of NOOPs is
        # 11,000 commands); while Twisted has paused us, resumeProducing
        # drives on once the client reads.
        if held and (not self._write_paused or self._withheld):
            # (replies held back are not written: a client that does not
            # read does not stop the judgement of its read)
            self._next_turn_later()
        if self._write_paused and engine.buffered >= INPUT_LIMIT:
            self._flow()  # stop reading now, not after one more read
        if engine.closed:
            self._lose()
        elif self._eof and not engine.waiting and not (
                (self._write_paused or self._turn is not None) and engine.has_input):
            # everything the client sent is answered (a batch held while it
            # does not read, or for its next turn, is answered first): close;
            # what was held and never completed, a line or a BDAT message,
            # is dropped
            self._lose()
        elif engine.waiting:
            # Paused only once input arrives while we decide: a lock-step
            # client sends nothing meanwhile, and reading stays on (no
            # epoll_ctl pair per message); what one read brought is held
            # by the engine until the answer is in.
            self._waited = True
            if not self._paused and engine.has_input:
                self._paused = True
                self._flow()
        elif self._waited:
            # The answer is out: the client's idle time starts now, not at
            # its last command -- the time we kept it waiting (a message
            # being stored, a failed login's delay) is not its own
            # (RFC 5321 4.5.3.2.7: the server awaits the *next* command).
            self._waited = False
            self._last_activity = self.reactor.seconds()
            if self._paused:
                self._paused = False
                self._flow()

    def _flow(self) -> None:
        """Read from the client unless the engine holds input while it waits
        for an answer or for its next turn, or the client does not read our
        replies and ``INPUT_LIMIT`` octets of its commands already wait.
        (Not at once when Twisted's buffer fills: a TLS layer pauses us
        during its handshake, and it must read to finish it.)"""
        want = not (self._paused or self._turn is not None
                    or (self._write_paused and self.engine.buffered >= INPUT_LIMIT))
        self._reading = set_reading(self.transport, self._reading, want)

    def _next_turn_later(self) -> None:
        """Answer the rest of the held input in a later reactor turn, and
        read nothing more until then."""
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._next_turn)
            self._flow()

    def _next_turn(self) -> None:
        self._turn = None
        if self.engine is None or self.engine.closed:
            return
        self._flow()
        if not self._write_paused or self._withheld:
            self._drive(after_read=True)  # the rest of the client's read

    # --- IPushProducer: Twisted's say, once replies pile up -----------------------

    def pauseProducing(self) -> None:
        self._write_paused = True

    def resumeProducing(self) -> None:
        self._write_paused = False
        if closed_under_us(self.transport):  # the client ended the TLS session
            self._lose()
            return
        self._flow()
        if self.engine is not None and not self.engine.closed:
            if self.engine.has_line:
                # the lines held meanwhile are answered now: the client's
                # activity (dataReceived did not count them)
                self._last_activity = self.reactor.seconds()
            # what was held meanwhile: the rest of the client's reads, if any
            # (the client reading our replies alone is no input)
            self._drive(after_read=self.engine.has_input)

    def stopProducing(self) -> None:
        pass  # the connection is going; connectionLost cleans up

    def _flush(self) -> bool:
        """Send the engine's replies (after any held back for the data rate:
        a STARTTLS in the read ends the message, and its 220 must follow
        them); whether bytes were left buffered."""
        out = self.engine.data_to_send()
        if self._withheld:
            out, self._withheld = self._withheld + out, b""
        if out:
            return self._out.write(out)  # type: ignore[union-attr]
        return False

    def shut_down(self) -> None:
        """The hub is stopping: ``421`` and close (RFC 5321 3.8).  A session
        that waits for us (a message being made durable, a login being
        checked) gets its real answer first if it comes before the process
        ends, and the ``421`` right after it: such a session used to carry
        on after the stop, taking commands, and every message it was sent
        then got a ``451`` (the syncer was stopped)."""
        engine = self.engine
        self._hub_stopping = True
        timer = self._close_timer
        if timer is not None and timer.active() and (
                timer.getTime() - self.reactor.seconds() > STOP_CLOSE_GRACE):
            timer.reset(STOP_CLOSE_GRACE)  # a polite close under way: no 30 s more
        if engine is None or engine.closed:
            return
        if self._gone:
            # the connection is lost, its held input being processed
            # (_drain): a message being stored is finished, nothing else
            self._stop_after_wait = True
            if not engine.waiting:
                if self._turn is not None and self._turn.active():
                    self._turn.cancel()
                self._turn = None
                self._drain()
            return
        if handshake_pending(self.transport):
            # the 421 would wait for a handshake the client has not made
            # (implicit TLS, or STARTTLS answered), and the close after it
            # for CLOSE_GRACE on top: 30 s after the hub had stopped.  Cut,
            # as the idle timeout does.
            log.info("the hub is stopping: {client} cut in the TLS handshake",
                     client=self.client_name)
            engine.abort()
            self.transport.abortConnection()
            return
        if engine.waiting:
            self._stop_after_wait = True
            timer = self._auth_timer
            if timer is not None and timer.active():
                # a failed login's answer, delayed to slow a guesser down:
                # not worth holding the stop for (up to max_auth_failures
                # times auth_failure_delay); the guess is counted already
                timer.reset(0)
            return
        self._withheld = b""  # chunks of a message behind the rate: no 250 before the 421
        engine.timeout(replies.shutting_down(self.factory.config.hostname))
        self._drive()

    # --- the idle timeout -----------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._timer = self.reactor.callLater(delay, self._check_idle)

    def _check_idle(self, second_look: bool = False) -> None:
        """The idle timer, and the data rate's look between reads.  A
        verdict against the client waits for a second look one reactor turn
        later: a timer runs before the reads of its turn, so after a stall
        of the reactor thread (a ``write`` on a frozen filesystem, a
        stopped process) whatever the client sent meanwhile is still
        unread, and its idle time is really ours."""
        self._timer = None
        limit = self.factory.settings.smtp.idle_timeout
        if self.engine.closed:
            return
        now = self.reactor.seconds()
        idle = now - self._last_activity
        engine = self.engine
        behind = self._behind(now, after_read=False)
        if not behind and (engine.waiting or idle < limit):
            self._arm_timer(limit if engine.waiting else limit - idle)
            return
        if not second_look:
            # Twisted runs a call made now in its next turn, after that
            # turn's reads: input waiting in the socket is seen first
            self._timer = self.reactor.callLater(0, self._check_idle, True)
            return
        if behind:
            self._too_slow()
            self._drive()
            return
        if handshake_pending(self.transport):
            # a 421 would wait for a handshake the client stalls in, and
            # the connection (and its slot) for the close grace on top
            log.info("idle timeout for {client} in the TLS handshake: connection cut",
                     client=self.client_name)
            self.engine.abort()
            self.transport.abortConnection()
            return
        log.info("idle timeout for {client}", client=self.client_name)
        self._withheld = b""  # as in shut_down
        self.engine.timeout(replies.closing(replies.TIMEOUT, self.factory.config.hostname))
        self._drive()

    def _behind(self, now: float, after_read: bool, hub_since: float | None = None) -> bool:
        """Whether the message under way is behind ``MIN_DATA_RATE``.  Its
        time runs from its StartMessage (DATA, or the first BDAT: the
        answer it waited for counts, as it always did) -- a chunk read only
        to be refused has none, and is timed from the first look at it.
        Off with the idle timeout (``idle_timeout`` 0: no grace to allow).
        Any look judges while message data is being read; between two BDAT
        chunks only one ``after_read`` (the client's wait is over): that
        wait is the idle timeout's alone.  ``hub_since``: when ``_drive``
        began processing the read; the time from then is the hub's, not
        the client's, and the message's time is moved on by it -- a spool
        write that hangs on a frozen filesystem (``fsfreeze``) for longer
        than the allowance cut the very message it was writing.  Nor is a
        stall of the reactor thread that anything else caused (another
        session's rename or spool write on a hung disk, the process
        stopped): the hub's stall record (``txmailhub.stalls``) has it,
        and what it counted since the message's start comes off."""
        engine = self.engine
        reader = engine.message_reader
        if reader is not self._timed_reader:  # another message, or none
            self._timed_reader = reader
            if self._writer is not None:
                self._data_start = self._message_started
                self._held_at_start = self._message_held
            else:
                self._data_start = now
                self._held_at_start = self.factory.stalls.held(now)
        if hub_since is not None and reader is not None:
            since = max(hub_since, self._data_start)
            if now > since:
                self._data_start += now - since
                # the stall record counts this same time (now if its
                # heartbeat is overdue, else once it runs late): once only
                stalls = self.factory.stalls
                self._held_at_start += stalls.held(now) - stalls.held(since)
        grace = self.factory.settings.smtp.idle_timeout
        if reader is None or engine.waiting or engine.closed or grace <= 0 or (
                not after_read and not engine.in_message):
            return False
        allowed = grace + reader.size / MIN_DATA_RATE
        # the verdict reads the stall record only when the clock alone says behind
        return now - self._data_start > allowed and self._counted_time(now) > allowed

    def _counted_time(self, now: float) -> float:
        """The message's time so far that is the client's: from its start,
        without the hub's time on its reads (``_behind``) and the reactor
        stalls the stall record counted meanwhile."""
        held = self.factory.stalls.held(now) - self._held_at_start
        return now - self._data_start - held

    def _too_slow(self) -> None:
        """Log and close for ``MIN_DATA_RATE`` (``_behind`` said so): ``421``,
        and nothing held back for the data rate goes out before it."""
        self._withheld = b""
        seconds = self._counted_time(self.reactor.seconds())
        log.info("message data from {client} too slow ({octets} octets in {seconds:.0f}"
                 " s): connection closed", client=self.client_name,
                 octets=self.engine.message_reader.size, seconds=seconds)
        self.engine.timeout(replies.closing(replies.DATA_TOO_SLOW, self.factory.config.hostname))

    # --- requests and notices -----------------------------------------------------------

    def _start_message(self, event: StartMessage) -> None:
        self._message_started = started = self.reactor.seconds()
        self._message_held = self.factory.stalls.held(started)
        env = event.envelope
        if self._writer is not None:
            # The engine ends every message it starts; should one ever slip
            # through, its spool file must not outlive the session.
            log.error("SMTP: a message started while another was still open")
            self._writer.abort()
            self._writer = None
        try:
            writer = self.components.spooler.open()
        except Exception:
            failure = Failure()
            log_failure(log, failure, "cannot open a spool file")
            self.engine.message_refused(replies.local_failure(failure.value))
            return
        self._writer = writer
        self._message_id = self.factory.next_id()
        try:
            # written with the first chunk of data: one write(2), not two
            self._head = self._trace(env)
        except Exception:
            log.failure("cannot make the trace header")
            writer.abort()
            self._writer = None
            self.engine.message_refused(replies.LOCAL_ERROR)
            return
        self._hops = HopCounter()
        self._return_paths = ReturnPathFilter() if self._final_or_first(env) else None
        self._msa = self._missing_fields()
        # the hub changes what it is the MSA for: RFC 6409 4.2 then has it
        # make sure the address fields' domains are fully qualified
        self._domains = (None if self._msa is None
                         else HeaderDomains(self.components.router.is_local_domain))
        self.engine.message_started(self._sink)

    def _missing_fields(self) -> MissingFields | None:
        """A submitted message gets the Date and Message-ID it lacks (RFC
        6409 8.2, 8.3): on the submission listeners and for a client that
        logged in, the hub is the MSA.  Mail from other servers, and from
        relay_networks, passes as it came."""
        session = self.engine.session
        if not (session.submission or session.authenticated_as is not None):
            return None
        # id-right without the root's dot (RFC 5322 3.6.4: a dot-atom);
        # the queue id names the message in our log, and the random part
        # keeps the id unique in the world (a restart within the same
        # second under the same pid, two hubs with one hostname)
        host = ascii_domain(self.factory.settings.hub.hostname).rstrip(".")
        return MissingFields(rfc5322_date(self.reactor.seconds()),
                             f"<{self._message_id}.{os.urandom(6).hex()}@{host}>")

    def _final_or_first(self, env: Any) -> bool:
        """Whether the client's Return-Path fields may go: this hub is the
        final delivery of every copy, or the first hop of the message (a
        submission, a login).  Mail relayed on for a relay client is passed
        on as it came: "servers performing a relay function MUST NOT inspect
        the message data, and especially not to the extent needed to
        determine if Return-path header fields are present" (RFC 5321 4.4)."""
        session = self.engine.session
        if session.submission or session.authenticated_as is not None:
            return True
        router = self.components.router
        return all(router.is_local_domain(r.domain) for r in env.recipients)

    def _sink(self, data: bytes) -> None:
        hops = self._hops
        if not hops.done and hops.feed(data) >= MAX_HOPS:
            self.engine.fail_message(replies.TOO_MANY_HOPS)  # nothing more is stored
            return
        domains = self._domains
        if domains is not None and not domains.done:
            unqualified = domains.feed(data)
            if unqualified is not None:
                self.engine.fail_message(replies.header_domain_not_qualified(*unqualified))
                return
        return_paths = self._return_paths
        if return_paths is not None and not return_paths.done:
            data = return_paths.feed(data)
            if not data:
                return  # a piece of nothing but the client's Return-Path
        msa = self._msa
        if msa is not None and not msa.done:
            data = msa.feed(data)
        head = self._head
        if head:
            self._head = b""
            # the readers pass whole lines: ``data`` starts with the first
            data = head + header_separator(data) + data
        try:
            self._writer.write(data)
        except Exception:
            log.failure("cannot write to the spool file")
            self.engine.fail_message(replies.LOCAL_ERROR)

    def _tls_version(self) -> str | None:
        details = self._tls_details()
        return details[0] if details else None

    def _tls_details(self) -> tuple[str, str] | None:
        """(version, cipher) of the session's TLS, read once per connection
        (two OpenSSL calls per message otherwise).  The version cannot change
        after the handshake; only a TLS 1.2 renegotiation could change the
        cipher, and mail clients do not renegotiate."""
        if self._tls is None:
            self._tls = tls_details(self.transport)
        return self._tls

    def _trace(self, env: Any) -> bytes:
        session = self.engine.session
        tls = None
        if session.tls:
            tls = self._tls_details()
        # Every local copy gets the Return-Path of its final delivery; the
        # relay drops it from the copies it sends onwards (RFC 5321 4.4).
        return return_path(env.sender) + received(
            hostname=self.factory.settings.hub.hostname,
            helo=session.helo,
            client_ip=session.client_host,
            protocol=protocol_name(session.esmtp, session.tls,
                                   session.authenticated_as is not None, env.smtputf8),
            message_id=self._message_id,
            when=self.reactor.seconds(),
            tls=tls,
            recipient=self._for_clause(env),
        )

    @staticmethod
    def _for_clause(env: Any) -> Address | None:
        """One recipient's address for the ``for`` clause (several would be
        disclosed to each other), in a form the message may carry: a
        mailbox with a UTF-8 local part (an alias's member) has no ASCII
        form, and without SMTPUTF8 the header is ASCII -- then no ``for``
        (it is optional, RFC 5321 4.4)."""
        if len(env.recipients) != 1:
            return None
        recipient = _traced(env.recipients[0])
        if env.smtputf8 or str(recipient).isascii():
            return recipient
        return None

    def _message_complete(self, event: MessageComplete) -> None:
        writer, self._writer = self._writer, None
        message_id = self._message_id
        try:
            # what a submitted message lacks, when its data ended inside
            # the header section (or there was none)
            tail = b"" if self._msa is None else self._msa.finish()
            self._msa = None
            domains, self._domains = self._domains, None
            unqualified = None if domains is None else domains.finish()
            if unqualified is not None:
                # the data ended in the header section, on such a field
                writer.abort()
                self._message_done(replies.header_domain_not_qualified(*unqualified), event,
                                   message_id)
                return
            if self._head:  # no data at all (an empty BDAT LAST)
                head, self._head = self._head, b""
                writer.write(head + tail)
            elif tail:
                writer.write(tail)
            d = accept_spooled(self.components, event.envelope, writer, message_id)
        except Exception as e:
            d = defer.fail(e)
        d.addCallbacks(self._delivered, self._storage_failed,
                       callbackArgs=(event, message_id), errbackArgs=(event, message_id))

    def _delivered(self, results: Any, event: MessageComplete, message_id: str) -> None:
        self._message_done(summarize(results, message_id), event, message_id)

    def _storage_failed(self, failure: Any, event: MessageComplete, message_id: str) -> None:
        log_failure(log, failure, "could not store message {id}", id=message_id)
        self._message_done(replies.local_failure(failure.value), event, message_id)

    def _message_done(self, reply: Reply, event: MessageComplete, message_id: str) -> None:
        self._log_transaction(event.envelope, message_id, event.size, reply)
        if self.engine.closed:  # the client went away meanwhile
            if self._draining:
                self._end_session()  # the stop may wait for it
            return
        self.engine.message_done(reply)
        self._drive()

    def _message_aborted(self, event: MessageAborted) -> None:
        self._head = b""
        self._msa = None
        self._domains = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._log_transaction(event.envelope, self._message_id, event.size, event.reply)

    def _log_transaction(self, env: Any, message_id: str, size: int, reply: Reply) -> None:
        # One field in the format (formatting is per field, in Python); the
        # structured values ride along for observers that want them.
        # The parser lets no control character into an address; escaped all
        # the same, as every client text in the log is (logsafe)
        recipients = listed(env.recipients)
        sender = loggable(env.sender_text, 1 << 20)
        text = reply.text()
        # "(helo NAME, TLSv1.3)": who the client said it was when it sent this
        # message (the envelope's copy: a later EHLO or STARTTLS changes the
        # session's), and whether the message crossed the network in the clear
        helo = loggable(env.helo, 100, ascii_only=True)
        tls = (self._tls_version() or "TLS") if env.tls else None
        said = f" (helo {helo or '-'}{', ' + tls if tls else ''})"
        log.info(
            "{summary}",
            summary=f"message {message_id or '-'} from <{sender}> to {recipients} "
            f"({size} octets) via {self.client_name}{said}"
            f"{' as ' + loggable(env.authenticated_as) if env.authenticated_as else ''}: {text}",
            id=message_id,
            sender=sender,
            recipients=recipients,
            size=size,
            client=self.client_name,
            helo=helo,
            tls=tls,
            auth=env.authenticated_as,
            reply=text,
            code=reply.code,
        )

    def _auth_request(self, event: AuthRequest) -> None:
        portal = self.components.portal
        if not self.engine.session.loopback and self.factory.login_failures.blocked(self.host):
            # a malformed response too (a failed login of the address, so
            # refused as any login then), with no name: it gave none
            if event.malformed:
                log.info("authentication refused for a malformed response from {client} "
                         "({mechanism}): too many failures", client=self.client_name,
                         mechanism=event.mechanism)
            else:
                log.info("authentication refused for {user} from {client}: too many failures",
                         user=loggable(event.username), client=self.client_name)
            self.engine.auth_failed(replies.AUTH_THROTTLED)  # no password check at all
            self._drive()
            return
        if event.malformed or portal is None:
            self._auth_failed(None, event)
            return
        creds = ClientCredentials(event.username.encode("utf-8"),
                                  event.password.encode("utf-8"), lambda: not self._gone,
                                  turn_key(client_key(self.host), self.engine.session.loopback,
                                           self))
        d = defer.maybeDeferred(portal.login, creds, None, ISMTPUser)
        d.addCallbacks(self._auth_ok, self._auth_failed, callbackArgs=(event,),
                       errbackArgs=(event,))

    def _auth_ok(self, result: Any, event: AuthRequest) -> None:
        _, avatar, logout = result
        if self._gone:
            # the client hung up while its password was checked: nobody
            # will use this login, and connectionLost has run already
            logout()
            return
        self._log_out()  # a login before (discarded by STARTTLS) ends now
        self._logout = logout
        if self.engine.closed:
            return
        address = avatar.address
        if not isinstance(address, Address):
            address = Address(*str(address).rsplit("@", 1))
        # the mechanism, and over TLS its version, as POP3's login line: a
        # provider moving its users off cleartext (RFC 8314) finds in the
        # log who still logs in without TLS
        how = event.mechanism
        if self.engine.session.tls:
            how += f", {self._tls_version() or 'TLS'}"
        # the realm's name for the user, escaped as all text the hub did not
        # write itself (an application's realm may name users freely)
        log.info("{client} authenticated as {user} ({how})", client=self.client_name,
                 user=loggable(str(address)), how=how, mechanism=event.mechanism,
                 tls=self.engine.session.tls)
        if not self.engine.session.loopback:
            # the user's own mistyped passwords on this connection are
            # forgotten (FailureWindow.succeeded), others' are not
            self.factory.login_failures.succeeded(self.host, event.username,
                                                  self._login_session)
        self.engine.auth_succeeded(address)
        self._drive()

    def _auth_malformed(self, event: AuthMalformed | AuthRequest) -> None:
        """An AUTH response that is no SASL response (docs/deployment.rst,
        fail2ban): a line of its own, with no user name, as none was
        given (an empty one made "authentication failed for  from").

        It is a failed login of the client's address too (the window
        shared by its SMTP and POP3 connections, ``FailureWindow``): a
        client that sends garbage between its guesses, or garbage only, is
        held to the same limit as one that guesses.  Counted here once per
        response (the session's own counts, ``max_errors`` and
        ``max_auth_failures``, are the engine's, as before); not for
        loopback, and not while the window already refuses the address, as
        a login refused then is not counted either."""
        log.info("malformed authentication response from {client} ({mechanism})",
                 client=self.client_name, mechanism=event.mechanism)
        failures = self.factory.login_failures
        if not self.engine.session.loopback and not failures.blocked(self.host):
            failures.failed(self.host)

    def _auth_failed(self, failure: Any, event: AuthRequest) -> None:
        reply = replies.AUTH_FAILED
        if failure is not None and failure.check(LoginAbandoned):
            # not a guess: the password was never checked, nothing answers
            log.info("login of {user} from {client} not checked: the client left first",
                     user=loggable(event.username), client=self.client_name)
            return
        if failure is not None and failure.check(UsersUnavailable):
            # logged once by the users database; not a wrong password
            reply = replies.AUTH_TEMPORARY
        elif failure is not None and not failure.check(UnauthorizedLogin):
            log.failure("authentication error for {user}", failure,
                        user=loggable(event.username))
            reply = replies.AUTH_TEMPORARY
        elif event.malformed:
            self._auth_malformed(event)
        else:
            log.info("authentication failed for {user} from {client}",
                     user=loggable(event.username), client=self.client_name)
            if failure is not None and not self.engine.session.loopback:
                # counted now, not when the delayed answer goes out: a client
                # that hangs up meanwhile has still used up a guess
                self.factory.login_failures.failed(self.host, event.username,
                                                   self._login_session)
        if self._gone:
            # the client hung up during the check: the guess is counted, and
            # the delayed answer has nobody to go to (a timer armed now would
            # outlive connectionLost, holding the dead session)
            return
        s = self.factory.settings.smtp
        # the hub is stopping (it came during the check): the answer goes
        # at once, as shut_down makes an armed timer go, not to hold the stop
        delay = 0 if self._hub_stopping else (
            s.auth_failure_delay * (self.engine.auth_failures + 1))
        if self._eof and reply is not replies.AUTH_FAILED:
            # the check could not be made (454): no guess, nothing to slow
            # down or keep from the client; it goes, then the close, as
            # POP3's -ERR [SYS/TEMP] does
            delay = 0
        if self._eof and delay and not self._stop_after_wait:
            # the client shut down its sending side (or closed for good: it
            # looks the same) during the check: no delayed answer holds its
            # slot, and none goes at once to spare a guesser the delay
            self._lose()
            return

        def answer() -> None:
            self._auth_timer = None
            if not self.engine.closed:
                self.engine.auth_failed(reply)
                if self._eof and not self.engine.closed and not self._stop_after_wait:
                    # the client shut down its sending side (with no delay
                    # configured: _lose above otherwise): what it pipelined
                    # behind the AUTH was meant for a session logged in, and
                    # it cannot try again.  The 535, then the close, as POP3
                    # does (the stop's 421 goes as ever)
                    self._flush()
                    self._lose()
                    return
                self._drive()

        self._auth_timer = self.reactor.callLater(delay, answer)

    def _start_tls(self, event: StartTLS) -> None:
        self._flush()  # the 220 goes out in clear text
        self.transport.startTLS(self.components.tls)
        self._send_now = None  # the TLS layer buffers and writes on its own terms
        if self._write_paused:
            # Twisted moved us into the TLS layer as a producer that is not
            # paused, and will never resume us: we are not paused any more.
            self._write_paused = False
            self._flow()
        self.engine.tls_started()
        # RFC 3207 4.2: the identity from before the handshake is discarded
        # (twisted.cred: its avatar's logout is called once, now)
        self._log_out()

    def _log_out(self) -> None:
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def _close(self, event: Close) -> None:
        self._close_reply = event.reply  # _drive flushes and closes once the batch is written
        reply = event.reply
        if reply is not None and reply.code != 221 and not any(
                reply == replies.closing(r, self.factory.config.hostname)
                for r in _CLOSE_LOGGED_ELSEWHERE):
            # too many errors or AUTH failures, the hub stopping, a local error
            log.info("closing the session with {client}: {reply}", client=self.client_name,
                     reply=reply.text())

    def _lose(self) -> None:
        """Close politely; but a close that waits for a peer that does not
        read, or for a TLS handshake it never finishes (Twisted holds the
        last reply until then), is cut after ``CLOSE_GRACE`` seconds.  A
        QUIT on a plain connection needs no timer when its reply went
        straight to the socket (nothing left in Twisted's buffer)."""
        t = self.transport
        if self._turn is not None:
            # the rest of a held batch is not answered on a closing connection
            if self._turn.active():
                self._turn.cancel()
            self._turn = None
        if self._producing:
            # Twisted resumes a producer it paused instead of closing.
            self._producing = False
            t.unregisterProducer()
        if not self._reading and not self._eof:
            # Paused while a message was stored, with the next command (QUIT,
            # pipelined with the end of the message) held: a TLS close waits
            # for the client's close_notify, which must be read.  (What else
            # arrives is dropped: the engine is closed.)
            self._paused = False
            self._reading = set_reading(t, self._reading, True)
        reply = self._close_reply
        # a close the hub decides (its stop, the idle timeout, too many
        # errors, a data rate too slow...), not the client's QUIT or a
        # refused connection's (a client that still sends may lose that
        # 421 to a reset all the same; refusals have their own bound,
        # REFUSALS_WAITING): a lingering close (txmailhub.linger), on plain
        # TCP a half-close, under TLS close_notify and Twisted's wait for
        # the client's
        ours = self._hub_stopping or (
            reply is not None and reply.code != 221 and not self._refusing)
        tls = self.engine.session.tls
        if ours and not self._eof and lingers(t, tls):
            self._lingering = True
            self._paused = False
            self._reading = set_reading(t, self._reading, True)
            end_output(t, tls)
            # under TLS: LINGER_SECONDS once close_notify is out and the
            # client is quiet, as a half-close's writeConnectionLost starts
            self._tls_close = watch_tls_close(t, self.reactor)
        else:
            t.loseConnection()
        if self._close_timer is not None:
            return
        if (reply is None or reply.code != 221 or self.engine.session.tls
                or getattr(t, "dataBuffer", None) or getattr(t, "_tempDataLen", 0)):
            self._close_timer = self.reactor.callLater(
                STOP_CLOSE_GRACE if self._hub_stopping else CLOSE_GRACE, self._cut)

    def _cut(self) -> None:
        self._close_timer = None
        if self._lingering and self._write_closed:
            # the 421 and our end of the stream are out: close, no reset
            # unless the client sent more in this very turn
            self.transport.loseConnection()
            return
        watch = self._tls_close
        if self._lingering and watch is not None and watch.close_if_out():
            # under TLS the 421 and close_notify are out: the same close
            # (the stop's grace ends before the watch's LINGER_SECONDS)
            return
        log.info("closing {client} without waiting any longer", client=self.client_name)
        self.transport.abortConnection()


# The adapter's handler for each event of the engine: one table for every
# connection (six bound methods and a dict made per connection cost more
# than the lookups they save).
SMTPProtocol._handlers = {
    StartMessage: SMTPProtocol._start_message,
    MessageComplete: SMTPProtocol._message_complete,
    MessageAborted: SMTPProtocol._message_aborted,
    AuthRequest: SMTPProtocol._auth_request,
    AuthMalformed: SMTPProtocol._auth_malformed,
    StartTLS: SMTPProtocol._start_tls,
    Close: SMTPProtocol._close,
}


# Message ids: one counter for the process, for every listener of every hub
# in it (an application may run two hubs: their ids must not collide).
_MESSAGE_IDS = itertools.count(1)


class _Limits(ConnectionLimits):
    """Open SMTP connections, in total and per client; and the sessions."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[SMTPProtocol] = set()  # for the 421 at shutdown
        # what waits for sessions open now to be gone
        self._gone = GoneWaiters()

    def all_gone(self, sessions: Iterable[SMTPProtocol] | None = None) -> defer.Deferred:
        """Fires once every session open now (of ``sessions``, if given) is
        gone (at once if none is).  Sessions opened later do not count:
        after a quick restart the listeners take new ones while the last
        stop waits."""
        return self._gone.wait(set(self.sessions if sessions is None else sessions)
                               & self.sessions)

    def session_gone(self, session: SMTPProtocol) -> None:
        self.sessions.discard(session)
        self._gone.gone(session)


class SMTPFactory(ServerFactory):
    """Builds SMTP connections for one kind of listener.

    ``submission=True``: RFC 6409 rules (AUTH before MAIL).
    ``implicit_tls=True``: the listener is wrapped in TLS by the service
    (RFC 8314), so STARTTLS is not offered and the session counts as TLS.
    """

    protocol = SMTPProtocol
    noisy = False

    def __init__(self, components: Any, *, submission: bool = False,
                 implicit_tls: bool = False) -> None:
        self.components = components
        self.settings = s = components.settings
        self.submission = submission
        self.implicit_tls = implicit_tls
        self.config = ServerConfig(
            hostname=s.hub.hostname,
            # a bare local part is qualified with it: in ASCII, or a bare
            # RCPT TO:<postmaster> would need SMTPUTF8 (its U-label form is
            # the same domain to routing)
            primary_domain=ascii_domain(s.hub.primary_domain),
            max_message_size=s.smtp.max_message_size,
            max_recipients=s.smtp.max_recipients,
            max_errors=s.smtp.max_errors,
            max_junk_commands=s.smtp.max_junk_commands,
            max_auth_failures=s.smtp.max_auth_failures,
            vrfy=s.smtp.vrfy,
            expn=s.smtp.expn,
            tls_available=components.tls is not None and not implicit_tls,
            auth_available=components.portal is not None,
        )
        self.policy = RecipientPolicy(components)
        # The connection counts are shared by every SMTP listener built from
        # the same components: [smtp] max_connections is for the whole hub.
        self.limits: _Limits = components.shared("smtp_connections", _Limits)
        self.login_failures: FailureWindow = components.shared(
            "login_failures", lambda: FailureWindow(components.reactor))
        # how long the reactor thread could not run (MIN_DATA_RATE does not
        # count it); one the hub never started when built without MailHub
        self.stalls: IStallRecord = components.shared(
            "stalls", lambda: ReactorStalls(components.reactor))
        self._hosts: dict[str, tuple[bool, bool]] = {}
        self._id_prefix = f"{os.getpid():X}"

    def buildProtocol(self, addr: Any) -> SMTPProtocol:
        p = SMTPProtocol(self)
        return p

    def classify(self, host: str) -> tuple[bool, bool]:
        """``(loopback, relay_allowed)`` for a client address (cached).

        An empty host (a UNIX socket) is local: both are true."""
        known = self._hosts.get(host)
        if known is None:
            if not host:
                known = (True, True)
            else:
                known = (_is_loopback(host), self.settings.smtp.relay_allowed_from(host))
            if len(self._hosts) >= 4096:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def admit(self, host: str, exempt: bool) -> Reply | None:
        """Count a new connection, or say why it is refused (421)."""
        s = self.settings.smtp
        refused = self.limits.admit(host, exempt, s.max_connections,
                                    s.max_connections_per_client)
        if refused is None:
            return None
        reply = (replies.TOO_MANY_CONNECTIONS if refused == "total"
                 else replies.TOO_MANY_CONNECTIONS_FROM_YOU)
        return replies.closing(reply, self.config.hostname)

    def release(self, host: str) -> None:
        self.limits.release(host)

    @property
    def connections(self) -> int:
        """Open SMTP connections (all listeners of these components)."""
        return self.limits.connections

    def shut_down(self) -> defer.Deferred:
        """Send ``421`` to every open SMTP session of this factory's
        listeners (one waiting for the hub after its answer), and cut the
        refused connections still waiting for their polite close; the
        listeners call it when they stop.  Fires once those sessions are
        gone: their polite close is cut after ``STOP_CLOSE_GRACE`` (a TLS
        close waits for the client's close_notify), so that nothing of
        them outlives the hub's stop.  The sessions of other factories
        (other listeners of the hub, which may keep running when one is
        stopped alone) are left alone: they share the connection counts
        only."""
        mine = [session for session in self.limits.sessions if session.factory is self]
        for session in mine:
            session.shut_down()
        self.limits.end_refusals(self)
        return self.limits.all_gone(mine)

    def next_id(self) -> str:
        """A message id, unique within this process and across restarts:
        the clock's seconds, the pid and the process's message count, in
        hex, with ``_`` between them (``6A1B2C3D_1F3A_00001``).  Run
        together, two such triples could make one id (pid 0x1A at its
        message 0x123456, past a million, and pid 0x1A1 at 0x23456 in the
        same second).  ``_`` is RFC 5322 atext: the id stays an Atom in
        the ``Received:`` field's id clause (RFC 5321 4.4), and the left
        part of a Message-ID the hub adds a dot-atom-text; ``\\w`` takes
        it as part of a word.  Ids written before (no ``_``) stay what
        they are in the queue's records: they are only ever compared."""
        now = int(self.components.reactor.seconds())
        return f"{now:X}_{self._id_prefix}_{next(_MESSAGE_IDS):05X}"
