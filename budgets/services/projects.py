"""Projects and their API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from .. import periods
from ..errors import InvalidInput
from ..models import ApiKey, Project
from ..money import to_money
from .common import validate_duration, validate_timezone, write_audit
from .resets import reset_due_projects

KEY_PREFIX = "bm_"
SHOWN_LENGTH = 10  # the part of a key kept in clear (ApiKey.prefix), to find and recognise it


def project_create(
    *, name: str, max_budget: Any = None, timezone: str = "UTC", duration: str | None = None,
    duration_days: int | None = None, actor: str = "system",
) -> Project:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("project name must be a non-empty string of at most 200 characters")
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
               after={"name": name, "max_budget": str(cap) if cap is not None else None, "timezone": tz})
    return project


def project_get_or_create(*, name: str) -> Project:
    """The seed's `BudgetManager(project_name)`: a new name creates the project."""
    project = Project.objects.filter(name=name).first()
    if project is not None:
        project_refresh(project)
        return project
    try:
        return project_create(name=name, actor="manager")
    except InvalidInput:
        # Created concurrently by someone else: use theirs.
        return Project.objects.get(name=name)


def project_refresh(project: Project, at: datetime | None = None) -> Project:
    """Start the project's new spend period first if its period has ended."""
    if project.is_due(at):
        reset_due_projects(at=at, project=project)
        project.refresh_from_db()
    return project


def project_update(
    *, project: Project, actor: str, max_budget: Any = ..., timezone: Any = ...,
    alert_thresholds: Any = ..., alert_webhook_url: Any = ..., alert_email: Any = ...,
) -> Project:
    """Change a project's settings; only the arguments given change."""
    before = {"max_budget": str(project.max_budget) if project.max_budget is not None else None,
              "timezone": project.timezone, "alert_thresholds": project.alert_thresholds}
    changes: dict[str, Any] = {}
    if max_budget is not ...:
        changes["max_budget"] = None if max_budget in (None, "") else to_money(max_budget, "max_budget")
    if timezone is not ...:
        changes["timezone"] = validate_timezone(timezone)
    if alert_thresholds is not ...:
        if not isinstance(alert_thresholds, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in alert_thresholds
        ):
            raise InvalidInput("alert_thresholds must be a list of whole percentages between 1 and 1000")
        changes["alert_thresholds"] = sorted(set(alert_thresholds))
    if alert_webhook_url is not ...:
        changes["alert_webhook_url"] = alert_webhook_url or ""
    if alert_email is not ...:
        changes["alert_email"] = alert_email or ""
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(**changes)
        project.refresh_from_db()
        write_audit(project_id=project.pk, action="project_update", actor=actor, before=before,
               after={k: str(v) if isinstance(v, Decimal) else v for k, v in changes.items()})
    return project


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_create(*, project: Project, name: str, actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key; the raw secret is returned once and only its hash is kept."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("key name must be a non-empty string of at most 100 characters")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    with transaction.atomic():
        key = ApiKey.objects.create(project=project, name=name.strip(), prefix=raw[:SHOWN_LENGTH],
                                    key_hash=hash_key(raw))
        write_audit(project_id=project.pk, action="api_key_create", actor=actor,
                    after={"name": key.name, "prefix": key.prefix})
    return key, raw


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The active key for this secret, or None; marks it used (at most once a minute)."""
    if not isinstance(raw, str) or not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    digest = hash_key(raw)
    # Found by its public prefix, then the secret's hash compared in constant time.
    candidates = ApiKey.objects.select_related("project").filter(prefix=raw[:SHOWN_LENGTH], revoked_at__isnull=True)
    key = next((k for k in candidates if hmac.compare_digest(k.key_hash, digest)), None)
    if key is None:
        return None
    at = utcnow()
    if key.last_used_at is None or at - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=at)
        key.last_used_at = at
    return key


def api_key_revoke(*, key: ApiKey, actor: str) -> ApiKey:
    with transaction.atomic():
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=utcnow()):
            write_audit(project_id=key.project_id, action="api_key_revoke", actor=actor,
                   after={"name": key.name, "prefix": key.prefix})
        key.refresh_from_db()
    return key
