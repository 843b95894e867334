"""seed_demo: realistic fabricated spend whose every derived number agrees with the ledger."""

from __future__ import annotations

import io
from collections import defaultdict
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum
from django.urls import reverse

from budgets import services
from budgets.models import Alert, BudgetPeriod, CostEvent, ModelSpend, Project, UserBudget
from budgets.selectors.console import MoneySum, project_past_periods

pytestmark = pytest.mark.django_db


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


@pytest.mark.slow
def test_the_defaults_fill_a_demo_project_quickly():
    output = seed()

    project = Project.objects.get(name="demo")
    assert UserBudget.objects.filter(project=project).count() == 50
    assert CostEvent.objects.filter(project=project, source="demo").count() == 5000
    assert CostEvent.objects.filter(project=project).values("model").distinct().count() >= 4
    assert project.max_budget is not None and project.current_spend > 0
    assert "Seeded project 'demo'" in output


def test_the_key_it_prints_opens_the_demo_project():
    output = seed("--users", "5", "--days", "3", "--events", "100")

    key = services.api_key_authenticate(output.strip().splitlines()[-1])

    assert key is not None and key.project.name == "demo"


@pytest.mark.slow
def test_spend_agrees_with_the_ledger_everywhere():
    seed("--users", "30", "--days", "40", "--events", "3000", "--project", "check")
    project = Project.objects.get(name="check")

    for budget in UserBudget.objects.filter(project=project):
        events = CostEvent.objects.filter(budget=budget, created_at__gte=budget.period_start)
        assert budget.current_spend == (events.aggregate(s=MoneySum("cost"))["s"] or 0), budget.user_id
        per_model = {row["model"]: (row["s"], row["p"], row["c"]) for row in events.values("model").annotate(
            s=MoneySum("cost"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"))}
        stored = {m.model: (m.spend, m.prompt_tokens, m.completion_tokens)
                  for m in ModelSpend.objects.filter(budget=budget)}
        assert stored == per_model, budget.user_id
    in_period = CostEvent.objects.filter(project=project, created_at__gte=project.period_start)
    assert project.current_spend == in_period.aggregate(s=MoneySum("cost"))["s"]


def test_past_periods_hold_the_spend_of_their_days():
    seed("--users", "20", "--days", "20", "--events", "2000", "--project", "history")
    project = Project.objects.get(name="history")
    periods = BudgetPeriod.objects.filter(project=project)

    assert periods.exists()
    for period in periods:
        events = CostEvent.objects.filter(budget_id=period.budget_id, created_at__gte=period.period_start,
                                          created_at__lt=period.period_end)
        assert period.spend == (events.aggregate(s=MoneySum("cost"))["s"] or 0)
        by_model: dict[str, Decimal] = defaultdict(Decimal)
        for model, cost in events.values_list("model", "cost"):
            by_model[model] += cost
        assert {m: Decimal(s) for m, s in period.model_spend.items()} == dict(by_model)
        assert period.period_end <= period.budget.period_start


def test_alerts_are_stamped_at_the_call_that_crossed_each_threshold():
    seed("--users", "30", "--days", "20", "--events", "3000", "--project", "alerts")
    project = Project.objects.get(name="alerts")
    alerts = Alert.objects.filter(project=project)

    assert alerts.filter(threshold=80).exists() and alerts.filter(threshold=100).exists()
    for alert in alerts:
        events = CostEvent.objects.filter(budget=alert.budget, created_at__gte=alert.period_start)
        before = events.filter(created_at__lt=alert.created_at).aggregate(s=MoneySum("cost"))["s"] or 0
        upto = events.filter(created_at__lte=alert.created_at).aggregate(s=MoneySum("cost"))["s"]
        line = alert.limit * alert.threshold / 100
        assert before < line <= upto, (alert.user_id, alert.threshold)
        assert alert.spend == upto and alert.created_at > alert.period_start
    for budget_id in alerts.values_list("budget_id", flat=True).distinct():
        stamps = dict(alerts.filter(budget_id=budget_id).values_list("threshold", "created_at"))
        if 100 in stamps:
            assert stamps[80] <= stamps[100]


def test_the_project_has_its_finished_periods_like_the_sweep_would_have_left_them(client):
    seed("--users", "20", "--days", "45", "--events", "2000", "--project", "months")
    project = Project.objects.get(name="months")
    staff = get_user_model().objects.create_user("sam", is_staff=True)
    client.force_login(staff)

    past = project_past_periods(project)

    assert past, "45 days of history span at least one finished month"
    assert past[-1].end == project.period_start
    for period in past:
        events = CostEvent.objects.filter(project=project, created_at__gte=period.start, created_at__lt=period.end)
        assert period.spend == (events.aggregate(s=MoneySum("cost"))["s"] or 0)
        assert period.budget == project.max_budget
    page = client.get(reverse("project_periods", args=[project.pk])).content.decode()
    assert "No finished periods yet" not in page


@pytest.mark.slow
def test_a_few_users_are_over_budget_and_most_are_not():
    seed("--users", "60", "--days", "30", "--events", "6000")

    budgets = list(UserBudget.objects.filter(project__name="demo"))
    over = [b for b in budgets if b.is_over_budget]

    assert 1 <= len(over) <= len(budgets) // 5


def test_costs_are_the_price_tables_costs():
    seed("--users", "3", "--days", "2", "--events", "50")

    from budgets.domain import pricing

    for event in CostEvent.objects.all():
        price = pricing.get_price(event.model)
        expected = pricing.cost_of_tokens(price, prompt_tokens=event.prompt_tokens,
                                          completion_tokens=event.completion_tokens, cached_tokens=event.cached_tokens)
        assert event.cost == expected.quantize(Decimal("1e-12"))


def test_it_refuses_a_project_that_already_has_events():
    seed("--users", "3", "--days", "2", "--events", "20")

    with pytest.raises(CommandError, match="--reset"):
        seed("--users", "3", "--days", "2", "--events", "20")

    assert CostEvent.objects.count() == 20


def test_reset_seeds_the_project_again():
    seed("--users", "3", "--days", "2", "--events", "20")

    seed("--users", "4", "--days", "2", "--events", "30", "--reset")

    assert CostEvent.objects.count() == 30
    assert UserBudget.objects.count() == 4
    assert Project.objects.filter(name="demo").count() == 1


def test_the_demo_superuser_becomes_a_member():
    admin = get_user_model().objects.create_superuser("admin", password="pw")

    seed("--users", "3", "--days", "2", "--events", "20")

    assert Project.objects.get(name="demo").members.filter(pk=admin.pk).exists()


@pytest.mark.parametrize("args", [["--users", "0"], ["--days", "0"], ["--events", "-1"]])
def test_bad_sizes_are_refused(args):
    with pytest.raises(CommandError):
        seed(*args)

    assert not Project.objects.exists()


def test_the_same_seed_gives_the_same_demo():
    seed("--users", "5", "--days", "3", "--events", "50", "--project", "a")
    seed("--users", "5", "--days", "3", "--events", "50", "--project", "b")

    def ledger(name: str) -> list:
        return sorted(CostEvent.objects.filter(project__name=name).values_list(
            "user_id", "model", "prompt_tokens", "completion_tokens", "cost"))

    assert ledger("a") == ledger("b")


# --- PostgreSQL draws the calls itself (services.demo._fabricate_in_sql) -------------------------


def _demo_project_with_budgets(users: int = 5) -> tuple[Project, list[str], dict[str, int]]:
    project = services.project_create(name="sql", timezone="UTC", duration="monthly", actor="test")
    names = [f"user{n}" for n in range(users)]
    budgets = UserBudget.objects.bulk_create(
        UserBudget(project=project, user_id=name, total_budget=Decimal(10), duration="monthly",
                   period_start=project.period_start, next_reset_at=project.next_reset_at) for name in names)
    return project, names, {b.user_id: b.pk for b in budgets}


@pytest.mark.postgres
def test_the_database_rounds_costs_half_even_as_the_price_table_does():
    import random
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from django.db import connection
    from django.utils.timezone import now

    from budgets.services import demo

    project, names, ids = _demo_project_with_budgets()
    query = demo._fabricate_in_sql(project, names, ids, 3, 4000, demo.demo_models(), ZoneInfo("UTC"),
                                   now() - timedelta(hours=1), random.Random(7))
    # Prices of half a unit of the 12th place: every other total ends in ...5 at the 13th, a tie.
    count = len(query.params["input"])
    half = Decimal("0.0000000000005")
    query.params.update(input=[half] * count, cache_read=[half * 3] * count, output=[half * 5] * count)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT prompt_tokens, completion_tokens, cached_tokens, cost FROM ({query.sql}) AS q "
                       "(project_id, budget_id, user_id, model, prompt_tokens, completion_tokens, cached_tokens, "
                       "cache_creation_tokens, cost, source, request_fingerprint, created_at)", query.params)
        rows = cursor.fetchall()

    ties = 0
    for prompt, completion, cached, cost in rows:
        exact = (prompt - cached) * half + cached * half * 3 + completion * half * 5
        ties += exact != exact.quantize(Decimal("1e-12"))
        assert cost == exact.quantize(Decimal("1e-12")), (prompt, completion, cached)  # half-even
    assert len(rows) == 4000 and ties > 1000


@pytest.mark.postgres
def test_a_seeded_ledger_naming_a_budget_that_does_not_exist_is_refused():
    from django.db import IntegrityError, transaction

    from budgets.services import ledger

    project, _, ids = _demo_project_with_budgets(1)
    missing = max(ids.values()) + 1000
    rows = ledger.SeedQuery(
        "SELECT %(project)s::bigint, b, 'ghost', 'gpt-4o', 1, 1, 0, 0, 0.5::numeric, 'demo', '', now() "
        "FROM unnest(%(budgets)s::bigint[]) AS b", {"project": project.pk, "budgets": [*ids.values(), missing]})

    with pytest.raises(IntegrityError), transaction.atomic():
        ledger.seed(project, rows)

    assert not CostEvent.objects.exists()
