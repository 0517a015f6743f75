#!/usr/bin/env python3
"""POP3 retrieval benchmark: txmailhub against Dovecot and ``twistd mail``.

For each message set (default 1000 x 1 KiB, 100 x 1 MiB and 1 x 50 MiB) it writes one
seed Maildir and copies it, file for file, to every target; then, per rep
and interleaved (the order rotates per rep), one Python ``poplib`` session
per target: USER/PASS, LIST, RETR of every message, QUIT (no DELE, so reps
repeat on the same mailbox).  A first session per target checks the content
(every retrieved message must equal a seed message) and is not timed.

Reported per target: RETR/s and MiB/s over the RETR loop, session wall time,
server CPU (process tree, /proc) per message in the RETR loop, for login +
LIST (password hashing is a per-session cost: txmailhub verifies an scrypt
hash, the Dovecot instance a plain-text passwd-file entry) and per message
over the whole session, peak RSS (VmHWM after reset; for Dovecot the largest
of its processes), and ratios txmailhub/peer.

Stock ``twistd mail`` needs ~44 ms per RETR (Nagle holds its separately
written final ".\\r\\n" until the client's delayed ACK), so by default it
retrieves only the first ``--slow-cap`` messages per session; the
``twistd-mail-nodelay`` variant (TCP_NODELAY patched in, diagnostic) shows
its speed without that stall.

    sudo .venv/bin/python bench/pop3.py --fs loop --reps 3

Loopback only; every wait is bounded; it stops only the servers it started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import poplib
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl

TARGETS = ("txmailhub", "dovecot", "twistd-mail", "twistd-mail-nodelay")
DEFAULT_TARGETS = ",".join(TARGETS)
TEXT = (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen "
        b"liquor jugs.")


def make_message(i: int, size: int) -> bytes:
    """A plain-text message of exactly ``size`` bytes (LF line ends), with a
    line starting with "." so dot-stuffing is exercised."""
    head = (f"From: Sender <sender@bench.example>\nTo: {bl.RCPT}\n"
            f"Subject: bench message {i}\nMessage-ID: <{i}.seed@bench.example>\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\n\n").encode()
    lines = [b".leading period line " + str(i).encode()]
    body_len = len(head) + len(lines[0]) + 1
    k = 0
    while body_len < size:
        line = TEXT[k % 7:72 + k % 7] or b"x"
        lines.append(line)
        body_len += len(line) + 1
        k += 1
    msg = head + b"\n".join(lines) + b"\n"
    if len(msg) > size:  # trim the last line to hit the size exactly
        cut = len(msg) - size
        last = lines[-1][: max(1, len(lines[-1]) - cut)]
        msg = head + b"\n".join([*lines[:-1], last]) + b"\n"
    return msg


def seed(directory: str, count: int, size: int) -> dict[str, int]:
    """Write the seed Maildir; return {sha1: count} of the contents."""
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    digests: dict[str, int] = {}
    base = 1795860000
    for i in range(count):
        msg = make_message(i, size)
        crlf_size = len(msg) + msg.count(b"\n")
        name = f"{base + i}.M{i}P1Q{i}.seed,S={len(msg)},W={crlf_size}"
        with open(os.path.join(directory, "new", name), "wb") as f:
            f.write(msg)
        d = hashlib.sha1(msg).hexdigest()
        digests[d] = digests.get(d, 0) + 1
    return digests


def copy_maildir(src: str, dst: str) -> None:
    for sub in ("new", "cur", "tmp"):
        d = os.path.join(dst, sub)
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
    for name in os.listdir(os.path.join(src, "new")):
        shutil.copyfile(os.path.join(src, "new", name), os.path.join(dst, "new", name))


def start_target(name: str, fs_root: str, workdir: str, seed_dir: str,
                 servers: bl.Servers) -> bl.Server:
    spool = os.path.join(fs_root, name)
    if name == "txmailhub":
        server = bl.hub_server(os.path.join(workdir, "txmailhub"), spool, main="pop3")
        # hub_server added the user; put the mail in place before starting.
        copy_maildir(seed_dir, bl.hub_maildir(spool))
    elif name == "dovecot":
        maildir = os.path.join(spool, bl.USER)
        copy_maildir(seed_dir, maildir)
        server = bl.dovecot_server(workdir, maildir)
    elif name in ("twistd-mail", "twistd-mail-nodelay"):
        copy_maildir(seed_dir, os.path.join(spool, bl.USER))
        server = bl.twistd_mail_server(workdir, spool, name=name, smtp=False,
                                       nodelay=name.endswith("nodelay"))
    else:
        raise SystemExit(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    servers.add(server)
    return server


def session(server: bl.Server, limit: int | None, digests: dict[str, int] | None,
            timeout: float) -> dict:
    """One POP3 session; with ``digests``, check every message's content."""
    pids = bl.process_tree(server.pid)
    bl.reset_peak_rss(pids)
    cpu0 = bl.cpu_seconds(pids)
    busy0, self0 = bl.machine_busy_seconds(), bl.self_cpu_seconds()
    t0 = time.monotonic()
    pop = poplib.POP3("127.0.0.1", server.port, timeout=timeout)
    pop.user(bl.RCPT)
    pop.pass_(bl.PASSWORD)
    _, listing, _ = pop.list()
    count = len(listing)
    listed_octets = sum(int(line.split()[1]) for line in listing)
    n = min(count, limit) if limit else count
    pids1 = bl.process_tree(server.pid)
    # Peak memory of the RETR loop alone (login may hash a password: scrypt
    # takes 16 MiB for a moment in txmailhub).
    bl.reset_peak_rss(pids1)
    rss1 = bl.rss_kb(pids1)
    cpu1 = bl.cpu_seconds(pids1)
    t1 = time.monotonic()
    octets = 0
    bad = 0
    seen: dict[str, int] = {}
    for i in range(1, n + 1):
        _, lines, size = pop.retr(i)
        octets += size
        if digests is not None:
            d = hashlib.sha1(b"\n".join(lines) + b"\n").hexdigest()
            seen[d] = seen.get(d, 0) + 1
            if seen[d] > digests.get(d, 0):
                bad += 1
    t2 = time.monotonic()
    cpu2 = bl.cpu_seconds(bl.process_tree(server.pid))
    pop.quit()
    t3 = time.monotonic()
    pids_end = bl.process_tree(server.pid)
    cpu = bl.cpu_seconds(pids_end) - cpu0
    busy = bl.machine_busy_seconds() - busy0
    self_cpu = bl.self_cpu_seconds() - self0
    retr_s = t2 - t1
    return {
        "messages_listed": count, "listed_octets": listed_octets, "retrieved": n,
        "octets": octets, "content_mismatches": bad if digests is not None else None,
        "session_s": t3 - t0, "login_list_s": t1 - t0, "retr_s": retr_s,
        "retr_per_s": n / retr_s if retr_s > 0 else None,
        "mib_per_s": octets / retr_s / 2**20 if retr_s > 0 else None,
        "server_cpu_s": cpu, "server_cpu_ms_per_msg": cpu * 1000 / n if n else None,
        # The RETR loop alone: login (password hashing) is a per-session cost.
        "retr_cpu_ms_per_msg": (cpu2 - cpu1) * 1000 / n if n else None,
        "login_list_cpu_ms": (cpu1 - cpu0) * 1000,
        "client_cpu_s": self_cpu,
        "foreign_cpu_cores": max(0.0, busy - cpu - self_cpu) / (t3 - t0),
        "peak_rss_kb": bl.peak_rss_kb(pids_end),
        "rss_before_retr_kb": rss1,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None (left out of the median) when either is missing or
    ``b`` is 0."""
    return a / b if a is not None and b else None


def report(records: list[dict], targets: list[str], ref: str) -> str:
    parts = []
    for label in dict.fromkeys(r["set"] for r in records):
        runs = [r for r in records if r["set"] == label and not r["warmup"]]
        parts += [f"### {label} (median of {max((r['rep'] for r in runs), default=-1) + 1} "
                  "warm sessions)", ""]
        rows = []
        for name in targets:
            rs = [r for r in runs if r["target"] == name and r.get("ok")]
            if not rs:
                ran = any(r["target"] == name for r in records if r["set"] == label)
                rows.append([name, *["-"] * 9, "failed" if ran else "not started"])
                continue
            warm = [r for r in records if r["set"] == label and r["warmup"]
                    and r["target"] == name]
            check = "ok" if warm and warm[0].get("content_mismatches") == 0 else "MISMATCH"
            rows.append([
                name, f"{rs[0]['retrieved']}/{rs[0]['messages_listed']}",
                bl.fmt(bl.median([r["session_s"] for r in rs]), 3),
                bl.fmt(bl.median([r["retr_per_s"] for r in rs]), 0),
                bl.fmt(bl.median([r["mib_per_s"] for r in rs]), 1),
                bl.fmt(bl.median([r["retr_cpu_ms_per_msg"] for r in rs]), 3),
                bl.fmt(bl.median([r["login_list_cpu_ms"] for r in rs]), 0),
                bl.fmt(bl.median([r["server_cpu_ms_per_msg"] for r in rs]), 3),
                bl.fmt(bl.median([r["peak_rss_kb"] / 1024 for r in rs]), 1),
                bl.fmt(bl.median([(r["peak_rss_kb"] - r["rss_before_retr_kb"]) / 1024
                                  for r in rs]), 1),
                check,
            ])
        parts += [bl.markdown_table(["target", "RETR'd/listed", "session s", "RETR/s", "MiB/s",
                                     "CPU ms/msg (RETR loop)", "CPU ms login+LIST",
                                     "CPU ms/msg (session)", "peak RSS MiB",
                                     "RSS growth in RETR loop MiB", "content"], rows),
                  ""]
        mine = {r["rep"]: r for r in runs if r["target"] == ref and r.get("ok")}
        rows = []
        for peer in targets:
            if peer == ref:
                continue
            # only the peers that ran a rep beside the reference: a target
            # that did not start (or failed every session) has no ratio
            paired = [(mine[r["rep"]], r) for r in runs
                      if r["target"] == peer and r.get("ok") and r["rep"] in mine]
            if not paired:
                continue
            rows.append([
                peer,
                bl.fmt(bl.median([_ratio(m["retr_per_s"], r["retr_per_s"])
                                  for m, r in paired]), 2),
                bl.fmt(bl.median([_ratio(m["mib_per_s"], r["mib_per_s"]) for m, r in paired]), 2),
                bl.fmt(bl.median([_ratio(r["retr_cpu_ms_per_msg"], m["retr_cpu_ms_per_msg"])
                                  for m, r in paired]), 2)])
        if rows:
            parts += [f"Ratios, paired per rep: {ref}/peer RETR/s and MiB/s (> 1: {ref} "
                      f"faster); CPU in the RETR loop, peer/{ref} (> 1: {ref} uses less)", "",
                      bl.markdown_table(["peer", "RETR/s ratio", "MiB/s ratio", "CPU ratio"],
                                        rows), ""]
        foreign = [r["foreign_cpu_cores"] for r in runs]
        parts += [f"Foreign CPU load: median {bl.fmt(bl.median(foreign), 2)} cores, max "
                  f"{bl.fmt(max(foreign, default=float('nan')), 2)}.", ""]
    failed = [r for r in records if not r.get("ok")]
    for r in failed[:10]:
        parts.append(f"- failed: {r['target']} {r['set']} rep {r['rep']}: {r.get('error')}")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma list from {','.join(TARGETS)}")
    ap.add_argument("--sets", default="1000x1024,100x1048576,1x52428800",
                    help="message sets COUNTxBYTES, comma separated")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--slow-cap", type=int, default=100,
                    help="RETR at most this many messages per session from stock twistd-mail "
                         "(0 = all; each RETR costs ~44 ms there)")
    ap.add_argument("--fs", choices=("loop", "tmp"), default="loop")
    ap.add_argument("--keep-fs", action="store_true")
    ap.add_argument("--timeout", type=float, default=60, help="socket timeout, seconds")
    ap.add_argument("--out", default="")
    ap.add_argument("--markdown", default="")
    args = ap.parse_args()

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    sets = []
    for spec in args.sets.split(","):
        count, size = spec.lower().split("x")
        sets.append((int(count), int(size)))
    with bl.exclusive():
        return run(args, targets, sets)


def run(args: argparse.Namespace, targets: list[str], sets: list[tuple[int, int]]) -> int:
    workdir = os.path.join(bl.BENCH_HOME, "run-pop3")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    out_path = args.out or os.path.join(workdir, "pop3.jsonl")
    meta = {"versions": bl.versions(), "argv": sys.argv, "date": time.strftime("%F %T %Z")}
    print(json.dumps(meta, indent=1), flush=True)
    records: list[dict] = []

    with bl.BenchFS(args.fs, keep=args.keep_fs) as fs, open(out_path, "w") as out:
        meta["fs"] = fs.describe()
        out.write(json.dumps({"meta": meta}) + "\n")
        for count, size in sets:
            label = f"{count} x {size // 1024} KiB" if size < 2**20 else \
                f"{count} x {size / 2**20:g} MiB"
            print(f"== {label}", flush=True)
            set_root = os.path.join(fs.root, f"set-{count}x{size}")
            seed_dir = os.path.join(set_root, "seed")
            digests = seed(seed_dir, count, size)
            with bl.Servers() as servers:
                def start(name: str, set_root: str = set_root, seed_dir: str = seed_dir,
                          servers: bl.Servers = servers) -> bl.Server:
                    server = start_target(name, set_root, workdir, seed_dir, servers)
                    print(f"started {name} pid {server.pid} port {server.port}", flush=True)
                    return server

                started = bl.start_each(targets, start)  # none: exit 1, with a line
                os.sync()  # the copies reach the disk before anything is timed
                running = [n for n in targets if n in started]
                for rep in range(-1, args.reps):
                    order = running[rep % len(running):] + running[:rep % len(running)]
                    for name in order:
                        server = started[name]
                        limit = args.slow_cap if name == "twistd-mail" and args.slow_cap \
                            else None
                        rec = {"target": name, "set": label, "count": count, "size": size,
                               "rep": rep, "warmup": rep < 0}
                        try:
                            rec.update(session(server, limit, digests if rep < 0 else None,
                                               args.timeout))
                            rec["ok"] = (rec["messages_listed"] == count and
                                         rec["content_mismatches"] in (None, 0))
                        except (OSError, poplib.error_proto) as exc:
                            rec.update(ok=False, error=repr(exc))
                        records.append(rec)
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        if rec["ok"]:
                            print(f"  {name:<20} rep {rep:>2}: {rec['retr_per_s']:9.0f} RETR/s "
                                  f"{rec['mib_per_s']:7.1f} MiB/s cpu "
                                  f"{rec['retr_cpu_ms_per_msg']:.3f} ms/msg (login "
                                  f"{rec['login_list_cpu_ms']:.0f} ms) foreign "
                                  f"{rec['foreign_cpu_cores']:.2f}"
                                  + ("" if rec["content_mismatches"] is None else
                                     f" content mismatches {rec['content_mismatches']}"),
                                  flush=True)
                        else:
                            print(f"  {name:<20} rep {rep:>2}: FAILED {rec.get('error', rec)}",
                                  flush=True)
            shutil.rmtree(set_root, ignore_errors=True)

    return bl.publish(report(records, targets, "txmailhub"), records, args.markdown, out_path)


if __name__ == "__main__":
    sys.exit(main())
