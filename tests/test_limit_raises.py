"""Temporary raises of a limit (issue 22, item 1): exact ends, stacking, windows, early ends, admission."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from budgets.models import AuditLog, CostEvent, Limit, LimitIncrease, Reservation
from budgets.services.limit_raises import limit_raise
from budgets.services.limit_windows import limits_reset_due
from tests.api_helpers import ApiClient, assert_error, body_of, new_key
from tests.test_limits import limit

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
END = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # the raise's end
MICRO = timedelta(microseconds=1)


def make_limit(project, *, amount="1", window="month", unit="usd", subject="alice", model="", at=START) -> Limit:
    """A user limit in its window at START (tests.test_limits.limit)."""
    return limit(project, "user", subject, amount=amount, unit=unit, window=window, model=model, at=at)


@pytest.fixture
def alice(project, make_budget, time_machine) -> Limit:
    time_machine.move_to(START, tick=False)
    make_budget("alice", total_budget="100")
    return make_limit(project)


def raise_by(api: ApiClient, limit: Limit, body: dict) -> dict:
    response = api.post(f"/api/v1/limits/{limit.pk}/increases", body)
    assert response.status_code == 201, response.content
    return body_of(response)


def spend(api: ApiClient, cost: str, user: str = "alice"):
    return api.post(f"/api/v1/users/{user}/costs?enforce=true", {"model": "gpt-4o", "cost": float(cost)})


def figures(limit: Limit) -> tuple[Decimal, Decimal, datetime | None]:
    limit.refresh_from_db()
    return limit.used, limit.raised, limit.raises_end_at


# --- the API ---------------------------------------------------------------------------------------


def test_a_raise_answers_201_and_the_limit_shows_its_effective_amount_and_each_raise(api, alice):
    made = raise_by(api, alice, {"amount": 0.5, "expires_at": END.isoformat()})

    assert made["amount"] == Decimal("0.5") and made["status"] == "active" and made["request_id"] is None
    assert datetime.fromisoformat(made["ends_at"]) == END and made["actor"].startswith("key:")
    shown = body_of(api.get(f"/api/v1/limits/{alice.pk}"))
    assert (shown["limit"], shown["raised"], shown["remaining"]) == (Decimal("1.5"), Decimal("0.5"), Decimal("1.5"))
    assert datetime.fromisoformat(shown["raises_end_at"]) == END
    assert [item["id"] for item in shown["increases"]] == [made["id"]]
    assert figures(alice) == (0, Decimal("0.5"), END)
    audit = AuditLog.objects.get(action="limit_raise")
    assert Decimal(audit.after["amount"]) == Decimal("0.5") == Decimal(audit.after["raised"])
    assert audit.actor.startswith("key:")


def test_a_user_s_limits_and_the_limits_list_answer_the_effective_limit(api, alice):
    raise_by(api, alice, {"amount": 2, "expires_at": END.isoformat()})

    listed = body_of(api.get("/api/v1/limits"))["items"]
    mine = body_of(api.get("/api/v1/users/alice/limits"))["items"]

    assert [(item["limit"], item["raised"]) for item in listed] == [(3, 2)]
    assert [(item["limit"], item["raised"]) for item in mine if item["id"] == alice.pk] == [(3, 2)]


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"amount": 1}, 400, "validation_error"),
    ({"amount": 1, "expires_at": END.isoformat(), "windows": 2}, 400, "validation_error"),
    ({"amount": 1, "expires_at": "2026-03-10T11:00:00Z"}, 422, "validation_error"),
    ({"amount": 1, "expires_at": "2026-03-10T15:00:00"}, 400, "validation_error"),
    ({"amount": 0, "expires_at": END.isoformat()}, 400, "validation_error"),
    ({"amount": -1, "expires_at": END.isoformat()}, 400, "validation_error"),
    ({"amount": "1", "expires_at": END.isoformat()}, 400, "validation_error"),
    ({"amount": 1, "windows": 0}, 400, "validation_error"),
    ({"amount": 1, "windows": 1.5}, 400, "validation_error"),
    ({"amount": 1, "expires_at": END.isoformat(), "extra": 1}, 400, "validation_error"),
])
def test_a_bad_raise_is_a_clear_error_and_writes_nothing(api, alice, body, status, kind):
    assert_error(api.post(f"/api/v1/limits/{alice.pk}/increases", body), status, kind)

    assert LimitIncrease.objects.count() == 0 and figures(alice) == (0, 0, None)
    assert not AuditLog.objects.filter(action="limit_raise").exists()


def test_a_lifetime_limit_takes_a_raise_until_an_instant_but_not_for_windows(api, project, alice):
    lifetime = make_limit(project, window="lifetime", subject="bob")

    assert_error(api.post(f"/api/v1/limits/{lifetime.pk}/increases", {"amount": 1, "windows": 1}), 422,
                 "validation_error")
    raise_by(api, lifetime, {"amount": 1, "expires_at": END.isoformat()})


def test_a_token_limit_is_raised_by_whole_tokens(api, project, alice):
    tokens = make_limit(project, unit="tokens", amount="1000", subject="bob")

    assert_error(api.post(f"/api/v1/limits/{tokens.pk}/increases", {"amount": 0.5, "windows": 1}), 422,
                 "validation_error")
    assert raise_by(api, tokens, {"amount": 500, "windows": 1})["amount"] == 500


def test_another_project_s_limit_cannot_be_raised(api, make_api, alice):
    from budgets import services

    other = services.project_create(name="other")
    theirs = make_limit(other, subject="x")

    assert_error(api.post(f"/api/v1/limits/{theirs.pk}/increases", {"amount": 1, "windows": 1}), 404, "not_found")
    assert LimitIncrease.objects.count() == 0


# --- ending exactly at the instant ------------------------------------------------------------------


def test_a_raise_ends_exactly_at_its_instant_when_a_record_uses_the_limit(api, alice, time_machine):
    raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})

    time_machine.move_to(END - MICRO, tick=False)
    assert spend(api, "1.5").status_code == 201  # past the amount, inside amount + raised
    assert figures(alice) == (Decimal("1.5"), 1, END)

    time_machine.move_to(END, tick=False)
    refused = spend(api, "0.01")

    error = assert_error(refused, 402, "budget_exceeded")
    assert error["limit"]["id"] == alice.pk and error["limit"]["limit"] == 1 and error["limit"]["raised"] == 0
    # Ended lazily before admission; a refusal writes nothing, so the next writer ends it again for good.
    assert figures(alice) == (Decimal("1.5"), 1, END) and CostEvent.objects.count() == 1
    assert api.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 0.01}).status_code == 201
    assert figures(alice) == (Decimal("1.51"), 0, None)
    ended = AuditLog.objects.get(action="limit_raises_end")
    assert ended.actor == "system:lazy-reset" and Decimal(ended.before["raised"]) == 1


def test_a_read_at_the_instant_shows_the_raise_gone(api, alice, time_machine):
    raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})

    time_machine.move_to(END - MICRO, tick=False)
    assert body_of(api.get(f"/api/v1/limits/{alice.pk}"))["limit"] == 2
    assert body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 1.5}))["allowed"]
    time_machine.move_to(END, tick=False)
    assert not body_of(api.post("/api/v1/users/alice/check", {"estimated_cost": 1.5}))["allowed"]
    shown = body_of(api.get(f"/api/v1/limits/{alice.pk}"))
    assert (shown["limit"], shown["raised"], shown["increases"]) == (1, 0, [])
    listed = body_of(api.get(f"/api/v1/limits/{alice.pk}/increases"))["items"]
    assert [item["status"] for item in listed] == ["expired"]


def test_the_sweep_ends_a_raise_exactly_at_its_instant(api, alice):
    raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})

    assert limits_reset_due(at=END - MICRO) == 0
    assert figures(alice) == (0, 1, END)
    assert limits_reset_due(at=END) == 1
    assert figures(alice) == (0, 0, None)
    assert limits_reset_due(at=END) == 0  # once
    assert AuditLog.objects.filter(action="limit_raises_end", actor="system:sweep").count() == 1


def test_stacked_raises_add_up_and_end_one_by_one(api, alice, time_machine):
    later = END + timedelta(hours=2)
    raise_by(api, alice, {"amount": 2, "expires_at": later.isoformat()})
    raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})
    assert figures(alice) == (0, 3, END)

    time_machine.move_to(END - MICRO, tick=False)
    assert spend(api, "3.5").status_code == 201  # 1 + 2 + 1: room for 4
    assert spend(api, "0.6").status_code == 402
    time_machine.move_to(END, tick=False)
    assert spend(api, "0.01").status_code == 402  # 3.5 used of 1 + 2
    assert body_of(api.get(f"/api/v1/limits/{alice.pk}"))["limit"] == 3  # a read ends the first raise for good
    assert figures(alice) == (Decimal("3.5"), 2, later)
    assert limits_reset_due(at=later - MICRO) == 0
    assert limits_reset_due(at=later) == 1
    assert figures(alice) == (Decimal("3.5"), 0, None)


def test_a_raise_for_two_windows_outlives_the_first_window_s_reset_and_ends_with_the_second(
        api, project, alice, time_machine):
    alice.delete()  # only the day limit
    daily = make_limit(project, window="day", amount="1", subject="alice")
    made = raise_by(api, daily, {"amount": 1, "windows": 2})
    first_end = daily.resets_at
    second_end = first_end + timedelta(days=1)
    assert datetime.fromisoformat(made["ends_at"]) == second_end

    assert spend(api, "1.5").status_code == 201
    time_machine.move_to(first_end, tick=False)  # the window resets, the raise goes on
    assert spend(api, "1.9").status_code == 201
    assert figures(daily) == (Decimal("1.9"), 1, second_end)
    time_machine.move_to(second_end - MICRO, tick=False)
    assert spend(api, "0.2").status_code == 402  # 2.1 > 1 + 1
    time_machine.move_to(second_end, tick=False)
    assert spend(api, "1").status_code == 201  # a new window and no raise: 1 of 1
    assert figures(daily) == (1, 0, None)
    assert spend(api, "0.01").status_code == 402


def test_a_raise_for_one_window_ends_with_the_current_window(api, project, alice):
    daily = make_limit(project, window="day", subject="alice")
    made = raise_by(api, daily, {"amount": 1, "windows": 1})
    assert datetime.fromisoformat(made["ends_at"]) == daily.resets_at


# --- ending early ------------------------------------------------------------------------------------


def test_delete_ends_a_raise_early_and_only_once(api, alice, time_machine):
    kept = raise_by(api, alice, {"amount": 2, "expires_at": (END + timedelta(hours=1)).isoformat()})
    made = raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})
    time_machine.move_to(START + timedelta(minutes=5), tick=False)

    response = api.delete(f"/api/v1/limits/{alice.pk}/increases/{made['id']}")

    assert response.status_code == 200
    assert body_of(response)["status"] == "ended"
    assert figures(alice) == (0, 2, END + timedelta(hours=1))
    assert LimitIncrease.objects.get(pk=made["id"]).ended_at == START + timedelta(minutes=5)
    assert AuditLog.objects.get(action="limit_raise_end").after["id"] == made["id"]
    assert_error(api.delete(f"/api/v1/limits/{alice.pk}/increases/{made['id']}"), 409, "conflict")
    assert_error(api.delete(f"/api/v1/limits/{alice.pk}/increases/999999"), 404, "not_found")
    assert spend(api, "3").status_code == 201 and spend(api, "0.01").status_code == 402
    assert kept["status"] == "active"


def test_an_expired_raise_cannot_be_ended_again(api, alice, time_machine):
    made = raise_by(api, alice, {"amount": 1, "expires_at": END.isoformat()})
    time_machine.move_to(END, tick=False)

    assert_error(api.delete(f"/api/v1/limits/{alice.pk}/increases/{made['id']}"), 409, "conflict")


# --- reservations ---------------------------------------------------------------------------------


def test_reservations_are_admitted_up_to_amount_plus_raised_and_refused_beyond(api, alice, time_machine):
    raise_by(api, alice, {"amount": 0.5, "expires_at": END.isoformat()})

    hold = {"model": "gpt-4o", "estimated_cost": 0.5, "ttl_seconds": 86400}
    admitted = [api.post("/api/v1/users/alice/reservations", hold) for _ in range(3)]
    refused = api.post("/api/v1/users/alice/reservations", {"model": "gpt-4o", "estimated_cost": 0.01})

    assert [r.status_code for r in admitted] == [201, 201, 201]
    assert assert_error(refused, 402, "budget_exceeded")["limit"]["limit"] == Decimal("1.5")
    assert Reservation.objects.count() == 3
    time_machine.move_to(END, tick=False)  # the raise ends: the holds stay, nothing more fits
    assert api.post("/api/v1/users/alice/reservations", {"model": "gpt-4o", "estimated_cost": 0.01}).status_code == 402


def test_a_raise_from_the_service_names_its_actor_and_request(project, alice):
    increase = limit_raise(limit=alice, amount=Decimal("0.25"), windows=1, actor="user:boss", at=START)

    assert (increase.actor, increase.request_id, increase.starts_at) == ("user:boss", None, START)
    assert figures(alice) == (0, Decimal("0.25"), alice.resets_at)


def test_a_key_that_raises_a_limit_is_its_own_project_s(project, alice):
    assert ApiClient(new_key(project)).post(f"/api/v1/limits/{alice.pk}/increases",
                                            {"amount": 1, "windows": 1}).status_code == 201
