"""LiteLLM integration: a callback that records every call's cost, and a guard that stops calls before they are sent.

Importing this module imports `litellm` (the rest of budget_client does not need it).

    from budget_client import Client
    from budget_client.litellm import BudgetGuard

    guard = BudgetGuard(Client(url, key)).install()     # records every LiteLLM SDK call's cost
    response = guard.completion(model="gpt-4o-mini", messages=messages, max_tokens=500, user="alice")

The user of a call is `metadata={"user": ...}` if given, else the `user=` argument (which
LiteLLM also sends to the provider as the end-user id), else the callback's `default_user`;
a call without any is not recorded. metadata wins so that a call can be budgeted to an
account while the provider sees another end-user id.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from .client import Client
from .errors import BudgetClientError, BudgetExceeded
from .results import Check

__all__ = ["RESERVATION_KEY", "BudgetCallback", "BudgetExceededError", "BudgetGuard", "Client", "call_user", "flush"]

log = logging.getLogger("budget_client.litellm")

# metadata key through which the guard tells the callback which reservation a call settles.
RESERVATION_KEY = "budget_reservation_id"


class BudgetExceededError(BudgetExceeded, litellm.BudgetExceededError):
    """The guard's refusal: the client's BudgetExceeded and LiteLLM's BudgetExceededError at once.

    `current_cost` is the estimated cost of the refused call and `max_budget` the room that was left,
    when the service told them.
    """

    def __init__(self, message: str, *, scope: str | None = None, body: dict[str, Any] | None = None,
                 estimated_cost: Decimal | None = None, remaining: Decimal | None = None) -> None:
        BudgetExceeded.__init__(self, message, scope=scope, body=body)
        if estimated_cost is not None:
            self.amount = estimated_cost
        if remaining is not None:
            self.remaining = remaining
        # LiteLLM types these as float; money stays Decimal here (None when the service gave no figure).
        litellm.BudgetExceededError.__init__(self, current_cost=self.amount, max_budget=self.remaining,  # type: ignore[arg-type]
                                             message=message, entity_type=scope)
        self.status = 402

    @classmethod
    def from_error(cls, error: BudgetExceeded) -> BudgetExceededError:
        return cls(error.message, scope=error.scope, body=error.body)

    @classmethod
    def from_check(cls, check: Check) -> BudgetExceededError:
        message = check.reason or f"the {check.scope} budget has no room for ${check.estimated_cost}"
        refused = cls(message, scope=check.scope, estimated_cost=check.estimated_cost, remaining=check.remaining)
        refused.fallback = check.fallback
        return refused


def call_user(kwargs: Mapping[str, Any], default: str | None = None) -> str | None:
    """The user a LiteLLM call is budgeted to: metadata["user"], else user=, else `default`."""
    metadata = _metadata(kwargs)
    user = metadata.get("user") or kwargs.get("user") or default
    return user if isinstance(user, str) and user else None


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    # As passed to litellm.completion, or as the callback sees it (inside litellm_params).
    metadata = kwargs.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = (kwargs.get("litellm_params") or {}).get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def cost_fields(kwargs: Mapping[str, Any], response: Any) -> dict[str, Any]:
    """The body of the ledger record for a finished call: model and tokens, and LiteLLM's cost when it has one."""
    logged = kwargs.get("standard_logging_object") or {}
    cost = kwargs.get("response_cost")
    if cost is None:
        cost = _get(logged, "response_cost")
    usage = _get(response, "usage")
    fields: dict[str, Any] = {
        "model": kwargs.get("model") or _get(logged, "model") or _get(response, "model"),
        "prompt_tokens": _tokens(_get(usage, "prompt_tokens")) or 0,
        "completion_tokens": _tokens(_get(usage, "completion_tokens")) or 0,
    }
    cached = _tokens(_get(_get(usage, "prompt_tokens_details"), "cached_tokens"))
    if cached:
        fields["cached_tokens"] = min(cached, fields["prompt_tokens"])
    if isinstance(cost, int | float | Decimal) and not isinstance(cost, bool):
        # LiteLLM's float, read as the decimal it prints (its shortest repr), never float arithmetic.
        fields["cost"] = Decimal(repr(cost)) if isinstance(cost, float) else Decimal(cost)
    return fields


class BudgetCallback(CustomLogger):
    """Records the cost of every successful LiteLLM SDK call (sync, async, streaming, embeddings).

    One ledger record per call, with LiteLLM's `litellm_call_id` as the Idempotency-Key, so a
    callback run twice for one call records once. The cost is LiteLLM's `response_cost`; when
    LiteLLM has none (a model it cannot price), the tokens and the model are sent and the
    service prices them. A call the guard reserved for settles its reservation instead.
    Errors are logged (LiteLLM swallows a callback's exceptions); `errors` counts them.
    """

    def __init__(self, client: Client, *, default_user: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.default_user = default_user
        # LiteLLM drops a logger whose class name and public str/int/bool attributes equal those of
        # one it already has (logging_callback_manager._get_custom_logger_key): a unique public id
        # keeps two callbacks (two services, two keys) from being taken for one. The counters are
        # private for the same reason: a key that changes with every record would defeat the check.
        self.callback_id = uuid.uuid4().hex
        self._recorded = 0
        self._errors = 0
        self._lock = threading.Lock()

    @property
    def recorded(self) -> int:
        """Calls recorded (or settled) so far."""
        return self._recorded

    @property
    def errors(self) -> int:
        """Calls whose cost could not be recorded (logged with their exception)."""
        return self._errors

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._record(kwargs, response_obj)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        # The sync client in a worker thread: an httpx.AsyncClient would be bound to one event loop.
        await asyncio.to_thread(self._record, kwargs, response_obj)

    def _record(self, kwargs: Mapping[str, Any], response: Any) -> None:
        user = call_user(kwargs, self.default_user)
        if user is None:
            log.debug("budget_client: LiteLLM call %s names no user; not recorded", kwargs.get("litellm_call_id"))
            return
        call_id = kwargs.get("litellm_call_id")
        key = f"litellm:{call_id}" if call_id else None
        try:
            fields = cost_fields(kwargs, response)
            reservation_id = _metadata(kwargs).get(RESERVATION_KEY)
            if reservation_id is not None:
                self.client.settle_reservation(int(reservation_id), idempotency_key=key, **fields)
            else:
                self.client.record_cost(user, idempotency_key=key, **fields)
        except Exception:
            with self._lock:
                self._errors += 1
            log.exception("budget_client: could not record the cost of LiteLLM call %s for user %r", call_id, user)
        else:
            with self._lock:
                self._recorded += 1


async def flush(timeout: float = 30.0) -> None:
    """Wait for LiteLLM's pending success callbacks on this event loop; await it before the loop ends.

    LiteLLM runs async callbacks in its logging worker, and those of an async stream in a bare
    `asyncio.create_task`: a loop closed right after the last call (the end of `asyncio.run`)
    cancels them, and their costs are never recorded.
    """
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()
                   and "success_handler" in getattr(task.get_coro(), "__qualname__", "")]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=max(0.001, deadline - loop.time()))
        if not pending or loop.time() >= deadline:
            return


class BudgetGuard:
    """Stops a LiteLLM call before it is sent when the user's budget has no room.

    With `max_tokens` (or `max_completion_tokens`) the call's worst case is reserved (402 →
    BudgetExceededError, nothing sent) and the callback settles the reservation with the real
    cost; a failed call releases it. Without, the prompt's cost is checked (advisory: two
    concurrent calls may both pass) and the callback records the cost. With `fallback=True` (here
    or per call), a call refused with a fallback model (the project's fallbacks) is admitted once
    more with that model and sent to it instead.

    LiteLLM's own pre-call hooks cannot do this for SDK calls: `log_pre_api_call` runs inside
    a try/except that logs and swallows the exception, and `async_pre_call_hook` is only
    called by the proxy. So the guard wraps the call.
    """

    def __init__(self, client: Client, *, callback: BudgetCallback | None = None, ttl_seconds: int | None = None,
                 default_user: str | None = None, fallback: bool = False) -> None:
        self.client = client
        self.callback = callback or BudgetCallback(client, default_user=default_user)
        self.ttl_seconds = ttl_seconds
        self.fallback = fallback

    def install(self) -> BudgetGuard:
        """Add the callback to `litellm.callbacks` (once)."""
        if self.callback not in litellm.callbacks:
            litellm.callbacks.append(self.callback)
        return self

    def uninstall(self) -> None:
        """Remove the callback from every LiteLLM list (LiteLLM copies `callbacks` into its success lists)."""
        litellm.logging_callback_manager.remove_callback_from_all_lists(self.callback, require_self=False)

    def completion(self, *, fallback: bool | None = None, **kwargs: Any) -> Any:
        """`litellm.completion(**kwargs)`, refused with BudgetExceededError when the budget has no room.

        `fallback` (default: the guard's): refused with a fallback model, retry once with it.
        """
        kwargs, reservation_id = self._admit_or_fall_back(kwargs, self.fallback if fallback is None else fallback)
        try:
            return litellm.completion(**kwargs)
        except BaseException:
            self._release(reservation_id)
            raise

    async def acompletion(self, *, fallback: bool | None = None, **kwargs: Any) -> Any:
        """`litellm.acompletion(**kwargs)`, refused with BudgetExceededError when the budget has no room;
        `fallback` as for `completion`."""
        kwargs, reservation_id = await asyncio.to_thread(
            self._admit_or_fall_back, kwargs, self.fallback if fallback is None else fallback)
        try:
            return await litellm.acompletion(**kwargs)
        except BaseException:
            await asyncio.to_thread(self._release, reservation_id)
            raise

    def _admit_or_fall_back(self, kwargs: dict[str, Any], fallback: bool) -> tuple[dict[str, Any], int | None]:
        """Admit the call; refused with a fallback model (the service's `error.fallback`) and `fallback`
        on, admit it once more with that model instead (refused again: that refusal is raised)."""
        try:
            return self._admit(kwargs)
        except BudgetExceededError as refused:
            if not fallback or refused.fallback is None:
                raise
            log.info("budget_client: %s has no room for %s (%s); retrying with the fallback %s", call_user(
                kwargs, self.callback.default_user), kwargs.get("model"), refused.message, refused.fallback.model)
            return self._admit({**kwargs, "model": refused.fallback.model})

    def _admit(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        self.install()
        user = call_user(kwargs, self.callback.default_user)
        if user is None:
            raise ValueError('a guarded call needs user= or metadata={"user": ...}')
        model, messages = kwargs.get("model"), kwargs.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list):
            raise ValueError("a guarded call needs model= and messages=")
        kwargs = dict(kwargs)
        kwargs.setdefault("litellm_call_id", str(uuid.uuid4()))
        max_tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
        try:
            if max_tokens is None:
                check = self.client.check(user, model=model, messages=messages)
                if not check.allowed:
                    raise BudgetExceededError.from_check(check)
                return kwargs, None
            reservation = self.client.create_reservation(
                user, model=model, messages=messages, max_tokens=int(max_tokens), ttl_seconds=self.ttl_seconds,
                idempotency_key=f"litellm-reserve:{kwargs['litellm_call_id']}")
        except BudgetExceededError:
            raise
        except BudgetExceeded as error:
            raise BudgetExceededError.from_error(error) from error
        kwargs["metadata"] = {**_metadata(kwargs), RESERVATION_KEY: reservation.id}
        return kwargs, reservation.id

    def _release(self, reservation_id: int | None) -> None:
        if reservation_id is None:
            return
        try:
            self.client.release_reservation(reservation_id)
        except BudgetClientError as error:
            log.warning("budget_client: could not release reservation %s (%s); it expires", reservation_id, error)
