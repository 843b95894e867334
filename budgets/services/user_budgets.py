"""Users' budgets: create or replace, delete, reset."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils.timezone import now as utcnow

from ..base.money import to_money
from ..domain import periods
from ..models import ModelSpend, Project, UserBudget
from .admission import lock_project
from .audit import SYSTEM_LAZY, budget_snapshot, write_audit
from .common import validate_duration, validate_user_id
from .resets import _due_rows, _reset_rows
from .teams import team_assign

KEEP_TEAM: Any = object()  # budget_set's `team` when the caller did not name one: the user's team stays


def budget_set(
    *, project: Project, user_id: str, total_budget: Any, duration: Any = None, duration_days: Any = None,
    created_at: datetime | None = None, team: Any = KEEP_TEAM, actor: str,
) -> tuple[UserBudget, bool]:
    """Create or replace a user's budget and, with `team` (a name, or None to leave it), the user's team;
    returns (budget, created). Both or neither are written.
    """
    if team is KEEP_TEAM:
        return _budget_write(project=project, user_id=user_id, total_budget=total_budget, duration=duration,
                             duration_days=duration_days, created_at=created_at, actor=actor)
    with transaction.atomic():
        result = _budget_write(project=project, user_id=user_id, total_budget=total_budget, duration=duration,
                               duration_days=duration_days, created_at=created_at, actor=actor)
        team_assign(project=project, user_id=user_id, team=team, actor=actor)
    return result


def _budget_write(
    *, project: Project, user_id: str, total_budget: Any, duration: Any = None, duration_days: Any = None,
    created_at: datetime | None = None, actor: str,
) -> tuple[UserBudget, bool]:
    """Create or replace a user's budget; returns (budget, created).

    Replacing keeps what was spent in the current period (spend is a fact);
    a changed duration moves the budget into the period of the new duration.
    """
    user_id = validate_user_id(user_id)
    amount = to_money(total_budget, "total_budget")
    duration, duration_days = validate_duration(duration, duration_days)
    at = utcnow()
    anchor = created_at or at
    with transaction.atomic():
        lock_project(project)  # the one lock order (project, then budgets): a delete or a record holds it
        budget = UserBudget.objects.select_for_update().filter(project=project, user_id=user_id).first()
        if budget is None:
            period = periods.period_containing(duration, project.timezone, at, days=duration_days, anchor=anchor)
            try:
                with transaction.atomic():
                    budget = UserBudget.objects.create(
                        project=project, user_id=user_id, total_budget=amount, duration=duration,
                        duration_days=duration_days, period_start=period.start, next_reset_at=period.next_reset,
                        created_at=anchor, updated_at=at,
                    )
            except IntegrityError:
                # Created concurrently: replace that one instead.
                budget = UserBudget.objects.select_for_update().get(project=project, user_id=user_id)
            else:
                budget.project = project
                write_audit(project_id=project.pk, budget=budget, action="budget_create", actor=actor,
                       after=budget_snapshot(budget))
                return budget, True
        budget.project = project
        if budget.is_due(at):
            _reset_rows(_due_rows(UserBudget.objects.filter(pk=budget.pk)), at=at, actor=SYSTEM_LAZY)
            budget.refresh_from_db()
        before = budget_snapshot(budget)
        fields = {"total_budget": amount, "updated_at": at}
        if (duration, duration_days) != (budget.duration, budget.duration_days):
            period = periods.period_containing(
                duration, project.timezone, at, days=duration_days, anchor=created_at or budget.period_start
            )
            fields.update(duration=duration, duration_days=duration_days, period_start=period.start,
                          next_reset_at=period.next_reset)
        UserBudget.objects.filter(pk=budget.pk).update(**fields)
        budget.refresh_from_db()
        write_audit(project_id=project.pk, budget=budget, action="budget_update", actor=actor, before=before,
               after=budget_snapshot(budget))
    return budget, False


def budget_delete(*, budget: UserBudget, actor: str) -> None:
    """Delete a budget; its ledger rows stay (they are facts)."""
    with transaction.atomic():
        write_audit(project_id=budget.project_id, budget=None, user_id=budget.user_id, action="budget_delete",
               actor=actor, before=budget_snapshot(budget))
        budget.delete()


def budget_reset(*, budget: UserBudget, actor: str, reason: str = "manual") -> UserBudget:
    """Set a user's spend in the current period to zero (audited); the ledger stays."""
    with transaction.atomic():
        locked = UserBudget.objects.select_for_update().get(pk=budget.pk)
        before = budget_snapshot(locked)
        at = utcnow()
        UserBudget.objects.filter(pk=locked.pk).update(current_spend=0, granted=0, updated_at=at)
        ModelSpend.objects.filter(budget_id=locked.pk).delete()
        locked.refresh_from_db()
        write_audit(project_id=locked.project_id, budget=locked, action=f"budget_reset_{reason}", actor=actor,
               before=before, after=budget_snapshot(locked))
    budget.refresh_from_db()
    return budget
