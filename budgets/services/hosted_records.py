"""LiteLLM's hosted protocol, what a save compares: the client's user_dict read and validated whole
before anything is written, and the project's budget rows it is compared with.

services.hosted merges one with the other; the rule for what a record means is in its docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from ..base.errors import InvalidInput
from ..base.money import MONEY_MAX, MONEY_PLACES, stored, to_money
from ..domain import periods
from ..domain.usage import validate_model
from ..models import Project, UserBudget
from .common import validate_user_id

UNKNOWN_MODEL = "unknown"
# Unix seconds up to 9999-12-31; anything else is not a time LiteLLM's client sent.
MAX_TIMESTAMP = 253402300799
# The client adds costs as floats: differences this small are rounding, not spend.
NOISE_ABSOLUTE = Decimal("1e-10")
UNEXPLAINED_RELATIVE = Decimal("1e-9")  # current_cost vs the sum of model_cost: more float sums
ZERO = Decimal(0)
LOOKUP_BATCH = 1000


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


# --- the budget rows a save is compared with ----------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


BUDGET_COLUMNS = (
    "id", "user_id", "total_budget", "duration", "duration_days", "period_start", "next_reset_at",
    "current_spend", "hosted_model_cost", "hosted_period_start", "created_at", "updated_at",
)


def budget_rows(project: Project, users: Sequence[str], *, lock: bool = False) -> dict[str, UserBudget]:
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
