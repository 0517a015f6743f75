"""Never an open relay: the classic relay tricks against a real hub.

The client (127.0.0.1) is neither authenticated nor in relay_networks;
every remote recipient must be refused, and nothing may reach the remote
server or the queue."""

from __future__ import annotations

import smtplib
import time

import pytest
from relayutil import CaptureSMTP, DNSServer

REMOTE_FORMS = [
    "bob@remote.test",
    "bob@remote.test.",
    "Bob@REMOTE.TEST",
    "@example.org:bob@remote.test",  # source route: ignored, so it is remote
    "@example.org,@example.net:bob@remote.test",
    "bob@[127.0.0.1]",  # address literal
    "bob@[IPv6:::1]",
    "bob@example.org.remote.test",
]
LOCAL_DOMAIN_TRICKS = [
    "bob%remote.test@example.org",
    '"bob@remote.test"@example.org',
    "bob@remote.test@example.org",
    "remote.test!bob@example.org",
    "bob%remote.test@EXAMPLE.ORG.",
]


@pytest.fixture
def closed_hub(make_hub):
    remote = CaptureSMTP()
    dns = DNSServer({"remote.test": {"A": ["127.0.0.1"]},
                     "example.org.remote.test": {"A": ["127.0.0.1"]}})
    hub = make_hub(sections={
        "smtp": {"relay_networks": []},
        "relay": {"nameservers": [f"127.0.0.1:{dns.port}"], "port": remote.port},
    })
    yield hub, remote
    dns.stop()
    remote.stop()


def rcpt(hub, address):
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL", "FROM:<someone@elsewhere.test>")[0] == 250
        code, text = s.docmd("RCPT", f"TO:<{address}>")
        if code < 300:
            s.data(b"Subject: relay attempt\r\n\r\nshould not pass\r\n")
        return code, text.decode()


def test_relay_tricks_refused(closed_hub):
    hub, remote = closed_hub
    for address in REMOTE_FORMS:
        code, text = rcpt(hub, address)
        assert code == 550 and text.startswith("5.7.1"), (address, code, text)
    for address in LOCAL_DOMAIN_TRICKS:
        code, text = rcpt(hub, address)
        assert code in (550, 501, 553), (address, code, text)
    time.sleep(1)
    assert remote.sessions == 0
    proc = hub.mailhub("queue", "list")
    assert proc.returncode == 0 and proc.stdout == ""


def test_local_mail_still_accepted(closed_hub):
    hub, _ = closed_hub
    assert rcpt(hub, "alice@EXAMPLE.org.")[0] == 250
