"""``twistd mailhub`` and ``twistd -y`` as a user runs them: real processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TWISTD, Hub, free_ports, no_logins

ROOT = Path(__file__).resolve().parents[2]
# twistd stops cleanly on SIGTERM and then re-raises the signal, as POSIX
# daemons do, so a clean stop exits "killed by SIGTERM" (-15), not 0.
CLEAN_STOP = (0, -signal.SIGTERM)

# a hostname: the default (the machine's name) may be a warning
HUB = '[hub]\nhostname = "mail.example.org"\n'


# Twisted's newer runner, beside twistd
TWIST = shutil.which("twist", path=str(Path(sys.executable).parent)) or "twist"

# where ``mailhub`` and ``twistd mailhub`` look when nothing names a config file
SYSTEM_CONFIG = "/etc/txmailhub/mailhub.toml"


def run_twistd(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    result = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert re.search(r"^\s+mailhub\s+", result.stdout, re.M), result.stdout


def test_hub_starts_listens_and_stops_cleanly_on_sigterm(hub: Hub) -> None:
    for port in (hub.smtp_port, hub.submission_port, hub.pop3_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            greeting = s.recv(200)
        assert greeting.startswith((b"220 ", b"+OK")), greeting
    assert hub.stop(signal.SIGTERM) in CLEAN_STOP
    log = hub.log_text()
    assert "Traceback" not in log
    assert "Server Shut Down." in log
    for port in (hub.smtp_port, hub.pop3_port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            raise AssertionError(f"port {port} still open after SIGTERM")
        except ConnectionRefusedError:
            pass


def test_sighup_is_answered_with_a_log_line_not_a_silent_death(hub: Hub) -> None:
    # the "reload" reflex: twistd has no handler for it, and the hub died at
    # once, without its graceful stop and without a word in the log
    # (sent as soon as the ports listen, before the reactor runs: the
    # handler is in place from the binding on)
    hub.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while "SIGHUP ignored" not in hub.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SIGHUP ignored" in hub.log_text() and hub.proc.poll() is None
    with socket.create_connection(("127.0.0.1", hub.smtp_port), timeout=5) as s:
        assert s.recv(200).startswith(b"220 ")
    assert hub.stop(signal.SIGTERM) in CLEAN_STOP


def test_demo_config_runs(tmp_path: Path) -> None:
    """etc/demo.toml as shipped, but on free ports (the fixed ones may be busy here)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    text = (ROOT / "etc" / "demo.toml").read_text()
    ports = free_ports(3)
    for old, new in zip(("2525", "2587", "2110"), ports):
        assert f"tcp:{old}:" in text
        text = text.replace(f"tcp:{old}:", f"tcp:{new}:")
    (etc / "demo.toml").write_text(text)
    demo = subprocess.run(
        [sys.executable, "-m", "txmailhub.demo", "--config", str(etc / "demo.toml")],
        capture_output=True, text=True, timeout=60,
    )
    assert demo.returncode == 0, demo.stderr
    assert "demo@example.test" in demo.stdout and str(ports[0]) in demo.stdout
    hub = Hub(tmp_path, etc / "demo.toml", {}, dict(zip(("smtp", "submission", "pop3"), ports)),
              {"demo@example.test": "demo"})

    def repick() -> None:
        # the ports were picked free and released: another process may have
        # taken one before the hub bound it ("Address already in use");
        # Hub.start then tries again on new ones
        nonlocal text
        for role, new in zip(("smtp", "submission", "pop3"), free_ports(3)):
            text = text.replace(f"tcp:{hub.ports[role]}:", f"tcp:{new}:")
            hub.ports[role] = new
        (etc / "demo.toml").write_text(text)

    hub.repick = repick
    hub.start()
    try:
        with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
            s.sendmail("you@example.com", ["demo@example.test"], b"Subject: hi\r\n\r\nhello\r\n")
        assert len(hub.messages("demo@example.test")) == 1
        assert (tmp_path / "var" / "mail" / "example.test" / "demo" / "new").is_dir()
    finally:
        assert hub.stop() in CLEAN_STOP


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(no_logins(HUB + 'domains = ["example.org"]\n[smtp]\nidle_timeout = "5x"\n'
                                'foo = 1\n'))
    result = run_twistd("mailhub", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert "[smtp] idle_timeout: unknown duration '5x'" in result.stderr
    assert "[smtp] foo: unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_pid_and_log_files_in_a_missing_folder_exit_2_with_a_line_each(make_hub) -> None:
    # "Without systemd" before its ``install -d /run/txmailhub
    # /var/log/txmailhub`` (or after a reboot emptied /run): a traceback
    # from the hub's log observer, exit 1
    hub = make_hub(start=False)
    run, logs = hub.folder / "run", hub.folder / "log"
    result = subprocess.run(
        [TWISTD, f"--pidfile={run / 'mailhub.pid'}", f"--logfile={logs / 'mailhub.log'}",
         "mailhub", "--config", str(hub.config_path)],
        capture_output=True, text=True, timeout=60, cwd=hub.folder)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert lines == [
        f"mailhub: --pidfile {run / 'mailhub.pid'} cannot be written: its folder {run} "
        "does not exist",
        f"mailhub: --logfile {logs / 'mailhub.log'} cannot be written: its folder {logs} "
        "does not exist"]


@pytest.mark.parametrize("env", [None, ""])
def test_without_config_it_reads_the_mailhub_commands_default(tmp_path: Path, monkeypatch,
                                                             env: str | None) -> None:
    # ``mailhub`` falls back to /etc/txmailhub/mailhub.toml; twistd mailhub
    # exited 2 ("--config PATH is required") where it was installed there.
    # An empty $MAILHUB_CONFIG counts as unset, for both.
    if os.path.exists(SYSTEM_CONFIG):
        pytest.skip(f"{SYSTEM_CONFIG} exists on this machine")
    if env is None:
        monkeypatch.delenv("MAILHUB_CONFIG", raising=False)
    else:
        monkeypatch.setenv("MAILHUB_CONFIG", env)
    result = run_twistd("mailhub", cwd=tmp_path)
    assert result.returncode == 2  # a config it cannot read, as for the mailhub command
    out = result.stdout + result.stderr
    assert "--config PATH is required" not in out
    assert f"{SYSTEM_CONFIG}: cannot read the config file: No such file or directory" in out
    assert "Traceback" not in out


def test_an_empty_config_path_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    # ``--config "$CONF"`` with $CONF unset: one line and exit 2, not the
    # default file (nor the current folder read as one)
    monkeypatch.delenv("MAILHUB_CONFIG", raising=False)
    result = run_twistd("mailhub", "--config=", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "mailhub: --config: the path is empty; leave the option out to read "
        f"$MAILHUB_CONFIG, else {SYSTEM_CONFIG}\n")


def test_config_from_the_environment(make_hub, monkeypatch) -> None:
    """``$MAILHUB_CONFIG`` stands in for ``--config``, as for ``mailhub``."""
    hub = make_hub(start=False)
    monkeypatch.setenv("MAILHUB_CONFIG", str(hub.config_path))
    with open(hub.log_path, "ab") as log:  # where wait_listening reads the ports
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logfile=-", "mailhub"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=hub.folder)
    hub.proc = proc
    hub.wait_listening()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250


def test_debug_in_the_foreground_logs_to_standard_output(make_hub) -> None:
    """``twistd -n --debug`` with no ``--logfile`` logs to standard output,
    as ``-n`` does and as twistd's own logger would: the hub wrote
    ``./twistd.log`` instead (twistd sets ``nodaemon`` from ``--debug``
    before ``makeService``, so ``-n --debug`` looked like ``--debug``)."""
    hub = make_hub(start=False)
    with open(hub.log_path, "ab") as log:  # where wait_listening reads the ports
        proc = subprocess.Popen(
            [TWISTD, "-n", "--debug", "--pidfile=", "mailhub", "--config",
             str(hub.config_path)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=hub.folder)
    hub.proc = proc
    assert proc.stdin is not None
    proc.stdin.write(b"continue\n")  # --debug runs the reactor under pdb
    proc.stdin.close()
    hub.wait_listening()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250
    assert "txmailhub started" in hub.log_text()
    assert not (hub.folder / "twistd.log").exists()
    assert hub.stop(signal.SIGTERM) in CLEAN_STOP


@pytest.mark.parametrize("to_file", [False, True], ids=["stdout", "log-file"])
def test_twist_runs_the_hub_and_keeps_its_own_log(make_hub, to_file: bool) -> None:
    """``twist mailhub`` logs where twist sends it: standard output, or its
    ``--log-file``.  The hub took twist's options for a twistd daemon's and
    made an empty ``./twistd.log`` (mode 0640) that nothing ever wrote."""
    hub = make_hub(start=False)
    # text, not twist's JSON lines: wait_listening reads the ports there
    args = [TWIST, "--log-format=text"]
    out_path = hub.folder / "twist.out"
    if to_file:
        args.append(f"--log-file={hub.log_path}")
    else:
        out_path = hub.log_path
    with open(out_path, "ab") as out:
        proc = subprocess.Popen([*args, "mailhub", "--config", str(hub.config_path)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=hub.folder)
    hub.proc = proc
    hub.wait_listening()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        s.sendmail("someone@example.com", ["alice@example.org"],
                   b"Subject: under twist\r\n\r\nhello\r\n")
    assert len(hub.messages("alice@example.org")) == 1
    assert hub.stop(signal.SIGTERM) in CLEAN_STOP
    log = hub.log_text()
    assert "txmailhub started" in log and "txmailhub stopped" in log
    assert "Traceback" not in log
    assert not (hub.folder / "twistd.log").exists()
    if to_file:
        assert "txmailhub" not in (hub.folder / "twist.out").read_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_twist_writes_a_failed_start_to_its_log_file(make_hub, log_format: str) -> None:
    """twist starts the hub before it begins logging: a port in use was
    one line on standard error and nothing in ``--log-file``."""
    import json

    hub = make_hub(start=False)
    log_path = hub.folder / "twist.log"
    with blocked(hub, "pop3"):
        result = subprocess.run(
            [TWIST, f"--log-format={log_format}", f"--log-file={log_path}", "mailhub",
             "--config", str(hub.config_path)],
            capture_output=True, text=True, timeout=60, cwd=hub.folder)
    line = f"mailhub: cannot listen for pop3 on tcp:{hub.pop3_port}:interface=127.0.0.1"
    assert result.returncode == 1
    assert [x for x in result.stderr.splitlines() if x.startswith("mailhub:")] == [
        f"{line}: Couldn't listen on 127.0.0.1:{hub.pop3_port}: "
        "[Errno 98] Address already in use."], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    logged = log_path.read_text()
    if log_format == "json":
        [event] = [json.loads(x.strip("\x1e")) for x in logged.splitlines() if x.strip()]
        assert event["message"].startswith(line), event
        assert event["log_level"]["name"] == "error"
    else:
        [text] = logged.splitlines()
        assert line in text, logged


def test_port_in_use_exits_1_with_one_clear_line(make_hub, tmp_path: Path) -> None:
    hub = make_hub(start=False)
    with blocked(hub, "pop3"):
        result = run_twistd("mailhub", "--config", str(hub.config_path), cwd=hub.folder)
        # in the foreground with a pid file: twistd removes it only after an
        # Exception, and our start error is a SystemExit; left behind it
        # can name a running pid at the next start (1 in a container)
        foreground = subprocess.run(
            [TWISTD, "-n", "--pidfile=n.pid", "--logfile=-", "mailhub",
             "--config", str(hub.config_path)],
            capture_output=True, text=True, timeout=60, cwd=hub.folder)
        # daemonized, the bind fails after twistd's fork: the child must tell
        # the parent, which prints it and exits 1 (a SystemExit there left
        # the parent waiting for good)
        pidfile = hub.folder / "d.pid"
        daemon = subprocess.run(
            [TWISTD, f"--pidfile={pidfile}", f"--logfile={hub.folder / 'd.log'}", "mailhub",
             "--config", str(hub.config_path)],
            capture_output=True, text=True, timeout=60, cwd=hub.folder)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"mailhub: cannot listen for pop3 on tcp:{hub.pop3_port}:interface=127.0.0.1" in output
    assert "Traceback" not in output
    assert foreground.returncode == 1
    assert "mailhub: cannot listen for pop3" in foreground.stdout + foreground.stderr
    assert not (hub.folder / "n.pid").exists()
    assert daemon.returncode == 1
    # twistd's parent prints 100 bytes of the child's error: the cause
    # first, as text (twistd's own reader printed a bytes repr, b'...')
    assert (f"mailhub: cannot start: Address already in use: pop3 on tcp:{hub.pop3_port}"
            in daemon.stderr), daemon.stdout + daemon.stderr
    assert "b'" not in daemon.stdout + daemon.stderr
    assert f"mailhub: the whole message is in {hub.folder / 'd.log'}" in daemon.stderr
    # and the log has the whole line
    assert (f"mailhub: cannot listen for pop3 on tcp:{hub.pop3_port}:interface=127.0.0.1"
            in (hub.folder / "d.log").read_text())
    # the daemon removes its pid file after it told the parent: the parent
    # may exit first
    deadline = time.monotonic() + 20
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()


def test_second_hub_on_the_same_state_dir_exits_1(hub: Hub, make_hub) -> None:
    """Other ports, same state directory: two hubs would deliver one queue
    twice over; the second one must not start."""
    other = make_hub(start=False, sections={"hub": {"state_dir": str(hub.state_dir)}})
    result = run_twistd("mailhub", "--config", str(other.config_path), cwd=other.folder)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert (f"another txmailhub is running on the state directory {hub.state_dir}"
            in output), output
    assert "Traceback" not in output
    # it never listened: the hub logs each port as it binds it ("smtp
    # listening on 127.0.0.1:PORT"), and the refusal comes before any
    assert " listening on " not in output, output
    # daemonized too: refused before twistd forks (after it, the parent would
    # wait for a child that exited without telling it)
    daemon = subprocess.run(
        [TWISTD, f"--pidfile={other.folder / 'd.pid'}", f"--logfile={other.folder / 'd.log'}",
         "mailhub", "--config", str(other.config_path)],
        capture_output=True, text=True, timeout=60, cwd=other.folder)
    assert daemon.returncode == 1
    assert "another txmailhub is running" in daemon.stdout + daemon.stderr
    assert not (other.folder / "d.pid").exists()
    log = other.folder / "d.log"
    text = log.read_text() if log.exists() else ""
    assert " listening on " not in text, text
    # and no process of it is left (a daemon's child is forked before its
    # parent exits: one that went on running is there to be found now)
    assert _running_with(str(other.config_path)) == [], other.config_path
    # the first one is untouched, and once it is gone the state is free
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250
    hub.kill()  # a crash: the kernel drops the lock with the process
    other.start()
    with smtplib.SMTP("127.0.0.1", other.smtp_port, timeout=10) as s:
        assert s.noop()[0] == 250


def _running_with(argument: str) -> list[int]:
    """The processes with ``argument`` on their command line."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if os.fsencode(argument) in args:
            pids.append(int(cmdline.parent.name))
    return pids


def example_tac(hub: Hub) -> Path:
    """etc/mailhub.tac as shipped, written into the hub's folder with the
    hub's own config file in place of /etc/txmailhub/mailhub.toml: the
    .tac a user copies and runs with ``twistd -y``."""
    tac = hub.folder / "mailhub.tac"
    example = (ROOT / "etc" / "mailhub.tac").read_text()
    tac.write_text(example.replace("/etc/txmailhub/mailhub.toml", str(hub.config_path)))
    return tac


def blocked(hub: Hub, role: str) -> socket.socket:
    """A socket listening on a port of its own, which the hub's ``role``
    listener is pointed at: the hub's start must fail there with "Address
    already in use".  Bound as port 0 and read back (not a port picked free,
    released and bound again, which another process could take in between:
    the error would then name another port, or none); the hub's other
    listeners stay ``tcp:0``, so it is the only port the hub cannot have."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    hub.listen_on(role, blocker.getsockname()[1])
    return blocker


def twistd_with_smtp_port_taken(hub: Hub, *args: str) -> subprocess.CompletedProcess:
    """``twistd *args`` run to its end while another socket listens on the
    hub's SMTP port: a start that must fail with "Address already in use"."""
    with blocked(hub, "smtp"):
        return subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=60,
                              cwd=hub.folder)


def test_tac_file_embeds_the_hub(make_hub) -> None:
    hub = make_hub(start=False)
    tac = example_tac(hub)
    with open(hub.log_path, "ab") as log:  # where wait_listening reads the ports
        proc = subprocess.Popen(
            [TWISTD, "-ny", str(tac), "--pidfile=", "--logfile=-"],
            stdout=log, stderr=subprocess.STDOUT, cwd=hub.folder,
        )
    hub.proc = proc
    hub.wait_listening()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        code, _ = s.ehlo("client.example")
        assert code == 250
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    hub.proc = None
    out = hub.log_path.read_bytes()
    assert proc.returncode in CLEAN_STOP, out
    assert b"Traceback" not in out and b"Server Shut Down." in out


def test_the_plain_script_example_serves_and_stops_on_sigterm(make_hub) -> None:
    # embedding.rst's "Inside your own application", run as a script copies
    # it: the example only built the hierarchy, so the script listened on
    # nothing, and with a start of its own but no shutdown trigger SIGTERM
    # stopped the reactor under a running hub (no 421, no "stopped" line)
    text = (ROOT / "docs" / "embedding.rst").read_text()
    section = text.split("Inside your own application\n", 1)[1]
    # the first two literal blocks: the hierarchy, then the script's lines
    code = "\n".join(line[4:] for block in section.split("::\n\n")[1:3]
                     for line in _indented(block))
    assert "top.startService()" in code and '"before", "shutdown", top.stopService' in code
    hub = make_hub(start=False)
    script = hub.folder / "app.py"
    script.write_text(
        # the application's own observer: where wait_listening reads the ports
        "import sys\nfrom twisted.logger import globalLogBeginner, textFileLogObserver\n"
        "globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])\n"
        + code.replace('load("mailhub.toml")', f"load({str(hub.config_path)!r})"))
    with open(hub.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=log,
                                stderr=subprocess.STDOUT, cwd=hub.folder)
    hub.proc = proc
    hub.wait_listening()
    with smtplib.SMTP("127.0.0.1", hub.smtp_port, timeout=10) as s:
        assert s.ehlo("client.example")[0] == 250
        proc.send_signal(signal.SIGTERM)
        # the session is told, as under twistd: the 421 the hub sends by
        # itself (a NOOP sent now could reach a hub not yet scheduled, and
        # be read in the same turn as the signal's wake-up: a 250 first)
        assert s.getreply()[0] == 421
    proc.wait(timeout=20)
    hub.proc = None
    out = hub.log_path.read_bytes()
    assert proc.returncode == 0, out
    assert b"Traceback" not in out and b"txmailhub stopped" in out, out


def _indented(block: str) -> list[str]:
    """The lines of a literal block: the indented ones from its start."""
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return lines


def test_the_tac_file_daemonized_reports_a_start_error(make_hub) -> None:
    # `twistd -y` with the example as it is (it sets DaemonStartError): a
    # port in use is printed by the waiting parent, which exits 1 (without
    # that line it waits for good)
    hub = make_hub(start=False)
    tac = example_tac(hub)
    pidfile = hub.folder / "t.pid"
    result = twistd_with_smtp_port_taken(hub, "-y", str(tac), f"--pidfile={pidfile}",
                                         f"--logfile={hub.folder / 't.log'}")
    assert result.returncode == 1
    assert (f"mailhub: cannot start: Address already in use: smtp on tcp:{hub.smtp_port}"
            in result.stderr), result.stdout + result.stderr
    assert "b'" not in result.stdout + result.stderr
    # the daemon reports the error to the waiting parent, then removes its
    # pid file on the way out: the parent may exit first
    deadline = time.monotonic() + 20
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pidfile.exists()


def test_the_tac_file_in_the_foreground_reports_a_start_error_in_a_line(make_hub) -> None:
    # the same .tac under `twistd -ny`: the DaemonStartError twistd passes
    # on is one line, not a traceback; exit 1, and twistd's pid file is gone
    hub = make_hub(start=False)
    tac = example_tac(hub)
    pidfile = hub.folder / "fg.pid"
    result = twistd_with_smtp_port_taken(hub, "-ny", str(tac), f"--pidfile={pidfile}",
                                         "--logfile=-")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert (f"mailhub: cannot start: Address already in use: smtp on tcp:{hub.smtp_port}"
            in out), out
    assert "Traceback" not in out and not pidfile.exists()
