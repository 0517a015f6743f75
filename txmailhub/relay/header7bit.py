"""7-bit forms of header fields that hold raw 8-bit octets.

Owns one decision: how a single header field with octets above 127 is
sent to a server that has neither 8BITMIME nor SMTPUTF8 (see
``txmailhub.relay.mime7bit``, which calls ``encode_field`` for every such
field).  What is done, by kind of field:

* address fields (From, To, Cc, Bcc, Reply-To, Sender, the Resent-
  forms, Disposition-Notification-To): display names and comments become
  RFC 2047 encoded words; an address whose mailbox itself is not ASCII
  cannot be expressed in 7 bits (it needs SMTPUTF8, RFC 6531/6532):
  ``Unconvertible``;
* Content-Type and Content-Disposition: non-ASCII parameter values
  (file names) become RFC 2231 ``name*=utf-8''...`` values, a UTF-8
  comment encoded words inside its parentheses (as POP3's downgrade
  does: ``txmailhub.downgrade`` has both encoders); a multipart's
  Content-Type whose 7-bit form would name another type or boundary
  (``downgrade.keeps_boundary``: the delimiter lines go as stored) is
  ``Unconvertible``;
* other structured fields (Received, Message-ID, Date, References,
  In-Reply-To, Return-Path, MIME-Version, Content-Transfer-Encoding,
  Content-ID, DKIM/ARC signatures, ...): there is no safe 7-bit form
  (an encoded word there changes the meaning or breaks a signature):
  ``Unconvertible``;
* extension fields whose body is an address list (Mail-Followup-To,
  Mail-Reply-To, Errors-To, Return-Receipt-To, Apparently-To): as the
  address fields when all their addresses are ASCII, else as text;
* every other field (Subject, Comments, Content-Description, Keywords,
  X-... and other extension fields, unstructured per RFC 5322 3.6.8):
  the whole text becomes RFC 2047 encoded words, but for the encoded
  words it already has, kept as they are (``_text_field``).

The converter also calls ``encode_text_field`` for a field, 8-bit or
not, with a line over 998 octets that folding cannot break (RFC 5322
2.1.1): an unstructured field's text becomes encoded words as above,
any other field has no such form.

Text that is valid UTF-8 is encoded as UTF-8; other octets are kept as
they are under the charset ``unknown-8bit`` (RFC 1428), never guessed.
A raw 8-bit octet is never returned.  This module knows nothing about
MIME bodies, files, SMTP or the queue.
"""

from __future__ import annotations

import codecs
from email.errors import HeaderParseError

from txmailhub.downgrade import (
    Undowngradable,
    address_field,
    first_room,
    fold_field,
    keeps_boundary,
    kept_and_encoded,
    parameter_field,
    unstructured_field,
)
from txmailhub.rfc2047 import Q_ROOM, encoded_word_spans

__all__ = ["TextFieldStream", "Unconvertible", "encode_field", "encode_text_field",
           "readable_text"]

_ADDRESS_FIELDS = frozenset(
    name.lower() for name in (
        "From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Resent-From", "Resent-To",
        "Resent-Cc", "Resent-Bcc", "Resent-Sender", "Resent-Reply-To",
        "Disposition-Notification-To",
    )
)
# extension fields in use whose body is an address list: their display
# names are encoded as phrases when every address is ASCII, so no encoded
# word holds an address (RFC 2047 5(3)); otherwise they are text, as any
# extension field may be (5(1))
_LIST_FIELDS = frozenset(("mail-followup-to", "mail-reply-to", "errors-to",
                          "return-receipt-to", "apparently-to"))
_PARAMETER_FIELDS = frozenset(("content-type", "content-disposition"))
_STRUCTURED_FIELDS = frozenset(
    name.lower() for name in (
        "Received", "Message-ID", "Resent-Message-ID", "Date", "Resent-Date", "References",
        "In-Reply-To", "Return-Path", "MIME-Version", "Content-Transfer-Encoding",
        "Content-ID", "Content-Language", "DKIM-Signature", "ARC-Seal",
        "ARC-Message-Signature", "ARC-Authentication-Results", "Authentication-Results",
        "Received-SPF", "List-ID", "List-Unsubscribe", "List-Post", "List-Help",
        "List-Subscribe", "List-Owner", "List-Archive",
    )
)

# fields whose text is read by programs, not people: an encoded word
# there is no longer their value, however long their line (besides the
# address, parameter, list and structured fields above, every Content-
# field but Content-Description, the List-, Resent-, ARC- and DKIM-
# families and every signature, DomainKey-Signature (RFC 4870) or
# X-Google-DKIM-Signature: ``readable_text``).  Delivered-To is an
# addr-spec (RFC 9228) that MTAs compare to find mail loops, Author a
# mailbox list (RFC 9057); the netnews fields (RFC 5536) are read by the
# news servers a gateway hands the message to (Path is a long run
# without blanks)
_NOT_TEXT = frozenset(("keywords", "autocrypt", "autocrypt-gossip", "archived-at",
                       "original-recipient", "disposition-notification-options",
                       "auto-submitted", "mt-priority", "tls-required",
                       "require-recipient-valid-since", "thread-index",
                       "delivered-to", "author", "path", "newsgroups", "followup-to",
                       "xref", "supersedes", "injection-info"))
_NOT_TEXT_PREFIXES = ("content-", "list-", "resent-", "arc-", "dkim-")
_NOT_TEXT_SUFFIXES = ("-signature",)


def readable_text(key: str) -> bool:
    """Whether the field (``key``: its lower-case name) is unstructured
    text (RFC 5322 3.6.5 Subject and Comments, 3.6.8 extension fields
    such as X-...; RFC 2045 8 Content-Description) that RFC 2047 encoded
    words may stand for (RFC 2047 5(1))."""
    if key == "content-description":
        return True
    return not (key in _ADDRESS_FIELDS or key in _PARAMETER_FIELDS or key in _STRUCTURED_FIELDS
                or key in _LIST_FIELDS or key in _NOT_TEXT or key.startswith(_NOT_TEXT_PREFIXES)
                or key.endswith(_NOT_TEXT_SUFFIXES))


class Unconvertible(ValueError):
    """The message cannot be expressed in 7 bits (the reason says why)."""


def _text(raw: bytes) -> tuple[str, str]:
    """(text, charset): UTF-8 when valid, else the octets as unknown-8bit."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "unknown-8bit"


def _unfold(value: bytes) -> bytes:
    return b" ".join(line.strip(b" \t") for line in value.split(b"\n") if line.strip(b" \t"))


def _unfold_text(value: bytes) -> bytes:
    """An unstructured field's text, unfolded as RFC 5322 2.2.3 says (the
    line breaks go, the blanks stay: the text of an unstructured field is
    every character of it, trailing blanks included), without the blanks
    that separate it from the colon."""
    return value.replace(b"\r\n", b"\n").replace(b"\n", b"").lstrip(b" \t")


def encode_field(raw: bytes) -> bytes:
    """The 7-bit form of one header field (``raw``: "Name: value" with its
    continuation lines, LF line ends, the final LF included).

    Raises ``Unconvertible`` when the field has no safe 7-bit form."""
    name_b, sep, value_b = raw.partition(b":")
    name = name_b.decode("ascii", "replace").strip()
    if not sep or not name_b.isascii():
        raise Unconvertible("a header line with 8-bit octets is not a header field")
    key = name.lower()
    value = _unfold(value_b)
    if key in _ADDRESS_FIELDS or key in _PARAMETER_FIELDS:
        text, charset = _text(value)
        if charset != "utf-8":
            raise Unconvertible(f"the {name} field is not valid UTF-8")
        if key in _ADDRESS_FIELDS:
            # POP3's downgrade of an address field: a display name whole
            # as encoded words, each a word of its own, a comment's inside
            # with its parentheses kept (RFC 2047 5(2), 5(3)), the
            # addresses as they are.  (The stdlib's refolding drops a
            # comment's parentheses, and its parser fails on some
            # obsolete phrases; encoding the runs between quoted strings
            # made "Jörg<j@x.org>" one encoded word, its address inside.)
            try:
                return (address_field(name, text, strict=True) + "\n").encode("ascii")
            except Undowngradable:
                raise Unconvertible(
                    f"the {name} field has a non-ASCII address (needs SMTPUTF8)") from None
        try:
            folded = parameter_field(name, text)
        except (HeaderParseError, UnicodeEncodeError, IndexError, ValueError) as e:
            raise Unconvertible(f"the {name} field cannot be re-encoded: {e}") from None
        if folded is None:
            raise Unconvertible(f"the {name} field cannot be re-encoded")
        field = (folded + "\n").encode("ascii")
        if not keeps_boundary(raw, field):
            # the delimiter lines go as stored (``keeps_boundary``)
            raise Unconvertible(f"the 7-bit {name} field of a multipart loses its boundary "
                                "(or names another type)")
        return field
    if key in _STRUCTURED_FIELDS:
        raise Unconvertible(f"the {name} field has 8-bit octets and no 7-bit form")
    value = _unfold_text(value_b)
    if key in _LIST_FIELDS and _text(value)[1] == "utf-8":
        try:
            return (address_field(name, _unfold(value_b).decode("utf-8"), strict=True)
                    + "\n").encode("ascii")
        except Undowngradable:
            pass  # a UTF-8 mailbox: the field as text, below
    return (_text_field(name, value) + "\n").encode("ascii")


def encode_text_field(raw: bytes) -> bytes | None:
    """An unstructured field (``raw`` as for ``encode_field``) whose text
    is written as RFC 2047 encoded words, each at most 75 characters, on
    lines of at most 76 (RFC 2047 2); None for any other field.

    For a field with a line over 998 octets that folding cannot break (no
    white space in it, RFC 5322 2.1.1, 2.2.3): RFC 2047 decoding, with
    the blanks between adjacent encoded words dropped (6.2), gives its
    text back as a reader shows it (``_text_field``: every character,
    ASCII, a "=?" that is no encoded word and blanks included, an encoded
    word it has as what that stands for; no UTF-8 character is split
    between two words), octets that are not UTF-8 as ``unknown-8bit``
    (RFC 1428).  A field that is no text a
    person reads (``readable_text``) keeps its form: an encoded word
    there is not its value."""
    name_b, sep, value_b = raw.partition(b":")
    if not sep or not name_b.isascii():
        return None
    name = name_b.decode("ascii").strip(" \t")
    if not name or not readable_text(name.lower()):
        return None
    return (_text_field(name, _unfold_text(value_b)) + "\n").encode("ascii")


def _text_field(name: str, value: bytes) -> str:
    """``Name:`` and an unstructured field's text (``value``: unfolded,
    without the blanks after the colon) as encoded words, which decode to
    the text as an RFC 2047 reader shows it.

    UTF-8 text goes as POP3's downgrade writes it (``unstructured_field``:
    every character comes back when decoded, where email.header.Header
    turns NEL, U+2028, FF... into a blank), other octets as
    ``unknown-8bit``.  Either way an encoded word the text already has
    (``encoded_word_spans``) is kept as it is: encoded again, a reader
    would show its "=?...?=" instead of what it stands for.  The text
    between two of them is encoded with its blanks, as a reader shows
    them; blanks alone there are dropped by the reader (RFC 2047 6.2) and
    stay a separator.  Text of nothing but blanks has no encoded word
    (its encoded text would be empty, which RFC 2047 2 does not allow):
    the field is left empty."""
    if not value.strip(b" \t"):
        return f"{name}:"
    text, charset = _text(value)
    if charset == "utf-8":
        return unstructured_field(name, text)
    spans = encoded_word_spans(text)  # (latin-1: one character an octet)
    if not spans:
        return _unknown_8bit_field(name, value)
    words: list[str] = []
    pos = 0
    for start, end in spans:
        if value[pos:start].strip(b" \t"):
            words += _unknown_8bit_words(value[pos:start])
        words.append(text[start:end])
        pos = end
    if pos < len(value):  # (blanks at the end too: no encoded word before them drops them)
        words += _unknown_8bit_words(value[pos:])
    lines = [f"{name}:"]
    for word in words:  # each at most 75: a line of its own fits in 76
        if len(lines[-1]) + 1 + len(word) > 76:
            lines.append("")
        lines[-1] += " " + word
    return "\n".join(lines)


def _unknown_8bit_field(name: str, value: bytes) -> str:
    """``Name: value`` as RFC 2047 Q-encoded words of charset unknown-8bit,
    octets kept: each word at most 64 characters, each line at most 76
    (RFC 2047 2), the first word made shorter to fit beside the name, or
    on a line of its own when the name leaves no room."""
    room = min(45, 76 - len(name) - len(": =?unknown-8bit?q??="))
    alone = room < 3  # not even one =XX beside the name
    encoded = "\n ".join(_unknown_8bit_words(value, 45 if alone else room))
    return f"{name}:\n {encoded}" if alone else f"{name}: {encoded}"


def _unknown_8bit_words(value: bytes, room: int = 45) -> list[str]:
    """``value`` as Q-encoded words of charset unknown-8bit (octets kept),
    each with at most 45 characters of encoded text, the first with at
    most ``room`` (at least 3: one ``=XX``)."""
    words = []
    piece = ""
    for octet in value:
        if 33 <= octet <= 126 and chr(octet) not in "=?_\"(),.:;<>@[\\]":
            token = chr(octet)
        elif octet == 32:
            token = "_"
        else:
            token = f"={octet:02X}"
        if piece and len(piece) + len(token) > room:
            words.append(piece)
            piece = ""
            room = 45
        piece += token
    words.append(piece)
    return [f"=?unknown-8bit?q?{w}?=" for w in words]


# the text a ``TextFieldStream`` encodes at a time (characters), and the
# most it holds when it finds no place to cut its text
_PIECE = 4096
_PIECE_MAX = 65536


class TextFieldStream:
    """An unstructured field too long to hold (``readable_text``) written
    as RFC 2047 encoded words a piece at a time, in bounded memory: the
    field's octets go in (``feed``, from just after the colon on, folded
    lines and all, in pieces of any size), its 7-bit form comes out, each
    encoded word at most 75 characters, each line at most 76 (RFC 2047 2).

    Decoded, the words give the same text as ``encode_text_field`` gives
    for the field held whole: the text is cut into pieces only where that
    changes nothing an RFC 2047 reader shows (``_cut``: never inside an
    encoded word the text has, nor at a blank, whose meaning next to such
    a word depends on what is around it), and the encoded words of
    adjacent pieces join without a blank in between (RFC 2047 6.2).
    ``utf8``: the whole text is valid UTF-8 (the caller looked ahead),
    else its octets go as ``unknown-8bit`` (RFC 1428), as ``_text_field``
    does.  A text with no place to cut in ``_PIECE_MAX`` characters (a
    run of "=?=?..."): ``Unconvertible``."""

    def __init__(self, name: str, utf8: bool) -> None:
        self.name = name
        self.utf8 = utf8
        self.decoder = codecs.getincrementaldecoder("utf-8" if utf8 else "latin-1")()
        self.buf = ""  # text not encoded yet
        self.line = ""  # the last line of the output so far, not written yet
        self.started = False  # the blanks after the colon are behind
        self.cr = False  # the octets fed last ended in a CR (a CRLF's, maybe)

    def feed(self, data: bytes) -> bytes:
        if self.cr:
            data = b"\r" + data
        self.cr = data.endswith(b"\r")
        if self.cr:
            data = data[:-1]
        self._add(data.replace(b"\r\n", b"").replace(b"\n", b""), False)
        out: list[str] = []
        while len(self.buf) >= _PIECE + 80:
            cut = _cut(self.buf)
            if cut is None:
                if len(self.buf) > _PIECE_MAX:
                    raise Unconvertible(f"the {self.name} field has text too long to cut "
                                        "into encoded words")
                break
            out.append(self._encode(self.buf[:cut]))
            self.buf = self.buf[cut:]
        return "".join(out).encode("ascii")

    def finish(self) -> bytes:
        self._add(b"\r" if self.cr else b"", True)
        self.cr = False
        if not self.line and not self.buf:
            return f"{self.name}:\n".encode("ascii")  # blanks only (``_text_field``)
        out = self._encode(self.buf) if self.buf else ""
        self.buf = ""
        return (out + self.line + "\n").encode("ascii")

    def _add(self, data: bytes, final: bool) -> None:
        try:
            text = self.decoder.decode(data, final)
        except UnicodeDecodeError:
            raise Unconvertible(f"the {self.name} field changed while it was read") from None
        if not self.started:
            text = text.lstrip(" \t")
            self.started = bool(text)
        self.buf += text

    def _encode(self, piece: str) -> str:
        """``piece`` as encoded words after the output so far: the lines
        it completes (the last is kept: the next piece may go on it)."""
        first = not self.line
        if self.utf8:
            words = kept_and_encoded(piece, encoded_word_spans(piece),
                                      first_room(self.name) if first else Q_ROOM)
        else:
            value = piece.encode("latin-1")
            found: list[str] = []
            pos = 0
            for start, end in encoded_word_spans(piece):
                if value[pos:start].strip(b" \t"):
                    found += _unknown_8bit_words(value[pos:start])
                found.append(piece[start:end])
                pos = end
            if pos < len(value):
                found += _unknown_8bit_words(value[pos:])
            words = " ".join(found)
        lines = fold_field(self.name, words, self.line).split("\n")
        self.line = lines.pop()
        return "".join(line + "\n" for line in lines)


def _cut(text: str) -> int | None:
    """Where ``text`` (an unstructured field's text, unfolded) may be cut
    into two pieces encoded apart, at least 80 characters before its end
    (an encoded word near the cut is seen whole): the last place before a
    character that is no blank, not inside an encoded word the text has,
    and neither just after one's "?=" nor just before one's "=?" (each
    piece sees the same encoded words as the whole).  The first piece
    then ends in what is not dropped, the second starts with text."""
    inside = bytearray(len(text) + 1)
    for start, end in encoded_word_spans(text):
        inside[start + 1:end] = b"\x01" * (end - start - 1)
    for p in range(len(text) - 80, 0, -1):
        if (text[p] not in " \t" and not inside[p] and not text.startswith("=?", p)
                and not text.startswith("?=", p - 2)):
            return p
    return None
