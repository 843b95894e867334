"""Grants (credits), grace and rollover in the console (issue 22): the Grants card on a user's and a team's page,
giving and revoking credit by role, a grant's page with what it paid, and the limit forms' grace and rollover."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.models import AuditLog, Grant, Limit, Role
from budgets.services.grants import grant_create, grant_void
from budgets.templatetags.console import format_dollars
from tests.test_console_limits import client_as  # noqa: F401 (fixture)
from tests.test_limits import team

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(project, make_budget):
    return make_budget("alice", "1", "monthly")


@pytest.fixture
def research(project, alice):
    return team(project, "research", "alice")


def give(project, amount="2", scope="user", subject="alice", **kwargs) -> Grant:
    return grant_create(project=project, scope=scope, subject=subject, amount=Decimal(amount), actor="test", **kwargs)


def user_page(client, project, user="alice") -> str:
    response = client.get(reverse("user_detail", args=[project.pk, user]))
    assert response.status_code == 200
    return response.content.decode()


def grant_audits() -> list[str]:
    return list(AuditLog.objects.filter(action__startswith="grant_").order_by("id").values_list("action", flat=True))


# --- the card and the roles --------------------------------------------------------------------------------


def test_a_viewer_sees_the_grants_but_no_form_and_no_revoke_button(client_as, project, alice):  # noqa: F811
    grant = give(project, "2.5", note="launch week", priority=3)

    page = user_page(client_as(Role.VIEWER), project)

    assert 'id="grants-table"' in page and f'data-grant-id="{grant.pk}"' in page
    assert "$2.50" in page and "launch week" in page and 'data-status="active"' in page
    assert 'id="give-credit-form"' not in page and "grant-revoke-form" not in page


def test_a_viewer_is_refused_giving_and_revoking_and_nothing_is_written(client_as, project, alice, research):  # noqa: F811
    grant = give(project)
    client = client_as(Role.VIEWER)

    given = client.post(reverse("user_grant_new", args=[project.pk, "alice"]), {"amount": "5"})
    given_team = client.post(reverse("team_grant_new", args=[project.pk, "research"]), {"amount": "5"})
    revoked = client.post(reverse("grant_revoke", args=[project.pk, grant.pk]))

    assert (given.status_code, given_team.status_code, revoked.status_code) == (403, 403, 403)
    grant.refresh_from_db()
    assert grant.voided_at is None and Grant.objects.count() == 1
    assert grant_audits() == ["grant_create"]


def test_a_manager_gives_a_user_credit_audited_in_their_name(client_as, project, alice):  # noqa: F811
    client = client_as(Role.MANAGER)
    expires = (utcnow() + timedelta(days=30)).replace(second=0, microsecond=0)

    response = client.post(reverse("user_grant_new", args=[project.pk, "alice"]), {
        "amount": "3.25", "expires_at": expires.strftime("%Y-%m-%dT%H:%M"), "priority": "2", "note": "demo"})

    assert response.status_code == 302 and response["Location"] == reverse("user_detail", args=[project.pk, "alice"])
    grant = Grant.objects.get()
    assert (grant.scope, grant.subject, grant.amount, grant.priority, grant.note, grant.source) == (
        "user", "alice", Decimal("3.25"), 2, "demo", "manual")
    assert grant.expires_at == expires and grant.actor == "user:manager-person"
    audit = AuditLog.objects.get(action="grant_create")
    assert audit.actor == "user:manager-person" and audit.user_id == "alice"
    page = user_page(client, project)
    assert "Gave $3.25 of credit to user alice" in page and "$3.25 left" in page
    assert 'class="d-inline grant-revoke-form"' in page


def test_an_owner_gives_a_team_credit_and_revokes_it(client_as, project, research):  # noqa: F811
    client = client_as(Role.OWNER)
    team_url = reverse("team_detail", args=[project.pk, "research"])

    given = client.post(reverse("team_grant_new", args=[project.pk, "research"]), {"amount": "10"})
    grant = Grant.objects.get()
    revoked = client.post(reverse("grant_revoke", args=[project.pk, grant.pk]))

    assert given.status_code == 302 and given["Location"] == team_url
    assert revoked.status_code == 302 and revoked["Location"] == team_url
    grant.refresh_from_db()
    assert (grant.scope, grant.subject, grant.priority, grant.expires_at) == ("team", "research", 1, None)
    assert grant.voided == Decimal(10) and grant.voided_at is not None
    assert grant_audits() == ["grant_create", "grant_void"]
    assert AuditLog.objects.get(action="grant_void").actor == "user:owner-person"
    page = client.get(team_url).content.decode()
    assert 'data-status="void"' in page and "Revoked grant" in page and "$0.00 left" in page
    assert "grant-revoke-form" not in page


@pytest.mark.parametrize(("body", "error"), [
    ({"amount": ""}, "This field is required"),
    ({"amount": "0"}, "more than $0"),
    ({"amount": "-1"}, "greater than or equal to 0"),
    ({"amount": "abc"}, "Enter a number"),
    ({"amount": "1", "expires_at": "2001-01-01T00:00"}, "must be in the future"),
    ({"amount": "1", "expires_at": "tomorrow"}, "Enter a valid date/time"),
    ({"amount": "1", "priority": "-1"}, "greater than or equal to 0"),
    ({"amount": "1", "priority": "1.5"}, "Enter a whole number"),
    ({"amount": "1", "note": "x" * 501}, "at most 500 characters"),
])
def test_bad_credit_shows_the_forms_error_and_writes_nothing(client_as, project, alice, body, error):  # noqa: F811
    response = client_as(Role.MANAGER).post(reverse("user_grant_new", args=[project.pk, "alice"]), body)

    assert response.status_code == 400
    page = response.content.decode()
    assert error in page and 'id="give-credit-form"' in page
    assert Grant.objects.count() == 0 and grant_audits() == []


def test_credit_for_a_user_without_a_budget_or_a_missing_team_is_404(client_as, project, alice):  # noqa: F811
    client = client_as(Role.OWNER)

    assert client.post(reverse("user_grant_new", args=[project.pk, "nobody"]), {"amount": "1"}).status_code == 404
    assert client.post(reverse("team_grant_new", args=[project.pk, "ghosts"]), {"amount": "1"}).status_code == 404
    assert Grant.objects.count() == 0


def test_revoking_a_grant_that_is_not_active_writes_nothing(client_as, project, alice):  # noqa: F811
    grant = grant_void(grant=give(project), actor="test")
    client = client_as(Role.OWNER)

    response = client.post(reverse("grant_revoke", args=[project.pk, grant.pk]), follow=True)

    assert response.status_code == 200 and "is not active" in response.content.decode()
    assert grant_audits() == ["grant_create", "grant_void"]


def test_another_projects_grant_is_404(client_as, project, make_budget):  # noqa: F811
    other = services.project_create(name="other", timezone="UTC")
    make_budget("bob", "1", in_project=other)
    theirs = give(other, subject="bob")
    client = client_as(Role.OWNER)

    assert client.get(reverse("grant_detail", args=[project.pk, theirs.pk])).status_code == 404
    assert client.post(reverse("grant_revoke", args=[project.pk, theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.voided_at is None


def test_a_grants_page_lists_the_calls_it_paid_and_the_limits_show_the_credit(client_as, api, project, alice):  # noqa: F811
    grant = give(project, "2", note="overflow")
    spent = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 1.5})
    assert spent.status_code in (200, 201), spent.content
    client = client_as(Role.VIEWER)

    detail = client.get(reverse("grant_detail", args=[project.pk, grant.pk]))
    page = user_page(client, project)

    assert detail.status_code == 200
    body = detail.content.decode()
    half, one_and_a_half = format_dollars(Decimal("0.5")), format_dollars(Decimal("1.5"))
    assert 'id="grant-uses"' in body and half in body and one_and_a_half in body and "gpt-4o" in body
    assert "grant-revoke-form" not in body
    # The budget ($1) paid $1, the grant the rest: the user's limits row says so.
    assert f"+{one_and_a_half} credit" in page and f"{half} paid by credit" in page
    assert f'id="grants-left">{one_and_a_half} left' in page


# --- grace and rollover in the limit forms --------------------------------------------------------------------


def test_a_manager_creates_a_limit_with_grace_and_rollover_and_the_table_shows_them(client_as, project, alice):  # noqa: F811
    client = client_as(Role.MANAGER)

    response = client.post(reverse("limit_new", args=[project.pk]), {
        "scope": "user", "subject": "alice", "unit": "usd", "window": "month", "amount": "5", "mode": "hard",
        "grace_percent": "10", "rollover_max": "2.5"})

    assert response.status_code == 302
    limit = Limit.objects.get()
    assert (limit.grace_percent, limit.rollover_max) == (10, Decimal("2.5"))
    assert AuditLog.objects.get(action="limit_create").after["grace_percent"] == 10
    page = client.get(reverse("limit_list", args=[project.pk])).content.decode()
    assert "grace 10 %" in page and "rolls over ≤ $2.50" in page
    assert 'name="rollover_max" value="2.5"' in page and 'name="grace_percent" value="10"' in page


@pytest.mark.parametrize(("body", "error", "status"), [
    ({"scope": "tag", "subject": "chat", "rollover_max": "1"}, "only a dollar limit of a user or a team", 400),
    ({"window": "lifetime", "rollover_max": "1"}, "a lifetime limit never resets", 400),
    ({"rollover_max": "0"}, "rollover&#x27;s max must be more than $0", 400),
    ({"grace_percent": "101"}, "less than or equal to 100", 400),
    ({"grace_percent": "x"}, "Enter a whole number", 400),
])
def test_a_refused_grace_or_rollover_shows_the_services_message_and_writes_nothing(client_as, project, alice,  # noqa: F811
                                                                                   body, error, status):
    data = {"scope": "user", "subject": "alice", "unit": "usd", "window": "month", "amount": "5", "mode": "hard",
            **body}

    response = client_as(Role.OWNER).post(reverse("limit_new", args=[project.pk]), data)

    assert response.status_code == status
    assert error in response.content.decode()
    assert Limit.objects.count() == 0 and not AuditLog.objects.filter(action="limit_create").exists()


def test_editing_a_limit_sets_and_removes_grace_and_rollover_and_keeps_them_when_not_sent(client_as, project, alice):  # noqa: F811
    limit = services.limit_create(project=project, scope="user", subject="alice", amount=5, actor="test")
    client = client_as(Role.MANAGER)
    url = reverse("limit_edit", args=[project.pk, limit.pk])
    base = {"amount": "5", "mode": "hard", "thresholds": ""}

    client.post(url, {**base, "grace_percent": "20", "rollover_max": "1"})
    limit.refresh_from_db()
    set_to = (limit.grace_percent, limit.rollover_max)
    client.post(url, {**base, "amount": "6"})  # an older form: grace and rollover not sent
    limit.refresh_from_db()
    kept = (limit.amount, limit.grace_percent, limit.rollover_max)
    client.post(url, {**base, "grace_percent": "", "rollover_max": ""})
    limit.refresh_from_db()

    assert set_to == (20, Decimal(1))
    assert kept == (Decimal(6), 20, Decimal(1))
    assert (limit.grace_percent, limit.rollover_max) == (None, None)


def test_a_refused_edit_shows_its_error_in_the_row_and_writes_nothing(client_as, project, alice):  # noqa: F811
    limit = services.limit_create(project=project, scope="tag", subject="chat", amount=5, actor="test")
    client = client_as(Role.OWNER)

    page = client.get(reverse("limit_list", args=[project.pk])).content.decode()
    response = client.post(reverse("limit_edit", args=[project.pk, limit.pk]),
                           {"amount": "5", "mode": "hard", "grace_percent": "5", "rollover_max": "1"})

    # The row's edit form offers grace but not rollover: a tag limit never rolls over.
    assert 'aria-label="Grace (%)"' in page and 'aria-label="Rollover max ($)"' not in page
    assert response.status_code == 400
    body = response.content.decode()
    assert "only a dollar limit of a user or a team" in body and "limit-edit-errors" in body
    limit.refresh_from_db()
    assert (limit.grace_percent, limit.rollover_max) == (None, None)
    assert not AuditLog.objects.filter(action="limit_update").exists()


def test_a_viewer_is_refused_editing_grace(client_as, project, alice):  # noqa: F811
    limit = services.limit_create(project=project, scope="user", subject="alice", amount=5, actor="test")

    response = client_as(Role.VIEWER).post(reverse("limit_edit", args=[project.pk, limit.pk]),
                                           {"amount": "5", "mode": "hard", "grace_percent": "50"})

    assert response.status_code == 403
    limit.refresh_from_db()
    assert limit.grace_percent is None


# --- what the card costs -----------------------------------------------------------------------------------------


def test_the_user_page_reads_its_grants_in_the_same_queries_for_one_grant_or_thirty(client_as, project, alice):  # noqa: F811
    services.limit_create(project=project, scope="user", subject="alice", amount=5, actor="test")
    client = client_as(Role.OWNER)
    give(project)
    user_page(client, project)  # warm: the session, the lazy reset

    with CaptureQueriesContext(connection) as one:
        user_page(client, project)
    for n in range(29):
        give(project, "1", expires_at=utcnow() + timedelta(days=n + 1))
    with CaptureQueriesContext(connection) as thirty:
        page = user_page(client, project)

    assert page.count("data-grant-id=") == 30
    assert len(thirty) == len(one), [q["sql"] for q in thirty.captured_queries]
