"""Recording cost: validate and price one call, then services.ledger writes it; admission checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from .. import metrics
from ..base.money import stored, to_money
from ..domain import pricing
from ..domain.codec import decimal_text
from ..domain.usage import Usage
from ..models import ApiKey, CostEvent, Project, UserBudget
from ..selectors.call_limits import limits_now
from ..selectors.grants import grant_rooms, states_with_rooms
from ..selectors.limits import CallScope, LimitState
from . import ledger
from .admission import Need, refusal, retry_on_conflict
from .ledger import CostRecorded, exceeded_scope

__all__ = [
    "CostRecorded", "Verdict", "admission_check", "cost_record", "exceeded_scope", "recorded_again", "recorded_state",
]


@dataclass(frozen=True)
class Verdict:
    """A budget check's answer: which limit has no room (None: allowed), why, and the room left.

    `scope` is the level of the limit without room ("user", "project", "team", "key", "tag");
    `limit` that limit (id None for the user's budget and the project's cap); `limits` the
    applicable Limit rows as they are now.
    """

    scope: str | None
    reason: str | None
    room: Decimal
    limit: LimitState | None = None
    limits: tuple[LimitState, ...] = ()


def admission_check(budget: UserBudget, project: Project, estimate: Decimal, *, call: CallScope | None = None,
                    need: Need | None = None) -> Verdict:
    """May this user spend about `estimate` now? The user's budget, the project's cap and, for `call`,
    every applicable hard limit in its unit (`need`: the tokens and the request), read without locks."""
    at = utcnow()
    if not hasattr(budget, "grant_room"):  # read with the budget by services.budget_current
        budget.grant_room = grant_rooms(project.pk, [("user", budget.user_id)], at).get(  # type: ignore[attr-defined]
            ("user", budget.user_id), Decimal(0))
    scope = exceeded_scope(budget, project, estimate)
    room = budget.remaining
    if project.max_budget is not None:
        room = min(room, project.max_budget - project.current_spend - project.held)
    reason = None
    if scope == "user":
        left = decimal_text(max(budget.remaining, Decimal(0)))
        reason = f"user {budget.user_id!r} has ${left} left of ${decimal_text(budget.total_budget)}"
        return Verdict(scope=scope, reason=reason, room=room, limit=LimitState.of_budget(budget))
    if scope == "project" and project.max_budget is not None:
        left = decimal_text(max(project.max_budget - project.current_spend - project.held, Decimal(0)))
        reason = f"project {project.name!r} has ${left} left of its max_budget ${decimal_text(project.max_budget)}"
        return Verdict(scope=scope, reason=reason, room=room, limit=LimitState.of_project(project))
    states = tuple(states_with_rooms(project.pk, limits_now(call, hard_only=True), at)) if call is not None else ()
    need = need or Need(usd=estimate)
    for state in states:
        requested = need.of(state.unit)
        if requested > 0 and state.used + state.held + requested > state.ceiling:
            return Verdict(scope=state.scope, reason=refusal(state, requested).message, room=room, limit=state,
                           limits=states)
    return Verdict(scope=None, reason=None, room=room, limits=states)


@retry_on_conflict
def cost_record(
    *, project: Project, user_id: str, usage: Usage, cost: Any = None, source: str,
    idempotency_key: str | None = None, fingerprint: str = "", enforce: bool = False,
    tags: tuple[str, ...] = (), api_key: ApiKey | None = None,
) -> CostRecorded:
    """Record one call's cost in the ledger and add it to the user's and the project's spend.

    `cost` None prices the usage from the price table (UnknownModel if the model has no price).
    With an idempotency key, a retry returns the first event and records nothing.
    With `enforce`, a call that the user's or the project's remaining budget (after open holds),
    or any applicable hard limit in its unit, has no room for raises BudgetExceeded instead.
    Every applicable limit counts the call (services.ledger). `tags` and the API key (`api_key`,
    None for the manager) are kept on the ledger row and choose the key's and the tags' limits.
    Locks: the project row, the user's, then limits by id (one order everywhere; services.admission).

    Without an idempotency key the ledger's write is all there is: on PostgreSQL, called outside a
    transaction, it is one statement in autocommit. With a key, the answer is kept with the ledger row
    in the same transaction (a retry answers from it), or in a savepoint of the caller's.
    """
    model = usage.model  # checked where the usage was read (validation.validate_model)
    # Rounded once to the stored 12 places, so the ledger, the spend and the answer agree.
    amount = stored(pricing.cost_of_usage(usage) if cost is None else to_money(cost, "cost"))
    call = ledger.Call(
        project=project, user_id=user_id, usage=usage, model=model, amount=amount, source=source,
        idempotency_key=idempotency_key, fingerprint=fingerprint, enforce=enforce, tags=tuple(tags),
        key_name=api_key.name if api_key is not None else None, api_key_id=api_key.pk if api_key is not None else None,
    )
    if idempotency_key is None:
        recorded = ledger.record(call)
    else:
        with transaction.atomic():
            recorded = ledger.record(call)
            if recorded.created:
                # Kept with the ledger row in its transaction: a retry answers from these, as the first did.
                CostEvent.objects.filter(pk=recorded.event.pk).update(response=recorded_state(recorded, 201))
    if not recorded.created:
        return recorded_again(recorded.event, recorded.event.response, recorded)
    metrics.cost_recorded(project.name, recorded.event.model, amount)
    return recorded


# What a retry needs to answer exactly as the first request: the figures after the first record.
BUDGET_STATE = ("total_budget", "duration", "duration_days", "current_spend", "held", "period_start",
                "next_reset_at", "created_at", "updated_at")
PROJECT_STATE = ("current_spend", "held", "max_budget")


def _text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else None if value is None else str(value)


def recorded_state(recorded: CostRecorded, status: int) -> dict[str, Any]:
    """What to keep with a first answer so that a retry answers the same: the user's figures after it."""
    budget, project = recorded.budget, recorded.budget.project
    return {
        "status": status,
        "budget": {name: _text(getattr(budget, name)) for name in BUDGET_STATE} | {"id": budget.pk},
        "project": {name: _text(getattr(project, name)) for name in PROJECT_STATE},
        "model_costs": {model: str(spend) for model, spend in recorded.model_costs.items()},
        "exceeded": recorded.exceeded,
    }


def recorded_again(event: CostEvent, state: dict[str, Any] | None, replay: CostRecorded | None = None) -> CostRecorded:
    """A retry's CostRecorded: the first one's figures, kept by recorded_state with the answer's status."""
    if state is None or "budget" not in state:  # recorded without a key: today's figures
        assert replay is not None
        return replay
    fields = {f.name: f for f in UserBudget._meta.concrete_fields}
    budget_fields = {name: fields[name].to_python(value) for name, value in state["budget"].items() if name != "id"}
    project_fields = {name: None if value is None else Decimal(value) for name, value in state["project"].items()}
    project = Project(pk=event.project_id, **project_fields)
    budget = UserBudget(pk=state["budget"]["id"], project=project, user_id=event.user_id, **budget_fields)
    return CostRecorded(event=event, budget=budget, created=False, exceeded=state["exceeded"],
                        model_costs={model: Decimal(spend) for model, spend in state["model_costs"].items()})
