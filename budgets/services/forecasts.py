"""Forecast alerts: once per window, when a limit's usage forecast at its window's end first crosses
the limit (domain.forecast: linear from the window's start).

Checked by a beat task every five minutes (`limits_forecast_check`), not on each record: the
record's hot path stays as it is, and a forecast that moves by minutes does not need a check per
call. Only limits with a window that ends, something used and room left are read; a limit already
used up has had its 100 % threshold instead. The unique constraint on (limit, kind, threshold,
window, cycle) makes it once per window, whatever the number of sweeps running.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.db.models import F, OuterRef
from django.db.models.expressions import Exists
from django.utils.timezone import now as utcnow

from ..models import Alert, Limit, Project
from ..selectors.limits import LimitState
from .alerts import alerts_insert, limit_alert

FORECAST_BATCH = 1000


def limits_forecast_check(*, at: datetime | None = None) -> int:
    """Raise a `forecast` alert for each limit whose forecast is now at or over its amount and that
    had none in this window; returns how many were raised."""
    at = at or utcnow()
    alerted = Alert.objects.filter(source_limit=OuterRef("pk"), kind=Alert.Kind.FORECAST,
                                   period_start=OuterRef("window_start"))
    candidates = (
        Limit.objects.filter(resets_at__gt=at, window_start__lte=at, amount__gt=0, used__gt=0, used__lt=F("amount"),
                             project__deleting_since__isnull=True)
        .exclude(window=Limit.Window.LIFETIME)
        .filter(~Exists(alerted))
        .order_by("project_id", "pk")
    )
    over: dict[int, list[tuple[LimitState, datetime]]] = defaultdict(list)
    for limit in candidates.iterator(chunk_size=FORECAST_BATCH):
        state = LimitState.of_limit(limit)
        forecast = state.forecast(at)
        if forecast is not None and forecast >= state.limit:
            over[limit.project_id].append((state, limit.window_start))
    raised = 0
    for project in Project.objects.filter(pk__in=over):
        raised += len(alerts_insert(project, [
            limit_alert(project, state, kind=Alert.Kind.FORECAST, threshold=100, window_start=window_start,
                        details={"forecast": str(state.forecast(at))})
            for state, window_start in over[project.pk]]))
    return raised
