"""Postfix, as a real MTA, sends through the hub's MX listener.

A private Postfix instance per test: its own config, queue and data
folders under a temporary folder, no listener at all (mail goes in with
its ``sendmail -C``), every message relayed to ``[127.0.0.1]:<the hub's
SMTP port>``, no DNS.  It needs root (``postfix start`` runs its master
as root, its daemons as the ``postfix`` user) and leaves the system's
own Postfix, if any, alone (a queue of its own, ``/etc/postfix``
untouched).  The instance is stopped at the end of the test, and its
master killed by its pid if it does not stop.

Checked: what the hub's mailboxes get is what was submitted, after the
trace fields (Postfix's own Received field among them); 8-bit and a
1 MiB message go as they are; an unknown recipient among good ones is
refused at RCPT, the others get the message, and Postfix bounces the
unknown one back to the sender (a user of the hub); STARTTLS when
Postfix is told to encrypt; and the queue is empty at the end.  Postfix
submitting with SMTP AUTH: test_interop_postfix_submission.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    SENDER,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
)
from interop import assert_same as assert_same_messages
from pop3util import drop
from postfix_peer import SKIP_MARKS, Postfix

CAROL_PW = "carol-secret"

pytestmark = SKIP_MARKS


@pytest.fixture
def make_postfix() -> Iterator:
    made: list[Postfix] = []

    def factory(port: int, **settings: str) -> Postfix:
        pf = Postfix.make({"relayhost": f"[127.0.0.1]:{port}", **settings})
        made.append(pf)
        pf.start()
        return pf

    yield factory
    for pf in made:
        pf.remove()


def wait_for(hub, counts: dict[str, int], pf: Postfix, timeout: float = 60.0) -> None:
    # a few seconds here; the margin is for a loaded machine (two cores,
    # other test runs), where Postfix's daemons start and retry slowly
    # Postfix's own retry (1-2 s here) once failed to come within the
    # minute in a full parallel run (its log quiet after "skipped, still
    # being delivered"), so it is asked to flush every few seconds: what is
    # tested is what the hub does with the retry, not Postfix's scheduler
    deadline = time.monotonic() + timeout
    nudge = time.monotonic() + 5
    while True:
        have = {a: len(hub.message_files(a)) for a in counts}
        if have == counts and "Mail queue is empty" in pf.queue():
            return
        if time.monotonic() > deadline:
            raise AssertionError((have, counts, pf.queue(), pf.log_text()[-4000:]))
        if time.monotonic() > nudge:
            pf.flush()
            nudge = time.monotonic() + 5
        time.sleep(0.1)


def test_postfix_relays_to_the_hub_and_bounces_the_unknown(make_hub, make_postfix):
    hub = make_hub()
    pf = make_postfix(hub.smtp_port)
    sent = corpus("postfix")
    for data in sent.values():
        pf.sendmail(data, SENDER, ALICE, "nobody@example.org", BOB, "ghost@example.org")
    # every message to alice and bob; to carol, a bounce for each, naming
    # the two unknown recipients with the hub's 550
    wait_for(hub, {ALICE: len(sent), BOB: len(sent), SENDER: len(sent)}, pf)
    for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW)):
        got = fetch_poplib(hub.pop3_port, user, pw)
        assert_same_messages(sent, "postfix", got)
        for m in got:
            assert b"\r\nReceived: by postfix.test (Postfix, from userid 0)" in m, m[:600]
            assert b" with ESMTP id " in m or b" with ESMTP\r\n" in m, m[:600]
    bounces = fetch_poplib(hub.pop3_port, SENDER, CAROL_PW)
    for b in bounces:
        assert b.startswith(b"Return-Path: <>\r\n"), b[:300]
        assert b"Undelivered Mail Returned to Sender" in b, b[:2000]
        assert b"<nobody@example.org>" in b and b"<ghost@example.org>" in b, b[:3000]
        assert b"550 5.1.1" in b, b[:3000]
        finals = sorted(line for line in b.split(b"\r\n") if line.startswith(b"Final-Recipient:"))
        assert finals == [b"Final-Recipient: rfc822; ghost@example.org",
                          b"Final-Recipient: rfc822; nobody@example.org"], finals
    log = pf.wait_log("status=bounced", "status=sent")
    assert "TLS connection established" not in log
    hub_log_is_clean(hub.log_text())


def test_postfix_over_starttls(make_hub, make_postfix):
    """STARTTLS, as ``smtp_tls_security_level = encrypt`` demands.  And a
    line longer than the 998 octets the hub takes (it refuses such a
    message with 500 5.5.2, docs/smtp.rst): Postfix breaks it before
    sending (``smtp_line_length_limit``), so it arrives."""
    hub = make_hub(tls=True)
    pf = make_postfix(hub.smtp_port, smtp_tls_security_level="encrypt",
                      smtp_tls_loglevel="1")
    sent = corpus("postfix-tls", big=False)
    for data in sent.values():
        pf.sendmail(data, SENDER, ALICE)
    too_long = (b"Subject: interop too-long postfix-tls\r\n\r\n" + b"y" * 2500 + b"\r\nend\r\n")
    pf.sendmail(too_long, SENDER, ALICE)
    wait_for(hub, {ALICE: len(sent) + 1}, pf)
    got = fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)
    [broken] = [m for m in got if b"too-long" in m]
    assert b"\r\n\r\n" + b"y" * 998 + b"\r\n " in broken, broken[-3000:]
    assert broken.replace(b"\r\n ", b"").endswith(b"y" * 2500 + b"\r\nend\r\n")
    got.remove(broken)
    assert_same_messages(sent, "postfix-tls", got)
    for m in [*got, broken]:
        assert b" with ESMTPS (TLSv1.3 " in m, m[:600]
    pf.wait_log("TLS connection established to 127.0.0.1", "breaking line > 998 bytes")
    hub_log_is_clean(hub.log_text())


def test_postfix_sends_smtputf8(make_hub, make_postfix):
    """A UTF-8 sender and header fields: Postfix (which detects them in
    what its sendmail got) sends MAIL FROM with SMTPUTF8, and the hub
    keeps the message as it came (read back in UTF8 mode)."""
    hub = make_hub()
    pf = make_postfix(hub.smtp_port)
    data = ("From: Jörg <jörg@example.net>\r\nTo: alice@example.org\r\n"
            "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <smtputf8.postfix@client.test>\r\n"
            "Subject: interop smtputf8 postfix\r\n\r\nGrüße aus Köln\r\n").encode()
    pf.sendmail(data, "jörg@example.net", ALICE)
    wait_for(hub, {ALICE: 1}, pf)
    [got] = fetch_poplib(hub.pop3_port, ALICE, ALICE_PW, utf8=True)
    assert_same_messages({"smtputf8": data}, "postfix", [got])
    assert got.startswith("Return-Path: <jörg@example.net>\r\n".encode()), got[:300]
    assert b" with UTF8SMTP" in got, got[:600]
    hub_log_is_clean(hub.log_text())


def test_postfix_retries_a_full_mailbox_and_delivers_once(make_hub, make_postfix):
    """A recipient whose mailbox is at its quota is refused with 452 at
    RCPT (docs/smtp.rst): Postfix delivers to the other recipient, keeps
    the message for the full one, and once the user made room, delivers
    it there -- once, and not a second time to the other."""
    hub = make_hub(sections={"hub": {"mailbox_quota": 65536},
                             "smtp": {"max_message_size": 65536}})
    # alice over her quota: a message another program dropped in
    drop(hub.maildir(ALICE), b"Subject: filler\n\n" + (b"x" * 70 + b"\n") * 1000)
    pf = make_postfix(hub.smtp_port)
    sent = {"ascii": corpus("quota", big=False)["ascii"]}
    pf.sendmail(sent["ascii"], SENDER, ALICE, BOB)
    deadline = time.monotonic() + 60
    while "452 4.2.2" not in pf.log_text() or not hub.message_files(BOB):
        assert time.monotonic() < deadline, (pf.queue(), pf.log_text()[-3000:])
        time.sleep(0.1)
    assert "status=deferred" in pf.log_text() and len(hub.message_files(ALICE)) == 1
    fetch_poplib(hub.pop3_port, ALICE, ALICE_PW, delete=True)  # alice makes room
    wait_for(hub, {ALICE: 1, BOB: 1}, pf)
    for user, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW)):
        assert_same_messages(sent, "quota", fetch_poplib(hub.pop3_port, user, pw))
    hub_log_is_clean(hub.log_text())
