"""The descriptor guard of tests/conftest.py (``_no_descriptor_leaks``)
fails a test module that leaves descriptors open, and only such a module.

Run in a separate pytest process (``pytester``), with a copy of the real
conftest, so that the leaks made here never reach this run's own guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FD_LEAK_LIMIT

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def guarded(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    return pytester


def test_a_module_that_leaves_spool_files_open_fails(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_leaky="""
        import os

        def test_makes_a_spooler_and_forgets_it(tmp_path):
            os.mkdir(tmp_path / "spool")
            for i in range(17):  # what one Spooler holds: its lock, 16 files
                os.open(tmp_path / "spool" / str(i), os.O_WRONLY | os.O_CREAT)

        def test_later(tmp_path):
            pass
    """)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_later*",
        "*test_leaky left 17 more file descriptors open*('spool/', 17)*",
    ])


def test_a_module_that_closes_what_it_opens_passes(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_tidy=f"""
        import os

        def test_opens_and_closes(tmp_path):
            fds = [os.open(tmp_path / str(i), os.O_WRONLY | os.O_CREAT) for i in range(40)]
            for fd in fds:
                os.close(fd)

        def test_leaves_a_few_to_the_limit(tmp_path):
            # one-time allocations of a process (a reactor's epoll and
            # waker) may land in any module: up to the limit is no leak
            for i in range({FD_LEAK_LIMIT}):
                os.open(tmp_path / str(i), os.O_WRONLY | os.O_CREAT)
    """)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
