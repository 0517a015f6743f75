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


def _kill_under_load(hub, client, wait: float) -> list[str]:
    """Four clients sending (``client``) until 40 messages got their 250
    (``wait`` seconds at most: a bound for a hub that hangs, not a
    speed), then SIGKILL mid-traffic; the ids of the acknowledged
    messages."""
    stop = threading.Event()
    acked: list[str] = []
    threads = [threading.Thread(target=client, args=(hub.smtp_port, i, stop, acked))
               for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + wait
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.kill()  # SIGKILL, mid-traffic
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 40, "the load did not get going"
    return acked


def test_sigkill_under_load_loses_nothing_acknowledged(make_hub):
    hub = make_hub()
    acked = _kill_under_load(hub, _client, 120)
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


# --- every path a message can take, killed mid-traffic ------------------------

_PATHS = {
    # name: (recipients, local mailboxes that must hold it, queued remotely)
    "alias": (["team@example.org"], ["alice@example.org", "bob@example.org"], False),
    "bdat": (["alice@example.org", "bob@example.org"],
             ["alice@example.org", "bob@example.org"], False),
    "mixed": (["bob@example.org", "ext@remote.test"], ["bob@example.org"], True),
    "remote": (["ext@remote.test"], [], True),
}


def _send_path(port: int, name: str, tid: str) -> bool:
    rcpts = _PATHS[name][0]
    msg = (MARK + tid.encode() + b"\r\nSubject: load\r\n\r\n"
           + b"filler line for a message of a few KiB\r\n" * 60 + END + b"\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
        s.ehlo("client.example.test")
        s.mail("load@remote.test")
        for r in rcpts:
            if s.rcpt(r)[0] != 250:
                return False
        if name == "bdat":
            s.putcmd(f"BDAT {len(msg)} LAST")
            s.send(msg)
            return s.getreply()[0] == 250
        return s.data(msg)[0] == 250


def _path_client(port: int, worker: int, stop: threading.Event, acked: list[str]) -> None:
    n = 0
    names = sorted(_PATHS)
    while not stop.is_set():
        n += 1
        name = names[(worker + n) % len(names)]
        tid = f"{name}-w{worker}-{n}"
        try:
            if _send_path(port, name, tid):
                acked.append(tid)
        except (smtplib.SMTPException, OSError):
            if stop.is_set():
                return
            time.sleep(0.01)


def _tid(data: bytes) -> str:
    return data.split(MARK, 1)[1].split(b"\n", 1)[0].decode()


def test_sigkill_on_every_path_then_restart(make_hub, tmp_path):
    """The gaps of the test above: an alias (one spool file hard-linked into
    several Maildirs), BDAT, and the outbound queue (remote recipients, and
    a message for both).  After the kill and a restart: each acknowledged
    copy once in each Maildir and once in the queue, nothing partial in
    new/ or cur/, no queue message without its record, and the killed
    process's spool files gone."""
    aliases = tmp_path / "aliases"
    aliases.write_text("team: alice, bob\n")
    hub = make_hub(sections={"aliases": {"file": str(aliases)}})
    killed = hub.pid
    acked = _kill_under_load(hub, _path_client, 120)
    hub.start()  # the restart's clean-up is part of what is checked
    # the port takes connections from the moment it is bound, before the
    # services start (the kernel completes the handshake; nothing is read
    # before they have): the clean-up is done once the hub says it started
    deadline = time.monotonic() + 60
    while hub.log_text().count("txmailhub started") < 2:
        assert time.monotonic() < deadline, "the restarted hub did not finish starting"
        time.sleep(0.05)

    spool = hub.state_dir / "spool"
    assert not [p for p in spool.iterdir() if p.name.startswith(f"{killed}-")]
    queue = hub.state_dir / "queue"
    queued: dict[str, int] = {}
    for msg in queue.glob("*.msg"):
        assert msg.with_suffix(".json").exists(), msg  # no orphan after recovery
        tid = _tid(msg.read_bytes())
        queued[tid] = queued.get(tid, 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for who in ("alice@example.org", "bob@example.org"):
        for path in hub.message_files(who):
            data = path.read_bytes()
            assert data.rstrip(b"\n").endswith(END), path  # nothing partial
            key = (who, _tid(data))
            seen[key] = seen.get(key, 0) + 1
    for tid in acked:
        _, mailboxes, remote = _PATHS[tid.split("-", 1)[0]]
        for who in mailboxes:
            assert seen.get((who, tid)) == 1, (who, tid, seen.get((who, tid)))
        if remote:
            assert queued.get(tid) == 1, (tid, queued.get(tid))
    assert all(count == 1 for count in seen.values())
    assert all(count == 1 for count in queued.values())
