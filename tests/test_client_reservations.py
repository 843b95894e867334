"""The client's reserve → call → settle against a live server (SPEC section 8).

Written against the reservations contract (POST /api/v1/users/{user}/reservations,
/reservations/{id}/settle, /release, GET /reservations/{id}, "held" in the user answer)
while the server side lands in parallel: marked `reservations`.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from budget_client import AsyncClient, BudgetExceeded, Client

from budgets.models import CostEvent, Project, UserBudget
from tests.client_support import DROP_AFTER_FORWARD, FlakyProxy

# slow: each test empties the database, loads the price map again and talks HTTP to the live server.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.reservations]

MESSAGES = [{"role": "user", "content": "Write a haiku about budgets."}]
COMPLETION = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}
GPT_4O_MINI_1000_500 = Decimal("0.00045")


@pytest.fixture
def client(budget_client):
    budget_client.set_budget("alice", 1)
    return budget_client


def spend(user: str) -> Decimal:
    return UserBudget.objects.get(user_id=user).current_spend


def test_a_hold_settled_in_the_block_records_once_and_frees_the_hold(client):
    # 2000 completion tokens at $0.60/M hold more than the settled 1000 + 500 tokens cost.
    with client.reserve("alice", model="gpt-4o-mini", messages=MESSAGES, max_tokens=2000) as hold:
        assert hold.reservation.status == "open" and hold.reservation.amount > 0
        assert hold.reservation.model == "gpt-4o-mini"
        assert client.get_user("alice").held == hold.reservation.amount
        settlement = hold.settle(COMPLETION)

    assert settlement.reservation.status == "settled" and settlement.cost == GPT_4O_MINI_1000_500
    assert settlement.event.cost == GPT_4O_MINI_1000_500 and not settlement.over_hold
    assert client.get_reservation(hold.id).status == "settled"  # not released on leaving the block
    alice = client.get_user("alice")
    assert (alice.held, alice.current_cost) == (0, GPT_4O_MINI_1000_500)
    assert CostEvent.objects.count() == 1 and spend("alice") == GPT_4O_MINI_1000_500


def test_a_settle_without_a_model_uses_the_reservations(client):
    with client.reserve("alice", model="gpt-4o-mini", messages=MESSAGES, max_tokens=500) as hold:
        settlement = hold.settle(prompt_tokens=1000, completion_tokens=500)
    assert (settlement.event.model, settlement.cost) == ("gpt-4o-mini", GPT_4O_MINI_1000_500)


def test_a_block_that_raises_releases_the_hold_and_records_nothing(client):
    with pytest.raises(RuntimeError), client.reserve("alice", estimated_cost=Decimal("0.5")) as hold:
        raise RuntimeError("the provider failed")
    assert client.get_reservation(hold.id).status == "released"
    assert client.get_user("alice").held == 0
    assert not CostEvent.objects.exists() and spend("alice") == 0


def test_a_block_left_without_settling_releases_the_hold(client):
    with client.reserve("alice", estimated_cost=Decimal("0.5")) as hold:
        pass
    assert client.get_reservation(hold.id).status == "released"


def test_open_holds_count_against_the_budget_and_no_room_names_the_scope(client, acme):
    project, _ = acme
    with client.reserve("alice", estimated_cost=Decimal("0.6")):
        with pytest.raises(BudgetExceeded) as exceeded, client.reserve("alice", estimated_cost=Decimal("0.6")):
            pytest.fail("a second hold past the budget was admitted")
        assert exceeded.value.status == 402 and exceeded.value.scope == "user"
    # released: the room is back
    with client.reserve("alice", estimated_cost=Decimal("0.6")) as hold:
        hold.settle(model="private", cost=Decimal("0.1"))

    Project.objects.filter(pk=project.pk).update(max_budget=Decimal("0.5"))
    with pytest.raises(BudgetExceeded) as exceeded:
        client.create_reservation("alice", estimated_cost=Decimal("0.45"))
    assert exceeded.value.scope == "project"
    assert CostEvent.objects.count() == 1 and spend("alice") == Decimal("0.1")


def test_retries_of_a_lost_reservation_and_a_lost_settle_hold_and_record_once(live_server, acme):
    proxy = FlakyProxy(live_server.url)
    try:
        with Client(proxy.url, acme[1], backoff=0.01) as client:
            client.set_budget("alice", 1)
            proxy.script.append(DROP_AFTER_FORWARD)  # the reservation is made, its answer lost
            with client.reserve("alice", estimated_cost=Decimal("0.4")) as hold:
                assert client.get_user("alice").held == Decimal("0.4")  # held once, not twice
                proxy.script.append(DROP_AFTER_FORWARD)  # the settle is recorded, its answer lost
                settlement = hold.settle(COMPLETION)
            assert settlement.cost == GPT_4O_MINI_1000_500
    finally:
        proxy.close()
    assert CostEvent.objects.count() == 1 and spend("alice") == GPT_4O_MINI_1000_500
    settles = [s.idempotency_key for s in proxy.seen if s.path.endswith("/settle")]
    assert len(settles) == 2 and settles[0] == settles[1]


def test_the_async_hold_settles_and_releases(live_server, acme):
    async def scenario() -> tuple[str, str]:
        async with AsyncClient(live_server.url, acme[1], backoff=0.01) as client:
            await client.set_budget("alice", 1)
            async with client.reserve("alice", model="gpt-4o-mini", messages=MESSAGES, max_tokens=500) as hold:
                await hold.settle(COMPLETION)
            try:
                async with client.reserve("alice", estimated_cost=Decimal("0.5")) as failed:
                    raise RuntimeError
            except RuntimeError:
                pass
            return (await client.get_reservation(hold.id)).status, (await client.get_reservation(failed.id)).status

    assert asyncio.run(scenario()) == ("settled", "released")
    assert CostEvent.objects.count() == 1 and spend("alice") == GPT_4O_MINI_1000_500
