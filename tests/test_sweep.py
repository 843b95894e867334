"""The reset sweep (beat, every minute): each budget resets at its boundary, exactly once, under a controlled clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import schedule
from django.core.management import call_command
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from budgets import services, tasks
from budgets.domain.usage import Usage
from budgets.models import AuditLog, BudgetPeriod, Project, UserBudget
from budgets.services import schedule as beat_schedule

pytestmark = pytest.mark.django_db


def local(text: str, zone: str) -> datetime:
    """A wall-clock time in `zone`, as the UTC instant it is."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def spend(project: Project, user: str, dollars: str) -> None:
    services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0), cost=Decimal(dollars),
                         source="api")


def sweep() -> tasks.SweepResult:
    return tasks.run_reset_sweep()


# Created on Wednesday 4 March 2026, 10:00 local time: where each duration's period ends.
BOUNDARIES = {
    "daily": "2026-03-05 00:00",
    "weekly": "2026-03-09 00:00",  # the next Monday; New York is on summer time since the 8th
    "monthly": "2026-04-01 00:00",
    "yearly": "2027-01-01 00:00",
}


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("duration", list(BOUNDARIES))
def test_each_duration_resets_at_its_local_boundary(zone, duration, time_machine):
    project = services.project_create(name="p", timezone=zone)
    time_machine.move_to(local("2026-03-04 10:00", zone), tick=False)
    services.budget_set(project=project, user_id="alice", total_budget="10", duration=duration, actor="test")
    spend(project, "alice", "2.5")
    boundary = local(BOUNDARIES[duration], zone)

    time_machine.move_to(boundary - timedelta(seconds=1), tick=False)
    assert sweep().budgets == 0
    time_machine.move_to(boundary, tick=False)
    assert sweep().budgets == 1

    budget = UserBudget.objects.get()
    assert (budget.current_spend, budget.period_start) == (0, boundary)
    closed = BudgetPeriod.objects.get()
    assert (closed.period_end, closed.spend) == (boundary, Decimal("2.5"))


def test_a_month_end_moves_from_31_january_to_1_february_to_1_march(project, make_budget, time_machine):
    time_machine.move_to("2026-01-31 23:00:00+00:00", tick=False)
    daily, monthly = make_budget("day", duration="daily"), make_budget("month", duration="monthly")
    spend(project, "month", "1")

    time_machine.move_to("2026-02-01 00:00:00+00:00", tick=False)
    assert sweep().budgets == 2
    daily.refresh_from_db()
    monthly.refresh_from_db()
    assert daily.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert monthly.next_reset_at == datetime(2026, 3, 1, tzinfo=UTC)  # February has 28 days in 2026

    time_machine.move_to("2026-02-28 23:59:59+00:00", tick=False)
    sweep()
    monthly.refresh_from_db()
    assert monthly.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    time_machine.move_to("2026-03-01 00:00:00+00:00", tick=False)
    sweep()
    monthly.refresh_from_db()
    assert (monthly.period_start, monthly.next_reset_at) == (datetime(2026, 3, 1, tzinfo=UTC),
                                                           datetime(2026, 4, 1, tzinfo=UTC))
    assert list(BudgetPeriod.objects.filter(user_id="month").values_list("period_start", "spend")) == [
        (datetime(2026, 2, 1, tzinfo=UTC), Decimal(0)), (datetime(2026, 1, 1, tzinfo=UTC), Decimal(1))]


@pytest.mark.parametrize(("zone", "day", "start", "end"), [
    # Spring forward: a 23-hour day.
    ("America/New_York", "2026-03-08", "2026-03-08T05:00:00+00:00", "2026-03-09T04:00:00+00:00"),
    # Fall back: a 25-hour day.
    ("America/New_York", "2026-11-01", "2026-11-01T04:00:00+00:00", "2026-11-02T05:00:00+00:00"),
    ("Europe/Berlin", "2026-03-29", "2026-03-28T23:00:00+00:00", "2026-03-29T22:00:00+00:00"),
    ("Europe/Berlin", "2026-10-25", "2026-10-24T22:00:00+00:00", "2026-10-25T23:00:00+00:00"),
    # Chile skips midnight itself: the day starts at 01:00 local.
    ("America/Santiago", "2026-09-06", "2026-09-06T04:00:00+00:00", "2026-09-07T03:00:00+00:00"),
])
def test_daily_budgets_reset_at_local_midnight_on_dst_change_days(zone, day, start, end, time_machine):
    project = services.project_create(name="p", timezone=zone)
    start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
    time_machine.move_to(start + timedelta(hours=12), tick=False)
    budget, _ = services.budget_set(project=project, user_id="alice", total_budget="10", duration="daily",
                                    actor="test")
    assert (budget.period_start, budget.next_reset_at) == (start, end)

    time_machine.move_to(end - timedelta(microseconds=1), tick=False)
    assert sweep().budgets == 0
    time_machine.move_to(end, tick=False)
    assert sweep().budgets == 1
    budget.refresh_from_db()
    assert budget.period_start == end


def test_a_repeated_sweep_resets_nothing_twice(project, make_budget, time_machine):
    services.project_update(project=project, max_budget="100", actor="test")
    Project.objects.filter(pk=project.pk).update(duration="daily", next_reset_at=datetime(2026, 3, 11, tzinfo=UTC))
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    spend(project, "alice", "1")

    time_machine.move_to("2026-03-11 00:00:30+00:00", tick=False)
    assert sweep() == tasks.SweepResult(budgets=1, projects=1)
    assert sweep() == tasks.SweepResult(budgets=0, projects=0)

    assert BudgetPeriod.objects.count() == 1
    assert AuditLog.objects.filter(action="budget_period_reset").count() == 1
    assert AuditLog.objects.filter(action="project_period_reset").count() == 1
    project.refresh_from_db()
    assert project.current_spend == 0


def test_a_sweep_after_ten_days_down_resets_once_into_the_current_period(project, make_budget, time_machine):
    time_machine.move_to("2026-03-01 09:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    make_budget("bob", duration="weekly")
    spend(project, "alice", "2")

    time_machine.move_to("2026-03-11 15:30:00+00:00", tick=False)
    assert sweep().budgets == 2
    assert sweep().budgets == 0

    alice = UserBudget.objects.get(user_id="alice")
    assert (alice.period_start, alice.next_reset_at) == (datetime(2026, 3, 11, tzinfo=UTC),
                                                         datetime(2026, 3, 12, tzinfo=UTC))
    assert UserBudget.objects.get(user_id="bob").period_start == datetime(2026, 3, 9, tzinfo=UTC)
    # One row for the finished period, saying what was spent in it; nothing for the empty days after.
    closed = BudgetPeriod.objects.get(user_id="alice")
    assert (closed.period_start, closed.period_end, closed.spend) == (
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), Decimal(2))


def test_reading_an_ended_budget_resets_it_and_the_sweep_then_leaves_it(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    spend(project, "alice", "3")

    time_machine.move_to("2026-03-11 08:00:00+00:00", tick=False)
    budget = services.budget_get(project=project, user_id="alice")
    assert (budget.current_spend, budget.period_start) == (0, datetime(2026, 3, 11, tzinfo=UTC))
    assert sweep().budgets == 0
    assert list(BudgetPeriod.objects.values_list("reason", "spend")) == [("lazy", Decimal(3))]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_and_spending_reset_each_budget_once(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    for n in range(30):
        make_budget(f"user-{n}", duration="daily")
        spend(project, f"user-{n}", "1")
    time_machine.move_to("2026-03-11 00:00:05+00:00", tick=False)
    results: list[tasks.SweepResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def run(work) -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)
        finally:
            connection.close()

    def sweeper() -> None:
        results.append(sweep())

    def spender() -> None:  # a request arriving just after midnight resets its budget lazily
        for n in range(10):
            spend(project, f"user-{n}", "0.5")

    threads = [threading.Thread(target=run, args=(sweeper,)) for _ in range(4)]
    threads += [threading.Thread(target=run, args=(spender,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(r.budgets for r in results) + BudgetPeriod.objects.filter(reason="lazy").count() == 30
    assert BudgetPeriod.objects.count() == 30
    assert set(BudgetPeriod.objects.values_list("spend", flat=True)) == {Decimal(1)}
    assert AuditLog.objects.filter(action="budget_period_reset").count() == 30
    assert set(UserBudget.objects.filter(user_id__in=[f"user-{n}" for n in range(10)])
               .values_list("current_spend", flat=True)) == {Decimal(1)}  # 2 × $0.5, all in the new period
    assert not UserBudget.objects.exclude(user_id__in=[f"user-{n}" for n in range(10)]).exclude(
        current_spend=0).exists()


def test_the_reset_budgets_command_runs_one_sweep(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    make_budget("bob", duration="daily")
    time_machine.move_to("2026-03-11 00:00:00+00:00", tick=False)
    out = StringIO()

    call_command("reset_budgets", stdout=out)

    assert out.getvalue().strip() == "Reset 2 budgets (0 projects)"
    assert UserBudget.objects.filter(period_start=datetime(2026, 3, 11, tzinfo=UTC)).count() == 2


def test_the_sweep_task_returns_how_many_it_reset(project, make_budget, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", duration="daily")
    time_machine.move_to("2026-03-11 00:00:00+00:00", tick=False)

    assert tasks.reset_sweep.apply().get() == {"budgets": 1, "projects": 0, "reservations": 0, "deleted_rows": 0,
                                               "limits": 0, "grants": 0}


# --- the schedule in django-celery-beat's tables ---------------------------------------------


def test_migrate_writes_the_beat_schedule_for_the_admin():
    rows = {task.name: task for task in PeriodicTask.objects.filter(name__startswith="budgets:")}

    assert set(rows) == set(beat_schedule.BEAT_SCHEDULE)
    for name, entry in beat_schedule.BEAT_SCHEDULE.items():
        assert rows[name].task == entry.task
        assert rows[name].enabled
        assert rows[name].schedule == schedule(timedelta(minutes=entry.every_minutes))
    from budgetsite.celery import app

    assert {entry.task for entry in beat_schedule.BEAT_SCHEDULE.values()} <= set(app.tasks)


def test_installing_the_schedule_again_changes_nothing_and_keeps_a_pause():
    PeriodicTask.objects.filter(name="budgets: reset sweep").update(enabled=False)
    before = list(PeriodicTask.objects.order_by("pk").values())

    assert beat_schedule.beat_schedule_install() == 0

    assert list(PeriodicTask.objects.order_by("pk").values()) == before
    assert IntervalSchedule.objects.filter(every=1, period="minutes").count() == 1


def test_installing_the_schedule_repairs_an_edited_or_deleted_task():
    PeriodicTask.objects.filter(name="budgets: reset sweep").update(task="something.else")
    PeriodicTask.objects.filter(name="budgets: alert outbox").delete()

    assert beat_schedule.beat_schedule_install() == 2

    assert PeriodicTask.objects.get(name="budgets: reset sweep").task == "budgets.reset_sweep"
    assert PeriodicTask.objects.get(name="budgets: alert outbox").task == "budgets.alert_outbox"
