"""The three kinds of error (see STYLE practice 4).

* ``LocalError``: our own misuse of an API (a bug); never shown to a peer.
* ``RemoteProtocolError``: the peer broke the protocol; carries the reply
  to send.
* ``Rejected``: a policy refusal (unknown user, relay denied, too big);
  carries the reply to send.

Replies are objects with ``to_bytes()`` (``txmailhub.smtp.reply.Reply`` for
SMTP); the errors do not care which protocol they belong to.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AliasExists",
    "AliasesFileError",
    "BadAlias",
    "ConfigError",
    "LocalError",
    "MailboxInUse",
    "MailboxNameError",
    "MailboxTurnAbandoned",
    "NoSuchAlias",
    "NoSuchUser",
    "RemoteProtocolError",
    "Rejected",
    "UserExists",
    "UsersFileError",
    "WeakPassword",
]


class LocalError(Exception):
    """We called something wrongly: a bug in txmailhub, not the peer's fault."""


class MailboxNameError(LocalError):
    """A mailbox whose name no Maildir folder can have (``a/b``, ``..``, a
    name over the file system's 255 octets): no delivery or login will
    ever reach its folder, whatever is tried again, until the user is
    renamed.  Permanent, where other storage errors may pass.

    ``part``: the part of the address whose name it is, ``"local part"``
    or ``"domain"`` (``None`` when not told): a domain's is mended in
    ``[hub] domains``, not in the users file."""

    def __init__(self, *args: Any, part: str | None = None) -> None:
        super().__init__(*args)
        self.part = part


class RemoteProtocolError(Exception):
    """The peer sent something the protocol does not allow."""

    def __init__(self, reply: Any) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Rejected(Exception):
    """Policy refused a request; ``reply`` is what the peer is told."""

    def __init__(self, reply: Any) -> None:
        super().__init__(str(reply))
        self.reply = reply


class UsersUnavailable(Exception):
    """The users file is not there: a login cannot be checked now (a
    temporary failure, not a wrong password: no lockout counts it)."""


class MailboxInUse(Exception):
    """Another session holds the mailbox (POP3 exclusive access, RFC 1939 s8)."""


class MailboxTurnAbandoned(MailboxInUse):
    """The login's client left while the login waited for its turn at the
    mailbox's lock: it was not given the lock.  A ``MailboxInUse`` (what a
    caller that knows no better treats it as), but nobody holding the
    mailbox refused anyone: the log says the client left."""


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per problem,
    ``warnings`` what would have been warned about had it loaded (shown too,
    so that fixing the errors brings no surprise)."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = list(warnings or ())


class UsersFileError(Exception):
    """A ``mailhub user`` request is malformed (bad address, empty password)."""


class UserExists(UsersFileError):
    """``user add`` for an address that already has an account."""


class NoSuchUser(UsersFileError):
    """``user del``/``passwd`` for an address without an account."""


class WeakPassword(UsersFileError):
    """``user add``/``passwd`` with a password the policy refuses
    (``txmailhub.passwords``); ``--allow-weak`` takes it anyway."""


class AliasesFileError(Exception):
    """A ``mailhub alias`` request that cannot be done as things stand (no
    aliases file configured, a change that would hide a user or make a
    loop): exit status 1."""


class AliasExists(AliasesFileError):
    """``alias add`` for a name the aliases file already has."""


class NoSuchAlias(AliasesFileError):
    """``alias show``/``remove`` for a name the aliases file does not have."""


class BadAlias(AliasesFileError):
    """A name or target the aliases file cannot take: one line per problem,
    in ``mailhub check``'s words (exit status 2, as for a bad address
    given to ``mailhub user add``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
