"""``twistd mailhub``'s checks of twistd's own options, made while the
options are parsed: twistd acts on ``--pidfile`` before ``makeService``
and on ``--uid`` after the ports are bound, each time with a traceback of
its own when they cannot work."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

#: a uid with no entry in the user database (as in the other --uid tests)
NO_SUCH_UID = 4242424


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
                      f'state_dir = "{tmp_path / "state"}"\n[smtp]\nlisten = []\n'
                      '[submission]\nlisten = []\n[pop3]\nlisten = []\n')
    return config


def _parse(tmp_path: Path, *twistd_args: str) -> None:
    """twistd's own option parsing of ``twistd ARGS mailhub --config ...``."""
    from twisted.scripts._twistd_unix import ServerOptions

    ServerOptions().parseOptions([*twistd_args, "mailhub", "--config",
                                  str(_config(tmp_path))])


def _refused(tmp_path: Path, capsys, *twistd_args: str) -> str:
    with pytest.raises(SystemExit) as info:
        _parse(tmp_path, *twistd_args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


def _no_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


@pytest.mark.skipif(not _no_entry(NO_SUCH_UID), reason="the uid has a passwd entry here")
@pytest.mark.parametrize("gid", [[], ["--gid", str(NO_SUCH_UID)]])
def test_a_uid_without_a_passwd_entry_is_refused_while_parsing(tmp_path: Path, capsys,
                                                              gid: list[str]) -> None:
    # twistd looks the name up for initgroups when it switches (with or
    # without --gid), after the ports are bound: a KeyError traceback
    err = _refused(tmp_path, capsys, "-n", "--pidfile=", "--uid", str(NO_SUCH_UID), *gid)
    assert err.startswith(f"mailhub: --uid {NO_SUCH_UID} has no entry in the user database"), err
    assert "create the user" in err
    assert not (tmp_path / "state").exists()


def test_a_uid_with_a_passwd_entry_passes(tmp_path: Path, capsys) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    _parse(tmp_path, "-n", "--pidfile=", "--uid", str(nobody))
    assert "--uid" not in capsys.readouterr().err


def test_a_pid_file_that_is_a_folder_is_refused(tmp_path: Path, capsys) -> None:
    # twistd's checkPID opened it: IsADirectoryError, before makeService
    (tmp_path / "run").mkdir()
    err = _refused(tmp_path, capsys, "-n", "--pidfile", str(tmp_path / "run"))
    assert err == (f"mailhub: --pidfile {tmp_path / 'run'} is a folder: give --pidfile the "
                   "path of a file in it\n")


def test_a_dangling_link_as_pid_file_is_refused(tmp_path: Path, capsys) -> None:
    # twistd wrote through it: FileNotFoundError (the folder missing), or
    # a file made wherever the link points
    link = tmp_path / "twistd.pid"
    link.symlink_to(tmp_path / "gone" / "x.pid")
    err = _refused(tmp_path, capsys, "-n", "--pidfile", str(link))
    assert err.startswith(f"mailhub: --pidfile {link} is a symbolic link to "
                          f"{tmp_path / 'gone' / 'x.pid'}, which does not exist"), err
    link.unlink()
    link.symlink_to(tmp_path / "x.pid")
    _refused(tmp_path, capsys, "-n", "--pidfile", str(link))
    assert not (tmp_path / "x.pid").exists()


def test_a_live_or_fresh_pid_file_is_left_to_twistd(tmp_path: Path, capsys) -> None:
    pid_file = tmp_path / "twistd.pid"
    _parse(tmp_path, "-n", "--pidfile", str(pid_file))  # none yet
    pid_file.write_text(f"{os.getpid()}\n")  # running: twistd says so itself
    _parse(tmp_path, "-n", "--pidfile", str(pid_file))
    pid_file.write_text("junk")  # twistd: "contains non-numeric value"
    _parse(tmp_path, "-n", "--pidfile", str(pid_file))
    assert "--pidfile" not in capsys.readouterr().err


def _gone_pid() -> int:
    """A pid no process has now: a child that has been reaped."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the check as nobody: needs root")
def test_a_stale_pid_file_the_user_cannot_remove_is_refused(tmp_path: Path) -> None:
    # twistd -n started as the hub's user, the pid file left by a run that
    # was killed, in a folder that user may not write: checkPID's
    # os.remove was a PermissionError traceback
    import shutil
    import tempfile

    from txmailhub import tap

    nobody = pwd.getpwnam("nobody")
    # not under tmp_path: pytest's folder for root is closed to nobody
    run = Path(tempfile.mkdtemp(prefix="txmailhub-run-"))
    try:
        os.chmod(run, 0o755)  # root's
        pid_file = run / "twistd.pid"
        pid_file.write_text(f"{_gone_pid()}\n")
        os.chown(pid_file, nobody.pw_uid, nobody.pw_gid)
        assert tap.pid_file_problems(str(pid_file)) == []  # root may remove it
        said = _as_nobody(lambda: "\n".join(tap.pid_file_problems(str(pid_file))))
    finally:
        shutil.rmtree(run)
    assert said.startswith(f"mailhub: --pidfile {pid_file} is left from a hub that has "
                           "stopped (no process "), said
    assert f"nobody may not remove files in its folder {run}; remove it" in said, said


def _as_nobody(check) -> str:
    """What ``check()`` returns in a child process running as nobody."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            os.write(write, check().encode())
        except BaseException as e:
            os.write(write, f"raised {e!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode()
    os.waitpid(child, 0)
    return said


def test_the_start_shows_a_config_path_or_value_escaped(tmp_path: Path, capsys) -> None:
    # twistd mailhub printed the config's problems as they were: an ESC in
    # a path or a value reached the terminal raw (mailhub check escapes it)
    from txmailhub.tap import Options

    options = Options()
    with pytest.raises(SystemExit):
        options.parseOptions(["--config", str(tmp_path / "no\x1b[31mred.toml")])
    err = capsys.readouterr().err
    assert err == (f"{tmp_path}/no\\x{{1B}}[31mred.toml: cannot read the config file: "
                   "No such file or directory\n"), err
    config = tmp_path / "hub.toml"
    config.write_text('[hub]\nhostname = "mail.example.org"\n'
                      'domains = ["example.org", "b\\u001bd.org"]\n')
    with pytest.raises(SystemExit):
        Options().parseOptions(["--config", str(config)])
    err = capsys.readouterr().err
    assert "[hub] domains: 'b\\x{1B}d.org' is not a domain name" in err, err
    assert "\x1b" not in err


@pytest.mark.skipif(os.geteuid() != 0 or not _no_entry(NO_SUCH_UID),
                    reason="the switch is judged as root, for a uid without an entry")
def test_make_service_given_such_a_uid_by_an_application_says_so_too(tmp_path: Path,
                                                                     capsys) -> None:
    # an application's own options (no twistd parsing): a KeyError traceback
    from txmailhub.tap import Options, makeService

    options = Options()
    options.parseOptions(["--config", str(_config(tmp_path))])
    options.parent = {"uid": NO_SUCH_UID, "gid": None, "nodaemon": True, "pidfile": None,
                      "logfile": "-"}
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 2
    assert f"mailhub: --uid {NO_SUCH_UID} has no entry" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("flag", ["+i", "+a"])
def test_a_stale_pid_file_made_immutable_or_append_only_is_refused(tmp_path: Path, capsys,
                                                                    flag: str) -> None:
    # root cannot remove it either: checkPID's os.remove was an EPERM traceback
    import shutil
    import subprocess

    pid_file = tmp_path / "twistd.pid"
    pid_file.write_text(f"{_gone_pid()}\n")
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, flag, str(pid_file)],
                                        capture_output=True).returncode != 0:
        pytest.skip("chattr cannot set the flag here")
    try:
        err = _refused(tmp_path, capsys, "-n", "--pidfile", str(pid_file))
    finally:
        subprocess.run([chattr, "-ia", str(pid_file)], check=True)
    assert "twistd, which removes such a file, cannot: it is immutable or append-only" in err


@pytest.mark.parametrize("twistd_args, log_file", [
    (["-n", "--debug"], None),
    (["--debug", "-n"], None),
    (["-n"], None),
    (["--debug"], "twistd.log"),
])
def test_the_hub_logs_where_twistds_logger_would_under_debug(
        tmp_path: Path, monkeypatch, twistd_args: list[str], log_file: str | None) -> None:
    # ``-n --debug`` and ``--debug`` reach makeService with the same
    # options (twistd sets ``nodaemon`` from ``--debug`` after its logger
    # read it); the hub took both for ``--debug`` alone, and ``-n --debug``
    # logged to ./twistd.log, not to standard output as twistd does
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure
    from twisted.scripts._twistd_unix import ServerOptions, UnixApplicationRunner

    from txmailhub.run_files import twistd_log_file
    from txmailhub.tap import _logs_to_stdout

    # --debug turns on twisted's debug hooks process-wide: put them back
    monkeypatch.setattr(Failure, "__init__", Failure.__init__)
    monkeypatch.setattr(Deferred, "debug", Deferred.debug)
    monkeypatch.chdir(tmp_path)
    config = ServerOptions()
    config.parseOptions([*twistd_args, "--pidfile=", "mailhub", "--config",
                         str(_config(tmp_path))])
    runner = UnixApplicationRunner(config)  # its logger reads ``nodaemon`` here
    runner.preApplication()  # and twistd sets it from ``debug`` here
    assert config["nodaemon"]  # all alike by makeService
    assert bool(runner.logger._nodaemon) is (log_file is None)  # twistd's own choice
    assert twistd_log_file(config) == log_file
    assert _logs_to_stdout(config) is (log_file is None)


def test_a_named_pipe_as_pid_file_is_refused_not_waited_on(tmp_path: Path, capsys) -> None:
    # twistd reads the pid file before it starts: a plain open() of a FIFO
    # waited for a writer for ever (ours, and twistd's checkPID after it)
    from fifo_writer import fed_fifo

    pid_file = tmp_path / "twistd.pid"
    with fed_fifo(pid_file, f"{os.getpid()}\n".encode()):
        err = _refused(tmp_path, capsys, "-n", "--pidfile", str(pid_file))
    assert err == (f"mailhub: --pidfile {pid_file} is not a regular file (a named pipe, "
                   "device or socket): twistd would wait on it or fail; give --pidfile "
                   "the path of a file\n"), err
