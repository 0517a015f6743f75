"""The relay as a Twisted service: queue + MX resolver + agent + runner.

Owns the assembly of the outbound side from the ``Components``:
``RelayService(components)`` builds the durable queue (exposed as
``.queue`` so the hub can put it into ``components.queue`` before the
SMTP factories are made), the MX resolver (``[relay] nameservers`` or the
system resolver), the delivery agent (with the memory of hosts that
offered TLS, ``state_dir/relay/tls-seen.json``, loaded at start) and the
runner; ``startService`` resumes every queued entry, ``stopService`` stops picking new ones and
gives attempts in flight a few seconds (whatever is unfinished stays on
disk and is retried at the next start).

It must not listen on anything or parse configuration.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from txmailhub.relay.attempt import DeliveryAgent, thread_runner
from txmailhub.relay.mx import (
    DNS_FAILURE_MEMORY,
    DNS_FAILURE_MEMORY_MAX,
    MXResolver,
    make_resolver,
)
from txmailhub.relay.queue import OutboundQueue
from txmailhub.relay.runner import QueueRunner
from txmailhub.relay.tls_memory import TLSMemory, memory_path

log = Logger()


def route_description(relay: Any) -> str:
    """Where outbound mail goes, in the words of the config (``[relay]``):
    logged at start, so that whoever reads the log sees which of the two
    routes the hub took without opening the config."""
    if relay.smarthost:
        auth = ", with AUTH from smarthost_auth_file" if relay.smarthost_auth_file else ""
        return (f"relay: outbound mail goes to the smarthost {relay.smarthost} "
                f"(smarthost_tls = \"{relay.smarthost_tls}\"{auth})")
    return (f"relay: outbound mail goes to each domain's MX hosts, port {relay.port} "
            "(no [relay] smarthost)")

__all__ = ["RelayService"]


class RelayService(Service):
    """Outbound mail for one hub.

    Optional injections for tests and embedding: ``resolver`` (a
    twisted.names resolver), ``endpoint(host, port)`` (client endpoints),
    ``io`` (runs blocking file work: the queue's, the 7-bit conversion,
    the TLS memory's writes), ``rng`` (MX shuffling),
    ``trust_root`` and ``tls_options`` (outbound TLS)."""

    name = "relay"

    def __init__(
        self,
        components: Any,
        *,
        resolver: Any = None,
        endpoint: Callable[[str, int], Any] | None = None,
        io: Callable[..., defer.Deferred] | None = None,
        rng: random.Random | None = None,
        trust_root: Any = None,
        tls_options: Callable[[str, bool], Any] | None = None,
    ) -> None:
        settings = components.settings
        reactor = components.reactor
        self.components = components
        # the hub's syncer, when it has one (txmailhub.store.sync)
        self._io = io or thread_runner(reactor)
        self.queue = OutboundQueue(settings.queue_dir, reactor, io=self._io,
                                   syncer=getattr(components, "syncer", None))
        self._resolver = resolver
        self._endpoint = endpoint
        self._rng = rng
        self._trust_root = trust_root
        self._tls_options = tls_options
        self.mx: MXResolver | None = None
        self._dns: Any = None  # the resolver the relay built (not one it was given)
        self.agent: DeliveryAgent | None = None
        self.runner: QueueRunner | None = None

    def _build(self) -> None:
        c = self.components
        s = c.settings
        resolver = self._resolver
        if resolver is None:
            # ours: stopped and started with the relay (one given is its owner's)
            resolver = self._dns = make_resolver(s.relay.nameservers, reactor=c.reactor)
        # a domain's temporary DNS failure is remembered until the shortest
        # retry step is over (at most a few minutes): an entry's own retry
        # asks again, the other entries for it meanwhile do not
        memory = min(min(s.relay.retry_schedule, default=DNS_FAILURE_MEMORY),
                     DNS_FAILURE_MEMORY_MAX)
        self.mx = MXResolver(resolver, c.reactor, s.hub.hostname, listening=c.listening,
                             port=s.relay.port, rng=self._rng, dns_failure_memory=memory)
        tls_memory = TLSMemory(memory_path(s.hub.state_dir), c.reactor, self._io)
        tls_memory.load()
        # the hub's record of its reactor's stalls (components.stalls, which
        # MailHub starts): the sessions' timers do not charge them to the
        # next hop.  Components without one: none is credited.
        self.agent = DeliveryAgent(s, self.mx, c.reactor, endpoint=self._endpoint,
                                   trust_root=self._trust_root, tls_options=self._tls_options,
                                   run_blocking=self._io, tls_memory=tls_memory,
                                   stalls=getattr(c, "stalls", None))
        self.runner = QueueRunner(self.queue, self.agent, c, c.reactor)

    def startService(self) -> None:
        super().startService()
        if self.runner is None:
            self._build()
        else:  # a restart: the resolver stopped with the last run
            assert self.mx is not None
            self.mx.forget()  # its lookups given up are no DNS failures
            start = getattr(self._dns, "start", None)
            if start is not None:
                start()
        assert self.runner is not None and self.mx is not None
        # the host name's addresses (mail loops through a wildcard
        # listener), in a thread: a slow DNS server does not hold up the start
        self.mx.learn_own_addresses(self._io)
        log.info("{route}", route=route_description(self.components.settings.relay))
        self.runner.start()

    def stopService(self) -> defer.Deferred | None:
        super().stopService()
        if self.runner is None:
            return None
        return self.runner.stop().addBoth(self._stop_dns)

    def abandon(self) -> defer.Deferred | None:
        """Stop without the grace: what is in flight is given up at once (a
        start that failed part way undoes itself this way)."""
        if not self.running:
            return None
        super().stopService()
        if self.runner is None:
            return None
        return self.runner.stop(grace=0).addBoth(self._stop_dns)

    def _stop_dns(self, result: Any) -> Any:
        """Once the attempts are over, stop the resolver: its timers (the
        look at resolv.conf every minute, a cached answer's expiry) and a
        query's resends outlived the relay on a reactor that runs on.  Not
        when the relay was started again meanwhile (a quick restart)."""
        stop = getattr(self._dns, "stop", None)
        if not self.running and stop is not None:
            stop()
        return result
