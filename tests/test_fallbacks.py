"""Fallbacks: a project names fallback models per model; a refused call's 402 (and a check) names the first
that fits every applicable limit, re-priced with the same token counts; settable by the API and the console."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from budgets import services
from budgets.base.money import stored
from budgets.domain import pricing
from budgets.domain.usage import Usage
from budgets.models import AuditLog, CostEvent, Limit, Project, Reservation
from tests.api_helpers import assert_error, body_of

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "user", "content": "Summarise the quarterly report, please."}]
MAX_TOKENS = 2000  # gpt-4o's worst case ≈ $0.02; gpt-4o-mini's ≈ $0.0012; gpt-4-turbo's ≈ $0.06


def worst_case(model: str, prompt_tokens: int, completion_tokens: int = MAX_TOKENS) -> Decimal:
    return stored(pricing.cost_of_usage(Usage(model, prompt_tokens, completion_tokens)))


def set_fallbacks(project: Project, fallbacks: dict) -> None:
    services.project_update(project=project, actor="test", fallbacks=fallbacks)


@pytest.fixture
def client_as(project):
    def make(role: str) -> Client:
        person = get_user_model().objects.create_user(f"{role}-person", password="pw-123456-x")
        services.member_add(project=project, user=person, role=role, actor="test")
        client = Client()
        client.force_login(person)
        return client

    return make


@pytest.fixture
def alice(make_budget):
    return make_budget("alice", total_budget="0.01")


def reserve(api, model: str = "gpt-4o", **extra):
    return api.post("/api/v1/users/alice/reservations",
                    {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra})


def prompt_tokens(api, model: str = "gpt-4o") -> int:
    answer = api.post("/api/v1/users/alice/projected-cost", {"model": model, "messages": MESSAGES})
    return body_of(answer)["prompt_tokens"]


# --- the 402 names a fallback -------------------------------------------------------------------


def test_a_refused_reservation_names_the_first_fallback_that_fits_and_skips_one_that_does_not(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["gpt-4-turbo", "gpt-4o-mini", "gpt-3.5-turbo"]})
    tokens = prompt_tokens(api)

    error = assert_error(reserve(api), 402, "budget_exceeded")

    # gpt-4-turbo's worst case ($0.06) does not fit $0.01 either: skipped; gpt-4o-mini's does.
    assert error["fallback"] == {"model": "gpt-4o-mini", "worst_case": worst_case("gpt-4o-mini", tokens)}
    assert error["scope"] == "user"
    assert not Reservation.objects.exists()  # the advice wrote nothing

    # The retry with the fallback is admitted for real, holding exactly that worst case.
    held = reserve(api, "gpt-4o-mini")
    assert held.status_code == 201, held.content
    assert body_of(held)["amount"] == error["fallback"]["worst_case"]


def test_a_fallback_that_a_model_limit_refuses_is_skipped(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini", "gpt-3.5-turbo"]})
    services.limit_create(project=project, scope="project", subject=None, model="gpt-4o-mini", unit="usd",
                          window="day", amount=Decimal("0.001"), mode="hard", actor="test")
    tokens = prompt_tokens(api)

    error = assert_error(reserve(api), 402, "budget_exceeded")

    # gpt-4o-mini fits alice's $0.01 but not its own model's $0.001 a day; gpt-3.5-turbo fits both.
    assert error["fallback"] == {"model": "gpt-3.5-turbo", "worst_case": worst_case("gpt-3.5-turbo", tokens)}


def test_no_fallback_that_fits_is_null(project, alice, api):
    # Every fallback needs the same tokens: a user's token limit below them refuses each one.
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini", "gpt-3.5-turbo"]})
    services.limit_create(project=project, scope="user", subject="alice", model=None, unit="tokens",
                          window="day", amount=Decimal(100), mode="hard", actor="test")

    error = assert_error(reserve(api), 402, "budget_exceeded")

    assert "fallback" in error and error["fallback"] is None


def test_a_model_without_fallbacks_is_null(project, alice, api):
    set_fallbacks(project, {"claude-sonnet-4-5": ["claude-haiku-4-5"]})
    error = assert_error(reserve(api), 402, "budget_exceeded")
    assert "fallback" in error and error["fallback"] is None

    # a reservation of an estimated cost has no tokens to re-price
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini"]})
    error = assert_error(api.post("/api/v1/users/alice/reservations", {"model": "gpt-4o", "estimated_cost": 1}),
                         402, "budget_exceeded")
    assert error["fallback"] is None


def test_fallbacks_are_found_under_the_price_tables_name_and_an_unknown_fallback_is_skipped(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["my-private-llama", "openai/gpt-4o", "gpt-4o-mini"]})
    tokens = prompt_tokens(api)

    error = assert_error(reserve(api, "openai/gpt-4o"), 402, "budget_exceeded")

    # no price for my-private-llama; openai/gpt-4o is the refused model itself
    assert error["fallback"] == {"model": "gpt-4o-mini", "worst_case": worst_case("gpt-4o-mini", tokens)}


def test_an_enforced_record_names_a_fallback_for_its_own_tokens(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini"]})
    body = {"model": "gpt-4o", "prompt_tokens": 1000, "completion_tokens": 1000}

    error = assert_error(api.post("/api/v1/users/alice/costs?enforce=true", body), 402, "budget_exceeded")

    assert error["fallback"] == {"model": "gpt-4o-mini", "worst_case": worst_case("gpt-4o-mini", 1000, 1000)}
    assert not CostEvent.objects.exists()
    # A bare cost has no tokens to re-price.
    error = assert_error(api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 1}),
                         402, "budget_exceeded")
    assert error["fallback"] is None


def test_a_check_that_is_not_allowed_names_the_fallback(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["gpt-4-turbo", "gpt-4o-mini"]})
    tokens = prompt_tokens(api)
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    check = body_of(api.post("/api/v1/users/alice/check", body))

    assert check["allowed"] is False
    assert check["fallback"] == {"model": "gpt-4o-mini", "worst_case": worst_case("gpt-4o-mini", tokens)}
    allowed = body_of(api.post("/api/v1/users/alice/check", {**body, "max_tokens": 10}))
    assert allowed["allowed"] is True and allowed["fallback"] is None


# --- setting them -------------------------------------------------------------------------------


def test_the_api_reads_and_replaces_the_fallbacks_audited(project, api):
    assert body_of(api.get("/api/v1/fallbacks")) == {"fallbacks": {}}
    wanted = {"gpt-4o": ["gpt-4o-mini"], "claude-sonnet-4-5": ["claude-haiku-4-5", "my-llama"]}

    answer = api.put("/api/v1/fallbacks", {"fallbacks": wanted})

    assert answer.status_code == 200 and body_of(answer) == {"fallbacks": wanted}
    project.refresh_from_db()
    assert project.fallbacks == wanted
    assert body_of(api.get("/api/v1/fallbacks")) == {"fallbacks": wanted}
    audit = AuditLog.objects.filter(project=project, action="project_update").latest("id")
    assert audit.before["fallbacks"] == {} and audit.after == {"fallbacks": wanted}
    assert audit.actor.startswith("key:")

    assert body_of(api.put("/api/v1/fallbacks", {"fallbacks": {}})) == {"fallbacks": {}}


@pytest.mark.parametrize(("fallbacks", "status"), [
    ({"gpt-4o": ["gpt-4o"]}, 422),                                 # itself
    ({"gpt-4o": ["gpt-4o-mini", "gpt-4o-mini"]}, 422),             # twice
    ({"gpt-4o": ["gpt-4o-mini", " gpt-4o-mini "]}, 422),           # twice once stripped
    ({"gpt-4o": [f"m{i}" for i in range(6)]}, 400),                # more than 5
    ({"gpt-4o": []}, 400),
    ({"gpt-4o": "gpt-4o-mini"}, 400),                              # not a list
    ({"gpt-4o": ["bad\nname"]}, 400),
    ({" ": ["gpt-4o-mini"]}, 400),
    ({"x" * 256: ["gpt-4o-mini"]}, 400),
    ({f"m{i}": ["gpt-4o-mini"] for i in range(101)}, 400),         # more than 100 models
    (["gpt-4o"], 400),
])
def test_bad_fallbacks_are_refused_and_nothing_is_written(project, api, fallbacks, status):
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini"]})
    audits = AuditLog.objects.count()

    error = assert_error(api.put("/api/v1/fallbacks", {"fallbacks": fallbacks}), status, "validation_error")

    assert error["message"]
    project.refresh_from_db()
    assert project.fallbacks == {"gpt-4o": ["gpt-4o-mini"]}
    assert AuditLog.objects.count() == audits


def test_the_service_refuses_what_the_schema_cannot_say(project):
    with pytest.raises(services.InvalidInput, match="its own fallback"):
        set_fallbacks(project, {" gpt-4o": ["gpt-4o"]})
    with pytest.raises(services.InvalidInput, match="twice"):
        set_fallbacks(project, {"gpt-4o": ["a"], " gpt-4o ": ["b"]})
    project.refresh_from_db()
    assert project.fallbacks == {}


# --- the console --------------------------------------------------------------------------------


def test_the_settings_page_shows_and_saves_fallbacks(project, client_as):
    owner_client = client_as("manager")
    page = owner_client.get(f"/projects/{project.pk}/settings/")
    assert page.status_code == 200 and b'id="fallbacks-form"' in page.content

    typed = "gpt-4o: gpt-4o-mini, gpt-3.5-turbo\n\nclaude-sonnet-4-5 → claude-haiku-4-5"
    saved = owner_client.post(f"/projects/{project.pk}/settings/fallbacks/", {"fallbacks": typed})

    assert saved.status_code == 302
    project.refresh_from_db()
    assert project.fallbacks == {"gpt-4o": ["gpt-4o-mini", "gpt-3.5-turbo"], "claude-sonnet-4-5": ["claude-haiku-4-5"]}
    audit = AuditLog.objects.filter(project=project, action="project_update").latest("id")
    assert "manager-person" in audit.actor and audit.after == {"fallbacks": project.fallbacks}
    page = owner_client.get(f"/projects/{project.pk}/settings/")
    assert "gpt-4o → gpt-4o-mini, gpt-3.5-turbo\nclaude-sonnet-4-5 → claude-haiku-4-5" in page.content.decode()


@pytest.mark.parametrize("text", ["gpt-4o: gpt-4o", "gpt-4o gpt-4o-mini", "gpt-4o: a, b, c, d, e, f", "gpt-4o:"])
def test_the_settings_page_refuses_bad_fallbacks_beside_the_form(project, client_as, text):
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini"]})
    owner = client_as("owner")
    audits = AuditLog.objects.count()

    refused = owner.post(f"/projects/{project.pk}/settings/fallbacks/", {"fallbacks": text})

    assert refused.status_code == 400 and b"invalid-feedback" in refused.content
    assert AuditLog.objects.count() == audits
    project.refresh_from_db()
    assert project.fallbacks == {"gpt-4o": ["gpt-4o-mini"]}


def test_a_viewer_cannot_change_fallbacks(project, client_as):
    viewer = client_as("viewer")
    refused = viewer.post(f"/projects/{project.pk}/settings/fallbacks/", {"fallbacks": "gpt-4o: gpt-4o-mini"})
    assert refused.status_code == 403
    project.refresh_from_db()
    assert project.fallbacks == {}


def test_limits_are_unchanged_by_the_advice(project, alice, api):
    set_fallbacks(project, {"gpt-4o": ["gpt-4o-mini"]})
    limit = services.limit_create(project=project, scope="user", subject="alice", model=None, unit="usd",
                                  window="day", amount=Decimal(1), mode="hard", actor="test")
    assert_error(reserve(api), 402, "budget_exceeded")
    limit = Limit.objects.get(pk=limit.pk)
    assert (limit.used, limit.held) == (0, 0)
