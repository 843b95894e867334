"""Reservations: hold a call's worst case (reserve), record its real cost once (settle), give it back.

A hold is added to the user's and the project's `held` with F() in the same transaction that
creates the reservation, and taken off in the transaction that settles, releases or expires
it, so remaining = budget − spend − held is one row read. Each applicable hard Limit holds the
call's worst case in its own unit too (dollars, prompt + max_tokens tokens, one request); the
reservation keeps which (`limit_ids`) and the tokens, so settling, releasing and expiring give
back exactly those holds. Locks: the project row first, then the reservation, then the user's
budget, then Limit rows by id (services.admission).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import F, OuterRef, Subquery, Sum
from django.utils.timezone import now as utcnow

from .. import metrics
from ..base.errors import BudgetExceeded, Conflict, IdempotencyConflict, InvalidInput, NotFound
from ..base.fields import MoneyField, money
from ..base.money import stored
from ..domain.usage import Usage
from ..models import ApiKey, Limit, Project, Reservation, UserBudget
from ..selectors.limits import CallScope, LimitState, applicable_limits, tags_text, team_of
from .admission import (
    Level,
    Need,
    atomic_retried,
    check_figures,
    levels_hold,
    levels_lock,
    levels_of,
    levels_unhold,
    limits_check,
    limits_hold,
    limits_lock,
    lock_project,
)
from .costs import CostRecorded, cost_record, recorded_again, recorded_state
from .ledger import exceeded_scope, limit_model
from .limit_windows import limits_current
from .resets import budget_current, ensure_current_period

DEFAULT_TTL_SECONDS = 600
MAX_TTL_SECONDS = 86400
EXPIRE_BATCH_SIZE = 500
Status = Reservation.Status


def _levels(project: Project, reservation: Reservation) -> list[Level]:
    """The rows holding this reservation's amount, in lock order (the budget may have been deleted)."""
    levels = [Level("project", f"project {project.name!r}", Project, project.pk, "max_budget")]
    if reservation.budget_id is not None:
        levels.append(Level("user", f"user {reservation.user_id!r}", UserBudget, reservation.budget_id,
                            "total_budget"))
    return levels


def _need(reservation: Reservation) -> Need:
    return Need(usd=reservation.amount, tokens=reservation.tokens)


def _limits_unhold(reservations: list[Reservation]) -> None:
    """Give back the holds reservations keep on Limit rows, one update per limit, in id order."""
    back: dict[int, Decimal] = {}
    units = dict(Limit.objects.filter(pk__in={pk for r in reservations for pk in r.limit_ids})
                 .values_list("pk", "unit"))
    for reservation in reservations:
        for limit_id in reservation.limit_ids:
            if limit_id in units:  # a limit deleted meanwhile holds nothing any more
                back[limit_id] = back.get(limit_id, Decimal(0)) + _need(reservation).of(units[limit_id])
    for limit_id in sorted(back):
        if back[limit_id]:
            Limit.objects.filter(pk=limit_id).update(held=F("held") - money(back[limit_id]))


def _expire_locked(project_id: int, *, at: datetime, user_id: str | None = None,
                   batch_size: int = EXPIRE_BATCH_SIZE) -> int:
    """Expire open reservations past their time, set-based; the caller holds the project's lock."""
    total = 0
    while True:
        due = Reservation.objects.filter(project_id=project_id, status=Status.OPEN, expires_at__lte=at)
        if user_id is not None:
            due = due.filter(user_id=user_id)
        ids = list(due.order_by("pk").select_for_update(skip_locked=True).values_list("pk", flat=True)[:batch_size])
        if not ids:
            return total
        batch = Reservation.objects.filter(pk__in=ids)
        held = batch.aggregate(total=Sum("amount", output_field=MoneyField()))["total"] or Decimal(0)
        per_budget = (
            Reservation.objects.filter(pk__in=ids, budget=OuterRef("pk"))
            .values("budget").annotate(total=Sum("amount")).values("total")
        )
        Project.objects.filter(pk=project_id).update(held=F("held") - money(held))
        UserBudget.objects.filter(pk__in=batch.exclude(budget=None).values("budget")).update(
            held=F("held") - Subquery(per_budget, output_field=MoneyField()))
        _limits_unhold(list(batch.exclude(limit_ids=[]).only("amount", "tokens", "limit_ids")))
        batch.update(status=Status.EXPIRED)
        total += len(ids)
        if len(ids) < batch_size:
            return total


def reservations_expire(*, at: datetime | None = None, batch_size: int = EXPIRE_BATCH_SIZE) -> int:
    """The sweep: release every hold past its expiry, one project at a time; returns how many."""
    at = at or utcnow()
    project_ids = (
        Reservation.objects.filter(status=Status.OPEN, expires_at__lte=at)
        .values_list("project_id", flat=True).distinct()
    )
    total = 0
    for project_id in list(project_ids):
        total += _expire_project(project_id, at=at, batch_size=batch_size)
    return total


@atomic_retried
def _expire_project(project_id: int, *, at: datetime, batch_size: int) -> int:
    Project.objects.select_for_update(no_key=True).filter(pk=project_id).values_list("pk").first()
    return _expire_locked(project_id, at=at, batch_size=batch_size)


def _validate(amount: Decimal, ttl_seconds: Any, idempotency_key: str | None) -> None:
    if amount <= 0:
        raise InvalidInput("a reservation holds more than $0: give a positive estimated_cost or max_tokens")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput(f"ttl_seconds must be a whole number from 1 to {MAX_TTL_SECONDS}")


@atomic_retried
def reservation_create(
    *, project: Project, user_id: str, amount: Decimal, model: str | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS, idempotency_key: str | None = None, fingerprint: str = "",
    tokens: int = 0, tags: tuple[str, ...] = (), api_key: ApiKey | None = None,
) -> tuple[Reservation, bool]:
    """Hold `amount` (and `tokens`, the worst case prompt + max_tokens, and one request) against the
    user's and the project's remaining budget and every applicable hard limit, or BudgetExceeded.

    Returns (reservation, created). With an Idempotency-Key, a retry with the same request gets the
    reservation as it was created (created False); a different request with it is a conflict.
    """
    amount = stored(amount)
    _validate(amount, ttl_seconds, idempotency_key)
    lock_project(project)
    budget = ensure_current_period(project, user_id=user_id)
    if idempotency_key:
        first = Reservation.objects.filter(project=project, idempotency_key=idempotency_key).first()
        if first is not None:
            if first.request_fingerprint != fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request")
            return _as_created(first), False
    at = utcnow()
    _expire_locked(project.pk, at=at, user_id=user_id)  # lazily: this user's stale holds give room back
    levels = levels_of(project, budget)
    figures = levels_lock(levels)  # the budget's row, then the limits' by id
    scope = CallScope(project=project, user_id=user_id, model=limit_model(model or ""),
                      key_name=api_key.name if api_key is not None else None, tags=tags,
                      team=team_of(project, user_id))
    limits = limits_current(project, limits_lock(applicable_limits(scope, hard_only=True)
                                                 .values_list("id", flat=True)), at)
    need = Need(usd=amount, tokens=tokens)
    try:
        check_figures(figures, amount)
        limits_check([LimitState.of_limit(limit) for limit in limits], need)
    except BudgetExceeded as exc:
        metrics.budget_exceeded(project.name, exc.scope)
        raise
    levels_hold(levels, amount)
    limits_hold([(limit.pk, limit.unit) for limit in limits], need)
    reservation = Reservation.objects.create(
        project=project, budget=budget, user_id=user_id, model=model, amount=amount, status=Status.OPEN,
        expires_at=at + timedelta(seconds=ttl_seconds), created_at=at, idempotency_key=idempotency_key or None,
        request_fingerprint=fingerprint, tokens=tokens, tags=tags_text(tags), api_key=api_key,
        limit_ids=[limit.pk for limit in limits],
    )
    return reservation, True


def _as_created(reservation: Reservation) -> Reservation:
    """The reservation as its creation answered: open, nothing settled (settling changes only these)."""
    reservation.status, reservation.settled_at, reservation.settled_cost = Status.OPEN, None, None
    reservation.event_id = None
    return reservation


def _locked(project: Project, reservation_id: int) -> Reservation:
    reservation = Reservation.objects.select_for_update(no_key=True).filter(project=project, pk=reservation_id).first()
    if reservation is None:
        raise NotFound(f"no reservation {reservation_id} in project {project.name!r}")
    return reservation


@dataclass(frozen=True)
class Settled:
    reservation: Reservation
    recorded: CostRecorded  # for a retried settle, with the figures the first settle answered with
    created: bool  # False for a retried settle: nothing new was recorded


def _settled_again(project: Project, reservation: Reservation) -> CostRecorded:
    """A retried settle's figures: those kept with the first settle, or (a settle kept before the
    figures were, whose stored answer is another shape) the user's figures now."""
    assert reservation.event is not None
    state = reservation.settle_response
    if state is not None and "budget" in state:
        return recorded_again(reservation.event, state)
    current = budget_current(project=project, user_id=reservation.user_id)
    return CostRecorded(event=reservation.event, budget=current.budget, created=False,
                        exceeded=exceeded_scope(current.budget, project), model_costs=current.model_costs)


@atomic_retried
def reservation_settle(
    *, project: Project, reservation_id: int, usage: Usage, cost: Any = None, source: str,
) -> Settled:
    """Record the call's real cost in the ledger once and give the hold back.

    More than was held is recorded anyway (spend is a fact; the answer says over_hold).
    A retried settle answers as the first did and records nothing. Released or expired: Conflict.
    """
    lock_project(project)
    reservation = _locked(project, reservation_id)
    if reservation.status == Status.SETTLED:  # the row is final: only the user's figures are kept apart
        assert reservation.event is not None
        return Settled(reservation, _settled_again(project, reservation), False)
    if reservation.status == Status.OPEN and reservation.expires_at <= utcnow():
        raise Conflict(f"reservation {reservation_id} expired at {reservation.expires_at.isoformat()}; "
                       "record the cost with POST /users/{user}/costs")
    if reservation.status != Status.OPEN:
        raise Conflict(f"reservation {reservation_id} is {reservation.status}; it cannot be settled")
    levels_unhold(_levels(project, reservation), reservation.amount)
    _limits_unhold([reservation])
    recorded = cost_record(project=project, user_id=reservation.user_id, usage=usage, cost=cost, source=source,
                           tags=_tags(reservation), api_key=reservation.api_key)
    at = utcnow()
    Reservation.objects.filter(pk=reservation.pk).update(
        status=Status.SETTLED, settled_at=at, event=recorded.event, settled_cost=recorded.event.cost)
    # Kept in the settle's transaction: a retried settle answers from these, as the first did.
    Reservation.objects.filter(pk=reservation.pk).update(settle_response=recorded_state(recorded, 200))
    reservation.refresh_from_db()
    return Settled(reservation, recorded, True)


@atomic_retried
def reservation_release(*, project: Project, reservation_id: int) -> Reservation:
    """Cancel a reservation and give its hold back; releasing again (or an expired one) changes nothing."""
    lock_project(project)
    reservation = _locked(project, reservation_id)
    if reservation.status == Status.SETTLED:
        raise Conflict(f"reservation {reservation_id} is settled; its cost is in the ledger")
    if reservation.status == Status.OPEN:
        levels_unhold(_levels(project, reservation), reservation.amount)
        _limits_unhold([reservation])
        Reservation.objects.filter(pk=reservation.pk).update(status=Status.RELEASED, settled_at=utcnow())
        reservation.refresh_from_db()
    return reservation


def _tags(reservation: Reservation) -> tuple[str, ...]:
    """The tags a reservation was made with (stored as tags_text: ",a,b,")."""
    return tuple(tag for tag in reservation.tags.split(",") if tag)


def reservation_get(*, project: Project, reservation_id: int) -> Reservation:
    """One reservation of the project; its user's expired holds are released first (lazily)."""
    reservation = Reservation.objects.filter(project=project, pk=reservation_id).first()
    if reservation is None:
        raise NotFound(f"no reservation {reservation_id} in project {project.name!r}")
    if reservation.status == Status.OPEN and reservation.expires_at <= utcnow():
        reservations_expire_user(project=project, user_id=reservation.user_id)
        reservation.refresh_from_db()
    return reservation


@atomic_retried
def reservations_expire_user(*, project: Project, user_id: str) -> int:
    lock_project(project)
    return _expire_locked(project.pk, at=utcnow(), user_id=user_id)


