"""Crash points inside a live hub, for test_relay_crash.py.

A SIGKILL sent from outside at "the moment the record is rewritten"
would be a race with the hub's threads; a hub started through the
launcher ``write_launcher`` makes kills itself instead, at a step named
in advance: before the n-th call of one of the queue's file steps
(``txmailhub.relay.queue.FileSystem``: ``link_or_copy``, ``write_file``,
``fsync_file``, ``rename``, ``unlink``, ``fsync_dir``).  The same
schedule kills at the same step at every run.

Every step is appended to a trace file as it starts (``<step> <file
name>``; ``KILL <step> <file name>`` for the one it dies at), so a test
can tell where the hub was, and wait for a step before it acts.

Only the hub's own process is touched, through the launcher: nothing in
txmailhub knows about it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

ENV = "TXMAILHUB_TEST_CRASHPOINT"
STEPS = ("link_or_copy", "write_file", "fsync_file", "rename", "unlink", "fsync_dir")


def install() -> None:
    """Wrap the queue's file steps as ``$TXMAILHUB_TEST_CRASHPOINT`` says:
    ``{"trace": PATH, "kill": [STEP, N]}`` (``kill`` optional)."""
    spec = json.loads(os.environ.get(ENV) or "{}")
    if not spec:
        return
    from txmailhub.relay import queue

    trace = spec["trace"]
    kill = spec.get("kill")
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def wrap(step: str):
        original = getattr(queue.FileSystem, step)

        def wrapper(self, *args):
            # the file it makes or changes: the destination of a link or a
            # rename, the path of the others
            name = os.path.basename(str(args[1] if step in ("link_or_copy", "rename")
                                        else args[0]))
            with lock:
                counts[step] = counts.get(step, 0) + 1
                dies = kill is not None and kill[0] == step and kill[1] == counts[step]
                with open(trace, "a") as f:
                    f.write(f"{'KILL ' if dies else ''}{step} {name}\n")
                if dies:
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args)

        wrapper.__name__ = original.__name__
        setattr(queue.FileSystem, step, wrapper)

    for step in STEPS:
        wrap(step)


def write_launcher(path: Path) -> Path:
    """An executable ``twistd`` that installs the crash point first."""
    here = os.path.dirname(os.path.abspath(__file__))
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "import crashpoint\n"
        "crashpoint.install()\n"
        "from twisted.scripts.twistd import run\n"
        "sys.exit(run())\n")
    path.chmod(0o755)
    return path
