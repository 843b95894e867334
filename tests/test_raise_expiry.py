"""A temporary raise that ends on its own re-checks the limit's thresholds, as an early end does.

Issue 22: the room shrinks at the raise's instant, so a threshold that usage is now at or over
fires (alerts.limit_room_changed), once per window, whichever path ends the raise first: a writer
or a reader that makes the limit current (services.limit_windows.limits_current) or the sweep
(limits_reset_due). The clock is injected: time_machine for the entry points, at= for the sweep.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from budgets.models import Alert, Limit
from budgets.services.limit_raises import limit_raise
from budgets.services.limit_windows import limits_reset_due
from tests.api_helpers import body_of
from tests.test_limits import limit

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
END = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)  # the raise's end, inside March's window
MICRO = timedelta(microseconds=1)


@pytest.fixture
def raised(hooked, make_budget, time_machine, queued) -> Limit:
    """alice's $10 monthly limit (thresholds 80 and 100 %), raised by $10 until END; $9 spent at START:
    45 % of the raised $20, 90 % of the $10 left when the raise ends. The project has a webhook."""
    time_machine.move_to(START, tick=False)
    make_budget("alice", total_budget="100", in_project=hooked)
    alice = limit(hooked, "user", "alice", amount="10", at=START)
    Limit.objects.filter(pk=alice.pk).update(thresholds=[80, 100])
    limit_raise(limit=alice, amount=Decimal(10), expires_at=END, actor="test", at=START)
    return alice


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run a call as if its transaction committed: the alerts' deliveries it queued on commit are sent."""

    def run(call, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return call(*args, **kwargs)

    return run


@pytest.fixture
def spend(api, committed):
    def record(cost: str) -> None:
        response = committed(api.post, "/api/v1/users/alice/costs?enforce=true",
                             {"model": "gpt-4o", "cost": float(cost)})
        assert response.status_code == 201, response.content

    return record


@pytest.fixture
def sweep(committed):
    return lambda at: committed(limits_reset_due, at=at)


def events(limit_id: int) -> list[tuple[str, int, int, Decimal, Decimal]]:
    """(kind, threshold, cycle, spend, limit) of a limit's alerts, in the order they were raised."""
    return list(Alert.objects.filter(source_limit_id=limit_id).order_by("pk")
                .values_list("kind", "threshold", "cycle", "spend", "limit"))


def test_a_raise_that_ends_when_a_record_uses_the_limit_fires_the_threshold_usage_is_now_over(
        raised, spend, sweep, time_machine, queued):
    spend("9")
    time_machine.move_to(END - MICRO, tick=False)
    spend("0")  # the raise still counts: 45 %
    assert events(raised.pk) == [] and queued == []

    time_machine.move_to(END, tick=False)
    spend("0.5")  # the raise ends in this record's transaction: $9 of $10 is 80 % crossed

    assert events(raised.pk) == [("threshold", 80, 0, Decimal(9), Decimal(10))]
    alert = Alert.objects.get()
    assert queued == [alert.pk]  # the webhook goes once
    raised.refresh_from_db()
    assert (raised.used, raised.raised, raised.raises_end_at) == (Decimal("9.5"), 0, None)

    # Made current already: neither a read nor the sweep fires it again.
    assert sweep(END) == 0
    spend("0.4")
    assert len(events(raised.pk)) == 1 and queued == [alert.pk]
    # Crossing the next threshold fires it once, as ever.
    spend("0.1")  # 10 of 10
    assert events(raised.pk)[1:] == [("threshold", 100, 0, Decimal(10), Decimal(10))]
    assert len(queued) == 2


def test_a_raise_that_ends_when_the_limit_is_read_fires_once(raised, api, spend, sweep, committed, time_machine,
                                                               queued):
    spend("9")
    time_machine.move_to(END, tick=False)

    first = body_of(committed(api.get, f"/api/v1/limits/{raised.pk}"))
    again = body_of(committed(api.get, "/api/v1/limits"))

    assert first["limit"] == again["items"][0]["limit"] == 10
    assert events(raised.pk) == [("threshold", 80, 0, Decimal(9), Decimal(10))]
    assert queued == [Alert.objects.get().pk]
    assert sweep(END) == 0 and len(queued) == 1


def test_the_sweep_ends_the_raise_and_fires_once(raised, spend, sweep, queued):
    spend("9")
    assert sweep(END - MICRO) == 0 and events(raised.pk) == []

    assert sweep(END) == 1
    assert sweep(END) == 0

    assert events(raised.pk) == [("threshold", 80, 0, Decimal(9), Decimal(10))]
    assert queued == [Alert.objects.get().pk]
    raised.refresh_from_db()
    assert (raised.raised, raised.raises_end_at) == (0, None)


def test_a_threshold_already_fired_in_the_window_does_not_fire_again_when_the_raise_ends(raised, spend, sweep,
                                                                                          queued):
    spend("17")  # 85 % of the raised $20: 80 fired
    assert [e[:3] for e in events(raised.pk)] == [("threshold", 80, 0)]

    assert sweep(END) == 1  # $17 of $10: 100 % is now over, 80 % was already told

    assert [e[:3] for e in events(raised.pk)] == [("threshold", 80, 0), ("threshold", 100, 0)]
    assert len(queued) == 2


def test_a_raise_that_ends_with_its_window_fires_nothing_in_the_new_window(hooked, make_budget, spend, sweep,
                                                                             time_machine, queued):
    time_machine.move_to(START, tick=False)
    make_budget("alice", total_budget="100", in_project=hooked)
    alice = limit(hooked, "user", "alice", amount="10", at=START)
    limit_raise(limit=alice, amount=Decimal(10), windows=1, actor="test", at=START)
    spend("9")
    alice.refresh_from_db()
    assert alice.resets_at is not None

    assert sweep(alice.resets_at) == 1  # the window and the raise end together: used 0

    assert events(alice.pk) == [] and queued == []


def test_a_raise_that_ends_while_another_goes_on_checks_the_room_left(raised, spend, sweep, queued):
    limit_raise(limit=raised, amount=Decimal(2), expires_at=END + timedelta(hours=1), actor="test", at=START)
    spend("9")  # 9 of 22

    assert sweep(END) == 1  # 9 of 12: 75 %, nothing crossed
    assert events(raised.pk) == []
    assert sweep(END + timedelta(hours=1)) == 1  # 9 of 10
    assert [e[:3] for e in events(raised.pk)] == [("threshold", 80, 0)]
    assert len(queued) == 1
