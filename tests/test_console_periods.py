"""Past periods on screen: a user's (BudgetPeriod rows) and the project's (its reset audit rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, Project
from budgets.selectors.console import project_past_periods

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def viewer(db):
    return User.objects.create_user("vera")


@pytest.fixture
def client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_a_project_reset_records_its_period_end_and_cap_and_the_page_shows_them(client, viewer):
    project = services.project_create(name="acme", timezone="Asia/Tokyo", duration="monthly", max_budget="50",
                                      actor="test")
    services.member_add(project=project, user=viewer, role="viewer", actor="test")
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(100), actor="test")
    services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 0, 0), cost=Decimal("12.5"),
                         source="api")
    project.refresh_from_db()
    old_start, old_end = project.period_start, project.next_reset_at

    assert services.reset_due_projects(at=old_end) == 1

    [period] = project_past_periods(project)
    assert (period.start, period.end, period.spend, period.budget) == (old_start, old_end, Decimal("12.5"),
                                                                       Decimal(50))
    response = client.get(reverse("project_periods", args=[project.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "$12.50" in page and "$50.00" in page and "25%" in page
    # Dates in the project's zone: a Tokyo month starts on the 1st there (the 30th/31st in UTC).
    local_start = old_start.astimezone(project_zone := __import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert local_start.day == 1 and f"1 {local_start:%b %Y}" in page
    last_day = (old_end.astimezone(project_zone)).day
    assert last_day == 1  # the next period starts on the 1st: the table shows the day before as the last
    assert response.context["periods_chart"]["series"][1]["labels"] == ["$50.00"]


def test_older_reset_rows_without_an_end_or_cap_still_show(client, viewer):
    project = services.project_create(name="acme", actor="test")
    services.member_add(project=project, user=viewer, role="viewer", actor="test")
    AuditLog.objects.create(project=project, action="project_period_reset", actor="system:sweep",
                            before={"period_start": "2026-01-01T00:00:00+00:00", "current_spend": "3.000000000000"},
                            after={"period_start": "2026-02-01T00:00:00+00:00"})

    [period] = project_past_periods(project)
    response = client.get(reverse("project_periods", args=[project.pk]))

    assert period.end == datetime(2026, 2, 1, tzinfo=UTC) and period.budget is None
    assert "no cap" in response.content.decode()
    assert [s["name"] for s in response.context["periods_chart"]["series"]] == ["Spent"]


def test_a_users_past_periods_are_oldest_first_in_the_chart_and_newest_first_in_the_table(client, viewer):
    project = services.project_create(name="acme", actor="test")
    services.member_add(project=project, user=viewer, role="viewer", actor="test")
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), duration="daily", actor="test")
    budget = Project.objects.get(pk=project.pk).budgets.get()
    budget.periods.create(project=project, user_id="alice", period_start=datetime(2026, 1, 1, tzinfo=UTC),
                          period_end=datetime(2026, 1, 2, tzinfo=UTC), spend=Decimal(1), total_budget=Decimal(10))
    budget.periods.create(project=project, user_id="alice", period_start=datetime(2026, 1, 2, tzinfo=UTC),
                          period_end=datetime(2026, 1, 3, tzinfo=UTC), spend=Decimal(2), total_budget=Decimal(10))

    response = client.get(reverse("user_detail", args=[project.pk, "alice"]))

    assert response.context["periods_chart"]["x"] == ["2026-01-01", "2026-01-02"]
    page = response.content.decode()
    assert page.index("2 Jan 2026 – 2 Jan 2026") < page.index("1 Jan 2026 – 1 Jan 2026")
