"""The real LiteLLM BudgetManager(client_type="hosted") against this service, over HTTP.

litellm computes costs with its own price map; the assertions compare the server with
what the client sent (its user_dict), and the ledger with the server's spend.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from decimal import Decimal

import pytest

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, CostEvent, ModelSpend, UserBudget

# litellm reads this when it is imported (litellm/__init__.py calls get_model_cost_map):
# "true" in any case means its bundled price map, not a download.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# slow: importing LiteLLM alone takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOLERANCE = Decimal("1e-12")  # the client adds floats; the server keeps 12 places


@pytest.fixture(scope="module")
def litellm():
    try:
        # Imported here, not at the top: it takes seconds, and only these tests need it.
        import litellm
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"the litellm package cannot be imported ({exc}); install requirements-litellm.txt")
    return litellm


@pytest.fixture(autouse=True)
def saves_must_not_fail(monkeypatch):
    """A failed save raises in the client's thread, where no test would see it."""
    failures: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    yield
    wait_for_saves()
    assert not failures, failures


def manager(litellm, live_server, raw_key: str, project_name: str = "acme"):
    return litellm.BudgetManager(
        project_name=project_name, client_type="hosted", api_base=live_server.url,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {raw_key}"},
    )


def wait_for_saves() -> None:
    """The client saves in background threads (threading.Thread(target=self.save_data))."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and "save_data" in thread.name:
            thread.join(timeout=60)


def saves_in_flight() -> int:
    return sum(1 for thread in threading.enumerate() if "save_data" in thread.name and thread.is_alive())


def money(value: float) -> Decimal:
    return Decimal(repr(value))


def assert_close(server: Decimal, client: float) -> None:
    assert abs(server - money(client)) <= TOLERANCE, (server, client)


def assert_server_matches(client, user: str) -> None:
    budget = UserBudget.objects.get(user_id=user)
    record = client.user_dict[user]
    assert budget.total_budget == money(record["total_budget"])
    assert_close(budget.current_spend, record.get("current_cost", 0))
    server_models = dict(ModelSpend.objects.filter(budget=budget).values_list("model", "spend"))
    assert set(server_models) == set(record.get("model_cost", {}))
    for model, cost in record.get("model_cost", {}).items():
        assert_close(server_models[model], cost)


def hosted_ledger(user: str) -> Decimal:
    return sum(CostEvent.objects.filter(user_id=user, source="hosted").values_list("cost", flat=True), Decimal(0))


def test_the_real_litellm_client_keeps_its_budgets_on_the_server(litellm, live_server, acme):
    _, raw = acme
    client = manager(litellm, live_server, raw)
    assert client.user_dict == {}

    client.create_budget(total_budget=10, user="alice", duration="daily")
    wait_for_saves()
    client.create_budget(total_budget=5, user="bob")  # no duration: the client does not save yet
    client.update_cost(user="alice", model="gpt-4o-mini", input_text="hello there", output_text="general kenobi")
    wait_for_saves()
    completion = litellm.ModelResponse(
        model="gpt-4o", choices=[{"message": {"role": "assistant", "content": "hi"}}],
        usage={"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50},
    )
    client.update_cost(user="alice", completion_obj=completion)
    wait_for_saves()
    client.update_cost(user="bob", completion_obj={
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    })
    wait_for_saves()

    alice = UserBudget.objects.get(user_id="alice")
    assert (alice.total_budget, alice.duration) == (Decimal(10), "daily")
    assert UserBudget.objects.get(user_id="bob").duration == "none"
    for user in ("alice", "bob"):
        assert_server_matches(client, user)
        assert hosted_ledger(user) == UserBudget.objects.get(user_id=user).current_spend
    assert set(ModelSpend.objects.filter(budget=alice).values_list("model", flat=True)) == {"gpt-4o-mini", "gpt-4o"}

    fresh = manager(litellm, live_server, raw)
    assert sorted(fresh.get_users()) == ["alice", "bob"]
    assert fresh.get_total_budget("alice") == 10
    assert fresh.user_dict["alice"]["duration"] == 1
    assert fresh.get_current_cost("alice") == pytest.approx(client.get_current_cost("alice"), abs=1e-12)
    assert fresh.get_model_cost("alice") == pytest.approx(client.get_model_cost("alice"), abs=1e-12)
    assert fresh.is_valid_user("bob") and not fresh.is_valid_user("carol")


def test_spend_recorded_through_the_native_api_survives_the_clients_saves(litellm, live_server, acme):
    project, raw = acme
    client = manager(litellm, live_server, raw)
    client.create_budget(total_budget=10, user="alice", duration="weekly")
    wait_for_saves()
    client.update_cost(user="alice", model="gpt-4o-mini", input_text="a question", output_text="an answer")
    wait_for_saves()

    services.cost_record(project=project, user_id="alice", usage=Usage("claude-native", 0, 0),
                         cost=Decimal("0.25"), source="api")
    client.update_cost(user="alice", model="gpt-4o-mini", input_text="another", output_text="one")
    wait_for_saves()

    alice = UserBudget.objects.get(user_id="alice")
    assert_close(alice.current_spend - Decimal("0.25"), client.get_current_cost("alice"))
    assert ModelSpend.objects.get(budget=alice, model="claude-native").spend == Decimal("0.25")
    assert hosted_ledger("alice") + Decimal("0.25") == alice.current_spend

    # A fresh client sees the native spend too, and its next save does not count it twice.
    fresh = manager(litellm, live_server, raw)
    assert fresh.get_current_cost("alice") == pytest.approx(float(alice.current_spend), abs=1e-12)
    fresh.update_cost(user="alice", model="gpt-4o-mini", input_text="third", output_text="call")
    wait_for_saves()
    alice.refresh_from_db()
    assert_close(alice.current_spend, fresh.get_current_cost("alice"))


def test_the_clients_reset_resets_the_user_on_the_server_and_is_audited(litellm, live_server, acme):
    _, raw = acme
    client = manager(litellm, live_server, raw)
    client.create_budget(total_budget=10, user="alice", duration="monthly")
    wait_for_saves()
    client.update_cost(user="alice", model="gpt-4o-mini", input_text="hello", output_text="world")
    wait_for_saves()
    assert UserBudget.objects.get(user_id="alice").current_spend > 0

    assert client.reset_cost("alice")["user"]["current_cost"] == 0
    assert client.save_data() == {"status": "success"}

    alice = UserBudget.objects.get(user_id="alice")
    assert alice.current_spend == 0
    assert not ModelSpend.objects.filter(budget=alice).exists()
    assert AuditLog.objects.filter(user_id="alice", action="budget_reset_hosted").count() == 1
    assert CostEvent.objects.filter(user_id="alice").count() == 1  # the ledger stays

    client.update_cost(user="alice", model="gpt-4o-mini", input_text="after", output_text="reset")
    wait_for_saves()
    assert_server_matches(client, "alice")


def test_update_budget_all_users_resets_users_whose_client_period_ended(litellm, live_server, acme):
    _, raw = acme
    client = manager(litellm, live_server, raw)
    # created_at three weeks ago: the client's own weekly period for carol has ended.
    client.create_budget(total_budget=3, user="carol", duration="weekly", created_at=time.time() - 21 * 86400)
    wait_for_saves()
    client.create_budget(total_budget=3, user="dave", duration="weekly")
    wait_for_saves()
    for user in ("carol", "dave"):
        client.update_cost(user=user, model="gpt-4o-mini", input_text="hi", output_text="there")
        wait_for_saves()

    client.update_budget_all_users()
    wait_for_saves()

    assert client.get_current_cost("carol") == 0
    assert UserBudget.objects.get(user_id="carol").current_spend == 0
    assert AuditLog.objects.filter(user_id="carol", action="budget_reset_hosted").count() == 1
    assert_server_matches(client, "dave")
    assert UserBudget.objects.get(user_id="dave").current_spend > 0


def test_a_bad_key_or_another_projects_name_makes_the_client_fail_loudly(litellm, live_server, acme):
    _, raw = acme
    services.project_create(name="other")

    with pytest.raises(Exception, match="401"):
        manager(litellm, live_server, "bm_not-a-key")
    with pytest.raises(Exception, match="403"):
        manager(litellm, live_server, raw, project_name="other")
    assert not UserBudget.objects.exists()


def test_an_api_base_with_a_trailing_slash_works(litellm, live_server, acme):
    _, raw = acme
    client = litellm.BudgetManager(
        project_name="acme", client_type="hosted", api_base=live_server.url + "/",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {raw}"},
    )
    client.create_budget(total_budget=1, user="alice", duration="daily")
    wait_for_saves()

    assert UserBudget.objects.get().user_id == "alice"


def test_saves_arriving_out_of_order_with_native_spend_going_on_lose_and_double_nothing(litellm, live_server, acme):
    """The client saves from a new thread after every change; the native API records meanwhile."""
    project, raw = acme
    client = manager(litellm, live_server, raw)
    for user in ("alice", "bob"):
        client.create_budget(total_budget=1000, user=user, duration="daily")
        wait_for_saves()
        client.update_cost(user=user, model="gpt-4o-mini", input_text="first", output_text="call")
        wait_for_saves()

    native_costs = [Decimal("0.0125")] * 40
    native_failures: list[object] = []

    def record_natively() -> None:
        for index, cost in enumerate(native_costs):
            request = urllib.request.Request(
                f"{live_server.url}/api/v1/users/{('alice', 'bob')[index % 2]}/costs",
                data=json.dumps({"model": "native-model", "cost": float(cost)}).encode(),
                headers={"Authorization": f"Bearer {raw}", "Content-Type": "application/json"}, method="POST",
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                if response.status != 201:
                    native_failures.append(response.status)

    native = threading.Thread(target=record_natively)
    native.start()
    for index in range(100):  # each call starts a save thread; they overlap and land out of order
        while saves_in_flight() >= 8:  # the test database's connection limit, shared with other runs
            time.sleep(0.002)
        client.update_cost(user=("alice", "bob")[index % 2], model="gpt-4o-mini",
                           input_text=f"question {index}", output_text=f"answer {index}")
    native.join(timeout=120)
    wait_for_saves()

    assert not native_failures
    client_total = sum(money(client.get_current_cost(user)) for user in ("alice", "bob"))
    project.refresh_from_db()
    assert abs(project.current_spend - (sum(native_costs) + client_total)) <= Decimal("1e-9")
    for user in ("alice", "bob"):
        spend = UserBudget.objects.get(user_id=user).current_spend
        assert abs(spend - Decimal("0.25") - money(client.get_current_cost(user))) <= Decimal("1e-9")
        assert abs(hosted_ledger(user) - money(client.get_current_cost(user))) <= Decimal("1e-9")
    assert not AuditLog.objects.filter(action="budget_reset_hosted").exists()
