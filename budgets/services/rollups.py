"""Daily spend rollups (SpendDay): kept in step with the ledger, rebuilt from it when needed.

Every writer of ledger rows adds the same amounts here in the same transaction:
cost_record (on PostgreSQL inside its one write statement), the hosted merge and the demo
seed (in bulk). `rollups_rebuild` recomputes a project's rows from the ledger in one
GROUP BY (after a time zone change, or to repair), so the rule "rollup sums equal ledger
sums" can always be restored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate

from ..fields import MoneyField, money
from ..models import CostEvent, Project, SpendDay

ROLLUP_BATCH = 1000
Key = tuple[int, date, str, str]  # project, local day, user, model


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(timezone: str, at: datetime) -> date:
    """The day `at` falls on in the project's time zone."""
    return at.astimezone(_zone(timezone)).date()


class Totals:
    """What a group of ledger rows adds to one SpendDay row."""

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


def rollups_add_events(project: Project, events: Iterable[CostEvent]) -> int:
    """Add ledger rows just inserted (in this transaction) to their days; returns the rows touched."""
    totals: dict[Key, Totals] = defaultdict(Totals)
    for event in events:
        totals[(project.pk, local_day(project.timezone, event.created_at), event.user_id, event.model)].add(event)
    items = sorted(totals.items())  # one order, so concurrent writers lock rows alike
    if connection.vendor == "postgresql":
        for start in range(0, len(items), ROLLUP_BATCH):
            _pg_upsert(items[start: start + ROLLUP_BATCH])
    else:
        for key, total in items:
            _orm_upsert(key, total)
    return len(items)


_UPSERT = """
INSERT INTO budgets_spendday AS d
    (project_id, day, user_id, model, spend, events, prompt_tokens, completion_tokens, cached_tokens)
VALUES {values}
ON CONFLICT (project_id, day, user_id, model) DO UPDATE SET
    spend = d.spend + EXCLUDED.spend, events = d.events + EXCLUDED.events,
    prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
    cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens
"""


def _pg_upsert(items: list[tuple[Key, Totals]]) -> None:
    params: list[Any] = []
    for (project_id, day, user_id, model), t in items:
        params += [project_id, day, user_id, model, t.spend, t.events, t.prompt, t.completion, t.cached]
    values = ", ".join(["(%s, %s, %s, %s, %s::numeric, %s, %s, %s, %s)"] * len(items))
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT.format(values=values), params)


def _orm_upsert(key: Key, total: Totals) -> None:
    project_id, day, user_id, model = key
    increments = {
        "spend": F("spend") + money(total.spend), "events": F("events") + total.events,
        "prompt_tokens": F("prompt_tokens") + total.prompt,
        "completion_tokens": F("completion_tokens") + total.completion,
        "cached_tokens": F("cached_tokens") + total.cached,
    }
    rows = SpendDay.objects.filter(project_id=project_id, day=day, user_id=user_id, model=model)
    if rows.update(**increments):
        return
    try:
        with transaction.atomic():
            SpendDay.objects.create(
                project_id=project_id, day=day, user_id=user_id, model=model, spend=total.spend,
                events=total.events, prompt_tokens=total.prompt, completion_tokens=total.completion,
                cached_tokens=total.cached,
            )
    except IntegrityError:  # created meanwhile by a concurrent writer
        rows.update(**increments)


_REBUILD = """
INSERT INTO budgets_spendday
    (project_id, day, user_id, model, spend, events, prompt_tokens, completion_tokens, cached_tokens)
SELECT project_id, (created_at AT TIME ZONE %(tz)s)::date, user_id, model, SUM(cost), COUNT(*),
       SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens)
FROM budgets_costevent WHERE project_id = %(project)s
GROUP BY 1, 2, 3, 4
"""


def rollups_rebuild(project: Project) -> int:
    """Recompute the project's daily rows from its ledger (one GROUP BY); returns how many rows."""
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            SpendDay.objects.filter(project=project).delete()
            cursor.execute(_REBUILD, {"tz": project.timezone, "project": project.pk})
            return cursor.rowcount
    zone = _zone(project.timezone)
    grouped = (
        CostEvent.objects.filter(project=project).order_by()
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("day", "user_id", "model")
        .annotate(spend=Sum("cost", output_field=MoneyField()), events=Count("id"), prompt=Sum("prompt_tokens"),
                  completion=Sum("completion_tokens"), cached=Sum("cached_tokens"))
    )
    with transaction.atomic():
        SpendDay.objects.filter(project=project).delete()
        rows = [
            SpendDay(project=project, day=g["day"], user_id=g["user_id"], model=g["model"], spend=g["spend"],
                     events=g["events"], prompt_tokens=g["prompt"] or 0, completion_tokens=g["completion"] or 0,
                     cached_tokens=g["cached"] or 0)
            for g in grouped.iterator(chunk_size=5000)
        ]
        SpendDay.objects.bulk_create(rows, batch_size=ROLLUP_BATCH)
    return len(rows)
