"""One delivery attempt over in-memory connections (iosim) with a Clock."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import errno
import os
import random
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectBindError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface.verify import verifyObject

from tests.relay_fakes import FakeNetwork, FakeResolver, FakeTLS, ScriptedSMTPServer
from txmailhub.address import Address
from txmailhub.config import load_text
from txmailhub.envelope import DSNRequest, Envelope, RecipientDSN
from txmailhub.interfaces import IDeliveryAgent
from txmailhub.relay import attempt as attempt_module
from txmailhub.relay import mime7bit
from txmailhub.relay.attempt import (
    SMARTHOST,
    STOP_CUT,
    DeliveryAgent,
    DeliveryResult,
    read_credentials,
)
from txmailhub.relay.auth_param_memory import MAX_AGE, AuthParamMemory
from txmailhub.relay.hostname import NoAddressConnected
from txmailhub.relay.mx import MXResolver
from txmailhub.relay.record import QueueEntry
from txmailhub.smtp.policy import RecipientPolicy
from txmailhub.smtp.reply import LocalReply, Reply
from txmailhub.smtp.server import MessageComplete, ServerConfig, Session, SMTPServer, StartMessage
from txmailhub.testing import MemorySpooler, QueueSpy, StaticRouter

ZONE = {
    "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
    "mx1.remote.test": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.remote.test": {"A": ["192.0.2.2"]},
    "other.test": {"A": ["192.0.2.50"]},
    "null.test": {"MX": [(0, "")]},
    "loop.test": {"MX": [(10, "mail.example.org")]},
}
ALICE = Address("alice", "example.org")
OK_REPLY = Reply.of(250, "2.0.0", "ok")
BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")
DAVE = Address("dave", "other.test")


def settings(tmp_path, relay=""):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   f"[relay]\n{relay}\n")
    return load_text(cfg.read_text(), str(cfg))


def entry(tmp_path, *rcpts, body=b"Subject: hi\n\nhello\n.dot line\n", **env):
    path = tmp_path / "Q.msg"
    path.write_bytes(body)
    e = QueueEntry.new("ABCDEF0123456789", Envelope(sender=ALICE, recipients=rcpts, **env), 0.0)
    return dataclasses.replace(e, message_path=str(path), size=len(body),
                               crlf_size=len(body) + body.count(b"\n"),
                               eight_bit=not body.isascii())


def agent(tmp_path, relay="", tls_ok=True):
    clock = Clock()
    s = settings(tmp_path, relay)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    a = DeliveryAgent(s, mx, clock, endpoint=net.endpoint,
                      tls_options=lambda host, verify: FakeTLS(host, tls_ok))
    return a, net, clock


def run(net, d):
    net.run()
    out = []
    d.addBoth(out.append)
    assert out, "delivery did not finish"
    return out[0]


def test_provides_interface(tmp_path):
    assert verifyObject(IDeliveryAgent, agent(tmp_path)[0])


def test_delivers_to_preferred_mx_ipv6_first(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert [(r.address, r.kind, r.remote_mta) for r in results] == [
        (BOB, "delivered", "mx1.remote.test"), (CAROL, "delivered", "mx1.remote.test")]
    assert net.connections == [("2001:db8::1", 25)]
    [server] = net.server_protocols
    [(mail, rcpts, body)] = server.messages
    assert mail.startswith(b"MAIL FROM:<alice@example.org>")
    assert rcpts == [b"bob@remote.test", b"carol@remote.test"]  # one transaction
    assert body == b"Subject: hi\r\n\r\nhello\r\n..dot line\r\n"


def test_size_is_what_goes_on_the_wire_without_the_return_path_line(tmp_path):
    # RFC 1870: SIZE= is the size of the message as it will be sent; the
    # queue's copy starts with our Return-Path, which is never sent.
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    body = b"Return-Path: <alice@example.org>\nSubject: hi\n\nhello\n"
    run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    [(mail, _, sent)] = net.server_protocols[0].messages
    assert mail.split(b"SIZE=")[1].split()[0] == str(len(sent)).encode()
    assert not sent.startswith(b"Return-Path")


def two_per_message(refusal: bytes) -> ScriptedSMTPServer:
    """A server that takes 2 recipients per message and answers a third
    RCPT with ``refusal``."""
    class TwoPerMessage(ScriptedSMTPServer):
        def dataReceived(self, data):
            if b"RCPT" in data and len(self.rcpts) >= 2 and not self.in_data:
                lines = data.split(b"\r\n")
                if lines[0].upper().startswith(b"RCPT"):
                    self.transport.write(refusal + b"\r\n")
                    rest = b"\r\n".join(lines[1:])
                    if rest:
                        super().dataReceived(rest)
                    return
            super().dataReceived(data)

    return TwoPerMessage(extensions=("SIZE 1000000",))


@pytest.mark.parametrize("reply, count, split", [
    (b"452 4.5.3 too many recipients", 5, [2, 2, 1]),  # three transactions
    # a server without enhanced codes says just 452, the code RFC 5321
    # 4.5.3.1.10 says it "MUST" give when out of room for recipients
    (b"452 too many recipients", 3, [2, 1]),
])
def test_recipients_over_the_servers_limit_go_in_a_new_transaction(tmp_path, reply, count,
                                                                   split):
    # RFC 5321 4.5.3.1.10: a server that takes 2 recipients per message
    # answers 452 to the third; the client sends the rest in a new
    # transaction at once instead of waiting for the next retry.
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: two_per_message(reply)
    rcpts = [Address(f"u{i}", "remote.test") for i in range(count)]
    results = run(net, a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts))
    assert sorted((str(r.address), r.kind) for r in results) == [
        (str(x), "delivered") for x in rcpts]
    got = [m for p in net.server_protocols for m in p.messages]
    assert [len(rc) for _, rc, _ in got] == split


def three_rounds_of_one() -> tuple[list[Address], list[list[DeliveryResult]]]:
    """Three recipients of remote.test and the results of three rounds
    that deliver one each ("452 4.5.3 too many" to those left)."""
    rcpts = [Address(f"u{i}", "remote.test") for i in range(3)]
    more = Reply.of(452, "4.5.3", "too many")
    rounds = [[DeliveryResult(rcpts[0], "delivered", OK_REPLY, "mx"),
               *(DeliveryResult(r, "transient", more, "mx") for r in rcpts[1:])],
              [DeliveryResult(rcpts[1], "delivered", OK_REPLY, "mx"),
               DeliveryResult(rcpts[2], "transient", more, "mx")],
              [DeliveryResult(rcpts[2], "delivered", OK_REPLY, "mx")]]
    return rcpts, rounds


def test_the_new_transaction_line_counts_its_recipients_in_words(tmp_path, log_events):
    # "1 recipient(s) of remote.test in a new transaction": the hub's
    # other counts take the singular for 1; the event keeps its count
    a, net, _ = agent(tmp_path)
    rcpts, rounds = three_rounds_of_one()
    a._deliver = lambda *_: defer.succeed(rounds.pop(0))
    e = entry(tmp_path, *rcpts)
    run(net, a.deliver(e, "remote.test", rcpts))
    events = [x for x in log_events if "new transaction" in x.get("log_format", "")]
    assert [formatEvent(x) for x in events] == [
        f"{e.id}: 2 recipients of remote.test in a new transaction "
        "(the server took fewer per message)",
        f"{e.id}: 1 recipient of remote.test in a new transaction "
        "(the server took fewer per message)"]
    assert [x["count"] for x in events] == [2, 1]


def test_a_crash_in_a_later_transaction_leaves_the_first_ones_results(tmp_path):
    # recipients delivered in the first transaction must not be reported
    # as failed (and sent again) because a later round broke
    a, net, _ = agent(tmp_path)
    rcpts = [Address(f"u{i}", "remote.test") for i in range(3)]
    first = [DeliveryResult(rcpts[0], "delivered", OK_REPLY, "mx"),
             *(DeliveryResult(r, "transient", Reply.of(452, "4.5.3", "too many"), "mx")
               for r in rcpts[1:])]
    calls = []

    def fake(entry_, destination, recipients, *_):
        calls.append(list(recipients))
        if len(calls) == 1:
            return defer.succeed(first)
        return defer.fail(RuntimeError("boom"))

    a._deliver = fake
    results = run(net, a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts))
    assert calls == [rcpts, rcpts[1:]]
    assert {r.address: r.kind for r in results} == {
        rcpts[0]: "delivered", rcpts[1]: "transient", rcpts[2]: "transient"}


def test_next_address_then_next_mx(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert results[0].kind == "delivered" and results[0].remote_mta == "mx2.remote.test"
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.1", 25), ("192.0.2.2", 25)]
    # the failed host is remembered: the next message goes to mx2 first
    net.connections.clear()
    run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert net.connections == [("192.0.2.2", 25)]


def test_greeting_421_tries_next_mx(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        greeting=b"421 4.3.2 busy\r\n")
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert results[0].kind == "delivered"
    assert ("192.0.2.1", 25) not in net.connections  # same host: skipped after a 421


def test_a_554_greeting_everywhere_keeps_the_mail_queued(tmp_path):
    # RFC 5321 3.1: a 554 greeting says "no service here", not that the
    # message is undeliverable: the next MX is tried, and if every host says
    # so the mail stays queued (transient) with the server's words.
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            greeting=b"554 5.7.1 no service for you\r\n")
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient"
    assert r.reply.code == 554 and r.reply.text() == "554 5.7.1 no service for you"
    assert ("192.0.2.2", 25) in net.connections  # the next MX was tried
    # RFC 7504: 521 says the host accepts no mail at all: permanent
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            greeting=b"521 5.3.2 this host accepts no mail\r\n")
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "permanent" and r.reply.code == 521
    # a refusal of the message itself is still permanent
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"MAIL": b"550 5.7.1 not from you\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "permanent"


def test_a_554_to_ehlo_from_a_host_that_takes_helo_delivers(tmp_path):
    # RFC 1869 4.5: after an error to EHLO the client sends HELO (or QUIT);
    # a host that refuses EHLO with a 554 and takes HELO gets the mail at
    # once (as from Postfix), not a queue entry that bounces days later
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"EHLO": b"554 5.7.1 EHLO not accepted here\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"
    assert net.connections == [("2001:db8::1", 25)]


@pytest.mark.parametrize("needs", ["SMTPUTF8", "8BITMIME"])
def test_a_554_to_ehlo_lets_the_next_mx_have_mail_helo_cannot_carry(tmp_path, needs):
    # jörg needs SMTPUTF8, which HELO cannot give, and an 8-bit message
    # without a 7-bit form needs 8BITMIME: after mx1's 554 to EHLO neither
    # is bounced for mx1's lack of an extension it never said it lacks;
    # mx2, which offers them, gets the mail in the same attempt
    joerg = Address("jörg", "remote.test")
    if needs == "SMTPUTF8":
        e, rcpt = entry(tmp_path, joerg), joerg
    else:
        e = entry(tmp_path, BOB, body="Subject: x\nTo: jörg@remote.test\n\nGrüße\n".encode())
        rcpt = BOB
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"EHLO": b"554 5.7.1 EHLO not accepted here\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(
        extensions=("8BITMIME", "SMTPUTF8"))
    [r] = run(net, a.deliver(e, "remote.test", [rcpt]))
    assert (r.kind, r.remote_mta) == ("delivered", "mx2.remote.test"), r
    assert not net.server_protocols[0].messages  # mx1 got no final "."


def test_a_554_to_ehlo_and_helo_is_no_tls_downgrade(tmp_path, log_events):
    # a host seen doing TLS that refuses EHLO and HELO sent nothing in
    # clear and said nothing of its STARTTLS: no "TLS downgrade" warning
    a, net, _ = agent(tmp_path)
    a.tls_seen.add("mx1.remote.test")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"EHLO": b"554 5.7.1 not you\r\n", "HELO": b"554 5.7.1 not you\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient"  # (mx2 is down)
    assert net.server_protocols[0].commands[-2:] == [b"HELO mail.example.org", b"QUIT"]
    assert not any("downgrade" in formatEvent(e) for e in log_events)
    # one that takes the HELO sends the mail in clear: that is warned of
    a, net, _ = agent(tmp_path)
    a.tls_seen.add("mx1.remote.test")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"EHLO": b"554 5.7.1 not you\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"
    assert any("downgrade" in formatEvent(e) for e in log_events)


def test_a_530_to_mail_tries_the_next_mx_and_never_bounces(tmp_path):
    # 530 (RFC 3207 4, RFC 4954 6): the host wants TLS or a login first --
    # as a host that insists on TLS says when the opportunistic handshake
    # failed and the hub went on in clear.  Not the message's fault: the
    # next MX is tried, and if every host says so the mail stays queued
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"MAIL": b"530 5.7.0 Must issue a STARTTLS command first\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered" and r.remote_mta == "mx2.remote.test"
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            replies={"MAIL": b"530 5.7.0 Must issue a STARTTLS command first\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient"
    assert r.reply.text() == ("454 4.7.0 Must issue a STARTTLS command first "
                              "(the server said 530 5.7.0)")


def test_a_530_kept_to_the_end_is_the_hubs_account_in_the_notice(tmp_path):
    # the server said 530, not 454: the 454 4.7.0 is the hub's judgement
    # (keep the mail queued), so the notice at expiry must not quote it as
    # the server's words ("smtp;" is what the remote MTA said, RFC 3464
    # 2.3.6), and it says why in the server's words
    from txmailhub.relay import bounce
    from txmailhub.relay.record import FAILED

    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            replies={"MAIL": b"530 5.7.0 Authentication required\r\n"})
    e = entry(tmp_path, BOB)
    [r] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert r.kind == "transient" and isinstance(r.reply, LocalReply)
    rec = dataclasses.replace(e.recipient(BOB), state=FAILED, last_reply=r.reply,
                              remote_mta=r.remote_mta, last_attempt=1.0, attempts=9)
    data = bounce.build_dsn(e, [rec], bounce.FAILED, hostname="mail.example.org",
                            primary_domain="example.org", now=2.0)
    notice = email.message_from_bytes(data, policy=email.policy.default)
    human, status, _ = notice.iter_parts()
    block = status.get_payload()[1]
    assert block["Diagnostic-Code"] == (
        "X-txmailhub; 454 4.7.0 Authentication required (the server said 530 5.7.0)")
    text = " ".join(human.get_content().split())
    assert ("this hub's own account (not mx2.remote.test's reply): 454 4.7.0 Authentication "
            "required (the server said 530 5.7.0) (gave up: the message stayed in the queue "
            "too long)") in text
    assert block["Remote-MTA"] == "dns; mx2.remote.test"  # the host it was talking to


def test_all_down_is_transient(tmp_path):
    a, net, clock = agent(tmp_path)
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient" and r.reply.status == "4.4.1"
    assert r.reply.text().endswith(
        "connection to mx2.remote.test[192.0.2.2]:25 failed: connection refused")
    # the hub's own account, not a server's words (queue show "hub:", and
    # a bounce's X-txmailhub diagnostic)
    assert isinstance(r.reply, LocalReply)
    # no host answered: the runner gives the domain one delivery at a
    # time (failing.py); so is the next delivery, deferred by its memory
    assert r.unreachable
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    clock.advance(0)  # (deferred in a later turn of the reactor)
    [r] = run(net, d)
    assert r.reply.status == "4.4.1" and r.unreachable


class _NoSockets:
    """``FakeNetwork``'s endpoints while the hub has no descriptor for a
    socket: each connect fails as Twisted's TCP client does when
    ``socket()`` raises (``ConnectBindError`` with the errno).  A name
    stands for 192.0.2.25."""

    def __init__(self, net, error):
        self.net, self.error, self.short = net, error, True

    def endpoint(self, host, port):
        real = self.net.endpoint(host, port)
        shortage = self

        class Endpoint:
            def connect(self, factory):
                if shortage.short:
                    error = ConnectBindError(shortage.error, os.strerror(shortage.error))
                    if not host[0].isdigit():
                        # a smarthost's name: what ``NameEndpoint`` says when
                        # none of its addresses took the connection
                        error = NoAddressConnected(f"no address of {host} took the "
                                                   "connection", [Failure(error)])
                    return defer.fail(error)
                if not host[0].isdigit():
                    return shortage.net.endpoint("192.0.2.25", port).connect(factory)
                return real.connect(factory)

        return Endpoint()


@pytest.mark.parametrize("smarthost", ["", "smart.example.net:2525", "192.0.2.25:2525"])
@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_no_socket_for_lack_of_descriptors_is_the_hubs_failure_not_the_domains(
        tmp_path, error, smarthost):
    # out of file descriptors, no connection can even be started: that
    # says nothing of the next hop.  The domain was taken for unreachable
    # ("no host answered", its deliveries one at a time and deferred by
    # the memory of the failure once descriptors were back, every host's
    # addresses tried in vain) and the kept error -- queue show, a delay
    # notice to the sender -- blamed its host: "connection to mx2... failed"
    clock = Clock()
    s = settings(tmp_path, f'smarthost = "{smarthost}"\nsmarthost_tls = "none"'
                 if smarthost else "")
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    first = ("192.0.2.25", 2525) if smarthost else ("2001:db8::1", 25)
    net.servers[first] = ScriptedSMTPServer
    shortage = _NoSockets(net, error)
    a = DeliveryAgent(s, mx, clock, endpoint=shortage.endpoint,
                      tls_options=lambda host, verify: FakeTLS(host, True))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert (r.kind, r.reply.code, r.reply.status) == ("transient", 451, "4.3.0")
    assert isinstance(r.reply, LocalReply) and os.strerror(error) in r.reply.text()
    assert "connection to" not in r.reply.text() and r.remote_mta is None
    assert r.unreachable is None  # nothing learnt of the domain
    assert a._unreachable == {}
    shortage.short = False
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "delivered" and net.connections == [first]


def test_an_address_no_socket_could_be_made_for_is_not_remembered_as_failed(tmp_path):
    # mx1's IPv6 address gets no socket (the descriptors run out just
    # then), its IPv4 address refuses the connection: the IPv4 address is
    # remembered as failed (the host's other addresses go first for a
    # while), the IPv6 one not -- that says nothing of it
    clock = Clock()
    s = settings(tmp_path)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)  # no server: each connection is refused
    shortage = _NoSockets(net, errno.EMFILE)

    def endpoint(host, port):
        return (shortage.endpoint if host == "2001:db8::1" else net.endpoint)(host, port)

    a = DeliveryAgent(s, mx, clock, endpoint=endpoint,
                      tls_options=lambda host, verify: FakeTLS(host, True))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert (r.kind, r.reply.code) == ("transient", 451)
    assert mx.health.is_failed_address("192.0.2.1")
    assert not mx.health.is_failed_address("2001:db8::1")


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENOBUFS])
def test_a_plain_oserror_for_want_of_descriptors_at_connect_is_the_hubs_failure(
        tmp_path, error):
    # an endpoint whose connect fails with the socket's own OSError (one of
    # the application's, or a wrapper's), not Twisted's ConnectBindError:
    # the same shortage, the hub's failure -- not "connection to mx2...
    # failed", the domain not taken for unreachable
    clock = Clock()
    s = settings(tmp_path)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    short = [True]

    class Endpoint:
        def __init__(self, host, port):
            self.real = net.endpoint(host, port)

        def connect(self, factory):
            if short[0]:
                return defer.fail(OSError(error, os.strerror(error)))
            return self.real.connect(factory)

    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    a = DeliveryAgent(s, mx, clock, endpoint=Endpoint,
                      tls_options=lambda host, verify: FakeTLS(host, True))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert (r.kind, r.reply.code, r.reply.status) == ("transient", 451, "4.3.0")
    assert os.strerror(error) in r.reply.text() and "connection to" not in r.reply.text()
    assert r.unreachable is None and a._unreachable == {}
    short[0] = False
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "delivered"


def test_a_domain_one_of_whose_hosts_answered_is_not_unreachable(tmp_path):
    # mx1 answers and says 421; mx2 refuses the connection: the result
    # says mx2's refusal, but a host of the domain answered (a domain the
    # runner gave one delivery at a time has its room again)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        greeting=b"421 4.3.2 busy\r\n")
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient" and r.reply.status == "4.4.1" and r.remote_mta is None
    assert r.unreachable is False


def test_a_delivery_that_tried_no_host_says_nothing_of_them(tmp_path):
    a, net, _ = agent(tmp_path)
    [r] = run(net, a.deliver(entry(tmp_path, Address("x", "nxdomain.test")), "nxdomain.test",
                             [Address("x", "nxdomain.test")]))
    assert r.unreachable is None


@pytest.mark.parametrize("literal, shown", [
    ("[192.0.2.9]", "[192.0.2.9]"),
    # the IPv6 literal too: not "[IPv6:2001:db8::9][2001:db8::9]", and
    # with its tag as RFC 5321 4.1.3 writes it, not "[ipv6:...]"
    ("[IPv6:2001:db8::9]", "[IPv6:2001:db8::9]"),
    ("[ipv6:2001:DB8::9]", "[IPv6:2001:db8::9]"),
])
def test_an_address_literal_is_named_once(tmp_path, log_events, literal, shown):
    a, net, _ = agent(tmp_path)
    who = Address("bob", literal)
    assert a.destination(who) == shown  # as the log names the destination
    [r] = run(net, a.deliver(entry(tmp_path, who), a.destination(who), [who]))
    assert r.kind == "transient"
    assert r.reply.text().endswith(f" connection to {shown}:25 failed: connection refused")
    # in the log too: not "[192.0.2.9][192.0.2.9]"
    lines = [formatEvent(e) for e in log_events if "cannot connect" in (e.get("log_format") or "")]
    assert lines and all(f" cannot connect to {shown}:25: " in line for line in lines), lines


def test_an_ipv4_mapped_address_literal_is_delivered_over_ipv4(tmp_path):
    # bob@[IPv6:::ffff:192.0.2.9] (an alias target, sendmail): the IPv4 host,
    # connected to as the smarthost's mapped address is
    a, net, _ = agent(tmp_path)
    net.servers[("192.0.2.9", 25)] = ScriptedSMTPServer
    who = Address("bob", "[IPv6:::ffff:192.0.2.9]")
    [r] = run(net, a.deliver(entry(tmp_path, who), a.destination(who), [who]))
    assert r.kind == "delivered"
    assert net.connections == [("192.0.2.9", 25)]


def test_per_recipient_results(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT carol@remote.test": b"550 5.1.1 no such user\r\n",
        "RCPT bob@remote.test": b"451 4.7.1 greylisted\r\n",
    })
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL, DAVE), "remote.test",
                                 [BOB, CAROL]))
    kinds = {r.address: (r.kind, r.reply.text()) for r in results}
    assert kinds == {BOB: ("transient", "451 4.7.1 greylisted"),
                     CAROL: ("permanent", "550 5.1.1 no such user")}


def test_dns_failures(tmp_path):
    a, net, _ = agent(tmp_path)
    [r] = run(net, a.deliver(entry(tmp_path, Address("x", "null.test")), "null.test",
                             [Address("x", "null.test")]))
    assert r.kind == "permanent" and r.reply.code == 556 and r.reply.status == "5.1.10"
    [r] = run(net, a.deliver(entry(tmp_path, Address("x", "nx.test")), "nx.test",
                             [Address("x", "nx.test")]))
    assert r.kind == "permanent" and r.reply.status == "5.1.2"
    assert isinstance(r.reply, LocalReply)  # what DNS said, not an SMTP server
    # RFC 5321 5.1: the best MX is this hub itself, and none is better:
    # a loop, bounced at once (RFC 3463 5.4.6), never a connection to us
    [r] = run(net, a.deliver(entry(tmp_path, Address("x", "loop.test")), "loop.test",
                             [Address("x", "loop.test")]))
    assert r.kind == "permanent" and r.reply.code == 554 and r.reply.status == "5.4.6"
    assert "loops back to me" in r.reply.text()
    assert net.connections == []


def test_attempt_groups_by_domain(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    net.servers[("192.0.2.50", 25)] = ScriptedSMTPServer
    results = run(net, a.attempt(entry(tmp_path, BOB, DAVE, CAROL)))
    assert sorted(str(r.address) for r in results if r.kind == "delivered") == [
        "bob@remote.test", "carol@remote.test", "dave@other.test"]
    assert len(net.server_protocols) == 2


def test_silent_remote_times_out(tmp_path):
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(silent=True)
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(silent=True)
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    assert not d.called
    clock.advance(299)
    net.run()
    assert not d.called
    clock.advance(1)  # RFC 5321 4.5.3.2.1: 5 minutes for the greeting
    net.run()
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.2", 25)]  # next MX
    assert not d.called
    clock.advance(300)
    r = run(net, d)[0]
    assert r.kind == "transient" and r.reply.status == "4.4.2"


def test_data_termination_timeout(tmp_path):
    a, net, clock = agent(tmp_path)

    class Stalls(ScriptedSMTPServer):
        def __init__(self):
            super().__init__(replies={"END": b""})

    net.servers[("2001:db8::1", 25)] = Stalls
    net.servers[("192.0.2.2", 25)] = Stalls
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    clock.advance(599)
    net.run()
    assert not d.called
    clock.advance(1)  # 10 minutes for the reply to the final "."
    net.run()
    clock.advance(600)
    r = run(net, d)[0]
    assert r.kind == "transient" and "end of data" in r.reply.text()


@pytest.mark.parametrize("hangs_up", [False, True])
def test_no_answer_to_the_final_dot_tries_no_other_host_in_this_attempt(tmp_path, hangs_up):
    # After the final "." the server may have taken the message (RFC 5321
    # 4.5.3.2.6, 6.1): a timeout or a connection closed before the reply
    # keeps it queued, but handing a second copy to the next MX host at once
    # would be a duplicate made knowingly.  The retry comes later.
    a, net, clock = agent(tmp_path)

    class Stalls(ScriptedSMTPServer):
        def __init__(self):
            super().__init__(replies={"END": b""})

        def dataReceived(self, data):
            super().dataReceived(data)
            if hangs_up and self.messages:
                self.transport.loseConnection()

    net.servers[("2001:db8::1", 25)] = Stalls
    net.servers[("192.0.2.2", 25)] = Stalls
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    if not hangs_up:
        clock.advance(600)
    r = run(net, d)[0]
    assert r.kind == "transient" and "end of data" in r.reply.text()
    assert net.connections == [("2001:db8::1", 25)]
    assert sum(len(p.messages) for p in net.server_protocols) == 1


def test_8bit_converted_for_server_without_8bitmime(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode()
    e = entry(tmp_path, BOB, body=body)
    run(net, a.deliver(e, "remote.test", [BOB]))
    [(_, _, data)] = net.server_protocols[0].messages
    assert data.isascii() and b"quoted-printable" in data and b"Gr=C3=BC=C3=9Fe" in data
    folder = os.path.dirname(e.message_path)
    assert [n for n in os.listdir(folder) if n.endswith(".7bit")] == []  # temp copy removed


def _open_fails_for(monkeypatch, suffix: str, error: int = errno.EMFILE) -> None:
    """``open`` (``open_regular``) of a path ending in ``suffix`` for reading raises
    ``error`` (out of descriptors) in the agent's module and in the
    7-bit conversion's."""
    real = open

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(suffix) and mode == "rb":
            raise OSError(error, os.strerror(error), str(path))
        return real(path, mode, *args, **kwargs)

    real_regular = attempt_module.open_regular

    def fake_open_regular(path):
        if str(path).endswith(suffix):
            raise OSError(error, os.strerror(error), str(path))
        return real_regular(path)

    for module in (attempt_module, mime7bit):
        monkeypatch.setattr(module, "open", fake_open, raising=False)
        monkeypatch.setattr(module, "open_regular", fake_open_regular)


@pytest.mark.parametrize(("extensions", "body", "suffix", "said"), [
    (("PIPELINING", "8BITMIME"), b"Subject: x\n\nhello\n", "Q.msg", "cannot open "),
    # the 7-bit copy made for a server without 8BITMIME; the message it
    # is made of
    (("PIPELINING",), "Subject: x\n\nGrüße\n".encode(), ".7bit", "cannot open "),
    (("PIPELINING",), "Subject: x\n\nGrüße\n".encode(), "Q.msg", "converting "),
])
@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
def test_a_message_that_cannot_be_opened_after_the_354_stays_queued_at_once(
        tmp_path, monkeypatch, log_events, extensions, body, suffix, said, error):
    # out of descriptors when the data is due: the hub's temporary failure
    # at once, no traceback, no other host tried, no 7-bit copy left --
    # not a session error blamed on the server (the next MX tried), nor a
    # session left waiting for data that never comes until the data
    # timeout (minutes, the connection and its slot held meanwhile)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=extensions)
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    e = entry(tmp_path, BOB, body=body)
    _open_fails_for(monkeypatch, suffix, error)
    [result] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert (result.kind, result.reply.code, result.reply.status) == ("transient", 451, "4.3.0")
    assert "will retry" in result.reply.text()
    assert net.connections == [("2001:db8::1", 25)]
    assert [p.messages for p in net.server_protocols] == [[]]
    assert sorted(os.listdir(tmp_path)) == ["Q.msg", "hub.toml"]  # no 7-bit copy left
    lines = [formatEvent(ev) for ev in log_events if ev.get("log_level") in (
        LogLevel.error, LogLevel.critical)]
    assert len(lines) == 1 and lines[0].startswith(said), lines
    assert os.strerror(error) in lines[0]
    assert not any("log_failure" in ev for ev in log_events)  # no traceback


def test_a_7bit_copy_gone_before_it_is_sent_is_the_hubs_failure_not_a_deleted_entry(
        tmp_path, monkeypatch):
    # the message is still queued: only the copy made of it a moment ago
    # is missing, which no `mailhub queue delete` explains.  The hub's
    # temporary failure, as for a copy that cannot be opened otherwise
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    e = entry(tmp_path, BOB, body="Subject: x\n\nGrüße\n".encode())
    _open_fails_for(monkeypatch, ".7bit", errno.ENOENT)
    [result] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert (result.kind, result.reply.code, result.reply.status) == ("transient", 451, "4.3.0")
    assert "local error while sending the message" in result.reply.text()
    assert sorted(os.listdir(tmp_path)) == ["Q.msg", "hub.toml"]  # no 7-bit copy left


def test_8bit_sent_as_is_with_8bitmime(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    body = "Subject: x\n\nGrüße\n".encode()
    run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    [(mail, _, data)] = net.server_protocols[0].messages
    assert b"BODY=8BITMIME" in mail and "Grüße".encode() in data


def test_dsn_parameters_and_passed_flag(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "DSN"))
    e = entry(tmp_path, BOB, dsn=DSNRequest(ret="HDRS", envid="E1"),
              recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
    [r] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert r.dsn_passed
    cmds = net.server_protocols[0].commands
    assert any(c.startswith(b"RCPT TO:<bob@remote.test> NOTIFY=SUCCESS") for c in cmds)


def test_starttls_opportunistic_and_downgrade_logged(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "STARTTLS"), tls_creator=FakeTLS("server"))
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"
    assert net.server_protocols[0].tls
    assert "mx1.remote.test" in a.tls_seen
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer  # no STARTTLS any more
        [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.kind == "delivered"
    assert any("downgrade" in e.get("log_format", "") for e in events)


def test_a_host_that_refuses_starttls_is_sent_to_in_clear_with_a_warning(tmp_path, log_events):
    # RFC 3207 4.1: after a 454 the client decides; opportunistic TLS goes
    # on in clear, and the admin reads why the mail left without TLS
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "STARTTLS"), tls_creator=FakeTLS("server"),
        replies={"STARTTLS": b"454 4.7.0 TLS not available due to temporary reason\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"
    assert not net.server_protocols[0].tls and len(net.server_protocols[0].messages) == 1
    warned = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.warn]
    assert len(warned) == 1, warned
    assert "mx1.remote.test" in warned[0] and "refused it (454 4.7.0 TLS not available" in (
        warned[0]) and "without TLS" in warned[0]


def test_a_refused_starttls_that_keeps_the_mail_queued_is_not_warned_as_sent_in_clear(
        tmp_path, log_events):
    # an opportunistic smarthost with a password: after the 454 nothing
    # goes in clear (the mail stays queued, 454 4.7.0), so no warning says
    # the session "went on without TLS"
    a, net = agent_with_smarthost_login(tmp_path, 'smarthost_tls = "opportunistic"')
    net.servers[("smart.example.net", 587)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS", "AUTH PLAIN"), tls_creator=FakeTLS("server"),
        replies={"STARTTLS": b"454 4.7.0 TLS not available\r\n"})
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and r.reply.status == "4.7.0"
    assert not net.server_protocols[0].messages
    assert not any("went on without TLS" in formatEvent(e) for e in log_events)


@pytest.mark.parametrize("why", ["handshake", "refusal"])
def test_a_host_whose_tls_never_worked_is_not_required_to_use_it(tmp_path, why):
    # require_tls_after_seen refuses a host that stops offering TLS
    # (configuration.rst).  A host that offers STARTTLS and then fails the
    # handshake (a server with TLS 1.0 only, below the hub's floor) or
    # refuses it was remembered as offering it: its plain retry (RFC 3207
    # 4.1) was skipped as "required" from that very session on, and every
    # message to it stayed queued until it bounced
    a, net, _ = agent(tmp_path, "require_tls_after_seen = true", tls_ok=why != "handshake")
    replies = {"STARTTLS": b"454 4.7.0 TLS not available\r\n"} if why == "refusal" else {}
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server", why != "handshake"),
        replies=replies)
    for _ in range(2):  # the first message, and the next one
        [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
        assert r.kind == "delivered", r
    assert "mx1.remote.test" not in a.tls_seen
    # each message went in clear (after a handshake that failed, by the retry)
    assert all(not p.messages or not p.tls for p in net.server_protocols)
    assert sum(len(p.messages) for p in net.server_protocols) == 2


def test_downgrade_refused_when_configured(tmp_path):
    a, net, _ = agent(tmp_path, "require_tls_after_seen = true")
    a.tls_seen.add("mx1.remote.test")
    a.tls_seen.add("mx2.remote.test")
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient" and r.reply.status == "4.7.10"
    assert all(not s.messages for s in net.server_protocols)
    assert r.reply.text() == (
        "450 4.7.10 TLS is required for this destination ([relay] require_tls_after_seen: "
        "it offered STARTTLS before), but the server did not offer STARTTLS")


def agent_with_smarthost_login(tmp_path, relay="", tls_ok=True):
    """An ``agent`` relaying through smart.example.net:587 with a login
    from ``smarthost_auth_file`` (``relay``: more [relay] lines); the agent
    and its network, where no server listens yet."""
    auth = tmp_path / "auth"
    auth.write_text("relayuser:s3cret\n")
    a, net, _ = agent(tmp_path, f'smarthost = "smart.example.net:587"\n'
                                f'smarthost_auth_file = "{auth}"\n' + relay, tls_ok=tls_ok)
    return a, net


def smarthost_with_login(tmp_path):
    """An agent relaying through smart.example.net:587 (STARTTLS, AUTH
    PLAIN) with a login from ``smarthost_auth_file``; the agent and its
    network."""
    a, net = agent_with_smarthost_login(tmp_path)
    net.servers[("smart.example.net", 587)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS", "AUTH PLAIN"), tls_creator=FakeTLS("server"))
    return a, net


def _sent_through_smarthost(tmp_path, written, listening):
    """One message to bob sent through ``[relay] smarthost = written``
    (no TLS) to a scripted server at ``listening`` (host, port): the
    attempt's results and the fake network that saw the connections."""
    a, net, _ = agent(tmp_path, f'smarthost = "{written}"\nsmarthost_tls = "none"')
    net.servers[listening] = ScriptedSMTPServer
    return run(net, a.attempt(entry(tmp_path, BOB))), net


@pytest.mark.parametrize("written, address, shown", [
    # SMTP's literal (RFC 5321 4.1.3)
    ("[IPv6:2001:DB8::25]:2525", "2001:db8::25", "[IPv6:2001:db8::25]"),
    ("[2001:db8::25]:2525", "2001:db8::25", "[IPv6:2001:db8::25]"),
    ("[192.0.2.25]:2525", "192.0.2.25", "[192.0.2.25]"),
    ("192.0.2.25:2525", "192.0.2.25", "[192.0.2.25]"),
    # leading zeros that octal and decimal read alike: that address, not a
    # name handed to the resolver
    ("192.000.002.001:2525", "192.0.2.1", "[192.0.2.1]"),
    # the resolver's shorthand: that address, named as such (not
    # "Remote-MTA: dns; 192.0.513")
    ("192.0.513:2525", "192.0.2.1", "[192.0.2.1]"),
    # an IPv4-mapped IPv6 address: the IPv4 host it reaches, so named (not
    # "[IPv6:::ffff:c000:201]")
    ("[IPv6:::ffff:192.0.2.1]:2525", "192.0.2.1", "[192.0.2.1]"),
    ("[::ffff:c000:201]:2525", "192.0.2.1", "[192.0.2.1]"),
])
def test_a_smarthost_given_as_an_address_literal_is_connected_to_that_address(
        tmp_path, written, address, shown):
    # "[IPv6:...]" was taken by the config and then looked up as a name
    results, net = _sent_through_smarthost(tmp_path, written, (address, 2525))
    assert [r.kind for r in results] == ["delivered"]
    assert net.connections == [(address, 2525)]
    # named as an address literal, as the MX path names bob@[192.0.2.9]'s
    # host: queue show's remote=, a notice's "Remote-MTA: dns; [192.0.2.25]"
    # (no bare number where a domain name goes)
    assert results[0].remote_mta == shown


def test_a_smarthost_name_in_brackets_is_that_name(tmp_path):
    # "[smart.example.net]:587", as Postfix's relayhost is often written:
    # the relay always connected to the name (brackets stripped); 0aed1d8
    # made it a configuration problem that stopped the hub's start
    [r], net = _sent_through_smarthost(tmp_path, "[smart.example.net]:587",
                                       ("smart.example.net", 587))
    assert (r.kind, r.remote_mta) == ("delivered", "smart.example.net")
    assert net.connections == [("smart.example.net", 587)]


def test_a_smarthost_with_a_final_dot_is_named_without_it(tmp_path):
    # looked up as written, but the results (queue show's remote=, a
    # notice's Remote-MTA) name the host, as the TLS check does
    [r], net = _sent_through_smarthost(tmp_path, "smart.example.net.:587",
                                       ("smart.example.net.", 587))
    assert (r.kind, r.remote_mta) == ("delivered", "smart.example.net")
    assert net.connections == [("smart.example.net.", 587)]


@pytest.mark.parametrize("written, shown", [
    ("smart.example.net:2525", "smart.example.net:2525"),
    ("192.0.2.25:2525", "[192.0.2.25]:2525"),
    ("[IPv6:2001:db8::25]:2525", "[IPv6:2001:db8::25]:2525"),
])
def test_a_smarthost_that_takes_no_connection_is_named_once(tmp_path, log_events,
                                                            written, shown):
    # the smarthost's "address" is its name (looked up when connecting) or
    # the address written: "smart.example.net[smart.example.net]:2525" and
    # "192.0.2.25[192.0.2.25]:2525" in queue show, notices and the log
    a, net, _ = agent(tmp_path, f'smarthost = "{written}"\nsmarthost_tls = "none"')
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient"
    assert r.reply.text() == f"451 4.4.1 connection to {shown} failed: connection refused"
    lines = [formatEvent(e) for e in log_events if "cannot connect" in (e.get("log_format") or "")]
    assert lines and all(f" cannot connect to {shown}: " in line for line in lines), lines


def test_smarthost_verify_requires_tls_and_auth(tmp_path):
    a, net = smarthost_with_login(tmp_path)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = run(net, a.attempt(entry(tmp_path, BOB, DAVE)))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [r.kind for r in results] == ["delivered", "delivered"]
    server = net.server_protocols[0]
    assert server.tls
    auth_line = next(c for c in server.commands if c.startswith(b"AUTH"))
    assert base64.b64decode(auth_line.split()[2]) == b"\0relayuser\0s3cret"
    assert len(server.messages) == 1  # both domains in one transaction to the smarthost
    assert not any("s3cret" in repr(e) for e in events)


def test_the_submitter_goes_as_auth_to_an_mx_that_offers_auth(tmp_path):
    # RFC 4954 5: AUTH=<mailbox> for a message the hub vouches for,
    # AUTH=<> for any other, and nothing to a server without AUTH
    a, net, _ = agent(tmp_path)
    offers = ("PIPELINING", "SIZE 1000000", "AUTH PLAIN LOGIN")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=offers)
    for who, param in ((ALICE, b" AUTH=alice@example.org"), (None, b" AUTH=<>")):
        [r] = run(net, a.deliver(entry(tmp_path, BOB, submitter=who), "remote.test", [BOB]))
        assert r.kind == "delivered"
        [(mail, _, _)] = net.server_protocols[-1].messages
        assert mail.startswith(b"MAIL FROM:<alice@example.org> SIZE=") and mail.endswith(param)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer  # no AUTH offered
    run(net, a.deliver(entry(tmp_path, BOB, submitter=ALICE), "remote.test", [BOB]))
    [(mail, _, _)] = net.server_protocols[-1].messages
    assert b"AUTH=" not in mail


def test_a_smarthost_the_hub_logged_in_to_gets_auth_empty_unless_someone_is_vouched_for(
        tmp_path):
    # RFC 4954 5: "MUST supply the AUTH=<> parameter when relaying the
    # message to any server which it has authenticated to" -- unless the
    # hub trusts who submitted it
    a, net = smarthost_with_login(tmp_path)
    for who, param in ((None, b" AUTH=<>"), (ALICE, b" AUTH=alice@example.org")):
        [r] = run(net, a.attempt(entry(tmp_path, DAVE, submitter=who)))
        assert r.kind == "delivered"
        server = net.server_protocols[-1]
        assert any(c.startswith(b"AUTH PLAIN ") for c in server.commands)
        [(mail, _, _)] = server.messages
        assert mail == b"MAIL FROM:<alice@example.org>" + param


class RefusesAuthParameter(ScriptedSMTPServer):
    """Offers AUTH but refuses MAIL with AUTH= (``refusal``), and a MAIL
    without it with ``retry`` (default: 250); RCPT and DATA outside a
    transaction get 503, as from a real server."""

    def __init__(self, refusal, retry=None, **kw):
        kw.setdefault("extensions", ("PIPELINING", "SIZE 1000000", "AUTH PLAIN LOGIN"))
        super().__init__(**kw)
        self.refusal = refusal
        self.retry = retry
        self.open = False

    def _command(self, line):
        verb = line[:4].upper()
        if verb == b"MAIL":
            reply = self.refusal if b" AUTH=" in line else self.retry
            if reply is not None:
                self.open = False
                self.transport.write(reply)
                return
            self.open = True
        elif verb in (b"RCPT", b"DATA") and not self.open:
            self.transport.write(b"503 5.5.1 need MAIL first\r\n")
            return
        super()._command(line)


def deliver_logged(net, a, e, about="AUTH="):
    """The results of delivering ``e``, and the lines logged ``about`` a
    refused parameter."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = run(net, a.deliver(e, "remote.test", list(e.envelope.recipients)))
    finally:
        globalLogPublisher.removeObserver(events.append)
    return results, [formatEvent(x) for x in events if about in x.get("log_format", "")]


@pytest.mark.parametrize("refusal", [b"555 5.5.4 AUTH parameter not recognized\r\n",
                                     b"501 5.5.4 syntax error in parameters\r\n",
                                     # RFC 3463 X.5.4: "invalid command arguments"
                                     b"553 5.5.4 invalid AUTH parameter\r\n"])
@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_auth_parameter_is_dropped_and_the_mail_delivered(tmp_path, refusal,
                                                                    pipelining):
    # AUTH= is advisory: a next hop that offers AUTH but refuses the
    # parameter gets the MAIL again without it, in the same session
    a, net, _ = agent(tmp_path)
    ext = ("PIPELINING",) * pipelining + ("SIZE 1000000", "AUTH PLAIN LOGIN")
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(refusal, extensions=ext)
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB, CAROL, submitter=ALICE))
    assert [(r.address, r.kind) for r in results] == [(BOB, "delivered"), (CAROL, "delivered")]
    [server] = net.server_protocols
    mails = [c for c in server.commands if c.startswith(b"MAIL")]
    assert len(mails) == 2 and b" AUTH=alice@example.org" in mails[0]
    assert b"AUTH=" not in mails[1] and b"RSET" not in server.commands
    [(mail, rcpts, _)] = server.messages
    assert mail == mails[1] and rcpts == [b"bob@remote.test", b"carol@remote.test"]
    # logged once, naming the host, which is remembered
    assert logged == [f"ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused AUTH= on MAIL "
                      f"({refusal.decode().strip()}); MAIL sent again without it, and "
                      f"without it to mx1.remote.test port 25 for 24 hours"]


class RefusesBlankEnvid(RefusesAuthParameter):
    """Offers DSN and refuses a MAIL whose ENVID decodes to white space, as
    Postfix does ("501 5.5.4 Bad ENVID parameter syntax")."""

    def _command(self, line):
        if line[:4].upper() == b"MAIL" and b" ENVID=" in line and b"+09" in line:
            self.open = False
            self.transport.write(b"501 5.5.4 Bad ENVID parameter syntax\r\n")
            return
        super()._command(line)


def _tab_envid_entry(tmp_path):
    """An entry for BOB whose ENVID holds a TAB (``RefusesBlankEnvid``
    refuses it), NOTIFY=SUCCESS asked for."""
    return entry(tmp_path, BOB, dsn=DSNRequest(ret="HDRS", envid="a\tb", envid_raw="a+09b"),
                 recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_dsn_parameters_are_dropped_and_the_success_notice_is_the_hubs(tmp_path,
                                                                              pipelining):
    # RFC 3461 4.4 allows a TAB in ENVID; refused, the MAIL goes again as to
    # a server without DSN, and the result says no notice duty passed on:
    # the queue owes NOTIFY=SUCCESS a "relayed" notice (RFC 3461 5.2.2)
    from txmailhub.relay import bounce
    from txmailhub.relay.recording import apply_results

    a, net, _ = agent(tmp_path)
    ext = ("PIPELINING",) * pipelining + ("SIZE 1000000", "DSN")
    net.servers[("2001:db8::1", 25)] = lambda: RefusesBlankEnvid(None, extensions=ext)
    e = _tab_envid_entry(tmp_path)
    [r], logged = deliver_logged(net, a, e, "DSN parameters")
    assert r.kind == "delivered" and not r.dsn_passed
    [server] = net.server_protocols
    mails = [c for c in server.commands if c.startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<alice@example.org> SIZE=33 RET=HDRS ENVID=a+09b",
                     b"MAIL FROM:<alice@example.org> SIZE=33"]
    # (pipelined, the first batch's RCPT had NOTIFY, and got a 503)
    after = server.commands[server.commands.index(mails[1]):]
    assert b"RCPT TO:<bob@remote.test>" in after
    assert not any(b"NOTIFY=" in c for c in after)
    [(mail, _, _)] = server.messages
    assert mail == mails[1]
    assert apply_results(e, [r], 0.0, False)[BOB].notice == bounce.RELAYED
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused the DSN "
                      "parameters on MAIL (501 5.5.4 Bad ENVID parameter syntax); MAIL sent "
                      "again without ENVID, RET, NOTIFY and ORCPT: success notices asked for "
                      "are this hub's (relayed)"]


@pytest.mark.parametrize("ext", [("PIPELINING", "8BITMIME", "DSN"),
                                 ("PIPELINING", "8BITMIME", "DSN", "SMTPUTF8")])
@pytest.mark.parametrize("envid, envid_raw", [("id-\u20ac", "id-+E2+82+AC"),
                                              ("+" * 34, None)])
def test_an_envid_that_cannot_go_makes_the_success_notice_the_hubs(tmp_path, ext, envid,
                                                                   envid_raw):
    # RFC 3461 4.4: the ENVID is printable US-ASCII of at most 100
    # characters (a UTF-8 one an SMTPUTF8 client gave, a long one from an
    # old record is neither); 5.2.1 (a): a relay to a server with DSN
    # "MUST" pass it on.  Not the id alone dropped, NOTIFY and ORCPT
    # handed over: the message goes as to a server without DSN and the
    # hub keeps the notice duty (5.2.2: "relayed", which shows the id)
    from txmailhub.relay import bounce
    from txmailhub.relay.recording import apply_results

    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext)
    e = entry(tmp_path, BOB, smtputf8=True,
              dsn=DSNRequest(ret="HDRS", envid=envid, envid_raw=envid_raw),
              recipient_dsn=((BOB, RecipientDSN(("SUCCESS",), "rfc822;bob@x.test",
                                                "rfc822;bob@x.test")),))
    [r], logged = deliver_logged(net, a, e, "ENVID")
    assert r.kind == "delivered" and not r.dsn_passed
    [server] = net.server_protocols
    [(mail, _, _)] = server.messages
    assert not any(p in c for c in server.commands
                   for p in (b"ENVID=", b"RET=", b"NOTIFY=", b"ORCPT="))
    assert mail.startswith(b"MAIL FROM:<alice@example.org>")
    assert apply_results(e, [r], 0.0, False)[BOB].notice == bounce.RELAYED
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] offers DSN, but the "
                      "message's ENVID is no US-ASCII id of at most 100 characters (RFC 3461 "
                      "4.4); sent without ENVID, RET, NOTIFY and ORCPT: success notices asked "
                      "for are this hub's (relayed)"]


@pytest.mark.parametrize("server", [
    # no DSN offered: nothing of the message's DSN parameters would go
    # anyway, and the line's "offers DSN" would be untrue
    dict(extensions=("PIPELINING", "8BITMIME")),
    # DSN offered, then a stray reply in the read of the EHLO reply: the
    # session ends before its MAIL went, with nothing sent without ENVID
    dict(replies={"EHLO": b"250-fake.remote\r\n250-PIPELINING\r\n250 DSN\r\n"
                          b"250 2.0.0 stray\r\n"}),
], ids=["no-dsn", "no-mail-went"])
def test_the_withheld_envid_line_is_only_for_a_mail_sent_to_a_server_offering_dsn(
        tmp_path, server):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(**server)
    e = entry(tmp_path, BOB, smtputf8=True,
              dsn=DSNRequest(ret="HDRS", envid="id-\u20ac", envid_raw="id-+E2+82+AC"),
              recipient_dsn=((BOB, RecipientDSN(("SUCCESS",), "rfc822;bob@x.test",
                                                "rfc822;bob@x.test")),))
    [r], logged = deliver_logged(net, a, e, "ENVID")
    assert not r.dsn_passed and logged == []
    mails = [c for p in net.server_protocols for c in p.commands if c.startswith(b"MAIL")]
    if "replies" in server:
        assert r.kind == "transient" and mails == []
    else:
        assert r.kind == "delivered" and len(mails) == 1


def test_a_clients_orcpt_that_cannot_go_makes_its_success_notice_the_hubs(tmp_path):
    # RFC 3461 5.2.1 (d): the client's ORCPT "MUST also be passed on"; one
    # whose 7-bit form would not fit in RCPT goes nowhere, and NOTIFY with
    # it: that recipient's notice duty stays the hub's (5.2.2), the other's
    # passes on with its parameters
    from txmailhub.relay import bounce
    from txmailhub.relay.recording import apply_results

    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "8BITMIME", "DSN"))
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    e = entry(tmp_path, BOB, CAROL, smtputf8=True,
              recipient_dsn=((BOB, RecipientDSN(("SUCCESS",), raw, raw)),
                             (CAROL, RecipientDSN(("SUCCESS",), "rfc822;c@x.test",
                                                  "rfc822;c@x.test"))))
    results, logged = deliver_logged(net, a, e, "ORCPT of")
    assert [(r.address, r.kind, r.dsn_passed) for r in results] == [
        (BOB, "delivered", False), (CAROL, "delivered", True)]
    rcpts = [c for c in net.server_protocols[0].commands if c.startswith(b"RCPT")]
    assert rcpts == [b"RCPT TO:<bob@remote.test>",
                     b"RCPT TO:<carol@remote.test> NOTIFY=SUCCESS ORCPT=rfc822;c@x.test"]
    notices = apply_results(e, results, 0.0, False)
    assert notices[BOB].notice == bounce.RELAYED and notices[CAROL].notice != bounce.RELAYED
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1]: the ORCPT of RCPT "
                      "TO:<bob@remote.test> does not fit in the 500 characters RFC 3461 adds "
                      "for NOTIFY and ORCPT; RCPT sent without NOTIFY and ORCPT: a success "
                      "notice asked for is this hub's (relayed)"]


def test_the_orcpt_line_is_logged_only_for_a_rcpt_that_went(tmp_path):
    # without PIPELINING the RCPT goes once MAIL has its 250; mx1 sends a
    # reply too many with that 250, and the session ends before the RCPT
    # is written: the line about the RCPT sent without NOTIFY and ORCPT is
    # mx2's alone, where it went
    from txmailhub.relay import bounce
    from txmailhub.relay.recording import apply_results

    a, net, _ = agent(tmp_path)
    ext = ("8BITMIME", "DSN")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext, replies={
        "MAIL": b"250 2.1.0 ok\r\n250 2.1.0 stray\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(extensions=ext)
    raw = "utf-8;" + "\U0001F600" * 60 + "@x.test"
    e = entry(tmp_path, BOB, smtputf8=True,
              recipient_dsn=((BOB, RecipientDSN(("SUCCESS",), raw, raw)),))
    [r], logged = deliver_logged(net, a, e, "ORCPT of")
    assert (r.kind, r.remote_mta, r.dsn_passed) == ("delivered", "mx2.remote.test", False)
    assert apply_results(e, [r], 0.0, False)[BOB].notice == bounce.RELAYED
    assert logged == ["ABCDEF0123456789: mx2.remote.test[192.0.2.2]: the ORCPT of RCPT "
                      "TO:<bob@remote.test> does not fit in the 500 characters RFC 3461 adds "
                      "for NOTIFY and ORCPT; RCPT sent without NOTIFY and ORCPT: a success "
                      "notice asked for is this hub's (relayed)"]


def test_an_ascii_envid_goes_with_the_rest_of_the_request(tmp_path):
    # the same message with an ASCII id: everything goes, the duty with it
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "8BITMIME", "DSN", "SMTPUTF8"))
    e = entry(tmp_path, BOB, smtputf8=True, dsn=DSNRequest("HDRS", "id-1", "id-1"),
              recipient_dsn=((BOB, RecipientDSN(("SUCCESS",), "rfc822;bob@x.test",
                                                "rfc822;bob@x.test")),))
    [r], logged = deliver_logged(net, a, e, "ENVID")
    assert r.kind == "delivered" and r.dsn_passed and logged == []
    [(mail, _, _)] = net.server_protocols[0].messages
    assert mail.endswith(b" RET=HDRS ENVID=id-1")


class RefusesBlankEnvidAndCloses(RefusesBlankEnvid):
    """Refuses the MAIL with the ENVID, then closes at the first RCPT
    pipelined behind it (a "421" and the connection dropped)."""

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and not self.open:
            self.transport.write(b"421 4.3.2 shutting down\r\n")
            self.transport.loseConnection()
            return
        super()._command(line)


def test_refused_dsn_parameters_and_no_mail_sent_again_is_not_logged_as_sent(tmp_path):
    # the server closed before the refused MAIL of the batch could go
    # again: nothing went without the DSN parameters, and the log says no
    # such thing; the recipient waits for the next attempt
    a, net, _ = agent(tmp_path)
    ext = ("PIPELINING", "SIZE 1000000", "DSN")
    net.servers[("2001:db8::1", 25)] = lambda: RefusesBlankEnvidAndCloses(None, extensions=ext)
    [r], logged = deliver_logged(net, a, _tab_envid_entry(tmp_path), "DSN parameters")
    assert r.kind == "transient"  # (and mx2 refused the connection)
    [server] = net.server_protocols
    assert [c for c in server.commands if c.startswith(b"MAIL")] == [
        b"MAIL FROM:<alice@example.org> SIZE=33 RET=HDRS ENVID=a+09b"]
    assert not logged


@pytest.mark.parametrize("refusal", [b"550 5.7.1 sender refused\r\n",
                                     b"553 5.1.8 sender domain unknown\r\n"])
def test_a_sender_refusal_is_not_retried_without_auth_parameter(tmp_path, refusal):
    # a policy (X.7.x) or address (X.1.x) refusal is about the sender,
    # not the parameter: it stands, and nothing is remembered
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(refusal)
    for _ in range(2):
        results, logged = deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
        assert [(r.kind, r.reply.text()) for r in results] == [
            ("permanent", refusal.decode().strip())]
        mails = [c for c in net.server_protocols[-1].commands if c.startswith(b"MAIL")]
        assert len(mails) == 1 and b" AUTH=alice@example.org" in mails[0]
        assert logged == []


AUTH_REFUSAL = b"555 5.5.4 AUTH parameter not recognized\r\n"


def mail_commands(server):
    return [c for c in server.commands if c.startswith(b"MAIL")]


def test_a_host_that_refused_auth_parameter_gets_none_for_a_day(tmp_path):
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(AUTH_REFUSAL)
    e = entry(tmp_path, BOB, submitter=ALICE)
    results, logged = deliver_logged(net, a, e)
    assert [r.kind for r in results] == ["delivered"] and len(logged) == 1
    assert len(mail_commands(net.server_protocols[-1])) == 2
    # the next sessions to that host: no AUTH=, no refused MAIL, no log line
    for wait in (60.0, MAX_AGE - 61):
        clock.advance(wait)
        results, logged = deliver_logged(net, a, e)
        assert [r.kind for r in results] == ["delivered"] and logged == []
        [mail] = mail_commands(net.server_protocols[-1])
        assert b"AUTH=" not in mail
        assert net.server_protocols[-1].messages[0][0] == mail
    # the time is up: AUTH= again (the host may have changed its mind); this
    # one still refuses it, and is remembered (and logged) anew
    clock.advance(1)
    results, logged = deliver_logged(net, a, e)
    assert [r.kind for r in results] == ["delivered"] and len(logged) == 1
    first, second = mail_commands(net.server_protocols[-1])
    assert first.endswith(b" AUTH=alice@example.org") and b"AUTH=" not in second


def test_a_host_that_refused_auth_parameter_and_took_it_later(tmp_path):
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(AUTH_REFUSAL)
    e = entry(tmp_path, BOB, submitter=ALICE)
    deliver_logged(net, a, e)
    clock.advance(MAX_AGE)
    offers = ("PIPELINING", "SIZE 1000000", "AUTH PLAIN LOGIN")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=offers)
    [r] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert r.kind == "delivered"
    [mail] = mail_commands(net.server_protocols[-1])
    assert mail.endswith(b" AUTH=alice@example.org")


def test_another_host_still_gets_auth_parameter(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(AUTH_REFUSAL)
    offers = ("PIPELINING", "SIZE 1000000", "AUTH PLAIN LOGIN")
    net.servers[("192.0.2.50", 25)] = lambda: ScriptedSMTPServer(extensions=offers)
    deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
    [r] = run(net, a.deliver(entry(tmp_path, DAVE, submitter=ALICE), "other.test", [DAVE]))
    assert r.kind == "delivered" and net.connections[-1] == ("192.0.2.50", 25)
    [mail] = mail_commands(net.server_protocols[-1])
    assert mail.endswith(b" AUTH=alice@example.org")


def test_the_memory_of_hosts_refusing_auth_parameter_is_bounded(tmp_path):
    # room for one host: remembering a second forgets the first, which
    # then gets AUTH= again (and refuses it again: a refused MAIL, a log line)
    clock = Clock()
    memory = AuthParamMemory(clock, max_hosts=1)
    a, net = _agent_with(tmp_path, auth_param_memory=memory, clock=clock)
    assert a.auth_param_refusers is memory
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(AUTH_REFUSAL)
    net.servers[("192.0.2.50", 25)] = lambda: RefusesAuthParameter(AUTH_REFUSAL)
    bob, dave = entry(tmp_path, BOB, submitter=ALICE), entry(tmp_path, DAVE, submitter=ALICE)
    assert len(deliver_logged(net, a, bob)[1]) == 1
    assert memory.refuses("mx1.remote.test", 25)
    [r] = run(net, a.deliver(dave, "other.test", [DAVE]))
    assert r.kind == "delivered" and len(mail_commands(net.server_protocols[-1])) == 2
    assert len(memory) == 1 and memory.refuses("other.test", 25)
    results, logged = deliver_logged(net, a, bob)
    assert [r.kind for r in results] == ["delivered"] and len(logged) == 1
    assert len(mail_commands(net.server_protocols[-1])) == 2


def test_a_refused_retry_without_auth_parameter_gives_its_own_reply(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(
        b"555 5.5.4 AUTH parameter not recognized\r\n",
        retry=b"553 5.1.8 sender domain unknown\r\n")
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
    assert [(r.kind, r.reply.text()) for r in results] == [
        ("permanent", "553 5.1.8 sender domain unknown")]
    assert len([c for c in net.server_protocols[0].commands if c.startswith(b"MAIL")]) == 2
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused AUTH= on MAIL "
                      "(555 5.5.4 AUTH parameter not recognized); MAIL sent again without it"]
    # the MAIL without it was refused too: nothing shows AUTH= was the
    # trouble, and the host is not remembered -- the next session sends it
    assert len(a.auth_param_refusers) == 0
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
    assert len(mail_commands(net.server_protocols[-1])) == 2 and len(logged) == 1


def test_no_auth_parameter_and_no_retry_to_a_server_without_auth(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(
        b"250 2.1.0 ok\r\n", retry=b"555 5.5.4 SIZE not recognized\r\n",
        extensions=("PIPELINING", "SIZE 1000000"))
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
    assert [(r.kind, r.reply.code) for r in results] == [("permanent", 555)]
    mails = [c for c in net.server_protocols[0].commands if c.startswith(b"MAIL")]
    assert len(mails) == 1 and b"AUTH=" not in mails[0]
    assert logged == []


def test_smarthost_verify_without_starttls_refused(tmp_path):
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"')
    net.servers[("smart.example.net", 25)] = ScriptedSMTPServer
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and "STARTTLS" in r.reply.text()
    assert not net.server_protocols[0].messages
    # the refusal names the setting behind it: "TLS is required for this
    # destination" alone left the admin of a smarthost on a trusted
    # network (no STARTTLS there) to guess at smarthost_tls
    assert r.reply.text() == (
        '450 4.7.10 TLS is required for this destination ([relay] smarthost_tls = '
        '"verify"), but the server did not offer STARTTLS')


def test_opportunistic_smarthost_remembers_tls_like_an_mx_host(tmp_path):
    # relay.rst: "opportunistic: as for MX hosts" -- the TLS-seen memory,
    # and with require_tls_after_seen a downgrade is refused
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"\n'
                                'smarthost_tls = "opportunistic"\nrequire_tls_after_seen = true')
    net.servers[("smart.example.net", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server"))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "delivered" and "smart.example.net" in a.tls_seen
    net.servers[("smart.example.net", 25)] = ScriptedSMTPServer  # no STARTTLS now
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and r.reply.status == "4.7.10"
    assert not net.server_protocols[-1].messages


def test_a_verify_smarthost_that_refuses_starttls_for_good_keeps_the_mail_queued(tmp_path):
    # relay.rst: under "verify" a failure keeps the mail queued.  A 5yz to
    # STARTTLS (a smarthost that has no TLS after all, or no TLS for now
    # worded as a 554) refuses the hub's TLS policy, not this message: it
    # bounced the mail at once
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"')
    net.servers[("smart.example.net", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server"),
        replies={"STARTTLS": b"554 5.7.0 TLS not available\r\n"})
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient", r
    assert r.reply.text() == "454 4.7.0 TLS not available (the server said 554 5.7.0)"
    assert not net.server_protocols[0].messages


def test_a_verify_smarthost_that_says_250_to_starttls_keeps_the_mail_queued_saying_why(
        tmp_path):
    # no plain retry (TLS is required), and queue show's reason names the
    # setting and what the server said, not "454 4.7.0 go ahead"
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"')
    net.servers[("smart.example.net", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server"),
        replies={"STARTTLS": b"250 2.0.0 go ahead\r\n"})
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and len(net.server_protocols) == 1
    assert net.server_protocols[0].commands[-1] == b"STARTTLS"
    assert r.reply.text() == (
        '454 4.7.0 TLS is required for this destination ([relay] smarthost_tls = "verify"), '
        'but the server answered STARTTLS with "go ahead", not 220, and the connection was '
        "dropped (the server said 250 2.0.0)")


def test_smarthost_tls_failure(tmp_path):
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"', tls_ok=False)
    net.servers[("smart.example.net", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server"))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient"
    assert not net.server_protocols[0].messages


def test_an_opportunistic_smarthost_whose_handshake_fails_never_gets_the_password_in_clear(
        tmp_path):
    # relay.rst: under "opportunistic" the password of smarthost_auth_file
    # only goes over TLS.  The plain retry after a failed handshake (RFC
    # 3207 4.1) ran with the policy "none", under which the session sends
    # it: AUTH PLAIN in the clear to whoever broke the handshake
    a, net = agent_with_smarthost_login(tmp_path, 'smarthost_tls = "opportunistic"',
                                        tls_ok=False)
    net.servers[("smart.example.net", 587)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS", "AUTH PLAIN"), tls_creator=FakeTLS("server", False))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and "TLS negotiation failed" in r.reply.text()
    assert not any(c.startswith(b"AUTH") for p in net.server_protocols for c in p.commands)
    assert not any(p.messages for p in net.server_protocols)
    assert len(net.server_protocols) == 1  # no plain retry: it could only end in a 454


def test_smarthost_none_sends_in_clear(tmp_path):
    a, net, _ = agent(tmp_path, 'smarthost = "10.0.0.1:25"\nsmarthost_tls = "none"')
    net.servers[("10.0.0.1", 25)] = lambda: ScriptedSMTPServer(extensions=("STARTTLS",))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "delivered" and not net.server_protocols[0].tls


def test_read_credentials_refuses_a_fifo_and_does_not_wait_on_it(tmp_path):
    # read at each delivery: a FIFO put there waited for a writer for ever
    # (the delivery, and the queue behind it); now an OSError, which keeps
    # the mail queued as for a file that cannot be read
    from conftest import not_waiting_on

    from txmailhub.regular_file import NotRegularFile

    p = tmp_path / "auth"
    os.mkfifo(p)
    with pytest.raises(NotRegularFile):
        not_waiting_on(p, lambda: read_credentials(str(p)))


def test_read_credentials_reads_the_first_64k_characters(tmp_path):
    p = tmp_path / "auth"
    p.write_text("u:" + "\u00e9" * 70000 + "\n")  # 2 octets each: the cut falls mid-file
    assert read_credentials(str(p)) == ("u", "\u00e9" * 65534)


def test_read_credentials_of_a_file_cut_in_a_character_is_not_utf8(tmp_path):
    # a file that ends within a character (written half-way, a password
    # cut by hand) is no UTF-8 text, as open() said: not a password
    # quietly missing its last octets; nor for `check` (the same reader)
    p = tmp_path / "auth"
    p.write_bytes(b"relayuser:pass\xc3")
    with pytest.raises(UnicodeDecodeError):
        read_credentials(str(p))
    p.write_bytes(b"relayuser:pass\xc3\xa9")  # whole: read as it is
    assert read_credentials(str(p)) == ("relayuser", "pass\u00e9")


def test_read_credentials(tmp_path):
    p = tmp_path / "auth"
    p.write_text("user@example.org:pa:ss\n")
    assert read_credentials(str(p)) == ("user@example.org", "pa:ss")
    assert read_credentials("") is None
    p.write_text("user@example.org:pa:ss\r\n\n  \n")  # blank lines: fine
    assert read_credentials(str(p)) == ("user@example.org", "pa:ss")
    p.write_text("u:p")  # no newline at all
    assert read_credentials(str(p)) == ("u", "p")
    # a second account (or a password split over two lines) is not ignored
    for text in ("u:p\nv:q\n", "u:p\n\nv:q\n", "u:first half\nsecond half\n"):
        p.write_text(text)
        with pytest.raises(ValueError, match=r"expected one line .* found 2"):
            read_credentials(str(p))
    # a line with no user name is no account
    p.write_text(":password\n")
    with pytest.raises(ValueError, match="expected one line"):
        read_credentials(str(p))


def test_a_changed_smarthost_auth_file_is_read_at_the_next_attempt(tmp_path):
    a, net = smarthost_with_login(tmp_path)
    (tmp_path / "auth").write_text("relayuser:n3w-secret\n")
    [r] = run(net, a.attempt(entry(tmp_path, DAVE)))
    assert r.kind == "delivered"
    auth_line = next(c for c in net.server_protocols[-1].commands if c.startswith(b"AUTH"))
    assert base64.b64decode(auth_line.split()[2]) == b"\0relayuser\0n3w-secret"


@pytest.mark.parametrize("broken, why", [
    ("", 'expected one line "username:password"'),  # written half-way: empty for now
    (b"relayuser:\xff\xfe\n", "not UTF-8 text"),
    (None, "No such file"),  # replaced by a new file: away for a moment
    ("dir", "Is a directory"),
])
def test_a_smarthost_auth_file_that_cannot_be_read_keeps_the_mail_queued_without_a_traceback(
        tmp_path, log_events, broken, why):
    # the file is read at each attempt: one that cannot be read then
    # (an admin changing it) is the configuration's fault, said in one
    # line and in the reply kept with the mail -- no traceback, no
    # connection made with no login
    a, net = smarthost_with_login(tmp_path)
    auth = tmp_path / "auth"
    auth.unlink()
    if broken == "dir":
        auth.mkdir()
    elif isinstance(broken, bytes):
        auth.write_bytes(broken)
    elif broken is not None:
        auth.write_text(broken)
    [r] = run(net, a.attempt(entry(tmp_path, DAVE)))
    assert r.kind == "transient" and r.reply.code == 451
    assert "smarthost_auth_file" in r.reply.text() and why in r.reply.text()
    assert not net.connections
    assert not [e for e in log_events if e.get("log_failure") is not None]
    [error] = [e for e in log_events if e["log_level"].name == "error"]
    assert "smarthost_auth_file" in error["log_format"] and why in error["why"]


def test_broken_opportunistic_tls_falls_back_to_clear(tmp_path):
    a, net, _ = agent(tmp_path, tls_ok=False)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "STARTTLS"), tls_creator=FakeTLS("server"))
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"
    first, second = net.server_protocols
    assert first.messages == [] and b"STARTTLS" in first.commands
    assert b"STARTTLS" not in second.commands and len(second.messages) == 1


@pytest.mark.parametrize("why", ["handshake", "250"])
def test_hosts_that_answered_and_then_refused_the_plain_retry_are_no_unreachable_domain(
        tmp_path, why):
    # each MX host answered, offered STARTTLS, and then failed the
    # handshake or said 250 to STARTTLS (no TLS: the connection dropped);
    # the plain retry's connection was refused.  The domain was remembered
    # as one whose hosts cannot be reached at all (relay.rst: "a host that
    # answered, even to refuse, is not"), its next messages deferred
    # without a connection, and the reply kept did not say why the last
    # connection failed (the first session's, which had connected)
    a, net, _ = agent(tmp_path, tls_ok=why != "handshake")
    replies = {"STARTTLS": b"250 2.0.0 go ahead\r\n"} if why == "250" else {}

    def once(address):
        def make():
            del net.servers[(address, 25)]  # the next connection is refused
            return ScriptedSMTPServer(extensions=("PIPELINING", "STARTTLS"),
                                      tls_creator=FakeTLS("server", why != "handshake"),
                                      replies=replies)
        return make

    for address in ("2001:db8::1", "192.0.2.2"):
        net.servers[(address, 25)] = once(address)
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient"
    assert r.reply.text() == ("451 4.4.1 connection to mx2.remote.test[192.0.2.2]:25 failed: "
                              "connection refused")
    assert net.connections == [("2001:db8::1", 25)] * 2 + [("192.0.2.2", 25)] * 2
    # the next message to the domain is tried, not deferred unasked (a
    # deferral waits for the clock: "delivery did not finish")
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"


def test_a_leading_return_path_is_not_relayed(tmp_path):
    """Local copies keep the Return-Path of their final delivery; the copy
    sent onwards must not carry one (RFC 5321 4.4)."""
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    body = b"Return-Path: <alice@example.org>\nReceived: from x\nSubject: hi\n\nReturn-Path: body\n"
    results = run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    assert results[0].kind == "delivered"
    [(_, _, sent)] = net.server_protocols[0].messages
    assert sent == b"Received: from x\r\nSubject: hi\r\n\r\nReturn-Path: body\r\n"


class HeldRunner:
    """``run_blocking`` that holds every call until the test releases it."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        from twisted.internet import defer
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def release(self):
        for f, args, d in self.calls:
            try:
                result = f(*args)
            except Exception as e:
                d.errback(e)
            else:
                d.callback(result)
        self.calls = []


def test_conversion_runs_through_the_injected_runner_before_streaming(tmp_path):
    from txmailhub.relay import mime7bit

    clock = Clock()
    s = settings(tmp_path)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    runner = HeldRunner()
    a = DeliveryAgent(s, mx, clock, endpoint=net.endpoint, run_blocking=runner,
                      tls_options=lambda host, verify: FakeTLS(host))
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode()
    e = entry(tmp_path, BOB, body=body)
    d = a.deliver(e, "remote.test", [BOB])
    net.run()
    [(f, args, _)] = runner.calls  # the conversion waits in the runner...
    assert f is mime7bit.convert_file and args[0] == e.message_path
    server = net.server_protocols[0]
    assert server.in_data and not server.messages  # ...and nothing was streamed yet
    runner.release()
    [r] = run(net, d)
    assert r.kind == "delivered"
    [(_, _, data)] = server.messages
    assert data.isascii() and b"Gr=C3=BC=C3=9Fe" in data


def test_unconvertible_message_bounces_without_ending_the_data(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nTo: jörg@remote.test\n\nGrüße\n".encode()
    e = entry(tmp_path, BOB, body=body)
    [r] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert r.kind == "permanent" and r.reply.status == "5.6.3"
    assert "SMTPUTF8" in r.reply.text()
    # this hub's judgement: a bounce must not quote it as the server's words
    assert isinstance(r.reply, LocalReply)
    assert not net.server_protocols[0].messages  # no final "." was sent
    folder = os.path.dirname(e.message_path)
    assert [n for n in os.listdir(folder) if n.endswith(".7bit")] == []


@pytest.mark.parametrize("body", [
    "Subject: x\nFrom: jörg@example.org\n\nGrüße\n",
    # a multipart whose 7-bit Content-Type would name another boundary
    # (the stdlib decodes an encoded word in a quoted one): its delimiter
    # lines, which go as stored, would leave a reader no parts
    'Subject: Grüße\nContent-Type: multipart/mixed; boundary="=?utf-8?q?b?="; name="ä"\n\n'
    "--=?utf-8?q?b?=\n\nGrüße\n--=?utf-8?q?b?=--\n",
], ids=["mailbox", "boundary"])
def test_an_unconvertible_utf8_header_message_bounces_with_x_6_9(tmp_path, body):
    # sent with SMTPUTF8 (RFC 6532 headers): RFC 6531 4.2's code for it
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = body.encode()
    e = entry(tmp_path, BOB, body=body, smtputf8=True, body_8bit=True)
    [r] = run(net, a.deliver(e, "remote.test", [BOB]))
    assert r.kind == "permanent" and (r.reply.code, r.reply.status) == (550, "5.6.9")
    assert not net.server_protocols[0].messages


def test_tls_memory_survives_a_restart(tmp_path):
    a, net, _ = agent(tmp_path, "require_tls_after_seen = true")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "STARTTLS"), tls_creator=FakeTLS("server"))
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered" and "mx1.remote.test" in a.tls_seen
    writes = a.tls_seen.writes
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert a.tls_seen.writes == writes == 1  # known already: not written again
    # a new agent on the same state directory (a restart) still knows it
    b, net2, _ = agent(tmp_path, "require_tls_after_seen = true")
    assert "mx1.remote.test" in b.tls_seen
    net2.servers[("2001:db8::1", 25)] = ScriptedSMTPServer  # STARTTLS gone: a downgrade
    [r] = run(net2, b.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient"  # mx1 refused as a downgrade, mx2 is down
    mx1 = net2.server_protocols[0]
    assert mx1.commands and not any(c.startswith(b"MAIL") for c in mx1.commands)


def test_an_unconvertible_message_drops_the_connection_at_once(tmp_path):
    # Not a polite close: under TLS that waits for the server's
    # close_notify, and a server in the middle of DATA (Exim) keeps reading
    # -- the attempt waited for its 60 s timer.
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    e = entry(tmp_path, BOB, body="Subject: x\nTo: jörg@remote.test\n\nGrüße\n".encode())
    d = a.deliver(e, "remote.test", [BOB])
    net.pumps[0].clientIO.loseConnection = lambda: None  # a close that waits
    net.run()
    [r] = run(net, d)  # without the clock moving
    assert r.reply.status == "5.6.3" and not net.server_protocols[0].messages
    assert not clock.getDelayedCalls()  # no close timer left waiting


def session_in_flight(tmp_path):
    """An ``agent`` whose delivery to remote.test is connected to an MX
    that never answers: a session for the stop to cut.  Returns the agent,
    the network and the delivery's Deferred (not fired)."""
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(silent=True)
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    return a, net, d


def test_abort_all_cuts_the_sessions_in_flight_and_connects_no_more(tmp_path):
    # The hub stops and its grace is over: nothing of the attempt may go on
    # after the queue's lock is released.
    a, net, d = session_in_flight(tmp_path)
    assert not d.called and len(net.pumps) == 1
    a.abort_all()
    [r] = run(net, d)
    assert r.kind == "transient"
    # a delivery asked for now (a DNS answer that arrives late) connects nowhere
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient" and len(net.pumps) == 1
    a.resume()  # the runner starts again
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"


def test_abort_all_fires_once_the_sessions_it_cut_are_gone(tmp_path):
    # abortConnection closes the socket a reactor turn later, when the
    # transport reports the connection lost: the hub's stop fired before
    # that, with the relay's socket and Twisted's timer for it still on the
    # reactor (docs/embedding.rst: nothing of the hub left once it fires)
    a, net, d = session_in_flight(tmp_path)
    gone = a.abort_all()
    assert not gone.called  # the transport has not said the connection is lost
    [r] = run(net, d)
    assert r.kind == "transient" and gone.called
    assert a.abort_all().called  # nothing in flight: at once


def test_a_connection_lost_after_the_stop_stopped_waiting_is_no_error(tmp_path):
    # the runner waits CUT_GRACE at most (``addTimeout`` cancels the wait):
    # the session's connectionLost that comes later must not fire it again
    a, net, d = session_in_flight(tmp_path)
    gone = a.abort_all()
    gone.cancel()
    gone.addErrback(lambda f: None)
    [r] = run(net, d)
    assert r.kind == "transient"


def test_a_session_cut_by_the_stop_marks_no_host_failed(tmp_path):
    # The stop's cut is the hub's doing: the host is not marked failed
    # (the next start would try the other MX first), and the result says
    # the hub stopped, not a timeout or a lost connection.
    a, net, d = session_in_flight(tmp_path)
    a.abort_all()
    [r] = run(net, d)
    assert r.kind == "transient" and "the hub stopped" in r.reply.text()
    assert not a.mx.health.is_failed("mx1.remote.test")


def test_a_session_cut_by_the_stop_logs_no_tls_downgrade(tmp_path):
    # cut before the EHLO reply, the session never saw what the host
    # offers: a host that offered STARTTLS before is no downgrade
    a, net, _ = agent(tmp_path)
    a.tls_seen.add("mx1.remote.test")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(silent=True)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
        net.run()
        a.abort_all()
        [r] = run(net, d)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.kind == "transient" and "the hub stopped" in r.reply.text()
    assert not any("downgrade" in (e.get("log_format") or "") for e in events)
    assert "mx1.remote.test" in a.tls_seen


def test_a_session_cut_by_the_stop_after_the_ehlo_reply_still_logs_a_downgrade(tmp_path):
    # the EHLO reply came without STARTTLS from a host that offered it
    # before, and the session went on in clear: the stop cutting it later
    # (here at DATA) does not make that downgrade unknown
    a, net, _ = agent(tmp_path)
    a.tls_seen.add("mx1.remote.test")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={"DATA": b""})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
        net.run()
        assert not d.called
        a.abort_all()
        [r] = run(net, d)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.kind == "transient" and "the hub stopped" in r.reply.text()
    assert any("downgrade" in (e.get("log_format") or "") for e in events)


class _LeavesAtEhlo(ScriptedSMTPServer):
    """Greets, then closes the connection at EHLO without a reply."""

    def _command(self, line):
        if line.upper().startswith(b"EHLO"):
            self.transport.loseConnection()
        else:
            super()._command(line)


def _downgrade_logged(tmp_path, server, advance=0.0):
    """Deliver to mx1.remote.test, which offered STARTTLS before, through
    ``server``: whether a "TLS downgrade" was logged, and the result."""
    a, net, clock = agent(tmp_path)
    a.tls_seen.add("mx1.remote.test")
    net.servers[("2001:db8::1", 25)] = server
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
        net.run()
        for _ in range(10):  # past any reply timeout, a step at a time
            if d.called or not advance:
                break
            clock.advance(advance)
            net.run()
        [r] = run(net, d)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = any("downgrade" in (e.get("log_format") or "") for e in events)
    assert "mx1.remote.test" in a.tls_seen  # the memory forgets nobody for it
    return logged, r


def test_a_421_greeting_logs_no_tls_downgrade(tmp_path):
    # the host said no more than "421": no EHLO reply, nothing known of
    # what it offers
    logged, r = _downgrade_logged(tmp_path, lambda: ScriptedSMTPServer(
        greeting=b"421 4.3.2 too busy\r\n"))
    assert r.kind == "transient"
    assert not logged


def test_a_connection_lost_before_the_ehlo_reply_logs_no_tls_downgrade(tmp_path):
    logged, r = _downgrade_logged(tmp_path, _LeavesAtEhlo)
    assert r.kind == "transient"
    assert not logged


def test_a_timeout_waiting_for_the_ehlo_reply_logs_no_tls_downgrade(tmp_path):
    logged, r = _downgrade_logged(
        tmp_path, lambda: ScriptedSMTPServer(replies={"EHLO": b""}), advance=60.0)
    assert r.kind == "transient"  # mx2's refused connection, after mx1's timeout
    assert not logged


def test_an_ehlo_reply_without_starttls_from_a_host_that_offered_it_logs_a_downgrade(
        tmp_path):
    logged, r = _downgrade_logged(tmp_path, ScriptedSMTPServer)
    assert r.kind == "delivered"
    assert logged


def test_an_ehlo_refused_then_helo_from_a_host_that_offered_starttls_logs_a_downgrade(
        tmp_path):
    # a 502 to EHLO is a reply that says the host has no extensions: the
    # message goes in clear after HELO
    logged, r = _downgrade_logged(tmp_path, lambda: ScriptedSMTPServer(
        replies={"EHLO": b"502 5.5.1 no EHLO here\r\n"}))
    assert r.kind == "delivered"
    assert logged


def test_the_stop_cancels_the_session_timers_and_says_why_it_cut(tmp_path):
    # A transport says the connection is lost a turn or more after the
    # abort (Twisted's TCP does it in a timed call): a reply timer due in
    # between must not make the stop's cut a timeout of the server.
    clock, proto, transport = _client_on_a_clock(tmp_path)
    proto.dataReceived(b"220 hi\r\n")  # EHLO written, its timer running
    proto.abort()
    assert transport.disconnecting or getattr(transport, "disconnected", False)
    assert not clock.getDelayedCalls()
    clock.advance(3600)  # whatever was due runs now
    for _ in range(5):
        clock.advance(0)
    proto.connectionLost(None)
    text = proto.done.result.session_error.text()
    assert "the hub stopped" in text and "timeout" not in text


def _client_on_a_clock(tmp_path, sender=None):
    """An SMTPClientProtocol over a StringTransport, timed by a Clock."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    clock = Clock()
    session = ClientSession(helo="hub.test", sender=sender, recipients=[(BOB, None)], size=10,
                            tls="none")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None, str(tmp_path / "c"))
    transport = StringTransport()
    proto.makeConnection(transport)
    return clock, proto, transport


def _starttls_on_a_clock(tmp_path):
    """An SMTPClientProtocol (opportunistic TLS) over a StringTransport that
    can start TLS, timed by a Clock, once the server's 220 to STARTTLS came:
    the TLS layer is started and the handshake not done."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    class StartsTLS(StringTransport):
        tls = None

        def startTLS(self, creator):
            self.tls = creator

    clock = Clock()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="opportunistic")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), "creator",
                               str(tmp_path / "c"))
    transport = StartsTLS()
    proto.makeConnection(transport)
    proto.dataReceived(b"220 hi\r\n")
    proto.dataReceived(b"250-mx.remote.test\r\n250 STARTTLS\r\n")
    proto.dataReceived(b"220 2.0.0 go ahead\r\n")
    assert transport.tls == "creator"
    assert transport.value().endswith(b"STARTTLS\r\nEHLO hub.test\r\n")
    return clock, proto


def _out_of_time(clock, seconds):
    from txmailhub.relay.attempt import VERDICT_TURNS

    clock.advance(seconds)
    for _ in range(VERDICT_TURNS):
        clock.advance(0)


def test_a_tls_handshake_that_never_ends_times_out_as_the_handshake(tmp_path):
    # the server answered 220 to STARTTLS and then sent nothing (or stopped
    # half way through the handshake): the EHLO written after it never
    # left, and the timeout is the handshake's, said so -- not the EHLO's
    clock, proto = _starttls_on_a_clock(tmp_path)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        _out_of_time(clock, 299)
        assert not proto.done.called
        _out_of_time(clock, 1)  # TIMEOUTS[Phase.TLS]
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert proto.transport.disconnecting
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.session_error.text() == (
        "421 4.4.2 timeout waiting for the server (TLS handshake)")
    assert outcome.phase == "TLS handshake"
    assert [formatEvent(e) for e in events if "timeout" in formatEvent(e)] == [
        "timeout waiting for the server (TLS handshake)"]


def test_the_ehlo_after_a_handshake_has_its_own_timeout(tmp_path):
    # the EHLO leaves once the handshake is done: its five minutes start then
    clock, proto = _starttls_on_a_clock(tmp_path)
    clock.advance(200)
    proto.handshakeCompleted()
    _out_of_time(clock, 299)
    assert not proto.transport.disconnecting
    _out_of_time(clock, 1)
    assert proto.transport.disconnecting
    proto.connectionLost(None)
    assert proto.done.result.session_error.text() == (
        "421 4.4.2 timeout waiting for the server (EHLO)")



def test_the_handshake_is_timed_by_its_own_step(tmp_path, monkeypatch):
    # TIMEOUTS[Phase.TLS], not the EHLO's (written with it, not yet sent)
    from txmailhub.smtp.client import TIMEOUTS, Phase

    monkeypatch.setitem(TIMEOUTS, Phase.TLS, 30)
    clock, proto = _starttls_on_a_clock(tmp_path)
    _out_of_time(clock, 29)
    assert not proto.transport.disconnecting
    _out_of_time(clock, 1)
    assert proto.transport.disconnecting


def test_an_implicit_tls_handshake_does_not_restart_the_greetings_wait(tmp_path):
    # under implicit TLS the layer says its handshake is done too: the wait
    # for the greeting started at the connection and goes on
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    clock = Clock()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="opportunistic")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), "creator",
                               str(tmp_path / "c"))
    proto.makeConnection(StringTransport())
    clock.advance(200)
    proto.handshakeCompleted()
    _out_of_time(clock, 100)
    assert proto.transport.disconnecting
    proto.connectionLost(None)
    assert proto.done.result.session_error.text() == (
        "421 4.4.2 timeout waiting for the server (greeting)")

def test_a_failed_handshake_names_what_openssl_said(tmp_path):
    # a certificate that does not verify: the queue's last error says so,
    # in the TLS phase (the EHLO after STARTTLS was already written)
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    _, proto, _ = _client_on_a_clock(tmp_path)
    proto.dataReceived(b"220 hi\r\n")
    proto._tls_pending = True  # as after the StartTLS action
    proto.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    outcome = proto.done.result
    assert outcome.session_error.text() == (
        "421 4.4.2 TLS negotiation failed (certificate verify failed) during TLS handshake")
    assert outcome.phase == "TLS handshake"


_BY_ADDRESS = ("; a smarthost given by its address seldom passes: set [relay] smarthost to the "
               'name its certificate lists, or smarthost_tls = "opportunistic" if the network '
               "to it is trusted (docs/relay.rst)")


@pytest.mark.parametrize(("ident", "named"), [
    # an address: the ways out are said too, where the reply named neither
    ("127.0.0.1", "127.0.0.1" + _BY_ADDRESS), ("::1", "::1" + _BY_ADDRESS),
    ("smtp.provider.example", "smtp.provider.example")])
def test_a_certificate_for_another_name_is_said_so(tmp_path, ident: str, named: str):
    # smarthost = "127.0.0.1:587" with smarthost_tls = "verify": Twisted's
    # own name check (service_identity, no SSL.Error) ended the handshake,
    # and the queue said only "TLS negotiation failed during TLS handshake"
    import ipaddress

    from service_identity.exceptions import (
        DNSMismatch,
        IPAddressMismatch,
        VerificationError,
    )
    from service_identity.hazmat import DNS_ID, IPAddress_ID
    from twisted.python.failure import Failure

    try:
        ipaddress.ip_address(ident)
        mismatch = IPAddressMismatch(mismatched_id=IPAddress_ID(ident))
    except ValueError:
        mismatch = DNSMismatch(mismatched_id=DNS_ID(ident))
    _, proto, _ = _client_on_a_clock(tmp_path)
    proto.dataReceived(b"220 hi\r\n")
    proto._tls_pending = True  # as after the StartTLS action
    proto.connectionLost(Failure(VerificationError(errors=[mismatch])))
    assert proto.done.result.session_error.text() == (
        f"421 4.4.2 TLS negotiation failed (the certificate is not valid for {named}) "
        "during TLS handshake")


def _failure(kind: str):
    from OpenSSL import SSL
    from service_identity.exceptions import DNSMismatch, VerificationError
    from service_identity.hazmat import DNS_ID
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return {
        "verify": Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])),
        "name": Failure(VerificationError(
            errors=[DNSMismatch(mismatched_id=DNS_ID("smtp.provider.example"))])),
        "closed": Failure(ConnectionDone()),
    }[kind]


@pytest.mark.parametrize(("kind", "said"), [
    ("verify", "TLS negotiation failed (certificate verify failed)"),
    ("name", "TLS negotiation failed (the certificate is not valid for smtp.provider.example)"),
    ("closed", "connection lost (Connection was closed cleanly.)"),
])
def test_an_implicit_tls_handshake_failure_is_said_as_after_starttls(tmp_path, kind, said):
    # a port-465 smarthost (implicit TLS): the handshake comes before the
    # greeting, and the queue showed Python's repr of the exception
    # ("connection lost (VerificationError(errors=[DNSMismatch(...)]))")
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="none", tls_active=True)
    proto = SMTPClientProtocol(session, Clock(), str(tmp_path / "m"), None, str(tmp_path / "c"))
    proto.makeConnection(StringTransport())
    proto.connectionLost(_failure(kind))
    outcome = proto.done.result
    assert outcome.session_error.text() == f"421 4.4.2 {said} during greeting"
    assert outcome.phase == "greeting"


def test_a_tls_error_after_the_implicit_greeting_is_no_negotiation_failure(tmp_path):
    # once the server spoke, the handshake is over: a later loss is a loss
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="none", tls_active=True)
    proto = SMTPClientProtocol(session, Clock(), str(tmp_path / "m"), None, str(tmp_path / "c"))
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"220 hi\r\n")
    proto.connectionLost(_failure("verify"))
    assert proto.done.result.session_error.text().startswith("421 4.4.2 connection lost (")


def test_a_server_that_trickles_bytes_still_times_out(tmp_path):
    # RFC 5321 4.5.3.2 times the wait for a reply, not for a byte
    clock, proto, transport = _client_on_a_clock(tmp_path)
    for byte in b"220 slow":
        clock.advance(100)
        proto.dataReceived(bytes([byte]))
        if transport.disconnecting:
            break
    assert clock.seconds() == 300 and transport.disconnecting
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.session_error.status == "4.4.2"


def test_each_complete_reply_restarts_the_clock(tmp_path):
    clock, proto, transport = _client_on_a_clock(tmp_path)
    clock.advance(299)
    proto.dataReceived(b"220 hi\r\n")  # a whole reply: EHLO sent, 5 more minutes
    clock.advance(299)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_a_server_that_never_lets_the_connection_close_is_cut(tmp_path):
    # After the 221 our close waits for the server: under TLS, Twisted sends
    # close_notify and waits for the server's.  A server that neither sends
    # it nor closes the TCP connection held the attempt for good: its
    # results (already known) were never reported, and the delivery slots
    # (per destination, in all) stayed taken.
    class Lingering(ScriptedSMTPServer):
        def _command(self, line):
            if line.upper() == b"QUIT":
                self.transport.write(b"221 2.0.0 bye\r\n")  # and stays
            else:
                super()._command(line)

    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = Lingering
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.pumps[0].clientIO.loseConnection = lambda: None  # a close that waits
    net.run()
    # the results are known at the 221: reported at once, not after the
    # close (a hub stopping meanwhile would have recorded nothing)
    assert d.called and run(net, d)[0].kind == "delivered"
    assert clock.getDelayedCalls()  # the close itself is still timed ...
    clock.advance(60)  # ... by a minute (the DONE step's time)
    assert not clock.getDelayedCalls()


def test_a_quit_that_gets_no_reply_holds_the_attempt_only_a_short_while(tmp_path):
    # QUIT goes once the outcome is known, to a server reading commands:
    # its reply changes nothing, and a server that never answers it held
    # the attempt (and its delivery slot) for a minute; now ten seconds.
    class Mute(ScriptedSMTPServer):
        def _command(self, line):
            if line.upper() != b"QUIT":  # no 221, and the connection stays
                super()._command(line)

    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = Mute
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    assert not d.called and net.server_protocols[0].commands[-1] == b"QUIT"
    clock.advance(9)
    net.run()
    assert not d.called
    clock.advance(1)
    [r] = run(net, d)
    assert r.kind == "delivered"  # the 250 to the final "." said so


def agent_with_held_dns(tmp_path):
    """``agent`` with an SMTP server at remote.test's MX, whose MX answer
    waits until the test calls the third value returned (the fourth: the
    resolver's own ``resolve``)."""
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    held: defer.Deferred = defer.Deferred()
    real = a.mx.resolve
    a.mx.resolve = lambda domain: held
    return a, net, lambda: real("remote.test").chainDeferred(held), real


def test_a_dns_answer_that_comes_after_a_stop_and_a_start_connects_nowhere(tmp_path):
    # The old run's delivery waited for its MX answer through the stop and
    # the next start: it must not deliver (its result would be thrown away,
    # and the new run delivers the message too).
    a, net, answer, real = agent_with_held_dns(tmp_path)
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    a.abort_all()  # the stop gives up
    a.resume()  # and the hub starts again
    answer()  # the answer comes now
    [r] = run(net, d)
    assert r.kind == "transient" and not net.pumps  # no connection made
    a.mx.resolve = real
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered"  # a delivery of the new run goes through


def test_one_destination_per_domain_however_it_is_spelled(tmp_path):
    # an A-label and its U-label are one domain: one connection, one limit
    a, _, _ = agent(tmp_path)
    assert a.destination(Address("a", "xn--bcher-kva.example")) == a.destination(
        Address("b", "BÜCHER.example")) == "bücher.example"


def test_only_too_many_recipients_starts_a_new_transaction(tmp_path):
    # RFC 5321 4.5.3.1.10 is about 452 4.5.3; a full mailbox (452 4.2.2)
    # is retried on the schedule, not at once
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT carol@remote.test": b"452 4.2.2 mailbox full\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert {r.address: r.kind for r in results} == {BOB: "delivered", CAROL: "transient"}
    assert len(net.server_protocols) == 1


def test_a_server_that_takes_no_recipient_at_all_is_not_asked_again_at_once(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT bob@remote.test": b"452 4.5.3 too many recipients\r\n",
        "RCPT carol@remote.test": b"452 4.5.3 too many recipients\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert [r.kind for r in results] == ["transient", "transient"]
    assert len(net.server_protocols) == 1


def test_the_data_block_timeout_runs_per_chunk_written(tmp_path):
    # RFC 5321 4.5.3.2.5: 3 minutes per data block, not for the whole message
    (tmp_path / "m").write_bytes(b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 1000)
    clock, proto, transport = _client_on_a_clock(tmp_path)
    for reply in (b"220 hi\r\n", b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        proto.dataReceived(reply)
    chunks = 0
    # a link that stalls: the first 16 KiB chunks taken after 170 s and
    # 120 s (each within 3 minutes, both together not), then the rest
    # quickly (within MIN_DATA_RATE, which the first minutes are spared)
    for wait in (170, 120):
        clock.advance(wait)
        transport.producer.resumeProducing()
        chunks += 1
    while transport.producer is not None:
        clock.advance(1)
        transport.producer.resumeProducing()
        chunks += 1
    assert chunks > 2
    assert not transport.disconnecting
    assert transport.value().endswith(b"\r\n.\r\n")


def test_a_conversion_that_ends_after_a_timeout_sends_nothing_and_leaves_nothing(tmp_path):
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    (tmp_path / "m").write_bytes(
        "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode())
    clock, runner = Clock(), HeldRunner()
    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            eight_bit=True, tls="none")
    converted = str(tmp_path / "m.0a1b2c3d.7bit")
    proto = SMTPClientProtocol(session, clock, str(tmp_path / "m"), None, converted, runner)
    transport = StringTransport()
    proto.makeConnection(transport)
    for reply in (b"220 hi\r\n", b"250 hi\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        proto.dataReceived(reply)  # no 8BITMIME: the conversion is asked for
    assert len(runner.calls) == 1
    clock.advance(180)  # the data block times out while it runs
    assert transport.disconnecting
    proto.connectionLost(None)
    runner.release()  # the conversion ends late
    assert transport.producer is None and not os.path.exists(converted)


def test_at_most_ten_addresses_per_attempt_and_an_untried_host_stays_healthy(tmp_path):
    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "many.test": {"MX": [(10, "mxa.many.test"), (20, "mxb.many.test")]},
            "mxa.many.test": {"A": [f"192.0.2.{100 + i}" for i in range(12)]},
            "mxb.many.test": {"A": ["192.0.2.200"]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    net.servers[("192.0.2.200", 25)] = ScriptedSMTPServer
    who = Address("x", "many.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "many.test", [who]))
    assert r.kind == "transient" and len(net.connections) == 10  # MAX_ADDRESSES_PER_ATTEMPT
    # no host answered: the domain is remembered, and an attempt meanwhile
    # is deferred at once, without a connection
    d = a.deliver(entry(tmp_path, who), "many.test", [who])
    clock.advance(0)
    [r] = run(net, d)
    assert r.kind == "transient" and r.unreachable and len(net.connections) == 10
    # mxb was never tried: it is not "failed", so the next attempt after
    # the memory starts there
    clock.advance(a.unreachable_memory)
    [r] = run(net, a.deliver(entry(tmp_path, who), "many.test", [who]))
    assert r.kind == "delivered" and net.connections[10:] == [("192.0.2.200", 25)]


def test_a_host_that_answers_again_is_healthy_again(tmp_path):
    a, net, _ = agent(tmp_path)
    a.mx.health.failed("mx1.remote.test")  # mx2 is tried first now, and is down
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered" and r.remote_mta == "mx1.remote.test"
    assert not a.mx.health.is_failed("mx1.remote.test")
    assert a.mx.health.is_failed("mx2.remote.test")


def _agent_with(tmp_path, relay="", clock=None, **kw):
    clock = clock or Clock()
    s = settings(tmp_path, relay)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    kw.setdefault("tls_options", lambda host, verify: FakeTLS(host))
    return DeliveryAgent(s, mx, clock, endpoint=net.endpoint, **kw), net


def test_a_verified_smarthost_gets_a_verifying_tls_context(tmp_path):
    # smarthost_tls = "verify" (the default): its certificate is checked
    # against its name, never the non-verifying context MX hosts get
    asked = []

    def tls_options(host, verify):
        asked.append((host, verify))
        return FakeTLS(host)

    a, net = _agent_with(tmp_path, 'smarthost = "smart.example.net:25"', tls_options=tls_options)
    net.servers[("smart.example.net", 25)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS",), tls_creator=FakeTLS("server"))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "delivered" and net.server_protocols[0].tls
    assert asked and set(asked) == {("smart.example.net", True)}


def test_a_conversion_that_breaks_is_retried_not_bounced(tmp_path):
    # a local error (a full disk while writing the 7-bit copy) is this
    # hub's problem, not the message's: 451, the message stays queued
    from txmailhub.relay import mime7bit

    def run_blocking(f, *args):
        if f is mime7bit.convert_file:
            return defer.fail(OSError("No space left on device"))
        return defer.maybeDeferred(f, *args)

    a, net = _agent_with(tmp_path, run_blocking=run_blocking)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode()
    [r] = run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    assert r.kind == "transient" and r.reply.code == 451
    assert not net.server_protocols[0].messages


def test_an_mx_on_port_465_is_not_spoken_to_in_implicit_tls(tmp_path):
    # implicit TLS is for a port-465 smarthost only (relay.rst); an MX host
    # on [relay] port 465 still gets the ordinary session
    a, net = _agent_with(tmp_path, "port = 465")
    net.servers[("2001:db8::1", 465)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "delivered" and not net.server_protocols[0].tls


def test_connected_says_whether_a_delivery_got_past_dns_and_connecting(tmp_path):
    # what the hub's stop asks: until then, giving the delivery up loses nothing
    a, net, answer, _ = agent_with_held_dns(tmp_path)
    e = entry(tmp_path, BOB)
    d = a.deliver(e, "remote.test", [BOB])
    assert not a.connected(e.id)  # looking up DNS
    answer()
    assert a.connected(e.id)  # in its session (the network moves in run)
    assert run(net, d)[0].kind == "delivered"
    assert not a.connected(e.id)


class _SlowEndpoint:
    """Connects only when the test fires the Deferred in ``connects``."""

    def __init__(self, connects):
        self.connects = connects

    def connect(self, factory):
        d: defer.Deferred = defer.Deferred()
        self.connects.append(d)
        return d


def test_quiesce_cancels_the_connects_of_the_entries_not_waited_for(tmp_path):
    a, net, _ = agent(tmp_path)
    connects: list[defer.Deferred] = []
    a.endpoint = lambda host, port: _SlowEndpoint(connects)
    e = entry(tmp_path, BOB)
    d = a.deliver(e, "remote.test", [BOB])
    assert len(connects) == 1 and not a.connected(e.id)  # connecting
    a.quiesce(keep=())
    [r] = run(net, d)
    assert r.kind == "transient" and len(connects) == 1  # no next address tried
    # an entry the stop waits for may still connect: its other destinations'
    # outcomes are recorded with this one's
    a.quiesce(keep={e.id})
    d = a.deliver(e, "remote.test", [BOB])
    assert len(connects) == 2 and not connects[1].called
    a.resume()


def advance_until_done(net, clock, d, step: float, limit: float = 3600) -> float:
    """Run the network and the clock ``step`` seconds at a time until ``d``
    fires (or ``limit`` seconds pass); the seconds it took."""
    spent = 0.0
    while not d.called and spent < limit:
        net.run()
        clock.advance(step)
        spent += step
    return spent


def use_mx_hosts(a, clock, domain, count, first_address):
    """Give the agent a resolver where ``domain`` has ``count`` MX hosts,
    ``mx<i>.<domain>`` at preference ``10 + i`` with the one address
    ``192.0.2.<first_address + i>``; the host names, most preferred first."""
    names = [f"mx{i}.{domain}" for i in range(count)]
    zone = {**ZONE, domain: {"MX": [(10 + i, n) for i, n in enumerate(names)]}}
    zone.update({n: {"A": [f"192.0.2.{first_address + i}"]} for i, n in enumerate(names)})
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    return names


def _ten_silent_hosts(tmp_path, **settings):
    """An attempt on a domain of ten MX hosts that accept and never speak,
    run to its end: the agent, the network, the hosts' names, the time it
    took and its one result."""
    a, net, clock = agent(tmp_path, **settings)
    names = use_mx_hosts(a, clock, "silent.test", 10, first_address=100)
    for i in range(10):
        net.servers[(f"192.0.2.{100 + i}", 25)] = lambda: ScriptedSMTPServer(silent=True)
    who = Address("x", "silent.test")
    d = a.deliver(entry(tmp_path, who), "silent.test", [who])
    spent = advance_until_done(net, clock, d, step=60)
    [r] = run(net, d)
    return a, net, names, spent, r


def test_silent_hosts_hold_an_attempt_a_bounded_time(tmp_path):
    # Ten addresses that accept the connection and never speak held the
    # attempt (and a delivery slot) 10 x 5 minutes; a domain with such
    # hosts (say the sender's, for a success notice) could keep every slot
    # busy.  No further host is started once the budget is spent.
    from txmailhub.relay.attempt import HOSTS_TIME_BUDGET
    a, net, names, spent, r = _ten_silent_hosts(tmp_path)
    assert r.kind == "transient" and r.reply.status == "4.4.2"
    assert spent <= HOSTS_TIME_BUDGET + 300
    assert len(net.connections) == HOSTS_TIME_BUDGET // 300
    tried = HOSTS_TIME_BUDGET // 300
    assert a.mx.health.is_failed(names[tried - 1])
    assert not a.mx.health.is_failed(names[tried])  # never tried: not failed


def test_the_time_budget_is_the_configured_one(tmp_path):
    # [relay] hosts_time_budget: ten minutes are two silent hosts' greetings
    a, net, names, spent, r = _ten_silent_hosts(tmp_path, relay='hosts_time_budget = "10m"')
    assert r.kind == "transient" and spent <= 600 + 300
    assert len(net.connections) == 2
    assert not a.mx.health.is_failed(names[2])  # never tried


def test_a_refusal_just_before_the_time_budget_runs_out_bounces_nothing(tmp_path):
    # When the budget stops the attempt, the hosts left were never asked:
    # the last host's own 5xx (a 521 to EHLO, RFC 7504: it takes no mail)
    # is no verdict on the message, which must stay queued, not bounce.
    a, net, clock = agent(tmp_path)
    use_mx_hosts(a, clock, "slow.test", 4, first_address=110)

    class SlowRefuser(ScriptedSMTPServer):
        """Greets and answers EHLO (with 521) just inside each timeout."""

        def __init__(self):
            super().__init__(replies={"EHLO": b"521 5.3.2 no mail here\r\n"})

        def connectionMade(self):
            clock.callLater(299, ScriptedSMTPServer.connectionMade, self)

        def dataReceived(self, data):
            clock.callLater(299, ScriptedSMTPServer.dataReceived, self, data)

    net.servers[("192.0.2.110", 25)] = lambda: ScriptedSMTPServer(silent=True)
    net.servers[("192.0.2.111", 25)] = lambda: ScriptedSMTPServer(silent=True)
    net.servers[("192.0.2.112", 25)] = SlowRefuser
    net.servers[("192.0.2.113", 25)] = ScriptedSMTPServer
    who = Address("x", "slow.test")
    d = a.deliver(entry(tmp_path, who), "slow.test", [who])
    advance_until_done(net, clock, d, step=1)
    [r] = run(net, d)
    assert ("192.0.2.113", 25) not in net.connections  # the budget was spent
    assert r.reply.code == 521
    assert r.kind == "transient"


def test_a_4xx_to_every_rcpt_just_before_the_time_budget_runs_out_is_the_result(tmp_path):
    # the greylisting host is the last one asked: the budget is spent, the
    # next host never tried, and the recipient's result is that host's own
    # 4yz (not the budget's 4.4.2, nor a verdict from its reply's class)
    a, net, clock = agent(tmp_path)
    use_mx_hosts(a, clock, "slow.test", 4, first_address=110)

    class SlowGreylister(ScriptedSMTPServer):
        """Greylists, each answer just inside its timeout."""

        def __init__(self):
            super().__init__(replies={"RCPT x@slow.test": _GREYLISTED})

        def connectionMade(self):
            clock.callLater(299, ScriptedSMTPServer.connectionMade, self)

        def dataReceived(self, data):
            clock.callLater(299, ScriptedSMTPServer.dataReceived, self, data)

    net.servers[("192.0.2.110", 25)] = lambda: ScriptedSMTPServer(silent=True)
    net.servers[("192.0.2.111", 25)] = lambda: ScriptedSMTPServer(silent=True)
    net.servers[("192.0.2.112", 25)] = SlowGreylister
    net.servers[("192.0.2.113", 25)] = ScriptedSMTPServer
    who = Address("x", "slow.test")
    d = a.deliver(entry(tmp_path, who), "slow.test", [who])
    advance_until_done(net, clock, d, step=1)
    [r] = run(net, d)
    assert ("192.0.2.113", 25) not in net.connections  # the budget was spent
    assert (r.kind, r.reply.text(), r.remote_mta) == (
        "transient", "451 4.7.1 Greylisted, try again later", "mx2.slow.test")


def test_a_refusal_at_rcpt_stands_when_the_final_dot_gets_no_reply(tmp_path):
    # The server's 550 to one RCPT is its answer for that recipient, the
    # same whatever happens after the data: only the recipients it took
    # are in doubt (and stay queued).  The refused one was kept queued too,
    # retried, and in the end bounced for a timeout it never had.
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"END": b"", f"RCPT {CAROL}": b"550 5.1.1 no such user\r\n"})
    d = a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL])
    net.run()
    clock.advance(600)
    results = {r.address: r for r in run(net, d)}
    assert net.connections == [("2001:db8::1", 25)]
    assert results[BOB].kind == "transient" and "end of data" in results[BOB].reply.text()
    assert results[CAROL].kind == "permanent" and results[CAROL].reply.code == 550
    assert results[CAROL].remote_mta == "mx1.remote.test"


@pytest.mark.parametrize("refused, words", [
    ((CAROL,), "1 recipient refused"),
    ((CAROL, Address("dave", "remote.test")), "2 recipients refused")])
def test_the_refused_at_rcpt_line_counts_in_words(tmp_path, log_events, refused, words):
    # "1 recipient(s) refused at RCPT": the hub's other counts take the
    # singular for 1; "refused at RCPT" is the part to grep for
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        f"RCPT {BOB}": b"421 4.7.0 too many connections, closing\r\n",
        **{f"RCPT {r}": b"550 5.1.1 no such user\r\n" for r in refused}})
    e = entry(tmp_path, *refused, BOB)
    run(net, a.deliver(e, "remote.test", [*refused, BOB]))
    lines = [formatEvent(x) for x in log_events
             if "refused at RCPT" in x.get("log_format", "")]
    assert len(lines) == 1 and lines[0].startswith(
        f"{e.id}: mx1.remote.test: {words} at RCPT before the session failed: ")


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refusal_at_rcpt_stands_when_a_later_421_ends_the_session(tmp_path, pipelining):
    # RFC 5321: a 5yz to RCPT is that recipient's answer; a 421 to a later
    # RCPT ends the session for the others only.  The refused recipient
    # went to the next host with the others (which took it here; else it
    # waited and in the end bounced for a 421 that was never its own).
    ext = ("PIPELINING", "SIZE 1000000") if pipelining else ("SIZE 1000000",)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext, replies={
        f"RCPT {CAROL}": b"550 5.1.1 no such user\r\n",
        f"RCPT {BOB}": b"421 4.7.0 too many connections, closing\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(extensions=ext)
    results = {r.address: r for r in run(net, a.deliver(
        entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))}
    assert results[CAROL].kind == "permanent"
    assert results[CAROL].reply.text() == "550 5.1.1 no such user"
    assert results[CAROL].remote_mta == "mx1.remote.test"
    assert results[BOB].kind == "delivered" and results[BOB].remote_mta == "mx2.remote.test"
    # the next host was asked for the others only
    [(_, rcpts, _)] = net.server_protocols[-1].messages
    assert rcpts == [b"bob@remote.test"]
    # every host closing: the others wait (the last 421), the refusal stands
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(extensions=ext, replies={
            f"RCPT {CAROL}": b"550 5.1.1 no such user\r\n",
            f"RCPT {BOB}": b"421 4.3.2 shutting down\r\n"})
    results = {r.address: r for r in run(net, a.deliver(
        entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))}
    assert (results[CAROL].kind, results[CAROL].reply.code) == ("permanent", 550)
    assert (results[BOB].kind, results[BOB].reply.text()) == (
        "transient", "421 4.3.2 shutting down")
    assert [sum(c.startswith(b"RCPT") for c in p.commands) for p in net.server_protocols] == [
        2, 1]  # the second host was not asked for the refused one
    # a temporary refusal waits with the others, as before
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext, replies={
        f"RCPT {CAROL}": b"450 4.2.0 mailbox busy\r\n",
        f"RCPT {BOB}": b"421 4.3.2 shutting down\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(extensions=ext)
    results = run(net, a.deliver(entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))
    assert [(r.address, r.kind, r.remote_mta) for r in results] == [
        (CAROL, "delivered", "mx2.remote.test"), (BOB, "delivered", "mx2.remote.test")]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refusal_at_rcpt_stands_when_data_gets_421(tmp_path, pipelining):
    # the same for a 421 to DATA: the recipients the server took wait
    # (that 421 is theirs), the refused one bounces
    ext = ("PIPELINING", "SIZE 1000000") if pipelining else ("SIZE 1000000",)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext, replies={
        f"RCPT {CAROL}": b"550 5.1.1 no such user\r\n",
        "DATA": b"421 4.3.2 shutting down\r\n"})
    results = {r.address: r for r in run(net, a.deliver(
        entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))}
    assert (results[CAROL].kind, results[CAROL].reply.code) == ("permanent", 550)
    assert (results[BOB].kind, results[BOB].reply.code) == ("transient", 421)


# --- DSN parameters relayed as received (RFC 3461 5.2.1) -----------------------------

# A record as the code before the as-received forms wrote it: no "envid_raw",
# no "orcpt_raw"; it must still load, and relay as it did.
OLD_RECORD = b"""{
 "format": 1, "id": "ABCDEF0123456789", "created": 0.0, "next_attempt": 0.0,
 "attempts": 0, "held": false, "delay_warned": false, "size": 0, "crlf_size": 0,
 "eight_bit": false, "releases": 0,
 "envelope": {
  "sender": "alice@example.org", "helo": "", "client_address": "",
  "authenticated_as": null, "body_8bit": false, "smtputf8": false,
  "ret": "HDRS", "envid": "aAb", "message_id": "ABCDEF0123456789", "submitter": null
 },
 "recipients": [
  {"address": "bob@remote.test", "state": "pending", "attempts": 0,
   "last_attempt": null, "last_reply": null, "remote_mta": null,
   "notify": ["FAILURE"], "orcpt": "rfc822;Joe+X@Example.COM", "notice": null}
 ]
}"""


def _relay_record(tmp_path, raw: bytes, extensions=("PIPELINING", "DSN"), to=(BOB,)):
    """Load a queue record as the queue does, relay it, and return the
    commands the next hop received."""
    body = b"Subject: hi\n\nhello\n"
    path = tmp_path / "Q.msg"
    path.write_bytes(body)
    e = QueueEntry.from_json(raw, str(path))
    e = dataclasses.replace(e, size=len(body), crlf_size=len(body) + body.count(b"\n"))
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=extensions)
    results = run(net, a.deliver(e, "remote.test", list(to)))
    assert [r.kind for r in results] == ["delivered"] * len(to)
    return e, net.server_protocols[0].commands


def _received(commands: str):
    """The envelope the hub's SMTP server engine makes of ``commands``
    (a client allowed to relay)."""
    components = SimpleNamespace(
        router=StaticRouter({"alice": None}), queue=QueueSpy(), spooler=MemorySpooler(),
        settings=SimpleNamespace(hub=SimpleNamespace(primary_domain="example.org")))
    engine = SMTPServer(ServerConfig(hostname="mail.example.org", primary_domain="example.org"),
                        RecipientPolicy(components),
                        Session(client_host="192.0.2.9", relay_allowed=True))
    engine.greeting()
    engine.receive_data(f"EHLO c.test\r\n{commands}DATA\r\n".encode())
    while (ev := engine.next_event()) is not None:
        if isinstance(ev, StartMessage):
            engine.message_started(lambda _: None)
            engine.receive_data(b"x\r\n.\r\n")
        elif isinstance(ev, MessageComplete):
            return ev.envelope
    raise AssertionError(engine.data_to_send())


def test_envid_and_orcpt_reach_the_next_hop_as_the_client_sent_them(tmp_path):
    # the server engine, the queue record on disk, the relay: the octets
    # the client sent come out (RFC 3461 5.2.1 (a), (d)), not the decoded
    # values encoded again ("a+41b" is no "aAb"; "+2BX" no "+X")
    env = _received("MAIL FROM:<alice@example.org> RET=HDRS ENVID=a+41b\r\n"
                    "RCPT TO:<bob@remote.test> NOTIFY=FAILURE "
                    "ORCPT=rfc822;Joe+2BX@Example.COM\r\n")
    raw = QueueEntry.new("ABCDEF0123456789", env, 0.0).to_json()
    e, cmds = _relay_record(tmp_path, raw)
    assert b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=a+41b" in cmds
    assert (b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE ORCPT=rfc822;Joe+2BX@Example.COM"
            in cmds)
    # the decoded forms, for the notices, survive the record too
    assert e.envelope.dsn.envid == "aAb"
    assert e.recipients[0].orcpt == "rfc822;Joe+X@Example.COM"


def test_an_orcpt_type_and_escapes_keep_their_case_on_the_way_through(tmp_path):
    # "MUST NOT change the case of any alphabetic characters in an ORCPT"
    env = _received("MAIL FROM:<alice@example.org>\r\n"
                    "RCPT TO:<bob@remote.test> ORCPT=RFC822;B+6F+62@Remote.TEST\r\n"
                    "RCPT TO:<carol@remote.test> ORCPT=UTF-8;c\\x{e9}@remote.test\r\n")
    _, cmds = _relay_record(tmp_path, QueueEntry.new("ABCDEF0123456789", env, 0.0).to_json(),
                            to=[BOB, CAROL])
    assert b"RCPT TO:<bob@remote.test> ORCPT=RFC822;B+6F+62@Remote.TEST" in cmds
    assert b"RCPT TO:<carol@remote.test> ORCPT=UTF-8;c\\x{e9}@remote.test" in cmds


def test_a_record_from_before_the_forms_as_sent_loads_and_relays_as_before(tmp_path):
    e, cmds = _relay_record(tmp_path, OLD_RECORD)
    assert e.envelope.dsn == DSNRequest("HDRS", "aAb")
    assert dict(e.envelope.recipient_dsn)[BOB] == RecipientDSN(
        ("FAILURE",), "rfc822;Joe+X@Example.COM")
    # encoded afresh from the decoded values, as the code that wrote it did
    assert b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=aAb" in cmds
    assert (b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE ORCPT=rfc822;Joe+2BX@Example.COM"
            in cmds)


def test_forms_as_sent_are_not_given_to_a_next_hop_without_dsn(tmp_path):
    raw = OLD_RECORD.replace(b'"envid": "aAb",', b'"envid": "aAb", "envid_raw": "a+41b",')
    assert b"envid_raw" in raw
    _, cmds = _relay_record(tmp_path, raw, extensions=("PIPELINING",))
    assert b"MAIL FROM:<alice@example.org>" in cmds
    assert b"RCPT TO:<bob@remote.test>" in cmds


class _MisbehavingBatch(ScriptedSMTPServer):
    """Takes the pipelined batch (MAIL, RCPT, DATA), enters DATA with its
    354, but answers the batch in a way the client cannot account for:
    ``"order"``, the 354 before the RCPT's reply; ``"malformed"``, a reply
    line that is no reply line; ``"count"``, one reply too many to MAIL.
    Whatever comes next is message data to it, QUIT included."""

    how = "order"

    def _command(self, line):
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb == b"RCPT" and self.how == "order":
            self.held = b"250 2.1.5 ok\r\n"
            return
        if verb == b"RCPT" and self.how == "malformed":
            self.transport.write(b"25O 2.1.5 ok\r\n")
            return
        super()._command(line)
        if verb == b"MAIL" and self.how == "count":
            self.transport.write(b"250 2.1.0 ok again\r\n")
        if verb == b"DATA" and self.how == "order":
            self.transport.write(self.held)


@pytest.mark.parametrize("how", ["order", "malformed", "count"])
def test_a_protocol_error_in_a_pipelined_batch_drops_the_connection_at_once(tmp_path, how):
    # The server took DATA (354) while the session counts itself broken: a
    # QUIT then is message data to it, no reply comes, and the attempt
    # waited out the QUIT timeout (a minute, a delivery slot held) for each
    # such host.  After a protocol error nothing is waited for: the
    # connection is dropped, so the server, without our final ".", throws
    # the transaction away, and the message stays queued.
    a, net, clock = agent(tmp_path)

    def make():
        server = _MisbehavingBatch()
        server.how = how
        return server

    net.servers[("2001:db8::1", 25)] = make
    net.servers[("192.0.2.2", 25)] = make
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    assert d.called, "the attempt waits for a reply that cannot come"
    [r] = run(net, d)
    assert r.kind == "transient" and r.reply.status == "4.5.0", r.reply.text()
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.2", 25)]  # next MX, as before
    for server in net.server_protocols:
        assert server.in_data and not server.messages  # nothing was delivered ...
        assert b"QUIT" not in server.buf and b"QUIT" not in server.commands  # ... or sent
    assert all(pump.clientIO.disconnecting for pump in net.pumps)
    assert clock.seconds() == 0


def test_after_a_protocol_error_the_client_writes_nothing_and_waits_for_nothing(tmp_path):
    # The adapter on a reactor's clock: the out-of-order reply drops the
    # connection then and there, with no timer left (the QUIT step's minute
    # was one), and the attempt gets its outcome as soon as it is gone.
    reactor, proto, transport = _client_on_a_clock(tmp_path, ALICE)
    proto.dataReceived(b"220 hi\r\n")
    proto.dataReceived(b"250-fake.remote\r\n250 PIPELINING\r\n")
    assert transport.value().endswith(b"RCPT TO:<bob@remote.test>\r\nDATA\r\n")
    transport.clear()
    proto.dataReceived(b"250 2.1.0 ok\r\n354 go ahead\r\n250 2.1.5 ok\r\n")
    assert transport.value() == b""  # no QUIT: the server reads message data now
    assert transport.disconnected  # abortConnection: no "." will follow
    assert reactor.getDelayedCalls() == []
    assert not proto.done.called
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.recipients == () and outcome.session_error.status == "4.5.0"
    assert outcome.phase == "RCPT"


def test_a_protocol_error_after_the_reply_to_the_final_dot_leaves_the_delivery(tmp_path):
    # 250 to the "." and a malformed line in the same read: the connection
    # is dropped (no QUIT into a stream nobody can read), no timer is left,
    # and the outcome the attempt gets once it is gone is the delivery
    (tmp_path / "m").write_bytes(b"Subject: hi\n\nbody\n")
    reactor, proto, transport = _client_on_a_clock(tmp_path, ALICE)
    proto.dataReceived(b"220 hi\r\n")
    proto.dataReceived(b"250-fake.remote\r\n250 PIPELINING\r\n")
    proto.dataReceived(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
    while transport.producer is not None:  # the message, pulled as the reactor would
        transport.producer.resumeProducing()
    assert transport.value().endswith(b"body\r\n.\r\n")
    transport.clear()
    proto.dataReceived(b"250 2.0.0 queued\r\n25O what\r\n")
    assert transport.value() == b""
    assert transport.disconnected
    assert reactor.getDelayedCalls() == []
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.session_error is None
    assert [(r.address, r.kind) for r in outcome.recipients] == [(BOB, "delivered")]


def test_a_hostile_reply_is_logged_escaped(tmp_path):
    # a next hop's reply goes into the hub's log: its CR would hide the
    # start of the line in a terminal, an ESC start an escape sequence in
    # the admin's `tail -f`; the log rule (logsafe.loggable) escapes them
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            greeting=b"554 5.7.1 go\x1b]0;owned\x07 away\rforged\r\n")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.reply.text() == "554 5.7.1 go\x1b]0;owned\x07 away\rforged"  # kept as it came
    [line] = [formatEvent(e) for e in events if "remote.test not " in formatEvent(e)]
    assert line == ("ABCDEF0123456789: remote.test not delivered: mx2.remote.test[192.0.2.2] "
                    "said 554 5.7.1 go\\x1b]0;owned\\x07 away\\x0dforged")


def attempt_lines(net, a, e, destination="remote.test"):
    """The lines an attempt at ``destination`` logs that say it did not
    deliver (``... not reached: ...``, ``... not delivered: ...``)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = a.deliver(e, destination, list(e.envelope.recipients))
        net.clock.advance(0)  # a remembered destination answers in the reactor's next turn
        results = run(net, d)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return results, [formatEvent(x) for x in events
                     if f"{destination} not " in formatEvent(x)]


@pytest.mark.parametrize("command", ["MAIL", "RCPT bob@remote.test"])
def test_a_421_at_mail_or_rcpt_is_logged_as_the_hosts_words_not_as_not_reached(tmp_path,
                                                                               command):
    # both hosts answered and ended the session: they were reached, and
    # the line says which said what (it said "remote.test not reached")
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            replies={command: b"421 4.3.2 too busy, try later\r\n"})
    results, lines = attempt_lines(net, a, entry(tmp_path, BOB, CAROL))
    assert [(r.kind, r.reply.code, r.unreachable) for r in results] == [
        ("transient", 421, False)] * 2
    assert lines == ["ABCDEF0123456789: remote.test not delivered: mx2.remote.test[192.0.2.2] "
                     "said 421 4.3.2 too busy, try later"]
    _, lines = attempt_lines(net, a, entry(tmp_path, BOB))
    assert [line.split(": ", 2)[1] for line in lines] == ["remote.test not delivered"]  # no memory


def test_a_session_the_hub_ended_is_logged_as_its_own_account(tmp_path):
    # a protocol error is the hub's reading, not the host's words: the
    # host was reached, the session with it failed
    a, net, _ = agent(tmp_path)
    net.servers[("192.0.2.50", 25)] = lambda: ScriptedSMTPServer(
        replies={"MAIL": b"25O what\r\n"})
    _, lines = attempt_lines(net, a, entry(tmp_path, DAVE), "other.test")
    assert lines == ["ABCDEF0123456789: other.test not delivered: session with "
                     "other.test[192.0.2.50] failed: 421 4.5.0 protocol error from the server: "
                     "malformed reply line '25O what'"]


def test_no_host_connected_is_logged_as_not_reached_and_so_is_its_memory(tmp_path):
    a, net, _ = agent(tmp_path)  # no server listens: every connection is refused
    results, lines = attempt_lines(net, a, entry(tmp_path, BOB))
    assert [r.unreachable for r in results] == [True]
    failed = "451 4.4.1 connection to mx2.remote.test[192.0.2.2]:25 failed: connection refused"
    assert lines == [f"ABCDEF0123456789: remote.test not reached: {failed}"]
    _, lines = attempt_lines(net, a, entry(tmp_path, BOB))
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.1", 25), ("192.0.2.2", 25)]
    assert lines == [f"ABCDEF0123456789: remote.test not reached: {failed} (tried 0 s ago; "
                     "not tried again yet)"]


def test_a_host_that_answered_before_a_failed_connection_is_said(tmp_path):
    # mx1 said 421 to MAIL, mx2 could not be connected to: the reply kept
    # is mx2's connection failure, but remote.test was reached
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"MAIL": b"421 4.3.2 busy\r\n"})
    _, lines = attempt_lines(net, a, entry(tmp_path, BOB))
    assert lines == ["ABCDEF0123456789: remote.test not delivered: 451 4.4.1 connection to "
                     "mx2.remote.test[192.0.2.2]:25 failed: connection refused (a host that "
                     "answered before did not take it)"]


def test_a_5xx_to_mail_is_each_recipients_answer_with_no_not_delivered_line(tmp_path):
    # docs/relay.rst: a 5xx to MAIL is no session error (the 4xx is): it
    # answers every recipient, which the session line logs
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"MAIL": b"550 5.7.1 not from you\r\n"})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        results, lines = attempt_lines(net, a, entry(tmp_path, BOB))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(r.kind, r.reply.code) for r in results] == [("permanent", 550)]
    assert lines == []
    assert [formatEvent(e) for e in events
            if "session with" in formatEvent(e)] == [
        "ABCDEF0123456789: session with mx1.remote.test (no TLS): bob@remote.test: 550"]

def test_a_hostile_refusal_of_auth_is_logged_escaped(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RefusesAuthParameter(
        b"555 5.5.4 AUTH\x1b[2J not\rrecognized\r\n", extensions=("SIZE 1000000", "AUTH PLAIN"))
    _, logged = deliver_logged(net, a, entry(tmp_path, BOB, submitter=ALICE))
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused AUTH= on MAIL "
                      "(555 5.5.4 AUTH\\x1b[2J not\\x0drecognized); MAIL sent again without it, "
                      "and without it to mx1.remote.test port 25 for 24 hours"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refusal_before_a_protocol_error_is_not_taken_for_the_recipients(tmp_path, pipelining):
    # A server that says one reply too many (here a stray 550 after its 250
    # to MAIL) puts every later reply on the wrong command: the stray 550
    # is read as CAROL's, CAROL's 250 as BOB's, BOB's 250 as DATA's -- a
    # protocol error, the session's state unknown.  The 550 was nobody's
    # answer: CAROL must not bounce for it; both go to the next host.
    ext = ("PIPELINING", "SIZE 1000000") if pipelining else ("SIZE 1000000",)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=ext, replies={
        "MAIL": b"250 2.1.0 ok\r\n550 5.7.1 stray\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(extensions=ext)
    results = run(net, a.deliver(entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))
    assert [(r.address, r.kind, r.remote_mta) for r in results] == [
        (CAROL, "delivered", "mx2.remote.test"), (BOB, "delivered", "mx2.remote.test")]


def test_the_session_line_names_recipients_escaped(tmp_path):
    # a recipient an authenticated client chose (SMTPUTF8: a bidi
    # override passes the parser) is named escaped in the session's line,
    # as the SMTP server's transaction line names it (logsafe)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "8BITMIME", "SMTPUTF8"))
    odd = Address("b\u202eob", "remote.test")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = run(net, a.deliver(entry(tmp_path, odd, smtputf8=True), "remote.test", [odd]))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [(r.address, r.kind) for r in results] == [(odd, "delivered")]
    [line] = [formatEvent(e) for e in events if "session with" in formatEvent(e)]
    assert line.endswith(": b\\u202eob@remote.test: 250") and "\u202e" not in line


_NEED_TLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"


_GREYLISTED = b"451 4.7.1 Greylisted, try again later\r\n"


@pytest.mark.parametrize("extensions", [("PIPELINING", "8BITMIME"), ("8BITMIME",)],
                         ids=["pipelined", "lock-step"])
@pytest.mark.parametrize("refusal", [_NEED_TLS, _GREYLISTED], ids=["530", "4xx"])
def test_a_530_or_4xx_to_every_rcpt_tries_the_next_mx_in_the_same_attempt(
        tmp_path, extensions, refusal):
    # MAIL taken, every RCPT refused, some only for now: the host took no
    # message, so the next MX host gets those recipients now, not at the
    # next retry (which starts at the same host again, to the end of the
    # queue lifetime).  A 530 (RFC 3207 4, RFC 4954 6: it may answer any
    # command after EHLO) says the session lacks TLS or a login, as a 530
    # to MAIL does; a 4xx is kept for a backup host, as Postfix does (RFC
    # 5321 5.1: the addresses are tried "until a delivery attempt
    # succeeds").  A 5xx to RCPT next to it stays that recipient's final
    # answer (RFC 5321 4.2.1), bounced, never sent to the next host.
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions, replies={
        "RCPT bob@remote.test": refusal,
        "RCPT carol@remote.test": b"550 5.1.1 no such user\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    kinds = {r.address: (r.kind, r.remote_mta) for r in results}
    assert kinds == {BOB: ("delivered", "mx2.remote.test"),
                     CAROL: ("permanent", "mx1.remote.test")}
    assert ("192.0.2.2", 25) in net.connections
    taken = [m[1] for s in net.server_protocols for m in s.messages if m[1]]
    assert taken == [[b"bob@remote.test"]]  # by mx2 alone


def test_a_530_to_every_rcpt_everywhere_keeps_the_mail_queued(tmp_path):
    a, net, _ = agent(tmp_path)
    for address in (("2001:db8::1", 25), ("192.0.2.2", 25)):
        net.servers[address] = lambda: ScriptedSMTPServer(
            replies={"RCPT bob@remote.test": _NEED_TLS})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "transient" and isinstance(r.reply, LocalReply)
    assert r.reply.text() == ("454 4.7.0 Must issue a STARTTLS command first "
                              "(the server said 530 5.7.0)")
    assert ("192.0.2.2", 25) in net.connections


def test_a_5xx_to_every_rcpt_bounces_without_trying_the_next_mx(tmp_path):
    # RFC 5321 4.2.1: a 5yz to RCPT is that recipient's permanent answer;
    # as Postfix does (its smtp client bounces a 5xx to RCPT and keeps
    # only a 4xx one for a backup host), no other host is asked
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": b"550 5.1.1 no such user\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert r.kind == "permanent" and r.reply.text() == "550 5.1.1 no such user"
    assert net.connections == [("2001:db8::1", 25)]


def test_an_address_that_drops_packets_does_not_hold_the_next_one(tmp_path):
    # RFC 8305 5: mx1's IPv6 address never answers (a connect that would
    # end with the 30-second timeout); its IPv4 address is started 250 ms
    # later and takes the message, and the hanging attempt is cancelled
    from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY

    a, net, clock = agent(tmp_path)
    net.servers[("192.0.2.1", 25)] = ScriptedSMTPServer
    hanging: list[defer.Deferred] = []
    cancelled: list[bool] = []
    fake = a.endpoint

    def endpoint(host, port):
        if host != "2001:db8::1":
            return fake(host, port)
        d = defer.Deferred(lambda _: cancelled.append(True))
        hanging.append(d)
        return SimpleNamespace(connect=lambda factory: d)

    a.endpoint = endpoint
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    assert len(hanging) == 1 and net.connections == []
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    [r] = run(net, d)
    assert r.kind == "delivered" and r.remote_mta == "mx1.remote.test"
    assert net.connections == [("192.0.2.1", 25)]
    assert cancelled == [True]  # the hanging attempt given up
    assert clock.seconds() < 1


def test_a_4xx_to_every_rcpt_everywhere_keeps_each_recipients_own_words(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": _GREYLISTED,
                 "RCPT carol@remote.test": b"452 4.2.2 mailbox full\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": b"450 4.2.0 try later\r\n",
                 "RCPT carol@remote.test": b"452 4.2.2 mailbox full here too\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert [(r.address, r.kind, r.reply.text(), r.remote_mta) for r in results] == [
        (BOB, "transient", "450 4.2.0 try later", "mx2.remote.test"),
        (CAROL, "transient", "452 4.2.2 mailbox full here too", "mx2.remote.test")]
    assert ("192.0.2.2", 25) in net.connections


def test_a_4xx_to_some_rcpts_waits_for_the_next_retry(tmp_path):
    # the host took the message for the others: the refused ones wait
    # for the next retry (sending them elsewhere now is not done yet)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": _GREYLISTED})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert [(r.address, r.kind, r.remote_mta) for r in results] == [
        (BOB, "transient", "mx1.remote.test"), (CAROL, "delivered", "mx1.remote.test")]
    assert ("192.0.2.2", 25) not in net.connections


def _recording(seen, name, **kw):
    def make():
        server = ScriptedSMTPServer(**kw)
        seen.setdefault(name, []).append(server)
        return server
    return make


def _rcpts_to(seen, name):
    return [c for s in seen.get(name, []) for c in s.commands if c.startswith(b"RCPT")]


def test_a_4xx_then_a_5xx_from_the_next_mx_bounces_with_the_5xx(tmp_path):
    # mx1 greylists bob; mx2 refuses him for good: that is his answer (the
    # notice quotes the 5xx, from mx2), and each host was asked once
    a, net, _ = agent(tmp_path)
    seen = {}
    net.servers[("2001:db8::1", 25)] = _recording(seen, "mx1", replies={
        "RCPT bob@remote.test": _GREYLISTED})
    net.servers[("192.0.2.2", 25)] = _recording(seen, "mx2", replies={
        "RCPT bob@remote.test": b"550 5.1.1 no such user here\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.text(), r.remote_mta) == (
        "permanent", "550 5.1.1 no such user here", "mx2.remote.test")
    assert _rcpts_to(seen, "mx1") == [b"RCPT TO:<bob@remote.test>"]
    assert _rcpts_to(seen, "mx2") == [b"RCPT TO:<bob@remote.test>"]


def test_a_4xx_to_every_rcpt_then_no_host_reached_keeps_the_refusal(tmp_path):
    # mx2 does not answer at all: it says nothing of bob, whose result is
    # mx1's own refusal (docs/relay.rst: a host not reached after it does
    # not replace it)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": _GREYLISTED})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.text(), r.remote_mta) == (
        "transient", "451 4.7.1 Greylisted, try again later", "mx1.remote.test")


def test_a_530_and_a_4xx_then_a_4xx_and_a_5xx_on_the_next_mx(tmp_path):
    # mx1: 530 to bob, 451 to carol (the session fails as after a 530 to
    # MAIL: both go on); mx2: 451 to bob, 550 to carol -- carol bounces
    # with mx2's 5xx, bob waits with mx2's 4xx; each RCPT once per host
    a, net, _ = agent(tmp_path)
    seen = {}
    net.servers[("2001:db8::1", 25)] = _recording(seen, "mx1", replies={
        "RCPT bob@remote.test": b"530 5.7.0 Must issue a STARTTLS command first\r\n",
        "RCPT carol@remote.test": b"451 4.3.0 try later\r\n"})
    net.servers[("192.0.2.2", 25)] = _recording(seen, "mx2", replies={
        "RCPT bob@remote.test": _GREYLISTED,
        "RCPT carol@remote.test": b"550 5.1.1 no such user\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    got = {r.address: (r.kind, r.reply.text(), r.remote_mta) for r in results}
    assert got == {
        BOB: ("transient", "451 4.7.1 Greylisted, try again later", "mx2.remote.test"),
        CAROL: ("permanent", "550 5.1.1 no such user", "mx2.remote.test")}
    for name in ("mx1", "mx2"):
        assert sorted(_rcpts_to(seen, name)) == [b"RCPT TO:<bob@remote.test>",
                                                 b"RCPT TO:<carol@remote.test>"]


@pytest.mark.parametrize("refused, timed_out", [
    # the first IPv6 address refuses at once; the IPv4 one, started then,
    # and the second IPv6 one are black-holed: their timeouts must not
    # hide the refusal
    ("2001:db8::7", ["192.0.2.7", "2001:db8::8"]),
    # the first IPv6 address is black-holed, the IPv4 one refuses 250 ms
    # later, the second IPv6 one then started times out too
    ("192.0.2.7", ["2001:db8::7", "2001:db8::8"]),
])
def test_a_host_whose_addresses_all_fail_is_named_by_the_one_that_answered(
        tmp_path, refused, timed_out):
    from twisted.internet.error import ConnectionRefusedError, TimeoutError

    from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY

    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "dual.test": {"MX": [(10, "mx.dual.test")]},
            "mx.dual.test": {"AAAA": ["2001:db8::7", "2001:db8::8"], "A": ["192.0.2.7"]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    hanging: dict[str, defer.Deferred] = {}

    def endpoint(host, port):
        if host == refused:
            return SimpleNamespace(connect=lambda f: defer.fail(ConnectionRefusedError(host)))
        d = hanging[host] = defer.Deferred()
        return SimpleNamespace(connect=lambda f: d)

    a.endpoint = endpoint
    who = Address("x", "dual.test")
    d = a.deliver(entry(tmp_path, who), "dual.test", [who])
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert sorted(hanging) == sorted(timed_out)
    for host in timed_out:  # the 30-second connect timeouts, in the order started
        hanging[host].errback(TimeoutError())
    [r] = run(net, d)
    assert r.kind == "transient"
    assert r.reply.text() == (f"451 4.4.1 connection to mx.dual.test[{refused}]:25 failed: "
                              "connection refused")


def _unconnected(tmp_path, error):
    """The result of a delivery to remote.test whose every address fails
    to connect with ``error``."""
    a, net, _ = agent(tmp_path)
    a.endpoint = lambda host, port: SimpleNamespace(connect=lambda f: defer.fail(error))
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    return r


def _connect_errors():
    from twisted.internet import error

    return [
        (error.ConnectionRefusedError("192.0.2.2"), "connection refused"),
        (error.TimeoutError(), "timed out"),
        (error.TCPTimedOutError(110, "Connection timed out"), "timed out"),
        (error.NoRouteError(101, "Network is unreachable"), "no route to host"),
        # EHOSTUNREACH: Twisted has no class of its own for it
        (error.ConnectError(113, "No route to host"), "no route to host"),
        (error.DNSLookupError("mx2.remote.test: Name or service not known"),
         "name lookup failed"),
        # an unknown one: its class's description, not its message or repr
        (error.ConnectError(string="/var/secret/path <object at 0x7f>"),
         "an error occurred while connecting"),
        (ValueError("/var/secret/path"), "inappropriate argument value (of correct type)"),
    ]


@pytest.mark.parametrize("error, words", _connect_errors())
def test_the_kept_error_of_a_host_that_took_no_connection_says_why(tmp_path, error, words):
    # queue show, mailq and the notices said which address failed, not
    # why (the log alone did): the reason follows, in a few plain words,
    # the start of the text as before
    r = _unconnected(tmp_path, error)
    assert r.kind == "transient" and isinstance(r.reply, LocalReply)
    assert r.reply.text() == (
        f"451 4.4.1 connection to mx2.remote.test[192.0.2.2]:25 failed: {words}")
    assert "secret" not in r.reply.text() and "0x" not in r.reply.text()


@pytest.mark.parametrize("extensions", [("PIPELINING", "8BITMIME"), ("8BITMIME",)],
                         ids=["pipelined", "lock-step"])
@pytest.mark.parametrize("refusal", [b"451 4.3.0 Temporary local problem\r\n", _NEED_TLS],
                         ids=["4xx", "530"])
def test_a_4xx_to_data_tries_the_next_mx_in_the_same_attempt(tmp_path, extensions, refusal):
    # the host took bob at RCPT, then refused DATA only for now (a 530
    # there is the hub's 454): no message text went, so the host holds
    # no copy (RFC 5321 4.1.1.4: no data without a 354) and the next MX
    # host gets the recipients now, as after a 4xx to MAIL or to every
    # RCPT -- carol too, whom it refused for now at RCPT
    a, net, _ = agent(tmp_path)
    seen = {}
    net.servers[("2001:db8::1", 25)] = _recording(seen, "mx1", extensions=extensions, replies={
        "RCPT carol@remote.test": _GREYLISTED, "DATA": refusal})
    net.servers[("192.0.2.2", 25)] = _recording(seen, "mx2")
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert sorted((str(r.address), r.kind, r.remote_mta) for r in results) == [
        ("bob@remote.test", "delivered", "mx2.remote.test"),
        ("carol@remote.test", "delivered", "mx2.remote.test")]
    assert [m for s in seen["mx1"] for m in s.messages] == []
    assert len([m for s in seen["mx2"] for m in s.messages]) == 1


def test_a_4xx_to_data_everywhere_keeps_the_last_hosts_words(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"DATA": b"451 4.3.0 mx1 busy\r\n"})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(
        replies={"DATA": b"452 4.3.1 mx2 out of space\r\n"})
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.text(), r.remote_mta) == (
        "transient", "452 4.3.1 mx2 out of space", "mx2.remote.test")


def test_a_5xx_to_data_does_not_try_the_next_mx(tmp_path):
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"DATA": b"554 5.7.1 not from you\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.code, r.remote_mta) == ("permanent", 554, "mx1.remote.test")
    assert ("192.0.2.2", 25) not in net.connections


def test_a_4xx_after_the_data_waits_for_the_next_retry(tmp_path):
    # the message text went: the next MX host is not tried in the same
    # attempt (docs/relay.rst says why), the recipients wait as before
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"END": b"451 4.3.0 content scan failed, try later\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.code, r.remote_mta) == ("transient", 451, "mx1.remote.test")
    assert ("192.0.2.2", 25) not in net.connections


@pytest.mark.parametrize("eight_bit", [False, True])
def test_a_message_deleted_from_the_queue_during_its_attempt_is_not_sent_nor_a_fault(
        tmp_path, log_events, eight_bit):
    # `mailhub queue delete` while the hub delivers the entry (relay.rst
    # allows it): its file is gone by the time DATA is due.  A soak doing
    # just that logged a critical "SMTP client session failed" with a
    # FileNotFoundError traceback; the 8-bit case (converted for a server
    # without 8BITMIME) one "converting ... failed" the same way
    a, net, _ = agent(tmp_path)
    extensions = ("PIPELINING",) if eight_bit else ("PIPELINING", "8BITMIME")
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=extensions)
    body = "Subject: x\n\nGrüße\n".encode() if eight_bit else b"Subject: x\n\nhi\n"
    e = entry(tmp_path, BOB, body=body)
    d = a.deliver(e, "remote.test", [BOB])
    os.unlink(e.message_path)
    results = run(net, d)
    assert [(r.kind, r.reply.code) for r in results] == [("transient", 451)]
    assert "deleted during the attempt" in results[0].reply.text()
    assert net.server_protocols[0].messages == []  # no final "."
    assert net.connections == [("2001:db8::1", 25)]  # and no other host tried for it
    assert [ev for ev in log_events if ev.get("log_failure") is not None] == []
    # the line names the queue's file, the one `mailhub queue` knows
    assert any(formatEvent(ev).startswith(f"{e.message_path} is gone when its data was due")
               for ev in log_events)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".7bit")] == []


def test_a_later_hosts_error_replaces_a_4xx_to_every_rcpt(tmp_path):
    # mx1 greylists bob; mx2 then greets with a 421: the last host that
    # answered is mx2, whose words are bob's result, not mx1's
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": _GREYLISTED})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(
        greeting=b"421 4.3.2 mx2 shutting down\r\n")
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.reply.text(), r.remote_mta) == (
        "transient", "421 4.3.2 mx2 shutting down", "mx2.remote.test")


def test_a_4xx_to_every_rcpt_twice_gives_each_recipient_one_result(tmp_path):
    # mx1 greylists both; mx2 greylists bob and refuses carol for good:
    # carol's one result is mx2's 5xx, bob's mx2's 4xx -- mx1's 4xx for
    # carol is not also kept
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": _GREYLISTED, "RCPT carol@remote.test": _GREYLISTED})
    net.servers[("192.0.2.2", 25)] = lambda: ScriptedSMTPServer(
        replies={"RCPT bob@remote.test": b"450 4.2.0 try later\r\n",
                 "RCPT carol@remote.test": b"550 5.1.1 no such user\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert sorted((str(r.address), r.kind, r.reply.text(), r.remote_mta) for r in results) == [
        ("bob@remote.test", "transient", "450 4.2.0 try later", "mx2.remote.test"),
        ("carol@remote.test", "permanent", "550 5.1.1 no such user", "mx2.remote.test")]


@pytest.mark.parametrize("refusal", [_NEED_TLS, _GREYLISTED], ids=["530", "4xx"])
def test_every_rcpt_refused_then_a_5xx_to_the_pipelined_data(tmp_path, refusal):
    # a real server answers the DATA of a pipelined batch whose every
    # RCPT it refused with a 5xx ("554 5.5.1 no valid recipients"), not
    # the fake's 354: bob still goes on to the next MX host
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT bob@remote.test": refusal, "DATA": b"554 5.5.1 no valid recipients\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    assert (r.kind, r.remote_mta) == ("delivered", "mx2.remote.test")


@pytest.mark.parametrize("data", [b"554 5.5.1 no valid recipients\r\n", b"354 go ahead\r\n"],
                         ids=["5xx", "354"])
def test_a_530_to_every_rcpt_counts_the_host_failed_as_a_530_to_mail_does(tmp_path, data):
    # the session lacks TLS or a login (RFC 3207 4): the host's fault,
    # not the recipients' -- mx1 is tried after the others next time
    for replies in ({"MAIL": _NEED_TLS},
                    {"RCPT bob@remote.test": _NEED_TLS, "DATA": data}):
        a, net, _ = agent(tmp_path)
        net.servers[("2001:db8::1", 25)] = lambda replies=replies: ScriptedSMTPServer(
            replies=replies)
        net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
        [r] = run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
        assert (r.kind, r.remote_mta) == ("delivered", "mx2.remote.test")
        assert a.mx.health.is_failed("mx1.remote.test"), replies


def test_a_5xx_to_data_after_a_4xx_to_another_rcpt_waits_for_the_next_retry(tmp_path):
    # mx1 took bob, greylisted carol, then refused DATA for good: bob's
    # answer is the 5xx; carol waits for the next retry, as a 4xx to some
    # RCPTs of a host that took others does -- no other host is asked now
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT carol@remote.test": _GREYLISTED, "DATA": b"554 5.7.1 not from you\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    assert sorted((str(r.address), r.kind, r.reply.code, r.remote_mta) for r in results) == [
        ("bob@remote.test", "permanent", 554, "mx1.remote.test"),
        ("carol@remote.test", "transient", 451, "mx1.remote.test")]
    assert ("192.0.2.2", 25) not in net.connections


def _hanging_endpoints(a):
    """Every connect of ``a`` hangs until the test fires it: the
    addresses in the order started, and their Deferreds."""
    started: list[str] = []
    hanging: dict[str, defer.Deferred] = {}

    def endpoint(host, port):
        def connect(factory):
            started.append(host)
            d = hanging[host] = defer.Deferred()
            return d
        return SimpleNamespace(connect=connect)

    a.endpoint = endpoint
    return started, hanging


def test_an_mx_hosts_addresses_are_started_with_the_families_alternating(tmp_path):
    # RFC 8305 4: IPv6, IPv4, IPv6 -- not both IPv6 addresses first
    from twisted.internet.error import ConnectionRefusedError

    from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY

    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "dual.test": {"MX": [(10, "mx.dual.test")]},
            "mx.dual.test": {"AAAA": ["2001:db8::7", "2001:db8::8"], "A": ["192.0.2.7"]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    started, hanging = _hanging_endpoints(a)
    who = Address("x", "dual.test")
    d = a.deliver(entry(tmp_path, who), "dual.test", [who])
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert started == ["2001:db8::7", "192.0.2.7", "2001:db8::8"]
    for host in started:
        hanging[host].errback(ConnectionRefusedError(host))
    [r] = run(net, d)
    assert r.kind == "transient"


def test_no_more_than_ten_addresses_over_the_hosts_of_one_attempt(tmp_path):
    # six addresses on each of two hosts: the second host gets the four
    # the first left of the ten (MAX_ADDRESSES_PER_ATTEMPT)
    from twisted.internet.error import ConnectionRefusedError

    from txmailhub.relay.attempt import MAX_ADDRESSES_PER_ATTEMPT

    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "many.test": {"MX": [(10, "mx1.many.test"), (20, "mx2.many.test")]},
            "mx1.many.test": {"A": [f"192.0.2.{i}" for i in range(10, 16)]},
            "mx2.many.test": {"A": [f"192.0.2.{i}" for i in range(20, 26)]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    tried: list[str] = []

    def endpoint(host, port):
        tried.append(host)
        return SimpleNamespace(connect=lambda f: defer.fail(ConnectionRefusedError(host)))

    a.endpoint = endpoint
    who = Address("x", "many.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "many.test", [who]))
    assert r.kind == "transient"
    assert len(tried) == MAX_ADDRESSES_PER_ATTEMPT == 10
    assert tried[6:] == [f"192.0.2.{i}" for i in range(20, 24)]


def test_the_time_budget_stops_the_staggered_starts_within_a_host(tmp_path):
    # mx1 takes the budget but for 0.3 s; of mx2's three addresses two
    # start in that time, the third waits for the next retry -- and mx2,
    # not fully tried, is not counted as failed
    from twisted.internet.error import ConnectionRefusedError

    from txmailhub.relay.attempt import HOSTS_TIME_BUDGET
    from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY

    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "slow.test": {"MX": [(10, "mx1.slow.test"), (20, "mx2.slow.test")]},
            "mx1.slow.test": {"A": ["192.0.2.50"]},
            "mx2.slow.test": {"A": ["192.0.2.51", "192.0.2.52", "192.0.2.53"]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    started, hanging = _hanging_endpoints(a)
    who = Address("x", "slow.test")
    d = a.deliver(entry(tmp_path, who), "slow.test", [who])
    assert started == ["192.0.2.50"]
    clock.advance(HOSTS_TIME_BUDGET - 0.3)
    hanging["192.0.2.50"].errback(ConnectionRefusedError("192.0.2.50"))
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    clock.advance(CONNECTION_ATTEMPT_DELAY)
    assert started == ["192.0.2.50", "192.0.2.51", "192.0.2.52"]
    for host in started[1:]:
        hanging[host].errback(ConnectionRefusedError(host))
    [r] = run(net, d)
    assert r.kind == "transient"
    assert a.mx.health.is_failed("mx1.slow.test")
    assert not a.mx.health.is_failed("mx2.slow.test")
    # no host answered: remembered as a destination none of whose hosts
    # could be reached, the budget's run out or not; the next try after
    # that memory starts with mx2, the host left partly untried
    assert r.unreachable is True and "slow.test" in a._unreachable
    clock.advance(a.unreachable_memory)
    a.deliver(entry(tmp_path, who), "slow.test", [who])
    assert started[3] in ("192.0.2.51", "192.0.2.52", "192.0.2.53")


def test_the_address_that_connected_is_the_winner_not_the_last_started(tmp_path):
    # mx1's IPv6 address answers only after its IPv4 one was started (and
    # hangs): the session is with the IPv6 address, so the clear-text try
    # after a failed opportunistic STARTTLS goes there again too
    from txmailhub.relay.eyeballs import CONNECTION_ATTEMPT_DELAY

    a, net, clock = agent(tmp_path, tls_ok=False)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "STARTTLS"), tls_creator=FakeTLS("server"))
    late: list[defer.Deferred] = []
    fake = a.endpoint

    def endpoint(host, port):
        if host == "192.0.2.1":  # black-holed
            return SimpleNamespace(connect=lambda f: defer.Deferred())
        if late:  # the try in clear: at once
            return fake(host, port)

        def connect(factory):
            d = defer.Deferred()
            late.append(d)
            d.addCallback(lambda _: fake(host, port).connect(factory))
            return d
        return SimpleNamespace(connect=connect)

    a.endpoint = endpoint
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    clock.advance(CONNECTION_ATTEMPT_DELAY)  # the IPv4 address started, hanging
    late[0].callback(None)
    [r] = run(net, d)
    assert r.kind == "delivered"
    assert net.connections == [("2001:db8::1", 25), ("2001:db8::1", 25)]


@pytest.mark.parametrize("ended_by", ["timeout", "hangup", "closing"])
def test_a_message_deleted_while_an_attempt_that_ended_converts_it_adds_nothing(
        tmp_path, log_events, ended_by):
    # the 7-bit conversion ends after the attempt did (the data-block
    # timer, or the server hung up), or while its connection is being
    # dropped for the timer: the message deleted meanwhile is no news for
    # a session that is over -- no second result, no "gone" line, no
    # failure
    clock = Clock()
    runner = HeldRunner()
    a, net = _agent_with(tmp_path, clock=clock, run_blocking=runner)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode()
    e = entry(tmp_path, BOB, body=body)
    d = a.deliver(e, "remote.test", [BOB])
    net.run()
    assert runner.calls
    if ended_by == "closing":
        clock.advance(3600)  # the timer drops the connection: not lost yet
        os.unlink(e.message_path)
        runner.release()
    elif ended_by == "timeout":
        clock.advance(3600)
    else:
        net.server_protocols[0].transport.loseConnection()
    net.run()
    [results] = [run(net, d)]
    before = [(r.kind, r.reply.text()) for r in results]
    assert [r.kind for r in results] == ["transient"]
    if ended_by != "closing":
        os.unlink(e.message_path)
        runner.release()
        net.run()
    assert [(r.kind, r.reply.text()) for r in results] == before
    assert not any("gone when its data was due" in formatEvent(ev) for ev in log_events)
    assert [ev for ev in log_events if ev.get("log_failure") is not None] == []


def test_a_missing_file_that_is_not_the_message_is_a_local_error_not_a_deletion(
        tmp_path, log_events):
    # the conversion meets FileNotFoundError with the message still queued
    # (its 7-bit copy's folder gone, say): the hub's own trouble, logged
    # as such and retried, not reported as a `mailhub queue delete`
    from txmailhub.relay import mime7bit

    def run_blocking(f, *args):
        if f is mime7bit.convert_file:
            return defer.fail(FileNotFoundError(2, "No such file or directory", args[1]))
        return defer.maybeDeferred(f, *args)

    a, net = _agent_with(tmp_path, run_blocking=run_blocking)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(extensions=("PIPELINING",))
    body = "Subject: x\nContent-Type: text/plain; charset=utf-8\n\nGrüße\n".encode()
    [r] = run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    assert r.kind == "transient" and r.reply.code == 451
    assert "deleted during the attempt" not in r.reply.text()
    assert not any("gone when its data was due" in formatEvent(ev) for ev in log_events)
    assert [ev for ev in log_events if ev.get("log_failure") is not None]


def test_a_message_that_cannot_be_read_for_another_reason_is_not_called_deleted(
        tmp_path, log_events):
    # only a file that is gone is a deletion from the queue; any other
    # error opening it (here: a folder in its place) is a fault the log
    # shows with its traceback
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "8BITMIME"))
    e = entry(tmp_path, BOB)
    d = a.deliver(e, "remote.test", [BOB])
    os.unlink(e.message_path)
    os.mkdir(e.message_path)
    results = run(net, d)
    assert all("deleted during the attempt" not in r.reply.text() for r in results)
    assert not any("gone when its data was due" in formatEvent(ev) for ev in log_events)
    assert [ev for ev in log_events if ev.get("log_failure") is not None]


def test_a_message_that_is_a_named_pipe_is_not_waited_on(tmp_path, log_events):
    # a FIFO put in the place of a queued message after the start (which
    # sets such an entry aside, queue.recover): the attempt's plain open
    # waited for a writer for ever, on the reactor's thread -- the whole
    # hub with it.  Refused as a message this hub cannot read now: 451,
    # the entry stays queued
    from pathlib import Path

    from conftest import not_waiting_on

    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(
        extensions=("PIPELINING", "8BITMIME"))
    e = entry(tmp_path, BOB)
    d = a.deliver(e, "remote.test", [BOB])
    os.unlink(e.message_path)
    os.mkfifo(e.message_path)
    results = not_waiting_on(Path(e.message_path), lambda: run(net, d))
    assert [(r.kind, r.reply.code) for r in results] == [("transient", 451)]
    assert all("deleted during the attempt" not in r.reply.text() for r in results)
    assert [ev for ev in log_events if ev.get("log_failure") is not None]


def test_a_552_size_refusal_at_rcpt_is_not_split_off_nor_tried_elsewhere(tmp_path):
    # RFC 1870 6.4: a 552 whose X.3.4 says the message is too big for that
    # recipient is its final answer -- it does not go with the "too many
    # recipients" (452 4.5.3) into the next transaction, nor to the next
    # MX host with a recipient refused only for now
    dave = Address("dave", "remote.test")
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT carol@remote.test": b"552 5.3.4 message too big for this recipient\r\n",
        "RCPT dave@remote.test": b"452 4.5.3 too many recipients\r\n"})
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL, dave), "remote.test",
                                 [BOB, CAROL, dave]))
    by = {r.address: r for r in results}
    assert by[BOB].kind == "delivered"
    assert by[CAROL].kind == "permanent" and by[CAROL].remote_mta == "mx1.remote.test"
    assert by[CAROL].reply == Reply.of(552, "5.3.4", "message too big for this recipient")
    rcpts = [[c for c in p.commands if c.startswith(b"RCPT")] for p in net.server_protocols]
    sent = [c for r in rcpts for c in r]
    assert sent[:3] == [b"RCPT TO:<bob@remote.test>", b"RCPT TO:<carol@remote.test>",
                        b"RCPT TO:<dave@remote.test>"]
    assert b"RCPT TO:<carol@remote.test>" not in sent[3:]
    assert b"RCPT TO:<dave@remote.test>" in sent[3:]  # dave was tried again, without carol


def test_a_552_size_refusal_stays_when_every_rcpt_was_refused(tmp_path):
    # every RCPT refused, one only for now: that one goes to the next MX
    # host, the one refused for its size does not
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={
        "RCPT bob@remote.test": b"552 5.2.3 over this mailbox's limit\r\n",
        "RCPT carol@remote.test": b"452 4.2.2 mailbox full\r\n"})
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    results = run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL]))
    by = {r.address: r for r in results}
    assert by[BOB].kind == "permanent" and by[BOB].reply.status == "5.2.3"
    assert by[CAROL].kind == "delivered" and by[CAROL].remote_mta == "mx2.remote.test"
    [_, second] = net.server_protocols
    assert [c for c in second.commands if c.startswith(b"RCPT")] == [
        b"RCPT TO:<carol@remote.test>"]


@pytest.mark.parametrize("case", ["refused", "null mx", "no such domain", "greeting 421"])
def test_the_host_a_notice_names_as_remote_mta_is_one_the_attempt_reached(tmp_path, case):
    # A notice's Remote-MTA is the result's remote_mta (bounce.py): a host
    # that took part (a session opened: its words, or this hub's account
    # of the session), none when no host did -- every address refused, a
    # null MX, a domain that does not exist (RFC 3464 2.3.5).
    a, net, _ = agent(tmp_path)
    domain = {"null mx": "null.test", "no such domain": "nowhere.test"}.get(case, "remote.test")
    who = Address("bob", domain)
    if case == "greeting 421":
        for address in ("2001:db8::1", "192.0.2.1", "192.0.2.2"):
            net.servers[(address, 25)] = lambda: ScriptedSMTPServer(
                greeting=b"421 4.3.2 busy, try later\r\n")
    [r] = run(net, a.deliver(entry(tmp_path, who), domain, [who]))
    assert r.kind in ("transient", "permanent")
    expected = "mx2.remote.test" if case == "greeting 421" else None
    assert r.remote_mta == expected


def test_a_smarthost_whose_name_does_not_resolve_is_no_unreachable_destination(tmp_path):
    # the smarthost's name is looked up as its connection is made
    # (hostname.NameEndpoint): a failed lookup is a DNS failure, not a
    # host that answered no connection -- the runner must not give every
    # outbound message one delivery at a time for it (failing.py), nor
    # log that no host answered; nor when the agent remembers it
    from twisted.internet import error

    a, net, clock = agent(tmp_path, 'smarthost = "smart.example.net:25"')
    lookup = error.DNSLookupError("smart.example.net: Name or service not known")
    a.endpoint = lambda host, port: SimpleNamespace(connect=lambda f: defer.fail(lookup))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.kind == "transient" and r.reply.text().endswith("name lookup failed")
    assert r.unreachable is None
    d = a.attempt(entry(tmp_path, BOB))
    clock.advance(0)  # (deferred by its memory in a later turn of the reactor)
    [r] = run(net, d)
    assert r.reply.text().endswith("name lookup failed") and r.unreachable is None
    # a smarthost that refuses the connection is one
    a, net, clock = agent(tmp_path, 'smarthost = "smart.example.net:25"')
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    assert r.reply.text().endswith("connection refused") and r.unreachable is True
    d = a.attempt(entry(tmp_path, BOB))
    clock.advance(0)
    [r] = run(net, d)
    assert r.unreachable is True


def test_a_host_with_more_than_ten_addresses_reaches_the_untried_ones_after_the_memory(tmp_path):
    # one MX host with 12 addresses, the first ten refused, the last two
    # working: the destination is remembered as unreachable, and the try
    # after that memory must start with the two addresses left untried
    # (before, it tried the same first ten again, every time, until the
    # queue_lifetime bounced the message)
    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "big.test": {"MX": [(10, "mx.big.test")]},
            "mx.big.test": {"A": [f"192.0.2.{100 + i}" for i in range(12)]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    net.servers[("192.0.2.110", 25)] = ScriptedSMTPServer
    net.servers[("192.0.2.111", 25)] = ScriptedSMTPServer
    who = Address("x", "big.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "big.test", [who]))
    assert r.kind == "transient" and r.unreachable and len(net.connections) == 10
    clock.advance(a.unreachable_memory)
    [r] = run(net, a.deliver(entry(tmp_path, who), "big.test", [who]))
    assert r.kind == "delivered"
    assert net.connections[10] in (("192.0.2.110", 25), ("192.0.2.111", 25))


def test_a_host_cut_by_the_ten_addresses_is_reached_again_at_its_untried_ones(tmp_path):
    # nine hosts that refuse, then one with three addresses whose second
    # works: the first try reaches only its first address (ten in all);
    # the try after the memory must reach the two left
    a, net, clock = agent(tmp_path)
    zone = {**ZONE, "cut.test": {"MX": [(i, f"mx{i}.cut.test") for i in range(10)]}}
    for i in range(9):
        zone[f"mx{i}.cut.test"] = {"A": [f"192.0.2.{10 + i}"]}
    zone["mx9.cut.test"] = {"A": ["192.0.2.90", "192.0.2.91", "192.0.2.92"]}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    net.servers[("192.0.2.91", 25)] = ScriptedSMTPServer
    who = Address("x", "cut.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "cut.test", [who]))
    assert r.kind == "transient" and len(net.connections) == 10
    assert ("192.0.2.90", 25) in net.connections
    clock.advance(a.unreachable_memory)
    [r] = run(net, a.deliver(entry(tmp_path, who), "cut.test", [who]))
    assert r.kind == "delivered" and ("192.0.2.91", 25) in net.connections[10:]


def _big_host_agent(tmp_path, working=()):
    # one MX host with twelve addresses, those in ``working`` taking mail,
    # retry steps of an hour: longer than the ten minutes a failed host
    # is remembered (mx.FAILED_HOST_MEMORY)
    a, net, clock = agent(tmp_path, 'retry_schedule = ["1h"]')
    zone = {**ZONE, "big.test": {"MX": [(10, "mx.big.test")]},
            "mx.big.test": {"A": [f"192.0.2.{100 + i}" for i in range(12)]}}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    for address in working:
        net.servers[(address, 25)] = ScriptedSMTPServer
    return a, net, clock, Address("x", "big.test")


def test_a_host_whose_last_addresses_work_is_reached_with_retry_steps_past_the_memory(tmp_path):
    # the retries come an hour apart: the ten minutes' memory of failed
    # addresses was over at each, so each tried the same first ten again
    # (the order is fixed) and never the two that work, until the
    # queue_lifetime bounced the message
    a, net, clock, who = _big_host_agent(tmp_path, ("192.0.2.110", "192.0.2.111"))
    kinds = []
    for _ in range(3):
        [r] = run(net, a.deliver(entry(tmp_path, who), "big.test", [who]))
        kinds.append(r.kind)
        if r.kind == "delivered":
            break
        clock.advance(3600)
    assert kinds[0] == "transient" and kinds[-1] == "delivered", kinds


def test_every_address_gets_its_turn_across_retries(tmp_path):
    # none answers: the tries an hour apart go round the twelve addresses,
    # those tried longest ago first, not the same ten each time
    a, net, clock, who = _big_host_agent(tmp_path)
    seen = []
    for _ in range(2):
        before = len(net.connections)
        [r] = run(net, a.deliver(entry(tmp_path, who), "big.test", [who]))
        assert r.kind == "transient"
        seen.append([h for h, _ in net.connections[before:]])
        clock.advance(3600)
    assert len(seen[0]) == len(seen[1]) == 10
    assert set(seen[0]) | set(seen[1]) == {f"192.0.2.{100 + i}" for i in range(12)}
    # the two left out first come first, then those tried longest ago
    assert seen[1][:2] == ["192.0.2.110", "192.0.2.111"]


def _remembered_deferral(a, net, clock, tmp_path, who, domain):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        d = a.deliver(entry(tmp_path, who), domain, [who])
        clock.advance(0)
        [r] = run(net, d)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.kind == "transient"
    [line] = [formatEvent(e) for e in events if "not tried again yet" in e.get("log_format", "")]
    return line


def test_a_remembered_deferral_says_hosts_were_left_untried(tmp_path):
    # the ten addresses ran out before the host's last two: the remembered
    # deferral must not read as if every host had failed
    a, net, clock, who = _big_host_agent(tmp_path)
    run(net, a.deliver(entry(tmp_path, who), "big.test", [who]))
    line = _remembered_deferral(a, net, clock, tmp_path, who, "big.test")
    assert "left untried" in line and "10 addresses" in line
    # every host tried: nothing said of hosts left
    a, net, clock = agent(tmp_path)
    run(net, a.deliver(entry(tmp_path, BOB), "remote.test", [BOB]))
    line = _remembered_deferral(a, net, clock, tmp_path, BOB, "remote.test")
    assert "untried" not in line



def test_a_domain_whose_eleventh_host_works_is_reached_with_retry_steps_past_the_memory(tmp_path):
    # eleven MX hosts of one address each, only the least preferred
    # working, retries an hour apart: the ten minutes a failed host is
    # remembered were over at each retry, which went back to the same ten
    # most preferred hosts, and the eleventh was never tried
    a, net, clock = agent(tmp_path, 'retry_schedule = ["1h"]')
    use_mx_hosts(a, clock, "eleven.test", 11, first_address=100)
    net.servers[("192.0.2.110", 25)] = ScriptedSMTPServer
    who = Address("x", "eleven.test")
    kinds = []
    for _ in range(3):
        [r] = run(net, a.deliver(entry(tmp_path, who), "eleven.test", [who]))
        kinds.append(r.kind)
        if r.kind == "delivered":
            break
        clock.advance(3600)
    assert kinds[0] == "transient" and kinds[-1] == "delivered", kinds


def test_hosts_an_attempt_reaches_all_of_keep_their_preference_across_retries(tmp_path):
    # three hosts, ten addresses at most: every attempt reaches them all,
    # so the most preferred, which refused an hour ago, is tried first
    # again once its failure is no longer remembered (ten minutes), not
    # put after the backups for as long as its address's failure is
    a, net, clock = agent(tmp_path, 'retry_schedule = ["1h"]')
    use_mx_hosts(a, clock, "three.test", 3, first_address=100)
    net.servers[("192.0.2.101", 25)] = ScriptedSMTPServer
    who = Address("x", "three.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "three.test", [who]))
    assert r.kind == "delivered" and net.connections[0] == ("192.0.2.100", 25)
    assert a.mx.health.address_failed_until("192.0.2.100") is not None
    clock.advance(3600)
    net.servers[("192.0.2.100", 25)] = ScriptedSMTPServer
    before = len(net.connections)
    [r] = run(net, a.deliver(entry(tmp_path, who), "three.test", [who]))
    assert r.kind == "delivered" and net.connections[before] == ("192.0.2.100", 25)


def test_a_primary_that_refused_once_is_tried_first_again_among_more_than_ten_addresses(tmp_path):
    # twelve hosts of one address each: the most preferred refused once,
    # the next took the mail.  An hour later (the ten minutes a failed host
    # is remembered are over) the primary is tried first again: the next
    # ten addresses in preference order hold ones not known to fail, so
    # no host past the tenth is left unreached for keeping the order.
    # Before, the primary went after the eleven backups for as long as its
    # address's failure was remembered (4 hours 10 minutes by default)
    a, net, clock = agent(tmp_path, 'retry_schedule = ["1h"]')
    use_mx_hosts(a, clock, "twelve.test", 12, first_address=100)
    net.servers[("192.0.2.101", 25)] = ScriptedSMTPServer
    who = Address("x", "twelve.test")
    [r] = run(net, a.deliver(entry(tmp_path, who), "twelve.test", [who]))
    assert r.kind == "delivered" and net.connections[0] == ("192.0.2.100", 25)
    clock.advance(3600)
    net.servers[("192.0.2.100", 25)] = ScriptedSMTPServer
    before = len(net.connections)
    [r] = run(net, a.deliver(entry(tmp_path, who), "twelve.test", [who]))
    assert r.kind == "delivered" and net.connections[before] == ("192.0.2.100", 25)


def test_a_smarthost_offering_no_mechanism_the_hub_has_keeps_the_mail_queued_saying_so(
        tmp_path, log_events):
    # "AUTH PLAIN" went to a smarthost offering CRAM-MD5 only; its refusal
    # kept the mail queued as a login refused until its lifetime ended.  No
    # credentials go now, and the reply kept (queue list's last error) and
    # the attempt's log line say what the smarthost offers
    a, net = agent_with_smarthost_login(tmp_path)
    net.servers[("smart.example.net", 587)] = lambda: ScriptedSMTPServer(
        extensions=("STARTTLS", "AUTH CRAM-MD5"), tls_creator=FakeTLS("server"))
    [r] = run(net, a.attempt(entry(tmp_path, BOB)))
    said = ("454 4.7.0 the smarthost offers AUTH CRAM-MD5 only; txmailhub can use PLAIN or "
            "LOGIN ([relay] smarthost_auth_file is set)")
    assert (r.kind, r.reply.text(), r.remote_mta) == ("transient", said, "smart.example.net")
    assert isinstance(r.reply, LocalReply)
    [server] = net.server_protocols
    assert server.tls and not any(c.startswith(b"AUTH") for c in server.commands)
    assert not server.messages
    lines = [formatEvent(e) for e in log_events if "not delivered" in formatEvent(e)]
    assert lines == [f"ABCDEF0123456789: [smarthost] not delivered: session with "
                     f"smart.example.net failed: {said}"], lines


def test_a_bare_cr_in_a_queued_message_goes_as_a_line_end(tmp_path):
    # only a record edited by hand or written by another program holds one
    # (the hub's server refuses it): RFC 5321 2.3.8 lets a client send CR
    # only in CRLF, and "<CR>.<CR>" passed through is an end of data to a
    # next hop that takes a bare CR for a line end (SMTP smuggling)
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    body = b"Subject: hi\n\nfirst\r.\rMAIL FROM:<x@y>\n"
    [r] = run(net, a.deliver(entry(tmp_path, BOB, body=body), "remote.test", [BOB]))
    assert r.kind == "delivered"
    [(_, _, sent)] = net.server_protocols[0].messages
    assert sent == b"Subject: hi\r\n\r\nfirst\r\n..\r\nMAIL FROM:<x@y>\r\n"


def test_a_port_465_smarthost_under_smarthost_tls_none_still_gets_implicit_tls(
        tmp_path, monkeypatch):
    # relay.rst: port 465 has no plain form, so "none" there is TLS
    # without a check of the certificate -- the non-verifying context,
    # never a session in the clear (nor a TLS layer with no context)
    from txmailhub.relay import attempt as attempt_mod

    asked, wrapped = [], []

    def tls_options(host, verify):
        asked.append((host, verify))
        return FakeTLS(host)

    def wrap(creator, endpoint):
        wrapped.append(creator)
        return endpoint

    monkeypatch.setattr(attempt_mod, "wrapClientTLS", wrap)
    a, net = _agent_with(tmp_path, 'smarthost = "smart.example.net:465"\nsmarthost_tls = "none"',
                         tls_options=tls_options)
    net.servers[("smart.example.net", 465)] = ScriptedSMTPServer
    run(net, a.attempt(entry(tmp_path, BOB)))
    assert len(wrapped) == 1 and isinstance(wrapped[0], FakeTLS)
    assert asked == [("smart.example.net", False)]


class _RefuseRcptThenDrop(ScriptedSMTPServer):
    """Answers RCPT for ``who`` 550, then closes the connection (after
    any RCPT)."""

    def __init__(self, who, **kwargs):
        super().__init__(replies={f"RCPT {who}": b"550 5.1.1 no such user\r\n"}, **kwargs)

    def _command(self, line):
        super()._command(line)
        if line.upper().startswith(b"RCPT"):
            self.transport.loseConnection()


def _two_mx_hosts_the_first_refusing_then_dropping(tmp_path, local, **kwargs):
    """An agent with two MX hosts for two.test, the first
    (192.0.2.120) a _RefuseRcptThenDrop for ``local``@two.test: the
    agent, its network and that address."""
    a, net, clock = agent(tmp_path)
    use_mx_hosts(a, clock, "two.test", 2, first_address=120)
    who = Address(local, "two.test")
    net.servers[("192.0.2.120", 25)] = lambda: _RefuseRcptThenDrop(who, **kwargs)
    return a, net, who


def test_no_socket_for_a_later_mx_host_keeps_what_an_earlier_host_refused_for_good(
        tmp_path):
    # mx1 refuses carol for good at RCPT, then drops the connection: her
    # 550 is her answer, bob goes on to mx2 -- for which no socket can be
    # made (out of descriptors just then).  The delivery's results still
    # have carol's 550 beside bob's "no connection could be made": with
    # bob's alone, carol's refusal was lost, and she was tried again
    clock = Clock()
    s = settings(tmp_path)
    mx = MXResolver(FakeResolver(ZONE), clock, "mail.example.org", port=s.relay.port,
                    rng=random.Random(0))
    net = FakeNetwork(clock)
    net.servers[("2001:db8::1", 25)] = lambda: _RefuseRcptThenDrop(CAROL)
    shortage = _NoSockets(net, errno.EMFILE)

    def endpoint(host, port):
        return (shortage.endpoint if host == "192.0.2.2" else net.endpoint)(host, port)

    a = DeliveryAgent(s, mx, clock, endpoint=endpoint,
                      tls_options=lambda host, verify: FakeTLS(host, True))
    results = run(net, a.deliver(entry(tmp_path, CAROL, BOB), "remote.test", [CAROL, BOB]))
    assert net.connections == [("2001:db8::1", 25)]
    by = {r.address: r for r in results}
    assert sorted(by, key=str) == [BOB, CAROL]
    assert (by[CAROL].kind, by[CAROL].reply.code) == ("permanent", 550)
    assert (by[BOB].kind, by[BOB].reply.status) == ("transient", "4.3.0")
    assert os.strerror(errno.EMFILE) in by[BOB].reply.text()


def test_every_recipient_refused_for_good_before_the_session_failed_ends_the_attempt(
        tmp_path, log_events):
    # RCPT answered 550, then the connection lost: the 550 is that
    # recipient's answer (RFC 5321), and with no recipient left no other
    # MX host is asked -- the attempt ends with the refusal (a bounce),
    # and no "not delivered" line speaks of a session failure for it
    a, net, who = _two_mx_hosts_the_first_refusing_then_dropping(tmp_path, "x")
    net.servers[("192.0.2.121", 25)] = ScriptedSMTPServer
    [r] = run(net, a.deliver(entry(tmp_path, who), "two.test", [who]))
    assert r.address == who and r.kind == "permanent" and r.reply.code == 550, r
    assert net.connections == [("192.0.2.120", 25)]
    assert not any(p.messages for p in net.server_protocols)
    # the refusal is the line; no "not delivered" line for no recipient
    lines = [formatEvent(e) for e in log_events]
    assert any("refused at RCPT before the session failed: x@two.test: 550" in x for x in lines)
    assert not [x for x in lines if "not delivered" in x], lines


def test_the_recipients_refused_before_the_session_failed_are_logged_escaped(
        tmp_path, log_events):
    # an address may hold a line separator or a bidi override (SMTPUTF8
    # lets them through the parser, as no control character is): the
    # line naming those refused at RCPT escapes them, as the others do
    a, net, who = _two_mx_hosts_the_first_refusing_then_dropping(
        tmp_path, "x\u2028\u202ey", extensions=("PIPELINING", "8BITMIME", "SMTPUTF8"))
    [r] = run(net, a.deliver(entry(tmp_path, who), "two.test", [who]))
    assert r.kind == "permanent" and r.reply.code == 550, r
    lines = [formatEvent(e) for e in log_events]
    assert any(x.endswith("refused at RCPT before the session failed: "
                          "x\\u2028\\u202ey@two.test: 550") for x in lines), lines
    assert not any("\u2028" in x or "\u202e" in x for x in lines)


def test_the_destinations_left_with_hosts_untried_are_remembered_a_bounded_number(
        tmp_path, monkeypatch):
    # the domains whose last attempt left addresses untried are chosen by
    # strangers (a recipient's domain, its MX records): FAILED_HOSTS_KEPT
    # at most, the oldest forgotten -- each domain a stranger names with
    # more than MAX_ADDRESSES_PER_ATTEMPT addresses otherwise stayed for
    # the life of the hub
    from txmailhub.relay import attempt as attempt_mod

    monkeypatch.setattr(attempt_mod, "FAILED_HOSTS_KEPT", 2)
    a, net, clock = agent(tmp_path)
    domains = ["big1.test", "big2.test", "big3.test"]
    zone = dict(ZONE)
    for n, domain in enumerate(domains):
        zone[domain] = {"MX": [(10, f"mx.{domain}")]}
        zone[f"mx.{domain}"] = {"A": [f"192.0.{n + 2}.{100 + i}" for i in range(12)]}
    a.mx = MXResolver(FakeResolver(zone), clock, "mail.example.org", port=25,
                      rng=random.Random(0))
    for domain in domains:
        who = Address("x", domain)
        d = a.deliver(entry(tmp_path, who), domain, [who])
        advance_until_done(net, clock, d, step=1)
        [r] = run(net, d)
        assert r.kind == "transient"
    assert len(net.connections) == 3 * attempt_mod.MAX_ADDRESSES_PER_ATTEMPT
    assert list(a._left_untried) == ["big2.test", "big3.test"]


def test_the_stop_cutting_the_plain_retry_after_a_failed_handshake_gives_the_delivery_up(
        tmp_path):
    # opportunistic TLS failed, and the retry in clear is under way when
    # the hub's stop cuts it: given up as any session the stop cuts -- not
    # the host's failure (no host marked failed), no other host tried
    a, net, _ = agent(tmp_path, tls_ok=False)
    made = iter([
        lambda: ScriptedSMTPServer(extensions=("PIPELINING", "STARTTLS"),
                                   tls_creator=FakeTLS("server")),
        lambda: ScriptedSMTPServer(silent=True),
    ])
    net.servers[("2001:db8::1", 25)] = lambda: next(made)()
    d = a.deliver(entry(tmp_path, BOB), "remote.test", [BOB])
    net.run()
    assert not d.called and len(net.server_protocols) == 2  # the retry waits
    a.abort_all()
    [r] = run(net, d)
    assert r.kind == "transient" and "the hub stopped" in r.reply.text(), r
    assert len(net.connections) == 2
    assert not a.mx.health.is_failed("mx1.remote.test")


def test_when_lost_asked_after_the_connection_went_fires_at_once(tmp_path):
    # the hub's stop waits for each session it cuts to be gone: one whose
    # connection was lost before the stop asked must not hold it for ever
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="none")
    proto = SMTPClientProtocol(session, Clock(), str(tmp_path / "m"), None, str(tmp_path / "c"))
    proto.makeConnection(StringTransport())
    waiting = proto.when_lost()
    assert not waiting.called
    proto.connectionLost(Failure(ConnectionDone()))
    assert waiting.called
    assert proto.when_lost().called


def test_the_stop_closes_a_session_whose_transport_cannot_abort(tmp_path):
    # a transport with no abortConnection (not every one has it) is
    # closed all the same when the hub's stop cuts the session
    from twisted.internet.testing import StringTransport

    from txmailhub.relay.attempt import SMTPClientProtocol
    from txmailhub.smtp.client import ClientSession

    class NoAbort(StringTransport):
        abortConnection = None

    session = ClientSession(helo="hub.test", sender=None, recipients=[(BOB, None)], size=10,
                            tls="none")
    proto = SMTPClientProtocol(session, Clock(), str(tmp_path / "m"), None, str(tmp_path / "c"))
    transport = NoAbort()
    proto.makeConnection(transport)
    proto.abort()
    assert transport.disconnecting


def test_a_stop_while_the_quit_is_answered_keeps_the_delivery(tmp_path):
    # the server took the message (250 after the final "."), and the hub
    # stops while its QUIT waits for the 221: the session is cut, but its
    # results stand -- the recipient is delivered, not "the hub stopped"
    # (a retry at the next start would send the message twice)
    (tmp_path / "m").write_bytes(b"Subject: x\r\n\r\nhi\r\n")
    clock, proto, transport = _client_on_a_clock(tmp_path)
    for reply in (b"220 hi\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        proto.dataReceived(reply)
    while not transport.value().endswith(b"\r\n.\r\n"):
        transport.producer.resumeProducing()
        clock.advance(0)
    proto.dataReceived(b"250 2.0.0 queued as 1234\r\n")
    assert transport.value().endswith(b"QUIT\r\n") and not proto.done.called
    proto.abort()
    assert transport.disconnecting
    assert not clock.getDelayedCalls()
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.session_error is None
    [(address, reply)] = [(r.address, r.reply) for r in outcome.recipients]
    assert address == BOB and reply.code == 250 and "queued as 1234" in reply.text()


def test_a_connection_lost_in_the_middle_of_the_data_is_the_servers_not_a_local_error(
        tmp_path, logged_failures):
    # Twisted's transport, losing the connection, stops its producer
    # first (BodyStopped), then tells the protocol: the attempt ends as a
    # lost connection in the data phase -- no "local error" blamed on the
    # hub, no traceback -- and the message file is let go
    from twisted.python.failure import Failure

    from txmailhub.relay.body_producer import CHUNK_SIZE

    (tmp_path / "m").write_bytes(b"Subject: x\r\n\r\n" + (b"y" * 76 + b"\r\n") * (CHUNK_SIZE // 40))
    _, proto, transport = _client_on_a_clock(tmp_path)
    for reply in (b"220 hi\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        proto.dataReceived(reply)
    transport.producer.resumeProducing()  # one chunk taken, more to come
    assert proto._file is not None and not transport.value().endswith(b"\r\n.\r\n")
    producer = transport.producer
    producer.stopProducing()
    proto.connectionLost(Failure(ConnectionResetError("reset by peer")))
    outcome = proto.done.result
    text = outcome.session_error.text()
    assert "connection lost" in text and "local error" not in text, text
    assert outcome.session_error.code == 421
    assert proto._file is None
    assert logged_failures == []


def test_a_session_that_fails_during_a_stops_grace_tries_no_next_host(tmp_path):
    # the hub stops and does not wait for this entry (``quiesce``): its
    # session under way may end, but the next MX is not tried -- a new
    # connection after the stop's grace could run past the queue's lock
    a, net, d = session_in_flight(tmp_path)  # mx1 never answers
    a.quiesce(keep=())
    # the greeting's timeout, a step at a time; bounded, so that a session
    # that never ends fails the test instead of hanging it
    advance_until_done(net, a.clock, d, 60)
    assert d.called
    [r] = d.result
    assert r.kind == "transient" and "the hub stopped" in r.reply.text()
    assert net.connections == [("2001:db8::1", 25)]  # not mx2 (192.0.2.2)


class RefusesNotify(ScriptedSMTPServer):
    """Offers DSN and refuses a RCPT with NOTIFY=, as Postfix does for a
    value it cannot parse ("501 5.5.4 Bad NOTIFY parameter syntax")."""

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and b" NOTIFY=" in line:
            self.transport.write(b"501 5.5.4 Bad NOTIFY parameter syntax\r\n")
            return
        super()._command(line)


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_rcpt_refused_for_its_dsn_parameters_is_delivered_and_relayed(tmp_path, pipelining,
                                                                        log_events):
    # RFC 3461 5.2.2: the next hop does not take bob's NOTIFY; his RCPT goes
    # again without it on the same connection and the hub owes his
    # NOTIFY=SUCCESS the "relayed" notice.  Carol asked for none: hers is
    # unchanged (no NOTIFY: nothing refused, the next hop's duty)
    from txmailhub.relay import bounce
    from txmailhub.relay.recording import apply_results

    a, net, _ = agent(tmp_path)
    ext = ("PIPELINING",) * pipelining + ("SIZE 1000000", "DSN")
    net.servers[("2001:db8::1", 25)] = lambda: RefusesNotify(extensions=ext)
    e = entry(tmp_path, BOB, CAROL,
              recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
    results = run(net, a.deliver(e, "remote.test", [BOB, CAROL]))
    by = {r.address: r for r in results}
    assert by[BOB].kind == by[CAROL].kind == "delivered"
    assert not by[BOB].dsn_passed and by[CAROL].dsn_passed
    [server] = net.server_protocols
    assert sorted(rc for _, rcpts, _ in server.messages for rc in rcpts) == [
        b"bob@remote.test", b"carol@remote.test"]
    assert apply_results(e, results, 0.0, False)[BOB].notice == bounce.RELAYED
    logged = [formatEvent(x) for x in log_events if "on RCPT" in x.get("log_format", "")]
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused the DSN "
                      "parameters on RCPT TO:<bob@remote.test> (501 5.5.4 Bad NOTIFY parameter "
                      "syntax); RCPT sent again without NOTIFY and ORCPT: a success notice "
                      "asked for is this hub's (relayed)"]


class RefusesNotifyAndBob(RefusesNotify):
    """Refuses NOTIFY= as ``RefusesNotify`` does, and bob's RCPT without
    it for good: the RCPT sent again is refused."""

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and b"<bob@" in line and b" NOTIFY=" not in line:
            self.transport.write(b"550 5.1.1 no such user\r\n")
            return
        super()._command(line)


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_rcpt_sent_again_without_dsn_parameters_and_refused_is_logged_as_no_relayed(
        tmp_path, pipelining, log_events):
    # bob's RCPT went again without NOTIFY and was refused: no "(relayed)"
    # notice duty is claimed in the log -- his 550 is his answer, in the
    # session's line as any refused RCPT
    a, net, _ = agent(tmp_path)
    ext = ("PIPELINING",) * pipelining + ("SIZE 1000000", "DSN")
    net.servers[("2001:db8::1", 25)] = lambda: RefusesNotifyAndBob(extensions=ext)
    e = entry(tmp_path, BOB, CAROL,
              recipient_dsn=((BOB, RecipientDSN(notify=("SUCCESS",))),))
    results = run(net, a.deliver(e, "remote.test", [BOB, CAROL]))
    by = {r.address: r for r in results}
    assert by[BOB].kind == "permanent" and by[BOB].reply.code == 550
    assert by[CAROL].kind == "delivered"
    logged = [formatEvent(x) for x in log_events if "on RCPT" in x.get("log_format", "")]
    assert logged == ["ABCDEF0123456789: mx1.remote.test[2001:db8::1] refused the DSN "
                      "parameters on RCPT TO:<bob@remote.test> (501 5.5.4 Bad NOTIFY parameter "
                      "syntax); RCPT sent again without NOTIFY and ORCPT"]
    sessions = [formatEvent(x) for x in log_events
                if x.get("log_format", "").startswith("{queue_id}: session with")]
    assert sessions[-1].endswith("bob@remote.test: 550, carol@remote.test: 250")


def test_too_many_recipients_go_on_the_same_connection(tmp_path, log_events):
    # RFC 5321 4.5.3.1.10: the rest in a later transaction -- on the
    # connection the server said it on, not on a new one each round
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: two_per_message(b"452 4.5.3 too many")
    rcpts = [Address(f"u{i}", "remote.test") for i in range(5)]
    e = entry(tmp_path, *rcpts)
    results = run(net, a.deliver(e, "remote.test", rcpts))
    assert [r.kind for r in results] == ["delivered"] * 5
    [server] = net.server_protocols
    assert [len(rc) for _, rc, _ in server.messages] == [2, 2, 1]
    assert not any(c.upper().startswith(b"RSET") for c in server.commands)
    logged = [formatEvent(x) for x in log_events if "in one session" in x.get("log_format", "")]
    assert logged == [f"{e.id}: mx1.remote.test[2001:db8::1]: 3 transactions in one session "
                      "(recipients the server took too many of, or refused for their DSN "
                      "parameters in a pipelined batch, went in the next)"]


def test_a_transaction_whose_mail_never_went_is_not_counted_in_the_log(tmp_path, log_events):
    # the reply to the first "." comes with a stray reply after it: the
    # session ends before the second transaction's MAIL goes, so the log
    # tells of no second transaction (the recipients' results are as before)
    a, net, _ = agent(tmp_path)

    def server():
        s = two_per_message(b"452 4.5.3 too many")
        s.replies["END"] = b"250 2.0.0 queued\r\n250 2.0.0 stray\r\n"
        return s

    net.servers[("2001:db8::1", 25)] = server
    rcpts = [Address(f"u{i}", "remote.test") for i in range(3)]
    e = entry(tmp_path, *rcpts)
    results = run(net, a.deliver(e, "remote.test", rcpts))
    assert [r.kind for r in results][:2] == ["delivered"] * 2
    first = net.server_protocols[0]  # (u2 went on another connection)
    assert sum(c.upper().startswith(b"MAIL") for c in first.commands) == 1
    logged = [formatEvent(x) for x in log_events if "in one session" in x.get("log_format", "")]
    assert logged == []


class SilentAfterOneMessage(ScriptedSMTPServer):
    """Takes bob alone in a message ("too many" to the others) and says
    nothing more once that message is in: a later transaction hangs."""

    def _command(self, line):
        if self.messages:
            return
        if line[:4].upper() == b"RCPT" and b"<bob@" not in line:
            self.transport.write(b"452 4.5.3 too many recipients\r\n")
            return
        super()._command(line)


def test_the_stop_cutting_a_later_transaction_keeps_what_the_earlier_one_delivered(tmp_path):
    # bob's message was taken in the session's first transaction; the
    # hub's stop cuts carol's: bob's delivery stands (the runner keeps a
    # final result of an attempt a stop gave up) -- given up with carol's,
    # he got a second copy at the next start
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = SilentAfterOneMessage
    d = a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL])
    net.run()
    [server] = net.server_protocols
    assert not d.called and len(server.messages) == 1
    a.abort_all()
    by = {r.address: r for r in run(net, d)}
    assert by[BOB].kind == "delivered"
    assert by[CAROL].kind == "transient" and "the hub stopped" in by[CAROL].reply.text()


class UnansweredSecondDot(ScriptedSMTPServer):
    """Takes bob alone in the first message ("too many" to the others),
    refuses dave in the second, and never answers that second message's
    final ".": silent (``end="timeout"``) or closing the connection."""

    def __init__(self, end):
        super().__init__()
        self.end = end

    def dataReceived(self, data):
        if self.messages and self.in_data and b"\r\n.\r\n" in self.buf + data:
            if self.end == "lost":
                self.transport.loseConnection()
            return
        super().dataReceived(data)

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and b"<bob@" not in line:
            if not self.messages:
                self.transport.write(b"452 4.5.3 too many recipients\r\n")
                return
            if b"<dave@" in line:
                self.transport.write(b"550 5.1.1 no dave here\r\n")
                return
        super()._command(line)


@pytest.mark.parametrize("end", ["timeout", "lost"])
def test_an_unanswered_final_dot_of_a_later_transaction_is_logged_as_maybe_delivered(
        tmp_path, end, log_events):
    # carol's message (the session's second transaction) got no reply to
    # its final ".": the log says she may have it, as for a first
    # transaction's unanswered "." -- naming her alone, not bob (delivered
    # in the first) nor dave (refused at RCPT in the second)
    dave = Address("dave", "remote.test")
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: UnansweredSecondDot(end)
    e = entry(tmp_path, BOB, CAROL, dave)
    d = a.deliver(e, "remote.test", [BOB, CAROL, dave])
    advance_until_done(net, a.clock, d, 60)
    by = {r.address: r for r in run(net, d)}
    assert by[BOB].kind == "delivered"
    assert by[CAROL].kind == "transient" and by[dave].kind == "permanent"
    assert net.connections == [("2001:db8::1", 25)]  # no other host for carol now
    logged = [formatEvent(x) for x in log_events
              if "may have been delivered" in x.get("log_format", "")]
    assert len(logged) == 1
    assert logged[0].startswith(f"{e.id}: mx1.remote.test[2001:db8::1]: "
                                f"{by[CAROL].reply.text()}; the message may have been ")
    assert logged[0].endswith("delivered to carol@remote.test (transaction 2 of the session), "
                              "no other host is tried for them before the next retry")


@pytest.mark.parametrize("end", ["timeout", "lost"])
def test_an_unanswered_final_dot_of_a_later_transaction_marks_the_host_failed(tmp_path, end):
    # as an unanswered "." of a first transaction does: the next attempts
    # try the other MX hosts first for a while
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: UnansweredSecondDot(end)
    d = a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL])
    advance_until_done(net, a.clock, d, 60)
    by = {r.address: r.kind for r in run(net, d)}
    assert by == {BOB: "delivered", CAROL: "transient"}
    assert a.mx.health.is_failed("mx1.remote.test")


class OneMessagePerSession(ScriptedSMTPServer):
    """Takes bob alone in the first message ("too many" to the others),
    then refuses every RCPT of a later transaction for now: a limit per
    session, not per message."""

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and (self.messages or b"<bob@" not in line):
            self.transport.write(b"451 4.7.1 one message per session\r\n" if self.messages
                                 else b"452 4.5.3 too many recipients\r\n")
            return
        super()._command(line)


def test_a_later_transaction_refused_for_now_goes_on_to_the_next_mx_host(tmp_path):
    # the first transaction carried bob's message; the second carried none
    # (every RCPT refused for now): mx1 holds no copy for carol, so mx2
    # gets her in the same attempt, as after a session that took nothing
    # (RFC 5321 5.1) -- bob's delivery stands and is not sent again
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = OneMessagePerSession
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    by = {r.address: r for r in run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test",
                                                   [BOB, CAROL]))}
    assert by[BOB].kind == "delivered" and by[BOB].remote_mta == "mx1.remote.test"
    assert by[CAROL].kind == "delivered" and by[CAROL].remote_mta == "mx2.remote.test"
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.2", 25)]
    assert [m[1] for m in net.server_protocols[1].messages] == [[b"carol@remote.test"]]


class OneRecipientPerMessageEndsTheSecond(ScriptedSMTPServer):
    """Takes one recipient per message ("too many" to the others) and ends
    the session in its second transaction before any message text:
    ``end`` is ``"421"`` to its MAIL, or the connection closed at its
    RCPT.  A new connection starts afresh."""

    def __init__(self, end):
        super().__init__()
        self.end = end

    def _command(self, line):
        verb = line[:4].upper()
        if self.messages and verb == (b"MAIL" if self.end == "421" else b"RCPT"):
            if self.end == "421":
                self.transport.write(b"421 4.3.2 closing\r\n")
            self.transport.loseConnection()
            return
        if verb == b"RCPT" and self.rcpts:
            self.transport.write(b"452 4.5.3 too many recipients\r\n")
            return
        super()._command(line)


@pytest.mark.parametrize("end", ["421", "lost"])
def test_a_later_transaction_cut_before_its_text_sends_its_recipients_at_once(tmp_path, end):
    # bob's message went in the session's first transaction; the second,
    # carol's, ended with the session before any message text: mx1 holds
    # no copy for her, so she goes at once, in the same attempt (a new
    # connection: the "too many" was mx1's limit per message), and bob's
    # delivery stands -- one copy each
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: OneRecipientPerMessageEndsTheSecond(end)
    by = {r.address: r for r in run(net, a.deliver(entry(tmp_path, BOB, CAROL), "remote.test",
                                                   [BOB, CAROL]))}
    assert by[BOB].kind == "delivered" and by[CAROL].kind == "delivered"
    assert net.connections == [("2001:db8::1", 25)] * 2
    assert [m[1] for s in net.server_protocols for m in s.messages] == [
        [b"bob@remote.test"], [b"carol@remote.test"]]


class RepliesInTheSecondMessagesData(ScriptedSMTPServer):
    """Takes one recipient per message ("too many" to the others) and, in
    the first connection's second message, replies ``reply`` in the middle
    of the message data and reads nothing more (closing the connection
    when ``close``).  A later connection takes its message whole."""

    def __init__(self, said, reply, close):
        super().__init__(extensions=("PIPELINING", "8BITMIME"))
        self.said, self.reply, self.close = said, reply, close
        self.dead = False

    def dataReceived(self, data):
        if self.dead:
            return
        if self.messages and self.in_data and not self.said:
            self.said.append(data)
            self.dead = True
            self.transport.write(self.reply)
            if self.close:
                self.transport.loseConnection()
            return
        super().dataReceived(data)

    def _command(self, line):
        if line[:4].upper() == b"RCPT" and self.rcpts:
            self.transport.write(b"452 4.5.3 too many recipients\r\n")
            return
        super()._command(line)


@pytest.mark.parametrize(("reply", "close"), [(b"451 4.3.0 later\r\n", False),
                                              (b"421 4.4.2 data timeout\r\n", True)])
def test_a_reply_in_a_later_transactions_data_sends_its_recipients_on_a_new_connection(
        tmp_path, reply, close):
    # carol's message (the session's second) is cut by the server's reply
    # while its text still goes: the connection is dropped without the
    # final "." (the server throws the transaction away), bob's delivery
    # stands, and carol keeps her "too many" and goes at once on a new
    # connection -- the host is not marked failed
    said: list[bytes] = []
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: RepliesInTheSecondMessagesData(said, reply, close)
    body = b"Subject: hi\n\n" + (b"y" * 70 + b"\n") * 30000  # still going at the reply
    by = {r.address: r for r in run(net, a.deliver(entry(tmp_path, BOB, CAROL, body=body),
                                                   "remote.test", [BOB, CAROL]))}
    assert said and b"\r\n.\r\n" not in said[0]
    assert by[BOB].kind == "delivered" and by[CAROL].kind == "delivered"
    assert net.connections == [("2001:db8::1", 25)] * 2
    assert [m[1] for s in net.server_protocols for m in s.messages] == [
        [b"bob@remote.test"], [b"carol@remote.test"]]
    assert not a.mx.health.is_failed("mx1.remote.test")


def test_a_later_transaction_refused_for_now_at_a_smarthost_waits_for_the_retry(tmp_path):
    # no next host: carol keeps the smarthost's own words, for now
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:25"\nsmarthost_tls = "none"')
    net.servers[("smart.example.net", 25)] = OneMessagePerSession
    by = {r.address: r for r in run(net, a.attempt(entry(tmp_path, BOB, CAROL)))}
    assert by[BOB].kind == "delivered"
    assert by[CAROL].kind == "transient"
    assert by[CAROL].reply.text() == "451 4.7.1 one message per session"
    assert net.connections == [("smart.example.net", 25)]


def test_the_session_line_names_the_first_recipients_and_counts_the_rest(tmp_path):
    # one line per session: its list of results is cut at about 2000
    # characters (logsafe.LIST_LOG_MAX), not as long as the recipients
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    rcpts = [Address(f"r{i:03d}" + "x" * 60, "remote.test") for i in range(80)]
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = run(net, a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert {r.kind for r in results} == {"delivered"}, results[0]
    [line] = [formatEvent(x) for x in events if "session with" in x.get("log_format", "")]
    head, codes = line.split("): ", 1)
    assert head == "ABCDEF0123456789: session with mx1.remote.test (no TLS"
    shown, more = codes.rsplit(" and ", 1)
    pairs = shown.split(", ")
    assert pairs == [f"{r}: 250" for r in rcpts[:len(pairs)]]
    assert more == f"{80 - len(pairs)} more" and 20 < len(pairs) < 80
    assert len(shown) <= 2000 < len(shown) + len(f", {rcpts[len(pairs)]}: 250")


@pytest.mark.parametrize("end", [b"250 2.0.0 queued\r\n250 2.0.0 stray\r\n",
                                 b"250 2.0.0 queued\r\n250 2.0.0 st"])
def test_a_stray_reply_after_the_final_dot_is_logged_and_the_delivery_stands(tmp_path, end):
    # the second reply (or its start) came before QUIT was sent: a reply
    # too many, so no QUIT goes and the connection is dropped; the 250 to
    # "." delivered the message, and the log says what the server did
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: ScriptedSMTPServer(replies={"END": end})
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB), about="protocol error")
    assert [(r.kind, r.reply.text()) for r in results] == [("delivered", "250 2.0.0 queued")]
    assert b"QUIT" not in b"\n".join(net.server_protocols[0].commands)
    said = " 250 2.0.0 stray" if end.endswith(b"\n") else ""
    assert logged == [
        "ABCDEF0123456789: session with mx1.remote.test[2001:db8::1] ended in a protocol "
        "error: 421 4.5.0 reply from the server before the hub's command (QUIT) was sent"
        + (f":{said}" if said else "") + " (the connection was dropped; the results before "
        "it stand)"]


def test_a_stray_reply_before_the_next_transaction_leaves_its_recipients_queued(tmp_path):
    # the server takes one recipient a transaction (452 4.5.3 to the
    # others) and says a reply too many after the first ".": the second
    # transaction's MAIL must not take it for its answer
    class OneATransaction(ScriptedSMTPServer):
        def __init__(self):
            super().__init__(replies={"END": b"250 2.0.0 one\r\n250 2.0.0 stray\r\n",
                                      "RCPT carol@remote.test":
                                          b"452 4.5.3 too many recipients\r\n"})

    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = OneATransaction
    results, logged = deliver_logged(net, a, entry(tmp_path, BOB, CAROL),
                                     about="protocol error")
    assert {r.address: (r.kind, r.reply.text()) for r in results} == {
        BOB: ("delivered", "250 2.0.0 one"),
        CAROL: ("transient", "452 4.5.3 too many recipients")}
    assert sum(c.startswith(b"MAIL") for c in net.server_protocols[0].commands) == 1
    assert len(logged) == 1 and "(MAIL) was sent: 250 2.0.0 stray" in logged[0]


def test_the_next_transaction_waits_until_the_earlier_ones_results_are_handed_over(tmp_path):
    # a server that takes 2 recipients a message: the first transaction's
    # results go to ``settled`` as soon as its "." is answered, and the
    # second transaction's MAIL goes only once the Deferred it returned
    # fires (the runner writes them to the record meanwhile: a crash in the
    # second transaction must not send them the message again).  The wait
    # is the hub's: no reply timer runs, however long it takes
    a, net, clock = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: two_per_message(b"452 4.5.3 too many recipients")
    rcpts = [Address(f"u{i}", "remote.test") for i in range(3)]
    handed: list[list[DeliveryResult]] = []
    waits: list[defer.Deferred] = []

    def settled(results):
        handed.append(results)
        write = defer.Deferred()
        waits.append(write)
        # as the runner's gives it: fired already (its lock was free) and
        # waiting on the write it chains
        return defer.succeed(None).addCallback(lambda _: write)

    d = a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts, settled)
    net.run()
    [server] = net.server_protocols
    assert [len(m[1]) for m in server.messages] == [2]
    assert [(r.address, r.kind, r.remote_mta) for r in handed[0]] == [
        (rcpts[0], "delivered", "mx1.remote.test"), (rcpts[1], "delivered", "mx1.remote.test")]
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1  # none for the next yet
    clock.advance(3600)  # past any step's timeout
    net.run()
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1 and not d.called
    waits[0].callback(None)
    results = run(net, d)
    assert [len(m[1]) for m in server.messages] == [2, 1]
    assert {r.address: r.kind for r in results} == dict.fromkeys(rcpts, "delivered")
    assert len(handed) == 1  # the session's last transaction: its results are the outcome's


def test_a_session_of_one_transaction_hands_nothing_over_before_its_end(tmp_path):
    # the common case costs no write of its own: its results are the
    # delivery's, written once as it ends
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    handed: list = []
    d = a.deliver(entry(tmp_path, BOB, CAROL), "remote.test", [BOB, CAROL],
                  lambda results: handed.append(results))
    assert {r.address: r.kind for r in run(net, d)} == {BOB: "delivered", CAROL: "delivered"}
    assert handed == []


def _first_transaction_results_waiting(tmp_path):
    """Three recipients of remote.test, whose next hop takes two per
    message, the session run until the first transaction's results are
    handed over, their write held: the network, the recipients, the
    writes' Deferreds (the test fires them), the delivery's Deferred and
    the server."""
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = lambda: two_per_message(b"452 4.5.3 too many recipients")
    rcpts = [Address(f"u{i}", "remote.test") for i in range(3)]
    waits: list[defer.Deferred] = []
    d = a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts,
                  lambda results: waits.append(defer.Deferred()) or waits[-1])
    net.run()
    [server] = net.server_protocols
    return a, net, rcpts, waits, d, server


def test_a_session_cut_while_its_next_transaction_waits_sends_nothing_more(tmp_path):
    # the hub's stop cuts the session while the earlier transaction's
    # results are being written: the next transaction's commands, held,
    # never go, and the earlier transaction's delivery stands
    a, net, rcpts, waits, d, server = _first_transaction_results_waiting(tmp_path)
    a.abort_all()
    net.run()
    waits[0].callback(None)
    by = {r.address: r for r in run(net, d)}
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1
    assert [by[r].kind for r in rcpts] == ["delivered", "delivered", "transient"]


def test_a_write_ending_between_the_cut_and_the_close_leaves_the_next_transaction_unsent(
        tmp_path, log_events):
    # the hub's stop cuts the session while the earlier transaction's
    # results are being written, and that write ends before the transport
    # says the connection is lost (a reactor turn or more later): the next
    # transaction's commands, held, never went -- the log does not say the
    # session had two transactions
    a, net, rcpts, waits, d, server = _first_transaction_results_waiting(tmp_path)
    a.abort_all()
    waits[0].callback(None)  # before the close is reported
    by = {r.address: r for r in run(net, d)}
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1
    assert [by[r].kind for r in rcpts] == ["delivered", "delivered", "transient"]
    said = [formatEvent(e) for e in log_events]
    assert not any("transactions in one session" in line for line in said), said


def test_a_new_connections_round_waits_until_the_earlier_rounds_results_are_handed_over(
        tmp_path):
    # the recipients left after a session's last transaction go on a new
    # connection: what the earlier round settled is handed over first, as
    # between two transactions of one session, and each result once
    a, net, _ = agent(tmp_path)
    rcpts, rounds = three_rounds_of_one()
    calls: list[list[Address]] = []

    def fake(entry_, destination, recipients, *_):
        calls.append(list(recipients))
        return defer.succeed(rounds[len(calls) - 1])

    a._deliver = fake
    handed: list[list[Address]] = []
    waits: list[defer.Deferred] = []

    def settled(results):
        handed.append([r.address for r in results])
        waits.append(defer.Deferred())
        return waits[-1]

    d = a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts, settled)
    assert calls == [rcpts] and handed == [[rcpts[0]]]
    waits[0].callback(None)
    assert calls == [rcpts, rcpts[1:]] and handed == [[rcpts[0]], [rcpts[1]]]
    waits[1].callback(None)
    results = run(net, d)
    assert calls == [rcpts, rcpts[1:], rcpts[2:]] and len(handed) == 2
    assert {r.address: r.kind for r in results} == dict.fromkeys(rcpts, "delivered")


class _PausingClient(iosim.FakeTransport):
    """iosim's client transport made to pause as a TCP socket does: the
    bytes that come while it is paused are read in the first pump after it
    resumes (a socket's next reactor turn)."""

    def __init__(self, protocol):
        super().__init__(protocol, isServer=False)
        self.paused = False
        self.unread: list[bytes] = []

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def bufferReceived(self, buf):
        if self.paused and isinstance(buf, bytes):
            self.unread.append(buf)
            return
        super().bufferReceived(buf)

    def _checkProducer(self):
        if not self.paused and self.unread:
            data, self.unread = b"".join(self.unread), []
            super().bufferReceived(data)
        super()._checkProducer()


@pytest.mark.parametrize("pauses", [False, True])
@pytest.mark.parametrize("stray", [b"550 5.7.1 stray\r\n", b"250 2.0.0 stray\r\n",
                                   b"421 4.3.2 shutting down\r\n"])
def test_a_reply_while_the_next_transaction_waits_answers_no_command(
        tmp_path, monkeypatch, stray, pauses):
    # the server says something while the earlier transaction's results
    # are being written and the next transaction's MAIL waits: no command
    # is outstanding, on a transport that cannot pause its reading (iosim's,
    # as TLS over a wrapped endpoint, a port-465 smarthost) as on one that
    # can (a TCP socket).  Read after that MAIL went, it passed for its
    # reply: a "550" bounced u2, whose RCPT never went.  A reply out of
    # order ends the session as a protocol error, a 421 as the server
    # closing (RFC 5321 3.8); the MAIL never goes, u0 and u1 stay
    # delivered (once), and u2, whose "too many" stands, goes on a new
    # connection
    if pauses:
        monkeypatch.setattr(iosim, "makeFakeClient", _PausingClient)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        _, net, rcpts, waits, d, server = _first_transaction_results_waiting(tmp_path)
        server.transport.write(stray)
        net.run()
        waits[0].callback(None)
        by = {r.address: r for r in run(net, d)}
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert {r: by[r].kind for r in rcpts} == dict.fromkeys(rcpts, "delivered")
    assert [by[r].reply.text() for r in rcpts] == ["250 2.0.0 queued"] * 3
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1
    assert [[len(m[1]) for m in p.messages] for p in net.server_protocols] == [[2], [1]]
    logged = [formatEvent(e) for e in events if "protocol error" in e.get("log_format", "")]
    if stray.startswith(b"421"):
        assert logged == []
        return
    assert logged == [
        "ABCDEF0123456789: session with mx1.remote.test[2001:db8::1] ended in a protocol "
        "error: 421 4.5.0 reply from the server before the hub's command (MAIL) was sent: "
        + stray.decode().strip() + " (the connection was dropped; the results before it "
        "stand)"]


@pytest.mark.parametrize("answer_at, over_at", [(None, 300), (200, 500)])
def test_the_next_transactions_replies_are_timed_once_its_commands_went(
        tmp_path, answer_at, over_at):
    # no reply timer runs while the next transaction's MAIL waits; once it
    # went, the reply timers run as in any transaction: a server silent
    # after it is given MAIL's 300 s, one that answers it after 200 s is
    # given RCPT's 300 s from then (the session ends there; u2 goes on a
    # new connection)
    _, net, rcpts, waits, d, server = _first_transaction_results_waiting(tmp_path)
    server.dataReceived = lambda data: server.commands.append(data)  # silent
    waits[0].callback(None)
    net.run()
    assert server.commands[-1].startswith(b"MAIL")
    over: list = []
    d.addBoth(over.append)
    for now in range(10, 1000, 10):
        net.clock.advance(10)
        if now == answer_at:
            server.transport.write(b"250 2.1.0 ok\r\n")
        net.run()
        if over:
            break
    assert over and now == over_at
    assert {r.address: r.kind for r in over[0]} == dict.fromkeys(rcpts, "delivered")


def _round_handed_over_while_stopped(tmp_path):
    """Three recipients of remote.test: a first round (canned) delivered
    u0 and was told "too many" for the others, whose new connection waits
    for u0's write (held); the real agent makes the rounds after it, to
    mx1's scripted server.  The hub's stop gives the attempt up while the
    write is under way.  The agent, the network, the recipients, the
    write's Deferred and the delivery's."""
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = ScriptedSMTPServer
    rcpts, rounds = three_rounds_of_one()
    real = a._deliver
    calls: list[list[Address]] = []

    def first_canned(entry_, destination, recipients, *rest):
        calls.append(list(recipients))
        if len(calls) == 1:
            return defer.succeed(rounds[0])
        return real(entry_, destination, recipients, *rest)

    a._deliver = first_canned
    waits: list[defer.Deferred] = []
    d = a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts,
                  lambda results: waits.append(defer.Deferred()) or waits[-1])
    assert len(waits) == 1 and not d.called  # u0's write, under way
    a.abort_all()
    return a, net, rcpts, waits[0], d


def test_a_round_given_up_by_the_stop_while_handed_over_marks_no_host_failed(tmp_path):
    # the stop comes while u0's write is under way, between two rounds (no
    # session to cut).  The next round is given up as the stop's, not run
    # as one that found no host to answer: mx1 and mx2 were marked failed
    # (tried last for ten minutes) and the others' reason said so
    a, net, rcpts, wait, d = _round_handed_over_while_stopped(tmp_path)
    wait.callback(None)
    by = {r.address: r for r in run(net, d)}
    assert by[rcpts[0]].kind == "delivered"
    assert {by[r].reply.text() for r in rcpts[1:]} == {STOP_CUT.text()}
    assert not a.mx.health.is_failed("mx1.remote.test")
    assert not a.mx.health.is_failed("mx2.remote.test")
    assert not net.pumps


def test_a_round_given_up_by_the_stop_connects_nowhere_after_a_start(tmp_path):
    # as a DNS answer that comes after a stop and a start: the old run's
    # next round, which waited for its write through both, makes no
    # connection (its results are thrown away, and the new run sends the
    # message to those recipients too)
    a, net, rcpts, wait, d = _round_handed_over_while_stopped(tmp_path)
    a.resume()  # the hub starts again
    wait.callback(None)
    by = {r.address: r for r in run(net, d)}
    assert by[rcpts[0]].kind == "delivered"
    assert [by[r].kind for r in rcpts[1:]] == ["transient", "transient"]
    assert not net.pumps  # no connection made


def test_a_next_transaction_whose_commands_never_went_is_not_counted(tmp_path, log_events):
    # the server closes the connection while the first transaction's
    # results are being written: the second transaction's MAIL, held until
    # then, never went, and the log does not say the session had two
    _, net, rcpts, waits, d, server = _first_transaction_results_waiting(tmp_path)
    server.transport.loseConnection()
    net.run()
    waits[0].callback(None)
    by = {r.address: r for r in run(net, d)}
    assert sum(c.startswith(b"MAIL") for c in server.commands) == 1
    assert {r: by[r].kind for r in rcpts} == dict.fromkeys(rcpts, "delivered")
    said = [formatEvent(e) for e in log_events]
    assert not any("transactions in one session" in line for line in said), said


class GreylistsCarolTakesOnePerMessage(ScriptedSMTPServer):
    """mx1: one recipient per message, "too many" to the others -- counting
    carol, whom it greylists when asked again, among them -- so the
    session's second transaction takes nobody (carol greylisted, u2 "too
    many" again) and its third takes u2."""

    def __init__(self):
        super().__init__(extensions=("SIZE 1000000",))
        self.asked: dict[str, int] = {}

    def _command(self, line):
        if line[:4].upper() == b"RCPT":
            addr = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
            self.asked[addr] = self.asked.get(addr, 0) + 1
            if addr.startswith("carol@") and self.asked[addr] > 1:
                self.transport.write(b"451 4.7.1 greylisted\r\n")
                return
            if self.rcpts or (addr.startswith("u2@") and self.asked[addr] < 3):
                self.transport.write(b"452 4.5.3 too many recipients\r\n")
                return
        super()._command(line)


def test_the_next_mx_host_waits_for_the_hand_over_of_what_the_session_delivered(tmp_path):
    # mx1 delivers bob in the session's first transaction, refuses carol
    # for now in a second that carries no message, and delivers u2 in its
    # third, the last: carol goes on to mx2 at once.  u2's delivery is
    # handed over (written to the record) before that connection, as a
    # next transaction's is: otherwise a crash during the session with mx2
    # left u2 pending, and the next start sent u2 a second copy
    a, net, _ = agent(tmp_path)
    net.servers[("2001:db8::1", 25)] = GreylistsCarolTakesOnePerMessage
    net.servers[("192.0.2.2", 25)] = ScriptedSMTPServer
    u2 = Address("u2", "remote.test")
    rcpts = [BOB, CAROL, u2]
    handed: list[list[Address]] = []
    waits: list[defer.Deferred] = []

    def settled(results):
        handed.append([r.address for r in results if r.kind == "delivered"])
        waits.append(defer.Deferred())
        return waits[-1]

    d = a.deliver(entry(tmp_path, *rcpts), "remote.test", rcpts, settled)
    net.run()
    assert handed == [[BOB]]
    waits[0].callback(None)
    net.run()
    assert net.connections == [("2001:db8::1", 25)]  # mx2's waits for u2's write
    [mx1] = net.server_protocols
    assert [m[1] for m in mx1.messages] == [[b"bob@remote.test"], [b"u2@remote.test"]]
    assert handed == [[BOB], [u2]]
    waits[1].callback(None)
    by = {r.address: r for r in run(net, d)}
    assert net.connections == [("2001:db8::1", 25), ("192.0.2.2", 25)]
    assert {r: by[r].kind for r in rcpts} == dict.fromkeys(rcpts, "delivered")
    assert by[CAROL].remote_mta == "mx2.remote.test"


@pytest.mark.parametrize("end", ["timeout", "closed"])
def test_a_session_that_ends_after_its_handshake_is_no_tls_failure(tmp_path, end):
    # the handshake after STARTTLS was done; then the server says nothing
    # to the EHLO, or closes the connection.  That is the EHLO's failure,
    # not the handshake's: taken for a TLS failure, the hub tried the host
    # again in clear (opportunistic TLS), the message sent unencrypted
    # because the server, or whoever sits between, went quiet after TLS
    clock, proto = _starttls_on_a_clock(tmp_path)
    proto.handshakeCompleted()
    if end == "timeout":
        _out_of_time(clock, 300)
        assert proto.transport.disconnecting
    proto.connectionLost(None)
    outcome = proto.done.result
    assert outcome.phase == "EHLO"
    assert "TLS" not in outcome.session_error.text()


@pytest.mark.parametrize("kind", ["verify", "name"])
def test_a_tls_failure_said_after_the_handshake_is_still_one(tmp_path, kind):
    # Twisted's name check (service_identity) runs as OpenSSL ends the
    # handshake, and the TLS layer still says it is done before the
    # connection it aborted is lost: a TLS failure all the same
    _, proto = _starttls_on_a_clock(tmp_path)
    proto.handshakeCompleted()
    proto.connectionLost(_failure(kind))
    outcome = proto.done.result
    assert outcome.phase == "TLS handshake"
    assert outcome.session_error.text().startswith("421 4.4.2 TLS negotiation failed (")


def test_a_smarthost_session_hands_over_only_what_a_next_transaction_waits_for(tmp_path):
    # the same session with a smarthost: carol has no next host to go on
    # to, so the delivery ends with the session, and u2's result is the
    # delivery's (written once, as it ends), not a write of its own
    a, net, _ = agent(tmp_path, 'smarthost = "smart.example.net:587"\nsmarthost_tls = "none"')
    net.servers[("smart.example.net", 587)] = GreylistsCarolTakesOnePerMessage
    u2 = Address("u2", "remote.test")
    rcpts = [BOB, CAROL, u2]
    handed: list[list[Address]] = []
    d = a.deliver(entry(tmp_path, *rcpts), SMARTHOST, rcpts,
                  lambda results: handed.append([r.address for r in results]))
    by = {r.address: r for r in run(net, d)}
    assert [by[r].kind for r in rcpts] == ["delivered", "transient", "delivered"]
    assert handed == [[BOB]]  # the first transaction's, before the second
