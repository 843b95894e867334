"""LiteLLM's hosted protocol: the client's user_dict read and validated whole, before anything is written.

The edge (api/hosted.py) parses a save's body with `parse_user_dict` and hands the records to
services.hosted, which merges them (the rule for what a record means is in its docstring).
Shape, syntax and precision are checked here, once; the merge never sees a raw dict.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..base.errors import InvalidInput
from ..base.money import MONEY_MAX, MONEY_PLACES, stored, to_money
from ..base.validation import validate_user_id
from . import periods
from .usage import validate_model

UNKNOWN_MODEL = "unknown"
# Unix seconds up to 9999-12-31; anything else is not a time LiteLLM's client sent.
MAX_TIMESTAMP = 253402300799
# The client adds costs as floats: differences this small are rounding, not spend.
NOISE_ABSOLUTE = Decimal("1e-10")
UNEXPLAINED_RELATIVE = Decimal("1e-9")  # current_cost vs the sum of model_cost: more float sums
ZERO = Decimal(0)


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
            rounded = value.quantize(MONEY_PLACES)
            # 1e-30 would round to $0: _amount refuses it (to_money); other places are float noise.
            return rounded if rounded or not value else None
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
