"""RETR and TOP of mail the kernel has not cached, against a running hub
(``twistd mailhub``) with poplib.

The messages' pages are dropped from the page cache
(``POSIX_FADV_DONTNEED`` after an ``fsync``) before the client asks for
them: the hub's read without waiting (``RWF_NOWAIT``) says EAGAIN, the
read goes to a worker thread, and the client must still get the exact
messages.  That the worker path was taken is seen in the session's last
log line, which counts those reads.  Skipped where the kernel or the
filesystem of the test's folder does not drop the pages (asked of the
kernel with ``mincore``) or does not support ``RWF_NOWAIT`` (a probe
read).
"""

from __future__ import annotations

import os
import poplib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from page_cache import cached_pages, drop_pages
from pop3util import drop

ALICE, ALICE_PW = "alice@example.org", "alice-secret"

SMALL = b"From: a@example.net\nSubject: small\n\n" + b"a line\n.dotted\n" * 40
BIG = b"From: b@example.net\nSubject: big\n\n" + b"".join(
    b".%06d some text\n" % i for i in range(40_000))  # ~720 KB: streamed


def uncache(path: Path) -> None:
    """Drop ``path``'s pages from the page cache, or skip the test.

    Whether they went is asked of the kernel (``drop_pages``): under load
    a drop left pages, the RETR found the message cached, and the test
    failed for want of a worker read."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        pytest.skip("no RWF_NOWAIT here")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        try:  # does this filesystem take the flag?
            os.preadv(fd, [bytearray(1)], 0, flag)
        except BlockingIOError:
            pass
        except OSError as e:
            pytest.skip(f"RWF_NOWAIT not supported on this filesystem: {e}")
        # what that read may have started reading in, finished first
        while os.read(fd, 1 << 20):
            pass
        if not drop_pages(fd):
            pytest.skip(f"the page cache kept {cached_pages(fd)} pages of the message here")
    finally:
        os.close(fd)


def lines_of(data: bytes) -> list[bytes]:
    return data.rstrip(b"\n").split(b"\n")


def worker_reads(hub, sessions: int, user: str = ALICE) -> int:
    """How many reads the ``sessions``-th session of ``user`` in the run
    handed to a worker thread, from its logout line (once it is logged)."""
    logout = re.compile(rf"POP3 logout {re.escape(user)} from 127\.0\.0\.1: 0 messages "
                        r"deleted(?: \((\d+) reads? of uncached mail on a worker thread\))?\n")
    deadline = time.monotonic() + 10
    while True:
        found = logout.findall(hub.log_text())
        if len(found) >= sessions or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == sessions, hub.log_text()[-2000:]
    return int(found[-1] or 0)


def one_session(hub, command, user: str = ALICE, password: str = ALICE_PW,
                utf8: bool = True):
    """Log in, ``command(client)``, QUIT; what ``command`` returned."""
    p = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=30)
    try:
        # UTF8 (RFC 6856): for a client without it the login (or the
        # first LIST or STAT) reads the start of every message to learn
        # the size of its downgraded copy, and so caches it; no LIST or
        # STAT either, which would read nothing but are left out alike
        if utf8:
            assert p.utf8().startswith(b"+OK")
        p.user(user)
        p.pass_(password)
        result = command(p)
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()
    return result


#: sessions tried before a test gives up seeing a read go to a worker
SESSIONS = 10


def on_a_worker(hub, done: list[int], paths: Callable[[], list[Path]], command, check,
                **login) -> int:
    """Drop the pages of ``paths()`` and run ``command`` in a session,
    ``check`` what it returned, until the session's log line says a read
    went to a worker thread (``done``: the sessions logged so far, counted
    on); how many did.

    A read that must not wait (``RWF_NOWAIT``) of pages not cached starts
    reading them in and looks again: on a fast disk, the hub descheduled
    in between (a loaded machine: the suite's other workers), they are
    in, and the read gets them with no worker -- rightly, but then this
    session shows nothing.  So another session, a few times; a hub that
    never hands a read to a worker fails every one.  ``login``: the
    user, password and UTF8 of ``one_session``."""
    for _ in range(SESSIONS):
        for path in paths():
            uncache(path)
        check(one_session(hub, command, **login))
        done[0] += 1
        reads = worker_reads(hub, done[0], login.get("user", ALICE))
        if reads:
            return reads
    pytest.fail(f"none of {SESSIONS} sessions handed a read of uncached mail to a worker")


def test_retr_and_top_of_uncached_mail_send_the_exact_messages(hub):
    box = hub.maildir(ALICE)
    small, big = drop(box, SMALL), drop(box, BIG)
    done = [0]

    def where(name: str) -> Callable[[], list[Path]]:
        # new/ at first, cur/ since its first RETR
        return lambda: [next(box.glob(f"*/{name}*"))]

    def small_sent(result) -> None:
        resp, lines, _ = result
        assert resp == b"+OK %d octets" % (len(SMALL) + SMALL.count(b"\n"))
        assert lines == lines_of(SMALL)

    def big_sent(result) -> None:
        assert result[1] == lines_of(BIG)

    def big_top(result) -> None:
        # the header section, blank line, 5 lines
        assert result[1] == lines_of(BIG)[:2 + 1 + 5]

    assert on_a_worker(hub, done, where(small.name), lambda p: p.retr(1), small_sent) == 1
    assert on_a_worker(hub, done, where(big.name), lambda p: p.retr(2), big_sent) >= 1
    assert on_a_worker(hub, done, where(big.name), lambda p: p.top(2, 5), big_top) >= 1
    assert "Traceback" not in hub.log_text()


BOB, BOB_PW = "bob@example.org", "bob-secret"
INTL = "From: b@example.net\nSubject: caf\u00e9 \u00e0 J\u00f6rg\n\nhello\n".encode()


def test_list_of_uncached_mail_for_a_client_without_utf8(hub):
    """A small mailbox, a client without UTF8: LIST reports the size of
    each message as RETR will send it (downgraded, RFC 6857), which means
    reading its header section; not cached, that read is a worker's."""
    box = hub.maildir(BOB)
    names = [drop(box, SMALL).name, drop(box, INTL).name]

    def paths() -> list[Path]:  # new/ at first, cur/ since a RETR
        return [next(box.glob(f"*/{name}*")) for name in names]

    def sizes_listed(result) -> None:
        (_resp, listing, _), (_resp, lines, _) = result
        sent = sum(len(line) + 2 for line in lines)
        assert listing == [b"1 %d" % (len(SMALL) + SMALL.count(b"\n")), b"2 %d" % sent]
        assert sent != len(INTL) + INTL.count(b"\n")  # downgraded

    assert on_a_worker(hub, [0], paths, lambda p: (p.list(), p.retr(2)), sizes_listed,
                       user=BOB, password=BOB_PW, utf8=False) >= 1
