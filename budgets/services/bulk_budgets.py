"""Many budgets at once: the console's bulk actions and CSV import.

Every change is validated and audited exactly like a single edit (budget_set, budget_reset);
all rows share one transaction, so a failure writes nothing. Setting many budgets is a handful
of set-based statements whatever the number of rows (docs/PERFORMANCE.md: a 10,000-row import).
`budget_row_check` is the one check of a row: the import's preview runs it on every line,
and `budget_set_many` runs it on every row before it writes, so the preview never shows as
"new" a row the apply would refuse; `budget_row_unchanged` is the one rule of "unchanged".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, InvalidInput, UnknownUser
from ..base.money import to_money
from ..domain import periods
from ..models import AuditLog, Duration, Project, UserBudget
from ..selectors.console import BudgetSettings, budgets_by_user
from .admission import lock_project
from .audit import SYSTEM_LAZY, budget_snapshot
from .common import validate_user_id
from .ledger import bulk_insert, insert_rows
from .resets import _due_rows, _reset_rows, ensure_current_period
from .user_budgets import budget_reset

# Calendar periods only: "every N days" needs its number of days, which a bulk row does not carry.
BULK_DURATIONS = (Duration.NONE, Duration.DAILY, Duration.WEEKLY, Duration.MONTHLY, Duration.YEARLY)
ZERO = Decimal(0)


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


def budget_row_unchanged(budget: BudgetSettings | None, row: BudgetRow) -> bool:
    """Would setting this row leave the budget as it is (same amount, same period)?"""
    return budget is not None and budget.total_budget == row.total_budget and (
        row.duration is None or (budget.duration, budget.duration_days) == (row.duration, None))


def budget_set_many(*, project: Project, rows: Iterable[tuple[Any, Any, Any]], actor: str,
                    max_amount: Decimal | None = None, skip_unchanged: bool = False) -> int:
    """Create or replace each row's budget, all or nothing; returns how many were set.

    Each row is (user_id, total_budget, duration) as `budget_row_check` takes them (a BudgetRow, or the
    values as typed): every row is checked before the first write, and one bad row (InvalidInput) writes nothing.

    A row without a duration keeps the user's period (every-N-days included); such a user must
    have a budget already (UnknownUser otherwise, and nobody changes). A user named twice is refused.
    With `skip_unchanged` a row that would change nothing (decided under the lock) is left out: not
    written, not audited, not counted.

    Each row is what `budget_set` would do, audited the same way (a `budget_create` or a
    `budget_update` row with the same before and after; a due budget is lazily reset first), but
    the batch is a handful of statements whatever its size: the project locked, the budgets read
    and locked in one statement, the new ones inserted in one, the others updated in one (which
    returns what the audit's `after` shows), the audit rows in one. On PostgreSQL; elsewhere the
    ORM's bulk operations, in batches.
    """
    checked = [budget_row_check(*row, max_amount=max_amount) for row in rows]  # every row before the first write
    seen: set[str] = set()
    for row in checked:
        if row.user_id in seen:
            raise InvalidInput(f"user {row.user_id!r} appears twice")
        seen.add(row.user_id)
    at = utcnow()
    with transaction.atomic():
        lock_project(project)  # the one lock order (project, then budgets), as budget_set
        existing = budgets_by_user(project, [row.user_id for row in checked], lock=True)
        for row in checked:
            if row.duration is None and row.user_id not in existing:
                raise UnknownUser(f"user {row.user_id!r} has no budget in project {project.name!r}, "
                                  "so it has no period to keep")
        if skip_unchanged:
            checked = [row for row in checked if not budget_row_unchanged(existing.get(row.user_id), row)]
        due = [row.user_id for row in checked if row.user_id in existing and _is_due(existing[row.user_id], at)]
        if due:  # budget_set's lazy reset, for all of them at once
            _reset_rows(_due_rows(UserBudget.objects.filter(project=project, user_id__in=due)), at=at,
                        actor=SYSTEM_LAZY)
            existing.update(budgets_by_user(project, due, lock=True))
        created = _create(project, [row for row in checked if row.user_id not in existing], at=at)
        updated = _update(project, [(existing[row.user_id], row) for row in checked if row.user_id in existing],
                          at=at)
        audits: list[tuple[Any, ...]] = [(project.pk, pk, user_id, "budget_create", actor, None, after, at)
                  for user_id, (pk, after) in created.items()]
        audits += [(project.pk, before.id, before.user_id, "budget_update", actor, budget_snapshot(before),
                    budget_snapshot(after), at) for before, after in updated]
        bulk_insert(AuditLog, AUDIT_COLUMNS, audits)
    return len(checked)


def _is_due(budget: BudgetSettings, at: datetime) -> bool:
    return budget.next_reset_at is not None and budget.next_reset_at <= at  # UserBudget.is_due


AUDIT_COLUMNS = ("project_id", "budget_id", "user_id", "action", "actor", "before", "after", "created_at")
_CREATE_COLUMNS = ("project_id", "user_id", "total_budget", "duration", "duration_days", "period_start",
                   "next_reset_at", "created_at", "updated_at")


class _NewBudget(NamedTuple):
    """A budget about to be inserted, as budget_set's create audits it (its values as given, spend 0)."""

    total_budget: Decimal
    duration: str
    duration_days: int | None
    period_start: datetime
    next_reset_at: datetime | None
    current_spend: Decimal = ZERO


def _create(project: Project, rows: list[BudgetRow], *, at: datetime) -> dict[str, tuple[int, dict[str, Any]]]:
    """Insert these users' budgets (none exists: the caller holds the project's lock and read them);
    returns each user's (budget id, the budget_create audit's `after`)."""
    if not rows:
        return {}
    period_of: dict[str, periods.Period] = {}  # a new budget's period depends only on its duration here
    new: dict[str, _NewBudget] = {}
    for row in rows:
        duration = row.duration or Duration.NONE  # a new budget's row names its period (checked by the caller)
        if duration not in period_of:
            period_of[duration] = periods.period_containing(duration, project.timezone, at, anchor=at)
        period = period_of[duration]
        new[row.user_id] = _NewBudget(row.total_budget, duration, None, period.start, period.next_reset)
    inserted = insert_rows(UserBudget, _CREATE_COLUMNS, [
        (project.pk, user_id, b.total_budget, b.duration, b.duration_days, b.period_start, b.next_reset_at, at, at)
        for user_id, b in new.items()
    ], conflicts=("project_id", "user_id"))
    if inserted is not None:  # PostgreSQL: the ids of the rows that went in
        ids = {user_id: pk for pk, _, user_id in inserted}
    else:
        ids = {user_id: b.id for user_id, b in budgets_by_user(project, list(new)).items()}
    if len(ids) != len(new):  # only a writer that skipped the project's lock could have created one meanwhile
        raise Conflict("a budget of this batch was created meanwhile; nothing was changed, try again")
    snapshots: dict[_NewBudget, dict[str, Any]] = {}  # one dict per kind of budget: its JSON is written once
    return {user_id: (ids[user_id], snapshots.get(b) or snapshots.setdefault(b, budget_snapshot(b)))
            for user_id, b in new.items()}


_UPDATE = f"""
UPDATE budgets_userbudget AS b SET total_budget = v.total_budget, duration = v.duration,
       duration_days = v.duration_days, period_start = v.period_start, next_reset_at = v.next_reset_at,
       updated_at = %s
FROM unnest(%s::bigint[], %s::numeric[], %s::text[], %s::integer[], %s::timestamptz[], %s::timestamptz[])
     AS v(id, total_budget, duration, duration_days, period_start, next_reset_at)
WHERE b.id = v.id
RETURNING {', '.join(f'b.{name}' for name in BudgetSettings._fields)}
"""


def _update(project: Project, pairs: list[tuple[BudgetSettings, BudgetRow]], *, at: datetime
            ) -> list[tuple[BudgetSettings, BudgetSettings]]:
    """Set each locked, current budget's amount and, when it changes, its period (as budget_set does);
    returns each budget before and after, as the database holds it."""
    if not pairs:
        return []
    period_of: dict[tuple[str, datetime | None], periods.Period] = {}
    wanted: list[BudgetSettings] = []
    for budget, row in pairs:
        new = budget._replace(total_budget=row.total_budget)
        if row.duration is not None and (row.duration, None) != (budget.duration, budget.duration_days):
            # Calendar periods do not depend on the anchor: computed once per duration.
            key = (row.duration, budget.period_start if row.duration == Duration.NONE else None)
            if key not in period_of:
                period_of[key] = periods.period_containing(row.duration, project.timezone, at,
                                                           anchor=budget.period_start)
            period = period_of[key]
            new = new._replace(duration=row.duration, duration_days=None, period_start=period.start,
                               next_reset_at=period.next_reset)
        wanted.append(new)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_UPDATE, [at, [b.id for b in wanted], [b.total_budget for b in wanted],
                                     [b.duration for b in wanted], [b.duration_days for b in wanted],
                                     [b.period_start for b in wanted], [b.next_reset_at for b in wanted]])
            after = {row[0]: BudgetSettings(*row) for row in cursor.fetchall()}
    else:
        UserBudget.objects.bulk_update(
            [UserBudget(**b._asdict(), updated_at=at) for b in wanted],
            ["total_budget", "duration", "duration_days", "period_start", "next_reset_at", "updated_at"],
            batch_size=500)
        read = budgets_by_user(project, [b.user_id for b in wanted])
        after = {b.id: b for b in read.values()}
    return [(budget, after[budget.id]) for budget, _ in pairs]


def budget_reset_many(*, project: Project, user_ids: Iterable[str], actor: str) -> int:
    """Reset each user's spend to zero, all or nothing (UnknownUser if one has no budget)."""
    count = 0
    with transaction.atomic():
        for user_id in user_ids:
            budget = ensure_current_period(project, user_id=user_id)  # UnknownUser if none; a due reset first
            budget_reset(budget=budget, actor=actor)
            count += 1
    return count
