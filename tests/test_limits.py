"""txmailhub.limits: the counters behind connection limits and login throttling."""

from __future__ import annotations

import tracemalloc

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


def test_the_client_forgotten_is_the_one_whose_last_failure_is_oldest():
    # A client failing right now must outlast clients that failed once long
    # ago: an attacker with more than `keep` addresses must not push out the
    # record of the client it is guessing from (its count back to zero).
    clock = Clock()
    window = FailureWindow(clock, limit=3, keep=3)
    window.failed("192.0.2.1")
    window.failed("192.0.2.1")
    clock.advance(1)
    window.failed("192.0.2.2")
    clock.advance(1)
    window.failed("192.0.2.3")
    clock.advance(1)
    window.failed("192.0.2.1")  # the first recorded fails again: now the most recent
    assert window.blocked("192.0.2.1")
    clock.advance(1)
    window.failed("192.0.2.4")  # a fourth: one of the three must go
    assert len(window._failures) == 3
    assert window.blocked("192.0.2.1")  # before: forgotten as the first recorded
    assert "192.0.2.2" not in window._failures  # its last failure is the oldest


def test_a_client_whose_failures_expired_is_forgotten_before_a_live_one():
    clock = Clock()
    window = FailureWindow(clock, limit=2, window=600.0, keep=2)
    window.failed("192.0.2.1")
    window.failed("192.0.2.2")
    clock.advance(700)  # both expired
    window.failed("192.0.2.1")  # again: a live record, moved behind the expired one
    window.failed("192.0.2.3")
    assert set(window._failures) == {"192.0.2.1", "192.0.2.3"}
    window.failed("192.0.2.1")
    assert window.blocked("192.0.2.1")


def test_gone_waiters_fire_once_the_sessions_named_are_gone() -> None:
    from txmailhub.limits import GoneWaiters

    w = GoneWaiters()
    fired: list[str] = []
    assert w.wait([]).called  # none to wait for: at once
    w.wait(["a", "b"]).addCallback(lambda _: fired.append("ab"))
    w.wait(["b"]).addCallback(lambda _: fired.append("b"))
    w.gone("c")  # not waited for: nothing
    w.gone("b")
    assert fired == ["b"]
    w.gone("a")
    assert fired == ["b", "ab"]
    w.gone("a")  # nothing left to fire
    assert fired == ["b", "ab"]


def test_a_login_forgets_only_its_own_names_failures_on_its_own_connection():
    from txmailhub.limits import _name_tag  # what the window keeps of a name

    clock = Clock()
    window = FailureWindow(clock, limit=4)
    window.failed("192.0.2.1", "a@example.org", session=1)
    window.failed("192.0.2.1", "b@example.org", session=1)
    window.failed("192.0.2.1", session=1)  # a malformed response names nobody
    window.failed("192.0.2.1", "a@example.org", session=2)  # another client of the address
    window.failed("192.0.2.2", "a@example.org", session=3)
    assert window.blocked("192.0.2.1")
    window.succeeded("192.0.2.1", "a@example.org", session=1)
    assert not window.blocked("192.0.2.1")
    assert [(tag, session) for _, tag, session in window._failures["192.0.2.1"]] == [
        (_name_tag("b@example.org"), 1), (None, 1), (_name_tag("a@example.org"), 2)]
    assert len(window._failures["192.0.2.2"]) == 1  # another address's stay
    window.succeeded("192.0.2.2", "a@example.org", session=3)
    assert "192.0.2.2" not in window._failures  # nothing left: forgotten


def test_a_users_logins_give_no_guesses_back_to_another_client_of_its_address():
    # whoever shares an address with a user (a NAT, an IPv6 /64) and
    # guesses that user's password on connections of its own: each login
    # of the user's mail client forgot those guesses (the name's failures
    # from the address), 9 more a minute next to a client that checks
    # every minute.  The address's count is no login's to reset
    clock = Clock()
    window = FailureWindow(clock, limit=10)
    guesses = 0
    for minute in range(10):
        for _ in range(3):
            if not window.blocked("192.0.2.1"):
                window.failed("192.0.2.1", "a@example.org", session=100 + guesses)
                guesses += 1
        window.succeeded("192.0.2.1", "a@example.org", session=minute)  # the user's client
        clock.advance(60)
    assert guesses == 10  # the limit, no more, over the window


def test_the_failure_window_holds_no_login_name_whatever_its_length():
    # Memory stays bounded by keep x limit small records, whatever names
    # an attacker's failed logins give: an SMTP AUTH PLAIN name can be
    # some 9000 characters (max_auth_line), and every record of a client
    # stays until keep other clients push it out, however old.  Holding
    # the names made 10,000 clients x 10 such failures about 900 MB.
    window = FailureWindow(Clock(), limit=10, keep=50)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(60):
            for j in range(10):
                window.failed(f"192.0.2.{i}", f"{j}{'x' * 9000}@example.org", session=i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(window._failures) == 50
    assert held < 50 * 10 * 1000  # the names alone were 50 x 10 x 9000
    # and the names still tell whose failures a login forgets
    window.succeeded("192.0.2.59", f"3{'x' * 9000}@example.org", session=59)
    assert len(window._failures["192.0.2.59"]) == 9
