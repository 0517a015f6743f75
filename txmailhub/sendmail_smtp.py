"""How ``txmailhub-sendmail`` hands a prepared message to the running hub:
which ``[smtp] listen`` endpoint to reach, the SMTP transaction over
``smtplib`` (several, for more recipients than the hub takes in one),
and the sysexits(3) code for each way it can fail.

Owns no message content (``txmailhub.sendmail`` prepares it) and no
retries: the command has no queue, so a refusal is the caller's to see.
The data goes out in pieces of at most ``CHUNK`` octets from the spool,
dot-stuffed on the way (``smtplib``'s own ``data()`` wants the message
whole); the one failure whose outcome no client can know -- the connection
lost after the final dot, before the reply -- is ``OutcomeUnknown``.
"""

from __future__ import annotations

import bisect
import smtplib
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from txmailhub.config import SMTPSettings, listen_address
from txmailhub.smtp.xtext import xtext_encode

if TYPE_CHECKING:
    from txmailhub.sendmail import Prepared

__all__ = [
    "CHUNK", "EX_CONFIG", "EX_DATAERR", "EX_IOERR", "EX_NOPERM", "EX_NOUSER", "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL", "EX_UNAVAILABLE", "EX_USAGE", "TIMEOUT",
    "OutcomeUnknown", "PartlySent",
    "Refused",
    "Target", "dot_stuffed", "hub_targets", "open_session", "submit",
]

# sysexits(3): what callers of sendmail (cron, PHP, MTAs' own wrappers) test
EX_OK = 0
EX_USAGE = 64        # bad command line
EX_DATAERR = 65      # bad message or address
EX_NOUSER = 67       # a recipient the hub refused (550)
EX_UNAVAILABLE = 69  # the hub refused for good (other 5xx)
EX_SOFTWARE = 70     # an internal error: a bug in the command
EX_IOERR = 74        # mailq: the queue could not be read
EX_TEMPFAIL = 75     # hub not reachable, or 4xx: try again later (and the outcome unknown)
EX_NOPERM = 77       # mailq: the queue is not this user's to read
EX_CONFIG = 78       # the config cannot be read, or names no usable listener

#: seconds for the connection and each reply (RFC 5321 4.5.3.2 asks up to
#: 10 minutes for the reply to the final dot; our hub answers in far less)
TIMEOUT = 300.0
#: octets of message data read from the spool and sent at a time
CHUNK = 65536


@dataclass(frozen=True)
class Target:
    """One way to reach the hub's MX listener."""

    host: str
    port: int = 0
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return self.unix_path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def hub_targets(listen: Iterable[str]) -> list[Target]:
    """Where to reach the MX listener of ``[smtp] listen``, best first:
    a ``unix:`` socket (only local processes reach it, always a relay
    client), then a listener on every address or on loopback (reached on
    loopback), then one bound to a single other address (reached there:
    that address must be in ``relay_networks`` to relay).  A ``tcp:0``
    listener's port is not in the config, so it is skipped."""
    unix, loopback, other = [], [], []
    for description in listen:
        bound = listen_address(description)
        if bound is None:
            continue
        kind, where, ip = bound
        if kind == "unix":
            unix.append(Target("localhost", 0, where))
        elif ip is None:
            loopback.append(Target("::1" if kind == "tcp6" else "127.0.0.1", where))
        elif getattr(ip, "is_loopback", False):
            loopback.append(Target(str(ip), where))
        else:
            other.append(Target(str(ip), where))
    return unix + loopback + other


class _HubSMTP(smtplib.SMTP):
    """smtplib's client, which also connects to a UNIX socket."""

    def __init__(self, target: Target, timeout: float) -> None:
        self._target = target
        super().__init__(local_hostname="localhost", timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        if self._target.unix_path is None:
            return super()._get_socket(host, port, timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self._target.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock


class OutcomeUnknown(Exception):
    """The whole message and its final dot went out, and the connection
    failed before the hub's reply: the hub may have taken the message, or
    not (RFC 1047 names the problem; RFC 5321 6.1 prefers a duplicate to
    a loss, so this is reported as a deferral, exit 75)."""


def _named(recipients: list[str]) -> str:
    """``recipients`` counted, and the first ten of them named."""
    shown = ", ".join(f"<{r}>" for r in recipients[:10]) + (
        f" and {len(recipients) - 10} more" if len(recipients) > 10 else "")
    return f"{len(recipients)} recipients ({shown})"


class PartlySent(Exception):
    """A message for more recipients than the hub takes in one
    transaction reached those of the first ones (``sent``), and a later
    one failed (``why``; ``status`` its exit code) although the hub had
    taken every recipient when asked first: a recipient removed, the hub
    stopped, in between.  ``maybe``: that failure was ``OutcomeUnknown``,
    and its transaction's recipients may have the message; the
    transactions after it were never tried (``unsent`` recipients), so
    those certainly do not."""

    def __init__(self, status: int, sent: list[str], why: str,
                 maybe: list[str] | None = None, unsent: int = 0) -> None:
        maybe = maybe or []
        text = (f"the message WAS sent to {_named(sent)}, in transactions of as many as "
                f"the hub takes, but then: {why}; ")
        if maybe:
            text += f"it MAY have been sent to {_named(maybe)}"
            text += f", and was NOT sent to the remaining {unsent}" if unsent else ""
        else:
            text += "it was NOT sent to the other recipients"
        super().__init__(text)
        self.status = status
        self.sent = sent
        self.maybe = maybe


class Refused(Exception):
    """The hub did not take the message (for anyone); ``status`` is the
    exit code, the text says why, with the hub's reply verbatim."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split("\n"))


def _status(stage: str, code: int, reply: str) -> int:
    """The exit code for a refusal: 4xx is for later; 5xx by what it says."""
    if 400 <= code < 500 or code < 200:
        return EX_TEMPFAIL
    enhanced = reply.split(" ", 1)[0]
    # 550 5.2.3 to RCPT: the message is over that mailbox's quota itself
    # ([hub] mailbox_quota), a refusal of the message, not of the user
    if stage == "RCPT" and code in (550, 551) and not enhanced.startswith(("5.7.", "5.2.3")):
        return EX_NOUSER
    # 552 to MAIL: the SIZE it declared is over the hub's limit (RFC 1870
    # 6.1), the same refusal of the message as 552 after the data
    if code in (501, 553) or enhanced == "5.2.3" or (stage in ("MAIL", "DATA") and (
            code == 552 or enhanced.startswith("5.3.4"))) or (
            stage == "DATA" and enhanced.startswith("5.6.")):
        return EX_DATAERR
    return EX_UNAVAILABLE


def open_session(targets: list[Target], timeout: float = TIMEOUT,
                 ) -> tuple[smtplib.SMTP, Target, tuple[int, bytes]]:
    """A connection to the first target that answers, and its greeting
    (the client and the code and text ``smtplib`` read).  Raise
    ``Refused`` (75) when none can be reached, and for a greeting other
    than 220 (421: too many connections, 554: no service here)."""
    errors = []
    for target in targets:
        client = _HubSMTP(target, timeout)
        try:
            code, greeting = client.connect(target.host, target.port)
        except OSError as e:
            client.close()
            errors.append(f"{target}: {e.strerror or e}")
            continue
        if code != 220:
            client.close()
            raise Refused(_status("greeting", code, _text(greeting)),
                           f"the hub at {target} greeted with {code} {_text(greeting)}")
        return client, target, (code, greeting)
    raise Refused(EX_TEMPFAIL, "cannot reach the hub (is it running?): " + "; ".join(errors))


def _connect(targets: list[Target], timeout: float) -> tuple[smtplib.SMTP, Target]:
    client, target, _ = open_session(targets, timeout)
    return client, target


def dot_stuffed(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces`` of CRLF text with a dot doubled at the start of each line
    (RFC 5321 4.5.2), however the pieces cut the lines.  The text has no
    LF but in CRLF, so every dot after a LF starts a line."""
    at_line_start = True
    for piece in pieces:
        if not piece:
            continue
        stuffed = piece.replace(b"\n.", b"\n..")
        if at_line_start and piece[:1] == b".":
            stuffed = b"." + stuffed
        at_line_start = piece.endswith(b"\n")
        yield stuffed


def _spool_pieces(prepared: Prepared) -> Iterator[bytes]:
    yield prepared.header
    while piece := prepared.body.read(CHUNK):
        yield piece


def _send_data(client: smtplib.SMTP, prepared: Prepared) -> tuple[int, bytes]:
    """After the 354: the message, dot-stuffed, in pieces, then the final
    dot and the hub's reply.  Once that dot is out, a failure is no longer
    "not sent" but ``OutcomeUnknown``."""
    for piece in dot_stuffed(_spool_pieces(prepared)):
        client.send(piece)
    client.send(b".\r\n")
    try:
        return client.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as e:
        raise OutcomeUnknown(f"the connection to the hub failed after the whole message "
                             f"was sent, before the hub's reply to it: {e}") from None


def _too_many(code: int, reply: str) -> bool:
    """The server's limit of recipients in one transaction (RFC 5321
    4.5.3.1.10: ``452``, RFC 3463's X.5.3; the hub's ``[smtp]
    max_recipients``): the recipients from there on go in another one."""
    return code == 452 and reply.startswith("4.5.3")


def _transaction(client: smtplib.SMTP, mail: str, notify: str, sender: str,
                 recipients: list[str]) -> tuple[int, list[tuple[int, int, str]]]:
    """MAIL and the RCPTs of one transaction: how many of ``recipients``
    it holds (all but those the server's limit left over, never none), and
    the refusals among them as (their index, exit code, why).  Raise
    ``Refused`` for a refused MAIL."""
    code, reply = client.docmd("MAIL", mail)
    if code != 250:
        raise Refused(_status("MAIL", code, _text(reply)), f"sender <{sender}>: {code} "
                      f"{_text(reply)}")
    refused = []
    for i, rcpt in enumerate(recipients):
        code, reply = client.docmd("RCPT", f"TO:<{rcpt}>{notify}")
        if code in (250, 251):
            continue
        if i and _too_many(code, _text(reply)):
            return i, refused
        refused.append((i, _status("RCPT", code, _text(reply)),
                        f"<{rcpt}>: {code} {_text(reply)}"))
    return len(recipients), refused


def _refused(refused: list[tuple[int, int, str]]) -> Refused:
    permanent = [s for _, s, _ in refused if s != EX_TEMPFAIL]
    return Refused(permanent[0] if permanent else EX_TEMPFAIL,
                   "; ".join(why for _, _, why in refused))


def _run_starts(groups: tuple[int, ...]) -> list[int] | None:
    """Where each run of ``Prepared.groups`` starts among the recipients
    (``None``: every recipient is a run of its own)."""
    if not groups:
        return None
    starts, at = [], 0
    for length in groups:
        starts.append(at)
        at += length
    return starts


def _whole_runs(starts: list[int] | None, done: int, taken: int) -> int:
    """How many of the recipients after the first ``done`` a transaction
    that took ``taken`` of them (the hub's limit) holds: up to the start
    of the run the limit cut, so that recipients leading to one mailbox
    are in one transaction, where the hub merges them (one copy).  All
    ``taken`` for a run longer than the limit itself, which no
    transaction can hold: its mailbox gets a copy in each it is cut into."""
    if starts is None:
        return taken
    start = starts[bisect.bisect_right(starts, done + taken) - 1]
    return start - done if start > done else taken


def submit(prepared: Prepared, targets: list[Target], timeout: float = TIMEOUT,
           max_junk_commands: int = SMTPSettings.max_junk_commands) -> str:
    """Hand the message to the hub; return the hub's reply to the final
    dot.  Raise ``Refused`` when it did not take the message for every
    recipient: a refused RCPT ends the transaction before DATA (RSET), so
    nobody gets a copy the caller would resend.

    More recipients than the hub takes in one transaction (its ``452
    4.5.3``) go in several, one after the other (RFC 5321 4.5.3.1.10
    asks a client to): every recipient is first asked for, in
    transactions ended with RSET, so that a refused one still stops the
    message for all; only then is it sent in each.  Should a later one
    fail after all (the hub stopped, a recipient removed meanwhile),
    ``PartlySent`` names who has it.  A transaction ends only between two
    runs of ``prepared.groups`` (recipients that lead to one mailbox,
    which the hub merges within a transaction only): when the hub's limit
    falls inside one, the run goes in the next transaction whole.

    The hub counts each RSET as a command that moves no mail, and past
    its ``[smtp] max_junk_commands`` each as an error, closing the
    session at ``max_errors`` (a client that keeps it busy for nothing):
    after ``max_junk_commands`` of them the asking goes on in a new
    session, whose count starts anew, so that a list of any length gets
    through.  The messages sent then reset the count (an accepted message
    does), and need no RSET."""
    if not prepared.recipients:
        raise Refused(EX_USAGE, "no recipients")
    client, target = _connect(targets, timeout)
    try:
        mail, notify = _hello(client, target, prepared)
        batches: list[list[str]] = []
        refused: list[tuple[int, int, str]] = []
        rest = list(prepared.recipients)
        starts = _run_starts(prepared.groups)
        resets = 0  # the RSETs of this session
        while rest:
            if resets == max_junk_commands:
                _quit(client)
                client, target = _connect(targets, timeout)
                mail, notify = _hello(client, target, prepared)
                resets = 0
            taken, found = _transaction(client, mail, notify, prepared.sender, rest)
            if taken < len(rest):  # the hub's limit: never inside a run
                taken = _whole_runs(starts, len(prepared.recipients) - len(rest), taken)
                found = [r for r in found if r[0] < taken]  # the others are asked again
            batches.append(rest[:taken])
            rest = rest[taken:]
            refused += found
            if rest or refused or len(batches) > 1:
                client.rset()  # (the last one too: every batch is sent anew below)
                resets += 1
        if refused:
            raise _refused(refused)
        start = prepared.body.tell()
        sent: list[str] = []
        for batch in batches:
            try:
                if len(batches) > 1:
                    taken, found = _transaction(client, mail, notify, prepared.sender, batch)
                    if found or taken < len(batch):
                        client.rset()
                        raise _refused(found or [(taken, EX_TEMPFAIL, f"<{batch[taken]}>: "
                                                  "452 the hub took fewer recipients than "
                                                  "before")])
                prepared.body.seek(start)
                reply_text = _data(client, prepared)
            except (Refused, OutcomeUnknown, smtplib.SMTPException, OSError) as e:
                if not sent:
                    raise
                status = e.status if isinstance(e, Refused) else EX_TEMPFAIL
                maybe = batch if isinstance(e, OutcomeUnknown) else None
                unsent = len(prepared.recipients) - len(sent) - len(batch)
                raise PartlySent(status, sent, str(e), maybe, unsent) from None
            sent += batch
        return reply_text
    finally:
        _quit(client)


def _quit(client: smtplib.SMTP) -> None:
    """End a session: QUIT, or just the close of a connection gone bad."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _hello(client: smtplib.SMTP, target: Target, prepared: Prepared) -> tuple[str, str]:
    """EHLO in a new session, and what its reply allows: the MAIL
    command's argument for ``prepared`` and the NOTIFY of each RCPT.
    Raise ``Refused`` for a refused EHLO, or a message that needs
    SMTPUTF8 from a hub that does not offer it."""
    code, reply = client.ehlo()
    if code != 250:
        raise Refused(_status("EHLO", code, _text(reply)), f"EHLO: {code} {_text(reply)}")
    params = []
    utf8 = not prepared.sender.isascii() or not all(r.isascii() for r in prepared.recipients)
    if utf8 or not prepared.header.isascii():
        if not client.has_extn("smtputf8"):
            raise Refused(EX_DATAERR, f"the hub at {target} does not offer SMTPUTF8, "
                                       "which this message's addresses need")
        params.append("SMTPUTF8")
        client.command_encoding = "utf-8"
    eight_bit = prepared.body_8bit or not prepared.header.isascii()
    if eight_bit and client.has_extn("8bitmime"):
        params.append("BODY=8BITMIME")
    if client.has_extn("size"):
        params.append(f"SIZE={prepared.size}")
    dsn = client.has_extn("dsn")
    if dsn and prepared.ret:
        params.append(f"RET={prepared.ret}")
    if dsn and prepared.envid:
        params.append(f"ENVID={xtext_encode(prepared.envid)}")
    notify = f" NOTIFY={prepared.notify}" if dsn and prepared.notify else ""
    return f"FROM:<{prepared.sender}>" + "".join(" " + p for p in params), notify


def _data(client: smtplib.SMTP, prepared: Prepared) -> str:
    """DATA, the message and the hub's reply to it, in a transaction
    whose recipients the hub took."""
    code, reply = client.docmd("DATA")
    if code != 354:
        raise Refused(_status("DATA", code, _text(reply)), f"DATA: {code} {_text(reply)}")
    code, reply = _send_data(client, prepared)
    if code != 250:
        raise Refused(_status("DATA", code, _text(reply)), f"message: {code} {_text(reply)}")
    return f"{code} {_text(reply)}"
