"""txmailhub.allocator: after a burst of password checks, the memory goes back.

A soak of a few thousand sessions (some hundreds of scrypt logins on the
reactor's ten pool threads) left a hub at 338 MiB of RSS, from 56 MiB at
its start, with every Python object of those sessions gone: glibc kept
the 16 MiB block of each check in the malloc arena of the thread that ran
it.  ``twistd mailhub`` now fixes glibc's mmap threshold so that such a
block is unmapped when freed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from txmailhub import allocator, tap
from txmailhub.allocator import MMAP_THRESHOLD, tune_malloc


class FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_the_threshold_is_set_below_a_password_checks_block() -> None:
    libc = FakeLibc()
    assert tune_malloc(libc=libc, environ={}) is True
    assert libc.calls == [(-3, MMAP_THRESHOLD)]  # M_MMAP_THRESHOLD
    # a check's block (128 * r * N octets, users.py) is above it; a
    # session's buffers (64 KiB reads and writes) are far below
    from txmailhub.password_hash import _SCRYPT_N, _SCRYPT_R

    assert 64 * 1024 < MMAP_THRESHOLD < 128 * _SCRYPT_R * _SCRYPT_N


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "65536"},
    {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
    # glibc's own names for its malloc tunables count as much as the
    # tunables do: a trim threshold set alone fixes the mmap threshold at
    # glibc's 128 KiB already, which this would raise to 4 MiB
    {"MALLOC_TRIM_THRESHOLD_": "131072"},
    {"MALLOC_ARENA_MAX": "2"},
    {"MALLOC_TOP_PAD_": "0"},
    {"MALLOC_ARENA_TEST": "1"},
    {"MALLOC_CHECK_": "3"},
    {"MALLOC_MMAP_MAX_": "0"},
    {"MALLOC_PERTURB_": "165"},
])
def test_malloc_tuned_by_the_administrator_is_left_alone(environ: dict[str, str]) -> None:
    libc = FakeLibc()
    assert tune_malloc(libc=libc, environ=environ) is False
    assert libc.calls == []


@pytest.mark.parametrize("tunables", ["glibc.cpu.hwcaps=-AVX2", "glibc.pthread.rseq=0",
                                      "glibc.rtld.nns=8:glibc.elision.enable=1"])
def test_tunables_of_other_parts_of_glibc_leave_the_threshold_to_the_hub(tunables: str) -> None:
    libc = FakeLibc()
    assert tune_malloc(libc=libc, environ={"GLIBC_TUNABLES": tunables}) is True
    assert libc.calls == [(-3, MMAP_THRESHOLD)]


def _is_glibc() -> bool:
    # told apart without the code under test: its own check must not be
    # what decides whether it is checked
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _is_glibc(), reason="glibc only")
def test_on_glibc_the_c_library_is_found() -> None:
    libc = allocator._glibc()
    assert libc is not None and hasattr(libc, "mallopt")


def test_a_c_library_that_refuses_or_lacks_mallopt_is_no_error() -> None:
    assert tune_malloc(libc=FakeLibc(answer=0), environ={}) is False
    assert tune_malloc(libc=object(), environ={}) is False


def test_not_glibc_means_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert tune_malloc(environ={}) is False


def test_twistd_mailhub_tunes_malloc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_service import _tap_options

    calls: list[int] = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda: calls.append(1) or True)
    tap.makeService(_tap_options(tmp_path, "state"))
    assert calls == [1]


# what the hub's pool does at a burst of logins: ten threads, each checking
# passwords at once; the RSS before and after, in KiB
BURST = """
import hashlib, sys
from concurrent.futures import ThreadPoolExecutor
from txmailhub.allocator import tune_malloc
from txmailhub.password_hash import _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _MAXMEM

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

def check(i):
    hashlib.scrypt(b"pw%d" % i, salt=b"s" * 16, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                   maxmem=_MAXMEM, dklen=32)

tuned = tune_malloc()
before = rss()
with ThreadPoolExecutor(10) as pool:
    for _ in range(3):
        list(pool.map(check, range(10)))
print(tuned, before, rss())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_a_burst_of_password_checks_gives_its_memory_back() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in (*allocator.MALLOC_ENVIRONMENT, "GLIBC_TUNABLES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(tap.__file__).parents[1]),
                                                       env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout.split()
    tuned, before, after = out[0] == "True", int(out[1]), int(out[2])
    if not _is_glibc():
        pytest.skip("not glibc: its arenas are what this is about")
    assert tuned
    # ten 16 MiB blocks kept (160 MiB) before the fix; a few MiB now
    assert (after - before) / 1024 < 32, f"RSS {before} KiB -> {after} KiB"
