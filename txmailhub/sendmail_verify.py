"""``sendmail -bv``: say where the hub would deliver each recipient,
without a message and without the hub.

Owns the verification mode of the sendmail command: each recipient is
expanded by the hub's own router (``txmailhub.router``) over the files
the command's config names -- the aliases file, the users file -- and
one line per resulting address says whether it is deliverable (a local
mailbox, or relayed to a remote domain when the hub relays for the
command: ``_relayed``) or why not -- RCPT's refusal, the ``550 5.3.5``
of a mailbox no Maildir folder can have the name of and the ``452`` of
a mailbox at ``[hub] mailbox_quota`` too (``_quota_verdict``).  It never connects
to the hub, reads no message and sends nothing; the exit status is 0
when every recipient is deliverable.

Why the files and not the hub's ``VRFY`` or ``EXPN``: the command must
work with the hub stopped, as a check of the files before the hub reads
them, and whatever ``[smtp] vrfy`` and ``expn`` say (switched off, they
answer ``252``, which verifies nothing); the router is the one the hub
expands an ``RCPT`` with, so the answers are the same.  A user who
cannot read the users file (it holds the password hashes: root and the
hub's user can) learns what the aliases say, and that the rest cannot
be verified (exit 77).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from txmailhub.address import Address, canonical_domain
from txmailhub.config import LocalSubmission, SMTPSettings
from txmailhub.errors import Rejected
from txmailhub.logsafe import shown
from txmailhub.sendmail_smtp import (
    EX_CONFIG,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    hub_targets,
)
from txmailhub.smtp import replies

if TYPE_CHECKING:
    from txmailhub.router import Router

__all__ = ["Verdict", "aliases_warning", "verify"]


@dataclass(frozen=True)
class Verdict:
    """One line of ``-bv``'s output: ``address`` (as the hub would
    deliver to it), ``what`` (``deliverable``, ``undeliverable`` or
    ``not verified``), ``detail`` (where it goes, or why not), and the
    recipient given that led to it when it is another address."""

    address: str
    what: str
    detail: str
    given: str | None = None
    #: the exit status this line stands for (``verify`` returns the gravest)
    status: int = EX_OK

    def line(self) -> str:
        """The line, every part escaped as the command's other output is
        (``shown``): the detail holds file names from the config and the
        words of an ``OSError``, which may hold a control character."""
        via = f" (from {shown(self.given)})" if self.given else ""
        return f"{shown(self.address)}... {self.what}: {shown(self.detail)}{via}"


#: which status ``verify`` returns when lines differ: a refusal first (of
#: the user, then of the relay), then a config to mend, then a file this
#: user may not read, then a retry
_GRAVITY = (EX_NOUSER, EX_UNAVAILABLE, EX_CONFIG, EX_NOPERM, EX_TEMPFAIL)


class _NoUsersFile:
    """The users database of a config whose ``[users] file`` is no
    usable path: away, as the hub would take it (a miss is a 451)."""

    missing = True
    unreadable = None

    def contains(self, address: Address) -> bool:
        return False


def aliases_warning(why: str, consequence: str) -> str:
    """The warning (for one stderr line, after the command's name) that
    the aliases file could not be read -- ``why``: the router's words,
    which name the file -- and what the command does without it."""
    return f"warning: {shown(why)}; {consequence}"


def verify(recipients: Iterable[tuple[str, Address]], settings: LocalSubmission,
           out: TextIO, err: TextIO, prog: str) -> int:
    """Write one ``Verdict`` line per resulting address to ``out``, for
    each of ``recipients`` (the envelope forms and the hub's reading of
    them, as the command sends them); return the exit status: 0 when
    all are deliverable, 67 (``EX_NOUSER``) when one is unknown, else 69
    (``EX_UNAVAILABLE``) when the hub would not relay one for the
    command, else 78 (``EX_CONFIG``) when the config leaves a relay
    unknown, else 77 (``EX_NOPERM``) when one could not be verified for
    a file this user may not read, 75 (``EX_TEMPFAIL``) for another
    reason (a file away or being rewritten: the hub answers 451 then
    too) -- the order of ``_GRAVITY``."""
    from txmailhub.router import Router
    from txmailhub.users import UsersDB

    users: Any = _NoUsersFile()
    if settings.users_file is not None:
        users = UsersDB(settings.users_file, settings.primary_domain, settings.domains)
        # read now, as the running hub has read it: a file never read is
        # one whose misses are in doubt (``UsersDB.changing``), which an
        # alias that leads nowhere would be answered by
        users.get(Address("postmaster", settings.primary_domain))
    # read once: one view of the file for every recipient
    router = Router(settings.domains, users, settings.aliases_file, reload=False)
    if router.read_error:
        print(f"{prog}: " + aliases_warning(router.read_error,
                                            "names that are no user are not verified"),
              file=err)
    found: set[int] = set()
    seen: set[str] = set()
    for form, address in recipients:
        if form in seen:
            continue
        seen.add(form)
        verdicts = _verdicts(form, address, router, users, settings)
        for verdict in verdicts:
            print(verdict.line(), file=out)
            found.add(verdict.status)
    out.flush()
    return next((status for status in _GRAVITY if status in found), EX_OK)


def _verdicts(form: str, address: Address, router: Router, users: Any,
              settings: LocalSubmission) -> list[Verdict]:
    """The lines for one recipient (``form`` as given, ``address`` the
    hub's reading of it)."""
    local = {canonical_domain(d) for d in settings.domains}
    if canonical_domain(address.domain) not in local:
        return [_relayed(form, address, settings)]
    try:
        mailboxes, remote = router.resolve(address)
    except Rejected as e:
        reply = e.reply
        why = _why_not_verified(reply.text(), router, users, settings)
        if address.is_postmaster:
            # RFC 5321 4.5.1: the hub takes it whatever its router says
            # (``smtp.policy.local_rcpt``: the primary domain's postmaster
            # then); where the hub's router would lead it is what this
            # user could not learn
            return [Verdict(form, "deliverable", "the postmaster, never refused (RFC 5321 "
                            f"4.5.1); the mailboxes it leads to are not verified: {why}")]
        if reply.is_permanent and not router.read_error:
            return [Verdict(form, "undeliverable", reply.text(), status=EX_NOUSER)]
        denied = isinstance(getattr(users, "unreadable", None), PermissionError)
        return [Verdict(form, "not verified", why,
                        status=EX_NOPERM if denied else EX_TEMPFAIL)]
    from txmailhub.smtp.policy import storable
    from txmailhub.store.maildir import maildir_path

    try:
        # as RCPT: a mailbox no Maildir folder can have the name of (its
        # local part's or its domain's) gets no copy, and with nothing
        # else left the RCPT is refused
        mailboxes = storable(address, tuple(mailboxes), tuple(remote),
                             lambda mailbox: maildir_path(settings.mail_dir, mailbox),
                             settings.primary_domain)
    except Rejected as e:
        return [Verdict(form, "undeliverable", e.reply.text(), status=EX_NOUSER)]
    full = _quota_verdict(form, address, tuple(mailboxes) + tuple(remote), settings)
    if full is not None:
        return [full]
    found = []
    for mailbox in mailboxes:
        name = str(mailbox)
        found.append(Verdict(name, "deliverable", "local mailbox",
                             None if name == form else form))
    for target in remote:
        name = str(target)
        found.append(Verdict(name, "deliverable", f"relayed to {target.domain}",
                             None if name == form else form))
    return found


def _quota_verdict(form: str, address: Address, final: tuple[Address, ...],
                   settings: LocalSubmission) -> Verdict | None:
    """The line for a recipient ``[hub] mailbox_quota`` has RCPT refuse
    (``smtp.policy.quota_refusal``, with no ``SIZE=``: the mailboxes as
    full as they are now): ``452 4.2.2`` when every one of its ``final``
    recipients is a local mailbox at its quota; ``None`` when RCPT takes
    it.  ``not verified`` (77) when that turns on a mailbox this user may
    not measure (the hub's 0700 Maildirs: root and the hub's user can);
    one the hub cannot measure either gets its mail, as RCPT gives it."""
    quota = settings.mailbox_quota
    if not quota:
        return None
    from txmailhub.errors import LocalError
    from txmailhub.smtp.policy import quota_refusal
    from txmailhub.store.maildir import maildir_path
    from txmailhub.store.quota import MailboxUsage

    usage = MailboxUsage()
    denied: list[tuple[Address, PermissionError]] = []
    held: dict[Address, int] = {}

    def measure(mailbox: Address) -> int | None:
        try:
            held[mailbox] = usage.usage(maildir_path(settings.mail_dir, mailbox))
            return held[mailbox]
        except PermissionError as e:
            denied.append((mailbox, e))
            return quota  # full, for the look whether it matters (below)
        except (OSError, LocalError, UnicodeError):
            return None  # the hub cannot measure it either: RCPT takes its mail

    local = {canonical_domain(d) for d in settings.domains}
    reply = quota_refusal(address, final, quota, measure,
                          lambda domain: canonical_domain(domain) in local)
    if reply is None:
        return None  # taken, whatever the mailboxes this user may not measure hold
    if denied:
        mailbox, e = denied[0]
        return Verdict(form, "not verified", f"{reply.text()} if the mailbox of {mailbox} "
                       f"is at [hub] mailbox_quota ({quota} octets): its Maildir under "
                       f"{settings.mail_dir} cannot be measured by this user "
                       f"({e.strerror or e}; root and the hub's user can)", status=EX_NOPERM)
    if len(held) == 1:
        [(mailbox, used)] = held.items()
        why = (f"the mailbox of {mailbox} holds {used} octets, [hub] mailbox_quota is "
               f"{quota}")
    else:
        why = f"each of its {len(held)} mailboxes holds [hub] mailbox_quota ({quota} octets)"
    return Verdict(form, "undeliverable", f"{reply.text()}: {why}",
                   status=EX_TEMPFAIL if reply.is_transient else EX_UNAVAILABLE)


def _relayed(form: str, address: Address, settings: LocalSubmission) -> Verdict:
    """The line for a recipient in a domain the hub does not handle: the
    hub's MX listener relays it only for a client in ``[smtp]
    relay_networks`` (a ``unix:`` socket's always is one), else ``550
    5.7.1`` (``smtp.policy``), which the command would meet at ``RCPT``
    (exit 69).  Judged for the listener the command tries first
    (``hub_targets``), as it sends through that one whenever it answers."""
    targets = hub_targets(settings.listen)
    if not targets:
        return Verdict(form, "not verified", f"{settings.path}: [smtp] listen names no "
                       "listener this command can reach (a unix: socket or a fixed TCP "
                       "port)", status=EX_CONFIG)
    first = targets[0]
    if first.unix_path is None:
        if settings.relay_networks is None:
            return Verdict(form, "not verified", f"{settings.path}: [smtp] relay_networks "
                           "is not valid (mailhub check says why)", status=EX_CONFIG)
        smtp = SMTPSettings(relay_networks=settings.relay_networks)
        if not smtp.relay_allowed_from(first.host):
            return Verdict(form, "undeliverable", f"{replies.RELAY_DENIED.text()}: the hub "
                           f"relays only for [smtp] relay_networks, and this command reaches "
                           f"it from {first.host}, which is not in them",
                           status=EX_UNAVAILABLE)
    return Verdict(form, "deliverable", f"relayed to {address.domain}")


def _why_not_verified(reply: str, router: Router, users: Any,
                      settings: LocalSubmission) -> str:
    """``reply`` (what the hub would answer now) and the file behind it."""
    unreadable = getattr(users, "unreadable", None)
    if unreadable is not None:
        return (f"{reply}: the users file {settings.users_file} cannot be read "
                f"({unreadable.strerror or unreadable}; root and the hub's user can)")
    if getattr(users, "missing", False):
        if settings.users_file is None:
            return f"{reply}: the config names no usable [users] file"
        return f"{reply}: the users file {settings.users_file} does not exist"
    if router.read_error:
        return f"{reply}: {router.read_error}"
    return reply
