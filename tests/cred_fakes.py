"""Credential checkers for the protocol tests (POP3 and SMTP share them)."""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer


@implementer(ICredentialsChecker)
class ClientRecordingChecker:
    """Checks passwords as an in-memory database of ``users`` does, and
    records the ``client`` each check's credentials name (the key the
    password checks take turns by, txmailhub.turns) in ``clients``, in order."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, bytes]) -> None:
        self.clients: list[str] = []
        self._inner = InMemoryUsernamePasswordDatabaseDontUse(**users)

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        self.clients.append(credentials.client)  # type: ignore[attr-defined]
        return self._inner.requestAvatarId(credentials)
