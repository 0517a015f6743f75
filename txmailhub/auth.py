"""twisted.cred for every login: SMTP AUTH, POP3 USER/PASS, AUTH PLAIN, APOP.

Owns the checker over the users file and the realm that turns an avatar
id (the user's address key, ``user@domain``) into what a protocol asked
for: an ``ISMTPUser`` or a locked ``IMailbox``.  The realm is not the
service, and neither knows anything about the wire protocols.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from txmailhub.address import Address, AddressError
from txmailhub.errors import LocalError, UsersUnavailable
from txmailhub.interfaces import IMailbox, ISMTPUser
from txmailhub.precis import PreparationError, prepare_password
from txmailhub.turns import FairTurns
from txmailhub.users import UsersDB

__all__ = ["ClientCredentials", "LoginAbandoned", "MailRealm", "SMTPUser", "UsersChecker",
           "build_portal", "turn_key"]

RunInThread = Callable[..., Deferred]

PASSWORD_CHECKS = 2
"""Password checks run at once, at most; the others wait their turn.
scrypt takes 16 MiB while it runs and the allocator keeps it afterwards:
without a bound, a burst of logins (wrong ones included, from anyone
who can connect) ran one per thread of the reactor's pool (10), grew the
hub by 160 MiB for good (64 MiB with the bound: the checks still move
between the pool's threads, each with its own allocator arena), and held
up the relay's file work that shares that pool."""


class LoginAbandoned(UnauthorizedLogin):
    """The client left while its password check waited for its turn: the
    check was skipped (nobody would read its answer), so nothing is known
    about the password either way."""


class NoAPOPSecret(UnauthorizedLogin):
    """APOP for a user the file keeps no APOP secret for (added without
    ``--allow-apop``): a failed login like any other for the client and the
    lockout, but the log says why, or the admin hunts a wrong password.
    Not while the file may have been read half-written (``UsersDB.changing``):
    the line may be cut before its secret, so that is a temporary failure."""


class ClientCredentials(UsernamePassword):
    """A user name and password from a client connection that may go away
    while the check waits: ``wanted()`` says whether it is still there.

    Password checks are bounded (``PASSWORD_CHECKS``) and queue behind one
    another, taking turns by ``client``; without ``wanted`` a burst of
    logins from clients that hung up at once still ran scrypt for each, and
    the real logins behind them waited for all of it."""

    def __init__(self, username: bytes, password: bytes, wanted: Callable[[], bool],
                 client: str = "") -> None:
        super().__init__(username, password)
        self.wanted = wanted
        #: who asks (``limits.client_key`` of its address): waiting checks
        #: take turns by client (``txmailhub.turns``)
        self.client = client


def turn_key(client: str, local: bool, connection: object) -> str:
    """Whose turn a waiting password check takes (``ClientCredentials.client``):
    a remote client's ``client_key``, so that one address's flood of
    logins waits behind everyone else's; a local connection's own key, so
    that the logins of a program on this machine (a webmail logging its
    users in over loopback, which the per-client limits exempt too) do not
    all share one turn."""
    return f"local connection {id(connection):x}" if local else client


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _apop_forms(secret: str) -> list[str]:
    """The secrets an APOP digest may be made of: the digest is over the
    client's own bytes, so the server cannot prepare what it receives;
    it accepts the secret as it was set and its prepared (RFC 8265) form.
    An md5 each, so trying two costs nothing."""
    try:
        prepared = prepare_password(secret)
    except PreparationError:
        return [secret]
    return [secret] if prepared == secret else [secret, prepared]


@implementer(ICredentialsChecker)
class UsersChecker:
    """Checks passwords (and APOP digests) against the users file.

    Password checks run scrypt, which takes tens of milliseconds on
    purpose; ``run_in_thread`` (``deferToThreadPool`` in the service)
    keeps that off the reactor thread.  Without it the check runs inline,
    which is what deterministic tests want.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, users: UsersDB, run_in_thread: RunInThread | None = None) -> None:
        self.users = users
        self._run = run_in_thread
        self._checks = FairTurns(PASSWORD_CHECKS)

    def requestAvatarId(self, credentials: Any) -> Deferred:
        try:
            address = self.users.qualify(_text(credentials.username))
        except (AddressError, UnicodeDecodeError):
            return self._fail()
        if IUsernamePassword.providedBy(credentials):
            try:
                password = _text(credentials.password)
            except UnicodeDecodeError:
                return self._fail()
            if self._run is None:
                d = maybeDeferred(self._check(), address, password)
            else:
                d = self._checks.run(getattr(credentials, "client", ""),
                                     self._check_if_wanted, credentials, address, password)
            return d.addCallback(self._result, address)
        # APOP: the credentials compare md5(challenge + secret) themselves.
        # The record and the doubt of the records it came from are taken
        # together (``UsersDB.judged``): a password check's thread may read
        # the file again in between, and a line caught cut before its
        # ``apop=`` field, judged by that later, whole read, was taken for
        # a user without a secret
        judged = getattr(self.users, "judged", None)
        doubt: bool | None = None
        if judged is not None:
            record, doubt = judged(address)
            secret = None if record is None else record.apop_secret
            found = record is not None
        else:
            secret = self.users.apop_secret(address)
        if secret is None:
            refusal = self._refusal(looked_up=True, doubt=doubt)
            # a file read half-written (``changing``) may hold the user's
            # line cut before its ``apop=`` field: temporary, as a miss is
            # then, and the answer must not tell who is in the file
            if judged is None:
                found = self.users.get(address) is not None
            if not isinstance(refusal, UsersUnavailable) and found:
                refusal = NoAPOPSecret("no APOP secret")
            d: Deferred = Deferred()
            d.errback(refusal)
            return d
        ok = any(credentials.checkPassword(form.encode("utf-8")) for form in _apop_forms(secret))
        return succeed(address.key) if ok else self._fail(looked_up=True, doubt=doubt)

    def _check_if_wanted(self, credentials: Any, address: Address, password: str) -> Deferred:
        """Run the check now that it has its turn, unless its client left."""
        wanted = getattr(credentials, "wanted", None)
        if wanted is not None and not wanted():
            raise LoginAbandoned("the client left before its password was checked")
        assert self._run is not None
        return self._run(self._check(), address, password)

    def _check(self) -> Callable[[Address, str], bool | tuple[bool, bool]]:
        """The check to run (in the thread pool): one that gives the doubt
        of the records it used with its answer when the users object can
        (``UsersDB.check_login``), so that ``_result`` does not judge a
        failure by what another thread read after it."""
        check: Callable[[Address, str], bool | tuple[bool, bool]] = getattr(
            self.users, "check_login", None) or self.users.check_password
        return check

    def _refusal(self, looked_up: bool = False, doubt: bool | None = None) -> Exception:
        """Why a login failed.  ``looked_up``: the user was looked up (a
        name that cannot be one is refused without asking the file).

        A users file changed a moment ago may have been read half-written
        (``UsersDB.changing``): the user, or the whole line with the hash,
        may be one not written yet, so the failure is temporary, like one
        for a file that is away -- and so is a wrong password then, or the
        answer would tell who is in the file and who is not.  It is not
        counted as a guess (the file changes only when its administrator
        changes it, and the window is ``RACY_SECONDS``).  ``doubt``: that,
        as judged with the records the check used (``UsersDB.check_login``);
        ``None``: ask ``changing`` now."""
        if getattr(self.users, "missing", False):
            why = getattr(self.users, "unreadable", None)
            return UsersUnavailable(f"the users file {self.users.path} "
                                    + (f"cannot be read ({why.strerror or why})" if why
                                       else "does not exist"))
        if doubt is None:
            changing = getattr(self.users, "changing", None) if looked_up else None
            doubt = changing is not None and bool(changing())
        if doubt:
            return UsersUnavailable(f"the users file {self.users.path} changed a moment "
                                    "ago and may have been read half-written")
        return UnauthorizedLogin("authentication failed")

    def _fail(self, looked_up: bool = False, doubt: bool | None = None) -> Deferred:
        d: Deferred = Deferred()
        d.errback(self._refusal(looked_up, doubt))
        return d

    def _result(self, answer: bool | tuple[bool, bool], address: Address) -> str:
        ok, doubt = answer if isinstance(answer, tuple) else (answer, None)
        if not ok:
            raise self._refusal(looked_up=True, doubt=doubt)
        return address.key


@implementer(ISMTPUser)
class SMTPUser:
    """Who authenticated on an SMTP session."""

    def __init__(self, address: Address) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"SMTPUser({self.address})"


@implementer(IRealm)
class MailRealm:
    """Avatar ids (``user@domain``) -> ``ISMTPUser`` or a locked ``IMailbox``."""

    def __init__(self, store: Any = None, *, components: Any = None) -> None:
        # with ``components`` (the hub's), the store they hold at each login:
        # an application may give the hub a store of its own before the
        # start (docs/embedding.rst), and SMTP delivers to that one
        self._store = store
        self.components = components

    @property
    def store(self) -> Any:
        """The ``IMailboxStore`` a login's mailbox is opened in."""
        if self.components is not None:
            return self.components.store
        return self._store

    @store.setter
    def store(self, store: Any) -> None:
        self._store = store
        self.components = None

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        local, _, domain = _text(avatarId).rpartition("@")
        if not local or not domain:
            # a checker of the application's own that answers with a bare
            # name: a mailbox "@joe" would open, empty, without a word
            raise ValueError(f"the avatar id {avatarId!r} is not an address (local@domain)")
        address = Address(local, domain)
        for iface in interfaces:
            if iface is ISMTPUser:
                return (ISMTPUser, SMTPUser(address), lambda: None)
            if iface is IMailbox:
                # ``mind``: whether the client still wants the login (the
                # POP3 session's), for a store that may wait for the lock
                # and takes it; any other store is called as it always was
                if callable(mind) and _takes_wanted(self.store):
                    d = self.store.open_mailbox(address, wanted=mind)
                else:
                    d = self.store.open_mailbox(address)
                return d.addCallback(lambda box: (IMailbox, box, box.close))
        raise LocalError(f"no avatar for {interfaces!r}")


def _takes_wanted(store: Any) -> bool:
    """Whether ``store.open_mailbox`` takes ``wanted`` (``IMailboxStore``
    added it as optional: a store written before only takes the address)."""
    try:
        parameters = inspect.signature(store.open_mailbox).parameters
    except (TypeError, ValueError):
        return False
    return "wanted" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_portal(users: UsersDB, store: Any, run_in_thread: RunInThread | None = None,
                 *, components: Any = None) -> Portal:
    """A portal over the users file whose realm opens mailboxes in ``store``,
    or, given ``components``, in the store those hold at each login."""
    return Portal(MailRealm(store, components=components), [UsersChecker(users, run_in_thread)])
