"""python manage.py seed_demo [--users N] [--days D] [--events M] [--project NAME] [--reset]

Fills a project with realistic, fabricated spend so the console has something to show.

This command is the one place that writes spend in bulk without services.cost_record: it
fabricates history (calls "made" over the last D days), which cost_record cannot do since it
records calls now. So it bulk-inserts the ledger (CostEvent rows, source "demo") and then sets
every derived number from that ledger with set-based aggregate queries, exactly as the
services would have left them: each budget's current_spend and ModelSpend rows from the
events in its current period, the project's spend from the events in the project's period,
and one BudgetPeriod row per finished period of each budget. Budgets, the project, the cap
and the API key are still created through the services (audited).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import Count, F, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils.timezone import now as utcnow

from budgets import periods, pricing, services
from budgets.errors import BudgetError
from budgets.fields import MoneyField, money
from budgets.models import (
    Alert,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Duration,
    ModelSpend,
    Project,
    UserBudget,
)
from budgets.money import stored
from budgets.selectors.console import MoneySum

ACTOR = "system:seed_demo"
BATCH_SIZE = 1000
ZERO = Decimal(0)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class DemoModel:
    """A model the demo calls, with typical token counts (medians) for one call."""

    name: str
    weight: float  # how popular it is
    prompt: int
    completion: int


# Real names from the price table; the ones the table lacks are skipped.
DEMO_MODELS = (
    DemoModel("gpt-4o-mini", 10, 2500, 400),
    DemoModel("gpt-4o", 4, 6000, 700),
    DemoModel("gpt-4.1", 2, 8000, 800),
    DemoModel("o4-mini", 2, 3000, 2500),
    DemoModel("claude-sonnet-4-5", 3, 9000, 900),
    DemoModel("claude-haiku-4-5", 3, 3000, 400),
    DemoModel("gemini-2.5-flash", 2, 5000, 500),
    DemoModel("text-embedding-3-small", 3, 800, 0),
)
# Budgets people set.
BUDGET_STEPS = tuple(Decimal(n) for n in (1, 2, 5, 10, 20, 25, 50, 75, 100, 150, 200, 250, 500, 750, 1000, 2000, 5000))
FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
               "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yasmin", "zoe",
               "amir", "bea", "chen", "dara", "elif", "femi", "goran", "hana", "ines", "jonas", "kofi", "lena",
               "mateo", "noor", "oskar", "priya", "quinn", "ravi", "sofia", "tomas", "uma", "vera", "wei")
TEAMS = ("support", "search", "growth", "research", "billing", "docs", "mobile", "data", "sales", "infra")
SERVICE_ACCOUNTS = ("svc-nightly-summaries", "svc-support-bot", "svc-doc-indexer", "svc-eval-runner",
                    "svc-translation", "svc-email-triage")
# (duration, share of users)
DURATIONS = ((Duration.MONTHLY, 0.6), (Duration.WEEKLY, 0.2), (Duration.DAILY, 0.15), (Duration.NONE, 0.05))


def user_names(count: int, rng: random.Random) -> list[str]:
    """Distinct, plausible user ids: people by team, and a few service accounts."""
    names = list(SERVICE_ACCOUNTS[: max(1, count // 12)])
    seen = set(names)
    while len(names) < count:
        name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(TEAMS)}"
        if name in seen:
            name = f"{name}{rng.randint(2, 99)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    rng.shuffle(names)
    return names[:count]


def lognormal_tokens(rng: random.Random, median: int, spread: float = 0.9, cap: int = 200_000) -> int:
    if median <= 0:
        return 0
    return max(1, min(cap, int(rng.lognormvariate(math.log(median), spread))))


def nice_amount(amount: Decimal, rounding: str) -> Decimal:
    """An amount to two significant digits (budgets people would set), at least one cent."""
    if amount <= 0:
        return Decimal(10)
    step = Decimal(1).scaleb(amount.adjusted() - 1)
    return max((amount / step).quantize(Decimal(1), rounding=rounding) * step, CENT).quantize(CENT)


class Command(BaseCommand):
    help = (
        "Fill a project (default 'demo') with realistic fabricated spend: users with budgets, several "
        "models at their real prices, a ledger over the last days, past periods, a few users over budget. "
        "Prints an API key for the project as the last line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, default=50, help="How many users with budgets (default 50).")
        parser.add_argument("--days", type=int, default=30, help="Spread the calls over the last D days (default 30).")
        parser.add_argument("--events", type=int, default=5000, help="How many ledger events (default 5000).")
        parser.add_argument("--project", default="demo", help="The project's name (default 'demo').")
        parser.add_argument("--timezone", default="UTC", help="Time zone of a new project (default UTC).")
        parser.add_argument("--seed", type=int, default=42, help="Random seed: the same seed gives the same demo.")
        parser.add_argument("--reset", action="store_true",
                            help="Delete the project (ledger, budgets, keys, audit) first if it already has events.")

    def handle(self, *args: Any, **options: Any) -> None:
        users, days, events = options["users"], options["days"], options["events"]
        if not 1 <= users <= 100_000:
            raise CommandError("--users must be between 1 and 100000")
        if not 1 <= days <= 3650:
            raise CommandError("--days must be between 1 and 3650")
        if not 0 <= events <= 5_000_000:
            raise CommandError("--events must be between 0 and 5000000")
        rng = random.Random(options["seed"])
        models = [(m, pricing.find_price(m.name)) for m in DEMO_MODELS]
        models = [(m, price) for m, price in models if price is not None]
        if len(models) < 2:
            raise CommandError("the price table has fewer than two of the demo models: run `manage.py load_prices`")
        try:
            with transaction.atomic():
                summary = self.seed(options["project"], options["timezone"], users, days, events, models, rng,
                                    reset=options["reset"])
        except BudgetError as exc:
            raise CommandError(exc.message) from None
        project, raw_key = summary.pop("project"), summary.pop("key")
        self.stdout.write(
            f"Seeded project {project.name!r} (id {project.pk}): {summary['users']} users, {summary['events']} "
            f"events over {days} days, {summary['periods']} past periods, {summary['over']} users over budget; "
            f"spend this period ${project.current_spend.quantize(CENT)} of a ${project.max_budget.quantize(CENT)} cap."
        )
        if summary["member"]:
            self.stdout.write(f"User {summary['member']!r} is a member of the project.")
        self.stdout.write("API key for the demo project (shown only once; only its hash is stored):")
        self.stdout.write(raw_key)

    # --- the steps ----------------------------------------------------------------------------

    def seed(self, name: str, tz: str, n_users: int, days: int, n_events: int,
             models: list[tuple[DemoModel, pricing.Price]], rng: random.Random, *, reset: bool) -> dict[str, Any]:
        project = self.fresh_project(name, tz, reset=reset)
        zone = ZoneInfo(project.timezone)
        at = utcnow()
        start = at - timedelta(days=days)
        names = user_names(n_users, rng)
        durations = rng.choices([d for d, _ in DURATIONS], weights=[w for _, w in DURATIONS], k=n_users)
        # Heavy users and many light ones: call volume falls off with rank (Zipf-like).
        weights = [1 / (rank + 1) ** 1.1 for rank in range(n_users)]
        calls = self.fabricate_calls(names, weights, days, n_events, models, zone, at, rng)

        # Plan budgets from what each user spends in the period their budget will be in.
        period_start = {
            user: periods.period_containing(duration, project.timezone, at, anchor=start).start
            for user, duration in zip(names, durations, strict=True)
        }
        planned: dict[str, Decimal] = defaultdict(Decimal)
        for user, _, _, _, _, cost, created_at in calls:
            if created_at >= period_start[user]:
                planned[user] += cost
        # A few users over budget: every fifth of the spenders, biggest first, skipping the very biggest.
        spenders = sorted((u for u in names if planned[u] > 0), key=lambda u: (-planned[u], u))
        over = set(spenders[1::5][: max(1, n_users // 15)])
        budget_ids = {}
        for user, duration in zip(names, durations, strict=True):
            budget, _ = services.budget_set(project=project, user_id=user, total_budget=self.budget_for(
                planned[user], user in over, rng), duration=duration, created_at=start, actor=ACTOR)
            budget_ids[user] = budget.pk

        self.insert_events(project, calls, budget_ids)
        self.derive_spend(project)
        project.refresh_from_db()
        cap = nice_amount(project.current_spend / Decimal("0.62"), ROUND_UP) if project.current_spend else Decimal(100)
        project = services.project_update(project=project, actor=ACTOR, max_budget=cap)
        closed = self.close_past_periods(project, zone)
        self.fabricate_alerts(project, at, rng)
        _, raw_key = services.api_key_create(project=project, name="demo", actor=ACTOR)
        member = self.add_admin_member(project)
        AuditLog.objects.create(project=project, action="demo_seed", actor=ACTOR,
                                after={"users": n_users, "events": len(calls), "days": days})
        over_count = UserBudget.objects.filter(project=project, current_spend__gte=F("total_budget")).count()
        return {"project": project, "key": raw_key, "users": n_users, "events": len(calls), "periods": closed,
                "over": over_count, "member": member}

    def fresh_project(self, name: str, tz: str, *, reset: bool) -> Project:
        project = Project.objects.filter(name=name).first()
        if project is not None:
            count = CostEvent.objects.filter(project=project).count()
            if count:
                if not reset:
                    raise CommandError(
                        f"project {name!r} already has {count} ledger events; run with --reset to delete the "
                        "project (its ledger, budgets, keys and audit log) and seed it again"
                    )
                project.delete()
                project = None
        if project is None:
            project = services.project_create(name=name, timezone=tz, duration=Duration.MONTHLY, actor=ACTOR)
        return project

    def fabricate_calls(self, names: list[str], weights: list[float], days: int, n_events: int,
                        models: list[tuple[DemoModel, pricing.Price]], zone: ZoneInfo, at: datetime,
                        rng: random.Random) -> list[tuple[str, str, int, int, int, Decimal, datetime]]:
        """(user, model, prompt, completion, cached, cost, time) for each call, oldest to newest not required."""
        # Each user favours a few models.
        favourites = {
            user: rng.choices(models, weights=[m.weight for m, _ in models], k=3) for user in names
        }
        today = at.astimezone(zone).date()
        first_day = today - timedelta(days=days - 1)
        # More calls on later days (a growing product) and fewer at weekends.
        day_weights = []
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            day_weights.append((0.6 + 0.8 * offset / max(days - 1, 1)) * (0.35 if day.weekday() >= 5 else 1.0))
        users = rng.choices(names, weights=weights, k=n_events)
        offsets = rng.choices(range(days), weights=day_weights, k=n_events)
        calls = []
        for user, offset in zip(users, offsets, strict=True):
            model, price = rng.choice(favourites[user])
            # Office hours, give or take. A call that would be later than now happened on an earlier day,
            # so today has only the calls of the hours gone by.
            seconds = min(max(rng.gauss(14 * 3600, 3.5 * 3600), 0), 86399)
            midnight = datetime.combine(first_day + timedelta(days=offset), time(), tzinfo=zone)
            created_at = midnight + timedelta(seconds=seconds)
            if created_at > at:
                # Only today can be later than now: the day before is always past.
                created_at = created_at - timedelta(days=1) if days > 1 else midnight + (at - midnight) * rng.random()
            prompt = lognormal_tokens(rng, model.prompt)
            completion = lognormal_tokens(rng, model.completion, cap=16_000)
            cached = 0
            if price.cache_read is not None and prompt > 1024 and rng.random() < 0.3:
                cached = int(prompt * rng.uniform(0.3, 0.9))
            cost = stored(pricing.cost_of_tokens(price, prompt_tokens=prompt, completion_tokens=completion,
                                                 cached_tokens=cached))
            calls.append((user, model.name, prompt, completion, cached, cost, created_at.astimezone(at.tzinfo)))
        return calls

    def budget_for(self, planned: Decimal, over: bool, rng: random.Random) -> Decimal:
        """A budget that puts the user at a realistic use: most well under, some near, a few over."""
        if planned <= 0:
            return rng.choice(BUDGET_STEPS[2:8])
        if over:
            # The biggest usual budget below what was spent (a cent-exact one for tiny spenders).
            below = [step for step in BUDGET_STEPS if step <= planned / Decimal("1.05")]
            return below[-1] if below else nice_amount(planned / Decimal("1.2"), ROUND_DOWN)
        target = rng.uniform(0.8, 0.97) if rng.random() < 0.12 else rng.uniform(0.05, 0.7)
        wanted = planned / Decimal(str(target))
        above = [step for step in BUDGET_STEPS if step >= wanted]
        return above[0] if above else nice_amount(wanted, ROUND_UP)

    def insert_events(self, project: Project, calls: list[tuple], budget_ids: dict[str, int]) -> None:
        rows = [
            CostEvent(project=project, budget_id=budget_ids[user], user_id=user, model=model, prompt_tokens=prompt,
                      completion_tokens=completion, cached_tokens=cached, cost=cost, source=CostEvent.Source.DEMO,
                      created_at=created_at)
            for user, model, prompt, completion, cached, cost, created_at in calls
        ]
        CostEvent.objects.bulk_create(rows, batch_size=BATCH_SIZE)

    def derive_spend(self, project: Project) -> None:
        """Spend as the services would have left it, from the ledger, with set-based queries."""
        in_period = CostEvent.objects.filter(project=project, budget__isnull=False,
                                             created_at__gte=F("budget__period_start"))
        ModelSpend.objects.filter(budget__project=project).delete()
        ModelSpend.objects.bulk_create(
            [
                ModelSpend(budget_id=row["budget_id"], model=row["model"], spend=row["spend"],
                           prompt_tokens=row["prompt"], completion_tokens=row["completion"])
                for row in in_period.values("budget_id", "model").annotate(
                    spend=MoneySum("cost"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
            ],
            batch_size=BATCH_SIZE,
        )
        per_budget = (
            ModelSpend.objects.filter(budget_id=OuterRef("pk")).order_by().values("budget_id")
            .annotate(total=Sum("spend")).values("total")
        )
        UserBudget.objects.filter(project=project).update(
            current_spend=Coalesce(Subquery(per_budget, output_field=MoneyField()), money(ZERO)),
        )
        total = CostEvent.objects.filter(project=project, created_at__gte=project.period_start).aggregate(
            total=MoneySum("cost"))["total"]
        Project.objects.filter(pk=project.pk).update(current_spend=total or ZERO)

    def close_past_periods(self, project: Project, zone: ZoneInfo) -> int:
        """One BudgetPeriod per finished period of each budget, from the ledger (zero-spend periods too)."""
        budgets = {b.pk: b for b in UserBudget.objects.filter(project=project).exclude(duration=Duration.NONE)}
        earlier = (
            CostEvent.objects.filter(project=project, budget_id__in=budgets, created_at__lt=F("budget__period_start"))
            .annotate(day=TruncDate("created_at", tzinfo=zone))
            .values("budget_id", "day", "model").annotate(spend=MoneySum("cost"), n=Count("id"))
        )
        per_period: dict[tuple[int, datetime], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        found_periods: dict[tuple[str, Any], periods.Period] = {}
        for row in earlier:
            budget = budgets[row["budget_id"]]
            key = (budget.duration, row["day"])
            if key not in found_periods:
                noon = datetime.combine(row["day"], time(12), tzinfo=zone)
                found_periods[key] = periods.period_containing(budget.duration, project.timezone, noon)
            per_period[(budget.pk, found_periods[key].start)][row["model"]] += row["spend"]
        rows = []
        for budget in budgets.values():
            # Every period from the first call's period to the current one, empty ones included.
            starts = sorted(start for (pk, start) in per_period if pk == budget.pk)
            if not starts:
                continue
            period = periods.period_containing(budget.duration, project.timezone, starts[0])
            while period.next_reset is not None and period.start < budget.period_start:
                spend = per_period.get((budget.pk, period.start), {})
                rows.append(BudgetPeriod(
                    budget=budget, project=project, user_id=budget.user_id, period_start=period.start,
                    period_end=period.next_reset, spend=sum(spend.values(), ZERO), total_budget=budget.total_budget,
                    model_spend={m: str(s) for m, s in sorted(spend.items())}, reason="period_end",
                    created_at=period.next_reset,
                ))
                period = periods.period_containing(budget.duration, project.timezone, period.next_reset)
        BudgetPeriod.objects.bulk_create(rows, batch_size=BATCH_SIZE, ignore_conflicts=True)
        return len(rows)

    def fabricate_alerts(self, project: Project, at: datetime, rng: random.Random) -> None:
        """Alerts for the thresholds users crossed this period, as already delivered (nothing is sent)."""
        alerts = []
        for budget in UserBudget.objects.filter(project=project, total_budget__gt=0):
            used = budget.current_spend * 100 / budget.total_budget
            for threshold in project.alert_thresholds or []:
                if used >= threshold:
                    when = max(budget.period_start, at - timedelta(minutes=rng.randint(5, 3 * 24 * 60)))
                    alerts.append(Alert(
                        project=project, budget=budget, scope=Alert.Scope.USER, user_id=budget.user_id,
                        threshold=threshold, period_start=budget.period_start,
                        spend=budget.total_budget * threshold / 100, limit=budget.total_budget, created_at=when,
                        delivered_at=when + timedelta(seconds=2), attempts=1,
                    ))
        Alert.objects.bulk_create(alerts, batch_size=BATCH_SIZE, ignore_conflicts=True)

    def add_admin_member(self, project: Project) -> str | None:
        """The embedded demo's superuser `admin` sees the project as a member too."""
        user = get_user_model().objects.filter(username="admin").first()
        if user is None:
            return None
        project.members.add(user)
        return user.get_username()
