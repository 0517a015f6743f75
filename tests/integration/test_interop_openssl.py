"""``openssl s_client`` drives whole SMTP and POP3 sessions over the hub's
TLS: ``-starttls smtp`` (MX and submission), ``-starttls pop3`` and the
implicit-TLS listeners, verifying the hub's test certificate.

s_client only carries the octets: the test speaks the protocol, waiting
for each reply as a client must (RFC 2920 allows no waiting only between
pipelinable commands).  ``-nocommands`` keeps s_client from reading
commands of its own in the input: by default a line that starts with
``R`` (RCPT, RETR) makes it renegotiate instead of sending the line, and
``Q`` (QUIT) ends it.
"""

from __future__ import annotations

import base64
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from interop import (
    ALICE,
    ALICE_PW,
    BOB,
    SENDER,
    assert_both_got,
    corpus,
    fetch_poplib,
    hub_log_is_clean,
    send_smtplib,
    strip_trace,
)

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")



class SClient:
    """One ``openssl s_client`` process; the test reads and writes its pipes."""

    def __init__(self, port: int, cert: Path, folder: Path, *extra: str) -> None:
        self.errfile = folder / f"s_client-{port}-{time.monotonic_ns()}.err"
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(
                [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-brief", "-ign_eof",
                 "-nocommands", "-CAfile", str(cert), "-verify_return_error",
                 "-verify_ip", "127.0.0.1", *extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )
        self.buf = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _more(self, timeout: float = 20.0) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        chunk = os.read(fd, 1 << 20) if ready else b""
        if not chunk:
            raise AssertionError(f"no more output; pending {self.buf[-300:]!r}\n{self.stderr()}")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> list[bytes]:
        """One SMTP reply, all its lines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def command(self, cmd: bytes, code: bytes) -> list[bytes]:
        self.send(cmd + b"\r\n")
        lines = self.reply()
        assert lines[-1][:3] == code, (cmd, lines)
        return lines

    def multiline(self) -> list[bytes]:
        """The lines of a POP3 multi-line response, terminator excluded."""
        out = []
        while (line := self.line()) != b".":
            out.append(line)
        return out

    def pop(self, cmd: bytes) -> bytes:
        self.send(cmd + b"\r\n")
        status = self.line()
        assert status.startswith(b"+OK"), (cmd, status)
        return status

    def close(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.stderr()

    def stderr(self) -> str:
        return self.errfile.read_text(errors="replace")


def stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, and the final dot."""
    lines = data.split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((b"." if x.startswith(b".") else b"") + x + b"\r\n"
                    for x in lines[:-1]) + b".\r\n"


def unstuff(lines: list[bytes]) -> bytes:
    """RFC 1939 3: a line of a multi-line response that starts with a dot
    loses that dot."""
    return b"".join((x[1:] if x.startswith(b".") else x) + b"\r\n" for x in lines)


def assert_tls13_verified(log: str) -> None:
    assert "Protocol version: TLSv1.3" in log and "Verification: OK" in log, log


def smtp_session(c: SClient, messages: dict[str, bytes], login: str = "",
                 greeting: bool = False) -> None:
    if greeting:
        assert c.reply()[0].startswith(b"220 mail.example.org ESMTP")
    ehlo = c.command(b"EHLO s-client.test", b"250")
    assert b"250-STARTTLS" not in ehlo and b"250-8BITMIME" in ehlo, ehlo
    if login == "plain":
        c.command(b"AUTH PLAIN " + base64.b64encode(f"\0{SENDER}\0carol-secret".encode()),
                  b"235")
    elif login == "login":
        assert c.command(b"AUTH LOGIN", b"334") == [b"334 VXNlcm5hbWU6"]
        assert c.command(base64.b64encode(SENDER.encode()), b"334") == [b"334 UGFzc3dvcmQ6"]
        c.command(base64.b64encode(b"carol-secret"), b"235")
    for data in messages.values():
        c.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME SIZE={len(data)}".encode(), b"250")
        c.command(f"RCPT TO:<{ALICE}>".encode(), b"250")
        c.command(f"RCPT TO:<{BOB}>".encode(), b"250")
        c.command(b"DATA", b"354")
        c.send(stuff(data))
        accepted = c.reply()
        assert accepted[0].startswith(b"250 2.0.0 "), accepted
    c.command(b"QUIT", b"221")


def test_s_client_smtp_starttls_submission_and_implicit_tls(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    cert = hub.folder / "tls" / "cert.pem"
    sent = {}
    for way, port, extra, login in (
        ("mx", hub.smtp_port, ("-starttls", "smtp"), ""),
        ("submission", hub.submission_port, ("-starttls", "smtp"), "plain"),
        ("smtps", hub.smtps_port, (), "login"),
    ):
        sent[way] = corpus(way, big=way != "submission")
        c = SClient(port, cert, tmp_path, *extra)
        smtp_session(c, sent[way], login, greeting=not extra)
        assert_tls13_verified(c.close())
    assert_both_got(hub, sent, {})


def test_s_client_pop3_stls_and_pop3s(make_hub, tmp_path: Path):
    hub = make_hub(tls=True)
    cert = hub.folder / "tls" / "cert.pem"
    sent = corpus("pop")
    send_smtplib(hub.smtp_port, sent, [ALICE])
    names = list(sent)
    for port, extra in ((hub.pop3_port, ("-starttls", "pop3")), (hub.pop3s_port, ())):
        c = SClient(port, cert, tmp_path, *extra)
        if not extra:
            assert c.line().startswith(b"+OK POP3 server mail.example.org ready <")
        c.pop(b"CAPA")
        capa = c.multiline()
        assert b"STLS" not in capa and b"USER" in capa and b"SASL PLAIN" in capa, capa
        c.pop(b"USER " + ALICE.encode())
        c.pop(b"PASS " + ALICE_PW.encode())
        count, octets = map(int, c.pop(b"STAT").split()[1:3])
        assert count == len(names)
        c.pop(b"LIST")
        listing = [tuple(map(int, x.split())) for x in c.multiline()]
        assert [n for n, _ in listing] == list(range(1, count + 1))
        assert sum(size for _, size in listing) == octets
        c.pop(b"UIDL")
        assert len({x.split()[1] for x in c.multiline()}) == count
        for i, name in enumerate(names, 1):
            status = c.pop(b"RETR %d" % i)
            raw = c.multiline()
            message = unstuff(raw)
            # the octets LIST gave are the message's, unstuffed (RFC 1939 5)
            assert len(message) == listing[i - 1][1], (name, status)
            assert strip_trace(message) == sent[name], name
            if name == "dots":
                # the hub stuffs exactly the lines that start with a dot
                body = raw[raw.index(b"") + 1:]
                assert body[:6] == [b"..", b"...", b"....", b"..leading dot",
                                    b"...two dots", b".. space"], body
        c.pop(b"TOP 3 3")
        top = unstuff(c.multiline())
        head, _, body = strip_trace(top).partition(b"\r\n\r\n")
        assert head.endswith(b"\r\nSubject: interop dots pop") and body == b".\r\n..\r\n...\r\n"
        c.pop(b"QUIT")
        assert_tls13_verified(c.close())
    # nothing was deleted; now DELE and QUIT over POP3S really remove one
    c = SClient(hub.pop3s_port, cert, tmp_path)
    c.line()
    c.pop(b"USER " + ALICE.encode())
    c.pop(b"PASS " + ALICE_PW.encode())
    c.pop(b"DELE 1")
    c.pop(b"QUIT")
    c.close()
    assert len(fetch_poplib(hub.pop3_port, ALICE, ALICE_PW)) == len(names) - 1
    hub_log_is_clean(hub.log_text())


def test_s_client_tls12_works_and_tls11_is_refused_everywhere(make_hub, tmp_path: Path):
    # docs/deployment.rst: TLS 1.2 and 1.3 only; a failed handshake leaves
    # one log line.  SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all, so
    # the refusal seen is the hub's.
    hub = make_hub(tls=True)
    cert = hub.folder / "tls" / "cert.pem"
    listeners = [(hub.smtp_port, ("-starttls", "smtp"), b"220"),
                 (hub.submission_port, ("-starttls", "smtp"), b"220"),
                 (hub.smtps_port, (), b"220"), (hub.pop3_port, ("-starttls", "pop3"), b"+OK"),
                 (hub.pop3s_port, (), b"+OK")]
    for port, extra, ok in listeners:
        c = SClient(port, cert, tmp_path, "-tls1_2", *extra)
        if not extra:
            assert c.line().startswith(ok)  # the greeting
        if ok == b"+OK":
            c.send(b"QUIT\r\n")
            assert c.line().startswith(b"+OK Bye"), port
        else:
            c.send(b"NOOP\r\nQUIT\r\n")
            assert [c.line()[:3], c.line()[:3]] == [b"250", b"221"], port
        log = c.close()
        assert "Protocol version: TLSv1.2" in log and "Verification: OK" in log, log
    for port, extra, _ in listeners:
        c = SClient(port, cert, tmp_path, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", *extra)
        log = c.close()
        if "no protocols available" in log:
            pytest.skip("this OpenSSL cannot offer TLS 1.1")
        assert c.proc.returncode != 0 and "alert protocol version" in log, log
    # each line is the hub's once it sees the connection end (its
    # connectionLost), which may come after s_client has exited
    refused = "TLS with 127.0.0.1 failed: unsupported protocol"
    deadline = time.monotonic() + 60
    while hub.log_text().count(refused) < len(listeners) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = hub.log_text()
    assert text.count(refused) == len(listeners), text
    hub_log_is_clean(text)


def test_s_client_renegotiation_on_tls12_is_refused(make_hub, tmp_path: Path):
    # Client-initiated renegotiation costs the server a handshake each time
    # (a denial of service) and could change the cipher a session logged;
    # the hub refuses it (a no_renegotiation alert) and stays up.
    hub = make_hub(tls=True)
    cert = hub.folder / "tls" / "cert.pem"
    for port in (hub.smtps_port, hub.pop3s_port):
        proc = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-CAfile",
             str(cert)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # "R" asks s_client to renegotiate, once the greeting shows the
        # session is up; stdin stays open, so only the hub's refusal ends
        # s_client (an accepted renegotiation would leave it running)
        assert proc.stdin is not None and proc.stdout is not None
        seen = b""
        while not seen.startswith((b"220 ", b"+OK ")):
            seen = proc.stdout.readline()
            assert seen, "s_client ended before the greeting"
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
        out = proc.stdout.read().decode(errors="replace")
        proc.stdin.close()
        proc.stdout.close()
        assert "RENEGOTIATING" in out and "no renegotiation" in out, out[-2000:]
    # the hub goes on serving
    c = SClient(hub.smtps_port, cert, tmp_path)
    assert c.reply()[0].startswith(b"220 ")
    c.command(b"QUIT", b"221")
    c.close()
    hub_log_is_clean(hub.log_text())


def test_s_client_resumes_its_tls_session_on_every_tls_listener(make_hub, tmp_path: Path):
    # the session s_client saved (-sess_out) takes it back in (-sess_in)
    # without a full handshake: SMTP STARTTLS, SMTPS, POP3 STLS and POP3S.
    # (Not -brief, which does not say whether a session was reused.)
    hub = make_hub(tls=True)
    cert = hub.folder / "tls" / "cert.pem"
    for port, extra in ((hub.smtp_port, ("-starttls", "smtp")), (hub.smtps_port, ()),
                        (hub.pop3_port, ("-starttls", "pop3")), (hub.pop3s_port, ())):
        saved = tmp_path / f"session-{port}.pem"
        for visit, sess in ((0, "-sess_out"), (1, "-sess_in")):
            done = subprocess.run(
                [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof",
                 "-nocommands", "-CAfile", str(cert), "-verify_return_error",
                 "-verify_ip", "127.0.0.1", *extra, sess, str(saved)],
                input=b"QUIT\r\n", capture_output=True, timeout=20)
            out = done.stdout.decode(errors="replace")
            assert "Verify return code: 0 (ok)" in out, out
            assert ("Reused, TLSv1.3" if visit else "New, TLSv1.3") in out, (port, visit, out)
