"""Temporary raises of a limit: raise until an instant (or the end of the Nth window), end one early.

A raise is a LimitIncrease row; the limit keeps their sum (`raised`) and the earliest end
(`raises_end_at`), so admission reads the effective limit (amount + raised) from the row it locks.
Raises end exactly at their instant, lazily or by the sweep (services.limit_windows). Each
raise and each early end is audited. Locks: the project row, then the limit's (one order everywhere).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, InvalidInput, Unprocessable
from ..base.fields import money, money_bound
from ..models import Limit, LimitIncrease, LimitRequest, Project
from . import alerts
from .admission import limits_lock, lock_project
from .audit import write_audit
from .common import validate_future_instant
from .limit_windows import limits_current, raises_refresh, window_of
from .limits import validate_amount

MAX_WINDOWS = 1000
_LARGEST = Decimal(money_bound().get("maximum", money_bound().get("exclusiveMaximum", 0)))
MAX_RAISE = timedelta(days=3660)  # ten years: a raise is temporary


def increase_snapshot(increase: LimitIncrease) -> dict[str, Any]:
    """A raise as the audit log keeps it."""
    return {"id": increase.pk, "limit_id": increase.limit_id, "amount": str(increase.amount),
            "starts_at": increase.starts_at.isoformat(), "ends_at": increase.ends_at.isoformat(),
            "ended_at": increase.ended_at.isoformat() if increase.ended_at else None,
            "request_id": increase.request_id}


def raise_end(project: Project, limit: Limit, *, expires_at: Any = None, windows: Any = None,
              at: datetime) -> datetime:
    """When a raise given `expires_at` (an aware datetime after `at`) or `windows` (N: the end of the
    Nth window, the current one being 1) ends; exactly one of them."""
    if (expires_at is None) == (windows is None):
        raise InvalidInput("give the raise's end: `expires_at` (an instant) or `windows` (a number of windows)")
    if windows is not None:
        if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= MAX_WINDOWS:
            raise InvalidInput(f"windows must be a whole number from 1 to {MAX_WINDOWS}")
        if limit.window == Limit.Window.LIFETIME or limit.resets_at is None:
            raise Unprocessable("a lifetime limit has no windows: give `expires_at`")
        end: datetime | None = limit.resets_at
        for _ in range(windows - 1):
            assert end is not None  # a calendar window always ends
            _, end = window_of(limit.window, project, end)
        assert end is not None
        return end
    return validate_future_instant(expires_at, at, field="expires_at", within=MAX_RAISE,
                                   too_far="a raise lasts at most ten years: change the limit's amount instead")


def limit_raise(*, limit: Limit, amount: Any, expires_at: Any = None, windows: Any = None, actor: str,
                request: LimitRequest | None = None, at: datetime | None = None) -> LimitIncrease:
    """Raise a limit by `amount` (in its unit) until `expires_at` or the end of the Nth window; raises stack."""
    at = at or utcnow()
    value = validate_amount(amount, limit.unit)
    if value <= 0:
        raise InvalidInput("a raise's amount must be more than 0")
    with transaction.atomic():
        project = Project.objects.get(pk=limit.project_id)
        lock_project(project)
        locked = limits_lock([limit.pk])
        if not locked:
            raise Conflict("the limit was deleted meanwhile")
        (current,) = limits_current(project, locked, at)
        end = raise_end(project, current, expires_at=expires_at, windows=windows, at=at)
        if current.amount + current.raised + value >= _LARGEST:
            raise Unprocessable("the raised limit would pass the largest amount the database keeps")
        increase = LimitIncrease.objects.create(limit=current, amount=value, starts_at=at, ends_at=end, actor=actor,
                                                request=request, created_at=at)
        first_end = min(end, current.raises_end_at) if current.raises_end_at else end
        Limit.objects.filter(pk=current.pk).update(raised=F("raised") + money(value), raises_end_at=first_end,
                                                   updated_at=at)
        before = {"limit_id": current.pk, "raised": str(current.raised)}
        current.refresh_from_db()
        write_audit(project_id=project.pk, action="limit_raise", actor=actor,
                    user_id=current.subject if current.scope == Limit.Scope.USER else "",
                    before=before, after={**increase_snapshot(increase), "raised": str(current.raised)})
        alerts.limit_room_changed(project, [current.pk], at=at)  # thresholds usage is now under resolve
    limit.raised, limit.raises_end_at = current.raised, current.raises_end_at
    return increase


def limit_raise_end(*, increase: LimitIncrease, actor: str, at: datetime | None = None) -> LimitIncrease:
    """End a raise early (now); Conflict if it has already ended."""
    at = at or utcnow()
    with transaction.atomic():
        project = Project.objects.get(pk=increase.limit.project_id)
        lock_project(project)
        (current,) = limits_current(project, limits_lock([increase.limit_id]), at)
        if not LimitIncrease.objects.filter(pk=increase.pk, ended_at__isnull=True, ends_at__gt=at).update(ended_at=at):
            raise Conflict(f"raise {increase.pk} has already ended")
        before = {"limit_id": current.pk, "raised": str(current.raised)}
        raises_refresh(current, at)
        increase.refresh_from_db()
        write_audit(project_id=project.pk, action="limit_raise_end", actor=actor,
                    user_id=current.subject if current.scope == Limit.Scope.USER else "",
                    before=before, after={**increase_snapshot(increase), "raised": str(current.raised)})
        alerts.limit_room_changed(project, [current.pk], at=at)  # less room: a threshold now reached fires
    return increase
