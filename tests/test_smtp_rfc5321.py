"""RFC 5321 clause by clause: the server-side requirements the other
engine tests did not show on their own (the order of commands, the forms
a command may take).  Each test names its clause."""

from __future__ import annotations

from test_smtp_server import Driver, tx

from txmailhub.smtp import replies
from txmailhub.smtp.server import MessageComplete, State


def test_ehlo_in_a_transaction_resets_it_as_rset_would():
    # 4.1.4: an EHLO later in the session "MUST clear all buffers and reset
    # the state exactly as if a RSET command had been issued"
    d = Driver()
    tx(d)
    assert d.codes("EHLO c.test\r\n") == ["250"]
    assert d.engine.state is State.READY
    assert d.send("RCPT TO:<bob>\r\n") == [replies.MAIL_NEEDED.text()]
    assert d.codes("MAIL FROM:<s@x.test>\r\n") == ["250"]  # a new transaction may start


def test_a_refused_ehlo_leaves_the_state_as_it_was():
    # 4.1.4: "The SMTP server MUST stay in the same state after
    # transmitting these replies that it was in before the EHLO was received"
    d = Driver()
    tx(d)
    assert d.send("EHLO\r\n") == [replies.HELO_SYNTAX.text()]
    assert d.engine.state is State.RCPT
    assert d.codes("RCPT TO:<bob>\r\nDATA\r\n") == ["250", "354"]
    d.send("Subject: x\r\n\r\nx\r\n.\r\n")
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert len(done.envelope.recipients) == 2


def test_noop_help_expn_vrfy_and_rset_need_no_ehlo():
    # 4.1.4: "SMTP servers SHOULD process these normally (that is, not
    # return a 503 code) even if no EHLO command has yet been received"
    d = Driver()
    assert d.codes("NOOP\r\nHELP\r\nEXPN list\r\nVRFY alice\r\nRSET\r\n") == [
        "250", "214", "250", "250", "250"]
    assert d.engine.state is State.INIT  # RSET does not stand for a greeting
    assert d.send("MAIL FROM:<s@x.test>\r\n") == [replies.HELO_REQUIRED.text()]


def test_helo_gets_no_extended_reply():
    # 3.2: "Servers MUST NOT return the extended EHLO-style response to a
    # HELO command"
    d = Driver()
    assert d.send("HELO c.test\r\n") == ["250 mx.example.org Hello c.test, pleased to meet you"]


def test_trailing_white_space_is_tolerated():
    # 4.1.1: "SMTP receivers SHOULD tolerate trailing white space before
    # the terminating <CRLF>" -- also on the commands that take no argument
    d = Driver()
    assert d.codes("EHLO c.test \r\nMAIL FROM:<s@x.test>  \r\nRCPT TO:<alice>\t\r\n"
                   "DATA \r\n") == ["250", "250", "250", "354"]
    assert d.codes("x\r\n.\r\nRSET \t\r\nNOOP \r\nQUIT \r\n") == ["250", "250", "250", "221"]


def test_source_routes_are_accepted_and_ignored():
    # 4.1.1.3 and appendix C / F.2: servers "MUST recognize source route
    # syntax but SHOULD strip off the source route"; 3.6.1: the reverse-
    # path at delivery is the MAIL address without it
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<@a.example,@b.example:s@x.test>\r\n") == [
        "250 2.1.0 <s@x.test>... Sender OK"]
    assert d.send("RCPT TO:<@hosta.int,@jkl.org:alice@example.org>\r\n") == [
        "250 2.1.5 <alice@example.org>... Recipient OK"]
    assert d.codes("DATA\r\nx\r\n.\r\n") == ["354", "250"]
    (done,) = [e for e in d.events if isinstance(e, MessageComplete)]
    assert str(done.envelope.sender) == "s@x.test"
    assert [str(r) for r in done.envelope.recipients] == ["alice@example.org"]


def test_quit_in_a_transaction_answers_221_and_drops_it():
    # 4.1.1.10: QUIT "may be issued at any time.  Any current uncompleted
    # mail transaction will be aborted"; the receiver "MUST send a 221"
    d = Driver()
    tx(d)
    assert d.send("QUIT\r\n") == ["221 2.0.0 mx.example.org closing connection"]
    assert d.engine.closed
    assert not any(isinstance(e, MessageComplete) for e in d.events)


def test_every_command_gets_exactly_one_reply():
    # 4.2: "Every command MUST generate exactly one reply", whatever it is
    d = Driver()
    commands = ["EHLO c.test", "FOO", "", "MAIL FROM:<s@x.test>", "MAIL FROM:<s@x.test>",
                "RCPT TO:<nobody>", "RCPT TO:<alice>", "VRFY alice", "EXPN list",
                "HELP", "NOOP x", "RSET x", "TURN", "SEND FROM:<s@x.test>", "RSET"]
    replies_seen = d.codes("".join(c + "\r\n" for c in commands))
    assert len(replies_seen) == len(commands)


def test_vrfy_finds_the_path_outside_a_quoted_local_part():
    # the path's '<' was found with rindex: VRFY <"a<b"@example.org> looked
    # up b"@example.org, a syntax error (501), for the user "a<b"
    from txmailhub.testing import StaticRouter

    d = Driver(router=StaticRouter({'"a<b"': None, "alice": None},
                                   domains=("example.org",)))
    d.send("EHLO c.test\r\n")
    assert d.send('VRFY <"a<b"@example.org>\r\n') == ['250 2.1.5 <"a<b"@example.org>']
    assert d.send('VRFY "Joe <x>" <"a<b"@example.org>\r\n') == [
        '250 2.1.5 <"a<b"@example.org>']
    assert d.send("VRFY Full Name <alice@example.org>\r\n") == [
        "250 2.1.5 <alice@example.org>"]


def test_vrfy_and_expn_take_a_quoted_string_as_rcpt_does():
    # 4.1.1.6: "VRFY" SP String, and String is an Atom or a Quoted-string;
    # 4.1.2: a quoted local part names what its unquoted form names, and
    # RCPT takes "alice" as alice.  VRFY looked the quotes up as part of the
    # name (550 for alice, who exists) and refused a quoted name with a
    # space in it as a syntax error (501) instead of looking it up.
    d = Driver()
    d.send("EHLO c.test\r\n")
    assert d.send('VRFY "alice"\r\n') == ["250 2.1.5 <alice@example.org>"]
    assert d.send('VRFY <"al\\ice"@example.org>\r\n') == ["250 2.1.5 <alice@example.org>"]
    assert d.send('EXPN "list"\r\n') == d.send("EXPN list\r\n")
    assert d.send('VRFY "Full Name"\r\n') == [replies.UNKNOWN_USER.text()]
    assert d.send('VRFY "x y"@remote.test\r\n') == [replies.CANNOT_VRFY.text()]
    # what is no Quoted-string is still a syntax error
    assert d.codes('VRFY "alice\r\nVRFY "a"b\r\nVRFY "a\x01"\r\n') == ["501"] * 3
    assert d.send("MAIL FROM:<s@x.test>\r\n" 'RCPT TO:<"alice">\r\n')[-1] == (
        "250 2.1.5 <alice@example.org>... Recipient OK")
