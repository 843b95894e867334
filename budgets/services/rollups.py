"""Daily spend rollups: kept in step with the ledger, rebuilt from it when needed.

Four grains of the same sums, in the project's local days: SpendDay (user and model, for one
user's pages), ModelDay (model: the project's charts and model tables, a few rows a day), UserDay
(user: one row per active user a day) and UserMonth (user and local month: with UserDay, ranks
users over a range from a few rows per user). This module says what the grains are; the one
writer of ledger rows (services.ledger) adds the same amounts to all four in the same transaction:
a native record (on PostgreSQL inside its one write statement), a hosted merge and the demo seed
(rebuilt after the bulk load). `rollups_rebuild`
recomputes a project's rows from the ledger, so the rule "rollup sums equal ledger sums" can
always be restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from django.db import connection, models, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from ..base.fields import MoneyField
from ..models import CostEvent, ModelDay, Project, SpendDay, UserDay, UserMonth

ROLLUP_BATCH = 1000
Key = tuple[Any, ...]  # project, local day, then the grain's own keys


@dataclass(frozen=True)
class Grain:
    """One rollup table: what it groups by besides (project, day), and whether it sums tokens."""

    model: type[models.Model]
    keys: tuple[str, ...]
    tokens: bool
    column: str = "day"  # the local day, or for "month" the first day of the local month

    @property
    def table(self) -> str:
        return self.model._meta.db_table

    def key(self, project: Project, event: CostEvent) -> Key:
        day = local_day(project.timezone, event.created_at)
        return (project.pk, day.replace(day=1) if self.column == "month" else day,
                *(getattr(event, name) for name in self.keys))


# Always in this order: writers lock the rows of one grain after another alike.
GRAINS = (
    Grain(SpendDay, ("user_id", "model"), tokens=True),
    Grain(ModelDay, ("model",), tokens=True),
    Grain(UserDay, ("user_id",), tokens=False),
    Grain(UserMonth, ("user_id",), tokens=False, column="month"),
)
TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens")


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(timezone: str, at: datetime) -> date:
    """The day `at` falls on in the project's time zone."""
    return at.astimezone(_zone(timezone)).date()


class Totals:
    """What a group of ledger rows adds to one rollup row."""

    __slots__ = ("cached", "completion", "events", "prompt", "spend")

    def __init__(self) -> None:
        self.spend = Decimal(0)
        self.events = self.prompt = self.completion = self.cached = 0

    def add(self, event: CostEvent) -> None:
        self.spend += event.cost
        self.events += 1
        self.prompt += event.prompt_tokens
        self.completion += event.completion_tokens
        self.cached += event.cached_tokens

    def values(self, tokens: bool) -> list[Any]:
        return [self.spend, self.events, *((self.prompt, self.completion, self.cached) if tokens else ())]


_REBUILD = """
INSERT INTO budgets_spendday
    (project_id, day, user_id, model, spend, events, prompt_tokens, completion_tokens, cached_tokens)
SELECT project_id, (created_at AT TIME ZONE %(tz)s)::date, user_id, model, SUM(cost), COUNT(*),
       SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens)
FROM budgets_costevent WHERE project_id = %(project)s
GROUP BY 1, 2, 3, 4
"""
# The coarser grains are sums of the finest one. Plain SQL both databases run: on SQLite money
# columns hold integers (MoneyField), whose sums are exact too.
_DERIVE = {
    ModelDay: """
INSERT INTO budgets_modelday (project_id, day, model, spend, events, prompt_tokens, completion_tokens, cached_tokens)
SELECT project_id, day, model, SUM(spend), SUM(events), SUM(prompt_tokens), SUM(completion_tokens),
       SUM(cached_tokens)
FROM budgets_spendday WHERE project_id = %s GROUP BY project_id, day, model
""",
    UserDay: """
INSERT INTO budgets_userday (project_id, day, user_id, spend, events)
SELECT project_id, day, user_id, SUM(spend), SUM(events)
FROM budgets_spendday WHERE project_id = %s GROUP BY project_id, day, user_id
""",
    UserMonth: """
INSERT INTO budgets_usermonth (project_id, month, user_id, spend, events)
SELECT project_id, {month}, user_id, SUM(spend), SUM(events)
FROM budgets_spendday WHERE project_id = %s GROUP BY project_id, {month}, user_id
""",
}
MONTH = {"postgresql": "date_trunc('month', day)::date", "sqlite": "date(day, 'start of month')"}


def rollups_rebuild(project: Project) -> int:
    """Recompute the project's rollup rows from its ledger; returns how many per-user-and-model rows."""
    with transaction.atomic():
        for grain in GRAINS:
            grain.model._default_manager.filter(project=project).delete()
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_REBUILD, {"tz": project.timezone, "project": project.pk})
                count = cursor.rowcount
        else:
            count = _rebuild_with_the_orm(project)
        with connection.cursor() as cursor:
            for sql in _DERIVE.values():
                cursor.execute(sql.format(month=MONTH[connection.vendor]), [project.pk])
            if connection.vendor == "postgresql":  # the planner's figures for the tables just refilled
                for grain in GRAINS:
                    cursor.execute(f"ANALYZE {grain.table}")
    return count


def _rebuild_with_the_orm(project: Project) -> int:
    zone = _zone(project.timezone)
    grouped = (
        CostEvent.objects.filter(project=project).order_by()
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day", "user_id", "model")
        .annotate(spend=Sum("cost", output_field=MoneyField()), events=Count("id"), prompt=Sum("prompt_tokens"),
                  completion=Sum("completion_tokens"), cached=Sum("cached_tokens"))
    )
    rows = [
        SpendDay(project=project, day=g["day"], user_id=g["user_id"], model=g["model"], spend=g["spend"],
                 events=g["events"], prompt_tokens=g["prompt"] or 0, completion_tokens=g["completion"] or 0,
                 cached_tokens=g["cached"] or 0)
        for g in grouped.iterator(chunk_size=5000)
    ]
    SpendDay.objects.bulk_create(rows, batch_size=ROLLUP_BATCH)
    return len(rows)
