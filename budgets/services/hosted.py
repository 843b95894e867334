"""LiteLLM's hosted protocol as services: serve a project's user_dict, merge one back.

The client keeps its own copy of every user's record and sends the whole dict after
each change. The server's spend is the truth, so a merge never overwrites spend: it
records what the client's per-model cost *grew by* since the server last saw it.
The rule, exactly (docs/api.md has the same text):

- `UserBudget.hosted_model_cost` is the baseline: model → decimal string, what the
  client last reported or what get_budget last served it; `hosted_period_start` names
  the server period it belongs to.
- A record's cost per model is its `model_cost`; `current_cost` beyond the sum of
  `model_cost` is cost under the model "unknown".
- If some model is lower than its baseline (missing counts as 0) the client has reset
  the user (reset_cost, reset_on_duration, or create_budget of an existing user). If
  the baseline is from the server's current period, the user is reset
  (services.budget_reset, reason "hosted", audited); if the server started a new
  period since, it already reset and nothing is reset again. Either way the client's
  values then count from zero.
- Otherwise each model's growth (value − baseline) above float noise is recorded
  as a ledger event (services.cost_record, cost=growth, no tokens, source "hosted").
- The baseline becomes the client's values. Spend recorded through the native API
  is never dropped, except by a reset the client asked for.
- A record with neither `current_cost` nor `model_cost` (what the client's
  create_budget sends) says nothing about spend: only the budget is set.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from .. import periods, selectors
from ..errors import InvalidInput
from ..models import CostEvent, ModelSpend, Project, UserBudget
from ..money import stored, to_money
from ..usage import Usage, validate_model
from . import costs
from .common import validate_user_id
from .resets import reset_due_budgets
from .user_budgets import budget_reset, budget_set

UNKNOWN_MODEL = "unknown"
# Unix seconds up to 9999-12-31; anything else is not a time LiteLLM's client sent.
MAX_TIMESTAMP = 253402300799
# The client adds costs as floats: differences this small are rounding, not spend.
NOISE_ABSOLUTE = Decimal("1e-10")
NOISE_RELATIVE = Decimal("1e-12")
UNEXPLAINED_RELATIVE = Decimal("1e-9")  # current_cost vs the sum of model_cost: more float sums
LOOKUP_BATCH = 500


def _noise(reference: Decimal) -> Decimal:
    return max(NOISE_ABSOLUTE, abs(reference) * NOISE_RELATIVE)


@dataclass(frozen=True)
class ClientRecord:
    """One user's record as the client sent it, validated."""

    total_budget: Decimal
    days: int | None
    created_at: datetime | None
    spend: dict[str, Decimal]  # model → the client's cost for it (with "unknown" for the rest)
    # False for a record with neither current_cost nor model_cost: the client's create_budget
    # sends that, and its background save can arrive after a later save that carried spend.
    reports_spend: bool = True


# --- validation: the whole dict before anything is written --------------------------------------


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, str):
        raise InvalidInput(f"{where} must be a JSON number, not a string")
    return stored(to_money(value, where))


def _days(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 6 or value != value.to_integral_value():
            raise InvalidInput(f"{where} must be a whole number of days")
        value = int(value)
    try:
        periods.duration_from_days(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    return int(value)


def _timestamp(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidInput(f"{where} must be Unix seconds (a number from 0 to {MAX_TIMESTAMP})")
    return datetime.fromtimestamp(float(value), tz=UTC)


def parse_record(user: str, record: Any) -> ClientRecord:
    where = f"user_dict[{user!r}]"
    if not isinstance(record, dict):
        raise InvalidInput(f"{where} must be an object")
    if "total_budget" not in record:
        raise InvalidInput(f"{where}.total_budget is required")
    total_budget = _amount(record["total_budget"], f"{where}.total_budget")
    days = _days(record.get("duration"), f"{where}.duration")
    created_at = _timestamp(record.get("created_at"), f"{where}.created_at")
    _timestamp(record.get("last_updated_at"), f"{where}.last_updated_at")  # checked; the server's period rules

    model_cost = record.get("model_cost")
    if model_cost is None:
        model_cost = {}
    if not isinstance(model_cost, dict):
        raise InvalidInput(f"{where}.model_cost must be an object of model → cost")
    spend: dict[str, Decimal] = {}
    for model, value in model_cost.items():
        name = validate_model(model)
        spend[name] = spend.get(name, Decimal(0)) + _amount(value, f"{where}.model_cost[{model!r}]")
    if record.get("current_cost") is not None:
        current = _amount(record["current_cost"], f"{where}.current_cost")
        unexplained = current - sum(spend.values(), Decimal(0))
        if unexplained > max(NOISE_ABSOLUTE, current * UNEXPLAINED_RELATIVE):
            spend[UNKNOWN_MODEL] = spend.get(UNKNOWN_MODEL, Decimal(0)) + unexplained
    reports_spend = record.get("model_cost") is not None or record.get("current_cost") is not None
    return ClientRecord(total_budget=total_budget, days=days, created_at=created_at, spend=spend,
                        reports_spend=reports_spend)


def parse_user_dict(user_dict: Any) -> dict[str, ClientRecord]:
    """Validate a whole user_dict; InvalidInput names the first bad user and key."""
    if not isinstance(user_dict, dict):
        raise InvalidInput("user_dict must be an object of user → record")
    return {validate_user_id(user): parse_record(user, record) for user, record in user_dict.items()}


# --- get_budget ---------------------------------------------------------------------------------


def _baseline_of(spend: dict[str, Decimal]) -> dict[str, str]:
    return {model: str(amount) for model, amount in spend.items()}


def hosted_budget_get(*, project: Project) -> dict[str, dict[str, Any]]:
    """Every user's record (money as Decimal); each user's baseline becomes what was served."""
    with transaction.atomic():
        # One hosted merge or load of a project at a time: baselines are read-then-written.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        reset_due_budgets(project=project)
        budgets = list(UserBudget.objects.filter(project=project).order_by("user_id"))
        costs: dict[int, dict[str, Decimal]] = defaultdict(dict)
        for budget_id, model, spend in ModelSpend.objects.filter(budget__project=project).values_list(
            "budget_id", "model", "spend"
        ):
            costs[budget_id][model] = spend
        records = {}
        changed = []
        for budget in budgets:
            records[budget.user_id] = selectors.budget_record(budget, costs[budget.pk])
            baseline = _baseline_of(costs[budget.pk])
            if (baseline, budget.period_start) != (budget.hosted_model_cost, budget.hosted_period_start):
                budget.hosted_model_cost = baseline
                budget.hosted_period_start = budget.period_start
                changed.append(budget)
        UserBudget.objects.bulk_update(changed, ["hosted_model_cost", "hosted_period_start"],
                                       batch_size=LOOKUP_BATCH)
    return records


# --- set_budget ---------------------------------------------------------------------------------


@dataclass
class MergeResult:
    created: int = 0
    updated: int = 0
    reset: int = 0
    recorded: int = 0


def _needs_update(budget: UserBudget, record: ClientRecord) -> bool:
    if abs(record.total_budget - budget.total_budget) > _noise(budget.total_budget):
        return True
    # Compared in days: a "days" budget of 30 and a monthly one both mean 30 to the client.
    return periods.duration_to_days(budget.duration, budget.duration_days) != record.days


def _set(project: Project, user: str, record: ClientRecord, actor: str, *, new: bool) -> UserBudget:
    duration, duration_days = periods.duration_from_days(record.days) if record.days else ("none", None)
    created_at = None
    if new and record.created_at is not None:
        created_at = min(record.created_at, utcnow())
    budget, _ = budget_set(
        project=project, user_id=user, total_budget=record.total_budget, duration=duration,
        duration_days=duration_days, created_at=created_at, actor=actor,
    )
    return budget


def _merge_spend(project: Project, budget: UserBudget, record: ClientRecord, actor: str, result: MergeResult) -> None:
    same_period = budget.hosted_period_start == budget.period_start
    baseline = {model: Decimal(value) for model, value in (budget.hosted_model_cost or {}).items()}
    client = record.spend

    dropped = any(client.get(model, Decimal(0)) < value - _noise(value) for model, value in baseline.items())
    if dropped:
        if same_period:
            budget_reset(budget=budget, actor=actor, reason="hosted")
            result.reset += 1
        baseline = {}  # the client counts from zero again

    for model, value in sorted(client.items()):
        before = baseline.get(model, Decimal(0))
        growth = value - before
        if growth > _noise(before):
            costs.cost_record(
                project=project, user_id=budget.user_id, usage=Usage(model, 0, 0), cost=growth,
                source=CostEvent.Source.HOSTED,
            )
            result.recorded += 1
    baseline_now = _baseline_of(client)
    if (baseline_now, budget.period_start) != (budget.hosted_model_cost, budget.hosted_period_start):
        UserBudget.objects.filter(pk=budget.pk).update(hosted_model_cost=baseline_now,
                                                       hosted_period_start=budget.period_start)


def hosted_budget_set(*, project: Project, user_dict: Any, actor: str) -> MergeResult:
    """Merge a client's user_dict into the project (see the module docstring); all or nothing.

    Users missing from the dict are left alone: the client only sends users it knows.
    """
    records = parse_user_dict(user_dict)
    result = MergeResult()
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        reset_due_budgets(project=project)
        users = list(records)
        existing: dict[str, UserBudget] = {}
        for start in range(0, len(users), LOOKUP_BATCH):  # SQLite caps the parameters of one query
            chunk = users[start: start + LOOKUP_BATCH]
            existing.update((b.user_id, b) for b in UserBudget.objects.filter(project=project, user_id__in=chunk))
        for user, record in records.items():
            budget = existing.get(user)
            if budget is None:
                budget = _set(project, user, record, actor, new=True)
                result.created += 1
            elif _needs_update(budget, record):
                budget = _set(project, user, record, actor, new=False)
                result.updated += 1
            if record.reports_spend:
                _merge_spend(project, budget, record, actor, result)
    return result
