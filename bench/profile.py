#!/usr/bin/env python3
"""Profile txmailhub under an SMTP or POP3 load and print its hot spots.

Starts ``twistd -n mailhub`` under a profiler on a generated bench config,
drives it (SMTP: ``smtp-source``; POP3: one ``poplib`` session over a seeded
Maildir), stops it, and prints the top functions by own time and by
inclusive time.

    sudo .venv/bin/python bench/profile.py smtp --size 1024 --sessions 10 --messages 3000
    sudo .venv/bin/python bench/profile.py pop3 --count 1000 --size 1024
    ... --profiler cprofile      # twistd --profile --profiler=cprofile --savestats

``py-spy`` (sampling only the thread holding the GIL, low overhead, from
bench/setup.sh's venv-tools) is the
default; ``cprofile`` gives exact call counts but slows Python code down
several times, so read its numbers as shares, not as speed.
"""

from __future__ import annotations

import argparse
import os
import poplib
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl
import pop3 as pop3bench

PYSPY = os.path.join(bl.BENCH_HOME, "venv-tools", "bin", "py-spy")


def short(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py:123)' keeping the package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def summarize_pyspy(raw: str, top: int) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [short(fr) for fr in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"py-spy: {total} samples", "", "own time (self):"]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in own.most_common(top)]
    out += ["", "inclusive (function and callees), txmailhub and twisted frames:"]
    shown = 0
    for fr, n in incl.most_common():
        if "txmailhub/" in fr or "twisted/" in fr:
            out.append(f"  {100 * n / total:5.1f}%  {fr}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def summarize_cprofile(path: str, top: int) -> str:
    import io

    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("load", choices=("smtp", "pop3"))
    ap.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--messages", type=int, default=3000, help="SMTP messages")
    ap.add_argument("--reuse", action="store_true", help="smtp-source -d: many messages "
                    "per connection")
    ap.add_argument("--count", type=int, default=1000, help="POP3 messages in the Maildir")
    ap.add_argument("--pop3-sessions", type=int, default=3)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--fs", choices=("loop", "tmp"), default="loop")
    ap.add_argument("--out", default="", help="keep the raw profile here")
    args = ap.parse_args()

    with bl.exclusive():
        return run(args)


def run(args: argparse.Namespace) -> int:
    workdir = os.path.join(bl.BENCH_HOME, "run-profile")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    raw = args.out or os.path.join(workdir, "profile.raw" if args.profiler == "py-spy"
                                   else "profile.pstats")
    with bl.BenchFS(args.fs) as fs, bl.Servers() as servers:
        spool = os.path.join(fs.root, "txmailhub")
        extra: tuple[str, ...] = ()
        if args.profiler == "cprofile":
            extra = (f"--profile={raw}", "--profiler=cprofile", "--savestats")
        server = bl.hub_server(os.path.join(workdir, "hub"), spool, extra_twistd=extra,
                               main=args.load)
        if args.load == "pop3":
            pop3bench.seed(bl.hub_maildir(spool) + ".seed", args.count, args.size)
            pop3bench.copy_maildir(bl.hub_maildir(spool) + ".seed", bl.hub_maildir(spool))
        servers.add(server)
        time.sleep(1)
        spy = None
        if args.profiler == "py-spy":
            if not os.path.exists(PYSPY):
                raise SystemExit(f"{PYSPY} missing: run bench/setup.sh")
            # Attach for the load only (startup and imports stay out of it).
            spy = subprocess.Popen([PYSPY, "record", "--nonblocking", "--gil", "-r", str(args.rate),
                                    "-f", "raw", "-o", raw, "--pid", str(server.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1)
            if spy.poll() is not None:
                raise SystemExit("py-spy failed: " + spy.stderr.read().decode()[-500:])
        t0 = time.monotonic()
        if args.load == "smtp":
            argv = ["/usr/sbin/smtp-source", "-s", str(args.sessions), "-m", str(args.messages),
                    "-l", str(args.size), "-f", "sender@bench.example", "-t", bl.RCPT,
                    f"127.0.0.1:{server.port}"]
            if args.reuse:
                argv.insert(1, "-d")
            subprocess.run(argv, check=False, timeout=600)
            n = args.messages
            print(f"stored {bl.maildir_count(bl.hub_maildir(spool))}/{n}", flush=True)
        else:
            n = 0
            for _ in range(args.pop3_sessions):
                pop = poplib.POP3("127.0.0.1", server.port, timeout=60)
                pop.user(bl.RCPT)
                pop.pass_(bl.PASSWORD)
                count = len(pop.list()[1])
                for i in range(1, count + 1):
                    pop.retr(i)
                pop.quit()
                n += count
        wall = time.monotonic() - t0
        print(f"{n} messages in {wall:.2f} s under the profiler", flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(10)
        server.stop()  # SIGTERM: with cProfile, twistd writes its stats now
    time.sleep(0.5)
    if not os.path.exists(raw):
        print(f"no profile written at {raw}", file=sys.stderr)
        return 1
    print(summarize_pyspy(raw, args.top) if args.profiler == "py-spy"
          else summarize_cprofile(raw, args.top))
    print(f"\nraw profile: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
