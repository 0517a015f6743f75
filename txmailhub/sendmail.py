"""``txmailhub-sendmail`` and ``mailhub sendmail``: the sendmail(8) command
line that local programs (cron, scripts, PHP's ``mail()``, ``git
send-email``, mutt) expect, handing each message to the running hub.

Owns the sendmail option syntax (with the ``-bp`` and ``-bi`` modes of
``mailq`` and ``newaliases``; ``-bv``'s verification is
``txmailhub.sendmail_verify``'s), the header fields a local submission needs
(Bcc, Return-Path and Content-Length removed; Date, Message-ID and From
added when missing, their Resent- forms for a message sent on again, a
Sender when From names several mailboxes: the hub's MX listener adds none
for a ``relay_networks`` client, docs/smtp.rst; bare names in the address
fields qualified, ``txmailhub.sendmail_headers``; a Received field naming
the local user on top) and the command's exit codes.
``txmailhub.sendmail_input`` owns reading standard input (the lone-dot
rule, line ends, the body spooled, never held whole);
``txmailhub.sendmail_smtp`` the SMTP transaction and the sysexits(3) code
of each failure.

It submits over SMTP to the hub's own MX listener on loopback (or its
``unix:`` socket) as a ``relay_networks`` client.  It keeps no queue:
exit 0 means the hub took the message for every recipient; any other
status means it took it for none, and stderr says why, so the caller
still holds the only copy and can tell -- but for one case no client can
rule out: the connection lost after the whole message was sent, before
the hub's reply (exit 75, and stderr says the message MAY have been sent);
and for more recipients than the hub takes in one transaction, sent in
several after all were accepted, when a later one still fails (stderr
names those who have it); and an internal error (a bug: exit 70), which
may come at any point.
Blocking ``smtplib`` is right here: this is a short-lived command, not
part of the reactor.
"""

from __future__ import annotations

import contextlib
import email.utils
import getopt
import os
import pwd
import smtplib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TextIO

from txmailhub.address import (
    Address,
    AddressError,
    ascii_form,
    canonical_domain,
    parse_address,
    rcpt_mailbox,
)
from txmailhub.cli_output import error_stream, utf8_output
from txmailhub.config import (
    SYSTEM_CONFIG,
    LocalSubmission,
    empty_config_path,
    load_local_submission,
)
from txmailhub.errors import ConfigError, Rejected, RemoteProtocolError
from txmailhub.logsafe import quoted, shown, shown_lines, shown_traceback, utf8_joined
from txmailhub.rfc2047 import encoded_words
from txmailhub.sendmail_headers import ADDRESS_FIELDS, Unreadable, addr_specs, qualify_field
from txmailhub.sendmail_input import MessageTooBig, StdinMessage, StdinUnreadable, read_message
from txmailhub.sendmail_smtp import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    OutcomeUnknown,
    PartlySent,
    Refused,
    Target,
    hub_targets,
    open_session,
    submit,
)
from txmailhub.smtp._parse import MAX_PATH, parse_mail, parse_mailbox, parse_rcpt
from txmailhub.smtp.xtext import xtext_encode

if TYPE_CHECKING:
    from txmailhub.router import Router

__all__ = [
    "EX_CONFIG", "EX_DATAERR", "EX_IOERR", "EX_NOPERM", "EX_NOUSER", "EX_OK", "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE", "EX_USAGE", "MAILQ_EMPTY", "HeaderNul", "LoginNotAddress",
    "MessageTooBig",
    "Options", "Prepared",
    "StdinMessage", "UsageError", "hub_targets", "main", "Target", "parse_args", "prepare",
    "read_message", "run", "submit", "trace_field",
]

# Options with an argument that are accepted and ignored, as Postfix does:
# -A (submit.cf), -B body type (8-bit is detected), -d debug, -o delivery
# modes, -h hop count, -L syslog label, -M macro, -O options, -p protocol,
# -X traffic log.  Without one: -c, -m, -n, -s, -U.  The error modes
# (-oeX, and the old spelling -eX) are read (``Options.error_mode``), and
# -G (a gateway's submission) is acted on.
# -I is -bi, as in sendmail and Postfix (package scripts call either).
_OPTSTRING = "A:B:b:C:cd:e:F:f:Gh:IiL:M:mN:nO:o:p:q:R:r:sUtV:vX:"
_IGNORED = set("ABcdhLMmnOpsUX")
_NOTIFY = {"success", "failure", "delay"}
_MODES = ("m", "p", "i", "s", "v")
#: what ``-bp`` (``mailq``) prints for an empty queue: Postfix's words
MAILQ_EMPTY = "Mail queue is empty"


class UsageError(Exception):
    """A command line this command cannot act on (exit 64)."""


class HeaderNul(ValueError):
    """A NUL octet in a header field of the message (exit 65,
    ``EX_DATAERR``): ``_refuse_nul``."""


class LoginNotAddress(AddressError):
    """The login name would be the sender's address (no ``-f``, or a null
    sender and no From field) and no local part can hold it, not even
    quoted: empty, a control character, not UTF-8 (exit 67,
    EX_NOUSER: no mailbox by that name can exist, which ``-f`` works
    around; the message itself is fine, so not 65)."""


@dataclass(frozen=True)
class Options:
    """The command line, read."""

    recipients: tuple[str, ...] = ()
    extract: bool = False                 # -t
    sender: str | None = None             # -f/-r; "" is the null sender <>
    full_name: str | None = None          # -F
    ignore_dots: bool = False             # -i, -oi
    config: str | None = None             # -C
    verbose: bool = False                 # -v
    notify: str | None = None             # -N: DSN NOTIFY on each RCPT (RFC 3461)
    ret: str | None = None                # -R: DSN RET on MAIL
    envid: str | None = None              # -V: DSN ENVID on MAIL
    mode: str = "m"                       # -bm send (the default), -bp list the queue,
                                          # -bi rebuild the aliases (nothing to do),
                                          # -bs SMTP on stdin and stdout,
                                          # -bv verify the recipients (nothing sent)
    error_mode: str | None = None         # -oeX (or -eX): sendmail's error mode X
    gateway: bool = False                 # -G: a gateway's submission, fields not fixed


def typed(text: str) -> str:
    """An argument, a variable or a password file's field as the UTF-8
    text it was written in, whatever the locale: under one whose encoding
    is not UTF-8 (``LC_ALL=C`` without Python's UTF-8 mode) Python keeps
    the octets of ``jos\u00e9`` as surrogates, which were refused as "not
    UTF-8 text" (an address) or became U+FFFD (a full name).  Octets that
    are not UTF-8 stay surrogates, refused as before."""
    return utf8_joined(text)


def parse_args(argv: list[str]) -> Options:
    """Read sendmail(8) options (getopt syntax: ``-oi``, ``-fADDR`` or
    ``-f ADDR``, ``-ti``, ``--`` ends them), then the recipients.
    Raise ``UsageError`` for an unknown option or a mode not offered."""
    try:
        opts, args = getopt.getopt(argv, _OPTSTRING)
    except getopt.GetoptError as e:
        if e.opt == "q":  # a bare `-q` (run the queue now) would read as "needs a value"
            raise UsageError("-q: the hub runs its own queue; see mailhub queue flush") from None
        raise UsageError(str(e)) from None
    found: dict[str, object] = {}
    for flag, value in opts:
        letter = flag[1]
        if letter in "fr":
            found["sender"] = typed(value)
        elif letter == "F":
            found["full_name"] = typed(value)
        elif letter == "t":
            found["extract"] = True
        elif letter == "i" or (letter == "o" and value == "i"):
            found["ignore_dots"] = True
        elif letter == "C":
            if not value:  # -C "$CONF" with $CONF unset: not the default file
                raise UsageError(empty_config_path("-C"))
            found["config"] = value
        elif letter == "v":
            found["verbose"] = True
        elif letter == "N":
            found["notify"] = _notify(value)
        elif letter == "R":
            if value.lower() not in ("full", "hdrs"):
                raise UsageError(f"-R {value}: full or hdrs (RFC 3461 4.3)")
            found["ret"] = value.upper()
        elif letter == "V":
            # RFC 3461 4.4: up to 100 characters as sent, that is as xtext
            # ("a b" is "a+20b"): a longer one the hub refuses after the
            # message was read, with exit 65
            if (not value or not value.isprintable() or not value.isascii()
                    or len(xtext_encode(value)) > 100):
                raise UsageError("-V: an envelope id is 1 to 100 printable ASCII characters, "
                                 "counting each '+', '=' or space as 3")
            found["envid"] = value
        elif letter == "b":
            if value not in _MODES:
                raise UsageError(f"-b{value}: only -bm (read a message and send it), -bs "
                                 "(SMTP on standard input and output), -bp (list the queue, "
                                 "as mailq), -bv (verify the recipients) and -bi "
                                 "(newaliases) are offered")
            found["mode"] = value
        elif letter == "e" or (letter == "o" and value.startswith("e")):
            found["error_mode"] = value[1:] if letter == "o" else value
        elif letter == "G":
            found["gateway"] = True
        elif letter == "I":
            found["mode"] = "i"
        elif letter == "q":
            raise UsageError(f"-q{value}: the hub runs its own queue; see mailhub queue flush")
        elif letter not in _IGNORED and letter not in "bo":
            raise UsageError(f"option -{letter} not recognized")  # (getopt caught it)
    if args and not _ended_by_dashes(argv[:len(argv) - len(args)]):
        # ``sendmail bob -f app@example.net``: the options ended at bob,
        # and "-f" would have been a recipient (a remote one is relayed,
        # and bounces later), the sender never set.  An address starting
        # with "-" is one no program passes without "--" before it (mutt
        # does; Postfix bounces such a recipient even then, allow_min_user)
        if args[0].startswith("-"):  # ("-" alone: getopt takes it for no option)
            raise UsageError(f"{args[0]}: a recipient starting with '-' goes after --")
        dashed = [a for a in args if a.startswith("-")]
        if dashed:
            raise UsageError(f"{dashed[0]} after the recipient {args[0]}: options go before "
                             "the recipients (a recipient starting with '-' goes after --)")
    if args and found.get("mode") == "i":
        # ``sendmail -I bob < msg``, meant as -i: exit 0 said "done" for a
        # message never read nor sent.  Postfix refuses it too ("alias
        # database mode requires no recipient", EX_USAGE).
        raise UsageError(f"{args[0]}: -bi and -I (newaliases) take no recipient; "
                         "-i is the option that keeps a line of a single dot in the message")
    if args and found.get("mode") == "p":
        # ``mailq bob``: no filter, and listing the whole queue as if bob
        # were one would mislead.  Postfix refuses it ("display queue
        # mode requires no recipient", EX_USAGE)
        raise UsageError(f"{args[0]}: -bp (mailq) takes no recipient: it lists the whole "
                         "queue (mailhub queue list)")
    if args and found.get("mode") == "s":
        # ``sendmail -bs bob``: the client names the recipients in RCPT,
        # and an argument dropped without a word may be a command line
        # meant for another mode.  Postfix refuses it ("stand-alone mode
        # requires no recipient", EX_USAGE)
        raise UsageError(f"{args[0]}: -bs (SMTP on standard input and output) takes no "
                         "recipient: the client names them with RCPT TO")
    if found.get("mode") == "v":
        if found.get("extract"):
            raise UsageError("-bv verifies the recipients given as arguments; -t (read "
                             "them from a message) is not offered with it")
        if not args:
            raise UsageError("-bv: no recipients to verify: give them as arguments")
    return Options(recipients=tuple(map(typed, args)), **found)  # type: ignore[arg-type]


def _ended_by_dashes(options: list[str]) -> bool:
    """Whether getopt's ``options`` (the words before the recipients)
    ended at ``--``, not at the first recipient: their last word is a
    ``--`` that no option took as its value (``-F --``).  (A slice
    counted from the end read the command line's last word when no
    option came first: ``sendmail bob -f x --`` passed as ended by it.)"""
    if options[-1:] != ["--"]:
        return False
    try:
        getopt.getopt(options[:-1], _OPTSTRING)
    except getopt.GetoptError:  # an option before it wants a value: "--" was that
        return False
    return True


def _notify(value: str) -> str:
    words = [w.strip().lower() for w in value.split(",")]
    if words != ["never"] and not (words and set(words) <= _NOTIFY):
        raise UsageError(f"-N {value}: never, or a list of success, failure, delay "
                         "(RFC 3461 4.1)")
    return ",".join(w.upper() for w in words)


@dataclass(frozen=True)
class Prepared:
    """What goes to the hub: the envelope and the message as sent -- its
    header section (the empty line included) whole, its body as the spool
    ``read_message`` filled, read from where it is positioned."""

    sender: str
    recipients: tuple[str, ...]
    header: bytes
    body: BinaryIO
    body_size: int
    body_8bit: bool
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    #: the lengths of the runs of ``recipients`` that lead to a common
    #: mailbox through the aliases, and so must share a transaction
    #: (``_by_mailbox``); ``()``: each recipient is a run of its own
    groups: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Octets of the message (RFC 1870 SIZE: CRLF counted, no dot-stuffing)."""
        return len(self.header) + self.body_size


def _addresses(values: Iterable[str], primary_domain: str, sender: bool = False) -> list[str]:
    """The mailboxes of address lists (header fields or arguments: ``a@x,
    Bob <b@y>``, groups, bare names meaning ``@primary_domain``, quoted
    local parts), as the envelope takes them (``_envelope_form``).  Raise
    ``AddressError`` for one that cannot be read, or not sent."""
    return [form for form, _ in _read_addresses(values, primary_domain, sender)]


def _read_addresses(values: Iterable[str], primary_domain: str,
                    sender: bool = False) -> list[tuple[str, Address]]:
    """``_addresses``, each with the ``Address`` the hub reads from it.

    The list's structure is read by ``addr_specs``, in one pass (the
    standard library's header parser took minutes for a ``To`` of a
    hundred thousand names, and ran a quoted string and an atom together
    into one local part); each address by the hub's own path grammar."""
    found = []
    for value in values:
        try:
            specs = addr_specs(value)
        except Unreadable as e:
            # the text cannot be read whole: sending to what could be read
            # would leave out a recipient without a word, and exit 0
            raise AddressError(
                f"cannot read the addresses in {quoted(value.strip())}: {e}") from None
        found.extend(_envelope_form(spec, primary_domain, sender) for spec in specs)
    return found


def _one_per_mailbox(recipients: Iterable[tuple[str, Address]],
                     domains: Iterable[str]) -> list[tuple[str, Address]]:
    """The first spelling of each mailbox among ``recipients`` (envelope
    forms and the hub's reading of them), in order.  The hub merges the
    spellings of one mailbox within a transaction, but a list longer than
    its ``max_recipients`` goes in several (``submit``), across which it
    cannot: each would get a copy.  "One mailbox" is the hub's own
    notion (``rcpt_mailbox``: ``Bob@EXAMPLE.ORG`` and ``bob@example.org``
    at a local domain, ``joe@Example.NET`` and ``joe@example.net``
    elsewhere).  Different names that aliases lead to one mailbox stay
    (the hub's answers and notices name each as given): ``_by_mailbox``
    keeps them in one transaction instead."""
    local = {canonical_domain(d) for d in domains}
    first: dict[Address, tuple[str, Address]] = {}
    for form, address in recipients:
        first.setdefault(rcpt_mailbox(address, local), (form, address))
    return list(first.values())


class _EveryName:
    """The users database as ``_by_mailbox`` asks it: every local name is
    taken for a mailbox.  The command cannot read the users file (it
    holds the password hashes), and need not: a name that is no user
    only puts its recipient in the transaction of another that names it
    too, which costs nothing."""

    def contains(self, address: Address) -> bool:
        return True


def _by_mailbox(recipients: list[tuple[str, Address]], settings: LocalSubmission,
                warn: Callable[[str], None] | None = None,
                ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``recipients`` (envelope forms and the hub's reading of them) in
    runs that must share a transaction, and the length of each run (``()``
    when each recipient is one of its own).

    The hub merges the recipients of one transaction by where they lead
    (``txmailhub.router``: an alias's members, the postmaster): two
    aliases that name one mailbox, or an alias and that mailbox's own
    name, get it one copy there -- but two in two transactions, which a
    list longer than ``[smtp] max_recipients`` needs (``submit``).  So the
    command reads the ``[aliases]`` file through the hub's own router and
    puts the recipients that lead to a common mailbox, or a common remote
    address, next to each other (where the first of them stood), and
    ``submit`` ends a transaction only between two runs.  Without an
    aliases file, or one this user cannot read, each recipient is its
    own run, as its name is its only mailbox the command can know; for
    the latter ``warn`` is given one line saying so (the command goes
    on: the copies it may cost are no reason to send nothing).

    A list of no more than ``[smtp] max_recipients`` goes in one
    transaction: it is left as given, and the file is not read (nor is
    Twisted loaded, which the router needs: a time every run would pay,
    and most lists are short)."""
    forms = tuple(form for form, _ in recipients)
    if len(recipients) <= max(settings.max_recipients, 1) or settings.aliases_file is None:
        return forms, ()
    from txmailhub.router import Router

    # read once: the file as it is now serves every lookup
    router = Router(settings.domains, _EveryName(), settings.aliases_file, reload=False)
    if router.read_error and warn is not None:
        from txmailhub.sendmail_verify import aliases_warning

        warn(aliases_warning(router.read_error,
                             "recipients that lead to one mailbox through it may get a "
                             "copy each (sending on)"))
    if not router.aliases:
        return forms, ()
    local = set(router.domains)
    primary_postmaster = Address("postmaster", router.primary_domain)
    root = list(range(len(recipients)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first: dict[Address, int] = {}  # a final recipient -> the first recipient leading to it
    for i, (_, address) in enumerate(recipients):
        names = [address]
        if canonical_domain(address.domain) in local and address.is_postmaster:
            # RFC 5321 4.5.1: a postmaster that is no user is the primary
            # domain's, which the command cannot tell: both are taken
            names.append(primary_postmaster)
        for name in names:
            for final in _leads_to(router, name, local):
                j = find(first.setdefault(final, i))
                root[j] = find(i)
    runs: dict[int, list[int]] = {}
    for i in range(len(recipients)):
        runs.setdefault(find(i), []).append(i)
    if len(runs) == len(recipients):
        return forms, ()
    return (tuple(forms[i] for run in runs.values() for i in run),
            tuple(len(run) for run in runs.values()))


def _leads_to(router: Router, address: Address, local: set[str]) -> tuple[Address, ...]:
    """Where the hub delivers RCPT ``address``: the router's expansion
    for a local domain (its mailboxes and remote addresses), the address
    itself for another."""
    if canonical_domain(address.domain) not in local:
        return (address,)
    try:
        mailboxes, remote = router.resolve(address)
    except Rejected:  # an alias loop that leads nowhere: the hub refuses it
        return (rcpt_mailbox(address, local),)
    return (*mailboxes, *remote)


def _may_name_anyone(values: Iterable[str]) -> bool:
    """Whether an argument holds an address, or text that may be one
    (``prepare`` then says what is wrong with it): not when each is
    empty, white space, commas or empty groups."""
    try:
        return any(addr_specs(value) for value in values)
    except Unreadable:
        return True


def _envelope_form(text: str, primary_domain: str,
                   sender: bool = False) -> tuple[str, Address]:
    """One addr-spec as MAIL FROM (``sender``) or RCPT TO carries it, and
    the ``Address`` the hub reads from that: read
    by the hub's parser (``txmailhub.smtp._parse``), so that what the
    command sends the hub takes -- a quoted local part in the canonical
    form (``"joe"`` is ``joe``; ``"joe smith"`` stays quoted, only ``"``
    and ``\\`` escaped), a source route dropped, at most the octets of a
    path the hub takes -- and nothing RFC 5321 forbids (a control
    character, quoted or not) goes out."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # bytes that were not UTF-8 (a Latin-1 To field, an argument in
        # another locale), kept as surrogates: no SMTP command can carry them
        raise AddressError(f"{quoted(text)} is not UTF-8 text") from None
    # what is sent -- a bare name with its domain, an IDN domain as
    # A-labels -- is read again: the hub judges the path it is sent (its
    # length), not the one typed
    address = _hub_reads(text, primary_domain, sender)
    form = ascii_form(address) or str(address)  # an IDN domain as A-labels when it can
    if form != text:
        address = _hub_reads(form, primary_domain, sender)
    return form, address


def _hub_reads(path: str, primary_domain: str, sender: bool) -> Address:
    """``path`` as the hub's MAIL (``sender``) or RCPT reads it, under
    SMTPUTF8, which the command asks for when what it sends is not
    ASCII; a bare name gets the primary domain as configured (a U-label,
    a final dot too), as the hub gives it."""
    try:
        if sender:
            address = parse_mail(f"FROM:<{path}> SMTPUTF8", primary_domain)[0]
        else:
            address = parse_rcpt(f"TO:<{path}>", primary_domain, utf8=True)[0]
    except RemoteProtocolError:
        raise AddressError(f"{quoted(path)} is no address the hub takes (RFC 5321 4.1.2: a "
                           "Dot-string or a quoted string, no control character in either, "
                           f"@ a domain; at most {MAX_PATH} octets)") from None
    if address is None:  # (addr_specs gives no empty one)
        raise AddressError("<> is only the null sender, given as -f ''")
    return address


def _header_domain(primary_domain: str) -> Callable[[str], str]:
    """The domain a bare local part in a header field gets: the one a bare
    envelope name gets (``_envelope_form``), so that ``To: joe`` and the
    recipient ``joe`` stay one address -- an internationalized domain as
    its A-labels beside an ASCII local part, as written beside a UTF-8
    one (which needs SMTPUTF8 anyway)."""
    domain = parse_address("postmaster", primary_domain).domain
    ascii = ascii_form(Address("postmaster", domain))
    ascii_domain = ascii.rpartition("@")[2] if ascii else domain
    return lambda local: ascii_domain if local.isascii() else domain


def _own_address(login_name: str, primary_domain: str) -> str | None:
    """``login@<primary domain>`` as the hub takes it after MAIL FROM, or
    None when no local part can be the login.

    A login that is a Dot-string (RFC 5321 4.1.2, UTF-8 by RFC 6531) is
    the local part as it is; any other is one as a Quoted-string --
    ``"joe smith"@example.org``, ``"ann@home"@example.org`` -- as
    RFC 5321 4.1.2 provides for: the sender then names that user, where
    a refusal would leave a cron job's mail with nobody.  Not
    ``_envelope_form``: a login is one local part, never an address of
    its own (``a@b`` would name another domain, ``<joe>`` joe, ``"q"``
    the user q).  None only for what no local part can hold: an empty
    login, a control character (RFC 5321 4.1.2 forbids them in a
    mailbox name, quoted or not), octets that are not UTF-8."""
    try:
        login_name.encode("utf-8")  # a login in another encoding: surrogates
    except UnicodeEncodeError:
        return None
    if not login_name:
        return None
    address = None
    if "@" not in login_name and not login_name.startswith('"'):
        try:
            address = parse_mailbox(login_name, primary_domain, utf8=True)
        except RemoteProtocolError:
            pass  # no Dot-string: quoted below
    if address is None:
        quoted = '"' + login_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        try:
            address = parse_mailbox(quoted, primary_domain, utf8=True)
        except RemoteProtocolError:
            return None  # a control character
    return ascii_form(address) or str(address)


def _login() -> tuple[str, str]:
    """The invoking user's login name and full name (the uid's, not $USER's)."""
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return f"uid{os.getuid()}", ""
    login = typed(entry.pw_name)
    return login, _gecos_name(typed(entry.pw_gecos), login)


def _gecos_name(gecos: str, login: str) -> str:
    """The full name in a password file's GECOS field, read as sendmail
    and Postfix read it: up to its first ``,`` (the office and telephone
    fields follow), ``;`` or ``%``, and each ``&`` in it the login name
    with its first letter capitalized (``& Bloggs`` for ``joe``: ``Joe
    Bloggs``, the BSD convention).  Left as written, the ``&`` would be
    what the added ``From`` field names the user.  The first letter is
    put in title case, one character for one (``ǆ``: ``ǅ``), not upper
    case: that can be two (``ß``: ``SS``), which no capitalized name has."""
    name = gecos
    for stop in ",;%":
        name = name.split(stop, 1)[0]
    return name.replace("&", login[:1].title() + login[1:])


def _mailbox_field(name: str, mailbox: str, field: str = "From") -> bytes:
    """``Name <mailbox>`` for the field ``field`` (From, Resent-From, whose
    name starts its first line): a non-ASCII name as an RFC 2047 encoded word
    beside an ASCII address, as UTF-8 beside a UTF-8 one (RFC 6532: the
    message needs SMTPUTF8 then anyway).

    The name comes from whoever runs the command (``-F``, ``$NAME``, the
    password file): its runs of white space, line ends included, become
    one space, or a line end in it would start a header field of its own
    (a ``Bcc`` nobody removes) or leave a bare CR or LF the hub refuses."""
    name = " ".join(name.split())
    # a name in another encoding than UTF-8 (a Latin-1 GECOS field, $NAME
    # in another locale) arrives with surrogates, which no encoding takes:
    # its undecodable octets become U+FFFD rather than a traceback
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if mailbox.isascii():
        value = email.utils.formataddr((name, mailbox), charset="utf-8")
        if len(field) + 2 + len(value) <= _FROM_LINE:
            return value.encode("ascii")
        # too long for one line: formataddr makes one encoded word of the
        # whole name, of any length (RFC 2047 2: at most 75 characters);
        # words of at most 75, or a plain name, folded at its blanks
        if not name.isascii() or max(map(len, name.split(" "))) > _FROM_LINE - 10:
            # (the first word's encoded text fits the line the field name starts)
            first = _FROM_LINE - len(f"{field}: =?utf-8?q??=")
            value = f"{encoded_words(name, first)} <{mailbox}>"
        return _folded(value, field).encode("ascii")
    if not name:
        return mailbox.encode("utf-8")
    # a quoted-string (RFC 5322 3.2.4, UTF-8 in it by RFC 6532 3.2):
    # email.headerregistry.Address refuses every non-ASCII local part
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return _folded(f'"{quoted}" <{mailbox}>', field).encode()


# RFC 2047 2: a line with an encoded word is at most 76 characters (RFC
# 5322 2.1.1's 78 for the others)
_FROM_LINE = 76


def _folded(value: str, field: str = "From") -> str:
    """A From (``field``) field's ``value`` folded at its blanks (the name's runs of
    blanks are single ones already: no line is all blanks) to lines of at
    most ``_FROM_LINE`` octets where its words allow; RFC 5322 3.2.4
    allows the fold inside a quoted string too."""
    lines: list[str] = []
    line = ""
    for word in value.split(" "):
        room = _FROM_LINE - (len(field) + 2 if not lines else 1)
        # octets: a name beside a UTF-8 address is UTF-8 (RFC 6532 3.4)
        if line and len(line.encode()) + 1 + len(word.encode()) > room:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n ".join(lines)


def _required(own: str | None, login_name: str, null_sender: str = "") -> str:
    """``own``, or why the login cannot be the address it would become:
    with a null sender (``-f ''``) that is the address of the field
    ``null_sender`` names (From, Resent-From), added because the message
    has none: a field of its own avoids it, not ``-f``."""
    if own is None:
        if null_sender:
            raise LoginNotAddress(f"the login name {quoted(login_name)} can be no mail address "
                                  "local part, not even quoted, and would be the address of "
                                  f"the {null_sender} field added to a message with a null "
                                  f"sender: give the message a {null_sender} field")
        raise LoginNotAddress(f"the login name {quoted(login_name)} can be no mail address "
                              "local part, not even quoted, and would be the sender's "
                              "address: give the sender with -f ADDRESS")
    return own


#: the fields a message loses (as Postfix drops them): Bcc and Resent-Bcc
#: are for no recipient to see (RFC 5322 3.6.3); Return-Path is the final
#: delivery's to add, and "a message-originating SMTP system SHOULD NOT
#: send a message that already contains" one (RFC 5321 4.4); an mbox
#: file's Content-Length counted the octets before the command made LF
#: CRLF and folded long lines, and is wrong after
_DROPPED = frozenset({b"bcc", b"resent-bcc", b"return-path", b"content-length"})
#: the fields of a resent block (RFC 5322 3.6.6): one of them marks a
#: message sent on again
_RESENT = frozenset({b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
                     b"resent-cc", b"resent-bcc", b"resent-message-id"})


def _mailbox_count(fields: list[tuple[bytes, bytes]], name: bytes) -> int:
    """The mailboxes the first field ``name`` names (the top one: a
    resent message has a Resent-From for each time it was sent on); 0
    when it cannot be read with certainty."""
    for found, text in fields:
        if found == name:
            value = text.split(b":", 1)[1].decode("utf-8", "surrogateescape")
            try:
                return len(addr_specs(value.replace("\r\n", "")))
            except Unreadable:
                return 0
    return 0


def _refuse_nul(fields: list[tuple[bytes, bytes]]) -> None:
    """Raise ``HeaderNul`` when a header field holds a NUL octet.

    RFC 5322 3.2 and 3.5 allow none in a field (only its obsolete syntax
    has it, 4.1, which "MUST NOT" be generated) and this command is where
    the message starts; a C program reading the field stops at it, so a
    ``To: ann@x<NUL>, bob@y`` would show a reader one address and name
    another.  Refused rather than mended: a NUL has no meaning to put
    anything in its place, and the caller still has the message.  The
    hub's server, a relay, stores data as a client sends it (docs/smtp.rst);
    a NUL in the body is passed on (the message's own business,
    docs/sendmail.rst)."""
    for _, text in fields:
        if b"\0" in text:
            name = text.split(b":", 1)[0].decode("ascii", "replace")
            line = text[:text.index(b"\0")].count(b"\n") + 1
            where = f", line {line} of the field" if line > 1 else ""
            raise HeaderNul(f"the header field {name} holds a NUL octet{where} (RFC 5322 "
                            "3.5 allows none in a header field)")


def _comment_text(text: str) -> str:
    """``text`` safe inside a comment of a header field: printable ASCII
    without parentheses or backslashes (a login name is that already)."""
    return "".join(c if c.isascii() and c.isprintable() and c not in "()\\" else "?"
                   for c in text) or "?"


def trace_field(hostname: str, login_name: str, uid: int, date: str | None = None) -> bytes:
    """The ``Received`` field that says which local user submitted the
    message, in Postfix's form for its pickup (``Received: by HOST
    (Postfix, from userid 1000)``), with the login name beside the uid.

    The hub sees only a loopback (or ``unix:``) connection, so its own
    Received field cannot say who ran the command; this one can, because
    the command takes the real user id of its process (not ``$USER``).
    It is the field right below the hub's: a user can write anything in
    the fields of the message, but not above this one."""
    date = date or email.utils.formatdate(localtime=True)
    return (f"Received: by {hostname.rstrip('.')} (txmailhub sendmail, from userid {uid} "
            f"{_comment_text(login_name)});\r\n\t{date}\r\n").encode("ascii")


def prepare(
    read: StdinMessage, options: Options, settings: LocalSubmission,
    login: tuple[str, str] | None = None, uid: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> Prepared:
    """The envelope and the message to send: recipients from the
    arguments, and with ``-t`` from To, Cc and Bcc (Resent-To, -Cc, -Bcc
    instead when the message has any); Bcc and Resent-Bcc fields removed
    (RFC 5322 3.6.3: the other recipients must not see them), Return-Path
    and Content-Length too (``_DROPPED``); bare names
    in the address fields qualified with the domain the envelope gives
    them (``qualify_field``: ``To: joe`` says what the envelope does); a
    missing From (from ``-F`` and the sender), Date and Message-ID added
    -- and, for a message sent on again, those of its resent block
    (RFC 5322 3.6.6) -- a Sender for a From of several mailboxes, and a
    Received field on top naming the user (``trace_field``).

    The default envelope sender is ``login@<primary domain>``, as Postfix
    does (``user@$myorigin``): bounces then reach the user who sent.
    Only then (or for the From of a null sender's message without one)
    is the login name read as an address -- quoted when it is no
    Dot-string (``_own_address``) -- and ``LoginNotAddress`` raised when
    no local part can hold it; with ``-f`` it only names the user in the
    Received field.

    ``HeaderNul`` for a NUL in a header field (``_refuse_nul``); with
    ``-G`` (a gateway's submission, relayed) no field is added but the
    Received field, and the bare names in the address fields stay as
    written; ``warn`` gets one line when the aliases file the
    grouping of a long list needs cannot be read (``_by_mailbox``)."""
    _refuse_nul(read.fields)
    login_name, gecos = login or _login()
    own = _own_address(login_name, settings.primary_domain)
    if options.sender is None:
        sender = _required(own, login_name)
    elif options.sender.strip() in ("", "<>"):
        sender = ""
    else:
        found = _addresses([options.sender], settings.primary_domain, sender=True)
        if len(found) != 1:
            raise AddressError(f"-f {quoted(options.sender)} is not one address")
        sender = found[0]
    fields = read.fields
    names = {name for name, _ in fields}
    recipients = _read_addresses(options.recipients, settings.primary_domain)
    if options.extract:
        kinds = (b"resent-to", b"resent-cc", b"resent-bcc")
        if not names & set(kinds):
            kinds = (b"to", b"cc", b"bcc")
        values = [text.split(b":", 1)[1].decode("utf-8", "surrogateescape")
                  .replace("\r\n", "") for name, text in fields if name in kinds]
        recipients += _read_addresses(values, settings.primary_domain)
    unique, groups = _by_mailbox(_one_per_mailbox(recipients, settings.domains), settings,
                                 warn)
    domain = _header_domain(settings.primary_domain)
    # -G: the message comes from elsewhere, and a bare name in it is no
    # name of ours to qualify (Postfix rewrites a gateway's fields with
    # remote_header_rewrite_domain, by default not at all)
    qualified = ADDRESS_FIELDS if not options.gateway else frozenset()
    kept = [(name, qualify_field(text, domain) if name in qualified else text)
            for name, text in fields if name not in _DROPPED]

    def from_field(prefix: str) -> bytes:
        mailbox = sender or _required(own, login_name, null_sender=f"{prefix}From")
        name = options.full_name
        if name is None and mailbox == own:
            name = typed(os.environ.get("NAME", "")) or gecos
        return (f"{prefix}From: ".encode() + _mailbox_field(name or "", mailbox, f"{prefix}From")
                + b"\r\n")

    resent = bool(names & _RESENT)

    def originator(prefix: str) -> list[bytes]:
        """The fields RFC 5322 3.6 (``prefix`` "Resent-": 3.6.6) asks
        of the message (of its resent block) and it lacks: From and Date
        required, Message-ID recommended; a Sender when its From names
        more than one mailbox (3.6.2: required then), which names the
        envelope sender, else the user who ran the command -- but not
        in the original fields of a message sent on again: there the user
        is the one who sent it on, which its Resent-Sender says, and a
        Sender would name them as the one who sent the original for its
        authors (Postfix adds only the Resent- fields to such a message).

        None with ``-G``: the message is relayed, not submitted, and RFC
        5321 6.4 says the fix-ups (a Date, a Message-ID) "MUST NOT be
        applied by an SMTP server that provides an intermediate relay
        function"; RFC 6409 8 leaves them to the MSA of a submission."""
        if options.gateway:
            return []
        lower = prefix.lower().encode()
        added = []
        if lower + b"from" not in names:
            added.append(from_field(prefix))
        elif (lower + b"sender" not in names and (prefix or not resent)
              and _mailbox_count(fields, lower + b"from") > 1):
            mailbox = sender or own
            if mailbox:  # (else the login can be no address: none to name)
                added.append(f"{prefix}Sender: ".encode() + _mailbox_field("", mailbox)
                             + b"\r\n")
        if lower + b"date" not in names:
            added.append(f"{prefix}Date: {email.utils.formatdate(localtime=True)}\r\n"
                         .encode())
        if lower + b"message-id" not in names:
            msgid = email.utils.make_msgid(domain=settings.hostname.rstrip("."))
            added.append(f"{prefix}Message-ID: {msgid}\r\n".encode())
        return added

    texts = [text for _, text in kept]
    if resent:
        # a message sent on again (mutt's bounce, ``-t`` with Resent-To):
        # RFC 5322 3.6.6 has each resent block hold a Resent-Date and a
        # Resent-From, as Postfix adds them; they go in front of the
        # block's first field, which keeps the block together
        at = next((i for i, (name, _) in enumerate(kept) if name in _RESENT), 0)
        texts[at:at] = originator("Resent-")
    trace = trace_field(settings.hostname, login_name, os.getuid() if uid is None else uid)
    header = b"".join([trace, *texts, *originator(""), b"\r\n"])
    return Prepared(sender, unique, header, read.body, read.body_size, read.body_8bit,
                    options.notify, options.ret, options.envid, groups)


# --- the command ----------------------------------------------------------


def run(
    argv: list[str], config: str, prog: str,
    stdin: BinaryIO | None = None, err: TextIO | None = None, out: TextIO | None = None,
    stdout: BinaryIO | None = None, config_option: str | None = None,
) -> int:
    """The whole command: parse, read, prepare, submit; the exit code.
    ``stdout`` is where ``-bs`` writes its replies (binary: CRLF, UTF-8
    as the hub sent it); by default ``out``'s buffer.  ``config_option``:
    ``config`` is the default file, and that option (``-C``, mailhub's
    ``--config``) was not given: a config error then says which file was
    read and why, as ``mailhub``'s do (the file alone read, on a fresh
    machine, as if the command had asked for it).

    An exception nobody expected (a bug) is exit 70, ``EX_SOFTWARE``,
    with one line on stderr naming it -- not Python's traceback and its
    status 1, which the command's callers (cron, PHP's ``mail()``) read
    as no sysexits(3) code; ``-v`` adds the traceback.  Ctrl-C
    (``KeyboardInterrupt``) and ``SystemExit`` are no ``Exception``, and
    keep their meaning."""
    err = err or error_stream()
    try:
        status = _run(argv, config, prog, stdin, err, out, stdout, config_option)
    except Exception as e:
        _internal_error(prog, e, argv, err)
        return EX_SOFTWARE
    if status != EX_OK:
        _not_mailed_back(argv, prog, status, err)
    return status


def _not_mailed_back(argv: list[str], prog: str, status: int, err: TextIO) -> None:
    """After a failure, with ``-oem`` or ``-oee`` (sendmail's error modes
    that mail the errors back to the sender; mutt's default command line
    has ``-oem``): one line saying that no report was mailed, and that
    the lines before it and the exit status are the report.

    The command keeps no queue: every error is known before it exits,
    while the caller still holds the message (or, for a list sent in
    part, is told who has it), and the hub it would mail a report
    through is as a rule the one that just failed (not running, or
    refusing).  A report mailed on top would be a second copy at best,
    lost with the message at worst; and ``-oee``'s exit 0 would tell the
    caller a message was sent that was not.  So both are accepted -- a
    refusal would stop mutt sending anything -- and the status is never
    made 0.  ``-oep`` (print, the default), ``-oeq`` (quiet: the status
    only) and ``-oew`` (write to the terminal) need no line: the errors
    are on stderr, where the caller looks, as Postfix, which ignores the
    error modes, writes them too."""
    try:
        options = parse_args(argv)
    except UsageError:  # (said already: a bad command line)
        return
    mode = options.error_mode
    if options.mode != "m" or not mode or mode[0] not in "me":
        return
    zero = " and the exit status is not made 0" if mode[0] == "e" else ""
    with contextlib.suppress(OSError, ValueError):
        print(f"{prog}: -oe{mode[0]}: errors are not mailed back{zero}: the lines above and "
              f"the exit status ({status}) are the report", file=err)


def _internal_error(prog: str, error: Exception, argv: list[str], err: TextIO) -> None:
    """Say which exception ended the command, on one line (its text
    escaped: no line break or terminal control of its own), and with
    ``-v`` its traceback after it, escaped alike (``shown_traceback``).
    Nothing of the error's own may fail here: this is what makes a bug
    exit 70, and a failure of its own would be Python's traceback, exit 1."""
    text = _error_text(error)
    what = type(error).__name__ + (f": {text}" if text else "")
    try:
        verbose = parse_args(argv).verbose
    except Exception:  # (the command line itself may be what failed)
        verbose = False
    trace = ""
    if verbose:
        try:
            trace = shown_traceback(error)
        except Exception as e:  # (the frames are read as the error holds them)
            trace = f"(no traceback: reading it raised {type(e).__name__})\n"
    try:
        print(f"{prog}: internal error (a bug in the command): {shown(what)}"
              f"{'' if verbose else ' (-v shows where)'}", file=err)
        print(trace, end="", file=err)
        err.flush()
    except (OSError, ValueError):  # stderr gone too: the status says it
        pass


def _error_text(error: BaseException) -> str:
    """``str(error)``, or what stands for it when its ``__str__`` itself
    fails (a bug in the exception's class: it raises, or returns no
    string): Python's words for that, which ``-v``'s traceback ends with."""
    try:
        return str(error)
    except Exception:
        return "<exception str() failed>"


def _run(argv: list[str], config: str, prog: str, stdin: BinaryIO | None, err: TextIO,
         out: TextIO | None, stdout: BinaryIO | None, config_option: str | None) -> int:
    not_sent = "the message was NOT sent"
    try:
        options = parse_args(argv)
    except UsageError as e:
        # its text may quote the command line (``mailq ARG``): an ESC
        # there must not reach the terminal as one
        print(f"{prog}: {shown(str(e))}", file=err)
        # the placeholders are docs/sendmail.rst's (its table of options)
        print(f"usage: {prog} [-t] [-i] [-f ADDR] [-F NAME] [-C PATH] [--] "
              "[recipient ...] < message", file=err)
        print(f"       {prog} -bs [-C PATH]   (SMTP on standard input and output)",
              file=err)
        print(f"       {prog} -bv [-C PATH] [--] recipient ...   (verify; nothing is sent)",
              file=err)
        return EX_USAGE
    if options.mode == "i":
        # newaliases: package scripts call it after editing the aliases file
        print(f"{prog}: nothing to rebuild: the hub reads the [aliases] file itself, "
              "again whenever it changes", file=out or sys.stdout)
        return EX_OK
    if options.mode == "s":
        # a descriptor closed when the command started is None in sys
        binary = stdout or _buffer(out) or _buffer(sys.stdout)
        source = stdin or _buffer(sys.stdin)
        if binary is None or source is None:
            print(f"{prog}: -bs: standard {'output' if binary is None else 'input'} is "
                  "closed: there is no client to talk to", file=err)
            return EX_IOERR
        return _smtp_session(options.config or config, prog, source, binary, err,
                             None if options.config else config_option)
    try:
        settings = load_local_submission(options.config or config)
    except ConfigError as e:
        if config_option and not options.config:
            print(_default_config_note(prog, config_option, config), file=err)
        for problem in e.problems:
            print(f"{prog}: {problem}", file=err)
        if options.mode == "m":
            print(f"{prog}: {not_sent}", file=err)
        return EX_CONFIG
    if options.mode == "p":
        listing = out or sys.stdout
        if listing is None:  # a descriptor closed when the command started (``>&-``)
            print(f"{prog}: standard output is closed: nowhere to list the queue", file=err)
            return EX_IOERR
        return _list_queue(settings, prog, listing, err)
    if options.mode == "v":
        return _verify(options, settings, prog, out or sys.stdout, err)
    if not options.recipients and not options.extract:
        print(f"{prog}: no recipients: give them as arguments, or -t to read them from "
              f"the message's To, Cc and Bcc; {not_sent}", file=err)
        return EX_USAGE
    if not options.extract and not _may_name_anyone(options.recipients):
        # ``sendmail "$TO"`` with $TO empty: no recipient either
        print(f"{prog}: no recipients: the arguments hold no address "
              f"({' '.join(map(repr, options.recipients))}), and without -t the message's "
              f"To, Cc and Bcc are not read; {not_sent}", file=err)
        return EX_USAGE
    targets = hub_targets(settings.listen)
    if not targets:
        print(f"{prog}: {settings.path}: [smtp] listen names no listener this command can "
              f"reach (a unix: socket or a fixed TCP port); {not_sent}", file=err)
        return EX_CONFIG
    source = stdin or _buffer(sys.stdin)
    if source is None:
        # ``<&-``: a closed descriptor is None in sys; nothing to send (an
        # empty message would reach the recipients as if it were one)
        print(f"{prog}: standard input is closed: there is no message to read; {not_sent}",
              file=err)
        return EX_IOERR
    try:
        read = read_message(source, options.ignore_dots, settings.max_message_size)
    except MessageTooBig as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return EX_DATAERR
    except StdinUnreadable as e:  # as for ``<&-``: no retry gets past it
        print(f"{prog}: cannot read standard input: {e}; {not_sent}", file=err)
        return EX_IOERR
    except OSError as e:  # no room for the spool
        print(f"{prog}: cannot read and spool the message: {e.strerror or e}"
              f"{f' ({e.filename})' if e.filename else ''}; {not_sent}", file=err)
        return EX_TEMPFAIL
    with read.body:
        return _send(read, options, settings, targets, prog, err)


def _verify(options: Options, settings: LocalSubmission, prog: str, out: TextIO | None,
            err: TextIO) -> int:
    """``-bv``: each recipient argument read as for sending (a bare name
    at the primary domain, the hub's path grammar), then judged by the
    hub's router over its files (``txmailhub.sendmail_verify``)."""
    if not _may_name_anyone(options.recipients):
        print(f"{prog}: -bv: no recipients to verify: the arguments hold no address "
              f"({' '.join(map(repr, options.recipients))})", file=err)
        return EX_USAGE
    if out is None:  # ``>&-``: nowhere to say it
        print(f"{prog}: standard output is closed: nowhere to write what -bv finds", file=err)
        return EX_IOERR
    try:
        recipients = _read_addresses(options.recipients, settings.primary_domain)
    except AddressError as e:
        print(f"{prog}: {e}", file=err)
        return EX_DATAERR
    from txmailhub.sendmail_verify import verify

    try:
        return verify(recipients, settings, out, err, prog)
    except BrokenPipeError:  # (``sendmail -bv ... | head -1``): quiet, as -bp
        from txmailhub.cli import _discard_output

        _discard_output(out)
        return EX_IOERR


def _send(read: StdinMessage, options: Options, settings: LocalSubmission,
          targets: list[Target], prog: str, err: TextIO) -> int:
    not_sent = "the message was NOT sent"
    try:
        prepared = prepare(read, options, settings,
                           warn=lambda line: print(f"{prog}: {line}", file=err))
    except HeaderNul as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return EX_DATAERR
    except LoginNotAddress as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return EX_NOUSER
    except AddressError as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return EX_DATAERR
    if not prepared.recipients:
        print(f"{prog}: no recipient addresses in the message's To, Cc or Bcc; {not_sent}",
              file=err)
        return EX_DATAERR
    try:
        reply = submit(prepared, targets, max_junk_commands=settings.max_junk_commands)
    except PartlySent as e:
        # (a failure between the transactions of a long list: the status
        # is the failure's, and a resend reaches these recipients twice;
        # the text says who has it, who may, and who has not)
        print(f"{prog}: {e}", file=err)
        return e.status
    except Refused as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return e.status
    except OutcomeUnknown as e:
        # RFC 5321 6.1: better a message twice than not at all, so this is
        # the status of a deferral, and the caller may well send it again
        print(f"{prog}: {e}; the message MAY have been sent: the hub may have taken it "
              "(check its log for the Message-ID before sending it again, or it may "
              "arrive twice)", file=err)
        return EX_TEMPFAIL
    except (smtplib.SMTPException, OSError) as e:  # the hub went away mid-way
        print(f"{prog}: the connection to the hub failed: {e}; {not_sent}", file=err)
        return EX_TEMPFAIL
    if options.verbose:
        print(f"{prog}: {reply}", file=err)
    return EX_OK


def _buffer(stream: object) -> BinaryIO | None:
    """The binary file under a text stream; None for one without (a
    ``StringIO``), and for the None that stands in sys for a closed descriptor."""
    return getattr(stream, "buffer", None)


def _default_config_note(prog: str, option: str, config: str) -> str:
    """The line before a config error of the file read by default."""
    return shown_lines(f"{prog}: no {option} PATH given: reading {config} "
                       f"($MAILHUB_CONFIG, else {SYSTEM_CONFIG})")


def _smtp_session(config: str, prog: str, stdin: BinaryIO, stdout: BinaryIO,
                  err: TextIO, config_option: str | None = None) -> int:
    """``-bs``: SMTP with the client on stdin and stdout, mediated to the
    hub (``txmailhub.sendmail_bs``).  The envelope is the client's: every
    other option (``-f``, ``-t``, recipients ...) is ignored.  Without a
    hub to talk to the client's greeting is a 421; so is it after an
    internal error (a bug, which ``run`` makes exit 70) before the
    session, and ``Session`` sends one for such an error during it."""
    from txmailhub.sendmail_bs import Session, internal_error, unavailable

    def fail(status: int, hostname: str, why: str) -> int:
        print(f"{prog}: {why}", file=err)
        try:
            stdout.write(unavailable(hostname, why))
            stdout.flush()
        except (OSError, ValueError):
            pass
        return status

    hostname = "localhost"  # the config's, once read
    client: smtplib.SMTP | None = None
    try:
        try:
            settings = load_local_submission(config)
        except ConfigError as e:
            if config_option:
                print(_default_config_note(prog, config_option, config), file=err)
            return fail(EX_CONFIG, hostname, "; ".join(e.problems))
        hostname = settings.hostname
        targets = hub_targets(settings.listen)
        if not targets:
            return fail(EX_CONFIG, hostname, f"{settings.path}: [smtp] listen names no "
                        "listener this command can reach (a unix: socket or a fixed TCP port)")
        try:
            client, _, greeting = open_session(targets)
        except Refused as e:
            return fail(e.status, hostname, str(e))
        login_name, _ = _login()
        uid = os.getuid()
        session = Session(stdin, stdout, client,
                          lambda: trace_field(settings.hostname, login_name, uid),
                          settings.hostname)
    except Exception:
        # a bug before the greeting: the client's greeting is the 421 that
        # closes (RFC 5321 3.8), not silence; ``run`` says the rest
        try:
            stdout.write(internal_error(hostname))
            stdout.flush()
        except Exception:  # stdout gone too: the exit status says it
            pass
        if client is not None:
            with contextlib.suppress(Exception):  # the error reported is the first
                client.close()
        raise
    status = session.run(greeting)
    if status != EX_OK and session.why:
        print(f"{prog}: {session.why}", file=err)
    return status


def _list_queue(settings: LocalSubmission, prog: str, out: TextIO, err: TextIO) -> int:
    """``-bp`` (``mailq``): what ``mailhub queue list`` prints, and for an
    empty queue the line Postfix's ``mailq`` prints, whatever reads it:
    the scripts written for the other MTAs' ``mailq`` look for it."""
    from txmailhub.relay.admin import list_queue

    try:
        if list_queue(settings, out) == 0:
            print(MAILQ_EMPTY, file=out)
        out.flush()
    except BrokenPipeError:
        # the reader went away (``mailq | head -1``): the queue was read,
        # so no "cannot read the queue"; quiet, as ``mailhub queue list``
        from txmailhub.cli import _discard_output

        _discard_output(out)
        return EX_IOERR
    except PermissionError as e:
        from txmailhub.relay.admin import denied_line

        print(denied_line(prog, "mailq", settings, e), file=err)
        return EX_NOPERM
    except OSError as e:
        print(f"{prog}: cannot read the queue: {e.strerror or e}", file=err)
        return EX_IOERR
    return EX_OK


#: what the command does when installed under these names (as sendmail's are)
_ALIASES = {"mailq": ["-bp"], "newaliases": ["-bi"]}


def main(argv: list[str] | None = None) -> int:
    """The ``txmailhub-sendmail`` console script (install it as
    /usr/sbin/sendmail, and link ``mailq`` and ``newaliases`` to it); the
    config is ``-C``, ``$MAILHUB_CONFIG`` or /etc/txmailhub/mailhub.toml."""
    from txmailhub.cli import DEFAULT_CONFIG

    # what mailq lists (addresses, remote replies) as UTF-8 octets, as mailhub does
    utf8_output(sys.stdout, sys.stderr)
    prog = os.path.basename(sys.argv[0]) if argv is None else ""
    prog = prog if prog and not prog.startswith("-") else "sendmail"
    args = sys.argv[1:] if argv is None else argv
    return run([*_ALIASES.get(prog, []), *args], DEFAULT_CONFIG, prog, config_option="-C")


if __name__ == "__main__":
    # ``python -m txmailhub.sendmail`` is the command too, not a module run
    # that ends at once with status 0 -- a message handed to it lost
    # without a word.  The module imported by its name runs it, not this
    # ``__main__`` copy: the other sendmail modules import that one, and
    # an exception class of this copy would not be theirs.
    sys.argv[0] = "sendmail"
    from txmailhub.sendmail import main as _main

    sys.exit(_main())
