"""Recording cost: the ledger row and the spend increments, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from .. import metrics, pricing
from ..codec import decimal_text
from ..errors import BudgetExceeded, IdempotencyConflict, UnknownUser
from ..fields import money
from ..models import CostEvent, ModelSpend, Project, UserBudget
from ..money import stored, to_money
from ..usage import Usage
from . import alerts
from .admission import check_figures, levels_admit, levels_of, lock_project, retry_on_conflict
from .resets import ensure_current_period
from .rollups import local_day, rollups_add_events


@dataclass(frozen=True)
class CostRecorded:
    event: CostEvent
    budget: UserBudget
    created: bool  # False for an idempotent retry: nothing new was recorded
    exceeded: str | None  # "user" or "project" when a budget is used up after this call
    model_costs: dict[str, Decimal] | None = None  # the user's spend per model after it, when known

    @property
    def budget_exceeded(self) -> bool:
        return self.exceeded is not None


def _no_room(spend: Decimal, held: Decimal, cap: Decimal, extra: Decimal) -> bool:
    # Spend that reached the cap is used up; a new call (with the open holds) may bring it up to the cap, not past.
    return spend >= cap if extra == 0 else spend + held + extra > cap


def exceeded_scope(budget: UserBudget, project: Project, extra: Decimal = Decimal(0)) -> str | None:
    """Which budget, if any, has no room left for `extra` more spend ("user" is named first).

    With `extra` 0: which budget's spend reached its cap. Otherwise open holds count too.
    """
    if _no_room(budget.current_spend, budget.held, budget.total_budget, extra):
        return "user"
    if project.max_budget is not None and _no_room(project.current_spend, project.held, project.max_budget, extra):
        return "project"
    return None


@dataclass(frozen=True)
class Verdict:
    """A budget check's answer: which budget has no room (None: allowed), why, and the room left."""

    scope: str | None
    reason: str | None
    room: Decimal


def admission_check(budget: UserBudget, project: Project, estimate: Decimal) -> Verdict:
    """May this user spend about `estimate` now? The user's budget and the project's cap, read without locks."""
    scope = exceeded_scope(budget, project, estimate)
    room = budget.remaining
    if project.max_budget is not None:
        room = min(room, project.max_budget - project.current_spend - project.held)
    reason = None
    if scope == "user":
        left = decimal_text(max(budget.remaining, Decimal(0)))
        reason = f"user {budget.user_id!r} has ${left} left of ${decimal_text(budget.total_budget)}"
    elif scope == "project" and project.max_budget is not None:
        left = decimal_text(max(project.max_budget - project.current_spend - project.held, Decimal(0)))
        reason = f"project {project.name!r} has ${left} left of its max_budget ${decimal_text(project.max_budget)}"
    return Verdict(scope=scope, reason=reason, room=room)


@retry_on_conflict
def cost_record(
    *, project: Project, user_id: str, usage: Usage, cost: Any = None, source: str,
    idempotency_key: str | None = None, fingerprint: str = "", enforce: bool = False,
) -> CostRecorded:
    """Record one call's cost in the ledger and add it to the user's and the project's spend.

    (The work is `_cost_record`, in a transaction of its own or a savepoint of the caller's.)
    """
    with transaction.atomic():
        return _cost_record(project=project, user_id=user_id, usage=usage, cost=cost, source=source,
                            idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce)


def _cost_record(
    *, project: Project, user_id: str, usage: Usage, cost: Any = None, source: str,
    idempotency_key: str | None = None, fingerprint: str = "", enforce: bool = False,
) -> CostRecorded:
    """Record one call's cost in the ledger and add it to the user's and the project's spend.

    `cost` None prices the usage from the price table (UnknownModel if the model has no price).
    With an idempotency key, a retry returns the first event and records nothing.
    With `enforce`, a call that the user's or the project's remaining budget (after open holds)
    has no room for raises BudgetExceeded instead (levels_admit, as reservations do).
    Locks: the project row first, then the user's (one order everywhere; see services.admission).
    """
    model = usage.model  # checked where the usage was read (validation.validate_model)
    # Rounded once to the stored 12 places, so the ledger, the spend and the answer agree.
    amount = stored(pricing.cost_of_usage(usage) if cost is None else to_money(cost, "cost"))

    if connection.vendor == "postgresql":
        recorded = _record_in_one_statement(
            project=project, user_id=user_id, usage=usage, model=model, amount=amount, source=source,
            idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce,
        )
        if recorded is not None:
            return _recorded(project, recorded, amount)
    recorded = _record_with_the_orm(
        project=project, user_id=user_id, usage=usage, model=model, amount=amount, source=source,
        idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce,
    )
    return _recorded(project, recorded, amount)


def _recorded(project: Project, recorded: CostRecorded, amount: Decimal) -> CostRecorded:
    """After a new ledger row: alert rows for crossed thresholds, and the metrics."""
    if recorded.created:
        alerts.spend_recorded(project=project, budget=recorded.budget, amount=amount)
        metrics.cost_recorded(project.name, recorded.event.model, amount)
    return recorded


def _record_with_the_orm(
    *, project: Project, user_id: str, usage: Usage, model: str, amount: Decimal, source: str,
    idempotency_key: str | None, fingerprint: str, enforce: bool,
) -> CostRecorded:
    """Any database: a statement per row (SQLite, and PostgreSQL when a period must start first)."""
    lock_project(project)
    budget = ensure_current_period(project, user_id=user_id)
    if idempotency_key:
        replay = _replay(project, idempotency_key, fingerprint, budget)
        if replay is not None:
            return replay
    if enforce:
        _admit(levels_of(project, budget), amount, project)
    event_fields = {
        "project": project, "budget_id": budget.pk, "user_id": user_id, "model": model,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens, "cache_creation_tokens": usage.cache_creation_tokens,
        "cost": amount, "source": source, "idempotency_key": idempotency_key or None,
        "request_fingerprint": fingerprint,
    }
    try:
        with transaction.atomic():
            event = CostEvent.objects.create(**event_fields)
    except IntegrityError:
        replay = _replay(project, idempotency_key or "", fingerprint, budget) if idempotency_key else None
        if replay is None:
            raise
        return replay
    _add_spend(project=project, budget=budget, model=model, amount=amount, usage=usage)
    rollups_add_events(project, [event])
    budget.refresh_from_db()
    # period_start too: alerts are once per period, and a sweep may have just started a new one.
    project.refresh_from_db(fields=["current_spend", "held", "period_start"])
    budget.project = project
    return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project))


def _admit(levels: Any, amount: Decimal, project: Project) -> None:
    try:
        levels_admit(levels, amount)
    except BudgetExceeded as exc:
        metrics.budget_exceeded(project.name, exc.scope)
        raise


# PostgreSQL: the project row locked and the user's budget read with its spend per model in one
# statement, then the ledger row, the three spend increments and the daily rollups in a second
# one (data-modifying CTEs; the last four are the rollups of services.rollups). A repeated
# Idempotency-Key inserts nothing, so nothing else changes.
_READ_LOCKED = """
SELECT p.current_spend, p.held, p.max_budget, p.period_start, p.next_reset_at,
       b.id, b.total_budget, b.current_spend, b.held, b.duration, b.duration_days, b.period_start, b.next_reset_at,
       b.created_at, b.updated_at,
       (SELECT COALESCE(jsonb_object_agg(s.model, s.spend::text), '{{}}'::jsonb)
        FROM budgets_modelspend s WHERE s.budget_id = b.id)
FROM budgets_project p JOIN budgets_userbudget b ON b.project_id = p.id AND b.user_id = %(user)s
WHERE p.id = %(project)s
FOR NO KEY UPDATE OF {locked}
"""
_WRITE = """
WITH ev AS (
    INSERT INTO budgets_costevent (project_id, budget_id, user_id, model, prompt_tokens, completion_tokens,
        cached_tokens, cache_creation_tokens, cost, source, idempotency_key, request_fingerprint, created_at)
    VALUES (%(project)s, %(budget)s, %(user)s, %(model)s, %(prompt)s, %(completion)s, %(cached)s, %(creation)s,
        %(amount)s, %(source)s, %(key)s, %(fingerprint)s, %(at)s)
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
), p AS (
    UPDATE budgets_project SET current_spend = current_spend + %(amount)s
    WHERE id = %(project)s AND EXISTS (SELECT 1 FROM ev) RETURNING current_spend
), b AS (
    UPDATE budgets_userbudget SET current_spend = current_spend + %(amount)s, updated_at = %(at)s
    WHERE id = %(budget)s AND EXISTS (SELECT 1 FROM ev) RETURNING current_spend
), m AS (
    INSERT INTO budgets_modelspend AS s (budget_id, model, spend, prompt_tokens, completion_tokens)
    SELECT %(budget)s, %(model)s, %(amount)s, %(prompt)s, %(completion)s WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (budget_id, model) DO UPDATE SET spend = s.spend + EXCLUDED.spend,
        prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens
    RETURNING spend
), d AS (
    INSERT INTO budgets_spendday AS d (project_id, day, user_id, model, spend, events, prompt_tokens,
        completion_tokens, cached_tokens)
    SELECT %(project)s, %(day)s, %(user)s, %(model)s, %(amount)s, 1, %(prompt)s, %(completion)s, %(cached)s
    WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (project_id, day, user_id, model) DO UPDATE SET spend = d.spend + EXCLUDED.spend,
        events = d.events + 1, prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
        cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens
    RETURNING 1
), md AS (
    INSERT INTO budgets_modelday AS d (project_id, day, model, spend, events, prompt_tokens, completion_tokens,
        cached_tokens)
    SELECT %(project)s, %(day)s, %(model)s, %(amount)s, 1, %(prompt)s, %(completion)s, %(cached)s
    WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (project_id, day, model) DO UPDATE SET spend = d.spend + EXCLUDED.spend,
        events = d.events + 1, prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
        cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens
    RETURNING 1
), ud AS (
    INSERT INTO budgets_userday AS d (project_id, day, user_id, spend, events)
    SELECT %(project)s, %(day)s, %(user)s, %(amount)s, 1 WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (project_id, day, user_id) DO UPDATE SET spend = d.spend + EXCLUDED.spend, events = d.events + 1
    RETURNING 1
), um AS (
    INSERT INTO budgets_usermonth AS d (project_id, month, user_id, spend, events)
    SELECT %(project)s, %(month)s, %(user)s, %(amount)s, 1 WHERE EXISTS (SELECT 1 FROM ev)
    ON CONFLICT (project_id, month, user_id) DO UPDATE SET spend = d.spend + EXCLUDED.spend, events = d.events + 1
    RETURNING 1
)
SELECT ev.id, p.current_spend, b.current_spend, m.spend FROM ev, p, b, m, d, md, ud, um
"""


def _record_in_one_statement(
    *, project: Project, user_id: str, usage: Usage, model: str, amount: Decimal, source: str,
    idempotency_key: str | None, fingerprint: str, enforce: bool,
) -> CostRecorded | None:
    """Record with two statements; None when the project's or the user's period must start first."""
    at = utcnow()
    with connection.cursor() as cursor:
        # With enforce the budget row is locked too: admission reads figures no one may change meanwhile.
        cursor.execute(_READ_LOCKED.format(locked="p, b" if enforce else "p"),
                       {"user": user_id, "project": project.pk})
        row = cursor.fetchone()
        if row is None:
            raise UnknownUser(f"user {user_id!r} has no budget in project {project.name!r}")
        (project.current_spend, project.held, project.max_budget, project.period_start, project.next_reset_at,
         budget_id, total, spend, held, duration, days, period_start, next_reset_at, created_at, updated_at,
         costs) = row
        budget = UserBudget(
            pk=budget_id, project=project, user_id=user_id, total_budget=total, current_spend=spend, held=held,
            duration=duration, duration_days=days, period_start=period_start, next_reset_at=next_reset_at,
            created_at=created_at, updated_at=updated_at,
        )
        if project.is_due(at) or budget.is_due(at):
            return None  # the ORM path starts the new period first (rare: the sweep usually has)
        if enforce:
            figures = [(level, cap, level_spend, level_held) for level, cap, level_spend, level_held in (
                (levels_of(project, budget)[0], project.max_budget, project.current_spend, project.held),
                (levels_of(project, budget)[1], budget.total_budget, budget.current_spend, budget.held),
            )]
            try:
                check_figures(figures, amount)
            except BudgetExceeded as exc:
                metrics.budget_exceeded(project.name, exc.scope)
                raise
        day = local_day(project.timezone, at)
        params = {
            "project": project.pk, "budget": budget_id, "user": user_id, "model": model,
            "prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "cached": usage.cached_tokens,
            "creation": usage.cache_creation_tokens, "amount": amount, "source": source,
            "key": idempotency_key or None, "fingerprint": fingerprint, "at": at,
            "day": day, "month": day.replace(day=1),
        }
        cursor.execute(_WRITE, params)
        written = cursor.fetchone()
    if written is None:  # the Idempotency-Key was used before: answer as the first time
        replay = _replay(project, idempotency_key or "", fingerprint, budget)
        if replay is None:
            raise IdempotencyConflict("this Idempotency-Key is being used by a request in flight; retry")
        return replay
    event_id, project.current_spend, budget.current_spend, model_spend = written
    budget.updated_at = at
    event = CostEvent(
        pk=event_id, project=project, budget_id=budget_id, user_id=user_id, model=model,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens, cost=amount,
        source=source, idempotency_key=idempotency_key or None, request_fingerprint=fingerprint, created_at=at,
    )
    # Django leaves jsonb undecoded (psycopg gives text): decoded here, amounts as exact decimals.
    before = json.loads(costs) if isinstance(costs, str) else costs
    model_costs = {name: Decimal(value) for name, value in before.items()} | {model: model_spend}
    return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project),
                        model_costs=model_costs)


def _replay(project: Project, key: str, fingerprint: str, budget: UserBudget) -> CostRecorded | None:
    event = CostEvent.objects.filter(project=project, idempotency_key=key).first()
    if event is None:
        return None
    if event.request_fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request")
    return CostRecorded(event=event, budget=budget, created=False, exceeded=exceeded_scope(budget, project))


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


@retry_on_conflict
def cost_record_answered(
    *, answer: Callable[[CostRecorded], str], status: int = 201, **kwargs: Any,
) -> tuple[CostRecorded, str]:
    """cost_record for a request that may be retried: returns (recorded, answer body).

    The first request's answer (`answer(recorded)`, serialised) is kept with its ledger
    event in the same transaction; a retry with the same Idempotency-Key gets those bytes back.
    """
    with transaction.atomic():
        recorded = _cost_record(**kwargs)  # in this transaction: no savepoint needed
        if not recorded.created and recorded.event.response:
            return recorded, recorded.event.response["body"]
        body = answer(recorded)
        if recorded.created and kwargs.get("idempotency_key") is not None:
            CostEvent.objects.filter(pk=recorded.event.pk, response__isnull=True).update(
                response={"status": status, "body": body})
    return recorded, body
