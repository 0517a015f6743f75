"""Parsing of SMTP command lines: verbs, paths, ESMTP parameters.

Owns the syntax of RFC 5321 section 4.1 as the server reads it: splitting
a command line into verb and argument, the reverse-path and forward-path
of MAIL and RCPT (with the lenient forms real clients and the seed use),
and the ESMTP parameters we advertise (RFC 1870 SIZE, RFC 6152 BODY,
RFC 6531 SMTPUTF8, RFC 4954 AUTH, RFC 3461 RET/ENVID/NOTIFY/ORCPT).
Pure functions on ``str``/``bytes``; a syntax problem raises
``RemoteProtocolError`` carrying the reply from ``replies``.  It must not
know about sessions, policy or routing (whether an address is local is the
router's business).

Accepted path forms:

* ``<user@example.org>`` and the lenient ``user@example.org`` (no
  brackets, optionally after a space: ``MAIL FROM: bill@microsoft.com``);
* a bare local part ``hollindg`` means ``hollindg@<primary domain>``;
* ``<>`` (MAIL only): the null reverse-path, returned as ``None``;
  an unbracketed ESMTP parameter the server knows where the path belongs
  (``MAIL FROM: SIZE=100``, ``RCPT TO: NOTIFY=NEVER``) is ``501``, never
  the local part ``SIZE=100``; where a recipient belongs only a
  well-formed RCPT parameter is (``RCPT TO: size=big`` is a mailbox);
* source routes ``<@a,@b:user@c>``: the route is ignored (RFC 5321 4.1.1.3
  and appendix C), the mailbox ``user@c`` is what counts;
* quoted local parts ``"john doe"@example.org``: quotes are removed when
  the content is a valid dot-string (``"joe"`` is ``joe``), kept otherwise;
* address literals ``user@[192.0.2.1]`` and ``user@[IPv6:2001:db8::1]``
  (kept bracketed as the domain: local only when ``[hub] domains`` lists it);
* non-ASCII local parts and domains only under SMTPUTF8 (RFC 6531).

A domain is what ``txmailhub.address.domain_problem`` takes, the rule
the configured local domains follow too: labels of at most 63 octets, the
domain 255 (RFC 1035 2.3.4, RFC 5321 4.5.3.1.2); an ``xn--`` label a true
A-label, in an all-ASCII domain too; a U-label one IDNA2008 takes, and a
domain with either at most 253 octets as A-labels.  Any other is the same
501 as any other bad domain: X.1.7 for the sender, X.1.3 for a recipient.
HELO and EHLO names are not parsed here (the engine takes any name: the
client's claim).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from txmailhub.address import Address, address_literal, ascii_domain, domain_problem
from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp import replies
from txmailhub.smtp.xtext import utf8_addr_decode, utf8_addr_encode, xtext_decode

__all__ = [
    "MailParams",
    "RcptParams",
    "UnreadableArgument",
    "ascii_upper",
    "decode_envid",
    "decode_orcpt",
    "find_unquoted",
    "first_word",
    "parse_command",
    "parse_mail",
    "parse_mailbox",
    "parse_rcpt",
    "rcpt_local",
    "unquote_local",
]

# RFC 5321 4.5.3.1.3's 256 octets count the angle brackets; that is what
# a server "MUST be able to receive" (4.5.3.1), which also asks for "no
# limits" where possible.  We take 256 without them (an address of 255 or
# 256 octets, which a bracket-counting bound would turn away), counted in
# octets, not characters: an SMTPUTF8 path of 256 characters can be 1 KiB,
# and the 250 that echoes it must stay within a 512-octet reply line.
# Over it: 501 "Path too long" (4.5.3.1.10).  The lenient forms are
# counted as written (no brackets to leave out), the null path is "<>".
MAX_PATH = 256
# The longest RFC 6533 utf-8-addr-xtext form of a recipient a delivery
# status notification can name: "Final-Recipient: utf-8; " and the address
# on one line of at most 998 characters (RFC 5322 2.1.1; the form has no
# blank to fold at).  Escapes make a short UTF-8 path long: 200 "+" signs
# are 1,200 characters (``\x{2B}`` each), within MAX_PATH's 256 octets.
MAX_DSN_ADDRESS = 998 - len("Final-Recipient: utf-8; ")
# RFC 3461 4.4: the ENVID parameter's value, as sent (xtext, so the UTF-8
# id of an SMTPUTF8 transaction takes three characters an octet)
MAX_ENVID = 100
# RFC 3461 4.2: "The entire ORCPT parameter MAY be up to 500 characters in
# length": its value, addr-type ";" and the address as sent (xtext or
# RFC 6533's form), counted as ENVID's is.  The RCPT line's 500 more
# (RFC 3461 4) hold it and NOTIFY's few
MAX_ORCPT = 500

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
# RFC 6531's UTF8-non-ascii, less what no address needs and what would
# break a header or a command line: C1 controls, U+2028/U+2029 (line
# breaks to str.splitlines and some MUAs).
_U8 = r"[^\x00-\x9f\u2028\u2029]"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_STRING_UTF8 = re.compile(rf"(?:[{_ATEXT}]|{_U8})+(?:\.(?:[{_ATEXT}]|{_U8})+)*\Z")
_QTEXT_OK = re.compile(r"[\x20-\x7e]*\Z")
_BLANK = re.compile(r"[ \t]")
_QTEXT_UTF8 = re.compile(rf"(?:[\x20-\x7e]|{_U8})*\Z")
# what a quoted local part can hold (``_QTEXT_UTF8``), but no lone
# surrogate (an octet that was not UTF-8, as ``surrogateescape`` reads it)
_RCPT_CARRIES = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]*\Z")
# RFC 3461 4.4's "printable (graphic and white space)" characters, as for
# ORCPT (4.2); UTF-8 only in an SMTPUTF8 transaction (checked after)
_ENVID_TEXT = re.compile(rf"(?:[\t\x20-\x7e]|{_U8})+\Z")
_PRINTABLE_ASCII = re.compile(r"[\t\x20-\x7e]+\Z")  # RFC 3461's graphic and white space
_QUOTED_PAIR = re.compile(r"\\(.)")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_ESMTP_VALUE_UTF8 = re.compile(rf"(?:[\x21-\x3c\x3e-\x7e]|{_U8})+\Z")
_NOTIFY_WORDS = frozenset(("SUCCESS", "FAILURE", "DELAY"))
# The ESMTP parameter keywords the server knows (MAIL's and RCPT's): a
# lone unbracketed ``SIZE=100`` where a sender belongs is one of them, not
# a bare local part (``_parameter_for_path``)
_KNOWN_KEYWORDS = frozenset(("SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID",
                             "NOTIFY", "ORCPT"))
# RCPT's own (RFC 3461 4): where a recipient belongs, only a well-formed
# one of them is taken for a parameter (``_rcpt_parameter_for_path``)
_RCPT_KEYWORDS = frozenset(("NOTIFY", "ORCPT"))
_KEYWORD_AS_PATH = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)=")
# Parameters are separated by SP (RFC 5321 4.1.2), tabs taken too; not by
# what str.split() also takes (VT, FF, FS..US, Unicode blanks)
_BLANKS = re.compile(r"[ \t]+")
_BLANK_BYTES = re.compile(rb"[ \t]")


def _fail(reply) -> RemoteProtocolError:
    return RemoteProtocolError(reply)


# --- command lines ---------------------------------------------------------


class UnreadableArgument(RemoteProtocolError):
    """A command line whose verb reads but whose argument is not UTF-8
    (``501 5.5.2``).  It carries the verb: the engine decides, as it
    knows its verbs, whether the line is refused (``500`` for a verb it
    does not have, ``501`` for one it has), taken with the argument left
    out (a verb whose argument it ignores: NOOP, whose RFC 5321 4.1.1.9
    says "servers SHOULD ignore it", HELP, TURN, SEND, VRFY and EXPN
    switched off), or taken with ``argument``: the argument with each
    octet that is not UTF-8 as U+FFFD, for a command that reads it as
    something other than text (AUTH's initial response is base64, which
    such an octet is not either) or takes none (RSET, DATA, QUIT,
    STARTTLS: refused as any argument would be)."""

    def __init__(self, reply: object, verb: str, argument: str = "") -> None:
        super().__init__(reply)
        self.verb = verb
        self.argument = argument


def parse_command(line: bytes) -> tuple[str, str]:
    """Split one command line (without CRLF) into ``(VERB, argument)``.

    The verb is upper-cased; the argument keeps its case, without the
    surrounding blanks.  NUL -> 500 5.5.2; a CR (the line's CRLF is gone:
    any CR left is bare, RFC 5321 2.3.8) -> 500 5.5.2; a verb that is not
    UTF-8 -> 500 5.5.2 (no command the server has: RFC 5321 4.2.4's
    "command unrecognized", as a UTF-8 verb it lacks is); an argument
    that is not UTF-8 -> ``UnreadableArgument`` (501 5.5.2).

    The verb ends at the first blank, a tab as a space (RFC 5321 4.1.1
    names SP; tabs are blanks everywhere else on the line, around it and
    between parameters).  Split at SP alone, ``BDAT\\t3 LAST`` was an
    unrecognized command and its chunk then ran as commands.
    """
    if 0 in line:  # NUL (an int: see _data.py on `in`)
        raise _fail(replies.NUL_IN_COMMAND)
    if 13 in line:  # CR
        raise _fail(replies.BARE_CR_IN_COMMAND)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(line) from None
    verb, arg = first_word(text.strip(" \t"))
    return ascii_upper(verb), arg.strip(" \t")


def _unreadable(line: bytes) -> RemoteProtocolError:
    """The refusal of a line that is not UTF-8: which part is not (the
    verb, cut where ``first_word`` cuts it, or only its argument)."""
    verb, *rest = _BLANK_BYTES.split(line.strip(b" \t"), maxsplit=1)
    try:
        name = verb.decode("utf-8")
    except UnicodeDecodeError:
        return _fail(replies.UNKNOWN_COMMAND)
    argument = rest[0].decode("utf-8", "replace").strip(" \t") if rest else ""
    return UnreadableArgument(replies.INVALID_UTF8, ascii_upper(name), argument)


def first_word(text: str) -> tuple[str, str]:
    """``text`` (blanks stripped) cut at its first blank, SP or HTAB: a
    verb and its argument, or AUTH's mechanism and initial response."""
    if "\t" not in text:  # the common case, at C speed
        verb, _, arg = text.partition(" ")
        return verb, arg
    blank = _BLANK.search(text)  # a match: the text has a tab
    assert blank is not None
    return text[:blank.start()], text[blank.end():]


def ascii_upper(word: str) -> str:
    """``word`` upper-cased when it is ASCII, else as it is: keywords are
    ASCII (RFC 5321 4.1.1), and ``str.upper`` makes "\u017ftarttls"
    (long s) STARTTLS and "qu\u0131t" (dotless i) QUIT."""
    return word.upper() if word.isascii() else word


# --- mailboxes and paths ----------------------------------------------------


def rcpt_local(local: str) -> str:
    """An unquoted local part as RCPT can give it, the form it is keyed
    by: itself where it is a dot-string, else quoted (``a;`` and ``a..b``
    are no dot-strings, RFC 5321 4.1.2: ``RCPT TO:<a;@...>`` is a syntax
    error, and ``<"a;"@...>`` is looked up as ``"a;"``).  One with a
    character no RCPT carries, quoted or not (a control, U+2028, a lone
    surrogate), is left as written: no RCPT names it.  A format character
    is no control: ``a`` U+200C ``;`` (a zero-width non-joiner) is quoted
    as ``a;`` is, as ``RCPT TO:<"a\u200c;"@...>`` gives it."""
    if not _RCPT_CARRIES.match(local):
        return local
    return unquote_local('"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"')


def unquote_local(quoted: str) -> str:
    """``"a\\"b"`` -> the canonical local part (unquoted when possible):
    the one form RCPT, the users file and ``mailhub user`` key a quoted
    local part by (``"joe"`` is ``joe``, RFC 5321 4.1.2; ``"jörg"`` is
    ``jörg``, whose UTF-8 letters RFC 6531 3.3 adds to atext as to
    qtext: the quotes were kept, and ``"jörg"`` was no mailbox).

    A UTF-8 one is judged in NFC, the form ``canonical_local`` keys it
    by: ``"<\u0338"`` ("<" and a combining overlay) is ``"\u226e"``, which
    needs no quotes, and ``"a\u037e"`` (the Greek question mark) is
    ``"a;"``, which does.  Judged as written, each of the two spellings
    of one NFC form got a key of its own.  Where the quotes come off only
    in NFC, the NFC form is the local part: unquoted as written, it would
    be no dot-string."""
    content = _QUOTED_PAIR.sub(r"\1", quoted[1:-1])
    if content.isascii():
        if content and _DOT_STRING.match(content):
            return content
    else:
        nfc = unicodedata.normalize("NFC", content)
        if _DOT_STRING_UTF8.match(nfc):
            return content if _DOT_STRING_UTF8.match(content) else nfc
    # Re-quote canonically: only " and \ need a backslash.
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_quoted(text: str) -> tuple[str, str]:
    """Split ``"quoted"@rest`` into the quoted part and what follows it."""
    i = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return text[: i + 1], text[i + 1 :]
        i += 1
    raise _fail(replies.SYNTAX_ADDRESS)


def _check_domain(domain: str, utf8: bool) -> str:
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise _fail(replies.SYNTAX_ADDRESS)
        try:
            # RFC 5321 4.1.3 grammar, not all ipaddress takes (a "%zone"
            # of any characters, a CR even)
            return address_literal(domain)
        except ValueError:
            raise _fail(replies.SYNTAX_ADDRESS) from None
    if domain.endswith("."):
        domain = domain[:-1]
    if not utf8 and not domain.isascii():
        raise _fail(replies.SMTPUTF8_NOT_DECLARED)
    # the configured local domains are held to the same rule: a domain
    # taken here can be listed there, in either spelling
    if domain_problem(domain) is not None:
        raise _fail(replies.SYNTAX_ADDRESS)
    return domain.lower()


def _primary(primary_domain: str, utf8: bool) -> str:
    """The domain a bare local part is qualified with: the primary one,
    as its A-labels outside SMTPUTF8.  The client wrote no domain, so an
    internationalized primary domain is no UTF-8 of the client's to need
    SMTPUTF8 for (``RCPT TO:<Postmaster>`` must be taken, RFC 5321
    4.5.1); the A-label form is the same domain, keyed alike."""
    return primary_domain if utf8 else ascii_domain(primary_domain)


def parse_mailbox(text: str, primary_domain: str, utf8: bool = False) -> Address:
    """``local@domain`` (or a bare ``local``) -> ``Address``; 501/553 on errors."""
    if not text:
        raise _fail(replies.SYNTAX_ADDRESS)
    if text[0] == '"':
        quoted, rest = _split_quoted(text)
        if not text.isascii():
            if not utf8:
                raise _fail(replies.SMTPUTF8_NOT_DECLARED)
            if not _QTEXT_UTF8.match(quoted):  # no CR, ESC... in UTF-8 either
                raise _fail(replies.SYNTAX_ADDRESS)
        elif not _QTEXT_OK.match(quoted):
            raise _fail(replies.SYNTAX_ADDRESS)
        # quoted-pairSMTP is a backslash and printable ASCII (RFC 5321
        # 4.1.2); RFC 6531 3.3 widens qtextSMTP only, so a backslash
        # before a UTF-8 character is no pair
        if any(not " " <= m.group(1) <= "~" for m in _QUOTED_PAIR.finditer(quoted[1:-1])):
            raise _fail(replies.SYNTAX_ADDRESS)
        local = unquote_local(quoted)
        if rest == "":
            domain = _primary(primary_domain, utf8)
        elif rest[0] == "@" and len(rest) > 1:
            domain = rest[1:]
        else:
            raise _fail(replies.SYNTAX_ADDRESS)
    else:
        local, at, domain = text.rpartition("@")
        if not at:
            local, domain = text, _primary(primary_domain, utf8)
        if local.isascii():
            if not _DOT_STRING.match(local):
                raise _fail(replies.SYNTAX_ADDRESS)
        else:
            if not utf8:
                raise _fail(replies.SMTPUTF8_NOT_DECLARED)
            if not _DOT_STRING_UTF8.match(local):
                raise _fail(replies.SYNTAX_ADDRESS)
    return Address(local, _check_domain(domain, utf8))


def _too_long(path: str) -> bool:
    return len(path) > MAX_PATH or (not path.isascii() and len(path.encode()) > MAX_PATH)


def find_unquoted(text: str, char: str, start: int = 0) -> int:
    """The index of the first ``char`` at or after ``start`` outside a
    quoted string (in one, a backslash escapes the next character), or -1:
    a path's closing ``>`` (``<"a>b"@x>``), VRFY's opening ``<``
    (``<"a<b"@x>``).  Nothing quoted (nearly every path): ``str.find``,
    without a Python step per character."""
    if '"' not in text:
        return text.find(char, start)
    i, n, quoted = start, len(text), False
    while i < n:
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == char and not quoted:
            return i
        i += 1
    return -1


def _split_path(arg: str, rcpt: bool = False) -> tuple[str, str]:
    """Split ``<path> params`` (or the lenient ``path params``); ``rcpt``:
    the path is a recipient's (``_rcpt_parameter_for_path``)."""
    arg = arg.lstrip(" \t")
    if arg.startswith("<"):
        i = find_unquoted(arg, ">", 1)  # the '>' that closes it
        if i < 0:
            raise _fail(replies.SYNTAX_ADDRESS)
        tail = arg[i + 1 :]
        if tail and tail[0] not in " \t":
            raise _fail(replies.SYNTAX_ARGUMENT)
        return arg[1:i], tail
    path, rest = first_word(arg)  # a tab ends it too, as after a '>'
    if not path or path.endswith(">"):
        raise _fail(replies.SYNTAX_ADDRESS)
    if _rcpt_parameter_for_path(path) if rcpt else _parameter_for_path(path):
        raise _fail(replies.PATH_MISSING)
    return path, " " + rest if rest else ""


def _parameter_for_path(path: str) -> bool:
    """Whether an unbracketed ``path`` is an ESMTP parameter the server
    knows (``SIZE=100``, ``NOTIFY=NEVER``) standing where the path belongs.

    Two leniencies meet there: no angle brackets, and a bare local part
    that means the primary domain.  ``MAIL FROM: SIZE=100`` is a client
    that meant the null path (or left it out), not the sender
    ``SIZE=100@<primary domain>``; taken so, its bounces would go to a
    local mailbox of that name.  Only ``KEYWORD=`` with a known keyword
    and no ``@``: a bare ``bill`` or ``a=b`` stays a local part, and an
    address with a domain (``size=1@example.org``) is what it says."""
    m = _KEYWORD_AS_PATH.match(path)
    return m is not None and "@" not in path and ascii_upper(m.group(1)) in _KNOWN_KEYWORDS


def _rcpt_parameter_for_path(path: str) -> bool:
    """Whether an unbracketed recipient ``path`` is a RCPT parameter
    (``NOTIFY=NEVER``, ``ORCPT=rfc822;a+40b``) standing where the path
    belongs.

    Narrower than a sender's: a word here that is no well-formed RCPT
    parameter (``size=big``, ``notify=ops``) cannot be one a client meant,
    and is the bare local part the seed's ``RCPT TO: hollindg`` is.  A
    local part may hold ``=`` (RFC 5321 4.1.2), and a mailbox of that
    name gets its mail; refusing it would turn its mail away."""
    m = _KEYWORD_AS_PATH.match(path)
    if m is None or "@" in path or ascii_upper(m.group(1)) not in _RCPT_KEYWORDS:
        return False
    try:
        _rcpt_params(_split_params(path, utf8=True))
    except RemoteProtocolError:
        return False
    return True


def _strip_route(path: str, utf8: bool) -> str:
    """Drop an RFC 5321 source route ``@a,@b:`` in front of the mailbox.

    Ignored, but still held to the transaction's rules: a U-label in it
    needs SMTPUTF8 as one in the mailbox does (RFC 6531 3.3)."""
    if not path.startswith("@"):
        return path
    route, colon, mailbox = path.partition(":")
    if not colon or not mailbox:
        raise _fail(replies.SYNTAX_ADDRESS)
    for hop in route.split(","):
        if not hop.startswith("@") or len(hop) < 2:
            raise _fail(replies.SYNTAX_ADDRESS)
        _check_domain(hop[1:], utf8)
    return mailbox


def _expect_prefix(arg: str, prefix: str) -> str:
    """``FROM:`` / ``TO:`` (case-insensitive) -> the rest; 501 otherwise."""
    n = len(prefix)
    if ascii_upper(arg[:n]) != prefix:
        raise _fail(replies.SYNTAX_ARGUMENT)
    return arg[n:]


# --- ESMTP parameters --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailParams:
    """The MAIL FROM parameters we advertise, parsed."""

    size: int | None = None
    body_8bit: bool = False
    smtputf8: bool = False
    auth: str | None = None  # RFC 4954 AUTH=, xtext-decoded; "<>" kept as is
    ret: str | None = None
    envid: str | None = None  # xtext-decoded
    envid_raw: str | None = None  # as sent: relayed so (RFC 3461 5.2.1 (a))


NO_PARAMS = MailParams()  # frozen: one instance serves every plain MAIL


@dataclass(frozen=True, slots=True)
class RcptParams:
    """The RCPT TO parameters we advertise, parsed."""

    notify: tuple[str, ...] = ()
    orcpt: str | None = None  # "type;decoded"
    orcpt_raw: str | None = None  # "type;xtext" as sent (RFC 3461 5.2.1 (d))


_NO_RCPT_PARAMS = RcptParams()  # frozen: one instance serves every plain RCPT


def _split_params(text: str, utf8: bool) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in _BLANKS.split(text.strip(" \t")):
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key):
            raise _fail(replies.PARAM_SYNTAX)
        key = key.upper()
        if key in params:
            raise _fail(replies.PARAM_SYNTAX)
        if eq:
            pattern = _ESMTP_VALUE_UTF8 if utf8 else _ESMTP_VALUE
            if not pattern.match(value):
                raise _fail(replies.PARAM_SYNTAX)
            params[key] = value
        else:
            params[key] = None
    return params


def _mail_params(raw: dict[str, str | None]) -> MailParams:
    size = None
    body_8bit = False
    smtputf8 = False
    auth = ret = envid = envid_raw = None
    for key, value in raw.items():
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise _fail(replies.PARAM_SYNTAX)
            size = int(value)
        elif key == "BODY":
            v = ascii_upper(value or "")
            if v == "8BITMIME":
                body_8bit = True
            elif v == "BINARYMIME":  # RFC 3030's, which we do not offer
                raise _fail(replies.PARAM_NOT_RECOGNIZED)
            elif v != "7BIT":
                raise _fail(replies.PARAM_SYNTAX)
        elif key == "SMTPUTF8":
            if value is not None:
                raise _fail(replies.PARAM_SYNTAX)
            smtputf8 = True
        elif key == "AUTH":
            if value is None:
                raise _fail(replies.PARAM_SYNTAX)
            auth = xtext_decode(value)  # "<>" is xtext too, and itself decoded
        elif key == "RET":
            v = ascii_upper(value or "")
            if v not in ("FULL", "HDRS"):
                raise _fail(replies.PARAM_SYNTAX)
            ret = v
        elif key == "ENVID":
            if value is None:
                raise _fail(replies.PARAM_SYNTAX)
            envid = decode_envid(value)
            envid_raw = value
        else:
            raise _fail(replies.PARAM_NOT_RECOGNIZED)
    if envid is not None and not smtputf8 and not envid.isascii():
        # US-ASCII only (RFC 3461 4.4), whatever the xtext spelled; UTF-8
        # only in an SMTPUTF8 transaction (SMTPUTF8 may come after ENVID)
        raise _fail(replies.PARAM_SYNTAX)
    if auth is not None and auth != "<>":
        _check_auth_mailbox(auth, smtputf8)  # after the loop: SMTPUTF8 may come later
    return MailParams(size, body_8bit, smtputf8, auth, ret, envid, envid_raw)


def decode_envid(value: str) -> str:
    """An ``ENVID`` esmtp-value (RFC 3461 4.4) -> the id it stands for;
    ``501 5.5.4`` if it is not one.

    Up to 100 characters as sent (the decoded id can be a third of that):
    a longer one the next hop may refuse, and its notice form (UTF-8 as
    xtext) could pass RFC 5322's line limit.  xtext with upper-case hex
    only (``+2b`` is no hexchar: RFC 3461 4).  Decoded, printable
    characters: a CR or LF would break the notice's header.  Whether UTF-8
    is allowed (only with SMTPUTF8) is the caller's business."""
    if len(value) > MAX_ENVID:
        raise _fail(replies.PARAM_SYNTAX)
    envid = xtext_decode(value)
    if not _ENVID_TEXT.match(envid):
        raise _fail(replies.PARAM_SYNTAX)
    return envid


def _check_auth_mailbox(mailbox: str, smtputf8: bool) -> None:
    """RFC 4954 5: the decoded ``AUTH=`` value "MUST be either an
    addr-spec or the two characters <>"; anything else (``<a@b>``, a CR,
    a space) is a malformed parameter, ``501 5.5.4``.

    Read as a MAIL path's mailbox is (``parse_mailbox``: the paths'
    leniencies, a bare local part included, as the external contract has
    for every address), at most ``MAX_PATH`` octets, UTF-8 only in an
    SMTPUTF8 transaction (RFC 6531 3.3).  A well-formed value is still
    never trusted (RFC 4954 5: the hub behaves as if ``AUTH=<>`` was
    given); checking it keeps a line break or a control out of anything
    that would show it."""
    if _too_long(mailbox):
        raise _fail(replies.PARAM_SYNTAX)
    try:
        # the primary domain does not matter here: a bare name is taken,
        # the value is kept as sent
        parse_mailbox(mailbox, "localhost", smtputf8)
    except RemoteProtocolError:
        raise _fail(replies.PARAM_SYNTAX) from None


def _rcpt_params(raw: dict[str, str | None]) -> RcptParams:
    notify: tuple[str, ...] = ()
    orcpt = orcpt_raw = None
    for key, value in raw.items():
        if key == "NOTIFY":
            words = tuple(ascii_upper(w) for w in (value or "").split(","))
            if words == ("NEVER",):
                notify = words
            elif words and all(w in _NOTIFY_WORDS for w in words) and len(set(words)) == len(
                words
            ):
                notify = words
            else:
                raise _fail(replies.PARAM_SYNTAX)
        elif key == "ORCPT":
            orcpt = decode_orcpt(value or "")
            orcpt_raw = value
        else:
            raise _fail(replies.PARAM_NOT_RECOGNIZED)
    return RcptParams(notify, orcpt, orcpt_raw)


def decode_orcpt(value: str) -> str:
    """An ``ORCPT`` esmtp-value, ``type;value`` -> ``"type;decoded"``;
    ``501 5.5.4`` if it is not one.  The type keeps its case.

    Type ``utf-8`` (RFC 6533 3): utf-8-addr-xtext (``\\x{HEX}`` escapes),
    or -unitext (raw UTF-8, which only an SMTPUTF8 transaction lets this
    far).  Any other type (``rfc822``...): RFC 3461 xtext whose decoded
    value is printable US-ASCII (4.2).  An address never holds a control
    character: it would reach the notices' header fields.  At most
    ``MAX_ORCPT`` characters as sent (4.2), escapes counted as sent."""
    if len(value) > MAX_ORCPT:
        raise _fail(replies.PARAM_SYNTAX)
    addr_type, semi, text = value.partition(";")
    if not semi or not _KEYWORD.match(addr_type) or not text:
        raise _fail(replies.PARAM_SYNTAX)
    if addr_type.lower() == "utf-8":
        decoded = utf8_addr_decode(text)
        if not _QTEXT_UTF8.match(decoded):
            raise _fail(replies.PARAM_SYNTAX)
    else:
        decoded = xtext_decode(text)
        if not _PRINTABLE_ASCII.match(decoded):
            raise _fail(replies.PARAM_SYNTAX)
    return f"{addr_type};{decoded}"


# --- MAIL and RCPT ----------------------------------------------------------


def parse_mail(arg: str, primary_domain: str) -> tuple[Address | None, MailParams]:
    """The argument of ``MAIL`` (``FROM:<path> params``) -> sender, params.

    ``<>`` gives ``None``.  Unknown parameters -> 555 5.5.4."""
    rest = _expect_prefix(arg, "FROM:")
    path, tail = _split_path(rest)
    # (a non-ASCII parameter without SMTPUTF8 is refused by its own check:
    # keywords are ASCII, SIZE, BODY and RET compare ASCII, AUTH and
    # ENVID are xtext, an ENVID decoded to UTF-8 wants SMTPUTF8)
    params = _mail_params(_split_params(tail, utf8=True)) if tail.strip(" \t") else NO_PARAMS
    if path == "":
        return None, params
    if _too_long(path):
        raise _fail(replies.SENDER_PATH_TOO_LONG)
    try:
        utf8 = params.smtputf8
        return parse_mailbox(_strip_route(path, utf8), primary_domain, utf8), params
    except RemoteProtocolError as e:
        if e.reply is replies.SMTPUTF8_NOT_DECLARED:  # a sender: 550 (RFC 6531 3.5)
            raise _fail(replies.SMTPUTF8_NOT_DECLARED_SENDER) from None
        raise


def parse_rcpt(arg: str, primary_domain: str, utf8: bool = False) -> tuple[Address, RcptParams]:
    """The argument of ``RCPT`` (``TO:<path> params``) -> recipient, params.

    ``utf8`` is whether the transaction's MAIL carried SMTPUTF8.  A bad
    path is ``501 5.1.3`` (RFC 3463 X.1.3, the destination's; X.1.7, which
    MAIL answers, is the sender's)."""
    rest = _expect_prefix(arg, "TO:")
    try:
        path, tail = _split_path(rest, rcpt=True)
        if not path:
            raise _fail(replies.SYNTAX_RECIPIENT)
        if _too_long(path):
            raise _fail(replies.PATH_TOO_LONG)
        params = _rcpt_params(_split_params(tail, utf8)) if tail.strip(" \t") else _NO_RCPT_PARAMS
        address = parse_mailbox(_strip_route(path, utf8), primary_domain, utf8)
    except RemoteProtocolError as e:
        if e.reply is replies.SYNTAX_ADDRESS:
            raise _fail(replies.SYNTAX_RECIPIENT) from None
        if e.reply is replies.PATH_MISSING:  # the recipient's: X.1.3
            raise _fail(replies.RECIPIENT_PATH_MISSING) from None
        raise
    if utf8 and not path.isascii() and len(utf8_addr_encode(str(address))) > MAX_DSN_ADDRESS:
        raise _fail(replies.PATH_TOO_LONG)  # no report could name it
    return address, params
