"""The relay's SMTP client against next-hop servers nobody here wrote:
Postfix's smtp-sink, aiosmtpd and Twisted's own ESMTP server
(relay_peers.py), each as the smarthost on 127.0.0.1.

A ``DeliveryAgent`` on the real reactor delivers one queued message and
the test compares what the server received with what was queued, and the
results the queue would record with what docs/relay.rst promises.  The
queue's own bookkeeping after mixed replies is checked through a
``RelayService`` (the runner, the queue files, the notices).
"""

from __future__ import annotations

import email
import ssl
from email import policy
from pathlib import Path

import pytest
from conftest import make_certificate
from relay_peers import AioServer, SinkServer, TwistedServer, aio_authenticator
from relayutil import attempt_recorded, first_attempt, queued_entry, smarthost_settings
from twisted.internet import defer
from twisted.internet import ssl as tssl
from twisted.trial.unittest import TestCase

from txmailhub.address import Address
from txmailhub.envelope import DSNRequest, RecipientDSN
from txmailhub.relay.attempt import SMARTHOST, DeliveryAgent
from txmailhub.relay.record import QueueEntry
from txmailhub.smtp.client import AUTH_TEXT_LEFT_OUT

ALICE = Address("alice", "example.org")
BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")
DAVE = Address("dave", "remote.test")
JOERG = Address("jörg", "remote.test")

# dot-stuffing both ways, a lone ".", a final line without its line end,
# and the Return-Path of a local copy, which a relayed copy must not carry
SMALL = (b"Return-Path: <alice@example.org>\nFrom: alice@example.org\nTo: bob@remote.test\n"
         b"Subject: interop\n\n.leading dot\n..two dots\n.\n" + b"x" * 900
         + b"\nlast line without a line end")
RELAYED_SMALL = SMALL.split(b"\n", 1)[1] + b"\n"  # (LF lines, as the queue stores them)
# 1 MiB as queued, a dot at the start of every 7th line
BIG = b"Subject: big\n\n" + b"".join(
    (b"." if i % 7 == 0 else b"x") + b"%075d\n" % i for i in range((1 << 20) // 77))
BIG += b"y" * ((1 << 20) - len(BIG) - 1) + b"\n"
EIGHT_BIT = ("From: alice@example.org\nSubject: 8bit\nMIME-Version: 1.0\n"
             "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
             "Grüße aus Köln\n.dot\n").encode()
PLAIN = b"Subject: plain\n\nhello\n"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def outcome(results) -> dict[str, tuple[str, str]]:
    return {str(r.address): (r.kind, r.reply.text()) for r in results}


class RelayInteropTests(TestCase):
    """One smarthost session per delivery, as the queue runner makes it."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.tmp = Path(self.mktemp()).absolute()
        self.tmp.mkdir(parents=True)

    def settings(self, port: int, relay: str = 'smarthost_tls = "none"'):
        return smarthost_settings(self.tmp / f"state{port}", port, relay)

    def entry(self, body: bytes, rcpts, **envelope) -> QueueEntry:
        return queued_entry(self.tmp, body, rcpts, **envelope)

    def deliver(self, port: int, body: bytes, rcpts=(BOB,), relay: str = 'smarthost_tls = "none"',
                trust=None, **envelope) -> defer.Deferred:
        agent = DeliveryAgent(self.settings(port, relay), None, self.reactor, trust_root=trust)
        return agent.deliver(self.entry(body, rcpts, **envelope), SMARTHOST, list(rcpts))

    def sink(self, *options: str) -> SinkServer:
        server = SinkServer(*options)
        self.addCleanup(server.stop)
        return server

    def aio(self, **options) -> AioServer:
        server = AioServer(**options)
        self.addCleanup(server.stop)
        return server

    def twisted(self, **options) -> tuple[TwistedServer, int]:
        server = TwistedServer(**options)
        port = self.reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return server, port.getHost().port

    def certificate(self) -> tuple[Path, Path]:
        return make_certificate(self.tmp / "tls", "localhost")

    # --- the message as queued --------------------------------------------------

    @defer.inlineCallbacks
    def test_smtp_sink_gets_the_octets_queued(self):
        sink = self.sink()
        for count, body in enumerate((SMALL, BIG), 1):
            results = yield self.deliver(sink.port, body)
            self.assertEqual(outcome(results), {"bob@remote.test": ("delivered", "250 2.0.0 Ok")})
            self.assertEqual(len(sink.dumps()), count)  # (the order of the deliveries)
        [(_, small), (_, big)] = sink.dumps()
        self.assertEqual(small, RELAYED_SMALL)  # (smtp-sink writes LF lines)
        self.assertEqual(big, BIG)

    @defer.inlineCallbacks
    def test_aiosmtpd_gets_the_octets_queued(self):
        server = self.aio()
        for body in (SMALL, BIG):
            results = yield self.deliver(server.port, body)
            self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        [small, big] = server.messages
        self.assertEqual(small[:3], ("alice@example.org", ["bob@remote.test"],
                                     crlf(RELAYED_SMALL)))
        self.assertEqual(big[2], crlf(BIG))
        # SIZE= is the size as sent: CRLF lines, no Return-Path
        self.assertEqual(big[3], [f"SIZE={len(crlf(BIG))}"])

    @defer.inlineCallbacks
    def test_twisted_esmtp_gets_the_octets_queued(self):
        # no PIPELINING, SIZE or 8BITMIME: one command at a time
        server, port = self.twisted()
        for body in (SMALL, BIG):
            results = yield self.deliver(port, body)
            self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        self.assertEqual(server.messages, [("bob@remote.test", RELAYED_SMALL),
                                           ("bob@remote.test", BIG)])

    # --- what the next hop lacks --------------------------------------------------

    def assert_7bit_copy(self, got: bytes) -> None:
        self.assertTrue(got.isascii(), got)
        msg = email.message_from_bytes(got, policy=policy.default)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(msg.get_content(), "Grüße aus Köln\n.dot\n")

    # (one test per server: a missing smtp-sink must not skip the others')

    @defer.inlineCallbacks
    def test_an_8bit_message_goes_in_7_bits_to_smtp_sink_without_8bitmime(self):
        sink = self.sink("-8")
        results = yield self.deliver(sink.port, EIGHT_BIT)
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        [(fields, at_sink)] = sink.dumps()
        self.assertNotIn("BODY=8BITMIME", fields["X-Mail-Args"][0])
        self.assert_7bit_copy(at_sink)

    @defer.inlineCallbacks
    def test_an_8bit_message_goes_in_7_bits_to_twisted_esmtp(self):
        twisted, port = self.twisted()  # no 8BITMIME
        results = yield self.deliver(port, EIGHT_BIT)
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        [(_, got)] = twisted.messages
        self.assert_7bit_copy(got)

    @defer.inlineCallbacks
    def utf8_envelope_without_smtputf8(self, where: int):
        # the recipient that needs SMTPUTF8 bounces (553 5.6.7); bob, at
        # the same server, gets the message in a transaction without jörg
        results = yield self.deliver(where, PLAIN, rcpts=(JOERG, BOB), smtputf8=True)
        got = outcome(results)
        self.assertEqual(got["bob@remote.test"][0], "delivered")
        kind, reply = got["jörg@remote.test"]
        self.assertEqual(kind, "permanent")
        self.assertTrue(reply.startswith("553 5.6.7 "), reply)
        # unless the message needs SMTPUTF8 itself (jörg in its To: field)
        body = "To: jörg@remote.test, bob@remote.test\nSubject: x\n\nhi\n".encode()
        results = yield self.deliver(where, body, rcpts=(JOERG, BOB), smtputf8=True)
        got = outcome(results)
        self.assertEqual(got["bob@remote.test"][0], "permanent")
        self.assertTrue(got["bob@remote.test"][1].startswith("550 5.6.9 "), got)
        # and a sender that needs it: nobody can be sent the message
        results = yield self.deliver(where, PLAIN, rcpts=(BOB,), smtputf8=True,
                                     sender=Address("jörg", "example.org"))
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "permanent")
        self.assertTrue(reply.startswith("553 5.6.7 "), reply)

    @defer.inlineCallbacks
    def test_a_utf8_envelope_at_smtp_sink_without_smtputf8(self):
        sink = self.sink()
        yield self.utf8_envelope_without_smtputf8(sink.port)
        [(fields, got)] = sink.dumps()
        self.assertEqual(got, PLAIN)
        self.assertEqual(fields["X-Rcpt-Args"], ["<bob@remote.test>"])

    @defer.inlineCallbacks
    def test_a_utf8_envelope_at_twisted_esmtp_without_smtputf8(self):
        twisted, port = self.twisted()
        yield self.utf8_envelope_without_smtputf8(port)
        self.assertEqual(twisted.messages, [("bob@remote.test", PLAIN)])

    @defer.inlineCallbacks
    def test_a_utf8_recipient_from_an_alias_leaves_the_others_8bit_copy_as_it_is(self):
        # jörg@ from an alias (the client never said SMTPUTF8), at a server
        # with 8BITMIME and without SMTPUTF8: jörg bounces, bob gets the
        # 8-bit message as queued, not a 7-bit copy made for jörg's sake
        server = self.aio(enable_SMTPUTF8=False)
        results = yield self.deliver(server.port, EIGHT_BIT, rcpts=(JOERG, BOB))
        got = outcome(results)
        self.assertEqual(got["bob@remote.test"][0], "delivered")
        self.assertEqual(got["jörg@remote.test"][0], "permanent")
        self.assertTrue(got["jörg@remote.test"][1].startswith("553 5.6.7 "), got)
        [(_, rcpts, content, options)] = server.messages
        self.assertEqual(rcpts, ["bob@remote.test"])
        self.assertIn("BODY=8BITMIME", options)
        self.assertEqual(content, crlf(EIGHT_BIT))

    @defer.inlineCallbacks
    def test_a_utf8_envelope_goes_with_smtputf8_to_aiosmtpd(self):
        server = self.aio()
        results = yield self.deliver(server.port, "Subject: hé\n\nhé\n".encode(),
                                     rcpts=(JOERG, BOB), smtputf8=True)
        self.assertEqual({k for k, _ in outcome(results).values()}, {"delivered"})
        [(_, rcpts, _, options)] = server.messages
        self.assertEqual(rcpts, ["jörg@remote.test", "bob@remote.test"])
        self.assertIn("SMTPUTF8", options)
        self.assertIn("BODY=8BITMIME", options)

    @defer.inlineCallbacks
    def test_a_message_over_the_size_limit_is_not_sent(self):
        # (aiosmtpd counts transparency dots, which RFC 1870 does not: none here)
        body = BIG.replace(b"\n.", b"\nx")
        server = self.aio(data_size_limit=len(crlf(body)))
        results = yield self.deliver(server.port, body + b"z\n")  # 3 octets over
        [(kind, reply)] = outcome(results).values()
        self.assertEqual(kind, "permanent")
        self.assertTrue(reply.startswith("552 5.3.4 message too big"), reply)
        self.assertEqual(server.messages, [])
        results = yield self.deliver(server.port, body)  # exactly the limit
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")

    # --- refusals and hang-ups ------------------------------------------------------

    @defer.inlineCallbacks
    def test_mixed_recipient_replies(self):
        server = self.aio()
        server.handler.rcpt_replies = {"carol": "550 5.1.1 no carol", "dave": "450 4.2.0 later"}
        twisted, port = self.twisted(refuse={"carol": 550, "dave": 450})
        for where in (server.port, port):
            results = yield self.deliver(where, PLAIN, rcpts=(BOB, CAROL, DAVE))
            kinds = {a: k for a, (k, _) in outcome(results).items()}
            self.assertEqual(kinds, {"bob@remote.test": "delivered",
                                     "carol@remote.test": "permanent",
                                     "dave@remote.test": "transient"})
        self.assertEqual(server.messages[0][1], ["bob@remote.test"])
        self.assertEqual([r for r, _ in twisted.messages], ["bob@remote.test"])

    @defer.inlineCallbacks
    def test_smtp_sink_refusing_or_hanging_up(self):
        cases = [
            # refused DATA: 5xx bounces, 4xx waits
            (("-f", "DATA"), "permanent", "500 5.3.0 "),
            (("-r", "DATA"), "transient", "450 4.3.0 "),
            # refused end of data
            (("-f", "."), "permanent", "500 5.3.0 "),
            # 421 in the middle of the session: all wait
            (("-Q", "RCPT"), "transient", "421 4.0.0 "),
            (("-Q", "DATA"), "transient", "421 4.0.0 "),
            # gone after DATA, and after the final "." (maybe delivered)
            (("-q", "DATA"), "transient", "421 4.4.2 connection lost "),
            (("-q", "."), "transient", "421 4.4.2 connection lost "),
            # a 530 to MAIL: the session lacks TLS or a login, not the
            # message's fault (RFC 3207 4, RFC 4954 6)
            (("-f", "MAIL", "-B", "530 5.7.0 Must issue a STARTTLS command first"),
             "transient", "454 4.7.0 Must issue a STARTTLS command first (the server said "
             "530 5.7.0)"),
        ]
        for options, kind, reply in cases:
            sink = self.sink(*options)
            results = yield self.deliver(sink.port, PLAIN, rcpts=(BOB, CAROL))
            got = outcome(results)
            self.assertEqual({k for k, _ in got.values()}, {kind}, (options, got))
            for text in (t for _, t in got.values()):
                self.assertTrue(text.startswith(reply), (options, text))

    @defer.inlineCallbacks
    def test_twisted_esmtp_hanging_up_after_354(self):
        server, port = self.twisted(hang_up=True)
        for body in (PLAIN, BIG, EIGHT_BIT):  # the 7-bit copy too
            results = yield self.deliver(port, body)
            [(kind, reply)] = outcome(results).values()
            self.assertEqual(kind, "transient")
            self.assertTrue(reply.startswith("421 4.4.2 connection lost"), reply)
        self.assertEqual(server.messages, [])
        self.assertEqual([p.name for p in self.tmp.iterdir() if p.name.endswith(".7bit")], [])

    # --- TLS and AUTH --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_starttls_to_aiosmtpd(self):
        cert, key = self.certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        server = self.aio(tls_context=context, require_starttls=True)
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "opportunistic"')
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        # verify: a self-signed certificate nobody said to trust fails, and says why
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "verify"')
        self.assertEqual(outcome(results), {"bob@remote.test": (
            "transient", "421 4.4.2 TLS negotiation failed (certificate verify failed) "
            "during TLS handshake")})
        trust = tssl.Certificate.loadPEM(cert.read_bytes())
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "verify"',
                                     trust=trust)
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        self.assertEqual(len(server.messages), 2)

    @defer.inlineCallbacks
    def test_a_failed_handshake_then_530_keeps_the_mail_queued(self):
        # opportunistic TLS that fails goes on in clear (RFC 3207 4.1); a
        # server that insists on TLS then says 530 to MAIL: no bounce
        cert, key = self.certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # the failure in the handshake
        context.verify_mode = ssl.CERT_REQUIRED  # a client certificate, which the hub has not
        context.load_verify_locations(str(cert))
        server = self.aio(tls_context=context, require_starttls=True)
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "opportunistic"')
        self.assertEqual(outcome(results), {"bob@remote.test": (
            "transient", "454 4.7.0 Must issue a STARTTLS command first (the server said 530)")})

    def tls_1_0_only(self) -> ssl.SSLContext:
        """A server context that speaks TLS 1.0 and nothing newer (at
        OpenSSL's lowest security level, which TLS 1.0 needs in OpenSSL 3)."""
        cert, key = self.certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
        return context

    @pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
    @defer.inlineCallbacks
    def test_a_smarthost_that_speaks_only_tls_1_0(self):
        # RFC 8996: the relay does not go down to TLS 1.0.  Under "verify"
        # the mail stays queued with the handshake's words; under
        # "opportunistic" (no password) the host is tried again in clear,
        # as an MX host is (docs/relay.rst, "TLS policy")
        server = self.aio(tls_context=self.tls_1_0_only())
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "verify"')
        [(kind, reply)] = outcome(results).values()
        # (this server hangs up without an alert: OpenSSL's words, when a
        # server sends one, are "tlsv1 alert protocol version")
        self.assertEqual(kind, "transient")
        self.assertTrue(reply.startswith("421 4.4.2 TLS negotiation failed"), reply)
        self.assertTrue(reply.endswith("during TLS handshake"), reply)
        self.assertEqual(server.messages, [])
        results = yield self.deliver(server.port, PLAIN, relay='smarthost_tls = "opportunistic"')
        self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        self.assertEqual(len(server.messages), 1)

    def credentials(self, line: str) -> Path:
        path = self.tmp / "relay-auth"
        path.write_text(line + "\n")
        path.chmod(0o600)
        return path

    @defer.inlineCallbacks
    def test_auth_plain_and_login_to_aiosmtpd(self):
        cert, key = self.certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        auth = self.credentials("joe:s3cret:with colon")
        relay = f'smarthost_tls = "opportunistic"\nsmarthost_auth_file = "{auth}"'
        check = aio_authenticator(b"joe", b"s3cret:with colon")
        for exclude in ([], ["PLAIN"]):  # LOGIN when PLAIN is not offered
            server = self.aio(tls_context=context, authenticator=check, auth_required=True,
                              auth_exclude_mechanism=exclude)
            results = yield self.deliver(server.port, PLAIN, relay=relay)
            self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        auth.write_text("joe:wrong\n")
        results = yield self.deliver(server.port, PLAIN, relay=relay)
        self.assertEqual(outcome(results), {"bob@remote.test": (
            "transient", f"454 4.7.0 {AUTH_TEXT_LEFT_OUT} (the server said 535 5.7.8)")})

    @defer.inlineCallbacks
    def test_starttls_and_auth_to_twisted_esmtp(self):
        cert, key = self.certificate()
        context = tssl.DefaultOpenSSLContextFactory(str(key), str(cert))
        auth = self.credentials("joe:s3cret")
        trust = tssl.Certificate.loadPEM(cert.read_bytes())
        relay = f'smarthost_tls = "verify"\nsmarthost_auth_file = "{auth}"'
        for mechanisms in ((b"PLAIN", b"LOGIN"), (b"LOGIN",)):
            server, port = self.twisted(tls=context, login=(b"joe", b"s3cret"),
                                        mechanisms=mechanisms)
            results = yield self.deliver(port, PLAIN, relay=relay, trust=trust)
            self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
            self.assertEqual(len(server.messages), 1)
        auth.write_text("joe:wrong\n")
        results = yield self.deliver(port, PLAIN, relay=relay, trust=trust)
        self.assertEqual(outcome(results), {"bob@remote.test": (
            "transient", f"454 4.7.0 {AUTH_TEXT_LEFT_OUT} (the server said 535)")})

    # --- DSN parameters ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_dsn_parameters_go_only_to_a_next_hop_that_offers_dsn(self):
        envelope = dict(
            dsn=DSNRequest(ret="HDRS", envid="QQ+1", envid_raw="QQ+2B1"),
            recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS", "FAILURE"),
                                              orcpt="rfc822;Bob@Remote.test")),))
        with_dsn, without = self.sink(), self.sink("-N")
        for sink in (with_dsn, without):
            results = yield self.deliver(sink.port, PLAIN, **envelope)
            self.assertEqual(outcome(results)["bob@remote.test"][0], "delivered")
        [(fields, _)] = with_dsn.dumps()
        self.assertEqual(fields["X-Mail-Args"],
                         ["<alice@example.org> RET=HDRS ENVID=QQ+2B1 AUTH=<>"])
        self.assertEqual(fields["X-Rcpt-Args"],
                         ["<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@Remote.test"])
        [(fields, _)] = without.dumps()
        self.assertEqual(fields["X-Mail-Args"], ["<alice@example.org> AUTH=<>"])
        self.assertEqual(fields["X-Rcpt-Args"], ["<bob@remote.test>"])


class RelayQueueInteropTests(TestCase):
    """The queue after a session with mixed replies: what it keeps, what it
    tells the sender (a notice to alice's local mailbox)."""

    @defer.inlineCallbacks
    def run_queue(self, port: int, rcpts, **envelope):
        def settled(entries, mail):  # the first attempt recorded
            return attempt_recorded(entries) and (not entries or mail)

        state = Path(self.mktemp()).absolute()
        state.mkdir(parents=True)
        records, notices = yield first_attempt(state, port, rcpts, settled, **envelope)
        return {str(r.address): r.state for r in records}, notices

    @defer.inlineCallbacks
    def test_the_queue_keeps_exactly_the_4xx_recipients(self):
        server = TwistedServer(refuse={"carol": 550, "dave": 450})
        from twisted.internet import reactor

        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        kept, notices = yield self.run_queue(port.getHost().port, (BOB, CAROL, DAVE))
        self.assertEqual(kept, {"bob@remote.test": "delivered", "carol@remote.test": "bounced",
                                "dave@remote.test": "pending"})
        [notice] = notices
        report = notice.get_body(("plain",)).get_content()
        status = list(notice.iter_parts())[1].as_string()
        self.assertIn("carol@remote.test", report)
        self.assertNotIn("dave@remote.test", status + report)
        self.assertNotIn("bob@remote.test", status + report)
        self.assertIn("Status: 5.0.0", status)  # Twisted's 550 has no enhanced code
        self.assertEqual([r for r, _ in server.messages], ["bob@remote.test"])

    @defer.inlineCallbacks
    def test_notify_success_to_a_next_hop_without_dsn_is_a_relayed_notice(self):
        server = TwistedServer()  # no DSN
        from twisted.internet import reactor

        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        kept, [notice] = yield self.run_queue(
            port.getHost().port, (BOB,),
            recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
        self.assertEqual(kept, {})
        self.assertIn("Action: relayed", list(notice.iter_parts())[1].as_string())
