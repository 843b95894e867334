"""What the native API's endpoints share: the key's project, the user's budget, paging, replayed answers."""

from __future__ import annotations

from datetime import UTC, datetime

from django.http import HttpRequest, HttpResponse

from ..domain.codec import CONTENT_TYPE
from ..services.resets import CurrentBudget, budget_current
from .auth import request_project

ERROR_STATUSES = (400, 401, 404, 503)
MAX_PAGE = 500
# Past any real page, and inside SQLite's and PostgreSQL's 64-bit OFFSET (SQLite answered 500 past it).
MAX_OFFSET = 10**9
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"


def current_budget(request: HttpRequest, user: str) -> CurrentBudget:
    """The user's budget in the key's project, in its current period; 404 for anyone else's.

    The one way a handler reads a budget (tests/test_layers.py checks that reads go through it).
    """
    return budget_current(project=request_project(request), user_id=user)


def aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def raw_json(body: str, status: int, *, replayed: bool = False) -> HttpResponse:
    """An already-serialised answer (an idempotent request's first answer, replayed byte for byte)."""
    response = HttpResponse(body, status=status, content_type=CONTENT_TYPE)
    if replayed:
        response[IDEMPOTENT_REPLAYED] = "true"
    return response
