"""A legal server never trips the client's rule on early replies.

The client engine takes a reply that comes before the command it would
answer for a protocol error (``ClientSession._early``).  Here a model of
a legal server answers each command only once it has it -- its choices
drawn: PIPELINING or not, STARTTLS, AUTH PLAIN or LOGIN, refused and
"too many" recipients (more transactions, RSET between them), a refused
MAIL or AUTH= parameter, a RCPT refused for its NOTIFY (sent again), a
refused or accepted empty DATA, multi-line replies, a final "." refused
-- and its bytes reach the client cut at any byte, as late as the draw
makes them (a delayed greeting, replies held back, several together);
it may say 421 and close at any time (RFC 5321 3.8).  The session must
end without a protocol error, with the recipients it records as
delivered exactly those the server took a message for, each once.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txmailhub.address import Address
from txmailhub.envelope import RecipientDSN
from txmailhub.smtp.client import ClientSession, Close, Send, SendBody, StartTLS

RECIPIENTS = [Address(f"r{n}", "remote.test") for n in range(5)]


class LegalServer:
    """Answers each complete command line it was sent, as a server may."""

    def __init__(self, draw) -> None:
        self.draw = draw
        self.out = bytearray()
        self.buf = b""
        self.mode = "cmd"
        self.tls = False
        self.pipelining = draw(st.booleans())
        self.starttls = draw(st.booleans())
        self.auth = draw(st.sampled_from(["", "PLAIN", "LOGIN", "PLAIN LOGIN"]))
        self.dsn = draw(st.booleans())
        self.mail = False
        self.rcpts: list[str] = []
        self.delivered: list[str] = []
        self.closed = False
        self.reply(220, "mx.remote.test ESMTP", "more words")

    def reply(self, code: int, *lines: str) -> None:
        lines = lines or ("ok",)
        if len(lines) > 1 and not self.draw(st.booleans()):
            lines = lines[:1]  # one line or several
        for n, line in enumerate(lines):
            sep = " " if n == len(lines) - 1 else "-"
            self.out += f"{code}{sep}{line}\r\n".encode()

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n" in self.buf and not self.closed:
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.line(line.decode("utf-8"))

    def line(self, line: str) -> None:
        draw = self.draw
        if self.mode == "data":
            if line == ".":
                self.mode = "cmd"
                if self.rcpts and draw(st.sampled_from(range(4))):
                    self.delivered += self.rcpts
                    self.reply(250, "2.0.0 queued", "as 1")
                else:
                    self.reply(draw(st.sampled_from([451, 554])), "not taken")
                self.mail, self.rcpts = False, []
            return
        if self.mode in ("login-user", "login-pass"):
            if line == "*":
                self.mode = "cmd"
                self.reply(501, "5.7.0 cancelled")
            elif self.mode == "login-user":
                self.mode = "login-pass"
                self.reply(334, "UGFzc3dvcmQ6")
            else:
                self.mode = "cmd"
                self.reply(draw(st.sampled_from([235, 235, 535])), "done")
            return
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO":
            features = ["SIZE 100000", "ENHANCEDSTATUSCODES"]
            if self.dsn:
                features.append("DSN")
            if self.pipelining:
                features.append("PIPELINING")
            if self.starttls and not self.tls:
                features.append("STARTTLS")
            if self.auth:
                features.append("AUTH " + self.auth)
            self.mail, self.rcpts = False, []
            self.out += b"".join(  # an EHLO reply keeps its lines
                f"250{'-' if n < len(features) else ' '}{line}\r\n".encode()
                for n, line in enumerate(["mx.remote.test", *features]))
        elif verb == "STARTTLS":
            self.reply(220, "2.0.0 go ahead")
            self.tls = True
            self.mail, self.rcpts = False, []
        elif verb == "AUTH":
            if line.upper().startswith("AUTH LOGIN"):
                self.mode = "login-user"
                self.reply(334, "VXNlcm5hbWU6")
            else:
                self.reply(draw(st.sampled_from([235, 235, 535, 454])), "done")
        elif verb == "MAIL":
            if " AUTH=" in line and draw(st.sampled_from(range(4))) == 0:
                self.reply(555, "5.5.4 AUTH= not recognized")
            elif draw(st.sampled_from(range(6))) == 0:
                self.reply(draw(st.sampled_from([451, 550])), "sender refused")
            else:
                self.mail = True
                self.reply(250, "2.1.0 ok")
        elif verb == "RCPT":
            if not self.mail:
                self.reply(503, "5.5.1 need MAIL")
                return
            if " NOTIFY=" in line and draw(st.sampled_from(range(3))) == 0:
                self.reply(501, "5.5.4 Bad NOTIFY parameter syntax")
                return
            code = draw(st.sampled_from([250, 250, 452, 452, 550, 451]))
            if code == 250:
                self.rcpts.append(line.split("<", 1)[1].split(">", 1)[0])
                self.reply(250, "2.1.5 ok")
            elif code == 452:
                self.reply(452, "4.5.3 too many recipients")
            else:
                self.reply(code, "recipient refused")
        elif verb == "DATA":
            if not self.mail:
                self.reply(503, "5.5.1 need MAIL")
            elif self.rcpts or draw(st.booleans()):
                # RFC 2920 3.1 wants a 554 with no recipient; some say 354
                self.mode = "data"
                self.reply(354, "go ahead")
            else:
                self.reply(554, "5.5.1 no valid recipients")
        elif verb == "RSET":
            self.mail, self.rcpts = False, []
            self.reply(250, "2.0.0 ok")
        elif verb == "QUIT":
            self.reply(221, "2.0.0 bye")
            self.closed = True
        else:
            self.reply(500, "5.5.2 what")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_legal_server_is_never_taken_for_one_that_replies_early(data):
    draw = data.draw
    recipients = RECIPIENTS[:draw(st.integers(1, len(RECIPIENTS)))]
    login = draw(st.booleans())
    session = ClientSession(
        helo="hub.test", sender=Address("alice", "example.org"),
        recipients=[(a, draw(st.sampled_from([None, RecipientDSN(notify=("SUCCESS",))])))
                    for a in recipients], size=100,
        tls=draw(st.sampled_from(["none", "opportunistic"])),
        credentials=("user", "secret") if login else None)
    server = LegalServer(draw)

    def run(actions) -> bool:
        for action in actions:
            if isinstance(action, Send):
                server.feed(action.data)
            elif isinstance(action, StartTLS):
                assert server.tls
                if run(session.tls_started()):
                    return True
            elif isinstance(action, SendBody):
                server.feed(b"message text\r\n.\r\n")
                if run(session.body_sent()):
                    return True
            elif isinstance(action, Close):
                return True
        return False

    closed = False
    shutdown = draw(st.integers(0, 40)) if draw(st.booleans()) else None
    for step in range(2000):
        if not server.closed and server.mode == "cmd" and step == shutdown:
            # RFC 5321 3.8: a server shutting down says 421 whenever it
            # likes, "asynchronously from command receipt", and closes
            server.reply(421, "4.3.2 shutting down", "bye")
            server.closed = True
        if not server.out and server.closed:
            session.connection_lost()
            closed = True
            break
        assert server.out, "the client waits for a reply the server does not owe"
        # the server's bytes so far, or any first part of them: they may
        # wait in the network, and arrive cut anywhere
        n = draw(st.integers(1, len(server.out)))
        chunk = bytes(server.out[:n])
        del server.out[:n]
        if run(session.receive(chunk)):
            closed = True
            break
    assert closed
    assert session.protocol_error is None, session.protocol_error
    out = session.outcome
    assert out is not None
    delivered = [r.address for r in out.recipients if r.kind == "delivered"]
    assert sorted(map(str, delivered)) == sorted(server.delivered)
    assert len(set(server.delivered)) == len(server.delivered)  # none sent twice


def test_the_model_reaches_the_paths_it_is_for():
    # a fixed walk through the model: pipelined, STARTTLS, AUTH LOGIN, a
    # "too many" recipient in a second transaction, replies one byte at a time
    session = ClientSession(helo="hub.test", sender=Address("alice", "example.org"),
                            recipients=[(RECIPIENTS[0], None), (RECIPIENTS[1], None)],
                            size=100, tls="opportunistic", credentials=("user", "secret"))
    sent = []
    replies = [b"220 hi\r\n",
               b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n", b"220 go\r\n",
               b"250-mx\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n",
               b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"235 ok\r\n",
               b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n354 go\r\n", b"250 queued\r\n",
               b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 queued\r\n", b"221 bye\r\n"]
    for reply in replies:
        actions = []
        for byte in reply:
            actions += session.receive(bytes([byte]))
        for action in actions:
            if isinstance(action, StartTLS):
                actions += session.tls_started()
            elif isinstance(action, SendBody):
                actions += session.body_sent()
            elif isinstance(action, Send):
                sent.append(action.data)
    assert session.protocol_error is None
    assert [r.kind for r in session.outcome.recipients] == ["delivered", "delivered"]
    assert base64.b64encode(b"secret") + b"\r\n" in sent
    assert sent[-1] == b"QUIT\r\n"
