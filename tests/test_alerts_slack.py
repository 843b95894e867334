"""Slack alerts: a project's incoming webhook gets every alert as a Block Kit message, once, retried like webhooks."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.base.errors import InvalidInput
from budgets.domain.slack import mask_url, slack_message
from budgets.domain.usage import Usage
from budgets.models import Alert, AuditLog, Project, Role
from budgets.services import alerts
from tests.celery_support import WebhookReceiver

pytestmark = pytest.mark.django_db

User = get_user_model()
SLACK_URL = "https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnopqrstuvwx"


def spend(project: Project, user: str, dollars: str):
    return services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0),
                                cost=Decimal(dollars), source="api")


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Alert ids handed to the broker (nothing is really queued)."""
    ids: list[int] = []
    monkeypatch.setattr(alerts, "queue_delivery", lambda alert_id, **options: ids.append(alert_id) or True)
    return ids


@pytest.fixture
def connections(monkeypatch) -> list[tuple[str, int]]:
    """Every TCP connection the delivery opens (address, port): nothing may go anywhere but the receivers."""
    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        opened.append((address[0], address[1]))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return opened


def slack_to(project: Project, url: str) -> None:
    Project.objects.filter(pk=project.pk).update(slack_webhook_url=url)
    project.refresh_from_db()


def port_of(receiver: WebhookReceiver) -> int:
    return receiver.server.server_address[1]


# --- the message ------------------------------------------------------------------------------


def test_a_crossed_threshold_goes_to_slack_as_one_block_kit_message(project, make_budget, queued, connections):
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "8.5")
        alert = Alert.objects.get()
        result = alerts.alert_deliver(alert_id=alert.pk)

    assert result.status == "delivered"
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error, alert.webhook_sent_at) == (1, "", None)
    assert alert.delivered_at is not None and alert.slack_sent_at is not None
    (request,) = slack.received
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    message = request.json()
    assert message["text"] == "[acme] Alice reached 80% of the budget: $8.50 of $10.00"
    header, section, actions, context = message["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Alice reached 80% of the budget",
                                                 "emoji": False}}
    assert [field["text"] for field in section["fields"]] == [
        "*Project*\nacme", "*Budget*\nUser budget of alice", "*Spend / limit*\n$8.50 of $10.00 (85%)",
        "*Threshold*\n80%", f"*Period*\nsince {alert.period_start.day} {alert.period_start:%b %Y %H:%M} UTC",
    ]
    (button,) = actions["elements"]
    assert button["url"] == f"http://testserver/projects/{project.pk}/users/alice"
    assert button["text"]["text"] == "Open in Budget Manager"
    assert context["elements"][0]["text"].startswith(f"Budget Manager · alert {alert.pk} · raised ")
    assert connections == [("127.0.0.1", port_of(slack))]


def test_a_project_cap_alert_links_to_the_project(project, make_budget, queued):
    services.project_update(project=project, max_budget="20", alert_thresholds=[50], actor="test")
    make_budget("alice", total_budget="100")
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "12")
        assert alerts.alert_deliver(alert_id=Alert.objects.get(scope="project").pk).status == "delivered"

    message = slack.received[0].json()
    assert message["blocks"][0]["text"]["text"] == "The project reached 50% of its cap"
    assert "*Budget*\nProject cap" in [field["text"] for field in message["blocks"][1]["fields"]]
    assert message["blocks"][2]["elements"][0]["url"] == f"http://testserver/projects/{project.pk}/"


def test_without_a_site_url_the_message_has_no_button(project, make_budget, queued, settings):
    settings.SITE_URL = ""
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "9")
        alerts.alert_deliver(alert_id=Alert.objects.get().pk)

    assert [block["type"] for block in slack.received[0].json()["blocks"]] == ["header", "section", "context"]


def test_people_typed_text_cannot_mention_the_channel_or_inject_links():
    message = slack_message({"type": "budget.threshold_crossed", "project": "a&b", "scope": "user",
                             "user": "<!channel>", "threshold": 80, "spend": Decimal(8), "limit": Decimal(10)},
                            link=None)

    # Slack reads mentions and links in mrkdwn text and in the notification text; a header is plain text.
    mrkdwn = [message["text"]] + [field["text"] for field in message["blocks"][1]["fields"]]
    assert message["text"] == "[a&amp;b] &lt;!channel&gt; reached 80% of the budget: $8.00 of $10.00"
    assert not any("<" in text for text in mrkdwn)
    assert "*Project*\na&amp;b" in mrkdwn and "*Budget*\nUser budget of &lt;!channel&gt;" in mrkdwn
    assert message["blocks"][0]["text"] == {"type": "plain_text", "text": "<!channel> reached 80% of the budget",
                                            "emoji": False}


def test_an_alert_kind_added_later_renders_from_its_payload():
    # What a limit on a team's tokens per day might send: a scope, a subject, a unit, a window and a
    # field this module has never heard of.
    message = slack_message({"type": "limit.threshold_crossed", "alert_id": 7, "project": "acme", "scope": "team",
                             "subject": "ml", "threshold": 100, "spend": Decimal(1250), "limit": Decimal(1000),
                             "unit": "tokens", "window": "day", "period_start": "2026-03-10T00:00:00Z",
                             "model": "gpt-4o"}, link="https://budgets.example.com/projects/1/")

    header, section, actions, _ = message["blocks"]
    assert header["text"]["text"] == "Budget alert: limit.threshold_crossed"
    assert [field["text"] for field in section["fields"]] == [
        "*Project*\nacme", "*Budget*\nTeam limit ml", "*Spend / limit*\n1,250 tokens of 1,000 tokens (125%)",
        "*Threshold*\n100%", "*Period*\nDay, since 10 Mar 2026 00:00 UTC", "*Model*\ngpt-4o",
    ]
    assert actions["elements"][0]["url"] == "https://budgets.example.com/projects/1/"


def test_a_known_kind_with_a_new_scope_names_it():
    message = slack_message({"type": "budget.threshold_crossed", "project": "acme", "scope": "key",
                             "subject": "backend", "threshold": 90, "spend": Decimal(45), "limit": Decimal(50)},
                            link=None)

    assert message["blocks"][0]["text"]["text"] == "Key backend reached 90% of its limit"
    assert message["text"] == "[acme] Key backend reached 90% of its limit: $45.00 of $50.00"


def test_long_names_stay_within_slacks_limits():
    message = slack_message({"type": "budget.threshold_crossed", "scope": "user", "user": "u" * 400,
                             "threshold": 80, "spend": 1, "limit": 1, "note": "n" * 5000}, link=None)

    assert len(message["blocks"][0]["text"]["text"]) == 150
    assert all(len(field["text"]) <= 2000 for field in message["blocks"][1]["fields"])


# --- once, retried, each target on its own ------------------------------------------------------


def test_an_alert_goes_to_slack_once(project, make_budget, queued):
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        first = alerts.alert_deliver(alert_id=alert.pk)
        again = alerts.alert_deliver(alert_id=alert.pk)
        requeued = alerts.alerts_requeue(at=alert.created_at + timedelta(hours=1))

    assert (first.status, again.status, requeued) == ("delivered", "skipped", 0)
    assert len(slack.received) == 1


def test_a_slack_answering_500_is_retried_with_the_webhook_backoff(project, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    with WebhookReceiver([500]) as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        first = alerts.alert_deliver(alert_id=alert.pk)
        alert.refresh_from_db()
        assert (first.status, first.retry_in) == ("failed", 30)
        assert (alert.attempts, alert.last_error, alert.slack_sent_at) == (1, "Slack answered HTTP 500: ok", None)
        assert alert.next_attempt_at == datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
        assert alerts.alert_deliver(alert_id=alert.pk).status == "skipped"  # the backoff holds it

        time_machine.move_to("2026-03-10 12:00:30+00:00", tick=False)
        second = alerts.alert_deliver(alert_id=alert.pk)

    assert second.status == "delivered"
    assert len(slack.received) == 2
    assert slack.received[0].body == slack.received[1].body  # the same message, sent again
    alert.refresh_from_db()
    assert (alert.attempts, alert.last_error) == (2, "")
    assert alert.slack_sent_at == alert.delivered_at == datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)


def test_slack_gives_up_after_the_last_attempt_like_a_webhook(project, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    with WebhookReceiver([500] * 10) as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        for _ in range(alerts.MAX_ATTEMPTS):
            result = alerts.alert_deliver(alert_id=alert.pk)
            time_machine.shift(timedelta(hours=1))

    assert (result.status, result.retry_in) == ("failed", None)
    assert len(slack.received) == alerts.MAX_ATTEMPTS
    alert.refresh_from_db()
    assert (alert.delivered_at, alert.slack_sent_at) == (None, None)


def test_a_failing_slack_does_not_resend_the_webhook(project, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as hook, WebhookReceiver([500]) as slack:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=hook.url, slack_webhook_url=slack.url)
        project.refresh_from_db()
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        assert alerts.alert_deliver(alert_id=alert.pk).status == "failed"
        alert.refresh_from_db()
        assert alert.webhook_sent_at is not None and alert.slack_sent_at is None
        time_machine.shift(timedelta(seconds=30))
        assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"

    assert (len(hook.received), len(slack.received)) == (1, 2)
    assert hook.received[0].json()["type"] == "budget.threshold_crossed"  # the signed webhook is unchanged
    alert.refresh_from_db()
    assert alert.slack_sent_at is not None and alert.delivered_at is not None


def test_a_failing_webhook_does_not_resend_to_slack(project, make_budget, queued, time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    with WebhookReceiver([503]) as hook, WebhookReceiver() as slack:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=hook.url, slack_webhook_url=slack.url)
        project.refresh_from_db()
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        failed = alerts.alert_deliver(alert_id=alert.pk)
        time_machine.shift(timedelta(seconds=30))
        delivered = alerts.alert_deliver(alert_id=alert.pk)

    assert (failed.status, failed.error, delivered.status) == ("failed", "webhook answered HTTP 503", "delivered")
    assert (len(hook.received), len(slack.received)) == (2, 1)


def test_two_failing_targets_are_both_named_in_the_error(project, make_budget, queued):
    make_budget("alice", total_budget="10")
    with WebhookReceiver([500]) as hook, WebhookReceiver([404]) as slack:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=hook.url, slack_webhook_url=slack.url)
        project.refresh_from_db()
        spend(project, "alice", "9")
        result = alerts.alert_deliver(alert_id=Alert.objects.get().pk)

    assert result.error == "webhook answered HTTP 500; Slack answered HTTP 404: ok"
    assert (len(hook.received), len(slack.received)) == (1, 1)


def test_an_email_waits_until_slack_has_the_alert(project, make_budget, queued, time_machine, mailoutbox):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    make_budget("alice", total_budget="10")
    Project.objects.filter(pk=project.pk).update(alert_email="ops@example.com")
    project.refresh_from_db()
    with WebhookReceiver([500]) as slack:
        slack_to(project, slack.url)
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        alerts.alert_deliver(alert_id=alert.pk)
        assert mailoutbox == []
        time_machine.shift(timedelta(seconds=30))
        assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"

    assert [message.to for message in mailoutbox] == [["ops@example.com"]]


def test_no_slack_call_when_no_slack_url_is_set(project, make_budget, queued, connections):
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as hook:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=hook.url)
        project.refresh_from_db()
        spend(project, "alice", "9")
        alert = Alert.objects.get()
        assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"

    assert connections == [("127.0.0.1", port_of(hook))]
    alert.refresh_from_db()
    assert alert.webhook_sent_at is not None and alert.slack_sent_at is None


def test_a_project_with_only_slack_queues_its_alerts(project, make_budget, queued,
                                                     django_capture_on_commit_callbacks):
    make_budget("alice", total_budget="10")
    slack_to(project, SLACK_URL)
    with django_capture_on_commit_callbacks(execute=True):
        spend(project, "alice", "9")

    alert = Alert.objects.get()
    assert alert.delivered_at is None
    assert queued == [alert.pk]


def test_recording_through_the_api_queues_the_alert_for_slack(project, make_budget, queued, api,
                                                              django_capture_on_commit_callbacks):
    # The read of the project's figures with the budget (one statement on PostgreSQL) carries the Slack URL.
    make_budget("alice", total_budget="10")
    slack_to(project, SLACK_URL)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/users/alice/costs", {"model": "gpt-4o-mini", "cost": 9})

    assert response.status_code == 201
    assert queued == [Alert.objects.get().pk]


def test_a_slack_target_gets_the_send_time_check_too(project, make_budget, queued, settings, connections):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    make_budget("alice", total_budget="10")
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)  # saved before the rule
        spend(project, "alice", "9")
        result = alerts.alert_deliver(alert_id=Alert.objects.get().pk)

    assert result.status == "failed"
    assert result.error.startswith("Slack refused: ")
    assert slack.received == [] and connections == []


# --- saving the URL -----------------------------------------------------------------------------


def test_the_slack_url_is_saved_and_audited_only_by_its_mask(project):
    services.project_update(project=project, actor="test", slack_webhook_url=SLACK_URL)

    project.refresh_from_db()
    assert project.slack_webhook_url == SLACK_URL
    audit = AuditLog.objects.get(action="project_update")
    assert audit.after == {"slack_webhook_url": "https://hooks.slack.com/…uvwx"}
    assert "abcdefgh" not in json.dumps(audit.after)


@pytest.mark.parametrize("url", ["ftp://hooks.slack.com/x", "hooks", "https:///services/x", "x" * 501])
def test_a_slack_url_that_is_no_url_is_refused(project, url):
    with pytest.raises(InvalidInput, match="Slack webhook URL"):
        services.project_update(project=project, actor="test", slack_webhook_url=url)

    project.refresh_from_db()
    assert project.slack_webhook_url == ""
    assert not AuditLog.objects.filter(action="project_update").exists()


def test_production_takes_only_https_slack_urls(project, settings):
    settings.SLACK_WEBHOOK_HTTPS_ONLY = True
    with pytest.raises(InvalidInput, match="https://"):
        services.project_update(project=project, actor="test", slack_webhook_url="http://hooks.slack.com/services/x")

    project.refresh_from_db()
    assert project.slack_webhook_url == ""


def test_production_refuses_a_private_slack_target(project, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidInput, match="public address"):
        services.project_update(project=project, actor="test", slack_webhook_url="https://169.254.169.254/x")

    project.refresh_from_db()
    assert project.slack_webhook_url == ""


def test_the_mask_keeps_the_host_and_the_last_four_characters():
    assert mask_url(SLACK_URL) == "https://hooks.slack.com/…uvwx"
    assert mask_url("http://user:pw@[::1]:8080/secret-path") == "http://[::1]:8080/…path"
    assert mask_url("") == ""


# --- the console ----------------------------------------------------------------------------------


@pytest.fixture
def client_as(project):
    def make(role: str) -> Client:
        person = User.objects.create_user(role, password="pw-123456-x")
        services.member_add(project=project, user=person, role=role, actor="test")
        client = Client()
        client.force_login(person)
        return client

    return make


def post_alert_settings(client: Client, project: Project, **data: str):
    return client.post(reverse("alert_settings_save", args=[project.pk]), {"alert_thresholds": "80, 100", **data})


@pytest.mark.parametrize("role", [Role.OWNER, Role.MANAGER])
def test_owners_and_managers_set_the_slack_url_in_the_settings(project, client_as, role):
    response = post_alert_settings(client_as(role), project, slack_webhook_url=SLACK_URL)

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.slack_webhook_url == SLACK_URL
    assert AuditLog.objects.filter(action="project_update", actor=f"user:{role}").exists()


def test_a_viewer_cannot_set_the_slack_url(project, client_as):
    response = post_alert_settings(client_as(Role.VIEWER), project, slack_webhook_url=SLACK_URL)

    assert response.status_code == 403
    project.refresh_from_db()
    assert project.slack_webhook_url == ""
    assert not AuditLog.objects.filter(action="project_update").exists()


def test_the_settings_page_shows_the_slack_url_masked(project, client_as):
    slack_to(project, SLACK_URL)

    page = client_as(Role.OWNER).get(reverse("project_settings", args=[project.pk])).content.decode()

    assert "https://hooks.slack.com/…uvwx" in page
    assert "abcdefghijklmnop" not in page
    assert 'name="slack_remove"' in page


def test_saving_other_alert_settings_keeps_the_slack_url(project, client_as):
    slack_to(project, SLACK_URL)

    response = post_alert_settings(client_as(Role.OWNER), project, alert_email="ops@example.com")

    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.slack_webhook_url, project.alert_email) == (SLACK_URL, "ops@example.com")


def test_the_slack_url_can_be_removed(project, client_as):
    slack_to(project, SLACK_URL)

    response = post_alert_settings(client_as(Role.OWNER), project, slack_remove="on")

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.slack_webhook_url == ""


@pytest.mark.parametrize("data", [{"slack_webhook_url": "not a url"},
                                  {"slack_webhook_url": "ftp://hooks.slack.com/x"},
                                  {"slack_webhook_url": SLACK_URL, "slack_remove": "on"}])
def test_a_bad_slack_setting_is_refused_and_changes_nothing(project, client_as, data):
    slack_to(project, "https://hooks.slack.com/services/old")

    response = post_alert_settings(client_as(Role.OWNER), project, **data)

    assert response.status_code == 400
    project.refresh_from_db()
    assert project.slack_webhook_url == "https://hooks.slack.com/services/old"
    assert not AuditLog.objects.filter(action="project_update").exists()


def test_the_console_sends_a_test_message_to_slack(project, client_as):
    client = client_as(Role.MANAGER)
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        response = client.post(reverse("slack_test", args=[project.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="webhook-test-status">HTTP 200' in page
    assert f"http://127.0.0.1:{port_of(slack)}/…hook" in page
    (request,) = slack.received
    message = request.json()
    assert message["blocks"][0]["text"]["text"] == "Test message from Budget Manager"
    assert message["blocks"][-2]["elements"][0]["url"] == f"http://testserver/projects/{project.pk}/alerts/"
    audit = AuditLog.objects.get(action="slack_test")
    assert audit.after == {"url": f"http://127.0.0.1:{port_of(slack)}/…hook", "status": 200, "error": ""}
    assert not Alert.objects.exists()


def test_the_slack_test_without_a_url_is_refused(project, client_as):
    response = client_as(Role.OWNER).post(reverse("slack_test", args=[project.pk]))

    assert response.status_code == 400
    assert "no Slack webhook URL" in response.content.decode()
    assert not AuditLog.objects.filter(action="slack_test").exists()


def test_a_viewer_cannot_send_a_slack_test(project, client_as):
    with WebhookReceiver() as slack:
        slack_to(project, slack.url)
        response = client_as(Role.VIEWER).post(reverse("slack_test", args=[project.pk]))

    assert response.status_code == 403
    assert slack.received == []


def test_a_slack_url_never_reaches_a_log_line():
    from budgets.observability import redact

    assert redact(f"posting to {SLACK_URL} failed") == "posting to https://hooks.slack.com/services/[redacted] failed"
