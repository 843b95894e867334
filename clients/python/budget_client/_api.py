"""The native API's requests, described once for the sync and the async client.

Each endpoint is a function that builds a `Call`: method, path, query, body, how to
read the answer, and whether a retry is safe. The clients only send calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from .results import (
    AlertPage,
    Check,
    EventPage,
    ProjectedCost,
    Quote,
    RecordedCost,
    Reservation,
    Settlement,
    User,
    UserPage,
)

T = TypeVar("T")

# How a call may be retried after a failure that leaves its fate unknown (a timeout, a 500):
# ALWAYS for reads, PUT/DELETE and POSTs that carry an Idempotency-Key (the service records once);
# UNSENT for a POST without one (a reset): only when the request surely was not served
# (connection refused, 429, 503).
ALWAYS = "always"
UNSENT = "unsent"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any, bool], T]  # (JSON body, replayed) -> result
    params: dict[str, Any] | None = None
    body: Any = None
    has_body: bool = False
    idempotency_key: str | None = None
    retry: str = ALWAYS


def new_key() -> str:
    """An Idempotency-Key for one logical call, reused by every retry of it."""
    return str(uuid.uuid4())


def user_path(user: str, suffix: str = "") -> str:
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    return f"/users/{quote(user, safe='')}{suffix}"


def amount(value: Any) -> Decimal | int | None:
    """Money to send: Decimal and int as they are, a str through Decimal, a float through its shortest repr."""
    if value is None or (isinstance(value, Decimal | int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    raise TypeError(f"an amount must be a Decimal, an int or a decimal string, not {value!r}")


def completion_payload(completion: Any) -> dict[str, Any]:
    """The part of an OpenAI/LiteLLM-style response the service reads: its `model` and `usage`."""
    if hasattr(completion, "model_dump"):  # pydantic (litellm.ModelResponse, openai types)
        data = completion.model_dump()
    elif isinstance(completion, Mapping):
        data = dict(completion)
    elif hasattr(completion, "model") and hasattr(completion, "usage"):
        data = {"model": completion.model, "usage": completion.usage}
    else:
        raise TypeError(f"not a completion object: {type(completion).__name__}")
    usage = data.get("usage")
    if hasattr(usage, "model_dump"):
        usage = usage.model_dump()
    return _plain({"model": data.get("model"), "usage": usage})


def _plain(value: Any) -> Any:
    """Drop None values (the service refuses nothing for them, but they are noise) and objects."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    return value


def cost_body(completion: Any = None, *, model: str | None = None, input_text: str | None = None,
              output_text: str | None = None, prompt_tokens: int | None = None,
              completion_tokens: int | None = None, cached_tokens: int | None = None,
              cache_creation_tokens: int | None = None, cost: Any = None, input_cost_per_token: Any = None,
              output_cost_per_token: Any = None, tags: list[str] | None = None) -> dict[str, Any]:
    """The body of a recorded (or settled) cost, in any of the forms POST /costs takes; `tags` choose the
    tags' limits and are kept on the ledger row (a settle takes the reservation's)."""
    body: dict[str, Any] = {
        "completion": completion_payload(completion) if completion is not None else None,
        "model": model,
        "input_text": input_text,
        "output_text": output_text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "cache_creation_tokens": cache_creation_tokens,
        "cost": amount(cost),
        "input_cost_per_token": amount(input_cost_per_token),
        "output_cost_per_token": amount(output_cost_per_token),
        "tags": list(tags) if tags else None,
    }
    return {key: value for key, value in body.items() if value is not None}


def time_param(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"  # a naive time is UTC, as the service reads it


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _json_call(method: str, path: str, parse: Callable[[Any], T], **kwargs: Any) -> Call[T]:
    return Call(method, path, lambda data, replayed: parse(data), **kwargs)


# --- users --------------------------------------------------------------------------------------


def list_users(limit: int = 50, offset: int = 0) -> Call[UserPage]:
    return _json_call("GET", "/users", UserPage.from_json, params={"limit": limit, "offset": offset})


def get_user(user: str) -> Call[User]:
    return _json_call("GET", user_path(user), User.from_json)


def set_budget(user: str, total_budget: Any, duration: str | None = None,
               duration_days: int | None = None) -> Call[User]:
    body = {"total_budget": amount(total_budget), "duration": duration, "duration_days": duration_days}
    return _json_call("PUT", user_path(user, "/budget"), User.from_json,
                      body={k: v for k, v in body.items() if v is not None}, has_body=True)


def delete_user(user: str) -> Call[None]:
    return Call("DELETE", user_path(user), lambda data, replayed: None)


def reset_user(user: str) -> Call[User]:
    return _json_call("POST", user_path(user, "/reset"), User.from_json, retry=UNSENT)


# --- costs --------------------------------------------------------------------------------------


def record_cost(user: str, body: dict[str, Any], *, enforce: bool = False,
                idempotency_key: str | None = None) -> Call[RecordedCost]:
    return Call("POST", user_path(user, "/costs"), RecordedCost.from_json,
                params={"enforce": "true"} if enforce else None, body=body, has_body=True,
                idempotency_key=idempotency_key or new_key())


def list_costs(*, user: str | None = None, model: str | None = None, since: datetime | str | None = None,
               until: datetime | str | None = None, cursor: str | None = None, limit: int = 50,
               by_user_path: bool = False) -> Call[EventPage]:
    params = _params(model=model, since=time_param(since), until=time_param(until), cursor=cursor, limit=limit)
    if by_user_path:
        assert user is not None
        return _json_call("GET", user_path(user, "/costs"), EventPage.from_json, params=params)
    return _json_call("GET", "/costs", EventPage.from_json, params={**_params(user=user), **params})


# --- checks, quotes, alerts ---------------------------------------------------------------------


def projected_cost(user: str, model: str, messages: list[dict[str, Any]]) -> Call[ProjectedCost]:
    return _json_call("POST", user_path(user, "/projected-cost"), ProjectedCost.from_json,
                      body={"model": model, "messages": messages}, has_body=True)


def check(user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
          max_tokens: int | None = None, estimated_cost: Any = None, tags: list[str] | None = None) -> Call[Check]:
    body = _params(model=model, messages=messages, max_tokens=max_tokens, estimated_cost=amount(estimated_cost),
                   tags=list(tags) if tags else None)
    return _json_call("POST", user_path(user, "/check"), Check.from_json, body=body, has_body=True)


def cost_quote(model: str, *, prompt_tokens: int | None = None, completion_tokens: int | None = None,
               cached_tokens: int | None = None, cache_creation_tokens: int | None = None,
               messages: list[dict[str, Any]] | None = None, output_text: str | None = None,
               input_cost_per_token: Any = None, output_cost_per_token: Any = None) -> Call[Quote]:
    body = _params(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   cached_tokens=cached_tokens, cache_creation_tokens=cache_creation_tokens, messages=messages,
                   output_text=output_text, input_cost_per_token=amount(input_cost_per_token),
                   output_cost_per_token=amount(output_cost_per_token))
    return _json_call("POST", "/cost-quote", Quote.from_json, body=body, has_body=True)


def list_alerts(limit: int = 50, offset: int = 0) -> Call[AlertPage]:
    return _json_call("GET", "/alerts", AlertPage.from_json, params={"limit": limit, "offset": offset})


def _fallbacks(data: Any) -> dict[str, list[str]]:
    return {str(model): [str(name) for name in names] for model, names in data["fallbacks"].items()}


def get_fallbacks() -> Call[dict[str, list[str]]]:
    return _json_call("GET", "/fallbacks", _fallbacks)


def set_fallbacks(fallbacks: Mapping[str, list[str]]) -> Call[dict[str, list[str]]]:
    body = {"fallbacks": {model: list(names) for model, names in fallbacks.items()}}
    return _json_call("PUT", "/fallbacks", _fallbacks, body=body, has_body=True)


# --- reservations -------------------------------------------------------------------------------


def create_reservation(user: str, *, model: str | None = None, messages: list[dict[str, Any]] | None = None,
                       max_tokens: int | None = None, estimated_cost: Any = None, ttl_seconds: int | None = None,
                       tags: list[str] | None = None, idempotency_key: str | None = None) -> Call[Reservation]:
    if estimated_cost is None and (model is None or messages is None or max_tokens is None):
        raise ValueError("a reservation needs model, messages and max_tokens, or estimated_cost")
    # tags only when there are some: a server without tag limits refuses the field.
    body = _params(model=model, messages=messages, max_tokens=max_tokens, estimated_cost=amount(estimated_cost),
                   ttl_seconds=ttl_seconds, tags=list(tags) if tags else None)
    return _json_call("POST", user_path(user, "/reservations"), Reservation.from_json, body=body, has_body=True,
                      idempotency_key=idempotency_key or new_key())


def get_reservation(reservation_id: int) -> Call[Reservation]:
    return _json_call("GET", f"/reservations/{int(reservation_id)}", Reservation.from_json)


def settle_reservation(reservation_id: int, body: dict[str, Any], *,
                       idempotency_key: str | None = None) -> Call[Settlement]:
    return Call("POST", f"/reservations/{int(reservation_id)}/settle", Settlement.from_json, body=body,
                has_body=True, idempotency_key=idempotency_key or new_key())


def release_reservation(reservation_id: int) -> Call[Reservation]:
    # Releasing twice leaves a released hold: safe to retry.
    return _json_call("POST", f"/reservations/{int(reservation_id)}/release",
                      lambda data: Reservation.from_json(data["reservation"]))
