"""The native JSON API under /api/v1/ (django-ninja).

Thin endpoints: authenticate with the project's API key (budgets.auth), validate with
budgets.schemas, call one service or selector, answer JSON (money as exact numbers,
errors in one shape: budgets.api_support). Documented in docs/api.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from ninja import Header, Query, Status

from . import api_costs, selectors, services
from .api_json import (
    CONTENT_TYPE,
    ExactJSONRenderer,
    StrictJSONParser,
    decimal_text,
    dumps,
)
from .api_support import (
    BudgetAPI,
    LocalSwagger,
    docs_asset_response,
    install_exception_handlers,
)
from .auth import UNAUTHORIZED_MESSAGE, actor_of, api_key_auth
from .errors import InvalidInput, UnknownUser
from .models import Alert, CostEvent, ModelSpend, Project, UserBudget
from .schemas import (
    AlertPage,
    BudgetIn,
    CheckIn,
    CheckOut,
    CostIn,
    CostOut,
    ErrorOut,
    EventPage,
    MessagesIn,
    ProjectedCostOut,
    QuoteIn,
    QuoteOut,
    UserOut,
    UserPage,
)

api = BudgetAPI(
    title="Budget Manager API",
    version="1",
    description="Per-user LLM budgets, a cost ledger and budget checks. See docs/api.md.",
    urls_namespace="api",
    auth=api_key_auth,
    docs=LocalSwagger(),
    renderer=ExactJSONRenderer(),
    parser=StrictJSONParser(),
)
install_exception_handlers(api, UNAUTHORIZED_MESSAGE)

ERRORS: dict[int, Any] = dict.fromkeys((400, 401, 404), ErrorOut)
MAX_PAGE = 500
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


# --- helpers ------------------------------------------------------------------------------------


def _project(request: HttpRequest) -> Project:
    return request.auth.project  # type: ignore[attr-defined]


def _actor(request: HttpRequest) -> str:
    return actor_of(request.auth)  # type: ignore[attr-defined]


def _budget(request: HttpRequest, user: str) -> UserBudget:
    """The user's budget in the key's project (lazy reset first); 404 for anyone else's."""
    return services.budget_get(project=_project(request), user_id=user)


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def user_out(budget: UserBudget, project: Project, costs: dict[str, Decimal] | None = None) -> dict[str, Any]:
    scope = services.exceeded_scope(budget, project)
    return {
        "user": budget.user_id,
        "total_budget": budget.total_budget,
        "duration": budget.duration,
        "duration_days": budget.duration_days,
        "current_cost": budget.current_spend,
        "model_cost": selectors.model_costs(budget) if costs is None else costs,
        "remaining": max(budget.remaining, Decimal(0)),
        "budget_exceeded": scope is not None,
        "exceeded_scope": scope,
        "period_start": budget.period_start,
        "next_reset_at": budget.next_reset_at,
        "created_at": budget.created_at,
        "updated_at": budget.updated_at,
    }


def event_out(event: CostEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "user": event.user_id,
        "model": event.model,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cached_tokens": event.cached_tokens,
        "cache_creation_tokens": event.cache_creation_tokens,
        "cost": event.cost,
        "source": event.source,
        "idempotency_key": event.idempotency_key,
        "created_at": event.created_at,
    }


def _encode_cursor(event: CostEvent) -> str:
    raw = json.dumps([event.created_at.isoformat(), event.pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, pk = json.loads(raw)
        at = datetime.fromisoformat(at)
        if at.tzinfo is None or isinstance(pk, bool) or not isinstance(pk, int) or not 0 < pk < 2**63:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API gave out") from None
    return at, pk


def _event_page(request: HttpRequest, *, user: str | None, model: str | None, since: datetime | None,
                until: datetime | None, cursor: str | None, limit: int) -> dict[str, Any]:
    events = selectors.cost_events(_project(request), user_id=user, model=model, since=_aware(since),
                                   until=_aware(until))
    if cursor:
        at, pk = _decode_cursor(cursor)
        events = events.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
    page = list(events[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {"items": [event_out(e) for e in page], "next_cursor": _encode_cursor(page[-1]) if more else None}


# --- users --------------------------------------------------------------------------------------


@api.get("/users", response={200: UserPage, **ERRORS}, tags=["users"])
def list_users(request: HttpRequest, limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)):
    """The project's users with their budgets and spend, ordered by user id."""
    project = _project(request)
    services.reset_due_budgets(project=project)  # answers are right even while no worker runs
    budgets = UserBudget.objects.filter(project=project).order_by("user_id")
    page = list(budgets[offset: offset + limit])
    costs: dict[int, dict[str, Decimal]] = {budget.pk: {} for budget in page}
    for budget_id, model, spend in ModelSpend.objects.filter(budget_id__in=costs).values_list(
        "budget_id", "model", "spend"
    ):
        costs[budget_id][model] = spend
    return {
        "items": [user_out(budget, project, costs[budget.pk]) for budget in page],
        "total": budgets.count(),
        "limit": limit,
        "offset": offset,
    }


@api.put("/users/{path:user}/budget", response={200: UserOut, 201: UserOut, **ERRORS}, tags=["users"])
def set_budget(request: HttpRequest, user: str, payload: BudgetIn):
    """Create (201) or replace (200) the user's budget; replacing keeps this period's spend."""
    project = _project(request)
    budget, created = services.budget_set(
        project=project, user_id=user, total_budget=payload.total_budget, duration=payload.duration,
        duration_days=payload.duration_days, actor=_actor(request),
    )
    return Status(201 if created else 200, user_out(budget, project))


@api.post("/users/{path:user}/costs", response={201: CostOut, 402: ErrorOut, 409: ErrorOut, **ERRORS},
          tags=["costs"])
def record_cost(
    request: HttpRequest, user: str, payload: CostIn, enforce: bool = False,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
):
    """Record a call's cost; 201 with the cost and the user's new state.

    With `Idempotency-Key`, a retry (same key, same user and body) answers exactly as the
    first request did (201, same body) with `Idempotent-Replayed: true`, recording nothing.
    With `?enforce=true`, a call the user's or the project's budget has no room for is refused (402).
    """
    project = _project(request)
    usage, cost = api_costs.usage_and_cost(payload)
    fingerprint = api_costs.fingerprint(user, payload) if idempotency_key is not None else ""
    with transaction.atomic():
        recorded = services.cost_record(
            project=project, user_id=user, usage=usage, cost=cost, source=CostEvent.Source.API,
            idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce,
        )
        if not recorded.created and recorded.event.response:
            first = recorded.event.response
            return _json(first["body"], first["status"], replayed=True)
        body = dumps({
            "cost": recorded.event.cost,
            "event": event_out(recorded.event),
            "user": user_out(recorded.budget, project),
            "budget_exceeded": recorded.budget_exceeded,
            "exceeded_scope": recorded.exceeded,
        })
        if recorded.created and idempotency_key is not None:
            services.set_event_response(recorded.event, {"status": 201, "body": body})
    return _json(body, 201, replayed=not recorded.created)


def _json(body: str, status: int, *, replayed: bool = False) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=CONTENT_TYPE)
    if replayed:
        response[IDEMPOTENT_REPLAYED] = "true"
    return response


@api.get("/users/{path:user}/costs", response={200: EventPage, **ERRORS}, tags=["costs"])
def list_user_costs(
    request: HttpRequest, user: str, model: str | None = None, since: datetime | None = None,
    until: datetime | None = None, cursor: str | None = None, limit: int = Query(50, ge=1, le=MAX_PAGE),
):
    """The user's ledger events, newest first (also after the budget was deleted)."""
    project = _project(request)
    if not UserBudget.objects.filter(project=project, user_id=user).exists() and not \
            CostEvent.objects.filter(project=project, user_id=user).exists():
        raise UnknownUser(f"user {user!r} has no budget and no costs in project {project.name!r}")
    return _event_page(request, user=user, model=model, since=since, until=until, cursor=cursor, limit=limit)


@api.post("/users/{path:user}/projected-cost", response={200: ProjectedCostOut, 422: ErrorOut, **ERRORS},
          tags=["checks"])
def projected_cost(request: HttpRequest, user: str, payload: MessagesIn):
    """The user's current cost plus the prompt cost of `messages` for `model` (the seed's projected_cost)."""
    return selectors.projected_cost(_budget(request, user), payload.model, payload.messages)._asdict()


@api.post("/users/{path:user}/check", response={200: CheckOut, 422: ErrorOut, **ERRORS}, tags=["checks"])
def check(request: HttpRequest, user: str, payload: CheckIn):
    """May this user spend about this much now? Takes the user's budget and the project's cap into account."""
    project = _project(request)
    budget = _budget(request, user)
    estimate = api_costs.estimated_cost(payload)
    scope = services.exceeded_scope(budget, project, estimate)
    room = budget.remaining
    if project.max_budget is not None:
        room = min(room, project.max_budget - project.current_spend)
    reason = None
    if scope == "user":
        left = decimal_text(max(budget.remaining, Decimal(0)))
        reason = f"user {user!r} has ${left} left of ${decimal_text(budget.total_budget)}"
    elif scope == "project":
        left = decimal_text(max(project.max_budget - project.current_spend, Decimal(0)))
        reason = f"project {project.name!r} has ${left} left of its max_budget ${decimal_text(project.max_budget)}"
    return {"allowed": scope is None, "reason": reason, "remaining": max(room, Decimal(0)), "scope": scope,
            "estimated_cost": estimate}


@api.post("/users/{path:user}/reset", response={200: UserOut, **ERRORS}, tags=["users"])
def reset_user(request: HttpRequest, user: str):
    """Set the user's spend in this period to zero (audited; the ledger stays)."""
    budget = services.budget_reset(budget=_budget(request, user), actor=_actor(request), reason="manual")
    return user_out(budget, _project(request))


@api.get("/users/{path:user}", response={200: UserOut, **ERRORS}, tags=["users"])
def get_user(request: HttpRequest, user: str):
    """The user's budget, spend in this period (total and per model), period and remaining budget."""
    return user_out(_budget(request, user), _project(request))


@api.delete("/users/{path:user}", response={204: None, **ERRORS}, tags=["users"])
def delete_user(request: HttpRequest, user: str):
    """Delete the user's budget (audited); their ledger events stay."""
    services.budget_delete(budget=_budget(request, user), actor=_actor(request))
    return Status(204, None)


# --- the ledger, quotes, alerts -----------------------------------------------------------------


@api.get("/costs", response={200: EventPage, **ERRORS}, tags=["costs"])
def list_costs(
    request: HttpRequest, user: str | None = None, model: str | None = None, since: datetime | None = None,
    until: datetime | None = None, cursor: str | None = None, limit: int = Query(50, ge=1, le=MAX_PAGE),
):
    """The project's ledger, newest first; `since` inclusive, `until` exclusive (ISO 8601)."""
    return _event_page(request, user=user, model=model, since=since, until=until, cursor=cursor, limit=limit)


@api.post("/cost-quote", response={200: QuoteOut, 422: ErrorOut, **ERRORS}, tags=["checks"])
def cost_quote(request: HttpRequest, payload: QuoteIn):
    """Tokens and cost of a call, recording nothing."""
    quote = api_costs.quote(payload)
    return {**quote.usage._asdict(), "prompt_cost": quote.prompt_cost, "completion_cost": quote.completion_cost,
            "cost": quote.cost}


@api.get("/alerts", response={200: AlertPage, **ERRORS}, tags=["alerts"])
def list_alerts(request: HttpRequest, limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0)):
    """Budget thresholds crossed in this project, newest first."""
    alerts = Alert.objects.filter(project=_project(request)).order_by("-created_at", "-id")
    items = [
        {"id": a.pk, "scope": a.scope, "user": a.user_id or None, "threshold": a.threshold,
         "period_start": a.period_start, "spend": a.spend, "limit": a.limit, "created_at": a.created_at,
         "delivered_at": a.delivered_at}
        for a in alerts[offset: offset + limit]
    ]
    return {"items": items, "total": alerts.count(), "limit": limit, "offset": offset}


@api.get("/docs/assets/{name}", auth=None, include_in_schema=False, url_name="docs_asset")
def docs_asset(request: HttpRequest, name: str):
    """Swagger UI's files, served locally (no CDN)."""
    return docs_asset_response(name)
