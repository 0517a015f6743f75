"""One delivery attempt, the Twisted side (``IDeliveryAgent``).

Owns the network half of relaying: choosing where to connect (the MX
hosts from ``txmailhub.relay.mx``, or the smarthost), connecting through
injected endpoints, driving the sans-IO ``ClientSession``
(``txmailhub.smtp.client``) with the RFC 5321 4.5.3.2 timeout of every
step on an injected clock, TLS (STARTTLS, or implicit TLS for a port-465
smarthost; verified with service_identity or opportunistic), remembering
which MX hosts offered TLS (``txmailhub.relay.tls_memory``, kept across
restarts; a later session without it is a downgrade: logged, or refused
with ``[relay] require_tls_after_seen``), which next hops refuse
RFC 4954's ``AUTH=`` on MAIL (``txmailhub.relay.auth_param_memory``, in
memory for a day: MAIL to them leaves it off), AUTH
credentials from ``[relay] smarthost_auth_file`` (never logged), and
streaming the message from disk with a producer (CRLF line ends and
dot-stuffing per chunk; for a server without 8BITMIME, the 7-bit copy
made by ``txmailhub.relay.mime7bit`` off the reactor thread, through the
injected ``run_blocking``).

It also tells the runner's stop which entries' deliveries got past
looking up DNS and connecting (``connected``: those must be finished),
and makes no new connection for the others while the stop waits
(``quiesce``).

It must not change the queue: it returns per-recipient results and the
runner records them -- also those of a transaction that got its reply
to the final "." when another follows on the same connection (``deliver``'s
``settled``), which waits until the runner has them written.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import ipaddress
import os
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IHandshakeListener, IReactorThreads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import Address, canonical_domain, written_domain
from txmailhub.config import RelaySettings, split_smarthost
from txmailhub.interfaces import IDeliveryAgent, IStallRecord
from txmailhub.logsafe import REPLY_LOG_MAX, listed, log_failure, loggable, plural
from txmailhub.regular_file import open_regular, read_regular
from txmailhub.relay import mime7bit
from txmailhub.relay.auth_param_memory import AuthParamMemory
from txmailhub.relay.body_producer import BodyProducer, BodyStopped
from txmailhub.relay.connect_reason import most_telling, reason
from txmailhub.relay.connect_timer import TimedTCPEndpoint
from txmailhub.relay.eyeballs import RaceLost, family_of, interleave, race
from txmailhub.relay.hostname import NameEndpoint, NoAddressConnected, Resolver, lookup_name
from txmailhub.relay.mx import (
    DNS_FAILURE_MEMORY_MAX,
    FAILED_HOST_MEMORY,
    FAILED_HOSTS_KEPT,
    DNSError,
    MailLoop,
    MXHost,
    NoSuchDomain,
    NullMX,
    RememberedDNSError,
)
from txmailhub.relay.queue import inline_io
from txmailhub.relay.record import QueueEntry, mta_name
from txmailhub.relay.tls_memory import TLSMemory, memory_path
from txmailhub.smtp.client import (
    TIMEOUTS,
    ClientSession,
    Close,
    Phase,
    Send,
    SendBody,
    SessionOutcome,
    StartTLS,
    TransactionDone,
)
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.tls import tls_failure

__all__ = ["DeliveryAgent", "DeliveryResult", "MIN_DATA_RATE", "MIN_DATA_RATE_GRACE",
           "SMTPClientProtocol", "SMARTHOST", "read_credentials", "thread_runner"]

log = Logger(namespace="txmailhub.relay.attempt")

SMARTHOST = "[smarthost]"  # the destination key when everything goes to the smarthost
CONNECT_TIMEOUT = 30
# A smarthost on this port speaks TLS from the first byte (RFC 8314 3.3
# submissions port): no STARTTLS, the same certificate rules.
SMTPS_PORT = 465
MAX_ADDRESSES_PER_ATTEMPT = 10
# Seconds an attempt may spend on one destination's hosts before it starts
# no further one: each may take the RFC 5321 timeouts (5 minutes for a
# greeting that never comes), and ten silent hosts held a delivery slot
# for 50 minutes.  A session under way is not cut.  The default of
# ``[relay] hosts_time_budget``, which the agent follows.
HOSTS_TIME_BUDGET = RelaySettings.hosts_time_budget
# The least average rate, in octets a second, at which the next hop must
# take the message data, beyond a grace: a message of N octets may take
# ``MIN_DATA_RATE_GRACE + N / MIN_DATA_RATE`` seconds from its first block
# to the final "." taken.  RFC 5321's timeouts are per block (3 minutes),
# so a next hop that reads 100 octets a second kept within every one of
# them and held a delivery slot for a day with a 10 MB message.  1 KiB/s
# (8 kbit/s) is below any link mail still travels over, and the grace
# covers a server that scans as it reads or stalls for a while: only a
# next hop that takes the data slower than that on average is cut (a
# temporary failure, 4.4.2: the message stays queued).  As the SMTP
# server's own MIN_DATA_RATE, whose 500 octets a second are for clients.
MIN_DATA_RATE = 1024
MIN_DATA_RATE_GRACE = 300

# A timeout or a data rate that is due is judged this many turns of the
# reactor later (the "second look", SMTPClientProtocol): in the first, its
# reads take a reply that came during a stall of the hub, and the room the
# next hop's socket made; under TLS that room reaches the message data only
# in a timed call those reads make for at once (Twisted's TLS layer drives
# a pull producer with a cooperator's ticks): it runs in the next turn,
# after the look made before those reads, before the one that look makes.
VERDICT_TURNS = 2

# How a session the hub's stop cut ends (``SMTPClientProtocol.abort``), and
# what a delivery the stop gave up says (``_given_up``): the hub's doing,
# not the next hop's -- no timeout, no host marked failed, and the message
# stays queued for the next start.
STOP_CUT = LocalReply.of(451, "4.3.0", "the hub stopped during the attempt: the message "
                         "stays queued, retried at the next start")


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt did for one recipient.

    ``kind`` is ``"delivered"``, ``"transient"`` or ``"permanent"``;
    ``reply`` is the remote's reply (or ours, for DNS and connection
    problems); ``remote_mta`` the host that gave it; ``dsn_passed`` whether
    the next hop took over RFC 3461 notifications (it offered DSN);
    ``unreachable`` whether no host of the destination could be connected
    to at all (``True``: refused, timed out, none answered, not even to
    refuse) or one was (``False``: a session, however it ended, though the
    reply kept may be a later host's failed connection), ``None`` when the
    delivery tried no host (a DNS failure -- the smarthost's name not
    resolving too --, a local error); the runner's
    destination feedback (``failing.py``) learns from it -- never recorded."""

    address: Address
    kind: str
    reply: Reply
    remote_mta: str | None = None
    dsn_passed: bool = False
    unreachable: bool | None = None


def read_credentials(path: str) -> tuple[str, str] | None:
    """``username:password``, the one line of ``path`` (None if unset).

    A second line is an error, not ignored: it is most likely a second
    account the admin expects to be used, or a password that was split."""
    if not path:
        return None
    return read_credentials_and_stat(path)[0]


def read_credentials_and_stat(path: str) -> tuple[tuple[str, str], os.stat_result]:
    """``read_credentials`` of a set ``path``, with the ``fstat`` of the
    file it read: ``mailhub check`` judges the mode of that file, where a
    second ``stat`` of the path could find it gone (or another) since."""
    # never a plain open: one of a FIFO put there would wait for a writer
    # for ever, and the delivery with it (``NotRegularFile``, an OSError:
    # the mail stays queued, said as a file that cannot be read).  The
    # first 64 KiB characters, as before: the octets of that many at most,
    # a character cut at the end left out -- at the cut only: a file that
    # ends within a character is no UTF-8 text (UnicodeDecodeError), as
    # open() said, not a password missing its last octets
    raw, st = read_regular(path, limit=4 * 65536)
    whole = len(raw) >= st.st_size
    text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=whole)[:65536]
    lines = [line for line in text.splitlines() if line.strip()]  # blank lines aside
    user, sep, password = (lines[0] if len(lines) == 1 else "").partition(":")
    if not sep or not user:
        raise ValueError(f"{path}: expected one line \"username:password\""
                         + (f", found {len(lines)}" if len(lines) > 1 else ""))
    return (user, password), st


def _credentials_problem(error: Exception) -> str:
    """Why ``read_credentials`` failed, without the file's path (it goes
    in the reply kept with the mail, and in a bounce if it expires)."""
    if isinstance(error, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(error, OSError):
        return f"it cannot be read: {error.strerror or error}"
    text = str(error)
    cut = text.find(": expected ")  # after the path read_credentials names
    return text[cut + 2:] if cut >= 0 else text


@implementer(IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """Moves bytes between a transport and a ``ClientSession``.

    Its timers -- the RFC 5321 4.5.3.2 wait for each reply, the data
    block's, ``MIN_DATA_RATE`` -- measure the server by the clock, and a
    timer runs before the reads of its reactor turn: after a stall of the
    hub's reactor thread (a call blocked on a hung disk, ``fsfreeze``, the
    process stopped) whatever the server sent meanwhile, or the room its
    socket made, is still unnoticed, and a command written just before
    the stall has not even left.  So a verdict against the server is
    given only on a second look ``VERDICT_TURNS`` reactor turns later
    (after those reads, and after the timed calls they made for at once:
    under TLS the room the socket made reaches the message data only
    through one), and the time ``stalls`` (the hub's ``IStallRecord``;
    ``None``: none is credited) counted while a timer ran is given back
    to the server before that.

    The TLS handshake after STARTTLS is timed as a step of its own
    (``TIMEOUTS[Phase.TLS]``): the EHLO written with it leaves only once
    the handshake is done (``handshakeCompleted``), and its reply's
    clock starts then.  A handshake that never ends -- a server that
    answered 220 and then sends nothing, or stops half way -- is the
    session's timeout in phase ``TLS`` ("timeout waiting for the server
    (TLS handshake)"), not one of the EHLO nobody has read yet.

    ``transaction_done(action)`` is given each ``TransactionDone`` (a
    transaction's final "." answered, another to follow); a Deferred it
    returns holds the next transaction's commands until it fires (its
    results recorded first: a crash in the next transaction must not send
    them again), no reply timer running meanwhile (the wait is the hub's,
    not the server's); a reply read meanwhile answers no command and ends
    the session (``_hold``)."""

    def __init__(self, session: ClientSession, clock: Any, message_path: str,
                 tls_creator: Any, converted_path: str,
                 run_blocking: Callable[..., defer.Deferred] = inline_io,
                 stalls: IStallRecord | None = None,
                 transaction_done: Callable[[TransactionDone], defer.Deferred | None]
                 | None = None) -> None:
        self.session = session
        self.transaction_done = transaction_done
        self.stalls = stalls
        self.run_blocking = run_blocking
        self.clock = clock
        self.message_path = message_path
        self.tls_creator = tls_creator
        self.converted_path = converted_path
        self.done: defer.Deferred[SessionOutcome] = defer.Deferred()
        self._timer: Any = None
        # when the reply timer is due, and the stall record read when it
        # was set (or last moved on by a stall); the record read when the
        # message data began
        self._timer_due = 0.0
        self._timer_held = 0.0
        self._body_held = 0.0
        self._file: Any = None
        self._producer: BodyProducer | None = None  # the message data on its way
        self._rate_timer: Any = None  # when the data would be behind MIN_DATA_RATE
        self._body_started = 0.0
        self._closing = False
        self._tls_pending = False  # STARTTLS begun, nothing received over TLS yet
        self._handshaking = False  # STARTTLS begun, its handshake not done yet
        self._handshake_done = False  # the TLS layer said so (``handshakeCompleted``)
        self._received = False  # any byte from the server (under implicit TLS: after the handshake)
        self._lost = False  # connectionLost has run
        self._lost_waiters: list[defer.Deferred] = []  # when_lost
        self._stopping = False  # the hub's stop cut the session (``abort``)
        # the next transaction's commands wait (``_hold``)
        self._holding = False

    # --- timers ---------------------------------------------------------------

    def _held(self, now: float) -> float:
        """The stall record's reading at ``now`` (0 without a record)."""
        return 0.0 if self.stalls is None else self.stalls.held(now)

    def _arm(self, timeout: float | None = None) -> None:
        """Start the reply timer: ``timeout`` seconds, the session's current
        step's when ``None``."""
        if timeout is None:
            timeout = self.session.timeout
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        now = self.clock.seconds()
        self._timer_held = self._held(now)
        self._timer_due = now + timeout
        self._timer = self.clock.callLater(timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def abort(self) -> None:
        """Cut the connection now (the hub is stopping): without its final
        "." the server throws the transaction away.  A session already
        closing (its results known, a TLS close waiting for the server) is
        cut too.

        The session's timers are cancelled first and the session ends now,
        for what it is (``STOP_CUT``): the transport says the connection is
        lost a turn or more later, and a reply timer (or its second look,
        or the data rate's) firing in between would record the stop as the
        server's timeout -- a wrong reason, and a host marked failed."""
        self._stopping = True
        self._disarm()
        self._stop_rate_timer()
        if self._holding:
            self.session.held_back()  # (``_hold``: they never went)
        if self.session.outcome is None:
            self.session.cut(STOP_CUT)
        if self.transport is not None:
            self._abort()

    def when_lost(self) -> defer.Deferred:
        """Fires once the transport has said the connection is lost (at
        once if it has): after ``abort``, a reactor turn or more later,
        when its socket is closed."""
        d: defer.Deferred = defer.Deferred()
        if self._lost:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    def _timed_out(self, look: int = 0) -> None:
        """The current step's timeout.  The time the stall record counted
        since the timer was set is the hub's: the timer is due that much
        later (a command written just before a stall left only after it).
        Then a second look ``VERDICT_TURNS`` turns later (``look`` counts
        them): a reply (or a drained socket, for the data block) that
        came during a stall is seen in the turns between, and any of it
        cancels this timer."""
        self._timer = None
        if self._stopping:  # the hub's stop cut the session (``abort``)
            return
        now = self.clock.seconds()
        held = self._held(now)
        if held > self._timer_held:
            self._timer_due += held - self._timer_held
            self._timer_held = held
            if self._timer_due > now:
                self._timer = self.clock.callLater(self._timer_due - now, self._timed_out)
                return
        if look < VERDICT_TURNS:
            # Twisted runs a call made now in its next turn, after that
            # turn's reads
            self._timer = self.clock.callLater(0, self._timed_out, look + 1)
            return
        if self._handshaking:
            # the EHLO written after STARTTLS never left: the wait was the
            # handshake's (the session believes it is in EHLO)
            self.session.phase = Phase.TLS
        log.warn("timeout waiting for the server ({phase})", phase=self.session.phase.value)
        self.session.timed_out()
        self._abort()

    def _abort(self) -> None:
        self._closing = True
        self._stop_body()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    # --- Protocol -----------------------------------------------------------------

    def connectionMade(self) -> None:
        self._arm()

    def handshakeCompleted(self) -> None:
        """The TLS layer's word that the handshake is done (also under
        implicit TLS, where nothing waits for it): the EHLO written after
        STARTTLS leaves now, and the wait for its reply starts."""
        self._handshake_done = True
        if self._handshaking and not self._closing:
            self._handshaking = False
            self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._tls_pending = False
        self._handshaking = False  # bytes come through TLS once it is up
        self._received = True
        seen = self.session.replies_received
        try:
            if self._producer is not None and self._producer.dot_written:
                # a reply before the transport said it took the final ".":
                # the server read it, so the transfer is over (a transport
                # that asks its producer for more only at idle times)
                self._producer.finish_early()
            actions = self.session.receive(data)
            if self.session.replies_received != seen and not self._holding:
                self._arm()  # a whole reply came: the next one's clock starts
            self._run(actions)
        except Exception:
            log.failure("SMTP client session failed")
            self.session.connection_lost("local error")
            self._abort()

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self._disarm()
        self._stop_rate_timer()
        if self._file is not None:
            self._file.close()
            self._file = None
        # STARTTLS begun and nothing read over TLS: a TLS failure -- but not
        # once the handshake was done, when the connection merely went (or
        # the EHLO's wait timed out): taken for one, the host was tried
        # again in clear (opportunistic TLS) for a server that went quiet
        # after the handshake, or whoever sits between it and the hub
        tls_pending = self._tls_pending and not (self._handshake_done
                                                 and not tls_failure(reason))
        why = "connection lost"
        if tls_pending:
            why = "TLS negotiation failed"
            detail = tls_failure(reason)
            if detail:
                why += f" ({detail})"
            # The EHLO after STARTTLS is written at once (it goes when the
            # handshake is done): the session believes it is in EHLO.
            self.session.phase = Phase.TLS
        elif reason is not None and not self._closing:
            # implicit TLS (a port-465 smarthost): the handshake comes before
            # the greeting, and its failure is said in the same words as
            # after STARTTLS, not as a Python repr of the exception
            detail = tls_failure(reason) if self.session.tls_active and not self._received else ""
            why = (f"TLS negotiation failed ({detail})" if detail
                   else f"connection lost ({reason.getErrorMessage()})")
        if self._holding:
            self.session.held_back()  # (``_hold``: they never went)
        outcome = self.session.connection_lost(why)
        if tls_pending and outcome.session_error is not None:
            outcome = dataclasses.replace(outcome, phase=Phase.TLS.value)
        if not self.done.called:
            self.done.callback(outcome)
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    # --- actions ---------------------------------------------------------------------

    def _run(self, actions: Sequence[Any]) -> None:
        for n, action in enumerate(actions):
            if isinstance(action, TransactionDone):
                wait = self._hand_over(action)
                if wait is not None:
                    # (one fired already goes on at once, from ``_hold``;
                    # one ``called`` may still wait, on a Deferred it chains)
                    self._hold(wait, actions[n + 1:])
                    return
            elif isinstance(action, Send):
                self.transport.write(action.data)
            elif isinstance(action, StartTLS):
                self.transport.startTLS(self.tls_creator)
                self._tls_pending = self._handshaking = True
                # writes made now are sent once the handshake is done
                self._run(self.session.tls_started())
                self._arm(TIMEOUTS[Phase.TLS])
            elif isinstance(action, SendBody):
                self._send_body(action.convert_7bit)
            elif isinstance(action, Close):
                self._closing = True
                self._disarm()
                self._stop_body()
                if action.abort:
                    self._abort()
                    continue
                self.transport.loseConnection()
                outcome = self.session.outcome
                if outcome is not None and not self.done.called:
                    # The session is over and its results known: report them
                    # now, not once the close is through (under TLS that
                    # waits for the server's close_notify, up to a minute,
                    # and a hub that stops meanwhile would record nothing).
                    self.done.callback(outcome)
                if not self._lost:
                    # Under TLS the close sends close_notify and waits for the
                    # server's: one that neither answers nor closes the TCP
                    # connection would hold the attempt (and its delivery
                    # slots) for good.
                    self._timer = self.clock.callLater(self.session.timeout, self._abort)

    def _hand_over(self, action: TransactionDone) -> defer.Deferred | None:
        """Give ``transaction_done`` a transaction's results; the Deferred
        to wait for before the next transaction, if any.  An error out of
        it is logged and waits for nothing: the results stay the outcome's
        (recorded when the delivery ends)."""
        if self.transaction_done is None or self._closing:
            return None
        try:
            return self.transaction_done(action)
        except Exception:
            log.failure("handing over a transaction's results failed")
            return None

    def _hold(self, wait: defer.Deferred, rest: Sequence[Any]) -> None:
        """The next transaction's actions ``rest`` wait for ``wait``: no
        reply timer runs until it fires (whether it succeeds or fails);
        then they go, unless the session ended meanwhile (the hub's stop
        cut it, the server closed the connection).  The connection is read
        meanwhile, whatever the transport: no command is outstanding
        (``ClientSession.hold``), so a reply that comes ends the session
        now -- left unread (a paused socket) or kept until they went (a TLS
        transport, which cannot pause), it would be read after the next
        ``MAIL`` went and pass for its reply."""
        self._disarm()
        self._holding = True
        self.session.hold()

        def go_on(result: Any) -> None:
            if isinstance(result, Failure):
                log_failure(log, result, "recording a transaction's results failed")
            self._holding = False
            if self._closing or self._lost or self.done.called:
                return
            self.session.release()
            self._arm()
            try:
                self._run(rest)
            except Exception:
                log.failure("SMTP client session failed")
                self.session.connection_lost("local error")
                self._abort()

        wait.addBoth(go_on)

    def _send_body(self, convert: bool) -> None:
        if not convert:
            self._stream(self.message_path, False)
            return
        # the conversion reads and writes the whole message: off the reactor
        # thread; the data-block timer keeps running meanwhile
        d = self.run_blocking(mime7bit.convert_file, self.message_path, self.converted_path)

        def converted(_: Any) -> None:
            if self._closing or self.done.called:  # timed out or gone meanwhile
                _unlink(self.converted_path)
                return
            self._stream(self.converted_path, True)

        def failed(f: Any) -> None:
            _unlink(self.converted_path)
            if f.check(FileNotFoundError) and not os.path.exists(self.message_path):
                if not (self._closing or self.done.called):
                    self._message_gone(self.message_path)
                return
            if f.check(mime7bit.Unconvertible):
                log.info("cannot send {path} in 7 bits: {why}", path=self.message_path,
                         why=f.getErrorMessage())
                # this hub's judgement, not the server's words (RFC 3464 2.3.6);
                # a message sent with SMTPUTF8 is a "UTF-8 header message",
                # which has its own code (RFC 6531 4.2: 550 X.6.9)
                code, status = ((550, "5.6.9") if self.session.smtputf8_wanted
                                else (554, "5.6.3"))
                reply = LocalReply(code, status, (
                    "the message needs 8BITMIME or SMTPUTF8, which the remote server "
                    "lacks, and has no 7-bit form: " + f.getErrorMessage(),))
            else:
                if _shortage(f.value):
                    # out of descriptors or memory: one line, no traceback
                    log_failure(log, f, "converting {path} to 7 bits failed",
                                path=self.message_path)
                else:
                    log.failure("converting {path} to 7 bits failed", f, path=self.message_path)
                reply = LocalReply(451, "4.3.0", (
                    "local error while converting the message to 7 bits, will retry",))
            if not (self._closing or self.done.called):
                self._run(self.session.body_failed(reply))

        d.addCallbacks(converted, failed)
        d.addErrback(lambda f: log.failure("sending the converted message failed", f))

    def _message_gone(self, path: str) -> None:
        """The message file is gone by the time its data is due: ``mailhub
        queue delete`` removed the entry while this attempt was under way
        (it may: ``relay.rst``, "Managing the queue").  No fault of the
        hub -- a soak that deleted entries while they were delivered got
        a critical "SMTP client session failed" and a traceback for it --
        so one line says so, and the transaction is dropped without the
        final "." (the next hop discards it), as for any message data
        that cannot be produced."""
        log.info("{path} is gone when its data was due (deleted from the queue during "
                 "the attempt): not sent", path=path)
        self._run(self.session.body_failed(LocalReply(451, "4.3.0", (
            "the message is no longer in the queue (deleted during the attempt)",))))

    def _stream(self, path: str, converted: bool) -> None:
        try:
            # never a plain open: a FIFO put in the message's place would
            # wait for a writer for ever, and the hub's reactor with it
            self._file = open_regular(path)  # closed when the transfer ends
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not converted:
                self._message_gone(path)
            else:
                # out of descriptors (EMFILE, ENFILE), a folder in its place,
                # the 7-bit copy of a moment ago gone: the hub's failure, not
                # the server's, as a read error while streaming is
                self._not_opened(path, converted, e)
            return
        skip_trace_return_path(self._file)
        # the data-block timeout runs per chunk the transport takes; the
        # wait for the reply to the final "." starts once it took that
        # (body_producer.py): not while it may sit in a buffer
        producer = BodyProducer(self._file, self.transport, self.session.body_encoder(),
                                progress=self._progress)
        self._producer = producer
        self._body_started = self.clock.seconds()
        self._body_held = self._held(self._body_started)

        def over() -> None:
            self._producer = None
            self._stop_rate_timer()
            if self._file is not None:
                self._file.close()
                self._file = None
            if converted:
                _unlink(path)

        def sent(_: Any) -> None:
            over()
            if self._closing:
                return
            self._run(self.session.body_sent())
            self._arm()

        def not_sent(f: Any) -> None:
            over()
            if self.done.called or self._closing or f.check(BodyStopped):
                # the connection went (or we ended it) mid-stream: the
                # attempt gets its outcome, a retry; nothing unexpected here
                log.info("streaming {path} stopped: the connection was closed",
                         path=self.message_path)
                return
            # the hub could not make the data (a disk error): the hub's
            # failure, not the server's -- every recipient gets it, and the
            # connection is dropped without the final "."
            log.failure("streaming {path} failed", f, path=path)
            self._run(self.session.body_failed(LocalReply(451, "4.3.0", (
                "local error while sending the message, will retry",))))

        producer.start().addCallbacks(sent, not_sent)

    def _not_opened(self, path: str, converted: bool, error: OSError) -> None:
        """The message (or its 7-bit copy) cannot be opened to be sent,
        after the server's 354: every recipient gets the hub's temporary
        ``451 4.3.0`` and the connection is dropped without the final "."
        (``body_failed``), as when a read fails while streaming: the copy
        removed, and no other host tried with a message this hub cannot
        read now.  The entry stays queued.  Out of descriptors or memory
        is one line in the log; any other error is a fault, logged with
        its traceback."""
        if converted:
            _unlink(path)
        if self._closing or self.done.called:
            return
        if _shortage(error):
            log.error("cannot open {path} to send it: {error}; the mail stays queued",
                      path=path, error=str(error))
        else:
            log.failure("cannot open {path} to send it; the mail stays queued",
                        Failure(error), path=path)
        self._run(self.session.body_failed(LocalReply(451, "4.3.0", (
            "local error while sending the message, will retry",))))

    def _stop_body(self) -> None:
        """The session ends (a ``421`` in the middle of the data, a timeout,
        the hub's stop): the message data still on its way stops here,
        before the connection is closed, whatever the transport.  Twisted's
        TCP and TLS transports send nothing more once aborted, but one closed
        with ``loseConnection`` (``_abort``'s fallback for a transport
        without ``abortConnection``) asks a registered pull producer for
        the rest first -- the rest of the message, "." included, for a
        server that ended the session.  The transfer's end then runs as
        for a connection that went (``_stream``'s ``not_sent``): the file
        closed, a 7-bit copy removed, the session's outcome untouched."""
        producer = self._producer
        if producer is not None:
            producer.stop()

    def _progress(self) -> None:
        """The transport took what it was given and asks for more: the data
        block's timeout starts again, and the time by which the next hop,
        at ``MIN_DATA_RATE``, would have taken what it took so far is when
        it is cut (unless it takes more before).

        Never called once the session is closing (a ``421`` in the middle
        of the data): every way to close stops the producer first
        (``_stop_body``), and a stopped producer calls nothing."""
        self._arm()
        producer = self._producer
        if producer is None:
            return
        self._stop_rate_timer()
        now = self.clock.seconds()
        # judged on a later turn: the call that says the "." was taken
        # ends the transfer first, and cancels this
        self._rate_timer = self.clock.callLater(
            max(0.0, self._rate_deadline(producer, now) - now), self._too_slow)

    def _rate_deadline(self, producer: BodyProducer, now: float) -> float:
        """When the next hop is behind ``MIN_DATA_RATE`` with what it took
        so far: the grace and the time for those octets from the data's
        start, and the stalls of the hub's reactor thread the stall record
        counted since (no data went out then, whatever the next hop)."""
        return (self._body_started + MIN_DATA_RATE_GRACE + producer.taken / MIN_DATA_RATE
                + self._held(now) - self._body_held)

    def _stop_rate_timer(self) -> None:
        if self._rate_timer is not None and self._rate_timer.active():
            self._rate_timer.cancel()
        self._rate_timer = None

    def _too_slow(self, look: int = 0) -> None:
        """The next hop took the message data slower than ``MIN_DATA_RATE``
        on average: the session ends, a temporary failure said in words,
        and the connection is dropped before the "." was taken (the server
        discards the transaction).  Not while a stall of the hub moved the
        deadline on (``_rate_deadline``), and only on a second look
        ``VERDICT_TURNS`` turns later: the transport's call for more data,
        when the socket drained during a stall, comes in the turns between
        and cancels this."""
        self._rate_timer = None
        producer = self._producer
        if producer is None or self._closing or self._stopping:
            return
        now = self.clock.seconds()
        deadline = self._rate_deadline(producer, now)
        if now < deadline:
            self._rate_timer = self.clock.callLater(deadline - now, self._too_slow)
            return
        if look < VERDICT_TURNS:
            self._rate_timer = self.clock.callLater(0, self._too_slow, look + 1)
            return
        # the next hop's time: without the hub's stalls
        seconds = now - self._body_started - (self._held(now) - self._body_held)
        log.warn("the server took the message data too slowly ({octets} octets in {seconds:.0f}"
                 " s, under {rate} octets a second after the first {grace} s): connection "
                 "closed", octets=producer.taken, seconds=seconds, rate=MIN_DATA_RATE,
                 grace=MIN_DATA_RATE_GRACE)
        self.session.cut(LocalReply(421, "4.4.2", (
            f"the server took the message data too slowly: {producer.taken} octets in "
            f"{seconds:.0f} seconds, under the {MIN_DATA_RATE} octets a second (after the "
            f"first {MIN_DATA_RATE_GRACE} seconds) the hub allows; will retry",)))
        self._disarm()
        self._abort()


# More transactions after a "too many recipients" (452 4.5.3), per attempt.
MAX_EXTRA_TRANSACTIONS = 20


def where(name: str, address: str) -> str:
    """How logs and replies name a host: ``mx.example.org[192.0.2.1]``, but
    an address literal once (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``), not
    ``[192.0.2.1][192.0.2.1]``;
    and the smarthost, whose "address" is what it is connected to as (its
    name, looked up as the connection is made, or the address written)
    once: ``smtp.example.net``, ``[192.0.2.25]`` -- not
    ``smtp.example.net[smtp.example.net]``."""
    if name == address:
        return address_literal(address) if _is_ip(address) else name
    # an address literal destination's host is named by its address
    return name if name.startswith("[") else f"{name}[{address}]"


def address_literal(ip: str) -> str:
    """``ip`` as SMTP writes an address where a domain name goes (RFC 5321
    4.1.3): ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _remote_name(name: str, smarthost: bool) -> str:
    """The next hop as results name it (``remote_mta``: queue show's
    ``remote=``, a notice's ``Remote-MTA: dns; ...``): a smarthost written
    as an address as SMTP's address literal, as the MX path names the host
    of ``bob@[192.0.2.9]`` -- not a bare number where a domain name goes;
    a name without a final dot (``mta_name``)."""
    if smarthost and _is_ip(name):
        return address_literal(name)
    return mta_name(name) or name


def _log_not_delivered(queue_id: str, destination: str, last: Reply, said_by: str | None,
                       sessions: int) -> None:
    """The one line for an attempt at ``destination`` that ends with
    ``last`` as its recipients' reply, in words true of what happened:
    "not reached" only when no host answered at all.  A host that answered
    and ended the session (a ``421`` to MAIL or RCPT, a ``5xx`` greeting)
    was reached: the line names it (``said_by``) and says whether the
    reply is its words or this hub's account of the session (a timeout, a
    protocol error: a ``LocalReply``).  When hosts answered and a later
    one could not be connected to, ``last`` is that connection's failure
    and the line says how many answered before.  The queue id comes first,
    and the reply is escaped (``loggable``), as in every relay line."""
    reply = loggable(last.text(), REPLY_LOG_MAX, marked=True)
    if said_by is not None:
        how = ("session with {host} failed:" if isinstance(last, LocalReply)
               else "{host} said")
        log.info("{queue_id}: {destination} not delivered: " + how + " {reply}",
                 queue_id=queue_id, destination=destination, host=said_by, reply=reply)
    elif sessions:
        log.info("{queue_id}: {destination} not delivered: {reply} ({hosts} that answered "
                 "before did not take it)", queue_id=queue_id, destination=destination,
                 reply=reply, hosts="a host" if sessions == 1 else f"{sessions} hosts")
    else:
        log.info("{queue_id}: {destination} not reached: {reply}", queue_id=queue_id,
                 destination=destination, reply=reply)


def _maybe_delivered(outcome: SessionOutcome) -> bool:
    """Whether a failed session sent the final "." and got no reply to it
    (a timeout, a connection closed): only then may the server have taken
    the message without our knowing."""
    return (outcome.phase == Phase.DATA_END.value
            and isinstance(outcome.session_error, LocalReply))


def _too_many_recipients(reply: Reply) -> bool:
    return reply.code == 452 and reply.status == "4.5.3"


# Refusals in these phases are about the host, not the message.
_HOST_PHASES = (Phase.GREETING.value, Phase.EHLO.value, Phase.HELO.value)

def _refused_for_now(outcome: SessionOutcome) -> bool:
    """Whether the server took MAIL and then refused every RCPT, or DATA
    only for now, and at least one recipient only for now (4yz): no
    message went, and those recipients may go to the next MX host in the
    same attempt.  Not a refusal after the message text (the final "."):
    that waits for the next retry (docs/relay.rst)."""
    return (outcome.no_recipient_taken or outcome.data_refused_for_now) and any(
        r.kind == "transient" for r in outcome.recipients)


def _for_the_next_host(outcome: SessionOutcome) -> set[Address]:
    """The recipients of ``outcome`` (a session that went well) that go on
    to the next MX host in the same attempt: those refused only for now
    by a host that took no message for them -- the whole session took
    none (``_refused_for_now``), or their transaction carried no message
    text while another of the session did (``untaken_for_now``: a server
    that took the first message and then refused every RCPT of the next
    for now, a limit per session).  RFC 5321 5.1 has the client try the
    addresses "until a delivery attempt succeeds"; a host that read no
    message for them holds no copy, so the next one makes no duplicate."""
    if _refused_for_now(outcome):
        return {r.address for r in outcome.recipients if r.kind == "transient"}
    return {r.address for r in outcome.recipients
            if r.kind == "transient" and r.address in outcome.untaken_for_now}


def return_path_octets(path: str) -> int:
    """How many octets of the message's CRLF form ``skip_trace_return_path``
    leaves out of ``path`` (0 when it has no Return-Path line, or is gone)."""
    try:
        with open_regular(path) as f:  # (a FIFO: refused, not waited on)
            skip_trace_return_path(f)
            skipped = f.tell()
    except OSError:
        return 0
    return skipped + 1 if skipped else 0  # its LF goes out as CRLF


def skip_trace_return_path(f: Any) -> None:
    """Position ``f`` past a leading ``Return-Path:`` field.

    Local copies carry the Return-Path of their final delivery (RFC 5321
    4.4); a message relayed onwards must not (the next hop adds its own
    at final delivery), so the queue's copy is sent without it.  Only the
    first line is looked at: our own trace field is never folded."""
    start = f.tell()
    first = f.readline(1001)
    if not (first[:12].lower() == b"return-path:" and first.endswith(b"\n")):
        f.seek(start)


#: the errors of a system short of what opening a file takes -- out of
#: descriptors (the process's, the system's) or of kernel memory -- which
#: pass once it has them back
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _shortage(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _SHORTAGES


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def thread_runner(reactor: Any) -> Callable[..., defer.Deferred]:
    """``f(*args)`` in the reactor's thread pool, or at once when the
    reactor has no threads (a test clock)."""
    if not IReactorThreads.providedBy(reactor):
        return inline_io

    def run(f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    return run


def default_endpoint(reactor: Any, resolve: Resolver | None = None,
                     budget: float | None = None,
                     stalls: IStallRecord | None = None) -> Callable[[str, int], Any]:
    """``endpoint(host, port)``: TCP to an address; to a name (the
    smarthost), a ``NameEndpoint`` that looks up its IDNA2008 A-labels
    with ``resolve`` (default: ``getaddrinfo`` in the reactor's thread
    pool) and races its addresses with staggered starts (RFC 8305,
    ``relay.eyeballs``), starting none after ``budget`` seconds (the
    agent's ``hosts_time_budget``).  Each TCP connection has
    ``CONNECT_TIMEOUT`` seconds, without the stalls of the hub's reactor
    thread ``stalls`` counted (``relay.connect_timer``)."""
    run = thread_runner(reactor)

    def in_thread(name: str, port: int) -> defer.Deferred:
        return run(lookup_name, name, port)

    lookup: Resolver = resolve or in_thread

    def make(host: str, port: int) -> Any:
        if not _is_ip(host):
            return NameEndpoint(reactor, host, port, CONNECT_TIMEOUT, lookup, budget, stalls)
        return TimedTCPEndpoint(reactor, host, port, CONNECT_TIMEOUT, stalls)

    return make


def _dns_reply(error: DNSError) -> Reply:
    if isinstance(error, NullMX):
        return LocalReply.of(556, "5.1.10", error.reason)
    if isinstance(error, MailLoop):
        return LocalReply.of(554, "5.4.6", error.reason)
    if isinstance(error, NoSuchDomain):
        return LocalReply.of(550, "5.1.2", error.reason)
    return LocalReply.of(451, "4.4.3", error.reason)


@implementer(IDeliveryAgent)
class DeliveryAgent:
    """Delivers queued messages over SMTP.

    ``settings`` is the whole ``Settings``; ``mx`` an ``MXResolver``;
    ``endpoint(host, port)`` returns a client endpoint (default: TCP4/TCP6
    for addresses, for the smarthost's name a ``relay.hostname.NameEndpoint``,
    which looks up its IDNA2008 A-labels);
    ``trust_root`` is passed to ``optionsForClientTLS`` (``None``: the
    platform's CAs); ``tls_options(host, verify)`` builds the TLS
    connection creator (default: ``optionsForClientTLS`` with
    service_identity checks when ``verify``, a certificate naming no host
    refused too (``relay.client_tls``), else a non-verifying
    ``CertificateOptions``; TLS 1.2 at least either way);
    ``run_blocking(f, *args) -> Deferred`` runs blocking file work -- the
    7-bit conversion, the TLS memory's writes -- (default: the reactor's
    thread pool when ``clock`` provides ``IReactorThreads``, else at
    once); ``tls_memory`` is the
    ``TLSMemory`` of hosts seen offering STARTTLS (default: the one in
    ``state_dir/relay/``, loaded now); ``auth_param_memory`` the
    ``AuthParamMemory`` of next hops that refuse ``AUTH=`` on MAIL
    (default: a new one on ``clock``); ``stalls`` the hub's
    ``IStallRecord``, whose count of the reactor thread's stalls each
    session's timers give back to the server (``SMTPClientProtocol``;
    ``None``: no stall is credited)."""

    def __init__(self, settings: Any, mx: Any, clock: Any,
                 endpoint: Callable[[str, int], Any] | None = None,
                 trust_root: Any = None,
                 tls_options: Callable[[str, bool], Any] | None = None,
                 run_blocking: Callable[..., defer.Deferred] | None = None,
                 tls_memory: TLSMemory | None = None,
                 auth_param_memory: AuthParamMemory | None = None,
                 stalls: IStallRecord | None = None) -> None:
        self.settings = settings
        self.stalls = stalls
        self.relay = settings.relay
        self.mx = mx
        self.clock = clock
        # the smarthost's addresses are tried within one connection: they
        # keep to the attempt's time budget there
        self.endpoint = endpoint or default_endpoint(clock,
                                                     budget=self.relay.hosts_time_budget,
                                                     stalls=stalls)
        # Sessions in flight, for abort_all; stopped: no new connection.
        self._sessions: set[SMTPClientProtocol] = set()
        self._connecting: dict[defer.Deferred, str] = {}  # -> its queue id
        self.stopped = False
        # Per queue id, the deliveries in flight that got past connecting
        # (see ``connected``); and, while the hub's stop waits (``quiesce``),
        # the queue ids that may still connect.
        self._past_connect: dict[str, int] = {}
        self._may_connect: frozenset[str] | None = None
        self._epoch = 0  # bumped by abort_all: a delivery begun before it goes no further
        self.trust_root = trust_root
        self.tls_options = tls_options or self._default_tls_options
        self.run_blocking = run_blocking or thread_runner(clock)
        if tls_memory is None:
            tls_memory = TLSMemory(memory_path(settings.hub.state_dir), clock,
                                   self.run_blocking)
            tls_memory.load()
        self.tls_seen = tls_memory
        if auth_param_memory is None:  # (an empty one is falsy: no "or" here)
            auth_param_memory = AuthParamMemory(clock)
        self.auth_param_refusers = auth_param_memory
        # Destinations none of whose hosts could be connected to, each with
        # when that was learnt, until when it is remembered and the reply
        # it gave: the deliveries to it meanwhile are deferred with that
        # reply, without a lookup or a connection (RFC 5321 4.5.4.1: a
        # list of hosts the client cannot reach, not a retry per message).
        # As long as the shortest retry step (five minutes at most), as the
        # resolver's memory of DNS failures; emptied by ``resume``.
        self.unreachable_memory = min(min(self.relay.retry_schedule, default=0),
                                      DNS_FAILURE_MEMORY_MAX)
        # How long an address that could not be connected to goes after
        # its host's others (``HostHealth.address_failed``): the longest
        # retry step and the ten minutes a failed host is remembered, so
        # an entry's next retry, however late, starts with the addresses
        # its last one left untried.  With the ten minutes alone, retries
        # an hour apart tried the same first MAX_ADDRESSES_PER_ATTEMPT
        # addresses of a host with more (the order is fixed) every time.
        self.address_memory = max(self.relay.retry_schedule, default=0) + FAILED_HOST_MEMORY
        # The last field: what the deferral says of the destination
        # (``DeliveryResult.unreachable``): ``None`` when the smarthost's
        # name did not resolve (a DNS failure, not a host that answered
        # no connection).  Then why hosts were left untried at that try
        # ("" when every host was tried), for the remembered deferrals'
        # log lines.
        self._unreachable: dict[str, tuple[float, float, Reply, bool | None, str]] = {}
        # The destinations whose last attempt left hosts untried (the
        # MAX_ADDRESSES_PER_ATTEMPT addresses or the hosts_time_budget ran
        # out) and reached no host that took the mail: only their next
        # attempt puts the hosts that failed after the others
        # (``_rotated``).  Any other keeps the MX preference: a primary
        # that refused once went after its backups for as long as its
        # address's failure was remembered (hours).  FAILED_HOSTS_KEPT at
        # most, the oldest forgotten: strangers choose the domains.
        self._left_untried: dict[str, None] = {}

    def _default_tls_options(self, host: str, verify: bool) -> Any:
        # TLS 1.2 at least either way (RFC 8996), pinned in relay/client_tls.py
        from txmailhub.relay.client_tls import opportunistic_client_tls, verified_client_tls

        if verify:
            # optionsForClientTLS, but a certificate naming no host is refused
            # too (Twisted's own check only logs it: relay/client_tls.py)
            return verified_client_tls(host, self.trust_root)
        return opportunistic_client_tls()

    # --- IDeliveryAgent -----------------------------------------------------------

    def attempt(self, entry: QueueEntry) -> defer.Deferred:
        """Every pending recipient once, one transaction per destination."""
        groups: dict[str, list[Address]] = {}
        for r in entry.pending:
            groups.setdefault(self.destination(r.address), []).append(r.address)
        ds = [self.deliver(entry, dest, rcpts) for dest, rcpts in groups.items()]
        d = defer.gatherResults(ds, consumeErrors=True)
        return d.addCallback(lambda lists: [r for results in lists for r in results])

    # --- one destination ---------------------------------------------------------

    def destination(self, address: Address) -> str:
        """The key deliveries are grouped and limited by: one per domain,
        however its addresses spell it (an A-label and its U-label), as the
        log names it (an IPv6 literal with its ``IPv6:`` tag)."""
        if self.relay.smarthost:
            return SMARTHOST
        return written_domain(canonical_domain(address.domain))

    def lookup_in_flight(self, destination: str) -> defer.Deferred | None:
        """A Deferred that fires once the MX lookup of ``destination``
        under way ends (``MXResolver.lookup_in_flight``), or ``None`` when
        none is (the smarthost is never looked up so).  The runner takes
        no more than one entry for a destination whose answer is not in
        yet: the others would only wait for it, each holding a slot."""
        if destination == SMARTHOST:
            return None
        look = getattr(self.mx, "lookup_in_flight", None)  # a test's fake may have none
        return None if look is None else look(destination)

    def deliver(self, entry: QueueEntry, destination: str,
                recipients: Sequence[Address],
                settled: Callable[[list[DeliveryResult]], defer.Deferred | None]
                | None = None) -> defer.Deferred:
        """Deliver ``recipients`` (all for ``destination``): one SMTP
        transaction, or more when the server takes fewer recipients per
        message.

        Fires with a ``DeliveryResult`` per recipient; never errbacks.
        ``settled(results)`` is called when a transaction's final "." got
        its reply and another follows, on the same connection or a new
        one, with the results of that transaction's recipients; the next
        transaction's commands (or its connection) wait for the Deferred
        it returns (``IDeliveryAgent``)."""
        stage = _Stage()
        d = self._deliver_in_batches(entry, destination, list(recipients), stage,
                                    hand_over=settled)

        def crashed(f: Any) -> list[DeliveryResult]:
            log.failure("delivery of {queue_id} to {destination} failed", f,
                        queue_id=entry.id, destination=destination)
            reply = LocalReply.of(451, "4.3.0", "local error while delivering, will retry")
            return [DeliveryResult(a, "transient", reply) for a in recipients]

        def over(result: Any) -> Any:
            if stage.connected:
                left = self._past_connect[entry.id] - 1
                if left:
                    self._past_connect[entry.id] = left
                else:
                    del self._past_connect[entry.id]
            return result

        return d.addErrback(crashed).addBoth(over)

    @defer.inlineCallbacks
    def _deliver_in_batches(self, entry: QueueEntry, destination: str,
                            recipients: list[Address], stage: _Stage,
                            hand_over: Callable[..., Any] | None = None) -> Any:
        """``_deliver``, then again for the recipients the server refused as
        too many for one transaction (452 4.5.3): RFC 5321 4.5.3.1.10 asks
        the client to send those in a new transaction, not to wait for the
        next retry.  As long as each round gets some recipients through.
        The results a round settled go to ``hand_over`` before the next
        round's connection, as those of a transaction before the next one
        on the same connection do (``_session``): once each."""
        handed: set[Address] = set()
        # a stop that gives the attempt up between two rounds (while one's
        # results are handed over) leaves the next to no one: its ``_deliver``
        # would start in the stop's new epoch, as one of the next run's
        epoch = self._epoch

        def tracked(results: list[DeliveryResult]) -> Any:
            handed.update(r.address for r in results)
            return hand_over(results) if hand_over is not None else None

        results = yield self._deliver(entry, destination, recipients, stage,
                                      tracked if hand_over is not None else None)
        for _ in range(MAX_EXTRA_TRANSACTIONS):
            more = [r.address for r in results if _too_many_recipients(r.reply)]
            if not more or len(more) == len(recipients):
                break
            going_on = set(more)
            earlier = [r for r in results
                       if r.address not in going_on and r.address not in handed]
            if hand_over is not None and earlier:
                try:
                    yield defer.maybeDeferred(tracked, earlier)
                except Exception:
                    log.failure("handing over the results of {queue_id} to {destination} "
                                "failed", queue_id=entry.id, destination=destination)
            if epoch != self._epoch:
                return [r for r in results if r.address not in going_on] + _given_up(more)
            log.info("{queue_id}: {count} {recipients} of {destination} in a new transaction "
                     "(the server took fewer per message)", queue_id=entry.id,
                     count=len(more), destination=destination,
                     recipients=plural(len(more), "recipient", "recipients"))
            recipients = more
            try:
                again = yield self._deliver(entry, destination, more, stage,
                                            tracked if hand_over is not None else None)
            except Exception:
                # only this round's recipients are in doubt: the others'
                # results stand (a retry of those would be a duplicate)
                log.failure("delivery of {queue_id} to {destination} failed", queue_id=entry.id,
                            destination=destination)
                break
            kept = set(more)
            results = [r for r in results if r.address not in kept] + list(again)
        return results

    @defer.inlineCallbacks
    def _deliver(self, entry: QueueEntry, destination: str, recipients: list[Address],
                 stage: _Stage, hand_over: Callable[..., Any] | None = None) -> Any:
        epoch = self._epoch
        smarthost = destination == SMARTHOST
        credentials = None
        # the recipients whose results went to ``hand_over`` (``handing_over``)
        handed: set[Address] = set()
        handing_over = None
        if hand_over is not None:
            def handing_over(results: list[DeliveryResult]) -> Any:
                handed.update(r.address for r in results)
                return hand_over(results)

        kept = self._unreachable.get(destination)
        if kept is not None:
            learnt, until, reply, said, left = kept
            now = self.clock.seconds()
            if learnt <= now < until:
                # in a later turn of the reactor, as a refusal would come: a
                # thousand entries deferred from within each other would
                # reach Python's recursion limit
                yield task.deferLater(self.clock, 0, lambda: None)
                # hosts left untried then are said: not every host failed
                log.info("{queue_id}: {destination} not reached: {reply} (tried {age:.0f} s "
                         "ago{left}; not tried again yet)", queue_id=entry.id,
                         destination=destination,
                         reply=loggable(reply.text(), REPLY_LOG_MAX, marked=True),
                         age=now - learnt, left=left)
                return [DeliveryResult(a, "transient", reply, unreachable=said)
                        for a in recipients]
            del self._unreachable[destination]
        if smarthost:
            host, port_n = split_smarthost(self.relay.smarthost)
            hosts = [MXHost(host, 0, (host,))]
            try:
                # read at each attempt: a changed login is used at once
                credentials = read_credentials(self.relay.smarthost_auth_file)
            except (OSError, ValueError) as e:
                # being rewritten, replaced, or its mode changed: the
                # configuration's fault, so the mail stays queued, said in
                # one line (no traceback) and not sent without the login
                why = _credentials_problem(e)
                log.error("{queue_id}: [relay] smarthost_auth_file {path}: {why}; the mail "
                          "stays queued", queue_id=entry.id,
                          path=self.relay.smarthost_auth_file, why=why)
                reply = LocalReply.of(451, "4.3.0", "[relay] smarthost_auth_file cannot be "
                                      f"used ({why}), will retry")
                return [DeliveryResult(a, "transient", reply) for a in recipients]
        else:
            port_n = self.relay.port
            try:
                hosts = self._rotated(destination, (yield self.mx.resolve(destination)))
            except DNSError as e:
                reply = _dns_reply(e)
                kind = "permanent" if e.permanent else "transient"
                # a failure remembered (mx.DNS_FAILURE_MEMORY) is this
                # attempt's result as a fresh one would be; the log says
                # no query was made for it
                said = (f" (the lookup {e.age:.0f} s ago; not asked again yet)"
                        if isinstance(e, RememberedDNSError) else "")
                log.info("{queue_id}: {destination}: {reason}{remembered}", queue_id=entry.id,
                         destination=destination, reason=e.reason, remembered=said)
                return [DeliveryResult(a, kind, reply) for a in recipients]
        if epoch != self._epoch or not self._may_go_on(entry.id):
            # a DNS answer that came after a stop (and a start), or during
            # the grace of a stop that does not wait for this entry
            return _given_up(recipients)
        # the recipients a host refused for good at RCPT in a session that
        # then failed: their answer is final, the next host never gets them
        settled: list[DeliveryResult] = []
        last: Reply = LocalReply.of(451, "4.4.1", f"no mail exchanger of {destination} answered")
        last_host: str | None = None
        # the host (and address) whose session ended with ``last``, as the
        # log names it; None while ``last`` is no session's
        last_where: str | None = None
        about_host = False  # the last refusal was of the host, not of this message
        # each recipient's own 4yz to RCPT from the last host that answered,
        # when that host refused every RCPT (``_refused_for_now``): their
        # result if no host takes them (a host not reached after it says
        # nothing of them; a later session's error replaces it)
        own: dict[Address, DeliveryResult] = {}
        tried = 0
        sessions = 0  # the hosts that answered at all
        # the addresses whose connection failed, not counting a smarthost
        # name that could not be looked up (a DNS failure: no host was
        # asked for a connection, so none failed to answer)
        unanswered = 0
        started = self.clock.seconds()
        out_of_time = False
        cut = False  # addresses left untried for MAX_ADDRESSES_PER_ATTEMPT
        budget = self.relay.hosts_time_budget

        def within_budget() -> bool:
            return self.clock.seconds() - started < budget

        for mxhost in hosts:
            if not recipients:
                break
            if tried >= MAX_ADDRESSES_PER_ATTEMPT:
                cut = True
                break
            if tried and not within_budget():
                out_of_time = True
                break
            if epoch != self._epoch or not self._may_go_on(entry.id):
                return settled + _given_up(recipients)
            # the host's addresses raced with staggered starts (RFC 8305):
            # one that drops packets does not hold the next for the
            # connect timeout; each started counts as one tried
            ordered = self._ordered(mxhost, smarthost)
            addresses = ordered[:MAX_ADDRESSES_PER_ATTEMPT - tried]
            cut = cut or len(addresses) < len(ordered)
            tries = _Tries()
            outcome = yield self._session(entry, recipients, mxhost, addresses, port_n,
                                          smarthost, stage, credentials=credentials,
                                          tries=tries, may_start=within_budget,
                                          hand_over=handing_over)
            tried += len(tries.started)
            address = tries.connected
            if not smarthost:
                # an address that connected is healthy again; those that
                # did not go last at the next attempts for a while, so an
                # attempt after them reaches this host's untried ones
                for a in tries.started:
                    if a == address:
                        self.mx.health.address_succeeded(a)
                    elif a in tries.failures and not _no_socket(tries.failures[a]):
                        self.mx.health.address_failed(a, self.address_memory)
            # the host answered (a session, however it ended): its domain is
            # no unreachable one, even if a plain retry below cannot connect
            if outcome is not None:
                sessions += 1
            if epoch != self._epoch:
                # the hub's stop cut the session (``abort_all``): not the
                # host's failure, and nothing of it is recorded -- but what
                # an earlier transaction of it settled
                return settled + self._cut_by_stop(outcome, recipients,
                                                   _remote_name(mxhost.name, smarthost))
            if (outcome is not None and outcome.session_error is not None
                    and outcome.phase == Phase.TLS.value
                    and self._tls_for(mxhost.name, smarthost)[0] == "opportunistic"
                    and credentials is None):
                # opportunistic TLS that cannot be negotiated must not stop
                # the mail (RFC 3207 4.1 lets the client go on in clear).
                # Not with a smarthost password: the retry's policy "none"
                # would send it in the clear, which only smarthost_tls =
                # "none" allows; the handshake's failure keeps the mail queued
                log.warn("TLS with {host} failed; trying again without TLS ({reply})",
                         host=where(mxhost.name, address), address=address,
                         reply=loggable(outcome.session_error.text(), REPLY_LOG_MAX, marked=True))
                retry = _Tries()
                outcome = yield self._session(entry, recipients, mxhost, [address], port_n,
                                              smarthost, stage, plain=True,
                                              credentials=credentials, tries=retry,
                                              hand_over=handing_over)
                if epoch != self._epoch:  # cut by the hub's stop, as above
                    return settled + self._cut_by_stop(outcome, recipients,
                                                       _remote_name(mxhost.name, smarthost))
                if outcome is None:
                    # the retry's connection failed: its error is the one
                    # to tell (the first session's connection had none)
                    tries = retry
            short = None if outcome is not None else next(
                (f for f in tries.failures.values() if _no_socket(f)), None)
            if short is not None:
                # no socket could be made (out of file descriptors): the
                # hub's own failure, which says nothing of this host or
                # its domain (no memory of it, no other host tried in
                # vain); the mail stays queued for the retry
                log.error("{queue_id}: no connection to {destination} could be made: "
                          "{error}; the mail stays queued", queue_id=entry.id,
                          destination=destination, error=_socket_error_text(short))
                reply = LocalReply.of(451, "4.3.0", "local error: no connection could be "
                                      f"made ({_socket_error_text(short)}), will retry")
                return settled + [DeliveryResult(a, "transient", reply) for a in recipients]
            if outcome is None:  # could not connect: the next host
                unanswered += sum(1 for a in tries.started
                                  if not _name_not_found(tries.failures.get(a)))
                if tries.started:
                    telling = tries.telling()
                    shown = where(mxhost.name, telling)
                    # the address and why, in a few stable words (the
                    # log has each address's whole error): the text's
                    # start stays "connection to X:port failed"
                    why = tries.failures.get(telling)
                    said = f": {reason(why)}" if why is not None else ""
                    last = LocalReply.of(451, "4.4.1",
                                         f"connection to {shown}:{port_n} failed{said}")
                    last_host = last_where = None
                if tries.unstarted:
                    out_of_time = True
                    break  # a host not fully tried is not one that failed
                if epoch != self._epoch or not self._may_go_on(entry.id):
                    return settled + _given_up(recipients)
                if not smarthost:
                    self.mx.health.failed(mxhost.name)
                continue
            if outcome.session_error is not None:
                last, last_host = outcome.session_error, _remote_name(mxhost.name,
                                                                      smarthost)
                last_where = where(mxhost.name, address)
                own = {}
                # 521/556 (RFC 7504): the host accepts no mail at all
                about_host = (outcome.phase in _HOST_PHASES
                              and last.code not in (521, 556))
                if _maybe_delivered(outcome):
                    # the final "." went out and no reply came: the host
                    # may have the message (RFC 5321 6.1), so no other
                    # host gets a copy now; the retry comes later
                    if not smarthost:
                        self.mx.health.failed(mxhost.name)
                    log.info("{queue_id}: {host}: {reply}; the message may have been "
                             "delivered, no other host is tried before the next retry",
                             queue_id=entry.id, host=where(mxhost.name, address),
                             address=address,
                             reply=loggable(last.text(), REPLY_LOG_MAX, marked=True))
                    # a refusal at RCPT is the server's answer for its
                    # recipient: only those it took are in doubt
                    known = {r.address: r for r in outcome.refused}
                    return settled + [
                        DeliveryResult(a, known[a].kind, known[a].reply, last_host)
                        if a in known else DeliveryResult(a, "transient", last, last_host)
                        for a in recipients]
                recipients = self._settle(entry, outcome, recipients, last_host, settled)
                if not smarthost:
                    self.mx.health.failed(mxhost.name)
                continue
            self._note_unanswered_end(entry, outcome, where(mxhost.name, address))
            if not smarthost:
                if outcome.unanswered_end:
                    # a final "." of a later transaction went unanswered: the
                    # host is marked as for a first transaction's (above)
                    self.mx.health.failed(mxhost.name)
                else:
                    self.mx.health.succeeded(mxhost.name)
            host = _remote_name(mxhost.name, smarthost)
            onward = _for_the_next_host(outcome)
            if onward:
                # every RCPT refused, some only for now (a 4yz: greylisting,
                # a full disk, a lookup that failed), or DATA refused for
                # now before any message text went (RFC 5321 4.1.1.4: no
                # data without a 354; Postfix's smtp_mesg_fail keeps the
                # recipients for a backup host too): that host took no
                # message, so the next MX host gets those recipients now,
                # as after a 4xx to MAIL -- not the next retry, which starts
                # at the same host again.  RFC 5321 5.1 has the client try
                # the addresses "until a delivery attempt succeeds"; Postfix
                # keeps a recipient with a soft RCPT error for a backup host
                # (smtp_rcpt_fail).  A 5yz stays that recipient's answer.
                # So for a later transaction of a session that took a
                # message in an earlier one, when this one carried none:
                # its recipients refused for now go on, the others' results
                # (delivered, or refused for now in a transaction that did
                # carry the message) stand
                own = {}
                stand = []
                for r in self._results(entry, outcome, host):
                    if r.address in onward:
                        own[r.address] = r
                    else:
                        stand.append(r)
                settled += stand
                recipients = [a for a in recipients if a in own]
                # what a session of several transactions settled for good
                # and did not hand over (its last transaction's) is, before
                # the next host's connection, as before a next
                # transaction's: a crash in that session must not send it
                # again.  (A session of one that sends recipients on took
                # no message: nothing of it is delivered; and with no host
                # after this one -- a smarthost -- the delivery ends here)
                unhanded = [r for r in stand
                            if r.kind != "transient" and r.address not in handed]
                if (handing_over is not None and unhanded and outcome.transactions > 1
                        and mxhost is not hosts[-1]):
                    try:
                        yield defer.maybeDeferred(handing_over, unhanded)
                    except Exception:
                        log.failure("handing over the results of {queue_id} to {destination} "
                                    "failed", queue_id=entry.id, destination=destination)
                # no ``last`` from here: while ``own`` holds the recipients
                # (until a later session's error) it is their result
                continue
            self._left_untried.pop(destination, None)  # a host took the mail
            return settled + self._results(entry, outcome, host)
        if not smarthost and epoch == self._epoch:
            self._left_untried.pop(destination, None)
            if cut or out_of_time:
                while len(self._left_untried) >= FAILED_HOSTS_KEPT:
                    del self._left_untried[next(iter(self._left_untried))]
                self._left_untried[destination] = None
        if out_of_time:
            log.info("{queue_id}: {destination}: {budget} seconds spent on its hosts; "
                     "the others wait for the next retry", queue_id=entry.id,
                     destination=destination, budget=budget)
        if not recipients:  # each refused for good by a session that then failed
            return settled
        # A 5xx greeting (or EHLO and HELO both refused) says the host will
        # not talk to us, not that this mail is undeliverable: the message
        # stays queued (RFC 5321 3.1 has the client try elsewhere), with
        # the server's words kept for queue show and, at the end, the bounce.
        # Nor is the last host's 5xx one when the time budget left hosts
        # unasked: they may take the message at the next retry.
        kind = ("permanent" if last.is_permanent and not about_host and not out_of_time
                else "transient")
        if own and all(a in own for a in recipients):
            # the last host that answered refused them for now, each in its
            # own words (logged with its session): those are their results
            return settled + [own[a] for a in recipients]
        _log_not_delivered(entry.id, destination, last, last_where, sessions)
        if (not sessions and tried and not settled
                and self.unreachable_memory > 0 and epoch == self._epoch):
            # no host tried connected: remembered (the newest last; a
            # destination is one of the recipients' domains, chosen by
            # strangers: FAILED_HOSTS_KEPT at most, the oldest forgotten).
            # Also when hosts were left untried (MAX_ADDRESSES_PER_ATTEMPT
            # or the time budget ran out): otherwise each of its entries,
            # one at a time (``failing.py``), waited out the connect
            # timeouts again, and a pass over them took one delivery's
            # timeouts per entry.  The try after the memory starts with
            # the hosts left untried (``HostHealth`` puts those that failed
            # last), so they are not left out for good.
            now = self.clock.seconds()
            self._unreachable.pop(destination, None)
            while self._unreachable and (
                    len(self._unreachable) >= FAILED_HOSTS_KEPT
                    or next(iter(self._unreachable.values()))[1] <= now):
                del self._unreachable[next(iter(self._unreachable))]
            left = ("" if not (cut or out_of_time)
                    else ", with hosts left untried: the hosts_time_budget ran out"
                    if out_of_time else
                    f", with hosts left untried: the {MAX_ADDRESSES_PER_ATTEMPT} addresses "
                    "an attempt connects to at most ran out")
            self._unreachable[destination] = (now, now + self.unreachable_memory, last,
                                              True if unanswered else None, left)
        # whether no host answered (some may be left for the time budget,
        # or past MAX_ADDRESSES_PER_ATTEMPT): the runner gives such a
        # destination one delivery at a time until one connects
        # (``failing.py``); a session with one of them says it does
        unreachable = (None if not tried or epoch != self._epoch
                       else False if sessions else True if unanswered else None)
        return settled + [DeliveryResult(a, kind, last, last_host, unreachable=unreachable)
                          for a in recipients]

    def _rotated(self, destination: str, hosts: list[MXHost]) -> list[MXHost]:
        """``hosts`` (most preferred first, those that failed in the last
        ten minutes last) in the order to try them.  When they have more
        addresses than one attempt tries (MAX_ADDRESSES_PER_ATTEMPT) and
        the last attempt for ``destination`` left some untried without
        delivering (``_left_untried``), a
        host none of whose addresses could be connected to for the
        addresses' memory (``address_memory``) goes after those with an
        address not known to fail, the one whose last failure is oldest
        first: retries further apart than the ten minutes a failed host is
        remembered went back to the same most preferred hosts every time,
        and a domain whose working hosts came after the tenth address
        was never reached.  With fewer addresses every attempt reaches
        them all: their preference is kept.  So it is once an attempt
        reached every host it meant to, or a host took the mail: a primary
        that refused once is not put after its backups for hours."""
        if (destination not in self._left_untried
                or sum(len(h.addresses) for h in hosts) <= MAX_ADDRESSES_PER_ATTEMPT):
            return hosts
        health = self.mx.health
        fresh: list[MXHost] = []
        stale: list[tuple[float, MXHost]] = []
        failed: list[MXHost] = []
        for h in hosts:
            if health.is_failed(h.name):
                failed.append(h)
                continue
            until = [health.address_failed_until(a) for a in h.addresses]
            if not until or any(u is None for u in until):
                fresh.append(h)
            else:
                stale.append((max(u for u in until if u is not None), h))
        stale.sort(key=lambda pair: pair[0])  # stable: preference among equals
        return fresh + [h for _, h in stale] + failed

    def _ordered(self, mxhost: MXHost, smarthost: bool) -> list[str]:
        """``mxhost``'s addresses in the order to try them: those that
        failed recently (``HostHealth.address_failed``) last, each part
        with its families alternating.  One attempt tries at most
        MAX_ADDRESSES_PER_ATTEMPT addresses: a host with more, whose first
        ones drop packets, was tried at the same first ones every time,
        and its working addresses never, until the queue_lifetime bounced
        the message."""
        if smarthost:
            return interleave(mxhost.addresses, family_of)
        health = self.mx.health
        until = {a: health.address_failed_until(a) for a in mxhost.addresses}
        fresh = [a for a in mxhost.addresses if until[a] is None]
        # those that failed longest ago first (one memory for all, so the
        # soonest forgotten): across retries each address gets its turn
        stale = sorted((a for a in mxhost.addresses if until[a] is not None),
                       key=lambda a: until[a] or 0.0)
        return interleave(fresh, family_of) + interleave(stale, family_of)

    def _settle(self, entry: QueueEntry, outcome: SessionOutcome, recipients: list[Address],
                host: str | None, settled: list[DeliveryResult]) -> list[Address]:
        """The recipients still to deliver after ``outcome``, a session
        that failed as a whole (a ``421`` to a later RCPT or to DATA, a
        timeout, a lost connection) without the final ".": those the
        server refused for good at RCPT before it go to ``settled`` with
        that reply.  RFC 5321: a 5yz to RCPT is that recipient's answer,
        and the failure after it ends the session for the others only; so
        they bounce now, with the server's words in the notice, instead of
        going to the next host with the others and, in the end, bouncing
        for a failure that was never theirs.  A temporary refusal (4yz)
        waits with the others, as before."""
        final = {r.address: r for r in outcome.refused if r.kind == "permanent"}
        if not final:
            return recipients
        for a in recipients:
            r = final.get(a)
            if r is not None:
                settled.append(DeliveryResult(a, r.kind, r.reply, host))
        log.info("{queue_id}: {host}: {count} {recipients} refused at RCPT before the session "
                 "failed: {codes}", queue_id=entry.id, host=host, count=len(final),
                 recipients=plural(len(final), "recipient", "recipients"),
                 codes=listed([f"{a}: {r.reply.code}" for a, r in final.items()]))
        return [a for a in recipients if a not in final]

    def _cut_by_stop(self, outcome: SessionOutcome | None, recipients: list[Address],
                     host: str) -> list[DeliveryResult]:
        """The results of a session the hub's stop cut (``abort_all``):
        given up (``STOP_CUT``), but for the recipients an earlier
        transaction of it settled (``SessionOutcome.transactions``: the
        outcome is then no session error) -- delivered, or refused for
        good.  Those are final: the runner keeps them from an attempt a
        stop gave up (``_keep_given_up``), where a copy sent again at the
        next start would be a second one."""
        if outcome is None or outcome.session_error is not None:
            return _given_up(recipients)
        final = [r for r in self._each(outcome, host) if r.kind != "transient"]
        known = {r.address for r in final}
        return final + _given_up([a for a in recipients if a not in known])

    @staticmethod
    def _each(outcome: SessionOutcome, host: str) -> list[DeliveryResult]:
        """A result for each recipient of ``outcome`` (no session error)."""
        # a recipient whose RCPT went without NOTIFY and ORCPT (refused for
        # them) keeps its notice duty here, as after a server without DSN
        return [DeliveryResult(r.address, r.kind, r.reply, host,
                               outcome.dsn_supported and r.address not in outcome.dsn_dropped)
                for r in outcome.recipients]

    def _results(self, entry: QueueEntry, outcome: SessionOutcome,
                 host: str) -> list[DeliveryResult]:
        out = self._each(outcome, host)
        codes = listed([f"{r.address}: {r.reply.code}" for r in outcome.recipients])
        log.info("{queue_id}: session with {mx} ({tls}): {codes}", queue_id=entry.id, mx=host,
                 tls="TLS" if outcome.tls else "no TLS", codes=codes)
        return out

    # --- one connection ---------------------------------------------------------------

    def _tls_for(self, host: str, smarthost: bool) -> tuple[str, Any]:
        """(engine policy, TLS connection creator) for ``host``."""
        mode = self.relay.smarthost_tls if smarthost else "opportunistic"
        if mode == "none":
            return "none", None
        if mode == "verify":
            return "require", self.tls_options(host, True)
        # opportunistic, to an MX host or a smarthost alike (relay.rst)
        policy = "opportunistic"
        if self.relay.require_tls_after_seen and host in self.tls_seen:
            policy = "require"
        return policy, self.tls_options(host, False)

    def _tls_required_by(self, smarthost: bool) -> str:
        """The setting that makes TLS required, as the refusal names it: a
        smarthost without STARTTLS otherwise reads as a mystery, while
        ``smarthost_tls = "opportunistic"`` or ``"none"`` is the fix for
        one on a trusted network (relay.rst)."""
        if smarthost and self.relay.smarthost_tls == "verify":
            return '[relay] smarthost_tls = "verify"'
        return "[relay] require_tls_after_seen: it offered STARTTLS before"

    @defer.inlineCallbacks
    def _session(self, entry: QueueEntry, recipients: list[Address], mxhost: MXHost,
                 addresses: Sequence[str], port: int, smarthost: bool, stage: _Stage,
                 plain: bool = False, credentials: tuple[str, str] | None = None,
                 tries: _Tries | None = None,
                 may_start: Callable[[], bool] = lambda: True,
                 hand_over: Callable[..., Any] | None = None) -> Any:
        """One SMTP session with ``mxhost`` at the first of ``addresses``
        to take the connection (``eyeballs.race``; ``may_start``: whether
        another address may still be started), its outcome; ``None`` when
        none did.  ``tries`` learns which addresses were started and which
        connected.  ``hand_over``: ``deliver``'s ``settled``, given the results
        of each transaction that is not the session's last."""
        tries = tries if tries is not None else _Tries()
        policy, creator = self._tls_for(mxhost.name, smarthost)
        if plain:
            policy = "none"
        implicit = smarthost and port == SMTPS_PORT
        dsn_params = dict(entry.envelope.recipient_dsn)
        # SIZE= is what goes on the wire: without our Return-Path line (one
        # short read of a file the stream reads here anyway)
        skipped = return_path_octets(entry.message_path)
        session = ClientSession(
            helo=self.settings.hub.hostname,
            sender=entry.envelope.sender,
            recipients=[(a, dsn_params.get(a)) for a in recipients],
            size=max(0, (entry.crlf_size or entry.size) - skipped),
            eight_bit=entry.eight_bit,
            smtputf8=entry.envelope.smtputf8,
            dsn=entry.envelope.dsn,
            tls="none" if implicit else policy,
            tls_active=implicit,
            credentials=credentials,
            # RFC 4954 5: AUTH=<mailbox> or AUTH=<> to a server offering AUTH
            submitter=entry.envelope.submitter,
            # not to a next hop that refused it lately: no refused MAIL again
            auth_param=not self.auth_param_refusers.refuses(mxhost.name, port),
            tls_required_by=self._tls_required_by(smarthost) if policy == "require" else "",
        )
        converted = f"{entry.message_path}.{secrets.token_hex(4)}.7bit"
        transaction_done = None
        # the hand-overs under way: the session may end while one is (the
        # connection is read meanwhile: a server that closes it, or says
        # something, ends it), and what follows it -- a new connection for
        # the recipients left, the next MX host -- waits for it as a next
        # transaction does
        handing: list[defer.Deferred] = []
        if hand_over is not None:
            said_by = _remote_name(mxhost.name, smarthost)

            def transaction_done(action: TransactionDone) -> defer.Deferred | None:
                # as ``_each`` makes them from an outcome
                wait = hand_over([DeliveryResult(r.address, r.kind, r.reply, said_by,
                                                 action.dsn_supported
                                                 and r.address not in action.dsn_dropped)
                                  for r in action.recipients])
                if isinstance(wait, defer.Deferred):
                    # (``called`` is no end: a Deferred may wait on another)
                    over: defer.Deferred = defer.Deferred()

                    def ended(result: Any) -> Any:
                        if over in handing:
                            handing.remove(over)
                        over.callback(None)
                        return result

                    handing.append(over)
                    wait.addBoth(ended)
                return wait

        proto = SMTPClientProtocol(session, self.clock, entry.message_path, creator, converted,
                                   self.run_blocking, self.stalls, transaction_done)
        factory = Factory.forProtocol(lambda: proto)
        factory.noisy = False  # no "Starting factory" / "Stopping factory" per session

        def connect(address: str) -> defer.Deferred:
            tries.started.append(address)
            endpoint = self.endpoint(address, port)
            if implicit:
                endpoint = wrapClientTLS(creator or self.tls_options(mxhost.name, False),
                                         endpoint)
            return endpoint.connect(factory)

        if self.stopped or not self._may_go_on(entry.id):
            return None
        connecting = race(self.clock, [partial(connect, a) for a in addresses],
                          may_start=may_start)
        self._connecting[connecting] = entry.id
        try:
            won, _ = yield connecting
        except Exception as e:
            lost = e.failures if isinstance(e, RaceLost) else [(len(tries.started) - 1,
                                                                Failure(e))]
            tries.unstarted = e.unstarted if isinstance(e, RaceLost) else 0
            tries.failures = {tries.started[n]: why for n, why in lost
                              if 0 <= n < len(tries.started)}
            if not self.stopped and self._may_go_on(entry.id):
                for n, why in lost:
                    address = tries.started[n]
                    log.info("{queue_id}: cannot connect to {host}:{port}: {why}",
                             queue_id=entry.id, host=where(mxhost.name, address),
                             address=address, port=port, why=why.value)
            return None
        finally:
            self._connecting.pop(connecting, None)
        address = tries.connected = tries.started[won]
        if not stage.connected:
            stage.connected = True
            self._past_connect[entry.id] = self._past_connect.get(entry.id, 0) + 1
        self._sessions.add(proto)
        try:
            outcome = yield proto.done
        finally:
            self._sessions.discard(proto)
        if handing and not self.stopped:
            # (a session the stop cut has no next one: the stop waits for
            # the write itself, ``QueueRunner._settling_writes``)
            yield defer.DeferredList(list(handing))
        self._note_auth_param(entry, session, mxhost.name, address, port)
        self._note_dsn_params(entry, session, mxhost.name, address)
        self._note_protocol_error(entry, session, outcome, where(mxhost.name, address))
        if not outcome.hello_read:
            # ended before the EHLO reply said what the host offers (a 421
            # greeting, a connection lost or timed out, the hub's stop, a
            # 4yz to EHLO): no evidence either way, so no "TLS downgrade"
            # is logged.  Once that reply was read, a host that offered
            # STARTTLS before and not now is a downgrade however the
            # session ends (it went on in clear), and one that offered it
            # is remembered
            return outcome
        if outcome.tls_refused is not None:
            # in clear although the host offered TLS: an admin wants to know
            # (a host whose TLS is broken for good says so at every message)
            log.warn("{queue_id}: {host} offered STARTTLS and refused it ({reply}); the "
                     "session went on without TLS, as opportunistic TLS allows",
                     queue_id=entry.id, host=where(mxhost.name, address),
                     address=address,
                     reply=loggable(outcome.tls_refused.text(), REPLY_LOG_MAX, marked=True))
        if not implicit and (not smarthost or self.relay.smarthost_tls == "opportunistic"):
            self._note_tls(mxhost.name, outcome)  # the memory _tls_for consults
        return outcome

    def abort_all(self) -> defer.Deferred:
        """The hub stops and its grace period is over: connect no more (a
        DNS answer still on its way finds the agent stopped) and cut every
        session in flight.  Until ``resume``.  Fires once the connections
        cut are closed (the transport reports an aborted one lost a
        reactor turn later)."""
        self.stopped = True
        self._epoch += 1
        for connecting in list(self._connecting):
            connecting.cancel()
        lost = []
        for proto in list(self._sessions):
            lost.append(proto.when_lost())
            proto.abort()
        return defer.DeferredList(lost, consumeErrors=True)

    def connected(self, queue_id: str) -> bool:
        """Whether a delivery of ``queue_id`` in flight got past connecting.

        Until then it only looks up DNS or connects: giving it up loses
        nothing.  From its first connection on, its session (and what a
        session returned while the delivery goes on: a second transaction
        for the recipients the server took too many of) must be finished
        or cut; it counts until the delivery fires."""
        return queue_id in self._past_connect

    def quiesce(self, keep: Collection[str]) -> None:
        """The hub stops and waits for the entries ``keep`` only: the
        deliveries of all others connect no more.  Their connections under
        way are cancelled, and each of them fires, as given up, before it
        would connect (a DNS answer that comes now).  Until ``abort_all``
        or ``resume``."""
        self._may_connect = frozenset(keep)
        for connecting, queue_id in list(self._connecting.items()):
            if queue_id not in self._may_connect:
                connecting.cancel()

    def _may_go_on(self, queue_id: str) -> bool:
        return self._may_connect is None or queue_id in self._may_connect

    def resume(self) -> None:
        self.stopped = False
        self._may_connect = None
        self._unreachable.clear()  # a start tries every destination afresh

    def forget_failures(self) -> None:
        """Forget the destinations remembered as unreachable and the
        domains' remembered DNS failures: ``queue flush`` asks for a real
        attempt of every entry now, not a deferral by what an attempt
        before it learnt."""
        self._unreachable.clear()
        forget = getattr(self.mx, "forget_failures", None)  # a test's fake may have none
        if forget is not None:
            forget()

    def _note_auth_param(self, entry: QueueEntry, session: ClientSession, name: str,
                         address: str, port: int) -> None:
        """Log a refusal of ``AUTH=`` and remember the host that made it.

        RFC 4954 5 says a server that does not trust ``AUTH=`` should ignore
        it; this one refused it, and the MAIL went again without it (once a
        session).  Only when that MAIL was accepted is ``AUTH=`` shown to be
        the trouble: then the host is remembered (logged once, when it is
        new), and its next sessions leave ``AUTH=`` off."""
        refused = session.auth_param_refused
        if refused is None:
            return
        fields = dict(queue_id=entry.id, host=where(name, address), address=address,
                      reply=loggable(refused.text(), REPLY_LOG_MAX, marked=True))
        if not session.accepted_without_auth_param:
            log.info("{queue_id}: {host} refused AUTH= on MAIL ({reply}); MAIL sent again "
                     "without it", **fields)
        elif self.auth_param_refusers.remember(name, port):
            log.info("{queue_id}: {host} refused AUTH= on MAIL ({reply}); MAIL sent again "
                     "without it, and without it to {name} port {port} for {hours:g} hours",
                     name=name, port=port, hours=self.auth_param_refusers.max_age / 3600,
                     **fields)

    def _note_dsn_params(self, entry: QueueEntry, session: ClientSession, name: str,
                         address: str) -> None:
        """Log a refusal of the message's DSN parameters (``ENVID=``,
        ``RET=``), after which the MAIL went again without any, and of a
        recipient's (``NOTIFY=``, ``ORCPT=``), after which its RCPT did (the
        admin learns why a sender got a "relayed" notice and no report from
        the next hop); and a session that held more than one transaction.
        Nothing is remembered of the host: the trouble is this message's
        parameters, not the host."""
        for rcpt, reply in session.rcpt_dsn_refused.items():
            if rcpt not in (session.outcome.dsn_dropped if session.outcome else ()):
                continue
            # the notice duty is the hub's only once the RCPT without them
            # was accepted; a refusal of it (or no answer) is that
            # recipient's result, in the session's line as any other
            duty = (": a success notice asked for is this hub's (relayed)"
                    if rcpt in session.rcpt_resent_accepted else "")
            log.info("{queue_id}: {host} refused the DSN parameters on RCPT TO:<{rcpt}> "
                     "({reply}); RCPT sent again without NOTIFY and ORCPT" + duty,
                     queue_id=entry.id, host=where(name, address), address=address,
                     rcpt=loggable(str(rcpt), REPLY_LOG_MAX, marked=True),
                     reply=loggable(reply.text(), REPLY_LOG_MAX, marked=True))
        for rcpt in sorted(session.orcpt_withheld, key=str):
            log.info("{queue_id}: {host}: the ORCPT of RCPT TO:<{rcpt}> does not fit in the 500 "
                     "characters RFC 3461 adds for NOTIFY and ORCPT; RCPT sent without NOTIFY "
                     "and ORCPT: a success notice asked for is this hub's (relayed)",
                     queue_id=entry.id, host=where(name, address), address=address,
                     rcpt=loggable(str(rcpt), REPLY_LOG_MAX, marked=True))
        if session.transactions_sent > 1:
            log.info("{queue_id}: {host}: {count} transactions in one session (recipients the "
                     "server took too many of, or refused for their DSN parameters in a "
                     "pipelined batch, went in the next)", queue_id=entry.id,
                     host=where(name, address), address=address,
                     count=session.transactions_sent)
        if (session.envid_withheld and "DSN" in session.extensions
                and session.transactions_sent):
            # the next hop offers DSN, and gets none of the message's DSN
            # parameters: the admin learns why (RFC 3461 4.4, 5.2.1)
            log.info("{queue_id}: {host} offers DSN, but the message's ENVID is no US-ASCII "
                     "id of at most 100 characters (RFC 3461 4.4); sent without ENVID, RET, "
                     "NOTIFY and ORCPT: success notices asked for are this hub's (relayed)",
                     queue_id=entry.id, host=where(name, address), address=address)
        refused = session.dsn_params_refused
        if refused is None:
            return
        log.info("{queue_id}: {host} refused the DSN parameters on MAIL ({reply}); MAIL sent "
                 "again without ENVID, RET, NOTIFY and ORCPT: success notices asked for are "
                 "this hub's (relayed)", queue_id=entry.id, host=where(name, address),
                 address=address, reply=loggable(refused.text(), REPLY_LOG_MAX, marked=True))

    @staticmethod
    def _note_protocol_error(entry: QueueEntry, session: ClientSession,
                             outcome: SessionOutcome, host: str) -> None:
        """Log a protocol error that ended a session whose outcome is not
        it: the results were known before it (a stray reply after the
        reply to the final "."), or an earlier transaction's stand and the
        recipients of the one under way wait (``SessionOutcome``).  One
        that is the session's error is logged where that is handled, in
        the same words."""
        error = session.protocol_error
        if error is None or outcome.session_error is error:
            return
        log.info("{queue_id}: session with {host} ended in a protocol error: {reply} (the "
                 "connection was dropped; the results before it stand)", queue_id=entry.id,
                 host=host, reply=loggable(error.text(), REPLY_LOG_MAX, marked=True))

    @staticmethod
    def _note_unanswered_end(entry: QueueEntry, outcome: SessionOutcome, host: str) -> None:
        """Log a later transaction's final "." that went unanswered (a
        timeout, the connection lost), naming the recipients it took: they
        may have the message (RFC 5321 6.1) and wait for the next retry,
        as after a first transaction's unanswered "." -- whose session
        error is logged where it is handled."""
        if not outcome.unanswered_end:
            return
        replies = {r.address: r.reply for r in outcome.recipients}
        last = replies.get(outcome.unanswered_end[0])
        if not isinstance(last, LocalReply):
            return  # a reply came: not an unanswered "."
        log.info("{queue_id}: {host}: {reply}; the message may have been delivered to "
                 "{recipients} (transaction {number} of the session), no other host is "
                 "tried for them before the next retry", queue_id=entry.id, host=host,
                 reply=loggable(last.text(), REPLY_LOG_MAX, marked=True),
                 recipients=listed(outcome.unanswered_end),
                 number=outcome.transactions)

    def _note_tls(self, host: str, outcome: SessionOutcome) -> None:
        """Remember a host this session did TLS with; log a downgrade for
        a remembered one that no longer offers STARTTLS.  Only TLS that
        was negotiated counts: a host that offers STARTTLS and refuses it
        or fails the handshake (TLS 1.0 only, below the hub's floor) was
        remembered too, and ``require_tls_after_seen`` then refused every
        session with it, its plain retry (RFC 3207 4.1) included, until the
        mail bounced -- a host whose TLS never worked is no downgrade."""
        # (a handshake that failed ends in phase TLS with ``tls`` already
        # set: the session counts as encrypted from the StartTLS action on)
        if outcome.tls and outcome.phase != Phase.TLS.value:
            self.tls_seen.offered(host)
        elif outcome.tls_offered:
            pass  # offered and not negotiated: neither remembered nor a downgrade
        elif host in self.tls_seen:
            log.warn("TLS downgrade: {host} offered STARTTLS before but not in this session",
                     host=host)


class _Tries:
    """What one ``_session`` connected to: the addresses it started, the
    one that took the connection, how many the time budget left
    unstarted, and why each started one failed when none connected."""

    __slots__ = ("connected", "failures", "started", "unstarted")

    def __init__(self) -> None:
        self.started: list[str] = []
        self.connected: str | None = None
        self.unstarted = 0
        self.failures: dict[str, Failure] = {}

    def telling(self) -> str:
        """The started address the error of a host none of whose addresses
        connected names (``connect_reason.most_telling``)."""
        errors = [why.value if (why := self.failures.get(a)) is not None else None
                  for a in self.started]
        return self.started[most_telling(errors)]


class _Stage:
    """Where one ``deliver`` call is: whether it has connected yet."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


#: errors making a socket that are the hub's shortage, not the next hop's:
#: out of descriptors (the process's, the system's) or of kernel memory
_SOCKET_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)


def _no_socket(why: Failure | None) -> bool:
    """Whether a connection could not even be started for the hub's lack
    of descriptors or memory: Twisted's TCP client says so with a
    ``ConnectBindError`` carrying the errno of ``socket()`` (a smarthost's
    name, with the errors of its addresses)."""
    return why is not None and _socket_shortage(why.value) is not None


def _socket_shortage(error: BaseException) -> int | None:
    """The errno of ``error`` if it is a socket shortage (``_no_socket``)."""
    if isinstance(error, NoAddressConnected):
        for why in error.failures:
            number = _socket_shortage(why.value)
            if number is not None:
                return number
        return None
    number = (error.osError if isinstance(error, ConnectError)
              else error.errno if isinstance(error, OSError) else None)
    return number if number in _SOCKET_SHORTAGES else None


def _socket_error_text(why: Failure) -> str:
    """``Too many open files``: the shortage's words, without a path."""
    return os.strerror(_socket_shortage(why.value) or errno.EMFILE)


def _name_not_found(why: Failure | None) -> bool:
    """Whether a connection failed because the next hop's name did not
    resolve (the smarthost's, looked up as it is connected to)."""
    return why is not None and why.check(DNSLookupError) is not None


def _given_up(recipients: Sequence[Address]) -> list[DeliveryResult]:
    """The results of a delivery the hub's stop gave up (never recorded:
    the runner drops them; transient all the same)."""
    return [DeliveryResult(a, "transient", STOP_CUT) for a in recipients]


