"""What the submission service adds to a message (RFC 6409 section 8).

A message submitted by a user's program is often incomplete: scripts that
talk SMTP by hand, and some libraries, send no ``Date`` or no
``Message-ID``.  RFC 5322 3.6 requires a Date field in every message and
asks for a Message-ID; RFC 6409 8.3 says an MSA SHOULD add a missing
Message-ID and 8.2 lets it add a missing Date.  Large receivers refuse
mail without a Message-ID, so a hub that relays such a message unchanged
gets it bounced.

``MissingFields`` watches the header section as the data streams into
the spool file (stored form, LF line ends, whole lines per piece, the
same pieces the trace code sees) and adds what is missing at the end of
the header section, where the order of fields does not matter (RFC 5322
3.6).  It holds nothing back but a Message-ID field that ends a piece
(its continuation lines may come in the next one; at most
``HOLD_LIMIT`` octets).  A Message-ID that is no msg-id is dropped and
replaced; so is one longer than ``HOLD_LIMIT``, which cannot be held
whole: no program writes one (a msg-id cannot be folded, and RFC 5322
2.1.1 limits a line to 998 octets), and judging it by its length is what
keeps the outcome the same wherever the pieces are cut.

Other fields the client sent are left as they are -- its ``Date`` too,
even one that is no RFC 5322 date-time.  RFC 6409 8.2 only allows (MAY)
an MSA to correct such a Date, section 8 asks to limit changes to clear
remedies, and the client's text is the only record of when the message
was written: readers parse dates leniently (RFC 5322 4.3 names zones
outside the grammar that are in use), so a strict check would replace
dates readers understand, and a second Date is not allowed (RFC 5322
3.6: at most one).

Because the hub changes the messages it submits, RFC 6409 4.2 has it make
sure the domains in their address header fields are fully qualified:
``HeaderDomains`` finds those that are not, on the same pieces, and the
adapter refuses that message, naming them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from txmailhub.rfc5322 import CFWS, MSG_ID
from txmailhub.sendmail_headers import ADDRESS_FIELDS, Unreadable, addr_specs
from txmailhub.smtp.received import FIELD_START, HEADER_END
from txmailhub.smtp.replies import _ECHO_MAX

__all__ = ["FIELD_LIMIT", "HOLD_LIMIT", "NAMED_LIMIT", "HeaderDomains", "MissingFields"]

# The longest Message-ID field held back while its continuation lines may
# still come (a real one is under a hundred octets); a longer one is no
# msg-id, wherever the pieces are cut
HOLD_LIMIT = 8192

_DATE = re.compile(rb"^date[ \t]*:", re.IGNORECASE | re.MULTILINE)
# Continuation lines at the start of a piece
_CONTINUATION = re.compile(rb"\A(?:[ \t].*\n)*")
# A Message-ID field with its continuation lines
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*\n(?:[ \t].*\n)*)", re.IGNORECASE | re.MULTILINE)
# RFC 5322 3.6.4 msg-id, with the comments and folding around it that 3.2.2
# allows (``rfc5322.MSG_ID``: UTF-8 octets too, RFC 6532 3.2)
_VALID_ID = re.compile(CFWS + MSG_ID + CFWS)


class MissingFields:
    """Adds ``Date`` and ``Message-ID`` to a header section that lacks them.

    ``date`` is an RFC 5322 date-time, ``message_id`` a msg-id with its
    angle brackets.  ``feed`` returns each piece to store in its place;
    once the data has ended, ``finish`` returns what is still to be added
    (a message that is all header section and no body)."""

    __slots__ = ("_date", "_dropping", "_first", "_held", "_message_id", "done", "seen_date",
                 "seen_id")

    def __init__(self, date: str, message_id: str) -> None:
        self._date = date
        self._message_id = message_id
        self._first = True
        self._held = b""  # a Message-ID field that may go on in the next piece
        # a Message-ID field over HOLD_LIMIT was dropped as it ended a
        # piece: its continuation lines, at the start of the next, go too
        self._dropping = False
        self.seen_date = False
        self.seen_id = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return data
        if self._dropping:
            end = _CONTINUATION.match(data).end()  # type: ignore[union-attr]
            if end == len(data):
                return b""  # the dropped field goes on
            self._dropping = False
            data = data[end:]
        if self._held:
            data, self._held = self._held + data, b""
        elif self._first and data[:1] != b"\n" and not FIELD_START.match(data):
            # No header section at all (the seed's DATA is just text): ours
            # becomes the whole of it, ended by an empty line, so the text
            # stays the body.
            self.done = True
            return self._missing() + b"\n" + data
        self._first = False
        # The header section ends at the first line that is neither a field
        # nor a field's continuation: the empty line, or text a script sent
        # without one ("Subject: x\nHello"), which readers take as the body.
        found = HEADER_END.search(data)
        ended = found is not None and found.start() < len(data)
        end = found.start() if found is not None and ended else len(data)
        head, rest = data[:end], data[end:]
        if not self.seen_date and _DATE.search(head):
            self.seen_date = True
        if not ended:
            # A Message-ID field that ends the piece may go on in the next
            # one (folded): it waits, so that where the pieces are cut never
            # changes what is kept.  Bounded: a longer one is no msg-id
            # (``_check_id``), dropped now with what follows of it.
            fields = list(_MESSAGE_ID.finditer(head))
            last = fields[-1] if fields else None
            if last is not None and last.end() == len(head):
                if len(head) - last.start() <= HOLD_LIMIT:
                    head, self._held = head[: last.start()], head[last.start() :]
                else:
                    self._dropping = True
                    head = head[: last.start()]
            return _MESSAGE_ID.sub(self._check_id, head)
        self.done = True
        head = _MESSAGE_ID.sub(self._check_id, head)
        missing = self._missing()
        if not missing:
            return head + rest
        # ours, then the empty line the section needs (text that ended it
        # without one now stays the body for every reader)
        return head + missing + (b"" if rest[:1] == b"\n" else b"\n") + rest

    def _check_id(self, match: re.Match[bytes]) -> bytes:
        """A whole Message-ID field: kept when its value is a msg-id and the
        field is no longer than ``HOLD_LIMIT``, else dropped (ours replaces
        it, RFC 6409 8.3)."""
        if len(match.group(0)) <= HOLD_LIMIT and _VALID_ID.fullmatch(match.group(1)):
            self.seen_id = True
            return match.group(0)
        return b""

    def finish(self) -> bytes:
        """What to append when the data ended inside the header section."""
        if self.done:
            return b""
        self.done = True
        held, self._held = self._held, b""
        return _MESSAGE_ID.sub(self._check_id, held) + self._missing()

    def _missing(self) -> bytes:
        out = b""
        if not self.seen_date:
            out += f"Date: {self._date}\n".encode("ascii")
        if not self.seen_id:
            out += f"Message-ID: {self._message_id}\n".encode("ascii")
        return out


# The longest address field that is checked (a real one is a few hundred
# octets); a longer one is passed as it came: cut, it could end inside a
# domain, and held whole it would cost the memory of a header of any size
FIELD_LIMIT = 65536

# The octets of unqualified domains collected for one refusal: past a
# reply line's 512 (RFC 5321 4.5.3.1.5) no more could be shown
NAMED_LIMIT = 512
# A name counts for at most what the reply shows of it (``replies._echo``
# cuts it to 200 octets): counted whole, one long name ended the search
# while the line still had room, and the reply named fewer than it could
# with no "..." to say so
_SHOWN_MAX = _ECHO_MAX

_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


class HeaderDomains:
    """Finds the domains that are not fully qualified in the address fields
    of a submitted message's header section (RFC 6409 4.2).

    An MSA that "examines or alters the message text in any way, except to
    add trace header fields ... MUST ensure that all domains in address
    header fields are fully qualified": the hub adds Date and Message-ID
    (``MissingFields``), so it refuses such a message (554 at the end of
    the data, 4.1 and 5.1), as it refuses one in the envelope -- it does not
    qualify it, which RFC 6409 8 warns against.  A domain counts as fully
    qualified when it has a dot, is an address literal, or is one of the
    hub's own (``is_local``), the envelope's rule.

    Every such domain is collected, once each in the order found, to the
    end of the header section: the refusal names them all, so that the
    user corrects the message once, not once per try.  Bounded: names past
    ``NAMED_LIMIT`` octets could not be shown in one reply line anyway
    (RFC 5321 4.5.3.1.5), so the search stops there.

    Fed the same pieces as ``MissingFields`` (stored form, LF line ends,
    whole lines per piece); keeps only the address field being read, up
    to ``FIELD_LIMIT`` octets.  ``feed`` and ``finish`` return the domains
    found once the header section has ended (or the bound was reached),
    else ``None``: ``None`` too when there were none."""

    __slots__ = ("_field", "_first", "_is_local", "_named", "_seen", "done", "unqualified")

    def __init__(self, is_local: Callable[[str], bool]) -> None:
        self._is_local = is_local
        self._field: bytearray | None = None  # the address field being read
        self._first = True
        self._seen: set[str] = set()  # the domains found, case-folded
        self._named = 0  # their octets, with a separator each
        self.done = False
        self.unqualified: list[str] = []

    def _result(self) -> tuple[str, ...] | None:
        return tuple(self.unqualified) if self.done and self.unqualified else None

    def feed(self, data: bytes) -> tuple[str, ...] | None:
        if self.done or not data:
            return self._result()
        first, self._first = self._first, False
        if first and not FIELD_START.match(data):
            # no header section (text, or a continuation line with no
            # field before it): the hub stores it all as the body, behind
            # a header section of its own (``header_separator``,
            # ``MissingFields``), so a "From:" further down is body text
            self.done = True
            return None
        found = HEADER_END.search(data)
        ended = found is not None and found.start() < len(data)
        if found is not None and ended:
            data = data[: found.start()]
        for line in data.split(b"\n"):
            if not line:
                continue  # the end of the piece
            if line[:1] in (b" ", b"\t"):
                field = self._field
                if field is not None:
                    field += b"\n" + line
                    if len(field) > FIELD_LIMIT:
                        self._field = None  # not checked, see FIELD_LIMIT
                continue
            self._check()
            if self.done:  # as many names as one reply can show
                return self._result()
            name = _FIELD_NAME.match(line)
            if (name is not None and name.group(1).lower() in ADDRESS_FIELDS
                    and len(line) <= FIELD_LIMIT):
                self._field = bytearray(line[name.end() :])
        if ended:
            self.finish()
        return self._result()

    def finish(self) -> tuple[str, ...] | None:
        """The data ended (in the header section, or after it)."""
        if not self.done:
            self._check()
            self.done = True
        return self._result()

    def _check(self) -> None:
        field, self._field = self._field, None
        if field is None:
            return
        try:
            # unfolded (RFC 5322 2.2.3), read as sendmail reads a local
            # submission's fields: comments, quoted strings, groups,
            # display names (encoded words too) are no addresses
            specs = addr_specs(bytes(field).replace(b"\n", b"").decode("utf-8"))
        except (UnicodeDecodeError, Unreadable):
            return  # no address list the hub can read with certainty: as it came
        for spec in specs:
            route, _, mailbox = spec.rpartition(":") if spec.startswith("@") else ("", "", spec)
            domains = [d.strip().lstrip("@") for d in route.split(",") if d.strip()]
            if "@" in mailbox:  # a bare name has no domain to qualify
                domains.append(mailbox.rpartition("@")[2])
            for domain in domains:
                bare = domain.rstrip(".")
                if bare.startswith("[") or "." in bare or self._is_local(bare):
                    continue
                key = bare.lower()  # "sales" and "sales." are one domain to name
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.unqualified.append(domain)
                self._named += min(len(domain.encode("utf-8")), _SHOWN_MAX) + 2
                if self._named > NAMED_LIMIT:
                    self.done = True
                    return
