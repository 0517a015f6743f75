"""Command lines built from odd pieces, one reply each.

The stateful model (test_smtp_stateful.py) sends a few chosen parameters;
here each MAIL, RCPT, VRFY, EXPN, AUTH, HELO and STARTTLS line is put together from
pieces of the grammar and of near misses (RFC 5321 4.1.2 esmtp-param,
RFC 3461 DSN parameters, RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8,
RFC 4954 AUTH=, repeated or empty parameters, NUL, 8-bit octets, bare CR,
quoted local parts, source routes).  Whatever the line, the session must
give exactly one well-formed reply to it -- three digits, an enhanced code
of the same class where it has one, at most 512 octets a line (RFC 5321
4.5.3.1.5) -- close only after 221 or 421, and log no failure.  The hub
has ``[tls]``: a STARTTLS that is answered 220 starts TLS on the transport
(faked: ``TLSStartingTransport``) right after that reply, once, and the
session goes on under it from the start (HELO first, no second STARTTLS).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_smtp_protocol import Harness
from test_smtp_stateful import _ENHANCED, TLS_CONTEXT, TLS_READY, SMTPModel, TLSStartingTransport

VERBS = [b"MAIL FROM:", b"RCPT TO:", b"mail from:", b"RCPT TO: ", b"MAIL FROM: ", b"VRFY ",
         b"EXPN ", b"HELO ", b"EHLO ", b"AUTH ", b"NOOP ", b"HELP ", b"RSET ", b"STARTTLS",
         b"STARTTLS ", b"starttls\t"]
PATHS = [b"<s@x.test>", b"<>", b"<alice>", b"<alice@example.org>", b"<bob@EXAMPLE.org>",
         b"<@a.test,@b.test:s@x.test>", b'<"a b"@x.test>', b'<"a\\"b"@x.test>',
         b"<j\xc3\xb6e@x.test>",
         b"<s@[192.0.2.1]>", b"<s@[IPv6:::1]>", b"<postmaster>", b"<Postmaster>", b"<a@b@c>",
         b"<s@x.test", b"s@x.test", b"<s@x..test>", b"<.s@x.test>", b"<s@-x.test>", b"<>>",
         b"<s@x.test.>", b"<" + b"a" * 70 + b"@x.test>", b"<s@" + b"b" * 260 + b".test>", b""]
PARAMS = [b"SIZE=100", b"SIZE=0", b"SIZE=", b"SIZE=99999999999999999999", b"SIZE=-1",
          b"BODY=8BITMIME", b"BODY=7BIT", b"BODY=BINARYMIME", b"BODY=", b"SMTPUTF8", b"SMTPUTF8=1",
          b"AUTH=<>", b"AUTH=s@x.test", b"AUTH=+2B", b"AUTH=<", b"RET=FULL", b"RET=HDRS",
          b"RET=x", b"ENVID=abc", b"ENVID=a+2Bb", b"ENVID=+ZZ", b"ENVID=" + b"e" * 120,
          b"NOTIFY=NEVER", b"NOTIFY=SUCCESS,FAILURE", b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=",
          b"ORCPT=rfc822;a@x.test", b"ORCPT=rfc822;a+2Bb@x.test", b"ORCPT=x", b"ORCPT=utf-8;a@x",
          b"FOO=bar", b"FOO", b"=x", b"a=\xc3\xa9", b"MT-PRIORITY=3", b"HOLDFOR=10", b"\x00"]
SEPS = [b" ", b" ", b"  ", b"\t", b""]
ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r\r\n"]


@st.composite
def command(draw) -> bytes:
    verb = draw(st.sampled_from(VERBS))
    line = verb + draw(st.sampled_from(PATHS))
    for param in draw(st.lists(st.sampled_from(PARAMS), max_size=4)):
        line += draw(st.sampled_from(SEPS)) + param
    return line + draw(st.sampled_from(ENDS))


SETUPS = [b"", b"EHLO c\r\n", b"HELO c\r\n", b"EHLO c\r\nMAIL FROM:<s@x.test>\r\n",
          b"EHLO c\r\nMAIL FROM:<> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<alice>\r\n",
          b"EHLO c\r\nSTARTTLS\r\n", b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\n"]


def replies_to(h: Harness, host: str, setup: bytes, lines: list[bytes]):
    p, t = h.connect(host, transport=TLSStartingTransport)
    for setup_line in setup.splitlines(keepends=True):  # one read each: STARTTLS drops the rest
        p.dataReceived(setup_line)
        h.clock.advance(0)
    t.clear()
    got = []
    for line in lines:
        if t.disconnecting:
            break
        tls, starts = p.engine.session.tls, len(t.tls_starts)
        p.dataReceived(line)
        for _ in range(20):
            h.clock.advance(1)
        out = t.value()
        t.clear()
        replies = SMTPModel.parse(out)
        got.append((line, replies, t.disconnecting))
        # TLS starts after a 220 to STARTTLS, and only then, right after it
        started = len(t.tls_starts) - starts
        if replies and replies[0][0] == 220:
            assert started == 1 and t.tls_starts[-1].endswith(TLS_READY), (line, out)
            assert not tls and p.engine.session.tls, line
            assert p.engine.state.name == "INIT" and p.engine.session.authenticated_as is None
        else:
            assert started == 0, (line, out)
            assert p.engine.session.tls == tls or t.disconnecting, line
    return got


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(setup=st.sampled_from(SETUPS), lines=st.lists(command(), min_size=1, max_size=6),
       submission=st.booleans())
def test_every_command_line_gets_one_well_formed_reply(logged_failures, setup, lines, submission):
    h = Harness(submission=submission, max_errors=1000, max_junk_commands=1000, tls=TLS_CONTEXT)
    host = "127.0.0.1" if submission else "192.0.2.1"
    for line, replies, closed in replies_to(h, host, setup, lines):
        assert len(replies) == 1, (line, replies)
        code, texts = replies[0]
        if not line.upper().startswith((b"HELO", b"EHLO")):
            for text in texts:
                m = _ENHANCED.match(text)
                assert m is not None, (line, code, texts)
                assert int(m.group(1)) == code // 100, (line, code, texts)
        assert not closed or code in (221, 421), (line, code)
    assert not logged_failures, logged_failures
