"""Concurrency proofs for limits at every level: gunicorn with 4 workers, 50 calls at once from 5 processes.

Each scenario sends 50 enforced $0.05 records, or (separately) 50 reservations of $0.05, at once;
exactly as many are admitted as fit the limit, and afterwards every limit's `used` is the sum of
its calls in the ledger for its window and its `held` the open reservations' holds, exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Count, F, Q, Sum
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.domain.usage import prompt_usage
from budgets.models import CostEvent, Limit, Project, Reservation, Team, TeamMember, UserBudget
from budgets.services.limit_raises import limit_raise
from budgets.services.limit_windows import window_of
from tests.api_helpers import new_key
from tests.server_support import at_once, statuses

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CALLS = 50
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in three sentences."}]


@pytest.fixture
def project():
    return services.project_create(name="acme", timezone="Asia/Kolkata")


def make_limit(project: Project, scope: str, subject: str, amount: str, *, unit: str = "usd", window: str = "month",
               model: str = "") -> Limit:
    start, resets_at = window_of(window, project, utcnow())
    return Limit.objects.create(project=project, scope=scope, subject=subject, model=model, unit=unit,
                                window=window, amount=Decimal(amount), window_start=start, resets_at=resets_at)


def budgets_for(project: Project, users: list[str], total: str = "10") -> None:
    for user in users:
        services.budget_set(project=project, user_id=user, total_budget=Decimal(total), actor="test")


@dataclass
class Scenario:
    """Who calls (one user per call, or the same one), with what, and the limit that must hold."""

    users: list[str]
    limit: Limit
    fits: int
    key: str
    tags: list[str] = field(default_factory=list)
    model: str = "gpt-4o"
    record: dict[str, Any] = field(default_factory=lambda: {"cost": 0.05})
    reserve: dict[str, Any] = field(default_factory=lambda: {"estimated_cost": 0.05})
    others: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (user, record, reserve)


def calls(server: str, scenario: Scenario, kind: str) -> list[tuple]:
    tags = {"tags": scenario.tags} if scenario.tags else {}
    if kind == "record":
        body = {"model": scenario.model, **scenario.record, **tags}
        path = "/api/v1/users/{}/costs?enforce=true"
    else:
        body = {"model": scenario.model, **scenario.reserve, **tags}
        path = "/api/v1/users/{}/reservations"
    sent = [(server, scenario.key, path.format(user), body, {}) for user in scenario.users]
    for user, record, reserve in scenario.others:
        sent.append((server, scenario.key, path.format(user), record if kind == "record" else reserve, {}))
    return sent


# --- what every limit must say afterwards -----------------------------------------------------------


def _calls_of(limit: Limit) -> Q:
    """The ledger rows a limit counts (its scope and subject, its model), in its window."""
    where = Q(project_id=limit.project_id, created_at__gte=limit.window_start)
    if limit.scope == Limit.Scope.USER:
        where &= Q(user_id=limit.subject)
    elif limit.scope == Limit.Scope.TEAM:
        where &= Q(user_id__in=TeamMember.objects.filter(team__project_id=limit.project_id, team__name=limit.subject)
                   .values("user_id"))
    elif limit.scope == Limit.Scope.KEY:
        where &= Q(api_key__name=limit.subject)
    elif limit.scope == Limit.Scope.TAG:
        where &= Q(tags__contains=f",{limit.subject},")
    if limit.model:
        where &= Q(model=limit.model)
    return where


def ledger_of(limit: Limit) -> Decimal:
    events = CostEvent.objects.filter(_calls_of(limit))
    if limit.unit == Limit.Unit.USD:
        return events.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    if limit.unit == Limit.Unit.TOKENS:
        return Decimal(events.aggregate(total=Sum(F("prompt_tokens") + F("completion_tokens")))["total"] or 0)
    return Decimal(events.aggregate(total=Count("id"))["total"])


def holds_of(limit: Limit) -> Decimal:
    held = Decimal(0)
    for reservation in Reservation.objects.filter(status=Reservation.Status.OPEN):
        if limit.pk in reservation.limit_ids:
            held += {"usd": reservation.amount, "tokens": Decimal(reservation.tokens), "requests": Decimal(1)}[
                limit.unit]
    return held


def assert_every_limit_matches_the_ledger() -> None:
    for limit in Limit.objects.order_by("pk"):
        assert (limit.pk, limit.used, limit.held) == (limit.pk, ledger_of(limit), holds_of(limit))
    assert UserBudget.objects.aggregate(total=Sum("current_spend"))["total"] == (
        CostEvent.objects.aggregate(total=Sum("cost"))["total"] or 0)
    assert sum(UserBudget.objects.values_list("held", flat=True)) == Project.objects.get().held


def run(server: str, scenario: Scenario, kind: str) -> list[tuple[int, dict]]:
    answers = at_once(calls(server, scenario, kind))
    admitted = statuses(answers)[201]
    expected = scenario.fits + len(scenario.others)
    assert (admitted, statuses(answers)[402]) == (expected, len(answers) - expected), statuses(answers)
    refused = [body["error"]["limit"] for status, body in answers if status == 402]
    assert {limit["id"] for limit in refused} == {scenario.limit.pk}
    assert_every_limit_matches_the_ledger()
    if kind == "reserve":  # settle half, release the rest: the holds go back, the settled calls are counted
        admitted_ids = [body["id"] for status, body in answers if status == 201]
        settle = [(server, scenario.key, f"/api/v1/reservations/{rid}/settle", {"cost": 0.04}, {})
                  for rid in admitted_ids[::2]]
        release = [(server, scenario.key, f"/api/v1/reservations/{rid}/release", {}, {})
                   for rid in admitted_ids[1::2]]
        assert statuses(at_once(settle + release)) == {200: len(admitted_ids)}
        assert_every_limit_matches_the_ledger()
        assert set(Limit.objects.values_list("held", flat=True)) == {Decimal(0)}
    return answers


# --- the scenarios ------------------------------------------------------------------------------


def team_cap(project: Project) -> Scenario:
    users = [f"u{i}" for i in range(CALLS)]
    budgets_for(project, users)
    research = Team.objects.create(project=project, name="research")
    TeamMember.objects.bulk_create([TeamMember(team=research, project=project, user_id=user) for user in users])
    return Scenario(users, make_limit(project, "team", "research", "1"), 20, new_key(project))


def key_cap(project: Project) -> Scenario:
    users = [f"u{i}" for i in range(CALLS)]
    budgets_for(project, users)
    return Scenario(users, make_limit(project, "key", "ci", "1"), 20, new_key(project, name="ci"))


def tag_cap(project: Project) -> Scenario:
    users = [f"u{i}" for i in range(CALLS)]
    budgets_for(project, users)
    return Scenario(users, make_limit(project, "tag", "summarizer", "1"), 20, new_key(project),
                    tags=["eu", "summarizer"])


def model_cap(project: Project) -> Scenario:
    budgets_for(project, ["alice"], "100")
    minis = [("alice", {"model": "gpt-4o-mini", "cost": 0.05}, {"model": "gpt-4o-mini", "estimated_cost": 0.05})] * 10
    return Scenario(["alice"] * CALLS, make_limit(project, "user", "alice", "1", model="gpt-4o"), 20,
                    new_key(project), others=minis)


def requests_a_day(project: Project) -> Scenario:
    budgets_for(project, ["alice"], "100")
    return Scenario(["alice"] * CALLS, make_limit(project, "user", "alice", "7", unit="requests", window="day"), 7,
                    new_key(project))


def tokens_a_day(project: Project) -> Scenario:
    budgets_for(project, ["alice"], "100")
    prompt = prompt_usage("gpt-4o-mini", MESSAGES).prompt_tokens
    return Scenario(["alice"] * CALLS, make_limit(project, "user", "alice", "10000", unit="tokens", window="day"), 6,
                    new_key(project), model="gpt-4o-mini",
                    record={"prompt_tokens": 1000, "completion_tokens": 500},
                    reserve={"messages": MESSAGES, "max_tokens": 1500 - prompt})


def day_beside_month(project: Project) -> Scenario:
    budgets_for(project, ["alice"], "100")
    make_limit(project, "user", "alice", "1", window="month")
    return Scenario(["alice"] * CALLS, make_limit(project, "user", "alice", "0.50", window="day"), 10,
                    new_key(project))


def raised_cap(project: Project) -> Scenario:
    """A $0.50 cap raised twice (stacked): $0.30 until the end of the window and $0.20 for an hour."""
    budgets_for(project, ["alice"], "100")
    cap = make_limit(project, "user", "alice", "0.50")
    limit_raise(limit=cap, amount=Decimal("0.30"), windows=1, actor="test")
    limit_raise(limit=cap, amount=Decimal("0.20"), expires_at=utcnow() + timedelta(hours=1), actor="test")
    return Scenario(["alice"] * CALLS, cap, 20, new_key(project))


def ended_raise(project: Project) -> Scenario:
    """A $0.50 cap whose $1 raise ended a minute ago (nothing has ended it yet: the first call does)."""
    budgets_for(project, ["alice"], "100")
    cap = make_limit(project, "user", "alice", "0.50")
    limit_raise(limit=cap, amount=Decimal(1), expires_at=utcnow() - timedelta(minutes=1), actor="test",
                at=utcnow() - timedelta(hours=1))
    return Scenario(["alice"] * CALLS, cap, 10, new_key(project))


SCENARIOS: dict[str, Callable[[Project], Scenario]] = {
    "a $1 team cap over 50 users of the team": team_cap,
    "a $1 key cap": key_cap,
    "a $1 tag cap": tag_cap,
    "a $1 gpt-4o cap on a user, gpt-4o-mini calls passing": model_cap,
    "7 requests a day": requests_a_day,
    "10,000 tokens a day in 1,500-token calls": tokens_a_day,
    "a $0.50 day window beside a $1 month window": day_beside_month,
    "a $0.50 cap with $0.50 of stacked raises": raised_cap,
    "a $0.50 cap whose raise has just ended": ended_raise,
}


@pytest.mark.parametrize("kind", ["record", "reserve"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_concurrent_calls_are_admitted_exactly_as_far_as_the_limit_allows(server, project, name, kind):
    scenario = SCENARIOS[name](project)

    answers = run(server, scenario, kind)

    if scenario.others:  # the same user's calls on another model all passed
        rows = CostEvent.objects if kind == "record" else Reservation.objects
        assert rows.filter(model="gpt-4o-mini").count() == len(scenario.others)
    if name == "a $0.50 day window beside a $1 month window":
        refusal = next(body["error"] for status, body in answers if status == 402)
        midnight = window_of("day", project, utcnow())[1]
        assert refusal["limit"]["window"] == "day"
        assert datetime.fromisoformat(refusal["limit"]["resets_at"]) == midnight
        assert refusal["message"].startswith("the user 'alice' has $0.00 left of $0.50 today")
