"""The hot path's round trips to PostgreSQL: a record, a reservation and a settle (issue "A record in one
round trip").

Counted on the wire: libpq's trace of the messages the client sends. Each Sync of the extended protocol
(a prepared statement's Bind/Execute) and each simple Query (BEGIN, COMMIT, SAVEPOINT) is one round trip.
Outside a transaction a record is one statement in autocommit: one round trip, no BEGIN and no COMMIT,
and the rows' locks are held only while the server runs it.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Sum

from budgets.base.errors import BudgetExceeded
from budgets.domain.usage import Usage
from budgets.models import ApiKey, CostEvent, Limit, Reservation
from budgets.services.costs import cost_record
from budgets.services.reservations import reservation_create, reservation_settle
from tests.api_helpers import new_key
from tests.test_limits import limit, team

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"}


@contextmanager
def round_trips() -> Iterator[list[str]]:
    """The round trips this connection makes inside the block: "statement", or the transaction
    control's word (BEGIN, COMMIT, ...)."""
    sent: list[str] = []
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            yield sent
        finally:
            pgconn.untrace()
            trace.seek(0)
            for line in trace:
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 4 or fields[1] != "F":
                    continue
                if fields[3] == "Sync":
                    sent.append("statement")
                elif fields[3] == "Query":  # a simple query: transaction control, or a client-bound statement
                    word = fields[4].strip().strip('"').split()[0].upper()
                    sent.append(word if word in TRANSACTION_CONTROL else "statement")


@pytest.fixture
def five_limits(project, make_budget):
    """alice with a budget, in a team, and five limits that apply to her tagged calls with the key "ci"."""
    make_budget("alice", total_budget="100")
    team(project, "research", "alice")
    new_key(project, name="ci")
    return [limit(project, "project", "", amount="100"), limit(project, "team", "research", amount="100"),
            limit(project, "user", "alice", amount="100000", unit="tokens"),
            limit(project, "key", "ci", amount="100", unit="requests"), limit(project, "tag", "summarizer", amount="9")]


def record(project, enforce: bool = False):
    if not hasattr(project, "ci_key"):
        project.ci_key = ApiKey.objects.get(name="ci")
    return cost_record(project=project, user_id="alice", usage=Usage("gpt-4o-mini", 1000, 500), source="api",
                       enforce=enforce, tags=("summarizer",), api_key=project.ci_key)


@pytest.mark.parametrize("enforce", [False, True], ids=["plain", "enforce"])
def test_a_record_with_five_limits_is_one_round_trip_outside_a_transaction(project, five_limits, enforce):
    record(project, enforce)  # the first prepares the statement on this connection

    with round_trips() as sent:
        recorded = record(project, enforce)

    assert sent == ["statement"]  # no BEGIN, no COMMIT: autocommit
    assert recorded.created and CostEvent.objects.count() == 2
    for row in five_limits:
        row.refresh_from_db()
    assert [row.used for row in five_limits] == [Decimal("0.0009"), Decimal("0.0009"), 3000, 2, Decimal("0.0009")]


def test_a_refused_record_is_one_round_trip_and_writes_nothing(project, five_limits):
    Limit.objects.filter(scope="tag").update(amount=Decimal("0.0006"))  # room for one call of $0.00045
    record(project, enforce=True)
    before = [(row.used, row.held) for row in Limit.objects.order_by("id")]

    with round_trips() as sent, pytest.raises(BudgetExceeded) as refused:
        record(project, enforce=True)

    assert sent == ["statement"]
    assert refused.value.scope == "tag" and refused.value.requested == Decimal("0.00045")
    assert CostEvent.objects.count() == 1
    assert [(row.used, row.held) for row in Limit.objects.order_by("id")] == before


def test_a_reservation_is_one_round_trip_and_a_settle_five(project, five_limits):
    key = ApiKey.objects.get(name="ci")

    def reserve() -> Reservation:
        reservation, created = reservation_create(project=project, user_id="alice", amount=Decimal("0.01"),
                                                  model="gpt-4o-mini", tags=("summarizer",), api_key=key, tokens=100)
        assert created
        return reservation

    first = reserve()
    reservation_settle(project=project, reservation_id=first.pk, usage=Usage("gpt-4o-mini", 10, 10), source="api")

    with round_trips() as reserved:
        second = reserve()
    with round_trips() as settled:
        reservation_settle(project=project, reservation_id=second.pk, usage=Usage("gpt-4o-mini", 10, 10),
                           source="api")

    assert reserved == ["statement"]
    # BEGIN, the reservation locked with its holds given back, the record, the reservation marked, COMMIT.
    assert settled == ["BEGIN", "statement", "statement", "statement", "COMMIT"]
    assert Reservation.objects.filter(status="settled").count() == 2
    assert [row.held for row in Limit.objects.order_by("id")] == [0] * 5


# --- one statement, still exact: a call waits for one in flight and sees what it wrote --------------


def while_one_is_in_flight(first, second) -> tuple[Any, Any]:
    """Run `first` in a transaction on one connection and, while it holds its locks (not committed), `second`
    on another; `first` commits after `second` has been started and given time to reach the database.
    Returns what each returned or raised."""
    holding, outcomes = threading.Event(), {}

    def run(name, work, in_transaction):
        try:
            if in_transaction:
                with transaction.atomic():
                    outcomes[name] = work()
                    holding.set()
                    time.sleep(0.5)  # `second` starts meanwhile and must wait for these locks
            else:
                holding.wait(10)
                outcomes[name] = work()
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc
        finally:
            holding.set()
            connection.close()

    threads = [threading.Thread(target=run, args=("first", first, True)),
               threading.Thread(target=run, args=("second", second, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes["first"], outcomes["second"]


def test_an_enforced_record_sees_the_spend_of_one_in_flight_and_is_refused(project, make_budget):
    """Two $0.06 calls on a $0.10 budget, the second sent while the first holds its locks: the second
    waits for the first's commit, reads its spend and is refused. (Read from the statement's snapshot
    instead of under the locks, it would be admitted: $0.12 recorded.)"""
    make_budget("alice", total_budget="0.10")

    def call():
        return cost_record(project=project, user_id="alice", usage=Usage("x", 1, 1), cost="0.06", source="api",
                           enforce=True)

    first, second = while_one_is_in_flight(call, call)

    assert not isinstance(first, Exception) and first.created
    assert isinstance(second, BudgetExceeded) and second.scope == "user"
    assert CostEvent.objects.aggregate(total=Sum("cost"))["total"] == Decimal("0.06")


def test_a_reservation_sees_the_holds_of_one_in_flight_on_a_shared_limit(project, make_budget):
    """Two users under one team limit of $0.10, two $0.06 reservations, the second while the first holds its
    locks: it is refused by the team's limit."""
    make_budget("alice", total_budget="10")
    make_budget("bob", total_budget="10")
    team(project, "research", "alice", "bob")
    shared = limit(project, "team", "research", amount="0.10")

    def reserve(user):
        return lambda: reservation_create(project=project, user_id=user, amount=Decimal("0.06"))

    first, second = while_one_is_in_flight(reserve("alice"), reserve("bob"))

    assert not isinstance(first, Exception)
    assert isinstance(second, BudgetExceeded) and second.scope == "team"
    shared.refresh_from_db()
    assert shared.held == Decimal("0.06")


def test_an_enforced_record_sees_the_use_of_one_in_flight_on_a_shared_limit(project, make_budget):
    make_budget("alice", total_budget="10")
    make_budget("bob", total_budget="10")
    shared = limit(project, "project", "", amount="0.10")

    def call(user):
        return lambda: cost_record(project=project, user_id=user, usage=Usage("x", 1, 1), cost="0.06",
                                   source="api", enforce=True)

    first, second = while_one_is_in_flight(call("alice"), call("bob"))

    assert not isinstance(first, Exception)
    assert isinstance(second, BudgetExceeded) and second.scope == "project"
    shared.refresh_from_db()
    assert shared.used == Decimal("0.06")
