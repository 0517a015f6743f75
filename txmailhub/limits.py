"""How much one client may take: connections, and failed logins.

SMTP and POP3 each keep one ``ConnectionLimits`` (shared by all their
listeners): a client that opens connections without end must run into a
refusal long before the process runs out of file descriptors.  Clients
are counted by ``client_key``: an IPv4 address, or an IPv6 /64."""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from txmailhub.address import client_key

__all__ = ["REFUSALS_WAITING", "ConnectionLimits", "FailureWindow", "GoneWaiters",
           "login_session"]

#: refused connections (past the connection limits) that may wait for their
#: polite close at a time, per protocol.  Under implicit TLS the refusal
#: waits for the client's handshake and close_notify (up to the protocols'
#: ``CLOSE_GRACE``), and such a connection holds no slot: without a bound,
#: a client opening connections it never shakes hands on held a file
#: descriptor and some 60 KiB for each, however many, past every limit.
REFUSALS_WAITING = 64

_key = functools.lru_cache(maxsize=4096)(client_key)

# one number per connection, never given twice in a process (an ``id``
# may be: a later connection would take a gone one's failures for its own)
_sessions = itertools.count(1)


def login_session() -> int:
    """A new connection's mark for ``FailureWindow``: the failures a login
    on it forgets are those of its own name made on it."""
    return next(_sessions)


def _name_tag(name: str | None) -> bytes | None:
    """What ``FailureWindow`` keeps of a login name: 16 octets that tell
    one name from another (BLAKE2b), never the name itself.  A failed
    login's name is the client's to choose, up to some 9000 characters in
    an SMTP AUTH PLAIN message, and a client's record stays until
    ``keep`` others push it out: names kept whole would make the window's
    memory grow with their length (10,000 clients x 10 failures x 9000
    characters, some 900 MB), where the window promises a bound.  Every
    ``str`` has its own UTF-8 form (a lone surrogate from a POP3 name
    that is not UTF-8 included: ``surrogatepass``)."""
    if name is None:
        return None
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ConnectionLimits:
    """Open connections, in total and per client key."""

    def __init__(self) -> None:
        self.connections = 0
        self.per_client: dict[str, int] = {}
        #: refused connections still open, waiting for their polite close
        self.refusals_waiting = 0
        #: the transports of those connections (the ones ``refusal_may_wait``
        #: was given), each with the factory that refused it: cut by
        #: ``end_refusals`` when its listener stops
        self.refused: dict[Any, Any] = {}

    def refusal_may_wait(self, transport: Any = None, owner: Any = None) -> bool:
        """Count a refused connection that is to get its reply and a polite
        close; ``False`` when ``REFUSALS_WAITING`` already wait: that one
        is to be cut at once, without a reply (it holds no slot, and
        nothing else bounds how many of them there are).  ``transport``
        is remembered until ``refusal_closed``, for ``end_refusals``,
        with ``owner`` (the factory of the listener that refused it)."""
        if self.refusals_waiting >= REFUSALS_WAITING:
            return False
        self.refusals_waiting += 1
        if transport is not None:
            self.refused[transport] = owner
        return True

    def refusal_closed(self, transport: Any = None) -> None:
        """A refused connection counted by ``refusal_may_wait`` is gone."""
        self.refusals_waiting -= 1
        self.refused.pop(transport, None)

    def end_refusals(self, owner: Any = None) -> None:
        """The hub is stopping: cut the refused connections still waiting
        for their polite close.  They hold no slot, so no session's end
        closes them: under implicit TLS each waited for the client's
        handshake and ``close_notify`` for up to the protocols'
        ``CLOSE_GRACE`` after the hub had stopped, an open descriptor and a
        timer on the reactor of an application that carries on.  Their
        reply was sent already, or was to wait for a handshake the client
        had not made.  ``owner``: only those of that factory's listeners
        (the others may keep running); ``None``: all."""
        for transport, by in list(self.refused.items()):
            if owner is None or by is owner:
                transport.abortConnection()

    def admit(self, host: str, exempt: bool, max_total: int, max_per_client: int) -> str | None:
        """Count a new connection from ``host``; or ``"total"``/``"client"``,
        the limit that refuses it (``exempt``: no per-client limit)."""
        if self.connections >= max_total:
            return "total"
        key = _key(host)
        per_client = self.per_client
        if not exempt and per_client.get(key, 0) >= max_per_client:
            return "client"
        self.connections += 1
        per_client[key] = per_client.get(key, 0) + 1
        return None

    def release(self, host: str) -> None:
        self.connections -= 1
        key = _key(host)
        n = self.per_client.get(key, 0) - 1
        if n > 0:
            self.per_client[key] = n
        else:
            self.per_client.pop(key, None)


class GoneWaiters:
    """Deferreds that fire once every one of a set of sessions is gone:
    what a stop waits for (SMTP sessions that must be over, POP3 sessions
    whose QUIT deletions must be done).  Each wait counts the sessions
    named when it began; sessions that come later do not hold it."""

    def __init__(self) -> None:
        self._waits: list[tuple[set[Hashable], Deferred]] = []

    def wait(self, sessions: Iterable[Hashable]) -> Deferred:
        """Fires once all of ``sessions`` are ``gone`` (at once if none)."""
        waiting = set(sessions)
        if not waiting:
            return succeed(None)
        d: Deferred = Deferred()
        self._waits.append((waiting, d))
        return d

    def gone(self, session: Hashable) -> None:
        if not self._waits:
            return
        done = []
        for waiting, d in self._waits:
            waiting.discard(session)
            if not waiting:
                done.append(d)
        if done:
            self._waits = [(w, d) for w, d in self._waits if w]
            for d in done:
                d.callback(None)


class FailureWindow:
    """Failed logins per client over a sliding window, shared by SMTP AUTH
    and POP3 (the same passwords): past ``limit`` failures in ``window``
    seconds a client gets a temporary refusal without a password check.

    The per-connection delay and disconnect alone do not stop a brute
    force: a client that reconnects, or hangs up as soon as no quick
    success came, is never slowed down.  Failures are counted when the
    check ends, not when the delayed answer goes out.  At most ``keep``
    clients are remembered (the client whose last failure is oldest is
    forgotten first), so memory is bounded whatever the attacker's
    addresses (and whatever names their failed logins give: a name is
    kept as a 16-octet tag, ``_name_tag``).

    Each failure remembers the name whose login failed and the connection
    it failed on (``login_session``), so that a successful login forgets
    the failures of its own name made earlier on its own connection
    (``succeeded``): a user who mistyped a password and then got it right
    in the same session does not carry those mistakes toward the limit for
    the rest of the window.  Only those, which are that client's own: a
    client that holds one account and guesses the passwords of others
    gains nothing by logging in to its own between guesses (forgetting
    every failure of the address would give it as many guesses as it has
    logins), and whoever shares an address with a user (a NAT, an IPv6
    /64) and guesses that user's password on connections of its own gets
    none of them back when the user logs in -- as forgetting the name's
    failures from the address did, once per login of the user's mail
    client.  The address's count a guesser builds is never reset by a
    login: it ends with the window.
    """

    def __init__(self, clock: Any, limit: int = 10, window: float = 600.0,
                 keep: int = 10_000) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.keep = keep
        # per client, oldest first: each failure's time, the tag of the
        # name whose login failed (``_name_tag``; None where no name was
        # given: a malformed response) and the connection it failed on
        # (``login_session``; None: none given, never forgotten)
        self._failures: dict[str, deque[tuple[float, bytes | None, int | None]]] = {}

    def _recent(self, host: str) -> deque[tuple[float, bytes | None, int | None]] | None:
        times = self._failures.get(_key(host))
        if times is not None:
            horizon = self.clock.seconds() - self.window
            while times and times[0][0] <= horizon:
                times.popleft()
        return times

    def failed(self, host: str, user: str | None = None, session: int | None = None) -> None:
        """Count a failure of ``user``'s login (the name as it was checked;
        None for a response that named nobody) on the connection
        ``session`` (``login_session``).  The dict is kept in the
        order of each client's last failure (a client that fails again
        moves to its end), so the client forgotten when ``keep`` are
        remembered is the one whose last failure is oldest -- a client
        whose failures all expired before any that failed within the
        window -- never one failing now (more than ``keep`` addresses
        would otherwise push out the record of the client that is
        guessing)."""
        key = _key(host)
        failures = self._failures
        times = self._recent(host)
        if times is None:
            if len(failures) >= self.keep:
                del failures[next(iter(failures))]
            times = deque(maxlen=self.limit)
        else:
            del failures[key]  # put back below: at the end
        failures[key] = times
        times.append((self.clock.seconds(), _name_tag(user), session))

    def succeeded(self, host: str, user: str, session: int) -> None:
        """``user`` logged in from ``host`` on the connection ``session``:
        forget the failures of that name made on that connection, not
        those of other names, of responses that named nobody, or of the
        name on other connections (another client of the address may have
        made them).  ``user`` is the name as it was checked, as ``failed``
        got it (SMTP AUTH and POP3 both qualify a bare name with the
        primary domain)."""
        times = self._recent(host)
        if not times:
            return
        tag = _name_tag(user)
        kept = [t for t in times if t[1] != tag or t[2] != session]
        if len(kept) == len(times):
            return
        if kept:
            times.clear()
            times.extend(kept)
        else:
            del self._failures[_key(host)]

    def blocked(self, host: str) -> bool:
        times = self._recent(host)
        return times is not None and len(times) >= self.limit
