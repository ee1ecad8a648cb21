"""``tools/timespec.py``: times and durations as people write them, on a fixed clock and time zone."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from tools.timespec import parse_duration, parse_end, parse_time

from tests.builders import DURATIONS

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz=UTC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


NOW = at("2026-11-29 18:30")


@pytest.mark.parametrize(
    "text, want",
    [
        ("now", NOW),
        ("NOW", NOW),
        (" now ", NOW),
        ("+3h", NOW + 3 * 3600),
        ("+90m", NOW + 90 * 60),
        ("+2d", NOW + 2 * 86400),
        ("+1h30m", NOW + 5400),
        ("+45s", NOW + 45),
        ("22:00", at("2026-11-29 22:00")),  # still ahead today
        ("18:31", at("2026-11-29 18:31")),
        ("18:30", at("2026-11-30 18:30")),  # now exactly is not ahead: tomorrow
        ("06:00", at("2026-11-30 06:00")),  # passed today: tomorrow
        ("6:00", at("2026-11-30 06:00")),
        ("23:59:30", at("2026-11-29 23:59:30")),
        ("2026-11-30T22:00", at("2026-11-30 22:00")),
        ("2026-11-30 22:00", at("2026-11-30 22:00")),
        ("2026-12-01", at("2026-12-01 00:00")),
        ("2026-11-30T22:00+01:00", at("2026-11-30 21:00")),  # an explicit offset wins over the zone
        ("2026-11-30T22:00Z", at("2026-11-30 22:00")),
        (1_800_000_000, 1_800_000_000.0),  # a number is Unix seconds
        (1_800_000_000.5, 1_800_000_000.5),
    ],
)
def test_parse_time(text, want):
    assert parse_time(text, NOW, tz=UTC) == want


def test_clock_times_and_iso_times_are_read_in_the_given_zone():
    now = at("2026-11-29 18:30", BERLIN)
    assert parse_time("22:00", now, tz=BERLIN) == at("2026-11-29 22:00", BERLIN)
    assert parse_time("2026-11-30 22:00", now, tz=BERLIN) == at("2026-11-30 21:00", UTC)


def test_next_occurrence_across_a_daylight_saving_change():
    # Berlin moves its clocks back in the night of 2026-10-25: that day has 25 hours.
    now = at("2026-10-24 23:00", BERLIN)
    assert parse_time("22:00", now, tz=BERLIN) == at("2026-10-25 22:00", BERLIN)
    assert parse_time("22:00", now, tz=BERLIN) - now == 24 * 3600  # 23 h of clock time, one hour more


def test_without_a_zone_the_machines_local_time_is_used():
    local = datetime(2026, 11, 30, 22, 0).timestamp()
    assert parse_time("2026-11-30 22:00", NOW) == local


@pytest.mark.parametrize(
    "value, message",
    [
        ("tomorrow", "'tomorrow' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now"),
        ("", "'' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now"),
        ("25:00", "'25:00' is not a time of day; hours run 00-23, minutes and seconds 00-59"),
        ("12:60", "'12:60' is not a time of day; hours run 00-23, minutes and seconds 00-59"),
        ("+3", "'+3' is not a time from now: '3' is not a duration; write e.g. 2h, 90m, 30s or 1h30m"),
        ("+0h", "'+0h' is not a time from now: a duration must be longer than 0 s"),
        ("2026-13-01", "'2026-13-01' is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now"),
        (-5, "-5 is not a time in Unix seconds"),
        (float("nan"), "nan is not a time in Unix seconds"),
        (True, "True is not a time; write e.g. 22:00, 2026-11-30 22:00, +3h or now, or Unix seconds"),
    ],
)
def test_bad_times_say_what_to_write(value, message):
    with pytest.raises(ValueError) as info:
        parse_time(value, NOW, tz=UTC)
    assert str(info.value) == message


START = at("2026-11-29 22:00")


@pytest.mark.parametrize(
    "text, want",
    [
        ("+8h", at("2026-11-30 06:00")),  # relative to the start, not to now
        ("06:00", at("2026-11-30 06:00")),  # the first 06:00 after the start
        ("23:00", at("2026-11-29 23:00")),
        ("2026-12-01 08:00", at("2026-12-01 08:00")),
        (1_900_000_000, 1_900_000_000.0),
    ],
)
def test_parse_end_counts_from_the_start(text, want):
    assert parse_end(text, START, NOW, tz=UTC) == want


@pytest.mark.parametrize("text, want_s", DURATIONS)
def test_parse_duration(text, want_s):
    assert parse_duration(text) == want_s


@pytest.mark.parametrize("text", ["h", "2x", "1h 30m", "", "0s", "-1h", "+1h", "0", "1:60", "1:00:60", "1-24",
                                  "1-2:60", ":30", "1-", "1.5", "2:00:00h"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# Slurm's forms (sbatch --time): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
@pytest.mark.parametrize("text, want_s", [
    ("120", 7200), ("90", 5400), ("1", 60), ("90:30", 5430), ("2:00:00", 7200), ("0:30:00", 1800),
    ("36:00:00", 36 * 3600), ("1-12", 36 * 3600), ("1-12:30", 36 * 3600 + 1800), ("1-12:00:00", 36 * 3600),
    ("2-00:00:01", 2 * 86400 + 1), (" 2:00:00 ", 7200),
])
def test_parse_duration_takes_slurms_forms(text, want_s):
    assert parse_duration(text) == want_s


def test_a_bare_number_is_minutes_but_a_time_from_now_needs_its_unit():
    assert parse_duration("90") == 5400
    with pytest.raises(ValueError, match="'90' is not a duration; write e.g. 2h, 90m, 30s or 1h30m"):
        parse_duration("90", bare=False)
    with pytest.raises(ValueError, match="not a time from now"):
        parse_time("+90", NOW, tz=UTC)
    with pytest.raises(ValueError, match=r"write e.g. 2h, 90m, 30s, 1h30m, 2:00:00, 1-12:00:00 or 120 \(minutes\)"):
        parse_duration("soon")
