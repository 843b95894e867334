"""Security headers: a strict Content-Security-Policy on every page, and no-store on every console page.

The route list is the one `tests/test_console_roles.py` walks, so a new console page is covered
here as soon as it is added there. The browser side (nothing blocked, charts drawn) is
`tests/test_browser.py::test_every_page_runs_under_the_content_security_policy`.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.test_console_roles import ROUTES, client_as, teams  # noqa: F401  (teams is a fixture)

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.strip() for part in policy.split(";") if part.strip()}


def assert_strict_policy(response) -> None:
    policy = directives(response)
    assert policy["script-src"] == "script-src 'self'"  # no inline script, no eval, no other host
    assert policy["default-src"] == "default-src 'self'"
    assert policy["object-src"] == "object-src 'none'"
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert policy["form-action"] == "form-action 'self'"
    assert policy["base-uri"] == "base-uri 'self'"


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_every_console_page_sends_the_policy_and_no_store(teams, route):  # noqa: F811
    mine, _ = teams
    client = client_as(mine, "owner")

    response = getattr(client, route.method)(route.url(mine), route.data(mine))

    assert response.status_code == route.ok
    assert_strict_policy(response)
    cache_control = [part.strip() for part in response["Cache-Control"].split(",")]
    assert "no-store" in cache_control
    assert "private" in cache_control


def test_the_project_list_and_the_new_project_page_are_not_stored_either(teams):  # noqa: F811
    mine, _ = teams
    client = client_as(mine, "staff")

    for url in (reverse("project_list"), reverse("project_new")):
        response = client.get(url)
        assert response.status_code == 200
        assert_strict_policy(response)
        assert "no-store" in response["Cache-Control"]


def test_pages_for_a_visitor_who_is_not_logged_in_carry_the_policy(db):
    client = Client()

    login = client.get(reverse("login"))
    redirect = client.get(reverse("project_list"))
    docs = client.get("/api/v1/docs")

    assert login.status_code == 200 and redirect.status_code == 302 and docs.status_code == 200
    for response in (login, redirect, docs):
        assert_strict_policy(response)


def test_the_admin_runs_under_the_same_policy(teams):  # noqa: F811
    mine, _ = teams

    response = client_as(mine, "staff").get(reverse("admin:index"))

    assert response.status_code == 200
    assert_strict_policy(response)
    assert "no-store" in response["Cache-Control"]
