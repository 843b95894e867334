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
from budgets.base.errors import BudgetExceeded
from budgets.domain.usage import Usage
from budgets.models import CostEvent, Grant, GrantUse, Limit, UserBudget
from budgets.services.costs import cost_record
from budgets.services.grants import grant_create
from budgets.services.limit_windows import limits_current, limits_reset_due, window_of
from budgets.services.reservations import reservation_create
from tests.api_helpers import new_key
from tests.server_support import at_once, statuses
from tests.test_hot_path import while_one_is_in_flight

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


def test_an_enforced_record_sees_the_grant_use_of_one_in_flight_and_is_refused(project):
    """$0.50 spent of a $0.50 budget, $0.06 of grant left, two $0.05 calls, the second sent while the first
    holds its locks: it waits, reads the grant's rest after the first and is refused. (Read from its
    snapshot instead, it would be admitted and spend the grant twice.)"""
    services.budget_set(project=project, user_id="alice", total_budget=Decimal("0.5"), actor="test")
    grant = grant_create(project=project, scope="user", subject="alice", amount=Decimal("0.06"), actor="test")
    cost_record(project=project, user_id="alice", usage=Usage("x", 1, 1), cost="0.5", source="api")

    def call():
        return cost_record(project=project, user_id="alice", usage=Usage("x", 1, 1), cost="0.05",
                                    source="api", enforce=True)

    first, second = while_one_is_in_flight(call, call)

    assert not isinstance(first, Exception) and first.created, first
    assert isinstance(second, BudgetExceeded) and second.scope == "user", second
    grant.refresh_from_db()
    assert grant.used == Decimal("0.05") == GrantUse.objects.get().amount


def test_a_reservation_sees_the_hold_of_one_in_flight_on_a_grant(project):
    """A $0.50 budget and a $0.10 grant: $0.55 held, then two $0.05 reservations, the second while the
    first holds its locks: the second is refused (0.55 + 0.05 + 0.05 > 0.60)."""
    services.budget_set(project=project, user_id="alice", total_budget=Decimal("0.5"), actor="test")
    grant_create(project=project, scope="user", subject="alice", amount=Decimal("0.1"), actor="test")
    reservation_create(project=project, user_id="alice", amount=Decimal("0.55"))

    def reserve():
        return reservation_create(project=project, user_id="alice", amount=Decimal("0.05"))

    first, second = while_one_is_in_flight(reserve, reserve)

    assert not isinstance(first, Exception), first
    assert isinstance(second, BudgetExceeded) and second.scope == "user", second
    assert UserBudget.objects.get(user_id="alice").held == Decimal("0.6")


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
