"""API key authentication, written once for the native API and the hosted protocol.

`Authorization: Bearer bm_...` names a project's active key; the key opens its own
project and nothing else. `api_key_auth` is a ninja auth class instance (the native
API); `api_key_required` wraps a plain Django view (the LiteLLM hosted protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja.security import HttpBearer

from . import services
from .models import ApiKey

UNAUTHORIZED_MESSAGE = "a valid API key is required: send the header 'Authorization: Bearer bm_...'"


class ApiKeyAuth(HttpBearer):
    """A project API key as a bearer token; sets request.api_key and request.project."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = services.api_key_authenticate(token.strip())
        if key is None:
            return None
        # A project whose spend period has ended starts its new one before anything reads it.
        services.project_refresh(key.project)
        request.api_key = key  # type: ignore[attr-defined]
        request.project = key.project  # type: ignore[attr-defined]
        return key


api_key_auth = ApiKeyAuth()


def actor_of(key: ApiKey) -> str:
    """How the audit log names a change made with this key."""
    return f"key:{key.prefix}"


def api_key_required(unauthorized: Callable[[HttpRequest], HttpResponse]) -> Callable:
    """Decorate a plain view: answer `unauthorized(request)` unless the request carries an active key."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not api_key_auth(request):
                return unauthorized(request)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
