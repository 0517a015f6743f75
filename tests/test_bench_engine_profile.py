"""bench/engine_profile.py runs the hub in-process on a fake reactor: it
must never start the Syncer's worker threads (they need a real reactor)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sync", ["aio", "threads"])
def test_a_short_run_uses_no_thread_and_stores_every_message(sync, tmp_path):
    # --sync aio left the Syncer's call() jobs (the spool's files made
    # ahead of time) to real worker threads on a MemoryReactorClock: the
    # thread died (no callFromThread) and the profile measured a hub whose
    # spool made every file on the reactor thread
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine_profile.py"), "run",
         "--sessions", "20", "--sync", sync, "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
