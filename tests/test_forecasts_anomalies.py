"""Forecasts (each limit's usage at its window's end, and the alert once per window when it crosses the
limit) and spend anomalies (a user's or team's day over its trailing average, from the rollups);
every alert kind delivered once, signed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from budgets import services
from budgets.base.errors import InvalidInput
from budgets.domain.usage import Usage
from budgets.models import Alert, Limit, Project, Team, TeamMember
from budgets.selectors import console
from budgets.selectors.limits import LimitState
from budgets.services import alerts
from budgets.services.anomalies import anomalies_detect
from budgets.services.forecasts import limits_forecast_check
from budgets.services.limit_windows import window_of
from tests.api_helpers import body_of
from tests.celery_support import WebhookReceiver

pytestmark = pytest.mark.django_db

MARCH_10 = datetime(2026, 3, 10, tzinfo=UTC)  # nine days into a 31-day month


def spend(project: Project, user: str, dollars: str, model: str = "gpt-4o") -> None:
    services.cost_record(project=project, user_id=user, usage=Usage(model, 0, 0), cost=Decimal(dollars),
                         source="api")


def limit(project: Project, *, amount: str, used: str, window: str = "month", unit: str = "usd", at=MARCH_10,
          subject: str = "alice") -> Limit:
    start, resets_at = window_of(window, project, at)
    return Limit.objects.create(project=project, scope="user", subject=subject, unit=unit, window=window,
                                amount=Decimal(amount), used=Decimal(used), window_start=start, resets_at=resets_at)


# --- forecasts ----------------------------------------------------------------------------------


def test_every_limit_answers_its_forecast_at_the_windows_end(project, api, time_machine):
    time_machine.move_to(MARCH_10, tick=False)
    month = limit(project, amount="20", used="9")  # $1 a day for 9 days: $31 by 1 April
    tokens = limit(project, amount="100000", used="1000", unit="tokens", window="day",
                   at=MARCH_10 + timedelta(hours=3), subject="bob")  # 3 h into a day
    lifetime = limit(project, amount="5", used="1", window="lifetime", subject="carol")

    time_machine.move_to(MARCH_10 + timedelta(hours=3), tick=False)
    items = {item["id"]: item for item in body_of(api.get("/api/v1/limits"))["items"]}

    assert items[month.pk]["forecast"] == (Decimal(9) * 744 / 219).quantize(Decimal("1e-12"))  # 9 days 3 h of 31
    assert items[tokens.pk]["forecast"] == 8000  # 1,000 in 3 h of 24: whole tokens
    assert items[lifetime.pk]["forecast"] is None
    time_machine.move_to(MARCH_10, tick=False)
    (answer,) = [item for item in body_of(api.get("/api/v1/limits"))["items"] if item["id"] == month.pk]
    assert answer["forecast"] == 31


def test_the_overview_and_the_limits_share_the_forecast_method(project):
    project.current_spend, project.period_start = Decimal(9), datetime(2026, 3, 1, tzinfo=UTC)
    project.next_reset_at = datetime(2026, 4, 1, tzinfo=UTC)
    project.max_budget = Decimal(20)

    assert console.forecast(project, MARCH_10).projected == Decimal(31)
    assert LimitState.of_project(project).forecast(MARCH_10) == Decimal(31)


def test_the_forecast_alert_fires_once_per_window_when_the_forecast_first_crosses_the_limit(project, queued):
    over = limit(project, amount="20", used="9")  # forecast $31
    under = limit(project, amount="40", used="9", subject="bob")  # forecast $31 < $40
    used_up = limit(project, amount="5", used="9", subject="carol")  # its 100 % threshold said so already

    assert limits_forecast_check(at=MARCH_10) == 1
    assert limits_forecast_check(at=MARCH_10 + timedelta(minutes=5)) == 0
    alert = Alert.objects.get(kind="forecast")
    assert (alert.source_limit_id, alert.threshold, alert.period_start, alert.spend, alert.limit) == (
        over.pk, 100, datetime(2026, 3, 1, tzinfo=UTC), 9, 20)
    assert alerts.alert_payload(alert)["forecast"] == Decimal(31)
    assert not Alert.objects.filter(source_limit__in=[under, used_up]).exists()

    april = datetime(2026, 4, 10, tzinfo=UTC)
    start, resets_at = window_of("month", project, april)
    Limit.objects.filter(pk=over.pk).update(window_start=start, resets_at=resets_at, used=Decimal(9))
    assert limits_forecast_check(at=april) == 1  # a new window: once more


# --- anomalies ----------------------------------------------------------------------------------


@pytest.fixture
def history(project, make_budget, time_machine):
    """alice spent $1 a day for 14 days (2-15 March), bob $1 a day for 5; today is 16 March (UTC)."""
    make_budget("alice", total_budget="1000")
    make_budget("bob", total_budget="1000")
    research = Team.objects.create(project=project, name="research")
    TeamMember.objects.create(team=research, project=project, user_id="alice")
    for day in range(1, 15):
        time_machine.move_to(datetime(2026, 3, 1 + day, 9, tzinfo=UTC), tick=False)
        spend(project, "alice", "1", "gpt-4o-mini")
        if day >= 10:
            spend(project, "bob", "1", "gpt-4o-mini")
    time_machine.move_to(datetime(2026, 3, 16, 10, tzinfo=UTC), tick=False)
    return project


def test_a_tenfold_day_raises_one_anomaly_naming_the_user_the_figures_and_the_top_model(history, queued):
    spend(history, "alice", "9", "gpt-4o")
    spend(history, "alice", "1", "gpt-4o-mini")  # $10 today against $1 a day

    assert anomalies_detect() == 2  # alice, and her team
    assert anomalies_detect() == 0  # once per subject per day

    user = Alert.objects.get(kind="anomaly", scope="user")
    payload = alerts.alert_payload(user)
    assert {key: payload[key] for key in ("type", "kind", "scope", "user", "subject", "spend", "limit",
                                          "baseline", "baseline_days", "multiple", "top_model",
                                          "top_model_spend", "threshold")} == {
        "type": "budget.spend_anomaly", "kind": "anomaly", "scope": "user", "user": "alice", "subject": "alice",
        "spend": Decimal(10), "limit": Decimal(3), "baseline": Decimal(1), "baseline_days": 14,
        "multiple": Decimal(3), "top_model": "gpt-4o", "top_model_spend": Decimal(9), "threshold": 300}
    assert user.period_start == datetime(2026, 3, 16, tzinfo=UTC)
    team = alerts.alert_payload(Alert.objects.get(kind="anomaly", scope="team"))
    assert (team["user"], team["subject"], team["spend"], team["top_model"]) == (None, "research", 10, "gpt-4o")


def test_no_anomaly_for_a_user_with_five_days_of_history(history, queued):
    spend(history, "bob", "10")

    assert anomalies_detect() == 0


def test_no_anomaly_below_the_floor_under_the_multiple_or_when_off(history, queued):
    spend(history, "alice", "2.9")  # under 3 x $1
    assert anomalies_detect() == 0
    services.project_update(project=history, anomaly_floor=Decimal(50), actor="test")
    spend(history, "alice", "20")  # 23 x, but under the $50 floor
    assert anomalies_detect() == 0
    services.project_update(project=history, anomaly_floor=Decimal(1), anomaly_alerts=False, actor="test")
    assert anomalies_detect() == 0
    services.project_update(project=history, anomaly_alerts=True, actor="test")
    assert anomalies_detect() == 2


def test_the_next_day_may_raise_another(history, queued, time_machine):
    spend(history, "alice", "10")
    assert anomalies_detect() == 2
    time_machine.move_to(datetime(2026, 3, 17, 10, tzinfo=UTC), tick=False)
    spend(history, "alice", "30")
    assert anomalies_detect() == 2


@pytest.mark.parametrize("changes", [
    {"anomaly_multiple": Decimal("0.5")}, {"anomaly_multiple": Decimal("3.333")}, {"anomaly_floor": Decimal(-1)},
    {"anomaly_alerts": "yes"},
])
def test_bad_anomaly_settings_are_refused(project, changes):
    with pytest.raises(InvalidInput):
        services.project_update(project=project, actor="test", **changes)
    project.refresh_from_db()
    assert (project.anomaly_alerts, project.anomaly_multiple, project.anomaly_floor) == (True, 3, 1)


def test_the_settings_page_saves_the_anomaly_settings(project, client, django_user_model):
    owner = django_user_model.objects.create_user("owner", password="pw")
    project.members.add(owner)
    client.force_login(owner)

    response = client.post(f"/projects/{project.pk}/settings/alerts/", {
        "alert_thresholds": "80, 100", "anomaly_multiple": "5", "anomaly_floor": "2"})

    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.anomaly_alerts, project.anomaly_multiple, project.anomaly_floor) == (False, 5, 2)
    page = client.get(f"/projects/{project.pk}/settings/").content.decode()
    assert "Spend anomaly alerts" in page and 'value="5"' in page


# --- delivery -----------------------------------------------------------------------------------


def test_every_event_kind_is_delivered_once_and_signed(history, queued, api, django_capture_on_commit_callbacks):
    with WebhookReceiver() as receiver:
        with django_capture_on_commit_callbacks(execute=True):
            Project.objects.filter(pk=history.pk).update(alert_thresholds=[80], alert_webhook_url=receiver.url)
            history.refresh_from_db()
            created = body_of(api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": 20}))
            spend(history, "alice", "17")  # threshold 80 % of the $20 limit; the day's anomaly
            api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 100})  # resolved
            Limit.objects.filter(pk=created["id"]).update(used=Decimal(60))  # forecast over $100
            anomalies_detect()
            limits_forecast_check()
        kinds = set(Alert.objects.values_list("kind", flat=True))
        assert kinds == {"threshold", "resolved", "forecast", "anomaly"}
        assert sorted(queued) == sorted(Alert.objects.values_list("pk", flat=True))  # each queued once

        for alert in Alert.objects.order_by("pk"):
            assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"
            assert alerts.alert_deliver(alert_id=alert.pk).status == "skipped"

    assert len(receiver.received) == Alert.objects.count()
    bodies = [json.loads(request.body, parse_float=Decimal) for request in receiver.received]
    assert sorted(request.headers["X-Budget-Alert-Id"] for request in receiver.received) == sorted(
        str(pk) for pk in Alert.objects.values_list("pk", flat=True))
    assert all(alerts.verify_signature(history.webhook_secret, r.headers, r.body) for r in receiver.received)
    assert {body["kind"] for body in bodies} == kinds
    assert {body["type"] for body in bodies} == {"budget.threshold_crossed", "budget.threshold_resolved",
                                                 "budget.forecast_over_limit", "budget.spend_anomaly"}
    forecast = next(body for body in bodies if body["kind"] == "forecast")
    assert (forecast["limit_id"], forecast["subject"], forecast["window"], forecast["limit"]) == (
        created["id"], "alice", "month", 100)
