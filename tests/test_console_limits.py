"""The console's Teams and Limits pages, the user page's limits and the models page's split by tag."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, CostEvent, Limit, Role, Team, TeamMember
from budgets.templatetags.console import format_dollars

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def client_as(project):
    def make(role: str = "owner") -> Client:
        person = User.objects.create_user(f"{role}-person", password="pw-123456-x")
        services.member_add(project=project, user=person, role=role, actor="test")
        client = Client()
        client.force_login(person)
        return client

    return make


@pytest.fixture
def spend(project, make_budget):
    """alice and bob in the team research, carol alone; calls tagged summarizer and chat."""
    for user in ("alice", "bob", "carol"):
        make_budget(user, "10", "monthly")
    services.team_set(project=project, name="research", members=["alice", "bob"], actor="test")
    for user, model, cost, tags in (("alice", "gpt-4o", "0.30", ",summarizer,"),
                                    ("bob", "gpt-4o-mini", "0.20", ",chat,summarizer,"),
                                    ("carol", "gpt-4o", "5", ",chat,"), ("carol", "gpt-4o", "1", "")):
        event = services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(cost),
                                     source="api").event
        CostEvent.objects.filter(pk=event.pk).update(tags=tags)


def test_the_limits_page_lists_every_limit_with_its_utilisation(client_as, project):
    project.max_budget = Decimal(100)
    project.save()
    limit = services.limit_create(project=project, scope="user", subject="alice", unit="requests", window="day",
                                  amount=8, actor="test")
    Limit.objects.filter(pk=limit.pk).update(used=6)

    page = client_as("viewer").get(reverse("limit_list", args=[project.pk])).content.decode()

    assert f'data-limit-id="{limit.pk}"' in page
    assert "8 requests" in page and "6 requests" in page and "75.0%" in page
    assert "the project cap" in page


def test_the_scope_filter_keeps_one_scope(client_as, project):
    services.limit_create(project=project, scope="user", subject="alice", amount=1, actor="test")
    services.limit_create(project=project, scope="tag", subject="summarizer", amount=1, actor="test")

    page = client_as("viewer").get(reverse("limit_list", args=[project.pk]) + "?scope=tag").content.decode()

    assert "summarizer" in page and ">alice<" not in page


def test_a_manager_creates_edits_and_deletes_a_limit_audited_in_their_name(client_as, project):
    client = client_as(Role.MANAGER)
    url = reverse("limit_new", args=[project.pk])

    created = client.post(url, {"scope": "tag", "subject": "summarizer", "unit": "usd", "window": "day",
                                "amount": "2", "mode": "hard"})
    limit = Limit.objects.get()
    edited = client.post(reverse("limit_edit", args=[project.pk, limit.pk]), {"amount": "3", "mode": "soft"})
    limit.refresh_from_db()
    amount, mode = limit.amount, limit.mode
    deleted = client.post(reverse("limit_remove", args=[project.pk, limit.pk]))

    assert (created.status_code, edited.status_code, deleted.status_code) == (302, 302, 302)
    assert (amount, mode) == (3, "soft")
    assert not Limit.objects.exists()
    assert list(AuditLog.objects.filter(action__startswith="limit_").values_list("action", "actor")) == [
        ("limit_delete", "user:manager-person"), ("limit_update", "user:manager-person"),
        ("limit_create", "user:manager-person")]


def test_a_refused_limit_is_shown_on_the_form_and_writes_nothing(client_as, project):
    client = client_as(Role.OWNER)
    first = client.post(reverse("limit_new", args=[project.pk]), {
        "scope": "project", "unit": "usd", "window": "month", "amount": "1", "mode": "hard"})
    audits = AuditLog.objects.count()

    again = client.post(reverse("limit_new", args=[project.pk]), {
        "scope": "project", "unit": "usd", "window": "month", "amount": "5", "mode": "hard"})
    no_team = client.post(reverse("limit_new", args=[project.pk]), {
        "scope": "team", "subject": "nobody", "unit": "usd", "window": "month", "amount": "5", "mode": "hard"})

    assert first.status_code == 302
    assert again.status_code == 400 and f"limit {Limit.objects.get().pk} already has" in again.content.decode()
    assert no_team.status_code == 400 and "no team named" in no_team.content.decode()
    assert Limit.objects.count() == 1 and AuditLog.objects.count() == audits


def test_a_viewer_cannot_change_limits_or_teams(client_as, project):
    limit = services.limit_create(project=project, scope="project", amount=1, actor="test")
    services.team_set(project=project, name="research", members=["alice"], actor="test")
    client = client_as(Role.VIEWER)
    audits = AuditLog.objects.count()

    responses = [
        client.post(reverse("limit_new", args=[project.pk]), {"scope": "project", "unit": "usd", "window": "day",
                                                              "amount": "1", "mode": "hard"}),
        client.post(reverse("limit_edit", args=[project.pk, limit.pk]), {"amount": "9", "mode": "hard"}),
        client.post(reverse("limit_remove", args=[project.pk, limit.pk])),
        client.post(reverse("team_list", args=[project.pk]), {"name": "research", "members": "bob"}),
        client.post(reverse("team_remove", args=[project.pk, "research"])),
    ]

    assert [r.status_code for r in responses] == [403] * 5
    assert AuditLog.objects.count() == audits and Limit.objects.get().amount == 1
    assert list(TeamMember.objects.values_list("user_id", flat=True)) == ["alice"]


def test_the_team_page_shows_members_spend_chart_and_limits(client_as, project, spend):
    limit = services.limit_create(project=project, scope="team", subject="research", amount=1, actor="test")
    Limit.objects.filter(pk=limit.pk).update(used=Decimal("0.5"))

    page = client_as("viewer").get(reverse("team_detail", args=[project.pk, "research"])).content.decode()

    assert "alice" in page and "bob" in page and ">carol<" not in page
    assert f'id="team-spend">{format_dollars(Decimal("0.5"))}<' in page
    assert 'id="team-spend-chart"' in page and "gpt-4o-mini" in page
    assert f'data-limit-id="{limit.pk}"' in page and "50.0%" in page


def test_saving_a_team_from_the_console_replaces_its_members(client_as, project, spend):
    client = client_as(Role.OWNER)

    moved = client.post(reverse("team_list", args=[project.pk]), {"name": "research", "members": "alice\ncarol"})
    taken = client.post(reverse("team_list", args=[project.pk]), {"name": "sales", "members": "alice, dave"})

    assert moved.status_code == 302
    assert sorted(TeamMember.objects.values_list("user_id", flat=True)) == ["alice", "carol"]
    assert taken.status_code == 400 and "already in the team" in taken.content.decode()
    assert not Team.objects.filter(name="sales").exists()


def test_deleting_a_team_from_the_console(client_as, project, spend):
    response = client_as(Role.MANAGER).post(reverse("team_remove", args=[project.pk, "research"]))

    assert response.status_code == 302 and response["Location"] == reverse("team_list", args=[project.pk])
    assert not Team.objects.exists()


def test_the_user_page_lists_every_limit_on_the_user(client_as, project, spend):
    team = services.limit_create(project=project, scope="team", subject="research", amount=1, actor="test")
    own = services.limit_create(project=project, scope="user", subject="alice", model="gpt-4o", window="day",
                                amount=2, actor="test")
    bobs = services.limit_create(project=project, scope="user", subject="bob", amount=2, actor="test")

    page = client_as("viewer").get(reverse("user_detail", args=[project.pk, "alice"])).content.decode()

    assert f'data-limit-id="{team.pk}"' in page and f'data-limit-id="{own.pk}"' in page
    assert f'data-limit-id="{bobs.pk}"' not in page
    assert 'id="user-team"' in page and "the user's budget" in page


def test_the_models_page_splits_spend_by_tag_in_one_query(client_as, project, spend):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_as("viewer")
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("model_list", args=[project.pk])).content.decode()

    assert 'id="tags-table"' in page
    table = page[page.index('id="tags-table"'):page.index("</table>", page.index('id="tags-table"'))]
    rows = table.split("<tr>")[2:]
    assert [("summarizer" in r, "chat" in r, "no tag" in r) for r in rows] == [
        (False, True, False), (True, False, False), (False, False, True)]
    assert all(format_dollars(Decimal(amount)) in row for amount, row in zip(("5.2", "0.5", "1"), rows, strict=True))
    assert sum("budgets_costevent" in q["sql"] and "GROUP BY" in q["sql"] and '"tags"' in q["sql"]
               for q in queries.captured_queries) == 1


def test_the_csv_export_filters_by_tag(client_as, project, spend):
    response = client_as("viewer").get(reverse("export_csv", args=[project.pk]) + "?tag=summarizer")

    body = b"".join(response.streaming_content).decode()
    lines = body.strip().splitlines()
    assert response.status_code == 200
    assert len(lines) == 3 and {line.split(",")[1] for line in lines[1:]} == {"alice", "bob"}
