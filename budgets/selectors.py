"""Reads for the manager, the API and the pages. No writes here (lazy resets live in services)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db.models import QuerySet

from . import periods, pricing
from .models import BudgetPeriod, CostEvent, ModelSpend, Project, UserBudget
from .usage import Usage, prompt_usage


def model_costs(budget: UserBudget) -> dict[str, Decimal]:
    """Spend per model in the budget's current period."""
    return dict(ModelSpend.objects.filter(budget_id=budget.pk).values_list("model", "spend"))


def unix(at: datetime) -> float:
    return at.timestamp()


def budget_record(budget: UserBudget, costs: dict[str, Decimal] | None = None) -> dict[str, Any]:
    """The budget as LiteLLM's BudgetManager keeps a user (its `user_dict[user]`), money as Decimal.

    duration is in days (1, 7, 28, 365 as the client uses them); created_at and
    last_updated_at are Unix seconds, the latter the current period's start.
    """
    record: dict[str, Any] = {"total_budget": budget.total_budget}
    days = periods.duration_to_days(budget.duration, budget.duration_days)
    if days is not None:
        record["duration"] = days
    record["created_at"] = unix(budget.created_at)
    record["last_updated_at"] = unix(budget.period_start)
    record["current_cost"] = budget.current_spend
    record["model_cost"] = model_costs(budget) if costs is None else costs
    return record


def project_records(project: Project) -> dict[str, dict[str, Any]]:
    """Every user's record, with two queries whatever the number of users."""
    costs: dict[int, dict[str, Decimal]] = {}
    for budget_id, model, spend in ModelSpend.objects.filter(budget__project=project).values_list(
        "budget_id", "model", "spend"
    ):
        costs.setdefault(budget_id, {})[model] = spend
    return {
        budget.user_id: budget_record(budget, costs.get(budget.pk, {}))
        for budget in UserBudget.objects.filter(project=project).order_by("user_id")
    }


def user_ids(project: Project) -> list[str]:
    return list(UserBudget.objects.filter(project=project).order_by("user_id").values_list("user_id", flat=True))


def cost_events(
    project: Project, *, user_id: str | None = None, model: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> QuerySet[CostEvent]:
    """The project's ledger, newest first, filtered."""
    events = CostEvent.objects.filter(project=project)
    if user_id is not None:
        events = events.filter(user_id=user_id)
    if model is not None:
        events = events.filter(model=model)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-id")


def finished_periods(budget: UserBudget) -> QuerySet[BudgetPeriod]:
    return BudgetPeriod.objects.filter(budget=budget).order_by("-period_start")


class PromptCost(NamedTuple):
    usage: Usage
    cost: Decimal


def prompt_cost(model: Any, messages: Any) -> PromptCost:
    """Prompt tokens of chat `messages` (OpenAI framing) and their cost; UnknownModel if unpriced."""
    usage = prompt_usage(model, messages)
    price = pricing.get_price(usage.model)
    return PromptCost(usage, pricing.cost_of_tokens(price, prompt_tokens=usage.prompt_tokens, completion_tokens=0))


class ProjectedCost(NamedTuple):
    model: str
    prompt_tokens: int
    prompt_cost: Decimal
    current_cost: Decimal
    projected_cost: Decimal


def projected_cost(budget: UserBudget, model: Any, messages: Any) -> ProjectedCost:
    """The seed's projected_cost: the user's current cost plus the prompt cost of `messages`."""
    prompt = prompt_cost(model, messages)
    return ProjectedCost(
        model=prompt.usage.model, prompt_tokens=prompt.usage.prompt_tokens, prompt_cost=prompt.cost,
        current_cost=budget.current_spend, projected_cost=budget.current_spend + prompt.cost,
    )
