"""Test doubles for the relay tests: a fake twisted.names resolver."""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error


class FakeResolver:
    """Answers from a table: ``{name: {"MX": [(pref, host)], "A": [...], "AAAA": [...]}}``.

    A name missing from the table is NXDOMAIN; a value that is an exception
    instance (for a name or one type) is raised instead."""

    def __init__(self, zone: dict) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: str, kind: str):
        self.queries.append((name, kind))
        entry = self.zone.get(name)
        if entry is None:
            return defer.fail(dns_error.DNSNameError(name))
        if isinstance(entry, Exception):
            return defer.fail(entry)
        value = entry.get(kind, [])
        if isinstance(value, Exception):
            return defer.fail(value)
        answers = []
        for item in value:
            if kind == "MX":
                payload = dns.Record_MX(item[0], item[1].encode())
                rtype = dns.MX
            elif kind == "A":
                payload, rtype = dns.Record_A(item), dns.A
            else:
                payload, rtype = dns.Record_AAAA(item), dns.AAAA
            answers.append(dns.RRHeader(name.encode(), rtype, dns.IN, 60, payload))
        return defer.succeed((answers, [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._lookup(name, "MX")

    def lookupAddress(self, name, timeout=None):
        return self._lookup(name, "A")

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup(name, "AAAA")
