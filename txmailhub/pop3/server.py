"""The POP3 server engine: a sans-IO state machine (RFC 1939, 2449, 2595, 5034, 6856).

Bytes go in (``receive_data``), one *action* per command comes out
(``next_action``).  Most actions are ``Send`` (bytes to write); the others
ask the adapter to do I/O and, where the outcome changes the session,
report back:

* ``Authenticate`` -> ``login_succeeded(messages, size_of)`` / ``login_failed(why)``
* ``Transmit``     -> the adapter streams the message (nothing to report)
* ``StartTLS``     -> the adapter starts TLS and builds a fresh engine
* ``Update``       -> ``update_finished(ok, permanent)`` (the UPDATE state)

The engine owns the protocol rules: states and their transitions, which
command is valid where, argument syntax, line limits, the plaintext
password policy, the deletion marks and the message numbering of the
snapshot.  It must not touch sockets, the reactor or the disk (no
``twisted.internet`` import).  The action types live in
``txmailhub.pop3.actions``, line splitting in ``txmailhub.pop3.lines`` and
the wording of replies in ``txmailhub.pop3.replies``.
"""

from __future__ import annotations

import binascii
import enum
import os
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from txmailhub.address import login_key, one_quoted_string
from txmailhub.errors import LocalError
from txmailhub.pop3 import replies as R
from txmailhub.pop3.actions import Action, Authenticate, Send, StartTLS, Transmit, Update
from txmailhub.pop3.intl import LANGUAGES, prepare_username, select_language, valid_range
from txmailhub.pop3.lines import LineReader
from txmailhub.pop3.replies import TERMINATOR, POP3Reply
from txmailhub.store.format import Snapshot, columns

__all__ = [
    "COMMAND_LINE_LIMIT",
    "CAPABILITIES",
    "Authenticate",
    "LoginFailure",
    "POP3Server",
    "Send",
    "StartTLS",
    "State",
    "Transmit",
    "Update",
    "make_timestamp",
]

COMMAND_LINE_LIMIT = 255
"""RFC 2449 section 4: a command line is at most 255 octets, CRLF included."""

SASL_LINE_LIMIT = 4096
"""Longest client line kept at all (a SASL response may exceed the command
limit); longer lines are dropped as they arrive, so an endless line never
grows memory."""

PRE_LOGIN_LINES = 50
"""Lines a client may send before it logs in.  RFC 1939 sets no limit, and
a real client needs few (CAPA, STLS, CAPA again, USER and PASS, a retry or
two); without one, a client that sends CAPA just inside the autologout
holds a connection slot for ever without logging in."""

MAX_ERRORS = 10
"""Default bound on the commands refused with ``-ERR`` after login
(``[pop3] max_errors``, as ``[smtp] max_errors``).  Before login every
line counts (``PRE_LOGIN_LINES``); after it a client may send any number
of commands, but one that only sends garbage was bounded by the
autologout alone, which each refused command restarts."""

IMPLEMENTATION = "txmailhub"


class State(enum.Enum):
    """The RFC 1939 session states."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"

    __hash__ = object.__hash__  # singletons: hash in C (Enum's is Python code)


class Event(enum.Enum):
    AUTHENTICATED = "authenticated"
    QUIT = "QUIT"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.AUTHORIZATION, Event.AUTHENTICATED): State.TRANSACTION,
    (State.TRANSACTION, Event.QUIT): State.UPDATE,
}
"""Every state change the engine makes.  QUIT in AUTHORIZATION ends the
session without entering UPDATE (RFC 1939 section 4)."""


class LoginFailure(enum.Enum):
    """Why a login did not give a mailbox; each has its response code."""

    BAD_CREDENTIALS = "AUTH"
    IN_USE = "IN-USE"
    TEMPORARY = "SYS/TEMP"
    PERMANENT = "SYS/PERM"
    THROTTLED = "throttled"  # too many failed logins from this client


def make_timestamp(hostname: str, now: float) -> str:
    """An RFC 1939 APOP timestamp ``<pid.time.random@hostname>``, unique per greeting."""
    return f"<{os.getpid()}.{int(now)}.{secrets.token_hex(8)}@{hostname}>"


def multiline(reply: POP3Reply, lines: Sequence[str]) -> bytes:
    """A status line, ``lines`` (dot-stuffed) and the terminator, as one bytes."""
    body = "".join(("." + x if x.startswith(".") else x) + "\r\n" for x in lines)
    return reply.to_bytes() + body.encode("utf-8", "replace") + TERMINATOR


def capabilities(*, stls: bool, plaintext: bool = True) -> tuple[str, ...]:
    """The CAPA list.  ``USER`` and ``SASL PLAIN`` are left out where
    plaintext passwords are refused (RFC 2595 section 6: PLAIN "MUST NOT
    be advertised" without a security layer); STLS then tells the client
    how to get one."""
    caps = ["TOP", "UIDL"]
    if plaintext:
        caps += ["USER", "SASL PLAIN"]
    caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    # RFC 2449 6.7: the hub removes a message only for a client's DELE
    # (and QUIT), never by age; no setting changes that.  No LOGIN-DELAY
    # (6.8): nothing holds a login off for the time since the user's last
    # one (the delays after failed logins are no such minimum)
    caps.append("EXPIRE NEVER")
    # RFC 6856: the UTF8 command, and (argument USER) UTF-8 user names and
    # passwords in USER/PASS -- listed with USER, where those are accepted
    caps += ["UTF8 USER" if plaintext else "UTF8", "LANG"]
    if stls:
        caps.append("STLS")
    caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
    return tuple(caps)


CAPABILITIES = capabilities(stls=True)
"""The full list (RFC 2449), STLS included; CAPA drops STLS where it does not apply."""

_A = State.AUTHORIZATION
_T = State.TRANSACTION
_SIZE_VERBS = frozenset((b"STAT", b"LIST", b"RSET"))  # report sizes (``next_needs_sizes``)
VALID_IN: dict[str, frozenset[State]] = {
    "USER": frozenset({_A}),
    "PASS": frozenset({_A}),
    "APOP": frozenset({_A}),
    "AUTH": frozenset({_A}),
    "STLS": frozenset({_A}),
    "CAPA": frozenset({_A, _T}),
    "UTF8": frozenset({_A}),
    "LANG": frozenset({_A, _T}),
    "QUIT": frozenset({_A, _T}),
    "NOOP": frozenset({_T}),
    "STAT": frozenset({_T}),
    "LIST": frozenset({_T}),
    "RETR": frozenset({_T}),
    "TOP": frozenset({_T}),
    "DELE": frozenset({_T}),
    "RSET": frozenset({_T}),
    "UIDL": frozenset({_T}),
}
"""Which command is valid in which state (the dispatch table's other half)."""


def _words(arg: str) -> list[str]:
    """A command's arguments, split at SP (RFC 1939 3: "separated by a
    single SPACE character"; runs of them and HTAB taken too, leniently).

    Not at every blank ``str.split()`` knows: a VT, FF, FS..US, NEL or a
    Unicode space is part of the word it stands in (``DELE 1<VT>2`` is no
    two numbers, ``APOP alice<NBSP>digest`` no name and digest)."""
    if "\t" in arg:
        arg = arg.replace("\t", " ")
    return [w for w in arg.split(" ") if w]


def _blank(arg: str) -> bool:
    """Whether ``arg`` is empty or SP/HTAB only: a command that takes no
    argument was given none (``STAT<NBSP>`` was given one)."""
    return not arg.strip(" \t")


def _digits(text: str) -> int | None:
    """A non-negative number in ASCII digits, as many as the 255-octet line
    holds (RFC 1939 sets no limit: ``TOP 1 1234567890`` is valid)."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


class POP3Server:
    """One POP3 session, from greeting to QUIT, without I/O.

    ``plaintext_allowed``: whether USER/PASS and AUTH PLAIN may be used
    (TLS active, a loopback client, or the configuration says so).
    ``tls_available``: STLS can be offered; ``tls_active``: it is on.
    ``timestamp``: the greeting's APOP timestamp (kept across STLS), or
    ``""`` where APOP is not offered: the greeting has none, and APOP is
    refused like a command the server does not have (RFC 1939 section 7
    makes APOP optional).
    """

    def __init__(
        self,
        *,
        hostname: str,
        timestamp: str,
        plaintext_allowed: bool,
        tls_available: bool = False,
        tls_active: bool = False,
        max_auth_failures: int = 3,
        auth_failure_delay: float = 1.0,
        auth_failures: int = 0,
        primary_domain: str = "",
        max_errors: int = MAX_ERRORS,
    ) -> None:
        self.hostname = hostname
        self.primary_domain = primary_domain.lower()
        self.timestamp = timestamp
        self.plaintext_allowed = plaintext_allowed
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.max_auth_failures = max_auth_failures
        self.auth_failure_delay = auth_failure_delay
        self.auth_failures = auth_failures
        self.max_errors = max_errors
        self.errors = 0  # commands refused with -ERR in the TRANSACTION state
        self.state = State.AUTHORIZATION
        self.finished = False  # QUIT seen or STLS begun: no further commands
        self._reader = LineReader(SASL_LINE_LIMIT)
        self._waiting: str | None = None  # "login" or "update" while I/O runs
        self._user: str | None = None
        self._sasl = False  # an AUTH PLAIN response is awaited
        # the login awaited is of a name no user can have (Authenticate's
        # unusable_name): its failure is answered BAD_USER_NAME
        self._unusable_name = False
        self._before_login = 0  # lines read in the AUTHORIZATION state
        self.utf8 = False  # UTF8 issued (RFC 6856): UTF-8 headers may be sent
        self._messages: Sequence[Any] = ()
        # the snapshot's UIDs and sizes, as columns (``columns``): a
        # ``Snapshot``'s own, not a copy per session
        self._uids: Sequence[str] = ()
        self._sizes: Sequence[int] = ()
        self._size_of: Callable[[int], int] | None = None
        self._deleted: set[int] = set()
        # RSET commands handled: the adapter forgets the seen flags it was
        # to set at the session's end for the messages RETR sent before
        # one, as the deletion marks go (Dovecot's RSET does the same)
        self.resets = 0
        self._dispatch = _HANDLERS_IN[self.state]

    # -- input -------------------------------------------------------------

    def greeting(self) -> bytes:
        return R.greeting(self.hostname, self.timestamp).to_bytes()

    def receive_data(self, data: bytes) -> None:
        """Buffer client bytes; complete lines are queued for ``next_action``."""
        self._reader.feed(data)

    def discard_input(self) -> None:
        """Forget every line received so far (after STLS)."""
        self._reader.clear()

    @property
    def buffered(self) -> int:
        """Octets held for lines not handled yet, line ends included."""
        return self._reader.buffered

    @property
    def has_line(self) -> bool:
        return self._reader.has_line

    def next_action(self) -> Action | None:
        """Handle the next complete line; ``None`` when none is buffered.

        After login each command refused with ``-ERR`` (unknown, out of
        state, bad syntax, a bad message number...) counts; the
        ``max_errors``-th is answered with ``TOO_MANY_ERRORS`` instead
        and the session closes, without UPDATE (nothing is deleted), as
        ``PRE_LOGIN_LINES`` bounds the lines before login."""
        action = self._next_action()
        if (type(action) is Send and self.state is State.TRANSACTION
                and action.data[:4] == b"-ERR" and not action.close):
            self.errors += 1
            if self.errors >= self.max_errors:
                self.finished = True
                return Send(R.TOO_MANY_ERRORS.to_bytes(), close=True)
        return action

    def _next_action(self) -> Action | None:
        if self._waiting is not None:
            raise LocalError(f"next_action while waiting for the {self._waiting} result")
        reader = self._reader
        if self.finished or not reader.has_line:
            return None
        line = reader.pop()
        if self.state is State.AUTHORIZATION:
            self._before_login += 1
            if self._before_login > PRE_LOGIN_LINES:
                self.finished = True
                return Send(R.TOO_MANY_COMMANDS.to_bytes(), close=True)
        if line is None:  # longer than any line we keep
            was_sasl, self._sasl = self._sasl, False
            if was_sasl:
                return Send(R.SASL_LINE_TOO_LONG.to_bytes())
            # only its first octets were kept: an AUTH PLAIN with an
            # initial response is marked at any length, as SMTP's is
            return Send(R.LINE_TOO_LONG.to_bytes(),
                        malformed_auth=self._overlong_auth(reader.dropped_head))
        if self._sasl:
            self._sasl = False
            return self._sasl_response(line, initial=False)
        if len(line) + 2 > COMMAND_LINE_LIMIT:
            return Send(R.LINE_TOO_LONG.to_bytes(), malformed_auth=self._overlong_auth(line))
        if b"\0" in line:  # RFC 1939 3: printable ASCII, as SMTP refuses it
            return self._send(R.NUL_IN_COMMAND)
        if b"\r" in line:  # only CRLF ends a line (the reader took off its CR)
            return self._send(R.BARE_CR_IN_COMMAND)
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        if not verb.isascii():
            # RFC 1939 3: keywords are ASCII; str.upper() would make
            # "\u017ftat" (long s) STAT and "\ufb06at" (a ligature) STAT too
            return self._send(R.BAD_ENCODING)
        verb = verb.upper()
        handler = self._dispatch.get(verb)
        if handler is not None:
            return handler(self, arg)
        if verb not in VALID_IN:
            return self._send(R.UNKNOWN_COMMAND)
        return self._send(R.wrong_state(verb, self.state.value))

    def next_needs_sizes(self) -> bool:
        """Whether the next buffered line is a command that reports sizes
        through the login's ``size_of`` (``STAT``, ``LIST``, ``RSET``):
        an adapter whose ``size_of`` may read the disk can measure them
        first, where it can wait.  The line is not taken."""
        reader = self._reader
        if (self._size_of is None or self.state is not State.TRANSACTION
                or self._sasl or self.finished or not reader.has_line):
            return False
        line = reader.peek()
        if not line:
            return False
        # the verb as next_action cuts it: at SP only (a VT is no blank),
        # the CR of the CRLF that peek leaves on taken off
        verb = line[:5].partition(b" ")[0]
        return (verb[:-1] if verb.endswith(b"\r") else verb).upper() in _SIZE_VERBS

    def quit_waits(self) -> bool:
        """Whether a ``QUIT`` is among the complete lines buffered, to be
        handled (its verb cut as ``next_action`` cuts it; a line that will
        be refused all the same, a NUL or an argument in it say, is taken
        for one too: the lock is then kept a little longer, never let go
        too early).
        An adapter whose client can send no more (the end of its data)
        knows from a ``False`` that the session cannot reach the UPDATE
        state (RFC 1939 6): nothing will be deleted, and the lock on the
        maildrop is no longer needed.  A line without its line end is no
        command, as ``next_action`` never handles it."""
        return self._waits(b"QUIT")

    def rset_waits(self) -> bool:
        """Whether an ``RSET`` is among the complete lines buffered (as
        ``quit_waits`` looks): it takes back the session's changes, the
        seen flags an adapter keeps for the messages retrieved before it
        too, so those cannot be made before it is handled."""
        return self._waits(b"RSET")

    def _waits(self, verb: bytes) -> bool:
        if self.finished:
            return False
        return any(line is not None and line.partition(b" ")[0].upper() == verb
                   for line in self._reader.lines())

    # -- results of the adapter's I/O --------------------------------------

    def login_succeeded(
        self, messages: Sequence[Any], size_of: Callable[[int], int] | None = None,
    ) -> Send:
        """The portal gave a mailbox whose snapshot is ``messages``.

        ``size_of(index)``, when given, is the size RETR sends for a
        message where it is not the stored ``size`` (RFC 6857 downgrading
        for a client without UTF8): LIST, STAT and RSET report it, as RFC
        1939 wants the exact octets.  It may read the message, so the
        reply to the login itself counts the stored sizes: RFC 1939 asks
        nothing of its text, and a login then reads no message."""
        self._expect("login")
        self._unusable_name = False
        self._transition(Event.AUTHENTICATED)
        self._uids, self._sizes = columns(messages)
        # a Snapshot does not change under us (its columns are fixed)
        self._messages = messages if isinstance(messages, Snapshot) else list(messages)
        self._deleted = set()
        self._size_of = None
        count, octets = self._totals()
        self._size_of = size_of
        return self._send(R.logged_in(count, octets))

    def login_failed(self, why: LoginFailure) -> Send:
        """The login did not give a mailbox; grows the delay on bad credentials."""
        self._expect("login")
        self._user = None
        unusable, self._unusable_name = self._unusable_name, False
        if why is LoginFailure.IN_USE:
            return self._send(R.MAILBOX_IN_USE)
        if why is LoginFailure.TEMPORARY:
            return self._send(R.MAILBOX_TEMP_FAILURE)
        if why is LoginFailure.PERMANENT:
            return self._send(R.MAILBOX_PERM_FAILURE)
        if why is LoginFailure.THROTTLED:
            return self._send(R.LOGIN_THROTTLED)
        self.auth_failures += 1
        delay = self.auth_failure_delay * self.auth_failures
        if self.auth_failures >= self.max_auth_failures:
            self.finished = True
            return Send(R.TOO_MANY_AUTH_FAILURES.to_bytes(), close=True, delay=delay)
        # a name no user can have is told so (RFC 6856 2.2), as USER and
        # APOP tell it at once: no guess at a password learns anything
        reply = R.BAD_USER_NAME if unusable else R.AUTH_FAILED
        return Send(reply.to_bytes(), delay=delay)

    def update_finished(self, ok: bool, permanent: bool = False) -> Send:
        """The deletions of the UPDATE state are done (``ok``) or failed.

        RFC 1939 6: a failure is ``-ERR`` (some deleted messages were not
        removed) and the session still ends.  ``permanent``: the store
        refused for good (no permission), so the response code is
        [SYS/PERM] rather than [SYS/TEMP] (RFC 3206 4)."""
        self._expect("update")
        if not ok:
            reply = R.UPDATE_FAILED_PERM if permanent else R.UPDATE_FAILED
            return Send(reply.to_bytes(), close=True)
        left = len(self._uids) - len(self._deleted)
        return Send(R.bye_updated(left).to_bytes(), close=True)

    def forget(self) -> None:
        """The connection is gone: drop the snapshot, the deletion marks and
        ``size_of`` (the adapter's, which refers back to it), so that what
        the session holds per message goes with the connection at once,
        not at the cyclic garbage collector's next full pass.  No command
        is handled after it."""
        self.finished = True
        self._messages = self._uids = self._sizes = ()
        self._deleted = set()
        self._size_of = None

    # -- AUTHORIZATION -----------------------------------------------------

    def _user_cmd(self, arg: str) -> Action:
        # RFC 1939 7: PASS only "immediately after a successful USER": a
        # USER, APOP or AUTH that comes between, failed or not, ends the
        # earlier name's turn
        self._user = None
        name = arg.strip(" \t")
        if not name or " " in name or "\t" in name:
            return self._send(R.bad_syntax("USER name"))
        if not self.plaintext_allowed:
            return self._send(self._plaintext_refusal)
        prepared = prepare_username(name)
        if prepared is None:
            return self._send(R.BAD_USER_NAME)
        self._user = prepared
        return self._send(R.USER_ACCEPTED)

    @property
    def _plaintext_refusal(self) -> POP3Reply:
        # the advice names only what the connection offers: APOP where the
        # greeting has a timestamp, STLS where TLS is configured (it is not
        # active: plaintext is allowed under TLS)
        if self.tls_available and not self.tls_active:
            return R.PLAINTEXT_DISALLOWED if self.timestamp else R.PLAINTEXT_DISALLOWED_NO_APOP
        return R.PLAINTEXT_DISALLOWED_NO_TLS if self.timestamp else (
            R.PLAINTEXT_DISALLOWED_NO_TLS_NO_APOP)

    def _pass_cmd(self, arg: str) -> Action:
        # The password is the rest of the line: it may contain spaces.
        if self._user is None:
            return self._send(R.PASS_WITHOUT_USER)
        # (no plaintext check here: USER keeps no name where plaintext is
        # not allowed, and ``plaintext_allowed`` is fixed for the session)
        if not arg:
            return self._send(R.bad_syntax("PASS password"))
        return self._login("USER", self._user, arg.encode("utf-8", "surrogateescape"))

    def _apop_cmd(self, arg: str) -> Action:
        self._user = None  # see _user_cmd
        if not self.timestamp:
            # no challenge was given, so no digest can be checked: not a
            # failed login (nothing is counted), the command is not offered
            return self._send(R.APOP_UNAVAILABLE)
        parts = _words(arg)
        if len(parts) != 2:
            return self._send(R.bad_syntax("APOP name digest"))
        name, digest = parts
        digest = digest.lower()
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            return self._send(R.bad_syntax("APOP name digest (32 hex digits)"))
        prepared = prepare_username(name)  # RFC 6856 2.2: APOP's name too
        if prepared is None:
            # a digest came with it: a failed login, as AUTH PLAIN's
            # (``Authenticate.unusable_name``)
            self._waiting = "login"
            self._unusable_name = True
            return Authenticate("APOP", name, digest.encode("ascii"), self.timestamp,
                                unusable_name=True)
        return self._login("APOP", prepared, digest.encode("ascii"))

    def _auth_cmd(self, arg: str) -> Action:
        self._user = None  # see _user_cmd
        parts = _words(arg)
        if not parts:
            mechanisms = ["PLAIN"] if self.plaintext_allowed else []
            return Send(multiline(R.AUTH_MECHANISMS, mechanisms))
        if len(parts) > 2:
            return self._send(R.bad_syntax("AUTH mechanism [initial-response]"))
        if not parts[0].isascii() or parts[0].upper() != "PLAIN":  # "PLA\u0131N" is not
            # "use PLAIN" only where PLAIN is offered (as AUTH lists it)
            return self._send(R.AUTH_UNKNOWN_MECHANISM if self.plaintext_allowed
                              else R.AUTH_NO_MECHANISM)
        if not self.plaintext_allowed:
            return self._send(self._plaintext_refusal)
        if len(parts) == 2:
            return self._sasl_response(parts[1].encode("ascii", "replace"), initial=True)
        self._sasl = True
        return Send(b"+ \r\n")

    def _sasl_response(self, line: bytes, *, initial: bool) -> Action:
        # RFC 5034 4: the response is a line of base64, "*" to cancel; it
        # is taken as it came, as SMTP's AUTH takes its continuation line
        # (RFC 4954 4: "reject (and not ignore)" any other character): a
        # blank around it or a bare CR before its CRLF is no base64, not
        # something to strip.  "=" stands for an empty response in the
        # AUTH command only (``initial``: its grammar's ``initial-response
        # = base64 / "="``); after the "+" an empty response is an empty
        # line, and a lone "=" there is no base64 (not credentials that
        # failed: no [AUTH] code).  "*" cancels only as the answer to a
        # "+": as the initial response it is no base64 either, an exchange
        # there was none to cancel
        if line == b"*" and not initial:
            return self._send(R.AUTH_CANCELLED)
        if line == b"=" and initial:
            line = b""
        try:
            decoded = binascii.a2b_base64(line, strict_mode=True)
        except (binascii.Error, ValueError):
            return self._send(R.AUTH_BAD_BASE64)
        fields = decoded.split(b"\0")
        if len(fields) != 3 or not fields[1] or not fields[2]:
            return self._send(R.AUTH_BAD_PLAIN)
        authzid, authcid, password = fields
        try:
            username = authcid.decode("utf-8")
            authz = authzid.decode("utf-8")
        except UnicodeDecodeError:
            return self._send(R.AUTH_BAD_PLAIN)
        prepared = prepare_username(username)  # RFC 4616 5: SASLprep'd
        if authz and (self.identity(prepare_username(authz) or authz)
                      != self.identity(prepared or username)):
            # Acting as another user is not supported: a failed login,
            # which the adapter fails without asking the portal
            # (``Authenticate.malformed``), after its look at the address's
            # failures.  (An authzid no user can have names nobody the
            # client is.)
            self._waiting = "login"
            return Authenticate("PLAIN", username, password, self.timestamp, malformed=True)
        if prepared is None:
            # A name no user can have: the login fails (RFC 4954 4, "MUST
            # fail the authentication"), counted, delayed and logged as any
            # failed login, as SMTP AUTH fails the same message; the answer
            # still says why (``login_failed``)
            self._waiting = "login"
            self._unusable_name = True
            return Authenticate("PLAIN", username, password, self.timestamp,
                                unusable_name=True)
        return self._login("PLAIN", prepared, password)

    def _overlong_auth(self, line: bytes) -> bool:
        """Whether ``line``, a command line over RFC 2449's 255 octets, is
        an ``AUTH PLAIN`` whose initial response made it so.  ``line`` may
        be only the head of a line too long to keep
        (``LineReader.dropped_head``), judged the same way: a word after
        the initial response in it is one of the line too, which is then
        a syntax error, not marked at any length (as at 300 octets); the
        initial response itself may go on past the head.

        RFC 5034 4 keeps the AUTH command within that limit: a client
        whose initial response would not fit "MUST NOT" send it, and sends
        it after the ``+`` challenge instead, where a line may be longer.
        So the line is refused as any long command line, and it is an AUTH
        exchange that ended on no SASL response: logged as SMTP's and
        POP3's other malformed responses are (docs/deployment.rst,
        fail2ban) wherever AUTH PLAIN would have taken it."""
        if self.state is not State.AUTHORIZATION or not self.plaintext_allowed:
            return False
        verb, _, arg = line.partition(b" ")
        if verb.upper() != b"AUTH":
            return False
        words = arg.replace(b"\t", b" ").split(b" ")
        words = [w for w in words if w]
        return len(words) == 2 and words[0].upper() == b"PLAIN"

    def identity(self, name: str) -> str:
        """A user name as the users file keys it: a bare name is at the
        primary domain, and case does not matter (RFC 4616: an authzid that
        names the authenticated identity itself is no request to act as
        someone else)."""
        name = name.strip()
        # ('"a@b"' is a bare local part: its '@' is inside the quotes)
        if ("@" not in name or one_quoted_string(name)) and self.primary_domain:
            name = f"{name}@{self.primary_domain}"
        return login_key(name)

    def _login(self, mechanism: str, username: str, secret: bytes) -> Action:
        self._waiting = "login"
        return Authenticate(mechanism, username, secret, self.timestamp)

    def _stls_cmd(self, arg: str) -> Action:
        if not _blank(arg):
            return self._send(R.bad_syntax("STLS"))
        if self.tls_active:
            return self._send(R.STLS_ALREADY_ACTIVE)
        if not self.tls_available:
            return self._send(R.STLS_UNAVAILABLE)
        self.finished = True
        self.discard_input()
        return StartTLS(R.STLS_BEGIN.to_bytes())

    def _capa_cmd(self, arg: str) -> Action:
        # RFC 2449 5: "Arguments: none", refused as NOOP's, STAT's and
        # RSET's are (RFC 1939 lists none for them either)
        if not _blank(arg):
            return self._send(R.bad_syntax("CAPA"))
        # RFC 2449 section 5: what the AUTHORIZATION state offers is announced
        # in both states (STLS itself is then refused as out of state).
        stls = self.tls_available and not self.tls_active
        caps = capabilities(stls=stls, plaintext=self.plaintext_allowed)
        return Send(multiline(R.CAPA_FOLLOWS, caps))

    def _utf8_cmd(self, arg: str) -> Action:
        # RFC 6856 2: no argument, AUTHORIZATION state only (VALID_IN);
        # from here on messages go out with their UTF-8 header fields
        if not _blank(arg):
            return self._send(R.bad_syntax("UTF8"))
        self.utf8 = True
        return self._send(R.UTF8_ENABLED)

    def _lang_cmd(self, arg: str) -> Action:
        # RFC 6856 3.1: no argument lists the languages, one per line as
        # "tag description"; a language range selects one, "*" the default
        args = _words(arg)
        if not args:
            lines = [f"{tag} {name}" for tag, name in LANGUAGES.items()]
            return Send(multiline(R.LANG_FOLLOWS, lines))
        if len(args) > 1 or not valid_range(args[0]):
            return self._send(R.bad_syntax("LANG [language-range]"))
        tag = select_language(args[0])
        if tag is None:
            return self._send(R.LANG_UNKNOWN)
        return self._send(R.language_selected(tag, LANGUAGES[tag]))

    def _quit_cmd(self, arg: str) -> Action:
        # RFC 1939 5 and 6: "Arguments: none", refused as for NOOP: the
        # session goes on, and nothing is deleted until a QUIT is taken
        if not _blank(arg):
            return self._send(R.bad_syntax("QUIT"))
        self.finished = True
        if self.state is State.AUTHORIZATION:
            return Send(R.BYE.to_bytes(), close=True)
        self._transition(Event.QUIT)
        self._waiting = "update"
        return Update(tuple(sorted(self._deleted)))

    # -- TRANSACTION -------------------------------------------------------

    def _noop_cmd(self, arg: str) -> Action:
        if not _blank(arg):
            return self._send(R.bad_syntax("NOOP"))
        return self._send(R.NOOP)

    def _stat_cmd(self, arg: str) -> Action:
        if not _blank(arg):
            return self._send(R.bad_syntax("STAT"))
        return self._send(R.stat(*self._totals()))

    def _list_cmd(self, arg: str) -> Action:
        args = _words(arg)
        if len(args) > 1:
            return self._send(R.bad_syntax("LIST [message]"))
        if args:
            index = self._message(args[0])
            if isinstance(index, POP3Reply):
                return self._send(index)
            return self._send(R.scan_line(index + 1, self._size(index)))
        size = self._size
        lines = [
            f"{i + 1} {size(i)}"
            for i in range(len(self._uids))
            if i not in self._deleted
        ]
        return Send(multiline(R.scan_listing(*self._totals()), lines))

    def _uidl_cmd(self, arg: str) -> Action:
        args = _words(arg)
        if len(args) > 1:
            return self._send(R.bad_syntax("UIDL [message]"))
        if args:
            index = self._message(args[0])
            if isinstance(index, POP3Reply):
                return self._send(index)
            return self._send(R.unique_id(index + 1, self._uids[index]))
        deleted = self._deleted
        lines = [
            f"{i + 1} {uid}"
            for i, uid in enumerate(self._uids)
            if i not in deleted
        ]
        return Send(multiline(R.UIDL_FOLLOWS, lines))

    def _retr_cmd(self, arg: str) -> Action:
        if arg.isdigit() and arg.isascii() and len(arg) <= 9:  # "RETR n", the usual case
            index = int(arg) - 1
            sizes = self._sizes
            if 0 <= index < len(sizes) and index not in self._deleted:
                size = sizes[index]
                return Transmit(index, size, R.retr_line(size), None, True, self.utf8)
        args = _words(arg)
        if len(args) != 1:
            return self._send(R.bad_syntax("RETR message"))
        index = self._message(args[0])
        if type(index) is not int:
            return self._send(index)
        size = self._sizes[index]
        return Transmit(index, size, R.retr_line(size), None, True, self.utf8)

    def _top_cmd(self, arg: str) -> Action:
        args = _words(arg)
        if len(args) != 2:
            return self._send(R.bad_syntax("TOP message lines"))
        index = self._message(args[0])
        if isinstance(index, POP3Reply):
            return self._send(index)
        count = _digits(args[1])
        if count is None:
            return self._send(R.INVALID_LINE_COUNT)
        size = self._sizes[index]
        return Transmit(index, size, R.TOP_FOLLOWS.to_bytes(), count, False, self.utf8)

    def _dele_cmd(self, arg: str) -> Action:
        args = _words(arg)
        if len(args) != 1:
            return self._send(R.bad_syntax("DELE message"))
        index = self._message(args[0])
        if isinstance(index, POP3Reply):
            return self._send(index)
        self._deleted.add(index)
        return self._send(R.deleted(index + 1))

    def _rset_cmd(self, arg: str) -> Action:
        if not _blank(arg):
            return self._send(R.bad_syntax("RSET"))
        self._deleted.clear()
        self.resets += 1
        return self._send(R.reset(*self._totals()))

    # -- helpers -----------------------------------------------------------

    def _message(self, text: str) -> int | POP3Reply:
        """A 0-based index for message number ``text``, or the error reply."""
        number = _digits(text)
        if number is None:
            return R.INVALID_NUMBER
        if not 1 <= number <= len(self._uids):
            return R.NO_SUCH_MESSAGE
        if number - 1 in self._deleted:
            return R.MESSAGE_DELETED
        return number - 1

    def _size(self, index: int) -> int:
        """What RETR sends for message ``index`` (see ``login_succeeded``)."""
        if self._size_of is None:
            return self._sizes[index]
        return self._size_of(index)

    def _totals(self) -> tuple[int, int]:
        deleted = self._deleted
        size_of = self._size_of
        if size_of is None:
            sizes = self._sizes
            return (len(sizes) - len(deleted),
                    sum(sizes) - sum(sizes[i] for i in deleted))
        count = octets = 0
        for i in range(len(self._sizes)):
            if i not in deleted:
                count += 1
                octets += size_of(i)
        return count, octets

    def _transition(self, event: Event) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LocalError(f"no transition from {self.state.value} on {event.value}")
        self.state = new
        self._dispatch = _HANDLERS_IN[new]

    def _expect(self, what: str) -> None:
        if self._waiting != what:
            raise LocalError(f"{what} result while waiting for {self._waiting!r}")
        self._waiting = None

    @staticmethod
    def _send(reply: POP3Reply) -> Send:
        return Send(reply.to_bytes())

    @property
    def sizes(self) -> Sequence[int]:
        """The stored (CRLF) size of each message of the snapshot."""
        return self._sizes

    def stored_size(self, index: int) -> int | None:
        """The octets message ``index``'s file held when the snapshot was
        taken (``MessageInfo.stored_size``), or ``None`` where the
        snapshot's messages do not say."""
        messages = self._messages
        if index >= len(messages):
            return None
        if isinstance(messages, Snapshot):
            return messages.stored_sizes[index]
        return getattr(messages[index], "stored_size", None)

    @property
    def deleted(self) -> frozenset[int]:
        return frozenset(self._deleted)


# The handlers of each state (VALID_IN turned around), so a command costs
# one lookup (a miss: unknown, or valid in another state).  Functions of
# the class, called with the engine: a table of bound methods on each
# engine made every session a reference cycle, its mailbox snapshot freed
# only by the cyclic garbage collector.
_HANDLERS: dict[str, Callable[[POP3Server, str], Action]] = {
    verb: getattr(POP3Server, f"_{verb.lower()}_cmd") for verb in VALID_IN
}
_HANDLERS_IN: dict[State, dict[str, Callable[[POP3Server, str], Action]]] = {
    state: {v: h for v, h in _HANDLERS.items() if state in VALID_IN[v]} for state in State
}
