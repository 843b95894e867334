"""What every service shares: validation of the caller's input."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..base.errors import InvalidInput, Unprocessable
from ..base.validation import USER_ID_MAX, validate_user_id
from ..domain import periods
from ..models import Duration

__all__ = ["USER_ID_MAX", "validate_duration", "validate_timezone", "validate_user_id"]


def validate_duration(duration: Any, duration_days: Any = None) -> tuple[str, int | None]:
    """Normalise a duration: None/"none"/"daily"/.../"days" (with duration_days)."""
    if duration is None or duration == "":
        duration = Duration.NONE
    if duration not in Duration.values:
        raise InvalidInput(f"duration must be one of: none, daily, weekly, monthly, yearly (got {duration!r})")
    if duration == Duration.DAYS:
        if (isinstance(duration_days, bool) or not isinstance(duration_days, int)
                or not 1 <= duration_days <= periods.MAX_DAYS):
            raise InvalidInput(f"duration_days must be a whole number of days between 1 and {periods.MAX_DAYS}")
        return duration, duration_days
    return duration, None


def validate_timezone(name: Any) -> str:
    try:
        return periods.validate_timezone(name)
    except (ValueError, TypeError):
        raise InvalidInput(f"unknown time zone: {name!r}") from None


def validate_future_instant(value: Any, at: datetime, *, field: str, within: timedelta, too_far: str) -> datetime:
    """An aware datetime after `at` and at most `within` after it (`too_far`: what the error says past that)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{field} must be a date and time with its UTC offset")
    if value <= at:
        raise Unprocessable(f"{field} must be in the future (it is now {at.isoformat()})")
    if value - at > within:
        raise Unprocessable(too_far)
    return value
