"""Period resets in the core: set-based, exactly once per period, lazy on read."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, BudgetPeriod, ModelSpend, UserBudget

pytestmark = pytest.mark.django_db


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def spend(project, user: str, dollars: str) -> None:
    services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0), cost=Decimal(dollars),
                         source="api")


def test_a_due_budget_is_reset_once_and_its_period_is_kept(project, make_budget, time_machine):
    time_machine.move_to("2026-01-31 10:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    spend(project, "alice", "1.25")

    time_machine.move_to("2026-02-01 00:00:00+00:00", tick=False)
    assert services.reset_due_budgets() == 1
    assert services.reset_due_budgets() == 0

    budget = UserBudget.objects.get()
    assert budget.current_spend == 0
    assert budget.period_start == at("2026-02-01T00:00:00+00:00")
    assert budget.next_reset_at == at("2026-02-02T00:00:00+00:00")
    period = BudgetPeriod.objects.get()
    assert (period.period_start, period.period_end, period.spend) == (
        at("2026-01-31T00:00:00+00:00"), at("2026-02-01T00:00:00+00:00"), Decimal("1.25"))
    assert period.model_spend == {"gpt-4o": "1.250000000000"}
    assert not ModelSpend.objects.exists()
    assert AuditLog.objects.filter(action="budget_period_reset").count() == 1


def test_a_sweep_after_ten_days_down_resets_once_into_the_current_period(project, make_budget, time_machine):
    time_machine.move_to("2026-03-01 09:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    spend(project, "alice", "2")

    time_machine.move_to("2026-03-11 15:30:00+00:00", tick=False)
    assert services.reset_due_budgets() == 1

    budget = UserBudget.objects.get()
    assert budget.period_start == at("2026-03-11T00:00:00+00:00")
    assert BudgetPeriod.objects.get().spend == Decimal(2)


def test_monthly_budgets_follow_real_month_lengths_in_the_project_zone(make_budget, time_machine):
    berlin = services.project_create(name="berlin", timezone="Europe/Berlin")
    time_machine.move_to("2026-01-31 12:00:00+00:00", tick=False)
    budget = make_budget("alice", duration="monthly", in_project=berlin)
    assert budget.period_start == at("2026-01-01T00:00:00+01:00")
    assert budget.next_reset_at == at("2026-02-01T00:00:00+01:00")

    time_machine.move_to("2026-02-01 00:00:00+01:00", tick=False)
    services.reset_due_budgets()
    budget.refresh_from_db()
    assert budget.next_reset_at == at("2026-03-01T00:00:00+01:00")


def test_reading_a_budget_whose_period_ended_resets_it_first(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="weekly")
    spend(project, "alice", "3")

    time_machine.move_to("2026-03-16 00:00:00+00:00", tick=False)  # a Monday
    budget = services.budget_get(project=project, user_id="alice")

    assert budget.current_spend == 0
    assert budget.period_start == at("2026-03-16T00:00:00+00:00")
    assert BudgetPeriod.objects.get().reason == "lazy"


def test_recording_into_an_ended_period_counts_in_the_new_one(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    spend(project, "alice", "3")

    time_machine.move_to("2026-03-11 08:00:00+00:00", tick=False)
    spend(project, "alice", "1")

    assert UserBudget.objects.get().current_spend == Decimal(1)
    assert BudgetPeriod.objects.get().spend == Decimal(3)


def test_budgets_without_a_duration_never_reset(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice")
    spend(project, "alice", "3")
    time_machine.move_to("2030-03-10 12:00:00+00:00", tick=False)
    assert services.reset_due_budgets() == 0
    assert UserBudget.objects.get().current_spend == Decimal(3)


def test_the_sweep_works_in_batches(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    for n in range(7):
        make_budget(f"user-{n}", duration="daily")
    time_machine.move_to("2026-03-11 00:00:00+00:00", tick=False)

    assert services.reset_due_budgets(batch_size=3) == 7
    assert BudgetPeriod.objects.count() == 7


def test_replacing_a_budget_keeps_its_spend(project, make_budget):
    make_budget("alice", total_budget="10")
    spend(project, "alice", "4")

    budget, created = services.budget_set(project=project, user_id="alice", total_budget="20", actor="test")

    assert not created
    assert (budget.total_budget, budget.current_spend) == (Decimal(20), Decimal(4))
    audit = AuditLog.objects.get(action="budget_update")
    assert (audit.before["total_budget"], audit.after["total_budget"]) == ("10.000000000000", "20.000000000000")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_reset_each_budget_once(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    for n in range(40):
        make_budget(f"user-{n}", duration="daily")
        spend(project, f"user-{n}", "1")
    sweep_at = at("2026-03-11T00:00:05+00:00")
    counts: list[int] = []

    def sweep() -> None:
        try:
            counts.append(services.reset_due_budgets(at=sweep_at, batch_size=7))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(counts) == 40
    assert BudgetPeriod.objects.count() == 40
    assert set(BudgetPeriod.objects.values_list("spend", flat=True)) == {Decimal(1)}
    assert AuditLog.objects.filter(action="budget_period_reset").count() == 40
    assert not UserBudget.objects.exclude(current_spend=0).exists()


def test_a_period_is_kept_after_a_duration_change_moved_the_start_back(project, make_budget, time_machine):
    time_machine.move_to("2026-03-16 12:00:00+00:00", tick=False)  # a Monday
    make_budget("alice", duration="daily")
    spend(project, "alice", "1")
    time_machine.move_to("2026-03-17 12:00:00+00:00", tick=False)
    services.reset_due_budgets()  # closes Monday's daily period
    services.budget_set(project=project, user_id="alice", total_budget="10", duration="weekly", actor="test")
    spend(project, "alice", "2")

    time_machine.move_to("2026-03-23 00:00:00+00:00", tick=False)
    assert services.reset_due_budgets() == 1

    rows = list(BudgetPeriod.objects.order_by("period_end").values_list("period_start", "period_end", "spend"))
    assert rows == [
        (at("2026-03-16T00:00:00+00:00"), at("2026-03-17T00:00:00+00:00"), Decimal(1)),
        (at("2026-03-16T00:00:00+00:00"), at("2026-03-23T00:00:00+00:00"), Decimal(2)),
    ]


def test_a_read_through_a_cached_project_still_starts_the_projects_new_period(project, make_budget, time_machine):
    """An API key caches its project for seconds; a project period that ended meanwhile still resets on a read."""
    from budgets.models import Project

    time_machine.move_to("2026-03-31 23:59:58+00:00", tick=False)
    services.project_update(project=project, actor="test", duration="monthly")
    make_budget("alice")
    spend(project, "alice", "2")
    cached = Project.objects.get(pk=project.pk)  # what the key cache holds: spend $2, reset at 1 April
    Project.objects.filter(pk=project.pk).update(next_reset_at=cached.next_reset_at)
    time_machine.move_to("2026-04-01 00:00:03+00:00", tick=False)
    cached.next_reset_at = None  # as if cached before the period had a reset time it has now passed

    services.ensure_current_period(cached, user_id="alice")

    assert cached.current_spend == 0
    assert Project.objects.get(pk=project.pk).current_spend == 0
