"""RETR of a 50 MiB message streams: the hub's peak RSS grows by < ~10 MiB,
also while the reader stalls (back-pressure instead of buffering)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pop3util import RawPOP3, drop

ALICE = "alice@example.org"
MiB = 1 << 20


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_retr_50_mib_keeps_peak_rss_flat(make_hub):
    hub = make_hub(start=False)
    line = b".%07d The quick brown fox jumps over the lazy dog; pack my box with jugs.\n"
    block = b"".join(line % i for i in range(10000))
    count = (50 * MiB) // len(block) + 1
    data_hash = hashlib.sha256()
    box = hub.maildir(ALICE)
    for d in ("tmp", "new", "cur"):
        (box / d).mkdir(parents=True, exist_ok=True)
    tmp = box / "tmp" / "big"
    with open(tmp, "wb") as f:
        for _ in range(count):
            f.write(block)
    stored = count * len(block)
    wire_expected = stored + count * block.count(b"\n")
    for _ in range(count):
        data_hash.update(block.replace(b"\n", b"\r\n"))
    tmp.rename(box / "new" / f"{int(time.time())}.M1P1.big,S={stored},W={wire_expected}")
    drop(box, b"Subject: small\n\nsmall\n")
    hub.start()

    c = RawPOP3(hub.pop3_port, timeout=60)
    c.line()
    c.send(b"USER alice\r\nPASS alice-secret\r\nLIST\r\n")
    c.line()
    c.line()
    listing = c.multiline().split(b"\r\n")[1:-2]
    number, size = max((x.split() for x in listing), key=lambda x: int(x[1]))
    assert int(size) == wire_expected
    if not reset_peak(hub.pid):
        pytest.skip("cannot reset the peak RSS (/proc/PID/clear_refs)")
    base = status_kib(hub.pid, "VmRSS")

    c.send(b"RETR " + number + b"\r\n")
    time.sleep(1.0)  # a stalled reader: the server must wait, not buffer
    stalled = status_kib(hub.pid, "VmRSS")
    head = c.line()
    assert head == b"+OK " + size + b" octets"
    got = hashlib.sha256()
    received = 0
    pending, c.buf = c.buf, b""
    tail = b"\n"  # the body starts at a line start
    while True:
        chunk = pending or c.sock.recv(1 << 20)
        pending = b""
        assert chunk, "connection closed during RETR"
        received += len(chunk)
        buf = tail + chunk
        if buf.endswith(b"\n.\r\n"):
            got.update(buf[:-3].replace(b"\n..", b"\n.")[1:])
            break
        # split before the last LF, so "\n.." never straddles two updates
        i = buf.rindex(b"\n") if b"\n" in buf[1:] else 0
        if i > 0:
            got.update(buf[: i + 1].replace(b"\n..", b"\n.")[1:])
            tail = buf[i:]
        else:
            tail = buf
    peak = status_kib(hub.pid, "VmHWM")
    c.send(b"QUIT\r\n")
    assert c.line().startswith(b"+OK")
    c.close()

    assert received == wire_expected + count * 10000 + 3  # every line dot-stuffed, ".\r\n"
    assert got.hexdigest() == data_hash.hexdigest()
    assert stalled - base < 10 * 1024, (base, stalled)
    assert peak - base < 10 * 1024, (base, peak)
