"""The interop tests' next-hop servers (relay_peers.py) get ports of their own.

The suite runs in parallel: a port picked free and released may be bound by
another process before the server binds it.  ``AioServer`` binds port 0;
``SinkServer`` (a program given its port) starts again on a new port when
the one it was given is taken."""

from __future__ import annotations

import smtplib
import socket

import relay_peers
from relay_peers import AioServer, SinkServer


def test_smtp_sink_given_a_taken_port_starts_again_on_another(monkeypatch) -> None:
    with socket.socket() as thief:
        # the worst case: the picked port listens already, and a connection
        # to it succeeds -- but it is not smtp-sink there
        thief.bind(("127.0.0.1", 0))
        thief.listen(1)
        taken = thief.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(SinkServer, "_pick_port",
                            staticmethod(lambda: next(picks, None) or relay_peers.free_port()))
        sink = SinkServer()
        try:
            assert sink.port != taken
            with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as s:
                assert s.noop()[0] == 250
        finally:
            sink.stop()


def test_aiosmtpd_server_binds_port_zero_and_reads_it_back() -> None:
    server = AioServer()
    try:
        assert server.port != 0
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
            s.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        assert [m[:2] for m in server.messages] == [("a@example.org", ["b@example.org"])]
    finally:
        server.stop()
