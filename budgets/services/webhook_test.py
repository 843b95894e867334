"""A test webhook from the console: one signed request to the project's webhook URL, and what came back.

It is signed exactly like an alert (services.alerts: the same secret, headers and HMAC), so a
receiver can check its verification before a real alert arrives. Nothing is retried or queued.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from django.utils.timezone import now as utcnow

from ..codec import dumps
from ..errors import InvalidInput
from ..models import Project
from .alerts import ALERT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_TIMEOUT, signature
from .alerts import _opener as no_redirect_opener  # a redirected POST is a failure, like for alerts
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
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with no_redirect_opener.open(request, timeout=WEBHOOK_TIMEOUT) as response:
            result.status = response.status
            result.answer_headers = dict(response.headers.items())
            result.answer = response.read(ANSWER_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        result.status = exc.code
        result.answer_headers = dict(exc.headers.items()) if exc.headers else {}
        result.answer = exc.read(ANSWER_BYTES).decode("utf-8", "replace") if exc.fp else ""
        if 300 <= exc.code < 400:
            result.error = "the webhook answered with a redirect; alerts are not redirected"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        result.error = f"webhook unreachable: {getattr(exc, 'reason', exc)}"
    write_audit(project_id=project.pk, action="webhook_test", actor=actor,
                after={"url": url, "status": result.status, "error": result.error})
    return result
