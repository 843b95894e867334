"""Spend anomalies' figures, read from the daily rollups (UserDay, SpendDay; teams through TeamMember),
never from the ledger: a user's or team's spend today (the project's local day) against its
trailing daily average (services.anomalies has the rule)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Min, OuterRef, Subquery

from ..models import Project, SpendDay, TeamMember, UserDay
from .console import MoneySum

BASELINE_DAYS = 14
ZERO = Decimal(0)


@dataclass(frozen=True)
class DaySpend:
    """A user's or team's spend today and before: what the anomaly rule weighs."""

    scope: str  # "user" or "team"
    subject: str  # the user id or the team's name
    today: Decimal
    trailing: Decimal  # spend over the BASELINE_DAYS days before today
    first_day: date | None  # the first day with spend before today (None: none before today)


def _history(project: Project, day: date, members: dict[str, str]) -> tuple[dict[str, Decimal], dict[str, date]]:
    """Trailing spend and first day per subject, from the members' (user id → subject) daily rollups."""
    trailing: dict[str, Decimal] = defaultdict(Decimal)
    first: dict[str, date] = {}
    if not members:
        return trailing, first
    rows = (UserDay.objects.filter(project=project, user_id__in=list(members), day__gte=day - timedelta(BASELINE_DAYS),
                                   day__lt=day)
            .values("user_id").annotate(spend=MoneySum("spend")).values_list("user_id", "spend"))
    for user_id, spend in rows:
        trailing[members[user_id]] += spend or ZERO
    for user_id, first_day in (UserDay.objects.filter(project=project, user_id__in=list(members), day__lt=day)
                               .values("user_id").annotate(first=Min("day")).values_list("user_id", "first")):
        subject = members[user_id]
        first[subject] = min(first_day, first.get(subject, first_day))
    return trailing, first


def users_spending(project: Project, day: date, floor: Decimal) -> list[DaySpend]:
    """Users who spent at least `floor` today, with their trailing spend and first day."""
    today = dict(UserDay.objects.filter(project=project, day=day, spend__gte=floor).values_list("user_id", "spend"))
    trailing, first = _history(project, day, {user_id: user_id for user_id in today})
    return [DaySpend("user", user_id, spend, trailing.get(user_id, ZERO), first.get(user_id))
            for user_id, spend in sorted(today.items())]


def teams_spending(project: Project, day: date, floor: Decimal) -> list[DaySpend]:
    """Teams whose members together spent at least `floor` today, with their trailing spend and first day."""
    team = Subquery(TeamMember.objects.filter(project_id=OuterRef("project_id"), user_id=OuterRef("user_id"))
                    .values("team__name")[:1])
    today = dict(UserDay.objects.filter(project=project, day=day).annotate(team=team).exclude(team=None)
                 .values("team").annotate(spend=MoneySum("spend")).filter(spend__gte=floor)
                 .values_list("team", "spend"))
    members = dict(TeamMember.objects.filter(project=project, team__name__in=list(today))
                   .values_list("user_id", "team__name"))
    trailing, first = _history(project, day, members)
    return [DaySpend("team", name, spend, trailing.get(name, ZERO), first.get(name))
            for name, spend in sorted(today.items())]


def top_model(project: Project, day: date, user_ids: list[str]) -> tuple[str, Decimal] | None:
    """The model these users spent most on today, and how much."""
    row = (SpendDay.objects.filter(project=project, day=day, user_id__in=user_ids).values("model")
           .annotate(spend=MoneySum("spend")).order_by("-spend", "model").values_list("model", "spend").first())
    return (row[0], row[1]) if row else None


def members_of_team(project: Project, team: str) -> list[str]:
    return list(TeamMember.objects.filter(project=project, team__name=team).values_list("user_id", flat=True))
