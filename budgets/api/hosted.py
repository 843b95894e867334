"""LiteLLM's hosted BudgetManager protocol at the site root: POST /get_budget, POST /set_budget.

The real client (`litellm.BudgetManager(client_type="hosted", api_base=..., headers=...)`)
raises on any non-2xx answer and reads `status` otherwise, so errors are loud: 401 for a
missing or bad key, 403 for another project's name, 400 `{"status": "error", "message": ...}`
for a bad body (nothing written). The merge rule is in budgets.services.hosted.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DataError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..base.errors import BudgetError, Forbidden, InvalidInput, PayloadTooLarge, TooManyRequests
from ..domain.codec import CONTENT_TYPE, loads
from ..domain.litellm_records import parse_user_dict
from ..models import Project
from ..services.hosted import hosted_budget_json, hosted_budget_set
from .auth import api_key_required, request_actor
from .errors import (
    OUT_OF_RANGE_MESSAGE,
    UNAUTHORIZED_MESSAGE,
    hosted_error_response,
    json_response,
    too_many_requests_response,
    unavailable_response,
)

logger = logging.getLogger(__name__)
ZERO = Decimal(0)


def _unauthorized() -> HttpResponse:
    response = hosted_error_response(401, UNAUTHORIZED_MESSAGE)
    response["WWW-Authenticate"] = 'Bearer realm="budget-manager"'
    return response


def hosted_view(view: Callable[[HttpRequest, Project, dict], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """POST only, API key, JSON object body naming the key's project; errors in the hosted shape."""

    @csrf_exempt
    def wrapped(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            response = hosted_error_response(405, f"{request.method} is not allowed here; use POST")
            response["Allow"] = "POST"
            return response
        try:
            return authenticated(request)
        except TooManyRequests as exc:
            return too_many_requests_response(exc, hosted=True)
        except (OperationalError, InterfaceError) as exc:
            return unavailable_response(request, exc, hosted=True)

    @api_key_required(_unauthorized)
    def authenticated(request: HttpRequest) -> HttpResponse:
        try:
            with _collector_paused():
                return _answer(request)
        except BudgetError as exc:
            return hosted_error_response(exc.status, exc.message)
        except (DataError, OverflowError):
            return hosted_error_response(400, OUT_OF_RANGE_MESSAGE)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("hosted protocol error on %s", request.path)
            return hosted_error_response(500, "internal server error")

    def _answer(request: HttpRequest) -> HttpResponse:
        body = _body(request)
        project = request.project  # type: ignore[attr-defined]
        name = body.get("project_name")
        if not isinstance(name, str):
            raise InvalidInput("project_name must be a string")
        if name != project.name:
            raise Forbidden(f"this API key belongs to project {project.name!r}, not {name!r}")
        return view(request, project, body)

    wrapped.__name__ = wrapped.__qualname__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a call parses, compares and answers a whole dict.

    A 100k-user body is over a million objects, none of them in a cycle (reference counting frees them); the
    collector's passes over them, each longer as the dict grows, were a quarter of parsing it. On again after.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _body(request: HttpRequest) -> dict[str, Any]:
    """The JSON body, read here rather than through request.body and its 1 MiB limit.

    The client sends its whole user_dict in every save, so these two endpoints have their
    own limit, settings.HOSTED_MAX_BODY_BYTES; the native API keeps Django's.
    """
    limit = settings.HOSTED_MAX_BODY_BYTES
    too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes (HOSTED_MAX_BODY_BYTES)")
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None
    if length > limit:
        raise too_large
    # The stream, not request.body (Django's 1 MiB limit); after a read of request.body the stream
    # is that body again, so this holds whoever read first.
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    body = loads(raw)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


@hosted_view
def get_budget(request: HttpRequest, project: Project, body: dict[str, Any]) -> HttpResponse:
    """`{"project_name"}` → `{"status": "success", "data": {user: record}}`."""
    data = hosted_budget_json(project=project)  # JSON text, built by the database on PostgreSQL
    return HttpResponse('{"status":"success","data":' + data + "}", content_type=CONTENT_TYPE)


@hosted_view
def set_budget(request: HttpRequest, project: Project, body: dict[str, Any]) -> HttpResponse:
    """`{"project_name", "user_dict"}` → `{"status": "success"}`; merged as budgets.services.hosted says."""
    if "user_dict" not in body:
        raise InvalidInput("user_dict is required")
    records = parse_user_dict(body["user_dict"])
    hosted_budget_set(project=project, records=records, actor=request_actor(request, via="hosted"))
    return json_response({"status": "success"})
