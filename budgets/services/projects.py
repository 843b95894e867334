"""Projects: create, find or create by name, change settings, delete."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User  # AUTH_USER_MODEL
from django.db import transaction
from django.utils.timezone import now as utcnow

from .. import periods
from ..errors import InvalidInput
from ..models import AuditLog, CostEvent, Membership, Project, Role
from ..money import to_money
from ..selectors import forget_api_keys
from ..validation import validate_alert_thresholds, validate_project_name
from .alerts import validate_webhook_url
from .audit import actor_for_manager, write_audit
from .common import validate_duration, validate_timezone
from .resets import project_refresh
from .rollups import rollups_rebuild

logger = logging.getLogger("budgets.projects")


def project_create(
    *, name: str, max_budget: Any = None, timezone: str = "UTC", duration: str | None = None,
    duration_days: int | None = None, actor: str = "system", owner: User | None = None,
) -> Project:
    """A new project in its first period; `owner` (the console's creator) becomes its owner."""
    validate_project_name(name)
    tz = validate_timezone(timezone)
    cap = None if max_budget is None else to_money(max_budget, "max_budget")
    duration, duration_days = validate_duration(duration, duration_days)
    at = utcnow()
    period = periods.period_containing(duration, tz, at, days=duration_days, anchor=at)
    with transaction.atomic():
        if Project.objects.filter(name=name).exists():
            raise InvalidInput(f"a project named {name!r} already exists")
        project = Project.objects.create(
            name=name, max_budget=cap, timezone=tz, duration=duration, duration_days=duration_days,
            period_start=period.start, next_reset_at=period.next_reset,
        )
        write_audit(project_id=project.pk, action="project_create", actor=actor,
               after={"name": name, "max_budget": str(cap) if cap is not None else None, "timezone": tz,
                      "duration": duration})
        if owner is not None:
            Membership.objects.create(project=project, user=owner, role=Role.OWNER)
            write_audit(project_id=project.pk, action="member_add", actor=actor,
                        after={"user": owner.get_username(), "user_pk": owner.pk, "role": Role.OWNER})
    return project


def project_get_or_create(*, name: str) -> Project:
    """The seed's `BudgetManager(project_name)`: a new name creates the project."""
    project = Project.objects.filter(name=name).first()
    if project is not None:
        project_refresh(project)
        return project
    try:
        return project_create(name=name, actor=actor_for_manager(name))
    except InvalidInput:
        # Created concurrently by someone else: use theirs.
        return Project.objects.get(name=name)


def project_update(
    *, project: Project, actor: str, name: Any = ..., max_budget: Any = ..., timezone: Any = ...,
    duration: Any = ..., duration_days: Any = None,
    alert_thresholds: Any = ..., alert_webhook_url: Any = ..., alert_email: Any = ...,
) -> Project:
    """Change a project's settings; only the arguments given change.

    A changed cap period (or time zone) moves the project into the period of the new one.
    """
    before = {"name": project.name, "max_budget": str(project.max_budget) if project.max_budget is not None else None,
              "timezone": project.timezone, "duration": project.duration,
              "alert_thresholds": project.alert_thresholds}
    changes: dict[str, Any] = {}
    if name is not ... and name != project.name:
        validate_project_name(name)
        if Project.objects.filter(name=name).exclude(pk=project.pk).exists():
            raise InvalidInput(f"a project named {name!r} already exists")
        changes["name"] = name
    if max_budget is not ...:
        changes["max_budget"] = None if max_budget in (None, "") else to_money(max_budget, "max_budget")
    if timezone is not ...:
        changes["timezone"] = validate_timezone(timezone)
    if duration is not ...:
        duration, duration_days = validate_duration(duration, duration_days)
        zone = changes.get("timezone", project.timezone)
        if (duration, duration_days, zone) != (project.duration, project.duration_days, project.timezone):
            period = periods.period_containing(duration, zone, utcnow(), days=duration_days,
                                               anchor=project.period_start)
            changes.update(duration=duration, duration_days=duration_days, period_start=period.start,
                           next_reset_at=period.next_reset)
    if alert_thresholds is not ...:
        changes["alert_thresholds"] = validate_alert_thresholds(alert_thresholds)
    if alert_webhook_url is not ...:
        changes["alert_webhook_url"] = validate_webhook_url(alert_webhook_url)
    if alert_email is not ...:
        changes["alert_email"] = alert_email or ""
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(**changes)
        transaction.on_commit(forget_api_keys)  # keys cache their project's settings for seconds
        if changes.get("timezone", project.timezone) != project.timezone:
            project.timezone = changes["timezone"]
            rollups_rebuild(project)  # the daily rollups are local days: regroup them in the new zone
        project.refresh_from_db()
        write_audit(project_id=project.pk, action="project_update", actor=actor, before=before,
                    after={k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Decimal) else v
                           for k, v in changes.items()})
    return project


def project_delete(*, project: Project, actor: str) -> dict[str, Any]:
    """Delete a project with its ledger, budgets, keys, alerts, members and audit log.

    The project's audit rows go with it, so the deletion is written to the application log
    (logger `budgets.projects`) instead; the summary returned is what it logged.
    """
    with transaction.atomic():
        transaction.on_commit(forget_api_keys)  # its keys stop working in this process at once
        locked = Project.objects.select_for_update().get(pk=project.pk)
        summary = {
            "project_id": locked.pk, "name": locked.name, "actor": actor,
            "ledger_events": CostEvent.objects.filter(project=locked).count(),
            "budgets": locked.budgets.count(), "audit_rows": AuditLog.objects.filter(project=locked).count(),
            "spend_this_period": str(locked.current_spend),
        }
        locked.delete()
    logger.warning("project_delete %s", summary, extra={"audit": summary})
    return summary
