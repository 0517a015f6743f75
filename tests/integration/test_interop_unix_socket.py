"""Clients on the hub's ``unix:`` listeners: curl (``--unix-socket``) for
SMTP and POP3, aiosmtplib (``socket_path``) for submission.

Such a client counts as loopback (docs/smtp.rst); the log lines name it
``localhost``, as the Received field does, never an empty name or a
Python repr."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import write_toml
from interop import SENDER, assert_same, corpus, fetch_poplib, hub_log_is_clean

CURL = shutil.which("curl")
ALICE, ALICE_PW = "alice@example.org", "alice-secret"


def unix_hub(make_hub, folder: Path):
    """A hub that also listens on a UNIX socket for each service."""
    hub = make_hub(start=False)
    socks = {role: folder / f"{role}.sock" for role in ("smtp", "submission", "pop3")}
    for role, path in socks.items():
        hub.doc[role]["listen"] = [*hub.doc[role]["listen"], f"unix:{path}"]
    write_toml(hub.config_path, hub.doc)
    hub.start()
    deadline = time.monotonic() + 20
    while not all(p.exists() for p in socks.values()):
        assert time.monotonic() < deadline, hub.log_text()
        time.sleep(0.05)
    return hub, socks


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_over_unix_sockets_and_the_log_names_the_client(make_hub, tmp_path: Path):
    hub, socks = unix_hub(make_hub, tmp_path)
    sent = corpus("unix")
    for name, data in sent.items():
        f = tmp_path / f"{name}.eml"
        f.write_bytes(data)
        r = subprocess.run(
            [CURL, "-sS", "--unix-socket", str(socks["smtp"]), "smtp://localhost/unix.test",
             "--mail-from", SENDER, "--mail-rcpt", ALICE, "--upload-file", str(f)],
            capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [CURL, "-sS", "--unix-socket", str(socks["pop3"]), "pop3://localhost/",
         "--user", f"{ALICE}:{ALICE_PW}"], capture_output=True, timeout=60)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(sent), r
    assert_same(sent, "unix", fetch_poplib(hub.pop3_port, ALICE, ALICE_PW))
    log = hub.log_text()
    assert log.count(f"to {ALICE} (") == len(sent)
    assert log.count(" via localhost (helo unix.test): 250 2.0.0 ") == len(sent), log
    assert f"POP3 login {ALICE} from localhost (PLAIN): {len(sent)} messages" in log, log
    assert f"POP3 logout {ALICE} from localhost: 0 messages deleted" in log, log
    assert "UNIXAddress" not in log and " via  (" not in log
    for role, path in socks.items():  # the path as text, not a bytes repr
        assert f"{role} listening on {path}\n" in log, log
    hub_log_is_clean(log)


def test_aiosmtplib_submission_over_a_unix_socket(make_hub, tmp_path: Path):
    aiosmtplib = pytest.importorskip("aiosmtplib", reason="aiosmtplib is not installed")
    hub, socks = unix_hub(make_hub, tmp_path)
    sent = corpus("unixsub", big=False)

    async def send() -> None:
        # a UNIX socket counts as loopback: AUTH without TLS is allowed
        async with aiosmtplib.SMTP(socket_path=str(socks["submission"]), hostname="localhost",
                                   local_hostname="aio.test", start_tls=False,
                                   username=SENDER, password="carol-secret", timeout=20) as s:
            for data in sent.values():
                errors, _ = await s.sendmail(SENDER, [ALICE], data)
                assert errors == {}

    asyncio.run(send())
    assert_same(sent, "unixsub", fetch_poplib(hub.pop3_port, ALICE, ALICE_PW))
    log = hub.log_text()
    assert log.count(" via localhost (helo aio.test) as carol@example.net: 250 ") == len(sent)
    assert "localhost authenticated as carol@example.net" in log, log
    hub_log_is_clean(log)
