"""TLS listeners against clients that stall in the handshake or cannot
agree on it: the slot is freed at the idle timeout, and the log says why."""

from __future__ import annotations

import socket
import ssl
import time

import pytest


def wait_for(predicate, timeout=15.0):
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
    hub = make_hub(tls=True, sections={"smtp": {"idle_timeout": 1},
                                       "pop3": {"idle_timeout": 1}})
    port = hub.smtps_port if port_kind == "smtps" else hub.pop3s_port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        try:
            assert s.recv(100) == b""  # cut, without a word...
        except ConnectionResetError:
            pass  # ...or reset
        assert time.monotonic() - started < 10
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
    with socket.create_connection(("127.0.0.1", hub.smtps_port), timeout=20) as s:
        s.sendall(outgoing.read())  # the ClientHello, and not another byte
        started = time.monotonic()
        try:
            while s.recv(65536):  # the server's reply to it, then the cut
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 10
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
