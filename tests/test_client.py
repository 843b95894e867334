"""The Python client (clients/python, `budget_client`) against a live server.

Every test talks HTTP to pytest-django's live server; flaky networks are a real proxy
thread (tests/client_support.py) that answers 503 or loses answers on cue.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from decimal import Decimal

import budget_client
import pytest
from budget_client import (
    AsyncClient,
    BudgetExceeded,
    BudgetManager,
    Client,
    IdempotencyConflict,
    NotFound,
    TransportError,
    Unauthorized,
    UnknownModel,
    ValidationError,
)

from budgets import services
from budgets.models import AuditLog, CostEvent, ModelSpend, Project, UserBudget
from tests.client_support import DROP_AFTER_FORWARD, FAIL_429, FAIL_503, FlakyProxy, record_calls

from .api_helpers import db_state

# slow: each test empties the database, loads the price map again and talks HTTP to the live server.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

COMPLETION = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}
GPT_4O_MINI_1000_500 = Decimal("0.00045")  # 1000 × $0.15/M + 500 × $0.60/M


@pytest.fixture
def client(budget_client):
    return budget_client


@pytest.fixture
def proxy(live_server):
    proxy = FlakyProxy(live_server.url)
    yield proxy
    proxy.close()


def spend(user: str) -> Decimal:
    return UserBudget.objects.get(user_id=user).current_spend


# --- the native API -----------------------------------------------------------------------------


def test_it_creates_reads_lists_and_deletes_budgets(client):
    created = client.set_budget("alice", Decimal("10.5"), "monthly")
    assert isinstance(created, budget_client.User)
    assert (created.user, created.total_budget, created.duration) == ("alice", Decimal("10.5"), "monthly")
    assert created.current_cost == 0 and isinstance(created.current_cost, Decimal)
    assert created.next_reset_at is not None and created.period_start.tzinfo is not None
    client.set_budget("team/bob", 3)

    assert client.get_user("team/bob").total_budget == Decimal(3)
    page = client.list_users(limit=1)
    assert ([u.user for u in page.items], page.total) == (["alice"], 2)
    assert [u.user for u in client.iter_users(page_size=1)] == ["alice", "team/bob"]

    client.delete_user("team/bob")
    assert list(UserBudget.objects.values_list("user_id", flat=True)) == ["alice"]
    with pytest.raises(NotFound):
        client.get_user("team/bob")


def test_money_travels_as_exact_decimals_both_ways(client):
    client.set_budget("alice", Decimal("0.300000000001"))
    recorded = client.record_cost("alice", model="my-model", prompt_tokens=1, completion_tokens=1,
                                  cost=Decimal("0.000000000001"))
    assert recorded.cost == Decimal("0.000000000001")
    assert recorded.user.remaining == Decimal("0.3")
    alice = UserBudget.objects.get(user_id="alice")
    assert (alice.total_budget, alice.current_spend) == (Decimal("0.300000000001"), Decimal("0.000000000001"))


def test_it_records_every_cost_form_and_reads_the_ledger(client):
    client.set_budget("alice", 10)
    by_completion = client.record_cost("alice", COMPLETION)
    assert by_completion.cost == GPT_4O_MINI_1000_500
    assert (by_completion.event.prompt_tokens, by_completion.event.completion_tokens) == (1000, 500)
    by_tokens = client.record_cost("alice", model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=500)
    by_texts = client.record_cost("alice", model="gpt-4o-mini", input_text="Hello", output_text="Hi there")
    by_cost = client.record_cost("alice", model="private", cost=Decimal("0.25"))
    assert by_tokens.cost == GPT_4O_MINI_1000_500 and by_texts.cost > 0

    expected = 2 * GPT_4O_MINI_1000_500 + by_texts.cost + Decimal("0.25")
    assert by_cost.user.current_cost == expected == spend("alice")
    assert by_cost.user.model_cost == {"gpt-4o-mini": expected - Decimal("0.25"), "private": Decimal("0.25")}
    assert CostEvent.objects.filter(user_id="alice").count() == 4
    assert all(e.idempotency_key for e in CostEvent.objects.all())  # the client always sends one

    newest_first = [e.id for e in client.iter_costs(page_size=3)]
    assert newest_first == list(CostEvent.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    assert [e.model for e in client.list_costs(model="private").items] == ["private"]
    assert len(client.list_user_costs("alice", limit=2).items) == 2
    assert client.list_costs(user="nobody").items == []


def test_checks_quotes_projections_resets_and_alerts(client):
    client.set_budget("alice", Decimal("0.001"))
    messages = [{"role": "user", "content": "Hello"}]
    projected = client.projected_cost("alice", "gpt-4o", messages)
    assert projected.current_cost == 0 and projected.projected_cost == projected.prompt_cost > 0

    assert client.check("alice", estimated_cost=Decimal("0.001")).allowed
    refused = client.check("alice", estimated_cost=Decimal("0.0011"))
    assert (refused.allowed, refused.scope, refused.remaining) == (False, "user", Decimal("0.001"))

    quote = client.cost_quote("gpt-4o-mini", prompt_tokens=1000, completion_tokens=500)
    assert quote.cost == GPT_4O_MINI_1000_500 == quote.prompt_cost + quote.completion_cost

    client.record_cost("alice", model="private", cost=Decimal("0.002"))
    assert client.list_alerts().total == len(client.list_alerts().items) >= 1
    reset = client.reset_user("alice")
    assert reset.current_cost == 0 == spend("alice")
    assert AuditLog.objects.filter(user_id="alice", action="budget_reset_manual").count() == 1


def test_errors_map_to_exceptions_and_write_nothing(client, live_server):
    client.set_budget("alice", 1)
    before = db_state()
    with pytest.raises(Unauthorized) as unauthorized:
        Client(live_server.url, "bm_not_a_key", max_retries=0).get_user("alice")
    assert (unauthorized.value.status, unauthorized.value.type) == (401, "unauthorized")
    with pytest.raises(NotFound) as not_found:
        client.get_user("nobody")
    assert isinstance(not_found.value, KeyError) and not_found.value.status == 404
    with pytest.raises(ValidationError) as invalid:
        client.set_budget("alice", Decimal(-1))
    assert invalid.value.status == 400 and "total_budget" in invalid.value.message
    with pytest.raises(UnknownModel) as unknown:
        client.record_cost("alice", model="no-such-model", prompt_tokens=1, completion_tokens=1)
    assert (unknown.value.status, unknown.value.type) == (422, "unknown_model")
    with pytest.raises(BudgetExceeded) as exceeded:
        client.record_cost("alice", model="private", cost=Decimal("1.5"), enforce=True)
    assert (exceeded.value.status, exceeded.value.scope) == (402, "user")
    assert "alice" in str(exceeded.value)
    assert db_state() == before

    client.record_cost("alice", model="private", cost=Decimal("0.1"), idempotency_key="k-1")
    with pytest.raises(IdempotencyConflict):
        client.record_cost("alice", model="private", cost=Decimal("0.2"), idempotency_key="k-1")
    assert spend("alice") == Decimal("0.1")


def test_the_project_cap_is_named_in_the_error(client, acme):
    project, _ = acme
    Project.objects.filter(pk=project.pk).update(max_budget=Decimal("0.5"))
    client.set_budget("alice", 10)
    with pytest.raises(BudgetExceeded) as exceeded:
        client.record_cost("alice", model="private", cost=Decimal("0.6"), enforce=True)
    assert exceeded.value.scope == "project"
    assert not CostEvent.objects.exists()


# --- retries and idempotency --------------------------------------------------------------------


def test_a_503_is_retried_after_retry_after_and_the_call_records_once(proxy, acme):
    proxy.retry_after = "2"
    proxy.script.extend([FAIL_503, FAIL_429])
    waits: list[float] = []
    with Client(proxy.url, acme[1], sleep=waits.append) as client:
        client.set_budget("alice", 10)
        proxy.script.extend([FAIL_503])
        recorded = client.record_cost("alice", COMPLETION)

    assert waits == [2.0, 2.0, 2.0]  # Retry-After honoured on every 503/429
    assert recorded.cost == GPT_4O_MINI_1000_500 and not recorded.replayed
    assert CostEvent.objects.count() == 1 and spend("alice") == GPT_4O_MINI_1000_500
    posts = [s for s in proxy.seen if s.path.endswith("/costs")]
    assert [s.action for s in posts] == [FAIL_503, "forward"]
    assert posts[0].idempotency_key and posts[0].idempotency_key == posts[1].idempotency_key


def test_a_lost_answer_is_retried_with_the_same_key_and_recorded_once(proxy, acme):
    with Client(proxy.url, acme[1], backoff=0.01) as client:
        client.set_budget("alice", 10)
        proxy.script.append(DROP_AFTER_FORWARD)
        recorded = client.record_cost("alice", COMPLETION)
        again = client.record_cost("alice", COMPLETION)  # a new logical call: a new key

    assert recorded.replayed  # the server answered the retry from the first request
    assert not again.replayed
    assert CostEvent.objects.count() == 2
    assert spend("alice") == 2 * GPT_4O_MINI_1000_500
    keys = [s.idempotency_key for s in proxy.seen if s.path.endswith("/costs")]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]


def test_a_reset_is_not_retried_when_its_answer_is_lost(proxy, acme):
    with Client(proxy.url, acme[1], backoff=0.01) as client:
        client.set_budget("alice", 10)
        client.record_cost("alice", model="private", cost=Decimal(1))
        proxy.script.append(DROP_AFTER_FORWARD)
        with pytest.raises(TransportError):
            client.reset_user("alice")
        proxy.script.append(FAIL_503)  # but a 503 means "not served": retried
        assert client.reset_user("alice").current_cost == 0
    resets = [s.action for s in proxy.seen if s.path.endswith("/reset")]
    assert resets == [DROP_AFTER_FORWARD, FAIL_503, "forward"]


def test_it_gives_up_after_the_retries_with_a_transport_error(acme):
    waits: list[float] = []
    client = Client("http://127.0.0.1:9", acme[1], max_retries=2, backoff=0.5, sleep=waits.append)
    with pytest.raises(TransportError):
        client.get_user("alice")
    assert len(waits) == 2 and all(0 <= w <= 1.0 for w in waits)


def test_the_async_client_retries_and_records_once(proxy, acme):
    async def scenario() -> tuple[budget_client.RecordedCost, budget_client.User]:
        async with AsyncClient(proxy.url, acme[1], backoff=0.01) as client:
            await client.set_budget("alice", 10, "daily")
            proxy.script.extend([FAIL_503, DROP_AFTER_FORWARD])
            recorded = await client.record_cost("alice", COMPLETION)
            users = [u async for u in client.iter_users()]
            return recorded, users[0]

    recorded, alice = asyncio.run(scenario())
    assert recorded.replayed and alice.current_cost == GPT_4O_MINI_1000_500
    assert CostEvent.objects.count() == 1 and spend("alice") == GPT_4O_MINI_1000_500


# --- the drop-in BudgetManager ------------------------------------------------------------------


def test_budget_manager_offers_every_seed_method(live_server, acme):
    manager = BudgetManager("acme", live_server.url, acme[1])
    record = manager.create_budget(total_budget=10, user="alice", duration="daily")
    assert record["total_budget"] == Decimal(10) and record["duration"] == 1
    assert set(record) == {"total_budget", "duration", "created_at", "last_updated_at", "current_cost", "model_cost"}
    assert "duration" not in manager.create_budget(total_budget=5, user="bob")
    with pytest.raises(ValueError):
        manager.create_budget(total_budget=5, user="carol", duration="hourly")

    assert manager.get_users() == ["alice", "bob"]
    assert manager.is_valid_user("alice") and not manager.is_valid_user("carol")
    assert manager.get_total_budget("alice") == Decimal(10)
    messages = [{"role": "user", "content": "Hello"}]
    assert manager.projected_cost("gpt-4o-mini", messages, "alice") > 0

    updated = manager.update_cost(user="alice", completion_obj=COMPLETION)
    assert updated["user"]["current_cost"] == GPT_4O_MINI_1000_500
    manager.update_cost(user="alice", model="gpt-4o", input_text="Hello", output_text="Hi!")
    with pytest.raises(ValueError):
        manager.update_cost(user="alice")
    with pytest.raises(KeyError):  # as the seed's dict lookup
        manager.update_cost(user="carol", completion_obj=COMPLETION)
    assert manager.get_current_cost("alice") == spend("alice")
    assert manager.get_model_cost("alice") == dict(
        ModelSpend.objects.filter(budget__user_id="alice").values_list("model", "spend"))
    assert set(manager.get_model_cost("alice")) == {"gpt-4o-mini", "gpt-4o"}

    assert manager.reset_cost("alice")["user"]["current_cost"] == 0 == spend("alice")
    assert manager.reset_on_duration("alice") is None
    assert manager.update_budget_all_users() is None
    assert manager.save_data() == {"status": "success"}
    assert CostEvent.objects.filter(user_id="alice").count() == 2  # the ledger stays
    manager.close()


def test_budget_manager_takes_litellms_constructor_arguments(live_server, acme):
    manager = BudgetManager(project_name="acme", client_type="hosted", api_base=live_server.url,
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {acme[1]}"})
    manager.create_budget(total_budget=1, user="alice")
    assert manager.get_users() == ["alice"]


def test_two_processes_recording_500_calls_each_end_with_the_exact_sum(live_server, acme):
    project, raw = acme
    users = ["alice", "bob"]
    for user in users:
        services.budget_set(project=project, user_id=user, total_budget=Decimal(100), actor="test")
    unit = Client(live_server.url, raw).cost_quote("gpt-4o-mini", prompt_tokens=1234, completion_tokens=567).cost

    context = multiprocessing.get_context("spawn")  # the live server runs in threads of this process
    start, done = context.Event(), context.Queue()
    workers = [context.Process(target=record_calls, args=(live_server.url, raw, users, 500, start, done))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    counts = [done.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert counts == [500, 500] and [w.exitcode for w in workers] == [0, 0]

    for user in users:
        assert CostEvent.objects.filter(user_id=user).count() == 500
        assert spend(user) == 500 * unit
    project.refresh_from_db()
    assert project.current_spend == 1000 * unit
    assert CostEvent.objects.values("idempotency_key").distinct().count() == 1000
