"""Reads of teams and limits for the API and the console: lists, one team with its spend, figures in order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db.models import Count, Q, QuerySet, Sum
from django.utils.timezone import now as utcnow

from ..base.errors import NotFound
from ..models import CostEvent, Limit, Project, SpendDay, Team, TeamMember, UserMonth
from .console import DailySpend, DateRange, MoneySum
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


# --- the console's pages ----------------------------------------------------------------------


@dataclass(frozen=True)
class LimitRow:
    """A limit as the console shows it: its figures and how much of it is used (a percentage)."""

    state: LimitState
    pk: int | None

    @property
    def utilisation(self) -> Decimal | None:
        if self.state.capacity <= 0:  # the limit with its grants (paid and left)
            return None
        return (self.state.used + self.state.held) * 100 / self.state.capacity

    @property
    def is_money(self) -> bool:
        return self.state.unit == Limit.Unit.USD


def limit_rows(states: Iterable[LimitState]) -> list[LimitRow]:
    return [LimitRow(state, state.id) for state in states]


def team_daily_spend(project: Project, rng: DateRange, members: list[str]) -> DailySpend:
    """The team's members' spend per local day and model over the range (the per-user daily rollups)."""
    rows = (SpendDay.objects.filter(project=project, user_id__in=members, day__gte=rng.start, day__lte=rng.end)
            .values("day", "model").annotate(spend=MoneySum("spend"), events=Sum("events")).order_by("day", "model"))
    index = {day: i for i, day in enumerate(rng.days)}
    spend: dict[str, list[Decimal]] = {}
    result = DailySpend(days=rng.days, models=[], spend=spend)
    for row in rows:
        i = index.get(row["day"])
        if i is None:
            continue
        series = spend.setdefault(row["model"], [Decimal(0)] * len(rng.days))
        series[i] += row["spend"]
        result.total += row["spend"]
        result.events += row["events"]
    result.models = sorted(spend, key=lambda m: (-sum(spend[m]), m))
    return result


UNTAGGED = "(no tag)"


@dataclass
class TagSpend:
    tag: str
    spend: Decimal
    events: int


def tag_split(project: Project, rng: DateRange) -> list[TagSpend]:
    """Spend and calls per tag over the range, biggest first; a call with two tags counts in both.

    One query: the ledger grouped by its tags text (",a,b,"), each group then added to each of its tags.
    """
    rows = (CostEvent.objects.filter(project=project, created_at__gte=rng.since, created_at__lt=rng.until)
            .values("tags").annotate(spend=MoneySum("cost"), events=Count("id")).order_by())
    split: dict[str, TagSpend] = {}
    for row in rows:
        for tag in [t for t in row["tags"].split(",") if t] or [UNTAGGED]:
            item = split.setdefault(tag, TagSpend(tag, Decimal(0), 0))
            item.spend += row["spend"]
            item.events += row["events"]
    return sorted(split.values(), key=lambda item: (item.tag == UNTAGGED, -item.spend, item.tag))


def limits_on_user(project: Project, user_id: str, team: str | None) -> QuerySet[Limit]:
    """The limits that count every call of the user, on any model: the project's, the team's, the user's
    (key and tag limits depend on the call, and are on the Limits page)."""
    subjects = Q(scope=Limit.Scope.PROJECT) | Q(scope=Limit.Scope.USER, subject=user_id)
    if team:
        subjects |= Q(scope=Limit.Scope.TEAM, subject=team)
    return Limit.objects.filter(project=project).filter(subjects).order_by("id")
