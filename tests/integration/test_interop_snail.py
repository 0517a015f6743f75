"""s-nail (mailx) reads mailboxes over POP3 (APOP, USER/PASS with STLS,
POP3S) and sends over STARTTLS submission and implicit TLS.

s-nail 14.9 matches a certificate against DNS names only (not the
127.0.0.1 iPAddress entry of the test certificate), so the tests pin the
certificate's SHA-256 fingerprint instead, which s-nail checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from interop import SENDER, corpus, fetch_poplib, hub_log_is_clean, send_smtplib, strip_trace

SNAIL = shutil.which("s-nail")
pytestmark = pytest.mark.skipif(SNAIL is None, reason="s-nail is not installed")

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
BOB, BOB_PW = "bob@example.org", "bob-secret"


def fingerprint(cert: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def snail(hub, home: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    cert = hub.folder / "tls" / "cert.pem"
    home.mkdir(exist_ok=True)
    r = subprocess.run(
        [SNAIL, "-n", "-Sv15-compat", "-Sexpandaddr", "-Sverbose",
         "-Stls-fingerprint-digest=sha256", f"-Stls-fingerprint={fingerprint(cert)}", *args],
        input=stdin, capture_output=True, timeout=60,
        env=dict(os.environ, HOME=str(home), MAIL=str(home / "spool")),
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-3000:]
    return r


def url(scheme: str, user: str, password: str, port: int) -> str:
    return f"{scheme}://{user.replace('@', '%40')}:{password}@127.0.0.1:{port}"


def from_mbox(data: bytes) -> bytes:
    """One message that ``copy`` wrote: without the From_ line and the
    empty line that ends it in the mbox."""
    first, _, rest = data.partition(b"\n")
    assert first.startswith(b"From ") and rest.endswith(b"\n\n"), data[:200]
    return rest[:-1]


@pytest.mark.parametrize("mode", ["apop", "stls", "pop3s"])
def test_snail_reads_over_pop3(make_hub, tmp_path: Path, mode: str):
    hub = make_hub(tls=True)
    sent = corpus(mode)
    who, pw = (ALICE, ALICE_PW) if mode == "apop" else (BOB, BOB_PW)
    send_smtplib(hub.smtp_port, sent, [who])
    reference = fetch_poplib(hub.pop3_port, who, pw)
    out = tmp_path / "out"
    out.mkdir()
    args = {"apop": [],  # the greeting has a timestamp: s-nail logs in with APOP
            "stls": ["-Spop3-use-starttls", "-Spop3-no-apop"],
            "pop3s": ["-Spop3-no-apop"]}[mode]
    folder = url("pop3s" if mode == "pop3s" else "pop3", who, pw,
                 hub.pop3s_port if mode == "pop3s" else hub.pop3_port)
    copies = [a for i in range(1, len(sent) + 1) for a in ("-Y", f"copy {i} {out / str(i)}")]
    r = snail(hub, tmp_path / "home", "-N", *args, *copies, "-Y", "exit", "-f", folder)
    err = r.stderr.decode(errors="replace")
    assert ("TLS connection using TLSv1.3" in err) == (mode != "apop"), err
    assert "TLS fingerprint ok" in err or mode == "apop", err
    for i, (name, ref) in enumerate(zip(sent, reference, strict=True), 1):
        got = from_mbox((out / str(i)).read_bytes())
        assert got == ref.replace(b"\r\n", b"\n"), name
        assert strip_trace(got.replace(b"\n", b"\r\n")) == sent[name], name
    assert "(APOP)" in hub.log_text() if mode == "apop" else "(APOP)" not in hub.log_text()
    # "exit" leaves the mailbox as it was
    assert len(fetch_poplib(hub.pop3_port, who, pw)) == len(sent)
    hub_log_is_clean(hub.log_text())


def test_snail_sends_over_submission_and_implicit_tls(make_hub, tmp_path: Path):
    # s-nail composes: it takes LF text, adds its own Date, User-Agent and
    # MIME fields and may encode.  What it would send is taken from its
    # test:// transport and compared with what arrived, s-nail's Date aside.
    hub = make_hub(tls=True)
    ways = {"submission": ["-Smta=" + url("smtp", SENDER, "carol-secret", hub.submission_port),
                           "-Ssmtp-use-starttls", "-Ssmtp-auth=plain"],
            "smtps": ["-Smta=" + url("smtps", SENDER, "carol-secret", hub.smtps_port),
                      "-Ssmtp-auth=login"]}
    expected = {}
    for way, args in ways.items():
        for name, data in corpus(way).items():
            if name == "8bit":
                continue  # raw Latin-1 octets: s-nail finds no charset for them
            text = data.replace(b"\r\n", b"\n")
            reference = tmp_path / f"{way}-{name}.mbox"
            snail(hub, tmp_path / "home", f"-Smta=test://{reference}", "-t", stdin=text)
            expected[f"{name} {way}"] = from_mbox(reference.read_bytes())
            r = snail(hub, tmp_path / "home", *args, "-t", stdin=text)
            assert "TLS fingerprint ok" in r.stderr.decode(errors="replace")
    got = {}
    for m in hub.messages(ALICE):
        subject = m.split(b"\nSubject: interop ", 1)[1].split(b"\n", 1)[0].decode()
        got[subject] = m
    assert sorted(got) == sorted(expected)
    for key, message in got.items():
        assert b"with ESMTPSA (TLSv1.3 " in message
        body = strip_trace(message.replace(b"\n", b"\r\n")).replace(b"\r\n", b"\n")
        assert _without_date(body) == _without_date(expected[key]), key
    hub_log_is_clean(hub.log_text())


def _without_date(message: bytes) -> bytes:
    return b"\n".join(x for x in message.split(b"\n") if not x.startswith(b"Date: "))
