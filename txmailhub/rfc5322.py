"""RFC 5322 lexical pieces shared by the modules that read header fields.

Kept free of imports: the sendmail command loads it at start-up, and its
start-up time is measured (docs/sendmail.rst)."""

from __future__ import annotations

__all__ = ["CFWS", "MSG_ID", "comment_end", "escaped"]

# RFC 5322 3.2.3 dot-atom-text (runs of atext joined by dots), as a bytes
# pattern; octets above 127 count as atext (RFC 6532 3.2: an SMTPUTF8
# message may carry UTF-8 there)
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\xff]+"
_DOT_ATOM = _ATEXT + rb"(?:\." + _ATEXT + rb")*"
#: RFC 5322 3.6.4 msg-id without the comments and folding around it, as a
#: bytes pattern: id-left a dot-atom-text or (obsolete, 4.5.4) a
#: quoted-string, id-right a dot-atom-text or a literal
MSG_ID = (rb"<(?:" + _DOT_ATOM + rb'|"(?:[^"\\\n]|\\.)*")@(?:' + _DOT_ATOM
          + rb"|\[[!-Z^-~]*\])>")
#: RFC 5322 3.2.2 CFWS around a msg-id, as a bytes pattern: white space,
#: line folding and comments, but no nested comment or quoted-pair in one
#: (a field with such a comment reads as holding no single msg-id)
CFWS = rb"(?:\s|\([^()\\]*\))*"


def comment_end(text: str, i: int) -> int:
    """The index past the comment (RFC 5322 3.2.2: nested, with
    quoted-pairs) that starts with the ``(`` at ``i``; -1 when the text ends
    inside it.  Each caller decides what an unterminated comment means:
    the downgrade takes the rest of the field as the comment, the sendmail
    command leaves the field as written."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def escaped(text: str | bytes, i: int) -> bool:
    """Whether the character at ``i`` is the second half of a quoted-pair
    (RFC 5322 3.2.1): an odd number of backslashes stands right before it.
    A fold (CRLF before white space, 2.2.3) must not go between the two
    halves: "\\" CRLF SP is no quoted-pair of SP, and a reader that
    unfolds differently, or a DKIM "simple" header check, sees another
    field.  Folding code asks this of the blank it would fold before."""
    backslash = "\\" if isinstance(text, str) else 0x5C
    n = 0
    while i - n - 1 >= 0 and text[i - n - 1] == backslash:
        n += 1
    return n % 2 == 1
