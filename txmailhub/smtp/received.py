"""Trace header fields: Received (RFC 5321 4.4, RFC 3848) and Return-Path.

Owns the text of the trace fields the SMTP server writes at the start of
each spool file, before the body, in the stored form (LF line ends).  Pure
formatting: the caller supplies names, addresses, TLS details and the time
(from its injected clock).  Client-supplied text (the HELO name) is
reduced to safe characters so it can never break the header.

Return-Path records the reverse-path at final delivery (RFC 5321 4.4): the
SMTP server writes it into every spool file, so each local copy has it,
and the relay (``txmailhub.relay.attempt``) skips it when it sends a copy
onwards, because a relaying MTA must not pass one on.  The bounce code
uses ``return_path(None)`` (``Return-Path: <>``) the same way.
"""

from __future__ import annotations

import email.utils
import functools
import re

from txmailhub.address import Address, address_literal, ascii_domain
from txmailhub.address import client_ip as _ip_address

__all__ = ["MAX_HOPS", "HopCounter", "ReturnPathFilter", "header_separator", "protocol_name",
           "received", "return_path", "rfc5322_date", "tls_cipher_clause_name"]

# RFC 8314 4.3's tls-cipher is the cipher suite's name in the IANA TLS
# Cipher Suites registry ("TLS_" and letters, digits, "_").  OpenSSL gives
# that name for TLS 1.3's suites; for TLS 1.2 it gives its own
# ("ECDHE-RSA-AES256-GCM-SHA384"), so the suites the hub's servers accept
# (``txmailhub.tls.CIPHERS``) are mapped to the registry's names here -- a
# name neither form covers stays in the comment only.  ``openssl ciphers
# -stdname`` is the check (tests/test_smtp_received.py).
_TLS_CIPHER = re.compile(r"TLS_[A-Za-z0-9_]+")
_IANA_NAMES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


def tls_cipher_clause_name(cipher: str) -> str | None:
    """The registry's name of ``cipher`` (OpenSSL's name for it), for RFC
    8314 4.3's ``tls`` clause, or None when it has none we know."""
    name = _IANA_NAMES.get(cipher, cipher)
    if len(name) <= 80 and _TLS_CIPHER.fullmatch(name):
        return name
    return None


# RFC 5321 6.3: a message that has passed this many MTAs is in a loop
# ("a large rejection threshold, normally at least 100 Received entries").
MAX_HOPS = 100
_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)

# RFC 5322 3.6.8: a field name is printable US-ASCII except ":"; obsolete
# syntax (4.5.3) allows white space before the colon.
FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
# A Return-Path field and its continuation lines; the same, ending the piece
_RETURN_PATH = re.compile(rb"^return-path[ \t]*:.*\n(?:[ \t].*\n)*", re.I | re.M)
_RETURN_PATH_LAST = re.compile(rb"(?:\A|\n)return-path[ \t]*:.*\n(?:[ \t].*\n)*\Z", re.I)
_CONTINUATION = re.compile(rb"\A(?:[ \t].*\n)*")
# The start of a line that is neither a field nor a continuation line: the
# end of the header section (the empty line, or text sent without one)
HEADER_END = re.compile(rb"^(?![!-9;-~]+[ \t]*:|[ \t])", re.MULTILINE)

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]@]")
# RFC 5321 4.1.2 Domain: labels of letters, digits and inner hyphens.  Not
# underscores, though the address parser takes them: what we write must
# parse as the grammar says, and such a name is kept in the comment
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_HELO_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class HopCounter:
    """Counts the ``Received:`` fields of a message's header section as its
    data streams by (stored form, whole lines per piece): the loop check of
    RFC 5321 6.3.  Stops looking at the first empty line.  Data that does
    not start with a header field (text, or a continuation line with no
    field before it) has no header section: the hub stores it all as the
    body (``header_separator``), so it counts no hop, as
    ``ReturnPathFilter`` and the submission checks read it."""

    __slots__ = ("_first", "done", "hops")

    def __init__(self) -> None:
        self.hops = 0
        self.done = False
        self._first = True

    def feed(self, data: bytes) -> int:
        if self.done or not data:
            return self.hops
        first, self._first = self._first, False
        if data[:1] == b"\n" or (first and not FIELD_START.match(data)):
            # the empty line that ends the header section, or none at all
            self.done = True
            return self.hops
        found = HEADER_END.search(data)
        if found is not None and found.start() < len(data):
            self.done = True
            data = data[: found.start()]
        # C-speed counting first (a regex walks every position: several
        # times dearer on the hot path); the regex only for the obsolete
        # "Received :" spelling, when a colon-less match shows up
        low = data.lower()
        n = low.count(b"\nreceived") + low.startswith(b"received")
        if n:
            exact = low.count(b"\nreceived:") + low.startswith(b"received:")
            self.hops += exact if exact == n else len(_RECEIVED.findall(data))
        return self.hops


class ReturnPathFilter:
    """Drops the client's ``Return-Path`` fields from the header section
    as the data streams by (stored form, whole lines per piece).

    RFC 5321 4.4: the final delivery adds the one true Return-Path, and may
    remove others first; a message-originating system should send none.
    The hub is one or the other for every message it takes (final delivery
    for its domains, the first hop for its own users and networks), so a
    client's field would only stand next to ours in a mailbox, or be sent
    onwards under our Received field.  Data that does not start with a
    header field has no header section: it is left alone."""

    __slots__ = ("_first", "_inside", "done")

    def __init__(self) -> None:
        self.done = False
        self._first = True
        self._inside = False  # the last piece ended inside a Return-Path field

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return data
        first, self._first = self._first, False
        if data[:1] == b"\n" or (first and not FIELD_START.match(data)):
            # the empty line that ends the header section, or no header
            # section at all (the data starts with text)
            self.done = True
            return data
        found = HEADER_END.search(data)
        end = found.start() if found is not None and found.start() < len(data) else -1
        head, rest = (data, b"") if end < 0 else (data[:end], data[end:])
        self.done = end >= 0
        changed = False
        if self._inside:  # the field's continuation lines, from the last piece
            kept = _CONTINUATION.sub(b"", head, count=1)
            self._inside = not kept and not self.done
            changed = len(kept) != len(head)
            head = kept
        if b"return-path" not in head.lower():
            return head + rest if changed else data  # the common case: no copy
        self._inside = not self.done and bool(_RETURN_PATH_LAST.search(head))
        return _RETURN_PATH.sub(b"", head) + rest


@functools.lru_cache(maxsize=1024)
def _from(helo: str, client_ip: str) -> str:
    """The field's first line: the client's HELO name and its address.

    RFC 5321 4.4 wants a Domain or an address literal after "from"; an
    internationalized name goes in as its A-labels, which every reader of
    any message can take (RFC 6531 3.7.3 allows U-labels only in SMTPUTF8
    messages).  A name that is neither (a bare word with a slash, "<evil>",
    a broken literal) is still recorded, in a comment of safe characters
    after the address, which then stands in the name's place.

    A client without an IP address (a ``unix:`` listener's, "localhost")
    has no address literal to give, and TCP-info is one: the clause is
    left out, and "localhost" stands for a bad name, and for an address
    literal, which RFC 5321 4.4 allows only with TCP-info.  (Cached: a client's
    address and name are judged once, not per message.)"""
    source = None
    ip = _ip_address(client_ip)
    if ip is not None:
        # from the parsed address, not the peer's text: an IPv6 zone
        # ("fe80::1%eth0") would make it no RFC 5321 4.1.3 literal, and an
        # IPv4-mapped address is the IPv4 client it stands for
        source = f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip.compressed}]"
    # mapped whole, then judged (its 255-octet limit): a cut before the
    # mapping could leave a different name (IDNA drops soft hyphens)
    name = ascii_domain(helo[:1024]) if not helo.isascii() else helo
    if source is None:
        # an address literal alone is no Extended-Domain (RFC 5321 4.4: it
        # needs TCP-info after it), so without an address it is a comment
        if _valid_helo(name) and not name.startswith("["):
            return f"Received: from {name}"
        return f"Received: from localhost\n\t(HELO {_safe(name)})"
    if _valid_helo(name):
        return f"Received: from {name} ({source})"
    return f"Received: from {source} ({source})\n\t(HELO {_safe(name)})"


def _valid_helo(name: str) -> bool:
    if name.startswith("["):
        try:
            address_literal(name)
        except ValueError:
            return False
        return True
    return len(name) <= 255 and _HELO_DOMAIN.fullmatch(name) is not None


@functools.lru_cache(maxsize=16)
def _by(hostname: str) -> str:
    """The hub's own name as RFC 5321 4.4's By-domain (an Extended-Domain):
    a Domain has no root's dot (4.1.2), and an address literal (a valid
    ``[hub] hostname`` too) stands there only with TCP-info after it --
    the hub's address, which is that literal.  (The configuration judges
    the name without a final dot, so a literal may come with one too.)"""
    name = hostname.rstrip(".") or hostname
    if name.startswith("["):
        literal = _safe(name)
        return f"{literal} ({literal})"
    return _safe(name)


@functools.lru_cache(maxsize=1024)
def _safe(text: str, limit: int = 255) -> str:
    # cached: the host name, the client's address and its HELO name repeat
    # from message to message, and a regex substitution per field is not free
    return _UNSAFE.sub("?", text[:limit]) or "unknown"


def protocol_name(esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool = False) -> str:
    """The ``with`` keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848),
    or UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA when the transaction used
    SMTPUTF8 (RFC 6531 3.7.3)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received(
    *,
    hostname: str,
    helo: str,
    client_ip: str,
    protocol: str,
    message_id: str,
    when: float,
    tls: tuple[str, str] | None = None,
    recipient: Address | None = None,
) -> bytes:
    """One ``Received:`` field, folded, LF-terminated.

    ``tls`` is ``(version, cipher)`` when the session was encrypted: both
    in a comment after ``with``, as before, and the cipher suite again in
    RFC 8314 4.3's ``tls`` clause, an Additional-Registered-Clause of RFC
    5321 4.4, so after ``id`` and ``for`` -- the place a reader of the
    grammar looks for it, by the registry's name (a suite without one we
    know is left to the comment); ``recipient`` is named in the ``for`` clause (the server
    gives it only for a single-recipient transaction, so lists are not
    disclosed)."""
    lines = [_from(helo, client_ip)]
    by = f"\tby {_by(hostname)} (txmailhub) with {protocol}"
    if tls is not None:
        by += f" ({_safe(tls[0], 40)} cipher {_safe(tls[1], 80)})"
    lines.append(by)
    tail = f"\tid {message_id}"
    if recipient is not None:
        tail += f"\n\tfor <{recipient}>"
    clause = None if tls is None else tls_cipher_clause_name(tls[1])
    if clause is not None:
        tail += f"\n\ttls {clause}"
    date = _date(when)
    lines.append(f"{tail}; {date}")
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


_dates: dict[int, str] = {}


def rfc5322_date(when: float) -> str:
    """``when`` as an RFC 5322 date in UTC.  The zone is written "+0000":
    "-0000" would say the local zone is unknown, and "GMT" is an obsolete
    form a generator must not use (RFC 5322 3.3, 4.3)."""
    return email.utils.formatdate(when, localtime=False)[:-5] + "+0000"


def _date(when: float) -> str:
    """RFC 5322 date for ``when``, formatted once per second."""
    second = int(when)
    text = _dates.get(second)
    if text is None:
        if len(_dates) > 8:
            _dates.clear()
        text = _dates[second] = rfc5322_date(second)
    return text


def return_path(sender: Address | None) -> bytes:
    """``Return-Path: <sender>`` (``<>`` for the null reverse-path)."""
    return f"Return-Path: <{'' if sender is None else sender}>\n".encode("utf-8", "replace")


def header_separator(first_data: bytes) -> bytes:
    """What goes between our trace fields and the client's data.

    The trace fields are prepended to the client's header section.  When
    the data does not start with a header field (the seed's ``DATA`` is
    just "Hi Dave - ..."), the first line would otherwise be read as a
    malformed header; like Postfix and Sendmail we then end the header
    section with an empty line, so the text stays the body.  An empty
    first line already is that separator.  ``first_data`` is the first
    stored data (LF line ends), starting with at least one whole line or
    the whole message.
    """
    if not first_data or first_data[:1] == b"\n" or FIELD_START.match(first_data):
        return b""
    return b"\n"
