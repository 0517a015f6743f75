"""How many connections a listener family takes, in all and per client.

SMTP and POP3 each keep one ``ConnectionLimits`` (shared by all their
listeners): a client that opens connections without end must run into a
refusal long before the process runs out of file descriptors.  Clients
are counted by ``client_key``: an IPv4 address, or an IPv6 /64."""

from __future__ import annotations

import functools

from txmailhub.address import client_key

__all__ = ["ConnectionLimits"]

_key = functools.lru_cache(maxsize=4096)(client_key)


class ConnectionLimits:
    """Open connections, in total and per client key."""

    def __init__(self) -> None:
        self.connections = 0
        self.per_client: dict[str, int] = {}

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
