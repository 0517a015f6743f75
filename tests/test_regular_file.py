"""Reading a file that must be a regular one (txmailhub.regular_file):
what the aliases file's readers rely on."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
from conftest import leased

from txmailhub.regular_file import FileTooLarge, NotRegularFile, PipeTimeout, read_regular


def test_a_link_is_followed_unless_told_not_to(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"a: joe\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert read_regular(str(link))[0] == b"a: joe\n"
    # a change reads the file a link led to with follow=False: a link put
    # there since is not followed
    with pytest.raises(OSError) as info:
        read_regular(str(link), follow=False)
    assert info.value.errno == errno.ELOOP


def test_a_file_over_its_most_is_refused_one_at_it_read(tmp_path: Path) -> None:
    # ``most``: the users and aliases files' bound.  At it, the file is
    # read whole; one octet more, refused with a line that says the bound
    path = tmp_path / "users"
    path.write_bytes(b"x" * 1024)
    assert read_regular(str(path), most=1024)[0] == b"x" * 1024
    with open(path, "ab") as f:
        f.write(b"y")
    with pytest.raises(FileTooLarge) as info:
        read_regular(str(path), most=1024)
    assert str(info.value) == "larger than 1 KiB, the most the hub reads of it"
    assert info.value.path == str(path) and info.value.most == 1024


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_what_is_no_regular_file_is_refused_and_left_closed(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _open_descriptors()
    for _ in range(5):
        with pytest.raises(NotRegularFile) as info:
            read_regular(str(fifo))
        # the aliases file's editor and the CLI name the file by it
        assert info.value.path == str(fifo)
        # a folder is refused as open() refuses it, not as a FIFO is
        with pytest.raises(IsADirectoryError):
            read_regular(str(tmp_path))
    # a hub that meets them at every change of the file must not run out
    assert _open_descriptors() == before


def test_a_limit_reads_the_first_octets_only(tmp_path: Path) -> None:
    # the relay's smarthost auth file: a file that has no business being
    # large is not read whole
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    assert read_regular(str(path), limit=4)[0] == b"0123"
    assert read_regular(str(path))[0] == b"0123456789"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_failed_fstat_is_raised_and_its_descriptor_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    before = _open_descriptors()

    def fstat(fd: int) -> os.stat_result:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(OSError) as info:
        read_regular(str(path))
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert _open_descriptors() == before


def test_a_socket_is_refused_as_no_regular_file(tmp_path: Path) -> None:
    # open() of a socket fails with ENXIO, "No such device or address",
    # which names neither the socket nor the cure
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(NotRegularFile) as info:
            read_regular(str(path))
    assert info.value.path == str(path)


def test_a_pipe_is_read_to_its_limit_and_no_further() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"0123456789")
        assert read_regular(f"/dev/fd/{r}", limit=4, pipe_wait=5)[0] == b"0123"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("written", [b"", b"half a con"])
def test_a_pipe_not_read_to_its_end_in_time_says_how_much_came(written: bytes) -> None:
    # its writer holds it open: the first octets alone must not make the
    # read wait for the end without a bound
    r, w = os.pipe()
    try:
        os.write(w, written)
        with pytest.raises(PipeTimeout) as info:
            read_regular(f"/dev/fd/{r}", pipe_wait=0.05)
    finally:
        os.close(r)
        os.close(w)
    assert isinstance(info.value, TimeoutError)
    assert info.value.read == len(written)
    assert info.value.filename == f"/dev/fd/{r}"


def test_a_small_file_read_to_a_large_limit_takes_no_memory_for_the_limit(
        tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        data, _ = read_regular(str(path), limit=4 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b"x" * 1000
    assert peak < 1 << 20, peak


@pytest.mark.parametrize(("size", "limit"), [(0, 5), (4, 5), (5, 5), (9, 5), (9, 0)])
def test_a_file_is_read_to_its_limit(tmp_path: Path, size: int, limit: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(size)))
    assert read_regular(str(path), limit=limit)[0] == bytes(range(size))[:limit]


def test_a_file_that_says_it_is_empty_is_read_to_its_limit() -> None:
    # /proc's files have a size of 0 and a content
    data, st = read_regular("/proc/self/status", limit=1 << 20)
    assert st.st_size == 0 and data.startswith(b"Name:")


def _failing_open(monkeypatch: pytest.MonkeyPatch, target: str, code: int) -> None:
    """``os.open`` of ``target`` fails with ``code``; any other opens."""
    real_open = os.open

    def fake_open(path: str, flags: int, *args: int) -> int:
        if path == target:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.mark.parametrize("there", [True, False])
def test_an_enxio_of_what_is_no_socket_is_raised_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, there: bool) -> None:
    # a device node with no driver behind it, or a name gone since: its
    # ENXIO is its own, not "no regular file" (only a socket's is)
    path = tmp_path / "device"
    if there:
        path.write_bytes(b"")
    _failing_open(monkeypatch, str(path), errno.ENXIO)
    with pytest.raises(OSError) as info:
        read_regular(str(path))
    assert not isinstance(info.value, NotRegularFile)
    assert info.value.errno == errno.ENXIO


def test_another_error_at_a_socket_is_raised_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a socket this user may not open: the permission is what to fix
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        _failing_open(monkeypatch, str(path), errno.EACCES)
        with pytest.raises(PermissionError) as info:
            read_regular(str(path))
    assert not isinstance(info.value, NotRegularFile)


def test_a_file_grown_since_its_fstat_is_read_to_the_limit_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat
    calls = []

    def fstat_from_before(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        calls.append(fd)
        if len(calls) == 1:  # the first: taken when it held 10 octets
            fields = list(st)
            fields[6] = 10  # st_size
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "fstat", fstat_from_before)
    assert read_regular(str(path), limit=50)[0] == b"x" * 50


def test_a_pipe_holding_its_limit_is_read_at_once_though_its_writer_holds_it() -> None:
    # the limit reached is an end, as the writer's close is: no wait for more
    r, w = os.pipe()
    try:
        os.write(w, b"0123")
        assert read_regular(f"/dev/fd/{r}", limit=4, pipe_wait=2)[0] == b"0123"
    finally:
        os.close(r)
        os.close(w)


def test_a_pipe_past_its_time_is_not_waited_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # the clock says the time given is over: the read ends there, never
    # in a wait for the writer (a poll without a bound), which here
    # would last until the writer's close
    import threading
    import types

    from txmailhub import regular_file

    clock = iter([0.0, 5.0, 5.0, 5.0])
    monkeypatch.setattr(regular_file, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    r, w = os.pipe()
    closer = threading.Timer(0.5, os.close, (w,))
    closer.start()
    try:
        with pytest.raises(PipeTimeout) as info:
            read_regular(f"/dev/fd/{r}", pipe_wait=1)
    finally:
        closer.join()
        os.close(r)
    assert info.value.read == 0


def test_a_pipe_timeout_says_how_many_octets_came() -> None:
    assert "did not close it (1 octets read)" in str(PipeTimeout("p", 5, 1))
    assert "nothing written to the pipe" in str(PipeTimeout("p", 5, 0))



@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reopens through /proc/self/fd")
def test_a_regular_file_under_a_lease_is_read_once_the_lease_is_given_up(
        tmp_path: Path) -> None:
    # the non-blocking open of a file another program holds a lease on
    # fails at once with EWOULDBLOCK: a queue record so was set aside to
    # corrupt/ at the start, a users file taken for one that cannot be
    # read.  A plain open waits for the lease to be given up: so does this
    path = tmp_path / "record"
    path.write_bytes(b"{}\n")
    with leased(path) as asked:
        assert read_regular(str(path))[0] == b"{}\n"
    assert asked == [signal.SIGIO]
