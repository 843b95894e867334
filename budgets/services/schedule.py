"""The beat schedule, kept in code and written to django-celery-beat's tables.

`beat_schedule_install` (migration 0003 and `run_embedded` call it) upserts by name, so
support staff see the schedule in Django admin and re-running it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.apps import apps as django_apps
from django.utils.timezone import now as utcnow


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
    "budgets: limit forecasts": BeatEntry(
        task="budgets.limit_forecasts", every_minutes=5, expire_seconds=280,
        description="Alerts once per window when a limit's forecast at its window's end first crosses the limit.",
    ),
    "budgets: spend anomalies": BeatEntry(
        task="budgets.spend_anomalies", every_minutes=15, expire_seconds=880,
        description="Alerts once a day when a user's or team's spend today jumps over its trailing daily average.",
    ),
}


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
