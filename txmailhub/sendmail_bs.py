"""``sendmail -bs``: SMTP on standard input and output, the way Alpine
(``sendmail-path``) and some other mail programs submit a message.

The command connects to the running hub exactly as for ``-bm``
(``hub_targets``, ``open_session``) and mediates the conversation one
command at a time: the client's command goes to the hub, the hub's reply
comes back to the client (with CRLF line ends), so the greeting, the
EHLO reply and every refusal are the hub's own.  Only three things are
the command's:

* the EHLO reply loses ``CHUNKING``, ``BINARYMIME`` and ``STARTTLS``: the
  data is read here line by line (BDAT's octet counts would not survive
  the added field below), and TLS to a pipe means nothing;
* after the hub's 354 the data section is read here, a line at a time
  (a longer line in pieces, so memory stays flat however big the message),
  the trace field ``trace_field`` names the local user on top, and the
  lines go on as they came -- still dot-stuffed, LF made CRLF -- up to the
  final dot, which the hub answers;
* when the hub cannot be reached, or goes away, the client gets a ``421``
  and the command exits 75;
* an internal error (a bug: an exception nobody expected) gets the client
  a ``421`` of its own (``INTERNAL_ERROR``) before the session ends, the
  command's exit 70 (``sendmail.run``): RFC 5321 3.8 has a server that
  must close the channel say so with a 421, not drop it.  The hub's
  connection is closed (inside the data: without the final dot, so the
  hub keeps nothing); inside the data the 421 waits for the client's
  final dot, and answers the data.

One command at a time also makes pipelining safe: a client that writes
several commands at once finds them in stdin's buffer, each answered in
order.  Stdin's end between commands ends the session (QUIT to the hub,
exit 0), as a client's QUIT does; inside the data it abandons the message
(the connection is closed without the final dot, so the hub keeps
nothing) and the command exits 65.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from typing import BinaryIO, Protocol

from txmailhub.sendmail_input import waiting
from txmailhub.sendmail_smtp import EX_DATAERR, EX_IOERR, EX_OK, EX_TEMPFAIL

__all__ = ["COMMAND_LINE", "DATA_PIECE", "HIDDEN_EXTENSIONS", "Hub", "Session",
           "command_verb", "format_reply", "internal_error", "unavailable"]

#: octets of a command line the command reads, its line end included (RFC
#: 5321 4.5.3.1.4 allows 512; SMTPUTF8 addresses and extension parameters
#: make some longer, and a line of the AUTH exchange may be 12,288 octets
#: with its CRLF, RFC 4954 4, which the hub takes: this side must not
#: refuse what the hub would read, nor pass on what it would refuse)
COMMAND_LINE = 12288
#: octets of the data section read from stdin at a time
DATA_PIECE = 65536
#: EHLO keywords the command takes out of the hub's reply (see the module)
HIDDEN_EXTENSIONS = frozenset({b"CHUNKING", b"BINARYMIME", b"STARTTLS"})
#: what ends a command's verb, as the hub reads it (``command_verb``): a
#: space or a tab, and a CR, after which the hub still reads a BDAT size
#: (``smtp._transfer``: a bare CR's line refused, its chunk drained)
_BLANK = re.compile(rb"[ \t\r]")
#: a BDAT joined to what follows by another blank (a VT, FF, a control, a
#: Unicode space): no verb of the hub's, but it reads the size after it and
#: drains that chunk (``smtp._transfer``, ``_unknown_command``)
_LOOSE_BDAT = re.compile(r"[Bb][Dd][Aa][Tt][\s\x00-\x1f]")
#: commands answered here, never passed on
_REFUSED_HERE = {b"BDAT": b"502 5.5.1 BDAT is not offered here: use DATA",
                 b"STARTTLS": b"502 5.5.1 STARTTLS is not offered on standard input"}


class Hub(Protocol):
    """What a session needs of its hub connection (``smtplib.SMTP``'s)."""

    def send(self, data: bytes) -> None: ...
    def getreply(self) -> tuple[int, bytes]: ...
    def close(self) -> None: ...


class _HubGone(Exception):
    """The hub connection failed, or its reply had no code: the session
    ends with a 421 of the command's own (the hub's own 421 is
    ``_HubClosed``)."""


class _HubClosed(Exception):
    """The hub said 421 (its shutdown, an idle timeout), which the client
    has been given: the session ends, exit 75."""


class _ClientGone(Exception):
    """Standard output cannot be written: nobody reads the replies."""


def format_reply(code: int, text: bytes) -> bytes:
    """A reply as the client reads it: ``smtplib`` gives its lines joined
    by LF; each becomes ``CODE-line`` CRLF, the last ``CODE line``."""
    lines = text.split(b"\n")
    out = [b"%d-%s\r\n" % (code, line) for line in lines[:-1]]
    last = lines[-1]
    out.append(b"%d %s\r\n" % (code, last) if last else b"%d\r\n" % code)
    return b"".join(out)


def unavailable(hostname: str, why: str) -> bytes:
    """The greeting when there is no hub to talk to (RFC 5321 3.8: 421
    closes the session), on one line whatever ``why`` holds."""
    why = " ".join(why.split())
    return f"421 4.3.0 {hostname} mail hub not available: {why}\r\n".encode("utf-8", "replace")


def internal_error(hostname: str) -> bytes:
    """The reply an internal error of the command's gets the client, at any
    point of the session (as the greeting too): 421, the session closes
    (RFC 5321 3.8, 4.2.3: service not available, closing the channel)."""
    return (f"421 4.3.0 {hostname} internal error in the sendmail command: closing "
            "the session\r\n").encode("utf-8", "replace")


def command_verb(command: bytes) -> bytes:
    """The verb of a command line (without its line end), upper-cased, as
    the hub reads it (``smtp._parse.parse_command``): blanks and tabs
    before it are skipped, and a space or a tab ends it.  Read any other
    way, a ``" DATA"`` the hub takes would not be seen here as the start
    of the data, nor a ``" EHLO"``'s reply filtered or a ``"\\tBDAT"``
    refused (nor ``"BDAT\\t10"``: the hub would wait for its chunk; nor
    ``"BDAT\\r10"``, a line the hub refuses for its bare CR after it has
    read the chunk it names).  A ``"BDAT<FF>3"`` is BDAT here: the hub
    reads its chunk too, and would wait for octets never sent."""
    verb = _BLANK.split(command.strip(b" \t"), 1)[0].upper()
    if len(verb) > 4 and verb[:4] == b"BDAT" and _LOOSE_BDAT.match(
            verb.decode("utf-8", "replace")):
        return b"BDAT"
    return verb


def _ehlo_as_offered(text: bytes, added: int = 0) -> bytes:
    """The hub's EHLO reply as this side offers it: without the extensions
    it does not pass on, and with a ``SIZE`` limit lowered by the ``added``
    octets of the trace field, so that a client that keeps to the limit
    offered is not refused after its data for octets it never wrote.  The
    limit stays at least 1 (``SIZE 0`` would announce no limit at all,
    RFC 1870 4)."""
    lines = text.split(b"\n")
    kept = []
    for line in lines[1:]:
        keyword, _, value = line.partition(b" ")
        keyword = keyword.upper()
        if keyword in HIDDEN_EXTENSIONS:
            continue
        if keyword == b"SIZE" and value.strip().isdigit() and int(value) > 0:
            line = b"SIZE %d" % max(1, int(value) - added)
        kept.append(line)
    return b"\n".join([lines[0], *kept])


class Session:
    """One ``-bs`` session: ``run`` it with the hub connected and its
    greeting read; it returns the exit code.  ``trace`` makes the
    ``Received`` field each message gets on top (its date is the
    message's)."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, hub: Hub,
                 trace: Callable[[], bytes], hostname: str) -> None:
        # a standard input left non-blocking by a parent read as ended
        # at the client's first pause (``sendmail_input.waiting``)
        self.stdin = waiting(stdin)
        self.stdout = stdout
        self.hub = hub
        self.trace = trace
        self.hostname = hostname
        self.why: str | None = None  # what went wrong, for stderr
        #: the client has the session's last reply (a 221 or a 421), or is gone
        self._ended = False

    def run(self, greeting: tuple[int, bytes]) -> int:
        """The session; its exit code.  An exception nobody expected goes
        on to the caller (``sendmail.run``: exit 70), after the client's
        ``421`` (``internal_error``) and the hub's connection closed."""
        try:
            return self._session(greeting)
        except Exception:
            self._close_on_internal_error()
            raise

    def _session(self, greeting: tuple[int, bytes]) -> int:
        """``run`` but for an internal error: the session to its end,
        whichever side ended it."""
        try:
            try:
                self._reply(*greeting)
                return self._commands()
            except _HubClosed:
                return EX_TEMPFAIL
            except _HubGone as e:
                self.why = str(e)
                self.hub.close()
                self._write(b"421 4.4.2 %s mail hub connection lost\r\n"
                            % self.hostname.encode("ascii", "replace"))
                self._ended = True
                return EX_TEMPFAIL
        except _ClientGone:
            self._ended = True
            self.why = self.why or "standard output was closed"
            self.hub.close()
            return EX_IOERR

    def _close_on_internal_error(self) -> None:
        """A bug ends the session: the client hears so (unless it had the
        session's last reply already, or stdout cannot be written), and
        the hub's connection is closed -- without the final dot when
        inside the data.  Whatever fails here stays behind the error
        that ended the session, which is the one reported."""
        if not self._ended:
            self._ended = True
            try:
                self._write(internal_error(self.hostname))
            except Exception:  # stdout gone (``_ClientGone``), or broken too
                pass
        self._close_hub()

    def _close_hub(self) -> None:
        """The hub's connection closed after an internal error, whatever
        the close meets: the error reported is the one that ended it."""
        try:
            self.hub.close()
        except Exception:
            pass

    # --- the two sides ---------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except (OSError, ValueError) as e:  # EPIPE; a closed file
            raise _ClientGone(str(e)) from None

    def _read(self, size: int) -> bytes:
        """A line of the client's, of at most ``size`` octets.  A standard
        input that cannot be read (opened for writing only: EBADF; a
        terminal that hung up: EIO) ends the session as a closed standard
        output does, exit 74: it was a traceback, exit 1, with the hub's
        connection left to the process's end."""
        try:
            return self.stdin.readline(size)
        except (OSError, ValueError) as e:
            self.why = (f"cannot read standard input: {getattr(e, 'strerror', None) or e}; "
                        "the session ends (a message whose final dot was not read was "
                        "NOT sent)")
            raise _ClientGone(self.why) from None

    def _reply(self, code: int, text: bytes) -> None:
        self._write(format_reply(code, text))

    def _send(self, data: bytes) -> None:
        try:
            self.hub.send(data)
        except (smtplib.SMTPException, OSError) as e:
            raise _HubGone(f"sending to the hub: {e}") from None

    def _answer(self) -> tuple[int, bytes]:
        """The hub's next reply; a lost connection or an unreadable reply
        is ``_HubGone``."""
        try:
            code, text = self.hub.getreply()
        except (smtplib.SMTPException, OSError) as e:
            raise _HubGone(f"reading the hub's reply: {e}") from None
        if code < 100:  # smtplib's -1: no code
            raise _HubGone(f"the hub's reply had no code: {text!r}")
        return code, text

    def _relay(self, code: int, text: bytes) -> None:
        """Pass a hub reply on; a 421 ends the session (the hub closes)."""
        self._reply(code, text)
        if code in (221, 421):
            self._ended = True
        if code == 421:
            self.hub.close()
            self.why = "the hub closed the session: 421 " + text.decode("utf-8", "replace")
            raise _HubClosed

    # --- commands ----------------------------------------------------------

    def _commands(self) -> int:
        while True:
            line = self._read(COMMAND_LINE)
            if not line:
                self._quit_hub()
                return EX_OK
            if not line.endswith(b"\n"):
                if len(line) < COMMAND_LINE:  # the input ended inside a line
                    self._quit_hub()
                    return EX_OK
                self._skip_line()
                self._reply(500, b"5.5.2 Line too long")
                continue
            # its line end only, CRLF or LF: a CR before it is the hub's
            # to refuse, as it does spoken to directly (it was taken off
            # here, and "NOOP\r\r\n" was a 250)
            command = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            verb = command_verb(command)
            if verb in _REFUSED_HERE:
                self._write(_REFUSED_HERE[verb] + b"\r\n")
                continue
            self._send(command + b"\r\n")
            code, text = self._answer()
            if verb == b"EHLO" and code == 250:
                text = _ehlo_as_offered(text, len(self.trace()))
            self._relay(code, text)
            if code == 221:  # the hub closes (QUIT taken; "QUIT now" is a 501, no end)
                self.hub.close()
                return EX_OK
            if code == 354:  # only DATA has it; whatever the command looked like here
                status = self._data()
                if status is not None:
                    return status

    def _skip_line(self) -> None:
        while (piece := self._read(COMMAND_LINE)) and not piece.endswith(b"\n"):
            pass

    def _quit_hub(self) -> None:
        try:
            self.hub.send(b"QUIT\r\n")
            self.hub.getreply()
        except (smtplib.SMTPException, OSError):
            pass
        self.hub.close()

    # --- the data section ----------------------------------------------------

    def _data(self) -> int | None:
        """After the hub's 354: the trace field, then the client's lines as
        they are (dot-stuffed already) with CRLF ends, up to the final dot,
        and the hub's reply to it.  None to go on with the session, or
        the exit code when it ended.

        The client writes its whole message before it reads a reply: a
        hub lost, or an internal error, inside the data is answered (the
        ``421``) once the final dot is read, as the reply to the data --
        written before, it would sit unread while the client, writing on
        into a command that has ended, met a broken pipe."""
        hub_lost: str | None = None
        failed: Exception | None = None  # a bug, raised at the final dot

        def send(data: bytes | Callable[[], bytes]) -> None:
            nonlocal hub_lost, failed
            if hub_lost is None and failed is None:
                try:
                    self._send(data if isinstance(data, bytes) else data())
                except _HubGone as e:
                    hub_lost = str(e)  # read on to the final dot: the client is writing
                except Exception as e:
                    failed = e
                    self._close_hub()  # without the final dot: the hub keeps nothing

        send(self.trace)
        at_line_start = True
        held_cr = b""
        while True:
            try:
                piece = self._read(DATA_PIECE)
            except _ClientGone:
                if failed is not None:  # the bug is still the error reported
                    raise failed from None
                raise
            if not piece:  # the client went away mid-message: the hub must keep nothing
                if failed is not None:
                    raise failed
                self.why = "standard input ended inside a message's data; it was NOT sent"
                self.hub.close()
                return EX_DATAERR
            piece, held_cr = held_cr + piece, b""
            if at_line_start and piece in (b".\r\n", b".\n"):
                break
            if piece.endswith(b"\n"):
                if not piece.endswith(b"\r\n"):
                    piece = piece[:-1] + b"\r\n"
                at_line_start = True
            else:
                if piece.endswith(b"\r"):  # its LF may start the next piece
                    piece, held_cr = piece[:-1], b"\r"
                at_line_start = False
            send(piece)
        if failed is not None:
            raise failed
        if hub_lost is not None:
            raise _HubGone(hub_lost)
        self._send(b".\r\n")
        try:
            code, text = self._answer()
        except _HubGone as e:
            raise _HubGone(f"{e} (after the whole message was sent: the hub MAY have "
                           "taken it)") from None
        self._relay(code, text)
        return None
