"""The retry schedule: pure arithmetic."""

from __future__ import annotations

import pytest

from txmailhub.config import RelaySettings
from txmailhub.relay import schedule


def test_default_matches_config_default():
    assert RelaySettings().retry_schedule == schedule.DEFAULT_SCHEDULE


@pytest.mark.parametrize(
    "failures, expected",
    [(0, 0), (1, 60), (2, 300), (3, 900), (4, 1800), (5, 3600), (6, 7200), (7, 14400),
     (8, 14400), (50, 14400)],
)
def test_delay_after(failures, expected):
    assert schedule.delay_after(failures) == expected


def test_custom_schedule_last_step_repeats():
    assert schedule.delay_after(1, (10, 20)) == 10
    assert schedule.delay_after(2, (10, 20)) == 20
    assert schedule.delay_after(9, (10, 20)) == 20


def test_empty_schedule_is_an_error():
    with pytest.raises(ValueError):
        schedule.delay_after(1, ())


def test_next_attempt_grows():
    created = 1000.0
    times = [schedule.next_attempt(created, n, created, 5 * 86400) - created for n in (1, 2, 3)]
    assert times == [60, 300, 900]


def test_next_attempt_capped_at_deadline():
    created = 0.0
    lifetime = 3600
    # at 3500s after a 7th failure the 4h step would overshoot: try at the deadline
    assert schedule.next_attempt(3500.0, 7, created, lifetime) == 3600.0
    # past the deadline: no capping (the runner bounces instead)
    assert schedule.next_attempt(4000.0, 7, created, lifetime) == 4000.0 + 14400


def test_expired():
    assert not schedule.expired(99.0, 0.0, 100)
    assert schedule.expired(100.0, 0.0, 100)


def test_warn_delayed_once_and_off():
    assert not schedule.warn_delayed(100.0, 0.0, 4 * 3600, False)
    assert schedule.warn_delayed(4 * 3600.0, 0.0, 4 * 3600, False)
    assert not schedule.warn_delayed(5 * 3600.0, 0.0, 4 * 3600, True)
    assert not schedule.warn_delayed(10**9, 0.0, 0, False)


@pytest.mark.parametrize(
    "secs, text", [(5, "5s"), (60, "1m"), (90, "1m 30s"), (3600, "1h"), (5400, "1h 30m"),
                   (86400, "1d"), (90000, "1d 1h"), (-3, "0s")],
)
def test_describe_delay(secs, text):
    assert schedule.describe_delay(secs) == text


def test_utc_text_is_iso_8601_on_a_24_hour_clock():
    assert schedule.utc_text(0) == "1970-01-01T00:00:00Z"
    assert schedule.utc_text(13 * 3600 + 62) == "1970-01-01T13:01:02Z"


@pytest.mark.parametrize("failures, written, expected", [
    # the step the failure set, from a clock a day ahead: that step from now
    (1, 86400 + 60, 60), (2, 86400 + 300, 300),
    # past the schedule's end the last step repeats
    (7, 86400 + 14400, 14400), (40, 86400 + 14400, 14400),
    # no failure yet (a new entry, a pass that only owed a notice): a minute
    (0, 86400, 60),
    # within the step (the give-up age, a delay notice's time): as written
    (7, 100, 100), (3, 900, 900), (3, 0, 0), (3, -5000, -5000),
])
def test_due_by_never_later_than_the_step_from_now(failures, written, expected):
    assert schedule.due_by(1000.0 + written, failures, 1000.0) == 1000.0 + expected


def test_due_by_bounds_by_the_given_schedule_and_least_wait():
    # the runner and ``queue list`` pass the configured schedule; its
    # step, not the default's, bounds a retry time from a clock ahead
    now = 1_000_000.0
    far = now + 86400
    assert schedule.due_by(far, 1, now, (120, 600)) == now + 120
    assert schedule.due_by(far, 2, now, (120, 600)) == now + 600
    # a step shorter than ``least`` is held to it
    assert schedule.due_by(far, 1, now, (10,), least=300) == now + 300
    assert schedule.due_by(now + 5, 1, now, (10,), least=300) == now + 5


def test_utc_text_of_a_time_no_date_can_be_is_its_number():
    # a hand-edited queue record: each way datetime refuses a time (not a
    # number, past the platform's time_t, past its gmtime, past year 9999)
    # is shown as the number, never a traceback
    for ts, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"),
                      (1e300, "1e+300"), (1e17, "1e+17"), (-1e17, "-1e+17"),
                      (1e12, "1000000000000.0"), (10**20, "1e+20")):
        assert schedule.utc_text(ts) == shown, ts


def test_is_date_from_the_year_1_to_the_year_9999():
    # recording.mend_times mends a record's time that is no date: the
    # finite ones past either end of what datetime holds too (1e300)
    first, last = -62135596800.0, 253402300799.0  # 0001-01-01, 9999-12-31T23:59:59
    assert schedule.utc_text(last) == "9999-12-31T23:59:59Z"
    for ts in (first, last, last + 0.5, 0.0, 1_800_000_000.0, 1_800_000_000.0 + 3 * 86400):
        assert schedule.is_date(ts), ts
    for ts in (float("nan"), float("inf"), float("-inf"), 1e300, -1e300, last + 1, first - 1):
        assert not schedule.is_date(ts), ts


@pytest.mark.parametrize("ts, text", [
    (-62135596800.0, "0001-01-01T00:00:00Z"),
    (-59011459200.0, "0100-01-01T00:00:00Z"),
    (0.0, "1970-01-01T00:00:00Z"),
    (253402300799.0, "9999-12-31T23:59:59Z"),
])
def test_utc_text_is_iso_8601_with_a_four_digit_year(ts: float, text: str) -> None:
    # strftime's %Y gives "1" for the year 1 on glibc: not ISO 8601, and a
    # field a script reading `queue list` cannot take for a date
    assert schedule.utc_text(ts) == text
