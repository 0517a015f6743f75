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
  does: ``txmailhub.downgrade`` has both encoders);
* other structured fields (Received, Message-ID, Date, References,
  In-Reply-To, Return-Path, MIME-Version, Content-Transfer-Encoding,
  Content-ID, DKIM/ARC signatures, ...): there is no safe 7-bit form
  (an encoded word there changes the meaning or breaks a signature):
  ``Unconvertible``;
* every other field (Subject, Comments, Content-Description, Keywords,
  X-... and other extension fields, unstructured per RFC 5322 3.6.8):
  the whole text becomes RFC 2047 encoded words.

Text that is valid UTF-8 is encoded as UTF-8; other octets are kept as
they are under the charset ``unknown-8bit`` (RFC 1428), never guessed.
A raw 8-bit octet is never returned.  This module knows nothing about
MIME bodies, files, SMTP or the queue.
"""

from __future__ import annotations

from email import policy as email_policy
from email.errors import HeaderParseError

from txmailhub.downgrade import encoded_words, parameter_field, unstructured_field

__all__ = ["Unconvertible", "encode_field"]

_ADDRESS_FIELDS = frozenset(
    name.lower() for name in (
        "From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Resent-From", "Resent-To",
        "Resent-Cc", "Resent-Bcc", "Resent-Sender", "Resent-Reply-To",
        "Disposition-Notification-To",
    )
)
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
# 76: lines with encoded words stay within RFC 2047's 76, the words within 75
_POLICY = email_policy.default.clone(utf8=False, linesep="\n", max_line_length=76)


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
        try:
            header = _POLICY.header_factory(name, text)
            if key in _ADDRESS_FIELDS:
                for address in header.addresses:
                    if not address.addr_spec.isascii():
                        raise Unconvertible(
                            f"the {name} field has a non-ASCII address (needs SMTPUTF8)")
            if key in _PARAMETER_FIELDS:
                folded = parameter_field(name, text)
                if folded is None:
                    raise Unconvertible(f"the {name} field cannot be re-encoded")
                out = (folded + "\n").encode("ascii")
            else:
                # token by token: the stdlib's refolding drops the
                # parentheses of a comment it encodes (RFC 2047 5(2) keeps
                # them), which turns the comment into part of an address
                out = _encode_address_field(name, text)
        except (HeaderParseError, UnicodeEncodeError, IndexError, ValueError) as e:
            if isinstance(e, Unconvertible):
                raise
            raise Unconvertible(f"the {name} field cannot be re-encoded: {e}") from None
        return out
    if key in _STRUCTURED_FIELDS:
        raise Unconvertible(f"the {name} field has 8-bit octets and no 7-bit form")
    value = _unfold_text(value_b)
    text, charset = _text(value)
    if charset == "utf-8":
        # the encoder POP3's downgrade uses: every character comes back
        # when decoded (email.header.Header turns NEL, U+2028, FF... into
        # a blank), each word within RFC 2047's 75 characters
        return (unstructured_field(name, text) + "\n").encode("ascii")
    return f"{name}: {_unknown_8bit_words(value)}\n".encode("ascii")


def _unknown_8bit_words(value: bytes) -> str:
    """RFC 2047 Q-encoded words of charset unknown-8bit, octets kept."""
    words = []
    piece = ""
    for octet in value:
        if 33 <= octet <= 126 and chr(octet) not in "=?_\"(),.:;<>@[\\]":
            token = chr(octet)
        elif octet == 32:
            token = "_"
        else:
            token = f"={octet:02X}"
        if len(piece) + len(token) > 45:
            words.append(piece)
            piece = ""
        piece += token
    words.append(piece)
    return "\n ".join(f"=?unknown-8bit?q?{w}?=" for w in words)


def _encode_address_field(name: str, text: str) -> bytes:
    """An address field with its non-ASCII quoted strings, comments and
    phrase atoms as encoded words, every other character as it is."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            token = text[i:j + 1]
            out.append(token if token.isascii() else encoded_words("".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j = 0, i
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            token = text[i:j + 1]
            out.append(token if token.isascii() else "(" + encoded_words(text[i + 1:j]) + ")")
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in '"(':
                j += 1
            run = text[i:j]
            if not run.isascii():
                # non-ASCII atoms of a phrase (the addresses were checked)
                run = " ".join(w if w.isascii() else encoded_words(w) for w in run.split(" "))
            out.append(run)
            i = j
    value = "".join(out)
    # fold at blanks outside the encoded words' own folds
    lines: list[str] = []
    line = f"{name}:"
    for piece in value.replace("\n ", " ").split(" "):
        if len(line) + 1 + len(piece) > 76 and line.strip():
            lines.append(line)
            line = ""
        line = f"{line} {piece}"
    lines.append(line)
    return ("\n".join(lines) + "\n").encode("ascii")
