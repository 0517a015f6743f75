"""The SMTP server engine: a sans-IO state machine (RFC 5321 and extensions).

Owns the session rules: which command is allowed in which state (the
``_ALLOWED`` table) and where it leads (``_TRANSITIONS``), the replies, the
session limits (line length, recipients, errors, AUTH failures), and the
switch between command lines and message data.  Its parts: DATA and
BDAT in ``_transfer`` (the readers in ``_data``), AUTH in ``_authphase``
(the SASL exchanges in ``_sasl``), the states in ``_states``; events and
configuration in ``events``.  Bytes go in with ``receive_data``; replies come out of
``data_to_send``; whatever needs the outside world comes out of
``next_event`` as an event:

* requests, which pause the engine until the adapter answers:
  ``StartMessage`` (``message_started(sink)`` / ``message_refused(reply)``),
  ``MessageComplete`` (``message_done(reply)``), ``AuthRequest``
  (``auth_succeeded(address)`` / ``auth_failed(reply)``) and ``StartTLS``
  (``tls_started()``);
* notices: ``MessageAborted`` (throw the spool file away),
  ``AuthMalformed`` (an AUTH exchange ended on a response that is no SASL
  response: log it) and ``Close``.

Recipient policy (routing, relay rules, the mailbox quota) is a
synchronous object passed in (see ``txmailhub.smtp.policy``).  This module imports nothing from
``twisted.internet``: no sockets, no timers, no disk.

SEND is refused with 502 (we cannot deliver to a terminal and RFC 821 does
not let SEND fall back to a mailbox); SOML and SAML are treated as MAIL,
which RFC 821 allows when no terminal delivery is possible.  TURN is 502.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from txmailhub.address import Address, AddressError, ascii_form, parse_address
from txmailhub.envelope import DSNRequest, Envelope, RecipientDSN
from txmailhub.errors import Rejected, RemoteProtocolError
from txmailhub.logsafe import loggable
from txmailhub.smtp import replies
from txmailhub.smtp._authphase import AuthPhase
from txmailhub.smtp._data import ChunkReader, DotReader
from txmailhub.smtp._parse import (
    NO_PARAMS,
    MailParams,
    UnreadableArgument,
    ascii_upper,
    find_unquoted,
    first_word,
    parse_command,
    parse_mail,
    parse_mailbox,
    parse_rcpt,
)
from txmailhub.smtp._sasl import MECHANISMS, SASLExchange
from txmailhub.smtp._states import TRANSITIONS as _TRANSITIONS
from txmailhub.smtp._states import S, State
from txmailhub.smtp._transfer import MessageTransfer
from txmailhub.smtp.events import (
    AuthMalformed,
    AuthRequest,
    Close,
    MessageAborted,
    MessageComplete,
    ServerConfig,
    Session,
    StartMessage,
    StartTLS,
)
from txmailhub.smtp.reply import Reply

__all__ = [
    "AuthMalformed",
    "AuthRequest",
    "Close",
    "MessageAborted",
    "MessageComplete",
    "ServerConfig",
    "Session",
    "SMTPServer",
    "StartMessage",
    "StartTLS",
    "State",
]

log = Logger(namespace="txmailhub.smtp.server")


_ANY = frozenset({S.INIT, S.READY, S.MAIL, S.RCPT})
# Which command may be given in which state; anything else is 503.
_ALLOWED: dict[str, frozenset[State]] = {
    "HELO": _ANY, "EHLO": _ANY, "RSET": _ANY, "NOOP": _ANY, "QUIT": _ANY,
    "VRFY": _ANY, "EXPN": _ANY, "HELP": _ANY, "TURN": _ANY, "SEND": _ANY,
    "STARTTLS": _ANY, "AUTH": frozenset({S.READY}),
    "MAIL": frozenset({S.READY}), "SOML": frozenset({S.READY}), "SAML": frozenset({S.READY}),
    "RCPT": frozenset({S.MAIL, S.RCPT}), "DATA": frozenset({S.RCPT}),
    "BDAT": frozenset({S.RCPT}),
}
# SOML and SAML are served as MAIL, so inside a transaction they say what
# a second MAIL says
_SEQUENCE_REPLY = {"MAIL": replies.MAIL_NESTED, "SOML": replies.MAIL_NESTED,
                   "SAML": replies.MAIL_NESTED, "RCPT": replies.MAIL_NEEDED,
                   "DATA": replies.MAIL_NEEDED, "AUTH": replies.AUTH_IN_TRANSACTION}
# The wire form of every catalog constant, computed once (keyed by identity:
# the constants live as long as the module).
_WIRE = {id(v): v.to_bytes() for v in vars(replies).values() if isinstance(v, Reply)}
_GREETINGS: dict[str, bytes] = {}
_SKIPPED = b"<skipped>"  # a sentinel: the end of a discarded line
_MAIL_VERBS = frozenset({b"MAIL", b"SOML", b"SAML"})  # the longer MAIL line limit
# Refusals that are the hub's state, not the client's mistake: they never
# count towards max_errors.
# (A chunk discarded after a failed BDAT is not either: RFC 3030 2.)
_NOT_COUNTED = frozenset({replies.TOO_MANY_RECIPIENTS, replies.STORAGE_FULL,
                          replies.MAILBOX_FULL, replies.MESSAGE_OVER_QUOTA,
                          replies.BDAT_DISCARDED})
# The hub's own temporary trouble: a users or aliases file caught
# half-written or away, a users database that failed, no outbound queue
# yet, a message that could not be stored, an internal error.  A client
# that meets them did nothing wrong (a list server sending a dozen RCPTs
# while the users file is rewritten must not get the 421 of max_errors),
# so they are not its errors; but each counts as a command that moves no
# mail (max_junk_commands), so a session that keeps asking while the
# trouble lasts is still bounded.
_HUB_TROUBLE = frozenset({replies.LOCAL_ERROR, replies.MAILBOXES_CHANGING,
                          replies.QUEUE_UNAVAILABLE})
_NO_DSN = DSNRequest()
# Commands that move no mail forward (ServerConfig.max_junk_commands).
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})
# Verbs whose argument the engine ignores, so one that is not UTF-8 is
# no reason to refuse them: RFC 5321 4.1.1.9 "If a parameter string is
# specified, servers SHOULD ignore it" (NOOP); HELP answers the same list
# whatever it is given; TURN and SEND are 502 whatever follows them (RFC
# 5321 4.2.4: 502 "SHOULD be used when the command is actually
# recognized by the SMTP server, but not implemented").  A NUL or a bare
# CR is still refused (RFC 5321 2.3.8: nothing of such a line is done).
_ARGUMENT_IGNORED = frozenset({"NOOP", "HELP", "TURN", "SEND"})
# Verbs that take no argument (RFC 5321 4.1.1: RSET, DATA, QUIT; RFC 3207
# 4: STARTTLS): one that is not UTF-8 is refused as any other argument
# would be, not for its octets -- after the state is judged (DATA out of
# sequence is 503) and, for STARTTLS where it is not offered, 502
# whatever follows it.
_ARGUMENT_REFUSED = frozenset({"RSET", "DATA", "QUIT", "STARTTLS"})
# HELO and EHLO count with them when the session has a name already (a
# client that sends EHLO every few minutes must not hold its slot forever;
# STARTTLS forgets the name, so the EHLO after it is free)
_HELLO_VERBS = frozenset({"HELO", "EHLO"})
# Verbs whose state is judged before their argument is read, so that one
# given out of order is 503 (RFC 5321 4.1.4: "RCPT before MAIL" is a
# sequence error) whether or not its argument is UTF-8, and MAIL on the
# submission port before AUTH is 530 so (``_login_needed``).  The rest of the
# verbs that read an argument are allowed in every state (HELO, EHLO,
# VRFY, EXPN) or read their size first (BDAT, whose chunk follows
# whatever the answer: a line it cannot read is 501 after its chunk,
# in or out of sequence, as "BDAT 6 LASTX" is).
_MAIL_NAMES = frozenset({"MAIL", "SOML", "SAML"})
_SEQUENCE_FIRST = _MAIL_NAMES | {"RCPT"}
# Replies answered before the adapter collects them: a batch of pipelined
# commands is answered this many at a time, so that a client that sends
# thousands of commands in one write and reads nothing is held by the
# adapter's flow control after a few kilobytes of replies, not after
# megabytes (one 64 KiB read of HELP is 11,000 replies).
REPLIES_HELD = 128
# Wire forms that depend only on the configuration or on what the client
# said in EHLO, built once (bounded: a client chooses its EHLO name).
_BYES: dict[str, tuple[Reply, bytes]] = {}
_EHLOS: dict[tuple[str, str, tuple[str, ...]], bytes] = {}


class SMTPServer(MessageTransfer, AuthPhase):
    """One SMTP session.  Create it, send ``greeting()``, then feed bytes."""

    # Every name the engine and its parts set is a slot: CPython keeps an
    # instance's attributes in its compact shared-key layout only while
    # there are fewer than 30 of them (the engine has 29 on a plain
    # message, more with BDAT), and attribute access is slower past that.
    # The parts (MessageTransfer, AuthPhase) declare their names as
    # annotations; tests check a session leaves the instance dict empty.
    __slots__ = (
        "_bdat_draining", "_bdat_failed", "_bdat_first", "_buf", "_check_quota",
        "_chunk_size", "_chunks",
        "_data_envelope", "_discarding", "_events", "_expanded", "_mail_params", "_out",
        "_overshoot", "_rcpt_count", "_read_limit", "_reader", "_recipient_dsn",
        "_recipients", "_room_refused", "_sasl", "_sender", "_used_bdat", "_waiting",
        "auth_failures", "config", "errors", "junk", "messages", "policy", "replies_held",
        "session", "state",
    )

    def __init__(self, config: ServerConfig, policy: Any, session: Session) -> None:
        # MessageTransfer's BDAT state
        self._bdat_draining = False
        # A BDAT chunk failed and was not the LAST: the chunks the client
        # pipelined after it are discarded (RFC 3030 2), until another command
        self._bdat_failed = False
        self._chunk_size = 0
        self.config = config
        self.policy = policy
        # the policy's mailbox quota check, None without a quota (or for a
        # policy that has none): then RCPT does no extra work at all
        self._check_quota = getattr(policy, "check_quota", None)
        self.session = session
        self.state = State.INIT
        self.errors = 0
        self.junk = 0  # commands in _JUNK since the last accepted message
        self._room_refused = 0  # MAILs refused 452 for the free space (SIZE= or none left)
        # True when next_event stopped answering because REPLIES_HELD replies
        # wait to be collected (input is left): collect them and ask again
        self.replies_held = False
        self.auth_failures = 0
        self.messages = 0
        self._buf = b""
        self._out: list[bytes] = []
        self._events: list[Any] = []
        self._waiting: Any = None  # the request being answered
        self._discarding = False  # inside an over-long command line
        self._sasl: SASLExchange | None = None
        # the longest command line any verb may have (MAIL, with extensions)
        self._read_limit = max(config.max_line, config.max_mail_line, config.max_rcpt_line)
        self._reset_transaction()

    # --- the adapter's side ------------------------------------------------

    def greeting(self) -> None:
        host = self.config.hostname
        wire = _GREETINGS.get(host)
        if wire is None:
            wire = _GREETINGS[host] = replies.greeting(host).to_bytes()
        self._out.append(wire)

    def refuse_connection(self, reply: Reply) -> None:
        """Answer the connection with ``reply`` (421) and close it."""
        self.reply(reply)
        self._close(reply)

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._buf = self._buf + data if self._buf else data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self.replies_held = False
        return out

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    @property
    def storing(self) -> bool:
        """Whether the answer waited for is a message's (its spool file, or
        its 250 once it is durable), not a login's or a TLS handshake's."""
        return isinstance(self._waiting, StartMessage | MessageComplete)

    @property
    def checking_login(self) -> bool:
        """Whether the answer waited for is an ``AUTH``'s: its password
        being checked, or a failed one's delay."""
        return isinstance(self._waiting, AuthRequest)

    @property
    def has_input(self) -> bool:
        """Whether received bytes wait to be processed (pipelined input)."""
        return bool(self._buf)

    @property
    def has_line(self) -> bool:
        """Whether the input waiting holds a line end: a command the client
        finished (or message data), for the idle timeout once it is
        answered."""
        return b"\n" in self._buf

    @property
    def buffered(self) -> int:
        """How many received octets wait to be processed."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """Whether input is message data (DATA or a BDAT chunk), not command
        lines."""
        return self._reader is not None

    @property
    def message_reader(self) -> Any:
        """The reader of the message whose data has begun and not ended, or
        ``None``: DATA's, or a BDAT message's (one object for all its chunks,
        between chunks too, while ``in_message`` is false: the adapter's
        data-rate clock stops there), or a chunk's read only to be
        discarded.  Its ``size`` is the octets received so far."""
        return self._reader if self._reader is not None else self._chunks

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def next_event(self) -> Any:
        """The next event, or ``None`` (more data needed, or waiting)."""
        while not self._events:
            if self._waiting is not None or self.state is State.CLOSED:
                return None
            reader = self._reader
            if reader is not None:
                # A BDAT chunk of 0 octets is complete without any input.
                if not self._buf and (isinstance(reader, DotReader) or reader.remaining):
                    return None
                self._feed_reader()
            elif not self._buf:
                return None
            elif len(self._out) >= REPLIES_HELD:
                self.replies_held = True  # the adapter sends these before we answer more
                return None
            else:
                line = self._take_line()
                if line is None:
                    return None
                if line is not _SKIPPED:
                    self._line(line)
        return self._events.pop(0)

    def timeout(self, reply: Reply) -> None:
        """The adapter ends the session (idle timeout, shutdown): reply and close."""
        if self.state is not State.CLOSED:
            self.reply(reply)
            self._close(reply)

    # Answers to requests.

    def message_done(self, reply: Reply) -> None:
        self._answer(MessageComplete)
        self.reply(reply)
        if reply.is_positive:
            self.messages += 1
            self.junk = 0
        self._reset_transaction()
        self._to(State.READY)

    def tls_started(self) -> None:
        self._answer(StartTLS)
        # RFC 3207 4.2: nothing of the old session survives.  A message cut
        # off here is aborted first, with the envelope it had (cleartext).
        self._abort_message()
        self.session.tls = True
        self.session.helo = ""
        self.session.esmtp = False
        self.session.authenticated_as = None
        self._reset_transaction()
        self._to(State.INIT)

    def reply(self, reply: Reply) -> None:
        """Queue ``reply``; count errors and close after too many."""
        wire = _WIRE.get(id(reply))
        self._out.append(reply.to_bytes() if wire is None else wire)
        if reply.code >= 400 and reply not in _NOT_COUNTED:
            if reply.code == 421:
                return
            if reply in _HUB_TROUBLE:
                self._count_junk()
                return
            self._count_error()

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.config.max_errors and self.state is not State.CLOSED:
            bye = replies.closing(replies.TOO_MANY_ERRORS, self.config.hostname)
            self._out.append(bye.to_bytes())
            self._close(bye)

    def _count_junk(self, counted: bool = False) -> None:
        """One more command that moves no mail: answered, and beyond
        ``max_junk_commands`` an error too (unless ``counted`` already)."""
        self.junk += 1
        if self.junk > self.config.max_junk_commands and not counted:
            self._count_error()

    def abort(self) -> None:
        """The connection is gone: drop everything (the adapter aborts the spool)."""
        self._reader = None
        self._waiting = None
        self._buf = b""
        self.state = State.CLOSED

    # --- internals -------------------------------------------------------------

    def _to(self, state: State) -> None:
        if self.state is State.CLOSED:
            # A reply on the way (the 10th error, say) closed the session:
            # closing wins over whatever state the command would lead to.
            return
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"SMTP engine: no transition from {self.state} to {state}")
        self.state = state

    def _answer(self, kind: type) -> Any:
        req = self._waiting
        if not isinstance(req, kind):
            raise AssertionError(f"SMTP engine: {kind.__name__} answer while waiting for {req!r}")
        self._waiting = None
        return req

    def _request(self, event: Any) -> None:
        self._waiting = event
        self._events.append(event)

    def _close(self, reply: Reply | None) -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._buf = b""
            self._events.append(Close(reply))

    def _reset_transaction(self) -> None:
        self._sender: Address | None = None
        self._mail_params: MailParams = NO_PARAMS
        self._data_envelope: Envelope | None = None
        self._rcpt_count = 0
        self._overshoot = 0  # RCPTs refused for max_recipients
        self._recipients: dict[Address, None] = {}
        self._recipient_dsn: list[tuple[Address, RecipientDSN]] = []
        self._expanded: list[tuple[Address, RecipientDSN]] = []
        self._bdat_first: tuple[int, bool] | None = None
        self._used_bdat = False
        self._reader: DotReader | ChunkReader | None = None
        self._chunks: ChunkReader | None = None

    def _envelope(self) -> Envelope:
        p = self._mail_params
        s = self.session
        return Envelope(
            sender=self._sender,
            recipients=tuple(self._recipients),
            helo=s.helo,
            client_address=s.client_host,
            authenticated_as=str(s.authenticated_as) if s.authenticated_as else None,
            body_8bit=p.body_8bit,
            smtputf8=p.smtputf8,
            dsn=DSNRequest(p.ret, p.envid, p.envid_raw) if (p.ret or p.envid) else _NO_DSN,
            recipient_dsn=tuple(self._recipient_dsn),
            expanded=tuple(self._expanded) if self._expanded else (),
            tls=s.tls,
            submitter=self._submitter(p),
        )

    def _take_line(self) -> bytes | None:
        buf = self._buf
        c = self.config
        limit = c.max_auth_line if self.state is State.AUTH else self._read_limit
        end = buf.find(b"\n", 0, limit)
        if end < 0:
            if len(buf) < limit:
                return None
            # Over-long: answer at once, then drop bytes until the line ends
            # (memory stays bounded however long the line is).
            end = buf.find(b"\n", limit)
            self._buf = b"" if end < 0 else buf[end + 1 :]
            if not self._discarding:
                self._line_too_long(buf[:limit])
            self._discarding = end < 0
            return _SKIPPED
        self._buf = buf[end + 1 :]
        if self._discarding:
            self._discarding = False
            return _SKIPPED
        if end >= c.max_line and self.state is not State.AUTH:
            verb = buf[:4].upper()
            if end >= (c.max_mail_line if verb in _MAIL_VERBS
                       else c.max_rcpt_line if verb == b"RCPT" else c.max_line):
                self._line_too_long(buf[:end])
                return _SKIPPED
        if end and buf[end - 1] == 13:
            return buf[: end - 1]
        return buf[:end]

    def _line_too_long(self, head: bytes) -> None:
        """Refuse the line ``head`` begins (as much of it as was read)."""
        if self.state is State.AUTH:
            assert self._sasl is not None
            self._events.append(AuthMalformed(self._sasl.mechanism))
            self._sasl = None
            self._to(State.READY if self.session.helo else State.INIT)
            self.reply(replies.AUTH_LINE_TOO_LONG)
            return
        mechanism = self._overlong_auth(head)  # before a transaction's end: none in one
        if self.state in (State.MAIL, State.RCPT):
            self._abort_message()
            self._reset_transaction()
            self._to(State.READY)
        if mechanism is not None:
            self._events.append(AuthMalformed(mechanism))
        self.reply(replies.LINE_TOO_LONG)

    def _line(self, line: bytes) -> None:
        if self.state is State.AUTH:
            assert self._sasl is not None
            self._sasl_step(self._sasl.respond(line))
            return
        try:
            verb, arg = parse_command(line)
        except UnreadableArgument as e:
            if e.verb in _ARGUMENT_IGNORED or self._switched_off(e.verb):
                verb, arg = e.verb, ""
            elif e.verb == "AUTH" or e.verb in _ARGUMENT_REFUSED:
                # an initial response is base64, which such octets are not
                # (RFC 4954 4: 501 5.5.2): refused, logged and counted as
                # any other malformed response, as POP3's AUTH does; a
                # mechanism with them is one the hub lacks (504).  To a
                # verb that takes no argument they are one as any other.
                verb, arg = e.verb, e.argument
            elif e.verb in _SEQUENCE_FIRST and (
                    self.state not in _ALLOWED[e.verb] or self._login_needed(e.verb)
                    or (e.verb == "RCPT" and self._chunks is not None)):
                # out of order whatever its argument: 503, as the same
                # command with a UTF-8 argument gets (RFC 5321 4.1.4), a
                # RCPT once BDAT has started too; a MAIL on the submission
                # port before AUTH is 530 so
                verb, arg = e.verb, e.argument
            else:
                # 500 for a verb the engine lacks, as with a UTF-8 argument;
                # HELO and EHLO answer without an enhanced code, as their
                # other replies do (RFC 2034 3 (4), docs/smtp.rst)
                refusal = (replies.UNKNOWN_COMMAND if e.verb not in _DISPATCH
                           else replies.HELO_INVALID_UTF8 if e.verb in _HELLO_VERBS
                           else e.reply)
                self._unreadable_line(line, refusal)
                return
        except RemoteProtocolError as e:
            self._unreadable_line(line, e.reply)
            return
        try:
            if self._bdat_failed and verb != "BDAT":
                self._bdat_failed = False  # the chunks pipelined after it are over
            handler = _DISPATCH.get(verb)
            if handler is None:
                self._unknown_command(verb, arg)
                return
            if self.state not in _ALLOWED[verb]:
                self._out_of_sequence(verb, arg)
                return
            errors = self.errors
            greeted = self.session.helo  # a greeting again moves no mail either
            handler(self, arg)
            if verb in _JUNK or (greeted and verb in _HELLO_VERBS):
                # (a refusal of the command counted as an error already)
                self._count_junk(counted=self.errors != errors)
        except RemoteProtocolError as e:
            self.reply(e.reply)
        except Rejected as e:
            self._log_refusal(verb, arg, e.reply)
            self.reply(e.reply)
        except Exception:
            log.failure("SMTP engine error in state {state}", state=self.state.name)
            # A fault of the code that the client's command set off: the
            # 451 is the hub's trouble (counted as junk by ``reply``), but a
            # client repeating the command would leave a traceback each
            # time, so it is counted as its error as well (max_errors):
            # once, so not again when the junk count past
            # max_junk_commands made it an error already
            errors = self.errors
            self.reply(replies.LOCAL_ERROR)
            if self.errors == errors:
                self._count_error()

    def _login_needed(self, verb: str) -> bool:
        """Whether ``verb`` is a MAIL refused ``530`` before its argument
        is read: on a submission listener, before AUTH (RFC 6409 4.3)."""
        return (verb in _MAIL_NAMES and self.session.submission
                and self.session.authenticated_as is None)

    def _switched_off(self, verb: str) -> bool:
        """Whether ``verb`` is VRFY or EXPN turned off by the configuration.

        Then it is ``252`` whatever follows it (RFC 5321 7.3: a site that
        disables them "MUST return a 252 response"), so its argument is
        not read, and octets there that are not UTF-8 are no reason to
        refuse it, as with NOOP's (``_ARGUMENT_IGNORED``)."""
        c = self.config
        return (verb == "VRFY" and not c.vrfy) or (verb == "EXPN" and not c.expn)

    def _log_refusal(self, verb: str, arg: str, reply: Reply) -> None:
        """A refused sender, recipient or lookup leaves a line (the client
        got a reply; whoever asks why mail did not arrive reads the log)."""
        if verb == "AUTH":
            # the mechanism, when it is one; never an initial response
            # (cut where the engine cuts it: at SP or HTAB, not at any
            # blank str.split() knows)
            mech = ascii_upper(first_word(arg)[0])
            arg = mech if mech in MECHANISMS else ""
        sender = ""
        if verb == "RCPT" and self._sender is not None:
            sender = f" (sender <{self._sender}>)"
        log.info("refused {command} from {client}{sender}: {reply}",
                 command=loggable(f"{verb} {arg}".rstrip()), client=self.session.client_host,
                 sender=loggable(sender), reply=reply.text())

    def _out_of_sequence(self, verb: str, arg: str) -> None:
        if self.state is State.INIT and verb in ("MAIL", "SOML", "SAML", "AUTH"):
            self.reply(replies.HELO_REQUIRED)
        elif verb == "BDAT":
            self._drain_chunk(arg)
        elif verb == "DATA" and self.state is State.MAIL:
            self.reply(replies.DATA_NO_RECIPIENTS)
        elif verb in ("RCPT", "DATA") and self.state is State.INIT:
            self.reply(replies.HELO_REQUIRED)
        else:
            self.reply(_SEQUENCE_REPLY.get(verb, replies.BAD_SEQUENCE))

    # --- commands -------------------------------------------------------------------

    def _helo(self, arg: str) -> None:
        self._greet(_helo_name(arg), esmtp=False)
        self.reply(replies.hello(self.config.hostname, self.session.helo))

    def _ehlo(self, arg: str) -> None:
        self._greet(_helo_name(arg), esmtp=True)
        key = (self.config.hostname, self.session.helo, tuple(self._keywords()))
        wire = _EHLOS.get(key)
        if wire is None:
            if len(_EHLOS) >= 256:
                _EHLOS.clear()
            wire = _EHLOS[key] = replies.ehlo(key[0], key[1], list(key[2])).to_bytes()
        self._out.append(wire)

    def _greet(self, name: str, esmtp: bool) -> None:
        self._abort_message()  # under the name the message was sent with
        self.session.helo = name
        self.session.esmtp = esmtp
        self._reset_transaction()
        self._to(State.READY)

    def _keywords(self) -> list[str]:
        c = self.config
        s = self.session
        words = [f"SIZE {c.max_message_size}", "PIPELINING", "8BITMIME",
                 "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"]
        if c.tls_available and not s.tls:
            words.append("STARTTLS")
        if self._auth_offered():
            words.append("AUTH PLAIN LOGIN")
        if c.expn:  # a registered EHLO keyword (RFC 1869): said when served
            words.append("EXPN")
        # RFC 5321 F.6: SOML and SAML, served (as MAIL), "MUST be published
        # in the response to the EHLO command"; SEND and TURN (502) are not
        words += ("SAML", "SOML", "HELP")
        return words

    def _mail(self, arg: str) -> None:
        if self.session.submission and self.session.authenticated_as is None:
            raise Rejected(replies.AUTH_REQUIRED)
        sender, params = parse_mail(arg, self.config.primary_domain)
        if self._submitting() and sender is not None and self._unqualified(sender):
            raise Rejected(replies.SENDER_NOT_QUALIFIED)
        if params.size is not None and params.size > self.config.max_message_size:
            raise Rejected(replies.SIZE_EXCEEDS_LIMIT)  # never fits: 552
        try:
            # does not fit now (452 4.3.1): the size announced, or without
            # one any message at all (a disk with no room left, RFC 1870 6.1)
            if params.size is not None:
                self.policy.check_room(params.size)
            else:
                self.policy.check_any_room()
        except Rejected as e:
            self._room_refused += 1
            if self._room_refused == 1:
                raise  # logged, once per session
            # a client that asks again and again while the disk is full
            # is answered, but neither logged each time nor free: each
            # repeat counts as a command that moves no mail
            self.reply(e.reply)
            self._count_junk()
            return
        self._sender = sender
        self._mail_params = params
        self._to(State.MAIL)
        self.reply(_echo_ok(sender, replies.sender_ok, replies.SENDER_OK))

    def _rcpt(self, arg: str) -> None:
        if self._chunks is not None:
            # The message (its trace header included) is already being
            # written for the recipients given before the first BDAT: a
            # sequence error, judged before the argument is read (as for
            # a RCPT before MAIL), so that whatever it holds is 503
            raise Rejected(replies.RCPT_AFTER_BDAT)
        rcpt, params = parse_rcpt(arg, self.config.primary_domain, self._mail_params.smtputf8)
        if self._submitting() and self._unqualified(rcpt):
            raise Rejected(replies.RECIPIENT_NOT_QUALIFIED)
        if self._rcpt_count >= self.config.max_recipients:
            self._overshoot += 1
            if self._overshoot == 1:
                raise Rejected(replies.TOO_MANY_RECIPIENTS)  # logged, once per transaction
            self.reply(replies.TOO_MANY_RECIPIENTS)
            if self._overshoot > self.config.max_recipient_overshoot:
                self._count_error()
            return
        final = self.policy.check_recipient(rcpt, self.session)
        self._rcpt_count += 1
        if self._check_quota is not None:
            # full: 452 4.2.2, not counted as the client's error (a list
            # server may meet many full mailboxes) but as one of the
            # transaction's max_recipients, so its repeats stay bounded
            self._check_quota(rcpt, final, self._mail_params.size)
        dsn = None
        if params.notify or params.orcpt:
            # RFC 3461 4.2: without ORCPT the notices could name only what
            # the address became (lower case, an alias's members); the
            # address as the client gave it is recorded instead.
            # The client's own ORCPT is kept as sent too, to be relayed so
            # (RFC 3461 5.2.1 (d)); the one made up here has no such form.
            orcpt, orcpt_raw = params.orcpt, params.orcpt_raw
            if orcpt is None and final != (rcpt,):
                text = str(rcpt)
                orcpt = f"{'rfc822' if text.isascii() else 'utf-8'};{text}"  # RFC 6533
            dsn = RecipientDSN(params.notify, orcpt, orcpt_raw)
            if len(final) > 1 and "SUCCESS" in params.notify:
                # An alias of several members: one "expanded" notice for it,
                # none naming its members (RFC 3461 6.2.7.3).
                self._expanded.append((rcpt, dsn))
                rest = tuple(n for n in params.notify if n != "SUCCESS")
                dsn = RecipientDSN(rest or ("NEVER",), orcpt, orcpt_raw)
        for addr in final:
            if addr not in self._recipients:
                self._recipients[addr] = None
                if dsn is not None:
                    self._recipient_dsn.append((addr, dsn))
            elif dsn is not None and all(a != addr for a, _ in self._recipient_dsn):
                # the same mailbox again (another spelling, a list that holds
                # it): its DSN parameters, if the first RCPT gave none
                self._recipient_dsn.append((addr, dsn))
        self._to(State.RCPT)
        self.reply(_echo_ok(rcpt, replies.recipient_ok, replies.RECIPIENT_OK))

    def _submitting(self) -> bool:
        """Whether the hub is this client's MSA: on a submission listener,
        and for a client that logged in on the MX listener, whose messages
        get the Date and Message-ID they lack and the address-field check
        too (the adapter's ``_missing_fields``).  RFC 6409 4.2 then wants
        every envelope domain fully qualified, unconditionally."""
        return self.session.submission or self.session.authenticated_as is not None

    def _unqualified(self, address: Address) -> bool:
        """A domain of one label that is not ours (``bob@intranet``): an MSA
        must make sure every envelope domain is fully qualified (RFC 6409
        4.2).  A bare local part was qualified with the primary domain by
        the parser, and an address literal is a host already."""
        domain = address.domain
        return ("." not in domain and not domain.startswith("[")
                and not self.policy.router.is_local_domain(domain))

    def _rset(self, arg: str) -> None:
        if arg:  # RFC 5321 4.1.1: RSET, DATA and QUIT take no parameters
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT)
        self._abort_message()
        self._reset_transaction()
        if self.state is not State.INIT:
            self._to(State.READY)
        self.reply(replies.RESET)

    def _noop(self, arg: str) -> None:
        self.reply(replies.OK)

    def _quit(self, arg: str) -> None:
        if arg:
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT)
        self._abort_message()
        host = self.config.hostname
        known = _BYES.get(host)
        if known is None:
            bye = replies.bye(host)
            known = _BYES[host] = (bye, bye.to_bytes())
        self._out.append(known[1])
        self._close(known[0])

    def _vrfy(self, arg: str) -> None:
        if not self.config.vrfy:
            self.reply(replies.CANNOT_VRFY)
            return
        self._lookup(arg, expand=False)

    def _expn(self, arg: str) -> None:
        if not self.config.expn:
            self.reply(replies.EXPN_DISABLED)
            return
        self._lookup(arg, expand=True)

    def _lookup(self, arg: str, expand: bool) -> None:
        # the blanks are SP and HTAB (parse_command took those around the
        # argument off): a VT, FF or a Unicode blank is part of the name,
        # which parse_address then refuses, not a separator str.strip()
        # would drop ("VRFY alice<VT>" was alice's 250)
        text = arg.strip(" \t")
        # RFC 6531 3.7.4.2: "VRFY String [SP SMTPUTF8]" -- the client takes
        # UTF-8 in this one reply; a tab before it is a blank, as after
        # the verb
        cut = max(text.rfind(" "), text.rfind("\t"))
        utf8 = cut >= 0 and ascii_upper(text[cut + 1 :]) == "SMTPUTF8"
        if utf8:
            text = text[:cut].rstrip(" \t")
        if text.endswith(">"):  # "<a@b>" or "Full Name <a@b>"
            start = find_unquoted(text, "<")
            if start >= 0:
                text = text[start + 1 : -1]
        if text[:1].isspace() or text[-1:].isspace():
            # parse_address forgives white space around a name (the CLI's,
            # a file's); a command line's other blanks are no separators
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT)
        try:
            if text.startswith('"'):
                # a Quoted-string, VRFY's other String (RFC 5321 4.1.1.6),
                # alone or as a mailbox's local part: it names what its
                # unquoted form names, as in RCPT (``"alice"`` is alice,
                # 4.1.2), and a quoted name with a space in it is no syntax
                # error but a name to look up
                address = parse_mailbox(text, self.config.primary_domain, utf8=True)
            else:
                address = parse_address(text, self.config.primary_domain)
        except (AddressError, RemoteProtocolError):
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT) from None
        found = self.policy.verify(address)
        if found is None:
            self.reply(replies.CANNOT_EXPN if expand else replies.CANNOT_VRFY)
            return
        # without SMTPUTF8 a name goes in ASCII where it has an ASCII form
        # (a local domain is routed to its U-labels)
        names = [str(a) if utf8 else (ascii_form(a) or str(a)) for a in found]
        if not utf8 and not all(n.isascii() for n in names):
            self.reply(replies.EXPN_NEEDS_SMTPUTF8 if expand else replies.VRFY_NEEDS_SMTPUTF8)
        elif expand or len(names) != 1:
            # EXPN lists every final address, remote ones too (RFC 5321
            # 3.5.1); VRFY of a list answers with the list, positively
            # because a message to it goes to every member (3.5.1 allows it)
            self.reply(replies.expn_found(names))
        elif not self.policy.router.is_local_domain(found[0].domain):
            # a name that leads to one address in another domain: nothing
            # there was verified, so not 250 but 251 (RFC 5321 3.5.3)
            self.reply(replies.vrfy_forwarded(names[0]))
        else:
            self.reply(replies.vrfy_found(names[0]))

    def _help(self, arg: str) -> None:
        self.reply(_HELP)

    def _turn(self, arg: str) -> None:
        self.reply(replies.TURN_REFUSED)

    def _send(self, arg: str) -> None:
        self.reply(replies.SEND_REFUSED)

    def _starttls(self, arg: str) -> None:
        # a command not offered is 502 whatever its argument: "STARTTLS x"
        # got 501 (fix the argument) where "STARTTLS" got 502 (never here)
        if not self.session.tls and not self.config.tls_available:
            raise RemoteProtocolError(replies.STARTTLS_NOT_OFFERED)
        if arg:
            raise RemoteProtocolError(replies.STARTTLS_ARGUMENT)
        if self.session.tls:
            raise RemoteProtocolError(replies.TLS_ALREADY)
        self.reply(replies.TLS_READY)
        self._buf = b""  # nothing sent before the handshake may be obeyed after it
        self._request(StartTLS())


def _echo_ok(address: Address | None, echoing: Callable[[str], Reply], plain: Reply) -> Reply:
    """The ``250`` to MAIL or RCPT: ``echoing`` the address in ASCII (an
    internationalized domain as its A-labels), or ``plain``, naming none,
    for an address that has no ASCII form.  RFC 6531 3.7.4 lets a reply
    carry UTF-8 only where it names the mailbox of a 251 or 551, or a VRFY
    or EXPN given ``SMTPUTF8``: "MUST NOT include non-ASCII characters in
    replies except" there, and these 250s are neither."""
    if address is None:
        return echoing("")
    text = ascii_form(address)
    return plain if text is None else echoing(text)


def _helo_name(arg: str) -> str:
    """The first word of HELO/EHLO's argument, cut at SP or HTAB as the
    verb is (RFC 5321 4.1.1: ``"EHLO" SP ( Domain / address-literal )``);
    501 when there is none, without an enhanced code (RFC 2034 3 (4)
    exempts the replies to HELO and EHLO, and the hub sends none); a
    "name" of other white space only (``EHLO <NBSP>``) is none either.

    Not cut at every blank ``str.split()`` knows: a name with a VT, FF or
    a Unicode blank in it is recorded whole (the Received field writes a
    name that is no domain in a comment, escaped), not cut there."""
    name = first_word(arg)[0]
    if not name or name.isspace():
        raise RemoteProtocolError(replies.HELO_SYNTAX)
    return name


# Explicit dispatch: verb -> handler (STYLE practice 5).
_DISPATCH: dict[str, Callable[[SMTPServer, str], None]] = {
    "HELO": SMTPServer._helo, "EHLO": SMTPServer._ehlo, "MAIL": SMTPServer._mail,
    "SOML": SMTPServer._mail, "SAML": SMTPServer._mail, "RCPT": SMTPServer._rcpt,
    "DATA": SMTPServer._data, "BDAT": SMTPServer._bdat, "RSET": SMTPServer._rset,
    "NOOP": SMTPServer._noop, "QUIT": SMTPServer._quit, "VRFY": SMTPServer._vrfy,
    "EXPN": SMTPServer._expn, "HELP": SMTPServer._help, "STARTTLS": SMTPServer._starttls,
    "AUTH": SMTPServer._auth, "TURN": SMTPServer._turn, "SEND": SMTPServer._send,
}
# HELP names what is served: TURN and SEND are known only to be refused (502).
_HELP = replies.help_text(sorted(set(_DISPATCH) - {"TURN", "SEND"}))
