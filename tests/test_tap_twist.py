"""``twist mailhub``: the plugin under Twisted's newer runner, whose
options are not twistd's.  twist sets up its own logging (standard
output, or its ``--log-file``); the hub took its options for a twistd
daemon's and made an empty ``./twistd.log`` that nothing wrote."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_tap_checks import _config


def _twist(tmp_path: Path, *twist_args: str) -> Any:
    """twist's own option parsing of ``twist ARGS mailhub --config ...``."""
    from twisted.application.twist._options import TwistOptions

    options = TwistOptions()
    options.parseOptions([*twist_args, "mailhub", "--config", str(_config(tmp_path))])
    assert options.subCommand == "mailhub"
    return options


@pytest.fixture(autouse=True)
def twists_own_streams(monkeypatch) -> None:
    """twist's options module takes ``sys.stdout`` and ``sys.stderr`` as it is
    imported: in a test run, the capture of whichever test imported it
    first (closed since, if that test used ``capsys``), and the outcome
    would hang on the order the tests run in.  Here they are this test's,
    as they are the process's in twist."""
    from twisted.application.twist import _options

    monkeypatch.setattr(_options, "stdout", sys.stdout)
    monkeypatch.setattr(_options, "stderr", sys.stderr)


@pytest.fixture
def no_lasting_handlers(monkeypatch) -> Any:
    """Whatever the hub does to the process's handlers is undone after the
    test: SIGUSR1 and SIGHUP, and what a daemon's start error type changes
    (``service.print_start_errors_plainly``)."""
    from twisted.scripts._twistd_unix import UnixApplicationRunner

    monkeypatch.setattr(UnixApplicationRunner, "_waitForStart",
                        UnixApplicationRunner._waitForStart)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGHUP)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def test_twist_makes_no_log_file_and_sets_none_up(tmp_path: Path, monkeypatch,
                                                  no_lasting_handlers: None) -> None:
    from twisted.application.service import Application
    from twisted.logger import ILogObserver

    from txmailhub import tap
    from txmailhub.run_files import NODAEMON_GIVEN

    monkeypatch.chdir(tmp_path)
    options = _twist(tmp_path)
    assert NODAEMON_GIVEN not in options  # twistd's key: nothing for twist's logger
    usr1 = signal.getsignal(signal.SIGUSR1)
    hub = tap.makeService(options.subOptions)
    assert not (tmp_path / "twistd.log").exists()
    # as twist's ``Twist.service`` does; twist never asks the application
    # for an observer, and a SIGUSR1 handler rotating a file of the hub's
    # choosing would rotate a log twist does not write
    application = Application("mailhub")
    hub.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None
    assert signal.getsignal(signal.SIGUSR1) is usr1
    assert not (tmp_path / "twistd.log").exists()
    # twist runs in the foreground: a start error is not a daemon's, and
    # there is no pid file of twistd's to remove
    assert hub.start_error_type is None
    assert hub.pid_file is None


@pytest.mark.parametrize(("twist_args", "where"), [
    ([], "standard output"),
    (["--log-file=+"], "standard error"),
    (["--log-file", "LOG"], "twist's --log-file"),
])
def test_twists_log_is_named_for_sigusr1(tmp_path: Path, monkeypatch, no_lasting_handlers: None,
                                         twist_args: list[str], where: str) -> None:
    from txmailhub import tap
    from txmailhub.signals import HangupNotice

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "twist.log"
    options = _twist(tmp_path, *[str(log) if a == "LOG" else a for a in twist_args])
    try:
        hub = tap.makeService(options.subOptions)
        [notice] = [s for s in hub if isinstance(s, HangupNotice)]
        assert notice.usr1_where == where
        assert not (tmp_path / "twistd.log").exists()
    finally:
        if options["logFile"] not in (sys.stdout, sys.stderr):
            options["logFile"].close()  # the file twist opened


def test_twists_options_name_no_run_file(tmp_path: Path, monkeypatch) -> None:
    # every rule that reads twistd's options for its log file finds none
    from txmailhub.logfile import observer_for
    from txmailhub.run_files import (
        make_log_file,
        run_file_access_problems,
        run_file_problems,
        runs_under_twist,
        twistd_log_file,
    )

    monkeypatch.chdir(tmp_path)
    options = _twist(tmp_path, "--log-level=debug")
    assert runs_under_twist(options)
    assert twistd_log_file(options) is None
    assert observer_for(options) is None
    assert run_file_problems(options) == []
    assert run_file_access_problems(options) == []
    assert make_log_file(options, None) is None
    assert not (tmp_path / "twistd.log").exists()


@pytest.mark.parametrize("parent", [
    {},
    {"pidfile": "twistd.pid"},
    {"logfile": None},
    {"nodaemon": True, "logfile": None},
    {"logger": print, "logfile": None, "nodaemon": False},
    # twistd's key wins over one of twist's an application also set
    {"logfile": None, "logFile": sys.stdout},
])
def test_other_options_are_read_as_twistds(parent: dict[str, Any]) -> None:
    from txmailhub.run_files import runs_under_twist

    assert not runs_under_twist(parent)


def test_twistds_own_options_are_not_twists(tmp_path: Path) -> None:
    from twisted.scripts._twistd_unix import ServerOptions

    from txmailhub.run_files import runs_under_twist, twistd_log_file

    for argv in ([], ["-n"], ["--logfile", str(tmp_path / "hub.log")]):
        options = ServerOptions()
        options.parseOptions([*argv, "--pidfile=", "mailhub", "--config",
                              str(_config(tmp_path))])
        assert not runs_under_twist(options)
        assert not runs_under_twist(options.subOptions.parent)
    assert twistd_log_file(options) == str(tmp_path / "hub.log")


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is for root")
def test_twist_as_root_is_not_told_of_a_uid_it_lacks(tmp_path: Path, monkeypatch, capsys,
                                                     no_lasting_handlers: None) -> None:
    # twist has no --uid: "(no --uid)" pointed at an option it refuses
    from txmailhub import tap

    monkeypatch.chdir(tmp_path)
    tap.makeService(_twist(tmp_path).subOptions)
    err = capsys.readouterr().err
    assert tap.TWIST_ROOT_WARNING in err
    assert "--uid" not in err


@pytest.mark.parametrize(("twist_args", "to_file"), [
    ([], False),
    (["--log-file=+"], False),
    (["--log-file=-"], False),
    (["--log-file", "LOG"], True),
])
def test_a_failed_start_reaches_twists_log_file_only(tmp_path: Path, monkeypatch,
                                                     no_lasting_handlers: None,
                                                     twist_args: list[str],
                                                     to_file: bool) -> None:
    # twist starts the hub before it begins logging: the start error goes
    # to its --log-file through an observer of the hub's; standard output
    # or error already has it (the SystemExit's line)
    from txmailhub import tap
    from txmailhub.service import StartError

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "twist.log"
    options = _twist(tmp_path, "--log-format=text",
                     *[str(log) if a == "LOG" else a for a in twist_args])
    try:
        hub = tap.makeService(options.subOptions)
        assert (hub.start_error_observer is not None) is to_file

        def refuse() -> None:
            raise StartError("mailhub: cannot listen for smtp on tcp:25: in use")

        monkeypatch.setattr(hub._storage, "startService", refuse)
        with pytest.raises(StartError):
            hub.startService()
    finally:
        if options["logFile"] not in (sys.stdout, sys.stderr):
            options["logFile"].close()
    if to_file:
        [line] = log.read_text().splitlines()
        assert line.endswith(" [txmailhub.service#error] mailhub: cannot listen for smtp "
                             "on tcp:25: in use"), line
    assert not hub.running


def test_a_failed_start_whose_log_line_cannot_be_written_still_raises_its_error(
        tmp_path: Path, monkeypatch, no_lasting_handlers: None) -> None:
    # a full disk under twist's --log-file: the start error, not the
    # write's, is what reaches standard error and ends the start
    from txmailhub import tap
    from txmailhub.service import StartError

    monkeypatch.chdir(tmp_path)
    options = _twist(tmp_path, "--log-format=text", "--log-file", str(tmp_path / "twist.log"))
    try:
        hub = tap.makeService(options.subOptions)

        def full(event: dict) -> None:
            raise OSError(28, "No space left on device")

        hub.start_error_observer = full

        def refuse() -> None:
            raise StartError("mailhub: cannot listen for smtp on tcp:25: in use")

        monkeypatch.setattr(hub._storage, "startService", refuse)
        with pytest.raises(StartError, match="cannot listen for smtp"):
            hub.startService()
    finally:
        options["logFile"].close()
    assert not hub.running
