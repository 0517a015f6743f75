"""AUTH in the SMTP engine (RFC 4954; SASL PLAIN, RFC 4616, and LOGIN).

Owns when AUTH is offered and allowed (only over TLS or from loopback,
once per session), the SASL exchange (``_sasl`` parses it) and the
``AuthRequest`` the adapter answers after asking twisted.cred.  A part of
``SMTPServer`` (``server``), which it relies on for the session state,
replies and events.
"""

from __future__ import annotations

from txmailhub.address import Address
from txmailhub.errors import Rejected, RemoteProtocolError
from txmailhub.smtp import replies
from txmailhub.smtp._parse import MailParams, ascii_upper, first_word, parse_mailbox
from txmailhub.smtp._part import EnginePart
from txmailhub.smtp._sasl import MECHANISMS, Credentials, SASLExchange
from txmailhub.smtp._states import State
from txmailhub.smtp.events import AuthMalformed, AuthRequest
from txmailhub.smtp.reply import Reply

__all__ = ["AuthPhase"]


class AuthPhase(EnginePart):
    """AUTH for ``SMTPServer`` (a mixin: it uses the engine's ``session``,
    ``config``, ``reply``, ``_to``, ``_answer``, ``_request``, ``_close``)."""

    _sasl: SASLExchange | None
    _out: list[bytes]
    auth_failures: int

    def auth_succeeded(self, address: Address) -> None:
        self._answer(AuthRequest)
        self.session.authenticated_as = address
        self.reply(replies.AUTH_SUCCEEDED)
        self._to(State.READY)

    def auth_failed(self, reply: Reply = replies.AUTH_FAILED) -> None:
        self._answer(AuthRequest)
        self.auth_failures += 1
        if self.auth_failures >= self.config.max_auth_failures:
            self._out.append(reply.to_bytes())
            bye = replies.closing(replies.AUTH_TOO_MANY_FAILURES, self.config.hostname)
            self.reply(bye)
            self._close(bye)
            return
        self._to(State.READY)  # first: the reply may be the error that closes the session
        self.reply(reply)

    def _submitter(self, params: MailParams) -> Address | None:
        """Who the hub vouches for as the submitter of the transaction's
        message (RFC 4954 5), passed on as ``AUTH=<mailbox>`` when relayed;
        ``None`` is ``AUTH=<>``, origin unknown.

        Only the login of a client the hub authenticated itself: its users
        are trusted to speak for themselves and for nobody else.  So an
        unauthenticated client's ``AUTH=`` is ignored ("MUST behave as if
        the AUTH=<> parameter was supplied"); an authenticated client's
        ``AUTH=<>`` is kept ("MUST NOT treat the message as having been
        originally submitted by the client"), and so is the doubt when it
        names another mailbox; its own mailbox (any spelling) is its login,
        and without ``AUTH=`` the hub takes the message for the client's
        own submission and names the login (the RFC's "MAY generate")."""
        who: Address | None = self.session.authenticated_as
        given = params.auth
        if who is None or given == "<>":
            return None
        if given is None:
            return who
        try:
            claimed = parse_mailbox(given, self.config.primary_domain, params.smtputf8)
        except RemoteProtocolError:  # checked when MAIL was parsed; never trusted
            return None
        return who if claimed.key == who.key else None

    def _auth_offered(self) -> bool:
        s = self.session
        return (self.config.auth_available and s.authenticated_as is None
                and (s.tls or s.loopback))

    def _auth(self, arg: str) -> None:
        s = self.session
        if s.authenticated_as is not None:
            raise RemoteProtocolError(replies.AUTH_ALREADY)
        if not self.config.auth_available:
            raise RemoteProtocolError(replies.AUTH_NOT_AVAILABLE)
        mech, initial = first_word(arg)  # a tab is a blank here too (parse_command)
        mech = ascii_upper(mech)
        if not mech:  # "AUTH" alone: a syntax error, not an unknown mechanism
            raise RemoteProtocolError(replies.SYNTAX_ARGUMENT)
        if mech not in MECHANISMS:
            raise RemoteProtocolError(replies.AUTH_MECHANISM_UNKNOWN)
        if not (s.tls or s.loopback):
            # RFC 4954 6: 538 is about "the requested mechanism", so it
            # answers only a mechanism we have (an unknown one is 504)
            raise Rejected(replies.AUTH_TLS_REQUIRED)
        self._to(State.AUTH)
        self._sasl = SASLExchange(mech, self.config.primary_domain)
        # the blanks after the mechanism are SP and HTAB (parse_command took
        # those at the end off): a VT or a Unicode blank before the base64
        # is no blank str.strip() may drop, and refused as the
        # continuation line's would be (RFC 4954 4)
        self._sasl_step(self._sasl.start(initial.strip(" \t")))

    def _overlong_auth(self, head: bytes) -> str | None:
        """The mechanism of an AUTH command line, begun by ``head``, that
        its initial response made longer than a command line may be;
        ``None`` for any other line.

        RFC 4954 4 keeps AUTH within the command line limit: a client whose
        initial response would not fit "MUST NOT" send it, and sends it
        after the ``334`` instead, where a line may be longer.  The line is
        refused as any long one; where AUTH with that mechanism would have
        been taken, it is an exchange that ended on no SASL response, logged
        as the others are (``AuthMalformed``), as POP3 logs its own."""
        if self.state is not State.READY or not self._auth_offered():
            return None
        if head[:4].upper() != b"AUTH" or head[4:5] not in (b" ", b"\t"):
            return None
        words = head[5:].replace(b"\t", b" ").split(b" ")
        words = [w for w in words if w]
        mechanism = words[0].upper().decode("ascii", "replace") if words else ""
        return mechanism if mechanism in MECHANISMS and len(words) > 1 else None

    def _sasl_step(self, result: Reply | Credentials) -> None:
        if isinstance(result, Reply):
            if result.code == 334:
                self.reply(result)
                return
            if result is not replies.AUTH_CANCELLED:  # the client's choice, no garbage
                assert self._sasl is not None
                self._events.append(AuthMalformed(self._sasl.mechanism))
            self._sasl = None
            self._to(State.READY if self.session.helo else State.INIT)
            self.reply(result)
            return
        assert self._sasl is not None
        mech, self._sasl = self._sasl.mechanism, None
        # A malformed response fails like a bad password (same delay, same count).
        self._request(AuthRequest(mech, result.username, result.password, result.malformed))
