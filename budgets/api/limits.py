"""Limits: create, list, read, change (amount, mode) and delete the project's limits."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.timezone import now as utcnow
from ninja import Query, Router, Status

from ..models import Limit
from ..selectors.grants import states_with_rooms
from ..selectors.limits import LimitState
from ..selectors.teams import limit_of, limits_of
from ..services.limit_windows import limits_current
from ..services.limits import limit_create, limit_delete, limit_update
from .auth import request_actor, request_project
from .common import ERROR_STATUSES, MAX_OFFSET, MAX_PAGE
from .limit_requests import limit_detail
from .schemas import ErrorOut, LimitDetailOut, LimitIn, LimitOut, LimitPage, LimitPatchIn, LimitScope, Text

router = Router(tags=["limits"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


def _with_room(limit: Limit) -> LimitState:
    """The limit's state with what its subject's grants have left."""
    (state,) = states_with_rooms(limit.project_id, [LimitState.of_limit(limit)], utcnow())
    return state


def _out(request: HttpRequest, limit_id: int) -> LimitOut:
    project = request_project(request)
    (limit,) = limits_current(project, [limit_of(project, limit_id)])
    return LimitOut.model_validate(_with_room(limit))


@router.post("/limits", response={201: LimitOut, 409: ErrorOut, **ERRORS})
def create_limit(request: HttpRequest, payload: LimitIn):
    """Create a limit (201); the same scope, subject, model, unit and window again is 409 naming its id."""
    limit = limit_create(
        project=request_project(request), scope=payload.scope, subject=payload.subject, model=payload.model,
        unit=payload.unit, window=payload.window, amount=payload.limit, mode=payload.mode,
        thresholds=payload.thresholds, grace_percent=payload.grace_percent,
        rollover=payload.rollover.model_dump() if payload.rollover is not None else None, actor=request_actor(request),
    )
    return Status(201, LimitOut.model_validate(_with_room(limit)))


@router.get("/limits", response={200: LimitPage, **ERRORS})
def list_limits(request: HttpRequest, scope: LimitScope | None = None, subject: Text | None = None,
                limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=MAX_OFFSET)):
    """The project's limits (optionally of one scope and subject), ordered by scope, subject, model, unit, window."""
    project = request_project(request)
    limits = limits_of(project, scope=scope, subject=subject)
    page = limits_current(project, limits[offset: offset + limit])
    states = states_with_rooms(project.pk, [LimitState.of_limit(item) for item in page], utcnow())
    return LimitPage(items=[LimitOut.model_validate(state) for state in states],
                     total=limits.count(), limit=limit, offset=offset)


@router.get("/limits/{limit_id}", response={200: LimitDetailOut, **ERRORS})
def get_limit(request: HttpRequest, limit_id: int):
    """One limit with what is used and held in its current window, its effective limit (`limit`: the amount
    plus `raised`) and its active temporary raises (`increases`)."""
    return limit_detail(request, limit_id)


@router.patch("/limits/{limit_id}", response={200: LimitOut, **ERRORS})
def update_limit(request: HttpRequest, limit_id: int, payload: LimitPatchIn):
    """Change a limit's amount (`limit`), `mode` or `thresholds` (null: the project's list); another scope,
    subject, unit or window is a new limit. A new amount resolves the thresholds the usage is now under."""
    given = payload.model_fields_set
    rollover = payload.rollover.model_dump() if payload.rollover is not None else None
    limit_update(limit=limit_of(request_project(request), limit_id), amount=payload.limit, mode=payload.mode,
                 thresholds=payload.thresholds if "thresholds" in given else ...,
                 grace_percent=payload.grace_percent if "grace_percent" in given else ...,
                 rollover=rollover if "rollover" in given else ..., actor=request_actor(request))
    return _out(request, limit_id)


@router.delete("/limits/{limit_id}", response={204: None, **ERRORS})
def delete_limit(request: HttpRequest, limit_id: int):
    """Delete a limit (audited); its calls stay in the ledger."""
    limit_delete(limit=limit_of(request_project(request), limit_id), actor=request_actor(request))
    return Status(204, None)
