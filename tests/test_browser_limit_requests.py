"""Limit requests and temporary raises in a real browser: the Requests page and a raise, walked as an
owner, a manager and a viewer.

An application's request waits on the Requests page (the navigation's badge counts it for owners and
managers); a manager approves one as a raise, an owner denies another with a note; a viewer sees them
and no buttons; the owner raises a limit from the Limits page and from the user's page and ends one
early. Screenshots go to test-artifacts/screenshots/requests-*.png (docs/console.md shows some, copied
to docs/screenshots/). Skipped without Chromium unless BROWSER_TESTS=required.
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
from budgets.models import Limit, LimitIncrease, LimitRequest, Project
from tests.test_browser import PASSWORD, Session, browser, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
ROLES = ("owner", "manager", "viewer")


@pytest.fixture
def acme(db) -> Project:
    """A project with two users' monthly limits, some spend, and two pending requests from an application."""
    people = {role: User.objects.create_user(f"{role}-1", password=PASSWORD) for role in ROLES}
    project = services.project_create(name="acme", duration="monthly", actor="test", owner=people["owner"])
    services.member_add(project=project, user=people["manager"], role="manager", actor="test")
    services.member_add(project=project, user=people["viewer"], role="viewer", actor="test")
    for user_id in ("alice", "bob"):
        services.budget_set(project=project, user_id=user_id, total_budget=Decimal(50), duration="monthly",
                            actor="test")
        services.limit_create(project=project, scope="user", subject=user_id, amount=5, actor="test")
        services.cost_record(project=project, user_id=user_id, usage=Usage("gpt-4o", 0, 0), cost=Decimal("4.2"),
                             source="api")
    until = utcnow() + timedelta(days=2)
    services.limit_request_create(project=project, user_id="alice", amount=Decimal(10), until=until,
                                  reason="Customer demo on Thursday", requested_by="key:bm_app")
    services.limit_request_create(project=project, user_id="bob", amount=Decimal(20),
                                  reason="Batch re-run", requested_by="key:bm_app")
    return project


def _alice(project: Project) -> Limit:
    return Limit.objects.get(project=project, subject="alice")


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_the_requests_page_and_the_raise_forms_its_role_allows(tab, acme, role):  # noqa: F811
    session = tab(role)
    page = session.page
    can_change = role in ("owner", "manager")

    session.open(reverse("limit_requests", args=[acme.pk]))
    assert page.locator("#requests-table tbody tr").count() == 2
    assert page.locator("#pending-requests-badge").count() == int(can_change)
    if can_change:
        assert page.inner_text("#pending-requests-badge").strip() == "2"
    assert page.locator(".decide-form").count() == (2 if can_change else 0)
    assert page.locator("#new-request-form").count() == int(can_change)
    assert "Customer demo on Thursday" in page.inner_text("#requests-table")
    session.screenshot(f"requests-requests-{role}")

    session.open(reverse("limit_list", args=[acme.pk]))
    assert page.locator(".limit-raise-form").count() == (2 if can_change else 0)
    session.open(reverse("user_detail", args=[acme.pk, "alice"]))
    assert page.locator(".limit-raise-form").count() == int(can_change)
    session.screenshot(f"requests-user-{role}")


def test_a_manager_approves_a_raise_and_an_owner_denies_with_a_note(tab, acme):  # noqa: F811
    alice_request = LimitRequest.objects.get(user_id="alice")
    bob_request = LimitRequest.objects.get(user_id="bob")
    manager = tab("manager")
    page = manager.page

    manager.open(reverse("limit_requests", args=[acme.pk]))
    row = page.locator(f'tr[data-request-id="{alice_request.pk}"]')
    row.locator("select[name=decision]").select_option("raise")
    row.locator("input[name=note]").fill("Good luck with the demo")
    manager.screenshot("requests-approve")
    row.locator(".decide-form button").click()
    page.wait_for_load_state("load")
    alice_request.refresh_from_db()
    assert (alice_request.status, alice_request.decided_by) == ("approved", "user:manager-1")
    assert _alice(acme).raised == 10
    assert page.inner_text("#pending-requests-badge").strip() == "1"
    assert page.locator(f'tr[data-request-id="{alice_request.pk}"][data-status="approved"]').count() == 1

    owner = tab("owner")
    owner.open(reverse("limit_requests", args=[acme.pk]))
    row = owner.page.locator(f'tr[data-request-id="{bob_request.pk}"]')
    row.locator("select[name=decision]").select_option("deny")
    row.locator("input[name=note]").fill("Not this month")
    row.locator(".decide-form button").click()
    owner.page.wait_for_load_state("load")
    bob_request.refresh_from_db()
    assert (bob_request.status, bob_request.note) == ("denied", "Not this month")
    assert owner.page.locator("#pending-requests-badge").count() == 0
    assert "Not this month" in owner.page.inner_text("#requests-table")
    owner.screenshot("requests-decided")


def test_an_owner_raises_a_limit_from_both_pages_and_ends_one_early(tab, acme):  # noqa: F811
    session = tab("owner")
    page = session.page
    alice = _alice(acme)

    session.open(reverse("limit_list", args=[acme.pk]))
    row = page.locator(f'tr[data-limit-id="{alice.pk}"]')
    row.locator(".limit-raise summary").click()
    row.locator(".limit-raise-form input[name=amount]").fill("3")
    row.locator(".limit-raise-form input[name=windows]").fill("1")
    session.screenshot("requests-raise-form")
    row.locator(".limit-raise-form button").click()
    page.wait_for_load_state("load")
    alice.refresh_from_db()
    assert alice.raised == 3
    assert "+$3.00" in page.inner_text(f'tr[data-limit-id="{alice.pk}"]')
    assert page.locator("#active-raises tbody tr").count() == 1

    session.open(reverse("user_detail", args=[acme.pk, "alice"]))
    row = page.locator(f'#user-limits-table tr[data-limit-id="{alice.pk}"]')
    row.locator(".limit-raise summary").click()
    row.locator(".limit-raise-form input[name=amount]").fill("2")
    row.locator(".limit-raise-form input[name=until]").fill((utcnow() + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M"))
    row.locator(".limit-raise-form button").click()
    page.wait_for_url(f"**{reverse('user_detail', args=[acme.pk, 'alice'])}")
    alice.refresh_from_db()
    assert alice.raised == 5
    session.screenshot("requests-user-raised")

    session.open(reverse("limit_list", args=[acme.pk]))
    assert page.locator("#active-raises tbody tr").count() == 2
    session.screenshot("requests-raises-in-force")
    first = LimitIncrease.objects.order_by("ends_at").first()
    page.locator(f'#active-raises tr[data-increase-id="{first.pk}"] .raise-end-form button').click()
    page.locator("#confirm-dialog [data-confirm-ok]").click()
    page.wait_for_load_state("load")
    page.locator(f'#active-raises tr[data-increase-id="{first.pk}"]').wait_for(state="detached")
    alice.refresh_from_db()
    assert alice.raised == 3
