"""Single sign-on in a real browser, against a real OpenID Connect provider process.

The provider is tests/oidc_provider.py (Authlib's OpenID Connect server classes in a Flask app),
started on a free port of 127.0.0.1 for this module; the console runs on the live test server with
the OIDC_* settings pointing at it. Chromium clicks "Log in with Acme SSO", types a login name at the
provider, and comes back through allauth's callback. Skipped without Chromium unless
BROWSER_TESTS=required.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from allauth.socialaccount.models import SocialAccount
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.urls import reverse

from budgets import services
from budgets.models import AuditLog, Membership, Project
from budgetsite.settings import parse_role_map, sso_providers
from tests.test_browser import PASSWORD, Session, browser  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.django_db(transaction=True, serialized_rollback=True)]

User = get_user_model()
ROOT = Path(django_settings.BASE_DIR)
CLIENT_ID = "budget-console"
CLIENT_SECRET = "test-client-secret-0123456789"
PEOPLE = {
    "alice": {"email": "alice@acme.example", "email_verified": True, "name": "Alice Admin",
              "preferred_username": "alice", "groups": ["budget-admins", "staff"]},
    "bob": {"email": "bob@acme.example", "email_verified": True, "name": "Bob Analyst",
            "preferred_username": "bob", "groups": ["analysts"]},
    "founder": {"email": "Founder@acme.example", "email_verified": True, "name": "The Founder",
                "preferred_username": "f.ounder", "groups": []},
    "mallory": {"email": "mallory@elsewhere.example", "email_verified": True, "name": "Mallory",
                "preferred_username": "mallory", "groups": ["budget-admins"]},
}


@pytest.fixture(scope="module")
def provider(live_server) -> Iterator[str]:
    """The provider process, registered with the live server's callback; yields its issuer URL."""
    callback = live_server.url + "/accounts/oidc/sso/login/callback/"
    config = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": callback, "people": PEOPLE}
    process = subprocess.Popen([sys.executable, "-m", "tests.oidc_provider", json.dumps(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "ready <port>" once it listens (or "" if it died)
        assert line.startswith("ready "), f"the provider did not start: {line!r}"
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def sso(settings, provider) -> str:
    """The console configured as OIDC_* would configure it, pointing at the provider (its people as in PEOPLE)."""
    for login, claims in PEOPLE.items():
        requests.put(f"{provider}/test/people/{login}", json=claims, timeout=5).raise_for_status()
    settings.SSO_ENABLED = True
    settings.OIDC_ISSUER = provider
    settings.OIDC_CLIENT_ID = CLIENT_ID
    settings.OIDC_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_ALLOWED_DOMAINS = ["acme.example"]
    settings.OIDC_PROVIDER_NAME = "Acme SSO"
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.OIDC_ROLE_MAP = parse_role_map("budget-admins=acme:owner, analysts=acme:viewer")
    settings.SOCIALACCOUNT_PROVIDERS = sso_providers(issuer=provider, client_id=CLIENT_ID, secret=CLIENT_SECRET,
                                                     name="Acme SSO")
    return provider


@pytest.fixture
def acme_project(db) -> Project:
    owner = User.objects.create_user("founder", email="founder@acme.example", password=PASSWORD)
    return services.project_create(name="acme", actor="test", owner=owner)


@pytest.fixture
def tab(browser, live_server, sso) -> Iterator[Session]:  # noqa: F811 (the imported fixture)
    session = Session(browser, live_server.url)
    yield session
    session.close()
    elsewhere = [url for url in session.foreign_requests() if not url.startswith(sso + "/")]
    assert elsewhere == [], "the browser fetched something from neither the console nor the provider"
    assert session.errors == [], f"JavaScript errors or CSP reports: {session.errors}"


def sso_login(tab: Session, login: str) -> None:
    """Click the login page's single sign-on button and sign in at the provider as `login`."""
    tab.open(reverse("login"))
    tab.page.click("#sso-login button[type=submit]")
    tab.page.wait_for_selector("#login")  # the provider's page
    assert tab.page.url.startswith(tab.base_url) is False
    tab.page.fill("#login", login)
    tab.page.click("#sign-in")
    tab.page.wait_for_load_state("load")


def test_the_first_login_creates_the_account_and_the_group_gives_the_project_role(tab, acme_project):
    sso_login(tab, "bob")

    tab.page.wait_for_url(tab.base_url + reverse("project_list"))
    tab.screenshot("sso-first-login")
    bob = User.objects.get(email="bob@acme.example")
    assert bob.get_username() == "bob"
    assert bob.has_usable_password() is False
    assert tab.page.locator("nav").inner_text().count("bob") == 1
    assert tab.page.locator("#projects-table tbody tr").count() == 1  # acme, through the analysts group
    membership = Membership.objects.get(project=acme_project, user=bob)
    assert membership.role == "viewer"
    audit = AuditLog.objects.get(project=acme_project, action="member_add", actor="sso:bob")
    assert audit.after["role"] == "viewer" and audit.after["groups"] == ["analysts"]

    tab.open(reverse("member_list", args=[acme_project.pk]))
    assert tab.page.locator("#your-role").inner_text().lower() == "viewer"
    assert tab.csp_violations() == []


def test_the_next_login_follows_the_groups_the_provider_now_gives(tab, sso, acme_project):
    sso_login(tab, "alice")
    tab.page.wait_for_url(tab.base_url + reverse("project_list"))
    alice = User.objects.get(email="alice@acme.example")
    assert Membership.objects.get(project=acme_project, user=alice).role == "owner"

    def log_in_again_with_groups(groups: list[str]) -> None:
        answer = requests.put(f"{sso}/test/people/alice", json={**PEOPLE["alice"], "groups": groups}, timeout=5)
        assert answer.status_code == 200
        tab.page.click("nav form button[type=submit]")  # log out
        tab.page.wait_for_url(tab.base_url + reverse("login"))
        sso_login(tab, "alice")
        tab.page.wait_for_url(tab.base_url + reverse("project_list"))

    log_in_again_with_groups(["analysts"])
    assert Membership.objects.get(project=acme_project, user=alice).role == "viewer"
    demoted = AuditLog.objects.get(project=acme_project, action="member_role", actor="sso:alice")
    assert (demoted.before["role"], demoted.after["role"]) == ("owner", "viewer")

    log_in_again_with_groups(["staff"])  # in no mapped group: no longer a member of acme
    assert not Membership.objects.filter(project=acme_project, user=alice).exists()
    assert AuditLog.objects.filter(project=acme_project, action="member_remove", actor="sso:alice").count() == 1
    assert tab.page.locator("#projects-table tbody tr").count() == 0
    assert User.objects.filter(email="alice@acme.example").count() == 1  # the same account every time


def test_an_existing_account_with_the_verified_address_is_the_same_person(tab, acme_project):
    accounts = User.objects.count()

    sso_login(tab, "founder")

    tab.page.wait_for_url(tab.base_url + reverse("project_list"))
    assert User.objects.count() == accounts
    founder = User.objects.get(username="founder")
    assert SocialAccount.objects.get(user=founder).uid == "founder"
    assert "founder" in tab.page.locator("nav").inner_text()
    # In no mapped group, but the project's last owner: the project keeps its owner.
    assert Membership.objects.get(project=acme_project, user=founder).role == "owner"
    assert tab.page.locator("#projects-table tbody tr").count() == 1


def test_an_address_outside_the_allowed_domains_is_refused_and_no_account_is_made(tab, acme_project):
    accounts = User.objects.count()

    sso_login(tab, "mallory")

    assert tab.page.locator("h1").inner_text() == "Login refused"
    assert "mallory@elsewhere.example is not allowed to log in here" in tab.page.locator("#sso-refused").inner_text()
    tab.screenshot("sso-refused")
    assert User.objects.count() == accounts
    assert not User.objects.filter(email="mallory@elsewhere.example").exists()
    assert not Membership.objects.filter(project=acme_project).exclude(user__username="founder").exists()
    tab.open(reverse("project_list"))  # not logged in: back to the login page
    assert urlsplit(tab.page.url).path == reverse("login")


def test_password_login_switched_off_hides_the_form_and_refuses_a_post(tab, settings, acme_project):
    settings.PASSWORD_LOGIN = False

    tab.open(reverse("login"))
    tab.screenshot("sso-only-login")
    assert tab.page.locator("#sso-login").count() == 1
    assert tab.page.locator("#password-login").count() == 0
    assert tab.page.locator("#id_password").count() == 0
    token = tab.page.locator("#sso-login input[name=csrfmiddlewaretoken]").get_attribute("value")
    answer = tab.page.request.post(tab.base_url + reverse("login"), form={
        "csrfmiddlewaretoken": token, "username": "founder", "password": PASSWORD})

    assert answer.status == 403
    assert "Password login is switched off here" in answer.text()
    tab.open(reverse("project_list"))
    assert urlsplit(tab.page.url).path == reverse("login")  # still not logged in

    sso_login(tab, "bob")  # single sign-on still works
    tab.page.wait_for_url(tab.base_url + reverse("project_list"))
    assert Membership.objects.get(project=acme_project, user__email="bob@acme.example").role == "viewer"


def test_the_login_page_without_single_sign_on_is_the_password_form_alone(browser, live_server):  # noqa: F811
    session = Session(browser, live_server.url)
    try:
        session.open(reverse("login"))
        assert session.page.locator("#sso-login").count() == 0
        assert session.page.locator("#password-login #id_password").count() == 1
    finally:
        session.close()
