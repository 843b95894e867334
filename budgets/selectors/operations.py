"""Reads for operators: the figures /metrics exposes from the database and the broker."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from celery import current_app
from django.utils.timezone import now as utcnow

from ..models import Alert, UserBudget

logger = logging.getLogger(__name__)
SWEEP_LATE = timedelta(minutes=5)


@dataclass(frozen=True)
class ScrapeFigures:
    undelivered_alerts: int
    overdue_budgets: int
    queue_length: int | None  # None: the broker did not say


def celery_queue_length(queue: str = "celery") -> int | None:
    """Messages waiting in the default queue, or None if the broker cannot tell right now."""
    try:
        with current_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:  # a broker outage must not break the scrape
        logger.warning("could not read the Celery queue length (%s)", type(exc).__name__)
        return None


def scrape_figures() -> ScrapeFigures:
    return ScrapeFigures(
        undelivered_alerts=Alert.objects.filter(delivered_at__isnull=True).count(),
        overdue_budgets=UserBudget.objects.filter(next_reset_at__lte=utcnow() - SWEEP_LATE).count(),
        queue_length=celery_queue_length(),
    )
