"""Durability: SIGKILL the hub under load; every 250 is in a Maildir exactly once.

A killed process leaves the kernel's page cache behind, so this shows the
order of the steps (nothing acknowledged before it is in ``new/``, nothing
partial visible, no duplicate after the restart), not the fsyncs: those a
power cut would need, and ``test_sync.py`` and ``test_maildir.py`` check
that each one is made before the message is acknowledged."""

from __future__ import annotations

import smtplib
import socket
import threading
import time

MARK = b"X-Test-Id: "
END = b"-- end of message --"


def _client(port: int, worker: int, stop: threading.Event, acked: list[str]) -> None:
    n = 0
    body_filler = b"filler line for a message of a few KiB\r\n" * 60
    while not stop.is_set():
        n += 1
        tid = f"w{worker}-{n}"
        msg = (MARK + tid.encode() + b"\r\nSubject: load\r\n\r\n" + body_filler + END + b"\r\n")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.sendmail("load@remote.test", ["alice@example.org", "bob@example.org"], msg)
                acked.append(tid)  # sendmail returned: the final "." got its 250
        except (smtplib.SMTPException, OSError):
            if stop.is_set():
                return
            time.sleep(0.01)


def test_sigkill_under_load_loses_nothing_acknowledged(make_hub):
    hub = make_hub()
    stop = threading.Event()
    acked: list[str] = []
    threads = [threading.Thread(target=_client, args=(hub.smtp_port, i, stop, acked))
               for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.kill()  # SIGKILL, mid-traffic
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 40, "the load did not get going"
    with socket.socket() as probe:  # really dead
        assert probe.connect_ex(("127.0.0.1", hub.smtp_port)) != 0

    for who in ("alice@example.org", "bob@example.org"):
        seen: dict[str, int] = {}
        for path in hub.message_files(who):
            data = path.read_bytes()
            # nothing partial is visible in new/ or cur/
            assert data.rstrip(b"\n").endswith(END), path
            tid = data.split(MARK, 1)[1].split(b"\n", 1)[0].decode()
            seen[tid] = seen.get(tid, 0) + 1
        for tid in acked:
            assert seen.get(tid) == 1, (who, tid, seen.get(tid))
        assert all(count == 1 for count in seen.values())
