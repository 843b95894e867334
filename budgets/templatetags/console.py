"""Template filters of the console: dollars with readable precision, percentages, durations."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()

CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")
DASH = "—"


def format_dollars(value: Any) -> str:
    """$1,234.56 for dollars, $0.0123 for cents, three significant digits below a cent ($0.000150)."""
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
    if amount >= 1:
        text = f"{amount.quantize(CENT, ROUND_HALF_EVEN):,}"
    elif amount >= CENT:
        text = str(amount.quantize(FOUR_PLACES, ROUND_HALF_EVEN))
        # 0.5000 → 0.50, 0.1230 → 0.123; 0.0123 stays.
        while text.endswith("0") and len(text.partition(".")[2]) > 2:
            text = text[:-1]
    else:
        # Sub-cent amounts (one call's cost): keep three significant digits.
        exponent = amount.adjusted() - 2
        text = format(amount.quantize(Decimal(1).scaleb(exponent), ROUND_HALF_EVEN), "f")
    return f"{sign}${text}"


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
