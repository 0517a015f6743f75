"""``conftest.as_user``: what a child run as another user did reaches the
test, whatever it was, and the child never outlives the call."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from conftest import as_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="as_user is root's only")


class _Unpicklable(Exception):
    """An exception pickle cannot carry back (a lock among its arguments)."""

    def __init__(self) -> None:
        super().__init__("the child's own words", threading.Lock())


def _raise_unpicklable() -> None:
    raise _Unpicklable()


def test_a_value_comes_back() -> None:
    assert as_user(65534, 65534, lambda: (os.geteuid(), os.getegid(), os.getgroups())) == (
        65534, 65534, [])


def test_an_exception_pickle_cannot_carry_is_still_told() -> None:
    # it was lost: the child died writing it, and the parent said only
    # "EOFError: Ran out of input"
    with pytest.raises(RuntimeError, match="the child's own words") as info:
        as_user(65534, 65534, _raise_unpicklable)
    assert "_raise_unpicklable" in str(info.value), info.value  # its traceback


def test_a_value_pickle_cannot_carry_is_told() -> None:
    with pytest.raises(RuntimeError, match=r"cannot be pickled.*lock"):
        as_user(65534, 65534, threading.Lock)


def test_a_user_the_child_cannot_switch_to_is_told() -> None:
    # setgid's own error (not "EOFError: Ran out of input")
    with pytest.raises(OverflowError):
        as_user(65534, 2**40, lambda: None)


def test_a_child_killed_by_a_signal_is_told() -> None:
    with pytest.raises(RuntimeError, match="signal 9"):
        as_user(65534, 65534, lambda: os.kill(os.getpid(), signal.SIGKILL))


class _Interrupted(Exception):
    pass


def test_a_call_interrupted_in_the_parent_ends_and_reaps_its_child() -> None:
    # pytest-timeout (or ^C) stopping a test whose child hangs left that
    # child running, blocked, for the rest of the run
    read, write = os.pipe()

    def hang() -> None:
        os.write(write, str(os.getpid()).encode())
        os.kill(os.getppid(), signal.SIGUSR1)  # as uid 0: it may signal the test
        while True:
            signal.pause()

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted()

    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(_Interrupted):
            as_user(0, 0, hang)
        pid = int(os.read(read, 32))
        try:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped: no such child any more
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    finally:
        signal.signal(signal.SIGUSR1, old)
        os.close(read)
        os.close(write)
