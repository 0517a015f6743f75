"""A model of the relay's SMTP client session against a scripted server.

Hypothesis draws the server: whether it offers PIPELINING and DSN, how
many recipients a transaction may hold, and for every command the client
sends the reply it gets (or a connection lost, or no reply: a timeout on
the ``Clock``).  The start of the session is drawn too (``Opening``): the
greeting (220, 421, 554, a line with no code), EHLO refused (then HELO),
STARTTLS offered and refused, AUTH PLAIN or LOGIN refused at any step for
a smarthost login, and SMTPUTF8 missing for a message whose recipient or
sender has no ASCII form.  The client is the real ``SMTPClientProtocol`` over a
``StringTransport``, as in test_relay_attempt.py's clock tests.  Each
reply the server gives carries a serial number (``#n``), so the outcome
says which reply each recipient's result came from.

What must hold whatever the server says:

* every recipient has exactly one result;
* a recipient is reported delivered only for a 250 to a final "." of a
  transaction in which the server took its RCPT -- and when it got one,
  it is reported delivered and its RCPT never goes again in the session;
* a recipient's result is a reply about it (its RCPT, its transaction's
  MAIL, DATA or ".", the RSET before it) or about the session (a 421, a
  530, the greeting, EHLO, HELO, STARTTLS, AUTH); a bounce only for a
  refusal of it or its message (a permanent session error only from the
  session's start; the hub's own ``5.6.7`` only for an address that
  needs SMTPUTF8 the server lacks); the failure of an unanswered "."
  only for a recipient its transaction took;
* after a 421 in the message data, read by the client, the refusals to
  RCPT of that transaction stand, each with its own reply;
* a recipient sent on to the next MX host (``untaken_for_now``) is one
  refused for now that the server holds no copy of the message for: not
  delivered, no 250 to a final "." of a transaction that took it, no
  final "." of such a transaction read by the server at all;
* no non-ASCII address to a server that did not offer SMTPUTF8, no
  STARTTLS or AUTH it did not offer;
* the client sends only what the server's state allows: no MAIL in an
  open transaction, no RCPT or DATA without an accepted MAIL (but in a
  pipelined batch, RFC 2920), no DATA with no recipient taken (idem),
  nothing after QUIT, nothing but QUIT once a 421 is read, nothing once
  it closed the connection;
* at most ``MAX_TRANSACTIONS`` transactions (and one MAIL again without
  the DSN parameters);
* the session ends (closed, its outcome told) and leaves no timer.
"""

from __future__ import annotations

import dataclasses
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from tests.relay_fakes import FakeNetwork, FakeResolver, FakeTLS
from txmailhub.address import Address, ascii_form
from txmailhub.config import load_text
from txmailhub.envelope import DSNRequest, Envelope, RecipientDSN
from txmailhub.relay.attempt import DeliveryAgent, SMTPClientProtocol
from txmailhub.relay.mx import MXResolver
from txmailhub.relay.record import QueueEntry
from txmailhub.smtp.client import MAX_TRANSACTIONS, ClientSession
from txmailhub.smtp.reply import Reply

ALICE = Address("alice", "example.org")
LOSE = "lost"  # the server drops the connection instead of replying
HANG = "hang"  # the server never replies again (the client's timeout)

# weighted by repetition: the replies that lead on come more often, so
# that drawn sessions reach later transactions
MAIL_REPLIES = ["250 2.1.0 ok"] * 5 + [
    "451 4.3.0 later", "550 5.7.1 no", "501 5.5.4 bad ENVID", "421 4.3.2 closing", LOSE, HANG]
RCPT_REPLIES = ["250 2.1.5 ok"] * 4 + ["251 2.1.5 forwarded"] + [
    "452 4.5.3 too many recipients"] * 3 + ["501 5.5.4 bad NOTIFY"] * 3 + [
    "450 4.2.0 busy", "550 5.1.1 unknown", "552 5.3.4 too big for this one",
    "530 5.7.0 authentication required", "421 4.3.2 closing", LOSE, HANG]
DATA_REPLIES = ["354 go ahead"] * 5 + [
    "451 4.3.0 later", "554 5.5.1 no", "530 5.7.0 authentication required",
    "421 4.3.2 closing", LOSE, HANG]
DOT_REPLIES = ["250 2.0.0 queued"] * 5 + [
    "451 4.3.0 later", "554 5.6.0 rejected", "421 4.3.2 closing", LOSE, HANG]
RSET_REPLIES = ["250 2.0.0 ok"] * 4 + ["500 5.5.1 no RSET", "421 4.3.2 closing", LOSE, HANG]
QUIT_REPLIES = ["221 2.0.0 bye"] * 3 + [LOSE, HANG]
# the start of a session (``Opening``): the greeting, EHLO refused (then
# HELO), STARTTLS refused, the smarthost login's steps
GREETINGS = ["220 mx.model.test ESMTP"] * 3 + [
    "421 4.3.2 not now", "554 5.7.1 go away", "garbage without a code"]
EHLO_REFUSALS = ["500 5.5.1 what?", "502 5.5.2 no EHLO", "550 5.7.1 no",
                 "554 5.7.1 listed", "521 5.3.2 no mail here", "451 4.3.0 later",
                 "421 4.3.2 closing"]
HELO_REPLIES = ["250 mx.model.test"] * 3 + [
    "503 5.5.1 out of sequence", "554 5.7.1 no", "421 4.3.2 closing"]
STARTTLS_REFUSALS = ["454 4.7.0 TLS not available", "501 5.5.4 syntax", "554 5.7.0 no TLS",
                     "421 4.3.2 closing"]
AUTH_STEPS = ["334 "] * 3 + ["535 5.7.8 bad credentials", "454 4.7.0 try later",
                             "504 5.5.4 no such mechanism", "421 4.3.2 closing"]
AUTH_ENDS = ["235 2.7.0 ok"] * 4 + ["535 5.7.8 bad credentials", "454 4.7.0 try later",
                                    "334 more?", "421 4.3.2 closing"]
#: replies about the session, not a command of a transaction
SESSION_VERBS = ("greeting", "EHLO", "HELO", "STARTTLS", "AUTH")

_RCPT = re.compile(rb"RCPT TO:<([^>]*)>(.*)\Z")
_SERIAL = re.compile(r"#(\d+)")


@dataclass
class Served:
    """A reply the server gave: to what, in which transaction, about whom."""

    verb: str
    code: int
    tx: int
    about: str | None = None  # the RCPT's address


@dataclass
class Opening:
    """How the server starts a session: its greeting, its reply to EHLO
    (``None``: 250 with its extensions) and then to HELO, whether it
    offers STARTTLS (and refuses it: no TLS in the model), AUTH (``None``,
    ``"PLAIN"`` or ``"LOGIN"``) and SMTPUTF8."""

    greeting: str = GREETINGS[0]
    ehlo: str | None = None
    starttls: bool = False
    auth: str | None = None
    smtputf8: bool = False


@dataclass
class Server:
    """An SMTP server whose every reply is drawn; it records what the
    client did that its state did not allow (``faults``)."""

    data: st.DataObject
    pipelining: bool
    dsn: bool
    limit: int  # recipients a transaction takes before 452 4.5.3
    endings: bool  # whether a reply may end the session (421, lost, none)
    plain: bool  # MAIL, DATA and RCPT (up to ``limit``) are always taken
    eight_bit_mime: bool
    out: list[object] = field(default_factory=list)  # bytes, or LOSE
    faults: list[str] = field(default_factory=list)
    served: dict[int, Served] = field(default_factory=dict)
    #: the 250s to a final "." (by serial), with the recipients they took
    dot_taken: dict[int, list[str]] = field(default_factory=dict)
    #: the recipients of those of them the client read
    delivered: set[str] = field(default_factory=set)
    settled: set[str] = field(default_factory=set)  # taken, or refused for good
    mails: int = 0
    log: list[bytes] = field(default_factory=list)  # the session, for a failure's report
    tx: int = 0
    buf: bytes = b""
    open: bool = False
    accepted: list[str] = field(default_factory=list)
    #: recipients whose message text went (the server read the final "."
    #: of a transaction that took them): never again in the attempt
    message_went: set[str] = field(default_factory=set)
    in_data: bool = False
    text_asked: set[int] = field(default_factory=set)  # 354s to DATA with recipients taken
    text_went: bool = False  # the client read one of them
    quit: bool = False
    gone: bool = False  # closed, hung, or said 421: reads nothing more
    opening: Opening = field(default_factory=Opening)
    helo: bool = False  # greeted with HELO: no extensions
    mid_data_421: int | None = None  # the serial of a 421 in the message data
    auth_step: str | None = None  # the SASL step the next line answers

    def greet(self) -> None:
        line = self.opening.greeting
        if not line[:3].isdigit():
            self.out.append(line.encode() + b"\r\n")
            self.gone = True
            self.out.append(LOSE)
            return
        if self._reply(line, "greeting") == 421:
            self.gone = True

    def _reply(self, line: str, verb: str, about: str | None = None) -> int:
        serial = self._reply_serial(line, verb, about)
        return self.served[serial].code

    def _reply_serial(self, line: str, verb: str, about: str | None = None) -> int:
        serial = len(self.served) + 1
        code = int(line[:3])
        self.served[serial] = Served(verb, code, self.tx, about)
        self.out.append(f"{line} #{serial}\r\n".encode())
        return serial

    def _draw(self, verb: str, choices: list[str], about: str | None = None) -> int | None:
        """Draw and give the reply to ``verb``; ``None`` when there is none
        (lost, hung); after a 421 the server reads nothing more either."""
        ending = [c for c in choices if c in (LOSE, HANG) or c.startswith("421")]
        if not self.endings or self.data.draw(st.integers(0, 11),
                                              label=f"{verb} ends the session") > 0:
            choices = [c for c in choices if c not in ending] or choices
        else:
            choices = ending or choices
        line = self.data.draw(st.sampled_from(choices), label=verb)
        if line in (LOSE, HANG):
            self.gone = True
            if line == LOSE:
                self.out.append(LOSE)
            return None
        code = self._reply(line, verb, about)
        if code == 421:
            self.gone = True
            if self.data.draw(st.booleans(), label="close after 421"):
                self.out.append(LOSE)
        return code

    def feed(self, data: bytes) -> None:
        if self.quit and data:
            self.faults.append(f"sent after QUIT: {data!r}")
        if self.gone:
            return
        self.buf += data
        while not self.gone:
            if self.in_data:
                if self.buf.startswith(b".\r\n"):
                    self.buf = self.buf[3:]
                else:
                    end = self.buf.find(b"\r\n.\r\n")
                    if end < 0:
                        if self.buf and self.endings and self.data.draw(
                                st.integers(0, 5), label="421 in the data") == 0:
                            # a server that gives up in the middle of the data
                            self.mid_data_421 = self._reply_serial(
                                "421 4.4.2 data timeout", ".")
                            self.gone = True
                            self.out.append(LOSE)
                        return
                    self.buf = self.buf[end + 5:]
                self.in_data = False
                self._end_of_data()
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                return
            line, self.buf = self.buf[:nl], self.buf[nl + 2:]
            self._command(line)

    def _ending(self, code: int | None) -> None:
        if code == 421:
            self.gone = True

    def _sasl(self, line: bytes) -> None:
        """A line of the AUTH exchange (the user name, the password, "*")."""
        step, self.auth_step = self.auth_step, None
        if line == b"*":
            self._reply("501 5.7.0 authentication cancelled", "AUTH")
            return
        code = self._draw("AUTH", AUTH_STEPS if step == "user" else AUTH_ENDS)
        if code == 334:
            self.auth_step = "pass" if step == "user" else "again"
        self._ending(code)

    def _command(self, line: bytes) -> None:
        if self.auth_step is not None and not self.quit:
            self._sasl(line)
            return
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
        if self.quit:
            self.faults.append(f"{verb} after QUIT")
            return
        plain = self.helo  # no extensions after HELO
        if verb == "EHLO":
            if self.opening.ehlo is not None:
                self._ending(self._reply(self.opening.ehlo, "EHLO"))
                return
            ext = ["mx.model.test", "ENHANCEDSTATUSCODES"]
            ext += ["PIPELINING"] * self.pipelining + ["DSN"] * self.dsn
            ext += ["8BITMIME"] * self.eight_bit_mime
            ext += ["STARTTLS"] * self.opening.starttls + ["SMTPUTF8"] * self.opening.smtputf8
            if self.opening.auth:
                ext.append("AUTH " + self.opening.auth)
            self.out.append("".join(f"250-{x}\r\n" for x in ext[:-1]).encode()
                            + f"250 {ext[-1]}\r\n".encode())
        elif verb == "HELO":
            if self.opening.ehlo is None:
                self.faults.append("HELO after EHLO was taken")
            code = self._draw("HELO", HELO_REPLIES)
            self.helo = code == 250
            self._ending(code)
        elif verb == "STARTTLS":
            if not self.opening.starttls or plain:
                self.faults.append("STARTTLS not offered")
            self._ending(self._draw("STARTTLS", STARTTLS_REFUSALS))
        elif verb == "AUTH":
            if not self.opening.auth or plain:
                self.faults.append("AUTH not offered")
            mechanism = line.split(b" ")[1].upper().decode() if b" " in line else ""
            if mechanism != self.opening.auth:
                self.faults.append(f"AUTH {mechanism}: not the mechanism offered")
            if mechanism == "LOGIN":
                code = self._draw("AUTH", AUTH_STEPS)
                if code == 334:
                    self.auth_step = "user"
            else:
                code = self._draw("AUTH", AUTH_ENDS)
                if code == 334:
                    self.auth_step = "again"
            self._ending(code)
        elif verb == "MAIL":
            if not (self.opening.smtputf8 and not plain) and not line.isascii():
                self.faults.append(f"non-ASCII MAIL without SMTPUTF8: {line!r}")
            self.mails += 1
            if self.open:
                self.faults.append("MAIL in an open transaction")
                self._reply("503 5.5.1 nested MAIL", verb)
                return
            self.tx += 1
            self.accepted = []
            choices = MAIL_REPLIES if b"ENVID=" in line or b"RET=" in line else [
                r for r in MAIL_REPLIES if not r.startswith("501")]
            if self.plain:
                choices = choices[:1]
            if self._draw(verb, choices) == 250:
                self.open = True
        elif verb == "RCPT":
            m = _RCPT.match(line)
            assert m is not None, line
            who = m.group(1).decode()
            if not (self.opening.smtputf8 and not self.helo) and not who.isascii():
                self.faults.append(f"non-ASCII RCPT {who} without SMTPUTF8")
            if not self.open:
                if not self.pipelining:
                    self.faults.append(f"RCPT {who} without a transaction")
                self._reply("503 5.5.1 need MAIL", verb, who)
                return
            if who in self.settled:
                self.faults.append(f"RCPT {who} again after its final answer")
            if who in self.message_went:
                self.faults.append(f"RCPT {who} again after its message went")
            if len(self.accepted) >= self.limit:
                self._reply("452 4.5.3 too many recipients", verb, who)
                return
            if self.plain:
                self._reply("250 2.1.5 ok", verb, who)
                self.accepted.append(who)
                self.settled.add(who)
                return
            choices = RCPT_REPLIES if b"NOTIFY=" in m.group(2) or b"ORCPT=" in m.group(2) \
                else [r for r in RCPT_REPLIES if not r.startswith("501")]
            code = self._draw(verb, choices, who)
            if code in (250, 251):
                self.accepted.append(who)
                self.settled.add(who)
            elif code in (450, 530, 550, 552):
                self.settled.add(who)
        elif verb == "DATA":
            if not self.open:
                if not self.pipelining:
                    self.faults.append("DATA without a transaction")
                self._reply("503 5.5.1 need MAIL", verb)
                return
            if not self.accepted:
                if not self.pipelining:
                    self.faults.append("DATA with no recipient taken")
                # RFC 2920 3.1 wants a refusal; some servers say 354 anyway
                if self._draw(verb, ["554 5.5.1 no valid recipients", "354 go ahead"]) == 354:
                    self.in_data = True
                return
            if self._draw(verb, DATA_REPLIES[:1] if self.plain else DATA_REPLIES) == 354:
                self.in_data = True
                self.text_asked.add(len(self.served))
        elif verb == "RSET":
            if self._draw(verb, RSET_REPLIES) == 250:
                self.open = False
                self.accepted = []
        elif verb == "QUIT":
            self.quit = True
            self._draw(verb, QUIT_REPLIES)
        else:
            self.faults.append(f"unexpected command {line!r}")

    def _end_of_data(self) -> None:
        self.open = False
        if not self.accepted:
            self._reply("554 5.5.1 no valid recipients", ".")
            return
        if self._draw(".", DOT_REPLIES) == 250:
            self.dot_taken[len(self.served)] = list(self.accepted)
        for who in self.accepted:
            # its message went: whatever the reply, never again here
            self.settled.add(who)
            self.message_went.add(who)


def _opening(data: st.DataObject) -> Opening:
    """A drawn start of a session (``Opening``)."""
    ehlo_refused = data.draw(st.integers(0, 3), label="EHLO refused") == 0
    return Opening(
        greeting=data.draw(st.sampled_from(GREETINGS), label="greeting"),
        ehlo=data.draw(st.sampled_from(EHLO_REFUSALS), label="EHLO") if ehlo_refused
        else None,
        starttls=data.draw(st.booleans(), label="STARTTLS offered"),
        auth=data.draw(st.sampled_from([None, "PLAIN", "LOGIN", "PLAIN", "LOGIN"]),
                       label="AUTH offered"),
        smtputf8=data.draw(st.booleans(), label="SMTPUTF8 offered"))


def _run_session(data: st.DataObject, tmp: Path) -> tuple[Server, ClientSession, object]:
    pipelining = data.draw(st.booleans(), label="PIPELINING")
    dsn = data.draw(st.booleans(), label="DSN")
    many = data.draw(st.booleans(), label="many recipients")
    count = data.draw(st.integers(21, 30) if many else st.integers(1, 6), label="recipients")
    limit = data.draw(st.integers(1, 3) if many else st.integers(1, 8), label="limit")
    recipients = []
    for n in range(count):
        who = Address(f"r{n}", "remote.test")
        with_dsn = data.draw(st.booleans(), label=f"r{n} NOTIFY/ORCPT")
        recipients.append((who, RecipientDSN(notify=("SUCCESS", "FAILURE"),
                                             orcpt=f"rfc822;{who}") if with_dsn else None))
    opening = Opening()
    tls = "none"
    credentials = None
    sender = ALICE
    utf8_flag = False
    if data.draw(st.booleans(), label="the start of the session drawn"):
        opening = _opening(data)
        if data.draw(st.booleans(), label="smarthost login"):
            credentials = ("hub", "secret")
        # with a login, mostly smarthost_tls = "none": the password goes
        # in clear only so, and the model has no TLS to give it
        tls = data.draw(st.sampled_from(["none"] * (6 if credentials else 1)
                                        + ["opportunistic", "require"]), label="TLS")
        # a UTF-8 message: a recipient (or the sender) with no ASCII form,
        # or the client's SMTPUTF8 flag alone
        if data.draw(st.booleans(), label="a UTF-8 recipient"):
            who = Address("j\u00f6rg", "remote.test")
            recipients.insert(data.draw(st.integers(0, len(recipients)), label="where"),
                              (who, None))
        if data.draw(st.integers(0, 3), label="a UTF-8 sender") == 0:
            sender = Address("\u00e5sa", "example.org")
        utf8_flag = data.draw(st.booleans(), label="SMTPUTF8 flag")
    envid = data.draw(st.booleans(), label="ENVID/RET")
    # an 8-bit message goes as its 7-bit copy to a server without 8BITMIME,
    # made again for each transaction
    eight_bit = data.draw(st.booleans(), label="8-bit message")
    eight_bit_mime = data.draw(st.booleans(), label="8BITMIME")
    message = tmp / "m"
    message.write_bytes(b"Subject: model\nContent-Type: text/plain; charset=utf-8\n\n"
                        + ("gr\u00fc\u00dfe" if eight_bit else "hello").encode() + b"\n.dot\n")
    session = ClientSession(helo="hub.test", sender=sender, recipients=recipients, size=90,
                            eight_bit=eight_bit, smtputf8=utf8_flag,
                            dsn=DSNRequest(ret="HDRS", envid="id-1") if envid else None,
                            tls=tls, credentials=credentials)
    clock = Clock()
    transport = StringTransport()
    proto = SMTPClientProtocol(session, clock, str(message), None, str(tmp / "c"))
    endings = data.draw(st.booleans(), label="replies that end the session")
    plain = many and data.draw(st.booleans(), label="RCPT taken up to the limit")
    server = Server(data, pipelining, dsn, limit, endings, plain, eight_bit_mime,
                    opening=opening)
    whole = data.draw(st.booleans(), label="replies in one read")
    cuts = data.draw(st.booleans(), label="replies cut in two reads")
    # the hub's stop (``abort``) at that step of the loop below
    stop_at = data.draw(st.none() | st.integers(0, 80), label="stop")

    proto.makeConnection(transport)
    server.greet()
    seen = 0  # client octets the server has read
    closed_at: int | None = None  # client octets when it closed the connection
    read_421 = False
    after_421 = b""
    lost = False
    for step in range(5000):
        if step == stop_at and not lost:
            server.log.append(b"-- the hub stops")
            proto.abort()
        written = transport.value()
        if read_421:
            after_421 += written[seen:]
        if written[seen:]:
            server.log.append(b"C: " + written[seen:][:300])
        server.feed(written[seen:])
        seen = len(written)
        if transport.disconnecting and closed_at is None:
            closed_at = seen
        if transport.disconnecting and not lost:
            # closed by the client: nothing the server sends now is read
            lost = True
            proto.connectionLost(Failure(ConnectionDone()))
            continue
        if server.out and not lost:
            if server.out[0] is LOSE:
                server.out.clear()
                lost = True
                server.log.append(b"-- the server closes")
                proto.connectionLost(Failure(ConnectionDone()))
                continue
            chunk = []
            while server.out and server.out[0] is not LOSE and (whole or not chunk):
                chunk.append(server.out.pop(0))
            text = b"".join(chunk)
            server.log.append(b"S: " + text)
            cut = data.draw(st.integers(0, len(text) - 1), label="read cut") if cuts else 0
            fed = b""
            for piece in (text[:cut], text[cut:]):
                if piece and not transport.disconnecting:
                    fed += piece
                    proto.dataReceived(piece)
            fed = fed[:fed.rfind(b"\n") + 1]  # the replies read whole
            if re.match(rb"(?m)^421 ", fed) or b"\n421 " in fed:
                read_421 = True
            for serial in map(int, _SERIAL.findall(fed.decode())):
                server.delivered.update(server.dot_taken.get(serial, ()))
                server.text_went |= serial in server.text_asked
            continue
        if lost:
            break
        if transport.producer is not None:
            transport.producer.resumeProducing()
            continue
        calls = clock.getDelayedCalls()
        if not calls:
            server.faults.append("the session waits for nothing and never ends")
            break
        clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    else:
        server.faults.append("the session never ends")
    if closed_at is not None and len(transport.value()) != closed_at:
        server.faults.append(f"sent after closing: {transport.value()[closed_at:]!r}")
    if after_421.replace(b"QUIT\r\n", b"", 1):
        server.faults.append(f"sent after a 421: {after_421!r}")
    if clock.getDelayedCalls():
        server.faults.append(f"timers left: {clock.getDelayedCalls()}")
    if not proto.done.called:
        server.faults.append("no outcome told")
    return server, session, proto.done.result if proto.done.called else None


def _result(outcome, who: Address) -> Reply:
    """The one result ``outcome`` gives ``who``."""
    if outcome.session_error is None:
        [mine] = [r.reply for r in outcome.recipients if r.address == who]
        return mine
    mine = [r.reply for r in outcome.refused if r.address == who]
    assert len(mine) <= 1, (who, outcome.refused)
    return mine[0] if mine else outcome.session_error


def _last_rcpt(server: Server, name: str) -> int:
    """The serial of the server's reply to the last RCPT naming ``name``
    in the session (serials count up in the order the replies went)."""
    return max(serial for serial, s in server.served.items()
               if s.verb == "RCPT" and s.about == name)


def check(server: Server, session: ClientSession, outcome) -> None:
    try:
        _check(server, session, outcome)
    except AssertionError:
        print(b"\n".join(server.log).decode("utf-8", "replace"))
        print(outcome)
        raise


def _check(server: Server, session: ClientSession, outcome) -> None:
    assert not server.faults, server.faults
    assert outcome is not None
    addresses = [a for a, _ in session.recipients]
    if outcome.session_error is None:
        assert [r.address for r in outcome.recipients] == addresses
    else:
        assert not outcome.recipients
        assert len({r.address for r in outcome.refused}) == len(outcome.refused)
        assert {r.address for r in outcome.refused} <= set(addresses)
    assert outcome.transactions <= MAX_TRANSACTIONS
    if server.text_went:
        # the host took a message: those it refused for now wait for the
        # retry, not the next MX host
        assert not (outcome.no_recipient_taken or outcome.data_refused_for_now)
    assert server.mails <= MAX_TRANSACTIONS + 1
    last_tx = max((s.tx for s in server.served.values()), default=0)
    said = server.mid_data_421
    texts = [r.reply.text() for r in (*outcome.recipients, *outcome.refused)]
    if outcome.session_error is not None:
        texts.append(outcome.session_error.text())
    if said is not None and any(f"#{said}" in t for t in texts):
        # the client read the 421 in the data: the replies before it each
        # answered its command, so the refusals to RCPT of that transaction
        # stand, each with its own words (a bounce in the server's)
        tx = server.served[said].tx
        for serial, s in server.served.items():
            if (s.verb == "RCPT" and s.tx == tx and s.about is not None
                    and s.code in (450, 550, 552)):
                [who] = [a for a, _ in session.recipients if str(a) == s.about]
                assert f"#{serial}" in _result(outcome, who).text(), (s.about, serial)
    for who in outcome.unanswered_end:
        # named as maybe delivered: a recipient the last, unanswered
        # transaction took, in a session whose earlier results stand
        assert outcome.session_error is None and outcome.transactions > 1
        assert any(s.verb == "RCPT" and s.about == str(who) and s.tx == last_tx
                   and s.code in (250, 251) for s in server.served.values()), who
    for who in outcome.untaken_for_now:
        # sent on to the next MX host at once: only a recipient refused for
        # now that this host holds no copy for -- never one delivered, nor
        # one a final "." that carried it got a 250 for (read or not), nor
        # one whose message text the server read to its final "."
        name = str(who)
        assert outcome.session_error is None and who in addresses, name
        reply = _result(outcome, who)
        assert reply.is_transient, (name, reply.text())
        assert name not in server.delivered, name
        assert not any(name in taken for taken in server.dot_taken.values()), name
        assert name not in server.message_went, name
    for who in session.rcpt_resent_accepted:
        # logged as relayed only when its RCPT without NOTIFY was accepted
        assert any(s.verb == "RCPT" and s.about == str(who) and s.code in (250, 251)
                   for s in server.served.values()), who
    for who in addresses:
        reply = _result(outcome, who)
        name = str(who)
        serials = [int(s) for s in _SERIAL.findall(reply.text())]
        own_tx = {s.tx for s in server.served.values() if s.verb == "RCPT" and s.about == name}
        for serial in serials:
            served = server.served[serial]
            # a 421 (closing) and a 530 (the session lacks a login or TLS)
            # are about the session, not the command they answer
            assert (served.about == name or served.code in (421, 530)
                    or served.verb in ("MAIL", "RSET", *SESSION_VERBS)
                    or (served.about is None and served.tx in own_tx)), (
                name, reply.text(), served)
        if not serials and "end of data" in reply.text():
            # the failure of a final "." (no reply to it) only for those its
            # transaction took: not for one left waiting for it (a 501 to
            # its NOTIFY), to which the message never went.  Its last RCPT
            # is the one with the highest serial: one refused for NOTIFY
            # goes again at once in the same transaction, so the
            # transaction alone does not tell its two RCPTs apart
            last = server.served[_last_rcpt(server, name)]
            assert last.code in (250, 251), (name, reply.text(), last)
        if name in server.delivered:
            # and never a session error, which sends it to the next host
            assert reply.is_positive and outcome.session_error is None, (name, reply.text())
        if reply.is_permanent and not serials:
            # the hub's own refusal: only an address that needs SMTPUTF8
            # (this one, or the sender) from a server that lacks it
            assert reply.status == "5.6.7", (name, reply.text())
            assert not server.opening.smtputf8 or server.helo, (name, reply.text())
            assert ascii_form(who) is None or ascii_form(session.sender) is None, name
            continue
        if reply.is_permanent and reply is outcome.session_error:
            # the session's failure, not the recipient's (the relay judges
            # a host that will not talk): the server's reply at its start
            [serial] = serials
            assert server.served[serial].verb in SESSION_VERBS, (name, reply.text())
            continue
        if reply.is_permanent:
            # a bounce only for a refusal of this recipient or its message
            assert len(serials) == 1, (name, reply.text())
            served = server.served[serials[0]]
            assert served.code not in (501, 503) and (
                served.about == name or served.verb == "MAIL"
                or (served.verb in ("DATA", ".") and served.tx in own_tx)), (
                name, reply.text(), served)
        if reply.is_positive:
            assert len(serials) == 1, (name, reply.text())
            served = server.served[serials[0]]
            assert served.verb == "." and name in server.dot_taken.get(serials[0], ()), (
                name, reply.text(), served)
            taken = [s for s in server.served.values()
                     if s.verb == "RCPT" and s.about == name and s.tx == served.tx
                     and s.code in (250, 251)]
            assert taken, (name, reply.text())


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_client_session_against_a_drawn_server(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, session, outcome = _run_session(data, Path(tmp))
    if outcome is not None:
        event(f"untaken for now: {bool(outcome.untaken_for_now)}")
    check(server, session, outcome)



class _Script:
    """Stands for Hypothesis's ``data``: each draw's value by its label
    (a list: the values of that label's draws in turn), for a session
    the model must judge right however rarely it is drawn."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = {k: list(v) if isinstance(v, list) else v for k, v in values.items()}

    def draw(self, strategy: object, label: str) -> object:
        value = self.values[label]
        return value.pop(0) if isinstance(value, list) else value


def test_a_rcpt_sent_again_in_its_transaction_is_its_last(tmp_path: Path) -> None:
    # the RCPT refused for NOTIFY went again without it in the same
    # transaction (no PIPELINING) and was taken; the final "." went
    # unanswered.  Its last RCPT is the second, taken: the failure of that
    # "." is its result -- the model once took the first (the 501) for it
    server, session, outcome = _run_session(_Script({
        "PIPELINING": False, "DSN": True, "many recipients": False, "recipients": 1,
        "limit": 8, "r0 NOTIFY/ORCPT": True, "the start of the session drawn": False,
        "ENVID/RET": False, "8-bit message": False, "8BITMIME": True,
        "replies that end the session": True, "replies in one read": True,
        "replies cut in two reads": False, "stop": None, "421 in the data": 1,
        "MAIL ends the session": 1, "MAIL": "250 2.1.0 ok",
        "RCPT ends the session": 1, "RCPT": ["501 5.5.4 bad NOTIFY", "250 2.1.5 ok"],
        "DATA ends the session": 1, "DATA": "354 go ahead",
        ". ends the session": 0, ".": HANG}), tmp_path)
    rcpts = [(serial, s.code) for serial, s in server.served.items() if s.verb == "RCPT"]
    assert [code for _, code in rcpts] == [501, 250]
    assert {s.tx for s in server.served.values() if s.verb == "RCPT"} == {1}
    assert _last_rcpt(server, "r0@remote.test") == rcpts[-1][0]
    assert "end of data" in _result(outcome, session.recipients[0][0]).text()
    check(server, session, outcome)

# --- the same server behind the delivery agent: every connection of an attempt


class _ServerProtocol(Protocol):
    """``Server`` on an iosim connection."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.greet()
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        self.server.log.append(b"C: " + data[:300])
        self.server.feed(data)
        self._flush()

    def _flush(self) -> None:
        while self.server.out:
            item = self.server.out.pop(0)
            if item is LOSE:
                self.server.out.clear()
                self.server.log.append(b"-- the server closes")
                self.transport.loseConnection()
                return
            self.server.log.append(b"S: " + item)
            self.transport.write(item)


class _Network(FakeNetwork):
    """``FakeNetwork`` whose clients note the replies they read (``read``)."""

    def __init__(self, clock: Clock, read) -> None:
        super().__init__(clock)
        self.read = read

    def endpoint(self, host: str, port: int):
        network = self

        class Endpoint:
            def connect(self, factory):
                network.connections.append((host, port))
                server = network.servers[(host, port)]()
                network.server_protocols.append(server)
                client = factory.buildProtocol(None)
                received = client.dataReceived

                def reading(data: bytes) -> None:
                    if not client.transport.disconnecting:
                        network.read(data)
                    received(data)

                client.dataReceived = reading
                network.pumps.append(iosim.connect(
                    server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                    greet=False, clock=network.clock))
                return defer.succeed(client)

        return Endpoint()


ZONE = {"remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
        "mx1.remote.test": {"A": ["192.0.2.1"]}, "mx2.remote.test": {"A": ["192.0.2.2"]}}


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_delivery_agent_against_drawn_servers(data: st.DataObject) -> None:
    """The attempt as the runner sees it: the MX hosts' servers drawn as
    above (a connection each session), the hub's stop at a drawn step.
    Each recipient has one result; it is delivered exactly when a final
    "." of a transaction that took it got a 250 the client read, and a
    recipient whose message text went is never sent again (no second
    copy, RFC 5321 6.1's duplicate); no timer is left."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        shared = Server(data, False, False, 0, False, False, False)
        pipelining = data.draw(st.booleans(), label="PIPELINING")
        limit = data.draw(st.integers(1, 4), label="limit")
        endings = data.draw(st.booleans(), label="replies that end the session")
        openings = data.draw(st.booleans(), label="the starts of the sessions drawn")

        def make() -> _ServerProtocol:
            # each connection's start drawn: a greeting or EHLO refused,
            # STARTTLS refused (the agent's TLS is opportunistic)
            return _ServerProtocol(Server(
                data, pipelining, True, limit, endings, False, True, faults=shared.faults,
                served=shared.served, dot_taken=shared.dot_taken, delivered=shared.delivered,
                message_went=shared.message_went, log=shared.log,
                opening=_opening(data) if openings else Opening()))

        def read(text: bytes) -> None:
            for serial in map(int, _SERIAL.findall(text.decode())):
                shared.delivered.update(shared.dot_taken.get(serial, ()))

        count = data.draw(st.integers(1, 6), label="recipients")
        recipients = tuple(Address(f"r{n}", "remote.test") for n in range(count))
        with_dsn = tuple((who, RecipientDSN(notify=("SUCCESS",), orcpt=f"rfc822;{who}"))
                         for who in recipients
                         if data.draw(st.booleans(), label=f"{who} NOTIFY/ORCPT"))
        body = b"Subject: model\n\nhello\n"
        (tmp / "Q.msg").write_bytes(body)
        entry = dataclasses.replace(
            QueueEntry.new("ABCDEF0123456789", Envelope(
                sender=ALICE, recipients=recipients, recipient_dsn=with_dsn), 0.0),
            message_path=str(tmp / "Q.msg"), size=len(body), crlf_size=len(body) + 3)
        config = tmp / "hub.toml"
        config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n')
        clock = Clock()
        net = _Network(clock, read)
        net.servers[("192.0.2.1", 25)] = net.servers[("192.0.2.2", 25)] = make
        agent = DeliveryAgent(load_text(config.read_text(), str(config)),
                              MXResolver(FakeResolver(ZONE), clock, "mail.example.org",
                                         port=25, rng=random.Random(0)),
                              clock, endpoint=net.endpoint,
                              tls_options=lambda host, verify: FakeTLS(host))
        stop_at = data.draw(st.none() | st.integers(0, 60), label="stop")
        out: list = []
        agent.deliver(entry, "remote.test", list(recipients)).addBoth(out.append)
        for step in range(5000):
            if step == stop_at:
                shared.log.append(b"-- the hub stops")
                agent.abort_all()
            if any([pump.pump(advanceClock=False) for pump in net.pumps]):
                continue
            if out:
                break
            calls = clock.getDelayedCalls()
            assert calls, "the attempt waits for nothing"
            clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
        event(f"connections: {min(len(net.connections), 3)}")
        event(f"delivered: {bool(shared.delivered)}, stop: {stop_at is not None}")
        try:
            assert out and isinstance(out[0], list), out
            results = out[0]
            assert not shared.faults, shared.faults
            for pump in net.pumps:  # the connections a stop cut close a turn later
                pump.flush(advanceClock=False)
            assert not clock.getDelayedCalls(), clock.getDelayedCalls()
            assert sorted(str(r.address) for r in results) == sorted(map(str, recipients))
            for r in results:
                name = str(r.address)
                assert (r.kind == "delivered") == (name in shared.delivered), (name, r)
                if r.kind == "delivered":
                    serials = [int(n) for n in _SERIAL.findall(r.reply.text())]
                    assert len(serials) == 1 and name in shared.dot_taken.get(serials[0], ())
        except AssertionError:
            print(b"\n".join(shared.log).decode("utf-8", "replace"))
            raise
