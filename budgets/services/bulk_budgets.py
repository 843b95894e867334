"""Many budgets at once: the console's bulk actions and CSV import.

Each row goes through budget_set / budget_reset, so every change is validated and audited
exactly like a single edit; all rows share one transaction, so a failure writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import NamedTuple

from django.db import transaction

from ..models import Project
from .resets import ensure_current_period
from .user_budgets import budget_reset, budget_set


class BudgetRow(NamedTuple):
    user_id: str
    total_budget: Decimal
    duration: str


def budget_set_many(*, project: Project, rows: Iterable[BudgetRow], actor: str) -> int:
    """Create or replace each row's budget, all or nothing; returns how many were set."""
    count = 0
    with transaction.atomic():
        for row in rows:
            budget_set(project=project, user_id=row.user_id, total_budget=row.total_budget, duration=row.duration,
                       actor=actor)
            count += 1
    return count


def budget_reset_many(*, project: Project, user_ids: Iterable[str], actor: str) -> int:
    """Reset each user's spend to zero, all or nothing (UnknownUser if one has no budget)."""
    count = 0
    with transaction.atomic():
        for user_id in user_ids:
            budget = ensure_current_period(project, user_id=user_id)  # UnknownUser if none; a due reset first
            budget_reset(budget=budget, actor=actor)
            count += 1
    return count
