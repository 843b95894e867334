"""Ranking users over a range reads month bounds, then exact days: the answer of summing every day."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from budgets import services
from budgets.models import CostEvent
from budgets.selectors import console
from budgets.services.rollups import local_day

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)


def ledger_ranking(project, rng: console.DateRange, limit: int) -> list[dict]:
    totals: dict[str, tuple[Decimal, int]] = {}
    for event in CostEvent.objects.filter(project=project):
        if rng.start <= local_day(project.timezone, event.created_at) <= rng.end:
            spend, events = totals.get(event.user_id, (Decimal(0), 0))
            totals[event.user_id] = (spend + event.cost, events + 1)
    ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    return [{"user_id": user, "spend": spend, "events": events} for user, (spend, events) in ranked]


@pytest.fixture
def ledger(project):
    """120 days of calls by 40 users, with users whose month totals mislead: heavy spenders early in a
    month the range only touches at its end, equal spenders (ties), and calls that cost nothing."""
    rng = random.Random(7)
    events = []

    def call(user: str, days_ago: float, cost: str) -> None:
        events.append(CostEvent(project=project, user_id=user, model="gpt-4o", cost=Decimal(cost),
                                created_at=NOW - timedelta(days=days_ago)))

    for i in range(40):
        for _ in range(rng.randrange(1, 30)):
            call(f"user{i:02}", rng.uniform(0, 120), f"{rng.randrange(0, 500)}.{rng.randrange(0, 10**6):06}")
    for i in range(8):  # big in some month's first days: their bound is large, their spend in range small
        for days_ago in (35 + i, 65 + i, 95 + i):
            call(f"decoy{i}", days_ago, "3000")
    for user in ("tie-b", "tie-a"):  # the same spend on the same days: ordered by id
        call(user, 1, "777.5")
        call(user, 40, "777.5")
    call("free", 2, "0")
    CostEvent.objects.bulk_create(events)
    services.rollups_rebuild(project)
    return project


def ranges(zone: ZoneInfo) -> list[console.DateRange]:
    today = NOW.astimezone(zone).date()
    return [
        *(console.DateRange.last_days(days, zone) for days in (1, 7, 30, 90, 365)),
        console.DateRange(today - timedelta(days=70), today - timedelta(days=31), zone),
        console.DateRange(today - timedelta(days=40), today - timedelta(days=40), zone),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("depth", [64, 3, 1])
def test_the_ranking_equals_summing_every_day(ledger, monkeypatch, depth):
    monkeypatch.setattr(console, "RANKING_DEPTH", depth)
    for rng in ranges(console.project_zone(ledger)):
        for limit in (1, 3, 10, 60):
            assert console.ranked_users(ledger, rng, limit) == ledger_ranking(ledger, rng, limit), (rng, limit)


def test_the_decoys_are_read_and_left_out(ledger):
    """The decoys lead some months; their exact spend in the last 30 days does not rank them."""
    rng = console.DateRange.last_days(30, console.project_zone(ledger))
    top = [row["user_id"] for row in console.ranked_users(ledger, rng, 5)]
    assert top == [row["user_id"] for row in ledger_ranking(ledger, rng, 5)]
    assert not any(user.startswith("decoy") for user in top)


def test_a_month_of_many_users_is_ranked_from_a_few_rows(project, django_assert_max_num_queries):
    """The usual case takes a query per month the range touches, then one for the candidates' spend."""
    events = [CostEvent(project=project, user_id=f"u{i}", model="m", cost=Decimal(i), created_at=NOW)
              for i in range(300)]
    CostEvent.objects.bulk_create(events)
    services.rollups_rebuild(project)
    with django_assert_max_num_queries(3):
        top = console.ranked_users(project, console.DateRange.last_days(30, console.project_zone(project)), 10)
    assert [row["user_id"] for row in top] == [f"u{i}" for i in range(299, 289, -1)]
