"""txmailhub.limits: the counters behind connection limits and login throttling."""

from __future__ import annotations

from twisted.internet.task import Clock

from txmailhub.limits import ConnectionLimits, FailureWindow


def test_a_client_whose_connections_all_closed_is_forgotten():
    limits = ConnectionLimits()
    for i in range(50):
        assert limits.admit(f"192.0.2.{i}", False, 100, 2) is None
        limits.release(f"192.0.2.{i}")
    assert limits.connections == 0 and limits.per_client == {}  # memory stays bounded


def test_the_failure_window_remembers_at_most_keep_clients_oldest_forgotten_first():
    window = FailureWindow(Clock(), limit=1, keep=2)
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        window.failed(host)
    assert len(window._failures) == 2
    assert not window.blocked("192.0.2.1")
    assert window.blocked("192.0.2.2") and window.blocked("192.0.2.3")


def test_admit_names_the_limit_that_refuses():
    # the per-client limit refuses a non-exempt client only; the total
    # limit refuses everyone (the docstring's "total"/"client")
    limits = ConnectionLimits()
    assert limits.admit("192.0.2.1", False, 3, 1) is None
    assert limits.admit("192.0.2.1", False, 3, 1) == "client"
    assert limits.admit("192.0.2.1", True, 3, 1) is None
    assert limits.admit("192.0.2.2", True, 3, 1) is None
    assert limits.admit("192.0.2.3", True, 3, 1) == "total"
    assert limits.connections == 3


def test_closing_one_of_several_connections_frees_exactly_one_place():
    limits = ConnectionLimits()
    host = "192.0.2.7"
    assert limits.admit(host, False, 100, 2) is None
    assert limits.admit(host, False, 100, 2) is None
    limits.release(host)
    assert limits.per_client == {host: 1}
    assert limits.admit(host, False, 100, 2) is None  # the freed place
    assert limits.admit(host, False, 100, 2) == "client"  # two are open again


def test_old_failures_leave_the_window_while_new_ones_come():
    # a sliding window: each failure counts for `window` seconds after it,
    # however many came later
    clock = Clock()
    window = FailureWindow(clock, limit=3, window=600.0)
    window.failed("192.0.2.1")
    window.failed("192.0.2.1")
    clock.advance(500)
    window.failed("192.0.2.1")
    assert window.blocked("192.0.2.1")
    clock.advance(101)  # the first two are 601 s old, the last 101 s
    assert not window.blocked("192.0.2.1")
    window.failed("192.0.2.1")
    window.failed("192.0.2.1")
    assert window.blocked("192.0.2.1")
