"""LiteLLM's hosted BudgetManager protocol at the site root: POST /get_budget, POST /set_budget.

The real client (`litellm.BudgetManager(client_type="hosted", api_base=..., headers=...)`)
raises on any non-2xx answer and reads `status` otherwise, so errors are loud: 401 for a
missing or bad key, 403 for another project's name, 400 `{"status": "error", "message": ...}`
for a bad body (nothing written). Also GET /healthz. The merge rule is in budgets.hosted_sync.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError, connection
from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from . import hosted_sync
from .api_json import CONTENT_TYPE, dumps, loads
from .auth import UNAUTHORIZED_MESSAGE, actor_of, api_key_required
from .errors import BudgetError, InvalidInput, PayloadTooLarge
from .models import Project

logger = logging.getLogger(__name__)


class Forbidden(BudgetError):
    type = "forbidden"
    status = 403


def _answer(body: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(body), status=status, content_type=CONTENT_TYPE)


def _error(status: int, message: str) -> HttpResponse:
    return _answer({"status": "error", "message": message}, status)


def _unauthorized(request: HttpRequest) -> HttpResponse:
    response = _error(401, UNAUTHORIZED_MESSAGE)
    response["WWW-Authenticate"] = 'Bearer realm="budget-manager"'
    return response


def hosted_view(view: Callable[[HttpRequest, Project, dict], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """POST only, API key, JSON object body naming the key's project; errors in the hosted shape."""

    @csrf_exempt
    def wrapped(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            response = _error(405, f"{request.method} is not allowed here; use POST")
            response["Allow"] = "POST"
            return response
        return authenticated(request)

    @api_key_required(_unauthorized)
    def authenticated(request: HttpRequest) -> HttpResponse:
        try:
            body = _body(request)
            project = request.project  # type: ignore[attr-defined]
            name = body.get("project_name")
            if not isinstance(name, str):
                raise InvalidInput("project_name must be a string")
            if name != project.name:
                raise Forbidden(f"this API key belongs to project {project.name!r}, not {name!r}")
            return view(request, project, body)
        except BudgetError as exc:
            return _error(exc.status, exc.message)
        except (DataError, OverflowError):
            return _error(400, "a value is out of range")
        except Exception:
            logger.exception("hosted protocol error on %s", request.path)
            return _error(500, "internal server error")

    wrapped.__name__ = wrapped.__qualname__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge("the request body is larger than 1 MiB") from None
    body = loads(raw)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


@hosted_view
def get_budget(request: HttpRequest, project: Project, body: dict[str, Any]) -> HttpResponse:
    """`{"project_name"}` → `{"status": "success", "data": {user: record}}`."""
    return _answer({"status": "success", "data": hosted_sync.hosted_budget_get(project=project)})


@hosted_view
def set_budget(request: HttpRequest, project: Project, body: dict[str, Any]) -> HttpResponse:
    """`{"project_name", "user_dict"}` → `{"status": "success"}`; merged as budgets.hosted_sync says."""
    if "user_dict" not in body:
        raise InvalidInput("user_dict is required")
    hosted_sync.hosted_budget_set(project=project, user_dict=body["user_dict"],
                                  actor=f"hosted:{actor_of(request.api_key)}")  # type: ignore[attr-defined]
    return _answer({"status": "success"})


def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database answers, 503 otherwise; no authentication."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        logger.exception("health check: the database does not answer")
        return _answer({"status": "error", "message": "the database does not answer"}, 503)
    return _answer({"status": "ok"})


urlpatterns = [
    # The client posts to api_base + "/get_budget": an api_base ending in "/" gives "//get_budget".
    # (?:/)? rather than /? so Django's check does not mistake it for a needless leading slash.
    re_path(r"^(?:/)?get_budget/?$", get_budget, name="hosted_get_budget"),
    re_path(r"^(?:/)?set_budget/?$", set_budget, name="hosted_set_budget"),
    path("healthz", healthz, name="healthz"),
]
