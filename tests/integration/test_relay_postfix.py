"""The relay's SMTP client against Postfix's smtpd as the smarthost.

One private Postfix instance for the module (postfix_peer.py): smtpd on a
127.0.0.1 port, virtual(8) delivering ``remote.test`` and ``example.org``
into Maildirs of its own, no mail leaving it, ``smtputf8_enable = yes``,
STARTTLS offered with a self-signed certificate.  Its recipient table
refuses ``nobody@remote.test`` (550 5.1.1, an unknown mailbox) and its
access table answers 450 for ``dave@remote.test``.

A ``DeliveryAgent`` on the real reactor delivers one queued message per
session, as the queue runner does; the test compares what Postfix put
in the Maildir with what was queued (after virtual(8)'s Return-Path,
X-Original-To and Delivered-To, and smtpd's Received field).  smtpd
logs the commands it got from 127.0.0.1 (``debug_peer_list``): MAIL's
and RCPT's parameters are checked there, as sent.  The DSN parameters
are also checked by what Postfix does with them: NOTIFY=SUCCESS gets the
sender a success notice (into Postfix's own example.org Maildirs) with
the ENVID and ORCPT, and RET=HDRS only the header.  (What NOTIFY=FAILURE
or NEVER would do after Postfix accepted a recipient is not checked: no
delivery here fails after the 250.)  An ENVID with a TAB, which Postfix
refuses with the MAIL, makes the MAIL go again without DSN parameters,
and the sender gets the hub's "relayed" notice.  The queue's own bookkeeping after
Postfix's mixed replies (the bounce, the entry kept for the 4xx) is
checked through a ``RelayService``.  Two more instances take 3
recipients per message (``smtpd_recipient_limit``), one of them without
PIPELINING: a message to 8 recipients reaches them all in three
transactions of one session.  Like test_interop_postfix.py, it needs
root and Postfix, and skips without them.
"""

from __future__ import annotations

import email
import os
import pwd
import re
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest
from conftest import make_certificate
from postfix_peer import SKIP_MARKS, Postfix
from relay_peers import _listening_inodes, _socket_inodes, free_port
from relayutil import attempt_recorded, first_attempt, queued_entry, smarthost_settings
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, RecipientDSN
from txmailhub.relay.attempt import SMARTHOST, DeliveryAgent
from txmailhub.relay.record import QueueEntry

pytestmark = SKIP_MARKS

ALICE = Address("alice", "example.org")
BOB = Address("bob", "remote.test")
DAVE = Address("dave", "remote.test")  # 450 from the access table
NOBODY = Address("nobody", "remote.test")  # 550: no such mailbox
JOERG = Address("jörg", "remote.test")

# dot-stuffing both ways, a lone ".", and the Return-Path of a local
# copy, which a relayed copy must not carry (LF lines, as the queue and
# the Maildir store them)
SMALL = (b"Return-Path: <alice@example.org>\nFrom: alice@example.org\nTo: bob@remote.test\n"
         b"Subject: plain\n\n.leading dot\n..two dots\n.\n" + b"x" * 900 + b"\nlast line\n")
RELAYED_SMALL = SMALL.split(b"\n", 1)[1]
# 1 MiB as queued, a dot at the start of every 7th line
BIG = b"Subject: big\n\n" + b"".join(
    (b"." if i % 7 == 0 else b"x") + b"%075d\n" % i for i in range((1 << 20) // 77))
BIG += b"y" * ((1 << 20) - len(BIG) - 1) + b"\n"
EIGHT_BIT = ("From: alice@example.org\nSubject: 8bit\nMIME-Version: 1.0\n"
             "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
             "Grüße aus Köln\n.dot\n").encode() + b"Latin-1 octets: \xe9\xe8\n"
PLAIN = b"Subject: plain\n\nhello\n"

#: the Maildir (under virtual_mailbox_base) of each mailbox Postfix has
MAILBOXES = {"bob@remote.test": "remote.test/bob/", "jörg@remote.test": "remote.test/joerg/",
             "dave@remote.test": "remote.test/dave/", "alice@example.org": "example.org/alice/",
             "jörg@example.org": "example.org/joerg/"}
#: eight mailboxes for one message to more recipients than a limit of 3
MANY = [Address(f"rcpt{i}", "remote.test") for i in range(1, 9)]
MAILBOXES.update({str(a): f"remote.test/{a.local}/" for a in MANY})


class NextHop:
    """The private Postfix instance, smtpd listening on ``port``."""

    TRIES = 5

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        """``settings``: main.cf parameters over this module's own."""
        self.pf: Postfix | None = None
        self.extra = settings or {}
        for _ in range(self.TRIES):
            # smtpd must be given its port: one picked free and released,
            # which another process may bind first; the master then cannot
            # listen -- ``postfix start`` fails ("mail system startup
            # failed"), or the master comes up without the socket -- and
            # the instance is removed and made again on another port
            self.port = free_port()
            pf = self._make(self.port)
            try:
                pf.start()
                if self._listening(pf):
                    self.pf = pf
                    return
            except AssertionError:
                pass  # the start failed: its log is in the next error, if any
            finally:
                if self.pf is not pf:
                    pf.remove()
        raise RuntimeError(f"Postfix did not listen in {self.TRIES} tries")

    def _make(self, port: int) -> Postfix:
        nobody = pwd.getpwnam("nobody")
        etc = "$config_directory"
        made = Postfix.make(
            {
                "relayhost": "",
                "default_transport": "error:no mail leaves this instance",
                "relay_transport": "error:no mail leaves this instance",
                "virtual_mailbox_domains": "remote.test, example.org",
                "virtual_mailbox_base": f"{etc}/../vmail",
                "virtual_mailbox_maps": f"texthash:{etc}/vmailbox",
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nobody.pw_gid}",
                "virtual_minimum_uid": "1",
                "smtpd_recipient_restrictions": (f"check_recipient_access texthash:{etc}/access,"
                                                 " permit_mynetworks, reject_unauth_destination"),
                # the hub on 127.0.0.1 is no local client: cleanup adds no
                # Date or Message-ID, rewrites no address in the header
                "local_header_rewrite_clients": "",
                "smtputf8_enable": "yes",
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": f"{etc}/cert.pem",
                "smtpd_tls_key_file": f"{etc}/key.pem",
                "smtpd_tls_received_header": "yes",
                "smtpd_tls_loglevel": "1",
                # the SMTP commands as received, in the log
                "debug_peer_list": "127.0.0.1",
                "debug_peer_level": "1",
                **self.extra,
            },
            f"127.0.0.1:{port} inet n - n - - smtpd\n"
            "virtual   unix  -       n       n       -       -       virtual\n")
        try:
            vmail = made.root / "vmail"
            vmail.mkdir()
            os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
            (made.etc / "vmailbox").write_text(
                "".join(f"{a} {m}\n" for a, m in MAILBOXES.items()), encoding="utf-8")
            (made.etc / "access").write_text("dave@remote.test DEFER dave is busy\n")
            make_certificate(made.etc, "postfix.test")
        except BaseException:
            made.remove()
            raise
        return made

    def _listening(self, pf: Postfix) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = pf.master_pid()
            if pid is not None and _listening_inodes(self.port) & _socket_inodes(pid):
                return True
            time.sleep(0.05)
        return False

    def maildir(self, address: Address) -> list[bytes]:
        """What virtual(8) delivered to ``address`` so far, oldest first."""
        new = self.pf.root / "vmail" / MAILBOXES[str(address)] / "new"
        paths = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.is_dir() else []
        return [p.read_bytes() for p in paths]

    def wait_for(self, address: Address, count: int, timeout: float = 30.0) -> list[bytes]:
        """The first ``count`` messages of ``address`` (delivery comes after
        smtpd's 250, in qmgr's and virtual's own time)."""
        deadline = time.monotonic() + timeout
        while len(got := self.maildir(address)) < count:
            assert time.monotonic() < deadline, (address, self.pf.queue(),
                                                 self.pf.log_text()[-3000:])
            time.sleep(0.05)
        return got

    def delivered(self, address: Address, reply: str, timeout: float = 30.0) -> bytes:
        """The message smtpd took with ``reply`` ("250 2.0.0 Ok: queued as
        <id>"), once virtual(8) delivered it to ``address``: found by the
        queue id in smtpd's Received field.  Not by the order the Maildir
        got them: qmgr delivers the messages of a test side by side (the
        1 MiB one may land after a later small one), and a message of an
        earlier test may still be on its way."""
        queue_id = reply.rsplit(" ", 1)[1].encode()
        deadline = time.monotonic() + timeout
        while True:
            for message in self.maildir(address):
                trace, _ = split_trace(message)
                if any(f.startswith(b"Received:") and re.search(rb" id %s\b" % queue_id, f)
                       for f in trace):
                    return message
            assert time.monotonic() < deadline, (address, reply, self.pf.queue(),
                                                 self.pf.log_text()[-3000:])
            time.sleep(0.05)

    def log_lines(self, until: str, timeout: float = 30.0) -> list[str]:
        """Postfix's log, once a line ends with ``until`` (its daemons log
        through postlogd(8): a line comes a little after what it tells)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.pf.log_text().splitlines()
            if any(line.endswith(until) for line in lines):
                return lines
            assert time.monotonic() < deadline, (until, lines[-30:])
            time.sleep(0.05)

    def remove(self) -> None:
        if self.pf is not None:
            self.pf.remove()


@pytest.fixture(scope="module")
def next_hop() -> Iterator[NextHop]:
    hop = NextHop()
    try:
        yield hop
    finally:
        hop.remove()


def split_trace(delivered: bytes) -> tuple[list[bytes], bytes]:
    """The trace fields virtual(8) and smtpd put in front (Return-Path,
    Delivered-To, Received), unfolded, and the message after them."""
    fields: list[bytes] = []
    rest = delivered
    while re.match(rb"(Return-Path|Delivered-To|X-Original-To|Received):", rest):
        line, rest = rest.split(b"\n", 1)
        while rest[:1] in (b" ", b"\t"):
            more, rest = rest.split(b"\n", 1)
            line += b" " + more.strip()
        fields.append(line)
    return fields, rest


def wire_size(body: bytes) -> int:
    """Octets of ``body`` (LF lines) on the wire, as SIZE= counts them."""
    return len(body) + body.count(b"\n")


def outcome(results) -> dict[str, tuple[str, str]]:
    return {str(r.address): (r.kind, r.reply.text()) for r in results}


class RelayToPostfixTests(TestCase):
    """One smarthost session per delivery, as the queue runner makes it."""

    @pytest.fixture(autouse=True)
    def _next_hop(self, next_hop: NextHop) -> None:
        self.hop = next_hop

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.tmp = Path(self.mktemp()).absolute()
        self.tmp.mkdir(parents=True)

    def settings(self, relay: str):
        return smarthost_settings(self.tmp / "state", self.hop.port, relay)

    def entry(self, body: bytes, rcpts, **envelope) -> QueueEntry:
        return queued_entry(self.tmp, body, rcpts, **envelope)

    def deliver(self, body: bytes, rcpts=(BOB,), relay: str = 'smarthost_tls = "none"',
                **envelope) -> defer.Deferred:
        agent = DeliveryAgent(self.settings(relay), None, self.reactor)
        return agent.deliver(self.entry(body, rcpts, **envelope), SMARTHOST, list(rcpts))

    def commands(self, reply: str) -> list[str]:
        """The commands of the session whose end of data got ``reply``
        ("250 2.0.0 Ok: queued as <id>"), as smtpd logged them (with
        ``debug_peer_list``): from its "connect from" to that reply."""
        lines = self.hop.log_lines(f"]: > localhost[127.0.0.1]: {reply}")
        [end] = [i for i, line in enumerate(lines) if line.endswith(f"]: {reply}")]
        pid = re.search(r"smtpd\[(\d+)\]", lines[end])[1]
        said = []
        for line in reversed(lines[:end]):
            if f"smtpd[{pid}]: " not in line:
                continue
            if f"smtpd[{pid}]: connect from " in line:
                return said[::-1]
            if "]: < localhost[127.0.0.1]: " in line:
                said.append(line.split("]: < localhost[127.0.0.1]: ", 1)[1])
        raise AssertionError(f"no connect before {reply!r}")

    def delivered_to_bob(self, results) -> str:
        """Postfix's 250 for the message, checked."""
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "delivered")
        self.assertTrue(reply.startswith("250 2.0.0 Ok: queued as "), reply)
        return reply

    @defer.inlineCallbacks
    def test_plain_8bit_and_1_mib_messages_arrive_as_queued(self):
        replies = []
        for body in (SMALL, EIGHT_BIT, BIG):
            replies.append(self.delivered_to_bob((yield self.deliver(body))))
        got = [self.hop.delivered(BOB, reply) for reply in replies]
        for body, reply, delivered in zip((RELAYED_SMALL, EIGHT_BIT, BIG), replies, got,
                                          strict=True):
            trace, message = split_trace(delivered)
            self.assertEqual(message, body)
            # virtual(8)'s fields, then smtpd's Received: the hub's EHLO
            # name, no TLS (smarthost_tls = "none"), Postfix's queue id
            queue_id = reply.rsplit(" ", 1)[1]
            self.assertEqual(trace[:3], [b"Return-Path: <alice@example.org>",
                                         b"X-Original-To: bob@remote.test",
                                         b"Delivered-To: bob@remote.test"])
            self.assertEqual(len(trace), 4, trace)
            self.assertTrue(trace[3].startswith(
                b"Received: from mail.example.org (localhost [127.0.0.1]) by postfix.test "
                b"(Postfix) with ESMTP id " + queue_id.encode() + b" for <bob@remote.test>; "),
                trace)
        # SIZE= as sent (CRLF lines); BODY=8BITMIME only for the 8-bit one
        # (RFC 6152: Postfix offers 8BITMIME, so no 7-bit copy is made)
        for body, reply in zip((RELAYED_SMALL, EIGHT_BIT, BIG), replies, strict=True):
            mail = f"MAIL FROM:<alice@example.org> SIZE={wire_size(body)}"
            if body is EIGHT_BIT:
                mail += " BODY=8BITMIME"
            self.assertEqual(self.commands(reply)[1:4],
                             [mail, "RCPT TO:<bob@remote.test>", "DATA"])

    @defer.inlineCallbacks
    def test_dsn_parameters_reach_postfix(self):
        """ENVID, RET, NOTIFY and ORCPT on the wire as the client gave them
        (xtext as it came), and Postfix acts on them: NOTIFY=SUCCESS gets
        alice a success notice (delivered by the same Postfix to its own
        example.org mailbox) with the decoded ENVID and ORCPT, and RET=HDRS
        only the header of the message."""
        before = len(self.hop.maildir(ALICE))
        results = yield self.deliver(
            b"Subject: dsn probe\n\nthe body\n",
            dsn=DSNRequest(ret="HDRS", envid="QQ+1", envid_raw="QQ+2B1"),
            recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS", "FAILURE"),
                                              orcpt="rfc822;Bob@Remote.test")),))
        reply = self.delivered_to_bob(results)
        said = self.commands(reply)
        self.assertEqual(said[1:3], [
            "MAIL FROM:<alice@example.org> SIZE=32 RET=HDRS ENVID=QQ+2B1",
            "RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@Remote.test"])
        [notice] = self.hop.wait_for(ALICE, before + 1)[before:]
        notice = email.message_from_bytes(notice, policy=policy.default)
        self.assertEqual(notice["Subject"], "Successful Mail Delivery Report")
        [_, status, headers] = notice.iter_parts()
        status = status.as_string()
        self.assertIn("\nOriginal-Envelope-Id: QQ+1\n", status)
        self.assertIn("\nOriginal-Recipient: rfc822;Bob@Remote.test\n", status)
        self.assertIn("\nAction: delivered\n", status)
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn(b"Subject: dsn probe", headers.get_payload(decode=True))
        self.assertNotIn(b"the body", headers.as_bytes())

    @defer.inlineCallbacks
    def test_an_envid_postfix_refuses_goes_as_to_a_server_without_dsn(self):
        """An ENVID with a TAB (RFC 3461 4.4: "graphic and white space")
        Postfix refuses with the MAIL; the MAIL goes again without any DSN
        parameter, and the result says the notice duty stayed here."""
        results = yield self.deliver(
            PLAIN, dsn=DSNRequest(ret="HDRS", envid="a\tb", envid_raw="a+09b"),
            recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
        reply = self.delivered_to_bob(results)
        self.assertFalse(results[0].dsn_passed)
        said = self.commands(reply)
        mail = f"MAIL FROM:<alice@example.org> SIZE={wire_size(PLAIN)}"
        # pipelined: the RCPT and DATA sent with the refused MAIL get 503s
        self.assertEqual(said[1:7], [mail + " RET=HDRS ENVID=a+09b",
                                     "RCPT TO:<bob@remote.test> NOTIFY=SUCCESS", "DATA",
                                     mail, "RCPT TO:<bob@remote.test>", "DATA"])
        self.assertIn("]: > localhost[127.0.0.1]: 501 5.5.4 Bad ENVID parameter syntax",
                      self.hop.pf.log_text())
        self.assertEqual(split_trace(self.hop.delivered(BOB, reply))[1], PLAIN)

    @defer.inlineCallbacks
    def test_a_utf8_envelope_goes_with_smtputf8(self):
        before = len(self.hop.maildir(JOERG))
        sender = Address("jörg", "example.org")
        body = "From: jörg@example.org\nTo: jörg@remote.test\nSubject: hé\n\nGrüße\n".encode()
        results = yield self.deliver(body, rcpts=(JOERG,), smtputf8=True, sender=sender)
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "delivered", reply)
        said = self.commands(reply)
        self.assertEqual(said[1:3], [
            f"MAIL FROM:<jörg@example.org> SIZE={wire_size(body)} BODY=8BITMIME SMTPUTF8",
            "RCPT TO:<jörg@remote.test>"])
        [delivered] = self.hop.wait_for(JOERG, before + 1)[before:]
        trace, message = split_trace(delivered)
        self.assertEqual(message, body)
        self.assertEqual(trace[0], "Return-Path: <jörg@example.org>".encode())
        self.assertIn(b" with UTF8SMTP id ", trace[-1])

    @defer.inlineCallbacks
    def test_utf8_dsn_parameters_in_an_smtputf8_transaction(self):
        """A utf-8 ORCPT goes as received (RFC 6533 3) with the rest of the
        request, an ASCII ENVID among it, and comes back in Postfix's
        success notice."""
        sender = Address("jörg", "example.org")
        before = len(self.hop.maildir(sender))
        body = "Subject: hé\n\nGrüße\n".encode()
        results = yield self.deliver(
            body, rcpts=(JOERG,), smtputf8=True, sender=sender,
            dsn=DSNRequest(ret="HDRS", envid="QQ+1", envid_raw="QQ+2B1"),
            recipient_dsn=((JOERG, RecipientDSN(notify=("SUCCESS",),
                                                orcpt="utf-8;Jörg@Remote.test",
                                                orcpt_raw="utf-8;Jörg@Remote.test")),))
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "delivered", reply)
        self.assertTrue(results[0].dsn_passed)
        self.assertEqual(self.commands(reply)[1:3], [
            f"MAIL FROM:<jörg@example.org> SIZE={wire_size(body)} BODY=8BITMIME SMTPUTF8 "
            "RET=HDRS ENVID=QQ+2B1",
            "RCPT TO:<jörg@remote.test> NOTIFY=SUCCESS ORCPT=utf-8;Jörg@Remote.test"])
        [notice] = self.hop.wait_for(sender, before + 1)[before:]
        _, status = notice.split(b"Content-Type: message/global-delivery-status\n", 1)
        # (errors="replace": Postfix writes the sender, in its
        # X-Postfix-Sender field, with a backslash before each octet of
        # "ö" -- no UTF-8 left)
        status = status.split(b"\n--", 1)[0].decode(errors="replace")
        self.assertIn("\nOriginal-Recipient: utf-8;Jörg@Remote.test\n", status)
        self.assertIn("\nOriginal-Envelope-Id: QQ+1\n", status)  # (decoded)
        self.assertIn("\nAction: delivered\n", status)

    @defer.inlineCallbacks
    def test_a_utf8_envid_makes_the_request_go_nowhere_and_the_notice_the_hubs(self):
        """A UTF-8 ENVID (RFC 3461 4.4: US-ASCII) cannot go: Postfix
        refuses the MAIL with it ("501 5.5.4 Bad ENVID parameter syntax").
        Not the id alone left out (RFC 3461 5.2.1 (a): a relay to a DSN
        server passes it on): the message goes with no DSN parameter, the
        success notice is the hub's ("relayed"), and Postfix sends none."""
        sender = Address("jörg", "example.org")
        before = len(self.hop.maildir(sender))
        body = "Subject: hé\n\nGrüße\n".encode()
        results = yield self.deliver(
            body, rcpts=(JOERG,), smtputf8=True, sender=sender,
            dsn=DSNRequest(ret="HDRS", envid="idé", envid_raw="id+C3+A9"),
            recipient_dsn=((JOERG, RecipientDSN(notify=("SUCCESS",),
                                                orcpt="utf-8;Jörg@Remote.test",
                                                orcpt_raw="utf-8;Jörg@Remote.test")),))
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "delivered", reply)
        self.assertFalse(results[0].dsn_passed)
        self.assertEqual(self.commands(reply)[1:3], [
            f"MAIL FROM:<jörg@example.org> SIZE={wire_size(body)} BODY=8BITMIME SMTPUTF8",
            "RCPT TO:<jörg@remote.test>"])
        self.assertNotIn("Bad ENVID", self.hop.pf.log_text())
        # the message itself arrived; no notice from Postfix follows it
        self.hop.wait_for(JOERG, 1)
        self.assertEqual(len(self.hop.maildir(sender)), before)

    @defer.inlineCallbacks
    def test_starttls_to_postfix(self):
        """Opportunistic TLS takes Postfix's self-signed certificate;
        "verify" takes it when told to trust it.  Postfix's Received field
        says TLS."""
        from twisted.internet import ssl as tssl

        results = yield self.deliver(PLAIN, relay='smarthost_tls = "opportunistic"')
        replies = [self.delivered_to_bob(results)]
        trust = tssl.Certificate.loadPEM((self.hop.pf.etc / "cert.pem").read_bytes())
        agent = DeliveryAgent(self.settings('smarthost_tls = "verify"'), None, self.reactor,
                              trust_root=trust)
        results = yield agent.deliver(self.entry(PLAIN, (BOB,)), SMARTHOST, [BOB])
        replies.append(self.delivered_to_bob(results))
        got = [self.hop.delivered(BOB, reply) for reply in replies]
        for reply, delivered in zip(replies, got, strict=True):
            trace, message = split_trace(delivered)
            self.assertEqual(message, PLAIN)
            self.assertRegex(trace[-1].decode(), r"^Received: from mail\.example\.org "
                             r"\(localhost \[127\.0\.0\.1\]\) \(using TLSv1\.[23] with cipher ")
            self.assertIn(b" with ESMTPS id " + reply.rsplit(" ", 1)[1].encode(), trace[-1])
            self.assertEqual(self.commands(reply)[1:3], ["STARTTLS", "EHLO mail.example.org"])
        self.assertIn("Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.",
                      self.hop.pf.log_text())

    @defer.inlineCallbacks
    def test_the_550_and_450_of_postfix_per_recipient(self):
        results = yield self.deliver(PLAIN, rcpts=(BOB, NOBODY, DAVE))
        got = outcome(results)
        self.assertEqual(got["bob@remote.test"][0], "delivered")
        self.assertEqual(got["nobody@remote.test"], (
            "permanent", "550 5.1.1 <nobody@remote.test>: Recipient address rejected: "
            "User unknown in virtual mailbox table"))
        self.assertEqual(got["dave@remote.test"], (
            "transient", "450 4.7.1 <dave@remote.test>: Recipient address rejected: "
            "dave is busy"))
        reply = got["bob@remote.test"][1]
        self.assertEqual(split_trace(self.hop.delivered(BOB, reply))[1], PLAIN)
        # one transaction: the two refused RCPTs, then the message for bob
        self.assertEqual(self.commands(reply)[1:6], [
            f"MAIL FROM:<alice@example.org> SIZE={wire_size(PLAIN)}",
            "RCPT TO:<bob@remote.test>", "RCPT TO:<nobody@remote.test>",
            "RCPT TO:<dave@remote.test>", "DATA"])


class RelayQueueToPostfixTests(TestCase):
    """The queue after Postfix's mixed replies: what it keeps, what it
    tells the sender (a notice to alice's local mailbox)."""

    @pytest.fixture(autouse=True)
    def _next_hop(self, next_hop: NextHop) -> None:
        self.hop = next_hop

    @defer.inlineCallbacks
    def run_queue(self, rcpts, **envelope):
        """One entry for ``rcpts``, its first attempt: the recipients' states
        after it (``{}``: the entry is gone) and the notices alice got."""
        def settled(entries, mail):  # the attempt recorded
            return attempt_recorded(entries) and mail

        state = Path(self.mktemp()).absolute()
        state.mkdir(parents=True)
        records, notices = yield first_attempt(state, self.hop.port, rcpts, settled, **envelope)
        return {str(r.address): (r.state, r.last_reply and r.last_reply.text())
                for r in records}, notices

    def assert_bounce_for_nobody(self, notice) -> None:
        report = notice.get_body(("plain",)).get_content()
        status = list(notice.iter_parts())[1].as_string()
        self.assertIn("nobody@remote.test", report)
        self.assertIn("User unknown in virtual mailbox table", report)
        self.assertIn("Final-Recipient: rfc822; nobody@remote.test", status)
        self.assertIn("Action: failed", status)
        self.assertIn("Status: 5.1.1", status)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1", status)
        for other in ("bob@remote.test", "dave@remote.test"):
            self.assertNotIn(other, status + report)

    @defer.inlineCallbacks
    def test_accepted_and_refused_the_entry_goes_and_a_bounce_comes(self):
        before = len(self.hop.maildir(BOB))
        kept, [notice] = yield self.run_queue((BOB, NOBODY))
        self.assertEqual(kept, {})
        self.assert_bounce_for_nobody(notice)
        self.hop.wait_for(BOB, before + 1)

    @defer.inlineCallbacks
    def test_an_envid_postfix_refuses_gets_the_sender_a_relayed_notice(self):
        before = len(self.hop.maildir(BOB))
        kept, [notice] = yield self.run_queue(
            (BOB,), dsn=DSNRequest(envid="a\tb", envid_raw="a+09b"),
            recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
        self.assertEqual(kept, {})
        status = list(notice.iter_parts())[1].as_string()
        self.assertIn("Action: relayed", status)
        self.assertIn("Final-Recipient: rfc822; bob@remote.test", status)
        self.assertIn("Original-Envelope-Id: a\tb\n", status)
        self.hop.wait_for(BOB, before + 1)

    @defer.inlineCallbacks
    def test_a_450_keeps_the_recipient_queued(self):
        before = len(self.hop.maildir(BOB))
        kept, [notice] = yield self.run_queue((BOB, NOBODY, DAVE))
        self.assertEqual({a: state for a, (state, _) in kept.items()}, {
            "bob@remote.test": "delivered", "nobody@remote.test": "bounced",
            "dave@remote.test": "pending"})
        self.assertTrue(kept["bob@remote.test"][1].startswith("250 2.0.0 Ok: queued as "))
        self.assertTrue(kept["nobody@remote.test"][1].startswith("550 5.1.1 "))
        self.assertEqual(kept["dave@remote.test"][1], "450 4.7.1 <dave@remote.test>: "
                         "Recipient address rejected: dave is busy")
        self.assert_bounce_for_nobody(notice)
        self.hop.wait_for(BOB, before + 1)


#: Postfix's limit of recipients per message, below the eight of ``MANY``
RECIPIENT_LIMIT = {"smtpd_recipient_limit": "3"}


@pytest.fixture(scope="module")
def limited_hop() -> Iterator[NextHop]:
    """An instance of its own, which takes 3 recipients per message."""
    hop = NextHop(RECIPIENT_LIMIT)
    try:
        yield hop
    finally:
        hop.remove()


@pytest.fixture(scope="module")
def limited_hop_without_pipelining() -> Iterator[NextHop]:
    """The same limit, and no PIPELINING in its EHLO reply."""
    hop = NextHop({**RECIPIENT_LIMIT, "smtpd_discard_ehlo_keywords": "pipelining"})
    try:
        yield hop
    finally:
        hop.remove()


class RelayToLimitedPostfixTests(TestCase):
    """Postfix's ``452 4.5.3 Error: too many recipients`` (RFC 5321
    4.5.3.1.10) after its third RCPT: the hub sends the others in later
    transactions of the same session, and one message to eight
    recipients leaves the queue in one connection.  Each test has a
    Postfix of its own: every "connect from" in its log is the hub's."""

    pipelining = True  # whether Postfix offers PIPELINING

    @pytest.fixture(autouse=True)
    def _hop(self, limited_hop: NextHop) -> None:
        self.hop = limited_hop

    @defer.inlineCallbacks
    def test_eight_recipients_in_three_transactions_of_one_session(self):
        hop = self.hop
        state = Path(self.mktemp()).absolute()
        state.mkdir(parents=True)
        # settled once the entry is gone
        kept, notices = yield first_attempt(state, hop.port, MANY,
                                            lambda entries, mail: not entries)
        self.assertEqual([(str(r.address), r.state, r.last_reply and r.last_reply.text())
                          for r in kept], [])
        self.assertEqual(notices, [])
        for address in MANY:
            [delivered] = hop.wait_for(address, 1)
            trace, message = split_trace(delivered)
            self.assertEqual(trace[1:3], [f"X-Original-To: {address}".encode(),
                                          f"Delivered-To: {address}".encode()])
            self.assertEqual(message, b"Subject: probe\nMessage-ID: <probe@example.org>\n\n"
                             b"body\n")
        # smtpd's summary of the hub's session, and its only "connect from"
        lines = self.session_log(hop)
        self.assertEqual(len([line for line in lines if "]: connect from " in line]), 1, lines)
        [summary] = [line for line in lines if "]: disconnect from localhost[" in line]
        # 8 RCPTs, then the 5 refused, then the 2 refused again: three
        # transactions of one connection, no RSET (each ended with its
        # message).  (smtpd counts its "too many" 452 as no error: not
        # "rcpt=8/15".)
        self.assertRegex(summary, r"\]: disconnect from localhost\[127\.0\.0\.1\] "
                         r"ehlo=1 mail=3 rcpt=15 data=3 quit=1 commands=23$")
        refusals = [line for line in lines
                    if line.endswith("]: > localhost[127.0.0.1]: 452 4.5.3 Error: too many "
                                     "recipients")]
        self.assertEqual(len(refusals), 7)
        said = [line.split("]: < localhost[127.0.0.1]: ", 1)[1] for line in lines
                if "]: < localhost[127.0.0.1]: " in line]
        self.assertEqual([c for c in said if c.startswith("RCPT")],
                         [f"RCPT TO:<{a}>" for a in (*MANY, *MANY[3:], *MANY[6:])])
        offered = "\n".join(lines)
        self.assertEqual("250-PIPELINING" in offered, self.pipelining)

    @staticmethod
    def session_log(hop: NextHop, timeout: float = 30.0) -> list[str]:
        """Postfix's log once smtpd logged the end of the hub's session."""
        deadline = time.monotonic() + timeout
        while True:
            lines = hop.pf.log_text().splitlines()
            if any("]: disconnect from localhost[" in line for line in lines):
                return lines
            assert time.monotonic() < deadline, lines[-30:]
            time.sleep(0.05)



class RelayToLimitedPostfixWithoutPipeliningTests(RelayToLimitedPostfixTests):
    """The same, Postfix offering no PIPELINING (RFC 2920)."""

    pipelining = False

    @pytest.fixture(autouse=True)
    def _hop(self, limited_hop_without_pipelining: NextHop) -> None:
        self.hop = limited_hop_without_pipelining


def test_a_port_taken_before_postfix_listens_is_given_up_for_another(monkeypatch):
    """The port is picked free and released before Postfix's master binds
    it: taken by then, ``postfix start`` fails, and the instance is made
    again on another port -- the first one's folder removed, no master
    left behind."""
    import socket
    import sys

    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = free_port
        monkeypatch.setattr(sys.modules[__name__], "free_port",
                            lambda: next(ports, None) or real_free_port())
        made: list[Postfix] = []
        real_make = Postfix.make
        monkeypatch.setattr(Postfix, "make", lambda *a, **kw: made.append(real_make(*a, **kw))
                            or made[-1])
        hop = NextHop()
        try:
            assert hop.port != taken.getsockname()[1]
            assert len(made) == 2 and not made[0].root.exists()
            assert made[0].master_pid() is None
        finally:
            hop.remove()
    finally:
        taken.close()


def test_stop_never_kills_a_process_that_is_not_the_instances_master():
    """A master.pid left by a master that died (a failed start leaves
    one) may name a pid the system has given another process since:
    ``stop`` leaves that one alone."""
    import signal
    import subprocess

    pf = Postfix.make({})
    other = subprocess.Popen(["sleep", "600"])
    try:
        (pf.spool / "pid").mkdir(parents=True)
        (pf.spool / "pid" / "master.pid").write_text(f"{other.pid:>10}\n")
        pf.stop()
        # a SIGKILL from stop, even one still on its way, wins over this
        other.terminate()
        assert other.wait() == -signal.SIGTERM
    finally:
        other.kill()
        other.wait()
        pf.remove()
