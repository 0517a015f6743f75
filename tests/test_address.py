"""Address values, bare-name qualification, and peer IP normalisation."""

from __future__ import annotations

import ipaddress
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.address import (
    Address,
    AddressError,
    address_literal,
    ascii_domain,
    ascii_form,
    canonical_domain,
    canonical_local,
    client_ip,
    client_key,
    dns_name_problem,
    domain_problem,
    ipv6_literal,
    login_key,
    one_quoted_string,
    parse_address,
    quoted_end,
)


def test_domain_is_lowercased_local_part_kept() -> None:
    a = Address("Joe", "Example.ORG")
    assert (a.local, a.domain, str(a), a.key) == ("Joe", "example.org", "Joe@example.org",
                                                  "joe@example.org")
    assert a == Address("Joe", "example.org") and a != Address("joe", "example.org")


@pytest.mark.parametrize("domain", ["[ipv6:2001:db8::1]", "[IPv6:2001:DB8::1]",
                                    "[iPv6:2001:db8::1]"])
def test_an_ipv6_literal_keeps_its_tag_as_rfc_5321_writes_it(domain: str) -> None:
    # what notices, Received fields and logs show is "[IPv6:...]" (RFC 5321
    # 4.1.3), never the lower-cased "[ipv6:...]"; the tag is still compared
    # case-insensitively, and the lookup key (Maildir folder) is unchanged
    a = Address("bob", domain)
    assert (a.domain, str(a)) == ("[IPv6:2001:db8::1]", "bob@[IPv6:2001:db8::1]")
    assert a == Address("bob", "[IPV6:2001:db8::1]")
    assert a.key == "bob@[ipv6:2001:db8::1]"
    assert canonical_domain(domain) == "[ipv6:2001:db8::1]"
    assert parse_address(f"bob@{domain}") == a


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hollindg", Address("hollindg", "example.org")),
        ("Joe@Example.NET.", Address("Joe", "example.net")),
        ("  bill@microsoft.com ", Address("bill", "microsoft.com")),
        ('"a@b"@example.org', Address('"a@b"', "example.org")),
        ("Postmaster", Address("Postmaster", "example.org")),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert parse_address(text, "example.org") == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty address"), ("a b@x", "whitespace"), ("@x", "empty local part"),
     ("a@", "empty domain"), ("a@b@c", "more than one @"), ("a\x00@x", "control"),
     # the control characters the message names: ESC, DEL, a C1 control
     ("a\x1b[2J@x", "control"), ("a\x7f@x", "control"), ("a@x\x9b", "control")],
)
def test_parse_errors(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_address(text, "example.org")


def test_bare_name_needs_a_primary_domain() -> None:
    with pytest.raises(AddressError, match="has no domain"):
        parse_address("joe")


def test_postmaster_any_case() -> None:
    assert Address("PostMaster", "x.org").is_postmaster
    assert not Address("postmasters", "x.org").is_postmaster


@given(st.from_regex(r"[a-z0-9._+-]{1,20}", fullmatch=True),
       st.from_regex(r"[a-z0-9-]{1,10}(\.[a-z]{2,5}){1,2}", fullmatch=True))
def test_parse_round_trip(local: str, domain: str) -> None:
    a = parse_address(f"{local}@{domain.upper()}", "example.org")
    assert parse_address(str(a)) == a and a.domain == domain


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("mail.example.org", None),
        ("", None),
    ],
)
def test_client_ip(host: str, expected: str | None) -> None:
    ip = client_ip(host)
    assert ip == (None if expected is None else ipaddress.ip_address(expected))


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("example.org", "example.org"),
    ("Example.ORG.", "example.org"),
    ("MAIL.BOX.", "mail.box"),  # only the final dot goes
    ("xn--bcher-kva.example", "bücher.example"),  # the A-label of...
    ("XN--BCHER-KVA.example", "bücher.example"),
    ("BÜCHER.example", "bücher.example"),
    ("bu\u0308cher.example", "bücher.example"),  # decomposed (NFD)
    ("straße.example", "straße.example"),  # IDNA2008: ß is no "ss"
    ("xn--strae-oqa.example", "straße.example"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("xn--zz.example", "xn--zz.example"),  # no A-label: names itself
])
def test_one_spelling_per_domain(spelling: str, canonical: str) -> None:
    # RFC 5890 2.3.2.1: an A-label and its U-label are one name; a peer
    # without SMTPUTF8 can only send the A-label (RFC 6531 3.2)
    assert canonical_domain(spelling) == canonical
    assert Address("Bob", spelling).key == f"bob@{canonical}"


def test_composed_and_decomposed_local_parts_are_one_mailbox() -> None:
    nfc, nfd = "j\u00f6rg", "jo\u0308rg"
    assert nfc != nfd
    assert canonical_local(nfd) == canonical_local("J\u00d6RG") == nfc
    assert Address(nfd, "example.org").key == Address(nfc, "Example.org").key
    assert Address(nfd, "example.org").local == nfd  # the address keeps its spelling


@given(st.text(alphabet=st.characters(codec="utf-8", categories=("L", "M", "N")),
               min_size=1, max_size=12))
def test_canonical_forms_are_fixed_points(label: str) -> None:
    for domain in (f"{label}.example", f"{label.upper()}.example"):
        once = canonical_domain(domain)
        assert canonical_domain(once) == once
    once = canonical_local(label)
    assert canonical_local(once) == once


@pytest.mark.parametrize("local", ["\u0130\u0899", "\u0130\u0327", "X\u0130\u0316y"])
def test_a_capital_whose_lower_case_is_not_nfc_is_one_mailbox(local: str) -> None:
    # "\u0130".lower() is "i" + U+0307 (combining dot above, class 230);
    # a mark of a lower class after it must then come first (canonical
    # order), so the lower-cased text needs NFC again: otherwise the key
    # of the key is another folder name (hypothesis found U+0130 U+0899).
    # (Not U+0323: NFC composes it with the I into U+1ECA before the
    # lower-casing, which then gives NFC text; the cedilla has no such form)
    key = canonical_local(local)
    assert key == unicodedata.normalize("NFC", key)
    assert canonical_local(key) == key
    assert canonical_local(unicodedata.normalize("NFD", local)) == key


def test_an_ipv6_literal_has_no_zone_even_of_hex_digits():
    # RFC 5321 4.1.3's IPv6-addr has no "%zone"; ipaddress takes one of any
    # characters, hex digits too, and it names a local interface
    assert ipv6_literal("fe80::1") == ipaddress.IPv6Address("fe80::1")
    for bad in ("fe80::1%1", "fe80::1%a", "fe80::1%eth0"):
        with pytest.raises(ValueError):
            ipv6_literal(bad)


@pytest.mark.parametrize(
    ("literal", "one_spelling"),
    [
        # RFC 5321 4.1.3: Snum = 1*3DIGIT, a decimal value up to 255, so
        # leading zeros are valid (and decimal: "010" is ten, never eight)
        ("[192.000.002.001]", "[192.0.2.1]"),
        ("[010.0.0.1]", "[10.0.0.1]"),
        ("[IPv6:::ffff:192.000.002.001]", "[IPv6:::ffff:c000:201]"),
        ("[IPv6:1:2:3:4:5:6:010.0.0.1]", "[IPv6:1:2:3:4:5:6:a00:1]"),
    ],
)
def test_ipv4_literals_may_have_leading_zeros(literal: str, one_spelling: str) -> None:
    assert address_literal(literal) == one_spelling


@pytest.mark.parametrize(
    "bad", ["[0192.0.2.1]", "[256.0.0.1]", "[1.2.3]", "[1.2.3.4.5]", "[1..2.3]", "[+1.2.3.4]",
            "[1.2.3.\u0661]", "[IPv6:::1.2.3.0256]", "[IPv6:::1.2.3]"],
)
def test_ipv4_literals_are_still_four_snums(bad: str) -> None:
    with pytest.raises(ValueError):
        address_literal(bad)


@pytest.mark.parametrize("literal", ["[IPv6:192.0.2.1]", "[ipv6:192.0.2.1]", "[IPv6:127.1]",
                                     "[IPv6:192.000.002.001]"])
def test_an_ipv6_literal_holds_no_ipv4_address(literal: str) -> None:
    # RFC 5321 4.1.3: IPv6-full, IPv6-comp, IPv6v4-full and IPv6v4-comp all
    # hold IPv6 groups; an IPv4 address alone after the tag is none of them
    with pytest.raises(ValueError):
        address_literal(literal)
    assert address_literal("[IPv6:::192.0.2.1]") == "[IPv6:::c000:201]"


@pytest.mark.parametrize("name", ["192.0.2.1", "[192.0.2.10", "192.0.2.1]", "x192.0.2.1y",
                                  "[IPv6:2001:db8::10", "(IPv6:2001:db8::1)"])
def test_an_address_literal_needs_both_brackets(name: str) -> None:
    # RFC 5321 4.1.3: "[" address "]"; a missing bracket is no literal, not
    # the address that is left once a character at each end is cut off
    with pytest.raises(ValueError):
        address_literal(name)
    assert address_literal("[192.0.2.1]") == "[192.0.2.1]"


@pytest.mark.parametrize("host, key", [
    ("192.0.2.1", "192.0.2.1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack listener's IPv4 client
    ("[192.0.2.1]", "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("unix-peer", "unix-peer"),  # no address: the host names itself
])
def test_client_key_is_the_ipv4_address_or_the_ipv6_64(host: str, key: str) -> None:
    assert client_key(host) == key


def test_login_key_of_a_bare_name_is_that_name():
    # the users file keys a bare name by itself: two bare names stay two users
    assert login_key("Alice") == "alice"
    assert login_key("alice") != login_key("bob")
    assert login_key("Alice@Example.ORG") == "alice@example.org"


def test_login_key_reads_one_quoted_string_as_rcpt_gives_it():
    # the users file and UsersDB.qualify read '"q"' as q (RFC 5321 4.1.2):
    # so does the key an authzid is compared by (SMTP and POP3 AUTH PLAIN)
    assert login_key('"Alice"') == login_key("alice") == "alice"
    assert login_key('"Alice"@Example.ORG') == "alice@example.org"
    assert login_key('"a\\:b"@example.org') == '"a:b"@example.org'
    assert login_key('"a;"') == '"a;"'  # quotes it needs stay
    # "." and ".." are left as written, as the users file reads them
    # (``users.as_rcpt_names``): no Maildir folder, no quotes added
    assert login_key(".") == "." and login_key("..@Example.ORG") == "..@example.org"
    # no one quoted string: read as one, the user `user add '"a""b"'` writes
    assert login_key('"a""b"') == '"a\\"\\"b"'


@pytest.mark.parametrize("text, end", [
    ('"q"', 3), ('"q"@x', 3), ('""', 2), ('"a\\"b"c', 6), ('"a\\\\"b', 5),
    ('"', -1), ('"abc', -1), ('"a\\"', -1), ("", -1), ("q", -1), ('a"b"', -1),
])
def test_quoted_end_is_past_the_closing_quote_or_minus_one(text, end):
    # -1 for no quoted string at the start or one never closed, as the
    # docstring says: callers compare the index with a length
    assert quoted_end(text) == end
    assert one_quoted_string(text) is (end == len(text))


def test_login_key_reads_a_name_rcpt_gives_only_quoted_with_its_quotes():
    # a; is no dot-string: it exists only as "a;" (RFC 5321 4.1.2), the
    # user UsersDB.qualify takes a login as a; for -- an authzid a; names
    # the user who logged in as "a;"
    assert login_key("A;") == login_key('"a;"') == '"a;"'
    assert login_key("a;@Example.ORG") == '"a;"@example.org'
    assert login_key("a..b") == '"a..b"'
    assert login_key("a.b") == "a.b"


def test_ascii_domain_leaves_an_ascii_name_as_it_is():
    # only an internationalized name is mapped (to its A-labels)
    assert ascii_domain("Mail.Example.ORG") == "Mail.Example.ORG"
    assert ascii_domain("b\u00fccher.example") == "xn--bcher-kva.example"


def test_ascii_domain_keeps_one_final_dot():
    # the root's dot of a fully qualified name stays where it was
    assert ascii_domain("b\u00fccher.example.") == "xn--bcher-kva.example."
    assert ascii_domain("Example.ORG.") == "Example.ORG."


def test_a_dns_name_is_at_most_253_octets_written_out():
    # RFC 1035 2.3.4: 255 octets on the wire, 253 written out
    longest = ".".join(["x" * 63] * 3 + ["x" * 61])
    assert len(longest) == 253 and dns_name_problem(longest) is None
    assert dns_name_problem(longest + "x") == (
        "254 octets, over the 253 of a name in DNS (RFC 1035 2.3.4)")
    assert dns_name_problem("x" * 63 + ".example") is None
    assert dns_name_problem("x" * 64 + ".example") == (
        "a label of 64 octets, over the 63 of a label in DNS (RFC 1035 2.3.4)")


@pytest.mark.parametrize("text", ['"a@b@example.org', 'a@b"@example.org'])
def test_an_at_sign_in_the_local_part_needs_the_whole_part_quoted(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)
    assert parse_address('"a@b"@example.org').local == '"a@b"'


def test_a_domain_is_read_with_the_uts46_mapping():
    # docs/smtp.rst: IDNA2008 with the UTS 46 mapping: a full-width letter
    # and an ideographic full stop are the letter and the dot
    assert canonical_domain("\uff42\u00fccher\u3002example") == "b\u00fccher.example"


# --- ASCII labels beside U-labels: converted label by label ----------------------


@pytest.mark.parametrize(("u_form", "a_form"), [
    # the underscore leniency of the SMTP paths, and an ASCII label with
    # "--" in 3rd and 4th place that is no A-label (RFC 5890 2.3.1's
    # R-LDH label: IDNA2008 converts no such label, but it is plain ASCII
    # and DNS holds it), each beside a U-label
    ("my_host.b\u00fccher.test", "my_host.xn--bcher-kva.test"),
    ("ab--cd.b\u00fccher.test", "ab--cd.xn--bcher-kva.test"),
    ("_dmarc.b\u00fccher.test", "_dmarc.xn--bcher-kva.test"),
    ("b\u00fccher.my_host.ab--cd.test", "xn--bcher-kva.my_host.ab--cd.test"),
    ("My_Host.B\u00dcCHER.test", "my_host.xn--bcher-kva.test"),
])
def test_ascii_labels_beside_a_u_label_keep_both_spellings_one_domain(u_form, a_form):
    canonical = u_form.lower()
    assert canonical_domain(u_form) == canonical_domain(a_form) == canonical
    assert canonical_domain(a_form.upper()) == canonical
    assert Address("u", u_form).key == Address("u", a_form).key
    # the relay's ASCII form: for DNS and for a peer without SMTPUTF8
    assert ascii_domain(u_form) == a_form
    assert ascii_form(Address("u", u_form)) == f"u@{a_form}"


@pytest.mark.parametrize("domain", [
    # what was no IDN before is none now: kept, not half-converted
    "xn--zz.b\u00fccher.test",  # an xn-- label that is no A-label
    "-x.b\u00fccher.test", "x-.b\u00fccher.test",  # no LDH label
    "a..b\u00fccher.test",  # an empty label
    "x" * 64 + ".b\u00fccher.test",  # a label over 63 octets
    "\u2603.b\u00fccher.test",  # DISALLOWED in IDNA2008
    "b\u00fc_cher.test",  # an underscore in a U-label
])
def test_a_name_with_no_a_label_form_is_kept(domain):
    assert ascii_domain(domain) == domain
    assert ascii_form(Address("u", domain)) is None
    assert canonical_domain(domain) == domain


def test_an_all_ascii_domain_never_goes_through_idna(monkeypatch):
    import idna

    def boom(*args, **kwargs):
        raise AssertionError("idna was called")

    for name in ("encode", "decode", "alabel", "ulabel", "uts46_remap"):
        monkeypatch.setattr(idna, name, boom)
    canonical_domain.cache_clear()
    try:
        assert canonical_domain("My_Host.AB--CD.Example.") == "my_host.ab--cd.example"
        assert ascii_domain("My_Host.Example") == "My_Host.Example"
        assert ascii_form(Address("Joe", "my_host.example")) == "Joe@my_host.example"
    finally:
        canonical_domain.cache_clear()


# --- domain_problem: the one rule of SMTP paths and configured domains ------------


@pytest.mark.parametrize("domain", [
    "example.org", "Example.ORG", "my_host.example", "_dmarc.example", "ab--cd.example",
    "b\u00fccher.example", "B\u00dcCHER.example", "xn--bcher-kva.example",
    "XN--BCHER-KVA.example",
    # ASCII labels IDNA2008 would not convert, beside a U-label or an A-label
    "ab--cd.b\u00fccher.test", "ab--cd.xn--bcher-kva.test", "my_host.b\u00fccher.test",
    "x" * 63 + ".b\u00fccher.test",
])
def test_domain_problem_takes_labels_one_by_one(domain):
    assert domain_problem(domain) is None
    # and the other spelling of the same domain too
    assert domain_problem(ascii_domain(domain)) is None
    assert domain_problem(canonical_domain(domain)) is None


@pytest.mark.parametrize(("domain", "why"), [
    # RFC 5890 2.3.2.1, RFC 5891 5.3: an xn-- label is an A-label or
    # nothing, whether the rest of the name is ASCII or not
    ("xn--zz.test", "the label 'xn--zz' is no A-label"),
    ("XN--ZZ.test", "the label 'XN--ZZ' is no A-label"),
    ("mail.xn--zz.test", "the label 'xn--zz' is no A-label"),
    ("xn---bcher-kva.test", "the label 'xn---bcher-kva' is no A-label"),  # non-canonical
    ("xn--n3h.test", "the label 'xn--n3h' is no A-label"),  # a snowman: DISALLOWED
    ("xn--.test", "the label 'xn--' is not letters"),  # an LDH label ends in no hyphen
    ("xn--zz.b\u00fccher.test", "the label 'xn--zz' is no A-label"),
    ("a..b", "an empty label"),
    ("-x.test", "the label '-x' is not letters"),
    ("x" * 64 + ".test", "is over 63 characters"),
    ("\u2603.test", "is no U-label"),
    ("b\u00fc_cher.test", "is no U-label"),
    ("\u00fc" * 58 + ".test", "is no U-label"),  # its A-label would be 64 octets
    ("\uff42\u00fccher\u3002example", "is no U-label"),  # a dot only after mapping
    (".".join(["d" * 63] * 4) + ".x", "1 to 255 characters"),
    ("b\u00fccher." + ".".join(["d" * 63] * 3) + "." + "d" * 48, "over 253"),
])
def test_domain_problem_says_why(domain, why):
    problem = domain_problem(domain)
    assert problem is not None and why in problem, problem


def test_domain_problem_takes_a_length_limit():
    longest = ".".join(["x" * 63] * 3 + ["x" * 61])  # 253
    assert domain_problem(longest, 253) is None
    assert domain_problem(longest + "x") is None  # RFC 5321's 255
    assert "1 to 253 characters" in domain_problem(longest + "x", 253)


_labels = st.sampled_from([
    "example", "my_host", "_dmarc", "ab--cd", "x" * 63, "b\u00fccher", "B\u00dcCHER",
    "xn--bcher-kva", "XN--BCHER-KVA", "stra\u00dfe", "\u4e2d\u6587", "\u00fc" * 57,
    "xn--zz", "xn---bcher-kva", "\u2603", "-x", "\u00fc" * 58, "a\u3002b",
])


@given(st.lists(_labels, min_size=1, max_size=5).map(".".join))
def test_a_domain_taken_is_taken_in_every_spelling_and_is_one_domain(domain):
    # what SMTP takes the configuration can list and vice versa (one
    # routine); so a configured domain must match mail addressed to it in
    # its U-label or its A-label form, which canonical_domain decides
    if domain_problem(domain) is not None:
        return
    a_form = ascii_domain(domain)
    u_form = canonical_domain(domain)
    assert a_form.isascii(), domain
    for spelling in (a_form, u_form, a_form.upper(), domain.lower()):
        assert domain_problem(spelling) is None, (domain, spelling)
        assert canonical_domain(spelling) == u_form, (domain, spelling)
        assert ascii_domain(canonical_domain(spelling)) == a_form.lower(), (domain, spelling)


def test_load_codecs_imports_both_codecs_idna_looks_up(monkeypatch) -> None:
    # imported while the standard library is in reach (before twistd's
    # --uid): "punycode" for A-labels, "idna" for dns_name_problem
    import sys

    from txmailhub.address import load_codecs

    monkeypatch.delitem(sys.modules, "encodings.idna", raising=False)
    monkeypatch.delitem(sys.modules, "encodings.punycode", raising=False)
    load_codecs()
    assert "encodings.idna" in sys.modules
    assert "encodings.punycode" in sys.modules


def test_a_bare_quoted_local_part_with_an_at_sign_is_at_the_primary_domain() -> None:
    # the '@' of '"a@b"' is inside the quotes (RFC 5321 4.1.2): a bare
    # local part, as RCPT TO:<"a@b"> reads it, not '"a' at the domain 'b"'
    # -- a login (POP3 USER, SMTP AUTH) and `mailhub user` name the user so
    from txmailhub.address import login_key, parse_address
    from txmailhub.smtp._parse import parse_rcpt

    rcpt = parse_rcpt('TO:<"a@b">', "example.org")[0]
    assert parse_address('"a@b"', "example.org") == rcpt == Address('"a@b"', "example.org")
    assert login_key('"A@b"') == '"a@b"'
    assert login_key('"a@b"@example.org') == '"a@b"@example.org'
