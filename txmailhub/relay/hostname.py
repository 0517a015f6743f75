"""Connecting to a next hop named by a host name: the smarthost.

MX hosts come from DNS answers as addresses; the smarthost is a name from
the configuration, possibly internationalized.  Twisted's
``HostnameEndpoint`` turns an A-label back into Unicode and hands that to
``getaddrinfo``, whose Python binding encodes it again with IDNA2003
(the ``idna`` codec): ``faß.example`` -- whose IDNA2008 A-label is
``xn--fa-hia.example`` -- was looked up as ``fass.example``, another
domain, perhaps someone else's.  So the name is converted here, once, as
the hub converts every domain (``txmailhub.address.ascii_domain``:
IDNA2008 after the UTS 46 mapping), and ``getaddrinfo`` gets those ASCII
octets (bytes: Python converts nothing), off the reactor thread.  The
addresses are then tried in the order ``getaddrinfo`` gave them, the
families alternating, each started 250 ms after the one before it unless
that one connected, or at once when it failed (RFC 8305, ``eyeballs``):
an address that drops packets no longer holds the next one for the
whole connect timeout.  The first connection made is used.  No address
is started once the attempt's time budget (``[relay]
hosts_time_budget``) is spent.  A name with no IDNA2008 form is not
looked up at all.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import ascii_domain
from txmailhub.interfaces import IStallRecord
from txmailhub.relay.connect_reason import most_telling
from txmailhub.relay.connect_timer import TimedTCPEndpoint
from txmailhub.relay.eyeballs import RaceLost, interleave, race

__all__ = ["MAX_ADDRESSES", "NameEndpoint", "NoAddressConnected", "Resolver", "ascii_name",
           "lookup_name"]

# Addresses of one name tried per connection, at most (each may take the
# connect timeout); as many as an attempt tries for a domain's MX hosts.
MAX_ADDRESSES = 10

Resolver = Callable[[str, int], "defer.Deferred[list[tuple[int, str]]]"]


class NoAddressConnected(ConnectError):
    """No address of a name took the connection: ``failures`` are the
    errors of those started, in the order they were started."""

    def __init__(self, string: str, failures: list[Failure]) -> None:
        super().__init__(string=string)
        self.failures = failures

    def telling(self) -> BaseException | None:
        """The error that says most of why (``connect_reason.most_telling``)."""
        if not self.failures:
            return None
        return self.failures[most_telling([why.value for why in self.failures])].value


def ascii_name(name: str) -> str:
    """``name`` as DNS is asked for it: its IDNA2008 A-labels (as every
    domain the hub looks up); ``DNSLookupError`` when it has none."""
    converted = ascii_domain(name)
    if not converted.isascii():
        raise DNSLookupError(f"{name} has no IDNA2008 (RFC 5891) form, so no name in DNS "
                             "can be it")
    return converted


def lookup_name(name: str, port: int) -> list[tuple[int, str]]:
    """The ``(family, address)`` pairs of ``name`` for a TCP connection,
    in ``getaddrinfo``'s order, each once.  Blocking: run it in a thread."""
    asked = ascii_name(name)
    try:
        infos = socket.getaddrinfo(asked.encode("ascii"), port, 0, socket.SOCK_STREAM)
    except OSError as e:  # socket.gaierror: no such name, no answer
        shown = asked if asked == name else f"{name} ({asked})"
        raise DNSLookupError(f"{shown}: {e.strerror or e}") from None
    out: list[tuple[int, str]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        pair = (family, sockaddr[0])
        if pair not in out:
            out.append(pair)
    return out


@implementer(IStreamClientEndpoint)
class NameEndpoint:
    """Connects to ``name``:``port``: ``resolve(name, port)`` (a Deferred
    of ``lookup_name``'s pairs) and then TCP to its addresses with
    ``timeout``, with staggered starts (``eyeballs.race``).  No address
    after the first is started once ``budget``
    seconds (``None``: no limit) have passed since ``connect`` -- the
    agent's ``hosts_time_budget``, which the addresses of one name would
    otherwise escape (ten that never answer take five minutes).
    Cancelling the connect cancels what is under way.  ``stalls``: the
    hub's ``IStallRecord``, whose stalls the connect timeout gives back
    (``connect_timer``)."""

    def __init__(self, reactor: Any, name: str, port: int, timeout: float,
                 resolve: Resolver, budget: float | None = None,
                 stalls: IStallRecord | None = None) -> None:
        self._stalls = stalls
        self._reactor = reactor
        self._name = name
        self._port = port
        self._timeout = timeout
        self._resolve = resolve
        self._budget = budget

    def connect(self, factory: Any) -> defer.Deferred:
        began = self._reactor.seconds()
        under_way: list[defer.Deferred] = []  # the lookup, then the race
        cancelled: list[bool] = []

        def cancel(_: defer.Deferred) -> None:
            # a TCP connect cancelled fails at once with its own error
            # (ConnectingCancelledError): no other address is tried then
            cancelled.append(True)
            for d in list(under_way):
                d.cancel()

        result: defer.Deferred = defer.Deferred(cancel)

        def resolved(addresses: list[tuple[int, str]]) -> None:
            if result.called or cancelled:
                return
            if not addresses:
                result.errback(DNSLookupError(f"{self._name} has no address"))
                return
            chosen = interleave(addresses, lambda pair: pair[0])[:MAX_ADDRESSES]
            d = race(self._reactor, [partial(self._connect_one, pair, factory)
                                     for pair in chosen], may_start=within_budget)
            under_way[:] = [d]
            d.addCallbacks(lambda won: None if result.called else result.callback(won[1]),
                           lost, errbackArgs=(chosen,))

        def within_budget() -> bool:
            budget = self._budget
            return budget is None or self._reactor.seconds() - began < budget

        def lost(f: Failure, chosen: list[tuple[int, str]]) -> None:
            if result.called or cancelled:
                return
            if not f.check(RaceLost):
                result.errback(f)
                return
            failed = "; ".join(f"{chosen[n][1]}: {why.getErrorMessage()}"
                               for n, why in f.value.failures)
            left = f.value.unstarted
            started = [why for _, why in sorted(f.value.failures, key=lambda nf: nf[0])]
            if left:
                result.errback(NoAddressConnected((
                    f"no address of {self._name} took the connection within "
                    f"{self._budget:g} seconds ({failed}); {left} not tried before the "
                    "next retry"), started))
            else:
                result.errback(NoAddressConnected(f"no address of {self._name} took the "
                                                  f"connection ({failed})", started))

        def not_resolved(f: Any) -> None:
            if not (result.called or cancelled):
                result.errback(f)

        lookup = self._resolve(self._name, self._port)
        under_way[:] = [lookup]
        lookup.addCallbacks(resolved, not_resolved)
        return result

    def _connect_one(self, pair: tuple[int, str], factory: Any) -> defer.Deferred:
        _family, address = pair
        return TimedTCPEndpoint(self._reactor, address, self._port, self._timeout,
                                self._stalls).connect(factory)
