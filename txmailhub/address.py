"""Mail addresses as values.

Owns the ``Address`` type and the rules that turn what a user typed (a full
address or a bare local part) into one.  SMTP path syntax (``<...>``,
parameters, source routes) is parsed by ``txmailhub.smtp._parse``; this
module only deals with a single ``local@domain`` string.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

import idna

from txmailhub.logsafe import quoted

__all__ = [
    "Address",
    "AddressError",
    "ascii_domain",
    "ascii_form",
    "canonical_address",
    "canonical_domain",
    "canonical_local",
    "client_ip",
    "client_key",
    "load_codecs",
    "dns_name_problem",
    "domain_problem",
    "address_literal",
    "ipv4_literal",
    "ipv6_literal",
    "login_key",
    "one_quoted_string",
    "parse_address",
    "quoted_end",
    "rcpt_mailbox",
    "written_domain",
]


def load_codecs() -> None:
    """Import the codecs IDNA conversion looks up by name, at each call:
    ``"punycode"`` (the ``idna`` package's A-labels) and ``"idna"`` (the
    IDNA2003 form, ``dns_name_problem``).  ``MailHub`` calls it when it is
    built, as the user that starts it: after twistd's ``--uid`` (under
    ``twistd mailhub`` or a ``.tac``) a standard library that user cannot
    read (installed under /root) is out of reach, and the first domain
    with a non-ASCII label would fail with "unknown encoding: punycode"
    (a ``451`` to its ``RCPT``)."""
    import encodings.idna
    import encodings.punycode  # noqa: F401


@functools.lru_cache(maxsize=4096)
def canonical_domain(domain: str) -> str:
    """The one spelling of ``domain`` that local lookups, the configured
    domains and Maildir folders use: lower case, no final dot, and for an
    internationalized name its U-labels in NFC.  ``xn--bcher-kva.example``,
    ``BÜCHER.example`` and a decomposed ``bücher.example`` are all
    ``bücher.example``: one domain (RFC 5890 2.3.2.1; a server without
    SMTPUTF8 can only ever send the A-label form, RFC 6531 3.2).

    A name IDNA2008 (UTS 46 mapping, non-transitional: ``ß`` stays) cannot
    read is kept lower-cased in NFC: it still names itself, and routing
    decides what to do with it."""
    d = domain.rstrip(".").lower()
    if d.isascii() and "xn--" not in d:
        return d  # nearly every domain: nothing to map
    if d.startswith("["):
        return d  # an address literal
    labels = _idn_labels(d, ascii=False)
    if labels is None:
        return unicodedata.normalize("NFC", d)
    return ".".join(labels)


# An ASCII label as the SMTP paths take one (txmailhub.smtp._parse), after
# the UTS 46 mapping has lower-cased it: letters, digits, inner hyphens,
# the underscores seen in the wild; 1 to 63 octets (RFC 1035 2.3.4).
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?\Z")
# RFC 1035 2.3.4's 255 octets on the wire, written out: what IDNA2008
# converts at most
_MAX_IDN_DOMAIN = 253


def _idn_labels(name: str, ascii: bool) -> list[str] | None:
    """The labels of ``name`` (no final dot) as A-labels (``ascii``) or
    U-labels, or ``None`` when ``name`` has no IDNA2008 form.

    Label by label, not the whole name through IDNA at once: IDNA2008
    converts U-labels and A-labels only, and a name may mix them with
    plain ASCII labels that are none -- ``my_host`` (the SMTP paths' underscore
    leniency) or ``ab--cd`` (RFC 5890 2.3.1's reserved LDH label: "--" in
    3rd and 4th place, not ``xn--``).  DNS holds those as they are, so
    they are kept (lower-cased, as the UTS 46 mapping does); a non-ASCII
    label must be a U-label (UTS 46 mapping, non-transitional), an
    ``xn--`` one a true A-label (RFC 5891 5.3), the whole at most 253
    octets.  Anything else keeps the old answer: no form, ``None``."""
    try:
        mapped = idna.uts46_remap(name, std3_rules=False)
        if len(mapped) > _MAX_IDN_DOMAIN:
            return None
        out = []
        for label in mapped.split("."):
            if label.isascii() and not label.startswith("xn--"):
                if not _ASCII_LABEL.match(label):
                    return None
                out.append(label)
            elif ascii:
                out.append(idna.alabel(label).decode("ascii"))
            else:
                out.append(idna.ulabel(label))
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    if ascii and sum(1 + len(label) for label in out) - 1 > _MAX_IDN_DOMAIN:
        return None
    return out


# What domain_problem takes, written out: an ASCII label is letters,
# digits, inner hyphens and the underscores seen in the wild, 1 to 63
# octets (RFC 1035 2.3.4); a non-ASCII label is those and RFC 6531's
# UTF8-non-ascii, less C1 controls and U+2028/U+2029 (line breaks to
# str.splitlines), before IDNA2008 judges it.
_LDH_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
_LDH_DOMAIN = re.compile(rf"{_LDH_LABEL}(?:\.{_LDH_LABEL})*\Z")
_LDH_LABEL_RE = re.compile(rf"{_LDH_LABEL}\Z")
_UTF8_LABEL = re.compile(r"(?:[A-Za-z0-9_\-]|[^\x00-\x9f\u2028\u2029])+\Z")
# a label that says it is an A-label ("xn--", any case: RFC 5890 2.3.1)
_XN_LABEL = re.compile(r"(?:\A|\.)xn--", re.IGNORECASE)
# RFC 5321 4.5.3.1.2: a domain is at most 255 octets
MAX_DOMAIN = 255


def domain_problem(name: str, max_length: int = MAX_DOMAIN) -> str | None:
    """Why ``name`` (no final dot, no address literal) is no domain the hub
    takes, or ``None``: the one rule for SMTP paths (``txmailhub.smtp._parse``)
    and the configured local domains (``txmailhub.config``), so that a
    domain the one takes the other does too, in either spelling.

    Label by label, as ``_idn_labels`` converts: an ASCII label is letters,
    digits, inner hyphens and underscores, at most 63 octets, and kept as
    it is -- ``ab--cd`` (RFC 5890 2.3.1's reserved LDH label) too, next to
    a U-label or not; one that says it is an A-label (``xn--``) must be
    one, in an all-ASCII name as well (RFC 5890 2.3.2.1, RFC 5891 5.3: it
    decodes to a U-label that encodes back to it; ``xn--zz`` is a "fake
    A-label" no registry can hold); a non-ASCII label must be a U-label
    IDNA2008 takes (UTS 46 mapping, so ``BÜCHER`` is ``bücher``) whose
    A-label has at most 63 octets.  At most ``max_length`` characters as
    written (RFC 5321's 255; the configuration asks for DNS's 253), and a
    name with a U-label or an A-label at most 253 in its A-label form
    (RFC 1035 2.3.4's 255 on the wire, all IDNA2008 converts)."""
    if name.isascii() and len(name) <= max_length and _LDH_DOMAIN.match(name) and (
            "-" not in name or not _XN_LABEL.search(name)):
        return None  # nearly every domain: one regular expression
    if not name:
        return "is not a domain name: it is empty"
    idn = False
    for label in name.split("."):
        if not label:
            return "is not a domain name: it has an empty label (two dots in a row)"
        if label.isascii():
            if len(label) > 63:
                return (f"is not a domain name: the label {quoted(label[:20])}... is over 63 "
                        "characters")
            if not _LDH_LABEL_RE.match(label):
                if label == name:
                    return ("is not a domain name (letters, digits, underscores and inner "
                            "hyphens only)")
                return (f"is not a domain name: the label {quoted(label)} is not letters, digits, "
                        "underscores and inner hyphens only")
            if label[:4].lower() == "xn--":
                if not _a_label(label):
                    return (f"is not a valid internationalized domain name: the label "
                            f"{quoted(label)} is no A-label (not the Punycode of a U-label "
                            "IDNA2008 takes, as IDNA2008 writes it: RFC 5891 5.3)")
                idn = True
        else:
            if not _UTF8_LABEL.match(label) or _u_label(label) is None:
                return (f"is not a valid internationalized domain name: the label {quoted(label)} "
                        "is no U-label IDNA2008 takes, or its A-label is over 63 characters "
                        "(RFC 5891)")
            idn = True
    if len(name) > max_length:
        return f"is not a domain name (1 to {max_length} characters)"
    if idn:
        a_labels = _idn_labels(name, ascii=True)
        if a_labels is None:  # the only thing left: the length of the whole
            return (f"is not a domain name: its A-label form is over {_MAX_IDN_DOMAIN} "
                    "characters (RFC 1035 2.3.4)")
        if len(".".join(a_labels)) > max_length:
            return f"is not a domain name: its A-label form is over {max_length} characters"
    return None


@functools.lru_cache(maxsize=1024)
def _u_label(label: str) -> int | None:
    """The length of the A-label of a non-ASCII label IDNA2008 takes (RFC
    5890 2.3.2.1's U-label; the A-label at most 63 octets, which idna
    checks), else ``None``.  Read with UTS 46 mapping as every domain of
    the hub is (capitals and decomposed forms are the same name,
    docs/smtp.rst); one label, not a name the mapping splits at an
    ideographic full stop."""
    try:
        ace = idna.encode(label, uts46=True)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return None if b"." in ace else len(ace)


@functools.lru_cache(maxsize=1024)
def _a_label(label: str) -> bool:
    """Whether an ASCII ``xn--`` label is a valid A-label (RFC 5891 5.3):
    lower-cased, it decodes to a U-label IDNA2008 takes that encodes back
    to the same label (``xn--zz``, the non-canonical ``xn---bcher-kva`` and
    ``xn--n3h``, a snowman, are not)."""
    try:
        return idna.alabel(idna.ulabel(label)).decode("ascii") == label.lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        return False


# RFC 5321's Dot-string with RFC 6531 3.3's UTF8-non-ascii in its atoms,
# less what txmailhub.smtp._parse takes no address with (C1 controls,
# U+2028/U+2029)
_LOCAL_ATOM = r"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]|[^\x00-\x9f\u2028\u2029])+"
_LOCAL_DOT_STRING = re.compile(rf"{_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*\Z")


def canonical_local(local: str) -> str:
    """The form of a local part that local lookups and Maildir folders
    use: lower case and, for a UTF-8 one, NFC -- the composed and the
    decomposed ``jörg`` look alike and are one mailbox (RFC 6530 10.1).
    NFC again after lower-casing: a capital may lower to a base and a mark
    (``İ`` to ``i`` and U+0307) that a following mark of a lower class must
    precede, and the key of a key must be itself (one folder name).

    A few characters are ASCII punctuation in NFC (U+037E, the Greek
    question mark, is ";"): a dot-string with one is keyed as the quoted
    string its NFC form needs, as ``"a;"`` is (``txmailhub.smtp._parse``
    judges a quoted one in NFC too), not as ``a;``, which no RCPT names."""
    if local.isascii():
        return local.lower()
    key = unicodedata.normalize("NFC", unicodedata.normalize("NFC", local).lower())
    if key[:1] != '"' and not _LOCAL_DOT_STRING.match(key) and _LOCAL_DOT_STRING.match(local):
        return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return key


class AddressError(ValueError):
    """The text is not a usable mail address; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox address.

    ``domain`` is always lower case (domains are case-insensitive, RFC 5321
    2.4) but for an IPv6 address literal's tag, ``IPv6:`` as RFC 5321
    4.1.3 writes it (``written_domain``), and otherwise as given (an
    A-label stays one: it may be the only form a peer can take).
    ``local`` keeps the case it was given, because RFC 5321 lets the
    destination decide; ``key`` is the case-folded, normalized form that
    local lookups (users, aliases, Maildir folders) use, as every
    mainstream MTA does (``canonical_local`` and ``canonical_domain``).
    """

    local: str
    domain: str

    def __post_init__(self) -> None:
        # written_domain, inline: one Address per path on every message
        domain = self.domain.lower()
        if domain[:6] == "[ipv6:":
            domain = "[IPv6:" + domain[6:]
        if domain != self.domain:
            object.__setattr__(self, "domain", domain)

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form used to look the address up locally."""
        return f"{canonical_local(self.local)}@{canonical_domain(self.domain)}"

    @property
    def is_postmaster(self) -> bool:
        return self.local.lower() == "postmaster"


def canonical_address(address: Address) -> Address:
    """A local mailbox as the hub names it, however it was spelled: the
    router's name for it (``txmailhub.router``), one per Maildir."""
    return Address(canonical_local(address.local), canonical_domain(address.domain))


def rcpt_mailbox(address: Address, local_domains: Collection[str]) -> Address:
    """The mailbox a recipient ``address`` names, before any alias is read,
    as the hub tells one from another when it merges the recipients of a
    transaction: at one of ``local_domains`` (in ``canonical_domain``
    form) its ``canonical_address``, as the router looks it up
    (``Bob@EXAMPLE.ORG`` is ``bob@example.org``); at any other domain the
    address itself -- its domain in lower case, its local part as given,
    which only the destination may fold (RFC 5321 2.4)."""
    if canonical_domain(address.domain) in local_domains:
        return canonical_address(address)
    return address


def written_domain(domain: str) -> str:
    """``domain`` as the hub writes it in what it sends and logs: lower
    case, but an IPv6 address literal keeps its tag as RFC 5321 4.1.3
    spells it, ``[IPv6:2001:db8::1]``.  The tag is case-insensitive to a
    reader (RFC 5234 2.3), and the hub compares it so (``canonical_domain``
    lower-cases all of it), but ``[ipv6:...]`` in a notice, a Received
    field or a log line is a spelling no one writes."""
    d = domain.lower()
    if d[:6] == "[ipv6:":
        return "[IPv6:" + d[6:]
    return d


def quoted_end(text: str) -> int:
    """The index just past the quoted string ``text`` starts with (a
    backslash escaping the next character in it, as in RCPT); -1 if it
    starts with none or it is not closed."""
    if len(text) < 2 or text[0] != '"':
        return -1
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return -1


def one_quoted_string(local: str) -> bool:
    """Whether ``local`` is one RFC 5321 quoted string, its closing quote
    the last character (a backslash escaping the next one, as in RCPT):
    ``"q"`` and ``"a\\"b"`` are, ``"a""b"`` and ``"a\\"`` are not."""
    return quoted_end(local) == len(local)


def login_key(name: str) -> str:
    """A login name (``user@domain``, or a bare ``user``) in the form the
    users file keys it: case, IDN spelling and normalization do not matter,
    and the local part is read as RCPT gives it, as ``UsersDB.qualify``
    takes it (``txmailhub.users.as_given``): ``"joe"`` is joe, ``a;`` is
    ``"a;"`` and ``"a""b"`` is ``"a\\"\\"b"``, so an authzid ``"joe"``
    names the user who logged in as joe, and ``a;`` the one who logged in
    as ``"a;"`` (RFC 4616 2)."""
    local, at, domain = name.rpartition("@")
    if not at or one_quoted_string(name):  # ('"a@b"': a bare local part)
        local, at = name, ""
    from txmailhub.smtp._parse import rcpt_local, unquote_local

    if len(local) > 1 and local[0] == local[-1] == '"':
        # one quoted string as RCPT gives it; quotes that are no one
        # ('"a""b"') read as one, as `user add` writes the user
        # (``txmailhub.users.as_given``)
        local = unquote_local(local)
    elif local not in (".", ".."):
        local = rcpt_local(local)
    if not at:
        return canonical_local(local)
    return f"{canonical_local(local)}@{canonical_domain(domain)}"


def ascii_domain(domain: str) -> str:
    """``domain`` in ASCII: an internationalized name as its A-labels
    (IDNA2008, lower case), its ASCII labels as they are (``my_host`` and
    ``ab--cd`` too: see ``_idn_labels``); anything else, an ASCII name or
    one with no IDNA2008 form, as it is.  What DNS is asked and what a
    peer without SMTPUTF8 is sent (RFC 6531 3.2)."""
    if domain.isascii():
        return domain  # nearly every domain: no IDNA at all
    root = "." if domain.endswith(".") else ""  # a final dot stays, one at most
    labels = _idn_labels(domain[: len(domain) - len(root)], ascii=True)
    if labels is None:
        return domain
    return ".".join(labels) + root


def dns_name_problem(domain: str) -> str | None:
    """Why no name in DNS can be ``domain`` (no final dot), or ``None``.

    Read in its ASCII form (``ascii_domain``): labels of 1 to 63 octets,
    at most 253 in all written out (RFC 1035 2.3.4: 255 on the wire), of
    letters, digits, hyphens and the underscores some zones have.  The
    relay asks DNS nothing for such a name (``txmailhub.relay.mx``: no
    answer could ever come) and ``mailhub check`` reports an alias target
    in one.  A name with no IDNA2008 form is handed to the resolver as it
    is, and twisted.names asks for its IDNA2003 form (``☃.example`` is
    ``xn--n3h.example`` there): judged by that, and one with neither form
    can be no name at all (twisted.names would raise at once).  An address
    literal is no DNS name: callers take it out first."""
    name = ascii_domain(domain)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return ("no ASCII form: neither IDNA2008 (RFC 5891) nor the IDNA2003 the "
                    "resolver falls back to can convert it")
    if len(name) > 253:
        return f"{len(name)} octets, over the 253 of a name in DNS (RFC 1035 2.3.4)"
    for label in name.split("."):
        if not label:
            return "an empty label (RFC 1035 2.3.4)"
        if len(label) > 63:
            return (f"a label of {len(label)} octets, over the 63 of a label in DNS "
                    "(RFC 1035 2.3.4)")
        if not all(c.isalnum() or c in "-_" for c in label):
            return (f"the label {quoted(label)}: letters, digits, hyphens and underscores only "
                    "(RFC 1035 2.3.4)")
    return None


def ascii_form(address: Address) -> str | None:
    """``address`` in ASCII: as it is, or with an internationalized domain
    as its A-labels (IDNA2008); ``None`` when the local part is not ASCII
    or the domain is no valid IDN (only SMTPUTF8 can carry it then)."""
    text = str(address)
    if text.isascii():
        return text
    if not address.local.isascii():
        return None
    domain = ascii_domain(address.domain)
    if not domain.isascii():
        return None
    return f"{address.local}@{domain}"


# C0 controls, DEL and the C1 controls: no address holds one (RFC 5321's
# atext and RFC 6531's UTF8-non-ascii leave them out), and one written to
# a log or a terminal (ESC) can rewrite what the reader sees
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_address(text: str, primary_domain: str | None = None, *,
                  controls: bool = False) -> Address:
    """Turn ``user@domain`` (or a bare ``user``) into an ``Address``.

    A bare local part means ``user@<primary_domain>``, as the external
    contract says for RCPT, POP3 logins, the aliases file and the CLI.
    A trailing dot on the domain is dropped (``example.org.`` is the
    same domain in DNS).  Raises ``AddressError`` with a reason.

    ``controls``: ESC, DEL and the C1 controls are taken (NUL and white
    space never are).  Only for a name already written down before they
    were refused -- a users file line, and the CLI naming that user to
    delete it -- which must stay reachable by the commands that remove
    it; such a name is shown escaped (``logsafe.shown``), never raw.
    """
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if (any(c.isspace() for c in text) or "\x00" in text
            or (not controls and _CONTROL.search(text))):
        raise AddressError(f"address {quoted(text)} contains whitespace or control characters")
    local, at, domain = text.rpartition("@")
    if at and one_quoted_string(text):  # '"a@b"': its '@' is quoted, a bare local part
        at = ""
    if not at:
        if primary_domain is None:
            raise AddressError(f"address {quoted(text)} has no domain")
        local, domain = text, primary_domain
    if not local:
        raise AddressError(f"address {quoted(text)} has an empty local part")
    domain = domain.rstrip(".")
    if not domain:
        raise AddressError(f"address {quoted(text)} has an empty domain")
    if "@" in local and not (local.startswith('"') and local.endswith('"')):
        raise AddressError(f"address {quoted(text)} has more than one @")
    return Address(local, domain.lower())


def client_key(host: str) -> str:
    """What per-client connection limits count by: the IPv4 address, or
    the /64 of an IPv6 one (a single host usually has a whole /64, and
    would otherwise be any number of "clients")."""
    ip = client_ip(host)
    if ip is None or ip.version == 4:
        return str(ip or host)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def client_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's or a record's host as an IP address, or ``None`` if it is none.

    Brackets (``[::1]``) and an IPv6 zone index (``fe80::1%eth0``) are
    dropped, and an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, how a
    dual-stack listener reports IPv4 clients) becomes the IPv4 address, so
    network and loopback checks see one form."""
    try:
        ip = ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]+")
_SNUM = re.compile(r"[0-9]{1,3}")


def ipv4_literal(text: str) -> ipaddress.IPv4Address:
    """The address of an RFC 5321 4.1.3 IPv4-address-literal (``Snum 3("."
    Snum)``); ValueError for anything else.

    An Snum is 1 to 3 decimal digits of a value up to 255, so ``010`` is
    ten: leading zeros are valid and decimal.  ``ipaddress`` refuses them
    (it will not guess between decimal and octal), which turned a valid
    ``user@[192.0.002.1]`` into a 501."""
    parts = text.split(".")
    if len(parts) != 4 or not all(_SNUM.fullmatch(p) and int(p) <= 255 for p in parts):
        raise ValueError(f"not an IPv4 literal: {quoted(text)}")
    return ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))


def ipv6_literal(text: str) -> ipaddress.IPv6Address:
    """The address of an RFC 5321 4.1.3 IPv6 literal (what follows
    ``IPv6:``); ValueError for anything else.

    Stricter than ``ipaddress``: hex digits, colons and an IPv4 tail only
    (``ipaddress`` takes a "%zone" of any characters, which names a local
    interface), and at most 6 groups beside a ``::`` (4 with an IPv4 tail):
    the grammar's IPv6-comp and IPv6v4-comp, where ``ipaddress`` lets
    ``1:2:3:4:5:6:7::`` stand for 7."""
    if not _IPV6_TEXT.fullmatch(text):
        raise ValueError(f"not an IPv6 literal: {quoted(text)}")
    head, colon, tail = text.rpartition(":")
    if colon and "." in tail:  # IPv6v4-full or -comp: the tail is Snums too
        ip = ipaddress.IPv6Address(f"{head}:{ipv4_literal(tail)}")
    else:
        ip = ipaddress.IPv6Address(text)
    if "::" in text:
        parts = text.split(":")
        v4 = "." in parts[-1]
        groups = [p for p in (parts[:-1] if v4 else parts) if p]
        if len(groups) > (4 if v4 else 6):
            raise ValueError(f"more groups than RFC 5321 4.1.3 allows beside '::': {quoted(text)}")
    return ip


def address_literal(name: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3) in its
    one spelling (``IPv6:`` and the compressed address); ValueError for
    anything else.  Addresses, HELO names and configured domains all take
    their literals through here."""
    if not (name.startswith("[") and name.endswith("]")):
        raise ValueError(f"not an address literal: {quoted(name)}")
    literal = name[1:-1]
    if literal[:5].lower() == "ipv6:":
        return f"[IPv6:{ipv6_literal(literal[5:]).compressed}]"
    return f"[{ipv4_literal(literal)}]"
