"""The SMTP server's limits and trace words, live over 127.0.0.1.

Unit tests drive these with fake transports and clocks; here a real hub
(``twistd mailhub`` in a subprocess) and real clients (smtplib, poplib, a
raw socket) go through them: the connection limits (``[smtp]
max_connections`` and ``max_connections_per_client``), the login
throttle (``max_auth_failures``, ``auth_failure_delay`` and the
failed-login window SMTP AUTH shares with POP3), and the ``with`` word of
the Received field for each way of sending (RFC 3848, RFC 6531 3.7.3).

Loopback clients are spared the per-client limits, so those tests run the
hub through ``offnet_twistd.py``: the same hub, taking 127.0.0.1 for a
client off the machine.  Nothing here measures time: the limits are
counts, and the delay is configured tiny.
"""

from __future__ import annotations

import base64
import poplib
import re
import smtplib
import socket
import ssl
import sys
import time
from pathlib import Path

import abnf_smtp as G
import pytest
from interop import tls_context

from txmailhub.smtp.received import tls_cipher_clause_name

OFFNET = [sys.executable, str(Path(__file__).with_name("offnet_twistd.py"))]
ALICE, ALICE_PW = "alice@example.org", "alice-secret"


def plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def greeting(port: int) -> tuple[socket.socket, bytes]:
    """A connection to ``port`` and the first reply line it gets."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.makefile("rb").readline()


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closes ``s`` after what it sent (EOF, or a reset)."""
    try:
        rest = s.recv(4096)
        while rest and s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def admitted_again(port: int, attempts: int = 200) -> tuple[socket.socket, bytes]:
    """Connect until the hub admits the connection (a closed connection's
    slot comes back once the hub has seen the close, which may be after a
    new connection was accepted: the hub's start-up probes, a session
    just quit); bounded by ``attempts``."""
    for _ in range(attempts):
        s, line = greeting(port)
        if line.startswith(b"220"):
            return s, line
        s.close()
        time.sleep(0.02)
    raise AssertionError(f"not admitted after {attempts} attempts: {line!r}")


# --- connection limits ---------------------------------------------------------------


def test_the_per_client_connection_limit_refuses_the_next_connection(make_hub):
    hub = make_hub(sections={"smtp": {"relay_networks": [], "max_connections_per_client": 3}},
                   launcher=OFFNET)
    # the hub takes this client for one off the machine: no AUTH without TLS
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
    # (admitted_again: the hub's start-up probes and the session above may
    # not be gone from its counts yet; once three are admitted, they are)
    held = [admitted_again(hub.smtp_port) for _ in range(3)]
    # the fourth, on either SMTP listener (they share the counts): 421 and close
    for port in (hub.smtp_port, hub.submission_port):
        s, line = greeting(port)
        assert line == (b"421 4.7.0 mail.example.org Too many connections from your address,"
                        b" try again later\r\n")
        assert closed_by_server(s)
        s.close()
    # POP3 keeps counts of its own
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    p.quit()
    # a session that ends gives its slot back, and only one
    s, _ = held.pop()
    s.sendall(b"QUIT\r\n")
    assert s.makefile("rb").readline().startswith(b"221 ")
    assert closed_by_server(s)
    s.close()
    s, line = admitted_again(hub.smtp_port)
    held.append((s, line))
    s, line = greeting(hub.smtp_port)
    assert line.startswith(b"421 4.7.0 ")
    s.close()
    for s, _ in held:
        s.close()
    log = hub.log_text()
    assert log.count("refused connection from 127.0.0.1: 421 4.7.0 mail.example.org Too many"
                     " connections from your address") >= 3
    assert "Traceback" not in log


def test_loopback_is_spared_the_per_client_limit_not_the_total(make_hub):
    # docs/configuration.rst: max_connections_per_client exempts loopback
    # and relay_networks; max_connections counts every connection
    hub = make_hub(sections={"smtp": {"max_connections_per_client": 2, "max_connections": 4}})
    # four from one client where it may have two: admitted (once the
    # hub's start-up probes are gone from its counts)
    held = [admitted_again(hub.smtp_port) for _ in range(4)]
    s, line = greeting(hub.submission_port)
    assert line == (b"421 4.3.2 mail.example.org Too many connections, try again later\r\n")
    assert closed_by_server(s)
    s.close()
    for s, _ in held:
        s.close()


# --- the login throttle ----------------------------------------------------------------


def _starttls_session(hub) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10)
    s.ehlo("client.test")
    assert not s.has_extn("auth")  # off the machine: AUTH only under TLS
    s.starttls(context=tls_context(hub.folder / "tls" / "cert.pem"))
    s.ehlo("client.test")
    assert "PLAIN" in s.esmtp_features["auth"]
    return s


def test_failed_logins_are_answered_closed_and_throttled_across_connections(make_hub):
    hub = make_hub(tls=True, sections={
        "smtp": {"relay_networks": [], "max_auth_failures": 3, "auth_failure_delay": 0.01},
        "pop3": {"allow_plaintext_auth": True},
    }, launcher=OFFNET)
    # max_auth_failures: each wrong password is 535; the third closes (421)
    for _ in range(3):
        s = _starttls_session(hub)
        assert [s.docmd("AUTH", plain(ALICE, "wrong"))[0] for _ in range(3)] == [535] * 3
        code, text = s.getreply()
        assert (code, text) == (421, b"4.7.0 mail.example.org Too many authentication "
                                     b"failures, closing connection")
        s.close()
    # 9 failures so far: the 10th fills the window (10 in 10 minutes),
    # an empty response too (501 5.5.2 at once, counted as a failed login
    # of the address: garbage between guesses is no free try) ...
    s = _starttls_session(hub)
    assert s.docmd("AUTH", "PLAIN")[0] == 334
    assert s.docmd("")[0:2] == (501, b"5.5.2 Empty or malformed authentication response")
    # ... and the right password is then refused without a check
    assert s.docmd("AUTH", plain(ALICE, ALICE_PW)) == (
        454, b"4.7.0 Too many failed logins from your address, try again later")
    s.close()
    # on a new connection too, and in POP3, which shares the window
    s = _starttls_session(hub)
    assert s.docmd("AUTH", plain(ALICE, ALICE_PW))[0] == 454
    s.close()
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    p.user(ALICE)
    with pytest.raises(poplib.error_proto, match="Too many failed logins"):
        p.pass_(ALICE_PW)
    p.close()
    log = hub.log_text()
    assert log.count("authentication failed for alice@example.org from 127.0.0.1") == 9
    assert log.count("malformed authentication response from 127.0.0.1 (PLAIN)") == 1
    assert log.count("authentication refused for alice@example.org from 127.0.0.1: "
                     "too many failures") == 2
    assert "Traceback" not in log


def test_loopback_logins_are_not_throttled_across_connections(make_hub):
    # docs/smtp.rst: the window spares loopback; each connection still
    # closes after max_auth_failures
    hub = make_hub(sections={"smtp": {"max_auth_failures": 3, "auth_failure_delay": 0.01}})
    for _ in range(4):
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
            s.ehlo("client.test")
            assert [s.docmd("AUTH", plain(ALICE, "wrong"))[0] for _ in range(3)] == [535] * 3
            assert s.getreply()[0] == 421
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.docmd("AUTH", plain(ALICE, ALICE_PW))[0] == 235


# --- the Received field's "with" word ---------------------------------------------------

# (way, EHLO or HELO, STARTTLS, AUTH, SMTPUTF8) -> the word (RFC 3848, RFC 6531 3.7.3)
WAYS = {
    "helo": ("helo", False, False, False, "SMTP"),
    "plain": ("ehlo", False, False, False, "ESMTP"),
    "tls": ("ehlo", True, False, False, "ESMTPS"),
    "auth": ("ehlo", False, True, False, "ESMTPA"),
    "tlsauth": ("ehlo", True, True, False, "ESMTPSA"),
    "utf8": ("ehlo", False, False, True, "UTF8SMTP"),
    "utf8tls": ("ehlo", True, False, True, "UTF8SMTPS"),
    "utf8auth": ("ehlo", False, True, True, "UTF8SMTPA"),
    "utf8tlsauth": ("ehlo", True, True, True, "UTF8SMTPSA"),
}
_WITH = re.compile(rb"\n\tby mail\.example\.org \(txmailhub\) with (\S+)( \(TLSv1\.[23] "
                   rb"cipher \S+\))?\n")


def _send(hub, way: str, hello: str, tls: bool, auth: bool, utf8: bool, port: int,
          implicit: bool = False, tls12: bool = False) -> None:
    cls = smtplib.SMTP_SSL if implicit else smtplib.SMTP
    context = tls_context(hub.folder / "tls" / "cert.pem")
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    kw = {"context": context} if implicit else {}
    with cls("127.0.0.1", port, timeout=10, **kw) as s:
        if hello == "helo":
            assert s.helo("client.test")[0] == 250
        else:
            s.ehlo("client.test")
            if tls:
                s.starttls(context=context)
                s.ehlo("client.test")
            if auth:
                assert s.docmd("AUTH", plain(ALICE, ALICE_PW))[0] == 235
        options = ["SMTPUTF8"] if utf8 else []
        assert s.mail("carol@example.net", options)[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        assert s.data(f"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{way}@c.test>\r\n"
                      f"Subject: way {way}\r\n\r\nhi\r\n".encode())[0] == 250


def test_the_received_with_word_for_each_way_of_sending(make_hub):
    hub = make_hub(tls=True)
    for way, (hello, tls, auth, utf8, _word) in WAYS.items():
        _send(hub, way, hello, tls, auth, utf8, hub.smtp_port)
    # implicit TLS (RFC 8314) is TLS as STARTTLS is: ESMTPSA, UTF8SMTPSA
    _send(hub, "smtps", "ehlo", False, True, False, hub.smtps_port, implicit=True)
    _send(hub, "utf8smtps", "ehlo", False, True, True, hub.smtps_port, implicit=True)
    # the submission port with STARTTLS (RFC 6409, RFC 8314 3.3)
    _send(hub, "submission", "ehlo", True, True, False, hub.submission_port)
    # a client that stops at TLS 1.2: OpenSSL names its suite its own way
    _send(hub, "tls12", "ehlo", True, False, False, hub.smtp_port, tls12=True)
    # and so on the submission port (STARTTLS) and with implicit TLS
    _send(hub, "tls12sub", "ehlo", True, True, False, hub.submission_port, tls12=True)
    _send(hub, "tls12smtps", "ehlo", False, True, False, hub.smtps_port, implicit=True,
          tls12=True)
    expected = {way: (w[4], w[1]) for way, w in WAYS.items()}
    expected["tls12"] = ("ESMTPS", True)
    expected["tls12sub"] = ("ESMTPSA", True)
    expected["tls12smtps"] = ("ESMTPSA", True)
    expected["smtps"] = ("ESMTPSA", True)
    expected["utf8smtps"] = ("UTF8SMTPSA", True)
    expected["submission"] = ("ESMTPSA", True)
    got = {}
    for message in hub.messages(ALICE):
        way = re.search(rb"\nSubject: way (\S+)\n", message).group(1).decode()
        head = message.split(b"\n\n", 1)[0] + b"\n"
        m = _WITH.search(head)
        assert m, message[:400]
        got[way] = (m.group(1).decode(), m.group(2) is not None)
        # RFC 8314 4.3: over TLS the cipher suite is in the "tls" clause
        # too, the one the comment names; the field is RFC 5321 4.4 grammar
        field = re.search(rb"Received: .*?; [^\n]+\n", head, re.DOTALL).group()
        G.received_field(field, utf8=b"UTF8SMTP" in m.group(1))
        clause = re.search(rb"\n\ttls (\S+); ", field)
        if m.group(2) is None:
            assert clause is None, field
        else:
            assert clause is not None, field
            cipher = m.group(2).rsplit(b" cipher ", 1)[1][:-1].decode()
            assert clause.group(1).decode() == tls_cipher_clause_name(cipher), field
            if way.startswith("tls12"):  # the registry's name, not OpenSSL's ECDHE-...
                assert b"TLSv1.2 cipher ECDHE-" in m.group(2), field
                assert clause.group(1).startswith(b"TLS_ECDHE_"), field
    assert got == expected
    assert "Traceback" not in hub.log_text()
