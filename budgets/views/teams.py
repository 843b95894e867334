"""Teams: the list; a team's members, spend per day and model, and its limits; set members, delete."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.timezone import now as utcnow
from django.views.decorators.http import require_POST

from ..base.errors import NotFound
from ..forms import GrantForm, TeamForm
from ..models import Action, Grant, Project, Team
from ..selectors import console as selectors
from ..selectors.grants import states_with_rooms
from ..selectors.limits import LimitState
from ..selectors.teams import (
    limit_rows,
    month_start,
    team_daily_spend,
    team_limits,
    team_members,
    team_named,
    team_spend_this_month,
    teams_of,
)
from ..services.limit_windows import limits_current
from ..services.teams import team_delete, team_set
from . import charts
from .common import actor, current_project, render_page, run_action, run_form
from .grants import grant_give, grants_card


def _team(project: Project, name: str) -> Team:
    try:
        return team_named(project, name)
    except NotFound:
        raise Http404("no such team in this project") from None


def _list_page(request: HttpRequest, project: Project, form: TeamForm, *, status: int = 200) -> HttpResponse:
    context = {"form": form, "teams": teams_of(project)}
    return render_page(request, "console/teams.html", context, project=project, nav="teams", status=status)


def _detail_page(request: HttpRequest, project: Project, team: Team, form: TeamForm | None = None, *,
                 status: int = 200, grant_form: GrantForm | None = None) -> HttpResponse:
    members = team_members(team)
    if form is None:
        form = TeamForm(initial={"name": team.name, "members": "\n".join(members)}, fixed_name=True)
    rng = selectors.DateRange.last_days(30, selectors.project_zone(project))
    daily = team_daily_spend(project, rng, members)
    limits = limits_current(project, team_limits(project, team.name))
    context = {
        "team": team, "members": members, "form": form, "daily": daily,
        "spend_chart": charts.daily_by_model(daily), "month_start": month_start(project),
        "spend_this_month": team_spend_this_month(project, members),
        "rows": [(row, None) for row in limit_rows(states_with_rooms(
            project.pk, [LimitState.of_limit(limit) for limit in limits], utcnow()))],
        **grants_card(project, Grant.Scope.TEAM, team.name, grant_form),
    }
    return render_page(request, "console/team_detail.html", context, project=project, nav="teams", status=status)


@login_required
def team_list(request: HttpRequest, project_id: int) -> HttpResponse:
    """GET: the teams; POST: create a team or replace its members (the list's and a team page's form)."""
    if request.method == "POST":
        return _team_save(request, project_id)
    project = current_project(request, project_id)
    return _list_page(request, project, TeamForm())


@login_required
def team_detail(request: HttpRequest, project_id: int, team: str) -> HttpResponse:
    project = current_project(request, project_id)
    return _detail_page(request, project, _team(project, team))


@login_required
@require_POST
def team_grant_new(request: HttpRequest, project_id: int, team: str) -> HttpResponse:
    """Give the team credit (a grant) from its page."""
    project = current_project(request, project_id, Action.CHANGE)
    found = _team(project, team)
    return grant_give(request, project, Grant.Scope.TEAM, found.name,
                      refused=lambda form: _detail_page(request, project, found, status=400, grant_form=form))


def _team_save(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    try:
        existing: Team | None = team_named(project, request.POST.get("name", ""))
    except NotFound:
        existing = None
    form = TeamForm(request.POST, fixed_name=existing is not None)

    def refused() -> HttpResponse:
        if existing is not None:
            return _detail_page(request, project, existing, form, status=400)
        return _list_page(request, project, form, status=400)

    return run_form(
        request, form,
        lambda data: team_set(project=project, name=data["name"], members=data["members"], actor=actor(request)),
        message=lambda saved: f"Saved the team “{saved[0].name}”.",
        done=lambda saved: redirect("team_detail", project.pk, saved[0].name), refused=refused)


@login_required
@require_POST
def team_remove(request: HttpRequest, project_id: int, team: str) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    found = _team(project, team)
    return run_action(request, lambda: team_delete(team=found, actor=actor(request)),
                      message=f"Deleted the team “{found.name}”, its member list and its limits.",
                      done=lambda _: redirect("team_list", project.pk),
                      refused=lambda: redirect("team_detail", project.pk, found.name))
