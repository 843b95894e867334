"""budget_client.litellm_proxy inside a real LiteLLM Proxy process, with this service live beside it.

Each test starts `litellm --config config.yaml` from .venv-proxy (`make proxy-venv`, which `make
test` runs) with the hook and a witness callback (tests/proxy_witness.py, what LiteLLM itself saw:
the calls sent on to the model, LiteLLM's `response_cost`), and a model answered by
`mock_response`. The mock's price is fixed in both places: output only, $0.0015 a token, 20
completion tokens a call (LiteLLM's mock usage) = $0.03, and each call asks max_tokens=20, so the
hold equals the cost and exactly floor($1 / $0.03) = 33 calls fit whatever the timing.
The proxy reports success after the answer is sent: the tests wait for the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from budgets.domain.pricing import clear_price_cache
from budgets.models import CostEvent, ModelPrice, Reservation, UserBudget

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
LITELLM = ROOT / ".venv-proxy" / "bin" / "litellm"
MASTER_KEY = "sk-proxy-test-master"
MODEL = "mock-expensive"
FAILING_MODEL = "mock-failing"
CHEAP_MODEL = "mock-cheap"  # a fallback the proxy routes (tests of BUDGET_MANAGER_FALLBACK)
CHEAP_OUTPUT_PRICE = Decimal("0.0001")
CHEAP_ANSWER = "Hello from the cheap mock."
OUTPUT_PRICE = Decimal("0.0015")
MOCK_COMPLETION_TOKENS = 20  # LiteLLM's DEFAULT_MOCK_RESPONSE_COMPLETION_TOKEN_COUNT
CALL_COST = OUTPUT_PRICE * MOCK_COMPLETION_TOKENS  # $0.03
# The status the proxy answers its own budget refusals with: litellm.budget_exceeded_status_code
# (litellm/__init__.py, 422 in LiteLLM 1.109; `budget_exceeded_status_code: 429` in litellm_settings
# restores the older answer). The hook raises the proxy's ProxyException with that status.
PROXY_BUDGET_STATUS = 422
MESSAGES = [{"role": "user", "content": "Say hello to the budget."}]

CONFIG = f"""
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_key: sk-not-used
      mock_response: "Hello from the mock."
      input_cost_per_token: 0
      output_cost_per_token: {OUTPUT_PRICE}
  - model_name: {CHEAP_MODEL}
    litellm_params:
      model: openai/{CHEAP_MODEL}
      api_key: sk-not-used
      mock_response: "{CHEAP_ANSWER}"
      input_cost_per_token: 0
      output_cost_per_token: {CHEAP_OUTPUT_PRICE}
  - model_name: {FAILING_MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_key: sk-not-used
      mock_response: "litellm.InternalServerError"
      input_cost_per_token: 0
      output_cost_per_token: {OUTPUT_PRICE}
litellm_settings:
  callbacks: ["budget_client.litellm_proxy.budget_hook", "proxy_witness.witness"]
  num_retries: 0
router_settings:
  num_retries: 0
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], state: Callable[[], Any], timeout: float = 60.0) -> None:
    """Bounded poll: the proxy reports success after it sent the answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {state()}"
        time.sleep(0.1)


class Proxy:
    def __init__(self, url: str, witness_file: Path, log_file: Path) -> None:
        self.url = url
        self.witness_file = witness_file
        self.log_file = log_file

    def events(self, kind: str) -> list[dict[str, Any]]:
        if not self.witness_file.exists():
            return []
        lines = self.witness_file.read_text().splitlines()
        return [event for event in map(json.loads, lines) if event["event"] == kind]

    def log_tail(self) -> str:
        return self.log_file.read_text()[-4000:] if self.log_file.exists() else ""

    def chat(self, *, user: str, model: str = MODEL, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                          json={"model": model, "messages": MESSAGES, "max_tokens": MOCK_COMPLETION_TOKENS,
                                "user": user, **body}, timeout=60)


@pytest.fixture
def alice(make_live_project):
    """acme with alice's $1 budget, and the mock model's price in the service's table (as in the proxy's config)."""
    project, raw_key = make_live_project(budgets={"alice": "1"})
    for model in (MODEL, FAILING_MODEL):
        ModelPrice.objects.create(model=model, input_cost_per_token=0, output_cost_per_token=OUTPUT_PRICE,
                                  source="admin")
    clear_price_cache()
    return project, raw_key


@pytest.fixture
def proxy_env() -> dict[str, str]:
    """More environment for the proxy (the hook's BUDGET_MANAGER_* settings); a test parametrizes it."""
    return {}


@pytest.fixture
def proxy(live_server, alice, proxy_env, tmp_path: Path) -> Iterator[Proxy]:
    """A LiteLLM Proxy process with the hook, on a free port; stopped after the test."""
    if not LITELLM.exists():
        pytest.skip("the LiteLLM Proxy is not installed: run `make proxy-venv`")
    (tmp_path / "config.yaml").write_text(CONFIG)
    shutil.copy(Path(__file__).with_name("proxy_witness.py"), tmp_path / "proxy_witness.py")
    env = {name: value for name, value in os.environ.items()
           # the proxy reads DATABASE_URL (and REDIS_*) as its own: it runs without them
           if name not in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "DJANGO_SETTINGS_MODULE")}
    env.update(LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True",
               BUDGET_MANAGER_URL=live_server.url, BUDGET_MANAGER_API_KEY=alice[1],
               PROXY_WITNESS_FILE=str(tmp_path / "witness.jsonl"), LITELLM_LOG="ERROR", **proxy_env)
    port = free_port()
    log_file = tmp_path / "proxy.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen([str(LITELLM), "--config", "config.yaml", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=tmp_path, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    proxy = Proxy(f"http://127.0.0.1:{port}", tmp_path / "witness.jsonl", log_file)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the proxy exited:\n{proxy.log_tail()}"
            assert time.monotonic() < deadline, f"the proxy did not start:\n{proxy.log_tail()}"
            try:
                if httpx.get(f"{proxy.url}/health/liveliness", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield proxy
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def alice_figures() -> tuple[Decimal, Decimal]:
    """alice's spend, and what her open reservations hold."""
    budget = UserBudget.objects.get(user_id="alice")
    held = sum((r.amount for r in Reservation.objects.filter(user_id="alice", status=Reservation.Status.OPEN)),
               Decimal(0))
    return budget.current_spend, held


async def fifty_calls(proxy: Proxy) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        return await asyncio.gather(*(
            http.post(f"{proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": MOCK_COMPLETION_TOKENS,
                            "user": "alice"})
            for _ in range(50)))


def test_fifty_concurrent_calls_admit_exactly_what_fits_and_the_ledger_is_litellms_cost(proxy):
    responses = asyncio.run(fifty_calls(proxy))

    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 33, (statuses, proxy.log_tail())
    assert statuses.count(PROXY_BUDGET_STATUS) == 17, statuses
    for refused in (r for r in responses if r.status_code == PROXY_BUDGET_STATUS):
        error = refused.json()["error"]
        assert error["type"] == "budget_exceeded"
        assert "the user budget has no room for $0.03" in error["message"] and "alice" in error["message"]

    wait_until(lambda: len(proxy.events("success")) == 33 and CostEvent.objects.count() == 33
               and alice_figures()[1] == 0,
               lambda: (len(proxy.events("success")), CostEvent.objects.count(), alice_figures()))
    # The refused calls never reached the model: LiteLLM sent on exactly the admitted ones, and
    # logged the others as refused at the proxy's gate.
    assert len(proxy.events("model_call")) == 33 and len(proxy.events("refused_at_gate")) == 17
    litellm_costs = [Decimal(event["response_cost"]) for event in proxy.events("success")]
    assert set(litellm_costs) == {CALL_COST}
    spend, held = alice_figures()
    assert spend == sum(litellm_costs) == Decimal("0.99") and held == 0
    assert sum(event.cost for event in CostEvent.objects.all()) == sum(litellm_costs)
    # One hold per admitted call, keyed by LiteLLM's call id, each settled into one ledger row.
    call_ids = {event["call_id"] for event in proxy.events("success")}
    reservations = Reservation.objects.all()
    assert {r.idempotency_key for r in reservations} == {f"litellm-proxy-reserve:{i}" for i in call_ids}
    assert {r.status for r in reservations} == {Reservation.Status.SETTLED}
    assert {r.event_id for r in reservations} == set(CostEvent.objects.values_list("id", flat=True))


def test_a_streamed_call_settles_with_litellms_cost_and_leaves_no_hold(proxy):
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": MOCK_COMPLETION_TOKENS,
                            "user": "alice", "stream": True}, timeout=60) as response:
        body = response.read().decode()
    assert response.status_code == 200 and "data: [DONE]" in body

    # The hook writes its witness line after the settle: wait for both.
    wait_until(lambda: CostEvent.objects.count() == 1 and alice_figures()[1] == 0 and len(proxy.events("success")) == 1,
               lambda: (proxy.events("success"), alice_figures(), proxy.log_tail()))
    [success] = proxy.events("success")
    assert success["stream"] is True
    event = CostEvent.objects.get()
    assert event.cost == Decimal(success["response_cost"]) > 0
    assert alice_figures() == (event.cost, 0)
    reservation = Reservation.objects.get()
    assert (reservation.status, reservation.event_id) == (Reservation.Status.SETTLED, event.id)
    assert reservation.idempotency_key == f"litellm-proxy-reserve:{success['call_id']}"


def test_a_failing_call_releases_its_hold_and_records_nothing(proxy):
    response = proxy.chat(user="alice", model=FAILING_MODEL)

    assert response.status_code == 500, response.text
    wait_until(lambda: Reservation.objects.filter(status=Reservation.Status.RELEASED).count() == 1,
               lambda: (list(Reservation.objects.values("status", "amount")), proxy.log_tail()))
    assert alice_figures() == (0, 0)
    assert not CostEvent.objects.exists()
    assert len(proxy.events("model_call")) == 1 and not proxy.events("success")


def test_a_call_that_names_no_user_passes_unbudgeted_and_a_refusal_writes_nothing(proxy):
    # No user (and no default user): not the hook's business, nothing held or recorded.
    anonymous = httpx.post(f"{proxy.url}/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                           json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5}, timeout=60)
    assert anonymous.status_code == 200
    # A worst case past the whole budget: refused before the model, nothing written.
    too_big = proxy.chat(user="alice", max_tokens=1000)  # 1000 x $0.0015 = $1.50 > $1
    assert too_big.status_code == PROXY_BUDGET_STATUS
    assert too_big.json()["error"]["type"] == "budget_exceeded"

    wait_until(lambda: len(proxy.events("success")) == 1, lambda: proxy.events("success"))
    assert len(proxy.events("model_call")) == 1 and len(proxy.events("refused_at_gate")) == 1
    assert not Reservation.objects.exists() and not CostEvent.objects.exists()
    assert alice_figures() == (0, 0)


@pytest.mark.parametrize("proxy_env", [{"BUDGET_MANAGER_USER_FROM": "end_user"}])
def test_the_user_may_come_from_the_proxys_end_user_header(proxy):
    response = httpx.post(f"{proxy.url}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {MASTER_KEY}", "x-litellm-end-user-id": "alice"},
                          json={"model": MODEL, "messages": MESSAGES, "max_tokens": MOCK_COMPLETION_TOKENS,
                                "user": "bob"}, timeout=60)

    assert response.status_code == 200, response.text
    wait_until(lambda: CostEvent.objects.count() == 1 and alice_figures()[1] == 0, alice_figures)
    assert CostEvent.objects.get().user_id == "alice" and alice_figures() == (CALL_COST, 0)



# --- BUDGET_MANAGER_FALLBACK: a refused call goes to the project's fallback, if the proxy routes it ----


@pytest.fixture
def alice_with_fallbacks(live_server, alice):
    """alice has $0.01: the expensive mock's $0.03 has no room, the cheap mock's 20 × $0.0001 has;
    the project's fallbacks send the expensive mock to the cheap one."""
    from budget_client import Client

    ModelPrice.objects.create(model=CHEAP_MODEL, input_cost_per_token=0, output_cost_per_token=CHEAP_OUTPUT_PRICE,
                              source="admin")
    clear_price_cache()
    with Client(live_server.url, alice[1], backoff=0.01) as client:
        client.set_budget("alice", Decimal("0.01"))
        client.set_fallbacks({MODEL: [CHEAP_MODEL]})
        yield client


@pytest.mark.parametrize("proxy_env", [{"BUDGET_MANAGER_FALLBACK": "1"}])
def test_with_fallback_on_a_refused_call_goes_to_the_fallback_model_and_holds_its_worst_case(alice_with_fallbacks,
                                                                                               proxy):
    response = proxy.chat(user="alice")

    assert response.status_code == 200, (response.text, proxy.log_tail())
    assert response.json()["choices"][0]["message"]["content"] == CHEAP_ANSWER
    cheap_cost = CHEAP_OUTPUT_PRICE * MOCK_COMPLETION_TOKENS
    wait_until(lambda: CostEvent.objects.count() == 1 and alice_figures()[1] == 0,
               lambda: (alice_figures(), proxy.events("success"), proxy.log_tail()))
    event = CostEvent.objects.get()
    assert (event.user_id, event.model, event.cost) == ("alice", CHEAP_MODEL, cheap_cost)
    assert alice_figures() == (cheap_cost, 0)
    # One hold, for the fallback (the refused one wrote nothing), under the call's fallback key.
    [success] = proxy.events("success")
    reservation = Reservation.objects.get()
    assert (reservation.status, reservation.event_id) == (Reservation.Status.SETTLED, event.id)
    assert reservation.model == CHEAP_MODEL and reservation.amount == cheap_cost
    assert reservation.idempotency_key == f"litellm-proxy-reserve:{success['call_id']}:fallback"
    [sent] = proxy.events("model_call")
    assert CHEAP_MODEL in sent["model"] and MODEL not in sent["model"]
    assert Decimal(success["response_cost"]) == cheap_cost

    # A fallback the proxy does not route (gpt-4o-mini is in the service's price table, not in the
    # proxy's model list): refused as without the setting; nothing held, nothing sent.
    alice_with_fallbacks.set_fallbacks({MODEL: ["gpt-4o-mini"]})
    refused = proxy.chat(user="alice")
    assert refused.status_code == PROXY_BUDGET_STATUS, refused.text
    assert refused.json()["error"]["type"] == "budget_exceeded"
    assert Reservation.objects.count() == 1 and CostEvent.objects.count() == 1
    assert alice_figures() == (cheap_cost, 0)
    assert len(proxy.events("model_call")) == 1


def test_without_the_setting_a_call_with_a_fallback_is_refused_as_before(alice_with_fallbacks, proxy):
    response = proxy.chat(user="alice")

    assert response.status_code == PROXY_BUDGET_STATUS, response.text
    assert response.json()["error"]["type"] == "budget_exceeded"
    wait_until(lambda: len(proxy.events("refused_at_gate")) == 1, lambda: proxy.events("refused_at_gate"))
    assert not proxy.events("model_call")
    assert not Reservation.objects.exists() and not CostEvent.objects.exists() and alice_figures() == (0, 0)
