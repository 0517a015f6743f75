"""The ``make_hub`` fixture itself: a hub's ports are the ones it bound.

A port picked free by the test and bound later by the hub (another
process) may be taken in between by anything on the machine; it was, once,
and a POP3 test failed with "Address already in use".  The fixture now
lets the hub bind port 0 and reads the ports from its log."""

from __future__ import annotations

import errno
import poplib
import smtplib
import socket
import ssl

import conftest


def test_a_default_hub_picks_no_port_ahead_of_its_start(make_hub, monkeypatch) -> None:
    # the race of a port picked free here and bound later by the hub (taken
    # in between: "Address already in use") cannot reach a default hub: it
    # picks none -- its listeners are tcp:0, its dead DNS server's port is
    # held by dead_port() -- and its ports are the ones it bound
    def no_pick(n: int) -> list[int]:
        assert n == 0, f"a default hub picked {n} ports ahead of its start"
        return []

    monkeypatch.setattr(conftest, "free_ports", no_pick)
    hub = make_hub(tls=True)
    ports = [hub.smtp_port, hub.submission_port, hub.smtps_port, hub.pop3_port,
             hub.pop3s_port]
    assert 0 not in ports and len(set(ports)) == 5
    assert hub.ports == {**hub.ports, **hub.bound_ports()}
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250
    ctx = ssl.create_default_context(cafile=str(hub.folder / "tls" / "cert.pem"))
    p = poplib.POP3_SSL("127.0.0.1", hub.pop3s_port, context=ctx, timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    p.quit()


def test_a_restart_reads_the_new_ports(make_hub) -> None:
    hub = make_hub()
    hub.restart()
    # the old run's lines are still in the log: the ports are this run's
    assert hub.ports == {**hub.ports, **hub.bound_ports()}
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    p.quit()


def test_fixed_ports_taken_after_the_pick_are_picked_again(make_hub, monkeypatch) -> None:
    # make_hub(fixed_ports=True) must write its ports into the config before
    # the start; the worst case of the race: every port of the first pick
    # is someone else's (listening, never answering) when the hub binds it
    thieves: list[socket.socket] = []
    pick = conftest.free_ports

    def taken_then_free(n: int) -> list[int]:
        if thieves:
            return pick(n)
        for _ in range(n):
            thief = socket.socket()
            thief.bind(("127.0.0.1", 0))
            thief.listen(1)
            thieves.append(thief)
        return [t.getsockname()[1] for t in thieves]

    monkeypatch.setattr(conftest, "free_ports", taken_then_free)
    try:
        hub = make_hub(fixed_ports=True)
        taken = {t.getsockname()[1] for t in thieves}
        assert "Address already in use" in hub.log_text()  # the first start failed
        ports = [hub.smtp_port, hub.submission_port, hub.pop3_port]
        assert not taken & set(ports) and len(set(ports)) == 3
        # the config names the ports the hub has (sendmail reads them there)
        assert hub.config_path.read_text().count(f"tcp:{hub.smtp_port}:") == 1
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
            assert s.noop()[0] == 250
    finally:
        for thief in thieves:
            thief.close()


def test_a_dead_port_refuses_and_cannot_be_taken() -> None:
    with conftest.dead_port() as port:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            raise AssertionError("a connection to a dead port was accepted")
        except ConnectionRefusedError:
            pass
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as other:
                try:
                    other.bind(("127.0.0.1", port))
                    raise AssertionError(f"another socket ({kind!r}) bound the dead port")
                except OSError as e:
                    assert e.errno == errno.EADDRINUSE
        # a datagram to it is answered "port unreachable", as at a free port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.connect(("127.0.0.1", port))
            client.settimeout(5)
            client.send(b"query")
            try:
                client.recv(100)
                raise AssertionError("a datagram to a dead port was answered")
            except ConnectionRefusedError:
                pass
