"""GET /metrics for Prometheus: off unless METRICS_TOKEN is set, then only with that bearer token."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from ..selectors import operations
from .errors import error_response


class DatabaseFigures(Collector):
    """Figures read from the database and the broker when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        figures = operations.scrape_figures()
        pending = GaugeMetricFamily("budget_alerts_undelivered", "Alerts waiting for delivery.")
        pending.add_metric([], figures.undelivered_alerts)
        yield pending
        if figures.queue_length is not None:
            queue = GaugeMetricFamily("budget_celery_queue_length", "Messages waiting in the Celery queue.")
            queue.add_metric([], figures.queue_length)
            yield queue
        due = GaugeMetricFamily("budget_budgets_overdue", "Budgets whose reset time passed over 5 minutes ago "
                                "(the sweep is not running).")
        due.add_metric([], figures.overdue_budgets)
        yield due


def exposition() -> bytes:
    """This process's counters (or every worker's, in multiprocess mode) and the database figures."""
    figures = CollectorRegistry()
    figures.register(DatabaseFigures())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    return generate_latest(counters) + generate_latest(figures)


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: set METRICS_TOKEN")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        response = error_response(401, "unauthorized", "send 'Authorization: Bearer <METRICS_TOKEN>'")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
