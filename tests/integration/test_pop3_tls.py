"""POP3 with TLS over loopback: STLS (RFC 2595) and implicit TLS (RFC 8314)."""

from __future__ import annotations

import poplib
import socket
import ssl

import pytest
from pop3util import drop

ALICE, ALICE_PW = "alice@example.org", "alice-secret"
MSG = b"Subject: secure\n\n.hidden dot\nbody\n"


@pytest.fixture
def tls_hub(make_hub):
    hub = make_hub(tls=True)
    drop(hub.maildir(ALICE), MSG)
    return hub


def context(hub) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(hub.folder / "tls" / "cert.pem"))


def test_stls_then_login_and_retr(tls_hub):
    p = poplib.POP3("127.0.0.1", tls_hub.pop3_port, timeout=10)
    assert "STLS" in p.capa()
    p.stls(context(tls_hub))
    assert "STLS" not in p.capa()  # the session started afresh, TLS active
    with pytest.raises(poplib.error_proto, match="TLS active"):
        p._shortcmd("STLS")
    p.user(ALICE)
    p.pass_(ALICE_PW)
    _, lines, _ = p.retr(1)
    assert lines == [b"Subject: secure", b"", b".hidden dot", b"body"]
    p.quit()
    # the login line says the session was secured, and how
    assert f"POP3 login {ALICE} from 127.0.0.1 (USER, TLSv1.3): 1 message" in (
        tls_hub.log_text())


def test_implicit_tls(tls_hub):
    p = poplib.POP3_SSL("127.0.0.1", tls_hub.pop3s_port, timeout=10, context=context(tls_hub))
    assert p.getwelcome().startswith(b"+OK POP3 server mail.example.org ready <")
    assert "STLS" not in p.capa()
    p.user(ALICE)
    p.pass_(ALICE_PW)
    assert p.stat()[0] == 1
    _, lines, _ = p.top(1, 0)
    assert lines == [b"Subject: secure", b""]
    p.quit()
    assert f"POP3 login {ALICE} from 127.0.0.1 (USER, TLSv1.3): 1 message" in (
        tls_hub.log_text())


def test_large_message_over_tls_streams_completely(tls_hub):
    big = b"".join(b"%07d .line of a large message over TLS\n" % i for i in range(60000))
    drop(tls_hub.maildir(ALICE), big)
    p = poplib.POP3_SSL("127.0.0.1", tls_hub.pop3s_port, timeout=30, context=context(tls_hub))
    p.user(ALICE)
    p.pass_(ALICE_PW)
    _, listing, _ = p.list()
    number = max(listing, key=lambda x: int(x.split()[1])).split()[0]
    _, lines, _octets = p.retr(int(number))
    assert b"\n".join(lines) + b"\n" == big
    p.quit()


def test_commands_sent_behind_stls_in_clear_text_are_never_obeyed(tls_hub):
    # RFC 2595 4 (the session after STLS starts afresh; CVE-2011-0411's
    # injection): a USER in the same TCP segment as STLS is gone after the
    # handshake, so the PASS that follows under TLS has no user to go with
    with socket.create_connection(("127.0.0.1", tls_hub.pop3_port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"+OK POP3 server")
        raw.sendall(f"STLS\r\nUSER {ALICE}\r\n".encode())
        assert reader.readline() == b"+OK Begin TLS negotiation\r\n"
        reader.close()
        with context(tls_hub).wrap_socket(raw, server_hostname="localhost") as s:
            secure = s.makefile("rwb")
            secure.write(f"PASS {ALICE_PW}\r\n".encode())
            secure.flush()
            assert secure.readline().startswith(b"-ERR")
            secure.write(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\nQUIT\r\n".encode())
            secure.flush()
            assert secure.readline().startswith(b"+OK")
            assert secure.readline().startswith(b"+OK Logged in")
    assert "POP3 login alice@example.org from 127.0.0.1 (USER, TLSv1.3)" in tls_hub.log_text()
