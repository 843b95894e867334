"""What every service shares: validation of the caller's input."""

from __future__ import annotations

from typing import Any

from .. import periods
from ..errors import InvalidInput
from ..models import Duration


def validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("user must be a non-empty string")
    if len(user_id) > 255:
        raise InvalidInput("user must be at most 255 characters")
    return user_id


def validate_duration(duration: Any, duration_days: Any = None) -> tuple[str, int | None]:
    """Normalise a duration: None/"none"/"daily"/.../"days" (with duration_days)."""
    if duration is None or duration == "":
        duration = Duration.NONE
    if duration not in Duration.values:
        raise InvalidInput(f"duration must be one of: none, daily, weekly, monthly, yearly (got {duration!r})")
    if duration == Duration.DAYS:
        if isinstance(duration_days, bool) or not isinstance(duration_days, int) or duration_days < 1:
            raise InvalidInput("duration_days must be a whole number of days, at least 1")
        return duration, duration_days
    return duration, None


def validate_timezone(name: Any) -> str:
    try:
        return periods.validate_timezone(name)
    except (ValueError, TypeError):
        raise InvalidInput(f"unknown time zone: {name!r}") from None
