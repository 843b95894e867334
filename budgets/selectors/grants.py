"""Grants as admission and the thresholds see them: which limits they extend, and the room they have left.

A subject's grants (a user's, a team's) extend that subject's hard dollar limits on every model: for a
user the budget (UserBudget) and the user's Limit rows, for a team the team's Limit rows. Limits on a
model, in tokens or requests, soft, or of a project, key or tag are not extended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Q, QuerySet, Sum

from ..base.fields import MoneyField
from ..models import Grant, Limit
from .limits import LimitState

ZERO = Decimal(0)
GRANT_SCOPES = (Limit.Scope.USER, Limit.Scope.TEAM)

# The SQL of the same rule, over a row `x` of budgets_limit's columns (the hot path's statements).
EXTENDED_SQL = "(x.unit = 'usd' AND x.model = '' AND x.mode = 'hard' AND x.scope IN ('user', 'team'))"


def extended(scope: str, unit: str, model: str | None, mode: str) -> bool:
    """Does a subject's grants extend this limit?"""
    return unit == Limit.Unit.USD and not model and mode == Limit.Mode.HARD and scope in GRANT_SCOPES


def active_grants(project_id: int, at: datetime) -> QuerySet[Grant]:
    """The project's grants with something left at `at`, in the order they are used."""
    return (Grant.objects.filter(project_id=project_id, voided_at__isnull=True, used__lt=F("amount"))
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=at)).order_by("priority", F("expires_at").asc(
                nulls_last=True), "id"))


def grant_rooms(project_id: int, subjects: Iterable[tuple[str, str]], at: datetime) -> dict[tuple[str, str], Decimal]:
    """What the active grants of each (scope, subject) have left."""
    wanted = Q(pk__in=[])
    for scope, subject in set(subjects):
        wanted |= Q(scope=scope, subject=subject)
    rows = (active_grants(project_id, at).filter(wanted).order_by().values("scope", "subject")
            .annotate(rest=Sum(F("amount") - F("used"), output_field=MoneyField())))
    return {(row["scope"], row["subject"]): row["rest"] for row in rows}


def with_room(state: LimitState, rooms: dict[tuple[str, str], Decimal]) -> LimitState:
    """The state with its subject's grant room, when its subject's grants extend it."""
    if not extended(state.scope, state.unit, state.model, state.mode):
        return state
    return replace(state, grant_room=rooms.get((state.scope, state.subject), ZERO))


def states_with_rooms(project_id: int, states: Iterable[LimitState], at: datetime) -> list[LimitState]:
    """The states with their grant rooms (one read)."""
    states = list(states)
    wanted = [(state.scope, state.subject) for state in states
              if extended(state.scope, state.unit, state.model, state.mode)]
    rooms = grant_rooms(project_id, wanted, at) if wanted else {}
    return [with_room(state, rooms) for state in states]
