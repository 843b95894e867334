"""Reads for the console's pages: aggregates for charts and tables, and the CSV export.

Everything here is set-based (GROUP BY in the database, a bounded number of queries per
page whatever the number of users or ledger rows). Days are local days in the project's
time zone. No writes here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser  # User: AUTH_USER_MODEL
from django.core.paginator import Page, Paginator
from django.db import connection, transaction
from django.db.models import (
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import NullIf
from django.db.models.lookups import GreaterThanOrEqual
from django.utils.timezone import now as utcnow

from ..base.fields import MoneyField
from ..base.money import MONEY_PLACES
from ..domain import pricing
from ..domain.forecast import elapsed_seconds
from ..domain.forecast import projected as projected_use
from ..models import (
    Alert,
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Invitation,
    Membership,
    ModelDay,
    ModelPrice,
    ModelSpend,
    Project,
    SpendDay,
    UserBudget,
    UserDay,
    UserMonth,
)
from . import budgets as selectors

ZERO = Decimal(0)
NEAR_LIMIT_PERCENT = 80
USERS_PER_PAGE = 50
LEDGER_PER_PAGE = 50
TOP_N = 10
# Users named in the "spend per model by user" chart; the rest are summed as "other users".
USERS_PER_MODEL_CHART = 8
EXPORT_CHUNK_SIZE = 2000


def MoneySum(expression: Any, **extra: Any) -> Sum:
    """SUM of a money column, converted back to dollars by MoneyField on every database."""
    return Sum(expression, output_field=MoneyField(), **extra)


# --- who sees what ----------------------------------------------------------------------------


def visible_projects(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Project]:
    """Staff see every project; anyone else the projects they are a member of."""
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    live = Project.objects.filter(deleting_since__isnull=True)  # a deleted project's rows go in batches
    if getattr(user, "is_staff", False):
        return live
    return live.filter(members=user.pk)


def project_contents(project: Project) -> dict[str, int]:
    """What deleting the project takes with it (for its confirmation page)."""
    return {
        "ledger_events": CostEvent.objects.filter(project=project).count(),
        "budgets": UserBudget.objects.filter(project=project).count(),
        "api_keys": ApiKey.objects.filter(project=project).count(),
        "members": Membership.objects.filter(project=project).count(),
    }


def members_of(project: Project) -> list[Membership]:
    return list(Membership.objects.filter(project=project).select_related("user").order_by("user__username"))


def pending_invitations(project: Project) -> list[Invitation]:
    """Invitations that can still be accepted, newest first."""
    pending = Invitation.objects.filter(project=project, accepted_at=None, revoked_at=None, expires_at__gt=utcnow())
    return list(pending.select_related("invited_by").order_by("-created_at", "-pk"))


def role_in(project: Project, user: AbstractBaseUser | AnonymousUser) -> str | None:
    """The person's role in the project (None: not a member)."""
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(project=project, user_id=user.pk).values_list("role", flat=True).first()


# --- date ranges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DateRange:
    """Whole local days `start`..`end` (both included) in a project's time zone."""

    start: date
    end: date
    zone: ZoneInfo

    @classmethod
    def last_days(cls, days: int, zone: ZoneInfo, at: datetime | None = None) -> DateRange:
        today = (at or utcnow()).astimezone(zone).date()
        return cls(today - timedelta(days=days - 1), today, zone)

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time(), tzinfo=self.zone)

    @property
    def until(self) -> datetime:
        """The first instant after the range (exclusive)."""
        return datetime.combine(self.end + timedelta(days=1), time(), tzinfo=self.zone)

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def project_zone(project: Project) -> ZoneInfo:
    return ZoneInfo(project.timezone)


# --- projects page ----------------------------------------------------------------------------


def project_summaries(projects: QuerySet[Project]) -> QuerySet[Project]:
    """Projects with `user_count` and `near_limit_count` (users at 80% of their budget or more)."""
    # spend * 100 >= budget * 80, in integers: no ratio of money columns is computed.
    near_limit = Q(budgets__total_budget__gt=0) & GreaterThanOrEqual(
        F("budgets__current_spend") * 100, F("budgets__total_budget") * NEAR_LIMIT_PERCENT
    )
    return projects.annotate(
        user_count=Count("budgets"),
        near_limit_count=Count("budgets", filter=near_limit),  # type: ignore[arg-type]  # a lookup is a boolean expression
    ).order_by("name")


def cap_use(spend: Decimal, cap: Decimal | None) -> Decimal | None:
    """Spend as a percentage of a cap (None without a cap or with a zero cap)."""
    if cap is None or cap <= 0:
        return None
    return spend * 100 / cap


# --- project overview -------------------------------------------------------------------------


@dataclass
class DailySpend:
    """Spend per local day and model over a range, zeros filled in: one series per model."""

    days: list[date]
    models: list[str]
    spend: dict[str, list[Decimal]]
    total: Decimal = ZERO
    events: int = 0

    @property
    def is_empty(self) -> bool:
        return self.events == 0

    def day_totals(self) -> list[tuple[date, Decimal]]:
        return [(day, sum((self.spend[m][i] for m in self.models), ZERO)) for i, day in enumerate(self.days)]


def _ledger(project: Project, rng: DateRange | None = None, *, user_id: str | None = None,
            model: str | None = None, tag: str | None = None) -> QuerySet[CostEvent]:
    """The API's ledger filter, unordered: most callers aggregate, and ORDER BY would join the GROUP BY."""
    return selectors.cost_events(
        project, user_id=user_id, model=model, since=rng.since if rng else None, until=rng.until if rng else None,
        tag=tag,
    ).order_by()


def _days(project: Project, rng: DateRange, *, user_id: str | None = None,
          model: str | None = None) -> QuerySet[Any]:
    """The daily rollups over the range (local days in the project's time zone), unordered.

    The charts and tables over a range read these, not the ledger (services.rollups keeps them
    equal to it), at the coarsest grain that answers: per model (a few rows a day) unless one
    user is asked for, then per user and model.
    """
    days: QuerySet[Any]
    if user_id is None:
        days = ModelDay.objects.filter(project=project)
    else:
        days = SpendDay.objects.filter(project=project, user_id=user_id)
    if model is not None:
        days = days.filter(model=model)
    return days.filter(day__gte=rng.start, day__lte=rng.end).order_by()


# How deep ranking reads each month's biggest spenders at first (then 4× deeper while unsettled).
RANKING_DEPTH = 64


def _months(rng: DateRange) -> list[date]:
    """The first days of the calendar months the range touches."""
    months, month = [], rng.start.replace(day=1)
    while month <= rng.end:
        months.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return months


def ranked_users(project: Project, rng: DateRange, limit: int) -> list[dict[str, Any]]:
    """The `limit` users who spent most over the range ({user_id, spend, events}; spend, then id), exactly.

    Summing every user's days reads a row per active user a day (300,000 for 10,000 users over a
    month). Instead, a threshold algorithm on the months the range touches: the `depth` biggest
    spenders of each month are read from an index (UserMonth), and their exact spend over the range
    from their days (UserDay). Anyone not read spent at most the depth-th figure in each month, so
    (a cost is never negative: a constraint on the ledger) at most the sum of those figures over
    the range, the threshold; once the `limit`-th exact spend is above it, no one else can rank.
    Otherwise read 4× deeper, until every user is read.
    """
    months = _months(rng)
    depth = max(RANKING_DEPTH, limit)
    while True:
        threshold, complete, candidates = ZERO, True, set[str]()
        for month in months:
            heads = list(
                UserMonth.objects.filter(project=project, month=month).order_by("-spend", "user_id")
                .values_list("user_id", "spend")[:depth]
            )
            candidates.update(user_id for user_id, _ in heads)
            if len(heads) == depth:  # some users of this month were not read: they spent at most this
                threshold += heads[-1][1]
                complete = False
        exact: list[dict[str, Any]] = [dict(row) for row in (
            UserDay.objects.filter(project=project, user_id__in=candidates, day__gte=rng.start, day__lte=rng.end)
            .order_by().values("user_id").annotate(spend=MoneySum("spend"), events=Sum("events"))
        )] if candidates else []
        ranked = sorted(exact, key=lambda row: (-row["spend"], row["user_id"]))[:limit]
        if complete or (len(ranked) == limit and ranked[-1]["spend"] > threshold):
            return ranked
        depth *= 4


def daily_spend(project: Project, rng: DateRange, *, user_id: str | None = None,
                model: str | None = None) -> DailySpend:
    """Spend per local day and model: one GROUP BY query over the daily rollups."""
    rows = (
        _days(project, rng, user_id=user_id, model=model)
        .values("day", "model")
        .annotate(spend=MoneySum("spend"), events=Sum("events"))
        .order_by("day", "model")
    )
    index = {day: i for i, day in enumerate(rng.days)}
    spend: dict[str, list[Decimal]] = {}
    result = DailySpend(days=rng.days, models=[], spend=spend)
    for row in rows:
        i = index.get(row["day"])
        if i is None:  # cannot happen with the range filter; a guard against DST edge days
            continue
        series = spend.setdefault(row["model"], [ZERO] * len(rng.days))
        series[i] += row["spend"]
        result.total += row["spend"]
        result.events += row["events"]
    # Biggest model first: the legend and the stack read from the top spender down.
    result.models = sorted(spend, key=lambda m: (-sum(spend[m]), m))
    return result


@dataclass(frozen=True)
class Ranked:
    name: str
    spend: Decimal
    events: int
    share: Decimal | None  # percent of the range's total


def _ranked(rows: Any, key: str, total: Decimal) -> list[Ranked]:
    return [
        Ranked(row[key], row["spend"], row["events"], row["spend"] * 100 / total if total else None)
        for row in rows
    ]


def top_users(project: Project, rng: DateRange, total: Decimal, limit: int = TOP_N) -> list[Ranked]:
    return _ranked(ranked_users(project, rng, limit), "user_id", total)


def top_models(project: Project, rng: DateRange, total: Decimal, limit: int = TOP_N) -> list[Ranked]:
    rows = (
        _days(project, rng).values("model").annotate(spend=MoneySum("spend"), events=Sum("events"))
        .order_by("-spend", "model")[:limit]
    )
    return _ranked(rows, "model", total)


@dataclass(frozen=True)
class Forecast:
    """Where the project's spend is heading at its current burn rate."""

    spend: Decimal
    cap: Decimal | None
    period_start: datetime
    period_end: datetime | None  # None: the cap is a lifetime cap (no reset)
    per_day: Decimal  # average spend per day so far in the period
    projected: Decimal | None  # spend at period end at that rate (None without a period end)
    cap_reached_at: datetime | None  # when the cap will be reached at that rate (None: not before period end)

    @property
    def cap_use(self) -> Decimal | None:
        return cap_use(self.spend, self.cap)

    @property
    def cap_exhausted(self) -> bool:
        return self.cap is not None and self.spend >= self.cap

    @property
    def projected_use(self) -> Decimal | None:
        return None if self.projected is None else cap_use(self.projected, self.cap)


def forecast(project: Project, at: datetime | None = None) -> Forecast:
    """The project's spend at its period's end by the one forecast method (domain.forecast)."""
    at = at or utcnow()
    end = project.next_reset_at
    elapsed = elapsed_seconds(project.period_start, end, at)
    spend = project.current_spend
    per_day = (spend * 86400 / elapsed).quantize(MONEY_PLACES)
    projected = projected_use(spend, project.period_start, end, at)
    reached = None
    cap = project.max_budget
    if cap is not None and ZERO < spend < cap:
        seconds = (cap - spend) * elapsed / spend
        if seconds < 100 * 365 * 86400:
            reached = at + timedelta(seconds=float(seconds))
            if end is not None and reached >= end:
                reached = None
    return Forecast(spend=spend, cap=cap, period_start=project.period_start, period_end=end,
                    per_day=per_day, projected=projected, cap_reached_at=reached)


def recent_alerts(project: Project, limit: int = TOP_N) -> list[Alert]:
    return list(Alert.objects.filter(project=project).order_by("-created_at", "-id")[:limit])


# --- users ------------------------------------------------------------------------------------

# Sort keys the users table accepts (anything else falls back to the default).
USER_SORTS: dict[str, tuple[str, ...]] = {
    "user": ("user_id",),
    "budget": ("total_budget", "user_id"),
    "spend": ("current_spend", "user_id"),
    "used": ("utilisation_ratio", "user_id"),
    "duration": ("duration", "duration_days", "user_id"),
    "reset": ("next_reset_at", "user_id"),
}
DEFAULT_USER_SORT = "-spend"


def normalise_sort(sort: str | None) -> str:
    key = (sort or "").lstrip("-")
    return sort if sort and key in USER_SORTS else DEFAULT_USER_SORT  # type: ignore[return-value]


def budgets_page(project: Project, *, search: str = "", sort: str | None = None, page: Any = 1,
                 per_page: int = USERS_PER_PAGE) -> Page:
    """One page of the project's budgets, searched, sorted and paginated in the database."""
    budgets = UserBudget.objects.filter(project=project)
    if search:
        budgets = budgets.filter(user_id__icontains=search)
    sort = normalise_sort(sort)
    descending = sort.startswith("-")
    fields = USER_SORTS[sort.lstrip("-")]
    if "utilisation_ratio" in fields:
        # Parts per million of the budget, only to order rows; the page shows the exact utilisation.
        budgets = budgets.annotate(utilisation_ratio=ExpressionWrapper(
            F("current_spend") * Value(1_000_000) / NullIf(F("total_budget"), Value(0)),
            output_field=DecimalField(max_digits=40, decimal_places=6),
        ))
    ordering = [
        (F(name).desc(nulls_last=True) if descending else F(name).asc(nulls_last=True)) for name in fields
    ]
    ordering.append(F("pk").asc())
    # No model_spends here: the table needs none, so there is no query per row.
    budgets = budgets.order_by(*ordering).only(
        "id", "project_id", "user_id", "total_budget", "current_spend", "held", "duration", "duration_days",
        "period_start", "next_reset_at",
    )
    return Paginator(budgets, per_page).get_page(page)


class BudgetSettings(NamedTuple):
    """What a bulk change reads of a budget: its settings and period (no spend per model, no hosted baseline)."""

    id: int
    user_id: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    period_start: datetime
    next_reset_at: datetime | None
    current_spend: Decimal


_BUDGETS_BY_USER = (f"SELECT {', '.join(BudgetSettings._fields)} FROM budgets_userbudget "
                    "WHERE project_id = %s AND user_id = ANY(%s) ORDER BY id")


def budgets_by_user(project: Project, user_ids: list[str], *, lock: bool = False) -> dict[str, BudgetSettings]:
    """The project's budgets of these users, by user id; with `lock`, locked in id order (inside the caller's
    transaction: services.bulk_budgets writes them). One statement on PostgreSQL (the ids as one array), so a
    10,000-row import reads in one round trip; elsewhere one per 1,000 ids (SQLite caps parameters).
    """
    if not user_ids:
        return {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_BUDGETS_BY_USER + (" FOR UPDATE" if lock else ""), [project.pk, list(user_ids)])
            return {row[1]: BudgetSettings(*row) for row in cursor.fetchall()}
    found: dict[str, BudgetSettings] = {}
    for start in range(0, len(user_ids), 1000):
        chunk = UserBudget.objects.filter(project=project, user_id__in=user_ids[start:start + 1000])
        if lock:
            chunk = chunk.select_for_update().order_by("id")
        found.update((row[1], BudgetSettings(*row)) for row in chunk.values_list(*BudgetSettings._fields))
    return found


def model_spend_of(budget: UserBudget) -> list[ModelSpend]:
    """The budget's spend per model in its current period, biggest first."""
    return list(ModelSpend.objects.filter(budget_id=budget.pk).order_by("-spend", "model"))


def past_periods(budget: UserBudget, limit: int = 24) -> list[BudgetPeriod]:
    """The budget's last finished periods, oldest first (as a chart reads them)."""
    rows = list(BudgetPeriod.objects.filter(budget=budget).order_by("-period_start")[:limit])
    rows.reverse()
    return rows


@dataclass(frozen=True)
class PastPeriod:
    """A finished period: its first instant, the instant it ended, the spend in it and the budget it had."""

    start: datetime
    end: datetime
    spend: Decimal
    budget: Decimal | None

    @property
    def last_instant(self) -> datetime:
        """For showing the last day: `end` is the first instant of the next period."""
        return self.end - timedelta(microseconds=1)


def user_past_periods(budget: UserBudget, limit: int = 24) -> list[PastPeriod]:
    """A user's finished periods, oldest first (BudgetPeriod rows)."""
    return [PastPeriod(p.period_start, p.period_end, p.spend, p.total_budget)
            for p in past_periods(budget, limit)]


def project_past_periods(project: Project, limit: int = 24) -> list[PastPeriod]:
    """The project's finished periods, oldest first, from the audit rows its resets wrote.

    Rows written before the end and cap were recorded end where the next period started and have no cap.
    """
    rows = (AuditLog.objects.filter(project=project, action="project_period_reset")
            .order_by("-created_at", "-id").values_list("before", "after")[:limit])
    result = []
    for before, after in rows:
        if not isinstance(before, dict) or not isinstance(after, dict):
            continue  # a row of another shape is not a period
        try:
            start = datetime.fromisoformat(before["period_start"])
            end = datetime.fromisoformat(before.get("period_end") or after["period_start"])
            spend = Decimal(before["current_spend"])
            cap = before.get("max_budget")
            result.append(PastPeriod(start, end, spend, None if cap is None else Decimal(cap)))
        except (KeyError, TypeError, ValueError, ArithmeticError):
            continue  # a row of another shape is not a period
    return result[::-1]


class _CountedEvents:
    """The ledger's rows with their count taken from the daily rollups (equal to the ledger's,
    one row per day and model instead of one per call): COUNT(*) over a heavy user's millions
    of events was the slowest part of their page."""

    def __init__(self, events: QuerySet[CostEvent], count: int) -> None:
        self.events, self._count = events, count

    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        return self.events[index]


def ledger_page(project: Project, *, user_id: str | None = None, model: str | None = None, page: Any = 1,
                per_page: int = LEDGER_PER_PAGE) -> Page:
    events = _ledger(project, user_id=user_id, model=model).order_by("-created_at", "-id")
    days: QuerySet[Any] = (
        ModelDay.objects.filter(project=project) if user_id is None
        else SpendDay.objects.filter(project=project, user_id=user_id)
    )
    if model is not None:
        days = days.filter(model=model)
    count = days.aggregate(n=Sum("events"))["n"] or 0
    # Duck-typed: Paginator needs only count() and slicing, not the stub's Iterable protocol.
    return Paginator(_CountedEvents(events, count), per_page).get_page(page)  # type: ignore[arg-type]


# --- models -----------------------------------------------------------------------------------


@dataclass
class ModelUsage:
    model: str
    spend: Decimal
    events: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    price: pricing.Price | None = None
    price_row: ModelPrice | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def model_usage(project: Project, rng: DateRange) -> list[ModelUsage]:
    """Spend and tokens per model over the range, with the price the table has for each model."""
    rows = (
        _days(project, rng).values("model")
        .annotate(spend=MoneySum("spend"), events=Sum("events"), prompt=Sum("prompt_tokens"),
                  completion=Sum("completion_tokens"), cached=Sum("cached_tokens"))
        .order_by("-spend", "model")
    )
    usage = [ModelUsage(r["model"], r["spend"], r["events"], r["prompt"] or 0, r["completion"] or 0,
                        r["cached"] or 0) for r in rows]
    for item in usage:
        item.price = pricing.find_price(item.model)
    names = {item.price.model for item in usage if item.price is not None}
    rows_by_name = {row.model: row for row in ModelPrice.objects.filter(model__in=names)} if names else {}
    for item in usage:
        if item.price is not None:
            item.price_row = rows_by_name.get(item.price.model)
    return usage


@dataclass
class ModelByUser:
    """Spend per model split by user: the top users by name, everyone else as one series."""

    models: list[str]
    users: list[str]
    spend: dict[str, list[Decimal]] = field(default_factory=dict)  # user (or OTHER_USERS) → per model
    other: list[Decimal] = field(default_factory=list)


OTHER_USERS = "other users"


def model_by_user(project: Project, rng: DateRange, models: list[str],
                  limit: int = USERS_PER_MODEL_CHART) -> ModelByUser:
    """Two GROUP BY queries: the top users over the range, then spend per model for them and the rest."""
    top = [row["user_id"] for row in ranked_users(project, rng, limit)]
    result = ModelByUser(models=models, users=top, spend={u: [ZERO] * len(models) for u in top},
                         other=[ZERO] * len(models))
    index = {m: i for i, m in enumerate(models)}
    rows = (
        SpendDay.objects.filter(project=project, user_id__in=top, day__gte=rng.start, day__lte=rng.end).order_by()
        .values("model", "user_id").annotate(spend=MoneySum("spend"))
    )
    for row in rows:
        if row["model"] in index:
            result.spend[row["user_id"]][index[row["model"]]] = row["spend"]
    totals = dict(_days(project, rng).values("model").annotate(spend=MoneySum("spend")).values_list("model", "spend"))
    for model, i in index.items():
        named = sum((result.spend[u][i] for u in top), ZERO)
        result.other[i] = max(totals.get(model, ZERO) - named, ZERO)
    return result


# --- history: the audit log and the alerts ---------------------------------------------------

AUDIT_PER_PAGE = 50
ALERTS_PER_PAGE = 50


def audit_page(project: Project, *, user_id: str = "", action: str = "", actor: str = "", page: Any = 1) -> Page:
    """The project's audit log, newest first, filtered by user id, action and actor (exact matches)."""
    rows = AuditLog.objects.filter(project=project)
    if user_id:
        rows = rows.filter(user_id=user_id)
    if action:
        rows = rows.filter(action=action)
    if actor:
        rows = rows.filter(actor=actor)
    return Paginator(rows.order_by("-created_at", "-id"), AUDIT_PER_PAGE).get_page(page)


def audit_actions(project: Project) -> list[str]:
    """The actions that occur in the project's log (the filter's choices)."""
    return list(AuditLog.objects.filter(project=project).order_by("action").values_list("action", flat=True)
                .distinct())


def alerts_page(project: Project, *, page: Any = 1) -> Page:
    alerts = Alert.objects.filter(project=project).select_related("budget", "source_limit")
    return Paginator(alerts.order_by("-created_at", "-id"), ALERTS_PER_PAGE).get_page(page)


# --- API keys ---------------------------------------------------------------------------------


def api_keys(project: Project) -> list[ApiKey]:
    """Active keys first, newest first."""
    return list(ApiKey.objects.filter(project=project).order_by(F("revoked_at").asc(nulls_first=True),
                                                                "-created_at", "-id"))


# --- CSV export -------------------------------------------------------------------------------

EXPORT_COLUMNS = ("time", "user", "model", "prompt_tokens", "completion_tokens", "cached_tokens",
                  "cache_creation_tokens", "cost_usd", "source", "event_id")


def export_rows(project: Project, *, rng: DateRange | None = None, user_id: str | None = None,
                model: str | None = None, tag: str | None = None) -> Iterator[tuple[Any, ...]]:
    """Ledger rows for CSV, oldest first, streamed from the database in chunks (never all in memory)."""
    zone = project_zone(project)
    rows = (
        _ledger(project, rng, user_id=user_id, model=model, tag=tag)
        .order_by("created_at", "id")
        .values_list("created_at", "user_id", "model", "prompt_tokens", "completion_tokens", "cached_tokens",
                     "cache_creation_tokens", "cost", "source", "id")
    )
    for created_at, user_id, model, *counts_and_cost, source, event_id in rows.iterator(chunk_size=EXPORT_CHUNK_SIZE):
        yield (created_at.astimezone(zone).isoformat(), csv_text(user_id), csv_text(model), *counts_and_cost,
               csv_text(source), event_id)


def _text_cell(column: str) -> str:
    """SQL for csv_text: a leading ' before a formula start."""
    return (f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r') "
            f"THEN '''' || {column} ELSE {column} END")


_EXPORT_COPY = """
COPY (
    SELECT to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN to_char(created_at, 'US') <> '000000' THEN '.' || to_char(created_at, 'US') ELSE '' END
           || to_char(created_at, 'TZH:TZM') AS "time",
           {user} AS "user", {model} AS "model", prompt_tokens, completion_tokens, cached_tokens,
           cache_creation_tokens, cost AS cost_usd, {source} AS source, id AS event_id
    FROM budgets_costevent WHERE {where} ORDER BY created_at, id
) TO STDOUT WITH (FORMAT csv, HEADER true)
"""


EXPORT_BLOCK = 64 * 1024


def export_csv_chunks(project: Project, *, rng: DateRange | None = None, user_id: str | None = None,
                      model: str | None = None, tag: str | None = None) -> Iterator[bytes]:
    """PostgreSQL: the export as CSV bytes written by the database (COPY): no row becomes a Python object.

    The same columns, filters, order, time zone and neutralised text cells as export_rows.
    """
    where = ["project_id = %(project)s"]
    params: dict[str, Any] = {"project": project.pk}
    for column, value in (("user_id", user_id), ("model", model)):
        if value is not None:
            where.append(f"{column} = %({column})s")
            params[column] = value
    if tag is not None:
        where.append("strpos(tags, %(tag)s) > 0")
        params["tag"] = f",{tag},"
    if rng is not None:
        where += ["created_at >= %(since)s", "created_at < %(until)s"]
        params.update(since=rng.since, until=rng.until)
    sql = _EXPORT_COPY.format(user=_text_cell("user_id"), model=_text_cell("model"), source=_text_cell("source"),
                              where=" AND ".join(where))
    with transaction.atomic(), connection.cursor() as cursor:
        # The times in the project's zone, for this transaction only.
        cursor.execute("SELECT set_config('TimeZone', %s, true)", [project.timezone])
        with cursor.copy(sql, params) as copy:
            # COPY hands over a row at a time: sent as such, a million rows were a million writes
            # through the WSGI server. Gathered into blocks of EXPORT_BLOCK bytes instead.
            gathered = bytearray()
            for block in copy:
                gathered += block
                if len(gathered) >= EXPORT_BLOCK:
                    yield bytes(gathered)
                    gathered.clear()
            if gathered:
                yield bytes(gathered)


# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ' before a formula start.

    Only the text columns pass through here (user ids and model names come from API
    callers); numbers stay numbers, and none of them is negative.
    """
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value



def alerts_slice(project: Project, *, offset: int, limit: int) -> tuple[list[Alert], int]:
    """A page of the project's alerts, newest first, and how many there are."""
    alerts = Alert.objects.filter(project=project).order_by("-created_at", "-id")
    return list(alerts[offset: offset + limit]), alerts.count()
