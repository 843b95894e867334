"""Prometheus metrics: what the service counts, defined once.

Counters are incremented where the thing happens (services, the HTTP middleware, tasks);
figures that live in the database (open reservations, held dollars, queue length) are read
when Prometheus scrapes `/metrics` (budgets.api.metrics). With several gunicorn workers set
`PROMETHEUS_MULTIPROC_DIR` to an empty directory shared by them (prometheus_client's
multiprocess mode); budgetsite/gunicorn.conf.py cleans up after a worker that exits.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "budget_http_requests_total", "HTTP requests answered, by route and status.", ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "budget_http_request_duration_seconds", "Time to answer an HTTP request, by route.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COST_DOLLARS = Counter("budget_cost_recorded_dollars_total", "Dollars recorded in the ledger.", ["project", "model"])
COST_EVENTS = Counter("budget_cost_recorded_events_total", "Ledger events recorded.", ["project", "model"])
BUDGET_EXCEEDED = Counter(
    "budget_exceeded_total", "Calls refused or recorded past a budget, by the budget that ran out.",
    ["project", "scope"],
)
ALERT_DELIVERIES = Counter("budget_alert_deliveries_total", "Alert delivery attempts, by outcome.", ["outcome"])
SWEEP_RUNS = Counter("budget_sweep_runs_total", "Reset sweeps run.")
BUDGETS_RESET = Counter("budget_budgets_reset_total", "Budgets and projects reset by a sweep.", ["kind"])


def cost_recorded(project: str, model: str, amount: Decimal) -> None:
    COST_DOLLARS.labels(project, model).inc(float(amount))  # Prometheus samples are floats; the ledger is exact
    COST_EVENTS.labels(project, model).inc()


def budget_exceeded(project: str, scope: str) -> None:
    BUDGET_EXCEEDED.labels(project, scope).inc()


def alert_delivery(outcome: str) -> None:
    ALERT_DELIVERIES.labels(outcome).inc()


def sweep_ran(*, budgets: int, projects: int) -> None:
    SWEEP_RUNS.inc()
    BUDGETS_RESET.labels("budget").inc(budgets)
    BUDGETS_RESET.labels("project").inc(projects)
