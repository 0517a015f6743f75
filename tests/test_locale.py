"""The hub, its commands and twistd plugin under a locale that is not
UTF-8: ``LC_ALL=C`` with Python's UTF-8 mode and locale coercion off
(ASCII for the file system and standard streams), and a Latin-1 locale
where one can be made (``localedef`` into a private ``LOCPATH``).  The
mail, the Maildir names and the files are the same octets as under UTF-8."""

from __future__ import annotations

import os
import poplib
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TWISTD, Hub, write_toml

C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
LATIN_1 = {"LC_ALL": "en_US.ISO-8859-1", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}

JOSE, JOERG = "jos\u00e9@example.org", "j\u00f6rg@b\u00fccher.example"
USERS = {"alice@example.org": "alice-secret", JOSE: "jose-secret", JOERG: "joerg-secret"}
DOMAINS = {"hub": {"domains": ["example.org", "b\u00fccher.example"]}}


@pytest.fixture(scope="session")
def latin_1_locale(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a Latin-1 locale, compiled into a folder of the
    test run's own (skipped where ``localedef`` cannot make it)."""
    localedef = shutil.which("localedef")
    if localedef is None:
        pytest.skip("no localedef to make a Latin-1 locale")
    where = tmp_path_factory.mktemp("locales")
    done = subprocess.run([localedef, "-i", "en_US", "-f", "ISO-8859-1",
                           str(where / LATIN_1["LC_ALL"])], capture_output=True, timeout=120)
    env = {**LATIN_1, "LOCPATH": str(where)}
    probe = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                           env={**_base_environment(), **env}, capture_output=True, timeout=60)
    if probe.stdout.strip() != b"iso8859-1":
        pytest.skip(f"no Latin-1 locale: {done.stderr!r}")
    return env


def _base_environment() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("LC_") and k not in ("LANG", "PYTHONIOENCODING")}
    return environ


@pytest.fixture(params=["C", "latin-1"])
def locale_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[dict[str, str]]:
    """This process's environment, which the hub and the commands a test
    starts inherit, set to the locale (the test's own code is unchanged:
    its encodings were fixed at its start)."""
    env = C_LOCALE if request.param == "C" else request.getfixturevalue("latin_1_locale")
    for name in [k for k in os.environ if k.startswith("LC_") or k == "LANG"]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def _send(hub: Hub, sender: str, rcpts: list[str], msg: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=60) as s:
        assert s.sendmail(sender, rcpts, msg, mail_options=["SMTPUTF8"]) == {}


def _wait_for(what: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := what()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_smtputf8_mail_lands_in_the_utf8_named_maildirs(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    hub = make_hub(users=USERS, sections=DOMAINS)
    msg = ("From: s\u00e9@x.test\r\nTo: " + JOSE + "\r\nSubject: gr\u00fc\u00dfe\r\n\r\n"
           "caf\u00e9\r\n").encode()
    _send(hub, "s\u00e9@x.test", [JOSE, JOERG, "alice@example.org"], msg)
    mail = hub.state_dir / "mail"
    for folder in (mail / "example.org" / "jos\u00e9", mail / "b\u00fccher.example" / "j\u00f6rg"):
        # the folder's name is its UTF-8 octets (this process's file system
        # encoding is UTF-8), and the message is there, as sent
        assert _wait_for(lambda f=folder: list((f / "new").iterdir()) if (f / "new").is_dir()
                         else []), (sorted(os.listdir(os.fsencode(mail))), hub.log_text())
        [got] = (folder / "new").iterdir()
        assert got.read_bytes().endswith(msg.replace(b"\r\n", b"\n"))
    out = hub.mailhub("queue", "list")
    assert (out.returncode, out.stdout) == (0, ""), out.stderr


def test_pop3_reads_the_utf8_named_maildir(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    hub = make_hub(users=USERS, sections={**DOMAINS, "pop3": {"allow_plaintext_auth": True}})
    msg = b"Subject: hi\r\n\r\nfor jose\r\n"
    _send(hub, "s@x.test", [JOSE], msg)
    assert _wait_for(lambda: hub.message_files(JOSE)), hub.log_text()
    pop = poplib.POP3("127.0.0.1", hub.pop3_port, timeout=60)
    try:
        pop._putcmd("UTF8")  # RFC 6856: a user name in UTF-8
        pop._getresp()
        pop.user(JOSE)
        pop.pass_("jose-secret")
        assert pop.stat()[0] == 1
        assert b"\r\n".join(pop.retr(1)[1]).endswith(b"for jose")
    finally:
        pop.quit()


def test_paths_the_config_names_in_utf8(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    # state_dir, the users and aliases files named in the (UTF-8) config:
    # the same files as under UTF-8, no traceback (mailhub, twistd)
    hub = make_hub(users={}, start=False)
    place = hub.folder / "d\u00e9p\u00f4t"
    place.mkdir()
    (place / "ali\u00e4s").write_text("postmaster: alice\n")
    hub.doc["hub"]["state_dir"] = str(place / "\u00e9tat")
    hub.doc["users"]["file"] = str(place / "us\u00e9rs")
    hub.doc["aliases"] = {"file": str(place / "ali\u00e4s")}
    write_toml(hub.config_path, hub.doc)
    added = hub.mailhub("user", "add", "alice", "--password-stdin", "--allow-weak",
                        input="alice-secret\n")
    assert added.returncode == 0, added.stderr
    assert "\nalice@example.org " in (place / "us\u00e9rs").read_text()
    checked = hub.mailhub("check")
    assert (checked.returncode, checked.stdout) == (0, f"{hub.config_path}: ok\n"), checked.stderr
    listed = hub.mailhub("alias", "list")
    assert (listed.returncode, listed.stdout) == (
        0, "postmaster@example.org\talice@example.org\n"), listed.stderr
    hub.state_dir.mkdir()  # (not the one in use: it stays empty)
    hub.start()
    _send(hub, "s@x.test", ["postmaster@example.org"], b"Subject: x\r\n\r\nhi\r\n")
    box = place / "\u00e9tat" / "mail" / "example.org" / "alice" / "new"
    assert _wait_for(lambda: box.is_dir() and list(box.iterdir())), hub.log_text()
    assert not list(hub.state_dir.iterdir())


def test_the_log_on_standard_output_keeps_the_lines_naming_utf8(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    # twistd -n --logfile=- (the systemd unit's): the lines that name
    # jos\u00e9 are written in UTF-8, not dropped
    hub = make_hub(users=USERS, sections=DOMAINS)
    _send(hub, "s\u00e9@x.test", [JOSE], b"Subject: x\r\n\r\nhi\r\n")
    line = f"from <s\u00e9@x.test> to {JOSE} (18 octets)"
    assert _wait_for(lambda: line in hub.log_text()), hub.log_text()


def _typed(text: str, env: dict[str, str]) -> bytes:
    """``text`` as a terminal of the locale types it: UTF-8 under C (the
    octets a UTF-8 terminal sends whatever the locale says), Latin-1
    under the Latin-1 locale."""
    return text.encode("latin-1" if "ISO-8859-1" in env["LC_ALL"] else "utf-8")


def test_sendmail_takes_utf8_addresses_and_names_from_the_command_line(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    hub = make_hub(users=USERS, sections=DOMAINS, fixed_ports=True)
    base = [sys.executable, "-m", "txmailhub.sendmail", "-C", str(hub.config_path)]
    done = subprocess.run(
        [*base, b"-f", _typed("s\u00e9@example.org", locale_env),
         b"-F", _typed("J\u00f6rg", locale_env), _typed("jos\u00e9", locale_env)],
        input=b"Subject: hi\n\nfor jose\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _wait_for(lambda: hub.message_files(JOSE)), hub.log_text()
    [got] = hub.messages(JOSE)
    assert got.startswith("Return-Path: <s\u00e9@example.org>\n".encode()), got
    assert "From: \"J\u00f6rg\" <s\u00e9@example.org>\n".encode() in got, got
    verified = subprocess.run([*base, "-bv", _typed("jos\u00e9", locale_env)],
                              capture_output=True, timeout=60)
    assert (verified.returncode, verified.stderr) == (0, b"")
    assert JOSE.encode() in verified.stdout


def test_twistd_names_a_config_path_outside_ascii_in_utf8(
        tmp_path: Path, locale_env: dict[str, str]) -> None:
    # what twistd mailhub says before it starts is UTF-8, as mailhub check
    missing = tmp_path / "d\u00e9p\u00f4t" / "mailhub.toml"
    if "ISO-8859-1" in locale_env["LC_ALL"]:
        # the octets a Latin-1 terminal types: read as Latin-1, written as UTF-8
        argv_path: str | bytes = str(missing).encode("latin-1")
    else:
        argv_path = str(missing)
    done = subprocess.run([TWISTD, "-n", "--pidfile=", "mailhub", "--config", argv_path],
                          capture_output=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    said = f"{missing}: cannot read the config file: No such file or directory\n".encode()
    assert said in done.stderr, done.stderr


def test_a_unix_listener_named_outside_ascii(
        make_hub: Callable[..., Hub], locale_env: dict[str, str]) -> None:
    # the socket of the config's UTF-8 name, which sendmail reaches
    hub = make_hub(users=USERS, sections=DOMAINS, start=False)
    hub.doc["smtp"]["listen"] = [*hub.doc["smtp"]["listen"], "unix:s\u00f6ck"]
    write_toml(hub.config_path, hub.doc)
    hub.start()
    assert _wait_for(lambda: (hub.folder / "s\u00f6ck").exists()), hub.log_text()
    done = subprocess.run([sys.executable, "-m", "txmailhub.sendmail", "-C",
                           str(hub.config_path), _typed("jos\u00e9", locale_env)],
                          input=b"Subject: hi\n\nover the socket\n", capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert _wait_for(lambda: hub.message_files(JOSE)), hub.log_text()
    if "ISO-8859-1" not in locale_env["LC_ALL"]:  # (Latin-1: deployment.rst's limit)
        assert f"smtp listening on {hub.folder}/s\u00f6ck" in hub.log_text()
