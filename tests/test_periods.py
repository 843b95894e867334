"""Tests for budgets.domain.periods: calendar and N-day budget periods across time zones and DST."""

from __future__ import annotations

import ast
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgets.domain.periods import (
    DURATIONS,
    Period,
    duration_from_days,
    duration_to_days,
    next_period,
    period_containing,
    validate_timezone,
)

US = timedelta(microseconds=1)
CALENDAR_DURATIONS = ("daily", "weekly", "monthly", "yearly")

# Zones chosen for their awkward rules: half-hour and 45-minute offsets, a 30-minute DST
# shift (Lord Howe), DST that skips local midnight (Havana, Beirut, Sao Paulo, Santiago,
# Cairo) or repeats it (Havana), and a fall-back that re-enters the previous date after
# midnight already passed (Goose Bay until 2010).
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Havana",
    "Asia/Beirut",
    "America/Sao_Paulo",
    "America/Santiago",
    "Africa/Cairo",
    "America/Goose_Bay",
)
MIN_YEAR, MAX_YEAR = 1990, 2100
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(zone: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold)


def wall(instant: datetime, zone: str) -> datetime:
    return instant.astimezone(ZoneInfo(zone)).replace(tzinfo=None, fold=0)


@cache
def transitions_in_year(zone: str, year: int) -> tuple[datetime, ...]:
    """UTC instants (to the microsecond) where ``zone`` changes its UTC offset during ``year``."""
    tz = ZoneInfo(zone)
    found = []
    day = utc(year, 1, 1)
    while day.year == year:
        after = day + timedelta(days=1)
        if day.astimezone(tz).utcoffset() != after.astimezone(tz).utcoffset():
            lo, hi = day, after
            while hi - lo > US:
                mid = lo + (hi - lo) // 2
                if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        day = after
    return tuple(found)


@st.composite
def zoned_instants(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant; half the time within 36 hours (often 3) of one of its DST changes."""
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        changes = transitions_in_year(zone, draw(st.integers(MIN_YEAR, MAX_YEAR - 1)))
        if changes:
            change = draw(st.sampled_from(changes))
            hours = draw(st.sampled_from([3, 36]))
            shift = draw(st.integers(-hours * 3600 * 10**6, hours * 3600 * 10**6))
            return zone, change + timedelta(microseconds=shift)
    instant = draw(
        st.datetimes(
            min_value=datetime(MIN_YEAR, 1, 1),
            max_value=datetime(MAX_YEAR, 1, 1),
            timezones=st.just(UTC),
        )
    )
    return zone, instant


def first_day_of_period(duration: str, day: date) -> bool:
    return {
        "daily": True,
        "weekly": day.weekday() == 0,
        "monthly": day.day == 1,
        "yearly": (day.month, day.day) == (1, 1),
    }[duration]


def first_day_of_next_period(duration: str, day: date) -> date:
    if duration == "daily":
        return day + timedelta(days=1)
    if duration == "weekly":
        return day + timedelta(days=7)
    if duration == "monthly":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return date(day.year + 1, 1, 1)


def assert_starts_at_local_midnight(boundary: datetime, zone: str) -> date:
    """The boundary is local midnight, or the first instant after a DST gap that skipped it; returns its date."""
    day = wall(boundary, zone).date()
    midnight = datetime.combine(day, time())
    # One microsecond earlier is still the previous day, so this is the first instant of ``day``
    # (and, for a repeated midnight, the earlier of the two).
    assert wall(boundary - US, zone) < midnight
    return day


def assert_is_utc(period: Period) -> None:
    assert period.start.tzinfo is UTC
    assert period.next_reset is None or period.next_reset.tzinfo is UTC


# --- properties: calendar durations ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("duration", CALENDAR_DURATIONS)
@PROPERTY_SETTINGS
@given(case=zoned_instants())
def test_calendar_periods_contain_the_instant_and_tile_time(
    duration: str, case: tuple[str, datetime]
) -> None:
    zone, instant = case
    period = period_containing(duration, zone, instant)
    assert_is_utc(period)
    assert period.start <= instant < period.next_reset
    assert period_containing(duration, zone, period.start) == period
    assert period_containing(duration, zone, period.next_reset - US) == period
    assert (
        period_containing(duration, zone, period.next_reset).start == period.next_reset
    )
    assert (
        period_containing(duration, zone, period.start - US).next_reset == period.start
    )


@pytest.mark.slow
@pytest.mark.parametrize("duration", CALENDAR_DURATIONS)
@PROPERTY_SETTINGS
@given(case=zoned_instants())
def test_calendar_periods_start_at_local_midnight_on_the_right_day(
    duration: str, case: tuple[str, datetime]
) -> None:
    zone, instant = case
    period = period_containing(duration, zone, instant)
    first_day = assert_starts_at_local_midnight(period.start, zone)
    assert first_day_of_period(duration, first_day)
    next_first_day = assert_starts_at_local_midnight(period.next_reset, zone)
    assert next_first_day == first_day_of_next_period(duration, first_day)


@pytest.mark.slow
@pytest.mark.parametrize("duration", CALENDAR_DURATIONS)
@PROPERTY_SETTINGS
@given(case=zoned_instants())
def test_next_period_starts_where_the_current_one_resets(
    duration: str, case: tuple[str, datetime]
) -> None:
    zone, instant = case
    period = period_containing(duration, zone, instant)
    following = next_period(duration, zone, period.start)
    assert following == period_containing(duration, zone, period.next_reset)
    assert following.start == period.next_reset


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(case=zoned_instants(), offset_minutes=st.integers(-14 * 60, 14 * 60))
def test_the_period_does_not_depend_on_the_zone_the_instant_is_written_in(
    case: tuple[str, datetime], offset_minutes: int
) -> None:
    zone, instant = case
    rewritten = instant.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert period_containing("daily", zone, rewritten) == period_containing(
        "daily", zone, instant
    )


# --- properties: N-day durations --------------------------------------------------------------


@st.composite
def day_count_cases(draw: st.DrawFn) -> tuple[str, datetime, int, datetime]:
    """Zone, anchor, N and an instant within five periods of the anchor, often near a boundary."""
    zone, anchor = draw(zoned_instants())
    days = draw(st.integers(1, 400))
    if draw(st.booleans()):
        periods_away = draw(st.floats(-5, 5, allow_nan=False))
        return zone, anchor, days, anchor + timedelta(days=days * periods_away)
    # Near k*N days after the anchor, where DST folds and gaps can move a boundary.
    k = draw(st.integers(-5, 5))
    offset = draw(st.integers(-3 * 3600 * 10**6, 3 * 3600 * 10**6))
    return zone, anchor, days, anchor + timedelta(days=days * k, microseconds=offset)


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(case=day_count_cases())
def test_day_count_periods_tile_time_from_the_anchor(
    case: tuple[str, datetime, int, datetime],
) -> None:
    zone, anchor, days, instant = case
    period = period_containing("days", zone, instant, days=days, anchor=anchor)
    assert_is_utc(period)
    assert period.start <= instant < period.next_reset

    def same(at: datetime) -> Period:
        return period_containing("days", zone, at, days=days, anchor=anchor)

    assert same(period.start) == period
    assert same(period.next_reset - US) == period
    assert same(period.next_reset).start == period.next_reset
    assert same(period.start - US).next_reset == period.start


@pytest.mark.slow
@PROPERTY_SETTINGS
@given(case=day_count_cases())
def test_day_count_periods_start_k_times_n_local_days_after_the_anchor(
    case: tuple[str, datetime, int, datetime],
) -> None:
    zone, anchor, days, instant = case
    period = period_containing("days", zone, instant, days=days, anchor=anchor)
    anchor_wall = wall(anchor, zone)
    start_wall = wall(period.start, zone)
    k = (start_wall - anchor_wall) // timedelta(days=days)
    expected_wall = anchor_wall + k * timedelta(days=days)
    if k == 0:
        assert period.start == anchor
    elif start_wall == expected_wall:
        # A repeated wall time resolves to its first occurrence.
        assert period.start == expected_wall.replace(
            tzinfo=ZoneInfo(zone), fold=0
        ).astimezone(UTC)
    else:
        # Only a DST gap may move the start, and then to the first instant after the gap.
        assert wall(period.start - US, zone) < expected_wall < start_wall
    assert -6 <= k <= 5


# --- concrete calendar cases --------------------------------------------------------------------


def test_a_month_starts_on_the_first_in_local_time() -> None:
    period = period_containing("monthly", "Europe/Berlin", utc(2026, 1, 31, 12))
    assert period == Period(utc(2025, 12, 31, 23), utc(2026, 1, 31, 23))


@pytest.mark.parametrize(
    ("year", "february_days"),
    [(2026, 28), (2028, 29)],
)
def test_january_31_rolls_to_february_first_then_march_first(
    year: int, february_days: int
) -> None:
    january = period_containing("monthly", "UTC", utc(year, 1, 31, 23, 59, 59, 999999))
    assert january == Period(utc(year, 1, 1), utc(year, 2, 1))
    february = next_period("monthly", "UTC", january.start)
    assert february == Period(utc(year, 2, 1), utc(year, 3, 1))
    assert february.next_reset - february.start == timedelta(days=february_days)
    assert (
        period_containing("monthly", "UTC", utc(year, 2, february_days, 12)) == february
    )


def test_december_rolls_over_into_january_of_the_next_year() -> None:
    december = period_containing(
        "monthly", "America/New_York", local("America/New_York", 2026, 12, 31, 23, 59)
    )
    assert december == Period(utc(2026, 12, 1, 5), utc(2027, 1, 1, 5))
    assert next_period("monthly", "America/New_York", december.start).next_reset == utc(
        2027, 2, 1, 5
    )
    year = period_containing(
        "yearly", "America/New_York", local("America/New_York", 2026, 12, 31, 23, 59)
    )
    assert year == Period(utc(2026, 1, 1, 5), utc(2027, 1, 1, 5))


def test_a_week_starts_on_monday_at_local_midnight() -> None:
    sunday_night = local("Europe/Berlin", 2026, 3, 22, 23, 59)
    week = period_containing("weekly", "Europe/Berlin", sunday_night)
    assert week == Period(utc(2026, 3, 15, 23), utc(2026, 3, 22, 23))
    monday_midnight = local("Europe/Berlin", 2026, 3, 23)
    following = period_containing("weekly", "Europe/Berlin", monday_midnight)
    assert following.start == monday_midnight == week.next_reset
    # That week contains the spring-forward Sunday, so it is an hour short.
    assert following.next_reset == utc(2026, 3, 29, 22)
    assert following.next_reset - following.start == timedelta(days=7, hours=-1)


@pytest.mark.parametrize(
    ("zone", "instant", "start", "next_reset", "hours"),
    [
        (
            "Europe/Berlin",
            utc(2026, 3, 29, 12),
            utc(2026, 3, 28, 23),
            utc(2026, 3, 29, 22),
            23,
        ),
        (
            "Europe/Berlin",
            utc(2026, 10, 25, 12),
            utc(2026, 10, 24, 22),
            utc(2026, 10, 25, 23),
            25,
        ),
        (
            "America/New_York",
            utc(2026, 3, 8, 12),
            utc(2026, 3, 8, 5),
            utc(2026, 3, 9, 4),
            23,
        ),
        (
            "America/New_York",
            utc(2026, 11, 1, 12),
            utc(2026, 11, 1, 4),
            utc(2026, 11, 2, 5),
            25,
        ),
    ],
    ids=[
        "berlin-spring-forward",
        "berlin-fall-back",
        "new-york-spring-forward",
        "new-york-fall-back",
    ],
)
def test_a_dst_change_day_is_23_or_25_hours_long(
    zone: str, instant: datetime, start: datetime, next_reset: datetime, hours: int
) -> None:
    period = period_containing("daily", zone, instant)
    assert period == Period(start, next_reset)
    assert period.next_reset - period.start == timedelta(hours=hours)


def test_a_daily_period_in_kolkata_starts_at_1830_utc_the_previous_day() -> None:
    period = period_containing("daily", "Asia/Kolkata", utc(2026, 5, 10, 10))
    assert period == Period(utc(2026, 5, 9, 18, 30), utc(2026, 5, 10, 18, 30))


def test_a_skipped_midnight_starts_the_day_at_the_end_of_the_gap() -> None:
    # Havana springs forward from 00:00 to 01:00, so 8 March 2026 begins at 01:00 CDT.
    period = period_containing(
        "daily", "America/Havana", local("America/Havana", 2026, 3, 8, 12)
    )
    assert period == Period(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert wall(period.start, "America/Havana") == datetime(2026, 3, 8, 1)
    assert (
        period_containing("daily", "America/Havana", period.start - US).next_reset
        == period.start
    )
    # Beirut does the same on the last Sunday of March.
    beirut = period_containing("daily", "Asia/Beirut", utc(2026, 3, 29, 12))
    assert beirut == Period(utc(2026, 3, 28, 22), utc(2026, 3, 29, 21))


def test_a_repeated_midnight_starts_the_day_at_its_first_occurrence() -> None:
    # Havana falls back from 01:00 to 00:00 on 1 November 2026.
    second_midnight = local("America/Havana", 2026, 11, 1, 0, 30, fold=1)
    day = period_containing("daily", "America/Havana", second_midnight)
    assert day == Period(utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    month = period_containing("monthly", "America/Havana", second_midnight)
    assert month.start == utc(2026, 11, 1, 4)


def test_an_hour_repeated_from_the_previous_evening_belongs_to_the_new_day() -> None:
    # Goose Bay fell back at 00:01 ADT to 23:01 AST on the previous date (28 Oct 1990), so
    # Saturday 23:30 AST came after Sunday had already started at 00:00 ADT.
    repeated_saturday_evening = utc(1990, 10, 28, 3, 30)
    assert wall(repeated_saturday_evening, "America/Goose_Bay") == datetime(
        1990, 10, 27, 23, 30
    )
    period = period_containing("daily", "America/Goose_Bay", repeated_saturday_evening)
    assert period == Period(utc(1990, 10, 28, 3), utc(1990, 10, 29, 4))


def test_periods_are_returned_in_utc_whatever_zone_the_instant_uses() -> None:
    instant = datetime(2026, 6, 15, 9, tzinfo=timezone(timedelta(hours=-7)))
    period = period_containing("daily", ZoneInfo("Europe/Berlin"), instant)
    assert_is_utc(period)
    assert period == Period(utc(2026, 6, 14, 22), utc(2026, 6, 15, 22))


# --- concrete N-day cases -----------------------------------------------------------------------


def test_day_count_periods_keep_the_anchor_wall_clock_time_across_dst() -> None:
    anchor = local("Europe/Berlin", 2026, 3, 1, 9)
    first = period_containing("days", "Europe/Berlin", anchor, days=30, anchor=anchor)
    assert first == Period(utc(2026, 3, 1, 8), utc(2026, 3, 31, 7))
    assert wall(first.next_reset, "Europe/Berlin") == datetime(2026, 3, 31, 9)
    assert next_period("days", "Europe/Berlin", first.start, days=30) == Period(
        utc(2026, 3, 31, 7), utc(2026, 4, 30, 7)
    )


def test_an_instant_before_the_anchor_falls_in_an_earlier_day_count_period() -> None:
    anchor = local("Europe/Berlin", 2026, 3, 1, 9)
    period = period_containing(
        "days", "Europe/Berlin", utc(2026, 2, 15), days=30, anchor=anchor
    )
    assert period == Period(utc(2026, 1, 30, 8), anchor)
    much_earlier = period_containing(
        "days", "Europe/Berlin", utc(2025, 3, 1), days=30, anchor=anchor
    )
    assert much_earlier.start <= utc(2025, 3, 1) < much_earlier.next_reset
    assert (anchor - much_earlier.start) % timedelta(hours=1) == timedelta(0)


def test_a_day_count_start_inside_a_dst_gap_moves_to_the_end_of_the_gap() -> None:
    anchor = local(
        "Europe/Berlin", 2026, 3, 28, 2, 30
    )  # 02:30 does not exist on 29 March
    period = period_containing(
        "days", "Europe/Berlin", utc(2026, 3, 29, 12), days=1, anchor=anchor
    )
    assert period == Period(utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30))
    # Passing the anchor keeps later periods at 02:30; without it they drift to 03:00.
    assert next_period(
        "days", "Europe/Berlin", period.start, days=1, anchor=anchor
    ).start == utc(2026, 3, 30, 0, 30)
    assert next_period("days", "Europe/Berlin", period.start, days=1).start == utc(
        2026, 3, 30, 1
    )


def test_a_repeated_hour_after_a_day_count_boundary_belongs_to_the_new_period() -> None:
    anchor = local("Europe/Berlin", 2026, 10, 18, 2, 30)
    # 02:15 the second time round (CET) comes after the boundary at 02:30 CEST.
    repeated = local("Europe/Berlin", 2026, 10, 25, 2, 15, fold=1)
    period = period_containing("days", "Europe/Berlin", repeated, days=7, anchor=anchor)
    assert period == Period(utc(2026, 10, 25, 0, 30), utc(2026, 11, 1, 1, 30))


def test_the_anchor_itself_starts_period_zero_even_in_a_repeated_hour() -> None:
    anchor = local("Europe/Berlin", 2026, 10, 25, 2, 30, fold=1)
    period = period_containing("days", "Europe/Berlin", anchor, days=7, anchor=anchor)
    # Compare in UTC: Python never reports an ambiguous local time equal to another zone's.
    assert period.start == anchor.astimezone(UTC) == utc(2026, 10, 25, 1, 30)
    assert period.next_reset == utc(2026, 11, 1, 1, 30)
    # 02:45 the first time round is after the anchor's wall time but before the anchor.
    earlier = local("Europe/Berlin", 2026, 10, 25, 2, 45, fold=0)
    before = period_containing("days", "Europe/Berlin", earlier, days=7, anchor=anchor)
    assert before == Period(utc(2026, 10, 18, 0, 30), utc(2026, 10, 25, 1, 30))


# --- "none" ---------------------------------------------------------------------------------------


def test_a_budget_without_duration_never_resets() -> None:
    anchor = utc(2026, 1, 1)
    assert period_containing(
        "none", "Europe/Berlin", utc(2026, 5, 5), anchor=anchor
    ) == Period(anchor, None)
    assert period_containing("none", "UTC", utc(2026, 5, 5)) == Period(
        utc(2026, 5, 5), None
    )
    assert next_period("none", "UTC", anchor) == Period(anchor, None)


# --- validation -----------------------------------------------------------------------------------


def test_a_naive_instant_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing("daily", "UTC", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(
            "days", "UTC", utc(2026, 1, 1), days=3, anchor=datetime(2026, 1, 1)
        )


def test_an_unknown_duration_is_rejected_naming_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="none, daily, weekly, monthly, yearly, days"):
        period_containing("fortnightly", "UTC", utc(2026, 1, 1))
    with pytest.raises(ValueError, match="expected one of"):
        duration_to_days("hourly", None)


@pytest.mark.parametrize("days", [None, 0, -3, True, 2.5, 3.0, "3"])
def test_day_count_periods_need_a_positive_whole_number_of_days(days: object) -> None:
    with pytest.raises(ValueError, match="days"):
        period_containing(
            "days", "UTC", utc(2026, 1, 1), days=days, anchor=utc(2025, 1, 1)
        )  # type: ignore[arg-type]


def test_day_count_periods_need_an_anchor() -> None:
    with pytest.raises(ValueError, match="anchor"):
        period_containing("days", "UTC", utc(2026, 1, 1), days=3)


@pytest.mark.parametrize(
    "name", ["UTC", "Europe/Berlin", "America/Havana", "Asia/Kolkata"]
)
def test_a_known_time_zone_is_accepted_unchanged(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "",
        "utc",
        " UTC",
        "Europe",
        "localtime",
        "../etc/passwd",
        "/etc/localtime",
        None,
    ],
)
def test_an_unknown_time_zone_is_rejected(name: object) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        validate_timezone(name)  # type: ignore[arg-type]


def test_an_unknown_time_zone_name_is_rejected_when_computing_a_period() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        period_containing("daily", "Europe/Atlantis", utc(2026, 1, 1))


# --- LiteLLM day counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (1, ("daily", None)),
        (7, ("weekly", None)),
        (28, ("monthly", None)),
        (30, ("monthly", None)),
        (31, ("monthly", None)),
        (365, ("yearly", None)),
        (366, ("yearly", None)),
        (2, ("days", 2)),
        (14, ("days", 14)),
        (29, ("days", 29)),
        (90, ("days", 90)),
        (30.0, ("monthly", None)),
        (45.0, ("days", 45)),
    ],
)
def test_litellm_day_counts_map_to_durations(
    days: float, expected: tuple[str, int | None]
) -> None:
    assert duration_from_days(days) == expected


@pytest.mark.parametrize(
    "days", [0, -1, -7, 1.5, 0.5, math.nan, math.inf, True, "7", None, 10**9]
)
def test_a_day_count_that_is_not_a_positive_whole_number_is_rejected(
    days: object,
) -> None:
    with pytest.raises(ValueError):
        duration_from_days(days)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duration", "days", "expected"),
    [
        ("none", None, None),
        ("daily", None, 1),
        ("weekly", None, 7),
        ("monthly", None, 28),
        ("yearly", None, 365),
        ("days", 10, 10),
    ],
)
def test_durations_map_back_to_litellm_day_counts(
    duration: str, days: int | None, expected: int | None
) -> None:
    assert duration_to_days(duration, days) == expected


@pytest.mark.parametrize("days", [None, 0, -1])
def test_a_day_count_duration_without_valid_days_has_no_litellm_day_count(
    days: int | None,
) -> None:
    with pytest.raises(ValueError):
        duration_to_days("days", days)


@given(days=st.integers(1, 3000))
def test_day_counts_survive_a_round_trip_through_litellm(days: int) -> None:
    duration, count = duration_from_days(days)
    assert duration in DURATIONS
    assert duration_from_days(duration_to_days(duration, count)) == (duration, count)  # type: ignore[arg-type]
    if duration == "days":
        assert duration_to_days(duration, count) == days


# --- purity ---------------------------------------------------------------------------------------


def test_the_periods_module_does_not_import_django() -> None:
    source = Path(__file__).resolve().parent.parent / "budgets" / "domain" / "periods.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name == "django" or name.startswith("django.") for name in imported)
