#!/usr/bin/env python3
"""The floor: the least a Twisted SMTP server can do to store mail in a Maildir.

Not a mail server.  It answers every command with a canned reply (no
parsing, no routing, no checks, no trace header, no log line), writes each
message to ``tmp/`` and renames it into ``new/``, and nothing else.  It
exists to show how much of a real server's cost per message is Twisted's
and the kernel's (accept, reads, writes, close, the file work) rather than
the server's own: whatever a real Twisted server does, it cannot use less
CPU per message than this on the same load.

Replies are written straight to the socket in the reactor turn that
produced them, as txmailhub does (Twisted's ``transport.write`` would
defer each one to the next turn and add two ``epoll_ctl`` calls).

``--sync`` chooses the durability:

* ``none``: no fsync (as ``twistd mail``).
* ``inline``: the message file's fsync, the rename and the fsync of
  ``new/`` on the reactor thread, before the 250 (simplest; blocks every
  session while the disk works).
* ``thread``: the same steps in Twisted's thread pool, with group commit:
  the messages that arrive while a job runs go together in the next job,
  which fsyncs each file, renames it and fsyncs ``new/`` once for all;
  each 250 when its job is done.
* ``pool``: each message's steps as a job of its own in Twisted's thread
  pool (10 threads), so that fsyncs of different messages overlap (the
  filesystem's journal can commit them together).
* ``aio``: the same steps without threads, as txmailhub does them on
  Linux: each message's fsync is a kernel AIO request made on the
  reactor thread (txmailhub's ``KernelRing``), the rename follows its
  completion, and one fsync of ``new/`` at a time covers the messages
  renamed while the one before ran.

Usage (by bench/smtp.py's ``floor`` targets)::

    python floor_maildir.py --listen 127.0.0.1:2525 --maildir DIR --sync thread
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import protocol, reactor, threads

_DONE = b"\r\n.\r\n"
_REPLIES = {
    b"HELO": b"250 floor\r\n",
    b"EHLO": b"250-floor\r\n250 8BITMIME\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


class Floor(protocol.Protocol):
    def connectionMade(self) -> None:
        self.sock = self.transport.getHandle()
        self.buf = b""
        self.data: list[bytes] | None = None  # inside DATA: the pieces so far
        self.waiting = False
        self.say(b"220 floor ESMTP\r\n")

    def say(self, reply: bytes) -> None:
        try:
            sent = self.sock.send(reply)
        except OSError:
            sent = 0
        if sent < len(reply):
            self.transport.write(reply[sent:])

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        self.work()

    def work(self) -> None:
        while self.buf and not self.waiting:
            if self.data is not None:
                end = self.buf.find(_DONE)
                if end < 0:
                    keep = len(self.buf) - 4
                    if keep > 0:
                        self.data.append(self.buf[:keep])
                        self.buf = self.buf[keep:]
                    return
                self.data.append(self.buf[: end + 2])
                self.buf = self.buf[end + 5:]
                message, self.data = b"".join(self.data), None
                self.store(message)
                continue
            end = self.buf.find(b"\n")
            if end < 0:
                return
            verb = self.buf[:4].upper()
            self.buf = self.buf[end + 1:]
            if verb == b"DATA":
                self.data = []
                self.say(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.say(b"221 2.0.0 Bye\r\n")
                self.transport.loseConnection()
                return
            else:
                self.say(_REPLIES.get(verb, b"250 Ok\r\n"))

    def store(self, message: bytes) -> None:
        factory = self.factory
        factory.count += 1
        name = f"{factory.stamp}.{factory.count}.floor"
        if factory.sync == "thread":
            self.waiting = True
            factory.commit(self, name, message)
        elif factory.sync == "aio":
            self.waiting = True
            factory.aio_store(self, name, message)
        elif factory.sync == "pool":
            self.waiting = True
            threads.deferToThread(factory.write_batch, [(self, name, message)]).addCallback(
                self.stored)
        else:
            factory.write(name, message)
            if factory.sync == "inline":
                os.fsync(factory.new_fd)
            self.say(b"250 2.0.0 Ok: queued\r\n")

    def stored(self, _: object) -> None:
        self.waiting = False
        self.say(b"250 2.0.0 Ok: queued\r\n")
        self.work()


class _RingReader:
    def __init__(self, factory: FloorFactory) -> None:
        self.factory = factory

    def fileno(self) -> int:
        return self.factory.ring.fileno()

    def doRead(self) -> None:
        self.factory.aio_reap()

    def connectionLost(self, reason: object) -> None:
        pass

    def logPrefix(self) -> str:
        return "ring"


class FloorFactory(protocol.Factory):
    protocol = Floor

    def __init__(self, maildir: str, sync: str) -> None:
        self.tmp = os.path.join(maildir, "tmp")
        self.new = os.path.join(maildir, "new")
        for path in (self.tmp, self.new, os.path.join(maildir, "cur")):
            os.makedirs(path, exist_ok=True)
        self.sync = sync
        self.count = 0
        self.stamp = f"{os.getpid()}"
        self.new_fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        self.batch: list[tuple[Floor, str, bytes]] = []
        self.running = False
        if sync == "aio":
            # txmailhub's kernel ring (txmailhub.store.aio), nothing else of it
            from txmailhub.store.aio import KernelRing

            self.ring = KernelRing()
            self.ops: dict[int, object] = {}
            self.keys = 0
            self.dir_wait: list[Floor] = []
            self.dir_busy = False
            reactor.addReader(_RingReader(self))

    def aio_submit(self, fd: int, done) -> None:
        self.keys += 1
        self.ring.submit(fd, self.keys)
        self.ops[self.keys] = done

    def aio_reap(self) -> None:
        for key, res in self.ring.reap():
            if res < 0:
                raise OSError(-res, "fsync through AIO")
            self.ops.pop(key)()

    def aio_store(self, proto: Floor, name: str, message: bytes) -> None:
        tmp = os.path.join(self.tmp, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, message)

        def synced() -> None:
            os.close(fd)
            os.rename(tmp, os.path.join(self.new, name))
            self.dir_wait.append(proto)
            if not self.dir_busy:
                self.aio_dir_sync()

        self.aio_submit(fd, synced)

    def aio_dir_sync(self) -> None:
        group, self.dir_wait = self.dir_wait, []
        self.dir_busy = bool(group)
        if not group:
            return

        def synced() -> None:
            for proto in group:
                proto.stored(None)
            self.aio_dir_sync()

        self.aio_submit(self.new_fd, synced)

    def commit(self, proto: Floor, name: str, message: bytes) -> None:
        self.batch.append((proto, name, message))
        if not self.running:
            self.next_job()

    def next_job(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            self.running = False
            return
        self.running = True
        d = threads.deferToThread(self.write_batch, batch)
        d.addCallback(self.done, batch)

    def write_batch(self, batch: list[tuple[Floor, str, bytes]]) -> None:
        for _, name, message in batch:
            self.write(name, message)
        os.fsync(self.new_fd)

    def done(self, _: object, batch: list[tuple[Floor, str, bytes]]) -> None:
        for proto, _, _ in batch:
            proto.stored(None)
        self.next_job()

    def write(self, name: str, message: bytes) -> None:
        tmp = os.path.join(self.tmp, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, message)
            if self.sync != "none":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.new, name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--sync", choices=("none", "inline", "thread", "pool", "aio"), default="thread")
    a = ap.parse_args()
    host, _, port = a.listen.rpartition(":")
    if host != "127.0.0.1":
        raise SystemExit("loopback only")
    factory = FloorFactory(a.maildir, a.sync)
    reactor.listenTCP(int(port), factory, backlog=128, interface=host)
    print(f"floor ({a.sync}) on {a.listen}", file=sys.stderr, flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
