"""Times and durations as people write them: ``22:00``, ``2026-11-30 22:00``, ``+3h``, ``now``, ``90m``,
and Slurm's durations (``2:00:00``, ``1-12:00:00``, ``120`` minutes).

Pure: the current time is passed in, and a wall-clock time is read in the given time zone (this
machine's when none is given), so the same text means the same instant in tests and in the service.
A number is already a time (Unix seconds); front doors pass numbers through unchanged.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, time, timedelta, tzinfo

_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
# Slurm's forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds.
_SLURM = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
TIME_FORMS = "22:00, 2026-11-30 22:00, +3h or now"
DURATION_FORMS = "2h, 90m, 30s, 1h30m, 2:00:00, 1-12:00:00 or 120 (minutes)"


def parse_duration(text: str, *, bare: bool = True) -> float:
    """Seconds of a duration: with units (``2h``, ``90m``, ``30s``, ``1h30m``, ``1.5h``, ``2d``) or in
    Slurm's forms (``120`` minutes, ``90:30`` minutes and seconds, ``2:00:00``, ``1-12``, ``1-12:30``,
    ``1-12:00:00``). ``bare``: False refuses Slurm's forms (a time from now, ``+90``, needs its unit)."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    elif bare and (slurm := _slurm_seconds(text)) is not None:
        seconds = slurm
    else:
        forms = DURATION_FORMS if bare else "2h, 90m, 30s or 1h30m"
        raise ValueError(f"{text!r} is not a duration; write e.g. {forms}")
    if seconds <= 0:
        raise ValueError("a duration must be longer than 0 s")
    return seconds


def _slurm_seconds(text: str) -> float | None:
    """Seconds of a duration in Slurm's forms (see ``parse_duration``), or None if it is not one."""
    match = _SLURM.fullmatch(text)
    if match is None:
        return None
    days, first, second, third = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            return None
        return int(days) * 86_400 + hours * 3600 + minutes * 60 + seconds
    if third is not None:  # hours:minutes:seconds
        if int(second) > 59 or int(third) > 59:
            return None
        return int(first) * 3600 + int(second) * 60 + int(third)
    if second is not None:  # minutes:seconds
        return None if int(second) > 59 else int(first) * 60 + int(second)
    return int(first) * 60  # minutes


def parse_time(value: str | float, now: float, *, tz: tzinfo | None = None) -> float:
    """Unix seconds of ``value``: a number as it is; ``now``; ``+3h`` from now; ``22:00`` at its next
    occurrence (today if still ahead, else tomorrow); an ISO date and time (``2026-11-30 22:00``)."""
    return _resolve(value, now, base=now, tz=tz)


def parse_end(value: str | float, start: float, now: float, *, tz: tzinfo | None = None) -> float:
    """The end of a window that begins at ``start``: ``+8h`` is 8 hours after ``start`` and ``06:00``
    the first 06:00 after it; any other form means what it means to ``parse_time``."""
    return _resolve(value, now, base=start, tz=tz)


def _resolve(value: str | float, now: float, *, base: float, tz: tzinfo | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a time; write e.g. {TIME_FORMS}, or Unix seconds")
    if not isinstance(value, str):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value!r} is not a time in Unix seconds")
        return float(value)
    text = value.strip()
    if text.lower() == "now":
        return now
    if text.startswith("+"):
        try:
            return base + parse_duration(text[1:], bare=False)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a time from now: {exc}") from None
    clock = _CLOCK.fullmatch(text)
    if clock is not None:
        hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"{text!r} is not a time of day; hours run 00-23, minutes and seconds 00-59")
        return _next_occurrence(time(hour, minute, second), base, tz)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time; write e.g. {TIME_FORMS}") from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=tz)).timestamp()


def _next_occurrence(at: time, after: float, tz: tzinfo | None) -> float:
    """The first time of day ``at`` later than ``after``: that day's if still ahead, else the next day's."""
    day = datetime.fromtimestamp(after, tz).date()
    today = datetime.combine(day, at, tzinfo=tz).timestamp()  # naive (tz None) reads as local time
    return today if today > after else datetime.combine(day + timedelta(days=1), at, tzinfo=tz).timestamp()


def local_time(t: float) -> str:
    """A time as people on this machine read it: ``2026-11-29 22:00``."""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
