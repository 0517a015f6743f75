"""``mailhub alias ...``: list, show, add, set and remove aliases.

Owns the ``alias`` command's arguments and what it prints.  The file and
its changes are ``txmailhub.aliases_file``'s.  What an alias finally
expands to is asked of ``txmailhub.router.Router``, the object the
running hub routes with, and the mailbox quota of the SMTP policy
(``txmailhub.smtp.policy``), so ``show`` says what RCPT and delivery do.  Exit
codes are ``mailhub``'s: 0 ok; 1 when the request cannot be done (no
``[aliases] file``, an unknown alias, one that exists already, a change
that would hide a user or make a loop); 2 for a name or target the file
cannot take (``mailhub check``'s problems), as for a bad address given
to ``mailhub user add``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, TextIO

from txmailhub.cli_output import typed_text
from txmailhub.errors import AliasesFileError, NoSuchAlias, Rejected
from txmailhub.logsafe import shown

if TYPE_CHECKING:
    from txmailhub.aliases_file import AliasesFile
    from txmailhub.config import Settings
    from txmailhub.users import UsersDB

__all__ = ["add_alias_parser", "run_alias"]

_TARGETS_HELP = ("a user, another alias, a remote address, or \\NAME (that mailbox, not "
                 "expanded again); several, or one list separated by commas")


def add_alias_parser(subparsers: Any) -> None:
    """Add the ``alias`` command to the ``mailhub`` argument parser."""
    a = subparsers.add_parser(
        "alias", help="manage the aliases file ([aliases] file)",
        description="List, show, add, change or remove the aliases of [aliases] file; the file "
                    "is edited in place, under a lock, and the running hub needs no restart.")
    sub = a.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    name_help = "the alias: a bare name in the primary domain, or name@domain"

    def action(name: str, text: str) -> Any:
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    action("list", "every alias, one per line: the alias, a tab, its targets separated by ', '")
    show = action("show", "an alias's targets and the mailboxes and remote addresses its mail "
                          "finally goes to")
    show.add_argument("name", metavar="NAME", help=name_help)
    for verb, text in (("add", "make a new alias (refused if the name is there)"),
                       ("set", "give an alias exactly these targets, on one line (made if not "
                               "there; other lines of the name are removed)")):
        p = action(verb, text)
        p.add_argument("name", metavar="NAME", help=name_help)
        p.add_argument("targets", metavar="TARGET", nargs="+", help=_TARGETS_HELP)
    rm = action("remove", "remove an alias (every line of it)")
    rm.add_argument("name", metavar="NAME", help=name_help)


def _users(settings: Settings) -> UsersDB:
    from txmailhub.users import UsersDB

    return UsersDB(settings.users.file, settings.hub.primary_domain, settings.hub.domains)


def _aliases(settings: Settings, users: UsersDB | None = None) -> AliasesFile:
    from txmailhub.aliases_file import AliasesFile

    if not settings.aliases.file:
        raise AliasesFileError(
            f"{settings.path}: no aliases file: set [aliases] file (an empty file will do) "
            "to have aliases")
    is_user = None
    # away or unreadable: who is a user cannot be told, as for check
    if users is not None and _users_away(users) is None:
        is_user = users.contains
    return AliasesFile(settings.aliases.file, settings.hub.primary_domain, settings.hub.domains,
                       is_user)


def run_alias(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``mailhub alias <action>``; raises ``AliasesFileError`` (and
    its ``BadAlias``) for ``mailhub``'s main to report."""
    from txmailhub.aliases_file import target_text

    action = args.alias_command
    if action != "list":
        args.name = typed_text(args.name)
    if action in ("add", "set"):
        args.targets = [typed_text(t) for t in args.targets]
    domains = settings.hub.domains
    if action == "list":
        table = _aliases(settings).read()
        for key in sorted(table):
            print(shown(f"{key}\t" + ", ".join(target_text(t, e, domains)
                                               for t, e in table[key])), file=out)
        return 0
    if action == "show":
        return _show(settings, args.name, out, err)
    aliases = _aliases(settings, _users(settings))
    if action == "remove":
        change = aliases.remove(args.name)
        print(f"removed {shown(change.alias)}", file=out)
    else:
        from txmailhub.router import split_targets

        # a list split as the file splits one: at the commas outside
        # quotes ('"x,y"@example.net' is one address)
        targets = [t for arg in args.targets for t in split_targets(arg)[0]]
        put = aliases.add if action == "add" else aliases.set
        change = put(args.name, targets)
        print(f"{'added' if change.created else 'changed'} {change.alias}", file=out)
        # a line the admin wrote gone: said, at its number before the change
        for number in change.removed_lines:
            print(shown(f"removed {aliases.path}:{number}: another line of {change.alias}"),
                  file=out)
    for warning in change.warnings:
        print(f"warning: {warning}", file=err)
    return 0


def _show(settings: Settings, name: str, out: TextIO, err: TextIO) -> int:
    from twisted.logger import globalLogPublisher

    from txmailhub.address import parse_address
    from txmailhub.aliases_file import target_text
    from txmailhub.router import Router
    from txmailhub.smtp.policy import local_rcpt

    aliases = _aliases(settings)
    key = aliases.key(name)
    table = aliases.read()
    if key not in table:
        # ``a;``: the alias "a;", as ``add`` writes it and RCPT names it
        key = aliases.key(aliases.rcpt_form(name.strip()))
    if key not in table:
        raise NoSuchAlias(f"no such alias: {aliases.key(name)}")
    domains = settings.hub.domains
    p = lambda line: print(shown(line), file=out)  # noqa: E731
    p(f"alias: {key}")
    p("targets: " + ", ".join(target_text(t, e, domains) for t, e in table[key]))
    # the hub's own expansion; what it skips, it says in its log
    skipped: list[tuple[str, str]] = []

    # and a mailbox the quota check could not measure (this command may run
    # as a user who cannot read it): RCPT takes its mail then, which the
    # lines say, but the quota was not what decided it
    unmeasured: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        if (event.get("log_namespace") == "txmailhub.router" and "alias" in event
                and "target" in event and str(event.get("log_format", "")).endswith("skipped")):
            skipped.append((event["alias"], event["target"]))
        elif (event.get("log_namespace") == "txmailhub.smtp.policy" and "mailbox" in event
              and str(event.get("log_format", "")).startswith("cannot measure the mailbox")):
            unmeasured.append((str(event["mailbox"]), str(event.get("error", ""))))

    users = _users(settings)
    away = _users_away(users)
    router = Router(domains, users, settings.aliases.file)
    globalLogPublisher.addObserver(observe)
    try:
        # as the SMTP server asks: a postmaster is never refused
        address = parse_address(key)
        mailboxes, remote = local_rcpt(router, address, settings.hub.primary_domain)
        # then [hub] mailbox_quota, by the SMTP policy's own check (no
        # MAIL SIZE=: the mailboxes as full as they are now)
        check_quota = _quota_check(settings, router)
        if check_quota is not None:
            check_quota(address, mailboxes + remote, None)
    except Rejected as e:
        p(f"refused: {e.reply.text()} (what RCPT TO gets)")
    else:
        p("mailboxes: " + (", ".join(a.key for a in mailboxes) or "-"))
        p("forwards: " + (", ".join(str(a) for a in remote) or "-"))
    finally:
        globalLogPublisher.removeObserver(observe)
    for alias, target in skipped:
        # an alias's name skipped is a mailbox target (``\name``, or the
        # alias's own name): "no user or alias" would deny the alias there
        why = ("no user of that name (a mailbox target: not expanded as the alias)"
               if aliases.key(target) in table else "no user or alias")
        p(f"skipped: {target} (named by {alias}: {why})")
    for mailbox, why in unmeasured:
        print(shown(f"warning: cannot measure the mailbox of {mailbox} for [hub] "
                    f"mailbox_quota ({why}): RCPT takes its mail as if it had room"),
              file=err)
    if away:
        print(f"warning: {away}", file=err)
    return 0


def _quota_check(settings: Settings, router: Any) -> Any:
    """The SMTP policy's ``check_quota`` (``None`` without ``[hub]
    mailbox_quota``) over the hub's Maildirs and ``router``: what RCPT
    asks after the router, so that ``show`` says the ``452`` a full
    mailbox gets, by the same rule (an alias with a member that has room,
    or a remote one, is not refused)."""
    from types import SimpleNamespace

    from txmailhub.smtp.policy import RecipientPolicy
    from txmailhub.store.maildir import maildir_path

    mail_dir = settings.mail_dir
    # the parts of the hub's components the policy asks for the quota:
    # the store as it names Maildirs (store.maildir.maildir_path's rule)
    store = SimpleNamespace(maildir_path=lambda address: maildir_path(mail_dir, address))
    return RecipientPolicy(SimpleNamespace(settings=settings, router=router, store=store,
                                           queue=None)).check_quota


def _users_away(users: UsersDB) -> str | None:
    """Why the users file cannot say who is a user now (away, or
    unreadable), and what the hub does meanwhile, as ``check`` says it;
    ``None`` if it can.  Without it, ``show`` gives only the hub's 451."""
    try:
        users.addresses()
    except OSError as e:
        return (f"the users file {users.path} cannot be read ({e.strerror or e}): the hub "
                "cannot tell who is a user, so mail to a local address is refused with 451 "
                "(try again later) until it can")
    if users.missing:
        return (f"the users file {users.path} does not exist (mailhub user add makes it): "
                "the hub cannot tell who is a user, so mail to a local address is refused "
                "with 451 (try again later) until it is there")
    return None
