"""The relay alone over real sockets: RelayService in a subprocess with the
real reactor, twisted.names talking to a DNS server on 127.0.0.1, TCP and
TLS to a capturing SMTP server.  (The full-hub tests are in
test_relay_delivery.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import make_certificate
from relayutil import CaptureSMTP, DNSServer

PROBE = textwrap.dedent('''
    import json, sys
    from twisted.internet import reactor, task, ssl
    from txmailhub.address import Address
    from txmailhub.components import Components
    from txmailhub.config import load
    from txmailhub.envelope import Envelope, SpooledMessage
    from txmailhub.relay.service import RelayService
    from txmailhub.testing import MemoryMailboxStore, MemorySpooler, StaticRouter

    config, rcpt, ca, smtps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    if smtps:  # the test's implicit-TLS server cannot bind 465: say which port is "465"
        import txmailhub.relay.attempt
        txmailhub.relay.attempt.SMTPS_PORT = int(smtps)
    settings = load(config)
    spooler = MemorySpooler()
    store = MemoryMailboxStore(spooler=spooler)
    c = Components(settings=settings, reactor=reactor, router=StaticRouter({"alice": None}),
                   store=store, spooler=spooler, portal=None)
    trust = ssl.Certificate.loadPEM(open(ca, "rb").read()) if ca else None
    svc = RelayService(c, trust_root=trust)
    c.queue = svc.queue
    svc.startService()
    path = settings.hub.state_dir + "/in.msg"
    with open(path, "wb") as f:
        f.write(b"Subject: probe\\n\\nprobe body\\n")
    local, domain = rcpt.split("@")
    enqueued = []  # the entry's id, once stored: an empty queue before says nothing
    svc.queue.enqueue(Envelope(sender=Address("alice", "example.org"),
                               recipients=(Address(local, domain),)),
                      SpooledMessage(path, 27, 30)).addCallback(enqueued.append)
    ticks = [0]

    def check():
        ticks[0] += 1
        entries = [svc.queue.read(i) for i in svc.queue.ids()] if enqueued else [None]
        # the queue's last word on the first attempt (relayutil's
        # attempt_recorded): a record says "failed" before its notice is
        # made and it says "bounced", and "delivered" before the entry goes
        if not all(e is not None and e.attempts and not e.failed and not e.finished
                   and not any(r.notice for r in e.recipients) for e in entries):
            if ticks[0] < 600:  # a minute: a bound for a relay that hangs
                return
            print("the first attempt never settled", file=sys.stderr)
            reactor.stop()
            return
        try:
            out = {"queued": [svc.queue.read(i).last_reply.text() if svc.queue.read(i)
                              and svc.queue.read(i).last_reply else "-"
                              for i in svc.queue.ids()],
                   "dsn": [m.decode("utf-8", "replace")
                           for m in store.messages("alice@example.org")]}
            print(json.dumps(out))
        finally:
            d = svc.stopService()
            d.addBoth(lambda _: reactor.stop())

    task.LoopingCall(check).start(0.1, now=False)
    reactor.run()
''')


def probe(tmp_path, relay: str, rcpt: str, ca: str = "", smtps: int = 0) -> dict:
    state = tmp_path / "var"
    state.mkdir(exist_ok=True)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'[hub]\nhostname = "mail.example.org"\nstate_dir = "{state}"\n'
                   f'domains = ["example.org"]\n[relay]\n{relay}\n')
    proc = subprocess.run([sys.executable, "-c", PROBE, str(cfg), rcpt, ca, str(smtps or "")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def dns_server():
    server = DNSServer({
        "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
        "mx1.remote.test": {"AAAA": ["::1"]},  # nothing listens there
        "mx2.remote.test": {"A": ["127.0.0.1"]},
        "broken.test": "SERVFAIL",
    })
    yield server
    server.stop()


def test_mx_over_real_dns_and_tcp(tmp_path, dns_server):
    remote = CaptureSMTP()
    try:
        result = probe(tmp_path, f'nameservers = ["127.0.0.1:{dns_server.port}"]\n'
                                 f"port = {remote.port}", "bob@remote.test")
        assert result == {"queued": [], "dsn": []}
        [(sender, rcpts, data)] = remote.messages
        assert (sender, rcpts) == ("alice@example.org", ["bob@remote.test"])
        assert data == b"Subject: probe\r\n\r\nprobe body\r\n"
        assert ("remote.test", 15) in dns_server.queries
    finally:
        remote.stop()


def test_servfail_stays_queued(tmp_path, dns_server):
    result = probe(tmp_path, f'nameservers = ["127.0.0.1:{dns_server.port}"]',
                   "bob@broken.test")
    [reply] = result["queued"]
    assert reply.startswith("451 4.4.3") and "SERVFAIL" in reply


def test_nxdomain_bounces(tmp_path, dns_server):
    result = probe(tmp_path, f'nameservers = ["127.0.0.1:{dns_server.port}"]',
                   "bob@nowhere.test")
    assert result["queued"] == []
    [dsn] = result["dsn"]
    assert "Status: 5.1.2" in dsn and "NXDOMAIN" in dsn


def _probe_smarthost_with_login(tmp_path, remote: CaptureSMTP, cert) -> dict:
    """One message to bob@anywhere.test through ``remote`` as a verified
    smarthost, logging in as relayuser (the CA is ``cert``)."""
    auth = tmp_path / "auth"
    auth.write_text("relayuser:s3cret\n")
    return probe(tmp_path, f'smarthost = "localhost:{remote.port}"\n'
                           f'smarthost_auth_file = "{auth}"', "bob@anywhere.test",
                 ca=str(cert))


def test_smarthost_verified_starttls_and_auth(tmp_path):
    cert, key = make_certificate(tmp_path / "tls", "localhost")
    remote = CaptureSMTP(tls=(str(cert), str(key)), auth=("relayuser", "s3cret"))
    try:
        result = _probe_smarthost_with_login(tmp_path, remote, cert)
        assert result == {"queued": [], "dsn": []}
        assert remote.tls_sessions == 1
        assert remote.auth_seen == ["relayuser"]
        assert len(remote.messages) == 1
    finally:
        remote.stop()


def test_smarthost_offering_no_mechanism_the_hub_has_gets_no_credentials(tmp_path):
    # AUTH PLAIN went to a smarthost offering CRAM-MD5 only; now nothing of
    # the login goes, and the queue keeps the hub's account of why
    cert, key = make_certificate(tmp_path / "tls", "localhost")
    remote = CaptureSMTP(tls=(str(cert), str(key)), auth=("relayuser", "s3cret"),
                         auth_offer="CRAM-MD5")
    try:
        result = _probe_smarthost_with_login(tmp_path, remote, cert)
        assert result == {"queued": [
            "454 4.7.0 the smarthost offers AUTH CRAM-MD5 only; txmailhub can use PLAIN or "
            "LOGIN ([relay] smarthost_auth_file is set)"], "dsn": []}
        assert remote.tls_sessions == 1
        assert remote.auth_commands == 0 and not remote.messages
    finally:
        remote.stop()


def test_smarthost_implicit_tls_on_the_submissions_port(tmp_path):
    """RFC 8314: a smarthost on the submissions port gets TLS at once, its
    certificate verified, no STARTTLS, and the password inside TLS."""
    cert, key = make_certificate(tmp_path / "tls", "localhost")
    remote = CaptureSMTP(tls=(str(cert), str(key)), auth=("relayuser", "s3cret"),
                         implicit_tls=True)
    auth = tmp_path / "auth"
    auth.write_text("relayuser:s3cret\n")
    try:
        result = probe(tmp_path, f'smarthost = "localhost:{remote.port}"\n'
                                 f'smarthost_auth_file = "{auth}"', "bob@anywhere.test",
                       ca=str(cert), smtps=remote.port)
        assert result == {"queued": [], "dsn": []}
        assert remote.tls_sessions == 1 and remote.auth_seen == ["relayuser"]
        [(sender, rcpts, data)] = remote.messages
        assert (sender, rcpts) == ("alice@example.org", ["bob@anywhere.test"])
        assert data == b"Subject: probe\r\n\r\nprobe body\r\n"
    finally:
        remote.stop()


def test_smarthost_implicit_tls_verifies_the_certificate(tmp_path):
    cert, key = make_certificate(tmp_path / "tls", "localhost")
    other, _ = make_certificate(tmp_path / "other", "localhost")
    remote = CaptureSMTP(tls=(str(cert), str(key)), implicit_tls=True)
    try:
        result = probe(tmp_path, f'smarthost = "localhost:{remote.port}"',
                       "bob@anywhere.test", ca=str(other), smtps=remote.port)
        [reply] = result["queued"]  # refused by our side, in the TLS handshake
        assert reply.startswith("421 4.4.2") and "certificate verify failed" in reply
        assert remote.messages == []
    finally:
        remote.stop()


def test_smarthost_verify_rejects_untrusted_certificate(tmp_path):
    cert, key = make_certificate(tmp_path / "tls", "localhost")
    other, _ = make_certificate(tmp_path / "other", "localhost")
    remote = CaptureSMTP(tls=(str(cert), str(key)))
    try:
        result = probe(tmp_path, f'smarthost = "localhost:{remote.port}"',
                       "bob@anywhere.test", ca=str(other))
        assert len(result["queued"]) == 1
        assert remote.messages == []
    finally:
        remote.stop()


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_smarthost_verify_refuses_a_certificate_that_names_no_host(tmp_path, implicit):
    # A certificate from a trusted CA with no subjectAltName: service_identity
    # raises CertificateError, which Twisted's own name check only logs
    # ("while verifying certificate") before letting the handshake go on:
    # the message went to a smarthost whose name nothing had checked
    cert, key = make_certificate(tmp_path / "tls", "localhost", names=False)
    remote = CaptureSMTP(tls=(str(cert), str(key)), implicit_tls=implicit)
    try:
        result = probe(tmp_path, f'smarthost = "localhost:{remote.port}"',
                       "bob@anywhere.test", ca=str(cert), smtps=remote.port if implicit else 0)
        assert remote.messages == []
        [reply] = result["queued"]
        phase = "greeting" if implicit else "TLS handshake"
        assert reply == ("421 4.4.2 TLS negotiation failed (unusable certificate: Certificate "
                         f"does not contain any `subjectAltName`s.) during {phase}")
    finally:
        remote.stop()


def test_smarthost_verify_names_the_name_a_certificate_lacks(tmp_path):
    # a trusted certificate for another host: refused, in 900f245's words
    cert, key = make_certificate(tmp_path / "tls", "other.example")
    remote = CaptureSMTP(tls=(str(cert), str(key)))
    try:
        result = probe(tmp_path, f'smarthost = "localhost:{remote.port}"',
                       "bob@anywhere.test", ca=str(cert))
        assert remote.messages == []
        assert result["queued"] == ["421 4.4.2 TLS negotiation failed (the certificate is not "
                                    "valid for localhost) during TLS handshake"]
    finally:
        remote.stop()


NO_SOCKETS = textwrap.dedent('''
    import dataclasses, json, os, resource, sys
    from twisted.internet import reactor
    from txmailhub.address import Address
    from txmailhub.config import load
    from txmailhub.envelope import Envelope
    from txmailhub.relay.attempt import DeliveryAgent
    from txmailhub.relay.mx import MXResolver
    from txmailhub.relay.record import QueueEntry

    settings = load(sys.argv[1])
    path = settings.hub.state_dir + "/q.msg"
    with open(path, "wb") as f:
        f.write(b"Subject: probe\\n\\nprobe body\\n")
    entry = QueueEntry.new("ABCDEF0123456789", Envelope(
        sender=Address("alice", "example.org"), recipients=(Address("bob", "anywhere.test"),)),
        0.0)
    entry = dataclasses.replace(entry, message_path=path, size=27, crlf_size=30)
    agent = DeliveryAgent(settings, MXResolver(None, reactor, "mail.example.org"), reactor)
    out = {}

    def exhausted():
        # the open-files limit lowered to what is open now, and the room
        # left filled: the next socket() fails with EMFILE, as at the limit
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        d = agent.attempt(entry)

        def first(results):
            for fd in held:
                os.close(fd)
            out["short"] = [(r.kind, r.reply.text(), r.unreachable) for r in results]
            out["remembered"] = sorted(agent._unreachable)
            return agent.attempt(entry)

        def second(results):
            out["after"] = [(r.kind, r.reply.text()) for r in results]

        d.addCallback(first).addCallback(second)
        d.addErrback(lambda f: out.setdefault("error", f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(exhausted)
    reactor.callLater(60, reactor.stop)  # a bound for an attempt that hangs
    reactor.run()
    print(json.dumps(out))
''')


def test_no_socket_at_the_open_files_limit_is_the_hubs_own_failure(tmp_path):
    # at its open-files limit the hub cannot make a socket: Twisted's TCP
    # client fails the connect at once (ConnectBindError with EMFILE),
    # which the agent must tell from the next hop's failure -- a 451 4.3.0
    # of its own, nothing remembered of the destination -- and the next
    # attempt, descriptors back, delivers
    remote = CaptureSMTP()
    try:
        state = tmp_path / "var"
        state.mkdir()
        cfg = tmp_path / "hub.toml"
        cfg.write_text(f'[hub]\nhostname = "mail.example.org"\nstate_dir = "{state}"\n'
                       f'domains = ["example.org"]\n[relay]\n'
                       f'smarthost = "127.0.0.1:{remote.port}"\nsmarthost_tls = "none"\n')
        proc = subprocess.run([sys.executable, "-c", NO_SOCKETS, str(cfg)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "error" not in out, out["error"]
        [(kind, reply, unreachable)] = out["short"]
        assert (kind, unreachable) == ("transient", None)
        assert reply == ("451 4.3.0 local error: no connection could be made "
                         "(Too many open files), will retry")
        assert out["remembered"] == []
        assert [kind for kind, _ in out["after"]] == ["delivered"]
        [(sender, rcpts, _)] = remote.messages
        assert (sender, rcpts) == ("alice@example.org", ["bob@anywhere.test"])
    finally:
        remote.stop()
