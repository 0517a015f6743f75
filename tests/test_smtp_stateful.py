"""A model of an SMTP session, checked against the real protocol.

Hypothesis drives ``SMTPProtocol`` over a ``StringTransport`` with random
commands (valid, out of sequence and garbage), message bodies and BDAT
chunks, and cuts the bytes into reads at random places: many commands in
one read (RFC 2920), a CRLF or the end-of-data line split across reads.
A small model of RFC 5321, 3030 and 1870 predicts every reply.  After
each batch the machine checks that

* every command got exactly one reply, in order, of the predicted code;
* every reply line is well formed, with an enhanced status code (RFC 2034,
  RFC 3463) of the same class on every line except where docs/smtp.rst
  says there is none (HELO/EHLO, 354, 334);
* a message is stored once per recipient, with the body that was sent
  (unstuffed, LF line ends) after the trace fields, if and only if its data
  was answered 250; nothing else is stored;
* ``max_errors`` and ``max_junk_commands`` close the session with 421 after
  the documented number of replies;
* STARTTLS (``[tls]`` configured; the handshake is the transport's, faked
  here: ``TLSStartingTransport``) starts TLS once, after its 220 went out
  in clear text and with nothing the client sent behind it obeyed, and
  leaves a session that wants EHLO again, has no login and no transaction,
  and refuses a second STARTTLS;
* nothing is logged as a failure.

``SMTP_STATEFUL_EXAMPLES`` raises the number of examples for a longer
exploration (the default keeps the suite quick).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from conftest import drawn_reads
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_smtp_protocol import Harness
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from txmailhub.address import Address
from txmailhub.smtp import replies as smtp_replies
from txmailhub.testing import QueueSpy

EXAMPLES = int(os.environ.get("SMTP_STATEFUL_EXAMPLES", "150"))
MAX_ERRORS = 10
MAX_JUNK = 8
MAX_RECIPIENTS = 3
MAX_SIZE = 3000
NOT_COUNTED = object()  # a 4xx/5xx that is not the client's error

_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.S)
_ENHANCED = re.compile(rb"^([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")

LOCAL = {"alice": "alice@example.org", "bob": "bob@example.org",
         "Alice@Example.ORG": "alice@example.org", "postmaster": "postmaster@example.org"}

# body lines: text without CR or LF, some with leading dots
_TEXT = st.text(alphabet="ab .-\t", max_size=20).map(str.encode)
_DOTTED = st.sampled_from([b".", b"..", b".x", b". ", b"..."])
_HIGH = st.binary(min_size=1, max_size=4).map(
    lambda b: bytes(c | 0x80 for c in b))  # 8-bit octets, no CR/LF
_LINEGEN = st.one_of(_TEXT, _TEXT, _TEXT, _DOTTED, _HIGH)
_DEFECT = st.sampled_from(["none", "none", "none", "bare_lf", "bare_cr", "long", "big",
                           "998", "dot998", "size_exact", "size_plus1", "crlf_split"])


#: ``Components.tls`` for a hub with ``[tls]``: the fake transport below
#: never reads it
TLS_CONTEXT = object()
TLS_READY = smtp_replies.TLS_READY.to_bytes()


class TLSStartingTransport(StringTransport):
    """A ``StringTransport`` whose ``startTLS`` stands for a handshake that
    succeeds at once: what the client sends afterwards arrives as it would
    decrypted.  It records what had been written when TLS started (the
    220 must be the last of it, sent in clear text)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tls_starts: list[bytes] = []  # the output so far at each startTLS

    def startTLS(self, context) -> None:
        assert context is TLS_CONTEXT
        self.tls_starts.append(self.value())


@dataclass
class Expect:
    """One reply to come: its code, whether it carries an enhanced code."""

    what: str
    code: int
    enhanced: bool = True


def body_lines(draw_lines: list[bytes], defect: str) -> list[bytes]:
    lines = list(draw_lines)
    if defect == "bare_lf":
        lines.insert(len(lines) // 2, b"x\ny")
    elif defect == "bare_cr":
        lines.insert(len(lines) // 2, b"x\ry")
    elif defect == "long":
        lines.insert(0, b"L" * 999)
    elif defect == "big":
        lines.extend([b"B" * 900] * 4)
    elif defect == "998":
        lines.append(b"d" * 998)  # the longest line allowed
    elif defect == "dot998":
        lines.append(b"." + b"d" * 997)  # its transparency dot is not counted
    elif defect in ("size_exact", "size_plus1"):
        room = MAX_SIZE - sum(len(x) + 2 for x in lines) + (defect == "size_plus1")
        while room >= 2:  # (judge() computes the size these lines make)
            take = min(room, 900)
            if room - take == 1:  # every line needs its CRLF
                take -= 1
            lines.append(b"s" * (take - 2))
            room -= take
    elif defect == "crlf_split":
        lines.extend([b"", b"", b".", b""])
    return lines


def judge(lines: list[bytes]) -> int:
    """The reply to a whole message (docs/smtp.rst precedence: bare line
    ends, then over-long lines, then the size)."""
    if any(b"\r" in x or b"\n" in x for x in lines):
        return 550
    if any(len(x) > 998 for x in lines):
        return 500
    if sum(len(x) + 2 for x in lines) > MAX_SIZE:
        return 552
    return 250


class SMTPModel(RuleBasedStateMachine):
    SUBMISSION = False
    HOST = "192.0.2.1"

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(submission=self.SUBMISSION, queue=QueueSpy(),
                         max_recipients=MAX_RECIPIENTS, max_junk_commands=MAX_JUNK,
                         max_errors=MAX_ERRORS, max_message_size=MAX_SIZE, auth_failure_delay=0.0,
                         tls=TLS_CONTEXT)
        self.failures: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.p, self.t = self.h.connect(self.HOST, transport=TLSStartingTransport)
        greeting = self.t.value()
        assert greeting.startswith(b"220 mx.example.org "), greeting
        self.t.clear()
        # the model
        self.closed = False
        self.greeted = False
        self.authed = False
        self.in_mail = False
        self.rcpts: list[str] = []  # mailboxes accepted in this transaction
        self.rcpt_count = 0
        self.chunks: list[bytes] | None = None  # the lines of the BDAT data so far
        self.used_bdat = False
        self.bdat_failed = False
        self.errors = 0
        self.junk = 0
        self.auth_failures = 0
        self.tls = False  # STARTTLS answered 220
        self.tls_starts = 0  # how many times the transport must have started TLS
        self.stored: dict[str, list[bytes]] = {}
        # what is sent but not yet checked
        self.pending: list[bytes] = []
        self.steps = 0  # commands sent (QUIT waits for a few)
        self.expect: list[Expect] = []

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("log_level").name in (
                "error", "critical"):
            self.failures.append(event)

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observe)

    # --- the model's bookkeeping ------------------------------------------------

    def send(self, data: bytes) -> None:
        self.steps += 1
        self.pending.append(data)

    def answer(self, what: str, code: int, enhanced: bool = True, *,
               counted: bool = True, junk: bool = False) -> None:
        """Expect one reply; count errors and junk as the server must."""
        self.expect.append(Expect(what, code, enhanced))
        error = code >= 400 and counted and code != 421
        if error:
            self._error()
        # (a refused junk command is an error, and not counted as junk)
        if junk and not error and not self.closed:
            self.junk += 1
            if self.junk > MAX_JUNK:
                self._error()

    def discarded(self) -> None:
        """A BDAT chunk discarded after a failed one: a junk command counted
        when its BDAT line is read, before the chunk; when that is the error
        that closes the session, the 421 is the only answer."""
        self.junk += 1
        if self.junk > MAX_JUNK:
            self._error()
            if self.closed:
                return
        self.expect.append(Expect("BDAT discarded", 503))

    def _error(self) -> None:
        if self.closed:
            return
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self.expect.append(Expect("too many errors", 421))
            self.close()

    def close(self) -> None:
        self.closed = True

    def reset(self) -> None:
        self.in_mail = False
        self.rcpts = []
        self.rcpt_count = 0
        self.chunks = None
        self.used_bdat = False

    def accept(self, lines: list[bytes]) -> None:
        body = b"".join(x + b"\n" for x in lines)
        for r in dict.fromkeys(self.rcpts):
            self.stored.setdefault(r, []).append(body)
        self.junk = 0

    def ready(self) -> bool:
        return not self.closed

    # --- rules --------------------------------------------------------------------

    @precondition(ready)
    @rule(verb=st.sampled_from(["EHLO", "HELO", "ehlo", "Helo"]),
          name=st.sampled_from(["client.example", "[192.0.2.1]", "x", "", "  ",
                                "c d", "ünï.example"]))
    def hello(self, verb: str, name: str) -> None:
        self.send(f"{verb} {name}\r\n".encode() if name else f"{verb}\r\n".encode())
        was = self.greeted
        if not name.strip():
            self.answer(verb, 501, enhanced=False, junk=was)
            return
        self.reset()
        self.bdat_failed = False
        self.greeted = True
        self.answer(verb, 250, enhanced=False, junk=was)

    def _mail_code(self, extra: str, addr: str) -> int:
        if not self.greeted:
            return 503
        if self.in_mail:
            return 503
        if self.SUBMISSION and not self.authed:
            return 530
        if extra in ("BAD", "SIZE=x"):
            return 555 if extra == "BAD" else 501
        if not addr.isascii() and "SMTPUTF8" not in extra:
            return 550  # the address is read before its parameters are judged
        if extra == f"SIZE={MAX_SIZE + 1}":
            return 552
        return 250

    @precondition(ready)
    @rule(addr=st.sampled_from(["<s@x.test>", "<>", "<alice@example.org>", "<jöe@x.test>"]),
          extra=st.sampled_from(["", "", "SIZE=100", f"SIZE={MAX_SIZE + 1}", "BODY=8BITMIME",
                                 "BODY=7BIT", "SMTPUTF8", "AUTH=<>", "BAD", "SIZE=x"]))
    def mail(self, addr: str, extra: str) -> None:
        if self.SUBMISSION and addr == "<jöe@x.test>":
            addr = "<s@x.test>"
        self.send(f"MAIL FROM:{addr}{' ' + extra if extra else ''}\r\n".encode())
        self.bdat_failed = False
        code = self._mail_code(extra, addr)
        if code == 250:
            self.in_mail = True
        self.answer("MAIL", code)

    @precondition(ready)
    @rule(who=st.sampled_from(["alice", "bob", "Alice@Example.ORG", "postmaster", "nobody",
                               "someone@remote.test", "<bad", "alice NOTIFY=BAD"]))
    def rcpt(self, who: str) -> None:
        arg = who if who.startswith("<") or " " in who else f"<{who}>"
        if " " in who:
            w, rest = who.split(" ", 1)
            arg = f"<{w}> {rest}"
        self.send(f"RCPT TO:{arg}\r\n".encode())
        self.bdat_failed = False
        if not self.greeted or not self.in_mail:
            self.answer("RCPT", 503)
            return
        if who == "<bad":
            self.answer("RCPT", 501)
            return
        if " " in who:
            self.answer("RCPT", 501)
            return
        if self.chunks is not None:
            self.answer("RCPT", 503)
            return
        if self.rcpt_count >= MAX_RECIPIENTS:
            self.answer("RCPT", 452, counted=False)
            return
        if who == "nobody":
            self.answer("RCPT", 550)
            return
        if who == "someone@remote.test" and not self.authed and not self.SUBMISSION:
            self.answer("RCPT", 550)
            return
        if who == "someone@remote.test":
            # submission: remote mail goes to the relay queue, not a mailbox
            self.rcpt_count += 1
            self.rcpts.append("remote")
            self.answer("RCPT", 250)
            return
        self.rcpt_count += 1
        self.rcpts.append(LOCAL[who])
        self.answer("RCPT", 250)

    def _body(self, draw: st.DataObject) -> list[bytes]:
        lines = draw.draw(st.lists(_LINEGEN, max_size=8), label="lines")
        return body_lines(lines, draw.draw(_DEFECT, label="defect"))

    @precondition(ready)
    @rule(data=st.data())
    def data(self, data: st.DataObject) -> None:
        self.send(b"DATA\r\n")
        self.bdat_failed = False
        if not self.greeted:
            self.answer("DATA", 503)
            return
        if not self.in_mail:
            self.answer("DATA", 503)
            return
        if not self.rcpts:
            self.answer("DATA", 554)
            return
        if self.used_bdat:
            self.answer("DATA", 503)
            return
        self.answer("DATA", 354, enhanced=False)
        lines = self._body(data)
        wire = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
        self.send(wire + b".\r\n")
        code = judge(lines)
        if code == 250:
            self.accept(lines)
        self.answer("end of data", code)
        self.reset()

    @precondition(ready)
    @rule(data=st.data())
    def bdat(self, data: st.DataObject) -> None:
        """A whole message in BDAT chunks (a clean body cut anywhere, a
        broken one in one LAST chunk), or one chunk out of sequence."""
        lines = self._body(data)
        wire = b"".join(x + b"\r\n" for x in lines)
        before = self.chunks or []  # a chunk sent already (bdat_open)
        code = judge(before + lines)
        if code == 250 and lines and lines[-1] and data.draw(st.booleans(), label="no crlf"):
            wire = wire[:-2]  # RFC 3030: the hub adds the final line end
            lines_stored = lines
        else:
            lines_stored = lines
        if code == 250:
            n = data.draw(st.integers(0, 3), label="cuts")
            cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), min_size=n, max_size=n),
                                    label="at"))
        else:
            cuts = []
        pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        empty_last = data.draw(st.booleans(), label="BDAT 0 LAST")
        if empty_last:
            pieces.append(b"")
        if not self.greeted or not self.in_mail or not self.rcpts or (self.chunks is None and (
                self.bdat_failed)):
            # out of sequence: every chunk is read and refused
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                self.send(b"BDAT %d%s\r\n" % (len(piece), b" LAST" if last else b"") + piece)
                if self.bdat_failed:
                    self.discarded()
                else:
                    self.answer("BDAT", 503)
                self.bdat_failed = not last
                if self.closed:
                    return
            return
        self.used_bdat = True
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            self.send(b"BDAT %d%s\r\n" % (len(piece), b" LAST" if last else b"") + piece)
            if not last and code != 250:
                # the broken chunk ends the transaction at once, and the
                # BDAT 0 LAST behind it is discarded (RFC 3030 2)
                self.answer("BDAT broken", code)
                self.reset()
                self.bdat_failed = True
                if self.closed:
                    return
                continue
            if not last:
                # an empty chunk that leaves the message open moves no mail
                self.answer("BDAT chunk", 250, junk=not piece)
                if self.closed:
                    return
                continue
            if self.bdat_failed:
                self.discarded()
                self.bdat_failed = False
                return
            if code == 250:
                self.accept(before + lines_stored)
            self.answer("BDAT LAST", code)
            self.reset()
            return

    @precondition(lambda self: self.ready() and self.chunks is None and self.in_mail
                  and bool(self.rcpts) and not self.used_bdat)
    @rule(text=_TEXT)
    def bdat_open(self, text: bytes) -> None:
        """A chunk that leaves the message open: the next command decides."""
        piece = text + b"\r\n"
        self.send(b"BDAT %d\r\n" % len(piece) + piece)
        self.used_bdat = True
        self.chunks = [text]  # the lines sent so far
        self.answer("BDAT chunk", 250)

    @precondition(lambda self: self.ready() and self.chunks is not None)
    @rule()
    def bdat_broken_chunk(self) -> None:
        """A chunk with a bare LF fails the transaction; the chunks pipelined
        after it are discarded (RFC 3030 2)."""
        piece = b"a\nb\r\n"
        self.send(b"BDAT %d\r\n" % len(piece) + piece + b"BDAT 3\r\nxyzBDAT 2 LAST\r\nzz")
        self.answer("BDAT broken", 550)
        self.reset()
        if self.closed:
            return
        self.discarded()
        if self.closed:
            return
        self.discarded()
        self.bdat_failed = False

    @precondition(ready)
    @rule(length=st.integers(508, 515), bare_lf=st.booleans())
    def long_noop(self, length: int, bare_lf: bool) -> None:
        """RFC 5321 4.5.3.1.4: 512 octets with the CRLF is the limit."""
        self.send(b"NOOP " + b"n" * (length - 7) + (b"\n" if bare_lf else b"\r\n"))
        self.bdat_failed = False
        if length - bare_lf <= 512:
            self.answer("NOOP", 250, junk=True)
            return
        if self.in_mail:
            self.reset()
        self.answer("too long", 500)

    @precondition(ready)
    @rule(arg=st.sampled_from(["", "", " x"]))
    def rset(self, arg: str) -> None:
        self.send(f"RSET{arg}\r\n".encode())
        self.bdat_failed = False
        if arg:
            self.answer("RSET", 501, junk=True)
            return
        self.reset()
        self.answer("RSET", 250, junk=True)

    @precondition(ready)
    @rule(verb=st.sampled_from(["NOOP", "HELP", "VRFY alice", "VRFY nobody", "EXPN postmaster",
                                "VRFY", "NOOP anything", "NOOP \xff\xfe", "HELP \xe9"]))
    def junk_command(self, verb: str) -> None:
        # (latin-1: the last two carry octets that are not UTF-8, which
        # NOOP and HELP ignore, RFC 5321 4.1.1.9, and still count as junk)
        self.send(verb.encode("latin-1") + b"\r\n")
        self.bdat_failed = False
        code = {"NOOP": 250, "HELP": 214, "VRFY alice": 250, "VRFY nobody": 550,
                "EXPN postmaster": 250, "VRFY": 501, "NOOP anything": 250,
                "NOOP \xff\xfe": 250, "HELP \xe9": 214}[verb]
        self.answer(verb, code, junk=True)

    @precondition(ready)
    @rule(arg=st.sampled_from(["", "", " now", "\t", " \x0b"]), data=st.data())
    def starttls(self, arg: str, data: st.DataObject) -> None:
        """RFC 3207: 220, then TLS; the session starts again (EHLO, no
        login, no transaction).  Sent last in its batch and flushed at
        once: what a client pipelines behind it in the same read is thrown
        away (RFC 3207 4.2), which the reads drawn would leave to chance."""
        self.send(f"STARTTLS{arg}\r\n".encode())
        self.bdat_failed = False
        if arg.strip(" \t"):
            self.answer("STARTTLS x", 501)
        elif self.tls:
            self.answer("STARTTLS again", 503)
        else:
            self.answer("STARTTLS", 220)
            self.tls = True
            self.tls_starts += 1
            self.reset()
            self.greeted = self.authed = False
        self.flush(data)

    @precondition(ready)
    @rule(line=st.sampled_from([b"FOO", b"", b"MAIL", b"DATA x", b"TURN", b"TURN \xff",
                                b"\x00NOOP", b"NOOP\x00", b"\xff\xfe", b"  ", b"X" * 600]))
    def garbage(self, line: bytes) -> None:
        self.send(line + b"\r\n")
        if b"\x00" in line:
            self.answer("NUL", 500)
            return
        if line == b"\xff\xfe":
            # a verb that is not UTF-8: no command the hub has
            self.answer("bad UTF-8 verb", 500)
            return
        self.bdat_failed = False
        if line in (b"FOO", b"", b"  "):
            self.answer("unknown", 500)
        elif line == b"X" * 600:
            if self.in_mail:
                self.reset()
            self.answer("too long", 500)
        elif line == b"MAIL":
            self.answer("MAIL", 503 if not self.greeted or self.in_mail
                        else 530 if self.SUBMISSION and not self.authed else 501)
        elif line == b"DATA x":
            # the sequence is judged before the argument
            self.answer("DATA x", 503 if not self.greeted or not self.in_mail
                        else 554 if not self.rcpts else 501)
        else:
            self.answer("TURN", 502)

    @precondition(lambda self: self.ready() and self.SUBMISSION)
    @rule(good=st.booleans(), how=st.sampled_from(["initial", "challenge"]))
    def auth(self, good: bool, how: str) -> None:
        password = "secret" if good else "wrong"
        token = base64.b64encode(f"\0alice@example.org\0{password}".encode())
        if how == "initial":
            self.send(b"AUTH PLAIN " + token + b"\r\n")
        else:
            self.send(b"AUTH PLAIN\r\n" + token + b"\r\n")
        self.bdat_failed = False
        if self.authed:
            self.answer("AUTH", 503)
            if how == "challenge" and not self.closed:
                self.answer("token as command", 500)
            return
        if not self.greeted or self.in_mail:
            self.answer("AUTH", 503)
            if how == "challenge" and not self.closed:
                self.answer("token as command", 500)
            return
        if how == "challenge":
            self.expect.append(Expect("AUTH challenge", 334, enhanced=False))
        if good:
            self.authed = True
            self.answer("AUTH", 235)
            return
        self.auth_failures += 1
        if self.auth_failures >= 3:
            self.expect.append(Expect("AUTH failed", 535))
            self.expect.append(Expect("too many failures", 421))
            self.close()
            return
        self.answer("AUTH", 535)

    @precondition(lambda self: self.ready() and not self.in_mail)
    @rule(data=st.data(), bdat=st.booleans(),
          who=st.lists(st.sampled_from(["alice", "bob", "Alice@Example.ORG", "postmaster",
                                        "nobody", "someone@remote.test"]),
                       min_size=1, max_size=MAX_RECIPIENTS + 1))
    def transaction(self, data: st.DataObject, bdat: bool, who: list[str]) -> None:
        """A whole transaction, pipelined: the commands above in the order
        a client sends them (a random walk seldom gets this far)."""
        if not self.greeted:
            self.hello("EHLO", "client.example")
        if self.SUBMISSION and not self.authed and not self.closed:
            self.auth(True, "initial")
        if not self.closed:
            self.mail("<s@x.test>", data.draw(st.sampled_from(["", "BODY=8BITMIME", "SIZE=10"]),
                                              label="mail param"))
        for w in who:
            if not self.closed:
                self.rcpt(w)
        if not self.closed:
            (self.bdat if bdat else self.data)(data)

    @precondition(lambda self: self.ready() and self.steps > 25)
    @rule(arg=st.sampled_from(["", "", " now"]))
    def quit(self, arg: str) -> None:
        self.send(f"QUIT{arg}\r\n".encode())
        self.bdat_failed = False
        if arg:
            self.answer("QUIT", 501)
            return
        self.answer("QUIT", 221)
        self.close()

    # --- sending and checking ---------------------------------------------------

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        """Send what the rules queued, cut into reads at random places."""
        wire = b"".join(self.pending)
        self.pending.clear()
        if not wire:
            return
        reads = drawn_reads(data, wire)
        # storage that answers later: the adapter pauses and must still
        # answer the pipelined commands in order (RFC 2920)
        holder = self.h.spooler._holder
        holder.hold = data.draw(st.booleans(), label="slow storage")
        for piece in reads:
            if self.t.disconnecting:
                break
            if self.t.producerState == "paused":
                # a paused transport reads nothing: the storage answers first
                self.settle()
            self.p.dataReceived(piece)
            self.h.clock.advance(0)
            if holder.hold and data.draw(st.booleans(), label="stored now"):
                self.h.spooler.release()
                self.h.clock.advance(0)
        holder.hold = False
        self.settle()
        self.check()

    def settle(self) -> None:
        """Let the storage answer and the session catch up."""
        for _ in range(1000):
            self.h.spooler.release()
            self.h.clock.advance(0)
            if not self.h.spooler._holder.held and self.t.producerState != "paused":
                return
        raise AssertionError("the session stays paused")

    def check(self) -> None:
        out = self.t.value()
        self.t.clear()
        replies = self.parse(out)
        got = [(r[0]) for r in replies]
        want = [e.code for e in self.expect]
        assert got == want, (
            f"replies {got} != model {want}: {[e.what for e in self.expect]}\n{out!r}")
        for (code, lines), e in zip(replies, self.expect, strict=True):
            if e.enhanced:
                for text in lines:
                    m = _ENHANCED.match(text)
                    assert m is not None, (e.what, code, lines)
                    assert int(m.group(1)) == code // 100, (e.what, code, lines)
        self.expect.clear()
        # TLS started as often as STARTTLS was answered 220, each time
        # right after that 220 (nothing written behind it in clear text)
        starts = self.t.tls_starts
        assert len(starts) == self.tls_starts, (starts, self.tls_starts)
        assert all(s.endswith(TLS_READY) for s in starts), starts
        assert self.p.engine is None or self.p.engine.session.tls == self.tls
        if self.closed:
            assert self.t.disconnecting, "the model closed, the session did not"
        else:
            assert not self.t.disconnecting, "the session closed, the model did not"

    @staticmethod
    def parse(out: bytes) -> list[tuple[int, list[bytes]]]:
        assert out == b"" or out.endswith(b"\r\n"), out
        replies: list[tuple[int, list[bytes]]] = []
        current: list[bytes] = []
        code = None
        for raw in out.split(b"\r\n")[:-1]:
            m = _LINE.match(raw)
            assert m is not None, f"malformed reply line {raw!r}"
            assert b"\r" not in raw and b"\n" not in raw
            assert len(raw) + 2 <= 512, raw  # RFC 5321 4.5.3.1.5
            c = int(m.group(1))
            assert code is None or c == code, f"code changes inside a reply: {out!r}"
            code = c
            current.append(m.group(3))
            if m.group(2) == b" ":
                replies.append((c, current))
                current, code = [], None
        assert not current, f"unfinished reply {out!r}"
        return replies

    @invariant()
    def nothing_failed(self) -> None:
        assert not self.failures, self.failures

    @invariant()
    def stored_as_acknowledged(self) -> None:
        if self.pending:
            return
        boxes = {"alice@example.org", "bob@example.org", "postmaster@example.org"}
        for box in boxes:
            have = self.h.store.messages(Address(*box.split("@")))
            want = self.stored.get(box, [])
            assert len(have) == len(want), (box, len(have), len(want))
            for message, body in zip(have, want, strict=True):
                # our fields, the empty line that ends them (the bodies
                # sent have no header section), the body exactly
                head, _, rest = message.partition(b"\n\n")
                assert head.startswith(b"Return-Path: <"), message[:80]
                assert b"\nReceived: from " in head, head
                # (a body that starts with an empty line has an empty header
                # section: that line is the one that ends ours)
                want_rest = body[1:] if body.startswith(b"\n") else body
                assert rest == want_rest, (message[-200:], body[-200:])


class SubmissionModel(SMTPModel):
    SUBMISSION = True
    HOST = "127.0.0.1"


TestSMTPModel = SMTPModel.TestCase
TestSMTPModel.settings = settings(max_examples=EXAMPLES, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
TestSubmissionModel = SubmissionModel.TestCase
TestSubmissionModel.settings = settings(max_examples=EXAMPLES, stateful_step_count=40,
                                        deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
