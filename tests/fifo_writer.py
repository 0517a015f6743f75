"""A named pipe with a writer behind it, for the tests of readers that
must refuse one rather than wait on it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def fed_fifo(path: Path, data: bytes) -> Iterator[None]:
    """A named pipe at ``path`` that a thread writes ``data`` into, once a
    reader opens it.  A reader that opens it plainly (and so waits for a
    writer) gets the data and an end of file instead of waiting for ever:
    the test of such a reader fails rather than hangs.  On leaving, a
    reader of the test's own lets the thread through whatever happened."""
    os.mkfifo(path)

    def feed() -> None:
        try:
            with open(path, "wb") as f:  # waits for a reader
                f.write(data)
        except BrokenPipeError:  # the reader looked and went: refused
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        yield
    finally:
        # held open until the thread ends: its open() then never waits
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            writer.join()
        finally:
            os.close(fd)
