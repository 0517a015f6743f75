"""The users file, the cred checker and the realm."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txmailhub.address import Address, one_quoted_string
from txmailhub.auth import ClientCredentials, LoginAbandoned, MailRealm, UsersChecker, build_portal
from txmailhub.errors import NoSuchUser, UserExists, UsersFileError
from txmailhub.interfaces import IMailbox, ISMTPUser
from txmailhub.passwords import PasswordPolicy
from txmailhub.store import sync
from txmailhub.users import UsersDB, hash_password, hash_problem, verify_password


class AnyPassword(PasswordPolicy):
    """Finds nothing weak: the tests here are about the file and the
    checks, with short passwords (the policy has tests/test_passwords.py)."""

    def weaknesses(self, password: str, address: Address) -> list[str]:
        return []


@pytest.fixture
def db(tmp_path: Path) -> UsersDB:
    return UsersDB(str(tmp_path / "users"), "example.org", ("example.org", "example.net"),
                   password_policy=AnyPassword())


def test_hash_round_trip_and_salting() -> None:
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1 != h2 and h1.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret", h1) and verify_password("s3cret", h2)
    assert not verify_password("s3creT", h1)
    assert not verify_password("s3cret", "md5$abc")
    assert not verify_password("s3cret", "garbage")


def test_add_list_passwd_del_round_trip(db: UsersDB) -> None:
    assert db.addresses() == []
    assert db.add("alice", "pw1") == Address("alice", "example.org")
    db.add("Bob@Example.NET", "pw2", allow_apop=True)
    assert [str(a) for a in db.addresses()] == ["alice@example.org", "bob@example.net"]
    assert db.check_password(Address("alice", "example.org"), "pw1")
    assert not db.check_password(Address("alice", "example.org"), "pw2")
    assert db.apop_secret(Address("bob", "example.net")) == "pw2"
    assert db.apop_secret(Address("alice", "example.org")) is None
    db.set_password("alice@example.org", "new")
    assert db.check_password(Address("alice", "example.org"), "new")
    db.set_password("bob@example.net", "newbob")
    assert db.apop_secret(Address("bob", "example.net")) == "newbob"
    db.delete("alice")
    assert [str(a) for a in db.addresses()] == ["bob@example.net"]


def test_file_holds_hashes_only_and_is_private(db: UsersDB) -> None:
    db.add("alice", "correct horse")
    text = Path(db.path).read_text()
    assert "correct horse" not in text
    assert "alice@example.org scrypt$" in text
    assert os.stat(db.path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda d: d.add("alice", "x"), UserExists, "alice@example.org already exists"),
        (lambda d: d.delete("nobody"), NoSuchUser, "no such user: nobody@example.org"),
        (lambda d: d.set_password("nobody", "x"), NoSuchUser, "no such user"),
        (lambda d: d.add("eve@elsewhere.com", "x"), UsersFileError, "is not in a local domain"),
        (lambda d: d.add("carol", ""), UsersFileError, "the password is empty"),
        (lambda d: d.add("a b", "x"), UsersFileError, "whitespace"),
        (lambda d: d.add("", "x"), UsersFileError, "empty address"),
    ],
)
def test_clear_errors(db: UsersDB, call, error, message: str) -> None:
    db.add("alice", "pw")
    with pytest.raises(error, match=message):
        call(db)


def test_running_reader_sees_changes_without_restart(db: UsersDB) -> None:
    reader = UsersDB(db.path, "example.org")
    assert not reader.contains(Address("alice", "example.org"))
    db.add("alice", "pw")
    assert reader.contains(Address("ALICE", "example.org"))
    db.delete("alice")
    assert not reader.contains(Address("alice", "example.org"))


def test_offers_apop_follows_the_file_and_is_worked_out_once_per_read(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked by every POP3 greeting: it follows the file as lookups do, and
    the file's users are gone over when it is read, not per question."""
    reader = UsersDB(db.path, "example.org")
    assert not reader.offers_apop()  # no file yet
    db.add("bob", "pw")
    assert not reader.offers_apop()
    db.add("alice", "pw", allow_apop=True)
    assert reader.offers_apop()
    parsed: list[str] = []
    real = reader._parse

    def counting(text: str):  # type: ignore[no-untyped-def]
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(reader, "_parse", counting)
    # a settled file (read a while after it changed) is not read again
    old = os.stat(db.path).st_mtime - 60
    os.utime(db.path, (old, old))
    assert reader.offers_apop()
    parsed.clear()
    for _ in range(100):
        assert reader.offers_apop()
    assert parsed == []
    db.set_password("alice", "pw2")  # the secret follows the password
    assert reader.offers_apop()
    db.delete("alice")
    assert not reader.offers_apop()
    assert len(parsed) >= 1
    db.add("carol", "pw", allow_apop=True)
    assert reader.offers_apop()
    os.unlink(db.path)
    assert not reader.offers_apop()  # away: no users, no APOP


def test_a_same_size_rewrite_in_one_clock_tick_is_seen(db: UsersDB) -> None:
    """``mailhub user passwd`` twice in a second, or an editor that writes
    in place: a new hash has the size of the old one, and on a file
    system with a coarse clock the mtime stays too.  The running reader
    must not keep the old password for good."""
    joe = Address("joe", "example.org")
    old, new = hash_password("old-pw"), hash_password("new-pw")
    Path(db.path).write_text(f"joe {old}\n")
    assert db.get(joe).password_hash == old
    before = os.stat(db.path)
    with open(db.path, "r+") as f:  # in place: same inode, same size
        f.write(f"joe {new}\n")
    os.utime(db.path, ns=(before.st_atime_ns, before.st_mtime_ns))  # one clock tick
    assert os.stat(db.path).st_size == before.st_size
    assert db.get(joe).password_hash == new
    assert db.check_password(joe, "new-pw") and not db.check_password(joe, "old-pw")


def test_a_fresh_file_is_read_again_for_seconds_then_no_more(
        db: UsersDB, log_events: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a change the stamp cannot be trusted (a second change
    in the same tick keeps it): the file is read at each lookup -- and
    its problems are not logged again -- until ``RACY_SECONDS`` have
    passed; then an unchanged file costs a ``stat`` and no read."""
    import txmailhub.users as users_module
    from txmailhub.filestamp import RACY_SECONDS

    Path(db.path).write_text(f"joe {hash_password('pw')}\nbroken-line\n")
    mtime = os.stat(db.path).st_mtime
    now = [mtime]
    db._file.clock = lambda: now[0]
    opened: list[str] = []
    real_read = users_module.read_regular
    monkeypatch.setattr(users_module, "read_regular",
                        lambda *a, **k: opened.append(a[0]) or real_read(*a, **k))
    joe = Address("joe", "example.org")
    for _ in range(3):
        assert db.contains(joe)
        now[0] += 0.5
    assert len(opened) == 3  # within RACY_SECONDS of the mtime: each lookup reads
    now[0] = mtime + RACY_SECONDS
    assert db.contains(joe)
    count = len(opened)
    for _ in range(5):
        now[0] += 60
        assert db.contains(joe)
    assert len(opened) == count  # settled: no reload storm
    warned = [e for e in log_events if e.get("problem")]
    assert len(warned) == 1  # the bad line, once per change of the file


def test_a_users_file_that_goes_away_is_reported_not_read_as_no_users(
        db: UsersDB, log_events: list[dict]) -> None:
    events = log_events
    db.add("alice", "pw")
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert reader.contains(alice) and not reader.missing
    os.rename(db.path, db.path + ".away")
    assert not reader.contains(alice) and reader.missing
    assert not reader.contains(alice)  # said once, not per lookup
    gone = [e for e in events if "does not exist" in e.get("log_format", "")]
    assert len(gone) == 1 and gone[0]["log_level"].name == "error"
    os.rename(db.path + ".away", db.path)
    assert reader.contains(alice) and not reader.missing
    assert any("is back" in e.get("log_format", "") for e in events)
    Path(db.path).write_text(Path(db.path).read_text() + "broken-line\n")
    assert reader.contains(alice)
    (warning,) = [e for e in events if e.get("problem")]
    assert warning["problem"].endswith(":3: expected '<address> <hash> [apop=<secret>]'")


def test_crash_between_write_and_rename_keeps_old_file(
    db: UsersDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.add("alice", "pw")
    before = Path(db.path).read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError):
        db.add("bob", "pw")
    monkeypatch.undo()
    assert Path(db.path).read_bytes() == before
    fresh = UsersDB(db.path, "example.org")
    assert [str(a) for a in fresh.addresses()] == ["alice@example.org"]
    # whatever temp file the crash left is not mistaken for the users file
    db.add("bob", "pw")
    assert len(UsersDB(db.path, "example.org").addresses()) == 2


def test_malformed_lines_are_reported_not_fatal(db: UsersDB) -> None:
    Path(db.path).write_text(
        "# comment\nalice@example.org scrypt$1$1$1$AA==$AA==\nbroken-line\n"
        "bob@example.org h apop=!!notbase64\nbroken line here\n"
    )
    assert [str(a) for a in db.addresses()] == ["alice@example.org"]
    assert len(db.problems) == 4
    # alice keeps her mailbox; only her logins are impossible (N=1)
    assert db.problems[0].endswith(
        ":2: alice@example.org cannot log in: the password hash has impossible scrypt parameters"
    )
    assert db.problems[1].endswith(":3: expected '<address> <hash> [apop=<secret>]'")
    assert db.problems[3].endswith(
        ":5: expected '<address> <hash> [apop=<secret>]', not a third field without "
        '"apop=" (not shown: it may be a secret)')


def test_a_third_field_that_may_be_a_secret_is_not_logged(db: UsersDB, log_events) -> None:
    # an APOP secret written without its "apop=" is the likeliest third
    # field: the problem, which goes into the log, does not quote it
    from twisted.logger import formatEvent

    Path(db.path).write_text("bob@example.org scrypt$1$1$1$AA==$AA== S3cretApop\n")
    db.addresses()
    assert db.problems and not any("S3cret" in p for p in db.problems)
    assert not any("S3cret" in formatEvent(e) for e in log_events)


def test_lines_are_those_the_files_problems_number(db: UsersDB) -> None:
    # what check names a user's line by (PATH:LINENO, as the problems): the
    # line in effect, counted as the problems count them -- past a byte
    # order mark, at LF (a CRLF file has as many lines), a bad line counted
    Path(db.path).write_bytes(
        b"\xef\xbb\xbf# users\r\nbroken-line\r\n\r\nJoe@Example.ORG scrypt$1$1$1$AA==$AA==\r\n"
        b"ann@example.org h\r\njoe@example.org h2\r\n")
    assert db.lines() == {"joe@example.org": 4, "ann@example.org": 5}
    assert [p.split(": ", 1)[0][len(db.path):] for p in db.problems] == [":2", ":4", ":5", ":6"]
    assert db.problems[3].endswith(":6: joe@example.org is already on line 4: this line is ignored")
    # the file as it is now, as the other readers follow it
    Path(db.path).write_text("ann@example.org h\n")
    os.utime(db.path, (1, 1))
    assert db.lines() == {"ann@example.org": 1}
    os.remove(db.path)
    assert db.lines() == {}


def test_a_user_command_keeps_every_line_it_does_not_concern(db: UsersDB) -> None:
    # An admin edits the file by hand (check reports what it cannot read);
    # `mailhub user add` for someone else must not throw those lines away,
    # nor let a duplicate line replace the password in effect.
    db.add("joe", "joe-pw")
    real = Path(db.path).read_bytes()
    Path(db.path).write_bytes(real + b"# my note \xff\xfe (not UTF-8)\n"
                              b"Joe@Example.ORG scrypt$16384$8$1$AAAA$BBBB\nbob@example.org\n")
    assert db.check_password(Address("joe", "example.org"), "joe-pw")  # the first line wins
    assert [p.split(": ", 1)[1] for p in db.problems] == [
        "joe@example.org is already on line 2: this line is ignored",
        "expected '<address> <hash> [apop=<secret>]'"]
    before = Path(db.path).read_bytes()
    db.add("ann", "ann-pw")
    after = Path(db.path).read_bytes()
    assert after.startswith(before) and after[len(before):].startswith(b"ann@example.org scrypt$")
    assert db.check_password(Address("joe", "example.org"), "joe-pw")
    # a new password rewrites the line in effect, and nothing else
    db.set_password("joe", "new-pw")
    lines = Path(db.path).read_bytes().split(b"\n")
    assert lines[1].startswith(b"joe@example.org scrypt$") and lines[1] not in before
    assert b"Joe@Example.ORG scrypt$16384$8$1$AAAA$BBBB" in lines
    assert b"# my note \xff\xfe (not UTF-8)" in lines and b"bob@example.org" in lines
    assert db.check_password(Address("joe", "example.org"), "new-pw")
    # deleting a user takes every line of it: the duplicate must not take over
    db.delete("joe")
    text = Path(db.path).read_bytes()
    assert b"joe@" not in text.lower() and b"# my note" in text and b"\nbob@example.org\n" in text
    assert db.get(Address("joe", "example.org")) is None


def test_a_byte_order_mark_first_is_kept_and_no_part_of_the_first_address(
        db: UsersDB) -> None:
    db.add("joe", "joe-pw")
    db.add("ann", "ann-pw")
    # saved again by an editor that writes "UTF-8 with BOM", joe's line first
    lines = Path(db.path).read_bytes().split(b"\n")
    joe = next(line for line in lines if line.startswith(b"joe@"))
    others = [line for line in lines if line and line != joe]
    Path(db.path).write_bytes(b"\xef\xbb\xbf" + b"\n".join([joe, *others]) + b"\n")
    reader = UsersDB(db.path, "example.org", ("example.org",), password_policy=AnyPassword())
    joe_address = Address("joe", "example.org")
    assert reader.contains(joe_address) and reader.problems == []
    assert [a.key for a in reader.addresses()] == ["ann@example.org", "joe@example.org"]
    assert reader.check_password(joe_address, "joe-pw")
    # a change of joe's line keeps the mark before it; deleting joe too
    db.set_password("joe", "new-pw")
    text = Path(db.path).read_bytes()
    assert text.startswith(b"\xef\xbb\xbfjoe@example.org scrypt$") and text.count(b"joe@") == 1
    assert reader.check_password(joe_address, "new-pw")
    # a change elsewhere leaves joe's line, and the one mark, as they were
    db.add("carl", "carl-pw")
    text = Path(db.path).read_bytes()
    assert text.startswith(b"\xef\xbb\xbfjoe@example.org scrypt$")
    assert text.count(b"\xef\xbb\xbf") == 1
    db.delete("carl")
    db.delete("joe")
    text = Path(db.path).read_bytes()
    assert text.startswith(b"\xef\xbb\xbf") and b"joe@" not in text
    assert text[3:] == b"\n".join(others) + b"\n"
    # none is added to a file without one
    Path(db.path).write_bytes(text[3:])
    db.add("bob", "bob-pw")
    assert not Path(db.path).read_bytes().startswith(b"\xef\xbb\xbf")


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        ("notahash", "not of the form scrypt$N$r$p$salt$key"),
        ("bcrypt$16384$8$1$AA==$AA==", "not of the form"),
        ("scrypt$16384$8$x$AA==$AA==", "not a number or not base64"),
        ("scrypt$16384$8$1$!!$AA==", "not a number or not base64"),
        ("scrypt$1000$8$1$AA==$AA==", "impossible scrypt parameters"),
        ("scrypt$16384$8$1$AA==$", "impossible scrypt parameters"),
        ("scrypt$1048576$8$1$AA==$AA==", "more memory than the hub allows"),
        ("scrypt$16384$8$32$AA==$AA==", "more work than the hub allows"),
    ],
)
def test_hash_problem(encoded: str, why: str) -> None:
    problem = hash_problem(encoded)
    assert problem is not None and why in problem
    assert not verify_password("pw", encoded)  # such a hash indeed never matches


def test_a_real_hash_has_no_problem() -> None:
    encoded = hash_password("pw")
    assert hash_problem(encoded) is None and verify_password("pw", encoded)


# --- twisted.cred --------------------------------------------------------


@implementer(IUsernameHashedPassword)
class APOPCreds:
    def __init__(self, username: bytes, challenge: bytes, digest: bytes) -> None:
        self.username, self.challenge, self.digest = username, challenge, digest

    def checkPassword(self, secret: bytes) -> bool:
        return hashlib.md5(self.challenge + secret).hexdigest().encode() == self.digest


def settle(db: UsersDB) -> None:
    """Date the users file long ago: a file changed less than
    ``RACY_SECONDS`` before a lookup may have been read half-written, and a
    failed login then is a temporary failure (``UsersDB.changing``); these
    tests mean the file as it stands."""
    os.utime(db.path, (1e9, 1e9))


def result_of(d: Deferred) -> object:
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def test_checker_without_a_users_file_is_a_temporary_failure(db: UsersDB) -> None:
    # Not "wrong password": nothing can be checked, and a lockout must not
    # count it (UsersUnavailable, not UnauthorizedLogin).
    from twisted.python.failure import Failure

    from txmailhub.errors import UsersUnavailable

    checker = UsersChecker(db)
    failure = result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw")))
    assert isinstance(failure, Failure) and failure.check(UsersUnavailable)
    db.add("bob", "bobpw")
    settle(db)
    failure = result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw")))
    assert isinstance(failure, Failure) and failure.check(UnauthorizedLogin)


def test_checker_accepts_and_rejects(db: UsersDB) -> None:
    db.add("alice", "pw", allow_apop=True)
    db.add("bob", "bobpw")
    settle(db)
    checker = UsersChecker(db)
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))) == (
        "alice@example.org"
    )
    assert result_of(checker.requestAvatarId(UsernamePassword(b"ALICE@example.org", b"pw"))) == (
        "alice@example.org"
    )
    for creds in (
        UsernamePassword(b"alice", b"wrong"),
        UsernamePassword(b"nobody", b"pw"),
        UsernamePassword(b"\xff", b"pw"),
        UsernamePassword(b"alice", b"\xff"),
    ):
        failure = result_of(checker.requestAvatarId(creds))
        assert failure.check(UnauthorizedLogin), creds  # type: ignore[attr-defined]
    challenge = b"<1.2@mail.example.org>"
    good = hashlib.md5(challenge + b"pw").hexdigest().encode()
    assert result_of(checker.requestAvatarId(APOPCreds(b"alice", challenge, good))) == (
        "alice@example.org"
    )
    bad = result_of(checker.requestAvatarId(APOPCreds(b"alice", challenge, b"0" * 32)))
    assert bad.check(UnauthorizedLogin)  # type: ignore[attr-defined]
    # bob has no APOP secret: APOP must fail even with the right digest
    bob = hashlib.md5(challenge + b"bobpw").hexdigest().encode()
    assert result_of(checker.requestAvatarId(APOPCreds(b"bob", challenge, bob))).check(
        UnauthorizedLogin
    )


def test_checker_runs_scrypt_through_the_thread_runner(db: UsersDB) -> None:
    db.add("alice", "pw")
    calls: list[str] = []

    def run(f, *args):
        calls.append(f.__name__)
        return succeed(f(*args))

    checker = UsersChecker(db, run)
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))) == (
        "alice@example.org"
    )
    # (with the doubt of the records it used: ``check_login``)
    assert calls == ["check_login"]


def held_checker(db: UsersDB) -> tuple[UsersChecker, list[Deferred]]:
    """A checker whose password checks each wait for the test to fire their
    turn (the list, in the order they started), then run for real."""
    turns: list[Deferred] = []

    def run(f, *args):
        d: Deferred = Deferred()
        turns.append(d)
        return d.addCallback(lambda _: f(*args))

    return UsersChecker(db, run), turns


def test_checker_runs_at_most_two_password_checks_at_once(db: UsersDB) -> None:
    # scrypt holds 16 MiB while it runs (and the allocator keeps it): a
    # burst of logins must not run one per thread of the reactor's pool
    db.add("alice", "pw")
    checker, running = held_checker(db)
    results = [checker.requestAvatarId(UsernamePassword(b"alice", b"pw")) for _ in range(5)]
    assert len(running) == 2
    running[0].callback(None)
    assert results[0].called and len(running) == 3  # the next one starts as one ends
    for d in running[1:]:
        d.callback(None)
    assert len(running) == 5
    running[3].callback(None)
    running[4].callback(None)
    assert [result_of(d) for d in results] == ["alice@example.org"] * 5


def test_checker_skips_a_queued_check_whose_client_left(db: UsersDB) -> None:
    # a burst of logins from clients that hang up at once must not keep
    # scrypt busy for nobody while real logins wait behind them
    db.add("alice", "pw")
    checker, turns = held_checker(db)
    here = {1: True, 2: True, 3: True, 4: True}
    results = [checker.requestAvatarId(ClientCredentials(b"alice", b"pw", lambda n=n: here[n]))
               for n in here]
    assert len(turns) == 2
    here[3] = False  # left while waiting for its turn
    turns[0].callback(None)
    refused = result_of(results[2])
    assert refused.check(LoginAbandoned)  # type: ignore[attr-defined]
    assert len(turns) == 3  # its turn went straight to the next client's check
    turns[1].callback(None)
    turns[2].callback(None)
    assert [result_of(results[n]) for n in (0, 1, 3)] == ["alice@example.org"] * 3



def test_waiting_password_checks_take_turns_by_client(db: UsersDB) -> None:
    # a flood of logins from one client (a guesser, or a script with the
    # right password reconnecting) must not make everyone else's login wait
    # behind all of it: the waiting checks are served one client at a time
    db.add("alice", "pw")
    checker, turns = held_checker(db)
    order: list[str] = []

    def login(client: str) -> Deferred:
        creds = ClientCredentials(b"alice", b"pw", lambda: True, client=client)
        return checker.requestAvatarId(creds).addCallback(lambda r: order.append(client))

    flood = [login("192.0.2.66") for _ in range(6)]
    other = login("198.51.100.7")
    assert len(turns) == 2  # two checks at once, as before
    turns[0].callback(None)
    turns[1].callback(None)
    # the other client's check ran as soon as a place was free, before the
    # rest of the flood
    assert len(turns) == 4
    turns[2].callback(None)
    turns[3].callback(None)
    assert order == ["192.0.2.66"] * 3 + ["198.51.100.7"]
    while not all(d.called for d in flood):
        next(d for d in turns if not d.called).callback(None)
    assert other.called and order.count("192.0.2.66") == 6
    assert order.count("192.0.2.66") == 6

class FakeStore:
    def __init__(self) -> None:
        self.opened: list[Address] = []
        self.closed = 0

    def open_mailbox(self, address: Address) -> Deferred:
        self.opened.append(address)
        store = self

        @implementer(IMailbox)
        class Box:
            def close(self) -> None:
                store.closed += 1

        return succeed(Box())


def test_portal_yields_smtp_user_and_locked_mailbox(db: UsersDB) -> None:
    db.add("alice", "pw")
    settle(db)
    store = FakeStore()
    portal = build_portal(db, store)
    iface, avatar, logout = result_of(  # type: ignore[misc]
        portal.login(UsernamePassword(b"alice", b"pw"), None, ISMTPUser)
    )
    assert iface is ISMTPUser and avatar.address == Address("alice", "example.org")
    iface, box, logout = result_of(  # type: ignore[misc]
        portal.login(UsernamePassword(b"alice", b"pw"), None, IMailbox)
    )
    assert iface is IMailbox and IMailbox.providedBy(box)
    assert store.opened == [Address("alice", "example.org")]
    logout()
    assert store.closed == 1
    failure = result_of(portal.login(UsernamePassword(b"alice", b"no"), None, IMailbox))
    assert failure.check(UnauthorizedLogin)  # type: ignore[attr-defined]
    assert store.opened == [Address("alice", "example.org")]


def test_realm_refuses_an_avatar_id_that_is_not_an_address() -> None:
    # an application's own checker answering "joe": no mailbox "@joe"
    realm = MailRealm(FakeStore())
    with pytest.raises(ValueError, match="not an address"):
        realm.requestAvatar(b"joe", None, IMailbox)


def test_realm_refuses_unknown_interface() -> None:
    from zope.interface import Interface

    class IOther(Interface):
        pass

    with pytest.raises(Exception, match="no avatar"):
        MailRealm(FakeStore()).requestAvatar("a@example.org", None, IOther)


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        db = UsersDB(str(tmp_path / "etc" / "users"), "example.org")
        db.add("joe", "pw", allow_weak=True)
    finally:
        os.umask(old)
    for path in ("etc", "etc/users", "etc/users.lock"):
        mode = (tmp_path / path).stat().st_mode & 0o777
        assert mode in (0o700, 0o600), (path, oct(mode))


def test_the_lock_keeps_the_users_files_owner(db: UsersDB, monkeypatch) -> None:
    # `mailhub user add` run as root next to a users file of the hub's
    # user: the lock it creates must stay openable by that user, or the
    # next `sudo -u mailhub mailhub user ...` fails on users.lock
    import os

    db.add("joe", "pw")
    os.unlink(db.path + ".lock")  # root's command is the first to make it
    st = os.stat(db.path)
    other = (st.st_uid + 4242, st.st_gid + 4343)  # the users file is another user's
    real_owner_of = sync.owner_of
    monkeypatch.setattr(sync, "owner_of",
                        lambda path: other if path == db.path else real_owner_of(path))
    given: list[tuple[int, tuple[int, int]]] = []
    monkeypatch.setattr(os, "fchown", lambda fd, u, g: given.append((os.fstat(fd).st_ino, (u, g))))
    db.add("ann", "pw")
    monkeypatch.undo()
    assert (os.stat(db.path + ".lock").st_ino, other) in given


def test_the_editor_keeps_crlf_and_replaces_the_line_in_effect(db: UsersDB) -> None:
    db.add("joe", "joe-pw")
    good = Path(db.path).read_bytes().split(b"\n")[1]
    # a Windows-edited file, with a bad line of joe's before the good one
    Path(db.path).write_bytes(b"# note\r\njoe@example.org h apop=!!notbase64\r\n"
                              + good + b"\r\n")
    db.set_password("joe", "new-pw")
    lines = Path(db.path).read_bytes().split(b"\n")
    assert lines[1] == b"joe@example.org h apop=!!notbase64\r"  # not the one in effect
    assert lines[2].startswith(b"joe@example.org scrypt$") and lines[2].endswith(b"\r")
    assert lines[2] != good + b"\r"
    db.add("ann", "ann-pw")
    assert Path(db.path).read_bytes().endswith(b"\r\n")
    assert all(line.endswith(b"\r") for line in Path(db.path).read_bytes().split(b"\n")[:-1])
    assert db.check_password(Address("joe", "example.org"), "new-pw")
    db.delete("joe")  # its unreadable line goes too
    assert b"joe@" not in Path(db.path).read_bytes()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_user_added_to_a_file_without_a_final_line_end_gets_a_line_of_its_own(
        db: UsersDB, eol: bytes) -> None:
    # an editor that writes no final newline: the new user's line must not
    # be glued to the last one (which would lose both users)
    db.add("joe", "joe-pw")
    good = Path(db.path).read_bytes().split(b"\n")[1].rstrip(b"\r")
    Path(db.path).write_bytes(b"# note" + eol + good)
    db.add("ann", "ann-pw")
    text = Path(db.path).read_bytes()
    assert text.startswith(b"# note" + eol + good + eol + b"ann@example.org scrypt$")
    assert text.endswith(eol) and text.count(b"\n") == 3
    assert [str(a) for a in db.addresses()] == ["ann@example.org", "joe@example.org"]
    assert db.check_password(Address("joe", "example.org"), "joe-pw")
    assert db.check_password(Address("ann", "example.org"), "ann-pw")


def test_users_added_before_the_checks_can_still_be_deleted(db: UsersDB) -> None:
    long = "x" * 70
    Path(db.path).write_text(f"{long}@example.org {hash_password('pw')}\n")
    db.set_password(long, "new")
    db.delete(long)
    assert db.addresses() == []
    with pytest.raises(UsersFileError, match="over 64 octets"):
        db.add(long, "pw")


def test_users_with_a_control_character_added_before_the_checks_can_still_be_deleted(
        db: UsersDB) -> None:
    # `user add` refused ESC, DEL and the C1 controls (isprintable) long
    # before parse_address did: a line written earlier (or by hand) is
    # still that user's, whose mailbox exists -- `user del` and `user
    # passwd` must reach it, and the problem names it, escaped
    for name in ("a\x1bb", "del\x7fete", "c\x9bd"):
        Path(db.path).write_text(f"bob@example.org {hash_password('pw')}\n"
                                 f"{name}@example.org {hash_password('pw')}\n")
        assert {a.key for a in db.addresses()} == {"bob@example.org", f"{name}@example.org"}
        problem, = db.problems
        assert "cannot log in" in problem and "user del" in problem
        assert not any(c in problem for c in "\x1b\x7f\x9b"), problem
        with pytest.raises(UnauthorizedLogin):  # logins refuse such a name
            UsersChecker(db).requestAvatarId(
                UsernamePassword(name.encode(), b"pw")).result.raiseException()
        db.set_password(name, "new")
        assert db.delete(name) == Address(name, "example.org")
        assert [a.key for a in db.addresses()] == ["bob@example.org"] and not db.problems
        with pytest.raises(UsersFileError, match="control character"):
            db.add(name, "pw")


@pytest.mark.parametrize("name", ["mehr\u200cdad", "eve\u202e", "bob\ue000"])
def test_a_name_logins_take_is_not_said_to_be_refused(db: UsersDB, name: str) -> None:
    # ``isprintable`` is false for more than the controls logins refuse:
    # a zero-width non-joiner (part of many a Persian name), a format or
    # private-use character.  A hand-written line with one logs in and
    # gets mail; check must not call it "cannot log in" and exit 2
    Path(db.path).write_text(f"{name}@example.org {hash_password('pw')}\n")
    assert [a.key for a in db.addresses()] == [f"{name}@example.org"]
    assert UsersChecker(db).requestAvatarId(
        UsernamePassword(name.encode(), b"pw")).result == f"{name}@example.org"
    assert db.problems == []


def test_a_hash_over_the_work_limit_is_refused_before_scrypt_runs() -> None:
    import base64

    salt = b"s" * 16
    key = hashlib.scrypt(b"pw", salt=salt, n=2**14, r=8, p=17, maxmem=64 * 1024 * 1024, dklen=32)
    encoded = (f"scrypt$16384$8$17${base64.b64encode(salt).decode()}"
               f"${base64.b64encode(key).decode()}")
    assert hash_problem(encoded) == "the password hash needs more work than the hub allows scrypt"
    assert not verify_password("pw", encoded)  # even the right password: no minute-long login


def test_every_octet_of_the_key_is_compared() -> None:
    import base64

    head, _, key = hash_password("pw").rpartition("$")
    assert verify_password("pw", f"{head}${key}")
    whole = base64.b64decode(key)
    for i in range(len(whole)):  # one bit off, at each octet in turn
        raw = bytearray(whole)
        raw[i] ^= 1
        assert not verify_password("pw", f"{head}${base64.b64encode(bytes(raw)).decode()}"), i


def test_a_same_size_edit_in_place_is_seen(db: UsersDB) -> None:
    db.add("alice", "old-pw")
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert reader.check_password(alice, "old-pw")
    st = os.stat(db.path)
    text = Path(db.path).read_text()
    old_hash = next(line.split()[1] for line in text.splitlines() if line.startswith("alice@"))
    with open(db.path, "r+") as f:  # an editor that writes in place: same inode, same size
        f.write(text.replace(old_hash, hash_password("new-pw")))
    os.utime(db.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert (os.stat(db.path).st_ino, os.stat(db.path).st_size) == (st.st_ino, st.st_size)
    assert reader.check_password(alice, "new-pw")


def test_an_unknown_user_costs_a_password_check_too(db: UsersDB, monkeypatch) -> None:
    from txmailhub import users

    checked = []
    monkeypatch.setattr(users, "verify_password", lambda pw, h: checked.append(h) or False)
    db.add("alice", "pw")
    assert not db.check_password(Address("nobody", "example.org"), "pw")
    assert checked == [users._DUMMY_HASH]  # same scrypt cost: no user enumeration by timing


def test_a_fifo_in_place_of_the_users_file_is_unavailable_and_not_waited_on(
        db: UsersDB, log_events: list[dict]) -> None:
    # a plain open() of a FIFO waits for a writer: the hub's reactor hung
    # at the next RCPT or login, and `mailhub check` with it.  As a file
    # that cannot be read: 451, "unavailable" logins, said once
    from conftest import not_waiting_on

    from txmailhub.regular_file import NotRegularFile

    db.add("alice", "pw")
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert reader.contains(alice)
    os.rename(db.path, db.path + ".away")
    os.mkfifo(db.path)
    fifo = Path(db.path)
    assert not not_waiting_on(fifo, lambda: reader.contains(alice)) and reader.missing
    assert isinstance(reader.unreadable, NotRegularFile)
    assert not not_waiting_on(fifo, lambda: reader.check_password(alice, "pw"))
    said = [e for e in log_events if "cannot be read" in e.get("log_format", "")]
    assert len(said) == 1 and said[0]["why"] == ("not a regular file (a named pipe, device or "
                                                 "socket)"), said
    with pytest.raises(UsersFileError, match="the users file is not a regular file"):
        not_waiting_on(fifo, lambda: UsersDB(db.path, "example.org").delete("alice"))
    os.unlink(db.path)
    os.rename(db.path + ".away", db.path)
    assert reader.contains(alice) and not reader.missing and reader.unreadable is None


def test_a_users_file_over_its_bound_is_one_that_cannot_be_read(
        db: UsersDB, log_events: list[dict]) -> None:
    # no bound: a users file grown without end (a log or an image put in
    # its place) was read whole into memory at the next lookup, and by
    # every `mailhub user` command.  Over USERS_FILE_MAX it is a file that
    # cannot be read: 451, said once; a change refuses it, nothing written
    from txmailhub.users import USERS_FILE_MAX

    db.add("alice", "pw")
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert reader.contains(alice)
    with open(db.path, "r+b") as f:
        f.truncate(USERS_FILE_MAX + 1)  # (a sparse file: no disk taken)
    os.utime(db.path, (1e9, 1e9))
    assert not reader.contains(alice) and reader.missing
    assert not reader.check_password(alice, "pw")
    said = [e for e in log_events if "cannot be read" in e.get("log_format", "")]
    assert len(said) == 1 and said[0]["why"] == ("larger than 16 MiB, the most the hub reads "
                                                 "of it"), said
    with pytest.raises(UsersFileError) as info:
        UsersDB(db.path, "example.org").delete("alice")
    assert str(info.value) == (f"{db.path}: the users file is larger than 16 MiB, the most the "
                               "hub reads of it: not read, nothing changed")
    assert os.path.getsize(db.path) == USERS_FILE_MAX + 1


def test_a_change_that_would_pass_the_bound_is_refused(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    # written, the file would be one the hub refuses to read (451 for
    # every local recipient): the command refuses instead, nothing written
    from txmailhub import users

    db.add("alice", "pw")
    before = Path(db.path).read_bytes()
    monkeypatch.setattr(users, "USERS_FILE_MAX", len(before) + 10)
    with pytest.raises(UsersFileError) as info:
        db.add("bob", "pw")
    assert str(info.value) == (f"{db.path}: the change would make the users file larger than "
                               f"{len(before) + 10} octets, the most the hub reads of it: "
                               "nothing changed")
    assert Path(db.path).read_bytes() == before
    db.delete("alice")  # a change that shrinks it is taken
    assert not db.contains(Address("alice", "example.org"))


def test_a_users_file_that_cannot_be_read_is_unavailable_not_an_error_per_lookup(
        db: UsersDB, log_events: list[dict]) -> None:
    # (root reads any file, so a folder stands in for a file the hub's user
    # may not read): 451 and "unavailable" logins, one log line, and check
    # and the start still see the error
    from txmailhub.errors import UsersUnavailable

    events = log_events
    db.add("alice", "pw")
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert reader.contains(alice)
    os.rename(db.path, db.path + ".away")
    os.mkdir(db.path)
    assert not reader.contains(alice) and reader.missing
    assert isinstance(reader.unreadable, IsADirectoryError)
    assert not reader.contains(alice) and not reader.check_password(alice, "pw")
    said = [e for e in events if "cannot be read" in e.get("log_format", "")]
    assert len(said) == 1 and said[0]["log_level"].name == "error", said
    assert not [e for e in events if e.get("log_failure")]  # no traceback
    with pytest.raises(IsADirectoryError):
        reader.addresses()
    refusal = UsersChecker(reader)._refusal()
    assert isinstance(refusal, UsersUnavailable) and "cannot be read" in str(refusal)
    os.rmdir(db.path)
    os.rename(db.path + ".away", db.path)
    assert reader.contains(alice) and not reader.missing and reader.unreadable is None
    assert reader.addresses() == [alice]


def test_an_unreadable_users_file_that_then_goes_away_is_missing_not_unreadable(
        db: UsersDB) -> None:
    # the refusal names the cause plainly; once the file is gone, the
    # error of the unreadable one is not what check and logins are told
    from txmailhub.errors import UsersUnavailable

    reader = UsersDB(db.path, "example.org")
    os.mkdir(db.path)  # (root reads any file: a folder cannot be read)
    assert not reader.contains(Address("alice", "example.org"))
    assert str(UsersChecker(reader)._refusal()) == (
        f"the users file {db.path} cannot be read (Is a directory)")
    os.rmdir(db.path)
    assert not reader.contains(Address("alice", "example.org"))
    assert reader.missing and reader.unreadable is None
    assert reader.addresses() == []
    refusal = UsersChecker(reader)._refusal()
    assert isinstance(refusal, UsersUnavailable)
    assert str(refusal) == f"the users file {db.path} does not exist"


def test_a_users_file_behind_a_folder_that_cannot_be_searched_is_unavailable(
        db: UsersDB, log_events: list[dict], monkeypatch) -> None:
    # users.d made 0700 by root (``mailhub user add`` run as root) and the
    # hub running as mailhub: stat() itself is refused.  That is the same
    # "cannot be read" as a refused open: 451, no traceback per lookup.
    from txmailhub import users as users_module

    db.add("alice", "pw")
    real_stat = os.stat

    def stat(path, *a, **kw):
        if os.fspath(path) == db.path:
            raise PermissionError(13, "Permission denied", db.path)
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(users_module.os, "stat", stat)
    reader = UsersDB(db.path, "example.org")
    alice = Address("alice", "example.org")
    assert not reader.contains(alice) and reader.missing
    assert isinstance(reader.unreadable, PermissionError)
    assert not reader.contains(alice)
    said = [e for e in log_events if "cannot be read" in e.get("log_format", "")]
    assert len(said) == 1, said
    assert not [e for e in log_events if e.get("log_failure")]
    # and what to do about it: check, run as root, names the chown
    from twisted.logger import formatEvent

    from txmailhub.hub_access import name_of

    assert formatEvent(said[0]).endswith(
        f"logins fail until it can; the hub runs as {name_of(os.geteuid())}: `mailhub check` "
        "run as root says what to change"), formatEvent(said[0])


# --- prepared passwords (RFC 8265 OpaqueString) --------------------------

COMPOSED = "cr\u00e8me-br\u00fbl\u00e9e"
DECOMPOSED = "cre\u0300me-bru\u0302le\u0301e"


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password form the users file runs scrypt over, in order."""
    from txmailhub import users

    calls: list[str] = []
    real = users.verify_password

    def spy(password: str, encoded: str) -> bool:
        calls.append(password)
        return real(password, encoded)

    monkeypatch.setattr(users, "verify_password", spy)
    return calls


def test_a_login_in_another_normal_form_matches_once(db: UsersDB,
                                                     scrypt_calls: list[str]) -> None:
    db.add("alice", COMPOSED)
    alice = Address("alice", "example.org")
    assert db.check_password(alice, DECOMPOSED)
    assert scrypt_calls == [COMPOSED]  # the prepared form matched: no second check
    scrypt_calls.clear()
    assert db.check_password(alice, COMPOSED) and scrypt_calls == [COMPOSED]


def test_an_already_prepared_wrong_password_costs_one_check(db: UsersDB,
                                                            scrypt_calls: list[str]) -> None:
    db.add("alice", COMPOSED)
    assert not db.check_password(Address("alice", "example.org"), "wrong-password")
    assert scrypt_calls == ["wrong-password"]


def test_hashes_made_before_preparation_keep_matching(db: UsersDB,
                                                      scrypt_calls: list[str]) -> None:
    # written as the hub wrote them before: the password exactly as typed
    Path(db.path).write_text(f"alice@example.org {hash_password(DECOMPOSED)}\n"
                             f"bob@example.org {hash_password('tab' + chr(9) + 'pw')}\n"
                             f"carol@example.org {hash_password('no' + chr(0xA0) + 'break')}\n")
    alice = Address("alice", "example.org")
    assert db.check_password(alice, DECOMPOSED)
    assert scrypt_calls == [COMPOSED, DECOMPOSED]  # prepared first, then as sent
    # preparation refuses a tab: checked exactly as sent, once
    scrypt_calls.clear()
    assert db.check_password(Address("bob", "example.org"), "tab\tpw")
    assert scrypt_calls == ["tab\tpw"]
    assert not db.check_password(Address("bob", "example.org"), "tab pw")
    assert db.check_password(Address("carol", "example.org"), "no\u00a0break")
    # an old hash knows one form only: the other spelling cannot match it
    assert not db.check_password(alice, COMPOSED)
    assert not db.check_password(Address("carol", "example.org"), "no break")


def test_an_unknown_user_costs_as_many_checks(db: UsersDB, scrypt_calls: list[str]) -> None:
    db.add("alice", COMPOSED)
    for sent in (DECOMPOSED, COMPOSED):
        scrypt_calls.clear()
        assert not db.check_password(Address("alice", "example.org"), sent + "x")
        known = len(scrypt_calls)
        scrypt_calls.clear()
        assert not db.check_password(Address("nobody", "example.org"), sent + "x")
        assert len(scrypt_calls) == known == (2 if sent == DECOMPOSED else 1)


def test_apop_takes_the_secret_as_set_or_prepared(db: UsersDB) -> None:
    # the digest is over the client's bytes: the server tries the secret
    # as it was set and its prepared form (an md5 each)
    db.add("alice", "no\u00a0break-" + DECOMPOSED, allow_apop=True)
    settle(db)
    checker = UsersChecker(db)
    challenge = b"<1.2@mail.example.org>"
    for typed in ("no\u00a0break-" + DECOMPOSED, "no break-" + COMPOSED):
        digest = hashlib.md5(challenge + typed.encode()).hexdigest().encode()
        assert result_of(checker.requestAvatarId(APOPCreds(b"alice", challenge, digest))) == (
            "alice@example.org"), ascii(typed)
    digest = hashlib.md5(challenge + ("no break-" + DECOMPOSED).encode()).hexdigest().encode()
    failure = result_of(checker.requestAvatarId(APOPCreds(b"alice", challenge, digest)))
    assert failure.check(UnauthorizedLogin)  # type: ignore[attr-defined]


def test_apop_for_a_user_without_the_secret_says_so(db: UsersDB) -> None:
    # a failed login all the same, but of its own kind, so that the log can
    # tell the admin to add the user with --allow-apop
    from txmailhub.auth import NoAPOPSecret

    db.add("bob", "bobpw")
    checker = UsersChecker(db)
    challenge = b"<1.2@mail.example.org>"
    digest = hashlib.md5(challenge + b"bobpw").hexdigest().encode()
    failure = result_of(checker.requestAvatarId(APOPCreds(b"bob", challenge, digest)))
    assert failure.check(NoAPOPSecret)  # type: ignore[attr-defined]
    assert failure.check(UnauthorizedLogin)  # type: ignore[attr-defined]
    # a stranger is no user without a secret: the plain refusal
    failure = result_of(checker.requestAvatarId(APOPCreds(b"nobody", challenge, digest)))
    assert failure.check(UnauthorizedLogin) and not failure.check(NoAPOPSecret)  # type: ignore[attr-defined]


def test_the_checker_logs_in_a_decomposed_password(db: UsersDB) -> None:
    db.add("alice", COMPOSED)
    checker = UsersChecker(db)
    creds = ClientCredentials(b"alice", DECOMPOSED.encode(), lambda: True)
    assert result_of(checker.requestAvatarId(creds)) == "alice@example.org"


@pytest.mark.parametrize("broken", [
    "notahash", "scrypt$1000$8$1$AA==$AA==", "scrypt$16384$8$32$AA==$AA==",
    "scrypt$1048576$8$1$AA==$AA==",
])
def test_a_user_whose_hash_cannot_match_costs_what_an_unknown_one_does(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    # such a hash was refused before any scrypt ran: a login to that user
    # answered at once, an unknown user's after the dummy checks, and the
    # time told who exists.  Both run as many scrypt checks now
    runs: list[bytes] = []
    real = hashlib.scrypt

    def spy(password: bytes, **kw: object) -> bytes:
        runs.append(password)
        return real(password, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "scrypt", spy)
    Path(db.path).write_text(f"alice@example.org {broken}\n")
    for sent in (DECOMPOSED, COMPOSED, "tab\tpw"):
        runs.clear()
        assert not db.check_password(Address("alice", "example.org"), sent)
        known = len(runs)
        runs.clear()
        assert not db.check_password(Address("nobody", "example.org"), sent)
        assert known == len(runs) > 0, sent


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a folder to another user")
def test_root_s_first_user_add_gives_the_new_file_to_the_folders_owner(tmp_path: Path) -> None:
    # README's `mailhub --config PATH user add ...` run as root, with the
    # users.d of deployment.rst (mailhub's, 0700) still empty: the new file
    # and its lock were root's 0600 and the hub, running as mailhub, could
    # read neither (451 for every local recipient).  A later rewrite kept
    # the file's owner already; the first one now takes the folder's.
    folder = tmp_path / "users.d"
    folder.mkdir(mode=0o700)
    hub_user = (4242, 4343)
    os.chown(folder, *hub_user)
    db = UsersDB(str(folder / "users"), "example.org")
    db.add("joe", "pw", allow_weak=True)
    for name in ("users", "users.lock"):
        st = os.stat(folder / name)
        assert (st.st_uid, st.st_gid) == hub_user, name
    db.add("ann", "pw", allow_weak=True)  # and keeps it
    st = os.stat(folder / "users")
    assert (st.st_uid, st.st_gid) == hub_user


def test_checks_skipped_one_after_another_do_not_nest(db: UsersDB) -> None:
    # thousands of queued checks whose clients all left end at once, each
    # starting the next: a loop, not a recursion as deep as the queue
    db.add("alice", "pw")
    checker, turns = held_checker(db)
    here = [True]
    first = [checker.requestAvatarId(ClientCredentials(b"alice", b"pw", lambda: True))
             for _ in range(2)]
    gone = [checker.requestAvatarId(ClientCredentials(b"alice", b"pw", lambda: here[0],
                                                      client=f"192.0.2.{n % 200}"))
            for n in range(5000)]
    here[0] = False
    turns[0].callback(None)
    turns[1].callback(None)
    assert all(result_of(d).check(LoginAbandoned) for d in gone)  # type: ignore[attr-defined]
    assert all(d.called for d in first) and len(turns) == 2


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
@pytest.mark.parametrize("users_file", [False, True])
def test_the_lock_is_never_a_link_that_root_would_hand_to_the_folders_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str, users_file: bool) -> None:
    # users.d belongs to the hub's user, who can put anything in it: a
    # users.lock that is a link to a file of root's (/etc/shadow, say).
    # Root's `mailhub user add` opened the lock following the link and
    # fchown()ed what it found to the folder's (or the users file's) owner:
    # the hub's user got root's file.  Run as "root" here by making every
    # owner look foreign to give_to; every fchown is recorded.
    folder = tmp_path / "users.d"
    folder.mkdir()
    victim = tmp_path / "shadow"
    victim.write_bytes(b"root:secret\n")
    if users_file:
        (folder / "users").write_bytes(b"")
    if planted == "symlink":
        (folder / "users.lock").symlink_to(victim)
    else:
        os.link(victim, folder / "users.lock")
    victim_inode = victim.stat().st_ino
    monkeypatch.setattr(sync.os, "geteuid", lambda: os.getuid() + 1)
    chowned: list[int] = []
    monkeypatch.setattr(sync.os, "fchown", lambda fd, uid, gid: chowned.append(os.fstat(fd).st_ino))
    db = UsersDB(str(folder / "users"), "example.org")
    with pytest.raises(UsersFileError, match=r"users\.lock"):
        db.add("joe", "pw", allow_weak=True)
    assert victim_inode not in chowned
    assert victim.read_bytes() == b"root:secret\n"
    assert not (folder / "users").exists() or (folder / "users").read_bytes() == b""


def test_a_fifo_for_a_lock_is_refused_not_waited_on(tmp_path: Path) -> None:
    # opened without a reader, a FIFO fails with ENXIO (O_NONBLOCK): said
    # as for a link, not a traceback
    folder = tmp_path / "users.d"
    folder.mkdir()
    os.mkfifo(folder / "users.lock")
    db = UsersDB(str(folder / "users"), "example.org")
    with pytest.raises(UsersFileError, match=r"users\.lock is not a regular file"):
        db.add("joe", "pw", allow_weak=True)
    assert not (folder / "users").exists()


def test_the_precheck_of_the_first_user_logs_no_missing_file(
        db: UsersDB, log_events: list[dict]) -> None:
    # `mailhub user add` checks the address before the password prompt;
    # before the first user there is no file, and that check logged the
    # hub's error "does not exist: local mail is refused with 451" from
    # the command (seen by any program that observes the log)
    assert db.precheck("alice", new=True) == Address("alice", "example.org")
    with pytest.raises(NoSuchUser):
        db.precheck("bob", new=False)
    db.add("alice", "pw")
    with pytest.raises(UserExists):
        db.precheck("alice", new=True)
    assert db.precheck("alice", new=False) == Address("alice", "example.org")
    assert [e for e in log_events if e["log_level"].name in ("error", "warn")] == []


def test_a_slow_reader_of_an_old_version_does_not_hide_a_newer_one(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """Password checks read the file from a thread pool while RCPTs read
    it on the reactor thread: a reader still parsing an older version
    must not put its records in place after a newer one's, under the
    newer stamp (the change would then be missed for good)."""
    import threading

    joe = Address("joe", "example.org")
    old, new = hash_password("old-pw"), hash_password("new-pw")
    path = Path(db.path)

    def settled(text: str) -> None:
        tmp = path.with_suffix(".new")
        tmp.write_text(text)
        os.utime(tmp, (1e9, 1e9))  # changed long ago: the stamp is trusted at once
        os.replace(tmp, path)

    settled(f"joe {old}\n")
    parsing, go_on = threading.Event(), threading.Event()
    real_parse = db._parse
    first = [True]

    def slow_parse(text: str):
        if first[0]:
            first[0] = False
            parsing.set()
            assert go_on.wait(10)
        return real_parse(text)

    monkeypatch.setattr(db, "_parse", slow_parse)
    slow = threading.Thread(target=db.get, args=(joe,))
    slow.start()
    assert parsing.wait(10)  # the old version read, its parse under way
    settled(f"joe {new}\n")
    quick = threading.Thread(target=db.get, args=(joe,))
    quick.start()
    quick.join(0.3)
    go_on.set()
    slow.join(10)
    quick.join(10)
    assert db.get(joe).password_hash == new


def test_the_stamp_s_trust_is_judged_at_the_time_the_read_began(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file read within its clock tick may change again in that tick
    after the read, keeping its stamp: whether the stamp can be trusted
    depends on when the read began, not on when the reader (a password
    check's thread, held up) got round to noting it."""
    from txmailhub import users as users_module
    from txmailhub.filestamp import FileStamp

    db.add("alice", "pw")
    mtime = os.stat(db.path).st_mtime
    wall, mono = [mtime + 0.5], [50.0]
    db._file = FileStamp(lambda: wall[0], lambda: mono[0])
    opened: list[str] = []
    real_read = users_module.read_regular

    def held_up_read(*args, **kwargs):
        opened.append(args[0])
        read = real_read(*args, **kwargs)
        wall[0] += 10.0  # the reader held up past RACY_SECONDS after it began
        mono[0] += 10.0
        return read

    monkeypatch.setattr(users_module, "read_regular", held_up_read)
    alice = Address("alice", "example.org")
    assert db.get(alice) is not None
    assert len(opened) == 1
    # begun half a second after the change: a second change in that tick
    # may have followed the read, so the next lookup reads again
    assert db.get(alice) is not None
    assert len(opened) == 2
    # that read began long after the change: trusted from then on
    assert db.get(alice) is not None
    assert len(opened) == 2


@pytest.mark.parametrize("away", ["missing", "unreadable"])
def test_a_lookup_without_the_lock_that_finds_no_records_finds_the_file_away(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch, away: str) -> None:
    """An RCPT on the reactor thread takes the records without the lock
    while a password check's thread may be finding the file away: at no
    instant may the records be gone while the file still passes for
    there, or that RCPT answers 550 (no such user, for good) for a user
    the file has, where 451 (try again) is due."""
    from txmailhub import users as users_module

    db.add("alice", "pw")
    db.get(Address("alice", "example.org"))  # read
    if away == "missing":
        os.unlink(db.path)
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", args[0])

        monkeypatch.setattr(users_module, "read_regular", refuse)
        db._file.forget()  # as a change of the file would
    seen: list[bool] = []

    class Watched(UsersDB):
        def __setattr__(self, name: str, value: object) -> None:
            object.__setattr__(self, name, value)
            if name == "_records" and not value:
                seen.append(self.missing)  # what the router asks next

    db.__class__ = Watched
    assert db.get(Address("alice", "example.org")) is None
    assert db.missing
    assert seen and all(seen)


def _read_cut_short(db: UsersDB, at: str, past: int = 0,
                    ) -> tuple[UsersDB, list[float], list[float]]:
    """db's users file rewritten in place (truncated, then written, as
    ``cat > users`` does) and read by a running hub's reader when it is
    back only as far as the first ``at`` (and ``past`` characters of it):
    half a second after the write, on the reader's own (fake) clocks,
    which the test moves on by adding to ``wall[0]`` and ``mono[0]``."""
    from txmailhub.filestamp import FileStamp

    whole = Path(db.path).read_text()
    with open(db.path, "r+") as f:  # the same inode: in place
        f.truncate(0)
        f.write(whole[: whole.index(at) + past])
    reader = UsersDB(db.path, "example.org", ("example.org", "example.net"))
    wall, mono = [os.stat(db.path).st_mtime + 0.5], [50.0]
    reader._file = FileStamp(lambda: wall[0], lambda: mono[0])
    return reader, wall, mono


def _caught_half_written(db: UsersDB) -> tuple[UsersDB, list[float], list[float]]:
    """alice and bob in the users file, then the file rewritten in place
    and read by a running hub's reader when only alice's line is back
    (``_read_cut_short``)."""
    db.add("alice", "pw")
    db.add("bob", "pw")
    # a writer's buffer seldom ends where a line does: in bob's line
    return _read_cut_short(db, "bob@", 3)


def test_a_user_missing_from_a_file_caught_half_written_is_in_doubt_for_seconds(
        db: UsersDB) -> None:
    """bob is only not written yet: ``changing`` says a miss proves
    nothing (the router answers 451, not 550) until RACY_SECONDS after the
    change; then the file as it stands is the truth again."""
    from txmailhub.filestamp import RACY_SECONDS

    reader, wall, mono = _caught_half_written(db)
    alice, bob = Address("alice", "example.org"), Address("bob", "example.org")
    assert reader.contains(alice)
    assert not reader.contains(bob) and reader.changing()
    wall[0] += RACY_SECONDS
    mono[0] += RACY_SECONDS
    assert not reader.contains(bob) and not reader.changing()
    assert reader.contains(alice)


def test_only_a_miss_in_a_file_caught_half_written_is_in_doubt(db: UsersDB) -> None:
    """``lookup`` (the router's question): a user found is found, whatever
    the file's state; only a miss is in doubt.  ``judged`` (the login
    checker's) gives the doubt of the records for a found user too."""
    reader, _, _ = _caught_half_written(db)
    alice, bob = Address("alice", "example.org"), Address("bob", "example.org")
    record, doubt = reader.lookup(alice)
    assert record is not None and not doubt
    assert reader.lookup(bob) == (None, True)
    assert reader.judged(alice)[1]


def test_a_users_file_that_is_away_is_missing_not_changing(db: UsersDB) -> None:
    """Away (or unreadable): ``missing`` says it (the router's 451 4.3.0,
    logins unavailable); no lookup is "in doubt" of a half-written file
    that is not there."""
    reader = UsersDB(db.path, "example.org")
    nobody = Address("nobody", "example.org")
    assert reader.lookup(nobody) == (None, False)
    assert reader.judged(nobody) == (None, False)
    assert reader.check_login(nobody, "pw") == (False, False)
    assert reader.missing and not reader.changing()


def test_a_file_just_written_whole_is_settled_at_once(db: UsersDB) -> None:
    """A users file that ends as a finished one does (its last line ended)
    is taken as whole at once, however fresh: ``mailhub user add`` and
    an editor's save write it so, and a miss in it is the permanent 550 it
    should be, not two seconds of "try again" after every change.  An
    empty file may be one truncated and not written yet."""
    from txmailhub.filestamp import FileStamp

    db.add("alice", "pw")
    reader = UsersDB(db.path, "example.org", ("example.org", "example.net"))
    wall, mono = [os.stat(db.path).st_mtime + 0.5], [50.0]
    reader._file = FileStamp(lambda: wall[0], lambda: mono[0])
    bob = Address("bob", "example.org")
    assert not reader.contains(bob) and not reader.changing()
    with open(db.path, "r+") as f:  # truncated in place, nothing written yet
        f.truncate(0)
    assert not reader.contains(bob) and reader.changing()


def test_a_users_file_ending_in_a_lone_cr_is_not_taken_as_whole(db: UsersDB) -> None:
    """Only LF ends a line of the users file (a lone CR does end one of
    the aliases file): a fresh text ending in CR is a CRLF file caught
    between its last CR and LF, and a miss in it is in doubt, while the
    same text with its LF is whole at once."""
    from txmailhub.filestamp import FileStamp

    db.add("alice", "pw")
    line = Path(db.path).read_bytes().rstrip(b"\n")
    bob = Address("bob", "example.org")
    for end, doubt in ((b"\r\n", False), (b"\r", True)):
        Path(db.path).write_bytes(line + end)
        reader = UsersDB(db.path, "example.org", ("example.org", "example.net"))
        wall, mono = [os.stat(db.path).st_mtime + 0.5], [50.0]
        reader._file = FileStamp(lambda wall=wall: wall[0], lambda mono=mono: mono[0])
        assert reader.contains(Address("alice", "example.org"))
        assert reader.lookup(bob) == (None, doubt)


def test_a_file_that_changes_while_it_is_read_is_in_doubt(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file last changed long ago, but rewritten in place just as the
    hub reads it: the stamp taken before the read is an old one, yet the
    text is half of the new file.  The open file's stamp after the read
    says so."""
    from txmailhub import users as users_module

    db.add("alice", "pw")
    db.add("bob", "pw")
    settle(db)
    reader = UsersDB(db.path, "example.org", ("example.org", "example.net"))
    bob = Address("bob", "example.org")
    assert reader.contains(bob) and not reader.changing()
    whole = Path(db.path).read_text()
    os.utime(db.path, (1e9 + 5, 1e9 + 5))  # touched: read again, still dated long ago
    real_read = users_module.read_regular

    def writer_begins(*args, **kwargs):
        with open(db.path, "r+") as f:  # in place, halfway
            f.truncate(0)
            f.write(whole[: whole.index("bob@")])
        return real_read(*args, **kwargs)

    monkeypatch.setattr(users_module, "read_regular", writer_begins)
    assert not reader.contains(bob)
    assert reader.changing()


def test_a_lookup_that_finds_its_user_or_a_settled_miss_costs_one_stat(
        db: UsersDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-free path stays as it was: with the file settled, a user
    found costs one ``stat``, and so does a miss with its ``changing``
    (judged when the file was read, asked with no system call)."""
    db.add("alice", "pw")
    settle(db)
    alice, nobody = Address("alice", "example.org"), Address("nobody", "example.org")
    assert db.contains(alice)  # the settled file, read once
    calls: list[str] = []
    for name in ("stat", "fstat", "open"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _r=real, _n=name, **k: calls.append(_n)
                            or _r(*a, **k))
    for _ in range(10):
        assert db.contains(alice)
        assert not db.contains(nobody) and not db.changing()
    assert calls == ["stat"] * 20


def test_a_failed_login_against_a_file_caught_half_written_is_temporary(db: UsersDB) -> None:
    """bob is not written back yet: his login is UsersUnavailable (POP3
    ``[SYS/TEMP]``, SMTP ``454 4.7.0``), which no lockout counts.  So is
    a wrong password then, found user or not: the answer must not tell who
    is in the file, and a half-written line may hold half a hash.  A name
    that is no address is refused as ever.  RACY_SECONDS on, the file as
    it stands is the truth: UnauthorizedLogin."""
    from twisted.python.failure import Failure

    from txmailhub.errors import UsersUnavailable
    from txmailhub.filestamp import RACY_SECONDS

    reader, wall, mono = _caught_half_written(db)
    checker = UsersChecker(reader)
    challenge = b"<1.2@mail.example.org>"
    digest = hashlib.md5(challenge + b"pw").hexdigest().encode()
    attempts = [UsernamePassword(b"bob", b"pw"), UsernamePassword(b"alice", b"wrong"),
                APOPCreds(b"bob", challenge, digest)]

    def failures() -> list[Failure]:
        out = [result_of(checker.requestAvatarId(c)) for c in attempts]
        assert all(isinstance(f, Failure) for f in out)
        return out  # type: ignore[return-value]

    assert all(f.check(UsersUnavailable) for f in failures())
    assert result_of(checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))) == (
        "alice@example.org")
    bad_name = result_of(checker.requestAvatarId(UsernamePassword(b"\xff", b"pw")))
    assert bad_name.check(UnauthorizedLogin)  # type: ignore[attr-defined]
    wall[0] += RACY_SECONDS
    mono[0] += RACY_SECONDS
    assert all(f.check(UnauthorizedLogin) for f in failures())


def test_a_failed_login_is_judged_by_the_records_it_was_checked_against(
        db: UsersDB) -> None:
    """The password check runs in the thread pool; the checker then asked
    ``changing`` on the reactor thread, about whatever was read last.  A
    check against a half-written file (bob's line not back: in doubt),
    then a read of the finished file by another check's thread: the
    failure was judged settled, an UnauthorizedLogin counted as a guess,
    where a temporary failure is due."""
    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin

    from txmailhub.errors import UsersUnavailable

    db.add("alice", "pw")
    db.add("bob", "pw")
    finished = Path(db.path).read_text()
    reader, _, _ = _read_cut_short(db, "bob@", 3)  # rewritten in place, into bob's line

    def then_another_thread_reads(f):
        def checked(*args):
            answer = f(*args)
            with open(db.path, "w") as out:  # the writer ends the file...
                out.write(finished)
            reader.get(Address("alice", "example.org"))  # ...another check reads it
            return answer
        checked.__name__ = f.__name__
        return checked

    for name in ("check_login", "check_password"):
        if hasattr(reader, name):
            setattr(reader, name, then_another_thread_reads(getattr(reader, name)))
    checker = UsersChecker(reader)
    failure = result_of(checker.requestAvatarId(UsernamePassword(b"bob", b"pw")))
    assert not failure.check(UnauthorizedLogin)  # type: ignore[attr-defined]
    assert failure.check(UsersUnavailable)  # type: ignore[attr-defined]


def test_apop_for_a_line_caught_half_written_before_its_secret_is_temporary(
        db: UsersDB) -> None:
    """bob was added with --allow-apop; the file, rewritten in place, is
    read when his line is back up to its hash but not its ``apop=``
    field: he looks like a user without an APOP secret.  Within
    RACY_SECONDS that is no proof, as a miss is not: UsersUnavailable (not
    counted), not NoAPOPSecret (a counted failure).  RACY_SECONDS on, a
    user without a secret is NoAPOPSecret, as ever."""
    from twisted.python.failure import Failure

    from txmailhub.auth import NoAPOPSecret
    from txmailhub.errors import UsersUnavailable
    from txmailhub.filestamp import RACY_SECONDS

    db.add("alice", "pw")
    db.add("bob", "bobpw", allow_apop=True)
    reader, wall, mono = _read_cut_short(db, " apop=")  # cut just before " apop="
    assert reader.get(Address("bob", "example.org")) is not None  # his line, half of it
    checker = UsersChecker(reader)
    challenge = b"<1.2@mail.example.org>"
    digest = hashlib.md5(challenge + b"bobpw").hexdigest().encode()
    for name in (b"bob", b"alice"):  # cut short, and one with no secret at all
        failure = result_of(checker.requestAvatarId(APOPCreds(name, challenge, digest)))
        assert isinstance(failure, Failure)
        assert failure.check(UsersUnavailable) and not failure.check(NoAPOPSecret), name
    wall[0] += RACY_SECONDS
    mono[0] += RACY_SECONDS
    failure = result_of(checker.requestAvatarId(APOPCreds(b"alice", challenge, digest)))
    assert failure.check(NoAPOPSecret)  # type: ignore[attr-defined]


def test_apop_without_a_secret_is_judged_by_the_records_it_was_looked_up_in(
        db: UsersDB) -> None:
    """bob was added with --allow-apop.  The APOP check reads the file
    caught half-written (his line cut before its ``apop=``: no secret), and
    before the refusal is worded a password check's thread reads the
    finished file.  Judged by that later read (settled), the cut line was
    taken for "no APOP secret": a counted failure for a user who has one.
    The answer must go with the records it was read from: the temporary
    UsersUnavailable, or the finished line's secret (here: the login)."""
    from twisted.python.failure import Failure

    from txmailhub.auth import NoAPOPSecret

    db.add("bob", "bobpw", allow_apop=True)
    whole = Path(db.path).read_text()
    reader, _, _ = _read_cut_short(db, " apop=")  # cut just before " apop="
    real = reader._refresh
    another_thread_read: list[bool] = []

    def refresh(report: bool = True) -> dict:
        records = real(report)
        if not another_thread_read:
            # the writer finishes, and a login's thread reads the whole file
            another_thread_read.append(True)
            Path(db.path).write_text(whole)
            real(report)
        return records

    reader._refresh = refresh  # type: ignore[method-assign]
    checker = UsersChecker(reader)
    challenge = b"<1.2@mail.example.org>"
    digest = hashlib.md5(challenge + b"bobpw").hexdigest().encode()
    result = result_of(checker.requestAvatarId(APOPCreds(b"bob", challenge, digest)))
    assert another_thread_read
    assert not (isinstance(result, Failure) and result.check(NoAPOPSecret)), result


def test_a_store_without_wanted_is_opened_for_a_pop3_login(db: UsersDB) -> None:
    # the POP3 session passes whether its client is still there as the
    # mind; a store whose open_mailbox takes the address alone (written
    # before ``wanted`` existed) is still called as it was
    db.add("alice", "pw")
    settle(db)
    store = FakeStore()
    portal = build_portal(db, store)
    iface, _box, logout = result_of(  # type: ignore[misc]
        portal.login(UsernamePassword(b"alice", b"pw"), lambda: True, IMailbox)
    )
    assert iface is IMailbox and store.opened == [Address("alice", "example.org")]
    logout()


@pytest.mark.parametrize("name", ["ab\u037e", "j\u00f6rg\u037e", "\u037ej\u00f6rg", "a\u037e"])
def test_a_line_keyed_quoted_by_its_nfc_form_is_not_said_to_get_no_mail(name: str) -> None:
    # a dot-string that NFC makes ASCII punctuation (U+037E, the Greek
    # question mark, is ";") is keyed quoted, '"ab;"', and RCPT TO:<ab\u037e>
    # and <"ab;"> both reach it.  Written unquoted in the file, its key is
    # quoted but the name is not: unquoting the name as written dropped its
    # first and last characters, and check warned that RCPT named it b@...
    # and that it got no mail
    from txmailhub.address import parse_address
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import mail_never_reaches

    address = parse_address(f"{name}@example.org", "example.org", controls=True)
    assert address.key == parse_mailbox(name, "example.org", utf8=True).key
    assert mail_never_reaches(address) is None


# Ordinary names as a users file may hold them (typed by hand: any case,
# decomposed) and the key and Maildir folder each had before the local
# part's key learned about NFC punctuation (U+037E): an upgrade must leave
# every existing user's mail where it was, and the user reachable by RCPT
# and by login names alike
_KEPT_KEYS = [
    ("joe", "joe"),
    ("JOE.Smith", "joe.smith"),
    ("joe+tag", "joe+tag"),
    ("o'brien", "o'brien"),
    ("Postmaster", "postmaster"),
    ("j\xf6rg", "j\xf6rg"),
    ("JO\u0308RG", "j\xf6rg"),
    ("Jose\u0301", "jos\xe9"),
    ("stra\xdfe", "stra\xdfe"),
    ("\u1e9e", "\xdf"),
    ("\u0414\u043c\u0438\u0442\u0440\u0438\u0439", "\u0434\u043c\u0438\u0442\u0440\u0438\u0439"),
    ("\u0391\u039b\u0388\u039e", "\u03b1\u03bb\u03ad\u03be"),
    ("\u674e\u56db", "\u674e\u56db"),
    ("\u0130stanbul", "i\u0307stanbul"),
    ("\u212aelvin", "kelvin"),
    ("A\u030angstrom", "\xe5ngstrom"),
    ("\u1f00\u0345", "\u1f80"),
    ("\u200cx\u200d", "\u200cx\u200d"),
    ("\ufb01le", "\ufb01le"),
    ('"a..b"', '"a..b"'),
]


def test_the_keys_and_maildir_folders_of_ordinary_names_stay_as_they_were(
        tmp_path: Path) -> None:
    from txmailhub.address import login_key
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.store.maildir import maildir_path

    domains = ("example.org", "b\xfccher.example")
    text = "".join(f"{name}@{domain} {hash_password('pw')}\n"
                   for name, _key in _KEPT_KEYS
                   for domain in ("Example.ORG", "xn--bcher-kva.example", "B\xdcCHER.example"))
    (tmp_path / "users").write_text(text, encoding="utf-8")
    db = UsersDB(str(tmp_path / "users"), "example.org", domains)
    # the spellings of one domain are one user: the first line of each
    by_key = {a.key: a for a in db.addresses()}
    expected = {f"{key}@{domain}" for _name, key in _KEPT_KEYS
                for domain in ("example.org", "b\xfccher.example")}
    assert set(by_key) == expected
    for name, key in _KEPT_KEYS:
        for domain in ("example.org", "b\xfccher.example"):
            address = by_key[f"{key}@{domain}"]
            assert maildir_path("/m", address) == f"/m/{domain}/{key}", name
            assert db.contains(parse_mailbox(f"{name}@{domain}", "example.org", utf8=True))
            assert login_key(f"{name}@{domain}") == f"{key}@{domain}", name
        if name.isascii():
            rcpt = parse_mailbox(f"{name}@xn--bcher-kva.example", "example.org")
            assert rcpt.key == f"{key}@b\xfccher.example", name


@pytest.mark.parametrize(("name", "rcpt"), [
    ('"', '"\\""'), ('a"', '"a\\""'), ('"a', '"\\"a"'), ("a;", '"a;"'), ("a..b", '"a..b"'),
    ("A;", '"a;"')])
def test_a_line_with_a_name_rcpt_gives_only_quoted_is_keyed_quoted(
        db: UsersDB, name: str, rcpt: str) -> None:
    # RFC 5321 4.1.2: a local part that is no dot-string exists only
    # quoted (RCPT TO:<a;@...> is a syntax error, RCPT TO:<"a;"@...> is
    # looked up with its quotes).  A line written by hand 'a;@...' was
    # keyed a;: no mail reached it, and a login, `user del` and `user
    # passwd` as a; found a user RCPT never named, with a Maildir of its own
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import mail_never_reaches

    h = hash_password("pw")
    Path(db.path).write_text(f"{name}@example.org {h}\n")
    settle(db)
    assert [a.key for a in db.addresses()] == [f"{rcpt.lower()}@example.org"]
    assert db.problems == []
    assert mail_never_reaches(db.addresses()[0]) is None
    assert db.contains(parse_mailbox(f"{rcpt}@example.org", "example.org"))
    # a login names it either way (POP3 USER a;, SMTP AUTH), as do `user passwd`
    # and `user del`
    for login in (name, rcpt, f"{name}@example.org"):
        assert db.qualify(login).key == f"{rcpt.lower()}@example.org", login
        assert db.check_password(db.qualify(login), "pw"), login
    db.set_password(name, "pw2")
    settle(db)
    assert db.check_password(db.qualify(rcpt), "pw2")
    db.delete(name)
    settle(db)
    assert db.addresses() == []


def test_the_empty_quoted_name_is_reached_as_written() -> None:
    # RCPT TO:<""@example.org> is the mailbox "" (a quoted string may be
    # empty, RFC 5321 4.1.2): no warning
    from txmailhub.address import parse_address
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import mail_never_reaches

    address = parse_address('""@example.org', "example.org", controls=True)
    assert address.key == parse_mailbox('""@example.org', "example.org").key
    assert mail_never_reaches(address) is None


def test_a_quoted_name_kept_as_written_is_said_to_be_looked_up_as_rcpt_gives_it() -> None:
    # an Address whose local part is '"joe"' as written (not read through
    # as_rcpt_names) is keyed '"joe"', but RCPT TO:<"joe"@...> looks up
    # joe (RFC 5321 4.1.2): that key gets no mail; read as RCPT gives it,
    # it does
    from txmailhub.users import as_rcpt_names, mail_never_reaches

    for written, plain in (('"joe"', "joe"), ('"a\\:b"', '"a:b"')):
        address = Address(written, "example.org")
        assert mail_never_reaches(address) == (
            f"RCPT TO names it {plain}@example.org, which is looked up so: it gets no mail")
        assert mail_never_reaches(as_rcpt_names(address)) is None
    # one that needs its quotes is looked up with them: reached as written
    assert mail_never_reaches(Address('"a;"', "example.org")) is None


@pytest.mark.parametrize(("name", "stored"), [
    ('"', '"\\""'), ('a"', '"a\\""'), ('"a', '"\\"a"'), ('""', '""')])
def test_add_stores_a_name_with_a_quote_at_one_end_as_rcpt_names_it(
        db: UsersDB, name: str, stored: str) -> None:
    # a quote at one end only (or a lone one) is no quoted string: the
    # name is quoted whole, as RCPT can give it; "" is the quoted empty
    # name, taken as it is
    from txmailhub.smtp._parse import parse_mailbox

    assert db.add(name, "pw").local == stored
    settle(db)
    assert db.contains(parse_mailbox(f"{stored}@example.org", "example.org"))


def test_a_local_part_of_64_octets_is_a_user_and_one_of_65_is_not(db: UsersDB) -> None:
    # RFC 5321 4.5.3.1.1: 64 octets at most, counted in UTF-8
    assert db.add("x" * 64, "pw").local == "x" * 64
    assert db.add("\u00e9" * 32, "pw").local == "\u00e9" * 32
    with pytest.raises(UsersFileError, match="over 64 octets"):
        db.add("x" * 65, "pw")
    with pytest.raises(UsersFileError, match="over 64 octets"):
        db.add("x" + "\u00e9" * 32, "pw")


def test_a_line_with_a_quoted_local_part_is_keyed_as_rcpt_gives_it(db: UsersDB) -> None:
    # RFC 5321 4.1.2: RCPT TO:<"q"@...> is q, and the aliases file keys a
    # name '"q"' as q.  A users file line '"q"@example.org' kept its quotes:
    # no RCPT reached it, and only a login as '"q"' did
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import as_rcpt_names, mail_never_reaches

    h = hash_password("pw")
    Path(db.path).write_text(f'"q"@example.org {h}\n"a\\:b" {h}\n"a;"@example.net {h}\n'
                             f'"x""y"@example.org {h}\n')
    settle(db)
    assert [str(a) for a in db.addresses()] == [
        '"a:b"@example.org', '"a;"@example.net', '"x""y"@example.org', "q@example.org"]
    assert db.problems == []
    for rcpt in ('"q"', "q", "Q@Example.Org", '"a:b"', '"a\\:b"', '"a;"@example.net'):
        assert db.contains(parse_mailbox(rcpt, "example.org")), rcpt
    # a login names the user as RCPT does, quoted or not (POP3 USER, SMTP AUTH)
    for name in ('"q"', "q", '"q"@example.org', '"a\\:b"'):
        assert db.check_password(db.qualify(name), "pw"), name
    # check: only the quotes that are no one quoted string reach nobody
    assert [mail_never_reaches(a) is None for a in db.addresses()] == [True, True, False, True]
    assert as_rcpt_names(Address('"x""y"', "example.org")) == Address('"x""y"', "example.org")
    assert as_rcpt_names(Address('"a\\"', "example.org")) == Address('"a\\"', "example.org")
    # `user passwd` and `user del` reach it by either name
    db.set_password('"q"', "pw2")
    assert Path(db.path).read_text().splitlines()[0].startswith("q@example.org ")
    db.delete("q")
    settle(db)
    assert not db.contains(Address("q", "example.org"))


@pytest.mark.parametrize("name", ["a\u200c;", "\u00ad..x", "a\u200f;b"])
def test_a_name_with_a_format_character_rcpt_gives_only_quoted_is_keyed_quoted(
        db: UsersDB, name: str) -> None:
    # a zero-width non-joiner, soft hyphen or right-to-left mark is no
    # control: RCPT carries it (RFC 6531 UTF8-non-ascii), quoted where the
    # rest is no dot-string, and the file, a login and an alias target
    # must key the name so -- not as written (``str.isprintable`` is
    # False for these), a user no RCPT reaches and logins open apart
    from txmailhub.address import login_key
    from txmailhub.router import alias_address
    from txmailhub.smtp._parse import parse_rcpt, rcpt_local

    rcpt = parse_rcpt(f"TO:<{rcpt_local(name)}@example.org>", "example.org", utf8=True)[0]
    assert rcpt.local.startswith('"')
    Path(db.path).write_text(f"{name}@example.org {hash_password('pw')}\n")
    settle(db)
    assert [a.key for a in db.addresses()] == [rcpt.key]
    assert db.contains(rcpt)
    assert db.qualify(name).key == rcpt.key
    assert login_key(name + "@example.org") == login_key(rcpt.key) == rcpt.key
    assert alias_address(name, "example.org", local_domains={"example.org"}).key == rcpt.key


@pytest.mark.parametrize(("other", "own"), [('"q"', "q"), ("a;", '"a;"'), ('"a\\;"', '"a;"')])
def test_a_line_in_another_spelling_does_not_take_the_user_rcpt_reaches(
        db: UsersDB, other: str, own: str) -> None:
    # before local parts were read as RCPT gives them, a line '"q"@...'
    # (or 'a;@...') was a user of its own, with its own password and
    # Maildir, beside the user q that RCPT reached.  Both lines are one
    # user now; the one written as RCPT gives it -- whose password opened
    # the mailbox mail went to -- stays in effect wherever it is in the
    # file: the other spelling's password must not open that mailbox
    key = f"{own}@example.org"
    Path(db.path).write_text(f"{other}@example.org {hash_password('other-pw')}\n"
                             f"{own}@example.org {hash_password('own-pw')}\n")
    settle(db)
    user = db.qualify(own)
    assert user.key == db.qualify(other).key == key
    assert db.check_password(user, "own-pw")
    assert not db.check_password(user, "other-pw")
    assert db.lines() == {key: 2}
    assert [p.removeprefix(db.path) for p in db.problems] == [
        f":1: {key} is on line 2 too, written as RCPT gives it, which is in effect: "
        "this line is ignored"]
    # a new password goes to the line in effect; del removes both lines
    db.set_password(other, "new-pw")
    text = Path(db.path).read_text().splitlines()
    assert text[0].startswith(f"{other}@example.org ") and text[1].startswith(f"{key} ")
    settle(db)
    assert db.check_password(user, "new-pw")
    db.delete(other)
    assert Path(db.path).read_text().strip() == ""


@pytest.mark.parametrize(("spellings", "in_effect"), [
    (('"q"', '"q"'), 1),
    (('"q"', '"q"', "q"), 3),
    (('"q"', "q", "q"), 2),
    (("q", '"q"', "q"), 1),
])
def test_of_lines_in_one_spelling_the_first_is_in_effect(
        db: UsersDB, spellings: tuple[str, ...], in_effect: int) -> None:
    # only a line written as RCPT gives the name takes the user from one
    # in another spelling, and only from such a line: of lines in one
    # spelling, the first stays in effect
    Path(db.path).write_text("".join(f"{name}@example.org {hash_password(f'pw{n}')}\n"
                                     for n, name in enumerate(spellings, 1)))
    settle(db)
    user = db.qualify("q")
    assert [n for n in range(1, len(spellings) + 1)
            if db.check_password(user, f"pw{n}")] == [in_effect]
    assert db.lines() == {"q@example.org": in_effect}
    assert len(db.problems) == len(spellings) - 1


def test_of_two_lines_keyed_as_written_the_first_is_in_effect(db: UsersDB) -> None:
    # 'a' U+037E (the Greek question mark) was keyed "a;" before too, as
    # RCPT reached it: beside a '"a;"' line below it, the first is in
    # effect, as it was
    Path(db.path).write_text(f"a\u037e@example.org {hash_password('first-pw')}\n"
                             f'"a;"@example.org {hash_password("second-pw")}\n')
    settle(db)
    user = db.qualify('"a;"')
    assert db.check_password(user, "first-pw")
    assert not db.check_password(user, "second-pw")
    assert db.lines() == {'"a;"@example.org': 1}


@pytest.mark.parametrize("name", ["#a", '"#a"', "#a@example.net"])
def test_a_user_whose_name_starts_with_a_hash_is_written_quoted(db: UsersDB, name: str) -> None:
    # #a is a dot-string (RFC 5321 4.1.2), a user RCPT reaches; but a line
    # of the file that starts with '#' is a comment: written so, the user
    # added was none, and each add wrote one more such line
    address = db.add(name, "pw")
    settle(db)
    assert [a.key for a in db.addresses()] == [address.key]
    assert address.key.startswith("#a@")
    assert db.problems == []
    assert Path(db.path).read_text().splitlines()[-1].startswith(
        '"#a"@' + address.key.partition("@")[2] + " ")
    assert db.check_password(db.qualify(name), "pw")
    with pytest.raises(UserExists):
        db.add(name, "pw")
    db.set_password(name, "pw2")
    settle(db)
    assert db.check_password(db.qualify("#a" + name.partition("@")[1] + name.partition("@")[2]),
                             "pw2")
    db.delete(name)
    settle(db)
    assert db.addresses() == []


_PW_HASH = hash_password("pw")
# local parts as typed to `mailhub user add`: quoted or not, with what
# quotes, escapes, dots, '@', '/', a colon, a '#' (a comment at the start
# of a line), and UTF-8 spellings that are one name in NFC (a decomposed
# umlaut, the Greek question mark, ';' in NFC) or in lower case
_USER_NAMES = st.one_of(
    st.text(alphabet='ab.;@/:#"\\o\u0308\u00f6\u037e\u0130K', min_size=1, max_size=6),
    st.lists(st.one_of(st.sampled_from(list('ab.;@/:# o\u0308\u037e')),
                       st.sampled_from(['\\"', "\\\\", "\\:", "\\a"])),
             min_size=1, max_size=5).map(lambda parts: '"' + "".join(parts) + '"'))


@settings(max_examples=150, deadline=None)
@given(name=_USER_NAMES, at=st.sampled_from(["", "@example.org", "@EXAMPLE.net"]))
def test_what_user_add_writes_the_file_reads_back_and_rcpt_and_logins_reach(
        name: str, at: str) -> None:
    # whatever `user add` takes, the file reads back as that one user,
    # without a problem; RCPT naming it as the hub keys it, a login as
    # the name typed (the users file's qualify, POP3's and the AUTH PLAIN
    # authzid's login_key) and `user passwd` and `user del` reach it; its
    # Maildir is a folder of its own in its domain's folder
    from unittest import mock

    from txmailhub.address import login_key
    from txmailhub.smtp._parse import parse_rcpt
    from txmailhub.store.maildir import maildir_path

    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch("txmailhub.users.hash_password", lambda _: _PW_HASH):
        db = UsersDB(os.path.join(tmp, "users"), "example.org", ("example.org", "example.net"),
                     password_policy=AnyPassword())
        try:
            address = db.add(name + at, "pw")
        except UsersFileError:
            return
        settle(db)
        key = address.key
        assert [a.key for a in db.addresses()] == [key]
        assert db.problems == []
        local, _, domain = key.rpartition("@")
        assert parse_rcpt(f"TO:<{local}@{domain}>", "example.org", utf8=True)[0].key == key
        if one_quoted_string(name) or not name.startswith('"'):
            # (quotes that are no one quoted string, '"a""b"', add writes
            # as one, '"a\"\"b"': another name, which no RCPT can give)
            typed = db.qualify(name + at)
            assert typed.key == key
            assert db.check_password(typed, "pw")
            assert login_key(name + (at or "@example.org")) == key
            db.set_password(name + at, "pw")
            db.delete(name + at)
            settle(db)
            assert db.addresses() == []
        folder = maildir_path("/m", address)
        assert os.path.dirname(folder) == os.path.join("/m", domain)
        assert os.path.basename(folder) == local


def test_a_login_in_quotes_no_one_quoted_string_reaches_the_user_add_made_of_it(
        db: UsersDB) -> None:
    # `user add '"a""b"'` writes the user "a\"\"b" (the one quoted string
    # around all of it, RFC 5321 4.1.2); a login given '"a""b"' (POP3 USER,
    # SMTP AUTH, which hands the checker the name with the primary domain)
    # looked up "a""b", no user, and failed
    from txmailhub.address import login_key

    address = db.add('"a""b"', "pw")
    settle(db)
    assert address.key == '"a\\"\\"b"@example.org'
    checker = UsersChecker(db)
    for name in (b'"a""b"', b'"a""b"@example.org', b'"A""B"@Example.ORG', b'"a\\"\\"b"'):
        assert result_of(checker.requestAvatarId(UsernamePassword(name, b"pw"))) == (
            address.key), name
    # an authzid in either spelling names that user (RFC 4616 2)
    assert login_key('"a""b"@example.org') == login_key('"a\\"\\"b"@example.org') == address.key


def test_a_line_that_is_not_utf8_is_a_problem_at_its_line_and_kept_as_it_is(
        db: UsersDB) -> None:
    db.add("ann", "ann-pw")
    # jos\u00e9's line saved by an editor in Latin-1
    latin = "jos\u00e9@example.org scrypt$16384$8$1$AAAA$BBBB\n".encode("latin-1")
    Path(db.path).write_bytes(Path(db.path).read_bytes() + latin)
    reader = UsersDB(db.path, "example.org", ("example.org",), password_policy=AnyPassword())
    assert [a.key for a in reader.addresses()] == ["ann@example.org"]
    assert reader.problems == [f"{db.path}:3: the line is not UTF-8 text (the octet 0xE9): "
                               "the hub does not read it; save the file as UTF-8"]
    # a change elsewhere writes no U+FFFD into it: the line stays as it was
    db.add("carl", "carl-pw")
    assert latin in Path(db.path).read_bytes()
    assert "\ufffd".encode() not in Path(db.path).read_bytes()


def _users_at(path: Path) -> UsersDB:
    return UsersDB(str(path), "example.org", ("example.org",), password_policy=AnyPassword())


def test_a_link_to_the_users_file_stays_a_link_and_its_target_is_replaced(
        tmp_path: Path) -> None:
    # [users] file a link (to a file kept elsewhere): `mailhub user add`
    # replaced the link with a plain file, and the file it led to kept
    # the old users.  The file the link leads to is replaced (a new file
    # renamed over it), keeping its mode; the link stays
    real = tmp_path / "etc-users"
    _users_at(real).add("ann", "pw", allow_weak=True)
    os.chmod(real, 0o640)
    before = real.stat()
    (tmp_path / "conf").mkdir()
    link = tmp_path / "conf" / "users"
    link.symlink_to("../etc-users")  # relative, up a folder, as the system reads it
    db = _users_at(link)
    db.add("bob", "pw", allow_weak=True)
    assert link.is_symlink() and os.readlink(link) == "../etc-users"
    after = real.stat()
    assert after.st_ino != before.st_ino  # renamed over it, never written in place
    assert after.st_mode & 0o7777 == 0o640
    assert [str(a) for a in _users_at(real).addresses()] == ["ann@example.org",
                                                             "bob@example.org"]
    # the lock next to the configured path, no temporary file left
    assert sorted(os.listdir(tmp_path / "conf")) == ["users", "users.lock"]
    assert sorted(os.listdir(tmp_path)) == ["conf", "etc-users", "etc-users.lock"]
    db.delete("ann")
    db.set_password("bob", "other")
    assert link.is_symlink()
    assert [str(a) for a in _users_at(real).addresses()] == ["bob@example.org"]
    assert _users_at(real).check_password(Address("bob", "example.org"), "other")


def test_a_dangling_link_to_the_users_file_makes_its_target(tmp_path: Path) -> None:
    # a link to a file not there yet (moved away for a moment): the
    # first add makes the file the link names, 0600, and the link stays
    link = tmp_path / "users"
    link.symlink_to(tmp_path / "kept" / "users")
    with pytest.raises(UsersFileError, match=(
            rf"^{link} is a symbolic link to {tmp_path / 'kept' / 'users'}, whose folder "
            "is not there: nothing changed")):
        _users_at(link).add("ann", "pw", allow_weak=True)
    assert link.is_symlink() and not (tmp_path / "kept").exists()
    (tmp_path / "kept").mkdir()
    _users_at(link).add("ann", "pw", allow_weak=True)
    assert link.is_symlink()
    real = tmp_path / "kept" / "users"
    assert real.stat().st_mode & 0o7777 == 0o600
    assert [str(a) for a in _users_at(real).addresses()] == ["ann@example.org"]


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_a_link_to_the_users_file_in_a_folder_another_user_may_change_is_refused(
        tmp_path: Path) -> None:
    # the hub's folder (users.d) with a link the hub's user put there, to
    # a file of root's: root's `mailhub user add` would rewrite that file
    # (keeping its owner and mode) with the users' lines
    victim = tmp_path / "shadow"
    victim.write_text("root:*:1::::::\n")
    os.chmod(victim, 0o640)
    before = os.stat(victim)
    hubs = tmp_path / "users.d"
    hubs.mkdir()
    os.chown(hubs, 65534, 65534)
    (hubs / "users").symlink_to(victim)
    (tmp_path / "users").symlink_to(hubs / "users")  # root's link to that one
    for link in (hubs / "users", tmp_path / "users"):
        for change in (lambda db: db.add("ann", "pw", allow_weak=True),
                       lambda db: db.delete("ann"),
                       lambda db: db.set_password("ann", "pw", allow_weak=True)):
            with pytest.raises(UsersFileError, match=(
                    rf"^{hubs / 'users'} is a symbolic link in {hubs}, a folder of "
                    r".*uid 65534.*'s: not followed, .* set \[users\] file to the file "
                    "itself")):
                change(_users_at(link))
    assert victim.read_text() == "root:*:1::::::\n"
    after = os.stat(victim)
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (
        before.st_ino, before.st_mtime_ns, before.st_mode)
    assert sorted(os.listdir(hubs)) == ["users"]  # no lock made there either
    assert sorted(os.listdir(tmp_path)) == ["shadow", "users", "users.d"]


def _swapped_for_a_link(folder: Path, to: Path) -> None:
    """The hub's user's move: ``folder`` (in the hub's folder) renamed
    away and a link to ``to`` (a folder of root's) put in its place."""
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(to)


def test_a_folder_swapped_for_a_link_during_a_change_does_not_send_the_file_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # [users] file in users.d inside the hub's folder: the hub's user may
    # rename users.d and put a link to any folder of root's there once the
    # links were judged (the password's hash takes a while).  Root's
    # `mailhub user add` wrote the new users file by path, into that
    # folder.  The file is replaced in the folder that was judged
    users_d = tmp_path / "hub" / "users.d"
    users_d.mkdir(parents=True)
    _users_at(users_d / "users").add("ann", "pw", allow_weak=True)
    import txmailhub.users as users_module

    roots = tmp_path / "etc"
    roots.mkdir()
    real_hash = users_module.hash_password

    def hash_and_swap(password: str) -> str:
        _swapped_for_a_link(users_d, roots)
        return real_hash(password)

    monkeypatch.setattr(users_module, "hash_password", hash_and_swap)
    _users_at(users_d / "users").add("bob", "pw", allow_weak=True)
    assert os.listdir(roots) == []
    assert [str(a) for a in _users_at(tmp_path / "hub" / "users.d.old" / "users").addresses()] \
        == ["ann@example.org", "bob@example.org"]


def test_a_folder_swapped_for_a_link_before_the_read_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same move just before the file is read: the file read would be
    # root's etc/users, its lines written back into the judged folder
    users_d = tmp_path / "hub" / "users.d"
    users_d.mkdir(parents=True)
    _users_at(users_d / "users").add("ann", "pw", allow_weak=True)
    import txmailhub.users as users_module

    roots = tmp_path / "etc"
    roots.mkdir()
    (roots / "users").write_bytes(b"root's own\n")
    real_read = users_module.read_regular

    def swap_and_read(path: str, **kw: object) -> object:
        if os.path.realpath(path) == str(users_d / "users"):
            _swapped_for_a_link(users_d, roots)
        return real_read(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(users_module, "read_regular", swap_and_read)
    with pytest.raises(UsersFileError, match="replaced during the change"):
        _users_at(users_d / "users").add("bob", "pw", allow_weak=True)
    assert (roots / "users").read_bytes() == b"root's own\n"
    assert b"bob" not in (tmp_path / "hub" / "users.d.old" / "users").read_bytes()
