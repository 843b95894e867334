"""Users: the budgets table, one user's page, and the budget actions (all POST)."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.timezone import now as utcnow
from django.views.decorators.http import require_POST

from ..forms import BULK_PERIOD_CHOICES, BudgetForm, CreateBudgetForm, GrantForm, UserSearchForm, plain_amount
from ..models import Action, Duration, Grant, Project, UserBudget
from ..selectors import console as selectors
from ..selectors.grants import states_with_rooms
from ..selectors.limits import LimitState, team_of
from ..selectors.teams import binding_first, limit_rows, limits_on_user
from ..services.limit_windows import limits_current
from ..services.user_budgets import budget_delete as budget_delete_service
from ..services.user_budgets import budget_reset as budget_reset_service
from ..services.user_budgets import budget_set
from . import charts
from .common import (
    actor,
    current_project,
    get_budget_for_project,
    render_page,
    run_form,
)
from .grants import grant_give, grants_card

# (sort key, heading, numeric: the first click sorts biggest first)
USER_COLUMNS = (("user", "User", False), ("budget", "Budget", True), ("spend", "Spend", True),
                ("used", "Used", True), ("duration", "Resets", False), ("reset", "Next reset", False))


def _columns(sort: str) -> list[dict[str, object]]:
    """Table headings with the sort each one switches to and an arrow on the current one."""
    descending, current = sort.startswith("-"), sort.lstrip("-")
    columns = []
    for key, label, numeric in USER_COLUMNS:
        if key == current:
            next_sort, arrow = (key if descending else f"-{key}"), ("▼" if descending else "▲")
        else:
            next_sort, arrow = (f"-{key}" if numeric else key), ""
        columns.append({"key": key, "label": label, "sort": next_sort, "arrow": arrow, "numeric": numeric})
    return columns


def _users_page(request: HttpRequest, project: Project, create_form: CreateBudgetForm, status: int = 200
                ) -> HttpResponse:
    search_form = UserSearchForm(request.GET)
    search = search_form.search()
    sort = selectors.normalise_sort(request.GET.get("sort"))
    page = selectors.budgets_page(project, search=search, sort=sort, page=request.GET.get("page"))
    context = {
        "search_form": search_form,
        "search": search,
        "sort": sort,
        "page": page,
        "create_form": create_form,
        "columns": _columns(sort),
        "bulk_durations": BULK_PERIOD_CHOICES,
    }
    return render_page(request, "console/users.html", context, project=project, nav="users", status=status)


@login_required
def user_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, all_users=True)
    return _users_page(request, project, CreateBudgetForm())


@login_required
@require_POST
def budget_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = CreateBudgetForm(request.POST)
    return run_form(
        request, form,
        lambda data: budget_set(
            project=project, user_id=data["user_id"], total_budget=data["total_budget"],
            duration=data["duration"], duration_days=data["duration_days"], actor=actor(request)),
        message=lambda done: f"{'Created' if done[1] else 'Replaced'} the budget of {done[0].user_id}.",
        done=lambda done: redirect(done[0]), refused=lambda: _users_page(request, project, form, status=400))


def _detail_page(request: HttpRequest, project: Project, budget: UserBudget, form: BudgetForm | None = None,
                 status: int = 200, *, grant_form: GrantForm | None = None) -> HttpResponse:
    if form is None:
        form = BudgetForm(initial={"total_budget": plain_amount(budget.total_budget), "duration": budget.duration,
                                   "duration_days": budget.duration_days})
    zone = selectors.project_zone(project)
    rng = selectors.DateRange.last_days(30, zone)
    daily = selectors.daily_spend(project, rng, user_id=budget.user_id)
    spends = selectors.model_spend_of(budget)
    past = selectors.user_past_periods(budget)
    team = team_of(project, budget.user_id)
    period_labels = [p.start.astimezone(zone).strftime("%Y-%m-%d") for p in past]
    context = {
        "budget": budget,
        "form": form,
        "daily": daily,
        "daily_totals": daily.day_totals(),
        "spend_chart": charts.daily_by_model(daily),
        "model_spends": spends,
        "models_chart": charts.pie([s.model for s in spends], [s.spend for s in spends]),
        "periods": past,
        "periods_chart": charts.periods_chart(period_labels, [p.spend for p in past],
                                              [p.budget or Decimal(0) for p in past]),
        "ledger": selectors.ledger_page(project, user_id=budget.user_id, page=request.GET.get("page")),
        "export_query": urlencode({"user": budget.user_id}),
        "team": team,
        "limit_rows": [(row, None) for row in limit_rows(binding_first(states_with_rooms(project.pk, [
            LimitState.of_budget(budget), *filter(None, [LimitState.of_project(project)]),
            *(LimitState.of_limit(limit) for limit in limits_current(project, limits_on_user(project, budget.user_id,
                                                                                             team)))], utcnow())))],
        **grants_card(project, Grant.Scope.USER, budget.user_id, grant_form),
    }
    return render_page(request, "console/user_detail.html", context, project=project, nav="users", status=status)


@login_required
def user_detail(request: HttpRequest, project_id: int, user_id: str) -> HttpResponse:
    project = current_project(request, project_id)
    budget = get_budget_for_project(project, user_id)
    return _detail_page(request, project, budget)


@login_required
@require_POST
def user_grant_new(request: HttpRequest, project_id: int, user_id: str) -> HttpResponse:
    """Give the user credit (a grant) from their page."""
    project = current_project(request, project_id, Action.CHANGE)
    budget = get_budget_for_project(project, user_id)
    return grant_give(request, project, Grant.Scope.USER, budget.user_id,
                      refused=lambda form: _detail_page(request, project, budget, status=400, grant_form=form))


@login_required
@require_POST
def budget_edit(request: HttpRequest, project_id: int, user_id: str) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    budget = get_budget_for_project(project, user_id)
    form = BudgetForm(request.POST)
    return run_form(
        request, form,
        lambda data: budget_set(
            project=project, user_id=budget.user_id, total_budget=data["total_budget"],
            duration=data["duration"] or Duration.NONE, duration_days=data["duration_days"], actor=actor(request)),
        message=lambda done: f"Saved the budget of {done[0].user_id}.", done=lambda done: redirect(done[0]),
        refused=lambda: _detail_page(request, project, budget, form, status=400))


@login_required
@require_POST
def budget_reset(request: HttpRequest, project_id: int, user_id: str) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    budget = get_budget_for_project(project, user_id)
    budget_reset_service(budget=budget, actor=actor(request))
    messages.success(request, f"Reset the spend of {budget.user_id} to zero. The ledger keeps every call.")
    return redirect(budget)


@login_required
@require_POST
def budget_delete(request: HttpRequest, project_id: int, user_id: str) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    budget = get_budget_for_project(project, user_id)
    budget_delete_service(budget=budget, actor=actor(request))
    messages.success(request, f"Deleted the budget of {user_id}. Its ledger events stay.")
    return redirect("user_list", project.pk)
