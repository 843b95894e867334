"""The users endpoints: list, read, set a budget, delete, reset, projected cost, budget check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from budgets import services
from budgets.domain.usage import Usage
from budgets.manager import BudgetManager
from budgets.models import AuditLog, BudgetPeriod, CostEvent, UserBudget
from tests.api_helpers import assert_error, body_of, db_state

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "Hello, how are you today?"}]


def spend(project, user="alice", model="gpt-4o-mini", cost="1"):
    return services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(cost),
                                source="api")


# --- list and read ------------------------------------------------------------------------------


def test_users_are_listed_in_pages_with_the_total(api, make_budget):
    for user in ("carol", "alice", "bob"):
        make_budget(user)

    first = body_of(api.get("/api/v1/users?limit=2"))
    second = body_of(api.get("/api/v1/users?limit=2&offset=2"))

    assert [u["user"] for u in first["items"]] == ["alice", "bob"]
    assert [u["user"] for u in second["items"]] == ["carol"]
    assert (first["total"], first["limit"], first["offset"]) == (3, 2, 0)
    assert second["total"] == 3


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "offset=-1", "limit=abc"])
def test_bad_paging_is_a_validation_error(api, query):
    assert_error(api.get(f"/api/v1/users?{query}"), 400, "validation_error")


def test_a_user_reads_with_budget_spend_per_model_period_and_remaining(api, project, make_budget):
    make_budget("alice", "10", "daily")
    spend(project, model="gpt-4o", cost="1.25")
    spend(project, model="gpt-4o-mini", cost="0.000000000001")

    response = api.get("/api/v1/users/alice")

    assert response.status_code == 200
    user = body_of(response)
    assert user["total_budget"] == 10 and user["duration"] == "daily"
    assert user["current_cost"] == Decimal("1.250000000001")
    assert user["model_cost"] == {"gpt-4o": Decimal("1.25"), "gpt-4o-mini": Decimal("1E-12")}
    assert user["remaining"] == Decimal("8.749999999999")
    assert user["budget_exceeded"] is False and user["exceeded_scope"] is None
    start = datetime.fromisoformat(user["period_start"])
    assert start.hour == 0 and start.minute == 0
    assert datetime.fromisoformat(user["next_reset_at"]) - start == timedelta(days=1)


def test_money_is_a_json_number_never_a_string(api, project, make_budget):
    make_budget("alice", "10")
    spend(project, cost="0.1")
    spend(project, cost="0.2")

    content = api.get("/api/v1/users/alice").content

    assert b'"current_cost":0.3,' in content
    assert b'"total_budget":10,' in content


def test_an_unknown_user_is_404(api):
    assert_error(api.get("/api/v1/users/nobody"), 404, "not_found")


def test_a_user_id_with_a_slash_can_be_addressed(api, make_budget):
    make_budget("team/alice", "4")

    assert body_of(api.get("/api/v1/users/team/alice"))["total_budget"] == 4
    assert body_of(api.post("/api/v1/users/team/alice/costs", {"model": "x", "cost": 1}))["cost"] == 1


def test_reading_a_user_whose_period_ended_resets_it_first(api, project, make_budget, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, 12, tzinfo=UTC))
    make_budget("alice", "10", "daily")
    spend(project, cost="3")
    time_machine.move_to(datetime(2030, 1, 2, 1, tzinfo=UTC))

    user = body_of(api.get("/api/v1/users/alice"))

    assert user["current_cost"] == 0
    assert user["period_start"] == "2030-01-02T00:00:00Z"
    assert BudgetPeriod.objects.get().spend == Decimal(3)


def test_users_over_their_own_or_the_projects_budget_say_which(api, project, make_budget):
    make_budget("alice", "1")
    make_budget("bob", "100")
    spend(project, "alice", cost="1")

    assert body_of(api.get("/api/v1/users/alice"))["exceeded_scope"] == "user"
    assert body_of(api.get("/api/v1/users/bob"))["budget_exceeded"] is False

    services.project_update(project=project, max_budget=Decimal("0.5"), actor="test")
    bob = body_of(api.get("/api/v1/users/bob"))
    assert (bob["budget_exceeded"], bob["exceeded_scope"]) == (True, "project")
    alice = body_of(api.get("/api/v1/users/alice"))
    assert alice["remaining"] == 0


# --- set a budget ------------------------------------------------------------------------------


def test_putting_a_budget_creates_the_user_with_201(api, project):
    response = api.put("/api/v1/users/alice/budget", {"total_budget": 12.5, "duration": "weekly"})

    assert response.status_code == 201
    assert body_of(response)["total_budget"] == Decimal("12.5")
    budget = UserBudget.objects.get()
    assert (budget.user_id, budget.total_budget, budget.duration) == ("alice", Decimal("12.5"), "weekly")
    assert AuditLog.objects.filter(action="budget_create", actor__startswith="key:bm_").exists()


def test_putting_a_budget_again_replaces_it_with_200_and_keeps_the_spend(api, project, make_budget):
    make_budget("alice", "10")
    spend(project, cost="4")

    response = api.put("/api/v1/users/alice/budget", {"total_budget": 20, "duration": "days", "duration_days": 10})

    assert response.status_code == 200
    budget = UserBudget.objects.get()
    assert (budget.total_budget, budget.current_spend) == (Decimal(20), Decimal(4))
    assert (budget.duration, budget.duration_days) == ("days", 10)
    assert AuditLog.objects.filter(action="budget_update").count() == 1


@pytest.mark.parametrize("body", [
    {"total_budget": -1},
    {"total_budget": "10"},
    {"total_budget": True},
    {"total_budget": None},
    {"total_budget": 1e300},
    {},
    {"total_budget": 10, "duration": "fortnightly"},
    {"total_budget": 10, "duration": "days"},
    {"total_budget": 10, "duration": "days", "duration_days": 0},
    {"total_budget": 10, "duration": "days", "duration_days": 1.5},
    {"total_budget": 10, "budget": 3},
    [10],
])
def test_a_bad_budget_is_a_validation_error_and_writes_nothing(api, make_budget, body):
    make_budget("alice", "10")
    before = db_state()

    assert_error(api.put("/api/v1/users/alice/budget", body), 400, "validation_error")
    assert_error(api.put("/api/v1/users/bob/budget", body), 400, "validation_error")

    assert db_state() == before


@pytest.mark.parametrize("raw", ['{"total_budget": NaN}', '{"total_budget": Infinity}', '{"total_budget": -Infinity}'])
def test_non_finite_budgets_are_refused(api, raw):
    assert_error(api.put("/api/v1/users/alice/budget", raw=raw), 400, "invalid_json")
    assert not UserBudget.objects.exists()


def test_a_user_id_longer_than_255_characters_is_refused(api):
    assert_error(api.put(f"/api/v1/users/{'a' * 256}/budget", {"total_budget": 1}), 400, "validation_error")
    assert not UserBudget.objects.exists()


# --- delete and reset -----------------------------------------------------------------------------


def test_deleting_a_user_keeps_the_ledger_and_is_audited(api, project, make_budget):
    make_budget("alice")
    spend(project, cost="2")

    response = api.delete("/api/v1/users/alice")

    assert response.status_code == 204
    assert not UserBudget.objects.exists()
    assert CostEvent.objects.get().user_id == "alice"
    assert AuditLog.objects.filter(action="budget_delete", user_id="alice").exists()
    assert_error(api.delete("/api/v1/users/alice"), 404, "not_found")
    assert len(body_of(api.get("/api/v1/users/alice/costs"))["items"]) == 1


def test_resetting_a_user_zeroes_the_spend_and_is_audited(api, project, make_budget):
    make_budget("alice")
    spend(project, cost="2")

    response = api.post("/api/v1/users/alice/reset")

    assert response.status_code == 200
    assert body_of(response)["current_cost"] == 0 and body_of(response)["model_cost"] == {}
    assert UserBudget.objects.get().current_spend == 0
    assert CostEvent.objects.count() == 1
    assert AuditLog.objects.filter(action="budget_reset_manual", actor__startswith="key:").count() == 1


def test_resetting_an_unknown_user_is_404_and_writes_nothing(api, make_budget):
    make_budget("alice")
    before = db_state()

    assert_error(api.post("/api/v1/users/bob/reset"), 404, "not_found")

    assert db_state() == before


# --- projected cost and check ---------------------------------------------------------------------


def test_projected_cost_is_current_cost_plus_the_prompt_cost(api, project, make_budget):
    make_budget("alice")
    spend(project, cost="0.5")

    response = api.post("/api/v1/users/alice/projected-cost", {"model": "gpt-4o-mini", "messages": HELLO})

    assert response.status_code == 200
    result = body_of(response)
    assert result["prompt_tokens"] > 0
    assert result["prompt_cost"] == result["prompt_tokens"] * Decimal("0.00000015")
    assert result["current_cost"] == Decimal("0.5")
    assert result["projected_cost"] == Decimal("0.5") + result["prompt_cost"]


def test_projected_cost_agrees_with_the_python_manager(api, project, make_budget):
    make_budget("alice")

    result = body_of(api.post("/api/v1/users/alice/projected-cost", {"model": "gpt-4o", "messages": HELLO}))

    assert result["projected_cost"] == BudgetManager("acme").projected_cost("gpt-4o", HELLO, "alice")


@pytest.mark.parametrize(("body", "status", "type_"), [
    ({"model": "no-such-model", "messages": HELLO}, 422, "unknown_model"),
    ({"model": "gpt-4o", "messages": "hello"}, 400, "validation_error"),
    ({"model": "gpt-4o", "messages": [1, 2]}, 400, "validation_error"),
    ({"model": "gpt-4o"}, 400, "validation_error"),
    ({"model": "", "messages": HELLO}, 400, "validation_error"),
])
def test_projected_cost_errors(api, make_budget, body, status, type_):
    make_budget("alice")
    before = db_state()

    assert_error(api.post("/api/v1/users/alice/projected-cost", body), status, type_)

    assert db_state() == before


def test_a_check_within_budget_is_allowed(api, make_budget):
    make_budget("alice", "10")

    result = body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 9.5}))

    assert result == {"allowed": True, "reason": None, "remaining": 10, "scope": None, "estimated_cost": Decimal("9.5"),
                      "limit": None, "fallback": None}


def test_a_check_past_the_users_budget_is_not_allowed(api, project, make_budget):
    make_budget("alice", "10")
    spend(project, cost="9.99")

    result = body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 0.02}))

    assert (result["allowed"], result["scope"], result["remaining"]) == (False, "user", Decimal("0.01"))
    assert "alice" in result["reason"]
    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 0.01}))["allowed"] is True


def test_a_check_past_the_projects_cap_is_not_allowed(api, project, make_budget):
    make_budget("alice", "10")
    make_budget("bob", "10")
    services.project_update(project=project, max_budget=Decimal(5), actor="test")
    spend(project, "bob", cost="4.5")

    result = body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 1}))

    assert (result["allowed"], result["scope"], result["remaining"]) == (False, "project", Decimal("0.5"))


def test_a_check_prices_messages_and_max_tokens(api, project, make_budget):
    make_budget("alice", "10")

    prompt = body_of(api.post("/api/v1/users/alice/check", {"model": "gpt-4o-mini", "messages": HELLO}))
    full = body_of(api.post("/api/v1/users/alice/check",
                            {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 1000}))

    assert prompt["allowed"] and prompt["estimated_cost"] > 0
    assert full["estimated_cost"] == prompt["estimated_cost"] + 1000 * Decimal("0.0000006")


def test_a_check_of_a_used_up_budget_is_not_allowed_even_for_nothing(api, project, make_budget):
    make_budget("alice", "1")
    spend(project, cost="1")

    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 0}))["allowed"] is False


@pytest.mark.parametrize(("body", "status", "type_"), [
    ({}, 400, "validation_error"),
    ({"estimated_cost": -1}, 400, "validation_error"),
    ({"estimated_cost": "1"}, 400, "validation_error"),
    ({"estimated_cost": 1, "model": "gpt-4o"}, 400, "validation_error"),
    ({"model": "gpt-4o"}, 400, "validation_error"),
    ({"model": "gpt-4o", "messages": HELLO, "max_tokens": -5}, 400, "validation_error"),
    ({"model": "unknown-model", "messages": HELLO}, 422, "unknown_model"),
])
def test_check_errors(api, make_budget, body, status, type_):
    make_budget("alice")
    before = db_state()

    assert_error(api.post("/api/v1/users/alice/check", body), status, type_)

    assert db_state() == before


def test_a_check_for_an_unknown_user_is_404(api):
    assert_error(api.post("/api/v1/users/nobody/check", {"estimated_cost": 1}), 404, "not_found")
