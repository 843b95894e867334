"""The native API's plumbing: one error shape, exception handlers, JSON 404/405, local docs.

Every error the API answers is `{"error": {"type": "...", "message": "..."}}` (plus
`scope` for budget_exceeded and `details` for validation errors) with a 4xx status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ClassVar

import ninja
from django.core.exceptions import RequestDataTooBig
from django.db import DataError
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
)
from django.template import engines
from django.urls import URLPattern, re_path, reverse
from ninja import NinjaAPI
from ninja.errors import (
    AuthenticationError,
    AuthorizationError,
    HttpError,
    ValidationError,
)
from ninja.openapi.docs import DocsBase

from .api_json import CONTENT_TYPE, dumps
from .errors import BudgetError, BudgetExceeded, PayloadTooLarge

logger = logging.getLogger(__name__)

TYPE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "too_many_requests",
}


def error_response(status: int, type_: str, message: str, **extra: Any) -> HttpResponse:
    body: dict[str, Any] = {"type": type_, "message": message}
    body.update({key: value for key, value in extra.items() if value is not None})
    return HttpResponse(dumps({"error": body}), status=status, content_type=CONTENT_TYPE)


def budget_error_response(exc: BudgetError) -> HttpResponse:
    scope = exc.scope if isinstance(exc, BudgetExceeded) else None
    return error_response(exc.status, exc.type, exc.message, scope=scope)


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


def http_error_response(exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    if isinstance(cause, RequestDataTooBig):
        return payload_too_large_response()
    if isinstance(cause, BudgetError):
        return budget_error_response(cause)
    return error_response(exc.status_code, TYPE_BY_STATUS.get(exc.status_code, "error"), exc.message)


def payload_too_large_response() -> HttpResponse:
    return budget_error_response(PayloadTooLarge("the request body is larger than 1 MiB"))


def unauthorized_response(message: str) -> HttpResponse:
    response = error_response(401, "unauthorized", message)
    response["WWW-Authenticate"] = 'Bearer realm="budget-manager"'
    return response


def install_exception_handlers(api: NinjaAPI, unauthorized_message: str) -> None:
    """Map every exception an operation can raise to the one error shape."""

    def handle(exc_class: type[Exception]) -> Callable:
        def register(func: Callable[[Any], HttpResponse]) -> Callable:
            api.add_exception_handler(exc_class, lambda request, exc: func(exc))
            return func

        return register

    handle(BudgetError)(budget_error_response)
    handle(ValidationError)(validation_error_response)
    handle(HttpError)(http_error_response)
    handle(AuthenticationError)(lambda exc: unauthorized_response(unauthorized_message))
    handle(AuthorizationError)(lambda exc: error_response(403, "forbidden", exc.message))
    handle(Http404)(lambda exc: error_response(404, "not_found", str(exc) or "not found"))
    handle(RequestDataTooBig)(lambda exc: payload_too_large_response())
    # A value past what the database holds (an amount over SQLite's ~$9.2M or PostgreSQL's
    # 10^12, a date before year 1 in UTC): the transaction rolled back, nothing was written.
    handle(DataError)(lambda exc: error_response(400, "validation_error", "a value is out of range"))
    handle(OverflowError)(lambda exc: error_response(400, "validation_error", "a value is out of range"))

    def server_error(request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")

    api.add_exception_handler(Exception, server_error)


def json_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a URL pattern's view: JSON for 405 and 404 answers that bypass the handlers."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # NUL is a valid URL escape (%00) but no database column holds it.
        if "\x00" in request.path_info or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            return error_response(400, "validation_error", "the URL must not contain NUL characters")
        try:
            response = view(request, *args, **kwargs)
        except Http404 as exc:
            return error_response(404, "not_found", str(exc) or "not found")
        if isinstance(response, HttpResponseNotAllowed):
            allowed = response["Allow"]
            answer = error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}")
            answer["Allow"] = allowed
            return answer
        return response

    return wrapped


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(404, "not_found", f"no API endpoint at {request.path}")


class BudgetAPI(NinjaAPI):
    """NinjaAPI whose every URL answers errors as JSON, with a JSON 404 for unknown routes."""

    def _get_urls(self) -> list:
        patterns = super()._get_urls()
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                pattern.callback = json_errors(pattern.callback)
        patterns.append(re_path(r"^.*$", json_errors(not_found), name="not-found"))
        return patterns


# --- interactive docs, served from ninja's own files (no CDN) -----------------------------------

NINJA_STATIC = Path(ninja.__file__).resolve().parent / "static" / "ninja"
DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-init.js": "text/javascript",
    "favicon.png": "image/png",
}
DOCS_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>{{ title }}</title>
  <link rel="stylesheet" href="{{ assets }}swagger-ui.css">
  <link rel="icon" href="{{ assets }}favicon.png" type="image/png">
</head>
<body data-csrf-token="" data-api-csrf="">
  <script type="application/json" id="swagger-settings">{{ settings_json|safe }}</script>
  <div id="swagger-ui"></div>
  <script src="{{ assets }}swagger-ui-bundle.js"></script>
  <script src="{{ assets }}swagger-ui-init.js"></script>
</body>
</html>
"""


class LocalSwagger(DocsBase):
    """Swagger UI from ninja's bundled files, served by this app.

    ninja renders its CDN template unless "ninja" is in INSTALLED_APPS (and then needs
    collectstatic); this serves the same files through `docs_asset` instead, so the docs
    work offline with no settings change.
    """

    settings: ClassVar[dict[str, Any]] = {"layout": "BaseLayout", "deepLinking": True}

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        settings = {**self.settings, "url": self.get_openapi_url(api, kwargs)}
        # In a <script> element, "</" must not appear; \u003c keeps the JSON valid.
        settings_json = json.dumps(settings).replace("<", "\\u003c")
        assets = reverse(f"{api.urls_namespace}:docs_asset", kwargs={"name": "x"})[:-1]
        template = engines["django"].from_string(DOCS_TEMPLATE)
        html = template.render({"title": api.title, "assets": assets, "settings_json": settings_json})
        return HttpResponse(html)


def docs_asset_response(name: str) -> HttpResponse:
    if name not in DOCS_ASSETS:
        raise Http404(f"no docs asset {name!r}")
    response = FileResponse((NINJA_STATIC / name).open("rb"), content_type=DOCS_ASSETS[name])
    response["Cache-Control"] = "public, max-age=86400"
    return response
