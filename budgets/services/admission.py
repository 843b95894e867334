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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db import OperationalError, connection, transaction
from django.db.models import F

from ..base.errors import BudgetExceeded
from ..base.fields import money
from ..domain.codec import decimal_text
from ..models import Limit, Project, UserBudget
from ..selectors.limits import WINDOW_OF_DURATION, LimitState

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
    subject: str = ""  # the user's id for a user level


# A level's figures read under its row's lock: (level, cap, spend, held, duration, resets_at).
Figures = tuple[Level, Decimal | None, Decimal, Decimal, str, datetime | None]


def levels_of(project: Project, budget: UserBudget) -> list[Level]:
    """The levels a user's spend counts against, in lock order: the project first, then the user."""
    return [
        Level("project", f"project {project.name!r}", Project, project.pk, "max_budget"),
        Level("user", f"user {budget.user_id!r}", UserBudget, budget.pk, "total_budget", budget.user_id),
    ]


@dataclass(frozen=True)
class Need:
    """What one call asks of a limit in each unit: dollars, tokens (prompt + completion, or the
    worst case prompt + max_tokens for a reservation) and one request."""

    usd: Decimal
    tokens: int = 0
    requests: int = 1

    def of(self, unit: str) -> Decimal:
        if unit == Limit.Unit.USD:
            return self.usd
        return Decimal(self.tokens if unit == Limit.Unit.TOKENS else self.requests)


def limits_lock(ids: Iterable[int]) -> list[Limit]:
    """Lock Limit rows by id, in id order (after the project's and the budget's rows: one order everywhere)."""
    ids = sorted(set(ids))
    if not ids:
        return []
    return list(Limit.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("id"))


def limits_hold(limits: Iterable[tuple[int, str]], need: Need, *, sign: int = 1) -> None:
    """Add (sign 1) or give back (sign -1) a hold of `need` on limits (id, unit), in id order; the
    caller holds their locks (or, giving back, takes them here in that order)."""
    for limit_id, unit in sorted(limits):
        amount = need.of(unit)
        if amount:
            Limit.objects.filter(pk=limit_id).update(held=F("held") + money(sign * amount))


def limits_check(states: Sequence[LimitState], need: Need) -> None:
    """BudgetExceeded naming the first hard limit (in the order given) without room for `need` in its unit.

    A call that asks nothing in a limit's unit (a $0 call under a dollar limit) is not refused by it.
    """
    for state in states:
        requested = need.of(state.unit)
        if state.mode == Limit.Mode.HARD and requested > 0 and state.used + state.held + requested > state.ceiling:
            raise refusal(state, requested)


_SUBJECT_WORDS = {"project": "the project", "team": "the team", "user": "the user", "key": "the API key",
                  "tag": "the tag"}
_WINDOW_WORDS = {"hour": "this hour", "day": "today", "week": "this week", "month": "this month",
                 "year": "this year", "lifetime": "in all", "days": "this period"}
CENT = Decimal("0.01")


def amount_words(unit: str, amount: Decimal, *, with_unit: bool = True) -> str:
    """$1.00 / $0.005; 1,500 tokens; 7 requests (`with_unit` False: the number only, dollars keep their $)."""
    if unit == Limit.Unit.USD:
        return f"${amount:.2f}" if amount == amount.quantize(CENT) else f"${decimal_text(amount)}"
    count = f"{int(amount):,}"
    if not with_unit:
        return count
    noun = "tokens" if unit == Limit.Unit.TOKENS else "requests"
    return f"{count} {noun[:-1] if int(amount) == 1 else noun}"


def refusal(state: LimitState, requested: Decimal) -> BudgetExceeded:
    """The refusal naming a limit in words: "the team 'research' has $0.00 left of $1.00 this month"."""
    who = _SUBJECT_WORDS.get(state.scope, f"the {state.scope}")
    if state.subject:
        who += f" {state.subject!r}"
    model = f" for {state.model}" if state.model else ""
    message = (f"{who} has {amount_words(state.unit, state.remaining)} left of "
               f"{amount_words(state.unit, state.limit, with_unit=False)}{model} {_WINDOW_WORDS[state.window]}; "
               f"this call needs {amount_words(state.unit, requested)}")
    return BudgetExceeded(message, scope=state.scope, limit=state.limit, spend=state.used, held=state.held,
                          requested=requested, state=state)


def lock_project(project: Project) -> None:
    """Take the project row's lock first, before any other row of the project (one order everywhere)."""
    Project.objects.select_for_update(no_key=True).filter(pk=project.pk).values_list("pk").first()


def levels_admit(levels: Sequence[Level], amount: Decimal, *, hold: bool = False) -> None:
    """Admit `amount` iff for every level spend + held + amount <= cap, atomically; else BudgetExceeded.

    Locks every level's row in the order given (inside the caller's transaction), then checks
    them all; the first level without room is named with its figures. With `hold`, adds
    `amount` to every level's `held` in the same transaction.
    """
    check_figures(levels_lock(levels), amount)
    if hold:
        levels_hold(levels, amount)


def levels_lock(levels: Sequence[Level]) -> list[Figures]:
    """Lock every level's row in the order given; their figures as read under the locks."""
    figures: list[Figures] = []
    for level in levels:
        cap, spend, held, duration, resets_at = (
            level.model.objects.select_for_update(no_key=True)
            .filter(pk=level.pk).values_list(level.cap_field, "current_spend", "held", "duration", "next_reset_at")
            .get()
        )
        figures.append((level, cap, spend, held, duration, resets_at))
    return figures


def levels_hold(levels: Sequence[Level], amount: Decimal) -> None:
    for level in levels:
        level.model.objects.filter(pk=level.pk).update(held=F("held") + money(amount))


def level_state(figures: Figures) -> LimitState | None:
    """A level as a limit (id None), for a refusal's `limit` and the answers' remaining; None without a cap."""
    level, cap, spend, held, duration, resets_at = figures
    if cap is None:
        return None
    return LimitState(id=None, scope=level.scope, subject=level.subject, model=None, unit="usd",
                      window=WINDOW_OF_DURATION.get(duration, "days"), mode="hard", limit=cap, used=spend,
                      held=held, resets_at=resets_at)


def check_figures(figures: Sequence[Figures], amount: Decimal) -> None:
    """BudgetExceeded naming the first level (the user first) whose cap has no room for `amount`.

    `figures` are read under the levels' row locks.
    """
    # The user is named first when both have no room: it is the budget the caller can act on.
    for level, cap, spend, held, duration, resets_at in sorted(figures, key=lambda f: f[0].scope != "user"):
        # A zero amount is refused once the cap is reached (nothing left), as exceeded_scope says.
        if cap is not None and (spend + held >= cap if amount == 0 else spend + held + amount > cap):
            left = max(cap - spend - held, Decimal(0))
            raise BudgetExceeded(
                f"the {level.scope} budget has no room for ${decimal_text(amount)}: {level.label} has "
                f"${decimal_text(left)} left of ${decimal_text(cap)} "
                f"(spend ${decimal_text(spend)}, held ${decimal_text(held)})",
                scope=level.scope, limit=cap, spend=spend, held=held, requested=amount,
                state=level_state((level, cap, spend, held, duration, resets_at)),
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
