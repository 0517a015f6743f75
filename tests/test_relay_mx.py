"""MX resolution against a fake resolver."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import error as dns_error
from zope.interface.verify import verifyObject

from tests.relay_fakes import FakeResolver
from txmailhub.interfaces import IMXResolver
from txmailhub.relay.mx import (
    MailLoop,
    MXHost,
    MXResolver,
    NoSuchDomain,
    NullMX,
    TemporaryDNSError,
    make_resolver,
    parse_literal,
)

ZONE = {
    "example.net": {"MX": [(20, "mx2.example.net"), (10, "mx1.example.net")]},
    "mx1.example.net": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.example.net": {"A": ["192.0.2.2"]},
    "implicit.test": {"A": ["192.0.2.9"], "AAAA": ["2001:db8::9"]},
    "empty.test": {},
    "null.test": {"MX": [(0, "")]},
    "broken.test": {"MX": dns_error.DNSServerError("x")},
    "slow.test": {"MX": dns_error.DNSQueryTimeoutError("x")},
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (10, "c.equal.test"),
                          (5, "first.equal.test")]},
    "a.equal.test": {"A": ["192.0.2.11"]},
    "b.equal.test": {"A": ["192.0.2.12"]},
    "c.equal.test": {"A": ["192.0.2.13"]},
    "first.equal.test": {"A": ["192.0.2.10"]},
    "loop.test": {"MX": [(10, "mail.hub.test")]},
    "mail.hub.test": {"A": ["127.0.0.1"]},
    "backup.test": {"MX": [(10, "primary.backup.test"), (20, "mail.hub.test"),
                           (30, "tertiary.backup.test")]},
    "primary.backup.test": {"A": ["192.0.2.30"]},
    "tertiary.backup.test": {"A": ["192.0.2.31"]},
    "byaddr.test": {"MX": [(10, "other-name.test")]},
    "other-name.test": {"A": ["127.0.0.1"]},
    "dangling.test": {"MX": [(10, "nowhere.test")]},
    "flaky.test": {"MX": [(10, "flakyhost.test")]},
    "flakyhost.test": {"A": dns_error.DNSServerError("x"), "AAAA": dns_error.DNSServerError("x")},
}


def resolver(listening=None, port=25, rng=None, is_local=lambda a: a == "127.0.0.1", clock=None):
    return MXResolver(FakeResolver(ZONE), clock or Clock(), "mail.hub.test",
                      listening=listening, port=port, rng=rng or random.Random(1),
                      is_local_address=is_local)


def result(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    return out[0]


def error_of(d, kind):
    f = result(d)
    assert hasattr(f, "check") and f.check(kind), f
    return f.value


def test_provides_interface():
    assert verifyObject(IMXResolver, resolver())


def test_sorted_by_preference_with_addresses_ipv6_first():
    hosts = result(resolver().resolve("example.net"))
    assert hosts == [
        MXHost("mx1.example.net", 10, ("2001:db8::1", "192.0.2.1")),
        MXHost("mx2.example.net", 20, ("192.0.2.2",)),
    ]


def test_domain_is_case_insensitive_and_trailing_dot():
    assert [h.name for h in result(resolver().resolve("Example.NET."))] == [
        "mx1.example.net", "mx2.example.net"]


def test_equal_preferences_shuffled_with_injected_random():
    orders = set()
    for seed in range(20):
        hosts = result(resolver(rng=random.Random(seed)).resolve("equal.test"))
        assert hosts[0].name == "first.equal.test"
        assert sorted(h.name for h in hosts[1:]) == ["a.equal.test", "b.equal.test",
                                                     "c.equal.test"]
        orders.add(tuple(h.name for h in hosts))
    assert len(orders) > 1  # not always the same order


def test_implicit_mx():
    hosts = result(resolver().resolve("implicit.test"))
    assert hosts == [MXHost("implicit.test", 0, ("2001:db8::9", "192.0.2.9"))]


def test_no_mx_no_address_is_permanent():
    e = error_of(resolver().resolve("empty.test"), NoSuchDomain)
    assert e.permanent and "no MX" in e.reason


def test_null_mx():
    e = error_of(resolver().resolve("null.test"), NullMX)
    assert e.permanent and "RFC 7505" in e.reason


def test_nxdomain_is_permanent():
    e = error_of(resolver().resolve("nonexistent.test"), NoSuchDomain)
    assert e.permanent and "NXDOMAIN" in e.reason


@pytest.mark.parametrize("domain, word", [("broken.test", "SERVFAIL"), ("slow.test", "timeout")])
def test_servfail_and_timeout_are_temporary(domain, word):
    e = error_of(resolver().resolve(domain), TemporaryDNSError)
    assert not e.permanent and word in e.reason


def test_mx_host_address_failure_is_temporary():
    error_of(resolver().resolve("flaky.test"), TemporaryDNSError)


def test_mx_host_without_addresses_is_permanent():
    error_of(resolver().resolve("dangling.test"), NoSuchDomain)


def test_address_literals():
    r = resolver()
    assert result(r.resolve("[192.0.2.7]")) == [MXHost("[192.0.2.7]", 0, ("192.0.2.7",))]
    assert result(r.resolve("[IPv6:2001:DB8::7]")) == [
        MXHost("[ipv6:2001:db8::7]", 0, ("2001:db8::7",))]
    error_of(r.resolve("[300.1.1.1]"), NoSuchDomain)
    assert r.resolver.queries == []
    assert parse_literal("example.org") is None


def test_loop_by_hostname():
    e = error_of(resolver().resolve("loop.test"), MailLoop)
    assert e.permanent and "loops back to me" in e.reason and "mail.hub.test" in e.reason


def test_backup_mx_uses_only_more_preferred_hosts():
    hosts = result(resolver().resolve("backup.test"))
    assert [h.name for h in hosts] == ["primary.backup.test"]


def test_loop_by_listening_address_and_port():
    # 127.0.0.1 is an ordinary destination unless we listen there on the relay port
    hosts = result(resolver(listening=[("127.0.0.1", 2525)], port=25).resolve("byaddr.test"))
    assert hosts[0].addresses == ("127.0.0.1",)
    error_of(resolver(listening=[("127.0.0.1", 25)], port=25).resolve("byaddr.test"), MailLoop)


def test_loop_by_wildcard_bind():
    error_of(resolver(listening=[("0.0.0.0", 25)]).resolve("byaddr.test"), MailLoop)
    error_of(resolver(listening=[("::", 25)]).resolve("[127.0.0.1]"), MailLoop)
    # a wildcard bind does not make a foreign address ours
    assert result(resolver(listening=[("0.0.0.0", 25)]).resolve("[192.0.2.5]"))


def test_literal_loop():
    error_of(resolver(listening=[("127.0.0.1", 25)]).resolve("[127.0.0.1]"), MailLoop)


def test_failed_host_tried_last_for_a_while():
    clock = Clock()
    r = resolver(clock=clock)
    r.health.failed("mx1.example.net")
    assert [h.name for h in result(r.resolve("example.net"))] == [
        "mx2.example.net", "mx1.example.net"]
    clock.advance(601)
    assert [h.name for h in result(r.resolve("example.net"))] == [
        "mx1.example.net", "mx2.example.net"]
    r.health.failed("mx1.example.net")
    r.health.succeeded("mx1.example.net")
    assert result(r.resolve("example.net"))[0].name == "mx1.example.net"


def test_make_resolver_uses_given_servers():
    from twisted.internet.testing import MemoryReactorClock

    res = make_resolver(["127.0.0.1:5353", "::1", "[::1]:5300"], reactor=MemoryReactorClock())
    [network] = [r for r in res.resolvers if hasattr(r, "servers")]
    assert network.servers == [("127.0.0.1", 5353), ("::1", 53), ("::1", 5300)]


def test_system_resolver_runs_on_the_given_reactor():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    res = make_resolver([], reactor=reactor)
    kinds = [type(r).__module__ for r in res.resolvers]
    assert kinds == ["twisted.names.hosts", "twisted.names.cache", "txmailhub.relay.dnsport"]
    network = res.resolvers[2]
    assert network.resolv == b"/etc/resolv.conf" and network._reactor is reactor
    # its resolv.conf re-reading timer is on our reactor, not the global one
    assert reactor.getDelayedCalls()
