"""What the SMTP engine's parts (``_transfer``, ``_authphase``) use of
``SMTPServer``: the engine's state and the methods it defines for them.

Declared for type checkers only: at run time ``SMTPServer`` has them all,
and a part is never used on its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txmailhub.smtp._states import State
from txmailhub.smtp.events import ServerConfig, Session

if TYPE_CHECKING:
    from txmailhub.envelope import Envelope
    from txmailhub.smtp.reply import Reply

__all__ = ["EnginePart"]


class EnginePart:
    state: State
    config: ServerConfig
    session: Session

    if TYPE_CHECKING:
        def _answer(self, kind: type) -> Any: ...

        def _to(self, state: State) -> None: ...

        def reply(self, reply: Reply) -> None: ...

        def _request(self, event: Any) -> None: ...

        def _close(self, reply: Reply | None) -> None: ...

        def _count_junk(self, counted: bool = False) -> None: ...

        def _reset_transaction(self) -> None: ...

        def _envelope(self) -> Envelope: ...
