"""What a call's limits look like now, without locks: for /check and the answers' X-Budget-* headers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from django.db.models import Min, Sum
from django.utils.timezone import now as utcnow

from ..domain import periods
from ..models import Limit, LimitIncrease, Reservation, UserBudget
from .limits import CallScope, LimitState, applicable_limits_finding_team


def limits_now(scope: CallScope, at: datetime | None = None, *, hard_only: bool = False) -> list[LimitState]:
    """The applicable Limit rows as they are in their current windows: a window that has ended reads as
    the next one, with nothing used (what the first writer's lazy reset will make of it).
    One statement: the user's team is found in it (`scope.team` is not read)."""
    at = at or utcnow()
    states = []
    limits = list(applicable_limits_finding_team(scope, hard_only=hard_only))
    ending = [limit.pk for limit in limits if limit.raises_end_at is not None and limit.raises_end_at <= at]
    active = raises_active(ending, at) if ending else {}
    for limit in limits:
        state = LimitState.of_limit(limit)
        if limit.pk in ending:  # raises that have ended read as gone (what the lazy end will make of them)
            raised, end = active.get(limit.pk, (Decimal(0), None))
            state = replace(state, limit=limit.amount + raised, raised=raised, raises_end_at=end)
        if limit.resets_at is not None and limit.resets_at <= at:
            state = replace(state, used=Decimal(0),
                            resets_at=periods.window_containing(limit.window, scope.project.timezone, at).next_reset)
        states.append(state)
    return states


def raises_active(limit_ids: Iterable[int], at: datetime) -> dict[int, tuple[Decimal, datetime | None]]:
    """Per limit id: the sum of its raises active at `at` and the earliest end among them (limits
    without one are left out). One statement."""
    rows = (LimitIncrease.objects.filter(limit_id__in=list(limit_ids), ended_at__isnull=True, starts_at__lte=at,
                                         ends_at__gt=at)
            .values("limit_id").annotate(total=Sum("amount"), first_end=Min("ends_at")))
    return {row["limit_id"]: (row["total"], row["first_end"]) for row in rows}


def tightest_usd(states: Iterable[LimitState | None]) -> LimitState | None:
    """The hard dollar limit with the least left (the one the X-Budget-* headers describe)."""
    usd = [state for state in states if state is not None and state.unit == "usd" and state.mode == "hard"]
    return min(usd, key=lambda state: state.remaining, default=None)


def reservation_limits(budget: UserBudget, reservation: Reservation) -> list[LimitState | None]:
    """The limits a reservation holds on, as they are now: the user's budget (`budget`, current, with
    its project's figures), the project's cap and the reservation's Limit rows (`limit_ids`)."""
    states: list[LimitState | None] = [LimitState.of_budget(budget), LimitState.of_project(budget.project)]
    if reservation.limit_ids:
        states += [LimitState.of_limit(limit) for limit in Limit.objects.filter(pk__in=reservation.limit_ids)]
    return states
