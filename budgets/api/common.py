"""What the native API's endpoints share: the key's project, the user's budget, paging, replayed answers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now as utcnow

from ..domain.codec import CONTENT_TYPE, decimal_text
from ..selectors.call_limits import tightest_usd
from ..selectors.limits import LimitState
from ..services.ledger import CostRecorded
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


BUDGET_REMAINING, BUDGET_RESET = "X-Budget-Remaining", "X-Budget-Reset"


def seconds_until(at: datetime) -> int:
    """Whole seconds from now until `at` (at least 1: a header saying 0 would invite a busy retry)."""
    return max(1, math.ceil((at - utcnow()).total_seconds()))


def with_budget_headers(response: HttpResponse, limits: Iterable[LimitState | None]) -> HttpResponse:
    """X-Budget-Remaining: the fewest dollars left over the call's hard dollar limits (the user's
    budget and the project's cap included); X-Budget-Reset: seconds until that one resets (when it does)."""
    tightest = tightest_usd(limits)
    if tightest is not None:
        response[BUDGET_REMAINING] = decimal_text(tightest.remaining)
        if tightest.resets_at is not None:
            response[BUDGET_RESET] = str(seconds_until(tightest.resets_at))
    return response


def recorded_limits(recorded: CostRecorded) -> list[LimitState | None]:
    """A record's limits after it: the user's budget, the project's cap, the applicable Limit rows."""
    budget = recorded.budget
    return [LimitState.of_budget(budget), LimitState.of_project(budget.project), *recorded.limits]
