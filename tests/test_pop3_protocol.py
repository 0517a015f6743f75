"""The Twisted POP3 adapter over StringTransport and a MemoryReactorClock."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
from collections.abc import Iterator
from unittest import mock

import pytest
from conftest import stalled_turn
from cred_fakes import ClientRecordingChecker, checker_without_apop_secret
from hypothesis import given, settings
from hypothesis import strategies as st
from stepped_reactor import (
    client_reads,
    close_reactor,
    loopback_session,
    new_reactor,
    reads_to_the_end,
    sends_on_then_half_closes,
    step_until_closed,
    tls_loopback,
    tls_reads,
    tls_reads_all,
    tls_send,
    tls_sends_on,
)
from tls_loopback import StartTLSSocket, TLSClient
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import directlyProvides, implementer

from txmailhub import linger
from txmailhub.address import Address
from txmailhub.components import Components
from txmailhub.config import AliasesSettings, HubSettings, POP3Settings, Settings, UsersSettings
from txmailhub.downgrade import downgrade_header, header_end
from txmailhub.interfaces import IMailbox
from txmailhub.limits import REFUSALS_WAITING, _name_tag
from txmailhub.pop3 import protocol as pop3_protocol
from txmailhub.pop3 import replies as R
from txmailhub.pop3.protocol import (
    CHUNK_SIZE,
    CLOSE_GRACE,
    COMMANDS_PER_TURN,
    INPUT_LIMIT,
    APOPCredentials,
    POP3Factory,
)
from txmailhub.pop3.stream import MessageEncoder, encode_whole
from txmailhub.service import tls_options
from txmailhub.store.maildir import crlf_size_of
from txmailhub.testing import MemoryMailboxStore

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
REMOTE = IPv4Address("TCP", "192.0.2.7", 40000)
SEED_MESSAGE = (
    b"Return-Path: <hollingd>\n"
    b"Date: Mon, 20 Mar 2000 13:49:54 -0500\n"
    b"From: Dave Hollinger <hollingd@monte.cs.rpi.edu>\n"
    b"To: joe@monte.cs.rpi.edu\n"
    b"\n"
    b"blah\n"
)


@implementer(IRealm)
class Realm:
    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatar_id, mind, *interfaces):
        assert IMailbox in interfaces
        name = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        local, _, domain = name.rpartition("@")
        d = self.store.open_mailbox(Address(local, domain) if local else
                                    Address(name, "example.org"))
        return d.addCallback(lambda box: (IMailbox, box, box.close))


class HeldChecker:
    """A checker whose answers the test fires by hand."""

    credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

    def __init__(self):
        self.pending: list[tuple[object, defer.Deferred]] = []

    def requestAvatarId(self, credentials):
        d = defer.Deferred()
        self.pending.append((credentials, d))
        return d


class Transport(StringTransport):
    """StringTransport plus the bits of a TCP transport the adapter uses."""

    def __init__(self, peer=LOOPBACK, limit: int | None = None):
        super().__init__(peerAddress=peer)
        self.nodelay = None
        self.writes: list[bytes] = []
        self.limit = limit  # pause the producer above this many buffered octets
        self.tls_started = None

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def write(self, data):
        self.writes.append(data)
        super().write(data)
        if self.limit is not None and self.producer is not None and len(self.io.getvalue()) > \
                self.limit:
            self.producer.pauseProducing()

    def startTLS(self, ctx):
        self.tls_started = ctx
        directlyProvides(self, ISSLTransport)


def make_settings(**pop3) -> Settings:
    pop3.setdefault("auth_failure_delay", 1.0)
    return Settings(
        path="/nonexistent/mailhub.toml",
        hub=HubSettings("mail.example.org", "/nonexistent", ("example.org",)),
        users=UsersSettings("/nonexistent/users"),
        aliases=AliasesSettings(None),
        tls=None,
        pop3=POP3Settings(**pop3),
    )


class Env:
    def __init__(self, *, checker=None, tls=None, **pop3):
        self.clock = MemoryReactorClock()
        self.store = MemoryMailboxStore()
        # keyed by address: the protocol qualifies a bare login name (as
        # SMTP AUTH does) before the portal sees it
        db = InMemoryUsernamePasswordDatabaseDontUse(
            **{"joe@example.org": b"joepw", "ann@example.org": b"annpw"})
        self.checker = checker or db
        self.portal = Portal(Realm(self.store), [self.checker])
        self.components = Components(
            settings=make_settings(**pop3), reactor=self.clock, router=None, store=self.store,
            spooler=None, portal=self.portal, tls=tls,
        )

    def connect(self, peer=LOOPBACK, implicit_tls=False, limit=None):
        proto = POP3Factory(self.components, implicit_tls=implicit_tls).buildProtocol(peer)
        transport = Transport(peer, limit)
        proto.makeConnection(transport)
        return proto, transport


def lines_of(transport) -> list[bytes]:
    return transport.value().split(b"\r\n")


def talk(proto, transport, data: bytes) -> bytes:
    transport.clear()
    transport.writes.clear()
    proto.dataReceived(data)
    return transport.value()


def login(env, user=b"joe", pw=b"joepw", **kw):
    proto, t = env.connect(**kw)
    assert talk(proto, t, b"USER " + user + b"\r\n").startswith(b"+OK")
    assert talk(proto, t, b"PASS " + pw + b"\r\n").startswith(b"+OK Logged in")
    return proto, t


# -- connection basics -------------------------------------------------------


def test_greeting_nodelay_and_producer():
    env = Env()
    proto, t = env.connect()
    assert re.fullmatch(
        rb"\+OK POP3 server mail\.example\.org ready "
        rb"<\d+\.\d+\.[0-9a-f]{16}@mail\.example\.org>\r\n",
        t.value(),
    )
    assert t.nodelay is True
    assert t.producer is proto and t.streaming is True


def test_seed_exchange_verbatim():
    env = Env()
    env.store.add("joe@example.org", SEED_MESSAGE)
    proto, t = env.connect()
    assert talk(proto, t, b"user joe\r\n").startswith(b"+OK")
    assert talk(proto, t, b"pass joepw\r\n").startswith(b"+OK")
    size = crlf_size_of(SEED_MESSAGE)
    assert talk(proto, t, b"stat\r\n") == f"+OK 1 {size}\r\n".encode()
    assert talk(proto, t, b"list\r\n").endswith(f"\r\n1 {size}\r\n.\r\n".encode())
    out = talk(proto, t, b"retr 1\r\n")
    body = SEED_MESSAGE.replace(b"\n", b"\r\n")
    assert out == f"+OK {size} octets\r\n".encode() + body + b".\r\n"
    assert len(body) == size
    assert len(t.writes) == 1  # status, body and terminator in one write


def test_a_session_keeps_its_state_in_slots():
    # POP3Protocol declares __slots__ for speed (see the class): a name set
    # outside them goes to the instance dict, and past 30 names every
    # attribute access of the session gets slower.  Add new attributes to
    # __slots__.
    env = Env()
    env.store.add("joe@example.org", b"Subject: a\n\nsmall\n")
    big = b"Subject: b\n\n" + b"".join(b"line %d\n" % i for i in range(40000))
    env.store.add("joe@example.org", big)
    proto, t = env.connect(limit=CHUNK_SIZE)
    talk(proto, t, b"USER joe\r\nPASS wrong\r\n")
    env.clock.advance(60)  # a failed login is answered after a delay
    assert t.value().endswith(b"\r\n-ERR [AUTH] Authentication failed\r\n")
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n").startswith(b"+OK")
    assert talk(proto, t, b"LIST\r\nUIDL\r\nRETR 1\r\nTOP 2 1\r\n").count(b"\r\n.\r\n") == 4
    t.clear()
    proto.dataReceived(b"RETR 2\r\nDELE 1\r\n")
    while proto._write_paused or proto._stream is not None:
        t.clear()
        proto.resumeProducing()
    proto.dataReceived(b"QUIT\r\n")
    env.clock.advance(60)
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1  # DELE 1 done
    assert vars(proto) == {}


def test_small_retr_is_one_write_and_marks_seen_top_does_not():
    env = Env()
    env.store.add("joe@example.org", b"Subject: a\n\n.dot\nline2\n")
    env.store.add("joe@example.org", b"Subject: b\n\nx\n")
    proto, t = login(env)
    box = proto.mailbox
    assert talk(proto, t, b"TOP 1 1\r\n") == (
        R.TOP_FOLLOWS.to_bytes() + b"Subject: a\r\n\r\n..dot\r\n.\r\n"
    )
    assert talk(proto, t, b"RETR 1\r\n").endswith(b"..dot\r\nline2\r\n.\r\n")
    assert len(t.writes) == 1
    # flagged at the session's end (the UPDATE state), not at the RETR
    assert not box.list_messages()[0].seen
    talk(proto, t, b"TOP 2 0\r\nQUIT\r\n")
    assert [m.seen for m in box.list_messages()] == [True, False]


# -- pipelining ------------------------------------------------------------


def test_pipelined_batch_waits_for_the_login_and_answers_in_order():
    checker = HeldChecker()
    env = Env(checker=checker)
    env.store.add("joe@example.org", b"one\n")
    env.store.add("joe@example.org", b"two\n")
    proto, t = env.connect()
    t.clear()
    proto.dataReceived(b"CAPA\r\nUSER joe\r\nPASS joepw\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n")
    before = t.value()
    assert before.endswith(b"+OK Send your password\r\n")
    # still reading while the login is pending (a hang-up must be seen), the
    # commands after PASS held until its answer
    assert t.producerState == "producing"
    creds, d = checker.pending.pop()
    assert creds.checkPassword(b"joepw")
    d.callback(b"joe")
    rest = t.value()[len(before):]
    assert rest == (
        R.logged_in(2, 10).to_bytes()
        + b"+OK 2 10\r\n"
        + b"+OK 5 octets\r\ntwo\r\n.\r\n"
        + R.deleted(1).to_bytes()
        + R.bye_updated(1).to_bytes()
    )
    assert t.disconnecting
    assert env.store.messages("joe@example.org") == [b"two\n"]
    assert not env.store.is_locked("joe@example.org")


def test_the_portal_gets_the_address_as_from_smtp_auth():
    # an application's own checker sees one form for both protocols
    checker = HeldChecker()
    env = Env(checker=checker)
    proto, _ = env.connect()
    for typed, seen in ((b"joe", b"joe@example.org"), (b"Ann@Example.ORG", b"Ann@example.org")):
        proto.dataReceived(b"USER " + typed + b"\r\nPASS pw\r\n")
        creds, d = checker.pending.pop()
        assert creds.username == seen
        d.errback(UnauthorizedLogin())
        env.clock.advance(10)


def test_a_client_that_hangs_up_during_its_login_frees_its_slot_at_once():
    # A guesser that hangs up right after each PASS: its slot (and the
    # connection) must go with it, not after the check and the failure's
    # delay.  The check still counts when it ends.
    checker = HeldChecker()
    env = Env(checker=checker)
    proto, t = env.connect()
    proto.dataReceived(b"USER joe\r\nPASS guess\r\n")
    assert t.producerState == "producing"  # the hang-up can be seen
    assert proto in proto.factory.sessions
    t.clear()
    proto.connectionLost(None)  # what reading the EOF brings
    assert proto not in proto.factory.sessions
    _creds, d = checker.pending.pop()
    d.errback(UnauthorizedLogin())  # the check ends later: nothing is sent
    assert t.value() == b"" and not env.clock.getDelayedCalls()


def test_write_backpressure_stops_command_processing():
    env = Env()
    env.store.add("joe@example.org", b"x" * 50000 + b"\n")
    proto, t = login(env)
    t.limit = 60000
    t.clear()
    proto.dataReceived(b"RETR 1\r\nRETR 1\r\nRETR 1\r\nNOOP\r\n")
    first = t.value()
    assert first.count(b"+OK 50002 octets") == 2  # the second write crossed the limit
    # still reading (a TLS handshake may need it), but answering nothing...
    assert t.producerState == "producing"
    proto.dataReceived(b"NOOP\r\n" * 1000)
    assert t.value() == first
    # ...until too much input waits: then reading stops as well
    assert t.producerState == "producing"
    proto.dataReceived(b"NOOP\r\n" * 2000)
    assert t.producerState == "paused"  # 3000 lines, 18000 octets > INPUT_LIMIT
    assert t.value() == first
    t.clear()
    t.limit = None
    proto.resumeProducing()
    env.clock.advance(0)  # a long batch: COMMANDS_PER_TURN a reactor turn
    assert t.value().count(b"+OK 50002 octets") == 1
    assert t.value().endswith(b"x\r\n.\r\n" + b"+OK\r\n" * 3001)  # the rest, in order
    assert t.producerState == "producing"


def test_paused_during_greeting_keeps_reading():
    """A TLS layer pauses its producer until its handshake is done."""
    env = Env()
    proto = POP3Factory(env.components).buildProtocol(LOOPBACK)
    t = Transport(LOOPBACK, limit=0)
    proto.makeConnection(t)
    assert proto._write_paused and t.producerState == "producing"
    proto.dataReceived(b"CAPA\r\n")
    assert t.producerState == "producing"
    t.limit = None
    proto.resumeProducing()
    assert t.value().endswith(b"IMPLEMENTATION txmailhub\r\n.\r\n")


# -- streaming -------------------------------------------------------------


def test_large_retr_streams_with_backpressure():
    env = Env()
    msg = b"".join(b".line %d of the message\n" % i for i in range(40000))  # ~1 MiB
    env.store.add("joe@example.org", msg)
    proto, t = login(env, limit=CHUNK_SIZE)
    t.clear()
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    received = bytearray()
    rounds = 0
    while proto._write_paused or proto._stream is not None:
        assert len(t.value()) <= 3 * CHUNK_SIZE  # bounded, never the whole message
        received += t.value()
        t.clear()
        proto.resumeProducing()
        rounds += 1
    received += t.value()
    assert rounds > 10
    size = crlf_size_of(msg)
    expected = f"+OK {size} octets\r\n".encode() + encode_whole(msg) + b"+OK\r\n"
    assert bytes(received) == expected
    box = proto.mailbox
    assert not box.list_messages()[0].seen  # flagged at the session's end
    proto.dataReceived(b"QUIT\r\n")
    assert box.list_messages()[0].seen


def test_large_top_stops_reading_early():
    env = Env()
    msg = b"Subject: big\n\n" + b"body line\n" * 100000
    env.store.add("joe@example.org", msg)
    proto, t = login(env)
    out = talk(proto, t, b"TOP 1 2\r\n")
    assert out == R.TOP_FOLLOWS.to_bytes() + b"Subject: big\r\n\r\nbody line\r\nbody line\r\n.\r\n"
    assert proto._stream is None


def test_connection_lost_mid_stream_closes_the_file_and_the_mailbox():
    env = Env()
    env.store.add("joe@example.org", b"y" * (CHUNK_SIZE * 4))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"DELE 1\r\n")
    env.store.add("joe@example.org", b"z" * (CHUNK_SIZE * 4))  # not in this session
    t.clear()
    proto.dataReceived(b"RSET\r\nRETR 1\r\n")
    stream = proto._stream
    assert stream is not None
    proto.connectionLost(None)
    assert stream.file.closed
    assert not env.store.is_locked("joe@example.org")
    assert len(env.store.messages("joe@example.org")) == 2  # nothing deleted


# -- auth ------------------------------------------------------------------


def test_bad_password_delay_grows_then_closes():
    env = Env(max_auth_failures=2, auth_failure_delay=3.0)
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS wrong\r\nNOOP\r\n") == b""
    env.clock.advance(2.9)
    assert t.value() == b""
    env.clock.advance(0.1)
    assert t.value() == R.AUTH_FAILED.to_bytes() + R.wrong_state("NOOP", "AUTHORIZATION").to_bytes()
    talk(proto, t, b"USER joe\r\nPASS wrong\r\n")
    env.clock.advance(5.9)
    assert t.value() == R.USER_ACCEPTED.to_bytes()
    env.clock.advance(0.1)
    assert t.value().endswith(R.TOO_MANY_AUTH_FAILURES.to_bytes())
    assert t.disconnecting


def test_a_login_forgets_its_own_failed_logins_on_its_connection_not_others():
    # limits.FailureWindow, shared with SMTP AUTH: the right password
    # forgets the failures of the name that logged in (typed "joe", counted
    # as joe@example.org, as SMTP counts it) made on its own connection,
    # not another name's: a client with one account gets no fresh window
    # between guesses at others'.  Nor the name's on other connections: a
    # login of joe's mail client gave back the guesses at joe's password
    # that another client of the address (a NAT, an IPv6 /64) had made
    env = Env(allow_plaintext_auth=True, max_auth_failures=5, auth_failure_delay=1.0)
    other, t = env.connect(peer=REMOTE)  # the other client
    window = other.factory.login_failures
    talk(other, t, b"USER joe\r\nPASS guess\r\n")
    env.clock.advance(5)
    joe, t = login(env, peer=REMOTE)  # joe's own client: the guess stays
    assert len(window._failures["192.0.2.7"]) == 1
    assert talk(joe, t, b"QUIT\r\n").startswith(b"+OK")
    env.clock.advance(1)
    proto, t = env.connect(peer=REMOTE)
    for user in (b"ann", b"joe", b"joe@example.org"):
        talk(proto, t, b"USER " + user + b"\r\nPASS wrong\r\n")
        env.clock.advance(5)
    assert len(window._failures["192.0.2.7"]) == 4
    window.failed("192.0.2.7")  # a malformed response: nobody's
    assert b"+OK Logged in" in talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    tags = [tag for _, tag, _ in window._failures["192.0.2.7"]]
    assert tags == [_name_tag("joe@example.org"), _name_tag("ann@example.org"), None]


def test_an_auth_plain_name_no_user_can_have_fails_as_a_wrong_password(log_events):
    # SMTP AUTH fails the same PLAIN message as a login (535 after the
    # delay, counted for the address, 'authentication failed for a b
    # from ...'); POP3 answered -ERR at once, counted nothing and logged
    # nothing, so a client could try such names without end, unseen
    import base64

    env = Env(allow_plaintext_auth=True, max_auth_failures=2, auth_failure_delay=3.0,
              checker=ClientRecordingChecker({"joe@example.org": b"joepw"}))
    proto, t = env.connect(peer=REMOTE)
    message = b"AUTH PLAIN " + base64.b64encode(b"\0a b\0wrong") + b"\r\n"
    assert talk(proto, t, message) == b""  # delayed, as a wrong password is
    env.clock.advance(3)
    assert t.value() == R.BAD_USER_NAME.to_bytes()  # the answer still says why
    assert proto.engine.auth_failures == 1
    assert list(proto.factory.login_failures._failures) == ["192.0.2.7"]
    assert env.checker.clients == []  # no password was checked
    assert [formatEvent(e) for e in log_events if "refused" in formatEvent(e)] == [
        "POP3 login a b from 192.0.2.7 (PLAIN) refused: AUTH"]
    talk(proto, t, message)  # the second of max_auth_failures = 2 ends the session
    env.clock.advance(6)
    assert t.value() == R.TOO_MANY_AUTH_FAILURES.to_bytes() and t.disconnecting


@pytest.mark.parametrize("name", [b"bob\x01", b"\xff\xfe", "bob\u202e".encode()])
def test_an_apop_name_no_user_can_have_fails_as_a_wrong_digest(log_events, name):
    # the digest is APOP's password: as AUTH PLAIN's, such a login was
    # refused at once, uncounted and unlogged
    env = Env(auth_failure_delay=3.0)
    proto, t = env.connect(peer=REMOTE)
    assert talk(proto, t, b"APOP " + name + b" " + b"0" * 32 + b"\r\n") == b""
    env.clock.advance(3)
    assert t.value() == R.BAD_USER_NAME.to_bytes()
    assert proto.engine.auth_failures == 1
    assert list(proto.factory.login_failures._failures) == ["192.0.2.7"]
    [line] = [formatEvent(e) for e in log_events if "refused" in formatEvent(e)]
    assert line.startswith("POP3 login ") and line.endswith(
        " from 192.0.2.7 (APOP) refused: AUTH"), line
    assert "\x01" not in line and "\u202e" not in line  # escaped, as every name logged


def test_an_auth_plain_name_no_user_can_have_from_a_blocked_address_is_throttled():
    # as any login from an address with too many failures: refused before
    # anything is judged, and not counted again
    import base64

    env = Env(allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    for _ in range(10):
        proto.factory.login_failures.failed("192.0.2.7")
    out = talk(proto, t, b"AUTH PLAIN " + base64.b64encode(b"\0a b\0wrong") + b"\r\n")
    assert out == R.LOGIN_THROTTLED.to_bytes()
    assert proto.engine.auth_failures == 0


def test_a_name_no_user_can_have_from_loopback_is_not_counted_for_the_address():
    # loopback is exempt from the address's failures (docs/pop3.rst), these
    # failed logins too: a local client that keeps sending one (a webmail
    # with a bad setting) never locks out the next, right login
    import base64

    env = Env(allow_plaintext_auth=True, auth_failure_delay=1.0)
    for _ in range(12):
        for message in (b"AUTH PLAIN " + base64.b64encode(b"\0a b\0pw") + b"\r\n",
                        b"APOP jo\x01e " + b"0" * 32 + b"\r\n"):
            proto, t = env.connect()
            talk(proto, t, message)
            env.clock.advance(5)
            assert t.value() == R.BAD_USER_NAME.to_bytes()
    assert dict(proto.factory.login_failures._failures) == {}
    proto, t = env.connect()
    out = talk(proto, t, b"AUTH PLAIN " + base64.b64encode(b"\0joe\0joepw") + b"\r\n")
    assert out.startswith(b"+OK")


def test_one_mistyped_name_does_not_keep_the_right_login_out():
    # a name no user can have typed once, from another address: one failure,
    # as a wrong password; the right login that follows, in the same
    # session, gets the mailbox
    import base64

    env = Env(allow_plaintext_auth=True, auth_failure_delay=1.0)
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, b"AUTH PLAIN " + base64.b64encode(b"\0jo e\0joepw") + b"\r\n")
    env.clock.advance(1)
    assert t.value() == R.BAD_USER_NAME.to_bytes()
    talk(proto, t, b"AUTH PLAIN " + base64.b64encode(b"\0joe\0joepw") + b"\r\n")
    env.clock.advance(2)
    assert t.value().startswith(b"+OK")


def test_apop_of_an_unknown_name_and_a_wrong_digest_look_alike():
    # no user enumeration: a name that is no user and a user's wrong
    # digest get the same answer after the same delay; a name no user can
    # have says so, after that delay too (its form alone tells it)
    replies = {}
    for name in (b"nobody", b"joe", b"jo\x01e"):
        env = Env(auth_failure_delay=2.0)
        proto, t = env.connect(peer=REMOTE)
        assert talk(proto, t, b"APOP " + name + b" " + b"0" * 32 + b"\r\n") == b""
        env.clock.advance(1.999)
        assert t.value() == b""
        env.clock.advance(0.001)
        replies[name] = t.value()
    assert replies[b"nobody"] == replies[b"joe"] == R.AUTH_FAILED.to_bytes()
    assert replies[b"jo\x01e"] == R.BAD_USER_NAME.to_bytes()


def test_a_user_missing_from_a_users_file_caught_half_written_is_sys_temp(tmp_path):
    # the users file rewritten in place and read before bob's line is back:
    # his login is "try again later" ([SYS/TEMP], RFC 3206 4; the CAPA
    # list names RESP-CODES), at once and not counted as a guess -- not
    # [AUTH], which tells a mail client to ask for another password.
    # RACY_SECONDS after the change, a failure is [AUTH] again.
    from txmailhub.auth import UsersChecker
    from txmailhub.filestamp import RACY_SECONDS, FileStamp
    from txmailhub.users import UsersDB, hash_password

    path = tmp_path / "users"
    whole = f"joe {hash_password('joepw')}\nbob {hash_password('bobpw')}\n"
    path.write_text(whole[: whole.index("bob ") + 2])  # as far as the writer got
    wall, mono = [path.stat().st_mtime + 0.5], [50.0]
    users = UsersDB(str(path), "example.org")
    users._file = FileStamp(lambda: wall[0], lambda: mono[0])
    env = Env(checker=UsersChecker(users), allow_plaintext_auth=True)
    proto, t = env.connect(peer=REMOTE)
    assert b"RESP-CODES" in talk(proto, t, b"CAPA\r\n")
    talk(proto, t, b"USER bob\r\n")
    assert talk(proto, t, b"PASS bobpw\r\n") == R.MAILBOX_TEMP_FAILURE.to_bytes()
    assert R.MAILBOX_TEMP_FAILURE.to_bytes().startswith(b"-ERR [SYS/TEMP] ")
    assert proto.factory.login_failures._failures == {}  # no guess counted
    wall[0] += RACY_SECONDS
    mono[0] += RACY_SECONDS
    talk(proto, t, b"USER bob\r\nPASS bobpw\r\n")
    env.clock.advance(10)
    assert t.value().endswith(R.AUTH_FAILED.to_bytes())
    assert proto.factory.login_failures._failures != {}


def test_apop_login():
    env = Env()
    env.store.add("joe@example.org", b"hi\n")
    proto, t = env.connect()
    ts = re.search(rb"<[^>]+>", t.value()).group(0)
    digest = hashlib.md5(ts + b"joepw").hexdigest().encode()
    assert talk(proto, t, b"APOP joe " + digest + b"\r\n") == R.logged_in(1, 4).to_bytes()
    proto2, t2 = env.connect()
    out = talk(proto2, t2, b"APOP ann " + digest + b"\r\n")
    env.clock.advance(10)
    assert t2.value() == R.AUTH_FAILED.to_bytes() and out == b""


def test_apop_without_the_users_secret_is_logged_as_such(log_events, tmp_path):
    # the client gets the usual refusal; the log names the cause, which a
    # wrong password would not explain (the user was added without
    # --allow-apop)
    from twisted.logger import formatEvent

    env = Env(checker=checker_without_apop_secret(tmp_path))
    proto, t = env.connect()
    ts = re.search(rb"<[^>]+>", t.value()).group(0)
    digest = hashlib.md5(ts + b"joepw").hexdigest().encode()
    talk(proto, t, b"APOP joe " + digest + b"\r\n")
    env.clock.advance(10)
    assert t.value() == R.AUTH_FAILED.to_bytes()
    lines = [formatEvent(e) for e in log_events if "POP3 login" in formatEvent(e)]
    assert lines == ["POP3 login joe from 127.0.0.1 (APOP) refused: AUTH (the user has no "
                     "APOP secret: it was added without mailhub user add --allow-apop)"]


def test_the_greeting_offers_apop_only_while_a_user_has_an_apop_secret(tmp_path):
    # Twisted's POP3Client.login() takes APOP whenever the greeting has a
    # timestamp: with no APOP secret anywhere, none is given, and the
    # greeting follows the users file as it changes
    from txmailhub.auth import UsersChecker
    from txmailhub.users import UsersDB

    path = str(tmp_path / "users")
    admin = UsersDB(path, "example.org")  # ``mailhub user ...``
    admin.add("joe", "joepw", allow_weak=True)
    hub_db = UsersDB(path, "example.org")  # the running hub's
    env = Env(checker=UsersChecker(hub_db))
    env.components.users = hub_db
    env.store.add("joe@example.org", b"hi\n")

    proto, t = env.connect()
    assert t.value() == b"+OK POP3 server mail.example.org ready\r\n"
    assert talk(proto, t, b"APOP joe " + b"0" * 32 + b"\r\n") == R.APOP_UNAVAILABLE.to_bytes()
    env.clock.advance(10)
    assert proto.engine.auth_failures == 0
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n").endswith(R.logged_in(1, 4).to_bytes())
    talk(proto, t, b"QUIT\r\n")

    admin.add("ann", "annpw", allow_apop=True, allow_weak=True)
    env.store.add("ann@example.org", b"hi\n")
    proto, t = env.connect()
    ts = re.search(rb"<[^>]+>", t.value()).group(0)
    digest = hashlib.md5(ts + b"annpw").hexdigest().encode()
    assert talk(proto, t, b"APOP ann " + digest + b"\r\n") == R.logged_in(1, 4).to_bytes()

    admin.delete("ann")
    proto, t = env.connect()
    assert b"<" not in t.value()


def test_the_greeting_offers_apop_without_a_users_database():
    # an application's own checker (no UsersDB in the components): APOP
    # stays offered, as its checker may take it
    env = Env()
    assert env.components.users is None
    _proto, t = env.connect()
    assert re.search(rb"ready <\d+\.\d+\.[0-9a-f]+@mail\.example\.org>\r\n$", t.value())


def test_apop_credentials_compare_in_constant_time_form():
    creds = APOPCredentials(b"joe", b"<1.2@h>", hashlib.md5(b"<1.2@h>s3").hexdigest().encode())
    assert creds.checkPassword(b"s3") and creds.checkPassword("s3")
    assert not creds.checkPassword(b"s4")


def test_auth_plain_login():
    env = Env()
    proto, t = env.connect()
    import base64

    assert talk(proto, t, b"AUTH PLAIN\r\n") == b"+ \r\n"
    out = talk(proto, t, base64.b64encode(b"\0joe\0joepw") + b"\r\n")
    assert out == R.logged_in(0, 0).to_bytes()


@pytest.mark.parametrize(
    "peer,allowed,expected",
    [
        (REMOTE, False, R.PLAINTEXT_DISALLOWED_NO_TLS.to_bytes()),
        (REMOTE, True, R.USER_ACCEPTED.to_bytes()),
        (LOOPBACK, False, R.USER_ACCEPTED.to_bytes()),
        (IPv6Address("TCP", "::1", 1), False, R.USER_ACCEPTED.to_bytes()),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 1), False, R.USER_ACCEPTED.to_bytes()),
        (IPv6Address("TCP", "2001:db8::1", 1), False, R.PLAINTEXT_DISALLOWED_NO_TLS.to_bytes()),
        (UNIXAddress("/tmp/pop3.sock"), False, R.USER_ACCEPTED.to_bytes()),
    ],
)
def test_plaintext_policy(peer, allowed, expected):
    env = Env(allow_plaintext_auth=allowed)
    proto, t = env.connect(peer=peer)
    assert talk(proto, t, b"USER joe\r\n") == expected


def test_the_plaintext_refusal_advises_stls_only_where_tls_is_configured():
    # without [tls] the hub has no STLS to offer ("-ERR STLS is not
    # available"): the refusal used to advise it all the same
    for tls, expected in ((None, R.PLAINTEXT_DISALLOWED_NO_TLS),
                          (object(), R.PLAINTEXT_DISALLOWED)):
        proto, t = Env(tls=tls).connect(peer=REMOTE)
        assert talk(proto, t, b"USER joe\r\n") == expected.to_bytes()
        assert (b"STLS" in t.value()) is (tls is not None)
        assert (b"STLS\r\n" in talk(proto, t, b"CAPA\r\n")) is (tls is not None)


def test_implicit_tls_allows_plaintext_and_hides_stls():
    env = Env(tls=object())
    proto, t = env.connect(peer=REMOTE, implicit_tls=True)
    assert b"STLS" not in talk(proto, t, b"CAPA\r\n")
    assert talk(proto, t, b"USER joe\r\n") == R.USER_ACCEPTED.to_bytes()


def test_stls_starts_afresh_and_drops_pipelined_plaintext():
    ctx = object()
    env = Env(tls=ctx)
    proto, t = env.connect(peer=REMOTE)
    capa = talk(proto, t, b"CAPA\r\n")
    assert b"STLS\r\n" in capa and b"USER\r\n" not in capa and b"SASL" not in capa
    assert talk(proto, t, b"STLS\r\nUSER evil\r\n") == R.STLS_BEGIN.to_bytes()
    assert t.tls_started is ctx
    capa = talk(proto, t, b"CAPA\r\n")
    assert b"STLS" not in capa and b"USER\r\n" in capa and b"SASL PLAIN\r\n" in capa
    assert talk(proto, t, b"USER joe\r\n") == R.USER_ACCEPTED.to_bytes()
    assert talk(proto, t, b"PASS joepw\r\n").startswith(b"+OK Logged in")


def test_stls_keeps_the_count_of_failed_logins():
    # RFC 2595 4 starts the session afresh, not the guesser's allowance:
    # failures before STLS count towards max_auth_failures after it
    env = Env(tls=object(), max_auth_failures=3, auth_failure_delay=1.0)
    proto, t = env.connect(peer=REMOTE)
    for _ in range(2):
        talk(proto, t, b"APOP joe " + b"0" * 32 + b"\r\n")
        env.clock.advance(10)
        assert t.value() == R.AUTH_FAILED.to_bytes()
    assert talk(proto, t, b"STLS\r\n") == R.STLS_BEGIN.to_bytes()
    talk(proto, t, b"USER joe\r\nPASS wrong\r\n")
    env.clock.advance(10)
    assert t.value().endswith(R.TOO_MANY_AUTH_FAILURES.to_bytes())
    assert t.disconnecting


# -- locking and UPDATE ------------------------------------------------------


def test_in_use_then_free_after_quit():
    env = Env()
    proto, t = login(env)
    proto2, t2 = env.connect()
    talk(proto2, t2, b"USER joe\r\n")
    assert talk(proto2, t2, b"PASS joepw\r\n") == R.MAILBOX_IN_USE.to_bytes()
    talk(proto, t, b"QUIT\r\n")
    assert not env.store.is_locked("joe@example.org")
    talk(proto2, t2, b"USER joe\r\n")
    assert talk(proto2, t2, b"PASS joepw\r\n").startswith(b"+OK Logged in")


def test_dropped_connection_deletes_nothing_and_unlocks():
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        env = Env()
        env.store.add("joe@example.org", b"keep\n")
        proto, t = login(env)
        talk(proto, t, b"DELE 1\r\n")
        proto.connectionLost(None)
        assert env.store.messages("joe@example.org") == [b"keep\n"]
        assert not env.store.is_locked("joe@example.org")
        # the same when the hub stops: the log says who ended the session
        proto, t = login(env)
        proto.factory.shut_down()
        assert t.disconnecting  # ended by the hub: its mailbox lock goes with it
        proto.connectionLost(None)
        assert not env.store.is_locked("joe@example.org")
        proto.factory.startFactory()  # listening again: a drop is a drop
        assert not proto.factory.stopping
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "nothing deleted" in formatEvent(e)]
    assert [x.split(" from ")[1].split(" ", 1)[1] for x in lines] == [
        "left without QUIT: nothing deleted", "closed as the hub stops: nothing deleted"]


@implementer(IRealm)
class SpyLogoutRealm(Realm):
    """A realm of an application's own: its logout is its business (here
    a count), not the mailbox's ``close``."""

    def __init__(self, store):
        super().__init__(store)
        self.logouts = 0

    def requestAvatar(self, avatar_id, mind, *interfaces):
        d = super().requestAvatar(avatar_id, mind, *interfaces)
        return d.addCallback(lambda r: (r[0], r[1], self.logout))

    def logout(self):
        self.logouts += 1


@pytest.mark.parametrize("end", ["QUIT", "drop"])
def test_session_end_calls_the_realm_logout_and_closes_the_mailbox(end):
    # twisted.cred: the logout callable is called at the end; IMailbox.close
    # releases the lock whatever the realm's logout does
    env = Env()
    realm = SpyLogoutRealm(env.store)
    env.portal.realm = realm
    env.store.add("joe@example.org", b"keep\n")
    proto, t = login(env)
    assert env.store.is_locked("joe@example.org")
    if end == "QUIT":
        assert talk(proto, t, b"QUIT\r\n").startswith(b"+OK")
    proto.connectionLost(None)
    assert realm.logouts == 1
    assert not env.store.is_locked("joe@example.org")


def test_a_mailbox_that_cannot_be_listed_is_unlocked_at_once():
    # the login fails [SYS/TEMP]; the client may stay connected (and retry):
    # the mailbox must not stay locked until it leaves
    env = Env()
    opened = []
    open_mailbox = env.store.open_mailbox

    def broken(address):
        def listing_fails(box):
            box.list_messages = mock.Mock(side_effect=OSError("EIO"))
            opened.append(box)
            return box
        return open_mailbox(address).addCallback(listing_fails)

    env.store.open_mailbox = broken
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS joepw\r\n") == R.MAILBOX_TEMP_FAILURE.to_bytes()
    assert opened and not env.store.is_locked("joe@example.org")
    assert proto.mailbox is None


@implementer(IRealm)
class _WrongShapeRealm:
    """A realm of an application's own that answers with the wrong shape
    (no logout callable): an internal error, not the client's."""

    def requestAvatar(self, avatar_id, mind, *interfaces):
        return (IMailbox, object())


def test_an_internal_error_is_answered_and_closes():
    # a realm of an application's own that answers with the wrong shape:
    # our bug or theirs, the client gets [SYS/TEMP] and the connection ends
    env = Env()
    env.portal.realm = _WrongShapeRealm()
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS joepw\r\n") == R.INTERNAL_ERROR.to_bytes()
    assert t.disconnecting


def test_input_after_the_close_is_ignored():
    # a connection refused over the limits (it has no engine), and one
    # closed after QUIT: what the client still sends is dropped unread
    env = Env(max_connections=1)
    proto, t = login(env)
    refused, tr = env.connect()
    assert tr.value() == R.TOO_MANY_CONNECTIONS.to_bytes()
    assert talk(refused, tr, b"USER joe\r\n") == b""
    assert talk(proto, t, b"QUIT\r\nNOOP\r\n") == R.bye_updated(0).to_bytes()
    assert talk(proto, t, b"NOOP\r\n") == b""


def test_a_client_that_never_logs_in_is_closed_and_logged(log_events):
    from twisted.logger import formatEvent

    from txmailhub.pop3.server import PRE_LOGIN_LINES

    env = Env()
    proto, t = env.connect()
    out = talk(proto, t, b"NOOP\r\n" * (PRE_LOGIN_LINES + 5))
    assert out.endswith(R.TOO_MANY_COMMANDS.to_bytes())
    assert out.count(b"\r\n") == PRE_LOGIN_LINES + 1  # the rest is not answered
    assert t.disconnecting
    [line] = [formatEvent(e) for e in log_events
              if "too many commands" in (e.get("log_format") or "")]
    assert line == "POP3 session with 127.0.0.1 closed: too many commands without logging in"


def test_a_client_that_only_sends_garbage_after_login_is_closed_and_logged(log_events):
    # [pop3] max_errors: the autologout alone bounded such a session (each
    # refused command restarting it); now the max_errors-th -ERR closes it,
    # without the UPDATE state: the DELE before is not carried out
    from twisted.logger import formatEvent

    env = Env(max_errors=3)
    env.store.add("joe@example.org", b"Subject: a\n\nx\n")
    proto, t = login(env)
    out = talk(proto, t, b"DELE 1\r\nFOO\r\nNOOP\r\nRETR 7\r\nLIST x\r\nNOOP\r\nQUIT\r\n")
    assert out == (R.deleted(1).to_bytes() + R.UNKNOWN_COMMAND.to_bytes() + R.NOOP.to_bytes()
                   + R.NO_SUCH_MESSAGE.to_bytes() + R.TOO_MANY_ERRORS.to_bytes())
    assert t.disconnecting
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1  # nothing deleted
    [line] = [formatEvent(e) for e in log_events
              if "too many errors" in (e.get("log_format") or "")]
    assert line == "POP3 session of joe@example.org from 127.0.0.1 closed: too many errors"


def test_a_long_batch_is_answered_a_turn_at_a_time():
    # thousands of pipelined commands (one 64 KiB read of CAPA is 10,000)
    # must not keep other sessions waiting: COMMANDS_PER_TURN a turn
    env = Env()
    proto, t = login(env)
    t.clear()
    proto.dataReceived(b"NOOP\r\n" * 1000)
    assert t.value() == b"+OK\r\n" * COMMANDS_PER_TURN
    other, t2 = login(env, user=b"ann", pw=b"annpw")
    t2.clear()
    other.dataReceived(b"NOOP\r\n")
    assert t2.value() == b"+OK\r\n"  # served in between
    env.clock.advance(0)
    assert t.value() == b"+OK\r\n" * 1000
    assert all(c.getTime() > env.clock.seconds() for c in env.clock.getDelayedCalls())


def test_nothing_is_read_between_the_turns_of_a_batch():
    # a close read between two turns would drop the batch's tail -- its
    # QUIT, and the deletions of its UPDATE with it
    env = Env()
    env.store.add("joe@example.org", b"one\n")
    proto, t = login(env)
    t.clear()
    proto.dataReceived(b"NOOP\r\n" * 300 + b"DELE 1\r\nQUIT\r\n")
    assert t.producerState == "paused"  # the rest waits for its turn, unread
    env.clock.advance(0)
    assert t.value() == b"+OK\r\n" * 300 + b"+OK Message 1 deleted\r\n+OK Bye (0 messages left)\r\n"
    assert env.store.messages("joe@example.org") == []  # QUIT's UPDATE ran


def test_stls_while_twisted_has_us_paused(tls_files, monkeypatch):
    # The +OK to STLS is what fills Twisted's buffer: Twisted pauses us, then
    # startTLS moves the producer into the TLS layer without its paused
    # state, and nothing would ever resume us (the first command under TLS
    # went unanswered).  (Hundreds of CAPAs fill it: more than a client may
    # send before it logs in, a limit this test is not about.)
    from txmailhub.pop3 import server as pop3_server

    monkeypatch.setattr(pop3_server, "PRE_LOGIN_LINES", 10**6)
    env = Env(tls=tls_options(str(tls_files[0]), str(tls_files[1])))
    proto = POP3Factory(env.components).buildProtocol(LOOPBACK)
    sock = StartTLSSocket(env.clock, proto)
    proto.makeConnection(sock)
    sock.startReading()

    def pending():  # octets in Twisted's buffer (the client reads nothing)
        return len(sock.dataBuffer) - sock.offset + sock._tempDataLen

    greeting = pending()
    proto.dataReceived(b"CAPA\r\n")
    capa = pending() - greeting
    assert capa > 0 and not sock.producerPaused
    room = sock.bufferSize - pending()  # CAPAs that fit, then the +OK goes over
    # what is left after them, filled with shorter answers down to less
    # than the +OK to STLS, whatever the length of the CAPA list
    short = len(R.UNKNOWN_COMMAND.to_bytes())
    assert short < len(R.STLS_BEGIN.to_bytes())
    fill = b"XXXX\r\n" * (room % capa // short)
    proto.dataReceived(b"CAPA\r\n" * (room // capa) + fill + b"STLS\r\n")
    env.clock.advance(0)  # a long batch: COMMANDS_PER_TURN a reactor turn
    assert sock.TLS and sock.producerPaused  # paused as TLS started
    sock.drain()  # the client reads it all, the +OK last
    assert bytes(sock.sent).endswith(R.STLS_BEGIN.to_bytes())
    sock.sent.clear()
    client = TLSClient(None, env.clock, tls_files, socket=sock)
    client.send(b"CAPA\r\n")
    assert b"\r\nUSER\r\n" in client.receive()  # answered, under TLS (USER offered)


def pop3s_logged_in(tls_files, message: bytes):
    """joe, logged in over implicit TLS (a stdlib ``ssl`` client over an
    in-memory socket), with ``message`` in his mailbox."""
    env = Env()
    env.store.add("joe@example.org", message)
    client = TLSClient(POP3Factory(env.components, implicit_tls=True), env.clock, tls_files)
    client.send(b"USER joe\r\nPASS joepw\r\n")
    assert b"+OK Logged in" in client.receive()
    return env, client

def test_tls_session_ended_by_the_client_unlocks_while_responses_wait(tls_files):
    # POP3S, the client pipelines more than Twisted buffers (it pauses us),
    # then ends the TLS session (close_notify) and reads what was sent.  The
    # TLS layer closes the socket on its own, but Twisted resumes a paused
    # producer instead of closing: we must unregister, or the socket (and
    # the mailbox lock) stays until the autologout (found by fuzzing).
    env, client = pop3s_logged_in(tls_files, b"x" * 60000 + b"\n")
    client.send(b"RETR 1\r\nRETR 1\r\nRETR 1\r\nNOOP\r\n")
    env.clock.advance(0)
    client.close_notify_while_paused()
    assert not env.store.is_locked("joe@example.org")
    assert not env.clock.getDelayedCalls()


def test_tls_session_ended_mid_message_by_a_client_that_stops_reading(tls_files):
    # POP3S: the client asks for a large message, reads none of it, ends the
    # TLS session (close_notify) and keeps the TCP connection open.  Reading
    # stopped while the message streamed, so the close_notify was never
    # seen; and once seen, the TLS layer's close waits for a buffer that
    # never drains.  The mailbox stayed locked until the autologout.
    env, client = pop3s_logged_in(tls_files, (b"y" * 76 + b"\n") * 20000)
    client.send(b"RETR 1\r\n")
    env.clock.advance(0)
    sock = client.socket
    assert sock.producerPaused and sock.reading()  # still reading mid-message
    client.close_notify()
    assert sock.disconnecting and sock.lost is None  # the TLS layer's close waits
    env.clock.advance(CLOSE_GRACE / 30)
    assert sock.lost is not None
    assert not env.store.is_locked("joe@example.org")
    assert not env.clock.getDelayedCalls()


def test_a_streamed_message_does_not_stop_reading():
    # so that a client that hangs up (EOF) mid-message is seen at once
    env = Env()
    env.store.add("joe@example.org", b"z" * (3 * CHUNK_SIZE) + b"\n")
    proto, t = login(env, limit=CHUNK_SIZE)
    proto.dataReceived(b"RETR 1\r\n")
    assert proto._stream is not None and t.producerState == "producing"
    proto.dataReceived(b"NOOP\r\n" * (INPUT_LIMIT // 6 + 1))  # pipelined: held, bounded
    assert t.producerState == "paused"


def test_refused_implicit_tls_connection_is_cut_after_the_grace(tls_files):
    # Past max_connections on the POP3S port: the -ERR waits for the TLS
    # handshake, then the TLS layer waits for the client's close_notify.  A
    # client that never sends it (or never finishes the handshake) kept the
    # socket for good: refused connections hold no slot, so nothing else
    # closed them, and every such client cost the hub one fd forever.
    env = Env(max_connections=1)
    env.connect()  # the only slot
    client = TLSClient(POP3Factory(env.components, implicit_tls=True), env.clock, tls_files)
    assert client.receive() == R.TOO_MANY_CONNECTIONS.to_bytes()
    sock = client.socket
    assert sock.lost is None  # the polite close waits for the client
    env.clock.advance(CLOSE_GRACE)
    assert sock.lost is not None
    # only the admitted session's autologout is left
    assert [c.func.__name__ for c in env.clock.getDelayedCalls()] == ["_idle_check"]


def test_refused_connections_waiting_for_their_close_are_bounded(tls_files):
    # the grace above, times a client that opens such connections without
    # end: each refused one held an fd and its TLS state (some 60 KiB) for
    # CLOSE_GRACE, uncounted, so there was no bound on them at all.  Past
    # REFUSALS_WAITING the refusal is cut at once, without the -ERR.
    env = Env(max_connections=1)
    env.connect()  # the only slot
    factory = POP3Factory(env.components, implicit_tls=True)
    clients = [TLSClient(factory, env.clock, tls_files) for _ in range(REFUSALS_WAITING)]
    assert all(c.socket.lost is None for c in clients)  # each waits, politely
    proto, t = env.connect(implicit_tls=True)
    assert t.value() == b"" and t.disconnected  # cut, no reply
    assert factory.limits.refusals_waiting == REFUSALS_WAITING
    proto.connectionLost(None)
    env.clock.advance(CLOSE_GRACE)
    assert all(c.socket.lost is not None for c in clients)
    assert factory.limits.refusals_waiting == 0
    proto, t = env.connect()
    assert t.value() == R.TOO_MANY_CONNECTIONS.to_bytes() and not t.disconnected


def test_refused_implicit_tls_connections_are_cut_when_the_listener_stops(tls_files):
    # the grace above outlived the hub: a stopped listener left its refused
    # connections waiting for the client's close_notify (an fd and a timer
    # each, for up to CLOSE_GRACE, on the reactor of an application that
    # carries on)
    env = Env(max_connections=1)
    env.connect()  # the only slot
    factory = POP3Factory(env.components, implicit_tls=True)
    client = TLSClient(factory, env.clock, tls_files)
    assert client.receive() == R.TOO_MANY_CONNECTIONS.to_bytes()
    assert client.socket.lost is None
    factory.shut_down()
    assert client.socket.lost is not None
    assert factory.limits.refusals_waiting == 0
    assert [c.func.__name__ for c in env.clock.getDelayedCalls()] == ["_idle_check"]


def test_new_mail_waits_for_the_next_session():
    env = Env()
    env.store.add("joe@example.org", b"old\n")
    proto, t = login(env)
    env.store.add("joe@example.org", b"new\n")
    assert talk(proto, t, b"STAT\r\n") == b"+OK 1 5\r\n"
    talk(proto, t, b"QUIT\r\n")
    proto, t = login(env)
    assert talk(proto, t, b"STAT\r\n") == b"+OK 2 10\r\n"


def test_update_failure_is_sys_temp():
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    proto.mailbox.delete = lambda indices: defer.fail(OSError("disk gone"))
    talk(proto, t, b"DELE 1\r\n")
    out = talk(proto, t, b"QUIT\r\n")
    assert out == R.UPDATE_FAILED.to_bytes() and t.disconnecting
    assert b"OSError" not in out and b"disk" not in out
    assert not env.store.is_locked("joe@example.org")


def test_update_disk_error_is_one_log_line(log_events):
    """A deletion the disk refuses (EIO, EROFS) is the operator's to fix,
    as a full disk is for SMTP: one error line naming it, not a critical
    traceback per session (``logsafe.log_failure``)."""
    from twisted.logger import LogLevel, formatEvent

    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    proto.mailbox.delete = lambda indices: defer.fail(OSError(5, "Input/output error"))
    talk(proto, t, b"DELE 1\r\n")
    assert talk(proto, t, b"QUIT\r\n") == R.UPDATE_FAILED.to_bytes()
    mine = [e for e in log_events if "UPDATE failed" in formatEvent(e)]
    assert len(mine) == 1
    assert mine[0]["log_level"] == LogLevel.error
    assert "log_failure" not in mine[0]
    assert "Input/output error" in formatEvent(mine[0])


def test_connection_lost_during_update_releases_after_it():
    env = Env()
    env.store = store = MemoryMailboxStore(hold=True)
    env.portal.realm.store = store
    store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\nQUIT\r\n")
    proto.connectionLost(None)
    assert store.is_locked("joe@example.org")  # the deletion is still running
    store.release()
    assert not store.is_locked("joe@example.org")
    assert store.messages("joe@example.org") == []


# -- errors ------------------------------------------------------------------


def test_storage_errors_never_reach_the_wire():
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b" * CHUNK_SIZE)
    proto, t = login(env)

    def broken(index, *args):
        raise PermissionError(13, "Permission denied", "/var/mail/secret")

    # a small message is read whole (read_message), a large one streamed
    proto.mailbox.read_message = broken
    assert talk(proto, t, b"RETR 1\r\n") == R.MESSAGE_READ_FAILED.to_bytes()
    assert talk(proto, t, b"NOOP\r\n") == b"+OK\r\n"
    del proto.mailbox.read_message
    proto.mailbox.open_message = broken
    assert talk(proto, t, b"TOP 2 0\r\n") == R.MESSAGE_READ_FAILED.to_bytes()
    assert talk(proto, t, b"NOOP\r\n") == b"+OK\r\n"


def _gone(index, *args):
    """A mailbox's read of a message another program removed (the store
    looked for it under every name)."""
    raise FileNotFoundError(2, "No such file or directory", "/var/mail/joe/cur/x")


@contextlib.contextmanager
def _log_events() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_a_message_another_program_removed_is_gone_not_a_storage_error():
    # a Maildir shared with an IMAP server or a user's mutt: the message's
    # file, looked for under every name, is gone.  [SYS/TEMP] told the
    # client to try again, and the hub logged an error, for an ordinary
    # event; the session goes on as after any -ERR
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b" * CHUNK_SIZE)
    proto, t = login(env)
    with _log_events() as events:
        proto.mailbox.read_message = _gone
        assert talk(proto, t, b"RETR 1\r\n") == R.MESSAGE_GONE.to_bytes()
        del proto.mailbox.read_message
        proto.mailbox.open_message = _gone
        assert talk(proto, t, b"TOP 2 0\r\n") == R.MESSAGE_GONE.to_bytes()
        assert talk(proto, t, b"NOOP\r\n") == b"+OK\r\n"
    assert R.MESSAGE_GONE.to_bytes() == b"-ERR Message was removed by another program\r\n"
    mine = [e for e in events if "removed by another program" in e.get("log_format", "")]
    assert len(mine) == 2 and all(e["log_level"] == LogLevel.info for e in mine)
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]


def test_a_large_message_is_streamed_and_a_small_one_read_whole():
    env = Env()
    env.store.add("joe@example.org", b"small\n")
    env.store.add("joe@example.org", b"x" * CHUNK_SIZE + b"\n")
    proto, t = login(env)
    calls = []
    box = proto.mailbox
    real_read, real_open = box.read_message, box.open_message
    box.read_message = lambda i, limit: (calls.append(("read", i)), real_read(i, limit))[1]
    box.open_message = lambda i: (calls.append(("open", i)), real_open(i))[1]
    assert talk(proto, t, b"RETR 1\r\n") == b"+OK 7 octets\r\nsmall\r\n.\r\n"
    t.clear()
    proto.dataReceived(b"RETR 2\r\n")
    while proto._stream is not None:
        proto.resumeProducing()
    assert t.value().endswith(b"x\r\n.\r\n")
    assert len(t.value()) == len(b"+OK %d octets\r\n" % (CHUNK_SIZE + 2)) + CHUNK_SIZE + 2 + 3
    assert calls == [("read", 0), ("open", 1)]


def test_portal_errors_are_sys_temp_and_login_errors_auth():
    class Boom:
        credentialInterfaces = HeldChecker.credentialInterfaces

        def __init__(self, exc):
            self.exc = exc

        def requestAvatarId(self, credentials):
            return defer.fail(self.exc)

    env = Env(checker=Boom(RuntimeError("db exploded")))
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS x\r\n") == R.MAILBOX_TEMP_FAILURE.to_bytes()
    env = Env(checker=Boom(PermissionError(13, "Permission denied")))
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS x\r\n") == R.MAILBOX_PERM_FAILURE.to_bytes()
    env = Env(checker=Boom(UnauthorizedLogin()))
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    talk(proto, t, b"PASS x\r\n")
    env.clock.advance(1)
    assert t.value() == R.AUTH_FAILED.to_bytes()


def test_endless_line_through_the_adapter():
    env = Env()
    proto, t = env.connect()
    t.clear()
    for _ in range(2000):
        proto.dataReceived(b"A" * 4096)
    assert proto.engine.buffered < 8192 and t.value() == b""
    proto.dataReceived(b"\r\nNOOP\r\n")
    assert t.value() == R.LINE_TOO_LONG.to_bytes() + R.wrong_state(
        "NOOP", "AUTHORIZATION").to_bytes()


# -- idle timeout --------------------------------------------------------------


def test_idle_timeout_autologout_without_update():
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    env.clock.advance(599)
    talk(proto, t, b"NOOP\r\n")
    env.clock.advance(599)
    assert not t.disconnecting
    t.clear()
    env.clock.advance(1)
    # RFC 1939 3: the server closes "without ... sending any response"
    assert t.value() == b"" and t.disconnecting
    proto.connectionLost(None)
    assert env.store.messages("joe@example.org") == [b"a\n"]


def test_a_stall_of_the_hub_is_not_the_clients_idle_time():
    # the reactor thread was stuck (a read from a hung disk) past the
    # timeout while the client's LIST waited in the socket: the timer runs
    # before that read and must not log the client out for it
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    t.clear()
    stalled_turn(env.clock, 900)
    assert t.value() == b"" and not t.disconnecting
    assert talk(proto, t, b"LIST\r\n").startswith(b"+OK")  # the turn's reads
    env.clock.advance(0)
    assert not t.disconnecting
    # idle for real: logged out, a turn later
    stalled_turn(env.clock, 600)
    env.clock.advance(0)
    assert t.disconnecting


def test_a_connection_lost_between_the_autologouts_two_looks_leaves_no_call():
    env = Env(idle_timeout=600)
    proto, _t = login(env)
    stalled_turn(env.clock, 900)
    look = proto._idle_call
    assert look is not None and look.getTime() == env.clock.seconds()
    proto.connectionLost(None)
    assert not look.active() and proto._idle_call is None


def _autologout_lines(log_events) -> list[str]:
    return [formatEvent(e) for e in log_events if "autologout" in formatEvent(e)]


def test_no_autologout_of_a_session_closing_after_its_quit(log_events):
    # the close after QUIT waits up to CLOSE_GRACE for the client to take
    # the +OK; an autologout shorter than that fired meanwhile and logged
    # a line for a session that had ended (its close did nothing more)
    env = Env(idle_timeout=10)
    proto, t = login(env)
    assert talk(proto, t, b"QUIT\r\n").startswith(b"+OK")
    assert t.disconnecting and proto._closing
    env.clock.advance(10)
    env.clock.advance(0)  # the second look, a turn later
    assert _autologout_lines(log_events) == []
    assert proto._idle_call is None  # nothing left armed
    proto.connectionLost(None)


def test_no_autologout_line_when_the_session_closes_between_its_two_looks(log_events):
    # the first look saw the client idle (after a stall of the hub); before
    # the second, one turn later, the client half-closed with nothing to
    # answer: the session closes, and the second look logged it out too
    env = Env(idle_timeout=600)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    stalled_turn(env.clock, 900)
    assert proto._idle_call is not None  # the second look, armed
    proto.readConnectionLost()
    assert proto._closing
    env.clock.advance(0)
    assert _autologout_lines(log_events) == []
    proto.connectionLost(None)


def test_autologout_that_cannot_complete_is_cut():
    # e.g. after STLS the client never does the handshake: Twisted holds the
    # -ERR (and the close) until it is done
    env = Env(idle_timeout=600)
    _proto, t = env.connect()
    env.clock.advance(600)
    assert t.disconnecting and not t.disconnected
    env.clock.advance(CLOSE_GRACE)
    assert t.disconnected


def test_idle_timeout_aborts_a_reader_that_stopped_reading():
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    assert proto._stream is not None
    env.clock.advance(601)
    assert t.disconnecting
    assert t.disconnected  # aborted: a polite close waits for the unread buffer


def test_idle_timeout_aborts_when_responses_pile_up_unread():
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"x" * 1000 + b"\n")
    proto, t = login(env, limit=500)
    talk(proto, t, b"RETR 1\r\nRETR 1\r\n")
    assert proto._write_paused and proto._stream is None
    env.clock.advance(601)
    assert t.disconnecting
    assert t.disconnected  # aborted: a polite close waits for the unread buffer


def test_lines_held_unanswered_do_not_hold_off_the_autologout():
    # A client that does not read has its commands held, unanswered; a
    # line now and then must not reset the autologout (a 2-octet line
    # each 599 s would hold the mailbox's lock for 8,192 autologouts).
    # It counts when it is answered, as any pipelined command.
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"x" * 1000 + b"\n")
    proto, t = login(env, limit=500)
    talk(proto, t, b"RETR 1\r\nRETR 1\r\n")
    assert proto._write_paused
    for _ in range(3):
        env.clock.advance(400)
        proto.dataReceived(b"NOOP\r\n")
    assert t.disconnecting and t.disconnected


def test_idle_timeout_zero_disables_autologout():
    env = Env(idle_timeout=0)
    _proto, t = env.connect()
    env.clock.advance(10 * 86400)
    assert not t.disconnecting and not env.clock.getDelayedCalls()


def test_partial_line_does_not_keep_the_session_alive():
    env = Env(idle_timeout=600)
    proto, t = env.connect()
    for _ in range(10):
        env.clock.advance(100)
        proto.dataReceived(b"N")
    assert t.disconnecting


# -- the encoder, across chunk boundaries ----------------------------------------


def reference(data: bytes, body_lines=None) -> bytes:
    """Line by line, the obvious way (for comparison only)."""
    text = data.replace(b"\r\n", b"\n")
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if body_lines is not None:
        try:
            blank = lines.index(b"")
        except ValueError:
            blank = len(lines)
        lines = lines[: blank + 1 + body_lines]
    out = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
    return out + b".\r\n"


message_bytes = st.lists(
    st.sampled_from([b".", b"\n", b"\r", b"a", b"..", b"\r\n", b"\n.\n", b"Subject: x"]),
    max_size=60,
).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@settings(max_examples=300, deadline=None)
@given(message_bytes, st.lists(st.integers(0, 1000), max_size=8))
def test_retr_encoding_is_chunking_independent(data, cuts):
    enc = MessageEncoder()
    out = b"".join(enc.encode(c) for c in chunked(data, cuts)) + enc.finish()
    assert out == encode_whole(data)
    unstuffed = out[:-3].replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    assert len(unstuffed) == crlf_size_of(data)
    if b"\r" not in data:
        assert out == reference(data)


@settings(max_examples=300, deadline=None)
@given(message_bytes, st.lists(st.integers(0, 1000), max_size=8), st.integers(0, 5))
def test_top_encoding_is_chunking_independent(data, cuts, n):
    data = data.replace(b"\r", b"")
    enc = MessageEncoder(n)
    out = b"".join(enc.encode(c) for c in chunked(data, cuts)) + enc.finish()
    assert out == reference(data, n)


def test_top_of_a_crlf_stored_message_split_anywhere():
    """A stored CRLF stays as it is (``CRLFEncoder``), so the empty line
    that ends the header (RFC 1939 7: TOP sends the header, the blank
    line, then n body lines) is CR LF in the file too; a chunk may end
    between any two of its octets, the CR and the LF included."""
    data = b"Subject: x\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n"
    expected = b"Subject: x\r\n\r\nline 1\r\n..line 2\r\n.\r\n"
    for cut in range(len(data) + 1):
        enc = MessageEncoder(2)
        out = enc.encode(data[:cut]) + enc.encode(data[cut:]) + enc.finish()
        assert out == expected, cut


@settings(max_examples=100, deadline=None)
@given(message_bytes, st.integers(1, 9), st.integers(0, 4))
def test_streamed_retr_and_top_match_whole_encoding(data, chunk, n):
    """Through the producer path with tiny chunks: every boundary gets hit."""
    env = Env()
    env.store.add("joe@example.org", data)
    with mock.patch("txmailhub.pop3.protocol.CHUNK_SIZE", chunk):
        proto, t = login(env)
        t.clear()
        t.limit = chunk
        proto.dataReceived(b"RETR 1\r\nTOP 1 %d\r\n" % n)
        out = bytearray()
        while proto._stream is not None or proto._write_paused:
            out += t.value()
            t.clear()
            proto.resumeProducing()
        out += t.value()
    size = crlf_size_of(data)
    top = MessageEncoder(n)
    expected = (f"+OK {size} octets\r\n".encode() + encode_whole(data)
                + R.TOP_FOLLOWS.to_bytes() + top.encode(data) + top.finish())
    assert bytes(out) == expected


class FlushingTransport(Transport):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.flushes = 0
        self.events: list = []

    def doWrite(self):
        self.flushes += 1
        self.events.append(("flush", None))


def test_responses_are_flushed_in_the_same_turn():
    env = Env()
    proto = POP3Factory(env.components).buildProtocol(LOOPBACK)
    t = FlushingTransport(LOOPBACK)
    proto.makeConnection(t)
    proto.dataReceived(b"CA")
    assert t.flushes == 0  # nothing handled yet
    proto.dataReceived(b"PA\r\nNOOP\r\n")
    assert t.flushes == 1  # one flush for the batch
    proto.pauseProducing()
    proto.dataReceived(b"CAPA\r\n")
    assert t.flushes == 1  # the transport is full: the reactor writes when it can


def test_login_is_logged_with_fields_and_without_the_password():
    env = Env()
    events = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(events.append)
    try:
        first, _ = login(env, pw=b"joepw")
        first.connectionLost(None)  # no QUIT
        proto, t = env.connect()
        talk(proto, t, b"USER joe\r\nPASS sekrit-pw\r\n")
        env.clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace") == "txmailhub.pop3"]
    ok = [e for e in mine if e.get("mechanism") == "USER" and "count" in e]
    refused = [e for e in mine if e.get("why") == "AUTH"]
    # a login names the mailbox, however the client spelled it; a refusal
    # can only give what was typed
    assert ok and ok[0]["user"] == "joe@example.org" and ok[0]["peer"] == "127.0.0.1"
    assert refused and refused[0]["user"] == "joe"
    left = [e for e in mine if e.get("why") == "left without QUIT"]
    assert len(left) == 1 and left[0]["user"] == "joe@example.org"
    assert not any("sekrit" in repr(e) for e in events)


def test_twisted_pop3_client_in_memory():
    """Twisted's own POP3 client against ours, over an in-memory connection."""
    from twisted.mail.pop3 import AdvancedPOP3Client
    from twisted.test import iosim

    env = Env()
    env.store.add("joe@example.org", b"Subject: one\n\n.hello\n")
    env.store.add("joe@example.org", b"Subject: two\n\nbye\n")
    client = AdvancedPOP3Client()
    client.allowInsecureLogin = True
    server = POP3Factory(env.components).buildProtocol(LOOPBACK)
    _client_io, _server_io, pump = iosim.connectedServerAndClient(
        lambda: server, lambda: client, greet=True,
        serverTransportFactory=lambda proto: iosim.FakeTransport(proto, False, hostAddress=None,
                                                                 peerAddress=LOOPBACK),
    )
    results = {}

    def keep(name):
        return lambda value: results.__setitem__(name, value)

    def go(_):
        d = client.capabilities()
        d.addCallback(keep("capa"))
        d.addCallback(lambda _: client.login(b"joe", b"joepw"))
        d.addCallback(lambda _: client.listSize())
        d.addCallback(keep("sizes"))
        d.addCallback(lambda _: client.listUID())
        d.addCallback(keep("uids"))
        d.addCallback(lambda _: client.retrieve(0))
        d.addCallback(keep("first"))
        d.addCallback(lambda _: client.delete(1))
        d.addCallback(lambda _: client.quit())
        return d

    done = go(None)
    pump.flush()
    assert done.called, "the client did not finish"
    assert b"PIPELINING" in results["capa"] and results["capa"][b"SASL"] == [b"PLAIN"]
    assert results["sizes"] == [crlf_size_of(b"Subject: one\n\n.hello\n"),
                                crlf_size_of(b"Subject: two\n\nbye\n")]
    assert results["uids"] == [b"memory-1", b"memory-2"]
    assert results["first"] == [b"Subject: one", b"", b".hello"]
    assert env.store.messages("joe@example.org") == [b"Subject: one\n\n.hello\n"]


def test_seen_flags_are_set_in_the_update_state_before_the_deletions_and_the_answer():
    # An IMailbox without IMailboxUpdate: mark_seen for each message RETR
    # sent, at QUIT (not at the RETR: on the reactor thread, a rename per
    # RETR held the hub while the disk hung), then delete, then the +OK.
    # A message both retrieved and deleted is not flagged.
    env = Env()
    for body in (b"one\n", b"two\n", b"three\n"):
        env.store.add("joe@example.org", body)
    proto = POP3Factory(env.components).buildProtocol(LOOPBACK)
    t = FlushingTransport(LOOPBACK)
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    events = t.events
    events.clear()
    box = proto.mailbox
    real_mark, real_delete = box.mark_seen, box.delete
    box.mark_seen = lambda i: (events.append(("seen", i)), real_mark(i))
    box.delete = lambda indices: (events.append(("delete", indices)), real_delete(indices))[1]
    real_write = t.write
    t.write = lambda data: (events.append(("write", data)), real_write(data))
    proto.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 1\r\n")
    assert [e for e in events if e[0] != "write"] == [("flush", None)]  # nothing flagged yet
    events.clear()
    proto.dataReceived(b"RETR 3\r\nDELE 2\r\nQUIT\r\n")
    kinds = [e if e[0] != "write" else ("write", e[1].split(b" ")[0]) for e in events]
    assert kinds[-5:] == [("write", b"+OK"), ("seen", 0), ("seen", 2), ("delete", [1]),
                          ("write", b"+OK")]
    assert env.store.messages("joe@example.org") == [b"one\n", b"three\n"]
    assert [m.seen for m in box.list_messages()] == [True, False, True]  # 2: deleted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b".", b"\n", b"\n.", b"a", b"\r\n."]), max_size=80)
       .map(b"".join))
def test_whole_encoding_with_many_dot_lines_and_a_head(data):
    """Past the sliced dot lines the rest is stuffed with replace: same bytes."""
    enc = MessageEncoder()
    assert encode_whole(data, b"+OK\r\n") == b"+OK\r\n" + enc.encode(data) + enc.finish()
    if b"\r" not in data:
        assert encode_whole(data) == reference(data)


def test_a_refused_login_under_any_name_is_logged_on_one_safe_line():
    from twisted.logger import formatEvent, globalLogPublisher

    env = Env()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        # names that are no UTF-8 or hold controls are refused at USER
        # (RFC 6856 2.2, SASLprep); what passes may still be unprintable
        # (an unassigned code point) or look like an escape
        for name in (b"\xff\xfe", b"bob\x1b[2J"):
            proto, t = env.connect()
            assert talk(proto, t, b"USER " + name + b"\r\n") == R.BAD_USER_NAME.to_bytes()
            proto.connectionLost(None)
        # a CR never gets as far as USER: only CRLF ends a line (RFC 1939 3)
        proto, t = env.connect()
        assert talk(proto, t, b"USER eve\rforged\r\n") == R.BARE_CR_IN_COMMAND.to_bytes()
        proto.connectionLost(None)
        for name in ("bob\u0378".encode(), b"eve\\x0dforged"):
            proto, t = env.connect()
            talk(proto, t, b"USER " + name + b"\r\nPASS x\r\n")
            env.clock.advance(5)
            proto.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    refused = [e for e in events if e.get("why") == "AUTH"]
    assert [e["user"] for e in refused] == ["bob\\u0378", "eve\\\\x0dforged"]
    for e in refused:
        text = formatEvent(e)
        assert text.isprintable() and "Unable to format" not in text


def test_connection_limits_in_all_and_per_client():
    from twisted.internet.address import IPv4Address, IPv6Address

    env = Env(max_connections=5, max_connections_per_client=2)
    far = IPv4Address("TCP", "192.0.2.7", 40000)
    a, ta = env.connect(far)
    _b, tb = env.connect(far)
    _c, tc = env.connect(far)  # a third from one client
    assert ta.value().startswith(b"+OK") and tb.value().startswith(b"+OK")
    assert tc.value() == R.TOO_MANY_CONNECTIONS_FROM_YOU.to_bytes() and tc.disconnecting
    # one IPv6 host is one /64, whatever address it picks from it
    six = [env.connect(IPv6Address("TCP", f"2001:db8:1:2::{i}", 40000)) for i in (1, 2, 3)]
    assert [t.value()[:3] for _, t in six] == [b"+OK", b"+OK", b"-ER"]
    _l, tl = env.connect()  # loopback has no per-client limit, but the total counts
    assert tl.value().startswith(b"+OK")
    _m, tm = env.connect()
    assert tm.value() == R.TOO_MANY_CONNECTIONS.to_bytes()
    a.connectionLost(None)  # a slot is free again
    _n, tn = env.connect()
    assert tn.value().startswith(b"+OK")


def test_the_plain_and_implicit_tls_listeners_share_max_connections():
    # docs/pop3.rst: max_connections is "in all (every POP3 listener
    # together)": a factory per listener, one count
    env = Env(tls=object(), max_connections=2)
    tls_proto, tls_t = env.connect(implicit_tls=True)
    assert tls_t.value().startswith(b"+OK")
    _plain, pt = env.connect()
    assert pt.value().startswith(b"+OK")
    _p, refused = env.connect()
    assert refused.value() == R.TOO_MANY_CONNECTIONS.to_bytes()
    tls_proto.connectionLost(None)  # the TLS session's slot serves a plain one
    _q, again = env.connect()
    assert again.value().startswith(b"+OK")


def test_failed_logins_are_counted_per_client_across_connections():
    # hanging up before the delayed -ERR, or reconnecting, does not reset it
    env = Env(allow_plaintext_auth=True)
    for _ in range(10):
        proto, t = env.connect(REMOTE)
        talk(proto, t, b"USER joe\r\n")
        assert talk(proto, t, b"PASS guess\r\n") == b""  # the -ERR waits for its delay
        proto.connectionLost(None)
    proto, t = env.connect(REMOTE)
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS joepw\r\n") == R.LOGIN_THROTTLED.to_bytes()
    local, _t = login(env)  # loopback is not throttled
    local.connectionLost(None)  # (and lets go of the mailbox)
    env.clock.advance(601)
    proto, t = env.connect(REMOTE)
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS joepw\r\n").startswith(b"+OK Logged in")


def test_failed_logins_over_pop3_and_smtp_auth_are_counted_together():
    # docs/pop3.rst: "10 logins in 10 minutes, over POP3 and SMTP AUTH
    # together" (the same passwords): a guesser that spreads its guesses
    # over both protocols is stopped at the tenth all the same, on both
    import base64

    from txmailhub.smtp import replies as smtp_replies
    from txmailhub.smtp.protocol import SMTPFactory

    env = Env(allow_plaintext_auth=True)
    smtp = SMTPFactory(env.components)

    def smtp_auth(password: str) -> bytes:
        proto = smtp.buildProtocol(REMOTE)
        t = StringTransport(peerAddress=REMOTE)
        proto.makeConnection(t)
        proto.engine.session.tls = True  # AUTH off loopback needs TLS
        proto.dataReceived(b"EHLO c\r\n")
        t.clear()
        plain = base64.b64encode(f"\0joe\0{password}".encode()).decode()
        proto.dataReceived(f"AUTH PLAIN {plain}\r\n".encode())
        out = t.value()
        proto.connectionLost(None)
        return out

    def pop3_login(password: bytes) -> bytes:
        proto, t = env.connect(REMOTE)
        talk(proto, t, b"USER joe\r\n")
        out = talk(proto, t, b"PASS " + password + b"\r\n")
        proto.connectionLost(None)
        return out

    for _ in range(5):
        assert pop3_login(b"guess") == b""  # the -ERR waits for its delay
        assert smtp_auth("guess") == b""  # and so does the 535
    assert pop3_login(b"joepw") == R.LOGIN_THROTTLED.to_bytes()
    assert smtp_auth("joepw") == smtp_replies.AUTH_THROTTLED.to_bytes()
    env.clock.advance(601)  # the window passes (this realm serves POP3 only)
    assert pop3_login(b"joepw").startswith(b"+OK Logged in")


def test_a_disk_error_at_login_is_one_log_line_and_a_temporary_failure():
    # a read-only store or no inodes left: the operator's to fix, no traceback
    import errno

    from twisted.logger import formatEvent, globalLogPublisher

    env = Env()
    env.store.open_mailbox = lambda address: defer.fail(
        OSError(errno.EROFS, "Read-only file system", "/var/mail/x/.txmailhub.lock"))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        proto, t = env.connect()
        talk(proto, t, b"USER joe\r\n")
        assert talk(proto, t, b"PASS joepw\r\n") == R.MAILBOX_TEMP_FAILURE.to_bytes()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = [e for e in events if "POP3 login error" in formatEvent(e)]
    assert "Read-only file system" in formatEvent(line) and "log_failure" not in line


def test_idle_time_starts_again_when_a_slow_login_check_answers():
    # The password check took 590 of the 600 seconds: the client must get
    # 600 seconds from the +OK, not 10.
    checker = HeldChecker()
    env = Env(checker=checker, idle_timeout=600)
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    env.clock.advance(590)
    _creds, d = checker.pending.pop()
    t.clear()
    d.callback(b"joe@example.org")
    assert t.value().startswith(b"+OK Logged in")
    env.clock.pump([100] * 5 + [99])
    assert not t.disconnecting
    said = t.value()
    env.clock.advance(1)
    assert t.value() == said and t.disconnecting  # closed, nothing said


def test_idle_time_starts_again_after_the_delayed_failure_reply():
    env = Env(idle_timeout=10, auth_failure_delay=8.0)
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS wrong\r\n") == b""
    env.clock.pump([4, 4])
    assert t.value() == R.AUTH_FAILED.to_bytes()  # at t=8
    env.clock.pump([1] * 9)  # t=17: 9 s after the -ERR
    assert not t.disconnecting
    env.clock.pump([1])
    assert t.value() == R.AUTH_FAILED.to_bytes() and t.disconnecting


def test_no_autologout_while_the_hub_keeps_the_client_waiting():
    # the failure delay (8 s, then 16 s) and a password check slower than
    # the whole idle time: the client waits for *us*; the autologout must
    # not cut it off before the answer it waits for
    env = Env(idle_timeout=10, auth_failure_delay=8.0)
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\n")
    talk(proto, t, b"PASS wrong\r\n")
    env.clock.pump([1] * 8)
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS wrong\r\n") == b""  # t=8: the -ERR in 16 s
    env.clock.pump([1] * 16)
    assert t.value() == R.AUTH_FAILED.to_bytes() and not t.disconnecting
    env.clock.pump([1] * 9)
    assert not t.disconnecting
    env.clock.pump([1])
    assert t.value() == R.AUTH_FAILED.to_bytes() and t.disconnecting

    checker = HeldChecker()
    env = Env(checker=checker, idle_timeout=600)
    proto, t = env.connect()
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    t.clear()
    env.clock.pump([10] * 61)  # the users database takes 610 s
    assert t.value() == b"" and not t.disconnecting
    checker.pending.pop()[1].callback(b"joe@example.org")
    assert t.value().startswith(b"+OK Logged in")


def test_loopback_clients_are_exempt_from_the_per_client_limit():
    # the existing test opens one loopback connection: under the limit anyway
    env = Env(max_connections=5, max_connections_per_client=2)
    conns = [env.connect() for _ in range(3)]  # LOOPBACK
    assert [t.value()[:3] for _, t in conns] == [b"+OK"] * 3


def test_a_login_that_succeeds_after_the_client_left_releases_the_mailbox():
    # the check answers after the hang-up: the mailbox it opened (and
    # locked) is closed at once, or the user could not log in again
    checker = HeldChecker()
    env = Env(checker=checker)
    proto, t = env.connect()
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    proto.connectionLost(None)
    _creds, d = checker.pending.pop()
    d.callback(b"joe@example.org")
    assert not env.store.is_locked("joe@example.org")
    assert t.value().count(b"\r\n") == 2  # the greeting and USER's +OK: nothing more


def test_autologout_of_a_reader_that_stopped_reading_is_an_abort():
    # a polite close would wait for a buffer that never drains, with the
    # mailbox locked for CLOSE_GRACE more
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    env.clock.advance(601)
    assert t.disconnected  # aborted, not closed politely
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")


def test_the_hub_stopping_says_err_to_an_idle_pop3_session_and_closes_it_politely():
    # it was cut with a reset (abortConnection): clients reported a network
    # failure.  Now -ERR [SYS/TEMP] (RESP-CODES is in CAPA), then a FIN;
    # nothing deleted, and the stop waits for the connection to be gone
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    assert b"RESP-CODES" in talk(proto, t, b"CAPA\r\n")
    talk(proto, t, b"DELE 1\r\n")
    t.clear()
    stopped = proto.factory.shut_down()
    assert t.value() == b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n"
    assert t.disconnecting and not t.disconnected  # loseConnection, not an abort
    # what the client sends meanwhile is read and dropped: a QUIT too
    assert talk(proto, t, b"QUIT\r\n") == b""
    assert not stopped.called and env.store.is_locked("joe@example.org")
    proto.connectionLost(None)
    assert stopped.called
    assert env.store.messages("joe@example.org") == [b"a\n"]
    assert not env.store.is_locked("joe@example.org")


def test_the_hub_stopping_cuts_a_pop3_close_the_client_does_not_take():
    env = Env()
    proto, t = login(env)
    stopped = proto.factory.shut_down()
    assert t.disconnecting and not t.disconnected
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected and not stopped.called
    proto.connectionLost(None)
    assert stopped.called


def _read_all(proto, t) -> bytes:
    """What a client reading everything gets, the transport draining each
    time it pauses the session (as a socket whose peer reads)."""
    received = bytearray()
    for _ in range(1000):  # bounded: a session that never ends its answer fails
        if not (proto._write_paused or proto._stream is not None) or t.disconnected:
            break
        received += t.value()
        t.clear()
        proto.resumeProducing()
    return bytes(received + t.value())


def test_the_hub_stopping_lets_a_message_being_sent_finish_then_says_err():
    # a session in the middle of a RETR was cut with a reset: the client
    # lost the message it was reading (and fetched it whole again next
    # time).  Now the answer is finished, then -ERR [SYS/TEMP] and a FIN;
    # the DELE and QUIT pipelined behind it are never handled
    env = Env()
    msg = b"".join(b".line %d of the message\n" % i for i in range(20000))
    env.store.add("joe@example.org", msg)
    proto, t = login(env, limit=CHUNK_SIZE)
    t.clear()
    proto.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert proto._stream is not None and proto._write_paused
    stopped = proto.factory.shut_down()
    assert not t.disconnecting and not stopped.called
    assert talk_more(proto, t, b"QUIT\r\n") == b""  # read and dropped meanwhile
    received = _read_all(proto, t)
    size = crlf_size_of(msg)
    assert received == (f"+OK {size} octets\r\n".encode() + encode_whole(msg)
                        + R.SHUTTING_DOWN.to_bytes())
    assert t.disconnecting and not t.disconnected  # a FIN, not a reset
    assert not stopped.called and env.store.is_locked("joe@example.org")
    proto.connectionLost(None)
    assert stopped.called
    assert env.store.messages("joe@example.org") == [msg]  # no UPDATE state
    assert not env.store.is_locked("joe@example.org")


def talk_more(proto, t, data: bytes) -> bytes:
    """``data`` from the client; what it made the session write (the
    transport's buffer kept)."""
    before = len(t.value())
    proto.dataReceived(data)
    return t.value()[before:]


def test_the_hub_stopping_lets_a_long_list_be_read_then_says_err():
    # LIST of a large mailbox is one write the client has not read yet
    # (the session paused): it was dropped with the reset
    env = Env()
    for i in range(3000):
        env.store.add("joe@example.org", b"m%d\n" % i)
    proto, t = login(env, limit=CHUNK_SIZE // 4)
    t.clear()
    proto.dataReceived(b"LIST\r\nUIDL\r\nQUIT\r\n")
    assert proto._write_paused
    listed = t.value()
    assert listed.startswith(b"+OK 3000 messages") and listed.endswith(b"\r\n.\r\n")
    stopped = proto.factory.shut_down()
    assert not t.disconnecting
    t.limit = None
    assert _read_all(proto, t) == listed + R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.disconnected
    proto.connectionLost(None)
    assert stopped.called and len(env.store.messages("joe@example.org")) == 3000


def _retr_under_way():
    """A session sending a RETR of five chunks to a client that took one
    chunk's room (the rest waits in the hub), what it sent so far cleared."""
    env = Env()
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    t.clear()
    return env, proto, t


def test_the_hub_stopping_cuts_an_answer_not_over_after_its_grace(log_events):
    # a client that does not read: the lock must not outlive the stop
    env, proto, t = _retr_under_way()
    stopped = proto.factory.shut_down()
    env.clock.advance(pop3_protocol.STOP_ANSWER_GRACE - 0.5)
    assert not t.disconnected and not stopped.called
    env.clock.advance(0.5)
    assert t.disconnected and b"-ERR" not in t.value()  # cut, as without the grace
    assert "POP3: 127.0.0.1 cut as the hub stops: its answer was not over after 5s" in [
        formatEvent(e) for e in log_events]
    assert not stopped.called
    proto.connectionLost(None)
    assert stopped.called and not env.store.is_locked("joe@example.org")
    assert env.clock.getDelayedCalls() == []


def test_no_autologout_of_a_session_the_stops_grace_cut(log_events):
    # cut (an abort, not a polite close) for a client that does not read:
    # until its end comes the autologout timer still ran, and logged the
    # session out again (and aborted it again)
    env, proto, t = _retr_under_way()
    proto.factory.shut_down()
    env.clock.advance(pop3_protocol.STOP_ANSWER_GRACE)
    assert t.disconnected
    env.clock.advance(proto.settings.idle_timeout)
    env.clock.advance(0)
    assert _autologout_lines(log_events) == []
    proto.connectionLost(None)


def test_a_second_stop_during_an_answer_keeps_the_first_stops_grace():
    # stopped again before the answer is over (a listener restarted and
    # stopped at once): the session is waited for by both stops, cut at
    # the first's grace, and leaves no second timer behind
    env, proto, t = _retr_under_way()
    first = proto.factory.shut_down()
    env.clock.advance(1)
    proto.factory.doStart()
    second = proto.factory.shut_down()
    assert len([c for c in env.clock.getDelayedCalls() if c.func.__name__ == "_drain_cut"]) == 1
    env.clock.advance(pop3_protocol.STOP_ANSWER_GRACE - 1)
    assert t.disconnected and not first.called and not second.called
    proto.connectionLost(None)
    assert first.called and second.called
    assert env.clock.getDelayedCalls() == []


def test_a_session_closing_in_its_answers_grace_keeps_its_close_grace(log_events):
    # the client ends its TLS session as it reads on, late in the answer's
    # grace (seen at resumeProducing): its polite close gets the close's
    # grace whole, the answer's timer does not cut it nor log it as an
    # answer not over
    env, proto, t = _retr_under_way()
    stopped = proto.factory.shut_down()
    env.clock.advance(pop3_protocol.STOP_ANSWER_GRACE - 1)
    with mock.patch.object(pop3_protocol, "closed_under_us", lambda transport: True):
        proto.resumeProducing()
    assert t.disconnecting and not t.disconnected
    env.clock.advance(1)  # the answer's grace is over
    assert not t.disconnected
    assert not [e for e in log_events if "its answer was not over" in formatEvent(e)]
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE - 1)
    assert t.disconnected  # the close's own cut
    proto.connectionLost(None)
    assert stopped.called and env.clock.getDelayedCalls() == []


def test_the_hub_stopping_gives_a_finished_answer_its_close_grace_only():
    # the answer over, the polite close is cut STOP_CLOSE_GRACE later
    # (a client that read the message but does not close)
    env = Env()
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    stopped = proto.factory.shut_down()
    env.clock.advance(1)
    assert _read_all(proto, t).endswith(b"\r\n.\r\n" + R.SHUTTING_DOWN.to_bytes())
    [cut] = [c for c in env.clock.getDelayedCalls() if c.func.__name__ == "_cut"]
    assert cut.getTime() - env.clock.seconds() == pop3_protocol.STOP_CLOSE_GRACE
    assert not [c for c in env.clock.getDelayedCalls() if c.func.__name__ == "_drain_cut"]
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected
    proto.connectionLost(None)
    assert stopped.called


def test_a_session_the_stop_ends_keeps_its_close_grace_when_the_listener_restarts(log_events):
    # the listener listening again (a quick restart of an embedded hub)
    # before an answer under way at the stop was over: its close, made
    # then, waited CLOSE_GRACE (30 s) instead of STOP_CLOSE_GRACE, and the
    # old stop with it, and its end was logged as a client that left
    env = Env()
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    stopped = proto.factory.shut_down()
    proto.factory.startFactory()  # listening again
    assert _read_all(proto, t).endswith(b"\r\n.\r\n" + R.SHUTTING_DOWN.to_bytes())
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected
    proto.connectionLost(None)
    assert stopped.called and not env.store.is_locked("joe@example.org")
    assert "POP3 joe@example.org from 127.0.0.1 closed as the hub stops: nothing deleted" in [
        formatEvent(e) for e in log_events]


def test_a_session_finishing_its_answer_at_the_stop_reads_on_past_its_input_limit():
    # a client not reading its answers has its commands held, and reading
    # stops at INPUT_LIMIT of them.  The stop reads on (what comes is
    # dropped) so that a client that hangs up, or ends its TLS session, is
    # seen at once and its mailbox lock goes; but the next pause of the
    # answer still under way stopped reading again, until the grace's cut
    env = Env()
    env.store.add("joe@example.org", b"x" * (CHUNK_SIZE * 5))
    proto, t = login(env, limit=CHUNK_SIZE)
    talk(proto, t, b"RETR 1\r\n")
    proto.dataReceived(b"NOOP\r\n" * (INPUT_LIMIT // 6 + 1))
    assert t.producerState == "paused"
    stopped = proto.factory.shut_down()
    assert t.producerState == "producing"
    t.clear()
    proto.resumeProducing()  # the client read some: the next chunks fill the buffer again
    assert proto._write_paused and proto._stream is not None
    assert t.producerState == "producing"
    proto.dataReceived(b"NOOP\r\n" * 1000)  # dropped, not held
    assert proto.engine.buffered < INPUT_LIMIT + 6
    proto.connectionLost(None)  # the client hung up
    assert stopped.called and not env.store.is_locked("joe@example.org")


def test_a_tls_client_ending_its_session_while_its_answer_is_finished_at_the_stop(tls_files):
    # the same over POP3S: the close_notify of a client that stops reading
    # and ends its TLS session was not read until the grace's cut (5 s of
    # its mailbox lock); now the TLS layer sees it, and the session goes
    # at the next look (CLOSED_CHECK)
    env, client = pop3s_logged_in(tls_files, (b"y" * 76 + b"\n") * 20000)
    client.send(b"RETR 1\r\n" + b"NOOP\r\n" * (INPUT_LIMIT // 6 + 1))
    env.clock.advance(0)
    sock = client.socket
    assert sock.producerPaused and not sock.reading()
    stopped = client.server.wrappedProtocol.factory.shut_down()
    for _ in range(3):  # the client reads some, not all, of the message
        sock.room = 100_000
        sock.flush()
        env.clock.advance(0)
    sock.room = 0
    sock.sent.clear()
    assert sock.producerPaused and sock.reading()
    client.close_notify()
    env.clock.advance(pop3_protocol.CLOSED_CHECK)
    assert sock.lost is not None and stopped.called
    assert not env.store.is_locked("joe@example.org")
    assert env.clock.getDelayedCalls() == []


def test_a_quick_restart_of_a_pop3_listener_ends_its_stop(log_events):
    # stopService then startService in one go (an embedded hub restarted):
    # the new port starts before the old one is closed, so Twisted calls
    # no startFactory, and the factory stayed "stopping" for the whole new
    # run: a client that left was logged as closed by the hub's stop (and
    # its measured sizes not kept).  A session the stop had left to its
    # deletions keeps the stop's close grace all the same.
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    factory = POP3Factory(env.components)
    factory.doStart()  # listening

    def connect():
        proto = factory.buildProtocol(LOOPBACK)
        t = Transport(LOOPBACK)
        proto.makeConnection(t)
        return proto, t

    old, t_old = connect()
    talk(old, t_old, b"USER joe\r\nPASS joepw\r\nDELE 1\r\n")
    held = _hold_deletions(old)
    talk(old, t_old, b"QUIT\r\n")
    stopped = factory.shut_down()
    factory.doStart()  # listening again, the old port not closed yet
    factory.doStop()  # the old port closed
    assert not factory.stopping
    held.callback(None)
    assert t_old.value() == R.bye_updated(0).to_bytes()
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t_old.disconnected
    old.connectionLost(None)
    assert stopped.called
    new, t_new = connect()
    talk(new, t_new, b"USER ann\r\nPASS annpw\r\n")
    new.connectionLost(None)
    assert "POP3 ann@example.org from 127.0.0.1 left without QUIT: nothing deleted" in [
        formatEvent(e) for e in log_events]


def _hold_deletions(proto):
    """Make ``proto``'s mailbox delete only when the returned Deferred is
    fired (the unlinks running on a worker thread meanwhile)."""
    held = defer.Deferred()
    real = proto.mailbox.delete
    proto.mailbox.delete = lambda indices: held.addCallback(lambda _: real(indices))
    return held


def test_the_hub_stopping_waits_for_the_deletions_of_a_quit_under_way():
    # RFC 1939 6: the deletions of the UPDATE state run on a worker
    # thread; the stop fired (and the hub gave its state directory up)
    # while they still ran.  Now it waits for them and for the
    # connection; the client still gets its +OK.
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b\n")
    proto, t = login(env)
    other, t2 = login(env, user=b"ann", pw=b"annpw")
    factory = proto.factory
    other.factory.sessions.discard(other)  # the same listener as proto's
    other.factory = factory
    factory.sessions.add(other)
    talk(proto, t, b"DELE 1\r\n")
    held = _hold_deletions(proto)
    assert talk(proto, t, b"QUIT\r\n") == b""
    stopped = factory.shut_down()
    assert isinstance(stopped, defer.Deferred)
    assert t2.disconnecting  # the other session is told -ERR and closed
    assert t2.value().endswith(R.SHUTTING_DOWN.to_bytes())
    assert not t.disconnecting  # this one is left to its deletions
    other.connectionLost(None)
    assert not stopped.called
    held.callback(None)
    assert t.value() == R.bye_updated(1).to_bytes()
    assert env.store.messages("joe@example.org") == [b"b\n"]
    assert not env.store.is_locked("joe@example.org")
    assert t.disconnecting  # closed politely, and cut soon: the stop waits for it
    [cut] = [c for c in env.clock.getDelayedCalls() if c.func.__name__ == "_cut"]
    assert cut.getTime() - env.clock.seconds() == pop3_protocol.STOP_CLOSE_GRACE
    assert not stopped.called
    proto.connectionLost(None)
    assert stopped.called and factory.updating == set()


def test_the_stop_waits_for_deletions_whose_client_left_and_answers_their_failure():
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    # the client hung up after QUIT: the deletions go on, and the stop waits
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    held = _hold_deletions(proto)
    talk(proto, t, b"QUIT\r\n")
    proto.connectionLost(None)
    stopped = proto.factory.shut_down()
    assert not stopped.called
    held.callback(None)
    assert stopped.called and env.store.messages("joe@example.org") == []
    assert t.value() == b""
    # deletions that fail while the hub stops: -ERR, and the stop goes on
    env.store.add("joe@example.org", b"c\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    held = defer.Deferred()
    proto.mailbox.delete = lambda indices: held
    talk(proto, t, b"QUIT\r\n")
    stopped = proto.factory.shut_down()
    held.errback(OSError(5, "Input/output error"))
    assert t.value() == R.UPDATE_FAILED.to_bytes() and t.disconnecting
    assert not stopped.called
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)  # a client that does not close
    assert t.disconnected
    proto.connectionLost(None)
    assert stopped.called and not env.store.is_locked("joe@example.org")
    # nothing under way: fired at once
    assert proto.factory.shut_down().called


def test_the_stop_shortens_the_close_after_a_quit_already_answered():
    # the deletions done and answered, the polite close still running (a
    # client that does not close): the stop waits 2 seconds, not 30
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    assert talk(proto, t, b"QUIT\r\n") == R.bye_updated(0).to_bytes()
    stopped = proto.factory.shut_down()
    assert not stopped.called and not t.disconnected
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected
    proto.connectionLost(None)
    assert stopped.called


def test_a_bug_after_the_deletions_does_not_hold_the_stop(monkeypatch, log_events):
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    held = _hold_deletions(proto)

    def broken(self, result, action):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pop3_protocol.POP3Protocol, "_updated", broken)
    talk(proto, t, b"QUIT\r\n")
    stopped = proto.factory.shut_down()
    held.callback(None)
    assert t.value() == R.INTERNAL_ERROR.to_bytes() and t.disconnecting
    assert not env.store.is_locked("joe@example.org")
    proto.connectionLost(None)
    assert stopped.called
    assert [e["log_failure"].value.args for e in log_events if "log_failure" in e] == [
        ("a bug",)]


def test_a_quit_after_the_stop_cut_its_session_deletes_nothing():
    # a QUIT the session had not handled yet when the stop cut it (read
    # before the abort took effect, or pipelined for a later turn) must not
    # start deletions that the stop does not wait for
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    talk(proto, t, b"DELE 1\r\n")
    stopped = proto.factory.shut_down()
    assert talk(proto, t, b"QUIT\r\n") == b""
    proto.connectionLost(None)
    assert stopped.called
    assert env.store.messages("joe@example.org") == [b"a\n"]
    assert not env.store.is_locked("joe@example.org")


def test_the_pop3_listeners_stop_fires_once_the_deletions_are_done():
    from txmailhub.service import ListenerService

    env = Env()
    env.store.add("joe@example.org", b"a\n")
    factory = POP3Factory(env.components)
    service = ListenerService(env.clock, "pop3", "tcp:0:interface=127.0.0.1", factory)
    service.startService()
    proto = factory.buildProtocol(LOOPBACK)
    t = Transport(LOOPBACK)
    proto.makeConnection(t)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\nDELE 1\r\n")
    held = _hold_deletions(proto)
    talk(proto, t, b"QUIT\r\n")
    stopped = service.stopService()
    assert isinstance(stopped, defer.Deferred) and not stopped.called
    held.callback(None)
    proto.connectionLost(None)
    assert stopped.called and env.store.messages("joe@example.org") == []


def test_a_login_whose_client_left_before_its_turn_is_not_a_guess(log_events):
    # The checker skips a queued password check whose client has gone
    # (txmailhub.auth.LoginAbandoned): the protocol tells it through the
    # credentials, and the skipped check is neither a failure nor counted.
    from twisted.logger import formatEvent

    from txmailhub.auth import LoginAbandoned

    checker = HeldChecker()
    env = Env(checker=checker, allow_plaintext_auth=True)
    proto, t = env.connect(REMOTE)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    (creds, d), = checker.pending
    assert creds.wanted()
    proto.connectionLost(None)
    assert not creds.wanted()
    d.errback(LoginAbandoned())
    assert proto.factory.login_failures._failures == {}
    lines = [formatEvent(e) for e in log_events if "POP3 login" in formatEvent(e)]
    assert lines == ["POP3 login joe from 192.0.2.7 (USER) not checked: the client left first"]


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"),
                                   IsADirectoryError(21, "Is a directory"),
                                   NotADirectoryError(20, "Not a directory")])
def test_update_refused_for_good_is_sys_perm(error):
    """RFC 1939 6: -ERR when deleted messages could not be removed, and the
    session ends all the same.  RFC 3206 4: a failure that will not go away
    by itself (the hub may not remove files in that folder) is [SYS/PERM],
    as at login: every later QUIT would fail the same way until someone
    fixes it."""
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    proto.mailbox.delete = lambda indices: defer.fail(error)
    talk(proto, t, b"DELE 1\r\n")
    out = talk(proto, t, b"QUIT\r\n")
    assert out == b"-ERR [SYS/PERM] Some deleted messages were not removed\r\n"
    assert t.disconnecting
    assert not env.store.is_locked("joe@example.org")


# -- RFC 6856: messages with UTF-8 header fields -------------------------------

INTL = "From: J\u00f6rg <j\u00f6rg@example.org>\nSubject: gr\u00fc\u00dfe\n\nb\u00f6dy\n".encode()


def login_utf8(env, utf8: bool, **kw):
    proto, t = env.connect(**kw)
    if utf8:
        assert talk(proto, t, b"UTF8\r\n") == R.UTF8_ENABLED.to_bytes()
    out = talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    syncer = env.components.syncer
    if isinstance(syncer, HeldCalls) and syncer.jobs:
        # sizes measured on a worker thread before the +OK (more than
        # INLINE_OCTETS stored): the jobs run, as the worker would
        syncer.run()
        out = t.value()
    assert out.startswith(R.USER_ACCEPTED.to_bytes() + b"+OK Logged in")
    return proto, t


def downgraded(msg: bytes) -> bytes:
    """``msg`` with its header section downgraded (RFC 6857)."""
    end = header_end(msg)
    end = len(msg) if end is None else end
    return downgrade_header(msg[:end]) + msg[end:]


def test_a_message_with_utf8_headers_goes_downgraded_without_utf8(log_events):
    env = Env()
    env.store.add("joe@example.org", INTL)
    env.store.add("joe@example.org", "Subject: plain\n\nb\u00f6dy\n".encode())
    env.store.add("joe@example.org", b"Subject: gr\xfc\xdfe\n\nlatin-1\n")
    proto, t = login_utf8(env, utf8=False)
    down = downgraded(INTL)
    assert down.split(b"\n\n")[0].isascii() and down.endswith("\n\nb\u00f6dy\n".encode())
    size = crlf_size_of(down)
    assert size != crlf_size_of(INTL)
    # RFC 1939: LIST and STAT give the octets RETR sends, to this client
    assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % size
    others = crlf_size_of("Subject: plain\n\nb\u00f6dy\n".encode()) + crlf_size_of(
        b"Subject: gr\xfc\xdfe\n\nlatin-1\n")
    assert talk(proto, t, b"STAT\r\n") == b"+OK 3 %d\r\n" % (size + others)
    assert talk(proto, t, b"RETR 1\r\n") == b"+OK %d octets\r\n" % size + encode_whole(down)
    assert talk(proto, t, b"TOP 1 0\r\n") == R.TOP_FOLLOWS.to_bytes() + encode_whole(
        down.split(b"\n\n")[0] + b"\n\n")
    # an UTF-8 body, or 8-bit header octets that are not UTF-8, go as ever
    assert talk(proto, t, b"RETR 2\r\n").endswith("b\u00f6dy\r\n.\r\n".encode())
    assert talk(proto, t, b"RETR 3\r\n").endswith(b"Subject: gr\xfc\xdfe\r\n\r\nlatin-1\r\n.\r\n")
    assert talk(proto, t, b"UTF8\r\n") == R.wrong_state("UTF8", "TRANSACTION").to_bytes()
    box = proto.mailbox
    talk(proto, t, b"QUIT\r\n")
    assert [m.seen for m in box.list_messages()] == [True, True, True]
    assert any("downgraded" in str(e.get("log_format")) and e["number"] == 1
               for e in log_events)


def one_turn(clock: MemoryReactorClock) -> None:
    """Run the calls due now, not the ones they schedule for "now" in turn
    (``Clock.advance(0)`` runs those too: every turn of a batch at once)."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def test_downgraded_messages_are_sent_one_per_reactor_turn():
    # A downgrade costs some 40 ms per 64 KiB of UTF-8 header fields, on
    # the reactor thread.  A client that pipelined RETRs of such a message
    # (and read fast) had COMMANDS_PER_TURN of them done in one turn: on a
    # live hub, another client's CAPA waited 17 s.  One a turn now, other
    # commands (and messages with nothing to downgrade) as before.
    env = Env()
    env.store.add("joe@example.org", INTL)
    env.store.add("joe@example.org", b"Subject: plain\n\nbody\n")
    env.store.add("joe@example.org", INTL + b"x" * CHUNK_SIZE)  # streamed
    proto, t = login_utf8(env, utf8=False)
    whole = encode_whole(downgraded(INTL))
    t.clear()
    proto.dataReceived(b"RETR 1\r\n" * 3 + b"NOOP\r\n")
    assert t.value().count(whole) == 1
    other, t2 = login(env, user=b"ann", pw=b"annpw")
    t2.clear()
    other.dataReceived(b"NOOP\r\n")
    assert t2.value() == b"+OK\r\n"  # served in between
    for turn in (2, 3):
        one_turn(env.clock)
        assert t.value().count(whole) == turn
    one_turn(env.clock)
    assert t.value().endswith(whole + b"+OK\r\n")
    t.clear()
    proto.dataReceived(b"RETR 2\r\n" * 3 + b"RETR 3\r\nRETR 3\r\n")  # one turn, then one
    assert t.value().count(b"Subject: plain") == 3
    assert t.value().count(b"xxxx\r\n.\r\n") == 1
    one_turn(env.clock)
    assert t.value().count(b"xxxx\r\n.\r\n") == 2
    assert all(c.getTime() > env.clock.seconds() for c in env.clock.getDelayedCalls())


def test_the_downgraded_size_is_known_before_and_after_retr_and_read_once():
    env = Env()
    env.store.add("joe@example.org", INTL)
    env.store.add("joe@example.org", b"Subject: plain\n\nbody\n")
    proto, t = login_utf8(env, utf8=False)
    opened = []
    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: (opened.append(i), real_open(i))[1]
    size = crlf_size_of(downgraded(INTL))
    listing = b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (
        size + 24, size, 24)
    assert talk(proto, t, b"LIST\r\n") == listing
    assert opened == [0, 1]  # the header of each, once a session
    assert talk(proto, t, b"LIST\r\nSTAT\r\nLIST 1\r\n").startswith(listing)
    assert opened == [0, 1]
    # a new session, RETR first: its status line and LIST agree
    talk(proto, t, b"QUIT\r\n")
    proto, t = login_utf8(env, utf8=False)
    assert talk(proto, t, b"RETR 1\r\n").startswith(b"+OK %d octets\r\n" % size)
    assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % size


def test_a_utf8_client_and_uidl_and_retr_read_no_message_for_sizes():
    env = Env()
    env.store.add("joe@example.org", INTL)
    for utf8 in (True, False):
        proto, t = login_utf8(env, utf8=utf8)
        opened = []
        real_open = proto.mailbox.open_message
        proto.mailbox.open_message = lambda i, o=opened, r=real_open: (o.append(i), r(i))[1]
        if utf8:
            assert talk(proto, t, b"LIST\r\nSTAT\r\n").endswith(
                b"+OK 1 %d\r\n" % crlf_size_of(INTL))
        talk(proto, t, b"UIDL\r\nRETR 1\r\n")
        assert opened == []  # (a small message is read once, with read_message)
        talk(proto, t, b"QUIT\r\n")


def test_uidl_is_the_same_for_a_client_with_utf8_and_one_without():
    # docs/pop3.rst, "Sizes": a client's UIDL of a message with UTF-8
    # header fields is the same whether it gets the message downgraded or
    # as stored (a client that turns UTF8 on, or a second client, must not
    # fetch everything again), and a downgraded RETR does not change it
    env = Env()
    env.store.add("joe@example.org", INTL)
    env.store.add("joe@example.org", b"Subject: ascii\n\nb\n")
    seen = {}
    for utf8 in (True, False):
        proto, t = login_utf8(env, utf8=utf8)
        before = talk(proto, t, b"UIDL\r\n")
        assert talk(proto, t, b"RETR 1\r\n").startswith(b"+OK")
        assert talk(proto, t, b"UIDL\r\n") == before
        seen[utf8] = before
        talk(proto, t, b"RSET\r\nQUIT\r\n")
    assert seen[True] == seen[False]
    assert seen[True].startswith(b"+OK") and seen[True].count(b"\r\n") == 4  # two lines


def test_a_message_with_no_downgraded_form_is_still_refused(log_events):
    env = Env()
    broken = "Subject: x\nGr\u00fc\u00dfe ohne Feldnamen\n\nbody\n".encode()
    env.store.add("joe@example.org", broken)
    proto, t = login_utf8(env, utf8=False)
    assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % crlf_size_of(broken)
    assert talk(proto, t, b"RETR 1\r\n") == R.UTF8_REQUIRED.to_bytes()
    assert talk(proto, t, b"TOP 1 0\r\n") == R.UTF8_REQUIRED.to_bytes()
    # never sent: not marked seen
    assert [m.seen for m in proto.mailbox.list_messages()] == [False]
    assert any("no downgraded form" in str(e.get("log_format")) and e["number"] == 1
               for e in log_events)


def test_a_utf8_header_section_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(pop3_protocol, "DOWNGRADE_HEADER_LIMIT", 2 * CHUNK_SIZE)
    env = Env()
    msg = "Subject: \u00e9\n".encode() + b"X-Long: " + b"a" * (3 * CHUNK_SIZE) + \
        b"\n\nbody\n"
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % crlf_size_of(msg)
    assert retr_streamed(proto, t) == R.UTF8_REQUIRED.to_bytes()
    assert proto._stream is None and not proto._busy


def test_a_utf8_header_section_ending_just_past_the_limit_is_refused(monkeypatch):
    # the header section's end falls in the read that crosses the limit:
    # found, but past it -- no downgraded form either
    monkeypatch.setattr(pop3_protocol, "DOWNGRADE_HEADER_LIMIT", 2 * CHUNK_SIZE)
    env = Env()
    msg = "Subject: \u00e9\n".encode() + b"X-Long: " + b"a" * (2 * CHUNK_SIZE + 100) + \
        b"\n\nbody\n" + b"b" * (2 * CHUNK_SIZE)
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    assert retr_streamed(proto, t) == R.UTF8_REQUIRED.to_bytes()
    assert proto._stream is None and not proto._busy
    assert talk(proto, t, b"TOP 1 0\r\n") == R.UTF8_REQUIRED.to_bytes()
    assert [m.seen for m in proto.mailbox.list_messages()] == [False]

def test_after_utf8_the_message_goes_as_stored():
    env = Env()
    env.store.add("joe@example.org", INTL)
    proto, t = login_utf8(env, utf8=True)
    size = crlf_size_of(INTL)
    assert talk(proto, t, b"RETR 1\r\n") == b"+OK %d octets\r\n" % size + encode_whole(INTL)
    assert talk(proto, t, b"TOP 1 0\r\n") == R.TOP_FOLLOWS.to_bytes() + encode_whole(
        INTL.split(b"\n\n")[0] + b"\n\n")


def retr_streamed(proto, t, command=b"RETR 1\r\n") -> bytes:
    t.clear()
    proto.dataReceived(command)
    while proto._stream is not None:
        proto.resumeProducing()
    return t.value()


def test_large_messages_with_utf8_headers_in_the_first_chunk_or_beyond_it():
    big_body = b"\n" + b"body line\n" * (CHUNK_SIZE // 5)
    first = "Subject: gr\u00fc\u00dfe\n".encode() + big_body
    # the header section is longer than a chunk; its UTF-8 comes after it
    beyond = b"X-Long: " + b"a" * (2 * CHUNK_SIZE) + "\nSubject: \u00e9t\u00e9\n".encode() + \
        big_body
    ascii_long = b"X-Long: " + b"a" * (2 * CHUNK_SIZE) + b"\n" + big_body.replace(
        b"body", "b\u00f6dy".encode())
    for msg, needs in ((first, True), (beyond, True), (ascii_long, False)):
        for utf8 in (False, True):
            env = Env()
            env.store.add("joe@example.org", msg)
            proto, t = login_utf8(env, utf8=utf8)
            out = retr_streamed(proto, t)
            if needs and not utf8:  # downgraded, the body as it is
                down = downgraded(msg)
                assert down != msg and down.split(b"\n\n")[0].isascii()
                assert out == b"+OK %d octets\r\n" % crlf_size_of(down) + encode_whole(down)
                assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % crlf_size_of(down)
                top = retr_streamed(proto, t, b"TOP 1 1\r\n")
                assert top == R.TOP_FOLLOWS.to_bytes() + encode_whole(
                    down.split(b"\n\n")[0] + b"\n\nbody line\n")
            else:  # whole, from its first octet: the scan rewound the file
                assert out == b"+OK %d octets\r\n" % crlf_size_of(msg) + encode_whole(msg)
            assert talk(proto, t, b"NOOP\r\n") == b"+OK\r\n"


def _sent(out: bytes) -> tuple[bytes, bytes]:
    """(status line, the message octets as sent: unstuffed, no terminator)."""
    head, _, rest = out.partition(b"\r\n")
    assert rest.endswith(b".\r\n")
    lines = rest[:-3].split(b"\r\n")
    return head, b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines)


def _boundary_messages():
    subject = "Subject: gr\u00fc\u00dfe\n".encode()
    yield "Subject: gr\u00fc\u00dfe\r\nFrom: a@b\r\n\r\nbody\r\n".encode()  # stored CRLF
    yield subject  # no body
    yield "Subject: gr\u00fc\u00dfe".encode()  # not even a line end
    yield subject + b"\n.dot\n..two\n."
    for length in (pop3_protocol.SIZE_PROBE, pop3_protocol.SIZE_PROBE + 1, CHUNK_SIZE - 1,
                   CHUNK_SIZE, CHUNK_SIZE + 1):
        header = subject + b"X-P: " + b"a" * (length - len(subject) - 6) + b"\n"
        assert len(header) == length
        yield header + b"\n" + b"line\n" * (CHUNK_SIZE // 4)
        yield header + b"\r\n.body\n"
        yield header


@pytest.mark.parametrize("msg", list(_boundary_messages()))
def test_list_stat_retr_and_top_agree_on_a_downgraded_copy(msg):
    """RFC 1939: LIST and STAT give the octets RETR sends (before byte-
    stuffing), whichever comes first, wherever the header section ends
    against the probe and the chunks, and after DELE and RSET."""
    env = Env()
    env.store.add("joe@example.org", msg)
    for retr_first in (False, True):
        proto, t = login_utf8(env, utf8=False)
        if not retr_first:
            listed = int(talk(proto, t, b"LIST 1\r\n").split()[2])
        head, data = _sent(retr_streamed(proto, t))
        if retr_first:
            listed = int(talk(proto, t, b"LIST 1\r\n").split()[2])
        assert head == b"+OK %d octets" % len(data) and listed == len(data)
        assert data.split(b"\r\n\r\n")[0].isascii()
        _, top = _sent(retr_streamed(proto, t, b"TOP 1 0\r\n"))
        assert top.split(b"\r\n\r\n")[0] == data.split(b"\r\n\r\n")[0]
        talk(proto, t, b"DELE 1\r\nRSET\r\n")
        assert talk(proto, t, b"STAT\r\n") == b"+OK 1 %d\r\n" % len(data)
        talk(proto, t, b"QUIT\r\n")


class NoSeek:
    """A message file that can be read and closed only: no seek."""

    def __init__(self, f):
        self._f = f
        self.read = f.read
        self.close = f.close


def test_a_mailbox_whose_files_cannot_seek_is_opened_again():
    env = Env()
    msg = b"X-Long: " + b"a" * (2 * CHUNK_SIZE) + b"\n\nbody\n"
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    opened = []
    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: (opened.append(i), NoSeek(real_open(i)))[1]
    assert retr_streamed(proto, t) == b"+OK %d octets\r\n" % crlf_size_of(msg) + \
        encode_whole(msg)
    assert opened == [0, 0]


def test_a_message_with_parts_from_files_that_cannot_seek_is_refused_without_utf8():
    """Downgrading a message with MIME parts measures it, then sends it
    from where it was: a file of an ``IMailbox`` that cannot seek has no
    second pass, and the message no downgraded form (RFC 6856 5)."""
    env = Env()
    msg = ("Subject: \u00fc\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\n"
           .encode() + b"y\n" * CHUNK_SIZE + b"--b--\n")
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: NoSeek(real_open(i))
    assert retr_streamed(proto, t) == R.UTF8_REQUIRED.to_bytes()
    assert talk(proto, t, b"NOOP\r\n") == b"+OK\r\n"


class HeldCalls:
    """A syncer whose ``call`` jobs run when the test says (``run``): the
    worker threads, held still."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def call(self, f, *args):
        d = defer.Deferred()
        self.jobs.append((d, f, args))
        return d

    def run(self, fail: bool = False) -> None:
        """The jobs asked for so far (those they lead to wait for the next run)."""
        jobs, self.jobs = self.jobs, []
        for d, f, args in jobs:
            if fail:
                d.errback(OSError(5, "I/O error"))
            else:
                d.callback(f(*args))


LONG_INTL = ("Subject: " + "\u00fc" * 400 + "\n").encode() * 200 + b"\nbody\n"


def test_a_long_utf8_header_section_is_downgraded_off_the_reactor_thread():
    # RETR of a message whose UTF-8 header section is longer than a chunk
    # (up to DOWNGRADE_HEADER_LIMIT, 1 MiB) read it and downgraded it on
    # the reactor thread: a second of every session's time per RETR on a
    # live hub.  Now a worker job; the response waits for it, in order.
    env = Env()
    env.components.syncer = HeldCalls()
    env.store.add("joe@example.org", LONG_INTL)
    assert header_end(LONG_INTL) > CHUNK_SIZE
    proto, t = login_utf8(env, utf8=False)
    t.clear()
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    assert t.value() == b"" and len(env.components.syncer.jobs) == 1
    env.clock.advance(proto.settings.idle_timeout)  # the client waits for us: no autologout
    assert not t.disconnecting
    env.components.syncer.run()
    down = downgraded(LONG_INTL)
    assert t.value() == b"+OK %d octets\r\n" % crlf_size_of(down) + encode_whole(down) + \
        b"+OK\r\n"
    # a client gone meanwhile: the file is closed, nothing is sent
    proto.dataReceived(b"TOP 1 0\r\n")
    [(_, _, (_, f, *_))] = env.components.syncer.jobs
    proto.connectionLost(None)
    t.clear()
    env.components.syncer.run()
    assert f.closed and t.value() == b""


def test_a_downgrade_job_of_a_client_gone_meanwhile_does_nothing(monkeypatch):
    # The job may wait its turn (WORKER_JOBS) and a client that hangs up
    # has its mailbox lock released at once: logging in, RETR of such a
    # message and hanging up, again and again, queued a 1 MiB read and a
    # second of downgrading per connection for nobody, ahead of every other
    # session's job.  The other jobs (sizes, header scans) already stop.
    env = Env()
    env.components.syncer = HeldCalls()
    env.store.add("joe@example.org", LONG_INTL)
    proto, t = login_utf8(env, utf8=False)
    downgrades = []
    real = pop3_protocol.downgrade_header
    monkeypatch.setattr(pop3_protocol, "downgrade_header",
                        lambda header: (downgrades.append(len(header)), real(header))[1])
    proto.dataReceived(b"RETR 1\r\n")
    [(_, _, (_, f, *_))] = env.components.syncer.jobs
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")
    t.clear()
    env.components.syncer.run()
    assert downgrades == [] and f.closed and t.value() == b""
    # a session still there gets its message, downgraded, as before
    proto, t = login_utf8(env, utf8=False)  # its sizes measured: one downgrade
    t.clear()
    proto.dataReceived(b"RETR 1\r\n")
    env.components.syncer.run()
    assert len(downgrades) == 2
    assert t.value().startswith(b"+OK %d octets\r\n" % crlf_size_of(downgraded(LONG_INTL)))


def test_the_sessions_worker_jobs_take_turns(monkeypatch):
    # Each such downgrade is a second and 30-50 MB on a worker thread;
    # four users fetching them held every worker (the SMTP side's spool
    # files and, without AIO, its fsyncs waited) and four copies' memory.
    # The hub's POP3 sessions together have WORKER_JOBS on the workers.
    monkeypatch.setattr(pop3_protocol, "WORKER_JOBS", 2)
    users = {f"u{i}@example.org": b"pw" for i in range(3)}
    env = Env(checker=InMemoryUsernamePasswordDatabaseDontUse(**users))
    env.components.syncer = HeldCalls()
    sessions = []
    for i in range(3):
        env.store.add(f"u{i}@example.org", LONG_INTL)
        proto, t = env.connect()
        talk(proto, t, b"USER u%d\r\nPASS pw\r\n" % i)
        env.components.syncer.run()  # the login's size job
        assert b"+OK Logged in" in t.value()
        sessions.append((proto, t))
    for proto, t in sessions:
        t.clear()
        proto.dataReceived(b"RETR 1\r\n")
    assert len(env.components.syncer.jobs) == 2  # the third waits its turn
    assert [t.value() for _, t in sessions] == [b"", b"", b""]
    env.components.syncer.run()  # two done: the third goes to the workers
    assert len(env.components.syncer.jobs) == 1
    env.components.syncer.run()
    down = downgraded(LONG_INTL)
    expected = b"+OK %d octets\r\n" % crlf_size_of(down) + encode_whole(down)
    assert [t.value() for _, t in sessions] == [expected] * 3


def test_a_login_measuring_long_utf8_headers_takes_turns_with_other_jobs(monkeypatch):
    # SIZE_JOB (2,000) messages a job is a moment for ASCII header sections,
    # but some 0.75 s each where one is 1 MiB of UTF-8 fields to downgrade
    # (anyone may send them): one login's job held one of the hub's
    # WORKER_JOBS for minutes, two such logins every other session's login
    # and long RETR.  Past SIZE_JOB_SECONDS the rest is a job of its own,
    # behind those that waited meanwhile.
    monkeypatch.setattr(pop3_protocol, "WORKER_JOBS", 1)
    clock = [0.0]
    monkeypatch.setattr(pop3_protocol, "_now", lambda: clock[0], raising=False)
    real = pop3_protocol.downgrade_header

    def slow_downgrade(header):  # a second of the worker's time each
        clock[0] += 1.0
        return real(header)

    monkeypatch.setattr(pop3_protocol, "downgrade_header", slow_downgrade)
    env = Env()
    syncer = env.components.syncer = HeldCalls()
    for _ in range(3):
        env.store.add("joe@example.org", LONG_INTL)
    env.store.add("ann@example.org", b"Subject: plain\n\n" + b"x" * 70000 + b"\n")
    joe, joe_t = env.connect()
    talk(joe, joe_t, b"USER joe\r\nPASS joepw\r\n")
    ann, ann_t = env.connect()
    talk(ann, ann_t, b"USER ann\r\nPASS annpw\r\n")
    assert len(syncer.jobs) == 1  # joe's; ann's waits its turn
    syncer.run()  # joe's first message, then the turn is over
    assert b"Logged in" not in joe_t.value()
    syncer.run()  # ann's job, before the rest of joe's
    assert b"+OK Logged in" in ann_t.value() and b"Logged in" not in joe_t.value()
    while syncer.jobs:
        syncer.run()
    size = crlf_size_of(downgraded(LONG_INTL))
    assert b"+OK Logged in" in joe_t.value()
    assert talk(joe, joe_t, b"STAT\r\n") == b"+OK 3 %d\r\n" % (3 * size)
    assert clock[0] == 3.0  # each message measured once, none on the reactor thread


def large_mailbox_login(monkeypatch):
    """A mailbox over ``INLINE_SIZES`` (set to 1) of an internationalized
    message and a plain one, a syncer whose jobs wait for the test, and a
    connection that has not logged in yet."""
    monkeypatch.setattr(pop3_protocol, "INLINE_SIZES", 1)
    env = Env()
    env.components.syncer = HeldCalls()
    env.store.add("joe@example.org", INTL)
    env.store.add("joe@example.org", b"Subject: plain\n\nbody\n")
    proto, t = env.connect()
    return env, proto, t


def test_a_large_mailbox_has_its_sizes_measured_off_the_reactor_thread(monkeypatch):
    # a client without UTF8 and more than INLINE_SIZES messages: their
    # headers are read in one worker job before the login's +OK, never on
    # the reactor thread (a header read per message stalled every session
    # of the hub on a large mailbox)
    env, proto, t = large_mailbox_login(monkeypatch)
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n") == R.USER_ACCEPTED.to_bytes()
    assert len(env.components.syncer.jobs) == 1  # the +OK waits for it
    opened = []
    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: (opened.append(i), real_open(i))[1]
    t.clear()
    env.components.syncer.run()
    assert t.value().startswith(b"+OK Logged in")
    assert opened == [0, 1]  # in the job
    size = crlf_size_of(downgraded(INTL))
    assert talk(proto, t, b"LIST\r\n") == b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 24\r\n.\r\n" % (
        size + 24, size)
    assert opened == [0, 1]  # nothing more on the reactor thread


def test_a_small_mailbox_of_long_utf8_headers_is_measured_off_the_reactor_thread():
    # Up to INLINE_SIZES messages had their sizes measured on the reactor
    # thread at the first STAT: a downgrade per message, up to a second
    # each for 1 MiB of UTF-8 fields.  Four such messages (anyone may send
    # them) held every session of a live hub for 4.4 s.  Past INLINE_OCTETS
    # stored, the login measures them in a worker job, as for a large box.
    env = Env()
    env.components.syncer = HeldCalls()
    for _ in range(3):
        env.store.add("joe@example.org", LONG_INTL)
    proto, t = env.connect()
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n") == R.USER_ACCEPTED.to_bytes()
    assert len(env.components.syncer.jobs) == 1  # the +OK waits for it
    env.components.syncer.run()
    assert t.value().endswith(b"+OK Logged in, 3 messages (%d octets)\r\n"
                              % (3 * crlf_size_of(LONG_INTL)))
    opened = []
    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: (opened.append(i), real_open(i))[1]
    size = crlf_size_of(downgraded(LONG_INTL))
    assert talk(proto, t, b"STAT\r\n") == b"+OK 3 %d\r\n" % (3 * size)
    assert opened == []  # nothing read on the reactor thread
    # a small mailbox of small messages logs in at once, as before
    env = Env()
    env.components.syncer = HeldCalls()
    env.store.add("joe@example.org", INTL)
    proto, t = env.connect()
    out = talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    assert out.startswith(R.USER_ACCEPTED.to_bytes() + b"+OK Logged in")
    assert env.components.syncer.jobs == []


def test_sizes_not_measured_in_the_job_are_measured_when_needed(monkeypatch, log_events):
    env, proto, t = large_mailbox_login(monkeypatch)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    t.clear()
    env.components.syncer.run(fail=True)
    assert t.value().startswith(b"+OK Logged in")
    assert any("not measured" in str(e.get("log_format")) for e in log_events)
    size = crlf_size_of(downgraded(INTL))
    assert talk(proto, t, b"LIST 1\r\n") == b"+OK 1 %d\r\n" % size


def test_a_client_gone_while_sizes_are_measured_releases_the_mailbox(monkeypatch):
    env, proto, t = large_mailbox_login(monkeypatch)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    assert env.store.is_locked("joe@example.org")
    proto.connectionLost(None)
    env.components.syncer.run()
    assert not env.store.is_locked("joe@example.org")


def test_a_message_with_no_body_is_not_read_whole_to_find_its_header_end():
    # the UTF-8 check reads on to the end of the header section; a message
    # that is all header (no empty line) must not be read whole in one turn
    # of the reactor before anything is sent: no further than a header
    # section that could still be downgraded (DOWNGRADE_HEADER_LIMIT); the
    # rest is read on a worker thread
    env = Env()
    env.components.syncer = HeldCalls()
    line = b"X-Filler: " + b"a" * 70 + b"\n"
    msg = line * (3 * (1 << 20) // len(line))
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    before_rewind = []

    class Counting:
        def __init__(self, f):
            self.f, self.read_so_far, self.rewound = f, 0, False

        def read(self, n=-1):
            data = self.f.read(n)
            if not self.rewound:
                self.read_so_far += len(data)
            return data

        def seek(self, pos, whence=0):
            if not self.rewound:
                before_rewind.append(self.read_so_far)
            self.rewound = True
            return self.f.seek(pos, whence)

        def close(self):
            self.f.close()

    real_open = proto.mailbox.open_message
    proto.mailbox.open_message = lambda i: Counting(real_open(i))
    assert talk(proto, t, b"RETR 1\r\nNOOP\r\n") == b""  # the worker reads on
    [(_, _, (f, _, _))] = env.components.syncer.jobs
    assert f.read_so_far <= pop3_protocol.DOWNGRADE_HEADER_LIMIT + pop3_protocol.CHUNK_SIZE
    env.components.syncer.run()
    while proto._stream is not None:
        proto.resumeProducing()
    out = t.value()
    assert out.startswith(b"+OK %d octets\r\n" % crlf_size_of(msg))  # as stored: ASCII
    assert out.endswith(b"\r\n.\r\n+OK\r\n") and len(out) > len(msg)
    assert before_rewind == [len(msg)]


def test_the_size_job_of_a_client_gone_stops_reading(monkeypatch):
    # its lock is released at once, so a client reconnecting would start
    # another job beside this one each time: the job stops instead of
    # reading every header of the mailbox for nobody
    env, proto, t = large_mailbox_login(monkeypatch)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    opened = []
    mailbox = proto.mailbox
    real_open = mailbox.open_message
    mailbox.open_message = lambda i: (opened.append(i), real_open(i))[1]
    proto.connectionLost(None)
    env.components.syncer.run()
    assert opened == []
    assert not env.store.is_locked("joe@example.org")


@pytest.mark.parametrize("where", ["after the cap", "across the cap"])
def test_utf8_in_a_header_section_past_the_scan_cap_is_still_refused(monkeypatch, where):
    # RFC 6856 5: a client without UTF8 never gets a UTF-8 header section;
    # one over DOWNGRADE_HEADER_LIMIT has no downgraded form, wherever its
    # UTF-8 is -- also past the octets scanned on the reactor thread, or
    # in a character the last read there cut in two
    monkeypatch.setattr(pop3_protocol, "DOWNGRADE_HEADER_LIMIT", 2 * CHUNK_SIZE)
    cut = 3 * CHUNK_SIZE  # where the reads on the reactor thread stop
    line = b"X-Filler: " + b"a" * 69 + b"\n"
    filler = line * (cut // len(line))
    pad = cut - len(filler) - 1 if where == "across the cap" else cut - len(filler) + 100
    msg = filler + b"X: " + b"a" * (pad - 3) + "\u00e9".encode() + b"\n" + line * 10
    if where == "across the cap":
        assert msg[cut - 1:cut + 1] == "\u00e9".encode()
    else:
        assert msg[:cut + 1].isascii()
    env = Env()
    env.store.add("joe@example.org", msg)
    proto, t = login_utf8(env, utf8=False)
    assert retr_streamed(proto, t) == R.UTF8_REQUIRED.to_bytes()
    assert proto._stream is None and not proto._busy


def long_header_login(monkeypatch):
    """A client without UTF8 logged in to one message that is all header
    section, longer than the reactor thread's scan (``DOWNGRADE_HEADER_LIMIT``
    set to two chunks); the syncer's jobs wait for the test."""
    monkeypatch.setattr(pop3_protocol, "DOWNGRADE_HEADER_LIMIT", 2 * CHUNK_SIZE)
    env = Env()
    env.components.syncer = HeldCalls()
    line = b"X-Filler: " + b"a" * 69 + b"\n"
    env.store.add("joe@example.org", line * (5 * CHUNK_SIZE // len(line)))
    proto, t = login_utf8(env, utf8=False)
    return env, proto, t


def test_a_client_gone_while_the_header_section_is_scanned(monkeypatch):
    env, proto, t = long_header_login(monkeypatch)
    assert talk(proto, t, b"RETR 1\r\n") == b""
    [(_, _, (f, _, gone))] = env.components.syncer.jobs
    proto.connectionLost(None)
    assert gone()  # the worker stops reading
    env.components.syncer.run()
    assert f.closed and t.value() == b""
    assert not env.store.is_locked("joe@example.org")


def test_a_read_error_while_the_header_section_is_scanned_is_answered(monkeypatch):
    env, proto, t = long_header_login(monkeypatch)
    assert talk(proto, t, b"RETR 1\r\nNOOP\r\n") == b""
    [(_, _, (f, _, _))] = env.components.syncer.jobs
    env.components.syncer.run(fail=True)
    assert t.value() == R.MESSAGE_READ_FAILED.to_bytes() + b"+OK\r\n"
    assert f.closed and not proto._busy


def test_a_large_mailbox_is_measured_in_jobs_of_size_job_messages(monkeypatch):
    # one job for a huge mailbox would keep a worker thread from every
    # other job (Maildir copies, spool files made ahead) for that long
    monkeypatch.setattr(pop3_protocol, "SIZE_JOB", 1)
    env, proto, t = large_mailbox_login(monkeypatch)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    t.clear()
    env.components.syncer.run()  # the first message
    assert t.value() == b"" and len(env.components.syncer.jobs) == 1
    env.components.syncer.run()  # the second
    assert t.value().startswith(b"+OK Logged in") and not env.components.syncer.jobs
    size = crlf_size_of(downgraded(INTL))
    assert talk(proto, t, b"STAT\r\n") == b"+OK 2 %d\r\n" % (size + 24)


def test_password_checks_take_turns_per_remote_client_and_per_local_connection():
    # as for SMTP AUTH: remote clients take turns by address, and each local
    # connection (a webmail on this machine) has a turn of its own
    from twisted.internet.defer import Deferred

    seen = []

    class Capturing:
        def login(self, credentials, mind, *interfaces):
            seen.append(credentials.client)
            return Deferred()

    env = Env(allow_plaintext_auth=True)
    env.components.portal = Capturing()
    for peer in (LOOPBACK, LOOPBACK, REMOTE, REMOTE):
        proto, t = env.connect(peer=peer)
        talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    local_a, local_b, remote_a, remote_b = seen
    assert remote_a == remote_b == "192.0.2.7"
    assert local_a != local_b and "192.0.2.7" not in (local_a, local_b)


def test_user_pass_tells_the_checker_which_client_asks():
    # the password checks take turns by client (txmailhub.turns): a login
    # names its client as the connection limits do (an IPv6 /64 is one, an
    # IPv4-mapped address is the IPv4 one)
    checker = ClientRecordingChecker({"joe@example.org": b"joepw"})
    env = Env(checker=checker, allow_plaintext_auth=True)
    for peer in (IPv6Address("TCP", "::ffff:192.0.2.9", 1),
                 IPv6Address("TCP", "2001:db8::1", 1)):
        proto, _ = login(env, peer=peer)
        proto.connectionLost(None)
    assert checker.clients == ["192.0.2.9", "2001:db8::/64"]


def test_many_clients_coming_and_going_leave_nothing_behind():
    # a hub runs for months: after connections from thousands of addresses
    # (accepted, refused at accept, gone during a login), the shared counts
    # are empty again and no timer of a closed session is left
    from twisted.internet.address import IPv4Address

    env = Env(max_connections=5, max_connections_per_client=2)
    factories = set()
    for i in range(2000):
        peer = IPv4Address("TCP", f"198.51.{i // 250}.{i % 250}", 40000)
        sessions = [env.connect(peer) for _ in range(3)]  # the third is refused
        sessions[0][0].dataReceived(b"USER joe\r\nPASS wrong\r\n")
        for p, _ in sessions:
            factories.add(p.factory)
            p.connectionLost(None)
    limits = env.components.pop3_connections
    assert limits.connections == 0 and limits.per_client == {}
    assert all(f.sessions == set() for f in factories)
    assert [c for c in env.clock.getDelayedCalls() if c.active()] == []


def test_a_message_another_program_removed_before_list_logs_no_error():
    # the size a client without UTF8 is sent is measured from the file
    # (header section): the message gone since the login is no storage
    # fault at LIST either; RETR will say it is gone
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b\n")
    proto, t = login(env)
    with _log_events() as events:
        proto.mailbox.open_message = _gone
        assert talk(proto, t, b"LIST\r\n") == b"+OK 2 messages (6 octets)\r\n1 3\r\n2 3\r\n.\r\n"
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]


def test_the_log_names_a_message_by_the_number_the_client_gave():
    # "RETR 2" fails: the operator reading the log looks for message 2 in
    # the client's log, not for the hub's index 1
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b\n")
    proto, t = login(env)

    def broken(index, *args):
        raise PermissionError(13, "Permission denied", "/var/mail/joe/cur/x")

    with _log_events() as events:
        proto.mailbox.read_message = _gone
        assert talk(proto, t, b"RETR 2\r\n") == R.MESSAGE_GONE.to_bytes()
        proto.mailbox.read_message = broken
        assert talk(proto, t, b"RETR 2\r\n") == R.MESSAGE_READ_FAILED.to_bytes()
    said = [formatEvent(e) for e in events if "message" in e.get("log_format", "")]
    assert len(said) == 2
    assert all("message 2 of joe@example.org" in line for line in said), said


def test_list_logs_an_unreadable_message_by_the_number_the_client_sees():
    # LIST measures the sizes a client without UTF8 is sent: a message it
    # cannot read (not one that is gone) is logged by its LIST number
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b\n")
    proto, t = login(env)
    real_open = proto.mailbox.open_message

    def broken(index, *args):
        if index == 1:
            raise PermissionError(13, "Permission denied", "/var/mail/joe/cur/x")
        return real_open(index, *args)

    with _log_events() as events:
        proto.mailbox.open_message = broken
        assert talk(proto, t, b"LIST\r\n") == b"+OK 2 messages (6 octets)\r\n1 3\r\n2 3\r\n.\r\n"
    said = [formatEvent(e) for e in events if "cannot read message" in e.get("log_format", "")]
    assert len(said) == 1 and "message 2 of joe@example.org" in said[0], said


def test_a_message_gone_before_list_is_looked_for_once_per_session():
    # the size of each message is measured once a session: a message
    # another program removed is not looked for again at each LIST
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    env.store.add("joe@example.org", b"b\n")
    proto, t = login(env)
    calls = []

    def gone(index, *args):
        calls.append(index)
        _gone(index, *args)

    proto.mailbox.open_message = gone
    for _ in range(3):
        assert talk(proto, t, b"LIST\r\n") == (
            b"+OK 2 messages (6 octets)\r\n1 3\r\n2 3\r\n.\r\n")
    assert sorted(calls) == [0, 1]


def test_the_hub_stopping_waits_for_a_session_already_closing_with_its_mailbox_locked():
    # an autologout in the TRANSACTION state closes politely (a FIN, up to
    # CLOSE_GRACE) with the mailbox still locked; the stop cut such a
    # session before, and then only shortened its close without waiting
    # for it: the stop was over with the lock still held
    env = Env(idle_timeout=600)
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env)
    env.clock.advance(601)
    assert t.disconnecting and not t.disconnected
    assert env.store.is_locked("joe@example.org")
    stopped = proto.factory.shut_down()
    assert not stopped.called  # the lock is still held
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected  # cut after the stop's grace, not CLOSE_GRACE
    proto.connectionLost(None)
    assert stopped.called
    assert not env.store.is_locked("joe@example.org")


def test_a_login_answered_after_the_hub_stop_cut_its_session_writes_nothing(log_events):
    # the stop ends a session whose login is being checked with the same
    # -ERR [SYS/TEMP] and polite close as an idle one (it was cut with no
    # line); the check's late answer writes nothing after it (it wrote
    # "+OK Logged in" and locked the mailbox), logs no login, and the stop
    # waits for that session to be gone
    checker = HeldChecker()
    env = Env(checker=checker)
    proto, t = env.connect()
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    t.clear()
    stopped = proto.factory.shut_down()
    assert t.value() == R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.disconnected  # loseConnection, not an abort
    creds, d = checker.pending.pop()
    # a check or mailbox lock still to come asks this: no longer wanted
    assert not creds.wanted()
    d.callback(b"joe@example.org")
    assert t.value() == R.SHUTTING_DOWN.to_bytes()
    assert not any(formatEvent(e).startswith("POP3 login joe") for e in log_events)
    assert not env.store.is_locked("joe@example.org")
    assert not stopped.called  # until the cut connection is gone
    proto.connectionLost(None)
    assert stopped.called


@pytest.mark.parametrize(("client_left", "why"), [
    # with the hub's own store, a login whose password check is over after
    # the stop told its session -ERR is refused its turn at the Maildir's
    # lock (its ``wanted`` says no more): the log says the hub stopped,
    # not that a client still connected "left before its turn"
    (False, "the hub stops"),
    # its client went before the check was over: it left, nobody is left
    # to be told of a stop
    (True, "the client left before its turn at the mailbox"),
])
def test_a_login_the_hub_stop_dropped_before_its_maildir_turn_is_logged_by_its_cause(
        tmp_path, log_events, client_left, why):
    from test_pop3_session_memory import InlineSyncer

    from txmailhub.auth import MailRealm
    from txmailhub.store.maildir import MaildirStore

    checker = HeldChecker()
    store = MaildirStore(str(tmp_path / "mail"), "mail.example.org", InlineSyncer())
    components = Components(settings=make_settings(), reactor=MemoryReactorClock(),
                            router=None, store=store, spooler=None,
                            portal=Portal(MailRealm(store), [checker]))
    proto = POP3Factory(components).buildProtocol(LOOPBACK)
    t = Transport(LOOPBACK)
    proto.makeConnection(t)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    t.clear()
    stopped = proto.factory.shut_down()
    assert t.value() == R.SHUTTING_DOWN.to_bytes()
    if client_left:
        proto.connectionLost(None)
    _creds, d = checker.pending.pop()
    d.callback(b"joe@example.org")
    assert t.value() == R.SHUTTING_DOWN.to_bytes() and proto.mailbox is None
    lines = [formatEvent(e) for e in log_events if formatEvent(e).startswith("POP3 login")]
    assert lines == [f"POP3 login joe from 127.0.0.1 (USER) not answered: {why}"]
    if not client_left:
        assert not stopped.called  # the close is waited for still
        proto.connectionLost(None)
    assert stopped.called


def test_the_hub_stop_during_a_failed_login_delay_says_err_and_counts_the_failure_once():
    # the stop cut a session waiting out its failed login's delay with no
    # line; now it gets -ERR [SYS/TEMP] and a polite close, the delayed
    # -ERR never comes, and the failure counted for the address stays one
    env = Env(allow_plaintext_auth=True, auth_failure_delay=3.0)
    proto, t = env.connect(peer=REMOTE)
    talk(proto, t, b"USER joe\r\n")
    assert talk(proto, t, b"PASS wrong\r\n") == b""
    assert len(proto.factory.login_failures._failures["192.0.2.7"]) == 1
    stopped = proto.factory.shut_down()
    assert t.value() == R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.disconnected
    env.clock.advance(3)
    assert t.value() == R.SHUTTING_DOWN.to_bytes()  # no late AUTH_FAILED
    assert len(proto.factory.login_failures._failures["192.0.2.7"]) == 1
    assert not stopped.called
    env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
    assert t.disconnected  # the close is bounded
    proto.connectionLost(None)
    assert stopped.called


# each kind of AUTH PLAIN response that is no SASL response, and how the
# engine ends the exchange on it: at once, or as a failed login of the
# session (acting as another user, after the delay)
def _b64(data: bytes) -> bytes:
    import base64

    return base64.b64encode(data)


MALFORMED_AUTH = [
    (b"AUTH PLAIN !!!\r\n", R.AUTH_BAD_BASE64),
    (b"AUTH PLAIN\r\n \r\n", R.AUTH_BAD_BASE64),
    (b"AUTH PLAIN =\r\n", R.AUTH_BAD_PLAIN),
    # "=" is an empty initial response only (RFC 5034 4); after the "+" it is no base64
    (b"AUTH PLAIN\r\n=\r\n", R.AUTH_BAD_BASE64),
    # and "*" cancels only after the "+": as the initial response it is no base64
    (b"AUTH PLAIN *\r\n", R.AUTH_BAD_BASE64),
    (b"AUTH PLAIN\r\n" + _b64(b"joe\0pw") + b"\r\n", R.AUTH_BAD_PLAIN),
    (b"AUTH PLAIN\r\n" + b"A" * 5000 + b"\r\n", R.SASL_LINE_TOO_LONG),
    (b"AUTH PLAIN " + b"A" * 300 + b"\r\n", R.LINE_TOO_LONG),
    (b"AUTH PLAIN " + b"A" * 5000 + b"\r\n", R.LINE_TOO_LONG),
    (b"AUTH PLAIN " + _b64(b"ann\0joe\0joepw") + b"\r\n", R.AUTH_FAILED),
]


@pytest.mark.parametrize(("commands", "reply"), MALFORMED_AUTH)
def test_a_malformed_auth_response_is_one_failed_login_of_the_address(commands, reply):
    # logged for fail2ban, but the window of the address's failed logins
    # (POP3 and SMTP AUTH together) did not count it, the PLAIN message
    # acting as another user included (a failed login of the session):
    # a client could send garbage between its guesses without end
    env = Env(allow_plaintext_auth=True, auth_failure_delay=1.0)
    proto, t = env.connect(peer=REMOTE)
    out = talk(proto, t, commands)
    if reply is not R.AUTH_FAILED:  # no failed login of the session: no delay
        assert out.endswith(reply.to_bytes())
    env.clock.advance(1)
    assert t.value().split(b"\r\n")[-2] + b"\r\n" == reply.to_bytes()
    assert len(proto.factory.login_failures._failures["192.0.2.7"]) == 1
    failed = reply is R.AUTH_FAILED  # a failed login of the session too, as before
    assert proto.engine.auth_failures == int(failed)


def test_ten_malformed_auth_responses_keep_the_address_out_as_ten_wrong_passwords():
    env = Env(allow_plaintext_auth=True, auth_failure_delay=0.0)
    for _ in range(5):
        proto, t = env.connect(peer=REMOTE)
        talk(proto, t, b"AUTH PLAIN !!!\r\nAUTH PLAIN " + b"A" * 5000 + b"\r\n")
    proto, t = env.connect(peer=REMOTE)
    out = talk(proto, t, b"AUTH PLAIN " + _b64(b"\0joe\0joepw") + b"\r\n")
    assert out == R.LOGIN_THROTTLED.to_bytes()


@pytest.mark.parametrize(("commands", "reply"), MALFORMED_AUTH)
def test_a_malformed_auth_response_from_loopback_is_not_counted(commands, reply):
    env = Env(allow_plaintext_auth=True, auth_failure_delay=1.0)
    proto, t = env.connect()
    talk(proto, t, commands)
    env.clock.advance(1)
    assert t.value().split(b"\r\n")[-2] + b"\r\n" == reply.to_bytes()
    assert proto.factory.login_failures._failures == {}


@pytest.mark.parametrize(("commands", "reply"), MALFORMED_AUTH)
def test_a_malformed_auth_response_of_a_blocked_address_is_not_counted_again(
        log_events, commands, reply):
    # as a login refused for too many failures is not; the PLAIN message
    # acting as another user (a failed login) is refused as such a login,
    # at once, and is no failure of the session (it had its delay and
    # -ERR [AUTH])
    env = Env(allow_plaintext_auth=True, auth_failure_delay=30.0)
    proto, t = env.connect(peer=REMOTE)
    for _ in range(10):
        proto.factory.login_failures.failed("192.0.2.7")
    before = list(proto.factory.login_failures._failures["192.0.2.7"])
    env.clock.advance(1)
    talk(proto, t, commands)  # no clock advance
    expected = R.LOGIN_THROTTLED if reply is R.AUTH_FAILED else reply
    assert t.value().split(b"\r\n")[-2] + b"\r\n" == expected.to_bytes()
    assert list(proto.factory.login_failures._failures["192.0.2.7"]) == before
    assert proto.engine.auth_failures == 0
    malformed = [e for e in log_events if "malformed" in formatEvent(e)]
    assert len(malformed) == (0 if reply is R.AUTH_FAILED else 1)


def test_over_long_lines_sent_while_the_client_does_not_read_stop_the_reading():
    # each one the line reader drops still keeps its first octets (to tell
    # an AUTH PLAIN by): those count toward INPUT_LIMIT, or a client that
    # reads nothing could send such lines without end and the heads, some
    # 300 octets of memory for each, would pile up unanswered
    env = Env()
    env.store.add("joe@example.org", b"x" * 50000 + b"\n")
    proto, t = login(env)
    t.limit = 1000
    proto.dataReceived(b"RETR 1\r\n")
    assert proto._write_paused
    line = b"NOOP " + b"A" * 5000 + b"\r\n"
    sent = 0
    while t.producerState == "producing" and sent < 1000:
        for i in range(0, len(line), 1000):  # as a socket gives it: in pieces
            proto.dataReceived(line[i:i + 1000])
        sent += 1
    assert t.producerState == "paused"
    assert sent <= INPUT_LIMIT // 255 + 1
    assert proto.engine.buffered < INPUT_LIMIT + len(line)


# -- the stop's lingering close (plain TCP) ----------------------------------


def _loopback_session(env, small_buffers: bool = False):
    """A session over Twisted's real TCP transport on a loopback socket,
    with an epoll reactor of its own (not installed) stepped by hand, and
    the client's raw socket (non-blocking, without Nagle's delay: what it
    sends is in the hub's socket when ``send`` returns).  ``small_buffers``:
    the kernel holds little of the hub's replies, the rest waits in
    Twisted's buffer until the client reads."""
    return loopback_session(POP3Factory(env.components), LOOPBACK, small_buffers)


def _logs_in(reactor, client) -> None:
    """The client of a ``_loopback_session`` reads the greeting and logs
    in as joe, reading each answer (lock-step, as most clients do)."""
    assert client_reads(reactor, client, until=b"\r\n").startswith(b"+OK")
    client.sendall(b"USER joe\r\nPASS joepw\r\n")
    assert b"+OK Logged in" in client_reads(reactor, client, until=b"Logged in")


def _pipelined_then_stop(env) -> Iterator[tuple]:
    import select

    with _loopback_session(env) as (proto, t, reactor, client):
        _logs_in(reactor, client)
        # commands queued behind, not read by the hub (the reactor is not
        # stepped) when it stops
        client.sendall(b"NOOP\r\n" * 700)
        assert select.select([t.socket], [], [], 5)[0]
        stopped = proto.factory.shut_down()
        yield proto, t, reactor, client, stopped


def test_a_client_whose_login_is_checked_at_the_stop_reads_the_line_and_the_end():
    # the stop cut such a session with no line (a reset); now the same -ERR
    # and lingering close as an idle one, and the check's late result
    # writes nothing behind it
    import select

    checker = HeldChecker()
    env = Env(checker=checker)
    with _loopback_session(env) as (proto, t, reactor, client):
        assert client_reads(reactor, client, until=b"\r\n").startswith(b"+OK")
        client.sendall(b"USER joe\r\nPASS joepw\r\n")
        for _ in range(50):
            if checker.pending:
                break
            reactor.iterate(0.005)
        assert checker.pending
        client.sendall(b"NOOP\r\n" * 700)  # queued, unread when the hub stops
        assert select.select([t.socket], [], [], 5)[0]
        stopped = proto.factory.shut_down()
        got = reads_to_the_end(reactor, client)
        assert got == R.USER_ACCEPTED.to_bytes() + R.SHUTTING_DOWN.to_bytes() + b"<EOF>"
        _creds, d = checker.pending.pop()
        d.callback(b"joe@example.org")
        assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
        client.close()
        for _ in range(50):
            if stopped.called:
                break
            reactor.iterate(0.005)
        assert stopped.called


def test_a_client_with_commands_queued_at_the_stop_reads_the_line_and_the_end_not_a_reset():
    # a close with input unread is a TCP reset: the client saw ECONNRESET
    # (and could lose the -ERR) instead of the line and the end of stream,
    # or the end of stream and a reset right behind it (Twisted shuts the
    # socket down before it closes it)
    env = Env()
    for _proto, t, reactor, client, stopped in _pipelined_then_stop(env):
        got = reads_to_the_end(reactor, client)
        assert got == b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n<EOF>"
        try:  # read and dropped, not handled
            client.sendall(b"QUIT\r\n" * 500)
        except (BrokenPipeError, ConnectionResetError):  # the socket closed behind the FIN
            pytest.fail("reset after the end of the stream: the hub did not read on")
        for _ in range(20):
            reactor.iterate(0)
        assert t.connected and not stopped.called
        client.close()  # the client closes: so does the hub
        for _ in range(50):
            if stopped.called:
                break
            reactor.iterate(0.005)
        assert stopped.called and not t.connected
        assert not env.store.is_locked("joe@example.org")


def test_the_lingering_close_is_bounded_in_octets_and_time():
    env = Env()
    for _proto, t, reactor, client, stopped in _pipelined_then_stop(env):
        assert client_reads(reactor, client).endswith(b"later\r\n<EOF>")
        for _ in range(pop3_protocol.LINGER_OCTETS // 4096 + 2):  # past the bound
            try:
                client.sendall(b"x" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break  # the hub closed past the bound, input unread: a reset
            reactor.iterate(0)
        for _ in range(50):
            if stopped.called:
                break
            reactor.iterate(0.005)
        assert stopped.called and not t.connected
        assert _proto._linger_left < 0  # not before the bound
    env = Env()
    for _proto, t, reactor, client, stopped in _pipelined_then_stop(env):
        assert client_reads(reactor, client).endswith(b"<EOF>")
        assert t.connected  # lingering: the client has not closed
        env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
        for _ in range(20):
            reactor.iterate(0)
        assert stopped.called and not t.connected



def _answers_unread(env, reactor, client) -> None:
    """Log in and send 4000 NOOPs the client does not read: all answered
    (a turn at a time), the answers left in the buffers."""
    _logs_in(reactor, client)
    client.sendall(b"NOOP\r\n" * 4000)
    for _ in range(200):
        reactor.iterate(0)
        env.clock.advance(0)


def test_a_client_that_shuts_down_its_side_during_the_lingering_close_gets_all_of_it():
    # replies the client has not read yet wait in Twisted's buffer behind
    # the -ERR; the client's end of data (shutdown(SHUT_WR), as nc -N
    # does) then came in while the hub read on, and the session was
    # dropped at once with them: the client read part of its NOOP answers
    # and the end of the stream, no -ERR (a plain close waits for them)
    import socket

    env = Env()
    with _loopback_session(env, small_buffers=True) as (proto, t, reactor, client):
        _answers_unread(env, reactor, client)
        assert not proto.engine.has_line and not proto._write_paused
        assert t.dataBuffer[t.offset:] or t._tempDataLen  # in Twisted's buffer
        stopped = proto.factory.shut_down()
        client.shutdown(socket.SHUT_WR)
        for _ in range(20):
            reactor.iterate(0)
        got = client_reads(reactor, client, turns=2000)
        assert got.endswith(R.SHUTTING_DOWN.to_bytes() + b"<EOF>"), got[-80:]
        assert got.count(b"+OK\r\n") == 4000
        assert stopped.called and not t.connected


def test_a_lingering_close_whose_client_reads_nothing_ends_at_the_stop_close_grace():
    # the -ERR never leaves Twisted's buffer: our sending side is never
    # shut down, and the close is cut at STOP_CLOSE_GRACE all the same
    env = Env()
    with _loopback_session(env, small_buffers=True) as (proto, t, reactor, client):
        _answers_unread(env, reactor, client)
        stopped = proto.factory.shut_down()
        client.sendall(b"QUIT\r\n" * 100)  # read and dropped
        for _ in range(20):
            reactor.iterate(0)
        assert proto._lingering and t.connected and not t._writeDisconnected
        env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
        for _ in range(20):
            reactor.iterate(0)
        assert stopped.called and not t.connected
        assert not env.store.is_locked("joe@example.org")


# -- the hub's other closes linger too (plain TCP) ------------------------------


class HalfClosingTransport(Transport):
    """A Transport that can shut down its sending side alone, as a plain
    TCP one can (``txmailhub.linger.can_linger``)."""

    write_lost = False

    def loseWriteConnection(self):
        self.write_lost = True


def _connect_half_closing(env):
    proto = POP3Factory(env.components).buildProtocol(LOOPBACK)
    t = HalfClosingTransport(LOOPBACK)
    proto.makeConnection(t)
    return proto, t


def _lingers(env, proto, t) -> None:
    """``proto`` closes with a lingering close: bounded by LINGER_SECONDS
    once our end of stream is out, its input dropped, the lock let go at
    its start (the session needs nothing of the mailbox any more)."""
    assert t.write_lost and not t.disconnecting, "closed at once: a reset for a sender"
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    t.clear()
    proto.dataReceived(b"STAT\r\n" * 10)  # read and dropped
    assert t.value() == b"" and not t.disconnecting
    proto.writeConnectionLost()  # our line and end of stream are out
    env.clock.advance(linger.LINGER_SECONDS - 0.5)
    assert not t.disconnecting
    env.clock.advance(0.5)
    assert t.disconnecting  # not the close grace's 30 s
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")


def test_too_many_errors_lingers():
    env = Env(max_errors=2)
    proto, t = _connect_half_closing(env)
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n").endswith(b"\r\n")
    out = talk(proto, t, b"FOO\r\nBAR\r\nNOOP\r\n")
    assert out.endswith(R.TOO_MANY_ERRORS.to_bytes())
    _lingers(env, proto, t)


def test_too_many_commands_before_login_lingers():
    env = Env()
    proto, t = _connect_half_closing(env)
    out = talk(proto, t, b"NOOP\r\n" * 200)
    assert out.endswith(R.TOO_MANY_COMMANDS.to_bytes())
    _lingers(env, proto, t)


def test_the_autologout_lingers():
    env = Env(idle_timeout=600)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    assert env.store.is_locked("joe@example.org")
    env.clock.advance(600)
    env.clock.advance(0)  # the second look
    _lingers(env, proto, t)


def test_too_many_failed_logins_lingers():
    env = Env(max_auth_failures=1, auth_failure_delay=1.0)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS wrong\r\n")
    assert not t.write_lost  # the delay first
    env.clock.advance(1)
    assert t.value().endswith(R.TOO_MANY_AUTH_FAILURES.to_bytes())
    assert t.write_lost and not t.disconnecting
    t.clear()
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")  # read and dropped
    assert t.value() == b"" and proto.mailbox is None
    proto.writeConnectionLost()
    env.clock.advance(linger.LINGER_SECONDS)
    assert t.disconnecting
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")


def test_an_internal_error_lingers():
    env = Env()
    env.portal.realm = _WrongShapeRealm()
    proto, t = _connect_half_closing(env)
    assert talk(proto, t, b"USER joe\r\nPASS joepw\r\n").endswith(
        R.INTERNAL_ERROR.to_bytes())
    assert t.write_lost and not t.disconnecting and proto._lingering
    proto.readConnectionLost()  # the client closes after the line
    assert t.disconnecting


def test_a_client_that_closes_during_it_is_closed_at_once_and_past_linger_octets_too():
    env = Env(max_errors=1)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\nFOO\r\n")
    assert t.write_lost and not t.disconnecting
    proto.readConnectionLost()
    assert t.disconnecting
    proto.connectionLost(None)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\nFOO\r\n")
    assert proto._lingering
    proto.dataReceived(b"x" * pop3_protocol.LINGER_OCTETS)
    assert not t.disconnecting
    proto.dataReceived(b"x")
    assert t.disconnecting


def test_a_quit_closes_at_once():
    env = Env()
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    assert talk(proto, t, b"QUIT\r\n").startswith(b"+OK")
    assert t.disconnecting and not t.write_lost
    proto, t = _connect_half_closing(env)
    assert talk(proto, t, b"QUIT\r\n").startswith(b"+OK")
    assert t.disconnecting and not t.write_lost


def test_a_client_sending_at_too_many_errors_reads_the_line_and_the_end_not_a_reset():
    # a real socket: the max_errors-th -ERR with the client's next commands
    # unread in the hub's socket was followed by a close, which the kernel
    # answers with a reset; the client's next send and its shutdown failed
    # (ECONNRESET, ENOTCONN), and a client that had not read yet could
    # lose the -ERR
    import select

    env = Env(max_errors=1)
    with _loopback_session(env) as (proto, t, reactor, client):
        _logs_in(reactor, client)
        client.sendall(b"FOO\r\n")
        for _ in range(50):
            if proto._closing:
                break
            reactor.iterate(0.005)
        client.sendall(b"NOOP\r\n" * 100)
        assert select.select([t.socket], [], [], 5)[0]
        got = sends_on_then_half_closes(reactor, client)
        assert got == R.TOO_MANY_ERRORS.to_bytes() + b"<EOF>", got
        step_until_closed(reactor, t)
        assert not t.connected and not env.store.is_locked("joe@example.org")


# -- a close the hub decides under TLS (POP3S) ------------------------------------


@contextlib.contextmanager
def _pop3s_session(env, tls_files, **kw) -> Iterator[tuple]:
    """A POP3S session of joe, logged in, over Twisted's TLS layer on a
    real loopback socket (``tls_loopback``) with a stdlib ``ssl`` client:
    ``(factory, proto, t, reactor, client)``."""
    reactor = new_reactor()
    factory = POP3Factory(env.components, implicit_tls=True)
    proto, t, listener, client = tls_loopback(reactor, factory, tls_files, LOOPBACK, **kw)
    try:
        assert tls_reads(reactor, client, until=b"\r\n").startswith(b"+OK")
        client.sendall(b"USER joe\r\nPASS joepw\r\n")
        assert b"+OK Logged in" in tls_reads(reactor, client, until=b"Logged in")
        yield factory, proto, t, reactor, client
    finally:
        close_reactor(reactor)
        client.close()
        listener.close()


def _pop3s_too_many_errors(env, reactor, client, proto) -> None:
    """The max_errors-th -ERR, commands pipelined behind it unread."""
    tls_send(client, b"FOO\r\n" + b"NOOP\r\n" * 100)
    for _ in range(50):
        if proto._closing:
            break
        reactor.iterate(0.005)
    assert proto._closing


def test_a_pop3s_client_still_sending_at_too_many_errors_reads_the_line_and_close_notify(
        tls_files):
    # Twisted's TLS close sends the -ERR and close_notify, then reads on
    # until the client's close_notify or end of stream: no reset (a check)
    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        _pop3s_too_many_errors(env, reactor, client, proto)
        sent = 0
        for _ in range(10):  # still sending, reading nothing
            sent += tls_send(client, b"NOOP\r\n" * 500)
            reactor.iterate(0)
        assert sent == 10 * 3000
        got = tls_reads(reactor, client)
        assert got == R.TOO_MANY_ERRORS.to_bytes() + b"<close_notify>", got
        assert t.connected
        client.unwrap()  # its close_notify: the hub closes
        step_until_closed(reactor, t)
        assert not t.connected and not env.store.is_locked("joe@example.org")


def test_a_pop3s_close_at_the_stop_reads_the_line_and_close_notify(tls_files):
    env = Env()
    with _pop3s_session(env, tls_files) as (factory, _proto, t, reactor, client):
        tls_send(client, b"NOOP\r\n" * 100)  # unread at the stop
        stopped = factory.shut_down()
        for _ in range(10):
            assert tls_send(client, b"NOOP\r\n" * 100) == 600
            reactor.iterate(0)
        got = tls_reads(reactor, client)
        assert got.endswith(R.SHUTTING_DOWN.to_bytes() + b"<close_notify>"), got
        client.close()  # no close_notify: the end of its TCP stream
        for _ in range(50):
            if stopped.called:
                break
            reactor.iterate(0.005)
        assert stopped.called and not t.connected


def test_a_pop3s_close_the_hub_decides_lets_the_mailbox_go_at_its_start(tls_files):
    # as on plain TCP: the lock went with the connection, when the client
    # closed or CLOSE_GRACE (30 s) later; a login of the same user (the
    # client retrying after the -ERR) waited or was told IN-USE
    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        _pop3s_too_many_errors(env, reactor, client, proto)
        assert tls_reads(reactor, client).endswith(b"<close_notify>")
        assert t.connected  # the client has not closed
        assert not env.store.is_locked("joe@example.org")


def test_a_pop3s_lingering_close_reads_at_most_linger_octets(tls_files):
    # what a client sends after the -ERR was decrypted and dropped for as
    # long as the close grace (30 s), without bound
    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        _pop3s_too_many_errors(env, reactor, client, proto)
        sent = tls_sends_on(reactor, client, lambda: not t.connected)
        step_until_closed(reactor, t, turns=20)
        assert not t.connected, f"still reading after {sent} octets"
        assert proto._linger_left < 0


def test_a_pop3s_client_sending_without_reading_past_linger_octets_gets_its_answers_and_line(
        tls_files):
    # answers it has not read and the -ERR wait in Twisted's buffer when
    # it passes LINGER_OCTETS: the abort there threw them away with the
    # close_notify; now reading stops and they go out first
    env = Env(max_errors=1)
    env.store.add("joe@example.org", b"Subject: a\r\n\r\n" + b"body line\r\n" * 4000)
    with _pop3s_session(env, tls_files, small_buffers=True) as (
            _factory, proto, t, reactor, client):
        tls_send(client, b"RETR 1\r\nFOO\r\n")
        sent = tls_sends_on(reactor, client, lambda: proto._linger_left < 0, extra=40)
        assert proto._lingering and proto._linger_left < 0, sent
        got = tls_reads_all(reactor, client, turns=2000)
        assert got.startswith(b"+OK"), got[:100]
        assert got.endswith(R.TOO_MANY_ERRORS.to_bytes() + b"<close_notify>"), got[-200:]
        assert got.count(b"body line") == 4000
        step_until_closed(reactor, t)
        assert not t.connected and not env.store.is_locked("joe@example.org")


def _pop3s_read_the_line_and_close_notify(env, reactor, client, proto, t) -> list[bool]:
    """Too many errors, and a client that reads the -ERR and
    ``close_notify`` and then neither sends nor closes; the aborts of the
    TCP connection from here on are counted."""
    _pop3s_too_many_errors(env, reactor, client, proto)
    got = tls_reads(reactor, client)
    assert got == R.TOO_MANY_ERRORS.to_bytes() + b"<close_notify>", got
    for _ in range(5):
        reactor.iterate(0)
    aborts: list[bool] = []
    abort = t.abortConnection
    t.abortConnection = lambda: (aborts.append(True), abort())
    return aborts


def test_a_pop3s_quiet_client_is_closed_linger_seconds_after_close_notify_is_out(tls_files):
    # as on plain TCP once the half-close is out: the TCP connection under
    # the TLS layer drained our close_notify, and LINGER_SECONDS later it
    # closes (it waited for the close grace's 30 s, holding its slot)
    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        aborts = _pop3s_read_the_line_and_close_notify(env, reactor, client, proto, t)
        assert t.connected and t.producer is None
        env.clock.advance(linger.LINGER_SECONDS - 0.1)
        reactor.iterate(0)
        assert t.connected
        env.clock.advance(0.1)
        step_until_closed(reactor, t)
        assert not t.connected and aborts == []  # a close, not an abort


def test_a_pop3s_client_still_sending_is_not_closed_sooner_than_the_close_grace(tls_files):
    # each read starts the LINGER_SECONDS again: a client still sending
    # (within LINGER_OCTETS) is read from as before, until it has gone
    # quiet that long
    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        aborts = _pop3s_read_the_line_and_close_notify(env, reactor, client, proto, t)
        for _ in range(10):  # 15 s of a command every 1.5 s
            env.clock.advance(1.5)
            assert tls_send(client, b"NOOP\r\n") == 6
            for _ in range(3):
                reactor.iterate(0)
            assert t.connected
        env.clock.advance(linger.LINGER_SECONDS)
        step_until_closed(reactor, t)
        assert not t.connected and aborts == []


def test_at_the_stop_a_quiet_pop3s_client_is_closed_not_reset(tls_files):
    # the stop's grace (STOP_CLOSE_GRACE) ends the close before the
    # watch's LINGER_SECONDS: with the line and close_notify out, it
    # closes the TCP connection as plain TCP's half-close does, no abort
    env = Env()
    with _pop3s_session(env, tls_files) as (factory, proto, t, reactor, client):
        stopped = factory.shut_down()
        got = tls_reads(reactor, client)
        assert got == R.SHUTTING_DOWN.to_bytes() + b"<close_notify>", got
        for _ in range(5):
            reactor.iterate(0)
        assert proto._tls_close is not None and proto._tls_close.out
        aborts: list[bool] = []
        abort = t.abortConnection
        t.abortConnection = lambda: (aborts.append(True), abort())
        env.clock.advance(pop3_protocol.STOP_CLOSE_GRACE)
        step_until_closed(reactor, t)
        assert not t.connected and aborts == [] and stopped.called
        assert not [c for c in env.clock.getDelayedCalls() if c.active()]


def test_a_pop3s_client_whose_tls_record_is_still_arriving_is_not_quiet(tls_files):
    # a client still sending is read from, record by record: one whose
    # record takes longer than LINGER_SECONDS to arrive (a slow link, 16
    # KiB records) decrypts to nothing until it is whole, but its bytes
    # come all the while -- it is not quiet, and no close (a reset for a
    # client still sending) cuts it LINGER_SECONDS after close_notify
    import socket

    env = Env(max_errors=1)
    with _pop3s_session(env, tls_files) as (_factory, proto, t, reactor, client):
        aborts = _pop3s_read_the_line_and_close_notify(env, reactor, client, proto, t)
        # the start of an application data record of 16 KiB, sent raw
        record = b"\x17\x03\x03\x40\x00" + b"\0" * 3995
        for part in range(4):
            env.clock.advance(linger.LINGER_SECONDS * 0.75)
            assert socket.socket.send(client, record[part * 1000:(part + 1) * 1000]) > 0
            for _ in range(3):
                reactor.iterate(0)
            assert t.connected, part
        env.clock.advance(linger.LINGER_SECONDS)  # quiet now: closed
        step_until_closed(reactor, t)
        assert not t.connected and aborts == []


# -- a client's half-close outside the stop (plain TCP) --------------------------

_BIG = b"Subject: big\n\n" + b"a line of the body, long enough to fill a buffer\n" * 6000


def _end_of_client_data(proto) -> None:
    """What Twisted's TCP transport does when the client shuts down its
    sending side: ``readConnectionLost`` where the protocol provides
    ``IHalfCloseableProtocol``, else ``connectionLost``."""
    from twisted.internet.error import ConnectionDone
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.python.failure import Failure

    if IHalfCloseableProtocol.providedBy(proto):
        proto.readConnectionLost()
    else:
        proto.connectionLost(Failure(ConnectionDone()))


def _read_on(proto, t) -> bytes:
    """What a client that reads on after its half-close gets: what is
    written already, then each write the session makes as the transport
    asks it for more, until the session closes (bounded: one that never
    ends fails the test's asserts on what it got)."""
    got = t.value()
    for _ in range(1000):
        if t.disconnecting or proto._lost:
            break
        t.clear()
        proto.resumeProducing()
        got += t.value()
    return got


def test_commands_received_before_a_half_close_are_answered_quit_and_update_included():
    # RFC 1939 6: a QUIT the client sent is the UPDATE state, and the
    # answers under way (a RETR the client reads slowly) are finished; the
    # end of the client's data was taken for a disconnect: the RETR was
    # cut, the DELE never carried out, no +OK for the QUIT
    env = Env()
    env.store.add("joe@example.org", _BIG)
    proto, t = login(env, limit=16 * 1024)
    t.clear()
    proto.dataReceived(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
    assert proto._write_paused  # the client has not read the message yet
    _end_of_client_data(proto)
    got = _read_on(proto, t)
    body = _BIG.replace(b"\n", b"\r\n")
    assert got.startswith(b"+OK ") and body in got
    assert got.endswith(b".\r\n" + R.deleted(1).to_bytes() + R.bye_updated(0).to_bytes())
    assert t.disconnecting and not proto._lost  # a close, with all of it written
    proto.connectionLost(None)
    assert env.store.messages("joe@example.org") == []
    assert not env.store.is_locked("joe@example.org")


def test_a_half_close_behind_a_message_being_sent_with_no_quit_lets_the_lock_go():
    # RFC 1939 6: without a QUIT nothing is deleted.  The client's data
    # ends with no QUIT among the commands behind the answer under way (a
    # RETR it reads slowly): no UPDATE state can come, and the lock goes
    # at once -- it was held until everything was answered, and a login
    # of the same user was told IN-USE meanwhile.  The client, reading on,
    # gets every answer, in order, read through the mailbox kept for them
    # (this one's reads are plain ones: no INoWaitRead)
    commands = b"RETR 1\r\nDELE 1\r\nRETR 2\r\nTOP 1 0\r\nSTAT\r\nLIST\r\n"
    second = b"Subject: b\n\nsecond\n"
    cached = Env()
    cached.store.add("joe@example.org", _BIG)
    cached.store.add("joe@example.org", second)
    proto, t = login(cached)
    t.clear()
    proto.dataReceived(commands)
    expected = t.value()
    assert expected.endswith(b"\r\nsecond\r\n.\r\n" + R.MESSAGE_DELETED.to_bytes() + b"+OK 1 22\r\n"
                             b"+OK 1 message (22 octets)\r\n2 22\r\n.\r\n")
    env = Env()
    env.store.add("joe@example.org", _BIG)
    env.store.add("joe@example.org", second)
    proto, t = login(env, limit=16 * 1024)
    t.clear()
    proto.dataReceived(commands)
    assert proto._write_paused  # the client has not read the message yet
    _end_of_client_data(proto)
    assert not env.store.is_locked("joe@example.org")  # let go at once
    got = _read_on(proto, t)
    assert got == expected
    assert t.disconnecting and not proto._lost  # a close, with all of it written
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 2  # nothing deleted


_HELD_FOR_THE_READER = {
    # what holds the commands behind it back at the client's FIN: the
    # answers it was sent and has not read (its TCP window full: the
    # session's writes paused), a long LIST or UIDL, a small message's RETR
    # (one write, no stream), or the rest of a batch longer than
    # COMMANDS_PER_TURN, waiting for the reactor's next turn
    "long-list": (b"LIST\r\n", 16 * 1024),
    "long-uidl": (b"UIDL\r\n", 16 * 1024),
    "small-retr": (b"RETR 3\r\n", 16 * 1024),
    "next-turn": (b"NOOP\r\n" * COMMANDS_PER_TURN, None),
}


def _held_for_the_reader(held: str, tail: bytes):
    """joe's mailbox of 2,000 messages, the third one of 20 KiB; the
    commands a client sends before its FIN (``RETR 1``, what holds the
    rest back, ``RETR 2``, ``DELE 1``, ``TOP 2 0``, ``STAT``, ``tail``):
    what a session answers to a client that reads it all, and a session
    with those commands held at the FIN, its transport, its mailbox and
    its environment."""
    first, limit = _HELD_FOR_THE_READER[held]
    commands = (b"RETR 1\r\n" + first + b"RETR 2\r\nDELE 1\r\nTOP 2 0\r\nSTAT\r\n"
                + tail)
    answers = []
    for reader in (True, False):
        env = Env()
        for i in range(2000):
            env.store.add("joe@example.org", b"Subject: %d\n\nbody\n" % i
                          if i != 2 else b"Subject: 2\n\n" + (b"x" * 78 + b"\n") * 256)
        proto, t = login(env, limit=None if reader else limit)
        t.clear()
        proto.dataReceived(commands)
        if reader:
            env.clock.advance(0)  # the rest of a long batch, the next turn
            answers.append(t.value())
    return answers[0], env, proto, t


def _reads_the_rest(env, proto, t) -> bytes:
    """``_read_on``, the reactor's next turn first (a long batch's rest)."""
    got = t.value()
    t.clear()
    env.clock.advance(0)
    return got + _read_on(proto, t)


@pytest.mark.parametrize("held", list(_HELD_FOR_THE_READER))
def test_a_half_close_behind_commands_held_for_a_slow_reader_with_no_quit_lets_the_lock_go(
        held):
    # As behind a message being sent (above) or a read waiting for the
    # disk: the client's data ends with commands held back, by answers it
    # has not read yet or for the reactor's next turn, and no QUIT among
    # them.  No UPDATE state can come (RFC 1939 6), and the lock goes at
    # once; it was held until everything was answered -- as long as a
    # client that reads slowly took -- and a login of the same user was
    # told IN-USE meanwhile.  The client still gets every answer, in order,
    # the same bytes; the message it retrieved before its FIN is flagged
    # seen, those answered after it are not, nothing is deleted.
    expected, env, proto, t = _held_for_the_reader(held, b"")
    box = proto.mailbox
    if held == "next-turn":
        assert proto._turn_call is not None and not proto._write_paused
    else:
        assert proto._write_paused and proto._stream is None and not proto._busy
    assert proto.engine.has_line
    _end_of_client_data(proto)
    assert not env.store.is_locked("joe@example.org")  # let go at once
    # (RETR 3 is one of those retrieved before the FIN)
    retrieved = [True, False, held == "small-retr"]
    assert [m.seen for m in box.list_messages()[:3]] == retrieved
    second, _t2 = login(env)  # the same user gets in
    got = _reads_the_rest(env, proto, t)
    assert got == expected
    assert re.search(re.escape(R.deleted(1).to_bytes() + R.TOP_FOLLOWS.to_bytes()
                               + b"Subject: 1\r\n\r\n.\r\n") + rb"\+OK 1999 \d+\r\n\Z", got)
    assert t.disconnecting and not proto._lost  # a close, with all of it written
    proto.connectionLost(None)
    assert second.mailbox is not None and env.store.is_locked("joe@example.org")
    assert len(env.store.messages("joe@example.org")) == 2000  # nothing deleted
    assert [m.seen for m in box.list_messages()[:3]] == retrieved


def test_the_hub_stopping_after_a_half_close_that_let_the_lock_go_treats_the_answers_left_as_any():
    # The client half-closed behind commands it has not read the answers
    # of, having retrieved a message: its seen flag was made as the lock
    # went (the end's changes, counted as an UPDATE under way), and the
    # session stayed among those the stop takes for an UPDATE state to
    # finish: its close only hurried, of which it had none.  The stop
    # waited as long as the client took to read every answer left (a
    # client that reads nothing: until the autologout) instead of giving
    # the answer under way STOP_ANSWER_GRACE, then -ERR and the close,
    # with the commands behind it not handled
    _expected, env, proto, t = _held_for_the_reader("long-list", b"")
    _end_of_client_data(proto)
    assert not env.store.is_locked("joe@example.org")  # let go, the flag made
    stopped = proto.factory.shut_down()
    assert not stopped.called
    env.clock.advance(pop3_protocol.STOP_ANSWER_GRACE)
    assert t.disconnected  # the answer did not end in the grace: cut
    proto.connectionLost(None)
    assert stopped.called


def test_the_hub_stopping_after_a_half_close_that_let_the_lock_go_ends_once_the_answer_is_read():
    # the same, the client reading on: the answer under way (the LIST)
    # whole, then the stop's line and the close; RETR 2 and the rest are
    # not handled, as behind any answer the stop lets finish
    _expected, _env, proto, t = _held_for_the_reader("long-list", b"")
    _end_of_client_data(proto)
    stopped = proto.factory.shut_down()
    got = _read_on(proto, t)
    assert got.endswith(b".\r\n" + R.SHUTTING_DOWN.to_bytes())
    assert R.deleted(1).to_bytes() not in got and b"Subject: 1" not in got
    assert t.disconnecting
    proto.connectionLost(None)
    assert stopped.called


def test_the_hub_stopping_while_the_flags_of_a_half_close_are_made_ends_the_session_after_them(
        monkeypatch):
    # the stop comes while the seen flags made as the lock went (the
    # client's FIN behind answers it has not read) are still on a worker:
    # it waits for them, then the session ends as any the stop finds in
    # the middle of an answer -- it went on answering everything left at
    # the client's pace, the stop waiting for it
    held = defer.Deferred()
    monkeypatch.setattr(pop3_protocol.POP3Protocol, "_end_changes",
                        lambda self, seen, deleted, box=None: held)
    _expected, env, proto, t = _held_for_the_reader("long-list", b"")
    _end_of_client_data(proto)
    assert proto._update_running
    stopped = proto.factory.shut_down()
    held.callback(None)
    assert not env.store.is_locked("joe@example.org") and not stopped.called
    got = _read_on(proto, t)
    assert got.endswith(b".\r\n" + R.SHUTTING_DOWN.to_bytes())
    assert R.deleted(1).to_bytes() not in got
    assert t.disconnecting
    proto.connectionLost(None)
    assert stopped.called


@pytest.mark.parametrize("held", list(_HELD_FOR_THE_READER))
@pytest.mark.parametrize("tail", [b"QUIT\r\n", b"RSET\r\n"])
def test_a_quit_or_an_rset_among_commands_held_for_a_slow_reader_keeps_the_lock(held, tail):
    # A QUIT among the commands held keeps the lock for its UPDATE state;
    # an RSET keeps it when messages retrieved are to be flagged seen (it
    # takes their flags back: made as the lock went, they would be made
    # before it)
    expected, env, proto, t = _held_for_the_reader(held, tail)
    box = proto.mailbox
    _end_of_client_data(proto)
    assert env.store.is_locked("joe@example.org") and proto.mailbox is box
    proto2, t2 = env.connect()
    talk(proto2, t2, b"USER joe\r\n")
    assert talk(proto2, t2, b"PASS joepw\r\n") == R.MAILBOX_IN_USE.to_bytes()
    got = _reads_the_rest(env, proto, t)
    assert got == expected
    assert t.disconnecting
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")
    quit = tail == b"QUIT\r\n"
    assert len(env.store.messages("joe@example.org")) == (1999 if quit else 2000)
    # message 1 deleted, the others retrieved flagged at the QUIT; the
    # RSET took every change back
    assert [m.seen for m in box.list_messages()[:3]] == [
        False, quit, quit and held == "small-retr"]


@pytest.mark.parametrize("sent", [b"DELE 1\r\n", b"DELE 1\r\nQUIT"],
                         ids=["no-quit", "quit-without-line-end"])
def test_a_half_close_after_answered_commands_without_quit_closes_without_update(sent):
    # without a QUIT nothing is deleted (RFC 1939 6); and the end of the
    # client's data is no line end: a "QUIT" it did not end with CRLF is
    # no QUIT
    env = Env()
    env.store.add("joe@example.org", b"Subject: a\n\nx\n")
    proto, t = login(env)
    assert talk(proto, t, sent) == R.deleted(1).to_bytes()
    t.clear()
    _end_of_client_data(proto)
    assert t.value() == b"" and t.disconnecting
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1  # nothing deleted
    assert not env.store.is_locked("joe@example.org")


class _Uncached:
    """A mailbox's ``INoWaitRead`` side for which nothing is cached: every
    read goes to a worker thread."""

    def read_message_nowait(self, index, size):
        raise BlockingIOError


def _hold_message_reads(proto) -> list[tuple]:
    """Every message read of ``proto`` goes to a worker thread (nothing
    cached) and is held there: the list of ``(back, back_args)`` the
    test calls, as ``back(message, *back_args)``, when the read is to
    come back."""
    held: list[tuple] = []

    def off_thread(job, args, back, *back_args):
        proto._busy = True
        held.append((back, back_args))

    proto._off_thread = off_thread
    proto._nowait = _Uncached()
    return held


def test_a_half_close_while_a_message_read_waits_for_the_disk_answers_it_then_closes():
    # the half-close comes while RETR's read is on a worker thread (a
    # message the kernel has not cached): the session waits for it, sends
    # the message and the next answer, and closes then -- nothing deleted
    # without a QUIT
    env = Env()
    stored = b"Subject: a\n\nhello\n"
    env.store.add("joe@example.org", stored)
    proto, t = login(env)
    held = _hold_message_reads(proto)
    t.clear()
    proto.dataReceived(b"RETR 1\r\nDELE 1\r\n")
    _end_of_client_data(proto)
    assert held and t.value() == b"" and not t.disconnecting  # waits for the read
    back, back_args = held.pop()
    back(stored, *back_args)
    out = t.value()
    assert b"hello\r\n.\r\n" in out and out.endswith(R.deleted(1).to_bytes())
    assert t.disconnecting
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1
    assert not env.store.is_locked("joe@example.org")


_PIPELINED = b"USER joe\r\nPASS joepw\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n"


def test_a_half_close_during_a_login_check_answers_the_pipelined_session():
    # "USER, PASS, STAT, RETR, QUIT" sent at once and shutdown(SHUT_WR)
    # (nc -N, a PIPELINING client): the half-close came while the password
    # was checked, and the session was dropped with no answer at all
    checker = HeldChecker()
    env = Env(checker=checker)
    env.store.add("joe@example.org", b"Subject: a\n\nhello\n")
    proto, t = env.connect()
    t.clear()
    proto.dataReceived(_PIPELINED)
    assert checker.pending
    _end_of_client_data(proto)
    assert not t.disconnecting and not proto._lost  # the check first
    assert t.value() == R.USER_ACCEPTED.to_bytes()
    _creds, d = checker.pending.pop()
    d.callback(b"joe@example.org")
    out = t.value()
    assert out.startswith(R.USER_ACCEPTED.to_bytes() + b"+OK Logged in")
    assert b"+OK 1 " in out and b"hello\r\n.\r\n" in out
    assert out.endswith(R.deleted(1).to_bytes() + R.bye_updated(0).to_bytes())
    assert t.disconnecting
    proto.connectionLost(None)
    assert env.store.messages("joe@example.org") == []  # QUIT's UPDATE state
    assert not env.store.is_locked("joe@example.org")


def test_a_half_close_during_a_login_check_then_commands_held_lets_the_lock_go():
    # a client pipelines its session with no QUIT (login, a long LIST it
    # reads slowly, RETR, DELE) and half-closes while the password is
    # checked: once the login succeeds the commands it sent are held
    # behind answers it has not read, and no QUIT can come.  The lock
    # went only once everything was answered -- as long as the client
    # took to read it all, a login of the same user told IN-USE
    # meanwhile -- where a FIN that comes after the login lets it go at
    # once (readConnectionLost); the client still gets every answer
    checker = HeldChecker()
    env = Env(checker=checker)
    for i in range(2000):
        env.store.add("joe@example.org", b"Subject: %d\n\nbody\n" % i)
    proto, t = env.connect(limit=16 * 1024)
    t.clear()
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\nRETR 1\r\nLIST\r\nRETR 2\r\n"
                       b"DELE 1\r\nSTAT\r\n")
    _end_of_client_data(proto)
    _creds, d = checker.pending.pop()
    d.callback(b"joe@example.org")
    assert proto._write_paused and proto.engine.has_line  # held for the reader
    box = proto.mailbox or proto._answer_box
    assert not env.store.is_locked("joe@example.org")  # let go at once
    assert [m.seen for m in box.list_messages()[:2]] == [True, False]  # RETR 1, before
    got = _read_on(proto, t)
    assert b"Subject: 1\r\n\r\nbody\r\n.\r\n" + R.deleted(1).to_bytes() in got
    assert re.search(rb"\+OK 1999 \d+\r\n\Z", got)
    assert t.disconnecting
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 2000  # nothing deleted


def _failed_login_after_half_close(env, proto, t) -> None:
    """The failed login closes the session at once with no answer (the
    client cannot tell it from one that closed for good: its slot is not
    held through the delay, and a guesser that half-closes does not get its
    answer without the delay); nothing behind it is answered, and the
    failure counts once."""
    assert t.value() == R.USER_ACCEPTED.to_bytes()
    assert t.disconnecting and not t.write_lost  # a close, no lingering: it sends no more
    assert proto._pending_call is None  # no delayed -ERR left behind
    assert proto.engine.auth_failures == 1
    assert len(proto.factory.login_failures._failures["192.0.2.7"]) == 1
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    env.clock.advance(10)
    assert t.value() == R.USER_ACCEPTED.to_bytes()
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1


def _connect_remote_half_closing(env):
    proto = POP3Factory(env.components).buildProtocol(REMOTE)
    t = HalfClosingTransport(REMOTE)
    proto.makeConnection(t)
    t.clear()
    return proto, t


def _remote_session_pipelined(auth_failure_delay: float, checker=None,
                              password: bytes = b"joepw"):
    """A remote client (plain-text logins allowed) that half-closes
    pipelines its whole session (``_PIPELINED``) with ``password``, joe
    having one message; the login is being checked (held by ``checker``,
    a ``HeldChecker``) or its failure's delay runs: ``(env, proto, t)``."""
    env = Env(checker=checker, allow_plaintext_auth=True,
              auth_failure_delay=auth_failure_delay)
    env.store.add("joe@example.org", b"Subject: a\n\nhello\n")
    proto, t = _connect_remote_half_closing(env)
    proto.dataReceived(_PIPELINED.replace(b"joepw", password))
    return env, proto, t


def test_a_half_close_during_a_failing_login_check_closes_at_once_with_no_answer():
    checker = HeldChecker()
    env, proto, t = _remote_session_pipelined(3.0, checker, password=b"wrong")
    _end_of_client_data(proto)
    assert not t.disconnecting and not proto._lost
    _creds, d = checker.pending.pop()
    d.errback(UnauthorizedLogin())
    _failed_login_after_half_close(env, proto, t)


def test_a_half_close_during_a_failed_login_delay_closes_at_once_with_no_answer():
    env, proto, t = _remote_session_pipelined(3.0, password=b"wrong")
    assert proto._pending_call is not None  # the delay runs
    _end_of_client_data(proto)
    _failed_login_after_half_close(env, proto, t)


def test_a_half_close_during_a_failing_login_check_with_no_delay_sends_the_err_then_closes():
    # with auth_failure_delay = 0 nothing is spared by answering: the -ERR
    # goes, then the close, nothing behind it answered
    checker = HeldChecker()
    env, proto, t = _remote_session_pipelined(0.0, checker, password=b"wrong")
    _end_of_client_data(proto)
    _creds, d = checker.pending.pop()
    d.errback(UnauthorizedLogin())
    assert t.value() == R.USER_ACCEPTED.to_bytes() + R.AUTH_FAILED.to_bytes()
    assert t.disconnecting and proto.engine.auth_failures == 1
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1


def test_a_half_close_during_a_login_check_that_cannot_be_made_sends_sys_temp_then_closes():
    # no guess, no delay (docs/pop3.rst): its -ERR goes, then the close,
    # whatever auth_failure_delay is
    from txmailhub.errors import UsersUnavailable

    checker = HeldChecker()
    env, proto, t = _remote_session_pipelined(3.0, checker)
    _end_of_client_data(proto)
    _creds, d = checker.pending.pop()
    d.errback(UsersUnavailable("no users file"))
    assert t.value() == R.USER_ACCEPTED.to_bytes() + R.MAILBOX_TEMP_FAILURE.to_bytes()
    assert t.disconnecting and proto._pending_call is None
    assert "192.0.2.7" not in proto.factory.login_failures._failures
    proto.connectionLost(None)
    assert len(env.store.messages("joe@example.org")) == 1


def test_the_hub_stop_during_a_half_closed_login_check_says_sys_temp_and_drops_the_result(
        log_events):
    checker = HeldChecker()
    env = Env(checker=checker)
    proto, t = env.connect()
    t.clear()
    proto.dataReceived(_PIPELINED)
    _end_of_client_data(proto)
    stopped = proto.factory.shut_down()
    assert t.value() == R.USER_ACCEPTED.to_bytes() + R.SHUTTING_DOWN.to_bytes()
    assert t.disconnecting and not t.disconnected
    _creds, d = checker.pending.pop()
    d.callback(b"joe@example.org")
    assert t.value() == R.USER_ACCEPTED.to_bytes() + R.SHUTTING_DOWN.to_bytes()
    assert not any(formatEvent(e).startswith("POP3 login joe") for e in log_events)
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    proto.connectionLost(None)
    assert stopped.called


def _closed_with_the_message_deleted(env, reactor, t) -> None:
    """After a pipelined session's QUIT: the hub closes its side, joe's
    message is deleted (the UPDATE state ran) and the mailbox let go."""
    step_until_closed(reactor, t)
    assert not t.connected
    assert env.store.messages("joe@example.org") == []
    assert not env.store.is_locked("joe@example.org")


def test_a_client_that_pipelines_its_session_and_half_closes_during_the_login_reads_it_all():
    # a real socket: the whole session, then shutdown(SHUT_WR), as
    # printf '...' | nc -N does; the password check answers once the
    # half-close is in.  The client read the greeting, the USER +OK and
    # the end of the stream: nothing else
    import socket

    checker = HeldChecker()
    env = Env(checker=checker)
    env.store.add("joe@example.org", b"Subject: a\n\nhello\n")
    with _loopback_session(env) as (proto, t, reactor, client):
        client.sendall(_PIPELINED)
        client.shutdown(socket.SHUT_WR)
        for _ in range(200):
            if proto._eof or not t.connected:
                break
            reactor.iterate(0.005)
        assert checker.pending and proto._eof and t.connected
        _creds, d = checker.pending.pop()
        d.callback(b"joe@example.org")
        got = reads_to_the_end(reactor, client, turns=1000)
        assert b"+OK Logged in" in got and b"hello\r\n.\r\n" in got
        assert got.endswith(R.deleted(1).to_bytes() + R.bye_updated(0).to_bytes()
                            + b"<EOF>"), got[-200:]
        _closed_with_the_message_deleted(env, reactor, t)


def test_a_client_that_pipelines_retr_and_quit_and_half_closes_reads_it_all():
    # a real socket: "RETR 1\r\nDELE 1\r\nQUIT\r\n" then shutdown(SHUT_WR)
    # (as nc -N does), reading everything
    import socket

    env = Env()
    env.store.add("joe@example.org", _BIG)
    with _loopback_session(env, small_buffers=True) as (_proto, t, reactor, client):
        _logs_in(reactor, client)
        client.sendall(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        client.shutdown(socket.SHUT_WR)
        got = reads_to_the_end(reactor, client, turns=5000)
        assert _BIG.replace(b"\n", b"\r\n") in got
        assert got.endswith(b".\r\n" + R.deleted(1).to_bytes() + R.bye_updated(0).to_bytes()
                            + b"<EOF>"), got[-200:]
        _closed_with_the_message_deleted(env, reactor, t)


# -- a lingering close lets the mailbox go at its start ------------------------


def test_the_stop_while_a_logins_sizes_are_measured_keeps_the_lock_until_they_are_back():
    # the mailbox is in use on a worker thread (the engine not in
    # TRANSACTION yet): the lingering close does not let it go at its
    # start, the measuring's return does
    env = Env()
    env.components.syncer = HeldCalls()
    for i in range(pop3_protocol.INLINE_SIZES + 1):
        env.store.add("joe@example.org", b"Subject: %d\n\nx\n" % i)
    proto, t = _connect_half_closing(env)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    assert env.components.syncer.jobs and env.store.is_locked("joe@example.org")
    stopped = proto.factory.shut_down()
    assert t.value().endswith(R.SHUTTING_DOWN.to_bytes())
    assert t.write_lost and proto._lingering
    assert env.store.is_locked("joe@example.org")  # a worker reads it
    env.components.syncer.run()
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    assert not stopped.called
    proto.connectionLost(None)
    assert stopped.called


@pytest.mark.parametrize("back", ["measured", "syncer stopped"])
def test_the_stop_ends_a_logins_sizes_measuring_at_the_job_under_way(monkeypatch, log_events,
                                                                      back):
    # a large mailbox is measured in jobs (SIZE_JOB messages each, one
    # here): after the stop's -ERR and close the job under way is told to
    # stop (its ``gone``), no next one starts, and the lock goes when it is
    # back -- also when it fails because the stop stopped the syncer:
    # nothing logged as an error, nothing written after the -ERR.  It
    # measured on, job after job, and logged the failure of the next
    from txmailhub.errors import LocalError

    monkeypatch.setattr(pop3_protocol, "SIZE_JOB", 1)
    env, _unused, _t = large_mailbox_login(monkeypatch)
    proto, t = _connect_half_closing(env)
    proto.dataReceived(b"USER joe\r\nPASS joepw\r\n")
    syncer = env.components.syncer
    [(d, _f, (_box, _stored, gone, _start, _end))] = syncer.jobs
    assert not gone()
    stopped = proto.factory.shut_down()
    assert t.value().endswith(R.SHUTTING_DOWN.to_bytes())
    written = t.value()
    assert gone()  # the worker measures no further
    if back == "measured":
        syncer.run()
    else:
        syncer.jobs.clear()
        d.errback(LocalError("the syncer is stopped"))
    assert not syncer.jobs  # no next part
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    assert t.value() == written
    assert not [e for e in log_events if e["log_level"] in (LogLevel.error, LogLevel.critical)
                or "log_failure" in e]
    assert not stopped.called
    proto.connectionLost(None)
    assert stopped.called


def test_the_stop_during_a_message_read_on_a_worker_lets_the_mailbox_go_once_it_is_back():
    # the read is on a worker thread at the stop: the lock is kept for it;
    # the message sent, the line and the lingering close, and the lock let
    # go then, before the client closes; the stop waits for the close
    env = Env()
    stored = b"Subject: a\n\nhello\n"
    env.store.add("joe@example.org", stored)
    proto, t = _connect_half_closing(env)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\n")
    held = _hold_message_reads(proto)
    t.clear()
    proto.dataReceived(b"RETR 1\r\n")
    stopped = proto.factory.shut_down()
    assert held and t.value() == b"" and env.store.is_locked("joe@example.org")
    back, back_args = held.pop()
    back(stored, *back_args)
    assert t.value().endswith(b"hello\r\n.\r\n" + R.SHUTTING_DOWN.to_bytes())
    assert proto._lingering and not t.disconnecting
    assert proto.mailbox is None and not env.store.is_locked("joe@example.org")
    assert not stopped.called  # the close is waited for still
    proto.connectionLost(None)
    assert stopped.called


def test_a_read_error_in_the_middle_of_a_message_cuts_the_client(log_events):
    # its +OK and part of the message are sent: no -ERR can follow, and a
    # close after what was sent would pass a truncated message for whole
    # (the client reads the FIN before any final dot); the session is cut
    # and the message file closed, the lock going with the session
    env, proto, t = _retr_under_way()
    stream = proto._stream
    closed = []
    real_close = stream.file.close

    def read(size):
        raise OSError(errno.EIO, "Input/output error")

    stream.file.read = read
    stream.file.close = lambda: closed.append(True) or real_close()
    proto.resumeProducing()
    assert t.disconnected and not t.value().endswith(b"\r\n.\r\n")
    assert proto._stream is None and closed == [True]
    [failure] = [e["log_failure"] for e in log_events if "log_failure" in e]
    assert failure.check(OSError)
    assert "POP3 read error streaming a message of joe@example.org" in [
        formatEvent(e) for e in log_events]
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")


def test_a_client_failing_on_our_tls_is_said_in_the_log(log_events):
    # a client that cannot agree with our TLS (versions, ciphers) ends in
    # a lost connection: what OpenSSL said is logged, with the peer
    from OpenSSL import SSL
    from twisted.logger import formatEvent
    from twisted.python.failure import Failure

    env = Env()
    proto, _t = env.connect(implicit_tls=True)
    proto.connectionLost(Failure(SSL.Error([("SSL routines", "", "no shared cipher")])))
    lines = [formatEvent(e) for e in log_events if "TLS with" in formatEvent(e)]
    assert len(lines) == 1 and "no shared cipher" in lines[0], lines
    assert "127.0.0.1" in lines[0]


def test_a_connection_that_just_ends_logs_no_tls_failure(log_events):
    from twisted.internet.error import ConnectionDone
    from twisted.logger import formatEvent
    from twisted.python.failure import Failure

    env = Env()
    proto, _t = env.connect()
    proto.connectionLost(Failure(ConnectionDone()))
    assert not [e for e in log_events if "TLS with" in formatEvent(e)]


def test_a_slow_pop3s_reader_is_looked_at_again_until_it_ends_its_session():
    # a POP3S client that stops reading: each look (CLOSED_CHECK) that
    # finds its TLS session still open arms the next, so an end that
    # comes later is still seen, and the mailbox lock goes then
    env = Env()
    env.store.add("joe@example.org", b"a\n")
    proto, t = login(env, implicit_tls=True)
    proto.pauseProducing()
    for _ in range(3):
        env.clock.advance(pop3_protocol.CLOSED_CHECK)
        assert not t.disconnecting and not t.disconnected
        assert proto._closed_call is not None and proto._closed_call.active()
    with mock.patch.object(pop3_protocol, "closed_under_us", lambda transport: True):
        env.clock.advance(pop3_protocol.CLOSED_CHECK)
    assert t.disconnected
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")
    assert not [c for c in env.clock.getDelayedCalls() if c.func.__name__ == "_check_closed"]


def test_a_message_the_size_job_cannot_read_is_left_for_the_reactor_thread(monkeypatch):
    # one unreadable message (an I/O error) must not fail the job for
    # the others: it is marked not measured (-1), to be measured (and its
    # error logged) on the reactor thread if a command needs its size
    def size_of(mailbox, index, stored, nowait=None):
        if index == 1:
            raise OSError(errno.EIO, "Input/output error")
        return stored + 10

    monkeypatch.setattr(pop3_protocol, "_client_size_of", size_of)
    sizes = pop3_protocol._measure_sizes(object(), [100, 200, 300], lambda: False)
    assert list(sizes) == [110, -1, 310]


@implementer(IRealm)
class BrokenLogoutRealm(Realm):
    """A realm of an application's own whose logout raises."""

    def requestAvatar(self, avatar_id, mind, *interfaces):
        d = super().requestAvatar(avatar_id, mind, *interfaces)
        return d.addCallback(lambda r: (r[0], r[1], self.logout))

    def logout(self):
        raise RuntimeError("the realm's logout broke")


@pytest.mark.parametrize("end", ["QUIT", "drop"])
def test_a_realm_logout_that_raises_still_leaves_the_mailbox_closed(end, log_events):
    # the realm's error is logged with the user; the mailbox's close (its
    # lock) and the QUIT's UPDATE do not depend on it
    env = Env()
    env.portal.realm = BrokenLogoutRealm(env.store)
    env.store.add("joe@example.org", b"one\n")
    env.store.add("joe@example.org", b"two\n")
    proto, t = login(env)
    if end == "QUIT":
        assert talk(proto, t, b"DELE 1\r\nQUIT\r\n").endswith(R.bye_updated(1).to_bytes())
    proto.connectionLost(None)
    assert not env.store.is_locked("joe@example.org")
    assert len(env.store.messages("joe@example.org")) == (1 if end == "QUIT" else 2)
    [failed] = [e for e in log_events if e.get("log_failure") is not None]
    assert failed["log_failure"].check(RuntimeError)
    assert "logout failed" in formatEvent(failed) and "joe@example.org" in formatEvent(failed)


def test_a_mailbox_whose_close_raises_is_logged_and_the_session_ends(log_events):
    # the store's close failing (its lock file cannot be removed) is the
    # store's to report: logged with the user, and the session ends as it
    # would, the realm's logout called all the same
    env = Env()
    realm = SpyLogoutRealm(env.store)
    env.portal.realm = realm
    env.store.add("joe@example.org", b"one\n")
    proto, t = login(env)
    proto.mailbox.close = mock.Mock(side_effect=OSError(errno.EIO, "lock file"))
    assert talk(proto, t, b"QUIT\r\n") == R.bye_updated(1).to_bytes()
    proto.connectionLost(None)
    assert realm.logouts == 1
    [failed] = [e for e in log_events if e.get("log_failure") is not None]
    assert failed["log_failure"].check(OSError)
    assert "close failed" in formatEvent(failed) and "joe@example.org" in formatEvent(failed)


def _pop3s_connected(env, tls_files, socket_class):
    """A POP3S connection over a ``socket_class`` transport whose client
    has not begun its TLS handshake: its factory, and the transport."""
    from tls_loopback import PEER
    from twisted.protocols.tls import TLSMemoryBIOFactory

    factory = POP3Factory(env.components, implicit_tls=True)
    cert, key = tls_files
    server = TLSMemoryBIOFactory(tls_options(str(cert), str(key)), False, factory,
                                 clock=env.clock).buildProtocol(PEER)
    sock = socket_class(env.clock, server)
    server.makeConnection(sock)
    sock.startReading()
    assert len(factory.sessions) == 1
    return factory, sock


def test_a_pop3s_client_still_in_its_handshake_is_cut_at_the_stop(tls_files):
    # a client that connected to the POP3S port and has not finished its
    # TLS handshake (a scanner, a stalled client) holds no stop: no line
    # can reach it before the handshake, so it is cut at once, and the
    # stop fires with its connection gone
    from tls_loopback import MemorySocket
    from twisted.internet import error
    from twisted.python.failure import Failure

    class TCPSocket(MemorySocket):
        """Its abort says the connection is lost a turn later, as
        Twisted's TCP transport does (``tcp.Connection.abortConnection``)."""

        def abortConnection(self):
            if self.connected and not self.disconnecting:
                self.disconnecting = True
                self.stopReading()
                self.reactor.callLater(0, self.connectionLost,
                                       Failure(error.ConnectionAborted()))

    env = Env()
    factory, sock = _pop3s_connected(env, tls_files, TCPSocket)
    stopped = factory.shut_down()
    assert sock.disconnecting and not sock.reading()  # cut: no polite close to wait for
    assert not stopped.called
    env.clock.advance(0)
    assert sock.lost.check(error.ConnectionAborted)
    assert stopped.called
    assert not factory.sessions
    assert env.clock.getDelayedCalls() == []


def test_a_stop_ends_with_a_session_its_transport_reports_lost_inside_the_abort(tls_files):
    # a transport that reports connectionLost inside abortConnection (the
    # tests' MemorySocket; an embedding's own transport) ended the session
    # within the stop's cutting, before the stop's wait was made: the
    # session counted as gone to nothing, and the stop never fired
    from tls_loopback import MemorySocket
    from twisted.internet import error

    env = Env()
    factory, sock = _pop3s_connected(env, tls_files, MemorySocket)
    stopped = factory.shut_down()
    assert sock.lost.check(error.ConnectionAborted)  # within the abort
    assert stopped.called
    assert not factory.sessions


def test_a_stop_ends_with_a_session_its_transport_reports_lost_inside_the_close(log_events):
    # the same for the polite close of an idle session (its -ERR, then
    # loseConnection): lost at once, and the stop fires with it gone
    class ClosingAtOnce(Transport):
        def loseConnection(self):
            super().loseConnection()
            if not self.disconnected:
                self.disconnected = True
                self.session.connectionLost(None)

    env = Env()
    env.store.add("joe@example.org", b"a\n")
    factory = POP3Factory(env.components)
    proto = factory.buildProtocol(LOOPBACK)
    t = ClosingAtOnce(LOOPBACK)
    t.session = proto
    proto.makeConnection(t)
    talk(proto, t, b"USER joe\r\nPASS joepw\r\nRETR 1\r\n")  # a message to flag seen
    t.clear()
    stopped = factory.shut_down()
    assert t.value() == R.SHUTTING_DOWN.to_bytes() and t.disconnected
    assert stopped.called
    assert not env.store.is_locked("joe@example.org")


def test_user_in_quotes_no_one_quoted_string_logs_in_to_the_user_add_made_of_it(tmp_path):
    # `mailhub user add '"a""b"'` writes the user "a\"\"b"; USER "a""b"
    # was looked up as typed, no such user, and the login failed
    from txmailhub.auth import UsersChecker
    from txmailhub.users import UsersDB

    path = str(tmp_path / "users")
    UsersDB(path, "example.org").add('"a""b"', "abpw", allow_weak=True)
    env = Env(checker=UsersChecker(UsersDB(path, "example.org")), allow_plaintext_auth=True)
    env.store.add('"a\\"\\"b"@example.org', b"hi\n")
    proto, t = env.connect()
    talk(proto, t, b'USER "a""b"\r\n')
    assert talk(proto, t, b"PASS abpw\r\n") == R.logged_in(1, 4).to_bytes()


def test_a_login_to_a_user_whose_maildir_name_is_over_name_max_is_sys_perm(
        log_events, tmp_path):
    # a users file line written by hand whose Maildir folder's name is over
    # the file system's 255 octets (100 "\u0130", each i and U+0307 in lower
    # case: 300 octets): every login was "[SYS/TEMP] try again later" (the
    # mkdir's "File name too long"), for ever.  [SYS/PERM], and one line
    # in the log naming why, not a traceback
    from txmailhub.auth import UsersChecker
    from txmailhub.store.maildir import maildir_path
    from txmailhub.users import UsersDB, hash_password

    name = "\u0130" * 100 + "@example.org"
    path = tmp_path / "users"
    path.write_text(f"{name} {hash_password('pw')}\n")
    env = Env(checker=UsersChecker(UsersDB(str(path), "example.org")))
    env.store.open_mailbox = lambda address, **kw: defer.maybeDeferred(
        maildir_path, "/m", address)
    proto, t = env.connect()
    talk(proto, t, b"UTF8\r\n")
    talk(proto, t, b"USER " + name.encode() + b"\r\n")
    assert talk(proto, t, b"PASS pw\r\n") == R.MAILBOX_PERM_FAILURE.to_bytes()
    said = [e for e in log_events if e.get("log_level") is not None
            and e["log_level"].name in ("error", "critical")]
    assert len(said) == 1 and "log_failure" not in said[0], said
    assert "NAME_MAX" in said[0]["error"]
