"""``txmailhub-sendmail`` and ``mailhub sendmail``: the sendmail(8) command
line that local programs (cron, scripts, PHP's ``mail()``, ``git
send-email``, mutt) expect, handing each message to the running hub.

Owns the sendmail option syntax, reading the message from standard input
(the lone-dot rule, LF line ends made CRLF), the header fields a local
submission needs (Bcc removed; Date, Message-ID and From added when
missing: the hub's MX listener adds none for a ``relay_networks`` client,
docs/smtp.rst) and the command's exit codes; ``txmailhub.sendmail_smtp``
owns the SMTP transaction and the sysexits(3) code of each failure.

It submits over SMTP to the hub's own MX listener on loopback (or its
``unix:`` socket) as a ``relay_networks`` client.  It keeps no queue:
exit 0 means the hub took the message for every recipient; any other
status means it took it for none, and stderr says why, so the caller
still holds the only copy and can tell.  Blocking ``smtplib`` is right
here: this is a short-lived command, not part of the reactor.
"""

from __future__ import annotations

import email.errors
import email.headerregistry
import email.policy
import email.utils
import getopt
import os
import pwd
import smtplib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from txmailhub.address import AddressError, ascii_form, parse_address
from txmailhub.config import LocalSubmission, load_local_submission
from txmailhub.errors import ConfigError
from txmailhub.sendmail_smtp import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    Refused,
    Target,
    hub_targets,
    submit,
)

__all__ = [
    "EX_CONFIG", "EX_DATAERR", "EX_NOUSER", "EX_OK", "EX_TEMPFAIL", "EX_UNAVAILABLE",
    "EX_USAGE", "MessageTooBig", "Options", "Prepared", "UsageError", "hub_targets", "main",
    "Target", "parse_args", "prepare", "read_message", "run", "submit",
]

# Options with an argument that are accepted and ignored, as Postfix does:
# -A (submit.cf), -B body type (8-bit is detected), -d debug, -e/-o error
# and delivery modes, -h hop count, -L syslog label, -M macro, -O options,
# -p protocol, -X traffic log.  Without one: -c, -G, -m, -n, -s, -U.
_OPTSTRING = "A:B:b:C:cd:e:F:f:Gh:iL:M:mN:nO:o:p:q:R:r:sUtV:vX:"
_IGNORED = set("ABcdeGhLMmnOpsUX")
_NOTIFY = {"success", "failure", "delay"}
_LINE_TEXT = 998  # octets of a line before its CRLF (RFC 5321 4.5.3.1.6)


class UsageError(Exception):
    """A command line this command cannot act on (exit 64)."""


class MessageTooBig(Exception):
    """Standard input held more than the hub would take (exit 65)."""


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


def parse_args(argv: list[str]) -> Options:
    """Read sendmail(8) options (getopt syntax: ``-oi``, ``-fADDR`` or
    ``-f ADDR``, ``-ti``, ``--`` ends them), then the recipients.
    Raise ``UsageError`` for an unknown option or a mode not offered."""
    try:
        opts, args = getopt.getopt(argv, _OPTSTRING)
    except getopt.GetoptError as e:
        raise UsageError(str(e)) from None
    found: dict[str, object] = {}
    for flag, value in opts:
        letter = flag[1]
        if letter in "fr":
            found["sender"] = value
        elif letter == "F":
            found["full_name"] = value
        elif letter == "t":
            found["extract"] = True
        elif letter == "i" or (letter == "o" and value == "i"):
            found["ignore_dots"] = True
        elif letter == "C":
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
            if not value or len(value) > 100 or not value.isprintable() or not value.isascii():
                raise UsageError("-V: an envelope id is 1 to 100 printable ASCII characters")
            found["envid"] = value
        elif letter == "b" and value != "m":
            raise UsageError(f"-b{value}: only -bm (read a message and send it) is offered; "
                             "see mailhub queue list for the queue")
        elif letter == "q":
            raise UsageError(f"-q{value}: the hub runs its own queue; see mailhub queue flush")
        elif letter not in _IGNORED and letter not in "bo":
            raise UsageError(f"option -{letter} not recognized")  # (getopt caught it)
    return Options(recipients=tuple(args), **found)  # type: ignore[arg-type]


def _notify(value: str) -> str:
    words = [w.strip().lower() for w in value.split(",")]
    if words != ["never"] and not (words and set(words) <= _NOTIFY):
        raise UsageError(f"-N {value}: never, or a list of success, failure, delay "
                         "(RFC 3461 4.1)")
    return ",".join(w.upper() for w in words)


def read_message(stream: BinaryIO, ignore_dots: bool, limit: int) -> bytes:
    """Standard input as the message, every line ending in CRLF (LF alone
    too).  Without ``ignore_dots`` a line of one ``.`` ends it (what the
    sendmail interface has always done), and what follows is not read.
    Raise ``MessageTooBig`` beyond ``limit`` octets, without reading on.

    A CR that no LF follows (a progress meter in a cron job's output)
    ends a line too: RFC 5321 2.3.8 forbids it on the wire, and the hub
    refuses a message with one (550 5.6.11), which would lose the mail."""
    out = bytearray()
    line = bytearray()
    while True:
        piece = stream.readline(65536)
        if piece:
            line += piece
            if len(out) + len(line) > limit:
                raise MessageTooBig(f"the message is over the hub's limit of {limit} octets "
                                    "([smtp] max_message_size)")
            if not piece.endswith(b"\n"):  # a long line: read on to its end
                continue
            del line[-1:]
        elif not line:
            break
        text = bytes(line.removesuffix(b"\r"))  # CRLF; or a last line's CR
        line.clear()
        if not ignore_dots and text == b".":
            break
        out += _wire_lines(text)
        if len(out) > limit:
            raise MessageTooBig(f"the message is over the hub's limit of {limit} octets "
                                "([smtp] max_message_size)")
        if not piece:  # a last line without its line end
            break
    return bytes(out)


def _wire_lines(text: bytes) -> bytes:
    """One line read from stdin (without its line end) as CRLF lines: each
    CR in it ends a line, and a line over 998 octets is broken."""
    return b"".join(_fold_long(part) + b"\r\n" for part in text.split(b"\r"))


def _fold_long(line: bytes) -> bytes:
    """``line`` cut into lines of at most ``_LINE_TEXT`` octets, each piece
    after the first starting with a space -- in a header field that keeps
    it one folded field (RFC 5322 2.2.3); in the body it is one space more,
    as Postfix's ``smtp_line_length_limit`` does.  The hub refuses a
    message with a longer line (RFC 5321 4.5.3.1.6: 500 5.5.2), so a long
    log line in a cron job's output would lose the whole mail.  A cut
    never splits a UTF-8 sequence."""
    pieces = []
    while len(line) > _LINE_TEXT:
        cut = _LINE_TEXT
        while cut > _LINE_TEXT - 4 and 0x80 <= line[cut] < 0xC0:
            cut -= 1  # line[cut] continues a UTF-8 sequence: cut before it
        pieces.append(line[:cut])
        line = b" " + line[cut:]
    pieces.append(line)
    return b"\r\n".join(pieces)


@dataclass(frozen=True)
class Prepared:
    """What goes to the hub: the envelope and the message as sent."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None


def _field_name(line: bytes) -> bytes | None:
    name, colon, _ = line.partition(b":")
    if colon and name and all(33 <= c <= 126 for c in name):
        return name.strip().lower()
    return None


def _split_header(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``([(lower-case name, field with its continuation lines)], rest)``:
    the header section ends at the empty line (dropped here) or at the
    first line that is no field (which starts ``rest``).  A leading mbox
    ``From `` line is dropped, as sendmail does."""
    if message.startswith(b"From "):
        message = message.partition(b"\r\n")[2]
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(message):
        end = message.find(b"\r\n", pos)
        end = len(message) if end < 0 else end + 2
        line = message[pos:end]
        if line == b"\r\n":
            return fields, message[end:]
        if line[:1] in (b" ", b"\t") and fields:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
        else:
            name = _field_name(line)
            if name is None:
                break
            fields.append((name, line))
        pos = end
    return fields, message[pos:]


def _addresses(values: Iterable[str], primary_domain: str) -> list[str]:
    """The mailboxes of address lists (header fields or arguments: ``a@x,
    Bob <b@y>``, groups, bare names meaning ``@primary_domain``), as the
    envelope takes them.  Raise ``AddressError`` for one that cannot be read."""
    found = []
    for value in values:
        try:
            header = email.policy.default.header_factory("To", value)
            addresses = header.addresses
        except (email.errors.HeaderParseError, ValueError, IndexError, TypeError):
            raise AddressError(f"cannot read the addresses in {value.strip()!r}") from None
        if any(str(d).startswith("invalid address") for d in header.defects):
            # the parser skipped text it could not read as an address
            # (``a@x b@y``, ``a@x;b@y``): sending to the rest would leave
            # out a recipient without a word, and exit 0
            raise AddressError(f"cannot read the addresses in {value.strip()!r} "
                               "(separate them with commas)")
        for a in addresses:
            if not a.username:
                raise AddressError(f"cannot read an address in {value.strip()!r}")
            found.append(_envelope_form(a.addr_spec, primary_domain))
    return found


def _envelope_form(text: str, primary_domain: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # bytes that were not UTF-8 (a Latin-1 To field, an argument in
        # another locale), kept as surrogates: no SMTP command can carry them
        raise AddressError(f"{text.strip()!r} is not UTF-8 text") from None
    address = parse_address(text.strip().removeprefix("<").removesuffix(">"), primary_domain)
    return ascii_form(address) or str(address)  # an IDN domain as A-labels when it can


def _login() -> tuple[str, str]:
    """The invoking user's login name and full name (the uid's, not $USER's)."""
    try:
        entry = pwd.getpwuid(os.getuid())
        return entry.pw_name, entry.pw_gecos.split(",")[0]
    except KeyError:
        return f"uid{os.getuid()}", ""


def _mailbox_field(name: str, mailbox: str) -> bytes:
    """``Name <mailbox>``: a non-ASCII name as an RFC 2047 encoded word
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
        return email.utils.formataddr((name, mailbox), charset="utf-8").encode("ascii")
    if not name:
        return mailbox.encode("utf-8")
    return str(email.headerregistry.Address(display_name=name, addr_spec=mailbox)).encode()


def prepare(
    raw: bytes, options: Options, settings: LocalSubmission,
    login: tuple[str, str] | None = None,
) -> Prepared:
    """The envelope and the message to send: recipients from the
    arguments, and with ``-t`` from To, Cc and Bcc (Resent-To, -Cc, -Bcc
    instead when the message has any); Bcc and Resent-Bcc fields removed
    (RFC 5322 3.6.3: the other recipients must not see them); a missing
    From (from ``-F`` and the sender), Date and Message-ID added.

    The default envelope sender is ``login@<primary domain>``, as Postfix
    does (``user@$myorigin``): bounces then reach the user who sent."""
    login_name, gecos = login or _login()
    own = _envelope_form(login_name, settings.primary_domain)
    if options.sender is None:
        sender = own
    elif options.sender.strip() in ("", "<>"):
        sender = ""
    else:
        found = _addresses([options.sender], settings.primary_domain)
        if len(found) != 1:
            raise AddressError(f"-f {options.sender!r} is not one address")
        sender = found[0]
    fields, rest = _split_header(raw)
    names = {name for name, _ in fields}
    recipients = _addresses(options.recipients, settings.primary_domain)
    if options.extract:
        kinds = (b"resent-to", b"resent-cc", b"resent-bcc")
        if not names & set(kinds):
            kinds = (b"to", b"cc", b"bcc")
        values = [text.split(b":", 1)[1].decode("utf-8", "surrogateescape")
                  .replace("\r\n", "") for name, text in fields if name in kinds]
        recipients += _addresses(values, settings.primary_domain)
    unique = tuple(dict.fromkeys(recipients))
    kept = [text for name, text in fields if name not in (b"bcc", b"resent-bcc")]
    added = []
    if b"from" not in names:
        mailbox = sender or own
        name = options.full_name
        if name is None and mailbox == own:
            name = os.environ.get("NAME") or gecos
        added.append(b"From: " + _mailbox_field(name or "", mailbox) + b"\r\n")
    if b"date" not in names:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode())
    if b"message-id" not in names:
        msgid = email.utils.make_msgid(domain=settings.hostname.rstrip("."))
        added.append(f"Message-ID: {msgid}\r\n".encode())
    message = b"".join([*kept, *added, b"\r\n", rest])
    return Prepared(sender, unique, message, options.notify, options.ret, options.envid)


# --- the command ----------------------------------------------------------


def run(
    argv: list[str], config: str, prog: str,
    stdin: BinaryIO | None = None, err: TextIO | None = None,
) -> int:
    """The whole command: parse, read, prepare, submit; the exit code."""
    err = err or sys.stderr
    stdin = stdin or sys.stdin.buffer
    not_sent = "the message was NOT sent"
    try:
        options = parse_args(argv)
    except UsageError as e:
        print(f"{prog}: {e}", file=err)
        print(f"usage: {prog} [-t] [-i] [-f sender] [-F name] [-C config] [--] "
              "[recipient ...] < message", file=err)
        return EX_USAGE
    try:
        settings = load_local_submission(options.config or config)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{prog}: {problem}", file=err)
        print(f"{prog}: {not_sent}", file=err)
        return EX_CONFIG
    if not options.recipients and not options.extract:
        print(f"{prog}: no recipients: give them as arguments, or -t to read them from "
              f"the message's To, Cc and Bcc; {not_sent}", file=err)
        return EX_USAGE
    targets = hub_targets(settings.listen)
    if not targets:
        print(f"{prog}: {settings.path}: [smtp] listen names no listener this command can "
              f"reach (a unix: socket or a fixed TCP port); {not_sent}", file=err)
        return EX_CONFIG
    try:
        raw = read_message(stdin, options.ignore_dots, settings.max_message_size)
        prepared = prepare(raw, options, settings)
    except (MessageTooBig, AddressError) as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return EX_DATAERR
    if not prepared.recipients:
        print(f"{prog}: no recipient addresses in the message's To, Cc or Bcc; {not_sent}",
              file=err)
        return EX_DATAERR
    try:
        reply = submit(prepared, targets)
    except Refused as e:
        print(f"{prog}: {e}; {not_sent}", file=err)
        return e.status
    except (smtplib.SMTPException, OSError) as e:  # the hub went away mid-way
        print(f"{prog}: the connection to the hub failed: {e}; {not_sent}", file=err)
        return EX_TEMPFAIL
    if options.verbose:
        print(f"{prog}: {reply}", file=err)
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    """The ``txmailhub-sendmail`` console script (install it as
    /usr/sbin/sendmail); the config is ``-C``, ``$MAILHUB_CONFIG`` or
    /etc/txmailhub/mailhub.toml."""
    from txmailhub.cli import DEFAULT_CONFIG

    prog = os.path.basename(sys.argv[0]) if argv is None else ""
    prog = prog if prog and not prog.startswith("-") else "sendmail"
    return run(sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG, prog)
