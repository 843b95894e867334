"""Chart specs for static/console/charts.js, which draws them with Plotly.

Amounts travel as decimal strings (the exact values; the browser turns them into numbers
only to draw) next to their formatted labels, which the tooltips show.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any, TypedDict

from ..selectors.console import DailySpend, ModelByUser
from ..templatetags.console import format_dollars, money_ticks


class Series(TypedDict, total=False):
    name: str
    y: list[str]
    labels: list[str]
    colour: str  # a fixed colour; without it, the page gives each name its own colour


SPEND_COLOUR = "#0d6efd"  # Bootstrap's primary blue
BUDGET_COLOUR = "#adb5bd"


class ChartSpec(TypedDict, total=False):
    kind: str  # "bar", "line" or "pie"
    stack: bool
    horizontal: bool  # bars along the x axis, categories down the y axis (long names read well)
    x: list[str]
    xType: str  # "date" or "category"
    series: list[Series]
    yTitle: str
    height: int
    ticks: dict[str, list[str]] | None  # the money axis's ticks, labelled in the one money format


def label(text: str) -> str:
    """A name as Plotly text: Plotly renders a subset of HTML (links among it) in labels and tooltips.

    User ids and model names come from API callers; escaped, they show as the text they are
    (Plotly turns &lt; &gt; &amp; back into characters, and draws no markup).
    """
    return html.escape(text, quote=False)


def labels(texts: Sequence[str]) -> list[str]:
    return [label(text) for text in texts]


def series(name: str, amounts: Sequence[Decimal], colour: str | None = None) -> Series:
    result: Series = {"name": label(name), "y": [str(a) for a in amounts],
                      "labels": [format_dollars(a) for a in amounts]}
    if colour:
        result["colour"] = colour
    return result


def with_ticks(spec: ChartSpec) -> ChartSpec:
    """Add the money axis's ticks: up to the tallest stack (stacked) or the biggest amount."""
    columns = [[Decimal(v) for v in s["y"]] for s in spec.get("series", [])]
    sums = [sum(values) for values in zip(*columns, strict=False)] if spec.get("stack") else []
    spec["ticks"] = money_ticks(max(sums or [v for c in columns for v in c] or [Decimal(0)]))
    return spec


def iso_days(days: Sequence[date]) -> list[str]:
    return [day.isoformat() for day in days]


def daily_by_model(daily: DailySpend, *, kind: str = "bar") -> ChartSpec:
    """Spend per day, one series per model (stacked bars, or lines)."""
    return with_ticks({
        "kind": kind, "stack": kind == "bar", "x": iso_days(daily.days), "xType": "date",
        "series": [series(model, daily.spend[model]) for model in daily.models], "yTitle": "Spend (USD)",
    })


def bars(names: Sequence[str], amounts: Sequence[Decimal], *, name: str = "Spend") -> ChartSpec:
    """One bar per label, biggest first, horizontal so that user ids read in full."""
    return with_ticks({"kind": "bar", "horizontal": True, "x": labels(names), "xType": "category",
                       "series": [series(name, amounts, SPEND_COLOUR)], "yTitle": "Spend (USD)"})


def pie(names: Sequence[str], amounts: Sequence[Decimal]) -> ChartSpec:
    return {"kind": "pie", "x": labels(names), "series": [series("Spend", amounts)]}


def model_by_user(matrix: ModelByUser, other_name: str) -> ChartSpec:
    """Spend per model, stacked by user (the top users by name, the rest as one series)."""
    named = [series(user, matrix.spend[user]) for user in matrix.users]
    if any(matrix.other):
        named.append(series(other_name, matrix.other))
    return with_ticks({"kind": "bar", "stack": True, "horizontal": True, "x": labels(matrix.models),
                       "xType": "category", "series": named, "yTitle": "Spend (USD)"})


def periods_chart(names: Sequence[str], spend: Sequence[Decimal], budget: Sequence[Decimal]) -> ChartSpec:
    """Past periods: what was spent next to what the budget was."""
    return with_ticks({"kind": "bar", "stack": False, "x": labels(names), "xType": "category",
                       "series": [series("Spent", spend, SPEND_COLOUR), series("Budget", budget, BUDGET_COLOUR)],
                       "yTitle": "USD"})


def is_empty(spec: dict[str, Any]) -> bool:
    return not spec.get("x") or not spec.get("series")
