"""``offnet_twistd.py``, the launcher the live limit tests run the hub
with: it takes 127.0.0.1 for a client off the machine, and changes
nothing else -- a client on the hub's UNIX socket is still local."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from conftest import write_toml

OFFNET = [sys.executable, str(Path(__file__).with_name("offnet_twistd.py"))]


def _user_reply(sock: socket.socket) -> bytes:
    """The reply to ``USER alice`` after the greeting."""
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    sock.sendall(b"USER alice\r\n")
    return f.readline()


def test_a_unix_socket_client_stays_local_and_loopback_does_not(make_hub, tmp_path: Path):
    # POP3 takes USER/PASS without TLS only from a client on this machine
    # (allow_plaintext_auth is off): a UNIX socket's is one, 127.0.0.1 is
    # not, through the launcher
    hub = make_hub(start=False, launcher=OFFNET)
    path = tmp_path / "pop3.sock"
    hub.doc["pop3"]["listen"] = [*hub.doc["pop3"]["listen"], f"unix:{path}"]
    write_toml(hub.config_path, hub.doc)
    hub.start()
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, hub.log_text()
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        assert _user_reply(s).startswith(b"+OK")
    with socket.create_connection(("127.0.0.1", hub.pop3_port), timeout=10) as s:
        assert _user_reply(s).startswith(b"-ERR")
    assert "Traceback" not in hub.log_text()
