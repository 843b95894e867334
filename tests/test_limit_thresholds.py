"""Each limit's own thresholds: once per window, `resolved` when a raise brings usage back under one
(alerts.limit_room_changed), crossing again fires again; set through the API and the console."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, AuditLog, Limit, Project
from budgets.services import alerts
from tests.api_helpers import body_of

pytestmark = pytest.mark.django_db

MARCH = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def spend(project: Project, user: str, dollars: str) -> None:
    services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0), cost=Decimal(dollars),
                         source="api")


def events(limit_id: int) -> list[tuple[str, int, int]]:
    """(kind, threshold, cycle) of a limit's alerts, in the order they were raised."""
    return list(Alert.objects.filter(source_limit_id=limit_id).order_by("pk")
                .values_list("kind", "threshold", "cycle"))


def limit_rows() -> list[tuple]:
    return list(Limit.objects.order_by("pk").values_list("pk", "amount", "mode", "thresholds"))


@pytest.fixture
def alice(project, make_budget, time_machine):
    time_machine.move_to(MARCH, tick=False)
    make_budget("alice", total_budget="1000")
    return project


def new_limit(api, **fields) -> dict:
    response = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": 10, **fields})
    assert response.status_code == 201, response.content
    return body_of(response)


# --- per-limit thresholds -----------------------------------------------------------------------


def test_a_limits_own_thresholds_fire_once_per_window_instead_of_the_projects(alice, api, time_machine):
    own = new_limit(api, thresholds=[90, 50])
    default = new_limit(api, window="day")
    assert (own["thresholds"], default["thresholds"]) == ([50, 90], None)
    alice.refresh_from_db()
    assert alice.limit_thresholds == [50, 90]

    for dollars in ("4", "2", "1", "2.5", "1"):  # 40, 60, 70, 95, 105 %
        spend(alice, "alice", dollars)

    assert events(own["id"]) == [("threshold", 50, 0), ("threshold", 90, 0)]
    assert events(default["id"]) == [("threshold", 80, 0), ("threshold", 100, 0)]  # the project's [80, 100]

    time_machine.move_to(datetime(2026, 4, 2, tzinfo=UTC), tick=False)  # the next month: a new window
    spend(alice, "alice", "6")
    april = Alert.objects.filter(source_limit_id=own["id"], period_start__gte=datetime(2026, 4, 1, tzinfo=UTC))
    assert list(april.values_list("threshold", "cycle")) == [(50, 0)]


def test_a_record_that_crosses_nothing_reads_no_limit_thresholds(alice, api, django_assert_max_num_queries):
    new_limit(api, thresholds=[50])
    project = Project.objects.get(pk=alice.pk)
    spend(project, "alice", "1")

    state = services.limits_for_user(project=project, user_id="alice").items
    counted = [(s, Decimal("0.5"), MARCH) for s in state if s.id is not None]
    with django_assert_max_num_queries(0):
        assert alerts.limits_counted(project=project, counted=counted) == []


@pytest.mark.parametrize("thresholds", [
    [0], [1001], [50, 50], list(range(1, 12)), "80", [80.5], [True], [-5], ["80"], {"a": 1},
])
def test_bad_thresholds_are_a_4xx_and_write_nothing(alice, api, thresholds):
    created = new_limit(api)
    before = limit_rows(), AuditLog.objects.count()

    posted = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "window": "day", "limit": 1,
                                         "thresholds": thresholds})
    patched = api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 20, "thresholds": thresholds})

    assert 400 <= posted.status_code < 500 and 400 <= patched.status_code < 500, (posted.content, patched.content)
    assert body_of(posted)["error"]["message"] and body_of(patched)["error"]["message"]
    assert (limit_rows(), AuditLog.objects.count()) == before


def test_patch_sets_and_clears_a_limits_thresholds_and_audits_it(alice, api):
    created = new_limit(api)

    set_ = body_of(api.call("patch", f"/api/v1/limits/{created['id']}", {"thresholds": [70]}))
    alice.refresh_from_db()
    assert (set_["thresholds"], alice.limit_thresholds) == ([70], [70])
    cleared = body_of(api.call("patch", f"/api/v1/limits/{created['id']}", {"thresholds": None}))
    alice.refresh_from_db()
    assert (cleared["thresholds"], cleared["limit"], alice.limit_thresholds) == (None, 10, [])
    audits = list(AuditLog.objects.filter(action="limit_update").order_by("pk"))
    assert [(a.before["thresholds"], a.after["thresholds"]) for a in audits] == [(None, [70]), ([70], None)]


def test_the_console_form_sets_a_limits_thresholds(alice, client, django_user_model):
    owner = django_user_model.objects.create_user("owner", password="pw")
    alice.members.add(owner)
    client.force_login(owner)
    form = {"scope": "user", "subject": "alice", "model": "", "unit": "usd", "window": "month", "amount": "10",
            "mode": "hard"}

    refused = client.post(f"/projects/{alice.pk}/limits/new/", {**form, "thresholds": "50, 50"})
    assert refused.status_code == 400 and not Limit.objects.exists()
    created = client.post(f"/projects/{alice.pk}/limits/new/", {**form, "thresholds": "90, 50%"})
    assert created.status_code == 302
    limit = Limit.objects.get()
    assert limit.thresholds == [50, 90]

    page = client.get(f"/projects/{alice.pk}/limits/").content.decode()
    assert 'value="50, 90"' in page and "alerts 50, 90 %" in page and "Forecast" in page
    client.post(f"/projects/{alice.pk}/limits/{limit.pk}/edit/", {"amount": "12", "mode": "hard", "thresholds": ""})
    limit.refresh_from_db()
    assert (limit.amount, limit.thresholds) == (12, None)


# --- resolved -----------------------------------------------------------------------------------


def test_raising_the_amount_resolves_the_fired_thresholds_then_crossing_again_fires_again(alice, api):
    created = new_limit(api)
    spend(alice, "alice", "8.5")
    spend(alice, "alice", "2")  # 105 %: 80 and 100 fired
    assert events(created["id"]) == [("threshold", 80, 0), ("threshold", 100, 0)]

    api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 12})  # 10.5 of 12: under 100 %, over 80 %
    assert events(created["id"])[2:] == [("resolved", 100, 0)]
    api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 20})  # 10.5 of 20: under 80 %
    assert events(created["id"])[3:] == [("resolved", 80, 0)]
    api.call("patch", f"/api/v1/limits/{created['id']}", {"mode": "soft"})  # the room did not change
    assert len(events(created["id"])) == 4

    spend(alice, "alice", "6")  # 16.5 of 20: 80 % again
    spend(alice, "alice", "4")  # 20.5 of 20: 100 % again
    spend(alice, "alice", "1")
    assert events(created["id"])[4:] == [("threshold", 80, 1), ("threshold", 100, 1)]
    resolved = Alert.objects.get(source_limit_id=created["id"], kind="resolved", threshold=80)
    assert (resolved.spend, resolved.limit, resolved.scope) == (Decimal("10.5"), 20, "limit")


def test_lowering_the_amount_fires_the_thresholds_usage_is_now_over(alice, api):
    created = new_limit(api)
    spend(alice, "alice", "5")

    api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 5})

    assert events(created["id"]) == [("threshold", 80, 0), ("threshold", 100, 0)]


def test_limit_room_changed_raises_each_event_once(alice, api):
    created = new_limit(api)
    spend(alice, "alice", "9")
    Limit.objects.filter(pk=created["id"]).update(amount=Decimal(100))  # as a grant or a raise would

    first = alerts.limit_room_changed(alice, [created["id"]])
    again = alerts.limit_room_changed(alice, [created["id"]])

    assert [(a.kind, a.threshold) for a in first] == [("resolved", 80)]
    assert again == []


def test_the_webhook_of_a_resolved_event_names_the_limit_and_the_kind(alice, api):
    created = new_limit(api, window="week")
    spend(alice, "alice", "9")
    api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 30})

    resolved = Alert.objects.get(kind="resolved")
    payload = alerts.alert_payload(resolved)

    assert {key: payload[key] for key in ("type", "kind", "scope", "limit_id", "limit_scope", "subject", "model",
                                          "unit", "window", "threshold", "spend", "limit")} == {
        "type": "budget.threshold_resolved", "kind": "resolved", "scope": "limit", "limit_id": created["id"],
        "limit_scope": "user", "subject": "alice", "model": None, "unit": "usd", "window": "week",
        "threshold": 80, "spend": Decimal(9), "limit": Decimal(30)}
    listed = body_of(api.get("/api/v1/alerts"))["items"]
    assert [(item["kind"], item["threshold"]) for item in listed] == [("resolved", 80), ("threshold", 80)]
