"""docs/deployment.rst's fail2ban filter, run by fail2ban itself.

``test_fail2ban_doc`` matches the filter's patterns with Python's ``re``
against the forms fail2ban is said to see.  Here ``fail2ban-regex``
reads files as the hub's lines reach it -- twistd's log file, the
journal read as text, and syslog (``twistd --syslog``, with rsyslog's
``#011`` for a tab and without) -- and cuts the time stamps off as it
does in production: the failed logins' addresses must come out, once
each, and nothing from a traceback's lines (whose text a client chose)
or from another program's line.  Skipped where fail2ban is not
installed (``apt-get install fail2ban``; its service need not run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_fail2ban_doc import (
    FORGED,
    FORGED_LINES,
    documented_filter,
    failed_auth_with_forged_name,
    pop3_refused_line,
    smtp_auth_failed_line,
    syslog_messages,
)
from twisted.logger import formatEventAsClassicLogText

FAIL2BAN_REGEX = shutil.which("fail2ban-regex")

pytestmark = pytest.mark.skipif(FAIL2BAN_REGEX is None, reason="fail2ban is not installed")

SYSLOG_HEAD = "Dec  3 07:13:12 mail twisted[4321]: "
JOURNAL_HEAD = "Dec  3 07:13:12 mail twistd[4321]: "


def filter_conf(tmp_path: Path) -> Path:
    prefregex, failregexes = documented_filter()
    path = tmp_path / "txmailhub.conf"
    path.write_text("[Definition]\n"
                    f"prefregex = {prefregex}\n"
                    f"failregex = {failregexes[0]}\n"
                    + "".join(f"            {r}\n" for r in failregexes[1:]))
    return path


def banned(tmp_path: Path, name: str, lines: list[str]) -> list[str]:
    """The address of each failure fail2ban-regex finds in ``lines``."""
    log = tmp_path / name
    log.write_text("".join(line + "\n" for line in lines))
    done = subprocess.run([FAIL2BAN_REGEX, "-o", "ip", str(log), str(filter_conf(tmp_path))],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_fail2ban_finds_the_failed_logins_in_the_file_the_journal_and_syslog(
        log_events, tmp_path: Path) -> None:
    smtp_auth_failed_line(log_events, FORGED)
    pop3_refused_line(log_events, "joe", "USER")
    failed_auth_with_forged_name("".join(FORGED_LINES))
    file_lines = []
    for event in log_events:
        text = formatEventAsClassicLogText(event)
        if text:
            file_lines += text.rstrip("\n").split("\n")
    assert any(line.startswith("\t") and "198.51.100.66" in line for line in file_lines)
    messages = [m for _, m in syslog_messages(log_events)]
    assert any("\t" in m and "198.51.100.66" in m for m in messages)
    # another program's line in syslog, without the hub's [system]: what
    # Twisted's own syslog observer sent for the hub's lines
    other = [SYSLOG_HEAD + "[-] authentication failed for x from 198.51.100.66",
             "Dec  3 07:13:12 mail sshd[99]: authentication failed for x from 198.51.100.66"]
    want = ["192.0.2.1", "192.0.2.7"]
    assert banned(tmp_path, "file.log", file_lines) == want
    assert banned(tmp_path, "journal.log", [JOURNAL_HEAD + line for line in file_lines]) == want
    assert banned(tmp_path, "syslog.log", [SYSLOG_HEAD + m for m in messages] + other) == want
    escaped = [SYSLOG_HEAD + m.replace("\t", "#011") for m in messages]
    assert banned(tmp_path, "syslog-escaped.log", escaped) == want
