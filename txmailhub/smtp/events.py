"""The SMTP server engine's configuration, session facts and events.

Owns the values that cross the line between the sans-IO engine
(``txmailhub.smtp.server``) and its adapter (``txmailhub.smtp.protocol``):
what the engine is configured with, what it knows about the client, and
the events it emits.  Requests (``StartMessage``, ``MessageComplete``,
``AuthRequest``, ``StartTLS``) pause the engine until the adapter answers;
notices (``MessageAborted``, ``Close``) need no answer.  Plain values, no
behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from txmailhub.address import Address
from txmailhub.envelope import Envelope
from txmailhub.smtp.reply import Reply

__all__ = [
    "AuthMalformed",
    "AuthRequest",
    "Close",
    "MessageAborted",
    "MessageComplete",
    "ServerConfig",
    "Session",
    "StartMessage",
    "StartTLS",
]


@dataclass(frozen=True)
class ServerConfig:
    hostname: str
    primary_domain: str
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_errors: int = 10
    # Commands that carry no mail (NOOP, RSET, VRFY, EXPN, HELP) a session
    # may send before each one more counts as an error (Postfix's
    # smtpd_junk_command_limit): a client that pipelines NOOPs by the
    # thousand is closed after this many plus max_errors, instead of keeping
    # the hub busy for as long as it likes.  Reset when a message is accepted.
    max_junk_commands: int = 100
    # RCPTs a transaction may send past max_recipients before each one more
    # counts as an error (Postfix's smtpd_recipient_overshoot_limit): a
    # pipelining client may overshoot and send the rest again (RFC 5321
    # 4.5.3.1.10), but one that sends them without end is closed instead of
    # being answered 452, and logged, for as long as it likes.
    max_recipient_overshoot: int = 1000
    max_auth_failures: int = 3
    vrfy: bool = True
    expn: bool = True
    tls_available: bool = False
    auth_available: bool = False
    max_line: int = 512  # RFC 5321 4.5.3.1.4, CRLF included
    # The extensions we offer lengthen MAIL and RCPT (each RFC says by how
    # much): MAIL +26 SIZE (1870), +100 RET/ENVID (3461), +500 AUTH= (4954),
    # +14 BODY= (1652), +10 SMTPUTF8 (6531); RCPT +500 NOTIFY/ORCPT (3461).
    max_mail_line: int = 512 + 26 + 100 + 500 + 14 + 10
    max_rcpt_line: int = 512 + 500
    max_auth_line: int = 12288  # RFC 4954 section 4


@dataclass
class Session:
    """What the engine knows about the client (policy reads it)."""

    client_host: str = ""
    loopback: bool = False
    relay_allowed: bool = False
    submission: bool = False
    tls: bool = False
    helo: str = ""
    esmtp: bool = False
    authenticated_as: Address | None = None


# --- events ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartMessage:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class MessageComplete:
    envelope: Envelope
    size: int


@dataclass(frozen=True, slots=True)
class MessageAborted:
    envelope: Envelope
    reply: Reply
    size: int = 0  # octets received before the message was refused (for the log)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    mechanism: str
    username: str
    password: str = field(repr=False)
    malformed: bool = False  # not a valid SASL response: fail it without asking


@dataclass(frozen=True, slots=True)
class AuthMalformed:
    """A notice: an AUTH exchange of ``mechanism`` ended, refused before
    any password check, on a response that is no SASL response (not
    base64, empty, no PLAIN message, a line too long, an AUTH command line
    its initial response made too long).  No user name was
    given that could be logged, but a client that only sends such
    responses must still leave a line a log watcher can act on."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    reply: Reply | None
