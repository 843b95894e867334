"""Grants (credits), grace and rollover in a real browser: a manager gives alice credit from her page, sees it in
the Grants card and in her limits, opens the grant's page, and revokes it (with the confirm dialog); a viewer
sees the grants and no form; a manager sets a limit's grace and rollover on the Limits page. Screenshots go to
test-artifacts/screenshots/grants-*.png (docs/console.md shows some, copied to docs/screenshots/). Skipped
without Chromium unless BROWSER_TESTS=required.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, Grant, Limit, Project
from budgets.services.grants import grant_create
from tests.test_browser import PASSWORD, SCREENSHOTS, Session, browser, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
ROLES = ("owner", "manager", "viewer")


@pytest.fixture
def acme(db) -> Project:
    """alice's $5 monthly budget, $4.20 spent; the team research (alice) with a $20 monthly limit; a rollover
    credit of $1.25 from last month."""
    people = {role: User.objects.create_user(f"{role}-1", password=PASSWORD) for role in ROLES}
    project = services.project_create(name="acme", duration="monthly", actor="test", owner=people["owner"])
    services.member_add(project=project, user=people["manager"], role="manager", actor="test")
    services.member_add(project=project, user=people["viewer"], role="viewer", actor="test")
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(5), duration="monthly", actor="test")
    services.team_set(project=project, name="research", members=["alice"], actor="test")
    services.limit_create(project=project, scope="team", subject="research", amount=20, actor="test")
    services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 0, 0), cost=Decimal("4.2"),
                         source="api")
    grant = grant_create(project=project, scope="user", subject="alice", amount=Decimal("1.25"), actor="system",
                         note="from November", expires_at=utcnow() + timedelta(days=20))
    Grant.objects.filter(pk=grant.pk).update(source=Grant.Source.ROLLOVER)
    return project


def _user_page(session: Session, project: Project) -> None:
    session.open(reverse("user_detail", args=[project.pk, "alice"]))


def test_a_manager_gives_credit_sees_it_and_revokes_it(tab, acme):  # noqa: F811
    manager = tab("manager")
    page = manager.page

    _user_page(manager, acme)
    form = page.locator("#give-credit-form")
    form.locator("input[name=amount]").fill("10")
    form.locator("input[name=expires_at]").fill((utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M"))
    form.locator("input[name=note]").fill("Customer demo")
    manager.screenshot("grants-give-form")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("load")

    grant = Grant.objects.get(note="Customer demo")
    assert (grant.amount, grant.actor, grant.subject) == (Decimal(10), "user:manager-1", "alice")
    row = page.locator(f'#grants-table tr[data-grant-id="{grant.pk}"]')
    assert row.get_attribute("data-status") == "active" and "Customer demo" in row.inner_text()
    assert page.inner_text("#grants-left").strip() == "$11.25 left"
    assert "+$11.25 credit" in page.inner_text("#user-limits-table")
    manager.screenshot("grants-user")
    page.locator("#grants").screenshot(path=str(SCREENSHOTS / "grants-card.png"))  # the card alone, for the docs

    page.click(f'#grants-table tr[data-grant-id="{grant.pk}"] a')
    page.wait_for_load_state("load")
    assert "Customer demo" in page.inner_text("#grant-summary")
    assert "It has paid nothing yet" in page.content()

    _user_page(manager, acme)
    page.locator(f'#grants-table tr[data-grant-id="{grant.pk}"] .grant-revoke-form button').click()
    page.locator("#confirm-dialog [data-confirm-ok]").click()
    page.wait_for_load_state("load")
    page.locator(f'#grants-table tr[data-grant-id="{grant.pk}"][data-status="void"]').wait_for()
    grant.refresh_from_db()
    assert grant.voided == Decimal(10) and grant.voided_at is not None
    assert AuditLog.objects.filter(action="grant_void", actor="user:manager-1").count() == 1
    assert page.inner_text("#grants-left").strip() == "$1.25 left"
    manager.screenshot("grants-revoked")


def test_a_manager_gives_a_team_credit_and_a_refused_one_shows_why(tab, acme):  # noqa: F811
    manager = tab("manager")
    page = manager.page

    manager.open(reverse("team_detail", args=[acme.pk, "research"]))
    form = page.locator("#give-credit-form")
    form.locator("input[name=amount]").fill("0")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("load")
    assert "more than $0" in page.inner_text("#give-credit-form")
    assert Grant.objects.filter(scope="team").count() == 0

    form = page.locator("#give-credit-form")
    form.locator("input[name=amount]").fill("50")
    form.locator("input[name=priority]").fill("0")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("load")
    grant = Grant.objects.get(scope="team")
    assert (grant.subject, grant.amount, grant.priority) == ("research", Decimal(50), 0)
    assert "+$50.00 credit" in page.inner_text("#team-limits-table")
    manager.screenshot("grants-team")


def test_a_viewer_sees_the_grants_and_no_form(tab, acme):  # noqa: F811
    viewer = tab("viewer")
    page = viewer.page

    _user_page(viewer, acme)
    assert page.locator("#grants-table tbody tr").count() == 1
    assert "rollover" in page.inner_text("#grants-table")
    assert page.locator("#give-credit-form").count() == 0
    assert page.locator(".grant-revoke-form").count() == 0
    viewer.screenshot("grants-user-viewer")

    viewer.open(reverse("team_detail", args=[acme.pk, "research"]))
    assert page.locator("#give-credit-form").count() == 0


def test_a_manager_sets_a_limits_grace_and_rollover(tab, acme):  # noqa: F811
    manager = tab("manager")
    page = manager.page
    limit = Limit.objects.get(subject="research")

    manager.open(reverse("limit_list", args=[acme.pk]))
    row = page.locator(f'tr[data-limit-id="{limit.pk}"]')
    row.locator(".limit-edit summary").click()
    row.locator(".limit-edit-form input[name=grace_percent]").fill("10")
    row.locator(".limit-edit-form input[name=rollover_max]").fill("5")
    row.locator(".limit-edit-form button").click()
    page.wait_for_load_state("load")

    limit.refresh_from_db()
    assert (limit.grace_percent, limit.rollover_max) == (10, Decimal(5))
    text = page.inner_text(f'tr[data-limit-id="{limit.pk}"]')
    assert "grace 10 %" in text and "rolls over ≤ $5.00" in text
    manager.screenshot("grants-limits")
