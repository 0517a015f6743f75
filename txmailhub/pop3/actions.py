"""What the POP3 engine asks its adapter to do: one action per command.

Immutable values, no behaviour.  ``txmailhub.pop3.server`` makes them;
``txmailhub.pop3.protocol`` performs them (writes, logins, message
streaming, STLS, the UPDATE state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Action", "Authenticate", "Send", "StartTLS", "Transmit", "Update"]


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` (after ``delay`` seconds); then close if ``close``.

    ``malformed_auth``: the answer to an AUTH response the engine refused
    itself, with no login tried (an initial response that made the AUTH
    command line longer than RFC 5034 4 allows): the adapter logs it for
    log watchers and counts it as a failed login of the address."""

    data: bytes
    close: bool = False
    delay: float = 0.0
    malformed_auth: bool = False


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Log in.  ``mechanism`` is ``"USER"``, ``"PLAIN"`` or ``"APOP"``.

    For USER and PLAIN ``secret`` is the password; for APOP it is the
    client's hex digest of ``timestamp + secret`` (ASCII).  ``username``
    is as the client typed it.

    ``unusable_name``: the name is one no user can have (RFC 6856 2.2:
    SASLprep refuses it), so the adapter fails the login without asking
    the portal -- logged, counted and delayed as any failed login, as SMTP
    AUTH fails the same PLAIN message (RFC 4954 4: a failed preparation
    "MUST fail the authentication"), and an APOP digest is a password
    as much; the log watchers of docs/deployment.rst see it as one.

    ``malformed``: a PLAIN message that asks to act as another user, which
    is not supported: the adapter fails the login without asking the
    portal (``login_failed``: counted and delayed as any failed login),
    logging it as a malformed response (no name: it gave none that is
    its own) -- or refuses it as any login where the address has too many
    failures."""

    mechanism: str
    username: str
    secret: bytes
    timestamp: str
    unusable_name: bool = False
    malformed: bool = False


class Transmit(NamedTuple):
    """Send ``head``, then message ``index`` in CRLF form, dot-stuffed,
    then ``.\\r\\n``.  ``body_lines`` is ``None`` for the whole message
    (RETR) or the TOP line count; ``mark_seen`` after a complete RETR.
    ``utf8``: the client issued UTF8 (RFC 6856); without it a message
    whose header section is UTF-8 goes with that section downgraded (RFC
    6857), RETR's ``head`` then made again for the octets sent, or is
    refused with ``-ERR [UTF8]`` where it has no downgraded form.
    ``size`` is the stored message's (its CRLF form).

    A ``NamedTuple`` rather than a frozen dataclass like the others: one
    is made per RETR, and building it costs a fraction (a frozen
    dataclass sets each field through ``object.__setattr__``)."""

    index: int
    size: int
    head: bytes
    body_lines: int | None
    mark_seen: bool
    utf8: bool = False


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Write ``data`` (the +OK), then start TLS; lines already received
    must be thrown away and a fresh engine built (RFC 2595 section 4)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Update:
    """UPDATE state: delete ``indices`` (may be empty), then report."""

    indices: tuple[int, ...]


Action = Send | Authenticate | Transmit | StartTLS | Update
