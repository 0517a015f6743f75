"""RFC bounds on MAIL and RCPT, live over 127.0.0.1 with smtplib.

The engine's tests (test_smtp_server.py, test_smtp_parse.py, test_users.py)
drive each bound byte by byte; here a real hub and Python's smtplib see
the replies: RFC 5321 4.5.3.1.10's "501 Path too long" for a path over 256
octets between its brackets, and 501 5.5.4 for an RFC 3461 ORCPT over 500
characters (4.2) or an ENVID over 100 (4.4), each refusing one command
of a transaction that goes on; and a users file line written with a
quoted local part RCPT gives unquoted (RFC 5321 4.1.2), which gets the
mail of that name and logs in over POP3 by either spelling.
"""

from __future__ import annotations

import poplib
import smtplib

BODY = b"Subject: bounds\r\n\r\nbody\r\n"


def test_paths_orcpt_and_envid_over_their_bounds_are_refused_the_rest_delivered(make_hub):
    hub = make_hub()
    over = "s" * 245 + "@remote.test"  # 257 octets
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail(over) == (501, b"5.1.7 Path too long")
        assert s.mail("s@remote.test", ["ENVID=" + "e" * 101]) == (
            501, b"5.5.4 Invalid parameter value")
        assert s.mail(over[1:], ["ENVID=" + "e" * 100])[0] == 250  # 256 octets
        assert s.rcpt("a" * 245 + "@example.org") == (501, b"5.1.3 Path too long")
        orcpt = "rfc822;" + "o" * 493  # 500 characters
        assert s.rcpt("alice@example.org", ["NOTIFY=NEVER", f"ORCPT={orcpt}x"]) == (
            501, b"5.5.4 Invalid parameter value")
        assert s.rcpt("alice@example.org", ["NOTIFY=NEVER", f"ORCPT={orcpt}"])[0] == 250
        assert s.data(BODY)[0] == 250
    (message,) = hub.messages("alice@example.org")
    assert b"bounds" in message


def test_a_users_file_line_written_quoted_gets_the_mail_rcpt_names_it_by(make_hub):
    # '"q"@example.org' written by hand: RCPT TO:<"q"@...> is q (RFC 5321
    # 4.1.2); the line kept its quotes and was looked up by nobody (550)
    hub = make_hub(start=False)
    users = hub.folder / "users"
    text = users.read_text()
    alice = next(line for line in text.splitlines() if line.startswith("alice@"))
    users.write_text(text + alice.replace("alice@", '"q"@', 1) + "\n")
    hub.start()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("s@remote.test")[0] == 250
        assert s.rcpt('"q"@example.org')[0] == 250
        assert s.rcpt("Q@example.org")[0] == 250  # the same mailbox: one copy
        assert s.data(BODY)[0] == 250
    assert len(hub.messages("q@example.org")) == 1
    for name in ('"q"', "q@example.org"):
        p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
        p.user(name)
        assert p.pass_("alice-secret").startswith(b"+OK"), name
        assert p.stat()[0] == 1, name
        p.quit()
