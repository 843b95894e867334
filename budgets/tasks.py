"""Celery tasks and the beat schedule. Each task only calls a plain function that does the work.

The schedule is kept here, in code, and written to django-celery-beat's tables by
`beat_schedule_install` (migration 0003 and `run_embedded` call it): upserted by
name, so support staff see it in Django admin and re-running it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import shared_task
from django.apps import apps as django_apps
from django.utils.timezone import now as utcnow

from . import alerts, services


@dataclass(frozen=True)
class BeatEntry:
    task: str
    every_minutes: int
    description: str
    # A sweep still waiting in the queue after this is dropped: the next one does its work.
    expire_seconds: int = 55


BEAT_SCHEDULE: dict[str, BeatEntry] = {
    "budgets: reset sweep": BeatEntry(
        task="budgets.reset_sweep", every_minutes=1,
        description="Resets every budget and project whose period has ended (exactly once per period).",
    ),
    "budgets: alert outbox": BeatEntry(
        task="budgets.alert_outbox", every_minutes=1,
        description="Queues again the alerts not delivered after a minute (e.g. while the broker was down).",
    ),
}


@dataclass(frozen=True)
class SweepResult:
    budgets: int
    projects: int

    def as_dict(self) -> dict[str, int]:
        return {"budgets": self.budgets, "projects": self.projects}


def run_reset_sweep(*, at: datetime | None = None) -> SweepResult:
    """One reset sweep: projects' and budgets' periods that have ended start anew."""
    at = at or utcnow()
    projects = services.reset_due_projects(at=at)
    return SweepResult(budgets=services.reset_due_budgets(at=at), projects=projects)


@shared_task(name="budgets.reset_sweep")
def reset_sweep() -> dict[str, int]:
    return run_reset_sweep().as_dict()


@shared_task(name="budgets.alert_outbox")
def alert_outbox() -> int:
    return alerts.alerts_requeue()


@shared_task(bind=True, name="budgets.deliver_alert", max_retries=alerts.MAX_ATTEMPTS)
def deliver_alert(self: Any, alert_id: int) -> str:
    result = alerts.alert_deliver(alert_id=alert_id)
    if result.retry_in is not None:
        # If even this publish fails, the row keeps its next_attempt_at and the outbox re-queues it.
        raise self.retry(countdown=result.retry_in)
    return result.status


def beat_schedule_install(*, apps: Any = None) -> int:
    """Upsert BEAT_SCHEDULE into django-celery-beat's tables; returns how many tasks changed.

    Takes a migration's historical `apps`. An existing task keeps its `enabled` flag,
    so support staff can pause a job in the admin without a deploy undoing it.
    """
    registry = apps or django_apps
    interval_model = registry.get_model("django_celery_beat", "IntervalSchedule")
    task_model = registry.get_model("django_celery_beat", "PeriodicTask")
    tracker_model = registry.get_model("django_celery_beat", "PeriodicTasks")
    changed = 0
    for name, entry in BEAT_SCHEDULE.items():
        interval = interval_model.objects.filter(every=entry.every_minutes, period="minutes").order_by("pk").first()
        if interval is None:
            interval = interval_model.objects.create(every=entry.every_minutes, period="minutes")
        wanted = {
            "task": entry.task, "interval_id": interval.pk, "crontab_id": None, "solar_id": None,
            "clocked_id": None, "one_off": False, "expire_seconds": entry.expire_seconds,
            "description": entry.description, "args": "[]", "kwargs": "{}",
        }
        existing = task_model.objects.filter(name=name).first()
        if existing is None:
            task_model.objects.create(name=name, enabled=True, **wanted)
            changed += 1
        elif any(getattr(existing, field) != value for field, value in wanted.items()):
            task_model.objects.filter(pk=existing.pk).update(**wanted)
            changed += 1
    if changed:
        # Tells a running DatabaseScheduler to reload (the model's own signal does not fire
        # for historical models or queryset updates).
        tracker_model.objects.update_or_create(ident=1, defaults={"last_update": utcnow()})
    return changed
