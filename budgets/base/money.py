"""Money in and out: Decimal, finite, non-negative, never float arithmetic."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from .errors import InvalidInput

# 12 places, as stored (models.MONEY); a trillion dollars is past any real budget.
MONEY_PLACES = Decimal("0.000000000001")
MONEY_MAX = Decimal(1000000000000)


def to_money(value: Any, field: str = "amount", *, exact: bool = False) -> Decimal:
    """Parse an amount of dollars; raise InvalidInput for anything not a finite, non-negative number.

    Money is kept to 12 decimal places. An amount that would round to $0 although it is not 0
    (1e-30) is refused everywhere. With `exact` (a budget, a cap: what a person types) an amount
    with more places is refused too; without it (a cost: LiteLLM computes costs in floating point,
    so 0.00045 arrives as 0.00045000000000000004) the caller rounds it with `stored`.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidInput(f"{field} must be a non-negative number")
    if isinstance(value, float):
        # A JSON number arrives as float: its shortest repr is what the sender wrote.
        value = repr(value)
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, TypeError, ValueError):
        raise InvalidInput(f"{field} must be a non-negative number") from None
    if not amount.is_finite():
        raise InvalidInput(f"{field} must be a finite number")
    if amount < 0:
        raise InvalidInput(f"{field} must be a non-negative number")
    if amount >= MONEY_MAX:
        raise InvalidInput(f"{field} is too large")
    return check_precision(amount, field, exact=exact)


def check_precision(amount: Decimal, field: str, *, exact: bool = False) -> Decimal:
    """`amount` (finite, in range) if the 12 places money keeps hold it; see to_money."""
    rounded = amount.quantize(MONEY_PLACES)  # below MONEY_MAX: 24 digits, within the context's 28
    if rounded == amount:
        return amount
    if exact:
        raise InvalidInput(f"{field} has more than 12 decimal places, the precision money is kept to (got {amount})")
    if not rounded:
        raise InvalidInput(f"{field} is below $0.000000000001, the smallest amount kept (got {amount})")
    return amount


def to_tokens(value: Any, field: str) -> int:
    """Parse a token count: a non-negative whole number (10.0 is one: JSON Schema's integer allows it)."""
    # The adjusted() bound keeps int() from expanding 1E+100000000.
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value() \
            and value.adjusted() <= 15:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidInput(f"{field} must be a non-negative integer")
    if value < 0:
        raise InvalidInput(f"{field} must be a non-negative integer")
    if value > 10**12:
        raise InvalidInput(f"{field} is too large")
    return value


def stored(amount: Decimal) -> Decimal:
    """The amount as the database keeps it (12 places)."""
    return amount.quantize(MONEY_PLACES)


CENT = Decimal("0.01")
DASH = "—"


def format_dollars(value: Any) -> str:
    """The console's one money format: $1,234.56 from a dollar up, 3 significant digits below ($0.0142, $0.000322).

    Never scientific notation; zero is $0.00. Cards, tables, chart tooltips and chart axes all use it;
    the CSV export and the JSON API keep the exact amounts.
    """
    if value is None or value == "":
        return DASH
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return DASH
    if not amount.is_finite():
        return DASH
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if amount == 0:
        return "$0.00"
    if amount < 1:
        rounded = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 2), ROUND_HALF_EVEN)
        if rounded < 1:  # 0.9996 rounds up to a dollar: shown as $1.00 below
            return f"{sign}${format(rounded, 'f')}"
    return f"{sign}${amount.quantize(CENT, ROUND_HALF_EVEN):,f}"
