"""Users: list, read, create or replace a budget, reset, delete."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Query, Router, Status

from ..selectors.budgets import budgets_with_costs, model_costs
from ..services.limits import limits_for_user
from ..services.resets import ensure_current_period
from ..services.user_budgets import KEEP_TEAM, budget_delete, budget_reset, budget_set
from .auth import request_actor, request_project
from .common import ERROR_STATUSES, MAX_OFFSET, MAX_PAGE, current_budget
from .schemas import (
    BudgetIn,
    ErrorOut,
    LimitOut,
    ModelName,
    TagList,
    UserId,
    UserLimitsOut,
    UserOut,
    UserPage,
    user_out,
)

router = Router(tags=["users"])
ERRORS = dict.fromkeys(ERROR_STATUSES, ErrorOut)


@router.get("/users", response={200: UserPage, **ERRORS})
def list_users(request: HttpRequest, limit: int = Query(50, ge=1, le=MAX_PAGE),
               offset: int = Query(0, ge=0, le=MAX_OFFSET)):
    """The project's users with their budgets and spend, ordered by user id."""
    project = request_project(request)
    ensure_current_period(project, all_users=True)  # right even while no worker runs
    page, costs, total = budgets_with_costs(project, offset=offset, limit=limit)
    return {"items": [user_out(budget, costs[budget.pk]) for budget in page],
            "total": total, "limit": limit, "offset": offset}


@router.put("/users/{path:user}/budget", response={200: UserOut, 201: UserOut, 422: ErrorOut, **ERRORS})
def set_budget(request: HttpRequest, user: UserId, payload: BudgetIn):
    """Create (201) or replace (200) the user's budget; replacing keeps this period's spend.

    With `team` (a team's name, or null), the user's team changes in the same transaction.
    """
    project = request_project(request)
    team = payload.team if "team" in payload.model_fields_set else KEEP_TEAM
    budget, created = budget_set(
        project=project, user_id=user, total_budget=payload.total_budget, duration=payload.duration,
        duration_days=payload.duration_days, team=team, actor=request_actor(request),
    )
    return Status(201 if created else 200, user_out(budget, model_costs(budget)))


@router.post("/users/{path:user}/reset", response={200: UserOut, **ERRORS})
def reset_user(request: HttpRequest, user: UserId):
    """Set the user's spend in this period to zero (audited; the ledger stays)."""
    budget = budget_reset(budget=current_budget(request, user).budget, actor=request_actor(request),
                                   reason="manual")
    return user_out(budget, model_costs(budget))


@router.get("/users/{path:user}/limits", response={200: UserLimitsOut, **ERRORS})
def user_limits(request: HttpRequest, user: UserId, model: ModelName | None = None, tags: TagList | None = None):
    """Every limit that applies to the user's calls (with `?model=`, `?tags=a,b`, through this API key), each
    with used, held, remaining and resets_at, the binding one (least room for its size) first."""
    found = limits_for_user(
        project=request_project(request), user_id=user, model=model,
        tags=tags or (),
        key_name=request.api_key.name,  # type: ignore[attr-defined]
    )
    return UserLimitsOut(user=found.user_id, team=found.team,
                         items=[LimitOut.model_validate(state) for state in found.items])


# The bare /users/{user} routes come last: `path:` would also match ".../costs" and the like.
bare_router = Router(tags=["users"])


@bare_router.get("/users/{path:user}", response={200: UserOut, **ERRORS})
def get_user(request: HttpRequest, user: UserId):
    """The user's budget, spend in this period (total and per model), period and remaining budget."""
    current = current_budget(request, user)
    return user_out(current.budget, current.model_costs)


@bare_router.delete("/users/{path:user}", response={204: None, **ERRORS})
def delete_user(request: HttpRequest, user: UserId):
    """Delete the user's budget (audited); their ledger events stay."""
    budget_delete(budget=current_budget(request, user).budget, actor=request_actor(request))
    return Status(204, None)
