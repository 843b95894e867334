"""Request ids, JSON log lines and HTTP metrics: what an operator reads and scrapes.

`RequestMiddleware` gives every request an id (the caller's `X-Request-ID` when it is a
sane token, else a new one), returns it in the `X-Request-ID` header, puts it on every log
line written while the request runs, and counts the request and its latency by route.
`LOG_FORMAT=json` makes every log line a JSON object. API keys and webhook secrets never
reach a log line: `RedactSecrets` masks anything that looks like one.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from django.http import HttpRequest, HttpResponse

from . import metrics

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_id: ContextVar[str] = ContextVar("request_id", default="-")

# An API key (bm_ + 43 url-safe characters), a bearer token, a `secret=...` pair, or the secret path
# of a Slack incoming webhook (the URL is the credential).
_SECRETS = re.compile(
    r"(bm_)[A-Za-z0-9_-]{8,}|(Bearer\s+)\S+|((?:secret|password|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    r"|(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3) or m.group(4)) + "[redacted]", text)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RedactSecrets(logging.Filter):
    """Masks API keys, bearer tokens and secrets in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class RequestMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        token = request_id.set(given if _SANE_ID.match(given) else uuid.uuid4().hex)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id.get()
            # The route pattern, not the path: user ids must not become label values.
            match = getattr(request, "resolver_match", None)
            route = match.route if match is not None and match.route else "unmatched"
            metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
            metrics.HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
            return response
        finally:
            request_id.reset(token)
