"""Teams and limits in a real browser: the Teams and Limits pages walked as an owner, a manager and a viewer.

An owner creates a team and a limit through the forms, edits and deletes a limit; each role sees the
buttons its role allows; the team page draws its spend chart and the models page its split by tag.
Screenshots go to test-artifacts/screenshots/limits-*.png (docs/console.md names them). Skipped without
Chromium unless BROWSER_TESTS=required.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import CostEvent, Limit, Project, TeamMember
from tests.test_browser import PASSWORD, Session, assert_charts_drawn, browser, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
ROLES = ("owner", "manager", "viewer")


@pytest.fixture
def acme(db) -> Project:
    """A project with a team, tagged spend on two models, and limits at several levels."""
    people = {role: User.objects.create_user(f"{role}-1", password=PASSWORD) for role in ROLES}
    project = services.project_create(name="acme", duration="monthly", max_budget="80", actor="test",
                                      owner=people["owner"])
    services.member_add(project=project, user=people["manager"], role="manager", actor="test")
    services.member_add(project=project, user=people["viewer"], role="viewer", actor="test")
    for user_id in ("alice", "bob", "carol"):
        services.budget_set(project=project, user_id=user_id, total_budget=Decimal(20), duration="monthly",
                            actor="test")
    services.team_set(project=project, name="research", members=["alice", "bob"], actor="test")
    for user_id, model, cost, tags in (("alice", "gpt-4o", "0.62", ",summarizer,"),
                                       ("bob", "gpt-4o-mini", "0.21", ",chat,summarizer,"),
                                       ("carol", "gpt-4o", "3.10", ",chat,")):
        event = services.cost_record(project=project, user_id=user_id, usage=Usage(model, 0, 0),
                                     cost=Decimal(cost), source="api").event
        CostEvent.objects.filter(pk=event.pk).update(tags=tags)
    for fields, used in (
        ({"scope": "team", "subject": "research", "amount": 1}, "0.83"),
        ({"scope": "user", "subject": "alice", "model": "gpt-4o", "window": "day", "amount": 2}, "0.62"),
        ({"scope": "tag", "subject": "summarizer", "unit": "requests", "window": "day", "amount": 100}, "2"),
    ):
        limit = services.limit_create(project=project, actor="test", **fields)
        Limit.objects.filter(pk=limit.pk).update(used=Decimal(used))
    return project


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_the_teams_and_limits_pages_with_only_its_buttons(tab, acme, role):  # noqa: F811 (the imported fixture)
    session = tab(role)
    page = session.page
    can_change = role in ("owner", "manager")

    session.open(reverse("limit_list", args=[acme.pk]))
    assert page.locator("#limits-table tbody tr").count() == 4  # the project cap and three limits
    assert page.locator("#create-limit-form").count() == int(can_change)
    assert page.locator(".limit-delete-form").count() == (3 if can_change else 0)
    assert "83.0%" in page.locator("#limits-table").inner_text()
    session.screenshot(f"limits-limits-{role}")

    session.open(reverse("team_list", args=[acme.pk]))
    assert page.locator("#teams-table tbody tr").count() == 1
    assert page.locator("#create-team-form").count() == int(can_change)
    session.screenshot(f"limits-teams-{role}")

    page.click("#teams-table a")
    page.wait_for_load_state("load")
    assert_charts_drawn(session, 1)
    assert page.locator("#team-members li").all_inner_texts() == ["alice", "bob"]
    assert page.locator("#team-limits-table tbody tr").count() == 1
    assert page.locator("#delete-team-form").count() == int(can_change)
    session.screenshot(f"limits-team-{role}")

    session.open(reverse("user_detail", args=[acme.pk, "alice"]))
    assert page.locator("#user-limits-table tbody tr").count() == 4  # budget, cap, team, alice on gpt-4o
    session.screenshot(f"limits-user-{role}")

    session.open(reverse("model_list", args=[acme.pk]))
    assert page.locator("#tags-table tbody tr").first.inner_text().startswith("chat")
    assert_charts_drawn(session, 3)
    session.screenshot(f"limits-models-{role}")


def test_an_owner_creates_a_team_and_limits_and_edits_and_deletes_one(tab, acme):  # noqa: F811 (the imported fixture)
    session = tab("owner")
    page = session.page

    session.open(reverse("team_list", args=[acme.pk]))
    page.fill("#id_name", "sales")
    page.fill("#id_members", "carol\ndave")
    page.click("#create-team-form button[type=submit]")
    page.wait_for_url(f"**{reverse('team_detail', args=[acme.pk, 'sales'])}")
    assert sorted(TeamMember.objects.filter(team__name="sales").values_list("user_id", flat=True)) == [
        "carol", "dave"]

    session.open(reverse("limit_list", args=[acme.pk]))
    page.select_option("#id_scope", "team")
    page.fill("#id_subject", "sales")
    page.select_option("#id_window", "day")
    page.fill("#id_amount", "5")
    page.click("#create-limit-form button[type=submit]")
    page.wait_for_load_state("load")
    created = Limit.objects.get(scope="team", subject="sales")
    assert (created.window, created.amount) == ("day", 5)
    session.screenshot("limits-created")

    # The same limit again is refused on the form, naming the one that exists.
    page.select_option("#id_scope", "team")
    page.fill("#id_subject", "sales")
    page.select_option("#id_window", "day")
    page.fill("#id_amount", "9")
    page.click("#create-limit-form button[type=submit]")
    page.wait_for_load_state("load")
    assert f"limit {created.pk} already has" in page.inner_text("#create-limit-form")
    session.screenshot("limits-duplicate-refused")

    row = page.locator(f'tr[data-limit-id="{created.pk}"]')
    row.locator(".limit-edit summary").click()
    row.locator(".limit-edit-form input[name=amount]").fill("7.5")
    row.locator("select[name=mode]").select_option("soft")
    session.screenshot("limits-edit")
    row.locator(".limit-edit-form button").click()
    page.wait_for_load_state("load")
    created.refresh_from_db()
    assert (created.amount, created.mode) == (Decimal("7.5"), "soft")

    page.locator(f'tr[data-limit-id="{created.pk}"] .limit-delete-form button').click()
    page.locator("#confirm-dialog [data-confirm-ok]").click()
    page.wait_for_load_state("load")
    page.locator(f'tr[data-limit-id="{created.pk}"]').wait_for(state="detached")
    assert not Limit.objects.filter(pk=created.pk).exists()
