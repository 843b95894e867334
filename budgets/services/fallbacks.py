"""Fallbacks: for a refused call, the first of its model's fallback models whose worst case would fit.

A project names, per model, the models to try instead (`Project.fallbacks`, checked by
base.validation.validate_fallbacks). When a check, a reservation or an enforced record is refused,
the API asks `fallback_for`: each fallback in order, the refused call's worst case re-priced for it
with the same token counts (pricing.cost_of_usage, as the check and the reservation price theirs),
put to the check's own question (services.costs.admission_check: the user's budget, the project's
cap and every applicable hard limit in its unit, read without locks). It is advice, computed after
the refusal and outside its transaction: the retry with the fallback is admitted or refused for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..base.errors import BudgetError
from ..base.money import stored
from ..domain import pricing
from ..domain.usage import Usage
from ..models import Project
from ..selectors.limits import CallScope
from .admission import Need
from .costs import admission_check
from .ledger import limit_model
from .resets import budget_current


@dataclass(frozen=True)
class Fallback:
    """A model to retry a refused call with, and its worst case in dollars (at the stored 12 places)."""

    model: str
    worst_case: Decimal


def project_fallbacks(project: Project) -> dict[str, list[str]]:
    """The project's fallbacks as stored now (the request's project may be an API key's cached copy)."""
    return Project.objects.filter(pk=project.pk).values_list("fallbacks", flat=True).first() or {}


def fallbacks_of(project: Project, model: str) -> list[str]:
    """The fallbacks the project names for `model`: under the name as called, else the price table's name."""
    fallbacks = project_fallbacks(project)
    named = fallbacks.get(model)
    if named is None:
        named = fallbacks.get(limit_model(model), [])
    return list(named)


def fallback_for(*, project: Project, user_id: str, usage: Usage | None, key_name: str | None = None,
                 tags: tuple[str, ...] = ()) -> Fallback | None:
    """The first fallback of `usage.model` whose worst case (`usage` re-priced for it) fits now, or None.

    `usage` is the refused call's worst case: prompt + max_tokens for a check or a reservation, the
    call's own tokens for an enforced record; None (an estimated cost, a bare cost) has nothing to
    re-price. A fallback the price table does not know is skipped, as is one that is the refused
    model under another name.
    """
    if usage is None or not (usage.prompt_tokens or usage.completion_tokens or usage.cache_creation_tokens):
        return None
    candidates = fallbacks_of(project, usage.model)
    if not candidates:
        return None
    refused = limit_model(usage.model)
    try:
        budget = budget_current(project=project, user_id=user_id).budget  # the figures now, the project's too
    except BudgetError:
        return None
    tokens = usage.prompt_tokens + usage.completion_tokens
    for model in candidates:
        name = limit_model(model)
        if name == refused:
            continue
        try:
            worst_case = stored(pricing.cost_of_usage(usage._replace(model=model)))
        except BudgetError:  # unknown_model: no price, no worst case
            continue
        call = CallScope(project=project, user_id=user_id, model=name, key_name=key_name, tags=tags)
        verdict = admission_check(budget, budget.project, worst_case, call=call,
                                  need=Need(usd=worst_case, tokens=tokens))
        if verdict.scope is None:
            return Fallback(model=model, worst_case=worst_case)
    return None
