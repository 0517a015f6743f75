"""Jobs that take turns by client: at most ``limit`` run at once, and the
waiting ones are started one client at a time.

Password checks (scrypt, slow on purpose) are the job: with one queue in
arrival order, a client that opens as many connections as it may and logs
in on each (a guesser, or a script with a right password that reconnects
in a loop) put every other client's login behind all of its own.  Taking
turns by client, a login waits for about one check per other client that
has some waiting, however many each of them queued."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["FairTurns"]


class FairTurns:
    """Like ``DeferredSemaphore(limit).run``, with a queue per client key
    served in rotation instead of one queue in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        # client key -> its waiting jobs; dict order is the rotation (a
        # client whose job starts goes to the back if it has more)
        self._waiting: dict[str, deque[tuple[Deferred, Callable[..., Any], tuple]]] = {}
        self._starting = False

    @property
    def waiting(self) -> int:
        """Jobs not started yet."""
        return sum(map(len, self._waiting.values()))

    def run(self, client: str, f: Callable[..., Any], *args: Any) -> Deferred:
        """``f(*args)`` once it has its turn; fires with its result."""
        d: Deferred = Deferred()
        self._waiting.setdefault(client, deque()).append((d, f, args))
        self._start()
        return d

    def _start(self) -> None:
        # A loop, not recursion: jobs that end at once (a check skipped
        # because its client left) would otherwise nest one call per job.
        if self._starting:
            return
        self._starting = True
        try:
            waiting = self._waiting
            while self.running < self.limit and waiting:
                client = next(iter(waiting))
                queue = waiting.pop(client)
                d, f, args = queue.popleft()
                if queue:
                    waiting[client] = queue  # to the back of the rotation
                self.running += 1
                maybeDeferred(f, *args).addBoth(self._done, d)
        finally:
            self._starting = False

    def _done(self, result: Any, d: Deferred) -> None:
        self.running -= 1
        self._start()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
