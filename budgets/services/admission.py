"""Admission: may `amount` more be spent or held at every budget level, atomically.

A level is a row with a cap, a spend and open holds (today the project's cap and the
user's budget; a team or a per-model cap would be one more Level). Admission locks every
level's row in one fixed order, the project first, the same order every writer takes
(recording, the hosted protocol, resets, the expiry sweep), so concurrent admissions
see each other and never deadlock against one another.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from django.db import OperationalError, connection, transaction
from django.db.models import F

from ..base.errors import BudgetExceeded
from ..base.fields import money
from ..domain.codec import decimal_text
from ..models import Project, UserBudget

T = TypeVar("T")
RETRY_ATTEMPTS = 5


@dataclass(frozen=True)
class Level:
    """One budget an amount must fit under: `cap_field` None on the row means no cap."""

    scope: str  # "project" or "user": what a refusal names
    label: str  # e.g. "project 'acme'", "user 'alice'"
    model: type[Project] | type[UserBudget]
    pk: int
    cap_field: str


def levels_of(project: Project, budget: UserBudget) -> list[Level]:
    """The levels a user's spend counts against, in lock order: the project first, then the user."""
    return [
        Level("project", f"project {project.name!r}", Project, project.pk, "max_budget"),
        Level("user", f"user {budget.user_id!r}", UserBudget, budget.pk, "total_budget"),
    ]


def lock_project(project: Project) -> None:
    """Take the project row's lock first, before any other row of the project (one order everywhere)."""
    Project.objects.select_for_update(no_key=True).filter(pk=project.pk).values_list("pk").first()


def levels_admit(levels: Sequence[Level], amount: Decimal, *, hold: bool = False) -> None:
    """Admit `amount` iff for every level spend + held + amount <= cap, atomically; else BudgetExceeded.

    Locks every level's row in the order given (inside the caller's transaction), then checks
    them all; the first level without room is named with its figures. With `hold`, adds
    `amount` to every level's `held` in the same transaction.
    """
    figures = []
    for level in levels:
        cap, spend, held = (
            level.model.objects.select_for_update(no_key=True)
            .filter(pk=level.pk).values_list(level.cap_field, "current_spend", "held").get()
        )
        figures.append((level, cap, spend, held))
    check_figures(figures, amount)
    if hold:
        for level in levels:
            level.model.objects.filter(pk=level.pk).update(held=F("held") + money(amount))


def check_figures(figures: Sequence[tuple[Level, Decimal | None, Decimal, Decimal]], amount: Decimal) -> None:
    """BudgetExceeded naming the first level (the user first) whose cap has no room for `amount`.

    `figures` are (level, cap, spend, held) read under the levels' row locks.
    """
    # The user is named first when both have no room: it is the budget the caller can act on.
    for level, cap, spend, held in sorted(figures, key=lambda f: f[0].scope != "user"):
        # A zero amount is refused once the cap is reached (nothing left), as exceeded_scope says.
        if cap is not None and (spend + held >= cap if amount == 0 else spend + held + amount > cap):
            left = max(cap - spend - held, Decimal(0))
            raise BudgetExceeded(
                f"the {level.scope} budget has no room for ${decimal_text(amount)}: {level.label} has "
                f"${decimal_text(left)} left of ${decimal_text(cap)} "
                f"(spend ${decimal_text(spend)}, held ${decimal_text(held)})",
                scope=level.scope, limit=cap, spend=spend, held=held, requested=amount,
            )


def levels_unhold(levels: Sequence[Level], amount: Decimal) -> None:
    """Give back a hold on every level (in lock order)."""
    for level in levels:
        level.model.objects.filter(pk=level.pk).update(held=F("held") - money(amount))


def _is_conflict(exc: OperationalError) -> bool:
    try:
        from psycopg import errors as pg_errors
    except ImportError:  # SQLite-only installs: its writers are serialised, it cannot deadlock
        return False
    return isinstance(exc.__cause__, (pg_errors.DeadlockDetected, pg_errors.SerializationFailure))


def _outermost() -> bool:
    return not connection.in_atomic_block


def retry_on_conflict(func: Callable[..., T]) -> Callable[..., T]:
    """Run a service again when PostgreSQL aborted it as a deadlock victim or a serialization failure.

    Only at the outermost transaction (inside someone else's, the whole of it must be retried),
    a few times with jitter; then the error goes up (the API answers 503 with Retry-After).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            outermost = _outermost()
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                attempt += 1
                if not outermost or attempt >= RETRY_ATTEMPTS or not _is_conflict(exc):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * attempt)

    return wrapper


def atomic_retried(func: Callable[..., T]) -> Callable[..., T]:
    """`transaction.atomic` inside `retry_on_conflict`."""
    return retry_on_conflict(transaction.atomic(func))
