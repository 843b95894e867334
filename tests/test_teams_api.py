"""Teams through the API: set the members (replacing the list), one team per user, read, list, delete;
a user's team through PUT /users/{u}/budget."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, Limit, Team, TeamMember
from tests.api_helpers import assert_error, body_of

pytestmark = pytest.mark.django_db


def memberships():
    return sorted(TeamMember.objects.values_list("team__name", "user_id"))


def test_put_creates_the_team_with_its_members(api, project):
    response = api.put("/api/v1/teams/research", {"members": ["bob", "alice", "alice"]})

    assert response.status_code == 201, response.content
    body = body_of(response)
    assert (body["name"], body["members"], body["spend_this_month"], body["limits"]) == (
        "research", ["alice", "bob"], 0, [])
    assert memberships() == [("research", "alice"), ("research", "bob")]
    entry = AuditLog.objects.get(action="team_create")
    assert entry.actor == f"key:{project.api_keys.get().prefix}"
    assert entry.after == {"name": "research", "members": ["alice", "bob"]}


def test_put_again_replaces_the_member_list(api):
    api.put("/api/v1/teams/research", {"members": ["alice", "bob"]})

    response = api.put("/api/v1/teams/research", {"members": ["bob", "carol"]})

    assert response.status_code == 200, response.content
    assert body_of(response)["members"] == ["bob", "carol"]
    assert memberships() == [("research", "bob"), ("research", "carol")]
    entry = AuditLog.objects.get(action="team_update")
    assert (entry.before["members"], entry.after["members"]) == (["alice", "bob"], ["bob", "carol"])


def test_a_user_already_in_another_team_is_409_naming_it_and_nothing_changes(api):
    api.put("/api/v1/teams/research", {"members": ["alice"]})
    before = memberships(), AuditLog.objects.count()

    response = api.put("/api/v1/teams/sales", {"members": ["bob", "alice"]})

    error = assert_error(response, 409, "conflict")
    assert "'alice'" in error["message"] and "'research'" in error["message"]
    assert (memberships(), AuditLog.objects.count()) == before
    assert not Team.objects.filter(name="sales").exists()


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/teams/has%20space", {"members": []}),
    ("/api/v1/teams/" + "x" * 65, {"members": []}),
    ("/api/v1/teams/research", {"members": "alice"}),
    ("/api/v1/teams/research", {"members": ["a/../b"]}),
    ("/api/v1/teams/research", {"members": [], "lead": "alice"}),
    ("/api/v1/teams/research", {}),
])
def test_bad_input_is_400_and_writes_nothing(api, path, body):
    response = api.put(path, body)

    assert_error(response, 400, "validation_error")
    assert not Team.objects.exists() and not AuditLog.objects.filter(action__startswith="team").exists()


def test_get_answers_members_spend_this_month_and_the_teams_limits(api, project, make_budget):
    for user in ("alice", "bob", "carol"):
        make_budget(user)
    api.put("/api/v1/teams/research", {"members": ["alice", "bob"]})
    limit = services.limit_create(project=project, scope="team", subject="research", amount=1, actor="test")
    Limit.objects.filter(pk=limit.pk).update(held=Decimal("0.05"))  # the members' records make its used
    for user, cost in (("alice", "0.10"), ("bob", "0.15"), ("carol", "9")):
        services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0), cost=Decimal(cost),
                             source="api")

    body = body_of(api.get("/api/v1/teams/research"))

    assert body["members"] == ["alice", "bob"]
    assert body["spend_this_month"] == Decimal("0.25")
    (team_limit,) = body["limits"]
    assert (team_limit["id"], team_limit["limit"], team_limit["used"], team_limit["held"],
            team_limit["remaining"]) == (limit.pk, 1, Decimal("0.25"), Decimal("0.05"), Decimal("0.7"))


def test_the_list_names_each_team_with_its_size(api):
    api.put("/api/v1/teams/sales", {"members": ["carol"]})
    api.put("/api/v1/teams/research", {"members": ["alice", "bob"]})

    body = body_of(api.get("/api/v1/teams"))

    assert [(team["name"], team["members"]) for team in body["items"]] == [("research", 2), ("sales", 1)]


def test_delete_removes_the_team_its_members_and_its_limits(api, project):
    api.put("/api/v1/teams/research", {"members": ["alice"]})
    services.limit_create(project=project, scope="team", subject="research", amount=1, actor="test")

    response = api.delete("/api/v1/teams/research")

    assert response.status_code == 204
    assert not Team.objects.exists() and not TeamMember.objects.exists() and not Limit.objects.exists()
    entry = AuditLog.objects.get(action="team_delete")
    assert entry.before["members"] == ["alice"] and len(entry.before["limits"]) == 1
    assert_error(api.get("/api/v1/teams/research"), 404, "not_found")
    assert_error(api.delete("/api/v1/teams/research"), 404, "not_found")


def test_another_projects_team_is_not_found(api, make_api):
    other = make_api(in_project=services.project_create(name="other"))
    other.put("/api/v1/teams/research", {"members": ["alice"]})

    assert_error(api.get("/api/v1/teams/research"), 404, "not_found")
    assert body_of(api.get("/api/v1/teams"))["items"] == []


def test_a_budget_put_with_a_team_puts_the_user_in_it(api):
    api.put("/api/v1/teams/research", {"members": []})

    response = api.put("/api/v1/users/alice/budget", {"total_budget": 5, "team": "research"})

    assert response.status_code == 201, response.content
    assert memberships() == [("research", "alice")]
    assert AuditLog.objects.filter(action="team_member_set", user_id="alice").count() == 1


def test_a_budget_put_moves_a_user_between_teams_and_null_takes_them_out(api):
    api.put("/api/v1/teams/research", {"members": ["alice"]})
    api.put("/api/v1/teams/sales", {"members": []})

    moved = api.put("/api/v1/users/alice/budget", {"total_budget": 5, "team": "sales"})
    kept = api.put("/api/v1/users/alice/budget", {"total_budget": 6})
    assert memberships() == [("sales", "alice")]
    left = api.put("/api/v1/users/alice/budget", {"total_budget": 6, "team": None})

    assert (moved.status_code, kept.status_code, left.status_code) == (201, 200, 200)
    assert memberships() == []


def test_a_budget_put_naming_a_missing_team_writes_neither_budget_nor_team(api, project):
    response = api.put("/api/v1/users/alice/budget", {"total_budget": 5, "team": "nobody"})

    assert_error(response, 422, "validation_error")
    assert not project.budgets.exists()
    assert not TeamMember.objects.exists()
    assert not AuditLog.objects.filter(action__regex="^(budget|team)").exists()
