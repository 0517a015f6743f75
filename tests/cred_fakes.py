"""Credential checkers for the protocol tests (POP3 and SMTP share them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer

if TYPE_CHECKING:
    from txmailhub.auth import UsersChecker


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


def checker_without_apop_secret(folder: Path) -> UsersChecker:
    """The hub's own checker over a users file in ``folder`` that holds joe
    (password joepw) added without ``--allow-apop``: his APOP login is
    refused as one with no secret to check it by, which the log says.
    The password policy finds nothing weak (joepw would be)."""
    from txmailhub.auth import UsersChecker
    from txmailhub.passwords import PasswordPolicy
    from txmailhub.users import UsersDB

    class AnyPassword(PasswordPolicy):
        def weaknesses(self, password, address):
            return []

    db = UsersDB(str(folder / "users"), "example.org", ("example.org",),
                 password_policy=AnyPassword())
    db.add("joe", "joepw")
    return UsersChecker(db)
