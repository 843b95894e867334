"""The console's one money format: 2 decimals from $1 up, 3 significant digits below, never scientific."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.template import Context, Template

from budgets.templatetags.console import format_dollars, money_ticks
from budgets.views import charts


@pytest.mark.parametrize(("amount", "text"), [
    ("0", "$0.00"),
    ("0.000000000000", "$0.00"),
    ("0.0142", "$0.0142"),
    ("0.000322", "$0.000322"),
    ("0.01424999", "$0.0142"),
    ("0.5", "$0.500"),
    ("0.123456", "$0.123"),
    ("0.9994", "$0.999"),
    ("0.99951", "$1.00"),  # rounds up into dollars: the dollar rule
    ("1", "$1.00"),
    ("1.005", "$1.00"),  # half to even, like every amount in the service
    ("1234.567", "$1,234.57"),
    ("1234567.891", "$1,234,567.89"),
    ("1E+3", "$1,000.00"),
    ("1E-12", "$0.00000000000100"),
    ("-0.0123", "-$0.0123"),
    ("-25", "-$25.00"),
])
def test_one_rule_for_every_amount(amount, text):
    assert format_dollars(Decimal(amount)) == text


@pytest.mark.parametrize("amount", ["1E-20", "0.000000001", "9.99E-7", "123456789012.5"])
def test_it_never_uses_scientific_notation(amount):
    assert "E" not in format_dollars(Decimal(amount)).upper()


@pytest.mark.parametrize("value", [None, "", "abc", Decimal("NaN"), Decimal("Infinity")])
def test_nothing_or_garbage_is_a_dash(value):
    assert format_dollars(value) == "—"


def test_strings_and_floats_follow_the_same_rule():
    assert format_dollars("0.0042") == format_dollars(0.0042) == "$0.00420"


def test_the_template_filter_is_the_same_function():
    rendered = Template("{% load console %}{{ a|dollars }} {{ b|dollars }}").render(
        Context({"a": Decimal("0.000322"), "b": Decimal("1234.5")}))
    assert rendered == "$0.000322 $1,234.50"


def test_chart_ticks_are_labelled_with_the_rule():
    assert money_ticks(Decimal("0.0042")) == {
        "vals": ["0", "0.001", "0.002", "0.003", "0.004", "0.005"],
        "text": ["$0.00", "$0.00100", "$0.00200", "$0.00300", "$0.00400", "$0.00500"],
    }
    assert money_ticks(Decimal(3700))["text"][-1] == "$4,000.00"
    assert money_ticks(Decimal(0)) is None


def test_chart_hover_labels_and_ticks_use_the_rule_and_amounts_stay_exact():
    spec = charts.bars(["alice", "bob"], [Decimal("0.000321987654321"), Decimal("1234.5678")])

    assert spec["series"][0]["labels"] == ["$0.000322", "$1,234.57"]
    assert spec["series"][0]["y"] == ["0.000321987654321", "1234.5678"]
    assert spec["ticks"]["text"][-1] == "$1,250.00"


def test_stacked_chart_ticks_reach_the_tallest_stack():
    spec = charts.periods_chart(["p1"], [Decimal(3)], [Decimal(4)])  # side by side: the biggest bar
    assert spec["ticks"]["vals"][-1] == "4"
    stacked = charts.with_ticks({"kind": "bar", "stack": True, "series": [
        {"name": "a", "y": ["3", "1"]}, {"name": "b", "y": ["4", "1"]}]})
    assert stacked["ticks"]["vals"][-1] == "8"
