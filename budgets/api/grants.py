"""Grants: prepaid dollars for a user or a team (services.grants): give, list, read with what each paid, revoke."""

from __future__ import annotations

from decimal import Decimal

from django.http import HttpRequest
from django.utils.timezone import now as utcnow
from ninja import Router, Status

from ..models import Grant, Project
from ..selectors.teams import team_named
from ..services.grants import grant_create, grant_get, grant_uses, grant_void, grants_of
from .auth import request_actor, request_project
from .common import ERROR_STATUSES
from .schemas import ErrorOut, GrantDetailOut, GrantIn, GrantList, GrantOut, GrantUseOut, Identifier, UserId

router = Router(tags=["grants"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


def _create(request: HttpRequest, scope: str, subject: str, payload: GrantIn) -> Status:
    grant = grant_create(project=request_project(request), scope=scope, subject=subject, amount=payload.amount,
                         expires_at=payload.expires_at, priority=payload.priority, note=payload.note,
                         actor=request_actor(request))
    return Status(201, GrantOut.model_validate(grant))


def _list(project: Project, scope: str, subject: str) -> GrantList:
    grants = grants_of(project, scope, subject)
    at = utcnow()
    return GrantList(items=grants,  # type: ignore[arg-type]  # validated from the rows (their resolvers)
                     remaining=sum((grant.remaining for grant in grants if grant.active_at(at)), Decimal(0)))


@router.post("/users/{path:user}/grants", response={201: GrantOut, **ERRORS})
def create_user_grant(request: HttpRequest, user: UserId, payload: GrantIn):
    """Grant the user prepaid dollars (201), used after the user's periodic dollar limits are."""
    return _create(request, Grant.Scope.USER, user, payload)


@router.get("/users/{path:user}/grants", response={200: GrantList, **ERRORS})
def list_user_grants(request: HttpRequest, user: UserId):
    """The user's grants, the active ones first in the order they are used, with used and remaining."""
    return _list(request_project(request), Grant.Scope.USER, user)


@router.post("/teams/{team}/grants", response={201: GrantOut, **ERRORS})
def create_team_grant(request: HttpRequest, team: Identifier, payload: GrantIn):
    """Grant the team prepaid dollars (201), used after the team's periodic dollar limits are; 404 without the team."""
    return _create(request, Grant.Scope.TEAM, team_named(request_project(request), team).name, payload)


@router.get("/teams/{team}/grants", response={200: GrantList, **ERRORS})
def list_team_grants(request: HttpRequest, team: Identifier):
    """The team's grants, the active ones first in the order they are used, with used and remaining."""
    project = request_project(request)
    return _list(project, Grant.Scope.TEAM, team_named(project, team).name)


@router.get("/grants/{grant_id}", response={200: GrantDetailOut, **ERRORS})
def get_grant(request: HttpRequest, grant_id: int):
    """A grant with the ledger rows it paid (newest first, at most 100)."""
    grant = grant_get(request_project(request), grant_id)
    detail = GrantDetailOut.model_validate(grant)
    return detail.model_copy(update={"uses": [GrantUseOut.model_validate(use) for use in grant_uses(grant)]})


@router.delete("/grants/{grant_id}", response={200: GrantOut, **ERRORS})
def revoke_grant(request: HttpRequest, grant_id: int):
    """Revoke a grant now: its rest is void (audited); what it paid stays paid."""
    grant = grant_get(request_project(request), grant_id)
    return GrantOut.model_validate(grant_void(grant=grant, actor=request_actor(request)))
