"""The Celery app: configured from Django settings (CELERY_* names).

With no REDIS_URL the broker is kombu's SQLAlchemy transport on an SQLite file
under VAR_DIR (embedded mode): no server process, and SQLite's locking makes it
safe for the separate web, worker and beat processes that share it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from .tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")

app = Celery("budgetsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect(weak=False)
@signals.beat_init.connect(weak=False)
def _trace_this_process(**kwargs: Any) -> None:
    # Before the pool forks: children inherit the wrapped drivers and restart the span exporter's thread.
    setup_tracing()


def embedded_broker_prepare(celery_app: Celery = app) -> int:
    """Create the SQLAlchemy broker's tables and drop delivered messages; returns how many.

    Called once before web, worker and beat start: kombu creates its tables and queue rows
    on first use without a cross-process lock (processes racing to create the same queue
    fail with IntegrityError, tests/test_tasks.py), and it keeps delivered messages
    (visible=False) instead of deleting them, so without this the table only grows.
    """
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_declare(celery_app.conf.task_default_queue)
        message = channel.message_cls
        deleted = channel.session.query(message).filter(message.visible.is_(False)).delete()
        channel.session.commit()
    return deleted
