"""twistd's --logfile under logrotate: move and signal, create, copytruncate.

Through twistd's own logger (``UnixAppLogger``) and application, as
``twistd mailhub --logfile`` runs them, so each test also shows what
twistd's own log file did before the hub gave it one of its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.scripts._twistd_unix import UnixAppLogger

from tests.test_service import _tap_options

log = Logger(namespace="txmailhub.test")


@contextlib.contextmanager
def twistd_logging(tmp_path: Path, logfile: Path | str | None, hub_lines: str = "",
                   **more: object) -> Iterator[Callable[[], None]]:
    """``twistd --logfile LOGFILE mailhub``'s logging, started as twistd
    starts it: the hub is made and added to the application first
    (``more``: other options of twistd's, ``uid=...``; ``hub_lines``: more
    of the config's ``[hub]`` section)."""
    from txmailhub import logfile as hub_logfile
    from txmailhub import tap

    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    parent = {"logfile": None if logfile is None else str(logfile), "nodaemon": True,
              "syslog": False, **more}
    calls: list = []

    class Reactor:
        @staticmethod
        def callFromThread(f, *a):
            calls.append((f, a))

    real_install = hub_logfile.install_sigusr1
    hub_logfile.install_sigusr1 = lambda f, reactor=None: real_install(f, Reactor())
    logger = UnixAppLogger(parent)
    observer = notice = None
    try:
        hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent,
                                           hub_lines=hub_lines))
        application = Application("mailhub")
        hub.setServiceParent(application)
        # the observer twistd's logger.start() picks: the application's, or
        # its own for --logfile (start() itself would also take over
        # standard output, which pytest holds)
        observer = (logger._observerFactory or application.getComponent(ILogObserver, None)
                    or logger._getLogObserver)
        if observer is logger._observerFactory or observer is logger._getLogObserver:
            observer = observer()
        globalLogPublisher.addObserver(observer)
        # then the services' privileged start, where the hub's signal
        # handlers go in
        notice = hub.getServiceNamed("hangup-notice")
        notice.privilegedStartService()

        def rotate() -> None:
            handler = signal.getsignal(signal.SIGUSR1)
            assert callable(handler), "no SIGUSR1 handler: the log is never rotated"
            handler(signal.SIGUSR1, None)
            from twisted.internet import reactor

            if not calls:  # twistd's own handler: the global reactor
                queued, reactor.threadCallQueue[:] = list(reactor.threadCallQueue), []
                for f, a, kw in queued:
                    f(*a, **kw)
            while calls:
                f, a = calls.pop(0)
                f(*a)

        yield rotate
    finally:
        if notice is not None:
            notice.stopService()
        hub_logfile.install_sigusr1 = real_install
        if observer is not None:
            globalLogPublisher.removeObserver(observer)
        signal.signal(signal.SIGUSR1, before)


def _line(text: str) -> None:
    log.info("{text}", text=text)


def test_logrotate_without_create_then_sigusr1_opens_the_log_again(tmp_path: Path) -> None:
    # logrotate moves mailhub.log away (``nocreate``), then ``postrotate
    # kill -USR1``: twistd found no file to rotate and wrote into the moved
    # file for ever, with no mailhub.log again
    path = tmp_path / "mailhub.log"
    with twistd_logging(tmp_path, path) as rotate:
        _line("before the rotation")
        path.rename(tmp_path / "mailhub.log.1")
        _line("moved, not signalled yet")
        rotate()
        _line("after the rotation")
    assert "after the rotation" in path.read_text()
    old = (tmp_path / "mailhub.log.1").read_text()
    assert "before the rotation" in old and "moved, not signalled yet" in old
    assert "after the rotation" not in old
    # made again with the mode the log had (0640, as the hub made it)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.glob("mailhub.log*")) == [
        "mailhub.log", "mailhub.log.1"]


def test_logrotate_with_create_then_sigusr1_writes_into_the_new_file(tmp_path: Path) -> None:
    # ``create``: twistd renamed logrotate's new, empty file to .1 and
    # shifted logrotate's own .1 to .2 -- one more empty file each time
    path = tmp_path / "mailhub.log"
    with twistd_logging(tmp_path, path) as rotate:
        _line("before the rotation")
        path.rename(tmp_path / "mailhub.log-20261130")
        path.touch(mode=0o640)
        rotate()
        _line("after the rotation")
    assert sorted(p.name for p in tmp_path.glob("mailhub.log*")) == [
        "mailhub.log", "mailhub.log-20261130"]
    assert "after the rotation" in path.read_text()
    assert "before the rotation" in (tmp_path / "mailhub.log-20261130").read_text()


def test_copytruncate_leaves_no_hole_of_nul_bytes(tmp_path: Path) -> None:
    # twistd wrote at its old offset after the truncation: the file began
    # with that many NUL bytes
    path = tmp_path / "mailhub.log"
    with twistd_logging(tmp_path, path):
        for n in range(20):
            _line(f"line {n} before the copy")
        os.truncate(path, 0)
        _line("after the truncation")
    text = path.read_bytes()
    assert b"\0" not in text
    assert text.startswith(b"20") and b"after the truncation" in text


def test_a_sigusr1_with_the_file_in_place_still_rotates_it(tmp_path: Path) -> None:
    # the documented ``kill -USR1`` without logrotate: mailhub.log.1, as before
    path = tmp_path / "mailhub.log"
    with twistd_logging(tmp_path, path) as rotate:
        _line("first")
        rotate()
        _line("second")
    assert "first" in (tmp_path / "mailhub.log.1").read_text()
    text = path.read_text()
    assert "second" in text and "first" not in text


@pytest.mark.parametrize(("hub_lines", "kept"), [("", 10), ("log_files_kept = 3\n", 3),
                                                ("log_files_kept = 0\n", 12)])
def test_the_hubs_own_rotations_keep_log_files_kept_numbered_files(tmp_path: Path,
                                                                   hub_lines: str,
                                                                   kept: int) -> None:
    # twistd makes mailhub.log.1, .2, ... at 1 MB and on SIGUSR1 and never
    # deletes one: a hub nobody rotates for fills its disk 1 MB at a time.
    # [hub] log_files_kept (10 unless set; 0: all) bounds them, the oldest
    # going first; logrotate's dated names are not the hub's and stay
    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log-20261130").write_text("logrotate's\n")
    with twistd_logging(tmp_path, path, hub_lines=hub_lines) as rotate:
        for n in range(12):
            _line(f"line {n}")
            rotate()
        _line("now")
    numbered = sorted(int(p.name.rsplit(".", 1)[1]) for p in tmp_path.glob("mailhub.log.*"))
    assert numbered == list(range(1, kept + 1))
    assert "line 11" in (tmp_path / "mailhub.log.1").read_text()
    assert f"line {12 - kept}" in (tmp_path / f"mailhub.log.{kept}").read_text()
    assert "now" in path.read_text()
    assert (tmp_path / "mailhub.log-20261130").read_text() == "logrotate's\n"


@pytest.mark.parametrize("parent", [{"logfile": "-", "nodaemon": True},
                                    {"syslog": True, "logfile": "x.log"},
                                    {"logfile": "x.log", "logger": "some.module.observer"}])
def test_no_log_file_of_the_hub_where_twistd_writes_none(tmp_path: Path, parent,
                                                        monkeypatch) -> None:
    from txmailhub import tap

    monkeypatch.setattr("syslog.openlog", lambda *a: None)
    hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent))
    application = Application("mailhub")
    hub.setServiceParent(application)
    # (standard output gets the hub's observer of twistd's lines: no file)
    observer = application.getComponent(ILogObserver, None)
    from txmailhub.logfile import ReopeningLogFile

    assert observer is None or not isinstance(getattr(observer, "_outFile", None),
                                              ReopeningLogFile)


@pytest.mark.skipif(os.geteuid() != 0, reason="twistd switches user only when started as root")
def test_no_size_rotation_as_root_before_the_switch_to_uid(tmp_path: Path,
                                                            monkeypatch) -> None:
    # twistd logs its start-up lines (and what makeService and the ports
    # logged) as root, before it switches to --uid.  A log left at 1 MB by
    # the last run was rotated then: root made the new mailhub.log by name
    # in mailhub's folder, following a link planted there, and the hub,
    # once mailhub, could never rotate that root-owned file again
    path = tmp_path / "mailhub.log"
    path.write_bytes(b"x" * 1_000_000)
    os.chown(path, 4242, 4343)
    path.chmod(0o640)
    with twistd_logging(tmp_path, path, uid=4242, gid=4343):
        _line("starting up, as root")
        assert not (tmp_path / "mailhub.log.1").exists()
        assert path.stat().st_uid == 4242
        monkeypatch.setattr(os, "geteuid", lambda: 4242)  # twistd switched
        _line("running, as mailhub")
        assert (tmp_path / "mailhub.log.1").exists()
    assert "starting up, as root" in (tmp_path / "mailhub.log.1").read_text()
    assert "running, as mailhub" in path.read_text()


def _logrotate_stanza() -> str:
    text = (Path(__file__).parent.parent / "docs" / "deployment.rst").read_text()
    start = text.index("    /var/log/txmailhub/mailhub.log {")
    return text[start:text.index("\n    }\n", start)]


def test_the_documented_logrotate_names_are_not_the_hubs_numbered_files(tmp_path: Path) -> None:
    # the hub still rotates at 1 MB (and on a SIGUSR1 with the file in
    # place) to mailhub.log.1, .2, ...  logrotate's default names are the
    # same: its mailhub.log.1 (kept uncompressed by delaycompress) became
    # the hub's .2, which logrotate never compressed or deleted, beside its
    # own .2.gz.  docs/deployment.rst's stanza names its files by date.
    stanza = _logrotate_stanza()
    assert "\n        dateext\n" in stanza, stanza
    path = tmp_path / "mailhub.log"
    with twistd_logging(tmp_path, path) as rotate:
        _line("first")
        path.rename(tmp_path / "mailhub.log-20261130")  # logrotate, dateext
        rotate()
        _line("second")
        rotate()  # the hub's own rotation, the file in place
        _line("third")
    assert sorted(p.name for p in tmp_path.glob("mailhub.log*")) == [
        "mailhub.log", "mailhub.log-20261130", "mailhub.log.1"]
    assert "first" in (tmp_path / "mailhub.log-20261130").read_text()


def test_logrotates_create_is_taken_in_a_folder_the_hub_may_not_write(tmp_path: Path,
                                                                      monkeypatch) -> None:
    # a log in a folder of root's (/var/log itself), with logrotate's
    # ``create 0640 mailhub mailhub``: opening the new file needs no right
    # on the folder, but the hub gave up before trying, and wrote into
    # the moved file (compressed and deleted in time) for good
    from txmailhub import logfile as hub_logfile

    path = tmp_path / "mailhub.log"
    real_access = os.access
    with twistd_logging(tmp_path, path) as rotate:
        _line("before the rotation")
        path.rename(tmp_path / "mailhub.log.1")
        path.touch(mode=0o640)
        monkeypatch.setattr(hub_logfile.os, "access", lambda p, mode, **kw: (
            False if os.path.abspath(p) == str(tmp_path) and mode & os.W_OK
            else real_access(p, mode, **kw)))
        rotate()
        _line("after the rotation")
        monkeypatch.undo()
    assert "after the rotation" in path.read_text()
    assert "after the rotation" not in (tmp_path / "mailhub.log.1").read_text()


def _log_file(path: Path, **kw: object):
    from txmailhub.logfile import ReopeningLogFile

    return ReopeningLogFile(path.name, str(path.parent), **kw)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def test_a_log_made_again_has_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "mailhub.log"
    path.write_bytes(b"")
    path.chmod(0o644)
    f = _log_file(path)
    path.rename(tmp_path / "mailhub.log.1")  # logrotate, nocreate
    with _umask(0o077):
        f.rotate()
    f.write("x\n")
    f.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_logrotates_create_keeps_the_mode_it_gave(tmp_path: Path) -> None:
    # ``create 0600 ...``: the file is logrotate's, as made, not the old mode
    path = tmp_path / "mailhub.log"
    path.write_bytes(b"")
    path.chmod(0o644)
    f = _log_file(path)
    path.rename(tmp_path / "mailhub.log-20261130")
    path.touch(mode=0o600)
    path.chmod(0o600)
    f.rotate()
    f.write("x\n")
    f.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_log_replaced_by_an_empty_one_is_seen_as_moved(tmp_path: Path) -> None:
    # ``ifempty``: both files are empty, and alike in all but their inode
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    path.rename(tmp_path / "mailhub.log-20261130")
    path.touch()
    f.rotate()
    f.write("after\n")
    f.close()
    assert path.read_text() == "after\n"
    assert not (tmp_path / "mailhub.log.1").exists()


def test_the_file_left_is_closed_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    old = f._file
    path.rename(tmp_path / "mailhub.log.1")
    f.rotate()
    assert old.closed and not f._file.closed
    f.close()


def test_a_path_that_cannot_be_opened_leaves_the_log_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    path.rename(tmp_path / "mailhub.log.1")
    path.mkdir()  # not a file the hub can open
    _said(f)
    f.rotate()
    f.write("still here\n")
    f.close()
    # the line saying why comes first (it is said once)
    assert _without_notices((tmp_path / "mailhub.log.1").read_text()) == "still here\n"


def test_the_size_rotation_is_at_rotate_length_and_counts_a_truncation(tmp_path: Path) -> None:
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    f.rotateLength = 10
    f.write("x" * 10)
    f.write("y")  # 10 written: rotated first
    assert (tmp_path / "mailhub.log.1").read_text() == "x" * 10
    assert path.read_text() == "y"
    f.write("z" * 9)
    os.truncate(path, 0)  # copytruncate: the count says 10, the file holds 0
    f.write("after")
    f.close()
    assert path.read_text() == "after"
    assert not (tmp_path / "mailhub.log.2").exists()


def test_neither_a_sigusr1_nor_the_size_rotates_as_root_before_the_switch(
        tmp_path: Path, monkeypatch) -> None:
    # twistd still root, --uid to come: a SIGUSR1 in that window does
    # nothing either (the same root-made file as a size rotation's)
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    f.switch_to = 4242
    f.rotateLength = 5
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    f.write("12345")
    f.write("6")
    f.rotate()
    path.rename(tmp_path / "moved.log")
    f.rotate()
    assert not path.exists() and not (tmp_path / "mailhub.log.1").exists()
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    f.rotate()  # switched: the moved file is left, the path made again
    f.write("7")
    f.close()
    assert path.read_text() == "7"


def test_sigusr1_rotates_in_the_reactor_thread_not_in_the_handler(tmp_path: Path) -> None:
    # the handler may interrupt a write of the reactor thread's in the
    # middle: it only asks the reactor to rotate
    from txmailhub.logfile import install_sigusr1

    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    queued: list = []
    reactor = type("R", (), {"callFromThread": staticmethod(lambda g, *a: queued.append(g))})
    before = signal.getsignal(signal.SIGUSR1)
    try:
        install_sigusr1(f, reactor)
        signal.getsignal(signal.SIGUSR1)(signal.SIGUSR1, None)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert not (tmp_path / "mailhub.log.1").exists()
    assert queued == [f.rotate]
    f.close()


def test_an_application_with_an_observer_of_its_own_keeps_it(tmp_path: Path) -> None:
    from txmailhub import tap

    parent = {"logfile": str(tmp_path / "mailhub.log"), "nodaemon": True}
    hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent))
    application = Application("mailhub")
    mine = print
    application.setComponent(ILogObserver, mine)
    hub.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is mine


@pytest.mark.parametrize("parent, to_stdout", [
    ({"nodaemon": True}, True),  # twistd -n: standard output
    ({"nodaemon": True, "logfile": "-"}, True),  # the systemd unit's
    ({"logfile": "-"}, False),  # a daemon: twistd's logger refuses it, as before
    ({"nodaemon": True, "syslog": True}, False),
    ({"nodaemon": True, "debug": True}, False),  # twistd.log: its logger decided before
])
def test_standard_output_gets_the_hubs_observer(tmp_path: Path, monkeypatch,
                                               parent: dict, to_stdout: bool) -> None:
    # the same lines as twistd's textFileLogObserver, for less CPU
    import io

    from txmailhub import tap
    from txmailhub.logtext import ClassicTextObserver

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr("syslog.openlog", lambda *a: None)
    hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent))
    application = Application("mailhub")
    hub.setServiceParent(application)
    observer = application.getComponent(ILogObserver, None)
    if not to_stdout:
        assert observer is None or getattr(observer, "_outFile", None) is not out
        return
    assert isinstance(observer, ClassicTextObserver)
    observer({"log_format": "{summary}", "summary": "hello", "log_namespace": "n",
              "log_level": LogLevel.info, "log_time": 0.0})
    assert out.getvalue().endswith(" [n#info] hello\n")


@pytest.mark.parametrize("prefix", [None, "mailhub", ""])
def test_syslog_gets_the_hubs_observer_with_each_lines_part_and_level(
        tmp_path: Path, monkeypatch, prefix: str | None) -> None:
    # Twisted's syslog observer sent "[-] authentication failed ...": no
    # part of the hub and no level, which the fail2ban filter reads
    import syslog

    from txmailhub import tap
    from txmailhub.logtext import SyslogTextObserver

    opened: list = []
    sent: list = []
    monkeypatch.setattr("syslog.openlog", lambda *a: opened.append(a))
    monkeypatch.setattr("syslog.syslog", lambda *a: sent.append(a))
    # (twistd's options hold "twisted" without --prefix; ``--prefix=""``
    # is "", which twistd's own observer passes to openlog as it is)
    parent = {"nodaemon": True, "syslog": True,
              **({"prefix": prefix} if prefix is not None else {})}
    hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent))
    application = Application("mailhub")
    hub.setServiceParent(application)
    observer = application.getComponent(ILogObserver, None)
    assert isinstance(observer, SyslogTextObserver)
    # twistd (AppLogger.start) wraps an observer that does not provide it
    # as a legacy one, with a DeprecationWarning
    assert ILogObserver.providedBy(observer)
    assert opened == [("twisted" if prefix is None else prefix, 0,  # twistd's --prefix
                       syslog.LOG_USER)]
    observer({"log_format": "authentication failed for {u} from {a}", "u": "joe@example.org",
              "a": "192.0.2.1", "log_namespace": "txmailhub.smtp",
              "log_level": LogLevel.info, "log_time": 0.0})
    assert sent == [(syslog.LOG_INFO, "[txmailhub.smtp#info] authentication failed for "
                                      "joe@example.org from 192.0.2.1")]


def test_a_parent_that_is_no_application_is_left_alone_once(tmp_path: Path,
                                                           monkeypatch) -> None:
    # a .tac may add the hub to a MultiService: no components, no error;
    # and the hook runs for the first parent only
    from twisted.application.service import MultiService

    from txmailhub import tap

    parent = {"logfile": str(tmp_path / "mailhub.log"), "nodaemon": True}
    hub = tap.makeService(_tap_options(tmp_path, str(tmp_path / "state"), parent=parent))
    calls: list = []
    real = tap.use_reopening_log
    monkeypatch.setattr(tap, "use_reopening_log", lambda *a: (calls.append(a), real(*a)))
    outer = MultiService()
    hub.setServiceParent(outer)
    hub.disownServiceParent()
    hub.setServiceParent(Application("mailhub"))
    assert len(calls) == 1


def _out_of_descriptors(f: object, failing: dict[str, bool]) -> None:
    """``f`` opens its file through ``_openFile``: make that fail with
    EMFILE (a hub at its open-files limit) while ``failing["on"]``."""
    import errno

    real = f._openFile  # type: ignore[attr-defined]

    def open_file() -> None:
        if failing["on"]:
            raise OSError(errno.EMFILE, "Too many open files")
        real()

    f._openFile = open_file  # type: ignore[attr-defined]


def _failing_log(path: Path, rotate_length: int | None = None
                 ) -> tuple[Any, dict[str, bool]]:
    """A log file at ``path`` whose opens fail with EMFILE while the
    returned ``failing["on"]`` (True at first); rotated at
    ``rotate_length`` octets when given (twistd's 1 MB otherwise)."""
    f = _log_file(path)
    if rotate_length is not None:
        f.rotateLength = rotate_length
    failing = {"on": True}
    _out_of_descriptors(f, failing)
    return f, failing


def _counted_opens(f: Any) -> list[int]:
    """A list that gets an item each time ``f`` tries to open its file."""
    tries: list[int] = []
    real = f._openFile

    def counted() -> None:
        tries.append(1)
        real()

    f._openFile = counted
    return tries


def test_a_size_rotation_out_of_descriptors_keeps_the_log(tmp_path: Path) -> None:
    # At its open-files limit the hub rotated at 1 MB: twistd's rotation
    # closed mailhub.log, renamed it mailhub.log.1, could not open a new
    # one, and every later line was lost (each write raised on the closed
    # file) until a restart.  Now it goes on writing where it was, with
    # the numbered files as they were, and rotates once it can.
    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log.1").write_text("older\n")
    f, failing = _failing_log(path, rotate_length=10)
    f.write("x" * 10)
    f.write("y")  # rotation due, and impossible
    f.write("z" * 70_000)  # past the hold-off: tried again, still impossible
    assert path.read_text() == "x" * 10 + "y" + "z" * 70_000
    assert (tmp_path / "mailhub.log.1").read_text() == "older\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailhub.log", "mailhub.log.1"]
    failing["on"] = False
    f.write("w" * 70_000)  # descriptors back: rotated before this write
    f.close()
    assert path.read_text() == "w" * 70_000
    assert (tmp_path / "mailhub.log.1").read_text().startswith("x" * 10 + "y")
    assert (tmp_path / "mailhub.log.2").read_text() == "older\n"


def test_a_failed_rotation_is_not_tried_again_at_every_line(tmp_path: Path) -> None:
    # each try renames every numbered file there and back: a hub out of
    # descriptors and logging a lot would do that for each line
    path = tmp_path / "mailhub.log"
    f, _ = _failing_log(path, rotate_length=10)
    tries = _counted_opens(f)
    for _ in range(1000):
        f.write("a line of the log\n")
    f.close()
    assert 1 <= len(tries) <= 2


def test_a_rotation_that_cannot_list_the_folder_overwrites_no_numbered_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # twistd lists mailhub.log.N with glob, which takes a folder it cannot
    # open (EMFILE) for an empty one: the rotation then renamed mailhub.log
    # over mailhub.log.1 (seen live: .2, .5, .8 missing after a shortage)
    import errno

    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log.1").write_text("older\n")
    f = _log_file(path)
    f.rotateLength = 10
    f.write("x" * 10)

    def no_descriptor(*args: object, **kw: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as m:
        m.setattr(os, "scandir", no_descriptor)
        m.setattr(os, "listdir", no_descriptor)
        f.write("y")  # rotation due; the folder cannot be listed
    assert (tmp_path / "mailhub.log.1").read_text() == "older\n"
    f.write("z" * 70_000)  # 64 KiB later
    f.write("w")  # rotated now: the folder can be read again
    f.close()
    assert (tmp_path / "mailhub.log.2").read_text() == "older\n"
    assert (tmp_path / "mailhub.log.1").read_text().startswith("x" * 10 + "y")
    assert path.read_text() == "w"


def _cannot_list(monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    def refused(*args: object, **kw: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "scandir", refused)
    monkeypatch.setattr(os, "listdir", refused)


@pytest.mark.parametrize("kept", [None, 2])
def test_a_folder_the_hub_may_not_list_is_rotated_by_trying_the_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int | None) -> None:
    # a write-only folder (mode 0300): names can be looked up, not listed.
    # The rotation used to be put off 64 KiB at a time, for ever: the log
    # grew past its limit without end
    import errno

    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log.1").write_text("one\n")
    (tmp_path / "mailhub.log.2").write_text("two\n")
    f = _log_file(path, maxRotatedFiles=kept)
    f.rotateLength = 10
    f.write("x" * 10)
    with monkeypatch.context() as m:
        _cannot_list(m, errno.EACCES)
        f.write("y")  # rotated first, then written
        f.write("after\n")
    f.close()
    assert path.read_text() == "yafter\n"
    assert (tmp_path / "mailhub.log.1").read_text() == "x" * 10
    assert (tmp_path / "mailhub.log.2").read_text() == "one\n"
    if kept is None:
        assert (tmp_path / "mailhub.log.3").read_text() == "two\n"
    else:
        assert not (tmp_path / "mailhub.log.3").exists()


def test_names_tried_stop_at_the_first_missing_one_and_overwrite_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # .3 missing: .1 and .2 move up, .4 (out of sight) is left as it is
    import errno

    path = tmp_path / "mailhub.log"
    for n, text in ((1, "one\n"), (2, "two\n"), (4, "four\n")):
        (tmp_path / f"mailhub.log.{n}").write_text(text)
    f = _log_file(path)
    f.rotateLength = 10
    f.write("x" * 10)
    with monkeypatch.context() as m:
        _cannot_list(m, errno.EACCES)
        f.write("y")
    f.close()
    texts = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert texts == {"mailhub.log": "y", "mailhub.log.1": "x" * 10,
                     "mailhub.log.2": "one\n", "mailhub.log.3": "two\n",
                     "mailhub.log.4": "four\n"}


def test_a_write_only_log_folder_is_rotated(tmp_path: Path) -> None:
    # the real permission: root lists any folder, so this runs as another
    # user, or as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    # (setpriv --bounding-set -dac_override,-dac_read_search)
    folder = tmp_path / "log"
    folder.mkdir(mode=0o300)
    try:
        os.listdir(folder)
    except PermissionError:
        folder.chmod(0o700)
    else:
        pytest.skip("this user lists a write-only folder (root)")
    path = folder / "mailhub.log"
    (folder / "mailhub.log.1").write_text("one\n")
    f = _log_file(path)
    f.rotateLength = 10
    folder.chmod(0o300)
    try:
        f.write("x" * 10)
        f.write("after\n")
        f.close()
    finally:
        folder.chmod(0o700)
    assert (folder / "mailhub.log.2").read_text() == "one\n"
    assert (folder / "mailhub.log.1").read_text() == "x" * 10
    assert path.read_text() == "after\n"


def test_a_failed_rotation_puts_every_numbered_file_back_under_its_name(tmp_path: Path) -> None:
    # the numbered files are shifted up before the new log is opened: when
    # it cannot be, each goes back to its own number (put back the
    # other way round, .2 would overwrite .1's content, and so on)
    path = tmp_path / "mailhub.log"
    for n in (1, 2, 3):
        (tmp_path / f"mailhub.log.{n}").write_text(f"older {n}\n")
    f = _log_file(path)
    _out_of_descriptors(f, {"on": True})
    f.rotateLength = 10
    f.write("x" * 10)
    f.write("y")  # rotation due, and impossible
    f.close()
    assert path.read_text() == "x" * 10 + "y"
    for n in (1, 2, 3):
        assert (tmp_path / f"mailhub.log.{n}").read_text() == f"older {n}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mailhub.log", "mailhub.log.1", "mailhub.log.2", "mailhub.log.3"]


def test_after_a_failed_rotation_succeeds_the_next_one_is_at_rotate_length(
        tmp_path: Path) -> None:
    # the hold-off of a failed try is for that shortage only: the new log
    # rotates at the usual size, not 64 KiB later
    path = tmp_path / "mailhub.log"
    f, failing = _failing_log(path, rotate_length=10)
    f.write("x" * 10)
    f.write("y")  # fails
    failing["on"] = False
    f.write("z" * 70_000)
    f.write("w")  # rotated before this write
    assert (tmp_path / "mailhub.log.1").read_text().endswith("z" * 70_000)
    f.write("v" * 9)
    f.write("u")  # 10 written in the new log: rotated again
    f.close()
    assert (tmp_path / "mailhub.log.2").exists()
    assert path.read_text() == "u"


def test_a_rotation_closes_the_file_it_leaves(tmp_path: Path) -> None:
    # one descriptor per rotation kept open would run the hub out of them
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    f.rotateLength = 10
    f.write("x" * 10)
    left = f._file
    f.write("y")
    assert (tmp_path / "mailhub.log.1").exists()
    assert left.closed and not f._file.closed
    f.close()


def test_a_large_rotate_length_is_not_tried_again_at_every_line_either(
        tmp_path: Path) -> None:
    # the hold-off counts from the size the try was made at: with twistd's
    # 1 MB (larger than the 64 KiB), each line after it would try again
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    _out_of_descriptors(f, {"on": True})
    tries = []
    real = f._openFile

    def counted() -> None:
        tries.append(1)
        real()

    f._openFile = counted
    f.rotateLength = 100_000
    for _ in range(2000):
        f.write("a line of the log, some 100 octets long " + "." * 59 + "\n")
    f.close()
    assert 1 <= len(tries) <= 3


def test_files_that_are_not_the_hubs_numbered_ones_are_left_alone(tmp_path: Path) -> None:
    # mailhub.log.0 (not a name the hub makes) and a compressed
    # mailhub.log.2.gz are neither renamed nor deleted, and a rotation
    # still happens
    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log.0").write_text("zero\n")
    (tmp_path / "mailhub.log.2.gz").write_text("gz\n")
    (tmp_path / "mailhub.log.1").write_text("older\n")
    f = _log_file(path)
    f.rotateLength = 10
    f.write("x" * 10)
    f.write("y")
    f.close()
    assert (tmp_path / "mailhub.log.0").read_text() == "zero\n"
    assert (tmp_path / "mailhub.log.2.gz").read_text() == "gz\n"
    assert (tmp_path / "mailhub.log.1").read_text() == "x" * 10
    assert (tmp_path / "mailhub.log.2").read_text() == "older\n"
    assert path.read_text() == "y"


@pytest.mark.parametrize("not_writable", ["folder", "file"])
def test_a_log_the_hub_may_not_rename_is_not_rotated_and_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_writable: str) -> None:
    # as twistd's own rotation: a folder or a file the hub may not write
    # is not its to rename (os.access answers as the kernel would for a
    # hub that is not root; the tests may run as root)
    path = tmp_path / "mailhub.log"
    (tmp_path / "mailhub.log.1").write_text("older\n")
    f = _log_file(path)
    f.rotateLength = 10
    denied = str(tmp_path) if not_writable == "folder" else str(path)
    real_access = os.access

    def access(p: object, mode: int, **kw: object) -> bool:
        if os.path.abspath(str(p)) == denied and mode & os.W_OK:
            return False
        return real_access(p, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    f.write("x" * 10)
    f.write("y")
    f.close()
    assert path.read_text() == "x" * 10 + "y"
    assert (tmp_path / "mailhub.log.1").read_text() == "older\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailhub.log", "mailhub.log.1"]


def test_a_moved_log_that_cannot_be_opened_again_is_not_tried_at_every_line(
        tmp_path: Path) -> None:
    # logrotate moved the log and the hub is out of descriptors: at the
    # 1 MB size the rotation is an open by name, which fails; like a
    # rotation that renames, it is tried again 64 KiB of log later, not
    # at every line (a stat and an open for each)
    path = tmp_path / "mailhub.log"
    f, failing = _failing_log(path, rotate_length=10)
    tries = _counted_opens(f)
    f.write("x" * 10)
    os.rename(path, tmp_path / "mailhub.log-20261130")
    for _ in range(1000):
        f.write("a line of the log\n")
    assert 1 <= len(tries) <= 2
    failing["on"] = False
    f.write("z" * 70_000)
    f.write("now")  # past the hold-off: opened by its name again
    f.close()
    assert path.read_text() == "now"
    assert (tmp_path / "mailhub.log-20261130").read_text().endswith("z" * 70_000)


def test_a_log_opened_again_after_a_failed_rotation_rotates_at_the_usual_size(
        tmp_path: Path) -> None:
    # the hold-off of a failed rotation belongs to the file it was made
    # for: once logrotate moved that file and the hub opened the new one,
    # the new one rotates at rotateLength (not at the old file's size
    # plus 64 KiB: after a long shortage, a log many times the 1 MB)
    path = tmp_path / "mailhub.log"
    f, failing = _failing_log(path, rotate_length=10)
    f.write("x" * 10)
    f.write("y" * 100)  # rotation due, and impossible: held off
    failing["on"] = False
    os.rename(path, tmp_path / "mailhub.log-20261130")
    f.rotate()  # logrotate's SIGUSR1: the log opened again by its name
    f.write("w" * 10)
    f.write("v")  # 10 written in the new log: rotated
    f.close()
    assert (tmp_path / "mailhub.log.1").read_text() == "w" * 10
    assert path.read_text() == "v"


def test_a_moved_log_that_could_not_be_opened_again_is_tried_64_kib_later_under_1_mb(
        tmp_path: Path) -> None:
    # logrotate moved a log smaller than twistd's 1 MB and sent SIGUSR1
    # while the hub was out of descriptors: the open by name failed.  It is
    # tried again 64 KiB of log later, as docs/deployment.rst says -- not
    # only once the moved file reaches 1 MB: until then every line went
    # to the moved file (deleted by a logrotate that compresses it at
    # once; with the documented missingok, never rotated again as no
    # mailhub.log was there), and mailhub.log stayed missing
    path = tmp_path / "mailhub.log"
    f, failing = _failing_log(path, rotate_length=1_000_000)
    f.write("x" * 1000)
    os.rename(path, tmp_path / "mailhub.log-20261130")
    f.rotate()  # logrotate's SIGUSR1: the open fails
    failing["on"] = False
    f.write("z" * 70_000)
    f.write("now")  # past the hold-off: opened by its name again
    f.close()
    assert path.read_text() == "now"
    moved = (tmp_path / "mailhub.log-20261130").read_text()
    assert _without_notices(moved) == "x" * 1000 + "z" * 70_000
    assert "(the hub is out of file descriptors)" in moved


def test_a_rotation_asked_for_by_sigusr1_that_failed_is_tried_64_kib_later_under_1_mb(
        tmp_path: Path) -> None:
    # the same for a SIGUSR1 with the file in place (the hub's own
    # rotation): out of descriptors, the names are put back, and the
    # rotation is tried again 64 KiB of log later, not at 1 MB
    path = tmp_path / "mailhub.log"
    f, failing = _failing_log(path, rotate_length=1_000_000)
    f.write("x" * 1000)
    f.rotate()  # SIGUSR1: the new file cannot be opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailhub.log"]
    failing["on"] = False
    f.write("z" * 70_000)
    f.write("now")  # past the hold-off: rotated before this write
    f.write("y" * 1000)  # and not again: the new log is far from 1 MB
    f.close()
    assert (tmp_path / "mailhub.log.1").read_text() == "x" * 1000 + "z" * 70_000
    assert path.read_text() == "now" + "y" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailhub.log", "mailhub.log.1"]


@pytest.mark.parametrize("refused", ["mailhub.log.1", "mailhub.log"])
def test_a_rename_the_system_refuses_loses_no_line_and_is_tried_64_kib_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str) -> None:
    # a numbered file (or the log) the system will not rename although the
    # folder may be written -- append-only (chattr +a), another user's in a
    # sticky folder: EPERM.  The rotation raised out of ``write``, so the
    # line was lost, and so was every later one, each trying again
    path = tmp_path / "mailhub.log"
    for n in (1, 2):
        (tmp_path / f"mailhub.log.{n}").write_text(f"older {n}\n")
    f = _log_file(path)
    f.rotateLength = 10
    real_rename = os.rename
    tries = []

    def rename(src: object, dst: object, *args: object, **kw: object) -> None:
        if os.path.basename(str(src)) == refused:
            tries.append(src)
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        real_rename(src, dst, *args, **kw)

    monkeypatch.setattr(os, "rename", rename)
    f.write("x" * 10)
    for i in range(1000):
        f.write(f"line {i}\n")
    assert len(tries) == 1  # held off: not tried again at each line
    monkeypatch.undo()
    f.write("z" * 70_000)
    f.write("now")  # past the hold-off: the rename works now
    f.close()
    old = (tmp_path / "mailhub.log.1").read_text()
    assert old.startswith("x" * 10 + "line 0\n") and "line 999\n" in old
    assert path.read_text() == "now"
    assert (tmp_path / "mailhub.log.2").read_text() == "older 1\n"
    assert (tmp_path / "mailhub.log.3").read_text() == "older 2\n"


def test_a_log_the_hub_may_not_rename_is_not_looked_at_again_at_every_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a log in a folder of root's (/var/log, logrotate's ``create``) past
    # the rotate length: each line asked the folder and the file again
    # (a stat, two access calls, an fstat) for as long as the hub ran; it
    # is looked at again 64 KiB of log later, as after a failed rotation
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    f.rotateLength = 10
    asked = []
    real_access = os.access

    def access(p: object, mode: int, **kw: object) -> bool:
        asked.append(p)
        if os.path.abspath(str(p)) == str(tmp_path) and mode & os.W_OK:
            return False
        return real_access(p, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    f.write("x" * 10)
    for i in range(1000):
        f.write(f"line {i}\n")
    assert len(asked) <= 2
    monkeypatch.undo()
    f.write("z" * 70_000)
    f.write("now")  # the folder may be written again: rotated
    f.close()
    assert path.read_text() == "now"
    assert (tmp_path / "mailhub.log.1").read_text().endswith("z" * 70_000)


@pytest.mark.parametrize("logfile, more", [("-", {}), (None, {}),
                                           (None, {"syslog": True})])
def test_a_sigusr1_with_no_log_file_to_rotate_is_answered_not_fatal(
        tmp_path: Path, logfile: str | None, more: dict) -> None:
    # the systemd unit logs to standard output (``--logfile=-``), as does
    # ``twistd -n`` without --logfile; twistd installs no SIGUSR1 handler
    # then, so the signal's default action ended the hub on the spot -- no
    # graceful stop, not a line in the log -- where a logrotate postrotate
    # or ``systemctl kill -s USR1`` only asked for a rotation
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        with twistd_logging(tmp_path, logfile, **more) as rotate:
            rotate()
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e.get("log_format", "") for e in events
            if e.get("log_namespace") == "txmailhub.logfile"]
    assert any("SIGUSR1" in s and "nothing to rotate" in s for s in said), said
    assert not list(tmp_path.glob("*.log*")), "no log file of the hub's own"


def test_a_sigusr1_handler_of_the_logger_option_is_kept(tmp_path: Path) -> None:
    # twistd calls --logger's factory after the application is made, and a
    # factory that installs a SIGUSR1 handler as twistd does for its own
    # file (only where there is none yet) found the hub's "nothing to
    # rotate" notice in place: its log was never rotated again
    rotations: list = []

    def factory() -> Callable[[dict], None]:
        if not signal.getsignal(signal.SIGUSR1):
            signal.signal(signal.SIGUSR1, lambda signum, frame: rotations.append(signum))
        return lambda event: None

    with twistd_logging(tmp_path, None, logger=factory) as rotate:
        rotate()
    assert rotations == [signal.SIGUSR1]


def _without_notices(text: str) -> str:
    """``text`` of a log without the lines saying a moved log could not
    be opened again."""
    import re

    return re.sub(r"\d{4}-\d\d-\d\dT[^\n]* \[txmailhub\.logfile#error\] cannot open [^\n]*\n",
                  "", text)


def _said(f: Any) -> Any:
    """Where ``f`` says why it cannot open its moved log again, besides
    the moved file itself (twistd's standard error, in the hub)."""
    import io

    f.stderr = io.StringIO()
    return f.stderr


@pytest.mark.parametrize("cause", ["folder", "folder removed", "no space"])
def test_a_moved_log_that_cannot_be_made_again_says_why_once_and_is_retried_at_sigusr1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str) -> None:
    # logrotate moved the log (no copytruncate) and the hub could not make
    # mailhub.log again for another reason than its folder's owner: it
    # wrote on into the moved file without a word, and logrotate later
    # compressed and deleted that file
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "mailhub.log"
    f = _log_file(path)
    stderr = _said(f)
    f.write("before\n")
    moved = tmp_path / "mailhub.log-20261201"
    os.rename(path, moved)
    real_open = os.open
    if cause == "folder":
        path.mkdir()  # a name that is now a folder
        why = f"{path} is now a folder"
    elif cause == "folder removed":
        logs.rmdir()
        why = f"its folder {logs} no longer exists"
    else:
        def full(name: Any, flags: int, *a: Any, **kw: Any) -> int:
            if str(name) == str(path) and flags & os.O_CREAT:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(name, flags, *a, **kw)

        monkeypatch.setattr(os, "open", full)
        why = "no space left on the device"
    f.rotate()  # logrotate's SIGUSR1
    f.write("still here\n")
    f.rotate()  # another one, the cause still there: not said again
    expected = (f"cannot open the log file {path} again after it was moved away ({why}): "
                "the log goes on in the moved file; tried again at the next SIGUSR1 and "
                "every 64 KiB of log")
    assert stderr.getvalue() == f"mailhub: {expected}\n"
    text = moved.read_text()
    assert text.count(expected) == 1, text
    assert text.startswith("before\n") and text.endswith("still here\n"), text
    assert "[txmailhub.logfile#error] " + expected in text
    # the cause mended: the next SIGUSR1 makes mailhub.log again
    if cause == "folder":
        path.rmdir()
    elif cause == "folder removed":
        logs.mkdir()
    else:
        monkeypatch.setattr(os, "open", real_open)
    f.rotate()
    f.write("after\n")
    f.close()
    assert path.read_text() == "after\n"
    assert stderr.getvalue().count("cannot open") == 1


def test_a_moved_log_made_again_by_logrotate_but_not_writable_is_said_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # logrotate's ``create 0640 root adm`` made mailhub.log again, a file
    # the hub's user may not write: the notice said the hub "may not make
    # files in its folder", which sent the admin to the folder's mode
    path = tmp_path / "mailhub.log"
    f = _log_file(path)
    stderr = _said(f)
    os.rename(path, tmp_path / "mailhub.log-20261201")
    path.write_text("")  # logrotate's create
    real_open = os.open

    def refused(name: Any, flags: int, *a: Any, **kw: Any) -> int:
        if str(name) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(name, flags, *a, **kw)

    monkeypatch.setattr(os, "open", refused)
    f.rotate()
    f.close()
    said = stderr.getvalue()
    assert f"({path} is there, but the hub may not write it:" in said, said
    assert "may not make files" not in said


@pytest.mark.parametrize("cause", ["a file at the folder's name", "a folder not searchable"])
def test_a_log_path_that_cannot_even_be_looked_at_loses_no_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str) -> None:
    # the log's folder moved away and a file left at its name (ENOTDIR),
    # or the folder made one the hub may not go through (EACCES): the
    # look at the path raised out of ``rotate``, and so out of ``write``
    # at the size rotation: that line lost, and every later one
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "mailhub.log"
    f = _log_file(path, rotateLength=100)
    stderr = _said(f)
    f.write("before\n")
    moved = tmp_path / "logs.old"
    os.rename(logs, moved)
    if cause == "a file at the folder's name":
        logs.write_text("")
    else:
        logs.mkdir()
        real_stat = os.stat

        def refused(name: Any, *a: Any, **kw: Any) -> os.stat_result:
            if str(name).startswith(str(logs) + os.sep):
                raise PermissionError(errno.EACCES, "Permission denied", str(name))
            return real_stat(name, *a, **kw)

        monkeypatch.setattr(os, "stat", refused)
        monkeypatch.setattr(os, "open", lambda name, *a, **kw: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, "Permission denied", str(name))))
    f.rotate()  # logrotate's SIGUSR1
    f.write("x" * 200 + "\n")  # past rotateLength: a rotation at this write
    f.write("still here\n")
    f.close()
    text = _without_notices((moved / "mailhub.log").read_text())
    assert text == "before\n" + "x" * 200 + "\nstill here\n", text
    assert stderr.getvalue().count("cannot open the log file") == 1, stderr.getvalue()
