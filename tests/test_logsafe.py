"""txmailhub.logsafe: client text fit for one log line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from txmailhub.logsafe import loggable


def test_examples():
    assert loggable("joe@example.org") == "joe@example.org"
    assert loggable("café") == "café"
    assert loggable(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "\\xff\\xfe"
    assert loggable("eve\r\nforged line") == "eve\\x0d\\x0aforged line"
    assert loggable("bob\x1b[2J") == "bob\\x1b[2J"
    assert loggable("x" * 500) == "x" * 200


@given(st.binary(max_size=300))
def test_any_client_bytes_give_one_printable_line(raw):
    text = loggable(raw.decode("utf-8", "surrogateescape"))
    assert text.isprintable() and "\n" not in text and "\r" not in text
    text.encode("utf-8")  # no lone surrogates left: every formatter takes it


def test_log_failure_names_an_os_error_and_traces_a_bug():
    from twisted.logger import Logger, formatEvent
    from twisted.python.failure import Failure

    from txmailhub.logsafe import log_failure

    events = []
    logger = Logger(observer=events.append)
    log_failure(logger, Failure(OSError(28, "No space left on device")), "could not store {id}",
                id="M1")
    log_failure(logger, Failure(ValueError("a bug")), "could not store {id}", id="M2")
    assert formatEvent(events[0]) == "could not store M1: [Errno 28] No space left on device"
    assert "log_failure" not in events[0] and events[0]["log_level"].name == "error"
    assert formatEvent(events[1]) == "could not store M2"
    assert isinstance(events[1]["log_failure"].value, ValueError)
