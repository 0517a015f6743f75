"""The RFC 6856 pieces of POP3 that need rules, not I/O: which stored
messages need UTF-8 mode, how a user name is prepared, and which
response language a LANG range selects.

* ``HeaderScan`` reads a stored message's first chunks and says whether
  its header section holds UTF-8 (an internationalized message, RFC 6532,
  as an SMTPUTF8 transaction stores it).  Such a message is never sent
  as it is to a client that did not issue ``UTF8`` (RFC 6856 section 2);
  the adapter sends it with its header section downgraded
  (``txmailhub.downgrade``, RFC 6857), or answers ``-ERR [UTF8]`` where
  that has no downgraded form (section 5).  Raw 8-bit octets
  that are *not* UTF-8 are legacy mail from a sender that broke RFC 5322,
  which POP3 servers have always passed on as they are: UTF-8 mode would
  change nothing about them, so they are no reason to refuse.
* ``prepare_username`` is the SASLprep check (RFC 4013, RFC 6856 2.2) of
  a name from USER, APOP or AUTH PLAIN, in NFC -- the form the users file
  keys (``txmailhub.address.canonical_local``).
* ``select_language`` is RFC 4647 lookup over the languages we have.

Sans-IO: no files, no transport, no engine state.
"""

from __future__ import annotations

import codecs
import re
import stringprep
import unicodedata

from txmailhub.address import login_key, one_quoted_string

__all__ = ["LANGUAGES", "HeaderScan", "prepare_username", "select_language", "valid_range"]

# The LF that ends the header section's last line, then the empty line.
_HEADER_END = re.compile(rb"\n\r?\n")


class HeaderScan:
    """Feed a stored message chunk by chunk, from its first octet, until
    ``done``; then ``needs_utf8`` tells whether its header section is
    internationalized.  Keeps two octets between chunks, never the header."""

    __slots__ = ("_decoder", "_tail", "_valid", "done", "eight_bit")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        # as if an LF came before the message: a message that starts with
        # an empty line has an empty header section
        self._tail = b"\n"
        self._valid = True
        self.eight_bit = False
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        """Scan the next chunk; ``True`` once the answer is known."""
        if self.done:
            return True
        data = self._tail + chunk
        m = _HEADER_END.search(data)
        part = chunk if m is None else chunk[: max(0, m.start() - len(self._tail))]
        if not part.isascii():
            self.eight_bit = True
        self._decode(part, final=m is not None)
        self._tail = data[-2:]
        if m is not None or not self._valid:
            self.done = True
        return self.done

    def finish(self) -> None:
        """The message ended inside its header section (no body)."""
        if not self.done:
            self._decode(b"", final=True)
            self.done = True

    def _decode(self, part: bytes, final: bool) -> None:
        try:
            self._decoder.decode(part, final)
        except UnicodeDecodeError:
            self._valid = False

    @property
    def needs_utf8(self) -> bool:
        """The header section has UTF-8 beyond ASCII (and nothing but UTF-8)."""
        return self.eight_bit and self._valid


def _prohibited(c: str) -> bool:
    """RFC 4013 2.3: what SASLprep output must not hold."""
    return (
        stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
        or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
        or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
        or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
        or stringprep.in_table_c9(c)
    )


def prepare_username(name: str) -> str | None:
    """``name`` in NFC, or ``None`` when a server must refuse it.

    RFC 6856 2.2: a server that lists ``UTF8 USER`` should apply SASLprep
    to the USER argument (as a query string) and must then reject a name
    with a character SASLprep prohibits (RFC 4013 2.3: controls, private
    use, non-characters, surrogates, tags...) or one that breaks the
    bidirectional rule (RFC 3454 6).  The normalization is NFC, not
    SASLprep's NFKC: the users file keys names in NFC, so a compatibility
    mapping here would make POP3 look up another mailbox than SMTP AUTH
    and ``mailhub user`` do.  A lone surrogate is an octet that was not
    UTF-8 (the engine decodes lines with ``surrogateescape``).

    The right-to-left rule is judged for the local part and each domain
    label on their own, and for a local part written as one quoted
    string on its content (``_quoted_content``): the quotes are syntax.

    A name whose NFC form would be keyed as another mailbox is handed on
    as it was written (judged in NFC all the same).  ``canonical_local``
    keys a dot-string that NFC makes ASCII punctuation as the quoted
    string its NFC form needs (``a\u037e``, with the Greek question mark,
    is ``"a;"``), and a login as its NFC form, ``a;``, is that user too
    (``login_key``), so such a name is handed on in NFC."""
    if name.isascii():
        if any(c < "!" or c == "\x7f" for c in name):
            return None
        return name
    written = name
    name = unicodedata.normalize("NFC", name)
    if any(_prohibited(c) for c in name):
        return None
    # the bidi rule holds for each part of an address, not across them: a
    # right-to-left local part in a left-to-right domain (a Hebrew mailbox
    # at example.org) is a name SMTP AUTH and ``mailhub user`` take, and
    # each domain label has a direction of its own (RFC 5893 2)
    local, at, domain = name.rpartition("@")
    if not at or one_quoted_string(name):  # ('"a@b"': all of it a local part)
        local, domain = name, ""
    parts = [_quoted_content(local), *domain.split(".")] if domain else [_quoted_content(local)]
    if any(_breaks_bidi(part) for part in parts):
        return None
    if name != written and login_key(name) != login_key(written):
        return written
    return name


def _quoted_content(local: str) -> str:
    """The name a local part written as one quoted string stands for:
    its content, each quoted pair its character.  The quotes and
    backslashes are the address's syntax (RFC 5321 4.1.2), no part of the
    name: ``USER "\u05e9\u05dc\u05d5\u05dd"`` names the mailbox
    ``\u05e9\u05dc\u05d5\u05dd`` (Hebrew, right-to-left from its first
    character to its last), as RCPT and the users file read it; the quote
    before it is no character of the name.  Any other text as it is."""
    if not one_quoted_string(local):
        return local
    return re.sub(r"\\(.)", r"\1", local[1:-1], flags=re.DOTALL)


def _breaks_bidi(text: str) -> bool:
    """RFC 3454 6: text with a right-to-left character must have no
    left-to-right one, and start and end with a right-to-left one."""
    return any(stringprep.in_table_d1(c) for c in text) and (
        any(stringprep.in_table_d2(c) for c in text)
        or not stringprep.in_table_d1(text[0])
        or not stringprep.in_table_d1(text[-1])
    )


LANGUAGES: dict[str, str] = {"en": "English"}
"""The languages of our response texts (RFC 6856 3), tag -> its name in itself."""
DEFAULT_LANGUAGE = "en"

_RANGE = re.compile(r"\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")


def valid_range(text: str) -> bool:
    """An RFC 4647 2.1 basic language range (``*``, ``en``, ``en-GB``)."""
    return _RANGE.fullmatch(text) is not None


def select_language(language_range: str) -> str | None:
    """The language ``language_range`` selects by RFC 4647 3.4 lookup
    (``en-GB`` falls back to ``en``; ``*`` is the default), or ``None``.

    ``i-default`` (RFC 2277 4.5) names the language a server uses when it
    has not been asked for one, and RFC 2277 wants every protocol that
    negotiates languages to understand it: it selects the default, as
    ``*`` does, where lookup would find no ``i`` and refuse it."""
    tag = language_range.lower()
    if tag in ("*", "i-default"):
        return DEFAULT_LANGUAGE
    while tag:
        if tag in LANGUAGES:
            return tag
        tag = tag.rpartition("-")[0]
        if len(tag) > 1 and tag[-2] == "-":  # a singleton left at the end goes too
            tag = tag[:-2]
    return None
