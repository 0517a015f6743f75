"""Reading a file that must be a regular one (txmailhub.regular_file):
what the aliases file's readers rely on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from txmailhub.regular_file import NotRegularFile, PipeTimeout, read_regular


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
