"""Many budgets at once: the console's bulk actions and CSV import.

Each row goes through budget_set / budget_reset, so every change is validated and audited
exactly like a single edit; all rows share one transaction, so a failure writes nothing.
`budget_row_check` is the one check of a row: the import's preview runs it on every line,
and `budget_set_many` runs it on every row before it writes, so the preview never shows as
"new" a row the apply would refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import transaction

from ..base.errors import InvalidInput, UnknownUser
from ..base.money import to_money
from ..models import Duration, Project, UserBudget
from .common import validate_user_id
from .resets import ensure_current_period
from .user_budgets import budget_reset, budget_set

# Calendar periods only: "every N days" needs its number of days, which a bulk row does not carry.
BULK_DURATIONS = (Duration.NONE, Duration.DAILY, Duration.WEEKLY, Duration.MONTHLY, Duration.YEARLY)


class BudgetRow(NamedTuple):
    user_id: str
    total_budget: Decimal
    duration: str | None  # None: keep the user's own period (the user must have a budget)


def budget_row_check(user_id: Any, total_budget: Any, duration: Any, *, max_amount: Decimal | None = None
                     ) -> BudgetRow:
    """The row as budget_set will take it, or InvalidInput naming what is wrong (the rules budget_set applies)."""
    user_id = validate_user_id(user_id)
    try:
        amount = to_money(total_budget, "total_budget", exact=True)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message} (got {total_budget!r})") from None
    if max_amount is not None and amount > max_amount:
        raise InvalidInput(f"total_budget above {max_amount:,}")
    if duration is not None and duration not in BULK_DURATIONS:
        raise InvalidInput(f"duration must be one of {', '.join(BULK_DURATIONS)} (got {duration!r})")
    return BudgetRow(user_id, amount, None if duration is None else str(duration))


def budget_set_many(*, project: Project, rows: Iterable[BudgetRow], actor: str) -> int:
    """Create or replace each row's budget, all or nothing; returns how many were set.

    A row without a duration keeps the user's period (every-N-days included); such a user must
    have a budget already (UnknownUser otherwise, and nobody changes).
    """
    checked = [budget_row_check(*row) for row in rows]  # every row before the first write
    with transaction.atomic():
        for row in checked:
            duration, days = row.duration, None
            if duration is None:
                budget = UserBudget.objects.select_for_update().filter(project=project, user_id=row.user_id).first()
                if budget is None:
                    raise UnknownUser(f"user {row.user_id!r} has no budget in project {project.name!r}, "
                                      "so it has no period to keep")
                duration, days = budget.duration, budget.duration_days
            budget_set(project=project, user_id=row.user_id, total_budget=row.total_budget, duration=duration,
                       duration_days=days, actor=actor)
    return len(checked)


def budget_reset_many(*, project: Project, user_ids: Iterable[str], actor: str) -> int:
    """Reset each user's spend to zero, all or nothing (UnknownUser if one has no budget)."""
    count = 0
    with transaction.atomic():
        for user_id in user_ids:
            budget = ensure_current_period(project, user_id=user_id)  # UnknownUser if none; a due reset first
            budget_reset(budget=budget, actor=actor)
            count += 1
    return count
