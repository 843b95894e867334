"""Teams: set a team's members, list the teams, read one (members, spend this month, limits), delete one."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Status

from ..models import Project, Team
from ..selectors.limits import LimitState
from ..selectors.teams import month_start, team_limits, team_members, team_named, team_spend_this_month, teams_of
from ..services.limit_windows import limits_current
from ..services.teams import team_delete, team_set
from .auth import request_actor, request_project
from .common import ERROR_STATUSES
from .schemas import ErrorOut, Identifier, LimitOut, TeamIn, TeamList, TeamOut, TeamSummaryOut

router = Router(tags=["teams"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


def team_out(project: Project, team: Team) -> TeamOut:
    members = team_members(team)
    limits = limits_current(project, team_limits(project, team.name))
    return TeamOut(name=team.name, members=members, month_start=month_start(project),
                   spend_this_month=team_spend_this_month(project, members),
                   limits=[LimitOut.model_validate(LimitState.of_limit(limit)) for limit in limits],
                   created_at=team.created_at)


@router.put("/teams/{team}", response={200: TeamOut, 201: TeamOut, 409: ErrorOut, **ERRORS})
def set_team(request: HttpRequest, team: Identifier, payload: TeamIn):
    """Create the team (201) or replace its members (200); a user already in another team is 409 naming it."""
    project = request_project(request)
    saved, created = team_set(project=project, name=team, members=payload.members, actor=request_actor(request))
    return Status(201 if created else 200, team_out(project, saved))


@router.get("/teams", response={200: TeamList, **ERRORS})
def list_teams(request: HttpRequest):
    """The project's teams by name, each with its number of members."""
    return TeamList(items=[TeamSummaryOut.model_validate(team) for team in teams_of(request_project(request))])


@router.get("/teams/{team}", response={200: TeamOut, **ERRORS})
def get_team(request: HttpRequest, team: Identifier):
    """The team's members, what they spent this month and the team's limits with their figures."""
    project = request_project(request)
    return team_out(project, team_named(project, team))


@router.delete("/teams/{team}", response={204: None, **ERRORS})
def delete_team(request: HttpRequest, team: Identifier):
    """Delete the team, its member list and its limits (audited); the ledger keeps its calls."""
    project = request_project(request)
    team_delete(team=team_named(project, team), actor=request_actor(request))
    return Status(204, None)
