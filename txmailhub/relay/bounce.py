"""Delivery status notifications (RFC 3464, RFC 6533) and the RFC 3461 rules.

Owns who is told what: ``wants_notice`` applies NOTIFY (NEVER, SUCCESS,
FAILURE, DELAY) and the rule that a message from the null sender ``<>``
is never bounced; ``build_dsn`` writes the multipart/report with the
stdlib ``email`` package (a human-readable part, a message/delivery-status
part naming each recipient with its Action, Status, Remote-MTA and the
remote's exact reply as Diagnostic-Code -- or, for a status this hub made
itself, its own account as an ``X-txmailhub`` Diagnostic-Code --, then
the original headers -- or
the whole message when RET=FULL and it is small enough), and, as a reply
to the original, ``In-Reply-To``/``References`` from its Message-ID
(``reply_fields``).  A notice about
a message sent with SMTPUTF8 is RFC 6533's internationalized one: a
message/global-delivery-status part with UTF-8 addresses and ENVID as
they are, the original as message/global-headers or message/global, and
an envelope that asks the next hop for SMTPUTF8.  ``send_dsn``
hands it to the normal delivery path (spooler, then
``txmailhub.delivery.accept_message``), from ``MAILER-DAEMON`` with the
null reverse-path.

It must not decide *when* to bounce (the runner does) nor touch the
queue's files.
"""

from __future__ import annotations

import dataclasses
import email.utils
import errno
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message
from email.mime.multipart import MIMEMultipart
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.address import Address, ascii_form, one_quoted_string
from txmailhub.envelope import Envelope
from txmailhub.errors import Rejected
from txmailhub.logsafe import shown_message
from txmailhub.regular_file import open_regular
from txmailhub.relay.record import QueueEntry, RecipientRecord, mta_name
from txmailhub.relay.reply_fields import reply_fields
from txmailhub.rfc5322 import escaped
from txmailhub.smtp.received import rfc5322_date
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.smtp.xtext import utf8_addr_encode, utf8_addr_unitext, xtext_encode

__all__ = [
    "DELAYED",
    "DELIVERED",
    "EXPANDED",
    "FAILED",
    "FULL_RETURN_LIMIT",
    "RELAYED",
    "DSNRefused",
    "build_dsn",
    "dsn_envelope",
    "is_global",
    "send_dsn",
    "status_of",
    "wants_notice",
]

log = Logger(namespace="txmailhub.relay.bounce")

FAILED = "failed"
DELAYED = "delayed"
DELIVERED = "delivered"
RELAYED = "relayed"
EXPANDED = "expanded"  # an alias of several members (RFC 3461 6.2.7.3)

FULL_RETURN_LIMIT = 1024 * 1024  # RET=FULL returns the whole message up to this size
MAX_HEADER_BYTES = 256 * 1024
_POLICY = email_policy.compat32.clone(linesep="\n")

_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    DELIVERED: "Successful Mail Delivery Report",
    RELAYED: "Successful Mail Delivery Report",
    EXPANDED: "Successful Mail Delivery Report",
}


class DSNRefused(Exception):
    """The notice could not be made durable anywhere (retry later)."""


def wants_notice(entry: QueueEntry, rcpt: RecipientRecord, action: str) -> bool:
    """Whether the sender asked (or by default gets) this notice (RFC 3461 4.1).

    Without NOTIFY the sender gets failures and delay warnings; NEVER
    silences all; SUCCESS-only gets no failure notice.  Nobody is told
    anything about a message from ``<>``."""
    if entry.envelope.sender is None:
        return False
    notify = {n.upper() for n in rcpt.notify}
    if "NEVER" in notify:
        return False
    if action == FAILED:
        return not notify or "FAILURE" in notify
    if action == DELAYED:
        return not notify or "DELAY" in notify
    return "SUCCESS" in notify


def status_of(reply: Reply | None, action: str) -> str:
    """The RFC 3463 status for a recipient's DSN block."""
    if reply is not None and reply.status:
        kind = reply.status[0]
        if action == FAILED and kind == "2":
            return "5.0.0"
        if action == DELAYED and kind == "5":
            # a 5xx the hub retries anyway (a host that would not talk to
            # it): a delay is a 4.x.x (RFC 3464 2.3.4)
            return "4" + reply.status[1:]
        if action == DELAYED and kind == "2":
            # a server whose enhanced code contradicts its reply ("450
            # 2.0.0"): the action says what happened, and a delay is no
            # success (RFC 3463 2: the class is the outcome)
            return "4.0.0"
        if action in (DELIVERED, RELAYED, EXPANDED) and kind != "2":
            return "2.0.0"  # the same, a "250 5.1.1": taken, so 2.x.x
        return reply.status
    if action in (DELIVERED, RELAYED, EXPANDED):
        return "2.0.0"
    # no enhanced code (none given, or a server without ENHANCEDSTATUSCODES):
    # the class the action allows -- a delay is 4.x.x whatever the code, a
    # failure never 2.x.x (as above); a 4yz kept to the end is 4.0.0
    if action == DELAYED:
        return "4.0.0"
    if reply is None or reply.code < 400:
        return "5.0.0"
    return f"{str(reply.code)[0]}.0.0"


def _printable_ascii(text: str) -> bool:
    """RFC 3461's "printable (graphic and white space)" US-ASCII: what an
    rfc822 ORCPT or an ENVID may hold, TAB included."""
    return all(" " <= c <= "~" or c == "\t" for c in text)


def is_global(entry: QueueEntry) -> bool:
    """Whether the notice about ``entry`` is RFC 6533's internationalized
    one (message/global-delivery-status, sent with SMTPUTF8).

    Only for a message sent with SMTPUTF8: its sender's system took part
    in a UTF-8 transaction, so it can take a UTF-8 notice back.  A
    7-bit transaction's notice stays message/delivery-status, a non-ASCII
    address in it (an alias's member) in the escaped utf-8-addr-xtext
    form RFC 6533 3 defines for exactly that case: the sender never asked
    for SMTPUTF8, and its mail system may not take an 8-bit notice."""
    return entry.envelope.smtputf8


def _raw(text: str) -> str:
    """``text`` for a header field the generator writes as UTF-8 octets,
    not as an RFC 2047 word (surrogates are how compat32 passes bytes
    through unfolded)."""
    return text.encode("utf-8").decode("ascii", "surrogateescape")


def _utf8_address(address: str, utf8: bool) -> str:
    """An address of RFC 6533's ``utf-8`` type in the form its part allows.

    RFC 6533 3: in message/delivery-status (7-bit) utf-8-addr-xtext, every
    character outside QCHAR as ``\\x{HEX}``; in message/global-delivery-status
    (``utf8``) the utf-8-address form, the address as it is.  Unless it
    holds a backslash -- a reader decoding the field would take a literal
    ``\\x{E9}`` for an escape --, a ``=?`` (the comment below), or a
    character no header line may carry raw (a control, a Unicode line
    separator): then utf-8-addr-unitext, which the RFC allows wherever
    utf-8-address is, UTF-8 kept and those escaped (an ``=`` as
    ``\\x{3D}``)."""
    if not utf8:
        return utf8_addr_encode(address)
    if address.isprintable() and "\\" not in address and "=?" not in address:
        return address
    return utf8_addr_unitext(address)


# A "=?" in a field's text starts an RFC 2047 encoded word to a reader
# that decodes them: Python's ``email`` (policy.default) does so in every
# field of a notice, the status part's blocks included, and in an
# address's local part, where RFC 2047 5(3) allows none.  The sender
# chooses ENVID, ORCPT, each RCPT address and its own address: written as
# they are, ``=?utf-8?q?postmaster=40bank.example?=`` in one of them is
# shown as another text (``postmaster@bank.example``), in a notice that
# comes from this hub's postmaster.  So no field of a notice holds a
# "=?" the sender chose: each is written in a form the field's own
# syntax reads back as the same value, with the "=" escaped
# (``_envelope_id``, ``_recipient_field``, ``_utf8_address``,
# ``_header_local``)


def _recipient_field(address: str, utf8: bool = False) -> str:
    """``rfc822; addr``, or for a non-ASCII address RFC 6533's ``utf-8;``
    address type (``_utf8_address``): never an RFC 2047 word, which would
    hide the address type from every parser (RFC 3464 2.3.2).  An ASCII
    address holding a ``=?`` is of the ``utf-8`` type too, ``=`` written
    ``\\x{3D}``: ``rfc822`` has no escape, and a reader decoding the
    field would show an encoded word's text in its place."""
    if address.isascii() and address.isprintable() and "=?" not in address:
        return f"rfc822; {address}"
    return "utf-8; " + _utf8_address(address, utf8)


def _header_local(local: str) -> str:
    """A local part (as ``Address`` keeps it) for an address in the
    notice's own header (``To``): as it is, but with a ``=?`` in it as a
    quoted string in which each such ``=`` is a quoted pair (``"\\=?"``).
    The same local part to RFC 5321 and 5322, which a reader does not
    take for the start of an RFC 2047 encoded word (Python's ``email``
    decodes one in a local part, quoted too, unless its ``=`` is
    escaped)."""
    if "=?" not in local:
        return local
    content = _QUOTED_PAIR.sub(r"\1", local[1:-1]) if one_quoted_string(local) else local
    escaped_content = content.replace("\\", "\\\\").replace('"', '\\"').replace("=?", "\\=?")
    return f'"{escaped_content}"'


_QUOTED_PAIR = re.compile(r"\\(.)")


# RFC 5322 2.1.1: no line of a message over 998 characters
_LINE_MAX = 998


def _original_recipient(orcpt: str, utf8: bool = False) -> str | None:
    """The Original-Recipient value for an ORCPT, in the type it came with
    (``utf8``: for a message/global-delivery-status part, see
    ``_recipient_field``); ``None`` when that field would be a line over
    ``_LINE_MAX`` octets.

    The escaped form can be nine times the raw one (``\\x{HEX}`` for a
    UTF-8 character, six characters for a ``+``), and an xtext address has
    no white space to fold at.  RFC 3461 6.3 asks for the field whenever
    ORCPT was given; RFC 5322 2.1.1 forbids the line, and a notice with
    it could be refused on its way back.  The field goes, the notice
    keeps Final-Recipient."""
    kind, _, value = orcpt.partition(";")
    kind, value = kind.strip() or "rfc822", value.strip()
    if kind.lower() == "utf-8":
        # in the 7-bit part always utf-8-addr-xtext (RFC 6533 3): "+", "=",
        # "\\" and SP escaped even in an ASCII address, or a reader decoding
        # the field gets another address; in the global part as it is, but
        # for a backslash (``_utf8_address``)
        field = "utf-8; " + _utf8_address(value, utf8)
    elif _printable_ascii(value) and "=?" not in value:
        field = f"{kind}; {value}"
    else:
        # (a "=?": as the utf-8 type, ``_recipient_field``)
        field = _recipient_field(value, utf8)
    if len("Original-Recipient: ") + len(field.encode("utf-8")) > _LINE_MAX:
        return None
    return field


def _envelope_id(envid: str, utf8: bool) -> str:
    """The Original-Envelope-Id value: the id as the sender spelled it
    (RFC 3464 2.2.1) where a header keeps it -- UTF-8 only in a
    message/global-delivery-status part (``utf8``: RFC 6533 lets its
    fields be UTF-8) --, or else as the xtext it came in: UTF-8 in the
    7-bit part (an RFC 2047 word would not be the id), a control
    character, white space at either end, which a header reader
    strips, or a ``=?``, which a reader would take for an RFC 2047 word's
    start (the xtext has ``+3D`` for the ``=``)."""
    if utf8:
        shown = all(c.isprintable() or c == "\t" for c in envid)
    else:
        shown = _printable_ascii(envid)
    if shown and envid.strip(" \t") == envid and "=?" not in envid:
        return envid
    return xtext_encode(envid)


_DIAGNOSTIC_MAX = 900  # octets of a remote reply kept in a field


def _diagnostic(kind: str, text: str, utf8: bool = False) -> str:
    """A Diagnostic-Code value: ASCII (other characters as ``\\x{HEX}``),
    at most ``_DIAGNOSTIC_MAX`` octets of the reply, folded at spaces
    (RFC 3464 allows it), so no line of the notice exceeds RFC 5322's
    limits whatever the remote server said.  A reply cut ends with
    ``...``, and the cut is never inside a character, nor inside the
    ``\\x{HEX}`` that stands for one.

    ``utf8``: for a message/global-delivery-status part, whose fields RFC
    6533 lets hold UTF-8 as RFC 6532 extends the header syntax (``text``
    included): a reply's UTF-8 (a server may answer in it in an SMTPUTF8
    transaction, RFC 6531) is kept as the server wrote it, as the part's
    addresses are;
    what no header line may carry raw -- a control character, a Unicode
    line or paragraph separator -- is escaped still, and so is every
    other character ``str.isprintable`` refuses: a format character (a
    bidi control, which reorders the text after it on screen, a
    zero-width one), a blank other than the space, a private-use or an
    unassigned code point.  The 7-bit part (RFC 3464's ``*text``, ASCII)
    escapes every character outside printable ASCII.

    In either, the ``=`` of a ``=?`` is ``\\x{3D}``: a reader decodes an
    RFC 2047 encoded word in a field's text (Python's ``email`` does), and
    the server's ``=?utf-8?q?=0D=0AFinal-Recipient:...?=`` would read as a
    line break and a field of the block, or as any character escaped
    here."""
    out: list[str] = []
    size = 0  # octets of ``out``
    whole = 0  # of the pieces in ``out``: how many fit with a "..." after them
    for i, c in enumerate(text):
        if c == "=" and text[i + 1 : i + 2] == "?":
            piece, octets = "\\x{3D}", 6
        elif " " <= c <= "~":
            piece, octets = c, 1
        elif utf8 and c.isprintable():
            piece, octets = c, len(c.encode("utf-8"))
        else:
            piece = f"\\x{{{ord(c):X}}}"
            octets = len(piece)
        size += octets
        if size > _DIAGNOSTIC_MAX:
            # cut at a piece: a character, or the whole escape of one
            text = "".join(out[:whole]) + "..."
            break
        if size <= _DIAGNOSTIC_MAX - 3:
            whole += 1
        out.append(piece)
    else:
        text = "".join(out)
    return _fold(f"{kind}; {text}", len("Diagnostic-Code: "))


def _fold(value: str, used: int) -> str:
    """``value`` folded to lines of about 76 octets (``used`` of the
    first taken by the field name; a UTF-8 character counts its octets,
    as RFC 6532 3.4 counts a line): a line break only before a run of
    blanks that a word follows, the whole run on the next line, so that
    unfolding gives ``value`` back blank for blank (RFC 5322 2.2.3), no
    line is all blanks (3.2.2) and none ends in a blank a transport or a
    refolding could drop, whatever runs of blanks the remote server's
    reply has.  (``_Generator`` writes the field as folded here: the
    stdlib's refolding drops a line's last blank.)"""
    lines: list[str] = []
    line = ""
    octets = 0  # of ``line``
    for piece in _PIECES.findall(value):  # a word with the blanks before it
        room = 76 - (used if not lines else 0)
        size = len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        # (never after a backslash that quotes the blank: RFC 5322 3.2.1)
        if (line and piece[:1] == " " and piece.strip(" ") and octets + size > room
                and not escaped(line, len(line))):
            lines.append(line)
            line = piece
            octets = size
        else:
            line += piece
            octets += size
    lines.append(line)
    return "\n".join(lines)


_PIECES = re.compile(r" *[^ ]+| +")
_ESCAPE = re.compile(r"\\x\{[0-9A-F]+\}")  # ``shown_message``'s


def _whom(recipients: Sequence[RecipientRecord]) -> str:
    """Who the notice is about, in words that agree with their number:
    the list follows, so the count is known and no "one or more" or
    "destination(s)" hedge is needed."""
    n = len(recipients)
    return "the recipient below" if n == 1 else f"the {n} recipients below"


def _human(entry: QueueEntry, recipients: Sequence[RecipientRecord], action: str,
           hostname: str, will_retry_until: float | None, full: bool = False) -> str:
    """The human-readable part (RFC 3464 2.1): what happened, to whom, and
    a line for each recipient.  The machine-readable part is
    ``_status_part``'s; nothing here is meant to be parsed."""
    whom = _whom(recipients)
    lines = [f"This is the mail system at {hostname}.", ""]
    if action == FAILED:
        lines += ["I'm sorry to have to inform you that your message could not",
                  f"be delivered to {whom}. "
                  + ("It is attached." if full else "Its headers are attached."),
                  ""]
    elif action == DELAYED:
        # whole sentences, a line each: the retry's sentence was cut after
        # "It will be retried", a line that read as finished (and had no
        # full stop when no date followed)
        lines += [f"Your message could not be delivered yet to {whom}."]
        if will_retry_until is not None:
            lines += [f"It will be retried until {rfc5322_date(will_retry_until)}.",
                      "You do not need to send it again.", ""]
        else:
            lines += ["It will be retried. You do not need to send it again.", ""]
    elif action == RELAYED:
        # RFC 3464 2.3.3: handed to a host that takes no responsibility for
        # reporting delivery -- not "successfully delivered", which it may
        # never be
        lines += [f"Your message was passed on for delivery to {whom}.",
                  "No delivery report will follow; you may still get a failure notice",
                  "from another mail system.", ""]
    else:
        lines += [f"Your message was successfully delivered to {whom}.", ""]
    for r in recipients:
        local = isinstance(r.last_reply, LocalReply)
        remote_mta = mta_name(r.remote_mta)
        # The hub's own account (a timeout, a check it made, its 454 for a
        # TLS or login it could not have) says so: "while talking to HOST:"
        # read as the host's reply, which it never sent
        if local:
            where = (f"this hub's own account (not {remote_mta}'s reply): " if remote_mta
                     else "this hub's own account: ")
        else:
            where = f"host {remote_mta} said: " if remote_mta else ""
        why = r.last_reply.text() if r.last_reply is not None else "no reason recorded"
        if action == EXPANDED:
            why = "delivered to the members of this alias"
            where = ""
        elif action in (DELIVERED, RELAYED):
            # relayed: the next hop does not offer DSN, or refused the
            # parameters of this message's request (the MAIL went again
            # without them): either way none went on
            why = ("delivery via " + remote_mta + (" (relayed: no DSN request went to the "
                   "next hop)" if action == RELAYED else "")) if remote_mta else "delivered"
            where = ""
        if action == FAILED and r.last_reply is not None and r.last_reply.is_transient:
            why += " (gave up: the message stayed in the queue too long)"
        # a server's reply may hold control characters (an ESC starts a
        # terminal escape sequence): shown as \x{HEX}, the rest of its
        # text (UTF-8 included) as it is -- a backslash before "x{" too:
        # the sender gets the reply as received (RFC 3464), not as
        # ``shown`` writes it for ``queue list`` (``\x{5C}``)
        why = shown_message(why)
        if len(why) > _DIAGNOSTIC_MAX:
            end = _DIAGNOSTIC_MAX - 3
            # never inside the \x{HEX} of a control character (at most
            # ten characters: one that holds ``end`` starts after end - 10)
            for m in _ESCAPE.finditer(why, end - 12, end + 12):
                if m.start() < end < m.end():
                    end = m.start()
            why = why[:end] + "..."
        # wrapped: a remote reply of many lines (joined) or one long line
        # must not give the notice a line no MTA accepts (RFC 5322 2.1.1)
        lines += textwrap.wrap(f"<{r.address}>: {where}{why}", width=76,
                               subsequent_indent="    ", break_long_words=True,
                               break_on_hyphens=False) or [""]
    lines.append("")
    return "\n".join(lines)


def _status_part(entry: QueueEntry, recipients: Sequence[RecipientRecord], action: str,
                 hostname: str, now: float, will_retry_until: float | None,
                 utf8: bool = False) -> Message:
    """The message/delivery-status part, or with ``utf8`` RFC 6533's
    message/global-delivery-status: the same fields, UTF-8 where an
    address or the ENVID has it."""
    # The fields in the order of RFC 3464 2.2's and 2.3's ABNF, which puts
    # Original-Envelope-Id before Reporting-MTA and Original-Recipient
    # before Final-Recipient: a reader that follows the grammar as written
    # finds each where it looks for it
    part = Message()
    head = Message()
    envid = entry.envelope.dsn.envid
    if envid:
        head["Original-Envelope-Id"] = _raw(_envelope_id(envid, utf8))
    # RFC 3461's "dns" MTA-name-type: the host's name, or for an MTA
    # known only by its address a domain-literal ("[192.0.2.1]"), as a
    # [hub] hostname or a next hop that is an address literal is written
    # (no other MTA-name-type is registered for an Internet host)
    head["Reporting-MTA"] = f"dns; {hostname}"
    head["Arrival-Date"] = rfc5322_date(entry.created)
    blocks = [head]
    for r in recipients:
        b = Message()
        if r.orcpt:
            original = _original_recipient(r.orcpt, utf8)
            if original is not None:
                b["Original-Recipient"] = _raw(original)
        b["Final-Recipient"] = _raw(_recipient_field(str(r.address), utf8))
        b["Action"] = action
        b["Status"] = status_of(r.last_reply, action)
        # RFC 3464 2.3.5: Remote-MTA keeps the "while talking to" of older
        # notices -- the host the attempt reached, whoever's words the
        # Diagnostic-Code holds (its type tells: ``smtp`` for the host's
        # reply, ``X-txmailhub`` for this hub's own account) -- and MUST NOT
        # be there when no remote MTA took part (a null MX, no host reached)
        if r.remote_mta:
            b["Remote-MTA"] = f"dns; {mta_name(r.remote_mta)}"
        if r.last_reply is not None and action not in (DELIVERED, EXPANDED):
            # the remote server's words, or this hub's own judgement
            local = not r.remote_mta or isinstance(r.last_reply, LocalReply)
            kind = "X-txmailhub" if local else "smtp"
            b["Diagnostic-Code"] = _diagnostic(kind, r.last_reply.text(), utf8)
        if r.last_attempt:
            b["Last-Attempt-Date"] = rfc5322_date(r.last_attempt)
        if action == DELAYED and will_retry_until is not None:
            b["Will-Retry-Until"] = rfc5322_date(will_retry_until)
        blocks.append(b)
    if utf8:
        part.set_type("message/global-delivery-status")
        # RFC 6533 6.4: this type MUST be labelled 8bit, ASCII content or
        # not (the 7-bit copy for a next hop without SMTPUTF8 re-encodes it)
        part["Content-Transfer-Encoding"] = "8bit"
    else:
        part.set_type("message/delivery-status")
    part.set_payload(blocks)
    return part


class _Generator(BytesGenerator):
    """The stdlib generator, writing a message/global-delivery-status part
    as it writes message/delivery-status (its blocks of fields, a blank
    line between them): RFC 6533 6 gives both one syntax, and the stdlib
    knows only the older type."""

    _handle_message_global_delivery_status = BytesGenerator._handle_message_delivery_status

    def _write_headers(self, msg: Message) -> None:
        # the multipart/report's Content-Type, its boundary set only now,
        # is some 110 characters on one line: folded between its
        # parameters (RFC 5322 2.1.1: lines SHOULD be at most 78; the
        # values hold no "; ")
        value = msg.get("Content-Type")
        if value is not None and len("Content-Type: ") + len(value) > 78 and "\n" not in value:
            msg.replace_header("Content-Type", value.replace("; ", ";\n "))
        for name, text in msg.raw_items():
            if name == "Diagnostic-Code":
                # folded by ``_fold`` already: compat32 would fold it again
                # and drop the blank that ends a line, the reply's own
                # trailing one included
                self._fp.write(f"{name}: {text}{self._NL}".encode("utf-8", "surrogateescape"))
            else:
                self._fp.write(self.policy.fold_binary(name, text))
        # a blank line always separates the fields from the body
        self.write(self._NL)

    def _handle_message_global_headers(self, msg: Message) -> None:
        # a header section, written as text/rfc822-headers is: its octets
        # (the stdlib would take a message/* payload for a message, or
        # refuse a text one with UTF-8 in it)
        self._handle_text(msg)

    # the returned message (RET=FULL): its octets too, as the sender sent
    # them (the only message/rfc822 or message/global part of a notice)
    _handle_message_rfc822 = _handle_message_global_headers
    _handle_message_global = _handle_message_global_headers


def _flatten(message: Message) -> bytes:
    out = BytesIO()
    _Generator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(message)
    return out.getvalue()


#: errors opening the message that pass (out of the process's or the
#: system's file descriptors, or of kernel memory)
_SHORTAGES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _header_section(lines: Iterable[bytes]) -> bytes:
    """The header section of the message whose ``lines`` these are (an
    open file, or a ``BytesIO`` of a message held already): the lines up
    to the empty one that ends it, at most ``MAX_HEADER_BYTES`` of them."""
    out = []
    size = 0
    for line in lines:
        if line in (b"\n", b"\r\n"):
            break
        size += len(line)
        if size > MAX_HEADER_BYTES:
            break
        out.append(line)
    return b"".join(out)


def build_dsn(
    entry: QueueEntry,
    recipients: Sequence[RecipientRecord],
    action: str,
    *,
    hostname: str,
    primary_domain: str,
    now: float,
    will_retry_until: float | None = None,
    message_id: str | None = None,
) -> bytes:
    """The DSN as message bytes (LF line endings, the stored form)."""
    if entry.envelope.sender is None:
        raise ValueError("never send a DSN about a message from the null sender")
    # the host's name without the root's dot ("mail.example.org." is a
    # valid [hub] hostname): the msg-id's right side is a dot-atom-text
    # (RFC 5322 3.6.4), and Reporting-MTA names it as Remote-MTA names a host
    hostname = mta_name(hostname) or hostname
    utf8 = is_global(entry)
    # RFC 6522 3: report-type names the subtype of the second part
    report = MIMEMultipart("report", policy=_POLICY,
                           report_type="global-delivery-status" if utf8 else "delivery-status")
    # ASCII wherever an address has an ASCII form (an IDN domain as its
    # A-label): the notice may travel where SMTPUTF8 is not offered
    daemon = Address("MAILER-DAEMON", primary_domain)
    report["From"] = f"Mail Delivery System <{ascii_form(daemon) or daemon}>"
    sender = entry.envelope.sender
    domain = (ascii_form(sender) or str(sender)).rpartition("@")[2]
    to = f"<{_header_local(sender.local)}@{domain}>"
    # A UTF-8 address goes in raw (RFC 6532; the notice travels with
    # SMTPUTF8, see dsn_envelope): an RFC 2047 word, which is what the
    # generator makes of a str, may not stand for an addr-spec (RFC 2047 5(3))
    report["To"] = _raw(to)
    report["Subject"] = _SUBJECTS[action]
    report["Date"] = rfc5322_date(now)
    report["Message-ID"] = message_id or email.utils.make_msgid("dsn", domain=hostname)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no autoresponder replies to it
    human = Message()
    human.set_type("text/plain")
    human.set_param("charset", "utf-8")
    full = _returns_full(entry, action)
    text = _human(entry, recipients, action, hostname, will_retry_until, full)
    human["Content-Transfer-Encoding"] = "8bit" if not text.isascii() else "7bit"
    human.set_payload(text.encode("utf-8").decode("ascii", "surrogateescape"))
    report.attach(human)
    report.attach(_status_part(entry, recipients, action, hostname, now, will_retry_until,
                               utf8))
    returned, header = _returned(entry, full, utf8)
    report.attach(returned)
    # a reply to the original (RFC 5322 3.6.4): after the notice's own
    # fields, from the header section read for the returned part above
    answered = reply_fields(header)
    if answered is not None:
        in_reply_to, references = answered
        if in_reply_to is not None:
            report["In-Reply-To"] = in_reply_to
        report["References"] = references
    if any(p["Content-Transfer-Encoding"] == "8bit" for p in report.get_payload()):
        # RFC 2045 6.4 and 2.7: a multipart's encoding is that of its
        # whole content, and 7bit, the default, is no longer true of it
        # once a part is 8bit (the 7-bit copy relabels it, ``mime7bit``)
        report["Content-Transfer-Encoding"] = "8bit"
    return _flatten(report)


def _returns_full(entry: QueueEntry, action: str) -> bool:
    """Whether the notice carries the whole message (RET=FULL, failures,
    at most ``FULL_RETURN_LIMIT``) rather than its headers."""
    if action != FAILED or (entry.envelope.dsn.ret or "").upper() != "FULL":
        return False
    try:
        return os.path.getsize(entry.message_path) <= FULL_RETURN_LIMIT
    except OSError:
        return False


def _returned(entry: QueueEntry, full: bool, utf8: bool) -> tuple[Message, bytes]:
    """The original: its headers, or with ``full`` all of it.  In a global
    notice (``utf8``) as RFC 6533's message/global-headers or
    message/global, which may carry UTF-8 header fields raw (RFC 6532
    3.7); otherwise text/rfc822-headers or message/rfc822.  With the
    part, the original's header section as read for it (at most
    ``MAX_HEADER_BYTES``; empty when it could not be read, but for a
    shortage of descriptors or memory, which is raised): the notice's
    ``In-Reply-To`` comes from there, with no read of its own."""
    path = entry.message_path
    if full:
        # the octets as stored, not parsed and generated again: that would
        # respace and refold fields, turn the fields after a line that is
        # no field into body, and may re-encode a multipart body (a
        # signature over the original would no longer verify)
        with open_regular(path) as f:  # (a FIFO: refused, not waited on)
            raw = f.read(FULL_RETURN_LIMIT + 1)
        part = Message()
        part.set_type("message/global" if utf8 else "message/rfc822")
        if not raw.isascii():
            # 8-bit octets inside: a message/rfc822 part says so (RFC 2046
            # 5.2.1), or it would claim the default, 7bit.  By the octets
            # returned, all of the message: not by the entry's eight_bit,
            # which BODY=8BITMIME sets on an all-ASCII message too -- such
            # a label made the notice claim 8-bit content it sends as 7-bit
            # (``dsn_envelope``: no BODY=8BITMIME for ASCII octets)
            part["Content-Transfer-Encoding"] = "8bit"
        if raw and not raw.endswith(b"\n"):
            # the line break before the boundary that follows is the
            # boundary's own (RFC 2046 5.1.1): the message's last line
            # keeps one of its own, as every stored message has
            raw += b"\n"
        part.set_payload(raw.decode("ascii", "surrogateescape"))
        return part, _header_section(BytesIO(raw))
    part = Message()
    part.set_type("text/rfc822-headers")
    try:
        with open_regular(path) as f:
            raw = _header_section(f)
    except OSError as e:
        if e.errno in _SHORTAGES:
            # out of descriptors or memory for now: the notice is made
            # again later (``notices``), not sent for good without the
            # headers that say which message it is about
            raise
        raw = b""
    if utf8 or not raw.isascii():
        # 8-bit octets inside; and RFC 6533 6.3 asks for 8bit on
        # message/global-headers "whenever possible"
        part["Content-Transfer-Encoding"] = "8bit"
    if utf8:
        # the same octets, under RFC 6533's type for UTF-8 header fields
        # (``_Generator`` writes it as text/rfc822-headers is written).
        # Not parsed and generated again: that respaces fields, and a line
        # that is no field would make the fields after it a body
        part.set_type("message/global-headers")
    part.set_payload(raw.decode("ascii", "surrogateescape"))
    return part, raw


def dsn_envelope(entry: QueueEntry, hostname: str, has_8bit: bool) -> Envelope:
    """The envelope of a notice about ``entry``: from ``<>`` to its sender.
    It keeps the message's id (the SMTP server's), so that a notice waiting
    in the queue is among the entries ``mailhub queue show <id>`` lists.

    SMTPUTF8 for a sender with no ASCII form, and for a global notice
    (``is_global``), which has UTF-8 in its parts and may have it in its
    returned header fields: the relay then asks the next hop for SMTPUTF8
    (and sends a 7-bit copy, RFC 6533 6's global types encoded, to one
    that lacks it)."""
    sender = entry.envelope.sender
    assert sender is not None
    return Envelope(
        sender=None,
        recipients=(Address(sender.local, sender.domain),),
        helo=hostname,
        client_address="",
        # a global notice's parts are labelled 8bit even when all ASCII
        # (RFC 6533 6.3, 6.4): sent as 8-bit (BODY=8BITMIME), or as the 7-bit
        # copy that relabels them, never with those labels in a 7-bit body
        body_8bit=has_8bit or is_global(entry),
        smtputf8=ascii_form(sender) is None or is_global(entry),
        message_id=entry.envelope.message_id,
    )


def _routed(router: Any, envelope: Envelope) -> Envelope:
    """``envelope`` with a local sender replaced by the mailboxes it leads
    to, as RCPT would have routed it: an alias's members, one spelling of a
    mailbox.  Raises ``Rejected`` for a local address that is no mailbox."""
    (rcpt,) = envelope.recipients
    if not router.is_local_domain(rcpt.domain):
        return envelope
    local, remote = router.resolve(rcpt)
    return dataclasses.replace(envelope, recipients=(*local, *remote))


def send_dsn(components: Any, envelope: Envelope, data: bytes) -> defer.Deferred:
    """Deliver notice ``data`` "through the normal path".

    A local sender is routed first (``_routed``).  Writes the notice to a
    spool file and gives it to ``txmailhub.delivery.accept_message``, which
    delivers it to the local mailboxes or hands it to the queue.  Fires
    once it is durable somewhere, saying where ("delivered to the mailbox"
    or "queued for delivery"), or with why it was dropped (a local sender
    that is no mailbox); errbacks ``DSNRefused`` otherwise."""
    from txmailhub.delivery import DELIVERED, accept_message
    from txmailhub.smtp.received import return_path

    try:
        envelope = _routed(components.router, envelope)
    except Rejected as e:
        if e.reply.is_transient:
            return defer.fail(DSNRefused(e.reply.text()))  # the users file is away: later
        # a local sender that is no mailbox (a forged or a removed one):
        # nobody to tell, and no Maildir made for nobody
        return defer.succeed(f"dropped, the sender is no local mailbox ({e.reply.text()})")
    try:
        writer = components.spooler.open()
        # "Return-Path: <>" for the local copy; the relay drops it when the
        # notice goes to another host.
        writer.write(return_path(envelope.sender))
        for i in range(0, len(data), 65536):
            writer.write(data[i : i + 65536])
        d = writer.finish()
    except Exception as e:
        return defer.fail(e)

    def spooled(message: Any) -> defer.Deferred:
        return accept_message(components, envelope, message)

    def accepted(results: dict) -> str:
        bad = [r for r in results.values() if not r.is_positive]
        if bad:
            raise DSNRefused(bad[0].text())
        if all(r is DELIVERED for r in results.values()):
            return "delivered to the mailbox"
        return "queued for delivery"

    return d.addCallback(spooled).addCallback(accepted)
