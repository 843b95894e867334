"""Grants under concurrency (issue 22, item 3), through gunicorn with 4 workers and 50 calls at once: a $0.50
budget with a $0.50 grant admits exactly 20 calls of $0.05, and the ledger says which grant paid each part;
a limit's rollover happens once when the sweep and a call reset its window at the same time."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.models import CostEvent, Grant, GrantUse, Limit, UserBudget
from budgets.services.grants import grant_create
from budgets.services.limit_windows import limits_current, limits_reset_due, window_of
from tests.api_helpers import new_key
from tests.server_support import at_once, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CALLS = 50


@pytest.fixture
def project():
    return services.project_create(name="acme", timezone="UTC")


def funded(project) -> tuple[str, Grant]:
    services.budget_set(project=project, user_id="alice", total_budget=Decimal("0.5"), actor="test")
    grant = grant_create(project=project, scope="user", subject="alice", amount=Decimal("0.5"), actor="test")
    return new_key(project), grant


def assert_the_ledger_adds_up(grant: Grant) -> None:
    """Every grant use is part of a ledger row; the grant's used, the budget's granted and its spend agree."""
    budget = UserBudget.objects.get(user_id="alice")
    grant.refresh_from_db()
    paid = GrantUse.objects.aggregate(total=Sum("amount"))["total"]
    spent = CostEvent.objects.aggregate(total=Sum("cost"))["total"]
    assert (budget.current_spend, budget.granted, grant.used, paid) == (spent, paid, paid, paid)
    assert budget.current_spend - budget.granted <= budget.total_budget
    for use in GrantUse.objects.select_related("event"):
        assert 0 < use.amount <= use.event.cost


def test_fifty_reservations_on_a_budget_and_a_grant_admit_exactly_twenty_and_the_settles_pay_exactly(server,
                                                                                                   project):
    key, grant = funded(project)
    path = "/api/v1/users/alice/reservations"

    answers = at_once([(server, key, path, {"model": "gpt-4o", "estimated_cost": 0.05}, {})] * CALLS)

    assert statuses(answers) == {201: 20, 402: 30}
    assert UserBudget.objects.get(user_id="alice").held == Decimal("1.0")
    ids = [body["id"] for status, body in answers if status == 201]
    settles = [(server, key, f"/api/v1/reservations/{rid}/settle", {"cost": 0.05}, {}) for rid in ids]
    assert statuses(at_once(settles)) == {200: 20}
    assert_the_ledger_adds_up(grant)
    assert (grant.used, UserBudget.objects.get(user_id="alice").current_spend) == (Decimal("0.5"), Decimal("1.0"))
    assert GrantUse.objects.count() == 10  # ten settles were paid by the budget, ten by the grant


def test_fifty_enforced_records_on_a_budget_and_a_grant_admit_exactly_twenty(server, project):
    key, grant = funded(project)

    answers = at_once([(server, key, "/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 0.05},
                        {})] * CALLS)

    assert statuses(answers) == {201: 20, 402: 30}
    assert_the_ledger_adds_up(grant)
    assert grant.used == Decimal("0.5")


def test_a_rollover_happens_once_when_a_call_and_the_sweep_reset_the_window_together(project):
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), actor="test")
    start, resets_at = window_of("day", project, utcnow() - timedelta(days=1))
    limit = Limit.objects.create(project=project, scope="user", subject="alice", amount=Decimal(1), window="day",
                                 rollover_max=Decimal(5), used=Decimal("0.25"), window_start=start,
                                 resets_at=resets_at)
    at = resets_at + timedelta(seconds=1)
    barrier = threading.Barrier(8)

    def lazily() -> None:
        try:
            barrier.wait()
            limits_current(project, [Limit.objects.get(pk=limit.pk)], at)
        finally:
            connection.close()

    def sweep() -> None:
        try:
            barrier.wait()
            limits_reset_due(at=at)
        finally:
            connection.close()

    threads = [threading.Thread(target=lazily) for _ in range(4)] + [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    (grant,) = Grant.objects.filter(limit=limit)
    assert (grant.amount, grant.window_start, grant.expires_at) == (Decimal("0.75"), start, window_of(
        "day", project, at)[1])
