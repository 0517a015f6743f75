"""TLS listeners against clients that stall in the handshake or cannot
agree on it: the slot is freed at the idle timeout, and the log says why."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

#: a hub with TLS whose SMTP and POP3 sessions are cut after a second idle
CUT_AFTER_A_SECOND = {"tls": True, "sections": {"smtp": {"idle_timeout": 1},
                                                "pop3": {"idle_timeout": 1}}}


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("port_kind", ["smtps", "pop3s"])
def test_a_client_that_stalls_in_the_handshake_is_cut_at_the_idle_timeout(make_hub, port_kind):
    # a 421 / -ERR would wait for a handshake that never finishes, and the
    # connection (and its slot) for the 30 s close grace on top
    hub = make_hub(**CUT_AFTER_A_SECOND)
    port = hub.smtps_port if port_kind == "smtps" else hub.pop3s_port
    # not cut at the idle timeout: recv times out (socket.timeout), before
    # the 30 s grace would end (and 19 s after the idle timeout, however
    # loaded the machine)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        try:
            assert s.recv(100) == b""  # cut, without a word...
        except ConnectionResetError:
            pass  # ...or reset
    if port_kind == "smtps":
        assert wait_for(lambda: "in the TLS handshake: connection cut" in hub.log_text())


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_client_that_stalls_after_its_client_hello_is_cut_too(make_hub, version):
    # a whole ClientHello, then nothing: under TLS 1.3 our Finished has gone
    # out already, and only the client's tells that the handshake is done
    hub = make_hub(tls=True, sections={"smtp": {"idle_timeout": 1}})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    # not cut at the idle timeout: a recv times out (socket.timeout), before
    # the 30 s grace would end
    with socket.create_connection(("127.0.0.1", hub.smtps_port), timeout=20) as s:
        s.sendall(outgoing.read())  # the ClientHello, and not another byte
        try:
            while s.recv(65536):  # the server's reply to it, then the cut
                pass
        except ConnectionResetError:
            pass
    assert wait_for(lambda: "in the TLS handshake: connection cut" in hub.log_text())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # asking for TLS 1.1 on purpose
def test_a_client_that_cannot_agree_on_tls_is_logged(make_hub):
    # TLS 1.1 is refused (RFC 8996); the operator sees who failed and why
    hub = make_hub(tls=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", hub.smtps_port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw).do_handshake()
    assert wait_for(lambda: "TLS with 127.0.0.1 failed:" in hub.log_text()), hub.log_text()


def _read_line(s: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = s.recv(1)
        assert chunk, line
        line += chunk
    return line


def _cut_without_a_word(s: socket.socket) -> None:
    """The hub ends the connection and sends nothing first: a 421 or -ERR
    in clear text would be no TLS record, and one under TLS would wait for
    a handshake the client never makes.  A socket timeout here is the
    failure: a connection (and its slot) held for good."""
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass


@pytest.mark.parametrize("protocol", ["smtp", "pop3"])
def test_a_client_that_never_starts_the_handshake_it_asked_for_is_cut(make_hub, protocol):
    # RFC 3207 / RFC 2595 4: after the 220 to STARTTLS (the +OK to STLS)
    # the next octets must be a ClientHello; a client that sends none is
    # cut at the idle timeout as one stalled in the implicit-TLS handshake
    hub = make_hub(**CUT_AFTER_A_SECOND)
    port = hub.smtp_port if protocol == "smtp" else hub.pop3_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        _read_line(s)
        if protocol == "smtp":
            s.sendall(b"EHLO c.test\r\n")
            while not _read_line(s).startswith(b"250 "):
                pass
            s.sendall(b"STARTTLS\r\n")
            assert _read_line(s).startswith(b"220 ")
        else:
            s.sendall(b"STLS\r\n")
            assert _read_line(s).startswith(b"+OK ")
        _cut_without_a_word(s)
    if protocol == "smtp":
        assert wait_for(lambda: "in the TLS handshake: connection cut" in hub.log_text())


@pytest.mark.parametrize("port_kind", ["smtps", "pop3s"])
def test_a_client_that_sends_nothing_on_an_implicit_tls_port_is_cut(make_hub, port_kind):
    # RFC 8314 3: the handshake "begins immediately"; the hub never speaks
    # first in clear text, and a client that never sends its ClientHello
    # is cut at the idle timeout
    hub = make_hub(**CUT_AFTER_A_SECOND)
    port = hub.smtps_port if port_kind == "smtps" else hub.pop3s_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        _cut_without_a_word(s)


@pytest.mark.parametrize("port_kind", ["smtps", "pop3s"])
def test_clear_text_on_an_implicit_tls_port_gets_no_clear_text_answer(make_hub, port_kind):
    # RFC 8314 3.1, 3.3: the port speaks TLS only; a command in clear text
    # is a failed handshake (logged), never a greeting or an error reply
    hub = make_hub(tls=True)
    port = hub.smtps_port if port_kind == "smtps" else hub.pop3s_port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"EHLO c.test\r\nUSER alice\r\nCAPA\r\n")
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    assert not got.startswith((b"220", b"250", b"5", b"+OK", b"-ERR")), got
    assert b"\r\n" not in got, got
    assert wait_for(lambda: "TLS with 127.0.0.1 failed:" in hub.log_text()), hub.log_text()
