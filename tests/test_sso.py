"""Single sign-on without a browser: the OIDC_* settings, who is let in, roles from groups, the password switch.

The whole flow through Chromium and a real provider process is tests/test_browser_sso.py.
"""

from __future__ import annotations

import pytest
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.models import SocialAccount, SocialLogin
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory
from django.urls import reverse

from budgets import services
from budgets.models import AuditLog, Membership, Project
from budgets.services.members import member_roles_sync
from budgets.views.sso import SsoAdapter, roles_from_groups
from budgetsite.settings import parse_domains, parse_issuer, parse_role_map, sso_providers
from tests.test_settings import manage

User = get_user_model()
PASSWORD = "pw-sso-123456"
ISSUER = "https://login.acme.example/realms/acme"


@pytest.fixture
def sso(settings) -> None:
    settings.SSO_ENABLED = True
    settings.OIDC_ISSUER = ISSUER
    settings.OIDC_CLIENT_ID = "console"
    settings.OIDC_CLIENT_SECRET = "secret"
    settings.OIDC_ALLOWED_DOMAINS = ["acme.example"]
    settings.OIDC_PROVIDER_NAME = "Acme SSO"
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.OIDC_ROLE_MAP = parse_role_map("admins=acme:owner,analysts=acme:viewer,analysts=beta:manager")
    settings.SOCIALACCOUNT_PROVIDERS = sso_providers(issuer=ISSUER, client_id="console", secret="secret",
                                                     name="Acme SSO")


# --- the settings ----------------------------------------------------------------------------------


def test_the_role_map_reads_group_equals_project_colon_role():
    assert parse_role_map(" budget-admins=acme:owner, analysts = acme:viewer ,ops=team:prod:manager,") == [
        ("budget-admins", "acme", "owner"), ("analysts", "acme", "viewer"), ("ops", "team:prod", "manager")]
    assert parse_role_map("") == []


@pytest.mark.parametrize("raw", ["admins=acme", "admins:acme:owner", "=acme:owner", "admins=:owner",
                                 "admins=acme:admin", "admins=acme:Owner"])
def test_a_role_map_entry_that_does_not_read_group_project_role_is_a_configuration_error(raw):
    with pytest.raises(ImproperlyConfigured, match="must read group=project:role"):
        parse_role_map(raw)


def test_the_issuer_must_be_a_url_and_https_in_production_except_on_this_machine():
    assert parse_issuer("https://accounts.google.com/", production=True) == "https://accounts.google.com"
    assert parse_issuer("http://127.0.0.1:8080", production=True) == "http://127.0.0.1:8080"
    assert parse_issuer("http://keycloak:8080/realms/acme", production=False) == "http://keycloak:8080/realms/acme"
    with pytest.raises(ImproperlyConfigured, match="https in production"):
        parse_issuer("http://keycloak:8080/realms/acme", production=True)
    with pytest.raises(ImproperlyConfigured, match="issuer URL"):
        parse_issuer("accounts.google.com", production=False)


def test_allowed_domains_are_required_and_must_be_domains():
    assert parse_domains(["Acme.com", "@acme.co.uk"]) == ["acme.com", "acme.co.uk"]
    assert parse_domains(["*"]) == ["*"]
    with pytest.raises(ImproperlyConfigured, match="OIDC_ALLOWED_DOMAINS is required"):
        parse_domains([])
    with pytest.raises(ImproperlyConfigured, match="not an email domain"):
        parse_domains(["acme"])


@pytest.mark.slow
@pytest.mark.parametrize(("env", "message"), [
    ({"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s"}, "OIDC_ALLOWED_DOMAINS is required"),
    ({"OIDC_ISSUER": ISSUER, "OIDC_ALLOWED_DOMAINS": "acme.com"}, "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET required"),
    ({"OIDC_CLIENT_ID": "c"}, "set without OIDC_ISSUER"),
    ({"PASSWORD_LOGIN": "false"}, "PASSWORD_LOGIN=false needs single sign-on"),
    ({"PASSWORD_LOGIN": "nope"}, "PASSWORD_LOGIN must be a boolean"),
    ({"OIDC_ISSUER": ISSUER, "OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s", "OIDC_ALLOWED_DOMAINS": "acme.com",
      "OIDC_ROLE_MAP": "admins=acme"}, "OIDC_ROLE_MAP entry 'admins=acme' must read group=project:role"),
])
def test_a_bad_single_sign_on_setting_stops_the_start(tmp_path, env, message):
    result = manage("check", env=env, tmp_path=tmp_path)

    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_a_complete_single_sign_on_configuration_starts(tmp_path):
    env = {"OIDC_ISSUER": ISSUER + "/", "OIDC_CLIENT_ID": "console", "OIDC_CLIENT_SECRET": "s3",
           "OIDC_ALLOWED_DOMAINS": "acme.example", "OIDC_ROLE_MAP": "admins=acme:owner", "PASSWORD_LOGIN": "false"}
    show = ("from django.conf import settings as s; app = s.SOCIALACCOUNT_PROVIDERS['openid_connect']['APPS'][0];"
            " print(app['settings']['server_url'], app['client_id'], s.PASSWORD_LOGIN, s.OIDC_ROLE_MAP)")

    result = manage("shell", "-c", show, env=env, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{ISSUER} console False [('admins', 'acme', 'owner')]"


# --- who may log in ----------------------------------------------------------------------------------


def social_login(claims: dict, user=None) -> SocialLogin:
    account = SocialAccount(provider="sso", uid=claims.get("sub", "x"), extra_data={"userinfo": claims})
    return SocialLogin(user=user or User(), account=account)


def refusal(claims: dict, user=None) -> str:
    with pytest.raises(ImmediateHttpResponse) as refused:
        callback = RequestFactory().get("/accounts/oidc/sso/login/callback/")
        SsoAdapter().pre_social_login(callback, social_login(claims, user))
    assert refused.value.response.status_code == 403
    return refused.value.response.content.decode()


@pytest.mark.django_db
def test_an_address_of_an_allowed_domain_passes(sso):
    SsoAdapter().pre_social_login(RequestFactory().get("/"), social_login({"email": "ann@ACME.example"}))


@pytest.mark.django_db
def test_logins_outside_the_rules_are_refused_with_the_reason(sso):
    assert "ann@other.example is not allowed to log in here" in refusal({"email": "ann@other.example"})
    assert "did not give an email address" in refusal({"sub": "ann"})
    assert "is not verified" in refusal({"email": "ann@acme.example", "email_verified": False})
    User.objects.create_user("ann", email="ann@acme.example", password=PASSWORD)
    assert "ask an administrator to link it" in refusal({"email": "ann@acme.example"})
    inactive = User.objects.create_user("old", email="old@acme.example", is_active=False)
    assert "is deactivated" in refusal({"email": "old@acme.example"}, user=inactive)


@pytest.mark.django_db
def test_a_star_lets_any_domain_in(sso, settings):
    settings.OIDC_ALLOWED_DOMAINS = ["*"]
    SsoAdapter().pre_social_login(RequestFactory().get("/"), social_login({"email": "ann@anywhere.example"}))


# --- roles from groups ------------------------------------------------------------------------------


def test_groups_give_the_highest_role_the_map_names_per_project(sso):
    assert roles_from_groups(["analysts"]) == {"acme": "viewer", "beta": "manager"}
    assert roles_from_groups(["analysts", "admins", "other"]) == {"acme": "owner", "beta": "manager"}
    assert roles_from_groups(["other"]) == {}


@pytest.fixture
def people(db) -> dict[str, object]:
    return {name: User.objects.create_user(name, email=f"{name}@acme.example", password=PASSWORD)
            for name in ("founder", "ann")}


@pytest.fixture
def acme(people) -> Project:
    return services.project_create(name="acme", actor="test", owner=people["founder"])


@pytest.mark.postgres
def test_syncing_adds_changes_and_removes_memberships_with_an_audit_row_each(people, acme):
    ann = people["ann"]
    note = {"via": "sso", "groups": ["admins"]}

    changes, problems = member_roles_sync(user=ann, roles={"acme": "owner"}, managed={"acme"}, actor="sso:ann",
                                          note=note)
    assert problems == [] and [(c.before, c.after) for c in changes] == [(None, "owner")]
    assert Membership.objects.get(project=acme, user=ann).role == "owner"

    member_roles_sync(user=ann, roles={"acme": "viewer"}, managed={"acme"}, actor="sso:ann", note=note)
    assert Membership.objects.get(project=acme, user=ann).role == "viewer"

    unchanged, _ = member_roles_sync(user=ann, roles={"acme": "viewer"}, managed={"acme"}, actor="sso:ann")
    assert unchanged == []

    member_roles_sync(user=ann, roles={}, managed={"acme"}, actor="sso:ann", note=note)
    assert not Membership.objects.filter(project=acme, user=ann).exists()
    rows = list(AuditLog.objects.filter(project=acme, actor="sso:ann").order_by("pk"))
    assert [row.action for row in rows] == ["member_add", "member_role", "member_remove"]
    assert rows[0].after == {"user": "ann", "user_pk": ann.pk, "role": "owner", **note}
    assert (rows[1].before["role"], rows[1].after["role"]) == ("owner", "viewer")
    assert rows[2].before["role"] == "viewer" and rows[2].after == note


@pytest.mark.postgres
def test_syncing_keeps_the_last_owner_and_skips_unknown_projects(people, acme):
    founder = people["founder"]

    changes, problems = member_roles_sync(user=founder, roles={"acme": "viewer"}, managed={"acme", "nowhere"},
                                          actor="sso:founder")

    assert changes == []
    assert problems == ["project 'nowhere' does not exist",
                        "acme: a project keeps at least one owner: make someone else an owner first"]
    assert Membership.objects.get(project=acme, user=founder).role == "owner"
    assert not AuditLog.objects.filter(actor="sso:founder").exists()


@pytest.mark.django_db
def test_projects_the_map_does_not_name_are_left_alone(people, acme):
    ann = people["ann"]
    services.member_add(project=acme, user=ann, role="manager", actor="test")

    changes, _ = member_roles_sync(user=ann, roles={}, managed={"beta"}, actor="sso:ann")

    assert changes == []
    assert Membership.objects.get(project=acme, user=ann).role == "manager"


# --- the login page and the password switch ------------------------------------------------------


@pytest.mark.django_db
def test_without_single_sign_on_the_login_page_is_the_password_form_alone(client):
    page = client.get(reverse("login"))

    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="password-login"' in html and 'id="sso-login"' not in html
    assert "form-action 'self';" in page["Content-Security-Policy"] + ";"
    assert client.get("/accounts/oidc/sso/login/").status_code == 404


@pytest.mark.django_db
def test_with_single_sign_on_the_login_page_offers_both_and_the_policy_allows_the_provider(client, sso):
    page = client.get(reverse("login") + "?next=/projects/1/")

    html = page.content.decode()
    assert 'id="sso-login"' in html and 'action="/accounts/oidc/sso/login/"' in html and "Log in with Acme SSO" in html
    assert 'id="password-login"' in html
    assert "form-action 'self' https://login.acme.example;" in page["Content-Security-Policy"] + ";"


@pytest.mark.django_db
def test_the_single_sign_on_button_redirects_to_the_provider_with_pkce(client, sso, monkeypatch):
    from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter

    discovery = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/protocol/openid-connect/auth",
                 "token_endpoint": ISSUER + "/token", "userinfo_endpoint": ISSUER + "/userinfo",
                 "jwks_uri": ISSUER + "/certs"}
    monkeypatch.setattr(OpenIDConnectOAuth2Adapter, "openid_config", discovery)

    answer = client.post("/accounts/oidc/sso/login/", {"next": "/projects/1/"})

    assert answer.status_code == 302
    location = answer["Location"]
    assert location.startswith(ISSUER + "/protocol/openid-connect/auth?")
    assert "client_id=console" in location and "code_challenge_method=S256" in location
    assert "redirect_uri=http%3A%2F%2Ftestserver%2Faccounts%2Foidc%2Fsso%2Flogin%2Fcallback%2F" in location


@pytest.mark.django_db
def test_password_login_switched_off_refuses_a_post_and_logs_nobody_in(client, sso, settings, people):
    settings.PASSWORD_LOGIN = False

    page = client.get(reverse("login"))
    refused = client.post(reverse("login"), {"username": "ann", "password": PASSWORD})

    assert 'id="password-login"' not in page.content.decode() and 'id="sso-login"' in page.content.decode()
    assert refused.status_code == 403
    assert "Password login is switched off here" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("project_list")).status_code == 302


@pytest.mark.django_db
def test_password_login_switched_off_sends_django_admin_to_single_sign_on(client, sso, settings, people):
    settings.PASSWORD_LOGIN = False
    User.objects.create_superuser("root", "root@acme.example", PASSWORD)

    page = client.get("/admin/login/?next=/admin/budgets/")
    refused = client.post("/admin/login/", {"username": "root", "password": PASSWORD})

    assert page.status_code == 302 and page["Location"] == reverse("login") + "?next=/admin/budgets/"
    assert refused.status_code == 403
    assert "_auth_user_id" not in client.session
    client.force_login(people["ann"])  # logged in through single sign-on, but not staff
    assert client.get("/admin/login/?next=/admin/").status_code == 403
    client.force_login(User.objects.get(username="root"))  # staff, logged in through single sign-on
    back = client.get("/admin/login/?next=/admin/budgets/")
    assert back.status_code == 302 and back["Location"] == "/admin/budgets/"
    assert client.get("/admin/login/?next=https://evil.example/")["Location"] == "/admin/"


@pytest.mark.django_db
def test_password_login_on_keeps_django_admin_login(client):
    User.objects.create_superuser("root", "root@acme.example", PASSWORD)

    assert client.get("/admin/login/").status_code == 200
    answer = client.post("/admin/login/?next=/admin/", {"username": "root", "password": PASSWORD})

    assert answer.status_code == 302 and answer["Location"] == "/admin/"


@pytest.mark.django_db
def test_password_login_still_locks_out_after_repeated_failures_with_single_sign_on_on(sso, people):
    client = Client(REMOTE_ADDR="10.99.1.7")
    for _ in range(4):
        assert client.post(reverse("login"), {"username": "ann", "password": "wrong"}).status_code == 200

    locked = client.post(reverse("login"), {"username": "ann", "password": "wrong"})

    assert locked.status_code == 429
    html = locked.content.decode()
    assert 'id="lockout"' in html and 'id="sso-login"' in html  # single sign-on stays offered


@pytest.mark.django_db
def test_password_login_switched_off_an_invitation_offers_no_password_account(client, sso, settings, people, acme):
    settings.PASSWORD_LOGIN = False
    invitation = services.member_invite(project=acme, invitee="new@acme.example", role="viewer",
                                        invited_by=people["founder"], actor="user:founder")
    link = reverse("invitation_accept", args=[services.invitation_token(invitation)])
    accounts = User.objects.count()

    page = client.get(link)
    refused = client.post(link, {"username": "new", "password1": "pw-new-123456", "password2": "pw-new-123456"})

    assert page.status_code == 200 and 'id="signup-form"' not in page.content.decode()
    assert refused.status_code == 403
    assert "log in with single sign-on to accept" in refused.content.decode()
    assert User.objects.count() == accounts
    assert not Membership.objects.filter(project=acme, user__email="new@acme.example").exists()
