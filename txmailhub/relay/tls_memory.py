"""Which mail exchangers have offered STARTTLS, remembered across restarts.

Owns ``TLSMemory``: the set of MX host names that offered TLS in some
session, each with the time it was last seen doing so.  The delivery
agent (``txmailhub.relay.attempt``) asks ``seen(host)`` to treat a later
session without STARTTLS as a downgrade, and calls ``offered(host)``
after every session that offered it and completed the handshake (a host
whose TLS never worked is no downgrade: ``DeliveryAgent._note_tls``).

On disk it is one small JSON file, ``state_dir/relay/tls-seen.json``
(``{"version": 1, "hosts": {"mx.example.net": 1795000000.0, ...}}``),
replaced with ``txmailhub.store.sync.durable_write`` -- through the
injected ``run_blocking``, so never on the reactor thread in a running
hub.  It is written when a host is first seen offering TLS, and again
at most once a day per host to move its date forward (not on every
delivery).  A host not seen offering TLS for ``max_age`` (30 days) is
forgotten, and at most ``max_hosts`` are kept (the oldest go first), so
the file stays small.  A missing file is an empty memory; an unreadable
or malformed one is logged and ignored (the next write replaces it):
never fatal.  It knows nothing about SMTP sessions or the queue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmailhub.regular_file import read_regular
from txmailhub.store.sync import durable_write, makedirs_durably

__all__ = ["MAX_AGE", "MAX_HOSTS", "REFRESH", "TLSMemory", "memory_path"]

log = Logger(namespace="txmailhub.relay.tls_memory")

MAX_AGE = 30 * 86400.0
MAX_HOSTS = 10000
REFRESH = 86400.0  # a known host's date is written again at most this often
#: octets of the file read at most: MAX_HOSTS names of 253 octets take under 3 MiB
_READ_MAX = 4 * 1024 * 1024
FILE_NAME = "tls-seen.json"


def memory_path(state_dir: str) -> str:
    return os.path.join(state_dir, "relay", FILE_NAME)


def _inline(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    return defer.maybeDeferred(f, *args)


def _write(path: str, data: bytes) -> None:
    # relay/ made the first time: its own name durable too, or the file
    # durable_write made durable in it could go with it in a crash
    makedirs_durably(os.path.dirname(path), mode=0o700)
    durable_write(path, data, 0o600)


class TLSMemory:
    """Hosts seen offering STARTTLS (see the module docstring).

    ``path`` is the JSON file (``None``: in memory only); ``clock``
    gives ``seconds()``; ``run_blocking(f, *args) -> Deferred`` runs the
    file write (default: at once, for tests and tools)."""

    def __init__(self, path: str | None, clock: Any,
                 run_blocking: Callable[..., defer.Deferred] | None = None,
                 max_age: float = MAX_AGE, max_hosts: int = MAX_HOSTS) -> None:
        self.path = path
        self.clock = clock
        self.run_blocking = run_blocking or _inline
        self.max_age = max_age
        self.max_hosts = max_hosts
        self._hosts: dict[str, float] = {}  # host -> last seen offering TLS
        self._written: dict[str, float] = {}  # host -> the date the file has
        self._writing: defer.Deferred | None = None
        self._again = False
        self._waiters: list[defer.Deferred] = []
        #: file writes started (for tests)
        self.writes = 0

    # --- reading -----------------------------------------------------------------

    def load(self) -> None:
        """Read the file (synchronous, small; at service start)."""
        if self.path is None:
            return
        try:
            # never a plain open: one of a FIFO put there would wait for a
            # writer for ever, and the hub's start with it
            raw, _ = read_regular(self.path, limit=_READ_MAX)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("cannot read {path} ({why}); starting without it", path=self.path,
                      why=str(e))
            return
        try:
            doc = json.loads(raw)
            hosts = doc["hosts"]
            if doc.get("version") != 1 or not isinstance(hosts, dict):
                raise ValueError("not a version 1 record")
            loaded = {str(h).lower(): float(t) for h, t in hosts.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("{path} is unreadable ({why}); ignored, it will be rewritten",
                      path=self.path, why=str(e))
            return
        self._hosts = loaded
        self._written = dict(loaded)
        self._expire()

    def seen(self, host: str) -> bool:
        """Whether ``host`` offered STARTTLS within ``max_age``."""
        when = self._hosts.get(host.lower())
        return when is not None and self.clock.seconds() - when <= self.max_age

    def __contains__(self, host: object) -> bool:
        return isinstance(host, str) and self.seen(host)

    def hosts(self) -> list[str]:
        return sorted(h for h in self._hosts if self.seen(h))

    # --- recording ---------------------------------------------------------------

    def offered(self, host: str) -> defer.Deferred:
        """``host`` offered STARTTLS now.  Fires when whatever had to be
        written is on disk (at once when nothing had to be); never errbacks."""
        host = host.lower()
        now = self.clock.seconds()
        self._hosts[host] = now
        written = self._written.get(host)
        if written is not None and now - written < REFRESH and now - written <= self.max_age:
            return defer.succeed(None)
        self._expire()
        return self._save()

    add = offered  # set-like, for callers that treat it as a set of hosts

    def _expire(self) -> None:
        now = self.clock.seconds()
        for host in [h for h, t in self._hosts.items() if now - t > self.max_age]:
            del self._hosts[host]
        if len(self._hosts) > self.max_hosts:
            keep = sorted(self._hosts.items(), key=lambda item: item[1])[-self.max_hosts:]
            self._hosts = dict(keep)

    def _save(self) -> defer.Deferred:
        if self.path is None:
            self._written = dict(self._hosts)
            return defer.succeed(None)
        if self._writing is not None:  # one write at a time; the next one takes it all
            self._again = True
            waiter: defer.Deferred = defer.Deferred()
            self._waiters.append(waiter)
            return waiter
        snapshot = dict(self._hosts)
        data = json.dumps({"version": 1, "hosts": snapshot}, sort_keys=True,
                          indent=0).encode() + b"\n"
        self.writes += 1
        d = self.run_blocking(_write, self.path, data)
        self._writing = d

        def done(result: Any) -> None:
            self._writing = None
            if isinstance(result, Failure):
                log.error("cannot write {path} ({why}); the TLS memory stays in RAM",
                          path=self.path, why=result.getErrorMessage())
            else:
                self._written = snapshot
            if self._again:
                self._again = False
                waiters, self._waiters = self._waiters, []
                self._save().addCallback(lambda _: [w.callback(None) for w in waiters])

        return d.addBoth(done)
