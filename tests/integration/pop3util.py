"""Helpers for the POP3 integration tests: put messages into a hub's Maildir
the way another program would, and read raw POP3 responses."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

_counter = itertools.count(1)


def drop(maildir: Path, data: bytes, *, sizes: bool = True, sub: str = "new") -> Path:
    """Write ``data`` (LF line endings) into ``maildir/sub`` via ``tmp``.

    With ``sizes`` the name carries ``,S=`` (stored octets) and ``,W=`` (CRLF
    octets) as a delivering agent writes them; without, it is a plain name."""
    for d in ("tmp", "new", "cur"):
        (maildir / d).mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    name = f"{int(time.time())}.M{n}P{os.getpid()}Q{n}.testhost"
    if sizes:
        wire = len(data) + data.count(b"\n") - data.count(b"\r\n")
        if data and not data.endswith(b"\n"):
            wire += 2
        name += f",S={len(data)},W={wire}"
    if sub == "cur":
        name += ":2,"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    final = maildir / sub / name
    os.rename(tmp, final)
    return final


class RawPOP3:
    """A line-level POP3 client over a plain socket (no client-side parsing)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf[:200]!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def multiline(self) -> bytes:
        """Everything up to and including the terminating ``.\\r\\n``."""
        while b"\r\n.\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed inside a multi-line response")
            self.buf += chunk
        i = self.buf.index(b"\r\n.\r\n") + 5
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()
