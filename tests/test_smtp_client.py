"""The sans-IO SMTP client engine against canned server replies."""

from __future__ import annotations

import base64

import pytest

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, RecipientDSN
from txmailhub.smtp._parse import parse_mail, parse_rcpt
from txmailhub.smtp.client import (
    AUTH_TEXT_LEFT_OUT,
    ClientSession,
    Close,
    Phase,
    RecipientOutcome,
    ReplyParser,
    Send,
    SendBody,
    StartTLS,
    TransactionDone,
    refuses_parameters,
    xtext_encode,
)
from txmailhub.smtp.reply import LocalReply, Reply

BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")
ALICE = Address("alice", "example.org")

EHLO_BASIC = b"250-mx.remote.test\r\n250-SIZE 1000\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_FULL = (b"250-mx.remote.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
             b"250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n"
             b"250 ENHANCEDSTATUSCODES\r\n")


def session(**kw):
    args = dict(helo="mail.hub.test", sender=ALICE, recipients=[(BOB, None)], size=100,
                tls="none")
    args.update(kw)
    return ClientSession(**args)


def sent(actions):
    return b"".join(a.data for a in actions if isinstance(a, Send))


def test_simple_transaction_without_pipelining():
    s = session()
    assert s.phase is Phase.GREETING and s.timeout == 300
    assert sent(s.receive(b"220 mx.remote.test ESMTP\r\n")) == b"EHLO mail.hub.test\r\n"
    assert sent(s.receive(EHLO_BASIC)) == b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
    assert s.timeout == 300
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
    assert s.timeout == 120
    actions = s.receive(b"354 go ahead\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    assert s.timeout == 180
    assert s.body_sent() == []
    assert s.timeout == 600
    assert s.outcome is None
    assert sent(s.receive(b"250 2.0.0 queued as 12345\r\n")) == b"QUIT\r\n"
    out = s.outcome
    assert out.session_error is None
    assert [(r.address, r.kind) for r in out.recipients] == [(BOB, "delivered")]
    assert out.recipients[0].reply == Reply.of(250, "2.0.0", "queued as 12345")
    assert s.receive(b"221 bye\r\n") == [Close()]
    assert s.phase is Phase.DONE


def test_pipelined_with_mixed_recipient_results():
    s = session(recipients=[(BOB, None), (CAROL, None)], tls="opportunistic",
                tls_active=True)
    s.receive(b"220 hi\r\n")
    batch = sent(s.receive(EHLO_FULL))
    assert batch == (b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
                     b"RCPT TO:<bob@remote.test>\r\nRCPT TO:<carol@remote.test>\r\nDATA\r\n")
    actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <carol@remote.test>: "
                        b"no such user\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 ok\r\n")
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[CAROL].kind == "permanent"
    assert results[CAROL].reply.text() == "550 5.1.1 <carol@remote.test>: no such user"


def test_pipelined_all_recipients_refused_but_data_accepted():
    s = session(recipients=[(BOB, None)], tls="none")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    actions = s.receive(b"250 ok\r\n450 4.2.0 mailbox busy\r\n354 go\r\n")
    assert sent(actions) == b".\r\nQUIT\r\n"
    assert s.outcome.recipients[0].kind == "transient"
    assert s.receive(b"554 no valid recipients\r\n") == []
    assert s.receive(b"221 bye\r\n") == [Close()]


def test_non_pipelined_all_refused_sends_no_data():
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 ok\r\n")
    s.receive(b"550 5.1.1 no bob\r\n")
    assert sent(s.receive(b"551 5.1.6 no carol\r\n")) == b"QUIT\r\n"
    assert [r.reply.code for r in s.outcome.recipients] == [550, 551]


@pytest.mark.parametrize("refusal", [b"500 5.5.2 what?", b"501 5.5.4 syntax", b"502 5.5.1 no",
                                     b"504 5.5.1 not implemented", b"550 5.7.1 no EHLO"])
def test_helo_fallback(refusal):
    # every permanent "EHLO not understood" an old server may answer
    s = session()
    s.receive(b"220 old server\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"HELO mail.hub.test\r\n"
    assert sent(s.receive(b"250 hello\r\n")) == b"MAIL FROM:<alice@example.org>\r\n"


@pytest.mark.parametrize("refusal", [b"554 5.7.1 EHLO not accepted", b"553 5.5.0 no",
                                     b"530 5.7.0 must issue STARTTLS first", b"555 odd"])
def test_helo_after_any_other_permanent_ehlo_refusal(refusal):
    # RFC 1869 4.5: after any error to EHLO, HELO (or QUIT); RFC 5321 3.2
    # names "command not recognized" only.  A server that refuses EHLO
    # with a 554 and takes HELO gets the mail, as from Postfix and Exim
    s = session()
    s.receive(b"220 filtered\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"HELO mail.hub.test\r\n"
    assert sent(s.receive(b"250 hello\r\n")) == b"MAIL FROM:<alice@example.org>\r\n"
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [(r.address, r.kind) for r in s.outcome.recipients] == [(BOB, "delivered")]


@pytest.mark.parametrize("refusal", [b"521 5.3.2 this host accepts no mail",
                                     b"556 5.1.10 the domain accepts no mail"])
def test_no_helo_after_an_ehlo_refusal_that_says_no_mail_at_all(refusal):
    # RFC 7504: 521 and 556 say no mail is taken at all
    s = session()
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.code == int(refusal[:3])
    assert s.outcome.phase == "EHLO"


@pytest.mark.parametrize("kw", [dict(tls="require"), dict(credentials=("joe", "secret"))])
def test_no_helo_after_a_554_to_ehlo_when_helo_cannot_carry_the_mail(kw):
    # HELO offers no STARTTLS and no AUTH: with TLS required or a smarthost
    # login it could only end in the hub's own refusal; the server's 554
    # stays the answer (queue show gives it).  An old server's 502 still
    # gets HELO, whose lack of STARTTLS or AUTH is then what is said.
    s = session(**kw)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"554 5.7.1 not you\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "554 5.7.1 not you"
    s = session(**kw)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"502 5.5.1 no EHLO\r\n")) == b"HELO mail.hub.test\r\n"


def test_no_helo_after_a_554_to_ehlo_for_an_address_without_an_ascii_form():
    # HELO has no SMTPUTF8: after it the hub's own 553 5.6.7 would bounce
    # jörg for a server that never said it lacks SMTPUTF8 (it refused to
    # say what it offers); its 554 stays the answer, for the next MX host.
    # A 502 still gets HELO: that server has no extension at all
    joerg = Address("jörg", "remote.test")
    s = session(recipients=[(joerg, None), (BOB, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"554 5.7.1 not you\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "554 5.7.1 not you"
    assert s.outcome.refused == ()
    s = session(recipients=[(joerg, None), (BOB, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"502 5.5.1 no EHLO\r\n")) == b"HELO mail.hub.test\r\n"


def _in_data_after_helo(ehlo_refusal):
    s = session(eight_bit=True)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(ehlo_refusal)) == b"HELO mail.hub.test\r\n"
    s.receive(b"250 hello\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    assert s.receive(b"354 go\r\n") == [SendBody(convert_7bit=True)]
    return s


def test_no_7bit_form_after_a_554_to_ehlo_is_no_bounce():
    # the server refused EHLO and took HELO: whether it has 8BITMIME is
    # unknown, so a message without a 7-bit form is not bounced for its
    # lack -- the session fails for now, and the next MX host has a go
    s = _in_data_after_helo(b"554 5.7.1 not you\r\n")
    unconvertible = LocalReply(554, "5.6.3", ("the message needs 8BITMIME, no 7-bit form",))
    assert s.body_failed(unconvertible) == [Close(abort=True)]
    error = s.outcome.session_error
    assert (error.code, error.status) == (451, "4.6.3") and isinstance(error, LocalReply)
    assert "554 5.6.3 the message needs 8BITMIME" in error.text()
    assert "554 5.7.1 not you" in error.text()
    assert s.outcome.recipients == () and s.outcome.phase == "message data"
    # a 502 says the server has no extension: the bounce stands
    s = _in_data_after_helo(b"502 5.5.1 no EHLO\r\n")
    s.body_failed(unconvertible)
    assert s.outcome.session_error is None
    assert [r.reply for r in s.outcome.recipients] == [unconvertible]
    # and a temporary failure stays what it is
    s = _in_data_after_helo(b"554 5.7.1 not you\r\n")
    s.body_failed(LocalReply(451, "4.3.0", ("local error",)))
    assert [r.reply.code for r in s.outcome.recipients] == [451]


@pytest.mark.parametrize("helo, read", [(b"250 hello", True), (b"554 5.7.1 not you", False)])
def test_a_554_to_ehlo_says_what_the_host_offers_only_once_helo_is_taken(helo, read):
    # hello_read: the relay's "TLS downgrade" judgement.  A 554 says
    # nothing of STARTTLS; a refused HELO after it sent nothing in clear
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(b"554 5.7.1 not you\r\n")
    assert not s.hello_read
    s.receive(helo + b"\r\n")
    if s.outcome is None:
        s.receive(b"451 4.3.0 later\r\n")  # MAIL, so the session ends
    assert s.outcome.hello_read is read
    # a 502 (no ESMTP, so no STARTTLS) is read at once, HELO refused or not
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(b"502 5.5.1 no EHLO\r\n")
    s.receive(b"554 5.7.1 not you\r\n")
    assert s.outcome.hello_read


@pytest.mark.parametrize("refusal", [b"554 5.7.1 go away", b"421 4.3.2 busy"])
def test_helo_refused_after_the_ehlo_fallback_fails_session(refusal):
    # a server that takes neither EHLO nor HELO: no MAIL is sent, the
    # session ends with the HELO's reply (for the relay's log and bounce)
    s = session()
    s.receive(b"220 old server\r\n")
    s.receive(b"502 5.5.1 no\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == refusal.decode()
    assert [(r.address, r.kind) for r in s.outcome.recipients] == []


def test_ehlo_transient_failure_fails_session():
    s = session()
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"421 4.3.2 busy\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.code == 421


def test_greeting_refused():
    s = session()
    assert sent(s.receive(b"554 5.3.2 no SMTP service here\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "554 5.3.2 no SMTP service here"
    assert s.outcome.recipients == ()


@pytest.mark.parametrize(
    ("script", "step"),
    [
        ([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"250 ok whatever\r\n"], "DATA"),
        ([b"250 2.1.0 ok\r\n", b"354 what\r\n"], "RCPT"),
        ([b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go\r\n", None,
          b"354 again?\r\n"], "end of data"),
        ([b"250 2.1.0 ok\r\n", b"600 hmm\r\n"], "RCPT"),
        ([b"150 2.1.0 ok\r\n"], "MAIL"),
    ],
)
def test_a_reply_the_step_cannot_have_is_never_success(script, step):
    # RFC 5321 4.2.1, 4.3.2: only 354 lets the data go, only 2yz accepts a
    # recipient or the message; anything else must not count as delivered.
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    actions = []
    for data in script:
        actions = s.body_sent() if data is None else s.receive(data)
    assert s.outcome is not None and s.outcome.recipients == ()
    err = s.outcome.session_error
    assert err.is_transient and err.status == "4.5.0" and step in err.text()
    # the server's state is unknown (it may be reading message data): no
    # QUIT, whose reply may never come, but the connection dropped at once
    assert actions == [Close(abort=True)]
    assert s.phase is Phase.DONE and s.receive(b"221 bye\r\n") == []


@pytest.mark.parametrize(
    "after", [b"250-injected", b"250 X\r\n", b"250-a\r\n", b"garbage\r\n", b"99\r\n"])
def test_bytes_after_the_starttls_reply_end_the_session(after):
    # RFC 3207 4.2: what came in the clear must not be read as a reply under TLS
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    actions = s.receive(b"220 go\r\n" + after)
    assert actions == [Close()]
    assert "after its reply to STARTTLS" in s.outcome.session_error.text()


def test_the_reply_parser_starts_afresh_under_tls():
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    assert s.receive(b"220 go\r\n") == [StartTLS()]
    s.tls_started()
    assert not s._parser.pending


def test_starttls_then_ehlo_again():
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_FULL)) == b"STARTTLS\r\n"
    assert s.receive(b"220 2.0.0 ready\r\n") == [StartTLS()]
    assert sent(s.tls_started()) == b"EHLO mail.hub.test\r\n"
    # the server still lists STARTTLS (wrongly): it is not tried twice
    assert sent(s.receive(EHLO_FULL)).startswith(b"MAIL FROM:")
    s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 ok\r\n")
    assert s.outcome.tls and s.outcome.tls_offered


@pytest.mark.parametrize("replies, read", [
    ([b"421 4.3.2 busy\r\n"], False),              # greeting refused
    ([b"220 hi\r\n"], False),                      # lost before EHLO's reply
    ([b"220 hi\r\n", b"421 4.3.2 closing\r\n"], False),  # no extensions said
    ([b"220 hi\r\n", b"250 hi\r\n"], True),       # extensions: none
    ([b"220 hi\r\n", b"502 5.5.1 no\r\n", b"250 hi\r\n"], True),  # HELO: none
])
def test_the_outcome_says_whether_the_ehlo_reply_was_read(replies, read):
    # the relay judges a TLS downgrade only from a session that learnt
    # what the host offers
    s = session(tls="opportunistic")
    for reply in replies:
        s.receive(reply)
    outcome = s.outcome or s.connection_lost()
    assert outcome.hello_read is read
    assert not outcome.tls_offered


def test_starttls_refused_opportunistic_continues_in_clear():
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    assert sent(s.receive(b"454 4.7.0 TLS not available\r\n")).startswith(b"MAIL FROM:")
    for reply in (b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go\r\n"):
        s.receive(reply)
    s.receive(b"250 2.0.0 queued\r\n")
    # the refusal is in the outcome, for the relay's log line
    assert s.outcome.tls_refused.text() == "454 4.7.0 TLS not available"
    assert not s.outcome.tls and s.outcome.tls_offered


def test_a_421_to_starttls_ends_the_session_with_it():
    # RFC 5321 3.8: a 421 to any command is the server closing the channel,
    # as for MAIL and RCPT; it is not a refusal to go on from in clear (the
    # MAIL went to a closing server, the 421 was lost, and the relay warned
    # that the session "went on without TLS")
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    assert sent(s.receive(b"421 4.3.2 shutting down\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "421 4.3.2 shutting down"
    assert s.outcome.tls_refused is None


def test_a_refused_starttls_that_stops_the_session_is_no_tls_refusal():
    # the smarthost password only goes over TLS: after the refusal nothing
    # went in clear, so the outcome has no refusal for the relay to log as
    # a session that "went on without TLS"
    s = session(credentials=("user", "pw"), tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
    assert sent(s.receive(b"454 4.7.0 TLS not available\r\n")) == b"QUIT\r\n"
    assert "only sent over TLS" in s.outcome.session_error.text()
    assert s.outcome.tls_refused is None
    # the refusal is then in no warning: the session's error keeps its
    # words, or "this session has none" reads as a smarthost without
    # STARTTLS, and the admin looks for the wrong cause
    assert s.outcome.session_error.text().endswith(
        "(it refused STARTTLS: 454 4.7.0 TLS not available)"), s.outcome.session_error.text()


def test_a_session_with_tls_has_no_tls_refusal():
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    s.receive(b"220 go ahead\r\n")
    assert (s.outcome or s.connection_lost()).tls_refused is None


def test_tls_required_but_not_offered():
    s = session(tls="require")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"QUIT\r\n"
    err = s.outcome.session_error
    assert err.is_transient and err.status == "4.7.10" and "STARTTLS" in err.text()


def test_tls_required_and_refused():
    s = session(tls="require")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    assert sent(s.receive(b"454 4.7.0 TLS not available\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.code == 454


@pytest.mark.parametrize("refusal, said, then", [
    (b"554 5.7.0 TLS not available\r\n", "554 5.7.0", b"QUIT\r\n"),
    (b"502 5.5.1 command not implemented\r\n", "502 5.5.1", b"QUIT\r\n"),
    # a 2yz that is no 220 starts no TLS (RFC 3207 4), and leaves the
    # server's state unknown: the connection is dropped, no QUIT
    (b"250 ok\r\n", "250", b""),
])
def test_tls_required_and_refused_for_good_keeps_the_mail_queued(refusal, said, then):
    # TLS required by the hub's policy ([relay] smarthost_tls = "verify",
    # require_tls_after_seen): a 5yz to STARTTLS refuses TLS, not this
    # message, and the mail stays queued as when STARTTLS is not offered
    # (the server's 5yz as the session's error bounced every message)
    s = session(tls="require")
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    assert sent(s.receive(refusal)) == then
    err = s.outcome.session_error
    assert isinstance(err, LocalReply) and err.is_transient, err
    assert (err.code, err.status) == (454, "4.7.0")
    assert err.text().endswith(f"(the server said {said})"), err.text()
    assert s.outcome.tls_refused is None


@pytest.mark.parametrize("reply", [b"250 2.0.0 go ahead\r\n", b"250 ok\r\n", b"221 bye\r\n"])
@pytest.mark.parametrize("tls", ["opportunistic", "require"])
def test_a_2yz_to_starttls_that_is_no_220_ends_the_connection_without_a_word(reply, tls):
    # RFC 3207 4: 220 alone starts TLS; after another 2yz the server may
    # wait for a handshake or for a command in clear.  Under opportunistic
    # TLS the session went on in clear (EHLO... MAIL... the message) as
    # after a 454; now nothing more goes on this connection, QUIT included
    s = session(tls=tls)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_FULL)) == b"STARTTLS\r\n"
    actions = s.receive(reply)
    assert actions == [Close(abort=True)] and sent(actions) == b""
    assert s.phase is Phase.DONE
    err = s.outcome.session_error
    assert isinstance(err, LocalReply) and err.is_transient, err
    assert s.outcome.tls_refused is None and not s.outcome.tls
    assert s.outcome.recipients == () and s.outcome.refused == ()
    if tls == "opportunistic":
        # a TLS start that failed: the relay's plain retry on a new connection
        assert s.outcome.phase == Phase.TLS.value
        assert (err.code, err.status) == (421, "4.5.0")
        assert reply.decode().strip() in err.text() and "not 220" in err.text()
    else:
        assert (err.code, err.status) == (454, "4.7.0")
    assert s.receive(b"250 more\r\n") == []  # nothing after it counts


def test_a_2yz_to_starttls_under_required_tls_says_so_in_the_reply_kept():
    # the mail stays queued with the reason queue show gives: the server's
    # words alone made "454 4.7.0 go ahead (the server said 250 2.0.0)"
    s = session(tls="require")
    s.tls_required_by = '[relay] smarthost_tls = "verify"'
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    s.receive(b"250-2.0.0 go\r\n250 2.0.0 ahead\r\n")
    err = s.outcome.session_error
    assert err.text() == (
        '454 4.7.0 TLS is required for this destination ([relay] smarthost_tls = "verify"), '
        'but the server answered STARTTLS with "go / ahead", not 220, and the connection was '
        "dropped (the server said 250 2.0.0)")


def test_a_refusal_to_starttls_still_goes_on_in_clear_when_opportunistic():
    # a 454 or a 5yz is a proper refusal (RFC 3207 4): the server is still
    # reading commands in clear, and opportunistic TLS goes on
    for refusal in (b"454 4.7.0 TLS not available\r\n", b"502 5.5.1 not implemented\r\n"):
        s = session(tls="opportunistic")
        s.receive(b"220 hi\r\n")
        s.receive(EHLO_FULL)
        assert sent(s.receive(refusal)).startswith(b"MAIL FROM:")
        assert s.outcome is None


def test_tls_none_never_starts_tls():
    s = session(tls="none")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_FULL)).startswith(b"MAIL FROM:")


def test_size_too_big_is_permanent_before_sending():
    s = session(size=5000)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"QUIT\r\n"
    r = s.outcome.recipients[0]
    assert r.kind == "permanent" and r.reply.status == "5.3.4" and "1000" in r.reply.text()


def test_a_message_of_exactly_the_remote_size_limit_is_sent():
    # RFC 1870: only a message over the server's SIZE is refused
    s = session(size=1000)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"MAIL FROM:<alice@example.org> SIZE=1000\r\n"
    assert s.outcome is None


def test_smtputf8_needed_but_missing():
    s = session(recipients=[(Address("jörg", "remote.test"), None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"QUIT\r\n"
    r = s.outcome.recipients[0]
    assert r.kind == "permanent" and r.reply.status == "5.6.7" and "SMTPUTF8" in r.reply.text()


@pytest.mark.parametrize("ehlo", [EHLO_BASIC, EHLO_FULL.replace(b"250-SMTPUTF8\r\n", b"")])
def test_smtputf8_missing_refuses_only_the_recipients_that_need_it(ehlo):
    # RFC 6531 3.2: bob's address needs no SMTPUTF8; a transaction without
    # jörg needs none either, so bob is not bounced for jörg's address
    joerg = Address("jörg", "remote.test")
    s = session(recipients=[(joerg, None), (BOB, None)])
    s.receive(b"220 hi\r\n")
    batch = sent(s.receive(ehlo))
    assert b"j\xc3\xb6rg" not in batch and b"SMTPUTF8" not in batch
    if ehlo is EHLO_BASIC:
        assert batch == b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
        assert sent(s.receive(b"250 2.1.0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"
        assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
        actions = s.receive(b"354 go\r\n")
    else:  # pipelined: one RCPT, so three replies
        assert batch == (b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
                         b"RCPT TO:<bob@remote.test>\r\nDATA\r\n")
        actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 ok\r\n")
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[joerg].kind == "permanent"
    assert (results[joerg].reply.code, results[joerg].reply.status) == (553, "5.6.7")


def _to_the_354(session, ehlo):
    """The MAIL, one RCPT and DATA answered (in one batch to a pipelining
    server, one by one otherwise, checking that DATA is sent): the actions
    the 354 brings."""
    if b"PIPELINING" in ehlo:
        return session.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    session.receive(b"250 ok\r\n")
    assert sent(session.receive(b"250 ok\r\n")) == b"DATA\r\n"
    return session.receive(b"354 go\r\n")


@pytest.mark.parametrize("ehlo", [EHLO_FULL.replace(b"250-SMTPUTF8\r\n", b""),
                                  EHLO_FULL.replace(b"250-SMTPUTF8\r\n", b"")
                                  .replace(b"250-PIPELINING\r\n", b"")])
def test_a_refused_utf8_recipient_does_not_make_the_others_copy_7bit(ehlo):
    # jörg came from an alias, not from a client that said SMTPUTF8: the
    # message is no UTF-8 header message, and the transaction without jörg
    # needs nothing 8BITMIME does not give -- the 8-bit body goes as it is,
    # not as a 7-bit copy (which may have no 7-bit form: bob would bounce,
    # 5.6.9, "needs SMTPUTF8", for an address that is not his)
    joerg = Address("jörg", "remote.test")
    s = session(recipients=[(joerg, None), (BOB, None)], eight_bit=True)
    s.receive(b"220 hi\r\n")
    batch = sent(s.receive(ehlo))
    assert batch.startswith(b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME")
    actions = _to_the_354(s, ehlo)
    assert actions == [SendBody(convert_7bit=False)]
    assert not s.smtputf8_wanted  # what the relay's 5.6.9/5.6.3 choice reads
    # a client that did say SMTPUTF8 may have put UTF-8 in the header:
    # then the 7-bit copy it is, as for any such message
    s = session(recipients=[(joerg, None), (BOB, None)], eight_bit=True, smtputf8=True)
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    actions = _to_the_354(s, ehlo)
    assert actions == [SendBody(convert_7bit=True)]
    assert s.smtputf8_wanted


def test_smtputf8_missing_for_a_utf8_sender_refuses_everyone():
    # a MAIL FROM the server cannot take: nobody can be sent the message
    s = session(sender=Address("jörg", "example.org"), recipients=[(BOB, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"QUIT\r\n"
    [r] = s.outcome.recipients
    assert r.kind == "permanent" and r.reply.status == "5.6.7"


def test_smtputf8_used_when_offered():
    s = session(recipients=[(Address("jörg", "remote.test"), None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_FULL)).startswith(
        b"MAIL FROM:<alice@example.org> SIZE=100 SMTPUTF8\r\nRCPT TO:<j\xc3\xb6rg@remote.test>")


@pytest.mark.parametrize("ehlo, param, convert, utf8", [
    (EHLO_FULL, b" BODY=8BITMIME", False, False),
    (EHLO_BASIC, b"", True, False),
    (EHLO_FULL.replace(b"250-SMTPUTF8\r\n", b""), b" BODY=8BITMIME", False, False),
    # sent with SMTPUTF8 (UTF-8 header fields, RFC 6532) to a server that
    # takes 8-bit bodies but not SMTPUTF8: the 7-bit copy encodes them
    (EHLO_FULL.replace(b"250-SMTPUTF8\r\n", b""), b" BODY=8BITMIME", True, True),
])
def test_8bit_body(ehlo, param, convert, utf8):
    s = session(eight_bit=True, smtputf8=utf8)
    s.receive(b"220 hi\r\n")
    # RFC 1870: SIZE= counts what is sent after the 354; the 7-bit copy is
    # larger by an amount not known before it is made, so it goes without
    # SIZE= (an optional parameter of MAIL)
    size = b"" if convert else b" SIZE=100"
    assert sent(s.receive(ehlo)).split(b"\r\n")[0] == (
        b"MAIL FROM:<alice@example.org>" + size + param)
    actions = _to_the_354(s, ehlo)
    assert actions == [SendBody(convert_7bit=convert)]


def test_dsn_parameters_passed_when_offered():
    s = session(dsn=DSNRequest(ret="HDRS", envid="id+1=x"),
                recipients=[(BOB, RecipientDSN(notify=("SUCCESS", "FAILURE"),
                                               orcpt="rfc822;bob@remote.test"))])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[0] == b"MAIL FROM:<alice@example.org> SIZE=100 RET=HDRS ENVID=id+2B1+3Dx"
    assert lines[1] == (b"RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE "
                        b"ORCPT=rfc822;bob@remote.test")
    s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 ok\r\n")
    assert s.outcome.dsn_supported


EHLO_DSN_UTF8 = b"250-mx.remote.test\r\n250-DSN\r\n250 SMTPUTF8\r\n"
EHLO_DSN_ONLY = b"250-mx.remote.test\r\n250 DSN\r\n"


def first_lines(ehlo, **kw):
    """MAIL and the first RCPT as the session sends them after ``ehlo``
    (without PIPELINING the RCPT once MAIL has its 250)."""
    s = session(**kw)
    s.receive(b"220 hi\r\n")
    out = sent(s.receive(ehlo))
    if b"\r\nRCPT " not in out:
        out += sent(s.receive(b"250 ok\r\n"))
    mail, rcpt = out.split(b"\r\n")[:2]
    return mail, rcpt


@pytest.mark.parametrize("ehlo", [EHLO_FULL, EHLO_DSN_ONLY])
def test_envid_and_orcpt_are_relayed_as_they_were_received(ehlo):
    # RFC 3461 5.2.1 (a): "the same associated esmtp-value"; (d): "the
    # identical original-recipient-address", case included -- not the
    # decoded value encoded again ("a+41b" is not "aAb")
    mail, rcpt = first_lines(
        ehlo, dsn=DSNRequest("HDRS", "aAb", "a+41b"),
        recipients=[(BOB, RecipientDSN(("FAILURE",), "rfc822;Joe+X@Example.COM",
                                       "rfc822;Joe+2BX@Example.COM"))])
    assert mail.endswith(b" RET=HDRS ENVID=a+41b")
    assert rcpt == (b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE "
                    b"ORCPT=rfc822;Joe+2BX@Example.COM")
    _, rcpt = first_lines(ehlo, recipients=[
        (BOB, RecipientDSN(("NEVER",), "RFC822;joe@x.test", "RFC822;j+6F+65@x.test"))])
    assert rcpt.endswith(b" ORCPT=RFC822;j+6F+65@x.test")


@pytest.mark.parametrize("ehlo, utf8, goes", [
    # a 7-bit utf-8-addr-xtext is valid in any transaction: as received,
    # lower-case HEXPOINT and the type's spelling included
    (EHLO_DSN_ONLY, False, b"ORCPT=UTF-8;j\\x{f6}rg@x.test"),
    (EHLO_DSN_UTF8, True, b"ORCPT=UTF-8;j\\x{f6}rg@x.test"),
])
def test_a_7bit_utf8_orcpt_is_relayed_as_received(ehlo, utf8, goes):
    _, rcpt = first_lines(ehlo, smtputf8=utf8, recipients=[
        (BOB, RecipientDSN(("FAILURE",), "UTF-8;j\u00f6rg@x.test", "UTF-8;j\\x{f6}rg@x.test"))])
    assert rcpt == b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE " + goes


def test_a_raw_utf8_orcpt_is_relayed_as_received_only_in_an_smtputf8_transaction():
    # RFC 6533 3: raw UTF-8 (utf-8-addr-unitext) only where SMTPUTF8 is
    # used; otherwise converted as before, every non-ASCII one as \x{HEX}
    dsn = RecipientDSN(("FAILURE",), "utf-8;j\u00f6rg+x@x.test", "utf-8;j\u00f6rg\\x{2b}x@x.test")
    _, rcpt = first_lines(EHLO_DSN_UTF8, smtputf8=True, recipients=[(BOB, dsn)])
    assert rcpt.endswith(" ORCPT=utf-8;j\u00f6rg\\x{2b}x@x.test".encode())
    _, rcpt = first_lines(EHLO_DSN_ONLY, smtputf8=True, recipients=[(BOB, dsn)])
    assert rcpt.endswith(b" ORCPT=utf-8;j\\x{F6}rg\\x{2B}x@x.test")


@pytest.mark.parametrize("ehlo, utf8", [(EHLO_DSN_ONLY, b""), (EHLO_DSN_UTF8, b" SMTPUTF8")])
def test_a_utf8_envid_makes_the_transaction_one_without_dsn(ehlo, utf8):
    # RFC 3461 4.4: the id is printable US-ASCII, which RFC 6531/6533 do not
    # widen; 5.2.1 (a): a relay to a server with DSN "MUST" pass it on.
    # Not the id alone left out: no DSN parameter goes, and the next hop
    # takes over no notice duty (5.2.2: the hub's "relayed" notice)
    dsn = DSNRequest("HDRS", "id-\u20ac", "id-+E2+82+AC")
    rcpt_dsn = RecipientDSN(("SUCCESS", "FAILURE"), "utf-8;j\u00f6rg@x.test",
                            "utf-8;j\\x{F6}rg@x.test")
    mail, rcpt = first_lines(ehlo, smtputf8=True, dsn=dsn, recipients=[(BOB, rcpt_dsn)])
    assert mail == b"MAIL FROM:<alice@example.org>" + utf8
    assert rcpt == b"RCPT TO:<bob@remote.test>"
    s = session(smtputf8=True, dsn=dsn, recipients=[(BOB, rcpt_dsn)])
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 queued\r\n")
    assert s.envid_withheld
    assert s.outcome.recipients[0].reply.code == 250
    assert not s.outcome.dsn_supported
    # an ASCII id keeps the request whole
    s = session(smtputf8=True, dsn=DSNRequest("HDRS", "id-1", "id-1"),
                recipients=[(BOB, rcpt_dsn)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(ehlo)).split(b"\r\n")[0].endswith(b" RET=HDRS ENVID=id-1")
    assert not s.envid_withheld


def test_dsn_parameters_as_received_go_only_to_a_next_hop_with_dsn():
    mail, rcpt = first_lines(
        EHLO_BASIC, dsn=DSNRequest("HDRS", "aAb", "a+41b"),
        recipients=[(BOB, RecipientDSN(("FAILURE",), "rfc822;b@x", "rfc822;+62@x"))])
    assert mail == b"MAIL FROM:<alice@example.org> SIZE=100"
    assert rcpt == b"RCPT TO:<bob@remote.test>"


@pytest.mark.parametrize("envid_raw, orcpt_raw", [
    ("a+42b", "rfc822;X@x"),  # stand for other values than the decoded ones
    ("aAb\r\nRSET", "rfc822;b@x\r\nRSET"),  # not xtext: never put on the line
    ("a+41B+2b", "rfc822;b+2b@x"),  # lower-case hex: no xtext either
])
def test_a_form_as_received_that_does_not_match_is_encoded_afresh(envid_raw, orcpt_raw):
    # the values can come from a queue record on disk or an embedding
    # application: the decoded form, the one the notices show, wins
    mail, rcpt = first_lines(
        EHLO_DSN_ONLY, dsn=DSNRequest(None, "aAb", envid_raw),
        recipients=[(BOB, RecipientDSN(("FAILURE",), "rfc822;b@x", orcpt_raw))])
    assert mail == b"MAIL FROM:<alice@example.org> ENVID=aAb"
    assert rcpt == b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE ORCPT=rfc822;b@x"


def test_orcpt_of_type_utf8_goes_out_in_rfc6533_form():
    # utf-8-addr-xtext: "\x{HEX}" escapes, 7-bit whatever the next hop
    # offers; never xtext's "+HH", which that form does not have
    s = session(recipients=[
        (BOB, RecipientDSN(notify=("FAILURE",), orcpt="utf-8;j\u00f6rg+x=y@b\u00fccher.test")),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == (b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE "
                        b"ORCPT=utf-8;j\\x{F6}rg\\x{2B}x\\x{3D}y@b\\x{FC}cher.test")


def test_orcpt_of_type_utf8_goes_raw_in_an_smtputf8_transaction():
    # RFC 6533 3: to a server that offers SMTPUTF8, native UTF-8 rather
    # than \x{HEX} (utf-8-addr-unitext); SP, "+", "=" and "\\" are still
    # escaped, as ORCPT cannot carry them raw
    s = session(smtputf8=True, recipients=[
        (BOB, RecipientDSN(notify=("FAILURE",), orcpt="utf-8;j\u00f6rg+x=y@b\u00fccher.test")),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == ("RCPT TO:<bob@remote.test> NOTIFY=FAILURE "
                        "ORCPT=utf-8;j\u00f6rg\\x{2B}x\\x{3D}y@b\u00fccher.test").encode()
    # and the hub's own server reads it back as the address it was
    _, params = parse_rcpt(lines[1].decode()[5:], "remote.test", True)
    assert params.orcpt == "utf-8;j\u00f6rg+x=y@b\u00fccher.test"


def test_a_raw_utf8_orcpt_is_counted_in_octets_against_the_rcpt_budget():
    # 130 four-octet characters: 130 characters, 520 octets -- over the
    # 500 RFC 3461 (4) adds to the line, so left out
    long_orcpt = "utf-8;" + "\U0001F600" * 130 + "@x.test"
    s = session(smtputf8=True, recipients=[
        (BOB, RecipientDSN(notify=("FAILURE",), orcpt=long_orcpt)),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE"


def test_dsn_parameters_not_sent_without_dsn():
    s = session(dsn=DSNRequest(ret="FULL"), recipients=[(BOB, RecipientDSN(notify=("NEVER",)))])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    assert sent(s.receive(b"250 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"


def test_null_sender():
    s = session(sender=None)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"MAIL FROM:<> SIZE=100\r\n"


def test_auth_plain():
    s = session(credentials=("user", "sécret"))
    s.receive(b"220 hi\r\n")
    line = sent(s.receive(b"250-smarthost\r\n250 AUTH LOGIN PLAIN\r\n"))
    assert line.startswith(b"AUTH PLAIN ")
    assert base64.b64decode(line[11:]) == "\0user\0sécret".encode()
    # RFC 4954 5: nobody vouched for the submitter, and the hub logged in
    assert sent(s.receive(b"235 2.7.0 ok\r\n")) == (
        b"MAIL FROM:<alice@example.org> AUTH=<>\r\n")


def test_auth_login():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-smarthost\r\n250 AUTH=LOGIN\r\n")) == b"AUTH LOGIN\r\n"
    assert sent(s.receive(b"334 VXNlcm5hbWU6\r\n")) == base64.b64encode(b"user") + b"\r\n"
    assert sent(s.receive(b"334 UGFzc3dvcmQ6\r\n")) == base64.b64encode(b"pw") + b"\r\n"
    assert sent(s.receive(b"235 ok\r\n")).startswith(b"MAIL FROM:")


@pytest.mark.parametrize("offered, named", [
    (b"CRAM-MD5", "CRAM-MD5"),
    (b"CRAM-MD5 XOAUTH2", "CRAM-MD5 XOAUTH2"),
    (b"cram-md5  SCRAM-SHA-256", "cram-md5 SCRAM-SHA-256"),
])
def test_no_credentials_go_to_a_smarthost_offering_neither_plain_nor_login(offered, named):
    # "AUTH PLAIN" went anyway: the server refused it (504 or 535), and the
    # mail waited as a login refused, with the server's words for a reason
    # that was the hub's, until its queue lifetime ended.  Now nothing of
    # the login goes, and the hub's 454 says what the server offers
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    actions = s.receive(b"250-smarthost\r\n250 AUTH " + offered + b"\r\n")
    assert sent(actions) == b"QUIT\r\n"
    err = s.outcome.session_error
    assert err == LocalReply(454, "4.7.0", (
        f"the smarthost offers AUTH {named} only; txmailhub can use PLAIN or LOGIN "
        "([relay] smarthost_auth_file is set)",))
    assert err.is_transient  # the configuration's to fix: deferred, as Postfix does
    assert s.outcome.recipients == ()


def test_a_smarthost_auth_line_naming_no_mechanism():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-smarthost\r\n250 AUTH\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == (
        "454 4.7.0 the smarthost offers AUTH with no mechanism named; txmailhub can use "
        "PLAIN or LOGIN ([relay] smarthost_auth_file is set)")


def test_a_long_auth_line_is_quoted_cut_short():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250 AUTH " + b"X-MECH " * 100 + b"\r\n")
    text = s.outcome.session_error.text()
    assert text.startswith("454 4.7.0 the smarthost offers AUTH X-MECH X-MECH ")
    assert text.endswith(" X-MECH ... only; txmailhub can use PLAIN or LOGIN "
                         "([relay] smarthost_auth_file is set)")
    assert len(text) < 330


@pytest.mark.parametrize("ehlo, tls, why", [
    # over TLS (STARTTLS done; the same for port 465's implicit TLS)
    (None, "opportunistic", "does not offer AUTH over TLS"),
    # smarthost_tls = "none" and a server that offers AUTH only after STARTTLS
    (b"250-smarthost\r\n250 STARTTLS\r\n", "none",
     'offers STARTTLS but no AUTH without TLS, and smarthost_tls = "none" never uses '
     "STARTTLS (AUTH is often offered only after it)"),
    (b"250-smarthost\r\n250 SIZE 1000\r\n", "none", "does not offer AUTH"),
])
def test_a_smarthost_without_auth_says_why_and_gets_no_credentials(ehlo, tls, why):
    s = session(credentials=("user", "pw"), tls=tls)
    s.receive(b"220 hi\r\n")
    if ehlo is None:
        s.receive(b"250-smarthost\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
        s.receive(b"220 go\r\n")
        s.tls_started()
        ehlo = b"250-smarthost\r\n250 SIZE 1000\r\n"
    assert sent(s.receive(ehlo)) == b"QUIT\r\n"
    assert s.outcome.session_error == LocalReply(454, "4.7.0", (
        f"the smarthost {why}; [relay] smarthost_auth_file is set, and no mail goes there "
        "without that login",))


def test_a_smarthost_that_refused_ehlo_has_no_auth_to_offer():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"502 5.5.2 no EHLO here\r\n")) == b"HELO mail.hub.test\r\n"
    assert sent(s.receive(b"250 smarthost\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == (
        "454 4.7.0 the smarthost refused EHLO, and HELO offers no AUTH; [relay] "
        "smarthost_auth_file is set, and no mail goes there without that login")


def test_the_password_never_goes_in_clear_to_a_smarthost_offering_auth_only_after_tls():
    # under "opportunistic" (and "verify") the password waits for TLS: a
    # STARTTLS refused says so, and AUTH offered in clear changes nothing
    for ehlo in (b"250-smarthost\r\n250-STARTTLS\r\n250 SIZE 1000\r\n",
                 b"250-smarthost\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"):
        s = session(credentials=("user", "pw"), tls="opportunistic")
        s.receive(b"220 hi\r\n")
        assert sent(s.receive(ehlo)) == b"STARTTLS\r\n"
        actions = s.receive(b"454 4.7.0 TLS not available\r\n")
        assert sent(actions) == b"QUIT\r\n"
        assert s.outcome.session_error.text() == (
            "454 4.7.0 the smarthost password is only sent over TLS, and this session has "
            "none (it refused STARTTLS: 454 4.7.0 TLS not available)")


@pytest.mark.parametrize("tls", ["require", "opportunistic"])
def test_auth_offered_only_after_starttls_gets_the_credentials_over_tls(tls):
    # as Postfix's smtpd_tls_auth_only has it: the EHLO in clear names no
    # AUTH, the one after the handshake does; what the first said must not
    # count as the server's offer
    s = session(credentials=("user", "pw"), tls=tls)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-smarthost\r\n250 STARTTLS\r\n")) == b"STARTTLS\r\n"
    s.receive(b"220 go\r\n")
    assert sent(s.tls_started()) == b"EHLO mail.hub.test\r\n"
    line = sent(s.receive(b"250-smarthost\r\n250 AUTH LOGIN PLAIN\r\n"))
    assert line == b"AUTH PLAIN " + base64.b64encode(b"\0user\0pw") + b"\r\n"
    assert s.outcome is None


def test_auth_offered_in_clear_only_does_not_count_after_starttls():
    # the reverse: PLAIN named before the handshake, CRAM-MD5 alone after
    # it (RFC 3207 4.2: the client discards what it knew from before TLS)
    s = session(credentials=("user", "pw"), tls="require")
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
    s.receive(b"220 go\r\n")
    s.tls_started()
    assert sent(s.receive(b"250-smarthost\r\n250 AUTH CRAM-MD5\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text().startswith(
        "454 4.7.0 the smarthost offers AUTH CRAM-MD5 only;")


def test_auth_refused_keeps_mail_queued():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    assert sent(s.receive(b"535 5.7.8 bad credentials\r\n")) == b"QUIT\r\n"
    err = s.outcome.session_error
    assert err.is_transient and "535" in err.text() and "pw" not in err.text()
    # the 454 is the hub's judgement, the 535 the server's: a notice must
    # not give the 454 as the server's words (RFC 3464 2.3.6), as for a 530
    assert err == LocalReply(454, "4.7.0", (
        f"{AUTH_TEXT_LEFT_OUT} (the server said 535 5.7.8)",))


@pytest.mark.parametrize("ehlo, steps", [
    (b"250-smarthost\r\n250 AUTH PLAIN\r\n", []),
    (b"250-smarthost\r\n250 AUTH LOGIN\r\n", [b"334 VXNlcm5hbWU6"]),
    (b"250-smarthost\r\n250 AUTH LOGIN\r\n", [b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6"]),
])
def test_a_reply_to_auth_that_echoes_the_credentials_keeps_no_text(ehlo, steps):
    # a server that quotes what it was sent puts the login, base64, in its
    # reply; the session error goes to the log, the queue and a notice,
    # so a reply to AUTH keeps its code and enhanced status only
    s = session(credentials=("user", "secret"))
    s.receive(b"220 hi\r\n")
    sent_lines = [sent(s.receive(ehlo))]
    for step in steps:
        sent_lines.append(sent(s.receive(step + b"\r\n")))
    blob = sent_lines[-1].split()[-1]
    assert sent(s.receive(b"535-5.7.8 bad: " + blob + b"\r\n535 5.7.8 echo " + blob
                          + b" user secret\r\n")) == b"QUIT\r\n"
    text = s.outcome.session_error.text()
    assert blob.decode() not in text and "secret" not in text and "user" not in text
    assert text == f"454 4.7.0 {AUTH_TEXT_LEFT_OUT} (the server said 535 5.7.8)"


@pytest.mark.parametrize("after", [b"250 2.0.0 echo ", b"421 4.3.0 echo "])
def test_a_stray_reply_after_a_refused_auth_keeps_no_text_either(after):
    # a line too many after the 535, in the same bytes, is no answer to
    # anything and ends the session; it is logged, and it may quote the
    # credentials as the 535 may
    s = session(credentials=("user", "secret"))
    s.receive(b"220 hi\r\n")
    blob = sent(s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")).split()[-1]
    s.receive(b"535 5.7.8 no\r\n" + after + blob + b"\r\n")
    said = [s.outcome.session_error.text()]
    if s.protocol_error is not None:
        said.append(s.protocol_error.text())
    assert not any(blob.decode() in text for text in said), said


@pytest.mark.parametrize("later", [False, True])
def test_a_malformed_line_after_a_refused_auth_is_not_quoted(later):
    # the echo of the credentials as a line of its own after the 535, in
    # the same bytes or the next: no reply line, so a protocol error, which
    # the relay logs (the session's results were known before it)
    s = session(credentials=("user", "secret"))
    s.receive(b"220 hi\r\n")
    blob = sent(s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")).split()[-1]
    if later:
        assert sent(s.receive(b"535 5.7.8 no\r\n")) == b"QUIT\r\n"
        assert s.receive(blob + b"\r\n") == [Close(abort=True)]
    else:
        assert s.receive(b"535 5.7.8 no\r\n" + blob + b"\r\n") == [Close(abort=True)]
    assert s.protocol_error.text() == (
        "421 4.5.0 protocol error from the server: malformed reply line")
    assert blob.decode() not in s.outcome.session_error.text()


def test_a_malformed_reply_to_auth_is_not_quoted():
    s = session(credentials=("user", "secret"))
    s.receive(b"220 hi\r\n")
    line = sent(s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n"))
    blob = line.split()[-1]
    s.receive(b"5x5 " + blob + b"\r\n")
    text = s.outcome.session_error.text()
    assert text == "421 4.5.0 protocol error from the server: malformed reply line"


@pytest.mark.parametrize("steps, refusal", [
    # to "AUTH LOGIN" itself (the mechanism refused), or to the user name
    ([], b"504 5.5.4 mechanism not available"),
    ([b"334 VXNlcm5hbWU6"], b"535 5.7.8 no such user"),
])
def test_a_login_refused_before_the_password_keeps_mail_queued_too(steps, refusal):
    # A refusal of AUTH PLAIN, or of LOGIN's password, was held as the hub's
    # 454; one to LOGIN's earlier steps went out as the server's 5xx, a
    # permanent session error: every recipient of the smarthost bounced for
    # what is the configuration's fault
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-smarthost\r\n250 AUTH LOGIN\r\n")) == b"AUTH LOGIN\r\n"
    for step in steps:
        s.receive(step + b"\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    code, status, _ = refusal.decode().split(" ", 2)
    assert s.outcome.session_error == LocalReply(
        454, "4.7.0", (f"{AUTH_TEXT_LEFT_OUT} (the server said {code} {status})",))


@pytest.mark.parametrize("ehlo", [b"250-smarthost\r\n250 AUTH LOGIN\r\n",
                                  b"250-smarthost\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n"])
@pytest.mark.parametrize("steps, phase", [([], "AUTH username"),
                                          ([b"334 VXNlcm5hbWU6"], "AUTH password")])
def test_a_login_accepted_before_the_password_is_a_protocol_error(ehlo, steps, phase):
    # RFC 4954 4: 235 ends the exchange, and LOGIN's has not reached the
    # password yet.  The 235 was the session's error as the server's reply:
    # the mail waited with "235 2.7.0 ok" as its reason, and bounced at
    # expiry with a notice that gave a success as the cause and no "gave
    # up" words (a 2yz is no temporary failure).  Nothing the server says
    # after it can be trusted: the hub's 421 4.5.0, the connection dropped
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(ehlo)) == b"AUTH LOGIN\r\n"
    for step in steps:
        s.receive(step + b"\r\n")
    assert s.receive(b"235 2.7.0 ok\r\n") == [Close(abort=True)]
    err = s.outcome.session_error
    assert isinstance(err, LocalReply) and (err.code, err.status) == (421, "4.5.0")
    assert f"makes no sense for {phase}" in err.text()
    assert err.is_transient and s.outcome.phase == phase


@pytest.mark.parametrize("offered", [b"PLAIN", b"LOGIN"])
def test_a_server_that_answers_the_cancel_with_another_challenge_ends_the_session(offered):
    # RFC 4954 4: "*" cancels the exchange and the server answers 501.  One
    # that sent 334 again got "*" again, for ever: every reply restarts the
    # step's timeout, so the session never ended and held its delivery slot
    # (and the reactor, one round trip after another).
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250 AUTH " + offered + b"\r\n")
    if offered == b"LOGIN":
        s.receive(b"334 VXNlcm5hbWU6\r\n")
        s.receive(b"334 UGFzc3dvcmQ6\r\n")
    # a challenge after the credentials: cancelled once, as before
    assert sent(s.receive(b"334 more?\r\n")) == b"*\r\n"
    actions = s.receive(b"334 more?\r\n")
    assert b"*" not in sent(actions)
    assert s.phase is Phase.DONE and Close(abort=True) in actions
    err = s.outcome.session_error
    assert err.is_transient and "AUTH" in err.text() and "pw" not in err.text()


def test_auth_not_offered():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    assert "AUTH" in s.outcome.session_error.text()


EHLO_AUTH = (b"250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
             b"250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n")


def mail_line(s, ehlo=EHLO_AUTH):
    s.receive(b"220 hi\r\n")
    return sent(s.receive(ehlo)).split(b"\r\n")[0]


def test_auth_parameter_names_the_submitter_to_a_server_offering_auth():
    # RFC 4954 5: a relay "SHOULD supply the same <mailbox> in an AUTH
    # parameter when relaying the message to any other server which
    # supports the AUTH extension"; as xtext ("+" and "=" escaped)
    assert mail_line(session(submitter=ALICE)) == (
        b"MAIL FROM:<alice@example.org> SIZE=100 AUTH=alice@example.org")
    odd = Address("a+b=c", "example.org")
    line = mail_line(session(sender=odd, submitter=odd))
    assert line == b"MAIL FROM:<a+b=c@example.org> SIZE=100 AUTH=a+2Bb+3Dc@example.org"
    # what our own server reads back from it
    assert parse_mail(line.decode()[5:], "remote.test")[1].auth == "a+b=c@example.org"


def test_auth_parameter_is_the_empty_path_when_nobody_vouches():
    # mail from outside, bounces: origin unknown, AUTH=<> (a bounce's null
    # sender is no submitter either)
    assert mail_line(session()) == b"MAIL FROM:<alice@example.org> SIZE=100 AUTH=<>"
    assert mail_line(session(sender=None)) == b"MAIL FROM:<> SIZE=100 AUTH=<>"


@pytest.mark.parametrize("submitter", [None, ALICE])
def test_no_auth_parameter_to_a_server_without_auth(submitter):
    # RFC 4954 5 / RFC 5321 4.1.1.11: a MAIL parameter only where the
    # server announced its extension (HELO announces none)
    assert mail_line(session(submitter=submitter), EHLO_BASIC) == (
        b"MAIL FROM:<alice@example.org> SIZE=100")
    s = session(submitter=submitter)
    s.receive(b"220 hi\r\n")
    s.receive(b"502 5.5.1 no EHLO\r\n")
    assert sent(s.receive(b"250 hello\r\n")) == b"MAIL FROM:<alice@example.org>\r\n"


def test_auth_parameter_offered_as_the_old_auth_equals_keyword():
    # "250-AUTH=LOGIN" (pre-RFC 2554 clients' form) is AUTH all the same
    ehlo = b"250-mx.remote.test\r\n250 AUTH=LOGIN PLAIN\r\n"
    assert mail_line(session(submitter=ALICE), ehlo) == (
        b"MAIL FROM:<alice@example.org> AUTH=alice@example.org")


def test_auth_parameter_only_from_the_ehlo_after_starttls():
    # the extensions the server lists under TLS are the ones that count
    s = session(submitter=ALICE, tls="opportunistic")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")) == (
        b"STARTTLS\r\n")
    assert isinstance(s.receive(b"220 go\r\n")[0], StartTLS)
    s.tls_started()
    assert sent(s.receive(b"250-mx\r\n250 SIZE 1000\r\n")) == (
        b"MAIL FROM:<alice@example.org> SIZE=100\r\n")


def test_an_internationalized_submitter_goes_as_its_ascii_form_or_as_utf8_in_smtputf8():
    carl = Address("carl", "b\u00fccher.example")
    assert mail_line(session(sender=carl, submitter=carl)) == (
        b"MAIL FROM:<carl@xn--bcher-kva.example> SIZE=100 AUTH=carl@xn--bcher-kva.example")
    jorg = Address("j\u00f6rg", "b\u00fccher.example")
    ehlo_utf8 = EHLO_AUTH.replace(b"250-PIPELINING", b"250-PIPELINING\r\n250-SMTPUTF8")
    line = mail_line(session(sender=jorg, submitter=jorg), ehlo_utf8)
    assert line == ("MAIL FROM:<j\u00f6rg@b\u00fccher.example> SIZE=100 SMTPUTF8 "
                    "AUTH=j+C3+B6rg@b+C3+BCcher.example").encode()
    assert parse_mail(line.decode()[5:], "remote.test")[1].auth == str(jorg)
    # no ASCII form and no SMTPUTF8 (an ASCII sender): the submitter cannot
    # be named, and a value the next hop would refuse costs the MAIL
    assert mail_line(session(submitter=jorg)) == (
        b"MAIL FROM:<alice@example.org> SIZE=100 AUTH=<>")


def test_a_submitter_that_is_no_bare_addr_spec_goes_as_the_empty_path():
    # RFC 4954 5: the decoded value "MUST" be an addr-spec or <>; a local
    # part that needs quotes, written bare, is neither, and a next hop
    # that checks it (ours does) would refuse the whole MAIL
    line = mail_line(session(submitter=Address("a b", "example.org")))
    assert line == b"MAIL FROM:<alice@example.org> SIZE=100 AUTH=<>"
    parse_mail(line.decode()[5:], "remote.test")


def test_a_submitter_too_long_for_the_auth_parameter_goes_as_the_empty_path():
    # RFC 4954 adds 500 characters to the MAIL line for AUTH=; escapes can
    # triple a mailbox
    fits = Address("+" * 162, "xy.test")  # " AUTH=" + 486 + 8 = 500 characters
    assert mail_line(session(submitter=fits)).endswith(b" AUTH=" + b"+2B" * 162 + b"@xy.test")
    over = Address("+" * 162 + "a", "xy.test")  # 501
    assert mail_line(session(submitter=over)).endswith(b" SIZE=100 AUTH=<>")


EHLO_AUTH_PLAIN = b"250-mx.remote.test\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n"
MAIL_WITH_AUTH = b"MAIL FROM:<alice@example.org> SIZE=100 AUTH=alice@example.org\r\n"
MAIL_WITHOUT_AUTH = b"MAIL FROM:<alice@example.org> SIZE=100\r\n"


@pytest.mark.parametrize("refusal", [b"555 5.5.4 AUTH parameter not recognized",
                                     b"501 5.5.4 syntax error in parameters",
                                     b"504 5.5.4 command parameter not implemented",
                                     b"500 5.5.6 line too long",
                                     b"455 4.5.4 cannot accommodate parameters",
                                     # RFC 3463 X.5.4 "invalid command arguments"
                                     # and X.5.2 "syntax error", whatever the code
                                     b"553 5.5.4 invalid AUTH parameter",
                                     b"550 5.5.4 unrecognized argument",
                                     b"550 5.5.2 syntax error",
                                     b"451 4.5.4 invalid arguments",
                                     # a 530 too: its X.5.4 says the parameter,
                                     # not the session, is the trouble
                                     b"530 5.5.4 AUTH parameter not allowed"])
def test_auth_parameter_refused_sends_mail_again_without_it(refusal):
    # AUTH= is advisory (RFC 4954 5 says a server should ignore what it
    # does not trust): a server offering AUTH that refuses the parameter
    # gets the MAIL again, in the same session (a refused MAIL opens no
    # transaction: no RSET), and the message goes through
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_AUTH_PLAIN)) == MAIL_WITH_AUTH
    assert sent(s.receive(refusal + b"\r\n")) == MAIL_WITHOUT_AUTH
    assert s.phase is Phase.MAIL and s.outcome is None
    assert s.auth_param_refused.text() == refusal.decode()
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
    assert s.receive(b"354 go\r\n") == [SendBody(convert_7bit=False)]
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 queued\r\n")) == b"QUIT\r\n"
    assert [r.kind for r in s.outcome.recipients] == ["delivered"]
    assert s.accepted_without_auth_param  # what the agent remembers the host by


def test_a_refused_retry_without_auth_parameter_is_the_outcome():
    # the second MAIL's reply counts, and there is no third MAIL
    s = session(submitter=ALICE, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH_PLAIN)
    assert sent(s.receive(b"555 5.5.4 AUTH unknown\r\n")) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"501 5.5.4 still no\r\n")) == b"QUIT\r\n"
    assert [r.reply.text() for r in s.outcome.recipients] == ["501 5.5.4 still no"] * 2
    assert not s.accepted_without_auth_param  # AUTH= was not (only) the trouble
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH_PLAIN)
    s.receive(b"555 5.5.4 AUTH unknown\r\n")
    assert sent(s.receive(b"451 4.3.0 try later\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "451 4.3.0 try later"


@pytest.mark.parametrize("refusal", [b"550 5.7.1 sender refused", b"553 5.1.8 bad sender",
                                     b"451 4.3.0 try later",
                                     # policy (X.7.x) and address (X.1.x) refusals
                                     # stand, whatever the basic code
                                     b"553 5.1.7 bad sender address syntax",
                                     b"554 5.7.1 access denied",
                                     # with a basic code that alone would be about
                                     # the parameters, too: the enhanced code says more
                                     b"501 5.1.7 bad sender address syntax",
                                     b"555 5.7.1 sender not allowed",
                                     b"500 5.1.8 bad sender domain",
                                     b"452 4.5.3 too many recipients"])
def test_a_refusal_of_the_sender_is_not_retried_without_auth_parameter(refusal):
    # only a refusal of the parameters is about AUTH=; a 550 refuses the
    # sender, and a 4yz leaves the mail queued for a later attempt
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH_PLAIN)
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    assert s.auth_param_refused is None
    out = s.outcome
    assert (out.session_error or out.recipients[0].reply).text() == refusal.decode()


@pytest.mark.parametrize("refusal", [b"530 5.7.0 Must issue a STARTTLS command first",
                                     b"530 Authentication required"])
@pytest.mark.parametrize("ehlo", [EHLO_BASIC, EHLO_FULL])
def test_530_to_mail_keeps_the_mail_queued(refusal, ehlo):
    # RFC 3207 4 / RFC 4954 6: the server wants TLS or a login first (after
    # a failed opportunistic handshake, say): no verdict on the message, so
    # a session error the next host or the next retry gets, not a bounce
    s = session(recipients=[(BOB, None), (CAROL, None)], submitter=ALICE)
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    actions = s.receive(refusal + b"\r\n")
    if ehlo is EHLO_FULL:  # pipelined: the RCPTs and the DATA are answered too
        assert actions == []
        actions = s.receive(b"530 5.7.0 no\r\n530 5.7.0 no\r\n554 5.5.1 no\r\n")
    assert sent(actions) == b"QUIT\r\n"
    assert s.auth_param_refused is None  # nor is it about AUTH=
    out = s.outcome
    assert out.recipients == ()
    text = refusal.decode().split(" ", 1)[1]
    status = " 5.7.0" if b"5.7.0" in refusal else ""
    if status:
        text = text.split(" ", 1)[1]
    assert out.session_error == LocalReply(454, "4.7.0", (f"{text} (the server said 530{status})",))
    assert out.session_error.is_transient


def test_530_to_rcpt_keeps_that_recipient_queued():
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 2.1.0 ok\r\n")
    s.receive(b"530 5.7.0 Authentication required\r\n")
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 ok\r\n")
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "transient"
    assert results[BOB].reply.text() == (
        "454 4.7.0 Authentication required (the server said 530 5.7.0)")
    assert results[CAROL].kind == "delivered"


@pytest.mark.parametrize("ehlo", [EHLO_BASIC, EHLO_FULL])
def test_530_to_data_keeps_the_recipients_queued(ehlo):
    # RFC 4954 6: a 530 may answer any command but AUTH, EHLO, HELO, NOOP,
    # RSET and QUIT -- DATA too (a policy checked there).  Held at MAIL and
    # RCPT, it bounced every recipient the server had taken at DATA
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    if ehlo is EHLO_FULL:  # pipelined: MAIL, the RCPTs and DATA answered at once
        actions = s.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n"
                            b"530 5.7.0 Authentication required\r\n")
    else:
        s.receive(b"250 ok\r\n")
        s.receive(b"250 ok\r\n")
        assert sent(s.receive(b"250 ok\r\n")) == b"DATA\r\n"
        actions = s.receive(b"530 5.7.0 Authentication required\r\n")
    assert sent(actions) == b"QUIT\r\n"
    held = LocalReply(454, "4.7.0", ("Authentication required (the server said 530 5.7.0)",))
    assert [(r.address, r.reply) for r in s.outcome.recipients] == [(BOB, held), (CAROL, held)]
    assert all(r.kind == "transient" for r in s.outcome.recipients)


@pytest.mark.parametrize("ehlo", [EHLO_BASIC, EHLO_FULL])
def test_530_after_the_data_keeps_the_recipients_queued(ehlo):
    # A 530 after the final "." (a server that checks its policy once it has
    # the message) refuses the message (a 5yz: it took none of it) for the
    # same reason as at MAIL, RCPT or DATA -- the session lacks TLS or a
    # login, the configuration's fault.  There it was still the server's
    # verdict: every recipient it had taken bounced at once, while the same
    # refusal a step earlier kept them queued.  A retry duplicates nothing:
    # the server did not take the message
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    if ehlo is EHLO_FULL:
        s.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
    else:
        s.receive(b"250 ok\r\n")
        s.receive(b"250 ok\r\n")
        s.receive(b"550 5.1.1 no such user\r\n")
        assert s.receive(b"354 go\r\n") == [SendBody(convert_7bit=False)]
    s.body_sent()
    assert sent(s.receive(b"530 5.7.0 Authentication required\r\n")) == b"QUIT\r\n"
    held = LocalReply(454, "4.7.0", ("Authentication required (the server said 530 5.7.0)",))
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].reply == held and results[BOB].kind == "transient"
    # the server's own answer for a recipient it refused at RCPT stands
    assert results[CAROL].kind == "permanent"
    assert s.outcome.session_error is None


def _data_sent():
    """A session (one recipient, no pipelining) whose data has been sent:
    the next reply is the one to the final "."."""
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    return s


def test_another_5xx_after_the_data_is_the_servers_verdict():
    s = _data_sent()
    s.receive(b"554 5.7.1 spam\r\n")
    [r] = s.outcome.recipients
    assert r.kind == "permanent" and r.reply == Reply.of(554, "5.7.1", "spam")


def test_no_retry_without_auth_parameter_when_none_was_sent():
    # no AUTH offered: no AUTH=, and a 555 is the MAIL's answer
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"555 5.5.4 SIZE not recognized\r\n")) == b"QUIT\r\n"
    assert s.auth_param_refused is None
    assert s.outcome.recipients[0].reply.code == 555


def test_no_auth_parameter_to_a_server_known_to_refuse_it():
    # the agent remembers next hops that refused AUTH=: a session to one
    # leaves it off (no refused MAIL, no extra round trip), and a refusal of
    # the parameters is then the MAIL's answer
    s = session(submitter=ALICE, auth_param=False)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_AUTH_PLAIN)) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"555 5.5.4 SIZE not recognized\r\n")) == b"QUIT\r\n"
    assert s.auth_param_refused is None and not s.accepted_without_auth_param
    s = session(submitter=ALICE, auth_param=False, credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    assert sent(s.receive(b"235 2.7.0 ok\r\n")) == b"MAIL FROM:<alice@example.org>\r\n"


@pytest.mark.parametrize("refusal", [b"555 5.5.4 AUTH not recognized",
                                     b"530 5.5.4 AUTH parameter not allowed"])
def test_pipelined_auth_parameter_refused_sends_the_batch_again_without_it(refusal):
    # the RCPTs and DATA sent with the refused MAIL are answered first
    # (503: no transaction), then MAIL, RCPTs and DATA go again
    s = session(submitter=ALICE, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(EHLO_AUTH))
    assert first.startswith(MAIL_WITH_AUTH)
    assert s.receive(refusal + b"\r\n503 5.5.1 need MAIL\r\n") == []
    again = sent(s.receive(b"503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"))
    assert again == MAIL_WITHOUT_AUTH + first[len(MAIL_WITH_AUTH):]
    assert s.outcome is None
    actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered", "delivered"]
    assert s.accepted_without_auth_param


def test_pipelined_retry_without_auth_parameter_refused_too():
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH)
    s.receive(b"501 5.5.4 bad AUTH\r\n503 need MAIL\r\n")
    assert sent(s.receive(b"503 need MAIL\r\n")).startswith(MAIL_WITHOUT_AUTH)
    reply = b"555 5.5.4 SIZE not recognized\r\n503 need MAIL\r\n503 need MAIL\r\n"
    assert sent(s.receive(reply)) == b"QUIT\r\n"
    assert s.outcome.recipients[0].reply.text() == "555 5.5.4 SIZE not recognized"
    assert s.auth_param_refused is not None and not s.accepted_without_auth_param


def test_pipelined_auth_parameter_refused_but_data_accepted():
    # a server that answers 354 with no transaction (against RFC 2920
    # 3.1): the empty message is ended first, its reply ignored
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(EHLO_AUTH))
    again = sent(s.receive(b"555 5.5.4 no AUTH\r\n503 need MAIL\r\n354 go\r\n"))
    assert again == b".\r\n" + MAIL_WITHOUT_AUTH + first[len(MAIL_WITH_AUTH):]
    assert s.receive(b"554 5.5.1 no valid recipients\r\n") == []
    actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered"]


def test_pipelined_auth_parameter_refused_then_421_to_data_sends_no_new_batch():
    # a 421 to the DATA of the refused batch: the server is closing (RFC
    # 5321 3.8), so MAIL does not go again, and the 421 is the outcome --
    # not a later "connection lost", with a log line about a MAIL sent again
    s = session(submitter=ALICE)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH)
    actions = s.receive(b"555 5.5.4 no AUTH\r\n503 need MAIL\r\n421 4.3.2 shutting down\r\n")
    assert not any(isinstance(a, Send) and b"MAIL" in a.data for a in actions)
    assert s.outcome is not None
    assert s.outcome.session_error.text() == "421 4.3.2 shutting down"
    assert s.auth_param_refused is None  # the agent logs no "MAIL sent again"


EHLO_DSN_NO_PIPE = b"250-mx.remote.test\r\n250-SIZE 1000\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
# an id with a TAB: RFC 3461 4.4's "printable (graphic and white space)",
# which Postfix refuses ("501 5.5.4 Bad ENVID parameter syntax")
TAB_ID = DSNRequest(ret="HDRS", envid="a\tb", envid_raw="a+09b")
TAB_RCPTS = [(BOB, RecipientDSN(notify=("SUCCESS",), orcpt="rfc822;Bob@remote.test")),
             (CAROL, RecipientDSN(notify=("FAILURE",)))]
MAIL_WITH_DSN = b"MAIL FROM:<alice@example.org> SIZE=100 RET=HDRS ENVID=a+09b\r\n"
RCPTS_WITH_DSN = (b"RCPT TO:<bob@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;Bob@remote.test\r\n"
                  b"RCPT TO:<carol@remote.test> NOTIFY=FAILURE\r\n")
RCPTS_WITHOUT_DSN = b"RCPT TO:<bob@remote.test>\r\nRCPT TO:<carol@remote.test>\r\n"


@pytest.mark.parametrize("refusal", [b"501 5.5.4 Bad ENVID parameter syntax",
                                     b"555 5.5.4 ENVID not recognized",
                                     b"501 syntax error in parameters",
                                     b"555 parameters not recognized"])
def test_dsn_parameters_refused_sends_mail_again_as_to_a_server_without_dsn(refusal):
    # RFC 3461 4.4 allows white space in ENVID; a next hop that refuses the
    # MAIL for it bounced the message to every recipient.  The MAIL goes
    # again without ENVID and RET, the RCPTs without NOTIFY and ORCPT (what
    # RFC 3461 5.2.1 wants passed on can no longer be), and the outcome says
    # no notice duty went with them: the hub reports NOTIFY=SUCCESS itself
    # ("relayed", RFC 3461 5.2.2)
    s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_DSN_NO_PIPE)) == MAIL_WITH_DSN
    assert sent(s.receive(refusal + b"\r\n")) == MAIL_WITHOUT_AUTH
    assert s.phase is Phase.MAIL and s.outcome is None
    assert s.dsn_params_refused.text() == refusal.decode()
    rcpts = sent(s.receive(b"250 2.1.0 ok\r\n")) + sent(s.receive(b"250 2.1.5 ok\r\n"))
    assert rcpts == RCPTS_WITHOUT_DSN
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered", "delivered"]
    assert not s.outcome.dsn_supported


@pytest.mark.parametrize("refusal", [b"501 5.1.7 Bad sender address syntax",
                                     b"501 5.5.2 syntax error", b"555 5.7.1 not allowed",
                                     b"550 5.5.4 unrecognized argument",
                                     b"504 5.5.4 not implemented", b"451 4.5.4 try later"])
def test_other_refusals_of_a_mail_with_dsn_parameters_stand(refusal):
    s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_DSN_NO_PIPE)
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    assert s.dsn_params_refused is None
    out = s.outcome
    assert (out.session_error or out.recipients[0].reply).text() == refusal.decode()


def test_a_501_to_a_mail_without_dsn_parameters_stands():
    # DSN offered, NOTIFY on the RCPTs but neither ENVID nor RET on MAIL:
    # the 501 is about something else, and the MAIL does not go again
    s = session(recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_DSN_NO_PIPE)) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"501 5.5.4 bad\r\n")) == b"QUIT\r\n"
    assert s.dsn_params_refused is None
    assert [r.reply.code for r in s.outcome.recipients] == [501, 501]


def test_a_refused_mail_without_dsn_parameters_is_the_outcome():
    s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_DSN_NO_PIPE)
    assert sent(s.receive(b"501 5.5.4 Bad ENVID\r\n")) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"501 5.5.4 still no\r\n")) == b"QUIT\r\n"
    assert [r.reply.text() for r in s.outcome.recipients] == ["501 5.5.4 still no"] * 2


def test_pipelined_dsn_parameters_refused_sends_the_batch_again_without_them():
    s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(EHLO_FULL))
    assert first == MAIL_WITH_DSN + RCPTS_WITH_DSN + b"DATA\r\n"
    assert s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n503 5.5.1 need MAIL\r\n") == []
    again = sent(s.receive(b"503 5.5.1 need MAIL\r\n554 5.5.1 no valid recipients\r\n"))
    assert again == MAIL_WITHOUT_AUTH + RCPTS_WITHOUT_DSN + b"DATA\r\n"
    assert s.outcome is None
    actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered", "delivered"]
    assert not s.outcome.dsn_supported and s.dsn_params_refused is not None


def test_pipelined_dsn_parameters_refused_then_421_sends_no_new_batch():
    s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    actions = s.receive(b"501 5.5.4 Bad ENVID\r\n503 need MAIL\r\n503 need MAIL\r\n"
                        b"421 4.3.2 shutting down\r\n")
    assert not any(isinstance(a, Send) and b"MAIL" in a.data for a in actions)
    assert s.outcome.session_error.text() == "421 4.3.2 shutting down"
    assert s.dsn_params_refused is None  # the agent logs no "MAIL sent again"


# how a session can end between a pipelined MAIL refused for a parameter
# and the DATA reply of its batch, after which the MAIL would go again
BATCH_ENDS = {
    "421 to a RCPT": lambda s: s.receive(b"421 4.3.2 shutting down\r\n"),
    "connection lost": lambda s: s.connection_lost(),
    "timeout": lambda s: s.timed_out(),
    "reply out of order": lambda s: s.receive(b"503 need MAIL\r\n250 2.0.0 ok\r\n"),
}


@pytest.mark.parametrize("end", BATCH_ENDS.values(), ids=BATCH_ENDS.keys())
@pytest.mark.parametrize("refused", ["dsn", "auth"])
def test_a_batch_cut_before_its_mail_went_again_logs_no_mail_sent_again(refused, end):
    # the adapter logs "MAIL sent again without ..." from the refusal it
    # finds on the session: a session that ended before the MAIL went
    # again has none to show, whatever ended it (not only a 421 to DATA)
    if refused == "dsn":
        s = session(dsn=TAB_ID, recipients=TAB_RCPTS)
        ehlo = EHLO_FULL
    else:
        s = session(submitter=ALICE, recipients=[(BOB, None), (CAROL, None)])
        ehlo = EHLO_AUTH
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    assert s.receive(b"501 5.5.4 Bad parameter\r\n503 need MAIL\r\n") == []
    actions = end(s)
    if isinstance(actions, list):
        assert not any(isinstance(a, Send) and b"MAIL" in a.data for a in actions)
    assert s.outcome.session_error is not None and not s.outcome.recipients
    assert s.dsn_params_refused is None and s.auth_param_refused is None


def test_auth_parameter_dropped_first_then_the_dsn_parameters():
    # both on the MAIL, and the refusal names neither for sure: AUTH= (only
    # advisory) goes first; refused again, the DSN parameters too.  The
    # third MAIL taken does not show AUTH= was the trouble: not remembered
    s = session(submitter=ALICE, dsn=TAB_ID)
    s.receive(b"220 hi\r\n")
    ehlo = b"250-mx.remote.test\r\n250-SIZE 1000\r\n250-DSN\r\n250 AUTH PLAIN\r\n"
    assert sent(s.receive(ehlo)) == (b"MAIL FROM:<alice@example.org> SIZE=100 RET=HDRS "
                                     b"ENVID=a+09b AUTH=alice@example.org\r\n")
    assert sent(s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n")) == MAIL_WITH_DSN
    assert sent(s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n")) == MAIL_WITHOUT_AUTH
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"
    assert s.auth_param_refused is not None and s.dsn_params_refused is not None
    assert not s.accepted_without_auth_param


EHLO_AUTH_DSN = EHLO_FULL.replace(b"250-STARTTLS\r\n", b"250-AUTH PLAIN\r\n")
MAIL_8BIT_UTF8 = b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME SMTPUTF8"


def pipelined_auth_then_dsn_refused():
    """A pipelined session whose MAIL with AUTH= and the DSN parameters is
    refused twice ("501 5.5.4"), the DATA of each batch answered 354 (RFC
    2920 3.1 lets a server do that): the session after its third batch."""
    s = session(submitter=ALICE, dsn=TAB_ID, recipients=TAB_RCPTS, eight_bit=True,
                smtputf8=True)
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(EHLO_AUTH_DSN))
    assert first == (MAIL_8BIT_UTF8 + b" RET=HDRS ENVID=a+09b AUTH=alice@example.org\r\n"
                     + RCPTS_WITH_DSN + b"DATA\r\n")
    assert s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n503 5.5.1 need MAIL\r\n"
                     b"503 5.5.1 need MAIL\r\n") == []
    # AUTH= goes first; SIZE, BODY and SMTPUTF8 stay; the DATA taken is
    # ended empty, and the reply to its "." read as no command's
    second = sent(s.receive(b"354 go\r\n"))
    assert second == (b".\r\n" + MAIL_8BIT_UTF8 + b" RET=HDRS ENVID=a+09b\r\n"
                      + RCPTS_WITH_DSN + b"DATA\r\n")
    third = sent(s.receive(b"554 5.5.1 no valid recipients\r\n"
                           b"501 5.5.4 Bad ENVID parameter syntax\r\n503 5.5.1 need MAIL\r\n"
                           b"503 5.5.1 need MAIL\r\n354 go\r\n"))
    assert third == b".\r\n" + MAIL_8BIT_UTF8 + b"\r\n" + RCPTS_WITHOUT_DSN + b"DATA\r\n"
    assert s.outcome is None
    return s


def test_pipelined_auth_parameter_then_dsn_parameters_refused_batch_by_batch():
    s = pipelined_auth_then_dsn_refused()
    actions = s.receive(b"554 5.5.1 no valid recipients\r\n250 2.1.0 ok\r\n"
                        b"250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered", "delivered"]
    assert not s.outcome.dsn_supported and not s.accepted_without_auth_param
    assert s.auth_param_refused is not None and s.dsn_params_refused is not None


def test_pipelined_auth_then_dsn_refused_and_a_421_before_the_third_mail():
    # the second MAIL went without AUTH= (logged), the third never went:
    # the refusal of the DSN parameters is not logged as a MAIL sent again
    s = session(submitter=ALICE, dsn=TAB_ID, recipients=TAB_RCPTS)
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_AUTH_DSN)
    s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n503 5.5.1 need MAIL\r\n"
              b"503 5.5.1 need MAIL\r\n")
    assert b"AUTH=" not in sent(s.receive(b"503 5.5.1 need MAIL\r\n"))
    actions = s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n"
                        b"421 4.3.2 shutting down\r\n")
    assert sent(actions) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "421 4.3.2 shutting down"
    assert s.auth_param_refused is not None and s.dsn_params_refused is None


def test_mail_refused_transient_and_permanent():
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    assert sent(s.receive(b"451 4.3.0 try later\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.code == 451
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"553 5.7.1 sender refused\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["permanent", "permanent"]


def test_pipelined_mail_refused():
    s = session(recipients=[(BOB, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_FULL)
    actions = s.receive(b"550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert sent(actions) == b"QUIT\r\n"
    assert s.outcome.recipients[0].reply.text() == "550 5.7.1 no"


def test_data_refused_and_final_transient():
    s = _data_sent()
    s.receive(b"452 4.3.1 insufficient storage\r\n")
    assert s.outcome.recipients[0].kind == "transient"


def test_a_reply_while_the_data_streams_closes_instead_of_quit():
    # A QUIT written mid-stream would be message data: a server that takes
    # the "." after it stores "QUIT" in the message and answers 250.
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    assert s.receive(b"354 go\r\n") == [SendBody(convert_7bit=False)]
    actions = s.receive(b"421 4.3.2 going down\r\n")  # before body_sent
    assert actions == [Close(abort=True)] and sent(actions) == b""
    assert s.outcome.session_error is not None


def test_timeouts_per_step_and_expiry():
    s = session()
    s.receive(b"220 hi\r\n")
    assert s.timeout == 300
    assert s.timed_out() == [Close()]
    assert s.outcome.session_error.status == "4.4.2"
    assert "EHLO" in s.outcome.session_error.text()


def test_connection_lost_midway():
    s = session()
    s.receive(b"220 hi\r\n")
    out = s.connection_lost()
    assert out.session_error.is_transient


def test_garbage_reply_fails_session():
    s = session()
    actions = s.receive(b"hello there\r\n")
    assert actions == [Close(abort=True)]
    assert "protocol error" in s.outcome.session_error.text()


def test_reply_parser_multiline_bytewise():
    p = ReplyParser()
    data = b"250-first line\r\n250-2.0.0 second\r\n250 last\r\n550 5.1.1 gone\r\n"
    out = []
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
    assert out == [Reply(250, None, ("first line", "2.0.0 second", "last")),
                   Reply(550, "5.1.1", ("gone",))]
    assert ReplyParser().feed(b"250-a\n250 b\n") == [Reply(250, None, ("a", "b"))]


def test_reply_parser_errors():
    p = ReplyParser()
    p.feed(b"250-a\r\n251 b\r\n")
    assert p.error
    p = ReplyParser()
    p.feed(b"2" * 5000)
    assert p.error == "reply line too long"
    p = ReplyParser()
    assert p.feed("2\u00b250 ok\r\n".encode()) == []  # not an RFC 5321 digit
    assert p.error and p.error.startswith("malformed reply line")


def test_a_reply_whose_code_changes_midway_is_no_reply():
    # RFC 5321 4.2.1: every line of a multiline reply has the same code;
    # one that changes it is a protocol error, not a reply to act on
    p = ReplyParser()
    assert p.feed(b"250-a\r\n251 b\r\n") == []
    assert p.error == "reply code changed in a multi-line reply"


def test_a_reply_of_endless_continuation_lines_is_cut_at_the_line_limit():
    from txmailhub.smtp._client_reply import MAX_REPLY_LINES
    (reply,) = ReplyParser().feed(b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n")
    assert len(reply.lines) == MAX_REPLY_LINES
    p = ReplyParser()
    assert p.feed(b"250-x\r\n" * MAX_REPLY_LINES + b"250 end\r\n") == []
    assert p.error == "reply too long"


@pytest.mark.parametrize("line", [b"\n", b"25\r\n", b"2x0 ok\r\n", b"250x\r\n"])
def test_a_line_that_is_no_reply_line_is_a_protocol_error_at_once(line):
    # RFC 5321 4.2: three digits, then SP, "-" or the end of the line
    p = ReplyParser()
    assert p.feed(line) == []
    assert p.error and p.error.startswith("malformed reply line")
    assert not p.feed(b"250 ok\r\n")  # nothing is read after the error


def test_a_partial_reply_line_may_reach_the_line_limit_but_not_pass_it():
    from txmailhub.smtp._client_reply import MAX_REPLY_LINE
    p = ReplyParser()
    assert p.feed(b"250 " + b"x" * (MAX_REPLY_LINE - 4)) == [] and p.error is None
    assert p.feed(b"x") == [] and p.error == "reply line too long"


def test_a_whole_reply_line_over_the_limit_is_refused_even_in_one_read():
    # The limit held only for a line still waiting for its end: one that
    # came whole in a single read (up to 64 KiB from a socket, any size
    # from a test transport) was taken, and 200 of them made a reply of
    # megabytes that went into the queue record of every recipient.
    from txmailhub.smtp._client_reply import MAX_REPLY_LINE
    (reply,) = ReplyParser().feed(b"250 " + b"x" * (MAX_REPLY_LINE - 5) + b"\r\n")
    assert len(reply.lines[0]) == MAX_REPLY_LINE - 5
    p = ReplyParser()
    assert p.feed(b"550-" + b"x" * MAX_REPLY_LINE + b"\r\n550 no\r\n") == []
    assert p.error == "reply line too long"


def test_nothing_is_kept_of_what_comes_after_a_protocol_error():
    # After an error nothing more is parsed; a server that goes on sending
    # (a TLS close waits for its close_notify up to a minute) must not
    # fill the buffer with it.
    p = ReplyParser()
    p.feed(b"2500 x\r\n")
    assert p.error
    for _ in range(100):
        p.feed(b"x" * 65536)
    assert not p.pending


def test_a_reply_line_may_be_the_code_alone_and_its_text_is_kept_whole():
    # RFC 5321 4.2: Reply-code [ SP textstring ] CRLF
    assert ReplyParser().feed(b"250\r\n") == [Reply(250, None, ("",))]
    assert ReplyParser().feed(b"250 2.0.0 queued as 4AXX\r\n") == [
        Reply(250, "2.0.0", ("queued as 4AXX",))]


def test_a_reply_that_is_not_utf8_is_still_read():
    # a server's text in Latin-1: a reply all the same (the text is only logged)
    (reply,) = ReplyParser().feed(b"550 5.1.1 caf\xe9 inconnu\r\n")
    assert reply == Reply(550, "5.1.1", ("caf\ufffd inconnu",))


def test_the_enhanced_code_of_the_first_line_is_the_replys():
    # RFC 2034 puts it on every line; a server that forgets it on a later
    # line still gave it
    (reply,) = ReplyParser().feed(b"550-5.1.1 no such user\r\n550 see the postmaster\r\n")
    assert reply == Reply(550, "5.1.1", ("no such user", "see the postmaster"))


def test_enhanced_status_stripped_from_every_line():
    [r] = ReplyParser().feed(b"550-5.1.1 user unknown\r\n550 5.1.1 really\r\n")
    assert r == Reply(550, "5.1.1", ("user unknown", "really"))
    [r] = ReplyParser().feed(b"550 4.1.1 class mismatch\r\n")
    assert r.status is None


def test_xtext():
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"


def test_body_encoder_stuffs_and_converts():
    enc = session().body_encoder()
    assert enc.encode(b"a\n.b\n") + enc.encode(b".c") + enc.finish() == \
        b"a\r\n..b\r\n..c\r\n.\r\n"


# --- against our own SMTP server engine, in memory ----------------------------

def converse(client, body: bytes, recipients_known=("bob",)):
    from types import SimpleNamespace

    from txmailhub.smtp import replies
    from txmailhub.smtp import server as srv
    from txmailhub.smtp.policy import RecipientPolicy
    from txmailhub.testing import MemorySpooler, QueueSpy, StaticRouter

    router = StaticRouter({name: None for name in recipients_known}, domains=("remote.test",))
    components = SimpleNamespace(router=router, queue=QueueSpy(), spooler=MemorySpooler(),
                                 settings=SimpleNamespace(
        hub=SimpleNamespace(primary_domain="remote.test")))
    server = srv.SMTPServer(srv.ServerConfig(hostname="mx.remote.test",
                                             primary_domain="remote.test", tls_available=True),
                            RecipientPolicy(components),
                            srv.Session(client_host="192.0.2.1"))
    stored: list[bytes] = []
    envelopes = []
    server.greeting()
    to_client = server.data_to_send()
    for _ in range(50):
        actions = client.receive(to_client) if to_client else []
        to_server = b""
        closed = False
        while actions:
            a = actions.pop(0)
            if isinstance(a, Send):
                to_server += a.data
            elif isinstance(a, StartTLS):
                actions += client.tls_started()
            elif isinstance(a, SendBody):
                enc = client.body_encoder()
                half = len(body) // 2
                to_server += enc.encode(body[:half]) + enc.encode(body[half:]) + enc.finish()
                actions += client.body_sent()
            elif isinstance(a, Close):
                closed = True
        server.receive_data(to_server)
        while (ev := server.next_event()) is not None:
            if isinstance(ev, srv.StartMessage):
                server.message_started(stored.append)
            elif isinstance(ev, srv.MessageComplete):
                envelopes.append(ev.envelope)
                server.message_done(replies.accepted("Q1"))
            elif isinstance(ev, srv.StartTLS):
                server.tls_started()
        to_client = server.data_to_send()
        if closed or (not to_client and not to_server):
            break
    return b"".join(stored), envelopes


def test_against_our_server_engine():
    body = b"Subject: t\n\n.starts with a dot\n..two dots\nlast line\n"
    dave = Address("dave", "remote.test")
    s = ClientSession(helo="mail.hub.test", sender=ALICE, recipients=[(BOB, None), (dave, None)],
                      size=len(body), tls="opportunistic",
                      dsn=DSNRequest(ret="HDRS", envid="X1"))
    stored, [env] = converse(s, body)
    assert stored == body  # stuffed by the client, unstuffed by the server: unchanged
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[dave].kind == "permanent" and results[dave].reply.status == "5.1.1"
    assert s.outcome.tls_offered and s.outcome.dsn_supported
    assert env.recipients == (BOB,) and env.dsn.envid == "X1"
    assert s.phase is Phase.DONE


def test_against_our_server_engine_8bit_and_utf8():
    body = "Subject: Grüße\n\nÜmlaut\n".encode()
    jorg = Address("jörg", "remote.test")
    s = ClientSession(helo="mail.hub.test", sender=ALICE, recipients=[(jorg, None)],
                      size=len(body), eight_bit=True, tls="none")
    stored, [env] = converse(s, body, recipients_known=("jörg",))
    assert stored == body
    assert env.smtputf8 and env.body_8bit
    assert s.outcome.recipients[0].kind == "delivered"


def test_engine_imports_nothing_from_twisted_internet():
    import subprocess
    import sys

    code = ("import sys, txmailhub.smtp.client; "
            "print([m for m in sys.modules if m.startswith('twisted.internet')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "[]"


EHLO_NO_UTF8 = b"250-mx.remote.test\r\n250-8BITMIME\r\n250 SIZE 1000\r\n"


def test_the_clients_smtputf8_flag_alone_bounces_nothing():
    # RFC 6531 3.4: all addresses ASCII: SMTPUTF8 is used where offered, and
    # a next hop without it still gets the message
    s = session(smtputf8=True, eight_bit=True)
    s.receive(b"220 hi\r\n")
    # (as its 7-bit copy: no SIZE=, whose octets are not known yet)
    assert sent(s.receive(EHLO_NO_UTF8)) == (
        b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n")
    s = session(smtputf8=True)
    s.receive(b"220 hi\r\n")
    assert b" SMTPUTF8" in sent(s.receive(EHLO_FULL))


def test_a_non_ascii_address_still_needs_smtputf8():
    s = session(recipients=[(Address("bøb", "remote.test"), None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_NO_UTF8)
    [r] = s.outcome.recipients
    assert r.reply.code == 553 and r.reply.status == "5.6.7"


@pytest.mark.parametrize("refusal", [b"552 5.5.3", b"552"])
def test_552_to_rcpt_is_taken_as_temporary(refusal):
    # RFC 5321 4.5.3.1.10: an old "too many recipients"; it becomes the
    # 452 4.5.3 the relay answers with another transaction at once (not a
    # 552 whose code says it refuses the size: RFC 1870 6.4, see
    # test_smtp_rfc_extensions)
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(refusal + b" too many recipients\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    # a new transaction for carol (RFC 5321 4.5.3.1.10), refused so again:
    # the relay's to try on a new connection
    assert sent(s.receive(b"250 ok\r\n")) == b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
    assert sent(s.receive(b"250 ok\r\n")) == b"RCPT TO:<carol@remote.test>\r\n"
    assert sent(s.receive(refusal + b" too many recipients\r\n")) == b"QUIT\r\n"
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[CAROL].reply.code == 452 and results[CAROL].reply.is_transient
    assert results[CAROL].reply.status == "4.5.3"
    assert "too many recipients" in results[CAROL].reply.text()
    # the 452 is the hub's reading, not the server's words: a notice gave
    # "smtp; 452 4.5.3 too many recipients" though the server said 552
    # (RFC 3464 2.3.6), as the 454 a 530 is kept as
    assert isinstance(results[CAROL].reply, LocalReply)
    said = refusal.decode()
    assert results[CAROL].reply.text().endswith(f"too many recipients (the server said {said})")


def test_the_smarthost_password_never_goes_in_the_clear_unless_tls_is_none():
    # a stripped STARTTLS
    s = session(credentials=("user", "pw"), tls="opportunistic")
    s.receive(b"220 hi\r\n")
    actions = s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    assert b"AUTH" not in sent(actions)
    err = s.outcome.session_error
    assert err.is_transient and err.status == "4.7.0" and "only sent over TLS" in err.text()
    # with TLS it is sent
    s = session(credentials=("user", "pw"), tls="opportunistic")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-smarthost\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")) == (
        b"STARTTLS\r\n")
    s.receive(b"220 go\r\n")
    s.tls_started()
    assert sent(s.receive(b"250-smarthost\r\n250 AUTH PLAIN\r\n")).startswith(b"AUTH PLAIN ")


@pytest.mark.parametrize("lost_in", ["DATA", "end of data"])
def test_a_connection_lost_before_the_last_reply_delivers_nobody(lost_in):
    # RFC 5321 6.1: without the 250 to the final "." nothing is delivered;
    # the message stays queued (a duplicate at worst, never a loss)
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    for reply in (b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"):
        s.receive(reply)
    if lost_in == "end of data":
        s.receive(b"354 go\r\n")
        s.body_sent()
    out = s.connection_lost()
    assert out.recipients == ()
    assert out.session_error.is_transient and lost_in in out.session_error.text()


def test_an_idn_domain_alone_goes_as_its_a_label():
    # RFC 6531 3.2: an address whose only non-ASCII part is the domain "is
    # not considered internationalized": its A-label form needs no SMTPUTF8
    munich = Address("user", "münchen.example")
    s = session(sender=Address("carl", "bücher.example"), recipients=[(munich, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_NO_UTF8)) == (
        b"MAIL FROM:<carl@xn--bcher-kva.example> SIZE=100\r\n")
    assert sent(s.receive(b"250 ok\r\n")) == b"RCPT TO:<user@xn--mnchen-3ya.example>\r\n"
    assert sent(s.receive(b"250 ok\r\n")) == b"DATA\r\n"
    # where SMTPUTF8 is used anyway, the addresses go as they are
    s = session(sender=Address("carl", "bücher.example"), recipients=[(munich, None)],
                smtputf8=True)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_FULL)).split(b"\r\n")[:2] == [
        b"MAIL FROM:<carl@b\xc3\xbccher.example> SIZE=100 SMTPUTF8",
        b"RCPT TO:<user@m\xc3\xbcnchen.example>"]
    # a domain that is no IDN has no ASCII form: SMTPUTF8 or nothing
    s = session(recipients=[(Address("user", "bad_ü.example"), None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_NO_UTF8)
    [r] = s.outcome.recipients
    assert r.reply.code == 553 and r.reply.status == "5.6.7"


def test_ascii_labels_beside_a_u_label_go_as_they_are():
    # an underscore (the paths' leniency) or an "ab--cd" label is no IDNA
    # label, but plain ASCII: the name's A-label form keeps it, label by
    # label, and a peer without SMTPUTF8 can take the address
    rcpt = Address("user", "my_host.ab--cd.b\u00fccher.example")
    s = session(sender=Address("carl", "_mx.b\u00fccher.example"), recipients=[(rcpt, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_NO_UTF8)) == (
        b"MAIL FROM:<carl@_mx.xn--bcher-kva.example> SIZE=100\r\n")
    assert sent(s.receive(b"250 ok\r\n")) == (
        b"RCPT TO:<user@my_host.ab--cd.xn--bcher-kva.example>\r\n")


EHLO_DSN_NO_UTF8 = (b"250-mx.remote.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                    b"250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n")


@pytest.mark.parametrize("ehlo, smtputf8", [(EHLO_DSN_NO_UTF8, ""), (EHLO_FULL, " SMTPUTF8")])
def test_a_utf8_envid_takes_every_dsn_parameter_with_it(ehlo, smtputf8):
    # RFC 3461 4.4: ENVID is printable US-ASCII, and RFC 6531/6533 do not
    # widen it.  Sent as xtext of its UTF-8 it is refused by a compliant
    # next hop -- by our own server without SMTPUTF8 (501), by Postfix's
    # smtpd with it ("501 5.5.4 Bad ENVID parameter syntax") -- and every
    # recipient with it.  Without the id the request is cut down, which
    # 5.2.1 does not allow: the MAIL goes as to a server without DSN
    s = session(smtputf8=True, dsn=DSNRequest(ret="HDRS", envid="id-\u20ac"),
                recipients=[(BOB, RecipientDSN(("SUCCESS",), "rfc822;bob@x.test"))])
    s.receive(b"220 hi\r\n")
    mail, rcpt = sent(s.receive(ehlo)).split(b"\r\n")[:2]
    size = " SIZE=100" if b"SIZE" in ehlo else ""
    assert mail == f"MAIL FROM:<alice@example.org>{size}{smtputf8}".encode()
    assert rcpt == b"RCPT TO:<bob@remote.test>"
    _, params = parse_mail(mail.decode()[5:], "remote.test")
    assert params.envid is None and params.ret is None


def test_an_orcpt_that_would_make_the_rcpt_too_long_is_left_out():
    # an SMTPUTF8 client's raw UTF-8 ORCPT grows up to 9 times as \x{HEX}
    # when the message goes on without SMTPUTF8 (an ASCII message with a
    # UTF-8 ORCPT): past RFC 3461's 500 characters for NOTIFY and ORCPT the
    # next hop may refuse the whole RCPT as too long; ORCPT is optional
    long_orcpt = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    short_orcpt = "utf-8;" + "\U0001F600" * 40 + "@x.test"
    s = session(recipients=[
        (BOB, RecipientDSN(notify=("FAILURE",), orcpt=long_orcpt)),
        (CAROL, RecipientDSN(notify=("FAILURE",), orcpt=short_orcpt)),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE"
    assert lines[2].startswith(b"RCPT TO:<carol@remote.test> NOTIFY=FAILURE ORCPT=utf-8;\\x{1F600}")
    assert len(lines[2]) - len(b"RCPT TO:<carol@remote.test> ") < 500


def test_a_clients_orcpt_that_cannot_go_takes_notify_with_it():
    # RFC 3461 5.2.1 (d): the client's ORCPT "MUST also be passed on" to a
    # server with DSN.  Its raw UTF-8 grows as \x{HEX} without SMTPUTF8
    # past the 500 characters: the RCPT goes as to a server without DSN
    # (no NOTIFY either), and the hub keeps that recipient's notice duty
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    s = session(smtputf8=True, recipients=[
        (BOB, RecipientDSN(("SUCCESS",), raw, raw)),
        (CAROL, RecipientDSN(("SUCCESS",), "rfc822;carol@x.test", "rfc822;carol@x.test")),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_DSN_NO_UTF8)).split(b"\r\n")
    assert lines[1] == b"RCPT TO:<bob@remote.test>"
    assert lines[2] == b"RCPT TO:<carol@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;carol@x.test"
    s.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 queued\r\n")
    assert s.outcome.dsn_supported and s.outcome.dsn_dropped == {BOB}
    assert s.orcpt_withheld == {BOB}


def test_a_transaction_another_follows_names_the_recipients_whose_orcpt_was_withheld():
    # as in the outcome (above): bob's RCPT went without NOTIFY and ORCPT,
    # and his transaction ends before carol's (452 4.5.3 to her RCPT): the
    # TransactionDone the adapter records bob's result from says the hub
    # keeps his notice duty
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    s = session(smtputf8=True, recipients=[
        (BOB, RecipientDSN(("SUCCESS",), raw, raw)),
        (CAROL, RecipientDSN(("SUCCESS",), "rfc822;carol@x.test", "rfc822;carol@x.test")),
    ])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_DSN_NO_UTF8)
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 too many recipients\r\n354 go\r\n")
    s.body_sent()
    done = s.receive(b"250 queued\r\n")[0]
    assert isinstance(done, TransactionDone)
    assert [o.address for o in done.recipients] == [BOB]
    assert done.dsn_supported and done.dsn_dropped == {BOB}


@pytest.mark.parametrize("notify", [(), ("FAILURE",)])
def test_the_orcpt_budget_is_500_characters_added_to_the_rcpt_line(notify):
    # RFC 3461 4: NOTIFY and ORCPT add at most 500 characters to RCPT,
    # counted with the space before each parameter
    base = len(b"RCPT TO:<bob@remote.test>")
    added = len(" NOTIFY=FAILURE") if notify else 0
    room = 500 - added - len(" ORCPT=rfc822;")
    fits = "a" * (room - len("@x.test")) + "@x.test"
    for orcpt, kept in ((fits, True), ("b" + fits, False)):
        s = session(recipients=[(BOB, RecipientDSN(notify=notify, orcpt="rfc822;" + orcpt))])
        s.receive(b"220 hi\r\n")
        line = sent(s.receive(EHLO_FULL)).split(b"\r\n")[1]
        assert (b"ORCPT=" in line) is kept
        if kept:
            assert len(line) - base == 500


def test_an_envid_longer_than_100_characters_as_sent_is_left_out():
    # RFC 3461 4.4: the ENVID may be 100 characters; its xtext form is what
    # counts (a "+" is three: 100, 101 and 102 characters here), and a next
    # hop may refuse a longer one.  Without it the request is cut down: no
    # DSN parameter goes at all
    for envid, kept in (("a" + "+" * 33, True), ("aa" + "+" * 33, False), ("+" * 34, False)):
        s = session(dsn=DSNRequest(ret="HDRS", envid=envid))
        s.receive(b"220 hi\r\n")
        mail = sent(s.receive(EHLO_FULL)).split(b"\r\n")[0]
        assert mail.endswith(b" RET=HDRS ENVID=a" + b"+2B" * 33 if kept else b" SIZE=100")
        assert s.envid_withheld is not kept
        assert parse_mail(mail.decode()[5:], "remote.test")[1].envid == (envid if kept else None)


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_421_to_mail_or_rcpt_ends_the_session_with_the_servers_words(pipelined):
    # RFC 5321 3.8: 421 may answer any command, and the server closes; its
    # reply is the outcome (queue show, the final DSN), not "connection lost"
    carol = Address("carol", "remote.test")
    ext = b"250-PIPELINING\r\n" if pipelined else b""
    for step in ("MAIL", "RCPT"):
        s = session(recipients=[(BOB, None), (carol, None)])
        s.receive(b"220 mx.remote.test ESMTP\r\n")
        actions = s.receive(b"250-mx.remote.test\r\n" + ext + b"250 ENHANCEDSTATUSCODES\r\n")
        if step == "RCPT":
            actions = s.receive(b"250 2.1.0 ok\r\n")
        actions = s.receive(b"421 4.7.0 Too many connections from your IP, closing\r\n")
        assert s.outcome is not None and s.outcome.recipients == ()
        assert s.outcome.session_error.text() == (
            "421 4.7.0 Too many connections from your IP, closing"), step
        assert sent(actions) == b"QUIT\r\n"  # harmless, and the server closes anyway


def test_a_greeting_that_is_not_220_is_no_greeting():
    # RFC 5321 3.1: the server opens with 220 (or 554); a 250 there
    # is a server out of step: no EHLO into it
    s = session()
    actions = s.receive(b"250 mx.remote.test hello\r\n")
    assert b"EHLO" not in sent(actions)
    assert s.outcome.session_error.code == 250 and s.outcome.recipients == ()


def test_notify_without_an_orcpt_goes_alone():
    # most recipients have NOTIFY and no ORCPT (a client that gave none):
    # the RCPT carries NOTIFY only, never an empty ORCPT
    s = session(recipients=[(BOB, RecipientDSN(notify=("SUCCESS",)))])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == b"RCPT TO:<bob@remote.test> NOTIFY=SUCCESS"


@pytest.mark.parametrize("smtputf8", [False, True])
def test_a_non_ascii_orcpt_of_a_type_other_than_utf8_is_left_out(smtputf8):
    # xtext (RFC 3461 4) is ASCII: only the utf-8 type of RFC 6533 can carry
    # a non-ASCII address, so an rfc822 one goes nowhere (ORCPT is optional)
    # rather than as xtext of its UTF-8 octets, which no reader decodes back
    s = session(smtputf8=smtputf8, recipients=[
        (BOB, RecipientDSN(notify=("FAILURE",), orcpt="rfc822;j\u00f6rg@b\u00fccher.test")),
    ])
    s.receive(b"220 hi\r\n")
    lines = sent(s.receive(EHLO_FULL)).split(b"\r\n")
    assert lines[1] == b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE"


EHLO_PIPELINING = b"250-mx.remote.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"


@pytest.mark.parametrize("after", [b"25O what\r\n", b"250 one too many\r\n"])
def test_a_protocol_error_undoes_what_the_same_read_asked_for(after):
    # the batch's replies and, in the same read, a malformed line or a reply
    # nobody asked for: the server's stream cannot be trusted, so neither
    # the message data its 354 asked for nor a QUIT goes -- the connection
    # is dropped and the transaction, without its ".", thrown away
    s = session()
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_PIPELINING)).endswith(b"DATA\r\n")
    actions = s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n" + after)
    assert actions == [Close(abort=True)]
    assert s.outcome.recipients == () and s.outcome.session_error.status == "4.5.0"
    assert s.phase is Phase.DONE


@pytest.mark.parametrize("after", [b"25O what\r\n", b"250 one too many\r\n250 more\r\n",
                                   b"999 nonsense\r\n"])
def test_what_follows_the_reply_to_the_final_dot_cannot_undo_the_delivery(after):
    # The server took the message (250 to the "."): whatever comes after it
    # in the same read -- a malformed line, replies nobody asked for --
    # ends the session, but the delivery stands (a retry would send the
    # message twice) and nothing more is written but what ends the session
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_PIPELINING)
    assert s.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n") == [
        SendBody(convert_7bit=False)]
    s.body_sent()
    actions = s.receive(b"250 2.0.0 queued\r\n" + after)
    assert actions and isinstance(actions[-1], Close)
    assert sent(actions) in (b"", b"QUIT\r\n")
    assert s.phase is Phase.DONE
    out = s.outcome
    assert out.session_error is None
    assert [(r.address, r.kind, r.reply.code) for r in out.recipients] == [
        (BOB, "delivered", 250), (CAROL, "delivered", 250)]


def test_reply_lines_of_one_read_cost_linear_time():
    # A next hop sending a 64 KiB read of "250" lines: cutting each line off
    # the front of the buffer copied the rest each time (quadratic: 100,000
    # lines took 0.9 s of the reactor).  Four times the lines must cost
    # about four times as much, not sixteen; a ratio of two sizes, so the
    # machine's speed does not matter; of this process's CPU time, so other
    # processes (tests run beside it) do not count.
    import gc
    import time

    def cost(lines: int) -> float:
        data = b"250 ok\r\n" * lines
        best = float("inf")
        for _ in range(5):  # the best of five: another process's burst is not ours
            p = ReplyParser()
            gc.disable()  # a collection in one run and not the other is no cost of feed
            try:
                start = time.process_time()
                replies = p.feed(data)
                best = min(best, time.process_time() - start)
            finally:
                gc.enable()
            assert len(replies) == lines and not p.pending
        return best

    assert cost(100_000) / cost(25_000) < 8


# RFC 5321 4.1.1.1: an EHLO keyword line is the keyword, then its
# parameters after SP.  A VT, FF, FS..US, NEL or a Unicode space is no
# separator (str.strip() and str.split() took each for one): "DSN<VT>" or
# "<NBSP>8BITMIME" is no DSN or 8BITMIME, and MAIL must not name its
# parameters (a server without the extension refuses them, 555, and the
# message bounces); a non-ASCII word is no keyword ("\u017f", long s,
# upper-cases to S)
@pytest.mark.parametrize("blank", ["\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u3000"])
def test_an_ehlo_keyword_with_another_blank_is_no_keyword(blank):
    for line in (f"DSN{blank}", f"{blank}DSN", f"8BITMIME{blank}", f"{blank}8BITMIME",
                 f"PIPELINING{blank}"):
        s = session(dsn=DSNRequest(ret="HDRS"), eight_bit=True)
        s.receive(b"220 hi\r\n")
        ehlo = f"250-mx.remote.test\r\n250 {line}\r\n".encode()
        first = sent(s.receive(ehlo)).split(b"\r\n")
        assert first[0] == b"MAIL FROM:<alice@example.org>", (line, first)
        assert len(first) == 2, line  # no PIPELINING: MAIL alone
        assert s.extensions == {}, line


def test_an_ehlo_keyword_line_takes_sp_and_htab_around_and_between():
    # the blanks a lenient reading takes (trailing SP is common; HTAB as
    # the server side takes it), and only those
    s = session(dsn=DSNRequest(ret="HDRS"), eight_bit=True)
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(b"250-mx.remote.test\r\n250-DSN \r\n250-SIZE\t1000\r\n"
                           b"250 8bitmime\r\n")).split(b"\r\n")
    assert first[0] == b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME RET=HDRS"
    assert s.extensions == {"DSN": "", "SIZE": "1000", "8BITMIME": ""}


def test_an_ehlo_keyword_may_hold_hyphens_but_not_begin_with_one():
    # RFC 5321 4.1.1.1: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
    # the session's extensions (in its result for applications) keep the
    # hyphenated ones, and a line beginning with a hyphen offers nothing
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(b"250-mx.remote.test\r\n250-MT-PRIORITY MIXER\r\n250-x-link2state\r\n"
              b"250--DSN\r\n250 -\r\n")
    assert s.extensions == {"MT-PRIORITY": "MIXER", "X-LINK2STATE": ""}


def test_a_non_ascii_ehlo_keyword_is_no_keyword():
    s = session(tls="opportunistic")
    s.receive(b"220 hi\r\n")
    assert sent(s.receive("250-mx.remote.test\r\n250 \u017fTARTTLS\r\n".encode())).startswith(
        b"MAIL FROM:")  # not STARTTLS: "\u017f" (long s) upper-cases to S
    assert not s.tls_offered


def test_an_empty_or_blank_ehlo_line_offers_nothing():
    # a line with no keyword at all ("250-", or SP only) is skipped, the
    # lines after it still read
    s = session()
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(b"250-mx.remote.test\r\n250-\r\n250-  \r\n250 SIZE 1000\r\n"))
    assert first.startswith(b"MAIL FROM:<alice@example.org> SIZE=")
    assert s.extensions == {"SIZE": "1000"}


def test_an_ehlo_line_with_sp_before_its_keyword_or_several_between_is_read():
    # SP leading or doubled is taken as one blank: no empty word becomes
    # the keyword, and no parameter keeps a blank
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(b"250-mx.remote.test\r\n250-  DSN\r\n250 SIZE  1000 \r\n")
    assert s.extensions == {"DSN": "", "SIZE": "1000"}


@pytest.mark.parametrize(("line", "chosen"), [
    ("AUTH=LOGIN PLAIN", b"AUTH PLAIN "),
    ("auth=login plain", b"AUTH PLAIN "),
    ("AUTH cram-md5 login", b"AUTH LOGIN\r\n"),
])
def test_the_old_auth_equals_form_and_lower_case_mechanisms_are_read(line, chosen):
    # "AUTH=LOGIN PLAIN" (an old form, any case: keywords are not case
    # sensitive, RFC 5321 2.4) is AUTH with all its mechanisms, and a
    # mechanism offered in lower case is the one named in upper case
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(f"250-smarthost\r\n250 {line}\r\n".encode()))
    assert first.startswith(chosen), (line, first)


@pytest.mark.parametrize(("lines", "chosen"), [
    (b"250-AUTH=LOGIN\r\n250 AUTH GSSAPI NTLM\r\n", b"AUTH LOGIN\r\n"),
    (b"250-AUTH GSSAPI NTLM LOGIN\r\n250 AUTH=LOGIN\r\n", b"AUTH LOGIN\r\n"),
    (b"250-AUTH PLAIN\r\n250 auth=cram-md5\r\n", b"AUTH PLAIN "),
    (b"250-AUTH LOGIN\r\n250 AUTH\r\n", b"AUTH LOGIN\r\n"),
])
def test_auth_named_on_two_lines_offers_the_mechanisms_of_both(lines, chosen):
    # the later line replaced the earlier one: a smarthost naming LOGIN
    # in its old "AUTH=" form and other mechanisms in the other got no
    # credentials, and the hub's 454 said it offered only those others
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    first = sent(s.receive(b"250-smarthost\r\n" + lines))
    assert first.startswith(chosen), (lines, first)


def test_the_454_names_the_mechanisms_of_every_auth_line():
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250-AUTH=CRAM-MD5\r\n250 AUTH GSSAPI cram-md5 NTLM\r\n")
    assert s.outcome.session_error.text() == (
        "454 4.7.0 the smarthost offers AUTH CRAM-MD5 GSSAPI NTLM only; txmailhub can use "
        "PLAIN or LOGIN ([relay] smarthost_auth_file is set)")


def test_a_mechanism_on_two_auth_lines_in_different_cases_is_named_once():
    # the case of the first line's name does not matter: a mechanism is
    # the same in any case (RFC 4422 3.1), whichever line came first
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(b"250-smarthost\r\n250-AUTH=cram-md5\r\n250 AUTH CRAM-MD5 NTLM\r\n")
    assert s.extensions["AUTH"] == "cram-md5 NTLM"
    assert s.outcome.session_error.text() == (
        "454 4.7.0 the smarthost offers AUTH cram-md5 NTLM only; txmailhub can use "
        "PLAIN or LOGIN ([relay] smarthost_auth_file is set)")


def test_only_auth_lines_are_merged_a_keyword_named_again_takes_its_later_value():
    # "SIZE 60" and "SIZE 50" merged would read "60 50", no number: the
    # limit lost and the message sent.  The later line's value counts
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(b"250-mx.remote.test\r\n250-SIZE 60\r\n250 SIZE 50\r\n")
    assert s.extensions == {"SIZE": "50"}
    assert s.outcome.session_error is None
    assert s.outcome.recipients[0].reply.code == 552


@pytest.mark.parametrize(("mechanisms", "quoted"), [
    # exactly the limit: quoted whole, nothing cut
    ("X-MECH-1 " * 22 + "AB", "X-MECH-1 " * 22 + "AB"),
    # a mechanism ending at the limit, another after it: the first kept
    ("A " + "X" * 198 + " Y", "A " + "X" * 198 + " ..."),
    # one mechanism longer than the limit: its first 200 characters
    ("Z" * 300, "Z" * 200 + " ..."),
])
def test_a_long_auth_line_is_cut_at_200_characters_at_a_mechanism(mechanisms, quoted):
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    s.receive(f"250-smarthost\r\n250 AUTH {mechanisms}\r\n".encode())
    assert s.outcome.session_error.text() == (
        f"454 4.7.0 the smarthost offers AUTH {quoted} only; txmailhub can use "
        "PLAIN or LOGIN ([relay] smarthost_auth_file is set)")


@pytest.mark.parametrize(("mechanisms", "chosen"), [
    # one mechanism, neither PLAIN nor LOGIN: no credentials go
    ("CRAM-MD5\x0bLOGIN", b"QUIT\r\n"),
    ("LOGIN\xa0PLAIN", b"QUIT\r\n"),
    ("CRAM-MD5\tLOGIN", b"AUTH LOGIN\r\n"),  # HTAB as SP
    ("PLA\u0131N LOGIN", b"AUTH LOGIN\r\n"),  # dotless i: no PLAIN
])
def test_auth_mechanisms_are_separated_by_sp_only(mechanisms, chosen):
    s = session(credentials=("user", "pw"))
    s.receive(b"220 hi\r\n")
    line = sent(s.receive(f"250-smarthost\r\n250 AUTH {mechanisms}\r\n".encode()))
    assert line.startswith(chosen), (mechanisms, line)


@pytest.mark.parametrize("reply, refused", [
    (Reply.of(555, "5.5.4", "AUTH not recognized"), True),
    (Reply.of(553, "5.5.4", "bad parameter"), True),  # told by the enhanced code
    (Reply.of(501, "5.1.7", "bad sender"), False),  # the sender's address, not AUTH=
    (Reply.of(550, "5.7.1", "not from here"), False),  # policy
    (Reply.of(421, "4.5.4", "closing"), False),  # the server closing, whatever it adds
    (Reply.of(250, "2.5.4", "ok"), False),  # no refusal at all
])
def test_what_refuses_the_auth_parameter_rather_than_the_sender(reply, refused):
    # RFC 4954 5: a MAIL with AUTH= refused for its parameter goes again
    # without it; a refusal of the sender, a 421 or a success is no such
    assert refuses_parameters(reply) is refused


# --- RCPT refused for NOTIFY= or ORCPT= (RFC 3461) ------------------------------------

RCPT_DSN = [(BOB, RecipientDSN(notify=("SUCCESS", "FAILURE"), orcpt="rfc822;Bob@remote.test")),
            (CAROL, RecipientDSN(notify=("FAILURE",)))]
BOB_WITH_DSN = b"RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@remote.test\r\n"
CAROL_WITH_DSN = b"RCPT TO:<carol@remote.test> NOTIFY=FAILURE\r\n"
BOB_PLAIN = b"RCPT TO:<bob@remote.test>\r\n"
MAIL_PLAIN = b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
EHLO_PIPE_DSN = (b"250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-DSN\r\n"
                 b"250 ENHANCEDSTATUSCODES\r\n")


def greeted(ehlo: bytes, **kw) -> ClientSession:
    """A session that has had the server's greeting and ``ehlo`` as the
    reply to its EHLO: where these tests' conversations begin."""
    s = session(**kw)
    s.receive(b"220 hi\r\n")
    s.receive(ehlo)
    return s


def bob_alone_in_the_first_message(too_many: bytes = b"too many recipients"):
    """A session for bob, carol and dave in which the server took bob
    alone (452 4.5.3 ``too_many`` to the others) and the first message's
    text is sent: the session, awaiting the reply to its ".", and dave."""
    dave = Address("dave", "remote.test")
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None), (dave, None)])
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 %s\r\n452 4.5.3 %s\r\n354 go\r\n"
              % (too_many, too_many))
    s.body_sent()
    return s, dave


def dot_unanswered(s: ClientSession, end: str):
    """Send the message's text and have its "." go unanswered: the server
    silent (``end="timeout"``) or the connection lost.  The outcome."""
    s.body_sent()
    if end == "timeout":
        s.timed_out()
    else:
        s.connection_lost()
    return s.outcome


@pytest.mark.parametrize("refusal", [b"501 5.5.4 Bad NOTIFY parameter syntax",
                                     b"555 5.5.4 ORCPT not recognized",
                                     b"501 syntax error in parameters",
                                     b"555 parameters not recognized"])
def test_a_rcpt_refused_for_its_dsn_parameters_goes_again_without_them(refusal):
    # Postfix: "501 5.5.4 Bad NOTIFY parameter syntax"; the recipient
    # bounced.  Its RCPT goes again at once, in the same transaction,
    # without NOTIFY and ORCPT, and the hub keeps that recipient's notice
    # duty (RFC 3461 5.2.2: "relayed" for NOTIFY=SUCCESS); carol's passed on
    s = session(recipients=RCPT_DSN)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_DSN_NO_PIPE)) == MAIL_PLAIN
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == BOB_WITH_DSN
    assert sent(s.receive(refusal + b"\r\n")) == BOB_PLAIN
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == CAROL_WITH_DSN
    assert sent(s.receive(b"250 2.1.5 ok\r\n")) == b"DATA\r\n"
    s.receive(b"354 go\r\n")
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 queued\r\n")) == b"QUIT\r\n"
    out = s.outcome
    assert [r.kind for r in out.recipients] == ["delivered", "delivered"]
    assert out.dsn_supported and out.dsn_dropped == {BOB}
    assert out.transactions == 1
    assert s.rcpt_dsn_refused[BOB].text() == refusal.decode()


@pytest.mark.parametrize("second", [b"550 5.1.1 no such user", b"501 5.5.4 still no"])
def test_a_refusal_of_the_rcpt_without_dsn_parameters_stands(second):
    # a 5xx to the RCPT sent again is that recipient's bounce, a 501/555
    # too: it carried no DSN parameter, so it does not go a third time
    s = greeted(EHLO_DSN_NO_PIPE, recipients=RCPT_DSN[:1])
    s.receive(b"250 2.1.0 ok\r\n")
    assert sent(s.receive(b"501 5.5.4 Bad NOTIFY parameter syntax\r\n")) == BOB_PLAIN
    assert sent(s.receive(second + b"\r\n")) == b"QUIT\r\n"
    [r] = s.outcome.recipients
    assert r.kind == "permanent" and r.reply.text() == second.decode()


@pytest.mark.parametrize("kw, ehlo", [
    (dict(recipients=[(BOB, None)]), EHLO_DSN_NO_PIPE),  # no NOTIFY or ORCPT to drop
    (dict(recipients=RCPT_DSN[:1]), EHLO_BASIC),  # no DSN offered: none sent
])
def test_a_501_to_a_rcpt_without_dsn_parameters_is_its_answer(kw, ehlo):
    s = greeted(ehlo, **kw)
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == BOB_PLAIN
    assert sent(s.receive(b"501 5.5.4 bad\r\n")) == b"QUIT\r\n"
    assert [r.reply.code for r in s.outcome.recipients] == [501]
    assert not s.rcpt_dsn_refused


@pytest.mark.parametrize("refusal", [b"501 5.1.3 bad recipient address syntax",
                                     b"550 5.5.4 unrecognized argument",
                                     b"555 5.7.1 not allowed", b"504 5.5.4 not implemented"])
def test_other_refusals_of_a_rcpt_with_dsn_parameters_stand(refusal):
    s = greeted(EHLO_DSN_NO_PIPE, recipients=RCPT_DSN[:1])
    s.receive(b"250 2.1.0 ok\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    assert [r.reply.text() for r in s.outcome.recipients] == [refusal.decode()]


def test_pipelined_a_rcpt_refused_for_its_dsn_parameters_goes_in_the_next_transaction():
    # DATA went with the batch: a RCPT after it could reach a server that
    # answered DATA 354 as message data.  Carol's message goes; then bob's
    # in a new transaction on the same connection, without NOTIFY and
    # ORCPT (no RSET: the first ended with the reply to its ".")
    s = session(recipients=RCPT_DSN)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_PIPE_DSN)) == (MAIL_PLAIN + BOB_WITH_DSN + CAROL_WITH_DSN
                                              + b"DATA\r\n")
    actions = s.receive(b"250 2.1.0 ok\r\n501 5.5.4 Bad NOTIFY parameter syntax\r\n"
                        b"250 2.1.5 ok\r\n354 go\r\n")
    assert actions == [SendBody(convert_7bit=False)]
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 queued\r\n")) == MAIL_PLAIN + BOB_PLAIN + b"DATA\r\n"
    assert s.outcome is None
    assert s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n") == [
        SendBody(convert_7bit=False)]
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 queued too\r\n")) == b"QUIT\r\n"
    out = s.outcome
    assert [(r.address, r.reply.text()) for r in out.recipients] == [
        (BOB, "250 2.0.0 queued too"), (CAROL, "250 2.0.0 queued")]
    assert out.session_error is None and out.dsn_dropped == {BOB} and out.transactions == 2


def test_pipelined_every_rcpt_refused_for_dsn_parameters_resets_and_goes_again():
    # nothing taken, DATA refused: the transaction was not ended by a "."
    # and a new MAIL needs RSET first (RFC 5321 4.1.1.5)
    s = greeted(EHLO_PIPE_DSN, recipients=RCPT_DSN)
    assert sent(s.receive(b"250 2.1.0 ok\r\n501 5.5.4 Bad NOTIFY\r\n501 5.5.4 Bad NOTIFY\r\n"
                          b"554 5.5.1 Error: no valid recipients\r\n")) == b"RSET\r\n"
    assert sent(s.receive(b"250 2.0.0 ok\r\n")) == (
        MAIL_PLAIN + BOB_PLAIN + b"RCPT TO:<carol@remote.test>\r\n" + b"DATA\r\n")
    s.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no carol\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [(r.address, r.kind) for r in s.outcome.recipients] == [
        (BOB, "delivered"), (CAROL, "permanent")]
    assert s.outcome.dsn_dropped == {BOB, CAROL}


def test_pipelined_dsn_refusal_and_354_for_nothing_ends_it_empty_then_goes_again():
    # RFC 2920 3.1: a DATA accepted with no recipient taken ends empty (its
    # reply ignored), and the next transaction follows without RSET
    s = greeted(EHLO_PIPE_DSN, recipients=RCPT_DSN[:1])
    assert sent(s.receive(b"250 ok\r\n501 5.5.4 Bad NOTIFY\r\n354 go\r\n")) == (
        b".\r\n" + MAIL_PLAIN + BOB_PLAIN + b"DATA\r\n")
    assert s.receive(b"554 5.5.1 no valid recipients\r\n250 ok\r\n250 ok\r\n354 go\r\n") == [
        SendBody(convert_7bit=False)]
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [r.kind for r in s.outcome.recipients] == ["delivered"]


def test_pipelined_dsn_refusal_then_421_in_the_next_transaction_keeps_the_first():
    # carol's message went: the 421 in bob's transaction is no session
    # error (the relay would send carol's again), only bob's result
    s = greeted(EHLO_PIPE_DSN, recipients=RCPT_DSN)
    s.receive(b"250 ok\r\n501 5.5.4 Bad NOTIFY\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(b"421 4.3.2 shutting down\r\n")
    out = s.outcome
    assert out.session_error is None
    assert [(r.address, r.reply.text()) for r in out.recipients] == [
        (BOB, "421 4.3.2 shutting down"), (CAROL, "250 2.0.0 queued")]


# --- "too many recipients": a later transaction on the same connection --------------


def test_too_many_recipients_go_in_a_new_transaction_on_the_same_connection():
    # RFC 5321 4.5.3.1.10: "the client ... should continue with the
    # remaining recipients in a later transaction"; the first ended with
    # the reply to its ".", so no RSET
    s, dave = bob_alone_in_the_first_message()
    assert sent(s.receive(b"250 2.0.0 one\r\n")) == (
        b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
        b"RCPT TO:<carol@remote.test>\r\nRCPT TO:<dave@remote.test>\r\nDATA\r\n")
    # each its own outcome: carol's 550 is hers
    s.receive(b"250 ok\r\n550 5.1.1 no carol\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 two\r\n")) == b"QUIT\r\n"
    assert [(r.address, r.reply.text()) for r in s.outcome.recipients] == [
        (BOB, "250 2.0.0 one"), (CAROL, "550 5.1.1 no carol"), (dave, "250 2.0.0 two")]
    assert s.outcome.transactions == 2


def test_too_many_recipients_after_a_refused_data_go_after_rset():
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    assert sent(s.receive(b"452 4.5.3 too many recipients\r\n")) == b"DATA\r\n"
    assert sent(s.receive(b"451 4.3.0 try again\r\n")) == b"RSET\r\n"
    assert sent(s.receive(b"250 ok\r\n")) == MAIL_PLAIN
    assert sent(s.receive(b"250 ok\r\n")) == b"RCPT TO:<carol@remote.test>\r\n"
    assert sent(s.receive(b"250 ok\r\n")) == b"DATA\r\n"
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert [(r.address, r.reply.code) for r in s.outcome.recipients] == [(BOB, 451),
                                                                         (CAROL, 250)]


def test_a_refused_rset_leaves_the_later_recipients_to_a_new_connection():
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"452 4.5.3 too many recipients\r\n")
    s.receive(b"554 5.6.0 no\r\n")
    assert sent(s.receive(b"500 5.5.1 what?\r\n")) == b"QUIT\r\n"
    out = s.outcome
    assert out.session_error is None
    assert [(r.address, r.reply.text()) for r in out.recipients] == [
        (BOB, "554 5.6.0 no"), (CAROL, "452 4.5.3 too many recipients")]


def test_transactions_in_one_session_are_bounded():
    # a server that takes one recipient a message: MAX_TRANSACTIONS
    # messages, and the rest keep their 452 for the relay's next connection
    from txmailhub.smtp.client import MAX_TRANSACTIONS

    rcpts = [Address(f"u{n}", "remote.test") for n in range(MAX_TRANSACTIONS + 3)]
    s = greeted(EHLO_FULL, recipients=[(a, None) for a in rcpts])
    for _ in range(MAX_TRANSACTIONS):
        left = len(rcpts) - s.transactions + 1
        s.receive(b"250 ok\r\n250 ok\r\n" + b"452 4.5.3 too many\r\n" * (left - 1)
                  + b"354 go\r\n")
        s.body_sent()
        s.receive(b"250 2.0.0 queued\r\n")
    assert s.phase is Phase.QUIT
    kinds = [r.reply.code for r in s.outcome.recipients]
    assert kinds == [250] * MAX_TRANSACTIONS + [452] * 3
    assert s.outcome.transactions == MAX_TRANSACTIONS


def test_a_timeout_after_the_final_dot_of_a_later_transaction_is_its_recipients_only():
    # bob's message went; carol's "." got no reply: she may have it, so
    # her result is the timeout (no copy elsewhere now), bob's stands
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.timed_out()
    out = s.outcome
    assert out.session_error is None
    assert [(r.address, r.reply.code) for r in out.recipients] == [(BOB, 250), (CAROL, 421)]


@pytest.mark.parametrize("end", ["timeout", "lost"])
def test_an_unanswered_final_dot_of_a_later_transaction_leaves_those_it_refused_their_reply(end):
    # only the recipients the later transaction took may have its message:
    # dave and erin, whose RCPTs in it were refused (busy, "too many"
    # again), keep those replies -- erin's goes on a new connection at
    # once, dave waits for the retry -- not the failure of a "." that
    # never carried them (the first transaction's own refusals stand so)
    dave, erin = Address("dave", "remote.test"), Address("erin", "remote.test")
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None), (dave, None), (erin, None)])
    s.receive(b"250 ok\r\n250 ok\r\n" + b"452 4.5.3 too many\r\n" * 3 + b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(b"250 ok\r\n250 ok\r\n450 4.2.1 dave is busy\r\n452 4.5.3 too many\r\n"
              b"354 go\r\n")
    out = dot_unanswered(s, end)
    assert out.session_error is None
    assert [(r.address, r.reply.code) for r in out.recipients] == [
        (BOB, 250), (CAROL, 421), (dave, 450), (erin, 452)]
    assert [r.reply.text() for r in out.recipients][2:] == [
        "450 4.2.1 dave is busy", "452 4.5.3 too many"]
    assert out.unanswered_end == (CAROL,)  # the relay logs her "may have been delivered"


def test_an_unanswered_final_dot_after_a_transaction_that_took_nobody_stays_put():
    # the first transaction took no recipient (bob refused, carol "too
    # many"); carol's "." in the next went unanswered: she may have the
    # message, so the outcome does not say no message went (the relay
    # would take her to the next MX host at once)
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    assert sent(s.receive(b"250 ok\r\n550 5.1.1 no bob\r\n452 4.5.3 too many\r\n"
                          b"554 5.5.1 no valid recipients\r\n")) == b"RSET\r\n"
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.connection_lost()
    out = s.outcome
    assert not out.no_recipient_taken and out.session_error is None
    assert [(r.address, r.reply.code) for r in out.recipients] == [(BOB, 550), (CAROL, 421)]


def test_helo_refused_after_a_554_to_ehlo_keeps_the_ehlo_reply():
    # the EHLO's words say why; HELO's only that it is refused too
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(b"554 5.7.1 mail.hub.test listed at bl.example.net\r\n")
    assert sent(s.receive(b"503 5.5.1 Error: send HELO/EHLO first\r\n")) == b"QUIT\r\n"
    assert s.outcome.session_error.text() == "554 5.7.1 mail.hub.test listed at bl.example.net"


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("step", ["DATA", "END"])
def test_a_421_ending_a_transaction_starts_no_later_one(pipelined, step):
    # RFC 5321 3.8: a 421 says the server is closing the channel: carol's
    # "too many" waits for the relay's new connection; no RSET or MAIL
    # goes to a server that said it is going (it may even answer it)
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    if pipelined:
        s.receive(EHLO_FULL)
        replies = b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n"
    else:
        s.receive(EHLO_BASIC)
        s.receive(b"250 ok\r\n")
        s.receive(b"250 ok\r\n")
        replies = b"452 4.5.3 too many\r\n"
    s.receive(replies)
    if step == "END":
        s.receive(b"354 go\r\n")
        s.body_sent()
    actions = s.receive(b"421 4.3.2 shutting down\r\n")
    assert sent(actions) == b"QUIT\r\n"
    out = s.outcome
    assert out.transactions == 1
    assert [(r.address, r.reply.code) for r in out.recipients] == [(BOB, 421), (CAROL, 452)]


def test_a_refused_rset_leaves_a_rcpt_refused_for_its_dsn_parameters_for_later():
    # bob's RCPT was refused for NOTIFY alone and never went again: a 5yz
    # to RSET is no verdict on him (no bounce), he waits for the next try
    s = greeted(EHLO_PIPE_DSN, recipients=RCPT_DSN)
    assert sent(s.receive(b"250 ok\r\n501 5.5.4 Bad NOTIFY\r\n250 ok\r\n"
                          b"554 5.7.1 no\r\n")) == b"RSET\r\n"
    assert sent(s.receive(b"502 5.5.1 RSET not implemented\r\n")) == b"QUIT\r\n"
    out = s.outcome
    assert out.session_error is None
    by = {r.address: r for r in out.recipients}
    assert by[CAROL].reply.code == 554
    assert by[BOB].kind == "transient", by[BOB].reply.text()
    assert by[BOB].reply.text() == "451 4.5.4 Bad NOTIFY (the server said 501 5.5.4)"


@pytest.mark.parametrize("refusal", [b"521 5.3.2 does not accept mail",
                                     b"556 5.1.10 domain does not accept mail"])
def test_helo_refused_with_no_mail_at_all_after_a_554_to_ehlo_keeps_the_helo_reply(refusal):
    # RFC 7504: a 521 (556) says the host takes no mail at all, which the
    # relay bounces on; the EHLO's 554 in its place would keep it queued
    s = session()
    s.receive(b"220 hi\r\n")
    s.receive(b"554 5.7.1 mail.hub.test listed at bl.example.net\r\n")
    s.receive(refusal + b"\r\n")
    assert s.outcome.session_error.text() == refusal.decode()


@pytest.mark.parametrize("first", [
    b"550 5.1.1 no bob\r\n452 4.5.3 too many\r\n554 5.5.1 no valid recipients\r\n",
    b"250 ok\r\n452 4.5.3 too many\r\n451 4.3.0 not now\r\n",  # DATA refused for now
])
def test_a_4yz_after_the_data_of_a_later_transaction_is_no_refusal_before_any_message(first):
    # the first transaction sent no message text (every RCPT refused, or
    # DATA refused for now); carol's in the next did, and a 4yz to its "."
    # waits for the next retry (docs/relay.rst): the outcome must not say
    # the host took no message, which sends her to the next MX host now
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    assert sent(s.receive(b"250 ok\r\n" + first)) == b"RSET\r\n"
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"451 4.3.0 try later\r\n")
    out = s.outcome
    assert out.session_error is None and out.transactions == 2
    assert not out.no_recipient_taken and not out.data_refused_for_now
    assert [r.reply.code for r in out.recipients][1] == 451


# --- refusals that stand when the session ends, and transactions without text -----


@pytest.mark.parametrize("end", ["timeout", "lost"])
def test_a_rcpt_waiting_to_go_again_without_notify_is_not_failed_by_an_unanswered_dot(end):
    # bob's RCPT was refused for NOTIFY and waits for the next transaction;
    # carol's "." went unanswered: the message never went to bob, so his
    # result says what happened to him -- not the failure of that "." --
    # and he still waits for the retry
    s = greeted(EHLO_PIPE_DSN, recipients=RCPT_DSN)
    s.receive(b"250 ok\r\n501 5.5.4 Bad NOTIFY\r\n250 ok\r\n354 go\r\n")
    out = dot_unanswered(s, end)
    assert out.session_error is not None and "end of data" in out.session_error.text()
    [bob] = out.refused
    assert bob.address == BOB and bob.kind == "transient"
    assert "end of data" not in bob.reply.text()
    assert bob.reply.text() == ("451 4.5.4 Bad NOTIFY (the server said 501 5.5.4; not sent: the "
                                "session ended before the RCPT went again without NOTIFY "
                                "and ORCPT)")


def test_a_rcpt_waiting_to_go_again_in_a_later_transaction_is_not_failed_by_its_dot():
    # the same in the session's second transaction: carol may have the
    # message (``unanswered_end``), bob never had it
    dave = Address("dave", "remote.test")
    s = greeted(EHLO_PIPE_DSN, recipients=[(dave, None), *RCPT_DSN])
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(b"250 ok\r\n501 5.5.4 Bad NOTIFY\r\n250 ok\r\n354 go\r\n")
    s.body_sent()
    s.timed_out()
    out = s.outcome
    assert out.session_error is None and out.unanswered_end == (CAROL,)
    by = {r.address: r for r in out.recipients}
    assert by[dave].kind == "delivered"
    assert "end of data" in by[CAROL].reply.text()
    assert by[BOB].kind == "transient" and "end of data" not in by[BOB].reply.text()
    assert by[BOB].reply.text().startswith("451 4.5.4 Bad NOTIFY (the server said 501 5.5.4;")


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_421_in_the_message_data_keeps_the_refusals_to_rcpt(pipelined):
    # the server says 421 in the middle of the data: the replies before it
    # each answered its command (the 354 came where DATA's belonged), so
    # bob's 550 is his answer (a bounce in the server's words) and dave's
    # 450 his, not the 421's
    dave = Address("dave", "remote.test")
    s = session(recipients=[(BOB, None), (CAROL, None), (dave, None)])
    s.receive(b"220 hi\r\n")
    if pipelined:
        s.receive(EHLO_FULL)
        s.receive(b"250 ok\r\n550 5.1.1 no bob\r\n250 ok\r\n450 4.2.1 dave busy\r\n354 go\r\n")
    else:
        s.receive(EHLO_BASIC)
        for reply in (b"250 ok", b"550 5.1.1 no bob", b"250 ok", b"450 4.2.1 dave busy",
                      b"354 go"):
            s.receive(reply + b"\r\n")
    assert s.phase is Phase.BODY
    assert s.receive(b"421 4.4.2 data timeout\r\n") == [Close(abort=True)]
    out = s.outcome
    assert out.session_error is not None and out.session_error.code == 421
    assert {r.address: r.reply.text() for r in out.refused} == {
        BOB: "550 5.1.1 no bob", dave: "450 4.2.1 dave busy"}


def test_a_421_in_the_data_of_a_later_transaction_keeps_its_refusals_to_rcpt():
    dave, erin = Address("dave", "remote.test"), Address("erin", "remote.test")
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None), (dave, None), (erin, None)])
    s.receive(b"250 ok\r\n250 ok\r\n" + b"452 4.5.3 too many\r\n" * 3 + b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(b"250 ok\r\n550 5.1.1 no carol\r\n450 4.2.1 dave busy\r\n250 ok\r\n354 go\r\n")
    s.receive(b"421 4.4.2 data timeout\r\n")
    out = s.outcome
    assert out.session_error is None
    by = {r.address: r.reply.text() for r in out.recipients}
    assert by[BOB] == "250 2.0.0 queued"
    assert by[CAROL] == "550 5.1.1 no carol"
    assert by[dave] == "450 4.2.1 dave busy"  # his own, not the 452 he had before


def test_a_421_to_a_later_rcpt_leaves_an_earlier_4yz_of_that_transaction_its_own():
    # the second transaction refused dave for now, then said 421 to erin's
    # RCPT: dave keeps his 450 (the server's answer for him), erin her 452
    # from before (the relay's new connection)
    dave, erin = Address("dave", "remote.test"), Address("erin", "remote.test")
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (dave, None), (erin, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"452 4.5.3 too many\r\n")
    s.receive(b"452 4.5.3 too many\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    assert sent(s.receive(b"250 2.0.0 queued\r\n")) == MAIL_PLAIN
    s.receive(b"250 ok\r\n")
    s.receive(b"450 4.2.1 dave busy\r\n")
    s.receive(b"421 4.3.2 closing\r\n")
    by = {r.address: r.reply.text() for r in s.outcome.recipients}
    assert by == {BOB: "250 2.0.0 queued", dave: "450 4.2.1 dave busy",
                  erin: "452 4.5.3 too many"}


@pytest.mark.parametrize("second", [
    b"250 ok\r\n451 4.7.1 too many recipients this session\r\n"
    b"451 4.7.1 too many recipients this session\r\n554 5.5.1 no valid recipients\r\n",
    b"250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n",  # DATA refused for now
])
def test_a_later_transaction_without_message_text_names_its_recipients_for_the_next_host(
        second):
    s, dave = bob_alone_in_the_first_message(b"too many")
    s.receive(b"250 2.0.0 queued\r\n")
    s.receive(second)
    out = s.outcome
    assert out.session_error is None and out.transactions == 2
    assert not out.no_recipient_taken and not out.data_refused_for_now
    assert out.untaken_for_now == {CAROL, dave}


def test_a_4yz_in_a_transaction_that_carried_the_message_is_not_for_the_next_host():
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n250 ok\r\n450 4.2.1 busy\r\n354 go\r\n")
    s.body_sent()
    s.receive(b"250 2.0.0 queued\r\n")
    assert s.outcome.untaken_for_now == frozenset()


# --- a reply before its command: more replies than commands sent --------------------


def test_a_stray_reply_after_the_final_dot_is_no_answer_to_the_next_mail():
    # the second "250" came with the reply to ".", before the next
    # transaction's MAIL was sent: taken as MAIL's answer, the RCPTs and
    # DATA went on against replies shifted by one
    s, dave = bob_alone_in_the_first_message()
    actions = s.receive(b"250 2.0.0 one\r\n250 ok\r\n")
    assert actions == [Close(abort=True)]  # no MAIL, no QUIT
    out = s.outcome
    assert out.session_error is None  # bob's delivery stands
    assert [(r.address, r.reply.text()) for r in out.recipients] == [
        (BOB, "250 2.0.0 one"), (CAROL, "452 4.5.3 too many recipients"),
        (dave, "452 4.5.3 too many recipients")]
    assert s.phase is Phase.DONE


@pytest.mark.parametrize("cut", [False, True])
@pytest.mark.parametrize("stray", [b"250 2.1.0 stray\r\n", b"550 5.7.1 stray\r\n"])
def test_a_stray_reply_while_the_next_mail_is_held_is_no_answer_to_it(stray, cut):
    # the adapter holds the next transaction's commands while it records
    # the first one's results (``hold``): a reply read meanwhile -- in a
    # later read than the reply to ".", which a transport that cannot
    # pause its reading delivers -- answers no command.  Taken for the
    # MAIL's once that went, a "550" bounced carol and dave
    s, dave = bob_alone_in_the_first_message()
    actions = s.receive(b"250 2.0.0 one\r\n")
    assert isinstance(actions[0], TransactionDone)
    assert sent(actions[1:]).startswith(b"MAIL FROM:<alice@example.org>")
    s.hold()
    if cut:  # its first bytes alone are early too (all but a 421's)
        assert s.receive(stray[:2]) == [Close(abort=True)]
    else:
        assert s.receive(stray) == [Close(abort=True)]
    out = s.outcome
    assert out.session_error is None  # bob's delivery stands
    assert [(r.address, r.reply.text()) for r in out.recipients] == [
        (BOB, "250 2.0.0 one"), (CAROL, "452 4.5.3 too many recipients"),
        (dave, "452 4.5.3 too many recipients")]
    said = (": " + stray.decode().strip()) if not cut else ""
    assert s.protocol_error.text() == (
        f"421 4.5.0 reply from the server before the hub's command (MAIL) was sent{said}")
    assert s.transactions_sent == 1  # the held MAIL never went


def test_a_421_while_the_next_mail_is_held_is_the_server_closing():
    # RFC 5321 3.8: a 421 may come "asynchronously from command receipt",
    # also cut between reads
    s, dave = bob_alone_in_the_first_message()
    s.receive(b"250 2.0.0 one\r\n")
    s.hold()
    assert s.receive(b"42") == []
    assert s.receive(b"1 4.3.2 shutting down\r\n") == [Close(abort=True)]
    assert s.protocol_error is None
    assert [(r.address, r.reply.text()) for r in s.outcome.recipients] == [
        (BOB, "250 2.0.0 one"), (CAROL, "452 4.5.3 too many recipients"),
        (dave, "452 4.5.3 too many recipients")]
    assert s.transactions_sent == 1


def test_the_replies_after_a_held_mail_went_answer_it():
    s, _ = bob_alone_in_the_first_message()
    s.receive(b"250 2.0.0 one\r\n")
    s.hold()
    s.release()  # the MAIL, RCPTs and DATA go
    assert s.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n") == [
        SendBody(convert_7bit=False)]
    assert s.transactions_sent == 2 and s.outcome is None


def test_a_stray_reply_after_the_final_dot_is_no_answer_to_rset():
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"452 4.5.3 too many recipients\r\n")
    assert s.receive(b"451 4.3.0 try again\r\n250 ok\r\n") == [Close(abort=True)]
    assert [(r.address, r.reply.code) for r in s.outcome.recipients] == [(BOB, 451),
                                                                         (CAROL, 452)]


def test_a_second_reply_with_the_greeting_is_a_protocol_error():
    s = session()
    assert s.receive(b"220 hi\r\n250 mx.remote.test\r\n") == [Close(abort=True)]
    err = s.outcome.session_error
    assert err.code == 421 and err.status == "4.5.0"
    assert "before the hub's command (EHLO) was sent: 250 mx.remote.test" in err.text()


def test_a_multi_line_greeting_is_one_reply():
    s = session()
    assert sent(s.receive(b"220-mx.remote.test\r\n220-more words\r\n220 ESMTP\r\n")) == (
        b"EHLO mail.hub.test\r\n")
    assert s.outcome is None


def test_a_reply_too_many_after_ehlo_is_no_answer_to_mail():
    s = session()
    s.receive(b"220 hi\r\n")
    assert s.receive(EHLO_BASIC + b"250 2.1.0 ok\r\n") == [Close(abort=True)]
    out = s.outcome
    assert out.session_error.code == 421 and out.refused == ()
    assert "(MAIL) was sent: 250 2.1.0 ok" in out.session_error.text()


def test_the_start_of_a_reply_before_its_command_is_early_too():
    # the stray reply cut between two reads: its first bytes came before
    # the command it would be taken for
    s = greeted(EHLO_BASIC)
    assert s.receive(b"250 2.1.0 ok\r\n25") == [Close(abort=True)]
    assert s.outcome.session_error.code == 421
    assert s.receive(b"0 2.1.5 ok\r\n") == []


def test_a_reply_cut_between_reads_after_its_command_is_no_early_one():
    s = greeted(EHLO_BASIC)
    assert sent(s.receive(b"250 2.1")) == b""
    assert sent(s.receive(b".0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"
    assert sent(s.receive(b"250-2.1.5 ok\r\n250-")) == b""
    assert sent(s.receive(b"2.1.5 more\r\n250 2.1.5 end\r\n")) == b"DATA\r\n"
    assert s.outcome is None


def test_the_replies_to_a_pipelined_group_may_come_in_one_read():
    # RFC 2920: MAIL, the RCPTs and DATA went together; their replies
    # together are no reply too many -- but one more than the group is
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    assert s.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n") == [
        SendBody(convert_7bit=False)]
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    assert s.receive(b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n250 ok\r\n") == [
        Close(abort=True)]
    assert "unexpected reply from the server: 250 ok" in s.outcome.session_error.text()


def test_the_ignored_reply_to_an_empty_data_and_quit_may_come_together():
    # pipelined, every RCPT refused and DATA taken: ".", then QUIT, went
    # in one write, and both their replies may come in one read
    s = greeted(EHLO_FULL)
    assert sent(s.receive(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")) == b".\r\nQUIT\r\n"
    assert s.receive(b"250 ok\r\n221 bye\r\n") == [Close()]
    assert [(r.address, r.reply.code) for r in s.outcome.recipients] == [(BOB, 550)]


def test_an_early_421_is_the_server_closing_not_a_protocol_error():
    # RFC 5321 3.8: a server shutting down may send its 421
    # "asynchronously from command receipt": its words end the session
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    assert s.receive(b"550 5.1.1 no bob\r\n421 4.3.2 shutting down\r\n") == [
        Close(abort=True)]
    out = s.outcome
    assert out.session_error.text() == "421 4.3.2 shutting down"
    assert [(r.address, r.reply.code) for r in out.refused] == [(BOB, 550)]  # it stands
    assert s.protocol_error is None



def test_nothing_after_an_early_421_is_read_as_an_answer():
    # the RCPT the 550 asked for never went: a line after the 421, in a
    # later read, answers nothing and asks for nothing
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"550 5.1.1 no bob\r\n421 4.3.2 shutting down\r\n")
    assert s.phase is Phase.DONE
    assert s.receive(b"250 2.1.5 ok\r\n") == []
    assert s.protocol_error is None
    assert s.outcome.session_error.text() == "421 4.3.2 shutting down"

@pytest.mark.parametrize("cut", [1, 2, 3, 5, 12, 26])
def test_an_early_421_cut_between_reads_is_the_server_closing_too(cut):
    # where the reads split it changes nothing: the 421 came before the next
    # RCPT, and ends the session as it does whole (bob's 550 stands)
    whole = b"421-4.3.2 shutting\r\n421 4.3.2 down\r\n"
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    actions = s.receive(b"550 5.1.1 no bob\r\n" + whole[:cut])
    assert Close(abort=True) not in actions and s.outcome is None
    assert s.receive(whole[cut:]) == [Close(abort=True)]
    out = s.outcome
    assert out.session_error == Reply(421, "4.3.2", ("shutting", "down"))
    assert [(r.address, r.reply.code) for r in out.refused] == [(BOB, 550)]
    assert s.protocol_error is None


def test_an_early_reply_completed_after_the_session_ended_changes_nothing():
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n4")
    assert s.timed_out() == [Close()]
    assert s.receive(b"51 4.3.0 later\r\n") == []
    assert s.protocol_error is None
    assert s.outcome.session_error.text() == (
        "421 4.4.2 timeout waiting for the server (RCPT)")


def test_the_start_of_an_early_reply_that_may_be_a_421_is_judged_whole():
    # "4" could begin a 421; it turned out a 451: early, and a protocol error
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n4")
    assert s.receive(b"51 4.3.0 later\r\n") == [Close(abort=True)]
    assert s.protocol_error.text() == (
        "421 4.5.0 reply from the server before the hub's command (RCPT) was sent: "
        "451 4.3.0 later")
    assert s.outcome.refused == ()


# --- the commands a reply asked for, dropped by an early one in the same read -------


@pytest.mark.parametrize("stray", [b"", b"250 2.1.0 stray\r\n", b"421 4.3.2 bye\r\n",
                                   b"25x malformed\r\n"])
def test_a_mail_again_dropped_by_an_early_reply_is_not_said_to_have_gone(stray):
    # the MAIL without AUTH= the 555 asked for is never written: an early
    # reply in the same read ends the session first
    s = greeted(b"250-mx.remote.test\r\n250 AUTH PLAIN\r\n")
    actions = s.receive(b"555 5.5.4 AUTH= not recognized\r\n" + stray)
    if not stray:
        assert sent(actions) == b"MAIL FROM:<alice@example.org>\r\n"
        assert s.auth_param_refused is not None
        return
    assert actions == [Close(abort=True)]
    assert s.auth_param_refused is None


@pytest.mark.parametrize("stray", [b"", b"250 2.1.0 stray\r\n", b"25x malformed\r\n"])
def test_a_pipelined_batch_again_dropped_by_an_early_reply_keeps_dsn(stray):
    s = greeted(EHLO_FULL, dsn=DSNRequest(ret="HDRS"))
    actions = s.receive(b"501 5.5.4 Bad RET\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n" + stray)
    if not stray:
        assert sent(actions).startswith(b"MAIL FROM:<alice@example.org> SIZE=100\r\n")
        assert s.dsn_params_refused is not None
        return
    assert actions == [Close(abort=True)]
    assert s.dsn_params_refused is None
    assert s.outcome.dsn_supported  # no MAIL went without the DSN parameters


@pytest.mark.parametrize("stray", [b"", b"250 2.1.5 stray\r\n", b"25x malformed\r\n"])
def test_a_rcpt_again_dropped_by_an_early_reply_is_no_dsn_dropped(stray):
    ehlo = b"250-mx.remote.test\r\n250 DSN\r\n"
    s = greeted(ehlo, recipients=[(BOB, RecipientDSN(notify=("SUCCESS",)))])
    assert b"NOTIFY=SUCCESS" in sent(s.receive(b"250 2.1.0 ok\r\n"))
    actions = s.receive(b"501 5.5.4 Bad NOTIFY parameter syntax\r\n" + stray)
    if not stray:
        assert sent(actions) == b"RCPT TO:<bob@remote.test>\r\n"
        assert s.receive(b"250 2.1.5 ok\r\n") == [Send(b"DATA\r\n")]
        assert s.receive(b"451 4.3.0 later\r\n")
        assert s.outcome.dsn_dropped == frozenset({BOB})
        return
    assert actions == [Close(abort=True)]
    assert s.outcome.dsn_dropped == frozenset()


@pytest.mark.parametrize("stray", [b"", b"250 2.1.5 stray\r\n", b"25x malformed\r\n",
                                   b"421 4.3.2 bye\r\n"])
def test_a_rcpt_without_its_orcpt_dropped_by_an_early_reply_is_not_withheld(stray):
    # without PIPELINING the RCPT goes once MAIL has its 250; a reply after
    # that one in the same read ends the session before the RCPT (which
    # leaves NOTIFY and an ORCPT too long to go out) is written: no line
    # may say it went so, and no notice duty is the hub's for it
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    s = greeted(EHLO_DSN_ONLY, smtputf8=True,
                recipients=[(BOB, RecipientDSN(("SUCCESS",), raw, raw))])
    actions = s.receive(b"250 2.1.0 ok\r\n" + stray)
    if not stray:
        assert sent(actions) == b"RCPT TO:<bob@remote.test>\r\n"
        assert s.orcpt_withheld == {BOB}
        return
    assert actions == [Close(abort=True)]
    assert s.orcpt_withheld == set()
    assert s.outcome.dsn_dropped == frozenset()


def test_a_rcpt_without_its_orcpt_that_went_stays_withheld_when_a_later_one_is_dropped():
    # bob's RCPT went without its ORCPT in the first transaction (the
    # server took one recipient); the second transaction's batch, asked
    # for by the reply to the first ".", is dropped by a stray reply in
    # the same read: bob's first RCPT still went so
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    dsn = RecipientDSN(("SUCCESS",), raw, raw)
    s = greeted(EHLO_DSN_NO_UTF8, smtputf8=True, recipients=[(BOB, dsn), (CAROL, dsn)])
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 too many recipients\r\n354 go\r\n")
    s.body_sent()
    assert s.orcpt_withheld == {BOB, CAROL}  # both RCPTs went without it
    assert s.receive(b"250 2.0.0 one\r\n250 2.0.0 stray\r\n") == [Close(abort=True)]
    assert s.orcpt_withheld == {BOB, CAROL}



# --- transactions whose MAIL went (the log's count) -----------------------------------


@pytest.mark.parametrize("stray", [b"", b"250 2.1.0 stray\r\n", b"421 4.3.2 bye\r\n"])
def test_a_later_transaction_whose_mail_an_early_reply_kept_back_is_not_counted_sent(stray):
    # the reply to the first "." asks for the second transaction's MAIL;
    # a reply after it in the same read ends the session before it goes
    s = greeted(EHLO_FULL, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n250 ok\r\n452 4.5.3 too many recipients\r\n354 go\r\n")
    s.body_sent()
    assert s.transactions_sent == 1
    actions = s.receive(b"250 2.0.0 one\r\n" + stray)
    assert s.transactions == 2  # the results count the transaction begun
    if not stray:
        assert sent(actions).startswith(b"MAIL FROM:<alice@example.org> SIZE=100\r\n")
        assert s.transactions_sent == 2
        return
    assert actions == [Close(abort=True)]
    assert s.transactions_sent == 1
    assert (s.outcome.recipients[0].address, s.outcome.recipients[0].reply.code) == (BOB, 250)


@pytest.mark.parametrize("stray", [b"", b"250 2.0.0 stray\r\n"])
def test_a_mail_after_rset_kept_back_by_an_early_reply_is_not_counted_sent(stray):
    s = greeted(EHLO_BASIC, recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(b"452 4.5.3 too many recipients\r\n")
    assert sent(s.receive(b"451 4.3.0 try again\r\n")) == b"RSET\r\n"
    assert s.transactions == 2 and s.transactions_sent == 1
    actions = s.receive(b"250 ok\r\n" + stray)
    assert s.transactions_sent == (1 if stray else 2)
    assert (actions == [Close(abort=True)]) if stray else sent(actions) == MAIL_PLAIN


def test_a_transaction_another_follows_gives_its_results_before_the_next_ones_commands():
    # the server takes one recipient a message (452 4.5.3 to the next):
    # bob's transaction ends with the 250 to its "."; its results come as
    # a TransactionDone ahead of carol's MAIL, so the adapter can record
    # them before that goes.  The session's last transaction has none:
    # its results are the outcome's
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 2.1.0 ok\r\n")
    s.receive(b"250 2.1.5 ok\r\n")
    assert sent(s.receive(b"452 4.5.3 too many recipients\r\n")) == b"DATA\r\n"
    s.receive(b"354 go\r\n")
    s.body_sent()
    actions = s.receive(b"250 2.0.0 queued\r\n")
    assert actions[0] == TransactionDone(
        (RecipientOutcome(BOB, Reply.of(250, "2.0.0", "queued")),))
    assert actions[1:] == [Send(b"MAIL FROM:<alice@example.org> SIZE=100\r\n")]
    s.receive(b"250 2.1.0 ok\r\n")
    s.receive(b"250 2.1.5 ok\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    actions = s.receive(b"250 2.0.0 queued too\r\n")
    assert actions == [Send(b"QUIT\r\n")]
    assert [(r.address, r.kind) for r in s.outcome.recipients] == [
        (BOB, "delivered"), (CAROL, "delivered")]


def test_a_mail_again_that_went_in_an_earlier_read_stays_sent_after_a_protocol_error():
    # the MAIL went again without ENVID and RET when ``receive`` returned
    # it; a malformed reply in a later read does not take that back
    s = greeted(EHLO_DSN_NO_PIPE, dsn=TAB_ID, recipients=TAB_RCPTS)
    assert sent(s.receive(b"501 5.5.4 Bad ENVID parameter syntax\r\n")) == MAIL_WITHOUT_AUTH
    assert s.receive(b"25x what\r\n") == [Close(abort=True)]
    assert s.dsn_params_refused is not None  # the agent logs "MAIL sent again"
    assert not s.outcome.dsn_supported


def test_a_rcpt_again_that_went_in_an_earlier_read_stays_dsn_dropped_after_a_protocol_error():
    ehlo = b"250-mx.remote.test\r\n250 DSN\r\n"
    s = greeted(ehlo, recipients=[(BOB, RecipientDSN(notify=("SUCCESS",)))])
    s.receive(b"250 2.1.0 ok\r\n")
    assert sent(s.receive(b"501 5.5.4 Bad NOTIFY parameter syntax\r\n")) == (
        b"RCPT TO:<bob@remote.test>\r\n")
    assert s.receive(b"25x what\r\n") == [Close(abort=True)]
    assert s.outcome.dsn_dropped == frozenset({BOB})


def test_a_mail_again_without_auth_that_went_in_an_earlier_read_stays_sent():
    # as for the DSN parameters: the MAIL went again without AUTH= when
    # ``receive`` returned it, and a later protocol error leaves that so
    s = greeted(b"250-mx.remote.test\r\n250 AUTH PLAIN\r\n")
    assert sent(s.receive(b"555 5.5.4 AUTH= not recognized\r\n")) == (
        b"MAIL FROM:<alice@example.org>\r\n")
    assert s.receive(b"25x what\r\n") == [Close(abort=True)]
    assert s.auth_param_refused is not None
