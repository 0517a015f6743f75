"""Bare names in the address header fields of a local submission, made
full addresses: ``To: joe`` becomes ``To: joe@example.org``.

Programs that hand mail to ``sendmail`` (``mail -s hi joe``, cron's
``From: root``) write the names of local users, as they were on a host
whose mail never left it.  The envelope already reads such a name as
``name@<primary domain>``; the header fields must say the same, or a
recipient elsewhere sees (and answers) an address that means nothing
to its own host.  sendmail and Postfix qualify them for local
submissions the same way.

Owns that rewrite, one field at a time: an RFC 5322 address list
(or group) read as tokens, ``@domain`` inserted after each bare local
part, the rest of the field left byte for byte (but for a space after
a comma between addresses, where a line too long has nowhere else to
be folded).  The same reading gives
the envelope its recipients (``addr_specs``: each mailbox's addr-spec,
which the hub's path grammar then judges), in one pass over a field of
any size; the submission service reads the domains of a submitted
message's address fields with it too (``txmailhub.smtp.msa``).  When the field cannot
be read with certainty (a bare CR, an unbalanced quote, a phrase with
no address, octets that are not UTF-8), it is left exactly as it came:
a field the command does not understand is the writer's to answer for,
but one the command mangled would be the command's fault.
"""

from __future__ import annotations

import heapq
import io
import itertools
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from txmailhub.rfc5322 import comment_end

__all__ = ["ADDRESS_FIELDS", "MAX_LINE", "Unreadable", "addr_specs", "qualify_field"]

#: the header fields whose bare local parts are qualified (lower case):
#: RFC 5322 3.6.2, 3.6.3 and 3.6.6, and the two that name where a receipt
#: goes (RFC 8098's Disposition-Notification-To, the older Return-Receipt-To)
ADDRESS_FIELDS = frozenset({
    b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
    b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc",
    b"return-receipt-to", b"disposition-notification-to",
})
#: octets of a line before its CRLF (RFC 5322 2.1.1)
MAX_LINE = 998

_ATEXT_ASCII = frozenset("!#$%&'*+-/=?^_`{|}~")
_SPECIALS = frozenset("<>,:;@.")
_WORDS = ("atom", "quoted", "encoded")
#: an RFC 2047 encoded word: a word of a phrase, whatever its text holds
#: (a "," some encoders leave in "=?utf-8?q?Bloggs,_Joe?="), never a
#: local part (RFC 2047 5: no addr-spec holds one)
_ENCODED_WORD = re.compile(r"=\?[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+\?[BbQq]\?[\x21-\x3e\x40-\x7e]*\?=")


class _Doubt(Exception):
    """The field is not an address list this module can read with certainty."""


class _Token(NamedTuple):
    kind: str  # "atom", "quoted", "encoded", "literal", or the special character itself
    start: int
    end: int


def _atext(c: str) -> bool:
    if c.isascii():
        return c.isalnum() or c in _ATEXT_ASCII
    # RFC 6532 3.2: UTF8-non-ascii (no C1 control, no line separator)
    return not "\x80" <= c <= "\x9f" and c not in "\u2028\u2029"


def _closing(text: str, i: int, close: str) -> int:
    """The index past the quoted string or domain literal opened at ``i``."""
    n = len(text)
    i += 1
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == close:
            return i + 1
        if c == "\r" and text[i + 1:i + 2] != "\n":
            raise _Doubt
        i += 1
    raise _Doubt


def _tokens(text: str) -> Iterator[_Token]:
    """The significant tokens of a field's value (white space, folds and
    comments are skipped: they stay in the text as they are), one at a
    time: a field can be megabytes, and its tokens held at once dozens
    of times that."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\r":
            if text[i + 1:i + 3] not in ("\n ", "\n\t"):
                raise _Doubt  # only a fold may hold a line end
            i += 2
        elif c == "(":
            i = comment_end(text, i)
            if i < 0:
                raise _Doubt
        elif c == '"':
            end = _closing(text, i, '"')
            yield _Token("quoted", i, end)
            i = end
        elif c == "[":
            end = _closing(text, i, "]")
            yield _Token("literal", i, end)
            i = end
        elif c in _SPECIALS:
            yield _Token(c, i, i + 1)
            i += 1
        elif c == "=" and (word := _ENCODED_WORD.match(text, i)):
            # taken whole, as decoders (and the envelope's parser) read it:
            # split at a "," in it, its start would pass for a bare name
            yield _Token("encoded", i, word.end())
            i = word.end()
        elif _atext(c):
            start = i
            while i < n and _atext(text[i]):
                i += 1
            yield _Token("atom", start, i)
        else:
            raise _Doubt  # a backslash, a stray ")" or "]", a control character


def _bare_local_part(tokens: list[_Token]) -> _Token | None:
    """The local part ``tokens`` are when they are one with no domain (a
    dot-atom or a quoted string, written without space inside), None when
    they hold an ``@`` (qualified already, or a route) or nothing (``<>``,
    an empty list element); raise ``_Doubt`` for anything else."""
    if not tokens or any(t.kind == "@" for t in tokens):
        return None
    kinds = [t.kind for t in tokens]
    if kinds != ["quoted"]:
        if kinds[::2] != ["atom"] * len(kinds[::2]) or kinds[1::2] != ["."] * len(kinds[1::2]) \
                or kinds[-1] != "atom":
            raise _Doubt  # a phrase without an address ("Joe Bloggs"), "a..b", "a."
        if any(a.end != b.start for a, b in itertools.pairwise(tokens)):
            raise _Doubt  # "joe . smith": obsolete syntax, better left alone
    return _Token("local", tokens[0].start, tokens[-1].end)


def _mailbox(tokens: list[_Token]) -> _Token | None:
    """The bare local part of one mailbox (``joe``, ``Joe <joe>``), or None."""
    opening = [i for i, t in enumerate(tokens) if t.kind == "<"]
    if not opening:
        return _bare_local_part(tokens)
    i = opening[0]
    if len(opening) > 1 or tokens[-1].kind != ">" or [t.kind for t in tokens].count(">") != 1:
        raise _Doubt
    if any(t.kind not in (*_WORDS, ".") for t in tokens[:i]):
        raise _Doubt  # a display name is words (and the dots of obs-phrase)
    return _bare_local_part(tokens[i + 1:-1])


def _segments(text: str, commas: array[int] | None = None) -> Iterator[list[_Token]]:
    """The tokens of each element of an address list (a mailbox, or one
    inside a group; an empty one too, for ``a,,b`` or ``team:;``), one
    element at a time; where each comma between elements ends, added to
    ``commas``.  Raise ``_Doubt`` when the list's structure is not one: a
    group in a group or with no ``;``, a ``<`` not closed."""
    segment: list[_Token] = []
    in_angle = in_group = group_ended = False
    for token in _tokens(text):
        if group_ended and token.kind != ",":
            raise _Doubt  # "team: a; b": a group ends a list element
        group_ended = False
        if in_angle:
            segment.append(token)
            in_angle = token.kind != ">"
        elif token.kind == ",":
            if commas is not None:
                commas.append(token.end)
            yield segment
            segment = []
        elif token.kind == ":":
            if in_group or not segment or any(t.kind not in (*_WORDS, ".") for t in segment):
                raise _Doubt
            segment = []
            in_group = True
        elif token.kind == ";":
            if not in_group:
                raise _Doubt("separate them with commas")  # "a@x;b@y"
            yield segment
            segment = []
            in_group, group_ended = False, True
        else:
            if token.kind == ">":
                raise _Doubt
            segment.append(token)
            in_angle = token.kind == "<"
    if in_angle or in_group:
        raise _Doubt  # "<joe", "team: ann, bob" with no ";"
    yield segment


def _bare_local_parts(text: str, commas: array[int] | None = None) -> array[int]:
    """Where each bare local part in an address list (groups included)
    starts and ends, as pairs (compact: a field can hold millions); where
    each comma between addresses ends, added to ``commas``."""
    found = array("q")
    for segment in _segments(text, commas):
        local = _mailbox(segment)
        if local is not None:
            found.extend((local.start, local.end))
    return found


class Unreadable(ValueError):
    """Text that is no address list: its message says what is wrong."""


#: the tokens an addr-spec (or a route-addr's path) is made of
_ADDR_SPEC = frozenset({"atom", "quoted", "literal", ".", "@", ",", ":"})


def _addr_spec(text: str, segment: list[_Token]) -> str | None:
    """The addr-spec of one list element as written, less its white
    space and comments (``"a b"@x``, ``joe``, ``@r:joe@x`` in angle
    brackets); None for an empty element."""
    if not segment:
        return None
    kinds = [t.kind for t in segment]
    if "<" in kinds:
        i = kinds.index("<")
        if kinds.count("<") != 1 or kinds[-1] != ">" or kinds.count(">") != 1:
            raise Unreadable("separate them with commas")  # "<a@x> b@y"
        if "@" in kinds[:i]:
            raise Unreadable("separate them with commas")  # "a@x <b@y>"
        if any(k not in (*_WORDS, ".") for k in kinds[:i]):
            raise Unreadable("a display name is words")
        inner = segment[i + 1:-1]
        if not inner:
            raise Unreadable("<> is no mailbox")
    else:
        inner = segment
        if kinds.count("@") > 1:
            raise Unreadable("separate them with commas")
    if any(t.kind not in _ADDR_SPEC for t in inner):
        raise Unreadable("no address in it (a display name needs <address>)")
    # words next to each other are no addr-spec: "a@x b@y" (or a name
    # that was meant to be one, "two words@x"); a quoted string beside
    # an atom ("a b" c@x) either
    words = ("atom", "quoted", "literal")
    if any(a.kind in words and b.kind in words for a, b in itertools.pairwise(inner)):
        raise Unreadable("no address in it (a display name needs <address>)")
    return "".join(text[t.start:t.end] for t in inner)


def addr_specs(text: str) -> list[str]:
    """The addr-spec of each mailbox in an address list (RFC 5322 3.4:
    ``a@x, Bob <b@y>``, groups, comments, bare local parts), each as
    written but for the white space and comments in it, for the hub's
    path grammar to judge (``txmailhub.smtp._parse``): this reads only
    the list's structure.  Raise ``Unreadable`` for text that is no
    list of mailboxes, and for addresses not separated by commas
    (``a@x b@y``), which a lenient reader would skip or run together.

    One pass over the text, its tokens never held at once: a ``To`` of
    a hundred thousand names is read in linear time."""
    found = []
    try:
        for segment in _segments(text):
            spec = _addr_spec(text, segment)
            if spec is not None:
                found.append(spec)
    except _Doubt as e:
        raise Unreadable(str(e) or "not an address list (an unbalanced quote, bracket or "
                         "parenthesis, a control character, a group without ';'?)") from None
    return found


def _folded(line: bytes) -> list[bytes] | None:
    """``line`` as lines of at most ``MAX_LINE`` octets, each cut made
    before white space it has (RFC 5322 2.2.3: unfolding gives it back)
    and no line left blank; None when it has too little white space.
    White space after a backslash is not cut before: it may be the
    second half of a quoted-pair (``"a\\ b"``), which no fold may split."""
    pieces = []
    while len(line) > MAX_LINE:
        cut = max(line.rfind(b" ", 1, MAX_LINE + 1), line.rfind(b"\t", 1, MAX_LINE + 1))
        while cut > 0 and (line[cut - 1:cut] == b"\\"
                           or not (line[:cut].strip() and line[cut:].strip())):
            cut = max(line.rfind(b" ", 1, cut), line.rfind(b"\t", 1, cut))
        if cut <= 0:
            return None
        pieces.append(line[:cut])
        line = line[cut:]
    return [*pieces, line]


def qualify_field(field: bytes, domain: Callable[[str], str]) -> bytes:
    """``field`` (its name, its CRLF lines) with ``@`` and ``domain(local)``
    after each bare local part of its address list; as it was when it has
    none, or cannot be read with certainty.

    Only the lines that gain a domain change: a line that grows past
    ``MAX_LINE`` octets is folded before its white space.  When it has
    too little, each comma between addresses gains a space to fold
    before (one there changes no address); when that is not enough
    either, the field is left as it was."""
    try:
        text = field.decode("utf-8")
    except UnicodeDecodeError:
        return field
    name, colon, value = text.partition(":")
    if not colon or not value.endswith("\r\n"):
        return field
    value = value[:-2]
    commas = array("q")
    try:
        locals_ = _bare_local_parts(value, commas)
    except _Doubt:
        return field
    if not locals_:
        return field
    lines = _lines(_qualified(name, value, locals_, (), domain))
    if lines is None:
        # no white space to fold before (",".join(names) from a script):
        # a space after each comma between addresses that has none, which
        # changes no address, gives the fold its place
        bare = [c for c in commas if c < len(value) and value[c] not in " \t\r"]
        lines = _lines(_qualified(name, value, locals_, bare, domain)) if bare else None
        if lines is None:
            return field
    return b"\r\n".join(lines) + b"\r\n"


def _qualified(name: str, value: str, locals_: array[int], spaces: Iterable[int],
               domain: Callable[[str], str]) -> str:
    """The field ``name: value`` with ``@`` and its domain after each bare
    local part (``locals_``, pairs), and a space at each of ``spaces``,
    built in one pass: inserting each domain into the whole text would
    copy it once a name, hours for a field of a few megabytes."""
    ends = ((locals_[k + 1], locals_[k]) for k in range(0, len(locals_), 2))
    out = io.StringIO()
    out.write(name)
    out.write(":")
    done = 0
    for at, start in heapq.merge(ends, ((c, -1) for c in spaces)):
        out.write(value[done:at])
        out.write(" " if start < 0 else "@" + domain(value[start:at]))
        done = at
    out.write(value[done:])
    return out.getvalue()


def _lines(text: str) -> list[bytes] | None:
    """``text``'s CRLF lines, each folded to at most ``MAX_LINE`` octets
    (``_folded``); None when one cannot be."""
    lines = []
    for line in text.encode().split(b"\r\n"):
        pieces = _folded(line)
        if pieces is None:
            return None
        lines.extend(pieces)
    return lines
