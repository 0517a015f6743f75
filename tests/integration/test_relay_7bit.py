"""The relay to a remote server without 8BITMIME (a real hub under twistd:
the 7-bit copy is made in the reactor's thread pool), and the memory of
hosts that offered STARTTLS kept across a restart."""

from __future__ import annotations

import json
import smtplib
from email import policy
from email.parser import BytesParser

import pytest
from conftest import make_certificate
from relayutil import CaptureSMTP, DNSServer, wait_for

MESSAGE = ("From: Jörg <alice@example.org>\r\nTo: bob@remote.test\r\nSubject: Grüße\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
           "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n"
           "--b1\r\nContent-Type: application/octet-stream\r\n"
           "Content-Transfer-Encoding: binary\r\n\r\n").encode() + bytes(range(128, 256)) + (
           b"\r\n--b1--\r\n")


@pytest.fixture
def dns_server():
    server = DNSServer({"remote.test": {"MX": [(10, "mx.remote.test")]},
                        "mx.remote.test": {"A": ["127.0.0.1"]}})
    yield server
    server.stop()


def hub_for(make_hub, dns_server, remote, **relay):
    table = {"nameservers": [f"127.0.0.1:{dns_server.port}"], "port": remote.port}
    table.update(relay)
    return make_hub(sections={"relay": table})


def test_8bit_message_converted_for_a_7bit_server(make_hub, dns_server):
    remote = CaptureSMTP(extensions=("PIPELINING", "SIZE 10000000"))
    try:
        hub = hub_for(make_hub, dns_server, remote)
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("alice@example.org", ["bob@remote.test"], MESSAGE,
                       mail_options=["BODY=8BITMIME"])
        [(_, rcpts, data)] = remote.wait()
    finally:
        remote.stop()
    assert rcpts == ["bob@remote.test"]
    assert data.isascii()
    sent = BytesParser(policy=policy.default).parsebytes(data)
    original = BytesParser(policy=policy.default).parsebytes(MESSAGE)
    assert str(sent["Subject"]) == "Grüße"
    assert sent["From"].addresses[0].display_name == "Jörg"
    text, blob = sent.iter_parts()
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert blob["Content-Transfer-Encoding"] == "base64"
    for a, b in zip(original.iter_parts(), sent.iter_parts()):
        assert a.get_payload(decode=True) == b.get_payload(decode=True)
    queue = hub.state_dir / "queue"
    wait_for(lambda: not any(p.name.endswith(".7bit") for p in queue.iterdir()),
             what="the 7-bit copy removed")


def test_utf8_headers_are_converted_for_a_server_without_smtputf8(make_hub, dns_server):
    # 8BITMIME covers the body, not the header section: UTF-8 fields need
    # SMTPUTF8 (RFC 6532), so without it they go as encoded words; an 8-bit
    # body with ASCII headers goes as it is.
    remote = CaptureSMTP(extensions=("PIPELINING", "8BITMIME", "SIZE 10000000"))
    plain_headers = (b"From: alice@example.org\r\nTo: bob@remote.test\r\nSubject: hi\r\n"
                     b"Content-Type: text/plain; charset=utf-8\r\n"
                     b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n")
    try:
        hub = hub_for(make_hub, dns_server, remote)
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("alice@example.org", ["bob@remote.test"], MESSAGE,
                       mail_options=["BODY=8BITMIME", "SMTPUTF8"])
            s.sendmail("alice@example.org", ["bob@remote.test"], plain_headers,
                       mail_options=["BODY=8BITMIME"])
        got = remote.wait(2)
    finally:
        remote.stop()
    # the two may arrive in either order
    (second,) = [d for _, _, d in got if b"Subject: hi" in d]
    (data,) = [d for _, _, d in got if b"Subject: hi" not in d]
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    sent = BytesParser(policy=policy.default).parsebytes(data)
    assert str(sent["Subject"]) == "Grüße"
    assert second.endswith(plain_headers.split(b"\r\n\r\n", 1)[1])  # 8-bit body untouched


def test_tls_seen_survives_a_restart(make_hub, dns_server, tmp_path):
    cert, key = make_certificate(tmp_path / "remote-tls", "mx.remote.test")
    remote = CaptureSMTP(tls=(str(cert), str(key)))
    try:
        hub = hub_for(make_hub, dns_server, remote, require_tls_after_seen=True)
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("alice@example.org", ["bob@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        remote.wait()
        assert remote.tls_sessions == 1
        path = hub.state_dir / "relay" / "tls-seen.json"
        doc = wait_for(lambda: path.exists() and json.loads(path.read_bytes()),
                       what="the TLS memory on disk")
        assert list(doc["hosts"]) == ["mx.remote.test"]
        hub.restart()
        assert json.loads(path.read_bytes()) == doc
        # the restarted hub remembers: without STARTTLS now, it is a downgrade
        remote.tls_context = None
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("alice@example.org", ["bob@remote.test"], b"Subject: y\r\n\r\nhi\r\n")
        line = wait_for(lambda: [x for x in hub.mailhub("queue", "list").stdout.splitlines()
                                 if "4.7.10" in x], what="the downgrade refused")
        assert len(line) == 1
        assert len(remote.messages) == 1
    finally:
        remote.stop()
