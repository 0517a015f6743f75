"""MX resolution against a fake resolver."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names import error as dns_error
from zope.interface.verify import verifyObject

from tests.relay_fakes import FakeResolver
from txmailhub.interfaces import IMXResolver
from txmailhub.relay.mx import (
    MAX_CNAME_HOPS,
    MAX_CNAME_QUERIES,
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
    "refused.test": {"MX": dns_error.DNSQueryRefusedError("x")},
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


def test_a_name_dns_cannot_hold_is_permanent_without_a_query():
    # RFC 1035 2.3.4: a label over 63 octets or a name over 253 is no DNS
    # name (twisted.names would even send the long label, with a length
    # octet that means something else); an alias target can still name one
    long_label = "x" * 64 + ".test"
    long_name = ".".join(["d" * 63] * 4)  # 255
    zone = {name: {"A": ["192.0.2.1"]} for name in (long_label, long_name, "ok.test")}
    for domain in (long_label, long_name, "a..test", long_label.upper() + "."):
        fake = FakeResolver(zone)
        r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
        e = error_of(r.resolve(domain), NoSuchDomain)
        assert e.permanent and "RFC 1035" in e.reason and fake.queries == [], domain
    fake = FakeResolver({"x" * 63 + ".test": {"A": ["192.0.2.1"]}})
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    assert [h.addresses for h in result(r.resolve("x" * 63 + ".test"))] == [("192.0.2.1",)]


def test_a_name_with_no_idna_form_is_permanent_without_a_query():
    # no IDNA2008 form (an A-label over 63 octets), and the IDNA2003 one
    # twisted.names falls back to fails too: it raised UnicodeError at the
    # lookup, a crash and a 451 at every attempt until the message expired
    for domain in ("\u00fc" * 58 + ".test", "x" * 64 + ".b\u00fccher.test"):
        fake = FakeResolver({})
        r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
        e = error_of(r.resolve(domain), NoSuchDomain)
        assert e.permanent and "IDNA" in e.reason and fake.queries == [], domain
    # a name only IDNA2003 takes (a snowman) is still asked for, as before
    fake = FakeResolver({})
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    r.resolve("\u2603.test")
    assert fake.queries, fake.queries


@pytest.mark.parametrize("domain, word", [("broken.test", "SERVFAIL"), ("slow.test", "timeout")])
def test_servfail_and_timeout_are_temporary(domain, word):
    e = error_of(resolver().resolve(domain), TemporaryDNSError)
    assert not e.permanent and word in e.reason


def test_any_other_mx_lookup_failure_is_temporary():
    # REFUSED (a name server that will not answer us today) says nothing
    # about the domain: retry, never a bounce
    e = error_of(resolver().resolve("refused.test"), TemporaryDNSError)
    assert not e.permanent


def test_mx_host_address_failure_is_temporary():
    error_of(resolver().resolve("flaky.test"), TemporaryDNSError)


def test_mx_host_without_addresses_is_permanent():
    error_of(resolver().resolve("dangling.test"), NoSuchDomain)


def test_address_literals():
    r = resolver()
    assert result(r.resolve("[192.0.2.7]")) == [MXHost("[192.0.2.7]", 0, ("192.0.2.7",))]
    assert result(r.resolve("[IPv6:2001:DB8::7]")) == [
        MXHost("[IPv6:2001:db8::7]", 0, ("2001:db8::7",))]
    # the tag case-insensitive (RFC 5234 2.3), the host named with "IPv6:"
    assert result(r.resolve("[ipv6:2001:db8::7]")) == [
        MXHost("[IPv6:2001:db8::7]", 0, ("2001:db8::7",))]
    error_of(r.resolve("[300.1.1.1]"), NoSuchDomain)
    error_of(r.resolve("[IPv6:192.0.2.7]"), NoSuchDomain)  # RFC 5321 4.1.3: IPv6 only
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
    # the literal named with its tag as RFC 5321 4.1.3 writes it
    e = error_of(resolver(listening=[("::1", 25)]).resolve("[ipv6:::1]"), MailLoop)
    assert "mail for [IPv6:::1] loops back to me" in e.reason, e.reason
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
    assert kinds == ["twisted.names.hosts", "txmailhub.relay.dnscache", "txmailhub.relay.mx"]
    network = res.resolvers[2].resolver  # filling the cache with what it answers
    assert network.resolv == b"/etc/resolv.conf" and network._reactor is reactor
    # its resolv.conf re-reading timer is on our reactor, not the global one
    assert reactor.getDelayedCalls()


class RawResolver:
    """Answers exactly the records given: ``{(name, "MX"|"A"|"AAAA"): [RRHeader]}``;
    anything else is an empty answer."""

    def __init__(self, table):
        self.table = table

    def _answer(self, name, kind):
        return defer.succeed((list(self.table.get((name, kind), [])), [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._answer(name, "MX")

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, "A")

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, "AAAA")


def mx(owner: bytes, pref: int, target: bytes):
    return dns.RRHeader(owner, dns.MX, dns.IN, 60, dns.Record_MX(pref, target))


def a(owner: bytes, address: str):
    return dns.RRHeader(owner, dns.A, dns.IN, 60, dns.Record_A(address))


def raw(table):
    return MXResolver(RawResolver(table), Clock(), "mail.hub.test", rng=random.Random(1))


def test_a_malformed_mx_target_is_skipped_not_fatal():
    # RFC 5321 5.1: try the others; one bad record must not block the domain
    # (it raised UnicodeError: a critical traceback and 451 for every attempt)
    table = {("garbage.test", "MX"): [mx(b"garbage.test", 10, b"\xff\xfeA.test"),
                                      mx(b"garbage.test", 15, b"x" * 64 + b".test"),
                                      mx(b"garbage.test", 20, b"good.test")],
             ("good.test", "A"): [a(b"good.test", "192.0.2.5")]}
    assert result(raw(table).resolve("garbage.test")) == [
        MXHost("good.test", 20, ("192.0.2.5",))]
    table = {("bad.test", "MX"): [mx(b"bad.test", 10, b"a b.test")]}
    e = error_of(raw(table).resolve("bad.test"), NoSuchDomain)
    assert "no usable MX" in e.reason


def test_a_null_mx_beside_real_ones_is_just_an_unusable_target():
    # RFC 7505: a null MX is the only record; next to others it is skipped
    table = {("mixed.test", "MX"): [mx(b"mixed.test", 0, b""), mx(b"mixed.test", 20, b"mx.test")],
             ("mx.test", "A"): [a(b"mx.test", "192.0.2.6")]}
    assert [h.name for h in result(raw(table).resolve("mixed.test"))] == ["mx.test"]


def test_our_own_name_without_an_address_still_cuts_the_less_preferred_hosts():
    # RFC 5321 5.1: never hand the mail to a backup MX because our own
    # name has no address record
    table = {("self.test", "MX"): [mx(b"self.test", 10, b"mail.hub.test"),
                                   mx(b"self.test", 20, b"backup.test")],
             ("backup.test", "A"): [a(b"backup.test", "192.0.2.7")]}
    error_of(raw(table).resolve("self.test"), MailLoop)


def test_records_that_answer_another_name_are_not_believed():
    # RFC 2181 5.4.1: an A record of some other owner is not the MX's
    # address; one reached through the CNAME chain is
    cname = dns.RRHeader(b"mx.chain.test", dns.CNAME, dns.IN, 60,
                         dns.Record_CNAME(b"real.chain.test"))
    table = {("foreign.test", "MX"): [mx(b"foreign.test", 10, b"mx.foreign.test"),
                                      mx(b"elsewhere.test", 5, b"evil.test")],
             ("mx.foreign.test", "A"): [a(b"elsewhere.invalid", "192.0.2.66"),
                                        a(b"mx.foreign.test", "192.0.2.8")],
             ("chain.test", "MX"): [mx(b"chain.test", 10, b"mx.chain.test")],
             ("mx.chain.test", "A"): [a(b"real.chain.test", "192.0.2.9"), cname]}
    assert result(raw(table).resolve("foreign.test")) == [
        MXHost("mx.foreign.test", 10, ("192.0.2.8",))]
    assert result(raw(table).resolve("chain.test")) == [
        MXHost("mx.chain.test", 10, ("192.0.2.9",))]


def test_an_idn_domain_is_asked_for_as_its_idna2008_a_label():
    # twisted.names would ask for a U-label in its IDNA2003 form: faß.de as
    # fass.de, another domain; the answers name the A-label
    table = {("xn--mnchen-3ya.test", "MX"): [mx(b"xn--mnchen-3ya.test", 10,
                                               b"mx.xn--mnchen-3ya.test")],
             ("mx.xn--mnchen-3ya.test", "A"): [a(b"mx.xn--mnchen-3ya.test", "192.0.2.10")],
             ("xn--fa-hia.test", "A"): [a(b"xn--fa-hia.test", "192.0.2.11")]}
    assert [h.addresses for h in result(raw(table).resolve("münchen.test"))] == [("192.0.2.10",)]
    # no MX: the implicit MX is the domain itself, asked for the same way
    assert [h.addresses for h in result(raw(table).resolve("faß.test"))] == [("192.0.2.11",)]


def test_ascii_labels_beside_a_u_label_are_asked_for_as_they_are():
    # label by label: my_host and ab--cd are no IDNA labels, but DNS holds
    # them; the U-label beside them is asked for as its A-label
    table = {("mx.xn--bcher-kva.test", "A"): [a(b"mx.xn--bcher-kva.test", "192.0.2.12")],
             ("my_host.ab--cd.xn--bcher-kva.test", "MX"): [
                 mx(b"my_host.ab--cd.xn--bcher-kva.test", 10, b"mx.xn--bcher-kva.test")]}
    hosts = result(raw(table).resolve("my_host.ab--cd.b\u00fccher.test"))
    assert [(h.name, h.addresses) for h in hosts] == [("mx.xn--bcher-kva.test", ("192.0.2.12",))]


class HeldResolver(FakeResolver):
    """The zone's answers, except for ``(name, kind)`` pairs held back: those
    answer only when the test fires the Deferred."""

    def __init__(self, zone, held):
        super().__init__(zone)
        self.held = {key: defer.Deferred() for key in held}

    def _lookup(self, name, kind):
        d = self.held.get((name, kind))
        if d is not None:
            self.queries.append((name, kind))
            return d
        return super()._lookup(name, kind)


def held_resolver(*held, clock):
    fake = HeldResolver(ZONE, held)
    return fake, MXResolver(fake, clock, "mail.hub.test", rng=random.Random(1),
                            is_local_address=lambda a: False)


def test_a_backup_mx_that_never_answers_holds_the_primary_back_only_a_while():
    # mx2's name server is silent: after ADDRESS_GRACE the good primary is
    # used, not after the resolver's whole timeout
    from txmailhub.relay.mx import ADDRESS_GRACE

    clock = Clock()
    fake, mx = held_resolver(("mx2.example.net", "A"), ("mx2.example.net", "AAAA"),
                             clock=clock)
    d = mx.resolve("example.net")
    out = []
    d.addBoth(out.append)
    clock.advance(ADDRESS_GRACE - 0.1)
    assert out == []
    clock.advance(0.1)
    assert out == [[MXHost("mx1.example.net", 10, ("2001:db8::1", "192.0.2.1"))]]
    assert not clock.getDelayedCalls()
    # the late answers are taken quietly (and go to the cache in real use)
    fake.held["mx2.example.net", "A"].errback(dns_error.DNSQueryTimeoutError("x"))
    fake.held["mx2.example.net", "AAAA"].callback(([], [], []))
    assert fake.held["mx2.example.net", "A"].result is None  # consumed, never "unhandled"


def test_a_silent_primary_is_waited_for_even_when_the_backup_answers():
    # the primary may be this hub by address (RFC 5321 5.1: then no less
    # preferred host may be used): nothing goes to the backup before its
    # answer is in
    clock = Clock()
    fake, mx = held_resolver(("mx1.example.net", "A"), ("mx1.example.net", "AAAA"),
                             clock=clock)
    out = []
    mx.resolve("example.net").addBoth(out.append)
    clock.advance(60)
    assert out == []
    fake.held["mx1.example.net", "AAAA"].errback(dns_error.DNSQueryTimeoutError("x"))
    fake.held["mx1.example.net", "A"].errback(dns_error.DNSQueryTimeoutError("x"))
    assert out == [[MXHost("mx2.example.net", 20, ("192.0.2.2",))]]


@pytest.mark.parametrize(("silent", "left"), [("AAAA", ("192.0.2.1",)),
                                              ("A", ("2001:db8::1",))])
def test_one_address_family_that_never_answers_is_waited_for_a_while(silent, left):
    # a name server that drops AAAA queries (or A ones)
    from txmailhub.relay.mx import ADDRESS_GRACE

    clock = Clock()
    _fake, mx = held_resolver(("mx1.example.net", silent), clock=clock)
    out = []
    mx.resolve("example.net").addBoth(out.append)
    clock.advance(ADDRESS_GRACE - 0.1)
    assert out == []
    clock.advance(0.1)
    [hosts] = out
    assert hosts[0] == MXHost("mx1.example.net", 10, left)
    assert hosts[1:] == [MXHost("mx2.example.net", 20, ("192.0.2.2",))]


def test_no_grace_without_an_address_to_go_to():
    # the family that answered has nothing: the other is waited for
    clock = Clock()
    zone = dict(ZONE, **{"v6only.test": {"MX": [(10, "h.v6only.test")]},
                         "h.v6only.test": {"AAAA": ["2001:db8::7"]}})
    fake = HeldResolver(zone, [("h.v6only.test", "AAAA")])
    mx = MXResolver(fake, clock, "mail.hub.test", is_local_address=lambda a: False)
    out = []
    mx.resolve("v6only.test").addBoth(out.append)
    clock.advance(30)
    assert out == []
    rr = dns.RRHeader(b"h.v6only.test", dns.AAAA, dns.IN, 60, dns.Record_AAAA("2001:db8::7"))
    fake.held["h.v6only.test", "AAAA"].callback(([rr], [], []))
    assert out == [[MXHost("h.v6only.test", 10, ("2001:db8::7",))]]


def test_this_hub_at_two_preferences_cuts_at_the_most_preferred():
    # RFC 5321 5.1: discard every MX at or above the *lowest* preference
    # that is us -- here our name at 10, our address under another name at 20
    table = {("twice.test", "MX"): [mx(b"twice.test", 5, b"primary.twice.test"),
                                    mx(b"twice.test", 10, b"mail.hub.test"),
                                    mx(b"twice.test", 20, b"alias.twice.test")],
             ("primary.twice.test", "A"): [a(b"primary.twice.test", "192.0.2.40")],
             ("mail.hub.test", "A"): [a(b"mail.hub.test", "192.0.2.41")],
             ("alias.twice.test", "A"): [a(b"alias.twice.test", "192.0.2.41")]}
    r = MXResolver(RawResolver(table), Clock(), "mail.hub.test",
                   listening=[("192.0.2.41", 25)], rng=random.Random(1))
    assert [h.name for h in result(r.resolve("twice.test"))] == ["primary.twice.test"]


def test_hundreds_of_mx_records_look_up_the_addresses_of_a_few_hosts_only():
    # Each host's lookups open their own UDP ports: a domain with thousands
    # of MX records (one TCP answer holds about 3000) made the hub open two
    # sockets per record at once, for a message that tries 10 addresses
    # at most -- file descriptors the SMTP server and the queue need.
    from txmailhub.relay.mx import MAX_MX_HOSTS
    zone = {"many.test": {"MX": [(10 + i % 3, f"h{i}.many.test") for i in range(500)]}}
    zone.update({f"h{i}.many.test": {"A": [f"192.0.2.{i % 250 + 1}"]} for i in range(500)})
    fake = FakeResolver(zone)
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    hosts = result(r.resolve("many.test"))
    assert len(hosts) == MAX_MX_HOSTS
    assert [h.preference for h in hosts] == sorted(h.preference for h in hosts)
    assert hosts[0].preference == 10
    assert len(fake.queries) == 1 + 2 * MAX_MX_HOSTS


def test_our_own_name_past_the_cut_still_makes_a_loop():
    # the name check needs no lookup: it sees every record, so this hub
    # among many equal hosts is found wherever the shuffle puts it
    from txmailhub.relay.mx import MAX_MX_HOSTS
    names = [f"h{i}.same.test" for i in range(3 * MAX_MX_HOSTS)] + ["mail.hub.test"]
    zone = {"same.test": {"MX": [(10, n) for n in names]}}
    zone.update({n: {"A": ["192.0.2.1"]} for n in names})
    for seed in range(5):
        r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test", rng=random.Random(seed))
        error_of(r.resolve("same.test"), MailLoop)


@pytest.mark.parametrize("unspecified", ["0.0.0.0", "::"])
def test_an_mx_address_of_0_0_0_0_is_this_host_when_we_listen_on_the_relay_port(unspecified):
    # connecting to 0.0.0.0 (or ::) reaches this machine: a hub listening
    # on 127.0.0.1:25 only was not seen in an MX whose A record is 0.0.0.0,
    # and relayed the message to itself (from loopback, so relaying) until
    # the hop count stopped it
    kind = "AAAA" if ":" in unspecified else "A"
    zone = {"zero.test": {"MX": [(10, "mx.zero.test")]}, "mx.zero.test": {kind: [unspecified]}}
    r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test",
                   listening=[("127.0.0.1", 25)], port=25, rng=random.Random(1),
                   is_local_address=lambda a: a == "127.0.0.1")
    error_of(r.resolve("zero.test"), MailLoop)
    error_of(r.resolve("[0.0.0.0]"), MailLoop)
    # not listening on the relay port: some other server on this machine
    r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test",
                   listening=[("127.0.0.1", 2525)], port=25, rng=random.Random(1))
    assert result(r.resolve("zero.test"))[0].addresses == (unspecified,)


def test_when_the_first_hosts_have_no_address_the_next_ones_are_looked_up():
    # The cut to MAX_MX_HOSTS must not turn a deliverable domain into a
    # bounce: 20 stale MX names (NXDOMAIN) ahead of a working one made
    # "the mail exchangers have no addresses", a permanent error, where
    # every host used to be looked up and the working one was found.
    from txmailhub.relay.mx import MAX_MX_HOSTS
    stale = [f"old{i}.stale.test" for i in range(MAX_MX_HOSTS)]
    zone = {"stale.test": {"MX": [(10, n) for n in stale] + [(20, "mx.stale.test")]},
            "mx.stale.test": {"A": ["192.0.2.7"]}}
    fake = FakeResolver(zone)
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    hosts = result(r.resolve("stale.test"))
    assert [(h.name, h.addresses) for h in hosts] == [("mx.stale.test", ("192.0.2.7",))]
    # still in rounds of MAX_MX_HOSTS, never every record at once
    assert len(fake.queries) == 1 + 2 * (MAX_MX_HOSTS + 1)
    # with nothing anywhere the error is the one it always was
    del zone["mx.stale.test"]
    error_of(MXResolver(FakeResolver(zone), Clock(), "mail.hub.test",
                        rng=random.Random(1)).resolve("stale.test"), NoSuchDomain)


@pytest.mark.parametrize("kind, rcode, words", [
    (dns_error.DNSQueryRefusedError, dns.EREFUSED, "refused the query (REFUSED)"),
    (dns_error.DNSFormatError, dns.EFORMAT, "could not read the query (FORMERR)"),
    (dns_error.DNSNotImplementedError, dns.ENOTIMP, "does not implement the query (NOTIMP)"),
    (dns_error.DNSUnknownError, 15, "answered with an unknown error (rcode 15)"),
])
def test_an_mx_lookup_refused_by_the_server_is_said_in_words(kind, rcode, words):
    # twisted.names fails these with the answer itself as the argument: the
    # reason (queue list, the log, the notice's Diagnostic-Code) was the
    # Python repr of a dns.Message, "<Message id=... rCode=5 ... queries=[...]>"
    answer = dns.Message(id=4242, answer=1, rCode=rcode)
    answer.queries = [dns.Query(b"odd.test", dns.MX)]
    zone = {"odd.test": {"MX": kind(answer)}}
    r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test", rng=random.Random(1))
    e = error_of(r.resolve("odd.test"), TemporaryDNSError)
    assert e.reason == "DNS lookup of MX failed: the DNS server " + words
    assert "Message" not in e.reason and "4242" not in e.reason


def cname(owner: bytes, target: bytes):
    return dns.RRHeader(owner, dns.CNAME, dns.IN, 60, dns.Record_CNAME(target))


class CountingRawResolver(RawResolver):
    def __init__(self, table):
        super().__init__(table)
        self.asked = []

    def _answer(self, name, kind):
        self.asked.append((name, kind))
        return super()._answer(name, kind)


def test_a_cname_whose_target_the_answer_left_out_is_followed():
    # RFC 5321 5.1: the name a CNAME gives "is processed as if it were the
    # initial name".  A server that answers with the CNAME alone (no
    # records of its target) made the domain look empty: a 5.1.2 bounce
    # for mail that had somewhere to go.
    table = {("chase.test", "MX"): [cname(b"chase.test", b"real.test")],
             ("real.test", "MX"): [mx(b"real.test", 10, b"mx.real.test")],
             ("mx.real.test", "A"): [cname(b"mx.real.test", b"box.other.test")],
             ("box.other.test", "A"): [a(b"box.other.test", "192.0.2.40")],
             # a chain to a name with no MX: its addresses are the implicit MX
             ("bare.test", "MX"): [cname(b"bare.test", b"host.bare.test")],
             ("bare.test", "A"): [cname(b"bare.test", b"host.bare.test")],
             ("host.bare.test", "A"): [a(b"host.bare.test", "192.0.2.41")]}
    assert result(raw(table).resolve("chase.test")) == [
        MXHost("mx.real.test", 10, ("192.0.2.40",))]
    assert result(raw(table).resolve("bare.test")) == [MXHost("bare.test", 0, ("192.0.2.41",))]
    # a target that is there but has no records of the type asked is no
    # reason to ask again: one query more, and the domain has nothing
    empty = {("e.test", "MX"): [cname(b"e.test", b"f.test")]}
    e = error_of(raw(empty).resolve("e.test"), NoSuchDomain)
    assert e.permanent
    # nor is a target that no DNS name can be
    for target in (b"\xff\xfe.test", b"x" * 64 + b".test", b"a b.test"):
        fake = CountingRawResolver({("odd.test", "MX"): [cname(b"odd.test", target)]})
        r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
        error_of(r.resolve("odd.test"), NoSuchDomain)
        assert [name for name, _ in fake.asked] == ["odd.test"] * 3  # MX, AAAA, A


def test_a_cname_chain_that_loops_or_never_ends_is_temporary_and_bounded():
    # a loop is what a recursive resolver answers SERVFAIL for: no bounce,
    # and no query after query after query
    loop = {("loop.test", "MX"): [cname(b"loop.test", b"b.loop.test"),
                                  cname(b"b.loop.test", b"loop.test")]}
    e = error_of(raw(loop).resolve("loop.test"), TemporaryDNSError)
    assert "loops" in e.reason and not e.permanent
    endless = {(f"n{i}.test", "MX"): [cname(f"n{i}.test".encode(), f"n{i + 1}.test".encode())]
               for i in range(100)}
    fake = CountingRawResolver(endless)
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    e = error_of(r.resolve("n0.test"), TemporaryDNSError)
    assert "too long" in e.reason
    assert len(fake.asked) == 9  # the first query and MAX_CNAME_HOPS (8) more


def test_a_cname_loop_through_a_name_with_controls_names_it_escaped():
    # a label may hold any octets: the name a loop is found at goes into
    # the reason (the log line, the queue, a notice) without its line break
    # or its terminal escape, so that it cannot forge or hide a log line
    evil = b"x\n2026-12-02T18:00:00+0000 [txmailhub.smtp#info] y\x1b[2K"
    loop = {("loop.test", "MX"): [cname(b"loop.test", evil), cname(evil, evil)]}
    e = error_of(raw(loop).resolve("loop.test"), TemporaryDNSError)
    assert e.reason == ("the CNAME chain of loop.test loops (at x\\x0a2026-12-02t18:00:00+0000 "
                        "[txmailhub.smtp#info] y\\x1b[2k)")


class SlowRawResolver(CountingRawResolver):
    """Each answer comes ``delay`` seconds after its query (on ``clock``)."""

    def __init__(self, table, clock, delay):
        super().__init__(table)
        self.clock, self.delay = clock, delay

    def _answer(self, name, kind):
        self.asked.append((name, kind))
        d = defer.Deferred()
        self.clock.callLater(self.delay, d.callback,
                             (list(self.table.get((name, kind), [])), [], []))
        return d


def test_a_cname_chain_is_followed_for_a_minute_not_a_minute_per_query():
    # Each query may take twisted.names' whole timeout (a minute): a chain
    # whose every link comes just before it held the delivery for nine
    # minutes (MAX_CNAME_HOPS queries after the first), not one.
    endless = {(f"n{i}.test", "MX"): [cname(f"n{i}.test".encode(), f"n{i + 1}.test".encode())]
               for i in range(100)}
    clock = Clock()
    fake = SlowRawResolver(endless, clock, 50)
    r = MXResolver(fake, clock, "mail.hub.test", rng=random.Random(1))
    d = r.resolve("n0.test")
    clock.pump([1] * 600)
    e = error_of(d, TemporaryDNSError)
    assert "took too long" in e.reason and not e.permanent
    assert len(fake.asked) == 2  # the first at 0 s, the second at 50 s; none at 100 s
    # a chain whose links come at once is followed as before, on any clock
    quick = {("q.test", "MX"): [cname(b"q.test", b"r.test")],
             ("r.test", "MX"): [mx(b"r.test", 10, b"mx.r.test")],
             ("mx.r.test", "A"): [a(b"mx.r.test", "192.0.2.50")]}
    clock = Clock()
    clock.advance(10_000)
    r = MXResolver(CountingRawResolver(quick), clock, "mail.hub.test", rng=random.Random(1))
    assert result(r.resolve("q.test")) == [MXHost("mx.r.test", 10, ("192.0.2.50",))]


def test_cname_chains_cost_a_bounded_number_of_queries_per_domain():
    # 8 more queries per lookup, for each of the 200 address lookups of
    # MAX_MX_ROUNDS rounds: a domain of 100 MX hosts, each named by a chain
    # its answers never finish, made 1,800 queries an attempt (not 200)
    def chain(table, start, kinds, links):
        names = [start] + [f"{start}-{j}" for j in range(1, links + 1)]
        for kind in kinds:
            for owner, target in itertools.pairwise(names):
                table[(owner, kind)] = [cname(owner.encode(), target.encode())]

    hostile = {("amp.test", "MX"): [mx(b"amp.test", 10, f"h{i}.amp.test".encode())
                                    for i in range(100)]}
    for i in range(100):
        chain(hostile, f"h{i}.amp.test", ("A", "AAAA"), 10)
    fake = CountingRawResolver(hostile)
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    e = error_of(r.resolve("amp.test"), TemporaryDNSError)
    assert not e.permanent
    assert len(fake.asked) <= 1 + 200 + MAX_CNAME_QUERIES
    # and a domain whose every name is an alias the answers leave
    # unfinished -- its MX chain as long as may be, each of its 20 hosts'
    # address lookups one link -- is still resolved in full
    alias = {}
    chain(alias, "al.test", ("MX",), MAX_CNAME_HOPS)
    alias[(f"al.test-{MAX_CNAME_HOPS}", "MX")] = [
        mx(f"al.test-{MAX_CNAME_HOPS}".encode(), 10, f"h{i}.al.test".encode()) for i in range(20)]
    for i in range(20):
        chain(alias, f"h{i}.al.test", ("A", "AAAA"), 1)
        alias[(f"h{i}.al.test-1", "A")] = [a(f"h{i}.al.test-1".encode(), f"192.0.2.{i + 1}")]
    hosts = result(raw(alias).resolve("al.test"))
    assert sorted(h.addresses for h in hosts) == sorted((f"192.0.2.{i + 1}",) for i in range(20))


@pytest.mark.parametrize("preference", [0, 10])
def test_a_null_mx_is_never_passed_over_for_the_domains_own_address(preference):
    # RFC 7505 (3, 4): a domain whose only MX is "." takes no mail; a client
    # must not fall back to its A/AAAA records (the implicit MX of RFC 5321
    # 5.1, used only when there is no MX at all), so they are not even
    # looked up.  A "." at another preference than 0 (section 3's form) is
    # taken the same way: "." is no host name, and the domain published no
    # other MX.
    fake = FakeResolver({"nomail.test": {"MX": [(preference, "")], "A": ["192.0.2.40"],
                                         "AAAA": ["2001:db8::40"]}})
    mx = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1),
                    is_local_address=lambda a: False)
    e = error_of(mx.resolve("nomail.test"), NullMX)
    assert e.permanent
    assert fake.queries == [("nomail.test", "MX")]


def _fake_host(monkeypatch: pytest.MonkeyPatch, asked: list[str]) -> None:
    import socket

    from txmailhub.relay import mx

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.25", 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::25%eth0", 0, 0, 2))]

    monkeypatch.setattr(mx.socket, "gethostname", lambda: "box.hub.test")
    monkeypatch.setattr(mx.socket, "getaddrinfo", getaddrinfo)


_SELF_ZONE = {"other.test": {"MX": [(10, "mx.other.test")]},
              "mx.other.test": {"A": ["192.0.2.7", "192.0.2.8"]},
              "me.test": {"MX": [(10, "mx.me.test")]}, "mx.me.test": {"A": ["192.0.2.25"]},
              "me6.test": {"MX": [(10, "mx.me6.test")]},
              "mx.me6.test": {"AAAA": ["2001:db8::25"]}}


def test_the_host_names_addresses_are_looked_up_once_in_a_thread_not_per_mx_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a hub listening on 0.0.0.0:25 asked getaddrinfo(gethostname()) -- a
    # blocking lookup, maybe a DNS query -- on the reactor thread for every
    # address of every MX host of every delivery, then (once) when the
    # MXResolver was built, still on the reactor thread, holding up the start
    asked: list[str] = []
    _fake_host(monkeypatch, asked)
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("0.0.0.0", 25)], port=25, rng=random.Random(1))
    assert asked == []  # not on the thread that builds it
    runs: list[defer.Deferred] = []
    calls: list[Any] = []

    def in_thread(f, *args):
        calls.append(f)
        runs.append(defer.Deferred())
        return runs[-1]

    r.learn_own_addresses(in_thread)
    assert len(calls) == 1 and asked == []  # handed to the thread
    # meanwhile: only loopback and unspecified addresses are known as ours
    assert [h.name for h in result(r.resolve("me.test"))] == ["mx.me.test"]
    assert len(calls) == 1  # one lookup, not one per MX host
    runs[0].callback(calls[0]())
    assert asked == ["box.hub.test"]
    for _ in range(3):
        assert [h.name for h in result(r.resolve("other.test"))] == ["mx.other.test"]
        error_of(r.resolve("me.test"), MailLoop)  # known as this machine
        error_of(r.resolve("me6.test"), MailLoop)  # IPv6, without its zone index
    assert asked == ["box.hub.test"] and len(calls) == 1


def test_the_host_names_addresses_are_not_looked_up_without_a_wildcard_listener(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    _fake_host(monkeypatch, asked)
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("127.0.0.1", 25)], port=25, rng=random.Random(1))
    r.learn_own_addresses(lambda f, *a: defer.maybeDeferred(f, *a))
    assert [h.name for h in result(r.resolve("me.test"))] == ["mx.me.test"]
    assert asked == []  # nothing needed it: no lookup, no DNS query
    r.listening.append(("::", 25))  # a wildcard listener added later
    error_of(r.resolve("me.test"), MailLoop)
    assert asked == ["box.hub.test"]


def test_a_failed_own_address_lookup_leaves_loopback_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("0.0.0.0", 25)], port=25, rng=random.Random(1))
    r.learn_own_addresses(lambda f, *a: defer.fail(RuntimeError("no threads")))
    assert [h.name for h in result(r.resolve("me.test"))] == ["mx.me.test"]
    assert r.is_local_address("127.0.0.2") and r.is_local_address("::1")


def test_a_host_listed_at_several_preferences_is_one_host_at_its_best():
    # "10 mx" and "20 MX." name one host: listed twice, it was tried again
    # after it failed, spending the attempt's addresses on it twice
    table = {("dup.test", "MX"): [mx(b"dup.test", 20, b"MX.dup.test"),
                                  mx(b"dup.test", 10, b"mx.dup.test."),
                                  mx(b"dup.test", 30, b"other.test")],
             ("mx.dup.test", "A"): [a(b"mx.dup.test", "192.0.2.7")],
             ("other.test", "A"): [a(b"other.test", "192.0.2.8")]}
    assert result(raw(table).resolve("dup.test")) == [
        MXHost("mx.dup.test", 10, ("192.0.2.7",)), MXHost("other.test", 30, ("192.0.2.8",))]


def test_an_address_two_mx_hosts_share_is_tried_at_the_first_only():
    # two MX names for one machine: its address was tried again at the
    # second host after it failed at the first, in the same attempt
    table = {("same.test", "MX"): [mx(b"same.test", 10, b"mx1.same.test"),
                                   mx(b"same.test", 20, b"mx2.same.test"),
                                   mx(b"same.test", 30, b"mx3.same.test")],
             ("mx1.same.test", "A"): [a(b"mx1.same.test", "192.0.2.7")],
             ("mx2.same.test", "A"): [a(b"mx2.same.test", "192.0.2.7"),
                                      a(b"mx2.same.test", "192.0.2.8")],
             ("mx3.same.test", "A"): [a(b"mx3.same.test", "192.0.2.8")]}
    assert result(raw(table).resolve("same.test")) == [
        MXHost("mx1.same.test", 10, ("192.0.2.7",)), MXHost("mx2.same.test", 20, ("192.0.2.8",))]


def test_remembered_dns_failures_are_bounded_and_expired_ones_make_room(monkeypatch):
    # a DNS server that times out for every domain of a large queue: the
    # failures remembered (for the next attempts' deferral) stay at most
    # FAILED_HOSTS_KEPT, the oldest forgotten first, and those whose time
    # is over go before a new one is kept
    from txmailhub.relay import mx as mx_module

    monkeypatch.setattr(mx_module, "FAILED_HOSTS_KEPT", 3)
    zone = {f"s{i}.test": {"MX": dns_error.DNSQueryTimeoutError("x")} for i in range(5)}
    clock = Clock()
    r = MXResolver(FakeResolver(zone), clock, "mail.hub.test", rng=random.Random(1))
    for i in range(5):
        error_of(r.resolve(f"s{i}.test"), TemporaryDNSError)
        clock.advance(1)
    assert list(r._dns_failed) == ["s2.test", "s3.test", "s4.test"]
    clock.advance(r.dns_failure_memory - 2)  # s2's and s3's time is over, not s4's
    error_of(r.resolve("s0.test"), TemporaryDNSError)
    assert list(r._dns_failed) == ["s4.test", "s0.test"]


def test_an_mx_that_names_an_address_is_used_as_that_address():
    # RFC 5321 5.1 wants a domain name there; a zone that puts an IP
    # address instead still gets its mail, sent to that address, with no
    # lookup of the "name"
    zone = {"ipmx.test": {"MX": [(10, "192.0.2.77")]}}
    looked_up = []
    fake = FakeResolver(zone)
    real_a, real_aaaa = fake.lookupAddress, fake.lookupIPV6Address
    fake.lookupAddress = lambda name, *a, **k: looked_up.append(name) or real_a(name, *a, **k)
    fake.lookupIPV6Address = lambda name, *a, **k: (looked_up.append(name)
                                                   or real_aaaa(name, *a, **k))
    r = MXResolver(fake, Clock(), "mail.hub.test", rng=random.Random(1))
    assert result(r.resolve("ipmx.test")) == [MXHost("192.0.2.77", 10, ("192.0.2.77",))]
    assert looked_up == []


def test_an_unknown_rcode_failure_without_the_answer_still_says_it_in_words():
    # DNSUnknownError without the server's message: no rcode to name, and
    # no IndexError out of the words for the reason
    zone = {"odd.test": {"MX": dns_error.DNSUnknownError()}}
    r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test", rng=random.Random(1))
    e = error_of(r.resolve("odd.test"), TemporaryDNSError)
    assert e.reason == "DNS lookup of MX failed: the DNS server answered with an unknown error"


def test_a_listener_named_by_a_host_name_is_not_taken_for_an_address():
    # a listen spec may give a name: it says nothing about the MX's
    # address and must not stop the check of the other listeners
    r = resolver(listening=[("localhost", 25), ("127.0.0.1", 2525)])
    assert result(r.resolve("byaddr.test"))[0].addresses == ("127.0.0.1",)
    r = resolver(listening=[("localhost", 25), ("127.0.0.1", 25)])
    error_of(r.resolve("byaddr.test"), MailLoop)


def test_an_mx_host_address_that_is_no_ip_address_is_not_this_hub():
    r = resolver(listening=[("0.0.0.0", 25)])
    assert not r.is_self(MXHost("elsewhere.test", 10, ("not-an-address", "192.0.2.5")))
    assert r.is_self(MXHost("elsewhere.test", 10, ("not-an-address", "127.0.0.1")))



def test_any_other_mx_lookup_failure_says_its_own_words():
    # a failure with no words of ours (here a name server port that
    # refuses the query): the reason keeps what the error says
    from twisted.internet.error import ConnectionRefusedError
    zone = {"odd.test": {"MX": ConnectionRefusedError("port unreachable")}}
    r = MXResolver(FakeResolver(zone), Clock(), "mail.hub.test", rng=random.Random(1))
    e = error_of(r.resolve("odd.test"), TemporaryDNSError)
    assert e.reason.startswith("DNS lookup of MX failed: ") and "port unreachable" in e.reason


def test_this_hub_by_address_as_a_backup_leaves_the_more_preferred_hosts():
    # RFC 5321 5.1: an MX that is this hub by its address (under another
    # name) cuts itself and the less preferred hosts; the more preferred
    # ones are the destination
    table = {("backup2.test", "MX"): [mx(b"backup2.test", 10, b"primary.backup2.test"),
                                      mx(b"backup2.test", 20, b"alias.backup2.test"),
                                      mx(b"backup2.test", 30, b"last.backup2.test")],
             ("primary.backup2.test", "A"): [a(b"primary.backup2.test", "192.0.2.40")],
             ("alias.backup2.test", "A"): [a(b"alias.backup2.test", "192.0.2.41")],
             ("last.backup2.test", "A"): [a(b"last.backup2.test", "192.0.2.42")]}
    r = MXResolver(RawResolver(table), Clock(), "mail.hub.test",
                   listening=[("192.0.2.41", 25)], rng=random.Random(1))
    assert [h.name for h in result(r.resolve("backup2.test"))] == ["primary.backup2.test"]


def test_a_malformed_address_literal_has_no_lookup_in_flight():
    # the runner asks before it gives a delivery its slot: a literal the
    # resolver refuses is its delivery's error, not the runner's
    r = resolver()
    assert r.lookup_in_flight("[300.1.2.3]") is None
    assert r.lookup_in_flight("[192.0.2.1]") is None
    error_of(r.resolve("[300.1.2.3]"), NoSuchDomain)


def test_the_own_addresses_are_looked_up_once_at_a_time(monkeypatch):
    # a restart (learn again) while the first lookup still runs on its
    # thread joins it: one thread's worth, not one per start
    asked: list[str] = []
    _fake_host(monkeypatch, asked)
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("0.0.0.0", 25)], port=25, rng=random.Random(1))
    calls: list[Any] = []
    runs: list[defer.Deferred] = []

    def in_thread(f, *args):
        calls.append(f)
        runs.append(defer.Deferred())
        return runs[-1]

    r.learn_own_addresses(in_thread)
    r.learn_own_addresses(in_thread)
    assert len(calls) == 1
    runs[0].callback(calls[0]())
    error_of(r.resolve("me.test"), MailLoop)
    r.learn_own_addresses(in_thread)  # done: a restart asks again
    assert len(calls) == 2


def test_an_embedders_own_is_local_address_is_not_replaced_by_a_lookup():
    calls: list[Any] = []
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("0.0.0.0", 25)], port=25, rng=random.Random(1),
                   is_local_address=lambda a: a == "192.0.2.99")
    r.learn_own_addresses(lambda f, *a: calls.append(f) or defer.succeed(frozenset()))
    assert calls == []


@pytest.mark.parametrize("hostname, domain", [
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("[192.0.2.001]", "[192.0.2.1]"),  # RFC 5321 4.1.3: an Snum may have leading zeros
    ("[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"),
    ("[IPv6:2001:db8::1]", "[ipv6:2001:db8:0:0:0:0:0:1]"),
    # an IPv4-mapped address is the IPv4 host (RFC 4291 2.5.5.2)
    ("[192.0.2.1]", "[IPv6:::ffff:192.0.2.1]"),
    ("[192.0.2.1]", "[IPv6:::FFFF:c000:201]"),
    ("[IPv6:::ffff:192.0.2.1]", "[192.0.2.001]"),
])
def test_mail_for_the_hubs_own_address_literal_loops_in_any_spelling(hostname, domain):
    # [hub] hostname may be an address literal, kept as written; the same
    # address spelt another way is still this hub (RFC 5321 5.1), even when
    # nothing listens on that address as such (a public address behind NAT)
    r = MXResolver(FakeResolver(ZONE), Clock(), hostname, listening=[("0.0.0.0", 25)],
                   is_local_address=lambda a: False)
    e = error_of(r.resolve(domain), MailLoop)
    assert "loops back to me" in e.reason
    assert r.resolver.queries == []
    # another address is no loop
    assert result(r.resolve("[192.0.2.9]"))[0].addresses == ("192.0.2.9",)


@pytest.mark.parametrize("error", [OSError(-2, "Name or service not known"),
                                   UnicodeError("label too long")])
def test_a_host_name_without_addresses_leaves_only_loopback_as_this_machine(monkeypatch, error):
    # gethostname() that does not resolve (a box named "localhost.lan" not
    # in /etc/hosts), or cannot be encoded: the lookup gives nothing, with
    # no error out of the thread; loopback and unspecified addresses are
    # still this machine, a foreign one is an ordinary MX
    from txmailhub.relay import mx

    def getaddrinfo(host, port, *args, **kwargs):
        raise error

    monkeypatch.setattr(mx.socket, "gethostname", lambda: "box.hub.test")
    monkeypatch.setattr(mx.socket, "getaddrinfo", getaddrinfo)
    assert mx.own_addresses() == frozenset()
    r = MXResolver(FakeResolver(_SELF_ZONE), Clock(), "mail.hub.test",
                   listening=[("0.0.0.0", 25)], port=25, rng=random.Random(1))
    r.learn_own_addresses(lambda f, *a: defer.maybeDeferred(f, *a))
    assert [h.addresses for h in result(r.resolve("me.test"))] == [("192.0.2.25",)]
    error_of(r.resolve("[127.0.0.1]"), MailLoop)


def test_an_address_literal_is_read_by_rfc_5321s_grammar():
    # as the SMTP paths read one; an alias target or the sendmail command
    # hands the relay a literal as written: an Snum with leading zeros is
    # decimal (ipaddress refused it: a bounce as "malformed"), and a zone
    # (an interface of this host) or more groups beside "::" than RFC 5321
    # 4.1.3 allows is no address (ipaddress took both)
    r = resolver()
    assert result(r.resolve("[192.0.2.001]")) == [MXHost("[192.0.2.001]", 0, ("192.0.2.1",))]
    assert result(r.resolve("[IPv6:2001:db8::07]"))[0].addresses == ("2001:db8::7",)
    for malformed in ("[IPv6:fe80::1%eth0]", "[IPv6:1:2:3:4:5:6:7::]", "[x400:c=de]",
                      "[0x7f.0.0.1]"):
        assert "malformed address literal" in error_of(r.resolve(malformed), NoSuchDomain).reason
    assert r.resolver.queries == []


def test_a_mapped_literal_of_another_host_is_delivered():
    r = MXResolver(FakeResolver(ZONE), Clock(), "[192.0.2.1]", listening=[("0.0.0.0", 25)],
                   is_local_address=lambda a: False)
    # at its IPv4 address (RFC 4291 2.5.5.2), as the smarthost's: an IPv6
    # socket to the mapped form fails on a host without IPv6
    [host] = result(r.resolve("[IPv6:::ffff:192.0.2.9]"))
    assert (host.name, host.addresses) == ("[IPv6:::ffff:192.0.2.9]", ("192.0.2.9",))


def test_the_hubs_own_name_is_itself_in_any_case_and_with_a_final_dot():
    # an MX host named as the hub, however written (DNS names ignore case,
    # and a final dot is the same name), is this hub: a loop, whatever
    # addresses it has
    r = resolver()
    assert r.is_self(MXHost("Mail.Hub.Test.", 10, ()))
    assert r.is_self(MXHost("mail.hub.test", 10, ("192.0.2.77",)))
    assert not r.is_self(MXHost("mail.hub.test.example", 10, ("192.0.2.77",)))
