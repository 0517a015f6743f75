"""Next hops that refuse AUTH= on MAIL, remembered for a while (in memory).

Owns ``AuthParamMemory``: the (host, port) pairs whose server offered
AUTH but refused a MAIL carrying the RFC 4954 section 5 ``AUTH=``
parameter and then took the same MAIL without it, each with the time it
was remembered.  The delivery agent (``txmailhub.relay.attempt``) asks
``refuses(host, port)`` before a session, to leave ``AUTH=`` off MAIL
there instead of paying a refused MAIL in every session, and calls
``remember(host, port)`` after a session that showed it.

A host is kept for ``max_age`` (24 hours: then ``AUTH=`` is tried again,
in case its software changed), and at most ``max_hosts`` are kept (the
oldest go first), so the table stays small whatever the queue holds.
Nothing is written to disk: after a restart each such host costs one
refused MAIL again.  Time comes from the injected clock's ``seconds()``.
It knows nothing about SMTP sessions or the queue.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["MAX_AGE", "MAX_HOSTS", "AuthParamMemory"]

MAX_AGE = 86400.0
MAX_HOSTS = 4096


def _key(host: str, port: int) -> tuple[str, int]:
    return host.lower().rstrip("."), port


class AuthParamMemory:
    """Next hops known to refuse ``AUTH=`` on MAIL (see the module docstring).

    ``clock`` gives ``seconds()`` (an ``IReactorTime``)."""

    def __init__(self, clock: Any, max_age: float = MAX_AGE,
                 max_hosts: int = MAX_HOSTS) -> None:
        if max_hosts < 1:
            raise ValueError("max_hosts must be at least 1")
        self.clock = clock
        self.max_age = max_age
        self.max_hosts = max_hosts
        # (host, port) -> when remembered; oldest first
        self._hosts: OrderedDict[tuple[str, int], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def refuses(self, host: str, port: int) -> bool:
        """Whether ``AUTH=`` should be left off MAIL to ``host``:``port``."""
        key = _key(host, port)
        when = self._hosts.get(key)
        if when is None:
            return False
        # a clock set back must not stretch the time a host is kept
        if 0 <= self.clock.seconds() - when < self.max_age:
            return True
        del self._hosts[key]
        return False

    def remember(self, host: str, port: int) -> bool:
        """``host``:``port`` refused ``AUTH=`` and took MAIL without it;
        true when it was not remembered already (the caller logs it once)."""
        new = not self.refuses(host, port)
        key = _key(host, port)
        self._hosts.pop(key, None)
        self._hosts[key] = self.clock.seconds()
        while len(self._hosts) > self.max_hosts:
            self._hosts.popitem(last=False)
        return new
