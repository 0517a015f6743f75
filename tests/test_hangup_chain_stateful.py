"""The SIGHUP notices of hubs in one process, with the application's own
handlers, driven by Hypothesis.

Up to three notices (three hubs) are started (by ``privilegedStartService``
or ``startService`` alone) and stopped (at once, or with a stop's grace
that ends later), in any order, again and again; between them the
application installs handlers of its own, each passing the signal on to
the one it found, as docs/embedding.rst asks, over one it had before any
hub started.  On every SIGHUP, each of the application's handlers runs
once (not twice: passed back to it by a notice; not never: dropped by a
notice that started again), and each notice answering then answers once.
Once every hub has stopped, the application's last handler is in place.
"""

from __future__ import annotations

import signal
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from txmailhub.signals import HangupNotice


class NoticeChain(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.before = {s: signal.signal(s, signal.SIG_DFL)
                       for s in (signal.SIGHUP, signal.SIGUSR1)}
        self.answering_before = list(HangupNotice._answering)
        self.notices = [HangupNotice() for _ in range(3)]
        self.calls: list[str] = []
        self.handlers: list[str] = []
        self.grace: list[Deferred[None]] = []
        self._handler()  # the application's, before any hub

    def _handler(self) -> None:
        name = f"handler {len(self.handlers)}"
        found = signal.getsignal(signal.SIGHUP)

        def handler(signum: int, frame: Any) -> None:
            self.calls.append(name)
            if callable(found):
                found(signum, frame)

        signal.signal(signal.SIGHUP, handler)
        self.handlers.append(name)
        self.last = handler

    @rule(which=st.integers(0, 2), privileged=st.booleans())
    def start(self, which: int, privileged: bool) -> None:
        notice = self.notices[which]
        if notice.running:
            return
        if privileged:
            notice.privilegedStartService()
        notice.startService()

    @rule(which=st.integers(0, 2))
    def stop(self, which: int) -> None:
        if self.notices[which].running:
            self.notices[which].stopService()

    @rule(which=st.integers(0, 2))
    def stop_with_grace(self, which: int) -> None:
        if self.notices[which].running:
            others: Deferred[None] = Deferred()
            self.grace.append(others)
            self.notices[which].stop_after(others)

    @precondition(lambda self: self.grace)
    @rule(which=st.integers(0, 2))
    def grace_over(self, which: int) -> None:
        self.grace.pop(which % len(self.grace)).callback(None)

    @rule()
    def application_handler(self) -> None:
        self._handler()

    @rule(raised=st.booleans())
    def sighup(self, raised: bool) -> None:
        waiting = len(reactor.threadCallQueue)
        del self.calls[:]
        if raised:
            signal.raise_signal(signal.SIGHUP)
        else:
            signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        queued = reactor.threadCallQueue[waiting:]
        del reactor.threadCallQueue[waiting:]
        assert sorted(self.calls) == sorted(self.handlers)
        answered = sorted(self.notices.index(f.__self__) for f, _a, _kw in queued)
        assert answered == [i for i, n in enumerate(self.notices) if n in HangupNotice._answering]

    @invariant()
    def running_ones_answer(self) -> None:
        assert all(n in HangupNotice._answering for n in self.notices if n.running)

    def teardown(self) -> None:
        try:
            for others in self.grace:
                others.callback(None)
            for notice in self.notices:
                if notice.running:
                    notice.stopService()
            assert signal.getsignal(signal.SIGHUP) is self.last
        finally:
            HangupNotice._answering[:] = self.answering_before
            for s, h in self.before.items():
                signal.signal(s, h)


NoticeChain.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None)
test_notice_chain = NoticeChain.TestCase
