"""budget_client.litellm: the callback records every LiteLLM SDK call, the guard stops calls with no room.

No network: LiteLLM's `mock_response` stands in for the provider. LiteLLM runs sync
success callbacks in a thread pool and async ones in its logging worker, so the tests
wait for the ledger with a bounded poll.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from decimal import Decimal

import pytest
from budget_client import BudgetExceeded, Client

from budgets import services
from budgets.models import CostEvent, UserBudget

# litellm reads this when it is imported: its bundled price map, not a download.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# slow: importing LiteLLM alone takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MESSAGES = [{"role": "user", "content": "Say hello to the budget."}]


@pytest.fixture(scope="module")
def litellm():
    return pytest.importorskip("litellm", reason="install requirements-litellm.txt")


@pytest.fixture
def integration(litellm):
    from budget_client import litellm as integration

    return integration


@pytest.fixture
def acme(make_live_project):
    return make_live_project(budgets={"alice": "10", "bob": "10"})


@pytest.fixture
def client(budget_client):
    return budget_client


class CostWitness:
    """A second LiteLLM callback: what LiteLLM itself computed, per call id, and calls sent on."""

    def __init__(self) -> None:
        from litellm.integrations.custom_logger import CustomLogger

        witness = self
        self.costs: dict[str, float] = {}
        self.provider_calls = 0
        self.lock = threading.Lock()

        class WitnessLogger(CustomLogger):
            def log_pre_api_call(self, model, messages, kwargs):
                with witness.lock:
                    witness.provider_calls += 1

            def log_success_event(self, kwargs, response_obj, start_time, end_time):
                with witness.lock:
                    witness.costs[kwargs["litellm_call_id"]] = kwargs["response_cost"]

            async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
                self.log_success_event(kwargs, response_obj, start_time, end_time)

        self.logger = WitnessLogger()


CALLBACK_LISTS = ("callbacks", "input_callback", "success_callback", "failure_callback", "_async_success_callback",
                  "_async_failure_callback")


@pytest.fixture
def callbacks(litellm, client, integration):
    """The budget callback and a witness, alone in LiteLLM's callback lists for one test.

    LiteLLM copies `litellm.callbacks` into its success lists on the first call, so every
    list is saved, emptied and restored: a callback of an earlier test (with a closed client)
    must not run here.
    """
    saved = {name: list(getattr(litellm, name)) for name in CALLBACK_LISTS}
    for name in CALLBACK_LISTS:
        setattr(litellm, name, [])
    budget = integration.BudgetCallback(client)
    witness = CostWitness()
    litellm.callbacks = [budget, witness.logger]
    yield budget, witness
    for name, value in saved.items():
        setattr(litellm, name, value)


def wait_until(condition, timeout: float = 30.0, state=lambda: None) -> None:
    """Bounded poll: LiteLLM calls success callbacks in background threads (or its async worker)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for LiteLLM's callbacks: {state()}"
        time.sleep(0.02)


def wait_for_calls(budget, witness, recorded: int, seen: int) -> list[CostEvent]:
    """Until the budget callback recorded `recorded` calls and the witness saw `seen`.

    The witness comes after the budget callback in litellm.callbacks, and LiteLLM runs a call's
    callbacks in order: once the witness saw a call, the budget callback is done with it.
    """
    wait_until(lambda: budget.recorded + budget.errors >= recorded and len(witness.costs) >= seen,
               state=lambda: {"recorded": budget.recorded, "errors": budget.errors, "seen": len(witness.costs)})
    return list(CostEvent.objects.order_by("id"))


def ledger_cost(cost: float) -> Decimal:
    """LiteLLM's float cost as the ledger keeps it: its decimal repr, at the ledger's 12 places."""
    return Decimal(repr(cost)).quantize(Decimal("1e-12"))


def litellm_sum(costs) -> Decimal:
    return sum((ledger_cost(cost) for cost in costs), Decimal(0))


def test_every_kind_of_call_is_recorded_once_at_litellms_own_cost(litellm, callbacks, integration):
    budget, witness = callbacks
    for index in range(4):
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response=f"hello number {index}",
                           user="alice")
    stream = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="a streamed answer",
                                stream=True, user="bob")
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "a streamed answer"
    litellm.embedding(model="text-embedding-3-small", input=["embed me"], mock_response=[0.1, 0.2],
                      metadata={"user": "bob"})

    async def async_calls() -> None:
        await litellm.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="async answer", user="alice")
        astream = await litellm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="async stream",
                                            stream=True, user="alice")
        async for _ in astream:
            pass
        await integration.flush()  # else the loop's end cancels the stream's callback task

    asyncio.run(async_calls())

    events = wait_for_calls(budget, witness, 8, 8)
    assert len(events) == 8 and (budget.recorded, budget.errors) == (8, 0)
    assert {e.idempotency_key for e in events} == {f"litellm:{call_id}" for call_id in witness.costs}
    costs = {e.idempotency_key.removeprefix("litellm:"): e.cost for e in events}
    assert costs == {call_id: ledger_cost(cost) for call_id, cost in witness.costs.items()}
    assert sum(costs.values()) == litellm_sum(witness.costs.values())
    raw_sum = sum((Decimal(repr(cost)) for cost in witness.costs.values()), Decimal(0))
    assert abs(sum(costs.values()) - raw_sum) < Decimal("1e-11")  # LiteLLM's float noise, below the ledger's unit
    by_user = {user: sum(e.cost for e in events if e.user_id == user) for user in ("alice", "bob")}
    for user, total in by_user.items():
        assert UserBudget.objects.get(user_id=user).current_spend == total > 0
    assert {e.model for e in events} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    assert all(e.prompt_tokens > 0 for e in events)


def test_metadata_user_wins_over_the_user_argument(litellm, callbacks, integration):
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi", user="end-user-42",
                       metadata={"user": "alice"})
    litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="hi")  # nobody: not recorded
    budget, witness = callbacks
    events = wait_for_calls(budget, witness, 1, 2)
    assert [e.user_id for e in events] == ["alice"] and budget.recorded == 1
    assert integration.call_user({"user": "x", "metadata": {"user": "y"}}) == "y"
    assert integration.call_user({"litellm_params": {"metadata": {}}, "user": "x"}) == "x"
    assert integration.call_user({}, default="z") == "z" and integration.call_user({}) is None


def test_a_callback_run_twice_for_one_call_records_once(litellm, client, integration):
    callback = integration.BudgetCallback(client)
    response = litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5})
    kwargs = {"litellm_call_id": "call-1", "model": "gpt-4o-mini", "user": "alice", "response_cost": 1.35e-05}
    callback.log_success_event(kwargs, response, None, None)
    asyncio.run(callback.async_log_success_event(kwargs, response, None, None))
    assert (callback.recorded, callback.errors) == (2, 0)
    event = CostEvent.objects.get()
    assert (event.cost, event.idempotency_key, event.prompt_tokens) == (Decimal("0.0000135"), "litellm:call-1", 10)


def test_without_a_litellm_cost_the_tokens_are_priced_by_the_service(litellm, client, integration):
    callback = integration.BudgetCallback(client)
    response = litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 1000, "completion_tokens": 500})
    callback.log_success_event({"litellm_call_id": "call-2", "model": "gpt-4o-mini", "user": "alice",
                                "response_cost": None}, response, None, None)
    event = CostEvent.objects.get()
    assert event.cost == client.cost_quote("gpt-4o-mini", prompt_tokens=1000, completion_tokens=500).cost
    assert event.cost == Decimal("0.00045")


def test_the_guard_stops_a_call_over_budget_before_it_reaches_the_provider(litellm, client, callbacks, integration):
    budget, witness = callbacks
    client.set_budget("carol", Decimal("0.000001"))
    guard = integration.BudgetGuard(client, callback=budget)
    long_prompt = [{"role": "user", "content": "tell me everything " * 200}]
    with pytest.raises(BudgetExceeded) as refused:
        guard.completion(model="gpt-4o", messages=long_prompt, mock_response="never", user="carol")
    assert isinstance(refused.value, litellm.BudgetExceededError)
    assert refused.value.scope == "user" and refused.value.amount > refused.value.remaining
    with pytest.raises(integration.BudgetExceededError):
        asyncio.run(guard.acompletion(model="gpt-4o", messages=long_prompt, mock_response="never", user="carol"))
    assert witness.provider_calls == 0 and witness.costs == {}
    assert not CostEvent.objects.exists()

    # a call with room goes through and is recorded by the guard's callback
    response = guard.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="fine", user="alice")
    assert response.choices[0].message.content == "fine"
    events = wait_for_calls(budget, witness, 1, 1)
    assert [e.user_id for e in events] == ["alice"] and witness.provider_calls == 1
    assert events[0].cost == litellm_sum(witness.costs.values())
    assert litellm.callbacks.count(budget) == 1  # install() did not add it twice


@pytest.mark.reservations
def test_the_guard_reserves_the_worst_case_and_the_callback_settles_it(litellm, client, callbacks, integration):
    budget, witness = callbacks
    guard = integration.BudgetGuard(client, callback=budget)
    response = guard.completion(model="gpt-4o-mini", messages=MESSAGES, max_tokens=200, mock_response="held",
                                user="alice")
    assert response.choices[0].message.content == "held"
    events = wait_for_calls(budget, witness, 1, 1)
    assert (budget.recorded, budget.errors) == (1, 0)
    assert len(events) == 1 and events[0].cost == litellm_sum(witness.costs.values())
    assert client.get_user("alice").held == 0  # settled, the hold freed

    client.set_budget("carol", Decimal("0.000001"))
    with pytest.raises(integration.BudgetExceededError) as refused:
        guard.completion(model="gpt-4o", messages=MESSAGES, max_tokens=4000, mock_response="never", user="carol")
    assert refused.value.scope == "user"
    assert witness.provider_calls == 1
    assert not CostEvent.objects.filter(user_id="carol").exists()


def test_two_callbacks_for_two_projects_both_record(litellm, live_server, client, callbacks, integration):
    budget, witness = callbacks
    beta = services.project_create(name="beta")
    services.budget_set(project=beta, user_id="alice", total_budget=Decimal(1), actor="test")
    _, beta_key = services.api_key_create(project=beta, name="litellm")
    with Client(live_server.url, beta_key) as beta_client:
        mirror = integration.BudgetCallback(beta_client)
        litellm.callbacks.insert(0, mirror)  # LiteLLM would drop it if it took it for `budget`
        litellm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="twice", user="alice")
        wait_for_calls(budget, witness, 1, 1)
        assert (mirror.recorded, mirror.errors) == (1, 0)
    assert sorted(CostEvent.objects.values_list("project__name", flat=True)) == ["acme", "beta"]


# --- fallbacks: refused with a fallback model, the guard retries once with it ----------------------


@pytest.fixture
def fallbacks(client):
    """gpt-4o falls back to gpt-4-turbo (dearer: never fits), then gpt-4o-mini; carol has $0.01."""
    client.set_fallbacks({"gpt-4o": ["gpt-4-turbo", "gpt-4o-mini"]})
    client.set_budget("carol", Decimal("0.01"))
    return client


@pytest.mark.reservations
def test_the_guard_retries_once_with_the_fallback_and_the_ledger_shows_its_cost(litellm, fallbacks, callbacks,
                                                                                integration):
    budget, witness = callbacks
    guard = integration.BudgetGuard(fallbacks, callback=budget, fallback=True)

    # gpt-4o's worst case (2000 completion tokens ≈ $0.02) has no room in $0.01; gpt-4o-mini's has.
    response = guard.completion(model="gpt-4o", messages=MESSAGES, max_tokens=2000, mock_response="cheaper",
                                user="carol")

    assert response.choices[0].message.content == "cheaper" and "gpt-4o-mini" in response.model
    events = wait_for_calls(budget, witness, 1, 1)
    assert [(e.user_id, e.model) for e in events] == [("carol", "gpt-4o-mini")]
    assert events[0].cost == litellm_sum(witness.costs.values()) and witness.provider_calls == 1
    assert fallbacks.get_user("carol").current_cost == events[0].cost  # settled: the hold is spend now
    assert fallbacks.get_user("carol").remaining == Decimal("0.01") - events[0].cost

    # async, and without max_tokens (the check's answer names the fallback too)
    fallbacks.set_budget("dave", Decimal("0.00001"))  # the prompt at gpt-4o's price does not fit; at mini's it does

    async def call() -> object:
        answer = await guard.acompletion(model="gpt-4o", messages=MESSAGES, mock_response="cheaper too", user="dave")
        await integration.flush()  # else the loop's end cancels the callback
        return answer

    response = asyncio.run(call())
    assert "gpt-4o-mini" in response.model
    events = wait_for_calls(budget, witness, 2, 2)
    assert [(e.user_id, e.model) for e in events] == [("carol", "gpt-4o-mini"), ("dave", "gpt-4o-mini")]


@pytest.mark.reservations
def test_without_fallback_the_guard_raises_as_before_naming_the_fallback(litellm, fallbacks, callbacks, integration):
    budget, witness = callbacks
    guard = integration.BudgetGuard(fallbacks, callback=budget)

    with pytest.raises(integration.BudgetExceededError) as refused:
        guard.completion(model="gpt-4o", messages=MESSAGES, max_tokens=2000, mock_response="never", user="carol")
    with pytest.raises(integration.BudgetExceededError):  # fallback=False per call, on a guard that falls back
        integration.BudgetGuard(fallbacks, callback=budget, fallback=True).completion(
            model="gpt-4o", messages=MESSAGES, max_tokens=2000, mock_response="never", user="carol", fallback=False)

    assert refused.value.scope == "user" and refused.value.fallback.model == "gpt-4o-mini"
    prompt_tokens = fallbacks.projected_cost("carol", "gpt-4o", MESSAGES).prompt_tokens  # the refused call's
    assert refused.value.fallback.worst_case == fallbacks.cost_quote(
        "gpt-4o-mini", prompt_tokens=prompt_tokens, completion_tokens=2000).cost
    assert witness.provider_calls == 0 and not CostEvent.objects.exists()
    assert fallbacks.get_user("carol").held == 0


def test_the_guard_falls_back_only_once(litellm, integration):
    """A retry refused again is raised: the guard never chains fallbacks."""
    from budget_client.results import Fallback

    class Refusing:
        def __init__(self) -> None:
            self.models: list[str] = []

        def create_reservation(self, user, *, model, **kwargs):
            self.models.append(model)
            raise BudgetExceeded("no room", scope="user", body={"fallback": {"model": f"{model}-cheaper",
                                                                             "worst_case": 1}})

    client = Refusing()
    guard = integration.BudgetGuard(client, fallback=True)  # type: ignore[arg-type]
    try:
        with pytest.raises(integration.BudgetExceededError) as refused:
            guard.completion(model="gpt-4o", messages=MESSAGES, max_tokens=10, mock_response="never", user="x")
    finally:
        guard.uninstall()
    assert client.models == ["gpt-4o", "gpt-4o-cheaper"]
    assert refused.value.fallback == Fallback("gpt-4o-cheaper-cheaper", Decimal(1))
