"""Where mail for a domain goes: MX resolution with twisted.names.

Owns the RFC 5321 section 5.1 rules: MX records sorted by preference with
equal preferences shuffled, the implicit MX (the domain's own AAAA/A when
it has no MX), the null MX of RFC 7505, address literals
(``[192.0.2.1]``, ``[IPv6:2001:db8::1]``), the addresses of each MX host
(IPv6 first, then IPv4), mail loops (an MX that is this hub: by name or
by an address:port it listens on; RFC 5321 says to drop it and every
less preferred MX), and a short memory of hosts that just failed, so the
next message tries the healthy ones first.

It must not connect anywhere: it only asks the injected resolver.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.names import dns, resolve
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from zope.interface import implementer

from txmailhub.address import (
    address_literal,
    ascii_domain,
    client_ip,
    dns_name_problem,
    ipv4_literal,
    ipv6_literal,
    written_domain,
)
from txmailhub.interfaces import IMXResolver
from txmailhub.logsafe import loggable

__all__ = [
    "CNAMEError",
    "DNSError",
    "HostHealth",
    "MXHost",
    "MXResolver",
    "MailLoop",
    "NoSuchDomain",
    "NullMX",
    "PermanentDNSError",
    "RememberedDNSError",
    "TemporaryDNSError",
    "make_resolver",
    "parse_literal",
]

log = Logger(namespace="txmailhub.relay.mx")

FAILED_HOST_MEMORY = 600  # seconds a failed host stays at the back of the line
# Seconds a domain's temporary DNS failure (a timeout, SERVFAIL, ...) is
# remembered: the resolutions asked for meanwhile fail with it at once,
# without a query (RFC 5321 4.5.4.1: not every message retries a
# destination that just failed).  A domain whose servers never answer
# made one lookup of a minute per queued entry, ``max_per_destination``
# at a time, while mail for other domains waited.  The relay passes its
# shortest retry step (``RelayService``), capped at DNS_FAILURE_MEMORY_MAX,
# so an entry's own next retry asks the DNS again.
DNS_FAILURE_MEMORY = 60.0
DNS_FAILURE_MEMORY_MAX = 300.0
FAILED_HOSTS_KEPT = 10000  # failed hosts remembered at most
# Once there is somewhere to go, how long the other address lookups may
# still take: a name server that never answers (a backup MX's, or one that
# drops AAAA queries) would hold every message for the resolver's whole
# timeout (a minute) while a good host waits
ADDRESS_GRACE = 5.0
# How many MX hosts (the most preferred) have their addresses looked up;
# an attempt connects to 10 addresses at most (attempt.py)
MAX_MX_HOSTS = 20
# How many such rounds of MAX_MX_HOSTS an attempt looks up, one after the
# other, while no host of the rounds before has an address
MAX_MX_ROUNDS = 5
# How many more queries a lookup makes to follow a CNAME chain whose end
# the answer did not include (RFC 5321 5.1: the name a CNAME gives "is
# processed as if it were the initial name")
MAX_CNAME_HOPS = 8
# Seconds after the first query of a lookup past which no further query
# of its CNAME chain is started: each query may take twisted.names' whole
# timeout (a minute), so MAX_CNAME_HOPS of them, one after the other, made
# one lookup take up to nine minutes instead of one
CNAME_CHASE_TIME = 60.0
# How many such queries one MX resolution makes in all, over its MX lookup
# and every host's address lookups: MAX_CNAME_HOPS per lookup, times the
# MAX_MX_HOSTS * 2 lookups of MAX_MX_ROUNDS rounds, let a domain of 100 MX
# hosts named by unfinished chains make 1,800 queries an attempt, not 200.
# Enough for the longest MX chain and one link for each lookup of a round
MAX_CNAME_QUERIES = MAX_CNAME_HOPS + 2 * MAX_MX_HOSTS


class DNSError(Exception):
    """Mail for a domain cannot be routed; ``reason`` says why, for people."""

    permanent = False

    def __init__(self, domain: str, reason: str) -> None:
        super().__init__(f"{domain}: {reason}")
        self.domain = domain
        self.reason = reason


class PermanentDNSError(DNSError):
    permanent = True


class NullMX(PermanentDNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


class NoSuchDomain(PermanentDNSError):
    """NXDOMAIN, or a domain with neither MX nor address records."""


class MailLoop(PermanentDNSError):
    """Every usable MX is this hub itself."""


class TemporaryDNSError(DNSError):
    """SERVFAIL, a timeout, a refused query: try again later."""


class RememberedDNSError(TemporaryDNSError):
    """A domain's temporary DNS failure, remembered: the same ``reason``
    as the lookup that failed ``age`` seconds ago, given without a query."""

    def __init__(self, domain: str, reason: str, age: float) -> None:
        super().__init__(domain, reason)
        self.age = age


class CNAMEError(TemporaryDNSError):
    """A CNAME chain that loops, or is longer than ``MAX_CNAME_HOPS``
    queries can follow: what a recursive resolver answers SERVFAIL for."""


@dataclass(frozen=True, slots=True)
class MXHost:
    """One mail exchanger and its addresses, in the order to try them."""

    name: str
    preference: int
    addresses: tuple[str, ...]


def parse_literal(domain: str) -> str | None:
    """The IP address of an address literal domain, or ``None``.

    ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]`` by RFC 5321 4.1.3's grammar
    (``ipv4_literal``, ``ipv6_literal``), as the SMTP paths read them:
    ``[192.0.2.001]`` is 192.0.2.1 (an Snum may have leading zeros), and
    neither a zone (``[IPv6:fe80::1%eth0]``, an interface of this host)
    nor a general literal is an address.  An address reaches the relay
    as written from an alias target or the sendmail command too.  An
    IPv4-mapped literal (``[IPv6:::ffff:192.0.2.9]``) is the IPv4 host
    (RFC 4291 2.5.5.2), reached over IPv4 as the smarthost's is: its
    IPv6 form is no address on the wire, and a host without IPv6 sockets
    could not connect to it.  Raises ``NoSuchDomain`` for a malformed
    literal."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ip = ipv6_literal(inner[5:])
            return str(ip.ipv4_mapped or ip)
        return str(ipv4_literal(inner))
    except ValueError:
        raise NoSuchDomain(domain, "malformed address literal") from None


def _name_key(name: str) -> str:
    """``name`` as compared with the hub's own: lower case, without a final
    dot, and an address literal in its one spelling (``address_literal``),
    an IPv4-mapped IPv6 one as the IPv4 literal (RFC 4291 2.5.5.2: the
    same host).  ``[hub] hostname`` may be a literal, kept as written
    (``[IPv6:2001:DB8:0::1]``, ``[192.0.2.001]``): mail for that address
    written another way is mail for this hub all the same (RFC 5321 5.1)."""
    name = name.rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        try:
            name = address_literal(name)
        except ValueError:
            pass  # malformed: compared as written
        else:
            if name.startswith("[IPv6:"):
                mapped = ipaddress.IPv6Address(name[6:-1]).ipv4_mapped
                if mapped is not None:
                    name = f"[{mapped}]"
    return name.lower()


def _host_name(raw: bytes) -> str | None:
    """An MX target as a host name, or ``None`` when it cannot be one
    (``dns_name_problem``, RFC 1035 2.3.4: labels of at most 63 octets,
    255 in all; letters, digits, hyphens -- and the underscores some zones
    have): such a record is skipped, the others still tried (RFC 5321 5.1)."""
    name = raw.rstrip(b".")
    if not name.isascii():
        return None
    text = name.decode("ascii").lower()
    return None if dns_name_problem(text) else text


def _owned(answers: Iterable[Any], name: str, kind: int) -> list[Any]:
    """The records of type ``kind`` in ``answers`` that answer ``name``:
    owned by it or by a name its CNAME chain leads to (RFC 2181 5.4.1:
    whatever else an answer carries is not believed)."""
    owners = {ascii_domain(name.rstrip(".").lower())}  # answers name it in ASCII
    cnames = {(_text(a.name), _text(a.payload.name)) for a in answers if a.type == dns.CNAME}
    grew = True
    while grew:  # follow the chain, in whatever order the records came
        grew = False
        for owner, target in cnames:
            if owner in owners and target not in owners:
                owners.add(target)
                grew = True
    return [a for a in answers if a.type == kind and _text(a.name) in owners]


def _chain_end(answers: Iterable[Any], name: str) -> tuple[str | None, bool]:
    """Where the CNAME chain of ``answers`` that starts at ``name`` ends
    (``None`` when ``name`` has no CNAME), and whether it loops."""
    targets: dict[str, str] = {}
    for a in answers:
        if a.type == dns.CNAME:
            targets.setdefault(_text(a.name), _text(a.payload.name))
    at = ascii_domain(name.rstrip(".").lower())
    seen = {at}
    while at in targets:
        at = targets[at]
        if at in seen:
            return at, True
        seen.add(at)
    return (at if len(seen) > 1 else None), False


def _chase(lookup: Callable[[str], defer.Deferred], name: str, kind: int,
           clock: Any, spare: list[int] | None = None, hops: int = MAX_CNAME_HOPS,
           budget: float = CNAME_CHASE_TIME) -> defer.Deferred:
    """``lookup(name)``, and when its answer is a CNAME chain without
    records of type ``kind`` at its end, ``lookup`` of that end too, and
    so on: fires with every answer record gathered, as twisted.names'
    ``(answers, authority, additional)``.

    A recursive resolver gives the whole chain in one answer; one that
    gives only the CNAME (a forwarder, a chain that crosses zones) left the
    hub with no MX and no address for a domain that has both, and the mail
    bounced (``5.1.2``) instead of going where RFC 5321 5.1 sends it.  A
    chain that loops or needs more than ``hops`` queries fails with
    ``CNAMEError`` (temporary, as SERVFAIL); so does one whose next query
    would start ``budget`` seconds or more after the first (a server
    that answers each just before the timeout must not hold a delivery
    for ``hops`` timeouts in a row).  ``spare`` (one number, shared by
    the lookups of one resolution) is how many such queries are left to
    make; none left is a ``CNAMEError`` too."""
    asked = {ascii_domain(name.rstrip(".").lower())}
    started = clock.seconds()

    def got(result: Any, gathered: list) -> Any:
        answers = gathered + list(result[0] if isinstance(result, tuple) else result)
        if _owned(answers, name, kind):
            return answers, [], []
        end, loops = _chain_end(answers, name)
        if loops:
            # (``end`` is the server's text, any octets a label may hold:
            # the reason goes into the log, the queue and a notice)
            raise CNAMEError(name, f"the CNAME chain of {name} loops "
                                   f"(at {loggable(end, 255, ascii_only=True)})")
        if end is None or end in asked or not end.isascii() or dns_name_problem(end):
            # nothing more to ask (a target no DNS name can be is never
            # asked for: twisted.names would raise on it): no records
            return answers, [], []
        if len(asked) > hops:
            raise CNAMEError(name, f"the CNAME chain of {name} is too long")
        if clock.seconds() - started >= budget:
            raise CNAMEError(name, f"the CNAME chain of {name} took too long to follow "
                                   f"({budget:g} seconds)")
        if spare is not None:
            if spare[0] <= 0:
                raise CNAMEError(name, f"the CNAME chain of {name} would pass the "
                                       f"{MAX_CNAME_QUERIES} CNAME queries of one domain")
            spare[0] -= 1
        asked.add(end)
        return lookup(end).addCallback(got, answers)

    return lookup(name).addCallback(got, [])


def _usable_prefix(outcomes: list) -> list | None:
    """The MX hosts' lookups to go on with before all are in: those before
    the first still pending (``None``), when one of them has addresses.
    Never a host after a pending one: that one may be this hub (by
    address), and RFC 5321 5.1 forbids every host less preferred than us."""
    prefix = []
    for outcome in outcomes:
        if outcome is None:
            break
        prefix.append(outcome)
    if any(not isinstance(o, Failure) and o[0] for o in prefix):
        return prefix
    return None


# The answers twisted.names fails a query with that carry the server's
# message (its only words are the Python repr of that message)
_RCODE_ERRORS = ((dns_error.DNSQueryRefusedError, "the DNS server refused the query (REFUSED)"),
                 (dns_error.DNSFormatError, "the DNS server could not read the query (FORMERR)"),
                 (dns_error.DNSNotImplementedError,
                  "the DNS server does not implement the query (NOTIMP)"))


def _failure_words(failure: Failure) -> str:
    """What a failed MX lookup says in a reply, the log and a notice.

    twisted.names fails a query that a server answered with REFUSED,
    FORMERR, NOTIMP or an unknown rcode with the answer itself as the
    exception's argument, whose text is a Python repr (``<Message
    id=20754 rCode=5 maxSize=0 flags=answer,... queries=[Query(b'x.test',
    15, 1)]>``): that went into ``queue list``, the log and the
    ``Diagnostic-Code`` of the notice.  Say it in words instead."""
    for kind, words in _RCODE_ERRORS:
        if failure.check(kind):
            return words
    if failure.check(dns_error.DNSUnknownError):
        code = getattr(failure.value.args[0], "rCode", None) if failure.value.args else None
        return ("the DNS server answered with an unknown error"
                + (f" (rcode {code})" if isinstance(code, int) else ""))
    return failure.getErrorMessage()


def _text(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").rstrip(".").lower()


def make_resolver(nameservers: Iterable[str], reactor: Any = None) -> Any:
    """A twisted.names resolver: the given servers (``"ip[:port]"``), with a
    cache honouring the TTLs (a day and 10,000 answers at most,
    ``dnscache``), or the system's (``createResolver``: /etc/hosts,
    a cache, /etc/resolv.conf).  Queries go out through ``dnsport.Resolver``:
    twisted.names' client without its log lines per query."""
    from twisted.names import hosts

    from txmailhub.config import split_nameserver
    from txmailhub.relay.dnscache import BoundedCache
    from txmailhub.relay.dnsport import Resolver

    servers = [split_nameserver(item) for item in nameservers]
    answers = BoundedCache(reactor=reactor)
    if servers:
        return _Chain([
            answers,
            _Filling(Resolver(servers=servers, reactor=reactor), answers),
        ])
    # What ``client.createResolver`` builds on POSIX, with our reactor (it
    # would take the global one, and re-read resolv.conf on its timer).
    return _Chain([
        hosts.Resolver(b"/etc/hosts"),
        answers,
        _Filling(Resolver(resolv=b"/etc/resolv.conf", reactor=reactor), answers),
    ])


class _Chain(resolve.ResolverChain):
    """``ResolverChain`` with ``stop()`` and ``start()`` passed on to the
    resolvers that have them (``make_resolver``'s cache and client): the
    relay stops its resolver with itself, so that nothing of it stays on
    a reactor that runs on (timers, query ports)."""

    def stop(self) -> None:
        for resolver in self.resolvers:
            stop = getattr(resolver, "stop", None)
            if stop is not None:
                stop()

    def start(self) -> None:
        for resolver in self.resolvers:
            start = getattr(resolver, "start", None)
            if start is not None:
                start()


class _Filling:
    """A resolver whose answers go into ``cache`` as well: twisted.names'
    ``ResolverChain`` asks its ``CacheResolver`` first but never fills it,
    so every message relayed looked its MX and addresses up again."""

    def __init__(self, resolver: Any, cache: Any) -> None:
        self.resolver = resolver
        self.cache = cache

    def stop(self) -> None:
        self.resolver.stop()

    def start(self) -> None:
        self.resolver.start()

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred:
        d = self.resolver.query(query, timeout)

        def store(result: Any) -> Any:
            self.cache.cacheResult(query, result)
            return result

        return d.addCallback(store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolver, name)


class HostHealth:
    """Remembers, for a while, which MX hosts failed (clock injected).

    At most ``keep`` hosts (the oldest failures are forgotten first): the
    hosts tried are partly chosen by strangers (a notice goes to whatever
    sender domain a message claims), and a host that is never looked up
    again would otherwise be remembered for ever."""

    def __init__(self, clock: Any, memory: float = FAILED_HOST_MEMORY,
                 keep: int = FAILED_HOSTS_KEPT) -> None:
        self.clock = clock
        self.memory = memory
        self.keep = keep
        self._failed: dict[str, float] = {}
        # addresses that could not be connected to, kept apart from the
        # host names: a host with more addresses than one attempt tries
        # (``attempt.MAX_ADDRESSES_PER_ATTEMPT``) is reached at the ones
        # left untried by the next attempt, not at the same first ones
        self._failed_addresses: dict[str, float] = {}
        # the longest memory given for an address (``address_failed``): a
        # failure due to end further away than that was recorded by a
        # clock since set back, and is forgotten (``_is``)
        self._address_memory = memory

    def failed(self, host: str) -> None:
        self._remember(self._failed, host)

    def address_failed(self, address: str, memory: float | None = None) -> None:
        """``address`` (of some host) could not be connected to: the next
        attempts for a while (``memory`` seconds, this health's own when
        ``None``) try that host's other addresses first.  The caller gives
        one memory for all addresses (the oldest failures stay at the
        front): the delivery agent's is as long as the longest retry step,
        so a retry an hour later still starts with the addresses the last
        one left untried, not with the same first ones again."""
        if memory is not None:
            self._address_memory = max(self._address_memory, memory)
        self._remember(self._failed_addresses, address, memory)

    def address_failed_until(self, address: str) -> float | None:
        """Until when ``address``'s failure is remembered, or ``None`` if it
        is not: the addresses that failed longest ago (the smallest) are
        tried first among the failed ones, so every address of a host gets
        its turn across retries."""
        return self._failed_addresses.get(address.lower()) if self.is_failed_address(address) \
            else None

    def address_succeeded(self, address: str) -> None:
        self._failed_addresses.pop(address.lower(), None)

    def is_failed_address(self, address: str) -> bool:
        return self._is(self._failed_addresses, address, self._address_memory)

    def _remember(self, failed: dict[str, float], host: str,
                  memory: float | None = None) -> None:
        failed.pop(host.lower(), None)  # the newest failure goes last
        if len(failed) >= self.keep:
            # the order is that of the failures, so of their ends too (one
            # ``memory`` for all): the expired ones are at the front, and so
            # are the oldest to forget when none has expired
            now = self.clock.seconds()
            while failed and (len(failed) >= self.keep or next(iter(failed.values())) <= now):
                del failed[next(iter(failed))]
        failed[host.lower()] = self.clock.seconds() + (self.memory if memory is None else memory)

    def succeeded(self, host: str) -> None:
        self._failed.pop(host.lower(), None)

    def is_failed(self, host: str) -> bool:
        return self._is(self._failed, host, self.memory)

    def _is(self, failed: dict[str, float], host: str, memory: float) -> bool:
        """Whether ``host`` is remembered in ``failed``; not once its end
        is past, nor when the end is more than ``memory`` away: the clock
        was set back (an NTP correction, a virtual machine restored from a
        snapshot), and the failure would have been remembered that much
        longer -- an address for a day and 4 hours after a day's step."""
        until = failed.get(host.lower())
        if until is None:
            return False
        now = self.clock.seconds()
        if now >= until or until - now > memory:
            del failed[host.lower()]
            return False
        return True


def _raise(error: Exception) -> None:
    raise error


def own_addresses() -> frozenset[str]:
    """The addresses this machine's host name resolves to.

    A blocking lookup (``getaddrinfo`` of ``gethostname()``, which may ask
    a DNS server): run in a thread (``MXResolver.learn_own_addresses``),
    never on the reactor thread, neither at start (a slow or unanswering
    server held up the hub's start) nor for each MX host a delivery checks
    (it stalled every session of the hub)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(str(info[4][0]).split("%")[0] for info in infos)


class _LocalAddresses:
    """``is_local_address`` over the host name's addresses (``own_addresses``):
    loopback and unspecified addresses are always local.  The lookup is
    made only when an answer needs it (a wildcard listener on the relay
    port), once, in a thread (``run_blocking``); until it is done, or when
    it failed, only loopback and unspecified addresses are known."""

    def __init__(self, addresses: frozenset[str] = frozenset(),
                 lookup: Callable[[], frozenset[str]] = own_addresses) -> None:
        self.addresses = addresses
        self.lookup = lookup
        self.run_blocking: Callable[..., defer.Deferred] | None = None
        self.pending: defer.Deferred | None = None
        self.asked = False

    def learn(self) -> None:
        """Start the lookup with ``run_blocking`` (set by
        ``MXResolver.learn_own_addresses``), again at a restart: it learns
        a new address."""
        if self.run_blocking is None or self.pending is not None:
            return
        self.asked = True
        d = self.pending = self.run_blocking(self.lookup)

        def got(addresses: frozenset[str]) -> None:
            self.addresses = frozenset(addresses)

        def done(result: Any) -> None:
            self.pending = None
            if isinstance(result, Failure):
                log.failure("looking up the host name's own addresses", result)

        d.addCallback(got)
        d.addBoth(done)

    def __call__(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if ip.is_loopback or ip.is_unspecified:
            return True
        if not self.asked:
            self.learn()
        return str(ip) in self.addresses


@implementer(IMXResolver)
class MXResolver:
    """``IMXResolver`` over a twisted.names resolver.

    ``hostname`` is ``[hub] hostname``; ``listening`` is the live list of
    ``(host, port)`` pairs the hub listens on (``Components.listening``);
    ``port`` is the port mail is sent to (``[relay] port``)."""

    def __init__(
        self,
        resolver: Any,
        clock: Any,
        hostname: str,
        listening: list[tuple[str, int]] | None = None,
        port: int = 25,
        rng: random.Random | None = None,
        health: HostHealth | None = None,
        is_local_address: Callable[[str], bool] | None = None,
        dns_failure_memory: float = DNS_FAILURE_MEMORY,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.hostname = hostname.rstrip(".").lower()
        self.listening = listening if listening is not None else []
        self.port = port
        self.rng = rng or random.Random()
        self.health = health or HostHealth(clock)
        # the host name's addresses: looked up in a thread when needed
        # (learn_own_addresses), never here on the reactor thread
        self.is_local_address = (is_local_address if is_local_address is not None
                                 else _LocalAddresses())
        # ``dns_failure_memory``: see DNS_FAILURE_MEMORY (0: none kept)
        self.dns_failure_memory = dns_failure_memory
        # domain -> (when its temporary failure was learnt, until when it
        # is remembered, its reason); at most FAILED_HOSTS_KEPT, oldest
        # first (domains are partly chosen by strangers, as hosts are)
        self._dns_failed: dict[str, tuple[float, float, str]] = {}
        # domain -> the resolution of it under way, shared by every
        # delivery that asks meanwhile: one lookup, not one per entry
        self._resolving: dict[str, list[defer.Deferred]] = {}
        self._epoch = 0  # bumped by ``forget``: what a lookup from before learns is not kept

    # --- IMXResolver -----------------------------------------------------------

    def resolve(self, domain: str) -> defer.Deferred:
        # a literal as the hub writes one (the "IPv6:" tag, not a lower-cased
        # "ipv6:"): it names the host in logs, queue show and notices
        domain = written_domain(domain.rstrip("."))
        try:
            literal = parse_literal(domain)
        except DNSError as e:
            return defer.fail(e)
        if literal is not None:
            hosts = [MXHost(domain, 0, (literal,))]
            try:
                return defer.succeed(self._drop_self(domain, hosts))
            except DNSError as e:
                return defer.fail(e)
        # asked in ASCII: twisted.names would turn a U-label into its
        # IDNA2003 form (faß.de as fass.de, another domain), not IDNA2008's
        domain = ascii_domain(domain)
        why = dns_name_problem(domain)
        if why:
            # a label over 63 octets, a name over 253: no DNS name can be it
            # (RFC 1035 2.3.4), so no answer will ever come; nor can a name
            # with no IDNA form, which twisted.names would not even take
            # (UnicodeError: a crash, so a 451 at every attempt).  The SMTP
            # paths refuse most such domains, not one of 254 or 255 octets
            # (RFC 5321 4.5.3.1.2 allows 255); an alias target, or a message
            # queued by an older version, can name any of them.
            return defer.fail(NoSuchDomain(domain, f"not a domain name DNS can hold: {why}"))
        key = domain.lower()
        remembered = self._remembered(key)
        if remembered is not None:
            learnt, reason = remembered
            error = RememberedDNSError(domain, reason, self.clock.seconds() - learnt)
            # in a later turn of the reactor, as an answer would come: a
            # pass over a thousand entries for the domain, each failing at
            # once, would start the next one from within the last (its slot
            # freed, the runner's kick) until Python's recursion limit
            return task.deferLater(self.clock, 0, _raise, error)
        mine: defer.Deferred = defer.Deferred()
        waiting = self._resolving.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        waiting = self._resolving[key] = [mine]
        spare = [MAX_CNAME_QUERIES]  # for every lookup of this resolution
        d = _chase(self.resolver.lookupMailExchange, domain, dns.MX, self.clock, spare)
        d.addCallbacks(self._got_mx, self._mx_failed, callbackArgs=(domain, spare),
                       errbackArgs=(domain,))
        d.addBoth(self._resolved, key, waiting, self._epoch)
        return mine

    def lookup_in_flight(self, domain: str) -> defer.Deferred | None:
        """A Deferred that fires (with ``None``, whatever the answer) once
        the resolution of ``domain`` under way ends, or ``None`` when none
        is under way (an address literal never has one).

        For the queue runner: a delivery to a domain whose answer is not in
        yet would only join the shared lookup, holding a delivery slot for
        as long as that lookup takes (a name server that never answers: a
        minute).  It waits for the answer without a slot instead, then
        finds it remembered (a temporary failure) or cached."""
        domain = written_domain(domain.rstrip("."))
        try:
            if parse_literal(domain) is not None:
                return None
        except DNSError:
            return None
        waiting = self._resolving.get(ascii_domain(domain).lower())
        if waiting is None:
            return None
        told: defer.Deferred = defer.Deferred()
        told.addBoth(lambda _: None)  # the outcome is the deliveries' to handle
        waiting.append(told)
        return told

    def forget(self) -> None:
        """Forget the domains' remembered failures, and share no lookup
        begun before (the relay's start after a stop: the lookups the stop
        gave up fail as if the DNS had, which must not be remembered)."""
        self._epoch += 1
        self._dns_failed.clear()
        self._resolving.clear()

    def forget_failures(self) -> None:
        """Forget the domains' remembered failures, keeping the lookups
        under way shared (``queue flush``: an administrator asks for an
        attempt now, perhaps with the name servers mended)."""
        self._dns_failed.clear()

    def _resolved(self, result: Any, key: str, waiting: list[defer.Deferred],
                  epoch: int) -> None:
        """Hand a shared resolution's outcome to each delivery that waits
        for it (a list of its own: one may reorder it), and remember a
        temporary failure."""
        if self._resolving.get(key) is waiting:
            del self._resolving[key]
        if (isinstance(result, Failure) and result.check(TemporaryDNSError)
                and epoch == self._epoch):
            self._remember(key, result.value.reason)
        for d in waiting:
            if d.called:  # cancelled by its delivery
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(list(result))

    def _remember(self, key: str, reason: str) -> None:
        if self.dns_failure_memory <= 0:
            return
        failed = self._dns_failed
        failed.pop(key, None)  # the newest failure goes last
        now = self.clock.seconds()
        while failed and (len(failed) >= FAILED_HOSTS_KEPT
                          or next(iter(failed.values()))[1] <= now):
            del failed[next(iter(failed))]
        failed[key] = (now, now + self.dns_failure_memory, reason)

    def _remembered(self, key: str) -> tuple[float, str] | None:
        """When ``key``'s remembered temporary failure was learnt, and its
        reason; None when there is none, or its time is over."""
        kept = self._dns_failed.get(key)
        if kept is None:
            return None
        learnt, until, reason = kept
        if self.clock.seconds() >= until or self.clock.seconds() < learnt:
            # over (or a clock set back past it: not for longer than meant)
            del self._dns_failed[key]
            return None
        return learnt, reason

    # --- loops -----------------------------------------------------------------

    def learn_own_addresses(self, run_blocking: Callable[..., defer.Deferred]) -> None:
        """Look up the host name's own addresses with ``run_blocking`` (a
        thread), now if the hub listens on a wildcard address on the relay
        port, else when such a listener first needs them.  Without the
        default ``is_local_address``: nothing (the embedder's own answers)."""
        local = self.is_local_address
        if not isinstance(local, _LocalAddresses):
            return
        local.run_blocking = run_blocking
        if any(port == self.port and (client_ip(host or "0.0.0.0") or
                                      ipaddress.ip_address("127.0.0.1")).is_unspecified
               for host, port in list(self.listening)):
            local.learn()
        else:
            local.asked = False  # asked for when first needed

    def is_self(self, host: MXHost) -> bool:
        """Whether ``host`` is this hub (its name, or an address:port we listen on)."""
        if _name_key(host.name) == _name_key(self.hostname):
            return True
        for address in host.addresses:
            ip = client_ip(address)
            if ip is None:
                continue
            for lhost, lport in list(self.listening):
                if lport != self.port:
                    continue
                lip = client_ip(lhost or "0.0.0.0")
                if lip is None:
                    continue
                if lip == ip or ip.is_unspecified:
                    # a connection to 0.0.0.0 or :: goes to this machine
                    # (Linux takes it for a loopback address): whatever we
                    # listen on, on the relay port, it may well reach us
                    return True
                if lip.is_unspecified and self.is_local_address(str(ip)):
                    return True
        return False

    def _drop_self(self, domain: str, hosts: list[MXHost]) -> list[MXHost]:
        mine = [h.preference for h in hosts if self.is_self(h)]
        if not mine:
            return hosts
        cut = min(mine)
        kept = [h for h in hosts if h.preference < cut]
        if not kept:
            me = next(h for h in hosts if self.is_self(h))
            raise MailLoop(domain, f"mail for {domain} loops back to me (MX {me.name})")
        return kept

    # --- DNS answers -----------------------------------------------------------

    def _mx_failed(self, failure: Any, domain: str) -> Any:
        if failure.check(DNSError):
            return failure  # ours already (a CNAME chain that loops)
        if failure.check(dns_error.DNSNameError):
            raise NoSuchDomain(domain, "no such domain (NXDOMAIN)")
        if failure.check(dns_error.DNSServerError):
            raise TemporaryDNSError(domain, "DNS server failure (SERVFAIL) looking up MX")
        if failure.check(dns_error.DNSQueryTimeoutError, defer.TimeoutError):
            raise TemporaryDNSError(domain, "DNS timeout looking up MX")
        raise TemporaryDNSError(domain, f"DNS lookup of MX failed: {_failure_words(failure)}")

    def _got_mx(self, result: Any, domain: str, spare: list[int] | None = None) -> defer.Deferred:
        answers = result[0] if isinstance(result, tuple) else result
        records = [a.payload for a in _owned(answers, domain, dns.MX)]
        # RFC 7505: a null MX ("0 .") is the domain's only record; one
        # beside real ones is an unusable target like any other
        null = [r for r in records if r.name.name in (b"", b".")]
        if null and len(null) == len(records):
            raise NullMX(domain, f"{domain} does not accept mail (null MX, RFC 7505)")
        implicit = not records
        if implicit:
            pairs = [(domain, 0)]
        else:
            # one entry per host, at its best preference: a name listed
            # twice ("10 mx" and "20 mx", or spelt in two cases) is one
            # host, and trying it again at the next preference after it
            # failed spent the attempt's addresses and time on it twice
            best: dict[str, int] = {}
            for r in records:
                if (name := _host_name(r.name.name)) is not None:
                    best[name] = min(r.preference, best.get(name, r.preference))
            pairs = sorted(best.items(), key=lambda p: (p[1], p[0]))
            if not pairs:
                raise NoSuchDomain(domain, f"no usable MX for {domain}: every target is "
                                           "malformed")
            pairs = self._cut_own_name(domain, pairs)
        # only the first hosts' addresses are looked up: an attempt tries
        # 10 addresses at most, and every host's lookups open their own
        # UDP ports (a domain can list thousands of MX records)
        return self._look_up(domain, self._shuffle(pairs), implicit, False, 1, spare)

    def _look_up(self, domain: str, pairs: list[tuple[str, int]], implicit: bool,
                 temp_before: bool, round_: int,
                 spare: list[int] | None = None) -> defer.Deferred:
        """The addresses of the first ``MAX_MX_HOSTS`` of ``pairs``; the
        next ones only when none of those has any (see ``_got_addresses``)."""
        batch, rest = pairs[:MAX_MX_HOSTS], pairs[MAX_MX_HOSTS:]
        d = self._settle([self._addresses(name, spare) for name, _ in batch], _usable_prefix)
        d.addCallback(self._got_addresses, domain, batch, implicit, rest, temp_before, round_,
                      spare)
        return d

    def _cut_own_name(self, domain: str,
                      pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """RFC 5321 5.1 by name alone, before any lookup and before the
        list is cut to ``MAX_MX_HOSTS``: this hub and every host at its
        preference or above go, wherever they are in a long list."""
        mine = [pref for name, pref in pairs if name.rstrip(".").lower() == self.hostname]
        if not mine:
            return pairs
        kept = [(name, pref) for name, pref in pairs if pref < min(mine)]
        if not kept:
            raise MailLoop(domain, f"mail for {domain} loops back to me (MX {self.hostname})")
        return kept

    def _settle(self, lookups: list[defer.Deferred],
                usable: Callable[[list], list | None]) -> defer.Deferred:
        """Fire with the outcomes of ``lookups`` (in order) once all are in;
        or, once ``usable(outcomes)`` (``None`` standing for one still
        pending) has given something, with what it gives ``ADDRESS_GRACE``
        seconds later.  A lookup left behind still ends (into the cache);
        none fails unhandled."""
        outcomes: list[Any] = [None] * len(lookups)
        pending = len(lookups)
        done: defer.Deferred = defer.Deferred()
        timer: Any = None

        def finish(value: Any) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if not done.called:
                done.callback(value)

        def expire() -> None:
            finish(usable(outcomes))

        def one(outcome: Any, i: int) -> None:
            nonlocal pending, timer
            outcomes[i] = outcome
            pending -= 1
            if done.called:
                return
            if not pending:
                finish(list(outcomes))
            elif timer is None and usable(outcomes) is not None:
                timer = self.clock.callLater(ADDRESS_GRACE, expire)

        for i, d in enumerate(lookups):
            d.addCallbacks(one, lambda f, i=i: one(f, i), callbackArgs=(i,))
        if not lookups:
            done.callback([])
        return done

    def _shuffle(self, pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        i = 0
        while i < len(pairs):
            j = i
            while j < len(pairs) and pairs[j][1] == pairs[i][1]:
                j += 1
            group = pairs[i:j]
            self.rng.shuffle(group)
            out.extend(group)
            i = j
        return out

    def _addresses(self, name: str, spare: list[int] | None = None) -> defer.Deferred:
        """Fire with ``(addresses, status)``; status "ok", "nodata", "nxdomain" or "temp"."""
        ip = client_ip(name)
        if ip is not None:  # an MX naming an IP address: wrong, but usable
            return defer.succeed(((str(ip),), "ok"))
        v6 = _chase(self.resolver.lookupIPV6Address, name, dns.AAAA, self.clock, spare)
        v4 = _chase(self.resolver.lookupAddress, name, dns.A, self.clock, spare)

        def combine(results: list) -> tuple[tuple[str, ...], str]:
            addrs: list[str] = []
            statuses = []
            for value, kind in zip(results, (dns.AAAA, dns.A)):
                if value is None:
                    continue  # still pending after the grace: the other has addresses
                if not isinstance(value, Failure):
                    answers = value[0] if isinstance(value, tuple) else value
                    for a in _owned(answers, name, kind):
                        addr = a.payload.dottedQuad() if kind == dns.A else \
                            str(ipaddress.IPv6Address(a.payload.address))
                        if addr not in addrs:
                            addrs.append(addr)
                    statuses.append("nodata")
                elif value.check(dns_error.DNSNameError):
                    statuses.append("nxdomain")
                else:
                    statuses.append("temp")
            if addrs:
                return tuple(addrs), "ok"
            if not statuses:
                return (), "temp"
            if "temp" in statuses:
                return (), "temp"
            if all(s == "nxdomain" for s in statuses):
                return (), "nxdomain"
            return (), "nodata"

        def one_family_answered(outcomes: list) -> list | None:
            # addresses of one family: the other (a server that drops AAAA
            # queries) may take ADDRESS_GRACE more, not the whole timeout
            return outcomes if combine(outcomes)[1] == "ok" else None

        d = self._settle([v6, v4], one_family_answered)
        return d.addCallback(combine)

    def _got_addresses(
        self, results: list, domain: str, pairs: list[tuple[str, int]], implicit: bool,
        rest: Sequence[tuple[str, int]] = (), temp_before: bool = False, round_: int = 1,
        spare: list[int] | None = None,
    ) -> list[MXHost] | defer.Deferred:
        # a lookup that failed in our own code (never a DNS answer: those
        # are statuses) counts as a temporary failure of its host
        results = [((), "temp") if isinstance(r, Failure) else r for r in results]
        hosts = [MXHost(name, pref, addrs) for (name, pref), (addrs, _) in zip(pairs, results)]
        statuses = [status for _, status in results]
        temp = temp_before or "temp" in statuses
        # this hub and every less preferred host out first, by name or
        # address: our own name without an address record is still us
        # (RFC 5321 5.1), never a reason to hand the mail to a backup MX
        found_self = any(self.is_self(h) for h in hosts)
        hosts = [h for h in self._drop_self(domain, hosts) if h.addresses]
        if not hosts and rest and not found_self and round_ < MAX_MX_ROUNDS:
            # none of these hosts has an address (stale MX names): the
            # next ones, less preferred, may; they were cut only to keep
            # the lookups in flight few.  (After this hub, none may go.)
            return self._look_up(domain, list(rest), implicit, temp, round_ + 1, spare)
        if not hosts:
            if temp:
                raise TemporaryDNSError(domain, "DNS failure looking up the mail exchangers' "
                                                "addresses")
            if implicit:
                raise NoSuchDomain(domain, f"{domain} has no MX, AAAA or A records")
            raise NoSuchDomain(domain, "the mail exchangers of "
                                       f"{domain} have no addresses")
        healthy = [h for h in hosts if not self.health.is_failed(h.name)]
        failed = [h for h in hosts if self.health.is_failed(h.name)]
        return _each_address_once(healthy + failed)


def _each_address_once(hosts: list[MXHost]) -> list[MXHost]:
    """``hosts`` with every address kept at its first host only: two MX
    names for one machine (``mx1`` and ``mx2`` both at 192.0.2.1) made an
    attempt connect to it again after it failed, spending the attempt's
    addresses (``MAX_ADDRESSES_PER_ATTEMPT``) and time on it twice.  A
    host left without an address goes."""
    seen: set[str] = set()
    out = []
    for host in hosts:
        fresh = tuple(a for a in host.addresses if a not in seen)
        seen.update(fresh)
        if fresh:
            out.append(host if fresh == host.addresses else
                       MXHost(host.name, host.preference, fresh))
    return out
