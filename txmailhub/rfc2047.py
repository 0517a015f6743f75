"""RFC 2047 encoded words: finding those a text already has, and writing
text as new ones.

Owns what an encoded word is where it may stand (unstructured text,
5(1); a comment, 5(2); a word of a display name, 5(3)) and the Q
encoding the hub writes (UTF-8, restricted to the characters 5(3)
allows, so a word fits in any of the three).  A text keeps the encoded
words it has where RFC 2047 lets them stand for their text: encoded
again, a reader would show their ``=?...?=``.  Which fields are
encoded, and how they are folded, is the business of its callers
(``txmailhub.downgrade``, ``txmailhub.relay.header7bit``).

Pure functions over text: no files, no protocol.
"""

from __future__ import annotations

import re

from txmailhub.rfc5322 import escaped

__all__ = ["Q_MIN", "Q_ROOM", "comment_word_spans", "encoded_word_spans", "encoded_words",
           "phrase_word"]

# RFC 2047 2: an encoded word: a charset token (RFC 2231's "*language"
# included), "B" or "Q", encoded text of printable ASCII but "?"; in
# unstructured text it is one only when white space or the text's ends
# set it off (5(1)), in a phrase only when it is a whole atom of it whose
# Q-encoded text has nothing but 5(3)'s characters (a phrase's B-encoded
# text is base64's)
_CHARSET = r"[!#-'*+\-0-9A-Z^-~]+"
_TEXT_WORD = re.compile(rf"(?<![^ \t])=\?{_CHARSET}\?[BbQq]\?[!->@-~]+\?=(?![^ \t])")
_PHRASE_WORD = re.compile(rf"=\?{_CHARSET}\?(?:[Qq]\?[-!*+/=_0-9A-Za-z]+|[Bb]\?[+/=0-9A-Za-z]+)\?=")
# in a comment (5(2)): set off by blanks or parentheses that no backslash
# quotes; its Q-encoded text has no parenthesis, quote or backslash
_COMMENT_WORD = re.compile(
    rf"(?<![^ \t()])=\?{_CHARSET}\?(?:[Qq]\?[!#-'*->@-\[\]-~]+|[Bb]\?[+/=0-9A-Za-z]+)\?="
    r"(?![^ \t()])")
_WORD_MAX = 75  # RFC 2047 2: a longer one is no encoded word


def encoded_word_spans(text: str) -> list[tuple[int, int]]:
    """Where the encoded words of an unstructured field's text (unfolded,
    RFC 5322 2.2.3) are, as (start, end) indexes: each at most 75
    characters and set off by blanks or the text's ends (RFC 2047 2,
    5(1)) -- what an RFC 2047 reader shows decoded, and what encoding it
    again would show as its "=?...?=".  (Octets that are not UTF-8 may be
    given as latin-1 characters: an encoded word is ASCII.)"""
    return [m.span() for m in _TEXT_WORD.finditer(text) if m.end() - m.start() <= _WORD_MAX]


def comment_word_spans(text: str) -> list[tuple[int, int]]:
    """Where the encoded words of a comment's text (between its
    parentheses) are, as (start, end) indexes: each at most 75
    characters, set off by blanks or parentheses that no backslash quotes
    (RFC 2047 5(2))."""
    return [m.span() for m in _COMMENT_WORD.finditer(text)
            if m.end() - m.start() <= _WORD_MAX
            and not (m.start() and escaped(text, m.start() - 1))]


def phrase_word(display: str, start: int, end: int) -> bool:
    """Whether ``display[start:end]``, a run of a display name without
    blanks, quotes or comments, is an encoded word: a whole atom of the
    phrase, set off by blanks or the phrase's ends from any word, quoted
    string or comment beside it, and no longer than 75 (RFC 2047 2,
    5(3)).  One inside a quoted string is none (5(3)): it is text."""
    return (end - start <= _WORD_MAX
            and (start == 0 or display[start - 1] in " \t")
            and (end == len(display) or display[end] in " \t")
            and _PHRASE_WORD.fullmatch(display, start, end) is not None)


_Q_SAFE = frozenset(b"-!*+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
Q_ROOM = 75 - len("=?utf-8?q??=")  # RFC 2047 2: an encoded word is at most 75
Q_MIN = len("=F0=9F=98=80")  # the longest encoded character
_PIECES = re.compile(r"\S*\s*")


def _q(text: str) -> str:
    """RFC 2047 4.2 Q encoding, restricted to what a phrase and a comment
    allow (RFC 2047 5(3)): ``[-!*+/A-Za-z0-9]`` as they are, SP as ``_``."""
    return "".join(
        chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}"
        for b in text.encode("utf-8"))


def encoded_words(text: str, first: int = Q_ROOM) -> str:
    """``text`` as encoded words separated by blanks, cut between its
    words where it can (a blank stays at the end of the word before the
    cut: RFC 2047 6.2 drops the blanks between encoded words, and parsers
    that keep them then give one more blank, not a word cut in two).
    ``first``: the room for the first word's encoded text (what is left
    of the field's first line); the others get all of ``Q_ROOM``.  An
    empty ``text`` is an empty string: an encoded word has at least one
    character of encoded text (RFC 2047 2), "=?utf-8?q??=" is none."""
    chunks: list[str] = []
    cur = ""
    for piece in _PIECES.findall(text):
        if not piece:
            continue
        room = Q_ROOM if chunks else first
        enc = _q(piece)
        if len(cur) + len(enc) <= room:
            cur += enc
            continue
        if cur:
            chunks.append(cur)
            cur = ""
        for c in piece:  # a word longer than one encoded word: by characters
            enc = _q(c)
            room = Q_ROOM if chunks else first
            if cur and len(cur) + len(enc) > room:
                chunks.append(cur)
                cur = ""
            cur += enc
    if cur:
        chunks.append(cur)
    return " ".join(f"=?utf-8?q?{c}?=" for c in chunks)
