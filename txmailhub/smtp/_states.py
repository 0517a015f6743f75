"""The SMTP engine's states and the moves between them.

Shared by the engine (``server``) and its parts for message transfer
(``_transfer``) and AUTH (``_authphase``), so none of them imports another
for it.
"""

from __future__ import annotations

import enum

__all__ = ["S", "State", "TRANSITIONS"]


class State(enum.Enum):
    INIT = "before HELO/EHLO"
    READY = "between transactions"
    MAIL = "after MAIL"
    RCPT = "after RCPT"
    DATA = "reading DATA"
    BDAT = "reading a BDAT chunk"
    AUTH = "in an AUTH exchange"
    CLOSED = "closed"

    # Members are singletons, so identity is equality: hash them in C.
    # Enum's own __hash__ is a Python function, and the engine looks a
    # state up in a set or dict about 15 times per message.
    __hash__ = object.__hash__


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.INIT: frozenset({S.INIT, S.READY, S.AUTH, S.CLOSED}),
    S.READY: frozenset({S.INIT, S.READY, S.MAIL, S.AUTH, S.CLOSED}),
    S.MAIL: frozenset({S.INIT, S.READY, S.MAIL, S.RCPT, S.CLOSED}),
    S.RCPT: frozenset({S.INIT, S.READY, S.RCPT, S.DATA, S.BDAT, S.CLOSED}),
    S.DATA: frozenset({S.READY, S.CLOSED}),
    S.BDAT: frozenset({S.READY, S.RCPT, S.CLOSED}),
    S.AUTH: frozenset({S.INIT, S.READY, S.CLOSED}),
    S.CLOSED: frozenset({S.CLOSED}),
}
