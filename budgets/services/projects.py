"""Projects: create, find or create by name, change settings, delete."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User  # AUTH_USER_MODEL
from django.db import transaction
from django.db.models import QuerySet
from django.utils.timezone import now as utcnow

from ..base.errors import InvalidInput
from ..base.money import to_money
from ..base.validation import validate_alert_thresholds, validate_fallbacks, validate_project_name
from ..domain import periods
from ..domain.slack import mask_url
from ..models import (
    Alert,
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Membership,
    ModelDay,
    ModelSpend,
    Project,
    Reservation,
    Role,
    SpendDay,
    UserBudget,
    UserDay,
    UserMonth,
)
from .alerts import validate_slack_url, validate_webhook_url
from .audit import actor_for_manager, write_audit
from .common import validate_duration, validate_timezone
from .fallbacks import project_fallbacks
from .keys import api_keys_changed
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
    if project is not None and project.deleting_since is None:
        project_refresh(project)
        return project
    if project is not None:
        raise InvalidInput(f"the project {name!r} is being deleted; its name is free again in a minute")
    try:
        return project_create(name=name, actor=actor_for_manager(name))
    except InvalidInput:
        # Created concurrently by someone else: use theirs.
        return Project.objects.get(name=name, deleting_since__isnull=True)


def project_update(
    *, project: Project, actor: str, name: Any = ..., max_budget: Any = ..., timezone: Any = ...,
    duration: Any = ..., duration_days: Any = None,
    alert_thresholds: Any = ..., alert_webhook_url: Any = ..., alert_email: Any = ...,
    slack_webhook_url: Any = ..., fallbacks: Any = ..., anomaly_alerts: Any = ..., anomaly_multiple: Any = ...,
    anomaly_floor: Any = ...,
) -> Project:
    """Change a project's settings; only the arguments given change.

    A changed cap period (or time zone) moves the project into the period of the new one.
    """
    before = {"name": project.name, "max_budget": str(project.max_budget) if project.max_budget is not None else None,
              "timezone": project.timezone, "duration": project.duration,
              "alert_thresholds": project.alert_thresholds, "anomaly_alerts": project.anomaly_alerts,
              "anomaly_multiple": str(project.anomaly_multiple), "anomaly_floor": str(project.anomaly_floor)}
    if fallbacks is not ...:  # in the audit row only when given; as stored (`project` may be a key's cached copy)
        before["fallbacks"] = project_fallbacks(project)
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
    if slack_webhook_url is not ...:
        changes["slack_webhook_url"] = validate_slack_url(slack_webhook_url)
    if fallbacks is not ...:
        changes["fallbacks"] = validate_fallbacks(fallbacks)
    changes.update(_anomaly_settings(anomaly_alerts, anomaly_multiple, anomaly_floor))
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(**changes)
        transaction.on_commit(api_keys_changed)  # keys cache their project's settings
        if changes.get("timezone", project.timezone) != project.timezone:
            project.timezone = changes["timezone"]
            rollups_rebuild(project)  # the daily rollups are local days: regroup them in the new zone
        project.refresh_from_db()
        write_audit(project_id=project.pk, action="project_update", actor=actor, before=before,
                    after={k: _audited(k, v) for k, v in changes.items()})
    return project


ANOMALY_MULTIPLE_MIN, ANOMALY_MULTIPLE_MAX = Decimal("1.1"), Decimal(1000)


def _anomaly_settings(enabled: Any, multiple: Any, floor: Any) -> dict[str, Any]:
    """The spend-anomaly settings given (services.anomalies): on/off, the multiple (1.1 to 1000, two
    places), the floor in dollars."""
    changes: dict[str, Any] = {}
    if enabled is not ...:
        if not isinstance(enabled, bool):
            raise InvalidInput("anomaly_alerts must be true or false")
        changes["anomaly_alerts"] = enabled
    if multiple is not ...:
        value = to_money(multiple, "anomaly_multiple")
        if not ANOMALY_MULTIPLE_MIN <= value <= ANOMALY_MULTIPLE_MAX or value != value.quantize(Decimal("0.01")):
            raise InvalidInput(f"anomaly_multiple must be a number from {ANOMALY_MULTIPLE_MIN} to "
                               f"{ANOMALY_MULTIPLE_MAX} with at most two decimal places")
        changes["anomaly_multiple"] = value
    if floor is not ...:
        changes["anomaly_floor"] = to_money(floor, "anomaly_floor")
    return changes


def _audited(name: str, value: Any) -> Any:
    """A changed setting as the audit row keeps it: the Slack URL (a secret) only as its mask."""
    if name == "slack_webhook_url":
        return mask_url(value)
    return value.isoformat() if isinstance(value, datetime) else str(value) if isinstance(value, Decimal) else value


def project_delete(*, project: Project, actor: str) -> dict[str, Any]:
    """Delete a project with its ledger, budgets, keys, alerts, members and audit log.

    One short transaction marks the project deleting and revokes its keys: from its commit the
    console no longer shows it and its keys answer 401 in every process (the shared key
    generation moves). Its rows then go in short batches (project_purge): here for up to
    PURGE_INLINE_SECONDS, the rest by the reset sweep, so that deleting millions of events holds
    no lock for long. The row itself goes last, once no process can still hold one of its keys.

    The project's audit rows go with it, so the deletion is written to the application log
    (logger `budgets.projects`) instead; the summary returned is what it logged.
    """
    summary = {
        "project_id": project.pk, "name": project.name, "actor": actor,
        "ledger_events": CostEvent.objects.filter(project_id=project.pk).count(),
        "budgets": UserBudget.objects.filter(project_id=project.pk).count(),
        "audit_rows": AuditLog.objects.filter(project_id=project.pk).count(),
    }
    at = utcnow()
    with transaction.atomic():
        # The lock writers take first (FOR NO KEY UPDATE): waits for the project's writes in flight,
        # never for another project's, and lets foreign-key checks through.
        locked = Project.objects.select_for_update(no_key=True).get(pk=project.pk)
        if locked.deleting_since is None:
            Project.objects.filter(pk=locked.pk).update(deleting_since=at)
            ApiKey.objects.filter(project_id=locked.pk, revoked_at__isnull=True).update(revoked_at=at)
        summary["spend_this_period"] = str(locked.current_spend)
        transaction.on_commit(api_keys_changed)  # its keys stop in every process at once
    logger.warning("project_delete %s", summary, extra={"audit": summary})
    project_purge(project_id=project.pk, seconds=PURGE_INLINE_SECONDS)
    return summary


PURGE_BATCH = 2_000
PURGE_INLINE_SECONDS = 2.0
# After the keys are revoked, how long the project's row stays: no web process can still hold
# one of its keys (without a shared cache each forgets keys after API_KEY_CACHE_SECONDS) or a
# request that passed authentication before; their writes land in a project that still exists.
PURGE_GRACE_SECONDS = 30


def _purge_order(project_id: int) -> list[QuerySet[Any]]:
    """The project's rows, referring rows before the rows they refer to (each delete finds nothing to cascade)."""
    return [
        Alert.objects.filter(project_id=project_id),
        Reservation.objects.filter(project_id=project_id),
        AuditLog.objects.filter(project_id=project_id),
        CostEvent.objects.filter(project_id=project_id),
        BudgetPeriod.objects.filter(project_id=project_id),
        SpendDay.objects.filter(project_id=project_id),
        ModelDay.objects.filter(project_id=project_id),
        UserDay.objects.filter(project_id=project_id),
        UserMonth.objects.filter(project_id=project_id),
        ModelSpend.objects.filter(budget__project_id=project_id),
        UserBudget.objects.filter(project_id=project_id),
        Membership.objects.filter(project_id=project_id),
        ApiKey.objects.filter(project_id=project_id),
    ]


@dataclass
class PurgeResult:
    rows: int = 0
    batches: int = 0
    projects_removed: int = 0


def project_purge(*, project_id: int, at: datetime | None = None, seconds: float | None = None,
                  batch_size: int = PURGE_BATCH, result: PurgeResult | None = None) -> PurgeResult:
    """Delete a deleting project's rows in batches, each its own short transaction; returns what it did.

    Stops after `seconds` (the rest is left for the next call). The project row goes when nothing
    is left and PURGE_GRACE_SECONDS have passed since its keys were revoked.
    """
    result = result or PurgeResult()
    at = at or utcnow()
    started = time.monotonic()
    deleting_since = (Project.objects.filter(pk=project_id, deleting_since__isnull=False)
                      .values_list("deleting_since", flat=True).first())
    if deleting_since is None:
        return result
    for rows in _purge_order(project_id):
        while True:
            if seconds is not None and time.monotonic() - started >= seconds:
                return result
            with transaction.atomic():
                # Lock order: the project row first, as every writer takes it; a batch then never
                # waits on a writer of this project that waits on the batch.
                Project.objects.select_for_update(no_key=True).filter(pk=project_id).values_list("pk").first()
                ids = list(rows.order_by("pk").values_list("pk", flat=True)[:batch_size])
                if ids:
                    rows.model.objects.filter(pk__in=ids).delete()
            if not ids:
                break
            result.rows += len(ids)
            result.batches += 1
    if at - deleting_since >= timedelta(seconds=PURGE_GRACE_SECONDS + settings.API_KEY_CACHE_SECONDS):
        with transaction.atomic():
            # What a request in flight wrote since its table was emptied goes with the row.
            Project.objects.filter(pk=project_id, deleting_since__isnull=False).delete()
        result.projects_removed += 1
        logger.info("project_purge removed project %s", project_id)
    return result


def projects_purge(*, at: datetime | None = None, seconds: float | None = None) -> PurgeResult:
    """The sweep's part: carry on deleting every project being deleted, for up to `seconds`."""
    result = PurgeResult()
    started = time.monotonic()
    for project_id in Project.objects.filter(deleting_since__isnull=False).order_by("deleting_since") \
            .values_list("pk", flat=True):
        left = None if seconds is None else seconds - (time.monotonic() - started)
        if left is not None and left <= 0:
            break
        project_purge(project_id=project_id, at=at, seconds=left, result=result)
    return result
