"""The SMTP service extensions clause by clause: RFC 1870 (SIZE), RFC 2920
(PIPELINING), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 2034 and RFC
3463 (enhanced status codes), on the server engine and on the relay's
client engine, where the other engine tests did not show them on their
own.  Each test names its clause."""

from __future__ import annotations

import re

import pytest
from test_smtp_client import ALICE, BOB, CAROL, EHLO_BASIC, sent, session
from test_smtp_protocol import Harness, take
from test_smtp_server import Driver

from txmailhub.smtp import replies
from txmailhub.smtp.client import SendBody
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.smtp.server import MessageComplete


def ehlo_keywords(d: Driver) -> list[str]:
    return [line[4:] for line in d.send("EHLO c.test\r\n")[1:]]


# --- RFC 1870, SIZE: the server ----------------------------------------------------


def test_ehlo_size_carries_the_fixed_maximum():
    # 3 (3): "a decimal number indicating the fixed maximum message size in
    # bytes that the server will accept" (ours is never 0: the setting is
    # a positive integer, so "no limit" is never advertised)
    assert "SIZE 4096" in ehlo_keywords(Driver(max_message_size=4096))


@pytest.mark.parametrize("param", ["SIZE", "SIZE=", "SIZE=-1", "SIZE=1k", "SIZE=+5",
                                   "SIZE=1" + "0" * 20])
def test_a_size_value_that_is_not_1_to_20_digits_is_a_syntax_error(param):
    # 3 (4): size-value ::= 1*20DIGIT; a MAIL whose parameter does not
    # parse is refused 501 (RFC 5321 4.2.2), with X.5.4 (RFC 3463 3.6:
    # invalid command arguments), and the transaction is not started
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send(f"MAIL FROM:<a@x.test> {param}\r\n") == [replies.PARAM_SYNTAX.text()]
    assert d.send("RCPT TO:<alice>\r\n") == [replies.MAIL_NEEDED.text()]


def test_twenty_digits_parse_and_a_value_over_the_maximum_is_552_5_3_4():
    # 6.1: a declared size over the fixed maximum is "552 message size
    # exceeds fixed maximium message size"; X.3.4 is "message too big for
    # system" (RFC 3463 3.4), not X.2.3 (one mailbox's limit)
    d = Driver(max_message_size=1000)
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<a@x.test> SIZE=" + "9" * 20 + "\r\n") == [
        "552 5.3.4 Message size exceeds fixed maximum message size"]
    assert d.codes("MAIL FROM:<a@x.test> SIZE=0\r\n") == ["250"]  # 0 is a size-value too


def test_a_message_over_its_declared_size_but_within_the_maximum_is_taken():
    # 6.3 leaves it to the server what to do with a message larger than
    # declared; only the fixed maximum is enforced here (the declared
    # size is the client's estimate, section 4)
    d = Driver(max_message_size=1000)
    d.send("EHLO c.test\r\n")
    assert d.codes("MAIL FROM:<a@x.test> SIZE=10\r\nRCPT TO:<alice>\r\nDATA\r\n") == [
        "250", "250", "354"]
    assert d.codes("x" * 200 + "\r\n.\r\n") == ["250"]


def test_the_declared_size_never_ends_the_data():
    # 6: "Servers MUST NOT use the SIZE parameter to determine end of
    # content in the DATA command": only the final dot ends it, before or
    # after the declared size
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.codes("MAIL FROM:<a@x.test> SIZE=5000\r\nRCPT TO:<alice>\r\nDATA\r\n"
                   "short\r\n.\r\n") == ["250", "250", "354", "250"]
    assert d.codes("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<alice>\r\nDATA\r\n"
                   "abcdefgh\r\nQUIT\r\n") == ["250", "250", "354"]  # QUIT is data
    assert d.codes(".\r\n") == ["250"]
    assert len([e for e in d.events if isinstance(e, MessageComplete)]) == 2
    assert b"QUIT" in b"".join(d.body)


def test_a_message_over_the_maximum_without_size_is_552_at_its_end():
    # 4: "Any attempt by a client to transfer a message which is larger
    # than this fixed upper limit will fail"; at the end of the data that
    # is RFC 5321 4.5.3.1.9's "552 Too much mail data"
    d = Driver(max_message_size=100)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    assert d.send("x" * 200 + "\r\n.\r\n") == [replies.SIZE_EXCEEDS_LIMIT.text()]
    assert not any(isinstance(e, MessageComplete) for e in d.events)


# --- RFC 1870, SIZE: the relay's client --------------------------------------------


def test_no_size_parameter_to_a_server_that_does_not_offer_size():
    # 4: the extension is supported when the EHLO reply "includes the EHLO
    # keyword value SIZE"; the extended MAIL is for such a server only
    # (SIZE= to another could be refused 555)
    s = session()
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-mx.remote.test\r\n250 8BITMIME\r\n")) == (
        b"MAIL FROM:<alice@example.org>\r\n")


@pytest.mark.parametrize("keyword", [b"SIZE", b"SIZE 0", b"SIZE unlimited"])
def test_a_size_keyword_without_a_positive_number_sets_no_limit(keyword):
    # 3 (3): "A parameter value of 0 (zero) indicates that no fixed maximum
    # message size is in force.  If the parameter is omitted no information
    # is conveyed"; a value that is no number says nothing either
    s = session(size=10**9)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(b"250-mx.remote.test\r\n250 " + keyword + b"\r\n")) == (
        b"MAIL FROM:<alice@example.org> SIZE=1000000000\r\n")
    assert s.outcome is None


def test_a_message_over_the_servers_size_is_not_sent_and_bounces_5_3_4():
    # 4: a message "larger than this limit will be rejected with a
    # permanent failure (552) reply code": the client says so itself,
    # without a MAIL or the data (X.3.4, RFC 3463 3.4)
    s = session(size=1001)
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"QUIT\r\n"
    (r,) = s.outcome.recipients
    assert r.kind == "permanent" and (r.reply.code, r.reply.status) == (552, "5.3.4")


@pytest.mark.parametrize("refusal,kind", [
    (b"452 4.3.1 insufficient system storage", "transient"),
    (b"552 5.3.4 message size exceeds fixed maximum message size", "permanent"),
])
def test_the_reply_to_the_extended_mail_decides_retry_or_bounce(refusal, kind):
    # 6.2 (1): after "452 insufficient system storage" the client sends
    # RSET or QUIT and repeats the attempt later; (2): after 552 it
    # declares the message undeliverable and notifies the sender
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)).endswith(b" SIZE=100\r\n")
    assert sent(s.receive(refusal + b"\r\n")) == b"QUIT\r\n"
    out = s.outcome
    if kind == "transient":
        assert out.session_error.code == 452  # the whole message waits
    else:
        assert [r.kind for r in out.recipients] == ["permanent", "permanent"]
        assert {r.reply.code for r in out.recipients} == {552}


@pytest.mark.parametrize("refusal", [b"552 5.3.4 message too big for this system",
                                     b"552 5.2.3 message too big for this mailbox"])
def test_a_552_size_refusal_at_rcpt_is_not_requeued(refusal):
    # 6.4: "If a 552 code is returned, the client may not requeue the
    # message for later delivery to the same recipient".  RFC 5321
    # 4.5.3.1.10 has a 552 to RCPT read as 452 only "in this case", the old
    # "too many recipients"; X.3.4 and X.2.3 say the refusal is of the
    # message's size (RFC 3463 3.4, 3.3: useful only as permanent errors)
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(EHLO_BASIC)
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(refusal + b"\r\n")
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 ok\r\n")
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[CAROL].kind == "permanent"
    assert results[CAROL].reply == Reply.of(552, refusal[4:9].decode(),
                                            refusal[10:].decode())  # the server's own words
    assert not isinstance(results[CAROL].reply, LocalReply)


@pytest.mark.parametrize("refusal,kind,status", [
    # the code read without ENHANCEDSTATUSCODES advertised: a server that
    # writes one says what it means all the same
    (b"552 5.3.4 message too big\r\n", "permanent", "5.3.4"),
    # every line of a multi-line reply with the code (RFC 2034 4)
    (b"552-5.3.4 message too big\r\n552 5.3.4 for this system\r\n", "permanent", "5.3.4"),
    # no code: nothing says it is the size -- RFC 5321 4.5.3.1.10's
    # temporary "too many recipients", a new transaction
    (b"552 message too big\r\n", "transient", "4.5.3"),
    # another code's 552 keeps the temporary reading, in its own class
    (b"552 5.2.2 mailbox full\r\n", "transient", "4.2.2"),
])
def test_a_552_to_rcpt_is_judged_by_its_code_alone(refusal, kind, status):
    s = session(recipients=[(BOB, None), (CAROL, None)])
    s.receive(b"220 hi\r\n")
    s.receive(b"250-mx.remote.test\r\n250 SIZE 1000\r\n")  # no ENHANCEDSTATUSCODES
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    s.receive(refusal)
    s.receive(b"354 go\r\n")
    s.body_sent()
    s.receive(b"250 ok\r\n")
    if s.outcome is None:  # "too many recipients": carol in a new transaction
        s.receive(b"250 ok\r\n")
        s.receive(refusal)
    results = {r.address: r for r in s.outcome.recipients}
    assert results[BOB].kind == "delivered"
    assert results[CAROL].kind == kind and results[CAROL].reply.status == status
    if kind == "permanent":
        assert results[CAROL].reply.code == 552
        assert not any("5.3.4" in line for line in results[CAROL].reply.lines)


# --- RFC 2920, PIPELINING: the server ----------------------------------------------


def test_a_failed_command_does_not_lose_the_rest_of_the_group():
    # 3.2 (9): "MUST NOT flush or otherwise lose the contents of the TCP
    # input buffer under any circumstances whatsoever"; 1 (2) names
    # flushing it "when an SMTP command fails" as the fault
    d = Driver()
    assert d.codes("EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=x\r\nMAIL FROM:<a@x.test>\r\n"
                   "RCPT TO:<nobody>\r\nRCPT TO:<alice>\r\nDATA\r\n") == [
        "250", "501", "250", "550", "250", "354"]


def test_data_after_a_failed_last_rcpt_is_judged_on_every_rcpt():
    # 1 (3): a server must not "refuse to accept a DATA command if the last
    # RCPT TO command fails, paying no attention to the success or failure
    # of prior RCPT TO command results", nor accept DATA when all failed
    d = Driver()
    assert d.codes("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<alice>\r\n"
                   "RCPT TO:<nobody>\r\nDATA\r\n") == ["250", "250", "250", "550", "354"]
    d.send("x\r\n.\r\n")
    assert d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<nobody>\r\nDATA\r\n") == [
        "250 2.1.0 <a@x.test>... Sender OK", "550 5.1.1 No such user here",
        replies.DATA_NO_RECIPIENTS.text()]


@pytest.mark.parametrize("pipelined", [True, False])
def test_the_max_errors_th_refusal_ends_the_session_pipelined_or_not(pipelined):
    # docs/smtp.rst: the max_errors-th refused command gets its own reply,
    # then 421 4.7.0, and nothing sent behind it is answered (a batch is
    # no way round the limit, nor does it cost the client the reply to
    # the command that reached it)
    d = Driver(max_errors=4)
    d.send("EHLO c.test\r\n")
    bad = "RCPT TO:<x@y.test>\r\n"
    if pipelined:
        out = d.send(bad * 6 + "NOOP\r\n")
    else:
        out = [line for _ in range(4) for line in d.send(bad)]
        assert d.send("NOOP\r\n") == []
    bye = replies.closing(replies.TOO_MANY_ERRORS, "mx.example.org").text()
    assert out == [replies.MAIL_NEEDED.text()] * 4 + [bye]
    assert d.engine.closed


def test_replies_are_in_order_and_say_what_they_answer():
    # 3.2 (10): "SHOULD issue response text that indicates, either
    # implicitly or explicitly, what command the response matches"
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\n") == [
        "250 2.1.0 <a@x.test>... Sender OK",
        "250 2.1.5 <alice@example.org>... Recipient OK",
        "250 2.1.5 <bob@example.org>... Recipient OK"]


# --- RFC 2920, PIPELINING: the relay's client --------------------------------------


def test_no_pipelining_to_a_server_that_does_not_offer_it():
    # 3.1: the client "can then check for this declaration and use
    # pipelining only when the server declares itself capable"
    s = session(recipients=[(BOB, None), (ALICE, None)])
    s.receive(b"220 hi\r\n")
    assert sent(s.receive(EHLO_BASIC)) == b"MAIL FROM:<alice@example.org> SIZE=100\r\n"
    assert sent(s.receive(b"250 2.1.0 ok\r\n")) == b"RCPT TO:<bob@remote.test>\r\n"


def test_the_pipelined_group_ends_with_data_and_every_status_is_read():
    # 3.1: DATA "can only appear as the last command in a group", and the
    # client "MUST check ALL statuses associated with each command in a
    # group": a 354 after every RCPT failed still gets its end of data
    s = session(recipients=[(BOB, None)])
    s.receive(b"220 hi\r\n")
    group = sent(s.receive(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"))
    assert group.endswith(b"RCPT TO:<bob@remote.test>\r\nDATA\r\n")
    assert group.count(b"\r\n") == 3
    assert sent(s.receive(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")) == b".\r\nQUIT\r\n"
    assert s.outcome.recipients[0].kind == "permanent"


# --- RFC 6152, 8BITMIME -------------------------------------------------------------


@pytest.mark.parametrize("param,verdict", [
    ("BODY=8BITMIME", "250"), ("BODY=8bitmime", "250"), ("BODY=7BIT", "250"),
    ("BODY=7bit", "250"), ("BODY=BINARYMIME", "555"), ("BODY=8BIT", "501"),
    ("BODY", "501"),
])
def test_body_values(param, verdict):
    # 2 (4): body-value ::= "7BIT" / "8BITMIME" (keywords: any case, RFC
    # 5321 2.4); BINARYMIME is RFC 3030's, not offered here: 555 (RFC 5321
    # 4.1.1.11, a parameter not recognized)
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.codes(f"MAIL FROM:<a@x.test> {param}\r\n") == [verdict]


def test_every_octet_of_8bit_data_is_kept():
    # 3: the server "shall preserve all bits in each octet passed using the
    # DATA command"
    d = Driver()
    d.send("EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<alice>\r\nDATA\r\n")
    body = ("Subject: caf\u00e9\r\n\r\n\u00fcber \u20ac\r\n".encode()
            + bytes(range(128, 256)) + b"\r\n")
    d.engine.receive_data(body + b".\r\n")
    assert d.pump() == [replies.accepted("ID1").text()]
    # stored with LF line ends (the spool's form); every other octet as sent
    assert b"".join(d.body).endswith(body.replace(b"\r\n", b"\n"))
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert done.envelope.body_8bit


@pytest.mark.parametrize("body", ["", " BODY=7BIT", " body=7bit"])
def test_8bit_data_without_body_8bitmime_is_taken_and_kept(body):
    # RFC 5321 2.4 lets a server clear the high bit of such data or refuse
    # it; docs/smtp.rst ("8BITMIME"): the hub does neither, after HELO or
    # EHLO, whatever BODY= said.
    for greeting in ("EHLO c.test", "HELO c.test"):
        d = Driver()
        d.send(f"{greeting}\r\nMAIL FROM:<a@x.test>{body}\r\nRCPT TO:<alice>\r\nDATA\r\n")
        data = "Subject: caf\u00e9\r\n\r\n".encode() + bytes(range(128, 256)) + b"\r\n"
        d.engine.receive_data(data + b".\r\n")
        assert d.pump() == [replies.accepted("ID1").text()]
        assert b"".join(d.body).endswith(data.replace(b"\r\n", b"\n"))


@pytest.mark.parametrize("ehlo,convert", [
    (b"250-mx\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", False),
    (b"250-mx\r\n250 SIZE 1000\r\n", True),
])
def test_8bit_data_goes_raw_only_to_an_8bitmime_server(ehlo, convert):
    # 3: a client must not send 8-bit data to a server without 8BITMIME;
    # it converts the message to 7 bits (or returns it): here the 7-bit
    # copy, and no BODY= that server would not know
    s = session(eight_bit=True)
    s.receive(b"220 hi\r\n")
    mail = sent(s.receive(ehlo))
    assert (b"BODY=8BITMIME" in mail) is not convert
    s.receive(b"250 ok\r\n")
    s.receive(b"250 ok\r\n")
    assert s.receive(b"354 go\r\n") == [SendBody(convert_7bit=convert)]


# --- RFC 6531, SMTPUTF8: the server ------------------------------------------------


def test_smtputf8_comes_with_8bitmime():
    # 3.2: a server offering SMTPUTF8 "MUST provide support for, and
    # announce, the 8BITMIME extension"
    words = ehlo_keywords(Driver())
    assert "SMTPUTF8" in words and "8BITMIME" in words


def test_utf8_addresses_need_the_smtputf8_parameter():
    # 3.4 / 3.5: the SMTPUTF8 parameter (no value) on MAIL; without it a
    # UTF-8 recipient is 553 (mailbox name not allowed) and a UTF-8 sender
    # 550, both with X.6.7 "non-ASCII addresses not permitted for that
    # sender/recipient" (RFC 5248's registration)
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<j\u00f6rg@x.test>\r\n") == [
        replies.SMTPUTF8_NOT_DECLARED_SENDER.text()]
    assert d.codes("MAIL FROM:<a@x.test>\r\n") == ["250"]
    assert d.send("RCPT TO:<j\u00f6rg@example.org>\r\n") == [replies.SMTPUTF8_NOT_DECLARED.text()]
    assert replies.SMTPUTF8_NOT_DECLARED.code == 553
    assert replies.SMTPUTF8_NOT_DECLARED.status == "5.6.7"
    assert replies.SMTPUTF8_NOT_DECLARED_SENDER.code == 550
    assert d.codes("RSET\r\nMAIL FROM:<a@x.test> SMTPUTF8=yes\r\n") == ["250", "501"]
    assert d.codes("MAIL FROM:<j\u00f6rg@x.test> smtputf8\r\nRCPT TO:<j\u00f6rg@example.org>\r\n"
                   ) == ["250", "250"]


def test_a_bare_name_at_an_internationalized_primary_domain_needs_no_smtputf8():
    # RFC 5321 4.5.1: RCPT TO:<Postmaster> "MUST" be taken; a bare name
    # is the hub's leniency, qualified with the primary domain, which the
    # client did not write.  Qualified with its U-labels, a client without
    # SMTPUTF8 was told its address needed it (553 5.6.7) for the ASCII
    # it sent; it is the A-label form of the same domain there
    from txmailhub.address import Address
    from txmailhub.testing import StaticRouter

    router = StaticRouter({"alice": None, "postmaster": None}, domains=("b\u00fccher.test",))
    d = Driver(router=router, primary_domain="b\u00fccher.test")
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<s@x.test>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<alice>\r\n") == [
        "250 2.1.0 <s@x.test>... Sender OK",
        "250 2.1.5 <Postmaster@xn--bcher-kva.test>... Recipient OK",
        "250 2.1.5 <alice@xn--bcher-kva.test>... Recipient OK"]
    assert d.send("RSET\r\nMAIL FROM:<alice>\r\n")[-1] == (
        "250 2.1.0 <alice@xn--bcher-kva.test>... Sender OK")
    assert d.codes("RCPT TO:<\"alice\">\r\nDATA\r\nx\r\n.\r\n") == ["250", "354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert [r.key for r in done.envelope.recipients] == ["alice@b\u00fccher.test"]
    assert done.envelope.sender == Address("alice", "xn--bcher-kva.test")
    # with SMTPUTF8 the name is qualified as before, with the U-labels
    d.send("MAIL FROM:<s@x.test> SMTPUTF8\r\n")
    assert d.send("RCPT TO:<alice>\r\n") == [
        "250 2.1.5 <alice@xn--bcher-kva.test>... Recipient OK"]


def test_replies_to_mail_and_rcpt_carry_no_utf8():
    # 3.7.4: UTF-8 in a reply only in the mailbox of a 251 or 551 (3.7.4.1)
    # or of a VRFY or EXPN given SMTPUTF8 (3.7.4.2); the server "MUST NOT
    # include non-ASCII characters in replies except" there.  The 250s to
    # MAIL and RCPT echoed a UTF-8 address as it came.
    d = Driver()
    d.send("EHLO c.test\r\n")
    out = d.send("MAIL FROM:<j\u00f6rg@b\u00fccher.test> SMTPUTF8\r\n"
                 "RCPT TO:<j\u00f6rg>\r\nRCPT TO:<alice>\r\n")
    assert out == [replies.SENDER_OK.text(), replies.RECIPIENT_OK.text(),
                   "250 2.1.5 <alice@example.org>... Recipient OK"]
    # an ASCII local part at an internationalized domain: echoed with the
    # domain's A-labels, the ASCII form of the same address
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<a@b\u00fccher.test> SMTPUTF8\r\n") == [
        "250 2.1.0 <a@xn--bcher-kva.test>... Sender OK"]
    assert d.codes("RCPT TO:<j\u00f6rg@example.org>\r\nDATA\r\nx\r\n.\r\n") == [
        "250", "354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert [str(r) for r in done.envelope.recipients] == ["j\u00f6rg@example.org"]


# --- RFC 2034 and RFC 3463, enhanced status codes ----------------------------------


def _catalog() -> dict[str, Reply]:
    return {name: value for name, value in vars(replies).items() if isinstance(value, Reply)}


def test_every_final_reply_of_the_catalog_has_a_code_of_its_class():
    # RFC 2034 4: the codes "must appear in all 2xx, 4xx, and 5xx response
    # lines" ("3xx responses are NOT included": the 354, the 334s; nor any
    # reply to HELO/EHLO), and "must agree with the primary response
    # code, that is, a 2xx response must incorporate a 2.X.X code" (RFC
    # 3463 2: 2 success, 4 persistent transient, 5 permanent)
    no_code = {"DATA_START", "AUTH_CONTINUE", "AUTH_USERNAME", "AUTH_PASSWORD",
               "HELO_SYNTAX", "HELO_INVALID_UTF8"}
    for name, reply in _catalog().items():
        if name in no_code:
            assert reply.status is None, name
            continue
        assert reply.status is not None, name
        assert reply.status[0] == str(reply.code)[0], name
        _, subject, detail = reply.status.split(".")
        assert 0 <= int(subject) <= 7 and 0 <= int(detail) <= 999, name  # RFC 3463 2


def test_no_enhanced_code_in_the_greeting_or_the_replies_to_helo_and_ehlo():
    # RFC 2034 3 (4): "the text part of all 2xx, 4xx, and 5xx SMTP
    # responses other than the initial greeting and any response to HELO
    # or EHLO are prefaced with a status code" (section 4 again: "These
    # codes must appear in all ... other than initial greeting and any
    # response to HELO or EHLO")
    d = Driver()
    assert d.banner.startswith(b"220 mx.example.org ")
    for line in d.send("HELO c.test\r\nEHLO\r\nEHLO c.test\r\n"):
        assert not re.match(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ", line), line


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO"])
@pytest.mark.parametrize("greeted", [False, True])
def test_a_helo_or_ehlo_name_that_is_no_utf8_is_501_without_an_enhanced_code(
        verb, greeted):
    # the 501 to a name that is no UTF-8 answers HELO or EHLO too: no
    # enhanced code, as docs/smtp.rst says of every 501 to them (its
    # 501 5.5.2 came from the "Invalid UTF-8" reply of other commands);
    # nothing changes: no name recorded, the transaction kept
    d = Driver()
    if greeted:
        assert d.codes("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n") == ["250", "250"]
    assert d.send(verb + b" h\xffst.test\r\n") == [replies.HELO_INVALID_UTF8.text()]
    assert replies.HELO_INVALID_UTF8.text() == "501 Invalid UTF-8 in the HELO or EHLO name"
    assert d.session.helo == ("c.test" if greeted else "") and d.engine.errors == 1
    assert d.codes("RCPT TO:<alice>\r\n") == ["250" if greeted else "503"]


@pytest.mark.parametrize("name,situation", [
    ("UNKNOWN_USER", "5.1.1"),  # bad destination mailbox address
    ("SYNTAX_RECIPIENT", "5.1.3"),  # bad destination mailbox address syntax
    ("SYNTAX_ADDRESS", "5.1.7"),  # bad sender's mailbox address syntax
    ("RELAY_DENIED", "5.7.1"),  # delivery not authorized
    ("MAILBOX_FULL", "4.2.2"),  # mailbox full
    ("MESSAGE_OVER_QUOTA", "5.2.3"),  # message length exceeds administrative limit
    ("SIZE_EXCEEDS_LIMIT", "5.3.4"),  # message too big for system
    ("STORAGE_FULL", "4.3.1"),  # mail system full
    ("TOO_MANY_CONNECTIONS", "4.3.2"),  # system not accepting network messages
    ("TOO_MANY_RECIPIENTS", "4.5.3"),  # too many recipients
    ("UNKNOWN_COMMAND", "5.5.2"),  # syntax error: "the command is unrecognized"
    ("COMMAND_NOT_IMPLEMENTED", "5.5.1"),  # invalid command: "unsupported"
    ("SYNTAX_ARGUMENT", "5.5.4"),  # invalid command arguments
    ("PARAM_SYNTAX", "5.5.4"),
    ("BAD_SEQUENCE", "5.5.1"),
    ("TIMEOUT", "4.4.2"),  # bad connection
    ("TOO_MANY_HOPS", "5.4.6"),  # routing loop detected
    ("LOCAL_ERROR", "4.3.0"),  # other or undefined mail system status
])
def test_the_enhanced_code_names_the_situation(name, situation):
    # RFC 3463 3.1-3.8: the subject and detail of each situation's code
    assert _catalog()[name].status == situation


@pytest.mark.parametrize("line,reply", [
    # 3.6 X.5.2: a command "which could not be interpreted, either because
    # the syntax was wrong or the command is unrecognized": a verb the hub
    # does not have, in any spelling, and a line with no verb at all
    (b"FOO\r\n", b"500 5.5.2 Command unrecognized\r\n"),
    (b"XCLIENT NAME=x\r\n", b"500 5.5.2 Command unrecognized\r\n"),
    (b"\r\n", b"500 5.5.2 Command unrecognized\r\n"),
    (b"N\xffOP\r\n", b"500 5.5.2 Command unrecognized\r\n"),
    # X.5.1: "out of sequence or unsupported", a command the hub knows
    (b"TURN\r\n", b"502 5.5.1 TURN is not supported\r\n"),
    (b"DATA\r\n", b"503 5.5.1 Need MAIL command first\r\n"),
])
def test_an_unrecognized_command_is_x_5_2_and_an_unsupported_one_x_5_1(line, reply):
    d = Driver()
    d.send("EHLO c.test\r\n")
    d.engine.receive_data(line)
    assert d.engine.next_event() is None  # the engine answers on its own
    assert d.engine.data_to_send() == reply


def test_shutting_down_is_421_4_3_2():
    # RFC 3463 3.4: X.3.2 "system not accepting network messages"
    reply = replies.shutting_down("mx.example.org")
    assert (reply.code, reply.status) == (421, "4.3.2")


def test_the_trace_field_names_the_smtputf8_transaction_and_the_session_protocol():
    # RFC 6531 3.7.3: an SMTPUTF8 transaction is stamped "with UTF8SMTP"
    # (UTF8SMTPS, A, SA as RFC 3848's); after HELO the session was plain
    # SMTP, and a client that sent SMTPUTF8 anyway is stamped "with SMTP"
    # (docs/smtp.rst, "Choices the extension RFCs leave open")
    for hello, stamp in (("EHLO", b"with UTF8SMTP\n"), ("HELO", b"with SMTP\n")):
        h = Harness()
        p, t = h.connect()
        take(t)
        p.dataReceived(f"{hello} c.test\r\nMAIL FROM:<j\u00f6e@x.test> SMTPUTF8\r\n"
                       "RCPT TO:<alice>\r\nDATA\r\nSubject: \u00fc\r\n\r\nx\r\n.\r\n".encode())
        assert take(t)[-1].startswith("250 2.0.0 ")
        (stored,) = h.store.messages(ALICE)
        assert stamp in stored


def test_every_line_of_a_multiline_reply_carries_the_code():
    # RFC 2034 4: "When responses are continued across multiple lines the
    # same status code must appear at the beginning of the text in each
    # line of the response"
    d = Driver()
    d.send("EHLO c.test\r\n")
    for command, code in (("HELP", "214 2.0.0"), ("EXPN list", "250 2.1.5")):
        lines = d.send(command + "\r\n")
        assert len(lines) > 1
        assert all(line[:3] + " " + line[4:9] == code for line in lines), lines


def test_a_client_that_said_helo_gets_the_codes_too():
    # RFC 2034 4: "Servers supporting this extension must attach enhanced
    # status codes to their responses regardless of whether or not EHLO is
    # employed by the client" (5: there is no negotiation)
    d = Driver()
    d.send("HELO c.test\r\n")
    assert d.send("MAIL FROM:<a@x.test>\r\nRCPT TO:<nobody>\r\nNOOP\r\n") == [
        "250 2.1.0 <a@x.test>... Sender OK", replies.UNKNOWN_USER.text(), replies.OK.text()]
