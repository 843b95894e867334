"""API key authentication, once for the native API and the hosted protocol.

`Authorization: Bearer bm_...` names a project's active key; the key opens its own
project and nothing else. Authentication reads; the only write is the throttled
`last_used_at` stamp, done by its service.

Failed authentications are counted per client address in Django's cache (shared by every
web process through Redis): past API_AUTH_FAILURE_LIMIT in a minute, the address gets 429
with Retry-After until the minute is over, whatever key it sends, so keys cannot be guessed.

The counter is read before every key this process does not hold (every guess) and counted
after every failure. A key this process found active within API_KEY_CACHE_SECONDS skips the
round trip while this process learnt less than THROTTLE_RECHECK_SECONDS ago that its address
is under the limit: a request that needs no query then needs no Redis either, and an address
over the limit in another process is refused here too within that second.
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

from .. import selectors, services
from ..errors import TooManyRequests
from ..models import ApiKey, Project
from ..selectors.budgets import remembered_api_key

FAILURE_WINDOW_SECONDS = 60
THROTTLE_RECHECK_SECONDS = 1.0
logger = logging.getLogger(__name__)


def _failure_counter(request: HttpRequest) -> tuple[str, int]:
    """The cache key counting this address's failures in the current minute, and the seconds it has left."""
    now = time.time()
    window = int(now // FAILURE_WINDOW_SECONDS)
    address = request.META.get("REMOTE_ADDR", "")
    left = max(1, int((window + 1) * FAILURE_WINDOW_SECONDS - now + 0.999))
    return f"budgets:api-auth-failures:{address}:{window}", left


class _CacheBreaker:
    """The throttle's cache is a guard, not a dependency: while it fails, requests go on unthrottled.

    After a failure the cache is left alone for `pause` seconds (a hung Redis would otherwise
    cost every request its socket timeout), and the outage is logged once.
    """

    pause = 30.0

    def __init__(self) -> None:
        self.down_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def failed(self, exc: Exception) -> None:
        if self.available():
            logger.warning("the cache behind the API's failed-authentication limit does not answer (%s); "
                           "requests go on unthrottled for %d s", type(exc).__name__, self.pause)
        self.down_until = time.monotonic() + self.pause


breaker = _CacheBreaker()


class _SeenCounters:
    """The failure counts this process last read or wrote, by counter key, for THROTTLE_RECHECK_SECONDS."""

    most = 10_000

    def __init__(self) -> None:
        self.counts: dict[str, tuple[float, int]] = {}

    def get(self, key: str) -> int | None:
        seen = self.counts.get(key)
        return seen[1] if seen is not None and seen[0] > time.monotonic() else None

    def put(self, key: str, failures: int) -> None:
        if len(self.counts) >= self.most:
            self.counts.clear()  # a new window's keys replace the old ones; a flood of addresses cannot grow it
        self.counts[key] = (time.monotonic() + THROTTLE_RECHECK_SECONDS, failures)

    def clear(self) -> None:
        self.counts.clear()


seen_counters = _SeenCounters()


def check_failure_rate(request: HttpRequest, *, known_key: bool = False) -> None:
    """TooManyRequests while this address is over its failed-authentication limit.

    `known_key`: the request's key is one this process found active seconds ago, so the count
    this process saw within THROTTLE_RECHECK_SECONDS will do; otherwise the shared cache is asked.
    """
    if not breaker.available():
        return
    key, left = _failure_counter(request)
    failures = seen_counters.get(key) if known_key else None
    if failures is None:
        try:
            failures = cache.get(key) or 0
        except Exception as exc:  # Redis down or hung: never fail (or stall) the request for it
            breaker.failed(exc)
            return
        seen_counters.put(key, failures)
    if failures >= settings.API_AUTH_FAILURE_LIMIT:
        raise TooManyRequests(f"too many failed authentications from this address; retry in {left} s",
                              retry_after=left)


def count_failure(request: HttpRequest) -> None:
    if not breaker.available():
        return
    key, _ = _failure_counter(request)
    try:
        failures = 1
        if not cache.add(key, 1, FAILURE_WINDOW_SECONDS * 2):
            try:
                failures = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, FAILURE_WINDOW_SECONDS * 2)
    except Exception as exc:
        breaker.failed(exc)
        return
    seen_counters.put(key, failures)


class ApiKeyAuth(HttpBearer):
    """A project API key as a bearer token; sets request.api_key and request.project."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        raw = token.strip()
        key = remembered_api_key(raw)
        check_failure_rate(request, known_key=key is not None)
        if key is None:
            key = selectors.active_api_key(raw)
        if key is None:
            count_failure(request)
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
