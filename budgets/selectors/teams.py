"""Reads of teams and limits for the API and the console: lists, one team with its spend, figures in order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Count, QuerySet, Sum
from django.utils.timezone import now as utcnow

from ..base.errors import NotFound
from ..models import Limit, Project, Team, TeamMember, UserMonth
from .limits import LimitState


def limits_of(project: Project, *, scope: str | None = None, subject: str | None = None) -> QuerySet[Limit]:
    """The project's limits in the order the API lists them (scope, subject, model, unit, window), filtered."""
    limits = Limit.objects.filter(project=project)
    if scope is not None:
        limits = limits.filter(scope=scope)
    if subject is not None:
        limits = limits.filter(subject=subject)
    return limits.order_by("scope", "subject", "model", "unit", "window", "id")


def limit_of(project: Project, limit_id: int) -> Limit:
    """One limit of the project; NotFound for another project's or none."""
    limit = Limit.objects.filter(project=project, pk=limit_id).first()
    if limit is None:
        raise NotFound(f"no limit {limit_id} in project {project.name!r}")
    return limit


def binding_first(states: Iterable[LimitState]) -> list[LimitState]:
    """The limits with the one that binds first: no room left first, then the least room relative to its limit.

    Ties keep hard limits before soft ones, then the given order.
    """
    def room(state: LimitState) -> tuple[int, Decimal, int]:
        share = state.remaining / state.limit if state.limit > 0 else Decimal(0)
        return (0 if state.remaining <= 0 else 1, share, 0 if state.mode == Limit.Mode.HARD else 1)

    return sorted(states, key=room)


@dataclass(frozen=True)
class TeamSummary:
    name: str
    members: int
    created_at: datetime


def teams_of(project: Project) -> list[TeamSummary]:
    """The project's teams by name, each with its number of members."""
    return [TeamSummary(name, members, created_at) for name, members, created_at in
            Team.objects.filter(project=project).annotate(n=Count("members")).order_by("name")
            .values_list("name", "n", "created_at")]


def team_named(project: Project, name: str) -> Team:
    team = Team.objects.filter(project=project, name=name).first()
    if team is None:
        raise NotFound(f"no team {name!r} in project {project.name!r}")
    return team


def team_members(team: Team) -> list[str]:
    return list(TeamMember.objects.filter(team=team).order_by("user_id").values_list("user_id", flat=True))


def month_start(project: Project, at: datetime | None = None) -> date:
    """The first local day of the project's current calendar month."""
    return (at or utcnow()).astimezone(ZoneInfo(project.timezone)).date().replace(day=1)


def team_spend_this_month(project: Project, members: list[str], at: datetime | None = None) -> Decimal:
    """What the team's members spent this calendar month (project time zone), from the monthly rollups."""
    total = UserMonth.objects.filter(project=project, month=month_start(project, at), user_id__in=members) \
        .aggregate(total=Sum("spend"))["total"]
    return total or Decimal(0)


def team_limits(project: Project, name: str) -> QuerySet[Limit]:
    return limits_of(project, scope=Limit.Scope.TEAM, subject=name)
