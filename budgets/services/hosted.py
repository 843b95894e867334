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

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils.timezone import now as utcnow

from ..domain import periods
from ..domain.codec import dumps
from ..domain.litellm_records import NOISE_ABSOLUTE, ClientRecord
from ..models import AuditLog, ModelSpend, Project, UserBudget
from ..selectors.budgets import budget_record
from . import ledger
from .admission import lock_project, retry_on_conflict
from .audit import budget_snapshot
from .hosted_records import CLIENT_KEY, BudgetRow, budget_rows, compare_rows, serve_json
from .resets import reset_due_budgets

__all__ = ["hosted_budget_get", "hosted_budget_json", "hosted_budget_set", "merge_record"]

NOISE_RELATIVE = Decimal("1e-12")  # the client adds costs as floats: this much is rounding, not spend
# last_updated_at goes through a float and Decimal(repr()) on the way: a millisecond is not a reset.
EPOCH_NOISE = Decimal("0.001")
WRITE_BATCH = 1000
ZERO = Decimal(0)


def _noise(reference: Decimal) -> Decimal:
    return max(NOISE_ABSOLUTE, abs(reference) * NOISE_RELATIVE)


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
        start = None if hosted_period_start is None else Decimal(repr(hosted_period_start.timestamp()))
        return cls.of(raw, start, same_period=hosted_period_start == period_start)

    @classmethod
    def of(cls, raw: Any, hosted_start: Decimal | None, *, same_period: bool) -> Baseline:
        """From the stored JSON, hosted_period_start in Unix seconds, and whether it is the budget's period start."""
        raw = raw if isinstance(raw, dict) else {}
        client = raw.get(CLIENT_KEY) if isinstance(raw.get(CLIENT_KEY), dict) else {}
        baseline = cls(models={m: Decimal(v) for m, v in raw.items() if m != CLIENT_KEY})
        if "last_updated_at" in client:
            baseline.explicit = True
            baseline.last_updated = _decimal_or_none(client["last_updated_at"])
        elif hosted_start is not None:
            # get_budget served the period start as last_updated_at.
            baseline.last_updated = hosted_start
        baseline.reset_for = _decimal_or_none(client.get("reset_for"))
        if same_period:  # a new server period already zeroed what was recorded
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
        changed: list[ledger.BudgetChange] = []
        for budget in budgets:
            records[budget.user_id] = budget_record(budget, costs[budget.pk])
            old = Baseline.read(budget.hosted_model_cost, budget.hosted_period_start, budget.period_start)
            # A new client counts from what it was served; what this protocol recorded stays known for a reset.
            served = Baseline(models=dict(costs[budget.pk]), recorded=old.recorded).dump()
            if (served, budget.period_start) != (budget.hosted_model_cost, budget.hosted_period_start):
                changed.append(ledger.BudgetChange(budget.pk, ZERO, served, budget.period_start))
        ledger.budgets_update(changed, utcnow())
    return records


def hosted_budget_json(*, project: Project) -> str:
    """get_budget's `data` as JSON text: what hosted_budget_get serves, with the same baselines written.

    On PostgreSQL one statement does it all (hosted_records.SERVE): the new baselines are computed and
    written only where they differ, and the JSON is built by the database, so no budget becomes a Python
    object (a 10k-user project: a few tens of milliseconds instead of a second). SQLite: the services above.
    """
    if connection.vendor != "postgresql":
        return dumps(hosted_budget_get(project=project))
    return _serve(project)


@retry_on_conflict
def _serve(project: Project) -> str:
    reset_due_budgets(project=project)
    with transaction.atomic():
        _serialize(project)
        return serve_json(project)


# --- set_budget ---------------------------------------------------------------------------------


@dataclass
class MergeResult:
    created: int = 0
    updated: int = 0
    reset: int = 0
    recorded: int = 0


def _wanted_settings(record: ClientRecord) -> tuple[str, int | None]:
    return periods.duration_from_days(record.days) if record.days else ("none", None)


def _needs_update(budget: UserBudget | BudgetRow, record: ClientRecord) -> bool:
    if abs(record.total_budget - budget.total_budget) > _noise(budget.total_budget):
        return True
    # Compared in days: a "days" budget of 30 and a monthly one both mean 30 to the client.
    return periods.duration_to_days(budget.duration, budget.duration_days) != record.days


def _may_change(budget: BudgetRow | None, record: ClientRecord) -> bool:
    """Cheap and unlocked: False only when the record can change nothing (most users of most saves)."""
    if budget is None or _needs_update(budget, record):
        return True
    if not record.reports_spend:
        return False
    baseline = Baseline.of(budget.hosted_model_cost, budget.hosted_start, same_period=budget.same_period)
    return merge_record(record, baseline, same_period=budget.same_period) is not None


@retry_on_conflict
def hosted_budget_set(*, project: Project, records: dict[str, ClientRecord], actor: str) -> MergeResult:
    """Merge a client's records (its user_dict, parsed by domain.litellm_records) into the project
    (see the module docstring); all or nothing.

    Users missing from the dict are left alone: the client only sends users it knows.
    """
    reset_due_budgets(project=project)
    existing = compare_rows(project, list(records))
    candidates = sorted(user for user, record in records.items() if _may_change(existing.get(user), record))
    result = MergeResult()
    if not candidates:
        return result
    with transaction.atomic():
        _serialize(project)
        project = Project.objects.get(pk=project.pk)
        writes = Writes(ledger.Batch(project=project, at=utcnow()), actor=actor)
        # Only users the unlocked read found are read again, under their locks. The others are
        # inserted, and the insert finds any created meanwhile: a first save is inserts only.
        budgets = budget_rows(project, [user for user in candidates if user in existing], lock=True)
        taken = _create_budgets(project, [user for user in candidates if user not in budgets], records, writes)
        result.created = writes.created
        budgets.update(taken)
        result.updated = _update_budgets(project, budgets, records, writes)
        result.reset = _merge_spend(project, budgets, records, writes)
        result.recorded = len(writes.batch.events)
        writes.flush()
    return result


def _serialize(project: Project) -> None:
    """One hosted merge or load of a project at a time, until the transaction ends.

    The project row's lock, taken first like every writer does (cost_record, reservations,
    sweeps): project, then budget rows, so a merge and native calls queue instead of deadlocking.
    """
    lock_project(project)


AUDIT_COLUMNS = ("project_id", "budget_id", "user_id", "action", "actor", "before", "after")


@dataclass
class Writes:
    """What a merge writes: the ledger's batch (services.ledger.merge) and the audit rows."""

    batch: ledger.Batch
    actor: str
    created: int = 0
    audits: list[tuple[Any, ...]] = field(default_factory=list)  # AUDIT_COLUMNS

    @property
    def at(self) -> datetime:
        return self.batch.at

    def audit(self, budget_id: int, user_id: str, action: str, before: dict | None, after: dict | None) -> None:
        self.audits.append((self.batch.project.pk, budget_id, user_id, action, self.actor, before, after))

    def flush(self) -> None:
        ledger.merge(self.batch)
        ledger.insert_rows(AuditLog, AUDIT_COLUMNS, self.audits)


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
    inserted = ledger.insert_rows(UserBudget, BUDGET_INSERT_COLUMNS, rows, conflicts=("project_id", "user_id"))
    if inserted is not None:  # PostgreSQL says which rows went in
        ours = {user_id: pk for pk, _, user_id in inserted}
        taken = budget_rows(project, [user for user in users if user not in ours], lock=True)
    else:
        read = budget_rows(project, users, lock=True)
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
            writes.batch.spend(pk, user, budget.merge.growth)
            writes.batch.new_model_spend += [(pk, model, amount) for model, amount in budget.merge.growth.items()]
            writes.batch.added.append(ledger.SpendAdded(pk, user, budget.period_start, budget.total_budget, ZERO,
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
    batch = writes.batch
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
        delta = merge.delta
        batch.spend(budget.pk, user, merge.growth)
        batch.budgets.append(ledger.BudgetChange(budget.pk, delta, merge.baseline.dump(), budget.period_start))
        batch.model_deltas += [(budget.pk, model, amount) for model, amount in _model_deltas(merge).items() if amount]
        batch.added.append(ledger.SpendAdded(budget.pk, user, budget.period_start, budget.total_budget,
                                             budget.current_spend, delta))
        if merge.reset:
            batch.reset_ids.append(budget.pk)
            after = budget_snapshot(budget) | {"current_spend": str(max(budget.current_spend + delta, ZERO))}
            writes.audit(budget.pk, user, "budget_reset_hosted",
                         budget_snapshot(budget) | {"removed": {m: str(v) for m, v in merge.removed.items()}}, after)
            resets += 1
    return resets


def _model_deltas(merge: Merge) -> dict[str, Decimal]:
    deltas = dict(merge.growth)
    for model, amount in merge.removed.items():
        deltas[model] = deltas.get(model, ZERO) - amount
    return deltas


