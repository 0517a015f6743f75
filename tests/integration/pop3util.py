"""Helpers for the POP3 integration tests: put messages into a hub's Maildir
the way another program would, read raw POP3 responses, and run Twisted's
own POP3 client."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
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


_TWISTED_CLIENT_HEAD = r"""
import json, sys
from twisted.internet import defer, protocol, reactor
from twisted.mail.pop3 import AdvancedPOP3Client

"""

_TWISTED_CLIENT_RUN = r"""
out = []
d = main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
d.addErrback(lambda f: (out.append(1), print(f.getTraceback(), file=sys.stderr)))
d.addBoth(lambda _: reactor.stop())
reactor.run()
sys.exit(1 if out else 0)
"""


def twisted_pop3_client(main: str, port: int, user: str, password: str, *,
                        timeout: float) -> subprocess.CompletedProcess[str]:
    """Twisted's ``AdvancedPOP3Client`` against the hub on 127.0.0.1:``port``,
    in a Python process of its own (it needs a reactor).  ``main`` is the
    source of ``@defer.inlineCallbacks def main(port, user, password)``,
    which may use ``json``, ``sys``, ``defer``, ``protocol``, ``reactor``
    and ``AdvancedPOP3Client``; what it prints is the result's stdout.  A
    failure exits 1 with its traceback on stderr."""
    script = _TWISTED_CLIENT_HEAD + main + _TWISTED_CLIENT_RUN
    return subprocess.run([sys.executable, "-c", script, str(port), user, password],
                          capture_output=True, text=True, timeout=timeout)
