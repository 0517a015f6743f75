"""Internationalized domains and local parts over loopback: one domain and
one mailbox however a client spells them (A-label or U-label, composed or
decomposed), with smtplib, poplib and the ``mailhub`` command."""

from __future__ import annotations

import base64
import poplib
import smtplib

NFC, NFD = "j\u00f6rg", "jo\u0308rg"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"



def pop3_count(port: int, login: str, password: str) -> int:
    """How many messages a POP3 login (USER/PASS) as ``login`` sees."""
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        pop.user(login)
        pop.pass_(password)
        return pop.stat()[0]
    finally:
        pop.quit()

def test_an_idn_domain_and_its_a_label_are_one_domain(make_hub):
    hub = make_hub(users={"alice@example.org": "pw", "bob@b\u00fccher.example": "pw",
                          f"{NFC}@b\u00fccher.example": "pw"},
                   sections={"hub": {"domains": ["example.org", "b\u00fccher.example"]}})
    box = hub.state_dir / "mail" / "b\u00fccher.example"
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        # a server without SMTPUTF8 can only send the A-label (RFC 6531 3.2)
        assert s.sendmail("x@remote.test", ["Bob@XN--BCHER-KVA.example",
                                            "postmaster@xn--bcher-kva.example"], MESSAGE) == {}
        # a decomposed local part is the composed one's mailbox
        assert s.sendmail("x@remote.test", [f"{NFD}@xn--bcher-kva.example"], MESSAGE,
                          mail_options=["SMTPUTF8"]) == {}
        s.mail("x@remote.test")
        code, text = s.rcpt("nobody@xn--bcher-kva.example")
        assert code == 550 and b"5.1.1" in text
    assert len(list((box / "bob" / "new").iterdir())) == 1
    assert len(list((box / NFC / "new").iterdir())) == 1
    assert not (box / NFD).exists()
    assert not (hub.state_dir / "mail" / "xn--bcher-kva.example").exists()
    assert len(hub.messages("postmaster@example.org")) == 1  # no such user: the primary's

    # a POP3 login in either spelling opens the one mailbox
    for login in (f"{NFD}@xn--bcher-kva.example", f"{NFC.upper()}@B\u00dcCHER.example"):
        assert pop3_count(hub.pop3_port, login, "pw") == 1, login

    # the command line: the A-label is a local domain, a decomposed
    # duplicate of a user is that user
    done = hub.mailhub("user", "add", "carl@xn--bcher-kva.example", "--password-stdin",
                       input="idn-lantern-frost\n")
    assert done.returncode == 0, done.stderr
    done = hub.mailhub("user", "add", f"{NFD}@b\u00fccher.example", "--password-stdin",
                       input="idn-lantern-frost\n")
    assert done.returncode == 1 and "already exists" in done.stderr, done.stderr
    listed = hub.mailhub("user", "list").stdout.split()
    assert "carl@b\u00fccher.example" in listed and f"{NFC}@b\u00fccher.example" in listed


def test_a_domain_configured_as_its_a_label_takes_bare_names_without_smtputf8(make_hub):
    # the config's A-label is the same domain as its U-label: a bare
    # RCPT TO:<postmaster> (RFC 5321 4.5.1) must not need SMTPUTF8, VRFY
    # answers in ASCII, and the trace field of a plain message stays ASCII
    hub = make_hub(users={"bob@xn--bcher-kva.example": "pw"},
                   sections={"hub": {"domains": ["xn--bcher-kva.example"]}})
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.verify("bob") == (250, b"2.1.5 <bob@xn--bcher-kva.example>")
        s.mail("x@remote.test")
        assert s.rcpt("postmaster")[0] == 250
        assert s.rcpt("bob")[0] == 250
        s.rset()
        assert s.sendmail("x@remote.test", ["bob"], MESSAGE) == {}
    (stored,) = [m for m in (hub.state_dir / "mail" / "b\u00fccher.example" / "bob" / "new")
                 .iterdir()]
    head = stored.read_bytes().split(b"\n\n", 1)[0]
    assert head.isascii() and b"for <bob@xn--bcher-kva.example>" in head, head


def test_a_name_nfc_makes_punctuation_logs_in_to_the_mailbox_smtp_delivers_to(make_hub):
    # U+037E, the Greek question mark, is ";" in NFC: the user a\u037e is
    # keyed '"a;"' (the quoted string its NFC form needs), and RCPT TO:<a\u037e>
    # delivers there.  POP3 prepared the login name in NFC before it was
    # keyed, a; -- another name, whose key has no quotes: USER a\u037e was
    # refused while SMTP AUTH of the same name logged in
    name = "a\u037e"
    hub = make_hub(users={f"{name}@example.org": "pw"})
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.sendmail("x@remote.test", [name], MESSAGE, mail_options=["SMTPUTF8"]) == {}
    assert len(list((hub.state_dir / "mail" / "example.org" / '"a;"' / "new").iterdir())) == 1
    with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=10) as s:
        s.ehlo("client.test")
        plain = base64.b64encode(f"\0{name}\0pw".encode()).decode()
        assert s.docmd("AUTH", f"PLAIN {plain}")[0] == 235
    for login in (name, f"{name}@example.org", '"a;"'):
        assert pop3_count(hub.pop3_port, login, "pw") == 1, login


def test_names_that_need_quotes_log_in_as_typed_and_get_their_mail(make_hub):
    # USER "\u05e9\u05dc\u05d5\u05dd" (a Hebrew name in quotes) was refused
    # by the right-to-left rule, the quote taken for the name's first
    # character; a users file line a;@... written by hand was keyed a;,
    # which RCPT TO:<"a;"@...> (the only way to name it) missed, while a
    # login as a; opened a Maildir of its own
    from conftest import settle

    hebrew = "\u05e9\u05dc\u05d5\u05dd"
    hub = make_hub(users={f"{hebrew}@example.org": "pw", "x@example.org": "pw"})
    users = hub.folder / "users"
    line = users.read_text().splitlines()[-1]
    assert line.startswith("x@example.org ")
    users.write_text(users.read_text() + "a;" + line[1:] + "\n")
    settle(users)
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("x@remote.test", ["SMTPUTF8"])[0] == 250
        for rcpt in ('"a;"@example.org', f'"{hebrew}"@example.org'):
            assert s.docmd("RCPT", f"TO:<{rcpt}>")[0] == 250, rcpt
        assert s.data(MESSAGE)[0] == 250
    for login in ("a;", '"a;"@example.org', f'"{hebrew}"', hebrew):
        assert pop3_count(hub.pop3_port, login, "pw") == 1, ascii(login)
    box = hub.state_dir / "mail" / "example.org"
    assert len(list((box / '"a;"' / "new").iterdir())) == 1
    assert not (box / "a;").exists()
