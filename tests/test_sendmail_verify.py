"""``sendmail -bv``: each recipient judged by the hub's router over the
config's users and aliases files, one line per resulting address, the
status 0, 67, 75 or 77; no message read, the hub never contacted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from txmailhub.sendmail import (
    EX_DATAERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
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
