"""A client may hang up after any command: nothing of its session stays.

The live soak (tests/integration/test_soak.py) sees what is left once the
timeouts have passed; a timer left behind ``connectionLost`` that fires
seconds later, harmlessly, is gone by then.  Here, for SMTP and POP3
scripts cut after each of their commands -- with the login or the store
still pending at the hang-up, or not, and some time passing between
commands -- the clock must hold no timer of the session at once, the
factory no connection, and the mailbox no lock."""

from __future__ import annotations

import base64
import itertools

import pytest
import test_pop3_protocol as pop3_harness
import test_smtp_protocol as smtp_harness
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from txmailhub.smtp.protocol import SMTPFactory


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_GOOD = _b64("\0alice@example.org\0secret")
_BAD = _b64("\0alice@example.org\0wrong")

SMTP_SCRIPTS: dict[str, list[str]] = {
    "data": ["EHLO c\r\n", "MAIL FROM:<a@b.example>\r\n", "RCPT TO:<alice@example.org>\r\n",
             "DATA\r\n", "Subject: x\r\n\r\n", "body\r\n", ".\r\n", "QUIT\r\n"],
    "bdat": ["EHLO c\r\n", "MAIL FROM:<a@b.example>\r\n", "RCPT TO:<alice@example.org>\r\n",
             "BDAT 10\r\n", "0123456789", "BDAT 5 LAST\r\n", "abcde", "QUIT\r\n"],
    "auth": ["EHLO c\r\n", f"AUTH PLAIN {_GOOD}\r\n", "MAIL FROM:<alice@example.org>\r\n",
             "RCPT TO:<bob@example.org>\r\n", "DATA\r\n", "x\r\n.\r\n", "RSET\r\n"],
    "failed auth": ["EHLO c\r\n", f"AUTH PLAIN {_BAD}\r\n", f"AUTH PLAIN {_BAD}\r\n",
                    "NOOP\r\n"],
    "auth in steps": ["EHLO c\r\n", "AUTH LOGIN\r\n", _b64("alice@example.org") + "\r\n",
                      _b64("wrong") + "\r\n", "AUTH PLAIN\r\n", _GOOD + "\r\n", "NOOP\r\n"],
    "pipelined": ["EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n"
                  "DATA\r\nx\r\n.\r\nNOOP\r\n"],
    "junk": ["EHLO c\r\n"] + ["NOOP\r\n", "RSET\r\n", "VRFY alice\r\n", "bogus\r\n"] * 3,
}


def _live(clock) -> list[str]:
    return [getattr(c.func, "__qualname__", repr(c.func))
            for c in clock.getDelayedCalls() if c.active()]


@pytest.mark.parametrize("name", sorted(SMTP_SCRIPTS))
def test_an_smtp_client_gone_after_any_command_leaves_nothing(name: str) -> None:
    script = SMTP_SCRIPTS[name]
    left = []
    for cut, hold, held_login, pause, submission, host in itertools.product(
            range(len(script) + 1), (False, True), (False, True), (0, 0.5, 2),
            (False, True), ("127.0.0.1", "192.0.2.1")):
        h = smtp_harness.Harness(hold=hold, idle_timeout=300)
        portal = None
        if held_login:
            portal = h.components.portal = smtp_harness.HeldPortal(h.components.portal)
        factory = SMTPFactory(h.components, submission=submission)
        peer = IPv4Address("TCP", host, 4321)
        p = factory.buildProtocol(peer)
        p.makeConnection(StringTransport(peerAddress=peer))
        p.engine.session.tls = True  # AUTH off loopback needs it
        for command in script[:cut]:
            p.dataReceived(command.encode())
            h.clock.advance(pause)
        p.connectionLost(None)
        # what was pending at the hang-up answers now, to nobody
        if portal is not None:
            portal.release()
        h.spooler.release()
        h.clock.advance(0)
        state = (_live(h.clock), factory.connections, factory.limits.per_client,
                 factory.limits.sessions)
        if state != ([], 0, {}, set()):
            left.append((cut, hold, held_login, pause, submission, host, state))
    assert left == []


POP3_SCRIPTS: dict[str, list[str]] = {
    "session": ["USER joe\r\n", "PASS joepw\r\n", "STAT\r\n", "LIST\r\n", "RETR 1\r\n",
                "DELE 1\r\n", "UIDL\r\n", "TOP 2 1\r\n", "QUIT\r\n"],
    "failed login": ["USER joe\r\n", "PASS nope\r\n", "USER joe\r\n", "PASS nope\r\n",
                     "NOOP\r\n"],
    "auth plain": ["CAPA\r\n", "AUTH PLAIN\r\n",
                   base64.b64encode(b"\0joe\0joepw").decode() + "\r\n", "LIST\r\n",
                   "RSET\r\n", "QUIT\r\n"],
    "pipelined": ["USER joe\r\nPASS joepw\r\nLIST\r\nRETR 1\r\nRETR 2\r\nDELE 2\r\nQUIT\r\n"],
}


def _answer(checker: pop3_harness.HeldChecker) -> None:
    pending, checker.pending = checker.pending, []
    for credentials, d in pending:
        if credentials.checkPassword(b"joepw"):
            d.callback(b"joe@example.org")
        else:
            d.errback(UnauthorizedLogin())


@pytest.mark.parametrize("name", sorted(POP3_SCRIPTS))
def test_a_pop3_client_gone_after_any_command_leaves_nothing(name: str) -> None:
    script = POP3_SCRIPTS[name]
    left = []
    for cut, held, pause, limit in itertools.product(
            range(len(script) + 1), (False, True), (0, 0.5, 2), (None, 1000)):
        checker = pop3_harness.HeldChecker() if held else None
        env = pop3_harness.Env(checker=checker, idle_timeout=600)
        # the first one larger than the transport takes at once (limit):
        # a RETR cut while it streams
        env.store.add("joe@example.org", b"Subject: a\r\n\r\n" + b"y" * 50_000)
        env.store.add("joe@example.org", b"Subject: b\r\n\r\nshort\r\n")
        proto, _ = env.connect(limit=limit)
        for i, command in enumerate(script[:cut]):
            proto.dataReceived(command.encode())
            env.clock.advance(pause)
            if checker is not None and i < cut - 1:  # the last one's is still pending
                _answer(checker)
        proto.connectionLost(None)
        if checker is not None:
            _answer(checker)  # a login still being checked at the hang-up
        env.clock.advance(0)
        state = (_live(env.clock), env.store.is_locked("joe@example.org"))
        if state != ([], False):
            left.append((cut, held, pause, limit, state))
    assert left == []
