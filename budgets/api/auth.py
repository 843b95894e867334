"""API key authentication, once for the native API and the hosted protocol.

`Authorization: Bearer bm_...` names a project's active key; the key opens its own
project and nothing else. Authentication reads; the only write is the throttled
`last_used_at` stamp, done by its service.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja.security import HttpBearer

from .. import selectors, services
from ..models import ApiKey, Project


class ApiKeyAuth(HttpBearer):
    """A project API key as a bearer token; sets request.api_key and request.project."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = selectors.active_api_key(token.strip())
        if key is None:
            return None
        services.api_key_mark_used(key)
        request.api_key = key  # type: ignore[attr-defined]
        request.project = key.project  # type: ignore[attr-defined]
        return key


api_key_auth = ApiKeyAuth()


def request_project(request: HttpRequest) -> Project:
    return request.auth.project  # type: ignore[attr-defined]


def request_actor(request: HttpRequest, *, via: str | None = None) -> str:
    """How the audit log names a change made with the request's key."""
    return services.actor_for_key(request.api_key, via=via)  # type: ignore[attr-defined]


def api_key_required(unauthorized: Callable[[], HttpResponse]) -> Callable:
    """Decorate a plain view: answer `unauthorized()` unless the request carries an active key."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not api_key_auth(request):
                return unauthorized()
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
