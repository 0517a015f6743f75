"""Differential tests: the hub's MAIL/RCPT argument parsing against an
independent reading of the RFC grammars (``abnf_smtp``).

Strings are generated from the ABNF (valid) and one mutation away from it
(near-misses).  For each, the hub must accept exactly what the grammar
accepts, widened only by the leniencies docs/smtp.rst documents, and give
the parsed value the RFC means (case, quoting, literal spelling,
parameter values) or the reply code its docs name for that kind of
failure.

Documented leniencies (accepted though the grammar does not):
  * a path without angle brackets, a blank after the colon;
  * a bare local part (``hollindg``) for the primary domain;
  * one trailing dot on a domain; underscores in ASCII labels;
  * blanks (spaces and tabs) around and between parameters;
  * a path of 256 octets without its brackets (RFC 5321 4.5.3.1.3 counts
    them), and a local part over 64 octets (4.5.3.1 asks for leniency).
Deliberate strictness (refused though the grammar allows):
  * C1 controls and U+2028/U+2029 in UTF-8 addresses (no address needs
    them; they break header fields and logs);
  * ``NOTIFY`` with a repeated or an empty element (``SUCCESS,SUCCESS``,
    ``SUCCESS,,DELAY``): the list form may allow them, no client sends
    them, and a repeat is more likely a broken client than a request.
"""

from __future__ import annotations

import ipaddress
import re

import abnf_smtp as G
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txmailhub.address import Address, address_literal
from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp import replies
from txmailhub.smtp._parse import MailParams, RcptParams, parse_mail, parse_mailbox, parse_rcpt
from txmailhub.smtp.received import protocol_name, received, return_path

P = "example.org"
FAST = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
# RFC 5322 3.6.7 return = "Return-Path:" path, an addr-spec in angle
# brackets: dot-atom or quoted-string "@" dot-atom or domain-literal (RFC
# 6532 3.2 adds UTF-8 to atext, qtext and dtext)
_ATEXT_U8 = r"[A-Za-z0-9_\x80-\U0010ffff!#$%&'*+/=?^`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT_U8}(?:\.{_ATEXT_U8})*"
_RETURN_PATH = re.compile(
    rf'Return-Path: <(?:{_DOT_ATOM}|"(?:[ !#-\[\]-~\x80-\U0010ffff]|\\[ -~])*")'
    rf"@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])>\n"
)
# what the hub refuses in UTF-8 addresses on purpose (see above)
_NEVER = re.compile(r"[\x80-\x9f\u2028\u2029]")


def outcome(fn, *args):
    try:
        return fn(*args)
    except RemoteProtocolError as e:
        return e.reply


# --- the model: the grammar plus the documented leniencies ---------------------


def expected_domain(dom: str, utf8: bool) -> str | None:
    """The hub's spelling of a Domain or address literal, None if refused."""
    if dom.startswith("["):
        if not G.address_literal(dom):
            return None
        return address_literal(dom).lower()  # one spelling; the grammar said yes
    if dom.endswith("."):
        dom = dom[:-1]  # leniency: the root's dot
    if len(dom) > 255:
        return None
    # leniency: "_" counts as a letter in an ASCII label
    labels = [lab.replace("_", "a") if lab.isascii() else lab for lab in dom.split(".")]
    if not G.domain(".".join(labels), utf8):
        return None
    # RFC 1035 2.3.4, RFC 5321 4.5.3.1.2: labels of at most 63 octets; a
    # domain with a U-label has an A-label form (RFC 5890 2.3.2.1): each
    # label as IDNA2008 encodes it, an xn-- label a true A-label, and at
    # most 253 octets in all (RFC 1035's 255 on the wire)
    # an xn-- label must be an A-label in an all-ASCII domain as well (RFC
    # 5890 2.3.2.1, RFC 5891 5.3): a fake one names nothing DNS can hold
    if dom.isascii() and not any(lab[:4].lower() == "xn--" for lab in labels):
        return dom.lower() if all(len(lab) <= 63 for lab in labels) else None
    ace = [lab if lab.isascii() and lab[:4].lower() != "xn--" else G.a_label(lab)
           for lab in labels]
    if None in ace or any(len(a) > 63 for a in ace) or len(".".join(ace)) > 253:
        return None
    return dom.lower()


def expected_mailbox(text: str, utf8: bool) -> Address | None:
    if _NEVER.search(text):
        return None
    parts = G.split_mailbox(text)
    if parts is None:
        if "@" in text and not text.startswith('"'):
            return None
        parts = (text, P)  # leniency: a bare local part
    local, dom = parts
    if not G.local_part(local, utf8):
        return None
    domain = expected_domain(dom, utf8)
    if domain is None:
        return None
    return Address(G.mailbox_form(local, dom)[0], domain)


def check_mailbox(text: str, utf8: bool) -> None:
    got = outcome(parse_mailbox, text, P, utf8)
    want = expected_mailbox(text, utf8)
    if want is not None:
        assert got == want, (text, utf8)
        return
    assert not isinstance(got, Address), (text, utf8, got)
    allowed = {replies.SYNTAX_ADDRESS}
    if not text.isascii() and not utf8:
        allowed.add(replies.SMTPUTF8_NOT_DECLARED)
    assert got in allowed, (text, utf8, got)


@FAST
@given(st.one_of(G.mailbox_ascii, G.mutate(G.mailbox_ascii)), st.booleans())
def test_ascii_mailboxes_and_near_misses(text, utf8):
    check_mailbox(text, utf8)


@FAST
@given(st.one_of(G.mailbox_u8, G.mutate(G.mailbox_u8)))
def test_utf8_mailboxes_and_near_misses(text):
    check_mailbox(text, True)
    check_mailbox(text, False)


@FAST
@given(G.domain_long, st.booleans())
def test_label_and_domain_lengths(dom, utf8):
    check_mailbox(f"u@{dom}", utf8)
    check_mailbox(f"u@{dom}.", utf8)


@FAST
@given(G.address_literal_text, G.mutate(G.address_literal_text))
def test_address_literals_and_near_misses(literal, near):
    for text in (literal, near):
        check_mailbox(f"u@{text}", False)


# --- paths: MAIL and RCPT, reply codes ----------------------------------------------

route = st.lists(st.one_of(G.domain_ascii, G.address_literal_text).map(lambda d: "@" + d),
                 max_size=2).map(lambda hops: ",".join(hops) + ":" if hops else "")


@FAST
@given(route, st.one_of(G.mailbox_ascii, G.mailbox_u8), st.booleans())
def test_paths_give_the_mailbox_or_the_commands_reply(hops, mailbox, smtputf8):
    path = f"<{hops}{mailbox}>"
    # leniency: a hop may be an IPv4 literal (RFC 821's route; RFC 5321
    # 4.1.2's At-domain is a Domain), the route being ignored anyway
    rfc_ok = (G.path(f"<{mailbox}>", smtputf8) and not _NEVER.search(path)
              and all(expected_domain(h[1:], smtputf8) and not h.lower().startswith("@[ipv6:")
                      for h in hops[:-1].split(",") if h))
    want = expected_mailbox(mailbox, smtputf8) if rfc_ok else None
    fits = len(path[1:-1].encode()) <= 256  # the hub's limit, brackets not counted
    sender = outcome(parse_mail, f"FROM:{path}" + (" SMTPUTF8" if smtputf8 else ""), P)
    rcpt = outcome(parse_rcpt, f"TO:{path}", P, smtputf8)
    if want is not None and fits:
        assert sender[0] == want and rcpt[0] == want, path
        # and the Return-Path it becomes is RFC 5322 3.6.7's (UTF-8 in it
        # only in an SMTPUTF8 message, RFC 6532 3.2)
        field = return_path(sender[0])
        assert _RETURN_PATH.fullmatch(field.decode()), field
        assert field.isascii() or smtputf8, field
        return
    if not path.isascii() and not smtputf8:
        # RFC 6531 3.5: 550 for the sender, 553 for a recipient, both X.6.7
        assert sender in (replies.SMTPUTF8_NOT_DECLARED_SENDER, replies.SYNTAX_ADDRESS), path
        assert rcpt in (replies.SMTPUTF8_NOT_DECLARED, replies.SYNTAX_RECIPIENT), path
        return
    # RFC 3463: X.1.7 a bad sender's address, X.1.3 a bad destination's
    assert sender == replies.SYNTAX_ADDRESS, (path, sender)
    assert rcpt in (replies.SYNTAX_RECIPIENT, replies.PATH_TOO_LONG), (path, rcpt)


@FAST
@given(G.mutate(st.tuples(route, G.mailbox_ascii).map(lambda t: f"<{t[0]}{t[1]}>")))
def test_path_near_misses(path):
    # what the grammar refuses the hub refuses, but for its leniencies
    sender = outcome(parse_mail, f"FROM:{path}", P)
    if not isinstance(sender, tuple):
        return
    inner = path.strip(" \t")
    if inner.startswith("<") and inner.endswith(">"):
        inner = inner[1:-1]
    if inner.startswith("@"):  # a route: each hop a domain, then the mailbox
        hops, _, inner = inner.partition(":")
        assert all(expected_domain(h[1:], False) for h in hops.split(",")), path
    assert sender[0] == expected_mailbox(inner, False), path


def test_length_limits():
    # RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets
    long_local = "a" * 65 + "@x.test"  # leniency: 4.5.3.1 asks for it
    assert parse_mail(f"FROM:<{long_local}>", P)[0].local == "a" * 65
    domain = ".".join(["d" * 63] * 3 + ["e" * 62])  # 254 characters: "u@" makes 256
    assert parse_rcpt(f"TO:<u@{domain}>", P)[0].domain == domain
    assert parse_mail(f"FROM:<u@{domain}>", P)[0].domain == domain
    assert outcome(parse_rcpt, f"TO:<uu@{domain}>", P) == replies.PATH_TOO_LONG
    assert outcome(parse_mail, f"FROM:<uu@{domain}>", P) == replies.SENDER_PATH_TOO_LONG
    # a route counts: the path is everything between the brackets
    assert outcome(parse_rcpt, f"TO:<@a.test:u@{domain}>", P) == replies.PATH_TOO_LONG


# --- ESMTP parameters ---------------------------------------------------------------


def xtext_of(text: str) -> str:
    """RFC 3461 4: xchar as it is, every other octet as "+" and 2 capitals."""
    return "".join(c if c in G.XCHARS else "".join(f"+{b:02X}" for b in c.encode())
                   for c in text)


printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\t"),
                    min_size=1, max_size=12)
mail_param = st.one_of(
    st.integers(0, 10 ** 20 - 1).map(lambda n: f"SIZE={n}"),
    st.sampled_from(["BODY=7BIT", "BODY=8BITMIME", "body=8bitmime", "SMTPUTF8", "RET=FULL",
                     "ret=hdrs", "AUTH=<>", "BODY=BINARYMIME", "X-FOO", "XBAR=1"]),
    printable.map(lambda t: "AUTH=" + xtext_of(t)),
    # RFC 4954 5: a mailbox, ASCII or (with SMTPUTF8) not, xtext-encoded
    st.one_of(G.mailbox_ascii, G.mailbox_u8).map(lambda m: "AUTH=" + xtext_of(m)),
    printable.map(lambda t: "ENVID=" + xtext_of(t)),
    st.text(alphabet="\u00e9\u20ac", min_size=1, max_size=3).map(lambda t: "ENVID=" + xtext_of(t)),
)
rcpt_param = st.one_of(
    st.sampled_from(["NOTIFY=NEVER", "NOTIFY=SUCCESS", "notify=failure,delay",
                     "NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;a@b.test", "XFOO"]),
    printable.map(lambda t: "ORCPT=rfc822;" + xtext_of(t)),
    st.text(alphabet="ab@.\u00e9\u20ac+=\\", min_size=1, max_size=8).map(
        lambda t: "ORCPT=utf-8;" + "".join(c if G.qchar(c) else f"\\x{{{ord(c):02X}}}"
                                           for c in t)),
)


def mail_param_errors(key: str, value: str | None, smtputf8: bool) -> set | None:
    """The replies RFC 1870/6152/6531/4954/3461 make of one MAIL parameter
    (None: it is valid)."""
    bad = {replies.PARAM_SYNTAX}
    if key == "SIZE":
        return None if value and re.fullmatch(r"[0-9]{1,20}", value) else bad
    if key == "BODY":
        if value and value.upper() == "BINARYMIME":
            return {replies.PARAM_NOT_RECOGNIZED}  # RFC 3030's, not offered
        return None if value and value.upper() in ("7BIT", "8BITMIME") else bad
    if key == "SMTPUTF8":
        return None if value is None else bad
    if key == "RET":
        return None if value and value.upper() in ("FULL", "HDRS") else bad
    if key == "AUTH":
        # RFC 4954 5: xtext whose decoded form is "<>" or an addr-spec, read
        # as a path's mailbox is (and as long as one may be)
        decoded = G.xtext(value) if value else None
        if decoded is None:
            return bad
        if decoded == "<>":
            return None
        if len(decoded.encode()) > 256 or expected_mailbox(decoded, smtputf8) is None:
            return bad
        return None
    if key == "ENVID":
        decoded = G.xtext(value) if value else None
        if decoded is None or len(value) > 100:
            return bad
        if not decoded.isascii():
            return None if smtputf8 and not _NEVER.search(decoded) and all(
                c == "\t" or c >= " " for c in decoded) else bad
        return None if G.printable_ascii(decoded) else bad
    return {replies.PARAM_NOT_RECOGNIZED}


def check_mail_params(tail: str) -> None:
    got = outcome(parse_mail, "FROM:<a@b.test> " + tail, P)
    items = G.esmtp_params(re.sub(r"[ \t]+", " ", tail.strip(" \t")), utf8=True)
    errors: set = set()
    if items is None or len({k for k, _ in items}) != len(items):
        errors = {replies.PARAM_SYNTAX}
    else:
        smtputf8 = any(k == "SMTPUTF8" for k, _ in items)
        if not smtputf8 and not tail.isascii():
            errors.add(replies.PARAM_SYNTAX)
        for key, value in items:
            errors |= mail_param_errors(key, value, smtputf8) or set()
    if errors:
        assert got in errors, (tail, got)
        return
    assert isinstance(got, tuple), (tail, got)
    values = dict(items)
    want = MailParams(
        size=int(values["SIZE"]) if "SIZE" in values else None,
        body_8bit=(values.get("BODY") or "").upper() == "8BITMIME",
        smtputf8="SMTPUTF8" in values,
        auth=G.xtext(values["AUTH"]) if "AUTH" in values else None,
        ret=values["RET"].upper() if "RET" in values else None,
        envid=G.xtext(values["ENVID"]) if "ENVID" in values else None,
        envid_raw=values.get("ENVID"),  # as sent, for the relay (RFC 3461 5.2.1)
    )
    assert got[1] == want, tail


@FAST
@given(st.lists(mail_param, min_size=1, max_size=4).map(" ".join))
def test_mail_parameters_from_the_grammar(tail):
    check_mail_params(tail)


@FAST
@given(G.mutate(st.lists(mail_param, min_size=1, max_size=3).map(" ".join)))
def test_mail_parameter_near_misses(tail):
    check_mail_params(tail)


def rcpt_param_errors(key: str, value: str | None, smtputf8: bool) -> set | None:
    bad = {replies.PARAM_SYNTAX}
    if key == "NOTIFY":
        words = G.notify_value(value or "")
        return None if words and len(set(words)) == len(words) else bad
    if key == "ORCPT":
        addr_type, semi, text = (value or "").partition(";")
        if not semi or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", addr_type):
            return bad
        if addr_type.lower() == "utf-8":
            decoded = G.utf8_addr_xtext(text, unitext=smtputf8)
            ok = decoded is not None and all(" " <= c <= "~" or ord(c) > 0x7F for c in decoded)
            return None if ok and not _NEVER.search(decoded) else bad
        decoded = G.xtext(text) if text else None
        return None if decoded is not None and G.printable_ascii(decoded) else bad
    return {replies.PARAM_NOT_RECOGNIZED}


def check_rcpt_params(tail: str, smtputf8: bool) -> None:
    got = outcome(parse_rcpt, "TO:<a@b.test> " + tail, P, smtputf8)
    items = G.esmtp_params(re.sub(r"[ \t]+", " ", tail.strip(" \t")), utf8=smtputf8)
    errors: set = set()
    if items is None or len({k for k, _ in items}) != len(items):
        errors = {replies.PARAM_SYNTAX}
    else:
        for key, value in items:
            errors |= rcpt_param_errors(key, value, smtputf8) or set()
    if errors:
        assert got in errors, (tail, got)
        return
    assert isinstance(got, tuple), (tail, got)
    values = dict(items)
    notify = tuple(w.upper() for w in values["NOTIFY"].split(",")) if "NOTIFY" in values else ()
    orcpt = None
    if "ORCPT" in values:
        addr_type, _, text = values["ORCPT"].partition(";")
        decoded = (G.utf8_addr_xtext(text, smtputf8) if addr_type.lower() == "utf-8"
                   else G.xtext(text))
        orcpt = f"{addr_type};{decoded}"
    assert got[1] == RcptParams(notify, orcpt, values.get("ORCPT")), tail


@FAST
@given(st.lists(rcpt_param, min_size=1, max_size=3).map(" ".join), st.booleans())
def test_rcpt_parameters_from_the_grammar(tail, smtputf8):
    check_rcpt_params(tail, smtputf8)


@FAST
@given(G.mutate(st.lists(rcpt_param, min_size=1, max_size=2).map(" ".join)), st.booleans())
def test_rcpt_parameter_near_misses(tail, smtputf8):
    check_rcpt_params(tail, smtputf8)


# --- the Received field -------------------------------------------------------------

helo_names = st.one_of(
    G.domain_ascii, G.address_literal_text, G.domain_u8, G.mutate(G.domain_ascii),
    G.mutate(G.address_literal_text), st.text(max_size=24),
    st.text(alphabet="()\\\"\r\n\t ;[]:_-.a\u00e9\x00\x1b\x7f\x85\u2028", max_size=24),
)
client_addresses = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["localhost", "", "fe80::1%eth0", "::ffff:192.0.2.1", "::1", "127.0.0.1"]),
)


# what the TLS layer may name a session's suite: OpenSSL's TLS 1.2 names
# (the tls clause gives the registry's), TLS 1.3's, one without a registry
# name the hub knows, and any text at all (comment only, never the clause)
ciphers = st.one_of(
    st.sampled_from(["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                     "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                     "AES128-SHA", "TLS_" + "A" * 90]),
    st.text(max_size=100),
)


@FAST
@given(helo_names, client_addresses, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
       ciphers)
def test_the_received_field_is_always_the_grammar(helo, client, esmtp, tls, auth, smtputf8,
                                                  cipher):
    recipient = Address("j\u00f6rg" if smtputf8 else '"a b"', "b\u00fccher.test" if smtputf8
                        else "[ipv6:2001:db8::1]")
    field = received(hostname="mx.example.org", helo=helo, client_ip=client,
                     protocol=protocol_name(esmtp, tls, auth, smtputf8), message_id="6B0ACAAF",
                     when=1_000_000_000, tls=("TLSv1.3", cipher) if tls else None,
                     recipient=recipient)
    # never 8-bit but in an SMTPUTF8 message, and then only the "for" path's
    tcp_info = G.received_field(field, utf8=smtputf8)
    head = field.split(b"\tfor ")[0]
    assert head.isascii(), field
    if client not in ("localhost", ""):
        # TCP-info names the client's address (a broken literal would pass as
        # a comment: the grammar alone would not notice)
        ip = ipaddress.ip_address(client.partition("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        assert tcp_info == [f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip}]"], field
    else:
        # no address, no TCP-info; a literal the client gave as its name is
        # in the comment "(HELO [literal])", which the grammar can also read
        # as TCP-info (Domain "HELO", the literal): the client's own claim
        assert tcp_info in ([], [helo]), field


@pytest.mark.parametrize("helo", ["my_pc", "[127.0.0.1]", "a(b)c", "x\r\nX-Evil: 1", "\u2603"])
@pytest.mark.parametrize("client", ["192.0.2.1", "fe80::1%eth0", "::ffff:192.0.2.1", "localhost"])
def test_received_field_examples(helo, client):
    field = received(hostname="mx.example.org", helo=helo, client_ip=client, protocol="ESMTP",
                     message_id="I", when=0)
    G.received_field(field)
