#!/usr/bin/env python3
"""Hours of steady mail through one txmailhub: does its memory level off?

The other benchmarks run for minutes, at full speed.  A hub in service runs
for weeks at a low rate, and a leak of a few hundred bytes per session only
shows over hours: caches that never stop growing, a Deferred kept per
connection, a descriptor left open by an error path.  This script keeps a
steady, mixed load on one hub and samples its resident memory, peak memory,
open descriptors and threads every ``--sample`` seconds:

* ``--rate`` SMTP sessions a second, each on its own connection, sizes drawn
  from a fixed sequence (mostly 1-8 KiB, every 50th 256 KiB); every 10th
  session sends a bad command and a ``RSET`` first, every 25th is a
  pipelined transaction with two messages, every 100th hangs up in the
  middle of its data (nothing may be stored for it);
* every ``--pop3-every`` seconds one POP3 session logs in, lists, retrieves
  every message, deletes them and quits, so the mailbox stays small and the
  POP3 path runs the whole time.

At the end it prints the samples (one line per ``--report`` seconds), the
growth of resident memory after the warm-up (``--warmup`` seconds), and the
count check: every message that got a ``250`` was retrieved exactly once,
with the octets that were sent, and nothing else was.

It does not take the benchmarks' lock (``bench.lock``): its load is light
(about 2% of a core at the default rate) and it is meant to run for hours;
running it next to ``smtp.py`` or ``pop3.py`` disturbs their numbers by
about that much.  Needs the project's ``.venv``; no peers, no root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import poplib
import shutil
import smtplib
import socket
import sys
import time

import benchlib as bl

MESSAGES = "soak"


def body(n: int) -> bytes:
    """Message ``n``: its size from a fixed sequence, its text numbered so
    that a retrieved copy names the session that sent it."""
    size = 256 * 1024 if n % 50 == 49 else 1024 * (1 + (n * 7) % 8)
    head = (f"From: soak <soak@bench.example>\r\nTo: {bl.RCPT}\r\n"
            f"Subject: {MESSAGES} {n}\r\nMessage-ID: <soak-{n}@bench.example>\r\n\r\n")
    line = f"message {n} line of soak text to fill the body up to its size.\r\n"
    text = head + line * max(1, (size - len(head)) // len(line))
    return text.encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data.replace(b"\r\n", b"\n").rstrip(b"\n")).hexdigest()


def smtp_session(port: int, n: int, sent: dict[str, int]) -> int:
    """One SMTP session for message ``n`` (and ``n + 1`` when pipelined);
    record each message that got a 250 in ``sent``; return how many
    message numbers it used."""
    if n % 100 == 99:  # hang up in the middle of the data
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO soak.example\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(f"MAIL FROM:<soak@bench.example>\r\nRCPT TO:<{bl.RCPT}>\r\n"
                      "DATA\r\n".encode())
            for _ in range(3):
                f.readline()
            s.sendall(body(n)[:700])
        return 1
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("soak.example")
        if n % 10 == 0:
            c.docmd("FROB", "nothing")
            c.rset()
        count = 2 if n % 25 == 0 else 1
        for k in range(count):
            data = body(n + k)
            c.sendmail("soak@bench.example", [bl.RCPT], data)
            sent[digest(data)] = sent.get(digest(data), 0) + 1
    return count


def pop3_session(port: int, got: dict[str, int]) -> int:
    """Retrieve and delete every message; count each by its digest."""
    c = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        c.user(bl.RCPT)
        c.pass_(bl.PASSWORD)
        count, _ = c.stat()
        for i in range(1, count + 1):
            _, lines, _ = c.retr(i)
            data = b"\r\n".join(lines)
            key = digest(data[data.index(b"From: soak"):]) if b"From: soak" in data else "?"
            got[key] = got.get(key, 0) + 1
            c.dele(i)
        c.quit()
    except BaseException:
        c.close()
        raise
    return count


def sample(pid: int) -> dict[str, float]:
    pids = bl.process_tree(pid)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        fds = threads = -1
    return {"rss_kb": bl.rss_kb(pids), "hwm_kb": bl.peak_rss_kb(pids), "fds": fds,
            "threads": threads, "cpu_s": bl.tree_cpu_seconds(pid)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=120)
    p.add_argument("--rate", type=float, default=20, help="SMTP sessions a second")
    p.add_argument("--pop3-every", type=float, default=10, help="seconds between POP3 sessions")
    p.add_argument("--sample", type=float, default=30, help="seconds between samples")
    p.add_argument("--report", type=float, default=600, help="seconds between printed samples")
    p.add_argument("--warmup", type=float, default=600,
                   help="seconds of load before memory growth is judged")
    args = p.parse_args()

    home = os.path.join(bl.BENCH_HOME, "soak")
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    sent: dict[str, int] = {}
    got: dict[str, int] = {}
    samples: list[tuple[float, dict[str, float]]] = []
    n = sessions = pop3_runs = 0
    with bl.Servers() as servers:
        hub = servers.add(bl.hub_server(os.path.join(home, "work"), os.path.join(home, "state")))
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = next_pop3 = start
        interval = 1 / args.rate
        due = start
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - start, sample(hub.pid)))
                next_sample += args.sample
            if now >= next_pop3:
                pop3_session(hub.pop3_port, got)
                pop3_runs += 1
                next_pop3 += args.pop3_every
            n += smtp_session(hub.port, n, sent)
            sessions += 1
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -5:  # behind by more than 5 s: drop the backlog, keep the rate
                due = time.monotonic()
        pop3_session(hub.pop3_port, got)
        samples.append((time.monotonic() - start, sample(hub.pid)))
        alive = hub.alive()

    print(f"{sessions} SMTP sessions ({n} message numbers), {pop3_runs + 1} POP3 sessions, "
          f"{args.minutes:g} min, {args.rate:g} sessions/s; hub alive at the end: {alive}")
    print()
    print(bl.markdown_table(
        ["minute", "RSS MiB", "peak RSS MiB", "fds", "threads", "CPU s"],
        [[f"{t / 60:.0f}" if args.report >= 60 else f"{t / 60:.1f}",
          f"{s['rss_kb'] / 1024:.1f}", f"{s['hwm_kb'] / 1024:.1f}",
          str(int(s["fds"])), str(int(s["threads"])), f"{s['cpu_s']:.0f}"]
         for i, (t, s) in enumerate(samples)
         if i == 0 or i == len(samples) - 1
         or int(t // args.report) != int(samples[i - 1][0] // args.report)]))
    warm = [s for t, s in samples if t >= args.warmup]
    if len(warm) >= 2:
        rss = [s["rss_kb"] for s in warm]
        span = (samples[-1][0] - args.warmup) / 3600
        print(f"\nafter the first {args.warmup / 60:.1f} min: RSS {rss[0] / 1024:.1f} → "
              f"{rss[-1] / 1024:.1f} MiB (min {min(rss) / 1024:.1f}, max {max(rss) / 1024:.1f}), "
              f"{(rss[-1] - rss[0]) / 1024 / span if span else 0:+.2f} MiB per hour; "
              f"fds {int(warm[0]['fds'])} → {int(warm[-1]['fds'])}")
    missing = sum(max(0, c - got.get(k, 0)) for k, c in sent.items())
    twice = sum(max(0, c - sent.get(k, 0)) for k, c in got.items())
    print(f"integrity: {sum(sent.values())} messages acknowledged, {sum(got.values())} "
          f"retrieved, {missing} missing, {twice} extra or not sent")
    return 0 if alive and not missing and not twice else 1


if __name__ == "__main__":
    sys.exit(main())
