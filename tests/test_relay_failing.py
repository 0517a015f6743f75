"""The runner's failing destinations (relay/failing.py) on their own: what
a delivery's results say of its destination, the turns at one."""

from __future__ import annotations

from twisted.internet import defer

from txmailhub.address import Address
from txmailhub.relay.attempt import DeliveryResult
from txmailhub.relay.failing import FailingDestinations, reached
from txmailhub.smtp.reply import LocalReply, Reply

BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")
NO_ANSWER = LocalReply.of(451, "4.4.1", "connection to mx:25 failed: timed out")


def unreachable(*rcpts):
    return [DeliveryResult(a, "transient", NO_ANSWER, unreachable=True) for a in rcpts]


def test_what_results_say_of_their_destination():
    assert reached(unreachable(BOB, CAROL)) is False
    assert reached([DeliveryResult(BOB, "transient", Reply.of(421, "4.3.2", "busy"),
                                   "mx.remote.test")]) is True
    assert reached([DeliveryResult(BOB, "delivered", Reply.of(250, "2.0.0", "ok"))]) is True
    # a DNS failure, a local error, a stop's cut: neither
    assert reached([DeliveryResult(BOB, "transient", LocalReply.of(451, "4.4.3", "no"))]) is None
    assert reached([]) is None
    # a host answered, the last one's connection failed: it connects
    assert reached([DeliveryResult(BOB, "transient", NO_ANSWER, unreachable=False)]) is True
    # an agent that does not tell
    assert reached([DeliveryResult(BOB, "transient", NO_ANSWER)]) is None
    # one recipient settled by a host that answered: not unreachable
    assert reached([*unreachable(BOB),
                    DeliveryResult(CAROL, "permanent", Reply.of(550, "5.1.1", "no"),
                                   "mx.remote.test")]) is True


def test_the_oldest_mark_is_forgotten_past_the_limit():
    f = FailingDestinations(limit=2)
    for dest in ("a.test", "b.test", "c.test"):
        f.learn(dest, unreachable(BOB), 10)
    assert "a.test" not in f and "b.test" in f and "c.test" in f and len(f) == 2


def test_turns_handed_on_one_after_the_other_without_recursion():
    # each delivery answered at once hands its turn on from within the
    # one handed to it: a thousand waiting must not reach the recursion limit
    f = FailingDestinations()
    f.learn("remote.test", unreachable(BOB), 10)
    first = []
    f.turn("remote.test").addCallback(first.append)
    [turn] = first
    assert turn is not None
    done = []

    def answered_at_once(t):
        done.append(t)
        f.turn_over("remote.test", t)

    waiting = [f.turn("remote.test") for _ in range(5000)]
    for d in waiting:
        d.addCallback(answered_at_once)
    assert done == []  # one at a time: the first has its turn
    f.turn_over("remote.test", turn)
    assert len(done) == 5000 and all(t is turn for t in done)
    assert not f._turns


def _failing_with_its_turn_held() -> tuple[FailingDestinations, list]:
    """remote.test marked failing, and a delivery there given its one
    turn: ``(failing destinations, [that turn])``."""
    f = FailingDestinations()
    f.learn("remote.test", unreachable(BOB), 10)
    held: list = []
    f.turn("remote.test").addCallback(held.append)
    assert len(held) == 1  # the first has the turn at once
    return f, held


def test_a_recovery_lets_every_waiting_delivery_go():
    f, held = _failing_with_its_turn_held()
    woken = []
    for _ in range(3):
        f.turn("remote.test").addCallback(woken.append)
    f.learn("remote.test", [DeliveryResult(BOB, "transient", Reply.of(421, "4.3.2", "busy"),
                                           "mx")], 10)
    assert woken == [None] * 3  # no turn: the destination is not failing
    assert "remote.test" not in f
    # the turn held before is still the destination's one turn: marked
    # again while that delivery runs, the next waits for it (two at once
    # to a destination none of whose hosts answers, otherwise)
    f.learn("remote.test", unreachable(BOB), 10)
    later = []
    f.turn("remote.test").addCallback(later.append)
    assert later == []
    after = f.turn("remote.test")
    f.turn_over("remote.test", held[0])
    assert later == held and not after.called
    f.turn_over("remote.test", later[0])
    assert after.called
    f.turn_over("remote.test", after.result)
    assert not f._turns


def test_a_turn_held_across_a_recovery_is_handed_on_or_dropped():
    f, held = _failing_with_its_turn_held()
    f.learn("remote.test", [DeliveryResult(BOB, "delivered", Reply.of(250, "2.0.0", "ok"),
                                           "mx")], 10)
    # not failing: no turn to wait for, though one is still held
    d = f.turn("remote.test")
    assert d.called and d.result is None
    f.turn_over("remote.test", held[0])
    assert not f._turns


def test_a_destination_not_failing_has_no_turns():
    f = FailingDestinations()
    d = f.turn("remote.test")
    assert isinstance(d, defer.Deferred) and d.called and d.result is None
    assert not f._turns


def test_deliveries_taken_within_the_room_wait_before_those_taken_beyond_it():
    # the fairness: an entry taken for its other destinations' room waits
    # for the turn behind those taken within the failing one's room (in
    # the order they came), so that one for it alone is not held back by
    # every entry of a mailing list; a recovery wakes them all
    f, held = _failing_with_its_turn_held()
    order = []
    for name, ahead in (("list1", False), ("alone1", True), ("list2", False),
                        ("alone2", True)):
        f.turn("remote.test", ahead).addCallback(lambda t, n=name: order.append((n, t)))
    turn = held[0]
    for _ in range(4):
        f.turn_over("remote.test", turn)
        turn = order[-1][1]
    assert [n for n, _ in order] == ["alone1", "alone2", "list1", "list2"]
    # a recovery: those waiting go, and the count of those ahead with them
    f.turn("remote.test", True)
    f.turn("remote.test")
    f.learn("remote.test", [DeliveryResult(BOB, "delivered", Reply.of(250, "2.0.0", "ok"),
                                           "mx")], 10)
    assert f._turns["remote.test"].ahead == 0 and not f._turns["remote.test"].waiting
    f.turn_over("remote.test", turn)
    assert not f._turns


def test_a_delivery_taken_within_the_room_waits_before_those_beyond_after_their_turns():
    # turns handed to deliveries taken beyond the room, none within it
    # waiting: the count of those ahead stays at none, so one taken within
    # the room later still goes before every one beyond it
    f = FailingDestinations()
    f.learn("remote.test", unreachable(BOB), 10)
    held = []
    f.turn("remote.test").addCallback(held.append)
    order = []
    for name in ("list1", "list2", "list3"):
        f.turn("remote.test").addCallback(lambda t, n=name: order.append((n, t)))
    f.turn_over("remote.test", held[0])  # list1's turn
    assert [n for n, _ in order] == ["list1"]
    f.turn("remote.test", True).addCallback(lambda t: order.append(("alone", t)))
    for _ in range(3):
        f.turn_over("remote.test", order[-1][1])
    assert [n for n, _ in order] == ["list1", "alone", "list2", "list3"]
