"""Costs: record one call's cost (idempotent), read the ledger of a user or the project."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Header, Query, Router

from ..base.errors import BudgetExceeded, UnknownUser
from ..domain.codec import dumps
from ..models import CostEvent
from ..selectors.budgets import has_budget_or_costs, ledger_slice
from ..services.costs import cost_record
from ..services.fallbacks import fallback_for
from . import requests
from .auth import request_project
from .common import ERROR_STATUSES, MAX_PAGE, aware, raw_json, recorded_limits, with_budget_headers
from .schemas import (
    CostIn,
    CostOut,
    ErrorOut,
    EventOut,
    EventPage,
    IdempotencyKey,
    Identifier,
    Text,
    Timestamp,
    UserId,
    cost_out,
)

router = Router(tags=["costs"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


@router.post("/users/{path:user}/costs", response={201: CostOut, 402: ErrorOut, 409: ErrorOut, **ERRORS})
def record_cost(
    request: HttpRequest, user: UserId, payload: CostIn, enforce: bool = False,
    idempotency_key: IdempotencyKey | None = Header(None, alias="Idempotency-Key"),  # noqa: B008
):
    """Record a call's cost; 201 with the cost and the user's new state.

    With `Idempotency-Key`, a retry (same key, same user and body) answers exactly as the
    first request did (201, same body) with `Idempotent-Replayed: true`, recording nothing.
    With `?enforce=true`, a call that any applicable hard limit (the user's budget, the project's cap,
    the team's, the key's, the tags' and the model's limits) has no room for is refused (402; `fallback`
    names the first of the project's fallback models the call's tokens would fit under).
    `X-Budget-Remaining`/`X-Budget-Reset` say what is left of the tightest dollar limit.
    """
    project = request_project(request)
    usage, cost = requests.usage_and_cost(payload)
    fingerprint = requests.fingerprint(user, payload) if idempotency_key is not None else ""

    api_key = request.api_key  # type: ignore[attr-defined]
    try:
        recorded = cost_record(
            project=project, user_id=user, usage=usage, cost=cost, source=CostEvent.Source.API,
            idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce, tags=payload.tags or (),
            api_key=api_key,
        )
    except BudgetExceeded as refused:  # advice, after the refusal's transaction: error.fallback
        refused.fallback = fallback_for(project=project, user_id=user, usage=usage, key_name=api_key.name,
                                        tags=payload.tags or ())
        raise
    # A retry's `recorded` holds the figures the first answer was built from: the same bytes again.
    response = raw_json(dumps(cost_out(recorded).model_dump()), 201, replayed=not recorded.created)
    return with_budget_headers(response, recorded_limits(recorded))


def _ledger(request: HttpRequest, **filters) -> dict:
    page, next_cursor = ledger_slice(request_project(request), **filters)
    return {"items": [EventOut.model_validate(event) for event in page], "next_cursor": next_cursor}


@router.get("/users/{path:user}/costs", response={200: EventPage, **ERRORS})
def list_user_costs(
    request: HttpRequest, user: UserId, model: Text | None = None, since: Timestamp | None = None,
    until: Timestamp | None = None, cursor: Text | None = None, limit: int = Query(50, ge=1, le=MAX_PAGE),
    tag: Identifier | None = None,
):
    """The user's ledger events, newest first (also after the budget was deleted); `tag`: those that carry it."""
    project = request_project(request)
    if not has_budget_or_costs(project, user):
        raise UnknownUser(f"user {user!r} has no budget and no costs in project {project.name!r}")
    return _ledger(request, user_id=user, model=model, since=aware(since), until=aware(until), cursor=cursor,
                   limit=limit, tag=tag)


@router.get("/costs", response={200: EventPage, **ERRORS})
def list_costs(
    request: HttpRequest, user: UserId | None = None, model: Text | None = None, since: Timestamp | None = None,
    until: Timestamp | None = None, cursor: Text | None = None, limit: int = Query(50, ge=1, le=MAX_PAGE),
    tag: Identifier | None = None,
):
    """The project's ledger, newest first; `since` inclusive, `until` exclusive (ISO 8601); `tag`: the events
    that carry it."""
    return _ledger(request, user_id=user, model=model, since=aware(since), until=aware(until), cursor=cursor,
                   limit=limit, tag=tag)
