"""`Client` and `AsyncClient`: the native API (/api/v1/) with retries and idempotency keys."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from . import _api
from ._api import Call
from ._json import dumps, loads
from .errors import TransportError, error_from
from .reservations import AsyncHold, Hold
from .results import (
    AlertPage,
    Check,
    CostEvent,
    EventPage,
    ProjectedCost,
    Quote,
    RecordedCost,
    Reservation,
    Settlement,
    User,
    UserPage,
)

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
log = logging.getLogger("budget_client")

VERSION = "0.1.0"
API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 10.0
# Answers that mean "not served, try again": too many requests, and the 5xx family except
# "not implemented"/"version not supported", which a retry cannot change.
RETRY_STATUSES = frozenset({429, *range(500, 600)} - {501, 505})
# Answers after which a call without an idempotency key may be retried: surely not served.
UNSENT_STATUSES = frozenset({429, 503})


class RetryPolicy:
    """Exponential backoff with full jitter; a `Retry-After` header wins (up to `max_backoff`)."""

    def __init__(self, max_retries: int = 3, backoff: float = 0.25, max_backoff: float = 20.0) -> None:
        if max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("max_retries, backoff and max_backoff must not be negative")
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def retries_error(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return call.retry == _api.ALWAYS or unsent

    def retries_status(self, call: Call[Any], status: int, attempt: int) -> bool:
        if attempt >= self.max_retries:
            return False
        return status in (RETRY_STATUSES if call.retry == _api.ALWAYS else UNSENT_STATUSES)

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            after = retry_after(response.headers.get("Retry-After"))
            if after is not None:
                return min(after, self.max_backoff)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - datetime.now(UTC)).total_seconds())


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float | httpx.Timeout,
                 max_retries: int, backoff: float, max_backoff: float) -> None:
        base_url = base_url or os.environ.get("BUDGET_MANAGER_URL")
        api_key = api_key or os.environ.get("BUDGET_MANAGER_API_KEY")
        if not base_url:
            raise ValueError("base_url is required (or set BUDGET_MANAGER_URL)")
        if not api_key:
            raise ValueError("api_key is required (or set BUDGET_MANAGER_API_KEY)")
        base_url = base_url.rstrip("/")
        if not base_url.endswith(API_PREFIX):
            base_url += API_PREFIX
        self.base_url = base_url
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries, backoff, max_backoff)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"budget-manager-client/{VERSION}",
        }

    def _request_args(self, call: Call[Any]) -> dict[str, Any]:
        headers = dict(self._headers)
        content = None
        if call.has_body:
            headers["Content-Type"] = "application/json"
            content = dumps(call.body).encode()
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return {"method": call.method, "url": self.base_url + call.path, "params": call.params,
                "content": content, "headers": headers}

    @staticmethod
    def _result(call: Call[T], response: httpx.Response) -> T:
        status = response.status_code
        if 200 <= status < 300:
            data = loads(response.content) if response.content else None
            return call.parse(data, response.headers.get("Idempotent-Replayed") == "true")
        try:
            body = loads(response.content) if response.content else None
        except ValueError:
            body = None
        raise error_from(status, body)

    @staticmethod
    def _log_retry(call: Call[Any], attempt: int, wait: float, why: str) -> None:
        log.warning("budget_client: %s %s failed (%s); retry %d in %.2fs", call.method, call.path, why,
                    attempt + 1, wait)


class Client(_Base):
    """The native API, synchronously. `Client(base_url, api_key)`; use it as a context manager or close() it.

    Every POST that records money carries an Idempotency-Key generated once per call (or given),
    so a retry after a lost answer records once.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 20.0, http_client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         max_backoff=max_backoff)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying as its policy allows; raise the mapped error otherwise."""
        attempt = 0
        while True:
            try:
                response = self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:
                if not self.retry_policy.retries_error(call, exc, attempt):
                    raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
                wait, why = self.retry_policy.delay(attempt), repr(exc)
            else:
                if not self.retry_policy.retries_status(call, response.status_code, attempt):
                    return self._result(call, response)
                wait, why = self.retry_policy.delay(attempt, response), f"HTTP {response.status_code}"
            self._log_retry(call, attempt, wait, why)
            self._sleep(wait)
            attempt += 1

    # --- users ----------------------------------------------------------------------------------

    def list_users(self, limit: int = 50, offset: int = 0) -> UserPage:
        return self.send(_api.list_users(limit, offset))

    def iter_users(self, page_size: int = 500) -> Iterator[User]:
        """Every user of the project, page after page."""
        offset = 0
        while True:
            page = self.list_users(page_size, offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def get_user(self, user: str) -> User:
        return self.send(_api.get_user(user))

    def set_budget(self, user: str, total_budget: Any, duration: str | None = None,
                   duration_days: int | None = None) -> User:
        """Create or replace the user's budget (spend of the current period is kept)."""
        return self.send(_api.set_budget(user, total_budget, duration, duration_days))

    def delete_user(self, user: str) -> None:
        self.send(_api.delete_user(user))

    def reset_user(self, user: str) -> User:
        return self.send(_api.reset_user(user))

    # --- costs ----------------------------------------------------------------------------------

    def record_cost(self, user: str, completion: Any = None, *, enforce: bool = False,
                    idempotency_key: str | None = None, **fields: Any) -> RecordedCost:
        """Record a call's cost: a completion object, or model + texts / token counts / cost (see docs/api.md).

        One Idempotency-Key per call (generated unless given), reused by its retries.
        """
        body = _api.cost_body(completion, **fields)
        return self.send(_api.record_cost(user, body, enforce=enforce, idempotency_key=idempotency_key))

    def list_costs(self, *, user: str | None = None, model: str | None = None, since: datetime | str | None = None,
                   until: datetime | str | None = None, cursor: str | None = None, limit: int = 50) -> EventPage:
        """The project's ledger (or one user's), newest first."""
        return self.send(_api.list_costs(user=user, model=model, since=since, until=until, cursor=cursor,
                                         limit=limit))

    def list_user_costs(self, user: str, *, model: str | None = None, since: datetime | str | None = None,
                        until: datetime | str | None = None, cursor: str | None = None,
                        limit: int = 50) -> EventPage:
        """One user's ledger (also after the budget was deleted); NotFound for a user never seen."""
        return self.send(_api.list_costs(user=user, model=model, since=since, until=until, cursor=cursor,
                                         limit=limit, by_user_path=True))

    def iter_costs(self, *, user: str | None = None, model: str | None = None, since: datetime | str | None = None,
                   until: datetime | str | None = None, page_size: int = 500) -> Iterator[CostEvent]:
        """Every matching ledger event, newest first, following the cursor."""
        cursor = None
        while True:
            page = self.list_costs(user=user, model=model, since=since, until=until, cursor=cursor, limit=page_size)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- checks, quotes, alerts -----------------------------------------------------------------

    def projected_cost(self, user: str, model: str, messages: list[dict[str, Any]]) -> ProjectedCost:
        return self.send(_api.projected_cost(user, model, messages))

    def check(self, user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
              max_tokens: int | None = None, estimated_cost: Any = None, tags: list[str] | None = None) -> Check:
        return self.send(_api.check(user, model=model, messages=messages, max_tokens=max_tokens,
                                    estimated_cost=estimated_cost, tags=tags))

    def cost_quote(self, model: str, **fields: Any) -> Quote:
        return self.send(_api.cost_quote(model, **fields))

    def list_alerts(self, limit: int = 50, offset: int = 0) -> AlertPage:
        return self.send(_api.list_alerts(limit, offset))

    def get_fallbacks(self) -> dict[str, list[str]]:
        """The project's fallback models per model."""
        return self.send(_api.get_fallbacks())

    def set_fallbacks(self, fallbacks: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Replace the project's fallbacks ({} removes them): {"gpt-4o": ["gpt-4o-mini"], ...}."""
        return self.send(_api.set_fallbacks(fallbacks))

    # --- reservations ---------------------------------------------------------------------------

    def create_reservation(self, user: str, *, model: str | None = None,
                           messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                           estimated_cost: Any = None, ttl_seconds: int | None = None,
                           tags: list[str] | None = None, idempotency_key: str | None = None) -> Reservation:
        """Hold the worst-case cost of a call; BudgetExceeded (402) when the user or the project has no room.

        `tags` (sent only when non-empty) also hold against the tags' limits, on a server that has them.
        """
        return self.send(_api.create_reservation(
            user, model=model, messages=messages, max_tokens=max_tokens, estimated_cost=estimated_cost,
            ttl_seconds=ttl_seconds, tags=tags, idempotency_key=idempotency_key))

    def get_reservation(self, reservation_id: int) -> Reservation:
        return self.send(_api.get_reservation(reservation_id))

    def settle_reservation(self, reservation_id: int, completion: Any = None, *,
                           idempotency_key: str | None = None, **fields: Any) -> Settlement:
        """Record the real cost of the held call once and free the hold (same body forms as record_cost)."""
        body = _api.cost_body(completion, **fields)
        return self.send(_api.settle_reservation(reservation_id, body, idempotency_key=idempotency_key))

    def release_reservation(self, reservation_id: int) -> Reservation:
        return self.send(_api.release_reservation(reservation_id))

    def reserve(self, user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
                max_tokens: int | None = None, estimated_cost: Any = None,
                ttl_seconds: int | None = None, tags: list[str] | None = None, fallback: bool = False) -> Hold:
        """`with client.reserve(...) as hold: response = call(hold.model); hold.settle(response)`.

        The hold is created on entering the block and released on leaving it unsettled. With
        `fallback=True`, refused with a fallback model (`error.fallback`), it holds once more for
        that model: `hold.model` is then the fallback (`hold.fallback` the refusal's suggestion).
        """
        return Hold(self, user, model=model, messages=messages, max_tokens=max_tokens,
                    estimated_cost=estimated_cost, ttl_seconds=ttl_seconds, tags=tags, fallback=fallback)


class AsyncClient(_Base):
    """The native API for asyncio; the same methods as `Client`, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, max_retries: int = 3, backoff: float = 0.25,
                 max_backoff: float = 20.0, http_client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
                         max_backoff=max_backoff)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:
                if not self.retry_policy.retries_error(call, exc, attempt):
                    raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
                wait, why = self.retry_policy.delay(attempt), repr(exc)
            else:
                if not self.retry_policy.retries_status(call, response.status_code, attempt):
                    return self._result(call, response)
                wait, why = self.retry_policy.delay(attempt, response), f"HTTP {response.status_code}"
            self._log_retry(call, attempt, wait, why)
            await self._sleep(wait)
            attempt += 1

    async def list_users(self, limit: int = 50, offset: int = 0) -> UserPage:
        return await self.send(_api.list_users(limit, offset))

    async def iter_users(self, page_size: int = 500) -> AsyncIterator[User]:
        offset = 0
        while True:
            page = await self.list_users(page_size, offset)
            for user in page.items:
                yield user
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    async def get_user(self, user: str) -> User:
        return await self.send(_api.get_user(user))

    async def set_budget(self, user: str, total_budget: Any, duration: str | None = None,
                         duration_days: int | None = None) -> User:
        return await self.send(_api.set_budget(user, total_budget, duration, duration_days))

    async def delete_user(self, user: str) -> None:
        await self.send(_api.delete_user(user))

    async def reset_user(self, user: str) -> User:
        return await self.send(_api.reset_user(user))

    async def record_cost(self, user: str, completion: Any = None, *, enforce: bool = False,
                          idempotency_key: str | None = None, **fields: Any) -> RecordedCost:
        body = _api.cost_body(completion, **fields)
        return await self.send(_api.record_cost(user, body, enforce=enforce, idempotency_key=idempotency_key))

    async def list_costs(self, *, user: str | None = None, model: str | None = None,
                         since: datetime | str | None = None, until: datetime | str | None = None,
                         cursor: str | None = None, limit: int = 50) -> EventPage:
        return await self.send(_api.list_costs(user=user, model=model, since=since, until=until, cursor=cursor,
                                               limit=limit))

    async def list_user_costs(self, user: str, *, model: str | None = None, since: datetime | str | None = None,
                              until: datetime | str | None = None, cursor: str | None = None,
                              limit: int = 50) -> EventPage:
        return await self.send(_api.list_costs(user=user, model=model, since=since, until=until, cursor=cursor,
                                               limit=limit, by_user_path=True))

    async def iter_costs(self, *, user: str | None = None, model: str | None = None,
                         since: datetime | str | None = None, until: datetime | str | None = None,
                         page_size: int = 500) -> AsyncIterator[CostEvent]:
        cursor = None
        while True:
            page = await self.list_costs(user=user, model=model, since=since, until=until, cursor=cursor,
                                         limit=page_size)
            for event in page.items:
                yield event
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def projected_cost(self, user: str, model: str, messages: list[dict[str, Any]]) -> ProjectedCost:
        return await self.send(_api.projected_cost(user, model, messages))

    async def check(self, user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
                    max_tokens: int | None = None, estimated_cost: Any = None, tags: list[str] | None = None) -> Check:
        return await self.send(_api.check(user, model=model, messages=messages, max_tokens=max_tokens,
                                          estimated_cost=estimated_cost, tags=tags))

    async def cost_quote(self, model: str, **fields: Any) -> Quote:
        return await self.send(_api.cost_quote(model, **fields))

    async def list_alerts(self, limit: int = 50, offset: int = 0) -> AlertPage:
        return await self.send(_api.list_alerts(limit, offset))

    async def get_fallbacks(self) -> dict[str, list[str]]:
        return await self.send(_api.get_fallbacks())

    async def set_fallbacks(self, fallbacks: Mapping[str, list[str]]) -> dict[str, list[str]]:
        return await self.send(_api.set_fallbacks(fallbacks))

    async def create_reservation(self, user: str, *, model: str | None = None,
                                 messages: list[dict[str, Any]] | None = None, max_tokens: int | None = None,
                                 estimated_cost: Any = None, ttl_seconds: int | None = None,
                                 tags: list[str] | None = None, idempotency_key: str | None = None) -> Reservation:
        return await self.send(_api.create_reservation(
            user, model=model, messages=messages, max_tokens=max_tokens, estimated_cost=estimated_cost,
            ttl_seconds=ttl_seconds, tags=tags, idempotency_key=idempotency_key))

    async def get_reservation(self, reservation_id: int) -> Reservation:
        return await self.send(_api.get_reservation(reservation_id))

    async def settle_reservation(self, reservation_id: int, completion: Any = None, *,
                                 idempotency_key: str | None = None, **fields: Any) -> Settlement:
        body = _api.cost_body(completion, **fields)
        return await self.send(_api.settle_reservation(reservation_id, body, idempotency_key=idempotency_key))

    async def release_reservation(self, reservation_id: int) -> Reservation:
        return await self.send(_api.release_reservation(reservation_id))

    def reserve(self, user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
                max_tokens: int | None = None, estimated_cost: Any = None,
                ttl_seconds: int | None = None, tags: list[str] | None = None, fallback: bool = False) -> AsyncHold:
        """`async with client.reserve(...) as hold: response = await call(hold.model); await hold.settle(response)`;
        `fallback` as for `Client.reserve`."""
        return AsyncHold(self, user, model=model, messages=messages, max_tokens=max_tokens,
                         estimated_cost=estimated_cost, ttl_seconds=ttl_seconds, tags=tags, fallback=fallback)
