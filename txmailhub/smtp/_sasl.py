"""The SASL exchanges of SMTP AUTH: PLAIN (RFC 4616) and LOGIN.

Owns decoding the client's base64 responses and the prompts between them
(RFC 4954 section 4: ``334`` challenges; a ``*`` line in answer to one
cancels; ``=`` is an empty initial response, on the AUTH command line
only; an empty response, and a PLAIN message that is none, ends the
exchange with ``501 5.5.2`` before any password check).  It
only produces the username and password to check; whether they are
right is twisted.cred's business (through the adapter), and when AUTH is
allowed at all is the server engine's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from txmailhub.address import AddressError, login_key, parse_address
from txmailhub.smtp import replies
from txmailhub.smtp.reply import Reply

__all__ = ["MECHANISMS", "Credentials", "SASLExchange"]

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client sent; ``malformed`` ones fail without a check."""

    username: str
    password: str = field(repr=False)
    malformed: bool = False


class SASLExchange:
    """One AUTH exchange.  ``start`` and ``respond`` return either a
    ``Reply`` (a ``334`` prompt to send and wait, or the error that ends
    the exchange) or the ``Credentials`` to check."""

    def __init__(self, mechanism: str, primary_domain: str) -> None:
        self.mechanism = mechanism
        self.primary_domain = primary_domain
        self._username: bytes | None = None  # LOGIN's, as it came

    def start(self, initial: str) -> Reply | Credentials:
        """``initial`` is the AUTH command's argument after the mechanism,
        white space around it taken off: a command line's (RFC 5321
        4.1.1), where a continuation line keeps every octet."""
        if not initial:
            return replies.AUTH_CONTINUE if self.mechanism == "PLAIN" else replies.AUTH_USERNAME
        return self.respond(initial.encode("ascii", "replace"), initial=True)

    def respond(self, line: bytes, *, initial: bool = False) -> Reply | Credentials:
        """Take one response: a continuation line as it came, or (with
        ``initial``) the AUTH command's initial response.

        RFC 4954 8 gives the two their own grammar: ``initial-response =
        base64 / "="`` on the command line, ``[base64]`` or the
        ``cancel-response`` ``*`` on a line after a ``334``.  So ``=`` is an
        empty response only as the initial one (after a ``334`` an empty
        response is an empty line, and ``=`` is no base64), and ``*``
        cancels only in answer to a ``334`` (as the initial response it is
        no base64 either: there was no challenge to cancel)."""
        # RFC 4954 4: "MUST reject (and not ignore) any character not
        # explicitly allowed by the BASE64 alphabet" -- white space around
        # the response too (b64decode's validate refuses it, and a pad
        # anywhere but at the end, or alone)
        if line == b"*" and not initial:
            return replies.AUTH_CANCELLED
        try:
            data = b"" if line == b"=" and initial else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return replies.AUTH_INVALID_BASE64
        if not data:
            # An empty response (an empty line, or "=" as the initial
            # one): no step of PLAIN or LOGIN has nothing as a valid
            # answer, so it is malformed, not a password tried (see
            # AUTH_MALFORMED)
            return replies.AUTH_MALFORMED
        if self.mechanism == "LOGIN":
            if self._username is None:
                self._username = data
                return replies.AUTH_PASSWORD
            name, password = _utf8(self._username), _utf8(data)
            if name is None or password is None:
                return Credentials("", "", malformed=True)
            return Credentials(self._qualify(name), password)
        # RFC 4616 2: the message is UTF-8; one that is not fails the login
        # (RFC 4954 4: a failed preparation "MUST fail the authentication"),
        # and is no base64 error: it decoded
        text = _utf8(data)
        if text is None:
            return Credentials("", "", malformed=True)
        parts = text.split("\0")
        # authzid NUL authcid NUL passwd, the last two never empty (RFC 4616
        # 2's 1*SAFE): anything else is no PLAIN message at all (as POP3
        # answers it); acting for someone else is not allowed, but an
        # authzid naming the same user in another spelling (a bare name,
        # other case) is no such request (RFC 4616 2).
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return replies.AUTH_MALFORMED
        user = self._qualify(parts[1])
        if parts[0] and login_key(self._qualify(parts[0])) != login_key(user):
            return Credentials("", "", malformed=True)
        return Credentials(user, parts[2])

    def _qualify(self, username: str) -> str:
        """A bare local part means the primary domain (like everywhere)."""
        try:
            return str(parse_address(username, self.primary_domain))
        except AddressError:
            return username


def _utf8(data: bytes) -> str | None:
    """``data`` as UTF-8, or ``None`` when it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
