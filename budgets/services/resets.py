"""Period resets: set-based, in batches, exactly once per period; and the one lazy reset before a read.

Locks are always taken project first, then budgets, everywhere (sweep, lazy reset, recording).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from .. import periods
from ..errors import UnknownUser
from ..models import AuditLog, BudgetPeriod, ModelSpend, Project, UserBudget
from .audit import SYSTEM_LAZY, SYSTEM_SWEEP, write_audit, write_audits

RESET_BATCH_SIZE = 500


@dataclass(frozen=True)
class _DueRow:
    id: int
    project_id: int
    user_id: str
    timezone: str
    duration: str
    duration_days: int | None
    period_start: datetime
    next_reset_at: datetime
    current_spend: Decimal
    total_budget: Decimal


def _due_rows(queryset: Any, limit: int | None = None) -> list[_DueRow]:
    values = queryset.values_list(
        "id", "project_id", "user_id", "project__timezone", "duration", "duration_days",
        "period_start", "next_reset_at", "current_spend", "total_budget",
    ).order_by("next_reset_at", "id")
    if limit is not None:
        values = values[:limit]
    return [_DueRow(*row) for row in values]


def reset_due_budgets(
    *, at: datetime | None = None, ids: Sequence[int] | None = None, project: Project | None = None,
    batch_size: int = RESET_BATCH_SIZE, actor: str = SYSTEM_SWEEP,
) -> int:
    """Reset every budget whose period has ended, in batches; returns how many were reset.

    Exactly once per period: each batch locks its rows (skipping rows another
    sweep holds), resets with `UPDATE ... WHERE id IN (...) AND period_start = old`,
    and closes the finished period under a unique (budget, period_start, period_end) constraint.
    """
    at = at or utcnow()
    total = 0
    while True:
        with transaction.atomic():
            due = UserBudget.objects.filter(next_reset_at__lte=at)
            if ids is not None:
                due = due.filter(pk__in=ids)
            if project is not None:
                due = due.filter(project=project)
            # A sweep skips rows another sweep holds; a lazy reset of one budget waits for its row.
            locked = due.select_for_update(skip_locked=ids is None, of=("self",))
            rows = _due_rows(locked, limit=batch_size)
            if not rows:
                break
            done = _reset_rows(rows, at=at, actor=actor)
        total += done
        if done == 0 or len(rows) < batch_size:
            break
    return total


def _reset_rows(rows: Iterable[_DueRow], *, at: datetime, actor: str) -> int:
    """Close the finished period of each row and move it into the period containing `at`."""
    rows = list(rows)
    if not rows:
        return 0
    groups: dict[tuple, list[_DueRow]] = defaultdict(list)
    for row in rows:
        groups[(row.timezone, row.duration, row.duration_days, row.period_start)].append(row)

    model_spend: dict[int, dict[str, str]] = defaultdict(dict)
    for budget_id, model, spend in ModelSpend.objects.filter(budget_id__in=[r.id for r in rows]).values_list(
        "budget_id", "model", "spend"
    ):
        model_spend[budget_id][model] = str(spend)

    BudgetPeriod.objects.bulk_create(
        [
            BudgetPeriod(
                budget_id=r.id, project_id=r.project_id, user_id=r.user_id, period_start=r.period_start,
                period_end=r.next_reset_at, spend=r.current_spend, total_budget=r.total_budget,
                model_spend=model_spend.get(r.id, {}), reason="lazy" if actor == SYSTEM_LAZY else "period_end",
            )
            for r in rows
        ],
        ignore_conflicts=True,
    )
    reset = 0
    audits = []
    for (tz, duration, days, old_start), members in groups.items():
        period = periods.period_containing(duration, tz, at, days=days, anchor=old_start)
        member_ids = [m.id for m in members]
        changed = UserBudget.objects.filter(pk__in=member_ids, period_start=old_start).update(
            period_start=period.start, next_reset_at=period.next_reset, current_spend=0, updated_at=at
        )
        if changed:
            ModelSpend.objects.filter(budget_id__in=member_ids).delete()
        reset += changed
        audits += [
            AuditLog(
                project_id=m.project_id, budget_id=m.id, user_id=m.user_id, action="budget_period_reset",
                actor=actor,
                before={"period_start": m.period_start.isoformat(), "current_spend": str(m.current_spend)},
                after={"period_start": period.start.isoformat(), "current_spend": "0",
                       "next_reset_at": period.next_reset.isoformat() if period.next_reset else None},
            )
            for m in members
        ] if changed == len(members) else []
    write_audits(audits)
    return reset


def reset_due_projects(*, at: datetime | None = None, project: Project | None = None) -> int:
    """Start a new period of project-wide spend for projects whose period has ended."""
    at = at or utcnow()
    due = Project.objects.filter(next_reset_at__lte=at)
    if project is not None:
        due = due.filter(pk=project.pk)
    reset = 0
    with transaction.atomic():
        rows = list(
            due.select_for_update(skip_locked=True).values_list(
                "id", "timezone", "duration", "duration_days", "period_start", "current_spend", "next_reset_at",
                "max_budget",
            )
        )
        for pk, tz, duration, days, old_start, spend, old_end, cap in rows:
            period = periods.period_containing(duration, tz, at, days=days, anchor=old_start)
            # Conditional on the old start: a second sweep finds nothing to do.
            if Project.objects.filter(pk=pk, period_start=old_start).update(
                period_start=period.start, next_reset_at=period.next_reset, current_spend=0
            ):
                reset += 1
                write_audit(project_id=pk, action="project_period_reset", actor=SYSTEM_SWEEP,
                       before={"period_start": old_start.isoformat(), "current_spend": str(spend),
                               # The period's end and cap, for the console's past periods.
                               "period_end": old_end.isoformat() if old_end else None,
                               "max_budget": None if cap is None else str(cap)},
                       after={"period_start": period.start.isoformat()})
    return reset


def project_refresh(project: Project, at: datetime | None = None) -> Project:
    """Start the project's new spend period first if its period has ended."""
    if project.is_due(at):
        reset_due_projects(at=at, project=project)
        project.refresh_from_db()
    return project


def budget_get(*, project: Project, user_id: str, at: datetime | None = None) -> UserBudget:
    """The user's budget, reset first if its period has ended; UnknownUser if there is none."""
    budget = UserBudget.objects.filter(project=project, user_id=user_id).first()
    if budget is None:
        raise UnknownUser(f"user {user_id!r} has no budget in project {project.name!r}")
    if budget.is_due(at):
        reset_due_budgets(ids=[budget.pk], at=at, actor=SYSTEM_LAZY)
        budget.refresh_from_db()
    budget.project = project
    return budget


def ensure_current_period(
    project: Project, *, user_id: str | None = None, all_users: bool = False, at: datetime | None = None,
) -> Any:
    """Bring what a read is about into its current period: the project, then one user or all of them.

    The one lazy reset every read path calls (API, console, hosted protocol, manager), so
    answers are right even while no worker runs. Returns the user's budget when `user_id`
    is given (UnknownUser if there is none), else the project.
    """
    project_refresh(project, at)
    if all_users and UserBudget.objects.filter(project=project, next_reset_at__lte=at or utcnow()).exists():
        reset_due_budgets(project=project, at=at)
    if user_id is not None:
        return budget_get(project=project, user_id=user_id, at=at)
    return project
