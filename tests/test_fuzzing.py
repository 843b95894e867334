"""Fuzzing: schemathesis over every operation of /api/v1/openapi.json, and hostile bodies for the hosted
`/set_budget` and for recording a cost.

Schemathesis runs in-process through the WSGI app, with a valid key, a bounded and derandomized
number of examples per operation; the checks are no 5xx and every answer matching its declared
schema. The hypothesis tests send raw JSON text (so tokens like `1e309` reach the parser as
written) and require a 200/201 or a clear 4xx, never a 5xx, and nothing written by a 4xx.
"""

# JSON bodies are built as text with %-templates: braces would need doubling in f-strings and format().
# ruff: noqa: UP031

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core import signals
from django.db import close_old_connections
from django.db.models import Count, Sum
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from budgets.models import AuditLog, CostEvent, ModelSpend, Project, Reservation, UserBudget
from tests.api_helpers import new_key

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in requirements-test.txt")
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

FUZZ_EXAMPLES = 10  # per operation and phase: 16 operations, positive and negative data
STATEFUL_EXAMPLES = 10  # sequences of linked calls (create a budget, then read, reset, record, delete it)
load_all_checks()
# Every check schemathesis has (`--checks all`): no 5xx, answers as declared, and every request the
# schema allows accepted (2xx, or 402/404/409/422 for what the request means: schemathesis.toml),
# every request it forbids refused.
ALL_CHECKS = CHECKS.get_all()


@pytest.fixture
def fuzz_key(project, make_budget):
    make_budget("alice", total_budget="1000")
    make_budget("bob", total_budget="5", duration="daily")
    key = new_key(project)
    # Something for every read to find: costs, a reservation.
    client = Client()
    for body in ({"model": "gpt-4o", "prompt_tokens": 100, "completion_tokens": 50}, {"model": "x", "cost": 1}):
        assert client.post("/api/v1/users/alice/costs", body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 201
    assert client.post("/api/v1/users/alice/reservations", {"model": "gpt-4o", "amount": 1},
                       content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}").status_code in (201, 400)
    # Schemathesis calls the WSGI app directly: Django would close the connection of the test's
    # transaction after each request (the test client disconnects these receivers itself, and
    # connects them again after each request, so this comes after the setup's requests).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield key
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _load_schema() -> Any:
    """Read at collection: the schema document needs no database."""
    from budgetsite.wsgi import application

    config = SchemathesisConfig.from_path(Path(__file__).resolve().parent.parent / "schemathesis.toml")
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application, config=config)


schema = _load_schema()


# Committed per request, as in production: inside one test transaction, a request the API refuses
# after a database error (an offset past bigint: a 400) would poison every later example.
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_accepts_what_its_schema_allows_and_refuses_the_rest(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, checks=ALL_CHECKS)


class _Workflow(schema.as_state_machine()):  # type: ignore[misc]
    """Calls chained by the schema's links, with every check after each."""

    key = ""

    def get_call_kwargs(self, case: Any) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Bearer {self.key}"}}

    def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
        case.validate_response(response, checks=ALL_CHECKS, headers=kwargs.get("headers"),
                               recorder=getattr(self, "recorder", None))


@pytest.mark.django_db(transaction=True)
def test_linked_calls_accept_what_the_schema_allows_and_refuse_the_rest(fuzz_key):
    _Workflow.key = fuzz_key
    _Workflow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6, deadline=None,
                                    derandomize=True, database=None, suppress_health_check=list(HealthCheck)))


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/alerts"])
def test_an_offset_past_any_page_is_a_validation_error_never_a_500(project, path):
    """Found by schemathesis on SQLite: an offset past 2**63 was a 500 (sqlite3 "datatype mismatch")."""
    key = new_key(project)
    for offset in ("18195365759539468756345752536481792", str(2**63), "1000000001"):
        response = Client().get(f"{path}?offset={offset}", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert response.status_code == 400, response.content
        assert json.loads(response.content)["error"]["type"] == "validation_error"
    assert Client().get(f"{path}?offset=1000000000", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200


# --- hostile bodies -----------------------------------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000
HOSTILE_NUMBERS = [
    "1e309", "-1e309", "1e-400", "NaN", "Infinity", "-Infinity", "-0", "-1", "0", "0.5", "1E+2",
    "1" + "0" * 40, "0." + "1" * 40, "1234567890123456789012345678901234567890.123456789",
    "9" * 400, "1e1000000", "-0.0000000000000000000000000000000000000001",
]
HOSTILE_STRINGS = ["", "alice", "a\u0000b", "x" * 10_000, "../alice", "gpt-4o", "\u2028", "=1+1", "a/b"]

raw_scalar = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_STRINGS).map(json.dumps),
    st.text(max_size=30).map(json.dumps),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.sampled_from(["null", "true", "false", "{}", "[]", DEEP]),
)


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


raw_value = st.recursive(
    raw_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(st.text(max_size=10), inner), max_size=4).map(_object),
    ),
    max_leaves=12,
)
RECORD_KEYS = ["total_budget", "duration", "created_at", "last_updated_at", "current_cost", "model_cost"]
# Mostly sensible numbers, sometimes a hostile one: records the merge accepts, and ones one field off.
some_number = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False).map(str),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(HOSTILE_NUMBERS),
)
plausible_record = st.builds(
    lambda total, duration, cost, model_cost: '{"total_budget": %s, "duration": %s, "current_cost": %s, '
                                              '"model_cost": {"gpt-4o": %s}}' % (total, duration, cost, model_cost),
    some_number, st.sampled_from(["1", "7", "28", "365", "0", "-1", "1.5", "null", '"daily"', "99999999999"]),
    some_number, some_number,
)
raw_record = st.one_of(
    plausible_record,
    st.lists(st.tuples(st.sampled_from(RECORD_KEYS) | st.text(max_size=8), raw_value), max_size=6).map(_object),
    st.lists(st.tuples(st.sampled_from(RECORD_KEYS), raw_scalar), max_size=6).map(_object),
    raw_value,
)
user_ids = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.sampled_from(["alice", "bob", "carol"]), st.text(max_size=40))
raw_user_dict = st.one_of(
    st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol"]), plausible_record), min_size=1, max_size=2).map(
        _object),
    st.lists(st.tuples(user_ids, raw_record), max_size=4).map(_object),
    raw_value,
)
COST_KEYS = ["model", "cost", "prompt_tokens", "completion_tokens", "input_text", "output_text", "completion",
             "input_cost_per_token", "output_cost_per_token", "cached_tokens", "metadata"]
raw_cost_body = st.one_of(
    st.lists(st.tuples(st.sampled_from(COST_KEYS), raw_value), max_size=5).map(_object),
    some_number.map(lambda n: '{"model": "gpt-4o", "cost": %s}' % n),
    st.tuples(some_number, some_number).map(
        lambda n: '{"model": "gpt-4o", "prompt_tokens": %s, "completion_tokens": %s}' % n),
    raw_value,
)


def books() -> tuple[Any, ...]:
    """Everything a request could write, summed."""
    budgets = UserBudget.objects.aggregate(n=Count("id"), total=Sum("total_budget"), spend=Sum("current_spend"))
    return (budgets["n"], budgets["total"], budgets["spend"], CostEvent.objects.count(),
            ModelSpend.objects.aggregate(s=Sum("spend"))["s"], AuditLog.objects.count(), Reservation.objects.count(),
            Project.objects.values_list("current_spend", flat=True).get(name="acme"))


@pytest.fixture
def hostile_client(project, make_budget) -> tuple[Client, str]:
    make_budget("alice", total_budget="1000")
    return Client(), new_key(project)


def assert_clear_answer(response: Any, before: tuple[Any, ...], ok: int) -> None:
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, response.content[:500]
    assert response.status_code == ok or 400 <= response.status_code < 500, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    if response.status_code != ok:
        assert books() == before, "a refused request wrote something"


HOSTILE = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.data_too_large])


@pytest.mark.slow
@pytest.mark.django_db
@HOSTILE
@given(user_dict=raw_user_dict)
def test_hosted_set_budget_answers_200_or_a_clear_4xx_to_any_user_dict_and_a_4xx_writes_nothing(
    hostile_client, user_dict
):
    client, key = hostile_client
    before = books()
    response = client.post("/set_budget", '{"project_name": "acme", "user_dict": %s}' % user_dict,
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert_clear_answer(response, before, 200)
    if response.status_code != 200:
        assert json.loads(response.content)["status"] == "error"


@pytest.mark.slow
@pytest.mark.django_db
@HOSTILE
@given(body=raw_cost_body, user=st.one_of(st.just("alice"), user_ids))
def test_recording_a_cost_answers_201_or_a_clear_4xx_to_any_body_and_a_4xx_writes_nothing(
    hostile_client, body, user
):
    from urllib.parse import quote

    client, key = hostile_client
    before = books()
    response = client.post(f"/api/v1/users/{quote(user, safe='')}/costs", body, content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {key}")
    assert_clear_answer(response, before, 201)
    if response.status_code == 201:
        assert CostEvent.objects.count() == before[3] + 1
        assert UserBudget.objects.get(user_id="alice").current_spend >= Decimal(0)
    else:
        assert set(json.loads(response.content)["error"]) >= {"type", "message"}


@pytest.mark.django_db
def test_the_named_hostile_bodies_each_get_a_clear_4xx(hostile_client):
    """The cases the brief names, each sent once whatever hypothesis picks."""
    client, key = hostile_client
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    before = books()
    for user_dict in ('{"a": {"total_budget": 1e309}}', '{"a": {"total_budget": %s}}' % ("1" * 40 + ".5"),
                      '{"a\\u0000b": {"total_budget": 1}}', '{"%s": {"total_budget": 1}}' % ("x" * 10_000),
                      '{"a": %s}' % DEEP, DEEP, '{"a": {"total_budget": 1, "model_cost": {"m": 1e309}}}'):
        response = client.post("/set_budget", '{"project_name": "acme", "user_dict": %s}' % user_dict,
                               content_type="application/json", **auth)
        assert 400 <= response.status_code < 500, (user_dict[:60], response.status_code, response.content[:300])
    for body in ('{"model": "gpt-4o", "cost": 1e309}', '{"model": "gpt-4o", "cost": %s}' % ("1" * 40),
                 '{"model": "gpt-4o\\u0000", "cost": 1}', '{"model": %s, "cost": 1}' % DEEP, DEEP,
                 '{"model": "%s", "cost": 1}' % ("x" * 10_000)):
        response = client.post("/api/v1/users/alice/costs", body, content_type="application/json", **auth)
        assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.content[:300])
    assert books() == before
