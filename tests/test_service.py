"""MailHub assembly in memory: what it tells whoever starts it."""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from txmailhub.config import load_text
from txmailhub.service import ListenerService, MailHub

# no attempt marker left held by a test (conftest.no_marker_descriptor_left)
pytestmark = pytest.mark.usefixtures("no_marker_descriptor_left")

ONE_SMTP_LISTENER = (
    '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
    '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1"]\n[submission]\nlisten = []\n'
    '[pop3]\nlisten = []\n'
)


def hub_of(tmp_path: Path, text: str) -> tuple[MailHub, MemoryReactorClock]:
    """A hub of the config ``text`` (written to ``tmp_path``/hub.toml) on a
    memory reactor, not started."""
    config = tmp_path / "hub.toml"
    config.write_text(text)
    reactor = MemoryReactorClock()
    return MailHub(load_text(config.read_text(), str(config)), reactor=reactor), reactor


def one_listener_hub(tmp_path: Path) -> tuple[MailHub, MemoryReactorClock]:
    """A hub of ``ONE_SMTP_LISTENER`` in ``tmp_path``, not started."""
    return hub_of(tmp_path, ONE_SMTP_LISTENER)


def test_start_logs_the_users_file_problems(tmp_path: Path, log_events) -> None:
    (tmp_path / "users").write_text("joe@example.org notahash\ngarbage\n")
    hub, reactor = one_listener_hub(tmp_path)
    try:
        hub.startService()
        [(port, _factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface) == (25, "127.0.0.1")
        problems = [e["problem"] for e in log_events
                    if e.get("log_format", "").startswith("users")]
        users = str(tmp_path / "users")
        assert problems == [
            f"{users}:1: joe@example.org cannot log in: the password hash is not of the "
            "form scrypt$N$r$p$salt$key (nor {SHA512-CRYPT}$6$salt$hash)",
            f"{users}:2: expected '<address> <hash> [apop=<secret>]'",
        ]
    finally:
        hub.stopService()


def test_start_warns_of_a_certificate_not_valid_for_the_hostname(tmp_path: Path,
                                                                 log_events) -> None:
    from conftest import make_certificate
    from twisted.logger import formatEvent

    cert, key = make_certificate(tmp_path / "tls", "mx.example.net")
    hub, reactor = hub_of(tmp_path, ONE_SMTP_LISTENER
                          + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    try:
        hub.startService()
        assert len(reactor.tcpServers) == 1  # it starts all the same
        warned = [formatEvent(e) for e in log_events
                  if e.get("log_namespace") == "txmailhub.service"
                  and e["log_level"].name == "warn"]
        assert [w for w in warned if "not valid for" in w] == [
            f"config: {tmp_path / 'hub.toml'}: [tls] certificate {cert} is not valid for "
            "mail.example.org ([hub] hostname), only for mx.example.net, 127.0.0.1: clients "
            "that check the name (mail programs, the sending servers that verify) refuse "
            "TLS; get one that names mail.example.org, or set [hub] hostname to a name it "
            "is valid for (at line 11)"], warned  # the line of [tls] certificate
    finally:
        hub.stopService()


def test_a_renewal_for_another_name_than_the_hostname_is_warned_of_at_run_time(
        tmp_path: Path, log_events) -> None:
    # the start's check judges the certificate the hub starts with; the
    # listeners' TLS judges a renewal it takes later against the same name
    import os

    from conftest import make_certificate
    from twisted.logger import formatEvent

    cert, key = make_certificate(tmp_path / "tls", "mail.example.org")
    hub, _reactor = hub_of(tmp_path, ONE_SMTP_LISTENER
                           + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    try:
        hub.startService()
        new_cert, new_key = make_certificate(tmp_path / "renewed", "mx.example.net")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        assert hub.components.tls.reload()  # SIGHUP: taken all the same
        warned = [formatEvent(e) for e in log_events if e["log_level"].name == "warn"]
        assert [w for w in warned if "not valid for" in w] == [
            f"TLS: certificate {cert} is not valid for mail.example.org ([hub] hostname), "
            "only for mx.example.net, 127.0.0.1: clients that check the name (mail "
            "programs, the sending servers that verify) refuse TLS; get one that names "
            "mail.example.org, or set [hub] hostname to a name it is valid for"], warned
    finally:
        hub.stopService()


def test_a_renewal_judged_against_the_machines_name_says_so(
        tmp_path: Path, log_events, monkeypatch) -> None:
    # without [hub] hostname the hub's name is the machine's: the warning
    # of a renewal taken at run time says so, as the start's does, rather
    # than blame a [hub] hostname the config does not have
    import os
    import socket

    from conftest import make_certificate
    from twisted.logger import formatEvent

    monkeypatch.setattr(socket, "getfqdn", lambda *a: "mail.example.org")
    cert, key = make_certificate(tmp_path / "tls", "mail.example.org")
    hub, _reactor = hub_of(tmp_path, ONE_SMTP_LISTENER.replace(
        'hostname = "mail.example.org"\n', "")
        + f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n')
    assert hub.settings.hub.hostname == "mail.example.org"
    try:
        hub.startService()
        new_cert, new_key = make_certificate(tmp_path / "renewed", "mx.example.net")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        assert hub.components.tls.reload()
        warned = [formatEvent(e) for e in log_events if e["log_level"].name == "warn"]
        assert [w for w in warned if "not valid for" in w] == [
            f"TLS: certificate {cert} is not valid for mail.example.org ([hub] hostname "
            "is not set: the machine's name), only for mx.example.net, 127.0.0.1: "
            "clients that check the name (mail programs, the sending servers that "
            "verify) refuse TLS; get one that names mail.example.org, or set [hub] "
            "hostname to a name it is valid for"], warned
    finally:
        hub.stopService()


def test_the_listeners_factories_leave_twisteds_factory_lines_out(tmp_path: Path,
                                                                  log_events) -> None:
    # "Starting factory <...SMTPFactory object at 0x...>" at every start and
    # stop means nothing to a new user: the hub logs its own line, which
    # names the role and the port; the factories (the implicit-TLS
    # listeners' wrapper too) are not noisy
    from conftest import make_certificate
    from twisted.logger import formatEvent

    cert, key = make_certificate(tmp_path / "tls", "mail.example.org")
    hub, reactor = hub_of(tmp_path, (
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
        '[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n'
        '[submission]\nlisten = ["tcp:2587:interface=127.0.0.1"]\n'
        'tls_listen = ["tcp:2465:interface=127.0.0.1"]\n'
        '[pop3]\nlisten = ["tcp:2110:interface=127.0.0.1"]\n'
        'tls_listen = ["tcp:2995:interface=127.0.0.1"]\n'))
    try:
        hub.startService()
        factories = [factory for _port, factory, _backlog, _interface in reactor.tcpServers]
        assert len(factories) == 5
        for factory in factories:  # what a real port does when it starts and stops
            factory.doStart()
            factory.doStop()
        said = [formatEvent(e) for e in log_events]
        assert not [line for line in said if "factory" in line.lower()], said
        # (a memory reactor's port says 0.0.0.0 whatever the interface)
        listening = sorted(line.replace(" listening on 0.0.0.0", "") for line in said
                           if " listening on " in line)
        assert listening == ["pop3 (implicit TLS):2995", "pop3:2110", "smtp:2525",
                             "submission (implicit TLS):2465", "submission:2587"], said
    finally:
        hub.stopService()


def test_the_hub_routes_by_an_alias_mailhub_alias_add_made_without_a_restart(
        tmp_path: Path) -> None:
    # the running hub re-reads the aliases file when it changes
    # (txmailhub.filestamp): what `mailhub alias` writes takes effect at
    # the next RCPT, as docs/configuration.rst says
    import io

    from txmailhub.address import Address
    from txmailhub.cli import main
    from txmailhub.errors import Rejected

    (tmp_path / "aliases").write_text("# ours\n")
    hub, _reactor = hub_of(tmp_path, ONE_SMTP_LISTENER + '[aliases]\nfile = "aliases"\n')
    config = str(tmp_path / "hub.toml")

    def mailhub(*argv: str) -> int:
        return main(["--config", config, *argv], out=io.StringIO(), err=io.StringIO(),
                    stdin=io.StringIO("mellow-quartz-harbour\n"))

    hub.startService()
    try:
        assert mailhub("user", "add", "joe", "--password-stdin") == 0
        router = hub.components.router
        staff = Address("staff", "example.org")
        with pytest.raises(Rejected) as info:
            router.resolve(staff)
        assert info.value.reply.code == 550
        assert mailhub("alias", "add", "staff", "joe", "far@remote.test") == 0
        assert router.resolve(staff) == (
            (Address("joe", "example.org"),), (Address("far", "remote.test"),))
        assert mailhub("alias", "set", "staff", "\\joe") == 0
        assert router.resolve(staff) == ((Address("joe", "example.org"),), ())
        assert mailhub("alias", "remove", "staff") == 0
        with pytest.raises(Rejected):
            router.resolve(staff)
    finally:
        hub.stopService()


def test_start_and_stop_are_logged_with_the_config_warnings(tmp_path: Path) -> None:
    from twisted.logger import formatEvent

    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        '[smtp]\nlisten = []\nidle_timeout = "1m"\n[submission]\nlisten = []\n'
        '[pop3]\nlisten = []\n'
    )
    settings = load_text(config.read_text(), str(config))
    assert settings.warnings  # below RFC 5321's 5 minutes
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub = MailHub(settings, reactor=MemoryReactorClock())
        hub.startService()
        hub.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "txmailhub.service"]
    assert lines[0] == f"config: {settings.warnings[0]}"
    assert lines[1].startswith("txmailhub started: ")
    assert lines[-2:] == ["txmailhub stopping",
                          "txmailhub stopped: spool closed, queued mail stays queued"]


def test_a_hub_that_never_ran_stops_without_saying_it_stopped(tmp_path: Path) -> None:
    # "txmailhub stopping" and "stopped" for a hub never started, or whose
    # start failed (and rolled itself back), told of a stop that never was
    from twisted.logger import formatEvent

    from txmailhub.service import StartError

    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
        '[smtp]\nlisten = []\n[submission]\nlisten = []\n[pop3]\nlisten = []\n'
    )
    settings = load_text(config.read_text(), str(config))
    first = MailHub(settings, reactor=MemoryReactorClock())
    second = MailHub(settings, reactor=MemoryReactorClock())
    events: list[dict] = []

    def said() -> list[str]:
        lines = [formatEvent(e) for e in events
                 if e.get("log_namespace") == "txmailhub.service"]
        del events[:]
        return lines

    globalLogPublisher.addObserver(events.append)
    try:
        never = MailHub(settings, reactor=MemoryReactorClock())
        never.stopService()
        assert said() == []
        first.startService()
        said()
        with pytest.raises(StartError):  # the state directory is the first one's
            second.privilegedStartService()
            second.startService()
        said()
        second.stopService()
        assert said() == []
        # the hub that ran still says both, and its state directory is free after
        first.stopService()
        assert said() == ["txmailhub stopping",
                          "txmailhub stopped: spool closed, queued mail stays queued"]
        second.startService()
        assert said()[-1].startswith("txmailhub started: ")
        second.stopService()
        assert said()[-1].startswith("txmailhub stopped: ")
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_stopping_the_hub_says_421_to_open_smtp_sessions(tmp_path: Path) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    hub, reactor = hub_of(
        tmp_path,
            '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
            '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1"]\n[submission]\nlisten = []\n'
            '[pop3]\nlisten = []\n'
    )
    hub.startService()
    [(_port, factory, _backlog, _interface)] = reactor.tcpServers
    peer = IPv4Address("TCP", "192.0.2.7", 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"EHLO client.example\r\n")
    transport.clear()
    hub.stopService()
    assert transport.value() == b"421 4.3.2 mail.example.org Service shutting down\r\n"
    assert transport.disconnecting


def test_the_state_folder_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
                      '[pop3]\nlisten = []\n')
    old = os.umask(0)
    try:
        MailHub(load_text(config.read_text(), str(config)), reactor=MemoryReactorClock())
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def _tap_options(tmp_path: Path, state_dir: str, parent: dict | None = None,
                 hub_lines: str = ""):
    from txmailhub.tap import Options

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'state_dir = "{state_dir}"\n{hub_lines}[smtp]\nlisten = []\n[submission]\n'
                      'listen = []\n[pop3]\nlisten = []\n')
    options = Options()
    options.parseOptions(["--config", str(config)])
    if parent is not None:
        options.parent = parent
    return options


def test_twistd_chroot_is_refused_before_anything_is_made(tmp_path: Path, capsys) -> None:
    # twistd chroots after makeService: the state folder, the users file
    # and the TLS files were read by one path outside and opened by the
    # same path inside the jail (a traceback for spool.lock, ports bound)
    import pytest

    from txmailhub.tap import makeService

    options = _tap_options(tmp_path, str(tmp_path / "state"),
                           parent={"chroot": str(tmp_path / "jail"), "nodaemon": True})
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mailhub: twistd --chroot is not supported"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_an_empty_twistd_chroot_is_refused_too(tmp_path: Path, capsys) -> None:
    # ``--chroot=`` (``--chroot "$JAIL"`` with $JAIL unset) leaves twistd's
    # option an empty string, not None: twistd still calls os.chroot("")
    # after makeService (a FileNotFoundError traceback), so the hub refuses
    # it as it refuses any --chroot
    import pytest
    from twisted.scripts._twistd_unix import ServerOptions

    from txmailhub.tap import makeService

    parsed = ServerOptions()
    parsed.parseOptions(["--chroot=", "--nodaemon"])
    assert parsed["chroot"] == ""
    options = _tap_options(tmp_path, str(tmp_path / "state"),
                           parent={"chroot": parsed["chroot"], "nodaemon": True})
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("mailhub: twistd --chroot is not supported")
    assert not (tmp_path / "state").exists()


def test_twistd_names_a_state_dir_it_cannot_use(tmp_path: Path, capsys) -> None:
    # a one-line reason and exit 2, as for a bad config: not a traceback
    import pytest

    from txmailhub.tap import makeService

    (tmp_path / "afile").write_text("")
    options = _tap_options(tmp_path, "afile/state")
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"mailhub: cannot use {tmp_path}/afile/state" in err
    # a file in the way is no matter of ownership: the advice says so
    # and names the file in the way, not the folder it keeps from being made
    assert (f"{tmp_path}/afile is not a folder and is in the way of state_dir "
            f"({tmp_path}/afile/state)") in err, err
    assert "chown" not in err and "Traceback" not in err


def test_daemonized_twistd_prints_a_start_error_as_text(tmp_path: Path, monkeypatch) -> None:
    # twistd's waiting parent printed the child's error as a bytes repr:
    # "An error has occurred: b'DaemonStartError: Address already in use: ...'"
    import io

    from twisted.scripts._twistd_unix import UnixApplicationRunner

    from txmailhub import tap

    # whatever the hub does to the class is undone after the test
    monkeypatch.setattr(UnixApplicationRunner, "_waitForStart",
                        UnixApplicationRunner._waitForStart)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    hub = tap.makeService(_tap_options(tmp_path, "state", parent={"nodaemon": False}))
    assert hub.start_error_type.__name__ == "DaemonStartError"

    def parent_reads(sent: bytes, **config) -> tuple[int, str]:
        terminal = io.StringIO()
        monkeypatch.setattr("sys.__stderr__", terminal)
        r, w = os.pipe()
        try:
            os.write(w, sent)
            code = UnixApplicationRunner(config)._waitForStart(r)
        finally:
            os.close(r)
            os.close(w)
        return code, terminal.getvalue()

    assert parent_reads(b"0", logfile="d.log") == (0, "")
    code, out = parent_reads(
        b"1 DaemonStartError: Address already in use: smtp on tcp:25:interface=127.0.0.1",
        logfile="d.log")
    assert code == 1
    assert out == ("mailhub: cannot start: Address already in use: smtp on "
                   "tcp:25:interface=127.0.0.1\nmailhub: the whole message is in d.log\n")
    # another service's error keeps its class; the child's escapes stay
    # escapes and a control character cannot reach the terminal
    code, out = parent_reads(b"1 ValueError: caf\\xe9 \x1b[2J", syslog=True)
    assert (code, out) == (1, "mailhub: cannot start: ValueError: caf\\xe9 \\x1b[2J\n"
                              "mailhub: the whole message is in syslog\n")
    assert parent_reads(b"1 DaemonStartError: x", logfile="-")[1] == "mailhub: cannot start: x\n"
    # --logger: twistd writes no --logfile (nor ./twistd.log) and no syslog
    for given in ({"logfile": "d.log"}, {"logfile": None}, {"syslog": True}):
        assert parent_reads(b"1 DaemonStartError: x", logger=lambda: print, **given)[1] == (
            "mailhub: cannot start: x\nmailhub: the whole message is in the log of --logger\n")


def test_an_uncaught_daemon_start_error_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    # twistd -ny with a .tac that sets DaemonStartError (etc/mailhub.tac):
    # twistd passes the exception on, and it reached the top as a traceback
    from twisted.scripts._twistd_unix import UnixApplicationRunner

    from txmailhub.service import DaemonStartError, MailHub

    monkeypatch.setattr(UnixApplicationRunner, "_waitForStart",
                        UnixApplicationRunner._waitForStart)
    others: list = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: others.append(a[1]))
    MailHub.start_error_type.fset(MailHub.__new__(MailHub), DaemonStartError)
    hook = sys.excepthook
    MailHub.start_error_type.fset(MailHub.__new__(MailHub), DaemonStartError)
    assert sys.excepthook is hook  # once, however many hubs
    error = DaemonStartError("Address already in use: smtp on tcp:25")
    sys.excepthook(DaemonStartError, error, None)
    assert capsys.readouterr().err == (
        "mailhub: cannot start: Address already in use: smtp on tcp:25\n")
    other = ValueError("x")
    sys.excepthook(ValueError, other, None)
    assert others == [other] and capsys.readouterr().err == ""  # the hook before had it


def test_twistd_exits_2_when_the_state_dir_check_fails_on_the_system(
        tmp_path: Path, capsys, monkeypatch) -> None:
    # an OSError while looking at the state directory (its lock file) is
    # a path for the admin to fix, like a bad config: exit 2, one line
    from txmailhub import service, tap

    def unreadable(self):
        raise PermissionError(13, "Permission denied", str(tmp_path / "state" / "spool.lock"))

    monkeypatch.setattr(service.MailHub, "check_state_dir", unreadable)
    with pytest.raises(SystemExit) as info:
        tap.makeService(_tap_options(tmp_path, "state"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"mailhub: cannot use {tmp_path / 'state' / 'spool.lock'}: Permission denied" in err


def test_twistd_refuses_a_smarthost_auth_file_check_refuses(open_tmp: Path, capsys) -> None:
    tmp_path = open_tmp  # (pytest's own folder is closed to others)
    # the relay reads it at each delivery: started with a bad one, the hub
    # would turn every outbound message into a retry, seen only in its log
    import pytest

    from txmailhub.tap import Options

    auth = tmp_path / "auth"
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
                      '[pop3]\nlisten = []\n[relay]\nsmarthost = "smtp.example.net:587"\n'
                      'smarthost_auth_file = "auth"\n')
    auth.write_text("nocolon\n")
    auth.chmod(0o600)
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{config}: [relay] smarthost_auth_file: " in err
    assert 'expected one line "username:password"' in err and "Traceback" not in err
    # at the line of the key, as check says it
    assert f'{auth}: expected one line "username:password" (at line 13)\n' in err, err
    auth.write_text("user@example.net:s3cret\n")
    auth.chmod(0o644)
    options = Options()
    options.parseOptions(["--config", str(config)])  # starts, with the warning
    assert "every local user can read it (mode 644): chmod o-rwx (at line 13)\n" in \
        capsys.readouterr().err
    assert options["settings"].relay.smarthost_auth_file == str(auth)


def test_twistd_warns_of_a_users_file_every_local_user_can_read(open_tmp: Path, capsys) -> None:
    # as check warns: the file holds password hashes and APOP secrets
    from txmailhub.tap import Options

    tmp_path = open_tmp  # (pytest's own folder is closed to others)
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "state"\n[users]\nfile = "users"\n[smtp]\nlisten = []\n'
                      '[submission]\nlisten = []\n[pop3]\nlisten = []\n')
    users = tmp_path / "users"
    users.write_text("")
    users.chmod(0o600)
    Options().parseOptions(["--config", str(config)])
    assert "every local user can read it" not in capsys.readouterr().err
    users.chmod(0o644)
    Options().parseOptions(["--config", str(config)])  # starts, with the warning
    assert (f"warning: {config}: [users] file: {users} holds the users' password hashes and "
            "APOP secrets and every local user can read it (mode 644): chmod o-rwx (at line 6)\n"
            ) in capsys.readouterr().err


def test_twistd_without_config_reads_the_file_the_mailhub_command_reads(
        tmp_path: Path, monkeypatch, capsys) -> None:
    # ``mailhub`` fell back to its default path, twistd mailhub exited 2
    # ("--config PATH is required"): one rule for both, with the same
    # default, so the hub runs on the file ``mailhub check`` checked
    import pytest

    from txmailhub import cli, config
    from txmailhub.tap import Options

    conf = tmp_path / "system.toml"
    conf.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                    'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
                    '[pop3]\nlisten = []\n')
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(conf))
    for env in (None, ""):  # an empty $MAILHUB_CONFIG counts as unset
        if env is None:
            monkeypatch.delenv("MAILHUB_CONFIG", raising=False)
        else:
            monkeypatch.setenv("MAILHUB_CONFIG", env)
        options = Options()
        options.parseOptions([])
        assert options["config"] == str(conf)
        assert options["settings"].path == str(conf)
        assert cli._parser().parse_args(["check"]).config in (cli.DEFAULT_CONFIG, str(conf))
    other = tmp_path / "other.toml"
    other.write_text(conf.read_text())
    monkeypatch.setenv("MAILHUB_CONFIG", str(other))
    options = Options()
    options.parseOptions([])
    assert options["settings"].path == str(other)
    # --config PATH still wins over both
    options = Options()
    options.parseOptions(["--config", str(conf)])
    assert options["settings"].path == str(conf)
    capsys.readouterr()
    # a default file that is missing: exit 2, one line naming the path and
    # one saying why that path
    monkeypatch.delenv("MAILHUB_CONFIG")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SystemExit) as info:
        Options().parseOptions([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"mailhub: no --config PATH given: reading {tmp_path / 'missing.toml'} "
        "($MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml)",
        f"{tmp_path / 'missing.toml'}: cannot read the config file: No such file or directory",
    ]


def test_twistd_refuses_an_empty_config_path(tmp_path: Path, monkeypatch, capsys) -> None:
    # ``--config "$CONF"`` with $CONF unset: exit 2 with one line, not the
    # hub started on the default file
    import pytest

    from txmailhub.tap import Options

    conf = tmp_path / "mailhub.toml"
    conf.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                    'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
                    '[pop3]\nlisten = []\n')
    monkeypatch.setenv("MAILHUB_CONFIG", str(conf))
    for argv in (["--config="], ["-c", ""], ["--config", ""]):
        with pytest.raises(SystemExit) as info:
            Options().parseOptions(argv)
        assert info.value.code == 2
        assert capsys.readouterr().err == (
            "mailhub: --config: the path is empty; leave the option out to read "
            "$MAILHUB_CONFIG, else /etc/txmailhub/mailhub.toml\n")


def test_twistd_names_a_config_it_cannot_read(tmp_path: Path, monkeypatch, capsys) -> None:
    import pytest

    from txmailhub.tap import Options

    folder = tmp_path / "a-folder"
    folder.mkdir()
    monkeypatch.setenv("MAILHUB_CONFIG", str(folder))
    with pytest.raises(SystemExit) as info:
        Options().parseOptions([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{folder}: cannot read the config file: Is a directory" in err
    assert "no --config PATH given" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # given: the path alone says it
        Options().parseOptions(["--config", str(folder)])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"{folder}: cannot read the config file: Is a directory\n"


def test_mailhub_names_a_state_dir_it_cannot_use(tmp_path: Path) -> None:
    # an embedder gets the documented StartError (StateDirError), one line
    import errno

    import pytest

    from txmailhub.service import StartError, StateDirError

    (tmp_path / "afile").write_text("")
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "afile/state"\n')
    settings = load_text(config.read_text(), str(config))
    with pytest.raises(StateDirError) as info:
        MailHub(settings, reactor=MemoryReactorClock())
    assert isinstance(info.value, StartError)
    assert info.value.message.startswith(f"mailhub: cannot use {tmp_path}/afile/state: ")
    # the queue folder is made later in the build: a file in its way is the
    # same kind of error
    (tmp_path / "afile").unlink()
    (tmp_path / "afile").mkdir()
    (tmp_path / "afile" / "state").mkdir()
    (tmp_path / "afile" / "state" / "queue").write_text("")
    with pytest.raises(StateDirError) as info:
        MailHub(settings, reactor=MemoryReactorClock())
    state = str(tmp_path / "afile" / "state")
    assert f"; {state}/queue is not a folder and is in the way of state_dir" in (
        info.value.message), info.value.message
    denied = StateDirError.from_os_error(
        PermissionError(errno.EACCES, "Permission denied", state), state)
    assert denied.message.endswith("must belong to the user the hub runs as "
                                   "(chown -R that user)")
    # not there yet: chown -R of a folder that does not exist cannot help
    missing = str(tmp_path / "ro" / "state")
    denied = StateDirError.from_os_error(
        PermissionError(errno.EACCES, "Permission denied", missing), missing)
    assert denied.message.endswith(
        f"state_dir ({missing}) does not exist and the user the hub runs as cannot make it "
        f"in {tmp_path / 'ro'}: make it yourself and give it to that user (mkdir, then "
        "chown)"), denied.message


def test_a_state_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    # whoever may write state_dir may rename mail/ away and put a link to a
    # folder of theirs in its place: the hub, which goes by the names, then
    # delivered every message there and served POP3 from it.  Made by the
    # hub it is 0700; one made beforehand kept its mode, and the hub started
    import pytest

    from txmailhub.service import StartError, StateDirError

    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      'state_dir = "state"\n')
    settings = load_text(config.read_text(), str(config))
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StateDirError) as info:
        MailHub(settings, reactor=MemoryReactorClock())
    assert isinstance(info.value, StartError)
    assert info.value.message.startswith(
        f"mailhub: cannot use {state}: it may be written by every local user (")
    assert info.value.message.endswith(
        "mode 0777): any of them could put a link to a folder of their own in place of its "
        f"mail/ and read every mailbox; chmod o-rwx {state}"), info.value.message
    assert sorted(os.listdir(state)) == []  # nothing made in it
    state.chmod(0o1773)  # sticky: a name not made yet is still anyone's to take
    with pytest.raises(StateDirError) as info:
        MailHub(settings, reactor=MemoryReactorClock())
    assert "(root:root mode 1773)" in info.value.message, info.value.message
    assert sorted(os.listdir(state)) == []
    state.chmod(0o770)  # a group's write is the admin's to give (the hub's own group)
    MailHub(settings, reactor=MemoryReactorClock())
    assert "mail" in os.listdir(state)


def test_a_relative_state_dir_is_named_with_the_folder_it_would_be_made_in(
        tmp_path: Path, monkeypatch) -> None:
    import errno

    from txmailhub.service import StateDirError

    monkeypatch.chdir(tmp_path)
    denied = StateDirError.from_os_error(
        PermissionError(errno.EACCES, "Permission denied", "var"), "var")
    assert f"cannot make it in {tmp_path}: make it yourself" in denied.message, denied.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown for real: needs root")
def test_twistd_uid_gets_what_root_made_in_the_state_dir(tmp_path: Path) -> None:
    # `twistd -u mailhub -g mailhub mailhub ...` builds the hub as root and
    # switches user only afterwards: spool/, queue/, mail/ and spool.lock
    # made in between must belong to mailhub, or the hub cannot start
    from txmailhub import tap

    (tmp_path / "state").mkdir()
    # the admin's: root's, and the user's through its group
    os.chown(tmp_path / "state", 0, 4343)
    os.chmod(tmp_path / "state", 0o770)
    (tmp_path / "state" / "old").write_text("")  # was there before: left alone
    options = _tap_options(tmp_path, "state", parent={"uid": 4242, "gid": 4343})
    tap.makeService(options)
    state = tmp_path / "state"
    made = set(os.listdir(state)) - {"old"}
    assert {"spool", "spool.lock"} <= made
    for name in made:
        st = os.lstat(state / name)
        assert (st.st_uid, st.st_gid) == (4242, 4343), name
    assert os.lstat(state / "old").st_uid == 0
    assert os.lstat(state).st_uid == 0  # it existed: the admin made it for that user
    # one that did not exist is made by root now, and given to the user too
    tap.makeService(_tap_options(tmp_path, "new", parent={"uid": 4242, "gid": 4343}))
    st = os.lstat(tmp_path / "new")
    assert (st.st_uid, st.st_gid) == (4242, 4343)


def test_foreign_state_names_what_the_uid_user_could_not_use(tmp_path: Path) -> None:
    # what a start as root without --uid leaves: the next start with --uid
    # must say so and how to mend it, before it binds anything (here: any
    # user, as the files are compared with another uid)
    from txmailhub.tap import foreign_state

    me = os.geteuid()
    other = 4242 if me != 4242 else 4343
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert foreign_state(str(state), me, os.getegid()) is None
    line = foreign_state(str(state), other, 4343)
    assert line is not None
    assert line.startswith(f"mailhub: cannot use {state}: {other} (--uid) may not write it "
                           "(owner "), line
    assert line.endswith(f"(chown -R {other}:4343 {state}; docs/deployment.rst)"), line
    os.chmod(state, 0o777)  # the folder is usable, what the hub made in it is not
    (state / "queue").mkdir()
    line = foreign_state(str(state), other, 4343)
    assert line is not None
    assert line.startswith(f"mailhub: cannot use {state / 'queue'}: it belongs to "), line
    assert f"not to {other} (--uid)" in line
    # what the admin put there besides is not the hub's business
    (state / "queue").rmdir()
    (state / "backup.tar").write_text("")
    assert foreign_state(str(state), other, 4343) is None
    assert foreign_state(str(tmp_path / "missing"), other, 4343) is None


def test_foreign_state_asks_for_write_and_search_both_in_the_class_that_applies(
        tmp_path: Path) -> None:
    # the kernel's one class: the owner's bits for the owner, else the
    # group's, else the others'; a folder needs w and x to make files in
    from txmailhub.tap import foreign_state

    me, mine = os.geteuid(), os.getegid()
    other = 4242 if me != 4242 else 4343
    state = tmp_path / "state"
    state.mkdir()
    for mode in (0o600, 0o500):  # the owner without search, without write
        os.chmod(state, mode)
        assert "may not write it" in (foreign_state(str(state), me, mine) or ""), oct(mode)
    os.chmod(state, 0o760)  # the group's members: write without search
    assert "may not write it" in (foreign_state(str(state), other, mine) or "")
    os.chmod(state, 0o770)
    assert foreign_state(str(state), other, mine) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_foreign_state_judges_a_linked_folder_by_the_folder_it_leads_to(tmp_path: Path) -> None:
    # root's link from state_dir/mail to a mail store on a disk of its own,
    # given to the hub's user, is an admin's setup the hub runs with: it was
    # refused for the link's owner (root), with a chown -R that changes
    # nothing of it
    from txmailhub.tap import foreign_state

    state, disk = tmp_path / "state", tmp_path / "disk"
    for folder in (state, disk / "mail", disk / "queue"):
        folder.mkdir(parents=True, mode=0o700)
        os.chown(folder, 4242, 4343)
    (state / "mail").symlink_to(disk / "mail")  # root's links
    (state / "queue").symlink_to(disk / "queue")
    assert os.lstat(state / "mail").st_uid == 0
    assert foreign_state(str(state), 4242, 4343) is None
    os.chown(disk / "queue", 0, 0)  # what the link leads to still counts
    line = foreign_state(str(state), 4242, 4343)
    assert line is not None
    assert line.startswith(f"mailhub: cannot use {state / 'queue'} (a link to "
                           f"{disk / 'queue'}): it belongs to root"), line
    os.chown(disk / "queue", 4242, 4343)
    # spool.lock is never followed by the hub: a link there is judged itself
    (disk / "lock").touch()
    os.chown(disk / "lock", 4242, 4343)
    (state / "spool.lock").symlink_to(disk / "lock")
    line = foreign_state(str(state), 4242, 4343)
    assert line is not None and f"cannot use {state / 'spool.lock'}: it belongs" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="twistd --uid: needs root")
def test_twistd_uid_on_a_state_dir_root_used_exits_2_before_the_start(
        tmp_path: Path, capsys) -> None:
    # was: the ports bound, the switch made, then a PermissionError
    # traceback from the queue's lock in the log and exit 1
    from txmailhub import tap

    state = tmp_path / "state"
    tap.makeService(_tap_options(tmp_path, "state"))  # as root: all of it root's
    capsys.readouterr()
    os.chown(state, 4242, 4343)  # the admin gave the folder, not its contents
    with pytest.raises(SystemExit) as info:
        tap.makeService(_tap_options(tmp_path, "state", parent={"uid": 4242, "gid": 4343}))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "mailhub: cannot use " in err and "it belongs to root, not to 4242 (--uid)" in err
    assert f"chown -R 4242:4343 {state}" in err
    assert os.lstat(state / "spool").st_uid == 0  # nothing given away by the refusal


def _start_as_root_for_4242(tmp_path: Path, monkeypatch, meanwhile) -> Path:
    """``twistd --uid 4242`` on a state folder of that user's, which calls
    ``meanwhile(state)`` (the user racing root) once the hub is built and
    before the folders are handed over; the state folder."""
    from txmailhub import service, tap

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4343)
    real = service.MailHub

    def racing(settings):
        hub = real(settings)
        meanwhile(state)
        return hub

    monkeypatch.setattr(service, "MailHub", racing)
    tap.makeService(_tap_options(tmp_path, "state", parent={"uid": 4242, "gid": 4343}))
    return state


@pytest.mark.skipif(os.geteuid() != 0, reason="chown for real: needs root")
def test_twistd_uid_follows_no_link_the_hub_user_drops_in(tmp_path: Path, monkeypatch) -> None:
    # state_dir is the hub user's: while root builds the hub, that user can
    # add a symbolic link to a root folder; it must not become the user's

    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "shadow").write_text("secret")
    state = _start_as_root_for_4242(tmp_path, monkeypatch,
                                    lambda state: os.symlink(victim, state / "evil"))
    assert os.stat(victim / "shadow").st_uid == 0
    assert os.stat(victim).st_uid == 0
    assert os.lstat(state / "spool").st_uid == 4242


@pytest.mark.skipif(os.geteuid() != 0, reason="chown for real: needs root")
def test_twistd_uid_walks_no_folder_the_hub_user_drops_in(tmp_path: Path, monkeypatch) -> None:
    # a folder of the hub user's own, holding a hard link to a root file:
    # only what root made is given away, never walked into otherwise

    victim = tmp_path / "shadow"
    victim.write_text("secret")

    def drop(state):
        (state / "drop").mkdir()
        os.link(victim, state / "drop" / "shadow")
        os.chown(state / "drop", 4242, 4343)

    state = _start_as_root_for_4242(tmp_path, monkeypatch, drop)
    assert os.stat(victim).st_uid == 0
    assert os.lstat(state / "spool").st_uid == 4242


def test_new_entries_are_given_without_following_links(tmp_path: Path, monkeypatch) -> None:
    # any user: record what would be chowned, by inode
    from txmailhub import tap

    me = os.geteuid()
    state = tmp_path / "state"
    state.mkdir()
    (state / "old").write_text("")
    before = set(os.listdir(state))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("")
    (tmp_path / "linked").write_text("")
    (state / "spool").mkdir()
    (state / "spool" / "tmp").mkdir()
    (state / "spool" / "tmp" / "x").write_text("")
    (state / "spool" / "up").symlink_to(victim)
    (state / "spool.lock").write_text("")
    (state / "evil").symlink_to(victim)  # a link dropped into state_dir
    os.link(tmp_path / "linked", state / "hard")  # a hard link to a file elsewhere
    given: set[int] = set()

    def fchown(fd, uid, gid):
        given.add(os.fstat(fd).st_ino)

    def chown(path, uid, gid, *, dir_fd=None, follow_symlinks=True):
        assert dir_fd is not None and not follow_symlinks
        given.add(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_ino)

    monkeypatch.setattr(tap.os, "fchown", fchown)
    monkeypatch.setattr(tap.os, "chown", chown)
    tap._give_new_entries(str(state), before, 4242, 4343, creator=me)

    def ino(p: Path) -> int:
        return os.lstat(p).st_ino

    assert {ino(state / "spool"), ino(state / "spool" / "tmp"),
            ino(state / "spool" / "tmp" / "x"), ino(state / "spool" / "up"),
            ino(state / "spool.lock")} == given
    for p in (victim, victim / "file", tmp_path / "linked", state / "old"):
        assert ino(p) not in given


def test_twistd_without_uid_changes_no_owner(tmp_path: Path, monkeypatch) -> None:
    from txmailhub import tap

    given: list[str] = []
    for name in ("lchown", "fchown", "chown"):
        monkeypatch.setattr(tap.os, name, lambda p, *a, **kw: given.append(p))
    tap.makeService(_tap_options(tmp_path, "state", parent={"uid": None, "gid": None}))
    assert given == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is for root")
def test_twistd_as_root_without_uid_warns(tmp_path: Path, capsys) -> None:
    from txmailhub import tap

    tap.makeService(_tap_options(tmp_path, "state1"))
    assert tap.ROOT_WARNING in capsys.readouterr().err
    tap.makeService(_tap_options(tmp_path, "state2", parent={"uid": 4242, "gid": 4343}))
    assert tap.ROOT_WARNING not in capsys.readouterr().err
    tap.makeService(_tap_options(tmp_path, "state3", parent={"uid": 0, "gid": 0}))  # -u root
    assert tap.ROOT_WARNING in capsys.readouterr().err


def test_a_log_or_pid_folder_the_uid_user_may_not_write_is_a_warning(tmp_path: Path) -> None:
    # twistd opens both as root and then runs as --uid: the log in a
    # folder of root's (/var/log) was never rotated (SIGUSR1, 1 MB,
    # log_files_kept), nor opened again after logrotate moved it -- the
    # hub wrote on into the moved file -- and the pid file stayed after
    # the stop; nothing said so.  Judged by the mode bits, as for ``check``
    from txmailhub.tap import run_folder_warnings

    me, mine = os.geteuid(), os.getegid()
    closed, own = tmp_path / "closed", tmp_path / "own"
    closed.mkdir(mode=0o755)
    os.chmod(closed, 0o555)  # not writable by its owner: like root's 0755 for the hub
    own.mkdir(mode=0o700)
    parent = {"logfile": str(closed / "mailhub.log"), "pidfile": str(closed / "mailhub.pid")}
    try:
        lines = run_folder_warnings(parent, me, mine)
    finally:
        os.chmod(closed, 0o755)
    assert len(lines) == 2, lines
    pid_line, log_line = lines  # in the order twistd writes them
    assert log_line.startswith(f"warning: --logfile {closed / 'mailhub.log'}: "), log_line
    assert f"the folder {closed} is " in log_line and "mode 0555" in log_line
    assert "cannot rotate it" in log_line and "logrotate" in log_line
    assert pid_line.startswith(f"warning: --pidfile {closed / 'mailhub.pid'}: "), pid_line
    assert "cannot remove it" in pid_line
    # the hub user's own folder: nothing to say; nor without files of twistd's
    assert run_folder_warnings({"logfile": str(own / "mailhub.log"),
                                "pidfile": str(own / "mailhub.pid")}, me, mine) == []
    assert run_folder_warnings({"logfile": "-", "pidfile": ""}, me, mine) == []


def test_the_run_folder_warning_escapes_what_it_names(tmp_path: Path) -> None:
    # one line per warning: a line end (or a terminal's escape) in a path
    # must not start a line of its own on the admin's terminal
    from txmailhub.tap import run_folder_warnings

    closed = tmp_path / "log\nwarning: all is well\x1b[2J"
    closed.mkdir(mode=0o755)
    os.chmod(closed, 0o555)
    try:
        lines = run_folder_warnings({"logfile": str(closed / "mailhub.log"), "pidfile": None},
                                    os.geteuid(), os.getegid())
    finally:
        os.chmod(closed, 0o755)
    assert len(lines) == 1 and "\n" not in lines[0] and "\x1b" not in lines[0], lines
    assert "log\\x{A}warning: all is well\\x{1B}[2J/mailhub.log" in lines[0], lines


@pytest.mark.skipif(os.geteuid() != 0, reason="a user with a group of its own: needs root")
def test_the_run_folder_warning_judges_the_gid_twistd_switches_to(tmp_path: Path) -> None:
    # twistd --uid nobody --gid 4343 runs with 4343 and the groups
    # /etc/group lists nobody in (initgroups), not nobody's own group: a
    # log folder of nobody's group, group-writable, is not the hub's to write
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    import shutil
    import tempfile

    from txmailhub.tap import run_folder_warnings

    top = Path(tempfile.mkdtemp())  # one every user may enter (pytest's is 0700)
    try:
        os.chmod(top, 0o755)
        logs = top / "log"
        logs.mkdir()
        os.chown(logs, 0, nobody.pw_gid)
        os.chmod(logs, 0o775)
        parent = {"logfile": str(logs / "mailhub.log"), "pidfile": None}
        assert run_folder_warnings(parent, nobody.pw_uid, nobody.pw_gid) == []
        other = 4343 if nobody.pw_gid != 4343 else 4344
        assert nobody.pw_gid not in os.getgrouplist("nobody", other)
        [line] = run_folder_warnings(parent, nobody.pw_uid, other)
        assert f"the folder {logs} is " in line, line
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0, reason="twistd --uid: needs root")
def test_twistd_uid_warns_of_a_log_folder_of_roots_and_starts(tmp_path: Path, capsys) -> None:
    from txmailhub import tap

    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)  # root's, as /var/log
    tap.makeService(_tap_options(tmp_path, "state", parent={
        "uid": 4242, "gid": 4343, "logfile": str(logs / "mailhub.log"), "pidfile": None}))
    err = capsys.readouterr().err
    assert f"warning: --logfile {logs / 'mailhub.log'}: " in err, err


def test_the_sighup_notice_gives_the_old_handler_back_at_stop() -> None:
    # an application that stops the hub and goes on gets its own SIGHUP
    # handling back, not a notice about a hub that is gone
    import signal

    from txmailhub.tap import HangupNotice

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGHUP, mine)
    try:
        notice = HangupNotice()
        notice.privilegedStartService()
        notice.startService()
        assert signal.getsignal(signal.SIGHUP) == notice._hangup
        notice.stopService()
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGHUP, previous)


class _ThreadCallsReactor(MemoryReactorClock):
    """A hub's own reactor that keeps what signal handlers queue on it."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_calls: list[tuple[Any, tuple, dict]] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.thread_calls.append((f, args, kwargs))


def test_the_sighup_notice_of_a_hub_with_its_own_reactor_answers_in_that_reactor(
        tmp_path: Path) -> None:
    # an application that gives the hub its reactor runs that one; answers
    # queued on the global reactor would wait for one that never runs
    import signal

    from twisted.internet import reactor as global_reactor

    from txmailhub.signals import HangupNotice

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    own = _ThreadCallsReactor()
    hub = MailHub(quiet_settings(tmp_path), reactor=own)
    notice = HangupNotice(hub.components.tls)
    notice.setServiceParent(hub)
    waiting = len(global_reactor.threadCallQueue)  # another test's calls stay as they are
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        notice.privilegedStartService()
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        signal.getsignal(signal.SIGUSR1)(signal.SIGUSR1, None)
        notice.stopService()
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert global_reactor.threadCallQueue[waiting:] == []
    assert own.thread_calls[0][0] == notice._answer
    assert len(own.thread_calls) == 2  # the SIGUSR1 line's too
    # given one of its own, a notice answers in that one, whatever its parent's
    mine = _ThreadCallsReactor()
    assert HangupNotice(reactor=mine)._hub_reactor() is mine
    assert HangupNotice()._hub_reactor() is global_reactor


def test_the_signal_notices_lines_keep_the_namespace_of_txmailhub_tap() -> None:
    # HangupNotice lives in txmailhub.signals; its lines keep the namespace
    # they had in txmailhub.tap, which a log filter may match on
    from txmailhub import tap
    from txmailhub.signals import HangupNotice

    assert tap.HangupNotice is HangupNotice  # the import applications use
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        HangupNotice()._answer()
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if "SIGHUP" in e.get("log_format", "")]
    assert event["log_namespace"] == "txmailhub.tap"


def quiet_settings(tmp_path: Path):
    """Settings of a hub with no listener at all, its state under ``tmp_path``."""
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      '[smtp]\nlisten = []\n[submission]\nlisten = []\n[pop3]\nlisten = []\n')
    return load_text(config.read_text(), str(config))


def test_one_hub_per_state_directory_at_start_and_after_a_stop(tmp_path: Path) -> None:
    from txmailhub.service import StartError

    settings = quiet_settings(tmp_path)
    first = MailHub(settings, reactor=MemoryReactorClock())
    second = MailHub(settings, reactor=MemoryReactorClock())  # built: not an error yet
    second.check_state_dir()  # built, not started: nobody holds the state directory
    second.privilegedStartService()
    second.startService()
    second.stopService()
    first.privilegedStartService()
    first.startService()
    with pytest.raises(StartError, match="another txmailhub is running on the state directory"):
        second.privilegedStartService()
    with pytest.raises(StartError):
        second.startService()  # an application that only calls this
    first.stopService()  # gives the state directory up ...
    second.startService()  # ... to the next hub
    with pytest.raises(StartError):
        first.startService()  # and a restart claims it again, or refuses
    second.stopService()
    first.startService()
    first.stopService()


@pytest.mark.parametrize("privileged", [True, False])
def test_a_start_that_fails_part_way_leaves_nothing_running(tmp_path: Path,
                                                            privileged: bool) -> None:
    # The second listener's port is taken: the first must not stay bound
    # (taking mail from a hub the application believes failed), and the
    # state directory must be free for the next attempt.
    import socket

    from twisted.internet import reactor

    from txmailhub.service import ListenError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      '[smtp]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[submission]\n'
                      f'listen = ["tcp:{port}:interface=127.0.0.1"]\n[pop3]\nlisten = []\n'
                      # no resolv.conf: its resolver would re-read it every minute on
                      # the global reactor, left to the next test
                      '[relay]\nnameservers = ["127.0.0.1"]\n')
    settings = load_text(config.read_text(), str(config))
    hub = MailHub(settings, reactor=reactor)
    bound: list[tuple[str, int]] = []  # every address a listener bound

    class Recording(list):
        def append(self, pair):
            bound.append(pair)
            super().append(pair)

    hub.components.listening = Recording()
    for service in hub:
        if isinstance(service, ListenerService):
            service.listening = hub.components.listening
    calls_before = set(reactor.getDelayedCalls())
    try:
        with pytest.raises(ListenError, match="cannot listen for submission"):
            if privileged:
                hub.privilegedStartService()
            hub.startService()
        assert bound  # the SMTP listener had bound ...
        assert hub.components.listening == []  # ... and is not listed as ours
        for _ in range(3):
            reactor.iterate(0)  # Twisted closes a port on its next turn
        for host, p in bound:  # ... and is closed again
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, p), timeout=5).close()
        assert not hub.running and not any(s.running for s in hub)
        hub.check_state_dir()  # given up: the next hub may start
    finally:
        taken.close()
        hub.stopService()
        for _ in range(3):
            reactor.iterate(0)
    assert set(reactor.getDelayedCalls()) <= calls_before  # nothing left running


def _hub_whose_queue_lock_cannot_be_opened(tmp_path: Path) -> tuple[MailHub, MemoryReactorClock]:
    """A hub with one SMTP listener whose relay cannot open its queue's
    lock (a folder in its way, as root, who may open any file, sees it): a
    part that fails with an ``OSError`` after others have started, as one
    made by root before twistd switched to ``--uid`` fails (``EACCES``)."""
    hub, reactor = one_listener_hub(tmp_path)
    lock = Path(hub.settings.queue_dir) / ".lock"
    if lock.exists():
        lock.unlink()
    lock.mkdir()
    return hub, reactor


@pytest.mark.parametrize("privileged", [True, False])
def test_a_start_the_state_directory_fails_part_way_undoes_itself_in_one_line(
        tmp_path: Path, privileged: bool) -> None:
    # the syncer, the heartbeat, the claimed state directory and the bound
    # port stayed (hub.running too) under an application that caught the
    # error; and the error was a traceback (under twistd -y --uid, one
    # started as root in a state directory that root had just made)
    from txmailhub.service import StateDirError

    hub, reactor = _hub_whose_queue_lock_cannot_be_opened(tmp_path)
    if privileged:
        hub.privilegedStartService()
    with pytest.raises(StateDirError) as raised:
        hub.startService()
    lock = Path(hub.settings.queue_dir) / ".lock"
    assert raised.value.message == (
        f"mailhub: cannot use {lock}: Is a directory; check [hub] state_dir "
        f"({hub.settings.hub.state_dir})")
    assert not hub.running and not any(s.running for s in hub)
    listener = hub.getServiceNamed("smtp tcp:25:interface=127.0.0.1")
    assert listener.port is None and hub.components.listening == []
    assert reactor.getDelayedCalls() == []  # the heartbeat's timer is gone too
    other, _ = one_listener_hub(tmp_path)
    other.check_state_dir()  # given up: the next hub may have it
    lock.rmdir()
    other.startService()
    other.stopService()


def test_a_start_that_fails_after_the_signal_notice_installed_puts_the_handlers_back(
        tmp_path: Path) -> None:
    # the notice installs its handlers in privilegedStartService (before
    # twistd's --uid), and is not running when a part before it fails in
    # startService: the undone start left SIGHUP and SIGUSR1 answered by a
    # hub that does not run, and the application's own SIGHUP handler
    # behind it
    import signal

    from txmailhub.service import StateDirError
    from txmailhub.signals import HangupNotice

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGHUP, mine)
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        hub, _reactor = _hub_whose_queue_lock_cannot_be_opened(tmp_path)
        HangupNotice(hub.components.tls).setServiceParent(hub)
        hub.privilegedStartService()
        assert signal.getsignal(signal.SIGHUP) != mine  # the notice's, for now
        with pytest.raises(StateDirError):
            hub.startService()
        assert signal.getsignal(signal.SIGHUP) is mine
        assert signal.getsignal(signal.SIGUSR1) == usr1
        assert HangupNotice._answering == []
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGUSR1, usr1)


def test_a_daemonized_twistd_hears_of_a_state_directory_failing_in_start_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # twistd reports to its waiting parent only an Exception: the
    # StateDirError (a SystemExit) of a start that fails after the fork
    # becomes start_error_type there too, not only in privilegedStartService
    import sys

    from txmailhub.service import DaemonStartError

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the setter replaces it
    hub, reactor = _hub_whose_queue_lock_cannot_be_opened(tmp_path)
    hub.start_error_type = DaemonStartError
    hub.privilegedStartService()
    with pytest.raises(DaemonStartError, match=r"^cannot use .*/queue/\.lock: Is a directory"):
        hub.startService()
    assert not hub.running and reactor.getDelayedCalls() == []


@pytest.mark.parametrize("err", [28, 122, 30])  # ENOSPC, EDQUOT, EROFS
def test_a_start_failing_on_a_full_disk_is_the_state_directorys_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    # a write's ENOSPC names no file; the start writes only in state_dir
    import os as _os

    from txmailhub.relay.service import RelayService
    from txmailhub.service import StateDirError

    def broken(self) -> None:
        Service.startService(self)
        raise OSError(err, _os.strerror(err))

    monkeypatch.setattr(RelayService, "startService", broken)
    hub, reactor = one_listener_hub(tmp_path)
    with pytest.raises(StateDirError) as raised:
        hub.startService()
    assert raised.value.message == (
        f"mailhub: cannot use {hub.settings.hub.state_dir}: {_os.strerror(err)}; "
        f"check [hub] state_dir ({hub.settings.hub.state_dir})")
    assert not hub.running and reactor.getDelayedCalls() == []


@pytest.mark.parametrize("filename", ["/elsewhere/file", None])
def test_a_start_failing_outside_the_state_directory_undoes_itself_and_raises_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filename: str | None) -> None:
    # an error naming no file (too many open files, an fsync's EIO) may
    # come from anywhere: not blamed on the state directory
    from txmailhub.relay.service import RelayService

    def broken(self) -> None:
        Service.startService(self)
        raise OSError(5, "Input/output error", filename)

    monkeypatch.setattr(RelayService, "startService", broken)
    hub, reactor = one_listener_hub(tmp_path)
    with pytest.raises(OSError, match="Input/output error") as raised:
        hub.startService()
    assert type(raised.value) is OSError  # not a StateDirError: it names no file of it
    assert not hub.running and reactor.getDelayedCalls() == []
    hub.check_state_dir()


def test_the_start_claims_the_state_directory_and_cleans_up_after_a_crash(tmp_path: Path) -> None:
    from txmailhub.service import StartError

    settings = quiet_settings(tmp_path)
    spool = Path(settings.spool_dir)
    spool.mkdir(parents=True)
    left = spool / "1234-1-deadbeef"  # a message a crash left unanswered
    left.write_bytes(b"partial")
    hub = MailHub(settings, reactor=MemoryReactorClock())
    assert left.exists()  # building touches nothing ...
    hub.startService()
    assert not left.exists()  # ... the start cleans up
    left.write_bytes(b"another hub's message in progress")
    other = MailHub(settings, reactor=MemoryReactorClock())
    with pytest.raises(StartError):
        other.check_state_dir()  # asked before twistd forks
    with pytest.raises(StartError):
        other.startService()
    assert left.exists()  # the running hub's files are left alone
    hub.stopService()


class _SlowStop:
    """The hub's syncer, whose ``stop()`` waits for syncs still under way
    (``pending``): the window of a quick restart."""

    def __init__(self, real):
        from twisted.internet.defer import Deferred

        self.real = real
        self.pending = Deferred()

    def start(self) -> None:
        self.real.start()

    def stop(self):
        return self.pending


def test_a_quick_restart_keeps_the_state_directory(tmp_path: Path) -> None:
    # stopService, then startService before the stop's Deferred has fired
    # (docs/embedding.rst: the syncer then stays started).  The stop
    # finishing later must not give up the state directory of the hub
    # that runs again: another hub would then start on it, share its queue
    # and clean up its spool files in progress as a crash's leftovers.
    from txmailhub.service import StartError

    settings = quiet_settings(tmp_path)
    hub = MailHub(settings, reactor=MemoryReactorClock())
    real = hub.components.syncer
    slow = hub._storage.syncer = _SlowStop(real)
    try:
        hub.startService()
        stopped = hub.stopService()
        hub.startService()  # the quick restart
        slow.pending.callback(None)  # the first stop is over now
        assert stopped.called
        in_progress = Path(settings.spool_dir) / "1234-1-deadbeef"
        in_progress.write_bytes(b"a message being received")
        other = MailHub(settings, reactor=MemoryReactorClock())
        with pytest.raises(StartError):
            other.check_state_dir()
        with pytest.raises(StartError):
            other.startService()
        assert in_progress.exists()  # the running hub's file is left alone
        hub.stopService()  # a real stop gives it up
        other.startService()
        other.stopService()
    finally:
        real.stop()


CODECS = ("encodings.idna", "encodings.punycode")


def test_twistd_loads_the_idna_codecs_before_it_drops_privileges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # after --uid, a standard library under /root is out of reach: the
    # relay's first IDN lookup failed with "unknown encoding: idna", and an
    # RCPT to a domain with a non-ASCII label with "unknown encoding:
    # punycode" (a 451), which the idna package looks up at each A-label
    from txmailhub.tap import makeService

    for name in CODECS:
        monkeypatch.delitem(sys.modules, name, raising=False)
    makeService(_tap_options(tmp_path, "state"))
    assert all(name in sys.modules for name in CODECS)


def test_a_hub_built_in_a_tac_loads_the_idna_codecs_before_twistd_drops_privileges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # twistd -y mailhub.tac --uid: the .tac builds the hub as root, and
    # only twistd mailhub loaded a codec, the idna one alone
    for name in CODECS:
        monkeypatch.delitem(sys.modules, name, raising=False)
    MailHub(quiet_settings(tmp_path), reactor=MemoryReactorClock())
    assert all(name in sys.modules for name in CODECS)


def test_twistd_collects_young_objects_less_often(tmp_path: Path) -> None:
    # several young-generation collections per message at CPython's
    # default (700): twistd mailhub raises it; an application embedding
    # MailHub keeps its own
    import gc

    from txmailhub.tap import GC_THRESHOLD0, makeService, tune_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        options = _tap_options(tmp_path, "state")
        MailHub(options["settings"], reactor=MemoryReactorClock())
        assert gc.get_threshold() == (700, 10, 10)
        makeService(options)
        assert gc.get_threshold() == (GC_THRESHOLD0, 10, 10) and GC_THRESHOLD0 > 700
        gc.set_threshold(0)  # switched off: stays off
        tune_gc()
        assert gc.get_threshold()[0] == 0
        gc.set_threshold(50000, 5, 5)  # already higher: kept
        tune_gc()
        assert gc.get_threshold() == (50000, 5, 5)
    finally:
        gc.set_threshold(*saved)


def test_start_with_a_users_file_it_cannot_read_goes_on_and_says_so(tmp_path: Path,
                                                                    log_events) -> None:
    # configuration.rst: problems in the users file do not stop the hub;
    # while the file cannot be read, local mail gets 451 and the log says
    # why once.  No traceback out of startService (twistd printed one and
    # exited 1).
    (tmp_path / "users").mkdir()  # (root reads any file: a folder cannot be read)
    hub, reactor = one_listener_hub(tmp_path)
    try:
        hub.startService()
        assert len(reactor.tcpServers) == 1
        said = [e for e in log_events if "cannot be read" in e.get("log_format", "")]
        assert len(said) == 1 and said[0]["log_level"].name == "error", said
    finally:
        hub.stopService()


def test_a_listener_started_again_is_listed_once_and_unlisted_at_stop() -> None:
    # Components.listening (the relay's "is this MX ourselves" check) got
    # one more pair per restart, and a stopped listener's pair stayed
    from twisted.internet.protocol import Factory

    reactor = MemoryReactorClock()
    listening: list[tuple[str, int]] = [("192.0.2.7", 25)]  # another listener's
    service = ListenerService(reactor, "smtp", "tcp:2525:interface=127.0.0.1", Factory(),
                              listening=listening)
    for _ in range(100):
        service.startService()
        assert len(listening) == 2
        service.stopService()
        assert listening == [("192.0.2.7", 25)]


def _connect(factory, host: str):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    peer = IPv4Address("TCP", host, 40000)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def _rcpt_on_port_25(reactor, rcpt: bytes):
    """A client of 192.0.2.7 on the started hub's SMTP listener of port 25
    that has sent EHLO, MAIL FROM:<a@remote.test> and RCPT TO:<``rcpt``>;
    the replies are for the test to read."""
    smtp = next(f for (port, f, _b, _i) in reactor.tcpServers if port == 25)
    protocol, transport = _connect(smtp, "192.0.2.7")
    protocol.dataReceived(b"EHLO client.example\r\nMAIL FROM:<a@remote.test>\r\n"
                          b"RCPT TO:<" + rcpt + b">\r\n")
    return protocol, transport


def test_stopping_the_hub_cuts_the_connections_it_refused(tmp_path: Path) -> None:
    # Past max_connections a connection gets its 421 (SMTP) or -ERR (POP3)
    # and a polite close, and holds no slot: no session's end closes it.
    # Under implicit TLS that close waits for the client's handshake and
    # close_notify, up to CLOSE_GRACE (30 s).  A hub that stopped left
    # them open for that long, a descriptor and a timer each on the
    # reactor of an application that carries on after the stop.
    hub, reactor = hub_of(
        tmp_path,
            '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
            '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1"]\nmax_connections = 1\n'
            '[submission]\nlisten = []\n'
            '[pop3]\nlisten = ["tcp:110:interface=127.0.0.1"]\nmax_connections = 1\n'
            '[relay]\nnameservers = ["127.0.0.1"]\n'  # no resolv.conf timer
    )
    hub.startService()
    [(_, smtp, _, _), (_, pop3, _, _)] = reactor.tcpServers
    admitted = [_connect(smtp, "192.0.2.7"), _connect(pop3, "192.0.2.7")]
    refused = [_connect(smtp, "192.0.2.8"), _connect(pop3, "192.0.2.8")]
    for _protocol, transport in refused:
        assert transport.value().startswith((b"421 ", b"-ERR "))
        assert transport.disconnecting and not transport.disconnected  # a polite close
    hub.stopService()
    for protocol, transport in admitted + refused:
        assert transport.disconnecting
        if transport.disconnected:  # cut: the reactor reports it lost
            protocol.connectionLost(None)
    assert all(transport.disconnected for _protocol, transport in refused)
    assert smtp.limits.refusals_waiting == pop3.limits.refusals_waiting == 0
    # the SMTP session's 421 and the POP3 session's -ERR close politely
    # (StringTransport never reports the close); nothing of the refused
    # ones is left on the reactor
    admitted[0][0].connectionLost(None)
    admitted[1][0].connectionLost(None)
    assert reactor.getDelayedCalls() == []


def test_a_stopped_hub_leaves_no_timer_on_the_reactor(tmp_path: Path) -> None:
    # An application that stops the hub and carries on (or builds a new one
    # from a changed config): the relay's resolver went on reading
    # resolv.conf every minute for ever, each hub built keeping its own.
    settings = quiet_settings(tmp_path)  # no [relay] nameservers: the system's
    reactor = MemoryReactorClock()
    hub = MailHub(settings, reactor=reactor)
    for _ in range(2):  # and again after a restart
        hub.startService()
        assert "maybeParseConfig" in [getattr(c.func, "__name__", "")
                                      for c in reactor.getDelayedCalls()]
        stopped = hub.stopService()
        assert stopped.called
        assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("whose", ["ours", "another process's"])
def test_a_failed_start_removes_the_pid_file_twistd_wrote(tmp_path: Path, whose: str) -> None:
    # twistd -n removes its pid file after a start error only when it is an
    # Exception; a StartError is a SystemExit.  Left behind, the file names
    # a pid that may be running again at the next start (1 in a container)
    # and twistd then refuses to start for good.
    import socket

    from txmailhub.service import ListenError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'[smtp]\nlisten = ["tcp:{taken.getsockname()[1]}:interface=127.0.0.1"]\n'
                      '[submission]\nlisten = []\n[pop3]\nlisten = []\n'
                      '[relay]\nnameservers = ["127.0.0.1"]\n')
    from twisted.internet import reactor

    hub = MailHub(load_text(config.read_text(), str(config)), reactor=reactor)
    pid_file = tmp_path / "twistd.pid"
    pid = os.getpid() if whose == "ours" else os.getppid()
    pid_file.write_text(f"{pid}\n")  # as twistd writes it
    hub.pid_file = str(pid_file)
    try:
        with pytest.raises(ListenError):
            hub.privilegedStartService()
    finally:
        taken.close()
    assert pid_file.exists() == (whose != "ours")


def test_twistd_mailhub_tells_the_hub_its_pid_file(tmp_path: Path, monkeypatch) -> None:
    from txmailhub import tap

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()  # a pid file twistd can write
    parent = {"nodaemon": True, "pidfile": "run/twistd.pid"}
    hub = tap.makeService(_tap_options(tmp_path, "state", parent=parent))
    assert hub.pid_file == "run/twistd.pid"  # as twistd names it (relative to --rundir)
    parent = {"nodaemon": True, "pidfile": ""}  # --pidfile=: none
    assert tap.makeService(_tap_options(tmp_path, "state", parent=parent)).pid_file is None


def test_the_hubs_stop_waits_for_its_smtp_sessions_to_be_gone(tmp_path: Path) -> None:
    # The 421 of the stop and the close after it: the Deferred of the
    # hub's stop fired with the sessions still open (a TLS close waited
    # up to 30 s for the client), their descriptors and timers left on the
    # reactor of an application that carries on.  It fires once they are
    # gone; a close not taken is cut after STOP_CLOSE_GRACE.
    from txmailhub.smtp.protocol import STOP_CLOSE_GRACE

    hub, reactor = one_listener_hub(tmp_path)
    hub.startService()
    [(_port, factory, _backlog, _interface)] = reactor.tcpServers
    quick, quick_t = _connect(factory, "192.0.2.7")
    slow, slow_t = _connect(factory, "192.0.2.8")
    slow.engine.session.tls = True  # a TLS close waits for the client's close_notify
    stopped = hub.stopService()
    assert quick_t.disconnecting and slow_t.disconnecting  # 421 and a polite close
    quick.connectionLost(None)
    assert not stopped.called  # the slow one is still open
    reactor.advance(STOP_CLOSE_GRACE)
    assert slow_t.disconnected  # cut
    slow.connectionLost(None)
    assert stopped.called
    assert reactor.getDelayedCalls() == []


def test_stopping_one_listener_leaves_the_other_listeners_sessions_alone(tmp_path: Path) -> None:
    # A listener's stop (an application that stops or removes that one
    # service) sent 421 to the SMTP sessions of every SMTP listener of the
    # hub, submission's included, and waited for all of them to be gone;
    # POP3 aborted the sessions of every listener of its role; and both
    # cut every refused connection of their protocol.  The other listeners
    # keep running: their sessions and refusals are theirs.
    hub, reactor = hub_of(
        tmp_path,
            '[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
            '[smtp]\nlisten = ["tcp:25:interface=127.0.0.1", "tcp:2525:interface=127.0.0.1"]\n'
            'max_connections = 3\n'
            '[submission]\nlisten = ["tcp:587:interface=127.0.0.1"]\n'
            '[pop3]\nlisten = ["tcp:110:interface=127.0.0.1", "tcp:1110:interface=127.0.0.1"]\n'
            '[relay]\nnameservers = ["127.0.0.1"]\n'
    )
    hub.startService()
    factories = {port: factory for port, factory, _, _ in reactor.tcpServers}
    stopped_smtp = _connect(factories[25], "192.0.2.7")
    other_smtp = _connect(factories[2525], "192.0.2.7")
    submission = _connect(factories[587], "192.0.2.7")
    refused = _connect(factories[2525], "192.0.2.8")  # past max_connections
    assert refused[1].value().startswith(b"421 ") and refused[1].disconnecting
    stopped_pop3 = _connect(factories[110], "192.0.2.7")
    other_pop3 = _connect(factories[1110], "192.0.2.7")
    for _protocol, transport in (stopped_smtp, other_smtp, submission, stopped_pop3, other_pop3):
        transport.clear()

    smtp_stop = hub.getServiceNamed("smtp tcp:25:interface=127.0.0.1").stopService()
    hub.getServiceNamed("pop3 tcp:110:interface=127.0.0.1").stopService()
    assert stopped_smtp[1].value().startswith(b"421 ") and stopped_smtp[1].disconnecting
    assert stopped_pop3[1].value().startswith(b"-ERR [SYS/TEMP] ")
    assert stopped_pop3[1].disconnecting
    for _protocol, transport in (other_smtp, submission, other_pop3):
        assert transport.value() == b"" and not transport.disconnecting
    assert not refused[1].disconnected  # its polite close goes on
    stopped_smtp[0].connectionLost(None)
    stopped_pop3[0].connectionLost(None)
    assert smtp_stop.called  # not waiting for the others' sessions
    other_smtp[0].dataReceived(b"NOOP\r\n")
    assert other_smtp[1].value().startswith(b"250 ")
    hub.stopService()


class _SlowToStop(Service):
    """A part of the hub whose stop fires when the test says so: the
    Deferred of each stop in ``stops``."""

    def __init__(self) -> None:
        self.stops: list[Deferred] = []

    def stopService(self) -> Deferred:
        super().stopService()
        self.stops.append(Deferred())
        return self.stops[-1]


def _hub_with_a_part_slow_to_stop(tmp_path: Path):
    """A quiet hub with a ``_SlowToStop`` part, that part, and the list the
    syncer's stops are noted in (``"syncer"`` each)."""
    hub = MailHub(quiet_settings(tmp_path), reactor=MemoryReactorClock())
    slow = _SlowToStop()
    slow.setServiceParent(hub)
    syncer = hub.components.syncer
    stops: list[str] = []
    real_stop = syncer.stop
    syncer.stop = lambda: stops.append("syncer") or real_stop()
    return hub, slow, stops


def test_the_syncer_stops_only_after_the_hubs_other_parts(tmp_path: Path) -> None:
    # Every part was told to stop at once, the syncer too: a session still
    # storing its message, or the relay recording an attempt, asked it for
    # a sync after it had stopped ("the syncer is stopped": a 451, a record
    # not updated).  A part whose stop takes a while now holds the syncer.
    hub, slow, stops = _hub_with_a_part_slow_to_stop(tmp_path)
    for restart in (False, True):
        hub.startService()
        d = hub.stopService()
        assert stops == [] and not d.called
        if restart:  # started again before the last stop was over
            hub.startService()
            slow.stops[-1].callback(None)
            assert stops == []  # the syncer of the running hub stays started
            d = hub.stopService()
        slow.stops[-1].callback(None)
        assert stops == ["syncer"] and d.called
        stops.clear()


def test_an_earlier_stop_does_not_stop_the_syncer_under_a_later_one(tmp_path: Path) -> None:
    # Stopped, started again and stopped again before the first stop was
    # over: when the first stop's parts are done, the hub is stopped again
    # -- but by the second stop, whose parts (a session accepted since the
    # restart, still storing its message) may still need the syncer.  Only
    # the last stop stops it, once its own parts have stopped.
    hub, slow, stops = _hub_with_a_part_slow_to_stop(tmp_path)
    hub.startService()
    first = hub.stopService()
    hub.startService()
    second = hub.stopService()
    slow.stops[0].callback(None)  # the first stop's parts are done
    assert stops == [] and first.called and not second.called
    slow.stops[1].callback(None)
    assert stops == ["syncer"] and second.called


def _hub_users_link(target: Path, link: Path) -> None:
    """A symbolic link as the hub's user would make it (not root's)."""
    os.symlink(target, link)
    if os.geteuid() == 0:
        os.lchown(link, 4242, 4343)


def test_twistd_uid_stops_at_a_log_or_pid_file_the_hub_user_linked(tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    # twistd opens --logfile and writes --pidfile as root, before it
    # switches to --uid, in folders deployment.rst gives to that user: a
    # link there would have root make any file, and the hub append its
    # log (clients' text in it) to any file of root's
    import pytest

    from txmailhub import tap

    monkeypatch.setattr(tap, "_dropping_to", lambda options: (4242, 4343))
    victim = tmp_path / "bashrc"
    victim.write_text("# root's\n")
    logs, run = tmp_path / "log", tmp_path / "run"
    logs.mkdir()
    run.mkdir()
    _hub_users_link(victim, logs / "mailhub.log")
    _hub_users_link(tmp_path / "nologin", run / "mailhub.pid")  # not there: root would make it
    options = _tap_options(tmp_path, "state", parent={
        "uid": 4242, "gid": 4343, "logfile": str(logs / "mailhub.log"),
        "pidfile": str(run / "mailhub.pid")})
    with pytest.raises(SystemExit) as info:
        tap.makeService(options)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--logfile {logs / 'mailhub.log'} is a symbolic link" in err
    assert f"--pidfile {run / 'mailhub.pid'} is a symbolic link" in err
    assert not (tmp_path / "state").exists()  # nothing was built


def _refusals(err: str) -> list[str]:
    """The lines of ``err`` but the warnings (run as root without --uid:
    the one that says so)."""
    return [line for line in err.splitlines() if not line.startswith("warning: ")]


def test_a_pid_or_log_file_in_a_missing_folder_stops_the_start_in_a_line(
        tmp_path: Path, capsys) -> None:
    # twistd opens both after makeService: /run/txmailhub not made yet (or
    # emptied by a reboot) was a traceback, exit 1, the log's from the
    # hub's own observer, after the state folder had been built
    from txmailhub import tap

    run, logs = tmp_path / "run" / "txmailhub", tmp_path / "log" / "txmailhub"
    options = _tap_options(tmp_path, "state", parent={
        "nodaemon": False, "pidfile": str(run / "mailhub.pid"),
        "logfile": str(logs / "mailhub.log")})
    with pytest.raises(SystemExit) as info:
        tap.makeService(options)
    assert info.value.code == 2
    assert _refusals(capsys.readouterr().err) == [
        f"mailhub: --pidfile {run / 'mailhub.pid'} cannot be written: its folder {run} "
        "does not exist",
        f"mailhub: --logfile {logs / 'mailhub.log'} cannot be written: its folder {logs} "
        "does not exist"]
    assert not (tmp_path / "state").exists()  # nothing was built


def test_twistds_default_files_in_a_folder_the_user_may_not_write(
        tmp_path: Path, capsys, monkeypatch) -> None:
    # ``twistd mailhub`` run as the hub's user in a folder of root's: its
    # ./twistd.pid and ./twistd.log cannot be made; the line says how to
    # give them elsewhere
    from txmailhub import tap

    monkeypatch.chdir(tmp_path)
    real_access = os.access
    monkeypatch.setattr(tap.os, "access", lambda path, mode: (
        False if os.fspath(path) == str(tmp_path) else real_access(path, mode)))
    options = _tap_options(tmp_path, "state", parent={
        "nodaemon": False, "pidfile": str(tmp_path / "twistd.pid"), "logfile": None})
    with pytest.raises(SystemExit) as info:
        tap.makeService(options)
    assert info.value.code == 2
    user = tap._owner_name(os.geteuid())
    assert _refusals(capsys.readouterr().err) == [
        f"mailhub: --pidfile {tmp_path / 'twistd.pid'} cannot be written: {user} may not "
        f"make files in its folder {tmp_path} (twistd's default pid file, in the folder it "
        "starts in: give --pidfile PATH, or --pidfile= for none)",
        f"mailhub: --logfile {tmp_path / 'twistd.log'} cannot be written: {user} may not "
        f"make files in its folder {tmp_path} (twistd's default log file, in the folder it "
        "starts in: give --logfile PATH, or run in the foreground (-n) to log to standard "
        "output)"]


def test_a_folder_twistd_may_not_enter_stops_the_start_in_a_line(
        tmp_path: Path, capsys, monkeypatch) -> None:
    # ``twistd -n --pidfile= mailhub`` run as the hub's user from root's
    # home (``sudo -u mailhub`` from root's shell): twistd changes into its
    # --rundir, "." by default, after makeService, and ended the start in
    # its traceback (PermissionError: '.', exit status 1) -- the very
    # --pidfile= the line about the default pid file had advised
    from txmailhub import run_files, tap

    monkeypatch.chdir(tmp_path)
    real_access = os.access
    monkeypatch.setattr(run_files.os, "access", lambda path, mode, **kw: (
        False if os.fspath(path) in (str(tmp_path), ".") and mode & os.X_OK
        else real_access(path, mode, **kw)))
    options = _tap_options(tmp_path, "state", parent={
        "nodaemon": True, "pidfile": "", "logfile": None, "rundir": "."})
    with pytest.raises(SystemExit) as info:
        tap.makeService(options)
    assert info.value.code == 2
    user = tap._owner_name(os.geteuid())
    mode = f"{stat.S_IMODE(tmp_path.stat().st_mode):04o}"
    assert _refusals(capsys.readouterr().err) == [
        f"mailhub: --rundir {tmp_path} cannot be entered: {user} may not enter it (mode "
        f"{mode}) (twistd's default --rundir, the folder it starts in: start it from a "
        f"folder {user} may enter, such as /, or give --rundir /)"]
    assert not (tmp_path / "state").exists()  # nothing was built


def test_rundir_problems_as_the_user_twistd_runs_as(tmp_path: Path, monkeypatch) -> None:
    import pwd

    from conftest import as_user

    from txmailhub.run_files import rundir_problems

    (tmp_path / "file").write_text("")
    for parent in ({"rundir": str(tmp_path)}, {"rundir": "/"}, {}, None,
                   {"rundir": str(tmp_path / "none"), "chroot": str(tmp_path)}):
        assert rundir_problems(parent) == []
    assert rundir_problems({"rundir": str(tmp_path / "none")}) == [
        f"mailhub: --rundir {tmp_path / 'none'} cannot be entered: it does not exist"]
    assert rundir_problems({"rundir": str(tmp_path / "file")}) == [
        f"mailhub: --rundir {tmp_path / 'file'} cannot be entered: it is not a folder"]
    if os.geteuid() != 0:
        return
    # as another user, started in a folder of root's that user may not enter
    closed = tmp_path / "home"
    closed.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    monkeypatch.chdir(closed)  # (the child starts there, as twistd would)
    found = as_user(nobody.pw_uid, nobody.pw_gid, lambda: rundir_problems(
        {"rundir": ".", "pidfile": "", "nodaemon": True}))
    # (pytest's folders above it are root's 0700 too: "may not reach it")
    [line] = found
    assert line.startswith(f"mailhub: --rundir {closed} cannot be entered: nobody may not ")
    assert line.endswith(
        " (twistd's default --rundir, the folder it starts in: start it from a folder nobody "
        "may enter, such as /, or give --rundir /)")


def test_rundir_problems_judge_the_rundir_as_twistds_chdir_does(tmp_path: Path,
                                                                 monkeypatch) -> None:
    # twistd changes into its --rundir as given: "." needs the right to
    # enter the folder it starts in, not to reach it by its full name.  A
    # start as the hub's user in an open folder of a home closed to it
    # (``sudo -u mailhub`` from /root/sub, /root 0700, sub 0755) enters
    # "." and runs; it was stopped with "may not reach it" and exit 2
    import pwd

    from conftest import as_user

    from txmailhub.run_files import rundir_problems

    if os.geteuid() != 0:
        pytest.skip("needs root, to be another user")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "open").mkdir(mode=0o755)
    os.chmod(home / "open", 0o755)  # (whatever the umask)
    nobody = pwd.getpwnam("nobody")
    monkeypatch.chdir(home / "open")  # (the child starts there, as twistd would)

    def enter_and_judge() -> list[str]:
        try:
            os.chdir(".")  # what twistd does
            entered = "entered"
        except OSError as e:
            entered = f"not entered ({e})"
        return [entered, *rundir_problems({"rundir": ".", "pidfile": "", "nodaemon": True})]

    found = as_user(nobody.pw_uid, nobody.pw_gid, enter_and_judge)
    assert found == ["entered"]


def test_run_file_access_problems_pass_what_twistd_can_write(tmp_path: Path) -> None:
    from txmailhub.tap import run_file_access_problems

    (tmp_path / "old.log").write_text("")
    for parent in ({"pidfile": str(tmp_path / "new.pid"), "logfile": str(tmp_path / "old.log")},
                   {"pidfile": "", "nodaemon": True},  # no pid file, log to stdout
                   {"logfile": "-", "pidfile": ""},
                   {"syslog": True, "logfile": str(tmp_path / "none" / "x.log")}):
        assert run_file_access_problems(parent) == []
    (tmp_path / "folder.log").mkdir()
    assert run_file_access_problems({"logfile": str(tmp_path / "folder.log")}) == [
        f"mailhub: --logfile {tmp_path / 'folder.log'} cannot be written: it is a folder"]


def test_a_pid_file_in_a_folder_the_user_may_not_reach_is_not_called_missing(
        tmp_path: Path) -> None:
    # /var/log/private (root's, 0700) is there: a hub user who may not go
    # through it was told "its folder ... does not exist", and found it there
    import pwd

    from txmailhub.tap import run_file_access_problems

    closed = tmp_path / "closed"
    (closed / "run").mkdir(parents=True)
    pid_file = closed / "run" / "mailhub.pid"
    parent = {"pidfile": str(pid_file), "logfile": "-", "nodaemon": True}
    if os.geteuid() != 0:
        closed.chmod(0)
        try:
            found = run_file_access_problems(parent)
        finally:
            closed.chmod(0o755)
        user = pwd.getpwuid(os.geteuid()).pw_name
    else:  # judged by another user, in a child that is that user for good
        closed.chmod(0o700)
        nobody = pwd.getpwnam("nobody")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's)
            try:
                os.close(read)
                os.setgroups([])
                os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
                os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
                os.write(write, "\n".join(run_file_access_problems(parent)).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as said:
            found = said.read().decode().splitlines()
        os.waitpid(child, 0)
        user = "nobody"
    assert found == [f"mailhub: --pidfile {pid_file} cannot be written: {user} may not reach "
                     "it (a folder on its way is closed to that user)"]


def test_a_pid_file_on_a_read_only_file_system_says_so(tmp_path: Path, monkeypatch) -> None:
    # ProtectSystem=strict without the folder in ReadWritePaths=: access(2)
    # says no (EROFS) even to root, who was told it "may not make files" in
    # a folder it owns
    from txmailhub import run_files

    real_access, real_statvfs = os.access, os.statvfs

    def access(path, mode, **kw):
        return False if mode & os.W_OK and str(path).startswith(str(tmp_path)) else (
            real_access(path, mode, **kw))

    def statvfs(path):
        found = real_statvfs(path)
        if not str(path).startswith(str(tmp_path)):
            return found
        return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, *found[9:]))

    monkeypatch.setattr(run_files.os, "access", access)
    monkeypatch.setattr(run_files.os, "statvfs", statvfs)
    (tmp_path / "old.log").write_text("")
    assert run_files.run_file_access_problems({
        "pidfile": str(tmp_path / "mailhub.pid"), "logfile": str(tmp_path / "old.log")}) == [
        f"mailhub: --pidfile {tmp_path / 'mailhub.pid'} cannot be written: its folder "
        f"{tmp_path} is on a read-only file system",
        f"mailhub: --logfile {tmp_path / 'old.log'} cannot be written: it is on a read-only "
        "file system"]


def test_makeservice_without_twistds_options_makes_no_log_file(
        tmp_path: Path, monkeypatch) -> None:
    # an application calling makeService itself (no ``parent``) has no
    # twistd log: ./twistd.log was made in the folder it ran in
    from txmailhub import tap

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tap.makeService(_tap_options(tmp_path, str(tmp_path / "state")))
    assert os.listdir(work) == []


def test_run_file_problems_judge_links_and_names_only(tmp_path: Path) -> None:
    from txmailhub.tap import run_file_problems

    shadow = tmp_path / "shadow"
    shadow.write_text("secret")
    os.link(shadow, tmp_path / "mailhub.pid")  # a hard link to a root file
    (tmp_path / "mailhub.log").write_text("")  # a plain log: fine
    assert run_file_problems({"pidfile": str(tmp_path / "mailhub.pid"),
                              "logfile": str(tmp_path / "mailhub.log")}) == [
        f"mailhub: --pidfile {tmp_path / 'mailhub.pid'} is a file with 2 names (a hard "
        "link): twistd, running as root, would open what it names before it switches to "
        "--uid; remove it (and see who made it)"]
    _hub_users_link(shadow, tmp_path / "linked.log")
    # not opened by twistd: stdout, syslog, or no file at all yet
    for parent in ({"logfile": "-"}, {"logfile": str(tmp_path / "linked.log"), "syslog": True},
                   {"logfile": str(tmp_path / "new.log"), "pidfile": ""}):
        assert run_file_problems(parent) == []
    if os.geteuid() == 0:  # a link root made itself is root's choice
        # (to a file with one name: shadow has two by now, and where a
        # link leads is judged as the name itself is)
        (tmp_path / "root-log").write_text("")
        os.symlink(tmp_path / "root-log", tmp_path / "roots.log")
        assert run_file_problems({"logfile": str(tmp_path / "roots.log")}) == []


def test_the_log_file_is_made_readable_by_its_owner_and_group_only(tmp_path: Path) -> None:
    # twistd would make it with the umask's 0644: every sender, recipient
    # and login name readable by every local user
    import stat as stat_

    from txmailhub.tap import LOG_FILE_MODE, make_log_file

    log = tmp_path / "mailhub.log"
    old = os.umask(0o022)
    try:
        assert make_log_file({"logfile": str(log)}, None) == str(log)
    finally:
        os.umask(old)
    assert stat_.S_IMODE(log.stat().st_mode) == LOG_FILE_MODE == 0o640
    # there already: the admin's mode stays, and nothing is written
    log.chmod(0o644)
    log.write_text("kept\n")
    assert make_log_file({"logfile": str(log)}, None) is None
    assert (stat_.S_IMODE(log.stat().st_mode), log.read_text()) == (0o644, "kept\n")
    # a link is not followed
    target = tmp_path / "elsewhere"
    (tmp_path / "linked.log").symlink_to(target)
    assert make_log_file({"logfile": str(tmp_path / "linked.log")}, None) is None
    assert not target.exists()
    # no file: syslog, stdout, or twistd -n without --logfile
    for parent in ({"syslog": True, "logfile": str(tmp_path / "a")},
                   {"logfile": "-"}, {"nodaemon": True, "logfile": None}):
        assert make_log_file(parent, None) is None
    assert not (tmp_path / "a").exists()


def test_no_log_file_is_made_or_judged_for_a_logger(tmp_path: Path, monkeypatch) -> None:
    # twistd --logger X: twistd's logger uses X alone and opens no file,
    # whatever --logfile says (twisted.application.app.AppLogger.start)
    from txmailhub.tap import make_log_file, run_file_problems

    _hub_users_link(tmp_path / "elsewhere", tmp_path / "linked.log")
    for name in ("new.log", "linked.log"):
        parent = {"logger": lambda: print, "logfile": str(tmp_path / name)}
        assert make_log_file(parent, None) is None
        assert run_file_problems(parent) == []
    monkeypatch.chdir(tmp_path)
    parent = {"logger": lambda: print, "logfile": None, "nodaemon": False}  # ./twistd.log else
    assert make_log_file(parent, None) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked.log"]


def test_the_log_file_made_for_uid_is_that_users(tmp_path: Path) -> None:
    from txmailhub.tap import make_log_file

    if os.geteuid() != 0:
        pytest.skip("giving a file away needs root")
    log = tmp_path / "mailhub.log"
    make_log_file({"logfile": str(log)}, (65534, 65534))
    st = log.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_the_log_file_is_made_under_debug_too(tmp_path: Path, monkeypatch) -> None:
    """``twistd --debug`` (no ``-n``, no ``--logfile``) logs to
    ``./twistd.log``: twistd's logger read ``nodaemon`` before twistd set
    it from ``debug``, and ``makeService`` sees it set.  The file twistd
    opens is the one ``run_file_problems`` judges (``twistd_log_file``),
    and made 0640 as any other log, not left to twistd and its umask."""
    import stat as stat_

    from txmailhub.tap import LOG_FILE_MODE, make_log_file

    monkeypatch.chdir(tmp_path)
    parent = {"nodaemon": True, "debug": True, "logfile": None}
    old = os.umask(0o022)
    try:
        assert make_log_file(parent, None) == str(tmp_path / "twistd.log")
    finally:
        os.umask(old)
    assert stat_.S_IMODE((tmp_path / "twistd.log").stat().st_mode) == LOG_FILE_MODE


def test_run_file_problems_follow_the_path_twistd_opens(tmp_path: Path, monkeypatch) -> None:
    from txmailhub.tap import run_file_problems

    # a folder on the way that the hub's user swapped for a link
    logs = tmp_path / "logs"
    logs.mkdir()
    _hub_users_link(tmp_path / "etc", logs / "old")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mailhub.log").write_text("root's\n")
    [problem] = run_file_problems({"logfile": str(logs / "old" / "mailhub.log")})
    assert f"reached through {logs / 'old'}, a symbolic link not made by root" in problem
    # --nodaemon with no --logfile logs to stdout: no twistd.log is opened
    # (a link one happens to be in the working folder stops nothing)
    monkeypatch.chdir(logs)
    _hub_users_link(tmp_path / "nowhere", logs / "twistd.log")
    assert run_file_problems({"nodaemon": True, "logfile": None}) == []
    assert len(run_file_problems({"logfile": None})) == 1  # a daemon's twistd.log


def test_run_file_problems_judge_twistd_log_under_debug(tmp_path: Path, monkeypatch) -> None:
    """``twistd --debug`` (without ``-n``) runs in the foreground: twistd
    sets ``nodaemon`` from ``debug`` after its logger was made, and before
    ``makeService`` reads its options.  The logger still opens
    ``./twistd.log`` (as root), so that file must be judged: with
    ``nodaemon`` taken at its word, a link the hub's user put there had
    root append the log to what it named (tried: a root file)."""
    from txmailhub.tap import run_file_problems

    monkeypatch.chdir(tmp_path)
    _hub_users_link(tmp_path / "roots", tmp_path / "twistd.log")
    # as makeService sees the options of `twistd --debug --uid ...`
    [problem] = run_file_problems({"nodaemon": True, "debug": True, "logfile": None})
    assert "--logfile" in problem and "twistd.log" in problem


def test_run_file_problems_follow_a_link_root_made_to_its_end(tmp_path: Path) -> None:
    # /var/log/mailhub.log, root's link to the log in the hub's user's
    # folder: a link that user put at the end of it was followed by root
    import pytest

    from txmailhub.tap import run_file_problems

    if os.geteuid() != 0:
        pytest.skip("needs a symbolic link made by root")
    logs = tmp_path / "log-folder"
    logs.mkdir()
    shadow = tmp_path / "shadow"
    shadow.write_text("secret")
    os.symlink(logs / "mailhub.log", tmp_path / "mailhub.log")  # root's own
    assert run_file_problems({"logfile": str(tmp_path / "mailhub.log")}) == []
    _hub_users_link(shadow, logs / "mailhub.log")
    [problem] = run_file_problems({"logfile": str(tmp_path / "mailhub.log")})
    assert problem.startswith(f"mailhub: --logfile {tmp_path / 'mailhub.log'} is reached "
                              f"through {logs / 'mailhub.log'}, a symbolic link not made "
                              "by root:")
    # and a hard link at the end of root's link
    os.unlink(logs / "mailhub.log")
    os.link(shadow, logs / "mailhub.log")
    [problem] = run_file_problems({"logfile": str(tmp_path / "mailhub.log")})
    assert "is a file with 2 names (a hard link)" in problem


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of root's needs root")
def test_run_file_problems_follow_a_relative_link_of_roots_up_a_folder(tmp_path: Path) -> None:
    from txmailhub.tap import run_file_problems

    (tmp_path / "hub").mkdir()
    (tmp_path / "run").mkdir()
    _hub_users_link(tmp_path / "victim", tmp_path / "hub" / "mailhub.pid")
    os.symlink("../hub/mailhub.pid", tmp_path / "run" / "mailhub.pid")  # root's own
    [problem] = run_file_problems({"pidfile": str(tmp_path / "run" / "mailhub.pid")})
    assert f"reached through {tmp_path / 'hub' / 'mailhub.pid'}, a symbolic link not made by " \
        "root" in problem, problem


def test_run_file_problems_refuse_a_link_of_roots_with_another_name(tmp_path: Path) -> None:
    """Root's own links are followed, but a symbolic link with a second
    name is no proof root put it there: where fs.protected_hardlinks is
    off, the hub's user can hard-link any link of root's (one that leads
    to a file of root's) into its own log folder under the log's name."""
    import pytest

    from txmailhub.tap import run_file_problems

    if os.geteuid() != 0:
        pytest.skip("needs a symbolic link made by root")
    roots = tmp_path / "etc"
    roots.mkdir()
    (roots / "shadow").write_text("secret")
    os.symlink(roots / "shadow", roots / "current")  # a link of root's, elsewhere
    logs = tmp_path / "log-folder"
    logs.mkdir()
    os.link(roots / "current", logs / "mailhub.log", follow_symlinks=False)
    assert os.lstat(logs / "mailhub.log").st_uid == 0
    [problem] = run_file_problems({"logfile": str(logs / "mailhub.log")})
    assert "names" in problem and "hard link" in problem, problem


def test_twistd_uid_stops_at_a_state_dir_the_hub_user_linked(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    # a state_dir in a folder of the hub's user (its home, say) can be
    # swapped by that user for a link: root's crash clean-up then removed
    # every file in the spool/ of the folder it named, and root gave that
    # folder mail/, queue/ and spool.lock
    import pytest

    from txmailhub import tap

    monkeypatch.setattr(tap, "_dropping_to", lambda options: (4242, 4343))
    victim = tmp_path / "roots"
    (victim / "spool").mkdir(parents=True)
    (victim / "spool" / "important.conf").write_text("root's\n")
    home = tmp_path / "home"
    home.mkdir()
    _hub_users_link(victim, home / "state")
    options = _tap_options(tmp_path, str(home / "state"), parent={"uid": 4242, "gid": 4343})
    with pytest.raises(SystemExit) as info:
        tap.makeService(options)
    assert info.value.code == 2
    assert (f"mailhub: state_dir {home / 'state'} is a symbolic link: twistd, running as "
            "root, would clean up" in capsys.readouterr().err)
    assert sorted(os.listdir(victim)) == ["spool"]
    assert os.listdir(victim / "spool") == ["important.conf"]
    # a link root made is root's choice (a state_dir on another disk)
    if os.geteuid() == 0:
        os.unlink(home / "state")
        os.symlink(victim, home / "state")
        assert tap.state_dir_problems(str(home / "state")) == []


def test_twistd_mailhub_makes_a_relative_log_file_where_twistd_opens_it(
        tmp_path: Path, monkeypatch) -> None:
    # twistd opens --logfile (logger.start) before it changes to --rundir
    # (setupEnvironment): a relative name is the start's folder's, and
    # the file the hub makes ahead must be that one, not one in --rundir
    import stat as stat_

    from txmailhub import tap

    start, rundir = tmp_path / "start", tmp_path / "run"
    for folder in (start / "logs", rundir):
        folder.mkdir(parents=True)
    monkeypatch.chdir(start)
    old = os.umask(0o022)
    try:
        tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent={
            "logfile": "logs/mailhub.log", "rundir": str(rundir), "nodaemon": False,
            "pidfile": ""}))
    finally:
        os.umask(old)
    log = start / "logs" / "mailhub.log"
    assert stat_.S_IMODE(log.stat().st_mode) == tap.LOG_FILE_MODE
    assert os.listdir(rundir) == []


def test_the_sighup_notice_also_answers_a_sigusr1_nobody_handles() -> None:
    # under ``twistd -ny mailhub.tac`` (twistd's own log on standard
    # output) nothing handled SIGUSR1 and the signal ended the hub; a
    # handler in place by then -- twistd's, rotating its --logfile, or the
    # hub's own -- is left alone
    import signal

    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    from txmailhub.tap import HangupNotice

    def mine(signum, frame):
        pass

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        notice = HangupNotice()
        notice.privilegedStartService()
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler), "SIGUSR1 would end the hub"
        waiting = len(reactor.threadCallQueue)  # another test's calls stay as they are
        handler(signal.SIGUSR1, None)
        queued = reactor.threadCallQueue[waiting:]
        del reactor.threadCallQueue[waiting:]
        assert queued, "the handler queued no line for the reactor"
        for f, a, kw in queued:
            f(*a, **kw)
        assert any("SIGUSR1 ignored" in e.get("log_format", "") for e in events)
        notice.stopService()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL

        signal.signal(signal.SIGUSR1, mine)
        notice = HangupNotice()
        notice.privilegedStartService()
        assert signal.getsignal(signal.SIGUSR1) is mine
        notice.stopService()
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        globalLogPublisher.removeObserver(events.append)
        for s, h in before.items():
            signal.signal(s, h)


def test_a_sighup_handler_installed_after_the_notice_is_kept_at_its_stop() -> None:
    # the notice puts back the SIGHUP handler it found only while its own
    # is in place: one an application installed since is the application's
    import signal

    from txmailhub.tap import HangupNotice

    def mine(signum, frame):
        pass

    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        notice = HangupNotice()
        notice.privilegedStartService()
        assert signal.getsignal(signal.SIGHUP) == notice._hangup
        signal.signal(signal.SIGHUP, mine)
        notice.stopService()
        assert signal.getsignal(signal.SIGHUP) is mine
        notice = HangupNotice()
        notice.privilegedStartService()
        notice.stopService()  # its own still there: the one it found goes back
        assert signal.getsignal(signal.SIGHUP) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.fixture
def hub_signals() -> Iterator[tuple[int, int]]:
    """SIGHUP and SIGUSR1 at their default action for the test, and the
    process's own handlers back after it: a signal notice's test must not
    leave one of its handlers to the rest of the run."""
    import signal

    signals = (signal.SIGHUP, signal.SIGUSR1)
    before = {s: signal.signal(s, signal.SIG_DFL) for s in signals}
    try:
        yield signals
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_the_signal_notices_stay_until_the_rest_of_the_hub_has_stopped(
        tmp_path: Path, hub_signals) -> None:
    # the notice was the first part told to stop, and put SIGHUP and SIGUSR1
    # back to their default action at once, while the rest of the hub was
    # still stopping (sessions finishing a message, the relay recording an
    # attempt): a reload reflex or a logrotate postrotate in that window
    # ended the hub before its graceful stop was over
    import signal

    from txmailhub.tap import HangupNotice

    signals = hub_signals
    hub, slow, _stops = _hub_with_a_part_slow_to_stop(tmp_path)
    HangupNotice().setServiceParent(hub)
    for restart in (False, True):
        hub.startService()
        assert all(callable(signal.getsignal(s)) for s in signals)
        d = hub.stopService()
        assert all(callable(signal.getsignal(s)) for s in signals), "ended by a signal"
        if restart:  # started again before the last stop was over
            hub.startService()
            slow.stops[-1].callback(None)
            assert all(callable(signal.getsignal(s)) for s in signals)
            d = hub.stopService()
        slow.stops[-1].callback(None)
        assert d.called
        assert [signal.getsignal(s) for s in signals] == [signal.SIG_DFL] * 2


def test_an_earlier_stop_does_not_give_the_signals_back_under_a_later_one(
        tmp_path: Path, hub_signals) -> None:
    # stopped, started again and stopped again before the first stop was
    # over (as for the syncer, just above): the first stop's parts done,
    # the notice put the signals back while the second stop's sessions
    # were still finishing, and a SIGHUP or SIGUSR1 then ended the hub in
    # the middle of that graceful stop.  Only the last stop gives them back.
    import signal

    from txmailhub.tap import HangupNotice

    signals = hub_signals
    hub, slow, _stops = _hub_with_a_part_slow_to_stop(tmp_path)
    HangupNotice().setServiceParent(hub)
    hub.startService()
    first = hub.stopService()
    hub.startService()
    second = hub.stopService()
    slow.stops[0].callback(None)  # the first stop's parts are done
    assert first.called and not second.called
    assert all(callable(signal.getsignal(s)) for s in signals), "ended by a signal"
    slow.stops[1].callback(None)
    assert second.called
    assert [signal.getsignal(s) for s in signals] == [signal.SIG_DFL] * 2


def test_the_hub_runs_the_stall_records_heartbeat_while_it_runs(tmp_path: Path) -> None:
    # docs/deployment.rst, "A slow or hung disk": the hub's record of its
    # reactor's stalls beats while the hub runs, and leaves no timed call
    # behind on the reactor of an application that carries on after a stop
    hub, reactor = one_listener_hub(tmp_path)

    def beats() -> int:
        return sum(getattr(c.func, "__self__", None) is hub.components.stalls
                   for c in reactor.getDelayedCalls())

    assert beats() == 0
    for _ in range(2):  # and again after a restart
        hub.startService()
        assert beats() == 1
        reactor.pump([1] * 5)
        assert beats() == 1
        assert hub.stopService().called
        assert beats() == 0


def test_a_message_arriving_through_a_stall_of_the_hub_is_not_cut(tmp_path: Path) -> None:
    # the hub's SMTP sessions read the record its heartbeat keeps: a stall
    # longer than the data rate allows (a POP3 rename, another session's
    # spool write on a hung disk) does not cut a message that arrives
    # through it
    from conftest import stalled_turn

    from txmailhub.testing import MemorySpooler

    hub, reactor = one_listener_hub(tmp_path)
    # the message data in memory: the real spool's syncer threads want a
    # real reactor
    hub.components.spooler = MemorySpooler()
    hub.startService()
    try:
        [(_port, factory, _backlog, _interface)] = reactor.tcpServers
        assert factory.stalls is hub.components.stalls
        p, t = _connect(factory, "127.0.0.1")
        p.dataReceived(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<joe@example.net>\r\nDATA\r\n")
        assert t.value().split(b"\r\n")[-2].startswith(b"354"), t.value()
        t.clear()
        reactor.pump([1] * 100)
        p.dataReceived(b"Subject: x\r\n\r\n")
        stalled_turn(reactor, 400)  # idle_timeout 5m: 300 + 15 / 500 s allowed
        p.dataReceived(b"body\r\n")  # the turn's reads
        reactor.advance(0)
        assert t.value() == b"" and not t.disconnecting
    finally:
        hub.stopService()
    p.connectionLost(None)
    assert reactor.getDelayedCalls() == []


def test_the_hubs_relay_sessions_get_the_stall_record(tmp_path: Path) -> None:
    # docs/relay.rst, "Timeouts": the outbound sessions' timers give a
    # stall of the hub back to the next hop; the record is the hub's own,
    # the one whose heartbeat it runs
    hub, _reactor = one_listener_hub(tmp_path)
    hub.startService()
    try:
        relay = hub.getServiceNamed("relay")
        assert relay.agent.stalls is hub.components.stalls is not None
    finally:
        hub.stopService()


def test_a_store_and_router_of_ones_own_are_used_by_every_part_of_the_hub(
        tmp_path: Path) -> None:
    # docs/embedding.rst: an application replaces hub.components.store or
    # .router before the start.  The SMTP listener's recipient policy kept
    # the router the hub was built with (RCPT was judged by the users file,
    # delivery by the new router), and the portal's realm kept the Maildir
    # store: SMTP delivered to the new store, POP3 read the old one.
    from txmailhub.interfaces import IMailbox
    from txmailhub.testing import MemoryMailboxStore, StaticRouter

    hub, reactor = hub_of(tmp_path, ONE_SMTP_LISTENER.replace(
        '[pop3]\nlisten = []', '[pop3]\nlisten = ["tcp:110:interface=127.0.0.1"]'))
    store = MemoryMailboxStore()
    router = StaticRouter({"joe": None, "sales": ["joe"]}, domains=["example.org"])
    hub.components.store = store
    hub.components.router = router
    hub.startService()
    try:
        protocol, transport = _rcpt_on_port_25(reactor, b"sales@example.org")
        assert transport.value().splitlines()[-1].startswith(b"250 ")
        assert [a.local for a in router.resolved] == ["sales"]

        realm = hub.components.portal.realm
        avatars: list = []
        realm.requestAvatar("joe@example.org", None, IMailbox).addCallback(avatars.append)
        [(_iface, _box, logout)] = avatars
        assert store.is_locked("joe@example.org")
        logout()
        protocol.connectionLost(None)
    finally:
        hub.stopService()


def test_the_quota_does_not_measure_maildirs_a_store_of_ones_own_does_not_use(
        tmp_path: Path) -> None:
    # [hub] mailbox_quota measures the Maildirs of the hub's own store; the
    # policy kept measuring them after the application gave the hub a store
    # of its own, and refused RCPT for mail that store would have taken
    from txmailhub.testing import MemoryMailboxStore

    hub, reactor = hub_of(tmp_path, ONE_SMTP_LISTENER.replace(
        '[hub]\n', '[hub]\nmailbox_quota = 1000\n'))
    full = tmp_path / "var" / "mail" / "example.org" / "joe"
    for sub in ("tmp", "new", "cur"):
        (full / sub).mkdir(parents=True)
    (full / "new" / "1.old").write_bytes(b"x" * 5000)
    (tmp_path / "users").write_text("")
    from txmailhub.testing import StaticRouter

    hub.components.store = MemoryMailboxStore()
    hub.components.router = StaticRouter({"joe": None}, domains=["example.org"])
    hub.startService()
    try:
        protocol, transport = _rcpt_on_port_25(reactor, b"joe@example.org")
        assert transport.value().splitlines()[-1].startswith(b"250 ")
        protocol.connectionLost(None)
    finally:
        hub.stopService()


def test_a_listeners_port_is_found_by_its_service_name(tmp_path: Path) -> None:
    # docs/embedding.rst: an application reads a port-0 listener's port
    # through the listener service named after its role and endpoint
    hub, _reactor = hub_of(tmp_path, ONE_SMTP_LISTENER.replace("tcp:25:", "tcp:0:"))
    hub.startService()
    listener = hub.getServiceNamed("smtp tcp:0:interface=127.0.0.1")
    assert isinstance(listener.port.getHost().port, int)
    hub.stopService()
    assert listener.port is None


def test_a_start_of_a_running_hub_leaves_no_second_queue_runner(tmp_path: Path) -> None:
    # startService on a hub that runs (an application that starts the hub
    # and then adds it to a running parent, which starts it again): the
    # queue runner made a second LoopingCall and lost the first, which
    # went on ticking after the stop -- delivering from a queue whose
    # state directory the stop had given up to the next hub
    from twisted.logger import formatEvent

    settings = quiet_settings(tmp_path)
    reactor = MemoryReactorClock()
    hub = MailHub(settings, reactor=reactor)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        hub.startService()
        listening = list(hub.components.listening)
        hub.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert hub.components.listening == listening
    # nothing started a second time: one start line, one queue runner line
    lines = [formatEvent(e) for e in events]
    assert sum(line.startswith("txmailhub started") for line in lines) == 1
    assert sum(line.startswith("queue runner started") for line in lines) == 1
    stopped = hub.stopService()
    assert stopped.called
    assert reactor.getDelayedCalls() == []


def test_a_running_hub_added_to_a_running_parent_binds_nothing_again(tmp_path: Path) -> None:
    # MultiService.addService on a running parent calls the new child's
    # privilegedStartService and startService: a hub that ran already bound
    # each listener a second time (port 0: a second port, left listening
    # after the stop; a fixed port: "address in use", and the running hub
    # rolled itself back)
    from twisted.application.service import MultiService

    hub, reactor = hub_of(tmp_path, ONE_SMTP_LISTENER)
    hub.startService()
    listening = list(hub.components.listening)
    top = MultiService()
    top.startService()
    hub.setServiceParent(top)
    assert hub.running
    assert len(reactor.tcpServers) == 1
    assert hub.components.listening == listening


def test_a_listener_that_listens_binds_no_second_port() -> None:
    from twisted.internet.protocol import Factory

    reactor = MemoryReactorClock()
    service = ListenerService(reactor, "smtp", "tcp:2525:interface=127.0.0.1", Factory())
    service.privilegedStartService()
    service.startService()
    service.privilegedStartService()  # a parent that starts it again
    assert len(reactor.tcpServers) == 1


def test_a_hub_asks_the_resolver_the_application_gives_and_never_stops_it(
        tmp_path: Path) -> None:
    # embedding.rst promises that "a relay given a resolver of the
    # application's own does not stop it", but MailHub built its relay
    # with none: an application had no way to give one (MailHub(...,
    # resolver=...) was a TypeError), and every hub asked [relay]
    # nameservers or the system resolver
    from txmailhub.testing import StaticResolver

    class Owned(StaticResolver):  # the public double, as an application would use it
        stops = starts = 0

        def stop(self) -> None:
            self.stops += 1

        def start(self) -> None:
            self.starts += 1

    resolver = Owned({"remote.test": {"MX": [(10, "mx.remote.test")]},
                      "mx.remote.test": {"A": ["192.0.2.9"]}})
    reactor = MemoryReactorClock()
    hub = MailHub(quiet_settings(tmp_path), reactor=reactor, resolver=resolver)
    hub.startService()
    [host] = hub.getServiceNamed("relay").mx.resolve("remote.test").result
    assert (host.name, host.addresses) == ("mx.remote.test", ("192.0.2.9",))
    assert ("remote.test", "MX") in resolver.queries
    assert hub.stopService().called
    hub.startService()  # a restart, in the same process
    assert hub.stopService().called
    assert (resolver.stops, resolver.starts) == (0, 0)  # the application's to run
    assert reactor.getDelayedCalls() == []


def test_two_hubs_signal_notices_each_answer_and_the_last_one_gives_the_signals_back(
        hub_signals) -> None:
    # two hubs in one process, each with its notice (etc/mailhub.tac's line
    # twice): SIGHUP reached the second one only (the first hub's TLS files
    # were never read again); the first one's stop put SIGUSR1 back to its
    # default action under the second, still running hub (a logrotate
    # postrotate then ended it); and the second's stop put back the first's
    # handler, of a hub that was gone
    import signal

    from twisted.internet import reactor

    from txmailhub.tap import HangupNotice

    signals = hub_signals

    def answers(*notices: HangupNotice) -> list[bool]:
        """Whether each notice answers a SIGHUP now (a call it queues for
        the reactor), the queue left as it was."""
        waiting = len(reactor.threadCallQueue)  # another test's calls stay as they are
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        queued = [f for f, _a, _kw in reactor.threadCallQueue[waiting:]]
        del reactor.threadCallQueue[waiting:]
        return [n._answer in queued for n in notices]

    first, second = HangupNotice(), HangupNotice()
    first.privilegedStartService()
    second.privilegedStartService()
    assert answers(first, second) == [True, True]
    first.stopService()
    assert callable(signal.getsignal(signal.SIGUSR1)), "SIGUSR1 would end the second hub"
    assert answers(first, second) == [False, True]
    first.startService()  # started again, while a link of the second's handler
    assert answers(first, second) == [True, True]
    first.stopService()
    second.stopService()
    assert [signal.getsignal(s) for s in signals] == [signal.SIG_DFL, signal.SIG_DFL]
    # stopped the other way round, too
    first.privilegedStartService()
    second.privilegedStartService()
    second.stopService()
    assert answers(first, second) == [True, False]
    first.stopService()
    assert [signal.getsignal(s) for s in signals] == [signal.SIG_DFL, signal.SIG_DFL]


def test_a_notice_that_could_not_install_its_handlers_is_not_counted_as_answering(
        hub_signals) -> None:
    # signal.signal works in the main thread only: a notice started from
    # another thread (a reactor run in a thread of its own) failed with a
    # ValueError, but was listed as answering all the same, and another
    # hub's stop then handed it the SIGUSR1 line, which stayed for good
    import signal
    import threading

    from txmailhub.tap import HangupNotice

    signals = hub_signals
    failed: list[BaseException] = []
    elsewhere = HangupNotice()

    def start() -> None:
        try:
            elsewhere.privilegedStartService()
        except ValueError as e:
            failed.append(e)

    try:
        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
        assert len(failed) == 1
        notice = HangupNotice()
        notice.privilegedStartService()
        notice.stopService()
        assert [signal.getsignal(s) for s in signals] == [signal.SIG_DFL] * 2
    finally:
        HangupNotice._answering[:] = [n for n in HangupNotice._answering if n is not elsewhere]


def _sighup_now(*, raised: bool = False) -> list[Any]:
    """The calls a SIGHUP queues for the reactor now, taken off its queue
    (another test's calls stay as they are): the handler in place called
    as Python calls it, or with ``raised`` the signal itself raised in
    this process (main thread; ``signal.raise_signal`` runs the handler
    before it returns, where ``os.kill`` leaves it to a later bytecode)."""
    import signal

    from twisted.internet import reactor

    waiting = len(reactor.threadCallQueue)
    if raised:
        signal.raise_signal(signal.SIGHUP)
    else:
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
    queued = reactor.threadCallQueue[waiting:]
    del reactor.threadCallQueue[waiting:]
    return queued


def _answered(queued: list[Any], *notices: Any) -> list[bool]:
    """Whether each notice queued its answer (re-reading its TLS files)."""
    called = [f for f, _a, _kw in queued]
    return [n._answer in called for n in notices]


def test_the_sighup_notice_passes_sighup_on_to_the_applications_own_handler(
        hub_signals) -> None:
    # an application that embeds the hub and handles SIGHUP itself (its
    # own reload) lost that reload for as long as the hub ran: the notice
    # passed the signal on to other hubs' notices only
    import signal

    from txmailhub.tap import HangupNotice

    calls: list[tuple[int, Any]] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append((signum, frame))

    signal.signal(signal.SIGHUP, mine)
    notice = HangupNotice()
    notice.privilegedStartService()
    notice.startService()
    assert signal.getsignal(signal.SIGHUP) == notice._hangup
    assert _answered(_sighup_now(), notice) == [True]
    assert calls == [(signal.SIGHUP, None)], "the application's own reload was lost"
    assert _answered(_sighup_now(raised=True), notice) == [True]
    assert len(calls) == 2 and calls[1][0] == signal.SIGHUP
    assert calls[1][1] is not None  # the frame the signal interrupted, as Python passes it
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine


@pytest.mark.parametrize("found", ["SIG_DFL", "SIG_IGN"])
def test_the_sighup_notice_passes_on_no_default_action_nor_an_ignored_signal(
        hub_signals, found: str) -> None:
    # no Python handler before the notice's: there is nothing to call (the
    # default action would end the process), and the one found is put back
    import signal

    from txmailhub.tap import HangupNotice

    before = getattr(signal, found)
    signal.signal(signal.SIGHUP, before)
    notice = HangupNotice()
    notice.privilegedStartService()
    assert _answered(_sighup_now(), notice) == [True]
    assert _answered(_sighup_now(raised=True), notice) == [True]  # the process goes on
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def test_two_hubs_notices_call_the_applications_sighup_handler_once_per_signal(
        hub_signals) -> None:
    # the handler the first notice found is the application's: each
    # SIGHUP reaches both hubs and the application's handler once (not
    # once per hub), whichever hub stops or starts again, and the last
    # stop puts it back.  An application's SIGUSR1 handler is left alone
    # all along (the notices answer SIGUSR1 only where no one does).
    import signal

    from txmailhub.tap import HangupNotice

    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)

    def rotate(signum: int, frame: Any) -> None:
        pass

    def once(*notices: HangupNotice, raised: bool = False) -> list[bool]:
        del calls[:]
        answered = _answered(_sighup_now(raised=raised), *notices)
        assert calls == [signal.SIGHUP], f"the application's handler called {len(calls)} times"
        assert signal.getsignal(signal.SIGUSR1) is rotate
        return answered

    signal.signal(signal.SIGHUP, mine)
    signal.signal(signal.SIGUSR1, rotate)
    first, second = HangupNotice(), HangupNotice()
    first.privilegedStartService()
    second.privilegedStartService()
    assert once(first, second) == [True, True]
    assert once(first, second, raised=True) == [True, True]
    first.stopService()
    assert once(first, second) == [False, True]
    first.startService()  # started again, while a link of the second's handler
    assert once(first, second) == [True, True]
    first.stopService()
    second.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine
    # stopped the other way round, and the second started again after
    first.privilegedStartService()
    second.privilegedStartService()
    second.stopService()
    assert once(first, second) == [True, False]
    second.startService()
    assert once(first, second) == [True, True]
    second.stopService()
    first.stopService()
    assert [signal.getsignal(s) for s in hub_signals] == [mine, rotate]


def _notice_then_a_passing_handler(calls: list[int]) -> tuple[Any, Any]:
    """A started hub's notice and, installed after it, an application's
    SIGHUP handler that notes each call in ``calls`` and passes the signal
    on to the handler it found (the notice's), as docs/embedding.rst asks."""
    import signal

    from txmailhub.tap import HangupNotice

    notice = HangupNotice()
    notice.privilegedStartService()
    found = signal.getsignal(signal.SIGHUP)

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)
        if callable(found):
            found(signum, frame)

    signal.signal(signal.SIGHUP, mine)
    return notice, mine


def test_an_application_handler_that_chains_to_the_notice_is_called_once_after_a_restart(
        hub_signals) -> None:
    # an application installs its SIGHUP handler after the hub started,
    # and passes the signal on to the one it found (the notice's); the hub
    # stops (the application's handler stays: it is the application's)
    # and starts again, and its notice now passes the signal on to that
    # handler, which passes it back: each must still run once per signal
    import signal

    calls: list[int] = []
    notice, mine = _notice_then_a_passing_handler(calls)
    assert _answered(_sighup_now(), notice) == [True] and calls == [signal.SIGHUP]
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine
    notice.startService()
    assert signal.getsignal(signal.SIGHUP) == notice._hangup
    del calls[:]
    queued = _sighup_now()
    assert _answered(queued, notice) == [True] and calls == [signal.SIGHUP]
    assert len(queued) == 1, "the hub answered one signal twice"
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine


def test_a_handler_before_the_hub_that_calls_the_current_one_runs_once(
        hub_signals, log_events) -> None:
    # an application's SIGHUP handler, in place before the hub, that passes
    # the signal on to whatever handler is current (the notice's, once the
    # hub runs): the notice gets it back past the first handler it found,
    # and the signal is done -- answered once, the handler run once, and
    # nothing failed
    import signal

    from txmailhub.tap import HangupNotice

    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)
        current = signal.getsignal(signal.SIGHUP)
        if current is not mine and callable(current):
            current(signum, frame)

    signal.signal(signal.SIGHUP, mine)
    notice = HangupNotice()
    notice.privilegedStartService()
    try:
        queued = _sighup_now(raised=True)
        assert [f for f, _a, _kw in queued] == [notice._answer]
        assert calls == [signal.SIGHUP]
    finally:
        notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine
    assert not [e for e in log_events if e.get("log_failure") is not None]


def test_a_sighup_ignored_before_the_hub_is_not_passed_on(hub_signals, log_events) -> None:
    # a hub started under nohup finds SIGHUP ignored (SIG_IGN): the notice
    # answers it and calls nothing else (SIG_IGN is no handler to call, nor
    # a failed one to log), and gives SIGHUP back ignored
    import signal

    from txmailhub.tap import HangupNotice

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    notice = HangupNotice()
    notice.privilegedStartService()
    try:
        queued = _sighup_now(raised=True)
        assert [f for f, _a, _kw in queued] == [notice._answer]
    finally:
        notice.stopService()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    assert not [e for e in log_events if e.get("log_failure") is not None]


def test_an_applications_sighup_handler_that_fails_is_logged_and_the_hub_still_answers(
        hub_signals, log_events) -> None:
    # the application's handler raising: the hub still reads its TLS files
    # again, and the error is logged with its traceback, not lost in a
    # signal handler nor raised into whatever the signal interrupted
    import signal

    from txmailhub.tap import HangupNotice

    class Broken(Exception):
        pass

    def mine(signum: int, frame: Any) -> None:
        raise Broken("the application's reload failed")

    signal.signal(signal.SIGHUP, mine)
    first, second = HangupNotice(), HangupNotice()
    first.privilegedStartService()
    second.privilegedStartService()
    try:
        queued = _sighup_now(raised=True)
        assert _answered(queued, first, second) == [True, True]
        for f, a, kw in queued:
            f(*a, **kw)
        [failed] = [e for e in log_events if e.get("log_failure") is not None]
        assert failed["log_failure"].check(Broken)
        assert "the application's reload failed" in failed["log_failure"].getTraceback()
        assert "in mine" in failed["log_failure"].getTraceback()
        assert "SIGHUP" in failed["log_format"]
    finally:
        second.stopService()
        first.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine


def test_an_applications_sighup_handler_may_still_end_the_process(hub_signals) -> None:
    # SystemExit (an application that ends on SIGHUP) is not logged away
    # as an error: it goes on, and the next SIGHUP is answered as before
    import signal

    from twisted.internet import reactor

    from txmailhub.tap import HangupNotice

    ends = [True]

    def mine(signum: int, frame: Any) -> None:
        if ends.pop():
            raise SystemExit(0)

    signal.signal(signal.SIGHUP, mine)
    notice = HangupNotice()
    notice.privilegedStartService()
    waiting = len(reactor.threadCallQueue)
    try:
        with pytest.raises(SystemExit):
            _sighup_now()
        assert _answered(reactor.threadCallQueue[waiting:], notice) == [True]
        del reactor.threadCallQueue[waiting:]  # the answer queued before it ended
        ends.append(False)
        assert _answered(_sighup_now(), notice) == [True] and ends == []
    finally:
        notice.stopService()


def test_an_application_handler_that_chains_to_the_notice_is_called_once_after_a_second_stop(
        hub_signals) -> None:
    # the application's handler, installed after the hub started, passes
    # the signal on to the notice; the hub stops, starts again (its notice
    # then passes the signal on to that handler) and stops again, putting
    # the handler back: the notice still passed the signal on to it, so
    # each SIGHUP ran it twice, once from the kernel, once from the notice
    import signal

    calls: list[int] = []
    notice, mine = _notice_then_a_passing_handler(calls)
    for _restart in range(2):
        notice.stopService()
        notice.startService()
        del calls[:]
        assert _answered(_sighup_now(), notice) == [True] and calls == [signal.SIGHUP]
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine
    del calls[:]
    assert _sighup_now() == [] and calls == [signal.SIGHUP], (
        f"the application's handler ran {len(calls)} times for one SIGHUP")
    notice.startService()
    del calls[:]
    assert _answered(_sighup_now(raised=True), notice) == [True] and calls == [signal.SIGHUP]
    notice.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine


def test_the_handler_found_before_the_hub_still_runs_after_a_restart_under_one_that_chains(
        hub_signals) -> None:
    # the application's reload was in place before the hub started (the
    # notice passes SIGHUP on to it); then a handler that passes the signal
    # on to the one it found (the notice's) went in over it.  The hub
    # stopped and started again: its notice found that handler, passed the
    # signal on to it, and when it came back, stopped there: the reload
    # found first never ran again
    import signal

    from txmailhub.tap import HangupNotice

    reloads: list[int] = []
    chained: list[int] = []

    def reload(signum: int, frame: Any) -> None:
        reloads.append(signum)

    signal.signal(signal.SIGHUP, reload)
    first, second = HangupNotice(), HangupNotice()
    first.privilegedStartService()
    found = signal.getsignal(signal.SIGHUP)

    def chaining(signum: int, frame: Any) -> None:
        chained.append(signum)
        found(signum, frame)

    signal.signal(signal.SIGHUP, chaining)

    def once(*, raised: bool = False) -> list[bool]:
        del reloads[:], chained[:]
        answered = _answered(_sighup_now(raised=raised), first, second)
        assert (reloads, chained) == ([signal.SIGHUP], [signal.SIGHUP]), (
            f"the reload ran {len(reloads)} times, the chaining handler {len(chained)}")
        return answered

    assert once() == [True, False]
    first.stopService()
    assert once() == [False, False]
    first.startService()
    assert once() == [True, False]
    assert once(raised=True) == [True, False]
    second.privilegedStartService()  # a second hub, over the first's notice
    assert once() == [True, True]
    first.stopService()
    assert once() == [False, True]
    first.startService()  # over the second's notice, this time
    assert once() == [True, True]
    second.stopService()
    assert once() == [True, False]
    first.stopService()
    assert signal.getsignal(signal.SIGHUP) is chaining
    assert once() == [False, False]
    second.startService()
    assert once() == [False, True]
    second.stopService()
    assert signal.getsignal(signal.SIGHUP) is chaining
    assert once() == [False, False]


def test_a_chaining_handler_put_back_past_a_stopped_hubs_notice_is_called_once(
        hub_signals) -> None:
    # as above with two hubs: the second hub's notice, stopped last, puts
    # back the application's handler past the first's (stopped already),
    # which had passed the signal on to that handler since its restart
    import signal

    from txmailhub.tap import HangupNotice

    calls: list[int] = []
    first, second = HangupNotice(), HangupNotice()
    first.privilegedStartService()
    found = signal.getsignal(signal.SIGHUP)

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)
        found(signum, frame)

    signal.signal(signal.SIGHUP, mine)
    first.stopService()
    first.startService()
    second.privilegedStartService()
    first.stopService()
    second.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine
    for restart in (False, True):
        if restart:
            first.startService()
        del calls[:]
        assert _answered(_sighup_now(), first, second) == [restart, False]
        assert calls == [signal.SIGHUP], f"the application's handler ran {len(calls)} times"
    first.stopService()
    assert signal.getsignal(signal.SIGHUP) is mine


def test_a_resolver_given_with_nameservers_set_says_which_one_is_used(
        tmp_path: Path, log_events) -> None:
    # MailHub(settings, resolver=...) asks the application's resolver, never
    # [relay] nameservers: a config that names some was silently not used
    from twisted.logger import formatEvent

    from txmailhub import testing

    text = ONE_SMTP_LISTENER + '[relay]\nnameservers = ["127.0.0.1:5353"]\n'
    config = tmp_path / "hub.toml"
    config.write_text(text)
    settings = load_text(config.read_text(), str(config))
    hub = MailHub(settings, reactor=MemoryReactorClock(), resolver=testing.StaticResolver())
    hub.startService()
    hub.stopService()
    lines = [formatEvent(e) for e in log_events
             if e.get("log_namespace") == "txmailhub.service" and "nameservers" in formatEvent(e)]
    assert lines == ["[relay] nameservers (127.0.0.1:5353) not used: the relay asks the "
                     "resolver given to MailHub(resolver=...)"]
    assert [e["log_level"].name for e in log_events
            if "nameservers" in formatEvent(e)] == ["warn"]


def test_a_resolver_given_without_nameservers_set_adds_no_line(
        tmp_path: Path, log_events) -> None:
    from twisted.logger import formatEvent

    from txmailhub import testing

    config = tmp_path / "hub.toml"
    config.write_text(ONE_SMTP_LISTENER)
    hub = MailHub(load_text(config.read_text(), str(config)), reactor=MemoryReactorClock(),
                  resolver=testing.StaticResolver())
    hub.startService()
    hub.stopService()
    assert not [e for e in log_events if "nameservers" in formatEvent(e)]


@pytest.mark.parametrize(("name", "blamed"), [
    ("{state}", True),  # the state directory itself
    ("{state}/queue/x", True),
    ("{rel}/queue/x", True),  # relative to the working folder
    ("{state}-other/x", False),  # a name that only begins like it
])
def test_a_start_failing_on_a_file_is_the_state_directorys_only_when_the_file_is_in_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, blamed: bool) -> None:
    from txmailhub.relay.service import RelayService
    from txmailhub.service import StateDirError

    hub, reactor = one_listener_hub(tmp_path)
    state = hub.settings.hub.state_dir
    monkeypatch.chdir(os.path.dirname(state))
    filename = name.format(state=state, rel=os.path.basename(state))

    def broken(self) -> None:
        Service.startService(self)
        raise OSError(13, "Permission denied", filename)

    monkeypatch.setattr(RelayService, "startService", broken)
    with pytest.raises((OSError, StateDirError)) as raised:  # (a StartError is a SystemExit)
        hub.startService()
    assert isinstance(raised.value, StateDirError) is blamed
    assert not hub.running and reactor.getDelayedCalls() == []


def test_a_daemonized_twistd_hears_of_a_bug_in_a_start_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # start_error_type is for StartErrors: a bug's exception keeps its
    # type (and traceback)
    import sys

    from txmailhub.relay.service import RelayService
    from txmailhub.service import DaemonStartError

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the setter replaces it

    def buggy(self) -> None:
        Service.startService(self)
        raise RuntimeError("a bug")

    monkeypatch.setattr(RelayService, "startService", buggy)
    hub, reactor = one_listener_hub(tmp_path)
    hub.start_error_type = DaemonStartError
    with pytest.raises(RuntimeError, match=r"^a bug$"):
        hub.startService()
    assert not hub.running and reactor.getDelayedCalls() == []


def test_a_daemonized_twistd_start_error_is_logged_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from txmailhub.service import DaemonStartError

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the setter replaces it
    hub, _reactor = _hub_whose_queue_lock_cannot_be_opened(tmp_path)
    hub.start_error_type = DaemonStartError
    # the whole message is logged; only its brief reaches twistd's parent
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(DaemonStartError):
            hub.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lock = Path(hub.settings.queue_dir) / ".lock"
    assert any(e.get("message") == (
        f"mailhub: cannot use {lock}: Is a directory; check [hub] state_dir "
        f"({hub.settings.hub.state_dir})") for e in events), events


def test_undoing_a_privileged_start_leaves_a_running_notice_answering() -> None:
    # MailHub's roll-back undoes only a notice that never started: one that
    # runs is put back by its own stop
    import signal

    from twisted.internet.testing import MemoryReactor

    from txmailhub.signals import HangupNotice

    previous = signal.getsignal(signal.SIGHUP)
    usr1 = signal.getsignal(signal.SIGUSR1)
    notice = HangupNotice(reactor=MemoryReactor())
    try:
        notice.privilegedStartService()
        notice.startService()
        installed = signal.getsignal(signal.SIGHUP)
        notice.undo_privileged_start()
        assert signal.getsignal(signal.SIGHUP) == installed != previous
        assert notice in HangupNotice._answering
        notice.stopService()
        assert signal.getsignal(signal.SIGHUP) == previous
    finally:
        signal.signal(signal.SIGHUP, previous)
        signal.signal(signal.SIGUSR1, usr1)
        if notice in HangupNotice._answering:
            HangupNotice._answering.remove(notice)


def test_the_state_directory_made_for_a_hub_is_named_durably(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # acknowledged mail lives under it: a crash must not take its name
    from txmailhub.store import sync

    settings = quiet_settings(tmp_path)
    assert not os.path.exists(settings.hub.state_dir)
    synced: list[str] = []
    real = sync.fsync_dir
    monkeypatch.setattr(sync, "fsync_dir", lambda path: synced.append(path) or real(path))
    MailHub(settings, reactor=MemoryReactorClock())
    assert os.path.isdir(settings.hub.state_dir)
    assert os.path.dirname(settings.hub.state_dir) in synced


def test_twistd_refuses_a_nameserver_on_an_interface_the_host_lacks(
        tmp_path: Path, capsys) -> None:
    import pytest

    from txmailhub.tap import Options

    config = tmp_path / "hub.toml"
    text = ('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
            'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
            '[pop3]\nlisten = []\n[relay]\nnameservers = ["[fe80::53%nosuch0]:53"]\n')
    config.write_text(text)
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(config)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"{config}: [relay] nameservers: '[fe80::53%nosuch0]:53': this host "
                        "has no network interface 'nosuch0' (at line 12)\n"), err
    name = socket.if_nameindex()[0][1]  # an interface this host has
    config.write_text(text.replace("nosuch0", name))
    options = Options()
    options.parseOptions(["--config", str(config)])
    assert options["settings"].relay.nameservers == (f"[fe80::53%{name}]:53",)


def _refusing_reactor(errno_: int):
    """A memory reactor whose ``listenTCP`` fails as the kernel's bind did."""
    from twisted.internet.error import CannotListenError

    class Refusing(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            raise CannotListenError(interface, port, OSError(errno_, os.strerror(errno_)))

    return Refusing()


def test_a_port_below_1024_refused_to_a_user_says_how_to_get_it(monkeypatch) -> None:
    # the walkthrough: twistd started as the hub's user (systemd's User=
    # without AmbientCapabilities, or by hand) on port 25 ended with the
    # bind's "Permission denied" and nothing to do about it; `check`, run
    # as that user, had said ok
    import errno as errno_module

    from twisted.internet.protocol import Factory

    from txmailhub import service as service_module
    from txmailhub.service import ListenError

    monkeypatch.setattr(service_module.os, "geteuid", lambda: 998)
    read = service_module.unprivileged_port_start()  # this system's (1024 as a rule)
    start = 1024 if read is None else read
    if not 25 < start <= 2525:
        pytest.skip(f"ports from {start} on need no root here")
    service = ListenerService(_refusing_reactor(errno_module.EACCES), "smtp",
                              "tcp:25:interface=127.0.0.1", Factory())
    with pytest.raises(ListenError) as caught:
        service.startService()
    assert str(caught.value) == (
        "mailhub: cannot listen for smtp on tcp:25:interface=127.0.0.1: Couldn't listen on "
        f"127.0.0.1:25: [Errno 13] Permission denied. (a port below {start} needs root here"
        + ("" if read is None else f" (sysctl net.ipv4.ip_unprivileged_port_start = {start})")
        + ": start twistd as root with "
        "--uid, which binds the ports before it switches user, or give the hub's user "
        "CAP_NET_BIND_SERVICE, systemd's AmbientCapabilities=; docs/deployment.rst)")
    # a port above 1024, a port in use, or root refused (a security
    # module): the bind's words alone, as before
    for euid, port, errno_ in ((998, 2525, errno_module.EACCES),
                               (998, 25, errno_module.EADDRINUSE),
                               (0, 25, errno_module.EACCES)):
        monkeypatch.setattr(service_module.os, "geteuid", lambda euid=euid: euid)
        service = ListenerService(_refusing_reactor(errno_), "smtp",
                                  f"tcp:{port}:interface=127.0.0.1", Factory())
        with pytest.raises(ListenError) as caught:
            service.startService()
        assert "needs root" not in str(caught.value), (euid, port, errno_)
        assert str(caught.value).endswith(f"{os.strerror(errno_)}."), str(caught.value)


@pytest.mark.parametrize(("start", "port", "said"), [
    ("1024\n", 25, "a port below 1024 needs root here"),
    # an admin (or a container) lowered it: 587 is anyone's, and a refusal
    # there is something else -- no advice about root
    ("80\n", 587, ""),
    # raised: 1500 is privileged, which "below 1024" did not say
    ("2000\n", 1500, "a port below 2000 needs root here"),
    # the ends of the range: 0 (Docker's: every port anyone's), 65535
    ("0\n", 25, ""),
    ("65535\n", 65534, "a port below 65535 needs root here"),
    ("1024\n", 1, "a port below 1024 needs root here"),
    ("1024\n", 0, ""),  # port 0 is no port a bind asks for by number
])
def test_the_privileged_port_advice_follows_the_systems_unprivileged_port_start(
        tmp_path, monkeypatch, start: str, port: int, said: str) -> None:
    from types import SimpleNamespace

    from txmailhub import service

    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text(start)
    monkeypatch.setattr(service, "UNPRIVILEGED_PORT_START", str(sysctl), raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    advice = service._privileged_port_advice(SimpleNamespace(port=port),
                                             OSError(errno.EACCES, "Permission denied"))
    if said:
        assert said in advice and "ip_unprivileged_port_start" in advice, advice
    else:
        assert advice == ""


@pytest.mark.parametrize("start", [None, "", "soon\n", "-1\n", "70000\n", "65536\n"])
def test_the_privileged_port_advice_names_no_sysctl_it_could_not_read(
        tmp_path, monkeypatch, start: str | None) -> None:
    # no /proc (another system, a chroot) or a value that is no port: the
    # classic rule, 1024, said as that -- "sysctl ... = 1024" named a
    # value no sysctl gave
    from types import SimpleNamespace

    from txmailhub import service

    sysctl = tmp_path / "ip_unprivileged_port_start"
    if start is not None:
        sysctl.write_text(start)
    monkeypatch.setattr(service, "UNPRIVILEGED_PORT_START", str(sysctl), raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    refused = OSError(errno.EACCES, "Permission denied")
    advice = service._privileged_port_advice(SimpleNamespace(port=25), refused)
    assert advice.startswith(" (a port below 1024 needs root here: start twistd"), advice
    assert "sysctl" not in advice, advice
    assert service._privileged_port_advice(SimpleNamespace(port=1024), refused) == ""


@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENFILE])
def test_a_start_out_of_file_descriptors_says_so_not_to_check_the_state_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    # the queue's recovery cannot open a record for want of descriptors:
    # the start fails (the entry stays where it is, relay.rst) and undoes
    # itself; its line blamed the state directory ("check [hub]
    # state_dir"), where nothing is wrong, not the limit to raise
    from txmailhub.relay.service import RelayService
    from txmailhub.service import StateDirError

    hub, reactor = one_listener_hub(tmp_path)
    record = os.path.join(hub.settings.queue_dir, "0123456789ABCDEF.json")

    def broken(self) -> None:
        Service.startService(self)
        raise OSError(err, os.strerror(err), record)

    monkeypatch.setattr(RelayService, "startService", broken)
    with pytest.raises(StateDirError) as raised:
        hub.startService()
    message = raised.value.message
    assert not hub.running and reactor.getDelayedCalls() == []
    assert "check [hub] state_dir" not in message, message
    assert message.startswith(f"mailhub: cannot use {record}: {os.strerror(err)}; ")
    limit = ("the hub has no file descriptor left: raise its limit (LimitNOFILE= in its "
             "systemd unit, ulimit -n)" if err == errno.EMFILE else
             "the system has no file descriptor left (sysctl fs.file-max)")
    assert message.endswith(limit + ", or start it again once descriptors are free"), message
