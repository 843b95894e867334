"""Budget alerts: once per threshold per period, a signed webhook and/or an email, retried, claimed once."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.utils.timezone import now

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import Alert, AuditLog, CostEvent, Project
from budgets.services import alerts
from tests.celery_support import WebhookReceiver

pytestmark = pytest.mark.django_db


def spend(project: Project, user: str, dollars: str):
    return services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0),
                                cost=Decimal(dollars), source="api")


def use_receiver(project: Project, receiver: WebhookReceiver) -> None:
    Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
    project.refresh_from_db()


# --- crossing thresholds --------------------------------------------------------------------


def test_crossing_80_percent_creates_one_alert_and_queues_it_on_commit(
    hooked, make_budget, queued, django_capture_on_commit_callbacks
):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "7.9")
    with django_capture_on_commit_callbacks(execute=True):
        recorded = spend(hooked, "alice", "0.2")

    assert recorded.created
    alert = Alert.objects.get()
    assert (alert.scope, alert.user_id, alert.threshold, alert.spend, alert.limit) == (
        "user", "alice", 80, Decimal("8.1"), Decimal(10))
    assert alert.period_start == recorded.budget.period_start
    assert (alert.delivered_at, alert.attempts) == (None, 0)
    assert queued == [alert.pk]


def test_nothing_is_queued_when_the_transaction_rolls_back(hooked, make_budget, queued,
                                                           django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        spend(hooked, "alice", "9")
    # The test's own transaction never commits: the callback was registered, not run.
    assert len(callbacks) == 1
    assert queued == []


def test_one_call_can_cross_several_thresholds(hooked, make_budget, queued, django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    with django_capture_on_commit_callbacks(execute=True):
        spend(hooked, "alice", "12")
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [80, 100]
    assert len(queued) == 2


def test_spend_reaching_a_threshold_exactly_crosses_it(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "8")
    assert list(Alert.objects.values_list("threshold", flat=True)) == [80]


def test_a_threshold_alerts_once_per_period_even_after_a_manual_reset(hooked, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    budget = make_budget("alice", total_budget="10", duration="daily")
    spend(hooked, "alice", "8.5")
    services.budget_reset(budget=budget, actor="test")
    spend(hooked, "alice", "8.5")
    assert Alert.objects.count() == 1

    time_machine.move_to("2026-03-11 09:00:00+00:00", tick=False)  # a new period: alerts again
    spend(hooked, "alice", "8.5")
    assert list(Alert.objects.order_by("period_start").values_list("period_start", flat=True)) == [
        datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)]
    assert CostEvent.objects.count() == 3


def test_the_project_cap_has_thresholds_too(hooked, make_budget, queued):
    services.project_update(project=hooked, max_budget="20", alert_thresholds=[50], actor="test")
    make_budget("alice", total_budget="100")
    make_budget("bob", total_budget="100")
    spend(hooked, "alice", "6")
    spend(hooked, "bob", "6")

    alert = Alert.objects.get()
    assert (alert.scope, alert.user_id, alert.threshold, alert.spend, alert.limit) == (
        "project", "", 50, Decimal(12), Decimal(20))


def test_zero_budgets_and_empty_threshold_lists_never_alert(hooked, make_budget, queued):
    make_budget("zero", total_budget="0")
    spend(hooked, "zero", "1")
    services.project_update(project=hooked, alert_thresholds=[], actor="test")
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "10")
    assert not Alert.objects.exists()


def test_an_alert_of_a_project_without_channels_is_kept_but_not_sent(project, make_budget, queued,
                                                                      django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    with django_capture_on_commit_callbacks(execute=True):
        spend(project, "alice", "9")
    alert = Alert.objects.get()
    assert alert.delivered_at is not None
    assert queued == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_crossing_a_threshold_alert_once(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def record() -> None:
        try:
            start.wait()
            spend(hooked, "alice", "1.25")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(Alert.objects.values_list("threshold", "spend")) == [(80, Decimal("8.75")), (100, Decimal(10))]
    assert sorted(queued) == sorted(Alert.objects.values_list("pk", flat=True))


# --- delivery -------------------------------------------------------------------------------


def test_the_webhook_is_signed_with_the_project_secret(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "8.123456789")
    alert = Alert.objects.get()
    with WebhookReceiver() as receiver:
        use_receiver(hooked, receiver)
        result = alerts.alert_deliver(alert_id=alert.pk)

    assert result.status == "delivered"
    (request,) = receiver.received
    stamp, signature = request.headers["X-Budget-Timestamp"], request.headers["X-Budget-Signature"]
    expected = hmac.new(hooked.webhook_secret.encode(), stamp.encode() + b"." + request.body, hashlib.sha256)
    assert signature == "sha256=" + expected.hexdigest()
    assert alerts.verify_signature(hooked.webhook_secret, request.headers, request.body)
    assert not alerts.verify_signature("another secret", request.headers, request.body)
    assert not alerts.verify_signature(hooked.webhook_secret, request.headers, request.body + b" ")
    body = json.loads(request.body, parse_float=Decimal)
    assert body == {
        "type": "budget.threshold_crossed", "alert_id": alert.pk, "project": "acme", "kind": "threshold",
        "scope": "user", "user": "alice", "threshold": 80, "spend": Decimal("8.123456789"), "limit": 10,
        "period_start": alert.period_start.isoformat().replace("+00:00", "Z"),
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
    }
    assert request.headers["X-Budget-Alert-Id"] == str(alert.pk)
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error, alert.next_attempt_at) == (1, "", None)
    assert alert.delivered_at is not None


def test_a_stale_timestamp_fails_verification(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    request = alerts.webhook_request(Alert.objects.get(), hooked, timestamp=1_000_000_000)
    headers = dict(request.header_items())
    headers = {"X-Budget-Timestamp": headers["X-budget-timestamp"], "X-Budget-Signature": headers["X-budget-signature"]}
    assert not alerts.verify_signature(hooked.webhook_secret, headers, request.data)


def test_a_failing_webhook_is_retried_with_backoff_until_it_answers(hooked, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    with WebhookReceiver([500, 503]) as receiver:
        use_receiver(hooked, receiver)
        first = alerts.alert_deliver(alert_id=alert.pk)
        assert (first.status, first.retry_in) == ("failed", 30)
        alert.refresh_from_db()
        assert (alert.attempts, alert.last_error, alert.delivered_at) == (1, "webhook answered HTTP 500", None)
        assert alert.next_attempt_at == datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
        # Too early: the backoff holds it.
        assert alerts.alert_deliver(alert_id=alert.pk).status == "skipped"

        time_machine.move_to("2026-03-10 12:00:30+00:00", tick=False)
        assert alerts.alert_deliver(alert_id=alert.pk).retry_in == 60
        time_machine.move_to("2026-03-10 12:01:30+00:00", tick=False)
        assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"

    assert len(receiver.received) == 3
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error) == (3, "")
    assert alert.delivered_at == datetime(2026, 3, 10, 12, 1, 30, tzinfo=UTC)


def test_delivery_gives_up_after_the_last_attempt(hooked, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    with WebhookReceiver([500] * 10) as receiver:
        use_receiver(hooked, receiver)
        for _ in range(alerts.MAX_ATTEMPTS):
            result = alerts.alert_deliver(alert_id=alert.pk)
            time_machine.shift(timedelta(hours=1))
    assert (result.status, result.retry_in) == ("failed", None)
    assert len(receiver.received) == alerts.MAX_ATTEMPTS
    assert alerts.alert_deliver(alert_id=alert.pk).status == "skipped"
    assert alerts.alerts_requeue() == 0
    alert.refresh_from_db()
    assert (alert.attempts, alert.delivered_at, alert.next_attempt_at) == (alerts.MAX_ATTEMPTS, None, None)


def test_an_unreachable_webhook_is_a_failed_attempt(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")  # the URL points at port 9, where nothing listens
    result = alerts.alert_deliver(alert_id=Alert.objects.get().pk)
    assert result.status == "failed"
    assert "webhook failed" in Alert.objects.get().last_error


def test_a_second_worker_picking_the_same_alert_does_not_send_it_again(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    second: list[str] = []
    # While the first delivery is sending, another worker tries the same alert.
    with WebhookReceiver() as receiver:
        use_receiver(hooked, receiver)
        send = alerts.webhook_send

        def send_while_another_worker_tries(alert_obj, project):
            second.append(alerts.alert_deliver(alert_id=alert.pk).status)
            send(alert_obj, project)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(alerts, "webhook_send", send_while_another_worker_tries)
            first = alerts.alert_deliver(alert_id=alert.pk)
        again = alerts.alert_deliver(alert_id=alert.pk)

    assert (first.status, second, again.status) == ("delivered", ["skipped"], "skipped")
    assert len(receiver.received) == 1
    assert Alert.objects.get().attempts == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_send_an_alert_once(hooked, make_budget, queued):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    start = threading.Barrier(4)
    statuses: list[str] = []

    def deliver() -> None:
        try:
            start.wait()
            statuses.append(alerts.alert_deliver(alert_id=alert.pk).status)
        finally:
            connection.close()

    with WebhookReceiver(delay=0.3) as receiver:
        use_receiver(hooked, receiver)
        threads = [threading.Thread(target=deliver) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert sorted(statuses) == ["delivered", "skipped", "skipped", "skipped"]
    assert len(receiver.received) == 1


def test_an_email_goes_to_the_project_address(project, make_budget, queued):
    Project.objects.filter(pk=project.pk).update(alert_email="ops@example.com")
    project.refresh_from_db()
    make_budget("alice", total_budget="10")
    spend(project, "alice", "10")

    for alert in Alert.objects.order_by("threshold"):
        assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"

    assert [m.to for m in mail.outbox] == [["ops@example.com"], ["ops@example.com"]]
    assert mail.outbox[0].subject == "[Budget Manager] acme: user 'alice' reached 80% of the budget"
    assert "$10.000000000000 of $10.000000000000" in mail.outbox[1].body


def test_a_failing_email_is_retried_when_it_is_the_only_channel(project, make_budget, queued, settings):
    settings.EMAIL_BACKEND = "tests.test_alerts.BrokenEmailBackend"
    Project.objects.filter(pk=project.pk).update(alert_email="ops@example.com")
    project.refresh_from_db()
    make_budget("alice", total_budget="10")
    spend(project, "alice", "9")

    result = alerts.alert_deliver(alert_id=Alert.objects.get().pk)

    assert (result.status, result.retry_in) == ("failed", 30)
    assert Alert.objects.get().last_error == "email failed: SMTP server is down"


def test_a_failing_email_after_a_delivered_webhook_does_not_resend_the_webhook(hooked, make_budget, queued,
                                                                                settings):
    settings.EMAIL_BACKEND = "tests.test_alerts.BrokenEmailBackend"
    Project.objects.filter(pk=hooked.pk).update(alert_email="ops@example.com")
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    with WebhookReceiver() as receiver:
        use_receiver(hooked, receiver)
        result = alerts.alert_deliver(alert_id=Alert.objects.get().pk)

    assert result.status == "delivered"
    alert = Alert.objects.get()
    assert alert.delivered_at is not None
    assert alert.last_error == "email not sent: email failed: SMTP server is down"
    assert len(receiver.received) == 1


class BrokenEmailBackend:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("SMTP server is down")


# --- the outbox -----------------------------------------------------------------------------


def test_the_outbox_requeues_only_undelivered_alerts_older_than_a_minute(hooked, make_budget, queued,
                                                                        time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("old", total_budget="10")
    make_budget("backing-off", total_budget="10")
    make_budget("delivered", total_budget="10")
    for user in ("old", "backing-off", "delivered"):
        spend(hooked, user, "9")
    Alert.objects.filter(user_id="backing-off").update(attempts=1,
                                                       next_attempt_at=datetime(2026, 3, 10, 12, 5, tzinfo=UTC))
    Alert.objects.filter(user_id="delivered").update(delivered_at=now())
    time_machine.move_to("2026-03-10 12:00:59+00:00", tick=False)
    make_budget("fresh", total_budget="10")
    spend(hooked, "fresh", "9")

    time_machine.move_to("2026-03-10 12:01:30+00:00", tick=False)
    assert alerts.alerts_requeue() == 1
    assert queued == [Alert.objects.get(user_id="old").pk]


def test_the_outbox_stops_when_the_broker_refuses(hooked, make_budget, monkeypatch, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    make_budget("bob", total_budget="10")
    spend(hooked, "alice", "9")
    spend(hooked, "bob", "9")
    monkeypatch.setattr(alerts, "queue_delivery", lambda alert_id, **options: False)
    time_machine.move_to("2026-03-10 12:05:00+00:00", tick=False)
    assert alerts.alerts_requeue() == 0


def test_retrying_an_alert_from_the_admin_gives_it_new_attempts(hooked, make_budget, queued,
                                                                django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    Alert.objects.filter(pk=alert.pk).update(attempts=alerts.MAX_ATTEMPTS, last_error="webhook answered HTTP 500")
    alert.refresh_from_db()

    with django_capture_on_commit_callbacks(execute=True):
        assert alerts.alert_retry(alert=alert, actor="admin:staff")

    assert (alert.attempts, alert.last_error, alert.next_attempt_at) == (0, "", None)
    assert queued == [alert.pk]
    audit = AuditLog.objects.get(action="alert_retry")
    assert (audit.actor, audit.before["attempts"]) == ("admin:staff", alerts.MAX_ATTEMPTS)


def test_support_staff_can_retry_alerts_from_the_admin(hooked, make_budget, queued, admin_client,
                                                      django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    spend(hooked, "alice", "9")
    alert = Alert.objects.get()
    Alert.objects.filter(pk=alert.pk).update(attempts=alerts.MAX_ATTEMPTS)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/budgets/alert/", {
            "action": "retry_delivery", "_selected_action": [alert.pk]})

    assert response.status_code == 302
    assert Alert.objects.get().attempts == 0
    assert queued == [alert.pk]
    assert AuditLog.objects.get(action="alert_retry").actor == "admin:admin"
