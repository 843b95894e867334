"""Celery tasks. Each task only calls a plain service function that does the work.

The beat schedule is kept in code (budgets.services.schedule.BEAT_SCHEDULE) and written to
django-celery-beat's tables by `beat_schedule_install`. Services queue tasks by name
(`send_task`), so nothing below this module imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import shared_task
from django.utils.timezone import now as utcnow

from . import metrics
from .services.alerts import DELIVER_ALERT_TASK, MAX_ATTEMPTS, alert_deliver, alerts_requeue
from .services.anomalies import anomalies_detect
from .services.forecasts import limits_forecast_check
from .services.grants import grants_expire
from .services.limit_windows import limits_reset_due
from .services.projects import projects_purge
from .services.reservations import reservations_expire
from .services.resets import reset_due_budgets, reset_due_projects

PURGE_SECONDS = 20.0  # of each minute's sweep, for deleted projects' rows (in short batches)


@dataclass(frozen=True)
class SweepResult:
    budgets: int
    projects: int
    reservations: int = 0
    deleted_rows: int = 0  # rows of deleted projects removed (services.projects_purge)
    limits: int = 0  # limits whose window ended and started anew (services.limit_windows)
    grants: int = 0  # grants whose expiry passed, their rest written down as void (services.grants)

    def as_dict(self) -> dict[str, int]:
        return {"budgets": self.budgets, "projects": self.projects, "reservations": self.reservations,
                "deleted_rows": self.deleted_rows, "limits": self.limits, "grants": self.grants}


def run_reset_sweep(*, at: datetime | None = None) -> SweepResult:
    """One reset sweep: projects' and budgets' periods and limits' windows that have ended start anew (a
    limit's rollover becomes a grant); expired holds are released; expired grants' rests are written down
    as void; deleted projects' rows go on being removed."""
    at = at or utcnow()
    projects = reset_due_projects(at=at)
    budgets = reset_due_budgets(at=at)
    limits = limits_reset_due(at=at)
    purged = projects_purge(at=at, seconds=PURGE_SECONDS)
    result = SweepResult(budgets=budgets, projects=projects, reservations=reservations_expire(at=at),
                         deleted_rows=purged.rows, limits=limits, grants=grants_expire(at=at))
    metrics.sweep_ran(budgets=budgets, projects=projects)
    return result


@shared_task(name="budgets.reset_sweep")
def reset_sweep() -> dict[str, int]:
    return run_reset_sweep().as_dict()


@shared_task(name="budgets.alert_outbox")
def alert_outbox() -> int:
    return alerts_requeue()


@shared_task(name="budgets.limit_forecasts")
def limit_forecasts() -> int:
    return limits_forecast_check()


@shared_task(name="budgets.spend_anomalies")
def spend_anomalies() -> int:
    return anomalies_detect()


@shared_task(bind=True, name=DELIVER_ALERT_TASK, max_retries=MAX_ATTEMPTS)
def deliver_alert(self: Any, alert_id: int) -> str:
    result = alert_deliver(alert_id=alert_id)
    metrics.alert_delivery("retry" if result.retry_in is not None else result.status)
    if result.retry_in is not None:
        # If even this publish fails, the row keeps its next_attempt_at and the outbox re-queues it.
        raise self.retry(countdown=result.retry_in)
    return result.status
