"""LiteLLM's hosted protocol as services: serve a project's user_dict, merge one back.

The client keeps its own copy of every user's record and sends the whole dict after
each change, from a new thread each time, so saves can arrive out of order. The
server's spend is the truth: a merge only ever adds what the client's per-model cost
grew by past the highest value seen, and takes away only what this protocol itself
added, when the record shows the client reset. The rule, exactly (docs/api.md has
the same text):

- The baseline `B` (`UserBudget.hosted_model_cost`, model → decimal string) is the
  highest value per model the client reported in the server's period
  `hosted_period_start`, or what get_budget last served. Beside the models it keeps
  `" client"` (a leading space: no model can be named so): the client's
  `last_updated_at` last seen, the one the last reset was taken for, and what this
  protocol recorded per model since that reset.
- A record's cost per model `M` is its `model_cost`; `current_cost` beyond the sum
  of `model_cost` is cost under the model "unknown".
- A client reset needs evidence: `last_updated_at` later than the one last seen
  (the client's reset_on_duration), or `current_cost` exactly 0 with an empty
  `model_cost` (reset_cost) once per `last_updated_at`. A reset takes away from the
  user's and the project's spend only what this protocol recorded for the user in
  the current period since the last reset (audited as budget_reset_hosted); spend
  recorded through the native API stays. `B` is then empty.
- A record with an earlier `last_updated_at` than the one last seen was sent before
  the client's reset: it is ignored. A lower value without evidence is an
  out-of-order save: no spend, and `B` is not lowered.
- Growth `M[model] − B[model]` above float noise is one ledger event (source
  "hosted", zero tokens); `B[model]` becomes the higher of the two.
- A record with neither `current_cost` nor `model_cost` (what the client's
  create_budget sends) says nothing about spend: only the budget is set.

Two processes of one project each send their own counts: the highest per model is
kept, so the other's growth is lost. That protocol is safe for one process; the
native API and the Python client record each call.

Set-based: the dict is parsed and compared with one unlocked read of the project's
budgets; only users whose record may change something are re-read under the locks
(the project row first, then budget rows, as every writer takes them:
see _serialize) and written with a few bulk statements. A user the read did not find is
inserted with its first record already merged (a new budget's baseline is empty), so a
first save writes each row once; one created meanwhile is skipped by the insert and merged
as an existing budget.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F, JSONField
from django.db.models.functions import Greatest
from django.utils.timezone import now as utcnow

from .. import periods, selectors
from ..errors import InvalidInput
from ..fields import money
from ..models import AuditLog, CostEvent, ModelSpend, Project, UserBudget
from ..money import MONEY_MAX, MONEY_PLACES, stored, to_money
from ..usage import validate_model
from . import alerts
from .admission import lock_project, retry_on_conflict
from .audit import budget_snapshot, write_audits
from .common import validate_user_id
from .resets import reset_due_budgets
from .rollups import rollups_add_events

UNKNOWN_MODEL = "unknown"
# Beside the models in the baseline: validate_model strips names, so none starts with a space.
CLIENT_KEY = " client"
# Unix seconds up to 9999-12-31; anything else is not a time LiteLLM's client sent.
MAX_TIMESTAMP = 253402300799
# The client adds costs as floats: differences this small are rounding, not spend.
NOISE_ABSOLUTE = Decimal("1e-10")
NOISE_RELATIVE = Decimal("1e-12")
UNEXPLAINED_RELATIVE = Decimal("1e-9")  # current_cost vs the sum of model_cost: more float sums
# last_updated_at goes through a float and Decimal(repr()) on the way: a millisecond is not a reset.
EPOCH_NOISE = Decimal("0.001")
LOOKUP_BATCH = 1000
WRITE_BATCH = 1000
ZERO = Decimal(0)


def _noise(reference: Decimal) -> Decimal:
    return max(NOISE_ABSOLUTE, abs(reference) * NOISE_RELATIVE)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


@dataclass(frozen=True)
class ClientRecord:
    """One user's record as the client sent it, validated."""

    total_budget: Decimal
    days: int | None
    created_at: datetime | None
    spend: dict[str, Decimal]  # model → the client's cost for it (with "unknown" for the rest)
    # False for a record with neither current_cost nor model_cost: the client's create_budget
    # sends that, and its background save can arrive after a later save that carried spend.
    reports_spend: bool = True
    last_updated: Decimal | None = None  # the client's last_updated_at (reset_on_duration moves it)
    zeroed: bool = False  # current_cost exactly 0 and model_cost {}: what reset_cost leaves


# --- validation: the whole dict before anything is written --------------------------------------


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, str):
        raise InvalidInput(f"{where} must be a JSON number, not a string")
    return stored(to_money(value, where))


def _plain_amount(value: Any) -> Decimal | None:
    """What _amount returns for a JSON number it accepts as it is, else None (_amount then says why).

    Most of a big dict's numbers: the check without building the error's wording per value.
    """
    if type(value) is Decimal:  # a JSON number with a fraction (never a float: codec.loads)
        if value.is_finite() and ZERO <= value < MONEY_MAX:
            return value.quantize(MONEY_PLACES)
    elif type(value) is int and 0 <= value < MONEY_MAX:
        return Decimal(value).quantize(MONEY_PLACES)
    return None


@lru_cache(maxsize=64)
def _day_count(value: int | Decimal) -> int:
    """_days for a value it accepts; a client sends a handful of values, each checked once."""
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 6 or value != value.to_integral_value():
            raise ValueError("not a whole number of days")
        value = int(value)
    periods.duration_from_days(value)
    return int(value)


def _days(value: Any, user: str) -> int | None:
    if value is None:
        return None
    if type(value) in (int, Decimal):  # not bool, whose True would share 1's cache entry
        with suppress(ValueError, TypeError):  # refused: explained below
            return _day_count(value)
    where = f"{_where(user)}.duration"
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 6 or value != value.to_integral_value():
            raise InvalidInput(f"{where} must be a whole number of days")
        value = int(value)
    try:
        periods.duration_from_days(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    return int(value)


def _seconds(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidInput(f"{where} must be Unix seconds (a number from 0 to {MAX_TIMESTAMP})")
    return Decimal(value)


def _plain_seconds(value: Any) -> bool:
    """What _seconds accepts, without the wording of its error."""
    return type(value) in (int, Decimal) and 0 <= value <= MAX_TIMESTAMP


def parse_record(user: str, record: Any) -> ClientRecord:
    if not isinstance(record, dict):
        raise InvalidInput(f"{_where(user)} must be an object")
    if "total_budget" not in record:
        raise InvalidInput(f"{_where(user)}.total_budget is required")
    total_budget = _plain_amount(record["total_budget"])
    if total_budget is None:
        total_budget = _amount(record["total_budget"], f"{_where(user)}.total_budget")
    days = _days(record.get("duration"), user)
    created = record.get("created_at")
    if created is not None and not _plain_seconds(created):
        created = _seconds(created, f"{_where(user)}.created_at")
    created_at = None if created is None else datetime.fromtimestamp(float(created), tz=UTC)
    last_updated = record.get("last_updated_at")
    if last_updated is not None:
        last_updated = (Decimal(last_updated) if _plain_seconds(last_updated)
                        else _seconds(last_updated, f"{_where(user)}.last_updated_at"))

    raw_model_cost = record.get("model_cost")
    model_cost = {} if raw_model_cost is None else raw_model_cost
    if not isinstance(model_cost, dict):
        raise InvalidInput(f"{_where(user)}.model_cost must be an object of model → cost")
    spend: dict[str, Decimal] = {}
    for model, value in model_cost.items():
        name = validate_model(model)
        amount = _plain_amount(value)
        if amount is None:
            amount = _amount(value, f"{_where(user)}.model_cost[{model!r}]")
        spend[name] = spend.get(name, ZERO) + amount
    current = record.get("current_cost")
    if current is not None:
        amount = _plain_amount(current)
        current = _amount(current, f"{_where(user)}.current_cost") if amount is None else amount
        unexplained = current - sum(spend.values(), ZERO)
        if unexplained > max(NOISE_ABSOLUTE, current * UNEXPLAINED_RELATIVE):
            spend[UNKNOWN_MODEL] = spend.get(UNKNOWN_MODEL, ZERO) + unexplained
    return ClientRecord(
        total_budget=total_budget, days=days, created_at=created_at, spend=spend,
        reports_spend=raw_model_cost is not None or current is not None, last_updated=last_updated,
        zeroed=current == 0 and raw_model_cost == {},
    )


def _where(user: str) -> str:
    return f"user_dict[{user!r}]"


def parse_user_dict(user_dict: Any) -> dict[str, ClientRecord]:
    """Validate a whole user_dict; InvalidInput names the first bad user and key."""
    if not isinstance(user_dict, dict):
        raise InvalidInput("user_dict must be an object of user → record")
    return {validate_user_id(user): parse_record(user, record) for user, record in user_dict.items()}


# --- the baseline -------------------------------------------------------------------------------


@dataclass
class Baseline:
    """`UserBudget.hosted_model_cost` read: the models, and what the server knows of the client."""

    models: dict[str, Decimal] = field(default_factory=dict)
    last_updated: Decimal | None = None  # the client's last_updated_at last seen (None: not known)
    explicit: bool = False  # last_updated was stored by a save (else: get_budget served the period start)
    reset_for: Decimal | None = None  # the last_updated_at the last client reset was taken for
    recorded: dict[str, Decimal] = field(default_factory=dict)  # recorded by this protocol since the last reset

    @classmethod
    def read(cls, raw: Any, hosted_period_start: datetime | None, period_start: datetime) -> Baseline:
        raw = raw if isinstance(raw, dict) else {}
        client = raw.get(CLIENT_KEY) if isinstance(raw.get(CLIENT_KEY), dict) else {}
        baseline = cls(models={m: Decimal(v) for m, v in raw.items() if m != CLIENT_KEY})
        if "last_updated_at" in client:
            baseline.explicit = True
            baseline.last_updated = _decimal_or_none(client["last_updated_at"])
        elif hosted_period_start is not None:
            # get_budget served the period start as last_updated_at.
            baseline.last_updated = Decimal(repr(hosted_period_start.timestamp()))
        baseline.reset_for = _decimal_or_none(client.get("reset_for"))
        if hosted_period_start == period_start:  # a new server period already zeroed what was recorded
            baseline.recorded = {m: Decimal(v) for m, v in client.get("recorded", {}).items()}
        return baseline

    def dump(self) -> dict[str, Any]:
        raw: dict[str, Any] = {model: str(amount) for model, amount in self.models.items()}
        client: dict[str, Any] = {}
        if self.explicit:
            client["last_updated_at"] = None if self.last_updated is None else str(self.last_updated)
        if self.reset_for is not None:
            client["reset_for"] = str(self.reset_for)
        if self.recorded:
            client["recorded"] = {m: str(v) for m, v in self.recorded.items()}
        if client:
            raw[CLIENT_KEY] = client
        return raw


def _decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _same_time(a: Decimal | None, b: Decimal | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= EPOCH_NOISE


@dataclass
class Merge:
    """One user's merge: what to add, what to take away, and the new baseline."""

    growth: dict[str, Decimal]
    removed: dict[str, Decimal]
    baseline: Baseline
    reset: bool

    @property
    def delta(self) -> Decimal:
        return sum(self.growth.values(), ZERO) - sum(self.removed.values(), ZERO)


def merge_record(record: ClientRecord, baseline: Baseline, *, same_period: bool) -> Merge | None:
    """The rule for one user (module docstring); None when the record changes nothing."""
    seen, sent = baseline.last_updated, record.last_updated
    if sent is not None and seen is not None and sent < seen - EPOCH_NOISE:
        return None  # sent before the client's last reset
    moved = sent is not None and seen is not None and sent > seen + EPOCH_NOISE
    reset = moved or (
        record.zeroed and bool(baseline.models or baseline.recorded) and not _same_time(sent, baseline.reset_for)
    )
    models = {} if reset else dict(baseline.models)
    recorded = {} if reset else dict(baseline.recorded)
    removed = {m: v for m, v in baseline.recorded.items() if v > 0} if reset else {}
    growth: dict[str, Decimal] = {}
    for model, value in record.spend.items():
        before = models.get(model, ZERO)
        if value - before > _noise(before):
            growth[model] = value - before
            models[model] = value
            recorded[model] = recorded.get(model, ZERO) + value - before
    last_updated, explicit = baseline.last_updated, baseline.explicit
    if sent is not None and (seen is None or moved):
        last_updated, explicit = sent, True
    if not (growth or reset or not same_period or last_updated != baseline.last_updated):
        return None
    return Merge(
        growth=growth, removed=removed, reset=reset and bool(removed),
        baseline=Baseline(models=models, last_updated=last_updated, explicit=explicit,
                          reset_for=sent if reset and sent is not None else baseline.reset_for, recorded=recorded),
    )


# --- get_budget ---------------------------------------------------------------------------------


@retry_on_conflict
def hosted_budget_get(*, project: Project) -> dict[str, dict[str, Any]]:
    """Every user's record (money as Decimal); each user's baseline becomes what was served.

    Under the project's hosted lock: a merge must not record growth between the read and the new baselines.
    """
    reset_due_budgets(project=project)
    with transaction.atomic():
        _serialize(project)
        budgets = list(UserBudget.objects.filter(project=project).order_by("user_id"))
        costs: dict[int, dict[str, Decimal]] = defaultdict(dict)
        for budget_id, model, spend in ModelSpend.objects.filter(budget__project=project).values_list(
            "budget_id", "model", "spend"
        ):
            costs[budget_id][model] = spend
        records = {}
        changed: list[tuple[int, dict[str, Any], datetime]] = []
        for budget in budgets:
            records[budget.user_id] = selectors.budget_record(budget, costs[budget.pk])
            old = Baseline.read(budget.hosted_model_cost, budget.hosted_period_start, budget.period_start)
            # A new client counts from what it was served; what this protocol recorded stays known for a reset.
            served = Baseline(models=dict(costs[budget.pk]), recorded=old.recorded).dump()
            if (served, budget.period_start) != (budget.hosted_model_cost, budget.hosted_period_start):
                changed.append((budget.pk, served, budget.period_start))
        _write_baselines(changed)
    return records


# --- set_budget ---------------------------------------------------------------------------------


@dataclass
class MergeResult:
    created: int = 0
    updated: int = 0
    reset: int = 0
    recorded: int = 0


BUDGET_COLUMNS = (
    "id", "user_id", "total_budget", "duration", "duration_days", "period_start", "next_reset_at",
    "current_spend", "hosted_model_cost", "hosted_period_start", "created_at", "updated_at",
)


def _budget_rows(project: Project, users: Sequence[str], *, lock: bool = False) -> dict[str, UserBudget]:
    """The project's budgets of these users from one values() read: locked, as models; else as BudgetRows."""
    rows: dict[str, UserBudget] = {}
    # Chunked IN lookups (SQLite caps parameters); a big dict is most of the project: read it whole.
    whole = not lock and len(users) > LOOKUP_BATCH
    wanted = set(users) if whole else None
    chunks: Iterable[Sequence[str] | None] = [None] if whole else _chunks(sorted(users), LOOKUP_BATCH)
    for chunk in chunks:
        queryset = UserBudget.objects.filter(project=project)
        if chunk is not None:
            queryset = queryset.filter(user_id__in=chunk)
        if lock:
            queryset = queryset.select_for_update().order_by("id")
        for values in queryset.values_list(*(BUDGET_COLUMNS if lock else BudgetRow._fields)):
            if not lock:  # only compared (_may_change): a tuple is ten times cheaper than a model
                row = BudgetRow(*values)
                if wanted is None or row.user_id in wanted:
                    rows[row.user_id] = row  # type: ignore[assignment]
                continue
            budget = UserBudget(project_id=project.pk, **dict(zip(BUDGET_COLUMNS, values, strict=True)))
            rows[budget.user_id] = budget
    return rows


class BudgetRow(NamedTuple):
    """What _may_change compares: no more columns (each datetime read costs as much as a JSON one)."""

    id: int
    user_id: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    period_start: datetime
    hosted_model_cost: Any
    hosted_period_start: datetime | None


def _wanted_settings(record: ClientRecord) -> tuple[str, int | None]:
    return periods.duration_from_days(record.days) if record.days else ("none", None)


def _needs_update(budget: UserBudget, record: ClientRecord) -> bool:
    if abs(record.total_budget - budget.total_budget) > _noise(budget.total_budget):
        return True
    # Compared in days: a "days" budget of 30 and a monthly one both mean 30 to the client.
    return periods.duration_to_days(budget.duration, budget.duration_days) != record.days


def _may_change(budget: UserBudget | None, record: ClientRecord) -> bool:
    """Cheap and unlocked: False only when the record can change nothing (most users of most saves)."""
    if budget is None or _needs_update(budget, record):
        return True
    if not record.reports_spend:
        return False
    same_period = budget.hosted_period_start == budget.period_start
    baseline = Baseline.read(budget.hosted_model_cost, budget.hosted_period_start, budget.period_start)
    return merge_record(record, baseline, same_period=same_period) is not None


@retry_on_conflict
def hosted_budget_set(*, project: Project, user_dict: Any, actor: str) -> MergeResult:
    """Merge a client's user_dict into the project (see the module docstring); all or nothing.

    Users missing from the dict are left alone: the client only sends users it knows.
    """
    records = parse_user_dict(user_dict)
    reset_due_budgets(project=project)
    existing = _budget_rows(project, list(records))
    candidates = sorted(user for user, record in records.items() if _may_change(existing.get(user), record))
    result = MergeResult()
    if not candidates:
        return result
    with transaction.atomic():
        _serialize(project)
        project = Project.objects.get(pk=project.pk)
        writes = Writes(project=project, at=utcnow(), actor=actor)
        # Only users the unlocked read found are read again, under their locks. The others are
        # inserted, and the insert finds any created meanwhile: a first save is inserts only.
        budgets = _budget_rows(project, [user for user in candidates if user in existing], lock=True)
        taken = _create_budgets(project, [user for user in candidates if user not in budgets], records, writes)
        result.created = writes.created
        budgets.update(taken)
        result.updated = _update_budgets(project, budgets, records, writes)
        result.reset = _merge_spend(project, budgets, records, writes)
        result.recorded = len(writes.events)
        writes.flush()
    return result


def _serialize(project: Project) -> None:
    """One hosted merge or load of a project at a time, until the transaction ends.

    The project row's lock, taken first like every writer does (cost_record, reservations,
    sweeps): project, then budget rows, so a merge and native calls queue instead of deadlocking.
    """
    lock_project(project)


class SpendAdded(NamedTuple):
    """What a merge added to one budget's spend (negative for a reset), for the alert check."""

    budget_id: int
    user_id: str
    period_start: datetime
    limit: Decimal
    before: Decimal
    delta: Decimal


EVENT_COLUMNS = ("project_id", "budget_id", "user_id", "model", "cost", "source", "created_at")
AUDIT_COLUMNS = ("project_id", "budget_id", "user_id", "action", "actor", "before", "after")


@dataclass
class Writes:
    """What a merge writes besides its budget rows, gathered so that each table gets one bulk write."""

    project: Project
    at: datetime
    actor: str
    created: int = 0
    events: list[tuple[Any, ...]] = field(default_factory=list)  # EVENT_COLUMNS
    audits: list[tuple[Any, ...]] = field(default_factory=list)  # AUDIT_COLUMNS
    new_model_spend: list[tuple[int, str, Decimal]] = field(default_factory=list)  # budgets created by this merge
    added: list[SpendAdded] = field(default_factory=list)

    def audit(self, budget_id: int, user_id: str, action: str, before: dict | None, after: dict | None) -> None:
        self.audits.append((self.project.pk, budget_id, user_id, action, self.actor, before, after))

    def spend(self, budget_id: int, user_id: str, growth: dict[str, Decimal]) -> None:
        """One ledger event per model the client's cost grew for."""
        self.events += [(self.project.pk, budget_id, user_id, model, amount, CostEvent.Source.HOSTED, self.at)
                        for model, amount in sorted(growth.items())]

    def flush(self) -> None:
        """Ledger rows and their daily rollups, the project's spend, alerts and audit rows."""
        project = self.project
        _insert(ModelSpend, ("budget_id", "model", "spend"), self.new_model_spend)
        if self.events:
            events = _instances(CostEvent, EVENT_COLUMNS, self.events)
            if connection.vendor == "postgresql":
                _insert(CostEvent, EVENT_COLUMNS, self.events)
            else:
                CostEvent.objects.bulk_create(events, batch_size=WRITE_BATCH)
            rollups_add_events(project, events)
        total = sum((added.delta for added in self.added), ZERO)
        if total:
            Project.objects.filter(pk=project.pk).update(
                current_spend=Greatest(F("current_spend") + money(total), money(ZERO)))
        if self.added:
            _alert(project, self.added, total)
        if connection.vendor == "postgresql":
            _insert(AuditLog, AUDIT_COLUMNS, self.audits)
        else:
            write_audits([AuditLog(**dict(zip(AUDIT_COLUMNS, row, strict=True))) for row in self.audits])


class NewBudget(NamedTuple):
    """A budget this merge creates. Its baseline is empty, so its first record's merge is known
    before the insert: the row is written once, with its spend and its new baseline."""

    user_id: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    period_start: datetime
    next_reset_at: datetime | None
    created_at: datetime
    merge: Merge | None  # None: the record says nothing about spend
    current_spend: Decimal = ZERO  # before the merge: what the budget_create audit shows


BUDGET_INSERT_COLUMNS = (
    "project_id", "user_id", "total_budget", "duration", "duration_days", "period_start", "next_reset_at",
    "current_spend", "hosted_model_cost", "hosted_period_start", "created_at", "updated_at",
)


def _create_budgets(
    project: Project, users: list[str], records: dict[str, ClientRecord], writes: Writes,
) -> dict[str, UserBudget]:
    """Insert these users' budgets, merged; return those someone else created meanwhile (locked, still to merge)."""
    if not users:
        return {}
    at = writes.at
    new: dict[str, NewBudget] = {}
    period_cache: dict[tuple, periods.Period] = {}
    for user in users:
        record = records[user]
        duration, days = _wanted_settings(record)
        anchor = min(record.created_at, at) if record.created_at is not None else at
        # Calendar periods depend only on the duration: computed once per group.
        key = (duration, days, anchor if duration in ("none", "days") else None)
        if key not in period_cache:
            period_cache[key] = periods.period_containing(duration, project.timezone, at, days=days, anchor=anchor)
        period = period_cache[key]
        merge = merge_record(record, Baseline(), same_period=False) if record.reports_spend else None
        new[user] = NewBudget(user, record.total_budget, duration, days, period.start, period.next_reset, anchor,
                              merge)
    rows = [
        (project.pk, user, budget.total_budget, budget.duration, budget.duration_days, budget.period_start,
         budget.next_reset_at, ZERO if budget.merge is None else budget.merge.delta,
         {} if budget.merge is None else budget.merge.baseline.dump(),
         None if budget.merge is None else budget.period_start, budget.created_at, at)
        for user, budget in new.items()
    ]
    # A native budget_set may create the same user meanwhile (it does not take the project lock).
    inserted = _insert(UserBudget, BUDGET_INSERT_COLUMNS, rows, conflicts=("project_id", "user_id"))
    if connection.vendor == "postgresql":
        ours = {user_id: pk for pk, _, user_id in inserted}
        taken = _budget_rows(project, [user for user in users if user not in ours], lock=True)
    else:
        read = _budget_rows(project, users, lock=True)
        ours = {user: budget.pk for user, budget in read.items() if budget.updated_at == at}
        taken = {user: budget for user, budget in read.items() if user not in ours}
    snapshots: dict[tuple, dict[str, Any]] = {}  # one dict per kind of budget: its JSON is written once
    for user, pk in ours.items():
        budget = new[user]
        kind = (str(budget.total_budget), budget.duration, budget.duration_days, budget.period_start,
                budget.next_reset_at)
        if kind not in snapshots:
            snapshots[kind] = budget_snapshot(budget)
        writes.audit(pk, user, "budget_create", None, snapshots[kind])
        if budget.merge is not None:
            writes.spend(pk, user, budget.merge.growth)
            writes.new_model_spend += [(pk, model, amount) for model, amount in budget.merge.growth.items()]
            writes.added.append(SpendAdded(pk, user, budget.period_start, budget.total_budget, ZERO,
                                           budget.merge.delta))
    writes.created = len(ours)
    return taken


def _update_budgets(
    project: Project, budgets: dict[str, UserBudget], records: dict[str, ClientRecord], writes: Writes,
) -> int:
    """Replace changed budgets (rare: the client changed a total or a duration); spend is kept."""
    changed = []
    at = writes.at
    for user, budget in budgets.items():
        record = records[user]
        if not _needs_update(budget, record):
            continue
        before = budget_snapshot(budget)
        duration, days = _wanted_settings(record)
        budget.total_budget = record.total_budget
        if (duration, days) != (budget.duration, budget.duration_days):
            period = periods.period_containing(duration, project.timezone, at, days=days,
                                               anchor=record.created_at or budget.period_start)
            budget.duration, budget.duration_days = duration, days
            budget.period_start, budget.next_reset_at = period.start, period.next_reset
        budget.updated_at = at
        changed.append(budget)
        writes.audit(budget.pk, user, "budget_update", before, budget_snapshot(budget))
    UserBudget.objects.bulk_update(
        changed, ["total_budget", "duration", "duration_days", "period_start", "next_reset_at", "updated_at"],
        batch_size=WRITE_BATCH,
    )
    return len(changed)


def _merge_spend(
    project: Project, budgets: dict[str, UserBudget], records: dict[str, ClientRecord], writes: Writes,
) -> int:
    """Merge the records of budgets that were there before this save; returns how many were client resets."""
    merges: dict[int, tuple[UserBudget, Merge]] = {}
    resets = 0
    for user, budget in budgets.items():
        record = records[user]
        if not record.reports_spend:
            continue
        same_period = budget.hosted_period_start == budget.period_start
        baseline = Baseline.read(budget.hosted_model_cost, budget.hosted_period_start, budget.period_start)
        merge = merge_record(record, baseline, same_period=same_period)
        if merge is None:
            continue
        merges[budget.pk] = (budget, merge)
        writes.spend(budget.pk, user, merge.growth)
        delta = merge.delta
        writes.added.append(SpendAdded(budget.pk, user, budget.period_start, budget.total_budget,
                                       budget.current_spend, delta))
        if merge.reset:
            after = budget_snapshot(budget) | {"current_spend": str(max(budget.current_spend + delta, ZERO))}
            writes.audit(budget.pk, user, "budget_reset_hosted",
                         budget_snapshot(budget) | {"removed": {m: str(v) for m, v in merge.removed.items()}}, after)
            resets += 1
    if merges:
        _apply_spend(merges, writes.at)
    return resets


def _apply_spend(merges: dict[int, tuple[UserBudget, Merge]], at: datetime) -> None:
    """Spend deltas, per-model spend and the new baselines of existing budgets, set-based."""
    model_deltas = [
        (budget_id, model, amount)
        for budget_id, (_, merge) in merges.items()
        for model, amount in _model_deltas(merge).items() if amount
    ]
    rows = [(budget_id, merge.delta, merge.baseline.dump(), budget.period_start)
            for budget_id, (budget, merge) in merges.items()]
    if connection.vendor == "postgresql":
        _pg_update_budgets(rows, at)
        _pg_upsert_model_spend(model_deltas)
    else:  # embedded SQLite: small projects, one statement per row is fine
        for budget_id, delta, baseline, period_start in rows:
            fields: dict[str, Any] = {"hosted_model_cost": baseline, "hosted_period_start": period_start}
            if delta:
                fields.update(current_spend=Greatest(F("current_spend") + money(delta), money(ZERO)), updated_at=at)
            UserBudget.objects.filter(pk=budget_id).update(**fields)
        for budget_id, model, amount in model_deltas:
            spend = Greatest(F("spend") + money(amount), money(ZERO))
            if not ModelSpend.objects.filter(budget_id=budget_id, model=model).update(spend=spend) and amount > 0:
                ModelSpend.objects.create(budget_id=budget_id, model=model, spend=amount)
    reset_ids = [budget_id for budget_id, (_, merge) in merges.items() if merge.reset]
    if reset_ids:  # what the client's reset took to zero and no native call ever used
        ModelSpend.objects.filter(budget_id__in=reset_ids, spend__lte=0, prompt_tokens=0,
                                  completion_tokens=0).delete()


def _model_deltas(merge: Merge) -> dict[str, Decimal]:
    deltas = dict(merge.growth)
    for model, amount in merge.removed.items():
        deltas[model] = deltas.get(model, ZERO) - amount
    return deltas


def _pg_update_budgets(rows: list[tuple[int, Decimal, dict, datetime]], at: datetime) -> None:
    stage = _pg_stage("id bigint, delta numeric, baseline jsonb, period_start timestamptz",
                      ((pk, delta, json.dumps(baseline), start) for pk, delta, baseline, start in rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {UserBudget._meta.db_table} AS b SET current_spend = GREATEST(b.current_spend + v.delta, 0), "
            "hosted_model_cost = v.baseline, hosted_period_start = v.period_start, "
            "updated_at = CASE WHEN v.delta <> 0 THEN %s ELSE b.updated_at END "
            f"FROM {stage} AS v WHERE b.id = v.id",
            [at],
        )


def _pg_upsert_model_spend(deltas: list[tuple[int, str, Decimal]]) -> None:
    if not deltas:
        return
    table = ModelSpend._meta.db_table
    stage = _pg_stage("budget_id bigint, model text, delta numeric", deltas)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} AS ms (budget_id, model, spend, prompt_tokens, completion_tokens) "
            f"SELECT budget_id, model, delta, 0, 0 FROM {stage} WHERE delta > 0 ORDER BY budget_id, model "
            "ON CONFLICT (budget_id, model) DO UPDATE SET spend = ms.spend + EXCLUDED.spend"
        )
        # What a reset takes away was added to that row in this period: the row is there.
        cursor.execute(
            f"UPDATE {table} AS ms SET spend = GREATEST(ms.spend + v.delta, 0) FROM {stage} AS v "
            "WHERE v.delta < 0 AND ms.budget_id = v.budget_id AND ms.model = v.model"
        )


def _alert(project: Project, added: list[SpendAdded], total: Decimal) -> None:
    """Alert rows for thresholds the merge carried a user or the project across (a cheap check first)."""
    thresholds = alerts.thresholds_of(project)
    if not thresholds:
        return
    project.refresh_from_db(fields=["current_spend", "period_start"])
    for change in added:
        after = max(change.before + change.delta, ZERO)
        if change.delta > 0 and alerts.crossed_thresholds(before=change.before, after=after, limit=change.limit,
                                                          thresholds=thresholds):
            budget = UserBudget(pk=change.budget_id, project=project, user_id=change.user_id,
                                total_budget=change.limit, current_spend=after, period_start=change.period_start)
            # The project's own crossing is checked once below, over the whole merge.
            alerts.spend_recorded(project=_without_cap(project), budget=budget, amount=change.delta)
    if total > 0 and alerts.crossed_thresholds(before=project.current_spend - total, after=project.current_spend,
                                              limit=project.max_budget, thresholds=thresholds):
        # A budget of 0 crosses no user threshold: only the project's are checked.
        nobody = UserBudget(project=project, user_id="", total_budget=ZERO, current_spend=ZERO,
                            period_start=project.period_start)
        alerts.spend_recorded(project=project, budget=nobody, amount=total)


def _without_cap(project: Project) -> Project:
    copy = Project(pk=project.pk, name=project.name, alert_thresholds=project.alert_thresholds,
                   alert_webhook_url=project.alert_webhook_url, alert_email=project.alert_email,
                   current_spend=project.current_spend, period_start=project.period_start, max_budget=None)
    return copy


# --- PostgreSQL: thousands of rows through COPY, not thousands of query parameters ---------------

_stage_count = 0


def _pg_stage(columns: str, rows: Iterable[Sequence[Any]]) -> str:
    """A temporary table with `columns` ("name type, ..."), filled with COPY; dropped at commit."""
    global _stage_count
    _stage_count += 1
    name = f"hosted_stage_{_stage_count}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE {name} ({columns}) ON COMMIT DROP")
        with cursor.cursor.copy(f"COPY {name} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return name


def _insert(
    model: type[Any], columns: Sequence[str], rows: Sequence[Sequence[Any]], *, conflicts: Sequence[str] = (),
) -> list[tuple]:
    """Insert rows of `columns` (attnames); every other column takes its model default, evaluated once.

    On PostgreSQL through COPY; with `conflicts` (the unique columns) rows that conflict are
    skipped and (id, *conflicts) of the inserted rows are returned. Elsewhere bulk_create.
    """
    if not rows:
        return []
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**dict(zip(columns, row, strict=True))) for row in rows],
                                  batch_size=WRITE_BATCH, ignore_conflicts=bool(conflicts))
        return []
    by_name = {f.attname: f for f in model._meta.concrete_fields if not f.primary_key}
    defaulted = [f for name, f in by_name.items() if name not in columns]
    texts: dict[int, tuple[Any, str | None]] = {}  # JSON by object: a value shared by many rows is written once

    def json_text(value: Any) -> str | None:
        if value is None:
            return None
        if id(value) not in texts:
            texts[id(value)] = (value, _json_text(value))  # the value kept: its id stays its own
        return texts[id(value)][1]

    # The values are plain for psycopg (Django's get_db_prep_save per value costs more than the
    # rest of the insert), but JSON, which COPY takes as its text.
    defaults = tuple(json_text(f.get_default()) if isinstance(f, JSONField) else f.get_default() for f in defaulted)
    json_slots = [index for index, name in enumerate(columns) if isinstance(by_name[name], JSONField)]

    def values(row: Sequence[Any]) -> tuple[Any, ...]:
        if json_slots:
            row = list(row)
            for index in json_slots:
                row[index] = json_text(row[index])
        return (*row, *defaults)

    quote = connection.ops.quote_name
    names = ", ".join(quote(f.column) for f in [*(by_name[name] for name in columns), *defaulted])
    table = quote(model._meta.db_table)
    with connection.cursor() as cursor:
        if not conflicts:
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(values(row))
            return []
        unique = ", ".join(quote(by_name[name].column) for name in conflicts)
        stage = f"hosted_stage_{model._meta.model_name}"
        cursor.execute(f"CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA")
        with cursor.cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(values(row))
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
                       f"ON CONFLICT ({unique}) DO NOTHING RETURNING id, {unique}")
        inserted = cursor.fetchall()
        cursor.execute(f"DROP TABLE {stage}")
        return inserted


def _instances(model: type[Any], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Unsaved instances of rows, built positionally from defaults evaluated once (a third of the
    keyword __init__'s cost). The defaults are shared between instances: read them, do not mutate."""
    fields = model._meta.concrete_fields
    slot = {f.attname: index for index, f in enumerate(fields)}
    template = [None if f.primary_key else f.get_default() for f in fields]
    slots = [slot[name] for name in columns]
    instances = []
    for row in rows:
        values = template.copy()
        for index, value in zip(slots, row, strict=True):
            values[index] = value
        instances.append(model(*values))
    return instances


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)  # the C encoder: the values here are plain (str, numbers, dicts)
    except TypeError:
        return json.dumps(value, cls=DjangoJSONEncoder)


def _write_baselines(rows: list[tuple[int, dict[str, Any], datetime]]) -> None:
    if not rows:
        return
    if connection.vendor == "postgresql":
        stage = _pg_stage("id bigint, baseline jsonb, period_start timestamptz",
                          ((pk, json.dumps(baseline), start) for pk, baseline, start in rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {UserBudget._meta.db_table} AS b SET hosted_model_cost = v.baseline, "
                f"hosted_period_start = v.period_start FROM {stage} AS v WHERE b.id = v.id"
            )
        return
    for budget_id, baseline, period_start in rows:
        UserBudget.objects.filter(pk=budget_id).update(hosted_model_cost=baseline, hosted_period_start=period_start)
