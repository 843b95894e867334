"""Limits' windows: when a limit's window starts and ends, and starting the next one exactly once.

A window is calendar-aligned in the project's time zone (hour, day, week, month, year) or
`lifetime` (never resets). A limit whose `resets_at` has passed starts its new window lazily,
by the first writer that locks it (`limits_current`), or by the beat sweep (`limits_reset_due`),
whichever comes first: both update on the old window_start, so a window starts exactly once.
Temporary raises (LimitIncrease) end the same way: a limit whose `raises_end_at` has passed gets
`raised` and `raises_end_at` recomputed from its raises still active (conditional on the old
raises_end_at), lazily or by the sweep: a call at ends_at - 1 µs sees the raise, one at ends_at not.
A raise that ends re-checks the limit's thresholds as an early end does (alerts.limit_room_changed):
less room, so a threshold usage is now at or over fires, once per window, whichever path ended it.
Locks: the project row, then Limit rows by id (services.admission's order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils.timezone import now as utcnow

from ..domain import periods
from ..models import AuditLog, Grant, Limit, Project
from ..selectors.call_limits import raises_active
from .audit import SYSTEM_LAZY, SYSTEM_SWEEP, write_audits

RESET_BATCH_SIZE = 500
ZERO = Decimal(0)


def _DUE(at: datetime) -> Q:  # noqa: N802  # a filter, read like a constant
    return Q(resets_at__lte=at) | Q(raises_end_at__lte=at)


def window_of(limit_window: str, project: Project, at: datetime) -> tuple[datetime, datetime | None]:
    """(window_start, resets_at) of the window of kind `limit_window` containing `at` in the project's
    time zone; a lifetime window starts at `at` and never resets (None). ValueError for another kind."""
    start, resets_at = periods.window_containing(limit_window, project.timezone, at)
    return start, resets_at


def window_due(limit: Limit, at: datetime) -> bool:
    return limit.resets_at is not None and limit.resets_at <= at


def raises_due(limit: Limit, at: datetime) -> bool:
    return limit.raises_end_at is not None and limit.raises_end_at <= at


def limit_due(limit: Limit, at: datetime) -> bool:
    """Must the limit be made current before it is used at `at`: its window ended, or one of its raises."""
    return window_due(limit, at) or raises_due(limit, at)


def raises_refresh(limit: Limit, at: datetime, *, conditional: bool = False, old_end: datetime | None = None
                   ) -> bool:
    """Set the limit's `raised` and `raises_end_at` from its raises active at `at`; `conditional`: only if
    the row's raises_end_at is still `old_end` (the conditional end: once).
    The caller holds the limit's lock or relies on the condition. True if the row was updated."""
    raised, end = raises_active([limit.pk], at).get(limit.pk, (Decimal(0), None))
    rows = Limit.objects.filter(pk=limit.pk)
    if conditional:
        rows = rows.filter(raises_end_at=old_end)
    if not rows.update(raised=raised, raises_end_at=end, updated_at=at):
        return False
    limit.raised, limit.raises_end_at, limit.updated_at = raised, end, at
    return True


def _room_shrank(project: Project, limit_ids: list[int], at: datetime) -> None:
    """Re-check the thresholds of limits whose raises ended, in the caller's transaction."""
    if not limit_ids:
        return
    # alerts reads limits through limits_current: imported here, not at the top, against the cycle.
    from . import alerts

    alerts.limit_room_changed(project, limit_ids, at=at)


def _raise_audit(limit: Limit, actor: str, raised: Decimal, ended_at: datetime | None) -> AuditLog:
    return AuditLog(project_id=limit.project_id, action="limit_raises_end", actor=actor,
                    user_id=limit.subject if limit.scope == Limit.Scope.USER else "",
                    before={"limit_id": limit.pk, "raised": str(raised),
                            "raises_end_at": ended_at.isoformat() if ended_at else None},
                    after={"raised": str(limit.raised),
                           "raises_end_at": limit.raises_end_at.isoformat() if limit.raises_end_at else None})


def _audit_entry(limit: Limit, actor: str, old_start: datetime, used: object) -> AuditLog:
    return AuditLog(project_id=limit.project_id, action="limit_window_reset", actor=actor,
                    before={"limit_id": limit.pk, "window_start": old_start.isoformat(), "used": str(used)},
                    after={"window_start": limit.window_start.isoformat()})


def limits_current(project: Project, limits: Iterable[Limit], at: datetime | None = None,
                   *, actor: str = SYSTEM_LAZY) -> list[Limit]:
    """The limits in their current windows: a limit whose window ended gets used 0 and its new window.

    The caller holds the limits' row locks (or accepts that a concurrent writer resets first: the
    update is conditional on the old resets_at, so a window starts exactly once and the losing
    writer reads the row as the winner left it). Returns the limits as they now are.
    """
    at = at or utcnow()
    current = []
    audits: list[AuditLog] = []
    shrank: list[int] = []
    for limit in limits:
        if raises_due(limit, at):
            old_raised, old_end = limit.raised, limit.raises_end_at
            # Conditional on the old end, as the window below: the raises end once.
            if raises_refresh(limit, at, conditional=True, old_end=old_end):
                audits.append(_raise_audit(limit, actor, old_raised, old_end))
                if limit.raised < old_raised:
                    shrank.append(limit.pk)
            else:
                limit.refresh_from_db()
        if window_due(limit, at):
            old_start, old_resets_at, used = limit.window_start, limit.resets_at, limit.used
            unused = rollover_amount(limit)
            start, resets_at = window_of(limit.window, project, at)
            # Conditional on the old end: once reset, the row's end is in the future and a stale
            # reader's update matches nothing (it reads the row as the winner left it).
            if Limit.objects.filter(pk=limit.pk, resets_at=old_resets_at).update(
                    used=0, granted=0, window_start=start, resets_at=resets_at, updated_at=at):
                limit.used, limit.granted, limit.window_start, limit.resets_at, limit.updated_at = (
                    0, 0, start, resets_at, at)
                audits.append(_audit_entry(limit, actor, old_start, used))
                rollover_grant(limit, old_start=old_start, unused=unused, expires_at=resets_at, actor=actor, at=at)
            else:
                limit.refresh_from_db()
        current.append(limit)
    if audits:
        write_audits(audits)
    _room_shrank(project, shrank, at)  # the writer that ended the raises (the condition above): once
    return current


def limits_reset_due(at: datetime | None = None, batch_size: int = RESET_BATCH_SIZE) -> int:
    """The sweep: every limit whose window ended starts its next one, and every limit whose raises ended
    has them taken off; returns how many limits it made current.

    One short transaction per project (its row locked first, then its due limits by id), with
    one conditional UPDATE per group of limits that share a window kind and an old window start.
    """
    at = at or utcnow()
    project_ids = list(Limit.objects.filter(_DUE(at)).values_list("project_id", flat=True).distinct())
    total = 0
    for project_id in project_ids:
        while True:
            reset, more = _reset_project(project_id, at, batch_size)
            total += reset
            if not more:
                break
    return total


def _reset_project(project_id: int, at: datetime, batch_size: int) -> tuple[int, bool]:
    with transaction.atomic():
        project = Project.objects.select_for_update(no_key=True).filter(pk=project_id).first()
        if project is None:
            return 0, False
        due = list(
            Limit.objects.select_for_update(no_key=True).filter(_DUE(at), project_id=project_id)
            .order_by("id")[:batch_size]
        )
        audits: list[AuditLog] = []
        ending = [limit for limit in due if raises_due(limit, at)]
        active = raises_active([limit.pk for limit in ending], at)
        shrank: list[int] = []
        for limit in ending:  # under the locks: no condition needed
            old_raised, old_end = limit.raised, limit.raises_end_at
            limit.raised, limit.raises_end_at = active.get(limit.pk, (Decimal(0), None))
            Limit.objects.filter(pk=limit.pk).update(raised=limit.raised, raises_end_at=limit.raises_end_at,
                                                     updated_at=at)
            audits.append(_raise_audit(limit, SYSTEM_SWEEP, old_raised, old_end))
            if limit.raised < old_raised:
                shrank.append(limit.pk)
        groups: dict[tuple[str, datetime], list[Limit]] = defaultdict(list)
        for limit in due:
            if window_due(limit, at):
                groups[(limit.window, limit.window_start)].append(limit)
        # How many limits it made current: the ones whose raises ended and whose window goes on, then the resets.
        reset = len([limit for limit in ending if not window_due(limit, at)])
        for (window, old_start), limits in groups.items():
            start, resets_at = window_of(window, project, at)
            reset += Limit.objects.filter(pk__in=[limit.pk for limit in limits], window_start=old_start).update(
                used=0, granted=0, window_start=start, resets_at=resets_at, updated_at=at)
            for limit in limits:  # under the locks: each reset once
                used, unused = limit.used, rollover_amount(limit)
                limit.window_start = start
                audits.append(_audit_entry(limit, SYSTEM_SWEEP, old_start, used))
                rollover_grant(limit, old_start=old_start, unused=unused, expires_at=resets_at, actor=SYSTEM_SWEEP,
                               at=at)
        if audits:
            write_audits(audits)
        _room_shrank(project, shrank, at)  # after the resets: the thresholds of the window now current
        return reset, len(due) == batch_size


# --- rollover -------------------------------------------------------------------------------------------


def rollover_amount(limit: Limit) -> Decimal:
    """What a limit's ending window leaves unused, up to its rollover's max: its amount (without temporary
    raises) less what the window's periodic limit paid (its used less what grants paid)."""
    if limit.rollover_max is None:
        return ZERO
    return min(limit.rollover_max, max(ZERO, limit.amount - (limit.used - limit.granted)))


def rollover_grant(limit: Limit, *, old_start: datetime, unused: Decimal, expires_at: datetime | None,
                   actor: str, at: datetime) -> Grant | None:
    """The grant a reset rolls over (once per window: a second try for the same window writes nothing)."""
    if unused <= 0 or limit.scope not in (Limit.Scope.USER, Limit.Scope.TEAM):
        return None
    try:
        with transaction.atomic():
            grant = Grant.objects.create(
                project_id=limit.project_id, scope=limit.scope, subject=limit.subject, amount=unused,
                expires_at=expires_at, source=Grant.Source.ROLLOVER, limit=limit, window_start=old_start,
                note=f"rolled over from the {limit.window} window of {old_start.date().isoformat()}",
                actor=actor, created_at=at)
    except IntegrityError:
        return None  # this window rolled over already
    write_audits([AuditLog(project_id=limit.project_id, action="grant_rollover", actor=actor,
                           user_id=limit.subject if limit.scope == Grant.Scope.USER else "",
                           after={"id": grant.pk, "limit_id": limit.pk, "amount": str(unused),
                                  "window_start": old_start.isoformat(),
                                  "expires_at": expires_at.isoformat() if expires_at else None})])
    return grant
