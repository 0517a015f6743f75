"""mpop (GnuTLS), a strict POP3 client, retrieves from the hub: STLS and
implicit TLS, UIDL-based "keep" mode across runs, and delete mode.

mpop checks what the server says against what it sends: the size LIST
announced against the octets RETR brought, UIDL values (1-70 printable
characters, one per message), the TLS certificate against its trust
file.  Its own Maildir delivery writes each message as it came, less the
dot-stuffing, plus a Received field of its own in front.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from interop import ALICE, ALICE_PW, SENDER, corpus, hub_log_is_clean, send_smtplib, strip_trace
from pop3util import drop

MPOP = shutil.which("mpop")
pytestmark = pytest.mark.skipif(MPOP is None, reason="mpop is not installed")


def write_config(hub, folder: Path) -> Path:
    cert = hub.folder / "tls" / "cert.pem"
    out = folder / "out"
    for sub in ("new", "cur", "tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rc = folder / "mpoprc"
    rc.write_text(
        "defaults\n"
        "host 127.0.0.1\n"
        f"user {ALICE}\npassword {ALICE_PW}\n"
        f"tls_trust_file {cert}\n"
        "timeout 20\n"
        f"delivery maildir {out}\n"
        f"uidls_file {folder / 'uidls'}\n"
        # received_header off: the file is then exactly what RETR sent
        "received_header off\n"
        "\n"
        f"account stls\nport {hub.pop3_port}\ntls on\ntls_starttls on\n\n"
        f"account pop3s\nport {hub.pop3s_port}\ntls on\ntls_starttls off\n\n"
        "account keep : stls\nkeep on\n\n"
        "account plain\n"
        f"port {hub.pop3_port}\ntls off\nauth user\n\n"
        "account apop : plain\nauth apop\n\n"
    )
    rc.chmod(0o600)  # mpop refuses a config with a password others can read
    return rc


def mpop(rc: Path, account: str) -> tuple[int, str]:
    r = subprocess.run([MPOP, "-C", str(rc), "--debug", account], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    return r.returncode, r.stdout.decode(errors="replace")


def delivered(folder: Path) -> list[bytes]:
    """What mpop wrote, LF line ends as its Maildir delivery stores them,
    back in CRLF form."""
    new = folder / "out" / "new"
    return [p.read_bytes().replace(b"\n", b"\r\n") for p in sorted(new.iterdir())]


def clear(folder: Path) -> None:
    for p in (folder / "out" / "new").iterdir():
        p.unlink()


@pytest.mark.parametrize("account", ["stls", "pop3s"])
def test_mpop_retrieves_and_deletes_over_tls(make_hub, tmp_path: Path, account: str):
    hub = make_hub(tls=True)
    sent = corpus(account)
    send_smtplib(hub.smtp_port, sent, [ALICE])
    rc = write_config(hub, tmp_path)
    code, out = mpop(rc, account)
    assert code == 0, out[-3000:]
    if account == "stls":
        assert "STLS" in out and "+OK" in out, out[:3000]
    assert "TLS session parameters:" in out, out[:3000]
    for line in ("--> AUTH PLAIN", "--> UIDL", "--> LIST", "--> RETR 5", "--> DELE 5",
                 "<-- +OK Bye (0 messages left)"):
        assert line in out, (line, out[:3000])
    got = sorted(strip_trace(m) for m in delivered(tmp_path))
    assert got == sorted(sent.values())
    assert hub.message_files(ALICE) == []  # mpop deletes what it fetched by default
    code, out = mpop(rc, account)
    assert code == 0, out[-2000:]
    assert "no messages" in out and "--> RETR" not in out, out[-2000:]
    hub_log_is_clean(hub.log_text())


def test_mpop_keep_mode_fetches_each_message_once(make_hub, tmp_path: Path):
    """``keep on``: mpop leaves the messages on the server and remembers
    their UIDLs; a second run fetches only the message that came since."""
    hub = make_hub(tls=True)
    first = corpus("keep1", big=False)
    send_smtplib(hub.smtp_port, first, [ALICE])
    rc = write_config(hub, tmp_path)
    code, out = mpop(rc, "keep")
    assert code == 0, out[-3000:]
    assert sorted(strip_trace(m) for m in delivered(tmp_path)) == sorted(first.values())
    assert len(hub.message_files(ALICE)) == len(first)  # kept
    assert "--> UIDL" in out and "DELE" not in out, out[-3000:]
    uidls = (tmp_path / "uidls").read_text()
    clear(tmp_path)

    later = {"late": corpus("keep2", big=False)["dots"]}
    send_smtplib(hub.smtp_port, later, [ALICE])
    code, out = mpop(rc, "keep")
    assert code == 0, out[-3000:]
    assert [strip_trace(m) for m in delivered(tmp_path)] == [later["late"]]
    assert out.count("--> RETR") == 1, out[-3000:]
    assert len(hub.message_files(ALICE)) == len(first) + 1
    assert (tmp_path / "uidls").read_text() != uidls
    clear(tmp_path)

    # and a run with nothing new fetches nothing
    code, out = mpop(rc, "keep")
    assert code == 0, out[-3000:]
    assert delivered(tmp_path) == [] and "--> RETR" not in out, out[-3000:]
    # then the same account without keep deletes all of them
    code, out = mpop(rc, "stls")
    assert code == 0, out[-3000:]
    assert hub.message_files(ALICE) == []
    hub_log_is_clean(hub.log_text())


@pytest.mark.parametrize("account,command", [("plain", "USER"), ("apop", "APOP")])
def test_mpop_without_tls_on_loopback(make_hub, tmp_path: Path, account: str, command: str):
    """USER/PASS without TLS is allowed from loopback (docs/pop3.rst), and
    APOP for a user added with it: mpop, told to use them, logs in and
    fetches."""
    hub = make_hub(tls=True)
    sent = {"ascii": corpus("plain", big=False)["ascii"]}
    send_smtplib(hub.smtp_port, sent, [ALICE])
    rc = write_config(hub, tmp_path)
    code, out = mpop(rc, account)
    assert code == 0, out[-3000:]
    assert [strip_trace(m) for m in delivered(tmp_path)] == [sent["ascii"]]
    assert f"--> {command} " in out and "--> STLS" not in out, out[:3000]
    assert SENDER in delivered(tmp_path)[0].decode()
    hub_log_is_clean(hub.log_text())


def test_mpop_after_a_message_another_program_removed(make_hub, tmp_path: Path):
    """The delivery of the first message removes the second one's file
    (another program on the Maildir, between mpop's LIST and its RETR):
    the hub answers '-ERR Message was removed by another program'.
    ``pipelining off``: mpop would otherwise send RETR 2 before the first
    delivery runs."""
    hub = make_hub(tls=False)
    md = hub.maildir(ALICE)
    paths = [drop(md, b"Subject: gone %d\n\nbody %d\n" % (i, i)) for i in range(3)]
    stem = paths[1].name.partition(",")[0]
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "mpoprc"
    rc.write_text(
        "account plain\nhost 127.0.0.1\n"
        f"port {hub.pop3_port}\ntls off\nauth user\n"
        f"user {ALICE}\npassword {ALICE_PW}\ntimeout 20\npipelining off\n"
        f"uidls_file {tmp_path / 'uidls'}\n"
        f"delivery mda \"/bin/sh -c 'cat > {out}/msg.$$; "
        f"rm -f {md}/new/{stem}* {md}/cur/{stem}*'\"\n"
    )
    rc.chmod(0o600)
    code, text = mpop(rc, "plain")
    # mpop ends that run at the failed RETR (a protocol error, nothing
    # deleted) ...
    assert code != 0 and "-ERR Message was removed by another program" in text, text
    assert [p.read_bytes().endswith(b"body 0\n") for p in out.iterdir()] == [True]
    # ... and gets the rest at the next one, the first message not twice
    code, text = mpop(rc, "plain")
    assert code == 0, text
    got = sorted(p.read_bytes().rpartition(b"\n\n")[2] for p in out.iterdir())
    assert got == [b"body 0\n", b"body 2\n"], got
    assert hub.message_files(ALICE) == []
