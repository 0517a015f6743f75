"""What one session holds open, measured on a live hub: the count the
open-files warning of ``twistd mailhub`` makes (``process_limits``).

An SMTP client that stops in the middle of its message keeps the spool
file open besides its connection, and a POP3 client that stops reading
in the middle of RETR keeps the message file open: a hub whose sessions
all do so needs two descriptors a session.  The warning had counted one,
and a hub with the default limits under an open-files limit of 1,024 ran
out with no warning (clients past it wait in the listen queue, no 421)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from pop3util import RawPOP3, drop

from txmailhub.process_limits import SESSION_DESCRIPTORS

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")


def open_files_under(pid: int, folder: Path) -> set[str]:
    """The files under ``folder`` the process ``pid`` has open."""
    found = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(folder) + os.sep):
            found.add(target)
    return found


def wait_for(count: int, pid: int, folder: Path) -> set[str]:
    """Poll until ``pid`` holds ``count`` files under ``folder`` (or give up
    after a generous while and return what it holds)."""
    deadline = time.monotonic() + 30
    while True:
        held = open_files_under(pid, folder)
        if len(held) >= count or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


def line(sock: socket.socket) -> bytes:
    """One reply line (the last of a multi-line reply), read octet by octet
    so that nothing after it is taken from the socket."""
    out = b""
    while not out.endswith(b"\r\n"):
        octet = sock.recv(1)
        assert octet, f"closed after {out!r}"
        out += octet
    return out


def test_an_smtp_session_in_the_middle_of_a_message_holds_its_spool_file(make_hub) -> None:
    hub = make_hub()
    spool = hub.state_dir / "spool"
    before = open_files_under(hub.pid, spool)  # the files made ahead, if any
    sessions = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", hub.smtp_port), timeout=30)
            sessions.append(s)
            assert line(s).startswith(b"220 ")
            for command in (b"HELO x", b"MAIL FROM:<a@example.com>",
                            b"RCPT TO:<bob@example.org>"):
                s.sendall(command + b"\r\n")
                assert line(s).startswith(b"250 ")
            s.sendall(b"DATA\r\n")
            assert line(s).startswith(b"354 ")
            s.sendall(b"Subject: stalled\r\n\r\n" + b"x" * 1000 + b"\r\n")
        held = wait_for(len(before) + len(sessions), hub.pid, spool) - before
        # each stalled session its own file, besides its connection
        assert len(held) >= len(sessions), held
        assert SESSION_DESCRIPTORS >= 2
    finally:
        for s in sessions:
            s.close()


def test_a_pop3_session_in_the_middle_of_retr_holds_the_message_file(make_hub) -> None:
    hub = make_hub(start=False)
    # 8 MiB: more than the socket buffers on both sides take, so RETR is
    # still under way while the client reads nothing
    body = b"Subject: big\n\n" + (b"y" * 76 + b"\n") * ((8 << 20) // 77)
    for user in USERS:
        drop(hub.maildir(user), body)
    hub.start()
    mail = hub.state_dir / "mail"
    clients = []
    try:
        for user in USERS:
            c = RawPOP3(hub.pop3_port, timeout=30)
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            clients.append(c)
            assert c.line().startswith(b"+OK")
            password = hub.users[user]
            c.send(f"USER {user}\r\nPASS {password}\r\n".encode())
            assert c.line().startswith(b"+OK") and c.line().startswith(b"+OK")
            c.send(b"RETR 1\r\n")  # and never read it
        held = wait_for(len(clients), hub.pid, mail)
        # each stalled reader its own message file, besides its connection
        assert len(held) >= len(clients), held
        assert SESSION_DESCRIPTORS >= 2
    finally:
        for c in clients:
            c.sock.close()
