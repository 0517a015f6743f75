"""fetchmail retrieves a mailbox from the hub over POP3 (loopback)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from pop3util import drop

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
FETCHMAIL = shutil.which("fetchmail")

pytestmark = pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail is not installed")


def run_fetchmail(hub, tmp_path, out, tls: str = "sslproto ''") -> subprocess.CompletedProcess:
    """Run fetchmail once; ``tls`` is its TLS option (default: plain POP3)."""
    home = tmp_path / "fetchmail-home"
    home.mkdir(exist_ok=True)
    rc = home / "fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 with proto POP3 port {hub.pop3_port} timeout 20\n'
        f'  user "{ALICE}" there with password "{ALICE_PW}" is "nobody" here\n'
        f'  {tls}\n'
        f'  mda "/bin/sh -c \'cat > {out}/msg.$$\'"\n'
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    return subprocess.run(
        [FETCHMAIL, "-f", str(rc), "--idfile", str(home / "ids"), "--pidfile",
         str(home / "pid"), "--nosyslog", "--nosoftbounce", "-v"],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_fetchmail_retrieves_and_deletes(hub, tmp_path):
    messages = [
        b"From: x@example.net\nTo: alice@example.org\nSubject: fm %d\n\nbody %d\n.dot line\n"
        % (i, i)
        for i in range(5)
    ]
    messages.append(b"Subject: big\n\n" + b"z" * 200 + b"\n" * 5000)
    for m in messages:
        drop(hub.maildir(ALICE), m)
    out = tmp_path / "out"
    out.mkdir()
    result = run_fetchmail(hub, tmp_path, out)
    assert result.returncode == 0, result.stderr + result.stdout
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert len(got) == len(messages), result.stderr + result.stdout
    for m in messages:
        # fetchmail adds its own Received: header in front
        assert sum(1 for g in got if g.endswith(m)) == 1, m[:40]
    assert hub.message_files(ALICE) == []  # fetchmail deletes what it fetched
    again = run_fetchmail(hub, tmp_path, out)
    assert again.returncode == 1  # 1: no mail
    assert "Traceback" not in hub.log_text()


def test_fetchmail_over_stls(make_hub, tmp_path):
    hub = make_hub(tls=True)
    drop(hub.maildir(ALICE), b"Subject: tls\n\nsecret body\n")
    out = tmp_path / "out"
    out.mkdir()
    cert = hub.folder / "tls" / "cert.pem"
    tls = f'sslproto "tls1.2+" sslcertck sslcertfile "{cert}" sslcommonname localhost'
    result = run_fetchmail(hub, tmp_path, out, tls)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "POP3> STLS" in result.stderr + result.stdout
    [got] = [p.read_bytes() for p in out.iterdir()]
    assert got.endswith(b"Subject: tls\n\nsecret body\n")


def test_fetchmail_gets_utf8_header_fields_downgraded(hub, tmp_path):
    """fetchmail never sends UTF8 (RFC 6856): a message whose header fields
    are UTF-8 reaches it downgraded (RFC 6857) -- all-ASCII header fields
    that decode to the originals, the body as stored -- and the size LIST
    announced is the size it got (fetchmail compares them)."""
    from email import message_from_bytes, policy

    utf8 = ("From: Jörg Müller <jörg@example.org>\nTo: alice@example.org\n"
            "Subject: Grüße aus Köln\n\nBody with ümlauts\n").encode()
    plain = b"From: x@example.net\nTo: alice@example.org\nSubject: plain\n\nascii body\n"
    for m in (utf8, plain):
        drop(hub.maildir(ALICE), m)
    out = tmp_path / "out"
    out.mkdir()
    result = run_fetchmail(hub, tmp_path, out)
    assert result.returncode == 0, result.stderr + result.stdout
    got = [p.read_bytes() for p in out.iterdir()]
    assert len(got) == 2
    [down] = [g for g in got if b"plain" not in g]
    # what the hub sent: after the Received field fetchmail puts on top
    lines = down.split(b"\n")
    assert lines[0].startswith(b"Received: ")
    start = 1
    while lines[start][:1] in (b" ", b"\t"):
        start += 1
    sent = b"\n".join(lines[start:])
    said = result.stdout + result.stderr
    announced = [int(n) for n in re.findall(r"of 2 \((\d+) octets\)", said)]
    assert len(sent) + sent.count(b"\n") in announced  # LIST's size: the CRLF form sent
    header, _, body = sent.partition(b"\n\n")
    assert header.isascii()
    assert body == "Body with ümlauts\n".encode()
    parsed = message_from_bytes(down, policy=policy.default)
    assert str(parsed["Subject"]) == "Grüße aus Köln"
    assert "Jörg Müller" in str(parsed["From"])
    assert any(g.endswith(plain) for g in got)
    assert hub.message_files(ALICE) == []


def test_fetchmail_goes_on_past_a_message_another_program_removed(hub, tmp_path):
    # The mda of the first message removes the second one's file (another
    # program on the Maildir, between fetchmail's LIST and its RETR): the
    # hub answers '-ERR Message was removed by another program' and
    # fetchmail goes on to the third, which it gets.
    md = hub.maildir(ALICE)
    paths = [drop(md, b"Subject: gone %d\n\nbody %d\n" % (i, i)) for i in range(3)]
    stem = paths[1].name.partition(",")[0]
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "fetchmail-home"
    home.mkdir()
    rc = home / "fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 with proto POP3 port {hub.pop3_port} timeout 20\n'
        f'  user "{ALICE}" there with password "{ALICE_PW}" is "nobody" here\n'
        f"  sslproto ''\n"
        f'  mda "/bin/sh -c \'cat > {out}/msg.$$; rm -f {md}/new/{stem}* {md}/cur/{stem}*\'"\n'
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(home), FETCHMAILHOME=str(home))
    result = subprocess.run(
        [FETCHMAIL, "-f", str(rc), "--idfile", str(home / "ids"), "--pidfile",
         str(home / "pid"), "--nosyslog", "--nosoftbounce", "-v"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert result.returncode == 0, result.stderr + result.stdout
    assert "couldn't fetch headers, message alice@example.org@127.0.0.1:2" in result.stdout
    assert any(g.endswith(b"body 0\n") for g in got)
    assert any(g.endswith(b"body 2\n") for g in got), result.stderr + result.stdout
    assert "removed by another program" in hub.log_text()
