"""Who may do what: every console URL × every role × two projects, through the one access helper.

Owners do everything (members and deletion too), managers change budgets, keys and settings,
viewers read and export, non-members get 404, staff do everything everywhere, and a person
who is not logged in is sent to the login page. A refused request writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import (
    Action,
    ApiKey,
    AuditLog,
    CostEvent,
    Grant,
    Invitation,
    Limit,
    LimitIncrease,
    LimitRequest,
    Membership,
    Project,
    Role,
    UserBudget,
)
from budgets.services.grants import grant_create

pytestmark = pytest.mark.django_db

User = get_user_model()
ROLES = ("owner", "manager", "viewer", "nonmember", "staff", "anonymous")


@dataclass
class Team:
    project: Project
    people: dict[str, object]
    extra: Membership  # a viewer whose role can be changed or who can be removed
    key: ApiKey
    invitation: Invitation  # a pending one, to withdraw
    limit: Limit  # a limit on alice, to edit or delete
    request: LimitRequest  # a pending request an application made, to decide
    increase: LimitIncrease  # a raise of that limit, to end early


def _project(name: str, people: dict[str, object]) -> Team:
    project = services.project_create(name=name, timezone="UTC", actor="test")
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), actor="test")
    services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o-mini", 1000, 100), source="api")
    key, _ = services.api_key_create(project=project, name="backend")
    # Nothing listens on the discard port: a test webhook fails fast (and is still audited).
    Project.objects.filter(pk=project.pk).update(alert_webhook_url="http://127.0.0.1:9/hook",
                                                 slack_webhook_url="http://127.0.0.1:9/slack")
    for role in ("owner", "manager", "viewer"):
        if role in people:
            services.member_add(project=project, user=people[role], role=role, actor="test")
    extra_user = User.objects.create_user(f"extra-{name}", email=f"extra-{name}@example.com")
    extra = services.member_add(project=project, user=extra_user, role=Role.VIEWER, actor="test")
    invitation = services.member_invite(project=project, invitee=f"invited-{name}@example.com", role=Role.VIEWER,
                                        invited_by=extra_user, actor="test")
    services.team_set(project=project, name="research", members=["alice"], actor="test")
    limit = services.limit_create(project=project, scope="user", subject="alice", amount=5, actor="test")
    request = services.limit_request_create(project=project, user_id="alice", amount=1, requested_by="key:test")
    increase = services.limit_raise(limit=limit, amount=1, windows=1, actor="test")
    grant_create(project=project, scope="user", subject="alice", amount=Decimal(3), actor="test")
    return Team(project, people, extra, key, invitation, limit, request, increase)


@pytest.fixture
def teams(db) -> tuple[Team, Team]:
    people = {role: User.objects.create_user(role, email=f"{role}@example.com", password="pw-123456-x",
                                             is_staff=(role == "staff"))
              for role in ("owner", "manager", "viewer", "nonmember", "staff")}
    mine = _project("acme", people)
    # The other project has its own owner: our owner, manager and viewer are strangers there.
    theirs = _project("other-team", {"owner": User.objects.create_user("their-owner")})
    return mine, theirs


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    action: str
    url: Callable[[Team], str]
    data: Callable[[Team], dict] = lambda team: {}
    ok: int = 200  # the status when allowed


def _u(name: str, *extra: Callable[[Team], object]) -> Callable[[Team], str]:
    return lambda team: reverse(name, args=[team.project.pk, *(f(team) for f in extra)])


def ALICE(team: Team) -> str:
    return "alice"


def KEY(team: Team) -> int:
    return team.key.pk


def EXTRA(team: Team) -> int:
    return team.extra.pk


def INVITATION(team: Team) -> int:
    return team.invitation.pk


def LIMIT(team: Team) -> int:
    return team.limit.pk


def REQUEST(team: Team) -> int:
    return team.request.pk


def INCREASE(team: Team) -> int:
    return team.increase.pk


def RESEARCH(team: Team) -> str:
    return "research"


def GRANT(team: Team) -> int:
    return Grant.objects.get(project=team.project).pk

ROUTES = [
    Route("overview", "get", Action.VIEW, _u("project_overview")),
    Route("users", "get", Action.VIEW, _u("user_list")),
    Route("user", "get", Action.VIEW, _u("user_detail", ALICE)),
    Route("models", "get", Action.VIEW, _u("model_list")),
    Route("keys", "get", Action.VIEW, _u("key_list")),
    Route("settings", "get", Action.VIEW, _u("project_settings")),
    Route("export", "get", Action.VIEW, _u("export_csv")),
    Route("members", "get", Action.VIEW, _u("member_list")),
    Route("periods", "get", Action.VIEW, _u("project_periods")),
    Route("audit log", "get", Action.VIEW, _u("audit_log")),
    Route("alerts", "get", Action.VIEW, _u("alert_history")),
    Route("teams", "get", Action.VIEW, _u("team_list")),
    Route("team", "get", Action.VIEW, _u("team_detail", RESEARCH)),
    Route("limits", "get", Action.VIEW, _u("limit_list")),
    Route("team save", "post", Action.CHANGE, _u("team_list"), lambda t: {"name": "sales", "members": "bob"}, 302),
    Route("team delete", "post", Action.CHANGE, _u("team_remove", RESEARCH), ok=302),
    Route("limit create", "post", Action.CHANGE, _u("limit_new"),
          lambda t: {"scope": "project", "unit": "requests", "window": "day", "amount": "100", "mode": "hard"}, 302),
    Route("limit edit", "post", Action.CHANGE, _u("limit_edit", LIMIT), lambda t: {"amount": "6", "mode": "soft"}, 302),
    Route("limit delete", "post", Action.CHANGE, _u("limit_remove", LIMIT), ok=302),
    Route("limit raise", "post", Action.CHANGE, _u("limit_raise_new", LIMIT), lambda t: {"amount": "2", "windows": "1"},
          302),
    Route("raise end", "post", Action.CHANGE, _u("limit_raise_remove", LIMIT, INCREASE), ok=302),
    Route("grant", "get", Action.VIEW, _u("grant_detail", GRANT)),
    Route("user grant", "post", Action.CHANGE, _u("user_grant_new", ALICE), lambda t: {"amount": "2"}, 302),
    Route("team grant", "post", Action.CHANGE, _u("team_grant_new", RESEARCH), lambda t: {"amount": "2"}, 302),
    Route("grant revoke", "post", Action.CHANGE, _u("grant_revoke", GRANT), ok=302),
    Route("requests", "get", Action.VIEW, _u("limit_requests")),
    Route("request new", "post", Action.CHANGE, _u("limit_request_new"),
          lambda t: {"user_id": "alice", "amount": "1", "reason": "a demo"}, 302),
    Route("request decide", "post", Action.CHANGE, _u("limit_request_decide", REQUEST),
          lambda t: {"decision": "raise", "amount": "1", "windows": "1", "note": "ok"}, 302),
    Route("test webhook", "post", Action.CHANGE, _u("webhook_test")),
    Route("test slack", "post", Action.CHANGE, _u("slack_test")),
    Route("budget create", "post", Action.CHANGE, _u("budget_create"),
          lambda t: {"user_id": "newbie", "total_budget": "5", "duration": "monthly"}, 302),
    Route("budget edit", "post", Action.CHANGE, _u("budget_edit", ALICE),
          lambda t: {"total_budget": "7", "duration": "monthly"}, 302),
    Route("budget reset", "post", Action.CHANGE, _u("budget_reset", ALICE), ok=302),
    Route("budget delete", "post", Action.CHANGE, _u("budget_delete", ALICE), ok=302),
    Route("bulk set", "post", Action.CHANGE, _u("budget_bulk"),
          lambda t: {"op": "set", "user_ids": ["alice"], "total_budget": "3", "duration": "daily"}, 302),
    Route("bulk reset", "post", Action.CHANGE, _u("budget_bulk"), lambda t: {"op": "reset", "user_ids": ["alice"]},
          302),
    Route("import page", "get", Action.CHANGE, _u("budget_import")),
    Route("import confirm", "post", Action.CHANGE, _u("budget_import"),
          lambda t: {"text": "alice,3,weekly\n", "confirm": "yes"}, 302),
    Route("key create", "post", Action.CHANGE, _u("key_create"), lambda t: {"name": "ci"}, 201),
    Route("key revoke", "post", Action.CHANGE, _u("key_revoke", KEY), ok=302),
    Route("project settings", "post", Action.CHANGE, _u("project_settings_save"),
          lambda t: {"max_budget": "99", "timezone": "Europe/Berlin"}, 302),
    Route("alert settings", "post", Action.CHANGE, _u("alert_settings_save"),
          lambda t: {"alert_thresholds": "50, 90"}, 302),
    Route("fallback settings", "post", Action.CHANGE, _u("fallbacks_save"),
          lambda t: {"fallbacks": "gpt-4o → gpt-4o-mini"}, 302),
    Route("member invite", "post", Action.MANAGE_MEMBERS, _u("member_invite"),
          lambda t: {"invitee": "nonmember@example.com", "role": "viewer"}, 201),
    Route("invitation revoke", "post", Action.MANAGE_MEMBERS, _u("invitation_revoke", INVITATION), ok=302),
    Route("member role", "post", Action.MANAGE_MEMBERS, _u("member_role", EXTRA), lambda t: {"role": "manager"}, 302),
    Route("member remove", "post", Action.MANAGE_MEMBERS, _u("member_remove", EXTRA), ok=302),
    Route("delete page", "get", Action.DELETE, _u("project_delete")),
    Route("project delete", "post", Action.DELETE, _u("project_delete"),
          lambda t: {"confirm": t.project.name}, 302),
]


def allowed(role: str, action: str) -> bool:
    if role == "staff":
        return True
    return role in Role.values and action in {
        "owner": set(Action.values), "manager": {Action.VIEW, Action.CHANGE}, "viewer": {Action.VIEW},
    }[role]


def snapshot() -> tuple:
    """Everything a console action could change, in every project."""
    return (
        list(Project.objects.order_by("pk").values_list("pk", "name", "max_budget", "timezone", "alert_thresholds",
                                                           "fallbacks")),
        list(UserBudget.objects.order_by("pk").values_list("pk", "total_budget", "current_spend", "duration")),
        list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(Membership.objects.order_by("pk").values_list("pk", "role")),
        list(Invitation.objects.order_by("pk").values_list("pk", "revoked_at", "accepted_at")),
        AuditLog.objects.count(), CostEvent.objects.count(), User.objects.count(),
    )


def client_as(team: Team, role: str) -> Client:
    client = Client()
    if role != "anonymous":
        person = team.people.get(role) or User.objects.get(username=role)
        client.force_login(person)
    return client


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("which", ["own project", "other project"])
def test_every_console_url_answers_each_role_as_its_rights_say(teams, route, role, which):
    mine, theirs = teams
    team = mine if which == "own project" else theirs
    client = client_as(mine, role)
    member = role in Role.values and which == "own project"
    before = snapshot()

    response = getattr(client, route.method)(route.url(team), route.data(team))

    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    elif role != "staff" and not member:
        assert response.status_code == 404
    elif not allowed(role, route.action):
        assert response.status_code == 403
    else:
        assert response.status_code == route.ok, response.content.decode()[:500]
        if route.method == "post":
            assert snapshot() != before, "an allowed action should have changed something"
        return
    assert snapshot() == before, "a refused request wrote something"


@pytest.mark.parametrize("role", ["owner", "manager", "viewer"])
def test_pages_show_only_the_buttons_the_role_can_use(teams, role):
    mine, _ = teams
    client = client_as(mine, role)
    pk = mine.project.pk

    users = client.get(reverse("user_list", args=[pk])).content.decode()
    user = client.get(reverse("user_detail", args=[pk, "alice"])).content.decode()
    keys = client.get(reverse("key_list", args=[pk])).content.decode()
    settings_page = client.get(reverse("project_settings", args=[pk])).content.decode()
    members = client.get(reverse("member_list", args=[pk])).content.decode()
    limits = client.get(reverse("limit_list", args=[pk])).content.decode()
    teams = client.get(reverse("team_list", args=[pk])).content.decode()
    team = client.get(reverse("team_detail", args=[pk, "research"])).content.decode()

    can_change, can_manage = role in ("owner", "manager"), role == "owner"
    assert ("create-budget-form" in users) is can_change
    assert ("reset-form" in user and "edit-budget-form" in user) is can_change
    assert ("create-key-form" in keys and "Revoke</button>" in keys) is can_change
    assert ("Save project settings" in settings_page) is can_change
    assert ("delete-project" in settings_page) is can_manage
    assert ("invite-form" in members and "remove-form" in members and "revoke-invitation-form" in members) is can_manage
    assert "Export CSV" in users
    assert all(form in limits for form in ("create-limit-form", "limit-edit-form", "limit-delete-form")) is can_change
    assert f'data-limit-id="{mine.limit.pk}"' in limits
    assert ("create-team-form" in teams) is can_change and "research" in teams
    assert ("edit-team-form" in team and "delete-team-form" in team) is can_change and "alice" in team


def test_only_staff_or_people_with_add_project_create_projects(teams):
    mine, _ = teams
    url = reverse("project_new")
    data = {"name": "fresh-project", "max_budget": "100", "duration": "monthly", "timezone": "Europe/Paris"}

    for role in ("owner", "manager", "viewer", "nonmember"):
        response = client_as(mine, role).post(url, data)
        assert response.status_code == 403
        assert client_as(mine, role).get(url).status_code == 403
    assert not Project.objects.filter(name="fresh-project").exists()
    assert client_as(mine, "anonymous").get(url).status_code == 302

    staff = client_as(mine, "staff")
    assert staff.get(url).status_code == 200
    assert staff.post(url, data).status_code == 302
    assert Project.objects.filter(name="fresh-project").exists()


def test_a_refused_action_says_why(teams):
    mine, _ = teams

    response = client_as(mine, "viewer").get(reverse("budget_import", args=[mine.project.pk]))

    assert response.status_code == 403
    assert "your role in this project (viewer) may not change budgets" in response.content.decode().lower()
