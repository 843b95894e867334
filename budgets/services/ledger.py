"""The ledger's one writer: ledger rows and everything derived from them, for every entry point.

A ledger row (CostEvent) never goes in alone: in the same transaction the spend at every level
(project, budget, per model), the four daily rollups (services.rollups) and the alert rows for
crossed thresholds (services.alerts) change with it. This module is the only code that inserts
ledger rows, so a new level or rollup column is written here once, for:

- a native record (`record`): cost_record, and a reservation's settle through it;
- a hosted merge (`merge`): many users at once, set-based;
- the demo seed (`seed`): fabricated history in bulk.

Each has a PostgreSQL fast path beside the portable (ORM, SQLite) one; `_postgres()` is the one
switch between them. Locks: the project row first, then budget rows, then Limit rows by id
(services.admission). Every applicable Limit (selectors.limits), hard and soft, counts what a
record or a merge adds in its unit (`used`), here only.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, cast

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.models import Case, F, JSONField, OuterRef, Subquery, Sum, When
from django.db.models.functions import Coalesce, Greatest
from django.utils.timezone import now as utcnow

from .. import metrics
from ..base.cursors import PREPARED_CURSOR_WRAPPERS
from ..base.errors import BudgetExceeded, IdempotencyConflict, UnknownUser
from ..base.fields import MoneyField, money
from ..domain.pricing import find_price
from ..domain.usage import Usage
from ..models import CostEvent, Grant, Limit, ModelSpend, Project, TeamMember, UserBudget
from ..selectors.budgets import model_costs
from ..selectors.console import MoneySum
from ..selectors.grants import EXTENDED_SQL
from ..selectors.limits import (
    MAX_TAGS,
    CallScope,
    LimitState,
    applicable_limits,
    applicable_limits_finding_team,
    tags_text,
    team_of,
)
from . import alerts
from .admission import (
    Figures,
    Need,
    check_figures,
    levels_lock,
    levels_of,
    limits_check,
    limits_lock,
    lock_project,
)
from .grants import grants_lock, grants_pay
from .limit_windows import limits_current
from .resets import ensure_current_period
from .rollups import GRAINS, TOKENS, Grain, Key, Totals, local_day, rollups_rebuild

ZERO = Decimal(0)
ROLLUP_BATCH = 1000  # rollup rows per upsert statement
WRITE_BATCH = 1000  # rows per bulk_create on the portable path
COPY_BATCH = 2000  # lines per COPY write on PostgreSQL


def _postgres() -> bool:
    """The one switch: PostgreSQL's fast paths, or the portable ORM ones (SQLite)."""
    return connection.vendor == "postgresql"


def prepared_cursor() -> Any:
    """A cursor (Django's wrapper: logged, traced, errors translated) whose statements are prepared once
    per connection and bound on the server. For the hot path's few big statements: planning them took
    more of the database's time than running them. Every Python int goes as bigint, so one statement
    keeps one prepared plan whatever the numbers' sizes."""
    wrappers = tuple(PREPARED_CURSOR_WRAPPERS)
    if not _PREPARING or _PREPARING[0][0] != wrappers:
        cursor_class = _preparing_cursor_class()
        for wrap in wrappers:
            cursor_class = wrap(cursor_class)
        _PREPARING[:] = [(wrappers, cursor_class)]
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django turns psycopg's preparing off (None). Back on only for statements asked with
        # prepare=True: the ORM's would need this many executions first.
        raw.prepare_threshold = 2**31 - 1
    with connection.wrap_database_errors:
        cursor = _PREPARING[0][1](raw)
    return cast(Any, connection)._prepare_cursor(cursor)


_PREPARING: list[tuple[tuple[Any, ...], type]] = []  # (the wrappers it was built with, the cursor class)


def _preparing_cursor_class() -> type:
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg._queries import PostgresQuery, _query2pg
    from psycopg.types.numeric import Int8Dumper

    class Converted(PostgresQuery):
        """psycopg splits a statement at its placeholders on every execute, caching the split only for
        statements under 4 KiB; the hot path's few statements are longer, and always the same few."""

        def convert(self, query: Any, vars: Any) -> None:
            self.query, self._want_formats, self._order, self._parts = _query2pg(
                self._ensure_bytes(query), self._tx.encoding)
            self.dump(vars)

    class Preparing(ServerBindingCursor):  # type: ignore[misc,valid-type]
        _query_cls = Converted

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.adapters.register_dumper(int, Int8Dumper)  # type: ignore[attr-defined]

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            return super().execute(query, params, prepare=True, **kwargs)  # type: ignore[misc]

        def _convert_query(self, query: Any, params: Any = None) -> Any:
            self._query = super()._convert_query(query, params)  # type: ignore[misc]  # for Django's SQL log
            return self._query

    return Preparing


# --- what a record answers -----------------------------------------------------------------------


@dataclass(frozen=True)
class CostRecorded:
    event: CostEvent
    budget: UserBudget  # with .project: both hold their figures after this call
    created: bool  # False for an idempotent retry: nothing new was recorded
    exceeded: str | None  # "user" or "project" when a budget is used up after this call
    model_costs: dict[str, Decimal]  # the user's spend per model after it
    limits: tuple[LimitState, ...] = ()  # the applicable Limit rows after it (empty for a retry)
    limit_starts: tuple[datetime, ...] = ()  # their windows' starts, in the same order

    @property
    def budget_exceeded(self) -> bool:
        return self.exceeded is not None


def _no_room(spend: Decimal, held: Decimal, cap: Decimal, extra: Decimal) -> bool:
    # Spend that reached the cap is used up; a new call (with the open holds) may bring it up to the cap, not past.
    return spend >= cap if extra == 0 else spend + held + extra > cap


def budget_ceiling(budget: UserBudget) -> Decimal:
    """What the user's budget admits up to: its total, and its grants (what they paid this period and, where
    the caller read it, `grant_room`: what they have left)."""
    return budget.total_budget + budget.granted + getattr(budget, "grant_room", ZERO)


def exceeded_scope(budget: UserBudget, project: Project, extra: Decimal = ZERO) -> str | None:
    """Which budget, if any, has no room left for `extra` more spend ("user" is named first).

    With `extra` 0: which budget's spend reached its cap. Otherwise open holds count too.
    """
    if _no_room(budget.current_spend, budget.held, budget_ceiling(budget), extra):
        return "user"
    if project.max_budget is not None and _no_room(project.current_spend, project.held, project.max_budget, extra):
        return "project"
    return None


# --- a native record: one call -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One call to record, validated and priced by services.costs."""

    project: Project
    user_id: str
    usage: Usage
    model: str
    amount: Decimal  # stored precision
    source: str
    idempotency_key: str | None
    fingerprint: str
    enforce: bool
    key_name: str | None = None  # the API key's name (None: the manager, a settle without one)
    api_key_id: int | None = None
    tags: tuple[str, ...] = ()

    @property
    def need(self) -> Need:
        return Need(usd=self.amount, tokens=self.usage.prompt_tokens + self.usage.completion_tokens)

    def scope(self, team: str | None = None) -> CallScope:
        return CallScope(project=self.project, user_id=self.user_id, model=limit_model(self.model),
                         key_name=self.key_name, tags=self.tags, team=team)


def limit_model(model: str) -> str:
    """The name limits know a model by: the price table's, when it has the model (pricing.find_price)."""
    price = find_price(model) if model else None
    return price.model if price is not None else model


def record(call: Call) -> CostRecorded:
    """The ledger row, its spend, rollups and alerts; on PostgreSQL one statement when no period ends.

    Called outside a transaction, that statement is its own (autocommit: one round trip); inside the
    caller's, it is part of it. With an idempotency key, a retry returns the first event and records
    nothing (`created` False). Alert rows for crossed thresholds follow the ledger row (in autocommit,
    in a transaction of their own right after it).
    """
    recorded = _record_in_one_statement(call) if _postgres() else None
    if recorded is None:  # SQLite, or a period must start first
        with transaction.atomic():  # a savepoint inside the caller's transaction: a refusal leaves it usable
            recorded = _record_with_the_orm(call)
    if recorded.created:
        alerts.spend_recorded(project=call.project, budget=recorded.budget, amount=call.amount)
        if recorded.limits:
            alerts.limits_counted(project=call.project, counted=[
                (state, call.need.of(state.unit), start)
                for state, start in zip(recorded.limits, recorded.limit_starts, strict=True)])
    return recorded


def _event(call: Call, budget_id: int, **fields: Any) -> CostEvent:
    usage = call.usage
    return CostEvent(
        project=call.project, budget_id=budget_id, user_id=call.user_id, model=call.model,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens, cost=call.amount,
        source=call.source, idempotency_key=call.idempotency_key or None, request_fingerprint=call.fingerprint,
        tags=tags_text(call.tags), api_key_id=call.api_key_id, **fields,
    )


def _record_with_the_orm(call: Call) -> CostRecorded:
    """Any database: a statement per row (SQLite, and PostgreSQL when a period must start first)."""
    project = call.project
    lock_project(project)
    budget = ensure_current_period(project, user_id=call.user_id)
    if call.idempotency_key:
        replay = _replay(project, call.idempotency_key, call.fingerprint, budget)
        if replay is not None:
            return replay
    figures = levels_lock(levels_of(project, budget))  # the budget's row, before any Limit row
    scope = call.scope(team_of(project, call.user_id))
    limits = limits_current(project, limits_lock(applicable_limits(scope).values_list("id", flat=True)))
    grants = grants_lock(project, call.user_id, limits, utcnow())  # after the limits: the lock order
    budget.grant_room = grants.room(Grant.Scope.USER, call.user_id)  # type: ignore[attr-defined]
    if call.enforce:
        _admit(project, with_budget_ceiling(figures, budget), call.amount,
               [grants.state(LimitState.of_limit(limit)) for limit in limits], call.need)
    try:
        with transaction.atomic():
            event = _event(call, budget.pk)
            event.save(force_insert=True)
    except IntegrityError:
        replay = _replay(project, call.idempotency_key, call.fingerprint, budget) if call.idempotency_key else None
        if replay is None:
            raise
        return replay
    grants_pay(event=event, budget=budget, limits=limits, grants=grants)
    _add_spend(project=project, budget=budget, model=call.model, amount=call.amount, usage=call.usage)
    rollups_add_events(project, [event])
    limits_count({limit.pk: limit.unit for limit in limits}, call.need, at=event.created_at)
    budget.refresh_from_db()
    budget.grant_room = grants.room(Grant.Scope.USER, call.user_id)  # type: ignore[attr-defined]
    # period_start too: alerts are once per period, and a sweep may have just started a new one.
    project.refresh_from_db(fields=["current_spend", "held", "period_start"])
    budget.project = project
    counted = tuple(replace(grants.state(LimitState.of_limit(limit)), used=limit.used + call.need.of(limit.unit))
                    for limit in limits)
    return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project),
                        model_costs=model_costs(budget), limits=counted,
                        limit_starts=tuple(limit.window_start for limit in limits))


def with_budget_ceiling(figures: list[Figures], budget: UserBudget) -> list[Figures]:
    """Levels' figures with the user's cap as its ceiling (budget_ceiling: with its grants)."""
    return [(level, budget_ceiling(budget), spend, held, duration, resets_at) if level.scope == "user"
            else (level, cap, spend, held, duration, resets_at)
            for level, cap, spend, held, duration, resets_at in figures]


def _admit(project: Project, figures: Any, amount: Decimal, limits: list[LimitState], need: Need) -> None:
    """Every hard level and limit has room, or BudgetExceeded naming the first without (the budget and
    the cap first); all of them are locked by the caller."""
    try:
        check_figures(figures, amount)
        limits_check(limits, need)
    except BudgetExceeded as exc:
        metrics.budget_exceeded(project.name, exc.scope)
        raise


def limits_count(units: dict[int, str], need: Need, *, at: datetime) -> None:
    """Add what a call used to Limit rows (id → unit) in one statement; the caller holds their locks."""
    if not units:
        return
    Limit.objects.filter(pk__in=sorted(units)).update(used=F("used") + Case(
        When(unit=Limit.Unit.USD, then=money(need.usd)),
        When(unit=Limit.Unit.TOKENS, then=money(Decimal(need.tokens))),
        default=money(Decimal(need.requests)), output_field=MoneyField(),
    ), updated_at=at)


def _add_spend(*, project: Project, budget: UserBudget, model: str, amount: Decimal, usage: Usage) -> None:
    """Increment spend with F(): concurrent calls add up, none is lost."""
    at = utcnow()
    Project.objects.filter(pk=project.pk).update(current_spend=F("current_spend") + money(amount))
    UserBudget.objects.filter(pk=budget.pk).update(current_spend=F("current_spend") + money(amount), updated_at=at)
    increments = {
        "spend": F("spend") + money(amount),
        "prompt_tokens": F("prompt_tokens") + usage.prompt_tokens,
        "completion_tokens": F("completion_tokens") + usage.completion_tokens,
    }
    if not ModelSpend.objects.filter(budget_id=budget.pk, model=model).update(**increments):
        try:
            with transaction.atomic():
                ModelSpend.objects.create(
                    budget_id=budget.pk, model=model, spend=amount,
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                )
        except IntegrityError:
            ModelSpend.objects.filter(budget_id=budget.pk, model=model).update(**increments)


def _replay(project: Project, key: str, fingerprint: str, budget: UserBudget) -> CostRecorded | None:
    event = CostEvent.objects.filter(project=project, idempotency_key=key).first()
    if event is None:
        return None
    if event.request_fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request")
    return CostRecorded(event=event, budget=budget, created=False, exceeded=exceeded_scope(budget, project),
                        model_costs=model_costs(budget))


# PostgreSQL: a record is one statement. Outside a transaction it runs in autocommit: one round trip,
# and the rows' locks are held only while the server runs it and commits, never across a round trip.
# Its CTEs, in lock order: the project row locked (`pl`), the user's budget (`bl`, locked too with
# `enforce`), the applicable limits (`ll`, found with the user's team, locked by id with `enforce`),
# the verdict (`ok`: "due" when a period or a window must start first, "refused" when an enforced call
# does not fit, else "go"), then the ledger row and everything derived from it: the three spend
# increments, the four daily rollups (services.rollups) and the limits' `used`. Only a "go" inserts
# the ledger row, and every write is conditional on that row: a refusal, a due period or a repeated
# Idempotency-Key writes nothing.
# How every statement of the hot path begins (a record here, a reservation in services.reservations):
# the project row locked (`pl`), the user's budget (`bl`), the applicable limits (`ll`: /*limits*/, the
# effective amount with the temporary raises, and what the call needs of each, `need`), in the one lock
# order; the budget's and the limits' rows are locked too where /*lock budget*/ and /*lock limits*/ say.
LOCKED_CALL = """
WITH pl AS MATERIALIZED (
    SELECT current_spend, held, max_budget, period_start, next_reset_at, duration
    FROM budgets_project WHERE id = %(project)s FOR NO KEY UPDATE
), bl AS MATERIALIZED (
    SELECT b.id, b.total_budget, b.current_spend, b.held, b.duration, b.duration_days, b.period_start,
           b.next_reset_at, b.created_at, b.updated_at, b.granted
    FROM budgets_userbudget b, pl WHERE b.project_id = %(project)s AND b.user_id = %(user)s/*lock budget*/
), ll AS MATERIALIZED (
    SELECT l.id, l.scope, l.subject, l.model, l.unit, l."window", l.mode, l.amount + l.raised AS amount, l.used,
           l.held, l.resets_at, l.window_start, l.raised, l.raises_end_at, l.granted, l.grace_percent,
           CASE l.unit WHEN 'usd' THEN %(amount)s WHEN 'tokens' THEN %(tokens)s ELSE 1 END AS need
    FROM budgets_limit l, bl WHERE l.id IN (SELECT x.id FROM (/*limits*/) x) ORDER BY l.id/*lock limits*/
)
-- Then the grants (services.grants) of the user and of the team whose limits apply, locked after the
-- limits (the join with `ll` makes them wait for it), what each has left, and each scope's pool.
, gl AS MATERIALIZED (
    SELECT g.id, g.scope, g.amount - g.used AS rest, g.priority, g.expires_at
    FROM budgets_grant g, (SELECT count(*) FROM ll) n
    WHERE g.project_id = %(project)s AND g.voided_at IS NULL AND g.used < g.amount
      AND (g.expires_at IS NULL OR g.expires_at > %(at)s)
      AND ((g.scope = 'user' AND g.subject = %(user)s)
           OR (g.scope = 'team' AND g.subject IN (SELECT x.subject FROM ll x WHERE x.scope = 'team')))
    ORDER BY g.id FOR NO KEY UPDATE OF g
), pool AS MATERIALIZED (
    SELECT COALESCE(SUM(rest) FILTER (WHERE scope = 'user'), 0) AS u,
           COALESCE(SUM(rest) FILTER (WHERE scope = 'team'), 0) AS t FROM gl
)"""
# Its figures in a statement's answer: the project's, the budget's (both as read under the locks) and
# what the user's grants have left (before the call).
LOCKED_FIGURES = """pl.current_spend, pl.held, pl.max_budget, pl.period_start, pl.next_reset_at, pl.duration,
       bl.id, bl.total_budget, bl.current_spend, bl.held, bl.duration, bl.duration_days, bl.period_start,
       bl.next_reset_at, bl.created_at, bl.updated_at, bl.granted, (SELECT u FROM pool)"""


def grant_room(row: str, pool: str = "pool") -> str:
    """SQL: what the grants of a limit row's subject have left, when they extend it (selectors.grants)."""
    return (f"CASE WHEN {EXTENDED_SQL.replace('x.', row + '.')} THEN CASE {row}.scope WHEN 'user' THEN {pool}.u "
            f"ELSE {pool}.t END ELSE 0 END")


# SQL: what a hard limit row of `ll` admits up to (LimitState.ceiling): its effective amount, its grace and
# the grants (what they paid this window and what they have left).
CEILING = ("(ll.amount + COALESCE(ll.amount * ll.grace_percent / 100, 0) + ll.granted + "
           + grant_room("ll") + ")")
# SQL: the user's budget has no room for the call (with its grants; an amount of 0 once it is used up).
BUDGET_FULL = """CASE WHEN %(amount)s = 0 THEN bl.current_spend + bl.held >= bl.total_budget + bl.granted + pool.u
                 ELSE bl.current_spend + bl.held + %(amount)s > bl.total_budget + bl.granted + pool.u END"""


def limits_json(*values: str) -> str:
    """The limits (`ll`) as one jsonb text, in id order, for limit_states; each of `values` is what a column
    is after the statement's write (e.g. `used=COALESCE(l.used, ll.used)`), the others as read."""
    columns = {"used": "ll.used", "held": "ll.held", "granted": "ll.granted", "room": grant_room("ll")}
    columns.update(dict(value.split("=", 1) for value in values))
    return ("(SELECT jsonb_agg(jsonb_build_array(ll.id, ll.scope, ll.subject, ll.model, ll.unit, ll.\"window\", "
            f"ll.mode, ll.amount::text, ({columns['used']})::text, ({columns['held']})::text, ll.resets_at, "
            f"ll.window_start, ll.raised::text, ll.raises_end_at, ({columns['granted']})::text, ll.grace_percent, "
            f"({columns['room']})::text) ORDER BY ll.id)::text FROM pool, ll LEFT JOIN l ON l.id = ll.id)")


def locked_call(limits_sql: str, *, lock: bool) -> str:
    """LOCKED_CALL for a shape of the limits' query, the budget's and the limits' rows locked or not."""
    return (LOCKED_CALL.replace("/*limits*/", limits_sql)
            .replace("/*lock budget*/", " FOR NO KEY UPDATE OF b" if lock else "")
            .replace("/*lock limits*/", " FOR NO KEY UPDATE OF l" if lock else ""))


def locked_budget(project: Project, user_id: str, row: Sequence[Any]) -> UserBudget:
    """The project's (set on `project`) and the budget's figures of LOCKED_FIGURES in a row; the budget
    carries `grant_room`, what the user's grants have left."""
    (project.current_spend, project.held, project.max_budget, project.period_start, project.next_reset_at,
     project.duration, budget_id, total, spend, held, duration, days, period_start, next_reset_at, created_at,
     updated_at, granted, room) = row
    budget = UserBudget(pk=budget_id, project=project, user_id=user_id, total_budget=total, current_spend=spend,
                        held=held, duration=duration, duration_days=days, period_start=period_start,
                        next_reset_at=next_reset_at, created_at=created_at, updated_at=updated_at, granted=granted)
    budget.grant_room = room  # type: ignore[attr-defined]
    return budget


def refuse(budget: UserBudget, amount: Decimal, states: Sequence[LimitState], need: Need) -> None:
    """BudgetExceeded for a call a statement refused, from the figures it read under the locks (the
    budget and its project first, then the limits); AssertionError if they admit it after all."""
    project = budget.project
    project_level, user_level = levels_of(project, budget)
    _admit(project, [
        (project_level, project.max_budget, project.current_spend, project.held, project.duration,
         project.next_reset_at),
        (user_level, budget_ceiling(budget), budget.current_spend, budget.held, budget.duration,
         budget.next_reset_at),
    ], amount, list(states), need)
    raise AssertionError("the statement refused a call that every level admits")


# PostgreSQL: a record is one statement. Outside a transaction it runs in autocommit: one round trip,
# and the rows' locks are held only while the server runs it and commits, never across a round trip.
# Its CTEs: LOCKED_CALL (the budget and the limits locked too with `enforce`), the verdict (`ok`: "due"
# when a period or a window must start first, "refused" when an enforced call does not fit, else "go"),
# then the ledger row and everything derived from it: the three spend increments, the four daily
# rollups (services.rollups) and the limits' `used`. Only a "go" inserts the ledger row, and every write
# is conditional on that row: a refusal, a due period or a repeated Idempotency-Key writes nothing.
_RECORD = """, ok AS MATERIALIZED (
    SELECT bl.id AS budget_id, CASE
        WHEN pl.next_reset_at <= %(at)s OR bl.next_reset_at <= %(at)s
             OR EXISTS (SELECT 1 FROM ll WHERE ll.resets_at <= %(at)s OR ll.raises_end_at <= %(at)s) THEN 'due'
        WHEN %(enforce)s AND (""" + BUDGET_FULL + """
            OR CASE WHEN %(amount)s = 0 THEN pl.current_spend + pl.held >= pl.max_budget
                    ELSE pl.current_spend + pl.held + %(amount)s > pl.max_budget END
            OR EXISTS (SELECT 1 FROM ll WHERE ll.mode = 'hard' AND ll.need > 0
                       AND ll.used + ll.held + ll.need > """ + CEILING + """)) THEN 'refused'
        ELSE 'go' END AS verdict
    FROM pl, bl, pool
), pay AS MATERIALIZED (
    -- What the grants pay of the call: per scope, its overflow of the extended limits (the most of any),
    -- at most what they have left; then per grant, in the order they are used (gw: what those before had).
    SELECT LEAST(pool.u, GREATEST(0, LEAST(%(amount)s, GREATEST(
               bl.current_spend - bl.granted + %(amount)s - bl.total_budget,
               (SELECT MAX(x.used - x.granted + %(amount)s - x.amount) FROM ll x
                WHERE x.scope = 'user' AND """ + EXTENDED_SQL + """))))) AS u,
           LEAST(pool.t, GREATEST(0, LEAST(%(amount)s, COALESCE(
               (SELECT MAX(x.used - x.granted + %(amount)s - x.amount) FROM ll x
                WHERE x.scope = 'team' AND """ + EXTENDED_SQL + """), 0)))) AS t
    FROM bl, pool
), gw AS (
    SELECT gl.id, LEAST(gl.rest, GREATEST(0, CASE gl.scope WHEN 'user' THEN pay.u ELSE pay.t END
               - (SUM(gl.rest) OVER (PARTITION BY gl.scope ORDER BY gl.priority, gl.expires_at NULLS LAST, gl.id)
                  - gl.rest))) AS take
    FROM gl, pay
), ev AS (
    INSERT INTO budgets_costevent (project_id, budget_id, user_id, model, prompt_tokens, completion_tokens,
        cached_tokens, cache_creation_tokens, cost, source, idempotency_key, request_fingerprint, created_at, tags,
        api_key_id)
    SELECT %(project)s, ok.budget_id, %(user)s, %(model)s, %(prompt)s, %(completion)s, %(cached)s, %(creation)s,
        %(amount)s, %(source)s, %(key)s, %(fingerprint)s, %(at)s, %(tags)s, %(api_key)s
    FROM ok WHERE ok.verdict = 'go'
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
), p AS (
    UPDATE budgets_project SET current_spend = current_spend + %(amount)s
    WHERE id = %(project)s AND EXISTS (SELECT 1 FROM ev) RETURNING current_spend
), b AS (
    UPDATE budgets_userbudget SET current_spend = current_spend + %(amount)s, granted = granted + pay.u,
        updated_at = %(at)s
    FROM pay WHERE id = (SELECT budget_id FROM ok) AND EXISTS (SELECT 1 FROM ev) RETURNING current_spend
), gp AS (
    UPDATE budgets_grant t SET used = t.used + gw.take FROM gw
    WHERE t.id = gw.id AND gw.take > 0 AND EXISTS (SELECT 1 FROM ev) RETURNING t.id, gw.take
), gu AS (
    INSERT INTO budgets_grantuse (event_id, grant_id, amount) SELECT ev.id, gp.id, gp.take FROM ev, gp RETURNING 1
), m AS (
    INSERT INTO budgets_modelspend AS s (budget_id, model, spend, prompt_tokens, completion_tokens)
    SELECT ok.budget_id, %(model)s, %(amount)s, %(prompt)s, %(completion)s FROM ok WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (budget_id, model) DO UPDATE SET spend = s.spend + EXCLUDED.spend,
        prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens
    RETURNING spend
), l AS (
    UPDATE budgets_limit t SET used = t.used + CASE t.unit WHEN 'usd' THEN %(amount)s WHEN 'tokens' THEN %(tokens)s
        ELSE 1 END, granted = t.granted + """ + grant_room("t", "pay") + """, updated_at = %(at)s
    FROM pay WHERE t.id = ANY(ARRAY(SELECT ll.id FROM ll)) AND EXISTS (SELECT 1 FROM ev)
    RETURNING t.id, t.used, t.granted
)"""
# The rollups' upserts, one per grain of services.rollups (a new grain or column is added there only).
_ROLLUP_VALUES = {"day": "%(day)s", "month": "%(month)s", "user_id": "%(user)s", "model": "%(model)s",
                  "spend": "%(amount)s", "events": "1", "prompt_tokens": "%(prompt)s",
                  "completion_tokens": "%(completion)s", "cached_tokens": "%(cached)s"}


def _rollup_cte(name: str, grain: Grain) -> str:
    keys = ("project_id", grain.column, *grain.keys)
    sums = ("spend", "events", *(TOKENS if grain.tokens else ()))
    values = ["%(project)s", *(_ROLLUP_VALUES[column] for column in (*keys[1:], *sums))]
    return (
        f", {name} AS (\n    INSERT INTO {grain.table} AS d ({', '.join(keys + sums)})\n"
        f"    SELECT {', '.join(values)} WHERE EXISTS (SELECT 1 FROM ev)\n"
        f"    ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{column} = d.{column} + EXCLUDED.{column}" for column in sums) + "\n    RETURNING 1\n)"
    )


_RECORD += "".join(_rollup_cte(f"r{index}", grain) for index, grain in enumerate(GRAINS))
# One row: the verdict, what the write returned, the figures read under the locks (for a refusal and the
# answer) and the user's spend per model before this call; the limits after it (or as read, without a write).
_RECORD += """
SELECT ok.verdict, ev.id, p.current_spend, b.current_spend, m.spend, CASE WHEN ev.id IS NULL THEN 0 ELSE pay.u END,
       """ + LOCKED_FIGURES + """,
       (SELECT COALESCE(jsonb_object_agg(s.model, s.spend::text), '{}'::jsonb)::text
        FROM budgets_modelspend s WHERE s.budget_id = bl.id),
       """ + limits_json("used=COALESCE(l.used, ll.used)", "granted=COALESCE(l.granted, ll.granted)",
                         "room=" + grant_room("ll") + " - CASE WHEN l.id IS NULL THEN 0 ELSE "
                         + grant_room("ll", "pay") + " END") + """
FROM pl, bl, pay, ok LEFT JOIN ev ON true LEFT JOIN p ON true LEFT JOIN b ON true LEFT JOIN m ON true
"""
_POSITIONAL = re.compile(r"(?<!%)%s")


def limits_query(scope: CallScope, *, hard_only: bool = False) -> tuple[str, dict[str, Any]]:
    """applicable_limits (the team found in the query) as SQL with named parameters, for a statement
    of the hot path (_RECORD here, a reservation's in services.reservations).

    Compiling the queryset costs more than the record's statement: it is compiled once per shape
    (a key or not, how many tags, a model or not, hard limits only or all) with stand-in values,
    which each call replaces.
    """
    shape = (bool(scope.key_name), len(scope.tags), bool(scope.model), hard_only)
    if shape not in _LIMITS_SQL:
        _LIMITS_SQL[shape] = _compile_limits_query(*shape)
    sql, roles = _LIMITS_SQL[shape]
    values: dict[Any, Any] = {_PROJECT: scope.project.pk, _USER: scope.user_id, _KEY: scope.key_name,
                              _MODEL: scope.model, **dict(zip(_TAGS, scope.tags, strict=False))}
    return sql, {f"limit{index}": values.get(role, role) if isinstance(role, str | int) else role
                 for index, role in enumerate(roles)}


# Stand-ins for a call's values in the compiled query (never sent: each is replaced by the call's).
_PROJECT, _USER, _KEY, _MODEL = -7_340_032_001, "\x00user", "\x00key", "\x00model"
_TAGS = tuple(f"\x00tag{index}" for index in range(MAX_TAGS))
_LIMITS_SQL: dict[tuple[bool, int, bool, bool], tuple[str, list[Any]]] = {}


def _compile_limits_query(key: bool, tags: int, model: bool, hard_only: bool) -> tuple[str, list[Any]]:
    """The applicable limits' SQL of a shape, with named parameters, and what each parameter is
    (a stand-in, replaced per call, or a constant of the query)."""
    stand_in = CallScope(project=Project(pk=_PROJECT), user_id=_USER, model=_MODEL if model else "",
                         key_name=_KEY if key else None, tags=_TAGS[:tags])
    sql, params = (applicable_limits_finding_team(stand_in, hard_only=hard_only).values_list("id")
                   .query.sql_with_params())
    names = iter(range(len(params)))
    return _POSITIONAL.sub(lambda _: f"%(limit{next(names)})s", sql), list(params)


def _record_sql(limits_sql: str) -> str:
    """_RECORD for a shape of the limits' query; the budget's, the limits' and the grants' rows are locked
    too (in that order, after the project's): admission, and what the grants pay, read figures no one may
    change meanwhile."""
    return locked_call(limits_sql, lock=True) + _RECORD


def _record_in_one_statement(call: Call) -> CostRecorded | None:
    """Record with one statement; None when the project's, the user's or a limit's period must start first
    (the portable path starts it). An enforced call without room raises BudgetExceeded and writes nothing."""
    project, user_id, usage, amount = call.project, call.user_id, call.usage, call.amount
    at = utcnow()
    limits_sql, limits_params = limits_query(call.scope())
    day = local_day(project.timezone, at)
    params = {
        "project": project.pk, "user": user_id, "model": call.model, "prompt": usage.prompt_tokens,
        "completion": usage.completion_tokens, "cached": usage.cached_tokens, "creation": usage.cache_creation_tokens,
        "amount": amount, "source": call.source, "key": call.idempotency_key or None, "fingerprint": call.fingerprint,
        "at": at, "day": day, "month": day.replace(day=1), "tags": tags_text(call.tags), "api_key": call.api_key_id,
        "tokens": call.need.tokens, "enforce": call.enforce, **limits_params,
    }
    with prepared_cursor() as cursor:
        cursor.execute(_record_sql(limits_sql), params)
        row = cursor.fetchone()
    if row is None:
        raise UnknownUser(f"user {user_id!r} has no budget in project {project.name!r}")
    verdict, event_id, project_spend, budget_spend, model_spend, paid, *figures, costs, limits = row
    budget = locked_budget(project, user_id, figures)
    if verdict == "due":
        return None  # the portable path starts the new period first (rare: the sweep usually has)
    states, starts = limit_states(limits)
    if verdict == "refused":
        refuse(budget, amount, states, call.need)
    if event_id is None:  # the Idempotency-Key was used before: answer as the first time
        replay = _replay(project, call.idempotency_key or "", call.fingerprint, budget)
        if replay is None:
            raise IdempotencyConflict("this Idempotency-Key is being used by a request in flight; retry")
        return replay
    project.current_spend, budget.current_spend, budget.updated_at = project_spend, budget_spend, at
    budget.granted += paid
    budget.grant_room -= paid  # type: ignore[attr-defined]
    event = _event(call, budget.pk, pk=event_id, created_at=at)
    # The spend per model before this call (jsonb as text, amounts as exact strings), then this call's.
    model_costs = {name: Decimal(value) for name, value in json.loads(costs).items()} | {call.model: model_spend}
    return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project),
                        model_costs=model_costs, limits=states, limit_starts=starts)


def limit_states(rows_text: str | None) -> tuple[tuple[LimitState, ...], tuple[datetime, ...]]:
    """The limits as a statement gave them (jsonb text, amounts as exact strings; `amount` the effective
    limit, with its temporary raises), and their windows' starts."""
    if not rows_text:
        return (), ()
    rows = json.loads(rows_text)

    def instant(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text) if text else None

    states = tuple(
        LimitState(id=pk, scope=scope, subject=subject, model=model or None, unit=unit, window=window, mode=mode,
                   limit=Decimal(amount), used=Decimal(used), held=Decimal(held), resets_at=instant(resets_at),
                   window_start=instant(window_start), raised=Decimal(raised), raises_end_at=instant(raises_end_at),
                   granted=Decimal(granted), grace_percent=grace, grant_room=Decimal(room))
        for pk, scope, subject, model, unit, window, mode, amount, used, held, resets_at, window_start, raised,
        raises_end_at, granted, grace, room in rows
    )
    return states, tuple(datetime.fromisoformat(row[11]) for row in rows)


# --- a hosted merge: many users at once, set-based ----------------------------------------------


EVENT_COLUMNS = ("project_id", "budget_id", "user_id", "model", "cost", "source", "created_at")


class SpendAdded(NamedTuple):
    """What a merge adds to one budget's spend (negative for a client reset), for the alert check."""

    budget_id: int
    user_id: str
    period_start: datetime
    limit: Decimal
    before: Decimal
    delta: Decimal


class BudgetChange(NamedTuple):
    """An existing budget's spend delta, with the hosted baseline written in the same row update."""

    budget_id: int
    delta: Decimal
    baseline: dict[str, Any]
    period_start: datetime


@dataclass
class Batch:
    """Everything a merge adds, gathered so that each table gets one bulk write (`merge`)."""

    project: Project
    at: datetime
    events: list[tuple[Any, ...]] = field(default_factory=list)  # EVENT_COLUMNS
    budgets: list[BudgetChange] = field(default_factory=list)  # existing budgets
    model_deltas: list[tuple[int, str, Decimal]] = field(default_factory=list)  # existing budgets' models
    reset_ids: list[int] = field(default_factory=list)  # budgets the client reset
    new_model_spend: list[tuple[int, str, Decimal]] = field(default_factory=list)  # budgets just inserted
    added: list[SpendAdded] = field(default_factory=list)

    def spend(self, budget_id: int, user_id: str, growth: dict[str, Decimal]) -> None:
        """One ledger event per model that grew."""
        self.events += [(self.project.pk, budget_id, user_id, model, amount, CostEvent.Source.HOSTED, self.at)
                        for model, amount in sorted(growth.items())]


def merge(batch: Batch) -> None:
    """Write a merge: budgets' spend and baselines, spend per model, ledger rows with their rollups,
    the project's spend, and alerts. The caller holds the project's lock and the budgets' rows."""
    project = batch.project
    budgets_update(batch.budgets, batch.at)
    _model_spend_add(batch.model_deltas)
    if batch.reset_ids:  # what the client's reset took to zero and no native call ever used
        ModelSpend.objects.filter(budget_id__in=batch.reset_ids, spend__lte=0, prompt_tokens=0,
                                  completion_tokens=0).delete()
    insert_rows(ModelSpend, ("budget_id", "model", "spend"), batch.new_model_spend)
    if batch.events:
        insert_rows(CostEvent, EVENT_COLUMNS, batch.events)
        rollups_add_events(project, _instances(CostEvent, EVENT_COLUMNS, batch.events))
        _merge_limits(project, batch.events, batch.at)
    total = sum((added.delta for added in batch.added), ZERO)
    if total:
        Project.objects.filter(pk=project.pk).update(
            current_spend=Greatest(F("current_spend") + money(total), money(ZERO)))
    if batch.added:
        _alert(project, batch.added, total)


# A merge's growth (dollars; the hosted protocol has no tokens, no key and no tags, and growth is no request)
# counts against the limits of the user, the user's team, the project and the model.
_MERGE_SCOPES = (Limit.Scope.PROJECT, Limit.Scope.TEAM, Limit.Scope.USER)


def _merge_limits(project: Project, events: list[tuple[Any, ...]], at: datetime) -> None:
    """Add the merge's ledger rows (EVENT_COLUMNS) to the dollar limits they fall under, set-based:
    one read of the project's limits, one of the teams when a team limit exists, one update per limit."""
    limits = list(Limit.objects.filter(project=project, scope__in=_MERGE_SCOPES, unit=Limit.Unit.USD)
                  .values_list("id", "scope", "subject", "model"))
    if not limits:
        return
    users = {event[2] for event in events}
    teams: dict[str, str] = {}
    if any(scope == Limit.Scope.TEAM for _, scope, _, _ in limits):
        teams = dict(TeamMember.objects.filter(project=project, user_id__in=users)
                     .values_list("user_id", "team__name"))
    names = {model: limit_model(model) for model in {event[3] for event in events}}
    added: dict[int, Decimal] = defaultdict(Decimal)
    for _, _, user_id, model, amount, _, _ in events:
        for limit_id, scope, subject, limit_model_name in limits:
            if limit_model_name and limit_model_name != names[model]:
                continue
            if (scope == Limit.Scope.PROJECT or (scope == Limit.Scope.USER and subject == user_id)
                    or (scope == Limit.Scope.TEAM and subject == teams.get(user_id))):
                added[limit_id] += amount
    # The caller holds the project's and the budgets' locks: the limits now, by id, then their windows.
    counted = []
    for limit in limits_current(project, limits_lock(added), at):
        if added[limit.pk]:
            Limit.objects.filter(pk=limit.pk).update(used=F("used") + money(added[limit.pk]), updated_at=at)
            counted.append((replace(LimitState.of_limit(limit), used=limit.used + added[limit.pk]), added[limit.pk],
                            limit.window_start))
    alerts.limits_counted(project=project, counted=counted)


def budgets_update(rows: Sequence[BudgetChange], at: datetime) -> None:
    """Spend deltas (never below 0) and new hosted baselines of existing budgets; a zero delta
    writes only the baseline (what get_budget served)."""
    if not rows:
        return
    if _postgres():
        stage = _stage("id bigint, delta numeric, baseline jsonb, period_start timestamptz",
                       ((pk, delta, json.dumps(baseline), start) for pk, delta, baseline, start in rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {UserBudget._meta.db_table} AS b SET current_spend = GREATEST(b.current_spend + v.delta, 0), "
                "hosted_model_cost = v.baseline, hosted_period_start = v.period_start, "
                "updated_at = CASE WHEN v.delta <> 0 THEN %s ELSE b.updated_at END "
                f"FROM {stage} AS v WHERE b.id = v.id",
                [at],
            )
        return
    for budget_id, delta, baseline, period_start in rows:  # embedded SQLite: small projects
        fields: dict[str, Any] = {"hosted_model_cost": baseline, "hosted_period_start": period_start}
        if delta:
            fields.update(current_spend=Greatest(F("current_spend") + money(delta), money(ZERO)), updated_at=at)
        UserBudget.objects.filter(pk=budget_id).update(**fields)


def _model_spend_add(deltas: list[tuple[int, str, Decimal]]) -> None:
    if not deltas:
        return
    if not _postgres():
        for budget_id, model, amount in deltas:
            spend = Greatest(F("spend") + money(amount), money(ZERO))
            if not ModelSpend.objects.filter(budget_id=budget_id, model=model).update(spend=spend) and amount > 0:
                ModelSpend.objects.create(budget_id=budget_id, model=model, spend=amount)
        return
    table = ModelSpend._meta.db_table
    stage = _stage("budget_id bigint, model text, delta numeric", deltas)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} AS ms (budget_id, model, spend, prompt_tokens, completion_tokens) "
            f"SELECT budget_id, model, delta, 0, 0 FROM {stage} WHERE delta > 0 ORDER BY budget_id, model "
            "ON CONFLICT (budget_id, model) DO UPDATE SET spend = ms.spend + EXCLUDED.spend"
        )
        # What a reset takes away was added to that row in this period: the row is there.
        cursor.execute(
            f"UPDATE {table} AS ms SET spend = GREATEST(ms.spend + v.delta, 0) FROM {stage} AS v "
            "WHERE v.delta < 0 AND ms.budget_id = v.budget_id AND ms.model = v.model"
        )


def _alert(project: Project, added: list[SpendAdded], total: Decimal) -> None:
    """Alert rows for thresholds the merge carried a user or the project across (a cheap check first)."""
    thresholds = alerts.thresholds_of(project)
    if not thresholds:
        return
    project.refresh_from_db(fields=["current_spend", "period_start"])
    for change in added:
        after = max(change.before + change.delta, ZERO)
        if change.delta > 0 and alerts.crossed_thresholds(before=change.before, after=after, limit=change.limit,
                                                          thresholds=thresholds):
            budget = UserBudget(pk=change.budget_id, project=project, user_id=change.user_id,
                                total_budget=change.limit, current_spend=after, period_start=change.period_start)
            # The project's own crossing is checked once below, over the whole merge.
            alerts.spend_recorded(project=_without_cap(project), budget=budget, amount=change.delta)
    if total > 0 and alerts.crossed_thresholds(before=project.current_spend - total, after=project.current_spend,
                                              limit=project.max_budget, thresholds=thresholds):
        # A budget of 0 crosses no user threshold: only the project's are checked.
        nobody = UserBudget(project=project, user_id="", total_budget=ZERO, current_spend=ZERO,
                            period_start=project.period_start)
        alerts.spend_recorded(project=project, budget=nobody, amount=total)


def _without_cap(project: Project) -> Project:
    copy = Project(pk=project.pk, name=project.name, alert_thresholds=project.alert_thresholds,
                   alert_webhook_url=project.alert_webhook_url, alert_email=project.alert_email,
                   slack_webhook_url=project.slack_webhook_url,
                   current_spend=project.current_spend, period_start=project.period_start, max_budget=None)
    return copy


# --- the rollups: what ledger rows add to their days (the grains are services.rollups') ---------


def rollups_add_events(project: Project, events: Iterable[CostEvent]) -> int:
    """Add ledger rows just inserted (in this transaction) to their days; returns the rows touched."""
    events = list(events)
    if _postgres() and len(events) > BULK_EVENTS:
        return _pg_add_in_bulk(project, events)
    touched = 0
    for grain in GRAINS:
        totals: dict[Key, Totals] = defaultdict(Totals)
        for event in events:
            totals[grain.key(project, event)].add(event)
        items = sorted(totals.items())  # one order, so concurrent writers lock rows alike
        if _postgres():
            for start in range(0, len(items), ROLLUP_BATCH):
                _pg_upsert(grain, items[start: start + ROLLUP_BATCH])
        else:
            for key, total in items:
                _orm_upsert(grain, key, total)
        touched += len(items)
    return touched


# Many events at once (a hosted save of thousands of users): COPY the finest sums into a temporary
# table, then one INSERT ... SELECT ... GROUP BY ... ON CONFLICT per grain. Statements of thousands
# of VALUES cost more to build and parse than the rows do to write.
BULK_EVENTS = 100
_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS rollup_stage (
    day date, user_id text, model text, spend numeric, events bigint, prompt_tokens bigint,
    completion_tokens bigint, cached_tokens bigint
) ON COMMIT DELETE ROWS
"""
_BUCKET = {"day": "day", "month": "date_trunc('month', day)::date"}


def _pg_add_in_bulk(project: Project, events: list[CostEvent]) -> int:
    totals: dict[Key, Totals] = defaultdict(Totals)
    for event in events:
        totals[GRAINS[0].key(project, event)].add(event)
    with connection.cursor() as cursor:
        cursor.execute(_STAGE)
        cursor.execute("TRUNCATE rollup_stage")
        with cursor.cursor.copy("COPY rollup_stage FROM STDIN") as copy:
            for (_, day, user_id, model), total in totals.items():
                copy.write_row((day, user_id, model, *total.values(tokens=True)))
        touched = 0
        for grain in GRAINS:
            keys = (grain.column, *grain.keys)
            sums = ("spend", "events", *(TOKENS if grain.tokens else ()))
            group = ", ".join([_BUCKET[grain.column], *grain.keys])
            cursor.execute(
                f"INSERT INTO {grain.table} AS d (project_id, {', '.join(keys + sums)}) "
                f"SELECT %s, {group}, {', '.join(f'SUM({name})' for name in sums)} FROM rollup_stage "
                f"GROUP BY {group} ORDER BY {group} "  # one order, so concurrent writers lock rows alike
                f"ON CONFLICT (project_id, {', '.join(keys)}) DO UPDATE SET "
                + ", ".join(f"{name} = d.{name} + EXCLUDED.{name}" for name in sums),
                [project.pk],
            )
            touched += cursor.rowcount
    return touched


def _pg_upsert(grain: Grain, items: list[tuple[Key, Totals]]) -> None:
    keys = ("project_id", grain.column, *grain.keys)
    sums = ("spend", "events", *(TOKENS if grain.tokens else ()))
    row = "(" + ", ".join(["%s"] * len(keys) + ["%s::numeric"] + ["%s"] * (len(sums) - 1)) + ")"
    params: list[Any] = []
    for key, total in items:
        params += [*key, *total.values(grain.tokens)]
    sql = (
        f"INSERT INTO {grain.table} AS d ({', '.join(keys + sums)}) VALUES {', '.join([row] * len(items))} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{name} = d.{name} + EXCLUDED.{name}" for name in sums)
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _orm_upsert(grain: Grain, key: Key, total: Totals) -> None:
    project_id, day, *own = key
    sums = dict(zip(("spend", "events", *(TOKENS if grain.tokens else ())), total.values(grain.tokens), strict=True))
    increments = {name: F(name) + (money(value) if name == "spend" else value) for name, value in sums.items()}
    match = {"project_id": project_id, grain.column: day, **dict(zip(grain.keys, own, strict=True))}
    rows = grain.model._default_manager.filter(**match)
    if rows.update(**increments):
        return
    try:
        with transaction.atomic():
            grain.model._default_manager.create(**match, **sums)
    except IntegrityError:  # created meanwhile by a concurrent writer
        rows.update(**increments)


# --- the demo seed: fabricated history in bulk ---------------------------------------------------


SEED_COLUMNS = ("project_id", "budget_id", "user_id", "model", "prompt_tokens", "completion_tokens", "cached_tokens",
                "cache_creation_tokens", "cost", "source", "request_fingerprint", "created_at")


class SeedQuery(NamedTuple):
    """A SELECT (PostgreSQL) that makes the ledger rows itself: SEED_COLUMNS, in that order, and params."""

    sql: str
    params: dict[str, Any]


def seed(project: Project, rows: Iterable[Sequence[Any]] | SeedQuery) -> int:
    """Fabricated ledger rows (SEED_COLUMNS), streamed or made by a SeedQuery in the database; then
    every derived number set from the ledger.

    Rollups are rebuilt, each budget's spend and ModelSpend rows come from the events of its current
    period, the project's from the events of the project's period. Returns how many rows went in.
    """
    with _references_checked_at_once(project):
        if isinstance(rows, SeedQuery):
            # One INSERT ... SELECT: the rows never leave the server (a million rows cost no Python).
            names = ", ".join(connection.ops.quote_name(CostEvent._meta.get_field(c).column)  # type: ignore[union-attr,arg-type]
                              for c in SEED_COLUMNS)
            with connection.cursor() as cursor:
                cursor.execute(f"INSERT INTO {CostEvent._meta.db_table} ({names}, tags) "
                               f"SELECT *, '' FROM ({rows.sql}) AS seed_rows", rows.params)
                written = cursor.rowcount
        else:
            # No tags: COPY leaves out columns not named, and the ledger's tags are "" (not NULL) when none.
            written = bulk_insert(CostEvent, (*SEED_COLUMNS, "tags"), ((*row, "") for row in rows))
        analyze(CostEvent)
        rollups_rebuild(project)
        _derive_spend(project)
    return written


@contextmanager
def _references_checked_at_once(project: Project) -> Iterator[None]:
    """On PostgreSQL, the seeded rows' foreign keys checked by a few queries instead of row by row.

    Each inserted row queues a check per foreign key, run at commit: for a million ledger rows and
    their rollups that is two and a half million index lookups and row locks. Where the role may set
    session_replication_role (a superuser, or GRANT SET ON PARAMETER), the rows go in without them,
    and the same is checked at once: the ledger's rows name the project and budgets that exist (the
    rollups and ModelSpend rows derived from them name only those), which are locked as the per-row
    checks lock them (FOR KEY SHARE). Elsewhere the checks run row by row, as always.
    """
    if not _postgres():
        yield
        return
    with connection.cursor() as cursor:
        try:
            with transaction.atomic():
                cursor.execute("SELECT current_setting('session_replication_role'), "
                               "set_config('session_replication_role', 'replica', true)")
                (role, _), = cursor.fetchall()
        except DatabaseError:  # not allowed: the checks run row by row at commit
            yield
            return
        yield  # on an error the transaction (or savepoint) is rolled back, and the setting with it
        cursor.execute("SELECT set_config('session_replication_role', %s, true)", [role])
        events = CostEvent._meta.db_table
        cursor.execute(
            f"SELECT count(*) FROM (SELECT id FROM {Project._meta.db_table} WHERE id = %(project)s FOR KEY SHARE) p",
            {"project": project.pk})
        missing = 1 - cursor.fetchone()[0]
        cursor.execute(
            f"SELECT count(*) FROM (SELECT b.id FROM {UserBudget._meta.db_table} b WHERE b.id IN "
            f"(SELECT DISTINCT budget_id FROM {events} WHERE project_id = %(project)s) FOR KEY SHARE) b",
            {"project": project.pk})
        locked = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(DISTINCT budget_id) FROM {events} WHERE project_id = %(project)s",
                       {"project": project.pk})
        missing += cursor.fetchone()[0] - locked
        if missing:
            raise IntegrityError(f"the seeded ledger names {missing} project or budget rows that do not exist")


def _derive_spend(project: Project) -> None:
    """Spend as the services would have left it, from the ledger, with set-based queries."""
    in_period = CostEvent.objects.filter(project=project, budget__isnull=False,
                                         created_at__gte=F("budget__period_start"))
    ModelSpend.objects.filter(budget__project=project).delete()
    ModelSpend.objects.bulk_create(
        (
            ModelSpend(budget_id=row["budget_id"], model=row["model"], spend=row["spend"],
                       prompt_tokens=row["prompt"], completion_tokens=row["completion"])
            for row in in_period.values("budget_id", "model").annotate(
                spend=MoneySum("cost"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        ),
        batch_size=COPY_BATCH,
    )
    per_budget = (
        ModelSpend.objects.filter(budget_id=OuterRef("pk")).order_by().values("budget_id")
        .annotate(total=Sum("spend")).values("total")
    )
    UserBudget.objects.filter(project=project).update(
        current_spend=Coalesce(Subquery(per_budget, output_field=MoneyField()), money(ZERO)),
    )
    total = CostEvent.objects.filter(project=project, created_at__gte=project.period_start).aggregate(
        total=MoneySum("cost"))["total"]
    Project.objects.filter(pk=project.pk).update(current_spend=total or ZERO)


# --- bulk rows: COPY on PostgreSQL, bulk_create elsewhere ----------------------------------------

_stage_count = 0


def _stage(columns: str, rows: Iterable[Sequence[Any]]) -> str:
    """A temporary table with `columns` ("name type, ..."), filled with COPY; dropped at commit."""
    global _stage_count
    _stage_count += 1
    name = f"ledger_stage_{_stage_count}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE {name} ({columns}) ON COMMIT DROP")
        with cursor.cursor.copy(f"COPY {name} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return name


def insert_rows(
    model: type[Any], columns: Sequence[str], rows: Sequence[Sequence[Any]], *, conflicts: Sequence[str] = (),
) -> list[tuple] | None:
    """Insert rows of `columns` (attnames); every other column takes its model default, evaluated once.

    On PostgreSQL through COPY; with `conflicts` (the unique columns) rows that conflict are
    skipped and (id, *conflicts) of the inserted rows are returned. Elsewhere bulk_create, and
    with `conflicts` None: which rows went in is not known.
    """
    if not rows:
        return []
    if not _postgres():
        model.objects.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows],
                                  batch_size=WRITE_BATCH, ignore_conflicts=bool(conflicts))
        return None if conflicts else []
    by_name = {f.attname: f for f in model._meta.concrete_fields if not f.primary_key}
    defaulted = [f for name, f in by_name.items() if name not in columns]
    texts: dict[int, tuple[Any, str | None]] = {}  # JSON by object: a value shared by many rows is written once

    def json_text(value: Any) -> str | None:
        if value is None:
            return None
        if id(value) not in texts:
            texts[id(value)] = (value, _json_text(value))  # the value kept: its id stays its own
        return texts[id(value)][1]

    # The values are plain for psycopg (Django's get_db_prep_save per value costs more than the
    # rest of the insert), but JSON, which COPY takes as its text.
    defaults = tuple(json_text(f.get_default()) if isinstance(f, JSONField) else f.get_default() for f in defaulted)
    json_slots = [index for index, name in enumerate(columns) if isinstance(by_name[name], JSONField)]

    def values(row: Sequence[Any]) -> tuple[Any, ...]:
        if json_slots:
            row = list(row)
            for index in json_slots:
                row[index] = json_text(row[index])
        return (*row, *defaults)

    quote = connection.ops.quote_name
    names = ", ".join(quote(f.column) for f in [*(by_name[name] for name in columns), *defaulted])
    table = quote(model._meta.db_table)
    with connection.cursor() as cursor:
        if not conflicts:
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(values(row))
            return []
        unique = ", ".join(quote(by_name[name].column) for name in conflicts)
        stage = f"ledger_stage_{model._meta.model_name}"
        cursor.execute(f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA")
        with cursor.cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
                       f"ON CONFLICT ({unique}) DO NOTHING RETURNING id, {unique}")
        inserted = cursor.fetchall()
        cursor.execute(f"DROP TABLE {stage}")
        return inserted


def _instances(model: type[Any], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Unsaved instances of rows, built positionally from defaults evaluated once (a third of the
    keyword __init__'s cost). The defaults are shared between instances: read them, do not mutate."""
    fields = model._meta.concrete_fields
    slot = {f.attname: index for index, f in enumerate(fields)}
    template = [None if f.primary_key else f.get_default() for f in fields]
    slots = [slot[name] for name in columns]
    instances = []
    for row in rows:
        values = template.copy()
        for index, value in zip(slots, row, strict=True):
            values[index] = value
        instances.append(model(*values))
    return instances


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)  # the C encoder: the values here are plain (str, numbers, dicts)
    except TypeError:
        return json.dumps(value, cls=DjangoJSONEncoder)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


def _copy_converter(field: models.Field) -> Any:
    """value → COPY text for one column, chosen once per column (not per value)."""
    if isinstance(field, models.JSONField):
        convert = lambda value: _escape(json.dumps(value))  # noqa: E731
    elif isinstance(field, models.DateTimeField):
        convert = datetime.isoformat
    elif isinstance(field, models.BooleanField):
        convert = lambda value: "t" if value else "f"  # noqa: E731
    elif isinstance(field, models.CharField | models.TextField):
        convert = _escape
    else:
        convert = str
    if field.null:
        return lambda value: "\\N" if value is None else convert(value)
    return convert


def bulk_insert(model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Insert plain rows (values in `columns` order, attnames): COPY on PostgreSQL, bulk_create elsewhere."""
    count = 0
    if _postgres():
        from psycopg.copy import QueuedLibpqWriter

        table = model._meta.db_table
        # `columns` are concrete fields (never reverse relations), whose column is set.
        names = ", ".join(connection.ops.quote_name(model._meta.get_field(c).column) for c in columns)  # type: ignore[union-attr,arg-type]
        converters = [_copy_converter(model._meta.get_field(c)) for c in columns]  # type: ignore[arg-type]
        with connection.cursor() as cursor:
            # The queued writer sends from a thread: PostgreSQL indexes one chunk while Python makes the next.
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN",
                                    writer=QueuedLibpqWriter(cursor.cursor)) as copy:
                lines: list[str] = []
                for row in rows:
                    lines.append("\t".join([convert(value) for convert, value in zip(converters, row, strict=True)]))
                    if len(lines) >= COPY_BATCH:
                        count += len(lines)
                        copy.write("\n".join(lines) + "\n")
                        lines = []
                if lines:
                    count += len(lines)
                    copy.write("\n".join(lines) + "\n")
        return count
    batch: list[models.Model] = []
    for row in rows:
        batch.append(model(**dict(zip(columns, row, strict=True))))
        if len(batch) >= COPY_BATCH:
            model.objects.bulk_create(batch)  # type: ignore[attr-defined]
            count += len(batch)
            batch = []
    model.objects.bulk_create(batch)  # type: ignore[attr-defined]
    return count + len(batch)


def analyze(*tables: type[models.Model]) -> None:
    """Fresh statistics after a bulk load, so the aggregate queries that follow plan well."""
    if _postgres():
        with connection.cursor() as cursor:
            for model in tables:
                cursor.execute(f"ANALYZE {model._meta.db_table}")


