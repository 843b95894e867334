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

from django.db import connection, transaction
from django.db.models import F, OuterRef, Subquery, Sum
from django.utils.timezone import now as utcnow

from .. import metrics
from ..base.errors import BudgetExceeded, Conflict, IdempotencyConflict, InvalidInput, NotFound
from ..base.fields import MoneyField, money
from ..base.money import stored
from ..domain.usage import Usage
from ..models import ApiKey, Grant, Limit, Project, Reservation, UserBudget
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
    retry_on_conflict,
)
from .costs import CostRecorded, cost_record, recorded_again, recorded_state
from .grants import grants_lock
from .ledger import (
    BUDGET_FULL,
    CEILING,
    LOCKED_FIGURES,
    exceeded_scope,
    limit_model,
    limit_states,
    limits_json,
    limits_query,
    locked_budget,
    locked_call,
    prepared_cursor,
    refuse,
    with_budget_ceiling,
)
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


@retry_on_conflict
def reservation_create(
    *, project: Project, user_id: str, amount: Decimal, model: str | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS, idempotency_key: str | None = None, fingerprint: str = "",
    tokens: int = 0, tags: tuple[str, ...] = (), api_key: ApiKey | None = None,
) -> tuple[Reservation, bool]:
    """Hold `amount` (and `tokens`, the worst case prompt + max_tokens, and one request) against the
    user's and the project's remaining budget and every applicable hard limit, or BudgetExceeded.

    Returns (reservation, created). With an Idempotency-Key, a retry with the same request gets the
    reservation as it was created (created False); a different request with it is a conflict.
    On PostgreSQL one statement (_RESERVE) does it when no period ends and the user has no stale hold;
    a created reservation then carries `held_on`: the limits it holds on, after the hold.
    """
    amount = stored(amount)
    _validate(amount, ttl_seconds, idempotency_key)
    scope = CallScope(project=project, user_id=user_id, model=limit_model(model or ""),
                      key_name=api_key.name if api_key is not None else None, tags=tags)
    if connection.vendor == "postgresql":
        reserved = _reserve_in_one_statement(scope, amount, model, ttl_seconds, idempotency_key, fingerprint,
                                             tokens, api_key)
        if reserved is not None:
            return reserved, True
    with transaction.atomic():
        return _reserve_with_the_orm(project=project, user_id=user_id, amount=amount, model=model,
                                     ttl_seconds=ttl_seconds, idempotency_key=idempotency_key,
                                     fingerprint=fingerprint, tokens=tokens, tags=tags, api_key=api_key)


# PostgreSQL: a reservation is one statement (in autocommit outside a transaction), in the lock order of
# services.admission: the project row, the user's budget, the applicable hard limits by id; the verdict
# ("due" when a period or a window must start first or the user has a stale hold to give back: the
# portable path does those; "refused"; "go"), then the reservation and its holds, written only on "go".
# A repeated Idempotency-Key inserts nothing: the portable path answers it.
_RESERVE = """, ok AS MATERIALIZED (
    SELECT bl.id AS budget_id, CASE
        WHEN pl.next_reset_at <= %(at)s OR bl.next_reset_at <= %(at)s
             OR EXISTS (SELECT 1 FROM ll WHERE ll.resets_at <= %(at)s OR ll.raises_end_at <= %(at)s)
             OR EXISTS (SELECT 1 FROM budgets_reservation r WHERE r.project_id = %(project)s
                        AND r.user_id = %(user)s AND r.status = 'open' AND r.expires_at <= %(at)s) THEN 'due'
        WHEN """ + BUDGET_FULL + """
             OR pl.current_spend + pl.held + %(amount)s > pl.max_budget
             OR EXISTS (SELECT 1 FROM ll WHERE ll.mode = 'hard' AND ll.need > 0
                        AND ll.used + ll.held + ll.need > """ + CEILING + """) THEN 'refused'
        ELSE 'go' END AS verdict
    FROM pl, bl, pool
), rv AS (
    INSERT INTO budgets_reservation (project_id, budget_id, user_id, model, amount, status, expires_at, created_at,
        idempotency_key, request_fingerprint, tags, api_key_id, tokens, limit_ids)
    SELECT %(project)s, ok.budget_id, %(user)s, %(model)s, %(amount)s, 'open', %(expires)s, %(at)s, %(key)s,
        %(fingerprint)s, %(tags)s, %(api_key)s, %(tokens)s,
        (SELECT COALESCE(jsonb_agg(ll.id ORDER BY ll.id), '[]'::jsonb) FROM ll)
    FROM ok WHERE ok.verdict = 'go'
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
), p AS (
    UPDATE budgets_project SET held = held + %(amount)s WHERE id = %(project)s AND EXISTS (SELECT 1 FROM rv)
    RETURNING held
), b AS (
    UPDATE budgets_userbudget SET held = held + %(amount)s
    WHERE id = (SELECT budget_id FROM ok) AND EXISTS (SELECT 1 FROM rv) RETURNING held
), l AS (
    UPDATE budgets_limit t SET held = t.held + ll.need FROM ll
    WHERE t.id = ll.id AND ll.need <> 0 AND EXISTS (SELECT 1 FROM rv) RETURNING t.id, t.held
)
SELECT ok.verdict, rv.id, p.held, b.held, """ + LOCKED_FIGURES + """,
       """ + limits_json("held=COALESCE(l.held, ll.held)") + """
FROM pl, bl, ok LEFT JOIN rv ON true LEFT JOIN p ON true LEFT JOIN b ON true
"""


def _reserve_in_one_statement(scope: CallScope, amount: Decimal, model: str | None, ttl_seconds: int,
                              idempotency_key: str | None, fingerprint: str, tokens: int,
                              api_key: ApiKey | None) -> Reservation | None:
    """The reservation, made by _RESERVE; None when the portable path must make (or find) it."""
    project, at = scope.project, utcnow()
    limits_sql, limits_params = limits_query(scope, hard_only=True)
    expires = at + timedelta(seconds=ttl_seconds)
    params = {
        "project": project.pk, "user": scope.user_id, "model": model, "amount": amount, "tokens": tokens,
        "at": at, "expires": expires, "key": idempotency_key or None, "fingerprint": fingerprint,
        "tags": tags_text(scope.tags), "api_key": api_key.pk if api_key is not None else None, **limits_params,
    }
    with prepared_cursor() as cursor:
        cursor.execute(locked_call(limits_sql, lock=True) + _RESERVE, params)
        row = cursor.fetchone()
    if row is None:
        return None  # no budget: the portable path says so
    verdict, reservation_id, project_held, budget_held, *figures, limits = row
    budget = locked_budget(project, scope.user_id, figures)
    states, _ = limit_states(limits)
    if verdict == "due":
        return None
    if verdict == "refused":
        refuse(budget, amount, states, Need(usd=amount, tokens=tokens))
    if reservation_id is None:
        return None  # the Idempotency-Key was used before: the portable path answers as the first time
    project.held, budget.held = project_held, budget_held
    reservation = Reservation(
        pk=reservation_id, project=project, budget=budget, user_id=scope.user_id, model=model, amount=amount,
        status=Status.OPEN, expires_at=expires, created_at=at, idempotency_key=idempotency_key or None,
        request_fingerprint=fingerprint, tokens=tokens, tags=tags_text(scope.tags), api_key=api_key,
        limit_ids=[state.id for state in states],
    )
    # What the answer's X-Budget-* headers describe, as the hold left them (no read needed).
    reservation.held_on = [LimitState.of_budget(budget), LimitState.of_project(project), *states]  # type: ignore[attr-defined]
    return reservation


def _reserve_with_the_orm(
    *, project: Project, user_id: str, amount: Decimal, model: str | None, ttl_seconds: int,
    idempotency_key: str | None, fingerprint: str, tokens: int, tags: tuple[str, ...], api_key: ApiKey | None,
) -> tuple[Reservation, bool]:
    """Any database: a statement per row; starts a due period and gives back the user's stale holds first."""
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
    grants = grants_lock(project, user_id, limits, at)  # after the limits: the lock order
    budget.grant_room = grants.room(Grant.Scope.USER, user_id)  # type: ignore[attr-defined]
    need = Need(usd=amount, tokens=tokens)
    try:
        check_figures(with_budget_ceiling(figures, budget), amount)
        limits_check([grants.state(LimitState.of_limit(limit)) for limit in limits], need)
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
    at = utcnow()
    if connection.vendor == "postgresql":  # locked, and its holds given back if it is open, in one statement
        reservation = _unheld_in_one_statement(project, reservation_id, at)
    else:
        lock_project(project)
        reservation = _locked(project, reservation_id)
    if reservation.status == Status.SETTLED:  # the row is final: only the user's figures are kept apart
        assert reservation.event is not None
        return Settled(reservation, _settled_again(project, reservation), False)
    if reservation.status == Status.OPEN and reservation.expires_at <= at:
        raise Conflict(f"reservation {reservation_id} expired at {reservation.expires_at.isoformat()}; "
                       "record the cost with POST /users/{user}/costs")
    if reservation.status != Status.OPEN:
        raise Conflict(f"reservation {reservation_id} is {reservation.status}; it cannot be settled")
    if connection.vendor != "postgresql":
        levels_unhold(_levels(project, reservation), reservation.amount)
        _limits_unhold([reservation])
    recorded = cost_record(project=project, user_id=reservation.user_id, usage=usage, cost=cost, source=source,
                           tags=_tags(reservation), api_key=reservation.api_key)
    settled = {"status": Status.SETTLED, "settled_at": utcnow(), "event": recorded.event,
               "settled_cost": recorded.event.cost,
               # Kept in the settle's transaction: a retried settle answers from these, as the first did.
               "settle_response": recorded_state(recorded, 200)}
    Reservation.objects.filter(pk=reservation.pk).update(**settled)
    for name, value in settled.items():
        setattr(reservation, name, value)
    return Settled(reservation, recorded, True)


# PostgreSQL: a settle's first statement locks the project row and the reservation (the lock order of
# services.admission) and, when the reservation is open and not expired at `at`, gives back its holds on
# the project, the budget and its limits (by id); it answers the reservation as it was.
_UNHOLD = """
WITH pl AS MATERIALIZED (
    SELECT id FROM budgets_project WHERE id = %(project)s FOR NO KEY UPDATE
), rv AS MATERIALIZED (
    SELECT r.* FROM budgets_reservation r, pl WHERE r.project_id = pl.id AND r.id = %(id)s FOR NO KEY UPDATE OF r
), go AS MATERIALIZED (
    SELECT id, budget_id, amount, tokens, limit_ids FROM rv WHERE status = 'open' AND expires_at > %(at)s
), p AS (
    UPDATE budgets_project SET held = held - (SELECT amount FROM go)
    WHERE id = %(project)s AND EXISTS (SELECT 1 FROM go) RETURNING 1
), b AS (
    UPDATE budgets_userbudget SET held = held - (SELECT amount FROM go) WHERE id = (SELECT budget_id FROM go)
    RETURNING 1
), l AS (
    UPDATE budgets_limit t SET held = t.held - CASE t.unit WHEN 'usd' THEN go.amount WHEN 'tokens' THEN go.tokens
        ELSE 1 END
    FROM go WHERE t.id IN (SELECT jsonb_array_elements_text(go.limit_ids)::bigint)
    RETURNING 1
)
SELECT /*columns*/, k.name FROM rv LEFT JOIN budgets_apikey k ON k.id = rv.api_key_id
"""


def _unheld_in_one_statement(project: Project, reservation_id: int, at: datetime) -> Reservation:
    columns = [field.column for field in Reservation._meta.concrete_fields]
    with prepared_cursor() as cursor:
        cursor.execute(_UNHOLD.replace("/*columns*/", ", ".join(f"rv.{column}" for column in columns)),
                       {"project": project.pk, "id": reservation_id, "at": at})
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no reservation {reservation_id} in project {project.name!r}")
    *row, key_name = row
    fields = Reservation._meta.concrete_fields
    values = [field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") and value is not None
              else value for field, value in zip(fields, row, strict=True)]  # the ORM's converters (JSON)
    reservation = Reservation.from_db("default", [field.attname for field in fields], values)
    if reservation.api_key_id is not None:  # what the record needs of the key (its limits): no second read
        reservation.api_key = ApiKey(pk=reservation.api_key_id, project=project, name=key_name)
    return reservation


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


