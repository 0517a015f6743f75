"""The relay's DNS answer cache, bounded in time and in size.

twisted.names' ``CacheResolver`` keeps each answer for its smallest TTL
and has no limit on how many it keeps.  A TTL is the answering server's
choice (up to 68 years), and the domains the relay looks up are partly
chosen by strangers: a notice goes to the domain of whatever sender a
message claims, so anyone could fill the cache with answers of their own
domains that never expire.  Recursive resolvers cap both (Unbound keeps an
answer a day at most by default); so does this cache."""

from __future__ import annotations

from typing import Any

from twisted.names import cache

__all__ = ["MAX_ENTRIES", "MAX_TTL", "BoundedCache"]

#: seconds an answer is kept at most, whatever its TTL
MAX_TTL = 86400
#: answers kept at most; the oldest goes first
MAX_ENTRIES = 10000


class BoundedCache(cache.CacheResolver):
    """``CacheResolver`` that keeps an answer ``max_ttl`` seconds at most
    and ``max_entries`` answers at most (dropping the oldest)."""

    def __init__(self, reactor: Any = None, max_ttl: int = MAX_TTL,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        super().__init__(reactor=reactor)

    def cacheResult(self, query: Any, payload: Any, cacheTime: float | None = None) -> None:
        # a fresh answer goes to the end of the order (dict order is the age)
        self.cache.pop(query, None)
        super().cacheResult(query, payload, cacheTime)
        expiry = self.cancel[query]
        if expiry.getTime() - self._reactor.seconds() > self.max_ttl:
            expiry.reset(self.max_ttl)
        while len(self.cache) > self.max_entries:
            oldest = next(iter(self.cache))
            self.cancel[oldest].cancel()
            self.clearEntry(oldest)

    def stop(self) -> None:
        """Forget every answer (the relay has stopped, the reactor runs on):
        each answer kept a timer on the reactor until it expired, up to
        ``max_ttl`` (a day) after the hub had stopped, and with it the
        cache.  A start after this asks the DNS again."""
        for expiry in self.cancel.values():
            if expiry.active():
                expiry.cancel()
        self.cancel.clear()
        self.cache.clear()

    def start(self) -> None:
        """Nothing to start: answers are kept as they come."""
