"""Checks: projected cost, "may this user spend this much now?", and a cost quote (nothing recorded)."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest
from ninja import Router

from ..domain.codec import dumps
from ..domain.pricing import get_price
from ..selectors.budgets import projected_cost as projected_cost_selector
from ..selectors.limits import CallScope, LimitState
from ..services.admission import Need
from ..services.costs import admission_check
from ..services.fallbacks import fallback_for
from ..services.ledger import limit_model
from . import requests
from .auth import request_project
from .common import ERROR_STATUSES, current_budget, raw_json, with_budget_headers
from .schemas import (
    CheckIn,
    CheckOut,
    ErrorOut,
    MessagesIn,
    ModelName,
    PriceOut,
    ProjectedCostOut,
    QuoteIn,
    QuoteOut,
    UserId,
    fallback_json,
    limit_out,
)

router = Router(tags=["checks"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


@router.post("/users/{path:user}/projected-cost", response={200: ProjectedCostOut, **ERRORS})
def projected_cost(request: HttpRequest, user: UserId, payload: MessagesIn):
    """The user's current cost plus the prompt cost of `messages` for `model` (the seed's projected_cost)."""
    return projected_cost_selector(current_budget(request, user).budget, payload.model, payload.messages)._asdict()


@router.post("/users/{path:user}/check", response={200: CheckOut, **ERRORS})
def check(request: HttpRequest, user: UserId, payload: CheckIn):
    """May this user spend about this much now? Every applicable hard limit in its unit: the user's budget,
    the project's cap, the team's, the key's, the tags' and the model's limits (nothing is held)."""
    project = request_project(request)
    budget = current_budget(request, user).budget
    estimate, tokens = requests.estimated_cost(payload)
    key = request.api_key  # type: ignore[attr-defined]
    call = CallScope(project=project, user_id=user, model=limit_model(payload.model or ""), key_name=key.name,
                     tags=payload.tags or ())  # the team is found with the limits (selectors.call_limits)
    verdict = admission_check(budget, project, estimate, call=call, need=Need(usd=estimate, tokens=tokens))
    fallback = None if verdict.scope is None else fallback_for(
        project=project, user_id=user, usage=requests.worst_case_usage(payload.model, tokens, payload.max_tokens),
        key_name=key.name, tags=payload.tags or ())
    body = CheckOut(allowed=verdict.scope is None, reason=verdict.reason, remaining=max(verdict.room, Decimal(0)),
                    scope=verdict.scope, estimated_cost=estimate,  # type: ignore[arg-type]
                    limit=limit_out(verdict.limit) if verdict.limit is not None else None,
                    fallback=fallback_json(fallback))  # type: ignore[arg-type]
    limits = [LimitState.of_budget(budget), LimitState.of_project(project), *verdict.limits]
    return with_budget_headers(raw_json(dumps(body.model_dump()), 200), limits)


@router.post("/cost-quote", response={200: QuoteOut, **ERRORS})
def cost_quote(request: HttpRequest, payload: QuoteIn):
    """Tokens and cost of a call, recording nothing."""
    quote = requests.quote(payload)
    return {**quote.usage._asdict(), "prompt_cost": quote.prompt_cost, "completion_cost": quote.completion_cost,
            "cost": quote.cost}


@router.get("/prices/{path:model}", response={200: PriceOut, **ERRORS})
def price(request: HttpRequest, model: ModelName):
    """The price recording uses for `model`, matched as LiteLLM matches names (else 422 unknown_model)."""
    return get_price(model)
