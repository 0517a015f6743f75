"""Post-delivery downgrading of a header section (RFC 6857).

A message stored from an SMTPUTF8 transaction may carry UTF-8 in its
header fields (RFC 6532).  A POP3 client that has not issued ``UTF8``
(RFC 6856) gets a copy whose header section is ASCII, made here:

* address fields (From, Sender, Reply-To, To, Cc, Bcc, the Resent- forms,
  Return-Path, Disposition-Notification-To): a non-ASCII display name or
  comment becomes RFC 2047 encoded words; an address with an
  internationalized domain and an ASCII local part gets the domain's
  A-labels (the same address); an address whose local part is not ASCII
  becomes an empty group whose display name is the encoded words of the
  original mailbox text, ``=?utf-8?q?...?= :;`` (RFC 6857 3.2.1; inside a
  group, where groups cannot nest, the text joins the group's name);
* Message-ID, Resent-Message-ID, In-Reply-To, References (and
  Original-Recipient and Final-Recipient): the field is renamed ``Downgraded-<name>`` and its
  body becomes encoded words (RFC 6857 3.1.10's encapsulation);
* Content-Type and Content-Disposition: parameter values become RFC 2231
  ``name*=utf-8''...`` values, each parameter kept (``name=`` and
  ``name*=``, RFC 2231 sections, in their order);
* Received: a ``for`` clause naming a non-ASCII address is removed, an
  internationalized domain gets its A-labels, a non-ASCII comment
  becomes encoded words;
* every other field is unstructured text here (Subject, Comments,
  Content-Description, X- fields...): its body becomes encoded words.

An encoded word the field already has, where RFC 2047 lets it stand for
its text (set off by white space in unstructured text, 5(1); by white
space or parentheses in a comment, 5(2); a whole word of a display
name, 5(3)), is kept as it is: encoded again, a reader would show its
``=?...?=`` instead of that text.  What an encoded word is, where it
may stand and how new ones are written is ``txmailhub.rfc2047``'s; which
text of a field becomes them, and how the field is folded, is this
module's.

A field that is ASCII, or whose 8-bit octets are not UTF-8 (legacy mail
that broke RFC 5322, which UTF-8 mode would not change either), is kept
octet for octet, so the function is the identity on ASCII input.  Of the body,
only the header sections of its MIME parts are downgraded
(``PartHeaders``, the same rules, fed chunk by chunk); the rest is no
business of this module: a client that lacks UTF8 still takes 8-bit
bodies (8BITMIME).  ``Undowngradable`` is raised only for a header line
with UTF-8 that is no field at all, a multipart whose downgraded
Content-Type would name another type or boundary (``keeps_boundary``,
which the relay's 7-bit copy asks too), a multipart whose boundary MIME
readers take differently (``_boundary``), and for a part header section with
UTF-8 over ``PART_HEADER_LIMIT`` or one over it that may open parts or
a message, multiparts nested deeper than
``PART_DEPTH_LIMIT``, or more than ``PART_DOWNGRADE_LIMIT`` part header
sections with UTF-8.

Functions and a stream transformer over bytes: no files, no protocol.
"""

from __future__ import annotations

import re
from email import policy as email_policy
from email.errors import HeaderParseError

from txmailhub.address import ascii_domain
from txmailhub.rfc2047 import (
    Q_MIN,
    Q_ROOM,
    comment_word_spans,
    encoded_word_spans,
    encoded_words,
    phrase_word,
)
from txmailhub.rfc5322 import comment_end, escaped
from txmailhub.store.format import crlf_size_of

__all__ = ["PART_DOWNGRADE_LIMIT", "PART_HEADER_LIMIT", "PartHeaders", "Undowngradable",
           "address_field", "downgrade_header", "encoded_word_spans", "encoded_words",
           "first_room", "fold_field", "header_end", "keeps_boundary", "kept_and_encoded",
           "needs_downgrade", "parameter_field", "unstructured_field"]

ADDRESS_FIELDS = frozenset((
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender",
    "resent-reply-to", "resent-to", "resent-cc", "resent-bcc", "return-path",
    "disposition-notification-to",
))
ENCAPSULATED_FIELDS = {
    "message-id": "Downgraded-Message-Id",
    "resent-message-id": "Downgraded-Resent-Message-Id",
    "in-reply-to": "Downgraded-In-Reply-To",
    "references": "Downgraded-References",
    "original-recipient": "Downgraded-Original-Recipient",
    "final-recipient": "Downgraded-Final-Recipient",
}
"""RFC 6857 3.1.10: the field names IANA registered for the encapsulation."""
_PARAMETER_FIELDS = frozenset(("content-type", "content-disposition"))
_LINE = 76  # RFC 2047 2: a line with encoded words at most 76 characters
_POLICY = email_policy.default.clone(utf8=False, linesep="\n", max_line_length=_LINE)
# The stdlib cuts a long parameter value into RFC 2231 sections
# ("name*0*=utf-8''..."), and loops for ever when the line has no room
# for a section's name, number, charset and one encoded character (up to
# 12, "%F0%9F%98%80"): a parameter name longer than the line less this
# is folded to lines of up to 990 instead (the stdlib may go one over),
# and one longer still has no RFC 2231 form here
_PARAM_CHROME = 37
_LONG_LINE = 990
_MAX_LINE = 998  # RFC 5322 2.1.1: a line's characters, CRLF not counted
_LONG_POLICY = _POLICY.clone(max_line_length=_LONG_LINE)
# The stdlib's parser takes time that grows with the square of a field's
# tokens (each step copies the rest of the text: 8,000 ";" take over a
# second, 60 KiB over a minute), and recurses once per nested comment.
# Parameter text longer than this goes no further than the hub's own
# encoding (a real field, a file name of 255 characters and the other
# parameters, is a few hundred), and a header section hands the stdlib
# at most this many fields: the POP3 downgrade runs on the reactor thread
_PARAM_TEXT_MAX = 2048
_PARAM_FIELDS_MAX = 2
_HEADER_END = re.compile(rb"\n\r?\n")
_FOLD = re.compile(r"\r?\n[ \t]+")
_LINES = re.compile(rb"[^\n]*\n|[^\n]+").findall
# a line break with no blank after it: no fold (RFC 5322 2.2.3)
_BAD_FOLD = re.compile(r"\n(?![ \t])")
# an encoded word with no encoded text, which RFC 2047 2 does not allow:
# the stdlib writes one for the blank before UTF-8 where a Content-Type
# has no type it can read ("multipart/mixedabc ä")
_EMPTY_WORD = re.compile(r"=\?[^?\s]*\?[BbQq]\?\?=")
# white space to RFC 5322 (2.2.3, 3.2.2): SP and HTAB, and the line ends
# unfolding leaves; NBSP, U+3000 and Unicode's other spaces, which
# ``str.strip`` takes for white space too, are text
_WSP = " \t\r\n"
_FOR_CLAUSE = re.compile(r"\s+for\s+(<[^>]*>|[^\s;()]+)", re.IGNORECASE)


class Undowngradable(ValueError):
    """The header section has no ASCII form (the reason says why)."""


def header_end(data: bytes) -> int | None:
    """Where the header section of a message starting ``data`` ends: the
    index just past the LF of its last field, where the empty line
    begins; ``None`` when ``data`` holds no empty line (yet)."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return 0
    m = _HEADER_END.search(data)
    return None if m is None else m.start() + 1


def needs_downgrade(header: bytes) -> bool:
    """Whether ``header`` holds UTF-8 beyond ASCII and nothing else 8-bit:
    what RFC 6856 keeps from a client without UTF8 (``HeaderScan``)."""
    if header.isascii():
        return False
    try:
        header.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def downgrade_header(header: bytes) -> bytes:
    """The ASCII form of a header section (fields with their continuation
    lines, LF or CRLF line ends, as stored; no empty line).  Fields that
    are ASCII or not UTF-8 are kept as they are.  The result ends with a
    line end exactly when ``header`` does.  Raises ``Undowngradable``
    (also for a multipart whose downgraded Content-Type would not name
    its type and boundary)."""
    if header.isascii():
        return header
    out: list[bytes] = []
    parameter_fields = 0  # handed to the stdlib (``_PARAM_FIELDS_MAX``)
    retyped = False  # a Content-Type rewritten
    for raw in _fields(header):
        if raw.isascii():
            out.append(raw)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append(raw)  # legacy 8-bit: not ours to change
            continue
        ending = "\n" if text.endswith("\n") else ""
        key = text.partition(":")[0].rstrip(" \t").lower()
        if key in _PARAMETER_FIELDS:
            parameter_fields += 1
        retyped = retyped or key == "content-type"
        field = _field(text.rstrip("\r\n"), parameter_fields <= _PARAM_FIELDS_MAX)
        out.append((field + ending).encode("ascii"))
    new = b"".join(out)
    if retyped and not keeps_boundary(header, new):
        # (or names a multipart or message the original is not: the
        # message is part of the rules' digest, tests/test_downgrade_rules.py)
        raise Undowngradable("the downgraded Content-Type of a multipart loses its boundary")
    return new


def keeps_boundary(old: bytes, new: bytes) -> bool:
    """Whether ``new``, a header section (or one field) rewritten from
    ``old``, names the type and boundary of the multipart ``old`` names,
    as a MIME reader finds them (``_content_type``); where ``old`` names
    no multipart with a boundary, whether ``new`` names none either, and
    a message/rfc822 where ``old`` does (the rewrite moves a comment
    after the parameters: ``(ä)multipart/mixed``, no type to the
    stdlib's reader, became a multipart).  A copy's delimiter lines go as
    stored: one whose Content-Type names another boundary has no parts
    to a reader.  The stdlib's rewrite can do that: it decodes an encoded
    word inside a quoted boundary (``"=?utf-8?q?abc?="`` became ``abc``;
    "=" and "?" are bchars, RFC 2046 5.1.1, and RFC 2047 5(3) allows no
    encoded word in a quoted string), writes UTF-8 in the type as encoded
    words, and a field gone to encoded words names no type at all."""
    kind, boundary = _content_type(old, b"text/plain")
    new_kind, new_boundary = _content_type(new, b"")
    if _is_message(kind) != _is_message(new_kind):
        return False
    if not (kind.startswith(b"multipart/") and boundary):
        return not (new_kind.startswith(b"multipart/") and new_boundary)
    # (the same multipart: "multipart/mixed (x)" or "multipart/mixed")
    return (new_kind.startswith(b"multipart/") and new_boundary == boundary
            and (new_kind == b"multipart/digest") == (kind == b"multipart/digest"))


def _fields(header: bytes) -> list[bytes]:
    """The header section cut into fields, each with its continuation lines.
    Only LF ends a line (``bytes.splitlines`` would cut at a bare CR too,
    which the CRLF form keeps inside its line)."""
    fields: list[bytes] = []
    for line in _LINES(header):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _field(text: str, parameters: bool = True) -> str:
    """One field (no final line end) with UTF-8 in it, in ASCII.
    ``parameters``: a Content-Type or Content-Disposition may have its
    parameters read (``parameter_field``); else it is text."""
    name, sep, value = text.partition(":")
    name = name.rstrip(" \t")  # RFC 5322 4.5.8: obsolete blanks before the colon
    if not sep or not name or not all("!" <= c <= "~" for c in name):
        raise Undowngradable("a header line with UTF-8 is not a header field")
    key = name.lower()
    # a structured field's folds are blanks that separate (refolded below)
    if key in ADDRESS_FIELDS or key == "received":
        value = _FOLD.sub(" ", value)
    # unfolded (RFC 5322 2.2.3: the line breaks go, the blanks stay)
    value = value.replace("\r\n", "\n").replace("\n", "")
    if key in ADDRESS_FIELDS:
        return address_field(name, value)
    if key in ENCAPSULATED_FIELDS:
        return _literal_field(ENCAPSULATED_FIELDS[key], value.lstrip(" \t"))
    if key in _PARAMETER_FIELDS:
        folded = parameter_field(name, value) if parameters else None
        if folded is not None:
            return folded
        return _literal_field(name, value.lstrip(" \t"))  # no parameters to be had
    if key == "received":
        return fold_field(name, _received(value.strip()))
    return unstructured_field(name, value.lstrip(" \t"))


def parameter_field(name: str, value: str) -> str | None:
    """A Content-Type or Content-Disposition field (``value`` unfolded)
    in ASCII: non-ASCII parameter values as RFC 2231 values, its comments
    after the parameters, a UTF-8 one as encoded words inside its
    parentheses (RFC 2047 5(2)) -- the stdlib would put them outside the
    comment, where they end the type, and folds a line with comments
    badly (a long one loses its parentheses).  ``None``
    when the value has no parameters to be had, or one whose name is too
    long for any line (``_PARAM_CHROME``), or when the stdlib would take
    too long to read them (``_PARAM_TEXT_MAX``), or folds them only with
    a line break that no blank follows or with an empty encoded word, or
    when a comment makes a line over 998 characters.  Two parameters of
    one name (``filename=`` and ``filename*=``) are both kept, which the
    stdlib would merge (``_parameters_apart``)."""
    parts = _comment_split(value.strip())
    # every comment is kept apart, an ASCII one too: the stdlib folds a
    # comment longer than the room left on the line without its
    # parentheses ("text/plain(a b ...)" became the type "text/plainab")
    comments = [_comments(p) for p in parts if p[:1] == "("]
    mime = "".join(p if p[:1] != "(" else _separator(parts, i) for i, p in enumerate(parts))
    if len(mime) > _PARAM_TEXT_MAX:
        return None
    apart = _parameters_apart(name, mime)
    if apart is not None:
        return _with_comments(name, apart, comments)
    try:
        header = _POLICY.header_factory(name, mime)
        longest = max(map(len, getattr(header, "params", {})), default=0)
        if longest > _LONG_LINE - _PARAM_CHROME:
            return None
        policy = _POLICY if longest <= _LINE - _PARAM_CHROME else _LONG_POLICY
        folded = header.fold(policy=policy)
        if _BAD_FOLD.search(folded.rstrip("\n")) and policy is _POLICY:
            # the stdlib breaks some lines with no blank after the break
            # (before a comment that follows a word): that line would be
            # a field of its own, or the body's start; on lines of up to
            # 990 there is room not to break it there
            folded = header.fold(policy=_LONG_POLICY)
        if _BAD_FOLD.search(folded.rstrip("\n")) or _EMPTY_WORD.search(folded):
            return None
    except (HeaderParseError, ValueError, IndexError, RecursionError):
        # (RecursionError: comments nested a few hundred deep, which the
        # parser reads by recursing; the stack, unwound, is as it was)
        return None
    if not folded.isascii():
        return None
    return _with_comments(name, folded.rstrip("\n"), comments)


def _with_comments(name: str, folded: str, comments: list[str]) -> str | None:
    """A parameter field folded (``folded``) with its comments after it;
    ``None`` when a line would be over 998 characters."""
    if not comments:
        return folded
    folded = fold_field(name, " ".join(comments), folded)
    # a comment with no blank to fold at (nested a few hundred deep, a
    # "(" never closed) may be a line over RFC 5322 2.1.1's 998
    if any(len(line) > _MAX_LINE for line in folded.split("\n")):
        return None
    return folded


# RFC 2231 7's attribute-char: RFC 2045 5.1's token characters but "*'%"
_ATTRIBUTE_CHAR = r"[!#$&+\-.0-9A-Z^_`a-z{|}~]"
_PARAMETER = re.compile(rf"[ \t]*({_ATTRIBUTE_CHAR}+)(?:\*([0-9]+))?(\*)?[ \t]*=[ \t]*"
                        r'(?:"((?:[^"\\]|\\.)*)"|([^ \t"]+))[ \t]*', re.DOTALL)
_TO_ESCAPE = re.compile(rf"(?!{_ATTRIBUTE_CHAR}).", re.DOTALL)
_TO_ESCAPE_EXTENDED = re.compile(rf"(?!%[0-9A-Fa-f]{{2}}|{_ATTRIBUTE_CHAR}).", re.DOTALL)


# an extended value's character: a UTF-8 sequence's %-escapes, or one
_CHARACTER = re.compile(r"%[C-Fc-f][0-9A-Fa-f](?:%[89ABab][0-9A-Fa-f])*|%[0-9A-Fa-f]{2}|.",
                        re.DOTALL).findall


def _escaped(text: str, pattern: re.Pattern[str] = _TO_ESCAPE) -> str:
    """``text`` with what ``pattern`` finds as the %-escapes of its UTF-8
    octets (RFC 2231 4's extended value)."""
    return pattern.sub(lambda m: "".join(f"%{o:02X}" for o in m.group().encode()), text)


def _sections(attr: str, value: str) -> str:
    """An extended value (``charset'language'`` and %-escapes) too long
    for any line as RFC 2231 3's sections ``attr*0*=``, ``attr*1*=``...,
    one a line of at most 76 (a character's %-escapes whole), "\n"
    between."""
    sections: list[str] = []
    for piece in _CHARACTER(value):
        start = f"{attr}*{len(sections) - 1}*="
        if sections and len(f" {start}{sections[-1]}{piece};") <= _LINE:
            sections[-1] += piece
        else:
            sections.append(piece)
    return "\n".join(f"{attr}*{n}*={text}" for n, text in enumerate(sections))


def _parameters_apart(name: str, mime: str) -> str | None:
    """``Name: mime`` (a parameter field's text, its comments taken out)
    folded with every parameter kept apart, in its order, when two of
    them have one name (``x`` and ``x*``, the sections ``x*0*`` and
    ``x*1``, ``x`` twice): the stdlib makes one of them, so a reader that
    prefers ``filename*=`` to ``filename=`` (RFC 2231) could show another
    name than the original's.  An ASCII parameter stays as written; one
    with UTF-8 becomes an extended value with its UTF-8 as %-escapes
    (``x*=utf-8''...``; a later section ``x*1*=...``, the first section
    of its name, when written plain, extended to say ``utf-8''``).  Folded
    between parameters, to lines of 76 where they fit.

    ``None`` (the stdlib's to fold) when no two parameters have one name,
    or for what this does not read: a type (or disposition) with UTF-8, a
    parameter with UTF-8 but no value or in its charset or name, a later
    section with UTF-8 whose name has no first section, or one that says
    another charset, a line over 998 characters (but for a parameter too
    long for a line, of a name with no sections in the field: that one
    is cut into sections, ``_sections``)."""
    pieces = [p.decode("utf-8") for p in _parameters(mime.encode("utf-8"))]
    kind = pieces[0].strip(" \t")
    params = [p.strip(" \t") for p in pieces[1:] if p.strip(" \t")]
    found = [_PARAMETER.fullmatch(p) for p in params]
    names = [m.group(1).lower() for m in found if m is not None]
    if len(set(names)) == len(names) or not kind or not kind.isascii():
        return None
    out = params[:]
    first_to_say_utf8: set[str] = set()
    sectioned = {m.group(1).lower() for m in found if m is not None and m.group(2) is not None}
    for i, (param, m) in enumerate(zip(params, found)):
        if param.isascii():
            continue
        if m is None:
            return None
        attr, section, extended, quoted, token = m.groups()
        value = _unescape(quoted) if quoted is not None else token
        if extended:
            prefix = ""
            if section is None or int(section) == 0:
                charset, quote, rest = value.partition("'")
                language, quote2, text = rest.partition("'")
                if quote and quote2:
                    prefix, value = f"{charset}'{language}'", text
                else:
                    prefix = "utf-8''"
            if not prefix.isascii():
                return None
            value = prefix + _escaped(value, _TO_ESCAPE_EXTENDED)
            if not prefix:  # (a later section: its UTF-8 needs a first that says so)
                first_to_say_utf8.add(attr.lower())
        elif section is None or int(section) == 0:
            value = "utf-8''" + _escaped(value)
        else:
            value = _escaped(value)
            first_to_say_utf8.add(attr.lower())
        if section is None and len(f" {attr}*={value};") > _MAX_LINE:
            if attr.lower() in sectioned:  # (its sections would be mixed with those)
                return None
            out[i] = _sections(attr, value)  # no line holds it: RFC 2231 3's sections
        else:
            out[i] = f"{attr}{'' if section is None else '*' + section}*={value}"
    firsts = [i for i, m in enumerate(found) if m is not None and m.group(1).lower()
              in first_to_say_utf8 and m.group(2) is not None and int(m.group(2)) == 0]
    if {found[i].group(1).lower() for i in firsts} != first_to_say_utf8:
        return None
    for i in firsts:
        attr, section, extended, quoted, token = found[i].groups()
        if not extended:  # (plain ASCII is as written so far)
            value = _unescape(quoted) if quoted is not None else token
            out[i] = f"{attr}*{section}*=utf-8''{_escaped(value)}"
        elif not out[i].partition("=")[2].lstrip(' \t"').lower().startswith("utf-8'"):
            return None
    out = [param for params in out for param in params.split("\n")]
    lines = [f"{name}: {kind}"]
    for i, param in enumerate(out):
        lines[-1] += ";"
        if len(lines[-1]) + 1 + len(param) + (i + 1 < len(out)) > _LINE:  # (its ";" too)
            lines.append(" " + param)
        else:
            lines[-1] += " " + param
    if any(len(line) > _MAX_LINE for line in lines):
        return None
    return "\n".join(lines)


def unstructured_field(name: str, text: str) -> str:
    """An unstructured field: the whole text as encoded words, but for the
    encoded words it already has (``encoded_word_spans``), kept as they
    are; decoding them gives the text back as an RFC 2047 reader shows
    it, blanks included.  Not ``email.header.Header``: it cuts the text
    at ``str.splitlines`` breaks (NEL, U+2028, FF...) and puts a blank in
    their place.

    The text between two kept words is encoded with its blanks (a reader
    shows them, and drops the blanks between two encoded words, RFC 2047
    6.2); blanks alone there are dropped by the reader of the original
    too, and stay a mere separator."""
    return fold_field(name, kept_and_encoded(text, encoded_word_spans(text), first_room(name)))


def kept_and_encoded(text: str, spans: list[tuple[int, int]], first: int,
                      unescape: bool = False) -> str:
    """``text`` as encoded words separated by blanks, but for the encoded
    words it has at ``spans``, kept as they are (``first``: as for
    ``encoded_words``; ``unescape``: the text is a comment's, its
    quoted-pairs stand for their second character).  Text before a kept
    word that is nothing but blanks is dropped: a reader drops it between
    two encoded words (RFC 2047 6.2), and the blank that separates the
    words stands for it."""
    words: list[str] = []
    pos = 0
    for start, end in spans:
        if text[pos:start].strip(" \t"):
            piece = _unescape(text[pos:start]) if unescape else text[pos:start]
            words.append(encoded_words(piece, Q_ROOM if words else first))
        words.append(text[start:end])
        pos = end
    if pos < len(text):  # (blanks at the end too: a reader shows them)
        piece = _unescape(text[pos:]) if unescape else text[pos:]
        words.append(encoded_words(piece, Q_ROOM if words else first))
    return " ".join(words)


def _literal_field(name: str, text: str) -> str:
    """A field whose text is no RFC 2047 text (a structured field's, an
    encapsulated one's, RFC 6857 3.1.10, which decoding must give back
    exactly) as encoded words, a "=?...?=" in it encoded too."""
    return fold_field(name, encoded_words(text, first_room(name)))


def first_room(name: str) -> int:
    """The room for the encoded text of a first word beside ``Name:``."""
    first = _LINE - len(name) - len(": =?utf-8?q??=")
    return first if first >= Q_MIN else Q_ROOM


def fold_field(name: str, value: str, start: str = "") -> str:
    """``Name: value`` folded before its blanks (spaces and tabs alike,
    RFC 5322 2.2.3) to lines of at most 76 where it can (``start``: the
    field's folded text so far, ``value`` goes after it, a blank between).

    Never between a backslash and the blank it quotes (a quoted-pair in a
    quoted string or comment, RFC 5322 3.2.1): the text from the blank
    before the backslash to the next blank after the pair is one piece,
    moved to a line of its own whole when it does not fit."""
    lines = start.split("\n") if start else [f"{name}:"]
    line = lines.pop()
    pieces: list[str] = []
    for piece in _BLANK_PIECES.findall(" " + value):
        if pieces and escaped(pieces[-1], len(pieces[-1])):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    for piece in pieces:
        if len(line) + len(piece) > _LINE and line.strip():
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(lines)


_BLANK_PIECES = re.compile(r"[ \t][^ \t]*")


# -- address fields ---------------------------------------------------------


def _scan(text: str, i: int, stops: str) -> int:
    """The index of the first of ``stops`` at ``i`` or after, outside
    quoted strings, comments and angle brackets (``len(text)`` if none)."""
    n = len(text)
    while i < n:
        c = text[i]
        if c in stops:
            return i
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth = 1
            i += 1
            while i < n and depth:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                i += 1
            continue
        elif c == "<":
            while i < n and text[i] != ">":
                i += 1
        i += 1
    return n


def _address_list(text: str, strict: bool = False) -> str:
    """An address list (RFC 5322 3.4, groups included) in ASCII."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = _scan(text, i, ",:")
        if j < n and text[j] == ":":  # a group: display-name ":" [members] ";"
            end = _scan(text, j + 1, ";")
            out.append(_group(text[i:j], text[j + 1:end], strict))
            k = _scan(text, end + 1, ",")
            rest = text[end + 1:k].strip(_WSP)  # a comment after the ";"
            if rest:
                out[-1] += " " + _comments(rest)
            i = k + 1
            continue
        item = text[i:j].strip(_WSP)
        if item.strip():  # (white space of any kind alone: no mailbox)
            ascii_form, original = _mailbox(item, strict)
            out.append(ascii_form if ascii_form is not None
                       else f"{_mailbox_text([original])} :;")  # RFC 6857 3.2.1
        i = j + 1
    return ", ".join(out)


def address_field(name: str, value: str, strict: bool = False) -> str:
    """An address field (``value`` unfolded, UTF-8) in ASCII, folded to
    lines of at most 76: non-ASCII display names and comments as encoded
    words, each a word of its own (RFC 2047 5(3)), the addresses as they
    are -- a domain as its A-labels, a non-ASCII local part as RFC 6857
    3.2.1's group; with ``strict`` (a copy for another server, where an
    address must stay the address it was) ``Undowngradable`` for any
    non-ASCII address instead."""
    return fold_field(name, _address_list(value.strip(_WSP), strict))


def _group(name: str, members: str, strict: bool = False) -> str:
    kept: list[str] = []
    moved: list[str] = []
    for item in _split(members, ","):
        ascii_form, original = _mailbox(item, strict)
        if ascii_form is None:
            moved.append(original)  # no group in a group: into the name
        else:
            kept.append(ascii_form)
    phrase = _phrase(name.strip(_WSP))
    if moved:
        moved_text = _mailbox_text(moved, after_word=phrase.endswith("?="))
        phrase = f"{phrase} {moved_text}".strip()
    if phrase.endswith("?="):
        phrase += " "  # an encoded word ends at a blank (RFC 2047 5(3))
    return f"{phrase}: {', '.join(kept)};" if kept else f"{phrase}:;"


def _split(text: str, sep: str) -> list[str]:
    items, i, n = [], 0, len(text)
    while i <= n:
        j = _scan(text, i, sep)
        item = text[i:j].strip(_WSP)
        if item.strip():  # (white space of any kind alone: no mailbox)
            items.append(item)
        i = j + 1
    return items


def _mailbox(item: str, strict: bool = False) -> tuple[str | None, str]:
    """(the ASCII form of one mailbox or ``None`` when its local part is
    not ASCII, the mailbox as written).  ``strict``: a non-ASCII address
    raises ``Undowngradable``."""
    lt = _scan(item, 0, "<")
    if lt < len(item):
        gt = item.find(">", lt)
        gt = len(item) if gt < 0 else gt
        display, addr, after = item[:lt], item[lt + 1:gt], item[gt + 1:]
        addr = _ascii_addr(addr.strip(), strict)
        if addr is None:
            return None, item
        phrase = _phrase(display.strip(_WSP))
        tail = _comments(after.strip(_WSP))
        return " ".join(p for p in (phrase, f"<{addr}>", tail) if p), item
    # an addr-spec, perhaps with comments around it
    parts = _comment_split(item)
    spec = "".join(p for p in parts if not p.startswith("(")).strip()
    addr = _ascii_addr(spec, strict)
    if addr is None:
        return None, item
    comments = " ".join(_comments(p) for p in parts if p.startswith("("))
    # (no address, comments alone: no blank before them)
    return " ".join(p for p in (addr, comments) if p), item


def _ascii_addr(addr: str, strict: bool = False) -> str | None:
    """``addr`` in ASCII: as it is, or its domain as A-labels; ``None``
    when its local part is not ASCII (or the domain has no A-labels)."""
    if addr.isascii():
        return addr
    if strict:
        raise Undowngradable(f"the address {addr!r} is not ASCII")
    local, at, domain = addr.rpartition("@")
    if not at or not local.isascii():
        return None
    domain = ascii_domain(domain)
    return f"{local}@{domain}" if domain.isascii() else None


def _comment_split(text: str) -> list[str]:
    """``text`` cut into comments (``(...)``) and the runs between them."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = _scan(text, i, "(")
        if j > i:
            parts.append(text[i:j])
        if j >= n:
            break
        k = comment_end(text, j)
        if k < 0:  # unterminated: the rest of the field
            k = n
        parts.append(text[j:k])
        i = k
    return parts


def _separator(parts: list[str], i: int) -> str:
    """What stands for the comment ``parts[i]`` where it is taken out: a
    blank between two tokens it separated ("a(x)b" is two), else nothing."""
    before = parts[i - 1][-1:] if i else ""
    after = parts[i + 1][:1] if i + 1 < len(parts) else ""
    if before in ("", " ", "\t", ";", "(") or after in ("", " ", "\t", ";", "("):
        return ""
    return " "


def _comments(text: str) -> str:
    """Text of comments and blanks: each non-ASCII comment as encoded
    words inside its parentheses, but for the encoded words it already
    has (RFC 2047 5(2)), kept as they are."""
    out = []
    for part in _comment_split(text):
        if part.isascii():
            out.append(part)
        elif part.startswith("("):
            inner = part[1:-1] if part.endswith(")") else part[1:]
            spans = comment_word_spans(inner)
            out.append("(" + kept_and_encoded(inner, spans, Q_ROOM, unescape=True) + ")")
        else:
            # text where only comments and white space may be (after an
            # address): kept as a comment, its encoded words inside the
            # parentheses (5(2)), the blanks at its ends blanks.  NBSP,
            # U+3000 and the other Unicode spaces are no white space to
            # RFC 5322 (3.2.2: SP and HTAB) but text: a run of them alone
            # is kept too
            core = part.strip(_WSP)
            start = len(part) - len(part.lstrip(_WSP))
            out.append(part[:start] + "(" + encoded_words(core) + ")"
                       + part[start + len(core):])
    return "".join(out)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _phrase(display: str) -> str:
    """A display name: as it is when ASCII; otherwise its words (quoted
    strings unquoted) as encoded words and its comments encoded apart.

    A word of it that is an encoded word already (``phrase_word``) is
    kept as it is, the text between two such words encoded with a blank
    at each end beside one (a reader drops the blanks between two encoded
    words, RFC 2047 6.2, and shows the one between an encoded word and a
    word of text)."""
    if display.isascii():
        return display
    words: list[tuple[str, bool]] = []  # (a word, kept as an encoded word)
    comments: list[str] = []
    for kind, start, end, text in _phrase_tokens(display):
        if kind == "comment":
            comments.append(_comments(text))
        else:
            words.append((text, kind == "atom" and phrase_word(display, start, end)))
    pieces: list[str] = []
    run: list[str] = []  # words of text since the last kept encoded word
    for word, kept in words:
        if not kept:
            if word:
                run.append(word)
            continue
        if run:  # (``pieces``, when there are any, end with a kept word)
            pieces.append(encoded_words(" " * bool(pieces) + " ".join(run) + " "))
            run = []
        pieces.append(word)
    if run:
        pieces.append(encoded_words(" " * bool(pieces) + " ".join(run)))
    return " ".join((*pieces, *comments))


def _phrase_tokens(display: str) -> list[tuple[str, int, int, str]]:
    """A display name's words and comments, in order: (kind -- "atom",
    "quoted" or "comment" --, start, end, text: a quoted string's
    unquoted, the others' as written)."""
    tokens: list[tuple[str, int, int, str]] = []
    at = 0  # where the part starts in ``display``
    for part in _comment_split(display):
        n = len(part)
        if part.startswith("("):
            tokens.append(("comment", at, at + n, part))
            at += n
            continue
        i = 0
        while i < n:
            if part[i] == '"':
                j = i + 1
                while j < n and part[j] != '"':
                    j += 2 if part[j] == "\\" else 1
                tokens.append(("quoted", at + i, at + min(j + 1, n), _unescape(part[i + 1:j])))
                i = j + 1
            elif part[i] in " \t":
                i += 1
            else:
                j = i
                while j < n and part[j] not in ' \t"':
                    j += 1
                tokens.append(("atom", at + i, at + j, part[i:j]))
                i = j
        at += n
    return tokens


def _mailbox_text(items: list[str], after_word: bool = False) -> str:
    """Mailboxes as written (``items``), as the encoded words of RFC 6857
    3.2.1's group name, the encoded words of their display names kept
    (``phrase_word``), so a reader shows each as the original showed it.
    ``after_word``: they follow an encoded word, from which a blank a
    reader shows sets them off (the blanks between two encoded words it
    drops, RFC 2047 6.2)."""
    text = " ".join(items)
    spans: list[tuple[int, int]] = []
    at = 0
    for item in items:
        display = item[:_scan(item, 0, "<")]
        spans += [(at + start, at + end) for kind, start, end, _ in _phrase_tokens(display)
                  if kind == "atom" and phrase_word(display, start, end)]
        at += len(item) + 1
    if after_word:
        if spans and spans[0][0] == 0:  # a kept word first: the blank a word of its own
            return "=?utf-8?q?_?= " + kept_and_encoded(text, spans, Q_ROOM)
        text = " " + text
        spans = [(start + 1, end + 1) for start, end in spans]
    return kept_and_encoded(text, spans, Q_ROOM)


# -- Received ---------------------------------------------------------------


def _received(value: str) -> str:
    """RFC 6857: a ``for`` clause with a non-ASCII address goes; domains
    get their A-labels and comments encoded words.  A comment is no
    clause: "for" in it stays."""
    out: list[str] = []
    for part in _comment_split(value):
        if part[:1] != "(":
            part = _FOR_CLAUSE.sub(lambda m: "" if not m.group(1).isascii() else m.group(0),
                                   part)
        if part.isascii():
            out.append(part)
        elif part.startswith("("):
            out.append(_comments(part))
        else:
            out.append(" ".join(_received_word(w) for w in part.split(" ")))
    return "".join(out)


def _received_word(word: str) -> str:
    if word.isascii():
        return word
    domain = ascii_domain(word.strip("[]<>"))
    if domain.isascii():
        return word.replace(word.strip("[]<>"), domain)
    return "(" + encoded_words(word) + ")"  # kept as a comment, never dropped


# -- MIME part header sections ----------------------------------------------

PART_HEADER_LIMIT = 64 * 1024
"""The longest header section of a MIME part (or of a message/rfc822
part's message) held to be downgraded: one with UTF-8 that is longer has
no downgraded form here (``Undowngradable``), as the top section past
its own limit has none.  It bounds the memory a part holds and the CPU
one ``PartHeaders.feed`` spends (some 40 ms for 64 KiB of UTF-8 fields)."""
PART_DEPTH_LIMIT = 32
"""The most multiparts nested one in another that are read for their
parts (each holds its boundary while it is open): a message with more
has no downgraded form here
(``Undowngradable``), since the header sections of the deeper parts
would go as they are."""
PART_DOWNGRADE_LIMIT = 100
"""The most header sections of MIME parts with UTF-8 downgraded in one
message: a message with more has no downgraded form here
(``Undowngradable``).  A parameter field costs some 0.5 ms to downgrade
however short it is, and the copy is sent from the thread that serves
every session: a 64 KiB read of tiny parts, each with a UTF-8 file name,
held it half a second, and a message of such reads a minute."""
_LINE_HOLD = 1024
"""A line longer than this (its LF included) is no delimiter line (RFC
2046 5.1.1; RFC 5322 2.1.1 allows 1000): a line begun at the end of a
chunk is held only that far, so a longer one must not be a delimiter
when a chunk happens to hold it whole either."""
_BLANK, _BODY, _PART_HEADER, _LONG_HEADER = range(4)
_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
_PLAIN_VALUE = re.compile(rb'[^"(\\]*')  # no quoted string, no comment: split at ";"
_RFC822 = re.compile(rb"message/rfc822(?![!#-'*+\-.0-9A-Z^-~])")  # and no more token
_BOUNDARY_NAME = re.compile(rb"(?i)boundary(?:\*([0-9]{1,3}))?(\*)?")  # RFC 2231 3, 4
_QUOTED_VALUE = re.compile(rb'"((?:[^"\\]|\\.)*)"?')
_TOKEN_VALUE = re.compile(rb'[^ \t()<>@,;:\\"/\[\]?=]*')  # RFC 2045 5.1's token
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_DISPUTED = b"\n"
"""``_content_type``'s boundary for one that MIME readers take differently
(``_boundary``): no boundary has a line break (the field is unfolded)."""
# what ``str.strip`` takes off a parameter's name, and a boundary's end,
# in the stdlib's reader
_RSTRIPPED = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_ASCII_TEXT = bytes(range(0x20, 0x7F))
# a type whose body has header sections, named in a part header section
# too long to be read (in lower case)
_NESTING = re.compile(rb"multipart|rfc822")
_NESTING_TAIL = len(b"multipart") - 1


def _may_end(tail: bytes) -> bool:
    """Whether a line begun, ``tail``, may still be the empty line or the
    delimiter line that ends a part header section: it does not count
    against ``PART_HEADER_LIMIT`` yet (a limit that depended on where a
    chunk ended gave LIST and RETR different copies)."""
    return tail == b"\r" or (tail[:2] in (b"-", b"--") and len(tail) < _LINE_HOLD)


def _content_type(header: bytes, default: bytes) -> tuple[bytes, bytes | None]:
    """(``type/subtype`` lowercased, the boundary parameter) of a header
    section's Content-Type; ``default`` when it has none (RFC 2045 5.2,
    RFC 2046 5.1.5 for a part of a multipart/digest)."""
    m = _CONTENT_TYPE.search(header)
    if m is None:
        return default, None
    value = m.group(1).replace(b"\r", b"").replace(b"\n", b"")
    pieces = value.split(b";") if _PLAIN_VALUE.fullmatch(value) else _parameters(value)
    # the type as the stdlib's reader takes it (``get_content_type``): the
    # text up to the first ";", comments and all, white space off its
    # ends, with one "/" (else text/plain): "(c)multipart/mixed" and
    # "multipart / mixed" are no multipart there, "multipart/mixed<VT>"
    # is one
    kind = value.partition(b";")[0].strip(_RSTRIPPED).lower()
    if kind.count(b"/") != 1:
        kind = b"text/plain"
    return kind, _boundary(pieces[1:])


def _is_message(kind: bytes) -> bool:
    """Whether a part of type ``kind`` (``_content_type``) holds a message
    whose header section is downgraded: message/rfc822, a comment or
    more after it too (the stdlib's reader parses every message/* as a
    message; message/global goes whole, see ``PartHeaders``)."""
    return _RFC822.match(kind) is not None


def _boundary(pieces: list[bytes]) -> bytes | None:
    """The boundary among a Content-Type's parameters, as MIME readers
    (Python's email package) find it: the name in any case; given plain
    (``boundary=``), as an RFC 2231 extended value (``boundary*=``, its
    charset and language dropped, %-escapes decoded) or in RFC 2231
    sections (``boundary*0=``, ``boundary*1*=``...) joined in their order
    up to the first one missing; of two with the same section (``boundary``
    and ``boundary*`` are both section 0) the first; unquoted once more
    when it is between two '"' or between "<" and ">" (``boundary="<b>"``
    is "b", ``email.utils.unquote``); white space at its end dropped
    (RFC 2046 5.1.1 allows none there; the stdlib's ``str.rstrip``).

    ``_DISPUTED`` where readers take it differently, so that the parts are
    not found as they find them: a token with "'" or "*" (RFC 2231
    syntax to the stdlib's reader: ``boundary=a''b`` is "b" there,
    ``boundary=a'b`` none, ``boundary=a*b`` "a"), an RFC 2231 value in
    a charset in which ASCII octets are other characters (UTF-7), a
    quoted one with a backslash (the stdlib's reader writes the value
    again without its quoted-pair and reads that: ``boundary="a\\\\"; x=1``
    is ``a"; x="1`` there), or an empty one (``boundary=""``,
    ``boundary=" "``, a ``boundary`` without "=")."""
    sections: dict[int, bytes] = {}
    disputed = False
    for piece in pieces:
        name, eq, value = piece.partition(b"=")
        m = _BOUNDARY_NAME.fullmatch(name.strip(_RSTRIPPED))
        if m is None:
            continue
        if not eq:  # (the stdlib's reader: an empty boundary, below)
            disputed = True
            continue
        number = int(m.group(1) or 0)
        if number in sections:
            continue
        value = value.strip(b" \t")
        quoted = _QUOTED_VALUE.match(value)
        if quoted is not None:
            value = re.sub(rb"\\(.)", rb"\1", quoted.group(1))
            disputed = disputed or b"\\" in value
        else:  # (a token: never no match)
            token = _TOKEN_VALUE.match(value)
            value = token.group(0) if token is not None else b""
            text = value.split(b"'", 2)[-1] if m.group(2) and number == 0 else value
            disputed = disputed or b"'" in text or b"*" in text
        if m.group(2):
            if number == 0 and value.count(b"'") >= 2:  # charset'language'value
                charset, _, value = value.split(b"'", 2)
                disputed = disputed or not _ascii_charset(charset)
            value = _PERCENT.sub(lambda e: bytes((int(e.group(1), 16),)), value)
        sections[number] = value
    if disputed:
        return _DISPUTED
    if 0 not in sections:
        return None
    joined = []
    for number in range(len(sections)):
        if number not in sections:
            break
        joined.append(sections[number])
    boundary = b"".join(joined)
    if len(boundary) > 1 and boundary[:1] + boundary[-1:] == b'""':
        boundary = boundary[1:-1].replace(b"\\\\", b"\\").replace(b'\\"', b'"')
    elif len(boundary) > 1 and boundary[:1] + boundary[-1:] == b"<>":
        boundary = boundary[1:-1]
    # an empty one: the stdlib's reader takes every "--" line for a
    # delimiter, others find no parts
    return boundary.rstrip(_RSTRIPPED) or _DISPUTED


def _ascii_charset(name: bytes) -> bool:
    """Whether the stdlib's reader decodes printable ASCII octets given in
    charset ``name`` (an RFC 2231 extended value's) as those characters:
    it decodes the value in that charset, an unknown one as ASCII."""
    try:
        return _ASCII_TEXT.decode(name.decode("ascii")) == _ASCII_TEXT.decode("ascii")
    except LookupError:
        return True  # (read as ASCII)
    except ValueError:  # (UnicodeError is a ValueError)
        return False


def _parameters(value: bytes) -> list[bytes]:
    """A Content-Type value split at the semicolons outside its quoted
    strings, each of its comments (RFC 5322 3.2.2, nested) a blank: a ";" or a
    "boundary=" inside a quoted value, or "(" and ")" in a quoted boundary
    (RFC 2046 5.1.1's bchars), are no business of the split.  A loop over
    the octets, for the rare value that quotes or comments at all."""
    pieces: list[bytes] = []
    cur = bytearray()
    quoted = False
    depth = 0
    escape = False
    for c in value:
        if escape:
            escape = False
            if depth == 0:
                cur.append(c)
        elif c == 0x5C:  # backslash: a quoted pair, in a quoted string or a comment
            escape = True
            if depth == 0:
                cur.append(c)
        elif quoted:
            cur.append(c)
            quoted = c != 0x22
        elif depth:
            depth += 1 if c == 0x28 else -1 if c == 0x29 else 0
        elif c == 0x22:
            quoted = True
            cur.append(c)
        elif c == 0x28:
            depth = 1
            cur.append(0x20)  # (CFWS: it parts tokens, "b=ab(c)d" is "ab" and "d")
        elif c == 0x3B:
            pieces.append(bytes(cur))
            cur = bytearray()
        else:
            cur.append(c)
    pieces.append(bytes(cur))
    return pieces


class PartHeaders:
    """The body of a message whose header section is downgraded, fed
    chunk by chunk, with the header sections of its MIME parts downgraded
    the same way (``downgrade_header``): a part's Content-Type and
    Content-Disposition parameters (a UTF-8 ``filename=``) as RFC 2231
    values, its Content-Description and other text as RFC 2047 encoded
    words.  The header section of a message/rfc822 part's message is a
    header section too, and downgraded; a message/global part (RFC 6532
    3.7) is left whole: a reader without it takes it as
    application/octet-stream, which the downgraded copy does not change.

    RFC 2046 5.1.1 delimits a multipart's parts by lines of ``--`` and its
    boundary; only such lines are looked at in a part's body, so memory is
    a part header section at most (``PART_HEADER_LIMIT``) and the work a
    regular-expression search per chunk, but for the header sections.
    ``delta`` is how much the CRLF form grew (what POP3's sizes add).
    The body as it was stored is the identity's input: a body whose part
    headers are ASCII comes out octet for octet.  ``feed`` raises
    ``Undowngradable`` for a part header section with UTF-8 that has no
    ASCII form (or is over the limit) -- unless ``strict`` is false: then
    such a section goes as it is (for a body that was measured strictly
    first, ``POP3Protocol._downgrade_start``, and has changed since,
    which a Maildir's files do not: better than a session stopped in the
    middle of a message)."""

    def __init__(self, header: bytes) -> None:
        """``header``: the message's header section as stored (its
        Content-Type says whether there are parts)."""
        self.delta = 0
        self.downgraded = 0  # part header sections with UTF-8 so far
        self.strict = True
        self._stack: list[tuple[bytes, bool]] = []  # open multiparts: (boundary, digest)
        self._index: dict[bytes, int] = {}  # an open boundary: its innermost place in _stack
        self._pending = b""  # a line begun: a body's that may be a delimiter, a header's
        self._lines: list[bytes] = []  # the part header section so far
        self._held = 0
        self._skip = False  # in a body line too long to be a delimiter
        self._state = _BLANK  # the empty line after ``header`` first
        self._digest = False  # the part begun is a multipart/digest's (RFC 2046 5.1.5)
        # a part header section over PART_HEADER_LIMIT, passed on unheld:
        # whether it has 8-bit octets, whether they are UTF-8 so far, and
        # a UTF-8 sequence begun at the end of what was looked at
        self._eight = False
        self._utf8 = True
        self._utf8_tail = b""
        # and whether it may name a type with header sections in its body
        # (its Content-Type is not read): the end of what was looked at,
        # in lower case, for a name a chunk ends in
        self._nests = False
        self._nests_tail = b""
        self._after = self._kind_of(header, b"text/plain")

    @staticmethod
    def has_parts(header: bytes) -> bool:
        """Whether a message with this header section has part header
        sections to downgrade: it is a multipart with a boundary, or a
        message/rfc822 (whose message has one)."""
        kind, boundary = _content_type(header, b"text/plain")
        return (kind.startswith(b"multipart/") and bool(boundary)) or _is_message(kind)

    def _kind_of(self, header: bytes, default: bytes) -> int:
        """Where a header section leads: its body's state, a multipart's
        boundary opened."""
        kind, boundary = _content_type(header, default)
        if kind.startswith(b"multipart/") and boundary == _DISPUTED:
            # its parts are not found as readers find them: a body line
            # taken for a part's field would be changed, or a part's
            # UTF-8 fields go as they are
            if self.strict:
                raise Undowngradable("a multipart's boundary is one MIME readers take "
                                     "differently")
            return _BODY  # (sent as stored: see the class)
        if kind.startswith(b"multipart/") and boundary:
            if len(self._stack) < PART_DEPTH_LIMIT:
                self._index[boundary] = len(self._stack)
                self._stack.append((boundary, kind == b"multipart/digest"))
            elif self.strict:
                raise Undowngradable("MIME parts nested too deep to downgrade")
            return _BODY
        if _is_message(kind):
            return _PART_HEADER
        return _BODY

    def feed(self, data: bytes) -> bytes:
        """The next octets of the body; what to send for them (lines that
        may be a delimiter, or a part header section, are held until
        complete)."""
        buf = self._pending + data if self._pending else data
        self._pending = b""
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self._state == _BODY:
                pos = self._body(buf, pos, out)
                continue
            if self._state == _LONG_HEADER:
                pos = self._long(buf, pos, out)
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                self._pending = buf[pos:]
                if not _may_end(self._pending):
                    self._check_held(len(self._pending), out)
                break
            line = buf[pos:nl + 1]
            pos = nl + 1
            if self._state == _BLANK:
                out.append(line)
                self._state = self._after
            elif line in (b"\n", b"\r\n"):
                self._end_header(out)
                out.append(line)
            elif line[:2] == b"--" and self._delimiter(line, True):
                self._end_header(out)  # a part with no empty line: its header ends here
                out.append(line)
                self._delimiter(line)
            else:
                self._lines.append(line)
                self._held += len(line)
                self._check_held(0, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the body: what is still held."""
        out: list[bytes] = []
        if self._state == _PART_HEADER:
            if self._pending:
                self._lines.append(self._pending)
                self._pending = b""
            self._end_header(out)
        elif self._state == _LONG_HEADER:
            self._look(self._pending)
            self._end_long()
        out.append(self._pending)
        self._pending = b""
        return b"".join(out)

    def _body(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """Body text from ``pos``: passed on up to the next delimiter
        line, which is handled (``_delimiter``); where to go on from."""
        n = len(buf)
        if self._skip:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                out.append(buf[pos:])
                return n
            out.append(buf[pos:nl + 1])
            self._skip = False
            return nl + 1
        if not self._stack:  # no boundary open: the rest is a leaf's
            out.append(buf[pos:])
            return n
        if buf.startswith(b"--", pos):
            start = pos
        else:
            i = buf.find(b"\n--", pos)
            if i < 0:  # no delimiter in this chunk: hold its last line begun
                last = buf.rfind(b"\n", pos)
                start = pos if last < 0 else last + 1
                out.append(buf[pos:start])
                self._hold_body(buf[start:], out)
                return n
            start = i + 1
            out.append(buf[pos:start])
        nl = buf.find(b"\n", start)
        if nl < 0:
            self._hold_body(buf[start:], out)
            return n
        line = buf[start:nl + 1]
        out.append(line)
        self._delimiter(line)
        return nl + 1

    def _long(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """The rest of a part header section over ``PART_HEADER_LIMIT``
        from ``pos``: passed on a line at a time, looked at for UTF-8
        (``_look``), up to its end (an empty line, a delimiter line),
        which leads to the part's body; where to go on from."""
        n = len(buf)
        nl = buf.find(b"\n", pos)
        if self._skip:  # in a line that ends no header section
            piece = buf[pos:] if nl < 0 else buf[pos:nl + 1]
            self._look(piece)
            out.append(piece)
            if nl < 0:
                return n
            self._skip = False
            return nl + 1
        if nl < 0:
            tail = buf[pos:]
            if _may_end(tail):
                self._pending = tail
            else:
                self._look(tail)
                out.append(tail)
                self._skip = True
            return n
        line = buf[pos:nl + 1]
        if line in (b"\n", b"\r\n") or (line[:2] == b"--" and self._delimiter(line, True)):
            self._end_long()
            out.append(line)
            self._state = _BODY  # the part's Content-Type was not held: a leaf's body
            if line[:2] == b"--":
                self._delimiter(line)
        else:
            self._look(line)
            out.append(line)
        return nl + 1

    def _look(self, piece: bytes) -> None:
        """Note whether ``piece`` of a long part header section has 8-bit
        octets, and whether they are UTF-8 (as ``needs_downgrade`` judges
        a whole section), whatever the chunks it came in; and whether it
        names a multipart or message/rfc822 type (``_NESTING``) anywhere."""
        if not self._nests:
            text = self._nests_tail + piece.lower()
            self._nests = _NESTING.search(text) is not None
            self._nests_tail = text[-_NESTING_TAIL:]
        data = self._utf8_tail + piece if self._utf8_tail else piece
        self._utf8_tail = b""
        if data.isascii():
            return
        self._eight = True
        if not self._utf8:
            return
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data":  # a sequence begun at the end
                self._utf8_tail = data[e.start:]
            else:
                self._utf8 = False

    def _end_long(self) -> None:
        """The end of a part header section over ``PART_HEADER_LIMIT``:
        one with UTF-8 has no ASCII form here.  Its Content-Type is not
        read, so its body is taken for a leaf's: where it may be a
        multipart or a message (it names such a type, or it is a part of
        a multipart/digest, RFC 2046 5.1.5) the header sections in its
        body would go as they are, so neither has one."""
        utf8 = self._eight and self._utf8 and not self._utf8_tail
        nests = self._nests or self._digest
        self._eight, self._utf8, self._utf8_tail = False, True, b""
        self._nests, self._nests_tail = False, b""
        self._digest = False
        if self.strict and utf8:
            raise Undowngradable("a MIME part's header section is too long to downgrade")
        if self.strict and nests:
            raise Undowngradable("a MIME part's header section is too long to find its parts")

    def _hold_body(self, tail: bytes, out: list[bytes]) -> None:
        """A body line begun at the end of a chunk: held, unless it is too
        long to be a delimiter line."""
        if len(tail) <= _LINE_HOLD:
            self._pending = tail
        else:
            out.append(tail)
            self._skip = True

    def _delimiter(self, line: bytes, probe: bool = False) -> bool:
        """Whether ``line`` is a delimiter of an open multipart (RFC 2046
        5.1.1: ``--`` boundary, ``--`` after it for the last, blanks
        after); unless ``probe``, the state it leads to: the next part's
        header section, or the close's epilogue.  Inner multiparts a
        delimiter of an outer one passes are closed with it."""
        if len(line) > _LINE_HOLD:
            return False
        text = line.rstrip(b"\r\n").rstrip(b" \t")
        # the boundary it names, as a delimiter (k) or a close delimiter
        # (close), looked up rather than compared with each open one: a
        # body of "--" lines cost the depth of the nesting each
        index = self._index
        k = index.get(text[2:], -1)
        close = index.get(text[2:-2], -1) if text.endswith(b"--", 3) else -1
        if k < 0 and close < 0:
            return False
        if not probe:
            last = close > k  # (the innermost of the two, where both are open)
            k = max(k, close)
            self._digest = self._stack[k][1]
            keep = k if last else k + 1
            if keep < len(self._stack):
                del self._stack[keep:]
                self._index = {b: i for i, (b, _) in enumerate(self._stack)}
            self._state = _BODY if last else _PART_HEADER
        return True

    def _check_held(self, extra: int, out: list[bytes]) -> None:
        """A part header section over ``PART_HEADER_LIMIT`` (its lines,
        not the empty or delimiter line that ends it, ``_may_end``): what
        is held is passed on as it is, and so is the rest of the section,
        looked at for UTF-8 (``_long``; one with UTF-8 has no ASCII form
        here); then the rest of the part is body."""
        if self._held + extra <= PART_HEADER_LIMIT:
            return
        held = b"".join(self._lines) + self._pending
        self._look(held)
        out.append(held)
        self._lines = []
        self._held = 0
        if self._pending:  # (a line begun: the rest of it is the section's)
            self._skip = True
        self._pending = b""
        if self._state == _PART_HEADER:
            self._state = _LONG_HEADER
        else:  # pragma: no cover - the empty line after the top section is short
            self._state = _BODY

    def _end_header(self, out: list[bytes]) -> None:
        """The part header section held is complete: sent downgraded, and
        its Content-Type says what its body is."""
        header = b"".join(self._lines)
        self._lines = []
        self._held = 0
        new = header
        if needs_downgrade(header):
            self.downgraded += 1
            if self.strict and self.downgraded > PART_DOWNGRADE_LIMIT:
                raise Undowngradable("too many MIME part header sections to downgrade")
            try:
                new = downgrade_header(header)
            except Undowngradable:
                if self.strict:
                    raise
        if new is not header:
            self.delta += crlf_size_of(new) - crlf_size_of(header)
        out.append(new)
        default = b"message/rfc822" if self._digest else b"text/plain"
        self._digest = False
        self._state = self._kind_of(header, default)
