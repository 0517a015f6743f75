"""``mailhub queue ...`` against a real queue directory."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import subprocess
import sys

import pytest
from twisted.internet.task import Clock

from txmailhub.address import Address
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay import inflight
from txmailhub.relay.admin import add_queue_parser, run_queue
from txmailhub.relay.queue import CHANGED, FLUSH, OutboundQueue
from txmailhub.smtp._parse import parse_mailbox
from txmailhub.smtp.reply import Reply

BOB = Address("bob", "remote.test")
CAROL = Address("carol", "remote.test")
GREYLISTED = Reply.of(451, "4.7.1", "Greylisted, try again in 5 minutes")


# a marker's descriptor left listed is closed by the fork hook in a child a
# later test forks: the pipe of ``conftest.as_user`` had its number, and its
# child ended without an answer
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    # the commands read the wall clock: the queue's clock, here
    from txmailhub.relay import admin

    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(lambda: 1_800_000_000.0))
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                   'state_dir = "var"\n')
    settings = load_text(cfg.read_text(), str(cfg))
    clock = Clock()
    clock.advance(1_800_000_000)
    queue = OutboundQueue(settings.queue_dir, clock)
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = queue.enqueue(Envelope(sender=Address("alice", "example.org"),
                                 recipients=(BOB, CAROL), helo="client.example.org",
                                 client_address="127.0.0.1"),
                        SpooledMessage(str(spool), 17, 20)).result

    def fail(e):
        recs = {r.address: dataclasses.replace(r, attempts=1, last_attempt=1_800_000_000.0,
                                               last_reply=GREYLISTED,
                                               remote_mta="mx.remote.test")
                for r in e.recipients}
        return dataclasses.replace(e.with_recipients(recs), attempts=1,
                                   next_attempt=1_800_000_060.0)

    queue.update(qid, fail)
    return settings, queue, qid, cfg


@pytest.fixture
def root_by_a_hubs_queue(monkeypatch) -> list[tuple[str, object]]:
    """Run as root, the queue owned by uid 4242 and gid 4343 (a hub run
    as its own user): the identity changes the command makes, recorded
    in order instead of made, so the test can say which it takes on."""
    from txmailhub.relay import admin

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(admin.os, "geteuid", lambda: 0)
    monkeypatch.setattr(admin, "_queue_owner", lambda path: (4242, 4343))
    monkeypatch.setattr(admin.os, "setgroups", lambda g: calls.append(("setgroups", g)))
    monkeypatch.setattr(admin.os, "setgid", lambda g: calls.append(("setgid", g)))
    monkeypatch.setattr(admin.os, "setuid", lambda u: calls.append(("setuid", u)))
    return calls


def run(settings, *argv):
    p = argparse.ArgumentParser()
    add_queue_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["queue", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run_queue(settings, args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_show_names_a_smarthost_without_its_final_dot(setup):
    # a record written before results dropped the dot (as notices do)
    settings, queue, qid, _ = setup

    def dotted(e):
        return e.with_recipients({r.address: dataclasses.replace(
            r, remote_mta="smtp.example.net.") for r in e.recipients})

    queue.update(qid, dotted)
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    assert "remote=smtp.example.net\n" in out
    assert "smtp.example.net." not in out


def test_list(setup):
    settings, _, qid, _ = setup
    code, out, _ = run(settings, "list")
    assert code == 0
    [line] = out.splitlines()
    fields = line.split()
    assert fields[0] == qid
    assert fields[1] == "alice@example.org"
    assert fields[2:4] == ["bob@remote.test", "carol@remote.test"]
    assert fields[4] == "1"
    assert fields[5] == "2027-01-15T08:01:00Z"
    assert line.endswith("451 4.7.1 Greylisted, try again in 5 minutes")


def test_no_queue_yet(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\ndomains = ["example.org"]\n')
    settings = load_text(cfg.read_text(), str(cfg))
    assert run(settings, "list")[:2] == (0, "")
    assert run(settings, "flush") == (0, "the queue is empty\n", "")
    assert run(settings, "show", "ABCDEF123456")[0] == 1
    assert not (tmp_path / "var").exists()  # nothing created by looking


class _Terminal(io.StringIO):
    """Standard output as a person's terminal."""

    def isatty(self):
        return True


def test_an_empty_queue_says_so_to_a_terminal_and_nothing_to_a_script(setup, tmp_path):
    # a terminal got no line at all, which reads as a command that hung or
    # failed; a pipe or a file still gets none (`queue list | wc -l` is 0)
    settings, queue, qid, _ = setup
    queue.delete(qid)
    empty = load_text('[hub]\ndomains = ["example.org"]\nstate_dir = "none"\n',
                      str(tmp_path / "other.toml"))
    for s in (settings, empty):  # emptied, and never made
        assert run(s, "list") == (0, "", "")
        p = argparse.ArgumentParser()
        add_queue_parser(p.add_subparsers(dest="command"))
        out, err = _Terminal(), io.StringIO()
        assert run_queue(s, p.parse_args(["queue", "list"]), out, err) == 0
        assert (out.getvalue(), err.getvalue()) == ("the queue is empty\n", "")
    assert not (tmp_path / "none").exists()
    # a queue with a message in it: its line, and no such words
    queue.enqueue(Envelope(sender=Address("alice", "example.org"), recipients=(BOB,)),
                  SpooledMessage(str(tmp_path / "spool"), 17, 20))
    out = _Terminal()
    assert run_queue(settings, p.parse_args(["queue", "list"]), out, io.StringIO()) == 0
    assert len(out.getvalue().splitlines()) == 1 and "empty" not in out.getvalue()


def test_show(setup):
    settings, _, qid, _ = setup
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    assert f"id: {qid}" in out
    assert "sender: alice@example.org" in out
    assert "client: 127.0.0.1 (HELO client.example.org)" in out
    assert re.search(r"\nsize: \d+ octets as stored, with this hub's trace fields\n", out), out
    assert "  bob@remote.test pending attempts=1" in out
    assert "remote=mx.remote.test" in out
    assert "    reply: 451 4.7.1 Greylisted, try again in 5 minutes" in out
    assert "last reply: 451 4.7.1 Greylisted" in out
    assert "\nrelayed with: AUTH=<>\n" in out  # nobody authenticated (RFC 4954 5)


def test_show_names_the_submitter_the_relay_passes_on(setup, tmp_path):
    settings, queue, _, _ = setup
    alice = Address("alice", "example.org")
    spool = tmp_path / "spool2"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = queue.enqueue(Envelope(sender=alice, recipients=(BOB,), authenticated_as=str(alice),
                                 submitter=alice),
                        SpooledMessage(str(spool), 17, 20)).result
    out = run(settings, "show", qid)[1]
    assert ("\nauthenticated as: alice@example.org\n"
            "relayed with: AUTH=alice@example.org\n") in out, out


def test_show_tells_the_hubs_own_account_from_a_servers_reply(setup):
    settings, queue, qid, _ = setup
    from txmailhub.smtp.reply import LocalReply

    timeout = LocalReply(451, "4.4.2", ("timeout waiting for the reply to DATA",))
    queue.update(qid, lambda e: e.with_recipients(
        {BOB: dataclasses.replace(e.recipient(BOB), last_reply=timeout)}))
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    assert "    hub: 451 4.4.2 timeout waiting for the reply to DATA" in out
    assert "    reply: 451 4.7.1 Greylisted" in out  # carol's, from the server
    assert "last reply: 451 4.7.1 Greylisted" in out  # the entry's, a server's
    queue.update(qid, lambda e: e.with_recipients(
        {CAROL: dataclasses.replace(e.recipient(CAROL), last_reply=timeout)}))
    code, out, _ = run(settings, "show", qid)
    assert "last reply: hub: 451 4.4.2 timeout waiting for the reply to DATA" in out


def test_list_gives_the_hubs_own_account_code_first_and_a_dash_before_any(setup, tmp_path):
    # docs/relay.rst, queue list: the last field is the reply, or the hub's
    # own account in the same form (no "hub:" before its code, which a
    # script reads first), or "-" for a message no attempt has answered
    settings, queue, qid, _ = setup
    from txmailhub.smtp.reply import LocalReply

    refused = LocalReply(451, "4.4.1", ("connection to [192.0.2.25]:25 failed: "
                                        "connection refused",))
    queue.update(qid, lambda e: e.with_recipients(
        {a: dataclasses.replace(e.recipient(a), last_reply=refused) for a in (BOB, CAROL)}))
    [line] = run(settings, "list")[1].splitlines()
    assert line.split()[6:] == ["451", "4.4.1", "connection", "to", "[192.0.2.25]:25",
                                "failed:", "connection", "refused"]
    spool = tmp_path / "spool2"
    spool.write_bytes(b"Subject: y\n\nbody\n")
    new = queue.enqueue(Envelope(sender=Address("alice", "example.org"), recipients=(BOB,),
                                 helo="client.example.org", client_address="127.0.0.1"),
                        SpooledMessage(str(spool), 17, 20)).result
    [fresh] = [x for x in run(settings, "list")[1].splitlines() if x.startswith(new)]
    assert fresh.split()[3] == "0" and fresh.split()[-1] == "-"
    assert "last reply: -\n" in run(settings, "show", new)[1]


def _queue_white_space(queue, tmp_path, sender_local: str) -> str:
    """Queue a message whose sender (hand-edited) and first recipient (a
    quoted local part) hold white space, and whose second recipient holds
    a text that looks like an escape; the id."""
    spool = tmp_path / "spool2"
    spool.write_bytes(b"Subject: y\n\nbody\n")
    return queue.enqueue(Envelope(sender=Address(sender_local, "example.org"),
                                  recipients=(parse_mailbox('"john doe"@remote.test',
                                                            "example.org"),
                                              Address("x\\x{20}y", "remote.test")),
                                  helo="client.example.org", client_address="127.0.0.1"),
                         SpooledMessage(str(spool), 17, 20)).result


def test_list_keeps_an_address_with_white_space_in_one_field(setup, tmp_path):
    # docs/relay.rst, queue list: an address may hold white space (a quoted
    # local part, "john doe"@remote.test, as RCPT took it, or a hand-edited
    # record: the sender here).  Split on white space, the line still has
    # its documented fields, one per recipient (seven for two, the last
    # error "-"), a space shown as \x{20} (a tab as \x{9}, a no-break
    # space as \x{A0}); a text that looks like such an escape stays told
    # apart from one
    settings, queue, _, _ = setup
    qid = _queue_white_space(queue, tmp_path, "mary\tann\u00a0lee")
    [line] = [x for x in run(settings, "list")[1].splitlines() if x.startswith(qid)]
    fields = line.split()
    assert fields == [qid, "mary\\x{9}ann\\x{A0}lee@example.org", '"john\\x{20}doe"@remote.test',
                      "x\\x{5C}x{20}y@remote.test", "0", "2027-01-15T08:00:00Z", "-"]


def test_show_gives_an_address_with_white_space_as_list_does(setup, tmp_path):
    # docs/relay.rst, queue show: a recipient line is the address, then its
    # state and key=value words; "john doe"@remote.test split there into
    # '"john' and 'doe"@remote.test pending ...'.  show now escapes white
    # space in the sender and each recipient as list does, so the same
    # address reads the same in both commands
    settings, queue, _, _ = setup
    qid = _queue_white_space(queue, tmp_path, "mary\tann")
    [line] = [x for x in run(settings, "list")[1].splitlines() if x.startswith(qid)]
    _, sender, john, other = line.split()[:4]
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    lines = out.splitlines()
    assert f"sender: {sender}" in lines, out
    recipients = [x.split() for x in lines if x.startswith("  ") and not x.startswith("    ")]
    assert [r[:2] for r in recipients] == [[john, "pending"], [other, "pending"]], out
    assert john == '"john\\x{20}doe"@remote.test'
    assert other == "x\\x{5C}x{20}y@remote.test"  # a text like an escape stays told apart


def test_a_replys_control_characters_never_reach_the_terminal(setup):
    # a hostile next hop's reply, kept in the queue as received: an ESC
    # would start a terminal escape sequence in the admin's shell
    settings, queue, qid, _ = setup
    hostile = Reply.of(550, "5.1.1", "no\x1b]0;owned\x07 such\tuser\x9b2J \u00e9t\u00e9")
    queue.update(qid, lambda e: e.with_recipients(
        {r.address: dataclasses.replace(r, last_reply=hostile) for r in e.recipients}))
    shown = "no\\x{1B}]0;owned\\x{7} such\tuser\\x{9B}2J \u00e9t\u00e9"
    code, out, _ = run(settings, "list")
    assert code == 0
    assert out.endswith(f"550 5.1.1 {shown}\n"), out  # tab and UTF-8 as they are
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    assert f"    reply: 550 5.1.1 {shown}\n" in out, out
    assert f"last reply: 550 5.1.1 {shown}\n" in out
    assert not any(c in out for c in "\x1b\x07\x9b")


def test_a_reply_holding_an_escapes_text_is_not_shown_as_the_escape(setup):
    # a reply with an ESC and one with the four characters \x{1B} in its
    # text were the same queue list line
    settings, queue, qid, _ = setup
    lines = []
    for text in ("odd\x1bname", "odd\\x{1B}name"):
        reply = Reply.of(550, "5.1.1", text)
        queue.update(qid, lambda e, reply=reply: e.with_recipients(
            {r.address: dataclasses.replace(r, last_reply=reply) for r in e.recipients}))
        lines.append(run(settings, "list")[1])
        assert f"last reply: 550 5.1.1 {lines[-1].split(' 5.1.1 ')[1]}" in run(
            settings, "show", qid)[1]
    assert lines[0].endswith("550 5.1.1 odd\\x{1B}name\n")
    assert lines[1].endswith("550 5.1.1 odd\\x{5C}x{1B}name\n")


def test_unknown_id(setup):
    settings = setup[0]
    for action in ("show", "delete", "hold", "release"):
        code, _, err = run(settings, action, "NOSUCHID0000")
        assert code == 1 and "no queued message NOSUCHID0000" in err


def test_the_smtp_message_id_finds_its_queue_entries(setup, tmp_path):
    # The 250 after DATA names the message, not its queue entries; an admin
    # who has only that id must still find them.
    settings, queue, qid, _ = setup
    spool = tmp_path / "spool2"
    spool.write_bytes(b"Subject: y\n\nbody\n")
    env = Envelope(sender=Address("alice", "example.org"), recipients=(BOB,),
                   message_id="6B0B3B1033CB0001A")
    one = queue.enqueue(env, SpooledMessage(str(spool), 17, 20)).result
    code, out, _ = run(settings, "show", "6B0B3B1033CB0001A")
    assert code == 0 and f"id: {one}" in out and "message id: 6B0B3B1033CB0001A" in out
    assert f"id: {qid}" not in out
    code, out, _ = run(settings, "hold", "6B0B3B1033CB0001A")
    assert code == 0 and out == f"held {one}\n" and queue.read(one).held
    # a second entry for the same message (its failed local mailbox, say)
    two = queue.enqueue(dataclasses.replace(env, recipients=(CAROL,)),
                        SpooledMessage(str(spool), 17, 20)).result
    code, out, _ = run(settings, "show", "6B0B3B1033CB0001A")
    assert code == 0 and f"id: {one}" in out and f"id: {two}" in out
    code, _, err = run(settings, "delete", "6B0B3B1033CB0001A")
    # the two ids, in the queue's order (ids queued in one millisecond sort
    # by their random part)
    assert code == 1 and "is in 2 queue entries" in err
    assert err.count(one) == 1 and err.count(two) == 1
    assert queue.read(one) is not None and queue.read(two) is not None


def test_a_message_id_with_its_parts_apart_finds_its_entry_as_an_older_one_does(
        setup, tmp_path):
    # the SMTP server's ids keep the seconds, pid and counter apart with "_"
    # (no queue id: those are letters and digits); one queued before, with
    # none, still names its message
    settings, queue, _, _ = setup
    spool = tmp_path / "spool2"
    spool.write_bytes(b"Subject: y\n\nbody\n")
    found = {}
    for mid in ("6B0B3B10_33CB_0001A", "6B0B3B1033CB0001B"):
        env = Envelope(sender=Address("alice", "example.org"), recipients=(BOB,),
                       message_id=mid)
        found[mid] = queue.enqueue(env, SpooledMessage(str(spool), 17, 20)).result
    for mid, qid in found.items():
        code, out, _ = run(settings, "show", mid)
        assert code == 0 and out.startswith(f"id: {qid}\nmessage id: {mid}\n")


def _success_notice_owed(queue, tmp_path):
    """An entry whose one recipient (bob) is delivered, its success notice
    to the sender still owed: ``(queue id, envelope, spooled message)``,
    the last two for more entries of the same message."""
    spool = tmp_path / "spool3"
    spool.write_bytes(b"Subject: z\n\nbody\n")
    env = Envelope(sender=Address("alice", "example.org"), recipients=(BOB,))
    spooled = SpooledMessage(str(spool), 17, 20)
    return queue.enqueue(env, spooled, delivered=(BOB,)).result, env, spooled


def test_show_names_a_success_notice_still_owed(setup, tmp_path):
    settings, queue, _, _ = setup
    qid, _env, _spooled = _success_notice_owed(queue, tmp_path)
    code, out, _ = run(settings, "show", qid)
    assert code == 0
    assert "  bob@remote.test delivered attempts=1" in out and "notice-owed=delivered" in out


def test_delete_takes_effect_at_once(setup):
    settings, queue, qid, _ = setup
    code, out, _ = run(settings, "delete", qid)
    assert code == 0 and qid in out
    assert queue.ids() == []
    assert queue.read(qid) is None
    assert queue.take_flag(CHANGED)


def test_hold_release_flush(setup):
    settings, queue, qid, _ = setup
    assert run(settings, "hold", qid)[0] == 0
    assert queue.read(qid).held
    assert " held " in run(settings, "list")[1]
    assert run(settings, "release", qid)[0] == 0
    assert not queue.read(qid).held
    assert run(settings, "flush")[0] == 0
    assert queue.take_flag(FLUSH)


NO_HUB = ("flush requested: no hub seems to be running on this state directory (nothing "
          "holds its spool.lock); the next one to start retries every message that is not "
          "held\n")
HUB = "flush requested: the running hub retries every message that is not held within 5 seconds\n"


def _holding(path: str) -> subprocess.Popen:
    """Another live process holding ``path``'s flock, as a running hub
    holds spool.lock; it lets go when its standard input closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\n"
         f"f = open({path!r}, 'a')\nfcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
         "print('held', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_flush_says_whether_a_hub_runs_without_taking_its_lock(setup, monkeypatch):
    # "flush requested: a running hub retries ..." was printed with no
    # hub at all; taking spool.lock to know would make a hub starting at
    # that moment refuse to start, so nothing here may take it
    from txmailhub.store import spool

    def no_lock(*args):
        raise AssertionError("queue flush took a lock")

    monkeypatch.setattr(spool.fcntl, "flock", no_lock)
    settings, queue, _, _ = setup
    lock = settings.spool_dir + ".lock"
    assert run(settings, "flush") == (0, NO_HUB, "")  # no hub ever ran here
    assert not os.path.exists(lock)  # nothing made by looking
    assert queue.take_flag(FLUSH)  # requested all the same: a hub's start takes it
    open(lock, "w").close()  # a hub ran here, and stopped
    assert run(settings, "flush") == (0, NO_HUB, "")
    holder = _holding(lock)
    try:
        assert run(settings, "flush") == (0, HUB, "")
    finally:
        holder.communicate(timeout=60)
    assert run(settings, "flush") == (0, NO_HUB, "")
    assert queue.take_flag(FLUSH)
    # where the kernel's list of locks cannot be read (not Linux): the
    # words of before, which hold either way
    monkeypatch.setattr(spool, "PROC_LOCKS", os.path.join(os.path.dirname(lock), "none"))
    assert run(settings, "flush") == (
        0, "flush requested: a running hub retries every message that is not held within 5 "
           "seconds\n", "")


def test_flush_finds_the_lock_by_its_mounts_device(setup, monkeypatch, tmp_path):
    # The kernel lists a lock by its file system's device, which stat
    # does not give on btrfs (a subvolume's) nor on an overlay of several
    # file systems: a hub holding spool.lock there was said not to run.
    # The device of the mount the file is on (mountinfo's) is the one
    from txmailhub.store import spool

    settings, _, _, _ = setup
    lock = settings.spool_dir + ".lock"
    open(lock, "w").close()
    st = os.lstat(lock)
    assert os.major(st.st_dev) != 0x99  # the file system's device, not stat's
    locks = tmp_path / "locks"
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 00:99:{st.st_ino} 0 EOF\n")
    mountinfo = tmp_path / "mountinfo"
    top = os.path.dirname(os.path.realpath(lock))
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:153 / {top.replace(' ', chr(92) + '040')} rw shared:2 - btrfs /dev/sdb rw\n")
    monkeypatch.setattr(spool, "PROC_LOCKS", str(locks))
    monkeypatch.setattr(spool, "PROC_MOUNTINFO", str(mountinfo), raising=False)
    assert run(settings, "flush") == (0, HUB, "")
    # the same inode on another file system is another file
    mountinfo.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    assert run(settings, "flush") == (0, NO_HUB, "")
    # the mounts unreadable: stat's device alone, as before
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 4242 {device}:{st.st_ino} 0 EOF\n")
    monkeypatch.setattr(spool, "PROC_MOUNTINFO", str(tmp_path / "none"))
    assert run(settings, "flush") == (0, HUB, "")


def test_flush_with_a_hub_running(hub):
    # a real hub, started as deployment.rst's unit starts it: --pidfile=,
    # no pid file to look at; it holds spool.lock for as long as it runs
    done = hub.mailhub("queue", "flush")
    assert (done.returncode, done.stdout, done.stderr) == (0, HUB, "")
    hub.stop()
    done = hub.mailhub("queue", "flush")
    assert (done.returncode, done.stdout, done.stderr) == (0, NO_HUB, "")


def test_through_the_mailhub_command(setup):
    _, _, qid, cfg = setup
    proc = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(cfg), "queue",
                           "list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == qid
    proc = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(cfg), "queue",
                           "show", "BADID1234"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1


def test_root_acts_as_the_user_that_owns_the_queue(setup, root_by_a_hubs_queue):
    # `mailhub queue hold ID` run as root next to a hub that runs as
    # `mailhub`: the rewritten record must stay readable by the hub
    settings, _queue, qid, _ = setup
    calls = root_by_a_hubs_queue
    assert run(settings, "hold", qid)[0] == 0
    assert calls == [("setgroups", []), ("setgid", 4343), ("setuid", 4242)]


def test_root_owned_queue_and_other_users_are_left_alone(setup, monkeypatch):
    from txmailhub.relay import admin

    settings = setup[0]
    calls = []
    monkeypatch.setattr(admin.os, "setuid", lambda u: calls.append(u))
    monkeypatch.setattr(admin.os, "geteuid", lambda: 0)
    monkeypatch.setattr(admin, "_queue_owner", lambda path: (0, 0))
    assert run(settings, "list")[0] == 0
    monkeypatch.setattr(admin.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(admin, "_queue_owner", lambda path: (4242, 4343))
    assert run(settings, "list")[0] == 0
    assert calls == []


def test_a_corrupt_record_can_be_deleted_and_is_named_by_hold_and_release(setup):
    settings, queue, qid, _ = setup
    with open(queue.record_path(qid), "w") as f:
        f.write("{not json")
    for action in ("hold", "release"):
        code, _, err = run(settings, action, qid)
        assert code == 1 and f"queue entry {qid} is unreadable" in err
        assert "Traceback" not in err and f"queue delete {qid}" in err
    assert run(settings, "delete", qid) == (0, f"deleted {qid}\n", "")
    assert queue.ids() == []


def test_queue_list_says_why_a_record_is_unreadable_in_its_own_words(setup):
    settings, queue, qid, _ = setup
    with open(queue.record_path(qid), "w") as f:
        f.write('{"format": 1,\n "envelope": {oops')
    code, out, _ = run(settings, "list")
    # where the file breaks, not "unreadable: unreadable queue record:
    # Expecting property name enclosed in double quotes"
    assert (code, out) == (0, f"{qid} (unreadable: the queue record is not JSON "
                              "(line 2, column 15))\n")


def _queue_folder_denied(settings, monkeypatch):
    """The way to the queue folder closed to the command's user (``stat``
    refused); the real ``os.stat``, for the test's own looks."""
    import os

    real_stat = os.stat

    def denied(path, *args, **kwargs):
        if str(path) == settings.queue_dir:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denied)
    return real_stat


def test_a_queue_the_user_cannot_read_is_an_error_not_an_empty_queue(setup, monkeypatch):
    # `mailhub queue list` run as the wrong user: Permission denied on the
    # way to the queue folder, not "nothing queued"

    settings, _, _, _ = setup
    _queue_folder_denied(settings, monkeypatch)
    for action in ("list", "flush"):
        code, out, err = run(settings, action)
        assert (code, out) == (1, "") and "Permission denied" in err


@pytest.mark.parametrize("argv", [("list",), ("show", "Q"), ("flush",), ("delete", "Q"),
                                  ("hold", "Q"), ("release", "Q")])
def test_every_action_on_a_queue_the_user_cannot_reach_says_whom_to_run_it_as(
        setup, monkeypatch, argv):
    # `mailq` said whose the queue is and whom to run it as; `mailhub
    # queue` printed only "mailhub: PATH: Permission denied".  Here the
    # way to the queue folder is closed: its owner is state_dir's

    from txmailhub.hub_access import name_of

    settings, _, qid, _ = setup
    real_stat = _queue_folder_denied(settings, monkeypatch)
    argv = tuple(qid if a == "Q" else a for a in argv)
    code, out, err = run(settings, *argv)
    user = name_of(real_stat(settings.hub.state_dir).st_uid)
    run_as = "root" if user == "root" else f"{user} or root"
    verb = "change" if argv[0] in ("flush", "delete", "hold", "release") else "read"
    assert (code, out) == (1, "")
    assert err == (f"mailhub: cannot {verb} the queue: {settings.queue_dir}: Permission denied "
                   f"(it belongs to {user}, the user the hub runs as; run mailhub queue "
                   f"{argv[0]} as {run_as})\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs mailhub queue as another user")
@pytest.mark.parametrize("argv", [("list",), ("show", "Q"), ("flush",), ("delete", "Q"),
                                  ("hold", "Q"), ("release", "Q")])
@pytest.mark.parametrize("open_state", [False, True])
def test_a_queue_of_another_user_is_named_with_its_owner(open_tmp, argv, open_state):
    # the hub runs as nobody; the command as uid 4343, refused by the
    # kernel: at state_dir (0700), or with the folders open, at the queue
    # folder or a record (0600).  Whose it is and whom to run it as, once
    from conftest import as_user

    from txmailhub.hub_access import name_of

    config = open_tmp / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "var"\n')
    settings = load_text(config.read_text(), str(config))
    clock = Clock()
    queue = OutboundQueue(settings.queue_dir, clock)
    spool = open_tmp / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = queue.enqueue(Envelope(sender=Address("alice", "example.org"), recipients=(BOB,)),
                        SpooledMessage(str(spool), 17, 20)).result
    nobody = 65534
    for folder, _, files in os.walk(settings.hub.state_dir):
        os.chown(folder, nobody, nobody)
        os.chmod(folder, 0o755 if open_state else 0o700)
        for name in files:
            os.chown(os.path.join(folder, name), nobody, nobody, follow_symlinks=False)
    argv = tuple(qid if a == "Q" else a for a in argv)
    code, out, err = as_user(4343, 4343, lambda: run(settings, *argv))
    assert (code, out) == (1, ""), err
    verb = "change" if argv[0] in ("flush", "delete", "hold", "release") else "read"
    user = name_of(nobody)
    assert re.fullmatch(
        f"mailhub: cannot {verb} the queue: {re.escape(settings.queue_dir)}\\S*: Permission "
        f"denied \\(it belongs to {user}, the user the hub runs as; run mailhub queue "
        f"{argv[0]} as {user} or root\\)\n", err), err
    assert queue.read(qid) is not None and not queue.take_flag(FLUSH)  # nothing changed


def test_release_is_counted_for_the_running_hub(setup):
    # the hub delivering the message right now tells a release made meanwhile
    # by this count (and finds the change through the .changed file)
    settings, queue, qid, _ = setup
    queue.take_flag(CHANGED)
    assert queue.read(qid).releases == 0
    assert run(settings, "release", qid)[0] == 0
    entry = queue.read(qid)
    assert entry.releases == 1 and entry.next_attempt <= 1_800_000_000
    assert queue.take_flag(CHANGED)


def test_list_and_show_give_the_attempt_a_clock_set_back_brings_forward(setup, monkeypatch):
    # the record's retry time was written by a clock a day ahead of this
    # one (set back since, or the queue restored on another machine): the
    # hub tries the entry after its schedule step from now, not a day and
    # a minute later (docs/relay.rst, "Retry schedule"), and ``queue list``
    # shows the time the hub keeps
    settings, _, qid, _ = setup
    from txmailhub.relay import admin

    monkeypatch.setattr(admin._WallClock, "seconds",
                        staticmethod(lambda: 1_800_000_000.0 - 86400))
    code, out, _ = run(settings, "list")
    assert code == 0
    assert out.split()[5] == "2027-01-14T08:01:00Z"
    assert "\nnext attempt: 2027-01-14T08:01:00Z\n" in run(settings, "show", qid)[1]
    # a retry time within the step is shown as it is
    monkeypatch.setattr(admin._WallClock, "seconds", staticmethod(lambda: 1_800_000_030.0))
    assert run(settings, "list")[1].split()[5] == "2027-01-15T08:01:00Z"


def test_list_bounds_a_clock_set_back_by_the_configured_schedule(setup, monkeypatch):
    # [relay] retry_schedule's first step is 2 minutes: the entry is shown
    # due 2 minutes from now, as the hub keeps it, not the default's minute
    settings, _, _, cfg = setup
    from txmailhub.relay import admin

    cfg.write_text(cfg.read_text() + '[relay]\nretry_schedule = ["2m", "10m"]\n')
    settings = load_text(cfg.read_text(), str(cfg))
    monkeypatch.setattr(admin._WallClock, "seconds",
                        staticmethod(lambda: 1_800_000_000.0 - 86400))
    code, out, _ = run(settings, "list")
    assert code == 0
    assert out.split()[5] == "2027-01-14T08:02:00Z"


def _mailq(cfg) -> tuple[int, str, str]:
    from txmailhub.sendmail import run as sendmail

    out, err = io.StringIO(), io.StringIO()
    code = sendmail(["-bp"], str(cfg), "mailq", io.BytesIO(b""), err, out)
    return code, out.getvalue(), err.getvalue()


def test_mailq_counts_an_unreadable_record_as_an_entry_not_an_empty_queue(setup):
    # the record's line, and no "Mail queue is empty" under it: a script
    # that looks for that line would take the queue for empty
    _settings, queue, qid, cfg = setup
    with open(queue.record_path(qid), "w") as f:
        f.write("{not json")
    code, out, err = _mailq(cfg)
    assert (code, err) == (0, "") and out.startswith(f"{qid} (unreadable: ")
    assert len(out.splitlines()) == 1 and "empty" not in out


def test_a_record_gone_while_listed_is_no_line_and_may_leave_the_queue_empty(setup, monkeypatch):
    # delivered or deleted between reading the names and the record: no
    # line for it, and with nothing else the queue reads as empty
    settings, _queue, _qid, cfg = setup
    monkeypatch.setattr(OutboundQueue, "read", lambda self, qid: None)
    assert _mailq(cfg) == (0, "Mail queue is empty\n", "")
    assert run(settings, "list") == (0, "", "")


def test_queue_list_of_an_empty_queue_to_a_closed_stdout_is_quiet(setup):
    # no terminal behind it (``mailhub queue list >&-``): nothing to say,
    # and no traceback for asking whether there is one
    settings, queue, qid, _ = setup
    queue.delete(qid)
    p = argparse.ArgumentParser()
    add_queue_parser(p.add_subparsers(dest="command"))
    out = io.StringIO()
    out.close()
    assert run_queue(settings, p.parse_args(["queue", "list"]), out, io.StringIO()) == 0


def test_mailq_run_by_root_reads_the_queue_as_its_owner(setup, root_by_a_hubs_queue):
    calls = root_by_a_hubs_queue
    assert _mailq(setup[3])[0] == 0
    assert calls == [("setgroups", []), ("setgid", 4343), ("setuid", 4242)]


# --- an attempt under way: the hub's marker, as another process sees it ----------


def test_list_and_show_say_an_attempt_is_under_way(setup):
    # a running hub delivering the message (here: this process, holding
    # the marker's lock as the runner does) -- queue list and show say so
    settings, queue, qid, _ = setup
    marked = queue.mark_attempt(qid, 1_800_000_010.0)
    try:
        [line] = run(settings, "list")[1].splitlines()
        assert line.split()[5] == "delivering"
        out = run(settings, "show", qid)[1]
        assert "\nnext attempt: delivering\n" in out
        assert "\ndelivering: since 2027-01-15T08:00:10Z\n" in out
        queue.set_held(qid, True)  # held while it runs: the attempt goes on
        assert run(settings, "list")[1].split()[5] == "held,delivering"
    finally:
        queue.unmark_attempt(qid, marked)
    queue.set_held(qid, False)
    queue.update(qid, lambda e: dataclasses.replace(e, next_attempt=1_800_000_060.0))
    assert run(settings, "list")[1].split()[5] == "2027-01-15T08:01:00Z"
    assert "\ndelivering: no\n" in run(settings, "show", qid)[1]
    assert not [n for n in os.listdir(settings.queue_dir) if "attempt" in n]


def test_a_marker_nobody_holds_is_no_attempt(setup):
    # a hub stopped or killed during the attempt leaves its marker; without
    # its lock (the kernel drops it with the process) it says nothing
    settings, queue, qid, _ = setup
    fd = queue.mark_attempt(qid, 1_800_000_010.0).result
    # the process that held it is gone: its lock with it.  Closed as the
    # queue closes it, which takes the number off inflight's list too (a
    # plain os.close left it there, for a fork to close when reused)
    inflight._close_held(fd)
    assert os.path.exists(queue.attempt_path(qid))
    assert run(settings, "list")[1].split()[5] == "2027-01-15T08:01:00Z"
    assert "\ndelivering: no\n" in run(settings, "show", qid)[1]
    queue.recover()  # the next start removes it
    assert not os.path.exists(queue.attempt_path(qid))


def test_a_killed_hubs_marker_is_no_attempt_for_the_mailhub_command(setup):
    # the real thing across processes: one that marks the attempt and is
    # killed (SIGKILL), then `mailhub queue list` in another
    settings, queue, qid, cfg = setup
    code = ("import os, signal, sys\n"
            "from twisted.internet.task import Clock\n"
            "from txmailhub.relay.queue import OutboundQueue\n"
            f"q = OutboundQueue({settings.queue_dir!r}, Clock())\n"
            f"q.mark_attempt({qid!r}, 1800000010.0)\n"
            "print('marked', flush=True)\n"
            "sys.stdin.readline()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    marker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert marker.stdout.readline() == "marked\n"
        proc = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(cfg),
                               "queue", "list"], capture_output=True, text=True, timeout=60)
        assert proc.stdout.split()[5] == "delivering", proc.stdout + proc.stderr
    finally:
        marker.stdin.close()  # it reads the end, and kills itself
        assert marker.wait(timeout=60) == -9
    proc = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(cfg), "queue",
                           "list"], capture_output=True, text=True, timeout=60)
    # (a time: the wall clock's, in that process)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", proc.stdout.split()[5]), (
        proc.stdout + proc.stderr)
    assert os.path.exists(queue.attempt_path(qid))  # left behind, and stale


def test_list_says_an_entry_only_owes_a_notice(setup, tmp_path):
    # every recipient done, a delivery status notice still to send (a
    # success notice owed, or a failure notice the spool refused): the
    # line named the delivered recipients as still to deliver, with a next
    # attempt, as a message waiting for its first try -- nothing said that
    # only the notice to the sender was left
    from txmailhub.relay.record import FAILED

    settings, queue, qid, _ = setup
    success, env, spooled = _success_notice_owed(queue, tmp_path)
    failure = queue.enqueue(dataclasses.replace(env, recipients=(BOB, CAROL)), spooled).result

    def bounced_one_delivered_one(e):
        bob, carol = e.recipients
        return dataclasses.replace(e.with_recipients({
            BOB: dataclasses.replace(bob, state=FAILED, attempts=1, last_reply=Reply.of(
                550, "5.1.1", "No such user")),
            CAROL: dataclasses.replace(carol, state="delivered", attempts=1)}),
            attempts=1, next_attempt=1_800_000_060.0)

    queue.update(failure, bounced_one_delivered_one)
    lines = {line.split()[0]: line.split() for line in run(settings, "list")[1].splitlines()}
    # the recipients the notice is about, then "notice," before the time
    assert lines[success][2:5] == ["bob@remote.test", "0", "notice,2027-01-15T08:00:00Z"]
    assert lines[failure][2:] == ["bob@remote.test", "1", "notice,2027-01-15T08:01:00Z",
                                  "550", "5.1.1", "No", "such", "user"]
    # one with recipients still to deliver is as it was
    assert lines[qid][4:6] == ["1", "2027-01-15T08:01:00Z"]
    assert "\nnext attempt: notice,2027-01-15T08:00:00Z\n" in run(settings, "show", success)[1]
    queue.set_held(success, True)
    lines = {line.split()[0]: line.split() for line in run(settings, "list")[1].splitlines()}
    assert lines[success][4] == "notice,held"


def test_a_hand_edited_time_that_is_no_date_is_shown_not_a_traceback(setup):
    # "last_attempt": NaN or "next_attempt": 1e300 in a record edited by
    # hand: queue show and queue list ended in a ValueError traceback
    settings, queue, qid, _ = setup
    path = queue.record_path(qid)
    raw = open(path, "rb").read()
    raw = raw.replace(b'"last_attempt": 1800000000.0', b'"last_attempt": NaN', 1)
    raw = raw.replace(b'"next_attempt": 1800000060.0', b'"next_attempt": 1e300', 1)
    open(path, "wb").write(raw)
    code, out, err = run(settings, "show", qid)
    assert (code, err) == (0, "")
    assert " last-attempt=nan " in out
    code, out, err = run(settings, "list")
    assert (code, err) == (0, "")
    # a time further away than the schedule's step is that step from now
    assert out.split()[5] == "2027-01-15T08:01:00Z"
    raw = raw.replace(b'"next_attempt": 1e300', b'"next_attempt": NaN', 1)
    open(path, "wb").write(raw)
    code, out, err = run(settings, "list")
    # a retry time of NaN is due now, for the runner as here (schedule.due_by)
    assert (code, err, out.split()[5]) == (0, "", "2027-01-15T08:00:00Z")
