"""Recording cost through the API (every body form, idempotency, enforcement), the ledger, quotes."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, AuditLog, CostEvent, ModelSpend, UserBudget
from tests.api_helpers import ApiClient, assert_error, body_of, db_state, new_key

pytestmark = pytest.mark.django_db

MINI_IN, MINI_OUT = Decimal("0.00000015"), Decimal("0.0000006")  # gpt-4o-mini, per token
COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
              "prompt_tokens_details": {"cached_tokens": 400}},
}


@pytest.fixture
def alice(make_budget):
    return make_budget("alice", "10")


def post_cost(api, body, user="alice", query="", **kwargs):
    return api.post(f"/api/v1/users/{user}/costs{query}", body, **kwargs)


# --- the body forms ---------------------------------------------------------------------------


def test_token_counts_are_priced_from_the_price_table(api, alice):
    response = post_cost(api, {"model": "gpt-4o-mini", "prompt_tokens": 1000, "completion_tokens": 500})

    assert response.status_code == 201
    result = body_of(response)
    expected = 1000 * MINI_IN + 500 * MINI_OUT
    assert result["cost"] == expected == result["event"]["cost"]
    assert result["user"]["current_cost"] == expected
    assert result["user"]["model_cost"] == {"gpt-4o-mini": expected}
    assert (result["budget_exceeded"], result["exceeded_scope"]) == (False, None)
    event = CostEvent.objects.get()
    assert (event.prompt_tokens, event.completion_tokens, event.cost, event.source) == (1000, 500, expected, "api")
    assert UserBudget.objects.get().current_spend == expected


def test_a_completion_object_is_read_for_model_and_usage_with_cached_tokens(api, alice):
    response = post_cost(api, {"completion": COMPLETION})

    assert response.status_code == 201
    cached_price = Decimal("0.000000075")
    expected = 600 * MINI_IN + 400 * cached_price + 200 * MINI_OUT
    assert body_of(response)["cost"] == expected
    event = CostEvent.objects.get()
    assert (event.model, event.prompt_tokens, event.cached_tokens) == ("gpt-4o-mini", 1000, 400)


def test_texts_are_counted_with_tiktoken(api, alice):
    response = post_cost(api, {"model": "gpt-4o-mini", "input_text": "Hello there", "output_text": "General Kenobi"})

    assert response.status_code == 201
    event = CostEvent.objects.get()
    assert event.prompt_tokens > 0 and event.completion_tokens > 0
    assert event.cost == event.prompt_tokens * MINI_IN + event.completion_tokens * MINI_OUT


def test_a_given_cost_is_recorded_for_any_model(api, alice):
    response = post_cost(api, {"model": "my-own-model", "cost": 0.0123456789})

    assert response.status_code == 201
    assert body_of(response)["cost"] == Decimal("0.0123456789")
    assert ModelSpend.objects.get().model == "my-own-model"


def test_per_token_prices_price_an_unknown_model(api, alice):
    body = {"model": "my-own-model", "prompt_tokens": 1000, "completion_tokens": 10,
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.00001}

    response = post_cost(api, body)

    assert response.status_code == 201
    assert body_of(response)["cost"] == Decimal("0.0011")


def test_an_explicit_cost_overrides_the_table_for_token_counts(api, alice):
    body = {"model": "gpt-4o-mini", "prompt_tokens": 1000, "completion_tokens": 10, "cost": 2}

    assert body_of(post_cost(api, body))["cost"] == 2
    assert CostEvent.objects.get().prompt_tokens == 1000


def test_money_stays_exact_to_twelve_places(api, alice):
    for _ in range(3):
        post_cost(api, {"model": "x", "cost": 0.1})
    response = post_cost(api, {"model": "x", "cost": 0.000000000001})

    assert b'"current_cost":0.300000000001' in response.content
    assert UserBudget.objects.get().current_spend == Decimal("0.300000000001")


@pytest.mark.parametrize(("body", "status", "type_"), [
    ({"model": "no-such-model", "prompt_tokens": 10, "completion_tokens": 1}, 422, "unknown_model"),
    ({"model": "no-such-model", "input_text": "a", "output_text": "b"}, 422, "unknown_model"),
    ({"completion": {**COMPLETION, "model": "no-such-model"}}, 422, "unknown_model"),
    ({"model": "gpt-4o-mini", "prompt_tokens": "10"}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": -1}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": 1.5}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": True}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": 10**13}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": 10, "cached_tokens": 11}, 422, "validation_error"),  # meaning, not form
    ({"model": "x", "cost": -0.01}, 400, "validation_error"),
    ({"model": "x", "cost": "0.01"}, 400, "validation_error"),
    ({"model": "x", "cost": 1e13}, 400, "validation_error"),
    ({"model": "x"}, 400, "validation_error"),
    ({"model": "", "cost": 1}, 400, "validation_error"),
    ({"model": 5, "cost": 1}, 400, "validation_error"),
    ({"model": "x" * 256, "cost": 1}, 400, "validation_error"),
    ({"cost": 1}, 400, "validation_error"),
    ({}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "input_text": "only input"}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "input_text": "a", "output_text": "b", "prompt_tokens": 1}, 400, "validation_error"),
    ({"completion": COMPLETION, "model": "gpt-4o"}, 400, "validation_error"),
    ({"completion": {"model": "gpt-4o"}}, 400, "validation_error"),
    ({"completion": {"model": "gpt-4o", "usage": {"prompt_tokens": "many"}}}, 400, "validation_error"),
    ({"completion": "not an object"}, 400, "validation_error"),
    ({"model": "x", "prompt_tokens": 1, "input_cost_per_token": 0.1}, 400, "validation_error"),
    ({"model": "x", "prompt_tokens": 1, "input_cost_per_token": 0.1, "output_cost_per_token": 0.1, "cost": 1},
     400, "validation_error"),
    ({"model": "x", "prompt_tokens": 1, "input_cost_per_token": -1, "output_cost_per_token": 0}, 400,
     "validation_error"),
    ({"model": "x", "cost": 1, "colour": "blue"}, 400, "validation_error"),
])
def test_a_bad_cost_request_is_refused_and_writes_nothing(api, alice, body, status, type_):
    before = db_state()

    assert_error(post_cost(api, body), status, type_)

    assert db_state() == before


def test_cost_for_an_unknown_user_is_404_and_writes_nothing(api, alice):
    before = db_state()

    assert_error(post_cost(api, {"model": "x", "cost": 1}, user="bob"), 404, "not_found")

    assert db_state() == before


def test_validation_errors_name_every_bad_field(api, alice):
    error = assert_error(post_cost(api, {"model": 1, "cost": "x", "extra": 1}), 400, "validation_error")

    assert {d["field"] for d in error["details"]} == {"model", "cost", "extra"}
    assert "cost: must be a JSON number" in error["message"]


# --- idempotency ---------------------------------------------------------------------------------


def test_a_retry_with_the_same_idempotency_key_replays_the_first_answer(api, alice):
    headers = {"Idempotency-Key": "call-1"}
    body = {"model": "gpt-4o-mini", "prompt_tokens": 100, "completion_tokens": 10}
    first = post_cost(api, body, headers=headers)
    post_cost(api, {"model": "x", "cost": 1})  # the user's state moves on

    retry = post_cost(api, body, headers=headers)

    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert retry.content == first.content
    assert CostEvent.objects.count() == 2
    assert UserBudget.objects.get().current_spend == 100 * MINI_IN + 10 * MINI_OUT + 1


def test_the_same_idempotency_key_with_another_body_is_409_and_writes_nothing(api, alice, make_budget):
    make_budget("bob")
    post_cost(api, {"model": "x", "cost": 1}, headers={"Idempotency-Key": "k"})
    before = db_state()

    assert_error(post_cost(api, {"model": "x", "cost": 2}, headers={"Idempotency-Key": "k"}), 409,
                 "idempotency_conflict")
    assert_error(post_cost(api, {"model": "x", "cost": 1}, user="bob", headers={"Idempotency-Key": "k"}), 409,
                 "idempotency_conflict")

    assert db_state() == before


def test_the_idempotency_fingerprint_ignores_key_order_and_number_spelling(api, alice):
    post_cost(api, None, raw='{"model": "x", "cost": 1.50}', headers={"Idempotency-Key": "k"})

    retry = post_cost(api, None, raw='{"cost": 1.5, "model": "x"}', headers={"Idempotency-Key": "k"})

    assert retry.status_code == 201 and retry["Idempotent-Replayed"] == "true"
    assert CostEvent.objects.count() == 1


def test_idempotency_keys_are_per_project(api, project, alice, make_budget):
    other = services.project_create(name="other")
    make_budget("alice", in_project=other)
    theirs = ApiClient(new_key(other))

    post_cost(api, {"model": "x", "cost": 1}, headers={"Idempotency-Key": "k"})
    response = post_cost(theirs, {"model": "x", "cost": 1}, headers={"Idempotency-Key": "k"})

    assert response.status_code == 201 and not response.has_header("Idempotent-Replayed")
    assert CostEvent.objects.count() == 2


def test_a_too_long_idempotency_key_is_refused(api, alice):
    before = db_state()
    assert_error(post_cost(api, {"model": "x", "cost": 1}, headers={"Idempotency-Key": "k" * 256}), 400,
                 "validation_error")
    assert db_state() == before


# --- budgets and enforcement -----------------------------------------------------------------------


def test_spend_past_the_budget_is_recorded_and_flagged(api, alice):
    response = post_cost(api, {"model": "x", "cost": 12})

    assert response.status_code == 201
    result = body_of(response)
    assert (result["budget_exceeded"], result["exceeded_scope"]) == (True, "user")
    assert result["user"]["remaining"] == 0 and result["user"]["budget_exceeded"] is True
    assert UserBudget.objects.get().current_spend == 12


def test_enforce_refuses_spend_the_user_budget_has_no_room_for(api, alice):
    post_cost(api, {"model": "x", "cost": 9})
    before = db_state()

    error = assert_error(post_cost(api, {"model": "x", "cost": 2}, query="?enforce=true"), 402,
                         "budget_exceeded")

    assert error["scope"] == "user"
    assert db_state() == before
    assert post_cost(api, {"model": "x", "cost": 1}, query="?enforce=true").status_code == 201


def test_enforce_refuses_spend_past_the_projects_cap(api, project, alice, make_budget):
    make_budget("bob", "100")
    services.project_update(project=project, max_budget=Decimal(3), actor="test")
    post_cost(api, {"model": "x", "cost": 2.5}, user="bob")
    before = db_state()

    error = assert_error(post_cost(api, {"model": "x", "cost": 1}, query="?enforce=true"), 402,
                         "budget_exceeded")

    assert error["scope"] == "project"
    assert db_state() == before
    flagged = body_of(post_cost(api, {"model": "x", "cost": 1}))
    assert (flagged["budget_exceeded"], flagged["exceeded_scope"]) == (True, "project")


# --- the ledger ----------------------------------------------------------------------------------


@pytest.fixture
def ledger(project, make_budget, time_machine):
    make_budget("alice", "100")
    make_budget("bob", "100")
    for day, user, model in [(1, "alice", "gpt-4o"), (2, "bob", "gpt-4o"), (3, "alice", "gpt-4o-mini"),
                             (4, "alice", "gpt-4o"), (5, "bob", "gpt-4o-mini")]:
        time_machine.move_to(datetime(2030, 3, day, 12, tzinfo=UTC))
        services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(day),
                             source="api")
    return CostEvent.objects.all()


def costs_of(response):
    return [item["cost"] for item in body_of(response)["items"]]


def test_the_ledger_lists_newest_first(api, ledger):
    response = api.get("/api/v1/costs")

    assert response.status_code == 200
    assert costs_of(response) == [5, 4, 3, 2, 1]
    assert body_of(response)["next_cursor"] is None


def test_the_ledger_filters_by_user_model_and_time(api, ledger):
    assert costs_of(api.get("/api/v1/costs?user=alice")) == [4, 3, 1]
    assert costs_of(api.get("/api/v1/costs?model=gpt-4o")) == [4, 2, 1]
    assert costs_of(api.get("/api/v1/costs?since=2030-03-02T12:00:00Z&until=2030-03-04T12:00:00Z")) == [3, 2]
    assert costs_of(api.get("/api/v1/costs?since=2030-03-04")) == [5, 4]
    assert costs_of(api.get("/api/v1/users/alice/costs?model=gpt-4o&until=2030-03-04T00:00:00")) == [1]


def test_the_ledger_pages_with_an_opaque_cursor(api, ledger):
    seen, cursor = [], None
    while True:
        page = body_of(api.get("/api/v1/costs?limit=2" + (f"&cursor={cursor}" if cursor else "")))
        seen += [item["cost"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("query", ["since=yesterday", "until=2030-13-01", "limit=0", "limit=10000"])
def test_bad_ledger_queries_are_validation_errors(api, ledger, query):
    assert_error(api.get(f"/api/v1/costs?{query}"), 400, "validation_error")


@pytest.mark.parametrize("query", ["cursor=nonsense", "cursor=WzEsMl0"])
def test_a_cursor_the_api_did_not_give_out_is_unprocessable(api, ledger, query):
    """A string, as the schema says, that names no page: 422, as schemathesis expects of meaning."""
    assert_error(api.get(f"/api/v1/costs?{query}"), 422, "validation_error")


def test_the_ledger_of_an_unknown_user_is_404(api, ledger):
    assert_error(api.get("/api/v1/users/nobody/costs"), 404, "not_found")


# --- quotes and alerts ---------------------------------------------------------------------------


def test_a_quote_from_token_counts_records_nothing(api, alice):
    before = db_state()

    response = api.post("/api/v1/cost-quote", {"model": "gpt-4o-mini", "prompt_tokens": 1000, "completion_tokens": 100})

    assert response.status_code == 200
    quote = body_of(response)
    assert (quote["prompt_cost"], quote["completion_cost"]) == (1000 * MINI_IN, 100 * MINI_OUT)
    assert quote["cost"] == 1000 * MINI_IN + 100 * MINI_OUT
    assert db_state() == before


def test_a_quote_from_messages_and_output_text(api):
    response = api.post("/api/v1/cost-quote", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                                               "output_text": "Hello! How can I help?"})

    quote = body_of(response)
    assert quote["prompt_tokens"] > 0 and quote["completion_tokens"] > 0
    assert quote["cost"] == quote["prompt_tokens"] * MINI_IN + quote["completion_tokens"] * MINI_OUT


@pytest.mark.parametrize(("body", "status", "type_"), [
    ({"model": "no-such-model", "prompt_tokens": 1, "completion_tokens": 1}, 422, "unknown_model"),
    ({"model": "gpt-4o-mini"}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": 1, "messages": []}, 400, "validation_error"),
    ({"model": "gpt-4o-mini", "prompt_tokens": "1"}, 400, "validation_error"),
    ({"prompt_tokens": 1}, 400, "validation_error"),
])
def test_quote_errors(api, body, status, type_):
    assert_error(api.post("/api/v1/cost-quote", body), status, type_)


def test_a_quote_with_per_token_prices_needs_no_price_table_entry(api):
    body = {"model": "mine", "prompt_tokens": 10, "completion_tokens": 10, "input_cost_per_token": 0.001,
            "output_cost_per_token": 0.002}
    assert body_of(api.post("/api/v1/cost-quote", body))["cost"] == Decimal("0.03")


def test_alerts_are_listed_newest_first(api, project, alice, time_machine):
    for threshold, day in [(80, 1), (100, 2)]:
        time_machine.move_to(datetime(2030, 3, day, tzinfo=UTC))
        Alert.objects.create(project=project, budget=alice, scope="user", user_id="alice", threshold=threshold,
                             period_start=alice.period_start, spend=Decimal(threshold) / 10, limit=Decimal(10))

    page = body_of(api.get("/api/v1/alerts?limit=1"))

    assert page["total"] == 2
    assert [(a["threshold"], a["user"], a["scope"], a["spend"]) for a in page["items"]] == [(100, "alice", "user", 10)]
    assert body_of(api.get("/api/v1/alerts?offset=1"))["items"][0]["threshold"] == 80


# --- never a 500 -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
models = st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "openai/gpt-4o", "no-such-model", ""])
tokens = st.integers(min_value=0, max_value=10**6)
amounts = st.decimals(min_value=0, max_value=20, places=9).map(float)
prices = st.decimals(min_value=0, max_value=Decimal("0.001"), places=12).map(float)
completions = st.fixed_dictionaries(
    {"model": models},
    optional={"usage": st.dictionaries(
        st.sampled_from(["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
                         "prompt_tokens_details", "cache_read_input_tokens", "cache_creation_input_tokens"]),
        st.one_of(tokens, tokens, json_values, st.fixed_dictionaries({"cached_tokens": tokens | json_values})),
    )},
)
WELL_TYPED = {
    "completion": completions, "model": models, "input_text": st.text(max_size=30),
    "output_text": st.text(max_size=30), "prompt_tokens": tokens, "completion_tokens": tokens,
    "cached_tokens": tokens, "cache_creation_tokens": tokens, "cost": amounts,
    "input_cost_per_token": prices, "output_cost_per_token": prices,
}


def field(name: str):
    """Mostly a value of the right type, sometimes any JSON at all."""
    return st.one_of(*[WELL_TYPED[name]] * 9, json_values)


def form(required: list[str], optional: list[str]):
    return st.fixed_dictionaries({name: field(name) for name in required},
                                 optional={name: field(name) for name in optional})


PRICING = ["cost", "input_cost_per_token", "output_cost_per_token"]
cost_bodies = st.one_of(
    form(["model", "prompt_tokens", "completion_tokens"], ["cached_tokens", "cache_creation_tokens", *PRICING]),
    form(["model", "input_text", "output_text"], PRICING),
    form(["model", "cost"], []),
    form(["completion"], PRICING),
    st.dictionaries(st.sampled_from(sorted(WELL_TYPED)), json_values, max_size=5),
    json_values,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=cost_bodies, enforce=st.booleans(), key=st.none() | st.sampled_from(["a", "b"]))
def test_random_cost_bodies_never_get_a_500(api, alice, body, enforce, key):
    headers = {"Idempotency-Key": key} if key else {}
    raw = json.dumps(body)  # NaN and Infinity included: the API must refuse them
    response = post_cost(api, None, raw=raw, headers=headers, query="?enforce=true" if enforce else "")

    assert response.status_code in (201, 400, 402, 404, 409, 422), response.content
    if response.status_code >= 400:
        assert "error" in body_of(response)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_get_a_500(api, alice, raw):
    response = post_cost(api, None, raw=raw)

    assert response.status_code in (201, 400, 422), response.content
    assert AuditLog.objects.filter(action__startswith="budget_reset").count() == 0


valid_models = st.sampled_from(["gpt-4o-mini", "gpt-4o", "openai/gpt-4o-mini", "GPT-4O"])
well_formed_bodies = st.one_of(
    st.fixed_dictionaries({"model": valid_models, "prompt_tokens": tokens, "completion_tokens": tokens},
                          optional={"cache_creation_tokens": tokens}),
    st.fixed_dictionaries({"model": valid_models, "input_text": st.text(max_size=50),
                           "output_text": st.text(max_size=50)}),
    st.fixed_dictionaries({"model": st.text(min_size=1, max_size=40), "cost": amounts}),
    st.fixed_dictionaries({"model": st.text(min_size=1, max_size=40), "prompt_tokens": tokens,
                           "completion_tokens": tokens, "input_cost_per_token": prices,
                           "output_cost_per_token": prices}),
    st.fixed_dictionaries({"completion": st.fixed_dictionaries({
        "model": valid_models, "usage": st.fixed_dictionaries({"prompt_tokens": tokens, "completion_tokens": tokens}),
    })}),
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=well_formed_bodies)
def test_well_formed_cost_bodies_record_exactly_what_they_answer(api, alice, body):
    response = post_cost(api, body)

    # 400 only for what a model name can't be (blank, NUL); never a 500.
    assert response.status_code in (201, 400), response.content
    if response.status_code == 201:
        answer = body_of(response)
        event = CostEvent.objects.get(pk=answer["event"]["id"])
        assert event.cost == answer["cost"]
    budget = UserBudget.objects.get()
    assert budget.current_spend == sum(CostEvent.objects.values_list("cost", flat=True), Decimal(0))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_with_one_idempotency_key_record_once(project, make_budget):
    make_budget("alice", "10")
    raw = new_key(project)
    barrier = threading.Barrier(2)
    responses = []

    def send():
        try:
            barrier.wait()
            responses.append(post_cost(ApiClient(raw), {"model": "x", "cost": 1}, headers={"Idempotency-Key": "once"}))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.status_code for r in responses) == [201, 201]
    assert sorted(r.has_header("Idempotent-Replayed") for r in responses) == [False, True]
    assert responses[0].content == responses[1].content
    assert CostEvent.objects.count() == 1
    assert UserBudget.objects.get().current_spend == 1
