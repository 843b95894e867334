"""LiteLLM's hosted /set_budget: the first save of users the project does not have yet.

New budgets are inserted with the spend their first record carries (their baseline is empty,
so the merge is known before the insert), in a fixed number of statements however many users.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from budgets import services
from budgets.models import AuditLog, CostEvent, ModelSpend, Project, SpendDay, UserBudget
from budgets.services import hosted as hosted_service
from budgets.services import ledger
from tests.api_helpers import db_state
from tests.test_hosted import Hosted, record

pytestmark = pytest.mark.django_db

FLOATS = {"current_cost": 0.3, "model_cost": {"gpt-4o": 0.1, "claude": 0.2}}


@pytest.fixture
def hosted(api_key):
    return Hosted(api_key)


def test_a_first_save_writes_each_budget_with_its_spend_and_baseline(hosted, project):
    response = hosted.set({"alice": record(10, duration=7, **FLOATS), "bob": record(5)})

    assert response.status_code == 200, response.content
    alice = UserBudget.objects.get(user_id="alice")
    assert (alice.current_spend, alice.total_budget, alice.duration) == (Decimal("0.3"), Decimal(10), "weekly")
    assert alice.hosted_period_start == alice.period_start
    # What the client reported, and what this protocol recorded (a client reset takes back only that).
    costs = {"gpt-4o": "0.100000000000", "claude": "0.200000000000"}
    assert alice.hosted_model_cost == {**costs, " client": {"last_updated_at": "1700000000.0", "recorded": costs}}
    assert dict(ModelSpend.objects.filter(budget=alice).values_list("model", "spend")) == {
        "gpt-4o": Decimal("0.1"), "claude": Decimal("0.2")}
    bob = UserBudget.objects.get(user_id="bob")
    assert (bob.current_spend, bob.hosted_model_cost, bob.hosted_period_start) == (Decimal(0), {}, None)
    project.refresh_from_db()
    assert project.current_spend == Decimal("0.3")
    assert sorted(CostEvent.objects.values_list("user_id", "model", "cost", "source", "budget_id")) == [
        ("alice", "claude", Decimal("0.2"), "hosted", alice.pk),
        ("alice", "gpt-4o", Decimal("0.1"), "hosted", alice.pk),
    ]
    assert sorted(SpendDay.objects.values_list("user_id", "model", "spend", "events")) == [
        ("alice", "claude", Decimal("0.2"), 1), ("alice", "gpt-4o", Decimal("0.1"), 1)]
    # The audit shows the budget as created; the spend it carried is in the ledger.
    audits = {a.user_id: a for a in AuditLog.objects.filter(action="budget_create")}
    assert set(audits) == {"alice", "bob"}
    assert audits["alice"].budget_id == alice.pk and audits["alice"].actor.startswith("hosted:key:")
    assert audits["alice"].after["current_spend"] == "0" and audits["alice"].after["duration"] == "weekly"


def test_the_same_dict_saved_again_after_a_first_save_writes_nothing(hosted):
    user_dict = {"alice": record(10, duration=1, **FLOATS), "bob": record(5, current_cost=0.5)}
    hosted.set(user_dict)
    before = db_state()

    assert hosted.set(user_dict).status_code == 200
    assert db_state() == before


def test_a_failure_part_way_through_a_first_save_writes_nothing(hosted, monkeypatch):
    before = db_state()

    def fail(*args, **kwargs):
        raise OverflowError("too large for the column")

    # Budgets, model spend and ledger rows are written by then.
    monkeypatch.setattr(ledger, "rollups_add_events", fail)

    response = hosted.set({"alice": record(**FLOATS), "bob": record(current_cost=1.0)})

    assert response.status_code == 400
    assert db_state() == before


def test_a_user_created_meanwhile_through_the_native_api_is_merged_as_an_existing_budget(
    hosted, project, monkeypatch,
):
    real = hosted_service._serialize

    def native_create_first(locked: Project) -> None:
        # After the unlocked read saw no "alice", before the insert: the insert must skip her.
        services.budget_set(project=locked, user_id="alice", total_budget="3", actor="key:other")
        real(locked)

    monkeypatch.setattr(hosted_service, "_serialize", native_create_first)

    response = hosted.set({"alice": record(10, **FLOATS), "bob": record(5, current_cost=0.5)})

    assert response.status_code == 200, response.content
    alice = UserBudget.objects.get(user_id="alice")
    assert (alice.total_budget, alice.current_spend) == (Decimal(10), Decimal("0.3"))
    assert UserBudget.objects.count() == 2
    actions = list(AuditLog.objects.filter(user_id="alice").order_by("pk").values_list("action", "actor"))
    assert [action for action, _ in actions] == ["budget_create", "budget_update"]
    assert actions[0][1] == "key:other" and actions[1][1].startswith("hosted:key:")
    assert AuditLog.objects.filter(user_id="bob", action="budget_create").count() == 1
    project.refresh_from_db()
    assert project.current_spend == Decimal("0.8")


def _first_save_statements(hosted: Hosted, users: int, prefix: str) -> int:
    user_dict = {f"{prefix}{n}": record(10, duration=1, **FLOATS) for n in range(users)}
    with CaptureQueriesContext(connection) as queries:
        assert hosted.set(user_dict).status_code == 200
    return len(queries)


@pytest.mark.postgres
def test_a_first_save_takes_as_many_statements_for_500_users_as_for_5(hosted, django_assert_max_num_queries):
    few = _first_save_statements(hosted, 5, "few-")
    with django_assert_max_num_queries(few):
        _first_save_statements(hosted, 500, "many-")
    assert UserBudget.objects.count() == 505
    assert CostEvent.objects.count() == 1010


@pytest.mark.parametrize(("bad", "message"), [
    ({"duration": True}, "user_dict['carol'].duration: duration in days must be a whole number"),
    ({"duration": 1e7}, "user_dict['carol'].duration must be a whole number of days"),
    ({"duration": 2.5}, "user_dict['carol'].duration must be a whole number of days"),
    ({"last_updated_at": -1}, "user_dict['carol'].last_updated_at must be Unix seconds"),
    ({"created_at": True}, "user_dict['carol'].created_at must be Unix seconds"),
    ({"total_budget": 1e12}, "user_dict['carol'].total_budget is too large"),
    ({"model_cost": {"gpt-4o": 1e13}}, "user_dict['carol'].model_cost['gpt-4o'] is too large"),
    ({"current_cost": True}, "user_dict['carol'].current_cost must be a non-negative number"),
])
def test_a_bad_value_after_many_good_ones_is_named_with_its_user_and_key(hosted, bad, message):
    user_dict = {f"user-{n}": record(10, duration=1, **FLOATS) for n in range(50)}
    user_dict["carol"] = {**record(10, duration=1, **FLOATS), **bad}
    before = db_state()

    response = hosted.set(user_dict)

    assert response.status_code == 400, response.content
    assert response.json()["message"].startswith(message), response.json()
    assert db_state() == before
