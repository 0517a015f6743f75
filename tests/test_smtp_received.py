"""txmailhub.smtp.received: the Received and Return-Path trace fields."""

from __future__ import annotations

import re
import shutil
import subprocess

import abnf_smtp as G
import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.address import Address
from txmailhub.smtp.received import (
    header_separator,
    protocol_name,
    received,
    return_path,
    tls_cipher_clause_name,
)


def test_protocol_names_rfc3848():
    assert protocol_name(False, False, False) == "SMTP"
    assert protocol_name(True, False, False) == "ESMTP"
    assert protocol_name(True, True, False) == "ESMTPS"
    assert protocol_name(True, False, True) == "ESMTPA"
    assert protocol_name(True, True, True) == "ESMTPSA"
    assert protocol_name(True, False, False, smtputf8=True) == "UTF8SMTP"
    assert protocol_name(True, True, False, smtputf8=True) == "UTF8SMTPS"
    assert protocol_name(True, False, True, smtputf8=True) == "UTF8SMTPA"
    assert protocol_name(True, True, True, smtputf8=True) == "UTF8SMTPSA"


def test_received_field():
    field = received(hostname="mx.example.org", helo="client.test", client_ip="192.0.2.7",
                     protocol="ESMTPS", message_id="ABC1", when=0,
                     tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                     recipient=Address("alice", "example.org"))
    assert field == (
        b"Received: from client.test ([192.0.2.7])\n"
        b"\tby mx.example.org (txmailhub) with ESMTPS (TLSv1.3 cipher TLS_AES_256_GCM_SHA384)\n"
        b"\tid ABC1\n"
        b"\tfor <alice@example.org>\n"
        b"\ttls TLS_AES_256_GCM_SHA384; Thu, 01 Jan 1970 00:00:00 +0000\n"
    )
    G.received_field(field)


@pytest.mark.parametrize("tls, clause", [
    # TLS 1.3: OpenSSL names its suites as the IANA registry does
    (("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"), "tls TLS_CHACHA20_POLY1305_SHA256"),
    # TLS 1.2: OpenSSL's own name, written as the registry's (RFC 8314 4.3
    # takes the registry's name; "ECDHE-RSA-..." is no tls-cipher)
    (("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384"), "tls TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    (("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
     "tls TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    # an OpenSSL name the hub does not map: in the comment only
    (("TLSv1.2", "AES128-SHA"), None),
    # outside that clause's grammar: in the comment only
    (("TLSv1.2", "ECDHE RSA"), None),
    (("TLSv1.2", "-AES"), None),
    (("TLSv1.2", "AES"), None),
    (("TLSv1.3", "TLS_" + "A" * 80), None),
])
@pytest.mark.parametrize("recipient", [None, Address("alice", "example.org")])
def test_the_cipher_suite_is_in_rfc_8314_tls_clause(tls, clause, recipient):
    # RFC 8314 4.3: a Received field of mail that came over TLS records the
    # cipher suite in a "tls" clause (an Additional-Registered-Clause, RFC
    # 5321 4.4: after "id" and "for").  It was only in the comment after
    # "with", which the grammar leaves to the reader to make sense of
    field = received(hostname="mx.example.org", helo="client.test", client_ip="192.0.2.7",
                     protocol="ESMTPSA", message_id="ABC1", when=0, tls=tls,
                     recipient=recipient)
    lines = field.decode().split("\n")
    assert lines[1].endswith(f"with ESMTPSA ({tls[0]} cipher {tls[1].replace(' ', '?')[:80]})")
    last = lines[-2]
    if clause is None:
        assert "\ttls " not in field.decode()
    else:
        assert last.startswith(f"\t{clause}; ")
        assert field.decode().count(clause) == 1
    assert last.endswith("; Thu, 01 Jan 1970 00:00:00 +0000")
    G.received_field(field)
    # no "tls" clause without TLS
    plain = received(hostname="mx.example.org", helo="client.test", client_ip="192.0.2.7",
                     protocol="ESMTP", message_id="ABC1", when=0, recipient=recipient)
    assert b"tls" not in plain.lower()


def test_an_ipv6_literal_recipient_is_written_with_its_tag():
    # RFC 5321 4.1.3 spells the tag "IPv6"; a recipient given as
    # "[ipv6:...]" (the tag is case-insensitive) is written so too
    field = received(hostname="mx.example.org", helo="client.test", client_ip="192.0.2.7",
                     protocol="ESMTP", message_id="ABC1", when=0,
                     recipient=Address("bob", "[ipv6:2001:db8::9]"))
    assert b"\tfor <bob@[IPv6:2001:db8::9]>; " in field


def test_the_date_cache_stays_small():
    # one formatted date per second, for a server that runs for months
    from txmailhub.smtp import received as module

    for second in range(1000, 1100):
        field = received(hostname="mx", helo="c", client_ip="192.0.2.1", protocol="SMTP",
                         message_id="D", when=second + 0.5)
        assert field.endswith(module.rfc5322_date(second).encode() + b"\n")
    assert len(module._dates) <= 9


def test_received_ipv6_and_hostile_helo():
    field = received(hostname="mx", helo="evil\r\nX-Injected: yes (", client_ip="2001:db8::1",
                     protocol="SMTP", message_id="I", when=86400)
    lines = field.split(b"\n")
    # not a Domain: the address stands after "from" (RFC 5321 4.4), the
    # name follows in a comment of safe characters
    assert lines[:2] == [b"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])",
                         b"\t(HELO evil??X-Injected:?yes??)"]
    assert b"for <" not in field and field.endswith(b"; Fri, 02 Jan 1970 00:00:00 +0000\n")
    assert len(lines) == 5  # four folded lines and the final LF


def test_a_client_without_an_ip_address_gets_no_address_literal():
    # a unix: listener's client (the adapter names it "localhost"): RFC
    # 5321 4.4's TCP-info is an address literal, "[localhost]" is none
    for helo, first in (("client.test", [b"Received: from client.test"]),
                        ("<evil>", [b"Received: from localhost", b"\t(HELO ?evil?)"])):
        field = received(hostname="mx", helo=helo, client_ip="localhost", protocol="ESMTP",
                         message_id="I", when=0)
        lines = field.split(b"\n")
        assert lines[:len(first)] == first, field
        assert lines[len(first)].startswith(b"\tby mx (txmailhub) with ESMTP")
        assert b"[" not in field


def test_an_address_literal_helo_without_a_client_address_is_a_comment():
    # RFC 5321 4.4: Extended-Domain is a Domain, or an address literal
    # followed by "(" TCP-info ")"; a unix: client has no TCP-info to give
    # (smtplib and many others say "EHLO [127.0.0.1]" on a host without a
    # name)
    for helo in ("[127.0.0.1]", "[IPv6:::1]"):
        field = received(hostname="mx", helo=helo, client_ip="localhost", protocol="ESMTP",
                         message_id="I", when=0)
        assert field.startswith(b"Received: from localhost\n\t(HELO " + helo.encode() + b")\n"
                                b"\tby mx (txmailhub)"), field


@pytest.mark.parametrize(
    ("client", "tcp_info"),
    [
        # the zone of a link-local peer names our interface, and "%" is no
        # part of an RFC 5321 4.1.3 literal ("[IPv6:fe80::1?eth0]" was written)
        ("fe80::1%eth0", b"[IPv6:fe80::1]"),
        # an IPv4 client on a dual-stack listener is the IPv4 address, as
        # everywhere else in the hub (address.client_ip)
        ("::ffff:192.0.2.7", b"[192.0.2.7]"),
        ("2001:DB8:0:0::7", b"[IPv6:2001:db8::7]"),
    ],
)
def test_the_tcp_info_is_the_clients_address_as_a_literal(client, tcp_info):
    field = received(hostname="mx", helo="client.test", client_ip=client, protocol="ESMTP",
                     message_id="I", when=0)
    assert field.startswith(b"Received: from client.test (" + tcp_info + b")\n"), field


@pytest.mark.parametrize(
    ("helo", "first"),
    [
        ("client.test", b"from client.test ([192.0.2.7])"),
        # an underscore is no Domain character: the address parser takes one,
        # but what we write must be the grammar
        ("my_pc", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO my_pc)"),
        ("[192.0.2.9]", b"from [192.0.2.9] ([192.0.2.7])"),
        ("[IPv6:2001:db8::9]", b"from [IPv6:2001:db8::9] ([192.0.2.7])"),
        ("<evil>", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO ?evil?)"),
        ("a/b", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO a?b)"),
        ("-lead.example", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO -lead.example)"),
        ("dot..example", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO dot..example)"),
        ("x" * 64 + ".example", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO " + b"x" * 64
         + b".example)"),
        ("[192.0.2.300]", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO [192.0.2.300])"),
        ("[IPv6:fe80::1%eth0]", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO [IPv6:fe80::1?eth0])"),
        ("[tag:x]", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO [tag:x])"),
        ("[IPv6:1:2:3:4:5:6:7::]",  # 7 groups beside "::": not RFC 5321 4.1.3
         b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO [IPv6:1:2:3:4:5:6:7::])"),
        # RFC 5321 4.1.2 Domain: labels of up to 63 characters, no hyphen at
        # either end, no root's dot; at most 255 characters in all
        ("x" * 63 + ".example", b"from " + b"x" * 63 + b".example ([192.0.2.7])"),
        ("trail-.example", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO trail-.example)"),
        ("client.example.", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO client.example.)"),
        ("_x.example", b"from [192.0.2.7] ([192.0.2.7])\n\t(HELO _x.example)"),
        # RFC 5234 2.3: the tag is case-insensitive like every ABNF string
        ("[ipv6:2001:db8::9]", b"from [ipv6:2001:db8::9] ([192.0.2.7])"),
    ],
)
def test_the_from_clause_is_rfc_5321_grammar(helo, first):
    # From-domain is a Domain, or an address literal followed by TCP-info;
    # whatever else a client says in HELO goes into a comment (CFWS may
    # stand before "by")
    field = received(hostname="mx", helo=helo, client_ip="192.0.2.7", protocol="ESMTP",
                     message_id="I", when=0)
    assert field.startswith(b"Received: " + first + b"\n\tby mx (txmailhub)")


def test_an_idn_helo_name_is_traced_as_its_a_label():
    # not "b?cher.example": the A-label is the name in ASCII, readable in
    # any message (the field is the same whatever the transaction)
    field = received(hostname="mx", helo="BÜCHER.example", client_ip="192.0.2.7",
                     protocol="UTF8SMTP", message_id="I", when=0)
    assert field.startswith(b"Received: from xn--bcher-kva.example ([192.0.2.7])\n")
    field = received(hostname="mx", helo="bad_ü.example", client_ip="192.0.2.7",
                     protocol="UTF8SMTP", message_id="I", when=0)
    assert field.startswith(b"Received: from [192.0.2.7] ([192.0.2.7])\n\t(HELO bad_?.example)\n")


def test_return_path():
    assert return_path(None) == b"Return-Path: <>\n"
    assert return_path(Address("bill", "microsoft.com")) == b"Return-Path: <bill@microsoft.com>\n"


@pytest.mark.parametrize(
    ("data", "separator"),
    [
        (b"Subject: hi\n\nbody\n", b""),
        (b"X-Odd-Name_1: v\n", b""),
        (b"Subject : obsolete spacing\n", b""),
        (b"\nbody right away\n", b""),
        (b"", b""),
        (b"Hi Dave - What is buffer overflow?\n", b"\n"),
        (b"no colon at all\n", b"\n"),
        (b": empty name\n", b"\n"),
        (b":x: a colon is no field name\n", b"\n"),
        (b" folded: start\n", b"\n"),
        (b"From sender@example.org Mon Jan 1\n", b"\n"),
    ],
)
def test_header_separator(data: bytes, separator: bytes) -> None:
    assert header_separator(data) == separator


def test_hop_counter_counts_received_fields_of_the_header_section_only():
    from txmailhub.smtp.received import HopCounter

    c = HopCounter()
    assert c.feed(b"Received: a\n\tfolded\nRECEIVED : b\n") == 2
    assert c.feed(b"X-Received: no\nreceived:c\n") == 3
    assert c.feed(b"\nReceived: in the body\n") == 3 and c.done
    c = HopCounter()
    assert c.feed(b"Received: a\n\nReceived: body\n") == 1 and c.done
    assert c.feed(b"Received: more body\n") == 1


def test_hop_counter_sees_no_header_section_in_data_that_starts_indented():
    """A first line that is a continuation line (or text) starts no header
    section: the hub stores such data as the body (``header_separator``,
    ``ReturnPathFilter``, ``MissingFields``), so none of it is a hop."""
    from txmailhub.smtp.received import HopCounter

    for first in (b" indented\n", b"\tindented\n", b"text\n"):
        c = HopCounter()
        assert c.feed(first + b"Received: a\n") == 0 and c.done, first
        assert c.feed(b"Received: b\n") == 0
    c = HopCounter()  # the continuation line of a field is no such start
    assert c.feed(b"Received: a\n") == 1
    assert c.feed(b" folded\nReceived: b\n") == 2


def _filtered(pieces: list[bytes]) -> bytes:
    from txmailhub.smtp.received import ReturnPathFilter

    f = ReturnPathFilter()
    return b"".join(f.feed(p) for p in pieces)


def test_the_clients_return_path_fields_are_dropped_from_the_header_only():
    data = (b"Return-Path: <forged@elsewhere.test>\nSubject: hi\nreturn-path :\n"
            b" <folded@x.test>\nX-Return-Path: kept\n\nReturn-Path: body text\n")
    assert _filtered([data]) == (b"Subject: hi\nX-Return-Path: kept\n\n"
                                 b"Return-Path: body text\n")
    # a folded field cut between two pieces
    assert _filtered([b"Subject: a\nReturn-Path:\n", b" <x@y.test>\n\tmore\nTo: b\n\nbody\n"]) \
        == b"Subject: a\nTo: b\n\nbody\n"
    # data that starts with text has no header section: nothing is touched
    assert _filtered([b"Hi Dave\nReturn-Path: x\n\n"]) == b"Hi Dave\nReturn-Path: x\n\n"
    assert _filtered([b"Subject: a\n", b"\n", b"Return-Path: body\n"]) == (
        b"Subject: a\n\nReturn-Path: body\n")
    # text sent without the empty line ends the header section: what
    # follows is the body, as every reader takes it, and stays
    assert _filtered([b"Subject: x\nHello\nReturn-Path: <a@b>\n"]) == (
        b"Subject: x\nHello\nReturn-Path: <a@b>\n")
    # ... wherever the pieces are cut: a piece that starts with that text
    # is body from its first line on, and so is every piece after it
    for pieces in ([b"Subject: x\n", b"Hello\n", b"Return-Path: <a@b>\n"],
                   [b"Subject: x\n", b"Hello\nReturn-Path: <a@b>\n"]):
        assert _filtered(pieces) == b"Subject: x\nHello\nReturn-Path: <a@b>\n", pieces
    # continuation lines that come one piece at a time: all of them go, or
    # the last would fold itself into the field before the Return-Path
    assert _filtered([b"Subject: a\nReturn-Path:\n", b" <x@y.test>\n", b"\tmore\n",
                      b"To: b\n\nbody\n"]) == b"Subject: a\nTo: b\n\nbody\n"


@pytest.mark.parametrize("pieces", [
    [b"Return-Path: <x@y.test>\n", b"Subject: a\n", b" folded\n", b"\nbody\n"],
    [b"Return-Path: <x@y.test>\nSubject: a\n", b" folded\n\nbody\n"],
    [b"Return-Path: <x@y.test>\n", b" more\nSubject: a\n", b" folded\n\nbody\n"],
])
def test_only_the_dropped_fields_continuation_lines_go_with_it(pieces):
    # a folded line that starts a piece belongs to the field before it:
    # dropped with a Return-Path, kept with any other field
    assert _filtered(pieces) == b"Subject: a\n folded\n\nbody\n"


def test_the_trace_date_is_utc_whatever_the_local_zone(monkeypatch):
    # docs/smtp.rst: the date is in UTC (+0000), on a host in any zone
    import time

    from txmailhub.smtp.received import rfc5322_date

    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        assert rfc5322_date(0) == "Thu, 01 Jan 1970 00:00:00 +0000"
    finally:
        monkeypatch.undo()
        time.tzset()


_field_lines = st.sampled_from([
    b"Return-Path: <a@b.test>\n", b"RETURN-PATH:<>\n", b"Subject: x\n", b" folded\n",
    b"Received: from y\n", b"\n", b"text\n", b"Return-Path:\n",
])


@given(st.lists(_field_lines, max_size=12), st.lists(st.integers(0, 12), max_size=4))
def test_the_return_path_filter_does_not_depend_on_the_pieces(lines, cuts):
    # pieces are whole lines, cut anywhere between them
    whole = _filtered([b"".join(lines)])
    points = sorted({c % (len(lines) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(lines)]:
        pieces.append(b"".join(lines[last:p]))
        last = p
    assert _filtered(pieces) == whole
    if lines and lines[0][:1] not in (b" ", b"t", b"\n"):  # it starts with a field
        # the header section: fields and their continuation lines, up to the
        # empty line or the first line that is no field (text sent without
        # the empty line is the body, and the body is not touched)
        kept = whole.splitlines(keepends=True)
        n = 0
        while n < len(kept) and (kept[n][:1] in b" \t" or re.match(rb"[!-9;-~]+[ \t]*:", kept[n])):
            n += 1
        assert b"return-path" not in b"".join(kept[:n]).lower()
        assert b"".join(kept[n:]) == b"".join(lines[_head_length(lines):])


def _head_length(lines: list[bytes]) -> int:
    n = 0
    while n < len(lines) and (lines[n][:1] in b" \t" or re.match(rb"[!-9;-~]+[ \t]*:", lines[n])):
        n += 1
    return n


def test_a_helo_name_of_up_to_255_characters_is_a_domain():
    # RFC 5321 4.5.3.1.2: a domain is at most 255 octets
    name = ".".join(["a" * 63] * 4)[:255]
    assert len(name) == 255
    field = received(hostname="mx", helo=name, client_ip="192.0.2.7", protocol="ESMTP",
                     message_id="I", when=0)
    assert field.startswith(f"Received: from {name} ([192.0.2.7])\n".encode())
    longer = name[:-1] + ".b"
    assert len(longer) == 256
    field = received(hostname="mx", helo=longer, client_ip="192.0.2.7", protocol="ESMTP",
                     message_id="I", when=0)
    assert field.startswith(b"Received: from [192.0.2.7] ([192.0.2.7])\n\t(HELO "), field


def test_a_long_helo_is_mapped_whole_before_it_is_judged():
    # IDNA drops soft hyphens: cut to 255 first, "mail" + 251 of them +
    # ".example.org" would have become the valid-looking "mail"; mapped
    # whole it is mail.example.org, what the client really sent
    field = received(hostname="mx", helo="mail" + "\u00ad" * 251 + ".example.org",
                     client_ip="192.0.2.7", protocol="UTF8SMTP", message_id="I", when=0)
    assert field.startswith(b"Received: from mail.example.org ([192.0.2.7])\n"), field


@pytest.mark.parametrize("hostname, by", [
    ("mx.example.org.", b"\tby mx.example.org (txmailhub) with ESMTP\n"),
    ("[192.0.2.1]", b"\tby [192.0.2.1] ([192.0.2.1]) (txmailhub) with ESMTP\n"),
    ("[IPv6:2001:db8::1]",
     b"\tby [IPv6:2001:db8::1] ([IPv6:2001:db8::1]) (txmailhub) with ESMTP\n"),
    # the configuration takes a literal with a final dot too (it judges the
    # name without it): the literal is written without it
    ("[192.0.2.1].", b"\tby [192.0.2.1] ([192.0.2.1]) (txmailhub) with ESMTP\n"),
])
def test_the_by_clause_is_rfc_5321_grammar_for_every_hub_hostname(hostname, by):
    # [hub] hostname may end in the root's dot or be an address literal.
    # RFC 5321 4.4 By-domain is an Extended-Domain: a Domain (no final dot,
    # 4.1.2), or an address literal only with "(" TCP-info ")" after it
    field = received(hostname=hostname, helo="client.test", client_ip="192.0.2.7",
                     protocol="ESMTP", message_id="ABC1", when=0)
    assert by in field
    G.received_field(field)


def test_every_tls_1_2_suite_the_servers_accept_has_its_registry_name():
    # the tls clause's names for TLS 1.2 come from a table: it must cover
    # every suite txmailhub.tls.CIPHERS lets a client pick, with the name
    # OpenSSL itself gives as the standard one
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl program to ask for the standard names")
    from txmailhub.tls import CIPHERS
    listed = subprocess.run([openssl, "ciphers", "-tls1_2", "-stdname", CIPHERS],
                            capture_output=True, text=True, check=True).stdout
    pairs = [line.split()[:3] for line in listed.splitlines() if "TLSv1.2" in line]
    assert pairs, listed
    for standard, dash, own in pairs:
        assert dash == "-", listed
        if "PSK" in own:
            continue  # the hub's servers take no pre-shared keys
        assert tls_cipher_clause_name(own) == standard, own
