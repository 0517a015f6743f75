"""The SMTP client protocol engine (sans-IO), used by the relay.

Owns the client side of one SMTP session for one message: the
greeting, EHLO (HELO fallback), STARTTLS, AUTH PLAIN/LOGIN, MAIL/RCPT/DATA
(pipelined per RFC 2920 when offered; more transactions, RSET first when
needed, for recipients left over from one: ``MAX_TRANSACTIONS``), the
SIZE, 8BITMIME, SMTPUTF8 and
DSN extensions, reply parsing into ``Reply`` values, the RFC 5321 4.5.3.2
timeout of each step, and QUIT.  Replies in -> actions out:

* ``Send(data)``: write these bytes;
* ``StartTLS()``: start the TLS handshake now, then call ``tls_started``;
* ``SendBody(convert_7bit)``: stream the message (through
  ``body_encoder()``: CRLF line ends, dot-stuffing, the final ".") --
  the 7-bit converted copy when ``convert_7bit`` -- then call
  ``body_sent`` (or ``body_failed`` when there is nothing to send);
* ``Close()``: the session is over; close the connection;
* ``TransactionDone(recipients, ...)``: a transaction's final "." got
  its reply and another transaction follows on this connection: its
  recipients' results, which stand whatever the later ones do.  The
  actions after it are the next transaction's: the adapter may hold them
  until it has recorded these (a crash during the next transaction must
  not leave them to be sent again).

``outcome`` (a ``SessionOutcome``) is set as soon as the fate of the
transaction is known.  This module imports nothing from twisted.internet,
opens no sockets and reads no files: the adapter
(``txmailhub.relay.attempt``) does that.  Credentials are never logged
or put into an outcome.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from txmailhub.address import Address, ascii_form
from txmailhub.envelope import DSNRequest, RecipientDSN
from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp._client_reply import ReplyParser
from txmailhub.smtp._data import DotStuffer
from txmailhub.smtp._parse import MAX_ENVID, decode_envid, decode_orcpt, parse_mailbox
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.smtp.xtext import utf8_addr_encode, utf8_addr_unitext, xtext_encode

__all__ = [
    "QUIT_TIMEOUT",
    "TIMEOUTS",
    "held_for_session",
    "refuses_dsn_parameters",
    "refuses_parameters",
    "too_many_recipients",
    "MAX_TRANSACTIONS",
    "Close",
    "ClientSession",
    "Phase",
    "RecipientOutcome",
    "ReplyParser",
    "Send",
    "SendBody",
    "SessionOutcome",
    "StartTLS",
    "TransactionDone",
    "xtext_encode",
]


def _as_received(raw: str | None, decoded: str, decode: Callable[[str], str]) -> str | None:
    """``raw``, an esmtp-value as the hub's server received it, when it
    still stands for ``decoded``; ``None`` otherwise.

    It goes on the wire as it is, so it is read again as the server reads
    it: a value that is no longer valid (a record edited by hand, an
    embedding application's mistake) or that no longer matches the decoded
    one the notices show is not sent -- the decoded value is encoded
    afresh instead -- and can never carry a line break into the command."""
    if raw is None:
        return None
    try:
        return raw if decode(raw) == decoded else None
    except RemoteProtocolError:
        return None


class Phase(enum.Enum):
    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    TLS = "TLS handshake"
    AUTH = "AUTH"
    AUTH_USER = "AUTH username"
    AUTH_PASS = "AUTH password"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BODY = "message data"
    DATA_END = "end of data"
    RSET = "RSET"
    QUIT = "QUIT"
    DONE = "done"


# The reply codes each step may get besides 4yz/5yz (RFC 5321 4.2.1, 4.3.2;
# RFC 4954 for AUTH): 2yz, except DATA (354 only), AUTH (334 or 235) and
# LOGIN's user name and password steps (334 only: RFC 4954 4's 235 ends
# the exchange, which has not reached the password yet).
_THREE_YZ_OK = {Phase.DATA: (354,), Phase.AUTH: (334,), Phase.AUTH_USER: (334,),
                Phase.AUTH_PASS: (334,)}
_NO_TWO_YZ = (Phase.DATA, Phase.AUTH_USER, Phase.AUTH_PASS)


# The 5yz replies to EHLO that say it is not known or not acceptable:
# RFC 5321 3.2 asks for HELO after "command not recognized" (500, 502),
# 4.1.4 adds 501 and 550, and 4.3.2 has 504.
_EHLO_NOT_KNOWN = (500, 501, 502, 504, 550)
# RFC 1869 4.5, which defined EHLO, has the client send HELO or QUIT after
# any error: after any other 5yz but RFC 7504's 521 ("does not accept
# mail") and 556 (the domain accepts none) the session goes on with HELO
# too, where HELO can carry the mail (``_on_ehlo``).  A server that refuses
# EHLO with a 554 and takes HELO gets the mail so; a refusal at EHLO alone
# keeps it queued (no verdict on the message) until it bounces.  Postfix
# and Exim send HELO then as well.  HELO's own refusal ends the session.
_NO_MAIL_AT_ALL = (521, 556)


def _fits(phase: Phase, code: int) -> bool:
    if phase is Phase.QUIT:
        return True  # ignored whatever it is
    kind = code // 100
    if kind in (4, 5):
        return True
    if kind == 3:
        return code in _THREE_YZ_OK.get(phase, ())
    return kind == 2 and phase not in _NO_TWO_YZ


# RFC 4954 5: AUTH= makes MAIL's line up to 500 characters longer
MAX_AUTH_PARAM = 500

# Replies to a MAIL carrying AUTH= that refuse its parameters, not its
# sender: 555 "parameters not recognized or not implemented" (RFC 5321
# 4.1.1.11), 501 "syntax error in parameters", 504 "command parameter not
# implemented", 500, which includes "line too long" (4.2.2) -- what a
# server that took RFC 4954's 500 more characters for granted may say --
# and 455 "unable to accommodate parameters", 555's temporary twin: left
# as it is, it would refuse AUTH= at every attempt until the message
# bounced.  AUTH= is advisory: the MAIL goes again without it (``_on_mail``).
AUTH_PARAM_REFUSALS = frozenset({455, 500, 501, 504, 555})
# The same, told by the RFC 3463 enhanced status whatever the basic code
# (a "553 5.5.4"): X.5.4 "invalid command arguments" ("unrecognized
# features") and X.5.2 "syntax error" -- the subject X.5 is the protocol,
# not the sender.  Policy (X.7.x) and address (X.1.x) refusals stand,
# whatever the basic code ("501 5.1.7" refuses the sender's address).
AUTH_PARAM_STATUSES = frozenset({"5.2", "5.4"})


def refuses_parameters(reply: Reply) -> bool:
    """Whether ``reply``, to a MAIL carrying ``AUTH=``, plausibly refuses
    its parameters rather than its sender (a 421 is the server closing)."""
    if reply.code == 421 or reply.is_positive:
        return False
    status = reply.status
    detail = None if status is None else status.partition(".")[2]
    if detail is not None and detail[:2] in ("1.", "7."):
        # the enhanced code says more than the basic one: an address (X.1.x)
        # or policy (X.7.x) refusal of the sender stands, even as a "501"
        return False
    if reply.code in AUTH_PARAM_REFUSALS:
        return True
    return detail in AUTH_PARAM_STATUSES


def refuses_dsn_parameters(reply: Reply) -> bool:
    """Whether ``reply``, to a MAIL carrying ``ENVID=`` or ``RET=`` (RFC
    3461), refuses their syntax rather than the sender: a ``501`` or
    ``555`` with ``5.5.4`` ("invalid command arguments", RFC 3463) or no
    enhanced code.  Postfix says "501 5.5.4 Bad ENVID parameter syntax"
    to an id with a TAB, which RFC 3461 4.4 allows ("graphic and white
    space").  Narrower than ``refuses_parameters``: a MAIL without the
    DSN parameters is a different request (no notices passed on), so it
    goes again only on a refusal that can be about them, never on a
    ``5.5.2`` or a policy or address refusal ("501 5.1.7")."""
    return reply.code in DSN_PARAM_REFUSALS and reply.status in (None, "5.5.4")


def too_many_recipients(reply: Reply) -> bool:
    """Whether ``reply`` to a RCPT says the transaction holds as many
    recipients as the server takes (``452 4.5.3``, as ``_on_rcpt`` reads a
    bare 452 and an old 552 too): RFC 5321 4.5.3.1.10 has the client send
    the others in a later transaction."""
    return reply.code == 452 and reply.status == "4.5.3"


# Transactions one session holds at most: the first, and those for the
# recipients a server took too many of (``too_many_recipients``) or
# refused for their DSN parameters in a pipelined batch.  20 carry a
# thousand recipients to a server that takes 50 a message; those left after
# the last are the relay's to send on a new connection (docs/relay.rst)
MAX_TRANSACTIONS = 20


# the basic codes of ``refuses_dsn_parameters``: 501 "syntax error in
# parameters or arguments", 555 "MAIL FROM/RCPT TO parameters not
# recognized or not implemented" (RFC 5321 4.2.3)
DSN_PARAM_REFUSALS = frozenset({501, 555})


def held_for_session(reply: Reply) -> Reply:
    """``reply`` (to MAIL, RCPT, DATA or the data) as this transaction's outcome: a
    ``530`` becomes a temporary ``454 4.7.0`` naming the server's words;
    any other reply is returned as it is.

    530 says the *session* lacks something the server wants first -- TLS
    ("Must issue a STARTTLS command first", RFC 3207 4) or a login
    ("Authentication required", RFC 4954 6) -- and says nothing of the
    sender or the recipient.  It comes, say, from a server that insists on
    TLS after an opportunistic handshake failed and the hub went on in
    clear (RFC 3207 4.1), or from a smarthost whose credentials are not
    configured: the mail must wait for the next try or the next host, not
    bounce, as a refused login does (``_on_auth``).

    The 454 is this hub's judgement, not the server's reply: a
    ``LocalReply``, which notices and ``queue show`` give as the hub's
    account (RFC 3464 2.3.6: an ``smtp`` Diagnostic-Code is what the
    remote MTA said), the server's words and code quoted in it."""
    if reply.code != 530:
        return reply
    return _kept_queued(reply)


def _kept_queued(reply: Reply) -> LocalReply:
    """The hub's temporary ``454 4.7.0`` in place of the server's 5xx
    ``reply``, whose code and words it quotes (see ``held_for_session``)."""
    return _restated(reply, 454, "4.7.0")


def _restated(reply: Reply, code: int, status: str) -> LocalReply:
    """``code`` and ``status``, the hub's reading of the server's ``reply``,
    whose words and code it quotes: the hub's account, never passed off
    as the server's (RFC 3464 2.3.6)."""
    said = f"{reply.code} {reply.status}" if reply.status else str(reply.code)
    return LocalReply(code, status,
                      (*reply.lines[:-1], reply.lines[-1] + f" (the server said {said})"))


# Seconds to wait for the reply to QUIT.  It is sent only when the
# server is known to be reading commands, once the session's outcome is
# known: its reply changes nothing, and waiting for it holds a delivery
# slot, so the wait is short (a server that does not answer is cut).
QUIT_TIMEOUT = 10

# RFC 5321 4.5.3.2 (seconds); the commands it does not name get 5 minutes,
# but QUIT (above).  DONE times a close that waits for the server (TLS).
TIMEOUTS: dict[Phase, float] = {
    Phase.GREETING: 300, Phase.EHLO: 300, Phase.HELO: 300, Phase.STARTTLS: 300,
    Phase.TLS: 300, Phase.AUTH: 300, Phase.AUTH_USER: 300, Phase.AUTH_PASS: 300,
    Phase.MAIL: 300, Phase.RCPT: 300, Phase.DATA: 120, Phase.BODY: 180,
    Phase.DATA_END: 600, Phase.RSET: 300, Phase.QUIT: QUIT_TIMEOUT, Phase.DONE: 60,
}


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class SendBody:
    convert_7bit: bool


@dataclass(frozen=True)
class Close:
    """End the connection; ``abort``: at once, without a polite close (no
    TLS close_notify exchange), when the transaction must not complete."""

    abort: bool = False


@dataclass(frozen=True)
class RecipientOutcome:
    address: Address
    reply: Reply

    @property
    def kind(self) -> str:
        """``"delivered"``, ``"transient"`` or ``"permanent"``."""
        if self.reply.is_positive:
            return "delivered"
        return "transient" if self.reply.is_transient else "permanent"


@dataclass(frozen=True)
class TransactionDone:
    """A transaction ended with the server's reply to its final ".", and
    another follows on this connection (``_transaction_over``): the
    results of the recipients it settled (``recipients``; those that go
    on in the next transaction are not among them), final whatever the
    session does after, with the DSN facts of that transaction as
    ``SessionOutcome`` has them.  Never for the session's last
    transaction: its results are the outcome's."""

    recipients: tuple[RecipientOutcome, ...]
    dsn_supported: bool = False
    dsn_dropped: frozenset[Address] = frozenset()


Action = Send | StartTLS | SendBody | Close | TransactionDone


@dataclass(frozen=True)
class SessionOutcome:
    """How the transaction ended.

    ``recipients`` holds a result for every recipient once the server
    answered for them.  Otherwise ``session_error`` is set: the session
    failed as a whole (connection, greeting, EHLO, TLS, AUTH, a 4xx to
    MAIL), which the caller may retry with the next MX host.  Then
    ``refused`` holds the refusals the server gave to RCPT before that:
    its answer for those recipients, which stands even when the session
    failed after the data (no reply to the final ".") -- but not after a
    protocol error, which leaves no reply before it trusted.
    """

    recipients: tuple[RecipientOutcome, ...] = ()
    session_error: Reply | None = None
    refused: tuple[RecipientOutcome, ...] = ()
    tls: bool = False
    tls_offered: bool = False
    #: the server's reply to EHLO was read and said what it offers: its
    #: extensions, or an "EHLO not known" refusal that made the session
    #: fall back to HELO (no extensions, so no STARTTLS) -- or another 5yz
    #: to EHLO, once HELO was taken and the session went on in clear.  A
    #: session ended before that (a 421 or other greeting, a connection
    #: lost or timed out, the hub's stop) or by a 4yz or other refusal to
    #: EHLO (and HELO) learnt nothing of the host's TLS: the relay judges
    #: no "TLS downgrade" from it
    hello_read: bool = False
    #: the server offered STARTTLS and refused it (RFC 3207 4: a 454 when
    #: it cannot start TLS for now), and under the ``"opportunistic"``
    #: policy the session went on in clear: its reply, for the log
    tls_refused: Reply | None = None
    #: the server offered DSN and the transaction carried its parameters:
    #: the next hop took over RFC 3461 notices.  False when it refused them
    #: and the MAIL went again without (``ClientSession.dsn_params_refused``)
    dsn_supported: bool = False
    #: recipients whose RCPT the server refused for NOTIFY or ORCPT and took
    #: without them: no notice duty for them passed on, whatever
    #: ``dsn_supported`` says (``ClientSession.rcpt_dsn_refused``)
    dsn_dropped: frozenset[Address] = frozenset()
    #: transactions the session held (``MAX_TRANSACTIONS``)
    transactions: int = 1
    #: the recipients a later transaction (not the first) took whose final
    #: "." then went unanswered: the outcome is no session error (earlier
    #: transactions' results stand), yet these may have the message, which
    #: the relay logs as for a first transaction's unanswered "."
    unanswered_end: tuple[Address, ...] = ()
    extensions: dict[str, str] = field(default_factory=dict)
    phase: str = ""  # the step the session was in when its fate was sealed
    #: MAIL was taken and every RCPT refused: no message went (the relay
    #: then tries the next MX host for recipients refused only for now)
    no_recipient_taken: bool = False
    #: recipients were taken and DATA refused only for now (a 4yz, or a
    #: 530 as its 454): no message text went (RFC 5321 4.1.1.4), so the
    #: relay tries the next MX host for them, as after a 4xx to MAIL
    data_refused_for_now: bool = False
    #: recipients refused only for now (their result a 4yz) by a transaction
    #: that carried no message text -- every RCPT refused, or DATA refused
    #: for now -- also in a session where another transaction did (the flags
    #: above are then false): that host holds no copy for them, so the relay
    #: tries the next MX host for them at once, as for a session that took
    #: no message
    untaken_for_now: frozenset[Address] = frozenset()


def _size_refusal(reply: Reply) -> bool:
    """Whether a ``552`` to RCPT refuses the message's size for that
    recipient, by its enhanced code: X.3.4 (too big for the system) or
    X.2.3 (over the mailbox's length limit), which RFC 3463 has as
    permanent only.  RFC 1870 6.4 then says the client "may not requeue
    the message for later delivery to the same recipient"; RFC 5321
    4.5.3.1.10's temporary reading of a 552 is for the old "too many
    recipients" alone, and stays for a 552 without such a code."""
    return reply.status is not None and reply.status[1:] in (".3.4", ".2.3")



_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
"""RFC 5321 4.1.1.1's ehlo-keyword: ASCII letters, digits and hyphens."""


def _blank_split(text: str) -> list[str]:
    """``text``'s words, at SP (RFC 5321 4.1.1.1: an EHLO line's keyword
    and parameters are "separated by SP"), and HTAB leniently, as the
    server side reads a command line.  Not at every blank ``str.split()``
    knows: a VT, FF, FS..US, NEL or a Unicode space is part of its word."""
    return [w for w in text.replace("\t", " ").split(" ") if w]


def _extensions(lines: Sequence[str]) -> dict[str, str]:
    """The keywords of an EHLO reply (its lines after the first), each
    with its parameters as one string.  A line whose first word is no
    ehlo-keyword is no extension: "DSN<VT>" or "<NBSP>8BITMIME" (taken for
    DSN and 8BITMIME, they made MAIL carry parameters a server without
    them refuses with 555, and the message bounced), or "\u017fTARTTLS"
    (long s: ``str.upper()`` made it STARTTLS).  ``AUTH=LOGIN PLAIN``,
    an old form some servers still send, is AUTH.

    A server that names AUTH on two lines -- both forms, often with
    different lists (``AUTH=LOGIN`` and ``AUTH GSSAPI NTLM``) -- offers
    the mechanisms of both: the later line replaced the earlier one, and
    a smarthost that offered LOGIN on the first got no credentials, the
    hub saying it offered only what the second named."""
    extensions: dict[str, str] = {}
    for line in lines:
        words = _blank_split(line)
        if not words:
            continue
        word, params = words[0], " ".join(words[1:])
        if word[:5].upper() == "AUTH=":
            word, params = "AUTH", f"{word[5:]} {params}".strip()
        if not _KEYWORD.match(word):
            continue
        word = word.upper()
        if word == "AUTH" and word in extensions:
            known = _blank_split(extensions[word])
            seen = {m.upper() for m in known}
            params = " ".join(known + [m for m in _blank_split(params) if m.upper() not in seen])
        extensions[word] = params
    return extensions


# characters of a server's AUTH line quoted in the hub's account of it
_OFFERED_MAX = 200


# The steps of an AUTH exchange, whose replies keep their code and
# enhanced status only (``_without_text``)
_AUTH_PHASES = frozenset({Phase.AUTH, Phase.AUTH_USER, Phase.AUTH_PASS})

#: the text that stands for a reply to AUTH
AUTH_TEXT_LEFT_OUT = "(text not kept: a reply to AUTH may repeat the credentials sent)"


def _without_text(reply: Reply) -> Reply:
    """A reply to a step of AUTH with its code and enhanced status only.

    Its text goes into the log, the queue record (``mailhub queue``) and
    in the end a notice to the sender; but a server may quote what it was
    sent -- ``535 5.7.8 bad credentials AHVzZXIAc2VjcmV0`` is the login,
    base64-encoded -- and nothing tells such an echo from any other
    words, so no text of such a reply is kept at all: the code and the
    status say what happened (RFC 4954 6: ``535 5.7.8`` the credentials,
    ``534 5.7.9`` the mechanism, ``454 4.7.0`` a temporary failure)."""
    return Reply(reply.code, reply.status, (AUTH_TEXT_LEFT_OUT,))


def _synthetic(code: int, status: str, text: str) -> Reply:
    return LocalReply(code, status, (text,))


class ClientSession:
    """One SMTP client session carrying one message to some recipients.

    ``tls``: ``"require"`` (STARTTLS must succeed), ``"opportunistic"``
    (use it when offered) or ``"none"``; ``tls_active`` is true for an
    implicit-TLS connection (port 465).  ``credentials`` is a ``(user,
    password)`` pair for AUTH, or ``None``.  ``size`` is the message size
    in octets as sent (CRLF lines).  ``submitter`` is the mailbox the hub
    vouches for as the message's submitter (RFC 4954 5), ``None`` when
    nobody is: it goes as ``AUTH=`` on MAIL to a server that offers AUTH,
    unless ``auth_param`` is false: the caller knows this next hop refuses
    the parameter, and a refused MAIL would cost a round trip.
    ``tls_required_by`` names what made TLS required (a setting), for the
    refusal when the server does not offer it: the admin reading ``queue
    list`` learns which knob it is."""

    def __init__(
        self,
        *,
        helo: str,
        sender: Address | None,
        recipients: Sequence[tuple[Address, RecipientDSN | None]],
        size: int,
        eight_bit: bool = False,
        smtputf8: bool = False,
        dsn: DSNRequest | None = None,
        tls: str = "opportunistic",
        tls_active: bool = False,
        credentials: tuple[str, str] | None = None,
        submitter: Address | None = None,
        auth_param: bool = True,
        tls_required_by: str = "",
    ) -> None:
        if tls not in ("require", "opportunistic", "none"):
            raise ValueError(f"unknown TLS policy {tls!r}")
        self.helo = helo
        self.sender = sender
        self.recipients = list(recipients)
        self.size = size
        self.eight_bit = eight_bit
        addresses = [sender] if sender else []
        addresses += [a for a, _ in self.recipients]
        # SMTPUTF8 is *needed* only when an address has no ASCII form (a
        # non-ASCII local part): then a next hop without it gets nothing.
        # An internationalized domain alone goes as its A-label (RFC 6531
        # 3.2: such an address "is not considered internationalized").  The
        # client's flag alone (UTF-8 header text, or a client that always
        # sends it) asks for it where offered, and otherwise the message goes
        # as 8BITMIME or converted to 7 bits like any 8-bit message (RFC 6531
        # 3.4; no all-ASCII bounce).
        self.smtputf8 = any(ascii_form(a) is None for a in addresses)
        self.smtputf8_wanted = smtputf8 or self.smtputf8
        self._client_smtputf8 = smtputf8
        # the recipients the RCPT commands name: all of them, but for those a
        # next hop without SMTPUTF8 cannot be given (``_after_hello``)
        self._sending = list(self.recipients)
        self.dsn = dsn or DSNRequest()
        # the ENVID value MAIL carries to a server with DSN, and whether the
        # message's id is one that cannot go (``_envid_param``): then no DSN
        # parameter goes at all, as to a server without DSN
        self._envid, self.envid_withheld = self._envid_param()
        self.tls_policy = tls
        self.tls_active = tls_active
        self.credentials = credentials
        self.submitter = submitter
        self.auth_param = auth_param
        self.tls_required_by = tls_required_by
        self.phase = Phase.GREETING
        self.extensions: dict[str, str] = {}
        self.tls_offered = False
        self.hello_read = False  # SessionOutcome.hello_read
        self.tls_refused: Reply | None = None  # SessionOutcome.tls_refused
        self.outcome: SessionOutcome | None = None
        self._parser = ReplyParser()
        self._expect: deque[Phase] = deque([Phase.GREETING])
        self._tried_tls = False
        # the server's 5yz to EHLO that was no "EHLO not known" (a 554),
        # after which the session went on with HELO: what it offers is
        # unknown, not absent (``body_failed``)
        self._ehlo_refused: Reply | None = None
        # the server's refusal of our STARTTLS, whether or not the session
        # goes on in clear after it (``tls_refused``: only when it does)
        self._starttls_refusal: Reply | None = None
        self._pipelined = False
        self._rcpt_index = 0
        self._accepted: list[Address] = []
        self._results: dict[Address, Reply] = {}
        self._mail_reply: Reply | None = None
        # a RCPT answered 530 (as held_for_session restates it): with no
        # recipient accepted, the session's failure (_no_recipient_taken)
        self._rcpt_held: Reply | None = None
        # every RCPT refused (SessionOutcome.no_recipient_taken)
        self._none_taken = False
        # DATA refused for now after some RCPT taken
        # (SessionOutcome.data_refused_for_now)
        self._data_refused_for_now = False
        # message text went in a transaction of this session (a 354 to DATA
        # with recipients taken): ``_finish`` then says no refusal before
        # any message (``no_recipient_taken``, ``data_refused_for_now``)
        self._data_went = False
        # message text went in the transaction under way; DATA was refused
        # for now in it; and the recipients of transactions that took none
        # at RCPT or had DATA refused for now (``untaken_for_now``)
        self._tx_text_went = False
        self._tx_data_for_now = False
        self._no_message: set[Address] = set()
        # AUTH= on MAIL (RFC 4954 5): whether the MAIL in flight carries it,
        # and the reply that refused it (then the MAIL went again without
        # it, once per session; the adapter logs it), and whether that MAIL
        # without it was accepted: then AUTH= alone was the trouble, and the
        # adapter remembers the host
        self._auth_param_sent = False
        self.auth_param_refused: Reply | None = None
        self.accepted_without_auth_param = False
        # ENVID= or RET= on MAIL (RFC 3461): whether the MAIL in flight
        # carries one, and the reply that refused them (``_on_mail``).  Once
        # set, the session carries no DSN parameter at all (ENVID, RET,
        # NOTIFY, ORCPT), as to a server without DSN, and the outcome says
        # no notice duty passed on (``SessionOutcome.dsn_supported``); the
        # adapter logs it
        self._dsn_params_sent = False
        self.dsn_params_refused: Reply | None = None
        # the refused MAIL that goes again once the replies to the RCPTs and
        # DATA pipelined with it are in (``_on_data``); a session that ends
        # first clears the refusal it names (``_finish``): no MAIL went again
        self._mail_again: Reply | None = None
        # NOTIFY= and ORCPT= on RCPT (RFC 3461): whether the RCPT last sent
        # for a recipient carried one; the recipients a server refused them
        # for (501/555, ``refuses_dsn_parameters``), whose RCPT goes again
        # without them -- at once in the same transaction, or, pipelined
        # (DATA is sent already), in the next one -- with the reply, for the
        # log; and those whose RCPT did go again so (``dsn_dropped``)
        self._rcpt_carried_dsn: dict[Address, bool] = {}
        # the recipients whose RCPT went without NOTIFY because the client's
        # ORCPT could not go with it (``_rcpt_command``): in ``dsn_dropped``
        self.orcpt_withheld: set[Address] = set()
        self.rcpt_dsn_refused: dict[Address, Reply] = {}
        self._dsn_resent: set[Address] = set()
        # those whose RCPT sent again without them the server accepted: only
        # for them does the adapter log a notice duty kept ("relayed"); a
        # refusal of that RCPT is the recipient's answer, logged as any other
        self.rcpt_resent_accepted: set[Address] = set()
        # more transactions in this session (``_transaction_over``): the
        # recipients of a pipelined batch refused for their DSN parameters,
        # waiting for the next one; how many there were; the results the
        # recipients of the one under way had before it; whether a MAIL was
        # taken and the transaction not ended by a reply to the final "."
        # (a new MAIL then needs RSET, RFC 5321 4.1.1.5)
        self._dsn_waiting: list[tuple[Address, RecipientDSN | None]] = []
        self.transactions = 1
        self._earlier: dict[Address, Reply | None] = {}
        self._open = False
        # complete replies read so far: the adapter restarts its timeout on
        # each one, not on every byte (a server that trickles one byte at a
        # time must not hold a delivery for ever)
        self.replies_received = 0
        # "*" was sent to cancel an AUTH exchange (once: see ``_on_auth``)
        self._auth_cancelled = False
        # the server refused the login (``_login_refused``): the session ends,
        # and whatever else it sends -- in the same read or a later one --
        # may echo the credentials as the refusal may, so it keeps no text
        self._auth_refused = False
        # the hub's account of the protocol error that ended the session (a
        # reply out of order, one too many, malformed), also when the
        # outcome was sealed before it or has no session error (a later
        # transaction's): the adapter logs it then
        self.protocol_error: Reply | None = None
        # the first bytes of a reply came before the command it would
        # answer, and may be a 421 (``_early``): the reply they begin is
        # judged as early once it is complete, whatever was sent meanwhile
        self._early_pending = False
        # commands asked for in this read that go only once ``receive``
        # returns them: a MAIL sent again without a parameter the server
        # refused (the refusal), and the recipients whose RCPT goes again
        # without NOTIFY and ORCPT, or without them for an ORCPT that could
        # not go (new to ``orcpt_withheld``).  A protocol error in the same
        # read drops them (``_unsend``): then they never went
        self._resent_mail: Reply | None = None
        self._resent_rcpts: set[Address] = set()
        self._withheld_rcpts: set[Address] = set()
        # the MAIL of the transaction under way: asked for in this read (it
        # goes once ``receive`` returns, unless ``_unsend`` drops it), and
        # gone (``transactions_sent``)
        self._mail_asked = False
        self._mail_went = False
        # the adapter holds the commands after the ``TransactionDone`` the
        # last ``receive`` returned (``hold``): none of them went yet
        self._held = False
        self._handlers = {
            Phase.GREETING: self._on_greeting,
            Phase.EHLO: self._on_ehlo,
            Phase.HELO: self._on_helo,
            Phase.STARTTLS: self._on_starttls,
            Phase.AUTH: self._on_auth,
            Phase.AUTH_USER: self._on_auth_user,
            Phase.AUTH_PASS: self._on_auth_pass,
            Phase.MAIL: self._on_mail,
            Phase.RCPT: self._on_rcpt,
            Phase.DATA: self._on_data,
            Phase.DATA_END: self._on_data_end,
            Phase.RSET: self._on_rset,
            Phase.QUIT: self._on_quit,
        }

    # --- what the adapter calls ----------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds to wait for the current step (RFC 5321 4.5.3.2)."""
        return TIMEOUTS[self.phase]

    @property
    def transactions_sent(self) -> int:
        """The transactions of the session whose MAIL went: ``transactions``
        but for the last one when its MAIL never did (a reply out of order
        in the read that asked for it, or for the RSET before it, ended the
        session first).  For the log: the recipients' results count the
        transaction begun, ``transactions``."""
        return self.transactions - (not (self._mail_went or self._mail_asked))

    def body_encoder(self) -> DotStuffer:
        """A fresh encoder for the message data: LF -> CRLF, dot-stuffing,
        and a bare CR sent as a line end, never as it is (RFC 5321 2.3.8)."""
        return DotStuffer()

    def receive(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        if not self._held:
            # (returned before: sent)
            self._resent_mail, self._resent_rcpts, self._withheld_rcpts = None, set(), set()
            if self._mail_asked:
                self._mail_asked, self._mail_went = False, True
        # The commands sent before these bytes came: what ``_expect`` holds
        # now.  A command a handler below asks for goes only once this
        # returns, so a reply in the same bytes after the last of those is
        # no answer to it: the server sent it before that command existed
        # (a stray "250 ok" after its reply to the final "." must not pass
        # for the next MAIL's, or QUIT's).  A group of pipelined commands
        # (RFC 2920) is all in ``_expect``, its replies together here.
        # None while the adapter holds the next transaction's (``hold``)
        sent = 0 if self._held else len(self._expect)
        # a reply that follows one to a step of AUTH in the same bytes, or
        # comes during one, loses its text as that one does: a stray line
        # after a 535 may be the echo of the credentials as well
        quiet = self.phase in _AUTH_PHASES or self._auth_refused
        for reply in self._parser.feed(data):
            if quiet:
                reply = _without_text(reply)
            if self.phase is Phase.TLS:
                # Bytes after the 220 to STARTTLS, in the clear: whoever sent
                # them wants them read as answers under TLS (RFC 3207 4.2).
                return self._fail_session(_synthetic(  # and no StartTLS
                    421, "4.5.0", "the server sent more after its reply to STARTTLS"))
            if self._early_pending:
                self._early_pending = False
                if self.phase is Phase.DONE:
                    continue  # the session ended meanwhile (a timeout)
                return self._early(reply)
            if not self._expect:
                if self.phase is Phase.DONE:
                    continue
                # in the message data (a server that says 421 and closes
                # there) the replies before it each answered its command --
                # the 354 came where DATA's belonged -- so the refusals to
                # RCPT stand, as after a timeout there
                return self._protocol_error(
                    _synthetic(421, "4.5.0", f"unexpected reply from the server: {reply}"),
                    trusted=self.phase is Phase.BODY)
            if sent == 0:
                return self._early(reply)
            sent -= 1
            phase = self._expect.popleft()
            self.replies_received += 1
            if phase in _AUTH_PHASES:
                reply = _without_text(reply)
                quiet = True
            if not _fits(phase, reply.code):
                # A code this step cannot have (a 250 to DATA, a 354 to RCPT
                # or after the data, a 6yz): nothing it says can be trusted
                # to mean "delivered" (RFC 5321 4.2.1, 4.3.2).
                return self._protocol_error(_synthetic(
                    421, "4.5.0", f"reply {reply.code} makes no sense for {phase.value}: "
                    f"{reply}"))
            actions += self._handlers[phase](reply)
            if self.phase is Phase.DONE:
                break
        if self.phase is Phase.TLS and (self._parser.pending or self._parser.error):
            # a malformed line after the 220 counts as "more" too: the
            # handshake must not start over bytes nobody can account for
            return self._fail_session(_synthetic(  # and no StartTLS
                421, "4.5.0", "the server sent more after its reply to STARTTLS"))
        if self._parser.error is not None and self.phase is not Phase.DONE:
            error = self._parser.error
            if ((quiet or self.phase in _AUTH_PHASES)
                    and error.startswith("malformed reply line")):
                error = "malformed reply line"  # which may repeat the credentials
            return self._protocol_error(
                _synthetic(421, "4.5.0", f"protocol error from the server: {error}"))
        if (sent == 0 and self._parser.pending and self._expect
                and self.phase is not Phase.DONE):
            # the first bytes of a reply to a command not sent yet: early
            # too, however the rest of it is cut into reads.  Those of a 421
            # are judged once it is complete: the server closing, as when
            # it comes whole (``_early``)
            if self._parser.pending_may_be(421):
                self._early_pending = True
                return actions
            return self._early(None)
        return actions

    def _early(self, reply: Reply | None) -> list[Action]:
        """A reply (``None``: the start of one) that came before the
        command it would answer was sent: more replies than commands.
        Every reply after it would be taken for the wrong command's, so
        the session ends as after any reply out of order (a multi-line
        reply is one reply; the greeting is the connection's).

        But a ``421``: RFC 5321 3.8 lets a server that shuts down send it
        "asynchronously from command receipt", so it is the server closing
        the channel, whenever it comes -- its words the session's outcome,
        as for a ``421`` to a command, and the replies before it stand."""
        self._unsend()
        if reply is not None and reply.code == 421:
            if self.outcome is None:
                self._finish(session_error=reply)
            self._expect.clear()
            self.phase = Phase.DONE
            return [Close(abort=True)]
        said = f": {reply}" if reply is not None else ""
        return self._protocol_error(
            _synthetic(421, "4.5.0", "reply from the server before the hub's command "
                       f"({self.phase.value}) was sent{said}"))

    def tls_started(self) -> list[Action]:
        self.tls_active = True
        self._parser = ReplyParser()  # nothing from before the handshake counts
        self.extensions = {}
        return self._command(Phase.EHLO, f"EHLO {self.helo}")

    def body_sent(self) -> list[Action]:
        self.phase = Phase.DATA_END
        self._expect.append(Phase.DATA_END)
        return []

    def body_failed(self, reply: Reply) -> list[Action]:
        """The message data could not be produced (after the 354; e.g. the
        7-bit conversion failed): every recipient without a result gets
        ``reply``, and the connection is dropped without the final ".", so
        the server discards the transaction (RFC 5321 4.1.1.4).

        A permanent ``reply`` (no 7-bit form of an 8-bit message) after a
        HELO that followed a refused EHLO (a 554, ``_ehlo_refused``) is no
        verdict on the message: the server never said it lacks 8BITMIME
        or SMTPUTF8, it refused to say what it offers.  The session fails
        with the hub's temporary ``451 4.6.3`` instead, quoting both, so
        the next MX host or the retry has the mail rather than a bounce."""
        refused = self._ehlo_refused
        if reply.is_permanent and refused is not None:
            if self.outcome is None:
                self._finish(session_error=_synthetic(
                    451, "4.6.3", f"not sent to this server for now: {reply.text()} -- "
                    f"but the server refused EHLO ({refused.text()}) and so never said "
                    "what it offers"))
        else:
            self._settle_all(reply)
            self._finish()
        self._expect.clear()
        self.phase = Phase.DONE
        # abort: a polite TLS close waits for the server's close_notify, and a
        # server in the middle of DATA (Exim) keeps reading instead
        return [Close(abort=True)]

    def timed_out(self) -> list[Action]:
        """The current step's timeout expired."""
        what = self.phase.value
        if self.outcome is None:
            self._finish(session_error=_synthetic(
                421, "4.4.2", f"timeout waiting for the server ({what})"))
        self.phase = Phase.DONE
        return [Close()]

    def cut(self, reply: Reply) -> list[Action]:
        """The adapter ends the session for a reason of its own (the next
        hop takes the message data too slowly): a session error, ``reply``,
        in the step the session is in, and the connection dropped at once
        -- mid-data, without the final ".", so the server discards the
        transaction (RFC 5321 4.1.1.4)."""
        if self.outcome is None:
            self._finish(session_error=reply)
        self._expect.clear()
        self.phase = Phase.DONE
        return [Close(abort=True)]

    def hold(self) -> None:
        """The adapter holds the actions after the ``TransactionDone`` the
        last ``receive`` returned -- the next transaction's commands --
        until ``release``: none of them has gone, and no command is
        outstanding.  A reply ``receive`` is given meanwhile answers none of
        them, however the transport delivered it (one that cannot pause its
        reading, or any read while they wait): more replies than commands,
        a protocol error as any reply before its command (``_early``), but
        a ``421``, the server closing (RFC 5321 3.8).  Read after they went,
        it would pass for the reply to the next ``MAIL`` (or ``RSET``)."""
        self._held = True

    def release(self) -> None:
        """The actions ``hold`` held go now (the adapter writes them as
        ``release`` returns): replies ``receive`` is given from here on
        may answer them."""
        self._held = False

    def held_back(self) -> None:
        """The actions after the ``TransactionDone`` the last ``receive``
        returned -- the next transaction's commands -- never went: the
        session ends while the adapter holds them (``connection_lost`` or
        ``cut`` follows).  Neither its MAIL nor a RCPT it sends again
        without NOTIFY and ORCPT counts as sent (``transactions_sent``,
        ``dsn_dropped``)."""
        self._unsend()

    def connection_lost(self, reason: str = "connection lost") -> SessionOutcome:
        if self.outcome is None:
            self._finish(session_error=_synthetic(
                421, "4.4.2", f"{reason} during {self.phase.value}"))
        self.phase = Phase.DONE
        assert self.outcome is not None
        return self.outcome

    # --- helpers -----------------------------------------------------------------

    def _command(self, phase: Phase, line: str) -> list[Action]:
        self.phase = phase
        self._expect.append(phase)
        return [Send(line.encode("utf-8") + b"\r\n")]

    def _finish(self, session_error: Reply | None = None, trusted: bool = True) -> None:
        """Seal the outcome.  A session that fails in a transaction after
        its first (``_transaction_over``) has results for the recipients
        of those before, which stand: the outcome is no session error then
        (the relay would send those again to the next host), and the
        recipients of the transaction under way get, each, the refusal of
        their RCPT it gave, for good or for now (``trusted``: not after a
        protocol error), as in a session of one transaction, whose
        ``refused`` keeps them; else the result they had before it (``452
        4.5.3``: the relay sends them on a new connection) -- but once the
        final "." went unanswered, those it took get ``session_error``
        itself (they may have the message: no copy goes elsewhere now):
        the message never went to those it refused.  Those that had none
        get ``session_error`` (a RCPT refused for its DSN parameters
        waiting for this transaction: restated as temporary,
        ``_not_sent_again``), or, once the final "." went unanswered,
        ``_unsent_for_now``, which says the message never went to them --
        in a session of one transaction too."""
        unanswered: list[Address] = []
        waiting = {a for a, _ in self._dsn_waiting}
        if (session_error is not None and trusted and self.phase is Phase.DATA_END
                and self.transactions == 1):
            for address in waiting:
                self._results[address] = self._unsent_for_now(address)
            self._dsn_waiting = []
        if session_error is not None and self.transactions > 1:
            for address, _ in self._sending:
                if address in waiting:
                    continue  # no RCPT of it taken in this transaction: below
                own = self._results.get(address)
                if own is not None and trusted:
                    # the server's answer to its RCPT in this transaction,
                    # for good or for now (at DATA_END no recipient it took
                    # has a result yet)
                    continue
                before = self._earlier.get(address)
                if self.phase is Phase.DATA_END:
                    self._results[address] = session_error
                    unanswered.append(address)
                elif before is not None:
                    self._results[address] = before
                else:
                    self._results[address] = self._not_sent_again(address, session_error)
            for address, _ in self._dsn_waiting:
                self._results.setdefault(
                    address, self._unsent_for_now(address)
                    if trusted and self.phase is Phase.DATA_END
                    else self._not_sent_again(address, session_error))
            self._dsn_waiting = []
            session_error = None
        if self._data_went:
            # the host took a message in this session (an earlier or a later
            # transaction than the one that took nobody or had DATA refused):
            # those it refused for now wait for the next retry, and one whose
            # final "." got a 4yz, or none, is never taken to the next MX
            # host as a recipient no message went to
            self._none_taken = self._data_refused_for_now = False
        if session_error is None:
            for address, _ in self._dsn_waiting:
                # no transaction left to send its RCPT again in: temporary,
                # so the next attempt has it (a bounce for the server's 501
                # would be for the DSN parameters the hub can drop)
                self._results[address] = _restated(self.rcpt_dsn_refused[address], 451,
                                                   "4.5.4")
        self._dsn_waiting = []
        if self._mail_again is not None:
            # the session ends (a 421, the connection lost, a timeout, a
            # reply out of order) before the refused MAIL of a pipelined
            # batch went again: no MAIL went without AUTH= or the DSN
            # parameters, so the adapter logs none as sent again
            if self._mail_again is self.auth_param_refused:
                self.auth_param_refused = None
            else:
                self.dsn_params_refused = None
            self._mail_again = None
        recips: tuple[RecipientOutcome, ...] = ()
        refused: tuple[RecipientOutcome, ...] = ()
        if session_error is None:
            recips = tuple(RecipientOutcome(a, self._results[a]) for a, _ in self.recipients)
        else:
            refused = tuple(RecipientOutcome(a, self._results[a]) for a, _ in self.recipients
                            if a in self._results)
        self.outcome = SessionOutcome(
            recipients=recips,
            session_error=session_error,
            refused=refused,
            tls=self.tls_active,
            tls_offered=self.tls_offered,
            hello_read=self.hello_read,
            tls_refused=self.tls_refused,
            dsn_supported=self._dsn_on,
            dsn_dropped=frozenset(self._dsn_resent | self.orcpt_withheld),
            transactions=self.transactions,
            unanswered_end=tuple(unanswered),
            extensions=dict(self.extensions),
            phase=self.phase.value,
            no_recipient_taken=self._none_taken,
            data_refused_for_now=self._data_refused_for_now,
            untaken_for_now=frozenset(
                r.address for r in recips
                if r.address in self._no_message and r.kind == "transient"),
        )

    def _unsent_for_now(self, address: Address) -> LocalReply:
        """The result of ``address``, whose RCPT the server refused for its
        DSN parameters in a pipelined batch and which waited for the next
        transaction, when the batch's final "." went unanswered: the message
        never went to it (the failure of that "." is the others'), and its
        RCPT never went again without the parameters.  Temporary, so the
        next retry has it; it says so, quoting the server's refusal."""
        refusal = self.rcpt_dsn_refused[address]
        said = f"{refusal.code} {refusal.status}" if refusal.status else str(refusal.code)
        return LocalReply(451, "4.5.4", (
            *refusal.lines[:-1], refusal.lines[-1] + f" (the server said {said}; not sent: "
            "the session ended before the RCPT went again without NOTIFY and ORCPT)"))

    def _not_sent_again(self, address: Address, session_error: Reply) -> Reply:
        """The result of ``address``, whose RCPT was refused for its DSN
        parameters (``rcpt_dsn_refused``) and had no answer without them
        when the session failed with ``session_error``: that, when
        temporary; a permanent one (a ``5yz`` to ``RSET``) is about the
        session, never this recipient's bounce, so the refusal of its
        parameters is restated as temporary, as when no transaction is left
        for it (``_finish``): the next attempt has it."""
        if session_error.is_transient or address not in self.rcpt_dsn_refused:
            return session_error
        return _restated(self.rcpt_dsn_refused[address], 451, "4.5.4")

    def _quit(self) -> list[Action]:
        self._expect.clear()
        return self._command(Phase.QUIT, "QUIT")

    def _fail_session(self, reply: Reply) -> list[Action]:
        if self.outcome is None:
            self._finish(session_error=reply)
        if self.phase in (Phase.QUIT, Phase.DONE, Phase.GREETING, Phase.TLS, Phase.BODY):
            # in BODY a QUIT would be taken as message data (and stored if
            # our "." followed): close, and the server drops the transaction
            self.phase = Phase.DONE
            return [Close()]
        return self._quit()

    def _protocol_error(self, reply: Reply, trusted: bool = False) -> list[Action]:
        """The server said something this session cannot account for (a
        reply out of order or malformed, one too many): its state is
        unknown from here on.  Pipelined, it may have taken DATA with a 354
        while we count a reply short: a QUIT would be message data to it,
        never answered, and waiting out the QUIT step's timeout held the
        delivery slot a minute for nothing.  So no QUIT and no wait: the
        connection is dropped at once (without our final "." the server
        throws the transaction away, RFC 5321 4.1.1.4), and the outcome --
        a session error unless the results were already known -- is what
        the caller gets.  What the replies before it in the same read
        asked for (the next command, the message data) is not done: the
        callers return this alone.

        Nor are the refusals to RCPT before it kept: a reply too many (or
        one missing) puts every reply after it on the wrong command, so a
        550 read as a recipient's may be another command's or a stray line
        -- a bounce for an answer that was never that recipient's.  They
        go on with the others, and a retry asks again.  ``trusted``: the
        replies before this one are known to be each on its command (a
        reply in the message data, after the 354), so they stand."""
        self._unsend()
        if self.protocol_error is None:
            self.protocol_error = reply
        if self.outcome is None:
            self._finish(session_error=reply, trusted=trusted)
            if not trusted and self.outcome is not None and self.outcome.refused:
                self.outcome = replace(self.outcome, refused=())
        self._expect.clear()
        self.phase = Phase.DONE
        # abort: a polite TLS close would wait for the server's close_notify,
        # and a server reading message data does not send one
        return [Close(abort=True)]

    def _unsend(self) -> None:
        """The commands the replies before this one in the same read asked
        for are not sent (``_early`` and ``_protocol_error`` return their
        ``Close`` alone): a MAIL or RCPT to go again without the parameters
        the server refused never went, and the adapter must not log that
        it did (nor, for MAIL, take the DSN parameters for dropped from the
        session: ``dsn_supported``)."""
        refusal, self._resent_mail = self._resent_mail, None
        if refusal is not None and refusal is self.dsn_params_refused:
            self.dsn_params_refused = None
        elif refusal is not None and refusal is self.auth_param_refused:
            self.auth_param_refused = None
        self._dsn_resent -= self._resent_rcpts
        self._resent_rcpts = set()
        # nor did a RCPT without the ORCPT that could not go: no line says
        # it was sent so, and the notice duty is not the hub's for it
        self.orcpt_withheld -= self._withheld_rcpts
        self._withheld_rcpts = set()
        self._mail_asked = False

    def _settle_all(self, reply: Reply) -> None:
        """``reply`` as the result of every recipient of the transaction
        without one, but those refused for their DSN parameters, whose RCPT
        waits for the next transaction."""
        waiting = {a for a, _ in self._dsn_waiting}
        for a, _ in self.recipients:
            # those of earlier transactions, and those refused before MAIL
            # (``_after_hello``), have theirs already
            if a not in waiting:
                self._results.setdefault(a, reply)

    def _fail_all(self, reply: Reply) -> list[Action]:
        self._settle_all(reply)
        return self._transaction_over(closing=reply.code == 421)

    def _transaction_over(self, prefix: bytes = b"", closing: bool = False,
                          answered: bool = False) -> list[Action]:
        """The transaction ended, every recipient in it with its result
        (``prefix``: the final "." of a DATA accepted with nothing to send,
        whose reply is ignored; ``closing``: it ended with a ``421``, the
        server closing the channel -- RFC 5321 3.8 -- so none follows, and
        the recipients it took too many of keep their 452 for the relay's
        new connection).  Another goes on this connection (RFC 5321
        4.5.3.1.10: "the client ... should continue with the remaining
        recipients in a later transaction") for the recipients the server
        took too many of -- as long as it took or refused some others, so
        a server that takes none in a new transaction either ends it -- and
        for those whose RCPT was refused for its DSN parameters in a
        pipelined batch; ``MAX_TRANSACTIONS`` at most.  RSET first when
        the transaction was not ended by a reply to the final ".".
        ``answered``: it was (a message went to those it took): then a
        ``TransactionDone`` with its results comes before the next one's
        commands."""
        batch = [a for a, _ in self._sending]
        more = [(a, d) for a, d in self._sending
                if a in self._results and too_many_recipients(self._results[a])]
        if more and len(more) + len(self._dsn_waiting) == len(batch):
            more = []  # no headway: the relay's to send on a new connection
        more += self._dsn_waiting
        last = not more or closing or self.transactions >= MAX_TRANSACTIONS
        if not self._tx_text_went and (not self._accepted or self._tx_data_for_now):
            # no message text in this transaction, and it took no recipient
            # or refused DATA for now (as ``no_recipient_taken`` and
            # ``data_refused_for_now`` for a session): the host holds no
            # copy for those whose result it settled (the others go on in
            # the next one, whose own fate theirs is)
            going_on = set() if last else {a for a, _ in more}
            self._no_message.update(a for a in batch if a not in going_on)
        if last:
            self._finish()
            actions = self._quit()
            if prefix:
                self._expect.appendleft(Phase.QUIT)  # the ignored reply to "."
                return [Send(prefix + b"".join(
                    a.data for a in actions if isinstance(a, Send)))]
            return actions
        done: list[Action] = []
        if answered:
            going_on = {a for a, _ in more}
            done.append(TransactionDone(
                tuple(RecipientOutcome(a, self._results[a]) for a in batch
                      if a not in going_on and a in self._results),
                dsn_supported=self._dsn_on,
                dsn_dropped=frozenset(self._dsn_resent | self.orcpt_withheld)))
        self.transactions += 1
        self._tx_text_went = self._tx_data_for_now = False
        self._mail_asked = self._mail_went = False
        order = {a: n for n, (a, _) in enumerate(self.recipients)}
        more.sort(key=lambda pair: order[pair[0]])
        self._earlier = {a: self._results.pop(a, None) for a, _ in more}
        self._sending = more
        self._dsn_waiting = []
        self._accepted = []
        self._mail_reply = None
        self._rcpt_index = 0
        self._rcpt_held = None
        self._expect.clear()
        if prefix:
            self._expect.append(Phase.QUIT)  # a reply _on_quit ignores
        if self._open:
            self._open = False
            actions = self._command(Phase.RSET, "RSET")
        else:
            actions = self._start_mail()
        return done + [Send(prefix + a.data) if isinstance(a, Send) else a for a in actions]

    def _on_rset(self, reply: Reply) -> list[Action]:
        if not reply.is_positive:
            return self._fail_session(reply)
        return self._start_mail()

    # --- reply handlers (the transition table is ``self._handlers``) --------------

    def _on_greeting(self, reply: Reply) -> list[Action]:
        if reply.code != 220:
            self.phase = Phase.EHLO  # so _fail_session sends QUIT
            return self._fail_session(reply)
        return self._command(Phase.EHLO, f"EHLO {self.helo}")

    def _on_ehlo(self, reply: Reply) -> list[Action]:
        if reply.is_positive:
            self.extensions = _extensions(reply.lines[1:])
            if "STARTTLS" in self.extensions:
                self.tls_offered = True
            self.hello_read = True
            return self._after_hello()
        if reply.is_permanent and reply.code in _EHLO_NOT_KNOWN:
            self.hello_read = True  # no ESMTP, so no STARTTLS offered
            return self._command(Phase.HELO, f"HELO {self.helo}")
        if (reply.is_permanent and reply.code not in _NO_MAIL_AT_ALL
                and self._helo_may_carry_the_mail):
            # a refusal that says nothing of what the server offers:
            # ``hello_read`` waits for HELO's 250 (``_on_helo``)
            self._ehlo_refused = reply
            return self._command(Phase.HELO, f"HELO {self.helo}")
        return self._fail_session(reply)

    @property
    def _helo_may_carry_the_mail(self) -> bool:
        """Whether a session greeted with HELO (no extensions: no STARTTLS,
        no AUTH, no SMTPUTF8) can send this mail: not when TLS is required
        and not yet on, nor with a smarthost login, nor when an address
        has no ASCII form.  Then HELO after a refused EHLO only ends in the
        hub's own refusal, which hides the server's: its reply to EHLO
        stays the session's answer.  The SMTPUTF8 refusal would even be
        final (553 5.6.7, a bounce) for a server that never said it lacks
        SMTPUTF8 -- it refused to say what it offers -- where the EHLO
        refusal lets the next MX host or the retry have the mail."""
        return ((self.tls_active or self.tls_policy != "require")
                and self.credentials is None and not self.smtputf8)

    def _on_helo(self, reply: Reply) -> list[Action]:
        if not reply.is_positive:
            # after a 5yz to EHLO (``_ehlo_refused``) its reply says why the
            # host will not talk to us ("554 5.7.1 <client> listed at ..."),
            # HELO's usually only that it wants EHLO or is "out of
            # sequence": the EHLO's stays the session's, for the log and
            # the notice
            # -- but not over HELO's RFC 7504 "no mail at all" (521, 556),
            # which the relay takes as final, as it does at EHLO
            kept = self._ehlo_refused
            if kept is None or reply.code in _NO_MAIL_AT_ALL:
                kept = reply
            return self._fail_session(kept)
        # no extensions, so no STARTTLS: the session goes on in clear (a
        # "TLS downgrade" for a host that offered STARTTLS before)
        self.hello_read = True
        self.extensions = {}
        return self._after_hello()

    def _after_hello(self) -> list[Action]:
        ext = self.extensions
        if not self.tls_active and self.tls_policy != "none":
            if "STARTTLS" in ext and not self._tried_tls:
                self._tried_tls = True
                return self._command(Phase.STARTTLS, "STARTTLS")
            if self.tls_policy == "require":
                by = f" ({self.tls_required_by})" if self.tls_required_by else ""
                return self._fail_session(_synthetic(
                    450, "4.7.10" if "STARTTLS" not in ext else "4.7.0",
                    f"TLS is required for this destination{by}, but the server "
                    + ("did not offer STARTTLS" if "STARTTLS" not in ext
                       else "refused STARTTLS")))
        if self.smtputf8 and "SMTPUTF8" not in ext:
            refusal = _synthetic(
                553, "5.6.7", "the remote server does not support SMTPUTF8, which this "
                "message's non-ASCII addresses need (RFC 6531)")
            if self.sender is not None and ascii_form(self.sender) is None:
                return self._fail_all(refusal)  # no MAIL FROM it can take
            # Only the recipients without an ASCII form need it: RFC 6531
            # 3.2's "for that recipient".  The others go in a transaction
            # that names none of them -- one that needs no SMTPUTF8, unless
            # the message itself does (a UTF-8 mailbox in a header field:
            # the 7-bit copy then fails, 5.6.9, as for any such message)
            self._sending = [(a, d) for a, d in self.recipients if ascii_form(a) is not None]
            for address, _ in self.recipients:
                if ascii_form(address) is None:
                    self._results[address] = refusal
            if not self._sending:
                return self._fail_all(refusal)
            # What this transaction wants is then the client's flag alone:
            # the refused addresses made the message no UTF-8 header message
            # (an alias's jörg@, from a client that never said SMTPUTF8), and
            # the others' 8-bit body goes as 8BITMIME allows, not as a 7-bit
            # copy that may not exist (``_on_data``; the 5.6.9 the relay says
            # when that copy fails is for a message sent with SMTPUTF8)
            self.smtputf8_wanted = self._client_smtputf8
        limit = ext.get("SIZE", "")
        if limit.isascii() and limit.isdigit() and int(limit) > 0 and self.size > int(limit):
            return self._fail_all(_synthetic(
                552, "5.3.4", f"message too big for the remote server ({self.size} octets, "
                f"its limit is {limit})"))
        if self.credentials is not None:
            if not self.tls_active and self.tls_policy != "none":
                # never a password in the clear unless "none" says so: a
                # stripped or refused STARTTLS must not hand it to whoever
                # listens (the relay makes no plain retry after a failed
                # handshake with a password: that retry's policy is "none")
                # a refused STARTTLS is said here: no warning says it then
                # (``_on_starttls``), and "has none" alone reads as a
                # smarthost that offers no STARTTLS
                refused = self._starttls_refusal
                why = f" (it refused STARTTLS: {refused.text()})" if refused is not None else ""
                return self._fail_session(_synthetic(
                    454, "4.7.0", "the smarthost password is only sent over TLS, and this "
                    "session has none" + why))
            return self._start_auth()
        return self._start_mail()

    def _on_starttls(self, reply: Reply) -> list[Action]:
        if reply.code == 220:
            self.phase = Phase.TLS
            return [StartTLS()]
        if reply.code == 421:
            # the server closing the channel (RFC 5321 3.8), as for MAIL:
            # no refusal to go on from, and its words are the session's outcome
            return self._fail_session(reply)
        if reply.is_positive:
            return self._starttls_not_220(reply)
        if self.tls_policy == "require":
            if not reply.is_transient:
                # a 5yz refuses the TLS the hub's policy requires, not
                # this message: kept queued, as when STARTTLS is not
                # offered, never bounced for the server's code (a 2yz that
                # is no 220 is ``_starttls_not_220``'s)
                reply = _restated(reply, 454, "4.7.0")
            return self._fail_session(reply)
        # RFC 3207 4.1 leaves going on to the client; opportunistic TLS
        # does, and says so (SessionOutcome.tls_refused) -- unless nothing
        # goes on: a smarthost password kept from the clear ends it here
        self._starttls_refusal = reply
        actions = self._after_hello()
        if self.outcome is None:
            self.tls_refused = reply
        return actions

    def _starttls_not_220(self, reply: Reply) -> list[Action]:
        """A 2yz to STARTTLS that is no ``220``: RFC 3207 4 has 220 as the
        only "ready to start TLS" and 454/501 as refusals; after anything
        else the server's state is unknown (it may be waiting for our
        TLS handshake, or for the next command in clear).  Nothing more
        goes on this connection -- not even QUIT, which a server in TLS
        would read as a broken handshake -- and it is dropped (RFC 3207
        4: a client that cannot start the handshake "SHOULD abort the
        connection").  Under ``"require"`` the mail stays queued, as after
        any refusal of the TLS the policy requires.  Under
        ``"opportunistic"`` the session counts as a TLS start that
        failed (phase ``TLS``): the relay tries the host again at once on
        a new connection without TLS, whose state is known, as after a
        failed handshake (RFC 3207 4.1) -- never in clear on this one, as
        before, and never with a smarthost password (kept queued)."""
        if self.tls_policy == "require":
            # said as the refusals of required TLS are (``_after_hello``):
            # the server's words alone ("454 4.7.0 go ahead") read as a
            # contradiction in ``queue show``
            by = f" ({self.tls_required_by})" if self.tls_required_by else ""
            said = f"{reply.code} {reply.status}" if reply.status else str(reply.code)
            error = _synthetic(454, "4.7.0", f"TLS is required for this destination{by}, "
                               f"but the server answered STARTTLS with \"{' / '.join(reply.lines)}"
                               f"\", not 220, and the connection was dropped (the server said "
                               f"{said})")
        else:
            self.phase = Phase.TLS
            error = _synthetic(421, "4.5.0", f"the server answered STARTTLS with "
                               f"{reply.text()}, not 220: what it expects next is unknown, "
                               "and the connection was dropped")
        if self.outcome is None:
            self._finish(session_error=error)
        self._expect.clear()
        self.phase = Phase.DONE
        return [Close(abort=True)]

    def _start_auth(self) -> list[Action]:
        """AUTH with the smarthost login: PLAIN, else LOGIN -- the two
        mechanisms the hub has.  A smarthost that offers neither, or no
        AUTH at all, gets no credentials: the session ends with the hub's
        ``454 4.7.0`` saying what the server offered (``_no_usable_auth``),
        which ``queue list`` and the log show.  Temporary, as Postfix
        defers on "no worthy mechs": it is the configuration's to fix (the
        smarthost's, or ``[relay] smarthost_auth_file``), not the
        sender's, and the mail waits for that rather than bounce."""
        offered = _blank_split(self.extensions.get("AUTH", ""))
        mechanisms = [m.upper() for m in offered if m.isascii()]
        if "AUTH" not in self.extensions or not ({"PLAIN", "LOGIN"} & set(mechanisms)):
            return self._fail_session(self._no_usable_auth(offered))
        assert self.credentials is not None
        user, password = self.credentials
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            return self._command(Phase.AUTH, "AUTH PLAIN " + token)
        return self._command(Phase.AUTH_USER, "AUTH LOGIN")

    def _no_usable_auth(self, offered: list[str]) -> Reply:
        """Why the smarthost login cannot be used in this session, in
        words true of what the server said: the mechanisms it offers
        (none the hub has), no AUTH at all -- after TLS, without TLS but
        with STARTTLS (``smarthost_tls = "none"`` does not use it, and
        servers often offer AUTH only after it), or after a refused EHLO
        (HELO has no extensions).  ``offered`` is the server's AUTH line,
        cut short: it goes into the queue record."""
        knob = "[relay] smarthost_auth_file is set"
        if "AUTH" in self.extensions:
            words = " ".join(offered)
            if len(words) > _OFFERED_MAX:  # whole mechanisms, as many as fit
                words = words[:_OFFERED_MAX + 1].rsplit(" ", 1)[0][:_OFFERED_MAX] + " ..."
            said = f"AUTH {words} only" if words else "AUTH with no mechanism named"
            return _synthetic(454, "4.7.0", f"the smarthost offers {said}; txmailhub can use "
                              f"PLAIN or LOGIN ({knob})")
        if self.phase is Phase.HELO:
            why = "refused EHLO, and HELO offers no AUTH"
        elif self.tls_active:
            why = "does not offer AUTH over TLS"
        elif "STARTTLS" in self.extensions:
            why = ('offers STARTTLS but no AUTH without TLS, and smarthost_tls = "none" '
                   "never uses STARTTLS (AUTH is often offered only after it)")
        else:
            why = "does not offer AUTH"
        return _synthetic(454, "4.7.0", f"the smarthost {why}; {knob}, and no mail goes "
                          "there without that login")

    def _on_auth_user(self, reply: Reply) -> list[Action]:
        """334 after "AUTH LOGIN": send the user name."""
        if reply.code != 334:
            return self._login_refused(reply)
        assert self.credentials is not None
        self.phase = Phase.AUTH_PASS
        self._expect.append(Phase.AUTH_PASS)
        return [Send(base64.b64encode(self.credentials[0].encode()) + b"\r\n")]

    def _on_auth_pass(self, reply: Reply) -> list[Action]:
        """334 after the user name: send the password."""
        if reply.code != 334:
            return self._login_refused(reply)
        assert self.credentials is not None
        self.phase = Phase.AUTH
        self._expect.append(Phase.AUTH)
        return [Send(base64.b64encode(self.credentials[1].encode()) + b"\r\n")]

    def _on_auth(self, reply: Reply) -> list[Action]:
        if reply.code == 235:
            return self._start_mail()
        if reply.code == 334:  # a challenge we did not expect: cancel
            if self._auth_cancelled:
                # RFC 4954 4: the server answers the "*" with 501.  Another
                # challenge would get another "*", and so on for ever (each
                # reply restarts the timeout).  Mid-exchange, a QUIT would be
                # read as a SASL response: drop the connection.
                return self._protocol_error(_synthetic(
                    421, "4.7.0", "the server went on with AUTH after the hub cancelled "
                    "the exchange (RFC 4954 4)"))
            self._auth_cancelled = True
            self._expect.append(Phase.AUTH)
            return [Send(b"*\r\n")]
        return self._login_refused(reply)

    def _login_refused(self, reply: Reply) -> list[Action]:
        """The server's ``reply`` refused the login, at whatever step (the
        mechanism, LOGIN's user name, the credentials): the configuration's
        fault, so a 5xx keeps the mail queued as the hub's 454."""
        self._auth_refused = True
        if reply.is_permanent:
            reply = _kept_queued(reply)
        return self._fail_session(reply)

    def _mail_command(self) -> str:
        ext = self.extensions
        params = []
        if "SIZE" in ext and not self._converts():
            # RFC 1870's message size is the octets sent after the 354.
            # The 7-bit copy is made after it and is larger than ``size``
            # by an amount not known yet; SIZE is an optional parameter,
            # so it is left out and the server judges the data at its end.
            # Too large a message is still refused before MAIL: the copy
            # is never smaller than the message
            params.append(f"SIZE={self.size}")
        if self.eight_bit and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")
        utf8 = self.smtputf8_wanted and "SMTPUTF8" in ext
        if utf8:
            params.append("SMTPUTF8")
        dsn_at = len(params)
        if self._dsn_on:
            if self.dsn.ret:
                params.append(f"RET={self.dsn.ret}")
            if self._envid is not None:
                params.append(f"ENVID={self._envid}")
        self._dsn_params_sent = len(params) > dsn_at
        self._auth_param_sent = (self.auth_param and "AUTH" in ext
                                 and self.auth_param_refused is None)
        if self._auth_param_sent:
            params.append("AUTH=" + self._auth_value(utf8))
        path = "" if self.sender is None else self._path(self.sender)
        return " ".join([f"MAIL FROM:<{path}>", *params])

    def _converts(self) -> bool:
        """Whether the message goes as its 7-bit copy: 8-bit data to a
        server without 8BITMIME, or a message sent with SMTPUTF8 to one
        without SMTPUTF8 (its UTF-8 header fields encoded, RFC 6531 3.2)."""
        ext = self.extensions
        return self.eight_bit and (
            "8BITMIME" not in ext or (self.smtputf8_wanted and "SMTPUTF8" not in ext))

    def _auth_value(self, utf8: bool) -> str:
        """The value of MAIL's ``AUTH=`` (RFC 4954 5), sent only to a server
        that offers AUTH: it "SHOULD" get the submitter the hub vouches
        for, and one the hub authenticated to "MUST" get ``<>`` for a
        message nobody vouches for.  The mailbox goes as xtext, in its
        ASCII form unless the transaction is SMTPUTF8 (then its UTF-8, as
        escapes, as ENVID's); one with no ASCII form outside SMTPUTF8, one
        that is no addr-spec written bare, or one too long for the 500
        characters RFC 4954 adds to the MAIL line, goes as ``<>`` instead:
        claiming less is always allowed, a value the next hop refuses
        would cost the whole transaction."""
        who = self.submitter
        if who is None:
            return "<>"
        text = str(who) if utf8 else ascii_form(who)
        if text is None:
            return "<>"
        try:
            # RFC 4954 5: the decoded value "MUST" be an addr-spec; a local
            # part that would need quotes ("a b") is not one written bare
            parse_mailbox(text, "localhost", utf8)
        except RemoteProtocolError:
            return "<>"
        value = xtext_encode(text)
        return value if len(" AUTH=" + value) <= MAX_AUTH_PARAM else "<>"

    def _envid_param(self) -> tuple[str | None, bool]:
        """The ``ENVID=`` value for MAIL (``None`` without an id), and
        whether the message's id is one the hub cannot pass on.

        RFC 3461 5.2.1 (a): "the same associated esmtp-value" as received,
        escapes and all; encoded afresh only when that is not known (a
        record from before it was kept).  RFC 3461 4.4: the id "MUST
        consist entirely of printable (graphic and white space) characters
        from the US-ASCII repertoire", in at most 100 characters.  RFC 6531
        3.3 lets an esmtp-value hold UTF-8 in an SMTPUTF8 transaction, but
        ENVID's own syntax is changed neither there nor by RFC 6533 (its
        utf-8 type is ORCPT's): the UTF-8 id an SMTPUTF8 client gave us
        cannot go, SMTPUTF8 or not (Postfix says "501 5.5.4 Bad ENVID
        parameter syntax" to one), nor can one over 100 characters (a
        record queued before that limit).  A relay to a server with DSN
        "MUST" pass the ENVID on (5.2.1), and a DSN request without its id
        is none that RFC 3461 knows: such a message goes as to a server
        without DSN, and the hub keeps the notice duty (5.2.2: "relayed"
        for NOTIFY=SUCCESS, with the id; ``dsn_supported`` false)."""
        envid = self.dsn.envid
        if not envid:
            return None, False
        if not envid.isascii():
            return None, True
        value = _as_received(self.dsn.envid_raw, envid, decode_envid) or xtext_encode(envid)
        if len(value) > MAX_ENVID:
            return None, True
        return value, False

    @property
    def _dsn_on(self) -> bool:
        """Whether DSN parameters go in this session: the server offers DSN,
        has not refused them (``dsn_params_refused``), and the message's
        ENVID can go (``envid_withheld``)."""
        return ("DSN" in self.extensions and self.dsn_params_refused is None
                and not self.envid_withheld)

    @property
    def _utf8_transaction(self) -> bool:
        """Whether MAIL carries SMTPUTF8: UTF-8 may then go raw in the
        paths and in ORCPT (RFC 6531 3.4, RFC 6533 3)."""
        return self.smtputf8_wanted and "SMTPUTF8" in self.extensions

    def _path(self, address: Address) -> str:
        """``address`` as this transaction can carry it: as given with
        SMTPUTF8, else its ASCII form (one always exists then: an address
        without one fails the session before MAIL)."""
        if self._utf8_transaction:
            return str(address)
        return ascii_form(address) or str(address)

    def _rcpt_command(self, address: Address, dsn: RecipientDSN | None) -> str:
        params = []
        again = address in self.rcpt_dsn_refused
        if again and address not in self._dsn_resent:
            self._dsn_resent.add(address)
            self._resent_rcpts.add(address)
        if dsn is not None and self._dsn_on and not again:
            if dsn.notify:
                params.append("NOTIFY=" + ",".join(dsn.notify))
            if dsn.orcpt:
                kind, _, value = dsn.orcpt.partition(";")
                orcpt = None
                raw = _as_received(dsn.orcpt_raw, dsn.orcpt, decode_orcpt)
                if raw is not None and (raw.isascii() or self._utf8_transaction):
                    # RFC 3461 5.2.1 (d): "the identical original-recipient-
                    # address", as received (its case, its escapes, its
                    # type's spelling).  A 7-bit form goes so in any
                    # transaction; raw UTF-8 (utf-8-addr-unitext) only in an
                    # SMTPUTF8 one, and is converted below otherwise
                    orcpt = "ORCPT=" + raw
                elif kind.lower() == "utf-8":
                    # RFC 6533 3: in an SMTPUTF8 transaction native UTF-8
                    # (utf-8-addr-unitext: only SP, "+", "=", "\\" and
                    # controls escaped), otherwise the 7-bit utf-8-addr-xtext
                    encode = utf8_addr_unitext if self._utf8_transaction else utf8_addr_encode
                    orcpt = f"ORCPT=utf-8;{encode(value)}"
                elif value.isascii():
                    orcpt = f"ORCPT={kind};{xtext_encode(value)}"
                # The escapes can make it several times longer than it came
                # in; past the 500 characters RFC 3461 (4) adds to the RCPT
                # line for NOTIFY and ORCPT the next hop may refuse the RCPT
                # as too long: ORCPT is optional, the recipient is not.
                # Counted in octets, which is what a line limit counts
                if orcpt is not None and len(
                        (" " + " ".join([*params, orcpt])).encode("utf-8")) <= 500:
                    params.append(orcpt)
                elif dsn.orcpt_raw is not None:
                    # the client's own ORCPT, which a relay to a server with
                    # DSN "MUST" pass on (RFC 3461 5.2.1 (d)): without it the
                    # request is cut down, so this RCPT goes as to a server
                    # without DSN and the hub keeps that recipient's notice
                    # duty (5.2.2, ``dsn_dropped``).  One the hub made up (an
                    # alias's, 5.2.1 (c): "MAY be added") is merely left out
                    params = []
                    if address not in self.orcpt_withheld:
                        # (one already there went so before, in an earlier
                        # transaction of the session: that one stands)
                        self._withheld_rcpts.add(address)
                        self.orcpt_withheld.add(address)
        self._rcpt_carried_dsn[address] = bool(params)
        return " ".join([f"RCPT TO:<{self._path(address)}>", *params])

    def _start_mail(self) -> list[Action]:
        self._mail_asked = True
        self._pipelined = "PIPELINING" in self.extensions
        actions = self._command(Phase.MAIL, self._mail_command())
        if not self._pipelined:
            return actions
        lines = [a.data for a in actions if isinstance(a, Send)]
        for address, dsn in self._sending:
            self._expect.append(Phase.RCPT)
            lines.append(self._rcpt_command(address, dsn).encode("utf-8") + b"\r\n")
        self._expect.append(Phase.DATA)
        lines.append(b"DATA\r\n")
        return [Send(b"".join(lines))]

    def _on_mail(self, reply: Reply) -> list[Action]:
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the channel; nothing more
            # will be answered, and its words are the session's outcome
            return self._fail_session(reply)
        if not reply.is_positive:
            again = False
            if self._auth_param_sent and refuses_parameters(reply):
                # the server offered AUTH but refuses the parameter: a
                # refused MAIL opens no transaction (RFC 5321 4.1.1.2), so
                # MAIL goes again at once, without AUTH=; pipelined, once
                # the replies to the RCPTs and DATA sent with it are in.
                # Judged on the server's own reply: a "530 5.5.4" refuses
                # the parameter (its X.5.4 says so), not the session
                self.auth_param_refused = reply
                again = True
            elif self._dsn_params_sent and refuses_dsn_parameters(reply):
                # the server offered DSN but refuses ENVID= or RET= (Postfix
                # an ENVID with a TAB, which RFC 3461 4.4 allows): refused,
                # the message bounced to every recipient.  MAIL goes again
                # (after AUTH=, when both went: that one is advisory), and the
                # transaction as to a server without DSN -- no ENVID, RET,
                # NOTIFY or ORCPT: a DSN request cut down is none that RFC
                # 3461 5.2.1 allows -- so the hub keeps the notice duty (5.2.2:
                # "relayed" for NOTIFY=SUCCESS, ``dsn_supported`` false)
                self.dsn_params_refused = reply
                again = True
            else:
                reply = held_for_session(reply)  # a 530 is no verdict on the sender
            if again and not self._pipelined:
                self._resent_mail = reply
                return self._command(Phase.MAIL, self._mail_command())
            if again:
                self._mail_again = reply
            self._mail_reply = reply
            if self._pipelined:
                self.phase = Phase.RCPT
                return []  # the RCPT and DATA replies still come; they are ignored
            if reply.is_transient:
                return self._fail_session(reply)
            return self._fail_all(reply)
        self._open = True
        if self.auth_param_refused is not None and self.dsn_params_refused is None:
            # AUTH= alone was dropped: it was the trouble (after a third
            # MAIL, without the DSN parameters too, that is not known)
            self.accepted_without_auth_param = True
        if self._pipelined:
            self.phase = Phase.RCPT
            return []
        return self._next_rcpt()

    def _next_rcpt(self) -> list[Action]:
        address, dsn = self._sending[self._rcpt_index]
        return self._command(Phase.RCPT, self._rcpt_command(address, dsn))

    def _on_rcpt(self, reply: Reply) -> list[Action]:
        if reply.code == 421:
            return self._fail_session(reply)  # as for MAIL (RFC 5321 3.8)
        said_530 = reply.code == 530
        reply = held_for_session(reply)  # nor on the recipient
        address = self._sending[self._rcpt_index][0]
        self._rcpt_index += 1
        if reply.code == 552 and not _size_refusal(reply):
            # RFC 5321 4.5.3.1.10: 552 to RCPT is an old "too many
            # recipients"; clients SHOULD take it as temporary (452) -- the
            # hub's reading, the server's 552 quoted (as for a 530 above)
            reply = _restated(reply, 452, "4.5.3" if reply.status in (None, "5.5.3")
                              else "4" + (reply.status or ".0.0")[1:])
        elif reply.code == 452 and reply.status is None:
            # the code RFC 5321 4.5.3.1.10 says a server "MUST" give when
            # its limit of recipients is reached, from a server without
            # enhanced codes: read as "too many recipients" (4.5.3), as a
            # 552 without one is above -- the RFC's own code must not fare
            # worse than the old one (those go at once in a new
            # transaction, not on the retry schedule)
            reply = _restated(reply, 452, "4.5.3")
        if (self._mail_reply is None and self._rcpt_carried_dsn.get(address)
                and refuses_dsn_parameters(reply)):
            # the server offered DSN and refuses NOTIFY= or ORCPT= (Postfix:
            # "501 5.5.4 Bad NOTIFY parameter syntax"; ORCPT's xtext): the
            # RCPT goes again without them, as to a server without DSN, and
            # the hub keeps that recipient's notice duty (RFC 3461 5.2.2,
            # ``dsn_dropped``), as for a MAIL refused for ENVID or RET.  At
            # once in this transaction -- pipelined, in the next one: DATA
            # went with the batch, and a RCPT after it would reach a server
            # that may have answered it 354 as message data.  A refusal of
            # the RCPT without them stands (it carries none: no loop)
            self.rcpt_dsn_refused[address] = reply
            if not self._pipelined:
                self._rcpt_index -= 1
                return self._next_rcpt()
            self._dsn_waiting.append(self._sending[self._rcpt_index - 1])
        elif self._mail_reply is None:
            if reply.is_positive:
                self._accepted.append(address)
                if address in self.rcpt_dsn_refused:  # the RCPT sent without them
                    self.rcpt_resent_accepted.add(address)
            else:
                self._results[address] = reply
                if said_530:
                    self._rcpt_held = reply
        if self._pipelined:
            self.phase = Phase.DATA if self._rcpt_index == len(self._sending) else Phase.RCPT
            return []
        if self._rcpt_index < len(self._sending):
            return self._next_rcpt()
        if not self._accepted:
            return self._no_recipient_taken(reply)
        return self._command(Phase.DATA, "DATA")

    def _no_recipient_taken(self, reply: Reply) -> list[Action]:
        """Every RCPT refused (``reply`` the last refusal, or DATA's).  When
        one of them was a ``530`` (RFC 3207 4, RFC 4954 6: the session
        lacks TLS or a login) the session fails with it, as after a 530
        to MAIL: the recipients it refused go on to the next host, while
        a 5xx to another RCPT stays that one's final answer (``refused``).
        Otherwise each recipient has its own refusal as its result."""
        self._none_taken = True
        held = self._rcpt_held
        if held is None:
            return self._fail_all(reply)
        return self._fail_session(held)

    def _on_data(self, reply: Reply) -> list[Action]:
        mail = self._mail_reply
        if mail is not None and mail is self._mail_again:
            # pipelined, the MAIL that refused AUTH= (or the DSN parameters)
            # is answered, and so are the RCPTs and DATA sent with it: the
            # same batch again, without them -- after ending a DATA accepted
            # against RFC 2920 3.1 with an empty message, whose reply is
            # ignored (as below).  Not after a 421: the server is closing
            # (RFC 5321 3.8), and its words are the session's outcome, as
            # for a 421 to MAIL or RCPT (the refusal of a parameter is no
            # refusal of the message)
            if reply.code == 421:
                return self._fail_session(reply)  # (no MAIL went again: ``_finish``)
            self._mail_again = None
            self._resent_mail = mail
            self._mail_reply = None
            self._rcpt_index = 0
            self._expect.clear()
            end = b""
            if reply.code == 354:
                end = b".\r\n"
                self._expect.append(Phase.QUIT)  # a reply _on_quit ignores
            return [Send(end + sent.data) if isinstance(sent, Send) else sent
                    for sent in self._start_mail()]
        if reply.code == 354 and (mail is not None or not self._accepted):
            # RFC 2920 3.1: DATA was accepted although there is nothing to
            # send (pipelined, MAIL or every RCPT refused): end it empty, and
            # ignore the reply to that
            if mail is None and self._rcpt_held is None:
                # each RCPT refused, with its own reply: the transaction is
                # over, and another may follow (``_transaction_over``)
                self._none_taken = True
                self._open = False
                return self._transaction_over(prefix=b".\r\n")
            if mail is None:
                self._none_taken = True
                self._finish(session_error=self._rcpt_held)  # see _no_recipient_taken
            elif mail.is_transient:
                self._finish(session_error=mail)
            else:
                for address, _ in self.recipients:
                    self._results.setdefault(address, mail)
                self._finish()
            self._expect.clear()
            self._expect.extend([Phase.QUIT, Phase.QUIT])
            self.phase = Phase.QUIT
            return [Send(b".\r\nQUIT\r\n")]
        if mail is not None:
            return self._fail_session(mail) if mail.is_transient else self._fail_all(mail)
        if reply.code == 354:
            self.phase = Phase.BODY
            self._data_went = True
            self._tx_text_went = True
            # 8BITMIME covers the body only: a message its client sent with
            # SMTPUTF8 may have UTF-8 header fields (RFC 6532), which a server
            # without SMTPUTF8 must not get raw -- the 7-bit copy encodes them
            # (a message that needs SMTPUTF8 for real then bounces, 5.6.3).
            return [SendBody(convert_7bit=self._converts())]
        # a 530 here as to MAIL or RCPT (RFC 4954 6 lets it answer DATA):
        # the session lacks TLS or a login, the recipients wait
        reply = held_for_session(reply)
        if not self._accepted:  # pipelined: every RCPT refused
            return self._no_recipient_taken(reply)
        self._data_refused_for_now = self._tx_data_for_now = reply.is_transient
        for address in self._accepted:
            self._results[address] = reply
        return self._fail_all(reply)

    def _on_data_end(self, reply: Reply) -> list[Action]:
        # a 530 after the final "." too: a 5yz, so the server took nothing,
        # and the session's lack (TLS, a login) is no verdict on the message
        reply = held_for_session(reply)
        for address in self._accepted:
            self._results[address] = reply
        self._open = False
        return self._transaction_over(closing=reply.code == 421, answered=True)

    def _on_quit(self, reply: Reply) -> list[Action]:
        if self._expect:  # a reply we chose to ignore (see _on_data)
            return []
        self.phase = Phase.DONE
        return [Close()]
