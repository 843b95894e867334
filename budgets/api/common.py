"""What the native API's endpoints share: the key's project, the user's budget, output shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse

from .. import selectors, services
from ..codec import CONTENT_TYPE
from ..models import CostEvent, Project, Reservation, UserBudget
from .auth import request_project

ERROR_STATUSES = (400, 401, 404, 503)
MAX_PAGE = 500
# Past any real page, and inside SQLite's and PostgreSQL's 64-bit OFFSET (SQLite answered 500 past it).
MAX_OFFSET = 10**9
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


def current_budget(request: HttpRequest, user: str) -> UserBudget:
    """The user's budget in the key's project, in its current period; 404 for anyone else's."""
    return services.ensure_current_period(request_project(request), user_id=user)


def aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def user_out(budget: UserBudget, project: Project, costs: dict[str, Decimal] | None = None) -> dict[str, Any]:
    """A user as UserOut declares it."""
    scope = services.exceeded_scope(budget, project)
    return {
        "user": budget.user_id,
        "total_budget": budget.total_budget,
        "duration": budget.duration,
        "duration_days": budget.duration_days,
        "current_cost": budget.current_spend,
        "model_cost": selectors.model_costs(budget) if costs is None else costs,
        "held": budget.held,
        "remaining": max(budget.remaining, Decimal(0)),
        "budget_exceeded": scope is not None,
        "exceeded_scope": scope,
        "period_start": budget.period_start,
        "next_reset_at": budget.next_reset_at,
        "created_at": budget.created_at,
        "updated_at": budget.updated_at,
    }


def reservation_out(reservation: Reservation) -> dict[str, Any]:
    """A reservation as ReservationOut declares it."""
    return {
        "id": reservation.pk,
        "user": reservation.user_id,
        "model": reservation.model,
        "amount": reservation.amount,
        "status": reservation.status,
        "expires_at": reservation.expires_at,
        "created_at": reservation.created_at,
        "settled_at": reservation.settled_at,
        "cost": reservation.settled_cost,
    }


def event_out(event: CostEvent) -> dict[str, Any]:
    """A ledger event as EventOut declares it."""
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


def raw_json(body: str, status: int, *, replayed: bool = False) -> HttpResponse:
    """An already-serialised answer (an idempotent request's first answer, replayed byte for byte)."""
    response = HttpResponse(body, status=status, content_type=CONTENT_TYPE)
    if replayed:
        response[IDEMPOTENT_REPLAYED] = "true"
    return response
