"""Demo data: a project filled with realistic, fabricated spend (the seed_demo command calls demo_seed).

It fabricates history (calls "made" over the last D days), which cost_record cannot do since it
records calls now. The ledger rows go in through services.ledger.seed: on PostgreSQL drawn by the
database itself (one INSERT ... SELECT, `_fabricate_in_sql`), elsewhere drawn here and streamed in
chunks so that millions of events never sit in memory; seed then sets every derived number from
the ledger, exactly as the services would have left it; here, one BudgetPeriod per finished period.
The project, its cap and the API key go through the services; the budgets are inserted in bulk with
the same audit rows budget_set writes.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from itertools import accumulate, groupby
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from ..base.errors import InvalidInput
from ..base.money import stored
from ..domain import periods, pricing
from ..models import Alert, AuditLog, BudgetPeriod, CostEvent, Duration, ModelSpend, Project, SpendDay, UserBudget
from ..selectors.console import MoneySum
from . import ledger
from .alerts import crossed_thresholds, thresholds_of
from .audit import actor_for_system, budget_snapshot, write_audits
from .keys import api_key_create
from .ledger import analyze, bulk_insert
from .projects import project_create, project_update

ACTOR = actor_for_system("seed_demo")
BATCH_SIZE = 2000
CHUNK = 50_000  # calls fabricated and written at a time
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

Call = tuple[str, str, int, int, int, Decimal, datetime]  # user, model, prompt, completion, cached, cost, time


class ProjectNotEmpty(InvalidInput):
    """The project already has a ledger and no reset was asked for."""


def user_names(count: int, rng: random.Random) -> list[str]:
    """Distinct, plausible user ids: people by team, and a few service accounts."""
    names = list(SERVICE_ACCOUNTS[: max(1, count // 12)])
    seen = set(names)
    while len(names) < count:
        name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(TEAMS)}"
        if name in seen:
            name = f"{name}{rng.randint(2, 99)}"
        if name in seen:
            # Past a few thousand users the short names run out: a longer number keeps it fast.
            name = f"{rng.choice(FIRST_NAMES)}.{rng.choice(TEAMS)}{rng.randint(100, 10**7)}"
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


def budget_for(planned: Decimal, over: bool, rng: random.Random) -> Decimal:
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


def demo_models() -> list[tuple[DemoModel, pricing.Price]]:
    found = [(m, pricing.find_price(m.name)) for m in DEMO_MODELS]
    models_ = [(m, price) for m, price in found if price is not None]
    if len(models_) < 2:
        raise InvalidInput("the price table has fewer than two of the demo models: run `manage.py load_prices`")
    return models_


# --- the seed -----------------------------------------------------------------------------------


def demo_seed(*, name: str = "demo", users: int = 50, days: int = 30, events: int = 5000, timezone: str = "UTC",
              seed: int = 42, reset: bool = False) -> dict[str, Any]:
    """Seed project `name`; returns {"project", "key" (raw, shown once), "users", "events", "periods", "over",
    "member"}. ProjectNotEmpty if the project already has a ledger and `reset` is False."""
    rng = random.Random(seed)
    models_ = demo_models()
    with transaction.atomic():
        project = _fresh_project(name, timezone, reset=reset)
        zone = ZoneInfo(project.timezone)
        at = utcnow()
        start = at - timedelta(days=days)
        names = user_names(users, rng)
        durations = rng.choices([d for d, _ in DURATIONS], weights=[w for _, w in DURATIONS], k=users)
        budget_ids = _insert_budgets(project, names, durations, start, at)
        if connection.vendor == "postgresql":
            source: Any = _fabricate_in_sql(project, names, budget_ids, days, events, models_, zone, at, rng)
        else:
            source = _event_rows(project, budget_ids, _fabricate_calls(names, days, events, models_, zone, at, rng))
        written = ledger.seed(project, source)
        _set_budget_totals(project, names, rng)
        analyze(UserBudget, ModelSpend)
        project.refresh_from_db()
        cap = nice_amount(project.current_spend / Decimal("0.62"), ROUND_UP) if project.current_spend else Decimal(100)
        project = project_update(project=project, actor=ACTOR, max_budget=cap)
        closed = _close_past_periods(project, zone)
        _close_project_periods(project, start)
        _fabricate_alerts(project)
        _, raw_key = api_key_create(project=project, name="demo", actor=ACTOR)
        member = _add_admin_member(project)
        AuditLog.objects.create(project=project, action="demo_seed", actor=ACTOR,
                                after={"users": users, "events": written, "days": days})
        over_count = UserBudget.objects.filter(project=project, current_spend__gte=F("total_budget")).count()
    return {"project": project, "key": raw_key, "users": users, "events": written, "periods": closed,
            "over": over_count, "member": member}


def _fresh_project(name: str, tz: str, *, reset: bool) -> Project:
    project = Project.objects.filter(name=name).first()
    if project is not None:
        count = CostEvent.objects.filter(project=project).count()
        if count:
            if not reset:
                raise ProjectNotEmpty(
                    f"project {name!r} already has {count} ledger events; run with --reset to delete the "
                    "project (its ledger, budgets, keys and audit log) and seed it again"
                )
            _delete_project(project)
            project = None
    if project is None:
        project = project_create(name=name, timezone=tz, duration=Duration.MONTHLY, actor=ACTOR)
    return project


def _delete_project(project: Project) -> None:
    """Delete a project; its ledger first, so deleting the budgets need not unlink a million events."""
    CostEvent.objects.filter(project=project).delete()
    project.delete()


def _insert_budgets(project: Project, names: list[str], durations: Sequence[str], start: datetime,
                    at: datetime) -> dict[str, int]:
    """The users' budgets (total set later, from what they spend), with budget_set's audit rows."""
    period_of = {d: periods.period_containing(d, project.timezone, at, anchor=start) for d in set(durations)}
    budgets = [
        UserBudget(project=project, user_id=user, total_budget=ZERO, duration=duration,
                   period_start=period_of[duration].start, next_reset_at=period_of[duration].next_reset,
                   created_at=start, updated_at=at)
        for user, duration in zip(names, durations, strict=True)
    ]
    UserBudget.objects.bulk_create(budgets, batch_size=BATCH_SIZE)
    if any(b.pk is None for b in budgets):  # a backend that does not return ids
        ids = dict(UserBudget.objects.filter(project=project).values_list("user_id", "pk"))
    else:
        ids = {b.user_id: b.pk for b in budgets}
    return ids


def _event_rows(project: Project, budget_ids: dict[str, int], calls: Iterable[Call]) -> Iterator[tuple]:
    """ledger.SEED_COLUMNS of each call."""
    for user, model, prompt, completion, cached, cost, created_at in calls:
        yield (project.pk, budget_ids[user], user, model, prompt, completion, cached, 0, cost,
               CostEvent.Source.DEMO.value, "", created_at)


def _fabricate_calls(names: list[str], days: int, n_events: int, models_: list[tuple[DemoModel, pricing.Price]],
                     zone: ZoneInfo, at: datetime, rng: random.Random) -> Iterator[Call]:
    """(user, model, prompt, completion, cached, cost, time) for each call, generated in chunks."""
    user_weights = _user_weights(len(names))
    # Each user favours a few models.
    favourites = {user: rng.choices(models_, weights=[m.weight for m, _ in models_], k=3) for user in names}
    day_weights, midnights = _days(days, zone, at)
    utc = at.tzinfo
    cost_of = _cost_function(models_)
    done = 0
    while done < n_events:
        size = min(CHUNK, n_events - done)
        done += size
        users = rng.choices(names, cum_weights=user_weights, k=size)
        offsets = rng.choices(range(days), cum_weights=day_weights, k=size)
        for user, offset in zip(users, offsets, strict=True):
            model, price = rng.choice(favourites[user])
            # Office hours, give or take. A call that would be later than now happened on an earlier day,
            # so today has only the calls of the hours gone by.
            seconds = min(max(rng.gauss(14 * 3600, 3.5 * 3600), 0), 86399)
            midnight = midnights[offset]
            created_at = midnight + timedelta(seconds=seconds)
            if created_at > at:
                # Only today can be later than now: the day before is always past.
                created_at = created_at - timedelta(days=1) if days > 1 else midnight + (at - midnight) * rng.random()
            prompt = lognormal_tokens(rng, model.prompt)
            completion = lognormal_tokens(rng, model.completion, cap=16_000)
            cached = 0
            if price.cache_read is not None and prompt > 1024 and rng.random() < 0.3:
                cached = int(prompt * rng.uniform(0.3, 0.9))
            cost = cost_of(price, prompt, completion, cached)
            yield user, model.name, prompt, completion, cached, cost, created_at.astimezone(utc)


def _user_weights(count: int) -> list[float]:
    """Heavy users and many light ones: call volume falls off with rank (Zipf-like). Cumulative."""
    return list(accumulate(1 / (rank + 1) ** 1.1 for rank in range(count)))


def _days(days: int, zone: ZoneInfo, at: datetime) -> tuple[list[float], list[datetime]]:
    """Each day's cumulative weight (more calls on later days, a growing product, and fewer at
    weekends) and its local midnight, oldest first."""
    today = at.astimezone(zone).date()
    first_day = today - timedelta(days=days - 1)
    weights = []
    midnights = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        weights.append((0.6 + 0.8 * offset / max(days - 1, 1)) * (0.35 if day.weekday() >= 5 else 1.0))
        midnights.append(datetime.combine(day, time(), tzinfo=zone))
    return list(accumulate(weights)), midnights


# The calls of _fabricate_calls, drawn by PostgreSQL: Python draws only who calls on which day (the
# cells); the series expands each cell into its calls and draws their model, time and tokens with
# random() seeded by setseed (one backend, no parallel plan: the same seed gives the same ledger),
# then prices them exactly (numeric) with the half-even rounding to 12 places of `_cost_function`.
# Normal draws are Box-Muller's; 1 - random() is never 0.
_FABRICATE = """
SELECT %(project)s::bigint, budget_id, user_id, (%(names)s::text[])[model], prompt, completion, cached, 0,
       ((q + CASE WHEN x - q > 0.5 OR (x - q = 0.5 AND mod(q, 2) = 1) THEN 1 ELSE 0 END)
        / 1e12)::numeric(24, 12),
       %(source)s, '', created_at
FROM (
  SELECT *, trunc(x) AS q FROM (
    SELECT *, ((prompt - cached) * (%(input)s::numeric[])[model] + cached * (%(cache_read)s::numeric[])[model]
               + completion * (%(output)s::numeric[])[model]) * 1e12 AS x
    FROM (
      SELECT budget_id, model, prompt, completion,
             CASE WHEN (%(caches)s::bool[])[model] AND prompt > 1024 AND u_cache < 0.3
                  THEN floor(prompt * (0.3 + 0.6 * u_share))::bigint ELSE 0 END AS cached,
             CASE WHEN t <= %(at)s THEN t WHEN %(days)s > 1 THEN t - interval '1 day'
                  ELSE midnight + (%(at)s - midnight) * u_today END AS created_at
      FROM (
        SELECT budget_id, model, midnight, u_cache, u_share, u_today,
               midnight + make_interval(secs => least(greatest(50400 + 12600 * sqrt(-2 * ln(1 - t1))
                                                               * cos(2 * pi() * t2), 0), 86399)) AS t,
               CASE WHEN (%(prompt)s::int[])[model] = 0 THEN 0 ELSE greatest(1, least(200000, floor(exp(
                 ln((%(prompt)s::int[])[model]) + 0.9 * sqrt(-2 * ln(1 - p1)) * cos(2 * pi() * p2)))))::bigint
               END AS prompt,
               CASE WHEN (%(completion)s::int[])[model] = 0 THEN 0 ELSE greatest(1, least(16000, floor(exp(
                 ln((%(completion)s::int[])[model]) + 0.9 * sqrt(-2 * ln(1 - c1)) * cos(2 * pi() * c2)))))::bigint
               END AS completion
        FROM (
          SELECT c.budget_id, (%(midnights)s::timestamptz[])[c.day] AS midnight,
                 (ARRAY[c.f1, c.f2, c.f3])[1 + floor(random() * 3)::int] AS model,
                 random() AS t1, random() AS t2, random() AS p1, random() AS p2, random() AS c1, random() AS c2,
                 random() AS u_cache, random() AS u_share, random() AS u_today
          FROM unnest(%(budget_ids)s::bigint[], %(cell_days)s::int[], %(counts)s::int[], %(f1)s::int[],
                      %(f2)s::int[], %(f3)s::int[]) AS c(budget_id, day, n, f1, f2, f3),
               generate_series(1, c.n)
          OFFSET 0  -- each level once: a fence keeps PostgreSQL from copying its expressions into the next
        ) AS draws
        OFFSET 0
      ) AS calls
      OFFSET 0
    ) AS cached
    OFFSET 0
  ) AS exact
  OFFSET 0
) AS priced JOIN (SELECT id, user_id FROM {budgets} WHERE project_id = %(project)s) AS b ON b.id = budget_id
"""


def _int_array(values: Iterable[int]) -> str:
    """An int array's literal: psycopg's list adapter costs seconds for arrays of 300,000."""
    return "{" + ",".join(map(str, values)) + "}"


def _fabricate_in_sql(project: Project, names: list[str], budget_ids: dict[str, int], days: int, n_events: int,
                      models_: list[tuple[DemoModel, pricing.Price]], zone: ZoneInfo, at: datetime,
                      rng: random.Random) -> ledger.SeedQuery:
    """_fabricate_calls' calls as a SeedQuery: the same kind of calls, drawn in the database."""
    favourites = [[1 + index for index in rng.choices(range(len(models_)), weights=[m.weight for m, _ in models_],
                                                      k=3)] for _ in names]
    day_weights, midnights = _days(days, zone, at)
    days_drawn = rng.choices(range(days), cum_weights=day_weights, k=n_events)
    cells: Counter[tuple[int, int]] = Counter(zip(
        rng.choices(range(len(names)), cum_weights=_user_weights(len(names)), k=n_events), days_drawn, strict=True))
    # User by user, day by day: each user's rows go to neighbouring entries of the ledger's (user, time)
    # index, the biggest, instead of all over it.
    ordered = sorted(cells.items())
    ids = [budget_ids[name] for name in names]
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [rng.random() * 2 - 1])
        # The series' row estimate is wild (1,000 a cell): JIT would compile for seconds to save none.
        cursor.execute("SET LOCAL jit = off")
        # The rollups' rebuild groups the million rows: in memory, not in 128 spilled batches.
        cursor.execute("SET LOCAL work_mem = '256MB'")
    return ledger.SeedQuery(_FABRICATE.replace("{budgets}", UserBudget._meta.db_table), {
        "project": project.pk, "source": CostEvent.Source.DEMO.value, "at": at, "days": days,
        "names": [m.name for m, _ in models_], "prompt": [m.prompt for m, _ in models_],
        "completion": [m.completion for m, _ in models_], "caches": [p.cache_read is not None for _, p in models_],
        "input": [p.input for _, p in models_], "output": [p.output for _, p in models_],
        "cache_read": [p.input if p.cache_read is None else p.cache_read for _, p in models_],
        "midnights": midnights,
        "budget_ids": _int_array(ids[user] for (user, _), _ in ordered),
        "cell_days": _int_array(day + 1 for (_, day), _ in ordered),
        "counts": _int_array(count for _, count in ordered),
        **{f"f{slot + 1}": _int_array(favourites[user][slot] for (user, _), _ in ordered) for slot in range(3)},
    })


def _cost_function(models_: list[tuple[DemoModel, pricing.Price]]) -> Any:
    """pricing.cost_of_tokens rounded as stored, in integer arithmetic: a million calls cost seconds less.

    Prices have at most 18 places (the price table's column), so in units of 1e-18 dollars every
    product is an exact integer; rounding to the stored 12 places is half-even, as Decimal.quantize does.
    """
    units: dict[str, tuple[int, int, int]] = {}
    for _, price in models_:
        scaled = [p.scaleb(18) for p in (price.input, price.cache_read or price.input, price.output)]
        if any(p != p.to_integral_value() for p in scaled):
            units = {}
            break
        units[price.model] = tuple(int(p) for p in scaled)  # type: ignore[assignment]

    def cost_of(price: pricing.Price, prompt: int, completion: int, cached: int) -> Decimal:
        if price.model not in units:
            return stored(pricing.cost_of_tokens(price, prompt_tokens=prompt, completion_tokens=completion,
                                                 cached_tokens=cached))
        per_input, per_cached, per_output = units[price.model]
        quotient, remainder = divmod((prompt - cached) * per_input + cached * per_cached + completion * per_output,
                                     10**6)
        if remainder > 500_000 or (remainder == 500_000 and quotient % 2):
            quotient += 1
        return Decimal(quotient).scaleb(-12)

    return cost_of


def _set_budget_totals(project: Project, names: list[str], rng: random.Random) -> set[str]:
    """Budgets planned from what each user spends in their current period; returns the users put over."""
    planned = dict(UserBudget.objects.filter(project=project).values_list("user_id", "current_spend"))
    # A few users over budget: every fifth of the spenders, biggest first, skipping the very biggest.
    spenders = sorted((u for u in names if planned[u] > 0), key=lambda u: (-planned[u], u))
    over = set(spenders[1::5][: max(1, len(names) // 15)])
    budgets = list(UserBudget.objects.filter(project=project))
    by_amount: dict[Decimal, list[int]] = defaultdict(list)
    for budget in budgets:
        budget.total_budget = budget_for(planned[budget.user_id], budget.user_id in over, rng)
        by_amount[budget.total_budget].append(budget.pk)
    # Budgets people set take few distinct amounts: one UPDATE per amount, not one per budget.
    for amount, ids in by_amount.items():
        for i in range(0, len(ids), BATCH_SIZE):
            UserBudget.objects.filter(pk__in=ids[i:i + BATCH_SIZE]).update(total_budget=amount)
    # What budget_set writes for a new budget (spend was zero when it was created); COPY on PostgreSQL.
    ledger.insert_rows(
        AuditLog, ("project_id", "budget_id", "user_id", "action", "actor", "after", "created_at"),
        [(project.pk, b.pk, b.user_id, "budget_create", ACTOR, {**budget_snapshot(b), "current_spend": "0"},
          b.created_at) for b in budgets],
    )
    return over


PERIOD_COLUMNS = ("budget_id", "project_id", "user_id", "period_start", "period_end", "spend", "total_budget",
                  "model_spend", "reason", "created_at")


def _close_past_periods(project: Project, zone: ZoneInfo) -> int:
    """One BudgetPeriod per finished period of each budget, from the ledger (zero-spend periods too).

    The ledger's sums by user, local day and model are the SpendDay rollups, just rebuilt from it:
    periods are whole local days, so a period's spend is the sum of its days' rows.
    """
    budgets = {b.user_id: b for b in UserBudget.objects.filter(project=project).exclude(duration=Duration.NONE)
               .values_list("pk", "user_id", "duration", "period_start", "total_budget", named=True)}
    first_current = {user: b.period_start.astimezone(zone).date() for user, b in budgets.items()}
    earlier = (SpendDay.objects.filter(project=project, day__lt=max(first_current.values(), default=date.min))
               .values_list("user_id", "day", "model", "spend"))
    per_period: dict[tuple[int, datetime], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    first_start: dict[int, datetime] = {}
    found_periods: dict[tuple[str, Any], periods.Period] = {}
    for user_id, day, model, amount in earlier.iterator(chunk_size=10_000):
        budget = budgets.get(user_id)
        if budget is None or day >= first_current[user_id]:
            continue
        key = (budget.duration, day)
        if key not in found_periods:
            noon = datetime.combine(day, time(12), tzinfo=zone)
            found_periods[key] = periods.period_containing(budget.duration, project.timezone, noon)
        start = found_periods[key].start
        per_period[(budget.pk, start)][model] += amount
        if budget.pk not in first_start or start < first_start[budget.pk]:
            first_start[budget.pk] = start
    rows = []
    next_of: dict[tuple[str, datetime], periods.Period] = {}
    for budget in budgets.values():
        # Every period from the first call's period to the current one, empty ones included.
        if budget.pk not in first_start:
            continue
        key = (budget.duration, first_start[budget.pk])
        if key not in next_of:
            next_of[key] = periods.period_containing(budget.duration, project.timezone, first_start[budget.pk])
        period = next_of[key]
        while period.next_reset is not None and period.start < budget.period_start:
            spend = per_period.get((budget.pk, period.start), {})
            rows.append((budget.pk, project.pk, budget.user_id, period.start, period.next_reset,
                         sum(spend.values(), ZERO), budget.total_budget,
                         {m: str(s) for m, s in sorted(spend.items())}, "period_end", period.next_reset))
            key = (budget.duration, period.next_reset)
            if key not in next_of:
                next_of[key] = periods.period_containing(budget.duration, project.timezone, period.next_reset)
            period = next_of[key]
    return bulk_insert(BudgetPeriod, PERIOD_COLUMNS, rows)


def _fabricate_alerts(project: Project) -> None:
    """Alerts for the thresholds users crossed this period, as already delivered (nothing is sent).

    Each is stamped with the call that crossed it, as cost_record would have: the ledger of the
    period replayed in order through the same rule (`crossed_thresholds`), so 80 % comes before 100 %.
    """
    thresholds = thresholds_of(project)
    if not thresholds:
        return
    lowest = min(thresholds)
    crossed = {b.pk: b for b in UserBudget.objects.filter(project=project, total_budget__gt=0)
               if b.current_spend * 100 >= b.total_budget * lowest}
    events = (CostEvent.objects.filter(budget_id__in=list(crossed), created_at__gte=F("budget__period_start"))
              .order_by("budget_id", "created_at", "id").values_list("budget_id", "created_at", "cost"))
    alerts = []
    for budget_id, calls in groupby(events.iterator(), key=itemgetter(0)):
        budget = crossed[budget_id]
        spend = ZERO
        for _, created_at, cost in calls:
            before, spend = spend, spend + cost
            alerts += [
                Alert(project=project, budget=budget, scope=Alert.Scope.USER, user_id=budget.user_id,
                      threshold=threshold, period_start=budget.period_start, spend=spend,
                      limit=budget.total_budget, created_at=created_at,
                      delivered_at=created_at + timedelta(seconds=2), attempts=1)
                for threshold in crossed_thresholds(before=before, after=spend, limit=budget.total_budget,
                                                    thresholds=thresholds)
            ]
    Alert.objects.bulk_create(alerts, batch_size=BATCH_SIZE, ignore_conflicts=True)


def _close_project_periods(project: Project, start: datetime) -> int:
    """The project's finished periods since the history began, written as the sweep's reset rows.

    The console's periods page reads a project's past periods from these audit rows
    (`selectors.console.project_past_periods`); each holds the period's spend from the ledger and the cap.
    """
    cap = None if project.max_budget is None else str(project.max_budget)
    entries = []
    period = periods.period_containing(project.duration, project.timezone, start, days=project.duration_days,
                                       anchor=project.period_start)
    while period.next_reset is not None and period.start < project.period_start:
        spend = CostEvent.objects.filter(project=project, created_at__gte=period.start,
                                         created_at__lt=period.next_reset).aggregate(s=MoneySum("cost"))["s"]
        following = periods.period_containing(project.duration, project.timezone, period.next_reset,
                                              days=project.duration_days, anchor=project.period_start)
        entries.append(AuditLog(
            project=project, action="project_period_reset", actor=ACTOR, created_at=period.next_reset,
            before={"period_start": period.start.isoformat(), "current_spend": str(spend or ZERO),
                    "period_end": period.next_reset.isoformat(), "max_budget": cap},
            after={"period_start": following.start.isoformat()},
        ))
        period = following
    write_audits(entries)
    return len(entries)


def _add_admin_member(project: Project) -> str | None:
    """The embedded demo's superuser `admin` sees the project as a member too."""
    user = get_user_model().objects.filter(username="admin").first()
    if user is None:
        return None
    project.members.add(user)
    return user.get_username()
