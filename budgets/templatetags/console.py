"""Template filters of the console: dollars with readable precision, percentages, durations."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django import template

from ..base.money import DASH, format_dollars  # the one money format, re-exported for the templates

register = template.Library()


NICE_STEPS = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))
AXIS_TICKS = 5


def money_ticks(top: Any) -> dict[str, list[str]] | None:
    """Tick values (exact decimal strings) and their labels in the one money format, from 0 past `top`."""
    top = Decimal(str(top)) if top not in (None, "") else Decimal(0)
    if not top.is_finite() or top <= 0:
        return None
    rough = top / AXIS_TICKS
    magnitude = Decimal(1).scaleb(rough.adjusted())
    step = next(n * magnitude for n in NICE_STEPS if n * magnitude >= rough)
    count = int((top / step).to_integral_value(rounding="ROUND_CEILING"))
    values = [step * n for n in range(count + 1)]
    return {"vals": [format(v.normalize(), "f") for v in values], "text": [format_dollars(v) for v in values]}


def format_percent(value: Any) -> str:
    if value is None or value == "":
        return DASH
    return f"{Decimal(value).quantize(Decimal('0.1'), ROUND_HALF_EVEN)}%"


@register.filter
def dollars(value: Any) -> str:
    return format_dollars(value)


@register.filter
def percent(value: Any) -> str:
    return format_percent(value)


@register.filter
def at_least_zero(value: Any) -> Any:
    """An amount left, never below zero (as the API's `remaining`); `over_by` says by how much it was passed."""
    if value is None or value == "":
        return value
    return max(Decimal(value), Decimal(0))


@register.filter
def over_by(value: Any) -> Decimal:
    """How far below zero an amount left is (0 when it is not)."""
    if value is None or value == "":
        return Decimal(0)
    return max(-Decimal(value), Decimal(0))


@register.filter
def bar_width(value: Any) -> str:
    """A utilisation as a CSS width (0–100, as a plain number string)."""
    if value is None or value == "":
        return "0"
    return str(min(max(Decimal(value), Decimal(0)), Decimal(100)).quantize(Decimal("0.1")))


@register.filter
def use_class(value: Any) -> str:
    """Bootstrap colour of a utilisation: green, amber from 80%, red from 100%."""
    if value is None or value == "":
        return "bg-secondary"
    used = Decimal(value)
    if used >= 100:
        return "bg-danger"
    if used >= 80:
        return "bg-warning"
    return "bg-success"


@register.filter
def duration_label(obj: Any) -> str:
    """A budget's (or project's) reset period in words."""
    if getattr(obj, "duration", None) == "days":
        days = obj.duration_days
        return "Every day" if days == 1 else f"Every {days} days"
    return obj.get_duration_display()


@register.filter
def per_million(price: Any) -> str:
    """A per-token price as dollars per million tokens."""
    if price is None or price == "":
        return DASH
    return format_dollars(Decimal(price) * 1_000_000)


@register.filter
def in_unit(value: Any, unit: str) -> str:
    """A limit's figure in its unit: dollars, or a whole number of tokens or requests (1,500 tokens)."""
    if value is None or value == "":
        return DASH
    if unit == "usd":
        return format_dollars(value)
    count = int(Decimal(value).to_integral_value())
    word = unit if count != 1 else unit.rstrip("s")
    return f"{count:,} {word}"
