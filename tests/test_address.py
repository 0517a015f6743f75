"""Address values, bare-name qualification, and peer IP normalisation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txmailhub.address import Address, AddressError, client_ip, parse_address


def test_domain_is_lowercased_local_part_kept() -> None:
    a = Address("Joe", "Example.ORG")
    assert (a.local, a.domain, str(a), a.key) == ("Joe", "example.org", "Joe@example.org",
                                                  "joe@example.org")
    assert a == Address("Joe", "example.org") and a != Address("joe", "example.org")


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
     ("a@", "empty domain"), ("a@b@c", "more than one @"), ("a\x00@x", "control")],
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
