"""One error module for every JSON surface: the native API's shape and the hosted protocol's.

The native API answers `{"error": {"type": "...", "message": "..."}}` (plus `scope` for
budget_exceeded and `details` for validation errors). LiteLLM's hosted client reads
`{"status": "error", "message": "..."}`, so the hosted protocol answers that shape with the
same statuses and texts. Unknown routes and wrong methods under /api/ answer JSON too
(`ApiErrorsMiddleware`), and a database that does not answer is a 503, never a 500.
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DataError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.utils.timezone import now as utcnow
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError

from ..base.errors import BudgetError, BudgetExceeded, PayloadTooLarge, TooManyRequests
from ..domain.codec import CONTENT_TYPE, dumps
from .schemas import fallback_json

logger = logging.getLogger(__name__)

UNAUTHORIZED_MESSAGE = "a valid API key is required: send the header 'Authorization: Bearer bm_...'"
OUT_OF_RANGE_MESSAGE = "a value is out of range"
UNAVAILABLE_MESSAGE = "the database is not answering; retry shortly"
RETRY_AFTER_SECONDS = 5
API_PREFIX = "/api/"

TYPE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "service_unavailable",
}


def json_response(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(body), status=status, content_type=CONTENT_TYPE)


def error_response(status: int, type_: str, message: str, *, nullable: dict[str, Any] | None = None,
                   **extra: Any) -> HttpResponse:
    """The one error shape; `extra` fields only when not None, `nullable` ones always (null included)."""
    body: dict[str, Any] = {"type": type_, "message": message}
    body.update({key: value for key, value in extra.items() if value is not None})
    body.update(nullable or {})
    return json_response({"error": body}, status)


def hosted_error_response(status: int, message: str) -> HttpResponse:
    """The hosted protocol's error shape (LiteLLM's client reads `status`)."""
    return json_response({"status": "error", "message": message}, status)


def too_many_requests_response(exc: TooManyRequests, *, hosted: bool = False) -> HttpResponse:
    if hosted:
        response = hosted_error_response(exc.status, exc.message)
    else:
        response = error_response(exc.status, exc.type, exc.message)
    response["Retry-After"] = str(exc.retry_after)
    return response


def budget_error_response(exc: BudgetError) -> HttpResponse:
    scope = exc.scope if isinstance(exc, BudgetExceeded) else None
    # budget_exceeded always says whether another model would fit (services.fallbacks): null if none.
    nullable = {"fallback": fallback_json(exc.fallback)} if isinstance(exc, BudgetExceeded) else None
    response = error_response(exc.status, exc.type, exc.message, scope=scope, nullable=nullable, **exc.extra())
    state = exc.state if isinstance(exc, BudgetExceeded) else None
    if state is not None and state.resets_at is not None:  # the limit without room has room again then
        response["Retry-After"] = str(max(1, math.ceil((state.resets_at - utcnow()).total_seconds())))
    return response


def _location(loc: Any) -> str:
    """"body.payload.total_budget" → "total_budget"; "query.limit" → "limit"."""
    parts = [str(part) for part in (loc or ())]
    if parts and parts[0] == "body":
        parts = parts[2:] if len(parts) > 1 else []
    elif parts and parts[0] in ("query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts)


def validation_error_response(exc: ValidationError) -> HttpResponse:
    details = []
    for error in exc.errors:
        where = _location(error.get("loc"))
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        details.append({"field": where or "body", "message": message})
    if not details:
        details = [{"field": "body", "message": "invalid request"}]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    if len(details) > 5:
        summary += f"; and {len(details) - 5} more"
    return error_response(400, "validation_error", summary, details=details)


def payload_too_large_response(limit_text: str = "1 MiB") -> HttpResponse:
    return budget_error_response(PayloadTooLarge(f"the request body is larger than {limit_text}"))


def http_error_response(exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    if isinstance(cause, RequestDataTooBig):
        return payload_too_large_response()
    if isinstance(cause, BudgetError):
        return budget_error_response(cause)
    return error_response(exc.status_code, TYPE_BY_STATUS.get(exc.status_code, "error"), exc.message)


def unauthorized_response() -> HttpResponse:
    response = error_response(401, "unauthorized", UNAUTHORIZED_MESSAGE)
    response["WWW-Authenticate"] = 'Bearer realm="budget-manager"'
    return response


class _OutageLog:
    """Logs a database outage once (with its cause), not once per request."""

    quiet_seconds = 60.0

    def __init__(self) -> None:
        self.last = 0.0

    def report(self, request: HttpRequest, exc: Any) -> None:
        at = time.monotonic()
        if at - self.last > self.quiet_seconds:
            logger.error("the database is not answering (%s on %s %s): answering 503 with Retry-After",
                         type(exc).__name__, request.method, request.path, exc_info=exc)
        self.last = at


outage_log = _OutageLog()


def unavailable_response(request: HttpRequest, exc: Any, *, hosted: bool = False) -> HttpResponse:
    outage_log.report(request, exc)
    if hosted:
        response = hosted_error_response(503, UNAVAILABLE_MESSAGE)
    else:
        response = error_response(503, "service_unavailable", UNAVAILABLE_MESSAGE)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def install_exception_handlers(api: NinjaAPI) -> None:
    """Map every exception an operation can raise to the one error shape."""

    def handle(exc_class: type[Exception], func: Callable[[Any], HttpResponse]) -> None:
        api.add_exception_handler(exc_class, lambda request, exc: func(exc))

    handle(BudgetError, budget_error_response)
    handle(TooManyRequests, too_many_requests_response)
    handle(ValidationError, validation_error_response)
    handle(HttpError, http_error_response)
    handle(AuthenticationError, lambda exc: unauthorized_response())
    handle(AuthorizationError, lambda exc: error_response(403, "forbidden", exc.message))
    handle(Http404, lambda exc: error_response(404, "not_found", str(exc) or "not found"))
    handle(RequestDataTooBig, lambda exc: payload_too_large_response())
    # A value past what the database holds (an amount over SQLite's ~$9.2M or PostgreSQL's
    # 10^12, a date before year 1 in UTC): the transaction rolled back, nothing was written.
    handle(DataError, lambda exc: error_response(400, "validation_error", OUT_OF_RANGE_MESSAGE))
    handle(OverflowError, lambda exc: error_response(400, "validation_error", OUT_OF_RANGE_MESSAGE))
    api.add_exception_handler(OperationalError, lambda request, exc: unavailable_response(request, exc))
    api.add_exception_handler(InterfaceError, lambda request, exc: unavailable_response(request, exc))

    def server_error(request: HttpRequest, exc: Any) -> HttpResponse:
        logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")

    api.add_exception_handler(Exception, server_error)


def _has_nul(request: HttpRequest) -> bool:
    return "\x00" in request.path_info or any(
        "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
    )


def _looks_like_a_sub_route(request: HttpRequest) -> bool:
    """`POST /api/v1/users/x/nope` reaches the bare `/users/{path:user}` route (ids may hold "/").

    That route takes GET and DELETE only; another method there with a "/" in the id is a
    mistyped sub-route (`/users/x/cost`), so it is an unknown endpoint, not a wrong method.
    """
    match = getattr(request, "resolver_match", None)
    return (match is not None and match.route.endswith("users/<path:user>")
            and "/" in str(match.kwargs.get("user", "")))


class ApiErrorsMiddleware:
    """Under /api/: JSON for what Django answers before or beside ninja (unknown route, 405, NUL).

    Django resolves an unknown route to its HTML 404 page and ninja answers a wrong method
    with a bare 405; an API client should get the one error shape for both.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        # NUL is a valid URL escape (%00) but no database column holds it.
        if _has_nul(request):
            return error_response(400, "validation_error", "the URL must not contain NUL characters")
        # Django's routes never match a newline; a user id cannot hold one (validate_user_id).
        if any(unicodedata.category(char) == "Cc" for char in request.path_info):
            return error_response(400, "validation_error", "the URL path must not contain control characters")
        response = self.get_response(request)
        if isinstance(response, HttpResponseNotAllowed) and _looks_like_a_sub_route(request):
            return error_response(404, "not_found", f"no API endpoint at {request.path}")
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            answer = error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}")
            answer["Allow"] = allowed
            return answer
        if response.status_code == 404 and not response.get("Content-Type", "").startswith("application/json"):
            return error_response(404, "not_found", f"no API endpoint at {request.path}")
        return response
