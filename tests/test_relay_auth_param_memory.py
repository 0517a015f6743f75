"""The in-memory table of next hops that refuse AUTH= on MAIL."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from txmailhub.relay.auth_param_memory import MAX_AGE, MAX_HOSTS, AuthParamMemory


def test_a_remembered_host_is_known_until_the_time_is_up():
    clock = Clock()
    clock.advance(1_800_000_000)
    m = AuthParamMemory(clock)
    assert not m.refuses("mx.remote.test", 25)
    assert m.remember("mx.remote.test", 25) is True  # new: the caller logs it
    assert m.refuses("mx.remote.test", 25)
    clock.advance(MAX_AGE - 1)
    assert m.refuses("mx.remote.test", 25)
    clock.advance(1)
    assert not m.refuses("mx.remote.test", 25) and len(m) == 0  # forgotten


def test_remembering_again_is_not_new_and_restarts_the_time():
    clock = Clock()
    m = AuthParamMemory(clock, max_age=100)
    assert m.remember("mx.remote.test", 25)
    clock.advance(60)
    assert m.remember("MX.Remote.Test.", 25) is False  # the same host, however spelt
    clock.advance(60)
    assert m.refuses("mx.remote.test", 25)
    clock.advance(40)
    assert not m.refuses("mx.remote.test", 25)
    assert m.remember("mx.remote.test", 25) is True  # expired: new again


def test_host_and_port_are_the_key():
    m = AuthParamMemory(Clock())
    m.remember("mx.remote.test", 25)
    assert not m.refuses("mx.remote.test", 587)
    assert not m.refuses("mx2.remote.test", 25)
    m.remember("192.0.2.1", 25)
    assert m.refuses("192.0.2.1", 25) and not m.refuses("192.0.2.2", 25)


def test_the_table_is_bounded_the_oldest_go_first():
    clock = Clock()
    m = AuthParamMemory(clock, max_hosts=3)
    for name in ("a.test", "b.test", "c.test"):
        m.remember(name, 25)
        clock.advance(1)
    m.remember("a.test", 25)  # refreshed: now the newest
    m.remember("d.test", 25)
    assert len(m) == 3
    assert [m.refuses(n, 25) for n in ("a.test", "b.test", "c.test", "d.test")] == [
        True, False, True, True]


def test_the_default_bound():
    m = AuthParamMemory(Clock())
    for i in range(MAX_HOSTS + 5):
        m.remember(f"mx{i}.test", 25)
    assert len(m) == MAX_HOSTS
    assert not m.refuses("mx0.test", 25) and m.refuses(f"mx{MAX_HOSTS + 4}.test", 25)


def test_a_clock_set_back_does_not_keep_a_host_for_longer():
    clock = Clock()
    clock.advance(10 * MAX_AGE)
    m = AuthParamMemory(clock)
    m.remember("mx.remote.test", 25)
    clock.rightNow -= 5 * MAX_AGE  # the system clock was set back
    assert not m.refuses("mx.remote.test", 25)


def test_the_documented_defaults():
    # docs/relay.rst: 24 hours, at most 4096 hosts
    clock = Clock()
    m = AuthParamMemory(clock)
    for i in range(4097):
        m.remember(f"mx{i}.test", 25)
    assert len(m) == 4096 and not m.refuses("mx0.test", 25)
    clock.advance(24 * 3600 - 1)
    assert m.refuses("mx4096.test", 25)
    clock.advance(1)
    assert not m.refuses("mx4096.test", 25)


def test_a_table_that_could_hold_nothing_is_refused():
    with pytest.raises(ValueError):
        AuthParamMemory(Clock(), max_hosts=0)
    assert len(AuthParamMemory(Clock(), max_hosts=1)) == 0


def test_an_expired_host_is_new_again_even_if_nobody_asked_in_between():
    # the entry is still in the table (nothing looked it up), but its time
    # is up: remembering it again is news, and is logged
    clock = Clock()
    m = AuthParamMemory(clock, max_age=100)
    m.remember("mx.remote.test", 25)
    clock.advance(100)
    assert m.remember("mx.remote.test", 25) is True
