"""Migration 0014 (limits, teams, tags) on a database that already has spend, holds and past periods.

The user budget and the project cap stay in their rows and answer as limits (LimitState): the
migration must lose nothing of them, and make key names unique per project (a key limit names
its key) without dropping a key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from budgets.models import ApiKey, BudgetPeriod, CostEvent, Project, Reservation, UserBudget, UserDay
from budgets.selectors.limits import LimitState

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BEFORE = ("budgets", "0013_project_deleting")
AT = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _migrate(target: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)
    return executor


def _leaves() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.fixture
def old_schema():
    """The database at 0013; migrated back to the newest migrations afterwards, whatever happens."""
    leaves = _leaves()
    executor = _migrate([BEFORE])
    try:
        yield executor.loader.project_state([BEFORE]).apps
    finally:
        _migrate(leaves)


def _fill(apps) -> dict[str, object]:
    """A project with a cap, two budgets with spend and an open hold, a past period, rollups, and
    three keys of which two share a name: as a 0013 database can hold them."""
    OldProject = apps.get_model("budgets", "Project")
    OldBudget = apps.get_model("budgets", "UserBudget")
    project = OldProject.objects.create(name="acme", max_budget=Decimal(100), current_spend=Decimal("7.5"),
                                        held=Decimal("0.25"), duration="monthly", period_start=AT,
                                        next_reset_at=AT + timedelta(days=11))
    alice = OldBudget.objects.create(project=project, user_id="alice", total_budget=Decimal(10),
                                     current_spend=Decimal("5.5"), held=Decimal("0.25"), duration="daily",
                                     period_start=AT, next_reset_at=AT + timedelta(hours=12))
    bob = OldBudget.objects.create(project=project, user_id="bob", total_budget=Decimal(3),
                                   current_spend=Decimal(2), period_start=AT)
    for budget, cost in ((alice, "5.5"), (bob, "2")):
        apps.get_model("budgets", "CostEvent").objects.create(
            project=project, budget=budget, user_id=budget.user_id, model="gpt-4o", cost=Decimal(cost),
            prompt_tokens=100, completion_tokens=50, created_at=AT)
        apps.get_model("budgets", "UserDay").objects.create(
            project=project, day=AT.date(), user_id=budget.user_id, spend=Decimal(cost), events=1)
    apps.get_model("budgets", "Reservation").objects.create(
        project=project, budget=alice, user_id="alice", amount=Decimal("0.25"), expires_at=AT + timedelta(hours=1))
    apps.get_model("budgets", "BudgetPeriod").objects.create(
        budget=alice, project=project, user_id="alice", period_start=AT - timedelta(days=1), period_end=AT,
        spend=Decimal("9.75"), total_budget=Decimal(10))
    OldKey = apps.get_model("budgets", "ApiKey")
    for n, name in enumerate(["app", "app", "batch"]):
        OldKey.objects.create(project=project, name=name, prefix=f"bm_{n}", key_hash=f"{n:064d}",
                              created_at=AT + timedelta(minutes=n))
    return {"project": project.pk}


def test_budgets_caps_spend_holds_and_history_come_through_unchanged(old_schema):
    ids = _fill(old_schema)
    _migrate(_leaves())

    project = Project.objects.get(pk=ids["project"])
    alice = UserBudget.objects.get(project=project, user_id="alice")
    bob = UserBudget.objects.get(project=project, user_id="bob")
    assert (project.max_budget, project.current_spend, project.held) == (Decimal(100), Decimal("7.5"),
                                                                          Decimal("0.25"))
    assert (alice.total_budget, alice.current_spend, alice.held) == (Decimal(10), Decimal("5.5"), Decimal("0.25"))
    assert (bob.total_budget, bob.current_spend, bob.held) == (Decimal(3), Decimal(2), Decimal(0))
    assert Reservation.objects.get().limit_ids == [] and Reservation.objects.get().tokens == 0
    assert BudgetPeriod.objects.get().spend == Decimal("9.75")
    assert sorted(CostEvent.objects.values_list("user_id", "cost", "tags")) == [
        ("alice", Decimal("5.5"), ""), ("bob", Decimal(2), "")]
    assert UserDay.objects.count() == 2

    # The budget and the cap answer as limits with their figures, nothing recomputed.
    user_limit = LimitState.of_budget(alice)
    assert (user_limit.scope, user_limit.unit, user_limit.window) == ("user", "usd", "day")
    assert (user_limit.limit, user_limit.used, user_limit.held, user_limit.remaining) == (
        Decimal(10), Decimal("5.5"), Decimal("0.25"), Decimal("4.25"))
    cap = LimitState.of_project(project)
    assert cap is not None and (cap.window, cap.limit, cap.used, cap.remaining) == (
        "month", Decimal(100), Decimal("7.5"), Decimal("92.25"))


def test_keys_that_shared_a_name_are_kept_and_named_apart(old_schema):
    ids = _fill(old_schema)
    _migrate(_leaves())

    names = list(ApiKey.objects.filter(project_id=ids["project"]).order_by("created_at").values_list("name", "prefix"))
    assert names == [("app", "bm_0"), ("app (2)", "bm_1"), ("batch", "bm_2")]
