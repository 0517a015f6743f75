"""A destination whose DNS does not answer must not hold the queue.

RFC 5321 4.5.4.1: the client SHOULD avoid retrying a destination that
recently failed for every message.  A domain whose name servers time out
(a minute each) with many queued entries made one lookup per entry,
``max_per_destination`` at a time, while mail for other domains waited
behind it for the entries' room; ``MXResolver`` now remembers such a
failure for a short while, and lookups of a domain already under way
are shared."""

from __future__ import annotations

import random

import pytest
from relay_fakes import FakeResolver
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, TCPTimedOutError
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names import error as dns_error

from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay.attempt import MAX_ADDRESSES_PER_ATTEMPT as MAX_ADDRESSES
from txmailhub.relay.attempt import DeliveryAgent
from txmailhub.relay.mx import MXResolver, TemporaryDNSError
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.runner import QueueRunner
from txmailhub.relay.tls_memory import TLSMemory
from txmailhub.testing import MemoryMailboxStore, StaticRouter

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")

ALICE = Address("alice", "example.org")
TIMEOUT = 60.0  # twisted.names' whole timeout for a server that never answers
# down.test's one host drops every packet: a connection fails after
# CONNECT_TIMEOUT; live.test's refuses at once
ADDRESSES = {"live.test": "192.0.2.7", "down.test": "192.0.2.66"}
CONNECT_TIMEOUT = 30.0


class SilentResolver(FakeResolver):
    """``dead.test``'s name servers never answer: each query fails with a
    timeout after TIMEOUT seconds of ``clock``; ``live.test`` has an
    address at once."""

    def __init__(self, clock):
        super().__init__({})
        self.clock = clock
        self.queries: list[tuple[str, str, float]] = []  # with when it was asked

    def _lookup(self, name, kind):
        self.queries.append((name, kind, self.clock.seconds()))
        if name in ADDRESSES:
            if kind != "A":
                return defer.succeed(([], [], []))
            rr = dns.RRHeader(name.encode(), dns.A, dns.IN, 60,
                              dns.Record_A(ADDRESSES[name]))
            return defer.succeed(([rr], [], []))
        d = defer.Deferred()
        self.clock.callLater(TIMEOUT, d.errback, dns_error.DNSQueryTimeoutError(name))
        return d

    def count(self, name, kind="MX"):
        return sum(1 for n, k, _ in self.queries if n == name and k == kind)


class RefusingEndpoint:
    """Records each connection asked for and refuses it (no network)."""

    def __init__(self, clock):
        self.clock = clock
        self.connects: list[tuple[str, float]] = []

    def __call__(self, host, port):
        outer = self

        class E:
            def connect(self, factory):
                outer.connects.append((host, outer.clock.seconds()))
                if host == ADDRESSES["down.test"]:
                    d = defer.Deferred()
                    outer.clock.callLater(CONNECT_TIMEOUT, d.errback, TCPTimedOutError())
                    return d
                return defer.fail(ConnectionRefusedError(host))

        return E()


def make(tmp_path, dead=100, domain="dead.test", concurrent=10, before=(), relay=""):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   f'[relay]\nmax_concurrent_deliveries = {concurrent}\n'
                   'max_per_destination = 10\nqueue_lifetime = "1d"\n' + relay)
    settings = load_text(cfg.read_text(), str(cfg))
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    components = Components(settings=settings, reactor=clock,
                            router=StaticRouter({"alice": None}), store=MemoryMailboxStore(),
                            spooler=None, portal=None)
    queue = OutboundQueue(settings.queue_dir, clock)
    components.queue = queue
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org", rng=random.Random(0))
    endpoint = RefusingEndpoint(clock)

    def now(f, *args):
        return defer.maybeDeferred(f, *args)

    agent = DeliveryAgent(settings, mx, clock, endpoint=endpoint,
                          tls_options=lambda h, v: None, run_blocking=now,
                          tls_memory=TLSMemory(str(tmp_path / "tls.json"), clock, now))
    runner = QueueRunner(queue, agent, components, clock, send_dsn=lambda *a: defer.succeed(None))
    ids = []
    for i, d in enumerate(before):  # older than the others (not in ids)
        path = tmp_path / f"spool-before-{i}"
        path.write_bytes(b"Subject: hi\n\nhello\n")
        queue.enqueue(Envelope(sender=ALICE, recipients=(Address(f"b{i}", d),)),
                      SpooledMessage(str(path), 20, 23))
        clock.advance(0.001)
    for i in range(dead + 1):
        rcpt = Address(f"u{i}", "live.test" if i == dead else domain)
        path = tmp_path / f"spool-{i}"
        path.write_bytes(b"Subject: hi\n\nhello\n")
        ids.append(queue.enqueue(Envelope(sender=ALICE, recipients=(rcpt,)),
                                 SpooledMessage(str(path), 20, 23)).result)
        clock.advance(0.001)  # the live domain's entry is the newest
    return clock, runner, resolver, endpoint, queue, ids


def first_pass(clock, runner, resolver, endpoint, limit=3600):
    """Run until the live domain's entry has had its attempt (a connection
    asked for); returns the seconds that took."""
    start = clock.seconds()
    runner.start()
    live = ADDRESSES["live.test"]
    while (all(h != live for h, _ in endpoint.connects)
           and clock.seconds() - start < limit):
        clock.advance(1)
    return clock.seconds() - start


def test_other_domains_wait_for_at_most_one_timeout(tmp_path):
    clock, runner, resolver, endpoint, _queue, _ids = make(tmp_path)
    try:
        took = first_pass(clock, runner, resolver, endpoint)
        assert any(h == ADDRESSES["live.test"] for h, _ in endpoint.connects), \
            "the live domain's entry was never attempted"
        # a few ticks past the one lookup's timeout, not one timeout per
        # max_per_destination entries (ten of them before: 600 s)
        assert took <= TIMEOUT + 5
        assert resolver.count("dead.test") == 1
    finally:
        runner.stop()


def test_other_domains_do_not_wait_for_the_dead_domains_lookup(tmp_path):
    # while the dead domain's one lookup runs, the runner takes one of its
    # entries, not the room's worth of them (twice max_concurrent_
    # deliveries, each waiting for that lookup): the live domain's entry,
    # the newest, went only once the lookup had failed, a minute later
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path)
    try:
        took = first_pass(clock, runner, resolver, endpoint)
        assert took < TIMEOUT
        assert resolver.count("dead.test") == 1
        assert sum(1 for qid in runner.active if qid != ids[-1]) <= 1
        for _ in range(int(TIMEOUT) + 10):
            clock.advance(1)
        # then each dead entry has its attempt, deferred by that lookup
        assert resolver.count("dead.test") == 1
        assert all(queue.read(qid).attempts == 1 for qid in ids[:-1])
    finally:
        runner.stop()


def test_a_delivery_waits_for_its_domains_lookup_without_a_slot(tmp_path, monkeypatch):
    # an entry to the dead domain and another is taken (the other domain
    # has room): its delivery to the dead domain waits for the lookup under
    # way without holding a slot, so its other delivery has one.  With two
    # slots, one the lookup's, the second went to the dead domain's
    # delivery too, and the other domain waited for the lookup's minute
    monkeypatch.setitem(ADDRESSES, "other.test", "192.0.2.8")
    clock, runner, resolver, endpoint, queue, _ids = make(tmp_path, dead=1, concurrent=2)
    path = tmp_path / "spool-both"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    both = queue.enqueue(Envelope(sender=ALICE, recipients=(
        Address("v", "dead.test"), Address("w", "other.test"))),
        SpooledMessage(str(path), 20, 23)).result
    try:
        start = clock.seconds()
        runner.start()
        for _ in range(5):
            clock.advance(1)
        other = [t for h, t in endpoint.connects if h == ADDRESSES["other.test"]]
        assert len(other) == 1 and other[0] < start + 5  # not a minute later
        assert resolver.count("dead.test") == 1
        for _ in range(int(TIMEOUT)):
            clock.advance(1)
        assert resolver.count("dead.test") == 1  # the waiting one was told the answer
        assert queue.read(both).attempts == 1
    finally:
        runner.stop()


def test_a_pass_over_the_dead_domain_makes_one_lookup(tmp_path):
    # 400 entries: answered at once, one after the other, from within the
    # one before, they ran into Python's recursion limit
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=400)
    try:
        start = clock.seconds()
        first_pass(clock, runner, resolver, endpoint)
        # every dead entry has been attempted once, once the one lookup
        # has failed: deferred with the lookup's own temporary reason,
        # counted as an attempt
        while clock.seconds() < start + TIMEOUT + 10:
            clock.advance(1)
        for qid in ids[:-1]:
            e = queue.read(qid)
            assert e.attempts == 1, qid
            rec = e.recipients[0]
            assert rec.last_reply.code == 451 and rec.last_reply.status == "4.4.3"
            assert "DNS timeout" in rec.last_reply.text()
        assert resolver.count("dead.test") == 1
    finally:
        runner.stop()


def test_the_memory_is_short_each_retry_asks_again(tmp_path):
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=3)
    try:
        first_pass(clock, runner, resolver, endpoint)
        assert resolver.count("dead.test") == 1
        # the first retry (one minute later) finds the memory gone: one
        # fresh lookup for all three entries
        for _ in range(200):
            clock.advance(1)
        assert resolver.count("dead.test") == 2
        for qid in ids[:-1]:
            assert queue.read(qid).attempts == 2
    finally:
        runner.stop()


def test_resolver_remembers_a_temporary_failure_for_a_while():
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org", dns_failure_memory=60)
    errors = []
    mx.resolve("dead.test").addErrback(errors.append)
    clock.advance(TIMEOUT)
    mx.resolve("DEAD.test.").addErrback(errors.append)  # no query
    assert len(errors) == 1  # not from within the call: a turn of the reactor later
    clock.advance(0)
    assert len(errors) == 2 and resolver.count("dead.test") == 1
    assert all(f.check(TemporaryDNSError) for f in errors)
    assert errors[1].value.reason == errors[0].value.reason
    clock.advance(60)
    mx.resolve("dead.test").addErrback(errors.append)
    assert resolver.count("dead.test") == 2


@pytest.mark.parametrize("memory", [0])
def test_no_memory_when_turned_off(memory):
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org", dns_failure_memory=memory)
    mx.resolve("dead.test").addErrback(lambda f: None)
    clock.advance(TIMEOUT)
    mx.resolve("dead.test").addErrback(lambda f: None)
    assert resolver.count("dead.test") == 2




def test_lookups_under_way_are_shared():
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org")
    errors = []
    for _ in range(5):
        mx.resolve("dead.test").addErrback(errors.append)
    assert resolver.count("dead.test") == 1
    clock.advance(TIMEOUT)
    assert len(errors) == 5 and all(f.check(TemporaryDNSError) for f in errors)
    got = []
    for _ in range(2):
        mx.resolve("live.test").addCallback(got.append)
    assert len(got) == 2 and got[0] == got[1] and got[0] is not got[1]
    # answered at once, so not shared: each its own lookup
    assert resolver.count("live.test") == 2


def test_the_end_of_a_lookup_under_way_can_be_waited_for():
    # what the runner asks before it takes a slot for a delivery: whether
    # a lookup of its domain is under way, and when that one ends
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org")
    assert mx.lookup_in_flight("dead.test") is None
    mx.resolve("dead.test").addErrback(lambda f: None)
    over = []
    mx.lookup_in_flight("DEAD.test.").addCallback(over.append)  # however it is spelt
    assert mx.lookup_in_flight("[192.0.2.1]") is None
    assert resolver.count("dead.test") == 1 and over == []
    clock.advance(TIMEOUT)
    assert over == [None]  # a failure too ends it, without an error of its own
    assert mx.lookup_in_flight("dead.test") is None  # remembered now, not looked up


def test_a_cancelled_wait_leaves_the_others_theirs():
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org")
    first = mx.resolve("dead.test")
    second = mx.resolve("dead.test")
    first.addErrback(lambda f: None)
    first.cancel()
    errors = []
    second.addErrback(errors.append)
    clock.advance(TIMEOUT)
    assert len(errors) == 1 and errors[0].check(TemporaryDNSError)


def test_forget_drops_the_memory_and_what_lookups_from_before_learn():
    clock = MemoryReactorClock()
    resolver = SilentResolver(clock)
    mx = MXResolver(resolver, clock, "mail.example.org")
    mx.resolve("dead.test").addErrback(lambda f: None)
    clock.advance(TIMEOUT)
    mx.forget()  # the relay started again
    mx.resolve("dead.test").addErrback(lambda f: None)
    assert resolver.count("dead.test") == 2
    mx.forget()  # while that lookup is under way (a stop gives it up)
    clock.advance(TIMEOUT)
    mx.resolve("dead.test").addErrback(lambda f: None)
    assert resolver.count("dead.test") == 3


def test_a_domain_none_of_whose_hosts_answers_is_tried_once_a_pass(tmp_path):
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=400, domain="down.test")
    down = ADDRESSES["down.test"]
    try:
        took = first_pass(clock, runner, resolver, endpoint)
        # one connection's timeout, not one per max_per_destination entries
        # (40 of them before: 1,200 s)
        assert took <= CONNECT_TIMEOUT + 5
        for _ in range(10):
            clock.advance(1)
        # the ten that connected at once (max_per_destination), then none:
        # each other entry deferred with the same reply, an attempt
        assert sum(1 for h, _ in endpoint.connects if h == down) == 10
        for qid in ids[:-1]:
            e = queue.read(qid)
            assert e.attempts == 1, qid
            reply = e.recipients[0].last_reply
            assert reply.code == 451 and reply.status == "4.4.1"
            assert f"connection to down.test[{down}]:25 failed" in reply.text()
        # the first retry, a minute on, connects again
        for _ in range(200):
            clock.advance(1)
        assert sum(1 for h, _ in endpoint.connects if h == down) > 10
    finally:
        runner.stop()


def test_a_start_tries_an_unreachable_destination_again(tmp_path):
    clock, runner, resolver, endpoint, _queue, _ids = make(tmp_path, dead=3, domain="down.test")
    down = ADDRESSES["down.test"]
    try:
        first_pass(clock, runner, resolver, endpoint)
        clock.advance(CONNECT_TIMEOUT)
        assert "down.test" in runner.agent._unreachable
        runner.agent.resume()  # what a start of the runner calls
        assert "down.test" not in runner.agent._unreachable
        assert sum(1 for h, _ in endpoint.connects if h == down) == 3
    finally:
        runner.stop()


def test_a_flush_asks_the_dns_again(tmp_path):
    # ``queue flush`` is an administrator asking for an attempt now (the
    # name servers mended, say): not a deferral by what was remembered
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=3)
    try:
        first_pass(clock, runner, resolver, endpoint)
        clock.advance(TIMEOUT + 1)  # the one lookup failed, each entry deferred by it
        assert resolver.count("dead.test") == 1
        assert all(queue.read(qid).attempts == 1 for qid in ids[:-1])
        queue.request_flush()
        for _ in range(5):  # well inside the memory's minute
            clock.advance(1)
        assert resolver.count("dead.test") == 2
    finally:
        runner.stop()


def test_a_flush_connects_to_an_unreachable_destination_again(tmp_path):
    clock, runner, resolver, endpoint, queue, _ids = make(tmp_path, dead=3, domain="down.test")
    down = ADDRESSES["down.test"]
    try:
        first_pass(clock, runner, resolver, endpoint)
        clock.advance(CONNECT_TIMEOUT)
        assert "down.test" in runner.agent._unreachable
        before = sum(1 for h, _ in endpoint.connects if h == down)
        queue.request_flush()
        for _ in range(5):
            clock.advance(1)
        assert sum(1 for h, _ in endpoint.connects if h == down) > before
    finally:
        runner.stop()


class ManyAddressesResolver(SilentResolver):
    """``many.test`` has no MX and one name with twelve addresses, each of
    which refuses: more than one attempt tries (MAX_ADDRESSES_PER_ATTEMPT)."""

    def _lookup(self, name, kind):
        if name != "many.test":
            return super()._lookup(name, kind)
        self.queries.append((name, kind, self.clock.seconds()))
        if kind != "A":
            return defer.succeed(([], [], []))
        rrs = [dns.RRHeader(name.encode(), dns.A, dns.IN, 60, dns.Record_A(f"192.0.2.{100 + i}"))
               for i in range(12)]
        return defer.succeed((rrs, [], []))


def test_addresses_left_untried_with_none_answering_are_an_unreachable_destination(tmp_path):
    # the ten addresses run out before the host's last two were tried, and
    # none of the ten answered: remembered as a destination none of whose
    # hosts could be reached (docs/relay.rst), so the entries for it
    # meanwhile do not each wait out ten connections again
    clock, runner, _resolver, endpoint, _queue, _ids = make(tmp_path, dead=1,
                                                            domain="many.test")
    runner.agent.mx.resolver = ManyAddressesResolver(clock)
    try:
        first_pass(clock, runner, runner.agent.mx.resolver, endpoint)
        for _ in range(5):
            clock.advance(1)
        tried = {h for h, _ in endpoint.connects if h.startswith("192.0.2.1")}
        assert len(tried) == 10
        assert "many.test" in runner.agent._unreachable
    finally:
        runner.stop()


def test_retries_an_hour_apart_reach_the_addresses_the_ten_left_untried(tmp_path):
    # retry steps of an hour, past the ten minutes a failed host or
    # address was remembered: the entry's retry tried the same first ten
    # of many.test's twelve addresses again (the order is fixed), and the
    # last two, were they the working ones, never
    clock, runner, _resolver, endpoint, queue, ids = make(
        tmp_path, dead=1, domain="many.test", relay='retry_schedule = ["1h"]\n')
    runner.agent.mx.resolver = ManyAddressesResolver(clock)
    last_two = {"192.0.2.110", "192.0.2.111"}
    try:
        first_pass(clock, runner, runner.agent.mx.resolver, endpoint)
        for _ in range(5):
            clock.advance(1)
        assert queue.read(ids[0]).attempts == 1
        assert not last_two & {h for h, _ in endpoint.connects}
        for _ in range(3700 // 10):
            clock.advance(10)
        assert queue.read(ids[0]).attempts == 2
        assert last_two <= {h for h, _ in endpoint.connects}
    finally:
        runner.stop()


def test_a_delivery_given_a_slot_while_its_domains_lookup_runs_waits_without_it(tmp_path):
    # the dead domain's two entries were taken while the slots were busy
    # (no lookup of it under way then): the first to have a slot began the
    # lookup, and the second, given the next slot, joined it holding that
    # slot for the lookup's minute, while the live domain's entry waited
    # (down.test's connections take CONNECT_TIMEOUT to fail: they fill the slots)
    clock, runner, resolver, endpoint, queue, ids = make(
        tmp_path, dead=2, concurrent=2, before=("down.test", "down.test"))
    try:
        took = first_pass(clock, runner, resolver, endpoint)
        assert took < CONNECT_TIMEOUT + 5  # not the lookup's minute after the sessions
        assert resolver.count("dead.test") == 1
        # the lookup fails; the second dead entry then has a slot (once
        # down.test's retries, due as the lookup ends, are done with theirs)
        for _ in range(int(TIMEOUT + CONNECT_TIMEOUT) + 5):
            clock.advance(1)
        assert resolver.count("dead.test") == 1  # the one that waited was told the answer
        assert [queue.read(qid).attempts for qid in ids[:-1]] == [1, 1]
    finally:
        runner.stop()


def test_a_start_after_a_stop_mid_lookup_does_not_wait_for_the_old_lookup(
        tmp_path, monkeypatch):
    # an embedding application stops the relay while a domain's lookup
    # runs on a resolver of its own (the relay does not stop it), and
    # starts it again: the new run asks afresh (MXResolver.forget), and its
    # entries for the domain must not wait for the old lookup's end, nor
    # count the entry the stop gave up as one being delivered
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=3)
    try:
        runner.start()
        clock.advance(1)
        assert resolver.count("dead.test") == 1
        runner.stop(grace=0)
        monkeypatch.setitem(ADDRESSES, "dead.test", "192.0.2.9")  # answering now
        runner.agent.mx.forget()  # as RelayService.startService does
        runner.start()
        for _ in range(5):
            clock.advance(1)
        # the entries the old run had not taken went at once (the one it
        # gave up goes once its lookup is over)
        assert "192.0.2.9" in [h for h, _ in endpoint.connects]
        assert [queue.read(qid).attempts for qid in ids[:-1]] == [0, 1, 1]
    finally:
        runner.stop()


def test_a_retry_of_a_domain_none_of_whose_hosts_answers_holds_one_slot(tmp_path, monkeypatch):
    # down.test's one host drops every packet, and may have every slot of
    # the hub (max_per_destination = max_concurrent_deliveries = 10).  Its
    # first ten deliveries each wait out the connect timeout; at its retry,
    # once the agent's memory of it is over, ten of them did so again, and
    # a message for another domain waited the timeout for a slot.  Now the
    # retry connects to it once at a time, and the other mail goes at once
    monkeypatch.setitem(ADDRESSES, "other.test", "192.0.2.8")
    clock, runner, resolver, endpoint, queue, ids = make(tmp_path, dead=40, domain="down.test")
    down = ADDRESSES["down.test"]
    try:
        first_pass(clock, runner, resolver, endpoint)
        for _ in range(int(CONNECT_TIMEOUT) + 5):
            clock.advance(1)
        assert all(queue.read(qid).attempts == 1 for qid in ids[:-1])
        first = sum(1 for h, _ in endpoint.connects if h == down)
        assert first == 10  # the first deliveries, before anything was known
        retry = min(queue.read(qid).next_attempt for qid in ids[:-1])
        while clock.seconds() < retry:
            clock.advance(1)
        for _ in range(3):
            clock.advance(1)
        assert sum(1 for h, _ in endpoint.connects if h == down) == first + 1
        path = tmp_path / "spool-other"
        path.write_bytes(b"Subject: hi\n\nhello\n")
        queue.enqueue(Envelope(sender=ALICE, recipients=(Address("w", "other.test"),)),
                      SpooledMessage(str(path), 20, 23))
        clock.advance(1)
        assert any(h == ADDRESSES["other.test"] for h, _ in endpoint.connects)
        for _ in range(int(CONNECT_TIMEOUT) + 5):
            clock.advance(1)
        # that one connection timed out: the others deferred by the agent's
        # memory of it, one after the other, each tried once more
        assert sum(1 for h, _ in endpoint.connects if h == down) == first + 1
        assert all(queue.read(qid).attempts == 2 for qid in ids[:-1])
    finally:
        runner.stop()


WIDE_HOSTS = [f"mx{i}.wide.test" for i in range(11)]


class WideResolver(SilentResolver):
    """``wide.test`` has eleven MX hosts of one preference, one address
    each: more than an attempt tries (MAX_ADDRESSES_PER_ATTEMPT)."""

    def _lookup(self, name, kind):
        if name == "wide.test" and kind == "MX":
            self.queries.append((name, kind, self.clock.seconds()))
            rrs = [dns.RRHeader(b"wide.test", dns.MX, dns.IN, 60,
                                dns.Record_MX(10, h.encode())) for h in WIDE_HOSTS]
            return defer.succeed((rrs, [], []))
        if name in WIDE_HOSTS:
            if kind != "A":
                return defer.succeed(([], [], []))
            address = f"192.0.2.{100 + WIDE_HOSTS.index(name)}"
            return defer.succeed(([dns.RRHeader(name.encode(), dns.A, dns.IN, 60,
                                                dns.Record_A(address))], [], []))
        return super()._lookup(name, kind)


class DroppingEndpoint(RefusingEndpoint):
    """As ``RefusingEndpoint``, but ``wide.test``'s hosts (192.0.2.1xx)
    drop every packet: each connection fails after CONNECT_TIMEOUT."""

    def __call__(self, host, port):
        outer = self

        class E:
            def connect(self, factory):
                outer.connects.append((host, outer.clock.seconds()))
                if host.startswith("192.0.2.1"):
                    d = defer.Deferred()
                    outer.clock.callLater(CONNECT_TIMEOUT, d.errback, TCPTimedOutError())
                    return d
                return defer.fail(ConnectionRefusedError(host))

        return E()


def test_a_dead_destination_with_hosts_left_untried_is_one_probe_not_one_per_entry(tmp_path):
    # 40 entries for a domain whose eleven MX hosts all drop packets: the
    # first delivery tries ten of them (a connect timeout each) and none
    # answers.  The destination then gets one delivery at a time; without
    # the agent remembering it (hosts were left untried), each of the 40
    # waited out its own ten timeouts in turn, so the last entry had its
    # first attempt after 40 deliveries' timeouts (Postfix's dead site: the
    # others are deferred at once while one probe connects)
    # (one slot: one delivery makes the first try, and tries ten hosts)
    clock, runner, _resolver, _endpoint, queue, ids = make(tmp_path, dead=40,
                                                           domain="wide.test", concurrent=1)
    runner.agent.mx.resolver = WideResolver(clock)
    endpoint = runner.agent.endpoint = DroppingEndpoint(clock)
    one_delivery = MAX_ADDRESSES * CONNECT_TIMEOUT
    wide = ids[:-1]
    try:
        start = clock.seconds()
        runner.start()
        while (min(queue.read(q).attempts for q in wide) < 1
               and clock.seconds() - start < 3 * one_delivery):
            clock.advance(1)
        assert min(queue.read(q).attempts for q in wide) == 1
        assert clock.seconds() - start < one_delivery + 10  # not 40 deliveries' timeouts
        first = [h for h, _ in endpoint.connects if h.startswith("192.0.2.1")]
        assert len(first) == MAX_ADDRESSES  # one delivery connected, the others deferred
        assert "wide.test" in runner.agent._unreachable
        # the next delivery (the memory over, a retry due) begins with the
        # host not yet tried: the ten that failed are remembered as failed
        def wide_connects():
            return [h for h, _ in endpoint.connects if h.startswith("192.0.2.1")]

        while (len(wide_connects()) == len(first)
               and clock.seconds() - start < 3 * one_delivery):
            clock.advance(1)
        then = wide_connects()[len(first):]
        assert then and then[0] not in first
    finally:
        runner.stop()
