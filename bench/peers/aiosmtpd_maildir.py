"""aiosmtpd peer for the benchmark: SMTP into per-user Maildirs.

Run with the Python of a virtualenv holding aiosmtpd::

    python aiosmtpd_maildir.py --listen 127.0.0.1:2525 --root /spool/aio \\
        --domain example.org [--no-fsync] [--fsync-dir]

A recipient ``LOCAL@DOMAIN`` (DOMAIN must be one of ``--domain``) is stored
in ``ROOT/LOCAL/{tmp,new,cur}``.  The handler writes the message the way a
careful, simple asyncio server would: inside ``handle_DATA`` on the event
loop, write tmp/NAME, fsync it (unless ``--no-fsync``), rename it into new/
(and fsync new/ with ``--fsync-dir``), and only then answer 250.  The body is
what aiosmtpd hands over: the whole message held in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import time

from aiosmtpd.smtp import SMTP


class MaildirHandler:
    def __init__(self, root: str, domains: list[str], fsync: bool, fsync_dir: bool) -> None:
        self.root = root
        self.domains = {d.lower() for d in domains}
        self.fsync = fsync
        self.fsync_dir = fsync_dir
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        self.seq = itertools.count(1)

    def _maildir(self, address: str) -> str | None:
        local, _, domain = address.rpartition("@")
        if not local or domain.lower() not in self.domains:
            return None
        path = os.path.join(self.root, local.lower())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        return path

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self._maildir(address) is None:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        body = envelope.original_content or envelope.content or b""
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        data = (b"Return-Path: <%s>\r\n" % (envelope.mail_from or "").encode()) + body
        for rcpt in envelope.rcpt_tos:
            box = self._maildir(rcpt)
            now = time.time_ns()
            seq = next(self.seq)
            unique = f"{now // 10**9}.M{now // 1000 % 10**6}P{os.getpid()}Q{seq}.{self.host}"
            tmp = os.path.join(box, "tmp", unique)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(box, "new", f"{unique},S={len(data)}"))
            if self.fsync_dir:
                dfd = os.open(os.path.join(box, "new"), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        return "250 2.0.0 OK stored"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:2525", help="HOST:PORT (loopback)")
    ap.add_argument("--root", required=True, help="directory holding one Maildir per user")
    ap.add_argument("--domain", action="append", default=[], help="local domain (repeatable)")
    ap.add_argument("--no-fsync", action="store_true", help="do not fsync the message file")
    ap.add_argument("--fsync-dir", action="store_true", help="also fsync new/ after the rename")
    ap.add_argument("--data-size-limit", type=int, default=0, help="bytes, 0 = unlimited")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    handler = MaildirHandler(
        args.root, args.domain or ["example.org"], not args.no_fsync, args.fsync_dir
    )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(
                handler,
                hostname="aiosmtpd.bench.localhost",
                data_size_limit=args.data_size_limit or None,
                enable_SMTPUTF8=True,
            ),
            host=host,
            port=int(port),
        )
    )
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(
        f"aiosmtpd listening on {host}:{port} fsync={not args.no_fsync} fsync_dir={args.fsync_dir}",
        flush=True,
    )
    loop.run_until_complete(done.wait())
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


if __name__ == "__main__":
    main()
