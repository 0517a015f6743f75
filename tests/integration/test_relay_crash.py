"""Durability of the outbound queue: SIGKILL the hub while the relay works.

test_smtp_crash.py kills the hub while it takes mail in; this kills it
while it gives mail out.  One message for four remote recipients in two
domains is queued: ``a1@a.test``, ``a2@a.test`` and ``b1@b.test`` asked
for a success notice too (``NOTIFY=SUCCESS,FAILURE``; the next hop offers
no DSN, so each gets a "relayed" notice), ``bad@a.test`` is refused at
RCPT with a 550 (a failure notice).  Both notices go back to the remote
sender through the same next hop.  The hub is killed at one moment of
that work, chosen in advance, never by a sleep:

* by the DNS server or the next hop, as something reaches them (the
  first MX query: before connecting; the 4000th octet of a.test's data;
  a.test's final "." -- taken, and the hub killed before it hears the
  250; the first notice's ".");
* by the hub itself (``crashpoint.py``) before the n-th step of the
  queue's file work: a partial success being written (a.test done,
  b.test still in its session), the failure notice being queued, the
  record that says it was sent, the success notice being queued, the
  entry's removal.

Then ``queue list`` and ``queue show`` are run on what the kill left,
the hub is started again and the queue runs dry.  What must hold
(docs/relay.rst, "The queue"):

* the hub died where the case meant it to: its own kill after a clean
  run's steps up to that one (``CLEAN_STEPS``), a peer's with what that
  peer had taken by then -- a kill that lands elsewhere fails the case
  rather than testing another moment;
* every recipient the next hop accepts gets the message at least once,
  and twice at most only when the hub died between the next hop taking
  it and the record saying so (RFC 5321 6.1: a duplicate, not a loss);
* the refused recipient is bounced, never delivered; no delivered
  recipient is named in a failure notice nor the refused one in a
  success notice; each notice arrives, twice at most only when the hub
  died between making it (or the next hop taking it) and the record
  saying so;
* ``queue list`` and ``queue show`` work on the killed hub's queue and
  say what its records say; after the restart nothing is left: no
  entry, no temporary or orphan file, nothing set aside as corrupt, no
  spool file of the killed process.
"""

from __future__ import annotations

import io
import json
import os
import signal
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest
from crashpoint import ENV, write_launcher
from relayutil import DNSServer, LineSessionServer, wait_for

from txmailhub.cli import main

SENDER = "zed@remote.test"
NOTIFY = ["NOTIFY=SUCCESS,FAILURE"]
GOOD = ["a1@a.test", "a2@a.test", "b1@b.test"]
BAD = "bad@a.test"
MARK = b"X-Test-Id: crash-1"
BODY = (b"From: zed@remote.test\r\n" + MARK + b"\r\nSubject: crash test\r\n\r\n"
        + b"a line of the body, repeated to make some kilobytes of data\r\n" * 200)


class NextHop(LineSessionServer):
    """The remote SMTP server for every domain (a thread per session).

    Records each transaction it took as ``(sender, rcpts, data)``.
    ``on_data(sender, rcpts, octets, final)`` is called as the data grows
    and once more when the final "." has arrived (``final``), before the
    reply; it returns True to end the session there without a word (the
    message is taken all the same after the ".": a server that committed
    it and whose 250 never reached the hub).  ``before_reply(rcpts)`` runs
    before the 250 to the "." (``setup`` uses it so that the hub's file
    steps come in one order: a.test's results, b.test's, the test
    message's removal, the notices')."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.on_data: Callable[[str, list[str], int, bool], bool] = lambda *a: False
        self.before_reply: Callable[[list[str]], None] = lambda rcpts: None
        self.lock = threading.Lock()
        self._serve()

    def _session(self, rfile, wfile) -> None:
        def say(data: bytes) -> None:
            self.say(wfile, data)

        try:
            say(b"220 next-hop.test ESMTP\r\n")
            sender, rcpts = "", []
            for line in iter(lambda: rfile.readline(4096), b""):
                verb = line[:4].upper()
                if verb == b"EHLO":
                    say(b"250-next-hop.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                        b"250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"MAIL":
                    sender, rcpts = line.split(b"<", 1)[1].split(b">", 1)[0].decode(), []
                    say(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    addr = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    if addr == BAD:
                        say(b"550 5.1.1 no such user\r\n")
                    else:
                        rcpts.append(addr)
                        say(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    say(b"354 go ahead\r\n")
                    size = 0

                    def counted(data: bytes, sender=sender, rcpts=rcpts) -> bool:
                        nonlocal size
                        size += len(data)
                        return self.on_data(sender, rcpts, size, False)

                    chunks = self.read_data(rfile, counted)
                    if chunks is None:
                        return  # cut in the middle of the data, or on_data ended it
                    with self.lock:
                        self.messages.append((sender, list(rcpts), b"".join(chunks)))
                    if self.on_data(sender, rcpts, size, True):
                        return
                    self.before_reply(rcpts)
                    say(b"250 2.0.0 taken\r\n")
                elif self.answer_other(wfile, verb):
                    return  # QUIT
        except OSError:
            return  # the hub died

    def copies(self) -> dict[str, int]:
        """How many copies of the test message each recipient got."""
        out: dict[str, int] = {}
        with self.lock:
            for sender, rcpts, data in self.messages:
                if sender == SENDER and MARK in data:
                    for r in rcpts:
                        out[r] = out.get(r, 0) + 1
        return out

    def notices(self) -> list[bytes]:
        with self.lock:
            return [data for sender, rcpts, data in self.messages
                    if sender == "" and rcpts == [SENDER]]


class KillingDNS(DNSServer):
    """A DNS server that calls ``on_query()`` as each query arrives."""

    on_query: Callable[[], object] = staticmethod(lambda: None)

    def _answer(self, data: bytes) -> bytes:
        self.on_query()
        return super()._answer(data)


def _trace_lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


@pytest.fixture
def setup(make_hub, tmp_path, monkeypatch):
    """``(start, restart, hop, dns)``: ``start(kill)`` makes and starts a
    hub through the crash-point launcher (``kill``: ``(step, n)`` or
    None); ``restart(hub)`` starts it again without a crash point."""
    hop = NextHop()
    domains = ("a.test", "b.test", "remote.test")
    zone: dict = {d: {"MX": [(10, f"mx.{d}")]} for d in domains}
    zone.update({f"mx.{d}": {"A": ["127.0.0.1"]} for d in domains})
    dns = KillingDNS(zone)
    trace = tmp_path / "trace"
    monkeypatch.setattr(conftest, "TWISTD", str(write_launcher(tmp_path / "twistd-crash")))

    hubs: list = []

    def in_order(rcpts: list[str]) -> None:
        # b.test's 250 waits until the hub logged a.test's results, which
        # it does once they are written and in the same turn of its loop
        # as it counts a.test done (or until the hub died at a crash
        # point): the partial record is always a.test's alone, and the
        # final record b.test's, whatever the threads.  A notice's 250
        # waits until the test message's entry is removed (its record and
        # message unlinked), so that the notices' removals come after it.
        def done() -> bool:
            if rcpts == ["b1@b.test"]:
                return " to bad@a.test: 550" in hubs[-1].log_text()
            return sum(x.startswith("unlink ") for x in _trace_lines(trace)) >= 2

        def dead() -> bool:  # killed by a peer (no KILL line), or stopped
            proc = hubs[-1].proc
            return proc is None or proc.poll() is not None

        if rcpts in (["b1@b.test"], [SENDER]) and hubs:
            # a bound for a hub that hangs, not a timing: past it the order
            # is not kept, and a kill landing elsewhere fails its case
            # (_check_kill_point) instead of testing another moment
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (done() or dead()
                        or any(x.startswith("KILL ") for x in _trace_lines(trace))):
                    return
                time.sleep(0.01)

    hop.before_reply = in_order

    def start(kill: tuple[str, int] | None):
        monkeypatch.setenv(ENV, json.dumps({"trace": str(trace), "kill": kill}))
        # the default retry schedule: nothing here may wait for a retry (a
        # notice owed at the kill goes at the restart, not a minute later)
        hubs.append(make_hub(users={}, sections={"relay": {
            "nameservers": [f"127.0.0.1:{dns.port}"], "port": hop.port}}))
        return hubs[-1]

    def restart(hub) -> None:
        monkeypatch.setenv(ENV, json.dumps({"trace": str(trace), "kill": None}))
        hub.start()

    yield start, restart, hop, dns
    # the hub first: a hub still running (a failed case) may hold a session
    # open, and the next hop's server_close waits for its thread
    for hub in hubs:
        hub.stop()
    dns.stop()
    hop.stop()


def _submit(hub) -> None:
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail(SENDER)[0] == 250
        for rcpt in GOOD:
            assert s.rcpt(rcpt, NOTIFY)[0] == 250
        assert s.rcpt(BAD)[0] == 250
        assert s.data(BODY)[0] == 250


def _records(hub) -> dict[str, dict]:
    """The queue's committed records, as JSON, by queue id."""
    out = {}
    for path in (hub.state_dir / "queue").glob("*.json"):
        try:
            if not path.name.startswith("."):
                out[path.stem] = json.loads(path.read_bytes())
        except FileNotFoundError:  # removed by the running hub meanwhile
            pass
    return out


def _notice_kind(data: bytes) -> str:
    return "relayed" if b"Action: relayed" in data else "failed"


def _states(hub, records: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """The test message's recipient records by address (empty: its entry
    is gone), and the state of each notice in the queue by kind
    ("failed", "relayed")."""
    recipients: dict[str, dict] = {}
    notices: dict[str, str] = {}
    for qid, rec in records.items():
        if rec["envelope"]["sender"] == SENDER:
            recipients = {r["address"]: r for r in rec["recipients"]}
        else:
            kind = _notice_kind((hub.state_dir / "queue" / f"{qid}.msg").read_bytes())
            notices[kind] = rec["recipients"][0]["state"]
    return recipients, notices


def _told(notices: list[bytes], kind: str, rcpt: str) -> int:
    """How many of ``notices`` are ``kind`` notices naming ``rcpt``."""
    field = b"Final-Recipient: rfc822; " + rcpt.encode() + b"\r\n"
    return sum(_notice_kind(d) == kind and field in d for d in notices)


def _mailhub(hub, *args: str) -> str:
    """``mailhub --config ... ARGS``'s output, in this process (the
    command's own code: a subprocess per call is half a second, and this
    module's cases must stay quick); it must succeed."""
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(hub.config_path), *args], out=out, err=err) == 0, err.getvalue()
    return out.getvalue()


def _check_cli(hub, records: dict[str, dict]) -> None:
    """``queue list`` and ``queue show`` on what the kill left say what
    the records say."""
    listed = _mailhub(hub, "queue", "list")
    lines = {line.split()[0]: line.split() for line in listed.splitlines()}
    assert sorted(lines) == sorted(records), listed
    for qid, rec in records.items():
        # the recipients still to deliver or to bounce (all of them when
        # only notices are owed)
        todo = [r["address"] for r in rec["recipients"]
                if r["state"] in ("pending", "failed")
                or (r["state"] == "bounced" and r["notice"])]
        todo = todo or [r["address"] for r in rec["recipients"]]
        fields = lines[qid]
        assert fields[1] == (rec["envelope"]["sender"] or "<>")
        assert fields[2:2 + len(todo)] == todo, (fields, todo)
        assert fields[2 + len(todo)] == str(rec["attempts"])
    if records:
        # by the SMTP server's message id: every entry of the message (its
        # notice's too) in one call
        [message_id] = {rec["envelope"]["message_id"] for rec in records.values()}
        shown = _mailhub(hub, "queue", "show", message_id)
        assert shown.count("\nid: ") + shown.startswith("id: ") == len(records), shown
        for rec in records.values():
            assert f"id: {rec['id']}\n" in shown
            for r in rec["recipients"]:
                assert f"  {r['address']} {r['state']} attempts={r['attempts']}" in shown


def _killer(hub, acked: threading.Event, fired: threading.Event) -> Callable[[], bool]:
    """SIGKILL the hub, once, and not before ``acked`` (the hub looks up
    the next hop as it queues the message, maybe before its 250 is
    written: a kill then is the intake's, test_smtp_crash.py's subject);
    True when this call killed, and ``fired`` set."""
    done: list[bool] = []

    def fire() -> bool:
        if done:
            return False
        done.append(True)
        # the client's session ends first, however slowly a loaded machine
        # runs it (the hub waits meanwhile: its timeouts are minutes); set
        # unless the client's session failed, which the test says itself
        assert acked.wait(600)
        fired.set()  # first: the test may look as soon as the hub is dead
        os.kill(hub.pid, signal.SIGKILL)
        return True

    return fire


def _numbered(lines: list[str]) -> list[str]:
    """Trace lines as ``<step> <count since the start>`` (a kill's too)."""
    counted: dict[str, int] = {}
    out = []
    for line in lines:
        step = line.split()[-2]
        counted[step] = counted.get(step, 0) + 1
        out.append(f"{step} {counted[step]}")
    return out


def _check_kill_point(how, trace: Path, fired: threading.Event, copies: dict[str, int],
                      notices: list[bytes], recipients: dict[str, dict]) -> None:
    """The hub died where the case meant it to, not at some other step (a
    case whose kill lands elsewhere -- the steps came in another order --
    would check another moment and pass all the same)."""
    lines = _trace_lines(trace)
    kills = [i for i, line in enumerate(lines) if line.startswith("KILL ")]
    if isinstance(how, tuple):
        assert not fired.is_set()
        assert len(kills) == 1, lines
        numbered = _numbered(lines[:kills[0] + 1])
        at = CLEAN_STEPS.index(f"{how[0]} {how[1]}")
        # the steps up to the kill are a clean run's, and the kill is the last
        assert numbered == CLEAN_STEPS[:at + 1], (numbered, CLEAN_STEPS[:at + 1])
        return
    assert fired.is_set() and not kills, lines
    in_a = [r for r in GOOD if r.endswith("@a.test")]
    if how == "dns":  # before connecting: nothing reached the next hop
        assert copies == {} and notices == [], (copies, notices)
    elif how == "octets":  # a.test cut mid-data: nothing of it taken
        assert not any(copies.get(r) for r in in_a), copies
        assert all(recipients[r]["state"] == "pending" for r in in_a), recipients
    elif how == "dot":  # a.test taken, its 250 never heard: still pending
        assert all(copies.get(r) == 1 for r in in_a), copies
        assert all(recipients[r]["state"] == "pending" for r in in_a), recipients
    elif how == "notice-dot":  # a notice taken, its 250 never heard
        assert copies == dict.fromkeys(GOOD, 1) and notices, (copies, notices)


def _in_a(rcpts: list[str]) -> bool:
    return bool(rcpts) and all(r.endswith("@a.test") for r in rcpts)


# How the hub dies, in the order of a delivery.  A string: a peer kills
# it (the DNS server at the first query; the next hop when a.test's data
# reaches 4000 octets, when a.test's "." has come and before its 250, or
# when the first notice's "." has).  A pair: the hub kills itself before
# the n-th call of that file step since it started.  A clean run's steps
# are CLEAN_STEPS.
CASES = [
    ("dns-before-connecting", "dns"),
    ("mid-data", "octets"),
    ("dot-taken-250-unheard", "dot"),
    ("partial-record-half-written", ("fsync_file", 1)),
    ("partial-record-renamed-dir-not-synced", ("fsync_dir", 2)),
    ("failure-notice-being-queued", ("rename", 4)),
    ("failure-notice-queued-not-recorded", ("rename", 5)),
    ("success-notice-being-queued", ("rename", 6)),
    ("success-notice-queued-not-recorded", ("unlink", 1)),
    ("entry-half-removed", ("unlink", 2)),
    ("notice-dot-taken-250-unheard", "notice-dot"),
]

# The file steps of a run without a kill, each with its count since the
# start, up to the test message's removal.
CLEAN_STEPS = [
    "fsync_dir 1",  # the start's recovery
    "link_or_copy 1", "write_file 1", "rename 1",  # the message queued
    # a.test done (a1, a2 delivered, bad failed) while b.test is in session
    "write_file 2", "fsync_file 1", "rename 2", "fsync_dir 2",
    # the final record: b1 delivered, the attempt counted
    "write_file 3", "fsync_file 2", "rename 3", "fsync_dir 3",
    "link_or_copy 2", "write_file 4", "rename 4",  # the failure notice queued
    "write_file 5", "fsync_file 3", "rename 5", "fsync_dir 4",  # bad: bounced
    "link_or_copy 3", "write_file 6", "rename 6",  # the success notice queued
    # nothing owed: the entry removed, record first
    "unlink 1", "fsync_dir 5", "unlink 2", "fsync_dir 6",
]


@pytest.mark.parametrize("how", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_sigkill_during_delivery_then_restart(setup, how):
    start, restart, hop, dns = setup
    hub = start(how if isinstance(how, tuple) else None)
    killed = hub.pid
    acked = threading.Event()  # the client got its 250: a kill before is not ours
    fired = threading.Event()  # a peer killed the hub
    kill = _killer(hub, acked, fired)
    if how == "dns":
        dns.on_query = kill
    elif how == "octets":
        hop.on_data = lambda sender, rcpts, n, final: _in_a(rcpts) and n >= 4000 and kill()
    elif how == "dot":
        hop.on_data = lambda sender, rcpts, n, final: final and _in_a(rcpts) and kill()
    elif how == "notice-dot":
        hop.on_data = lambda sender, rcpts, n, final: final and sender == "" and kill()
    _submit(hub)
    acked.set()
    assert hub.proc.wait(90) == -signal.SIGKILL, hub.log_text()
    hub.stop()
    dns.on_query = lambda: None
    hop.on_data = lambda *a: False

    # what the kill left, as the records and the CLI see it
    copies_then = hop.copies()
    notices_then = hop.notices()
    records = _records(hub)
    recipients, queued = _states(hub, records)
    trace = Path(json.loads(os.environ[ENV])["trace"])
    _check_kill_point(how, trace, fired, copies_then, notices_then, recipients)
    _check_cli(hub, records)

    restart(hub)
    queue = hub.state_dir / "queue"
    # every file, not the records alone: an entry done goes record first,
    # then (after a directory fsync) its message, and a look in between
    # (a loaded machine) found the message, a moment from its unlink
    wait_for(lambda: not _records(hub) and not [
        p for p in queue.iterdir() if p.name != ".lock"], timeout=60,
             what="an empty queue after the restart")
    assert _mailhub(hub, "queue", "list") == ""

    copies = hop.copies()
    for rcpt in GOOD:
        # at least once; a second copy only if the hub died after the next
        # hop had one and before the record said so (the window RFC 5321 6.1
        # accepts: a duplicate rather than a loss)
        state = recipients.get(rcpt, {}).get("state")
        window = copies_then.get(rcpt, 0) > 0 and state == "pending"
        assert 1 <= copies.get(rcpt, 0) <= (2 if window else 1), (rcpt, copies, recipients)
    assert BAD not in copies

    notices = hop.notices()
    for kind, owed, never in (("failed", [BAD], GOOD), ("relayed", GOOD, [BAD])):
        for rcpt in owed:
            rec = recipients.get(rcpt)
            # the record says the notice went: the entry is gone, or it
            # says so of the recipient
            recorded = rec is None or (rec["state"] == "bounced" if kind == "failed"
                                       else rec["state"] == "delivered" and not rec["notice"])
            out = _told(notices_then, kind, rcpt) > 0
            # a second notice only if the hub died after making it (queued,
            # or at the next hop) and before the record said it went, or
            # after the next hop took it and before the notice's own record
            # said so
            window = (((out or kind in queued) and not recorded)
                      or (out and queued.get(kind) == "pending"))
            told = _told(notices, kind, rcpt)
            assert 1 <= told <= (2 if window else 1), (kind, rcpt, told, recipients, queued)
        for rcpt in never:  # nobody delivered is bounced, nor the bounced relayed
            assert _told(notices, kind, rcpt) == 0, (kind, rcpt)

    # nothing half-made left: no temporary, orphan or corrupt file, no
    # spool file of the killed process
    assert sorted(p.name for p in queue.iterdir() if p.name != ".lock") == []
    spool = hub.state_dir / "spool"
    assert not [p for p in spool.iterdir() if p.name.startswith(f"{killed}-")]
    log = hub.log_text()
    assert "Traceback" not in log and "unusable" not in log


def test_steps_of_a_clean_run(setup):
    """The steps the crash points above count, in a run without a kill:
    if the runner's file work changes, this says so (and CASES needs a
    look), rather than the kills landing elsewhere unnoticed."""
    start, _, hop, _ = setup
    hub = start(None)
    _submit(hub)
    wait_for(lambda: len(hop.notices()) == 2 and not _records(hub),
             what="the delivery and the notices")
    assert sorted(_notice_kind(d) for d in hop.notices()) == ["failed", "relayed"]
    assert hop.copies() == dict.fromkeys(GOOD, 1)
    trace = Path(json.loads(os.environ[ENV])["trace"])
    numbered = _numbered(_trace_lines(trace))
    assert numbered[:len(CLEAN_STEPS)] == CLEAN_STEPS, numbered
