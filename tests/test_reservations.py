"""Reservations: reserve → call → settle (or release), holds on every level, expiry, idempotency."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils.timezone import now as utcnow

from budgets import services, tasks
from budgets.models import CostEvent, Project, Reservation, UserBudget
from tests.api_helpers import ApiClient, assert_error, body_of, db_state, new_key

pytestmark = pytest.mark.django_db

MINI_IN, MINI_OUT = Decimal("0.00000015"), Decimal("0.0000006")  # gpt-4o-mini, per token
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def alice(make_budget):
    return make_budget("alice", "10")


def reserve(api, body, user="alice", **kwargs):
    return api.post(f"/api/v1/users/{user}/reservations", body, **kwargs)


def held(budget: UserBudget) -> tuple[Decimal, Decimal]:
    budget.refresh_from_db()
    return budget.held, Project.objects.get(pk=budget.project_id).held


def test_a_reservation_holds_its_estimated_cost_on_the_user_and_the_project(api, alice):
    response = reserve(api, {"estimated_cost": 2.5, "model": "gpt-4o-mini"})

    assert response.status_code == 201, response.content
    result = body_of(response)
    assert (result["user"], result["model"], result["amount"], result["status"]) == (
        "alice", "gpt-4o-mini", Decimal("2.5"), "open")
    assert held(alice) == (Decimal("2.5"), Decimal("2.5"))
    user = body_of(api.get("/api/v1/users/alice"))
    assert (user["held"], user["remaining"], user["current_cost"]) == (Decimal("2.5"), Decimal("7.5"), 0)
    reservation = Reservation.objects.get()
    assert reservation.expires_at - reservation.created_at == timedelta(seconds=600)
    assert not CostEvent.objects.exists()


def test_a_reservation_for_messages_holds_the_prompt_and_max_tokens_at_the_output_price(api, alice):
    quote = body_of(api.post("/api/v1/cost-quote", {"model": "gpt-4o-mini", "messages": MESSAGES}))

    response = reserve(api, {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000})

    assert response.status_code == 201, response.content
    assert body_of(response)["amount"] == quote["prompt_tokens"] * MINI_IN + 1000 * MINI_OUT
    assert held(alice)[0] == body_of(response)["amount"]


def test_a_model_without_a_price_needs_an_estimated_cost(api, alice):
    before = db_state()
    assert_error(reserve(api, {"model": "no-such-model", "messages": MESSAGES, "max_tokens": 10}), 422,
                 "unknown_model")
    assert db_state() == before and not Reservation.objects.exists()
    assert reserve(api, {"model": "no-such-model", "estimated_cost": 1}).status_code == 201


@pytest.mark.parametrize("body", [
    {}, {"model": "gpt-4o-mini", "messages": MESSAGES}, {"estimated_cost": 0}, {"estimated_cost": -1},
    {"estimated_cost": 1, "max_tokens": 5}, {"estimated_cost": 1, "ttl_seconds": 0},
    {"estimated_cost": 1, "ttl_seconds": 86401}, {"estimated_cost": "1"}, {"estimated_cost": 1, "bogus": 1},
])
def test_bad_reservation_bodies_are_a_400_and_hold_nothing(api, alice, body):
    response = reserve(api, body)

    assert response.status_code == 400, response.content
    assert held(alice) == (0, 0)
    assert not Reservation.objects.exists()


def test_an_unknown_user_cannot_reserve(api, alice):
    assert_error(reserve(api, {"estimated_cost": 1}, user="bob"), 404, "not_found")
    assert not Reservation.objects.exists()


def test_a_reservation_the_user_has_no_room_for_is_a_402_naming_the_user(api, alice):
    assert reserve(api, {"estimated_cost": 6}).status_code == 201

    error = assert_error(reserve(api, {"estimated_cost": 5}), 402, "budget_exceeded")

    assert (error["scope"], error["limit"]["limit"], error["spend"], error["held"], error["requested"]) == (
        "user", 10, 0, 6, 5)
    assert "alice" in error["message"]
    assert held(alice) == (6, 6)
    assert Reservation.objects.count() == 1


def test_a_reservation_the_project_has_no_room_for_is_a_402_naming_the_project(api, project, alice, make_budget):
    services.project_update(project=project, max_budget=Decimal(3), actor="test")
    make_budget("bob", "10")
    assert reserve(api, {"estimated_cost": 2}, user="bob").status_code == 201

    error = assert_error(reserve(api, {"estimated_cost": 2}), 402, "budget_exceeded")

    assert (error["scope"], error["limit"]["limit"], error["held"]) == ("project", 3, 2)
    assert held(alice) == (0, 2)


def test_settling_records_the_real_cost_once_and_frees_the_hold(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 1, "model": "gpt-4o-mini"}))["id"]
    body = {"prompt_tokens": 1000, "completion_tokens": 500}  # the reservation's model is meant

    response = api.post(f"/api/v1/reservations/{rid}/settle", body)

    assert response.status_code == 200, response.content
    result = body_of(response)
    cost = 1000 * MINI_IN + 500 * MINI_OUT
    assert (result["cost"], result["over_hold"], result["reservation"]["status"]) == (cost, False, "settled")
    assert result["user"]["held"] == 0 and result["user"]["current_cost"] == cost
    assert result["event"]["model"] == "gpt-4o-mini"
    alice.refresh_from_db()
    assert (alice.current_spend, alice.held) == (cost, 0)
    assert Project.objects.get().held == 0
    assert CostEvent.objects.get().cost == cost

    again = api.post(f"/api/v1/reservations/{rid}/settle", body)
    assert again.status_code == 200 and again.content == response.content
    assert again["Idempotent-Replayed"] == "true"
    assert CostEvent.objects.count() == 1
    alice.refresh_from_db()
    assert alice.current_spend == cost


def test_settling_more_than_was_held_records_it_anyway_and_says_so(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 1, "model": "x"}))["id"]

    result = body_of(api.post(f"/api/v1/reservations/{rid}/settle", {"cost": 3}))

    assert (result["cost"], result["over_hold"]) == (3, True)
    alice.refresh_from_db()
    assert (alice.current_spend, alice.held) == (3, 0)


def test_a_settle_kept_before_its_figures_were_is_replayed_with_todays_figures(api, alice):
    """A settle stored by an older version kept its answer, not the user's figures: a retry still
    answers 200 as a replay and records nothing."""
    rid = body_of(reserve(api, {"estimated_cost": 1, "model": "gpt-4o-mini"}))["id"]
    body = {"prompt_tokens": 1000, "completion_tokens": 500}
    first = api.post(f"/api/v1/reservations/{rid}/settle", body)
    assert first.status_code == 200, first.content
    Reservation.objects.filter(pk=rid).update(settle_response={"status": 200, "body": {"cost": "0.00045"}})

    again = api.post(f"/api/v1/reservations/{rid}/settle", body)

    assert again.status_code == 200, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert body_of(again)["cost"] == body_of(first)["cost"]
    assert body_of(again)["user"]["current_cost"] == body_of(first)["user"]["current_cost"]
    assert CostEvent.objects.count() == 1


def test_a_settle_without_a_model_needs_the_reservation_to_have_one(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 1}))["id"]
    assert_error(api.post(f"/api/v1/reservations/{rid}/settle", {"cost": 1}), 400, "validation_error")
    assert held(alice) == (1, 1) and not CostEvent.objects.exists()


def test_releasing_frees_the_hold_is_idempotent_and_a_released_one_cannot_be_settled(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 4}))["id"]

    first = api.post(f"/api/v1/reservations/{rid}/release")
    second = api.post(f"/api/v1/reservations/{rid}/release")

    assert first.status_code == second.status_code == 200
    assert body_of(first)["reservation"]["status"] == "released"
    assert held(alice) == (0, 0)
    assert_error(api.post(f"/api/v1/reservations/{rid}/settle", {"model": "x", "cost": 1}), 409, "conflict")
    assert not CostEvent.objects.exists()


def test_a_settled_reservation_cannot_be_released(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 4}))["id"]
    api.post(f"/api/v1/reservations/{rid}/settle", {"model": "x", "cost": 1})
    assert_error(api.post(f"/api/v1/reservations/{rid}/release"), 409, "conflict")
    assert held(alice) == (0, 0)


def test_another_projects_reservation_is_not_found(api, alice, make_budget):
    other = services.project_create(name="other", timezone="UTC")
    make_budget("alice", "10", in_project=other)
    other_api = ApiClient(new_key(other))
    rid = body_of(reserve(other_api, {"estimated_cost": 1}))["id"]

    assert_error(api.get(f"/api/v1/reservations/{rid}"), 404, "not_found")
    assert_error(api.post(f"/api/v1/reservations/{rid}/settle", {"model": "x", "cost": 1}), 404, "not_found")
    assert_error(api.post(f"/api/v1/reservations/{rid}/release"), 404, "not_found")
    assert Reservation.objects.get().status == "open"


def test_the_sweep_expires_holds_set_based(api, alice, make_budget):
    make_budget("bob", "10")
    for user in ("alice", "alice", "bob"):
        reserve(api, {"estimated_cost": 1, "ttl_seconds": 60}, user=user)
    keep = body_of(reserve(api, {"estimated_cost": 2}))["id"]

    result = tasks.run_reset_sweep(at=utcnow() + timedelta(seconds=61))

    assert result.reservations == 3
    assert held(alice) == (2, 2)
    assert UserBudget.objects.get(user_id="bob").held == 0
    assert Reservation.objects.get(pk=keep).status == "open"
    assert Reservation.objects.filter(status="expired").count() == 3
    assert tasks.run_reset_sweep(at=utcnow() + timedelta(seconds=61)).reservations == 0


def test_an_expired_hold_is_released_lazily_and_cannot_be_settled(api, alice):
    rid = body_of(reserve(api, {"estimated_cost": 9, "ttl_seconds": 1}))["id"]
    Reservation.objects.filter(pk=rid).update(expires_at=utcnow() - timedelta(seconds=1))

    # A new reservation for the same user releases the stale hold first, so it fits.
    assert reserve(api, {"estimated_cost": 9}).status_code == 201
    assert Reservation.objects.get(pk=rid).status == "expired"
    assert held(alice) == (9, 9)
    assert_error(api.post(f"/api/v1/reservations/{rid}/settle", {"model": "x", "cost": 1}), 409, "conflict")
    assert body_of(api.get(f"/api/v1/reservations/{rid}"))["status"] == "expired"


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(api, alice):
    key = {"Idempotency-Key": "r-1"}
    first = reserve(api, {"estimated_cost": 1}, headers=key)
    again = reserve(api, {"estimated_cost": 1}, headers=key)

    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again["Idempotent-Replayed"] == "true"
    assert_error(reserve(api, {"estimated_cost": 2}, headers=key), 409, "idempotency_conflict")
    assert Reservation.objects.count() == 1
    assert held(alice) == (1, 1)


def test_the_check_counts_open_holds(api, alice):
    reserve(api, {"estimated_cost": 8})

    result = body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 3}))

    assert (result["allowed"], result["scope"], result["remaining"]) == (False, "user", 2)
    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 2}))["allowed"] is True


def test_an_enforced_record_counts_open_holds(api, alice):
    reserve(api, {"estimated_cost": 8})

    error = assert_error(api.post("/api/v1/users/alice/costs?enforce=true", {"model": "x", "cost": 3}), 402,
                         "budget_exceeded")

    assert (error["scope"], error["held"], error["requested"]) == ("user", 8, 3)
    assert not CostEvent.objects.exists()


def test_the_manager_current_cost_is_spend_only(project, alice):
    from budgets.manager import BudgetManager

    services.reservation_create(project=project, user_id="alice", amount=Decimal(5))
    assert BudgetManager(project.name).get_current_cost("alice") == 0


def test_a_deadlock_victim_is_retried_and_other_database_errors_are_not(monkeypatch):
    from django.db import OperationalError
    from psycopg import errors as pg_errors

    from budgets.services import admission

    monkeypatch.setattr(admission.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(admission, "_outermost", lambda: True)
    calls = []

    @admission.retry_on_conflict
    def flaky(cause: Exception) -> str:
        calls.append(cause)
        if len(calls) < 3:
            raise OperationalError("deadlock detected") from cause
        return "done"

    assert flaky(pg_errors.DeadlockDetected("deadlock detected")) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(OperationalError):
        flaky(pg_errors.AdminShutdown("terminating connection"))
    assert len(calls) == 1


def test_the_admin_lists_holds_and_shows_reservations_read_only(client, django_user_model, project, alice):
    from django.urls import reverse

    services.reservation_create(project=project, user_id="alice", amount=Decimal("2.5"))
    client.force_login(django_user_model.objects.create_superuser("support", "s@example.com", "pw"))

    budgets = client.get(reverse("admin:budgets_userbudget_changelist"))
    reservations = client.get(reverse("admin:budgets_reservation_changelist"), {"q": "alice"})

    assert budgets.status_code == reservations.status_code == 200
    assert b"2.5" in budgets.content and b"alice" in reservations.content
    assert client.get(reverse("admin:budgets_reservation_add")).status_code == 403


def test_open_holds_show_in_the_console(client, project, make_budget, django_user_model):
    """User page, users list and overview show what open reservations hold, beside the spend."""
    make_budget("alice", total_budget="10")
    services.reservation_create(project=project, user_id="alice", amount=Decimal("1.25"))
    staff = django_user_model.objects.create_superuser("staff", "s@example.com", "pw")
    client.force_login(staff)

    detail = client.get(reverse("user_detail", args=[project.pk, "alice"])).content.decode()
    users = client.get(reverse("user_list", args=[project.pk])).content.decode()
    overview = client.get(reverse("project_overview", args=[project.pk])).content.decode()

    assert re.search(r'id="user-held">\+ \$1\.25 held by open reservations', detail)
    assert "+ $1.25 held" in users
    assert re.search(r'id="project-held">\+ \$1\.25 held by open reservations', overview)
