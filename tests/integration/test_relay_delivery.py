"""The outbound relay end to end: a real hub (twistd), a DNS server and a
remote SMTP server on loopback, smtplib as the submitting client."""

from __future__ import annotations

import re
import smtplib
from email import message_from_bytes, policy

import pytest
from conftest import DEFAULT_USERS
from relayutil import CaptureSMTP, DNSServer, wait_for

ALICE = "alice@example.org"
MESSAGE = (b"From: alice@example.org\r\nTo: bob@remote.test\r\nSubject: relay test\r\n"
           b"\r\nHello from the hub.\r\n.leading dot\r\n")


@pytest.fixture
def remote():
    server = CaptureSMTP()
    yield server
    server.stop()


@pytest.fixture
def dns_server(hub_hostname="mail.example.org"):
    server = DNSServer({
        "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
        # the preferred MX has only an IPv6 address where nothing listens
        "mx1.remote.test": {"AAAA": ["::1"]},
        "mx2.remote.test": {"A": ["127.0.0.1"]},
        "simple.test": {"A": ["127.0.0.1"]},  # no MX: the implicit MX
        "null.test": {"MX": [(0, "")]},
        "loop.test": {"MX": [(10, hub_hostname)]},
        hub_hostname: {"A": ["127.0.0.1"]},
    })
    yield server
    server.stop()


@pytest.fixture
def relay_hub(make_hub, remote, dns_server):
    def factory(**relay):
        table = {"nameservers": [f"127.0.0.1:{dns_server.port}"], "port": remote.port}
        table.update(relay)
        return make_hub(sections={"relay": table})
    return factory


def send(hub, rcpts, data=MESSAGE, sender=ALICE):
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
        refused = s.sendmail(sender, rcpts, data)
    assert refused == {}


def queue_lines(hub):
    proc = hub.mailhub("queue", "list")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def dsn_of(hub):
    msgs = wait_for(lambda: hub.messages(ALICE), what="a DSN in alice's Maildir")
    msg = message_from_bytes(msgs[-1], policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    return msg, list(msg.iter_parts())[1].get_payload()


def test_delivered_through_the_next_mx(relay_hub, remote):
    hub = relay_hub()
    send(hub, ["bob@remote.test", "carol@remote.test"])
    [(sender, rcpts, data)] = remote.wait()
    assert sender == ALICE
    assert rcpts == ["bob@remote.test", "carol@remote.test"]  # one transaction
    assert b"Subject: relay test\r\n" in data
    assert data.endswith(b"Hello from the hub.\r\n.leading dot\r\n")
    assert b"Received:" in data
    wait_for(lambda: queue_lines(hub) == [], what="an empty queue")
    # the MX, AAAA and A lookups did not log their UDP ports (twisted.names
    # alone logs four lines per query), nor the SMTP session its factory
    log = hub.log_text()
    assert "UDP Port" not in log and "DNSDatagramProtocol" not in log
    assert "Starting factory" not in log and "Stopping factory" not in log


def test_implicit_mx(relay_hub, remote):
    hub = relay_hub()
    send(hub, ["dave@simple.test"])
    [(_, rcpts, _)] = remote.wait()
    assert rcpts == ["dave@simple.test"]


def test_4xx_then_success_after_flush(relay_hub, remote):
    remote.rcpt_reply = lambda addr: b"451 4.7.1 Greylisted, please try again\r\n"
    # the retry an hour away: only the flush sends the message meanwhile
    # (how soon the runner sees a flush: test_relay_runner.py, on a clock)
    hub = relay_hub(retry_schedule=["1h"])
    send(hub, ["bob@remote.test"])
    lines = wait_for(lambda: [x for x in queue_lines(hub) if "451" in x],
                     what="the 451 in queue list")
    [line] = lines
    qid = line.split()[0]
    assert "bob@remote.test" in line.split()
    assert line.endswith("451 4.7.1 Greylisted, please try again")
    show = hub.mailhub("queue", "show", qid)
    assert "451 4.7.1 Greylisted, please try again" in show.stdout
    assert remote.messages == []
    remote.rcpt_reply = lambda addr: b"250 2.1.5 ok\r\n"
    assert hub.mailhub("queue", "flush").returncode == 0
    [(_, rcpts, _)] = remote.wait()
    assert rcpts == ["bob@remote.test"]
    wait_for(lambda: queue_lines(hub) == [], what="an empty queue")


def test_5xx_produces_a_dsn(relay_hub, remote):
    remote.rcpt_reply = lambda addr: (b"550 5.1.1 <bob@remote.test>: Recipient address rejected"
                                      b"\r\n")
    hub = relay_hub()
    send(hub, ["bob@remote.test"])
    msg, blocks = dsn_of(hub)
    assert "MAILER-DAEMON@example.org" in msg["From"]
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; bob@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx2.remote.test"
    assert rcpt["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected")
    returned = list(msg.iter_parts())[2]
    assert "Subject: relay test" in str(returned)
    wait_for(lambda: queue_lines(hub) == [], what="an empty queue")


def test_null_mx_and_loop_bounce(relay_hub, remote):
    hub = relay_hub()
    send(hub, ["x@null.test"])
    _, blocks = dsn_of(hub)
    assert blocks[1]["Status"] == "5.1.10"
    send(hub, ["y@loop.test"])
    msgs = wait_for(lambda: len(hub.messages(ALICE)) >= 2 and hub.messages(ALICE),
                    what="the second DSN")
    assert any(b"loops back to me" in m for m in msgs)
    assert remote.sessions == 0


def test_the_relay_names_the_submitter_to_a_server_offering_auth(make_hub, dns_server):
    """RFC 4954 5 end to end: what the hub's SMTP server learnt about who
    submitted a message survives the queue and goes on as AUTH= to a
    next hop that offers AUTH -- the login of an authenticated user,
    ``<>`` for what that user marked of unknown origin, for mail relayed
    for a relay_networks client and for the hub's own bounces."""
    remote = CaptureSMTP(extensions=("PIPELINING", "8BITMIME", "SIZE 10000000",
                                     "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN"))
    try:
        hub = make_hub(sections={"relay": {"nameservers": [f"127.0.0.1:{dns_server.port}"],
                                           "port": remote.port}})
        with smtplib.SMTP("127.0.0.1", hub.submission_port, timeout=30) as s:
            s.login(ALICE, DEFAULT_USERS[ALICE])
            assert s.sendmail(ALICE, ["bob@remote.test"], MESSAGE) == {}
            assert s.sendmail(ALICE, ["carol@remote.test"], MESSAGE,
                              mail_options=["AUTH=<>"]) == {}
        send(hub, ["dave@remote.test"])  # the MX port, from a relay network
        send(hub, ["x@null.test"], sender="zed@remote.test")  # its bounce goes to zed
        remote.wait(4)
        mail = {rcpts[0]: line for (_, rcpts, _), line in zip(remote.messages,
                                                             remote.mail_lines)}
        assert sorted(mail) == ["bob@remote.test", "carol@remote.test", "dave@remote.test",
                                "zed@remote.test"]
        assert mail["bob@remote.test"].endswith(" AUTH=alice@example.org")
        assert mail["carol@remote.test"].endswith(" AUTH=<>")
        assert mail["dave@remote.test"].endswith(" AUTH=<>")
        assert mail["zed@remote.test"].startswith("MAIL FROM:<> ")
        assert mail["zed@remote.test"].endswith(" AUTH=<>")
        wait_for(lambda: queue_lines(hub) == [], what="an empty queue")
    finally:
        remote.stop()


def test_restart_with_mail_in_the_queue(relay_hub, remote):
    remote.rcpt_reply = lambda addr: b"421 4.3.2 Service shutting down\r\n"
    hub = relay_hub(retry_schedule=["2s"])
    send(hub, ["bob@remote.test"])
    # the server's 421 in the entry's line, not the digits of a queue id
    wait_for(lambda: [x for x in queue_lines(hub) if re.search(r"(?<![\w.])421 4\.3\.2", x)],
             what="a queued 421")
    hub.kill()  # a crash, not a clean stop
    remote.rcpt_reply = lambda addr: b"250 2.1.5 ok\r\n"
    assert queue_lines(hub)  # still on disk
    hub.start()
    [(_, rcpts, _)] = remote.wait()
    assert rcpts == ["bob@remote.test"]
    wait_for(lambda: queue_lines(hub) == [], what="an empty queue")


def test_a_server_that_closes_in_the_middle_of_the_data_gets_a_retry(make_hub, dns_server):
    # An everyday fault, not a bug: the log says so in one line (it was a
    # CRITICAL with a traceback), and the message stays queued for a retry.
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 mx ESMTP\r\n")
        for line in iter(f.readline, b""):
            word = line[:4].upper()
            if word == b"EHLO":
                conn.sendall(b"250-mx\r\n250 PIPELINING\r\n")
            elif word == b"DATA":
                conn.sendall(b"354 go\r\n")
                f.read(65536)  # some of it, then hang up
                break
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    hub = make_hub(sections={"relay": {"nameservers": [f"127.0.0.1:{dns_server.port}"],
                                       "port": listener.getsockname()[1]}})
    big = MESSAGE + (b"x" * 76 + b"\r\n") * 40000  # about 3 MiB: still streaming at the close
    send(hub, ["bob@simple.test"], data=big)
    thread.join(20)
    # the hub's own account of the attempt (the server said nothing), and the retry
    wait_for(lambda: "to bob@simple.test: hub: 4" in hub.log_text(), what="the failed attempt")
    assert "; next attempt 20" in hub.log_text()
    log = hub.log_text()
    assert "Traceback" not in log and "critical" not in log
    (line,) = queue_lines(hub)
    assert "bob@simple.test" in line  # queued for the retry


def _tls_1_0_only(remote: CaptureSMTP) -> None:
    """Make ``remote``'s STARTTLS speak TLS 1.0 and nothing newer (at
    OpenSSL's lowest security level, which TLS 1.0 needs in OpenSSL 3)."""
    import ssl
    import warnings

    remote.tls_context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 is, that is the point
        remote.tls_context.minimum_version = ssl.TLSVersion.TLSv1
        remote.tls_context.maximum_version = ssl.TLSVersion.TLSv1


def test_an_mx_that_speaks_only_tls_1_0_gets_the_mail_in_clear(make_hub, dns_server, tmp_path):
    # RFC 8996: no TLS 1.0.  Opportunistic TLS to an MX host whose STARTTLS
    # speaks nothing newer fails the handshake, and the host is tried again
    # at once without TLS, with the warning (docs/relay.rst, "TLS policy")
    from conftest import make_certificate

    remote = CaptureSMTP(tls=tuple(map(str, make_certificate(tmp_path / "mx-tls"))))
    try:
        _tls_1_0_only(remote)
        hub = make_hub(sections={"relay": {"nameservers": [f"127.0.0.1:{dns_server.port}"],
                                           "port": remote.port}})
        send(hub, ["bob@remote.test"])
        [(_, rcpts, _)] = remote.wait()
        assert rcpts == ["bob@remote.test"]
        assert remote.tls_sessions == 0 and remote.sessions == 2
        wait_for(lambda: queue_lines(hub) == [], what="an empty queue")
        assert ("TLS with mx2.remote.test[127.0.0.1] failed; trying again without TLS"
                in hub.log_text())
    finally:
        remote.stop()


def _reader(f):
    """``f.readline``, that reads a connection reset (the hub's abort) as its end."""
    def readline():
        try:
            return f.readline()
        except ConnectionError:
            return b""
    return readline


def test_a_250_to_starttls_ends_that_connection_and_the_host_gets_the_mail_in_clear(make_hub):
    # RFC 3207 4: only 220 starts TLS.  A host that answers STARTTLS with
    # "250" may wait for a handshake or for a command: opportunistic TLS
    # went on in clear on that connection (MAIL, RCPT, the message) as
    # after a 454.  Now that connection ends there, without QUIT, and the
    # host is tried again at once on a new one without TLS, as after a
    # failed handshake.  A smarthost: no DNS (the name servers are a
    # loopback port nothing answers on)
    import socket
    import threading

    unused = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unused.bind(("127.0.0.1", 0))
    dns_port = unused.getsockname()[1]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    listener.settimeout(30)
    sessions: list[list[bytes]] = []  # the lines each connection brought

    def serve():
        try:
            for _ in range(2):
                conn, _ = listener.accept()
                conn.settimeout(30)
                lines: list[bytes] = []
                sessions.append(lines)
                f = conn.makefile("rb")
                conn.sendall(b"220 mx ESMTP\r\n")
                for line in iter(_reader(f), b""):
                    lines.append(line.rstrip(b"\r\n"))
                    word = line.split(b" ")[0].strip().upper()
                    if word == b"EHLO":
                        conn.sendall(b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
                    elif word == b"STARTTLS":
                        conn.sendall(b"250 2.0.0 go ahead\r\n")
                    elif word == b"DATA":
                        conn.sendall(b"354 go\r\n")
                        for body in iter(f.readline, b""):
                            if body == b".\r\n":
                                break
                        conn.sendall(b"250 2.0.0 queued as X1\r\n")
                    elif word == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")
                conn.close()
        except OSError:
            pass  # a test that failed earlier: no second connection
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        hub = make_hub(sections={"relay": {
            "nameservers": [f"127.0.0.1:{dns_port}"],
            "smarthost": f"127.0.0.1:{listener.getsockname()[1]}",
            "smarthost_tls": "opportunistic"}})
        send(hub, ["bob@remote.test"])
        try:
            wait_for(lambda: queue_lines(hub) == [], what="an empty queue")
        except AssertionError:
            print(hub.log_text())
            raise
        thread.join(20)
    finally:
        unused.close()
    assert len(sessions) == 2, sessions  # the plain retry made a connection of its own
    first, second = sessions
    assert first[-1] == b"STARTTLS", first  # nothing more on that connection
    assert b"STARTTLS" not in second and b"DATA" in second, second
    log = hub.log_text()
    assert ("TLS with [127.0.0.1] failed; trying again without TLS (421 4.5.0 the server "
            "answered STARTTLS with 250 2.0.0 go ahead, not 220" in log), log
    assert "went on without TLS" not in log and "Traceback" not in log


def test_a_verified_smarthost_that_speaks_only_tls_1_0_keeps_the_mail_queued(make_hub,
                                                                             tmp_path):
    from conftest import make_certificate

    remote = CaptureSMTP(tls=tuple(map(str, make_certificate(tmp_path / "sh-tls"))))
    try:
        _tls_1_0_only(remote)
        hub = make_hub(sections={"relay": {"smarthost": f"127.0.0.1:{remote.port}",
                                           "smarthost_tls": "verify"}})
        send(hub, ["bob@remote.test"])
        [line] = wait_for(lambda: [x for x in queue_lines(hub) if " 421 " in x],
                          what="the 421 in queue list")
        assert " 421 4.4.2 TLS negotiation failed" in line, line
        assert remote.messages == [] and remote.tls_sessions == 0
        assert "trying again without TLS" not in hub.log_text()
    finally:
        remote.stop()


def test_queue_list_says_delivering_during_a_long_attempt(relay_hub, remote):
    # `mailhub queue list` and `queue show` in their own process, while the
    # hub waits on the next hop's reply to RCPT; and after a kill -9 of the
    # hub in the middle of it, the marker it left says nothing
    import signal
    import threading

    gate = threading.Event()

    def slow(addr):
        gate.wait(60)
        return b"250 2.1.5 ok\r\n"

    remote.rcpt_reply = slow
    hub = relay_hub()
    try:
        send(hub, ["bob@remote.test"])
        [line] = wait_for(lambda: [x for x in queue_lines(hub) if x.split()[4] == "delivering"],
                          what="delivering in queue list")
        qid = line.split()[0]
        show = hub.mailhub("queue", "show", qid).stdout
        assert "\nnext attempt: delivering\n" in show and "\ndelivering: since " in show
        assert hub.stop(signal.SIGKILL) is not None  # killed during the attempt
        assert [p for p in (hub.state_dir / "queue").iterdir() if p.name.endswith(".attempt")]
        [line] = queue_lines(hub)
        assert line.split()[4] != "delivering", line
        assert "\ndelivering: no\n" in hub.mailhub("queue", "show", qid).stdout
    finally:
        gate.set()
    hub.start()  # the next start removes the stale marker and delivers
    wait_for(lambda: queue_lines(hub) == [], what="an empty queue")
    assert not [p for p in (hub.state_dir / "queue").iterdir() if "attempt" in p.name]


class PartlySilentDNS(DNSServer):
    """The zone's answers, except for ``dead.test``'s names: those queries
    are read and never answered (a domain whose name servers are gone)."""

    def _answer(self, data: bytes) -> bytes:
        from twisted.names import dns

        query = dns.Message()
        query.fromStr(data)
        name = query.queries[0].name.name.decode().lower().rstrip(".")
        if name == "dead.test" or name.endswith(".dead.test"):
            self.queries.append((name, query.queries[0].type))
            raise LookupError("never answered")  # _serve sends nothing then
        return super()._answer(data)


def test_mail_for_a_domain_whose_dns_never_answers_does_not_hold_other_mail(make_hub, remote):
    # the dead domain's entries came first and filled the runner's room
    # (twice max_concurrent_deliveries) and its slots, all waiting for its
    # one lookup: the other domain's mail went when that lookup had timed
    # out, about a minute later, its entries having had their attempts
    server = PartlySilentDNS({"remote.test": {"MX": [(10, "mx2.remote.test")]},
                              "mx2.remote.test": {"A": ["127.0.0.1"]}})
    try:
        hub = make_hub(sections={"relay": {
            "nameservers": [f"127.0.0.1:{server.port}"], "port": remote.port,
            "max_concurrent_deliveries": 2, "max_per_destination": 2}})
        for i in range(6):
            send(hub, [f"u{i}@dead.test"])
        wait_for(lambda: any(name == "dead.test" for name, _ in server.queries),
                 what="the dead domain's lookup")
        send(hub, ["bob@remote.test"])
        wait_for(lambda: remote.messages, what="the other domain's mail")
        # meanwhile the dead domain's lookup has not ended: none of its
        # entries has had an attempt yet (the attempts field of queue list)
        dead = [line.split() for line in queue_lines(hub) if "@dead.test" in line]
        assert len(dead) == 6 and all(fields[3] == "0" for fields in dead), dead
    finally:
        server.stop()
