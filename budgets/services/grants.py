"""Grants: prepaid dollars for a user or a team, used after the periodic limits are.

A grant extends its subject's hard dollar limits on every model (selectors.grants): a call that does
not fit the periodic limits is admitted when the subject's active grants cover the rest, and its
record is paid by the limits first, then by the grants in order (priority, lower first; then the
earliest expiry; then the oldest). The ledger keeps which grant paid what of each call (GrantUse), the
grant its `used`, and each extended limit the part of its window that grants paid (`granted`), so the
periodic limit counts only what it paid. An expired grant's rest is void (the sweep writes it down,
audited). Admission reads and pays grants under their row locks, taken after the limits' (the one
lock order: project, budget, limits, grants): on PostgreSQL inside the hot path's statements
(services.ledger, services.reservations), elsewhere here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from ..base.errors import InvalidInput, NotFound
from ..base.fields import money
from ..models import CostEvent, Grant, GrantUse, Limit, Project, UserBudget
from ..selectors.grants import active_grants, extended
from ..selectors.limits import LimitState
from . import alerts
from .admission import lock_project
from .audit import write_audit
from .common import validate_future_instant
from .limits import validate_amount, validate_subject

ZERO = Decimal(0)
MAX_GRANT_LIFE = timedelta(days=3660)
MAX_PRIORITY = 1_000_000
MAX_NOTE = 2000  # as a limit request's reason
EXPIRE_BATCH = 500


def grant_snapshot(grant: Grant) -> dict[str, Any]:
    """A grant as the audit log keeps it."""
    return {"id": grant.pk, "scope": grant.scope, "subject": grant.subject, "amount": str(grant.amount),
            "used": str(grant.used), "priority": grant.priority,
            "expires_at": grant.expires_at.isoformat() if grant.expires_at else None, "note": grant.note,
            "source": grant.source, "voided": str(grant.voided) if grant.voided is not None else None}


def _validate(amount: Any, expires_at: Any, priority: Any, note: Any, at: datetime) -> tuple[Decimal, int, str]:
    value = validate_amount(amount, Limit.Unit.USD)
    if value <= 0:
        raise InvalidInput("a grant's amount must be more than $0")
    if expires_at is not None:
        validate_future_instant(expires_at, at, field="expires_at", within=MAX_GRANT_LIFE,
                                too_far="a grant expires within ten years (or leave expires_at out: it never expires)")
    priority = 1 if priority is None else priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"priority must be a whole number from 0 to {MAX_PRIORITY} (lower is used first)")
    note = "" if note is None else note
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise InvalidInput(f"note must be text of at most {MAX_NOTE} characters")
    return value, priority, note


def grant_create(*, project: Project, scope: str, subject: Any, amount: Any, expires_at: Any = None,
                 priority: Any = None, note: Any = None, actor: str, at: datetime | None = None) -> Grant:
    """Grant prepaid dollars to a user (who has a budget) or a team; audited; thresholds re-checked."""
    at = at or utcnow()
    if scope not in (Grant.Scope.USER, Grant.Scope.TEAM):
        raise InvalidInput("a grant is for a user or a team")
    name = validate_subject(project, scope, subject)
    value, priority, note = _validate(amount, expires_at, priority, note, at)
    if scope == Grant.Scope.USER and not UserBudget.objects.filter(project=project, user_id=name).exists():
        raise NotFound(f"user {name!r} has no budget in project {project.name!r}")
    with transaction.atomic():
        lock_project(project)  # after it, grants are written under the same order admission reads them
        grant = Grant.objects.create(project=project, scope=scope, subject=name, amount=value, priority=priority,
                                     expires_at=expires_at, note=note, actor=actor, created_at=at)
        write_audit(project_id=project.pk, action="grant_create", actor=actor,
                    user_id=name if scope == Grant.Scope.USER else "", after=grant_snapshot(grant))
        alerts.limit_room_changed(project, _extended_limit_ids(project, scope, name), at=at)
    return grant


def _extended_limit_ids(project: Project, scope: str, subject: str) -> list[int]:
    return list(Limit.objects.filter(project=project, scope=scope, subject=subject, unit=Limit.Unit.USD, model="",
                                     mode=Limit.Mode.HARD).values_list("pk", flat=True))


def grant_void(*, grant: Grant, actor: str, at: datetime | None = None) -> Grant:
    """Revoke a grant now: its rest is void (audited). Calls it already paid stay paid."""
    at = at or utcnow()
    with transaction.atomic():
        project = Project.objects.get(pk=grant.project_id)
        lock_project(project)
        locked = Grant.objects.select_for_update().get(pk=grant.pk)
        if locked.voided_at is not None:
            return locked
        before = grant_snapshot(locked)
        locked.voided, locked.voided_at = locked.amount - locked.used, at
        locked.save(update_fields=["voided", "voided_at"])
        write_audit(project_id=project.pk, action="grant_void", actor=actor,
                    user_id=locked.subject if locked.scope == Grant.Scope.USER else "",
                    before=before, after=grant_snapshot(locked))
        alerts.limit_room_changed(project, _extended_limit_ids(project, locked.scope, locked.subject), at=at)
    return locked


def grants_expire(*, at: datetime | None = None, batch: int = EXPIRE_BATCH) -> int:
    """The sweep: each grant whose expiry passed has its rest written down as void (audited); returns how many.

    Admission never counts an expired grant (it reads expires_at), so this writes the fact down; it does
    not change what is admitted.
    """
    at = at or utcnow()
    done = 0
    while True:
        with transaction.atomic():
            due = list(Grant.objects.select_for_update(skip_locked=True)
                       .filter(voided_at__isnull=True, expires_at__lte=at).order_by("id")[:batch])
            for grant in due:
                before = grant_snapshot(grant)
                grant.voided, grant.voided_at = grant.amount - grant.used, grant.expires_at
                grant.save(update_fields=["voided", "voided_at"])
                write_audit(project_id=grant.project_id, action="grant_expire", actor="system:sweep",
                            user_id=grant.subject if grant.scope == Grant.Scope.USER else "",
                            before=before, after=grant_snapshot(grant))
        done += len(due)
        if len(due) < batch:
            return done


def grants_of(project: Project, scope: str, subject: str) -> list[Grant]:
    """A subject's grants, active first (in the order they are used), then the used up, expired and void."""
    return sorted(Grant.objects.filter(project=project, scope=scope, subject=subject),
                  key=lambda grant: (not grant.active_at(utcnow()) or grant.remaining == 0, grant.priority,
                                     grant.expires_at is None, grant.expires_at or utcnow(), grant.pk))


def grant_get(project: Project, grant_id: int) -> Grant:
    grant = Grant.objects.filter(project=project, pk=grant_id).first()
    if grant is None:
        raise NotFound(f"no grant {grant_id} in project {project.name!r}")
    return grant


def grant_uses(grant: Grant, limit: int = 100) -> list[GrantUse]:
    """What the grant paid, newest first (the ledger rows and amounts)."""
    return list(GrantUse.objects.filter(grant=grant).select_related("event").order_by("-event_id")[:limit])


# --- admission and payment on the portable path (services.ledger, services.reservations) ----------------


@dataclass
class Grants:
    """The grants a call may use, locked; and what they have left per subject."""

    rows: list[Grant]

    def room(self, scope: str, subject: str) -> Decimal:
        return sum((grant.amount - grant.used for grant in self.rows
                    if grant.scope == scope and grant.subject == subject), ZERO)

    def state(self, state: LimitState) -> LimitState:
        """A limit's state with its subject's grant room, if its grants extend it."""
        if not extended(state.scope, state.unit, state.model, state.mode):
            return state
        return replace(state, grant_room=self.room(state.scope, state.subject))


def grants_lock(project: Project, user_id: str, limits: Sequence[Limit], at: datetime) -> Grants:
    """Lock the user's grants and those of the team whose limits apply (after the limits' locks)."""
    teams = {limit.subject for limit in limits if limit.scope == Limit.Scope.TEAM}
    rows = [grant for grant in active_grants(project.pk, at).select_for_update(no_key=True)
            if (grant.scope == Grant.Scope.USER and grant.subject == user_id)
            or (grant.scope == Grant.Scope.TEAM and grant.subject in teams)]
    return Grants(rows=rows)


def _overflow(amount: Decimal, paid: Decimal, cap: Decimal) -> Decimal:
    """How much of `amount` the periodic limit (which has paid `paid` of `cap`) cannot."""
    return min(amount, max(ZERO, paid + amount - cap))


def grants_pay(*, event: CostEvent, budget: UserBudget, limits: Sequence[Limit], grants: Grants) -> dict[str, Decimal]:
    """Pay a recorded call's overflow of each subject's extended limits from its grants (in order), writing
    each grant's use, the grants' `used`, and `granted` on the budget and the extended limits (their
    rows locked by the caller). Returns what each scope's grants paid."""
    amount = event.cost
    extended_limits = [limit for limit in limits if extended(limit.scope, limit.unit, limit.model, limit.mode)]
    want: dict[str, Decimal] = {
        Grant.Scope.USER: max([_overflow(amount, budget.current_spend - budget.granted, budget.total_budget)] + [
            _overflow(amount, limit.used - limit.granted, limit.amount + limit.raised)
            for limit in extended_limits if limit.scope == Limit.Scope.USER]),
        Grant.Scope.TEAM: max([ZERO] + [
            _overflow(amount, limit.used - limit.granted, limit.amount + limit.raised)
            for limit in extended_limits if limit.scope == Limit.Scope.TEAM]),
    }
    paid: dict[str, Decimal] = {Grant.Scope.USER: ZERO, Grant.Scope.TEAM: ZERO}
    uses = []
    for grant in grants.rows:  # in the order they are used
        take = min(grant.amount - grant.used, want[grant.scope] - paid[grant.scope])
        if take <= 0:
            continue
        paid[grant.scope] += take
        Grant.objects.filter(pk=grant.pk).update(used=F("used") + money(take))
        grant.used += take
        uses.append(GrantUse(event=event, grant=grant, amount=take))
    if uses:
        GrantUse.objects.bulk_create(uses)
    if paid[Grant.Scope.USER]:
        UserBudget.objects.filter(pk=budget.pk).update(granted=F("granted") + money(paid[Grant.Scope.USER]))
    for limit in extended_limits:
        if paid[limit.scope]:
            Limit.objects.filter(pk=limit.pk).update(granted=F("granted") + money(paid[limit.scope]))
            limit.granted += paid[limit.scope]
    return paid
