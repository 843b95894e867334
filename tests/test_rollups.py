"""The daily rollups the console reads equal the ledger, whoever wrote the ledger; the hot path stays lean."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.test.utils import CaptureQueriesContext

from budgets import services
from budgets.manager import BudgetManager
from budgets.models import CostEvent, ModelDay, SpendDay, UserDay, UserMonth
from budgets.services.rollups import local_day
from tests.api_helpers import body_of

pytestmark = pytest.mark.django_db
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


def ledger_by_day(project) -> dict:
    totals: dict = {}
    for event in CostEvent.objects.filter(project=project):
        key = (local_day(project.timezone, event.created_at), event.user_id, event.model)
        spend, events, prompt = totals.get(key, (Decimal(0), 0, 0))
        totals[key] = (spend + event.cost, events + 1, prompt + event.prompt_tokens)
    return totals


def rollups_by_day(project) -> dict:
    return {(d.day, d.user_id, d.model): (d.spend, d.events, d.prompt_tokens)
            for d in SpendDay.objects.filter(project=project)}


def assert_coarser_grains_agree(project) -> None:
    """ModelDay, UserDay and UserMonth hold the ledger's sums per (day, model), (day, user), (month, user)."""
    by_model: dict = {}
    by_user: dict = {}
    by_month: dict = {}
    for event in CostEvent.objects.filter(project=project):
        day = local_day(project.timezone, event.created_at)
        for totals, key in ((by_model, (day, event.model)), (by_user, (day, event.user_id)),
                            (by_month, (day.replace(day=1), event.user_id))):
            spend, events = totals.get(key, (Decimal(0), 0))
            totals[key] = (spend + event.cost, events + 1)
    assert {(r.day, r.model): (r.spend, r.events) for r in ModelDay.objects.filter(project=project)} == by_model
    assert {(r.day, r.user_id): (r.spend, r.events) for r in UserDay.objects.filter(project=project)} == by_user
    assert {(r.month, r.user_id): (r.spend, r.events) for r in UserMonth.objects.filter(project=project)} == by_month
    tokens = ModelDay.objects.filter(project=project).aggregate(p=Sum("prompt_tokens"))["p"]
    assert tokens == CostEvent.objects.filter(project=project).aggregate(p=Sum("prompt_tokens"))["p"]


@pytest.fixture
def api(make_api, client):
    return make_api(client=client)


def test_every_writer_keeps_the_rollups_equal_to_the_ledger(api, project, make_budget):
    services.project_update(project=project, actor="test", timezone="Asia/Tokyo")
    make_budget("alice", total_budget="100")
    make_budget("bob", total_budget="100")
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
        assert api.post("/api/v1/users/alice/costs", {"model": model, "prompt_tokens": 100,
                                                      "completion_tokens": 50}).status_code == 201
    assert api.post("/api/v1/users/bob/costs", {"model": "mystery", "cost": 0.25},
                    headers={"Idempotency-Key": "k1"}).status_code == 201
    assert api.post("/api/v1/users/bob/costs", {"model": "mystery", "cost": 0.25},
                    headers={"Idempotency-Key": "k1"}).status_code == 201  # a replay adds nothing
    BudgetManager(project.name).update_cost("bob", model="gpt-4o", input_text="hi", output_text="hello")
    hold = body_of(api.post("/api/v1/users/alice/reservations", {"estimated_cost": 1}))
    assert api.post(f"/api/v1/reservations/{hold['id']}/settle", {"model": "gpt-4o", "cost": 0.5}).status_code == 200
    hosted = api.post("/set_budget", {"project_name": project.name, "user_dict": {
        "carol": {"total_budget": 5.0, "current_cost": 0.75, "model_cost": {"gpt-4o": 0.75}}}})
    assert hosted.status_code == 200, hosted.content

    assert CostEvent.objects.filter(project=project).count() == 7
    assert rollups_by_day(project) == ledger_by_day(project)
    assert SpendDay.objects.filter(project=project).aggregate(n=Sum("events"))["n"] == 7
    assert_coarser_grains_agree(project)


@pytest.mark.slow
def test_a_hosted_save_of_many_users_adds_to_the_rollups_in_bulk(api, project, monkeypatch):
    """Past BULK_EVENTS events (PostgreSQL: COPY and one INSERT ... SELECT per grain), the same sums."""
    from budgets.services import ledger

    services.project_update(project=project, actor="test", timezone="America/Los_Angeles")
    users = {f"u{i:03}": {"total_budget": 50.0, "current_cost": 0.5 + i / 1000,
                          "model_cost": {"gpt-4o": 0.5, "gpt-4o-mini": i / 1000}} for i in range(150)}
    assert api.post("/set_budget", {"project_name": project.name, "user_dict": users}).status_code == 200
    monkeypatch.setattr(ledger, "BULK_EVENTS", 0)  # every writer through the bulk path from here on
    for i in range(0, 150, 7):
        users[f"u{i:03}"]["current_cost"] += 0.25
        users[f"u{i:03}"]["model_cost"]["gpt-4o"] += 0.25
    assert api.post("/set_budget", {"project_name": project.name, "user_dict": users}).status_code == 200
    assert api.post("/api/v1/users/u001/costs", {"model": "gpt-4o", "cost": 1}).status_code == 201

    assert CostEvent.objects.filter(project=project).count() > 150
    assert rollups_by_day(project) == ledger_by_day(project)
    assert_coarser_grains_agree(project)


def test_a_rebuild_regroups_the_days_after_a_time_zone_change(api, project, make_budget):
    make_budget("alice", total_budget="100")
    assert api.post("/api/v1/users/alice/costs", {"model": "gpt-4o", "cost": 1}).status_code == 201
    before = rollups_by_day(project)

    services.project_update(project=project, actor="test", timezone="Pacific/Kiritimati")  # UTC+14
    project.refresh_from_db()

    assert rollups_by_day(project) == ledger_by_day(project)
    assert sum(v[0] for v in rollups_by_day(project).values()) == sum(v[0] for v in before.values())
    assert_coarser_grains_agree(project)


def test_the_rollups_of_a_seeded_demo_equal_its_ledger(db):
    from django.core.management import call_command

    call_command("seed_demo", "--users", "12", "--days", "9", "--events", "400", stdout=open("/dev/null", "w"))
    project = __import__("budgets.models", fromlist=["Project"]).Project.objects.get(name="demo")
    grouped = CostEvent.objects.filter(project=project).aggregate(n=Count("id"), s=Sum("cost"))
    assert rollups_by_day(project) == ledger_by_day(project)
    assert SpendDay.objects.filter(project=project).aggregate(n=Sum("events"))["n"] == grouped["n"] == 400
    assert_coarser_grains_agree(project)


@pytest.mark.postgres
def test_recording_a_cost_is_two_statements_on_postgresql(api, project, make_budget):
    """The hot path: the project locked with the budget read, then one write (ledger, spend, rollup)."""
    make_budget("alice", total_budget="100")
    body = {"model": "gpt-4o-mini", "prompt_tokens": 1000, "completion_tokens": 500}
    assert api.post("/api/v1/users/alice/costs", body).status_code == 201  # the key is cached from here on

    with CaptureQueriesContext(connection) as queries:
        response = api.post("/api/v1/users/alice/costs", body)
    assert response.status_code == 201
    real = [q["sql"] for q in queries.captured_queries if not q["sql"].lstrip().upper().startswith(TRANSACTION_CONTROL)]
    assert len(real) <= 2, real
    answer = json.loads(response.content)
    assert answer["user"]["model_cost"] == {"gpt-4o-mini": float(Decimal("0.00090"))}


def test_reads_of_a_user_take_at_most_three_statements(api, project, make_budget, django_assert_max_num_queries):
    make_budget("alice", total_budget="100")
    assert api.get("/api/v1/users/alice").status_code == 200
    with django_assert_max_num_queries(3):
        assert api.get("/api/v1/users/alice").status_code == 200
    with django_assert_max_num_queries(2):
        assert api.post("/api/v1/users/alice/check", {"estimated_cost": 0.01}).status_code == 200


def test_the_migration_fills_the_coarser_grains_from_the_daily_rows(project):
    """Existing installs: 0010 sums SpendDay into ModelDay, UserDay and UserMonth (both databases)."""
    import importlib
    from datetime import UTC, datetime, timedelta

    from django.apps import apps

    services.project_update(project=project, actor="test", timezone="Asia/Kolkata")
    now = datetime.now(UTC)
    CostEvent.objects.bulk_create([
        CostEvent(project=project, user_id=f"u{i % 7}", model=("gpt-4o", "o3")[i % 2], cost=Decimal(i) / 7,
                  prompt_tokens=i, created_at=now - timedelta(hours=13 * i))
        for i in range(200)  # about 108 days: four months or so
    ])
    services.rollups_rebuild(project)
    for model in (ModelDay, UserDay, UserMonth):
        model.objects.all().delete()

    migration = importlib.import_module("budgets.migrations.0010_daily_rollup_grains")
    migration.backfill(apps, connection.schema_editor())

    assert UserMonth.objects.filter(project=project).values("month").distinct().count() >= 4
    assert_coarser_grains_agree(project)
