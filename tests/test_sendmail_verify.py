"""``sendmail -bv``: each recipient judged by the hub's router over the
config's users and aliases files, one line per resulting address, the
status 0, 67, 75 or 77; no message read, the hub never contacted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from txmailhub.sendmail import (
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    UsageError,
    parse_args,
    run,
)
from txmailhub.users import UsersDB


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config with users joe and ann, aliases, and a listener the
    command must never connect to (``open_session`` and ``submit`` fail
    the test when called)."""
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("-bv contacted the hub")

    monkeypatch.setattr("txmailhub.sendmail.open_session", never)
    monkeypatch.setattr("txmailhub.sendmail.submit", never)
    path = tmp_path / "mailhub.toml"
    path.write_text('[hub]\ndomains = ["example.org", "example.net"]\n'
                    '[smtp]\nlisten = ["tcp:1"]\n[aliases]\nfile = "aliases"\n')
    (tmp_path / "aliases").write_text(
        "staff: joe, Ann, carol@elsewhere.test, nobody\npostmaster: joe\n"
        "loop1: loop2\nloop2: loop1\n")
    users = UsersDB(str(tmp_path / "users"), "example.org", ("example.org", "example.net"))
    for name in ("joe", "ann"):
        users.add(name, "correct horse battery staple", allow_weak=True)
    return path


def verify(argv: list[str], config: Path) -> tuple[int, str, str, io.BytesIO]:
    stdin, out, err = io.BytesIO(b"Subject: x\n\nbody\n"), io.StringIO(), io.StringIO()
    status = run(["-bv", *argv], str(config), "sendmail", stdin, err, out)
    return status, out.getvalue(), err.getvalue(), stdin


def test_deliverable_recipients_one_line_per_address_they_lead_to(config: Path) -> None:
    status, out, err, stdin = verify(
        ["joe", "staff", "Postmaster@example.net", "x@remote.test", "joe@example.org"], config)
    assert (status, err) == (EX_OK, "")
    assert out.splitlines() == [
        "joe@example.org... deliverable: local mailbox",
        # an alias: each member it leads to, named by the recipient given;
        # a member that is no user is skipped, as the hub skips it
        "joe@example.org... deliverable: local mailbox (from staff@example.org)",
        "ann@example.org... deliverable: local mailbox (from staff@example.org)",
        "carol@elsewhere.test... deliverable: relayed to elsewhere.test "
        "(from staff@example.org)",
        # RFC 5321 4.5.1: a postmaster at any local domain
        "joe@example.org... deliverable: local mailbox (from Postmaster@example.net)",
        "x@remote.test... deliverable: relayed to remote.test",
        # joe@example.org twice (as joe, then spelled whole): said once
    ]
    assert stdin.tell() == 0  # no message read


def test_an_unknown_user_is_undeliverable_with_the_hubs_reason_and_exit_67(
        config: Path) -> None:
    status, out, err, _ = verify(["joe", "nobody", "loop1", "carol@elsewhere.test"], config)
    assert (status, err) == (EX_NOUSER, "")
    assert out.splitlines() == [
        "joe@example.org... deliverable: local mailbox",
        "nobody@example.org... undeliverable: 550 5.1.1 No such user here",
        # an alias loop that leads nowhere: refused by the hub too
        "loop1@example.org... undeliverable: 550 5.1.1 No such user here",
        "carol@elsewhere.test... deliverable: relayed to elsewhere.test",
    ]


@pytest.mark.parametrize(("argv", "said"), [
    (["-bv"], "-bv: no recipients to verify: give them as arguments"),
    (["-bv", "-t"], "-bv verifies the recipients given as arguments; -t (read them from a "
                    "message) is not offered with it"),
    (["-t", "-bv", "joe"], "-bv verifies the recipients given as arguments; -t"),
])
def test_bv_without_recipients_or_with_t_is_a_usage_error(argv: list[str], said: str) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)
    stdin, out, err = io.BytesIO(b"To: joe\n\nx\n"), io.StringIO(), io.StringIO()
    assert run(argv, "/nonexistent.toml", "sendmail", stdin, err, out) == EX_USAGE
    assert stdin.tell() == 0 and out.getvalue() == ""
    assert err.getvalue().startswith(f"sendmail: {said}"), err.getvalue()


def test_bv_arguments_that_hold_no_address_are_a_usage_error(config: Path) -> None:
    status, out, err, _ = verify(["", ","], config)
    assert (status, out) == (EX_USAGE, "")
    assert "no recipients to verify" in err


def test_an_address_the_hub_would_refuse_is_65(config: Path) -> None:
    status, out, err, _ = verify(["a@b@c"], config)
    assert (status, out) == (EX_DATAERR, "")
    assert err.startswith("sendmail: ")


def test_without_the_users_file_local_names_are_not_verified_and_75(
        config: Path, tmp_path: Path) -> None:
    (tmp_path / "users").unlink()
    status, out, err, _ = verify(["x@remote.test", "joe"], config)
    assert (status, err) == (EX_TEMPFAIL, "")
    assert out.splitlines() == [
        "x@remote.test... deliverable: relayed to remote.test",
        "joe@example.org... not verified: 451 4.3.0 Local error in processing, try again "
        f"later: the users file {tmp_path / 'users'} does not exist",
    ]


def test_a_users_file_this_user_may_not_read_is_77_and_says_who_can(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the tests may run as root, who reads any mode: the refusal is made here)
    users = str(tmp_path / "users")

    def denied(path: str, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("txmailhub.users.read_regular", denied)
    status, out, err, _ = verify(["staff", "nobody"], config)
    assert (status, err) == (EX_NOPERM, "")
    why = (f"451 4.3.0 Local error in processing, try again later: the users file {users} "
           "cannot be read (Permission denied; root and the hub's user can)")
    assert out.splitlines() == [f"staff@example.org... not verified: {why}",
                                f"nobody@example.org... not verified: {why}"]


def test_an_aliases_file_that_cannot_be_read_is_said_once_and_leaves_names_unverified(
        config: Path, tmp_path: Path) -> None:
    (tmp_path / "aliases").unlink()
    (tmp_path / "aliases").mkdir()  # read() fails: IsADirectoryError
    status, out, err, _ = verify(["joe", "staff"], config)
    assert status == EX_TEMPFAIL
    lines = out.splitlines()
    assert lines[0] == "joe@example.org... deliverable: local mailbox"
    # not "undeliverable": it may be an alias in the file not read
    assert lines[1].startswith("staff@example.org... not verified: 451 4.3.0 ")
    assert f"cannot read aliases file {tmp_path / 'aliases'}" in lines[1]
    assert len(lines) == 2
    assert err.count("\n") == 1 and err.startswith(
        f"sendmail: warning: cannot read aliases file {tmp_path / 'aliases'}")
    assert err.rstrip().endswith("names that are no user are not verified")


def test_the_output_format_is_the_one_documented() -> None:
    documented = (Path(__file__).parent.parent / "docs" / "sendmail.rst").read_text()
    for example in ("joe@example.org... deliverable: local mailbox",
                    "... deliverable: relayed to elsewhere.test (from staff@example.org)",
                    "nobody@example.org... undeliverable: 550 5.1.1 No such user here"):
        assert example in documented, example


def test_the_postmaster_is_deliverable_whatever_the_router_answers(
        config: Path, tmp_path: Path) -> None:
    # RFC 5321 4.5.1: the hub takes it even when its users file is away
    # (smtp.policy.local_rcpt); -bv said "not verified", exit 75
    (tmp_path / "users").unlink()
    status, out, err, _ = verify(["postmaster", "Postmaster@example.net"], config)
    assert (status, err) == (EX_OK, "")
    why = (f"451 4.3.0 Local error in processing, try again later: the users file "
           f"{tmp_path / 'users'} does not exist")
    assert out.splitlines() == [
        f"{name}... deliverable: the postmaster, never refused (RFC 5321 4.5.1); the "
        f"mailboxes it leads to are not verified: {why}"
        for name in ("postmaster@example.org", "Postmaster@example.net")]


@pytest.mark.parametrize(("smtp", "host"), [
    ('listen = ["tcp:2525"]\nrelay_networks = []\n', "127.0.0.1"),
    ('listen = ["tcp6:2525"]\nrelay_networks = ["127.0.0.0/8"]\n', "::1"),
    ('listen = ["tcp:2525:interface=192.0.2.7"]\n', "192.0.2.7"),
])
def test_a_remote_recipient_the_hub_would_not_relay_for_the_command_is_undeliverable(
        config: Path, smtp: str, host: str) -> None:
    # the command reaches the MX listener from ``host``: outside [smtp]
    # relay_networks, the hub answers 550 5.7.1 and sending is exit 69
    text = config.read_text().replace('[smtp]\nlisten = ["tcp:1"]\n', f"[smtp]\n{smtp}")
    config.write_text(text)
    status, out, err, _ = verify(["x@remote.test", "joe", "staff"], config)
    assert (status, err) == (EX_UNAVAILABLE, "")
    lines = out.splitlines()
    assert lines[0] == (
        "x@remote.test... undeliverable: 550 5.7.1 Relaying denied: the hub relays only for "
        f"[smtp] relay_networks, and this command reaches it from {host}, which is not in "
        "them")
    # an alias's remote member is the hub's own to relay: taken as ever
    assert "carol@elsewhere.test... deliverable: relayed to elsewhere.test " \
           "(from staff@example.org)" in lines
    # with the user unknown too, 67 wins
    assert verify(["x@remote.test", "nobody"], config)[0] == EX_NOUSER


@pytest.mark.parametrize("smtp", [
    'listen = ["unix:/run/txmailhub/smtp.sock", "tcp:25"]\nrelay_networks = []\n',
    'listen = ["tcp:2525"]\nrelay_networks = ["127.0.0.1/32"]\n',
    'listen = ["tcp:2525:interface=192.0.2.7"]\nrelay_networks = ["192.0.2.0/24"]\n',
])
def test_a_remote_recipient_the_hub_relays_for_the_command_is_deliverable(
        config: Path, smtp: str) -> None:
    config.write_text(config.read_text().replace('listen = ["tcp:1"]\n', smtp))
    assert verify(["x@remote.test"], config)[:2] == (
        EX_OK, "x@remote.test... deliverable: relayed to remote.test\n")


@pytest.mark.parametrize(("smtp", "said"), [
    ('listen = ["tcp:0"]\n', "[smtp] listen names no listener this command can reach (a "
                            "unix: socket or a fixed TCP port)"),
    ('listen = ["tcp:25"]\nrelay_networks = ["nonsense"]\n', "[smtp] relay_networks is not "
                                                            "valid (mailhub check says why)"),
])
def test_a_remote_recipient_with_no_relay_rule_to_judge_by_is_78(
        config: Path, smtp: str, said: str) -> None:
    config.write_text(config.read_text().replace('listen = ["tcp:1"]\n', smtp))
    status, out, _, _ = verify(["x@remote.test", "joe"], config)
    assert status == EX_CONFIG
    assert out.splitlines() == [f"x@remote.test... not verified: {config}: {said}",
                                "joe@example.org... deliverable: local mailbox"]


def test_control_characters_in_a_line_are_escaped(config: Path, tmp_path: Path) -> None:
    # the detail names files of the config: an ESC there must not reach
    # the terminal as one (the rest of the command escapes what it prints)
    config.write_text(config.read_text() + '[users]\nfile = "u\\u001b[2Jx"\n')
    status, out, _, _ = verify(["joe"], config)
    assert status == EX_TEMPFAIL
    assert "\x1b" not in out
    assert out == ("joe@example.org... not verified: 451 4.3.0 Local error in processing, "
                   f"try again later: the users file {tmp_path}/u\\x{{1B}}[2Jx does not exist\n")


def test_a_miss_in_a_file_being_rewritten_is_not_verified_with_the_hubs_reply(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a users or aliases file read while it may be half-written: the hub
    # answers 451 for a name it misses (``Router._doubtful_miss``), and -bv
    # says that reply, no file being unreadable or away
    monkeypatch.setattr("txmailhub.router.Router._doubtful_miss", lambda self: True)
    status, out, err, _ = verify(["nobody"], config)
    assert (status, err) == (EX_TEMPFAIL, "")
    assert out.splitlines() == [
        "nobody@example.org... not verified: 451 4.3.0 Mailbox list is being updated, try "
        "again later"]

@pytest.mark.parametrize("value", ['""', '"a\\u0000b"', '5'])
def test_a_config_with_no_usable_users_file_leaves_local_names_unverified(
        config: Path, value: str) -> None:
    # an empty path or one with a NUL: none to read, the hub's own start
    # fails; no local name is a mailbox for -bv then
    config.write_text(config.read_text() + f'[users]\nfile = {value}\n')
    status, out, err, _ = verify(["joe", "staff"], config)
    assert (status, err) == (EX_TEMPFAIL, "")
    why = ("451 4.3.0 Local error in processing, try again later: the config names no "
           "usable [users] file")
    assert out.splitlines() == [f"joe@example.org... not verified: {why}",
                                f"staff@example.org... not verified: {why}"]


def test_bv_with_standard_output_closed_is_an_io_error(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``>&-``: Python's sys.stdout is None, and what -bv finds could be
    # written nowhere
    monkeypatch.setattr("sys.stdout", None)
    err = io.StringIO()
    status = run(["-bv", "joe"], str(config), "sendmail", io.BytesIO(b""), err, None)
    assert status == EX_IOERR
    assert err.getvalue() == ("sendmail: standard output is closed: nowhere to write what -bv "
                              "finds\n")


def _with_quota(config: Path, quota: int) -> None:
    """``[hub] mailbox_quota = quota``, an alias of joe alone, one of joe
    and a remote address, and a message of 150 octets in joe's Maildir
    (its size in its name, as the hub writes it)."""
    config.write_text(config.read_text().replace(
        "[hub]\n", f"[hub]\nmailbox_quota = {quota}\n", 1))
    with (config.parent / "aliases").open("a") as f:
        f.write("joes: joe\njoer: joe, carol@elsewhere.test\n")
    new = config.parent / "var" / "mail" / "example.org" / "joe" / "new"
    new.mkdir(parents=True)
    (new / "1700000000.M1P1.mail,S=150").write_bytes(b"x" * 150)


def test_a_mailbox_at_its_quota_is_undeliverable_with_rcpts_452_and_75(config: Path) -> None:
    # RCPT to joe is 452 4.2.2 (smtp.policy.quota_refusal); -bv said
    # "deliverable: local mailbox", exit 0
    _with_quota(config, 150)
    status, out, err, _ = verify(["joe", "ann", "joes", "staff", "postmaster"], config)
    assert (status, err) == (EX_TEMPFAIL, "")
    full = ("452 4.2.2 Mailbox full, try again later: the mailbox of joe@example.org holds "
            "150 octets, [hub] mailbox_quota is 150")
    assert out.splitlines() == [
        f"joe@example.org... undeliverable: {full}",
        "ann@example.org... deliverable: local mailbox",
        f"joes@example.org... undeliverable: {full}",  # an alias of joe alone: refused too
        # an alias with a member that has room is taken for all (the
        # quota is soft: joe gets its copy), as RCPT takes it
        "joe@example.org... deliverable: local mailbox (from staff@example.org)",
        "ann@example.org... deliverable: local mailbox (from staff@example.org)",
        "carol@elsewhere.test... deliverable: relayed to elsewhere.test "
        "(from staff@example.org)",
        # RFC 5321 4.5.1: never refused
        "joe@example.org... deliverable: local mailbox (from postmaster@example.org)",
    ]
    # an alias with a remote member is taken for all too
    status, out, _, _ = verify(["joer"], config)
    assert (status, out.splitlines()) == (EX_OK, [
        "joe@example.org... deliverable: local mailbox (from joer@example.org)",
        "carol@elsewhere.test... deliverable: relayed to elsewhere.test (from joer@example.org)"])
    # one octet more of quota: room again
    config.write_text(config.read_text().replace("mailbox_quota = 150", "mailbox_quota = 151"))
    status, out, _, _ = verify(["joe"], config)
    assert (status, out) == (EX_OK, "joe@example.org... deliverable: local mailbox\n")


def test_a_mailbox_this_user_may_not_measure_for_the_quota_is_not_verified_77(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the tests may run as root, who reads any mode: the refusal is made here)
    from txmailhub.store.quota import MailboxUsage

    _with_quota(config, 100)
    usage = MailboxUsage.usage

    def denied(self: MailboxUsage, md: str) -> int:
        if md.endswith("/joe"):
            raise PermissionError(13, "Permission denied", md)
        return usage(self, md)

    monkeypatch.setattr(MailboxUsage, "usage", denied)
    status, out, err, _ = verify(["joes", "staff"], config)
    assert (status, err) == (EX_NOPERM, "")
    mail = config.parent / "var" / "mail"
    assert out.splitlines() == [
        "joes@example.org... not verified: 452 4.2.2 Mailbox full, try again later if the "
        "mailbox of joe@example.org is at [hub] mailbox_quota (100 octets): its Maildir "
        f"under {mail} cannot be measured by this user (Permission denied; root and the "
        "hub's user can)",
        # ann has room: taken whatever joe's holds
        "joe@example.org... deliverable: local mailbox (from staff@example.org)",
        "ann@example.org... deliverable: local mailbox (from staff@example.org)",
        "carol@elsewhere.test... deliverable: relayed to elsewhere.test "
        "(from staff@example.org)",
    ]


def test_a_mailbox_no_one_can_measure_for_the_quota_gets_its_mail(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an error that is no refusal to this user (an I/O error): the hub
    # cannot measure it either, and RCPT takes the mail (the quota is soft)
    from txmailhub.store.quota import MailboxUsage

    _with_quota(config, 100)
    usage = MailboxUsage.usage

    def broken(self: MailboxUsage, md: str) -> int:
        if md.endswith("/joe"):
            raise OSError(5, "Input/output error", md)
        return usage(self, md)

    monkeypatch.setattr(MailboxUsage, "usage", broken)
    status, out, err, _ = verify(["joe"], config)
    assert (status, err, out) == (EX_OK, "", "joe@example.org... deliverable: local mailbox\n")


def test_a_mailbox_no_maildir_folder_can_have_the_name_of_is_rcpts_550_5_3_5(
        config: Path) -> None:
    # a users file line written by hand whose Maildir folder's name is over
    # the file system's 255 octets (100 "\u0130", 300 octets lower-cased):
    # RCPT refuses it with 550 5.3.5 and an alias keeps its other members
    # (smtp.policy.storable); -bv said "deliverable: local mailbox"
    users = config.parent / "users"
    joe = next(line for line in users.read_text().splitlines() if line.startswith("joe@"))
    long_name = "\u0130" * 100
    with users.open("a") as f:
        f.write(joe.replace("joe@", f"{long_name}@", 1) + "\n")
    with (config.parent / "aliases").open("a") as f:
        f.write(f"both: joe, {long_name}\nlost: {long_name}\n")
    status, out, err, _ = verify([f"{long_name}@example.org", "both", "lost"], config)
    assert (status, err) == (EX_NOUSER, "")
    refused = "undeliverable: 550 5.3.5 Mailbox name cannot be stored on this system"
    assert out.splitlines() == [
        f"{long_name}@example.org... {refused}",
        "joe@example.org... deliverable: local mailbox (from both@example.org)",
        f"lost@example.org... {refused}",
    ]
