"""An independent reading of the SMTP argument grammars, for differential tests.

The recogniser below is written from the RFCs' ABNF, not from the hub's
parser, so the two can be compared: RFC 5321 4.1.2 and 4.1.3 (paths,
mailboxes, domains, address literals, ESMTP parameters), RFC 6531 3.3 (the
UTF-8 extensions), RFC 3461 (NOTIFY, ORCPT, RET, ENVID, xtext), RFC 6533 3
(utf-8-addr-xtext/-unitext), RFC 1870 SIZE, RFC 6152 BODY and RFC 4954
AUTH=.  Each function answers what the grammar says and nothing about
policy; the tests decide which of the hub's documented leniencies make a
difference acceptable.

The hypothesis strategies generate strings from the same productions, and
``mutate`` makes near-misses: one character inserted, dropped or replaced.
"""

from __future__ import annotations

import re
import unicodedata

import idna
from hypothesis import strategies as st

# --- RFC 5321 4.1.2 ---------------------------------------------------------

ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGIT = "0123456789"
HEXDIG = DIGIT + "ABCDEFabcdef"
ATEXT = ALPHA + DIGIT + "!#$%&'*+-/=?^_`{|}~"  # RFC 5322 3.2.3
# qtextSMTP = %d32-33 / %d35-91 / %d93-126
QTEXT = "".join(chr(c) for c in range(32, 127) if c not in (34, 92))

_ATOM = "[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~]+"
_SUB_DOMAIN = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"  # Let-dig [Ldh-str]
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_LDH_LABEL = re.compile(_SUB_DOMAIN)
_SNUM = re.compile(r"[0-9]{1,3}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,4}")
# RFC 6531 3.3: UTF8-non-ascii is any UTF-8 encoded character above U+007F
_U8_ATEXT = re.compile(r"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]|[^\x00-\x7f])+")
_U8_DOT_STRING = re.compile(rf"{_U8_ATEXT.pattern}(?:\.{_U8_ATEXT.pattern})*")
_U8_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"')


def snum(text: str) -> bool:
    """Snum = 1*3DIGIT, a decimal value 0..255 (leading zeros allowed)."""
    return bool(_SNUM.fullmatch(text)) and int(text) <= 255


def ipv4_literal(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(snum(p) for p in parts)


def _hexes(text: str) -> list[str] | None:
    """``IPv6-hex *(":" IPv6-hex)`` (or nothing) -> the groups."""
    if text == "":
        return []
    groups = text.split(":")
    return groups if all(_HEX.fullmatch(g) for g in groups) else None


def ipv6_addr(text: str) -> bool:
    """RFC 5321 4.1.3 IPv6-addr: IPv6-full / IPv6-comp / IPv6v4-full /
    IPv6v4-comp, with the comments' limits on the compressed forms."""
    head, v4 = text, None
    if "." in text:
        head, _, v4 = text.rpartition(":")
        if not ipv4_literal(v4):
            return False
        if text.endswith("::" + v4):  # "::" right before the IPv4 part
            head += ":"
    else:
        head = text
    n_full = 6 if v4 is not None else 8
    n_comp = 4 if v4 is not None else 6
    if "::" not in head:
        groups = _hexes(head)
        return groups is not None and len(groups) == n_full
    if head.count("::") != 1:
        return False
    left, right = head.split("::")
    a, b = _hexes(left), _hexes(right)
    if a is None or b is None:
        return False
    # "::" represents at least 2 16-bit groups of zeros
    return len(a) + len(b) <= n_comp


def address_literal(text: str) -> bool:
    """address-literal, less General-address-literal: no tag but "IPv6"
    is registered (RFC 5321 4.1.3 wants a Standards-Track tag)."""
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":  # ABNF strings are case-insensitive
        return ipv6_addr(inner[5:])
    return ipv4_literal(inner)


def u_label(label: str) -> bool:
    """RFC 5890 2.3.2.1: a label IDNA2008 takes, non-ASCII.  The mapping
    of UTS 46 is allowed (capitals, decomposed forms), as the hub reads
    domains through it (docs/smtp.rst)."""
    if label.isascii():
        return False
    try:
        ace = idna.encode(label, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError):
        return False
    return ace.count(b".") == 0


def a_label(label: str) -> str | None:
    """RFC 5890 2.3.2.1: ``label`` as an A-label, encoded by IDNA2008 (UTS 46
    mapping), or None when it has no A-label form; an ``xn--`` label only
    when it is one (IDNA2008 takes it back)."""
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def domain(text: str, utf8: bool = False) -> bool:
    """Domain = sub-domain *("." sub-domain); RFC 6531: sub-domain =/ U-label."""
    if not text:
        return False
    return all(
        bool(_LDH_LABEL.fullmatch(label)) or (utf8 and u_label(label))
        for label in text.split(".")
    )


def local_part(text: str, utf8: bool = False) -> bool:
    if utf8:
        if _U8_QUOTED.fullmatch(text):
            return True
        return all(_U8_ATEXT.fullmatch(atom) for atom in text.split("."))
    return bool(_DOT_STRING.fullmatch(text) or _QUOTED.fullmatch(text))


def split_mailbox(text: str) -> tuple[str, str] | None:
    """Mailbox = Local-part "@" ( Domain / address-literal ), split at the
    "@" that ends the local part (a quoted one may hold "@")."""
    if text.startswith('"'):
        m = re.match(r'"(?:[^"\\]|\\.)*"', text)
        if m is None or text[m.end():m.end() + 1] != "@":
            return None
        return text[: m.end()], text[m.end() + 1:]
    local, at, dom = text.rpartition("@")
    return (local, dom) if at else None


def mailbox(text: str, utf8: bool = False) -> bool:
    parts = split_mailbox(text)
    if parts is None:
        return False
    local, dom = parts
    return local_part(local, utf8) and (domain(dom, utf8) or address_literal(dom))


def path(text: str, utf8: bool = False) -> bool:
    """Path = "<" [ A-d-l ":" ] Mailbox ">" (text with the brackets)."""
    if not (text.startswith("<") and text.endswith(">")):
        return False
    inner = text[1:-1]
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            return False
        for hop in route.split(","):
            if not (hop.startswith("@") and domain(hop[1:], utf8)):
                return False
    return mailbox(inner, utf8)


def mailbox_form(local: str, dom: str) -> tuple[str, str]:
    """What RFC 5321 says is the same mailbox, in the hub's one spelling:
    a quoted local part that is a valid dot-string unquoted (4.1.2: "the
    quoted-string form SHOULD NOT be used" where it is not needed, and
    means the same; RFC 6531 3.3 takes UTF-8 into the dot-string's atoms
    as into the quoted string; a UTF-8 one judged in NFC, the form a
    mailbox is keyed by, and NFC where only that form is a dot-string),
    quoted pairs reduced; a domain in lower case (2.4)."""
    if local.startswith('"'):
        content = re.sub(r"\\(.)", r"\1", local[1:-1])
        nfc = unicodedata.normalize("NFC", content)
        if content and content.isascii() and _DOT_STRING.fullmatch(content):
            local = content
        elif not content.isascii() and _U8_DOT_STRING.fullmatch(nfc):
            local = content if _U8_DOT_STRING.fullmatch(content) else nfc
        else:
            local = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return local, dom.lower()


# --- ESMTP parameters ---------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # esmtp-keyword
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value
_VALUE_U8 = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+")  # RFC 6531 3.3
XCHARS = "".join(chr(c) for c in range(33, 127) if chr(c) not in "+=")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")  # RFC 3461 4


def esmtp_params(text: str, utf8: bool = False) -> list[tuple[str, str | None]] | None:
    """esmtp-param *(SP esmtp-param) -> [(KEYWORD, value)], None if not."""
    out = []
    value_re = _VALUE_U8 if utf8 else _VALUE
    for item in text.split(" "):
        key, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(key):
            return None
        if eq and not value_re.fullmatch(value):
            return None
        out.append((key.upper(), value if eq else None))
    return out


def xtext(text: str) -> str | None:
    """xtext -> its decoded octets as UTF-8 text, None if not xtext (or not
    UTF-8: the hub takes xtext as UTF-8 octets)."""
    if not _XTEXT.fullmatch(text):
        return None
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+":
            raw.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(text[i]))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def printable_ascii(text: str) -> bool:
    """RFC 3461 4.2/4.4: "printable (graphic and white space) characters
    from the US-ASCII repertoire"."""
    return bool(text) and all(c == "\t" or " " <= c <= "~" for c in text)


def notify_value(text: str) -> tuple[str, ...] | None:
    """RFC 3461 4.1: "NEVER" / 1#notify-list-element (SUCCESS, FAILURE,
    DELAY), any case; NEVER alone."""
    words = tuple(w.upper() for w in text.split(","))
    if words == ("NEVER",):
        return words
    if all(w in ("SUCCESS", "FAILURE", "DELAY") for w in words):
        return words
    return None


def hexpoint(digits: str) -> bool:
    """RFC 6533 3 HEXPOINT: the shortest spelling of a scalar value, two
    digits only for the ASCII characters QCHAR leaves out (or 80..FF)."""
    if not re.fullmatch(r"[0-9A-Fa-f]{2,6}", digits):
        return False
    cp = int(digits, 16)
    if len(digits) == 2:
        return cp >= 0x80 or not qchar(chr(cp))
    if 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
        return False
    return cp >= 16 ** (len(digits) - 1)


def qchar(c: str) -> bool:
    """QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e"""
    return "!" <= c <= "~" and c not in "+=\\"


def utf8_addr_xtext(text: str, unitext: bool = False) -> str | None:
    """RFC 6533 3 utf-8-addr-xtext (or -unitext: UTF8-non-ascii too) ->
    the address, None if not of the form."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            m = re.compile(r"\\x\{([0-9A-Fa-f]+)\}").match(text, i)
            if m is None or not hexpoint(m.group(1)):
                return None
            out.append(chr(int(m.group(1), 16)))
            i = m.end()
            continue
        if not (qchar(c) or (unitext and ord(c) > 0x7F)):
            return None
        out.append(c)
        i += 1
    return "".join(out) if out else None


# --- strategies: valid strings --------------------------------------------------

atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
dot_string = st.lists(atom, min_size=1, max_size=3).map(".".join)
quoted_string = st.lists(
    st.one_of(st.sampled_from(QTEXT), st.sampled_from(QTEXT + '"\\').map(lambda c: "\\" + c)),
    max_size=8,
).map(lambda parts: '"' + "".join(parts) + '"')
local_part_ascii = st.one_of(dot_string, quoted_string)
sub_domain = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
domain_ascii = st.lists(sub_domain, min_size=1, max_size=4).map(".".join)
snum_text = st.integers(0, 255).flatmap(
    lambda n: st.sampled_from(sorted({str(n), f"{n:02d}", f"{n:03d}"}))
)
ipv4 = st.lists(snum_text, min_size=4, max_size=4).map(".".join)
hex_group = st.text(alphabet=HEXDIG, min_size=1, max_size=4)


def _ipv6(draw_groups: int, v4: str | None, compressed: bool, split: int) -> st.SearchStrategy:
    groups = st.lists(hex_group, min_size=draw_groups, max_size=draw_groups)

    def join(gs: list[str]) -> str:
        if compressed:
            text = ":".join(gs[:split]) + "::" + ":".join(gs[split:])
        else:
            text = ":".join(gs)
        if v4 is None:
            return text
        return text + (v4 if text.endswith("::") else ":" + v4)

    return groups.map(join)


@st.composite
def ipv6_text(draw) -> str:
    v4 = draw(st.one_of(st.none(), ipv4))
    if draw(st.booleans()):  # full
        return draw(_ipv6(6 if v4 else 8, v4, False, 0))
    n = draw(st.integers(0, 4 if v4 else 6))
    return draw(_ipv6(n, v4, True, draw(st.integers(0, n))))


address_literal_text = st.one_of(
    ipv4.map(lambda a: f"[{a}]"),
    st.tuples(st.sampled_from(["IPv6:", "ipv6:", "IPV6:"]), ipv6_text()).map(
        lambda t: f"[{t[0]}{t[1]}]"
    ),
)
mailbox_ascii = st.tuples(local_part_ascii, st.one_of(domain_ascii, address_literal_text)).map(
    "@".join
)
# UTF-8: atext and qtext gain UTF8-non-ascii, sub-domain gains U-labels
U8_SAMPLES = "\u00e9\u00fc\u00df\u03b4\u0436\u4e2d\U0001f600\u00c9"
atom_u8 = st.text(alphabet=ATEXT[:20] + U8_SAMPLES, min_size=1, max_size=6)
local_part_u8 = st.one_of(
    st.lists(atom_u8, min_size=1, max_size=3).map(".".join),
    st.text(alphabet=QTEXT[:30] + U8_SAMPLES, max_size=6).map(lambda t: f'"{t}"'),
)
u_label_text = st.sampled_from(
    ["b\u00fccher", "\u00e9cole", "\u03b4\u03bf\u03ba", "\u4e2d\u6587", "stra\u00dfe",
     "B\u00dcCHER"]
)
domain_u8 = st.lists(st.one_of(sub_domain, u_label_text), min_size=1, max_size=3).map(".".join)
# labels around RFC 1035's 63 octets, domains around 253 and 255, A-labels
# true and fake (Punycode of nothing, non-canonical, of a snowman)
long_sub_domain = st.integers(60, 66).flatmap(
    lambda n: st.from_regex(rf"[a-z0-9][a-z0-9-]{{{n - 2}}}[a-z0-9]", fullmatch=True))
domain_long = st.lists(
    st.one_of(sub_domain, long_sub_domain, u_label_text,
              st.sampled_from(["\u00fc" * 57, "\u00fc" * 58, "xn--bcher-kva", "XN--BCHER-KVA",
                               "xn--zz", "xn---bcher-kva", "xn--n3h", "xn--"])),
    min_size=1, max_size=6,
).map(".".join)
mailbox_u8 = st.tuples(local_part_u8, st.one_of(domain_u8, address_literal_text)).map("@".join)


# --- near-misses ----------------------------------------------------------------

# what a mutation inserts or puts in a character's place: the grammar's
# delimiters, characters just outside its ranges, blanks and controls
MUTANTS = [*'@.<>[]:"\\ ,;()-_=+\t\r\n\x00\x7f%!xX0', "\u00e9", "\u2028", "\x85"]


@st.composite
def mutate(draw, base: st.SearchStrategy[str]) -> str:
    """One character inserted, dropped or replaced in a string of ``base``."""
    text = draw(base)
    i = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["insert", "drop", "replace"]))
    if how == "insert" or i == len(text):
        return text[:i] + draw(st.sampled_from(MUTANTS)) + text[i:]
    if how == "drop":
        return text[:i] + text[i + 1:]
    return text[:i] + draw(st.sampled_from(MUTANTS)) + text[i + 1:]


# --- RFC 5321 4.4 Time-stamp-line (with RFC 5322 3.2.2 comments) ---------------

PROTOCOLS = frozenset(  # RFC 5321 4.4, RFC 3848 and RFC 6531 3.7.3's "with" keywords
    ["SMTP", "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA",
     "UTF8SMTP", "UTF8SMTPA", "UTF8SMTPS", "UTF8SMTPSA"]
)
_DATE_TIME = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?[0-9]{1,2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}(?::[0-9]{2})? [+-][0-9]{4}"
)
_ATOM_RE = re.compile(_ATOM)
_DOMAIN_RE = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*")
_LITERAL_RE = re.compile(r"\[[^\[\]\\\s]*\]")
# RFC 8314 4.3: the cipher suite's name in the IANA registry ("TLS_" and
# letters, digits, "_")
_TLS_CIPHER = re.compile(r"TLS_[A-Za-z0-9_]+")


class _Stamp:
    """A recursive-descent reader of one unfolded Received field."""

    def __init__(self, text: str, utf8: bool) -> None:
        self.s = text
        self.i = 0
        self.utf8 = utf8
        self.tcp_info_seen: list[str] = []  # the address literals of TCP-info

    def fail(self, what: str) -> None:
        raise ValueError(f"{what} at {self.i}: {self.s[self.i:self.i + 40]!r}")

    def wsp(self) -> bool:
        j = self.i
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1
        return self.i > j

    def comment(self) -> bool:
        if self.s[self.i:self.i + 1] != "(":
            return False
        self.i += 1
        while True:
            self.wsp()
            c = self.s[self.i:self.i + 1]
            if c == ")":
                self.i += 1
                return True
            if c == "(":
                self.comment()
            elif c == "\\" and self.i + 1 < len(self.s) and (
                " " <= self.s[self.i + 1] <= "~" or self.s[self.i + 1] == "\t"
            ):
                self.i += 2
            elif c and ("!" <= c <= "'" or "*" <= c <= "[" or "]" <= c <= "~"
                        or (self.utf8 and ord(c) > 0x7F)):
                self.i += 1  # ctext (RFC 6532 3.2: UTF-8 too, in an SMTPUTF8 message)
            else:
                self.fail("comment")

    def cfws(self) -> bool:
        seen = False
        while self.wsp() or self.comment():
            seen = True
        return seen

    def fws(self) -> None:
        if not self.wsp():
            self.fail("FWS")

    def word(self, word: str) -> bool:
        if self.s[self.i:self.i + len(word)].lower() == word.lower():
            end = self.i + len(word)
            if end == len(self.s) or self.s[end] in " \t(;":
                self.i = end
                return True
        return False

    def match(self, regex: re.Pattern[str]) -> str | None:
        m = regex.match(self.s, self.i)
        if m is None:
            return None
        self.i = m.end()
        return m.group()

    def literal(self) -> bool:
        j = self.i
        text = self.match(_LITERAL_RE)
        if text is None:
            return False
        if not address_literal(text):
            self.i = j
            return False
        return True

    def domain(self) -> bool:
        j = self.i
        if self.match(_DOMAIN_RE) is None:
            return False
        if self.i < len(self.s) and self.s[self.i] not in " \t(;":
            self.i = j  # a domain is not a prefix of something longer
            return False
        return True

    def tcp_info(self) -> bool:
        """"(" TCP-info ")" after FWS; TCP-info = address-literal /
        ( Domain FWS address-literal )."""
        j = self.i
        if self.s[self.i:self.i + 1] == "(":
            self.i += 1
            k = self.i
            if self.literal() or (self.domain() and self.wsp() and self.literal()):
                if self.s[self.i:self.i + 1] == ")":
                    self.tcp_info_seen.append(self.s[k:self.i].rpartition(" ")[2])
                    self.i += 1
                    return True
        self.i = j
        return False

    def extended_domain(self) -> None:
        if self.literal():
            j = self.i
            if not (self.wsp() and self.tcp_info()):
                self.i = j
                self.fail("address literal without TCP-info")
            return
        if not self.domain():
            self.fail("Domain")
        j = self.i
        if not (self.wsp() and self.tcp_info()):
            self.i = j

    def clause(self, word: str) -> bool:
        j = self.i
        if self.cfws() and self.word(word):
            self.fws()
            return True
        self.i = j
        return False

    def stamp(self) -> None:
        if not self.word("Received:"):
            self.fail("field name")
        self.fws()
        if not self.word("from"):
            self.fail("from")
        self.fws()
        self.extended_domain()
        if not self.clause("by"):
            self.fail("by")
        self.extended_domain()
        if self.clause("with"):
            protocol = self.match(_ATOM_RE)
            if protocol is None or protocol.upper() not in PROTOCOLS:
                self.fail("protocol")
        if self.clause("id"):
            if self.match(_ATOM_RE) is None:
                self.fail("id")
        if self.clause("for"):
            end = self.s.find(">", self.i)
            if end < 0 or not path(self.s[self.i:end + 1], self.utf8):
                self.fail("for")
            self.i = end + 1
        if self.clause("tls"):  # RFC 8314 4.3, an Additional-Registered-Clause
            if self.match(_TLS_CIPHER) is None or self.s[self.i:self.i + 1] not in " \t(;":
                self.fail("tls-cipher")
        self.cfws()
        if self.s[self.i:self.i + 1] != ";":
            self.fail("';'")
        self.i += 1
        self.fws()
        if self.match(_DATE_TIME) is None or self.i != len(self.s):
            self.fail("date-time")


def received_field(field: bytes, utf8: bool = False) -> list[str]:
    """Check one stored Received field (LF line ends) against RFC 5321
    4.4's Time-stamp-line; ValueError says where it is not one.

    Lines: at most 998 octets (RFC 5322 2.1.1), the first the field name,
    each other one a continuation (starting with WSP), none blank
    (RFC 5322 3.2.2: a folded line has something besides white space);
    octets: US-ASCII unless the message is an SMTPUTF8 one.  Returns the
    address literals of the TCP-info clauses, in order (a parenthesised
    literal that is no valid one would pass as a comment)."""
    if not field.endswith(b"\n"):
        raise ValueError("no line end")
    text = field.decode("utf-8")  # raises for anything that is not UTF-8
    if not utf8 and not text.isascii():
        raise ValueError("8-bit text in a message without SMTPUTF8")
    lines = text[:-1].split("\n")
    for n, line in enumerate(lines):
        if "\r" in line or any((ord(c) < 32 and c != "\t") or c == "\x7f" for c in line):
            raise ValueError(f"control character in line {n}")
        if len(line.encode()) > 998:
            raise ValueError(f"line {n} is over 998 octets")
        if n and (line[:1] not in (" ", "\t") or not line.strip(" \t")):
            raise ValueError(f"line {n} is no continuation line")
    stamp = _Stamp(" ".join(lines), utf8)  # unfolded: the CRLF of each FWS removed
    stamp.stamp()
    return stamp.tcp_info_seen
