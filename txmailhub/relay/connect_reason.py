"""Why a connection to a next hop was not made, in a few plain words.

The kept error of a host none of whose addresses connected (``mailhub
queue show``, ``mailq``, the delay and bounce notices) names the address
and, after it, one of these: ``connection refused``, ``timed out``, ``no
route to host``, ``name lookup failed``.  Short and stable, so that the
text reads the same from one attempt to the next and a notice says why
without the log; never a traceback or a Python repr (those stay in the
log, which names each address and its whole error).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence

from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    UnknownHostError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.python.failure import Failure

__all__ = ["is_timeout", "most_telling", "reason"]

REFUSED = "connection refused"
TIMED_OUT = "timed out"
NO_ROUTE = "no route to host"
# DNSLookupError is any failed lookup, a temporary one (EAI_AGAIN) too:
# not "not found"
LOOKUP_FAILED = "name lookup failed"

# What Twisted leaves a plain ConnectError with its errno (EHOSTUNREACH has
# no class of its own, unlike ENETUNREACH)
_BY_ERRNO = {
    errno.ECONNREFUSED: REFUSED,
    errno.ETIMEDOUT: TIMED_OUT,
    errno.EHOSTUNREACH: NO_ROUTE,
    errno.ENETUNREACH: NO_ROUTE,
}

# epytext's C{code}, L{link}, I{italics} in Twisted's docstrings
_MARKUP = re.compile(r"[A-Z]\{([^{}]*)\}")
# a description longer than this is cut (one from a third party's docstring)
_LONGEST = 100


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a connect timeout: no answer at all, which
    says less about a host than a refusal."""
    return isinstance(error, (ConnectTimeoutError, TCPTimedOutError))


def most_telling(errors: Sequence[BaseException | None]) -> int:
    """Which of ``errors`` (one per address, in the order they were
    started; ``None``: none known) says most of why no address connected:
    the first that got an answer (refused, unreachable) rather than a
    connect timeout, else the first.  Not the last started: with staggered
    starts that is not the last to fail, and a black-holed address's
    timeout would hide another's refusal.  The agent (an MX host's
    addresses) and ``NameEndpoint`` (a smarthost's) name the same one."""
    for n, error in enumerate(errors):
        if error is not None and not is_timeout(error):
            return n
    return 0


def reason(error: BaseException | Failure) -> str:
    """``error`` (a connection attempt's failure) in a few plain words.

    Twisted's errors known here have their own words; any other error is
    named by its class's description (the first line of its docstring,
    as Twisted's ``ConnectError`` subclasses have), never by its repr or
    its message, which may hold a path or a traceback's worth of text."""
    if isinstance(error, Failure):
        error = error.value
    told = getattr(error, "telling", None)
    if callable(told):  # several addresses of one name (hostname.NoAddressConnected)
        inner = told()
        return reason(inner) if inner is not None else _described(ConnectError)
    if isinstance(error, ConnectionRefusedError):
        return REFUSED
    if is_timeout(error):
        return TIMED_OUT
    if isinstance(error, NoRouteError):
        return NO_ROUTE
    if isinstance(error, (DNSLookupError, UnknownHostError)):
        return LOOKUP_FAILED
    if isinstance(error, ConnectError) and isinstance(error.osError, int):
        known = _BY_ERRNO.get(error.osError)
        if known:
            return known
    return _described(type(error))


def _described(kind: type) -> str:
    """The first sentence of ``kind``'s own docstring, as words in a
    sentence ("An error occurred while connecting" -> "an error occurred
    while connecting"), without epytext markup (``C{...}``); its name
    when it has none."""
    doc = (kind.__dict__.get("__doc__") or "").strip()
    paragraph = " ".join(doc.split("\n\n")[0].split())
    line = _MARKUP.sub(r"\1", paragraph).split(". ")[0].rstrip(".").strip()[:_LONGEST]
    if not line:
        return kind.__name__
    if len(line) > 1 and line[0].isupper() and not line[1].isupper():
        line = line[0].lower() + line[1:]
    return line
