"""Changing limits safely (issue 22) in a real browser: the Limits page's forecast, raised and thresholds
columns, the Raise form on the Limits page and on a user's page, and the alert history with the kinds
the issue added (threshold of a limit's own list, resolved, forecast, anomaly, limit_request).

Everything shown is made by the services (a backdated history for the anomaly, time_machine.travel),
not written into the tables. Screenshots go to test-artifacts/screenshots/changes-*.png (docs/console.md
shows them, copied to docs/screenshots/). Skipped without Chromium unless BROWSER_TESTS=required.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, Limit, Project
from budgets.services.anomalies import anomalies_detect
from budgets.services.forecasts import limits_forecast_check
from budgets.services.limit_raises import limit_raise
from tests.test_browser import PASSWORD, SCREENSHOTS, Session, browser, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
KINDS = ("threshold", "resolved", "forecast", "anomaly", "limit_request")


def record(project: Project, user_id: str, model: str, cost: str) -> None:
    services.cost_record(project=project, user_id=user_id, usage=Usage(model, 0, 0), cost=Decimal(cost), source="api")


@pytest.fixture
def acme(db) -> Project:
    """alice spent $0.50 a day for two weeks, then $4.20 today (an anomaly) against her own $5 monthly
    limit with thresholds 50 and 90 % (50 fired), raised by $5 for two days (50 resolved), forecast past
    it; bob asked for more; the research team (alice, bob) has a $20 limit."""
    people = {role: User.objects.create_user(f"{role}-1", password=PASSWORD) for role in ("owner", "viewer")}
    now = utcnow()
    with time_machine.travel(now - timedelta(days=15), tick=False):
        project = services.project_create(name="acme", duration="monthly", actor="test", owner=people["owner"])
        services.member_add(project=project, user=people["viewer"], role="viewer", actor="test")
        for user_id in ("alice", "bob"):
            services.budget_set(project=project, user_id=user_id, total_budget=Decimal(50), duration="monthly",
                                actor="test")
    for days_ago in range(14, 0, -1):
        with time_machine.travel(now - timedelta(days=days_ago), tick=False):
            record(project, "alice", "gpt-4o-mini", "0.5")
    services.team_set(project=project, name="research", members=["alice", "bob"], actor="test")
    alice = services.limit_create(project=project, scope="user", subject="alice", amount=5, thresholds=[50, 90],
                                  actor="test")
    services.limit_create(project=project, scope="team", subject="research", amount=20, actor="test")
    services.limit_create(project=project, scope="tag", subject="summarizer", unit="requests", window="day",
                          amount=100, actor="test")
    project.refresh_from_db()  # the limits' own thresholds (Project.limit_thresholds), as a request reads it
    record(project, "alice", "gpt-4o", "4.2")  # 84 % of $5: her 50 % fires
    limit_raise(limit=alice, amount=Decimal(5), expires_at=utcnow() + timedelta(days=2), actor="user:owner-1")
    limits_forecast_check()
    anomalies_detect()
    services.limit_request_create(project=project, user_id="bob", amount=Decimal(10), reason="Batch re-run",
                                  requested_by="key:bm_app")
    return project


def test_the_limits_page_shows_forecast_raise_and_thresholds_and_both_raise_forms(tab, acme):  # noqa: F811
    alice = Limit.objects.get(project=acme, scope="user", subject="alice")
    assert (alice.amount, alice.raised, alice.used) == (5, 5, Decimal("4.2"))
    session = tab("owner")
    page = session.page

    session.open(reverse("limit_list", args=[acme.pk]))
    row = page.locator(f'tr[data-limit-id="{alice.pk}"]')
    assert "+$5.00 until" in row.locator(".limit-raised").inner_text()
    assert row.locator(".limit-thresholds").inner_text().strip() == "alerts 50, 90 %"
    assert row.locator(".limit-forecast .text-danger").count() == 1  # past the raised $10 by the month's end
    assert page.locator("#limits-table th", has_text="Forecast").count() == 1
    session.screenshot("changes-limits-owner")

    page.set_viewport_size({"width": 1600, "height": 900})  # the open form widens the table: all of it in view
    row.locator(".limit-raise summary").click()
    row.locator(".limit-raise-form input[name=amount]").fill("2")
    row.locator(".limit-raise-form input[name=windows]").fill("1")
    page.locator("#limits-table").screenshot(path=str(SCREENSHOTS / "changes-raise-form-limits.png"))

    session.open(reverse("user_detail", args=[acme.pk, "alice"]))
    row = page.locator(f'#user-limits-table tr[data-limit-id="{alice.pk}"]')
    row.locator(".limit-raise summary").click()
    row.locator(".limit-raise-form input[name=amount]").fill("2")
    row.locator(".limit-raise-form input[name=until]").fill(
        (utcnow() + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M"))
    page.locator("#user-limits-table").screenshot(path=str(SCREENSHOTS / "changes-raise-form-user.png"))
    row.locator(".limit-raise-form button").click()
    page.wait_for_url(f"**{reverse('user_detail', args=[acme.pk, 'alice'])}")
    alice.refresh_from_db()
    assert alice.raised == 7


def test_the_alert_history_shows_each_kind_issue_22_added(tab, acme):  # noqa: F811
    kinds = set(Alert.objects.filter(project=acme).values_list("kind", flat=True))
    assert set(KINDS) <= kinds, kinds
    # alice's own thresholds, not the project's: 50 % fired at $4.20 of $5, resolved at $4.20 of $10
    assert set(Alert.objects.filter(project=acme, kind__in=["threshold", "resolved"]).values_list(
        "kind", "threshold")) == {("threshold", 50), ("resolved", 50)}
    session = tab("viewer")
    page = session.page

    session.open(reverse("alert_history", args=[acme.pk]))
    shown = {text.strip() for text in page.locator(".alert-kind").all_inner_texts()}
    assert set(KINDS) <= shown, shown
    assert "daily average" in page.inner_text("body")  # the anomaly's figures
    assert "forecast" in page.inner_text("body")
    session.screenshot("changes-alerts-viewer")
