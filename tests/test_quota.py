"""[hub] mailbox_quota: the Maildir meter (txmailhub.store.quota) and the
452 4.2.2 at RCPT (the policy's check_quota, as the engine runs it)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from txmailhub.address import Address
from txmailhub.errors import Rejected
from txmailhub.smtp import replies
from txmailhub.smtp.policy import RecipientPolicy
from txmailhub.smtp.server import MessageComplete, ServerConfig, Session, SMTPServer, StartMessage
from txmailhub.store import quota as quota_module
from txmailhub.store.quota import RACY_SECONDS, MailboxUsage, folder_size
from txmailhub.testing import MemorySpooler, QueueSpy, StaticRouter

FULL = replies.MAILBOX_FULL.text()


def maildir(root: Path, name: str = "alice") -> Path:
    md = root / name
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    return md


def put(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    return path


def age(*paths: Path, seconds: float = 60.0) -> None:
    """Make folders look settled: changed longer ago than RACY_SECONDS."""
    then = time.time() - seconds
    for p in paths:
        os.utime(p, (then, then))


# -- the meter ---------------------------------------------------------------


def test_a_folder_is_measured_from_its_names(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    put(md / "new", "1700000000.M1P2Q3.host,S=1000,W=1020", 3)  # S= is believed
    put(md / "cur", "1700000001.M1P2Q4.host,S=500,W=510:2,S", 1)
    put(md / "cur", "1700000002.foreign", 77)  # no S=: the file's size
    put(md / "cur", ".hidden,S=9999", 1)  # not a message
    (md / "cur" / "sub,S=4444").mkdir()  # not a message either
    os.symlink("/etc/hostname", md / "new" / "link,S=8888")
    put(md / "tmp", "in-flight,S=7777", 1)  # not delivered yet
    assert folder_size(str(md / "new")) == 1000
    assert folder_size(str(md / "cur")) == 577
    assert MailboxUsage().usage(str(md)) == 1577


def test_an_absurd_size_in_a_name_is_not_believed(tmp_path: Path) -> None:
    # a file copied in by hand with a wild ,S= (over what any message can
    # be): counted at its own size, as POP3's scan reads it, or one such
    # name made the mailbox "full" for good
    md = maildir(tmp_path)
    put(md / "new", f"1700000000.M1P2Q3.host,S={(1 << 62) + 1}", 3)
    put(md / "cur", f"1700000001.M1P2Q4.host,S={1 << 62}:2,S", 5)  # the largest believed
    assert folder_size(str(md / "new")) == 3
    assert folder_size(str(md / "cur")) == 1 << 62


def test_a_mailbox_not_made_yet_holds_nothing(tmp_path: Path) -> None:
    assert MailboxUsage().usage(str(tmp_path / "nobody")) == 0


def test_an_unchanged_folder_is_not_listed_again(tmp_path: Path, monkeypatch) -> None:
    md = maildir(tmp_path)
    put(md / "new", "1.a.h,S=100", 1)
    age(md / "new", md / "cur")
    listed: list[str] = []
    real = quota_module._measure
    monkeypatch.setattr(quota_module, "_measure", lambda f: listed.append(f) or real(f))
    now = [time.time()]
    usage = MailboxUsage(clock=lambda: now[0])
    assert usage.usage(str(md)) == 100
    now[0] += RACY_SECONDS + 1
    assert usage.usage(str(md)) == 100
    assert len(listed) == 2  # new/ and cur/ once each
    # a delivery changes new/ only: new/ is listed again, cur/ is not
    put(md / "new", "2.a.h,S=50", 1)
    age(md / "new")
    now[0] += RACY_SECONDS + 1
    assert usage.usage(str(md)) == 150
    assert listed[2:] == [str(md / "new")]
    # a POP3 DELE changes the folder too
    (md / "new" / "1.a.h,S=100").unlink()
    age(md / "new", seconds=30)
    now[0] += RACY_SECONDS + 1
    assert usage.usage(str(md)) == 50


def test_a_large_folder_changed_just_now_is_listed_at_most_once_per_racy_interval(
        tmp_path: Path, monkeypatch) -> None:
    # two changes within one tick of the file system's clock leave the
    # mtime as it was: a total listed just after a change is not taken as
    # exact.  But a large folder that changes all the time is not listed
    # at every RCPT either: in between, the last total stands.
    md = maildir(tmp_path)
    put(md / "new", "1.a.h,S=100", 1)
    age(md / "cur")
    calls: list[str] = []
    real = quota_module._measure
    monkeypatch.setattr(quota_module, "_measure", lambda f: calls.append(f) or real(f))
    now = [time.time()]
    usage = MailboxUsage(clock=lambda: now[0], small=0)  # every folder is large
    assert usage.usage(str(md)) == 100
    put(md / "new", "2.a.h,S=50", 1)  # arrives at once
    assert usage.usage(str(md)) == 100  # the last total, moments old
    assert calls.count(str(md / "new")) == 1
    now[0] += RACY_SECONDS + 1
    assert usage.usage(str(md)) == 150  # listed again: the change is seen
    assert calls.count(str(md / "new")) == 2
    for _ in range(3):  # exact now: listed well after the folder's last change
        now[0] += RACY_SECONDS + 1
        assert usage.usage(str(md)) == 150
    assert calls.count(str(md / "new")) == 2
    assert calls.count(str(md / "cur")) == 1  # settled from the start


def test_a_small_folder_changed_just_now_is_listed_again_at_once(
        tmp_path: Path, monkeypatch) -> None:
    md = maildir(tmp_path)
    put(md / "new", "1.a.h,S=100", 1)
    usage = MailboxUsage()
    assert usage.usage(str(md)) == 100
    put(md / "new", "2.a.h,S=50", 1)
    assert usage.usage(str(md)) == 150
    usage.small = 1  # two names: a large folder now
    put(md / "new", "3.a.h,S=25", 1)
    assert usage.usage(str(md)) == 150  # its total of a moment ago


def test_the_meter_remembers_a_bounded_number_of_folders(tmp_path: Path) -> None:
    usage = MailboxUsage(keep=4, clock=lambda: time.time() + 60)
    for i in range(5):
        usage.usage(str(maildir(tmp_path, f"u{i}")))
    assert len(usage) == 4


def test_a_large_folder_is_measured_from_its_names(tmp_path: Path) -> None:
    # 20,000 messages named as the hub names them: summed from the listing
    # (about 30 ms on a small 2-core machine, see txmailhub.store.quota)
    md = maildir(tmp_path)
    new = md / "new"
    for i in range(20_000):
        (new / f"17000{i:05d}.M{i}P1Q1.host,S=2048,W=2100").touch()
    assert folder_size(str(new)) == 20_000 * 2048


# -- RCPT ----------------------------------------------------------------------


class Store:
    """A store that names its Maildirs, as MaildirStore does."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def maildir_path(self, address: Address) -> str:
        return str(self.root / address.domain / address.local.lower())


def make_policy(root: Path, quota: int, store=True, reactor=None) -> RecipientPolicy:
    router = StaticRouter(
        {"alice": None, "bob": None, "list": ["alice", "bob"], "solo": ["alice"],
         "fwd": ["alice", "x@remote.test"]},
        domains=("example.org",),
    )
    return RecipientPolicy(SimpleNamespace(
        router=router, queue=QueueSpy(), spooler=MemorySpooler(),
        store=Store(root) if store else None, reactor=reactor,
        settings=SimpleNamespace(hub=SimpleNamespace(primary_domain="example.org",
                                                     mailbox_quota=quota))))


def fill(root: Path, local: str, size: int) -> None:
    md = maildir(root / "example.org", local)
    put(md / "cur", f"1.{local}.h,S={size}:2,S", 1)


class Driver:
    def __init__(self, policy: RecipientPolicy) -> None:
        self.engine = SMTPServer(
            ServerConfig(hostname="mx.example.org", primary_domain="example.org"), policy,
            Session(client_host="192.0.2.9"))
        self.engine.greeting()
        self.engine.data_to_send()

    def send(self, text: str) -> list[str]:
        e = self.engine
        e.receive_data(text.encode())
        while (ev := e.next_event()) is not None:
            if isinstance(ev, StartMessage):
                e.message_started(lambda data: None)
            elif isinstance(ev, MessageComplete):
                e.message_done(replies.accepted("ID1"))
        return e.data_to_send().decode().splitlines()


def test_without_a_quota_rcpt_measures_nothing(tmp_path: Path, monkeypatch) -> None:
    policy = make_policy(tmp_path, 0)
    assert policy.check_quota is None
    monkeypatch.setattr(os, "stat", lambda *a, **k: pytest.fail("a stat at RCPT"))
    monkeypatch.setattr(os, "scandir", lambda *a, **k: pytest.fail("a listing at RCPT"))
    d = Driver(policy)
    assert d.send("EHLO c\r\nMAIL FROM:<s@x.test> SIZE=1000\r\nRCPT TO:<alice>\r\n")[-1] \
        .startswith("250 ")


def test_a_store_that_names_no_maildirs_has_no_quota(tmp_path: Path) -> None:
    assert make_policy(tmp_path, 1000, store=False).check_quota is None


def test_a_full_mailbox_is_452_4_2_2_at_rcpt(tmp_path: Path) -> None:
    fill(tmp_path, "alice", 1000)
    d = Driver(make_policy(tmp_path, 1000))
    out = d.send("EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\n")
    assert out[-2:] == [FULL, replies.recipient_ok("bob@example.org").text()]
    assert FULL.startswith("452 4.2.2 ")
    # the transaction goes on for bob, and DATA is accepted for him only
    assert d.send("DATA\r\n")[-1].startswith("354")
    assert d.send("hi\r\n.\r\n")[-1].startswith("250")


def test_a_mailbox_under_its_quota_is_accepted(tmp_path: Path) -> None:
    fill(tmp_path, "alice", 999)
    d = Driver(make_policy(tmp_path, 1000))
    assert d.send("EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<Alice>\r\n")[-1].startswith("250 ")


def test_the_announced_size_counts(tmp_path: Path) -> None:
    fill(tmp_path, "alice", 600)
    d = Driver(make_policy(tmp_path, 1000))
    assert d.send("EHLO c\r\nMAIL FROM:<s@x.test> SIZE=401\r\nRCPT TO:<alice>\r\n")[-1] == FULL
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<s@x.test> SIZE=400\r\nRCPT TO:<alice>\r\n")[-1].startswith("250 ")


def test_the_postmaster_is_never_refused(tmp_path: Path) -> None:
    fill(tmp_path, "postmaster", 5000)
    policy = make_policy(tmp_path, 1000)
    d = Driver(policy)
    out = d.send("EHLO c\r\nMAIL FROM:<s@x.test> SIZE=5000\r\nRCPT TO:<postmaster>\r\n"
                 "RCPT TO:<PostMaster@example.org>\r\n")
    assert [line[:4] for line in out[-2:]] == ["250 ", "250 "]


def test_an_alias_is_refused_only_when_all_its_mailboxes_are_full(tmp_path: Path) -> None:
    fill(tmp_path, "alice", 2000)
    d = Driver(make_policy(tmp_path, 1000))
    d.send("EHLO c\r\nMAIL FROM:<s@x.test>\r\n")
    assert d.send("RCPT TO:<solo>\r\n") == [FULL]  # its one mailbox is full
    assert d.send("RCPT TO:<list>\r\n")[-1].startswith("250 ")  # bob has room
    assert d.send("RCPT TO:<fwd>\r\n")[-1].startswith("250 ")  # a remote member
    fill(tmp_path, "bob", 1000)
    assert d.send("RCPT TO:<list>\r\n") == [FULL]


def test_check_quota_refuses_with_rejected(tmp_path: Path) -> None:
    fill(tmp_path, "alice", 10)
    policy = make_policy(tmp_path, 10)
    alice = Address("alice", "example.org")
    with pytest.raises(Rejected) as info:
        policy.check_quota(alice, (alice,), None)
    assert info.value.reply is replies.MAILBOX_FULL
    policy.check_quota(Address("bob", "example.org"), (Address("bob", "example.org"),), 10)


def test_full_mailboxes_are_no_client_error_but_take_recipient_slots(tmp_path: Path) -> None:
    # a list server that meets many full mailboxes is not cut off after
    # max_errors, and a client that asks again and again runs into
    # max_recipients as any other
    fill(tmp_path, "alice", 1000)
    policy = make_policy(tmp_path, 1000)
    d = Driver(policy)
    d.engine.config = ServerConfig(hostname="mx.example.org", primary_domain="example.org",
                                   max_errors=3, max_recipients=5)
    d.send("EHLO c\r\nMAIL FROM:<s@x.test>\r\n")
    assert d.send("RCPT TO:<alice>\r\n" * 5) == [FULL] * 5
    assert d.engine.errors == 0
    assert d.send("RCPT TO:<bob>\r\n") == [replies.TOO_MANY_RECIPIENTS.text()]


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied"),
    # a UTF-8 local part where the file system encoding is not UTF-8
    UnicodeEncodeError("ascii", "j\u00f6rg", 1, 2, "ordinal not in range(128)"),
])
def test_a_mailbox_that_cannot_be_measured_gets_its_mail(tmp_path: Path, monkeypatch,
                                                         error: Exception) -> None:
    fill(tmp_path, "alice", 5000)
    policy = make_policy(tmp_path, 1000)

    def denied(md: str) -> int:
        raise error

    monkeypatch.setattr(policy.usage, "usage", denied)
    alice = Address("alice", "example.org")
    policy.check_quota(alice, (alice,), None)  # no 451, no traceback: accepted


def test_a_mailbox_that_cannot_be_measured_is_logged_once_per_interval(
        tmp_path: Path, monkeypatch) -> None:
    # one line per RCPT was a line per recipient a client chose to send: a
    # hundred RCPT TO:<alice> filled the log
    from twisted.internet.task import Clock
    from twisted.internet.testing import EventLoggingObserver
    from twisted.logger import Logger, formatEvent

    from txmailhub.smtp import policy as policy_module

    events = EventLoggingObserver()
    monkeypatch.setattr(policy_module, "log", Logger(observer=events))
    clock = Clock()
    clock.advance(1000)
    policy = make_policy(tmp_path, 1000, reactor=clock)

    def denied(md: str) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(policy.usage, "usage", denied)
    d = Driver(policy)
    d.send("EHLO c\r\nMAIL FROM:<s@x.test>\r\n")
    # still accepted, every time (the quota is soft)
    assert [line[:4] for line in d.send("RCPT TO:<alice>\r\n" * 50)] == ["250 "] * 50
    alice = Address("alice", "example.org")
    for _ in range(49):
        policy.check_quota(alice, (alice,), None)
    bob = Address("bob", "example.org")
    policy.check_quota(bob, (bob,), None)  # another mailbox has its own line
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "cannot measure the mailbox of alice@example.org for its quota: "
        "[Errno 13] Permission denied",
        "cannot measure the mailbox of bob@example.org for its quota: "
        "[Errno 13] Permission denied",
    ]
    assert policy_module.UNMEASURED_WARNING_SECONDS == 300
    clock.advance(299.5)
    policy.check_quota(alice, (alice,), None)
    assert len(events) == 2
    # five minutes after its line: the next one, with the RCPTs left unsaid
    # (98 of the first 99, one just now)
    clock.advance(0.5)
    policy.check_quota(alice, (alice,), None)
    assert formatEvent(events[2]) == (
        "cannot measure the mailbox of alice@example.org for its quota: [Errno 13] "
        "Permission denied (also at 99 RCPT since the last such line; one line per "
        "mailbox every 300 s at most)")
    assert events[2]["log_level"].name == "warn"
    policy.check_quota(alice, (alice,), None)
    assert len(events) == 3


def test_a_large_folder_is_listed_again_after_the_clock_is_set_back(
        tmp_path: Path) -> None:
    # the clock stepped back (an NTP step, an operator's date): the last
    # listing now seems to lie in the future.  Its total may stand for
    # RACY_SECONDS, not until the clock catches up with it again.
    md = maildir(tmp_path)
    put(md / "new", "1.a.h,S=100", 1)
    now = [time.time()]
    usage = MailboxUsage(clock=lambda: now[0], small=0)  # every folder is large
    assert usage.usage(str(md)) == 100
    now[0] -= 3600
    put(md / "new", "2.a.h,S=50", 1)
    assert usage.usage(str(md)) == 150


def test_a_message_larger_than_the_quota_is_refused_for_good(tmp_path: Path) -> None:
    # SIZE= over the quota itself: no room the user makes can ever take
    # it, so "try again later" would only have the sender's server retry
    # for days; RFC 3463 X.2.3 is the per-mailbox size limit, permanent.
    # Like a full mailbox, it is no error of the client's: a list server
    # sending one large message to many mailboxes is not cut off.
    policy = make_policy(tmp_path, 1000)
    d = Driver(policy)
    d.engine.config = ServerConfig(hostname="mx.example.org", primary_domain="example.org",
                                   max_errors=3)
    d.send("EHLO c\r\nMAIL FROM:<s@x.test> SIZE=1001\r\n")
    too_big = replies.MESSAGE_OVER_QUOTA.text()
    assert too_big.startswith("550 5.2.3 ")
    assert d.send("RCPT TO:<alice>\r\n" * 4) == [too_big] * 4  # an empty mailbox
    assert d.send("RCPT TO:<list>\r\n") == [too_big]
    assert d.send("RCPT TO:<fwd>\r\n")[-1].startswith("250 ")  # a remote member
    assert d.engine.errors == 0
    # at the quota exactly: the mailbox has room for it
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<s@x.test> SIZE=1000\r\nRCPT TO:<alice>\r\n")[-1].startswith("250 ")
    # a mailbox that is full as well as too small: the permanent reply
    fill(tmp_path, "bob", 1000)
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<s@x.test> SIZE=5000\r\nRCPT TO:<bob>\r\n")[-1] == too_big
    # the size of the quota exactly, to a mailbox that holds something:
    # full for now (452), not too large for good
    fill(tmp_path, "alice", 1)
    d.send("RSET\r\n")
    assert d.send("MAIL FROM:<s@x.test> SIZE=1000\r\nRCPT TO:<alice>\r\n")[-1] == (
        replies.MAILBOX_FULL.text())


def test_the_listeners_of_one_hub_share_one_meter(tmp_path: Path) -> None:
    # the MX, submission and implicit-TLS submission factories each make
    # a policy: one meter between them keeps the documented bound of
    # folders remembered, and a folder is listed once, not once per port
    from txmailhub.components import Components
    from txmailhub.config import AliasesSettings, HubSettings, Settings, UsersSettings

    settings = Settings(
        path=str(tmp_path / "mailhub.toml"),
        hub=HubSettings("mail.example.org", str(tmp_path), ("example.org",),
                        mailbox_quota=1000),
        users=UsersSettings(str(tmp_path / "users")), aliases=AliasesSettings(None), tls=None)
    components = Components(
        settings=settings, reactor=None, router=StaticRouter({"alice": None},
                                                             domains=("example.org",)),
        store=Store(tmp_path), spooler=None, portal=None)
    mx, submission = RecipientPolicy(components), RecipientPolicy(components)
    assert mx.usage is submission.usage
    # and one memory of the mailboxes it could not measure
    assert mx.unmeasured is submission.unmeasured


def test_the_rules_alone_a_postmaster_member_and_a_remote_member() -> None:
    # smtp.policy's two rules, shared with sendmail -bv: an alias whose
    # members are all full but for the postmaster is taken (RFC 5321
    # 4.5.1: never refused); an alias whose local mailboxes have no usable
    # name but that has a remote member is taken for that member
    from txmailhub.errors import MailboxNameError
    from txmailhub.smtp.policy import quota_refusal, storable

    joe, pm = Address("joe", "example.org"), Address("postmaster", "example.org")
    alias = Address("list", "example.org")
    assert quota_refusal(alias, (joe, pm), 100, lambda m: 100, lambda d: True) is None
    assert quota_refusal(alias, (joe,), 100, lambda m: 100, lambda d: True) == (
        replies.MAILBOX_FULL)

    def unusable(mailbox: Address) -> str:
        raise MailboxNameError("no folder", part="local part")

    remote = (Address("carol", "elsewhere.test"),)
    assert storable(alias, (joe,), remote, unusable, "example.org") == ()
    with pytest.raises(Rejected):
        storable(alias, (joe,), (), unusable, "example.org")
