"""The team console in a real browser: each new page walked as an owner, a manager and a viewer.

What each role sees (buttons only for what it may do), what it can do through the forms, that a
viewer's POST is 403, screenshots of every page per role (test-artifacts/screenshots/team-*.png),
and no request leaves the test server. Skipped without Chromium unless BROWSER_TESTS=required.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.timezone import now

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, Membership, Project, UserBudget
from tests.test_browser import PASSWORD, Session, assert_charts_drawn, browser, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
ROLES = ("owner", "manager", "viewer")


@pytest.fixture
def team(db) -> Project:
    """A project with spend, a finished period, an alert, and one member of each role."""
    people = {role: User.objects.create_user(f"{role}-1", email=f"{role}@example.com", password=PASSWORD)
              for role in ROLES}
    project = services.project_create(name="acme", duration="monthly", max_budget="80", actor="test",
                                      owner=people["owner"])
    services.member_add(project=project, user=people["manager"], role="manager", actor="test")
    services.member_add(project=project, user=people["viewer"], role="viewer", actor="test")
    for user_id, amount in (("alice", "12.5"), ("bob", "0.0142"), ("carol", "3")):
        services.budget_set(project=project, user_id=user_id, total_budget=Decimal(20), duration="monthly",
                            actor="test")
        services.cost_record(project=project, user_id=user_id, usage=Usage("gpt-4o", 0, 0), cost=Decimal(amount),
                             source="api")
    project.refresh_from_db()
    services.reset_due_projects(at=project.next_reset_at)  # one finished project period
    Alert.objects.create(project=project, scope="user", user_id="alice", threshold=80, period_start=now(),
                         spend=Decimal(16), limit=Decimal(20), attempts=2, last_error="webhook answered HTTP 500")
    # Nothing listens on the discard port: the test webhook shows its failure on the page.
    services.project_update(project=project, actor="test", alert_webhook_url="http://127.0.0.1:9/hook")
    return project


def post_status(session: Session, path: str) -> int:
    """A POST from the page with its CSRF token (what a hand-made form would send); the answer's status."""
    return session.page.evaluate(
        """async (path) => {
            const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken=')).split('=')[1];
            const response = await fetch(path, {method: 'POST', headers: {'X-CSRFToken': token},
                                                body: new URLSearchParams({role: 'owner', op: 'reset',
                                                                           user_ids: 'alice'})});
            return response.status;
        }""", path)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_the_team_pages_with_only_its_buttons(tab, team, role):  # noqa: F811 (the imported fixture)
    session = tab(role)
    page = session.page
    pk = team.pk
    can_change, can_manage = role in ("owner", "manager"), role == "owner"

    session.open(reverse("member_list", args=[pk]))
    assert page.locator("#members-table tbody tr").count() == 3
    assert page.locator("#your-role").inner_text() == role
    assert page.locator("#invite-form").count() == int(can_manage)
    assert page.locator(".remove-form").count() == (3 if can_manage else 0)
    session.screenshot(f"team-members-{role}")

    session.open(reverse("user_list", args=[pk]))
    assert page.locator("#bulk-form").count() == int(can_change)
    assert page.locator("input[name=user_ids]").count() == (3 if can_change else 0)
    session.screenshot(f"team-users-{role}")

    session.open(reverse("audit_log", args=[pk]))
    assert page.locator("#audit-table tbody tr").count() > 5
    session.screenshot(f"team-audit-{role}")

    session.open(reverse("alert_history", args=[pk]))
    assert "webhook answered HTTP 500" in page.locator("#alerts-table").inner_text()
    assert page.locator("#webhook-test-form").count() == int(can_change)
    session.screenshot(f"team-alerts-{role}")

    session.open(reverse("project_periods", args=[pk]))
    assert_charts_drawn(session, 1)
    assert "$15.51" in page.locator("#project-periods").inner_text()  # 12.5 + 0.0142 + 3
    session.screenshot(f"team-periods-{role}")

    session.open(reverse("project_settings", args=[pk]))
    assert page.locator("#delete-project").count() == int(can_manage)
    assert page.get_by_role("button", name="Save project settings").count() == int(can_change)

    if not can_change:
        membership = Membership.objects.get(project=team, user__username="owner-1")
        for path in (reverse("budget_bulk", args=[pk]), reverse("member_role", args=[pk, membership.pk]),
                     reverse("webhook_test", args=[pk]), reverse("budget_import", args=[pk])):
            assert post_status(session, path) == 403, path
        assert UserBudget.objects.get(project=team, user_id="alice").current_spend == Decimal("12.5")


def test_an_owner_invites_a_member_who_accepts_and_sends_a_test_webhook(tab, team, browser, live_server):  # noqa: F811
    session = tab("owner")
    page = session.page
    User.objects.create_user("newcomer", email="newcomer@example.com", password=PASSWORD)

    session.open(reverse("member_list", args=[team.pk]))
    page.fill("#invite-form [name=invitee]", "newcomer@example.com")
    page.select_option("#invite-form [name=role]", "manager")
    page.click("#invite-form button[type=submit]")
    page.wait_for_selector("#invitation-link")
    assert page.locator("tr[data-invitation='newcomer@example.com']").count() == 1
    assert not Membership.objects.filter(project=team, user__username="newcomer").exists()
    session.screenshot("team-members-invitation")
    link = page.locator("#invitation-link-value").inner_text().strip()

    # The invited person opens the link, logs in from it, and accepts.
    newcomer = Session(browser, live_server.url)
    try:
        newcomer.page.goto(link)
        newcomer.page.click("#login-to-accept")
        newcomer.page.fill("#id_username", "newcomer")
        newcomer.page.fill("#id_password", PASSWORD)
        newcomer.page.click("button[type=submit]")
        newcomer.page.click("#accept-form button[type=submit]")
        newcomer.page.wait_for_url(live_server.url + reverse("project_overview", args=[team.pk]))
        assert Membership.objects.get(project=team, user__username="newcomer").role == "manager"
        assert newcomer.errors == [] and newcomer.foreign_requests() == []
    finally:
        newcomer.close()

    # The last owner cannot step down.
    page.locator("tr[data-member=owner-1] select").select_option("viewer")
    page.locator("tr[data-member=owner-1] .role-form button").click()
    page.wait_for_selector("text=at least one owner")

    session.open(reverse("alert_history", args=[team.pk]))
    page.click("#webhook-test-form button")
    page.wait_for_selector("#webhook-test-result")
    assert "X-Budget-Signature: sha256=" in page.locator("#webhook-test-request").inner_text()
    assert "unreachable" in page.locator("#webhook-test-result").inner_text()
    session.screenshot("team-alerts-test-webhook")

    session.open(reverse("project_delete", args=[team.pk]))
    assert "3 ledger events" in page.locator("#delete-counts").inner_text()
    session.screenshot("team-delete-owner")


def test_a_manager_sets_budgets_in_bulk_and_imports_a_csv(tab, team, tmp_path):  # noqa: F811 (the imported fixture)
    session = tab("manager")
    page = session.page

    session.open(reverse("user_list", args=[team.pk]))
    page.check("input[name=user_ids][value=alice]")
    page.check("input[name=user_ids][value=bob]")
    page.fill("#bulk-amount", "30")
    page.click("#bulk-form button[value=set]")
    assert "2 selected users to $30; each keeps its reset period" in page.inner_text("#confirm-dialog .modal-body")
    page.click("[data-confirm-ok]")
    page.wait_for_selector("text=Set the budget of 2 users")
    assert UserBudget.objects.get(project=team, user_id="bob").total_budget == Decimal(30)

    csv_file = tmp_path / "budgets.csv"
    csv_file.write_text("user_id,total_budget,duration\nalice,30,monthly\ncarol,45,weekly\ndave,5,daily\n")
    session.open(reverse("budget_import", args=[team.pk]))
    page.set_input_files("#import-form input[type=file]", str(csv_file))
    page.click("#import-form button[type=submit]")
    page.wait_for_selector("#import-preview")
    changes = page.locator("#import-preview tbody tr").evaluate_all("rows => rows.map(r => r.dataset.change)")
    assert changes == ["unchanged", "changed", "new"]
    session.screenshot("team-import-preview-manager")
    page.click("#import-confirm-form button[type=submit]")
    page.wait_for_selector("text=Imported 2 budget changes")
    assert UserBudget.objects.get(project=team, user_id="dave").total_budget == Decimal(5)
    assert page.locator("#invite-form").count() == 0
