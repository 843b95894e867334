"""Members join by invitation: the form tells nobody who has an account, and nobody joins without accepting."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils.timezone import now

from budgets import services
from budgets.models import AuditLog, Invitation, Membership, Project, Role

pytestmark = pytest.mark.django_db

User = get_user_model()
PASSWORD = "a-long-pw-for-tests-42"


@pytest.fixture
def owner(db):
    return User.objects.create_user("olivia", email="olivia@example.com", password=PASSWORD)


@pytest.fixture
def team(owner) -> Project:
    return services.project_create(name="acme", timezone="UTC", actor="test", owner=owner)


@pytest.fixture
def vera(db):
    return User.objects.create_user("vera", email="Vera@Example.com", password=PASSWORD)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def invite(team, invitee: str, role: str = "viewer", *, as_user=None):
    client = login(as_user or Membership.objects.get(project=team, role=Role.OWNER).user)
    return client.post(reverse("member_invite", args=[team.pk]), {"invitee": invitee, "role": role})


def link_path(response) -> str:
    """The invitation link the page shows (the test settings' locmem mail backend: links are shown)."""
    link = re.search(r'id="invitation-link-value">([^<]+)<', response.content.decode()).group(1)
    return link.split("testserver", 1)[1]


def neutral(response, invitee: str) -> str:
    """The page without what differs by design: the invitee's name, the link, the CSRF tokens."""
    page = response.content.decode().replace(invitee, "INVITEE")
    page = re.sub(r"/invitations/[^/\"<]+/", "/invitations/TOKEN/", page)
    page = re.sub(r"/invitations/\d+/revoke/", "/invitations/N/revoke/", page)
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", page)


# --- inviting reveals nothing and adds nobody -------------------------------------------------------


@pytest.mark.parametrize("existing, missing", [("vera@example.com", "ghost@example.com"), ("vera", "ghost")],
                         ids=["email", "username"])
def test_inviting_answers_the_same_whether_or_not_an_account_exists(team, vera, existing, missing):
    for_existing = invite(team, existing)
    Invitation.objects.all().delete()
    for_missing = invite(team, missing)

    assert for_existing.status_code == for_missing.status_code == 201
    assert f"Invitation sent to {existing} (viewer)" in for_existing.content.decode()
    assert neutral(for_existing, existing) == neutral(for_missing, missing)
    assert Membership.objects.filter(project=team).count() == 1  # the owner only


def test_an_invitation_gives_nothing_until_it_is_accepted_not_even_to_a_superuser(team):
    root = User.objects.create_superuser("root", email="root@example.com", password=PASSWORD)

    response = invite(team, "root", "owner")

    assert response.status_code == 201
    assert not Membership.objects.filter(project=team, user=root).exists()
    invitation = Invitation.objects.get(project=team)
    assert (invitation.invitee, invitation.role, invitation.accepted_at) == ("root", "owner", None)
    audit = AuditLog.objects.get(project=team, action="member_invite")
    assert (audit.actor, audit.after["invitee"], audit.after["role"]) == ("user:olivia", "root", "owner")
    assert mail.outbox[0].to == ["root@example.com"]


def test_the_email_carries_the_link_and_its_expiry(team, vera, settings):
    settings.INVITATION_MAX_AGE_DAYS = 2

    response = invite(team, "Vera@Example.com", "manager")

    invitation = Invitation.objects.get(project=team)
    assert invitation.invitee == "vera@example.com" and invitation.is_email
    assert timedelta(days=2) - (invitation.expires_at - invitation.created_at) == timedelta(0)
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["vera@example.com"]
    assert "http://testserver" + link_path(response) in mail.outbox[0].body
    assert "olivia invites you to join the project acme as manager" in mail.outbox[0].body


def test_an_unknown_username_gets_no_email_and_the_same_answer(team):
    response = invite(team, "nobody")

    assert response.status_code == 201
    assert "Invitation sent to nobody" in response.content.decode()
    assert mail.outbox == []


def test_inviting_a_member_again_is_refused_and_writes_nothing(team, owner):
    before = AuditLog.objects.count()

    response = invite(team, "olivia@example.com")

    assert response.status_code == 400
    assert "already a member" in response.content.decode()
    assert not Invitation.objects.exists() and AuditLog.objects.count() == before


def test_a_new_invitation_to_the_same_person_replaces_the_pending_link(team, vera):
    first = link_path(invite(team, "vera@example.com"))
    invite(team, "vera@example.com", "manager")

    assert "withdrawn" in login(vera).get(first).content.decode()
    assert [i.role for i in Invitation.objects.filter(revoked_at=None)] == ["manager"]


# --- accepting ----------------------------------------------------------------------------------


def test_an_existing_account_logs_in_to_accept_and_the_link_works_after_login(team, vera):
    path = link_path(invite(team, "vera@example.com", "manager"))
    browser = Client()

    page = browser.get(path)
    assert page.status_code == 200
    login_url = f'{reverse("login")}?{urlencode({"next": path})}'
    assert login_url in page.content.decode()
    logged_in = browser.post(reverse("login"), {"username": "vera", "password": PASSWORD, "next": path})
    assert logged_in.status_code == 302 and logged_in["Location"] == path
    assert 'id="accept-form"' in browser.get(path).content.decode()
    assert not Membership.objects.filter(project=team, user=vera).exists()  # opening is not accepting

    accepted = browser.post(path)

    assert accepted.status_code == 302 and accepted["Location"] == reverse("project_overview", args=[team.pk])
    assert Membership.objects.get(project=team, user=vera).role == Role.MANAGER
    invitation = Invitation.objects.get(project=team)
    assert invitation.accepted_by == vera and invitation.accepted_at is not None
    audit = AuditLog.objects.get(project=team, action="member_add", after__user="vera")
    assert audit.actor == "user:vera"
    assert (audit.after["role"], audit.after["invited_by"], audit.after["invitation"]) == (
        "manager", "olivia", invitation.pk)
    again = browser.post(path)
    assert again.status_code == 400 and "already accepted" in again.content.decode()


def test_an_invitation_by_username_is_accepted_by_that_account(team, vera):
    path = link_path(invite(team, "vera"))

    response = login(vera).post(path)

    assert response.status_code == 302
    assert Membership.objects.get(project=team, user=vera).role == Role.VIEWER


def test_another_account_cannot_accept_someone_elses_invitation(team, vera):
    path = link_path(invite(team, "vera@example.com"))
    mallory = User.objects.create_user("mallory", email="mallory@example.com")
    before = AuditLog.objects.count()

    page = login(mallory).get(path)
    response = login(mallory).post(path)

    assert 'id="not-for-you"' in page.content.decode()
    assert response.status_code == 400
    assert "sent to vera@example.com" in response.content.decode()
    assert not Membership.objects.filter(project=team, user=mallory).exists()
    assert Invitation.objects.get(project=team).accepted_at is None
    assert AuditLog.objects.count() == before


def test_a_new_address_creates_an_account_with_a_password_on_acceptance(team):
    path = link_path(invite(team, "newt@example.com", "manager"))
    newcomer = Client()
    assert 'id="signup-form"' in newcomer.get(path).content.decode()

    response = newcomer.post(path, {"username": "newt", "password1": PASSWORD, "password2": PASSWORD})

    assert response.status_code == 302
    newt = User.objects.get(username="newt")
    assert newt.email == "newt@example.com" and newt.check_password(PASSWORD)
    assert Membership.objects.get(project=team, user=newt).role == Role.MANAGER
    assert AuditLog.objects.get(project=team, action="member_add", after__user="newt").actor == "user:newt"
    assert newcomer.get(reverse("project_overview", args=[team.pk])).status_code == 200  # logged in


@pytest.mark.parametrize("data, error", [
    ({"username": "olivia", "password1": PASSWORD, "password2": PASSWORD}, "taken"),
    ({"username": "newt", "password1": PASSWORD, "password2": PASSWORD + "x"}, "differ"),
    ({"username": "newt", "password1": "123", "password2": "123"}, "too short")])
def test_a_bad_signup_creates_no_account_and_no_membership(team, data, error):
    path = link_path(invite(team, "newt@example.com"))
    accounts = User.objects.count()

    response = Client().post(path, data)

    assert response.status_code == 400
    assert error in response.content.decode()
    assert User.objects.count() == accounts
    assert Membership.objects.filter(project=team).count() == 1
    assert Invitation.objects.get(project=team).accepted_at is None


def test_an_address_that_has_an_account_logs_in_instead_of_signing_up(team, vera):
    path = link_path(invite(team, "vera@example.com"))

    response = Client().post(path, {"username": "vera2", "password1": PASSWORD, "password2": PASSWORD})

    assert response.status_code == 400
    assert "log in with it to accept" in response.content.decode()
    assert not User.objects.filter(username="vera2").exists()


def test_an_expired_a_withdrawn_or_a_tampered_link_accepts_nothing(team, vera, owner):
    paths = [link_path(invite(team, f"vera{n}@example.com")) for n in range(2)]
    expired, withdrawn = Invitation.objects.order_by("pk")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=now() - timedelta(seconds=1))
    revoke = login(owner).post(reverse("invitation_revoke", args=[team.pk, withdrawn.pk]))
    assert revoke.status_code == 302
    assert AuditLog.objects.filter(project=team, action="member_invite_revoke").count() == 1
    tampered = paths[0][:-2] + "x/"
    anybody = Client()

    for path, reason in ((paths[0], "expired"), (paths[1], "withdrawn"), (tampered, "not valid")):
        response = anybody.post(path, {"username": "x", "password1": PASSWORD, "password2": PASSWORD})
        assert response.status_code == 400, path
        assert reason in response.content.decode()
    assert not User.objects.filter(username="x").exists()
    assert Membership.objects.filter(project=team).count() == 1


def test_a_link_older_than_the_configured_age_is_expired_by_its_signature(team, vera, settings):
    path = link_path(invite(team, "vera@example.com"))
    Invitation.objects.update(expires_at=now() + timedelta(days=30))  # the row alone would still allow it
    settings.INVITATION_MAX_AGE_DAYS = 0

    response = login(vera).post(path)

    assert response.status_code == 400 and "expired" in response.content.decode()
    assert not Membership.objects.filter(project=team, user=vera).exists()


# --- the members page -----------------------------------------------------------------------------


def test_owners_see_pending_invitations_and_managers_do_not(team, vera):
    invite(team, "pending@example.com")
    manager = User.objects.create_user("max")
    services.member_add(project=team, user=manager, role="manager", actor="test")

    owner_page = invite(team, "other@example.com")  # any owner request renders the page
    manager_page = login(manager).get(reverse("member_list", args=[team.pk])).content.decode()

    assert 'data-invitation="pending@example.com"' in owner_page.content.decode()
    assert "pending@example.com" not in manager_page and 'id="invite-form"' not in manager_page


def test_a_manager_cannot_withdraw_an_invitation(team):
    invite(team, "pending@example.com")
    manager = User.objects.create_user("max")
    services.member_add(project=team, user=manager, role="manager", actor="test")
    invitation = Invitation.objects.get()

    response = login(manager).post(reverse("invitation_revoke", args=[team.pk, invitation.pk]))

    assert response.status_code == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_an_invitation_of_another_project_is_404_to_withdraw(team, owner):
    other = services.project_create(name="other", actor="test", owner=User.objects.create_user("x"))
    services.member_invite(project=other, invitee="z@example.com", role="viewer", invited_by=owner, actor="t")
    theirs = Invitation.objects.get(project=other)

    response = login(owner).post(reverse("invitation_revoke", args=[team.pk, theirs.pk]))

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
