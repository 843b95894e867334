"""LiteLLM's hosted protocol: the project's budget rows a save is compared with.

The client's records are parsed at the edge (domain.litellm_records); services.hosted merges them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection

from ..domain import periods
from ..models import ModelSpend, Project, UserBudget

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
    """The project's budgets of these users: locked, as models; else as BudgetRows (compare_rows)."""
    if not lock:
        return compare_rows(project, users)  # type: ignore[return-value]
    rows: dict[str, UserBudget] = {}
    for chunk in _chunks(sorted(users), LOOKUP_BATCH):  # chunked IN lookups: SQLite caps parameters
        queryset = UserBudget.objects.filter(project=project, user_id__in=chunk).select_for_update().order_by("id")
        for values in queryset.values_list(*BUDGET_COLUMNS):
            budget = UserBudget(project_id=project.pk, **dict(zip(BUDGET_COLUMNS, values, strict=True)))
            rows[budget.user_id] = budget
    return rows


class BudgetRow(NamedTuple):
    """What _may_change compares, unlocked: no more than it needs."""

    id: int
    user_id: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    hosted_model_cost: Any
    same_period: bool  # hosted_period_start == period_start
    hosted_start: Decimal | None  # hosted_period_start in Unix seconds


def compare_rows(project: Project, users: Sequence[str]) -> dict[str, BudgetRow]:
    """These users' budgets, unlocked, for a save's comparison (a big dict is most of the project: read whole).

    On PostgreSQL the rows arrive as one JSON text decoded in one call (json.loads in C), not row by row
    through the ORM's converters (a JSON and two datetime loads per row were most of a 10k-user save).
    """
    whole = len(users) > LOOKUP_BATCH
    wanted = set(users)
    rows: dict[str, BudgetRow] = {}
    if connection.vendor == "postgresql":
        sql = (f"SELECT json_agg(json_build_array(id, user_id, total_budget::text, duration, duration_days, "
               "hosted_model_cost, hosted_period_start IS NOT DISTINCT FROM period_start, "
               f"extract(epoch FROM hosted_period_start)::text))::text FROM {UserBudget._meta.db_table} "
               "WHERE project_id = %s" + ("" if whole else " AND user_id = ANY(%s)"))
        with connection.cursor() as cursor:
            cursor.execute(sql, [project.pk] if whole else [project.pk, list(users)])
            (text,) = cursor.fetchone()
        for pk, user, total, duration, days, baseline, same, start in json.loads(text) if text else ():
            if user in wanted:
                rows[user] = BudgetRow(pk, user, Decimal(total), duration, days, baseline, same,
                                       None if start is None else Decimal(start))
        return rows
    columns = ("id", "user_id", "total_budget", "duration", "duration_days", "hosted_model_cost",
               "period_start", "hosted_period_start")
    chunks: Iterable[Sequence[str] | None] = [None] if whole else _chunks(sorted(users), LOOKUP_BATCH)
    for chunk in chunks:
        queryset = UserBudget.objects.filter(project=project)
        if chunk is not None:
            queryset = queryset.filter(user_id__in=chunk)
        for pk, user, total, duration, days, baseline, start, hosted_start in queryset.values_list(*columns):
            if user in wanted:
                rows[user] = BudgetRow(pk, user, total, duration, days, baseline, hosted_start == start,
                                       None if hosted_start is None else Decimal(repr(hosted_start.timestamp())))
    return rows


# --- get_budget on PostgreSQL: the baselines and the JSON in one statement ----------------------

# Beside the models in the baseline: validate_model strips names, so none starts with a space.
CLIENT_KEY = " client"


def _duration_sql() -> str:
    """`,"duration":N` as budget_record writes it (periods.duration_to_days), or nothing for "none"."""
    cases = " ".join(f"WHEN '{name}' THEN ',\"duration\":{days}'" for name, days in periods.calendar_days().items())
    return f"CASE b.duration {cases} WHEN 'days' THEN ',\"duration\":' || b.duration_days ELSE '' END"


def _serve_sql() -> str:
    budgets, spends = UserBudget._meta.db_table, ModelSpend._meta.db_table
    # Numbers as budget_record's JSON has them: exact, without trailing zeros (trim_scale); Unix seconds
    # from extract(epoch) (exact microseconds, where Python writes the float's repr: the same number).
    return f"""
WITH ms AS (
    SELECT s.budget_id, jsonb_object_agg(s.model, s.spend::text) AS models,
           string_agg(to_json(s.model::text)::text || ':' || trim_scale(s.spend)::text, ',' ORDER BY s.model) AS costs
    FROM {spends} s JOIN {budgets} o ON o.id = s.budget_id WHERE o.project_id = %(project)s GROUP BY s.budget_id
), b AS (
    SELECT b.*, ms.costs,
           COALESCE(ms.models, '{{}}'::jsonb) || CASE
               WHEN b.hosted_period_start = b.period_start
                    AND COALESCE(b.hosted_model_cost -> %(client)s -> 'recorded', '{{}}'::jsonb) <> '{{}}'::jsonb
               THEN jsonb_build_object(%(client)s, jsonb_build_object('recorded',
                                                                      b.hosted_model_cost -> %(client)s -> 'recorded'))
               ELSE '{{}}'::jsonb END AS served
    FROM {budgets} b LEFT JOIN ms ON ms.budget_id = b.id WHERE b.project_id = %(project)s
), written AS (
    UPDATE {budgets} u SET hosted_model_cost = b.served, hosted_period_start = b.period_start FROM b
    WHERE u.id = b.id
      AND (u.hosted_model_cost <> b.served OR u.hosted_period_start IS DISTINCT FROM u.period_start)
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), '{{' || COALESCE(string_agg(
    to_json(b.user_id::text)::text || ':{{"total_budget":' || trim_scale(b.total_budget)::text
    || {_duration_sql()}
    || ',"created_at":' || trim_scale(extract(epoch FROM b.created_at))::text
    || ',"last_updated_at":' || trim_scale(extract(epoch FROM b.period_start))::text
    || ',"current_cost":' || trim_scale(b.current_spend)::text
    || ',"model_cost":{{' || COALESCE(b.costs, '') || '}}}}', ',' ORDER BY b.user_id), '') || '}}'
FROM b
"""


def serve_json(project: Project) -> str:
    """What services.hosted.hosted_budget_get serves and writes, on PostgreSQL, as JSON text: each user's
    record (selectors.budgets.budget_record), and each baseline set to what was served (the models'
    spend, and what the protocol recorded since the client's last reset while the period is the same)
    where it differs. The caller holds the project's lock."""
    with connection.cursor() as cursor:
        cursor.execute(_serve_sql(), {"project": project.pk, "client": CLIENT_KEY})
        _, data = cursor.fetchone()
    return data
