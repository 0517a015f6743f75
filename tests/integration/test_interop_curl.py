"""curl as SMTP client (MX, STARTTLS, submission with AUTH, implicit TLS)
and as POP3 client (plain, STLS, POP3S; LIST, RETR, UIDL, TOP)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    BOB_PW,
    SENDER,
    WITH_WORDS,
    assert_both_got,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
    send_smtplib,
    strip_trace,
    subject_of,
)

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")



def curl(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([CURL, "-sS", "-v", "--max-time", "30", *args],
                       capture_output=True, timeout=60)
    if ok:
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return r


def dialogue(r: subprocess.CompletedProcess) -> list[str]:
    """The protocol lines curl's -v shows (``> `` sent, ``< `` received)."""
    return [line for line in r.stderr.decode(errors="replace").splitlines()
            if line[:2] in ("> ", "< ")]


def test_curl_smtp_on_every_listener(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    cert = str(hub.folder / "tls" / "cert.pem")
    ways = {
        "mx": [f"smtp://127.0.0.1:{hub.smtp_port}"],
        "starttls": [f"smtp://127.0.0.1:{hub.smtp_port}", "--ssl-reqd", "--cacert", cert],
        "submission": [f"smtp://127.0.0.1:{hub.submission_port}", "--ssl-reqd",
                       "--cacert", cert, "--user", f"{SENDER}:carol-secret"],
        "smtps": [f"smtps://127.0.0.1:{hub.smtps_port}", "--cacert", cert,
                  "--user", f"{SENDER}:carol-secret", "--login-options", "AUTH=LOGIN"],
    }
    sent = {}
    for way, url in ways.items():
        sent[way] = corpus(way, big=way in ("mx", "smtps"))
        for name, data in sent[way].items():
            f = tmp_path / f"{way}-{name}.eml"
            f.write_bytes(data)
            r = curl(*url, "--mail-from", SENDER, "--mail-rcpt", ALICE, "--mail-rcpt", BOB,
                     "--upload-file", str(f))
            lines = dialogue(r)
            assert any(x.startswith("< 250 2.0.0 ") for x in lines), lines
            if way != "mx":
                assert "> STARTTLS" in lines or way == "smtps", lines
                assert "SSL connection using TLSv1.3" in r.stderr.decode(), way
            if way in ("submission", "smtps"):
                assert "< 235 2.7.0 Authentication successful" in lines, lines
                assert ("> AUTH LOGIN" if way == "smtps" else "> AUTH PLAIN") in lines, lines
    assert_both_got(hub, sent, WITH_WORDS)


def test_curl_smtp_refusals_and_auth_login_with_initial_response(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    f = tmp_path / "m.eml"
    f.write_bytes(corpus("refused", big=False)["ascii"])
    # submission without AUTH: RFC 6409 wants 530 before MAIL
    r = curl(f"smtp://127.0.0.1:{hub.submission_port}", "--mail-from", SENDER,
             "--mail-rcpt", ALICE, "--upload-file", str(f), ok=False)
    assert r.returncode == 55 and any(x.startswith("< 530 ") for x in dialogue(r)), dialogue(r)
    # a wrong password
    r = curl(f"smtp://127.0.0.1:{hub.submission_port}", "--user", f"{SENDER}:wrong",
             "--mail-from", SENDER, "--mail-rcpt", ALICE, "--upload-file", str(f), ok=False)
    assert r.returncode == 67 and any(x.startswith("< 535 ") for x in dialogue(r)), dialogue(r)
    # one unknown recipient among good ones: curl (>= 7.69) goes on with the others
    r = curl(f"smtp://127.0.0.1:{hub.smtp_port}", "--mail-from", SENDER,
             "--mail-rcpt", "nobody@example.org", "--mail-rcpt", ALICE,
             "--mail-rcpt-allowfails", "--upload-file", str(f), ok=False)
    if r.returncode == 2:
        pytest.skip("this curl has no --mail-rcpt-allowfails")
    assert r.returncode == 0, dialogue(r)
    assert any(x.startswith("< 550 ") for x in dialogue(r)), dialogue(r)
    # AUTH LOGIN with the user name as initial response (curl --sasl-ir),
    # then only the password prompt
    r = curl(f"smtp://127.0.0.1:{hub.submission_port}", "--ssl-reqd", "--cacert",
             str(hub.folder / "tls" / "cert.pem"), "--sasl-ir", "--login-options", "AUTH=LOGIN",
             "--user", f"{SENDER}:carol-secret", "--mail-from", SENDER, "--mail-rcpt", ALICE,
             "--upload-file", str(f))
    lines = dialogue(r)
    i = lines.index("> AUTH LOGIN Y2Fyb2xAZXhhbXBsZS5uZXQ=")
    assert lines[i + 1:i + 4] == ["< 334 UGFzc3dvcmQ6", "> Y2Fyb2wtc2VjcmV0",
                                  "< 235 2.7.0 Authentication successful"], lines
    # relaying from the submission port without AUTH never happens
    assert len(hub.messages(ALICE)) == 2
    assert not hub.mailhub("queue", "list").stdout.strip()
    hub_log_is_clean(hub.log_text())


def test_curl_pop3_plain_stls_and_pop3s(make_hub):
    hub = make_hub(tls=True)
    cert = str(hub.folder / "tls" / "cert.pem")
    sent = corpus("pop")
    send_smtplib(hub.smtp_port, sent, [ALICE])
    order = list(sent)
    reference = fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)
    assert [subject_of(m).split()[0] for m in reference] == order
    user = ["--user", f"{ALICE}:{ALICE_PW}"]
    for base, tls in ((f"pop3://127.0.0.1:{hub.pop3_port}", []),
                      (f"pop3://127.0.0.1:{hub.pop3_port}", ["--ssl-reqd", "--cacert", cert]),
                      (f"pop3s://127.0.0.1:{hub.pop3s_port}", ["--cacert", cert])):
        # LIST: "n octets" per message, octets as RFC 1939 counts them
        listing = curl(base + "/", *tls, *user).stdout.decode().split("\r\n")
        assert listing == [f"{i} {len(m)}" for i, m in enumerate(reference, 1)] + [""]
        if tls:
            assert "SSL connection using TLSv1.3" in curl(base + "/", *tls, *user).stderr.decode()
        for i, name in enumerate(order, 1):
            got = curl(f"{base}/{i}", *tls, *user).stdout
            assert got == reference[i - 1]
            assert strip_trace(got) == sent[name], name
        uidl = curl(base + "/", *tls, *user, "-X", "UIDL").stdout.decode().split("\r\n")
        assert [u.split()[0] for u in uidl[:-1]] == [str(i) for i in range(1, len(order) + 1)]
        assert len({u.split()[1] for u in uidl[:-1]}) == len(order)
        top = curl(f"{base}/", *tls, *user, "-X", "TOP 3 2").stdout
        head, _, body = strip_trace(top).partition(b"\r\n\r\n")
        assert head + b"\r\n\r\n" == sent["dots"].partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert body == b".\r\n..\r\n"  # curl removes the stuffing dots
    # what curl read it left (RETR does not delete); DELE then removes one
    curl(f"pop3://127.0.0.1:{hub.pop3_port}/1", *user, "-X", "DELE", "-I")
    assert len(fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)) == len(order) - 1
    hub_log_is_clean(hub.log_text())



def test_curl_pop3_apop_sasl_ir_and_single_line_commands(hub):
    send_smtplib(hub.smtp_port, corpus("apop", big=False), [ALICE, BOB])
    base = f"pop3://127.0.0.1:{hub.pop3_port}/"
    # APOP (RFC 1939 7) with the timestamp of the greeting; alice keeps an
    # APOP secret, bob does not
    r = curl(base, "--user", f"{ALICE}:{ALICE_PW}", "--login-options", "AUTH=+APOP")
    assert any(x.startswith(f"> APOP {ALICE} ") for x in dialogue(r)), dialogue(r)
    assert len(r.stdout.splitlines()) == 4
    r = curl(base, "--user", f"{BOB}:{BOB_PW}", "--login-options", "AUTH=+APOP", ok=False)
    assert r.returncode == 67 and "< -ERR [AUTH] Authentication failed" in dialogue(r)
    # SASL PLAIN with the initial response (RFC 5034 4)
    r = curl(base, "--user", f"{BOB}:{BOB_PW}", "--sasl-ir")
    assert any(x.startswith("> AUTH PLAIN AGJvYkBleGFtcGxl") for x in dialogue(r)), dialogue(r)
    # curl expects a multi-line answer to -X unless told otherwise with -I
    r = curl(base, "--user", f"{BOB}:{BOB_PW}", "-X", "UIDL 2", "-I")
    assert any(x.startswith("< +OK 2 ") for x in dialogue(r)), dialogue(r)
    r = curl(base + "1", "--user", f"{BOB}:{BOB_PW}", "-X", "DELE", "-I")
    assert "> DELE 1" in dialogue(r), dialogue(r)
    r = curl(base + "99", "--user", f"{BOB}:{BOB_PW}", ok=False)
    assert "< -ERR No such message" in dialogue(r)
    assert len(fetch_poplib(hub.pop3_port, BOB, BOB_PW)) == 3
    hub_log_is_clean(hub.log_text())


def test_curl_smtputf8_vrfy_and_expn(hub, tmp_path: Path):
    f = tmp_path / "utf8.eml"
    f.write_bytes("From: J\u00f6rg <j\u00f6rg@example.net>\r\nSubject: \u00fcber\r\n\r\n"
                  "K\u00f6ln\r\n".encode())
    # curl adds SMTPUTF8 on its own for a non-ASCII address (RFC 6531 3.4)
    r = curl(f"smtp://127.0.0.1:{hub.smtp_port}", "--mail-from", "j\u00f6rg@example.net",
             "--mail-rcpt", ALICE, "--upload-file", str(f))
    mail = f"> MAIL FROM:<j\u00f6rg@example.net> SIZE={f.stat().st_size} SMTPUTF8"
    assert mail in dialogue(r), dialogue(r)
    (stored,) = hub.messages(ALICE)
    assert stored.startswith("Return-Path: <j\u00f6rg@example.net>\n".encode())
    assert stored.endswith(f.read_bytes().replace(b"\r\n", b"\n"))
    # --mail-rcpt without a message is VRFY; -X EXPN expands a list
    r = curl(f"smtp://127.0.0.1:{hub.smtp_port}", "--mail-rcpt", "alice")
    assert r.stdout == b"250 2.1.5 <alice@example.org>\r\n", dialogue(r)
    r = curl(f"smtp://127.0.0.1:{hub.smtp_port}", "--mail-rcpt", "nobody", ok=False)
    assert "< 550 5.1.1 " in "\n".join(dialogue(r)), dialogue(r)
    r = curl(f"smtp://127.0.0.1:{hub.smtp_port}", "--mail-rcpt", "postmaster", "-X", "EXPN")
    assert "< 250 2.1.5 <postmaster@example.org>" in dialogue(r), dialogue(r)
    hub_log_is_clean(hub.log_text())
