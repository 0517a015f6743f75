"""The hub's log observer writes Twisted's classic lines, octet for octet."""

from __future__ import annotations

import io
import os
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import Logger, LogLevel, LogPublisher, formatEventAsClassicLogText, formatTime
from twisted.logger._format import timeFormatRFC3339
from twisted.python.failure import Failure

from txmailhub.logsafe import CUT, loggable
from txmailhub.logtext import LINE_LOG_MAX, ClassicTextObserver, capped


def twisted_line(event: dict, time_format: str | None = timeFormatRFC3339) -> str | None:
    """What ``textFileLogObserver`` writes for ``event``, but for what no
    line of the hub's holds raw (``unraw``)."""
    line = formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, time_format))
    return None if line is None else unraw(line)


def unraw(text: str) -> str:
    """``text`` with each control character but the tab and the line
    break, U+2028, U+2029 and each surrogate as ``loggable`` writes it: a
    NUL ends a journal record, CR and ESC act on a terminal, a surrogate
    has no UTF-8 form."""
    return "".join(loggable(c) if c not in "\t\n" and (
        unicodedata.category(c) in ("Cc", "Cs") or c in "\u2028\u2029") else c for c in text)


@pytest.fixture
def berlin() -> Iterator[None]:
    """Local time with daylight saving time (the offset changes twice a year)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "\n", "a\nb", "message x from <a@b> to c@d (12 octets): 250 2.0.0 ok", "{x}", "%s"])
times = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    # the last microsecond of a second, which rounds into the next
    st.integers(0, 4 * 10**9).map(lambda s: s + 0.9999996),
    st.integers(0, 4 * 10**9).map(float),
    # around the 2026 changes of the Berlin offset (29 March, 25 October, 01:00 UTC)
    st.sampled_from([1774746000.0, 1774745999.5, 1792890000.0, 1792889999.9]))
events = st.fixed_dictionaries(
    {"log_format": st.sampled_from(["{summary}", "{summary} {x}", "plain", "{x}"]),
     "summary": st.one_of(texts, st.integers(), st.none()),
     "x": texts},
    optional={"log_time": times,
              "log_namespace": st.sampled_from(["txmailhub.smtp.protocol", "a#b", ""]),
              "log_level": st.sampled_from(list(LogLevel.iterconstants())),
              "log_system": st.sampled_from(["-", "SMTPFactory,0,127.0.0.1"])})


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events, st.sampled_from([timeFormatRFC3339, None, "%H:%M"]))
def test_every_line_is_twisteds(berlin: None, event: dict, time_format: str | None) -> None:
    # (the fixture sets the zone once for every example: nothing else changes it)
    observer = ClassicTextObserver(io.StringIO(), time_format)
    # twice: the second made with the time stamp it kept
    assert observer.line(dict(event)) == twisted_line(event, time_format)
    assert observer.line(dict(event)) == twisted_line(event, time_format)


def test_the_stamp_follows_the_second_and_the_offset(berlin: None) -> None:
    observer = ClassicTextObserver(io.StringIO())
    event = {"log_format": "{summary}", "summary": "s", "log_namespace": "n",
             "log_level": LogLevel.info}
    # a second apart, and across the change to summer time (+0100 to +0200)
    for when in (1774745998.2, 1774745999.7, 1774746000.1, 1774746001.0, 1774746000.9999996):
        event["log_time"] = when
        assert observer.line(event) == twisted_line(event), when
    assert observer.line(event).startswith("2026-03-29T03:00:01+0200 [n#info] s")


def test_a_summary_over_lines_continues_with_a_tab() -> None:
    observer = ClassicTextObserver(io.StringIO())
    event = {"log_format": "{summary}", "summary": "one\ntwo\n", "log_namespace": "n",
             "log_level": LogLevel.warn, "log_time": 1774745998.2}
    assert observer.line(event) == twisted_line(event)
    assert observer.line(event).endswith(" [n#warn] one\n\ttwo\n\t\n")


def test_a_failure_is_written_with_its_traceback() -> None:
    out = io.StringIO()
    publisher = LogPublisher(ClassicTextObserver(out))
    log = Logger(namespace="t", observer=publisher)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("{summary}", Failure(), summary="it broke")
    text = out.getvalue()
    assert " [t#critical] it broke\n\tTraceback (most recent call last):" in text
    assert "ZeroDivisionError" in text and text.endswith("\n")


def test_the_lines_are_written_and_flushed_one_by_one() -> None:
    class File(io.StringIO):
        flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    out = File()
    publisher = LogPublisher(ClassicTextObserver(out))
    log = Logger(namespace="txmailhub.smtp.protocol", observer=publisher)
    log.info("{summary}", summary="one")
    log.info("{summary}", summary="")  # no text: no line, as Twisted writes none
    log.info("two {n}", n=2)
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "[txmailhub.smtp.protocol#info] one", "[txmailhub.smtp.protocol#info] two 2"]
    assert out.flushed == [lines[0] + "\n", out.getvalue()]


def _zone(name: str) -> None:
    os.environ["TZ"] = name
    time.tzset()


@pytest.fixture
def zones() -> Iterator[None]:
    old = os.environ.get("TZ")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _changes(start: int, end: int) -> list[int]:
    """The seconds in [start, end) at which the local offset changes."""
    found, step = [], 3600 * 6
    for t in range(start, end, step):
        if time.localtime(t).tm_gmtoff != time.localtime(t + step).tm_gmtoff:
            lo, hi = t, t + step
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if time.localtime(mid).tm_gmtoff == time.localtime(lo).tm_gmtoff:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
    return found


@pytest.mark.parametrize("zone", ["UTC", "EST5EDT", "Australia/Lord_Howe", "Pacific/Chatham",
                                  "America/St_Johns", "XXX-3:20:17"])
def test_the_stamp_is_twisteds_at_every_offset_change(zones: None, zone: str) -> None:
    # Lord Howe moves by 30 minutes, Chatham sits at +1245/+1345, the last
    # is an offset with seconds (%z: +032017)
    _zone(zone)
    observer = ClassicTextObserver(io.StringIO())
    event = {"log_format": "{summary}", "summary": "s\r\x00\u2028", "log_namespace": "n",
             "log_level": LogLevel.info}
    edges = [*_changes(1735689600, 1798761600), 0, 1, 2**31]  # 2025 and 2026
    for edge in edges:
        for d in (-1.0, -0.5, -1e-6, -5e-7, -4e-7, 0.0, 4e-7, 5e-7, 1e-6, 0.999999, 0.9999995):
            event["log_time"] = edge + d
            assert observer.line(event) == twisted_line(event), (zone, edge, d)


def test_a_format_finer_than_the_second_is_not_made_once_a_second() -> None:
    fine = "%Y-%m-%dT%H:%M:%S.%f%z"
    observer = ClassicTextObserver(io.StringIO(), fine)
    event = {"log_format": "{summary}", "summary": "s", "log_namespace": "n",
             "log_level": LogLevel.info}
    for when in (1774745999.25, 1774745999.75):
        event["log_time"] = when
        assert observer.line(event) == twisted_line(event, fine)


def test_a_flattened_event_is_written_as_flattened() -> None:
    # Twisted writes a flattened event's text from log_flattened (the
    # summary as it was when the event was flattened)
    from twisted.logger._flatten import flattenEvent

    event = {"log_format": "{summary}", "summary": "then", "log_namespace": "n",
             "log_level": LogLevel.info, "log_time": 1774745999.25}
    flattenEvent(event)
    event["summary"] = "now"
    assert ClassicTextObserver(io.StringIO()).line(event) == twisted_line(event)
    assert twisted_line(event).endswith("] then\n")


def test_a_log_time_twisted_refuses_is_refused() -> None:
    from decimal import Decimal

    event = {"log_format": "{summary}", "summary": "s", "log_namespace": "n",
             "log_level": LogLevel.info, "log_time": Decimal("1774745999.5")}
    with pytest.raises(TypeError):
        twisted_line(event)
    with pytest.raises(TypeError):
        ClassicTextObserver(io.StringIO()).line(event)


def test_a_thread_logging_meanwhile_gets_its_own_seconds_stamp() -> None:
    # another thread may run between any two of this one's steps: here,
    # right after the observer keeps anything for a new second, a line for
    # the second it kept before is made (as a worker thread's would be)
    event = {"log_format": "{summary}", "summary": "s", "log_namespace": "n",
             "log_level": LogLevel.info}
    other = dict(event, log_time=1774745998.5)
    meanwhile: list[str | None] = []

    class Interleaved(ClassicTextObserver):
        armed = False

        def __setattr__(self, name: str, value: object) -> None:
            object.__setattr__(self, name, value)
            if self.armed:
                object.__setattr__(self, "armed", False)
                meanwhile.append(self.line(other))

    observer = Interleaved(io.StringIO())
    assert observer.line(other) == twisted_line(other)
    object.__setattr__(observer, "armed", True)
    event["log_time"] = 1774745999.5
    assert observer.line(event) == twisted_line(event)
    assert meanwhile == [twisted_line(other)]


def test_the_stamp_is_made_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # the observer's reason to be: the common line's time stamp is formatted
    # once per second, not once per line as Twisted's formatter does
    import txmailhub.logtext

    made: list[float] = []

    def counted(when: float, time_format: str | None = timeFormatRFC3339) -> str:
        made.append(when)
        return formatTime(when, time_format)

    monkeypatch.setattr(txmailhub.logtext, "formatTime", counted)
    observer = ClassicTextObserver(io.StringIO())
    event = {"log_format": "{summary}", "summary": "s", "log_namespace": "n",
             "log_level": LogLevel.info}
    for when in (1774745998.1, 1774745998.5, 1774745998.9, 1774745999.0, 1774745999.3):
        event["log_time"] = when
        assert observer.line(event) == twisted_line(event)
    assert made == [1774745998, 1774745999]


def test_syslog_takes_an_events_own_priority_and_facility() -> None:
    # as twistd's syslog observer: ``syslogPriority`` replaces the one of
    # the level, ``syslogFacility`` is added to it
    import syslog

    from txmailhub.logtext import SyslogTextObserver

    sent: list = []
    observer = SyslogTextObserver("twisted", openlog=lambda *a: None,
                                  send=lambda *a: sent.append(a))
    base = {"log_format": "hi", "log_namespace": "txmailhub.relay", "log_time": 0.0}
    observer({**base, "log_level": LogLevel.error, "syslogPriority": syslog.LOG_NOTICE})
    observer({**base, "log_level": LogLevel.info, "syslogFacility": syslog.LOG_MAIL})
    observer({**base, "log_level": LogLevel.critical})
    assert sent == [(syslog.LOG_NOTICE, "[txmailhub.relay#error] hi"),
                    (syslog.LOG_INFO | syslog.LOG_MAIL, "[txmailhub.relay#info] hi"),
                    (syslog.LOG_ALERT, "[txmailhub.relay#critical] hi")]


@pytest.mark.parametrize("text", ["a\x00b", "a\rb", "a\x1b[2Jb", "a\x85b\u2028c", "a\udcffb"])
def test_no_line_holds_a_control_character_raw(text: str) -> None:
    # a traceback's exception text may be a client's (an application's
    # portal naming the user, docs/embedding.rst), which the hub cannot
    # escape: a NUL ended a journal record there (journald splits standard
    # output at a NUL as at a line break) and syslog(3)'s message, a
    # surrogate could not be written at all
    import syslog

    from txmailhub.logtext import SyslogTextObserver

    try:
        raise LookupError(f"no record for {text}")
    except LookupError:
        failure = Failure()
    out = io.StringIO()
    sent: list = []
    syslogged = SyslogTextObserver("twisted", openlog=lambda *a: None,
                                   send=lambda *a: sent.append(a))
    for event in ({"log_format": "{summary}", "summary": text, "log_namespace": "n",
                   "log_level": LogLevel.info, "log_time": 0.0},
                  {"log_format": "failed", "log_failure": failure, "log_namespace": "n",
                   "log_level": LogLevel.critical, "log_time": 0.0}):
        ClassicTextObserver(out)(dict(event))
        syslogged(dict(event))
    written = out.getvalue()
    written.encode("utf-8")  # (strict: no surrogate)
    assert unraw(written) == written and written.count(loggable(text)) == 2
    # (each line after the time stamp, whatever the zone)
    assert [line.split(" ", 1)[1] for line in written.split("\n")
            if line and not line.startswith("\t")] == [f"[n#info] {loggable(text)}",
                                                        "[n#critical] failed"]
    for _, message in sent:
        message.encode("utf-8")
        assert unraw(message) == message and "\n" not in message
    assert (syslog.LOG_INFO, f"[n#info] {loggable(text)}") in sent
    assert any(message.endswith(f"no record for {loggable(text)}") for _, message in sent)


# --- no line longer than LINE_LOG_MAX octets ----------------------------------

def _physical_lines(written: str) -> list[str]:
    return written.split("\n")[:-1] if written.endswith("\n") else written.split("\n")


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
       st.integers(min_value=len(CUT) + 4, max_value=60))
def test_a_line_is_cut_to_its_limit_in_octets_at_a_characters_end(text: str, limit: int) -> None:
    out = capped(text, limit)
    lines, cut = text.split("\n"), out.split("\n")
    assert len(cut) == len(lines)  # no line break made or taken away
    for line, short in zip(lines, cut):
        if len(line.encode()) <= limit:
            assert short == line
            continue
        assert short.endswith(CUT) and len(short.encode()) <= limit
        kept = short[:-len(CUT)]
        # as much of the line as fits, whole characters only
        assert line.startswith(kept)
        assert len((kept + line[len(kept)]).encode()) + len(CUT) > limit


def test_a_line_of_exactly_the_limit_is_whole_one_octet_more_is_cut() -> None:
    stamp = "2026-12-03T17:00:00+0000 [n#info] "
    for fill, more in (("a", "b"), ("\u00e9", "a"), ("\U0001d11e", "\u00e9")):
        room = LINE_LOG_MAX - len(stamp)
        text = fill * (room // len(fill.encode())) + "a" * (room % len(fill.encode()))
        assert len((stamp + text).encode()) == LINE_LOG_MAX
        assert capped(stamp + text) == stamp + text
        over = capped(stamp + text + more)
        assert over.endswith(CUT) and len(over.encode()) <= LINE_LOG_MAX
        assert len(over.encode()) > LINE_LOG_MAX - len(CUT) - 4


def test_the_line_limit_is_the_one_the_deployment_guide_gives() -> None:
    # docs/deployment.rst tells the admin (and a journald or syslog set-up
    # made to match) how long a line of the hub's may be
    text = " ".join((Path(__file__).parent.parent / "docs" / "deployment.rst").read_text().split())
    assert f"is over {LINE_LOG_MAX:,} octets ({LINE_LOG_MAX // 1024} KiB) of UTF-8" in text


@pytest.mark.parametrize("unit,count", [
    ("x", 40000), ("\x01", 40000), ("\u00e9", 40000), ("\U0001d11e", 40000),
    ("\udcff", 40000),
    # fewer characters than LINE_LOG_MAX, more octets: counted in octets
    ("\u00e9", 9000), ("\U0001d11e", 4500)])
def test_a_summary_over_the_limit_is_cut_and_marked(unit: str, count: int) -> None:
    # the per-message line's own path (no general formatter): the same
    # line as Twisted's up to the cut, then the mark and the line break
    observer = ClassicTextObserver(io.StringIO())
    event = {"log_format": "{summary}", "summary": "name " + unit * count,
             "log_namespace": "txmailhub.smtp", "log_level": LogLevel.info,
             "log_time": 1774745998.2}
    line = observer.line(dict(event))
    whole = twisted_line(event)
    assert line.endswith(CUT + "\n") and line.count("\n") == 1
    assert len(line[:-1].encode("utf-8")) <= LINE_LOG_MAX
    assert whole.startswith(line[:-len(CUT) - 1])
    assert len(line[:-1].encode()) > LINE_LOG_MAX - len(CUT) - 4  # as much as fits


def portal_error(name: str) -> dict:
    """The event of a failed login whose error names the user twice."""
    try:
        raise LookupError(f"no record for {name!r} (looked up as {name.lower()!r})")
    except LookupError:
        return {"log_format": "authentication error for {user}", "user": "joe",
                "log_failure": Failure(), "log_namespace": "txmailhub.smtp.protocol",
                "log_level": LogLevel.critical, "log_time": 1774745998.2}


def test_a_traceback_line_over_the_limit_is_cut_each_line_its_own() -> None:
    # an application's portal whose error names the client's user name
    # (docs/embedding.rst), twice: the exception's line of the traceback,
    # in the file as on standard output (the journal, which cuts a line
    # over 48 KiB into records of their own)
    event = portal_error("\x01" * 9000)
    assert len(twisted_line(event)) > 48 * 1024  # one line, as Twisted writes it
    out = io.StringIO()
    ClassicTextObserver(out)(event)
    written = out.getvalue()
    lines = _physical_lines(written)
    assert all(len(line.encode("utf-8")) <= LINE_LOG_MAX for line in lines)
    cut = [line for line in lines if line.endswith(CUT)]
    assert len(cut) == 1 and cut[0].startswith("\tbuiltins.LookupError: no record for '\\x01")
    # the lines around it are whole: its event's first, the frames
    assert lines[0].endswith(" [txmailhub.smtp.protocol#critical] authentication error for joe")
    assert lines[1] == "\tTraceback (most recent call last):"
    assert all(line.startswith("\t") for line in lines[1:])
    assert [line for line in lines if not line.endswith(CUT)] == [
        line for line in _physical_lines(twisted_line(event)) if len(line) < LINE_LOG_MAX]


def test_syslog_messages_are_cut_to_the_limit_too() -> None:
    from txmailhub.logtext import SyslogTextObserver

    sent: list = []
    observer = SyslogTextObserver("twisted", openlog=lambda *a: None,
                                  send=lambda *a: sent.append(a))
    observer({"log_format": "{summary}", "summary": "x" * 20000, "log_namespace": "n",
              "log_level": LogLevel.info, "log_time": 0.0})
    observer(portal_error("\x01" * 9000))
    assert sent[0][1] == capped("[n#info] " + "x" * 20000)
    assert sent[0][1].endswith(CUT) and len(sent[0][1].encode()) == LINE_LOG_MAX
    assert all(len(message.encode()) <= LINE_LOG_MAX for _, message in sent)
    assert sum(message.endswith(CUT) for _, message in sent) == 2


@pytest.mark.parametrize("unit", ["\udcff", "\ud83d", "a\udcc3\udca9"])
def test_a_line_with_a_surrogate_is_cut_too(unit: str) -> None:
    # ``capped`` is an application observer's too (docs/embedding.rst),
    # whose text may hold what a client sent decoded with surrogateescape
    # (a name that is not UTF-8, in a checker's error): it counts a
    # surrogate as the three octets of its UTF-8 form, never raising
    line = "no record for " + unit * 9000
    out = capped(line)
    assert out.endswith(CUT) and line.startswith(out[:-len(CUT)])
    assert len(out.encode("utf-8", "surrogatepass")) <= LINE_LOG_MAX
    assert len(out.encode("utf-8", "surrogatepass")) > LINE_LOG_MAX - len(CUT) - 4
    assert capped(line[:100]) == line[:100]
    assert capped(f"first\n{line}\nlast").split("\n") == ["first", out, "last"]


def test_a_path_read_by_an_ascii_file_system_encoding_is_written_as_utf8() -> None:
    out = io.StringIO()
    observer = ClassicTextObserver(out)
    path = "/srv/d\u00e9p\u00f4t".encode().decode("ascii", "surrogateescape")
    Logger(observer=observer).info("loaded from {path}", path=path)
    Logger(observer=observer).info("loaded from " + path + "\x00")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" loaded from /srv/d\u00e9p\u00f4t"), lines
    assert lines[1].endswith(" loaded from /srv/d\u00e9p\u00f4t\\x00"), lines
