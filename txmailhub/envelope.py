"""The envelope of a message and the handle to its spooled content.

These values travel from the SMTP server to the mailbox store and the
outbound queue; they carry no behaviour and touch no disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from txmailhub.address import Address

__all__ = ["DSNRequest", "Envelope", "RecipientDSN", "SpooledMessage"]


@dataclass(frozen=True, slots=True)
class RecipientDSN:
    """RFC 3461 per-recipient parameters, as the client gave them.

    ``orcpt`` is decoded (what notices and logs show); ``orcpt_raw`` is the
    ORCPT esmtp-value exactly as the client sent it (``addr-type;xtext``,
    escapes and case untouched), because RFC 3461 5.2.1 (d) wants the
    identical original-recipient-address on the RCPT that relays the
    message, and decoding then encoding again would not give it back
    (``+41`` becomes ``A``).  ``None`` when the hub made the ORCPT up (an
    alias) or the value comes from a record written before it was kept:
    the relay encodes ``orcpt`` then."""

    notify: tuple[str, ...] = ()  # e.g. ("SUCCESS", "FAILURE") or ("NEVER",)
    orcpt: str | None = None  # "rfc822;user@example.org", xtext-decoded
    orcpt_raw: str | None = None  # "rfc822;user+40x@example.org", as received


@dataclass(frozen=True, slots=True)
class DSNRequest:
    """RFC 3461 per-message parameters.

    ``envid`` is decoded (what notices and logs show); ``envid_raw`` is the
    ENVID esmtp-value exactly as the client sent it (xtext), relayed as it
    is (RFC 3461 5.2.1 (a): "the same associated esmtp-value"); ``None``
    from a record written before it was kept: the relay encodes ``envid``
    then."""

    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None
    envid_raw: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a message is from and for.

    ``sender`` is ``None`` for the null reverse-path ``<>`` (bounces).
    ``recipients`` are the final, routed addresses (aliases expanded).
    """

    sender: Address | None
    recipients: tuple[Address, ...]
    helo: str = ""
    client_address: str = ""
    authenticated_as: str | None = None
    body_8bit: bool = False
    smtputf8: bool = False
    dsn: DSNRequest = field(default_factory=DSNRequest)
    recipient_dsn: tuple[tuple[Address, RecipientDSN], ...] = ()
    # The id the SMTP server gave the message (its 250 and Received field),
    # carried into the queue so that an admin can find it there.
    message_id: str = ""
    # Addresses that expanded to several recipients and asked NOTIFY=SUCCESS:
    # they get one "expanded" notice each (RFC 3461 6.2.7.3), and their
    # members are not told to report success, which would name them all.
    expanded: tuple[tuple[Address, RecipientDSN], ...] = ()
    # Whether TLS carried the transaction (its log line; the trace header
    # reads the version and cipher from the connection itself).
    tls: bool = False
    # RFC 4954 5: the mailbox the hub vouches for as the one that submitted
    # the message -- the login of a client it authenticated itself, unless
    # that client said AUTH=<> or named someone else.  The relay passes it
    # on as AUTH=<mailbox> to a next hop that offers AUTH; ``None`` (mail
    # from outside, bounces, any doubt) goes as AUTH=<>: origin unknown.
    submitter: Address | None = None

    @property
    def sender_text(self) -> str:
        return "" if self.sender is None else str(self.sender)


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A complete, fsynced message file waiting to be delivered.

    The file holds the message as it will be stored: trace headers first,
    LF line endings, no dot-stuffing.  ``size`` is its length in octets and
    ``crlf_size`` the length once every LF becomes CRLF (what POP3 sends),
    so nobody needs to read the file to learn either.
    """

    path: str
    size: int
    crlf_size: int
