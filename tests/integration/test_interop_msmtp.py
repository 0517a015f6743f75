"""msmtp (GnuTLS) sends to every SMTP listener of the hub: plain MX,
STARTTLS, submission with AUTH PLAIN/LOGIN, implicit TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    SENDER,
    WITH_WORDS,
    assert_both_got,
    assert_same,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
)

MSMTP = shutil.which("msmtp")
pytestmark = pytest.mark.skipif(MSMTP is None, reason="msmtp is not installed")



def write_config(hub, folder: Path) -> Path:
    cert = hub.folder / "tls" / "cert.pem"
    rc = folder / "msmtprc"
    rc.write_text(
        "defaults\n"
        f"logfile {folder / 'msmtp.log'}\n"
        f"tls_trust_file {cert}\n"
        "timeout 20\n"
        f"from {SENDER}\n"
        "\n"
        "account mx\nhost 127.0.0.1\n"
        f"port {hub.smtp_port}\ntls off\nauth off\n\n"
        "account starttls : mx\ntls on\ntls_starttls on\n\n"
        "account submission : starttls\n"
        f"port {hub.submission_port}\nauth login\nuser {SENDER}\npassword carol-secret\n\n"
        "account smtps : submission\n"
        f"port {hub.smtps_port}\ntls_starttls off\nauth plain\n"
        # the other way to accept a self-signed certificate
        "tls_trust_file\ntls_certcheck off\n\n"
        "account badpass : submission\npassword wrong\n\n"
        # RFC 3461 parameters; and AUTH without TLS, which the hub allows
        # from loopback only
        "account dsn : mx\ndsn_notify failure,delay\ndsn_return headers\n"
        f"auth plain\nuser {SENDER}\npassword carol-secret\n"
    )
    rc.chmod(0o600)  # msmtp refuses a config with a password others can read
    return rc


def msmtp(rc: Path, account: str, data: bytes, *rcpts: str) -> subprocess.CompletedProcess:
    """Run msmtp; its -v transcript (on stdout) is merged into stderr."""
    return subprocess.run([MSMTP, "-C", str(rc), "-a", account, "-v", "--", *rcpts],
                          input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60)


def test_msmtp_on_every_listener(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    rc = write_config(hub, tmp_path)
    sent = {}
    for account in ("mx", "starttls", "submission", "smtps"):
        sent[account] = corpus(account, big=account in ("mx", "smtps"))
        for data in sent[account].values():
            r = msmtp(rc, account, data, ALICE, BOB)
            err = r.stdout.decode(errors="replace")
            assert r.returncode == 0, err[-3000:]
            assert "<-- 250 2.0.0 " in err, err[-2000:]
            if account != "mx":
                assert "TLS session parameters:\n    (TLS1.3)" in err, err[:2000]
            if account == "starttls":
                assert "--> STARTTLS" in err and "--> AUTH" not in err
            if account == "submission":
                assert "--> AUTH LOGIN" in err and "<-- 235 2.7.0 " in err, err[:3000]
            if account == "smtps":
                assert "--> AUTH PLAIN " in err and "--> STARTTLS" not in err, err[:3000]
    assert_both_got(hub, sent, WITH_WORDS)


def test_msmtp_refusals(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    rc = write_config(hub, tmp_path)
    data = corpus("refused", big=False)["ascii"]
    r = msmtp(rc, "badpass", data, ALICE)
    err = r.stdout.decode(errors="replace")
    assert r.returncode == 77, err  # EX_NOPERM: authentication failed
    assert "<-- 535 5.7.8 " in err, err
    # an unknown recipient among good ones: msmtp gives up on the whole
    # message (it has no partial delivery), and the hub keeps nothing
    r = msmtp(rc, "mx", data, ALICE, "nobody@example.org")
    err = r.stdout.decode(errors="replace")
    assert r.returncode != 0 and "<-- 550 5.1.1 " in err, err
    assert hub.messages(ALICE) == []
    hub_log_is_clean(hub.log_text())


def test_msmtp_dsn_parameters_and_auth_over_loopback(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    rc = write_config(hub, tmp_path)
    sent = corpus("dsn", big=False)
    for data in sent.values():
        r = msmtp(rc, "dsn", data, ALICE)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, out
        for line in ("--> AUTH PLAIN ", f"--> MAIL FROM:<{SENDER}> RET=HDRS",
                     f"--> RCPT TO:<{ALICE}> NOTIFY=FAILURE,DELAY", "<-- 235 2.7.0 ",
                     "<-- 250 2.0.0 "):
            assert line in out, (line, out)
    got = fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)
    assert_same(sent, "dsn", got)
    assert all(b" with ESMTPA\r\n" in m for m in got)
    hub_log_is_clean(hub.log_text())
