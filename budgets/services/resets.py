"""Period resets: set-based, in batches, exactly once per period; and the one lazy reset before a read.

Locks are always taken project first, then budgets, everywhere (sweep, lazy reset, recording).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import F, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils.timezone import now as utcnow

from ..base.errors import UnknownUser
from ..base.fields import MoneyField
from ..domain import periods
from ..models import AuditLog, BudgetPeriod, ModelSpend, Project, UserBudget
from ..selectors.budgets import model_costs
from ..selectors.grants import active_grants
from .audit import SYSTEM_LAZY, SYSTEM_SWEEP, write_audit, write_audits

RESET_BATCH_SIZE = 5000  # rows locked and reset per transaction


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
            if connection.vendor == "postgresql":
                groups = _lock_due_groups(at=at, ids=ids, project=project, limit=batch_size)
            else:
                due = UserBudget.objects.filter(next_reset_at__lte=at)
                if ids is not None:
                    due = due.filter(pk__in=ids)
                if project is not None:
                    due = due.filter(project=project)
                # A sweep skips rows another sweep holds; a lazy reset of one budget waits for its row.
                groups = _grouped(_due_rows(due.select_for_update(skip_locked=ids is None, of=("self",)),
                                            limit=batch_size))
            locked = sum(len(group.ids) for group in groups)
            if not locked:
                break
            done = _reset_groups(groups, at=at, actor=actor)
        total += done
        if done == 0 or locked < batch_size:
            break
    return total


@dataclass
class _Group:
    """Due budgets that share a time zone, duration and period start, so also their next period."""

    timezone: str
    duration: str
    duration_days: int | None
    period_start: datetime
    ids: list[int]
    rows: list[_DueRow]  # the rows themselves: only the SQLite path reads them


def _grouped(rows: Iterable[_DueRow]) -> list[_Group]:
    groups: dict[tuple[Any, ...], _Group] = {}
    for row in rows:
        key = (row.timezone, row.duration, row.duration_days, row.period_start)
        group = groups.get(key) or groups.setdefault(key, _Group(*key, ids=[], rows=[]))
        group.ids.append(row.id)
        group.rows.append(row)
    return list(groups.values())


# PostgreSQL: a batch of due budgets locked in (next_reset_at, id) order and handed back already
# grouped, a row per group with its ids: nothing per budget crosses to Python.
_LOCK_DUE_SQL = """
WITH due AS (
    SELECT b.id, b.project_id, b.duration, b.duration_days, b.period_start FROM budgets_userbudget b
    WHERE b.next_reset_at <= %(at)s {filters}
    ORDER BY b.next_reset_at, b.id LIMIT %(limit)s
    FOR UPDATE OF b {skip}
)
SELECT p.timezone, due.duration, due.duration_days, due.period_start, array_agg(due.id ORDER BY due.id)
FROM due JOIN budgets_project p ON p.id = due.project_id
GROUP BY 1, 2, 3, 4
"""


def _lock_due_groups(*, at: datetime, ids: Sequence[int] | None, project: Project | None,
                     limit: int) -> list[_Group]:
    filters = (" AND b.id = ANY(%(ids)s)" if ids is not None else "") + (
        " AND b.project_id = %(project)s" if project is not None else "")
    # A sweep skips rows another sweep holds; a lazy reset of one budget waits for its row.
    sql = _LOCK_DUE_SQL.format(filters=filters, skip="SKIP LOCKED" if ids is None else "")
    params: dict[str, Any] = {"at": at, "limit": limit, "ids": list(ids) if ids is not None else None,
              "project": project.pk if project is not None else None}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [_Group(tz, duration, days, start, list(group_ids), rows=[])
                for tz, duration, days, start, group_ids in cursor.fetchall()]


def _reset_rows(rows: Iterable[_DueRow], *, at: datetime, actor: str) -> int:
    """Close the finished period of each row (locked by the caller) and start the one containing `at`."""
    return _reset_groups(_grouped(rows), at=at, actor=actor)


def _reset_groups(groups: Iterable[_Group], *, at: datetime, actor: str) -> int:
    """Each group is a handful of set-based statements whatever its size."""
    reason = "lazy" if actor == SYSTEM_LAZY else "period_end"
    reset = 0
    for group in groups:
        period = periods.period_containing(group.duration, group.timezone, at, days=group.duration_days,
                                           anchor=group.period_start)
        old_start, ids = group.period_start, group.ids
        if connection.vendor == "postgresql":
            reset += _reset_in_sql(ids, old_start=old_start, period=period, at=at, actor=actor, reason=reason)
            continue
        _close_periods_in_python(group.rows, period=period, actor=actor, reason=reason)
        changed = UserBudget.objects.filter(pk__in=ids, period_start=old_start).update(
            period_start=period.start, next_reset_at=period.next_reset, current_spend=0, granted=0, updated_at=at
        )
        if changed:
            ModelSpend.objects.filter(budget_id__in=ids).delete()
        reset += changed
    return reset


def _after_reset(period: periods.Period) -> dict[str, Any]:
    return {"period_start": period.start.isoformat(), "current_spend": "0",
            "next_reset_at": period.next_reset.isoformat() if period.next_reset else None}


# The finished periods and their audit rows, written by two INSERT ... SELECT statements
# (one row per budget, built in the database): at 100,000 budgets, building them in Python
# cost more than everything else the sweep does.
_CLOSE_PERIODS_SQL = """
INSERT INTO budgets_budgetperiod
    (budget_id, project_id, user_id, period_start, period_end, spend, total_budget, model_spend, reason, created_at)
SELECT b.id, b.project_id, b.user_id, b.period_start, b.next_reset_at, b.current_spend, b.total_budget,
       COALESCE((SELECT jsonb_object_agg(s.model, s.spend::text) FROM budgets_modelspend s WHERE s.budget_id = b.id),
                '{}'::jsonb),
       %(reason)s, %(at)s
FROM budgets_userbudget b WHERE b.id = ANY(%(ids)s) AND b.period_start = %(old_start)s
ON CONFLICT DO NOTHING
"""
_AUDIT_RESETS_SQL = """
INSERT INTO budgets_auditlog (project_id, budget_id, user_id, action, actor, before, after, created_at)
SELECT b.project_id, b.id, b.user_id, 'budget_period_reset', %(actor)s,
       jsonb_build_object('period_start', %(old_start_text)s::text, 'current_spend', b.current_spend::text),
       %(after)s::jsonb, %(at)s
FROM budgets_userbudget b WHERE b.id = ANY(%(ids)s) AND b.period_start = %(old_start)s
"""


_START_PERIOD_SQL = """
UPDATE budgets_userbudget SET period_start = %(new_start)s, next_reset_at = %(next_reset)s, current_spend = 0,
       granted = 0, updated_at = %(at)s
WHERE id = ANY(%(ids)s) AND period_start = %(old_start)s
"""


def _reset_in_sql(ids: list[int], *, old_start: datetime, period: periods.Period, at: datetime,
                  actor: str, reason: str) -> int:
    """PostgreSQL: the group's periods closed, audited and started anew in four statements."""
    params: dict[str, Any] = {"ids": ids, "old_start": old_start, "old_start_text": old_start.isoformat(), "at": at,
              "actor": actor, "reason": reason, "after": json.dumps(_after_reset(period)),
              "new_start": period.start, "next_reset": period.next_reset}
    with connection.cursor() as cursor:
        cursor.execute(_CLOSE_PERIODS_SQL, params)
        cursor.execute(_AUDIT_RESETS_SQL, params)
        cursor.execute(_START_PERIOD_SQL, params)
        changed = cursor.rowcount
        if changed:
            cursor.execute("DELETE FROM budgets_modelspend WHERE budget_id = ANY(%(ids)s)", params)
    return changed


def _close_periods_in_python(members: list[_DueRow], *, period: periods.Period, actor: str,
                             reason: str) -> None:
    """The same rows as the SQL above, built in Python (SQLite keeps money as integers)."""
    model_spend: dict[int, dict[str, str]] = defaultdict(dict)
    for budget_id, model, spend in ModelSpend.objects.filter(budget_id__in=[m.id for m in members]).values_list(
        "budget_id", "model", "spend"
    ):
        model_spend[budget_id][model] = str(spend)
    BudgetPeriod.objects.bulk_create(
        [
            BudgetPeriod(
                budget_id=m.id, project_id=m.project_id, user_id=m.user_id, period_start=m.period_start,
                period_end=m.next_reset_at, spend=m.current_spend, total_budget=m.total_budget,
                model_spend=model_spend.get(m.id, {}), reason=reason,
            )
            for m in members
        ],
        ignore_conflicts=True,
    )
    write_audits([
        AuditLog(
            project_id=m.project_id, budget_id=m.id, user_id=m.user_id, action="budget_period_reset", actor=actor,
            before={"period_start": m.period_start.isoformat(), "current_spend": str(m.current_spend)},
            after=_after_reset(period),
        )
        for m in members
    ])


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


PROJECT_FIGURES = ("current_spend", "held", "max_budget", "period_start", "next_reset_at", "duration",
                   "duration_days", "timezone", "alert_thresholds", "alert_webhook_url", "alert_email",
                   "slack_webhook_url")


_BUDGET_COLUMNS = tuple(field.attname for field in UserBudget._meta.concrete_fields)
# PostgreSQL: the budget, its project's figures and its spend per model in one statement, with no
# ORM query to compile (the read endpoints' main cost was building the SQL, not running it).
_READ_BUDGET = (
    "SELECT " + ", ".join(f"b.{column}" for column in _BUDGET_COLUMNS) + ", "
    + ", ".join(f"p.{column}" for column in PROJECT_FIGURES) + ", "
    "(SELECT COALESCE(SUM(g.amount - g.used), 0) FROM budgets_grant g WHERE g.project_id = b.project_id "
    "AND g.scope = 'user' AND g.subject = b.user_id AND g.voided_at IS NULL AND g.used < g.amount "
    "AND (g.expires_at IS NULL OR g.expires_at > %s)), "
    "(SELECT COALESCE(jsonb_object_agg(s.model, s.spend::text), '{}'::jsonb) "
    "FROM budgets_modelspend s WHERE s.budget_id = b.id) "
    "FROM budgets_userbudget b JOIN budgets_project p ON p.id = b.project_id "
    "WHERE b.project_id = %s AND b.user_id = %s"
)


@dataclass(frozen=True)
class CurrentBudget:
    """A user's budget in its current period, as reads show it (services.budget_current)."""

    budget: UserBudget  # `.project` holds the project's figures, read with it
    spend_by_model: dict[str, Decimal] | None = None  # read in the same statement (PostgreSQL), else None

    @property
    def model_costs(self) -> dict[str, Decimal]:
        """Spend per model in the current period (one more query when not read with the budget)."""
        if self.spend_by_model is not None:
            return self.spend_by_model
        return model_costs(self.budget)


def _read_budget(project: Project, user_id: str, at: datetime) -> CurrentBudget | None:
    """The budget (with its spend per model when read in one statement) and what the user's grants have
    left at `at` (`grant_room`); the project's figures refreshed."""
    if connection.vendor != "postgresql":
        room = Subquery(active_grants(project.pk, at).filter(scope="user", subject=OuterRef("user_id")).order_by()
                        .values("subject").annotate(rest=Sum(F("amount") - F("used"), output_field=MoneyField()))
                        .values("rest"), output_field=MoneyField())
        found = (UserBudget.objects.select_related("project").filter(project=project, user_id=user_id)
                 .annotate(grant_room=Coalesce(room, Value(Decimal(0)), output_field=MoneyField())).first())
        if found is None:
            return None
        budget: UserBudget = found
        for name in PROJECT_FIGURES:
            setattr(project, name, getattr(budget.project, name))
        return CurrentBudget(budget)
    with connection.cursor() as cursor:
        cursor.execute(_READ_BUDGET, [at, project.pk, user_id])
        row = cursor.fetchone()
    if row is None:
        return None
    width = len(_BUDGET_COLUMNS)
    budget = UserBudget.from_db(connection.alias, list(_BUDGET_COLUMNS), [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(UserBudget._meta.concrete_fields, row[:width], strict=True)
    ])
    for name, value in zip(PROJECT_FIGURES, row[width: width + len(PROJECT_FIGURES)], strict=True):
        field = Project._meta.get_field(name)
        setattr(project, name, field.from_db_value(value, None, connection)  # type: ignore[union-attr]
                if hasattr(field, "from_db_value") else value)
    budget.grant_room = row[-2]  # type: ignore[attr-defined]
    costs = row[-1]
    costs = json.loads(costs) if isinstance(costs, str) else costs
    return CurrentBudget(budget, {model: Decimal(spend) for model, spend in costs.items()})


def budget_current(*, project: Project, user_id: str, at: datetime | None = None) -> CurrentBudget:
    """The one way a read gets a user's budget: the project and the budget in their current periods
    (the lazy reset first, so answers are right while no worker runs), read with the project's
    figures and, when it comes in the same statement, the spend per model. UnknownUser if none.

    The project's figures come with the budget (one query): the caller's project object may be
    a cached copy from authentication, its spend seconds old.
    """
    project_refresh(project, at)
    current = _read_budget(project, user_id, at or utcnow())
    if current is None:
        raise UnknownUser(f"user {user_id!r} has no budget in project {project.name!r}")
    budget = current.budget
    if budget.is_due(at):
        reset_due_budgets(ids=[budget.pk], at=at, actor=SYSTEM_LAZY)
        budget.refresh_from_db()
        current = CurrentBudget(budget)  # spend per model read again, after the reset
    budget.project = project
    if project.is_due(at):
        # The figures read with the budget are fresher than a key's cached project: its period
        # may have ended within the cache's seconds. (The budget's own lazy reset is committed.)
        project_refresh(project, at)
    return current


def budget_get(*, project: Project, user_id: str, at: datetime | None = None) -> UserBudget:
    """The user's budget in its current period (budget_current's, without the spend per model)."""
    return budget_current(project=project, user_id=user_id, at=at).budget


def ensure_current_period(
    project: Project, *, user_id: str | None = None, all_users: bool = False, at: datetime | None = None,
) -> Any:
    """Bring what a read is about into its current period: the project, then one user or all of them.

    Returns the user's budget when `user_id` is given (budget_current's, UnknownUser if there is
    none), else the project.
    """
    if user_id is not None:
        return budget_current(project=project, user_id=user_id, at=at).budget
    project_refresh(project, at)
    if all_users and UserBudget.objects.filter(project=project, next_reset_at__lte=at or utcnow()).exists():
        reset_due_budgets(project=project, at=at)
    return project
