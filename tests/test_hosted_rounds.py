"""LiteLLM's hosted protocol as a busy client uses it: rounds of get_budget and a save with one user changed.

get_budget is one statement on PostgreSQL (the baselines and the JSON built by the database), and a save
compares the dict with one read of the project's budgets: the statement counts do not grow with the users.
Nothing is kept in a process between calls, so a save after a get_budget that another process served is
merged the same way (here: the process's caches cleared between calls).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from budgets import services
from budgets.domain import litellm_records
from budgets.domain.codec import dumps, loads
from budgets.domain.usage import Usage
from budgets.models import CostEvent, UserBudget
from budgets.selectors import budgets as budget_selectors
from budgets.services import hosted as hosted_service
from budgets.services.hosted_records import serve_json
from tests.api_helpers import body_of
from tests.test_hosted import Hosted, record

pytestmark = pytest.mark.django_db

DAY = 1767225600.0  # 2026-01-01, as the client keeps created_at


@pytest.fixture
def hosted(api_key):
    return Hosted(api_key)


def users(count: int, prefix: str = "u") -> dict[str, dict]:
    return {f"{prefix}{index}": record(duration=1, current_cost=0.01, model_cost={"gpt-4o": 0.01})
            for index in range(count)}


def another_process() -> None:
    """What a save sees when another gunicorn worker served the call before it: nothing this process keeps
    (the hosted path keeps nothing itself; the day counts' and the API keys' caches are dropped too)."""
    litellm_records._day_count.cache_clear()
    budget_selectors._key_cache.clear()


def native(project, cost: str, user: str, model: str = "native-model") -> None:
    services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(cost), source="api")


def test_rounds_of_get_budget_and_a_changed_save_from_either_process_lose_and_double_nothing(hosted, project):
    hosted.set(users(20))
    client = body_of(hosted.get())["data"]  # the client loads, as LiteLLM's does at start
    client = json.loads(json.dumps(client, default=float))  # it keeps floats
    for index in range(6):
        another_process()
        served = body_of(hosted.get())["data"]  # another process loads
        assert served[f"u{index}"]["current_cost"] == Decimal("0.01")
        if index % 2:
            native(project, "0.5", f"u{index}")  # native spend between saves shows up and stays
            assert body_of(hosted.get())["data"][f"u{index}"]["current_cost"] == Decimal("0.51")
        another_process()
        user = client[f"u{index}"]
        user["current_cost"] += 0.25
        user["model_cost"]["gpt-4o"] += 0.25
        assert hosted.set(client).status_code == 200

    for index in range(20):
        expected = Decimal("0.01") + (Decimal("0.25") if index < 6 else 0) + (Decimal("0.5") if index in (1, 3, 5)
                                                                              else 0)
        assert UserBudget.objects.get(user_id=f"u{index}").current_spend == expected
    assert CostEvent.objects.filter(source="hosted", cost=Decimal("0.25")).count() == 6
    assert CostEvent.objects.filter(source="hosted").count() == 20 + 6


def test_a_save_after_a_get_budget_is_merged_the_same_with_and_without_the_processes_caches(project):
    """The same get_budget + save, once in one process and once with everything in-process dropped between."""
    outcomes = []
    for prefix, between in (("same-", lambda: None), ("other-", another_process)):
        dict_ = users(5, prefix)
        hosted_service.hosted_budget_set(project=project, records=parsed(dict_), actor="t")
        served = loads(hosted_service.hosted_budget_json(project=project))
        between()
        changed = {user: {**rec, "model_cost": {k: float(v) for k, v in rec["model_cost"].items()}}
                   for user, rec in served.items() if user.startswith(prefix)}
        changed[f"{prefix}2"] = {**changed[f"{prefix}2"], "current_cost": 0.11, "model_cost": {"gpt-4o": 0.11}}
        result = hosted_service.hosted_budget_set(project=project, records=parsed(changed), actor="t")
        spend = dict(UserBudget.objects.filter(user_id__startswith=prefix).values_list("user_id", "current_spend"))
        outcomes.append((result.recorded, {user[len(prefix):]: amount for user, amount in spend.items()}))
    assert outcomes[0] == outcomes[1] == (1, {"0": Decimal("0.01"), "1": Decimal("0.01"), "2": Decimal("0.11"),
                                              "3": Decimal("0.01"), "4": Decimal("0.01")})


def parsed(user_dict: dict) -> dict:
    """What the endpoint hands the service: the client's JSON (floats) read by codec.loads, then parsed."""
    return litellm_records.parse_user_dict(loads(json.dumps(user_dict, default=float)))


def _round_statements(hosted: Hosted, client: dict, user: str) -> tuple[int, int]:
    """Statements of one get_budget and of one save with `user`'s cost grown."""
    with CaptureQueriesContext(connection) as got:
        assert hosted.get().status_code == 200
    client[user] = {**client[user], "current_cost": client[user]["current_cost"] + 0.5,
                    "model_cost": {"gpt-4o": client[user]["model_cost"]["gpt-4o"] + 0.5}}
    with CaptureQueriesContext(connection) as saved:
        assert hosted.set(client).status_code == 200
    return len(got), len(saved)


@pytest.mark.postgres
def test_get_budget_and_a_one_changed_save_take_as_many_statements_for_300_users_as_for_3(api_key, project):
    counts = []
    for size, name in ((3, "few"), (300, "many")):
        hosted = Hosted(api_key)
        client = users(size, f"{name}-")
        hosted.set(client)
        hosted.get()  # the first after the first save writes every baseline
        client = {user: json.loads(json.dumps(rec, default=float))
                  for user, rec in body_of(hosted.get())["data"].items() if user.startswith(name)}
        counts.append(_round_statements(hosted, client, f"{name}-1"))
        UserBudget.objects.filter(user_id__startswith=name).delete()
    (get_few, save_few), (get_many, save_many) = counts
    assert get_many == get_few <= 8  # key, project lock, the reset check, the one statement, and the rest fixed
    assert save_many == save_few
    assert CostEvent.objects.filter(cost=Decimal("0.5")).count() == 2


@pytest.mark.postgres
def test_get_budget_from_postgresql_serves_and_writes_what_the_python_path_does(hosted, project, make_budget):
    """serve_json (the database builds it) against hosted_budget_get (services, as on SQLite), same state."""
    dict_ = users(30)
    dict_["u1"]["duration"] = 7
    dict_["u2"] = record(total=2.5, current_cost=0.5, model_cost={"b": 0.2, 'we"ird\\é': 0.1})  # no duration
    dict_["days-40"] = record(duration=40)
    hosted.set(dict_)
    native(project, "0.123", "u3", model="gpt-4o")
    make_budget("brand-new", "5", "weekly")  # a user only the native API knows
    native(project, "1", "brand-new")
    reset = {**dict_["u4"], "last_updated_at": 1800000000.0, "current_cost": 0.02, "model_cost": {"gpt-4o": 0.02}}
    hosted.set({"u4": reset})  # a client reset: its baseline keeps what was recorded since
    UserBudget.objects.filter(user_id="u5").update(hosted_model_cost=[], hosted_period_start=None)  # not a dict

    def state() -> dict:
        return {row[0]: row[1:] for row in UserBudget.objects.values_list("user_id", "hosted_model_cost",
                                                                          "hosted_period_start")}

    before = state()
    from_sql = loads(serve_json(project))
    after_sql = state()
    UserBudget.objects.bulk_update(
        [UserBudget(pk=UserBudget.objects.get(user_id=user).pk, hosted_model_cost=cost, hosted_period_start=start)
         for user, (cost, start) in before.items()], ["hosted_model_cost", "hosted_period_start"])
    from_python = loads(dumps(hosted_service.hosted_budget_get(project=project)))

    assert from_sql == from_python
    assert after_sql == state()
    assert after_sql["u3"][0] == {"gpt-4o": "0.133000000000", " client": {"recorded": {"gpt-4o": "0.010000000000"}}}
    assert after_sql["u4"][0][" client"] == {"recorded": {"gpt-4o": "0.020000000000"}}
    assert set(from_sql) == {*dict_, "brand-new"}
    assert set(from_sql["u2"]["model_cost"]) == {"b", "unknown", 'we"ird\\é'}
