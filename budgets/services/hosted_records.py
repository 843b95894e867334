"""LiteLLM's hosted protocol: the project's budget rows a save is compared with.

The client's records are parsed at the edge (domain.litellm_records); services.hosted merges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from ..models import Project, UserBudget

LOOKUP_BATCH = 1000


# --- the budget rows a save is compared with ----------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


BUDGET_COLUMNS = (
    "id", "user_id", "total_budget", "duration", "duration_days", "period_start", "next_reset_at",
    "current_spend", "hosted_model_cost", "hosted_period_start", "created_at", "updated_at",
)


def budget_rows(project: Project, users: Sequence[str], *, lock: bool = False) -> dict[str, UserBudget]:
    """The project's budgets of these users from one values() read: locked, as models; else as BudgetRows."""
    rows: dict[str, UserBudget] = {}
    # Chunked IN lookups (SQLite caps parameters); a big dict is most of the project: read it whole.
    whole = not lock and len(users) > LOOKUP_BATCH
    wanted = set(users) if whole else None
    chunks: Iterable[Sequence[str] | None] = [None] if whole else _chunks(sorted(users), LOOKUP_BATCH)
    for chunk in chunks:
        queryset = UserBudget.objects.filter(project=project)
        if chunk is not None:
            queryset = queryset.filter(user_id__in=chunk)
        if lock:
            queryset = queryset.select_for_update().order_by("id")
        for values in queryset.values_list(*(BUDGET_COLUMNS if lock else BudgetRow._fields)):
            if not lock:  # only compared (_may_change): a tuple is ten times cheaper than a model
                row = BudgetRow(*values)
                if wanted is None or row.user_id in wanted:
                    rows[row.user_id] = row  # type: ignore[assignment]
                continue
            budget = UserBudget(project_id=project.pk, **dict(zip(BUDGET_COLUMNS, values, strict=True)))
            rows[budget.user_id] = budget
    return rows


class BudgetRow(NamedTuple):
    """What _may_change compares: no more columns (each datetime read costs as much as a JSON one)."""

    id: int
    user_id: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    period_start: datetime
    hosted_model_cost: Any
    hosted_period_start: datetime | None
