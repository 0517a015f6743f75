"""Opening the config file: a pipe with a writer is read, a named pipe
without one and what is neither file nor pipe are refused in one line
naming it, never waited on (``config._read_config``)."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fifo_writer import fed_fifo

from txmailhub.config import CONFIG_MAX, load, load_local_submission
from txmailhub.errors import ConfigError

CONFIG = (b'[hub]\nhostname = "mail.example.org"\ndomains = ["example.org"]\n'
          b'state_dir = "state"\n[smtp]\nlisten = []\n[submission]\nlisten = []\n'
          b'[pop3]\nlisten = []\n')

READERS: list[Callable[[str], Any]] = [load, load_local_submission]  # hub's, sendmail's


@pytest.mark.parametrize("reader", READERS)
def test_a_named_pipe_with_a_writer_is_read(tmp_path: Path, reader: Callable) -> None:
    fifo = tmp_path / "mailhub.toml"
    with fed_fifo(fifo, CONFIG):
        assert reader(str(fifo)).path == str(fifo)


@pytest.mark.parametrize("reader", READERS)
def test_a_pipe_as_from_process_substitution_is_read(reader: Callable) -> None:
    # <(...) and "| mailhub -c /dev/stdin" hand over an anonymous pipe
    r, w = os.pipe()
    try:
        os.write(w, CONFIG)
        os.close(w)
        settings = reader(f"/dev/fd/{r}")
    finally:
        os.close(r)
    assert settings.path == f"/dev/fd/{r}"


@pytest.mark.parametrize("reader", READERS)
def test_a_named_pipe_without_a_writer_is_refused_not_waited_on(
        tmp_path: Path, reader: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("txmailhub.config._PIPE_WAIT", 0.05)
    fifo = tmp_path / "mailhub.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        reader(str(fifo))
    assert info.value.problems == [
        f"{fifo}: cannot read the config file: it is a pipe that nothing was written to "
        "in 0.05 seconds"]


@pytest.mark.parametrize("reader", READERS)
def test_a_device_is_refused(reader: Callable) -> None:
    # /dev/null read as an empty config, /dev/zero without end
    with pytest.raises(ConfigError) as info:
        reader(os.devnull)
    assert info.value.problems == [
        f"{os.devnull}: cannot read the config file: it is not a regular file "
        "or a pipe (a device or socket)"]


@pytest.mark.parametrize("reader", READERS)
def test_a_socket_is_refused_as_no_regular_file(tmp_path: Path, reader: Callable) -> None:
    # open() of a socket fails with ENXIO, "No such device or address"
    path = tmp_path / "mailhub.toml"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(ConfigError) as info:
            reader(str(path))
    assert info.value.problems == [
        f"{path}: cannot read the config file: it is not a regular file "
        "or a pipe (a device or socket)"]


@pytest.mark.parametrize("reader", READERS)
def test_a_link_to_a_regular_file_is_read(tmp_path: Path, reader: Callable) -> None:
    real = tmp_path / "real.toml"
    real.write_bytes(CONFIG)
    link = tmp_path / "mailhub.toml"
    link.symlink_to(real)
    assert reader(str(link)).path == str(link)


def test_mailhub_check_refuses_a_named_pipe_without_a_writer_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from txmailhub.cli import main

    monkeypatch.setattr("txmailhub.config._PIPE_WAIT", 0.05)
    fifo = tmp_path / "mailhub.toml"
    os.mkfifo(fifo)
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(fifo), "check"], out=out, err=err)
    assert code == 2
    assert err.getvalue() == (f"{fifo}: cannot read the config file: it is a pipe that "
                              "nothing was written to in 0.05 seconds\n")


def test_twistd_mailhub_refuses_a_named_pipe_without_a_writer_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from txmailhub.tap import Options

    monkeypatch.setattr("txmailhub.config._PIPE_WAIT", 0.05)
    fifo = tmp_path / "mailhub.toml"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["-c", str(fifo)])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"{fifo}: cannot read the config file: it is a pipe that nothing was written to "
        "in 0.05 seconds\n")


def test_a_config_given_as_a_pipe_resolves_relative_paths_in_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # /dev/fd (or /dev) is no place for the users file: the folder the
    # command runs in is the one the generated config was meant for
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    try:
        os.write(w, CONFIG)
        os.close(w)
        settings = load(f"/dev/fd/{r}")
    finally:
        os.close(r)
    assert settings.users.file == str(tmp_path / "users")
    assert settings.hub.state_dir == str(tmp_path / "state")


def test_a_named_pipe_put_where_the_file_was_resolves_relative_paths_in_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a FIFO a writer fills at /etc/txmailhub/mailhub.toml is that folder's
    # config: a service's working folder (/) is no place for its users file
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)
    with fed_fifo(etc / "mailhub.toml", CONFIG):
        settings = load(str(etc / "mailhub.toml"))
    assert settings.users.file == str(etc / "users")
    assert settings.hub.state_dir == str(etc / "state")


@pytest.mark.parametrize("reader", READERS)
def test_a_file_given_as_a_descriptor_resolves_relative_paths_in_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: Callable) -> None:
    # "mailhub -c /dev/stdin < mailhub.toml": the name read is /dev's
    conf = tmp_path / "etc" / "mailhub.toml"
    conf.parent.mkdir()
    conf.write_bytes(CONFIG)
    monkeypatch.chdir(tmp_path)
    fd = os.open(conf, os.O_RDONLY)
    try:
        read = reader(f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    # the hub's Settings and sendmail's LocalSubmission keep it apart
    state_dir = read.hub.state_dir if reader is load else read.state_dir
    assert state_dir == str(tmp_path / "state")
    if reader is load:
        assert read.users.file == str(tmp_path / "users")


def test_a_config_file_resolves_relative_paths_in_its_own_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc" / "mailhub.toml"
    conf.parent.mkdir()
    conf.write_bytes(CONFIG)
    monkeypatch.chdir(tmp_path)
    settings = load(str(conf))
    assert settings.users.file == str(tmp_path / "etc" / "users")
    assert settings.hub.state_dir == str(tmp_path / "etc" / "state")


TOO_BIG = (f"cannot read the config file: it holds more than {CONFIG_MAX // (1024 * 1024)} "
           "MiB, the most a config file may hold")


@pytest.mark.parametrize("reader", READERS)
def test_a_config_file_over_the_limit_is_refused_in_one_line(
        tmp_path: Path, reader: Callable) -> None:
    # valid TOML (a long comment): read whole, it would load
    path = tmp_path / "mailhub.toml"
    path.write_bytes(CONFIG + b"#" + b"x" * (CONFIG_MAX - len(CONFIG) - 2) + b"\n")
    assert path.stat().st_size == CONFIG_MAX
    assert reader(str(path)).path == str(path)  # the limit itself is read
    with path.open("ab") as f:
        f.write(b"\n")
    with pytest.raises(ConfigError) as info:
        reader(str(path))
    assert info.value.problems == [f"{path}: {TOO_BIG}"]


def _endless_writer(w: int, cap: int = 64 * 1024 * 1024) -> threading.Thread:
    """A thread writing ``yes``'s output into the pipe ``w`` until its
    reader goes (or ``cap`` octets: a reader with no limit fails rather
    than takes memory without end), then closing it."""

    def write() -> None:
        sent = 0
        try:
            while sent < cap:
                sent += os.write(w, b"y\n" * 32768)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


@pytest.mark.parametrize("reader", READERS)
def test_an_endless_pipe_is_refused_once_over_the_limit(reader: Callable) -> None:
    # mailhub -c <(yes)
    r, w = os.pipe()
    writer = _endless_writer(w)
    try:
        with pytest.raises(ConfigError) as info:
            reader(f"/dev/fd/{r}")
    finally:
        os.close(r)  # the writer's next write: EPIPE
        writer.join()
    assert info.value.problems == [f"/dev/fd/{r}: {TOO_BIG}"]


@pytest.mark.parametrize("reader", READERS)
def test_a_pipe_whose_writer_never_closes_it_is_refused_in_one_line(
        reader: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    # its first octets came at once: the read must still end
    monkeypatch.setattr("txmailhub.config._PIPE_WAIT", 0.2)
    r, w = os.pipe()
    os.write(w, CONFIG)
    done = threading.Event()

    def hold() -> None:
        # held open until the read is over; at most 30 s, so that a reader
        # that waits for the writer's end fails rather than hangs
        done.wait(30)
        os.close(w)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        with pytest.raises(ConfigError) as info:
            reader(f"/dev/fd/{r}")
    finally:
        done.set()
        holder.join()
        os.close(r)
    assert info.value.problems == [
        f"/dev/fd/{r}: cannot read the config file: it is a pipe whose writer did not close "
        f"it in 0.2 seconds ({len(CONFIG)} octets read): the whole config must come by then"]


def test_mailhub_check_refuses_a_config_over_the_limit_in_one_line(tmp_path: Path) -> None:
    from txmailhub.cli import main

    path = tmp_path / "mailhub.toml"
    path.write_bytes(CONFIG + b"#" * CONFIG_MAX)
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(path), "check"], out=out, err=err) == 2
    assert err.getvalue() == f"{path}: {TOO_BIG}\n"


def test_a_pipe_with_one_octet_come_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # one octet is not "nothing written"
    monkeypatch.setattr("txmailhub.config._PIPE_WAIT", 0.05)
    r, w = os.pipe()
    try:
        os.write(w, b"[")
        with pytest.raises(ConfigError) as info:
            load(f"/dev/fd/{r}")
    finally:
        os.close(r)
        os.close(w)
    assert info.value.problems == [
        f"/dev/fd/{r}: cannot read the config file: it is a pipe whose writer did not close "
        "it in 0.05 seconds (1 octets read): the whole config must come by then"]


@pytest.mark.parametrize("name", [
    "/dev/stdin", "/dev/fd/63", "/proc/self/fd/3", "/proc/thread-self/fd/3",
    "/proc/1234/fd/3", "/proc/1234/task/1235/fd/3", "/proc/self/task/7/fd/0",
])
def test_a_descriptor_name_resolves_relative_paths_in_the_working_folder(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from txmailhub.config import _paths_folder

    monkeypatch.chdir(tmp_path)
    assert _paths_folder(name) == str(tmp_path)


@pytest.mark.parametrize("name", [
    "/dev/shm/mailhub.toml", "/devices/mailhub.toml", "/dev/fd/sub/mailhub.toml",
    "/proc/self/fdinfo/3", "/proc/self/mailhub.toml", "/etc/dev/fd/3",
])
def test_a_file_in_another_folder_resolves_relative_paths_in_its_own(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from txmailhub.config import _paths_folder

    monkeypatch.chdir(tmp_path)
    assert _paths_folder(name) == os.path.dirname(name)


def test_sendmail_reads_max_junk_commands(tmp_path: Path) -> None:
    path = tmp_path / "mailhub.toml"
    path.write_bytes(CONFIG.replace(b"[smtp]\n", b"[smtp]\nmax_junk_commands = 3\n"))
    assert load_local_submission(str(path)).max_junk_commands == 3


def test_an_error_without_its_own_text_is_named_by_what_it_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(path: str, **kwargs: Any) -> Any:
        raise OSError("the disk said no")

    monkeypatch.setattr("txmailhub.config.read_regular", unreadable)
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "mailhub.toml"))
    assert info.value.problems == [
        f"{tmp_path / 'mailhub.toml'}: cannot read the config file: the disk said no"]
