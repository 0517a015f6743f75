"""The ``mailhub`` command: exit codes and messages of check and user."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import as_user, mailhub, no_logins, not_waiting_on, read_empty

from txmailhub.cli import main


@pytest.fixture(autouse=True)
def _no_controlling_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in this process find no terminal to ask a password
    at, wherever the tests run (from a terminal, getpass would ask there);
    the tests of the terminal run the command in a process of its own."""
    monkeypatch.setattr("txmailhub.cli.TERMINAL", str(tmp_path / "no-tty"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return _config_in(tmp_path)


@pytest.fixture
def open_config(open_tmp: Path) -> Path:
    """``config`` in a folder other users may enter (pytest's own is
    closed to them), for the warnings of what they could read or change."""
    return _config_in(open_tmp)


def _config_in(folder: Path) -> Path:
    path = folder / "mailhub.toml"
    path.write_text(no_logins(HUB + 'domains = ["example.org", "example.net"]\n'
                              'state_dir = "var"\n'))
    return path

# a hostname: the default (the machine's name) may be a warning
HUB = '[hub]\nhostname = "mail.example.org"\n'
# a password the policy takes, for tests about something else
PW = "mellow-quartz-harbour\n"


def run(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], out=out, err=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("args", "why"), [
    (("user", "add", "joe", "--password-stdin"),
     "standard input is closed: no password to read (--password-stdin reads its first line)"),
    (("user", "add", "joe"), "no terminal to ask for the password: use --password-stdin"),
    (("user", "passwd", "joe", "--password-stdin"),
     "standard input is closed: no password to read (--password-stdin reads its first line)"),
])
def test_a_password_with_standard_input_closed_is_refused_not_a_traceback(
        config: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], why: str) -> None:
    # ``mailhub user add joe --password-stdin <&-``: sys.stdin is None, and
    # reading the password was an AttributeError
    if args[1] == "passwd":
        assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    users = config.parent / "users"
    before = users.read_bytes() if users.exists() else None
    monkeypatch.setattr("sys.stdin", None)  # (and no terminal: _no_controlling_terminal)
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), *args], out=out, err=err) == 2
    assert err.getvalue() == f"mailhub: {why}\n"
    assert (users.read_bytes() if users.exists() else None) == before


@pytest.mark.parametrize("binary", [True, False])
def test_a_password_stdin_that_cannot_be_read_is_refused_as_a_closed_one(
        config: Path, binary: bool) -> None:
    # ``user add joe --password-stdin 0>file`` (opened for writing only):
    # "mailhub: Bad file descriptor", exit 1, said nothing of where
    class Unreadable(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            raise OSError(9, "Bad file descriptor")

    class Text(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            raise OSError(9, "Bad file descriptor")

    stdin = io.TextIOWrapper(Unreadable()) if binary else Text()
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), "user", "add", "joe", "--password-stdin"],
                out=out, err=err, stdin=stdin) == 2
    assert err.getvalue() == ("mailhub: cannot read standard input: Bad file descriptor: "
                              "no password to read (--password-stdin reads its first line)\n")
    assert not (config.parent / "users").exists()


def test_user_list_usage_gives_what_each_mailbox_holds_and_the_quota(config: Path) -> None:
    for name in ("alice", "bob@example.net"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    new = config.parent / "var" / "mail" / "example.org" / "alice" / "new"
    new.mkdir(parents=True)
    (new / "1.M1P1.host,S=1500,W=1530").write_bytes(b"x")  # sized by its name
    (new.parent / "cur").mkdir()
    (new.parent / "cur" / "2.foreign:2,S").write_bytes(b"y" * 70)  # by its length
    assert run(config, "user", "list", "--usage") == (
        0, "alice@example.org\t1570\tnone\nbob@example.net\t0\tnone\n", "")
    config.write_text(config.read_text().replace("[hub]\n", "[hub]\nmailbox_quota = 30000000\n"))
    assert run(config, "user", "list", "--usage")[1].splitlines()[0] == (
        "alice@example.org\t1570\t30000000")
    assert run(config, "user", "list")[1] == "alice@example.org\nbob@example.net\n"


def deny_stat(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """``os.stat`` (which the quota measure calls) of any path with
    ``marker`` in it fails with EACCES: a Maildir this user may not read."""
    import txmailhub.store.quota as quota

    real = quota.os.stat

    def stat(path, *args, **kwargs):
        if marker in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(quota.os, "stat", stat)


def test_user_list_usage_goes_on_past_a_mailbox_it_cannot_measure(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "a/b" is a valid local part that cannot name a Maildir folder (was a
    # traceback), and a Maildir this user may not read (was the end of the
    # listing at that mailbox): each is said on stderr, the rest is listed
    for name in ("alice", "bob", "carol"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    # written by hand (``user add`` refuses it): a line of alice's, renamed
    users_file = config.parent / "users"
    alice = next(line for line in users_file.read_text().splitlines()
                 if line.startswith("alice@"))
    with users_file.open("a") as f:
        f.write(alice.replace("alice@", "a/b@", 1) + "\n")
    deny_stat(monkeypatch, "/bob/")
    code, out, err = run(config, "user", "list", "--usage")
    assert (code, out) == (1, "a/b@example.org\tunknown\tnone\nalice@example.org\t0\tnone\n"
                              "bob@example.org\tunknown\tnone\ncarol@example.org\t0\tnone\n")
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith("mailhub: cannot measure the mailbox of a/b@example.org: ")
    assert lines[1].startswith("mailhub: cannot measure the mailbox of bob@example.org: ")
    assert "Permission denied" in lines[1]


def test_user_add_refuses_a_name_no_maildir_folder_can_have(config: Path) -> None:
    # "a/b" was added (exit 0): its mail then waited in the queue for the
    # queue lifetime (451 "cannot name a Maildir folder") and every POP3
    # login was refused for now -- an address that can never be a user
    for name in ("a/b", ".", "..", "x/y@example.net"):
        code, out, err = run(config, "user", "add", name, "--password-stdin", stdin=PW)
        assert (code, out) == (2, ""), name
        assert len(err.splitlines()) == 1 and "Maildir" in err, err
    assert run(config, "user", "list") == (0, "", "")


def test_user_add_takes_a_quoted_name_as_smtp_names_it(config: Path) -> None:
    # '"joe"' was kept quoted in the users file while RCPT TO:<"joe"@...>
    # means joe (RFC 5321 4.1.2), as does a POP3 login "joe": the user
    # could log in as '"joe"' only and never got mail (550 no such user)
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    assert run(config, "user", "add", '"joe"', "--password-stdin", stdin=PW) == (
        0, "added joe@example.org\n", "")
    users = UsersDB(str(config.parent / "users"), "example.org",
                    ["example.org", "example.net"])
    assert users.contains(parse_mailbox('"joe"@example.org', "example.org"))
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 1
    # one that stays quoted in SMTP stays quoted here too: the same key
    assert run(config, "user", "add", '"a@b"@example.org', "--password-stdin", stdin=PW)[0] == 0
    assert users.contains(parse_mailbox('"a@b"@example.org', "example.org"))


def test_user_add_of_a_quoted_utf8_name_writes_one_check_finds_reachable(config: Path) -> None:
    # the file keeps a user's key, in NFC: '"<\u0338"' is written '"\u226e"'
    # (U+226E is "<" with U+0338 composed), and check judges that line.
    # Whether the quotes come off must not depend on the composition: they
    # stayed on as typed, and check then warned of the line add had just
    # written that RCPT dropped its quotes and no mail reached it
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    for name in ('"j\u00f6rg"', '"<\u0338"', '"a\u037e"', "b\u037e"):
        assert run(config, "user", "add", name, "--password-stdin", stdin=PW)[0] == 0, name
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    users = UsersDB(str(config.parent / "users"), "example.org",
                    ["example.org", "example.net"])
    for name in ('"j\u00f6rg"', "j\u00f6rg", '"<\u0338"', '"\u226e"', "\u226e",
                 '"a\u037e"', '"a;"', "a\u037e", "b\u037e", '"b;"'):
        assert users.contains(parse_mailbox(name, "example.org", utf8=True)), name


def test_user_add_takes_a_name_smtp_can_give_only_quoted_in_its_quoted_form(
        config: Path) -> None:
    # "a;" and "a..b" are no dot-strings: RCPT TO:<a;@...> is a syntax
    # error, and RCPT TO:<"a;"@...> is looked up with its quotes.  `user add
    # a;` wrote the user a;, whom no RCPT could name, and check said nothing
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    assert run(config, "user", "add", "a;", "--password-stdin", stdin=PW) == (
        0, 'added "a;"@example.org\n', "")
    assert run(config, "user", "add", "a..b", "--password-stdin", stdin=PW)[1] == (
        'added "a..b"@example.org\n')
    users_file = config.parent / "users"
    users = UsersDB(str(users_file), "example.org", ["example.org", "example.net"])
    for name in ('"a;"', '"a..b"'):
        assert users.contains(parse_mailbox(name, "example.org")), name
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    # such a line written by hand (or by an older `user add`) is the same
    # user: keyed "x;y", as RCPT gives it, and reached; `user add` finds it
    line = users_file.read_text().splitlines()[-1]
    users_file.write_text(users_file.read_text() + line.replace('"a..b"@', "x;y@", 1) + "\n")
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    users = UsersDB(str(users_file), "example.org", ["example.org", "example.net"])
    assert users.contains(parse_mailbox('"x;y"', "example.org"))
    code, out, err = run(config, "user", "add", '"x;y"', "--password-stdin", stdin=PW)
    assert (code, out) == (1, "") and "already exists" in err, err
    assert run(config, "user", "del", "x;y") == (0, 'deleted "x;y"@example.org\n', "")


def test_user_list_usage_shows_why_a_mailbox_of_a_name_with_an_escape_is_unmeasured(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # such a user (a line from before ESC was refused) is listed escaped,
    # and so is its Maildir's path in the reason a measure failed
    assert run(config, "user", "add", "bob", "--password-stdin", stdin=PW)[0] == 0
    users = config.parent / "users"
    line = users.read_text().splitlines()[-1]
    users.write_text(users.read_text() + "\x1b[2Jeve" + line[3:] + "\n"
                     + "a/\x1bb" + line[3:] + "\n")
    deny_stat(monkeypatch, "eve/")
    code, out, err = run(config, "user", "list", "--usage")
    assert code == 1 and "\x1b" not in out + err, (out, err)
    lines = err.splitlines()
    assert len(lines) == 2 and "Permission denied" in err and "\\x{1B}[2jeve/" in err, err


def test_check_ok(config: Path) -> None:
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    assert run(config, "check") == (0, f"{config}: ok\n", "")


def test_check_warns_of_a_users_file_that_does_not_exist(config: Path) -> None:
    code, out, err = run(config, "check")
    assert code == 0 and out == f"{config}: ok\n"
    assert "warning: the users file" in err and "does not exist yet" in err


def check_warnings(config: Path) -> str:
    """What ``mailhub check`` warns of for a config it passes."""
    code, out, err = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n"), err
    return err


def test_check_warns_of_users_no_mail_can_reach(config: Path) -> None:
    # lines written by hand or by an older `user add`: "a/b" (no Maildir
    # folder can have its name) and '"a""b"' (quotes that are no one quoted
    # string: RCPT TO:<"a""b"@...> is a syntax error) get no mail; '"q"'
    # and '"a@b"' are one quoted string each, keyed as RCPT gives them
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    users_file = config.parent / "users"
    alice = users_file.read_text().splitlines()[-1]
    with users_file.open("a") as f:
        for name in ("a/b", '"q"', '"a@b"', '"a""b"'):
            f.write(alice.replace("alice@", f"{name}@", 1) + "\n")
    err = check_warnings(config)
    lines = err.splitlines()
    assert len(lines) == 2, err
    # each at its line of the users file (1: the header, 2: alice)
    assert lines[0] == (f'warning: {users_file}:6: user "a""b"@example.org: its quotes are '
                        'no one quoted string, so no RCPT TO names it ("a\\"\\"b"@example.org '
                        "is another address): it gets no mail"), err
    assert lines[1].startswith(f"warning: {users_file}:3: user a/b@example.org: its local "
                               "part cannot name a Maildir folder")
    assert run(config, "user", "list")[1].splitlines() == [
        '"a""b"@example.org', '"a@b"@example.org', "a/b@example.org", "alice@example.org",
        "q@example.org"]


def test_a_users_file_line_written_quoted_is_the_name_rcpt_gives(config: Path) -> None:
    # a hand-written '"q"@example.org' line: RCPT TO:<"q"@...> and <q@...>
    # are one local part (RFC 5321 4.1.2), as the aliases file keys '"q"';
    # the line kept its quotes, check warned that no mail reached it, and
    # only a login as '"q"' found it
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    users_file = config.parent / "users"
    alice = users_file.read_text().splitlines()[-1]
    users_file.write_text(users_file.read_text() + alice.replace("alice@", '"q"@', 1) + "\n")
    assert check_warnings(config) == ""
    users = UsersDB(str(users_file), "example.org", ["example.org", "example.net"])
    for name in ('"q"', "q", "Q", '"Q"@example.org'):
        assert users.contains(parse_mailbox(name, "example.org")), name
        # a login names it quoted or not (POP3 USER, SMTP AUTH)
        assert users.check_password(users.qualify(name), PW.strip()), name
    with_aliases(config, 'team: "q"\n')
    assert check_warnings(config) == ""  # the target is the user q
    # `user add` finds it there; `user passwd` and `user del` reach it by
    # either name, and passwd writes its line as add would
    assert run(config, "user", "add", "q", "--password-stdin", stdin=PW)[0] == 1
    assert run(config, "user", "passwd", '"q"', "--password-stdin", stdin=PW)[0] == 0
    lines = users_file.read_text().splitlines()
    assert [line.split()[0] for line in lines if "q@" in line] == ["q@example.org"], lines
    assert run(config, "user", "del", '"q"')[0] == 0
    assert "q@example.org" not in run(config, "user", "list")[1]


def test_a_quoted_alias_name_rcpt_gives_unquoted_is_that_name(config: Path) -> None:
    # a hand-written '"zz": alice' line: RCPT TO:<"zz"@...> and <zz@...>
    # are one local part (RFC 5321 4.1.2); the key kept the quotes, check
    # warned that no mail reached it, and none did
    with_aliases(config, '"zz": alice\n')
    assert check_warnings(config) == ""
    code, out, _ = run(config, "alias", "show", "zz")
    assert code == 0 and out.startswith("alias: zz@example.org\n"), out


def test_check_warns_of_an_alias_name_of_quotes_that_are_no_one_quoted_string(
        config: Path) -> None:
    # '"a""b"': RCPT TO:<"a""b"@...> is a syntax error (the quoted string
    # ends at the second quote), and "a\\"\\"b" is another key: no mail
    # reaches it, and check, which warns of '"zz"', said nothing
    aliases = with_aliases(config, '"a""b": alice\n')
    err = check_warnings(config)
    assert err == (f'warning: {aliases}:1: alias "a""b"@example.org: its quotes are no one '
                   'quoted string, so no RCPT TO names it ("a\\"\\"b"@example.org is another '
                   "address): no mail reaches it\n")


def test_check_warns_of_a_line_of_the_aliases_file_ended_by_a_lone_cr(config: Path) -> None:
    # the hub ends a line at a lone CR; newaliases reads "a: alice\rb: bob"
    # as one line: check said nothing of a file read two ways
    aliases = with_aliases(config, "")
    aliases.write_bytes(b"# x\r\na: alice\rb: bob\nc: bob\rd: alice\r\n")
    err = check_warnings(config)
    assert err == (f"warning: {aliases}:2: line ends with a lone CR (and 1 other line): the hub "
                   "ends a line there, but other readers of aliases files (newaliases) read it "
                   "and the next line as one\n")


def test_check_warns_of_an_alias_name_no_rcpt_can_give(config: Path) -> None:
    # 250 letters and "@example.org": 262 octets, over the 256 of a path
    # the SMTP server takes; `alias add` refused it, check said nothing
    aliases = with_aliases(config, "a" * 250 + ": alice\n" + "b" * 243 + ": alice\n")
    err = check_warnings(config)
    assert err == (f"warning: {aliases}:1: alias {'a' * 250}@example.org: 262 octets, and RCPT "
                   "TO takes a path of at most 256: no mail reaches it\n")


def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        no_logins(HUB + 'domains = ["example.org"]\n[smtp]\nidle_timeout = "5x"\n'
                  'listen = ["tcp:x"]\n[pop3]\nlisten = []\ntls_listen = ["tcp:995"]\n')
    )
    code, out, err = run(bad, "check")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{bad}: [") for line in lines)
    assert "Traceback" not in err


def test_check_reports_users_file_problems(config: Path) -> None:
    (config.parent / "users").write_text("garbage\n")
    code, _, err = run(config, "check")
    assert code == 2 and "users:1: expected" in err


def test_check_prints_warnings_also_when_there_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(no_logins(HUB + 'domains = ["example.org"]\n[pop3]\nlisten = []\n'
                              'idle_timeout = "1m"\nbogus = 1\n'))
    code, out, err = run(path, "check")
    assert code == 2 and out == ""
    warning, problem = err.splitlines()
    assert warning.startswith("warning: ") and "10 minutes" in warning
    assert problem.startswith(f"{path}: [pop3] bogus")


def test_check_reports_a_hash_nobody_can_log_in_with(config: Path) -> None:
    (config.parent / "users").write_text("joe@example.org notahash\n")
    code, _, err = run(config, "check")
    assert code == 2 and "users:1: joe@example.org cannot log in" in err


def test_check_prints_warnings_but_passes(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text(HUB + 'domains = ["example.org"]\n[pop3]\nidle_timeout = "1m"\n')
    code, out, err = run(path, "check")
    assert code == 0 and "warning:" in err and "10 minutes" in err
    assert out == f"{path}: ok\n"


def test_check_warns_of_a_certificate_not_valid_for_the_hostname(tmp_path: Path) -> None:
    # a warning, not a problem: most sending servers do not check the
    # name, and mail must not stop for it; mail programs refuse TLS
    from conftest import make_certificate

    cert, key = make_certificate(tmp_path / "tls", "mx.example.net")
    path = tmp_path / "w.toml"
    body = f'domains = ["example.org"]\n[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
    path.write_text(HUB + body)
    code, out, err = run(path, "check")
    assert (code, out) == (0, f"{path}: ok\n")
    assert err.startswith(
        f"warning: {path}: [tls] certificate {cert} is not valid for mail.example.org "
        "([hub] hostname), only for mx.example.net, 127.0.0.1: clients that check the "
        "name"), err
    # at the line of [tls] certificate, as a problem with it is
    assert err.splitlines()[0].endswith("to a name it is valid for (at line 5)"), err
    path.write_text(HUB.replace("mail.example.org", "mx.example.net") + body)
    assert "not valid for" not in run(path, "check")[2]
    path.write_text('[hub]\n' + body)  # no hostname: the machine's name is compared
    _, _, err = run(path, "check")
    assert "([hub] hostname is not set: the machine's name)" in err


def test_user_commands(config: Path) -> None:
    assert run(config, "user", "add", "alice", "--password-stdin",
               stdin="mellow quartz one\nignored\n") == (0, "added alice@example.org\n", "")
    code, _, err = run(config, "user", "add", "alice@example.org", "--password-stdin", stdin=PW)
    assert (code, err) == (1, "mailhub: alice@example.org already exists\n")
    code, _, err = run(config, "user", "add", "eve@evil.test", "--password-stdin", stdin="x\n")
    assert code == 2 and "not in a local domain" in err
    code, _, err = run(config, "user", "add", "dave", "--password-stdin", stdin="\n")
    assert code == 2 and "the password is empty" in err
    assert run(config, "user", "add", "bob@example.net", "--password-stdin", "--allow-apop",
               stdin="pw2-harbour-frost\n")[0] == 0
    assert run(config, "user", "list") == (0, "alice@example.org\nbob@example.net\n", "")
    assert run(config, "user", "passwd", "alice", "--password-stdin",
               stdin="new harbour frost\n")[0] == 0
    code, _, err = run(config, "user", "passwd", "zed", "--password-stdin", stdin=PW)
    assert (code, err) == (1, "mailhub: no such user: zed@example.org\n")
    assert run(config, "user", "del", "alice")[0] == 0
    code, _, err = run(config, "user", "del", "alice")
    assert code == 1 and "no such user" in err
    assert run(config, "user", "list") == (0, "bob@example.net\n", "")
    # a line typed by hand, in capitals: listed as the hub knows it
    users = config.parent / "users"
    line = users.read_text().splitlines()[-1].replace("bob@example.net", "Carol@Example.NET")
    users.write_text(users.read_text() + line + "\n")
    assert run(config, "user", "list") == (0, "bob@example.net\ncarol@example.net\n", "")
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.apop_secret(Address("bob", "example.net")) == "pw2-harbour-frost"


def test_password_without_stdin_flag_needs_a_terminal(config: Path) -> None:
    code, _, err = run(config, "user", "add", "alice")
    assert code == 2 and "--password-stdin" in err


def test_usage_errors_exit_2(config: Path) -> None:
    for argv in (["--config", str(config)], ["--config", str(config), "frobnicate"],
                 ["--config", str(config), "user"], ["--config", str(config), "user", "add"]):
        with pytest.raises(SystemExit) as info:
            main(argv, out=io.StringIO(), err=io.StringIO())
        assert info.value.code == 2


def test_a_name_that_starts_with_a_dash_is_shown_the_way_to_give_it(config: Path) -> None:
    # '-dash' is a valid local part, but argparse takes `user del -dash`
    # for an unknown option and said only "required: address"
    def usage_error(*argv: str) -> str:
        err = io.StringIO()
        with pytest.raises(SystemExit) as info:
            main(["--config", str(config), *argv], out=io.StringIO(), err=err)
        assert info.value.code == 2
        return err.getvalue().splitlines()[-1]

    assert usage_error("user", "del", "-dash") == (
        "mailhub user del: the following arguments are required: address "
        "(-dash is no option: give a name that starts with '-' after --)")
    assert usage_error("alias", "show", "-x").endswith("after --)")
    # a mistyped option is no name: no such hint
    assert usage_error("user", "list", "--usagex") == "mailhub: unrecognized arguments: --usagex"
    assert run(config, "user", "add", "--password-stdin", "--", "-dash", stdin=PW) == (
        0, "added -dash@example.org\n", "")


def test_user_passwd_and_del_name_the_user_as_stored_as_add_and_list_do(config: Path) -> None:
    # they echoed the name as typed ("deleted JOE@example.org", a
    # decomposed accent as typed) while add and list give the stored key
    assert run(config, "user", "add", "Joe", "--password-stdin", stdin=PW)[1] == (
        "added joe@example.org\n")
    assert run(config, "user", "passwd", "JOE@Example.ORG", "--password-stdin", stdin=PW) == (
        0, "changed the password of joe@example.org\n", "")
    assert run(config, "user", "del", "JOE") == (0, "deleted joe@example.org\n", "")


def test_bad_config_exits_2(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "missing.toml", "user", "list")
    assert code == 2 and "cannot read the config file" in err


def test_python_dash_m_is_the_same_command(config: Path) -> None:
    result = mailhub(config, "user", "add", "carol", "--password-stdin", input=PW)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "added carol@example.org\n"
    result = subprocess.run(
        [sys.executable, "-m", "txmailhub", "--config", str(config), "check"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stdout.endswith(": ok\n")


def test_console_script_installed() -> None:
    script = Path(sys.executable).parent / "mailhub"
    assert script.exists()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "user" in result.stdout and "queue" in result.stdout


def test_a_reader_that_goes_away_ends_the_listing_quietly(config: Path) -> None:
    """``mailhub user list | head -0``: no "Broken pipe" message, exit 1."""
    for name in ("alice", "bob", "carol"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "txmailhub", "--config", str(config), "user", "list"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(writer)
    assert result.returncode == 1
    assert result.stderr == ""


def test_an_os_error_without_a_file_name_reads_cleanly(config: Path, monkeypatch) -> None:
    import txmailhub.cli as cli

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_command", fail)
    code, _, err = run(config, "user", "list")
    assert code == 1 and err == "mailhub: No space left on device\n"


def test_a_password_that_is_not_utf8_is_refused_cleanly(config: Path) -> None:
    # what reading bytes that are not UTF-8 from a pipe gives (surrogateescape)
    code, _, err = run(config, "user", "add", "latin", "--password-stdin",
                       stdin=b"p\xffw\n".decode("utf-8", "surrogateescape"))
    assert (code, err) == (2, "mailhub: the password is not UTF-8 text\n")
    # read as octets from a real standard input (its buffer): the same
    out, err2 = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(b"p\xffw-mellow-quartz\n"), encoding="ascii")
    assert main(["--config", str(config), "user", "add", "latin", "--password-stdin"],
                out=out, err=err2, stdin=stdin) == 2
    assert err2.getvalue() == "mailhub: the password is not UTF-8 text\n"


def test_an_empty_mailhub_config_counts_as_unset(tmp_path: Path) -> None:
    env = dict(os.environ, MAILHUB_CONFIG="")
    done = subprocess.run([sys.executable, "-m", "txmailhub", "check"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    # the default path, not the current folder read as a config file
    assert "/etc/txmailhub/mailhub.toml" in done.stderr, done.stderr
    assert "Is a directory" not in done.stderr


def test_a_default_config_that_cannot_be_read_says_why_that_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``mailhub check`` on a fresh machine, without --config: the line
    # named /etc/txmailhub/mailhub.toml and nothing said that the command
    # line gave no file, where ``twistd mailhub`` says so
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("MAILHUB_CONFIG", str(missing))
    # read from the environment when the module is imported, as at a start
    monkeypatch.setattr("txmailhub.cli.DEFAULT_CONFIG", str(missing))
    out, err = io.StringIO(), io.StringIO()
    assert main(["check"], out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        f"mailhub: no --config PATH given: reading {missing} "
        "($MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml)",
        f"{missing}: cannot read the config file: No such file or directory",
    ]
    # named on the command line (either spelling): the path alone says it
    for argv in (["--config", str(missing), "check"], ["-c", str(missing), "user", "list"],
                 [f"--config={missing}", "queue", "list"]):
        out, err = io.StringIO(), io.StringIO()
        assert main(argv, out=out, err=err) == 2
        assert err.getvalue() == (
            f"{missing}: cannot read the config file: No such file or directory\n")


EMPTY_CONFIG = ("mailhub: --config: the path is empty; leave the option out to read "
                "$MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml\n")


@pytest.mark.parametrize("argv", [
    ["--config=", "check"], ["-c", "", "check"], ["--config", "", "user", "list"],
    ["--config=", "queue", "list"], ["-c", "", "sendmail", "bob"],
])
def test_an_empty_config_path_is_a_usage_error(config: Path, argv: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # ``--config "$CONF"`` with $CONF unset: not the default file (it was,
    # or the current folder read as one), whatever the environment names
    monkeypatch.setenv("MAILHUB_CONFIG", str(config))
    out, err, stdin = io.StringIO(), io.StringIO(), io.StringIO("Subject: x\n\nbody\n")
    assert main(argv, out=out, err=err, stdin=stdin) == 2
    assert (out.getvalue(), err.getvalue()) == ("", EMPTY_CONFIG)


def test_an_empty_config_path_is_a_usage_error_for_the_command(tmp_path: Path) -> None:
    env = dict(os.environ, MAILHUB_CONFIG="")
    done = subprocess.run([sys.executable, "-m", "txmailhub", "--config=", "check"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", EMPTY_CONFIG)


def test_user_add_says_what_it_stored_and_refuses_what_cannot_be_a_mailbox(config: Path) -> None:
    assert run(config, "user", "add", "Ann.Smith", "--password-stdin", stdin=PW) == (
        0, "added ann.smith@example.org\n", "")
    code, _, err = run(config, "user", "add", "x" * 65, "--password-stdin", stdin=PW)
    assert code == 2 and "over 64 octets" in err
    code, _, err = run(config, "user", "add", "ctl\x01x", "--password-stdin", stdin=PW)
    assert code == 2 and "control character" in err


def check_with_aliases(config: Path, text: str) -> tuple[int, str, str]:
    """``check`` with ``text`` as the aliases file, and alice a user."""
    (config.parent / "aliases").write_text(text)
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    return run(config, "check")


def test_check_warns_of_alias_targets_that_are_no_user(config: Path) -> None:
    # the running hub skips them (and logs it): check says so before
    code, out, err = check_with_aliases(config,
        "ghost: nobody\nteam: alice, carol@example.net, x@remote.test\nsales: team\n"
        "boss@example.net: postmaster\n")
    assert code == 0 and out.endswith(": ok\n")
    warnings = [line for line in err.splitlines() if "no local user" in line]
    assert [w.split(": ", 2)[2] for w in warnings] == [
        "alias ghost@example.org names nobody@example.org, which is no local user: the hub "
        "skips it",
        "alias team@example.org names carol@example.net, which is no local user: the hub "
        "skips it"], err
    assert all(w.startswith("warning: ") for w in warnings)


def test_check_warns_of_a_mailbox_target_named_as_an_alias_that_is_no_user(
        config: Path) -> None:
    # "self: self" and "\team" name the mailbox of that name, not the alias
    # (the hub expands neither): with no user of that name the hub skips
    # them, and RCPT TO self@ gets 550, so check says so as for any target
    code, _, err = check_with_aliases(config,
        "self: self\nteam: alice\ncopy: \\team, alice\nalice: \\alice, x@remote.test\n")
    assert code == 0, err
    warnings = [line.split(": ", 2)[2] for line in err.splitlines() if "no local user" in line]
    assert warnings == [
        "alias self@example.org names self@example.org, which is no local user: the hub "
        "skips it",
        "alias copy@example.org names team@example.org, which is no local user: the hub "
        "skips it"], err


def test_check_reports_alias_targets_no_dns_name_can_be(config: Path) -> None:
    # RFC 1035 2.3.4, the relay's rule (it bounces such a target without a
    # query): a problem, one line each, as for the file's other problems
    long_label = "x" * 64 + ".test"
    code, out, err = check_with_aliases(config,
        f"team: alice, far@{long_label}\nholes: x@a..test\n"
        "fine: y@my_host.b\u00fccher.test, z@[192.0.2.1]\n")
    aliases = config.parent / "aliases"
    assert code == 2 and out == "", err
    assert err.splitlines() == [
        f"{aliases}:1: target 'far@{long_label}' of 'team': {long_label} can never be a name "
        "in DNS (a label of 64 octets, over the 63 of a label in DNS (RFC 1035 2.3.4)): mail "
        "to it bounces",
        f"{aliases}:2: target 'x@a..test' of 'holes': a..test can never be a name in DNS (an "
        "empty label (RFC 1035 2.3.4)): mail to it bounces"], err
    (config.parent / "aliases").write_text("team: alice, far@x.test\n")
    assert run(config, "check") == (0, f"{config}: ok\n", "")


def test_check_reports_alias_targets_in_a_domain_smtp_refuses(config: Path) -> None:
    # A fake A-label (xn--zz: the Punycode of nothing) or a label IDNA2008
    # refuses (a snowman) makes RCPT TO 501 (domain_problem, docs/smtp.rst);
    # an alias target the SMTP side would refuse is a problem for check too,
    # though DNS could be asked for the name.  A true A-label is fine.
    code, out, err = check_with_aliases(config,
        "team: alice, bob@xn--zz.test\nsnow: s@\u2603.test\n"
        "fine: y@xn--bcher-kva.test, z@ab--cd.b\u00fccher.test\n")
    aliases = config.parent / "aliases"
    assert code == 2 and out == "", err
    assert err.splitlines() == [
        f"{aliases}:1: target 'bob@xn--zz.test' of 'team': xn--zz.test is not a valid "
        "internationalized domain name: the label 'xn--zz' is no A-label (not the Punycode "
        "of a U-label IDNA2008 takes, as IDNA2008 writes it: RFC 5891 5.3): the hub's SMTP "
        "server refuses such an address (501)",
        f"{aliases}:2: target 's@\u2603.test' of 'snow': \u2603.test is not a valid "
        "internationalized domain name: the label '\u2603' is no U-label IDNA2008 takes, or "
        "its A-label is over 63 characters (RFC 5891): the hub's SMTP server refuses such an "
        "address (501)"], err
    (config.parent / "aliases").write_text("team: alice, bob@xn--bcher-kva.test\n")
    assert run(config, "check") == (0, f"{config}: ok\n", "")


def test_check_without_a_users_file_says_that_once_not_once_per_alias_target(
        config: Path) -> None:
    # every target would be "no local user": the one warning that matters
    # is that the users file is missing
    (config.parent / "aliases").write_text("team: alice, bob\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    code, _, err = run(config, "check")
    assert code == 0 and "no local user" not in err, err
    assert err.count("warning: ") == 1 and "does not exist yet" in err, err


def test_check_warns_of_an_alias_that_hides_a_user(config: Path) -> None:
    # aliases come first: alice's own mailbox would get none of her mail
    (config.parent / "aliases").write_text(
        "alice: bob\nbob: \\bob, x@remote.test\ncarol@example.net: bob\n"
        "postmaster: alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for name in ("alice", "bob", "carol@example.net", "postmaster"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    code, out, err = run(config, "check")
    assert code == 0 and out.endswith(": ok\n")
    hidden = [line.split(": ", 2)[2] for line in err.splitlines() if "name of a user" in line]
    # bob keeps a copy (\bob); postmaster is always the alias's to route
    assert hidden == [
        "alias alice@example.org has the name of a user: the alias comes first, so that "
        "user's mailbox gets none of its mail (add \\alice@example.org to its targets to "
        "keep a copy there)",
        "alias carol@example.net has the name of a user: the alias comes first, so that "
        "user's mailbox gets none of its mail (add \\carol@example.net to its targets to "
        "keep a copy there)"], err


def test_checks_alias_warnings_are_at_the_line_of_their_alias(config: Path) -> None:
    # PATH:LINENO as the aliases file's problems are (they named the file
    # alone): the line of the alias each is about, its first line
    aliases = config.parent / "aliases"
    aliases.write_text("# staff\nalice: bob\n\n\"zz\": \"alice\"\nteam: bob,\n  nobody\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for name in ("alice", "bob"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    code, out, err = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n")
    assert err.splitlines() == [
        f"warning: {aliases}:2: alias alice@example.org has the name of a user: the alias "
        "comes first, so that user's mailbox gets none of its mail (add \\alice@example.org to "
        "its targets to keep a copy there)",
        f"warning: {aliases}:5: alias team@example.org names nobody@example.org, which is no "
        "local user: the hub skips it"], err


def test_user_add_warns_when_an_alias_of_that_name_takes_the_mail(config: Path) -> None:
    (config.parent / "aliases").write_text("staff: alice\nteam: \\team, alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    code, out, err = run(config, "user", "add", "staff", "--password-stdin", stdin=PW)
    assert (code, out) == (0, "added staff@example.org\n")
    # at the alias's line, as check says its warnings (it named the file alone)
    assert err == (f"warning: {config.parent / 'aliases'}:1: alias staff@example.org has this "
                   "user's name and comes first: mail to it goes to the alias's targets, not "
                   "to this user's mailbox (add \\staff@example.org to them to keep a copy "
                   "there); logins work\n")
    # an alias that keeps the user's copy, or no alias: nothing to say
    for name in ("team", "alice"):
        assert run(config, "user", "add", name, "--password-stdin", stdin=PW)[2] == ""


def aliases_and_users(config: Path, aliases: str, *users: str) -> None:
    """The config's [aliases] file holds ``aliases``, and ``users`` are added."""
    (config.parent / "aliases").write_text(aliases)
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for name in users:
        assert run(config, "user", "add", name, "--password-stdin", stdin=PW)[0] == 0


def test_user_del_warns_of_the_aliases_that_named_the_user(config: Path) -> None:
    # "postmaster: joe", then joe leaves: the hub skips the target from
    # then on, and the postmaster's mail reaches nobody; say so at the del
    aliases_and_users(config, "postmaster: joe\nstaff: ann,\n  joe@example.org\n\nbackup: \\joe\n"
                      "other: ann\n", "joe", "ann")
    code, out, err = run(config, "user", "del", "joe")
    assert (code, out) == (0, "deleted joe@example.org\n")
    # one line each, at the alias's line (its first), in the file's order:
    # the lines check gives from now on
    aliases = config.parent / "aliases"
    assert err.splitlines() == [
        f"warning: {aliases}:{line}: alias {name}@example.org names joe@example.org, which is "
        "no user now: the hub skips that target (mailhub alias set to change it)"
        for line, name in ((1, "postmaster"), (2, "staff"), (5, "backup"))], err
    # no alias names it: nothing to say
    code, out, err = run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    assert run(config, "user", "del", "bob") == (0, "deleted bob@example.org\n", "")


def test_user_del_warns_of_the_alias_of_its_name_that_kept_a_copy(config: Path) -> None:
    # "joe: joe, joe@backup.test", the way to keep a copy in the user's own
    # mailbox: the alias's own name is that mailbox, as \joe is, so the hub
    # skips it once joe is deleted (check warns of it); "staff: joe" is
    # expanded as the alias, whose own target is the one skipped
    aliases_and_users(config, "joe: joe, joe@backup.test\nstaff: joe, ann\n", "joe", "ann")
    assert run(config, "check")[2] == "", "nothing to warn of while joe is a user"
    code, out, err = run(config, "user", "del", "joe")
    assert (code, out) == (0, "deleted joe@example.org\n")
    assert err == (f"warning: {config.parent / 'aliases'}:1: alias joe@example.org names "
                   "joe@example.org, which is no user now: the hub skips that target "
                   "(mailhub alias set to change it)\n"), err
    assert "alias joe@example.org names joe@example.org" in run(config, "check")[2]


def test_a_user_with_an_escape_in_its_name_from_before_is_listed_and_deleted_escaped(
        config: Path) -> None:
    # a users file line from before ESC was refused: `check` says what to
    # do, `user list` and `user del` reach it, and no ESC reaches the
    # terminal (it could rewrite what the admin sees)
    assert run(config, "user", "add", "bob", "--password-stdin", stdin=PW)[0] == 0
    users = config.parent / "users"
    line = users.read_text().splitlines()[-1]
    users.write_text(users.read_text() + "\x1b[2Jeve" + line[3:] + "\n")
    code, _, err = run(config, "check")
    assert code == 2 and "\\x{1B}[2jeve@example.org cannot log in" in err, err
    assert "mailhub user del" in err and "\x1b" not in err
    code, out, err = run(config, "user", "list")
    assert (code, out) == (0, "\\x{1B}[2jeve@example.org\nbob@example.org\n"), (out, err)
    code, out, err = run(config, "user", "passwd", "\x1b[2Jeve", "--password-stdin", stdin=PW)
    assert (code, out) == (0, "changed the password of \\x{1B}[2jeve@example.org\n"), err
    code, out, err = run(config, "user", "del", "\x1b[2Jeve")
    assert (code, out, err) == (0, "deleted \\x{1B}[2jeve@example.org\n", "")
    assert run(config, "user", "list")[1] == "bob@example.org\n"
    assert run(config, "check")[0] == 0


def test_an_alias_with_an_escape_in_its_name_from_before_is_removed_escaped(
        config: Path) -> None:
    (config.parent / "aliases").write_text("\x1b[2Jpost: joe\nstaff: joe\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    code, _, err = run(config, "check")
    assert code == 2 and "bad alias name" in err and "\x1b" not in err, err
    code, out, err = run(config, "alias", "remove", "\x1b[2Jpost")
    assert (code, out) == (0, "removed \\x{1B}[2jpost@example.org\n"), (out, err)
    assert (config.parent / "aliases").read_text() == "staff: joe\n"


def test_an_unknown_name_with_an_escape_is_refused_escaped(config: Path) -> None:
    # `user del`, `user passwd` and `alias remove` take a name with ESC (to
    # reach a line written before it was refused): one that is not in the
    # file is "no such user/alias", and its ESC must not reach the terminal
    # either (it was printed raw: a terminal escape sequence of the typist's)
    assert run(config, "user", "add", "bob", "--password-stdin", stdin=PW)[0] == 0
    (config.parent / "aliases").write_text("staff: bob\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for args, stdin in ((("user", "del", "\x1b]0;x\x07eve"), ""),
                        (("user", "passwd", "\x1b]0;x\x07eve", "--password-stdin"), PW),
                        (("alias", "remove", "\x1b]0;x\x07eve"), "")):
        code, out, err = run(config, *args, stdin=stdin)
        assert code == 1 and out == "" and "no such" in err, (args, out, err)
        assert "\x1b" not in err and "\x07" not in err and "\\x{1B}]0;x\\x{7}eve" in err, err


def test_a_domain_with_an_escape_is_refused_escaped(config: Path) -> None:
    # the users commands read a name with ESC leniently (to reach an old
    # line); one in the domain is no local domain, said without the ESC
    for args, stdin in ((("user", "add", "eve@\x1b]0;x\x07", "--password-stdin"), PW),
                        (("user", "del", "eve@\x1b]0;x\x07"), ""),
                        (("user", "passwd", "eve@\x1b]0;x\x07", "--password-stdin"), PW)):
        code, out, err = run(config, *args, stdin=stdin)
        assert code == 2 and out == "" and "not in a local domain" in err, (args, out, err)
        assert "\x1b" not in err and "\x07" not in err and "eve@\\x{1B}]0;x\\x{7}" in err, err


def test_check_shows_a_bidi_override_in_an_alias_target_escaped(config: Path) -> None:
    # alias list and alias show escape U+202E (it reorders what follows it
    # on screen); check's warning about the same target printed it raw
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    (config.parent / "aliases").write_text("staff: joe, ann\u202e\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    listed = run(config, "alias", "list")[1]
    assert listed == "staff@example.org\tjoe@example.org, ann\\x{202E}@example.org\n"
    code, _, err = run(config, "check")
    assert code == 0 and "ann\\x{202E}@example.org, which is no local user" in err, err
    assert "\u202e" not in err


def test_check_names_the_key_of_a_users_or_aliases_file_it_cannot_use(config: Path) -> None:
    folder = config.parent / "users"
    folder.mkdir()  # [users] file names a folder
    code, _, err = run(config, "check")
    assert code == 2 and f"[users] file: {folder} is a folder, not a file" in err, err
    assert "does not exist" not in err  # it is there: not the missing file's warning
    folder.rmdir()
    aliases = config.parent / "aliases"
    aliases.mkdir()
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    code, _, err = run(config, "check")
    assert code == 2 and f"[aliases] file: {aliases} is a folder, not a file" in err, err
    aliases.rmdir()
    aliases.write_bytes(b"team: alice\n\xff\n")
    code, _, err = run(config, "check")
    assert code == 2 and "[aliases] file is not UTF-8 text" in err, err


def test_check_reports_a_fifo_for_the_users_file_and_does_not_wait_on_it(config: Path) -> None:
    # a plain open() of a FIFO waits for a writer: check hung (and the hub,
    # at its first lookup); said as the config's check says an aliases file
    # that is one, at the key's line when the file writes it
    users = config.parent / "users"
    os.mkfifo(users)
    code, out, err = not_waiting_on(users, lambda: run(config, "check"))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"{config}: [users] file: {users} is not a regular file"], err
    # the commands that read or change it refuse it, naming it
    code, _, err = not_waiting_on(users, lambda: run(config, "user", "list"))
    assert (code, err) == (1, f"mailhub: {users}: not a regular file (a named pipe, device or "
                              "socket)\n")
    code, _, err = not_waiting_on(
        users, lambda: run(config, "user", "add", "joe", "--password-stdin", stdin=PW))
    assert (code, err) == (2, f"mailhub: {users}: the users file is not a regular file (a named "
                              "pipe, device or socket): not read, nothing changed; put the "
                              "users file there\n")
    assert stat.S_ISFIFO(os.lstat(users).st_mode)


def test_check_reports_users_and_aliases_files_over_their_bound(config: Path) -> None:
    # read whole, however large: over 16 MiB each is refused as a file
    # that cannot be read, a problem naming it and the bound (exit 2)
    from txmailhub.router import ALIASES_FILE_MAX
    from txmailhub.users import USERS_FILE_MAX

    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    users, aliases = config.parent / "users", config.parent / "aliases"
    aliases.write_text("team: alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    assert run(config, "check")[0] == 0
    with open(aliases, "r+b") as f:
        f.truncate(ALIASES_FILE_MAX + 1)  # (sparse files: no disk taken)
    with open(users, "r+b") as f:
        f.truncate(USERS_FILE_MAX + 1)
    code, out, err = run(config, "check")
    assert (code, out) == (2, "")
    why = "cannot be read: larger than 16 MiB, the most the hub reads of it"
    assert f"{config}: [users] file: {users} {why}" in err.splitlines(), err
    assert f"{config}: [aliases] file: {aliases} {why} (at line 10)" in err.splitlines(), err


def _fifo_after_load(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """``path`` replaced by a FIFO once the config is loaded: the config's
    own check (``isfile``) passed, and the command reads it after."""
    from txmailhub import cli

    real_load = cli.load

    def load(config: str, **kwargs):  # type: ignore[no-untyped-def]
        settings = real_load(config, **kwargs)
        path.unlink()
        os.mkfifo(path)
        return settings

    monkeypatch.setattr(cli, "load", load)


@pytest.mark.parametrize("key", ["aliases", "smarthost_auth_file"])
def test_check_reports_a_fifo_put_in_place_of_a_file_after_the_config_was_read(
        config: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    if key == "aliases":
        path = config.parent / "aliases"
        path.write_text("team: alice\n")
        config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
        said = f"{config}: [aliases] file: {path} is not a regular file (at line 10)"
    else:
        path = config.parent / "auth"
        path.write_text("u:p\n")
        path.chmod(0o600)
        config.write_text(config.read_text() + '[relay]\nsmarthost = "relay.example.net:587"\n'
                          'smarthost_auth_file = "auth"\n')
        said = (f"{config}: [relay] smarthost_auth_file: {path} is not a regular file "
                "(at line 11)")
    _fifo_after_load(monkeypatch, path)
    code, out, err = not_waiting_on(path, lambda: run(config, "check"))
    assert (code, out) == (2, "")
    assert err.splitlines() == [said], err


def test_user_commands_do_not_wait_on_a_fifo_put_in_place_of_the_aliases_file(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `user add` and `user del` read the aliases file for their warnings
    aliases = config.parent / "aliases"
    aliases.write_text("staff: alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    _fifo_after_load(monkeypatch, aliases)
    assert not_waiting_on(aliases, lambda: run(
        config, "user", "add", "staff", "--password-stdin", stdin=PW)) == (
        0, "added staff@example.org\n", "")
    aliases.unlink()
    aliases.write_text("staff: alice\n")
    assert not_waiting_on(aliases, lambda: run(config, "user", "del", "alice")) == (
        0, "deleted alice@example.org\n", "")


def deny_opening(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """``os.open`` of ``path`` is refused (root reads everything: denied by
    hand; ``check`` reads as the hub reads, through read_regular)."""
    real_open = os.open

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)


def test_check_names_the_key_of_an_aliases_file_it_cannot_read(config: Path,
                                                               monkeypatch) -> None:

    aliases = config.parent / "aliases"
    aliases.write_text("team: alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    deny_opening(monkeypatch, aliases)
    code, _, err = run(config, "check")
    assert code == 2, err
    assert f"{config}: [aliases] file: {aliases} cannot be read: Permission denied" in err, err


def test_check_reports_an_interface_that_does_not_resolve(config: Path) -> None:
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    config.write_text(config.read_text()
                      + "[smtp]\nlisten = ['tcp:2525:interface=no.such.host.invalid']\n")
    code, _, err = run(config, "check")
    assert code == 2 and "[smtp] listen: endpoint" in err and "does not resolve" not in err
    assert "neither an IP address nor a name that resolves" in err
    assert run(config, "user", "list")[0] == 0  # other commands do not look it up


def test_check_with_a_users_folder_and_aliases_exits_2_without_a_crash(config: Path) -> None:
    (config.parent / "users").mkdir()
    (config.parent / "aliases").write_text("team: alice\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    code, _, err = run(config, "check")
    assert code == 2 and "[users] file:" in err and "Traceback" not in err


def test_check_names_every_bad_item_of_a_list(config: Path) -> None:
    # one run names them all: fixing one at a time and rerunning is tedious
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    config.write_text(
        HUB + 'domains = ["example.org", "bad domain", "example.org", "-x.test"]\n'
        'state_dir = "var"\n'
        '[smtp]\nlisten = ["tcp:x", "tcp:2525", "udp:53"]\nrelay_networks = ["10/8x", "::1/200"]\n'
        '[relay]\nnameservers = ["192.0.2.1:0", "name.test"]\n')
    code, _, err = run(config, "check")
    lines = err.splitlines()
    assert code == 2
    assert sum("[hub] domains:" in line for line in lines) == 3, err
    assert any("'bad domain'" in line for line in lines)
    assert any("'example.org' is listed twice" in line for line in lines)
    assert any("'-x.test'" in line for line in lines)
    assert sum("[smtp] listen:" in line for line in lines) == 2, err
    assert sum("[smtp] relay_networks:" in line for line in lines) == 2, err
    assert sum("[relay] nameservers:" in line for line in lines) == 2, err


def test_check_reads_the_smarthost_auth_file(open_config: Path) -> None:
    config = open_config
    # the relay reads it at each delivery: a bad one would turn every
    # outbound message into a retry, found only in the log
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    auth = config.parent / "auth"
    config.write_text(config.read_text()
                      + '[relay]\nsmarthost = "smtp.example.net:587"\n'
                        'smarthost_auth_file = "auth"\n')
    for content, why in ((b"just-a-name\n", 'expected one line "username:password"'),
                         (b"", 'expected one line "username:password"'),
                         (b":secret\n", 'expected one line "username:password"'),
                         (b"u:p\nv:q\n", 'expected one line "username:password", found 2'),
                         (b"user:\xffpass\n", "is not UTF-8 text")):
        auth.write_bytes(content)
        auth.chmod(0o600)
        code, _, err = run(config, "check")
        assert code == 2 and "[relay] smarthost_auth_file: " in err and why in err, (content, err)
    auth.write_bytes(b"user@example.net:s3cret\n")
    code, out, err = run(config, "check")
    assert (code, out, err) == (0, f"{config}: ok\n", ""), err
    auth.chmod(0o644)
    code, _, err = run(config, "check")
    assert code == 0 and "warning: " in err and "every local user can read it" in err, err
    auth.chmod(0o640)  # root:txmailhub 640 is how the docs would have it
    assert run(config, "check")[2] == ""


def test_check_warns_of_a_users_file_or_tls_key_every_local_user_can_read(
        open_config: Path) -> None:
    config = open_config
    # the users file holds the hashes and, for --allow-apop, the passwords
    # themselves (base64): one written (or copied in) by hand as 0644, or
    # a key so, went unsaid, where the smarthost password's was a warning
    from conftest import make_certificate

    cert, key = make_certificate(config.parent / "tls", "mail.example.org")
    run(config, "user", "add", "alice", "--password-stdin", "--allow-apop", stdin=PW)
    config.write_text(config.read_text() + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    users = config.parent / "users"
    key.chmod(0o600)
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    users.chmod(0o644)
    key.chmod(0o604)
    code, _, err = run(config, "check")
    assert code == 0, err
    assert (f"warning: {config}: [users] file: {users} holds the users' password hashes and "
            "APOP secrets and every local user can read it (mode 644): chmod o-rwx") in err, err
    assert (f"warning: {config}: [tls] key: {key} holds the TLS private key and every "
            "local user can read it (mode 604): chmod o-rwx") in err, err
    users.chmod(0o640)
    key.chmod(0o640)
    assert run(config, "check")[2] == ""


def test_check_does_not_warn_of_a_readable_secret_in_a_folder_others_cannot_enter(
        open_config: Path) -> None:
    config = open_config
    # the deployment guide's users.d is 0700: a 0644 users file in it is
    # read by nobody else, and the warning would only be noise
    closed = _readable_users_in_a_closed_folder(config)
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    closed.chmod(0o701)
    assert "every local user can read it (mode 644)" in run(config, "check")[2]


def _readable_users_in_a_closed_folder(config: Path) -> Path:
    """A users file 0644 in a ``users.d`` 0700, as ``config`` names it:
    that folder."""
    closed = config.parent / "users.d"
    closed.mkdir(mode=0o700)
    config.write_text(config.read_text() + '[users]\nfile = "users.d/users"\n')
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    (closed / "users").chmod(0o644)
    return closed


def test_check_warns_of_a_readable_secret_in_a_closed_folder_with_an_acl(
        open_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an ACL entry for a named user (setfacl -m u:bob:x users.d) lets bob
    # through a folder whose mode bits say 0700: the warning stays
    config = open_config
    closed = _readable_users_in_a_closed_folder(config)
    real = os.listxattr

    def listxattr(path, *args, **kwargs):
        if os.fspath(path) == str(closed):
            return ["system.posix_acl_access"]
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "listxattr", listxattr)
    assert "every local user can read it (mode 644)" in run(config, "check")[2]



def test_check_warns_of_a_trusted_file_every_local_user_may_change(open_config: Path) -> None:
    config = open_config
    # a line of theirs in the users file logged them in as anyone (and so
    # read anyone's mail), one in the aliases file took anyone's mail:
    # a users file or aliases file 0602, or a users.d 0777, went unsaid
    users_d = config.parent / "users.d"
    users_d.mkdir(mode=0o755)
    aliases = config.parent / "aliases"
    aliases.write_text("staff: alice\n")
    aliases.chmod(0o644)
    config.write_text(config.read_text() + '[users]\nfile = "users.d/users"\n'
                      '[aliases]\nfile = "aliases"\n')
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    users = users_d / "users"
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    users.chmod(0o602)
    aliases.chmod(0o646)
    config.chmod(0o666)
    code, _, err = run(config, "check")
    assert code == 0, err
    lines = err.splitlines()
    assert (f"warning: {config}: [users] file: {users} says who logs in with what password, "
            f"and every local user may change it (mode 602): chmod o-w {users} (at line 10)"
            ) in lines, err
    assert (f"warning: {config}: [aliases] file: {aliases} says where mail goes, and every "
            f"local user may change it (mode 646): chmod o-w {aliases} (at line 12)") in lines, err
    assert (f"warning: {config}: {config} is the hub's configuration, and every local user "
            f"may change it (mode 666): chmod o-w {config}") in lines, err
    users.chmod(0o600)
    aliases.chmod(0o644)
    config.chmod(0o644)
    users_d.chmod(0o777)
    code, _, err = run(config, "check")
    assert err.splitlines() == [
        f"warning: {config}: [users] file: {users} says who logs in with what password, and "
        f"every local user may put a file of their own in its place: its folder {users_d} is "
        f"writable by all (mode 0777): chmod o-w {users_d} (at line 10)"], err
    users_d.chmod(0o1777)  # sticky: others cannot replace a file not theirs
    assert run(config, "check") == (0, f"{config}: ok\n", "")


def test_check_refuses_a_state_dir_others_may_write(config: Path) -> None:
    # as the start refuses it: they could swap mail/ for a link of theirs
    state = config.parent / "var"
    state.mkdir()
    state.chmod(0o707)
    code, _, err = run(config, "check")
    assert code == 2
    assert (f"{config}: [hub] state_dir: {state} may be written by every local user ("
            in err), err
    assert f"and read every mailbox; chmod o-rwx {state} (at line 4)\n" in err, err
    state.chmod(0o700)
    assert run(config, "check")[0] == 0


def _mail_domain_with_user(config: Path, user: str) -> Path:
    """The mail folder of example.org, once ``user`` is added there: the
    set-up of the tests of Maildirs kept under older spellings."""
    run(config, "user", "add", user, "--password-stdin", stdin=PW)
    return config.parent / "var" / "mail" / "example.org"

def test_check_names_a_maildir_kept_under_a_decomposed_local_part(config: Path) -> None:
    # an earlier version made the folder of a name typed decomposed (o and
    # U+0308) as typed; the hub keys that mailbox by its NFC form, so the
    # old folder's mail is out of reach until moved
    domain = _mail_domain_with_user(config, "bob")
    (domain / "bob" / "new").mkdir(parents=True)
    (domain / "j\u00f6rg" / "new").mkdir(parents=True)
    (domain / ".not-a-mailbox").mkdir()
    (domain / "Notes").mkdir()  # an administrator's folder, no Maildir
    assert run(config, "check")[2] == ""
    (domain / "jo\u0308rg" / "new").mkdir(parents=True)
    (domain / "jo\u0308rg" / "new" / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: "), err
    assert str(domain / "jo\u0308rg") + " is a Maildir the hub no longer reads" in err
    assert "(its name is spelled jo\\u0308rg)" in err, err
    assert "kept in " + str(domain / "j\u00f6rg") + "; move its messages there" in err


def test_check_names_a_maildir_kept_under_a_quoted_local_part_rcpt_unquotes(
        config: Path) -> None:
    # a users file line '"q"@example.org' kept its quotes, and a login as
    # '"q"' opened the Maildir '"q"'; the file keys it as RCPT gives it (q)
    # now, and every login, alias and RCPT reaches the Maildir q: the old
    # one's mail is out of reach until moved.  A name that needs its
    # quotes ('"a;"') is the hub's own folder
    domain = _mail_domain_with_user(config, "q")
    (domain / '"a;"' / "new").mkdir(parents=True)
    assert run(config, "check")[2] == ""
    (domain / '"q"' / "new").mkdir(parents=True)
    (domain / '"a\\:b"' / "cur").mkdir(parents=True)
    (domain / '"q"' / "new" / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: "), err
    assert str(domain / '"q"') + " is a Maildir the hub no longer reads" in err, err
    assert "kept in " + str(domain / "q") + "; move its messages there" in err, err
    assert "kept in " + str(domain / '"a:b"') + "; move its messages there" in err, err
    assert '"a;"' not in err, err


def _hand_written_user(config: Path, local: str) -> Path:
    """A users file line for ``local``@example.org written by hand (a
    copy of q's, as ``user add`` wrote it); the domain's mail folder."""
    users = config.parent / "users"
    run(config, "user", "add", "q", "--password-stdin", stdin=PW)
    line = users.read_text().splitlines()[-1]
    users.write_text(users.read_text() + line.replace("q@", f"{local}@", 1) + "\n")
    return config.parent / "var" / "mail" / "example.org"


def test_check_names_a_maildir_kept_under_a_name_rcpt_gives_only_quoted(
        config: Path) -> None:
    # a users file line 'a;@example.org' written by hand was keyed a;, and
    # a login as a; (or an alias target a;) used the Maildir a;; RCPT
    # gives that name only as "a;" (no dot-string, RFC 5321 4.1.2), and the
    # file keys it so, every way in reaching the Maildir "a;": the old
    # one's mail is out of reach until moved
    domain = _hand_written_user(config, "a;")
    (domain / '"a;"' / "new").mkdir(parents=True)
    (domain / '"a..b"' / "new").mkdir(parents=True)
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    for name in ("a;", "A..b", '"'):
        (domain / name / "cur").mkdir(parents=True)
    (domain / "a;" / "cur" / "1.M1P1.host,S=5:2,S").write_bytes(b"hi\n")
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: "), err
    assert str(domain / "a;") + " is a Maildir the hub no longer reads" in err, err
    assert "kept in " + str(domain / '"a;"') + "; move its messages there" in err, err
    assert "kept in " + str(domain / '"a..b"') + "; move its messages there" in err, err
    assert "kept in " + str(domain / '"\\""') + "; move its messages there" in err, err
    assert err.count("\n") == 3, err


def test_check_names_a_maildir_of_a_name_starting_with_a_dot_rcpt_gives_quoted(
        config: Path) -> None:
    # '.a' is no dot-string either (RFC 5321 4.1.2: a dot-string starts
    # with an atom): a line '.a@example.org' was keyed .a, whose login used
    # the Maildir .a, and is keyed ".a" now; check names the old folder as
    # it names a; (a folder's leading dot is no reason to pass it over:
    # only a Maildir is named, and a dot folder only as the old one of a
    # user: a Maildir++ subfolder or a client's own is not)
    domain = _hand_written_user(config, ".a")
    (domain / '".a"' / "new").mkdir(parents=True)
    (domain / ".a" / "cur").mkdir(parents=True)
    (domain / ".a" / "cur" / "1.M1P1.host,S=5:2,S").write_bytes(b"hi\n")
    (domain / ".b" / "cur").mkdir(parents=True)  # no user ".b": not named
    code, _, err = run(config, "check")
    assert code == 0, err
    assert str(domain / ".a") + " is a Maildir the hub no longer reads" in err, err
    assert "kept in " + str(domain / '".a"') + "; move its messages there" in err, err
    assert err.count("\n") == 1, err


def test_check_names_no_maildir_in_quotes_that_are_no_one_quoted_string(config: Path) -> None:
    # '"a""b"' and '"a\\"' are no quoted string RCPT could give: a login
    # by that name opens the folder of its name, the hub's own, which
    # no other spelling of it stands for
    domain = _mail_domain_with_user(config, "q")
    for name in ('"a""b"', '"a\\"'):
        (domain / name / "new").mkdir(parents=True)
        (domain / name / "new" / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    assert run(config, "check")[2] == ""


def test_check_counts_a_quoted_maildir_of_an_old_domain_folder_under_its_rcpt_name(
        config: Path) -> None:
    # the old domain folder's '"q"' is q's: the Maildir q of the domain's
    # folder is where its messages go, one of them under a name taken
    config.write_text(no_logins(HUB + 'domains = ["bu\u0308cher.example"]\nstate_dir = "var"\n'))
    run(config, "user", "add", "q", "--password-stdin", stdin=PW)
    new = config.parent / "var" / "mail" / "b\u00fccher.example" / "q" / "new"
    new.mkdir(parents=True)
    (new / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    old = config.parent / "var" / "mail" / "bu\u0308cher.example"
    (old / '"q"' / "new").mkdir(parents=True)
    (old / '"q"' / "new" / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    code, _, err = run(config, "check")
    assert code == 0 and f"{old} holds Maildirs the hub no longer reads" in err, err
    assert "(1 of them has a Maildir there already: move their messages into it, but 1 of " \
        "their messages has the unique name" in err, err


def test_check_names_no_maildir_that_is_the_hubs_own_under_another_name(config: Path) -> None:
    # a symbolic link to the folder, or its capitalized name on a file
    # system that ignores case (the same directory): the hub reads its
    # mail already, and "move its messages there" moved them onto
    # themselves
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    mail = config.parent / "var" / "mail"
    (mail / "example.org" / "bob" / "new").mkdir(parents=True)
    (mail / "example.org" / "Bob").symlink_to("bob")
    (mail / "EXAMPLE.ORG").symlink_to("example.org")
    assert run(config, "check")[2] == ""


def test_check_names_no_folder_whose_name_is_not_utf8(config: Path) -> None:
    # no address has such a name: the hub never made it, and its
    # "kept in" folder would be no name either
    domain = _mail_domain_with_user(config, "bob")
    (domain / "bob" / "new").mkdir(parents=True)
    os.mkdir(os.path.join(os.fsencode(domain), b"B\xff"))
    assert run(config, "check")[2] == ""


def test_check_names_no_dot_folder_under_a_decomposed_spelling(config: Path) -> None:
    # a name with a leading dot is no address's folder (a Maildir++
    # subfolder, a client's own): passed over even when it is a Maildir
    # whose name is spelled decomposed
    domain = _mail_domain_with_user(config, "bob")
    (domain / "bob" / "new").mkdir(parents=True)
    (domain / ".jo\u0308rg" / "new").mkdir(parents=True)
    (domain / ".jo\u0308rg" / "new" / "1.M1P1.host,S=5").write_bytes(b"hi\n")
    assert run(config, "check")[2] == ""


def test_check_names_messages_of_an_old_maildir_whose_unique_name_is_taken(
        config: Path) -> None:
    # moved as the advice says, one of them would replace the other
    domain = _mail_domain_with_user(config, "bob")
    for sub in ("new", "cur"):
        (domain / "bob" / sub).mkdir(parents=True)
        (domain / "Bob" / sub).mkdir(parents=True)
    (domain / "bob" / "cur" / "1.M1P1.host:2,").write_bytes(b"one\n")
    (domain / "Bob" / "cur" / "1.M1P1.host:2,S").write_bytes(b"two\n")
    (domain / "Bob" / "new" / "2.M1P1.host").write_bytes(b"three\n")
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: "), err
    assert ("kept in " + str(domain / "bob") + "; move its messages there, but 1 of them has "
            'the unique name (a file name before its ":") of a message there') in err, err


def test_check_names_maildirs_of_an_old_domain_folder_the_new_one_has_too(
        config: Path) -> None:
    # moved into the new domain folder, each needs its messages moved
    # into the one there, and one with a unique name taken replaces it
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    mail = config.parent / "var" / "mail"
    for maildir in ("example.org/bob", "example.org/joe", "Example.ORG/Bob", "Example.ORG/ann"):
        (mail / maildir / "new").mkdir(parents=True)
        (mail / maildir / "cur").mkdir()
    (mail / "example.org/bob/new/1.M1P1.host").write_bytes(b"one\n")
    (mail / "Example.ORG/Bob/cur/1.M1P1.host:2,S").write_bytes(b"two\n")
    (mail / "Example.ORG/Bob/cur/2.M1P1.host:2,S").write_bytes(b"three\n")
    code, _, err = run(config, "check")
    assert code == 0
    assert err == (f"warning: {mail / 'Example.ORG'} holds Maildirs the hub no longer reads: "
                   f"the folder of Example.ORG is now {mail / 'example.org'}; move them there "
                   "(1 of them has a Maildir there already: move their messages into it, but "
                   '1 of their messages has the unique name (a file name before its ":") of a '
                   "message there: give those new ones, or each replaces that message)\n"), err


def test_check_says_which_folder_it_could_not_look_into_for_old_maildirs(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a folder check cannot read (run as another user than the hub's) was
    # taken for one with no Maildir spelled another way: an ok, no word
    domain = _mail_domain_with_user(config, "bob")
    (domain / "Bob" / "new").mkdir(parents=True)
    assert "Bob is a Maildir the hub no longer reads" in run(config, "check")[2]
    listdir = os.listdir

    def refused(path):
        if os.fsdecode(path).endswith("example.org"):
            raise PermissionError(13, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    code, _, err = run(config, "check")
    assert code == 0
    assert err == (f"warning: {domain}: Maildirs under another spelling of a name are not "
                   "looked for: it cannot be read: Permission denied\n"), err


def test_check_names_maildirs_kept_under_a_domains_a_label(config: Path) -> None:
    # the hub reads mail/<U-label>/ only: an A-label folder from before is
    # out of reach until moved
    config.write_text(no_logins(HUB + 'domains = ["xn--bcher-kva.example"]\nstate_dir = "var"\n'))
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    assert run(config, "check")[2] == ""
    # the U-label folder itself is where the mail is: nothing to say of it
    (config.parent / "var" / "mail" / "bücher.example" / "bob").mkdir(parents=True)
    assert run(config, "check")[2] == ""
    # nor of an ASCII domain's, which has one spelling
    config.write_text(no_logins(HUB + 'domains = ["example.org"]\nstate_dir = "var"\n'))
    (config.parent / "var" / "mail" / "example.org" / "bob").mkdir(parents=True)
    assert run(config, "check")[2] == ""
    config.write_text(no_logins(HUB + 'domains = ["xn--bcher-kva.example"]\nstate_dir = "var"\n'))
    old = config.parent / "var" / "mail" / "xn--bcher-kva.example" / "bob"
    old.mkdir(parents=True)
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: ") and "move them there" in err, err
    assert str(config.parent / "var" / "mail" / "bücher.example") in err


def test_check_names_maildirs_kept_under_a_decomposed_domain(config: Path) -> None:
    # a domain configured decomposed (u and U+0308) by an earlier version
    # had its folder so; the hub reads the composed one only
    config.write_text(no_logins(HUB + 'domains = ["bu\u0308cher.example"]\nstate_dir = "var"\n'))
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    (config.parent / "var" / "mail" / "b\u00fccher.example" / "bob").mkdir(parents=True)
    assert run(config, "check")[2] == ""
    old = config.parent / "var" / "mail" / "bu\u0308cher.example" / "bob"
    old.mkdir(parents=True)
    code, _, err = run(config, "check")
    assert code == 0 and err.startswith("warning: "), err
    assert f"{old.parent} holds Maildirs the hub no longer reads" in err, err
    assert str(config.parent / "var" / "mail" / "b\u00fccher.example") + "; move them" in err


def test_check_counts_no_file_of_an_old_domain_folder_as_a_maildir(config: Path) -> None:
    # only a folder there is a Maildir to merge into the one of its name
    config.write_text(no_logins(HUB + 'domains = ["bu\u0308cher.example"]\nstate_dir = "var"\n'))
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    (config.parent / "var" / "mail" / "b\u00fccher.example" / "bob" / "new").mkdir(parents=True)
    old = config.parent / "var" / "mail" / "bu\u0308cher.example"
    (old / "alice" / "new").mkdir(parents=True)
    (old / "bob").write_bytes(b"not a Maildir\n")
    code, _, err = run(config, "check")
    assert code == 0 and f"{old} holds Maildirs the hub no longer reads" in err, err
    assert "a Maildir there already" not in err, err


def test_check_says_which_maildir_of_an_old_domain_folder_it_could_not_read(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text(no_logins(HUB + 'domains = ["bu\u0308cher.example"]\nstate_dir = "var"\n'))
    run(config, "user", "add", "bob", "--password-stdin", stdin=PW)
    (config.parent / "var" / "mail" / "b\u00fccher.example" / "bob" / "new").mkdir(parents=True)
    old = config.parent / "var" / "mail" / "bu\u0308cher.example"
    (old / "bob" / "new").mkdir(parents=True)
    listdir = os.listdir

    def refused(path):
        if os.fsdecode(path) == str(old / "bob" / "new"):
            raise PermissionError(13, "Permission denied", path)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    code, _, err = run(config, "check")
    assert code == 0 and f"{old} holds Maildirs the hub no longer reads" in err, err
    assert (f"warning: {old / 'bob' / 'new'}: Maildirs under another spelling of a name are "
            "not looked for: it cannot be read: Permission denied\n") in err, err


def test_check_says_when_this_user_could_not_use_the_state_dir(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # run as the hub's user (ExecStartPre), check fails where the start
    # would; os.access stands in for a user without the right (root has it)
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    state = config.parent / "var"
    real_access = os.access
    denied: set[str] = set()
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in denied and real_access(p, mode))
    assert run(config, "check")[0] == 0  # not there yet, its folder writable: fine
    denied.add(str(config.parent))
    code, _, err = run(config, "check")
    assert code == 2 and (
        f"[hub] state_dir: {state} does not exist and this user (uid {os.geteuid()}) cannot "
        f"make it in {config.parent}: make it and give it to the user the hub runs as") in err, err
    state.mkdir()
    assert run(config, "check")[0] == 0
    denied.add(str(state))
    code, _, err = run(config, "check")
    assert code == 2 and f"[hub] state_dir: {state} cannot be written by this user" in err, err
    state.rmdir()
    state.write_text("")
    code, _, err = run(config, "check")
    assert code == 2 and (f"[hub] state_dir: {state} is not a folder and is in the way of "
                          f"{state}: move it, or name another [hub] state_dir") in err, err


def test_a_users_folder_this_user_cannot_make_is_said_with_the_way_to_make_it(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # README's steps, then `sudo -u mailhub mailhub user add joe` before
    # deployment.rst's `install -d ... users.d`: the command said only
    # "mailhub: /etc/txmailhub/users.d: Permission denied", and check that
    # "mailhub user add makes it"; os.access and os.mkdir stand in for a
    # user without the right to write the folder above (root has it)
    import grp
    import pwd

    config.write_text(config.read_text() + '[users]\nfile = "users.d/users"\n')
    folder = config.parent / "users.d"
    (config.parent / "var").mkdir()  # state_dir made, as deployment.rst makes it
    real_access, real_mkdir = os.access, os.mkdir

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if str(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access",
                        lambda p, mode: str(p) != str(config.parent) and real_access(p, mode))
    monkeypatch.setattr(os, "mkdir", mkdir)
    make = (f"as root, make it for the user the hub runs as: install -d -o "
            f"{pwd.getpwuid(os.geteuid()).pw_name} -g {grp.getgrgid(os.getegid()).gr_name} "
            f"-m 0700 {folder} (docs/deployment.rst)")
    code, out, err = run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    assert (code, out) == (1, "")
    assert err == (f"mailhub: cannot make {folder}, the folder of the users file "
                   f"{folder / 'users'}: Permission denied; {make}\n")
    code, out, err = run(config, "check")
    assert code == 0 and (
        f"warning: the users file {folder / 'users'} does not exist yet, and this user cannot "
        f"make its folder (mailhub user add would fail): {make}; until then local mail is "
        "refused with 451\n") in err, err
    monkeypatch.setattr(os, "access", real_access)  # a folder it can make: as before
    assert ("warning: the users file " + str(folder / "users") + " does not exist yet "
            "(mailhub user add makes it)") in run(config, "check")[2]


def _users_folder_refused(config: Path, monkeypatch: pytest.MonkeyPatch,
                          base: Path) -> Path:
    """``[users] file`` in ``base/users.d``, a folder this user may not
    make (os.access and os.mkdir stand in for it, as above)."""
    config.write_text(config.read_text() + f'[users]\nfile = "{base}/users.d/users"\n')
    base.mkdir(parents=True, exist_ok=True)
    folder = base / "users.d"
    real_access, real_mkdir = os.access, os.mkdir

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if str(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(base) and real_access(p, mode))
    monkeypatch.setattr(os, "mkdir", mkdir)
    return folder


def _install_line(text: str) -> list[str]:
    """The words of the ``install -d`` line in ``text``, as a shell splits them."""
    import shlex

    start = text.index("install -d")
    return shlex.split(text[start:text.rindex(" (docs/deployment.rst)")])


@pytest.mark.parametrize("name", ["etc dir", "etc;touch pwned", "$(touch pwned)", "it's"])
def test_the_install_line_for_a_users_folder_is_quoted_for_the_shell(
        config: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # the line is there to be pasted into a root shell: a folder with a
    # space made two folders, and one with `;` or `$(...)` ran a command
    folder = _users_folder_refused(config, monkeypatch, config.parent / name)
    (config.parent / "var").mkdir()
    code, _, err = run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    assert code == 1 and _install_line(err)[-1] == str(folder), err
    code, _, err = run(config, "check")
    assert _install_line(err)[-1] == str(folder), err


NOBODY = 65534  # nobody:nogroup


def _users_d_config(folder: Path) -> Path:
    """A configuration in ``folder`` whose users file is
    ``users.d/users`` and whose state is ``var``, neither made yet: the
    set-up of the tests of who may make and write them."""
    config = folder / "mailhub.toml"
    config.write_text(HUB + 'domains = ["example.org"]\nstate_dir = "var"\n'
                      '[users]\nfile = "users.d/users"\n')
    return config


@pytest.mark.skipif(os.geteuid() != 0, reason="runs check as other users")
def test_check_says_a_users_folder_there_but_not_this_users_to_write_would_fail_user_add(
        open_tmp: Path) -> None:
    # users.d made beforehand, but not writable by whoever runs check:
    # check said "mailhub user add makes it", and user add then failed
    # on users.lock ("Permission denied")
    config = _users_d_config(open_tmp)
    state, folder = open_tmp / "var", open_tmp / "users.d"
    state.mkdir()
    folder.mkdir(mode=0o755)
    users = folder / "users"
    # 1. a users.d root made by hand, the hub's user (nobody) running
    # check: the chown that gives it to the hub's user
    os.chown(state, NOBODY, NOBODY)
    run(config, "check")  # as root first: what it imports, imported (as_user)
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(config, "check"))
    assert "mailhub user add makes it" not in err, err
    said = (f"this user (nobody) may not write its folder {folder} (root:root mode 0755), so "
            "the mailhub user commands cannot make the users file or its lock there, and the "
            "hub's user (nobody, the owner of state_dir) does not own it: as root, give it to "
            f"that user (chown nobody:nogroup {folder}), then run the mailhub user commands as "
            "root or as that user (docs/deployment.rst)")
    assert (f"warning: the users file {users} does not exist yet, and {said}; until then "
            "local mail is refused with 451\n") in err, err
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(
        config, "user", "add", "joe", "--password-stdin", stdin=PW))
    # and user add says it in the same words
    assert (code, err) == (1, f"mailhub: cannot open {users}.lock, the lock of the users "
                              f"file: Permission denied; {said}\n")
    # 2. users.d the hub's user's (uid 4343), another user running check
    os.chown(state, 4343, 4343)
    os.chown(folder, 4343, 4343)
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(config, "check"))
    assert (f"warning: the users file {users} does not exist yet, and this user (nobody) "
            f"may not write its folder {folder} (uid 4343:4343 mode 0755), so the mailhub "
            "user commands cannot make the users file or its lock there: run the mailhub "
            "user commands as root or as uid 4343, the folder's owner (docs/deployment.rst); "
            "until then") in err, err
    # 3. the owner's own folder without its write: the chmod
    os.chmod(folder, 0o555)
    code, _, err = as_user(4343, 4343, lambda: run(config, "check"))
    assert (f"this user (uid 4343) may not write its folder {folder} (uid 4343:4343 mode "
            f"0555), so the mailhub user commands cannot make the users file or its lock "
            f"there: give it its owner's write again: chmod u+wx {folder}; until then") in err, err
    os.chmod(folder, 0o755)
    # 4. its owner, or root: as before
    for uid in (4343, 0):
        code, _, err = as_user(uid, uid, lambda: run(config, "check"))
        assert "(mailhub user add makes it)" in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="runs user add as another user")
def test_a_users_lock_of_another_user_is_said_with_its_owner_and_mode(open_tmp: Path) -> None:
    # a users.d this user may write, but the lock root's first user command
    # left there (root's, 0600): "users.lock: Permission denied" alone
    config = _users_d_config(open_tmp)
    folder = open_tmp / "users.d"
    folder.mkdir()
    os.chmod(folder, 0o777)
    users = folder / "users"
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=PW)[0] == 0
    os.chmod(users, 0o644)
    lock = Path(f"{users}.lock")
    assert (lock.stat().st_uid, oct(lock.stat().st_mode & 0o777)) == (0, "0o600")
    before = users.read_bytes()

    def add_as_nobody() -> str:
        code, out, err = as_user(NOBODY, NOBODY, lambda: run(
            config, "user", "add", "joe", "--password-stdin", stdin=PW))
        assert (code, out) == (1, ""), err
        assert users.read_bytes() == before
        return err

    head = (f"mailhub: cannot open {lock}, the lock of the users file: Permission denied; "
            f"{lock} is there already, root:root mode 0600, which this user (nobody) may not "
            "open for writing: run the mailhub user commands as root")
    assert add_as_nobody() == head + "\n"
    os.chown(users, 4343, 4343)  # the file the hub's, the lock left root's
    assert add_as_nobody() == (f"{head}, or, as root, give it to the users file's owner, as "
                               f"the commands do: chown -h 4343 {lock}\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs check as another user")
def test_a_users_folder_holding_other_files_is_never_offered_to_the_hubs_user(
        open_tmp: Path) -> None:
    # [users] file straight in the configuration's folder (root's, with
    # mailhub.toml in it) or in /: check run as the hub's user offered
    # "chown nobody:nogroup <that folder>", which hands the hub its own
    # configuration (deployment.rst: it must not be able to change it), or /
    etc, state = open_tmp / "etc", open_tmp / "var"
    etc.mkdir(mode=0o755)
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    config = etc / "mailhub.toml"
    for users in (etc / "users", Path("/no-such-users-file-of-txmailhub")):
        assert not users.exists()
        config.write_text(HUB + f'domains = ["example.org"]\nstate_dir = "{state}"\n'
                          f'[users]\nfile = "{users}"\n')
        run(config, "check")  # as root first (as_user)
        err = as_user(NOBODY, NOBODY, lambda: run(config, "check"))[2]
        assert "chown" not in err, err
        assert (f"this user (nobody) may not write its folder {users.parent} (root:root mode "
                "0755)") in err, err
        assert ("holds other files than the users file, so it is not to be given to the "
                "hub's user") in err, err
        # what it offers instead makes a folder of the users file's own
        words = _install_line(err)
        assert words[:-1] == ["install", "-d", "-o", "nobody", "-g", "nogroup", "-m", "0700"]
        assert words[-1] == str(users.parent / "users.d"), err
    assert (etc.stat().st_uid, os.stat("/").st_uid) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs user add as another user")
@pytest.mark.parametrize(("name", "mode"), [
    ("users d", 0o755), ("users;touch pwned", 0o755), ("$(touch pwned)", 0o755),
    ("it's", 0o755), ("users d", 0o555)])
def test_the_chown_for_a_users_folder_pasted_into_a_shell_lets_user_add_work(
        open_tmp: Path, name: str, mode: int) -> None:
    # the line is for root's shell: pasted as it is, it must give the
    # folder (and only it) to the hub's user, and user add then works (a
    # folder made 0555 stayed one its new owner could not write)
    import json
    import shlex

    state, folder = open_tmp / "var", open_tmp / name
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    folder.mkdir()
    os.chmod(folder, mode)
    config = open_tmp / "mailhub.toml"
    config.write_text(HUB + f'domains = ["example.org"]\nstate_dir = "{state}"\n'
                      f'[users]\nfile = {json.dumps(str(folder / "users"))}\n')
    add = ("user", "add", "joe", "--password-stdin")
    warm = open_tmp / "warm.toml"  # a user add that works, as root first (as_user)
    warm.write_text(HUB + 'domains = ["example.org"]\n[users]\nfile = "warm/users"\n')
    assert run(warm, *add, stdin=PW)[0] == 0
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))
    assert code == 1, err
    line = err[err.index("(chown ") + 1:err.index("), then run")]
    assert shlex.split(line)[:3] == ["chown", "nobody:nogroup", str(folder)], line
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == mode & 0o077  # others' as they were
    assert not (open_tmp / "pwned").exists()
    assert as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))[0] == 0
    assert (folder / "users").stat().st_uid == NOBODY


@pytest.mark.skipif(os.geteuid() != 0, reason="runs user add as another user")
def test_the_chown_offered_for_a_users_lock_never_hands_over_what_it_leads_to(
        open_tmp: Path) -> None:
    # the lock is in a folder its users may write: swapped for a symbolic
    # link between the message and root's paste, "chown 4343 users.lock"
    # gave the link's target away; a lock with a second name (a hard link
    # to a file of root's) was offered to the chown as it was
    import shlex

    config = _users_d_config(open_tmp)
    folder = open_tmp / "users.d"
    folder.mkdir()
    os.chmod(folder, 0o777)
    users = folder / "users"
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=PW)[0] == 0
    os.chmod(users, 0o644)
    os.chown(users, 4343, 4343)
    lock = Path(f"{users}.lock")
    victim = open_tmp / "victim"
    victim.write_text("root's\n")
    os.chmod(victim, 0o600)

    def add_as_nobody() -> str:
        return as_user(NOBODY, NOBODY, lambda: run(
            config, "user", "add", "joe", "--password-stdin", stdin=PW))[2]

    err = add_as_nobody()
    line = err[err.index("as the commands do: ") + len("as the commands do: "):].rstrip("\n")
    assert shlex.split(line)[0] == "chown", line
    lock.unlink()
    lock.symlink_to(victim)  # by whoever may write users.d
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert victim.stat().st_uid == 0
    # a second name for a file of root's: said, and no chown offered
    lock.unlink()
    os.link(victim, lock)
    err = add_as_nobody()
    assert "chown" not in err, err
    assert f"{lock} is not a regular file with one name" in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="gives state_dir to another user")
def test_check_as_root_says_a_users_folder_not_the_hubs_makes_a_file_the_hub_cannot_read(
        open_tmp: Path) -> None:
    # root's check said "mailhub user add makes it" of a users.d root made
    # by hand (0700), and root's user add then made a users file of root's
    # there, 0600, which the hub (state_dir's owner) could not read
    import shlex

    state, folder = open_tmp / "var", open_tmp / "users.d"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    folder.mkdir(mode=0o700)
    config = open_tmp / "mailhub.toml"
    config.write_text(no_logins(HUB + f'domains = ["example.org"]\nstate_dir = "{state}"\n'
                                '[users]\nfile = "users.d/users"\n'))
    err = run(config, "check")[2]
    assert "mailhub user add makes it" not in err, err
    assert (f"root's mailhub user add would make it in {folder} (root:root mode 0700) for "
            "that folder's owner, mode 0600, which the hub's user could not read") in err, err
    line = err[err.index("(chown ") + 1:err.index("), then run")]
    assert shlex.split(line) == ["chown", "nobody:nogroup", str(folder)], line
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    assert (folder / "users").stat().st_uid == NOBODY
    assert run(config, "check")[2] == "", "the hub's user reads it"


@pytest.mark.skipif(os.geteuid() != 0, reason="runs user add as another user")
def test_the_chown_for_a_users_folder_its_user_cannot_list_gives_what_is_in_it_too(
        open_tmp: Path) -> None:
    # root's 0700 users.d with root's users file in it: what it holds is
    # not known to the hub's user, and the chown of the folder alone left
    # the file and its lock root's
    import shlex

    state, folder = open_tmp / "var", open_tmp / "users.d"
    state.mkdir()
    folder.mkdir(mode=0o700)
    config = open_tmp / "mailhub.toml"
    config.write_text(no_logins(HUB + f'domains = ["example.org"]\nstate_dir = "{state}"\n'
                                '[users]\nfile = "users.d/users"\n'))
    add = ("user", "add", "joe", "--password-stdin")
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=PW)[0] == 0
    os.chown(state, NOBODY, NOBODY)
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))
    assert code == 1, err
    assert "this user cannot list it: as root, if it holds nothing but the users file" in err
    line = err[err.index("(chown ") + 1:err.index("), then run")]
    assert shlex.split(line) == ["chown", "-R", "nobody:nogroup", str(folder)], line
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="runs user add as another user")
@pytest.mark.parametrize("linked", [False, True])
def test_the_chown_for_a_users_folder_with_roots_users_file_in_it_gives_that_file_too(
        open_tmp: Path, linked: bool) -> None:
    # a hub once run as root (state_dir root's) and then given a user of
    # its own: users.d, the users file and its lock are all root's.  The
    # chown of the folder alone left the lock and file root's, 0600, and
    # user add as the hub's user still failed; and chown -R of a users.d
    # that is a symbolic link changes the link alone: the folder it leads
    # to is named
    import shlex

    state, folder = open_tmp / "var", open_tmp / ("real" if linked else "users.d")
    state.mkdir()
    folder.mkdir(mode=0o755)
    if linked:
        (open_tmp / "users.d").symlink_to(folder)
    config = open_tmp / "mailhub.toml"
    config.write_text(no_logins(HUB + f'domains = ["example.org"]\nstate_dir = "{state}"\n'
                                '[users]\nfile = "users.d/users"\n'))
    add = ("user", "add", "joe", "--password-stdin")
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=PW)[0] == 0
    assert (folder / "users").stat().st_uid == 0
    os.chown(state, NOBODY, NOBODY)
    code, _, err = as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))
    assert code == 1, err
    line = err[err.index("(chown ") + 1:err.index("), then run")]
    assert shlex.split(line) == ["chown", "-R", "nobody:nogroup", str(folder)], line
    subprocess.run(["sh", "-c", line], cwd=open_tmp, check=True)
    assert as_user(NOBODY, NOBODY, lambda: run(config, *add, stdin=PW))[0] == 0
    assert run(config, "check")[2] == "", "the hub's user reads it"


def test_the_install_line_for_a_users_folder_names_the_hub_user_whoever_runs_it(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # deployment.rst's users.d is the hub's user's (the owner of state_dir),
    # not the user who ran the command: another admin's `mailhub user add`
    # was told `install -d -o admin ...`, a users.d the hub could not read
    import grp
    import pwd

    folder = _users_folder_refused(config, monkeypatch, config.parent / "etc")
    state = config.parent / "var"
    state.mkdir()
    if os.geteuid() == 0:
        os.chown(state, 4343, 4343)  # a hub user with no name: its numbers
    st = state.stat()

    def name(table: object, number: int) -> str:
        try:
            return table.getpwuid(number).pw_name if table is pwd else (  # type: ignore
                table.getgrgid(number).gr_name)  # type: ignore[attr-defined]
        except KeyError:
            return str(number)

    want = ["install", "-d", "-o", name(pwd, st.st_uid), "-g", name(grp, st.st_gid),
            "-m", "0700", str(folder)]
    real_euid, real_egid = os.geteuid, os.getegid
    for euid in {0, st.st_uid + 4242} - {st.st_uid}:  # root, and another user
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        monkeypatch.setattr(os, "getegid", lambda euid=euid: euid)
        if euid == 0:
            # root's own mkdir refused (an NFS root_squash): the same line
            code, _, err = run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
            assert code == 1 and _install_line(err) == want, err
            continue
        code, _, err = run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
        assert code == 1 and _install_line(err) == want, err
        assert _install_line(run(config, "check")[2]) == want
    # no state_dir yet: this user, as before
    monkeypatch.setattr(os, "geteuid", real_euid)
    monkeypatch.setattr(os, "getegid", real_egid)
    state.rmdir()
    me = [name(pwd, os.geteuid()), name(grp, os.getegid())]
    line = _install_line(run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[2])
    assert [line[3], line[5]] == me


def test_check_takes_a_state_dir_several_folders_deep_that_can_be_made(config: Path) -> None:
    # the start makes every missing folder on the way (os.makedirs)
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    text = config.read_text().replace('state_dir = "var"', 'state_dir = "no/such/state"')
    assert 'state_dir = "no/such/state"' in text
    config.write_text(text)
    code, _, err = run(config, "check")
    assert code == 0 and "state_dir" not in err, err
    # a file on the way, however far up, is in the way, and named: the
    # line said "something that is not a folder", and which of the path's
    # folders was a file was the admin's to find
    (config.parent / "no").write_text("")
    code, _, err = run(config, "check")
    assert code == 2 and (
        f"[hub] state_dir: {config.parent / 'no'} is not a folder and is in the way of "
        f"{config.parent / 'no/such/state'}: move it, or name another [hub] state_dir") in err, err


def test_check_names_a_dangling_symlink_in_the_way_of_the_state_dir(config: Path) -> None:
    # a symlink to nothing (a volume not mounted, a target moved) is not a
    # folder and os.makedirs cannot make one through it; check took it for
    # nothing there at all and said "ok", the start then refused
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    text = config.read_text().replace('state_dir = "var"', 'state_dir = "link/state"')
    config.write_text(text)
    link = config.parent / "link"
    link.symlink_to(config.parent / "gone")
    code, _, err = run(config, "check")
    assert code == 2 and (
        f"[hub] state_dir: {link} is not a folder and is in the way of "
        f"{link / 'state'}: move it, or name another [hub] state_dir") in err, err
    # state_dir itself a symlink to nothing
    config.write_text(text.replace('state_dir = "link/state"', 'state_dir = "link"'))
    code, _, err = run(config, "check")
    assert code == 2 and f"[hub] state_dir: {link} is not a folder and is in the way of " \
        f"{link}: " in err, err


def test_check_wants_a_state_dir_it_can_search_as_well_as_write(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # write without search (mode 0600 on a folder) makes no file in it
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    state = config.parent / "var"
    state.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: (
        not (str(p) == str(state) and mode & os.X_OK) and real_access(p, mode)))
    code, _, err = run(config, "check")
    assert code == 2 and f"[hub] state_dir: {state} cannot be written by this user" in err, err


def _laid_out(config: Path, *, state_dir: str = "var", users: str = "users",
              extra: str = "") -> None:
    """``config`` laid out so no key is where a count of its ``[section]``
    lines puts it: [users] file at line 2 (a dotted key above [hub]),
    [hub] state_dir at line 7 (after a blank line), then ``extra`` from
    line 8."""
    config.write_text(
        '# the hub\n'                                         # 1
        f'users.file = "{users}"  # the users\n'              # 2
        '[hub]\n'                                             # 3
        'hostname = "mail.example.org"\n'                     # 4
        'domains = ["example.org"]\n'                         # 5
        '\n'                                                  # 6
        f'state_dir = "{state_dir}"\n'                        # 7
        + no_logins(extra))                                   # 8 on


def test_check_says_the_line_of_a_state_dir_it_cannot_use(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # check's own findings have only the settings, not the text: each said
    # where [hub] state_dir is written, as a problem found loading it is
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    _laid_out(config)
    state = config.parent / "var"
    real_access = os.access
    denied: set[str] = set()
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in denied and real_access(p, mode))
    denied.add(str(config.parent))
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines()[-1] == (
        f"{config}: [hub] state_dir: {state} does not exist and this user (uid {os.geteuid()}) "
        f"cannot make it in {config.parent}: make it and give it to the user the hub runs as "
        "(at line 7)"), err
    state.mkdir()
    denied.add(str(state))
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines()[-1] == (
        f"{config}: [hub] state_dir: {state} cannot be written by this user (uid "
        f"{os.geteuid()}): it and everything in it must belong to the user the hub runs as "
        "(at line 7)"), err
    state.rmdir()
    state.write_text("")
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines()[-1] == (
        f"{config}: [hub] state_dir: {state} is not a folder and is in the way of {state}: "
        "move it, or name another [hub] state_dir (at line 7)"), err
    # left to its default ("var" beside the config): no line to point at
    config.write_text(config.read_text().replace('state_dir = "var"\n', ""))
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines()[-1] == (
        f"{config}: [hub] state_dir: {state} is not a folder and is in the way of {state}: "
        "move it, or name another [hub] state_dir"), err


def test_check_says_the_line_of_a_users_or_aliases_file_it_cannot_read(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    users = config.parent / "users"
    users.mkdir()
    _laid_out(config)
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines() == [
        f"{config}: [users] file: {users} is a folder, not a file (at line 2)"], err
    # the default ("users" beside the config) is written nowhere
    _laid_out(config)
    config.write_text(config.read_text().replace('users.file = "users"  # the users\n', ""))
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines() == [
        f"{config}: [users] file: {users} is a folder, not a file"], err
    users.rmdir()
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    aliases = config.parent / "aliases"
    aliases.write_text("team: alice\n")
    _laid_out(config, extra='[aliases]\n\n"file" = "aliases"\n')  # 8, 9, 10
    deny_opening(monkeypatch, aliases)
    code, _, err = run(config, "check")
    assert code == 2 and err.splitlines() == [
        f"{config}: [aliases] file: {aliases} cannot be read: Permission denied (at line 10)"], err


def test_check_says_the_line_of_a_listener_that_is_not_ready(config: Path) -> None:
    # the item's own line, in a list written over several lines
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    _laid_out(config, extra=(
        '[smtp]\n'                                                   # 8
        'listen = [\n'                                               # 9
        '    "tcp:2525",\n'                                          # 10
        '    # not this one\n'                                       # 11
        '    "tcp:2526:interface=no.such.host.invalid",\n'           # 12
        ']\n'
        '[pop3]\n'                                                   # 14
        'listen = ["tcp:1110:interface=no.such.host.invalid"]\n'))   # 15
    code, _, err = run(config, "check")
    # (the POP3 listener, no TLS, also gets the warning of one other hosts may reach)
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith(f"{config}: [smtp] listen: endpoint ") and \
        lines[0].endswith(" (at line 12)"), err
    assert lines[1].startswith(f"{config}: [pop3] listen: endpoint ") and \
        lines[1].endswith(" (at line 15)"), err
    assert "neither an IP address nor a name that resolves" in lines[0]


def test_check_says_the_users_file_line_of_a_user_mail_never_reaches(config: Path) -> None:
    # the warning is about the user's line of the users file, which the
    # admin edits or `user del`s: it names that line as the file's own
    # problems do (PATH:LINENO), not the config's line of [users] file
    # (said after the user, that read as the user's line: here the
    # config's line 2 holds [users] file, the users file's line 2 alice)
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    users_file = config.parent / "users"
    alice = users_file.read_text().splitlines()[-1]
    quoted_q = alice.replace("alice@", '"q""r"@', 1)
    with users_file.open("a") as f:
        # a second line of it is ignored (a problem): the first is in effect
        f.write("# below: q\n" + quoted_q + "\n\n" + quoted_q + "\n")
    _laid_out(config)
    code, out, err = run(config, "check")
    assert code == 2 and out == "", err
    lines = err.splitlines()
    assert lines == [
        f'warning: {users_file}:4: user "q""r"@example.org: its quotes are no one quoted '
        'string, so no RCPT TO names it ("q\\"\\"r"@example.org is another address): it gets '
        "no mail",
        f'{users_file}:6: "q""r"@example.org is already on line 4: this line is ignored'], err


def test_check_says_the_line_of_the_smarthost_auth_file(open_config: Path) -> None:
    config = open_config
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    auth = config.parent / "auth"
    _laid_out(config, extra=(
        '[relay]\n'                                   # 8
        'smarthost = "smtp.example.net:587"\n'        # 9
        '# the password\n'                            # 10
        'smarthost_auth_file = "auth"\n'))            # 11
    for content, why in ((b"just-a-name\n",
                          f'{auth}: expected one line "username:password"'),
                         (b"user:\xffpass\n", f"{auth} is not UTF-8 text")):
        auth.write_bytes(content)
        auth.chmod(0o600)
        code, _, err = run(config, "check")
        assert code == 2 and err.splitlines() == [
            f"{config}: [relay] smarthost_auth_file: {why} (at line 11)"], err
    auth.write_bytes(b"user@example.net:s3cret\n")
    auth.chmod(0o644)
    code, _, err = run(config, "check")
    assert code == 0 and err.splitlines() == [
        f"warning: {config}: [relay] smarthost_auth_file: {auth} holds a password and every "
        "local user can read it (mode 644): chmod o-rwx (at line 11)"], err


def test_check_of_a_smarthost_auth_file_removed_once_read_is_no_traceback(
        open_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = open_config
    # the file removed between check's read and its look at the mode: a
    # stat of the path then raised FileNotFoundError out of check.  The
    # mode is the one of the file read
    import txmailhub.relay.attempt as attempt

    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    auth = config.parent / "auth"
    config.write_text(config.read_text()
                      + '[relay]\nsmarthost = "smtp.example.net:587"\n'
                        'smarthost_auth_file = "auth"\n')
    auth.write_bytes(b"user@example.net:s3cret\n")
    auth.chmod(0o644)
    read = attempt.read_regular

    def read_then_removed(path: str, **kw):
        got = read(path, **kw)
        if os.path.basename(path) == "auth":
            os.unlink(path)
        return got

    monkeypatch.setattr(attempt, "read_regular", read_then_removed)
    code, _, err = run(config, "check")
    assert not auth.exists()
    assert code == 0 and err.splitlines() == [
        f"warning: {config}: [relay] smarthost_auth_file: {auth} holds a password and every "
        "local user can read it (mode 644): chmod o-rwx (at line 11)"], err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("key", "raised"), [("Ctrl-D", EOFError), ("Ctrl-C", KeyboardInterrupt)])
def test_a_password_prompt_left_with_ctrl_d_or_ctrl_c_is_no_traceback(
        config: Path, monkeypatch, key: str, raised: type[BaseException]) -> None:
    # deployment.rst: without --password-stdin, user add asks on the
    # terminal; the admin who gives up there gets a line, not a traceback
    import getpass

    def prompt(text: str = "") -> str:
        raise raised

    monkeypatch.setattr(getpass, "getpass", prompt)
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), "user", "add", "zed"], out=out, err=err,
                stdin=_Terminal())
    if raised is EOFError:
        # on a line of its own: Ctrl-D leaves the cursor after "Password: "
        # (the line read "Password: mailhub: no password given")
        assert (code, err.getvalue()) == (2, "\nmailhub: no password given\n")
    else:  # the shell's code for an interrupted command
        assert (code, err.getvalue()) == (130, "\n")
    assert not (config.parent / "users").exists()


def test_the_password_prompt_asks_twice_and_refuses_two_different_answers(
        config: Path, monkeypatch) -> None:
    import getpass

    answers = iter(["first try here", "second try here", "same-answer-twice",
                    "same-answer-twice"])
    monkeypatch.setattr(getpass, "getpass", lambda text="": next(answers))

    def add(name: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--config", str(config), "user", "add", name, "--allow-apop"], out=out,
                    err=err, stdin=_Terminal())
        return code, err.getvalue()

    assert add("zed") == (2, "mailhub: the passwords differ\n")
    assert not (config.parent / "users").exists()
    assert add("amy") == (0, "")
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.apop_secret(Address("amy", "example.org")) == "same-answer-twice"


def test_a_password_from_stdin_keeps_its_spaces(config: Path) -> None:
    # only the line end goes: " quiet harbour " is the password the user will type
    assert run(config, "user", "add", "amy", "--password-stdin", "--allow-apop",
               stdin=" quiet harbour \r\n")[0] == 0
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.apop_secret(Address("amy", "example.org")) == " quiet harbour "


@pytest.mark.parametrize("action", ["add", "passwd"])
def test_a_non_blocking_password_stdin_is_waited_on_not_read_cut(
        config: Path, action: str) -> None:
    # O_NONBLOCK is the pipe's, and a parent process may have set it: the
    # read with the writer not yet done returned what had come ("quiet
    # har", or nothing), and that was the password set.  The writer here
    # waits until the reader has emptied the pipe, as sendmail's test does.
    import threading

    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    if action == "passwd":
        assert run(config, "user", "add", "amy", "--password-stdin",
                   stdin="old harbour\n")[0] == 0
    r, w = os.pipe()
    os.set_blocking(r, False)

    def write() -> None:
        os.write(w, b"quiet har")
        read_empty(r)
        os.write(w, b"bour\n")
        os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        with io.TextIOWrapper(os.fdopen(r, "rb")) as stdin:
            code = main(["--config", str(config), "user", action, "amy", "--password-stdin"],
                        out=out, err=err, stdin=stdin)
    finally:
        writer.join()
    assert (code, err.getvalue()) == (0, "")
    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.check_password(Address("amy", "example.org"), "quiet harbour")


def test_check_takes_a_local_domain_smtp_takes_in_either_spelling(tmp_path: Path) -> None:
    # one rule for [hub] domains and SMTP paths (txmailhub.address.domain_problem):
    # an ASCII label IDNA2008 would not convert ("ab--cd") beside a U-label
    path = tmp_path / "mailhub.toml"
    path.write_text(no_logins(HUB + 'domains = ["ab--cd.xn--bcher-kva.test"]\nstate_dir = "var"\n'))
    assert run(path, "user", "add", "joe@AB--CD.b\u00fccher.test", "--password-stdin",
               stdin=PW) == (0, "added joe@ab--cd.b\u00fccher.test\n", "")
    assert run(path, "check") == (0, f"{path}: ok\n", "")
    path.write_text(no_logins(HUB + 'domains = ["mail.xn--zz.test"]\nstate_dir = "var"\n'))
    code, out, err = run(path, "check")
    assert code == 2 and out == "" and "the label 'xn--zz' is no A-label" in err, err


# what a refusal of a weak password ends with: the way to take it anyway
WAY_OUT = ('refused as [users] password_policy = "enforce" says: choose another, or give '
           "--allow-weak to take it anyway (for tests and automation)")


def enforce(config: Path, extra: str = "") -> None:
    """``[users] password_policy = "enforce"`` (and ``extra`` keys)."""
    config.write_text(config.read_text() + f'[users]\npassword_policy = "enforce"\n{extra}')


def test_by_default_a_weak_password_is_taken_with_a_warning(config: Path) -> None:
    # the seed's POP3 exchange logs in as joe with "joepw", and scripts
    # that add users rely on the command as it always was
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    code, out, err = run(config, "user", "add", "joe", "--password-stdin", stdin="joepw\n")
    assert (code, out) == (0, "added joe@example.org\n")
    assert err.startswith("warning: the password is too short: 5 characters, at least 8") \
        and 'password_policy = "warn"' in err and err.count("\n") == 1, err
    assert UsersDB(str(config.parent / "users"), "example.org").check_password(
        Address("joe", "example.org"), "joepw")
    assert run(config, "user", "passwd", "joe", "--password-stdin", stdin="joe\n")[0] == 0
    # never an empty one, whatever the policy
    assert run(config, "user", "passwd", "joe", "--password-stdin", stdin="\n") == (
        2, "", "mailhub: the password is empty\n")


def test_user_add_refuses_a_weak_password_with_exit_2_and_the_reason(config: Path) -> None:
    enforce(config)
    for password, why in [
        ("alice", "the password is too short: 5 characters, at least 8; it is the user's name"),
        ("alice-2025!", "the password contains the user's name (alice)"),
        ("Password1", "the password is one of the most commonly used passwords"),
        ("example.org", "the password is the domain name"),
        ("", "the password is empty"),
    ]:
        # a weak one names the way out too; an empty one has none
        tail = f"; {WAY_OUT}" if password else ""
        assert run(config, "user", "add", "alice", "--password-stdin",
                   stdin=password + "\n") == (2, "", f"mailhub: {why}{tail}\n"), password
    assert not (config.parent / "users").exists()  # nothing was written
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=PW) == (
        0, "added alice@example.org\n", "")


def test_user_passwd_refuses_a_weak_password_and_keeps_the_old_one(config: Path) -> None:
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    enforce(config)
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    before = (config.parent / "users").read_bytes()
    assert run(config, "user", "passwd", "alice", "--password-stdin", stdin="qwerty123\n") == (
        2, "", f"mailhub: the password is one of the most commonly used passwords; {WAY_OUT}\n")
    assert (config.parent / "users").read_bytes() == before
    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.check_password(Address("alice", "example.org"), PW.strip())


def test_allow_weak_takes_the_password_with_a_warning(config: Path) -> None:
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    assert run(config, "user", "add", "alice", "--password-stdin", "--allow-weak",
               stdin="alice\n") == (
        0, "added alice@example.org\n",
        "warning: the password is too short: 5 characters, at least 8; it is the user's name; "
        "accepted because of --allow-weak\n")
    assert run(config, "user", "passwd", "alice", "--password-stdin", "--allow-weak",
               stdin="12345678\n") == (
        0, "changed the password of alice@example.org\n",
        "warning: the password is one of the most commonly used passwords; accepted because "
        "of --allow-weak\n")
    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.check_password(Address("alice", "example.org"), "12345678")
    # nothing to warn of for a good password; nothing lets an empty one through
    assert run(config, "user", "passwd", "alice", "--password-stdin", "--allow-weak",
               stdin=PW) == (0, "changed the password of alice@example.org\n", "")
    assert run(config, "user", "add", "bob", "--password-stdin", "--allow-weak",
               stdin="\n") == (2, "", "mailhub: the password is empty\n")


def test_min_password_length_comes_from_the_config(config: Path) -> None:
    enforce(config, "min_password_length = 16\n")
    assert run(config, "user", "add", "alice", "--password-stdin", stdin="plum-orbit-lamp\n") == (
        2, "", f"mailhub: the password is too short: 15 characters, at least 16; {WAY_OUT}\n")
    assert run(config, "user", "add", "alice", "--password-stdin",
               stdin="plum-orbit-lamps\n")[0] == 0
    config.write_text(config.read_text().replace("= 16", "= 4"))
    assert run(config, "user", "add", "bob", "--password-stdin", stdin="tqzv\n")[0] == 0
    code, _, err = run(config, "check")  # which says that is below NIST's 8
    assert code == 0 and err == (f"warning: {config}: [users] min_password_length: 4 is below "
                                 "the 8 characters NIST SP 800-63B requires of a password "
                                 "(at line 11)\n")


def test_the_length_a_user_add_counts_is_nfc_code_points(config: Path) -> None:
    import unicodedata

    # "crèmebrûlée": 11 characters, 14 code points when typed decomposed
    decomposed = unicodedata.normalize("NFD", "cr\u00e8mebr\u00fbl\u00e9e")
    enforce(config, "min_password_length = 12\n")
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=decomposed + "\n") == (
        2, "", f"mailhub: the password is too short: 11 characters, at least 12; {WAY_OUT}\n")


def test_a_password_pop3_pass_cannot_carry_is_taken_with_a_warning(config: Path) -> None:
    # RFC 2449 4: a 255-octet command line; AUTH PLAIN still works
    password = "\u6d77\u98a8\u5c71\u96e8" * 21  # 84 characters, 252 octets
    code, out, err = run(config, "user", "add", "alice", "--password-stdin",
                         stdin=password + "\n")
    assert (code, out) == (0, "added alice@example.org\n")
    assert err == ("warning: the password is 252 octets in UTF-8 and POP3 USER/PASS carries "
                   "at most 248: the user must log in with AUTH PLAIN\n")


def test_user_add_stores_the_prepared_password_and_judges_names_as_words(config: Path) -> None:
    # RFC 8265: the hash is of the NFC form with plain spaces, so a client
    # that composes the accents differently still logs in
    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    enforce(config)
    typed = "cre\u0300me\u00a0bru\u0302le\u0301e-42"  # decomposed, a no-break space
    assert run(config, "user", "add", "alice", "--password-stdin", stdin=typed + "\n") == (
        0, "added alice@example.org\n", "")
    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.check_password(Address("alice", "example.org"), "cr\u00e8me br\u00fbl\u00e9e-42")
    # "art" inside other words is no reason to refuse; the name on its own is
    assert run(config, "user", "add", "art", "--password-stdin",
               stdin="party-start-heart-9\n") == (0, "added art@example.org\n", "")
    assert run(config, "user", "passwd", "art", "--password-stdin", stdin="art2024art\n") == (
        2, "", f"mailhub: the password contains the user's name (art); {WAY_OUT}\n")
    # a control character can never be prepared, whatever the policy
    assert run(config, "user", "passwd", "art", "--password-stdin", "--allow-weak",
               stdin="tab\there-vbmk-42\n") == (
        2, "", "mailhub: the password has a control character in it (U+0009)\n")


@pytest.mark.parametrize("action", ["add", "passwd"])
def test_a_password_given_as_an_argument_is_refused_with_the_way_to_give_it(
        config: Path, action: str) -> None:
    # `mailhub user add joe joepw` (the shape htpasswd and many tools take)
    # was an "unrecognized arguments" usage error that did not say where the
    # password goes; it still is not taken (ps and shell history show it)
    if action == "passwd":
        run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    code, out, err = run(config, "user", action, "joe", "mellow-quartz-harbour")
    assert code == 2 and out == ""
    assert f"mailhub user {action}: " in err and "--password-stdin" in err
    assert "prompt" in err and "unrecognized" not in err
    code, out, _ = run(config, "user", "list")
    assert out == ("joe@example.org\n" if action == "passwd" else "")


def test_check_reports_the_relay_time_budget(config: Path) -> None:
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    text = config.read_text()
    config.write_text(text + '[relay]\nhosts_time_budget = "0s"\n')
    code, _, err = run(config, "check")
    assert code == 2 and f"{config}: [relay] hosts_time_budget: must be greater than 0" in err
    config.write_text(text + '[relay]\nhosts_time_budget = "1m"\n')
    code, out, err = run(config, "check")
    assert code == 0 and out == f"{config}: ok\n"
    assert err.startswith(f"warning: {config}: [relay] hosts_time_budget: 60s is under")


@pytest.mark.parametrize("argv", [["check"], ["user", "list"], ["queue", "list"],
                                  ["user", "add", "joe", "--password-stdin"]])
def test_a_closed_standard_output_is_one_line_not_a_traceback(
        config: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # ``mailhub check >&-``: Python's sys.stdout is None; the flush after
    # the command was an AttributeError traceback (after a user was added)
    monkeypatch.setattr(sys, "stdout", None)
    err = io.StringIO()
    assert main(["--config", str(config), *argv], err=err, stdin=io.StringIO(PW)) == 1
    assert err.getvalue() == ("mailhub: standard output is closed: nowhere to write what the "
                              "command says; nothing was done\n")
    assert not (config.parent / "users").exists()  # joe was not added


@pytest.mark.parametrize(("argv", "expected"), [
    (["user", "passwd", "nobody"], (1, "mailhub: no such user: nobody@example.org\n")),
    (["user", "add", "joe"], (1, "mailhub: joe@example.org already exists\n")),
    (["user", "add", "joe@elsewhere.test"],
     (2, "mailhub: joe@elsewhere.test is not in a local domain (example.org, example.net)\n")),
    (["user", "add", "x" * 65], (2, f"mailhub: the local part of {'x' * 65}@example.org "
                                    "is over 64 octets\n")),
])
def test_user_add_and_passwd_refuse_the_address_before_asking_for_a_password(
        config: Path, monkeypatch, argv: list[str], expected: tuple[int, str]) -> None:
    # `user passwd nobody` at a terminal asked for the new password twice
    # and only then said there is no such user (the same for a user that
    # exists already, or an address in another domain): the refusal comes
    # first now, and nobody types a password for nothing
    import getpass

    run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    prompts: list[str] = []

    def prompt(text: str = "") -> str:
        prompts.append(text)
        return PW.strip()

    monkeypatch.setattr(getpass, "getpass", prompt)
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *argv], out=out, err=err, stdin=_Terminal())
    assert (code, err.getvalue()) == expected
    assert prompts == [] and out.getvalue() == ""
    # with --password-stdin the same refusal, and the line is not read
    stdin = io.StringIO(PW)
    code = main(["--config", str(config), *argv, "--password-stdin"], out=out, err=err,
                stdin=stdin)
    assert code == expected[0] and stdin.tell() == 0
    # and with no terminal and no --password-stdin (cron, a pipe): the
    # same code and line, not "no terminal to ask for the password" (2),
    # which would send the admin after a password nobody needs to give
    err = io.StringIO()
    code = main(["--config", str(config), *argv], out=out, err=err, stdin=io.StringIO(PW))
    assert (code, err.getvalue()) == expected


def test_user_passwd_still_works_once_the_address_is_checked(config: Path) -> None:
    run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    assert run(config, "user", "passwd", "joe", "--password-stdin",
               stdin="another-long-phrase-7\n") == (
        0, "changed the password of joe@example.org\n", "")


def test_usage_errors_and_help_go_to_the_streams_main_was_given(config: Path, capsys) -> None:
    # a program calling main(out=..., err=...): argparse's usage line and
    # --help went to the process's own stderr and stdout, not to its streams
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), "frobnicate"], out=out, err=err)
    assert info.value.code == 2
    assert err.getvalue().startswith("usage: mailhub ") and "frobnicate" in err.getvalue()
    with pytest.raises(SystemExit) as info:
        main(["user", "add", "--help"], out=out, err=err)
    assert info.value.code == 0 and "--password-stdin" in out.getvalue()
    assert capsys.readouterr() == ("", "")


# --- mailhub alias ------------------------------------------------------------


def with_aliases(config: Path, text: str = "") -> Path:
    """``config`` with an aliases file holding ``text``, and alice and bob users."""
    aliases = config.parent / "aliases"
    aliases.write_text(text)
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for name in ("alice", "bob"):
        run(config, "user", "add", name, "--password-stdin", stdin=PW)
    return aliases


def test_alias_list_gives_each_alias_and_its_targets_sorted(config: Path) -> None:
    with_aliases(config, "# ours\nStaff: Alice, \\bob,\n   Far@Remote.Test\n"
                         "postmaster: alice\nsales@example.net: staff\nbad line\n")
    # as the hub knows them: keys for local names, a remote one as written
    assert run(config, "alias", "list") == (0, (
        "postmaster@example.org\talice@example.org\n"
        "sales@example.net\tstaff@example.org\n"
        "staff@example.org\talice@example.org, \\bob@example.org, Far@remote.test\n"), "")


def test_alias_list_names_a_local_target_by_its_key_whatever_its_domain_spelling(
        config: Path) -> None:
    # a local domain written as its A-labels is still local: the target is
    # shown as the hub names that mailbox; a remote one stays as written
    config.write_text(config.read_text().replace('"example.net"', '"b\u00fccher.example"'))
    with_aliases(config, "team: J\u00f6rg@xn--bcher-kva.example, x@xn--bcher-kva.test\n")
    assert run(config, "alias", "list") == (
        0, "team@example.org\tj\u00f6rg@b\u00fccher.example, x@xn--bcher-kva.test\n", "")


def test_alias_list_escapes_what_would_reorder_or_control_the_terminal(config: Path) -> None:
    # a bidi override is valid in an SMTPUTF8 local part, and would turn
    # the rest of the line around on screen: shown as ``queue list`` shows it
    with_aliases(config, "team: x\u202ey@remote.test\n")
    assert run(config, "alias", "list") == (
        0, "team@example.org\tx\\x{202E}y@remote.test\n", "")


def test_alias_show_gives_a_dash_for_no_mailbox_or_no_forward(config: Path) -> None:
    with_aliases(config, "local: alice\nfar: x@remote.test\n")
    assert run(config, "alias", "show", "local")[1].splitlines()[2:] == [
        "mailboxes: alice@example.org", "forwards: -"]
    assert run(config, "alias", "show", "far")[1].splitlines()[2:] == [
        "mailboxes: -", "forwards: x@remote.test"]


def test_alias_add_without_a_users_file_warns_of_no_target(config: Path) -> None:
    # who is a user cannot be told: as check, no "no local user" per target
    (config.parent / "aliases").write_text("")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    assert run(config, "alias", "add", "team", "alice", "bob") == (
        0, "added team@example.org\n", "")


def test_alias_add_takes_a_utf8_target_typed_under_the_c_locale(config: Path) -> None:
    # Python keeps the octets of "jos\u00e9" as surrogates under LC_ALL=C;
    # the name already was taken as UTF-8, the targets too
    aliases = with_aliases(config)
    assert run(config, "alias", "add", "team", "jos\udcc3\udca9@remote.test")[:2] == (
        0, "added team@example.org\n")
    assert aliases.read_text() == "team: jos\u00e9@remote.test\n"


def test_alias_show_gives_what_delivery_does(config: Path) -> None:
    with_aliases(config, "team: alice, helpers, x@remote.test, ghost\n"
                         "helpers: \\bob, team, alice\n")
    assert run(config, "alias", "show", "Team") == (0, (
        "alias: team@example.org\n"
        "targets: alice@example.org, helpers@example.org, x@remote.test, ghost@example.org\n"
        "mailboxes: alice@example.org, bob@example.org\n"
        "forwards: x@remote.test\n"
        "skipped: ghost@example.org (named by team@example.org: no user or alias)\n"), "")
    (config.parent / "aliases").write_text("void: ghost\n")
    assert run(config, "alias", "show", "void") == (0, (
        "alias: void@example.org\ntargets: ghost@example.org\n"
        "refused: 550 5.1.1 No such user here (what RCPT TO gets)\n"
        "skipped: ghost@example.org (named by void@example.org: no user or alias)\n"), "")
    assert run(config, "alias", "show", "alice") == (
        1, "", "mailhub: no such alias: alice@example.org\n")
    # "self: self" and "\void" name mailboxes: no user, though an alias is there
    (config.parent / "aliases").write_text("self: self\ncopy: \\void, alice\nvoid: alice\n")
    assert run(config, "alias", "show", "self")[1].splitlines()[-1] == (
        "skipped: self@example.org (named by self@example.org: no user of that name "
        "(a mailbox target: not expanded as the alias))")
    assert run(config, "alias", "show", "copy")[1].splitlines()[-1] == (
        "skipped: void@example.org (named by copy@example.org: no user of that name "
        "(a mailbox target: not expanded as the alias))")


def test_alias_show_says_why_when_the_users_file_is_away_or_unreadable(config: Path) -> None:
    (config.parent / "aliases").write_text("team: alice, x@remote.test\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    users = config.parent / "users"
    refused = ("alias: team@example.org\ntargets: alice@example.org, x@remote.test\n"
               "refused: 451 4.3.0 Local error in processing, try again later (what RCPT TO "
               "gets)\n")
    assert run(config, "alias", "show", "team") == (0, refused, (
        f"warning: the users file {users} does not exist (mailhub user add makes it): the "
        "hub cannot tell who is a user, so mail to a local address is refused with 451 (try "
        "again later) until it is there\n"))
    users.mkdir()  # a folder in its place: there, but not readable as a file
    assert run(config, "alias", "show", "team") == (0, refused, (
        f"warning: the users file {users} cannot be read (Is a directory): the hub cannot "
        "tell who is a user, so mail to a local address is refused with 451 (try again "
        "later) until it can\n"))
    users.rmdir()
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    assert run(config, "alias", "show", "team") == (0, (
        "alias: team@example.org\ntargets: alice@example.org, x@remote.test\n"
        "mailboxes: alice@example.org\nforwards: x@remote.test\n"), "")


def test_alias_show_of_the_postmaster_gives_what_rcpt_does_while_the_users_file_is_away(
        config: Path) -> None:
    # RFC 5321 4.5.1: RCPT TO:<postmaster> is never refused.  With the users
    # file away the hub answers it 250 and stores the mail in the primary
    # domain's postmaster Maildir; show said "refused: 451 ... (what RCPT TO
    # gets)", the router's answer without the SMTP policy's rule on top
    (config.parent / "aliases").write_text("postmaster: alice\npostmaster@example.net: bob\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    for name in ("postmaster", "postmaster@example.net"):
        code, out, err = run(config, "alias", "show", name)
        assert code == 0 and "refused:" not in out, out
        assert out.splitlines()[2:] == ["mailboxes: postmaster@example.org", "forwards: -"]
        assert err.startswith("warning: the users file ")
    # any other alias still gets the 451 RCPT gives it
    (config.parent / "aliases").write_text("team: alice\n")
    assert "refused: 451 4.3.0" in run(config, "alias", "show", "team")[1]


def test_an_aliases_lock_this_user_may_not_make_says_who_may_change_the_file(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `sudo -u mailhub mailhub alias add ...` on deployment.rst's set-up
    # (the aliases file in root's /etc/txmailhub) said only
    # "mailhub: /etc/txmailhub/aliases.lock: Permission denied"; os.open
    # stands in for a user who may not write that folder (root may)
    aliases = with_aliases(config, "team: alice\n")
    lock = f"{aliases}.lock"
    real_open = os.open

    def refused(path: object, *args: object, **kwargs: object) -> int:
        if str(path) == lock:
            raise PermissionError(13, "Permission denied", lock)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refused)
    before = aliases.read_text()
    code, out, err = run(config, "alias", "add", "sales", "bob")
    assert (code, out) == (1, "")
    assert err == (f"mailhub: cannot open {lock}, the lock of the aliases file: Permission "
                   f"denied; run the alias commands as a user who may write {config.parent} "
                   "(root, where the file is root's as in docs/deployment.rst)\n")
    assert aliases.read_text() == before


_SHOW_CASES = """\
postmaster: alice
postmaster@example.net: bob, x@remote.test
abuse@example.net: postmaster
team: alice, bob, y@remote.test
fwd: z@remote.test
ghost: nobody
mixed: nobody, alice
list: team, fwd
loop1: loop2
loop2: loop1, alice
self: \\alice
"""


@pytest.mark.parametrize("users", ["there", "away", "unreadable"])
@pytest.mark.parametrize("postmaster",
                         ["alice", "nobody", "x@remote.test", "nobody, w@remote.test"])
def test_alias_show_agrees_with_rcpt_for_every_alias(
        config: Path, users: str, postmaster: str) -> None:
    # `alias show` says what RCPT TO gets: the SMTP policy's answer for the
    # same address, by the hub's own router, for lists, forwards, loops,
    # postmasters in the primary and a secondary domain, whatever the users
    # file's state (each alias, and the address of each alias)
    from types import SimpleNamespace

    from txmailhub.address import parse_address
    from txmailhub.config import load
    from txmailhub.errors import Rejected
    from txmailhub.router import Router
    from txmailhub.smtp.policy import RecipientPolicy
    from txmailhub.smtp.server import Session
    from txmailhub.users import UsersDB

    aliases = with_aliases(config, _SHOW_CASES.replace("postmaster: alice",
                                                       f"postmaster: {postmaster}"))
    users_file = config.parent / "users"
    if users == "away":
        users_file.unlink()
    elif users == "unreadable":
        users_file.unlink()
        users_file.mkdir()  # no file a read can take, as root too
    past = time.time() - 3600  # no file read a moment after its change (451 4.3.0)
    for path in (aliases, users_file):
        if path.exists():
            os.utime(path, (past, past))
    settings = load(str(config))
    hub = settings.hub
    policy = RecipientPolicy(SimpleNamespace(
        router=Router(hub.domains, UsersDB(settings.users.file, hub.primary_domain, hub.domains),
                      settings.aliases.file),
        queue=object(), settings=settings))
    names = [line.split(":")[0] for line in _SHOW_CASES.splitlines()]
    for name in names:
        code, out, _ = run(config, "alias", "show", name)
        assert code == 0, out
        shown_lines = dict(line.split(": ", 1) for line in out.splitlines()[2:]
                           if not line.startswith("skipped:"))
        try:
            got = policy.check_recipient(parse_address(out.splitlines()[0].split(": ", 1)[1]),
                                         Session(client_host="192.0.2.9"))
        except Rejected as e:
            assert shown_lines == {"refused": f"{e.reply.text()} (what RCPT TO gets)"}, (name, out)
            continue
        said = [a for key in ("mailboxes", "forwards")
                for a in shown_lines[key].split(", ") if a != "-"]
        assert sorted(said) == sorted(a.key if a.domain in hub.domains else str(a)
                                      for a in got), (name, out, got)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the alias commands as another user")
def test_an_aliases_lock_of_another_user_is_said_with_its_owner_and_mode(
        open_tmp: Path) -> None:
    # a folder this user may write, but the lock root's first alias command
    # left there (root's, 0600): the line said to run the commands "as a
    # user who may write" the folder, which this user was
    config = open_tmp / "mailhub.toml"
    config.write_text(no_logins(HUB + 'domains = ["example.org"]\nstate_dir = "var"\n'))
    aliases = with_aliases(config, "team: alice\n")
    lock = Path(f"{aliases}.lock")
    assert run(config, "alias", "add", "staff", "alice")[0] == 0  # as root: the lock made
    assert (lock.stat().st_uid, oct(lock.stat().st_mode & 0o777)) == (0, "0o600")
    os.chmod(open_tmp, 0o777)  # nobody may write the folder
    before = aliases.read_text()

    def add_as_nobody() -> str:
        code, out, err = as_user(NOBODY, NOBODY, lambda: run(config, "alias", "add", "sales",
                                                             "bob"))
        assert (code, out) == (1, ""), err
        assert aliases.read_text() == before
        return err

    head = (f"mailhub: cannot open {lock}, the lock of the aliases file: Permission denied; "
            f"{lock} is there already, ")
    assert add_as_nobody() == (
        f"{head}root:root mode 0600, which this user (nobody) may not open for writing: run "
        "the alias commands as root\n")
    # the file nobody's, the lock left root's: the chown the commands do
    os.chown(aliases, NOBODY, NOBODY)
    before = aliases.read_text()
    assert add_as_nobody() == (
        f"{head}root:root mode 0600, which this user (nobody) may not open for writing: run "
        "the alias commands as root, or, as root, give it to the aliases file's owner, as "
        f"the commands do: chown -h nobody {lock}\n")
    # nobody's own lock without its write: the chmod
    os.chown(lock, NOBODY, NOBODY)
    os.chmod(lock, 0o400)
    assert add_as_nobody() == (
        f"{head}nobody:nogroup mode 0400, which this user (nobody) may not open for writing: "
        f"give it its owner's write again: chmod 600 {lock}\n")
    os.chmod(lock, 0o600)
    assert as_user(NOBODY, NOBODY, lambda: run(config, "alias", "add", "sales", "bob"))[0] == 0


def test_alias_targets_are_split_as_the_file_splits_them(config: Path) -> None:
    # at the commas outside quotes: one remote address with a comma in
    # its quoted local part, which was cut in two and refused
    aliases = with_aliases(config, "")
    assert run(config, "alias", "add", "staff", '"x,y"@remote.test,bob', "alice") == (
        0, "added staff@example.org\n", "")
    assert aliases.read_text() == 'staff: "x,y"@remote.test, bob, alice\n'


def test_alias_add_set_and_remove(config: Path) -> None:
    aliases = with_aliases(config, "# kept\npostmaster: alice\n")
    assert run(config, "alias", "add", "staff", "alice", "bob,x@remote.test") == (
        0, "added staff@example.org\n", "")
    code, _, err = run(config, "alias", "add", "Staff", "bob")
    assert (code, err) == (1, f"mailhub: {aliases}:3: the alias staff@example.org is already "
                              "there: `mailhub alias set` replaces its targets\n")
    assert run(config, "alias", "set", "staff", "bob") == (0, "changed staff@example.org\n", "")
    assert run(config, "alias", "set", "team", "staff") == (0, "added team@example.org\n", "")
    assert aliases.read_text() == "# kept\npostmaster: alice\nstaff: bob\nteam: staff\n"
    code, out, err = run(config, "alias", "remove", "staff")
    assert (code, out) == (0, "removed staff@example.org\n")
    assert err == (f"warning: {aliases}:3: alias team@example.org names staff@example.org, "
                   "which is no local user: the hub skips it\n")
    assert run(config, "alias", "remove", "staff") == (
        1, "", "mailhub: no such alias: staff@example.org\n")
    assert aliases.read_text() == "# kept\npostmaster: alice\nteam: staff\n"


def test_alias_set_says_which_other_lines_of_the_name_it_removed(config: Path) -> None:
    # set leaves the alias one line, the first; each other line of it is
    # removed, and said, at its number in the file as it was
    aliases = with_aliases(config, '"a;": alice\nstaff: bob\n"a;": bob\n"a;": x@remote.test\n')
    assert run(config, "alias", "set", "a;", "bob") == (
        0, f'changed "a;"@example.org\nremoved {aliases}:3: another line of "a;"@example.org\n'
        f'removed {aliases}:4: another line of "a;"@example.org\n', "")
    assert aliases.read_text() == '"a;": bob\nstaff: bob\n'
    assert run(config, "check")[::2] == (0, "")


def test_alias_add_writes_a_quoted_name_smtp_takes_unquoted_unquoted(config: Path) -> None:
    # '"zz"' is zz to SMTP (RFC 5321 4.1.2), and to the file's reader: add
    # refused it ("write it without the quotes"); it writes what RCPT gives
    aliases = with_aliases(config, "")
    assert run(config, "alias", "add", '"zz"', '"alice"') == (0, "added zz@example.org\n", "")
    assert run(config, "alias", "add", '"yy"@example.org', "alice")[::2] == (0, "")
    assert aliases.read_text() == "zz: alice\nyy@example.org: alice\n"


def test_alias_add_refuses_quotes_that_are_no_one_quoted_string(config: Path) -> None:
    # '"a""b"': no RCPT TO names it (a syntax error), and add wrote it with
    # a warning only; the alias never got any mail
    aliases = with_aliases(config, "")
    for args in (['"a""b"', "alice"], ["zz", '"a""b"']):
        code, out, err = run(config, "alias", "add", *args)
        assert (code, out) == (2, ""), args
        assert "its quotes are no one quoted string" in err and len(err.splitlines()) == 1, err
    assert aliases.read_text() == ""


def test_alias_add_keeps_a_copy_in_a_quoted_mailbox_on_a_line_the_hub_reads(
        config: Path) -> None:
    # '\\a;' (the mailbox "a;", not expanded) is written '\\"a;"': the
    # reader took that backslash for an escape of the quote, and skipped
    # the line add had just written as a quote left open
    from txmailhub.router import Router
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    aliases = with_aliases(config)
    assert run(config, "user", "add", "a;", "--password-stdin", stdin=PW)[0] == 0
    assert run(config, "alias", "add", "a;", "\\a;", "bob")[:2] == (
        0, 'added "a;"@example.org\n')
    assert aliases.read_text() == '"a;": \\"a;", bob\n'
    users = UsersDB(str(config.parent / "users"), "example.org", ["example.org", "example.net"])
    router = Router(["example.org", "example.net"], users, str(aliases))
    assert router.resolve(parse_mailbox('"a;"', "example.org"))[0] == (
        parse_mailbox('"a;"', "example.org"), parse_mailbox("bob", "example.org"))
    code, out, err = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n") and "skipped" not in err, err


def test_alias_add_takes_a_name_smtp_can_give_only_quoted_in_its_quoted_form(
        config: Path) -> None:
    # as `user add` does: "a;" and "a..b" are no dot-strings, RCPT TO:<a;@...>
    # is a syntax error and RCPT TO:<"a;"@...> is looked up with its quotes.
    # `alias add a; ...` wrote an alias a; that no RCPT could reach, and a
    # target a; missed the user `user add a;` made ("a;")
    from txmailhub.router import Router
    from txmailhub.smtp._parse import parse_mailbox
    from txmailhub.users import UsersDB

    aliases = with_aliases(config)
    assert run(config, "user", "add", "a;", "--password-stdin", stdin=PW)[1] == (
        'added "a;"@example.org\n')
    assert run(config, "alias", "add", "a..b", "alice") == (
        0, 'added "a..b"@example.org\n', "")
    assert run(config, "alias", "add", "team", "a;", "\\x;y@remote.test", "bob")[::2] == (0, "")
    assert aliases.read_text() == '"a..b": alice\nteam: "a;", \\x;y@remote.test, bob\n'
    users = UsersDB(str(config.parent / "users"), "example.org", ["example.org", "example.net"])
    router = Router(["example.org", "example.net"], users, str(aliases))
    assert router.resolve(parse_mailbox('"a..b"', "example.org")) == (
        (parse_mailbox("alice", "example.org"),), ())
    assert router.resolve(parse_mailbox("team", "example.org"))[0] == (
        parse_mailbox('"a;"', "example.org"), parse_mailbox("bob", "example.org"))
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    # the name as typed finds it again
    assert run(config, "alias", "show", "a..b")[1].startswith('alias: "a..b"@example.org\n')
    assert run(config, "alias", "remove", "a..b")[:2] == (0, 'removed "a..b"@example.org\n')
    # written unquoted by hand (or by an older `alias add`): read as RCPT
    # gives it, the alias "x;y", which mail reaches; so is a local target
    # a; (the user "a;"), while a remote one is its domain's to read
    aliases.write_text(aliases.read_text() + "x;y: alice, a;\n")
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    router = Router(["example.org", "example.net"], users, str(aliases))
    assert router.resolve(parse_mailbox('"x;y"', "example.org"))[0] == (
        parse_mailbox("alice", "example.org"), parse_mailbox('"a;"', "example.org"))
    # the same alias as `alias add x;y` means: there already
    code, out, err = run(config, "alias", "add", "x;y", "bob")
    assert (code, out) == (1, "") and "already there" in err, err
    assert run(config, "alias", "set", "x;y", "bob")[::2] == (0, "")
    assert aliases.read_text() == 'team: "a;", \\x;y@remote.test, bob\nx;y: bob\n'


def test_alias_add_writes_a_target_in_brackets_as_typed(config: Path) -> None:
    # the file reads <joe> as joe; quoting what is no dot-string made it
    # "<joe>", a mailbox no user has, and joe's copy was skipped.  The
    # address within the brackets is what is judged, and \\ kept as typed
    aliases = with_aliases(config)
    run(config, "user", "add", "joe", "--password-stdin", stdin=PW)
    run(config, "user", "add", "a;", "--password-stdin", stdin=PW)
    assert run(config, "alias", "add", "list", "<joe>", "<joe@example.org>", "\\<joe>",
               "\\\\joe", "<a;>") == (0, "added list@example.org\n", "")
    assert aliases.read_text() == (
        'list: <joe>, <joe@example.org>, \\<joe>, \\\\joe, <"a;">\n')
    assert run(config, "check") == (0, f"{config}: ok\n", "")


def test_alias_add_refuses_a_name_no_rcpt_can_carry(config: Path) -> None:
    # a name of 300 letters was added, but RCPT takes a path of at most
    # 256 octets (RFC 5321 4.5.3.1.3): every message to it got 501
    aliases = with_aliases(config, "")
    long_name = "l" * (256 - len("@example.org") + 1)
    code, out, err = run(config, "alias", "add", long_name, "alice")
    assert (code, out) == (2, "")
    assert "256" in err and len(err.splitlines()) == 1, err
    assert aliases.read_text() == ""
    fits = long_name[:-1]  # the longest path RCPT takes
    assert run(config, "alias", "add", fits, "alice")[:2] == (0, f"added {fits}@example.org\n")


def test_alias_add_warns_as_check_does_and_refuses_what_check_reports(config: Path) -> None:
    aliases = with_aliases(config, "a: alice\n")
    code, out, err = run(config, "alias", "add", "b", "nobody")
    assert (code, out) == (0, "added b@example.org\n")
    assert err == (f"warning: {aliases}:2: alias b@example.org names nobody@example.org, which "
                   "is no local user: the hub skips it\n")
    # a problem for check: exit 2, in check's words, nothing written
    code, out, err = run(config, "alias", "add", "c", "|/bin/sh")
    assert (code, out) == (2, "")
    # the line to be added is named as such: the file has no line 3 yet
    assert err == (f"mailhub: {aliases} (new line): target '|/bin/sh' of 'c': delivery to "
                   f"programs is not supported\nmailhub: {aliases} (new line): alias 'c' has "
                   "no usable target\n")
    code, _, err = run(config, "alias", "add", "d@elsewhere.test", "alice")
    assert code == 2 and "which is not a local domain" in err
    # a loop, or an alias that takes a user's mail: exit 1
    assert run(config, "alias", "set", "a", "b", "alice")[0] == 0
    code, _, err = run(config, "alias", "set", "b", "a")
    assert code == 1 and err == (
        f"mailhub: {aliases}:1: alias loop: a@example.org -> b@example.org -> a@example.org (it "
        "is cut at runtime; the other alias is on line 2)\nmailhub: not changed: `mailhub "
        "check` reports an alias loop as a problem (exit 2), and a start that runs it first "
        "would stop\n")
    code, _, err = run(config, "alias", "add", "bob", "alice")
    assert code == 1 and "has the name of a user" in err, err
    assert aliases.read_text() == "a: b, alice\nb: nobody\n"
    code, out, _ = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_alias_add_as_root_does_not_follow_a_link_the_hubs_user_may_change(
        config: Path) -> None:
    # the aliases file kept in the hub's folder, where its user swapped in
    # a link to a file of root's
    victim = config.parent / "root-only"
    victim.write_text("# root's\n")
    hubs = config.parent / "users.d"
    hubs.mkdir()
    os.chown(hubs, 65534, 65534)
    (hubs / "aliases").symlink_to(victim)
    config.write_text(config.read_text() + '[aliases]\nfile = "users.d/aliases"\n')
    code, out, err = run(config, "alias", "add", "team", "x@remote.test")
    assert (code, out) == (1, "")
    assert err.startswith(f"mailhub: {hubs / 'aliases'} is a symbolic link in {hubs}, "), err
    assert victim.read_text() == "# root's\n"


def test_alias_commands_without_an_aliases_file_name_the_key(config: Path) -> None:
    for argv in (["list"], ["show", "a"], ["add", "a", "b"], ["set", "a", "b"],
                 ["remove", "a"]):
        code, out, err = run(config, "alias", *argv)
        assert (code, out) == (1, ""), argv
        assert err == (f"mailhub: {config}: no aliases file: set [aliases] file (an empty "
                       "file will do) to have aliases\n")
    assert not (config.parent / "aliases").exists()


def test_alias_usage_errors_exit_2(config: Path) -> None:
    for argv in (["alias"], ["alias", "add", "a"], ["alias", "show"], ["alias", "frob"]):
        with pytest.raises(SystemExit) as info:
            main(["--config", str(config), *argv], out=io.StringIO(), err=io.StringIO())
        assert info.value.code == 2
    with_aliases(config)
    assert run(config, "alias", "show", "a b")[0] == 2


def test_a_name_whose_octets_are_not_utf8_is_a_usage_error(config: Path) -> None:
    # "x\xff" typed on a Latin-1 terminal: Python hands it over with a
    # surrogate, which the address checks took, and writing the file with
    # it ended in a traceback (UnicodeEncodeError)
    aliases = config.parent / "aliases"
    aliases.write_text("a: bob\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    why = ("mailhub: argument x\\xff: not UTF-8 text (names and addresses are UTF-8, "
           "whatever the locale)\n")
    assert run(config, "alias", "add", "x\udcff", "bob") == (2, "", why)
    assert run(config, "alias", "add", "b", "x\udcff") == (2, "", why)
    assert run(config, "alias", "remove", "x\udcff") == (2, "", why)
    assert aliases.read_text() == "a: bob\n"
    assert run(config, "user", "add", "x\udcff", "--password-stdin", stdin=PW) == (2, "", why)
    assert run(config, "user", "list") == (0, "", "")


def _subcommands(parser, path=()):
    """``(words, parser, its line in the parent's list)`` for every
    subcommand of ``parser``, however deep."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, lines.get(name)
                yield from _subcommands(sub, (*path, name))


def test_every_subcommand_says_what_it_does_in_its_help() -> None:
    # `mailhub check --help` was a bare usage line; `user del --help` named
    # an argument without saying what it takes
    from txmailhub.cli import _parser

    found = list(_subcommands(_parser()))
    assert {" ".join(words) for words, _, _ in found} >= {
        "check", "user add", "user del", "user passwd", "user list", "alias list",
        "alias show", "alias add", "alias set", "alias remove", "queue list", "queue show",
        "queue delete", "queue hold", "queue release", "queue flush", "sendmail"}
    for words, sub, line in found:
        assert line, words  # in the parent's list of commands
        if words == ("sendmail",):
            continue  # its own options (sendmail(8)'s), see docs/sendmail.rst
        assert sub.description and sub.description.endswith("."), words
        for action in sub._actions:
            if not action.option_strings and action.help != "==SUPPRESS==" and \
                    not action.__class__.__name__.startswith("_SubParsers"):
                assert action.help, (words, action.dest)  # every argument says what it takes


def _help(*words: str) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit):
        main([*words, "--help"], out=out, err=io.StringIO())
    return " ".join(out.getvalue().split())


def test_the_help_names_the_config_file_path_as_the_docs_do() -> None:
    # README.rst and docs/*.rst write ``--config PATH``; --help said
    # ``--config CONFIG``, argparse's name made of the option's
    text = _help()
    assert "--config PATH, -c PATH" in text and "[--config PATH]" in text, text
    assert "CONFIG" not in text.replace("$MAILHUB_CONFIG", ""), text
    # twistd's options have no metavar: its synopsis line names it
    from txmailhub.tap import Options

    assert str(Options()).startswith("[--config PATH]\n"), str(Options())


def test_the_help_of_user_add_and_passwd_says_the_password_is_asked_on_the_terminal() -> None:
    for command in ("add", "passwd"):
        text = _help("user", command)
        assert "asked for twice on the terminal, unless --password-stdin" in text, text
    assert "never taken as an argument" in _help("user", "add")


def test_the_help_of_queue_show_says_the_message_id_of_the_250_reply_is_taken() -> None:
    # (as test_relay_admin's test_the_smtp_message_id_finds_its_queue_entries shows)
    text = _help("queue", "show")
    assert "the message id of the hub's 250 reply to DATA" in text, text
    assert "Validate the configuration" in _help("check")


@pytest.mark.parametrize("args, names", [
    ((), "check, user, alias, queue, sendmail"),
    (("user",), "add, del, passwd, list"),
    (("alias",), "list, show, add, set, remove"),
    (("queue",), "list, show, delete, hold, release, flush"),
])
def test_a_missing_command_names_the_ones_there_are(
        config: Path, args: tuple[str, ...], names: str) -> None:
    # ``mailhub queue`` alone said "the following arguments are required:
    # ACTION" and no more: the usage line above it names no action either,
    # so a new user had to go to --help to learn what to type
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), *args], out=out, err=err)
    assert info.value.code == 2 and out.getvalue() == ""
    last = err.getvalue().splitlines()[-1]
    assert last.endswith(f"(one of: {names})"), err.getvalue()


def test_user_add_with_stdin_closed_and_no_terminal_says_so(config: Path) -> None:
    # ``mailhub user add joe <&-`` from cron or a service: no controlling
    # terminal (a session of its own) and no standard input
    proc = subprocess.run(
        [sys.executable, "-m", "txmailhub", "--config", str(config), "user", "add", "joe"],
        preexec_fn=lambda: os.close(0), start_new_session=True, capture_output=True,
        text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        2, "mailhub: no terminal to ask for the password: use --password-stdin\n")
    assert not (config.parent / "users").exists()


def _talk(master: int, answers: list[tuple[str, str]]) -> str:
    """Read what the child writes on the terminal ``master``, answering
    each ``(prompt, answer)`` in turn as its prompt comes, until the child
    closes the terminal."""
    import select

    seen = b""
    looked = 0  # where the next prompt is looked for
    left = list(answers)
    for _ in range(1000):  # a bound on the reads, not on time
        ready, _w, _x = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 1024)
        except OSError:  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        while left and left[0][0].encode() in seen[looked:]:
            prompt, answer = left.pop(0)
            looked = seen.index(prompt.encode(), looked) + len(prompt)
            os.write(master, answer.encode())
    return seen.decode("utf-8", "replace")


def test_user_add_with_stdin_closed_asks_on_the_controlling_terminal(config: Path) -> None:
    # ``mailhub user add joe <&-`` typed at a terminal: getpass asks on
    # /dev/tty, but the command said "no terminal to ask for the password"
    import pty

    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        try:
            os.close(0)  # <&-: the terminal is the controlling one only
            os.execv(sys.executable, [sys.executable, "-m", "txmailhub", "--config",
                                      str(config), "user", "add", "joe"])
        finally:
            os._exit(127)
    try:
        said = _talk(master, [("Password: ", PW), ("Again: ", PW)])
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, said
    assert "Password: " in said and "Again: " in said, said
    assert "no terminal" not in said
    assert "added joe@example.org" in said
    assert "\njoe@example.org scrypt$" in (config.parent / "users").read_text()


def test_names_a_command_refuses_are_escaped_as_the_users_file_lines_are(
        config: Path) -> None:
    # one form of escape for what a person reads: the users file's lines
    # said jo\x{1B}e, the refusal of a name Python's repr 'x\x1bz'
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    (config.parent / "aliases").write_text("")
    code, _out, err = run(config, "alias", "add", "x\x1bz", "joe")
    assert code == 2
    assert "address 'x\\x{1B}z' contains whitespace or control characters" in err, err
    assert "\x1b" not in err and "\\x1b" not in err
    # and a config problem, as check and every command print it
    config.write_text(HUB + 'domains = ["example.org", "b\\u001bd.org"]\n')
    for args in (("check",), ("user", "list")):
        code, _out, err = run(config, *args)
        assert code == 2
        assert "[hub] domains: 'b\\x{1B}d.org' is not a domain name" in err, (args, err)
        assert "\x1b" not in err and "\\x1b" not in err


def test_user_add_at_a_terminal_with_a_pipe_on_stdin_asks_there_and_leaves_the_pipe(
        config: Path) -> None:
    # ``echo secret | mailhub user add joe`` typed at a terminal, without
    # --password-stdin: the password is the one typed at the terminal,
    # never the pipe's line taken silently
    import pty

    from txmailhub.users import verify_password

    typed, piped = "typed-quartz-harbour-9", "piped-mellow-lantern-4"
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        try:
            read, write = os.pipe()
            os.write(write, f"{piped}\n".encode())
            os.close(write)
            os.dup2(read, 0)
            os.execv(sys.executable, [sys.executable, "-m", "txmailhub", "--config",
                                      str(config), "user", "add", "joe"])
        finally:
            os._exit(127)
    try:
        said = _talk(master, [("Password: ", typed + "\n"), ("Again: ", typed + "\n")])
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, said
    line = (config.parent / "users").read_text().split("\njoe@example.org ")[1]
    encoded = line.split()[0]
    assert verify_password(typed, encoded) and not verify_password(piped, encoded)


def test_alias_show_gives_the_452_rcpt_gives_an_alias_whose_mailboxes_are_full(
        config: Path) -> None:
    # [hub] mailbox_quota: RCPT TO an alias whose every mailbox is at its
    # quota is 452 4.2.2; `alias show` said its mail went to that mailbox
    config.write_text(config.read_text().replace("[hub]\n", "[hub]\nmailbox_quota = 1000\n"))
    with_aliases(config, "full: alice\nmixed: alice, bob\nfar: alice, x@remote.test\n")
    new = config.parent / "var" / "mail" / "example.org" / "alice" / "new"
    new.mkdir(parents=True)
    (new / "1.M1P1.host,S=1500,W=1530").write_bytes(b"x")  # sized by its name: over 1000
    assert run(config, "alias", "show", "full") == (0, (
        "alias: full@example.org\ntargets: alice@example.org\n"
        "refused: 452 4.2.2 Mailbox full, try again later (what RCPT TO gets)\n"), "")
    # a member with room, or a remote one, takes the alias's mail for all
    # (the quota is soft at RCPT): as before
    assert run(config, "alias", "show", "mixed")[1].splitlines()[2:] == [
        "mailboxes: alice@example.org, bob@example.org", "forwards: -"]
    assert run(config, "alias", "show", "far")[1].splitlines()[2:] == [
        "mailboxes: alice@example.org", "forwards: x@remote.test"]
    # no quota: nothing is refused
    config.write_text(config.read_text().replace("mailbox_quota = 1000\n", ""))
    assert run(config, "alias", "show", "full")[1].splitlines()[2:] == [
        "mailboxes: alice@example.org", "forwards: -"]


def test_alias_show_says_a_mailbox_the_quota_check_cannot_measure(config: Path) -> None:
    # a Maildir the command cannot measure (run as a user who may not read
    # it; here a file where the folder would be): RCPT takes its mail, as
    # show says, but nothing told that the quota was not looked at
    config.write_text(config.read_text().replace("[hub]\n", "[hub]\nmailbox_quota = 1000\n"))
    with_aliases(config, "full: alice\n")
    domain = config.parent / "var" / "mail" / "example.org"
    domain.mkdir(parents=True)
    (domain / "alice").write_bytes(b"not a Maildir")
    code, out, err = run(config, "alias", "show", "full")
    assert (code, out.splitlines()[2:]) == (0, ["mailboxes: alice@example.org", "forwards: -"])
    assert err.startswith("warning: cannot measure the mailbox of alice@example.org for "
                          "[hub] mailbox_quota (")
    assert err.endswith("): RCPT takes its mail as if it had room\n")
    assert err.count("\n") == 1


def test_a_name_holding_an_escapes_text_is_shown_escaped_once(config: Path) -> None:
    # the name with the text \x{1B} is not shown as one with an ESC, and
    # the message that names it is not escaped a second time
    run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    # (a backslash makes it no dot-string: the name is "a\\x{1B}b")
    assert run(config, "user", "del", "a\\x{1B}b") == (
        1, "", 'mailhub: no such user: "a\\\\x{5C}x{1B}b"@example.org\n')
    assert run(config, "user", "del", "a\x1bb")[2] == (
        "mailhub: no such user: a\\x{1B}b@example.org\n")


def test_alias_show_says_why_a_mailbox_cannot_be_measured_escaped(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the warning gives the error the measure met (what to mend), and an
    # error that holds controls (a path, a name) does not act on the terminal
    from txmailhub.store.quota import MailboxUsage

    def usage(self, path):
        raise OSError(f"cannot read {path}\x1b[2J\nthe rest")

    monkeypatch.setattr(MailboxUsage, "usage", usage)
    config.write_text(config.read_text().replace("[hub]\n", "[hub]\nmailbox_quota = 1000\n"))
    with_aliases(config, "full: alice\n")
    code, _out, err = run(config, "alias", "show", "full")
    assert code == 0 and err.count("\n") == 1 and "\x1b" not in err
    assert "alice\\x{1B}[2J\\x{A}the rest): RCPT takes its mail" in err


def test_check_takes_a_nameserver_zone_and_names_an_unknown_interface(config: Path) -> None:
    """``[relay] nameservers`` with a link-local server's zone, as
    resolv.conf has it: an interface this host has is fine, one it lacks
    is one line (the start refuses it the same way, test_service.py)."""
    base = config.read_text()
    index, name = socket.if_nameindex()[0]
    config.write_text(base + '[relay]\n'
                      f'nameservers = ["fe80::1%{name}", "[fe80::2%{index}]:5353"]\n')
    code, out, err = run(config, "check")
    assert (code, out) == (0, f"{config}: ok\n") and "nameservers" not in err, err
    config.write_text(base + '[relay]\nnameservers = ["fe80::1%nosuch0"]\n')
    code, out, err = run(config, "check")
    assert (code, out) == (2, "")
    assert err == (f"{config}: [relay] nameservers: 'fe80::1%nosuch0': this host has no "
                   "network interface 'nosuch0' (at line 10)\n"), err


def test_check_says_once_that_alias_warnings_need_the_users_file(config: Path) -> None:
    # a users file check cannot read is a problem, and the alias warnings
    # (no local user, an alias taking a user's mail) were left out without
    # a word: the aliases seemed to have none
    aliases = with_aliases(config, "staff: nobody, ghost\nalice: bob\n")
    users = config.parent / "users"
    users.unlink()
    users.mkdir()
    code, _, err = run(config, "check")
    assert code == 2, err
    said = [line for line in err.splitlines() if "are not checked" in line]
    assert said == [
        f"warning: {aliases}: alias targets that are no user and aliases that take a user's "
        f"mail are not checked: the users file {users} cannot be read"], err


def test_commands_that_use_no_tls_work_with_a_key_this_user_cannot_read(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a key only the hub's group reads, and the admin's `user add` (or
    # alias, or queue list) stopped on it: they use no TLS, and warn now;
    # check, which judges what the hub needs, still calls it a problem
    from conftest import make_certificate
    from test_config import deny_open

    cert, key = make_certificate(config.parent / "tls", "mx.example.net")
    config.write_text(config.read_text() + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    (config.parent / "aliases").write_text("")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    deny_open(monkeypatch, key)
    code, out, err = run(config, "user", "add", "alice", "--password-stdin", stdin=PW)
    assert (code, out) == (0, "added alice@example.org\n"), err
    [warning] = err.splitlines()
    assert warning.startswith(f"warning: {config}: [tls] key: {key} cannot be read by "), err
    assert warning.endswith("; not needed by mailhub user, but the hub and mailhub check "
                            "need it"), err
    assert run(config, "alias", "add", "team", "alice")[:2] == (0, "added team@example.org\n")
    assert run(config, "queue", "list")[0] == 0
    code, _, err = run(config, "check")
    assert code == 2 and f"[tls] key: {key} cannot be read by " in err, err


# -- a name in quotes that are no one quoted string, given to every command


def test_user_passwd_and_del_find_the_user_add_made_of_quotes_no_one_quoted_string(
        config: Path) -> None:
    # `user add '"a""b"'` writes "a\"\"b" (RFC 5321 4.1.2: the one quoted
    # string around all of it, which RCPT can give); `user passwd` and
    # `user del` given the same argument looked up "a""b" and said "no such
    # user", and a login by that name failed
    from txmailhub.users import UsersDB

    added = 'added "a\\"\\"b"@example.org\n'
    assert run(config, "user", "add", '"a""b"', "--password-stdin", stdin=PW) == (0, added, "")
    code, out, err = run(config, "user", "add", '"a""b"', "--password-stdin", stdin=PW)
    assert (code, out) == (1, "") and "already exists" in err, err
    assert run(config, "user", "passwd", '"a""b"@example.org', "--password-stdin",
               stdin="quiet-amber-lantern\n") == (
        0, 'changed the password of "a\\"\\"b"@example.org\n', "")
    users = UsersDB(str(config.parent / "users"), "example.org", ["example.org", "example.net"])
    assert users.check_password(users.qualify('"a""b"'), "quiet-amber-lantern")
    assert run(config, "check") == (0, f"{config}: ok\n", "")
    assert run(config, "user", "del", '"a""b"') == (0, 'deleted "a\\"\\"b"@example.org\n', "")
    assert run(config, "user", "list") == (0, "", "")


def test_a_hand_written_line_in_quotes_no_one_quoted_string_stays_reachable_by_its_name(
        config: Path) -> None:
    # a line '"a""b"@example.org' written by hand (check warns: no mail
    # reaches it) is still found by that name where the file has no user
    # "a\"\"b": `user passwd`, `user del` and a login reach it as before;
    # once `user add` has made "a\"\"b" of that name, the name is that user
    from txmailhub.users import UsersDB

    users_file = config.parent / "users"
    _hand_written_user(config, '"a""b"')
    assert run(config, "user", "passwd", '"a""b"', "--password-stdin",
               stdin="quiet-amber-lantern\n") == (
        0, 'changed the password of "a""b"@example.org\n', "")
    users = UsersDB(str(users_file), "example.org", ["example.org", "example.net"])
    assert users.qualify('"a""b"').key == '"a""b"@example.org'
    assert users.check_password(users.qualify('"a""b"'), "quiet-amber-lantern")
    assert run(config, "user", "add", '"a""b"', "--password-stdin", stdin=PW) == (
        0, 'added "a\\"\\"b"@example.org\n', "")
    assert users.qualify('"a""b"').key == '"a\\"\\"b"@example.org'
    assert users.check_password(users.qualify('"a""b"'), PW.strip())
    assert run(config, "user", "del", '"a""b"') == (0, 'deleted "a\\"\\"b"@example.org\n', "")
    assert run(config, "user", "del", '"a""b"') == (0, 'deleted "a""b"@example.org\n', "")
    assert run(config, "user", "list") == (0, "q@example.org\n", "")


# -- a local part whose Maildir folder's name is over NAME_MAX


def test_user_add_refuses_a_name_whose_maildir_folder_name_is_over_name_max(
        config: Path) -> None:
    # 300 octets: no folder of a file system can have that name (NAME_MAX,
    # 255), so no mail would ever reach the user.  Refused saying why and
    # the limit (the 64-octet limit of a new user's local part, RFC 5321
    # 4.5.3.1.1, refuses shorter ones that still fit a folder)
    code, out, err = run(config, "user", "add", "x" * 300, "--password-stdin", stdin=PW)
    assert (code, out) == (2, "")
    assert err == (f"mailhub: {'x' * 300}@example.org cannot be a user: its Maildir folder's "
                   "name would be 300 octets, over the 255 a file system takes in one name "
                   "(NAME_MAX): it gets no mail and cannot log in to POP3\n")
    assert run(config, "user", "list") == (0, "", "")


def test_check_warns_of_a_users_line_whose_maildir_folder_name_is_over_name_max(
        config: Path) -> None:
    # written by hand: 100 "\u0130" are 200 octets, and 300 as the folder
    # is named (lower case: i and U+0307 each).  check said nothing; RCPT
    # took its mail, which then waited in the queue ("File name too long")
    users = config.parent / "users"
    _hand_written_user(config, "\u0130" * 100)
    with users.open("a") as f:  # 255 octets: a folder can have it
        f.write(users.read_text().splitlines()[-1].replace("\u0130" * 100, "a" * 255) + "\n")
    err = check_warnings(config)
    folder = "i\u0307" * 100
    assert err == (f"warning: {users}:3: user {folder}@example.org: "
                   "its Maildir folder's name would be 300 octets, over the 255 a file system "
                   "takes in one name (NAME_MAX): it gets no mail and cannot log in to POP3\n")


def test_check_warns_of_a_local_domain_whose_folder_name_is_over_name_max(
        config: Path) -> None:
    # three labels of 50 CJK characters: 56 octets each as A-labels (the
    # domain fits DNS's 253), 150 each in UTF-8, and the folder under mail/
    # is named by the U-labels: 460 octets.  RCPT to any user of it is
    # refused with 550 5.3.5; check said nothing of it, and its look for
    # Maildirs under other spellings said only "cannot be read: File name
    # too long"
    label = "\u65e5" * 50
    domain = f"{label}.{label}.{label}.example"
    a_label = "xn--wgv" + "a" * 49
    config.write_text(config.read_text().replace(
        'domains = ["example.org", "example.net"]\n',
        f'domains = [\n  "example.org",\n  "{a_label}.{a_label}.{a_label}.example",\n]\n'))
    assert run(config, "user", "add", "q", "--password-stdin", stdin=PW)[0] == 0
    (config.parent / "var" / "mail" / "example.org").mkdir(parents=True, exist_ok=True)
    err = check_warnings(config)
    assert err == (f"warning: {config}: [hub] domains: '{domain}': its Maildir folder's name "
                   "would be 460 octets, over the 255 a file system takes in one name "
                   "(NAME_MAX): no user at it gets mail (RCPT is refused with 550 5.3.5) or "
                   "can log in to POP3; its aliases reach their targets at other domains "
                   "only (at line 5)\n")
    # 255 octets is a name a folder can have
    label = "\u65e5" * 28
    fits = f"{label}.{label}.{label[1:]}.abc"
    assert len(fits.encode()) == 255
    config.write_text(config.read_text().replace(
        f"{a_label}.{a_label}.{a_label}.example", fits))
    assert check_warnings(config) == ""


def test_user_add_refuses_a_user_of_a_domain_whose_folder_name_is_over_name_max(
        config: Path) -> None:
    # the domain of the check test above: user add took q@ it, a user who
    # never gets mail (RCPT 550 5.3.5) nor logs in to POP3 ([SYS/PERM])
    label = "\u65e5" * 50
    domain = f"{label}.{label}.{label}.example"
    config.write_text(config.read_text().replace(
        'domains = ["example.org", "example.net"]\n',
        f'domains = ["example.org", "{domain}"]\n'))
    code, out, err = run(config, "user", "add", f"q@{domain}", "--password-stdin", stdin=PW)
    assert (code, out) == (2, "")
    assert err == (f"mailhub: q@{domain} cannot be a user: its domain's Maildir folder's "
                   "name would be 460 octets, over the 255 a file system takes in one name "
                   "(NAME_MAX): it gets no mail and cannot log in to POP3\n")
    # the same domain spelled as its A-labels (which fit): its folder is
    # named by the U-labels all the same
    a_label = label.encode("idna").decode("ascii")
    code, out, err = run(config, "user", "add", f"q@{a_label}.{a_label}.{a_label}.example",
                         "--password-stdin", stdin=PW)
    assert (code, out) == (2, "") and "its domain's Maildir folder's name would be 460" in err
    assert run(config, "user", "list") == (0, "", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="root makes a folder another user's")
def test_user_add_writes_through_a_trusted_link_and_refuses_another_with_exit_2(
        tmp_path: Path) -> None:
    # [users] file a link: `user add` replaced it with a plain file, and
    # the file it led to kept the old users (the hub, on the link, too)
    kept = tmp_path / "kept-users"
    kept.write_text("")
    os.chmod(kept, 0o640)
    link = tmp_path / "users"
    link.symlink_to(kept)
    config = tmp_path / "mailhub.toml"
    config.write_text(no_logins(HUB + 'domains = ["example.org"]\nstate_dir = "var"\n'
                                f'[users]\nfile = "{link}"\n'))
    assert run(config, "user", "add", "joe", "--password-stdin", stdin=PW)[0] == 0
    assert link.is_symlink() and "joe@example.org scrypt$" in kept.read_text()
    assert kept.stat().st_mode & 0o7777 == 0o640
    # the same link in a folder the hub's user may change: refused, one line
    hubs = tmp_path / "users.d"
    hubs.mkdir()
    os.chown(hubs, 65534, 65534)
    link.unlink()
    (hubs / "users").symlink_to(kept)
    link.symlink_to(hubs / "users")
    before = kept.read_text()
    code, out, err = run(config, "user", "add", "ann", "--password-stdin", stdin=PW)
    assert (code, out) == (2, "")
    assert err.startswith(f"mailhub: {hubs / 'users'} is a symbolic link in {hubs}, ")
    assert len(err.splitlines()) == 1 and "set [users] file to the file itself" in err
    assert kept.read_text() == before and link.is_symlink()
