"""Fallbacks where a client admits a call (issue 22): `client.reserve(..., fallback=True)`, sync and async.

Refused with a fallback model (402 carrying `error.fallback`), the hold is asked once more for that
model and says which model it is for (`hold.model`). Against the live server, as
tests/test_client_reservations.py; the refused-twice case scripts the answers (httpx.MockTransport).
The LiteLLM Proxy hook's BUDGET_MANAGER_FALLBACK runs in a real proxy in
tests/test_client_litellm_proxy.py; its key check runs here in the proxy's environment (.venv-proxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from budget_client import AsyncClient, BudgetExceeded, Client, Fallback

from budgets.models import CostEvent, Reservation

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.reservations]

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "Write a haiku about budgets."}]
MINI_COMPLETION = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 14, "completion_tokens": 500}}


@pytest.fixture
def client(budget_client):
    """gpt-4o falls back to gpt-4-turbo (dearer: never fits), then gpt-4o-mini; carol has $0.01:
    gpt-4o's 2000 completion tokens (≈ $0.02) do not fit, gpt-4o-mini's (≈ $0.0012) do."""
    budget_client.set_fallbacks({"gpt-4o": ["gpt-4-turbo", "gpt-4o-mini"]})
    budget_client.set_budget("carol", Decimal("0.01"))
    return budget_client


def test_a_refused_hold_with_fallback_holds_for_the_fallback_and_says_so(client):
    with client.reserve("carol", model="gpt-4o", messages=MESSAGES, max_tokens=2000, fallback=True) as hold:
        assert hold.model == hold.reservation.model == "gpt-4o-mini"
        assert hold.fallback is not None and hold.fallback.model == "gpt-4o-mini"
        # the fallback's worst case, as the refusal priced it: the same tokens at its price
        assert hold.reservation.amount == hold.fallback.worst_case > 0
        assert client.get_user("carol").held == hold.reservation.amount
        settlement = hold.settle(MINI_COMPLETION)

    assert settlement.event.model == "gpt-4o-mini" and settlement.reservation.status == "settled"
    carol = client.get_user("carol")
    assert (carol.held, carol.current_cost) == (0, settlement.cost)
    # One hold: the refused one wrote nothing.
    reservation = Reservation.objects.get()
    assert (reservation.model, reservation.status) == ("gpt-4o-mini", Reservation.Status.SETTLED)
    assert [(e.user_id, e.model) for e in CostEvent.objects.all()] == [("carol", "gpt-4o-mini")]


def test_a_hold_that_fits_is_for_the_model_asked(client):
    client.set_budget("carol", Decimal(1))
    with client.reserve("carol", model="gpt-4o", messages=MESSAGES, max_tokens=2000, fallback=True) as hold:
        assert (hold.model, hold.fallback) == ("gpt-4o", None)
    assert Reservation.objects.get().status == Reservation.Status.RELEASED


def test_without_fallback_or_without_one_to_take_the_refusal_is_raised_and_nothing_is_held(client):
    with pytest.raises(BudgetExceeded) as refused, client.reserve("carol", model="gpt-4o", messages=MESSAGES,
                                                                  max_tokens=2000):
        pytest.fail("admitted")
    assert refused.value.fallback is not None and refused.value.fallback.model == "gpt-4o-mini"

    # an estimated cost has nothing to re-price: no fallback is named, the refusal is raised
    with pytest.raises(BudgetExceeded) as refused, client.reserve("carol", model="gpt-4o",
                                                                  estimated_cost=Decimal(1), fallback=True):
        pytest.fail("admitted")
    assert refused.value.fallback is None
    # no fallback fits: gpt-4o-mini's worst case past $0.01 too
    with pytest.raises(BudgetExceeded) as refused, client.reserve("carol", model="gpt-4o", messages=MESSAGES,
                                                                  max_tokens=100_000, fallback=True):
        pytest.fail("admitted")
    assert refused.value.fallback is None

    assert not Reservation.objects.exists() and client.get_user("carol").held == 0


def test_the_async_hold_falls_back_the_same_way(client, live_server, acme):
    async def run() -> tuple[str | None, Decimal]:
        async with AsyncClient(live_server.url, acme[1], backoff=0.01) as aclient, aclient.reserve(
                "carol", model="gpt-4o", messages=MESSAGES, max_tokens=2000, fallback=True) as hold:
            settlement = await hold.settle(MINI_COMPLETION)
            return hold.model, settlement.cost

    model, cost = asyncio.run(run())

    assert model == "gpt-4o-mini"
    assert [(e.model, e.cost) for e in CostEvent.objects.all()] == [("gpt-4o-mini", cost)]
    assert Reservation.objects.get().model == "gpt-4o-mini"


# --- scripted answers: the retry is one request, under its own key; never chained -----------------


def refusal(model: str) -> httpx.Response:
    return httpx.Response(402, json={"error": {"type": "budget_exceeded", "message": "no room", "scope": "user",
                                               "fallback": {"model": model, "worst_case": 0.001}}})


def test_a_fallback_refused_in_turn_is_raised_and_not_chained():
    seen: list[tuple[str | None, dict]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.headers.get("Idempotency-Key"), body))
        return refusal(f"{body['model']}-cheaper")

    with Client("http://bm.test", "bm_test", transport=httpx.MockTransport(answer), backoff=0) as client:
        with pytest.raises(BudgetExceeded) as refused, client.reserve(
                "carol", model="gpt-4o", messages=MESSAGES, max_tokens=10, fallback=True):
            pytest.fail("admitted")

    assert refused.value.fallback == Fallback("gpt-4o-cheaper-cheaper", Decimal("0.001"))  # the second refusal
    assert [body["model"] for _, body in seen] == ["gpt-4o", "gpt-4o-cheaper"]
    assert seen[1][1] == {**seen[0][1], "model": "gpt-4o-cheaper"}  # the same call, the fallback's model
    keys = [key for key, _ in seen]
    assert None not in keys and len(set(keys)) == 2  # each request its own Idempotency-Key


def test_a_retried_fallback_request_keeps_its_key():
    seen: list[tuple[str | None, str]] = []
    answers = iter([refusal("gpt-4o-mini"), httpx.Response(503),
                    httpx.Response(201, json={"id": 7, "user": "carol", "model": "gpt-4o-mini", "amount": 0.001,
                                              "status": "open", "expires_at": None, "created_at": None})])

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers.get("Idempotency-Key"), json.loads(request.content)["model"]))
        return next(answers)

    with Client("http://bm.test", "bm_test", transport=httpx.MockTransport(answer), backoff=0) as client:
        hold = client.reserve("carol", model="gpt-4o", messages=MESSAGES, max_tokens=10, fallback=True)
        hold.__enter__()

    assert hold.model == "gpt-4o-mini" and hold.id == 7
    assert [model for _, model in seen] == ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
    assert seen[1][0] == seen[2][0] != seen[0][0]


# --- the proxy hook's check: would this proxy route the fallback for the caller's key? ---------------


PROXY_CHECK = textwrap.dedent("""
    import asyncio, json
    from litellm import Router
    from litellm.proxy._types import UserAPIKeyAuth
    from budget_client.litellm_proxy import proxy_may_call

    router = Router(model_list=[{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_key": "x"}}
                                for name in ("big", "small")])
    only_big = UserAPIKeyAuth(api_key="sk-only-big", models=["big"])
    any_model = UserAPIKeyAuth(api_key="sk-any")
    print(json.dumps([asyncio.run(check) for check in (
        proxy_may_call("small", any_model, router),   # routed, the key may call any model
        proxy_may_call("small", only_big, router),    # routed, but not for this key
        proxy_may_call("gpt-4o-mini", any_model, router),  # not one of the proxy's models
        proxy_may_call("small", any_model),           # no proxy running: cannot tell
    )]))
""")


def test_the_proxy_hook_falls_back_only_to_a_model_the_proxy_routes_for_the_key():
    python = ROOT / ".venv-proxy" / "bin" / "python"
    if not python.exists():
        pytest.skip("the LiteLLM Proxy is not installed: run `make proxy-venv`")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([str(python), "-c", PROXY_CHECK], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, False, False, None]


def test_the_proxy_hooks_fallback_setting_comes_from_the_environment(monkeypatch):
    pytest.importorskip("litellm", reason="install requirements-litellm.txt")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from budget_client.litellm_proxy import ProxyHookSettings

    assert ProxyHookSettings.from_env().fallback is False
    monkeypatch.setenv("BUDGET_MANAGER_FALLBACK", "1")
    assert ProxyHookSettings.from_env().fallback is True
    monkeypatch.setenv("BUDGET_MANAGER_FALLBACK", "maybe")
    with pytest.raises(ValueError, match="BUDGET_MANAGER_FALLBACK"):
        ProxyHookSettings.from_env()
