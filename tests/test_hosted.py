"""LiteLLM's hosted protocol (POST /get_budget, POST /set_budget) and its merge rule."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.urls import resolve

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, BudgetPeriod, CostEvent, ModelSpend, UserBudget
from budgets.services import ledger
from tests.api_helpers import body_of, db_state, new_key

pytestmark = pytest.mark.django_db


class Hosted:
    """What LiteLLM's client sends, as it sends it (json.dumps of floats)."""

    def __init__(self, raw_key: str | None, project_name: str = "acme") -> None:
        self.client = Client(enforce_csrf_checks=True)  # the endpoints are CSRF-exempt
        self.raw_key = raw_key
        self.project_name = project_name

    def _post(self, path: str, body: object) -> object:
        headers = {"Authorization": f"Bearer {self.raw_key}"} if self.raw_key else {}
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.client.post(path, data=data, content_type="application/json", headers=headers)

    def get(self, **extra: object) -> object:
        return self._post("/get_budget", {"project_name": self.project_name, **extra})

    def set(self, user_dict: object, **extra: object) -> object:
        return self._post("/set_budget", {"project_name": self.project_name, "user_dict": user_dict, **extra})


@pytest.fixture
def hosted(api_key):
    return Hosted(api_key)


def record(total=10.0, duration=None, current_cost=None, model_cost=None, **extra):
    """A user's record as the client keeps it."""
    rec = {"total_budget": total}
    if duration is not None:
        rec.update(duration=duration, created_at=1700000000.0, last_updated_at=1700000000.0)
    rec.update(extra)
    if current_cost is not None:
        rec["current_cost"] = current_cost
    if model_cost is not None:
        rec["model_cost"] = model_cost
    return rec


def spend_of(user="alice"):
    budget = UserBudget.objects.get(user_id=user)
    return budget.current_spend, dict(ModelSpend.objects.filter(budget=budget).values_list("model", "spend"))


def native(project, cost, user="alice", model="native-model"):
    services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(cost), source="api")


# --- get_budget ----------------------------------------------------------------------------------


def test_a_project_without_users_answers_success_with_empty_data(hosted):
    response = hosted.get()

    assert response.status_code == 200
    assert body_of(response) == {"status": "success", "data": {}}


def test_get_budget_serves_every_user_as_the_client_keeps_it(hosted, project, make_budget):
    make_budget("alice", "10", "daily")
    make_budget("bob", "2.5")
    native(project, "0.25", model="gpt-4o")

    response = hosted.get()

    assert response.status_code == 200
    data = body_of(response)["data"]
    alice = data["alice"]
    assert alice["total_budget"] == 10 and alice["duration"] == 1
    assert alice["current_cost"] == Decimal("0.25") and alice["model_cost"] == {"gpt-4o": Decimal("0.25")}
    budget = UserBudget.objects.get(user_id="alice")
    assert alice["created_at"] == Decimal(repr(budget.created_at.timestamp()))
    assert alice["last_updated_at"] == Decimal(repr(budget.period_start.timestamp()))
    assert "duration" not in data["bob"] and data["bob"]["total_budget"] == Decimal("2.5")
    assert b'"current_cost":0.25' in response.content  # a JSON number, not a string


def test_get_budget_sets_each_users_baseline_to_what_it_served(hosted, project, make_budget):
    make_budget("alice")
    native(project, "0.5", model="gpt-4o")

    hosted.get()

    budget = UserBudget.objects.get()
    assert budget.hosted_model_cost == {"gpt-4o": "0.500000000000"}
    assert budget.hosted_period_start == budget.period_start


@pytest.mark.parametrize("days", [1, 7, 28, 365])
def test_durations_round_trip_as_days(hosted, days):
    hosted.set({"alice": record(duration=days)})

    assert body_of(hosted.get())["data"]["alice"]["duration"] == days


# --- authentication and errors ------------------------------------------------------------------


@pytest.mark.parametrize("raw_key", [None, "bm_wrong", "not-a-key"])
def test_a_missing_or_bad_key_is_401(project, raw_key):
    client = Hosted(raw_key)
    for response in (client.get(), client.set({"alice": record()})):
        assert response.status_code == 401
        assert body_of(response)["status"] == "error"
    assert not UserBudget.objects.exists()


def test_a_revoked_key_is_401(project):
    client = Hosted(new_key(project))
    services.api_key_revoke(key=project.api_keys.get(), actor="test")

    assert client.get().status_code == 401


def test_another_projects_name_is_403_and_writes_nothing(project, make_budget):
    other = services.project_create(name="other")
    make_budget("alice", in_project=other)
    client = Hosted(new_key(project), project_name="other")
    before = db_state()

    for response in (client.get(), client.set({"alice": record(model_cost={"x": 1.0})})):
        assert response.status_code == 403
        assert body_of(response)["status"] == "error"
        assert b"alice" not in response.content
    assert db_state() == before


@pytest.mark.parametrize("body", [
    "{", "[]", '{"project_name": 5}', "{}", '{"project_name": "acme", "user_dict": NaN}',
])
def test_a_bad_body_is_400_in_the_hosted_shape(hosted, body):
    for path in ("/get_budget", "/set_budget"):
        response = hosted._post(path, body)
        assert response.status_code == 400, (path, response.content)
        assert body_of(response)["status"] == "error"
        assert body_of(response)["message"]


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_only_post_is_allowed(hosted, method):
    response = getattr(hosted.client, method)("/get_budget")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert body_of(response)["status"] == "error"


@pytest.mark.parametrize(("user_dict", "complaint"), [
    ([], "user_dict must be an object"),
    ({"alice": 5}, "must be an object"),
    ({"alice": {}}, "total_budget is required"),
    ({"alice": record(total=-1)}, "total_budget"),
    ({"alice": record(total="10")}, "total_budget"),
    ({"alice": record(total=True)}, "total_budget"),
    ({"alice": record(duration=0)}, "duration"),
    ({"alice": record(duration=1.5)}, "duration"),
    ({"alice": record(duration="daily")}, "duration"),
    ({"alice": record(current_cost=-0.1)}, "current_cost"),
    ({"alice": record(model_cost=[1])}, "model_cost"),
    ({"alice": record(model_cost={"gpt-4o": "0.1"})}, "model_cost"),
    ({"alice": record(model_cost={"gpt-4o": -0.1})}, "model_cost"),
    ({"alice": record(model_cost={"": 0.1})}, "model"),
    ({"alice": record(created_at="yesterday")}, "created_at"),
    ({"alice": record(created_at=1e20)}, "created_at"),
    ({"": record()}, "user"),
    ({"a" * 256: record()}, "user"),
])
def test_an_invalid_user_dict_is_400_and_writes_nothing(hosted, project, make_budget, user_dict, complaint):
    make_budget("zed", "5")
    before = db_state()

    # A valid user first: the whole dict is checked before anything is written.
    response = hosted.set({"bob": record(model_cost={"gpt-4o": 1.0}), **(user_dict if isinstance(user_dict, dict)
                                                                          else {})}
                          if isinstance(user_dict, dict) else user_dict)

    assert response.status_code == 400, response.content
    answer = body_of(response)
    assert answer["status"] == "error" and complaint in answer["message"]
    assert db_state() == before


def test_set_budget_with_nan_writes_nothing(hosted):
    response = hosted._post("/set_budget", '{"project_name": "acme", "user_dict": {"a": {"total_budget": NaN}}}')

    assert response.status_code == 400
    assert not UserBudget.objects.exists()


# --- set_budget: budgets --------------------------------------------------------------------------


def test_set_budget_creates_users_with_their_durations(hosted):
    response = hosted.set({"alice": record(10, duration=1), "bob": record(5), "carol": record(3, duration=30),
                           "dave": record(3, duration=10), "erin": record(1, duration=365.0)})

    assert response.status_code == 200
    assert body_of(response) == {"status": "success"}
    budgets = {b.user_id: (b.total_budget, b.duration, b.duration_days) for b in UserBudget.objects.all()}
    assert budgets == {
        "alice": (Decimal(10), "daily", None), "bob": (Decimal(5), "none", None),
        "carol": (Decimal(3), "monthly", None), "dave": (Decimal(3), "days", 10),
        "erin": (Decimal(1), "yearly", None),
    }
    assert AuditLog.objects.filter(action="budget_create", actor__startswith="hosted:key:").count() == 5


def test_a_changed_budget_replaces_it_and_keeps_the_spend(hosted, project):
    hosted.set({"alice": record(10, duration=7)})
    native(project, "2")

    hosted.set({"alice": record(20, duration=7)})

    budget = UserBudget.objects.get()
    assert (budget.total_budget, budget.duration, budget.current_spend) == (Decimal(20), "weekly", Decimal(2))


def test_saving_an_unchanged_dict_writes_nothing(hosted, project):
    user_dict = {"alice": record(10, duration=1, current_cost=0.5, model_cost={"gpt-4o": 0.5})}
    hosted.set(user_dict)
    before = db_state()

    hosted.set(user_dict)
    hosted.set(user_dict)

    assert db_state() == before


def test_a_user_missing_from_the_dict_is_left_alone(hosted, project, make_budget):
    make_budget("zed", "5")
    native(project, "1", user="zed")

    hosted.set({"alice": record()})

    assert UserBudget.objects.get(user_id="zed").current_spend == Decimal(1)
    assert UserBudget.objects.count() == 2


def test_a_days_budget_the_client_echoes_as_30_is_not_changed_to_monthly(hosted, project):
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), duration="days",
                        duration_days=30, actor="test")
    served = body_of(hosted.get())["data"]["alice"]
    before = db_state()

    hosted.set({"alice": json.loads(json.dumps(served, default=float))})

    assert db_state() == before


# --- set_budget: spend --------------------------------------------------------------------------


def test_growth_of_each_models_cost_is_recorded_in_the_ledger(hosted):
    hosted.set({"alice": record()})
    hosted.set({"alice": record(current_cost=0.3, model_cost={"gpt-4o": 0.1, "gpt-4o-mini": 0.2})})
    hosted.set({"alice": record(current_cost=0.35, model_cost={"gpt-4o": 0.15, "gpt-4o-mini": 0.2})})

    assert spend_of() == (Decimal("0.35"), {"gpt-4o": Decimal("0.15"), "gpt-4o-mini": Decimal("0.2")})
    events = list(CostEvent.objects.order_by("id").values_list("model", "cost", "source", "prompt_tokens"))
    assert events == [("gpt-4o", Decimal("0.1"), "hosted", 0), ("gpt-4o-mini", Decimal("0.2"), "hosted", 0),
                      ("gpt-4o", Decimal("0.05"), "hosted", 0)]


def test_a_new_user_arriving_with_costs_records_them(hosted):
    hosted.set({"alice": record(current_cost=0.25, model_cost={"gpt-4o": 0.25})})

    assert spend_of() == (Decimal("0.25"), {"gpt-4o": Decimal("0.25")})


def test_spend_from_the_native_api_between_saves_is_never_dropped(hosted, project):
    hosted.set({"alice": record(current_cost=0.1, model_cost={"gpt-4o": 0.1})})
    native(project, "5", model="gpt-4o")  # the client does not know about this

    hosted.set({"alice": record(current_cost=0.3, model_cost={"gpt-4o": 0.3})})

    assert spend_of() == (Decimal("5.3"), {"gpt-4o": Decimal("5.3")})


def test_after_get_budget_growth_counts_from_what_was_served(hosted, project, make_budget):
    make_budget("alice")
    native(project, "1", model="gpt-4o")
    served = body_of(hosted.get())["data"]["alice"]
    native(project, "2", model="gpt-4o")  # after the client loaded

    client_value = float(served["model_cost"]["gpt-4o"]) + 0.5
    hosted.set({"alice": record(current_cost=client_value, model_cost={"gpt-4o": client_value})})

    assert spend_of()[0] == Decimal("3.5")


def test_current_cost_beyond_model_cost_is_recorded_as_unknown(hosted):
    hosted.set({"alice": record(current_cost=0.5, model_cost={"gpt-4o": 0.2})})

    assert spend_of() == (Decimal("0.5"), {"gpt-4o": Decimal("0.2"), "unknown": Decimal("0.3")})


def test_current_cost_below_model_cost_is_ignored(hosted):
    hosted.set({"alice": record(current_cost=0.1, model_cost={"gpt-4o": 0.2})})

    assert spend_of() == (Decimal("0.2"), {"gpt-4o": Decimal("0.2")})


def test_current_cost_alone_is_recorded_as_unknown(hosted):
    hosted.set({"alice": record(current_cost=0.5)})
    hosted.set({"alice": record(current_cost=0.7)})

    assert spend_of() == (Decimal("0.7"), {"unknown": Decimal("0.7")})
    assert list(CostEvent.objects.order_by("id").values_list("cost", flat=True)) == [Decimal("0.5"), Decimal("0.2")]


def test_float_rounding_in_the_clients_sums_is_not_spend(hosted):
    total = 0.1 + 0.2  # 0.30000000000000004
    hosted.set({"alice": record(current_cost=total, model_cost={"a": 0.1, "b": 0.2})})
    hosted.set({"alice": record(current_cost=total, model_cost={"a": 0.1, "b": 0.2})})

    assert spend_of()[0] == Decimal("0.3")
    assert CostEvent.objects.count() == 2


def test_a_value_echoed_back_with_float_rounding_is_neither_growth_nor_a_reset(hosted, project, make_budget):
    make_budget("alice", "100000")
    native(project, "12345.678901234567", model="gpt-4o")  # more digits than a double keeps
    served = body_of(hosted.get())["data"]["alice"]
    before = db_state()

    echoed = json.loads(json.dumps(served, default=float))
    hosted.set({"alice": echoed})

    assert db_state() == before


def test_a_lower_cost_without_evidence_of_a_reset_is_an_out_of_order_save_and_ignored(hosted, project):
    # The client saves from a new thread after each change: an older save can land after a newer one.
    hosted.set({"alice": record(duration=28, current_cost=0.5, model_cost={"gpt-4o": 0.5})})
    native(project, "1")
    before = db_state()

    hosted.set({"alice": record(duration=28, current_cost=0.2, model_cost={"gpt-4o": 0.2})})

    assert db_state() == before
    hosted.set({"alice": record(duration=28, current_cost=0.6, model_cost={"gpt-4o": 0.6})})
    assert spend_of() == (Decimal("1.6"), {"native-model": Decimal(1), "gpt-4o": Decimal("0.6")})
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()


def test_a_later_last_updated_at_is_the_clients_reset_which_takes_away_only_hosted_spend(hosted, project):
    hosted.set({"alice": record(duration=28, current_cost=0.5, model_cost={"gpt-4o": 0.5})})
    native(project, "1")

    # reset_on_duration: costs to zero, last_updated_at to now; then a call of 0.2.
    hosted.set({"alice": record(duration=28, current_cost=0.2, model_cost={"gpt-4o": 0.2},
                                last_updated_at=1700100000.0)})

    assert spend_of() == (Decimal("1.2"), {"native-model": Decimal(1), "gpt-4o": Decimal("0.2")})
    reset = AuditLog.objects.get(action="budget_reset_hosted")
    assert reset.before["current_spend"] == "1.500000000000"
    assert reset.before["removed"] == {"gpt-4o": "0.500000000000"}
    assert reset.after["current_spend"] == "1.200000000000"
    assert CostEvent.objects.count() == 3  # the ledger stays
    assert project.__class__.objects.get().current_spend == Decimal("1.2")

    # The reset's own save, arriving late (same last_updated_at, zero costs), resets nothing more,
    # and a save from before the reset (earlier last_updated_at) is ignored.
    before = db_state()
    hosted.set({"alice": record(duration=28, current_cost=0, model_cost={}, last_updated_at=1700100000.0)})
    hosted.set({"alice": record(duration=28, current_cost=0.9, model_cost={"gpt-4o": 0.9})})
    assert db_state() == before


def test_an_emptied_model_cost_is_the_clients_reset(hosted):
    hosted.set({"alice": record(current_cost=0.5, model_cost={"gpt-4o": 0.5})})

    hosted.set({"alice": record(current_cost=0, model_cost={})})

    assert spend_of() == (Decimal(0), {})
    assert AuditLog.objects.filter(action="budget_reset_hosted").count() == 1


def test_a_user_the_client_never_saw_spend_for_is_not_reset_by_a_zero(hosted, project):
    hosted.set({"alice": record()})
    native(project, "3")

    hosted.set({"alice": record(current_cost=0, model_cost={})})

    assert spend_of()[0] == Decimal(3)
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()


def test_create_budget_again_on_the_client_is_not_a_reset_without_evidence(hosted, project):
    hosted.set({"alice": record(10, current_cost=0.5, model_cost={"gpt-4o": 0.5})})

    hosted.set({"alice": record(20)})  # the client's create_budget replaces the whole record
    budget = UserBudget.objects.get()
    assert (budget.total_budget, budget.current_spend) == (Decimal(20), Decimal("0.5"))

    # Its next saves look like out-of-order ones: spend stays until the client's count passes it.
    hosted.set({"alice": record(20, current_cost=0.1, model_cost={"gpt-4o": 0.1})})
    budget.refresh_from_db()
    assert budget.current_spend == Decimal("0.5")
    hosted.set({"alice": record(20, current_cost=0.7, model_cost={"gpt-4o": 0.7})})
    budget.refresh_from_db()
    assert budget.current_spend == Decimal("0.7")
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()


def test_after_the_servers_own_period_reset_a_client_reset_resets_nothing_more(hosted, project, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, 10, tzinfo=UTC))
    hosted.set({"alice": record(duration=1, current_cost=0.5, model_cost={"gpt-4o": 0.5})})
    time_machine.move_to(datetime(2030, 1, 2, 0, 5, tzinfo=UTC))
    native(project, "1")  # in the new day, after the server reset the period

    # The client's own reset_on_duration (last_updated_at moves to now), then a new call of 0.1.
    hosted.set({"alice": record(duration=1, current_cost=0.1, model_cost={"gpt-4o": 0.1},
                                last_updated_at=1893542700.0)})

    assert spend_of() == (Decimal("1.1"), {"native-model": Decimal(1), "gpt-4o": Decimal("0.1")})
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()
    assert BudgetPeriod.objects.get().spend == Decimal("0.5")


def test_after_the_servers_period_reset_client_growth_still_counts(hosted, time_machine):
    time_machine.move_to(datetime(2030, 1, 1, 10, tzinfo=UTC))
    hosted.set({"alice": record(duration=1, current_cost=0.5, model_cost={"gpt-4o": 0.5})})
    time_machine.move_to(datetime(2030, 1, 2, 0, 5, tzinfo=UTC))

    hosted.set({"alice": record(duration=1, current_cost=0.75, model_cost={"gpt-4o": 0.75})})

    assert spend_of() == (Decimal("0.25"), {"gpt-4o": Decimal("0.25")})


def test_a_failure_part_way_through_rolls_back_the_whole_dict(hosted, monkeypatch):
    hosted.set({"alice": record(), "bob": record()})
    before = db_state()
    real = ledger._model_spend_add

    def fail_after_writing(*args, **kwargs):
        real(*args, **kwargs)  # budgets, ledger events and spend written: then the last step fails
        raise OverflowError("too large for the column")

    monkeypatch.setattr(ledger, "_model_spend_add", fail_after_writing)

    response = hosted.set({"alice": record(model_cost={"x": 1.0}), "bob": record(model_cost={"x": 1.0})})

    assert response.status_code == 400
    assert db_state() == before


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_saves_of_the_same_dict_at_once_record_the_growth_once(project):
    raw = new_key(project)
    Hosted(raw).set({"alice": record()})
    barrier = threading.Barrier(2)
    statuses = []

    def save():
        try:
            barrier.wait()
            statuses.append(Hosted(raw).set({"alice": record(current_cost=1.0, model_cost={"x": 1.0})}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=save) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200, 200]
    assert spend_of()[0] == Decimal(1)
    assert CostEvent.objects.count() == 1


def test_an_api_base_ending_in_a_slash_still_works(hosted):
    # api_base "http://host/" makes the client post to "//get_budget" (the test client would
    # read that as a host name, so the route is checked directly).
    assert resolve("//get_budget").url_name == "hosted_get_budget"
    assert resolve("//set_budget").url_name == "hosted_set_budget"
    assert hosted._post("/get_budget/", {"project_name": "acme"}).status_code == 200


def test_a_late_create_budget_save_does_not_reset_spend_recorded_after_it(hosted, project):
    # The client saves in background threads: create_budget's save can land after update_cost's.
    hosted.set({"alice": record(duration=1, current_cost=0.5, model_cost={"gpt-4o": 0.5})})
    late = hosted.set({"alice": record(duration=1)})
    hosted.set({"alice": record(duration=1, current_cost=0.7, model_cost={"gpt-4o": 0.7})})

    assert late.status_code == 200
    assert spend_of("alice") == (Decimal("0.7"), {"gpt-4o": Decimal("0.7")})
    assert sum(CostEvent.objects.values_list("cost", flat=True)) == Decimal("0.7")
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()


@pytest.mark.slow
def test_a_user_dict_over_1_mib_is_merged(hosted, project):
    user_dict = {f"user-{n:05d}": record(10, duration=1, current_cost=0.001, model_cost={"gpt-4o-mini": 0.001})
                 for n in range(8000)}
    assert len(json.dumps(user_dict)) > 1024 * 1024  # the native API's limit

    response = hosted.set(user_dict)

    assert response.status_code == 200, response.content
    assert UserBudget.objects.count() == 8000
    project.refresh_from_db()
    assert project.current_spend == Decimal(8)
    assert CostEvent.objects.filter(source="hosted").count() == 8000
    assert AuditLog.objects.filter(action="budget_create").count() == 8000
    assert len(body_of(hosted.get())["data"]) == 8000


def test_a_body_over_hosted_max_body_bytes_is_413_in_the_hosted_shape(hosted, settings):
    settings.HOSTED_MAX_BODY_BYTES = 1000

    response = hosted.set({f"user-{n}": record() for n in range(100)})

    assert response.status_code == 413
    assert body_of(response)["status"] == "error" and "HOSTED_MAX_BODY_BYTES" in body_of(response)["message"]
    assert not UserBudget.objects.exists()


def test_alerts_are_written_for_thresholds_a_merge_crosses(hosted, project):
    from budgets.models import Alert

    hosted.set({"alice": record(1, current_cost=0.5, model_cost={"gpt-4o": 0.5}), "bob": record(100)})
    hosted.set({"alice": record(1, current_cost=0.9, model_cost={"gpt-4o": 0.9}),
                "bob": record(100, current_cost=0.1, model_cost={"gpt-4o": 0.1})})

    alerts = list(Alert.objects.values_list("scope", "user_id", "threshold"))
    assert alerts == [("user", "alice", 80)]
