"""The ``mailhub`` admin command (also ``python -m txmailhub``).

Owns argument parsing and exit codes: 0 ok, 1 runtime failure (the
request could not be done: duplicate user, unknown queue id, ...), 2 bad
usage or bad config.  Each subcommand is a thin call into the component
that owns the data (users file, aliases file, queue); nothing here talks
to a running hub except through those files, but ``sendmail``, which
hands a message to it over SMTP and has sendmail(8)'s options and
sysexits(3) exit codes (``txmailhub.sendmail``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shlex
import stat
import sys
from typing import TYPE_CHECKING, TextIO

from txmailhub.cli_output import ArgumentNotUTF8, error_stream, typed_text, utf8_output
from txmailhub.config import (
    SYSTEM_CONFIG,
    Settings,
    default_config_path,
    empty_config_path,
    load,
)
from txmailhub.errors import (
    AliasesFileError,
    BadAlias,
    ConfigError,
    LocalError,
    NoSuchUser,
    UserExists,
    UsersFileError,
    WeakPassword,
)
from txmailhub.logsafe import quoted, shown, shown_lines, shown_message

if TYPE_CHECKING:
    from collections.abc import Collection

    from txmailhub.address import Address
    from txmailhub.router import Aliases
    from txmailhub.users import UsersDB

__all__ = ["main"]

# $MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml (the rule twistd mailhub follows too)
DEFAULT_CONFIG = default_config_path()


class _Parser(argparse.ArgumentParser):
    _words: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        # kept for error(): each subcommand's parser sees its own words
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # argparse's default exits 2 too; keep one line
        self.print_usage(error_stream())
        hint = self._choices_for(message) or self._dash_hint(message)
        print(f"{self.prog}: {message}{hint}", file=error_stream())
        raise SystemExit(2)

    def _dash_hint(self, message: str) -> str:
        """How to give a name that starts with ``-`` (``-dash`` is a valid
        local part): argparse takes it for an unknown option, and its
        error ("required: address") did not say where the name went."""
        if "arguments are required" not in message:
            return ""  # a mistyped option (--usagex) is no name
        known = {o for action in self._actions for o in action.option_strings}
        for word in self._words:
            if word == "--":
                return ""
            if word.startswith("-") and len(word) > 1 and word.split("=")[0] not in known:
                return f" ({word} is no option: give a name that starts with '-' after --)"
        return ""

    def _choices_for(self, message: str) -> str:
        """`` (one of: ...)`` when ``message`` is argparse's "required:
        COMMAND" (or ``ACTION``) for a missing subcommand: the usage line
        names only the metavar, so the error would not say what to type."""
        for action in self._actions:
            if (isinstance(action, argparse._SubParsersAction) and action.metavar
                    and message.endswith(f"required: {action.metavar}")):
                return f" (one of: {', '.join(action.choices)})"
        return ""


#: what follows the reasons a weak password is refused for (``user add``, ``user passwd``)
_WEAK_WAY_OUT = ('refused as [users] password_policy = "enforce" says: choose another, or '
                "give --allow-weak to take it anyway (for tests and automation)")
_ALLOW_WEAK_HELP = ("accept a password the policy refuses (too short, too common, the user's "
                    "name or domain), with a warning: for tests and automation")


class _GivenConfig(argparse.Action):
    """``--config PATH`` that also records that the command line named a
    file (``config_given``): a problem with the default file says why
    that file was read, as ``twistd mailhub`` says it, since the user
    who typed ``mailhub check`` never named ``/etc/txmailhub/mailhub.toml``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        namespace.config = values
        namespace.config_given = True


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mailhub", description="Administer a txmailhub mail hub.")
    p.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, action=_GivenConfig, metavar="PATH",
        help=f"the TOML configuration file (default: $MAILHUB_CONFIG, else {SYSTEM_CONFIG})",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser(
        "check", help="validate the configuration; exit 2 listing every problem",
        description="Validate the configuration and the files it names (users and aliases "
                    "files, TLS pair, smarthost password, state_dir) without starting the hub: "
                    "'PATH: ok' and exit 0, or one line per problem and exit 2; warnings go "
                    "to standard error either way.")

    user = sub.add_parser(
        "user", help="manage users",
        description="Add, delete or list the users of [users] file, or change a password; "
                    "the running hub needs no restart.",
    ).add_subparsers(dest="user_command", metavar="ACTION", parser_class=_Parser)
    user.required = True
    address_help = "user@domain, or a bare name in the primary domain"
    prompt = "asked for twice on the terminal, unless --password-stdin"
    add = user.add_parser(
        "add", help=f"create a user (the password is {prompt})",
        description=f"Create a user.  The password is {prompt}: it is never taken as an "
                    "argument.")
    add.add_argument("address", help=address_help)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input instead "
                          "of asking on the terminal (for scripts)")
    add.add_argument("--allow-apop", action="store_true",
                     help="also keep the secret APOP needs (weaker: see docs)")
    add.add_argument("--allow-weak", action="store_true", help=_ALLOW_WEAK_HELP)
    add.add_argument("password", nargs="?", help=argparse.SUPPRESS)  # refused: see main
    text = "delete a user (the mailbox stays on disk)"
    d = user.add_parser("del", help=text, description=text[0].upper() + text[1:] + ".")
    d.add_argument("address", help=address_help)
    pw = user.add_parser(
        "passwd", help=f"change a user's password ({prompt})",
        description=f"Change a user's password.  The new one is {prompt}.")
    pw.add_argument("address", help=address_help)
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input instead "
                         "of asking on the terminal (for scripts)")
    pw.add_argument("--allow-weak", action="store_true", help=_ALLOW_WEAK_HELP)
    pw.add_argument("password", nargs="?", help=argparse.SUPPRESS)  # refused: see main
    text = "list users, one address per line"
    ul = user.add_parser("list", help=text, description=text[0].upper() + text[1:] + ".")
    ul.add_argument("--usage", action="store_true",
                    help="after each address, a tab, the octets its mailbox holds, a tab "
                         "and [hub] mailbox_quota (none: no quota)")

    from txmailhub.alias_admin import add_alias_parser
    from txmailhub.relay.admin import add_queue_parser

    add_alias_parser(sub)
    add_queue_parser(sub)
    sub.add_parser(
        "sendmail", add_help=False,
        help="read a message on stdin and hand it to the running hub, with sendmail(8)'s "
             "options (-t, -i, -f, -F, -bs ...) and exit codes (see docs/sendmail.rst)",
    )
    return p


def _parse(argv: list[str] | None, out: TextIO | None, err: TextIO) -> argparse.Namespace:
    """``argv`` parsed, argparse's own words (a usage error, ``--help``)
    going to the ``out`` and ``err`` main was given: argparse writes to
    sys.stdout and sys.stderr, which are not those of a program that
    passed its own streams.  A usage error still raises SystemExit(2)."""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        return _parser().parse_args(argv)


def _sendmail_split(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """``(global options, sendmail arguments)`` when the command is
    ``sendmail``, else None.  Its arguments follow sendmail(8)'s getopt
    syntax (``-oi``, ``-fADDR``), not argparse's, so they bypass the parser."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "sendmail":
            return argv[:i], argv[i + 1:]
        if not a.startswith("-") or a == "--":
            return None
        # an option that takes its value from the next word: --config (or a
        # prefix of it argparse would take) and -c, not --config=X or -cX
        i += 2 if (a.startswith("--c") and "=" not in a) or a == "-c" else 1
    return None


def _password_line(stdin: TextIO) -> str:
    """The first line of ``stdin``, its line end removed: the password of
    ``--password-stdin``."""
    from txmailhub.sendmail_input import waiting

    buffer = getattr(stdin, "buffer", None)
    if buffer is not None:
        # its octets, as UTF-8 whatever the locale (as the commands
        # write, txmailhub.cli_output): the locale's codec would have
        # refused a UTF-8 password (ASCII) or kept it as surrogates (C).
        # A standard input a parent left O_NONBLOCK is waited on, as
        # sendmail's is: read as it was, a writer slower than this read
        # gave a password cut short, or an empty one, and it was set so
        try:
            return waiting(buffer).readline().decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise UsersFileError("the password is not UTF-8 text") from None
    password = stdin.readline().rstrip("\r\n")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 (kept as surrogates)
        raise UsersFileError("the password is not UTF-8 text") from None
    return password


#: the process's controlling terminal, where ``getpass`` asks first
TERMINAL = "/dev/tty"


def _has_terminal() -> bool:
    """Whether the process has a controlling terminal ``getpass`` can ask
    at (it opens ``TERMINAL`` before it looks at standard input).  Opened
    with ``O_NOCTTY`` and closed at once: only asked, nothing taken."""
    try:
        fd = os.open(TERMINAL, os.O_RDWR | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # ENXIO: no controlling terminal (cron, a service, setsid)
        return False
    os.close(fd)
    return True


def _read_password(from_stdin: bool, stdin: TextIO | None, err: TextIO) -> str:
    if stdin is None and from_stdin:
        # started with it closed (``<&-``): sys.stdin is None; say so rather
        # than fail on reading it
        raise UsersFileError("standard input is closed: no password to read "
                             "(--password-stdin reads its first line)")
    if from_stdin:
        try:
            return _password_line(stdin)
        except OSError as e:  # opened for writing only (``0>file``): as one closed
            raise UsersFileError(f"cannot read standard input: {e.strerror or e}: no password "
                                 "to read (--password-stdin reads its first line)") from None
    # standard input closed (``<&-``) or not a terminal (a pipe, a file):
    # the controlling terminal, when there is one, is where getpass asks
    if not (stdin is not None and stdin.isatty()) and not _has_terminal():
        raise UsersFileError("no terminal to ask for the password: use --password-stdin")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Again: ")
    except EOFError:  # Ctrl-D at the prompt, which left the cursor after it
        print(file=err)  # as for Ctrl-C (main): the refusal on a line of its own
        raise UsersFileError("no password given") from None
    if first != again:
        raise UsersFileError("the passwords differ")
    return first


def _users(settings: Settings) -> UsersDB:
    from txmailhub.hub_access import hub_owner, state_dir_owner
    from txmailhub.passwords import PasswordPolicy
    from txmailhub.users import UsersDB

    policy = PasswordPolicy(min_length=settings.users.min_password_length)
    # run as root: a users.d it makes is the hub's user's, as the file then is
    # (and one it may not make is said with that user's install -d line)
    return UsersDB(settings.users.file, settings.hub.primary_domain, settings.hub.domains,
                   password_policy=policy, folder_owner=hub_owner(settings.hub.state_dir),
                   hub_user=state_dir_owner(settings.hub.state_dir))


def _password_warnings(users: UsersDB, address: Address, password: str, allow_weak: str | None,
                       err: TextIO) -> None:
    """After a password was set: what ``--allow-weak`` or the ``warn``
    policy (``allow_weak`` says which) let through, and a password POP3
    ``PASS`` cannot carry (it is still good for AUTH PLAIN)."""
    from txmailhub.passwords import PASS_COMMAND_OCTETS
    from txmailhub.precis import prepare_password

    if allow_weak:
        # judged as it was stored: prepared (it was, or it would not be set)
        why = users.password_policy.refusal(prepare_password(password), address)
        if why:
            print(f"warning: {why}; accepted because of {allow_weak}", file=err)
    octets = len(password.encode("utf-8"))
    if octets > PASS_COMMAND_OCTETS:
        print(f"warning: the password is {octets} octets in UTF-8 and POP3 USER/PASS carries "
              f"at most {PASS_COMMAND_OCTETS}: the user must log in with AUTH PLAIN",
              file=err)


def _folder_names(folder: str) -> list[str]:
    """The names in ``folder`` read as the UTF-8 the hub names Maildirs
    in, whatever the file system encoding: without Python's UTF-8 mode
    under ``LC_ALL=C`` that encoding is ASCII, and a str path holding
    ``bücher.example`` cannot even be passed to ``listdir``.  Octets that
    are not UTF-8 are kept as surrogates (``surrogateescape``).  A folder
    that is not there has none; one that cannot be read raises
    ``OSError`` (``_unread``)."""
    try:
        names = os.listdir(folder.encode("utf-8", "surrogateescape"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name.decode("utf-8", "surrogateescape") for name in names)


def _is_maildir(path: str) -> bool:
    """A folder with a ``new`` or ``cur`` in it: one the hub (or another
    Maildir writer) made for a mailbox, not an administrator's own."""
    return any(_is_folder(os.path.join(path, sub)) for sub in ("new", "cur"))


def _is_folder(path: str) -> bool:
    return os.path.isdir(path.encode("utf-8", "surrogateescape"))


def _same_folder(path: str, other: str) -> bool:
    """Whether ``path`` is ``other`` under another name: a symbolic link
    to it, or its name on a file system that ignores case or tells no
    composed from decomposed names apart (APFS, HFS+, a Windows share).
    The hub reads such a folder's mail already: nothing to move."""
    try:
        return os.path.samefile(path.encode("utf-8", "surrogateescape"),
                                other.encode("utf-8", "surrogateescape"))
    except OSError:  # (``other`` is not there)
        return False


def _unread(folder: str, e: OSError) -> str:
    """The warning for a folder ``check`` could not look into for
    Maildirs spelled another way: without it, an ok would read as "none"."""
    return (f"{folder}: Maildirs under another spelling of a name are not looked for: it "
            f"{_not_read(e)}")


def _is_utf8(name: str) -> bool:
    """Whether a name ``_folder_names`` read was UTF-8 (no surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unique_names(maildir: str) -> set[str]:
    """The unique names (a file name before its ":") of the messages in
    ``maildir``'s new and cur: one message's in both a Maildir and the
    folder it moves to would replace the other (their UIDL too)."""
    return {name.partition(":")[0]
            for sub in ("new", "cur")
            for name in _folder_names(os.path.join(maildir, sub))}  # (OSError: _unread)


def _domain_folder_warnings(settings: Settings) -> list[str]:
    """A local domain no folder can be named after (``folder_name_problem``:
    its U-label form, the name of its folder under ``mail/``, over the file
    system's 255 octets in UTF-8, as three labels of 50 CJK characters
    are, 150 octets each, though their A-labels fit DNS's 253): no Maildir
    of it can be made, so ``RCPT`` to each of its users is refused with
    ``550 5.3.5`` and each POP3 login to one with ``[SYS/PERM]``.  At the
    domain's line of ``[hub] domains``, as that key's other warnings."""
    from txmailhub.store.maildir import folder_name_problem

    out = []
    # (the config loaded without problems: no domain was dropped as listed
    # twice, so the n-th is the n-th item of the list)
    for index, domain in enumerate(settings.hub.domains):
        why = folder_name_problem(domain)
        if why:
            out.append(f"{settings.path}: [hub] domains: {quoted(domain)}: {why}: no user at "
                       "it gets mail (RCPT is refused with 550 5.3.5) or can log in to POP3; its "
                       "aliases reach their targets at other domains only"
                       f"{settings.at('hub', 'domains', index)}")
    return out


def _old_maildir_folders(settings: Settings, user_keys: Collection[str] = ()) -> list[str]:
    """Maildirs under another spelling of a local domain (its A-label, a
    decomposed or capitalized U-label): where an earlier version kept
    them when the config named the domain that way.  The hub now uses the
    canonical U-label folder only, so their mail is out of reach until
    they are moved; so is that of a local part's folder spelled another
    way (``_old_local_folders``).  A domain no folder can be named after
    has neither (``_domain_folder_warnings`` says why)."""
    from txmailhub.address import canonical_domain
    from txmailhub.store.maildir import folder_name_problem

    out = []
    try:
        names = _folder_names(settings.mail_dir)
    except OSError as e:
        return [_unread(settings.mail_dir, e)]
    for name in names:
        folder = os.path.join(settings.mail_dir, name)
        try:
            # a name that is not UTF-8: the folder an 8-bit locale's hub
            # named (b\xfccher.example), when it spells a local domain so
            domain = canonical_domain(_latin_1_reading(name))
        except ValueError:
            continue
        new = os.path.join(settings.mail_dir, domain)
        if (domain != name and domain in settings.hub.domains and _is_folder(folder)
                and not folder_name_problem(domain) and not _same_folder(folder, new)):
            try:
                both, taken = _merged(folder, new)
            except OSError as e:
                out.append(_unread(_failed_at(e, folder), e))
                both = taken = 0
            out.append(f"{folder} holds Maildirs the hub no longer reads: the folder of "
                       f"{name} is now {new}; move them there"
                       + (f" ({both} of them {_verb(both)} a Maildir there already: move "
                          "their messages into it" if both else "")
                       + _taken(taken, "of their messages") + (")" if both else ""))
    for domain in settings.hub.domains:
        if folder_name_problem(domain):
            continue  # no folder of it, to look into (_domain_folder_warnings)
        out.extend(_old_local_folders(os.path.join(settings.mail_dir, domain), domain,
                                      user_keys))
    return out


def _folder_key(name: str) -> str:
    """The local part the hub keys a Maildir folder's name by
    (``canonical_local``), read as RCPT gives it, as the users file reads
    it (``as_rcpt_names``): ``"q"`` is ``q``, ``a;`` is ``"a;"``."""
    from txmailhub.address import Address, canonical_local
    from txmailhub.users import as_rcpt_names

    return canonical_local(as_rcpt_names(Address(name, "")).local)


def _old_local_folders(domain_folder: str, domain: str = "",
                       user_keys: Collection[str] = ()) -> list[str]:
    """Maildirs of a domain under a spelling of their local part that is
    not the one the hub keys mail by (``_folder_key``): a decomposed
    ``jörg`` (``o`` and U+0308), as an earlier version made the folder
    from a name typed so, one in quotes RCPT drops (``"q"``, the folder
    of an earlier version's users file line ``"q"@...``, which a login as
    ``"q"`` opened), or one without the quotes RCPT gives (``a;``, the
    folder of an earlier version's line ``a;@...``, which a login as
    ``a;`` and an alias target ``a;`` reached; ``.a`` too).  The hub
    delivers to and reads the other folder only, so the old one's mail is
    out of reach until moved.  ``user_keys``: the users file's keys; a
    folder with a leading dot is named only as the old folder of one of
    them (at ``domain``)."""
    out = []
    try:
        names = _folder_names(domain_folder)
    except OSError as e:
        return [_unread(domain_folder, e)]
    for name in names:
        utf8 = _is_utf8(name)
        try:
            key = _folder_key(_latin_1_reading(name))
        except ValueError:  # (no local part, read so)
            continue
        folder = os.path.join(domain_folder, name)
        new = os.path.join(domain_folder, key)
        # (a name that is not UTF-8 is a user's folder named in Latin-1 by
        # a hub under an 8-bit locale, ``jos\xe9``, or none the hub made;
        # nor has one with a leading dot, a Maildir++ subfolder or a
        # client's own, but for a user's old folder: ``.a`` of a line
        # ``.a@...``, which is the user ".a")
        if (key == name
                or ((name.startswith(".") or not utf8) and f"{key}@{domain}" not in user_keys)
                or not _is_maildir(folder) or _same_folder(folder, new)):
            continue
        # the two may look alike on a terminal: spell the old one out
        spelled = (name if utf8 else name.encode("utf-8", "surrogateescape").decode(
            "latin-1")).encode("ascii", "backslashreplace").decode("ascii")
        try:
            taken = len(_unique_names(folder) & _unique_names(new))
        except OSError as e:  # (its new or cur, or the new Maildir's)
            out.append(_unread(_failed_at(e, folder), e))
            taken = 0
        out.append(f"{folder} is a Maildir the hub no longer reads (its name is spelled "
                   f"{spelled}): the mail of that name is kept in {new}; move its messages "
                   "there" + _taken(taken))
    return out


def _latin_1_reading(name: str) -> str:
    """A folder's name as ``_folder_names`` read it, or, when its octets
    are not UTF-8, as Latin-1 (the encoding an 8-bit locale's hub named
    ``jos\xe9`` and ``b\xfccher.example`` in): the name to compare with
    the users and domains the hub has."""
    if _is_utf8(name):
        return name
    return name.encode("utf-8", "surrogateescape").decode("latin-1")


def _merged(old: str, new: str) -> tuple[int, int]:
    """(how many Maildirs of the domain folder ``old`` have one in ``new``
    under their local part's key, how many of their messages have the
    unique name of one in it).  ``OSError`` when a folder cannot be read."""
    both = taken = 0
    for name in _folder_names(old):
        maildir = os.path.join(old, name)
        there = os.path.join(new, _folder_key(name))
        if (name.startswith(".") or not _is_utf8(name) or not _is_folder(maildir)
                or not _is_folder(there) or _same_folder(maildir, there)):
            continue
        both += 1
        taken += len(_unique_names(maildir) & _unique_names(there))
    return both, taken


def _verb(n: int) -> str:
    return "has" if n == 1 else "have"


def _taken(taken: int, which: str = "of them") -> str:
    """The words for messages that would replace one of the same unique
    name where they are moved to (a Maildir's file name is its UIDL)."""
    if not taken:
        return ""
    return (f", but {taken} {which} {_verb(taken)} the unique name (a file name before its "
            "\":\") of a message there: give those new ones, or each replaces that message")


def _failed_at(e: OSError, folder: str) -> str:
    """The folder an ``OSError`` of ``_folder_names`` names, else ``folder``."""
    where = e.filename
    return where.decode("utf-8", "surrogateescape") if isinstance(where, bytes) else folder


def _smarthost_auth_problems(path: str, auth_file: str, warnings: list[str],
                             at: str = "") -> list[str]:
    """What the relay would trip over when it logs in to the smarthost
    (it reads the file at each delivery: a bad one turns every outbound
    message into a retry); a password every local user can read is a
    warning.  Each ends with ``at``, where the config names the file."""
    from txmailhub.relay.attempt import read_credentials_and_stat

    where = f"{path}: [relay] smarthost_auth_file: "
    try:
        # the mode of the file read, not of a second stat of the path: the
        # file may be gone (or replaced) since, which crashed check
        _, st = read_credentials_and_stat(auth_file)
    except UnicodeDecodeError:
        return [f"{where}{auth_file} is not UTF-8 text{at}"]
    except OSError as e:
        return [f"{where}{auth_file} {_not_read(e)}{at}"]
    except ValueError as e:
        return [f"{where}{e}{at}"]
    mode = st.st_mode
    # a group of its own (root:txmailhub 640) is fine, and so is a folder
    # on its way that others cannot enter
    if mode & 0o004 and _others_reach(auth_file):
        warnings.append(f"{where}{auth_file} holds a password and every local user can "
                        f"read it (mode {mode & 0o777:o}): chmod o-rwx{at}")
    return []


def smarthost_auth_problems(settings: Settings, warnings: list[str]) -> list[str]:
    """``[relay] smarthost_auth_file`` read as the relay will: its problems
    (``twistd mailhub`` refuses to start on them, as ``check`` does), and
    a warning added to ``warnings`` for a password every user can read."""
    auth_file = settings.relay.smarthost_auth_file
    # (none there when the config was loaded: ``load`` said so.  Read
    # whatever is there now: a FIFO put there since is said, not skipped)
    if auth_file:
        return _smarthost_auth_problems(settings.path, auth_file, warnings,
                                        settings.at("relay", "smarthost_auth_file"))
    return []


def secret_file_warnings(settings: Settings) -> list[str]:
    """A warning for each file the config names that holds a secret of the
    hub's -- the users file (password hashes, APOP secrets, which are the
    passwords themselves) and the TLS private key -- when every local user
    may read it (the ``o+r`` bit): the hub makes the users file 0600, but
    one written or copied in by hand keeps its mode until the next
    ``mailhub user`` command.  The
    smarthost password's is ``smarthost_auth_problems``'s.  Then
    ``unguarded_file_warnings``: a file the hub trusts that every local
    user may change."""
    warnings: list[str] = []
    files = [(settings.users.file, "users", "file",
              "holds the users' password hashes and APOP secrets")]
    if settings.tls is not None:
        files.append((settings.tls.key, "tls", "key", "holds the TLS private key"))
    for path, section, key, what in files:
        try:
            mode = os.stat(path).st_mode  # the file a link leads to
        except OSError:
            continue  # (a missing or unreadable one is said elsewhere)
        if stat.S_ISREG(mode) and mode & 0o004 and _others_reach(path):
            warnings.append(f"{settings.path}: [{section}] {key}: {path} {what} and every "
                            f"local user can read it (mode {mode & 0o777:o}): chmod o-rwx"
                            f"{settings.at(section, key)}")
    return warnings + unguarded_file_warnings(settings)


def unguarded_file_warnings(settings: Settings) -> list[str]:
    """A warning for each file the hub trusts -- the config, the users and
    aliases files, the TLS pair -- that every local user may change: the
    file itself (``o+w``), or the folder it is in (``o+w`` without the
    sticky bit, which keeps others from replacing a file not theirs).  A
    line of theirs in the users file logs them in as anyone, one in the
    aliases file takes anyone's mail."""
    files: list[tuple[str, str, str, str]] = [
        (settings.path, "", "", "is the hub's configuration")]
    files.append((settings.users.file, "users", "file", "says who logs in with what password"))
    if settings.aliases.file:
        files.append((settings.aliases.file, "aliases", "file", "says where mail goes"))
    if settings.tls is not None:
        files.append((settings.tls.certificate, "tls", "certificate", "is the TLS certificate"))
        files.append((settings.tls.key, "tls", "key", "is the TLS private key"))
    warnings: list[str] = []
    for path, section, key, what in files:
        where = f"{settings.path}: " + (f"[{section}] {key}: " if section else "")
        at = settings.at(section, key) if section else ""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            continue  # (a missing or unreadable one is said elsewhere)
        if not stat.S_ISREG(st.st_mode):
            continue
        if not _others_reach(real):
            continue
        if st.st_mode & stat.S_IWOTH:
            warnings.append(f"{where}{path} {what}, and every local user may change it "
                            f"(mode {stat.S_IMODE(st.st_mode):o}): chmod o-w "
                            f"{shlex.quote(real)}{at}")
            continue
        for folder in dict.fromkeys((os.path.dirname(os.path.abspath(path)),
                                     os.path.dirname(real))):
            try:
                fst = os.stat(folder)
            except OSError:
                continue
            if (fst.st_mode & stat.S_IWOTH and not fst.st_mode & stat.S_ISVTX
                    and _others_reach(folder)):
                warnings.append(f"{where}{path} {what}, and every local user may put a file "
                                f"of their own in its place: its folder {folder} is writable "
                                f"by all (mode {stat.S_IMODE(fst.st_mode):04o}): chmod o-w "
                                f"{shlex.quote(folder)}{at}")
                break
    return warnings


def _others_reach(path: str) -> bool:
    """Whether every folder on the way to ``path`` (links followed) lets
    other users through (``o+x``): a 0644 users file inside the 0700
    ``users.d`` the deployment guide makes is read, or changed, by nobody
    else, and a warning of it would only be noise."""
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            if not os.stat(folder).st_mode & 0o001 and not _has_acl(folder):
                return False
        except OSError:
            return True  # (not known: warn rather than stay silent)
        parent = os.path.dirname(folder)
        if parent == folder:
            return True
        folder = parent


def _has_acl(folder: str) -> bool:
    """Whether ``folder`` has a POSIX access ACL, whose entries for named
    users the mode bits do not show: such a folder may let one of them
    through, so it closes nothing for the warnings."""
    try:
        return "system.posix_acl_access" in os.listxattr(folder)
    except OSError:
        return False  # (no extended attributes there: the mode bits are all)


def _state_dir_problems(settings: Settings) -> list[str]:
    """Whether this user could start the hub on ``state_dir``: write it, or
    make it (run ``check`` as the user the hub runs as -- a systemd
    ``ExecStartPre`` does -- and this is the start's own first step).
    At the line of [hub] state_dir when the file writes it."""
    state_dir = os.path.abspath(settings.hub.state_dir)
    where = f"{settings.path}: [hub] state_dir: "
    at = settings.at("hub", "state_dir")
    if os.path.isdir(state_dir):
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return [f"{where}{state_dir} cannot be written by this user (uid {os.geteuid()}): "
                    f"it and everything in it must belong to the user the hub runs as{at}"]
        from txmailhub.hub_access import state_dir_open

        why = state_dir_open(state_dir)  # the start refuses it too
        return [f"{where}{state_dir} {why}{at}"] if why else []
    # lexists: a symlink to nothing is in the way (os.makedirs cannot
    # make a folder through it), where exists() took it for no file at all
    parent = os.path.dirname(state_dir)
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.lexists(state_dir) or not os.path.isdir(parent):
        # named, as the start names it: "something" left the admin to
        # search every folder of the path for the file to move
        blocker = state_dir if os.path.lexists(state_dir) else parent
        return [f"{where}{blocker} is not a folder and is in the way of {state_dir}: "
                f"move it, or name another [hub] state_dir{at}"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where}{state_dir} does not exist and this user (uid {os.geteuid()}) "
                f"cannot make it in {parent}: make it and give it to the user the hub runs "
                f"as{at}"]
    return []


def _hub_user_warnings(settings: Settings) -> list[str]:
    """Run as root, ``check`` itself can read every file; the hub, running
    as its own user, may not (a users file root made 0600, a key only
    root reads): every local RCPT answered 451, every login refused, TLS
    gone at the next reload.  That user is taken to be ``state_dir``'s
    owner (deployment.rst; txmailhub.hub_access), and each file the hub
    reads is judged by the mode bits along its path.  Nothing when not
    root (the files were opened as this user above) or when ``state_dir``
    is root's or not there yet (no other user to judge for).  Each is at
    the line of the key that names the file."""
    from txmailhub.hub_access import hub_owner, name_of, unreadable_by

    state_dir = os.path.abspath(settings.hub.state_dir)
    owner = hub_owner(state_dir)
    if owner is None:
        return []
    files = [("users", "file", settings.users.file), ("aliases", "file", settings.aliases.file)]
    if settings.tls is not None:
        files += [("tls", "certificate", settings.tls.certificate),
                  ("tls", "key", settings.tls.key)]
    files.append(("relay", "smarthost_auth_file", settings.relay.smarthost_auth_file))
    user = name_of(owner[0])
    out = []
    for section, key, path in files:
        why = unreadable_by(path, *owner) if path else None
        if why:
            how = _hub_read_advice(settings, section, path, why, owner)
            out.append(f"{settings.path}: [{section}] {key}: {path} cannot be read by {user}, "
                       f"the owner of state_dir {state_dir} and so the user the hub runs as: "
                       f"{why}{f'; {how}' if how else ''}{settings.at(section, key)}")
    return out


def _hub_read_advice(settings: Settings, section: str, path: str, why: str,
                     owner: tuple[int, int]) -> str | None:
    """What root does about a file the hub's user (``owner``) may not read,
    when what is in the way is the file itself (or, for the users file, its
    own folder, ``users.d``, which the hub's user is to own): the users
    folder's ``chown -R``; for the TLS files and the smarthost's password
    (secrets: the hub's group reads them, others do not), the ``chgrp`` and
    ``chmod 640`` of deployment.rst; for the aliases file (root's, and no
    secret, as ``/etc/aliases``), ``chmod 644`` whatever its group.  A
    TLS or password file whose own group reads it (``root:ssl-cert 0640``,
    shared with other services) gets the ``usermod`` that adds the hub's
    user to that group instead.  ``None``
    for a folder higher up (the admin's layout): the owner and mode ``why``
    names say enough there."""
    import shlex

    from txmailhub.config import _hub_group

    real = os.path.realpath(path)
    if section == "users":
        folder = os.path.dirname(real)
        if not (why.startswith(f"{real} is ") or why.startswith(f"the folder {folder} is ")):
            return None
        from txmailhub.users_folder import hub_cannot_read_advice

        return hub_cannot_read_advice(path, owner)
    if section in ("tls", "relay", "aliases") and why.startswith(f"{real} is "):
        from txmailhub.hub_access import group_name, name_of

        state_dir = os.path.abspath(settings.hub.state_dir)
        gid = _hub_group(state_dir, os.stat(state_dir))
        group = group_name(gid)
        st = os.stat(real)
        pasted = shlex.quote(path)
        if section == "aliases":
            # no secret: readable by all, whichever group reads it now
            # (joining that group would hand the hub whatever else it reads)
            return f"chmod 644 {pasted} (docs/deployment.rst)"
        if st.st_gid not in (0, gid) and st.st_mode & 0o040:
            # root:ssl-cert 0640, a key other services read through their
            # group: a chgrp would take it from them.  The hub's user joins
            # that group instead (twistd's --uid and systemd's User= start
            # it with the groups /etc/group lists it in)
            shared = group_name(st.st_gid)
            user = name_of(owner[0])
            if user.startswith("uid "):  # no name to give usermod (DynamicUser=)
                join = f"SupplementaryGroups={shared} in its systemd unit"
            else:
                join = " ".join(shlex.quote(w) for w in ("usermod", "-a", "-G", shared, user))
            return (f"its group reads it (other services' too, perhaps): rather than change "
                    f"the file's group, add the hub's user to that one ({join}), then restart "
                    "the hub (docs/deployment.rst)")
        return f"chgrp {shlex.quote(group)} {pasted} && chmod 640 {pasted} (docs/deployment.rst)"
    return None


def _check(settings: Settings, out: TextIO, err: TextIO) -> int:
    problems: list[str] = []
    users = _users(settings)
    users_read = True
    try:
        users.addresses()
    except OSError as e:  # one line naming the key, as for every config problem
        users_read = False
        what = "is a folder, not a file" if os.path.isdir(settings.users.file) else \
            _not_read(e)
        problems.append(f"{settings.path}: [users] file: {settings.users.file} {what}"
                        f"{settings.at('users', 'file')}")
    problems.extend(users.problems)
    from txmailhub.config import endpoint_readiness

    for section, key, descriptions in (
        ("smtp", "listen", settings.smtp.listen),
        ("submission", "listen", settings.submission.listen),
        ("submission", "tls_listen", settings.submission.tls_listen),
        ("pop3", "listen", settings.pop3.listen),
        ("pop3", "tls_listen", settings.pop3.tls_listen),
    ):
        for index, description in enumerate(descriptions):
            why = endpoint_readiness(description)
            if why:  # at the line of the listener's own item
                problems.append(f"{settings.path}: [{section}] {key}: {why}"
                                f"{settings.at(section, key, index)}")
    problems.extend(_state_dir_problems(settings))
    warnings = list(settings.warnings)
    warnings.extend(_domain_folder_warnings(settings))
    warnings.extend(_old_maildir_folders(
        settings, {a.key for a in users.addresses()} if users_read else ()))
    warnings.extend(_hub_user_warnings(settings))
    if users_read and not users.missing:
        from txmailhub.users import mail_never_reaches

        lines = users.lines()
        for address in users.addresses():
            why = mail_never_reaches(address)
            if why:
                # at the user's line of the users file, which the admin
                # edits or `user del`s, as that file's problems are
                # (PATH:LINENO); the config's line of [users] file, said
                # after the user, read as the user's line
                line = lines.get(address.key)
                at = f":{line}" if line else ""
                warnings.append(f"{settings.users.file}{at}: user {address.key}: {why}")
    problems.extend(smarthost_auth_problems(settings, warnings))
    warnings.extend(secret_file_warnings(settings))
    if settings.aliases.file:
        from txmailhub.regular_file import read_regular
        from txmailhub.router import (
            ALIASES_FILE_MAX,
            alias_target_warnings,
            check_aliases_file,
            line_end_warnings,
        )

        try:
            # never a plain open: one of a FIFO put there since the config
            # was loaded would wait for a writer for ever, as the hub would not
            read_regular(settings.aliases.file, most=ALIASES_FILE_MAX)
        except OSError as e:  # the config's key, as for the users file above
            problems.append(f"{settings.path}: [aliases] file: {settings.aliases.file} "
                            f"{_not_read(e)}{settings.at('aliases', 'file')}")
        else:
            problems.extend(check_aliases_file(
                settings.aliases.file, settings.hub.primary_domain, settings.hub.domains))
            warnings.extend(line_end_warnings(settings.aliases.file))
        if not users.missing and users_read:
            warnings.extend(alias_target_warnings(
                settings.aliases.file, settings.hub.primary_domain, settings.hub.domains,
                users.contains))
        elif not users_read:
            # said once, not skipped without a word: an ok for the aliases
            # would otherwise read as "every target is a user"
            warnings.append(f"{settings.aliases.file}: alias targets that are no user and "
                            "aliases that take a user's mail are not checked: the users file "
                            f"{settings.users.file} cannot be read")
    # names from the users and aliases files (an alias target with a bidi
    # override, a user with ESC) reach these lines: escaped as ``user
    # list`` and ``alias list`` show them, never raw to the terminal
    for warning in warnings:
        print(f"warning: {_shown_lines(warning)}", file=err)
    if users.missing and users_read:  # (an unreadable file is a problem above)
        # not fatal (aliases may send everything elsewhere), but until it
        # exists every local mailbox is answered 451, and nobody can log in
        from txmailhub.hub_access import state_dir_owner
        from txmailhub.users_folder import (
            cannot_make_folder,
            make_folder_advice,
            unwritable_folder_advice,
        )

        hub_user = state_dir_owner(settings.hub.state_dir)
        folder = cannot_make_folder(settings.users.file)
        # a users.d that is there but not this user's to write: user add
        # fails on users.lock, so "mailhub user add makes it" is not true
        unwritable = unwritable_folder_advice(settings.users.file, hub_user)
        if folder is not None:
            how = (", and this user cannot make its folder (mailhub user add would fail): "
                   + make_folder_advice(folder, hub_user))
        elif unwritable is not None:
            how = f", and {unwritable}"
        else:
            how = " (mailhub user add makes it)"
        after = ""
        try:
            # the file root's user add makes is its folder's owner's: only
            # a users.d that is root's, or that it makes (root's too, with
            # no state_dir to give it to), leaves the file root's
            folder_owner = os.stat(os.path.dirname(os.path.abspath(settings.users.file))).st_uid
        except OSError:
            folder_owner = 0
        if (os.geteuid() == 0 and hub_user is None and folder is None and unwritable is None
                and folder_owner == 0):
            # README's steps had root run `user add` here, before the hub's
            # state_dir: the file is then root's 0600, which the hub, run as
            # its own user, cannot read (every local RCPT 451, every login
            # refused) -- this line said "mailhub user add makes it" only
            after = ("; there is no state_dir yet, so root's mailhub user add would make it "
                     "root's, mode 0600: for a hub that runs as its own user, make state_dir "
                     "for that user first (docs/deployment.rst)")
        print(f"warning: the users file {settings.users.file} does not exist yet{how}; "
              f"until then local mail is refused with 451{after}", file=err)
    if problems:
        for problem in problems:
            print(_shown_lines(problem), file=err)
        return 2
    print(f"{settings.path}: ok", file=out)
    return 0


_shown_lines = shown_lines


def _not_read(e: OSError) -> str:
    """Why ``check`` could not read a file it names: a FIFO, device or
    socket in its place (``read_regular`` refuses it) as the config's own
    check says it, anything else with the error's words."""
    from txmailhub.regular_file import NotRegularFile

    if isinstance(e, NotRegularFile):
        return "is not a regular file"
    return f"cannot be read: {e.strerror or e}"


def _aliases_table(settings: Settings, lines: dict[str, int] | None = None
                   ) -> Aliases | None:
    """The aliases file as the hub takes it, or None when it cannot be
    read (``check`` says why).  Read as the hub reads it: a FIFO put in
    its place is refused, not waited on.  ``lines`` is filled with each
    alias's line (``parse_aliases``): the warnings about one name it as
    ``check``'s do, ``PATH:LINENO:``."""
    from txmailhub.regular_file import read_regular
    from txmailhub.router import ALIASES_FILE_MAX, parse_aliases

    if not settings.aliases.file:
        return None
    try:
        raw, _ = read_regular(settings.aliases.file, most=ALIASES_FILE_MAX)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # (the problems, which name the file, are check's to say: not kept)
    return parse_aliases(text, settings.hub.primary_domain, settings.hub.domains,
                         lines=lines)[0]


def _alias_at(settings: Settings, lines: dict[str, int], alias: str) -> str:
    """``PATH:LINENO`` of ``alias`` in the aliases file, as ``check``
    names the file's problems and warnings (``PATH`` alone: no line)."""
    line = lines.get(alias)
    return f"{settings.aliases.file}:{line}" if line else str(settings.aliases.file)


def _hidden_by_alias(settings: Settings, key: str) -> str | None:
    """Where (``PATH:LINENO``) an alias of that name, not listing the
    user's own mailbox, takes the user's mail (the alias comes first);
    ``None``: none does."""
    if not settings.aliases.file:
        return None
    from txmailhub.router import hides_user

    lines: dict[str, int] = {}
    table = _aliases_table(settings, lines)
    if table is None:
        return None  # check says what is wrong with the file
    targets = table.get(key)
    if targets is None or not hides_user(key, targets):
        return None
    return _alias_at(settings, lines, key)


def _aliases_naming(settings: Settings, key: str) -> list[tuple[str, str]]:
    """The aliases that send mail to the mailbox ``key``, each with where
    it is (``PATH:LINENO``), in the file's order: once that user is
    deleted the hub skips the target, and an alias such as ``postmaster:
    joe`` quietly stops reaching anybody."""
    if not settings.aliases.file:
        return []
    lines: dict[str, int] = {}
    table = _aliases_table(settings, lines)
    if table is None:
        return []  # check says what is wrong with the file
    return [(name, _alias_at(settings, lines, name))
            for name in sorted(_naming(table, key), key=lambda name: lines.get(name, 0))]


def _naming(table: Aliases, key: str) -> list[str]:
    """The aliases of ``table`` with the mailbox ``key`` among their
    targets, as the hub takes them (``_aliases_naming``)."""
    if key in table:
        # an alias of that name takes over the expanded targets: they are
        # not skipped; only the ``\name`` ones, the mailbox itself, are --
        # and that alias's own name among its targets (``joe: joe``), which
        # the hub takes as the mailbox too (``Router``)
        return [name for name, targets in table.items()
                if any(t.key == key and (not expand or name == key) for t, expand in targets)]
    return [name for name, targets in table.items()
            if any(t.key == key for t, _expand in targets)]


def _user(settings: Settings, args: argparse.Namespace, out: TextIO, stdin: TextIO | None,
          err: TextIO | None = None) -> int:
    users = _users(settings)
    cmd = args.user_command
    if getattr(args, "address", None) is not None:
        args.address = typed_text(args.address)
    if cmd == "list":
        # as the hub knows them (Maildir, logins, logs): lower case, an IDN
        # in its one form, however the line was typed into the file; a
        # control character in a name written before they were refused
        # (ESC) is shown escaped: it could rewrite what the terminal shows
        if not args.usage:
            for address in users.addresses():
                print(shown(address.key), file=out)
            return 0
        from txmailhub.store.maildir import maildir_path
        from txmailhub.store.quota import MailboxUsage

        meter = MailboxUsage()
        quota = settings.hub.mailbox_quota or "none"
        code = 0
        for address in users.addresses():
            # what RCPT measures against the quota (docs/smtp.rst)
            try:
                held: int | str = meter.usage(maildir_path(settings.mail_dir, address))
            except (OSError, LocalError, UnicodeError) as e:
                # as du does: say why on stderr, list the others, exit 1.
                # A local part no folder may have ("a/b"), a Maildir this
                # user may not read, a name the file system encoding
                # cannot spell: the hub gives those mailboxes their mail
                # (the quota is soft), so the listing must go on too
                held, code = "unknown", 1
                why = (f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror
                       else e)
                # the path names the user: escaped as the name is
                print(f"mailhub: cannot measure the mailbox of {shown(address.key)}: "
                      f"{shown(str(why))}",
                      file=err or error_stream())
            print(f"{shown(address.key)}\t{held}\t{quota}", file=out)
        return code
    if cmd == "del":
        deleted = users.delete(args.address)
        print(f"deleted {shown(deleted.key)}", file=out)  # as add and list name it
        # one line per alias, at its line (as check will say each)
        for name, at in _aliases_naming(settings, deleted.key):
            print(shown(f"warning: {at}: alias {name} names {deleted.key}, which is no user "
                        "now: the hub skips that target (mailhub alias set to change it)"),
                  file=err or error_stream())
        return 0
    # an unknown user, one that exists already or an address that is no
    # local one: said before the password is typed (twice), not after
    users.precheck(args.address, new=cmd == "add")
    err = err or error_stream()
    password = _read_password(args.password_stdin, stdin, err)
    # what lets a weak password through, for the warning: nothing under
    # password_policy = "enforce" without the flag
    allow_weak = ("--allow-weak" if args.allow_weak else
                  '[users] password_policy = "warn" (set "enforce" to refuse such passwords)'
                  if settings.users.password_policy == "warn" else None)
    if cmd == "add":
        address = users.add(args.address, password, allow_apop=args.allow_apop,
                            allow_weak=bool(allow_weak))
        print(f"added {address.key}", file=out)  # as stored: the case a login may use
        _password_warnings(users, address, password, allow_weak, err)
        hidden_at = _hidden_by_alias(settings, address.key)
        if hidden_at:
            print(shown(f"warning: {hidden_at}: alias {address.key} has this user's name and "
                        "comes first: mail to it goes to the alias's targets, not to this "
                        f"user's mailbox (add \\{address.key} to them to keep a copy there); "
                        "logins work"),
                  file=err)
    else:
        address = users.set_password(args.address, password, allow_weak=bool(allow_weak))
        print(f"changed the password of {shown(address.key)}", file=out)
        _password_warnings(users, address, password, allow_weak, err)
    return 0


def main(
    argv: list[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out, err, stdin = out or sys.stdout, err or error_stream(), stdin or sys.stdin
    # addresses and remote text as UTF-8 octets, whatever the locale: a
    # listing must not die at the first address the locale cannot spell.
    # The process's own streams only: one a calling program passed (a file
    # it opened as Latin-1, say) keeps the encoding it was opened with,
    # during the call and after it
    utf8_output(*(s for s in (out, err) if s is sys.stdout or s is sys.stderr))
    split = _sendmail_split(sys.argv[1:] if argv is None else argv)
    if split is not None:
        from txmailhub.sendmail import run as sendmail

        # its own exit codes: sysexits(3), as every caller of sendmail expects
        parsed = _parse([*split[0], "check"], out, err)
        config = parsed.config
        if not config:  # a global option: mailhub's usage error, as any other of its own
            print(f"mailhub: {empty_config_path('--config')}", file=err)
            return 2
        return sendmail(split[1], config, "mailhub sendmail", stdin=getattr(stdin, "buffer", None),
                        err=err, out=out,
                        config_option=None if getattr(parsed, "config_given", False)
                        else "--config")
    args = _parse(argv, out, err)
    if not args.config:  # --config= or -c '': not the default file (config.empty_config_path)
        print(f"mailhub: {empty_config_path('--config')}", file=err)
        return 2
    if out is None:
        # started with standard output closed (``>&-``): sys.stdout is
        # None, and the first flush was a traceback, after the work was done
        print("mailhub: standard output is closed: nowhere to write what the command says; "
              "nothing was done", file=err)
        return 1
    if getattr(args, "password", None) is not None:
        # `user add joe joepw`, as htpasswd and many tools take it: not
        # taken (ps and the shell's history would show the password), but
        # the refusal says where it goes instead of "unrecognized arguments"
        print(f"mailhub user {args.user_command}: the password is not taken as an argument "
              f"(ps and the shell's history would show it): type it at the prompt, or give "
              f"it on the first line of standard input with --password-stdin", file=err)
        return 2
    try:
        # only check (of the commands) needs the TLS pair: the others warn
        # of one this user cannot read, and do their work
        settings = load(args.config, tls_needed=args.command == "check")
    except ConfigError as e:
        # as ``check`` prints them: what the config holds, escaped
        for warning in e.warnings:
            print(f"warning: {_shown_lines(warning)}", file=err)
        if not getattr(args, "config_given", False):  # say why that file: none was named
            print(_shown_lines(f"mailhub: no --config PATH given: reading {args.config} "
                               f"($MAILHUB_CONFIG, else {SYSTEM_CONFIG})"), file=err)
        for problem in e.problems:
            print(_shown_lines(problem), file=err)
        return 2
    for line in settings.tls_unread:
        print(f"warning: {_shown_lines(line)}; not needed by mailhub {args.command}, but the "
              "hub and mailhub check need it", file=err)
    try:
        code = _command(settings, args, out, err, stdin)
        out.flush()  # here, where a closed pipe is still ours to handle
        return code
    except KeyboardInterrupt:  # Ctrl-C (at a password prompt, say): no traceback
        print(file=err)
        return 130
    except BrokenPipeError:
        # The reader went away (``mailhub queue list | head -1``): stop
        # quietly, as the standard tools do, instead of a message about it.
        _discard_output(out)
        return 1
    except WeakPassword as e:
        # the reasons, then the way out: without it the refusal read as if
        # no such password could ever be set (it can, for tests and the like)
        print(shown_message(f"mailhub: {e}; {_WEAK_WAY_OUT}"), file=err)
        return 2
    except UsersFileError as e:
        print(shown_message(f"mailhub: {e}"), file=err)
        return 1 if isinstance(e, UserExists | NoSuchUser) else 2
    except AliasesFileError as e:
        for line in str(e).split("\n"):
            print(shown_message(f"mailhub: {line}"), file=err)
        return 2 if isinstance(e, BadAlias) else 1
    except ArgumentNotUTF8 as e:
        print(f"mailhub: {e}", file=err)
        return 2
    except OSError as e:
        # (a FIFO where a file should be, ``NotRegularFile``: its ``path``)
        filename = e.filename or getattr(e, "path", None)
        where = f"{filename}: " if filename else ""
        print(shown(f"mailhub: {where}{e.strerror or e}"), file=err)
        return 1


def _command(
    settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO | None
) -> int:
    if args.command == "check":
        return _check(settings, out, err)
    if args.command == "user":
        return _user(settings, args, out, stdin, err)
    if args.command == "alias":
        from txmailhub.alias_admin import run_alias

        return run_alias(settings, args, out, err)
    from txmailhub.relay.admin import run_queue

    return run_queue(settings, args, out, err)


def _discard_output(out: TextIO) -> None:
    """Point ``out``'s descriptor at /dev/null, so that the flush at exit
    does not fail on the closed pipe a second time (and print about it)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return  # not a file (tests): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)

