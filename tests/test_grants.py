"""Grants, rollover and grace (issue 22, items 3, 4 and 5): prepaid dollars used after the periodic limits,
in order, exactly, on both paths (PostgreSQL's one statement and the portable one); a limit's unused part
rolled over once per reset; a hard limit's grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum

from budgets.models import Alert, AuditLog, CostEvent, Grant, GrantUse, Limit, UserBudget
from budgets.services.grants import grants_expire
from budgets.services.limit_windows import limits_reset_due
from tests.api_helpers import ApiClient, assert_error, body_of
from tests.test_limits import limit, team

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
MICRO = timedelta(microseconds=1)


@pytest.fixture
def alice(project, make_budget, time_machine) -> UserBudget:
    """alice's $0.50 monthly budget, at START."""
    time_machine.move_to(START, tick=False)
    return make_budget("alice", total_budget="0.5")


def spend(api: ApiClient, cost: str, user: str = "alice"):
    return api.post(f"/api/v1/users/{user}/costs?enforce=true", {"model": "gpt-4o", "cost": float(cost)})


def give(api: ApiClient, body: dict, user: str = "alice") -> dict:
    response = api.post(f"/api/v1/users/{user}/grants", body)
    assert response.status_code == 201, response.content
    return body_of(response)


def paid_by(grant_id: int) -> Decimal:
    return GrantUse.objects.filter(grant_id=grant_id).aggregate(total=Sum("amount"))["total"] or Decimal(0)


def spend_times(api: ApiClient, cost: str, times: int, user: str = "alice") -> list[int]:
    return [spend(api, cost, user).status_code for _ in range(times)]


# --- the API -------------------------------------------------------------------------------------------


def test_a_grant_answers_201_and_the_list_shows_used_and_remaining(api, alice):
    made = give(api, {"amount": 0.5, "expires_at": (START + timedelta(days=30)).isoformat(), "note": "launch"})

    assert (made["scope"], made["subject"], made["amount"], made["used"], made["remaining"]) == (
        "user", "alice", Decimal("0.5"), 0, Decimal("0.5"))
    assert (made["status"], made["priority"], made["source"], made["note"]) == ("active", 1, "manual", "launch")
    listed = body_of(api.get("/api/v1/users/alice/grants"))
    assert [item["id"] for item in listed["items"]] == [made["id"]] and listed["remaining"] == Decimal("0.5")
    assert AuditLog.objects.filter(action="grant_create", user_id="alice").count() == 1


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"amount": 0}, 400, "validation_error"),
    ({"amount": -1}, 400, "validation_error"),
    ({"amount": "1"}, 400, "validation_error"),
    ({"amount": 1, "expires_at": "2026-03-10T11:00:00+00:00"}, 422, "validation_error"),
    ({"amount": 1, "expires_at": "2026-03-11T11:00:00"}, 400, "validation_error"),
    ({"amount": 1, "priority": True}, 400, "validation_error"),
    ({"amount": 1, "priority": -1}, 400, "validation_error"),
    ({"amount": 1, "colour": "red"}, 400, "validation_error"),
])
def test_a_bad_grant_is_a_4xx_and_writes_nothing(api, alice, body, status, kind):
    assert_error(api.post("/api/v1/users/alice/grants", body), status, kind)
    assert not Grant.objects.exists()


def test_a_grant_for_a_user_without_a_budget_or_a_missing_team_is_404(api, alice):
    assert_error(api.post("/api/v1/users/bob/grants", {"amount": 1}), 404, "not_found")
    assert api.post("/api/v1/teams/nobody/grants", {"amount": 1}).status_code in (404, 422)
    assert not Grant.objects.exists()


# --- admission and payment ------------------------------------------------------------------------


def test_a_grant_is_used_after_the_budget_and_the_ledger_says_which_grant_paid(api, alice):
    grant = give(api, {"amount": 0.5})

    assert spend_times(api, "0.05", 21) == [201] * 20 + [402]

    budget = UserBudget.objects.get(pk=alice.pk)
    assert (budget.current_spend, budget.granted) == (Decimal("1.0"), Decimal("0.5"))
    assert Grant.objects.get(pk=grant["id"]).used == Decimal("0.5") == paid_by(grant["id"])
    paying = list(GrantUse.objects.order_by("event_id").values_list("event_id", flat=True))
    assert paying == list(CostEvent.objects.order_by("id").values_list("id", flat=True)[10:])  # the last ten
    refusal = body_of(spend(api, "0.05"))["error"]
    assert refusal["scope"] == "user"


def test_grants_are_used_by_priority_then_earliest_expiry_and_one_call_may_take_from_two(api, alice):
    late = give(api, {"amount": 1, "expires_at": (START + timedelta(days=20)).isoformat()})
    soon = give(api, {"amount": 0.03, "expires_at": (START + timedelta(days=2)).isoformat()})
    first = give(api, {"amount": 0.01, "priority": 0})
    assert spend(api, "0.5").status_code == 201  # the budget pays

    assert spend(api, "0.07").status_code == 201

    assert (paid_by(first["id"]), paid_by(soon["id"]), paid_by(late["id"])) == (
        Decimal("0.01"), Decimal("0.03"), Decimal("0.03"))
    event = CostEvent.objects.latest("id")
    assert GrantUse.objects.filter(event=event).aggregate(total=Sum("amount"))["total"] == Decimal("0.07")
    detail = body_of(api.get(f"/api/v1/grants/{late['id']}"))
    assert [(use["event_id"], use["amount"]) for use in detail["uses"]] == [(event.pk, Decimal("0.03"))]


def test_a_call_partly_over_the_budget_is_paid_by_both(api, alice):
    grant = give(api, {"amount": 1})
    assert spend(api, "0.45").status_code == 201

    answer = spend(api, "0.1")

    assert answer.status_code == 201
    assert paid_by(grant["id"]) == Decimal("0.05")
    assert UserBudget.objects.get(pk=alice.pk).granted == Decimal("0.05")


def test_a_grant_expiring_mid_window_stops_admitting_at_its_instant_and_its_rest_is_void(api, alice, time_machine):
    ends = START + timedelta(hours=3)
    grant = give(api, {"amount": 0.5, "expires_at": ends.isoformat()})
    assert spend(api, "0.5").status_code == 201
    time_machine.move_to(ends - MICRO, tick=False)
    assert spend(api, "0.1").status_code == 201  # the grant pays

    time_machine.move_to(ends, tick=False)

    assert spend(api, "0.1").status_code == 402
    assert grants_expire(at=ends) == 1
    voided = Grant.objects.get(pk=grant["id"])
    assert (voided.used, voided.voided, voided.voided_at) == (Decimal("0.1"), Decimal("0.4"), ends)
    assert AuditLog.objects.filter(action="grant_expire").count() == 1
    assert body_of(api.get(f"/api/v1/grants/{grant['id']}"))["status"] == "expired"
    assert grants_expire(at=ends + timedelta(hours=1)) == 0


def test_a_revoked_grant_admits_nothing_more(api, alice):
    grant = give(api, {"amount": 0.5})
    assert spend(api, "0.5").status_code == 201

    revoked = body_of(api.delete(f"/api/v1/grants/{grant['id']}"))

    assert (revoked["status"], revoked["voided"]) == ("void", Decimal("0.5"))
    assert spend(api, "0.01").status_code == 402


def test_a_reservation_counts_the_grant_and_its_settle_pays_from_it(api, alice):
    grant = give(api, {"amount": 0.5})
    made = [api.post("/api/v1/users/alice/reservations", {"model": "gpt-4o", "estimated_cost": 0.1})
            for _ in range(11)]
    assert [response.status_code for response in made] == [201] * 10 + [402]

    for response in made[:10]:
        settled = api.post(f"/api/v1/reservations/{body_of(response)['id']}/settle", {"cost": 0.1})
        assert settled.status_code == 200, settled.content

    assert paid_by(grant["id"]) == Decimal("0.5")
    budget = UserBudget.objects.get(pk=alice.pk)
    assert (budget.current_spend, budget.granted, budget.held) == (Decimal("1.0"), Decimal("0.5"), 0)


def test_a_team_grant_extends_the_team_limit_not_the_users_budget(api, project, make_budget, time_machine):
    time_machine.move_to(START, tick=False)
    make_budget("alice", total_budget="10")
    team(project, "research", "alice")
    cap = limit(project, "team", "research", amount="0.1")
    made = api.post("/api/v1/teams/research/grants", {"amount": 0.1})
    assert made.status_code == 201, made.content

    assert spend_times(api, "0.05", 5) == [201] * 4 + [402]

    cap.refresh_from_db()
    assert (cap.used, cap.granted) == (Decimal("0.2"), Decimal("0.1"))
    assert paid_by(body_of(made)["id"]) == Decimal("0.1")
    assert UserBudget.objects.get(user_id="alice").granted == 0
    shown = body_of(api.get(f"/api/v1/limits/{cap.pk}"))
    assert (shown["granted"], shown["grants"], shown["remaining"]) == (Decimal("0.1"), 0, 0)


def test_a_user_limit_on_one_model_is_not_extended(api, alice):
    make = limit(alice.project, "user", "alice", amount="0.05", model="gpt-4o")
    give(api, {"amount": 1})

    assert spend_times(api, "0.05", 2) == [201, 402]
    make.refresh_from_db()
    assert make.granted == 0


def test_a_new_grant_resolves_a_fired_threshold(api, alice, queued):
    user_limit = limit(alice.project, "user", "alice", amount="1", at=START)
    alice.total_budget = Decimal(10)
    alice.save(update_fields=["total_budget"])
    assert spend(api, "1").status_code == 201
    assert Alert.objects.filter(kind=Alert.Kind.THRESHOLD, threshold=100).exists()

    give(api, {"amount": 1})

    resolved = Alert.objects.filter(kind=Alert.Kind.RESOLVED)
    assert sorted(resolved.values_list("threshold", flat=True)) == [80, 100]
    assert body_of(api.get(f"/api/v1/limits/{user_limit.pk}"))["grants"] == Decimal(1)


# --- grace -----------------------------------------------------------------------------------------------


def test_grace_admits_to_the_limit_times_one_plus_grace_and_no_further_and_alerts_at_100(api, alice, queued):
    alice.total_budget = Decimal(10)
    alice.save(update_fields=["total_budget"])
    made = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": 1, "grace_percent": 10})
    assert made.status_code == 201, made.content
    assert body_of(made)["grace_percent"] == 10

    assert spend_times(api, "0.1", 12) == [201] * 11 + [402]

    assert Alert.objects.filter(kind=Alert.Kind.THRESHOLD, threshold=100).count() == 1
    assert [api.post("/api/v1/users/alice/reservations", {"estimated_cost": 0.01}).status_code] == [402]


def test_grace_is_changed_and_removed_by_patch(api, alice):
    made = body_of(api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": 1}))

    assert body_of(api.call("PATCH", f"/api/v1/limits/{made['id']}", {"grace_percent": 20}))["grace_percent"] == 20
    assert body_of(api.call("PATCH", f"/api/v1/limits/{made['id']}", {"grace_percent": None}))["grace_percent"] is None
    assert_error(api.call("PATCH", f"/api/v1/limits/{made['id']}", {"grace_percent": 101}), 400, "validation_error")
    assert_error(api.call("PATCH", f"/api/v1/limits/{made['id']}", {"grace_percent": 1.5}), 400, "validation_error")


# --- rollover -------------------------------------------------------------------------------------------


def rolling_limit(api: ApiClient, amount: str = "1", rollover: str = "0.5") -> Limit:
    made = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": float(amount),
                                       "window": "day", "rollover": {"max": float(rollover)}})
    assert made.status_code == 201, made.content
    assert body_of(made)["rollover"] == {"max": Decimal(rollover)}
    return Limit.objects.get(pk=body_of(made)["id"])


def test_rollover_at_the_reset_becomes_one_grant_until_the_next_windows_end(api, alice, time_machine):
    alice.total_budget = Decimal(10)
    alice.save(update_fields=["total_budget"])
    day = rolling_limit(api, "1", "0.5")
    assert spend(api, "0.7").status_code == 201  # 0.3 unused
    midnight = datetime(2026, 3, 11, tzinfo=UTC)

    assert limits_reset_due(at=midnight) == 1
    assert limits_reset_due(at=midnight + timedelta(minutes=1)) == 0

    (grant,) = Grant.objects.all()
    assert (grant.scope, grant.subject, grant.amount, grant.source, grant.limit_id) == (
        "user", "alice", Decimal("0.3"), "rollover", day.pk)
    assert grant.expires_at == datetime(2026, 3, 12, tzinfo=UTC)
    time_machine.move_to(midnight + timedelta(hours=1), tick=False)
    assert spend_times(api, "0.7", 2) == [201, 402]  # 1 + 0.3 of room: 0.7 fits, 1.4 does not
    assert AuditLog.objects.filter(action="grant_rollover").count() == 1


def test_rollover_keeps_at_most_its_max_and_nothing_when_all_was_used(api, alice, time_machine):
    alice.total_budget = Decimal(10)
    alice.save(update_fields=["total_budget"])
    rolling_limit(api, "1", "0.5")

    time_machine.move_to(datetime(2026, 3, 11, 1, tzinfo=UTC), tick=False)
    assert spend(api, "1").status_code == 201  # lazily: the window starts first, 1 unused → 0.5 rolls over
    assert list(Grant.objects.values_list("amount", flat=True)) == [Decimal("0.5")]

    limits_reset_due(at=datetime(2026, 3, 12, tzinfo=UTC))  # the day's 1 was used by the limit: none
    assert Grant.objects.count() == 1


@pytest.mark.parametrize(("body", "status"), [
    ({"scope": "key", "subject": "test key", "limit": 1, "rollover": {"max": 1}}, 422),
    ({"scope": "user", "subject": "alice", "limit": 1, "unit": "tokens", "rollover": {"max": 1}}, 422),
    ({"scope": "user", "subject": "alice", "limit": 1, "window": "lifetime", "rollover": {"max": 1}}, 422),
    ({"scope": "user", "subject": "alice", "limit": 1, "rollover": {"max": 0}}, 400),  # the schema says > 0
    ({"scope": "user", "subject": "alice", "limit": 1, "rollover": {"most": 1}}, 400),
    ({"scope": "user", "subject": "alice", "limit": 1, "grace_percent": -1}, 400),
])
def test_a_bad_rollover_or_grace_is_a_4xx_and_writes_nothing(api, alice, body, status):
    response = api.post("/api/v1/limits", body)
    assert response.status_code == status, response.content
    assert not Limit.objects.exists()


def test_a_check_counts_the_grants_of_the_budget_and_of_a_limit(api, alice):
    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 0.6}))["allowed"] is False
    give(api, {"amount": 0.5})
    day = limit(alice.project, "user", "alice", amount="0.2", window="day", at=START)

    allowed = body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 0.6}))

    assert (allowed["allowed"], allowed["remaining"]) == (True, Decimal("1.0"))
    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 1.01}))["allowed"] is False
    assert spend(api, "0.6").status_code == 201  # over the day's $0.20 too: the grant pays $0.40 of it
    day.refresh_from_db()
    assert (day.used, day.granted, UserBudget.objects.get(pk=alice.pk).granted) == (
        Decimal("0.6"), Decimal("0.4"), Decimal("0.4"))
