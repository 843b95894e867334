"""API keys: Bearer authentication, one project per key, revocation; the public endpoints."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import OperationalError

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import ApiKey, UserBudget
from tests.api_helpers import ApiClient, assert_error, body_of, db_state, new_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def other(db):
    return services.project_create(name="other")


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer bm_unknown", "Bearer not-even-a-key",
    "Token bm_x", "Bearer " + "x" * 5000,
])
def test_a_missing_or_bad_key_is_401_with_the_json_error_shape(project, make_budget, header):
    make_budget("alice")
    headers = {} if header is None else {"Authorization": header}

    response = ApiClient(None).get("/api/v1/users/alice", headers=headers)

    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_key_opens_its_own_projects_users(api, make_budget):
    make_budget("alice", "7")

    response = api.get("/api/v1/users/alice")

    assert response.status_code == 200
    assert body_of(response)["total_budget"] == 7


def test_a_revoked_key_is_401_and_changes_nothing(project, make_budget):
    make_budget("alice")
    raw = new_key(project)
    key = ApiKey.objects.get(project=project)
    services.api_key_revoke(key=key, actor="test")
    before = db_state()

    response = ApiClient(raw).post("/api/v1/users/alice/costs", {"model": "x", "cost": 1})

    assert_error(response, 401, "unauthorized")
    assert db_state() == before


def test_another_projects_key_never_sees_or_touches_this_projects_users(project, other, make_budget):
    make_budget("alice", "10")
    theirs = ApiClient(new_key(other))
    before = db_state()

    for response in (
        theirs.get("/api/v1/users/alice"),
        theirs.put("/api/v1/users/alice/budget", {"total_budget": "oops"}),
        theirs.post("/api/v1/users/alice/costs", {"model": "x", "cost": 1}),
        theirs.post("/api/v1/users/alice/reset"),
        theirs.post("/api/v1/users/alice/check", {"estimated_cost": 1}),
        theirs.post("/api/v1/users/alice/projected-cost", {"model": "gpt-4o", "messages": []}),
        theirs.get("/api/v1/users/alice/costs"),
        theirs.delete("/api/v1/users/alice"),
    ):
        assert response.status_code in (400, 404), response.content
        assert b"alice" not in response.content or response.status_code == 404
    assert db_state() == before
    assert body_of(theirs.get("/api/v1/users")) == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_the_same_user_id_in_two_projects_is_two_users(project, other, make_budget):
    make_budget("alice", "10")
    make_budget("alice", "3", in_project=other)
    ours, theirs = ApiClient(new_key(project)), ApiClient(new_key(other))

    theirs.post("/api/v1/users/alice/costs", {"model": "x", "cost": 1})

    assert body_of(ours.get("/api/v1/users/alice"))["current_cost"] == 0
    assert body_of(theirs.get("/api/v1/users/alice"))["current_cost"] == 1
    assert UserBudget.objects.get(project=project).current_spend == 0
    assert UserBudget.objects.get(project=other).current_spend == Decimal(1)


def test_another_projects_ledger_and_alerts_are_not_listed(project, other, make_budget):
    make_budget("alice", in_project=other)
    services.cost_record(project=other, user_id="alice", usage=Usage("x", 0, 0), cost=1, source="api")
    ours = ApiClient(new_key(project))

    assert body_of(ours.get("/api/v1/costs")) == {"items": [], "next_cursor": None}
    assert body_of(ours.get("/api/v1/costs?user=alice"))["items"] == []
    assert_error(ours.get("/api/v1/users/alice/costs"), 404, "not_found")
    assert body_of(ours.get("/api/v1/alerts"))["total"] == 0


def test_using_a_key_stamps_when_it_was_last_used(api, project):
    assert ApiKey.objects.get().last_used_at is None

    api.get("/api/v1/users")

    assert ApiKey.objects.get().last_used_at is not None


def test_the_openapi_schema_and_docs_need_no_key_and_use_no_cdn(client):
    schema = client.get("/api/v1/openapi.json")
    assert schema.status_code == 200
    paths = body_of(schema)["paths"]
    assert "/api/v1/users/{user}/costs" in paths and "/api/v1/cost-quote" in paths
    assert body_of(schema)["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"

    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html
    assert "/static/ninja/swagger-ui-bundle.js" in html

    # Served by this site from ninja's own files (the "ninja" app), not from a CDN.
    asset = client.get("/static/ninja/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert b"SwaggerUIBundle" in b"".join(asset.streaming_content)
    assert_error(client.get("/api/v1/docs/assets/settings.py"), 404, "not_found")


def test_healthz_answers_ok_without_a_key(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert body_of(response) == {"status": "ok"}


def test_healthz_answers_503_when_the_database_does_not(client, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("budgets.api.health.connection.cursor", broken)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert body_of(response)["status"] == "error"
