"""A test webhook from the console: one signed request to the project's webhook URL, and what came back.

It is signed exactly like an alert (services.alerts: the same secret, headers and HMAC), so a
receiver can check its verification before a real alert arrives. Its Slack twin posts a test
message to the project's Slack webhook, built like an alert's. Nothing is retried or queued.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field

from django.urls import reverse
from django.utils.timezone import now as utcnow

from ..base.errors import InvalidInput
from ..domain.codec import dumps
from ..domain.slack import TEST, mask_url, slack_message
from ..models import Project
from .alerts import (
    ALERT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryFailed,
    absolute_url,
    signature,
    slack_post,
    webhook_post,
)
from .audit import write_audit

ANSWER_BYTES = 2048
TEST_ALERT_ID = "test"


@dataclass
class WebhookTest:
    url: str
    headers: dict[str, str]
    body: str
    status: int | None = None
    answer: str = ""  # the first 2 KB of the answer's body
    answer_headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def webhook_test_payload(project: Project) -> dict[str, object]:
    return {"type": "budget.test", "alert_id": None, "project": project.name,
            "message": "A test from the Budget Manager console: verify the signature, then answer 2xx.",
            "created_at": utcnow()}


def alert_test_webhook(*, project: Project, actor: str) -> WebhookTest:
    """POST a signed test body to the project's webhook URL; the request and the answer, for the page."""
    url = project.alert_webhook_url
    if not url:
        raise InvalidInput("this project has no webhook URL: set one in Settings first")
    body = dumps(webhook_test_payload(project)).encode()
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "budget-manager-alerts/1",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: "sha256=" + signature(project.webhook_secret, stamp, body),
        ALERT_ID_HEADER: TEST_ALERT_ID,
    }
    result = WebhookTest(url=url, headers=headers, body=body.decode())
    # The same checked, pinned, unredirected POST as a real alert's (services.alerts.webhook_post).
    try:
        answer = webhook_post(url, body, headers, read_bytes=ANSWER_BYTES)
    except InvalidInput as exc:
        result.error = f"webhook refused: {exc.message}"
    except (http.client.HTTPException, OSError, ValueError) as exc:
        result.error = f"webhook unreachable: {getattr(exc, 'reason', exc)}"
    else:
        result.status = answer.status
        result.answer_headers = answer.headers
        result.answer = answer.body.decode("utf-8", "replace")
        if 300 <= answer.status < 400:
            result.error = "the webhook answered with a redirect; alerts are not redirected"
    write_audit(project_id=project.pk, action="webhook_test", actor=actor,
                after={"url": url, "status": result.status, "error": result.error})
    return result


def slack_test_payload(project: Project) -> dict[str, object]:
    return {"type": TEST, "alert_id": None, "project": project.name,
            "message": "A test from the Budget Manager console: budget alerts for this project will arrive here.",
            "created_at": utcnow()}


def alert_test_slack(*, project: Project, actor: str) -> WebhookTest:
    """POST a test message to the project's Slack webhook; the request (URL masked) and the answer."""
    url = project.slack_webhook_url
    if not url:
        raise InvalidInput("this project has no Slack webhook URL: set one in Settings first")
    message = slack_message(slack_test_payload(project),
                            link=absolute_url(reverse("alert_history", args=[project.pk])))
    body = dumps(message).encode()
    # The URL is the channel's secret: the page and the audit log show its mask.
    result = WebhookTest(url=mask_url(url), headers={"Content-Type": "application/json"}, body=body.decode())
    try:
        answer = slack_post(url, body)
    except DeliveryFailed as exc:
        result.error = str(exc)
    else:
        result.status = answer.status
        result.answer_headers = answer.headers
        result.answer = answer.body.decode("utf-8", "replace")
        if 300 <= answer.status < 400:
            result.error = "Slack answered with a redirect; alerts are not redirected"
    write_audit(project_id=project.pk, action="slack_test", actor=actor,
                after={"url": result.url, "status": result.status, "error": result.error})
    return result
