"""What every service shares: validation of the caller's input."""

from __future__ import annotations

import unicodedata
from typing import Any

from .. import periods
from ..errors import InvalidInput
from ..models import Duration

USER_ID_MAX = 255


def validate_user_id(user_id: Any) -> str:
    """The one rule for user ids, so that every id can be addressed in a URL (API and console).

    Refused: blank, over 255 characters, control characters (newline, tab, NUL, ...; they do not
    survive a URL or a log line), and "." or ".." path segments (clients and browsers resolve
    "a/../b" to "b", so such a user could be created but never opened, edited or deleted).
    """
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("user must be a non-empty string")
    if len(user_id) > USER_ID_MAX:
        raise InvalidInput(f"user must be at most {USER_ID_MAX} characters")
    if any(unicodedata.category(char) == "Cc" or char in "\u2028\u2029" for char in user_id):
        raise InvalidInput("user must not contain control characters (newline, tab, NUL, ...)")
    if any(segment in (".", "..") for segment in user_id.split("/")):
        raise InvalidInput('user must not contain "." or ".." path segments (e.g. "a/../b")')
    return user_id


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
