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
