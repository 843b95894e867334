"""Which limits apply to a call: the one definition admission, recording and the self-service read share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Q, QuerySet, Subquery
from django.utils.timezone import now as utcnow

from ..domain.forecast import projected
from ..models import Limit, Project, TeamMember, UserBudget

MAX_TAGS = 10


@dataclass(frozen=True)
class CallScope:
    """Who makes a call and on what: the project, its user, the API key's name, the tags, the model.

    `model` is the price table's name for the call's model when it has one (as pricing
    resolves it), so a limit on "gpt-4o" also covers calls that asked for "openai/gpt-4o".
    """

    project: Project
    user_id: str
    model: str = ""
    key_name: str | None = None
    tags: tuple[str, ...] = ()
    team: str | None = None


def team_of(project: Project, user_id: str) -> str | None:
    """The name of the user's team in the project, if any."""
    return (
        TeamMember.objects.filter(project=project, user_id=user_id).values_list("team__name", flat=True).first()
    )


def applicable_limits(call: CallScope, *, hard_only: bool = False) -> QuerySet[Limit]:
    """The project's limits that count this call: the project's, the team's, the user's, the key's and
    each tag's, each without a model or with the call's model; in id order (the lock order)."""
    return _applicable(call, call.team, hard_only=hard_only)


def applicable_limits_finding_team(call: CallScope, *, hard_only: bool = False) -> QuerySet[Limit]:
    """applicable_limits with the user's team found inside the same query (`call.team` is not read):
    the ledger's fast path asks it within the statement that locks the project."""
    team = (TeamMember.objects.filter(project_id=call.project.pk, user_id=call.user_id)
            .values("team__name")[:1])
    return _applicable(call, Subquery(team), hard_only=hard_only)


def _applicable(call: CallScope, team: str | Subquery | None, *, hard_only: bool) -> QuerySet[Limit]:
    subjects = Q(scope=Limit.Scope.PROJECT) | Q(scope=Limit.Scope.USER, subject=call.user_id)
    if team is not None:
        subjects |= Q(scope=Limit.Scope.TEAM, subject=team)
    if call.key_name:
        subjects |= Q(scope=Limit.Scope.KEY, subject=call.key_name)
    if call.tags:
        subjects |= Q(scope=Limit.Scope.TAG, subject__in=call.tags)
    models = Q(model="") | Q(model=call.model) if call.model else Q(model="")
    limits = Limit.objects.filter(project=call.project).filter(subjects).filter(models)
    if hard_only:
        limits = limits.filter(mode=Limit.Mode.HARD)
    return limits.order_by("id")


def tags_text(tags: tuple[str, ...] | list[str]) -> str:
    """The ledger's form of a call's tags: ",a,b," (empty for none), filtered with tags__contains=",a,"."""
    return f",{','.join(sorted(set(tags)))}," if tags else ""


# A budget's duration as a limit's window ("days": LiteLLM's every-N-days budgets).
WINDOW_OF_DURATION = {"none": "lifetime", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year",
                      "days": "days"}


@dataclass(frozen=True)
class LimitState:
    """A limit's figures as a refusal and the self-service read name it, whichever row holds it.

    `id` is None for the user's budget and the project's cap, which keep their own rows
    (UserBudget, Project) but answer as limits of scope user and project, unit usd.
    `limit` is the effective limit: a Limit row's amount plus its active raises (`raised`, until
    `raises_end_at`, the earliest end among them).
    """

    id: int | None
    scope: str
    subject: str
    model: str | None
    unit: str
    window: str
    mode: str
    limit: Decimal
    used: Decimal
    held: Decimal
    resets_at: datetime | None
    # Known when the state was read from its row (None from the ledger's fast path: no forecast then).
    window_start: datetime | None = None
    thresholds: tuple[int, ...] | None = None  # the limit's own alert thresholds; None: the project's
    raised: Decimal = Decimal(0)
    raises_end_at: datetime | None = None
    # Grants (services.grants): what they paid of `used` in this window, and what the subject's active
    # grants have left (known where admission read them; 0 elsewhere). Both are room beyond `limit`.
    granted: Decimal = Decimal(0)
    grant_room: Decimal = Decimal(0)
    grace_percent: int | None = None
    rollover_max: Decimal | None = None

    @property
    def remaining(self) -> Decimal:
        """Room before the limit and the grants are used up (the grace is not counted: it is not a budget)."""
        return max(self.limit + self.granted + self.grant_room - self.used - self.held, Decimal(0))

    @property
    def capacity(self) -> Decimal:
        """What the thresholds measure `used` against: the limit and the grants (what they paid this window
        and what they have left: a grant's use does not change it)."""
        return self.limit + self.granted + self.grant_room

    @property
    def ceiling(self) -> Decimal:
        """What a hard limit admits up to: the limit with its grace, plus the grants."""
        grace = self.limit * self.grace_percent / 100 if self.grace_percent else Decimal(0)
        return self.limit + grace + self.granted + self.grant_room

    def forecast(self, at: datetime | None = None) -> Decimal | None:
        """Usage at the window's end at the rate so far (domain.forecast; whole tokens and requests);
        None for a lifetime window."""
        if self.window_start is None or self.resets_at is None:
            return None
        value = projected(self.used, self.window_start, self.resets_at, at or utcnow())
        if value is None or self.unit == "usd":
            return value
        return value.to_integral_value(ROUND_HALF_UP)

    @property
    def amount(self) -> Decimal:
        """The limit without its temporary raises."""
        return self.limit - self.raised

    @classmethod
    def of_limit(cls, limit: Limit) -> LimitState:
        return cls(id=limit.pk, scope=limit.scope, subject=limit.subject, model=limit.model or None, unit=limit.unit,
                   window=limit.window, mode=limit.mode, limit=limit.amount + limit.raised, used=limit.used,
                   held=limit.held, resets_at=limit.resets_at, raised=limit.raised, raises_end_at=limit.raises_end_at,
                   window_start=limit.window_start, granted=limit.granted, grace_percent=limit.grace_percent,
                   rollover_max=limit.rollover_max,
                   thresholds=tuple(limit.thresholds) if isinstance(limit.thresholds, list) else None)

    @classmethod
    def of_budget(cls, budget: UserBudget) -> LimitState:
        return cls(id=None, scope="user", subject=budget.user_id, model=None, unit="usd",
                   window=WINDOW_OF_DURATION[budget.duration], mode="hard", limit=budget.total_budget,
                   used=budget.current_spend, held=budget.held, resets_at=budget.next_reset_at,
                   window_start=budget.period_start, granted=budget.granted,
                   grant_room=getattr(budget, "grant_room", Decimal(0)))

    @classmethod
    def of_project(cls, project: Project) -> LimitState | None:
        """The project's cap as a limit; None when the project has no cap."""
        if project.max_budget is None:
            return None
        return cls(id=None, scope="project", subject="", model=None, unit="usd",
                   window=WINDOW_OF_DURATION[project.duration], mode="hard", limit=project.max_budget,
                   used=project.current_spend, held=project.held, resets_at=project.next_reset_at,
                   window_start=project.period_start)
