"""8-bit -> 7-bit conversion of a message, streamed (RFC 6152 section 3).

When a message has 8-bit content and the next hop does not offer
8BITMIME, the relay must send "an ASCII representation" instead.  This
module owns that conversion.  It reads the source file in lines of at
most ``LINE_LIMIT`` octets (a longer line arrives in pieces) and writes
the result as it goes: memory stays bounded by a few line and chunk
buffers whatever the size of the message (no part is ever held whole).

The MIME structure is followed as it streams: each part's header block
(Content-Type with its boundary, Content-Transfer-Encoding), nested
multiparts (every enclosing boundary ends a part, like the stdlib
``email`` parser), message/rfc822 parts (their own header block and
body), preambles and epilogues.  A leaf part is looked at once ahead of
time (the file is read twice there, nothing is kept) to learn whether
its body has octets above 127 or lines longer than 998 octets.  Then:

* a leaf part that needs it, declared 7bit/8bit/binary or undeclared, is
  re-encoded: ``quoted-printable`` for text/* (soft line breaks, lines of
  at most 76 characters, LF stays a line break), ``base64`` for every
  other type, and for a text part with bare CRs (quoted-printable would
  turn them into line breaks); its Content-Transfer-Encoding field is
  rewritten (or added), and a text part without a charset gets
  ``charset=utf-8`` (or ``unknown-8bit`` when the octets are not UTF-8);
  a message's header block (the top one, or one inside a message/rfc822
  part) that gets an encoding and has no MIME-Version gets it;
* parts already quoted-printable or base64, and 7-bit parts, are copied
  byte for byte (a quoted-printable body with stray raw 8-bit octets has
  them written as ``=XX``, the line cut again at 76 where that made it
  longer; a base64 body has them dropped, and a line's "-" they leave
  at its start, ``Base64Fix``: both decode exactly as before);
* a multipart or message/rfc822 declared 8bit/binary is relabelled 7bit;
  one that is not followed (a multipart without a usable boundary, or
  nested deeper than ``MAX_DEPTH``; a boundary given in RFC 2231 form,
  sections and extended values, is usable when it joins into one
  printable ASCII value, see ``_combine``; one that readers take
  differently is not, see ``_params`` and ``_boundary``), a multipart
  with no part at all, a part readers take for different types (a
  multipart or message/rfc822 to the stdlib's reader and not by RFC
  2045, or the other way round: ``_stdlib_kind``), and a message/partial or
  message/external-body are never base64 or quoted-printable (RFC 2045
  6.4, RFC 2046 5.2): with 8-bit octets or over-long lines inside they
  make the conversion fail with ``Unconvertible``;
* 8-bit octets in a preamble or epilogue (text no reader shows) become
  ``?`` (but for a multipart with no part, above: the stdlib's reader
  shows its "preamble" as its body);
* no line of the copy is longer than ``LINE_TEXT`` (998) octets (RFC 5322
  2.1.1, RFC 5321 4.5.3.1.6).  Besides the leaf bodies re-encoded for
  that (above): a line of a preamble or epilogue (which MIME readers
  ignore, RFC 2046 5.1.1) is broken before a blank, else at 998 octets,
  never into a delimiter (``_Lines``); a header field's line is folded
  before white space (RFC 5322 2.2.3), or, where it has too little and
  the field is unstructured text, written as RFC 2047 encoded words
  (``header7bit.encode_text_field``); a delimiter loses its transport
  padding; a quoted-printable or base64 body's line is cut again with
  soft breaks, or into lines of 76 (``transfer_encoding``).  A line none
  of these can break -- a structured header field's line without white
  space, a part in an unknown encoding, a quoted-printable line with
  nowhere to end a block (``QPFix``) -- makes
  the conversion fail with ``Unconvertible``, and every write is checked
  (``_LineGuard``);
* header fields with 8-bit octets go through
  ``txmailhub.relay.header7bit.encode_field`` (RFC 2047 / RFC 2231 where
  that is safe); a field with no 7-bit form (a non-ASCII mailbox, 8-bit
  octets in Received or Message-ID, ...) makes the whole conversion fail
  with ``Unconvertible``: the relay bounces such a message rather than
  send raw 8-bit header octets to a server that did not ask for them.

A header field longer than ``FIELD_LIMIT`` octets (but for one of
unstructured text, whose 8-bit text is encoded a piece at a time as it
streams: ``_encode_long_field``), Content-Type and
Content-Disposition fields with 8-bit octets of more than
``PARAMETER_FIELDS_LIMIT`` octets in all, a part with an
unknown Content-Transfer-Encoding that would need re-encoding (8-bit
octets or lines over 998 octets), and MIME
nesting deeper than ``MAX_DEPTH`` (deeper parts are handled as leaves)
are the limits.  Input and output are files with LF line endings, the
queue's stored form.  It must not know about SMTP or the queue.
"""

from __future__ import annotations

import codecs
import functools
import io
import re
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO

from txmailhub.regular_file import open_regular
from txmailhub.relay.header7bit import (
    TextFieldStream,
    Unconvertible,
    encode_field,
    encode_text_field,
    readable_text,
)
from txmailhub.relay.transfer_encoding import HIGH as _HIGH
from txmailhub.relay.transfer_encoding import LINE_TEXT, SINKS
from txmailhub.rfc5322 import comment_end, escaped

__all__ = ["FIELD_LIMIT", "LINE_LIMIT", "LINE_TEXT", "PARAMETER_FIELDS_LIMIT", "Unconvertible",
           "convert_file", "has_8bit", "to_7bit"]

_CHUNK = 65536
LINE_LIMIT = 8192  # octets read at a time; longer lines come in pieces
FIELD_LIMIT = 65536  # one header field, continuation lines included
PARAMETER_FIELDS_LIMIT = 65536
"""The most octets of Content-Type and Content-Disposition fields with
8-bit octets that one message's conversion reads (every part's, added
up).  The stdlib's parser, which reads their parameters, takes time that
grows with the square of a field's tokens: each field is bounded
(``downgrade._PARAM_TEXT_MAX``), but 2,000 parts with a 2 KiB field
each held a relay worker for minutes.  A real message's are a few
hundred octets a part; one over this has no 7-bit form here."""
MAX_DEPTH = 50
_MAX_BOUNDARY = 200
_NEEDS_CONVERSION = ("7bit", "8bit", "binary", "")
# types that are never base64 or quoted-printable (RFC 2045 6.4, RFC 2046 5.2)
_COMPOSITE = ("multipart/", "message/rfc822", "message/partial", "message/external-body")
_AROUND_SLASH = re.compile(r"[ \t\r\n]*/[ \t\r\n]*")
# RFC 2045 5.1: type "/" subtype, each a token (no SPACE, CTLs, tspecials)
_TOKEN = r"[!#-'*+\-.0-9A-Z^-~]+"
_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
# what a type that is none (but has a "/") is read as: a leaf no reader
# takes for text, base64 where it has 8-bit octets (octets kept exactly)
_NO_TYPE = "application/octet-stream"
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")
# where a line over LINE_TEXT may be broken: before a run of blanks that
# has something else on both sides (the rest never a line of blanks only)
_FOLD_AT = re.compile(rb"(?<=[^ \t])[ \t]+(?=[^ \t\r\n])")


def has_8bit(path: str) -> bool:
    """Whether the file holds any octet above 127 (read in chunks)."""
    with open_regular(path) as f:  # (a FIFO: refused, not waited on)
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return False
            if not chunk.isascii():
                return True


def convert_file(src: str, dst: str) -> int:
    """Write the 7-bit form of message file ``src`` to ``dst``; return its size.

    Raises ``Unconvertible`` when the message has no 7-bit form."""
    with open_regular(src) as fin, open(dst, "wb") as fout:
        to_7bit(fin, fout)
        return fout.tell()


def to_7bit(source: BinaryIO, target: BinaryIO) -> None:
    """Read a message from ``source`` (seekable), write its 7-bit form to
    ``target``."""
    converter = _Converter(source, target)
    converter.run()
    converter.out.flush()


# --- header blocks ----------------------------------------------------------------


@dataclass(frozen=True)
class _Headers:
    start: int  # offset of the first header line
    end: int  # offset after the last header field (the blank line, if any, follows)
    ctype: str  # "maintype/subtype", lower case ("" when absent)
    params: dict[str, str]
    cte: str  # lower case, "" when absent
    has_charset: bool
    # the line end of a body that starts at a line that is no field, with
    # no empty line before it ("" otherwise): the copy puts one there
    unseparated: bytes = b""


def _matches(line: bytes, boundary: bytes) -> bool:
    """``line`` is "--boundary" or "--boundary--", then blanks (RFC 2046 5.1.1)."""
    if not line.startswith(b"--") or not line.startswith(boundary, 2):
        return False
    rest = line[2 + len(boundary):]
    if rest.startswith(b"--"):
        rest = rest[2:]
    return not rest.rstrip(b"\r\n").strip(b" \t") and b"\n" not in rest.rstrip(b"\r\n")


def _text_length(line: bytes) -> int:
    """The octets of ``line`` before its line end (LF or CRLF)."""
    n = len(line)
    if line.endswith(b"\n"):
        n -= 2 if line.endswith(b"\r\n") else 1
    return n


class _LineGuard:
    """The converter's output, checked: a line over ``LINE_TEXT`` octets
    (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6) is refused with ``Unconvertible``
    rather than written.  The converter breaks or re-encodes every such
    line it can (``_Lines``, ``transfer_encoding``); what is left (a part
    in an unknown encoding, a quoted-printable line with nowhere to end a
    block) has
    no 7-bit form, and a server without 8BITMIME may refuse or cut it.

    Writes are gathered up to ``_CHUNK`` octets and checked together (the
    converter writes a line, or a piece of one, at a time: a check per
    write cost more than the conversion of a base64 body); ``flush``
    writes the rest."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.buf = bytearray()
        self.length = 0  # octets of the current line already written
        self.cr = False  # the last octet written was a CR (a CRLF's, maybe)

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        data = bytes(self.buf)
        self.buf.clear()
        if not data:
            return
        nl = data.rfind(b"\n")
        if nl >= 0 and self.length + nl > LINE_TEXT:  # (else no line in it can be over)
            lines = data[:nl].split(b"\n")  # the lines it ends, without their LF
            first = lines[0]
            ends_cr = first.endswith(b"\r") if first else self.cr
            longest = max(map(len, lines[1:]), default=0)
            if (self.length + len(first) - ends_cr > LINE_TEXT or longest > LINE_TEXT + 1
                    or (longest == LINE_TEXT + 1 and any(
                        len(line) == longest and not line.endswith(b"\r")
                        for line in lines[1:]))):
                raise Unconvertible(f"a line longer than {LINE_TEXT} octets has no 7-bit form")
        self.length = self.length + len(data) if nl < 0 else len(data) - nl - 1
        self.cr = data.endswith(b"\r")
        # a CR written last may be the start of a CRLF line end
        if self.length - self.cr > LINE_TEXT:
            raise Unconvertible(f"a line longer than {LINE_TEXT} octets has no 7-bit form")
        self.out.write(data)


class _Lines:
    """Writes text to ``out`` with every line broken to ``LINE_TEXT``
    octets at most, a piece of a line at a time (memory: one line's first
    ``LINE_TEXT`` octets and the piece being written).  A line within the
    limit is written as it is.  A longer one is broken before a run of
    blanks (``_FOLD_AT``) as late as the limit allows, so each new line
    starts with blanks, never between a backslash and the blank it quotes
    (a quoted-pair, RFC 5322 3.2.1, is one character: ``rfc5322.escaped``):

    * ``fold``: a header field, folded so (RFC 5322 2.2.3; unfolding gives
      the field back as it was); one with no such place within the limit
      has no 7-bit form (``Unconvertible``);
    * else a preamble or epilogue, text MIME readers ignore (RFC 2046
      5.1.1), broken at ``LINE_TEXT`` octets where it has no blank.  No
      new line starts with "-" there (the break goes back before a run of
      "-"; only a line that begins with one longer than the limit is
      broken inside it, and no piece after it then starts with "--",
      see ``_peel``), and a piece that would read as a delimiter of
      ``boundaries`` is broken after its "--" instead: breaking a line
      never adds a body part."""

    def __init__(self, out: BinaryIO, fold: bool, boundaries: list[bytes] | None = None) -> None:
        self.out = out
        self.fold = fold
        self.boundaries = boundaries or []
        self.line = b""  # the current line's part not yet written
        self.broken = False  # the current line was broken: ``line`` is its last piece
        self.changed = False  # some line was broken

    def write(self, data: bytes) -> None:
        while data:
            nl = data.find(b"\n") + 1
            piece, data = (data, b"") if not nl else (data[:nl], data[nl:])
            if not self.line and nl and len(piece) <= LINE_TEXT + 1:
                self.out.write(piece)  # a whole line within the limit
                continue
            self.line += piece
            while _text_length(self.line) - (not nl and self.line.endswith(b"\r")) > LINE_TEXT:
                cut = self._cut(self.line)
                self.out.write(self.line[:cut] + b"\n")
                self.line = self.line[cut:]
                self.broken = self.changed = True
                self._peel()
            if nl:
                self.flush()

    def flush(self) -> None:
        """The end of the text (or of a line): what is held goes out."""
        if self.line:
            if self.broken:
                self._peel()
            self.out.write(self.line)
            self.line = b""
        self.broken = False

    def _peel(self) -> None:
        """The line was broken inside a run of "-" (``_cut``: one that
        begins it and is longer than the limit), and what is left of it
        starts with "--": ``--b`` after a line of 998 "-", or ``--b---b``
        going on to be broken again -- a delimiter the message never had,
        for a reader that compares a boundary with the beginning of each
        line (RFC 2046 5.1.1).  The run but its last "-" goes on lines of
        its own, of "-" only (a single "-" where such a line would be a
        delimiter of ``boundaries``: "-" is none, a boundary is never
        empty); what is left starts with one "-" and no more."""
        while self.line.startswith(b"--"):
            run = len(self.line) - len(self.line.lstrip(b"-"))
            n = min(run - 1, LINE_TEXT)
            if any(_matches(self.line[:n], b) for b in self.boundaries):
                n = 1
            self.out.write(self.line[:n] + b"\n")
            self.line = self.line[n:]

    def _cut(self, line: bytes) -> int:
        """Where to break ``line`` (over the limit): the length of the
        piece that goes on a line of its own."""
        cut = 0
        for m in _FOLD_AT.finditer(line):
            at = m.start()
            if escaped(line, at):
                # the first blank is a quoted-pair's (RFC 5322 3.2.1): a
                # fold goes before the next blank of the run, if any
                at += 1
                if at == m.end():
                    continue
            if at > LINE_TEXT:
                break
            cut = at
        if not cut:
            if self.fold:
                raise Unconvertible(f"a header field has a line longer than {LINE_TEXT} "
                                    "octets and no white space to fold it at")
            cut = LINE_TEXT
            while cut > 0 and line[cut:cut + 1] == b"-":
                cut -= 1
            if cut == 0:
                cut = LINE_TEXT
        if any(_matches(line[:cut], b) for b in self.boundaries):
            if self.fold:  # (a field named "--b " with blanks before its colon)
                raise Unconvertible("a header field would fold into a boundary delimiter")
            cut = 2  # ("--", a delimiter of no boundary: they are never empty)
        return cut


def _unpadded_delimiter(line: bytes) -> bytes:
    """A delimiter line (``_matches``) without its transport padding when
    that makes it longer than ``LINE_TEXT`` octets: RFC 2046 5.1.1 has a
    receiver ignore the padding (and a composer add none)."""
    if _text_length(line) <= LINE_TEXT:
        return line
    end = b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""
    return line[:len(line) - len(end)].rstrip(b" \t") + end


_SECTION = re.compile(r"([^*]+)\*(?:(\d+)(\*)?)?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PRINTABLE = re.compile(r"[ -~]*")
_UNQUOTED, _QUOTED, _QUOTED_AND_MORE = range(3)  # (a value's form, ``_param_list``)
# RFC 2045 5.1's token but "'" and "*", RFC 2231 7's attribute-char and "%"
_ATTRIBUTE_TEXT = re.compile(r"[!#-&+\-.0-9A-Z^-~]+")


def _boundary_token(value: str, name: re.Match[str] | None) -> bool:
    """Whether ``value``, an unquoted value of a boundary parameter named
    ``name`` (``_SECTION``'s match, None for plain ``boundary``), reads
    as a whole in every reader.  A value is a token or a quoted string
    (RFC 2045 5.1); readers that know RFC 2231 take "'" and "*" in a
    token for its syntax (the stdlib's reads ``boundary=a'b`` as no
    boundary, ``boundary=a''b`` as "b", ``boundary=a*b`` as "a"), so a
    plain value or section has neither, and an extended value has them
    only as its ``charset'language'`` (RFC 2231 4)."""
    if name is not None and (name.group(2) is None or name.group(3) is not None) and (
            name.group(2) in (None, "0")):  # an extended value's first section
        pieces = value.split("'", 2)
        if len(pieces) != 3:
            return False
        value = pieces[2]
    return bool(_ATTRIBUTE_TEXT.fullmatch(value))


class _Comments:
    """Comments (RFC 5322 3.2.2) in one Content-Type value.  A "(" whose
    comment is never closed is an ordinary character, and so is every
    later one: a field like ``title=(draft; boundary=b`` keeps the
    boundary it had before comments were read (one scan to the end at
    most, never one per "(")."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.open_from = len(text) + 1  # where an unclosed comment starts

    def end(self, i: int) -> int:
        """``text[i]`` is "(": the index after the comment (nested, with
        quoted pairs), or -1 when it is no comment (never closed)."""
        if i >= self.open_from:
            return -1
        end = comment_end(self.text, i)
        if end < 0:
            self.open_from = i
        return end

    def skip_cfws(self, i: int) -> int:
        text = self.text
        while i < len(text):
            if text[i] in " \t":
                i += 1
            elif text[i] == "(" and (j := self.end(i)) >= 0:
                i = j
            else:
                break
        return i

    def to_semicolon(self, i: int) -> int:
        """The index of the next ";" outside comments (or the end)."""
        text = self.text
        while i < len(text) and text[i] != ";":
            j = self.end(i) if text[i] == "(" else -1
            i = j if j >= 0 else i + 1
        return i


def _param_list(rest: str) -> list[tuple[str, str, int]]:
    """The ``name=value`` pairs after a Content-Type's first ";", in order,
    names in lower case, quoted strings unquoted (with the value's form:
    ``_UNQUOTED``, ``_QUOTED``, or ``_QUOTED_AND_MORE``, a quoted string
    with more than comments and blanks after it).  Tolerant like a reader
    must be: comments are skipped where white space may stand (before a
    name, around "=", after a value, and inside an unquoted value after
    white space: "b=x (c)" is "x", "b=x(c)" stays "x(c)"), an unquoted
    value runs to the next ";" (blanks inside kept), anything after a
    quoted string up to the next ";" is ignored, and a piece without "="
    is skipped."""
    pairs: list[tuple[str, str, int]] = []
    comments = _Comments(rest)
    i, n = 0, len(rest)
    while i < n:
        i = comments.skip_cfws(i)
        if i < n and rest[i] == ";":
            i += 1
            continue
        start = i
        while i < n and rest[i] not in " \t=;(":
            i += 1
        name = rest[start:i].lower()
        i = comments.skip_cfws(i)
        if not name or i >= n or rest[i] != "=":
            i = comments.to_semicolon(i)
            continue
        i = comments.skip_cfws(i + 1)
        value: list[str] = []
        if i < n and rest[i] == '"':
            i += 1
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            end = comments.skip_cfws(i + 1)
            i = comments.to_semicolon(end)
            pairs.append((name, "".join(value), _QUOTED if end >= i else _QUOTED_AND_MORE))
            continue
        while i < n and rest[i] != ";":
            if rest[i] == "(" and (not value or value[-1] in " \t"):
                j = comments.end(i)
                if j >= 0:
                    i = j
                    continue
            value.append(rest[i])
            i += 1
        pairs.append((name, "".join(value).strip(" \t"), _UNQUOTED))
    return pairs


_ASCII_TEXT = bytes(range(0x20, 0x7F))


@functools.lru_cache(maxsize=64)
def _ascii_charset(name: str) -> bool:
    """Whether printable ASCII octets in charset ``name`` (an RFC 2231
    extended value's, "" for none) are those characters: readers decode
    the value in its charset (RFC 2231 4), and in UTF-7 or UTF-16 a
    boundary's octets would read as another boundary.  An unknown
    charset is no such charset: readers differ on what they make of it
    (the stdlib's reads it as ASCII)."""
    if not name:
        return True
    try:
        return _ASCII_TEXT.decode(name) == _ASCII_TEXT.decode("ascii")
    except (LookupError, ValueError):  # (UnicodeError is a ValueError)
        return False


def _extended(value: str, first: bool) -> bytes | None:
    """The octets of an RFC 2231 extended value (section 4): the first
    section starts with charset'language', every one is percent-encoded.
    None when it is malformed (no two quotes, a "%" not followed by two
    hex digits, a raw octet above 127), and when its charset is one in
    which ASCII text reads as other characters (``_ascii_charset``)."""
    if first:
        parts = value.split("'", 2)
        if len(parts) != 3 or not _ascii_charset(parts[0]):
            return None
        value = parts[2]
    if not value.isascii() or _BAD_ESCAPE.search(value):
        return None
    return urllib.parse.unquote_to_bytes(value)


def _combine(plain: str | None, single: list[str],
             sections: dict[int, list[tuple[str, bool]]]) -> str:
    """One parameter's value from its plain form, its ``name*`` form and
    its ``name*0``, ``name*1``... sections (RFC 2231 3, 4), joined in the
    sections' order whatever their order in the field.  An RFC 2231 value
    must come out printable ASCII; a section missing, given twice or with
    a leading zero, a malformed extended value, a form given twice, or
    forms that disagree (RFC 2231 3 forbids a plain and a "*0" form side
    by side) leave no usable value: "".  A plain form alone keeps the
    tolerant reading it always had."""
    candidates: list[str | None] = [] if plain is None else [plain]
    if single:
        value = _extended(single[0], True) if len(single) == 1 else None
        candidates.append(None if value is None else value.decode("latin-1"))
    if sections:
        octets: bytes | None = b""
        if sorted(sections) != list(range(len(sections))):
            octets = None
        for number in range(len(sections)):
            if octets is None or len(sections.get(number, ())) != 1:
                octets = None
                break
            text, extended = sections[number][0]
            piece = _extended(text, number == 0) if extended else (
                text.encode("ascii") if text.isascii() else None)
            octets = None if piece is None else octets + piece
        candidates.append(None if octets is None else octets.decode("latin-1"))
    if plain is None:  # RFC 2231 forms only: they must be printable ASCII
        candidates = [c if c is not None and _PRINTABLE.fullmatch(c) else None
                      for c in candidates]
    if None in candidates or len(set(candidates)) != 1:
        return ""
    return candidates[0] or ""


def _params(value: bytes) -> tuple[str, dict[str, str]]:
    """Content-Type value -> (type, parameters), RFC 2231 forms (sections,
    extended values) joined under the parameter's name; see ``_param_list``
    and ``_combine`` for what is tolerated.  The first of two plain forms
    of a name wins -- but for ``boundary``, which says where the parts
    are: readers differ on which of two is the one (the stdlib's takes
    the first), so two that differ leave none (""), and so does one
    written as no quoted string and no RFC 2045 token (``boundary=a=b``,
    ``boundary==?x?=``, ``boundary=a(c)``: a reader takes the token it
    begins with, "a", or none, where another takes the whole value), one
    whose token has RFC 2231's "'" or "*" (``_boundary_token``), or one
    written as a quoted string with more after it than comments
    (``boundary="a"b``: "a" or '"a"b')."""
    text = value.decode("ascii", "replace")
    comments = _Comments(text)
    cut = comments.to_semicolon(0)  # a ";" in a comment ends nothing
    rest = text[cut + 1:]
    head, i = "", 0
    while i < cut:  # the type without its comments: "multipart/digest (x)"
        j = comments.end(i) if text[i] == "(" else -1
        if j >= 0:
            head += " "  # (CFWS: "multi(x)part" is two tokens, no type)
            i = j
        elif text[i] == "(":  # never closed: the rest of the type is its text
            break
        else:
            head += text[i]
            i += 1
    plain: dict[str, str] = {}
    single: dict[str, list[str]] = {}
    sections: dict[str, dict[int, list[tuple[str, bool]]]] = {}
    bad: set[str] = set()
    for name, v, form in _param_list(rest):
        m = _SECTION.fullmatch(name)
        base = name if m is None else m.group(1)
        if base == "boundary" and (form == _QUOTED_AND_MORE or (
                form == _UNQUOTED and not _boundary_token(v, m))):
            bad.add(base)
        if m is None:
            if base == "boundary" and plain.get(name, v) != v:
                bad.add(base)
            plain.setdefault(name, v)
            continue
        base, number, star = m.groups()
        if number is None:
            single.setdefault(base, []).append(v)
        elif len(number) > 9 or number != str(int(number)):
            # RFC 2231 3: no leading zeros; a field of at most FIELD_LIMIT
            # octets has fewer sections (and int() refuses 4300 digits)
            bad.add(base)
        else:
            sections.setdefault(base, {}).setdefault(int(number), []).append(
                (v, star is not None))
    params = dict(plain)
    for base in set(single) | set(sections) | bad:
        params[base] = "" if base in bad else _combine(
            plain.get(base), single.get(base, []), sections.get(base, {}))
    # White space goes at the type's ends and around its "/" (RFC 5322
    # 3.2.2 CFWS between tokens), as the stdlib's reader takes it; only
    # SP, HTAB and line breaks are white space (RFC 5322 2.2.3).  What is
    # left must be two RFC 2045 tokens: a blank, a comment or a CTL inside
    # either ("mu ltipart", "multipart/mi xed", "multi(x)part",
    # "\x1emultipart": 0x1c-0x1f are white space to Python's str) leaves
    # no type a reader knows, so no multipart, whose 8-bit octets read as
    # a preamble became "?".
    ctype = _AROUND_SLASH.sub("/", head.strip(" \t\r\n")).lower()
    if "/" in ctype and not _TYPE.fullmatch(ctype):
        ctype = _NO_TYPE
    return ctype, params


_DISPUTED_TYPE = "multipart/x-read-differently"


def _kind(ctype: str) -> str:
    """What the converter makes of a part of type ``ctype`` (``_params``):
    "multipart", "message" (message/rfc822, followed) or "leaf"."""
    if ctype.startswith("multipart/"):
        return "multipart"
    return "message" if ctype == "message/rfc822" else "leaf"


def _stdlib_kind(value: bytes) -> str:
    """``_kind`` as the stdlib's reader sees a Content-Type of ``value``
    (``email.message.Message.get_content_type``: the text up to the first
    ";", white space off its ends, with one "/").  Readers that follow
    RFC 2045 5.1 and RFC 5322 3.2.2 take comments and blanks around the
    "/" for white space (``multipart / mixed`` is a multipart) and a
    token with a blank or a control character inside for no type
    (``multipart/mi xed`` is none); the stdlib's reader does the other
    way round, and takes control characters at the ends for white space
    (``multipart/mixed\x0b``)."""
    text = value.decode("ascii", "replace").partition(";")[0].strip().lower()
    if text.count("/") != 1:
        return "leaf"
    main, _, sub = text.partition("/")
    if main == "multipart":
        return "multipart"
    if main == "message" and re.match(r"rfc822(?![!#-'*+\-.0-9A-Z^-~])", sub):
        return "message"
    return "leaf"


def _boundary(params: dict[str, str]) -> bytes:
    """The boundary a multipart's parts are found by (``_params``), or
    b"" when it is not followed: none, longer than ``_MAX_BOUNDARY``, or
    one that readers take differently.  A boundary is ASCII (RFC 2046
    5.1.1): one with 8-bit octets has no 7-bit delimiter lines.  A line
    break (a CR) in it ends a line for some readers and not for others.
    And it never ends with white space (RFC 2046 5.1.1, bcharsnospace):
    the stdlib's reader drops it (``boundary="abc "`` is ``abc``, and
    ``--abc`` a delimiter, ``--abc --`` none), others keep it, and no
    copy reads the same in both.  Nor does the stdlib's reader take a
    boundary between "<" and ">" or between two '"' as it is
    (``boundary="<abc>"`` is ``abc`` there: ``email.utils.unquote``
    unquotes it once more) -- neither is a bchar --, nor one with a
    backslash, which it writes again without its quoted-pair and reads
    that (``boundary="a\\\\"; x=1`` is ``a"; x="1`` there).  Such a
    multipart is copied as it is, not followed (with 8-bit octets inside,
    it has no 7-bit form)."""
    value = params.get("boundary", "")
    if (not value or len(value) > _MAX_BOUNDARY or not value.isascii() or "\r" in value
            or "\n" in value or "\\" in value or value != value.rstrip()
            or (len(value) > 1 and value[0] + value[-1] in ('""', "<>"))):
        return b""
    return value.encode("ascii")


def _with_charset(field: bytes, charset: str) -> bytes:
    """A Content-Type ``field`` (the final line end included) with
    "; charset=..." after its parameters.  Continuation lines of blanks
    at its end go (the parameter after a line end would begin a line of
    its own), and a quoted string or comment it leaves open is closed
    first: the parameter written into it would be no parameter.  A field
    with no type at all gets "text/plain" (the type a part without one
    is read as, RFC 2045 5.2; only a text part gets a charset), in front
    of what it holds: comments alone (``Content-Type: (x)``), or
    parameters after no type."""
    name, _, value = field.rstrip(b" \t\r\n").partition(b":")
    if not value.strip(b" \t\r\n"):
        return name + b": text/plain; charset=" + charset.encode() + b"\n"
    quoted, depth, i = False, 0, 0
    typed, in_type = False, True  # (a type is what comes before the first ";")
    while i < len(value):
        c = value[i:i + 1]
        if c == b"\\" and (quoted or depth):
            i += 2  # a quoted-pair (RFC 5322 3.2.1)
            continue
        if quoted:
            quoted = c != b'"'
        elif c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif depth:
            pass
        elif c == b";":
            in_type = False
        else:
            typed = typed or (in_type and c not in b" \t\r\n")
            quoted = c == b'"'
        i += 1
    if not typed:
        value = b" text/plain " + value.lstrip(b" \t\r\n")
    if i > len(value):  # a backslash at the end: one more makes it a pair
        value += b"\\"
    if quoted or depth:
        value += b'"' * quoted + b")" * depth
    else:
        value = value.rstrip(b" \t\r\n;")
    return name + b":" + value + b"; charset=" + charset.encode() + b"\n"


class _Converter:
    def __init__(self, source: BinaryIO, target: BinaryIO) -> None:
        self.src = source
        self.out = _LineGuard(target)
        self.bol = True  # the next read starts at the beginning of a line
        self.boundaries: list[bytes] = []  # innermost last
        self.after_stop = 0  # where the delimiter that ended a header block ends
        self.parameter_octets = 0  # read so far (``PARAMETER_FIELDS_LIMIT``)

    # --- reading ----------------------------------------------------------------

    def _read(self) -> tuple[bytes, bool]:
        """The next line or piece of a line, and whether it starts a line."""
        bol = self.bol
        line = self.src.readline(LINE_LIMIT)
        self.bol = line.endswith(b"\n")
        if bol and not self.bol and line.startswith(b"--") and self.boundaries:
            line = self._unpadded(line)
        return line, bol

    def _unpadded(self, piece: bytes) -> bytes:
        """``piece``, a line's first LINE_LIMIT octets; when they are a
        delimiter and the rest of the line is blanks, the delimiter line
        without that transport padding (RFC 2046 5.1.1: a receiver must
        take padding, a composer adds none).  Read whole, the delimiter
        is one line to every caller: none copies the padding's rest as
        a part's first line, nor writes a part's fields after it."""
        head = piece.rstrip(b" \t")
        if not any(_matches(head, b) for b in self.boundaries):
            return piece
        back = self.src.tell()
        while True:
            more = self.src.readline(LINE_LIMIT)
            rest = more.rstrip(b"\r\n")
            if rest.strip(b" \t"):  # more than padding: no delimiter
                self.src.seek(back)
                return piece
            if not more or more.endswith(b"\n"):
                self.bol = bool(more)
                return head + more[len(rest):]

    def _seek(self, offset: int) -> None:
        self.src.seek(offset)
        self.bol = True

    def _is_boundary(self, line: bytes, bol: bool, outer_only: bool = False) -> bool:
        """Whether ``line`` is a delimiter of an enclosing multipart."""
        if not bol or not line.startswith(b"--"):
            return False
        if len(line) == LINE_LIMIT and not line.endswith(b"\n"):
            # (a delimiter's piece of LINE_LIMIT octets is read whole, see
            # ``_unpadded``: one left cut goes on with more than blanks)
            return False
        stack = self.boundaries[:-1] if outer_only else self.boundaries
        return any(_matches(line, b) for b in stack)

    # --- structure ----------------------------------------------------------------

    def run(self) -> None:
        self._part("text/plain", 0)

    def _scan_headers(self) -> tuple[_Headers, bytes | None]:
        """Read the header block (nothing kept but the MIME fields); return
        it and, when it ends at a boundary line, that line."""
        start = self.src.tell()
        ctype_raw = cte_raw = b""
        field = b""
        keep = False  # the field being read is Content-Type or -Transfer-Encoding
        stop: bytes | None = None
        unseparated = b""
        while True:
            pos = self.src.tell()
            line, bol = self._read()
            if field and line and (not bol or line[:1] in (b" ", b"\t")):
                if keep:
                    if len(field) + len(line) > FIELD_LIMIT:
                        raise Unconvertible("a MIME header field is too long to convert")
                    field += line
                continue
            if keep:
                name, _, value = field.partition(b":")
                if name.strip().lower() == b"content-type":
                    ctype_raw = value
                else:
                    cte_raw = value
            field, keep = b"", False
            end = pos
            if not line:
                break
            if self._is_boundary(line, bol):
                stop = line
                self.after_stop = self.src.tell()
                self._seek(pos)
                break
            if line in (b"\n", b"\r\n"):
                break
            if not _FIELD_NAME.match(line):
                self._seek(pos)  # not a header field: the body starts here
                if bol:  # (not the rest of a delimiter line read in pieces)
                    unseparated = b"\r\n" if line.endswith(b"\r\n") else b"\n"
                break
            field = line
            keep = line.partition(b":")[0].strip().lower() in (
                b"content-type", b"content-transfer-encoding")
        # unfolded by taking the line breaks out, nothing more (RFC 5322
        # 2.2.3): blanks inside a quoted boundary are part of it
        value = ctype_raw.replace(b"\r\n", b"").replace(b"\n", b"")
        ctype, params = _params(value)
        if "/" not in ctype:
            ctype = ""
        if _kind(ctype) != _stdlib_kind(value):
            # a multipart, or message, to one reader and not to another:
            # neither followed nor encoded (RFC 2045 6.4), as a multipart
            # without a usable boundary is not
            ctype, params = _DISPUTED_TYPE, {}
        cte = cte_raw.decode("ascii", "replace").strip().strip('"').lower()
        return _Headers(start, end, ctype, params, cte, "charset" in params, unseparated), stop

    def _part(self, default_type: str, depth: int, message: bool = False) -> bytes | None:
        """Convert one part (header block and body) from the current
        position; return the boundary line that ended it (None at EOF).

        ``message``: the header block is a message's, the body of a
        message/rfc822 part (a notice's returned message, a forwarded
        one), not a body part's: one that gets an encoding gets
        MIME-Version too, as the top-level message does (RFC 2045 4
        requires it in an embedded message that claims to be MIME; a
        reader shows the quoted-printable of one without it as it is)."""
        headers, stop = self._scan_headers()
        body_start = self.src.tell()
        ctype = headers.ctype or default_type
        boundary = _boundary(headers.params)
        relabel = "7bit" if headers.cte in ("8bit", "binary") else None
        if ctype.startswith("multipart/") and boundary and depth < MAX_DEPTH:
            self._write_headers(headers, body_start, relabel)
            if stop is not None:
                return self._taken(stop)
            child = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            return self._multipart(boundary, child, depth)
        if ctype == "message/rfc822" and headers.cte in _NEEDS_CONVERSION and depth < MAX_DEPTH:
            self._write_headers(headers, body_start, relabel)
            if stop is not None:
                return self._taken(stop)
            return self._part("text/plain", depth + 1, message=True)
        # a leaf
        mode = "copy"
        charset = None
        if stop is None:
            if headers.cte in _NEEDS_CONVERSION:
                eight_bit, long_lines, has_cr, utf8 = self._survey(body_start)
                if (eight_bit or long_lines) and ctype.startswith(_COMPOSITE):
                    # not followed (no boundary, nested too deep) or 7bit by
                    # definition: RFC 2045 6.4 allows such an entity no
                    # base64 or quoted-printable, RFC 2046 5.2.2.1, 5.2.3.1
                    # no 8bit
                    what = ("a part MIME readers take for different types" if ctype ==
                            _DISPUTED_TYPE else f"a {ctype} part")
                    raise Unconvertible(f"{what} has 8-bit octets or over-long lines and "
                                        "no 7-bit form")
                if eight_bit or long_lines:
                    if ctype.startswith("text/") and not has_cr:
                        mode = "qp"
                        if eight_bit and not headers.has_charset:
                            charset = "utf-8" if utf8 else "unknown-8bit"
                    else:
                        mode = "base64"
            elif headers.cte == "quoted-printable":
                mode = "qp-fix"
            elif headers.cte == "base64":
                mode = "base64-fix"
            elif any(self._survey(body_start)[:2]):
                # no other encoding on top of it (RFC 2045 6.4), and none
                # of its lines may be cut
                raise Unconvertible(
                    f"a part in Content-Transfer-Encoding {headers.cte} has 8-bit octets "
                    f"or lines over {LINE_TEXT} octets")
        new_cte = {"qp": "quoted-printable", "base64": "base64"}.get(mode, relabel)
        self._write_headers(headers, body_start, new_cte, charset,
                            add_type=ctype if headers.ctype == "" else None,
                            top=depth == 0 or message)
        if stop is not None:
            return self._taken(stop)
        return self._body(mode)

    def _taken(self, line: bytes) -> bytes:
        """``line``, the delimiter that ended a header block
        (``_scan_headers`` puts it back, for the copy of the block), read
        again: the multipart takes it as read, and a part begun before it
        would end at it again, and again, without end."""
        self.src.seek(self.after_stop)
        self.bol = line.endswith(b"\n")
        return line

    def _multipart(self, boundary: bytes, child_type: str, depth: int) -> bytes | None:
        self.boundaries.append(boundary)
        try:
            # the preamble: up to the first delimiter (lines over the limit
            # broken, as in the epilogue: ``_Lines``)
            text = _Lines(self.out, False, self.boundaries)
            eight_bit = False
            while True:
                line, bol = self._read()
                if not line or self._is_boundary(line, bol):
                    text.flush()
                    break
                eight_bit = eight_bit or not line.isascii()
                text.write(_HIGH.sub(b"?", line))
            if (eight_bit or text.changed) and (
                    not line or not _matches(line, boundary)
                    or line.startswith(b"--", 2 + len(boundary))):
                # no part follows: the stdlib's reader shows such a
                # "preamble" as the multipart's body, the octets changed
                raise Unconvertible("a multipart without parts has 8-bit octets or lines "
                                    f"over {LINE_TEXT} octets and no 7-bit form")
            if not line:
                return None
            while True:
                if not _matches(line, boundary):
                    return line  # an enclosing boundary: this multipart is cut short
                self.out.write(_unpadded_delimiter(line))
                if line.startswith(b"--", 2 + len(boundary)):
                    break  # the close delimiter
                ended = self._part(child_type, depth + 1)
                if ended is None:
                    return None
                line = ended
            # the epilogue: up to an enclosing boundary or the end
            text = _Lines(self.out, False, self.boundaries)
            while True:
                line, bol = self._read()
                if not line:
                    text.flush()
                    return None
                if self._is_boundary(line, bol, outer_only=True):
                    text.flush()
                    return line
                text.write(_HIGH.sub(b"?", line))
        finally:
            self.boundaries.pop()

    # --- headers out -----------------------------------------------------------------

    def _write_headers(self, h: _Headers, body_start: int, new_cte: str | None,
                       charset: str | None = None, add_type: str | None = None,
                       top: bool = False) -> None:
        """Copy the header block again from ``h.start``, rewriting the
        Content-Transfer-Encoding (``new_cte``), adding a charset, and
        encoding fields with 8-bit octets.  One field is held at a time
        (up to ``FIELD_LIMIT``; a longer 7-bit field is copied as it comes).
        A line over ``LINE_TEXT`` octets is folded (``_Lines``)."""
        fields = _Lines(self.out, True, self.boundaries)
        self._seek(h.start)
        seen: set[bytes] = set()
        field = b""
        streaming = False  # copying an over-long 7-bit field through
        while self.src.tell() < h.end:
            line, bol = self._read()
            if (field or streaming) and (not bol or line[:1] in (b" ", b"\t")):
                if streaming:
                    if not line.isascii():
                        raise Unconvertible("an over-long header field has 8-bit octets")
                    fields.write(line)
                    continue
                field += line
                if len(field) > FIELD_LIMIT:
                    # (it is in the copy: a MIME-Version streamed so is not added again)
                    seen.add(field.partition(b":")[0].strip().lower())
                    if self._encode_long_field(field, h.end, fields):
                        field = b""
                        continue
                    fields.write(field)
                    field, streaming = b"", True
                continue
            streaming = False
            if field:
                seen.add(self._write_field(field, new_cte, charset, fields))
            field = line
        if field:
            seen.add(self._write_field(field, new_cte, charset, fields))
        fields.flush()
        if charset is not None and add_type is not None and b"content-type" not in seen:
            self.out.write(f"Content-Type: {add_type}; charset={charset}\n".encode())
        if new_cte is not None and b"content-transfer-encoding" not in seen:
            self.out.write(f"Content-Transfer-Encoding: {new_cte}\n".encode())
        if top and new_cte is not None and b"mime-version" not in seen:
            # an encoding means nothing to a reader without it (RFC 2045 4)
            self.out.write(b"MIME-Version: 1.0\n")
        # the blank line (or nothing) up to the body
        if self.src.tell() < body_start:
            self.out.write(self.src.read(body_start - self.src.tell()))
        # RFC 5322 2.1, RFC 2045 3: an empty line parts the fields from a
        # body; one that began at a line that is no field gets it, or its
        # first line, re-encoded ("Grüße: hi" in quoted-printable), could
        # read as a field
        self.out.write(h.unseparated)
        self._seek(body_start)

    def _encode_long_field(self, field: bytes, end: int, out: _Lines) -> bool:
        """A field over ``FIELD_LIMIT`` (``field``: its first octets, the
        rest still to read): when it has 8-bit octets and is unstructured
        text (``header7bit.readable_text``), write its text as RFC 2047
        encoded words a piece at a time (``TextFieldStream``) and return
        True, the source after the field.  Its rest is looked at once
        ahead (8-bit octets, valid UTF-8: the charset of its words), then
        read again: memory stays within the field's first ``FIELD_LIMIT``
        octets and a window of its text.  A 7-bit field: False, the source
        where it was (copied as it comes).  Any other field with 8-bit
        octets has no 7-bit form here: an encoded word may stand only for
        unstructured text (RFC 2047 5), and the address, parameter and
        structured fields need the whole field."""
        name_b, _, value = field.partition(b":")
        name = name_b.decode("ascii", "replace").strip(" \t")
        resume, resume_bol = self.src.tell(), self.bol
        eight_bit = not field.isascii()
        check = codecs.getincrementaldecoder("utf-8")()
        utf8 = True
        try:
            check.decode(value.replace(b"\n", b""))
        except UnicodeDecodeError:
            utf8 = False
        after = resume
        while self.src.tell() < end:
            line, bol = self._read()
            if bol and line[:1] not in (b" ", b"\t"):
                break
            after = self.src.tell()
            if not line.isascii():
                eight_bit = True
                if utf8:
                    try:
                        check.decode(line.replace(b"\n", b""))
                    except UnicodeDecodeError:
                        utf8 = False
        if utf8:
            try:
                check.decode(b"", True)
            except UnicodeDecodeError:
                utf8 = False
        self.src.seek(resume)
        self.bol = resume_bol
        if not eight_bit:
            return False
        if not name_b.isascii() or not readable_text(name.lower()):
            raise Unconvertible("a header field with 8-bit octets is too long")
        stream = TextFieldStream(name, utf8)
        for i in range(0, len(value), LINE_LIMIT):
            out.write(stream.feed(value[i:i + LINE_LIMIT]))
        while self.src.tell() < after:
            out.write(stream.feed(self.src.readline(min(LINE_LIMIT, after - self.src.tell()))))
        out.write(stream.finish())
        self.bol = True
        return True

    def _write_field(self, field: bytes, new_cte: str | None, charset: str | None,
                     out: _Lines) -> bytes:
        name = field.partition(b":")[0].strip().lower()
        if name == b"content-transfer-encoding" and new_cte is not None:
            field = b"Content-Transfer-Encoding: " + new_cte.encode() + b"\n"
        elif name == b"content-type" and charset is not None:
            field = _with_charset(field, charset)
        if not field.isascii():
            if name in (b"content-type", b"content-disposition"):
                self.parameter_octets += len(field)
                if self.parameter_octets > PARAMETER_FIELDS_LIMIT:
                    raise Unconvertible(
                        "the Content-Type and Content-Disposition fields with 8-bit octets "
                        f"are over {PARAMETER_FIELDS_LIMIT} octets together")
            field = encode_field(field)
        # (lines end at LF only, as ``_Lines`` reads them: a bare CR is
        # one more octet of its line, where ``splitlines`` would end it)
        if len(field) > LINE_TEXT and any(
                len(line.removesuffix(b"\r")) > LINE_TEXT for line in field.split(b"\n")):
            field = self._fitted(field)
        out.write(field)
        return name

    def _fitted(self, field: bytes) -> bytes:
        """``field``, which has a line over ``LINE_TEXT`` octets, folded
        before white space (``_Lines``); where it has too little, and the
        field is unstructured text, its text as RFC 2047 encoded words on
        lines of 76 (``encode_text_field``: decoding gives every character
        back).  Any other field has no 7-bit form (``Unconvertible``)."""
        folded = io.BytesIO()
        lines = _Lines(folded, True, self.boundaries)
        try:
            lines.write(field)
            lines.flush()
        except Unconvertible:
            encoded = encode_text_field(field)
            if encoded is None:
                raise
            return encoded
        return folded.getvalue()

    # --- bodies ----------------------------------------------------------------------

    def _survey(self, body_start: int) -> tuple[bool, bool, bool, bool]:
        """Look ahead through a leaf body: (8-bit octets, lines over 998
        octets, CRs, valid UTF-8 as far as lines go); then come back."""
        eight_bit = long_lines = has_cr = False
        utf8 = True
        length = 0
        while True:
            line, bol = self._read()
            if not line or self._is_boundary(line, bol):
                break
            length = len(line) if bol else length + len(line)
            if length > 999 or (length == 999 and not line.endswith(b"\n")):
                long_lines = True
            if not line.isascii():
                eight_bit = True
                if utf8:
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        utf8 = False  # (or a character cut by a long line: unknown-8bit)
            if b"\r" in line:
                has_cr = True
        self._seek(body_start)
        return eight_bit, long_lines, has_cr, utf8

    def _body(self, mode: str) -> bytes | None:
        """Stream a leaf body in ``mode`` up to a boundary line (returned)
        or the end (None).  The line end before a boundary belongs to the
        boundary (RFC 2046 5.1.1): it is held back and written as is."""
        sink = SINKS[mode](self.out)
        encoding = mode in ("qp", "base64")
        # base64 encodes octets: a line end inside the content is the CRLF
        # the client sent (RFC 2045 6.8: text's canonical form; an identity
        # encoding's octets for anything else), not the LF it is stored as
        crlf = mode == "base64"
        held = b""  # the line end held back (content, unless a boundary follows)
        while True:
            line, bol = self._read()
            if line and not self._is_boundary(line, bol):
                sink.write(b"\r\n" if crlf and held == b"\n" else held)
                held = (b"\r\n" if line.endswith(b"\r\n")
                        else b"\n" if line.endswith(b"\n") else b"")
                sink.write(line[:len(line) - len(held)])
                continue
            if line:  # the held line end is the delimiter's
                sink.close()
                self.out.write((b"\n" if held else b"") if encoding else held)
                return line
            sink.write(b"\r\n" if crlf and held == b"\n" else held)
            if mode == "qp" and not held:
                sink.close(soft_end=True)
                self.out.write(b"\n")
                return None
            sink.close()
            if mode == "base64":
                self.out.write(b"\n")
            return None
