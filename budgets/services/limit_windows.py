# Minimal version from limitsapi; the engine branch's version replaces it at merge.
"""Limits' windows: which window an instant falls in, and the one lazy reset of limits whose window ended."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Q
from django.utils.timezone import now as utcnow

from ..domain import periods
from ..models import Limit, Project

# A limit's window as a budget's duration (periods' calendar arithmetic); "hour" is computed here.
DURATION_OF_WINDOW = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly", "lifetime": "none"}


def window_of(window: str, project: Project, at: datetime | None = None) -> periods.Period:
    """The window of kind `window` (calendar-aligned in the project's time zone) that contains `at`."""
    at = at or utcnow()
    if window == Limit.Window.HOUR:
        # Zones with a half-hour offset have their hours on the half hour: floor in local time.
        local = at.astimezone(ZoneInfo(project.timezone))
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return periods.Period(start, start + timedelta(hours=1))
    if window == Limit.Window.LIFETIME:
        return periods.Period(at.astimezone(UTC), None)
    return periods.period_containing(DURATION_OF_WINDOW[window], project.timezone, at)


def limits_current(project: Project, limits: Iterable[Limit], at: datetime | None = None) -> list[Limit]:
    """The limits, each in its current window: one whose window ended starts the new one with used 0.

    The reset is a conditional update (only while resets_at is still the old one), so two readers
    resetting at once reset once; the row is read again after it.
    """
    at = at or utcnow()
    current = list(limits)
    for index, limit in enumerate(current):
        if limit.resets_at is None or limit.resets_at > at:
            continue
        window = window_of(limit.window, project, at)
        Limit.objects.filter(pk=limit.pk).filter(Q(resets_at=limit.resets_at)).update(
            used=0, window_start=window.start, resets_at=window.next_reset, updated_at=at)
        current[index] = Limit.objects.get(pk=limit.pk)
    return current
