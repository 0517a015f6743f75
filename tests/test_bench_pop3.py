"""bench/pop3.py and bench/smtp.py when targets do not start: a line and
exit 1, not a ZeroDivisionError; no ratios against a target that did not
run.  Nothing is started or measured here: the starts fail on purpose and
the report is made of fabricated records."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts bench/ on sys.path for its benchlib
    return module


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The scripts' surroundings, made harmless: BENCH_HOME in tmp_path (a
    plain spool folder, never the shared one), no version probes, no
    subreaper for the test process, and every start failing as it does
    without the project's .venv (FileNotFoundError)."""
    def load(name: str) -> ModuleType:
        module = _script(name)
        bl = module.bl
        monkeypatch.setattr(bl, "BENCH_HOME", str(tmp_path))
        monkeypatch.setattr(bl, "versions", dict)
        monkeypatch.setattr(bl, "Servers", contextlib.ExitStack)

        def cannot_start(name: str, *args: object) -> None:
            raise FileNotFoundError(2, "No such file or directory", f"/nowhere/{name}")

        monkeypatch.setattr(module, "start_target" if name == "pop3" else "make_target",
                            cannot_start)
        return module

    return load


def test_pop3_with_no_target_started_says_so_and_exits_1(nothing_starts, capsys) -> None:
    pop3 = nothing_starts("pop3")
    args = argparse.Namespace(fs="tmp", keep_fs=False, out="", reps=2, slow_cap=0,
                              timeout=1.0, markdown="")
    # it was a ZeroDivisionError (rotating the order of no targets per rep)
    with pytest.raises(SystemExit) as info:
        pop3.run(args, ["txmailhub", "dovecot"], [(2, 1024)])
    assert info.value.code == ("no target started (txmailhub, dovecot): nothing to measure "
                               "(see the lines above)")  # a str: Python prints it, exit 1
    out = capsys.readouterr().out
    assert "txmailhub: not started, left out of this run: " in out, out
    assert "dovecot: not started, left out of this run: " in out, out


def test_smtp_with_no_target_started_says_so_and_exits_1(nothing_starts, capsys) -> None:
    smtp = nothing_starts("smtp")
    args = argparse.Namespace(fs="tmp", keep_fs=False, out="", reps=2, messages=10,
                              max_mib=1, reuse=False, timeout=1.0, settle=1.0, large=0,
                              large_reps=0, pause=0.0, markdown="")
    with pytest.raises(SystemExit) as info:
        smtp.run(args, ["txmailhub", "aiosmtpd"], [1024], [1])
    assert info.value.code == ("no target started (txmailhub, aiosmtpd): nothing to measure "
                               "(see the lines above)")
    assert "aiosmtpd: not started, left out of this run: " in capsys.readouterr().out


def test_start_each_keeps_the_targets_that_start(capsys) -> None:
    bl = _script("pop3").bl

    def start(name: str) -> str:
        if name == "dovecot":
            raise RuntimeError("dovecot did not listen on port 1 within 60 s")
        return f"server {name}"

    assert bl.start_each(["txmailhub", "dovecot", "twistd-mail"], start) == {
        "txmailhub": "server txmailhub", "twistd-mail": "server twistd-mail"}
    assert capsys.readouterr().out == ("dovecot: not started, left out of this run: dovecot "
                                       "did not listen on port 1 within 60 s\n")


def _record(target: str, rep: int, retr_per_s: float, cpu_ms: float) -> dict:
    return {"target": target, "set": "2 x 1 KiB", "rep": rep, "warmup": rep < 0, "ok": True,
            "retrieved": 2, "messages_listed": 2, "content_mismatches": 0 if rep < 0 else None,
            "session_s": 0.01, "retr_per_s": retr_per_s, "mib_per_s": retr_per_s / 1024,
            "retr_cpu_ms_per_msg": cpu_ms, "login_list_cpu_ms": 1.0,
            "server_cpu_ms_per_msg": cpu_ms, "peak_rss_kb": 40960, "rss_before_retr_kb": 40960,
            "foreign_cpu_cores": 0.0}


def _rows(text: str, first: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first} ")]


def test_the_report_has_no_ratio_against_a_target_that_did_not_start() -> None:
    pop3 = _script("pop3")
    targets = ["txmailhub", "dovecot", "twistd-mail"]  # twistd-mail did not start
    records = [_record(name, rep, speed, cpu)
               for rep in (-1, 0, 1)
               for name, speed, cpu in (("txmailhub", 2000.0, 0.5), ("dovecot", 1000.0, 1.0))]
    text = pop3.report(records, targets, "txmailhub")
    assert _rows(text, "twistd-mail") == [["twistd-mail", *["-"] * 9, "not started"]], text
    assert _rows(text, "dovecot")[1] == ["dovecot", "2.00", "2.00", "2.00"], text
    assert "Ratios, paired per rep" in text
    # the reference itself not started: its row says so, and no ratios at all
    text = pop3.report([r for r in records if r["target"] == "dovecot"], targets, "txmailhub")
    assert _rows(text, "txmailhub") == [["txmailhub", *["-"] * 9, "not started"]], text
    assert "Ratios" not in text, text
