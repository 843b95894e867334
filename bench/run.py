"""Side-by-side benchmarks of the budget core. Run: `make bench` (or .venv/bin/python bench/run.py).

Each comparison runs both variants in one process, interleaved, on a throw-away
test database (SQLite by default, PostgreSQL with DATABASE_URL), and reports the
ratio of medians: the machine is shared and noisy, so absolute times mean little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings_test")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils.timezone import now  # noqa: E402

from budgets import pricing, services, tokens  # noqa: E402
from budgets.models import ModelPrice, UserBudget  # noqa: E402
from budgets.usage import Usage  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, a_name: str, a: Callable[[], object], b_name: str, b: Callable[[], object],
            rounds: int, setup: Callable[[], object] | None = None) -> None:
    a_times, b_times = [], []
    for _ in range(rounds):
        for fn, times in ((a, a_times), (b, b_times)):
            if setup:
                setup()
            times.append(timed(fn))
    ma, mb = statistics.median(a_times), statistics.median(b_times)
    print(f"{name}: {a_name} {ma * 1000:.1f} ms, {b_name} {mb * 1000:.1f} ms (median of {rounds}) "
          f"-> {b_name} / {a_name} = {mb / ma:.1f}x")


def bench_sweep(users: int, rounds: int) -> None:
    """The set-based reset sweep against resetting the same budgets one row at a time."""
    project = services.project_create(name=f"bench-sweep-{time.time_ns()}")
    UserBudget.objects.bulk_create(
        UserBudget(project=project, user_id=f"u{i}", total_budget=Decimal(10), duration="daily",
                   current_spend=Decimal("1.5"), period_start=datetime(2020, 1, 1, tzinfo=UTC),
                   next_reset_at=datetime(2020, 1, 2, tzinfo=UTC))
        for i in range(users)
    )
    start = UserBudget.objects.filter(project=project).values_list("period_start", flat=True).first()
    due = UserBudget.objects.filter(project=project).values_list("next_reset_at", flat=True).first()

    def make_due() -> None:
        UserBudget.objects.filter(project=project).update(period_start=start, next_reset_at=due,
                                                         current_spend=Decimal("1.5"))
        from budgets.models import AuditLog, BudgetPeriod
        BudgetPeriod.objects.filter(project=project).delete()
        AuditLog.objects.filter(project=project).delete()

    def per_row() -> None:
        for budget in UserBudget.objects.filter(project=project, next_reset_at__lte=now()):
            with transaction.atomic():
                services.reset_due_budgets(ids=[budget.pk])

    compare(f"reset sweep, {users} due budgets", "set-based sweep",
            lambda: services.reset_due_budgets(project=project), "one row at a time", per_row, rounds, make_due)


def bench_price_lookup(rounds: int) -> None:
    """The in-process price cache against a database query per lookup."""
    models = list(ModelPrice.objects.values_list("model", flat=True)[:200])

    def cached() -> None:
        for _ in range(5):
            for model in models:
                pricing.get_price(model)

    def uncached() -> None:
        for _ in range(5):
            for model in models:
                pricing.Price.from_row(ModelPrice.objects.get(model=model))

    compare("price lookup x1000", "cached get_price", cached, "query per lookup", uncached, rounds)


def bench_tokens(rounds: int) -> None:
    """Cached encoders against building the encoder for every call."""
    text = "The quick brown fox jumps over the lazy dog. " * 20

    def cached() -> None:
        for _ in range(20):
            tokens.count_text_tokens("gpt-4o", text)

    def rebuilt() -> None:
        for _ in range(20):
            len(tokens.build_encoding("o200k_base").encode(text))

    compare("token count x20", "cached encoder", cached, "encoder per call", rebuilt, max(3, rounds // 2))


def bench_record(calls: int, rounds: int) -> None:
    """Recording cost through the service: with a price lookup, and with the cost given."""
    project = services.project_create(name=f"bench-record-{time.time_ns()}")
    services.budget_set(project=project, user_id="u", total_budget=Decimal(10**6), actor="bench")

    def priced() -> None:
        for _ in range(calls):
            services.cost_record(project=project, user_id="u", usage=Usage("gpt-4o", 1000, 200), source="api")

    def given() -> None:
        for _ in range(calls):
            services.cost_record(project=project, user_id="u", usage=Usage("gpt-4o", 1000, 200),
                                 cost=Decimal("0.0045"), source="api")

    compare(f"cost_record x{calls}", "cost given", given, "priced from the table", priced, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, keepdb=False)
    try:
        print(f"database: {connection.vendor}")
        bench_sweep(args.users, args.rounds)
        bench_price_lookup(args.rounds)
        bench_tokens(args.rounds)
        bench_record(200, args.rounds)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
