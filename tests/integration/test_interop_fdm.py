"""fdm (OpenSSL) fetches from the hub over POP3: USER/PASS and APOP on
loopback, STLS (its ``starttls``), POP3S, delete mode, ``new-only`` with
a UIDL cache while leaving the mail on the server (``keep``), an empty
mailbox and refused logins.

fdm checks the certificate with ``set verify-certificates`` against
OpenSSL's default trust store, which ``SSL_CERT_FILE`` points at the
test certificate.  Started as root, fdm fetches in a child that runs as
an unprivileged user of its own (Debian's ``debianfdm``): the trust file
and the UIDL cache then live in a folder that user can reach, outside
pytest's private temporary folder.  fdm's Maildir delivery writes each
message as RETR brought it, less the dot-stuffing, with LF line ends and
a Received field of its own in front.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    corpus,
    hub_log_is_clean,
    send_smtplib,
    strip_trace,
    trace_of,
)

FDM = shutil.which("fdm")
pytestmark = pytest.mark.skipif(FDM is None, reason="fdm is not installed")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder fdm's fetching child can read and write, whatever user it
    runs as."""
    folder = Path(tempfile.mkdtemp(prefix="txmailhub-fdm-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_config(hub, folder: Path, shared: Path) -> Path:
    cert = shared / "cert.pem"
    shutil.copyfile(hub.folder / "tls" / "cert.pem", cert)
    cert.chmod(0o644)
    out = folder / "out"
    for sub in ("new", "cur", "tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    server = f'server "127.0.0.1" port {hub.pop3_port}'
    tls_server = f'server "127.0.0.1" port {hub.pop3s_port}'
    alice = f'user "{ALICE}" pass "{ALICE_PW}"'
    conf = folder / "fdm.conf"
    conf.write_text(
        'set lock-file ""\n'
        "set verify-certificates\n"
        f'action "store" maildir "{out}"\n'
        f'account "stls" pop3 {server} {alice} starttls\n'
        f'account "pop3s" pop3s {tls_server} {alice}\n'
        f'account "keep" pop3 {server} {alice} new-only cache "{shared / "cache"}"'
        " starttls keep\n"
        f'account "plain" pop3 {server} {alice} no-apop\n'
        f'account "apop" pop3 {server} {alice}\n'
        # bob was added without --allow-apop: fdm uses APOP whenever the
        # greeting carries a timestamp (RFC 1939 7), and does not fall back
        # to USER/PASS when it is refused, so only no-apop gets him in
        f'account "bob" pop3 {server} user "{BOB}" pass "{BOB_PW}" no-apop\n'
        f'account "bob-apop" pop3 {server} user "{BOB}" pass "{BOB_PW}"\n'
        f'account "badpass" pop3 {server} user "{ALICE}" pass "wrong" no-apop\n'
        'match all action "store"\n'
    )
    conf.chmod(0o600)
    return conf


def fdm(conf: Path, shared: Path, account: str) -> tuple[int, str, str]:
    """Run ``fdm fetch`` for one account: exit status, the POP3 exchange
    (the ``> `` and ``< `` lines of -vvvv, message lines left out) and the
    rest of its output."""
    env = dict(os.environ, SSL_CERT_FILE=str(shared / "cert.pem"))
    r = subprocess.run([FDM, "-vvvv", "-f", str(conf), "-a", account, "fetch"],
                       capture_output=True, env=env, timeout=60)
    lines = r.stdout.decode(errors="replace").splitlines()
    dialogue = "\n".join(line for line in lines
                         if line.startswith(("> ", "< +OK", "< -ERR")))
    rest = [line for line in lines if not line.startswith(("> ", "< "))]
    return r.returncode, dialogue, "\n".join(rest) + "\n" + r.stderr.decode(errors="replace")


def delivered(folder: Path) -> list[bytes]:
    """What fdm stored, LF line ends back in CRLF form."""
    return [p.read_bytes().replace(b"\n", b"\r\n")
            for p in sorted((folder / "out" / "new").iterdir())]


def clear(folder: Path) -> None:
    for p in (folder / "out" / "new").iterdir():
        p.unlink()


def assert_stored(folder: Path, sent: dict[str, bytes], account: str, how: bytes) -> None:
    """fdm stored each message of ``sent`` once, exactly as sent after the
    trace fields: the hub's Return-Path and Received, and fdm's Received
    saying ``how`` it fetched."""
    got = delivered(folder)
    assert sorted(strip_trace(m) for m in got) == sorted(sent.values())
    for m in got:
        trace = trace_of(m)
        assert trace.startswith(b"Return-Path: <carol@example.net>\r\n"), trace
        assert re.search(rb'\(fdm [^,]+, account "%s"\)' % account.encode(), trace), trace
        assert how in trace, trace
        assert b"by mail.example.org (txmailhub) with ESMTP\r\n" in trace, trace


@pytest.mark.parametrize("account", ["stls", "pop3s"])
def test_fdm_retrieves_and_deletes_over_tls(make_hub, tmp_path: Path, shared: Path,
                                            account: str):
    hub = make_hub(tls=True)
    sent = corpus(account)  # dot-stuffed lines, a 998-octet line, 1 MiB
    send_smtplib(hub.smtp_port, sent, [ALICE])
    conf = write_config(hub, tmp_path, shared)
    code, dialogue, err = fdm(conf, shared, account)
    assert code == 0 and "5 messages processed" in err, err[-3000:]
    if account == "stls":
        assert "> STLS\n< +OK Begin TLS negotiation\n> USER " in dialogue, dialogue
    else:
        # the greeting offers APOP (alice has its secret), and fdm takes it
        assert dialogue.startswith("< +OK POP3 server mail.example.org ready <"), dialogue
        assert "\n> APOP alice@example.org " in dialogue, dialogue
    for n in range(1, 6):
        assert f"> RETR {n}\n< +OK " in dialogue and f"> DELE {n}\n" in dialogue, dialogue
    assert dialogue.endswith("> QUIT\n< +OK Bye (0 messages left)"), dialogue
    assert_stored(tmp_path, sent, account, b"with pop3 (version=TLSv1.3 ")
    assert hub.message_files(ALICE) == []
    # the empty mailbox: STAT says so, nothing else is asked
    clear(tmp_path)
    code, dialogue, err = fdm(conf, shared, account)
    assert code == 0 and "0 messages processed" in err, err[-3000:]
    assert "< +OK 0 0\n> QUIT\n< +OK Bye (0 messages left)" in dialogue, dialogue
    assert "RETR" not in dialogue and delivered(tmp_path) == []
    hub_log_is_clean(hub.log_text())


def test_fdm_new_only_fetches_each_message_once(make_hub, tmp_path: Path, shared: Path):
    """``new-only cache FILE`` and ``keep``: fdm leaves the mail on the
    server and remembers the UIDLs it fetched; the next run fetches only
    what came since."""
    hub = make_hub(tls=True)
    first = corpus("keep1", big=False)
    send_smtplib(hub.smtp_port, first, [ALICE])
    conf = write_config(hub, tmp_path, shared)
    code, dialogue, err = fdm(conf, shared, "keep")
    assert code == 0 and "4 messages processed (4 kept)" in err, err[-3000:]
    assert "> UIDL\n" in dialogue and "DELE" not in dialogue, dialogue
    assert_stored(tmp_path, first, "keep", b"with pop3 (version=TLSv1.3 ")
    assert len(hub.message_files(ALICE)) == len(first)
    clear(tmp_path)

    code, dialogue, err = fdm(conf, shared, "keep")
    assert code == 0 and "0 messages processed" in err, err[-3000:]
    assert "RETR" not in dialogue and delivered(tmp_path) == [], dialogue

    later = {"late": corpus("keep2", big=False)["dots"]}
    send_smtplib(hub.smtp_port, later, [ALICE])
    code, dialogue, err = fdm(conf, shared, "keep")
    assert code == 0 and "1 messages processed (1 kept)" in err, err[-3000:]
    assert dialogue.count("> RETR ") == 1, dialogue
    assert_stored(tmp_path, later, "keep", b"with pop3 (version=TLSv1.3 ")
    assert len(hub.message_files(ALICE)) == len(first) + 1
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("account,login", [("plain", "> USER alice@example.org\n"),
                                           ("apop", "> APOP alice@example.org "),
                                           ("bob", "> USER bob@example.org\n")])
def test_fdm_without_tls_on_loopback(make_hub, tmp_path: Path, shared: Path, account: str,
                                     login: str):
    """USER/PASS without TLS is allowed from loopback (docs/pop3.rst), and
    APOP for a user added with it."""
    hub = make_hub(tls=True)
    user = BOB if account == "bob" else ALICE
    sent = {"dots": corpus(account, big=False)["dots"]}
    send_smtplib(hub.smtp_port, sent, [user])
    conf = write_config(hub, tmp_path, shared)
    code, dialogue, err = fdm(conf, shared, account)
    assert code == 0 and "1 messages processed" in err, err[-3000:]
    assert login in dialogue and "STLS" not in dialogue, dialogue
    assert_stored(tmp_path, sent, account, b"with pop3 (unencrypted)")
    assert hub.message_files(user) == []
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("account,login", [("badpass", "> PASS wrong\n"),
                                           ("bob-apop", "> APOP bob@example.org ")])
def test_fdm_refused_login(make_hub, tmp_path: Path, shared: Path, account: str, login: str):
    """A wrong password, and APOP for a user without an APOP secret, get
    ``-ERR [AUTH]`` (RFC 3206 4); fdm says so and fetches nothing.  Its
    exit status is no guide: fdm 1.9 exits 0 after an account's fetch
    failed, so the test reads its message."""
    hub = make_hub(tls=True)
    user = BOB if account.startswith("bob") else ALICE
    send_smtplib(hub.smtp_port, {"ascii": corpus(account, big=False)["ascii"]}, [user])
    conf = write_config(hub, tmp_path, shared)
    _code, dialogue, err = fdm(conf, shared, account)
    assert f"{login}" in dialogue, dialogue
    assert dialogue.endswith("< -ERR [AUTH] Authentication failed"), dialogue
    assert f"{account}: unexpected data: -ERR [AUTH] Authentication failed" in err, err
    assert f"{account}: fetching error. aborted" in err, err
    assert delivered(tmp_path) == [] and len(hub.message_files(user)) == 1
    hub_log_is_clean(hub.log_text())
