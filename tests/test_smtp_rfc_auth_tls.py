"""RFC 4954 (AUTH), RFC 4616 (SASL PLAIN), RFC 3207 (STARTTLS), RFC 6409
(submission) and RFC 8314 (implicit TLS) clause by clause: the server-side
requirements the other engine tests did not show on their own.  Each test
names its clause; docs/smtp.rst ("Conformance: AUTH, TLS and submission")
lists them with the choices the RFCs leave open."""

from __future__ import annotations

import base64

import pytest
from conftest import make_certificate
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_smtp_protocol import Harness, take
from test_smtp_server import ALICE, Driver, b64, loopback, tx
from tls_loopback import StartTLSSocket, TLSClient
from twisted.internet.address import IPv4Address

from txmailhub.address import Address
from txmailhub.service import tls_options
from txmailhub.smtp import replies
from txmailhub.smtp.msa import FIELD_LIMIT, HeaderDomains
from txmailhub.smtp.protocol import SMTPFactory
from txmailhub.smtp.reply import Reply
from txmailhub.smtp.server import AuthMalformed, AuthRequest, MessageComplete, Session, State
from txmailhub.testing import QueueSpy

PLAIN_OK = b64("\0alice\0secret")
PLAIN_BAD = b64("\0alice\0wrong")


def authed(**config) -> Driver:
    d = Driver(session=loopback(), **config)
    assert d.codes(f"EHLO c.test\r\nAUTH PLAIN {PLAIN_OK}\r\n") == ["250", "235"]
    return d


def submission(tls: bool = False) -> Driver:
    return Driver(session=Session(client_host="192.0.2.9", submission=True, tls=tls),
                  queue=QueueSpy())


# --- RFC 4954 4: the AUTH command -----------------------------------------------------


def test_an_initial_response_of_one_equals_sign_is_an_empty_response():
    # 4: the initial response "=" is "present, but contains no data", not
    # a 334 prompt: an empty PLAIN message (RFC 4616 2 has two NULs and a
    # user and a password), an empty LOGIN user name.  Neither is a message
    # of its mechanism: 501 5.5.2 at once, as a response that cannot be
    # decoded (no password was tried: no delay, no failed login)
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send("AUTH PLAIN =\r\n") == [replies.AUTH_MALFORMED.text()]
    assert d.send("AUTH LOGIN =\r\n") == [replies.AUTH_MALFORMED.text()]
    assert not [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert (d.engine.auth_failures, d.engine.errors) == (0, 2)
    assert d.engine.state is State.READY


@pytest.mark.parametrize("exchange", ["AUTH PLAIN\r\n", "AUTH LOGIN\r\n",
                                      f"AUTH LOGIN\r\n{b64('alice')}\r\n",
                                      f"AUTH LOGIN {b64('alice')}\r\n"])
def test_an_equals_sign_after_a_334_is_no_base64(exchange):
    # 8: "initial-response = base64 / "="", but a line after a 334 is
    # "[base64]": "=" stands for an empty response on the AUTH command line
    # only, and after a challenge an empty response is an empty line.  A
    # lone "=" there is no base64 (4: 501 and 5.5.2), no empty user name
    # or password; an exchange that ended on no SASL response (logged,
    # counted as the client's error), and no password was checked
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(exchange)[-1].startswith("334 ")
    assert d.send("=\r\n") == [replies.AUTH_INVALID_BASE64.text()]
    assert [ev for ev in d.events if isinstance(ev, AuthMalformed)] == [
        AuthMalformed(exchange.split()[1])]
    assert not [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert (d.engine.auth_failures, d.engine.errors) == (0, 1)
    assert d.engine.state is State.READY


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_star_cancels_only_in_answer_to_a_334(mechanism):
    # 4: "If the client wishes to cancel the authentication exchange, it
    # issues a line with a single "*"" in answer to a challenge (8: the
    # cancel-response follows a CRLF of the exchange).  "AUTH PLAIN *" has
    # an initial response, "base64 / "="", that is neither: no base64 (4:
    # 501 and 5.5.2), logged as a malformed response, which a cancel is not
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(f"AUTH {mechanism} *\r\n") == [replies.AUTH_INVALID_BASE64.text()]
    assert [ev for ev in d.events if isinstance(ev, AuthMalformed)] == [AuthMalformed(mechanism)]
    assert d.send(f"AUTH {mechanism}\r\n")[0].startswith("334 ")
    assert d.send("*\r\n") == [replies.AUTH_CANCELLED.text()]
    assert len([ev for ev in d.events if isinstance(ev, AuthMalformed)]) == 1
    assert not [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert (d.engine.auth_failures, d.engine.errors) == (0, 2)
    assert d.codes(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235"]


@pytest.mark.parametrize("mechanism, before", [
    ("PLAIN", []), ("LOGIN", []), ("LOGIN", [b64("alice")])])
def test_an_empty_line_as_a_response_is_501_5_5_2_at_once(mechanism, before):
    # An empty continuation line is the base64 of nothing: no step of PLAIN
    # or LOGIN takes nothing (PLAIN's message, LOGIN's user name and
    # password), so the exchange ends with the 501 5.5.2 of a response
    # that cannot be read -- not a 535 after the failure delay, counted as
    # a wrong password (none was tried).  It counts as an error of the
    # client's (max_errors), as a response that is no base64 does.
    d = Driver(session=loopback())
    d.send(f"EHLO c.test\r\nAUTH {mechanism}\r\n")
    for line in before:  # LOGIN's user name: the empty line is the password
        assert d.codes(line + "\r\n") == ["334"]
    assert d.send("\r\n") == [replies.AUTH_MALFORMED.text()]
    assert not [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert (d.engine.auth_failures, d.engine.errors) == (0, 1)
    # the session goes on: a good login after it
    assert d.codes(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235"]


@pytest.mark.parametrize("message", ["alice\0secret", "\0alice\0", "\0\0secret",
                                     "a\0alice\0secret\0", "alice"])
def test_a_plain_message_that_is_none_is_501_5_5_2(message):
    # RFC 4616 2: message = [authzid] NUL authcid NUL passwd, authcid and
    # passwd 1*SAFE.  Anything else cannot be read as a login (POP3 answers
    # it "Malformed PLAIN response" the same way); a message that is one
    # but fails (another user's authzid, octets that are not UTF-8) stays
    # a failed login, 535
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(f"AUTH PLAIN {b64(message)}\r\n") == [replies.AUTH_MALFORMED.text()]
    assert d.engine.auth_failures == 0
    assert d.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'x')}\r\n") == [
        replies.AUTH_FAILED.text()]
    assert d.engine.auth_failures == 1


@pytest.mark.parametrize("response", ["=AAA", "AAA=BBB", "QUJD!", "QUJ", "QQ==QQ==", "QU JD",
                                      " " + PLAIN_OK, PLAIN_OK + " ", PLAIN_OK + "\t"])
def test_a_response_that_is_no_base64_is_501_5_5_2(response):
    # 4: "MUST reject (and not ignore) any character not explicitly allowed
    # by the BASE64 alphabet, and MUST reject any sequence ... that contains
    # the pad character ('=') anywhere other than the end"; 501 and 5.5.2.
    # White space around a continuation line is such a character too: the
    # line is no command (RFC 5321 4.1.1's tolerance of trailing white space
    # is for the AUTH command line itself).
    d = Driver(session=loopback())
    assert d.codes("EHLO c.test\r\nAUTH PLAIN\r\n") == ["250", "334"]
    assert d.send(response + "\r\n") == [replies.AUTH_INVALID_BASE64.text()]
    assert d.engine.state is State.READY
    assert not any(isinstance(ev, AuthRequest) for ev in d.events)


def test_trailing_white_space_on_the_auth_command_line_is_tolerated():
    # the AUTH line is a command: RFC 5321 4.1.1 "SMTP receivers SHOULD
    # tolerate trailing white space before the terminating <CRLF>"
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(f"AUTH PLAIN {PLAIN_OK} \t\r\n") == [replies.AUTH_SUCCEEDED.text()]


def test_a_cancelled_exchange_is_501_and_the_session_goes_on():
    # 4: "*" -- the server "MUST reject the AUTH command by sending a 501";
    # the client MAY then try again (4: "present different credentials by
    # issuing another AUTH")
    d = Driver(session=loopback())
    assert d.codes("EHLO c.test\r\nAUTH LOGIN\r\n") == ["250", "334"]
    assert d.send("*\r\n") == [replies.AUTH_CANCELLED.text()]
    assert d.codes(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235"]


def test_another_auth_after_a_failed_one_is_allowed():
    # 4: "If an AUTH command fails, the client MAY ... present different
    # credentials by issuing another AUTH"
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.codes(f"AUTH PLAIN {PLAIN_BAD}\r\nAUTH PLAIN {PLAIN_OK}\r\n") == ["535", "235"]
    assert d.session.authenticated_as == ALICE


def test_auth_after_a_successful_auth_is_503_in_any_form():
    # 4: "a server MUST reject any further AUTH commands with a 503 reply",
    # an unknown mechanism or a bare AUTH too: no exchange starts
    d = authed()
    for line in ("AUTH PLAIN", "AUTH LOGIN", "AUTH CRAM-MD5", f"AUTH PLAIN {PLAIN_OK}"):
        assert d.send(line + "\r\n") == [replies.AUTH_ALREADY.text()], line
    assert d.engine.state is State.READY


@pytest.mark.parametrize("after", ["MAIL FROM:<s@x.test>", "RCPT TO:<bob>"])
def test_auth_in_a_transaction_is_503_and_keeps_the_transaction(after):
    # 4: "An AUTH command issued during a mail transaction MUST be rejected
    # with a 503 reply"; the transaction goes on (nothing else was wrong)
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\nMAIL FROM:<s@x.test>\r\n")
    if after.startswith("RCPT"):
        d.send(after + "\r\n")
    assert d.send(f"AUTH PLAIN {PLAIN_OK}\r\n") == [replies.AUTH_IN_TRANSACTION.text()]
    assert d.session.authenticated_as is None
    assert d.codes("RCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n") == ["250", "354", "250"]


def test_a_continuation_line_of_12288_octets_is_read():
    # 4: servers "MUST be able to handle the maximum encoded size of ...
    # responses generated by their supported authentication mechanisms ...
    # (... 12288 octets is considered to be a sufficient line length
    # limit)"; over the buffer: "500 ... 5.5.6"
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\nAUTH PLAIN\r\n")
    password = "x" * (12286 // 4 * 3 - len("\0alice\0"))
    line = b64("\0alice\0" + password)
    assert len(line) + 2 <= 12288
    assert d.send(line + "\r\n") == [replies.AUTH_FAILED.text()]
    (request,) = [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert request.password == password
    d.send("AUTH PLAIN\r\n")
    assert d.send("A" * 12288 + "\r\n") == [replies.AUTH_LINE_TOO_LONG.text()]


def test_an_empty_prompt_is_334_and_a_space():
    # 4: "a server challenge that contains no data is defined as a 334 reply
    # with no text part ... the complete response line is "334 "" and the
    # challenges carry nothing but base64 (LOGIN's two prompts)
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send("AUTH PLAIN\r\n") == ["334 "]
    d.send("*\r\n")
    assert d.send("AUTH LOGIN\r\n") == ["334 " + b64("Username:")]
    assert d.send(b64("alice") + "\r\n") == ["334 " + b64("Password:")]


def test_a_pipelined_plain_auth_with_an_initial_response_is_answered_in_order():
    # 4: AUTH may be followed by pipelined commands when it carries an
    # initial response of a mechanism that completes in one round trip
    # (PLAIN); the commands after it are taken under the new login
    d = Driver(session=Session(client_host="127.0.0.1", loopback=True, submission=True),
               queue=QueueSpy())
    out = d.codes(f"EHLO c.test\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice>\r\n"
                  "RCPT TO:<x@remote.test>\r\n")
    assert out == ["250", "235", "250", "250"]


def test_non_utf8_credentials_fail_the_login_and_are_no_base64_error():
    # RFC 4616 2: the PLAIN message is UTF-8; RFC 4954 4: a response that
    # decodes is no "501 5.5.2" (which says the server "cannot [BASE64]
    # decode" it), and an authorization identity whose preparation fails
    # "MUST fail the authentication": 535, counted as a failed login
    d = Driver(session=loopback(), max_auth_failures=5)
    d.send("EHLO c.test\r\n")
    latin1 = "\0j\xf6rg\0secret".encode("latin-1")
    wire = base64.b64encode(latin1).decode()
    assert d.send(f"AUTH PLAIN {wire}\r\n") == [replies.AUTH_FAILED.text()]
    assert d.engine.auth_failures == 1
    # LOGIN: the name, then the password, fail as one login
    assert d.codes("AUTH LOGIN\r\n") == ["334"]
    assert d.send(base64.b64encode("j\xf6rg".encode("latin-1")).decode() + "\r\n") == [
        "334 " + b64("Password:")]
    assert d.send(b64("secret") + "\r\n") == [replies.AUTH_FAILED.text()]
    assert d.engine.auth_failures == 2
    requests = [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert [r.malformed for r in requests] == [True, True]


# --- RFC 4616: SASL PLAIN ---------------------------------------------------------------


def test_plain_takes_255_octets_in_each_part():
    # 2: "Servers MUST be capable of accepting authzid, authcid, and passwd
    # productions up to and including 255 octets"
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    name = "a" * 243 + "@example.org"
    password = "p\u00e9" * 85  # 255 octets of UTF-8
    assert len(name.encode()) == 255 and len(password.encode()) == 255
    # (too long for the AUTH command line: RFC 4954 4 has the client send it
    # after the empty prompt then)
    assert d.send(f"AUTH PLAIN\r\n{b64(name + chr(0) + name + chr(0) + password)}\r\n")[0] == (
        "334 ")
    (request,) = [ev for ev in d.events if isinstance(ev, AuthRequest)]
    assert (request.username, request.password, request.malformed) == (name, password, False)


@pytest.mark.parametrize("message", ["alice\0secret", "\0alice\0secret\0", "\0alice\0se\0cret"])
def test_plain_messages_that_are_not_one_authzid_authcid_passwd_are_501(message):
    # 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd; "the NUL ...
    # character MUST NOT appear in authzid, authcid, or passwd": a message
    # with other than two NULs is none, and cannot be read as a login
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(f"AUTH PLAIN {b64(message)}\r\n") == [replies.AUTH_MALFORMED.text()]
    assert d.session.authenticated_as is None


def test_a_plain_message_acting_for_another_user_fails():
    # 2: the server verifies "that the authentication credentials permit the
    # client to act as the ... authorization identity" (here: only as
    # itself): a failed login, 535
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    assert d.send(f"AUTH PLAIN {b64('bob' + chr(0) + 'alice' + chr(0) + 'secret')}\r\n") == [
        replies.AUTH_FAILED.text()]
    assert d.session.authenticated_as is None
    assert d.engine.auth_failures == 1


# --- RFC 4954 5: AUTH= on MAIL --------------------------------------------------------


def test_auth_parameter_is_accepted_without_a_login_and_means_unknown():
    # 5: servers "MUST support the AUTH parameter to the MAIL FROM command
    # even when the client has not authenticated itself"; then it "MUST
    # behave as if the AUTH=<> parameter was supplied"
    d = Driver(session=Session(client_host="192.0.2.9", relay_allowed=True), queue=QueueSpy())
    assert d.codes("EHLO c.test\r\nMAIL FROM:<e=mc2@example.com> AUTH=e+3Dmc2@example.com\r\n"
                   "RCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n") == ["250", "250", "250", "354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert done.envelope.submitter is None


def test_auth_empty_from_a_logged_in_client_is_kept():
    # 5: AUTH=<>: "The server MUST NOT treat the message as having been
    # originally submitted by the authenticated identity"
    d = authed()
    assert d.codes("MAIL FROM:<alice> AUTH=<>\r\nRCPT TO:<bob>\r\nDATA\r\nx\r\n.\r\n") == [
        "250", "250", "354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert done.envelope.submitter is None and done.envelope.authenticated_as


# --- RFC 4954 6: the status codes ------------------------------------------------------


@pytest.mark.parametrize("reply, code, status", [
    (replies.AUTH_SUCCEEDED, 235, "2.7.0"),
    (replies.AUTH_TEMPORARY, 454, "4.7.0"),
    (replies.AUTH_FAILED, 535, "5.7.8"),
    (replies.AUTH_LINE_TOO_LONG, 500, "5.5.6"),
    (replies.AUTH_REQUIRED, 530, "5.7.0"),
    (replies.AUTH_TLS_REQUIRED, 538, "5.7.11"),
    (replies.AUTH_MECHANISM_UNKNOWN, 504, "5.5.4"),
    (replies.AUTH_INVALID_BASE64, 501, "5.5.2"),
])
def test_the_auth_replies_carry_the_codes_section_6_suggests(reply: Reply, code, status):
    # 6: "Servers that return enhanced status codes ... SHOULD use the
    # enhanced codes suggested here"; 4: 504 with 5.5.4, 501 with 5.5.2
    assert (reply.code, reply.status) == (code, status)


@pytest.mark.parametrize("command, code", [
    ("EHLO c.test", "250"), ("HELO c.test", "250"), ("NOOP", "250"), ("RSET", "250"),
    ("AUTH LOGIN", "334"), ("MAIL FROM:<a@example.org>", "530"),
    ("MAIL FROM:<>", "530"), ("QUIT", "221"),
])
def test_530_answers_mail_on_submission_and_not_the_commands_6_exempts(command, code):
    # 6: 530 "SHOULD be returned by any command other than AUTH, EHLO, HELO,
    # NOOP, RSET, or QUIT when server policy requires authentication";
    # RFC 6409 4.3 "MUST, by default, issue an error response to the MAIL
    # command if the session has not been authenticated" (530)
    d = submission(tls=True)
    if not command.startswith(("EHLO", "HELO")):
        d.send("EHLO c.test\r\n")
    assert d.codes(command + "\r\n") == [code]


def test_a_client_is_not_cut_off_before_three_failed_logins_by_default():
    # 9: servers that drop the connection after failed attempts "SHOULD NOT
    # drop the connection until at least 3 attempts to authenticate have
    # failed" (max_auth_failures defaults to 3)
    d = Driver(session=loopback())
    d.send("EHLO c.test\r\n")
    for _ in range(2):
        assert d.send(f"AUTH PLAIN {PLAIN_BAD}\r\n") == [replies.AUTH_FAILED.text()]
        assert not d.engine.closed
    assert d.send(f"AUTH PLAIN {PLAIN_BAD}\r\n")[-1].startswith("421 ")
    assert d.engine.closed


def test_auth_is_not_advertised_where_it_would_be_refused_538():
    # 6: "Modern implementations SHOULD NOT advertise mechanisms that are
    # not permitted due to lack of encryption"; 538 only answers a client
    # that tries anyway
    d = Driver()
    assert not any("AUTH" in line for line in d.send("EHLO c.test\r\n"))
    assert d.send(f"AUTH PLAIN {PLAIN_OK}\r\n") == [replies.AUTH_TLS_REQUIRED.text()]
    assert d.session.authenticated_as is None


# --- RFC 3207: STARTTLS -----------------------------------------------------------------


def test_starttls_with_a_parameter_is_501():
    # 4: "501 Syntax error (no parameters allowed)"; nothing starts
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send("STARTTLS now\r\n") == [replies.STARTTLS_ARGUMENT.text()]
    assert not d.session.tls and d.engine.state is State.READY


def test_starttls_forgets_a_login_and_the_ehlo_name():
    # 4.2: "The server MUST discard any knowledge obtained from the client,
    # such as the argument to the EHLO command, which was not obtained from
    # the TLS negotiation itself" -- the login given before it too
    d = authed()
    assert d.codes("EHLO c.test\r\nSTARTTLS\r\n") == ["250", "220"]
    s = d.session
    assert (s.tls, s.helo, s.esmtp, s.authenticated_as) == (True, "", False, None)
    assert d.engine.state is State.INIT
    lines = d.send("EHLO other.test\r\n")
    assert "250-AUTH PLAIN LOGIN" in lines  # offered again: nobody is logged in
    assert d.codes("MAIL FROM:<s@x.test>\r\nRCPT TO:<alice>\r\nDATA\r\nx\r\n.\r\n") == [
        "250", "250", "354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert done.envelope.helo == "other.test" and done.envelope.authenticated_as is None


def test_starttls_in_a_transaction_drops_it():
    # 4.2: the protocol "is reset to the initial state": a MAIL and RCPT
    # given in clear text are gone after the handshake
    d = Driver()
    tx(d)
    assert d.codes("STARTTLS\r\n") == ["220"]
    assert d.codes("EHLO c.test\r\nRCPT TO:<alice>\r\n") == ["250", "503"]


def test_no_starttls_is_offered_or_taken_under_tls():
    # 4.2: "A server MUST NOT return the STARTTLS extension in response to
    # an EHLO command received after a TLS handshake has completed"
    d = Driver()
    d.send("EHLO c.test\r\nSTARTTLS\r\n")
    assert not any("STARTTLS" in line for line in d.send("EHLO c.test\r\n"))
    assert d.send("STARTTLS\r\n") == [replies.TLS_ALREADY.text()]


def test_commands_pipelined_behind_starttls_are_discarded():
    # 4.2 / CVE-2011-0411 (command injection): what came in clear text
    # after STARTTLS, in the same read, is never obeyed after the handshake
    d = Driver()
    d.send("EHLO c.test\r\n")
    out = d.send("STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@x.test>\r\n"
                 "RCPT TO:<alice>\r\nDATA\r\nevil\r\n.\r\n")
    assert out == [replies.TLS_READY.text()]
    assert d.engine.state is State.INIT and not d.engine.has_input
    assert d.session.helo == ""


def test_a_public_mx_takes_local_mail_without_tls():
    # 4: "A publicly-referenced SMTP server MUST NOT require use of the
    # STARTTLS extension in order to deliver mail locally"
    d = Driver()
    assert d.codes("EHLO c.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice>\r\nDATA\r\n"
                   "x\r\n.\r\n") == ["250", "250", "250", "354", "250"]
    assert not d.session.tls


def test_502_when_tls_is_not_configured():
    # 4 gives "454 TLS not available due to temporary reason"; a hub
    # without [tls] has no temporary reason: it does not offer STARTTLS,
    # and a client told 454 would try again later and be told the same.
    # RFC 5321 4.2.4: 502 for a command not implemented here (RFC 3463
    # 3.6: X.5.1, invalid command)
    d = Driver(tls_available=False)
    assert not any("STARTTLS" in line for line in d.send("EHLO c.test\r\n"))
    assert d.send("STARTTLS\r\n") == [replies.STARTTLS_NOT_OFFERED.text()]
    # not offered whatever its argument: 502, not 501 (fix the argument)
    assert d.send("STARTTLS x\r\n") == [replies.STARTTLS_NOT_OFFERED.text()]
    assert (replies.STARTTLS_NOT_OFFERED.code, replies.STARTTLS_NOT_OFFERED.status) == (
        502, "5.5.1")
    assert replies.TLS_READY.code == 220


# --- RFC 6409: submission ----------------------------------------------------------------


def test_a_null_return_path_is_taken_on_submission():
    # 3.2: "a null return path, that is, MAIL FROM:<>, is permitted and MUST
    # NOT, in itself, be cause for rejecting a message"
    d = submission(tls=True)
    d.send(f"EHLO c.test\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert d.codes("MAIL FROM:<>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nx\r\n.\r\n") == [
        "250", "250", "354", "250"]


def test_the_submission_ehlo_offers_what_section_7_asks():
    # 7: AUTH MUST be supported; PIPELINING, ENHANCEDSTATUSCODES, DSN and
    # 8BITMIME SHOULD; ETRN and ATRN MUST NOT (and no 521 reply is ever
    # sent: the 521 reply code is MUST NOT too)
    d = submission(tls=True)
    keywords = {line[4:].split()[0] for line in d.send("EHLO c.test\r\n")[1:]}
    assert {"AUTH", "PIPELINING", "ENHANCEDSTATUSCODES", "DSN", "8BITMIME"} <= keywords
    assert not keywords & {"ETRN", "ATRN", "STARTTLS"}
    assert not [k for k, v in vars(replies).items() if isinstance(v, Reply) and v.code == 521]


def test_an_unqualified_domain_is_554_on_submission():
    # 4.1 and 4.2: "The MSA MUST ensure that all domains in the SMTP envelope
    # are fully qualified"; "Reply code 554 is to be used"
    d = submission(tls=True)
    d.send(f"EHLO c.test\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert d.codes("MAIL FROM:<alice@mailhost>\r\n") == ["554"]
    assert d.codes("MAIL FROM:<alice>\r\nRCPT TO:<x@sales>\r\n") == ["250", "554"]


def test_a_login_on_the_mx_listener_gets_the_envelope_check_too():
    # the hub is the MSA of a client that logged in on the MX listener (its
    # messages get Date, Message-ID and the address-field check): 4.2's
    # envelope MUST holds there as well -- a "From: alice@laptop" was 554
    # while "MAIL FROM:<alice@laptop>" went through
    d = Driver(session=loopback(), queue=QueueSpy())
    d.send(f"EHLO c.test\r\nAUTH PLAIN {PLAIN_OK}\r\n")
    assert d.send("MAIL FROM:<alice@laptop>\r\n") == [replies.SENDER_NOT_QUALIFIED.text()]
    assert d.codes("MAIL FROM:<alice>\r\nRCPT TO:<x@sales>\r\nRCPT TO:<x@sales.example>\r\n"
                   ) == ["250", "554", "250"]
    # without a login the MX listener is no MSA: a relay question
    d = Driver(session=loopback(), queue=QueueSpy())
    assert d.codes("EHLO c.test\r\nMAIL FROM:<s@laptop>\r\nRCPT TO:<x@sales>\r\n") == [
        "250", "250", "550"]


# --- RFC 8314: implicit TLS -------------------------------------------------------------


def test_an_implicit_tls_session_offers_auth_at_once_and_no_starttls():
    # 3.3: on the "submissions" port "a TLS handshake begins immediately";
    # the session is encrypted from its first command, so AUTH is offered to
    # any client and STARTTLS is neither offered nor taken (RFC 3207 4.2)
    d = submission(tls=True)
    lines = d.send("EHLO c.test\r\n")
    assert "250-AUTH PLAIN LOGIN" in lines
    assert not any("STARTTLS" in line for line in lines)
    assert d.send("STARTTLS\r\n") == [replies.TLS_ALREADY.text()]
    assert d.codes(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235"]


# --- RFC 3207 4.2 through the Twisted adapter (CVE-2011-0411) ---------------------------


def _starttls_session(tmp_path, hold: bool = False):
    h = Harness(hold=hold, idle_timeout=300)
    cert = make_certificate(tmp_path / "tls")
    h.components.tls = tls_options(str(cert[0]), str(cert[1]))
    p = SMTPFactory(h.components).buildProtocol(IPv4Address("TCP", "192.0.2.1", 4321))
    sock = StartTLSSocket(h.clock, p)
    p.makeConnection(sock)
    sock.startReading()
    return h, p, sock, cert


def _handshake_and_check_nothing_was_injected(h, sock, cert) -> list[bytes]:
    sock.sent.clear()
    client = TLSClient(None, h.clock, cert, socket=sock)
    client.send(b"EHLO c.test\r\n")
    assert client.receive().startswith(b"250-mx.example.org Hello c.test")
    # an injected MAIL would make this RCPT a recipient, and the MAIL a 503
    client.send(b"RCPT TO:<alice>\r\nMAIL FROM:<s@x.test>\r\n")
    assert client.receive() == (replies.MAIL_NEEDED.to_bytes() + b"250 2.1.0 <s@x.test>... "
                                b"Sender OK\r\n")
    stored = h.store.messages(ALICE)
    assert all(isinstance(m, bytes) and b"evil" not in m for m in stored)
    return stored


def test_plaintext_behind_starttls_in_one_read_is_never_obeyed(tmp_path):
    # RFC 3207 4.2: the server "MUST discard any knowledge obtained from the
    # client ... which was not obtained from the TLS negotiation itself";
    # commands sent in clear text behind STARTTLS (one TCP segment, an
    # attacker's injection) are dropped with it, not read after the handshake
    h, p, sock, cert = _starttls_session(tmp_path)
    p.dataReceived(b"EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<alice>\r\n"
                   b"DATA\r\nevil\r\n.\r\n")
    sock.drain()
    assert bytes(sock.sent).endswith(b"\r\n" + replies.TLS_READY.to_bytes())
    assert bytes(sock.sent).count(b"\r\n250 ") == 1  # the EHLO's last line, nothing else
    assert _handshake_and_check_nothing_was_injected(h, sock, cert) == []


def test_plaintext_behind_a_starttls_waiting_for_a_store_is_never_obeyed(tmp_path):
    # the same when STARTTLS waits behind a message being made durable, and
    # more clear text arrives in another read before it is answered
    h, p, sock, cert = _starttls_session(tmp_path, hold=True)
    p.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice>\r\nDATA\r\n"
                   b"x\r\n.\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
    p.dataReceived(b"RCPT TO:<alice>\r\nDATA\r\nevil\r\n.\r\n")
    h.spooler.release()
    sock.drain()
    wire = bytes(sock.sent)
    assert wire.endswith(b"Message accepted for delivery\r\n" + replies.TLS_READY.to_bytes())
    assert len(_handshake_and_check_nothing_was_injected(h, sock, cert)) == 1


# --- RFC 6409 4.2: the domains in the address header fields of a submission -------------


def _domains(header: bytes, cut: int | None = None) -> str | None:
    check = HeaderDomains(lambda domain: domain == "example.org")
    lines = header.splitlines(keepends=True)
    pieces = [header] if cut is None else [b"".join(lines[:cut]), b"".join(lines[cut:])]
    found = None
    for piece in pieces:
        found = check.feed(piece) or found
    return check.finish() or found


@pytest.mark.parametrize("header", [
    b"From: Alice <alice@example.net>\nTo: bob@example.com, \"x@y\" <c@d.example>\n\nbody\n",
    b"To: (bob@intranet) bob@example.com\n\n",  # a comment is no address
    b"Cc: \"a (b@c\" <d@e.example>\n\n",  # nor is a quoted string, parentheses and all
    b"To: \"john doe\"@example.com\n\n",
    b"To: bob@[192.0.2.1], alice@example.org, local@example\n .org\n\n",  # folded (obsolete)
    b"To: undisclosed-recipients:;\nBcc:\n\n",
    b"To: =?utf-8?q?x@y?= <bob@example.com>\n\n",  # an encoded word is no address
    b"Subject: mail for bob@intranet\nMessage-ID: <1@intranet>\n\n",  # not address fields
    b"To: bob@example.com\n\nCc: bob@intranet\n",  # the body
    b"To: bob@example.com\nno field, the body begins\nCc: bob@intranet\n",
    b"To: bob@example.org.\n\n",
    b"Hi, no header section at all: bob@intranet\n",
    # a continuation line first is no header section either: the hub puts
    # its own before it, and what follows is the body
    b" continued, with no field before it\nTo: bob@intranet\n\nbody\n",
    # a field that cannot be read with certainty is left as it came
    b"To: \"unbalanced <bob@intranet>\n\n",
    b"To: a@b.example c@intranet\n\n",  # no comma: which address is which?
    b"To: bob@intranet\n".replace(b"bob", b"x" * FIELD_LIMIT) + b"\n",
    b"To: " + b"bob@example.com,\n " * (FIELD_LIMIT // 17) + b"bob@intranet\n\n",
])
def test_fully_qualified_or_no_address_field_domains_pass(header):
    assert _domains(header) is None
    for cut in range(1, header.count(b"\n")):
        assert _domains(header, cut) is None


@pytest.mark.parametrize("header, domain", [
    (b"From: root@localhost\n\n", "localhost"),
    (b"To: Bob <bob@intranet>\n\n", "intranet"),
    (b"To: a@example.com,\n b@intranet\nSubject: x\n\n", "intranet"),  # a continuation line
    (b"Resent-Cc: x@sales\n\n", "sales"),
    (b"reply-to : x@sales.\n\n", "sales."),  # any case, white space before the colon
    (b"Sender: x@sales", "sales"),  # the data ended in the header section
    (b"To: <@relay:bob@example.com>\n\n", "relay"),  # an obsolete route's domain too
    (b"To: a@example.com,\n\tb@intranet\n\n", "intranet"),  # a continuation with a tab
    # every one is named, in the order found, each once (in any case)
    (b"From: a@sales\nTo: b@intranet\n\n", ("sales", "intranet")),
    (b"To: a@sales, b@intranet\n\n", ("sales", "intranet")),
    (b"From: a@sales\nTo: b@ok.example,\n c@Sales, d@intranet\nCc: e@sales\n\n",
     ("sales", "intranet")),
    # the same domain with its final dot is not named again
    (b"From: a@sales\nTo: b@sales., c@SALES.\n\n", "sales"),
])
def test_an_address_field_domain_of_one_label_is_found(header, domain):
    named = (domain,) if isinstance(domain, str) else domain
    assert _domains(header) == named
    for cut in range(1, header.count(b"\n")):
        assert _domains(header, cut) == named


def test_an_ipv6_literal_and_a_local_domain_of_one_label_are_qualified():
    # RFC 6409 4.2 wants hosts named fully: an address literal is a host
    # (an IPv6 one has no dot), and so is one of the hub's own domains
    check = HeaderDomains(lambda domain: domain == "mailhub")
    assert check.feed(b"To: bob@[IPv6:2001:db8::1], root@mailhub\n\n") is None
    assert check.finish() is None


def _submit(h, data: bytes, host: str = "127.0.0.1") -> list[str]:
    p, t = h.connect(host)
    login = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
    p.dataReceived(b"EHLO c\r\n" + (login if host == "127.0.0.1" else b"")
                   + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob>\r\nDATA\r\n" + data
                   + b".\r\n")
    return take(t)


def test_a_submission_with_an_unqualified_address_field_domain_is_554():
    # RFC 6409 4.2: an MSA that "examines or alters the message text in any
    # way, except to add trace header fields ... MUST ensure that all
    # domains in address header fields are fully qualified" -- the hub adds
    # Date and Message-ID (8.2, 8.3), so it refuses (554, as 4.1 and 5.1
    # have it: the end of the data, a suitable enhanced code)
    h = Harness()
    out = _submit(h, b"From: root@localhost\r\nTo: bob@example.org\r\n\r\nhi\r\n")
    # the reply names the domain: the user has to know what to correct
    assert out[-1] == ("554 5.6.0 A domain in an address header field is not fully "
                       "qualified: localhost")
    assert h.store.messages(Address("bob", "example.org")) == []


def test_the_554_names_a_domain_that_could_not_be_shown_escaped_and_cut():
    # the domain is the client's text: what goes back in the reply is
    # printable ASCII, and the line stays within RFC 5321's 512 octets
    h = Harness()
    out = _submit(h, "From: a@b\u00fccher\r\n\r\nhi\r\n".encode())
    assert out[-1].startswith("554 5.6.0 ") and out[-1].isascii() and "cher" in out[-1]
    out = _submit(h, b"From: a@" + b"z" * 600 + b"\r\n\r\nhi\r\n")
    assert out[-1].startswith("554 5.6.0 ") and len(out[-1]) < 510


def test_the_554_names_every_unqualified_domain_within_one_reply_line():
    # it named the first only: the user corrected it, sent again, and was
    # refused for the next one
    h = Harness()
    out = _submit(h, b"From: root@localhost\r\nTo: bob@example.org, a@sales,\r\n"
                     b" b@intranet\r\nCc: c@sales\r\n\r\nhi\r\n")
    assert out[-1] == ("554 5.6.0 Domains in address header fields are not fully qualified: "
                       "localhost, sales, intranet")
    # as many as fit in RFC 5321's 512 octets (4.5.3.1.5), then "..."
    many = b"To: " + b",\r\n ".join(b"u@%s%03d" % (b"h" * 60, i) for i in range(40))
    out = _submit(h, many + b"\r\n\r\nhi\r\n")
    assert out[-1].startswith("554 5.6.0 Domains in address header fields are not fully "
                              "qualified: " + "h" * 60 + "000, ")
    assert out[-1].endswith(", ...") and len(out[-1]) + 2 <= 512 and len(out[-1]) > 400
    assert h.store.messages(Address("bob", "example.org")) == []
    for count in range(1, 12):  # every length of list up to past the line: never over
        names = [f"{'x' * 150}{i}" for i in range(count)]
        line = replies.header_domain_not_qualified(*names).to_bytes()
        assert len(line) <= 512 and line.endswith(b"\r\n")
        shown = line.decode().rstrip("\r\n").split(": ", 1)[1].split(", ")
        assert shown == names or (shown[:-1] == names[: len(shown) - 1] and shown[-1] == "...")


def test_the_search_for_unqualified_domains_stops_when_no_more_could_be_named():
    # a header section of thousands of such addresses: the check keeps no
    # more names than one reply can show, and refuses without its end
    check = HeaderDomains(lambda domain: False)
    piece = b"".join(b"To: u@host%05d\n" % i for i in range(2000))
    found = check.feed(piece)
    assert found is not None and check.done
    assert 512 // len("host00000, ") <= len(found) <= 512 // len("host00000, ") + 1
    # the same in one field of many addresses: it stops in the field too
    check = HeaderDomains(lambda domain: False)
    found = check.feed(b"To: " + b",\n ".join(b"u@host%05d" % i for i in range(2000)) + b"\n\n")
    assert found is not None and check.done
    assert 512 // len("host00000, ") <= len(found) <= 512 // len("host00000, ") + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=14))
# at the line's end: 512 octets whole, 513 cut; a short last name that fits
# where a ", ..." would not (it was cut when the whole list fitted)
@example([200, 200, 38])
@example([200, 200, 39])
@example([200, 200, 34, 1])
@example([200, 200, 20, 10, 1, 1, 1])  # fits only counting ", " as one octet
def test_the_554_shows_as_many_domains_as_one_line_holds_and_dots_for_the_rest(lengths):
    # each name whole, in order, as many as fit in 512 octets with CRLF;
    # "..." where the next would not fit (with its own ", ..." when more
    # follow); every name when all fit
    names = [f"{'n' * (size - 1)}{chr(97 + i % 26)}" for i, size in enumerate(lengths)]
    line = replies.header_domain_not_qualified(*names).to_bytes()
    assert len(line) <= 512 and line.endswith(b"\r\n")
    text, _, listed = line.decode().rstrip("\r\n").partition(": ")
    shown = listed.split(", ")

    def octets(show: list[str]) -> int:
        return len(f"{text}: {', '.join(show)}".encode()) + len("\r\n")  # text: "554 5.6.0 ..."

    assert text.endswith("Domains in address header fields are not fully qualified"
                         if len(names) > 1 else "not fully qualified")
    if octets(names) <= 512:
        assert shown == names
        return
    k = len(shown) - 1
    assert shown[-1] == "..." and shown[:k] == names[:k]
    more = names[: k + 1] + ([] if k + 1 == len(names) else ["..."])
    assert octets(more) > 512, (k, lengths)  # the next one would not have fit


def test_a_domain_too_long_to_show_whole_does_not_end_the_search():
    # the reply shows a name of any length in 200 octets ("..." at its
    # end): the search counted the whole of it toward the 512 octets one
    # line holds and stopped, and the reply named one domain of two, with
    # no "..." to say there were more
    h = Harness()
    out = _submit(h, b"From: a@" + b"z" * 600 + b"\r\nTo: b@sales\r\n\r\nhi\r\n")
    assert out[-1] == ("554 5.6.0 Domains in address header fields are not fully qualified: "
                       + "z" * 197 + "..., sales")
    out = _submit(h, b"From: a@" + b"z" * 300 + b"\r\nTo: b@" + b"y" * 300
                  + b", c@sales\r\n\r\nhi\r\n")
    assert out[-1].endswith("y" * 197 + "..., sales") and len(out[-1]) + 2 <= 512
    # the search still stops: a header section of thousands of them
    check = HeaderDomains(lambda domain: False)
    found = check.feed(b"".join(b"To: u@%s%05d\n" % (b"h" * 300, i) for i in range(2000)))
    assert found is not None and check.done and len(found) <= 512 // (200 + 2) + 1


def test_a_header_section_the_data_ends_in_has_every_such_domain_named():
    # no empty line, no body: the domains are found at the end of the data
    h = Harness()
    out = _submit(h, b"From: a@sales\r\nTo: b@intranet\r\n")
    assert out[-1] == ("554 5.6.0 Domains in address header fields are not fully qualified: "
                       "sales, intranet")


def test_a_bdat_0_before_the_header_section_does_not_skip_the_check():
    h = Harness()
    p, t = h.connect("127.0.0.1")
    data = b"From: a@sales\r\nTo: b@intranet\r\n\r\nhi\r\n"
    p.dataReceived(b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
                   b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob>\r\n"
                   b"BDAT 0\r\n" + b"BDAT %d LAST\r\n" % len(data) + data)
    assert take(t)[-1] == replies.header_domain_not_qualified("sales", "intranet").text()


def test_the_554_for_an_address_with_nothing_after_its_at_says_so():
    # "a@" has an empty domain: a reply ending in ": " names nothing the
    # user could look for in the message
    h = Harness()
    out = _submit(h, b"From: Alice <alice@>\r\n\r\nhi\r\n")
    assert out[-1] == ("554 5.6.0 A domain in an address header field is not fully "
                       "qualified: an address ends in \"@\"")


def test_a_qualified_submission_and_mail_on_the_mx_pass():
    h = Harness()
    out = _submit(h, b"From: Alice <alice@example.org>\r\nTo: \"b@c\" <bob>\r\n\r\nhi\r\n")
    assert out[-1].startswith("250 2.0.0 ")
    # the MX listener is no MSA: it passes what other servers send as it came
    out = _submit(h, b"From: root@localhost\r\n\r\nhi\r\n", host="192.0.2.1")
    assert out[-1].startswith("250 2.0.0 ")


def test_a_submission_that_ends_on_such_a_field_is_554_and_the_session_goes_on():
    # the field is whole only once the data has ended (no empty line, no
    # body): the refusal comes then; the next message is taken
    h = Harness()
    out = _submit(h, b"To: bob@example.org\r\nCc: x@sales\r\n")
    assert out[-1] == replies.header_domain_not_qualified("sales").text()
    assert h.store.messages(Address("bob", "example.org")) == []
    # its spool file is given up, not left behind in the spool
    assert [w.state for w in h.spooler.writers] == ["aborted"]
    out = _submit(h, b"To: bob@example.org\r\nCc: x@sales.example\r\n")
    assert out[-1].startswith("250 2.0.0 ")


def test_a_submission_that_starts_with_a_continuation_line_is_all_body_and_taken():
    # the header section the hub stores is its own (Date, Message-ID and
    # the empty line): the client's "To: root@localhost" is body text there
    h = Harness()
    out = _submit(h, b" no field first\r\nTo: root@localhost\r\n\r\nhi\r\n")
    assert out[-1].startswith("250 2.0.0 ")
    [stored] = h.store.messages(Address("bob", "example.org"))
    head, _, body = stored.replace(b"\r\n", b"\n").partition(b"\n\n")
    assert b"root@localhost" not in head
    assert body.startswith(b" no field first\nTo: root@localhost\n")


def test_a_bdat_submission_with_such_a_field_fails_its_chunk():
    # the same check on BDAT: the chunk the header section ends in gets the
    # 554 naming every such domain (a field of a later chunk may name
    # another), the chunks after it are discarded (RFC 3030 2), and the
    # session goes on
    h = Harness()
    p, t = h.connect("127.0.0.1")
    first, second = b"From: root@localhost\r\nTo: bob@example.org\r\n", b"Cc: x@sales\r\n\r\n"
    last = b"hi\r\n"
    p.dataReceived(b"EHLO c\r\nAUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
                   b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob>\r\n"
                   + b"BDAT %d\r\n" % len(first) + first
                   + b"BDAT %d\r\n" % len(second) + second
                   + b"BDAT %d LAST\r\n" % len(last) + last + b"NOOP\r\n")
    assert take(t)[-4:] == [replies.bdat_chunk(len(first)).text(),
                            replies.header_domain_not_qualified("localhost", "sales").text(),
                            replies.BDAT_DISCARDED.text(), replies.OK.text()]
    assert h.store.messages(Address("bob", "example.org")) == []
