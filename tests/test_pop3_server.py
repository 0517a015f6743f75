"""The sans-IO POP3 engine: every command, every state, every error."""

from __future__ import annotations

import base64
import tracemalloc
from collections import namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmailhub.errors import LocalError
from txmailhub.pop3 import replies as R
from txmailhub.pop3.lines import LineReader
from txmailhub.pop3.server import (
    CAPABILITIES,
    TRANSITIONS,
    VALID_IN,
    Authenticate,
    LoginFailure,
    POP3Server,
    Send,
    StartTLS,
    State,
    Transmit,
    Update,
    make_timestamp,
)

Info = namedtuple("Info", "uid size path")
MESSAGES = [Info("1000.a,S=10", 412, "p1"), Info("1001.b", 20, "p2"), Info("1002.c", 7, "p3")]
TS = "<1.2.3@mail.example.org>"


def engine(**kw) -> POP3Server:
    kw.setdefault("plaintext_allowed", True)
    return POP3Server(hostname="mail.example.org", timestamp=TS, **kw)


def run(e: POP3Server, line: bytes):
    e.receive_data(line + b"\r\n")
    action = e.next_action()
    assert not e.has_line  # one line, one action
    return action


def sent(e: POP3Server, line: bytes) -> bytes:
    action = run(e, line)
    assert isinstance(action, Send), action
    return action.data


def logged_in(messages=MESSAGES, **kw) -> POP3Server:
    e = engine(**kw)
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    action = run(e, b"PASS joepw")
    assert action == Authenticate("USER", "joe", b"joepw", TS)
    reply = e.login_succeeded(messages)
    count = len(messages)
    assert reply.data == R.logged_in(count, sum(m.size for m in messages)).to_bytes()
    assert e.state is State.TRANSACTION
    return e


# -- greeting and line handling ------------------------------------------


def test_greeting_carries_timestamp():
    e = engine()
    assert e.greeting() == f"+OK POP3 server mail.example.org ready {TS}\r\n".encode()


@pytest.mark.parametrize("hostname", ["[192.0.2.1]", "h" * 63 + "." + "x" * 63 + "." + "y" * 63
                                      + "." + "z" * 61])
def test_greeting_is_no_response_code_and_fits_a_line(hostname):
    # RFC 2449 8: with RESP-CODES, text starting with "[" is a response
    # code -- an address literal as the host name must not start the text;
    # RFC 2449 4: 512 octets with the CRLF, even for a 253-character name
    ts = make_timestamp(hostname, 1700000000.5)
    wire = R.greeting(hostname, ts).to_bytes()
    assert wire.startswith(b"+OK POP3 server ")
    assert len(wire) <= 512 and wire.endswith(ts.encode() + b"\r\n")


@pytest.mark.parametrize("pid, full", [("12", True), ("123", False)])
def test_greeting_keeps_the_host_name_up_to_exactly_512_octets(pid, full):
    """RFC 2449 4: the first line of a response, the greeting included, may
    be 512 octets with its CRLF.  One of exactly 512 is sent whole; one
    octet more and the short form (no host name) goes instead."""
    host = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 35  # 227
    ts = f"<{pid}.1700000000.{'0' * 16}@{host}>"
    e = POP3Server(hostname=host, timestamp=ts, plaintext_allowed=True)
    whole = f"+OK POP3 server {host} ready {ts}\r\n".encode()
    assert len(whole) == (512 if full else 513)
    assert e.greeting() == (whole if full else f"+OK POP3 server ready {ts}\r\n".encode())


def test_make_timestamp_shape_and_uniqueness():
    a = make_timestamp("h.example", 1700000000.5)
    b = make_timestamp("h.example", 1700000000.5)
    assert a != b
    assert a.startswith("<") and a.endswith("@h.example>")
    pid, when, rand = a[1:].split("@")[0].split(".")
    assert pid.isdigit() and when == "1700000000" and len(rand) == 16


def test_commands_are_case_insensitive_and_lf_only_lines_work():
    e = engine()
    e.receive_data(b"uSeR joe\n")
    assert e.next_action() == Send(R.USER_ACCEPTED.to_bytes())


def test_byte_by_byte_input_gives_the_same_action():
    e = engine()
    for b in b"USER joe\r\n":
        assert e.next_action() is None
        e.receive_data(bytes([b]))
    assert e.next_action() == Send(R.USER_ACCEPTED.to_bytes())


def test_pipelined_lines_are_answered_in_order():
    e = logged_in()
    e.receive_data(b"NOOP\r\nSTAT\r\nDELE 2\r\nSTAT\r\n")
    out = []
    while (a := e.next_action()) is not None:
        out.append(a.data)
    assert out == [
        R.NOOP.to_bytes(),
        R.stat(3, 439).to_bytes(),
        R.deleted(2).to_bytes(),
        R.stat(2, 419).to_bytes(),
    ]


def test_line_of_255_octets_is_accepted_256_is_refused_and_session_continues():
    e = engine()
    ok_line = b"USER " + b"j" * (255 - 2 - 5)
    assert sent(e, ok_line) == R.USER_ACCEPTED.to_bytes()
    assert sent(e, ok_line + b"j") == R.LINE_TOO_LONG.to_bytes()
    assert sent(e, b"NOOP") == R.wrong_state("NOOP", "AUTHORIZATION").to_bytes()


def test_endless_line_does_not_grow_memory_and_gets_one_error():
    e = engine()
    for _ in range(1000):
        e.receive_data(b"x" * 1000)
        assert e.buffered < 5000
        assert e.next_action() is None
    e.receive_data(b"yyy\r\nQUIT\r\n")
    assert e.next_action() == Send(R.LINE_TOO_LONG.to_bytes())
    assert e.next_action() == Send(R.BYE.to_bytes(), close=True)


def test_many_complete_overlong_lines_are_each_refused():
    e = engine()
    e.receive_data((b"z" * 5000 + b"\r\n") * 2 + b"CAPA\r\n")
    assert e.next_action().data == R.LINE_TOO_LONG.to_bytes()
    assert e.next_action().data == R.LINE_TOO_LONG.to_bytes()
    assert e.next_action().data.startswith(R.CAPA_FOLLOWS.to_bytes())


def test_a_client_that_never_logs_in_is_closed_after_50_lines():
    from txmailhub.pop3.server import PRE_LOGIN_LINES

    e = engine()
    for _ in range(PRE_LOGIN_LINES - 2):
        assert sent(e, b"CAPA").startswith(R.CAPA_FOLLOWS.to_bytes())
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()  # the 49th
    assert run(e, b"PASS joepw") == Authenticate("USER", "joe", b"joepw", TS)  # the 50th
    e.login_failed(LoginFailure.TEMPORARY)
    action = run(e, b"NOOP")
    assert action == Send(R.TOO_MANY_COMMANDS.to_bytes(), close=True)
    assert e.finished and e.next_action() is None


def test_the_count_of_lines_before_login_ends_at_the_login():
    from txmailhub.pop3.server import PRE_LOGIN_LINES

    e = engine()
    for _ in range(PRE_LOGIN_LINES - 2):
        sent(e, b"NOOP")  # -ERR in AUTHORIZATION, but a line all the same
    e = logged_in_after(e)
    for _ in range(PRE_LOGIN_LINES):
        assert sent(e, b"NOOP") == R.NOOP.to_bytes()


def logged_in_after(e: POP3Server) -> POP3Server:
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    run(e, b"PASS joepw")
    e.login_succeeded(MESSAGES)
    assert e.state is State.TRANSACTION
    return e


def test_unknown_and_empty_commands():
    e = engine()
    assert sent(e, b"XYZZY") == R.UNKNOWN_COMMAND.to_bytes()
    assert sent(e, b"") == R.UNKNOWN_COMMAND.to_bytes()
    assert sent(e, b"LAST") == R.UNKNOWN_COMMAND.to_bytes()


def test_non_utf8_bytes_never_raise():
    e = engine()
    assert sent(e, b"\xff\xfe NOOP") == R.BAD_ENCODING.to_bytes()
    # Latin-1 is no UTF-8 user name (RFC 6856 2.2): refused, not a crash
    assert sent(e, b"USER \xe9l\xe8ve") == R.BAD_USER_NAME.to_bytes()
    assert sent(e, "USER \xe9l\xe8ve".encode()) == R.USER_ACCEPTED.to_bytes()


def test_a_keyword_is_ascii_not_what_unicode_upper_cases_to_one():
    # "\u017f" (long s) upper-cases to S, "\ufb06" (the st ligature) to ST:
    # RFC 1939 3 keywords are ASCII, and these are not STAT
    e = engine()
    for verb in ("\u017ftat", "\ufb06at", "l\u0131st"):
        assert sent(e, verb.encode()) == R.BAD_ENCODING.to_bytes(), verb
    assert sent(e, b"capa").startswith(R.CAPA_FOLLOWS.to_bytes())


_BARE_CR = [b"USER joe\r", b"PASS joepw\r", b"PASS joe\rpw", b"NO\rOP", b"\r", b"CAPA\r",
            b"AUTH PLAIN\r"]
_NUL = [b"USER joe\0", b"PASS joepw\0", b"PASS joe\0pw", b"NO\0OP", b"\0", b"CAPA\0",
        b"AUTH PLAIN\0", b"PASS joe\0pw\r"]


@pytest.mark.parametrize("line,reply", [(line, R.BARE_CR_IN_COMMAND) for line in _BARE_CR]
                         + [(line, R.NUL_IN_COMMAND) for line in _NUL])
def test_a_bare_cr_or_a_nul_in_a_command_line_is_refused_before_login(line, reply):
    # RFC 1939 3: commands end with CRLF, and keywords and arguments are
    # printable ASCII.  USER joe\r\r\n (line ends converted twice) was
    # taken with the CR dropped, and PASS joepw\r\r\n or PASS joe\0pw tried
    # the CR or NUL as part of the password: a failed login, counted and
    # delayed
    e = engine()
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    assert sent(e, line) == reply.to_bytes()
    assert e.state is State.AUTHORIZATION and e.auth_failures == 0
    # nothing of the command was done: the name stands for the next PASS
    assert run(e, b"PASS joepw") == Authenticate("USER", "joe", b"joepw", TS)


@pytest.mark.parametrize("line,reply",
                         [(line, R.BARE_CR_IN_COMMAND) for line in (
                             b"STAT\r", b"LIST 1\r", b"DELE 1\r", b"RETR\r1", b"TOP 1 0\r",
                             b"QUIT\r")]
                         + [(line, R.NUL_IN_COMMAND) for line in (
                             b"STAT\0", b"LIST 1\0", b"DELE 1\0", b"DELE \0001", b"TOP 1 0\0",
                             b"QUIT\0")])
def test_a_bare_cr_or_a_nul_in_a_command_line_is_refused_after_login(line, reply):
    # "DELE 1\r" deleted message 1, "STAT\r" was an unknown command
    e = logged_in()
    assert sent(e, line) == reply.to_bytes()
    assert e.state is State.TRANSACTION and not e.finished
    assert sent(e, b"STAT") == b"+OK 3 439\r\n"  # nothing deleted


def test_a_bare_cr_is_the_same_whatever_the_reads():
    e = logged_in()
    got = []
    for piece in (b"NOOP\r", b"\r", b"\n", b"NOOP\r", b"\n"):
        e.receive_data(piece)
        while (action := e.next_action()) is not None:
            got.append(action.data)
    assert got == [R.BARE_CR_IN_COMMAND.to_bytes(), b"+OK\r\n"]


# -- the state table -------------------------------------------------------


def test_transition_table_is_the_rfc_one():
    assert set(TRANSITIONS.values()) == {State.TRANSACTION, State.UPDATE}
    assert all(VALID_IN[v] for v in VALID_IN)


@pytest.mark.parametrize("verb", ["NOOP", "STAT", "LIST", "RETR 1", "TOP 1 0", "DELE 1",
                                  "RSET", "UIDL"])
def test_transaction_commands_refused_in_authorization(verb):
    e = engine()
    name = verb.split()[0]
    assert sent(e, verb.encode()) == R.wrong_state(name, "AUTHORIZATION").to_bytes()
    assert e.state is State.AUTHORIZATION


@pytest.mark.parametrize("verb", ["USER joe", "PASS x", "APOP joe " + "0" * 32, "AUTH PLAIN",
                                  "STLS"])
def test_authorization_commands_refused_in_transaction(verb):
    e = logged_in(tls_available=True)
    name = verb.split()[0]
    assert sent(e, verb.encode()) == R.wrong_state(name, "TRANSACTION").to_bytes()


def test_next_action_while_waiting_is_our_bug():
    e = engine()
    run(e, b"USER joe")
    run(e, b"PASS pw")
    e.receive_data(b"NOOP\r\n")
    with pytest.raises(LocalError):
        e.next_action()
    with pytest.raises(LocalError):
        e.update_finished(True)


# -- USER / PASS -----------------------------------------------------------


def test_pass_keeps_spaces_in_the_password():
    e = engine()
    run(e, b"USER joe")
    assert run(e, b"PASS my secret pw") == Authenticate("USER", "joe", b"my secret pw", TS)


def test_pass_without_user():
    e = engine()
    assert sent(e, b"PASS x") == R.PASS_WITHOUT_USER.to_bytes()


def test_user_and_pass_syntax():
    e = engine()
    assert sent(e, b"USER") == R.bad_syntax("USER name").to_bytes()
    assert sent(e, b"USER a b") == R.bad_syntax("USER name").to_bytes()
    run(e, b"USER joe")
    assert sent(e, b"PASS") == R.bad_syntax("PASS password").to_bytes()


def test_plaintext_refused_when_not_allowed_but_apop_works():
    e = engine(plaintext_allowed=False, tls_available=True)
    assert sent(e, b"USER joe") == R.PLAINTEXT_DISALLOWED.to_bytes()
    assert sent(e, b"PASS joe") == R.PASS_WITHOUT_USER.to_bytes()
    assert sent(e, b"AUTH PLAIN") == R.PLAINTEXT_DISALLOWED.to_bytes()
    digest = "c4c9334bac560ecc979e58001b3e22fb"
    assert run(e, f"APOP joe {digest}".encode()) == Authenticate(
        "APOP", "joe", digest.encode(), TS
    )
    assert R.PLAINTEXT_DISALLOWED.code == "AUTH"


def test_bad_credentials_grow_the_delay_then_close():
    e = engine(max_auth_failures=3, auth_failure_delay=2.0)
    delays = []
    for i in range(3):
        run(e, b"USER joe")
        assert isinstance(run(e, b"PASS bad"), Authenticate)
        reply = e.login_failed(LoginFailure.BAD_CREDENTIALS)
        delays.append(reply.delay)
        if i < 2:
            assert reply == Send(R.AUTH_FAILED.to_bytes(), delay=reply.delay)
            assert reply.data.startswith(b"-ERR [AUTH] ")
    assert delays == [2.0, 4.0, 6.0]
    assert reply.close and reply.data == R.TOO_MANY_AUTH_FAILURES.to_bytes()
    e.receive_data(b"NOOP\r\n")
    assert e.next_action() is None  # finished


def test_failed_login_forgets_the_user():
    e = engine()
    run(e, b"USER joe")
    run(e, b"PASS bad")
    e.login_failed(LoginFailure.BAD_CREDENTIALS)
    assert sent(e, b"PASS again") == R.PASS_WITHOUT_USER.to_bytes()


@pytest.mark.parametrize("failed", [b"USER", b"USER b\xc3", b"USER a b",
                                    b"APOP joe xyz", b"AUTH PLAIN !!!", b"AUTH X"])
def test_a_failed_login_command_forgets_the_earlier_user(failed):
    # RFC 1939 7: PASS "may only be given ... immediately after a
    # successful USER command", and (3) a command in the wrong state MUST
    # get -ERR: after a USER, APOP or AUTH that failed, a PASS must not
    # log in as the name an earlier USER gave
    e = engine()
    run(e, b"USER joe")
    assert sent(e, failed).startswith(b"-ERR")
    assert sent(e, b"PASS joepw") == R.PASS_WITHOUT_USER.to_bytes()


def test_capa_between_user_and_pass_keeps_the_user():
    # RFC 2449 5: CAPA has no restrictions (either state, any time), and
    # a client may probe it after USER; only a login command (USER, APOP,
    # AUTH) ends the earlier name's turn (RFC 1939 7), as in Dovecot,
    # whose pop3-login keeps the USER name until PASS uses it
    e = engine()
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    assert sent(e, b"CAPA").startswith(b"+OK")
    assert run(e, b"PASS joepw") == Authenticate("USER", "joe", b"joepw", TS)


@pytest.mark.parametrize(
    "why,reply",
    [
        (LoginFailure.IN_USE, R.MAILBOX_IN_USE),
        (LoginFailure.TEMPORARY, R.MAILBOX_TEMP_FAILURE),
        (LoginFailure.PERMANENT, R.MAILBOX_PERM_FAILURE),
    ],
)
def test_mailbox_failures_have_their_resp_codes_and_do_not_count(why, reply):
    e = engine(max_auth_failures=1)
    run(e, b"USER joe")
    run(e, b"PASS pw")
    assert e.login_failed(why) == Send(reply.to_bytes())
    assert e.auth_failures == 0
    assert e.state is State.AUTHORIZATION
    code = {"IN_USE": b"[IN-USE]", "TEMPORARY": b"[SYS/TEMP]", "PERMANENT": b"[SYS/PERM]"}
    assert code[why.name] in reply.to_bytes()


# -- APOP ------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"APOP", b"APOP joe", b"APOP joe abc", b"APOP joe " +
                                  b"g" * 32, b"APOP a b c",
                                  b"APOP joe " + b"a" * 31, b"APOP joe " + b"a" * 33])
def test_apop_syntax(line):
    # the digest is 32 hex digits (RFC 1939 7: an MD5 digest); any other
    # length is a syntax error, no login to count as failed
    e = engine()
    assert sent(e, line).startswith(b"-ERR Syntax: APOP")


def test_apop_digest_is_lowercased():
    e = engine()
    action = run(e, b"apop joe " + b"ABCDEF0123456789" * 2)
    assert action.secret == b"abcdef0123456789" * 2 and action.mechanism == "APOP"


def no_apop_engine(**kw) -> POP3Server:
    kw.setdefault("plaintext_allowed", True)
    return POP3Server(hostname="mail.example.org", timestamp="", **kw)


def test_greeting_without_apop_has_no_timestamp():
    # no user has an APOP secret: a greeting with a timestamp would make
    # clients that take APOP whenever they see one (Twisted's login())
    # fail every login
    e = no_apop_engine()
    assert e.greeting() == b"+OK POP3 server mail.example.org ready\r\n"
    assert b"<" not in e.greeting()


def test_apop_without_a_timestamp_is_refused_as_not_offered():
    e = no_apop_engine()
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    # refused whatever its arguments, and no login is tried (nothing to
    # check a digest against): no Authenticate, no failure counted
    for line in (b"APOP joe " + b"0" * 32, b"APOP", b"apop joe xyz"):
        assert sent(e, line) == R.APOP_UNAVAILABLE.to_bytes()
    assert e.auth_failures == 0 and e.state is State.AUTHORIZATION
    # APOP still ends the earlier USER's turn (RFC 1939 7), as it does
    # where it is offered
    assert sent(e, b"PASS joepw") == R.PASS_WITHOUT_USER.to_bytes()
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    assert run(e, b"PASS joepw") == Authenticate("USER", "joe", b"joepw", "")


def test_the_plaintext_refusal_names_apop_only_where_it_is_offered():
    assert sent(engine(plaintext_allowed=False, tls_available=True), b"USER joe") == \
        R.PLAINTEXT_DISALLOWED.to_bytes()
    e = no_apop_engine(plaintext_allowed=False, tls_available=True)
    for line in (b"USER joe", b"AUTH PLAIN"):
        reply = sent(e, line)
        assert reply == R.PLAINTEXT_DISALLOWED_NO_APOP.to_bytes() and b"APOP" not in reply


@pytest.mark.parametrize("make, expected", [
    (engine, R.PLAINTEXT_DISALLOWED_NO_TLS),
    (no_apop_engine, R.PLAINTEXT_DISALLOWED_NO_TLS_NO_APOP),
])
def test_the_plaintext_refusal_names_stls_only_where_it_is_offered(make, expected):
    # without [tls] STLS answers "-ERR STLS is not available": the advice
    # to use it sent a client (or its user) to a command that fails
    e = make(plaintext_allowed=False)
    for line in (b"USER joe", b"AUTH PLAIN", b"AUTH PLAIN " + plain("", "joe", "pw")):
        reply = sent(e, line)
        assert reply == expected.to_bytes() and b"STLS" not in reply
        assert reply.startswith(b"-ERR [AUTH] Plaintext authentication is disallowed")
    assert sent(e, b"STLS") == R.STLS_UNAVAILABLE.to_bytes()


def test_an_unknown_mechanism_is_told_to_use_plain_only_where_plain_is_offered():
    # AUTH with no argument lists no mechanism where plaintext passwords
    # are refused; the refusal of another mechanism pointed at PLAIN,
    # which is then refused in turn
    for kw in ({"plaintext_allowed": False}, {"plaintext_allowed": False, "tls_available": True}):
        e = engine(**kw)
        assert sent(e, b"AUTH") == R.AUTH_MECHANISMS.to_bytes() + b".\r\n"
        reply = sent(e, b"AUTH CRAM-MD5")
        assert reply == R.AUTH_NO_MECHANISM.to_bytes() and b"PLAIN" not in reply
    assert sent(engine(), b"AUTH CRAM-MD5") == R.AUTH_UNKNOWN_MECHANISM.to_bytes()


def test_capa_says_nothing_of_apop_either_way():
    # RFC 2449 has no capability for APOP: the greeting's timestamp is how
    # a client learns of it, so CAPA is the same with and without
    for kw in ({}, {"tls_available": True}, {"plaintext_allowed": False}):
        with_apop = sent(engine(**kw), b"CAPA")
        assert sent(no_apop_engine(**kw), b"CAPA") == with_apop
        assert b"APOP" not in with_apop


# -- AUTH PLAIN (RFC 5034) -------------------------------------------------


def plain(authz: str, user: str, pw: str) -> bytes:
    return base64.b64encode(f"{authz}\0{user}\0{pw}".encode())


def test_auth_lists_mechanisms():
    e = engine()
    assert sent(e, b"AUTH") == R.AUTH_MECHANISMS.to_bytes() + b"PLAIN\r\n.\r\n"


def test_auth_plain_with_continuation():
    e = engine()
    assert sent(e, b"AUTH PLAIN") == b"+ \r\n"
    assert run(e, plain("", "joe", "pw")) == Authenticate("PLAIN", "joe", b"pw", TS)
    assert e.login_succeeded([]).data == R.logged_in(0, 0).to_bytes()


def test_auth_plain_initial_response_and_authzid_equal_to_user():
    e = engine()
    action = run(e, b"auth plain " + plain("joe", "joe", "p w"))
    assert action == Authenticate("PLAIN", "joe", b"p w", TS)


def test_auth_plain_other_authzid_is_a_failed_login():
    # the adapter fails it without asking the portal, after its look at
    # the address's failures (Authenticate.malformed)
    e = engine()
    action = run(e, b"AUTH PLAIN " + plain("root", "joe", "pw"))
    assert action == Authenticate("PLAIN", "joe", b"pw", TS, malformed=True)
    reply = e.login_failed(LoginFailure.BAD_CREDENTIALS)
    assert reply.data == R.AUTH_FAILED.to_bytes() and reply.delay > 0
    assert e.auth_failures == 1


def test_auth_plain_cancel_and_bad_data():
    e = engine()
    run(e, b"AUTH PLAIN")
    assert sent(e, b"*") == R.AUTH_CANCELLED.to_bytes()
    run(e, b"AUTH PLAIN")
    assert sent(e, b"!!notbase64!!") == R.AUTH_BAD_BASE64.to_bytes()
    assert sent(e, b"AUTH PLAIN " + base64.b64encode(b"joe\0pw")) == R.AUTH_BAD_PLAIN.to_bytes()
    assert sent(e, b"AUTH PLAIN =") == R.AUTH_BAD_PLAIN.to_bytes()
    assert sent(e, b"AUTH PLAIN " + plain("", "joe", "")) == R.AUTH_BAD_PLAIN.to_bytes()
    assert sent(e, b"AUTH PLAIN a b c") == R.bad_syntax(
        "AUTH mechanism [initial-response]").to_bytes()
    assert sent(e, b"AUTH PLAIN a b") == R.bad_syntax(
        "AUTH mechanism [initial-response]").to_bytes()
    assert sent(e, b"AUTH CRAM-MD5") == R.AUTH_UNKNOWN_MECHANISM.to_bytes()
    assert sent(e, "AUTH pla\u0131n".encode()) == R.AUTH_UNKNOWN_MECHANISM.to_bytes()
    assert e.auth_failures == 0


def test_auth_plain_equals_sign_is_an_empty_response_in_the_command_only():
    # RFC 5034 4: initial-response = base64 / "=", a continuation line is
    # [base64]: an empty response after the "+" is an empty line, and a
    # lone "=" there is no base64 (Dovecot 2.3 too calls it "Invalid base64
    # data in continued response", with [AUTH]; here -ERR without [AUTH]:
    # no credentials were given, so none failed, RFC 3206 4)
    e = engine()
    assert sent(e, b"AUTH PLAIN =") == R.AUTH_BAD_PLAIN.to_bytes()
    run(e, b"AUTH PLAIN")
    assert sent(e, b"=") == R.AUTH_BAD_BASE64.to_bytes()
    run(e, b"AUTH PLAIN")
    assert sent(e, b"") == R.AUTH_BAD_PLAIN.to_bytes()
    assert e.auth_failures == 0


def test_auth_plain_star_cancels_only_after_the_challenge():
    # RFC 5034 4: the client cancels with a "*" line in answer to a "+";
    # "AUTH PLAIN *" has an initial response that is no base64 (and is
    # logged as a malformed response, which a cancel is not)
    e = engine()
    assert sent(e, b"AUTH PLAIN *") == R.AUTH_BAD_BASE64.to_bytes()
    run(e, b"AUTH PLAIN")
    assert sent(e, b"*") == R.AUTH_CANCELLED.to_bytes()
    assert e.auth_failures == 0


def test_auth_plain_base64_is_strict_and_the_message_has_three_fields():
    # RFC 4648 3.3: characters outside the alphabet are rejected, not skipped;
    # RFC 4616 2: message = [authzid] NUL authcid NUL passwd, nothing more
    e = engine()
    good = plain("", "joe", "pw")
    assert sent(e, b"AUTH PLAIN " + good[:4] + b"!" + good[4:]) == R.AUTH_BAD_BASE64.to_bytes()
    four = base64.b64encode(b"\0joe\0pw\0more")
    assert sent(e, b"AUTH PLAIN " + four) == R.AUTH_BAD_PLAIN.to_bytes()
    assert e.auth_failures == 0


@pytest.mark.parametrize("message", [b"\0j\xf6e\0pw", b"r\xf6\0joe\0pw"],
                         ids=["authcid", "authzid"])
def test_auth_plain_names_not_in_utf8_are_a_bad_message_not_a_failed_login(message):
    # RFC 4616 2: authzid and authcid are UTF-8; Latin-1 bytes from a
    # client are a malformed message (not an exception), and count as no
    # failed login; the session goes on
    e = engine()
    assert sent(e, b"AUTH PLAIN " + base64.b64encode(message)) == R.AUTH_BAD_PLAIN.to_bytes()
    assert e.auth_failures == 0 and e.state is State.AUTHORIZATION
    action = run(e, b"AUTH PLAIN " + plain("", "joe", "pw"))
    assert action == Authenticate("PLAIN", "joe", b"pw", TS)


def test_auth_response_may_exceed_the_command_limit_but_not_forever():
    e = engine()
    run(e, b"AUTH PLAIN")
    long_pw = "p" * 400
    assert run(e, plain("", "joe", long_pw)).secret == long_pw.encode()
    e.login_failed(LoginFailure.BAD_CREDENTIALS)
    run(e, b"AUTH PLAIN")
    e.receive_data(b"A" * 10000 + b"\r\n")
    assert e.next_action().data == R.SASL_LINE_TOO_LONG.to_bytes()  # names its limit
    assert b"4096" in R.SASL_LINE_TOO_LONG.to_bytes()
    assert sent(e, b"NOOP").startswith(b"-ERR NOOP is not valid")  # not a SASL line


def test_an_initial_response_is_held_to_the_command_line_limit_but_a_continuation_is_not():
    # RFC 5034 4: a client MUST NOT send an initial response that would make
    # the AUTH command longer than RFC 2449's 255 octets; it sends the
    # response after the "+ " challenge instead, which may be longer
    e = engine()
    response = plain("", "joe", "p" * 200)
    assert len(b"AUTH PLAIN " + response) + 2 > 255
    assert sent(e, b"AUTH PLAIN " + response) == R.LINE_TOO_LONG.to_bytes()
    assert sent(e, b"AUTH PLAIN") == b"+ \r\n"  # the session goes on
    assert run(e, response) == Authenticate("PLAIN", "joe", b"p" * 200, TS)


def test_an_initial_response_past_the_command_line_limit_is_marked_as_a_malformed_one():
    # RFC 5034 4: the AUTH command stays within RFC 2449's 255 octets, so
    # the line is refused as any long one; it is an AUTH exchange that
    # ended on no SASL response, and the adapter logs it as one
    # (malformed_auth), as it logs a continuation line that is too long
    response = plain("", "joe", "p" * 200)
    for line in (b"AUTH PLAIN " + response, b"auth plain\t" + response,
                 b"AUTH PLAIN " + b"A" * 4000,
                 # dropped unread past 4096, but its head is kept (SMTP
                 # logs one at any length; this one left no line at all)
                 b"AUTH PLAIN " + b"A" * 5000, b"AUTH PLAIN " + b"A" * 100_000):
        assert run(engine(), line) == Send(R.LINE_TOO_LONG.to_bytes(), malformed_auth=True)
    # any other long line is only too long: no AUTH PLAIN, none possible
    # (no plaintext logins, another state)
    for e, line in ((engine(), b"NOOP " + response), (engine(), b"AUTH X " + response),
                    (engine(), b"AUTH PLAIN " + response + b" x"),
                    (engine(plaintext_allowed=False), b"AUTH PLAIN " + response),
                    (logged_in(), b"AUTH PLAIN " + response),
                    (engine(), b"NOOP " + b"A" * 5000),
                    (engine(), b"AUTH PLAIN" + b" " * 5000),
                    (engine(plaintext_allowed=False), b"AUTH PLAIN " + b"A" * 5000),
                    (logged_in(), b"AUTH PLAIN " + b"A" * 5000)):
        assert run(e, line) == Send(R.LINE_TOO_LONG.to_bytes()), line[:20]


def test_an_auth_line_with_more_words_is_not_marked_at_any_length():
    # "AUTH PLAIN x y" is a syntax error, no initial response, whatever
    # its length: a head of a line dropped unread that shows a third word
    # shows a line that has one, and marks it no more than the same line
    # of 300 octets is marked (it was: logged as a malformed response, and
    # a failed login of the address)
    for tail in (b"A" * 300, b"A" * 5000, b"A" * 100_000):
        for line in (b"AUTH PLAIN x " + tail, b"AUTH PLAIN " + b"A" * 100 + b" " + tail):
            assert run(engine(), line) == Send(R.LINE_TOO_LONG.to_bytes()), (line[:20], len(tail))


def test_an_auth_line_dropped_unread_is_marked_however_it_arrives():
    # a line past 4096 octets is dropped as it arrives, in any number of
    # reads: the mark comes from its first octets, kept on their own
    line = b"AUTH PLAIN " + b"A" * 9000 + b"\r\n"
    for size in (1, 7, 100, 4096, len(line)):
        e = engine()
        for i in range(0, len(line), size):
            e.receive_data(line[i:i + size])
        assert e.next_action() == Send(R.LINE_TOO_LONG.to_bytes(), malformed_auth=True), size
        e.receive_data(b"NOOP" + b"B" * 5000 + b"\r\n")  # the next one is its own
        assert e.next_action() == Send(R.LINE_TOO_LONG.to_bytes()), size


def test_line_reader_keeps_the_head_of_a_line_it_drops():
    # the first HEAD octets, never its line end, whether the line came in
    # one read (one block) or in many (dropped as it arrived)
    from txmailhub.pop3.lines import HEAD

    for feeds in ([b"X" * 20 + b"\r\nOK\r\n"], [b"X" * 12, b"X" * 8, b"\r\nOK\r\n"]):
        reader = LineReader(10)
        for data in feeds:
            reader.feed(data)
        assert reader.pop() is None
        # (as much as arrived before it reached the limit, up to HEAD)
        head = reader.dropped_head
        assert head == b"X" * len(head) and 10 <= len(head) <= 20
        assert reader.pop() == b"OK"
    reader = LineReader(4096)
    reader.feed(b"AUTH PLAIN " + b"A" * 5000)
    reader.feed(b"\r\n")
    assert reader.pop() is None
    assert reader.dropped_head == (b"AUTH PLAIN " + b"A" * 5000)[:HEAD]


def test_line_reader_keeps_rfc_2449s_255_octets_of_a_long_line_in_one_read():
    # RFC 2449's whole command line, and no more, also when the over-long
    # line came in one read with its line end (cut out of a block, not
    # dropped as it arrived); peek gives a line dropped as it arrived as
    # None, one kept in its block whole (the engine looks at the next
    # line's verb for sizes)
    line = b"AUTH PLAIN " + b"A" * 5000
    for feeds in ([line + b"\r\nSTAT\r\n"], [line, b"\r\nSTAT\r\n"]):
        reader = LineReader(4096)
        for data in feeds:
            reader.feed(data)
        assert reader.peek() == (line + b"\r" if len(feeds) == 1 else None)
        assert reader.pop() is None
        assert reader.dropped_head == line[:255]
        assert reader.peek() == b"STAT\r"
        assert reader.pop() == b"STAT"


# -- CAPA and STLS ---------------------------------------------------------


def capa_lines(data: bytes) -> list[str]:
    lines = data.decode().split("\r\n")
    assert lines[0] == str(R.CAPA_FOLLOWS) and lines[-2:] == [".", ""]
    return lines[1:-2]


def test_capa_exact_list_with_stls_when_tls_configured():
    e = engine(tls_available=True)
    assert capa_lines(sent(e, b"CAPA")) == [
        "TOP", "UIDL", "USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
        "EXPIRE NEVER", "UTF8 USER", "LANG", "STLS", "IMPLEMENTATION txmailhub",
    ]
    assert list(CAPABILITIES) == capa_lines(sent(e, b"capa"))


def test_capa_without_stls_when_unconfigured_or_active():
    for e in (engine(), engine(tls_available=True, tls_active=True)):
        assert "STLS" not in capa_lines(sent(e, b"CAPA"))
        assert "PIPELINING" in capa_lines(sent(e, b"CAPA"))


def test_capa_after_login_is_the_same_list():
    # RFC 2449 section 5: AUTHORIZATION-state capabilities in both states
    e = logged_in(tls_available=True)
    assert capa_lines(sent(e, b"CAPA")) == list(CAPABILITIES)
    assert sent(e, b"STLS").startswith(b"-ERR")


def test_numbers_may_have_any_number_of_digits():
    e = logged_in()
    action = run(e, b"RETR 0000000001")
    assert isinstance(action, Transmit) and action.index == 0
    assert sent(e, b"LIST 99999999999999999999") == R.NO_SUCH_MESSAGE.to_bytes()
    action = run(e, b"TOP 1 1234567890")
    assert isinstance(action, Transmit) and action.body_lines == 1234567890


def test_auth_plain_authzid_may_name_the_same_user_in_another_form():
    for authz in ("alice@example.org", "ALICE@Example.ORG", "alice", '"alice"',
                  '"Alice"@example.org'):
        e = engine(primary_domain="example.org")
        run(e, b"AUTH PLAIN")
        action = run(e, plain(authz, "alice", "pw"))
        assert action.username == "alice" and action.secret == b"pw", authz
    # the login name quoted, the authzid not: the same user (RFC 5321 4.1.2)
    e = engine(primary_domain="example.org")
    run(e, b"AUTH PLAIN")
    action = run(e, plain("alice", '"alice"', "pw"))
    assert action.username == '"alice"' and not action.malformed
    e = engine(primary_domain="example.org")
    run(e, b"AUTH PLAIN")
    assert run(e, plain("bob", "alice", "pw")).malformed  # acting as someone else


def test_capa_and_auth_hide_plaintext_mechanisms_where_refused():
    e = engine(plaintext_allowed=False, tls_available=True)
    assert capa_lines(sent(e, b"CAPA")) == [
        "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "UTF8",
        "LANG", "STLS", "IMPLEMENTATION txmailhub",
    ]
    assert sent(e, b"AUTH") == R.AUTH_MECHANISMS.to_bytes() + b".\r\n"


def test_stls_discards_pipelined_plaintext():
    e = engine(tls_available=True)
    e.receive_data(b"STLS\r\nUSER evil\r\n")
    assert e.next_action() == StartTLS(R.STLS_BEGIN.to_bytes())
    assert e.next_action() is None and e.finished and e.buffered == 0


def test_stls_refusals():
    assert sent(engine(), b"STLS") == R.STLS_UNAVAILABLE.to_bytes()
    e = engine(tls_available=True, tls_active=True)
    assert sent(e, b"STLS") == R.STLS_ALREADY_ACTIVE.to_bytes()
    assert sent(engine(tls_available=True), b"STLS now").startswith(b"-ERR Syntax")


# -- TRANSACTION -----------------------------------------------------------


def test_stat_list_uidl():
    e = logged_in()
    assert sent(e, b"stat") == b"+OK 3 439\r\n"
    assert sent(e, b"list") == (
        R.scan_listing(3, 439).to_bytes() + b"1 412\r\n2 20\r\n3 7\r\n.\r\n"
    )
    assert sent(e, b"LIST 2") == b"+OK 2 20\r\n"
    assert sent(e, b"UIDL") == (
        R.UIDL_FOLLOWS.to_bytes() + b"1 1000.a,S=10\r\n2 1001.b\r\n3 1002.c\r\n.\r\n"
    )
    assert sent(e, b"UIDL 3") == b"+OK 3 1002.c\r\n"


def test_seed_exchange_commands():
    e = engine()
    assert sent(e, b"user joe").startswith(b"+OK")
    assert isinstance(run(e, b"pass joepw"), Authenticate)
    e.login_succeeded([Info("u1", 412, "p")])
    assert sent(e, b"stat") == b"+OK 1 412\r\n"
    assert sent(e, b"list").endswith(b"\r\n1 412\r\n.\r\n")
    assert run(e, b"retr 1") == Transmit(0, 412, b"+OK 412 octets\r\n", None, True)


@pytest.mark.parametrize("cmd", [b"LIST", b"RETR", b"DELE", b"UIDL", b"TOP"])
@pytest.mark.parametrize(
    "arg,reply",
    [(b"0", R.NO_SUCH_MESSAGE), (b"4", R.NO_SUCH_MESSAGE), (b"x", R.INVALID_NUMBER),
     (b"-1", R.INVALID_NUMBER), (b"+1", R.INVALID_NUMBER),
     (b"99999999999999999999", R.NO_SUCH_MESSAGE)],
)
def test_bad_message_numbers(cmd, arg, reply):
    e = logged_in()
    line = cmd + b" " + arg + (b" 1" if cmd == b"TOP" else b"")
    assert sent(e, line) == reply.to_bytes()


@pytest.mark.parametrize("line", [b"RETR", b"RETR 1 2", b"DELE", b"TOP 1", b"TOP 1 2 3",
                                  b"LIST 1 2", b"UIDL 1 2", b"STAT x", b"NOOP x", b"RSET x"])
def test_missing_or_extra_arguments(line):
    e = logged_in()
    assert sent(e, line).startswith(b"-ERR Syntax: ")


@pytest.mark.parametrize("logged", [False, True])
@pytest.mark.parametrize("line", [b"CAPA x", b"QUIT x", b"quit now", b"CAPA  TOP"])
def test_capa_and_quit_refuse_an_argument_as_noop_does(line, logged):
    # RFC 2449 5 (CAPA) and RFC 1939 5, 6 (QUIT): "Arguments: none", as for
    # NOOP, STAT and RSET, whose arguments the hub refuses; CAPA x listed
    # the capabilities and QUIT x logged out (deleting what DELE marked)
    e = logged_in() if logged else engine()
    state = e.state
    assert sent(e, line) == R.bad_syntax(line[:4].upper().decode()).to_bytes()
    assert e.state is state and not e.finished
    # the same commands without an argument (trailing blanks are none)
    assert sent(e, b"CAPA \t").startswith(R.CAPA_FOLLOWS.to_bytes())
    action = run(e, b"QUIT ")
    assert isinstance(action, Update if logged else Send)


def test_top_line_count_must_be_a_number():
    e = logged_in()
    assert sent(e, b"TOP 1 x") == R.INVALID_LINE_COUNT.to_bytes()
    assert sent(e, b"TOP 1 -1") == R.INVALID_LINE_COUNT.to_bytes()
    assert run(e, b"TOP 2 0") == Transmit(1, 20, R.TOP_FOLLOWS.to_bytes(), 0, False)


def test_dele_hides_the_message_and_rset_brings_it_back():
    e = logged_in()
    assert sent(e, b"DELE 1") == R.deleted(1).to_bytes()
    for line in (b"DELE 1", b"RETR 1", b"LIST 1", b"UIDL 1", b"TOP 1 0"):
        assert sent(e, line) == R.MESSAGE_DELETED.to_bytes()
    assert sent(e, b"STAT") == b"+OK 2 27\r\n"
    assert b"\r\n1 " not in sent(e, b"LIST")
    assert b"1000.a" not in sent(e, b"UIDL")
    # the numbers themselves, not R.reset() again: the RFC 1939 5 example
    # reply is "+OK maildrop has 2 messages (320 octets)" (count, then size)
    assert sent(e, b"RSET") == b"+OK Maildrop has 3 messages (439 octets)\r\n"
    assert sent(e, b"LIST 1") == b"+OK 1 412\r\n"
    assert sent(e, b"NOOP") == b"+OK\r\n"


def test_quit_in_transaction_enters_update_with_the_marks():
    e = logged_in()
    run(e, b"DELE 3")
    run(e, b"DELE 1")
    assert run(e, b"QUIT") == Update((0, 2))
    assert e.state is State.UPDATE
    e.receive_data(b"NOOP\r\n")
    assert e.update_finished(True) == Send(R.bye_updated(1).to_bytes(), close=True)
    assert e.next_action() is None


def test_quit_with_failed_update():
    e = logged_in()
    run(e, b"DELE 1")
    assert run(e, b"QUIT") == Update((0,))
    assert e.update_finished(False) == Send(R.UPDATE_FAILED.to_bytes(), close=True)
    assert b"[SYS/TEMP]" in R.UPDATE_FAILED.to_bytes()


def test_quit_with_an_update_that_needs_the_administrator():
    # RFC 3206 4: [SYS/PERM] when the failure will not go away by itself
    # (the hub may not remove files there); the session still ends
    e = logged_in()
    run(e, b"DELE 1")
    assert run(e, b"QUIT") == Update((0,))
    assert e.update_finished(False, permanent=True) == Send(
        R.UPDATE_FAILED_PERM.to_bytes(), close=True)
    assert R.UPDATE_FAILED_PERM.to_bytes() == (
        b"-ERR [SYS/PERM] Some deleted messages were not removed\r\n")
    assert e.next_action() is None


def test_quit_in_authorization_never_enters_update():
    e = engine()
    assert run(e, b"quit") == Send(R.BYE.to_bytes(), close=True)
    assert e.state is State.AUTHORIZATION


def test_empty_mailbox():
    e = logged_in(messages=[])
    assert sent(e, b"STAT") == b"+OK 0 0\r\n"
    assert sent(e, b"LIST") == R.scan_listing(0, 0).to_bytes() + b".\r\n"
    assert sent(e, b"RETR 1") == R.NO_SUCH_MESSAGE.to_bytes()
    assert run(e, b"QUIT") == Update(())


def test_replies_never_leak_python_names():
    e = logged_in()
    for line in (b"RETR \x00", b"TOP \xff \xff", b"LIST \xc3\xa9", b"DELE 1e3", b"\x00"):
        data = sent(e, line)
        assert data.startswith(b"-ERR ") and b"Error" not in data and b"Traceback" not in data


def test_reply_rendering():
    assert R.err("x", "IN-USE").to_bytes() == b"-ERR [IN-USE] x\r\n"
    assert R.ok().to_bytes() == b"+OK\r\n"
    assert str(R.AUTH_FAILED) == "-ERR [AUTH] Authentication failed"


def test_engine_is_sans_io():
    import subprocess
    import sys

    code = ("import sys, txmailhub.pop3.server; "
            "print(sorted(m for m in sys.modules if m.startswith('twisted.internet')))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("octets", [0, 7, 1100, 10**9])
def test_retr_status_line_is_the_catalog_reply(octets):
    assert R.retr_line(octets) == R.retr(octets).to_bytes()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
                  st.sampled_from([b"\r\n", b"\n"])),
        max_size=6,
    ),
    st.lists(st.integers(min_value=1, max_value=9), max_size=8),
)
def test_line_reader_gives_the_same_lines_for_any_split(lines, cuts):
    """Whole CRLF lines (the fast path), LF lines, over-long lines, and
    lines split anywhere: one result."""
    limit = 10
    data = b"".join(body + end for body, end in lines)
    expected = []
    for body, end in lines:
        raw = body + end[:-1]  # what precedes the LF
        expected.append(None if len(raw) >= limit else raw.removesuffix(b"\r"))
    reader = LineReader(limit)
    pos = 0
    for cut in cuts:
        reader.feed(data[pos:pos + cut])
        pos += cut
    reader.feed(data[pos:])
    # ``lines`` gives them as ``pop`` will, none taken, from any point
    assert list(reader.lines()) == expected
    got = []
    while reader.has_line:
        assert list(reader.lines()) == expected[len(got):]
        got.append(reader.pop())
    assert got == expected
    assert list(reader.lines()) == []


def test_line_reader_holds_pipelined_lines_in_about_their_own_size():
    """A client that pipelines tiny commands (``AB`` LF: one -ERR each,
    without end) and never reads the answers: what one 64 KiB read holds
    must cost about 64 KiB, not a bytes object per line (about 1 MiB, for
    every connection of such a client)."""
    payload = b"AB\n" * (65536 // 3)
    reader = LineReader(4096)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        reader.feed(payload)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 * len(payload)
    assert reader.buffered == len(payload)
    assert reader.pop() == b"AB"
    assert reader.buffered == len(payload) - 3


def test_actions_are_immutable():
    t = Transmit(0, 412, b"+OK 412 octets\r\n", None, True)
    s = Send(b"+OK\r\n")
    for action, field in ((t, "index"), (s, "data")):
        with pytest.raises(AttributeError):
            setattr(action, field, 1)
    assert t == Transmit(0, 412, b"+OK 412 octets\r\n", None, True)
    assert t != Transmit(1, 412, b"+OK 412 octets\r\n", None, True)


@pytest.mark.parametrize("line", ["LIST ٢", "RETR ٢", "DELE ٢", "UIDL ٢", "TOP ٢ 1"])
def test_message_numbers_are_ascii_digits_only(line):  # ٢: ARABIC-INDIC DIGIT TWO
    e = logged_in()
    assert sent(e, line.encode()) == R.INVALID_NUMBER.to_bytes()
    assert sent(e, "TOP 1 ٢".encode()) == R.INVALID_LINE_COUNT.to_bytes()


def test_line_reader_counts_a_partial_line_once_and_clear_forgets_it():
    """``buffered`` (the adapter's INPUT_LIMIT looks at it) counts each octet
    held once, a partial line's too; ``clear`` (STLS) leaves nothing, not
    even the start of a line that would prefix the first line after it."""
    reader = LineReader(4096)
    reader.feed(b"STAT\r\nLI")
    assert reader.buffered == 8
    reader.feed(b"ST\r\nUI")
    assert reader.buffered == 14
    assert reader.pop() == b"STAT"
    assert reader.buffered == 8
    reader.clear()
    assert reader.buffered == 0 and not reader.has_line
    reader.feed(b"CAPA\r\n")
    assert reader.pop() == b"CAPA"


def test_line_reader_clear_in_the_middle_of_a_block_or_of_a_long_line():
    """``clear`` leaves the reader as a new one wherever it stands: half
    way through a block of pipelined lines (the next line then starts at
    the first octet fed after it), or while the rest of an over-long line
    is being dropped (the next line is then kept, not dropped with it)."""
    reader = LineReader(16)
    reader.feed(b"STLS\r\nUSER evil\r\n")
    assert reader.pop() == b"STLS"
    reader.clear()
    reader.feed(b"CAPA\r\n")
    assert reader.pop() == b"CAPA" and not reader.has_line
    reader.feed(b"X" * 40)  # no LF yet: being dropped
    reader.clear()
    reader.feed(b"CAPA\r\n")
    assert reader.pop() == b"CAPA" and not reader.has_line


def test_line_reader_drops_a_partial_line_once_it_reaches_the_limit():
    """The module's rule: a line *reaching* ``limit`` octets is never kept,
    so a partial line of exactly ``limit`` octets holds nothing (its line
    is then answered as too long); one octet less is still held."""
    reader = LineReader(10)
    reader.feed(b"X" * 9)
    assert reader.buffered == 9
    reader.feed(b"X")
    assert reader.buffered == 0
    reader.feed(b"\r\nNOOP\r\n")
    assert reader.pop() is None and reader.pop() == b"NOOP"


# -- RFC 6856: UTF8, LANG, UTF-8 user names ----------------------------------


def test_capa_lists_utf8_with_its_user_argument_and_lang():
    assert "UTF8 USER" in CAPABILITIES and "LANG" in CAPABILITIES
    # USER is not offered where plaintext passwords are refused: nor is its
    # UTF-8 form; the UTF8 command itself still is
    caps = capa_lines(sent(engine(plaintext_allowed=False), b"CAPA"))
    assert "UTF8" in caps and "UTF8 USER" not in caps


def test_utf8_before_login_then_retr_and_top_may_carry_utf8_headers():
    e = engine()
    assert sent(e, b"UTF8") == R.UTF8_ENABLED.to_bytes()
    assert sent(e, b"utf8") == R.UTF8_ENABLED.to_bytes()  # again: still on
    logged_in_after(e)
    assert run(e, b"RETR 1") == Transmit(0, 412, b"+OK 412 octets\r\n", None, True, True)
    assert run(e, b"RETR  1").utf8  # the slower path too
    assert run(e, b"TOP 2 0") == Transmit(1, 20, R.TOP_FOLLOWS.to_bytes(), 0, False, True)


def test_without_utf8_retr_and_top_ask_for_ascii_headers():
    e = logged_in()
    assert run(e, b"RETR 1").utf8 is False
    assert run(e, b"TOP 1 0").utf8 is False


def test_sizes_from_size_of_for_list_stat_and_rset_not_for_the_login_reply():
    # RFC 6857 downgrading changes what RETR sends to a client without
    # UTF8; the adapter says how much, and LIST, STAT and RSET report it
    e = engine()
    assert sent(e, b"USER joe") == R.USER_ACCEPTED.to_bytes()
    run(e, b"PASS joepw")
    asked = []

    def size_of(index: int) -> int:
        asked.append(index)
        return MESSAGES[index].size + (30 if index == 1 else 0)

    # the login reply reads no message: stored sizes
    assert e.login_succeeded(MESSAGES, size_of).data == R.logged_in(3, 439).to_bytes()
    assert asked == []
    assert sent(e, b"LIST 2") == R.scan_line(2, 50).to_bytes()
    assert sent(e, b"STAT") == R.stat(3, 469).to_bytes()
    assert sent(e, b"LIST").endswith(b"1 412\r\n2 50\r\n3 7\r\n.\r\n")
    sent(e, b"DELE 1")
    assert sent(e, b"STAT") == R.stat(2, 57).to_bytes()
    assert sent(e, b"RSET") == R.reset(3, 469).to_bytes()
    # RETR names the stored size; the adapter makes the line again when it
    # sends a downgraded copy
    assert run(e, b"RETR 2") == Transmit(1, 20, b"+OK 20 octets\r\n", None, True, False)


def test_utf8_only_in_the_authorization_state_and_without_argument():
    e = engine()
    assert sent(e, b"UTF8 now") == R.bad_syntax("UTF8").to_bytes()
    assert e.utf8 is False
    e = logged_in()
    assert sent(e, b"UTF8") == R.wrong_state("UTF8", "TRANSACTION").to_bytes()
    assert e.utf8 is False and run(e, b"RETR 1").utf8 is False


def test_stls_forgets_utf8_mode():
    # RFC 2595 4: the client starts afresh under TLS; the adapter builds a
    # new engine, and UTF-8 mode is something the client asks for again
    e = engine(tls_available=True)
    sent(e, b"UTF8")
    assert isinstance(run(e, b"STLS"), StartTLS)
    assert engine(tls_active=True).utf8 is False


def test_lang_lists_english_and_selects_it_by_rfc_4647_lookup():
    for e in (engine(), logged_in(max_errors=100)):  # both states
        assert sent(e, b"LANG") == R.LANG_FOLLOWS.to_bytes() + b"en English\r\n.\r\n"
        for arg in (b"en", b"EN", b"en-GB", b"en-US-x-private", b"*", b"i-default"):
            assert sent(e, b"LANG " + arg) == R.language_selected("en", "English").to_bytes()
        for arg in (b"fr", b"de-CH", b"eng", b"i-klingon"):
            assert sent(e, b"LANG " + arg) == R.LANG_UNKNOWN.to_bytes(), arg
        for arg in (b"en fr", b"en_GB", b"-en", b"en-", b"toolonglang", b"*-en",
                    "\u00e9n".encode()):
            assert sent(e, b"LANG " + arg) == R.bad_syntax("LANG [language-range]").to_bytes()
    assert R.language_selected("en", "English").to_bytes().startswith(b"+OK en ")


def test_utf8_user_names_are_nfc_before_and_after_utf8():
    decomposed = "jo\u0308rg@example.org".encode()
    for prefix in (b"", b"UTF8\r\n"):
        e = engine()
        e.receive_data(prefix)
        if prefix:
            e.next_action()
        assert sent(e, b"USER " + decomposed) == R.USER_ACCEPTED.to_bytes()
        action = run(e, "PASS p\u00e4ss w\u00f6rd".encode())
        assert action == Authenticate("USER", "j\u00f6rg@example.org",
                                      "p\u00e4ss w\u00f6rd".encode(), TS)


@pytest.mark.parametrize("name", [
    b"\xff\xfe",  # not UTF-8
    b"bob\x01",  # an ASCII control (RFC 3454 C.2.1)
    "bo\u0085b".encode(),  # a non-ASCII control (C.2.2)
    "bob\ue000".encode(),  # private use (C.3)
    "bob\ufdd0".encode(),  # a non-character (C.4)
    "bob\u202e".encode(),  # a display property change: RLO (C.8)
    "bob\U000e0041".encode(),  # a tag (C.9)
    "bob\u3000x".encode(),  # a non-ASCII space (C.1.2)
    "\u05d0bob".encode(),  # right-to-left then left-to-right (RFC 3454 6)
])
def test_user_names_saslprep_prohibits_are_refused(name):
    e = engine()
    assert sent(e, b"USER " + name) == R.BAD_USER_NAME.to_bytes()
    assert sent(e, b"PASS x") == R.PASS_WITHOUT_USER.to_bytes()
    assert e.auth_failures == 0  # no credentials were judged
    # APOP's digest is a password's: a failed login, as AUTH PLAIN's below
    # (APOP splits at SP only: U+3000 is part of the name)
    if name != b"\xff\xfe":
        action = run(e, b"APOP " + name + b" " + b"0" * 32)
        assert action == Authenticate("APOP", name.decode(), b"0" * 32, TS,
                                      unusable_name=True)
        failed = e.login_failed(LoginFailure.BAD_CREDENTIALS)
        assert failed.data == R.BAD_USER_NAME.to_bytes() and failed.delay > 0
        assert e.auth_failures == 1
        e = engine()
    run(e, b"AUTH PLAIN")
    raw = b"\0" + name + b"\0pw"
    if name != b"\xff\xfe":  # (not UTF-8 at all: a malformed PLAIN response)
        # a password came with it: a failed login (RFC 4954 4), judged
        # without the portal, counted and delayed, that still says why
        action = run(e, base64.b64encode(raw))
        assert action == Authenticate("PLAIN", name.decode(), b"pw", TS, unusable_name=True)
        failed = e.login_failed(LoginFailure.BAD_CREDENTIALS)
        assert failed.data == R.BAD_USER_NAME.to_bytes() and failed.delay > 0
        assert e.auth_failures == 1


def test_right_to_left_names_whole_are_accepted():
    e = engine()
    # a name that starts and ends right-to-left and has no left-to-right letter
    assert sent(e, "USER \u05d0\u05d1\u05d2".encode()) == R.USER_ACCEPTED.to_bytes()


def test_a_right_to_left_local_part_in_a_latin_domain_logs_in():
    # the bidi rule holds for the local part and each domain label: the
    # users file, SMTP AUTH and `mailhub user` all take this address
    e = engine()
    assert sent(e, "USER \u05d0\u05d1@example.org".encode()) == R.USER_ACCEPTED.to_bytes()
    action = run(e, b"PASS pw")
    assert isinstance(action, Authenticate) and action.username == "\u05d0\u05d1@example.org"
    e = engine()
    run(e, b"AUTH PLAIN")
    action = run(e, plain("", "\u0645\u0631\u062d\u0628\u0627@example.org", "pw"))
    assert isinstance(action, Authenticate)
    # a local part that breaks the rule on its own is still refused
    e = engine()
    assert sent(e, "USER \u05d0b@example.org".encode()) == R.BAD_USER_NAME.to_bytes()


def test_apop_and_auth_plain_names_are_nfc():
    e = engine()
    action = run(e, "APOP jo\u0308rg ".encode() + b"a" * 32)
    assert action.username == "j\u00f6rg"
    e = engine()
    run(e, b"AUTH PLAIN")
    action = run(e, plain("", "jo\u0308rg", "pw"))
    assert action.username == "j\u00f6rg"
    e = engine(primary_domain="example.org")
    run(e, b"AUTH PLAIN")  # the authzid compares in NFC too
    action = run(e, plain("j\u00f6rg", "jo\u0308rg", "pw"))
    assert isinstance(action, Authenticate) and action.username == "j\u00f6rg"


# -- the blanks of a command line are SP (and HTAB) -----------------------
#
# RFC 1939 3: keywords and arguments are "separated by a single SPACE
# character" (runs of them and tabs are taken); what else str.split() and
# str.strip() take for white space is part of a word, never a separator.
ODD_BLANKS = ("\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000")


@pytest.mark.parametrize("blank", ODD_BLANKS)
def test_message_arguments_are_not_split_at_another_blank(blank):
    e = logged_in(max_errors=100)
    b = blank.encode()
    for verb in (b"LIST", b"UIDL", b"DELE", b"RETR"):
        assert sent(e, verb + b" 1" + b) == R.INVALID_NUMBER.to_bytes(), verb
        assert sent(e, verb + b" " + b + b"1") == R.INVALID_NUMBER.to_bytes(), verb
    assert sent(e, b"TOP 1" + b + b"0") == R.bad_syntax("TOP message lines").to_bytes()
    assert sent(e, b"DELE 1" + b + b"2") == R.INVALID_NUMBER.to_bytes()
    assert e.deleted == frozenset()
    # spaces and tabs are blanks
    assert isinstance(run(e, b"TOP\x201\t\t0\t"), Transmit)
    assert sent(e, b"LIST \t2 ") == R.scan_line(2, 20).to_bytes()


@pytest.mark.parametrize("blank", ODD_BLANKS)
def test_commands_without_arguments_take_no_other_blank(blank):
    e = logged_in()
    b = blank.encode()
    for verb in (b"STAT", b"NOOP", b"RSET"):
        assert sent(e, verb + b" " + b) == R.bad_syntax(verb.decode()).to_bytes(), verb
        assert sent(e, verb + b" \t") != R.bad_syntax(verb.decode()).to_bytes(), verb
    e = engine(tls_available=True)
    assert sent(e, b"UTF8 " + b) == R.bad_syntax("UTF8").to_bytes()
    assert sent(e, b"STLS " + b) == R.bad_syntax("STLS").to_bytes()
    assert isinstance(run(e, b"STLS \t"), StartTLS)


@pytest.mark.parametrize("blank", ODD_BLANKS)
def test_a_login_name_is_not_cut_or_trimmed_at_another_blank(blank):
    b = blank.encode()
    e = engine()
    # USER: the name as given, which a user name may not hold
    assert sent(e, b"USER joe" + b) == R.BAD_USER_NAME.to_bytes()
    assert sent(e, b"USER " + b + b"joe") == R.BAD_USER_NAME.to_bytes()
    assert sent(e, b"USER jo\te") == R.bad_syntax("USER name").to_bytes()
    # APOP: no name and digest split at it
    digest = b"c4c9334bac560ecc979e58001b3e22fb"
    assert sent(e, b"APOP joe" + b + digest) == R.bad_syntax("APOP name digest").to_bytes()
    assert isinstance(run(e, b"APOP joe\t" + digest), Authenticate)


@pytest.mark.parametrize("blank", ODD_BLANKS)
def test_auth_plain_initial_response_is_not_split_at_another_blank(blank):
    e = engine()
    assert sent(e, b"AUTH PLAIN" + blank.encode() + plain("", "joe", "pw")) == (
        R.AUTH_UNKNOWN_MECHANISM.to_bytes())
    assert e.auth_failures == 0


def test_the_size_hint_reads_the_verb_as_the_engine_does():
    # next_needs_sizes must not take "STAT<VT>" for STAT: the engine does not
    e = engine()
    run(e, b"USER joe")
    run(e, b"PASS joepw")
    e.login_succeeded(MESSAGES, lambda i: 1)  # a login whose sizes may read the disk
    e.receive_data(b"STAT\x0b\r\n")
    assert not e.next_needs_sizes()
    e.next_action()
    e.receive_data(b"STAT\r\n")
    assert e.next_needs_sizes()


@pytest.mark.parametrize("data, waits", [
    (b"NOOP\r\nLIST\r\n", False),
    (b"NOOP\r\nquit\r\nLIST\r\n", True),
    (b"RETR 1\nQuit\n", True),  # a bare LF ends a line too
    (b"QUIT now\r\nQUIT\r\n", True),  # the first is refused (an argument)
    (b"QUIT", False),  # no line end: never handled
    (b"QUITS\r\nQUIT\x0b\r\n", False),  # the verb is cut at SP only
    (b"QUIT" + b" " * 5000 + b"\r\n", False),  # too long: dropped, -ERR
    (b"", False),
])
def test_a_quit_among_the_buffered_lines_is_seen(data, waits):
    # quit_waits: whether the lines buffered hold a QUIT to come, read as
    # next_action reads them (the adapter lets the lock go after the
    # client's end of data when none does)
    e = logged_in()
    e.receive_data(data)
    assert e.quit_waits() is waits
    actions = []
    while e.has_line and not any(isinstance(a, Update) for a in actions):
        actions.append(e.next_action())  # (none after the QUIT's Update)
    assert any(isinstance(a, Update) for a in actions) is waits
    assert not e.quit_waits()  # handled (no more commands then), or none


@pytest.mark.parametrize(("data", "waits"), [
    (b"NOOP\r\nrset\r\n", True),
    (b"RSET\r\nQUIT\r\n", True),
    (b"RSETX\r\nNOOP\r\n", False),
    (b"NOOP\r\nRSET", False),  # no line end: no command
    (b"", False),
])
def test_an_rset_among_the_buffered_lines_is_seen(data, waits):
    # rset_waits: the adapter makes no seen flags before an RSET to come,
    # which takes them back
    e = logged_in()
    e.receive_data(data)
    assert e.rset_waits() is waits
    assert e.quit_waits() is (b"QUIT" in data)


@pytest.mark.parametrize("response", [b" {}", b"{} ", b"\t{}", b"{}\t", b"\x0b{}", b"{}\x0c",
                                      b"{}\r", b"\r{}", b"{}\x00", b"{}\xc2\xa0"])
def test_an_auth_continuation_line_is_base64_and_nothing_else(response):
    # RFC 5034 4 (as RFC 4954 4 for SMTP): a character outside the base64
    # alphabet is refused, not ignored -- a blank around it or a bare CR
    # before the CRLF too (SMTP's AUTH answers such a line 501)
    e = engine()
    assert run(e, b"AUTH PLAIN") == Send(b"+ \r\n")
    line = response.replace(b"{}", plain("", "joe", "pw"))
    assert sent(e, line) == R.AUTH_BAD_BASE64.to_bytes()
    assert e.auth_failures == 0
    # the initial response as well: an odd blank after it is part of it
    if line.endswith((b"\x0b", b"\x0c")):
        assert sent(e, b"AUTH PLAIN " + line) == R.AUTH_BAD_BASE64.to_bytes()
    # "*" cancels, exactly as it is
    assert run(e, b"AUTH PLAIN") == Send(b"+ \r\n")
    assert sent(e, b"*") == R.AUTH_CANCELLED.to_bytes()
    assert run(e, b"AUTH PLAIN") == Send(b"+ \r\n")
    assert sent(e, b" *") == R.AUTH_BAD_BASE64.to_bytes()
    assert run(e, b"AUTH PLAIN") == Send(b"+ \r\n")
    assert run(e, plain("", "joe", "pw")) == Authenticate("PLAIN", "joe", b"pw", TS)


# -- a bound on refused commands after login (max_errors) -----------------


def test_refused_commands_after_login_close_the_session_at_max_errors():
    # before login every line counts (PRE_LOGIN_LINES); after it the
    # commands refused with -ERR do, or a client sending only garbage was
    # held by the autologout alone (each refusal restarting it)
    e = logged_in(max_errors=4)
    assert sent(e, b"DELE 1") == R.deleted(1).to_bytes()
    for line in (b"XYZZY", b"STLS", b"RETR 9"):
        assert sent(e, line).startswith(b"-ERR")
        assert sent(e, b"NOOP") == R.NOOP.to_bytes()  # good ones do not count
    assert e.errors == 3
    action = run(e, b"LIST x")
    assert action == Send(R.TOO_MANY_ERRORS.to_bytes(), close=True)
    assert e.finished and e.next_action() is None
    assert e.state is State.TRANSACTION  # no UPDATE: nothing is deleted


def test_refusals_before_login_are_bounded_by_the_line_count_not_max_errors():
    e = engine(max_errors=2)
    for _ in range(5):
        assert sent(e, b"STAT") == R.wrong_state("STAT", "AUTHORIZATION").to_bytes()
    e = logged_in_after(e)
    assert e.errors == 0
    assert sent(e, b"USER joe") == R.wrong_state("USER", "TRANSACTION").to_bytes()
    assert run(e, b"USER joe") == Send(R.TOO_MANY_ERRORS.to_bytes(), close=True)


def test_the_default_bound_is_ten_as_for_smtp():
    from txmailhub.pop3.server import MAX_ERRORS

    assert MAX_ERRORS == 10
    e = logged_in()
    for _ in range(MAX_ERRORS - 1):
        assert sent(e, b"FOO") == R.UNKNOWN_COMMAND.to_bytes()
    assert run(e, b"FOO") == Send(R.TOO_MANY_ERRORS.to_bytes(), close=True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(numbers=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       seps=st.lists(st.text(st.sampled_from(" \t"), min_size=1, max_size=3), min_size=4,
                     max_size=4),
       odd=st.sampled_from(ODD_BLANKS), spoil=st.booleans())
def test_property_arguments_are_the_words_between_spaces_and_tabs(numbers, seps, odd, spoil):
    # DELE's arguments are what SP/HTAB runs separate, and nothing else:
    # one number marks that message; two are a syntax error; a number with
    # another blank next to it is no number, and marks nothing
    words = [str(n) for n in numbers]
    if spoil:
        words[0] += odd
    line = "DELE" + " " + "".join(s + w for s, w in zip(seps, words)) + seps[-1]
    e = logged_in(max_errors=100)
    reply = sent(e, line.encode())
    if len(words) > 1:
        assert reply == R.bad_syntax("DELE message").to_bytes()
    elif spoil:
        assert reply == R.INVALID_NUMBER.to_bytes()
    else:
        assert reply == R.deleted(numbers[0]).to_bytes()
    assert e.deleted == (frozenset() if spoil or len(words) > 1 else {numbers[0] - 1})


def test_line_reader_counts_the_heads_kept_of_dropped_lines_as_held():
    # each over-long line that waits keeps up to HEAD octets: buffered
    # counts them, so the adapter's input limit stops reading a client
    # that sends over-long lines without end while its session is busy
    from txmailhub.pop3.lines import HEAD

    reader = LineReader(4096)
    for _ in range(100):
        reader.feed(b"AUTH PLAIN " + b"A" * 5000)
        reader.feed(b"\r\n")
    assert reader.buffered == 100 * HEAD
    assert reader.pop() is None
    assert reader.buffered == 99 * HEAD


def test_auth_plain_authzid_of_a_bare_quoted_name_with_an_at_sign_is_that_user():
    # '"a@b"' is a bare local part (the '@' is inside the quotes, RFC 5321
    # 4.1.2): the user "a@b" at the primary domain, as the login name
    # '"a@b"@example.org' is -- not the local part '"a' at the domain 'b"'
    for authz, authc in (('"a@b"', '"a@b"@example.org'), ('"a@b"@example.org', '"a@b"'),
                         ("a;", '"a;"'), ('"a;"@Example.org', "a;")):
        e = engine(primary_domain="example.org")
        run(e, b"AUTH PLAIN")
        action = run(e, plain(authz, authc, "pw"))
        assert not action.malformed and action.username == authc, (authz, authc)
