"""The order of a real hub's system calls: nothing acknowledged before it
is durable.

Each test runs the hub (or a ``mailhub`` command) under ``strace -f``
and reads the log with ``strace_order``: a message's data fsynced
before it is renamed or linked into place, each folder fsynced after the
names it gained or lost, and only then the ``250`` (or the ``+OK`` to
``QUIT``, or the command's exit).  The fsyncs may be kernel AIO requests
(``io_submit``, done at ``io_getevents``) or ``fsync(2)`` on a worker
thread: the log says which, and either counts once it has returned.
Skipped where strace is not installed or may not trace (no ptrace).
"""

from __future__ import annotations

import contextlib
import os
import poplib
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import conftest
import pytest
from strace_order import TRACED_CALLS, Event, Trace, strace_usable

_WHY_NOT = strace_usable()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

#: scratch names whose steps need no fsync: the spool (never acknowledged),
#: the queue's attempt markers and control files, lock files
SCRATCH = (r"/spool/", r"/\.[^/]*\.attempt$", r"\.attempt-tmp$",
           r"/queue/\.(flush|changed)$", r"\.lock$")

_STRACE = ["strace", "-f", "-tt", "-s", "64", "-e", f"trace={TRACED_CALLS}"]


#: how the hub's fsyncs run: kernel AIO where the kernel has it, or worker
#: threads -- the hub's way where ``io_setup`` fails, made to fail here
#: by strace itself
SYNCS = {"aio": [], "threads": ["-e", "inject=io_setup:error=ENOSYS"]}


def _tracee(log: Path) -> int | None:
    """The pid of the process strace started (the first in its log)."""
    try:
        first = log.read_text().split(None, 1)
    except FileNotFoundError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def _kill_tracee(strace: subprocess.Popen | None, log: Path) -> None:
    """Kill what strace traces, if it still runs.  strace itself is no
    way to it: run as ``strace -o FILE PROG`` it blocks SIGTERM, and
    killed it lets its tracee go, to run on unwatched.  Only a child of
    this strace is killed, never a process that took a pid freed since."""
    pid = _tracee(log)
    if strace is None or pid is None or strace.poll() is not None:
        return
    try:
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return
    if parent == strace.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        strace.wait(30)


@contextlib.contextmanager
def _traced_hub(make_hub, tmp_path: Path, syncs: str = "aio", **kwargs) -> Iterator:
    """A hub run under strace, as ``(hub, log)``; the hub is killed on the
    way out if the test did not stop it (``_stopped``), failed or not, as
    the fixture's stop cannot reach it through strace."""
    log = tmp_path / "hub.strace"
    hub = make_hub(launcher=[*_STRACE, *SYNCS[syncs], "-o", str(log), conftest.TWISTD],
                   start=False, **kwargs)
    try:
        hub.start()
        yield hub, log
    finally:
        _kill_tracee(hub.proc, log)
        hub.stop()


def _check_syncs(trace: Trace, syncs: str) -> None:
    """The path asked for was the one taken: no AIO request with threads,
    and with AIO, some (a kernel or filesystem that refuses them makes
    the hub use threads: that case is the other one's)."""
    taken = [e for e in trace.events if e.kind == "sync" and e.call == "aio"]
    if syncs == "threads":
        assert not taken
    elif not taken:
        pytest.skip("the hub made no kernel AIO fsync request here (threads instead)")


def _stopped(hub, log: Path) -> Trace:
    """Stop the traced hub and read its log.  The hub is signalled itself:
    strace blocks SIGTERM (``_kill_tracee``)."""
    pid = _tracee(log)
    assert pid is not None, "strace logged nothing"
    os.kill(pid, signal.SIGTERM)
    hub.proc.wait(30)
    hub.stop()
    return Trace.read(str(log))


def _named(trace: Trace, call: str, pattern: str) -> list[Event]:
    """The steps of system call ``call`` (``rename`` takes in ``renameat``
    and ``renameat2``, and so on) whose new name matches ``pattern``."""
    return [e for e in trace.events if e.kind == "name"
            and re.fullmatch(re.escape(call) + r"(at2?)?", e.call) and re.search(pattern, e.path)]


def _data_synced_before(trace: Trace, step: Event) -> bool:
    """Whether the file ``step`` names had its data fsynced (a sync of
    that file begun after its last write, done) before ``step``."""
    writes = [e.seq for e in trace.events
              if e.kind == "write" and e.obj == step.obj and e.seq < step.seq]
    assert writes, f"no write of the file named by {step.line}"
    return any(e.kind == "sync" and e.obj == step.obj and e.seq > writes[-1]
               and e.done is not None and e.done < step.seq for e in trace.events)


def _assert_published(trace: Trace, step: Event, ack: Event) -> None:
    """fsync(file) < rename/link ``step`` < fsync(its folder) < ``ack``."""
    assert step.seq < ack.seq
    assert _data_synced_before(trace, step), step.line
    assert trace.synced_between(step.folder, step, ack), (
        f"{step.folder} not fsynced between {step.line} and {ack.line}")


@pytest.mark.parametrize("syncs", sorted(SYNCS))
def test_a_local_delivery_is_durable_before_its_250(make_hub, tmp_path, syncs) -> None:
    # the first message of a fresh hub: the state folder, mail/, the new
    # Maildir's folders, all made since the start, are durable too
    with _traced_hub(make_hub, tmp_path, syncs) as (hub, log):
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("x@example.com", ["alice@example.org"], b"Subject: one\r\n\r\none\r\n")
        trace = _stopped(hub, log)
    _check_syncs(trace, syncs)
    [ack] = trace.sends("250 2.0.0")
    [step] = _named(trace, "rename", r"/alice/new/[^/]+$")
    _assert_published(trace, step, ack)
    assert trace.unsynced_before(ack, exempt=SCRATCH, within=str(hub.folder)) == []
    assert hub.messages("alice@example.org")[0].endswith(b"one\n")


@pytest.mark.parametrize("syncs", sorted(SYNCS))
def test_a_message_for_three_mailboxes_is_linked_durably_before_its_250(
        make_hub, tmp_path, syncs) -> None:
    rcpts = ["alice@example.org", "bob@example.org", "carol@example.net"]
    with _traced_hub(make_hub, tmp_path, syncs) as (hub, log):
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("x@example.com", rcpts, b"Subject: three\r\n\r\nthree\r\n")
        trace = _stopped(hub, log)
    _check_syncs(trace, syncs)
    [ack] = trace.sends("250 2.0.0")
    links = _named(trace, "link", r"/new/[^/]+$")
    assert sorted(Path(e.path).parent.parent.name for e in links) == ["alice", "bob", "carol"]
    for step in links:
        _assert_published(trace, step, ack)
    assert trace.unsynced_before(ack, exempt=SCRATCH, within=str(hub.folder)) == []


@pytest.mark.parametrize("syncs", sorted(SYNCS))
def test_a_relay_queue_record_is_durable_before_its_250(make_hub, tmp_path, syncs) -> None:
    with conftest.dead_port() as port, _traced_hub(
            make_hub, tmp_path, syncs,
            sections={"relay": {"smarthost": f"[127.0.0.1]:{port}"}}) as (hub, log):
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            s.sendmail("alice@example.org", ["someone@remote.example"],
                       b"Subject: away\r\n\r\naway\r\n")
        trace = _stopped(hub, log)
    _check_syncs(trace, syncs)
    [ack] = trace.sends("250 2.0.0")
    [msg] = _named(trace, "link", r"/queue/[0-9A-F]+\.msg$")
    record = _named(trace, "rename", r"/queue/[0-9A-F]+\.json$")[0]
    # the message first (its spool file's data, then its name in queue/),
    # then the record, written aside, fsynced, renamed: the commit
    _assert_published(trace, msg, ack)
    assert trace.synced_between(msg.folder, msg, record)
    _assert_published(trace, record, ack)
    assert trace.unsynced_before(ack, exempt=SCRATCH, within=str(hub.folder)) == []


@pytest.mark.parametrize("syncs", sorted(SYNCS))
def test_pop3_quit_answers_once_its_deletions_and_flags_are_durable(
        make_hub, tmp_path, syncs) -> None:
    with _traced_hub(make_hub, tmp_path, syncs) as (hub, log):
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=30) as s:
            for n in range(3):
                s.sendmail("x@example.com", ["bob@example.org"],
                           f"Subject: {n}\r\n\r\n{n}\r\n")
        box = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=30)
        box.user("bob@example.org")
        box.pass_("bob-secret")
        box.retr(1)  # kept, flagged seen: new/ -> cur/
        box.quit()
        box = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=30)
        box.user("bob@example.org")
        box.pass_("bob-secret")
        box.dele(1)  # the one in cur/ now
        box.dele(2)
        box.quit()
        trace = _stopped(hub, log)
    _check_syncs(trace, syncs)
    first, second = trace.sends("+OK Bye")
    [flagged] = _named(trace, "rename", r"/bob/cur/[^/]+$")
    assert flagged.seq < first.seq
    for folder in ("new", "cur"):
        assert trace.synced_between(f"{hub.maildir('bob@example.org')}/{folder}",
                                    flagged, first), folder
    deleted = _named(trace, "unlink", r"/bob/(new|cur)/[^/]+$")
    assert len(deleted) == 2 and all(first.seq < e.seq < second.seq for e in deleted)
    for ack, since in ((first, None), (second, first)):
        assert trace.unsynced_before(ack, since, exempt=SCRATCH,
                                     within=str(hub.folder)) == []


def _traced_command(config: Path, log: Path, *args: str, input: str = "") -> Trace:
    strace = subprocess.Popen(
        [*_STRACE, "-o", str(log), sys.executable, "-m", "txmailhub", "--config", str(config),
         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        _, err = strace.communicate(input, timeout=120)
    except BaseException:
        _kill_tracee(strace, log)  # a command that hangs: not left running untraced
        strace.kill()
        strace.communicate()
        raise
    assert strace.returncode == 0, err
    return Trace.read(str(log))


def test_user_add_exits_once_the_users_file_and_its_new_folder_are_durable(
        make_hub, tmp_path) -> None:
    # the users file in a folder not there yet: `user add` makes it, and
    # exits 0 only once the file (written aside, fsynced, renamed), the
    # folder's entries and the folder's own name are all durable
    users = tmp_path / "etc" / "users.d" / "users"
    hub = make_hub(users={}, start=False, sections={"users": {"file": str(users)}})
    trace = _traced_command(hub.config_path, tmp_path / "cli.strace", "user", "add",
                            "dave@example.org", "--password-stdin", "--allow-weak",
                            input="a long enough password\n")
    done = trace.exit()
    [step] = _named(trace, "rename", re.escape(str(users)) + "$")
    _assert_published(trace, step, done)
    made = _named(trace, "mkdir", re.escape(str(users.parent)) + "$")
    assert made and trace.synced_between(str(users.parent.parent), made[0], done)
    assert trace.unsynced_before(done, exempt=SCRATCH, within=str(tmp_path)) == []
    assert "dave@example.org" in users.read_text()


def test_alias_set_exits_once_the_aliases_file_is_durable(make_hub, tmp_path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("")
    hub = make_hub(start=False, sections={"aliases": {"file": str(aliases)}})
    trace = _traced_command(hub.config_path, tmp_path / "cli.strace", "alias", "set",
                            "team@example.org", "alice@example.org", "bob@example.org")
    done = trace.exit()
    [step] = _named(trace, "rename", re.escape(str(aliases)) + "$")
    _assert_published(trace, step, done)
    assert trace.unsynced_before(done, exempt=SCRATCH, within=str(tmp_path)) == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_test_failing_half_way_leaves_no_traced_hub_behind(make_hub, tmp_path) -> None:
    # strace blocks the fixture's SIGTERM, and killed it lets the hub go
    # on, untraced and unwatched: the hub itself must be killed
    with pytest.raises(LookupError, match="a test's failure"):
        with _traced_hub(make_hub, tmp_path) as (hub, log):
            pid, strace = _tracee(log), hub.proc
            assert pid is not None and _running(pid)
            raise LookupError("a test's failure")
    assert strace.poll() is not None
    assert not _running(pid)
