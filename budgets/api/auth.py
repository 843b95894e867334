"""API key authentication, once for the native API and the hosted protocol.

`Authorization: Bearer bm_...` names a project's active key; the key opens its own
project and nothing else. Authentication reads; the only write is the throttled
`last_used_at` stamp, done by its service.

Failed authentications are counted per client address in Django's cache (shared by every
web process through Redis; without Redis each process counts its own): past
API_AUTH_FAILURE_LIMIT in a minute, a wrong or unknown key from that address gets 429 with
Retry-After until the minute is over. A valid key is always served, whatever its address
did: behind a load balancer many clients share one address, and one guesser must not lock
out the others. A request with a valid key never touches the counter.

The client address is REMOTE_ADDR, or with TRUSTED_PROXY_HEADER set the entry of that header
written by the outermost of TRUSTED_PROXY_COUNT trusted proxies (entries before it were written
by the client and are ignored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from ninja.security import HttpBearer

from ..base.errors import TooManyRequests
from ..models import ApiKey, Project
from ..selectors.budgets import active_api_key, cache_breaker, remembered_api_key
from ..services.audit import actor_for_key
from ..services.keys import api_key_mark_used

FAILURE_WINDOW_SECONDS = 60
logger = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """The address failures are counted by: REMOTE_ADDR, or the trusted proxy header's client entry."""
    header = getattr(settings, "TRUSTED_PROXY_HEADER", "")
    if header:
        forwarded = request.META.get("HTTP_" + header.upper().replace("-", "_"), "")
        hops = [hop.strip() for hop in str(forwarded).split(",") if hop.strip()]
        count = int(getattr(settings, "TRUSTED_PROXY_COUNT", 1))
        if len(hops) >= count:
            return hops[-count]
    # No header (or fewer entries than proxies): the request did not come through them all.
    return str(request.META.get("REMOTE_ADDR", ""))


def _failure_counter(request: HttpRequest) -> tuple[str, int]:
    """The cache key counting this address's failures in the current minute, and the seconds it has left."""
    now = time.time()
    window = int(now // FAILURE_WINDOW_SECONDS)
    left = max(1, int((window + 1) * FAILURE_WINDOW_SECONDS - now + 0.999))
    return f"budgets:api-auth-failures:{client_address(request)}:{window}", left


breaker = cache_breaker  # shared with the key generation read: one outage, one pause


def count_failure(request: HttpRequest) -> None:
    """Count a failed authentication from this address; TooManyRequests once it is over the limit."""
    if not breaker.available():
        return
    key, left = _failure_counter(request)
    try:
        failures = 1
        if not cache.add(key, 1, FAILURE_WINDOW_SECONDS * 2):
            try:
                failures = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, FAILURE_WINDOW_SECONDS * 2)
    except Exception as exc:  # Redis down or hung: never fail (or stall) the request for it
        breaker.failed(exc)
        return
    if failures > settings.API_AUTH_FAILURE_LIMIT:
        raise TooManyRequests(f"too many failed authentications from this address; retry in {left} s",
                              retry_after=left)


class ApiKeyAuth(HttpBearer):
    """A project API key as a bearer token; sets request.api_key and request.project."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        raw = token.strip()
        key = remembered_api_key(raw) or active_api_key(raw)
        if key is None:
            count_failure(request)  # 429 past the limit, else ninja's 401
            return None
        api_key_mark_used(key)
        request.api_key = key  # type: ignore[attr-defined]
        request.project = key.project  # type: ignore[attr-defined]
        return key


api_key_auth = ApiKeyAuth()


def request_project(request: HttpRequest) -> Project:
    return request.auth.project  # type: ignore[attr-defined]


def request_actor(request: HttpRequest, *, via: str | None = None) -> str:
    """How the audit log names a change made with the request's key."""
    return actor_for_key(request.api_key, via=via)  # type: ignore[attr-defined]


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
