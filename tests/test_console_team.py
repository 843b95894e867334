"""Projects and members from the console: create, rename, delete; change a role, remove (invitations elsewhere)."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils.timezone import now

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, CostEvent, Membership, Project, Role
from budgets.services.projects import PURGE_GRACE_SECONDS

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def owner(db):
    return User.objects.create_user("olivia", email="olivia@example.com", password="pw-olivia-123")


@pytest.fixture
def team(owner):
    project = services.project_create(name="acme", timezone="UTC", actor="test", owner=owner)
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), actor="test")
    for _ in range(3):
        services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o-mini", 1000, 100), source="api")
    return project


@pytest.fixture
def client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- projects -------------------------------------------------------------------------------------


def test_a_person_with_add_project_creates_a_project_and_becomes_its_owner(db):
    from django.contrib.auth.models import Permission

    creator = User.objects.create_user("cara")
    creator.user_permissions.add(Permission.objects.get(codename="add_project"))

    response = login(creator).post(reverse("project_new"), {
        "name": "research", "max_budget": "250", "duration": "weekly", "timezone": "Asia/Tokyo"})

    project = Project.objects.get(name="research")
    assert response.status_code == 302 and response["Location"] == project.get_absolute_url()
    assert (project.max_budget, project.duration, project.timezone) == (Decimal(250), "weekly", "Asia/Tokyo")
    assert Membership.objects.get(project=project).user == creator
    assert Membership.objects.get(project=project).role == Role.OWNER
    actions = list(AuditLog.objects.filter(project=project).values_list("action", "actor").order_by("id"))
    assert actions == [("project_create", "user:cara"), ("member_add", "user:cara")]


def test_a_bad_new_project_is_refused_and_writes_nothing(db):
    staff = User.objects.create_user("sam", is_staff=True)
    services.project_create(name="taken")

    response = login(staff).post(reverse("project_new"), {"name": "taken", "timezone": "UTC", "duration": "none"})

    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert Project.objects.count() == 1


def test_renaming_and_changing_the_cap_period_from_settings(client, team):
    response = client.post(reverse("project_settings_save", args=[team.pk]),
                           {"name": "acme-2", "duration": "monthly", "max_budget": "40", "timezone": "UTC"})

    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.name, team.duration, team.max_budget) == ("acme-2", "monthly", Decimal(40))
    assert team.next_reset_at is not None
    audit = AuditLog.objects.filter(project=team, action="project_update").latest("id")
    assert (audit.before["name"], audit.after["name"], audit.actor) == ("acme", "acme-2", "user:olivia")


def test_the_delete_page_says_how_many_ledger_events_go(client, team):
    response = client.get(reverse("project_delete", args=[team.pk]))

    assert response.status_code == 200
    assert "3 ledger events" in response.content.decode()


def test_deleting_needs_the_typed_name_and_writes_nothing_otherwise(client, team):
    response = client.post(reverse("project_delete", args=[team.pk]), {"confirm": "ACME"})

    assert response.status_code == 400
    assert Project.objects.filter(pk=team.pk).exists()
    assert CostEvent.objects.filter(project=team).count() == 3


def test_deleting_a_project_takes_its_ledger_and_logs_the_deletion(client, team, caplog):
    pk = team.pk
    with caplog.at_level(logging.WARNING, logger="budgets.projects"):
        response = client.post(reverse("project_delete", args=[pk]), {"confirm": "acme"})

    assert response.status_code == 302 and response["Location"] == reverse("project_list")
    assert client.get(reverse("project_overview", args=[pk])).status_code == 404  # gone from the console at once
    assert not CostEvent.objects.filter(project_id=pk).exists()
    assert not AuditLog.objects.filter(project_id=pk).exists()
    # The row itself waits until no web process can still hold one of its (revoked) keys.
    services.projects_purge(at=now() + timedelta(seconds=PURGE_GRACE_SECONDS + 60))
    assert not Project.objects.filter(pk=pk).exists()
    record = next(r for r in caplog.records if r.name == "budgets.projects")
    assert record.audit["name"] == "acme" and record.audit["ledger_events"] == 3
    assert record.audit["actor"] == "user:olivia"


# --- members --------------------------------------------------------------------------------------


# Adding people is by invitation only: tests/test_invitations.py.


def test_changing_a_role_is_audited_before_and_after(client, team):
    vera = User.objects.create_user("vera")
    membership = services.member_add(project=team, user=vera, role="viewer", actor="test")

    response = client.post(reverse("member_role", args=[team.pk, membership.pk]), {"role": "manager"})

    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.MANAGER
    audit = AuditLog.objects.get(project=team, action="member_role")
    assert (audit.before["role"], audit.after["role"], audit.actor) == ("viewer", "manager", "user:olivia")


def test_the_last_owner_can_be_neither_demoted_nor_removed(client, team, owner):
    membership = Membership.objects.get(project=team, user=owner)
    before = AuditLog.objects.count()

    demoted = client.post(reverse("member_role", args=[team.pk, membership.pk]), {"role": "viewer"})
    removed = client.post(reverse("member_remove", args=[team.pk, membership.pk]))

    for response in (demoted, removed):
        assert response.status_code == 400
        assert "at least one owner" in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == Role.OWNER
    assert AuditLog.objects.count() == before


def test_an_owner_can_step_down_once_there_is_another_owner(client, team, owner):
    other = User.objects.create_user("otto")
    services.member_add(project=team, user=other, role="owner", actor="test")
    mine = Membership.objects.get(project=team, user=owner)

    response = client.post(reverse("member_remove", args=[team.pk, mine.pk]))

    assert response.status_code == 302 and response["Location"] == reverse("project_list")
    assert not Membership.objects.filter(pk=mine.pk).exists()
    audit = AuditLog.objects.get(project=team, action="member_remove")
    assert (audit.before["user"], audit.before["role"]) == ("olivia", "owner")


def test_a_membership_of_another_project_is_404(client, team):
    other = services.project_create(name="other")
    stranger = services.member_add(project=other, user=User.objects.create_user("x"), role="owner", actor="t")

    response = client.post(reverse("member_remove", args=[team.pk, stranger.pk]))

    assert response.status_code == 404
    assert Membership.objects.filter(pk=stranger.pk).exists()
