"""The Twisted adapter for the POP3 engine: ``POP3Factory`` and its protocol.

Owns what needs I/O: bytes from and to the transport (TCP_NODELAY, each
response in one write where it fits), flow control (the protocol is the
streaming producer registered on its transport for the whole session, so
a reader that stops reading stops RETR streaming *and* the handling of
pipelined commands), the login through ``components.portal``, streaming
messages from disk (reads of mail the kernel has not cached on the
store's worker threads, ``_off_thread``), STLS, the auth-failure delay and the idle timeout on
the injected ``components.reactor``.  The protocol rules live in
``txmailhub.pop3.server`` and the encoding of messages in
``txmailhub.pop3.stream``; this module must not decide what a command
means, and must not touch the Maildir except through ``IMailbox``.
"""

from __future__ import annotations

import copy
import os
import time
from array import array
from collections.abc import Callable, Sequence
from functools import partial
from itertools import compress
from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import AddressError, client_ip, client_key, parse_address
from txmailhub.auth import ClientCredentials, LoginAbandoned, NoAPOPSecret, turn_key
from txmailhub.downgrade import (
    PartHeaders,
    Undowngradable,
    downgrade_header,
    header_end,
    needs_downgrade,
)
from txmailhub.errors import (
    MailboxInUse,
    MailboxNameError,
    MailboxTurnAbandoned,
    UsersUnavailable,
)
from txmailhub.interfaces import (
    ICRLFSizeFound,
    IDowngradedSizes,
    IMailbox,
    IMailboxUpdate,
    INoWaitRead,
)
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
from txmailhub.logsafe import log_failure, loggable
from txmailhub.pop3 import replies as R
from txmailhub.pop3.credentials import APOPCredentials
from txmailhub.pop3.intl import HeaderScan
from txmailhub.pop3.server import (
    Authenticate,
    LoginFailure,
    POP3Server,
    Send,
    StartTLS,
    State,
    Transmit,
    Update,
    make_timestamp,
)
from txmailhub.pop3.stream import MessageEncoder, PartsEncoder, encode_whole
from txmailhub.sending import ResponseWriter, closed_under_us, set_reading, socket_flusher
from txmailhub.store.format import columns, crlf_size_of
from txmailhub.store.sync import POP3_LANE, CallAbandoned, lane_call
from txmailhub.tls import handshake_pending, tls_details, tls_failure

__all__ = ["CHUNK_SIZE", "APOPCredentials", "POP3Factory", "POP3Protocol"]

CHUNK_SIZE = 64 * 1024
"""Octets read from a message file at a time; smaller messages go in one write."""

INLINE_SIZES = 64
"""A client without UTF8 logging in to more messages than this has their
sizes (the downgraded copy's, RFC 6857) measured on the syncer's worker
threads before its +OK: a header read per message would stall the
reactor, and every session of the hub, on a large mailbox."""

INLINE_OCTETS = 64 * 1024
"""...and only while they hold no more octets than this in all (their
sizes as stored, counted with CRLF line ends as ``LIST`` gives them to a
client in UTF-8 mode).  Measuring a message may mean downgrading its header section,
some 40 ms per 64 KiB of UTF-8 fields and up to a second for one of
``DOWNGRADE_HEADER_LIMIT``: a handful of such messages, which anyone may
send, held every session of the hub for seconds at the first STAT."""

SIZE_JOB = 2000
"""Messages whose sizes one worker job measures at a login (``INLINE_SIZES``)."""

SIZE_JOB_SECONDS = 0.25
"""...and the time one such job goes on for, past its first message: the
next part waits its turn behind the other sessions' jobs (``WORKER_JOBS``).
Measuring a message may mean downgrading its header section, some 0.75 s
for 1 MiB of UTF-8 fields: 2,000 of those in one job held one of the
hub's ``WORKER_JOBS`` for half an hour, and two such logins every other
session's login and long RETR."""

_now = time.monotonic  # the clock of SIZE_JOB_SECONDS (tests set their own)

WORKER_JOBS = 2
"""The most jobs the hub's POP3 sessions, all together, have on the store's
worker threads at once (the others wait their turn).  Measuring sizes and
downgrading header sections is CPU and memory work -- a second and 30-50
MB for a 1 MiB UTF-8 header section, which anyone may send -- and the
same workers make the SMTP side's spool files (and sync its messages
where the kernel has no AIO): four users fetching such messages must not
hold every worker, nor the memory of four such copies."""

DOWNGRADE_HEADER_LIMIT = 1024 * 1024
"""The longest header section downgraded for a client without UTF8 (RFC
6857); it is held in memory to be rewritten.  A message whose UTF-8
header section is longer is refused with -ERR [UTF8] instead."""
DOWNGRADE_HERE = CHUNK_SIZE
"""The longest header section downgraded (RFC 6857) on the reactor
thread where the hub has worker threads: some 40 ms of every session's
time for 64 KiB of UTF-8 fields.  A longer one, up to
``DOWNGRADE_HEADER_LIMIT`` and a second or two of CPU, is downgraded on
a worker (``WORKER_JOBS``): for RETR and TOP, one whose end is not in the
first chunk read, or a message with MIME parts longer than that chunk
(read through to measure what their header sections grow by); for the
sizes LIST, STAT and RSET report, one that
``_measure_unmeasured`` finds longer than this (``_LongHeader``).  The
sender chooses the header section's length, and the reactor thread
serves every session of the hub.  Without worker threads everything is
done on the reactor thread."""
SIZE_PROBE = 8 * 1024
"""Octets read first to learn whether a message's header section is
ASCII, when LIST or STAT need its size for a client without UTF8."""


_Downgraded = tuple[bytes, bool, int, "PartHeaders | None"]
"""``POP3Protocol._downgrade_start``'s result."""


class _LongHeader(Exception):
    """A header section longer than ``DOWNGRADE_HERE`` met while measuring
    a size on the reactor thread: measured on a worker instead."""

_PERMANENT_ERRORS = (PermissionError, NotADirectoryError, IsADirectoryError)
"""Storage errors that need an administrator: answered [SYS/PERM], others [SYS/TEMP]."""

INPUT_LIMIT = 16 * 1024
"""Octets of unanswered commands buffered while the client does not read
our responses; beyond it we stop reading from the client too."""
COMMANDS_PER_TURN = 128
"""Commands answered per reactor turn: a client that pipelines thousands
(one 64 KiB read of CAPA is 10,000) and reads the answers must not keep
every other session waiting while they are answered; the rest waits for
the next turn."""
CLOSE_GRACE = 30.0  # seconds a polite close may take before it is cut
STOP_CLOSE_GRACE = 2.0
"""The same while the hub stops: the close after the answer to a QUIT
whose deletions the stop waited for (the stop waits for it too)."""
STOP_ANSWER_GRACE = 5.0
"""Seconds an answer under way when the hub stops (a message being sent,
a long ``LIST`` or ``UIDL`` the client is still reading) may take to
finish before its session is cut: the session is then told ``-ERR
[SYS/TEMP]`` and closed (``STOP_CLOSE_GRACE`` more at most).  The stop
waits for it; a reset in the middle of a RETR made the client fetch the
whole message again at the next session."""
CLOSED_CHECK = 1.0
"""Seconds between looks, while the client does not read us, for a TLS
session it ended (see ``_check_closed``)."""

log = Logger(namespace="txmailhub.pop3")
_NO_SIZES = array("q")  # no session, or a client with UTF8: no size measured
_TOO_MANY_COMMANDS = R.TOO_MANY_COMMANDS.to_bytes()
_TOO_MANY_ERRORS = R.TOO_MANY_ERRORS.to_bytes()
# AUTH PLAIN responses that are no SASL response, refused before any login
# is tried: logged for log watchers (docs/deployment.rst, fail2ban), as SMTP
# logs its own
_MALFORMED_AUTH = frozenset((R.AUTH_BAD_BASE64.to_bytes(), R.AUTH_BAD_PLAIN.to_bytes(),
                             R.SASL_LINE_TOO_LONG.to_bytes()))


def _is_local_peer(peer: Any) -> bool:
    if isinstance(peer, UNIXAddress):  # a UNIX socket: the same machine
        return True
    ip = client_ip(getattr(peer, "host", ""))
    return ip is not None and ip.is_loopback


def _needs_utf8(whole: bytes) -> bool:
    """Whether a whole stored message is internationalized (``HeaderScan``)."""
    if whole.isascii():
        return False
    scan = HeaderScan()
    scan.feed(whole)
    scan.finish()
    return scan.needs_utf8


def _client_size_of(mailbox: Any, index: int, stored: int, nowait: Any = None,
                    limit: int | None = None) -> int:
    """What RETR sends of message ``index`` (``stored`` octets as stored)
    to a client without UTF8: the stored size, or the downgraded copy's.
    Reads the header section only (the whole message where it has UTF-8
    header fields and MIME parts, ``_downgrade_start``); a message whose
    header section is ASCII -- nearly all -- costs one short read.  One that is not is
    downgraded to be measured (some 0.6 us an octet of header section)
    unless the mailbox remembers its size from an earlier session
    (``IDowngradedSizes``): then only the first login after it arrived
    pays.  ``nowait``: the mailbox as ``INoWaitRead``, for reads that
    raise ``BlockingIOError`` rather than wait for the disk (the first
    8 KiB, and the rest of a longer UTF-8 header section).  ``limit``:
    raise ``_LongHeader`` rather than read or downgrade a header section
    longer than that (the reactor thread's bound, ``DOWNGRADE_HERE``)."""
    f = mailbox.open_message(index)
    try:
        first = f.read(SIZE_PROBE) if nowait is None else nowait.read_nowait(f, SIZE_PROBE)
        end = header_end(first)
        if end is not None and first[:end].isascii():
            return stored  # the common case: nothing to downgrade
        cache = mailbox if IDowngradedSizes.providedBy(mailbox) else None
        if cache is not None:
            known = cache.downgraded_size(index, f)
            if known is not None:
                return known
        start = POP3Protocol._downgrade_start(
            first, f if nowait is None else _NoWaitReads(nowait, f), len(first) < SIZE_PROBE, True,
            limit)
        size = stored if start is None else stored + start[2]
        if cache is not None:
            cache.remember_downgraded_size(index, f, size)
        return size
    finally:
        f.close()


class _NoWaitReads:
    """A message file whose ``read`` is the mailbox's ``read_nowait``
    (``INoWaitRead``): ``BlockingIOError`` where the kernel has not cached
    the data, for ``_downgrade_start`` reading on past the first 8 KiB of
    a long UTF-8 header section when ``LIST`` measures its size on the
    reactor thread (``_measure_unmeasured``): a plain read there held
    every session while the disk hung."""

    __slots__ = ("_file", "_nowait")

    def __init__(self, nowait: Any, file: Any) -> None:
        self._nowait = nowait
        self._file = file

    def read(self, size: int) -> bytes:
        return self._nowait.read_nowait(self._file, size)

    def seek(self, offset: int) -> int:
        return self._file.seek(offset)


def _length(f: Any) -> int | None:
    """The octets in the message file ``f`` now (one ``fstat``), or
    ``None`` for a file of an ``IMailbox`` that is no OS file."""
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation included
        return None


def _save_downgraded_sizes(mailbox: Any) -> None:
    """What ``_client_size_of`` measured, kept for the next sessions."""
    if IDowngradedSizes.providedBy(mailbox):
        mailbox.save_downgraded_sizes()


def _scan_on(f: Any, scan: HeaderScan, gone: Callable[[], bool]) -> None:
    """Feed ``scan`` the rest of ``f`` until it knows (the header
    section's end, or the file's); stops once ``gone()``."""
    while not scan.done and not gone():
        more = f.read(CHUNK_SIZE)
        if not more:
            break
        scan.feed(more)


def _read_whole_on(mailbox: Any, index: int, gone: Callable[[], bool]) -> bytes | None:
    """``read_message`` of a small message the kernel has not cached, as a
    worker job (``POP3Protocol._transmit``); nothing once ``gone()``."""
    if gone():
        return None
    return mailbox.read_message(index, CHUNK_SIZE)


def _read_on(f: Any, gone: Callable[[], bool]) -> bytes:
    """A chunk of ``f`` the kernel has not cached, as a worker job."""
    if gone():
        return b""
    return f.read(CHUNK_SIZE)


def _chunk_on(f: Any, encoder: MessageEncoder | PartsEncoder,
              gone: Callable[[], bool]) -> tuple[bool, bytes]:
    """The next chunk of a message streaming (``POP3Protocol._pump``),
    read and encoded on a worker thread since the kernel had not cached
    it: ``(False, b"")`` at the end of the file (or once ``gone()``)."""
    if gone():
        return False, b""
    data = f.read(CHUNK_SIZE)
    return (True, encoder.encode(data)) if data else (False, b"")


def _downgrade_on(first: bytes, f: Any, complete: bool, gone: Callable[[], bool],
                  known_delta: int | None = None) -> _Downgraded | None:
    """``POP3Protocol._downgrade_start`` as a worker job; nothing once
    ``gone()`` (the result is then never looked at).  The job may wait its
    turn behind others (``WORKER_JOBS``), and a client that hung up has its
    mailbox lock released at once: one that logs in, RETRs such a message
    and hangs up, again and again, queued a read of up to 1 MiB and a
    second of downgrading per connection that nobody waits for, ahead of
    every other session's job."""
    if gone():
        return None
    return POP3Protocol._downgrade_start(first, f, complete, known_delta=known_delta)


def _measure_sizes(mailbox: Any, stored: Sequence[int], gone: Callable[[], bool],
                   start: int = 0, end: int | None = None) -> array:
    """``_client_size_of`` for messages ``start`` to ``end`` (the last by
    default), on a worker thread, or fewer: those measured in
    ``SIZE_JOB_SECONDS`` (one at least); a message that cannot be read is left
    out (measured, and its error logged, on the reactor thread if LIST
    asks).  Stops once ``gone()``: a client that hangs up has its mailbox
    lock released at once, so its next login would start another job
    beside this one -- reconnecting could otherwise fill every worker
    thread (and hold up every fsync) with reads nobody waits for."""
    sizes = array("q")  # from ``start`` on; -1: not measured
    until = _now() + SIZE_JOB_SECONDS
    for index in range(start, len(stored) if end is None else min(end, len(stored))):
        if gone() or (sizes and _now() >= until):
            break
        try:
            sizes.append(_client_size_of(mailbox, index, stored[index]))
        except Exception:  # left for the reactor thread to measure and log
            sizes.append(-1)
    # each job keeps what it measured: a client that hangs up before the
    # last one has the next login pay only for the rest
    _save_downgraded_sizes(mailbox)
    return sizes


@implementer(IPushProducer, IHalfCloseableProtocol)
class POP3Protocol(Protocol):
    """One POP3 connection driving one ``POP3Server`` engine."""

    # Slots, as SMTPProtocol's and for the same reason: from 30 attribute
    # names CPython gives each instance a dict of its own, and attribute
    # access in every command of the session gets slower.  Tests check a
    # session leaves the instance dict (Protocol's) empty.
    __slots__ = (
        "_answer_box", "_busy", "_checked", "_close_call", "_closed_call", "_closing",
        "_counted",
        "_disk_waits",
        "_drain_call", "_draining", "_ended", "_eof", "_flush", "_hub_stopped",
        "_idle_call", "_last_activity", "_linger_left", "_lingering", "_login_session", "_logout",
        "_lost", "_nowait",
        "_peer", "_pending_call",
        "_processing",
        "_queued", "_reading", "_refusing", "_save_call", "_saving", "_sizes", "_stream",
        "_tls_close", "_turn_call", "_turn_spent", "_typed", "_unmeasured", "_unseen",
        "_unseen_resets",
        "_update_running", "_user", "_write_paused",
        "_writer", "components", "connected", "engine", "factory", "implicit_tls", "mailbox",
        "reactor", "settings", "transport",
    )

    def __init__(self, components: Any, *, implicit_tls: bool = False) -> None:
        self.transport: Any = None  # slots shadow Protocol's class defaults
        self.connected = 0
        self.factory: Any = None  # set by the factory's buildProtocol
        self.components = components
        self.settings = components.settings.pop3
        self.reactor = components.reactor
        self.implicit_tls = implicit_tls
        self.engine: POP3Server | None = None
        self.mailbox: Any = None
        self._logout: Any = None
        self._peer = "?"
        self._user = ""
        self._typed = ""  # the user name as the client gave it
        self._checked = ""  # ... and as the portal got it (the login window's name)
        # this connection in the login window: a login forgets the failures
        # of its name made on it, and no others (FailureWindow.succeeded)
        self._login_session = login_session()
        self._busy = False  # a login, delay, stream or update is running
        # the mailbox, where its reads can be tried without waiting for the
        # disk (``INoWaitRead``) and a worker can do those that would wait
        self._nowait: Any = None
        self._disk_waits = 0  # reads handed to a worker: not cached (logged at the end)
        # the mailbox whose lock went after the client's half-close while
        # answers were still due to it (``readConnectionLost``): they read
        # their messages through it (``_reading_box``) until the end
        self._answer_box: Any = None
        # sizes left to measure when a command first needs them, which
        # ``_measure_unmeasured`` does first where reads can say EAGAIN
        self._unmeasured = False
        self._processing = False
        self._write_paused = False
        self._reading = True
        self._closing = False
        self._lost = False
        # the client shut down its sending side (plain TCP; TLS reports it
        # as a lost connection): what it sent is answered, then we close
        self._eof = False
        # the lingering close (txmailhub.linger): our side shut down, input read and
        # dropped (at most LINGER_OCTETS more) until the client closes
        self._lingering = False
        self._linger_left = LINGER_OCTETS
        # under TLS: when our close_notify is out, and the close's end once
        # the client is quiet (txmailhub.linger.TLSCloseWatch)
        self._tls_close: TLSCloseWatch | None = None
        # the session was ended without the UPDATE state already: at the
        # lingering close's start (_let_go), its save or flags maybe still
        # running (they let the mailbox go once done)
        self._ended = False
        # the hub stops: the answer under way is finished, no command is
        # handled after it (``cut_for_stop``), and this cuts it if it takes
        # longer than STOP_ANSWER_GRACE
        self._draining = False
        self._drain_call: Any = None
        # ended by the hub's stop (``cut_for_stop``): its close is cut after
        # STOP_CLOSE_GRACE and its end logged as the stop's, also when the
        # listener listens again meanwhile (``POP3Factory.startFactory``)
        self._hub_stopped = False
        self._stream: _Stream | None = None
        self._pending_call: Any = None
        self._turn_call: Any = None  # answers the rest of a long batch
        self._idle_call: Any = None
        self._close_call: Any = None
        self._closed_call: Any = None  # _check_closed, while write-paused under TLS
        self._counted = False  # in the factory's connection counts
        self._refusing = False  # refused, and counted in refusals_waiting until gone
        self._last_activity = 0.0
        self._update_running = False
        self._flush: Any = None
        self._writer: ResponseWriter | None = None
        self._queued = False  # bytes left in the transport's buffer this turn
        # a 1 for each message RETR sent: flagged seen (Maildir: new/ ->
        # cur/ with S) at the session's end, off the reactor thread where
        # the mailbox can (``_end_changes``); one octet a message at most
        self._unseen = bytearray()
        self._unseen_resets = 0  # the engine's ``resets`` when ``_unseen`` was kept
        # what RETR sends of each message to a client without UTF8 (the
        # stored size or the downgraded copy's, RFC 6857), -1 where not
        # measured yet: one array, not an int object per message
        self._sizes = _NO_SIZES
        # keeps the downgraded sizes ``_client_size`` measured (``_save_sizes``)
        self._save_call: Any = None
        # fires once the save ``_save_sizes`` handed to a worker is over:
        # the session's end waits for it before the mailbox goes (``_saved``)
        self._saving: Deferred | None = None
        # a header section was downgraded in this reactor turn: no more
        # commands are answered before the next one (see _process)
        self._turn_spent = False

    # -- connection lifecycle ----------------------------------------------

    def connectionMade(self) -> None:
        t = self.transport
        set_nodelay = getattr(t, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:  # not a TCP socket
                pass
        peer = t.getPeer()
        # a UNIX socket's peer has no address (and Twisted gives its name
        # as bytes or None): log lines call it localhost, as SMTP's do
        self._peer = "localhost" if isinstance(peer, UNIXAddress) else str(
            getattr(peer, "host", peer))
        refused = self.factory.admit(self._peer, _is_local_peer(peer))
        if refused is not None:
            # Past [pop3] max_connections: one line and close, before any
            # work (a flood of idle sessions must not starve the hub of fds).
            self._closing = True
            if not self.factory.limits.refusal_may_wait(t, self.factory):
                # REFUSALS_WAITING refused connections wait for their close
                # already (clients that stall in the implicit-TLS handshake
                # the -ERR waits for): no reply, no grace
                log.info("refused POP3 connection from {peer}: {reply} (cut at once: {n} "
                         "refused connections are closing)", peer=self._peer,
                         reply=refused.to_bytes().decode().strip(),
                         n=self.factory.limits.refusals_waiting)
                t.abortConnection()
                return
            self._refusing = True
            log.info("refused POP3 connection from {peer}: {reply}", peer=self._peer,
                     reply=refused.to_bytes().decode().strip())
            t.write(refused.to_bytes())
            t.loseConnection()
            # Under implicit TLS the close waits for the handshake and then
            # the client's close_notify; nothing else ends a connection that
            # holds no slot.
            self._close_call = self.reactor.callLater(CLOSE_GRACE, self._cut)
            return
        self._counted = True
        self.factory.sessions.add(self)
        tls_active = self.implicit_tls or ISSLTransport.providedBy(t)
        now = self.reactor.seconds()
        hostname = self.components.settings.hub.hostname
        timestamp = make_timestamp(hostname, now) if self._offers_apop() else ""
        self.engine = self._new_engine(timestamp, tls_active, 0)
        t.registerProducer(self, True)
        t.write(self.engine.greeting())
        self._last_activity = now
        if self.settings.idle_timeout > 0:  # 0: no autologout
            self._idle_call = self.reactor.callLater(
                self.settings.idle_timeout, self._idle_check
            )
        # Writes what the socket transport buffered right away (see
        # dataReceived).  None on test transports.
        self._flush = socket_flusher(t)
        self._writer = ResponseWriter(t)

    def _offers_apop(self) -> bool:
        """Whether this connection's greeting carries an APOP timestamp:
        only where the users file keeps an APOP secret for someone
        (``UsersDB.offers_apop``).  A client that takes APOP whenever it
        sees one (Twisted's ``POP3Client.login()``) could otherwise never
        log in a user added without ``--allow-apop``.  Components without
        a users database (an application's own checker) keep it offered."""
        offers = getattr(self.components.users, "offers_apop", None)
        return True if offers is None else bool(offers())

    def _new_engine(self, timestamp: str, tls_active: bool, failures: int) -> POP3Server:
        s = self.settings
        return POP3Server(
            hostname=self.components.settings.hub.hostname,
            timestamp=timestamp,
            plaintext_allowed=(
                tls_active or s.allow_plaintext_auth or _is_local_peer(self.transport.getPeer())
            ),
            tls_available=self.components.tls is not None,
            tls_active=tls_active,
            max_auth_failures=s.max_auth_failures,
            auth_failure_delay=s.auth_failure_delay,
            auth_failures=failures,
            primary_domain=self.components.settings.hub.primary_domain,
            max_errors=s.max_errors,
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        why = tls_failure(reason)
        if why:  # a client failing on our TLS (versions, ciphers) is seen in the log
            log.info("POP3: TLS with {peer} failed: {why}", peer=self._peer, why=why)
        self._lost = True
        self._closing = True
        if self._counted:
            self._counted = False
            self.factory.release(self._peer)
            self.factory.sessions.discard(self)
        if self._refusing:
            self._refusing = False
            self.factory.limits.refusal_closed(self.transport)
        save = self._save_call
        pending_save = save is not None and save.active()
        for call in (self._idle_call, self._pending_call, self._close_call, self._closed_call,
                     self._turn_call, self._save_call, self._drain_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._pending_call = self._close_call = self._closed_call = None
        self._turn_call = self._save_call = self._drain_call = None
        if self._tls_close is not None:
            self._tls_close.cancel()
            self._tls_close = None
        stream = self._stream
        if stream is not None:
            self._stream = None
            if not stream.reading:  # else closed when the worker is done with it
                stream.close()
        # What the session holds per message goes now (the engine's
        # snapshot and its size function, which is ours: a cycle)
        if self.engine is not None:
            self.engine.forget()
        self._sizes = _NO_SIZES
        self._nowait = None  # (kept by a release after a half-close)
        self._answer_box = None
        if not self._update_running:
            self._end_without_update(pending_save)

    def _end_without_update(self, pending_save: bool) -> None:
        """The session ends without the UPDATE state, and its mailbox with
        it: at the connection's end, or at the start of a lingering close
        the hub decided (``_let_go``), whichever comes first.
        ``pending_save``: downgraded sizes measured are still to be kept.
        Once only: the connection's end after ``_let_go`` only tells the
        hub's stop (``_settled``); ending it again logged its line twice
        and let the lock go under the save still running on a worker,
        which then kept nothing."""
        if self._ended:
            self._settled()
            return
        self._ended = True
        # A dropped connection deletes nothing (RFC 1939 6), but the
        # messages RETR sent are flagged seen as at a QUIT, as Dovecot
        # does (its session's end commits the flags, QUIT or not)
        stopping = self._hub_stopped or getattr(self.factory, "stopping", False)
        seen = self._take_unseen(())
        if self.mailbox is not None:
            why = "closed as the hub stops" if stopping else "left without QUIT"
            log.info("POP3 {user} from {peer} {why}: nothing deleted{waits}",
                     user=self._user, peer=self._peer, why=why, waits=self._waits(),
                     disk_waits=self._disk_waits)
        save = pending_save and not stopping
        # a save already on a worker (its job waiting for one): the lock
        # is kept until it is written, as for one still to start
        in_flight = self._saving is not None and not stopping
        if self.mailbox is not None and (save or seen or in_flight):
            # a client that hangs up right after LIST or STAT: the
            # downgraded sizes they measured are kept as a QUIT keeps
            # them, and the messages it retrieved flagged, while the
            # lock is still held (``save_downgraded_sizes`` does
            # nothing once the mailbox is closed), then let go.  The
            # sizes not while the hub stops, which does not wait for
            # them; the flags it waits for, as for a QUIT's changes
            # (``POP3Factory.shut_down``).  A login of the same user
            # meanwhile waits for the lock (``close_soon``, a few
            # seconds at most) instead of being told IN-USE
            soon = getattr(self.mailbox, "close_soon", None)
            if soon is not None:
                soon(self.reactor.callLater)
            d = self._save_sizes() if save else self._saved()
            if seen:
                user = self._user
                self._update_running = True
                self.factory.update_started(self)
                # answers still due (an answer under way -- a read, a
                # stream, sizes measured -- or, after the client's FIN,
                # commands not answered yet: the FIN lets the mailbox go,
                # the answers go on, ``readConnectionLost``) read on
                # through the mailbox while the flags are made on a worker
                # thread: they are made on a view of their own
                # (``for_changes``), not on the state those reads use
                view = getattr(self.mailbox, "for_changes", None)
                box = view() if view is not None and self._reads_on() else None
                d.addCallback(lambda _: self._end_changes(seen, [], box)).addErrback(
                    lambda f: log_failure(log, f, "POP3 messages of {user} not flagged seen",
                                          user=user))
                d.addBoth(self._flagged_after_drop)
            else:
                d.addBoth(lambda _: self._release())
        else:
            self._release()
        self._settled()

    def _reads_on(self) -> bool:
        """Whether the session may still read its messages after its end
        without the UPDATE state: an answer under way (a read or a stream
        of a message, sizes measured, maybe on a worker thread: even once
        the connection is gone, until the job is back) or, after the
        client's FIN that ended it (``readConnectionLost``: not closing),
        the answers still due to it (``_answers_due``)."""
        if self._busy or self._stream is not None:
            return True
        return not self._closing and self._answers_due()

    def _let_go(self, answering: bool = False) -> None:
        """A lingering close begins (too many errors, the autologout, the
        hub's stop, an internal error), or the close after the client's
        half-close (``_close``): once its closing line is decided
        the session needs nothing of its mailbox any more (no UPDATE
        state), so it ends with it now -- the flags of the messages RETR
        sent made, sizes measured kept, then the lock let go -- not when
        the client closes, ``LINGER_SECONDS`` later at most (under TLS,
        those of quiet after close_notify is out, ``CLOSE_GRACE`` for a
        client still sending; after a half-close: once it has read the
        last answers, ``CLOSE_GRACE`` at most): a login of the same user
        meanwhile (a client retrying after the ``-ERR``, or one whose
        earlier login's client hung up) waited for it, or was told
        IN-USE.  Not while anything may still use the mailbox: a login's
        sizes measured on a worker thread (``_measure``: the engine is not
        in TRANSACTION yet), a read or stream of a message (``_busy``,
        ``_stream``), the end's own changes (``_update_running``); the lock
        then goes with the connection, as before (``close_soon`` lets a
        login wait for it).  ``answering``: after the client's half-close,
        with answers still due and no ``QUIT`` among them
        (``readConnectionLost``): the answer under way (a read or stream)
        uses the message file, not the lock, and so do the commands left
        (through ``_answer_box``), so the lock goes while they are
        answered."""
        engine = self.engine
        if (self.mailbox is None or engine is None or engine.state is not State.TRANSACTION
                or self._update_running
                or (not answering and (self._busy or self._stream is not None))):
            return
        save = self._save_call
        pending_save = save is not None and save.active()
        if pending_save:
            save.cancel()
        self._save_call = None
        self._end_without_update(pending_save)

    def _flagged_after_drop(self, _: Any) -> None:
        """The flags of a dropped session are made: the lock goes, and a
        stop that waited for them goes on."""
        self._update_running = False
        self._release()
        self._settled()
        if not self._lost and self.factory is not None:
            # Made while the connection goes on (the client's FIN behind
            # answers still due, ``readConnectionLost``): no UPDATE state
            # under way any more, so not among those the hub's stop lets
            # finish (``update_started``).  It stayed there until the
            # connection's end, and a stop then only hurried a close it
            # did not have: it waited as long as the client took to read
            # every answer left.  A stop that came while the flags were
            # made ends it now as any session (``cut_for_stop``): the
            # answer under way finished, then its line and the close
            self.factory.updating.discard(self)
            if self._hub_stopped:
                self.cut_for_stop()
        if self._eof and not self._closing:
            self._answered_all()  # the answer sent meanwhile waited for them

    def retrieved_any(self) -> bool:
        """Whether messages were retrieved that are to be flagged seen when
        this session ends (a stop waits for that, ``POP3Factory.shut_down``)."""
        return any(self._pending())

    def cut_for_stop(self) -> bool:
        """The hub stops: end the session without its UPDATE state, and
        handle no command of it from here on (a QUIT still pipelined must
        not start deletions the stop does not wait for).

        A session waiting for its client's next command is told
        ``-ERR [SYS/TEMP] Server shutting down`` and closed politely (a
        FIN): it was cut with a reset, which clients report as a network
        failure.  One in the middle of an answer after its login -- a
        message being sent or read from the disk, a long ``LIST`` the
        client has not read yet -- gets that answer whole first (no line
        can go in the middle of a multi-line answer), then the same line
        and close; it is cut if the answer takes longer than
        ``STOP_ANSWER_GRACE`` (a client that does not read).  The close is
        cut after ``STOP_CLOSE_GRACE`` if the client does not take it.
        True is returned for these: the stop waits for them.  A login
        being checked, or its failure's delay, gets the same line and close
        at once (it was cut with no line): the login's result, when it
        comes, is dropped (no mailbox kept, no login logged; a failure is
        counted for the address once, as it would have been), and the
        delayed ``-ERR`` is not sent.  A TLS handshake is cut at once as
        before: False."""
        if self._closing or self._draining:
            return False
        self._hub_stopped = True
        if self._update_running or handshake_pending(self.transport) or (
                self._busy and self.engine is None):
            self._closing = True
            self.transport.abortConnection()
            return False
        if self._busy and self.engine.state is not State.TRANSACTION:
            # the login or its failure's delay: nothing is half-written
            call, self._pending_call = self._pending_call, None
            if call is not None and call.active():
                call.cancel()  # the delayed -ERR (its failure counted already)
            self._busy = False
            self._stop_line()
            return True
        if self._busy or self._stream is not None or self._write_paused:
            self._draining = True
            self._drain_call = self.reactor.callLater(STOP_ANSWER_GRACE, self._drain_cut)
            # reading on (what arrives is dropped): a client that hangs up
            # is seen at once, and its mailbox lock goes
            self._reading = set_reading(self.transport, self._reading, True)
            return True
        self._stop_line()
        return True

    def _stop_line(self) -> None:
        """The hub stops and nothing is under way: its line, and the close."""
        self._draining = False
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()
        self._write(R.SHUTTING_DOWN.to_bytes())
        self._close(linger=True)

    def _drained(self) -> None:
        """``_process`` while the hub stops: the line and close once the
        answer under way is all written (``cut_for_stop``)."""
        if not (self._closing or self._busy or self._stream is not None
                or self._write_paused):
            self._stop_line()

    def _drain_cut(self) -> None:
        """The answer under way at the hub's stop did not finish in
        ``STOP_ANSWER_GRACE``: cut, as before the grace."""
        self._drain_call = None
        if self._closing:
            return
        log.info("POP3: {peer} cut as the hub stops: its answer was not over after {grace:.0f}s",
                 peer=self._peer, grace=STOP_ANSWER_GRACE)
        self._closing = True
        self.transport.abortConnection()

    def hurry_close(self) -> None:
        """The hub stops while this session's close after its QUIT runs:
        cut it after ``STOP_CLOSE_GRACE`` rather than the 30 s of a close
        during the run (the stop waits for it), and so for its close still
        to come (the answer to its QUIT), if the listener listens again
        meanwhile."""
        self._hub_stopped = True
        call = self._close_call
        if call is not None and call.active() and (
                call.getTime() - self.reactor.seconds() > STOP_CLOSE_GRACE):
            call.reset(STOP_CLOSE_GRACE)

    def _settled(self) -> None:
        """Tell the factory once a session that entered the UPDATE state
        is over: its deletions done and its connection gone (the hub's
        stop waits for both, ``POP3Factory.shut_down``)."""
        if self._lost and not self._update_running and self.factory is not None:
            self.factory.update_over(self)

    def _release(self) -> None:
        self._unseen = bytearray()  # flagged by now, or never (a failed login, a bug)
        mailbox, logout = self.mailbox, self._logout
        self.mailbox = self._logout = None
        if self._lost or not self._eof:
            # kept for an answer still being sent after the client's
            # half-close (``readConnectionLost``): its reads of the
            # message file must not wait for the disk on this thread
            self._nowait = None
        elif mailbox is not None:
            # and the mailbox itself, for the answers still due to it
            # (``_reading_box``): a message to open, sizes to measure
            self._answer_box = mailbox
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("POP3 logout failed for {user}", user=self._user)
        if mailbox is not None:
            try:
                mailbox.close()
            except Exception:
                log.failure("POP3 mailbox close failed for {user}", user=self._user)

    def _close(self, linger: bool = False) -> None:
        """Close politely; with ``linger`` (a close the hub decides: its
        stop, an autologout, too many errors) send our end of stream (on
        plain TCP a half-close, under TLS ``close_notify``) and read on
        (``txmailhub.linger``)."""
        if self._closing:
            return
        self._closing = True
        idle, self._idle_call = self._idle_call, None
        if idle is not None and idle.active():
            idle.cancel()  # no autologout of a session closing
        t = self.transport
        t.unregisterProducer()
        if not self._reading and not self._eof:
            self._reading = True
            t.resumeProducing()
        # (a client that shut down its sending side sends nothing more)
        tls = self.implicit_tls or ISSLTransport.providedBy(t)
        if linger and not self._eof and lingers(t, tls):
            self._lingering = True
            # on plain TCP a half-close: the client's end of data comes as
            # readConnectionLost (a close once the buffered answers are
            # out); under TLS close_notify, and Twisted's TLS layer closes
            # once the client's comes (or its end of stream)
            end_output(t, tls)
            # under TLS: LINGER_SECONDS once close_notify is out and the
            # client is quiet, as a half-close's writeConnectionLost starts
            self._tls_close = watch_tls_close(t, self.reactor)
            # The session uses the mailbox no more: it lets it go now
            # where nothing may still use it (_let_go).  Else the lock is
            # held until the client closes (LINGER_SECONDS at most once our
            # end of stream is out): a login of the same user meanwhile (a
            # client retrying after the -ERR) waits for it, as for a gone
            # session's last save, instead of being told IN-USE
            soon = getattr(self.mailbox, "close_soon", None)
            if soon is not None:
                soon(self.reactor.callLater)
            self._let_go()
        else:
            t.loseConnection()
            if self._eof:
                # the client half-closed (or closed for good: a FIN looks
                # the same) and all it sent is answered: nothing more can
                # use the mailbox either.  Its lock went with the
                # connection, up to CLOSE_GRACE later: a login whose
                # client had hung up (a FIN) while it waited for the lock
                # took it from one still there, told IN-USE
                self._let_go()
        # A polite close waits for the peer to read the last reply, and under
        # TLS for a handshake it may never finish (after STLS); cut it then.
        # Sooner while the hub stops, which waits for it (a session it ended
        # keeps that grace if the listener listens again before its close).
        grace = STOP_CLOSE_GRACE if self._hub_stopped or getattr(
            self.factory, "stopping", False) else CLOSE_GRACE
        self._close_call = self.reactor.callLater(grace, self._cut)

    def _cut(self) -> None:
        self._close_call = None
        if self._lingering:
            # the end of the lingering close: a close (at once once our
            # line and end of stream are out), no reset unless the client
            # sent more in this very turn
            self.transport.loseConnection()
            if self._lost:
                return
            watch = self._tls_close
            if watch is not None and watch.close_if_out():
                # under TLS the line and close_notify are out: the same
                # close (the stop's grace ends before the watch's)
                return
        log.info("POP3: closing {peer} without waiting any longer", peer=self._peer)
        self.transport.abortConnection()

    # -- the client's half-close (plain TCP) ---------------------------------

    def readConnectionLost(self) -> None:
        """The client shut down its sending side (``shutdown(SHUT_WR)`` after
        its last command, as ``nc -N`` does) but may still read.

        During a close (the lingering close's, or one after a last line):
        close once what Twisted still buffers for it (answers it has not
        read, the ``-ERR``) is out; ``_cut`` still ends a close the client
        does not take.  Otherwise the commands it sent are answered, the
        answer under way (a RETR it reads slowly) finished, a ``QUIT``'s
        UPDATE state carried out and answered (RFC 1939 6), and then the
        connection is closed (without a ``QUIT``, as a disconnect: nothing
        deleted).  It was taken for a lost connection, which cut the
        answers under way and dropped a pipelined ``QUIT``.  A login being
        checked, or its failure's delay, is waited for as any answer: a
        client that pipelines its whole session (``USER``, ``PASS``, ``STAT``,
        ``RETR``, ``QUIT``) and half-closes got nothing, the session dropped
        at once.  Its login fails: the session closes with no answer
        (``_finish_login``), nothing it sent after the login handled.  (A
        client that closed for good looks the same: it holds its slot
        until the check is over, not through its failure's delay.)"""
        if self._lingering or self._closing:
            self.transport.loseConnection()
            return
        if self._eof:
            return
        self._eof = True
        self._reading = False  # Twisted reads no more from it
        if self.engine is None:  # pragma: no cover - closing already (refused)
            self._close()
            return
        call = self._pending_call
        if call is not None and call.active():
            # a failed login's delay runs: its -ERR is not sent (_finish_login)
            call.cancel()
            self._pending_call = None
            self._busy = False
            self._close()
            return
        self._let_go_at_eof()
        self._answered_all()

    def _let_go_at_eof(self) -> None:
        """After the client's half-close, in TRANSACTION (its FIN, or the
        login it came behind, ``_finish_login``): let the mailbox go where
        no UPDATE state can come any more."""
        engine = self.engine
        if self._answers_due() and not engine.quit_waits() and not (  # type: ignore[union-attr]
                engine.rset_waits() and self.retrieved_any()):  # type: ignore[union-attr]
            # Answers still due (``_answers_due``: one under way, a RETR or
            # TOP whose read may wait for a hung disk; commands held while
            # the client does not read what it was sent, a long LIST or
            # RETR; the rest of a long batch waiting for its turn) and no
            # QUIT among them: no QUIT can come, so no UPDATE state (RFC
            # 1939 6: nothing is deleted), and what is left to answer needs
            # no lock.  A full close looks the same as this half-close,
            # and its lock was held until everything was answered -- until
            # the disk answered, or as long as a client that reads slowly
            # took (a login of the same user told IN-USE meanwhile): it
            # goes now, as it did when a FIN was a lost connection.  The
            # answers still go, in order, from the mailbox kept for them
            # (``_answer_box``), then the close.  A QUIT among them keeps
            # the lock: its UPDATE state needs it.  So does an RSET where
            # messages retrieved are to be flagged seen: it takes their
            # flags back (``_pending``), and the end made them first
            self._let_go(answering=True)

    def _answers_due(self) -> bool:
        """Whether something the client sent is still to be answered: an
        answer under way (a login checked, a message read or sent, sizes
        measured: ``_busy``, ``_stream``), the rest of a long batch waiting
        for the reactor's next turn (``_turn_call``), or complete lines
        held (``has_line``) -- while the client does not read what it was
        sent (``_write_paused``), or behind an answer under way."""
        return (self._busy or self._stream is not None or self._turn_call is not None
                or self.engine.has_line)  # type: ignore[union-attr]

    def _answered_all(self) -> None:
        """After the client's half-close: close once nothing it sent is
        left to answer (``_process`` calls it when it stops)."""
        if not (self._closing or self._update_running or self._draining
                or self._answers_due()):
            self._close()

    def writeConnectionLost(self) -> None:
        # our end of stream is out: _cut closes at once then, and comes
        # LINGER_SECONDS from now at most (the close grace is for getting
        # our line out; the lingering close holds a mailbox lock)
        shorten(self._close_call, self.reactor)

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._lingering:
            if self._tls_close is not None:
                self._tls_close.heard()  # still sending: not quiet yet
            self._linger_left = drop_input(self.transport, self._linger_left, data,
                                           self.implicit_tls)
            return
        if self._closing or self._draining:
            return
        engine = self.engine
        assert engine is not None
        engine.receive_data(data)
        if engine.has_line and not self._write_paused:
            # (a line held unanswered while the client does not read counts
            # when it is answered, in _process: a line every few minutes
            # must not keep the autologout away)
            self._last_activity = self.reactor.seconds()
        self._queued = False
        self._process()
        if self._queued and self._flush is not None and not (
            self._write_paused or self._closing
        ):
            # What the socket did not take at once (or could not be given
            # at once: see ``ResponseWriter``) goes now instead of on the
            # reactor's next turn: one loop iteration per lock-step command.
            self._queued = False
            self._flush()

    def _retrieved(self, index: int) -> None:
        """RETR sent message ``index``: it is flagged seen when the session
        ends (``_end_changes``), not now.  A rename per RETR on the reactor
        thread held every session of the hub while the disk hung; on a
        worker thread, a DELE answered meanwhile raced it."""
        unseen = self._pending()
        if index >= len(unseen):
            unseen.extend(bytes(index + 1 - len(unseen)))
        unseen[index] = 1

    def _pending(self) -> bytearray:
        """``_unseen``, emptied first if an RSET came since it was kept:
        RSET takes back the session's changes, the seen flags of the
        messages retrieved before it too (as Dovecot's RSET does)."""
        engine = self.engine
        if engine is not None and engine.resets != self._unseen_resets:
            self._unseen_resets = engine.resets
            self._unseen = bytearray()
        return self._unseen

    def _take_unseen(self, deleted: Sequence[int]) -> list[int]:
        """The messages to flag seen at the session's end (none of those
        ``deleted``), forgotten here."""
        unseen, self._unseen = self._pending(), bytearray()
        size = len(unseen)
        if not size:
            return []
        # marks cleared in the array, then picked out in C: a set of the
        # deletions and a Python loop a message cost a million-message
        # session's QUIT some 40 MB and 0.1 s of the reactor thread
        for index in deleted:
            if index < size:
                unseen[index] = 0
        return list(compress(range(size), unseen))

    def _end_changes(self, seen: list[int], deleted: list[int],
                     mailbox: Any = None) -> Deferred:
        """The session's changes to the mailbox: ``seen`` flagged, ``deleted``
        removed.  One job off the reactor thread where the mailbox makes
        them so (``IMailboxUpdate``), else ``mark_seen`` each and then
        ``delete``, as an ``IMailbox`` can.  ``mailbox``: a view of the
        session's to make them on (``for_changes``), else its own."""
        if mailbox is None:
            mailbox = self.mailbox
        if IMailboxUpdate.providedBy(mailbox):
            return mailbox.update(seen, deleted)

        def one_by_one() -> Any:
            for index in seen:
                mailbox.mark_seen(index)
            return mailbox.delete(deleted) if deleted else None

        return maybeDeferred(one_by_one)

    def _process(self) -> None:
        """Handle buffered commands, in order, until one must wait."""
        if self._processing:
            return
        if self._draining:  # the hub stops: no command after the answer under way
            self._drained()
            return
        self._processing = True
        try:
            next_action = self.engine.next_action  # type: ignore[union-attr]
            answered = 0
            limit = COMMANDS_PER_TURN
            if self._turn_spent:  # a header section was downgraded in this turn already
                self._turn_spent = False
                limit = 0
            while not (self._busy or self._write_paused or self._closing
                       or self._turn_call is not None):
                if answered >= limit:
                    if self.engine.has_line:  # type: ignore[union-attr]
                        self._turn_call = self.reactor.callLater(0, self._next_turn)
                    break
                if self._unmeasured and self.engine.next_needs_sizes() and (  # type: ignore[union-attr]
                        not self._measure_unmeasured()):
                    break  # on a worker thread; _process again when it is back
                action = next_action()
                if action is None:
                    break
                answered += 1
                if type(action) is Transmit:  # the common case, first
                    self._transmit(action)
                    if self._turn_spent:
                        # A header section downgraded (RFC 6857) is costly:
                        # some 40 ms for 64 KiB of UTF-8 fields, more for a
                        # longer one.  128 of them pipelined held every
                        # other session for seconds; one per reactor turn.
                        self._turn_spent = False
                        limit = answered
                else:
                    self._perform(action)
        finally:
            self._processing = False
        if answered:
            # A pipelined command is received, for the autologout timer
            # (RFC 1939 3), when it is answered: a client reading a backlog
            # of answers slowly is not inactive.
            self._last_activity = self.reactor.seconds()
        if self._busy or self._write_paused or self._turn_call is not None or not self._reading:
            self._flow()  # otherwise reading on is what _flow would choose
        if self._eof:
            self._answered_all()

    def _next_turn(self) -> None:
        self._turn_call = None
        if self._closing:
            return
        self._process()

    def _flow(self) -> None:
        """Read from the peer, holding what arrives while something is
        pending (a login, a failure's delay, a message streaming, the
        update, a full transport buffer), until ``INPUT_LIMIT`` octets of
        commands wait.  Reading on while busy is how a client that hangs up
        is seen at once: during a login or its delay it would otherwise
        keep its connection slot until the answer (a guesser that hangs up
        after each PASS filled the slots), while streaming it holds the
        mailbox lock, and a TLS layer paused during its handshake must read
        to finish it.  Commands are still answered in order: ``_process``
        runs none while busy."""
        if self._closing or self._eof:  # (after a half-close Twisted reads no more)
            return
        held = self._busy or self._write_paused
        # Not at all while the rest of a long batch waits for its turn (a
        # moment): a close read meanwhile would drop the batch's tail, QUIT
        # and its UPDATE included.  Past INPUT_LIMIT not while the hub
        # stops (``cut_for_stop``): what arrives then is dropped, not held.
        want = self._turn_call is None and (self._draining or not (
            held and self.engine.buffered >= INPUT_LIMIT))  # type: ignore[union-attr]
        self._reading = set_reading(self.transport, self._reading, want)

    def _perform(self, action: Any) -> None:
        if type(action) is Send:
            if action.malformed_auth:
                # an initial response that made the command line too long
                self._malformed_auth()
            self._send(action)
        elif type(action) is Transmit:
            self._transmit(action)
        elif type(action) is Authenticate:
            self._authenticate(action)
        elif type(action) is Update:
            self._update(action)
        elif type(action) is StartTLS:
            self._start_tls(action)
        else:  # pragma: no cover - the engine only makes the five above
            raise TypeError(f"unknown action {action!r}")

    def _write(self, data: bytes) -> None:
        """Send ``data`` (straight to the socket where ``ResponseWriter`` can)."""
        writer = self._writer
        if writer is None:
            self.transport.write(data)
        elif writer.write(data):
            self._queued = True

    def _send(self, action: Send) -> None:
        if action.data[:1] == b"-" and action.data in _MALFORMED_AUTH:
            self._malformed_auth()
        if action.delay > 0:
            self._busy = True
            self._pending_call = self.reactor.callLater(action.delay, self._delayed, action)
            return
        self._write(action.data)
        if action.close:
            if action.data == _TOO_MANY_COMMANDS:
                log.info("POP3 session with {peer} closed: too many commands without "
                         "logging in", peer=self._peer)
            elif action.data == _TOO_MANY_ERRORS:
                # [pop3] max_errors: nothing deleted (no UPDATE state)
                log.info("POP3 session of {user} from {peer} closed: too many errors",
                         user=self._user, peer=self._peer)
            # a close the hub decides (an -ERR: too many errors, commands
            # or failed logins) lingers; the answer to a QUIT closes at once
            self._close(linger=action.data[:1] == b"-")

    def _malformed_auth(self) -> None:
        """An AUTH response that is no SASL response, or one the engine
        refused as such (docs/deployment.rst, fail2ban).  No name is logged
        (whose would it be?), as SMTP logs the same message (AUTH PLAIN is
        the only mechanism).  Logged when the answer is made, not when it
        goes out: with ``[pop3] auth_failure_delay = 0`` there is no delay.

        It is a failed login of the client's address too (``FailureWindow``,
        shared with SMTP AUTH), counted here once per response (the
        session's own counts are the engine's, as before): not for
        loopback, and not while the window already refuses the address, as
        a login refused then is not counted either."""
        log.info("malformed authentication response from {peer} ({mechanism})",
                 peer=self._peer, mechanism="PLAIN")
        failures = self.factory.login_failures
        if not _is_local_peer(self.transport.getPeer()) and not failures.blocked(self._peer):
            failures.failed(self._peer)

    def _delayed(self, action: Send) -> None:
        # (only a failed login's -ERR is delayed; a half-close cancels it,
        # readConnectionLost, so none comes here after one)
        self._pending_call = None
        self._busy = False
        self._answered_after_wait()
        self._send(Send(action.data, action.close))
        self._process()

    # -- login -------------------------------------------------------------

    def _authenticate(self, action: Authenticate) -> None:
        self._busy = True
        # The portal gets the address, as from SMTP AUTH: a bare name
        # qualified with the primary domain (an application's own checker
        # must not see "joe" here and "joe@example.org" there).
        try:
            name = str(parse_address(action.username,
                                     self.components.settings.hub.primary_domain))
        except AddressError:
            name = action.username  # the checker refuses it
        username = name.encode("utf-8", "surrogateescape")
        self._checked = name
        self._typed = action.username
        self._user = loggable(action.username)
        local = _is_local_peer(self.transport.getPeer())
        if not local and self.factory.login_failures.blocked(self._peer):
            log.info("POP3 login {user} from {peer} refused: too many failures",
                     user=self._user, peer=self._peer)
            self._busy = False
            self._finish_login(self.engine.login_failed(LoginFailure.THROTTLED))
            return
        if action.malformed:
            # acting as another user: a failed login, nothing to check
            self._malformed_auth()
            self._busy = False
            self._finish_login(self.engine.login_failed(LoginFailure.BAD_CREDENTIALS))
            return
        if action.unusable_name:
            # no user has this name: the portal is not asked, and the login
            # fails as a wrong password does (logged, counted, delayed), as
            # SMTP AUTH's login of the same name fails and is logged
            self._login_failed(Failure(UnauthorizedLogin("a name no user can have")),
                               action.mechanism)
            return
        if action.mechanism == "APOP":
            creds: Any = APOPCredentials(username, action.timestamp.encode(), action.secret)
        else:
            creds = ClientCredentials(username, action.secret, self._wanted,
                                      turn_key(client_key(self._peer), local, self))
        # the mind: whether the client is still there (a login that waits
        # for the lock of a gone session must not take it once it left)
        d = maybeDeferred(self.components.portal.login, creds, self._wanted, IMailbox)
        d.addCallbacks(
            self._logged_in, self._login_failed,
            callbackArgs=(action.mechanism,), errbackArgs=(action.mechanism,),
        )
        d.addErrback(self._internal_error)

    def _logged_in(self, result: tuple, mechanism: str) -> None:
        _iface, mailbox, logout = result
        if not _is_local_peer(self.transport.getPeer()):
            # the password was right: this name's failed logins on this
            # connection are forgotten (FailureWindow.succeeded), others' not
            self.factory.login_failures.succeeded(self._peer, self._checked,
                                                  self._login_session)
        if self._lost or self._closing:
            # gone, or cut by the hub's stop meanwhile: no answer after that
            self.mailbox, self._logout = mailbox, logout
            self._release()
            return
        self.mailbox, self._logout = mailbox, logout
        try:
            messages = mailbox.list_messages()
        except Exception:
            log.failure("POP3 mailbox listing failed for {user}", user=self._user)
            self._release()
            self._finish_login(self.engine.login_failed(LoginFailure.TEMPORARY))
            return
        # From here on the log names the mailbox, not the spelling typed.
        self._user = loggable(self.engine.identity(self._typed))
        # over TLS the line says which version, as SMTP's message lines do
        secure = self.implicit_tls or ISSLTransport.providedBy(self.transport)
        details = tls_details(self.transport) if secure else None
        how = f"{mechanism}, {details[0] if details else 'TLS'}" if secure else mechanism
        log.info(
            "POP3 login {user} from {peer} ({mechanism}): {listed}",
            user=self._user, peer=self._peer, mechanism=how, count=len(messages), tls=secure,
            listed=R.messages(len(messages)),
        )
        self._sizes = _NO_SIZES
        # reads of mail the kernel has not cached go to a worker thread
        # (``_off_thread``) where the mailbox can tell them (``INoWaitRead``;
        # where the kernel cannot, its reads are plain ones)
        self._nowait = mailbox if (
            INoWaitRead.providedBy(mailbox)
            and lane_call(self.components.syncer, POP3_LANE) is not None) else None
        # RFC 6856 allows UTF8 only before the login: from here on it is
        # known which size RETR will send, the stored one or the downgraded
        if self.engine.utf8:
            self._finish_login(self.engine.login_succeeded(messages, None))
            return
        self._sizes = array("q", [-1]) * len(messages)
        call = self._worker_call()
        stored = columns(messages)[1]
        if call is None or (len(messages) <= INLINE_SIZES and sum(stored) <= INLINE_OCTETS):
            # measured when LIST, STAT or RSET first need a size: where
            # there are workers, before the command (``_measure_unmeasured``),
            # a long header section or a read not cached on a worker
            self._unmeasured = call is not None and len(messages) > 0
            self._finish_login(self.engine.login_succeeded(messages, self._client_size))
            return
        self._measure(call, messages, stored, 0)

    def _worker_call(self) -> Callable[..., Deferred] | None:
        """The syncer's ``call`` (a job on the store's worker threads), in
        turn with the other POP3 sessions' jobs (``WORKER_JOBS`` at once,
        in the POP3 sessions' lane with the logins and session ends:
        ``txmailhub.store.sync``, "Lanes"); ``None`` without worker
        threads (the job is then done here)."""
        call = lane_call(self.components.syncer, POP3_LANE)
        if call is None:
            return None
        jobs = self.components.shared("pop3_worker_jobs",
                                      lambda: DeferredSemaphore(WORKER_JOBS))
        return partial(jobs.run, call)

    def _measure(self, call: Callable[..., Deferred], messages: Any, stored: Sequence[int],
                 start: int) -> None:
        """Measure the client sizes of ``SIZE_JOB`` messages from ``start``
        (fewer where that takes over ``SIZE_JOB_SECONDS``) on a worker
        thread (one job for a huge mailbox would keep a worker, and one of
        the POP3 sessions' ``WORKER_JOBS``, from every other job that
        long), then the next ones in a job of their own; the login's
        +OK once all are in.  Methods, not closures that call each other:
        those made a reference cycle holding the session's sizes."""
        # Reading the flags from the worker thread is safe: plain attributes
        call(_measure_sizes, self.mailbox, stored, self._dropped, start, start + SIZE_JOB
             ).addCallbacks(self._measured, self._measure_failed,
                            callbackArgs=(call, messages, stored, start),
                            errbackArgs=(messages,),
                            ).addErrback(self._internal_error)

    def _gone(self) -> bool:
        return self._lost

    def _dropped(self) -> bool:
        """Whether a login's sizes measuring is of no more use: its client
        left, or the session is closing (the hub's stop told it -ERR while
        they were measured, ``cut_for_stop``) -- the login is never
        answered, and the lock waits for the job under way only."""
        return self._lost or self._closing

    def _wanted(self) -> bool:
        """Whether the client is still there: asked by a login before it
        checks the password (``ClientCredentials``) and while it waits for
        a gone session's lock (the mind, ``MaildirStore.open_mailbox``)."""
        # closing (the hub's stop told it -ERR): no mailbox to open either
        return not (self._lost or self._closing)

    def _measured(self, part: array, call: Callable[..., Deferred], messages: Any,
                  stored: Sequence[int], start: int) -> None:
        if self._dropped():  # no next part: the lock goes now
            self._sizes_measured(messages)
            return
        done = start + len(part)  # SIZE_JOB, or fewer in SIZE_JOB_SECONDS
        self._sizes[start:done] = part
        if done < len(stored):
            self._measure(call, messages, stored, done)
            return
        self._sizes_measured(messages)

    def _measure_failed(self, failure: Failure, messages: Any) -> None:
        # the rest are measured when first needed instead (and a message
        # that cannot be read is logged then).  Not for a login nobody
        # waits for any more: the hub's stop may have stopped the syncer
        # behind it, and that is no fault
        if self._dropped():
            self._sizes_measured(messages)
            return
        log_failure(log, failure, "POP3 sizes of {user}'s messages not measured",
                    user=self._user)
        self._sizes_measured(messages)

    def _sizes_measured(self, messages: Any) -> None:
        if self._lost or self._closing:
            self._release()
            return
        # those the jobs did not measure (a read that failed, or a job
        # that did) are measured before the command that needs them, as a
        # small mailbox's are: a long header section on a worker again
        self._unmeasured = -1 in self._sizes
        self._finish_login(self.engine.login_succeeded(messages, self._client_size))

    def _dropped_why(self, client_left: str) -> str:
        """Why a login's result goes unanswered, for its log line: the
        hub's stop, which told the client ``-ERR`` (``_wanted``), while
        the client is still there; else ``client_left``."""
        return "the hub stops" if self._hub_stopped and not self._lost else client_left

    def _login_failed(self, failure: Failure, mechanism: str) -> None:
        if failure.check(LoginAbandoned):
            # not a guess: the password was never checked, nothing answers
            # (or the hub's stop told it -ERR first: ``_wanted``)
            log.info("POP3 login {user} from {peer} ({mechanism}) not checked: {why}",
                     user=self._user, peer=self._peer, mechanism=mechanism,
                     why=self._dropped_why("the client left first"))
            return
        if failure.check(MailboxTurnAbandoned) and (self._lost or self._closing):
            # nobody refused it: its client hung up while the login waited
            # for its turn at the mailbox's lock, or the hub's stop told it
            # -ERR (``_wanted``), and no reply goes to either (one still
            # there is told IN-USE, below)
            log.info("POP3 login {user} from {peer} ({mechanism}) not answered: {why}",
                     user=self._user, peer=self._peer, mechanism=mechanism,
                     why=self._dropped_why("the client left before its turn at the mailbox"))
            return
        detail = ""
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            why = LoginFailure.BAD_CREDENTIALS
            if failure.check(NoAPOPSecret):  # the same reply: the log alone says it
                detail = (" (the user has no APOP secret: it was added without "
                          "mailhub user add --allow-apop)")
            if not _is_local_peer(self.transport.getPeer()):
                # counted at once
                self.factory.login_failures.failed(self._peer, self._checked,
                                                   self._login_session)
        elif failure.check(MailboxInUse):
            why = LoginFailure.IN_USE
        elif failure.check(UsersUnavailable):  # logged once by the users database
            why = LoginFailure.TEMPORARY
        elif failure.check(MailboxNameError):
            # a users file line no Maildir folder can have the name of
            # (written by hand; `mailhub check` names it): one line, and
            # [SYS/PERM], as no retry will open it -- not [SYS/TEMP] for ever
            log.error("POP3 mailbox of {user} cannot be opened: {error}", user=self._user,
                      error=failure.getErrorMessage())
            why = LoginFailure.PERMANENT
        elif failure.check(*_PERMANENT_ERRORS):
            log.failure("POP3 mailbox of {user} cannot be opened", failure, user=self._user)
            why = LoginFailure.PERMANENT
        else:
            # a disk error (a read-only store, no inodes) is one line
            log_failure(log, failure, "POP3 login error for {user}", user=self._user)
            why = LoginFailure.TEMPORARY
        log.info(
            "POP3 login {user} from {peer} ({mechanism}) refused: {why}{detail}",
            user=self._user, peer=self._peer, mechanism=mechanism, why=why.value,
            detail=detail,
        )
        if self._lost or self._closing:
            return
        self._finish_login(self.engine.login_failed(why))

    def _finish_login(self, reply: Send) -> None:
        """Answer the login (``reply``) and go on with what the client sent
        behind it.  After the client's half-close a failed login ends the
        session: at once with no answer where the ``-ERR`` would wait for
        the failure's delay, else once the ``-ERR`` is out.  What the client
        pipelined behind it was meant for a session logged in, and a client
        that can send no more cannot try again."""
        self._busy = False
        self._answered_after_wait()
        if self._eof and self.engine.state is State.AUTHORIZATION:  # type: ignore[union-attr]
            if reply.delay > 0:
                # counted, not answered: a client that closed for good
                # looks the same as one that half-closed, and waiting out
                # the delay would let a guesser that hangs up hold its
                # slot for it; answering at once would spare a guesser
                # that half-closes the delay
                self._close()
                return
            reply = Send(reply.data, close=True)
        self._send(reply)
        self._process()
        if self._eof and not self._closing and self.engine.state is State.TRANSACTION:  # type: ignore[union-attr]
            # the client's FIN came while the login was checked (its
            # mailbox not taken yet): what it sent behind the login is
            # still held (answers it has not read, a long batch's rest)
            # -- the mailbox goes now as for a FIN that comes after the
            # login, not once everything is answered
            self._let_go_at_eof()

    def _internal_error(self, failure: Failure) -> None:
        """A bug of ours: log it, tell the peer without details, hang up."""
        log.failure("POP3 internal error for {peer}", failure, peer=self._peer)
        if self._update_running:  # the deletions are over, whatever broke after them
            self._update_running = False
            self._release()
            self._settled()
        if not self._lost:
            self._busy = False
            self.transport.write(R.INTERNAL_ERROR.to_bytes())
            self._close(linger=True)

    # -- RETR / TOP --------------------------------------------------------

    def _transmit(self, action: Transmit) -> None:
        if action.size < CHUNK_SIZE:  # stored octets <= CRLF octets
            nowait = self._nowait
            try:
                if nowait is None:
                    first = self._reading_box().read_message(action.index, CHUNK_SIZE)
                else:
                    # the stored file is no longer than its CRLF form: a
                    # buffer that long is enough, not a whole chunk's
                    first = nowait.read_message_nowait(action.index, action.size + 1)
            except BlockingIOError:
                # not cached: the read waits for the disk on a worker thread
                self._off_thread(_read_whole_on, (self._reading_box(), action.index,
                                                  self._gone), self._whole_back, action)
                return
            except Exception:
                self._read_failed(action, None)
                return
            if first is not None:
                self._small(action, first)
                return
        self._open(action)

    def _small(self, action: Transmit, first: bytes) -> None:
        """Send message ``action.index``, read whole (``first``)."""
        if self._replaced(action, len(first)):
            self._refuse_changed(action, None, len(first))
            return
        crlf = crlf_size_of(first)
        if crlf != action.size:
            # of the length listed, but another CRLF form: changed in place
            self._crlf_size_changed(action, len(first), crlf)
            return
        if action.body_lines is not None:  # TOP
            self._with_first(action, None, first)
            return
        head = action.head
        try:
            if not action.utf8 and _needs_utf8(first):
                self._turn_spent = True
                start = self._downgrade_start(first, None, True)
                if start is None:
                    self._refuse_utf8(action)
                    return
                first, _, delta, _ = start
                downgraded = self._downgraded_head(action, delta)
                if downgraded is None:
                    self._refuse_changed(action)
                    return
                head = downgraded
            elif self._listed_otherwise(action, action.size):
                self._refuse_changed(action)
                return
        except Exception:
            self._read_failed(action, None)
            return
        self._write(encode_whole(first, head))
        if action.mark_seen:
            self._retrieved(action.index)

    def _open(self, action: Transmit) -> None:
        """Open the message and read its first chunk."""
        f = None
        try:
            f = self._reading_box().open_message(action.index)
            length = _length(f)
            if self._replaced(action, length):
                self._refuse_changed(action, f, length)
                return
            first = self._read(f)
        except BlockingIOError:
            if f is None:  # pragma: no cover - an open does not say EAGAIN
                self._read_failed(action, None)
                return
            self._off_thread(_read_on, (f, self._gone), self._first_back, action, f)
            return
        except Exception:
            self._read_failed(action, f)
            return
        self._with_first(action, f, first)

    def _reading_box(self) -> Any:
        """The mailbox an answer reads its message (or measures its size)
        from: the session's, or after a half-close that let the lock go
        while answers were still due (``readConnectionLost``: a read
        waiting for the disk, commands held for a client that reads
        slowly) the one kept for them (``_answer_box``,
        ``_release``) -- a late read that must open the message again
        (longer than listed, a file that cannot seek) met ``None`` and sent
        ``-ERR``, and so would the commands answered after it."""
        return self.mailbox if self.mailbox is not None else self._answer_box

    def _read(self, f: Any) -> bytes:
        """A chunk of ``f``: ``BlockingIOError`` if the kernel has not
        cached it and a worker thread can read it instead."""
        nowait = self._nowait
        return f.read(CHUNK_SIZE) if nowait is None else nowait.read_nowait(f, CHUNK_SIZE)

    def _off_thread(self, job: Callable[..., Any], args: tuple,
                    back: Callable[..., None], *back_args: Any) -> None:
        """A read the kernel could not answer from its cache, done on the
        store's worker threads (in the POP3 sessions' lane, not in turn
        with the ``WORKER_JOBS`` downgrades: a read is no CPU work), then
        ``back(result, *back_args)`` on the reactor thread.  Commands wait
        meanwhile (``_busy``), and the client is not idle (``_idle_check``)."""
        call = lane_call(self.components.syncer, POP3_LANE)
        assert call is not None  # ``_nowait`` is set only where there are workers
        self._busy = True
        self._disk_waits += 1
        # a client gone while the read waits for its turn: never run (on a
        # hung disk it would hold its file, and a worker, for nobody)
        call(job, *args, wanted=self._wanted).addBoth(back, *back_args).addErrback(
            self._internal_error)

    def _whole_back(self, result: Any, action: Transmit) -> None:
        """A small message read on a worker thread (``_transmit``)."""
        if not self._back_from_worker(result, action, None):
            return
        if result is None:  # longer than it was listed as: streamed
            self._open(action)
        else:
            self._small(action, result)
        self._process()

    def _first_back(self, result: Any, action: Transmit, f: Any) -> None:
        """A message's first chunk read on a worker thread (``_open``)."""
        if self._back_from_worker(result, action, f):
            self._with_first(action, f, result)
            self._process()

    def _with_first(self, action: Transmit, f: Any, first: bytes) -> None:
        """Send the message whose first chunk is ``first``, read from ``f``
        (``None``: ``first`` is the whole message)."""
        head = action.head
        parts = None
        try:
            complete = len(first) < CHUNK_SIZE
            if not action.utf8:
                scan = HeaderScan()
                if not scan.feed(first) and f is not None:
                    # a header section longer than a chunk: read on to its
                    # end, then start the message again from its first octet;
                    # on the reactor thread no further than a downgraded one
                    # may be long (past that, RETR refuses a UTF-8 one): a
                    # message with no body is not read whole in one turn of
                    # the reactor
                    scanned = len(first)
                    more = first
                    uncached = False
                    try:
                        while not scan.done and scanned <= DOWNGRADE_HEADER_LIMIT:
                            more = self._read(f)
                            if not more:
                                break
                            scanned += len(more)
                            scan.feed(more)
                    except BlockingIOError:
                        uncached = True  # the rest on a worker thread
                    if not scan.done and (more or uncached):
                        # Still not known: UTF-8 further on must be refused
                        # too (RFC 6856 5), so the rest of the header
                        # section is read on a worker thread where there is one
                        call = self._worker_call()
                        if call is not None:
                            self._busy = True
                            if uncached:
                                self._disk_waits += 1
                            call(_scan_on, f, scan, lambda: self._lost).addBoth(
                                self._scanned_on, action, f, scan,
                            ).addErrback(self._internal_error)
                            return
                        _scan_on(f, scan, lambda: False)
                    self._send_scanned(action, f, scan)
                    return
                judged = self._judged(action, f, first, complete, scan)
                if judged is None:
                    return
                first, complete, head, parts = judged
        except Exception:
            self._read_failed(action, f)
            return
        self._send_message(action, f, first, complete, head, parts)

    def _judged(self, action: Transmit, f: Any, first: bytes, complete: bool,
                scan: HeaderScan) -> tuple[bytes, bool, bytes, PartHeaders | None] | None:
        """What to send of a message ``scan`` has read the header section
        of, for a client without UTF8: ``(first, complete, head, parts)``,
        as stored or downgraded (``parts``: what downgrades the MIME part
        header sections of the rest of ``f``); ``None`` when it was
        refused (``f`` closed)."""
        scan.finish()
        if not scan.needs_utf8:
            if self._listed_otherwise(action, action.size):
                self._refuse_changed(action, f)
                return None
            return first, complete, action.head, None
        self._turn_spent = True
        call = self._worker_call()
        end = header_end(first)
        # (only a message with parts, not all in ``first``, is read through to be measured)
        parted = not complete and (end is None or PartHeaders.has_parts(first[:end]))
        known = self._known_delta(action, f) if parted else None
        if f is not None and call is not None and not complete and (
                end is None or (known is None and parted)):
            # A header section longer than a chunk is read on and
            # downgraded on a worker thread: up to DOWNGRADE_HEADER_LIMIT,
            # a second of the reactor's time for 1 MiB of UTF-8 fields;
            # so is a message with MIME parts longer than a chunk, read
            # whole to measure what downgrading their header sections adds
            # (unless LIST, STAT or an earlier RETR measured it).
            self._busy = True
            call(_downgrade_on, first, f, complete, self._gone, known).addBoth(
                self._downgraded_on, action, f,
            ).addErrback(self._internal_error)
            return None
        start = self._downgrade_start(first, f, complete, known_delta=known)
        if start is None:
            if f is not None:
                f.close()
            self._refuse_utf8(action)
            return None
        first, complete, delta, parts = start
        head = self._downgraded_head(action, delta, f)
        if head is None:
            self._refuse_changed(action, f)
            return None
        return first, complete, head, parts

    def _known_delta(self, action: Transmit, f: Any) -> int | None:
        """How much the downgraded copy of ``action``'s message grows, as
        measured in this session (LIST, STAT, an earlier RETR or TOP) or
        kept by an earlier one (the size cache, ``IDowngradedSizes``, for
        a message this session has not measured yet): the message need
        not be read through again to
        measure it.  ``None`` when not measured, or when the size measured
        is the stored one (no downgraded form, or none that grows), or
        when the size the mailbox kept (``IDowngradedSizes``) is not of
        the file ``f`` is now: one replaced or written to since it was
        measured has its size measured again for RETR's ``+OK`` (LIST's
        "exact size", RFC 1939 5: the octets sent), and a part header
        section in it with no downgraded form refuses it, as the measure
        does."""
        sizes = self._sizes
        if f is None or action.index >= len(sizes):
            return None
        size = sizes[action.index]
        box = self._reading_box()
        if IDowngradedSizes.providedBy(box):
            kept = box.downgraded_size(action.index, f)
            if size < 0 and kept is not None:
                size = kept  # not asked for in this session yet: kept by an earlier one
            elif kept != size:
                return None
        if size < 0 or size == action.size:
            return None
        return size - action.size

    def _back_from_worker(self, result: Any, action: Transmit, f: Any) -> bool:
        """What every worker job on a message file does first when it is
        back: the session reads commands again; a client gone meanwhile,
        or a session cut or closing (the hub's stop cut it after its grace:
        its ``connectionLost`` comes a reactor turn later, and the workers'
        results are taken first), has the file closed and nothing written,
        a failed read its ``-ERR``.  Whether the caller goes on with
        ``result``."""
        self._busy = False
        if self._lost or self._closing:
            if f is not None:
                f.close()
            return False
        self._answered_after_wait()
        if isinstance(result, Failure):
            self._read_failed(action, f, result)
            self._process()
            return False
        return True

    def _scanned_on(self, result: Failure | None, action: Transmit, f: Any,
                    scan: HeaderScan) -> None:
        """The header section scanned to its end on a worker thread (or
        the read failed: ``result`` is the failure)."""
        if self._back_from_worker(result, action, f):
            self._send_scanned(action, f, scan)
            self._process()

    def _downgraded_on(self, result: Any, action: Transmit, f: Any) -> None:
        """A long header section downgraded on a worker thread (``_judged``):
        ``result`` is ``_downgrade_start``'s, or the failure of the read."""
        if not self._back_from_worker(result, action, f):
            return
        if result is None:
            f.close()
            self._refuse_utf8(action)
        else:
            first, complete, delta, parts = result
            head = self._downgraded_head(action, delta, f)
            if head is None:
                self._refuse_changed(action, f)
            else:
                self._send_message(action, f, first, complete, head, parts)
        self._process()

    def _send_scanned(self, action: Transmit, f: Any, scan: HeaderScan) -> None:
        """The message whose header section ``scan`` read to its end (or
        to the end of the file), from its first octet: as stored,
        downgraded or refused."""
        try:
            f = self._rewind(f, action.index)
            first = self._read(f)
        except BlockingIOError:
            # evicted since the scan: the first chunk again on a worker
            self._off_thread(_read_on, (f, self._gone), self._rescanned_back, action, f, scan)
            return
        except Exception:
            self._read_failed(action, f)
            return
        self._send_judged(action, f, first, scan)

    def _rescanned_back(self, result: Any, action: Transmit, f: Any, scan: HeaderScan) -> None:
        """The first chunk read again on a worker thread (``_send_scanned``)."""
        if self._back_from_worker(result, action, f):
            self._send_judged(action, f, result, scan)
            self._process()

    def _send_judged(self, action: Transmit, f: Any, first: bytes, scan: HeaderScan) -> None:
        try:
            judged = self._judged(action, f, first, len(first) < CHUNK_SIZE, scan)
            if judged is None:
                return
            first, complete, head, parts = judged
        except Exception:
            self._read_failed(action, f)
            return
        self._send_message(action, f, first, complete, head, parts)

    def _read_failed(self, action: Transmit, f: Any, failure: Failure | None = None) -> None:
        failure = failure or Failure()
        if f is not None:
            f.close()
        if failure.check(FileNotFoundError):
            # looked for under every name (the store follows renames into
            # cur/ and flag changes): another program removed it.  A
            # shared Maildir's normal event, not a storage fault
            log.info("POP3 message {number} of {user} was removed by another program",
                     number=action.index + 1, user=self._user)
            self._write(R.MESSAGE_GONE.to_bytes())
            return
        # any other OSError: one line, like every storage error; anything
        # else a traceback
        log_failure(log, failure, "POP3 cannot read message {number} of {user}",
                    number=action.index + 1, user=self._user)
        self._write(R.MESSAGE_READ_FAILED.to_bytes())

    def _send_message(self, action: Transmit, f: Any, first: bytes, complete: bool,
                      head: bytes, parts: PartHeaders | None = None) -> None:
        """Send the message from ``first``, then on from ``f`` (streamed;
        ``parts``: through this, which downgrades its part header sections)."""
        checked = action.body_lines is None and parts is None and head is action.head
        if complete:
            if f is not None:
                f.close()
            if action.body_lines is None:
                if checked:
                    crlf = crlf_size_of(first)
                    if crlf != action.size:  # of the length listed, changed in place
                        self._crlf_size_changed(action, len(first), crlf)
                        return
                self._write(encode_whole(first, head))
            else:
                enc = MessageEncoder(action.body_lines)
                self._write(head + enc.encode(first) + enc.finish())
            if action.mark_seen:
                self._retrieved(action.index)
            return
        self._busy = True
        enc = MessageEncoder(action.body_lines)
        start = enc.encode(first)  # (``parts`` has downgraded what it holds already)
        # RETR's octets are checked at the end against the size its +OK
        # gave: the stored file's CRLF size, or the downgraded copy's
        # (``_downgraded_head`` keeps it in ``_sizes``)
        expected = None
        if checked:
            expected = action.size
        elif action.body_lines is None and action.index < len(self._sizes):
            expected = self._sizes[action.index] if self._sizes[action.index] >= 0 else None
        self._stream = _Stream(f, enc if parts is None else PartsEncoder(parts, enc), action,
                               expected)
        self.transport.write(head + start)
        self._queued = True
        self._pump()

    # -- RFC 6857: downgrading for a client without UTF8 ---------------------

    @staticmethod
    def _downgrade_start(first: bytes, f: Any, complete: bool, only_utf8: bool = False,
                         limit: int | None = None,
                         known_delta: int | None = None) -> _Downgraded | None:
        """The start of a message whose header section is UTF-8, with that
        section downgraded: ``(data, complete, delta, parts)`` -- what to
        send first (``f`` is left after it), whether that is the whole
        message, how many octets the CRLF form grew by, and what
        downgrades the MIME part header sections of the rest of ``f``
        (``PartHeaders``; ``None`` when there is no rest, or no parts).

        A message with parts that is not all in ``data`` is read to its
        end once to measure what its part header sections grow by (in
        constant memory; then ``f`` is seeked back): RETR's +OK line and
        LIST give the size before the message is sent.  ``None`` when there is
        no downgraded form (``Undowngradable``, or a header section over
        ``DOWNGRADE_HEADER_LIMIT``).  ``only_utf8``: a header section
        that is not UTF-8 (``needs_downgrade``) is left as it is (delta 0),
        as RETR sends it.  ``limit``: ``_LongHeader`` for a header section
        longer than that whose end is not found within it, or that must be
        downgraded: it is read no further (and measured on a worker).
        ``known_delta``: what the copy grows by, measured before in the
        session (``_known_delta``): a message with parts is not read
        through to measure it again."""
        bound = DOWNGRADE_HEADER_LIMIT if limit is None else min(limit, DOWNGRADE_HEADER_LIMIT)
        data = first
        end = header_end(data)
        while end is None and not complete and len(data) <= bound:
            more = f.read(CHUNK_SIZE)
            complete = len(more) < CHUNK_SIZE
            data += more
            end = header_end(data)
        if end is None:
            if not complete:
                if bound < DOWNGRADE_HEADER_LIMIT:
                    raise _LongHeader  # the rest is read on a worker
                return None  # a header section over the limit
            end = len(data)  # the message is all header section
        if end > DOWNGRADE_HEADER_LIMIT:
            return None
        header = data[:end]
        if only_utf8 and not needs_downgrade(header):
            return data, complete, 0, None
        if end > bound:
            raise _LongHeader
        try:
            new = downgrade_header(header)
        except Undowngradable:
            return None
        delta = crlf_size_of(new) - crlf_size_of(header)
        if not PartHeaders.has_parts(header):
            return new + data[end:], complete, delta, None
        try:
            parts = PartHeaders(header)
            body = parts.feed(data[end:])
            if complete:
                return new + body + parts.finish(), True, delta + parts.delta, None
            if known_delta is not None:
                # measured strictly before; sent as ``strict`` is false below
                parts.strict = False
                return new + body, False, known_delta, parts
            measure = copy.deepcopy(parts)
            pos = read = len(data)
            while True:
                more = f.read(CHUNK_SIZE)
                if not more:
                    break
                read += len(more)
                if read > bound and bound < DOWNGRADE_HEADER_LIMIT:
                    raise _LongHeader  # the rest is read on a worker
                measure.feed(more)
            measure.finish()
        except Undowngradable:
            return None
        try:
            f.seek(pos)
        except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
            # a file of an ``IMailbox`` that cannot seek: no second pass
            # to send what was measured, so no downgraded form here
            return None
        parts.strict = False
        return new + body, False, delta + measure.delta, parts

    def _downgraded_head(self, action: Transmit, delta: int, f: Any = None) -> bytes | None:
        """RETR's status line for the downgraded copy (TOP's has no size);
        the size is remembered for LIST and STAT, and where the mailbox
        keeps sizes (``IDowngradedSizes``) for the file ``f`` as it is:
        a later RETR or TOP in the session takes it only for that file
        (``_known_delta``).  ``None`` where the session gave the message
        another size (``_listed_otherwise``): it is refused, not sent."""
        size = action.size + delta
        box = self._reading_box()
        if f is not None and delta and IDowngradedSizes.providedBy(box):
            # the file's size, right for the next session all the same
            box.remember_downgraded_size(action.index, f, size)
            if self._save_call is None and not self._ended:
                self._save_call = self.reactor.callLater(0, self._save_sizes)
        if self._listed_otherwise(action, size):
            return None
        self._sizes[action.index] = size
        log.info("POP3 {user} from {peer}: message {number} sent with its header section "
                 "downgraded (RFC 6857): the client did not send UTF8", user=self._user,
                 peer=self._peer, number=action.index + 1)
        return R.retr_line(size) if action.body_lines is None else action.head

    def _client_size(self, index: int, nowait: Any = None, limit: int | None = None) -> int:
        """What RETR sends of message ``index`` to this client, which has
        not issued UTF8: the stored size, or the downgraded copy's.  Read
        once per session and message (the header section only), when
        LIST, STAT or RSET first need it; a message whose header section
        is ASCII -- nearly all -- costs one short read.  ``nowait`` and
        ``limit``: as ``_client_size_of``'s (``_measure_unmeasured``)."""
        size = self._sizes[index]
        if size >= 0:
            return size
        stored = self.engine.sizes[index]  # type: ignore[union-attr]
        try:
            size = _client_size_of(self._reading_box(), index, stored, nowait, limit)
        except (BlockingIOError, _LongHeader):
            raise  # not cached (``nowait``), or too long here: measured on a worker instead
        except FileNotFoundError:
            # removed by another program since the login: no storage
            # fault, and RETR says so (MESSAGE_GONE, an info line)
            size = stored
        except Exception:
            # RETR will say what is wrong with the message; LIST goes on
            log_failure(log, Failure(), "POP3 cannot read message {number} of {user}",
                        number=index + 1, user=self._user)
            size = stored
        self._sizes[index] = size
        if size != stored and self._save_call is None and not self._ended:
            # a downgraded size (measured or remembered): kept for the next
            # sessions once this command's sizes are all in (not once the
            # session has ended with its lock: only the holder writes them)
            self._save_call = self.reactor.callLater(0, self._save_sizes)
        return size

    def _measure_unmeasured(self) -> bool:
        """Before a command that reports sizes (``next_needs_sizes``), for
        a small mailbox whose sizes are measured when first needed: all
        that are not known yet, from the kernel's cache on this thread;
        ``False`` if one is not cached, or its header section is longer
        than ``DOWNGRADE_HERE`` -- then it and the rest are measured on a
        worker thread (``_measure_rest``) and the command waits.  A header
        read from a disk that hangs held every session of the hub, and so
        did a long UTF-8 header section downgraded here."""
        sizes = self._sizes
        nowait = self._nowait
        for index in range(len(sizes)):
            if sizes[index] < 0:
                try:
                    self._client_size(index, nowait, DOWNGRADE_HERE)
                except BlockingIOError:
                    self._measure_rest(index)
                    # done at once (a syncer without threads): go on
                    return not self._busy
                except _LongHeader:
                    self._measure_rest(index, downgrade=True)
                    return not self._busy
        self._unmeasured = False
        return True

    def _measure_rest(self, start: int, downgrade: bool = False) -> None:
        """Sizes from ``start`` on measured on a worker thread, in the POP3
        sessions' lane but not in turn with the ``WORKER_JOBS`` (as
        ``_off_thread``): a job that waits for the disk, and a small one
        (``INLINE_SIZES`` messages, ``INLINE_OCTETS`` in all).  Two such
        LISTs on a hung disk held both ``WORKER_JOBS``, and every other
        session's downgrade and large mailbox's login waited for the disk.
        ``downgrade``: message ``start``'s header section is longer than
        ``DOWNGRADE_HERE`` -- CPU work, in turn with the ``WORKER_JOBS``."""
        call = self._worker_call() if downgrade else lane_call(self.components.syncer,
                                                                POP3_LANE)
        assert call is not None  # ``_unmeasured`` is set only where there are workers
        self._busy = True
        if not downgrade:
            self._disk_waits += 1
        call(_measure_sizes, self._reading_box(), self.engine.sizes,  # type: ignore[union-attr]
             self._gone, start, wanted=self._wanted).addCallbacks(
            self._rest_measured, self._rest_failed, callbackArgs=(start,),
        ).addErrback(self._internal_error)

    def _rest_measured(self, part: array, start: int) -> None:
        """Sizes from ``start`` on measured on a worker thread (as many as
        ``SIZE_JOB_SECONDS`` allowed: the next command that needs them
        goes on from there)."""
        self._busy = False
        if self._lost:
            return
        self._answered_after_wait()
        sizes = self._sizes
        for index, size in enumerate(part, start):
            if sizes[index] < 0:
                # one that could not be read: its stored size, as
                # ``_client_size`` gives it (RETR says what is wrong)
                sizes[index] = size if size >= 0 else self.engine.sizes[index]  # type: ignore[union-attr]
        self._process()

    def _rest_failed(self, failure: Failure) -> None:
        """The job failed (a bug, a stopped syncer): the sizes are measured
        on this thread when needed, as without workers.  Not run because
        the client left while it waited (``CallAbandoned``): nothing to say."""
        self._busy = False
        if self._lost and failure.check(CallAbandoned):
            return
        log_failure(log, failure, "POP3 sizes of {user}'s messages not measured",
                    user=self._user)
        self._unmeasured = False
        if not self._lost:
            self._process()

    def _save_sizes(self) -> Deferred:
        """The downgraded sizes ``_client_size`` measured, kept in the
        mailbox (``IDowngradedSizes``): a durable write, on a worker thread
        where there are some (nothing to do if all were known already).
        Fires ``None`` once done; a failure is logged, not passed on.
        After the one still on a worker, if any (a size measured on this
        thread after a worker's job measured others, ``_measure_rest``):
        two at once were two writers of the cache, and the end waited
        for the last only, the lock going under the first."""
        self._save_call = None
        mailbox = self.mailbox
        if mailbox is None:
            return succeed(None)
        user = self._user

        def save(_: Any) -> Deferred:
            call = self._worker_call()
            d = maybeDeferred(_save_downgraded_sizes, mailbox) if call is None else call(
                _save_downgraded_sizes, mailbox)
            return d.addErrback(
                lambda f: log_failure(log, f,
                                      "POP3 downgraded sizes of {user}'s messages not kept",
                                      user=user))

        d = self._saved().addCallback(save)
        saving: Deferred = Deferred()
        self._saving = saving

        def over(result: Any) -> Any:
            if self._saving is saving:
                self._saving = None
            saving.callback(None)
            return result

        return d.addBoth(over)

    def _saved(self) -> Deferred:
        """Fires once the save on a worker (``_save_sizes``), if one runs,
        is over: the session's end lets the mailbox go after it.  It let
        it go at once, and the save, run later, found it closed and kept
        nothing (``save_downgraded_sizes``): measured again next login."""
        saving = self._saving
        if saving is None:
            return succeed(None)
        d: Deferred = Deferred()
        saving.addBoth(lambda _: d.callback(None))
        return d

    def _rewind(self, f: Any, index: int) -> Any:
        """``f`` back at the message's first octet: seeked, or opened anew
        where an ``IMailbox`` gives files that cannot seek."""
        try:
            f.seek(0)
            return f
        except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
            f.close()
            return self._reading_box().open_message(index)

    def _listed_otherwise(self, action: Transmit, size: int) -> bool:
        """Whether this session gave ``action``'s message another size
        than ``size``, the octets it would send now (RFC 1939 5: LIST's
        size is the exact size, and clients check what RETR brings
        against it, or allocate that much).  A client without UTF8 is
        given a size once per session and message (``_client_size``, or
        the first RETR or TOP that downgrades it), kept for the rest of
        it; another one now is a size that could not be measured then
        (the stored one was given: a read that failed, ``EMFILE`` or
        ``EIO``) or a file another program replaced since.  Refused with
        ``-ERR [SYS/TEMP]`` (``_refuse_changed``): this message for this
        session only, the rest of the mailbox as before."""
        sizes = self._sizes
        index = action.index
        return index < len(sizes) and 0 <= sizes[index] != size

    def _replaced(self, action: Transmit, length: int | None) -> bool:
        """Whether the file of ``action``'s message, ``length`` octets
        long (``None``: not known), is not the one the session listed:
        another length than the snapshot's (``MessageInfo.stored_size``),
        so another program replaced it or wrote to it since.  RETR's
        ``+OK`` gives the size listed, and the octets sent would be
        another number (RFC 1939 5); refused (``_refuse_changed``) for
        the session instead.  One of the same length, changed, is sent
        as it is: a CRLF count needs the whole file read first."""
        engine = self.engine
        stored = None if engine is None else engine.stored_size(action.index)
        return stored is not None and length is not None and length != stored

    def _refuse_changed(self, action: Transmit, f: Any = None, length: int | None = None,
                        crlf: int | None = None) -> None:
        """``-ERR [SYS/TEMP]`` for a message whose octets are not the size
        the session gave it (``_listed_otherwise``), or whose file is
        ``length`` octets, not the length listed (``_replaced``), or of
        that length but ``crlf`` octets in CRLF form, not the size listed
        (a small message, read whole); ``f`` is closed."""
        if f is not None:
            f.close()
        if length is None:
            sizes = self._sizes
            listed = sizes[action.index] if action.index < len(sizes) else action.size
            log.warn("POP3 {user} from {peer}: message {number} refused: its copy for this "
                     "session is not the {listed} octets it gave (not measured then, or "
                     "another program changed the file since)", user=self._user,
                     peer=self._peer, number=action.index + 1, listed=listed)
        else:
            if crlf is None:
                log.warn("POP3 {user} from {peer}: message {number} refused: its file is "
                         "{length} octets, {stored} when listed (another program changed it, "
                         "or its name gives sizes that are not its own)", user=self._user,
                         peer=self._peer, number=action.index + 1, length=length,
                         stored=self.engine.stored_size(action.index))  # type: ignore[union-attr]
            else:
                log.warn("POP3 {user} from {peer}: message {number} refused: its file is "
                         "{crlf} octets in CRLF form, {size} when listed (another program "
                         "changed it in place, or its name gives sizes that are not its own)",
                         user=self._user, peer=self._peer, number=action.index + 1, crlf=crlf,
                         size=action.size)
            if (IDowngradedSizes.providedBy(self._reading_box()) and self._save_call is None
                    and not self._ended):
                # what the read found is kept with the sizes (a name whose
                # sizes are not its file's is put right at the next login)
                self._save_call = self.reactor.callLater(0, self._save_sizes)
        self._write(R.MESSAGE_SIZE_CHANGED.to_bytes())

    def _crlf_size_changed(self, action: Transmit, length: int | None, crlf: int,
                           copy: tuple[int, int] | None = None) -> None:
        """Message ``action.index``'s file, of the length listed, is
        ``crlf`` octets in CRLF form, not the size listed: the mailbox is
        told (a name of the hub's that gives other sizes is put right at
        the next login) and, where no +OK went yet (``length``: the
        octets read whole), the message refused (``_refuse_changed``);
        after a +OK only the warning and the save are left to make
        (``copy``: a downgraded copy's octets that went and the size its
        +OK gave)."""
        box = self._reading_box()
        if ICRLFSizeFound.providedBy(box):
            box.crlf_size_found(action.index, crlf)
        if length is not None:
            self._refuse_changed(action, None, length, crlf)
            return
        if copy is None or copy[1] == action.size:
            log.warn("POP3 {user} from {peer}: message {number} cut: its file is {crlf} octets "
                     "in CRLF form, {size} as its +OK gave (another program changed it in "
                     "place, or its name gives sizes that are not its own)", user=self._user,
                     peer=self._peer, number=action.index + 1, crlf=crlf, size=action.size)
        else:
            log.warn("POP3 {user} from {peer}: message {number} cut: its downgraded copy is "
                     "{sent} octets, not {size} as its +OK gave (another program changed it "
                     "in place, or its name gives sizes that are not its own)",
                     user=self._user, peer=self._peer, number=action.index + 1, sent=copy[0],
                     size=copy[1])
        if IDowngradedSizes.providedBy(box) and self._save_call is None and not self._ended:
            self._save_call = self.reactor.callLater(0, self._save_sizes)

    def _refuse_utf8(self, action: Transmit) -> None:
        """RFC 6856 2 and 5: an internationalized message is not sent as
        it is to a client that has not issued UTF8.  It goes downgraded
        (RFC 6857) where it can; this is for one whose header section has
        no downgraded form (a UTF-8 line that is no field, or a section
        over ``DOWNGRADE_HEADER_LIMIT``)."""
        log.info("POP3 {user} from {peer}: message {number} has UTF-8 header fields with no "
                 "downgraded form and the client did not send UTF8: refused",
                 user=self._user, peer=self._peer, number=action.index + 1)
        self._write(R.UTF8_REQUIRED.to_bytes())

    def _pump(self) -> None:
        """Send chunks of the current message until the transport pushes back."""
        stream = self._stream
        if stream is None or stream.reading:
            return  # its next chunk is being read on a worker thread
        stream.pumping = True
        try:
            self._pump_on(stream)
        finally:
            stream.pumping = False

    def _pump_on(self, stream: _Stream) -> None:
        write = self.transport.write
        nowait = self._nowait
        while not self._write_paused:
            try:
                if stream.encoder.done:
                    data = b""
                elif nowait is None:
                    data = stream.file.read(CHUNK_SIZE)
                else:
                    data = nowait.read_nowait(stream.file, CHUNK_SIZE)
            except BlockingIOError:
                # not cached: read and encoded on a worker thread, then on
                # from ``_chunk_back``; the file stays open until then
                stream.reading = True
                self._off_thread(_chunk_on, (stream.file, stream.encoder, self._gone),
                                 self._chunk_back, stream)
                if stream.reading or self._stream is not stream:
                    return  # back later (the usual case), or over
                continue  # done at once (a syncer without threads): read on here
            except OSError:
                self._stream_failed(stream, None)
                return
            self._last_activity = self.reactor.seconds()
            if data:
                write(stream.encoder.encode(data))
                continue
            self._streamed(stream)
            return

    def _streamed(self, stream: _Stream) -> None:
        """The whole message is sent: its end, and the next command.  A
        message whose octets were not the size its +OK gave (another
        program changed its file in place to the same length, with
        another count of line ends) gets no end: the client cannot be told
        otherwise, so it is cut, as for a read that fails (the message is
        not flagged seen; nothing is deleted, as without QUIT)."""
        self._stream = None
        stream.close()
        end = stream.encoder.finish()
        expected = stream.expected
        if expected is not None and stream.encoder.size != expected:
            self._busy = False
            action = stream.action
            # a downgraded copy's octets less what downgrading added: the
            # file's CRLF size, as far as the additions stayed the same
            crlf = stream.encoder.size - (expected - action.size)
            self._crlf_size_changed(action, None, crlf, (stream.encoder.size, expected))
            self._closing = True  # no command behind it is handled (a QUIT's deletions)
            self.transport.abortConnection()
            return
        self.transport.write(end)
        if stream.action.mark_seen:
            self._retrieved(stream.action.index)
        self._busy = False
        self._process()

    def _stream_failed(self, stream: _Stream, failure: Failure | None) -> None:
        """A read failed in the middle of a message: the client cannot be
        told (its +OK and part of the message are sent), so it is cut."""
        log.failure("POP3 read error streaming a message of {user}", failure, user=self._user)
        self._stream = None
        stream.close()
        self._busy = False
        # no command behind it is handled: a pipelined DELE and QUIT would
        # delete the message the client never got whole
        self._closing = True
        self.transport.abortConnection()

    def _chunk_back(self, result: Any, stream: _Stream) -> None:
        """A chunk read (and encoded) on a worker thread (``_pump``)."""
        stream.reading = False
        if self._lost or self._closing or self._stream is not stream:
            # the client left meanwhile, or the session was cut (the hub's
            # stop): nothing written, no more read
            stream.close()
            return
        self._answered_after_wait()
        if isinstance(result, Failure):
            self._stream_failed(stream, result)
            return
        more, data = result
        if not more:
            self._streamed(stream)
            return
        self.transport.write(data)
        if not stream.pumping:  # else ``_pump_on`` reads on
            self._pump()

    # -- producer: the transport tells us when its buffer is full ------------

    def pauseProducing(self) -> None:
        self._write_paused = True
        self._flow()
        if self._closed_call is None and not self._closing and (
            self.implicit_tls or ISSLTransport.providedBy(self.transport)
        ):
            self._closed_call = self.reactor.callLater(CLOSED_CHECK, self._check_closed)

    def _check_closed(self) -> None:
        """A client that ends the TLS session while it does not read us:
        the TLS layer closes the socket on its own, and that close waits for
        a buffer that never drains; nothing tells us (no resumeProducing
        ever comes).  Look for it while we are paused, and drop the
        connection then: it releases the mailbox."""
        self._closed_call = None
        if self._closing or not self._write_paused:
            return
        if closed_under_us(self.transport):
            log.info("POP3: {peer} ended the TLS session without reading", peer=self._peer)
            self.transport.abortConnection()
            return
        self._closed_call = self.reactor.callLater(CLOSED_CHECK, self._check_closed)

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self._closed_call is not None:
            self._closed_call.cancel()
            self._closed_call = None
        if self._closing:
            return
        if closed_under_us(self.transport):  # the client ended the TLS session
            self._close()
            return
        if self._stream is not None:
            self._pump()
        else:
            self._process()

    def stopProducing(self) -> None:
        stream = self._stream
        if stream is not None:
            self._stream = None
            if not stream.reading:  # else closed when the worker is done with it
                stream.close()

    # -- STLS and UPDATE ---------------------------------------------------

    def _start_tls(self, action: StartTLS) -> None:
        self.transport.write(action.data)
        self._queued = True
        old = self.engine
        assert old is not None
        self.transport.startTLS(self.components.tls)
        # RFC 2595 section 4: the session starts afresh; pipelined plaintext
        # after STLS is gone with the old engine.
        self.engine = self._new_engine(old.timestamp, True, old.auth_failures)
        if self._write_paused:
            # Twisted moved us into the TLS layer as a producer that is not
            # paused, and will never resume us: we are not paused any more.
            self._write_paused = False
            self._flow()

    def _waits(self) -> str:
        """For the session's last log line: how many of its reads were not
        answered from the kernel's cache and went to a worker thread
        (``_off_thread``), if any; a line per read would cost every RETR."""
        n = self._disk_waits
        if not n:
            return ""
        return f" ({n} read{'s' if n > 1 else ''} of uncached mail on a worker thread)"

    def _update(self, action: Update) -> None:
        seen = self._take_unseen(action.indices)
        self._busy = True
        self._update_running = True
        self.factory.update_started(self)
        save = self._save_call
        if save is not None and save.active():
            # a QUIT pipelined after the LIST or STAT that measured them:
            # kept before the mailbox is let go (nothing is once it is)
            save.cancel()
            d = self._save_sizes()
        else:
            # one already on a worker: written before the lock goes too
            d = self._saved()
        if seen or action.indices:
            # RFC 1939 6: the +OK once the changes are made (``_updated``);
            # the mailbox stays locked until then, and the hub's stop waits
            # for them (``POP3Factory.shut_down``)
            indices = list(action.indices)
            d.addCallback(lambda _: self._end_changes(seen, indices))
        d.addCallbacks(
            self._updated, self._update_failed, callbackArgs=(action,), errbackArgs=(action,)
        )
        d.addErrback(self._internal_error)

    def _updated(self, _: Any, action: Update) -> None:
        count = len(action.indices)
        log.info("POP3 logout {user} from {peer}: {deleted} deleted{waits}", user=self._user,
                 peer=self._peer, count=count, deleted=R.messages(count), waits=self._waits(),
                 disk_waits=self._disk_waits)
        self._end_update(True)

    def _update_failed(self, failure: Failure, action: Update) -> None:
        # A disk error is one line (the messages it could not remove are
        # logged by the store); anything else keeps its traceback.  Some of
        # the messages may be unlinked but not durably (the folder's fsync
        # failed): the line never counts them as deleted.
        count = len(action.indices)
        log_failure(log, failure, "POP3 UPDATE failed for {user} from {peer}: {todo}, "
                    "not all removed durably", user=self._user, peer=self._peer,
                    count=count, todo="1 message to delete" if count == 1
                    else f"{count} messages to delete")
        self._end_update(False, failure.check(*_PERMANENT_ERRORS) is not None)

    def _end_update(self, ok: bool, permanent: bool = False) -> None:
        self._update_running = False
        # Release the lock before answering, so a client that reconnects
        # at once does not find the mailbox still in use.
        self._release()
        self._busy = False
        if not self._lost:
            # the answer, also while the hub stops (which waited for this)
            self._send(self.engine.update_finished(ok, permanent))
        self._settled()

    # -- idle timeout --------------------------------------------------------

    def _answered_after_wait(self) -> None:
        """The autologout timer (RFC 1939 3) measures the *client's*
        inactivity: after the hub kept it waiting (a slow password check,
        the delay after a failed login) the client gets the whole timeout
        from our answer, not what is left of it from its command."""
        self._last_activity = self.reactor.seconds()

    def _idle_check(self, second_look: bool = False) -> None:
        """The autologout timer.  It logs out on a second look one reactor
        turn later: a timer runs before the reads of its turn, so after a
        stall of the reactor thread (a ``read`` from a hung disk, a
        stopped process) what the client sent meanwhile is still unread,
        and its idle time is really ours.  Not once the session is closing
        (after its QUIT, a half-close, an error, the hub's stop; also
        between the two looks): its close has its own grace, and an
        autologout line was logged for a session that had ended."""
        if self._closing:
            self._idle_call = None
            return
        timeout = self.settings.idle_timeout
        idle = self.reactor.seconds() - self._last_activity
        # Not while the hub keeps the client waiting (a password check, a
        # failed login's delay, the UPDATE): the client is waiting for us,
        # and the idle time starts again with our answer.
        stream = self._stream
        waiting_for_us = self._update_running or (self._busy and (
            stream is None or stream.reading))
        if idle < timeout or waiting_for_us:
            wait = timeout - idle if idle < timeout else timeout
            self._idle_call = self.reactor.callLater(wait, self._idle_check)
            return
        if not second_look:
            # Twisted runs a call made now in its next turn, after that
            # turn's reads: input waiting in the socket is seen first
            self._idle_call = self.reactor.callLater(0, self._idle_check, True)
            return
        self._idle_call = None
        log.info("POP3 autologout of {peer} after {idle:.0f}s", peer=self._peer, idle=idle)
        if self._stream is not None or self._write_paused or handshake_pending(self.transport):
            # The peer stopped reading (in the middle of a message, or with
            # responses piled up) or stalls in the TLS handshake: a polite
            # close would wait for a buffer that never drains.  Closing,
            # as every cut is: until its end comes (a reactor turn later)
            # the hub's stop took it for a session in the middle of an
            # answer, read on from the aborted transport and armed that
            # answer's grace; it waits for its end now
            self._closing = True
            self.transport.abortConnection()
            return
        if self.engine is not None and self.engine.state is State.UPDATE:
            return
        # RFC 1939 3: no UPDATE, and the connection is closed "without
        # ... sending any response to the client"; lingering, as a command
        # sent meanwhile would be answered with a reset
        self._close(linger=True)


class _Stream:
    """The message file being sent and its encoder."""

    __slots__ = ("action", "encoder", "expected", "file", "pumping", "reading")

    def __init__(self, file: Any, encoder: MessageEncoder | PartsEncoder,
                 action: Transmit, expected: int | None = None) -> None:
        self.file = file
        self.encoder = encoder
        self.action = action
        # the octets (CRLF form) the +OK gave, where checked at the end
        self.expected = expected
        self.reading = False  # a worker thread reads its next chunk (``_pump``)
        self.pumping = False  # ``_pump`` runs (a job done at once must not call it again)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass


class POP3Factory(Factory):
    """Builds ``POP3Protocol``s; ``implicit_tls`` for ``[pop3] tls_listen``
    (the listener wraps the factory in TLS: the session starts secure)."""

    protocol = POP3Protocol
    noisy = False

    def __init__(self, components: Any, *, implicit_tls: bool = False) -> None:
        self.components = components
        self.implicit_tls = implicit_tls
        self.sessions: set[POP3Protocol] = set()  # of this listener, to end at stop
        # sessions in the UPDATE state until their deletions are done and
        # their connection is gone, and what waits for them (shut_down)
        self.updating: set[POP3Protocol] = set()
        self._waiting = GoneWaiters()
        # shared by every POP3 listener of these components
        self.limits: ConnectionLimits = components.shared("pop3_connections", ConnectionLimits)
        self.login_failures: FailureWindow = components.shared(
            "login_failures", lambda: FailureWindow(components.reactor))

    #: set while the listener stops: the sessions it ends did not leave
    stopping = False

    def startFactory(self) -> None:
        self.stopping = False  # listening again (a restart)

    def doStart(self) -> None:
        """A port starts listening with this factory: the stop is over,
        also where Twisted calls no ``startFactory`` -- a quick restart
        (``stopService`` then ``startService`` at once) opens the new port
        before the old one is closed.  ``stopping`` stayed set for the
        whole new run then: clients that left were logged as closed by the
        hub's stop.  The sessions that stop ended keep its close grace
        (``POP3Protocol._hub_stopped``)."""
        self.stopping = False
        super().doStart()

    def shut_down(self) -> Deferred:
        """The listener is stopping (the hub is): end the open sessions
        without the UPDATE state (RFC 1939 6: nothing is deleted), so that
        their mailbox locks go with them: an idle one with ``-ERR
        [SYS/TEMP]`` and a polite close, the stop waiting for it (at most
        ``STOP_CLOSE_GRACE``), one in the middle of an answer the same once
        the answer is over (cut after ``STOP_ANSWER_GRACE``), one whose
        login is being checked (or its failure's delay runs) told the same
        line and closed, its result dropped (``cut_for_stop``), one closing
        already (an autologout) with its close shortened and waited for: it
        may hold a mailbox lock.

        A session whose QUIT is in the UPDATE state already is left to
        finish its deletions (they run on a worker thread): its client
        gets the ``+OK``/``-ERR`` for them, and its close is cut after
        ``STOP_CLOSE_GRACE``.  The Deferred returned fires once those
        sessions are over, deletions and connection (at once if there are
        none): the hub's stop used to fire, and give the state directory
        up, while their unlinks still ran.  The sessions it cuts that had
        retrieved messages are waited for too: those are flagged seen
        once the connection is gone (``connectionLost``), on a worker
        thread, the same changes as at a QUIT."""
        self.stopping = True
        # every session is waited for, and the wait exists before the first
        # cut: a transport that reports the connection lost inside
        # ``abortConnection`` or ``loseConnection`` (not Twisted's TCP or
        # TLS, which do so a turn later) ends the session within the loop,
        # and a session gone before its wait began would hold it for ever
        stopped = self._waiting.wait(set(self.updating) | set(self.sessions))
        for session in list(self.sessions):
            if session in self.updating:
                session.hurry_close()
            elif not session.cut_for_stop():
                # told -ERR and closing when it says True: its lock goes
                # with it.  Else a polite close under way already (an
                # autologout, an error): shortened, as it may hold a
                # mailbox lock (the abort of a busy one: at once)
                session.hurry_close()
        # and the refused connections still waiting for their polite close
        # (this factory's: the other listeners may keep running)
        self.limits.end_refusals(self)
        return stopped

    def update_started(self, session: POP3Protocol) -> None:
        self.updating.add(session)

    def update_over(self, session: POP3Protocol) -> None:
        """``session``'s deletions are done and its connection is gone."""
        self.updating.discard(session)
        self._waiting.gone(session)

    def buildProtocol(self, addr: Any) -> POP3Protocol:
        p = POP3Protocol(self.components, implicit_tls=self.implicit_tls)
        p.factory = self
        return p

    def admit(self, host: str, exempt: bool) -> Any:
        """Count a new connection, or the reply that refuses it."""
        s = self.components.settings.pop3
        refused = self.limits.admit(host, exempt, s.max_connections,
                                    s.max_connections_per_client)
        if refused is None:
            return None
        return R.TOO_MANY_CONNECTIONS if refused == "total" else R.TOO_MANY_CONNECTIONS_FROM_YOU

    def release(self, host: str) -> None:
        self.limits.release(host)

    @property
    def connections(self) -> int:
        return self.limits.connections
