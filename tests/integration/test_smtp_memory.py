"""Memory: a 50 MiB message does not raise the server's peak RSS by more than ~10 MiB."""

from __future__ import annotations

import socket

MIB = 1024 * 1024


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def send(port: int, size: int) -> bytes:
    """One message of about ``size`` octets over a raw socket; the final reply."""
    line = b"0123456789" * 9 + b"abcdefgh\r\n"  # 100 octets
    block = line * (MIB // len(line))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO c.test\r\nMAIL FROM:<big@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
                  b"DATA\r\n")
        while True:
            reply = f.readline()
            if reply.startswith(b"354"):
                break
            assert reply[:1] == b"2", reply
        sent = 0
        while sent < size:
            s.sendall(block)
            sent += len(block)
        s.sendall(b".\r\n")
        reply = f.readline()
        s.sendall(b"QUIT\r\n")
        return reply


def test_50_mib_message_keeps_memory_flat(make_hub):
    hub = make_hub(sections={"smtp": {"max_message_size": 64 * MIB}})
    assert send(hub.smtp_port, MIB).startswith(b"250")  # warm up every code path
    before = vm_hwm_kib(hub.pid)
    assert send(hub.smtp_port, 50 * MIB).startswith(b"250")
    after = vm_hwm_kib(hub.pid)
    growth_mib = (after - before) / 1024
    print(f"peak RSS growth for 50 MiB: {growth_mib:.1f} MiB")
    assert growth_mib < 10, f"peak RSS grew by {growth_mib:.1f} MiB"
    sizes = sorted(p.stat().st_size for p in hub.message_files("alice@example.org"))
    assert sizes[-1] > 49 * MIB


def test_a_client_that_never_reads_replies_cannot_grow_memory(make_hub):
    # Pipelined EHLO (a 20-times bigger reply; not an error, and a junk
    # command only past the generous limit set here, which would otherwise
    # end the session) without ever reading: the hub must stop reading once
    # replies pile up, so the client's sends block and the hub's memory
    # stays where it was.
    hub = make_hub(sections={"smtp": {"max_junk_commands": 10**9}})
    before = vm_hwm_kib(hub.pid)
    flood = b"EHLO c\r\n" * 8_000  # 64 KB of commands, ~2 MB of replies
    sent = 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", hub.smtp_port))
        s.settimeout(3)
        try:
            while sent < 24 * MIB:
                s.sendall(flood)
                sent += len(flood)
        except TimeoutError:
            pass  # the hub stopped reading: what we wanted
    after = vm_hwm_kib(hub.pid)
    growth_mib = (after - before) / 1024
    print(f"sent {sent / MIB:.1f} MiB of EHLO before blocking; peak RSS +{growth_mib:.1f} MiB")
    assert sent < 16 * MIB, "the hub kept reading from a client that does not read"
    assert growth_mib < 20, f"peak RSS grew by {growth_mib:.1f} MiB"
