"""Budget period arithmetic: which reset period an instant falls in, and when it ends.

Pure Python (no Django imports) so models, tasks, the LiteLLM sync and tests can all share it.
"""

from __future__ import annotations

import math
import operator
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, available_timezones

__all__ = [
    "DURATIONS",
    "LIMIT_WINDOWS",
    "MAX_DAYS",
    "Period",
    "calendar_days",
    "duration_from_days",
    "duration_to_days",
    "hour_containing",
    "next_period",
    "period_containing",
    "validate_timezone",
    "window_containing",
]

DURATIONS = ("none", "daily", "weekly", "monthly", "yearly", "days")

# Upper bound for a "days" duration (about 100 years): larger values would overflow
# datetime arithmetic later, so reject them up front with a ValueError instead.
MAX_DAYS = 36_525


# LiteLLM's hosted client only knows a number of days; these are the counts that mean a
# calendar duration (it uses 28/30/31 for "a month" and 365/366 for "a year").
_FROM_DAYS = {
    1: "daily",
    7: "weekly",
    28: "monthly",
    30: "monthly",
    31: "monthly",
    365: "yearly",
    366: "yearly",
}
# What we write back to LiteLLM's record for a calendar duration.
_TO_DAYS = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}


class Period(NamedTuple):
    """One budget period, ``start`` inclusive to ``next_reset`` exclusive (None: never resets).

    Both are aware datetimes in UTC.
    """

    start: datetime
    next_reset: datetime | None


def validate_timezone(name: str) -> str:
    """Return ``name`` unchanged if it is a known IANA time zone; raise ValueError otherwise."""
    if not isinstance(name, str) or name not in _known_zones():
        raise ValueError(f"unknown time zone: {name!r}")
    return name


def duration_from_days(days: float) -> tuple[str, int | None]:
    """Map a LiteLLM hosted-client duration in days to ``(duration, days)``.

    1/7/28/30/31/365/366 become calendar durations; any other whole N becomes ``("days", N)``.
    """
    count = _whole_days(days)
    if count in _FROM_DAYS:
        return _FROM_DAYS[count], None
    return "days", count


def calendar_days() -> dict[str, int]:
    """The day count each calendar duration is stored as in LiteLLM's record (duration_to_days)."""
    return dict(_TO_DAYS)


def duration_to_days(duration: str, days: int | None) -> int | None:
    """Return the day count to store in LiteLLM's record for a duration (None for "none")."""
    _check_duration(duration)
    if duration == "none":
        return None
    if duration == "days":
        return _check_days(days)
    return _TO_DAYS[duration]


def period_containing(
    duration: str,
    tz: str | ZoneInfo,
    instant: datetime,
    *,
    days: int | None = None,
    anchor: datetime | None = None,
) -> Period:
    """Return the period of ``duration`` (aligned in time zone ``tz``) that contains ``instant``.

    "days" needs ``days`` and ``anchor`` (its first period start); "none" starts at ``anchor`` or ``instant``.
    """
    _check_duration(duration)
    zone = _zone(tz)
    _check_aware(instant, "instant")
    if anchor is not None:
        _check_aware(anchor, "anchor")
    try:
        # Work in UTC: aware datetimes in an ambiguous local hour never compare equal to other zones.
        instant = instant.astimezone(UTC)
        anchor = anchor.astimezone(UTC) if anchor is not None else None
        if duration == "none":
            return Period(anchor if anchor is not None else instant, None)
        if duration == "days":
            step = _check_days(days)
            if anchor is None:
                raise ValueError(
                    'duration "days" needs an anchor (the first period start)'
                )
            return _days_period(zone, instant, step, anchor)
        return _calendar_period(duration, zone, instant)
    except OverflowError as exc:
        # Near datetime.min/max a boundary is not representable; report it as bad input.
        raise ValueError(
            f"{instant.isoformat()} is outside the supported date range"
        ) from exc


def next_period(
    duration: str,
    tz: str | ZoneInfo,
    period_start: datetime,
    *,
    days: int | None = None,
    anchor: datetime | None = None,
) -> Period:
    """Return the period right after the one containing ``period_start``.

    For "days" the anchor defaults to ``period_start``; for "none" the single endless period is returned.
    """
    # Passing the original anchor keeps "days" periods on its wall-clock time even when
    # period_start was pushed later by a DST gap.
    base = anchor if anchor is not None else period_start
    current = period_containing(duration, tz, period_start, days=days, anchor=base)
    if current.next_reset is None:
        return current
    return period_containing(duration, tz, current.next_reset, days=days, anchor=base)


def hour_containing(tz: str | ZoneInfo, instant: datetime) -> Period:
    """The local clock hour of time zone ``tz`` that contains ``instant`` (one real hour long).

    Taken from the local wall clock's minutes, so zones with half-hour offsets get their own
    hours; across a DST change each hour is still 60 minutes (the repeated hour is two hours).
    """
    zone = _zone(tz)
    _check_aware(instant, "instant")
    instant = instant.astimezone(UTC)
    wall = _wall(instant, zone)
    start = instant - timedelta(minutes=wall.minute, seconds=wall.second, microseconds=wall.microsecond)
    return Period(start, start + timedelta(hours=1))


# A limit's windows, and the calendar durations they are (hour and lifetime are their own).
LIMIT_WINDOWS = ("hour", "day", "week", "month", "year", "lifetime")
_WINDOW_DURATION = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def window_containing(window: str, tz: str | ZoneInfo, instant: datetime) -> Period:
    """The limit window of kind ``window`` containing ``instant``, aligned in ``tz``; "lifetime"
    starts at ``instant`` and never resets."""
    if window == "lifetime":
        _check_aware(instant, "instant")
        return Period(instant.astimezone(UTC), None)
    if window == "hour":
        return hour_containing(tz, instant)
    if window not in _WINDOW_DURATION:
        raise ValueError(f"unknown limit window {window!r}; expected one of: {', '.join(LIMIT_WINDOWS)}")
    return period_containing(_WINDOW_DURATION[window], tz, instant)


# --- helpers -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    # "localtime" is whatever the host is configured with, so it is not a stable budget setting.
    return frozenset(available_timezones() - {"localtime"})


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, str):
        return ZoneInfo(validate_timezone(tz))
    # Only tzinfo types that implement PEP 495 folds correctly; pytz-style zones would not.
    if isinstance(tz, (ZoneInfo, timezone)):
        return tz
    raise TypeError(f"tz must be a time zone name or ZoneInfo, not {type(tz).__name__}")


def _check_duration(duration: str) -> None:
    if duration not in DURATIONS:
        raise ValueError(
            f"unknown duration {duration!r}; expected one of: {', '.join(DURATIONS)}"
        )


def _check_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware, got naive {value.isoformat()}"
        )


def _check_days(days: int | None) -> int:
    # Bad day counts come from user input, so every kind of bad value is a ValueError.
    count = _as_int(days)
    if count is None or isinstance(days, bool) or not 1 <= count <= MAX_DAYS:
        raise ValueError(
            f'duration "days" needs a whole number of days between 1 and {MAX_DAYS}, got {days!r}'
        )
    return count


def _whole_days(days: float) -> int:
    # LiteLLM may send JSON numbers such as 30.0; accept those but not 1.5, NaN or inf.
    if isinstance(days, float) and math.isfinite(days) and days.is_integer():
        count: int | None = int(days)
    else:
        count = _as_int(days)
    # bool is an int subclass, but True days is certainly a caller bug.
    if count is None or isinstance(days, bool) or not 1 <= count <= MAX_DAYS:
        raise ValueError(
            f"duration in days must be a whole number from 1 to {MAX_DAYS}, got {days!r}"
        )
    return count


def _as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer type (int, numpy ints...), else None."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    """Local wall-clock time of ``instant`` in ``zone``, as a naive datetime."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _localize(zone: tzinfo, wall: datetime) -> datetime:
    """First UTC instant whose local time in ``zone`` is at or after ``wall``.

    Ambiguous wall times give the earlier instant; times in a DST gap give the end of the gap.
    """
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(earlier, zone) == wall:
        return earlier
    # ``wall`` is skipped by a DST gap. With fold=1 it maps through the post-gap offset to an
    # instant before the transition, with fold=0 through the pre-gap offset to one after it;
    # the transition itself is the answer, found by bisection (to the microsecond, because
    # "days" anchors can carry microseconds).
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = earlier
    if not (lo < hi and _wall(lo, zone) < wall):
        return hi  # not a plain gap (cannot happen with tzdata); fall back to the later mapping
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) // 2
        if _wall(mid, zone) < wall:
            lo = mid
        else:
            hi = mid
    return hi


def _local_midnight(zone: tzinfo, day: date) -> datetime:
    return _localize(zone, datetime.combine(day, time()))


def _floor_date(duration: str, day: date) -> date:
    """First local date of the calendar period containing ``day``."""
    if duration == "daily":
        return day
    if duration == "weekly":
        return day - timedelta(days=day.weekday())
    if duration == "monthly":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _shift_date(duration: str, first: date, n: int) -> date:
    """First local date of the calendar period ``n`` periods after the one starting on ``first``."""
    if duration == "daily":
        return first + timedelta(days=n)
    if duration == "weekly":
        return first + timedelta(weeks=n)
    if duration == "monthly":
        months = first.year * 12 + first.month - 1 + n
        return date(months // 12, months % 12 + 1, 1)
    return date(first.year + n, 1, 1)


def _calendar_period(duration: str, zone: tzinfo, instant: datetime) -> Period:
    first = _floor_date(duration, instant.astimezone(zone).date())
    start = _local_midnight(zone, first)
    end = _local_midnight(zone, _shift_date(duration, first, 1))
    # The local date alone can be one period behind where a DST fall-back crosses midnight
    # (the repeated hour belongs to the previous date but comes after the new day began,
    # e.g. America/Goose_Bay until 2010), so step until the boundaries bracket the instant.
    # Stepping back is only a safety net for tzinfo rules tzdata does not currently have.
    while instant < start:
        first = _shift_date(duration, first, -1)
        start, end = _local_midnight(zone, first), start
    while instant >= end:
        first = _shift_date(duration, first, 1)
        start, end = end, _local_midnight(zone, _shift_date(duration, first, 1))
    return Period(start, end)


def _days_period(
    zone: tzinfo, instant: datetime, days: int, anchor: datetime
) -> Period:
    anchor_wall = _wall(anchor, zone)
    step = timedelta(days=days)

    def start_of(k: int) -> datetime:
        # Period 0 is the anchor itself, even if its wall time is ambiguous (fold=1).
        if k == 0:
            return anchor
        return _localize(zone, anchor_wall + k * step)

    # Wall-clock difference gives k exactly except within an hour or so of a boundary on DST
    # days; the loops correct that. Floor division makes k negative before the anchor.
    k = (_wall(instant, zone) - anchor_wall) // step
    start, end = start_of(k), start_of(k + 1)
    while instant < start:
        k -= 1
        start, end = start_of(k), start
    while instant >= end:
        k += 1
        start, end = end, start_of(k + 1)
    return Period(start, end)
