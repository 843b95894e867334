"""Alerts: the budget thresholds crossed in the project."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router

from ..selectors import console
from .auth import request_project
from .common import ERROR_STATUSES, MAX_OFFSET, MAX_PAGE
from .schemas import AlertOut, AlertPage, ErrorOut

router = Router(tags=["alerts"])


@router.get("/alerts", response={200: AlertPage, **dict.fromkeys(ERROR_STATUSES, ErrorOut)})
def list_alerts(request: HttpRequest, limit: int = Query(50, ge=1, le=MAX_PAGE),
                offset: int = Query(0, ge=0, le=MAX_OFFSET)):
    """Budget thresholds crossed in this project, newest first."""
    alerts, total = console.alerts_slice(request_project(request), offset=offset, limit=limit)
    return {"items": [AlertOut.model_validate(alert) for alert in alerts], "total": total, "limit": limit,
            "offset": offset}
