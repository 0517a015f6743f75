"""Postfix, as a real MTA, submits through the hub's submission listener
with SMTP AUTH (RFC 4954, RFC 6409): the hub as its authenticated
smarthost (``relayhost``, ``smtp_sasl_auth_enable``).

A private Postfix instance per test (postfix_peer.py; root only).  Mail
goes in through an smtpd of its own on a UNIX socket in its queue folder
(no port to race for), as from a machine of the LAN it relays for:
``local_header_rewrite_clients`` is empty, so Postfix adds no ``Date`` or
``Message-ID`` of its own (its sendmail's mail would get both), and what
the hub adds as the MSA shows.  Its client SASL is Cyrus's (PLAIN and
LOGIN from libsasl2-modules), the password in a ``texthash`` map.

Checked: AUTH over STARTTLS (``smtp_tls_security_level = encrypt``) and
in cleartext on loopback (the hub offers AUTH without TLS to a loopback
client only, docs/smtp.rst); the Received field's ``ESMTPSA`` /
``ESMTPA``; ``Date`` and ``Message-ID`` added to a message without them,
a message with its own left alone; a remote recipient queued for the
relay (AUTH is what allows it); without AUTH, ``530 5.7.0`` to MAIL; a
wrong password: Postfix defers the mail with the hub's ``535`` as the
reason, and the hub logs one failed login.
"""

from __future__ import annotations

import re
import smtplib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from interop import ALICE, ALICE_PW, fetch_poplib, hub_log_is_clean
from postfix_peer import SKIP_MARKS, Postfix

pytestmark = SKIP_MARKS

#: the machine of the LAN whose mail Postfix relays (its From, its HELO)
LAN_SENDER = "alice@example.org"
REMOTE = "dave@remote.test"

#: the smtpd the test's mail goes in through: a UNIX socket, public/inject
INJECT_SERVICE = "inject    unix  n       -       n       -       -       smtpd\n"

WITHOUT_IDS = (b"From: Alice <alice@example.org>\r\nTo: alice@example.org\r\n"
               b"Subject: interop submission without-ids\r\n\r\nno Date, no Message-ID\r\n")
WITH_IDS = (b"From: Alice <alice@example.org>\r\nTo: alice@example.org\r\n"
            b"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            b"Message-ID: <own.id@lan.example.org>\r\n"
            b"Subject: interop submission with-ids\r\n\r\nher own Date and Message-ID\r\n")


class Submitter:
    """A private Postfix that relays through the hub's ``port`` with AUTH
    as ``login`` (``None``: no AUTH)."""

    def __init__(self, port: int, login: tuple[str, str] | None, **settings: str) -> None:
        etc = "$config_directory"
        main = {
            "relayhost": f"[127.0.0.1]:{port}",
            # the LAN's mail: no header the MSA is to add is added here
            "local_header_rewrite_clients": "",
            # smtpd's client on a UNIX socket is 127.0.0.1, in mynetworks
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            **settings,
        }
        if login is not None:
            main.update({
                "smtp_sasl_auth_enable": "yes",
                "smtp_sasl_password_maps": f"texthash:{etc}/sasl_passwd",
                "smtp_sasl_security_options": "noanonymous",
            })
        self.pf = Postfix.make(main, INJECT_SERVICE)
        try:
            if login is not None:
                secrets = self.pf.etc / "sasl_passwd"
                secrets.write_text(f"[127.0.0.1]:{port} {login[0]}:{login[1]}\n")
                secrets.chmod(0o600)
            self.pf.start()
        except BaseException:
            self.pf.remove()
            raise

    def inject(self, data: bytes, sender: str, *recipients: str) -> None:
        """One message into Postfix's smtpd, as a LAN machine sends it."""
        path = self.pf.spool / "public" / "inject"
        deadline = time.monotonic() + 30
        while not path.exists():  # made by the master as it starts
            assert time.monotonic() < deadline, self.pf.log_text()[-3000:]
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(path))
        client = smtplib.SMTP()
        client.sock = sock
        try:
            code, greeting = client.getreply()
            assert code == 220, greeting
            client.ehlo("lan.example.org")
            client.sendmail(sender, list(recipients), data)
            client.quit()
        finally:
            client.close()


@pytest.fixture
def make_submitter() -> Iterator[Callable[..., Submitter]]:
    made: list[Submitter] = []

    def factory(port: int, login: tuple[str, str] | None, **settings: str) -> Submitter:
        s = Submitter(port, login, **settings)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.pf.remove()


def wait_until(check: Callable[[], bool], pf: Postfix, hub, timeout: float = 60.0) -> None:
    # seconds here; the margin is for a loaded machine, where Postfix's
    # daemons start slowly
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError((pf.queue(), pf.log_text()[-4000:], hub.log_text()[-3000:]))
        time.sleep(0.1)


def header_section(message: bytes) -> list[bytes]:
    """The header fields, each unfolded."""
    head = message.split(b"\r\n\r\n", 1)[0]
    return re.sub(rb"\r\n[ \t]", b" ", head).split(b"\r\n")


def fields(message: bytes, name: bytes) -> list[bytes]:
    prefix = name.lower() + b":"
    return [f for f in header_section(message) if f.lower().startswith(prefix)]


def submitted(hub, sub: Submitter) -> dict[str, bytes]:
    """Alice's two messages, by subject, once Postfix's queue is empty (read
    over POP3: as a mail client sees them)."""
    wait_until(lambda: len(hub.message_files(ALICE)) == 2
               and "Mail queue is empty" in sub.pf.queue(), sub.pf, hub)
    return {m.split(b"Subject: interop submission ", 1)[1].split(b"\r\n", 1)[0].decode(): m
            for m in fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)}


def assert_the_msa_fields(got: dict[str, bytes], hub) -> None:
    """``Date`` and ``Message-ID`` added to the message without them, at
    the end of its header section, and the other one left as it came."""
    bare = got["without-ids"]
    [date] = fields(bare, b"Date")
    [msgid] = fields(bare, b"Message-ID")
    assert re.fullmatch(rb"Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000", date), date
    assert re.fullmatch(rb"Message-ID: <[\w.]+@mail\.example\.org>", msgid), msgid
    assert header_section(bare)[-2:] == [date, msgid], header_section(bare)
    # the queue id of the Received field's id clause is the Message-ID's left part
    [received] = [f for f in fields(bare, b"Received") if b"mail.example.org (txmailhub)" in f]
    queue_id = re.search(rb" id ([^\s;]+)", received)[1]
    assert msgid.startswith(b"Message-ID: <" + queue_id + b"."), (msgid, received)
    head, body = WITHOUT_IDS.split(b"\r\n\r\n", 1)
    assert bare.endswith(b"\r\n%s\r\n%s\r\n%s\r\n\r\n%s" % (head, date, msgid, body)), bare
    own = got["with-ids"]
    assert fields(own, b"Date") == [b"Date: Sun, 29 Nov 2026 12:00:00 +0000"]
    assert fields(own, b"Message-ID") == [b"Message-ID: <own.id@lan.example.org>"]
    assert own.endswith(b"\r\n" + WITH_IDS), own  # under the trace fields, as it came
    hub_log_is_clean(hub.log_text())


def assert_queued_for(hub, recipient: str) -> None:
    """The remote recipient's copy waits in the hub's queue (no DNS here)."""
    listing = hub.mailhub("queue", "list")
    assert listing.returncode == 0, listing.stderr
    [line] = [line for line in listing.stdout.splitlines() if recipient in line]
    assert line.split()[1:3] == [LAN_SENDER, recipient], line  # the local copy is stored


def test_postfix_submits_with_auth_over_starttls(make_hub, make_submitter):
    hub = make_hub(tls=True)
    sub = make_submitter(hub.submission_port, (ALICE, ALICE_PW),
                         smtp_tls_security_level="encrypt", smtp_tls_loglevel="1")
    sub.inject(WITHOUT_IDS, LAN_SENDER, ALICE, REMOTE)
    sub.inject(WITH_IDS, LAN_SENDER, ALICE)
    got = submitted(hub, sub)
    for m in got.values():
        assert b" with ESMTPSA (TLSv1.3 " in m, m[:800]
        assert m.startswith(f"Return-Path: <{LAN_SENDER}>\r\n".encode()), m[:300]
    assert_the_msa_fields(got, hub)
    assert_queued_for(hub, REMOTE)
    log = hub.log_text()
    logins = re.findall(r"127\.0\.0\.1 authenticated as alice@example\.org \((\w+), TLSv1\.3\)",
                        log)
    assert logins and set(logins) <= {"PLAIN", "LOGIN"}, log[-3000:]
    assert "authentication failed" not in log
    pflog = sub.pf.wait_log("TLS connection established to 127.0.0.1", "status=sent")
    assert "status=deferred" not in pflog, pflog[-3000:]


def test_postfix_submits_with_auth_in_cleartext_on_loopback(make_hub, make_submitter):
    """Without TLS on the hub, AUTH is offered to a loopback client only,
    and Postfix (``smtp_tls_security_level = none``) logs in in clear."""
    hub = make_hub()
    sub = make_submitter(hub.submission_port, (ALICE, ALICE_PW))
    sub.inject(WITHOUT_IDS, LAN_SENDER, ALICE, REMOTE)
    sub.inject(WITH_IDS, LAN_SENDER, ALICE)
    got = submitted(hub, sub)
    for m in got.values():
        assert b" with ESMTPA id " in m or b" with ESMTPA\r\n" in m, m[:800]
    assert_the_msa_fields(got, hub)
    assert_queued_for(hub, REMOTE)
    assert re.search(r"127\.0\.0\.1 authenticated as alice@example\.org \((PLAIN|LOGIN)\)\n",
                     hub.log_text()), hub.log_text()[-3000:]


def deferred_for(sub: Submitter, hub, reason: str) -> str:
    """Postfix's queue once it has deferred the message for ``reason``."""
    wait_until(lambda: reason in sub.pf.queue(), sub.pf, hub)
    return sub.pf.queue()


# Postfix tries a deferred message again only after these: no second
# attempt while the test looks
NO_RETRY = {"minimal_backoff_time": "1h", "maximal_backoff_time": "2h",
            "queue_run_delay": "1h"}


def test_postfix_without_auth_or_with_a_wrong_password_is_refused(make_hub, make_submitter):
    """Without AUTH, ``530 5.7.0`` to MAIL (Postfix's ``soft_bounce``
    keeps the message, deferred, rather than bouncing it through the hub
    again).  With a wrong password the hub's ``535 5.7.8``: Postfix
    defers the mail (``smtp_sasl_auth_soft_bounce``, its default) with the
    reply as the reason, and the hub logs one failed login."""
    hub = make_hub()
    anonymous = make_submitter(hub.submission_port, None, soft_bounce="yes", **NO_RETRY)
    anonymous.inject(WITHOUT_IDS, LAN_SENDER, ALICE, REMOTE)
    queue = deferred_for(anonymous, hub, "530 5.7.0")
    assert "(in reply to MAIL FROM command)" in queue, queue
    assert "from 127.0.0.1: 530 5.7.0 Authentication required" in hub.log_text()
    wrong = make_submitter(hub.submission_port, (ALICE, "not-her-password"), **NO_RETRY)
    wrong.inject(WITHOUT_IDS, LAN_SENDER, ALICE, REMOTE)
    queue = deferred_for(wrong, hub, "SASL authentication failed")
    assert "535 5.7.8" in queue, queue
    # (the hub logs it as it answers: its line may reach the file a moment later)
    wait_until(lambda: "authentication failed" in hub.log_text(), wrong.pf, hub)
    log = hub.log_text()
    failed = re.findall(r"authentication failed for (\S+) from (\S+)", log)
    assert failed == [("alice@example.org", "127.0.0.1")], log[-3000:]
    assert "authenticated as" not in log, log[-3000:]
    assert hub.message_files(ALICE) == []
    assert REMOTE not in hub.mailhub("queue", "list").stdout
    hub_log_is_clean(log)
