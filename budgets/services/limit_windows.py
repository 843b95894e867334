"""Limits' windows: when a limit's window starts and ends, and starting the next one exactly once.

A window is calendar-aligned in the project's time zone (hour, day, week, month, year) or
`lifetime` (never resets). A limit whose `resets_at` has passed starts its new window lazily,
by the first writer that locks it (`limits_current`), or by the beat sweep (`limits_reset_due`),
whichever comes first: both update on the old window_start, so a window starts exactly once.
Locks: the project row, then Limit rows by id (services.admission's order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils.timezone import now as utcnow

from ..domain import periods
from ..models import AuditLog, Limit, Project
from .audit import SYSTEM_LAZY, SYSTEM_SWEEP, write_audits

RESET_BATCH_SIZE = 500


def window_of(limit_window: str, project: Project, at: datetime) -> tuple[datetime, datetime | None]:
    """(window_start, resets_at) of the window of kind `limit_window` containing `at` in the project's
    time zone; a lifetime window starts at `at` and never resets (None). ValueError for another kind."""
    start, resets_at = periods.window_containing(limit_window, project.timezone, at)
    return start, resets_at


def _due(limit: Limit, at: datetime) -> bool:
    return limit.resets_at is not None and limit.resets_at <= at


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
    for limit in limits:
        if _due(limit, at):
            old_start, old_resets_at, used = limit.window_start, limit.resets_at, limit.used
            start, resets_at = window_of(limit.window, project, at)
            # Conditional on the old end: once reset, the row's end is in the future and a stale
            # reader's update matches nothing (it reads the row as the winner left it).
            if Limit.objects.filter(pk=limit.pk, resets_at=old_resets_at).update(
                    used=0, window_start=start, resets_at=resets_at, updated_at=at):
                limit.used, limit.window_start, limit.resets_at, limit.updated_at = 0, start, resets_at, at
                audits.append(_audit_entry(limit, actor, old_start, used))
            else:
                limit.refresh_from_db()
        current.append(limit)
    if audits:
        write_audits(audits)
    return current


def limits_reset_due(at: datetime | None = None, batch_size: int = RESET_BATCH_SIZE) -> int:
    """The sweep: every limit whose window ended starts its next one; returns how many were reset.

    One short transaction per project (its row locked first, then its due limits by id), with
    one conditional UPDATE per group of limits that share a window kind and an old window start.
    """
    at = at or utcnow()
    project_ids = list(Limit.objects.filter(resets_at__lte=at).values_list("project_id", flat=True).distinct())
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
            Limit.objects.select_for_update(no_key=True).filter(project_id=project_id, resets_at__lte=at)
            .order_by("id")[:batch_size]
        )
        groups: dict[tuple[str, datetime], list[Limit]] = defaultdict(list)
        for limit in due:
            groups[(limit.window, limit.window_start)].append(limit)
        reset = 0
        audits: list[AuditLog] = []
        for (window, old_start), limits in groups.items():
            start, resets_at = window_of(window, project, at)
            reset += Limit.objects.filter(pk__in=[limit.pk for limit in limits], window_start=old_start).update(
                used=0, window_start=start, resets_at=resets_at, updated_at=at)
            for limit in limits:
                used = limit.used
                limit.window_start = start
                audits.append(_audit_entry(limit, SYSTEM_SWEEP, old_start, used))
        if audits:
            write_audits(audits)
        return reset, len(due) == batch_size
