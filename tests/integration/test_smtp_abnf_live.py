"""The grammar differential of tests/test_smtp_abnf.py over a live socket:
a sample of generated MAIL and RCPT arguments, valid and one mutation
away, sent with smtplib's raw ``docmd`` to a running hub.  The protocol
path must give exactly the reply the parser gives for every refusal, and
no syntax reply for what the parser takes."""

from __future__ import annotations

import smtplib

import abnf_smtp as G
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_smtp_abnf import mail_param, rcpt_param

from txmailhub.errors import RemoteProtocolError
from txmailhub.smtp._parse import parse_mail, parse_rcpt

P = "example.org"
MAX_SIZE = 26214400  # the hub's default [smtp] max_message_size
SYNTAX_CODES = (500, 501, 553, 555)

paths = st.one_of(
    G.mailbox_ascii, G.mailbox_u8, G.mutate(G.mailbox_ascii), G.mutate(G.mailbox_u8)
).map(lambda m: f"<{m}>")
tails = st.one_of(st.just(""), st.lists(mail_param, max_size=2).map(" ".join),
                  G.mutate(st.lists(mail_param, min_size=1, max_size=2).map(" ".join)))
rcpt_tails = st.one_of(st.just(""), st.lists(rcpt_param, max_size=2).map(" ".join),
                       G.mutate(st.lists(rcpt_param, min_size=1, max_size=2).map(" ".join)))


def unit(fn, *args):
    """(code, status) of the parser's refusal, or the parsed value."""
    try:
        return fn(*args)
    except RemoteProtocolError as e:
        return (e.reply.code, e.reply.status)


def live(s: smtplib.SMTP, line: str) -> tuple[int, str]:
    code, text = s.docmd(line)
    return code, text.decode("utf-8", "replace").split(" ", 1)[0]


def test_live_replies_agree_with_the_parser(make_hub):
    hub = make_hub(sections={"smtp": {"max_errors": 100000, "max_junk_commands": 100000}})
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, local_hostname="client.test") as s:
        s.command_encoding = "utf-8"
        s.ehlo()

        @settings(max_examples=50, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(paths, tails, rcpt_tails, st.booleans())
        def exchange(path, tail, rcpt_tail, smtputf8):
            # framing is the line reader's business, not the argument parser's
            assume(not any(c in path + tail + rcpt_tail for c in "\r\n\x00\x85\u2028"))
            arg = f"FROM:{path} {tail}".strip(" \t")
            want = unit(parse_mail, arg, P)
            got = live(s, f"MAIL {arg}")
            if isinstance(want, tuple) and isinstance(want[0], int):
                assert got == want, arg
            else:
                size = want[1].size
                assert got[0] == (552 if size is not None and size > MAX_SIZE else 250), (arg, got)
            if got[0] != 250:
                assert live(s, "MAIL FROM:<>" + (" SMTPUTF8" if smtputf8 else ""))[0] == 250
                utf8 = smtputf8
            else:
                utf8 = want[1].smtputf8
            arg = f"TO:{path} {rcpt_tail}".strip(" \t")
            want = unit(parse_rcpt, arg, P, utf8)
            got = live(s, f"RCPT {arg}")
            if isinstance(want, tuple) and isinstance(want[0], int):
                assert got == want, arg
            else:
                assert got[0] not in SYNTAX_CODES, (arg, got)  # policy: 250 or 550
            assert live(s, "RSET")[0] == 250

        exchange()
