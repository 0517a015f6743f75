"""What the commands write where the locale's encoding cannot hold an
address: UTF-8 octets (txmailhub.cli_output), not a UnicodeEncodeError."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from txmailhub.address import Address
from txmailhub.cli import main
from txmailhub.cli_output import ERRORS
from txmailhub.config import load_text
from txmailhub.envelope import Envelope, SpooledMessage
from txmailhub.relay.queue import OutboundQueue
from txmailhub.smtp.reply import Reply
from txmailhub.store.quota import MailboxUsage

PW = "mellow-quartz-harbour\n"
# stdout an ASCII file (the file system still UTF-8), and the C locale
# with Python's UTF-8 mode and locale coercion off (ASCII everywhere)
ASCII_IO = {"PYTHONIOENCODING": "ascii", "PYTHONUTF8": "1"}
C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
            "PYTHONIOENCODING": ""}
ENVIRONMENTS = pytest.mark.parametrize("env", [ASCII_IO, C_LOCALE], ids=["ascii-io", "C"])


def command(env: dict[str, str], *argv: str, cwd: Path) -> tuple[int, bytes, bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    environ.pop("LANG", None)
    environ.update(env)
    done = subprocess.run([sys.executable, *argv], env=environ, cwd=cwd,
                          capture_output=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    folder = tmp_path / "prüf"  # a path that is not ASCII either
    folder.mkdir()
    path = folder / "mailhub.toml"
    path.write_text('[hub]\nhostname = "mail.example.org"\n'
                    'domains = ["example.org", "bücher.example"]\nstate_dir = "var"\n')
    for name in ("alice", "josé", "jörg@bücher.example"):
        assert main(["--config", str(path), "user", "add", name, "--password-stdin"],
                    out=io.StringIO(), err=io.StringIO(), stdin=io.StringIO(PW)) == 0
    return path


@ENVIRONMENTS
def test_user_list_writes_utf8_octets(config: Path, env: dict[str, str]) -> None:
    code, out, err = command(env, "-m", "txmailhub", "--config", str(config), "user", "list",
                             cwd=config.parent)
    assert (code, out, err) == (
        0, "alice@example.org\njosé@example.org\njörg@bücher.example\n".encode(), b"")


def test_user_list_usage_writes_utf8_octets(config: Path) -> None:
    code, out, err = command(ASCII_IO, "-m", "txmailhub", "--config", str(config), "user",
                             "list", "--usage", cwd=config.parent)
    assert (code, out, err) == (
        0, "alice@example.org\t0\tnone\njosé@example.org\t0\tnone\n"
           "jörg@bücher.example\t0\tnone\n".encode(), b"")


def test_user_list_usage_in_the_c_locale(config: Path) -> None:
    # an ASCII file system encoding: josé's Maildir is still found by its
    # UTF-8 name and measured; the listing is UTF-8
    box = config.parent / "var" / "mail" / "example.org" / "josé" / "new"
    box.mkdir(parents=True)
    (box / "1.M1P1.host").write_bytes(b"Subject: x\n\nhi\n")
    held = MailboxUsage().usage(str(box.parent))  # as measured under UTF-8
    assert held > 0
    code, out, err = command(C_LOCALE, "-m", "txmailhub", "--config", str(config), "user",
                             "list", "--usage", cwd=config.parent)
    assert (code, err) == (0, b"")
    assert out == (f"alice@example.org\t0\tnone\njosé@example.org\t{held}\tnone\n"
                   "jörg@bücher.example\t0\tnone\n").encode()


@ENVIRONMENTS
def test_alias_list_and_show_write_utf8_octets(config: Path, env: dict[str, str]) -> None:
    (config.parent / "aliases").write_text("équipe: josé, jörg@bücher.example\n")
    config.write_text(config.read_text() + '[aliases]\nfile = "aliases"\n')
    base = ["-m", "txmailhub", "--config", str(config), "alias"]
    code, out, err = command(env, *base, "list", cwd=config.parent)
    assert (code, out, err) == (
        0, "équipe@example.org\tjosé@example.org, jörg@bücher.example\n".encode(), b"")
    code, out, err = command(env, *base, "show", "équipe", cwd=config.parent)
    assert (code, err) == (0, b"")
    assert "mailboxes: josé@example.org, jörg@bücher.example\n".encode() in out


@ENVIRONMENTS
def test_check_writes_the_path_as_it_is(config: Path, env: dict[str, str]) -> None:
    code, out, err = command(env, "-m", "txmailhub", "--config", str(config), "check",
                             cwd=config.parent)
    assert (code, out) == (0, f"{config}: ok\n".encode()), err


@ENVIRONMENTS
def test_check_names_a_maildir_spelled_another_way_under_an_idn(
        config: Path, env: dict[str, str]) -> None:
    # a folder below a domain that is not ASCII is read by its UTF-8 name
    # even where the file system encoding is ASCII
    old = config.parent / "var" / "mail" / "bücher.example" / "jo\u0308rg"
    (old / "new").mkdir(parents=True)
    _code, out, err = command(env, "-m", "txmailhub", "--config", str(config), "check",
                             cwd=config.parent)
    assert b"Maildir the hub no longer reads (its name is spelled jo\\u0308rg)" in out + err
    assert str(old).encode() in out + err


@ENVIRONMENTS
def test_check_names_maildirs_named_in_latin_1(config: Path, env: dict[str, str]) -> None:
    # the folders a hub under a Latin-1 locale named: josé's, and the IDN's
    mail = os.fsencode(config.parent / "var" / "mail")
    jose = os.path.join(mail, b"example.org", "jos\u00e9".encode("latin-1"))
    os.makedirs(os.path.join(jose, b"new"))
    idn = os.path.join(mail, "b\u00fccher.example".encode("latin-1"))
    os.makedirs(os.path.join(idn, "j\u00f6rg".encode("latin-1"), b"cur"))
    # a folder not UTF-8 that names no user is not taken for one
    os.makedirs(os.path.join(mail, b"example.org", "n\u00f3body".encode("latin-1"), b"new"))
    _code, out, err = command(env, "-m", "txmailhub", "--config", str(config), "check",
                              cwd=config.parent)
    said = out + err
    assert (jose + b" is a Maildir the hub no longer reads (its name is spelled jos\\xe9): "
            b"the mail of that name is kept in " + os.path.join(mail, b"example.org")
            + "/jos\u00e9".encode()) in said, said
    assert (idn + b" holds Maildirs the hub no longer reads: the folder of "
            + "b\u00fccher.example".encode("latin-1") + b" is now "
            + os.path.join(mail, "b\u00fccher.example".encode())) in said, said
    assert b"body" not in said


@pytest.fixture
def queued(config: Path) -> str:
    settings = load_text(config.read_text(), str(config))
    clock = Clock()
    # the wall clock, as the hub's: a retry time written by a clock far
    # ahead is listed as the schedule's step from the moment of listing
    clock.advance(time.time())
    queue = OutboundQueue(settings.queue_dir, clock)
    spool = config.parent / "spool"
    spool.write_bytes(b"Subject: x\n\nbody\n")
    qid = queue.enqueue(Envelope(sender=Address("josé", "example.org"),
                                 recipients=(Address("zoë", "empfänger.test"),),
                                 helo="client.example.org", client_address="127.0.0.1",
                                 smtputf8=True),
                        SpooledMessage(str(spool), 17, 20)).result
    reply = Reply.of(451, "4.2.0", "Grüße: the mailbox is busy")
    queue.update(qid, lambda e: dataclasses.replace(e.with_recipients(
        {r.address: dataclasses.replace(r, last_reply=reply, attempts=1)
         for r in e.recipients}), attempts=1))
    return qid


@ENVIRONMENTS
def test_queue_list_show_and_mailq_write_utf8_octets(config: Path, queued: str,
                                                     env: dict[str, str]) -> None:
    base = ["-m", "txmailhub", "--config", str(config), "queue"]
    code, out, err = command(env, *base, "list", cwd=config.parent)
    assert (code, err) == (0, b"")
    assert out.startswith(f"{queued} josé@example.org zoë@empfänger.test ".encode())
    assert out.endswith("451 4.2.0 Grüße: the mailbox is busy\n".encode())
    code, show, err = command(env, *base, "show", queued, cwd=config.parent)
    assert (code, err) == (0, b"")
    lines = show.splitlines()
    assert "sender: josé@example.org".encode() in lines
    assert "    reply: 451 4.2.0 Grüße: the mailbox is busy".encode() in lines
    # mailq (sendmail -bp) prints what queue list prints
    code, mailq, err = command(
        env, "-c", "import sys; from txmailhub.sendmail import main; sys.exit(main())",
        "-bp", "-C", str(config), cwd=config.parent)
    assert (code, mailq, err) == (0, out, b"")


def test_octets_that_were_not_utf8_are_written_back_as_they_were() -> None:
    # surrogateescape's stand-ins (a file name, a remote's reply) are the
    # octets again; any other lone surrogate is an escape, not an error
    assert "jos\udce9 \ud800 é".encode("utf-8", ERRORS) == b"jos\xe9 \\ud800 \xc3\xa9"


@ENVIRONMENTS
def test_a_utf8_password_on_stdin_is_read_whatever_the_locale(config: Path,
                                                              env: dict[str, str]) -> None:
    # the other half of the rule: what the command reads on its standard
    # input is the password's UTF-8 octets too.  It was a UnicodeDecodeError
    # traceback (PYTHONIOENCODING=ascii), or "the password is not UTF-8
    # text" for one that was (the C locale's surrogateescape)
    from txmailhub.users import UsersDB

    password = "mellow-quärtz-harbour"
    done = subprocess.run(
        [sys.executable, "-m", "txmailhub", "--config", str(config), "user", "add", "zed",
         "--password-stdin"], input=f"{password}\n".encode(), capture_output=True,
        cwd=config.parent, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LC_")
                and k != "LANG"}, **env})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"added zed@example.org\n", b"")
    db = UsersDB(str(config.parent / "users"), "example.org")
    assert db.check_password(Address("zed", "example.org"), password)


def on_a_terminal(env: dict[str, str], *argv: str, cwd: Path) -> tuple[int, bytes]:
    """Run with standard output on a pseudo-terminal; what it was sent."""
    import pty

    leader, follower = pty.openpty()
    try:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
        environ.pop("LANG", None)
        environ.update(env)
        done = subprocess.run([sys.executable, *argv], env=environ, cwd=cwd,
                              stdout=follower, stderr=subprocess.DEVNULL, timeout=60)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the writer has gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    # the terminal's own line discipline turns LF into CRLF
    return done.returncode, b"".join(chunks).replace(b"\r\n", b"\n")


@pytest.mark.parametrize("encoding, expected", [
    # a Latin-1 terminal gets Latin-1 (UTF-8's C3 A9 would show "josÃ©"),
    # and an escape for what Latin-1 cannot spell
    ("latin-1", b"alice@example.org\njos\xe9@example.org\nj\xf6rg@b\xfccher.example\n"),
    ("ascii", b"alice@example.org\njos\\xe9@example.org\nj\\xf6rg@b\\xfccher.example\n"),
    # a UTF-8 terminal: the rule's octets
    ("utf-8", "alice@example.org\njosé@example.org\njörg@bücher.example\n".encode()),
], ids=["latin-1", "ascii", "utf-8"])
def test_a_terminal_keeps_its_locales_encoding(config: Path, encoding: str,
                                               expected: bytes) -> None:
    code, out = on_a_terminal({"PYTHONIOENCODING": encoding, "PYTHONUTF8": "1"},
                              "-m", "txmailhub", "--config", str(config), "user", "list",
                              cwd=config.parent)
    assert (code, out) == (0, expected)


def test_an_8bit_terminal_never_gets_a_c1_octet_from_a_reply(config: Path,
                                                             queued: str) -> None:
    # UTF-8 spells "ś" C5 9B; 0x9B is CSI to an 8-bit terminal, which
    # would read "ś2J" as "clear the screen"
    settings = load_text(config.read_text(), str(config))
    queue = OutboundQueue(settings.queue_dir, Clock())
    reply = Reply.of(550, "5.1.1", "no such user\u015b2J")
    queue.update(queued, lambda e: e.with_recipients(
        {r.address: dataclasses.replace(r, last_reply=reply) for r in e.recipients}))
    code, out = on_a_terminal({"PYTHONIOENCODING": "latin-1", "PYTHONUTF8": "1"},
                              "-m", "txmailhub", "--config", str(config), "queue", "show",
                              queued, cwd=config.parent)
    assert code == 0
    assert b"reply: 550 5.1.1 no such user\\u015b2J\n" in out, out
    assert not any(0x80 <= o <= 0x9F for o in out), out


@pytest.mark.parametrize("argv, stdout", [
    # -bs speaks SMTP on standard output: the error line must not land in it
    (["-c", "import sys; from txmailhub.sendmail import main; sys.exit(main())", "-bs"],
     None),
    (["-m", "txmailhub", "user", "list", "--bogus"], b""),
    (["-m", "txmailhub", "user", "list"], b""),
], ids=["sendmail-bs", "usage", "config"])
def test_a_closed_stderr_never_sends_error_lines_to_stdout(tmp_path: Path, argv: list[str],
                                                           stdout: bytes | None) -> None:
    environ = dict(os.environ, MAILHUB_CONFIG=str(tmp_path / "missing.toml"))
    done = subprocess.run([sys.executable, *argv], env=environ, cwd=tmp_path,
                          input=b"QUIT\r\n", capture_output=False, stdout=subprocess.PIPE,
                          preexec_fn=lambda: os.close(2), timeout=60)
    assert done.returncode != 0
    if stdout is None:  # only SMTP replies, each a CRLF line with a code
        assert done.stdout.startswith(b"421 4.3.0 "), done.stdout
        assert all(line[:3].isdigit() for line in done.stdout.split(b"\r\n")[:-1])
        assert done.stdout.endswith(b"\r\n")
    else:
        assert done.stdout == stdout


def test_a_closed_stderr_keeps_queue_errors_out_of_stdout(config: Path, queued: str) -> None:
    # the queue commands took sys.stderr themselves: with 2>&- it is None,
    # and print(file=None) put "no queued message" into standard output
    done = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(config),
                           "queue", "show", "NOSUCHID"], cwd=config.parent,
                          stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2), timeout=60)
    assert (done.returncode, done.stdout) == (1, b"")


def test_queue_errors_go_to_the_err_main_was_given(config: Path, queued: str) -> None:
    # a program calling main(out=..., err=...) gets every error line of a
    # queue command in its err, as it does a user command's
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(config), "queue", "show", "NOSUCHID"], out=out, err=err) == 1
    assert (out.getvalue(), err.getvalue()) == ("", "mailhub: no queued message NOSUCHID\n")


def test_a_stream_a_program_passes_keeps_its_encoding(config: Path) -> None:
    # main(out=...) from a program: the stream is the program's, opened
    # with the encoding it wants.  It was reconfigured to UTF-8 for good,
    # so a Latin-1 file got UTF-8 octets in its middle, from then on
    out = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", newline="\n")
    err = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", newline="\n")
    assert main(["--config", str(config), "user", "list"], out=out, err=err) == 0
    print("café", file=out)
    out.flush()
    assert (out.encoding, out.errors, err.encoding, err.errors) == (
        "latin-1", "strict", "latin-1", "strict")
    assert out.buffer.getvalue() == (
        b"alice@example.org\njos\xe9@example.org\nj\xf6rg@b\xfccher.example\ncaf\xe9\n")


@ENVIRONMENTS
def test_user_commands_take_a_utf8_name_whatever_the_locale(config: Path,
                                                            env: dict[str, str]) -> None:
    # under the C locale Python hands "zoé" over as surrogates: the
    # command must still take it as the UTF-8 text it was typed in
    base = ["-m", "txmailhub", "--config", str(config), "user"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    environ.pop("LANG", None)
    environ.update(env)
    done = subprocess.run([sys.executable, *base, "add", "zoé", "--password-stdin"],
                          env=environ, cwd=config.parent, input=PW.encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, out, err = command(env, *base, "list", cwd=config.parent)
    assert (code, err) == (0, b"")
    assert "zoé@example.org\n".encode() in out
    code, out, err = command(env, *base, "del", "zoé", cwd=config.parent)
    assert (code, out, err) == (0, "deleted zoé@example.org\n".encode(), b"")
