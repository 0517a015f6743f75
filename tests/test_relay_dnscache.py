"""The relay's DNS cache keeps answers a bounded time and a bounded number."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns

from txmailhub.relay.dnscache import MAX_ENTRIES, MAX_TTL, BoundedCache
from txmailhub.relay.mx import make_resolver


def answer(name: bytes, ttl: int):
    record = dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A("192.0.2.1", ttl))
    return ([record], [], [])


def cached(c: BoundedCache, name: bytes) -> bool:
    d = c.lookupAddress(name)
    hits: list = []
    d.addCallbacks(hits.append, lambda f: None)
    return bool(hits)


def test_an_answer_is_kept_a_day_at_most_whatever_its_ttl() -> None:
    # a stranger's DNS server chooses the TTL: 2**31 - 1 seconds would keep
    # the answer (and its timer) for 68 years
    clock = MemoryReactorClock()
    c = BoundedCache(reactor=clock)
    c.cacheResult(dns.Query(b"forever.example", dns.A, dns.IN), answer(b"forever.example",
                                                                         2**31 - 1))
    c.cacheResult(dns.Query(b"short.example", dns.A, dns.IN), answer(b"short.example", 60))
    assert cached(c, b"forever.example") and cached(c, b"short.example")
    clock.advance(61)
    assert not cached(c, b"short.example")  # its own TTL, as before
    clock.advance(MAX_TTL - 61 - 1)
    assert cached(c, b"forever.example")
    clock.advance(2)
    assert not cached(c, b"forever.example")
    assert c.cache == {} and c.cancel == {} and clock.getDelayedCalls() == []


def test_the_cache_keeps_a_bounded_number_of_answers_dropping_the_oldest() -> None:
    clock = MemoryReactorClock()
    c = BoundedCache(reactor=clock, max_entries=3)
    for n in range(5):
        c.cacheResult(dns.Query(b"d%d.example" % n, dns.A, dns.IN),
                      answer(b"d%d.example" % n, 3600))
    assert [q.name.name for q in c.cache] == [b"d2.example", b"d3.example", b"d4.example"]
    assert len(c.cancel) == 3 and len(clock.getDelayedCalls()) == 3
    # an answer stored again is the newest: the next one drops another
    c.cacheResult(dns.Query(b"d2.example", dns.A, dns.IN), answer(b"d2.example", 3600))
    c.cacheResult(dns.Query(b"d5.example", dns.A, dns.IN), answer(b"d5.example", 3600))
    assert [q.name.name for q in c.cache] == [b"d4.example", b"d2.example", b"d5.example"]
    assert len(clock.getDelayedCalls()) == 3


def test_the_relays_resolvers_use_the_bounded_cache() -> None:
    for servers in (["127.0.0.1:5353"], []):
        res = make_resolver(servers, reactor=MemoryReactorClock())
        [c] = [r for r in res.resolvers if isinstance(r, BoundedCache)]
        assert (c.max_ttl, c.max_entries) == (MAX_TTL, MAX_ENTRIES) == (86400, 10000)


def test_failed_hosts_are_remembered_up_to_a_bound() -> None:
    # hosts that failed once and are never looked up again were kept for ever
    from txmailhub.relay.mx import FAILED_HOSTS_KEPT, HostHealth

    clock = MemoryReactorClock()
    health = HostHealth(clock, memory=600, keep=3)
    for n in range(3):
        health.failed(f"mx{n}.example")
    clock.advance(700)  # all three expired, none looked at since
    health.failed("mx3.example")
    assert set(health._failed) == {"mx3.example"}  # expired ones go first
    for n in range(4, 8):
        health.failed(f"mx{n}.example")
    assert list(health._failed) == ["mx5.example", "mx6.example", "mx7.example"]
    assert health.is_failed("mx7.example") and not health.is_failed("mx4.example")
    health.failed("MX5.example")  # failing again makes it the newest
    health.failed("mx8.example")
    assert list(health._failed) == ["mx7.example", "mx5.example", "mx8.example"]
    assert HostHealth(clock).keep == FAILED_HOSTS_KEPT == 10000


def test_the_relays_resolver_leaves_nothing_on_the_reactor_once_stopped(tmp_path) -> None:
    # An application that stops the hub and runs on: each cached answer
    # kept its expiry timer (up to a day), and the system resolver its
    # look at resolv.conf every minute, for ever, keeping the stopped
    # hub's resolver alive.  stop() ends both; start() looks again.
    clock = MemoryReactorClock()
    resolver = make_resolver([], reactor=clock)  # the system's: resolv.conf
    [cache] = [r for r in resolver.resolvers if isinstance(r, BoundedCache)]
    cache.cacheResult(dns.Query(b"a.example", dns.A, dns.IN), answer(b"a.example", 3600))
    names = sorted(c.func.__name__ for c in clock.getDelayedCalls())
    assert names == ["clearEntry", "maybeParseConfig"]
    resolver.stop()
    assert clock.getDelayedCalls() == []
    assert not cached(cache, b"a.example")  # forgotten: no timer would expire it
    resolver.start()
    assert [c.func.__name__ for c in clock.getDelayedCalls()] == ["maybeParseConfig"]
    resolver.start()  # once only
    assert len(clock.getDelayedCalls()) == 1
    resolver.stop()
    assert clock.getDelayedCalls() == []


def test_host_health_forgets_failures_from_before_the_clock_was_set_back():
    # the clock set back a day (an NTP correction, a virtual machine
    # restored from a snapshot): a failure it recorded would otherwise be
    # remembered for a day more than its memory (an address failed for
    # 4 hours 10 minutes, a host for ten minutes), its host or address
    # put last all that time; one "longer ago" than the memory allows is
    # forgotten, as the queue takes such a retry time
    from txmailhub.relay.mx import HostHealth

    clock = MemoryReactorClock()
    clock.advance(200_000)
    health = HostHealth(clock, memory=600)
    health.failed("mx.test")
    health.address_failed("192.0.2.1", 15_000)
    clock.advance(60)
    assert health.is_failed("mx.test") and health.is_failed_address("192.0.2.1")
    clock.rightNow -= 86_400
    assert not health.is_failed("mx.test")
    assert not health.is_failed_address("192.0.2.1")
    assert health.address_failed_until("192.0.2.1") is None
    # failures recorded after the change are remembered as usual
    health.address_failed("192.0.2.1", 15_000)
    clock.advance(14_000)
    assert health.is_failed_address("192.0.2.1")
