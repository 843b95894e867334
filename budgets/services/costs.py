"""Recording cost: the ledger row and the spend increments, in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from .. import pricing
from ..codec import decimal_text
from ..errors import IdempotencyConflict, InvalidInput
from ..fields import money
from ..models import CostEvent, ModelSpend, Project, UserBudget
from ..money import stored, to_money
from ..usage import Usage, validate_model
from . import alerts
from .admission import levels_admit, levels_of, lock_project, retry_on_conflict
from .resets import ensure_current_period


@dataclass(frozen=True)
class CostRecorded:
    event: CostEvent
    budget: UserBudget
    created: bool  # False for an idempotent retry: nothing new was recorded
    exceeded: str | None  # "user" or "project" when a budget is used up after this call

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

    `cost` None prices the usage from the price table (UnknownModel if the model has no price).
    With an idempotency key, a retry returns the first event and records nothing.
    With `enforce`, a call that the user's or the project's remaining budget (after open holds)
    has no room for raises BudgetExceeded instead (levels_admit, as reservations do).
    Locks: the project row first, then the user's (one order everywhere; see services.admission).
    """
    model = validate_model(usage.model)
    # Rounded once to the stored 12 places, so the ledger, the spend and the answer agree.
    amount = stored(pricing.cost_of_usage(usage) if cost is None else to_money(cost, "cost"))
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255):
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters")

    with transaction.atomic():
        lock_project(project)
        budget = ensure_current_period(project, user_id=user_id)
        if idempotency_key:
            replay = _replay(project, idempotency_key, fingerprint, budget)
            if replay is not None:
                return replay
        if enforce:
            levels_admit(levels_of(project, budget), amount)
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
        budget.refresh_from_db()
        # period_start too: alerts are once per period, and a sweep may have just started a new one.
        project.refresh_from_db(fields=["current_spend", "held", "period_start"])
        budget.project = project
        alerts.spend_recorded(project=project, budget=budget, amount=amount)
        return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project))


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
        recorded = cost_record(**kwargs)
        if not recorded.created and recorded.event.response:
            return recorded, recorded.event.response["body"]
        body = answer(recorded)
        if recorded.created and kwargs.get("idempotency_key") is not None:
            CostEvent.objects.filter(pk=recorded.event.pk, response__isnull=True).update(
                response={"status": status, "body": body})
    return recorded, body
