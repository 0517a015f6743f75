"""Where TCP cuts the client's bytes must not matter.

One byte stream -- a random mix of commands, message data, bare CR and
LF, NUL, 8-bit octets and over-long lines -- is given to a fresh SMTP or
POP3 session twice: once in reads cut at random places, once cut
elsewhere (whole, or an octet at a time).  The replies, whether the
session closed, and what was stored or deleted must be the same
(RFC 5321 2.3.8 and RFC 1939 3: lines end with CRLF, wherever the
segments end; RFC 2920 and RFC 2449: pipelined commands are answered as
if sent one by one).
"""

from __future__ import annotations

import base64
import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pop3_protocol import Env
from test_smtp_protocol import Harness
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from txmailhub.address import Address
from txmailhub.testing import QueueSpy

_PLAIN = base64.b64encode(b"\0alice\0secret")

SMTP_PIECES = [
    b"EHLO c\r\n", b"HELO c\r\n", b"EHLO\r\n", b"MAIL FROM:<s@x.test>\r\n",
    b"MAIL FROM:<s@x.test> BODY=8BITMIME SIZE=40\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<alice>\r\n", b"RCPT TO:<bob@example.org>\r\n", b"RCPT TO:<nobody>\r\n",
    b"DATA\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"BDAT x\r\n",
    b"hello", b"Subject: x\r\n", b".\r\n", b"..x\r\n", b".\n", b"\r\n", b"\r", b"\n", b"\x00",
    b"\xc3\xa9", b"\xff", b"RSET\r\n", b"NOOP\r\n", b"NOOP x\r\n", b"VRFY alice\r\n",
    b"EXPN x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN " + _PLAIN +
    b"\r\n", _PLAIN + b"\r\n", b"*\r\n", b"AUTH LOGIN\r\n", b"FOO\r\n", b"A" * 520,
    b"QUIT\r\n", b"mail from:<s@x.test>\r\n", b"rcpt to:<alice>\r\n",
    base64.b64encode(b"alice") + b"\r\n", base64.b64encode(b"secret") + b"\r\n",
    b"AUTH LOGIN " + base64.b64encode(b"alice") + b"\r\n", b"=\r\n", b"abc!\r\n",
    b"RCPT TO:<someone@remote.test>\r\n", b"BDAT 2\r\n", b"ab", b"\r\n.\r\n",
    # whole steps, so that transactions get far
    b"EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice>\r\nDATA\r\n",
    b"EHLO c\r\nAUTH PLAIN " + _PLAIN + b"\r\nMAIL FROM:<alice@example.org>\r\n"
    b"RCPT TO:<someone@remote.test>\r\nRCPT TO:<bob>\r\n",
    b"MAIL FROM:<s@x.test>\r\nRCPT TO:<bob>\r\nBDAT 4 LAST\r\n",
]
POP3_PIECES = [
    b"USER joe\r\n", b"PASS joepw\r\n", b"PASS bad\r\n", b"USER ann\r\n", b"CAPA\r\n",
    b"STAT\r\n", b"LIST\r\n", b"LIST 1\r\n", b"LIST 2\r\n", b"UIDL\r\n", b"UIDL 1\r\n",
    b"RETR 1\r\n", b"RETR 2\r\n", b"TOP 1 0\r\n", b"TOP 2 1\r\n", b"DELE 1\r\n",
    b"DELE 2\r\n", b"RSET\r\n", b"NOOP\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN " +
    base64.b64encode(b"\0joe\0joepw") + b"\r\n", b"*\r\n", b"=\r\n", b"UTF8\r\n",
    b"LANG\r\n", b"STLS\r\n", b"APOP joe 0123\r\n", b"QUIT\r\n", b"\r\n", b"\r", b"\n",
    b"\x00", b"\xff", b"x", b"A" * 300, b"B" * 4100, b"list\n", b"retr 1\n",
    b"USER joe\r\nPASS joepw\r\n",
]

# a spool id counts up across sessions
# the hub's message id: the clock's seconds, the pid, five digits or more
# of its counter, with "_" between them
_SPOOL_ID = re.compile(rb"\b[0-9A-F]+_[0-9A-F]+_[0-9A-F]{5,}\b")


# and the random part of a Message-ID the hub adds to a submitted message
_MESSAGE_ID = re.compile(rb"\.[0-9a-f]{12}@")


def unnumbered(data: bytes) -> bytes:
    # the random part first: one of digits only would pass for an id
    return _SPOOL_ID.sub(b"<id>", _MESSAGE_ID.sub(b".<random>@", data))


def stream(pieces: list[bytes], *steps):
    return st.lists(st.one_of(st.sampled_from(pieces), *steps), max_size=30).map(b"".join)


_BODY = st.lists(st.sampled_from([b"hello", b".", b"..x", b"", b"\r", b"\n", b"\xff", b"\x00",
                                  b". ", b"Subject: x"]), max_size=6)


@st.composite
def smtp_transaction(draw) -> bytes:
    """A transaction that gets as far as its data, most of the time."""
    out = draw(st.sampled_from([b"EHLO c\r\n", b"", b"HELO c\r\n"]))
    out += draw(st.sampled_from([b"MAIL FROM:<s@x.test>\r\n", b"MAIL FROM:<> BODY=8BITMIME\r\n",
                                 b"MAIL FROM:<s@x.test> SIZE=20\r\n"]))
    for rcpt in draw(st.lists(st.sampled_from([b"alice", b"bob", b"nobody"]), min_size=1,
                              max_size=3)):
        out += b"RCPT TO:<" + rcpt + b">\r\n"
    body = b"\r\n".join(draw(_BODY))
    if draw(st.booleans()):
        out += b"DATA\r\n" + body + draw(st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b".\r\n",
                                                            b"\n.\n", b"\r\n.\n"]))
    else:
        out += b"BDAT %d LAST\r\n" % len(body) + body
    return out


@st.composite
def pop3_session(draw) -> bytes:
    out = b"USER joe\r\nPASS joepw\r\n"
    verbs = [b"DELE 1", b"DELE 2", b"DELE 3", b"RSET", b"STAT", b"LIST", b"RETR 1", b"TOP 2 1",
             b"UIDL", b"NOOP", b"LIST 3", b"RETR 3"]
    for verb in draw(st.lists(st.sampled_from(verbs), max_size=8)):
        out += verb + draw(st.sampled_from([b"\r\n", b"\n"]))
    return out + draw(st.sampled_from([b"QUIT\r\n", b""]))


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


def splits():
    return st.one_of(st.just("whole"), st.just("octets"),
                     st.lists(st.integers(0, 10_000), max_size=12))


def reads_of(data: bytes, how) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "octets":
        return [data[i:i + 1] for i in range(len(data))]
    return cut(data, how)


def smtp_settle(h: Harness, t) -> None:
    """Storage answers; a paused session reads again (a real transport
    delivers nothing while paused)."""
    for _ in range(1000):
        h.spooler.release()
        h.clock.advance(0)
        if t.disconnecting or (t.producerState != "paused" and not h.spooler._holder.held):
            return
        if not h.spooler._holder.held:
            h.clock.advance(1)  # a delay (a failed AUTH) runs out
    raise AssertionError("the session stays paused")


def smtp_run(data: bytes, how, submission: bool = False,
             slow: bool = False) -> tuple[bytes, bool, dict[str, list[bytes]]]:
    queue = QueueSpy()
    h = Harness(submission=submission, hold=slow, queue=queue)
    p, t = h.connect("127.0.0.1")
    for piece in reads_of(data, how):
        smtp_settle(h, t)
        if t.disconnecting:
            break
        p.dataReceived(piece)
        h.clock.advance(0)
    smtp_settle(h, t)
    out = unnumbered(t.value())
    closed = t.disconnecting
    p.connectionLost(Failure(ConnectionDone()))
    boxes = {box: [unnumbered(m) for m in h.store.messages(Address(*box.split("@")))]
             for box in ("alice@example.org", "bob@example.org")}
    boxes["queue"] = [unnumbered(repr(envelope).encode()) for envelope, _ in queue.enqueued]
    return out, closed, boxes


def pop3_run(data: bytes, how) -> tuple[bytes, bool, list[bytes]]:
    env = Env(auth_failure_delay=1.0)
    for body in (b"Subject: a\n\n.one\n..\n", b"two\r\n.\r\nx", b""):
        env.store.add("joe@example.org", body)
    p, t = env.connect()
    t.clear()  # the greeting's timestamp differs from run to run
    for piece in reads_of(data, how):
        for _ in range(100):
            if t.producerState != "paused" or t.disconnecting:
                break
            env.clock.advance(1)
        if t.disconnecting:
            break
        p.dataReceived(piece)
        env.clock.advance(0)
    for _ in range(30):
        env.clock.advance(1)
    out = t.value()
    closed = t.disconnecting
    p.connectionLost(Failure(ConnectionDone()))
    return out, closed, env.store.messages("joe@example.org")


_FIXTURE = HealthCheck.function_scoped_fixture  # the list is only appended to


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, _FIXTURE])
@given(stream(SMTP_PIECES, smtp_transaction()), splits(), splits(), st.booleans(), st.booleans())
def test_smtp_replies_and_mail_do_not_depend_on_the_reads(logged_failures, data, one, other,
                                                          submission, slow):
    a = smtp_run(data, one, submission, slow)
    b = smtp_run(data, other, submission, slow)
    assert a[1] == b[1], (data, a[0], b[0])
    assert a[0] == b[0], data
    assert a[2] == b[2], data
    if a[1]:  # the session's last words: 221 or 421 (RFC 5321 3.8)
        assert a[0].rsplit(b"\r\n", 2)[-2][:4] in (b"221 ", b"421 "), a[0][-200:]
    assert not logged_failures, logged_failures


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, _FIXTURE])
@given(stream(POP3_PIECES, pop3_session()), splits(), splits())
def test_pop3_responses_and_deletions_do_not_depend_on_the_reads(logged_failures, data, one, other):
    a = pop3_run(data, one)
    b = pop3_run(data, other)
    assert a[1] == b[1], (data, a[0], b[0])
    assert a[0] == b[0], data
    assert a[2] == b[2], data
    assert not logged_failures, logged_failures
