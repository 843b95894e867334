"""Object-level authorization: a project's key never reads or changes another project's objects.

Two projects, A ("acme") and B, each with a key, users (one user id in both), ledger events, an
open reservation and an alert. Every operation of the native API is taken from the OpenAPI
schema (a new endpoint is covered, or fails here until it is given a body), and called with
A's key on B's user ids and reservation ids: the answer is a 404 or A's own view, it never
carries B's data, and nothing of B changes. The hosted protocol answers 403 to A's key with
B's project name.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client

from budgets import services
from budgets.models import (
    Alert,
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Grant,
    Limit,
    LimitIncrease,
    LimitRequest,
    ModelSpend,
    Project,
    Reservation,
    TeamMember,
    UserBudget,
)
from tests.api_helpers import new_key

B_NAME = "beta-project-b"
B_ONLY_USER = "bob-of-b"
B_TEAM = "team-of-b"
SHARED_USER = "shared"
# Values only B's objects carry: none of them may appear in an answer to A's key.
B_MARKERS = ("b-secret-model", "777.123456", "555.5", B_NAME)

# A body that would succeed if the object were the caller's: a refusal then proves the check,
# not a validation error. An operation missing here fails the test below.
BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/api/v1/users/{user}/budget"): {"total_budget": 5},
    ("POST", "/api/v1/users/{user}/reset"): None,
    ("POST", "/api/v1/users/{user}/costs"): {"model": "gpt-4o", "cost": 1},
    ("POST", "/api/v1/users/{user}/projected-cost"): {"model": "gpt-4o",
                                                       "messages": [{"role": "user", "content": "hi"}]},
    ("POST", "/api/v1/users/{user}/check"): {"estimated_cost": 1},
    ("POST", "/api/v1/cost-quote"): {"model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 10},
    ("POST", "/api/v1/users/{user}/reservations"): {"estimated_cost": 1},
    ("POST", "/api/v1/reservations/{reservation_id}/settle"): {"model": "gpt-4o", "cost": 1},
    ("POST", "/api/v1/reservations/{reservation_id}/release"): None,
    ("POST", "/api/v1/limits"): {"scope": "team", "subject": B_TEAM, "limit": 1},
    ("PATCH", "/api/v1/limits/{limit_id}"): {"limit": 2},
    ("PUT", "/api/v1/teams/{team}"): {"members": [B_ONLY_USER]},
    ("PUT", "/api/v1/fallbacks"): {"fallbacks": {"gpt-4o": ["gpt-4o-mini"]}},
    ("POST", "/api/v1/limits/{limit_id}/increases"): {"amount": 1, "windows": 1},
    ("POST", "/api/v1/users/{user}/limit-requests"): {"amount": 1},
    ("POST", "/api/v1/users/{user}/grants"): {"amount": 1},
    ("POST", "/api/v1/teams/{team}/grants"): {"amount": 1},
}
# Operations that create the object when it is missing: with A's key that is A's own new object.
CREATES = {("PUT", "/api/v1/users/{user}/budget"), ("PUT", "/api/v1/teams/{team}")}
# Operations that answer A's own view for any user id: the limits A's project would apply to that user's calls
# (a limit request for a user no limit of A applies to is 422).
# A's grants of any user id: none for a user A never granted anything.
OWN_VIEW_OF_ANY_USER = {("GET", "/api/v1/users/{user}/limits"), ("POST", "/api/v1/users/{user}/limit-requests"),
                        ("GET", "/api/v1/users/{user}/grants")}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) of the served schema; read at collection (no database needed)."""
    schema = json.loads(Client().get("/api/v1/openapi.json").content)
    return [(method.upper(), path, operation) for path, item in schema["paths"].items()
            for method, operation in item.items() if method in ("get", "post", "put", "patch", "delete")]


OPERATIONS = _operations()


def call(client: Client, key: str, method: str, path: str, body: Any = None, query: dict[str, str] | None = None):
    url = path + ("?" + urlencode(query) if query else "")
    kwargs: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    if body is not None:
        kwargs.update(data=json.dumps(body), content_type="application/json")
    return getattr(client, method.lower())(url, **kwargs)


def b_state(b: Project) -> dict[str, Any]:
    """Everything of project B, row by row."""
    return {
        "project": list(Project.objects.filter(pk=b.pk).values()),
        "budgets": list(UserBudget.objects.filter(project=b).order_by("pk").values()),
        "model_spend": list(ModelSpend.objects.filter(budget__project=b).order_by("pk").values()),
        "ledger": list(CostEvent.objects.filter(project=b).order_by("pk").values()),
        "reservations": list(Reservation.objects.filter(project=b).order_by("pk").values()),
        "alerts": list(Alert.objects.filter(project=b).order_by("pk").values()),
        "periods": list(BudgetPeriod.objects.filter(project=b).order_by("pk").values()),
        "audit": AuditLog.objects.filter(project=b).count(),
        "keys": list(ApiKey.objects.filter(project=b).order_by("pk").values()),
        "limits": list(Limit.objects.filter(project=b).order_by("pk").values()),
        "raises": list(LimitIncrease.objects.filter(limit__project=b).order_by("pk").values()),
        "requests": list(LimitRequest.objects.filter(project=b).order_by("pk").values()),
        "grants": list(Grant.objects.filter(project=b).order_by("pk").values()),
        "teams": list(TeamMember.objects.filter(project=b).order_by("pk").values("team__name", "user_id")),
    }


@pytest.fixture
def two_projects(project) -> dict[str, Any]:
    a, b = project, services.project_create(name=B_NAME, timezone="UTC")
    a_key, b_key = new_key(a), new_key(b)
    # no channel: kept, never sent; B's fallbacks carry B's marker
    Project.objects.filter(pk=b.pk).update(alert_thresholds=[50], fallbacks={"b-secret-model": ["gpt-4o-mini"]})
    client = Client()
    for owner, users in ((a, ["alice", SHARED_USER]), (b, [B_ONLY_USER, SHARED_USER])):
        for user in users:
            services.budget_set(project=owner, user_id=user, total_budget=Decimal(1000), actor="test")
    for user in (B_ONLY_USER, SHARED_USER):
        # 777.123456 of 1000 crosses B's 50% threshold: B has an alert too.
        response = call(client, b_key, "POST", f"/api/v1/users/{user}/costs",
                        {"model": "b-secret-model", "cost": 777.123456})
        assert response.status_code == 201, response.content
    response = call(client, b_key, "POST", f"/api/v1/users/{B_ONLY_USER}/reservations", {"estimated_cost": 55.5})
    assert response.status_code == 201, response.content
    b_reservation = json.loads(response.content)["id"]
    assert call(client, a_key, "POST", "/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 1}).status_code == 201
    assert call(client, a_key, "POST", "/api/v1/users/alice/reservations",
                {"estimated_cost": 2}).status_code == 201
    assert Alert.objects.filter(project=b).exists()
    assert call(client, b_key, "PUT", f"/api/v1/teams/{B_TEAM}", {"members": [B_ONLY_USER]}).status_code == 201
    response = call(client, b_key, "POST", "/api/v1/limits", {"scope": "team", "subject": B_TEAM, "limit": 555.5})
    assert response.status_code == 201, response.content
    b_limit = json.loads(response.content)["id"]
    response = call(client, b_key, "POST", f"/api/v1/limits/{b_limit}/increases", {"amount": 1, "windows": 1})
    assert response.status_code == 201, response.content
    b_increase = json.loads(response.content)["id"]
    response = call(client, b_key, "POST", f"/api/v1/users/{B_ONLY_USER}/limit-requests", {"amount": 1})
    assert response.status_code == 201, response.content
    b_request = json.loads(response.content)["id"]
    response = call(client, b_key, "POST", f"/api/v1/users/{SHARED_USER}/grants", {"amount": 555.5})
    assert response.status_code == 201, response.content
    b_grant = json.loads(response.content)["id"]
    # The control: B's own key sees B's objects and the markers, so a missing marker means something.
    assert "b-secret-model" in call(client, b_key, "GET", f"/api/v1/users/{SHARED_USER}").content.decode()
    own = call(client, b_key, "GET", f"/api/v1/reservations/{b_reservation}")
    assert own.status_code == 200 and "55.5" in own.content.decode()
    return {"a": a, "b": b, "a_key": a_key, "b_key": b_key, "b_reservation": b_reservation, "b_limit": b_limit,
            "b_increase": b_increase, "b_request": b_request, "b_grant": b_grant, "client": client}


def test_the_schema_lists_the_operations_this_matrix_expects():
    with_body = {(m, p) for m, p, op in OPERATIONS if "requestBody" in op}
    missing = with_body - set(BODIES)
    assert not missing, f"new operations with a body: add them to BODIES in this file: {missing}"
    assert len(OPERATIONS) >= 16


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_a_key_never_reads_or_changes_another_projects_objects(two_projects, method, path, operation):
    a, b, a_key = two_projects["a"], two_projects["b"], two_projects["a_key"]
    client = two_projects["client"]
    before = b_state(b)
    params = {p["name"]: p for p in operation.get("parameters", [])}
    body = BODIES.get((method, path))
    targets = [B_ONLY_USER, SHARED_USER] if "user" in params else [None]

    for user in targets:
        url = path.replace("{reservation_id}", str(two_projects["b_reservation"]))
        url = url.replace("{limit_id}", str(two_projects["b_limit"])).replace("{team}", B_TEAM)
        url = url.replace("{increase_id}", str(two_projects["b_increase"]))
        url = url.replace("{request_id}", str(two_projects["b_request"]))
        url = url.replace("{grant_id}", str(two_projects["b_grant"]))
        if user is not None:
            url = url.replace("{user}", user)
        query = {"user": B_ONLY_USER} if "user" in params and params["user"]["in"] == "query" else None
        response = call(client, a_key, method, url, body, query)
        text = response.content.decode()
        status = response.status_code

        assert status < 500, (url, status, text[:300])
        assert not any(marker in text for marker in B_MARKERS), (url, status, text[:500])
        if any(name in path for name in ("{reservation_id}", "{limit_id}", "{request_id}", "{grant_id}")):
            # B's reservation, limit, limit request or grant does not exist for A
            assert status == 404, (url, status, text[:300])
        elif "{team}" in path:
            # B's team does not exist for A; PUT makes A's own team of that name.
            assert status == (201 if (method, path) in CREATES else 404), (url, status, text[:300])
        elif user == B_ONLY_USER and params["user"]["in"] == "path" and (method, path) not in OWN_VIEW_OF_ANY_USER:
            if (method, path) in CREATES:
                assert status == 201, (url, status, text[:300])  # A's own new budget of that name
                assert UserBudget.objects.filter(project=a, user_id=B_ONLY_USER).exists()
            else:
                assert status == 404, (url, status, text[:300])
        else:
            # A's own view: its list, its "shared" user, its ledger (empty for a B-only user).
            assert 200 <= status < 300 or status in (402, 404, 422), (url, status, text[:300])
            if status == 200 and query:
                assert json.loads(text)["items"] == [], text[:300]

    assert b_state(b) == before, f"{method} {path} with A's key changed project B"


@pytest.mark.parametrize("endpoint", ["/get_budget", "/set_budget"])
def test_the_hosted_protocol_answers_403_to_a_key_of_another_project(two_projects, endpoint):
    b, a_key = two_projects["b"], two_projects["a_key"]
    before = b_state(b)
    body = {"project_name": B_NAME, "user_dict": {B_ONLY_USER: {"total_budget": 1.0, "current_cost": 0.0}}}
    response = call(two_projects["client"], a_key, "POST", endpoint, body)

    assert response.status_code == 403, response.content
    assert json.loads(response.content)["status"] == "error"
    assert not any(marker in response.content.decode() for marker in B_MARKERS[:3])
    assert b_state(b) == before
