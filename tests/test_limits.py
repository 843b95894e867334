"""Limits at every level (SPEC §12): admission over every applicable limit, counting, windows, tags, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.domain.usage import Usage
from budgets.manager import BudgetManager
from budgets.models import Alert, ApiKey, AuditLog, CostEvent, Limit, Reservation, Team, TeamMember
from budgets.services.alerts import alert_payload
from budgets.services.costs import cost_record
from budgets.services.limit_windows import limits_current, limits_reset_due, window_of
from budgets.services.reservations import reservations_expire
from budgets.tasks import run_reset_sweep
from tests.api_helpers import ApiClient, body_of, db_state, new_key
from tests.test_hosted import Hosted, record

pytestmark = pytest.mark.django_db
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")
MINI = {"model": "gpt-4o-mini", "prompt_tokens": 1000, "completion_tokens": 500}  # $0.00045


def limit(project, scope="user", subject="alice", *, amount="1", unit="usd", window="month", mode="hard",
          model="", used="0", at=None):
    start, resets_at = window_of(window, project, at or utcnow())
    return Limit.objects.create(project=project, scope=scope, subject=subject, model=model, unit=unit,
                                window=window, amount=Decimal(amount), mode=mode, used=Decimal(used),
                                window_start=start, resets_at=resets_at)


def team(project, name, *users):
    research = Team.objects.create(project=project, name=name)
    for user in users:
        TeamMember.objects.create(team=research, project=project, user_id=user)
    return research


@pytest.fixture
def ci(project) -> ApiClient:
    """A client whose API key is named "ci" (key limits name keys)."""
    return ApiClient(new_key(project, name="ci"))


def used(row: Limit) -> Decimal:
    row.refresh_from_db()
    return row.used


# --- counting -------------------------------------------------------------------------------------


def test_a_plain_record_counts_against_every_applicable_limit_in_its_unit(ci, project, make_budget):
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    counted = [
        limit(project, "project", "", amount="100"),
        limit(project, "team", "research", amount="100", mode="soft"),
        limit(project, "user", "alice", amount="100000", unit="tokens", window="day"),
        limit(project, "key", "ci", amount="100", unit="requests", window="hour"),
        limit(project, "tag", "summarizer", amount="100", window="year"),
        limit(project, "user", "alice", amount="100", model="gpt-4o-mini", window="lifetime"),
    ]
    untouched = [
        limit(project, "user", "bob", amount="100"),
        limit(project, "tag", "other", amount="100"),
        limit(project, "user", "alice", amount="100", model="gpt-4o"),
        limit(project, "key", "test key", amount="100"),
    ]

    response = ci.post("/api/v1/users/alice/costs", {**MINI, "tags": ["summarizer", "eu"]})

    assert response.status_code == 201
    assert [used(row) for row in counted] == [Decimal("0.00045"), Decimal("0.00045"), 1500, 1, Decimal("0.00045"),
                                              Decimal("0.00045")]
    assert [used(row) for row in untouched] == [0, 0, 0, 0]
    event = CostEvent.objects.get()
    assert (event.tags, event.api_key.name) == (",eu,summarizer,", "ci")


def test_the_manager_records_with_tags_and_no_key(project, make_budget):
    make_budget("alice", total_budget="100")
    tagged = limit(project, "tag", "batch", amount="5")

    BudgetManager("acme").update_cost("alice", model="gpt-4o-mini", input_text="hi", output_text="there",
                                      tags=["batch"])

    event = CostEvent.objects.get()
    assert (event.tags, event.api_key_id) == (",batch,", None)
    assert used(tagged) == event.cost > 0


def test_a_hosted_merge_counts_its_growth_against_the_users_teams_projects_and_models_limits(api_key, project,
                                                                                              make_budget):
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    counted = [limit(project, "user", "alice", amount="50"), limit(project, "team", "research", amount="50"),
               limit(project, "project", "", amount="50"), limit(project, "user", "alice", model="gpt-4o")]
    other_model = limit(project, "user", "alice", model="o3")
    requests = limit(project, "user", "alice", unit="requests", amount="9")
    hosted = Hosted(api_key)
    assert hosted.get().status_code == 200

    response = hosted.set({"alice": record(100.0, current_cost=0.25, model_cost={"gpt-4o": 0.25})})

    assert response.status_code == 200
    assert [used(row) for row in counted] == [Decimal("0.25")] * 4
    assert (used(other_model), used(requests)) == (0, 0)
    assert CostEvent.objects.get().api_key_id is None


# --- admission ------------------------------------------------------------------------------------


def test_an_enforced_record_a_team_limit_has_no_room_for_is_a_402_naming_it_and_writes_nothing(api, project,
                                                                                               make_budget):
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    capped = limit(project, "team", "research", amount="1", used="1")
    before = db_state()

    response = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 0.05})

    assert response.status_code == 402
    error = body_of(response)["error"]
    assert error["type"] == "budget_exceeded"
    assert error["scope"] == "team"
    assert error["message"] == "the team 'research' has $0.00 left of $1.00 this month; this call needs $0.05"
    resets_at = error["limit"].pop("resets_at")
    assert error["limit"] == {"id": capped.pk, "scope": "team", "subject": "research", "model": None, "unit": "usd",
                              "window": "month", "limit": 1, "used": 1, "held": 0, "raised": 0,
                              "requested": Decimal("0.05")}
    assert datetime.fromisoformat(resets_at) == capped.resets_at
    assert 0 < int(response["Retry-After"]) <= 31 * 86400
    assert db_state() == before
    assert used(capped) == 1


def test_a_request_limit_refuses_the_call_past_its_count_in_words(api, project, make_budget):
    make_budget("alice", total_budget="100")
    limit(project, "user", "alice", amount="7", unit="requests", window="day")
    for _ in range(7):
        assert api.post("/api/v1/users/alice/costs?enforce=true", MINI).status_code == 201

    response = api.post("/api/v1/users/alice/costs?enforce=true", MINI)

    assert response.status_code == 402
    assert body_of(response)["error"]["message"] == ("the user 'alice' has 0 requests left of 7 today; "
                                                    "this call needs 1 request")
    assert CostEvent.objects.count() == 7


def test_a_plain_record_is_recorded_and_counted_past_a_hard_limit(api, project, make_budget):
    make_budget("alice", total_budget="100")
    capped = limit(project, "user", "alice", amount="1", used="1")

    assert api.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 0.05}).status_code == 201

    assert used(capped) == Decimal("1.05")


def test_a_zero_dollar_call_is_not_refused_by_a_used_up_dollar_limit(api, project, make_budget):
    make_budget("alice", total_budget="100")
    capped = limit(project, "user", "alice", amount="1", used="1")
    requests = limit(project, "user", "alice", amount="5", unit="requests")

    response = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 0})

    assert response.status_code == 201
    assert (used(capped), used(requests)) == (1, 1)


def test_a_limit_on_a_model_leaves_the_users_other_models_alone(api, project, make_budget):
    make_budget("alice", total_budget="100")
    limit(project, "user", "alice", amount="1", used="1", model="gpt-4o")

    refused = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 0.05})
    allowed = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o-mini", "cost": 0.05})

    assert (refused.status_code, allowed.status_code) == (402, 201)
    assert "for gpt-4o this month" in body_of(refused)["error"]["message"]


def test_a_user_budget_refusal_names_it_as_a_limit_with_no_id(api, make_budget):
    make_budget("alice", total_budget="1")

    response = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 2})

    assert response.status_code == 402
    error = body_of(response)["error"]
    assert (error["scope"], error["spend"], error["requested"]) == ("user", 0, 2)
    assert (error["limit"]["id"], error["limit"]["scope"], error["limit"]["subject"], error["limit"]["limit"],
            error["limit"]["window"]) == (None, "user", "alice", 1, "lifetime")
    assert "Retry-After" not in response


def test_a_check_names_the_first_hard_limit_without_room(ci, project, make_budget):
    make_budget("alice", total_budget="100")
    limit(project, "key", "ci", amount="0.5", used="0.49")
    limit(project, "tag", "summarizer", amount="1", mode="soft", used="5")

    response = ci.post("/api/v1/users/alice/check", {"estimated_cost": 0.05, "tags": ["summarizer"]})

    assert response.status_code == 200
    answer = body_of(response)
    assert (answer["allowed"], answer["scope"], answer["limit"]["subject"]) == (False, "key", "ci")
    assert answer["reason"].startswith("the API key 'ci' has $0.01 left of $0.50 this month")
    assert response["X-Budget-Remaining"] == "0.01"
    assert int(response["X-Budget-Reset"]) > 0


def test_a_check_counts_the_prompt_and_max_tokens_against_a_token_limit(api, project, make_budget):
    make_budget("alice", total_budget="100")
    limit(project, "user", "alice", amount="1000", unit="tokens", window="day")
    messages = [{"role": "user", "content": "hello"}]

    small = body_of(api.post("/api/v1/users/alice/check", {"model": "gpt-4o", "messages": messages,
                                                            "max_tokens": 100}))
    large = body_of(api.post("/api/v1/users/alice/check", {"model": "gpt-4o", "messages": messages,
                                                            "max_tokens": 2000}))

    assert (small["allowed"], large["allowed"], large["limit"]["unit"]) == (True, False, "tokens")


def test_record_answers_say_the_tightest_dollar_limit_and_when_it_resets(api, project, make_budget):
    make_budget("alice", total_budget="100")
    limit(project, "user", "alice", amount="0.5", window="day")

    response = api.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 0.2})

    assert response.status_code == 201
    assert response["X-Budget-Remaining"] == "0.3"
    midnight = window_of("day", project, utcnow())[1]
    assert 0 < int(response["X-Budget-Reset"]) <= (midnight - utcnow()).total_seconds() + 1


# --- reservations ---------------------------------------------------------------------------------


def test_a_reservation_holds_its_worst_case_on_each_hard_limit_and_settling_gives_it_back(ci, project, make_budget):
    make_budget("alice", total_budget="100")
    dollars = limit(project, "key", "ci", amount="10")
    tokens = limit(project, "user", "alice", amount="100000", unit="tokens", window="day")
    requests = limit(project, "tag", "summarizer", amount="5", unit="requests")
    soft = limit(project, "user", "alice", amount="1", mode="soft")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1000,
            "tags": ["summarizer"]}

    response = ci.post("/api/v1/users/alice/reservations", body)

    assert response.status_code == 201
    reservation = Reservation.objects.get()
    assert sorted(reservation.limit_ids) == sorted([dollars.pk, tokens.pk, requests.pk])
    assert reservation.tokens > 1000
    assert (reservation.tags, reservation.api_key.name) == (",summarizer,", "ci")
    for row in (dollars, tokens, requests, soft):
        row.refresh_from_db()
    assert (dollars.held, tokens.held, requests.held, soft.held) == (reservation.amount, reservation.tokens, 1, 0)
    assert "X-Budget-Remaining" in response

    settled = ci.post(f"/api/v1/reservations/{reservation.pk}/settle",
                      {"prompt_tokens": 10, "completion_tokens": 20})

    assert settled.status_code == 200
    for row in (dollars, tokens, requests, soft):
        row.refresh_from_db()
    cost = CostEvent.objects.get().cost
    assert (dollars.held, tokens.held, requests.held) == (0, 0, 0)
    assert (dollars.used, tokens.used, requests.used, soft.used) == (cost, 30, 1, cost)
    assert CostEvent.objects.get().tags == ",summarizer,"


def test_releasing_and_expiring_give_back_exactly_the_holds(api, project, make_budget):
    make_budget("alice", total_budget="100")
    dollars = limit(project, "user", "alice", amount="10")
    first = body_of(api.post("/api/v1/users/alice/reservations", {"estimated_cost": 1}))
    body_of(api.post("/api/v1/users/alice/reservations", {"estimated_cost": 2, "ttl_seconds": 1}))
    assert Limit.objects.get(pk=dollars.pk).held == 3

    assert api.post(f"/api/v1/reservations/{first['id']}/release").status_code == 200
    assert reservations_expire(at=utcnow() + timedelta(seconds=5)) == 1

    assert (used(dollars), Limit.objects.get(pk=dollars.pk).held) == (0, 0)


def test_a_reservation_a_hard_limit_has_no_room_for_is_a_402_and_holds_nothing(api, project, make_budget):
    make_budget("alice", total_budget="100")
    capped = limit(project, "project", "", amount="1", used="0.99")
    before = db_state()

    response = api.post("/api/v1/users/alice/reservations", {"estimated_cost": 0.05})

    assert response.status_code == 402
    assert body_of(response)["error"]["limit"]["id"] == capped.pk
    assert db_state() == before
    assert Limit.objects.get(pk=capped.pk).held == 0


# --- tags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tags", [["x"] * 11, ["has space"], ["é"], ["a" * 65], [""], "summarizer", [1]])
@pytest.mark.parametrize("path", ["/api/v1/users/alice/costs", "/api/v1/users/alice/reservations",
                                  "/api/v1/users/alice/check"])
def test_bad_tags_are_a_validation_error_and_write_nothing(api, make_budget, tags, path):
    make_budget("alice", total_budget="100")
    before = db_state()

    body = {"model": "gpt-4o", "cost": 0.01} if path.endswith("/costs") else {"estimated_cost": 0.01}

    response = api.post(path, {**body, "tags": tags})

    assert response.status_code == 400
    assert body_of(response)["error"]["type"] == "validation_error"
    assert db_state() == before


# --- windows --------------------------------------------------------------------------------------


def test_windows_are_calendar_aligned_in_the_projects_time_zone(project):
    services.project_update(project=project, actor="test", timezone="Asia/Kolkata")  # UTC+05:30
    at = datetime(2026, 3, 18, 20, 10, tzinfo=UTC)  # 01:40 on the 19th (a Thursday) in Kolkata

    assert window_of("hour", project, at) == (datetime(2026, 3, 18, 19, 30, tzinfo=UTC),
                                               datetime(2026, 3, 18, 20, 30, tzinfo=UTC))
    assert window_of("day", project, at) == (datetime(2026, 3, 18, 18, 30, tzinfo=UTC),
                                              datetime(2026, 3, 19, 18, 30, tzinfo=UTC))
    assert window_of("week", project, at)[0] == datetime(2026, 3, 15, 18, 30, tzinfo=UTC)  # Monday the 16th
    assert window_of("month", project, at) == (datetime(2026, 2, 28, 18, 30, tzinfo=UTC),
                                                datetime(2026, 3, 31, 18, 30, tzinfo=UTC))
    assert window_of("year", project, at)[1] == datetime(2026, 12, 31, 18, 30, tzinfo=UTC)
    assert window_of("lifetime", project, at) == (at, None)


def test_a_limit_whose_window_ended_starts_anew_once_when_a_call_comes(api, project, make_budget):
    make_budget("alice", total_budget="100")
    old = limit(project, "user", "alice", amount="1", used="1", window="day")
    Limit.objects.filter(pk=old.pk).update(window_start=utcnow() - timedelta(days=2),
                                           resets_at=utcnow() - timedelta(days=1))

    response = api.post("/api/v1/users/alice/costs?enforce=true", {"model": "gpt-4o", "cost": 0.05})

    assert response.status_code == 201
    old.refresh_from_db()
    assert (old.used, old.window_start, old.resets_at) == ((Decimal("0.05"), *window_of("day", project, utcnow())))
    assert AuditLog.objects.filter(action="limit_window_reset").count() == 1
    assert limits_current(project, [Limit.objects.get(pk=old.pk)])[0].used == Decimal("0.05")


def test_the_sweep_starts_every_ended_window_exactly_once(project):
    at = datetime(2026, 3, 18, 10, 0, tzinfo=UTC)
    rows = [limit(project, "user", f"u{i}", used="0.5", window=window, at=at)
            for i, window in enumerate(["hour", "day", "day", "month"])]
    lifetime = limit(project, "user", "u9", used="0.5", window="lifetime", at=at)
    later = at + timedelta(days=1, hours=1)

    assert run_reset_sweep(at=later).limits == 3
    assert limits_reset_due(at=later) == 0

    assert [used(row) for row in rows] == [0, 0, 0, Decimal("0.5")]
    assert used(lifetime) == Decimal("0.5")
    assert [row.window_start for row in Limit.objects.filter(pk__in=[r.pk for r in rows[:3]]).order_by("pk")] == [
        datetime(2026, 3, 19, 11, tzinfo=UTC), datetime(2026, 3, 19, tzinfo=UTC), datetime(2026, 3, 19, tzinfo=UTC)]
    assert AuditLog.objects.filter(action="limit_window_reset", actor="system:sweep").count() == 3


# --- the hot path ---------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("enforce", [False, True])
def test_a_record_with_five_applicable_limits_is_one_statement_on_postgresql(ci, project, make_budget, enforce):
    """Project, team, user, key and tag limits: found, locked (with enforce), admitted and counted in one statement."""
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    rows = [limit(project, "project", "", amount="100"), limit(project, "team", "research", amount="100"),
            limit(project, "user", "alice", amount="100000", unit="tokens"),
            limit(project, "key", "ci", amount="100", unit="requests"), limit(project, "tag", "summarizer", amount="9")]
    body = {**MINI, "tags": ["summarizer"]}
    path = "/api/v1/users/alice/costs" + ("?enforce=true" if enforce else "")
    assert ci.post(path, body).status_code == 201  # the key is cached from here on

    with CaptureQueriesContext(connection) as queries:
        response = ci.post(path, body)

    assert response.status_code == 201
    real = [q["sql"] for q in queries.captured_queries if not q["sql"].lstrip().upper().startswith(TRANSACTION_CONTROL)]
    assert len(real) == 1, real
    assert [used(row) for row in rows] == [Decimal("0.0009"), Decimal("0.0009"), 3000, 2, Decimal("0.0009")]
    assert response["X-Budget-Remaining"] == "8.9991"


def test_cost_record_without_a_key_ignores_key_limits(project, make_budget):
    make_budget("alice", total_budget="100")
    keyed = limit(project, "key", "ci", amount="0", unit="requests")

    cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 10, 10), source="api", enforce=True)

    assert used(keyed) == 0
    assert ApiKey.objects.filter(name="ci").count() == 0


# --- alerts ---------------------------------------------------------------------------------------


def test_a_limit_crossing_a_threshold_alerts_once_per_window_naming_the_limit(api, project, make_budget):
    services.project_update(project=project, alert_thresholds=[80, 100], actor="test")
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    soft = limit(project, "team", "research", amount="1", mode="soft")

    for cost in (0.5, 0.35, 0.35, 0.1):  # 50 %, 85 %, 120 %, 130 %
        assert api.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": cost}).status_code == 201

    alerts = list(Alert.objects.filter(scope="limit").order_by("threshold"))
    assert [(a.threshold, a.source_limit_id, a.period_start, a.limit) for a in alerts] == [
        (80, soft.pk, soft.window_start, 1), (100, soft.pk, soft.window_start, 1)]
    payload = alert_payload(alerts[1])
    assert (payload["scope"], payload["limit_id"], payload["limit_scope"], payload["subject"], payload["unit"],
            payload["window"], payload["spend"]) == ("limit", soft.pk, "team", "research", "usd", "month",
                                                     Decimal("1.2"))


def test_a_hosted_merge_alerts_on_the_limits_it_carries_across_a_threshold(api_key, project, make_budget):
    services.project_update(project=project, alert_thresholds=[50], actor="test")
    make_budget("alice", total_budget="100")
    model_limit = limit(project, "user", "alice", amount="1", model="gpt-4o")
    hosted = Hosted(api_key)
    assert hosted.get().status_code == 200

    assert hosted.set({"alice": record(100.0, current_cost=0.6, model_cost={"gpt-4o": 0.6})}).status_code == 200

    assert list(Alert.objects.filter(scope="limit").values_list("source_limit_id", "threshold")) == [
        (model_limit.pk, 50)]


# --- the Python client ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_python_client_sends_tags_with_records_checks_and_reservations(budget_client, acme):
    from budget_client import BudgetExceeded

    project, _ = acme
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(100), actor="test")
    tagged = limit(project, "tag", "batch", amount="0.02")

    budget_client.record_cost("alice", model="gpt-4o", cost=0.015, tags=["batch"])
    check = budget_client.check("alice", estimated_cost=0.01, tags=["batch"])
    with pytest.raises(BudgetExceeded) as refused:
        budget_client.create_reservation("alice", estimated_cost=0.01, tags=["batch"])

    assert CostEvent.objects.get().tags == ",batch,"
    assert used(tagged) == Decimal("0.015")
    assert (check.allowed, check.scope) == (False, "tag")
    assert refused.value.scope == "tag"
    assert Reservation.objects.count() == 0
