#!/usr/bin/env python3
"""SMTP ingest benchmark: txmailhub against its peers, interleaved per rep.

Load generator: Postfix's ``smtp-source`` (one connection per message unless
``--reuse``).  For every cell of sizes x sessions, every rep runs each
target once (the order rotates per rep) so the ratios compare runs made on
the same machine within the same minute or two.

Per run it measures: stored messages/s (until MAILDIR/new holds all of them),
accepted messages/s (smtp-source's own wall time), server CPU ms per message
(utime+stime of the server's process tree from /proc), peak RSS (VmHWM after
resetting it with /proc/PID/clear_refs), the foreign CPU load (cores busy
with other processes during the run) and integrity: stored == sent, nothing
left in tmp/.  Then one message of 50 MiB per target for peak memory.

Example (see bench/README.md)::

    sudo bench/setup.sh
    sudo .venv/bin/python bench/smtp.py --fs loop --reps 3 --messages 2000

Loopback only; every wait is bounded; it stops only the servers it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl

TARGETS = ("txmailhub", "aiosmtpd", "aiosmtpd-nofsync", "twistd-mail", "postfix", "smtp-sink",
           "floor", "floor-inline", "floor-pool", "floor-nofsync", "floor-aio")
DEFAULT_TARGETS = "txmailhub,aiosmtpd,aiosmtpd-nofsync,twistd-mail,postfix"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


class Target:
    def __init__(self, name: str, server: bl.Server, maildir: str | None) -> None:
        self.name = name
        self.server = server
        self.maildir = maildir  # None: a discarding server


def make_target(name: str, fs_root: str, workdir: str) -> Target:
    spool = os.path.join(fs_root, name)
    os.makedirs(spool, exist_ok=True)
    if name == "txmailhub":
        server = bl.hub_server(os.path.join(workdir, "txmailhub"), spool)
        return Target(name, server, bl.hub_maildir(spool))
    if name in ("aiosmtpd", "aiosmtpd-nofsync"):
        server = bl.aiosmtpd_server(workdir, spool, fsync=name == "aiosmtpd", name=name)
        maildir = os.path.join(spool, bl.USER)
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        return Target(name, server, maildir)
    if name == "twistd-mail":
        server = bl.twistd_mail_server(workdir, spool, name=name, pop3=False)
        return Target(name, server, os.path.join(spool, bl.USER))
    if name == "postfix":
        server = bl.postfix_server(workdir, spool)
        return Target(name, server, os.path.join(spool, "vmail", bl.DOMAIN, bl.USER))
    if name.startswith("floor"):
        # what any Twisted server pays at least: see peers/floor_maildir.py
        sync = {"floor": "thread", "floor-inline": "inline", "floor-pool": "pool",
                "floor-nofsync": "none", "floor-aio": "aio"}[name]
        maildir = os.path.join(spool, bl.USER)
        return Target(name, bl.floor_server(workdir, maildir, sync, name), maildir)
    if name == "smtp-sink":
        return Target(name, bl.smtp_sink_server(workdir), None)
    raise SystemExit(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def run_once(t: Target, size: int, sessions: int, messages: int, reuse: bool,
             timeout: float, settle: float) -> dict:
    """One smtp-source run against one target; returns the measurements."""
    if t.maildir:
        bl.maildir_clear(t.maildir)
    # Start every run with nothing dirty in the page cache: otherwise a server
    # that syncs (fsync's journal commit, syncfs) pays for the writes the
    # previous, non-syncing target left behind.
    os.sync()
    if t.maildir:
        create_us = bl.fs_create_us(os.path.join(os.path.dirname(t.maildir.rstrip("/")),
                                                 ".probe"))
    else:
        create_us = None
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", "sender@bench.example", "-t", bl.RCPT, "-M", "client.bench.localhost"]
    if reuse:
        argv.append("-d")
    argv.append(f"127.0.0.1:{t.server.port}")

    pids = bl.process_tree(t.server.pid)
    bl.reset_peak_rss(pids)
    rss_before = bl.rss_kb(pids)
    cpu0 = bl.cpu_seconds(pids)
    busy0, kids0, self0 = bl.machine_busy_seconds(), bl.children_cpu_seconds(), \
        bl.self_cpu_seconds()
    t0 = time.monotonic()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = client.communicate(timeout=timeout)
        rc = client.returncode
    except subprocess.TimeoutExpired:
        client.kill()
        _, err = client.communicate()
        rc = "timeout"
    t_accept = time.monotonic() - t0
    stored = None
    t_stored = None
    if t.maildir:
        deadline = time.monotonic() + settle
        while True:
            stored = bl.maildir_count(t.maildir)
            if stored >= messages or time.monotonic() > deadline or not t.server.alive():
                break
            time.sleep(0.005)
        t_stored = time.monotonic() - t0
    pids = bl.process_tree(t.server.pid) if t.server.alive() else pids
    cpu = bl.cpu_seconds(pids) - cpu0
    hwm = bl.peak_rss_kb(pids)
    busy = bl.machine_busy_seconds() - busy0
    client_cpu = bl.children_cpu_seconds() - kids0
    self_cpu = bl.self_cpu_seconds() - self0
    wall = t_stored or t_accept
    rec = {
        "target": t.name, "size": size, "sessions": sessions, "messages": messages,
        "reuse": reuse, "rc": rc, "stderr_tail": err.decode(errors="replace")[-300:],
        "accept_s": round(t_accept, 4), "stored_s": t_stored and round(t_stored, 4),
        "accept_msgs_per_s": messages / t_accept if t_accept else None,
        "stored_msgs_per_s": (messages / t_stored) if (t_stored and stored == messages)
        else None,
        "stored": stored,
        "lost": (messages - stored) if stored is not None else None,
        "tmp_leftover": bl.maildir_count(t.maildir, "tmp") if t.maildir else None,
        "cur": bl.maildir_count(t.maildir, "cur") if t.maildir else None,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_msg": cpu * 1000 / messages,
        "server_cpu_cores": cpu / wall if wall else None,
        "client_cpu_s": round(client_cpu, 3),
        "foreign_cpu_cores": max(0.0, busy - cpu - client_cpu - self_cpu) / wall if wall else None,
        "rss_before_kb": rss_before, "peak_rss_kb": hwm,
        "fs_create_us": create_us and round(create_us, 1),
        "server_alive": t.server.alive(),
        "cmd": " ".join(argv),
    }
    rec["ok"] = rc == 0 and (t.maildir is None or (stored == messages and
                                                   rec["tmp_leftover"] == 0))
    if t.maildir:  # the spool filesystem holds only the running target's mail
        bl.maildir_clear(t.maildir)
    return rec


def report(records: list[dict], targets: list[str], ref: str) -> str:
    """Markdown tables: stored msgs/s, CPU ms/msg, ratios ref/peer."""
    cells = sorted({(r["size"], r["sessions"]) for r in records if r["messages"] > 1})
    header_cells = [f"{_size(s)} c={c}" for s, c in cells]
    by = {}
    for r in records:
        if r["messages"] > 1:
            by.setdefault((r["target"], r["size"], r["sessions"]), []).append(r)

    def col(name: str, key: str, digits: int) -> list[str]:
        out = []
        for s, c in cells:
            runs = by.get((name, s, c), [])
            vals = [r[key] for r in runs if r["ok"] and r[key] is not None]
            bad = sum(1 for r in runs if not r["ok"])
            txt = bl.fmt(bl.median(vals), digits) if vals else "-"
            out.append(txt + (f" ({bad} failed)" if bad else ""))
        return out

    rate_key = "stored_msgs_per_s"
    parts = ["Stored messages/s (median over reps; smtp-sink: accepted/s)", ""]
    rows = []
    for name in targets:
        key = rate_key if name != "smtp-sink" else "accept_msgs_per_s"
        rows.append([name, *col(name, key, 0)])
    parts += [bl.markdown_table(["target", *header_cells], rows), ""]
    parts += ["Server CPU ms per message (median)", ""]
    rows = [[name, *col(name, "server_cpu_ms_per_msg", 3)] for name in targets]
    parts += [bl.markdown_table(["target", *header_cells], rows), ""]

    if ref in targets:
        parts += [f"Ratios {ref}/peer, stored msgs/s, paired per rep (median of the "
                  f"per-rep ratios; > 1 means {ref} is faster)", ""]
        rows = []
        for peer in targets:
            if peer == ref:
                continue
            row = [peer]
            for s, c in cells:
                ratios = []
                mine = {r["rep"]: r for r in by.get((ref, s, c), []) if r["ok"]}
                for r in by.get((peer, s, c), []):
                    m = mine.get(r["rep"])
                    key = rate_key if peer != "smtp-sink" else "accept_msgs_per_s"
                    if m and r["ok"] and m[rate_key] and r[key]:
                        ratios.append(m[rate_key] / r[key])
                row.append(bl.fmt(bl.median(ratios), 2) if ratios else "-")
            rows.append(row)
        parts += [bl.markdown_table(["peer", *header_cells], rows), ""]
        parts += [f"CPU per message, peer/{ref} (> 1 means {ref} uses less CPU)", ""]
        rows = []
        for peer in targets:
            if peer == ref:
                continue
            row = [peer]
            for s, c in cells:
                mine = [r["server_cpu_ms_per_msg"] for r in by.get((ref, s, c), []) if r["ok"]]
                theirs = [r["server_cpu_ms_per_msg"] for r in by.get((peer, s, c), [])
                          if r["ok"]]
                if mine and theirs and bl.median(mine) > 0:
                    row.append(bl.fmt(bl.median(theirs) / bl.median(mine), 2))
                else:
                    row.append("-")
            rows.append(row)
        parts += [bl.markdown_table(["peer", *header_cells], rows), ""]

    runs = [r for r in records if r["messages"] > 1]
    lost = sum(r["lost"] or 0 for r in runs if r["lost"] and r["lost"] > 0)
    extra = sum(-r["lost"] for r in runs if r["lost"] and r["lost"] < 0)
    tmp_left = sum(r["tmp_leftover"] or 0 for r in runs)
    failed = [r for r in runs if not r["ok"]]
    foreign = [r["foreign_cpu_cores"] for r in runs if r["foreign_cpu_cores"] is not None]
    fsc = [r["fs_create_us"] for r in runs if r["fs_create_us"]]
    parts += [f"Integrity: {len(runs)} runs, {len(failed)} failed, {lost} messages missing, "
              f"{extra} extra, {tmp_left} files left in tmp/.",
              f"Foreign CPU load during runs: median {bl.fmt(bl.median(foreign), 2)} cores, "
              f"max {bl.fmt(max(foreign, default=float('nan')), 2)}; "
              f"file create in the spool fs: median {bl.fmt(bl.median(fsc), 0)} us.", ""]
    for r in failed[:10]:
        parts.append(f"- failed: {r['target']} {_size(r['size'])} c={r['sessions']} rep "
                     f"{r['rep']}: rc={r['rc']} stored={r['stored']}/{r['messages']} "
                     f"tmp={r['tmp_leftover']} {r['stderr_tail'].strip()[:160]}")

    large = [r for r in records if r["messages"] == 1]
    if large:
        parts += ["", f"One message of {_size(large[0]['size'])}: peak RSS (VmHWM; "
                  "growth = peak - RSS before)", ""]
        rows = []
        for name in targets:
            runs = [r for r in large if r["target"] == name]
            if not runs:
                continue
            ok = all(r["ok"] for r in runs)
            rows.append([name,
                         bl.fmt(bl.median([r["rss_before_kb"] / 1024 for r in runs]), 1),
                         bl.fmt(bl.median([r["peak_rss_kb"] / 1024 for r in runs]), 1),
                         bl.fmt(bl.median([(r["peak_rss_kb"] - r["rss_before_kb"]) / 1024
                                           for r in runs]), 1),
                         bl.fmt(bl.median([r["stored_s"] or r["accept_s"] for r in runs]), 2),
                         "yes" if ok else "NO"])
        parts.append(bl.markdown_table(
            ["target", "RSS before MiB", "peak MiB", "growth MiB", "wall s", "stored ok"], rows))
    return "\n".join(parts)


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma list from {','.join(TARGETS)} (default {DEFAULT_TARGETS})")
    ap.add_argument("--sizes", default="1024,102400", help="payload bytes (smtp-source -l)")
    ap.add_argument("--sessions", default="1,10", help="parallel sessions (smtp-source -s)")
    ap.add_argument("--messages", type=int, default=2000, help="messages per run")
    ap.add_argument("--max-mib", type=int, default=100,
                    help="cap a run at this many MiB of payload (fewer messages for big sizes; "
                         "at least 200 messages)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--reuse", action="store_true",
                    help="keep the connection for several messages (smtp-source -d)")
    ap.add_argument("--large", type=int, default=50 * 1024 * 1024,
                    help="size of the single large message (0 = skip)")
    ap.add_argument("--large-reps", type=int, default=2)
    ap.add_argument("--fs", choices=("loop", "tmp"), default="loop",
                    help="spools on a fresh loop-mounted ext4 (default) or under /tmp")
    ap.add_argument("--keep-fs", action="store_true")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per smtp-source run")
    ap.add_argument("--settle", type=float, default=60,
                    help="seconds to wait for the Maildir after smtp-source ends")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    ap.add_argument("--out", default="", help="JSONL file for every run (default: in workdir)")
    ap.add_argument("--markdown", default="", help="also write the tables to this file")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("warning: not root; clear_refs/loop mount may fail", file=sys.stderr)
    if not os.path.exists(SMTP_SOURCE):
        raise SystemExit("smtp-source not found: run bench/setup.sh (Debian package postfix)")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    sizes = [int(x) for x in args.sizes.split(",")]
    sessions = [int(x) for x in args.sessions.split(",")]
    with bl.exclusive():
        return run(args, targets, sizes, sessions)


def run(args: argparse.Namespace, targets: list[str], sizes: list[int],
        sessions: list[int]) -> int:
    workdir = os.path.join(bl.BENCH_HOME, "run-smtp")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    out_path = args.out or os.path.join(workdir, "smtp.jsonl")
    records: list[dict] = []
    meta = {"versions": bl.versions(), "argv": sys.argv, "date": time.strftime("%F %T %Z")}
    print(json.dumps(meta, indent=1), flush=True)

    with bl.BenchFS(args.fs, keep=args.keep_fs) as fs, bl.Servers() as servers, \
            open(out_path, "w") as out:
        meta["fs"] = fs.describe()
        out.write(json.dumps({"meta": meta}) + "\n")
        print("spool filesystem:", meta["fs"], flush=True)
        def start(name: str) -> Target:
            t = make_target(name, fs.root, workdir)
            servers.add(t.server)
            print(f"started {name} pid {t.server.pid} port {t.server.port}", flush=True)
            return t

        tgts = list(bl.start_each(targets, start).values())  # none: exit 1, with a line
        targets = [t.name for t in tgts]

        def record(rec: dict) -> None:
            records.append(rec)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            print(f"  {rec['target']:<17} {_size(rec['size']):>8} c={rec['sessions']:<3} "
                  f"rep {rec['rep']}: stored/s {bl.fmt(rec['stored_msgs_per_s'])} "
                  f"accept/s {bl.fmt(rec['accept_msgs_per_s'])} "
                  f"cpu {rec['server_cpu_ms_per_msg']:.3f} ms/msg "
                  f"foreign {bl.fmt(rec['foreign_cpu_cores'], 2)} "
                  + ("ok" if rec["ok"] else f"FAILED rc={rec['rc']} stored={rec['stored']}"),
                  flush=True)

        for size in sizes:
            for conc in sessions:
                for rep in range(args.reps):
                    order = tgts[rep % len(tgts):] + tgts[:rep % len(tgts)]
                    for t in order:
                        if not t.server.alive():
                            print(f"  {t.name} is not running; skipped", flush=True)
                            continue
                        count = min(args.messages, max(200, (args.max_mib << 20) // size))
                        rec = run_once(t, size, conc, count, args.reuse,
                                       args.timeout, args.settle)
                        rec["rep"] = rep
                        record(rec)
                        time.sleep(args.pause)
        if args.large:
            for rep in range(args.large_reps):
                for t in tgts:
                    if t.maildir is None or not t.server.alive():
                        continue
                    rec = run_once(t, args.large, 1, 1, False, args.timeout, args.settle)
                    rec["rep"] = rep
                    record(rec)
                    time.sleep(args.pause)
        for t in tgts:
            if t.maildir:
                bl.maildir_clear(t.maildir)

    return bl.publish(report(records, targets, "txmailhub"), records, args.markdown, out_path)


if __name__ == "__main__":
    sys.exit(main())
