"""The documentation parses, and documents every configuration key."""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import io
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from txmailhub import cli, config, tap

docutils_core = pytest.importorskip("docutils.core")
ROOT = Path(__file__).resolve().parent.parent
RST = sorted([ROOT / "README.rst", *(ROOT / "docs").glob("*.rst")])


@pytest.mark.parametrize("path", RST, ids=lambda p: p.name)
def test_restructuredtext_is_valid(path: Path) -> None:
    warnings = io.StringIO()
    docutils_core.publish_doctree(
        path.read_text(), source_path=str(path),
        settings_overrides={"warning_stream": warnings, "report_level": 2},
    )
    assert warnings.getvalue() == ""


@pytest.mark.parametrize(
    ("section", "settings"),
    [("hub", config.HubSettings), ("users", config.UsersSettings),
     ("aliases", config.AliasesSettings), ("tls", config.TLSSettings),
     ("smtp", config.SMTPSettings), ("submission", config.SubmissionSettings),
     ("pop3", config.POP3Settings), ("relay", config.RelaySettings)],
)
def test_every_config_key_is_documented(section: str, settings: type) -> None:
    text = (ROOT / "docs" / "configuration.rst").read_text()
    body = text.split(f"\n``[{section}]``", 1)[1].split("\n``[", 1)[0]
    for f in dataclasses.fields(settings):
        assert f"``{f.name}``" in body, f"[{section}] {f.name} is not in docs/configuration.rst"


# --- the configuration reference, read as a user reads it -----------------

MINIMAL = '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
CONFIG_RST = ROOT / "docs" / "configuration.rst"
_BORDER = re.compile(r"^=+(?: +=+)+$")


def _loader_names(text: str, marker: str) -> set[str]:
    """What the loader accepts, as it tells a user who wrote something
    else: its "known ..." list, so a new key or section is seen here without
    this test naming it."""
    with pytest.raises(config.ConfigError) as info:
        config.load_text(text, "/etc/mh/mailhub.toml")
    found = [p for p in info.value.problems if "zz_unknown" in p]
    assert found, info.value.problems
    listed = re.sub(r" \(at line [0-9]+\)$", "", found[0]).split(marker, 1)[1]
    return set(listed.rstrip(")").split(", "))


def _sections() -> list[str]:
    return sorted(_loader_names(MINIMAL + "[zz_unknown]\n", "(known: "))


def _section_body(section: str) -> str:
    text = CONFIG_RST.read_text()
    assert f"\n``[{section}]``" in text, f"[{section}] has no heading in docs/configuration.rst"
    return text.split(f"\n``[{section}]``", 1)[1].split("\n``[", 1)[0]


def _table(section: str) -> dict[str, str]:
    """``{key: default cell}`` of the section's key table (its rows, not
    keys the prose around it happens to name)."""
    lines = _section_body(section).splitlines()
    borders = [i for i, line in enumerate(lines) if _BORDER.match(line)]
    assert len(borders) >= 3, f"[{section}] has no key table"
    columns = [m.start() for m in re.finditer(r"=+", lines[borders[0]])]
    assert len(columns) >= 4, f"[{section}]: the table has no default column"
    rows = {}
    for line in lines[borders[1] + 1:borders[2]]:
        m = re.match(r"``([a-z0-9_]+)``", line)
        if m:
            rows[m.group(1)] = line[columns[2]:columns[3]].strip()
    return rows


def _accepted_keys(section: str) -> set[str]:
    head = MINIMAL if section == "hub" else MINIMAL + f"[{section}]\n"
    return _loader_names(head + "zz_unknown = 1\n", "(known keys: ")


@pytest.mark.parametrize("section", _sections())
def test_the_key_tables_list_exactly_the_keys_the_loader_accepts(section: str) -> None:
    documented, accepted = set(_table(section)), _accepted_keys(section)
    assert not accepted - documented, (
        f"[{section}] keys missing from the table in docs/configuration.rst: "
        f"{sorted(accepted - documented)}")
    assert not documented - accepted, (
        f"docs/configuration.rst lists [{section}] keys the loader refuses: "
        f"{sorted(documented - accepted)}")


def _settings_of(section: str, text: str) -> object:
    return getattr(config.load_text(text, "/etc/mh/mailhub.toml"), section)


def _documented_defaults() -> list[tuple[str, str, str]]:
    return [(s, k, d) for s in _sections() for k, d in _table(s).items()]


@pytest.mark.parametrize(("section", "key", "default"), _documented_defaults(),
                         ids=lambda v: str(v)[:20])
def test_the_documented_defaults_are_the_defaults(section: str, key: str, default: str) -> None:
    """The default column means what it says: writing the documented
    default down changes nothing, and "(required)" or "(none)" hold."""
    if section == "hub":  # the minimal file without that key
        without = "".join(f"{line}\n" for line in MINIMAL.splitlines()
                          if not line.startswith(f"{key} "))
    else:
        without = MINIMAL + f"[{section}]\n"
    if default == "(required)":
        with pytest.raises(config.ConfigError) as info:
            config.load_text(without, "/etc/mh/mailhub.toml")
        assert any(f"[{section}] {key}: " in p for p in info.value.problems), \
            info.value.problems
        return
    if default == "(none)":
        assert getattr(_settings_of(section, without), key) is None
        return
    if default == "the machine's FQDN":
        assert getattr(_settings_of(section, without), key) == socket.getfqdn()
        return
    if default == "(see below)":
        m = re.search(rf"The default ``{key}`` is ``(.+?)``", _section_body(section), re.S)
        assert m, f"[{section}] {key}: the default is not given below the table"
        default = "``" + " ".join(m.group(1).split()) + "``"
    m = re.fullmatch(r"``(.+)``", default)
    assert m, f"[{section}] {key}: the default {default!r} is no TOML value"
    with_default = without + f"{key} = {m.group(1)}\n"
    assert _settings_of(section, with_default) == _settings_of(section, without), \
        f"[{section}] {key}: the documented default {m.group(1)} is not the default"


# --- commands ------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every command line ``mailhub`` takes, ``user add`` and the like."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _subcommands(sub, f"{prefix}{name} ")
                out.extend(inner or [f"{prefix}{name}"])
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _options(sub)
        elif not isinstance(action, argparse._HelpAction):
            out.update(action.option_strings)
    return out


def _readme_commands() -> str:
    text = (ROOT / "README.rst").read_text()
    return " ".join(text.split("\nEveryday commands\n", 1)[1].split("\nDocumentation\n")[0].split())


@pytest.mark.parametrize("command", _subcommands(cli._parser()))
def test_every_mailhub_command_is_in_the_readme(command: str) -> None:
    text = _readme_commands()
    assert re.search(rf"``(?:mailhub --config PATH )?{command}\b", text), \
        f"`mailhub {command}` is not in README.rst's Everyday commands"


def test_every_mailhub_option_is_in_the_readme() -> None:
    text = _readme_commands()
    missing = [o for o in sorted(_options(cli._parser())) if f"``{o} " not in text
               and not re.search(rf"\s\[?{re.escape(o)}\b", text)]
    assert not missing, f"options of `mailhub` not in README.rst's Everyday commands: {missing}"


def test_every_twistd_mailhub_option_is_in_the_readme() -> None:
    text = _readme_commands()
    for long, short, _default, _help in tap.Options.optParameters:
        assert f"--{long}" in text and f"``-{short} PATH``" in text, long


def test_the_default_config_file_is_documented_where_each_command_is() -> None:
    # ``mailhub`` and ``twistd mailhub`` share the rule (config.default_config_path);
    # the README said only ``mailhub`` fell back to the system file
    for name in ("README.rst", "docs/configuration.rst", "docs/sendmail.rst"):
        text = " ".join((ROOT / name).read_text().split())
        assert f"``$MAILHUB_CONFIG``, else ``{config.SYSTEM_CONFIG}``" in text, name
    readme = " ".join(_readme_commands().split())
    assert "``mailhub`` and ``twistd mailhub`` both read" in readme
    assert "a missing ``--config``" not in readme


def test_every_installed_command_is_in_the_readme() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = [line.split("=")[0].strip()
               for line in setup["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()]
    assert scripts
    text = _readme_commands()
    for name in scripts:
        assert f"``{name} " in text, f"{name} is not in README.rst's Everyday commands"


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_tac_file_shown_is_the_one_shipped() -> None:
    text = (ROOT / "docs" / "embedding.rst").read_text()
    shown = text.split("``etc/mailhub.tac``::", 1)[1].split("\nRun it", 1)[0]
    assert _code_lines(shown) == _code_lines((ROOT / "etc" / "mailhub.tac").read_text())


def _example_tac(tmp_path: Path, smtp: str = "listen = []\n") -> Path:
    """etc/mailhub.tac as shipped, reading ``tmp_path``/mailhub.toml: a
    small config whose [smtp] section is ``smtp``, no other listener."""
    config = tmp_path / "mailhub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'state_dir = "state"\n[smtp]\n{smtp}'
                      '[submission]\nlisten = []\n[pop3]\nlisten = []\n')
    tac = tmp_path / "mailhub.tac"
    tac.write_text((ROOT / "etc" / "mailhub.tac").read_text().replace(
        "/etc/txmailhub/mailhub.toml", str(config)))
    return tac


def _example_tac_hub(tmp_path: Path, smtp_listen: str) -> Any:
    """The hub etc/mailhub.tac builds, loaded as twistd -y loads it, from a
    small config whose SMTP listener list is ``[smtp_listen]``."""
    from twisted.application.service import IService
    from twisted.persisted import sob

    tac = _example_tac(tmp_path, f"listen = [{smtp_listen}]\n")
    application = sob.loadValueFromFile(str(tac), "application")
    [hub] = list(IService(application))
    return hub


def test_the_tac_example_loads_and_reports_start_errors_as_twistd_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # daemonized without DaemonStartError, a start error left twistd's
    # waiting parent waiting for good; the example had the two lines only
    # as a comment to uncomment
    import sys

    from twisted.scripts._twistd_unix import UnixApplicationRunner

    from txmailhub.service import DaemonStartError, MailHub

    monkeypatch.setattr(UnixApplicationRunner, "_waitForStart",
                        UnixApplicationRunner._waitForStart)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    hub = _example_tac_hub(tmp_path, '"tcp:0:interface=127.0.0.1"')
    assert isinstance(hub, MailHub) and hub.start_error_type is DaemonStartError



def test_the_tac_example_reports_a_bad_config_as_twistd_mailhub_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a typo in a key: the example's ``load`` raised ConfigError, which
    # twistd -ny showed as "Unhandled Error" with a traceback, exit 1
    from twisted.persisted import sob

    tac = _example_tac(tmp_path, "listen = []\nmax_recipient = 5\n")
    config = tmp_path / "mailhub.toml"
    with pytest.raises(SystemExit) as info:
        sob.loadValueFromFile(str(tac), "application")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{config}: [smtp] max_recipient: unknown key (known keys: "
                                "auth_failure_delay, expn, idle_timeout, listen, "
                                "max_auth_failures, max_connections, "
                                "max_connections_per_client, max_errors, max_junk_commands, "
                                "max_message_size, max_recipients, relay_networks, vrfy) "
                                "(at line 7)"]
    assert not (tmp_path / "state").exists()  # nothing started, nothing made


def _tac_runner(tac: Path, *argv: str) -> Any:
    """twistd's runner for ``twistd ARGV -y TAC``, its options parsed, as
    ``twistd`` makes it before it loads the ``.tac``."""
    from twisted.scripts._twistd_unix import ServerOptions, UnixApplicationRunner

    config = ServerOptions()
    config.parseOptions([*argv, "-y", str(tac)])
    return UnixApplicationRunner(config)


def test_the_tac_example_refuses_a_rundir_twistd_may_not_enter_in_a_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ``sudo -u mailhub twistd -ny /etc/txmailhub/mailhub.tac`` from root's
    # home: twistd loads the .tac, then changes into its --rundir, "." by
    # default, and ended the start in its traceback (PermissionError:
    # '.', exit status 1).  ``twistd mailhub`` says it in one line, exit 2
    import os
    import stat

    from txmailhub import run_files, tap

    tac = _example_tac(tmp_path)
    monkeypatch.chdir(tmp_path)
    real_access = os.access
    monkeypatch.setattr(run_files.os, "access", lambda path, mode, **kw: (
        False if os.path.abspath(path) == str(tmp_path) and mode & os.X_OK
        else real_access(path, mode, **kw)))
    runner = _tac_runner(tac, "-n", "--pidfile=")
    with pytest.raises(SystemExit) as info:
        runner.createOrGetApplication()
    assert info.value.code == 2
    user = tap._owner_name(os.geteuid())
    mode = f"{stat.S_IMODE(tmp_path.stat().st_mode):04o}"
    assert capsys.readouterr().err.splitlines() == [
        f"mailhub: --rundir {tmp_path} cannot be entered: {user} may not enter it (mode "
        f"{mode}) (twistd's default --rundir, the folder it starts in: start it from a "
        f"folder {user} may enter, such as /, or give --rundir /)"]
    assert not (tmp_path / "state").exists()  # nothing was built
    # with a --rundir that user may enter, the .tac builds the hub
    application = _tac_runner(tac, "-n", "--pidfile=", "--rundir", "/").createOrGetApplication()
    assert capsys.readouterr().err == ""
    assert (tmp_path / "state").is_dir() and application is not None


def test_the_tac_example_refuses_a_pid_file_twistd_cannot_write_in_a_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # twistd writes its pid file after loading the .tac: in a folder that
    # is not there (/run/txmailhub after a reboot), its traceback
    tac = _example_tac(tmp_path)
    monkeypatch.chdir(tmp_path)
    pid_file = tmp_path / "run" / "mailhub.pid"
    with pytest.raises(SystemExit) as info:
        _tac_runner(tac, "-n", f"--pidfile={pid_file}").createOrGetApplication()
    assert info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mailhub: --pidfile {pid_file} cannot be written: "), line
    assert not (tmp_path / "state").exists()


def test_the_tac_example_answers_sighup_as_twistd_mailhub_does(tmp_path: Path) -> None:
    # deployment.rst's SIGHUP (the TLS pair read again, a line in the log)
    # is twistd mailhub's; a hub run from the example had no handler, and
    # the signal ended it on the spot, as SIGUSR1 did under ``twistd -ny``
    import signal


    hub = _example_tac_hub(tmp_path, "")
    notice = hub.getServiceNamed("hangup-notice")
    before = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        notice.privilegedStartService()
        assert callable(signal.getsignal(signal.SIGHUP))
        assert callable(signal.getsignal(signal.SIGUSR1))
        notice.stopService()
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_tac_example_tunes_malloc_as_twistd_mailhub_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without it, a hub run from the example kept the 16 MiB of each
    # password check in glibc's arenas (txmailhub.allocator)
    from twisted.persisted import sob

    from txmailhub import allocator

    calls: list[tuple] = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda *a, **kw: calls.append(a) or True)
    tac = _example_tac(tmp_path)
    sob.loadValueFromFile(str(tac), "application")
    assert calls == [()]


def test_the_quick_start_describes_the_demo_it_starts() -> None:
    """README's account of ``make run``: the config the Makefile starts,
    its domain, ports and state folder, and the user the demo makes."""
    from txmailhub import demo

    text = " ".join((ROOT / "README.rst").read_text().split())
    quick = text.split("Quick start", 1)[1].split("Installing for real", 1)[0]
    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"^CONFIG \?= (\S+)$", makefile, re.M)
    assert m and f"``{m.group(1)}``" in quick
    settings = config.load(str(ROOT / m.group(1)))
    assert f"domain ``{settings.hub.primary_domain}``" in quick
    ports = [config.listen_address(e) for e in
             (*settings.smtp.listen, *settings.submission.listen, *settings.pop3.listen)]
    assert [str(ip) for _kind, _port, ip in ports] == ["127.0.0.1"] * len(ports)
    smtp, submission, pop3 = (port for _kind, port, _ip in ports)
    assert (f"SMTP on 127.0.0.1:{smtp}, submission on {submission}, POP3 on {pop3}"
            in quick)
    assert settings.hub.state_dir == str(ROOT / "var") and "under ``./var``" in quick
    user = f"{demo.DEMO_USER}@{settings.hub.primary_domain}"
    assert f"user ``{user}`` with password ``{demo.DEMO_PASSWORD}``" in quick


def test_the_downgraded_pop3_example_is_what_the_hub_sends() -> None:
    # pop3.rst shows a UTF-8 message as a client without UTF8 gets it; its
    # Received field once had a "(localhost [127.0.0.1])" the hub never
    # writes and a folding it does not make
    import calendar
    import re

    from txmailhub.address import Address
    from txmailhub.downgrade import downgrade_header
    from txmailhub.smtp.received import received

    text = (ROOT / "docs" / "pop3.rst").read_text()
    anchor = re.search(r"as\s+stored\s+\(an\s+``8bit``\s+body\s+reaches\s+legacy\s+"
                       r"clients,\s+as\s+ever\)::", text)
    assert anchor, "the downgraded example's lead-in moved"
    block = text[anchor.end():]
    shown = re.findall(r"^    S: (.*)$", block.split("Field by field")[0], re.M)
    first, fields = shown[0], shown[1:]
    when = calendar.timegm((2026, 11, 29, 20, 23, 11))
    stored = (b"Return-Path: <\xc3\xa9mile@remote.test>\n"
              + received(hostname="mail.example.org", helo="client.test", client_ip="127.0.0.1",
                         protocol="UTF8SMTP", message_id="1A2B", when=when,
                         recipient=Address("jörg", "example.org"))
              + "From: Jörg <jörg@example.org>\nSubject: Grüße\n".encode())
    sent = downgrade_header(stored).decode("ascii").splitlines()
    assert re.fullmatch(r"\+OK \d+ octets", first)
    assert fields == sent


def test_the_embedding_delivery_example_stores_what_smtp_would(tmp_path: Path) -> None:
    """embedding.rst's "deliver a message it generated itself", run as
    shown: the copy in joe's mailbox starts with the Return-Path that
    final delivery adds (RFC 5321 4.4), as every copy SMTP stores does.
    The example once wrote the bare message, and the mailbox lost the
    envelope sender."""
    from txmailhub.components import Components
    from txmailhub.testing import MemoryMailboxStore, MemorySpooler, QueueSpy, StaticRouter

    text = (ROOT / "docs" / "embedding.rst").read_text()
    block = text.split("through the same path SMTP uses", 1)[1].split("::\n", 1)[1]
    code = "\n".join(line[4:] for line in block.split("\n\n``d`` fires", 1)[0].splitlines())
    settings = config.load_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        f'state_dir = "{tmp_path}"\n', str(tmp_path / "mailhub.toml"))
    spooler = MemorySpooler()
    store = MemoryMailboxStore(spooler)
    components = Components(settings=settings, reactor=None, store=store,
                            router=StaticRouter({"joe": None}), spooler=spooler,
                            queue=QueueSpy(), portal=None)
    hub = argparse.Namespace(components=components)
    scope: dict = {"hub": hub}
    exec(compile(code, "docs/embedding.rst", "exec"), scope)
    replies = scope["d"].result
    assert [r.code for r in replies.values()] == [250]
    [stored] = store.messages("joe@example.org")
    assert stored.startswith(b"Return-Path: <reports@example.org>\n"), stored
    assert stored.endswith(b"\nSubject: report\n\nAll good.\n")


def test_the_embedding_testing_example_runs_as_shown() -> None:
    """embedding.rst's "Testing against the hub" example, run verbatim: a
    downstream project copies it into its tests.  The section had only
    prose, with the factory's name cut across a line by the inline literal."""
    text = (ROOT / "docs" / "embedding.rst").read_text()
    section = text.split("Testing against the hub\n", 1)[1].split("\nLogging\n", 1)[0]
    block = section.split("read back over\nPOP3::\n", 1)[1].split("\n\nPOP3 takes", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    assert "SMTPFactory(c)" in code and "POP3Factory(c)" in code
    scope: dict = {}
    exec(compile(code, "docs/embedding.rst", "exec"), scope)
    [stored] = scope["store"].messages("joe@example.org")  # no DELE: kept
    assert stored.startswith(b"Return-Path: <ann@example.net>\n")


def test_the_unix_listener_of_sendmail_rst_says_how_its_folder_is_made() -> None:
    """sendmail.rst's ``unix:`` listener example: ``check`` refuses it while
    its folder is missing (in the words the page quotes), and the page says
    how each set-up of deployment.rst makes that folder -- the systemd unit
    has no ``/run/txmailhub`` of its own, and its ``ProtectSystem=strict``
    leaves ``/run`` read-only, so ``RuntimeDirectory=`` must name it."""
    import tomllib

    text = " ".join((ROOT / "docs" / "sendmail.rst").read_text().split())
    m = re.search(r"``(listen = \[[^`]*\"unix:[^`]*\])``", text)
    assert m, "sendmail.rst shows no unix: listener"
    [unix] = [e for e in tomllib.loads(m.group(1))["listen"] if e.startswith("unix:")]
    folder = Path(unix.split(":", 1)[1]).parent
    if not folder.is_dir():
        why = config.endpoint_readiness(unix)
        assert why and why.endswith(f"the folder {folder} does not exist")
        assert f"``the folder {folder} does not exist``" in text
    assert folder.parent == Path("/run") and f"``RuntimeDirectory={folder.name}``" in text
    deployment = (ROOT / "docs" / "deployment.rst").read_text()
    assert re.search(rf"^ *install -d .*\s{re.escape(str(folder))}\s", deployment, re.M)


def test_the_testing_doubles_said_to_hold_their_answers_do() -> None:
    # embedding.rst said "each double" could hold its answers until
    # release() or fail: StaticRouter, one of the four it names, has neither
    # (an IRecipientRouter answers at once)
    import inspect

    from twisted.internet.defer import Deferred

    from txmailhub import testing
    from txmailhub.address import parse_address
    from txmailhub.envelope import Envelope, SpooledMessage

    text = " ".join((ROOT / "docs" / "embedding.rst").read_text().split())
    sentence = text.split("can also *hold* them", 1)[0].rsplit(". ", 1)[1]
    named = re.findall(r"``(\w+)``", sentence)
    assert named, sentence
    assert "StaticRouter" not in named
    message = SpooledMessage("memory-spool/1", 1, 2)
    for name in named:
        double = getattr(testing, name)
        assert "hold" in inspect.signature(double).parameters, name
        held = double(hold=True)
        if name == "MemorySpooler":
            answer = held.open().finish()
        elif name == "QueueSpy":
            answer = held.enqueue(Envelope(sender=None, recipients=()), message)
        elif name == "StaticResolver":
            answer = held.lookupMailExchange("example.org")
        else:
            held.add("joe@example.org", b"x")
            box = held.open_mailbox(parse_address("joe@example.org")).result
            answer = box.delete([0])
        got: list = []
        assert isinstance(answer, Deferred), name
        answer.addBoth(got.append)
        assert got == [], name
        held.release()
        assert len(got) == 1, name


def test_the_log_line_limit_the_docs_give_is_the_hubs() -> None:
    from txmailhub.logsafe import CUT
    from txmailhub.logtext import LINE_LOG_MAX, capped

    deployment = " ".join((ROOT / "docs" / "deployment.rst").read_text().split())
    assert (f"is over {LINE_LOG_MAX:,} octets ({LINE_LOG_MAX // 1024} KiB) of UTF-8"
            in deployment)
    assert f"ends with ``{CUT}``" in deployment
    embedding = " ".join((ROOT / "docs" / "embedding.rst").read_text().split())
    assert f"cut every line to {LINE_LOG_MAX // 1024} KiB" in embedding
    assert "``txmailhub.logtext.capped(line)``" in embedding and capped("x") == "x"


def test_the_systemd_unit_is_named_alike_wherever_the_docs_use_it() -> None:
    """deployment.rst installs one unit; every ``systemctl`` and
    ``journalctl -u`` command of the docs, and the fail2ban ``journalmatch``,
    name that unit.  The upgrading section said ``systemctl status
    txmailhub``, a unit no set-up of the docs has ("Unit txmailhub.service
    could not be found"), for the check that the old hub has stopped."""
    deployment = (ROOT / "docs" / "deployment.rst").read_text()
    m = re.search(r"``/etc/systemd/system/([\w@-]+)\.service``::", deployment)
    assert m, "deployment.rst shows no systemd unit"
    unit = m.group(1)
    named = []
    for path in RST:
        text = " ".join(path.read_text().split())
        for command in re.findall(r"``((?:systemctl|journalctl) [^`]*)``", text):
            for part in command.split("&&"):
                # the words left once the options (``-s HUP``, ``--now``) are out
                words = re.sub(r"\s-[a-z]\s+\S+|\s--?[\w-]+", " ", f" {part} ").split()
                if words[0] == "journalctl":
                    unit_words = re.findall(r"-u (\S+)", part)
                elif len(words) > 2 and words[1] in ("status", "enable", "start", "stop",
                                                     "restart", "reload", "kill"):
                    unit_words = words[2:]
                else:
                    continue
                named += [(path.name, part.strip(), w) for w in unit_words]
        named += [(path.name, "journalmatch", w)
                  for w in re.findall(r"_SYSTEMD_UNIT=([\w@.-]+)", text)]
    assert len(named) >= 4, named
    wrong = [n for n in named if n[2].removesuffix(".service") != unit]
    assert not wrong, f"the unit is {unit}.service (deployment.rst): {wrong}"


def _example_config(tmp_path: Path, settings: list[tuple[str, str, str]]) -> Any:
    """etc/mailhub.toml as README.rst has it copied, its files made under
    ``tmp_path`` (for /etc/txmailhub and /var/lib/txmailhub), with each
    ``(section, key, value)`` written into it as an admin edits it: the
    key's line replaced, or a new line under the section's."""
    from conftest import make_certificate

    text = (ROOT / "etc" / "mailhub.toml").read_text()
    text = text.replace("/etc/txmailhub", str(tmp_path)).replace(
        "/var/lib/txmailhub", str(tmp_path / "state"))
    make_certificate(tmp_path, "mail.example.org")
    (tmp_path / "aliases").write_text("")
    for section, key, value in settings:
        head = re.search(rf"^\[{section}\][^\n]*\n", text, re.M)
        assert head, f"the example has no [{section}]"
        end = re.search(r"^\[", text[head.end():], re.M)
        body_end = head.end() + (end.start() if end else len(text) - head.end())
        body = text[head.end():body_end]
        line = f"{key} = {value}"
        body, n = re.subn(rf"^{key} *=[^\n]*$", line, body, flags=re.M)
        if not n:
            body = f"{line}\n{body}"
        text = text[:head.end()] + body + text[body_end:]
    return config.load_text(text, str(tmp_path / "mailhub.toml"))


def test_the_ports_advice_turns_pop3_off_in_the_example_config(tmp_path: Path) -> None:
    """deployment.rst, "Ports": what a site whose users read mail elsewhere
    sets, written into the example configuration, leaves no POP3 listener.
    It said ``[pop3] listen = []`` alone, and the example's ``tls_listen``
    kept port 995 serving POP3."""
    text = " ".join((ROOT / "docs" / "deployment.rst").read_text().split())
    advice = text.split("Run only what you need", 1)[1].split("Running under systemd", 1)[0]
    settings = re.findall(r"``\[(\w+)\] (\w+) = ([^`]+)``", advice)
    assert settings, advice
    before = _example_config(tmp_path / "before", [])
    assert before.pop3.listen and before.pop3.tls_listen
    after = _example_config(tmp_path / "after", settings)
    assert (after.pop3.listen, after.pop3.tls_listen) == ((), ()), settings
    # and nothing else goes
    assert after.smtp.listen == before.smtp.listen
    assert after.submission == before.submission


def test_the_example_configs_expn_comment_says_vrfy_lists_the_members_too(
        tmp_path: Path) -> None:
    """etc/mailhub.toml turns EXPN off because it lists an alias's members,
    outside addresses included; with its VRFY left on, ``VRFY staff`` lists
    the very same addresses.  The comment said nothing of it, and an admin
    who copied the example took the members for hidden."""
    from types import SimpleNamespace

    from test_smtp_server import Driver

    from txmailhub.router import Router, parse_aliases

    example = _example_config(tmp_path, [])
    users = SimpleNamespace(contains=lambda a: a.key == "joe@example.org")
    router = Router(("example.org",), users)
    router.aliases, problems = parse_aliases("staff: joe, bob@elsewhere.test\n", "example.org")
    assert problems == []
    d = Driver(router=router, vrfy=example.smtp.vrfy, expn=example.smtp.expn)
    d.send("EHLO c.test\r\n")
    expn, vrfy = d.send("EXPN staff\r\n"), d.send("VRFY staff\r\n")
    shown = [line for line in expn + vrfy if "bob@elsewhere.test" in line]
    text = (ROOT / "etc" / "mailhub.toml").read_text()
    comment = " ".join(line.split("#", 1)[1].strip() for line in
                       text.split("\nexpn = ", 1)[1].split("\n[", 1)[0].splitlines()
                       if "#" in line)
    if "members" in comment and not example.smtp.expn:
        assert expn[0].startswith("252")
        if shown:  # VRFY gave them away: the comment must say so
            assert "VRFY" in comment and "vrfy = false" in comment, (vrfy, comment)


def test_the_twist_command_lines_put_each_option_where_twist_takes_it() -> None:
    """deployment.rst names twist's ``--log-file`` and ``--log-format``: a
    command line shows where they go, and every ``twist`` command line of
    the docs has twist's options before ``mailhub`` and the hub's after it.
    The page gave ``twist mailhub --config PATH`` and "its ``--log-file``",
    and ``twist mailhub --config ... --log-file ...`` is refused (``Error:
    option --log-file not recognized``)."""
    from twisted.application.twist._options import TwistOptions

    twist_opts = {o.rstrip("=") for o in TwistOptions().longOpt}
    hub_opts = {o.rstrip("=") for o in tap.Options().longOpt}
    lines = []
    for path in RST:
        text = " ".join(path.read_text().split())
        lines += [(path.name, m) for m in re.findall(r"``(twist [^`]*mailhub[^`]*)``", text)]
    assert lines
    for name, line in lines:
        words = line.split()
        at = words.index("mailhub")
        before = {w[2:].split("=")[0] for w in words[1:at] if w.startswith("--")}
        after = {w[2:].split("=")[0] for w in words[at + 1:] if w.startswith("--")}
        assert before <= twist_opts and after <= hub_opts, (name, line)
    shown = {w[2:].split("=")[0] for _name, line in lines for w in line.split()}
    deployment = (ROOT / "docs" / "deployment.rst").read_text()
    for option in sorted(twist_opts - {"help", "version"}):
        if f"``--{option}" in deployment:
            assert option in shown, f"no twist command line shows --{option}"


def test_the_twistd_command_lines_put_each_option_where_twistd_takes_it() -> None:
    """Every ``twistd ... mailhub ...`` of the docs, inline or in a
    literal block, has twistd's options before ``mailhub`` and the hub's
    after it.  Two pages said ``twistd mailhub --logfile``, which twistd
    refuses (the hub's options have no ``--logfile``)."""
    from twisted.scripts.twistd import ServerOptions

    twistd, hub = ServerOptions(), tap.Options()

    def split(words: list[str], options: Any) -> tuple[list[str], list[str]]:
        """The options ``options`` does not know, and the words after its
        own (``mailhub`` and on, for twistd's)."""
        valued = {o[:-1] for o in options.longOpt if o.endswith("=")}
        longs = {o.rstrip("=") for o in options.longOpt}
        shorts = options.shortOpt
        unknown, i = [], 0
        while i < len(words) and words[i].startswith("-"):
            word = words[i]
            if word.startswith("--"):
                name = word[2:].split("=", 1)[0]
                if name not in longs:
                    unknown.append(word)
                i += 2 if name in valued and "=" not in word else 1
                continue
            takes = False  # -n, -ny: flags together; -c PATH, -cPATH
            for j, c in enumerate(word[1:]):
                if c not in shorts.replace(":", ""):
                    unknown.append(word)
                    break
                if f"{c}:" in shorts:
                    takes = j == len(word) - 2
                    break
            i += 2 if takes else 1
        return unknown, words[i:]

    lines = []
    for path in RST:
        text = path.read_text()
        lines += [(path.name, m) for m in
                  re.findall(r"``((?:\S*/)?twistd [^`]*)``", " ".join(text.split()))]
        lines += [(path.name, " ".join(m.replace("\\\n", " ").split())) for m in
                  re.findall(r"^ +(?:\S*=)?(?:\S*/)?twistd (?:.*\\\n)*.*$", text, re.M)]
    lines = [(name, line) for name, line in lines
             if "mailhub" in line.split() and ".tac" not in line]  # not a .tac's
    assert len(lines) >= 5, lines
    for name, line in lines:
        unknown, rest = split(line.split()[1:], twistd)
        assert not unknown and rest[:1] == ["mailhub"], (name, line, unknown)
        unknown, rest = split(rest[1:], hub)
        assert not unknown and not [w for w in rest if w.startswith("-")], (name, line)


def test_the_tac_checks_are_those_of_twistd_mailhub_only_under_twistd_y(tmp_path: Path) -> None:
    # settings_or_exit called anywhere but while twistd -y loads a .tac
    # (``twistd mailhub``'s options, an application, a test) finds no
    # options of twistd's to judge; under --chroot there is nothing to judge
    from txmailhub import tap

    assert tap._twistd_loading_tac() is None
    assert tap.tac_run_problems(None) == []
    assert tap.tac_run_problems({"chroot": str(tmp_path), "rundir": str(tmp_path / "none"),
                                 "pidfile": str(tmp_path / "none" / "pid")}) == []
    assert tap.tac_run_problems({"rundir": str(tmp_path / "none"), "pidfile": "",
                                 "nodaemon": True}) == [
        f"mailhub: --rundir {tmp_path / 'none'} cannot be entered: it does not exist"]


# --- docs/migrating.rst, its steps run as shown ---------------------------

MIGRATING = ROOT / "docs" / "migrating.rst"


def _block(after: str) -> str:
    """The literal block that the paragraph ending in ``after`` (and
    ``::``) introduces in docs/migrating.rst, unindented."""
    text = MIGRATING.read_text()
    assert after + "::\n\n" in text, after
    block = text.split(after + "::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip("\n") + "\n"


def _migration_site(tmp_path: Path) -> Path:
    """A hub's configuration for the steps, stopped: its paths those of
    docs/deployment.rst moved under ``tmp_path``."""
    (tmp_path / "users.d").mkdir(mode=0o700)
    (tmp_path / "var" / "mail").mkdir(parents=True)
    config_path = tmp_path / "mailhub.toml"
    config_path.write_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org", "example.net"]\n'
        'state_dir = "var"\n[users]\nfile = "users.d/users"\n[aliases]\nfile = "aliases"\n'
        '[smtp]\nlisten = []\n[submission]\nlisten = []\n[pop3]\nlisten = []\n')
    (tmp_path / "aliases").write_text("")
    return config_path


def _run_step(tmp_path: Path, script: str, replace: dict[str, str]) -> str:
    """A shell step of docs/migrating.rst, its paths and commands the
    test's (``sudo -u mailhub`` dropped: the test's user is the hub's)."""
    import subprocess
    import sys

    config_path = tmp_path / "mailhub.toml"
    for old, new in {
        "sudo -u mailhub /opt/txmailhub/bin/mailhub -c /etc/txmailhub/mailhub.toml":
            f"{sys.executable} -m txmailhub -c {config_path}",
        "sudo -u mailhub /opt/txmailhub/bin/python": sys.executable,
        "sudo -u mailhub ": "",
        "/etc/txmailhub/users.d/users": str(tmp_path / "users.d" / "users"),
        "/etc/txmailhub/aliases": str(tmp_path / "aliases"),
        "/var/lib/txmailhub": str(tmp_path / "var"),
        **replace,
    }.items():
        script = script.replace(old, new)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (script, done.stderr)
    return done.stderr


def _check(config_path: Path) -> tuple[int, list[str]]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "txmailhub", "--config", str(config_path),
                           "check"], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stderr.splitlines() + done.stdout.splitlines()


def test_the_dovecot_passwd_file_step_keeps_sha512_crypt_passwords(tmp_path: Path) -> None:
    """Users from a Dovecot passwd-file: a SHA512-CRYPT user logs in with
    the old password; a {PLAIN} one is named by ``check`` in the line the
    page shows, and logs in once ``user passwd`` set the password."""
    from txmailhub.address import Address
    from txmailhub.sha_crypt import sha512_crypt
    from txmailhub.users import UsersDB

    config_path = _migration_site(tmp_path)
    passwd_file = tmp_path / "dovecot-users"
    alice_hash = sha512_crypt(b"alice's old pw", "Gp9RjZWS0BBc2J/x", 20000, True)
    passwd_file.write_text(
        f"alice:{{SHA512-CRYPT}}{alice_hash}:1000:1000::/home/alice::\n"
        "bob@example.org:{PLAIN}bobs-pw:::::\n"
        "# a comment\ncarol::1002:1002::/home/carol::\n")
    _run_step(tmp_path, _block("hash into the users file, before any ``mailhub user`` command, "
                               "as the\nhub's user"),
              {"/etc/dovecot/users": str(passwd_file)})
    users = tmp_path / "users.d" / "users"
    db = UsersDB(str(users), "example.org")
    assert db.check_password(Address("alice", "example.org"), "alice's old pw")
    assert not db.check_password(Address("carol", "example.org"), "")
    shown = _block("by its scheme and without showing it").strip().replace(
        "/etc/txmailhub/users.d/users", str(users))
    status, lines = _check(config_path)
    assert shown in lines, lines
    assert status == 2
    _run_step(tmp_path, "printf 'bobs-pw\\n' | sudo -u mailhub /opt/txmailhub/bin/mailhub "
                        "-c /etc/txmailhub/mailhub.toml user passwd bob --password-stdin\n", {})
    assert UsersDB(str(users), "example.org").check_password(Address("bob", "example.org"),
                                                             "bobs-pw")
    assert _check(config_path)[0] == 0


def test_the_twistd_mail_password_steps_add_every_user(tmp_path: Path) -> None:
    """``twistd mail``'s password file and a domain's ``passwd`` DirDBM
    (made by Twisted itself), each user given to ``mailhub user add``."""
    from twisted.persisted import dirdbm

    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    _migration_site(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text("ann:ann's secret 1\nben:p@ss:with colon\n")
    domain = tmp_path / "twistd-example.org"
    domain.mkdir()
    dbm = dirdbm.open(str(domain / "passwd"))
    dbm[b"dave"] = b"daves twistd password"
    dbm[b"eve.long-name_x"] = b"eve pw 2024!"
    _run_step(tmp_path, _block("Give each to ``mailhub user add``"),
              {"/etc/twistd-mail/passwords": str(passwords),
               "/var/mail/example.org": str(domain)})
    db = UsersDB(str(tmp_path / "users.d" / "users"), "example.org")
    for name, password in [("ann", "ann's secret 1"), ("ben", "p@ss:with colon"),
                           ("dave", "daves twistd password"), ("eve.long-name_x", "eve pw 2024!")]:
        assert db.check_password(Address(name, "example.org"), password), name


def test_the_twistd_mail_password_step_adds_a_last_line_without_its_newline(
        tmp_path: Path) -> None:
    """A password file whose last line has no newline (an editor's), which
    ``twistd mail`` reads whole: its last user is added too."""
    from twisted.persisted import dirdbm

    from txmailhub.address import Address
    from txmailhub.users import UsersDB

    _migration_site(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text("ann:ann's secret 1\ncarl:the last line")
    domain = tmp_path / "twistd-example.org"
    domain.mkdir()
    dirdbm.open(str(domain / "passwd"))[b"dave"] = b"daves twistd password"
    _run_step(tmp_path, _block("Give each to ``mailhub user add``"),
              {"/etc/twistd-mail/passwords": str(passwords),
               "/var/mail/example.org": str(domain)})
    db = UsersDB(str(tmp_path / "users.d" / "users"), "example.org")
    assert db.check_password(Address("ann", "example.org"), "ann's secret 1")
    assert db.check_password(Address("carl", "example.org"), "the last line")


def test_the_twistd_mail_uidl_step_keeps_the_uidls_twistd_mail_gave(tmp_path: Path) -> None:
    """A Maildir ``twistd mail`` delivered into (its names), one message
    moved to ``cur/`` by a reader: the hub lists each under the UIDL
    twistd mail's POP3 gave it; a second run refuses the Maildir."""
    from twisted.mail import maildir as twisted_maildir

    from txmailhub.store.mailbox import scan

    _migration_site(tmp_path)
    md = tmp_path / "var" / "mail" / "example.org" / "alice"
    md.parent.mkdir()
    twisted_maildir.initializeMaildir(str(md))
    for i in range(3):
        name = twisted_maildir._generateMaildirName().decode()
        (md / "new" / name).write_bytes(f"Subject: {i}\n\nbody {i}\n".encode())
    first = sorted((md / "new").iterdir())[0]
    first.rename(md / "cur" / (first.name + ":2,S"))
    box = twisted_maildir.MaildirMailbox(str(md).encode())
    theirs = {box.getUidl(i) for i in range(len(box.listMessages()))}
    assert len(theirs) == 3
    script = _block("starts, as the hub's user")
    _run_step(tmp_path, script, {})
    assert {m.uid for m in scan(str(md))} == theirs
    import subprocess
    import sys

    again = subprocess.run(
        ["bash", "-c", script.replace("sudo -u mailhub /opt/txmailhub/bin/python",
                                      sys.executable)
         .replace("/var/lib/txmailhub", str(tmp_path / "var"))],
        capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "FileExistsError" in again.stderr


def test_the_aliases_check_refuses_is_what_check_says(tmp_path: Path) -> None:
    config_path = _migration_site(tmp_path)
    aliases = tmp_path / "aliases"
    aliases.write_text(_block("until they are changed"))
    (tmp_path / "users.d" / "users").write_text("alice scrypt$16384$8$1$AA==$AA==\n")
    status, lines = _check(config_path)
    shown = _block("``check`` says of these").replace("/etc/txmailhub/aliases", str(aliases))
    assert status == 2
    assert lines == shown.splitlines()


def test_the_postfix_virtual_step_makes_aliases_check_takes(tmp_path: Path) -> None:
    config_path = _migration_site(tmp_path)
    virtual = tmp_path / "virtual"
    virtual.write_text(
        "# virtual(5)\nexample.net anything\ninfo@example.net alice\n"
        "sales@example.net\tbob, carol@elsewhere.test\n@example.net alice\n")
    (tmp_path / "users.d" / "users").write_text(
        "alice scrypt$16384$8$1$AA==$AA==\nbob scrypt$16384$8$1$AA==$AA==\n")
    _run_step(tmp_path, _block("catch-alls are left out as above"),
              {"/etc/postfix/virtual": str(virtual)})
    assert (tmp_path / "aliases").read_text() == (
        "info@example.net: alice\nsales@example.net: bob, carol@elsewhere.test\n")
    assert _check(config_path) == (0, [f"{config_path}: ok"])


def test_the_upgrade_step_that_keeps_the_hubs_uidls_makes_the_file_as_the_hubs_user(
        tmp_path: Path) -> None:
    """docs/deployment.rst, "Upgrading and going back": the loop makes an
    empty ``.txmailhub-uidls`` as the hub's user (root's would be a file
    the hub reads but cannot replace), in each Maildir with Dovecot's list
    and neither of the hub's files, and nowhere else."""
    import subprocess

    text = (ROOT / "docs" / "deployment.rst").read_text()
    after = "(as root, the hub's\nuser owning the files)::\n\n"
    assert after in text
    lines = []
    for line in text.split(after, 1)[1].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    step = "\n".join(lines).strip("\n") + "\n"
    assert "sudo -u mailhub touch " in step
    mail = tmp_path / "mail"
    for md, files in {"example.org/joe": ["dovecot-uidlist"],
                      "example.org/ann": ["dovecot-uidlist", ".txmailhub-sizes"],
                      "example.net/bob": [],
                      "example.net/kim": ["dovecot-uidlist", ".txmailhub-uidls"]}.items():
        (mail / md).mkdir(parents=True)
        for name in files:
            (mail / md / name).write_text("x")
    step = step.replace("/var/lib/txmailhub/mail", str(mail)).replace("sudo -u mailhub ", "")
    subprocess.run(["sh", "-c", step], check=True, timeout=60)
    made = sorted(str(p.relative_to(mail)) for p in mail.glob("*/*/.txmailhub-uidls"))
    assert made == ["example.net/kim/.txmailhub-uidls", "example.org/joe/.txmailhub-uidls"]
    assert (mail / "example.org/joe/.txmailhub-uidls").read_text() == ""
    assert (mail / "example.net/kim/.txmailhub-uidls").read_text() == "x"
