"""LiteLLM Proxy hook: every call holds its worst case before it reaches the model, and settles LiteLLM's cost.

In the proxy's config.yaml (the proxy needs BUDGET_MANAGER_URL and BUDGET_MANAGER_API_KEY):

    litellm_settings:
      callbacks: budget_client.litellm_proxy.budget_hook

`async_pre_call_hook` reserves prompt + max_tokens (or BUDGET_MANAGER_DEFAULT_MAX_TOKENS) for the
call's user; no room → the proxy's budget error (type "budget_exceeded", the status of
`litellm.budget_exceeded_status_code`) with the service's message, and the call never reaches the
model. `async_log_success_event` settles with LiteLLM's `response_cost` (once per `litellm_call_id`,
streams when they end); a failed call releases its hold. Settings: see `ProxyHookSettings`.

With BUDGET_MANAGER_FALLBACK=1, a call refused with a fallback model (the project's fallbacks,
`error.fallback`) that this proxy routes and the caller's key may call is sent to that model:
the hook rewrites `data["model"]` and holds the fallback's worst case instead of refusing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import weakref
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import litellm
from litellm.integrations.custom_logger import CustomLogger

from .client import AsyncClient
from .errors import BudgetClientError, BudgetExceeded, UnknownModel
from .litellm import cost_fields

__all__ = ["USER_SOURCES", "BudgetProxyHook", "ProxyHookSettings", "budget_hook", "call_user", "request_tags"]

log = logging.getLogger("budget_client.litellm_proxy")

# Keys this hook writes into the request's metadata, read back by the success and failure events.
RESERVATION_KEY = "budget_reservation_id"
USER_KEY = "budget_user"
FALLBACK_FROM_KEY = "budget_fallback_from"  # the model a call asked for, when it was sent to a fallback

# Where a call's user comes from, tried in the configured order:
#   user      the request body's `user` field
#   end_user  the end-user id the proxy resolved (its customer headers, `user_header_name`), else `user`
#   key_alias the alias of the proxy key that made the call
#   team      the proxy team of that key (its alias, else its id)
#   key_user  the proxy user that owns the key
USER_SOURCES = ("user", "end_user", "key_alias", "team", "key_user")


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return number


def _env_money(name: str) -> Decimal | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} must be a dollar amount, not {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{name} must be a positive dollar amount, not {value!r}")
    return amount


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


@dataclass(frozen=True)
class ProxyHookSettings:
    """What the hook does; `from_env()` reads the BUDGET_MANAGER_* variables (checked when the proxy starts)."""

    # BUDGET_MANAGER_USER_FROM, comma-separated: the first source that names a user wins.
    user_from: tuple[str, ...] = ("user", "end_user")
    # BUDGET_MANAGER_DEFAULT_USER: the user of a call no source names; unset → such calls pass unbudgeted.
    default_user: str | None = None
    # BUDGET_MANAGER_DEFAULT_MAX_TOKENS: the completion tokens held for a request without max_tokens.
    default_max_tokens: int = 4096
    # BUDGET_MANAGER_DEFAULT_COST: dollars held for a call whose worst case cannot be priced
    # (no messages, e.g. embeddings; or a model the service does not know). Unset → such a call
    # is not held: an unknown model is refused, a call without messages is only recorded.
    default_cost: Decimal | None = None
    # BUDGET_MANAGER_TTL_SECONDS: a hold neither settled nor released (a cancelled call) expires then.
    ttl_seconds: int | None = None
    # BUDGET_MANAGER_FAIL_OPEN: let calls through while the service cannot be reached (default: refuse, 503).
    fail_open: bool = False
    # BUDGET_MANAGER_TIMEOUT: seconds per request to the service.
    timeout: float = 10.0
    # BUDGET_MANAGER_MAX_CONNECTIONS: open connections to the service per proxy worker (a burst waits for one).
    max_connections: int = 20
    # BUDGET_MANAGER_FALLBACK: a call refused with a fallback model goes to that model instead (once),
    # when the proxy routes it and the key may call it; default: refused as ever.
    fallback: bool = False

    def __post_init__(self) -> None:
        unknown = [source for source in self.user_from if source not in USER_SOURCES]
        if unknown or not self.user_from:
            raise ValueError(f"user sources must be some of {', '.join(USER_SOURCES)}; got {self.user_from!r}")

    @classmethod
    def from_env(cls) -> ProxyHookSettings:
        sources = os.environ.get("BUDGET_MANAGER_USER_FROM", "").strip()
        timeout = os.environ.get("BUDGET_MANAGER_TIMEOUT", "").strip()
        return cls(
            user_from=tuple(s.strip() for s in sources.split(",") if s.strip()) if sources else cls.user_from,
            default_user=os.environ.get("BUDGET_MANAGER_DEFAULT_USER") or None,
            default_max_tokens=_env_int("BUDGET_MANAGER_DEFAULT_MAX_TOKENS", cls.default_max_tokens) or 4096,
            default_cost=_env_money("BUDGET_MANAGER_DEFAULT_COST"),
            ttl_seconds=_env_int("BUDGET_MANAGER_TTL_SECONDS", None),
            fail_open=_env_bool("BUDGET_MANAGER_FAIL_OPEN", False),
            timeout=float(timeout) if timeout else cls.timeout,
            max_connections=_env_int("BUDGET_MANAGER_MAX_CONNECTIONS", cls.max_connections) or 20,
            fallback=_env_bool("BUDGET_MANAGER_FALLBACK", False),
        )


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _attr(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _request_headers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    request = data.get("proxy_server_request")
    headers = request.get("headers") if isinstance(request, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def _end_user(data: Mapping[str, Any], key: Any) -> str | None:
    resolved = _text(_attr(key, "end_user_id"))
    if resolved:
        return resolved
    try:  # the proxy's own rule: its customer-id headers, `user_header_name`, then the body
        from litellm.proxy.auth.auth_utils import get_end_user_id_from_request_body

        return _text(get_end_user_id_from_request_body(data, _request_headers(data)))
    except Exception:  # outside a proxy (or another LiteLLM): the body's user only
        return _text(data.get("user"))


def call_user(data: Mapping[str, Any], key: Any, settings: ProxyHookSettings) -> str | None:
    """The user a proxy call is budgeted to: the first configured source that names one."""
    for source in settings.user_from:
        if source == "user":
            user = _text(data.get("user"))
        elif source == "end_user":
            user = _end_user(data, key)
        elif source == "key_alias":
            user = _text(_attr(key, "key_alias"))
        elif source == "team":
            user = _text(_attr(key, "team_alias")) or _text(_attr(key, "team_id"))
        else:
            user = _text(_attr(key, "user_id"))
        if user:
            return user
    return settings.default_user


def _metadata_name(data: Mapping[str, Any]) -> str:
    # The proxy keeps its metadata in "litellm_metadata" on the routes where "metadata" is the provider's.
    return "litellm_metadata" if isinstance(data.get("litellm_metadata"), Mapping) else "metadata"


def _call_metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request metadata as a success/failure event sees it (inside litellm_params), or as the request has it."""
    params = kwargs.get("litellm_params")
    for source in (params if isinstance(params, Mapping) else {}, kwargs):
        for name in ("metadata", "litellm_metadata"):
            metadata = source.get(name)
            if isinstance(metadata, Mapping) and (RESERVATION_KEY in metadata or USER_KEY in metadata):
                return metadata
    return {}


def request_tags(data: Mapping[str, Any]) -> list[str]:
    """The tags of a request's metadata (`metadata.tags`), each once, in order."""
    tags: list[str] = []
    for name in ("metadata", "litellm_metadata"):
        metadata = data.get(name)
        value = metadata.get("tags") if isinstance(metadata, Mapping) else None
        if isinstance(value, Sequence) and not isinstance(value, str):
            tags.extend(tag for tag in value if isinstance(tag, str) and tag and tag not in tags)
    return tags


def _max_tokens(data: Mapping[str, Any]) -> int | None:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _budget_error(message: str) -> Exception:
    """The proxy's own budget refusal: the shape and status its key/team/user budgets answer with."""
    from litellm.proxy._types import ProxyErrorTypes, ProxyException

    return ProxyException(message=message, type=ProxyErrorTypes.budget_exceeded, param=None,
                          code=litellm.budget_exceeded_status_code)


def _proxy_router() -> Any:
    """The running proxy's router (None outside a proxy, or before it loaded its config)."""
    try:
        from litellm.proxy import proxy_server
    except Exception:
        return None
    return getattr(proxy_server, "llm_router", None)


async def proxy_may_call(model: str, key: Any, router: Any = None) -> bool | None:
    """Would this proxy route `model` for the caller's key? None when it cannot tell (no router, an
    unknown LiteLLM): the project's fallbacks must then be names of the proxy's models."""
    router = router if router is not None else _proxy_router()
    if router is None:
        return None
    team_id = _attr(key, "team_id")
    try:
        registry = router.registry()
        if not registry.names(model, kind="route_candidates", team_id=team_id):
            return False
        model_list = registry.all()
    except AttributeError:  # a LiteLLM before registry(): its model names
        try:
            if model not in router.get_model_names():
                return False
            model_list = router.model_list
        except Exception:
            return None
    try:  # the proxy checked the key against the model asked for; the fallback needs the same check
        from litellm.proxy._types import ProxyException, UserAPIKeyAuth
        from litellm.proxy.auth.auth_checks import can_key_call_resolved_model
    except ImportError:
        return True
    if not isinstance(key, UserAPIKeyAuth):
        return True
    try:
        await can_key_call_resolved_model(model=model, llm_model_list=model_list, valid_token=key,
                                          llm_router=router)
    except ProxyException:
        return False
    return True


def _unavailable_error(message: str, code: int = 503) -> Exception:
    from litellm.proxy._types import ProxyException

    return ProxyException(message=message, type="budget_manager_error", param=None, code=code)


class BudgetProxyHook(CustomLogger):
    """A LiteLLM Proxy callback: reserve in `async_pre_call_hook`, settle on success, release on failure.

    One hold per call, created with the Idempotency-Key `litellm-proxy-reserve:<litellm_call_id>`
    and settled with `litellm:<litellm_call_id>`, so a retried request or a success event run
    twice records once. `settled`, `released` and `errors` count what the hook did in this process.
    """

    def __init__(self, settings: ProxyHookSettings | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, client: AsyncClient | None = None) -> None:
        super().__init__()
        self.settings = settings or ProxyHookSettings.from_env()
        self._base_url = base_url
        self._api_key = api_key
        self._given_client = client
        # An httpx.AsyncClient belongs to the event loop it was first used on: one per loop
        # (the proxy runs one per worker; tests may run several one after the other).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary())
        # LiteLLM drops a second logger whose class name and public scalar attributes equal an
        # existing one's: a unique id keeps two hooks (two services) apart; counters stay private.
        self.hook_id = uuid.uuid4().hex
        self._reserved = 0
        self._refused = 0
        self._fell_back = 0
        self._settled = 0
        self._released = 0
        self._errors = 0

    # --- what the hook did (this process) -------------------------------------------------------

    @property
    def reserved(self) -> int:
        return self._reserved

    @property
    def refused(self) -> int:
        return self._refused

    @property
    def fell_back(self) -> int:
        """Calls sent to a fallback model (also counted in `reserved`)."""
        return self._fell_back

    @property
    def settled(self) -> int:
        return self._settled

    @property
    def released(self) -> int:
        return self._released

    @property
    def errors(self) -> int:
        return self._errors

    def client(self) -> AsyncClient:
        """The service's client for the running event loop (BUDGET_MANAGER_URL / BUDGET_MANAGER_API_KEY)."""
        if self._given_client is not None:
            return self._given_client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=self.settings.max_connections)
            client = AsyncClient(self._base_url, self._api_key, timeout=self.settings.timeout,
                                 http_client=httpx.AsyncClient(timeout=self.settings.timeout, limits=limits))
            self._clients[loop] = client
        return client

    # --- before the call ------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        user = call_user(data, user_api_key_dict, self.settings)
        if user is None:
            log.debug("budget_client: proxy call %s names no user; not budgeted", data.get("litellm_call_id"))
            return data
        metadata_name = _metadata_name(data)
        metadata = data.get(metadata_name)
        if not isinstance(metadata, MutableMapping):
            metadata = data[metadata_name] = dict(metadata) if isinstance(metadata, Mapping) else {}
        metadata[USER_KEY] = user
        call_id = data.get("litellm_call_id") or str(uuid.uuid4())
        data["litellm_call_id"] = call_id
        try:
            try:
                reservation = await self._reserve(user, data, call_id)
            except BudgetExceeded as refused:
                fallback = await self._routable_fallback(refused, user_api_key_dict)
                if fallback is None:
                    raise
                log.info("budget_client: %r has no room for %s (%s); proxy call %s goes to the fallback %s",
                         user, data.get("model"), refused.message, call_id, fallback)
                # Another request than the refused one (another model): its own key.
                reservation = await self._reserve(user, {**data, "model": fallback}, call_id + ":fallback")
                metadata[FALLBACK_FROM_KEY] = data.get("model")
                data["model"] = fallback
                self._fell_back += 1
        except BudgetExceeded as refused:
            self._refused += 1
            raise _budget_error(refused.message) from refused
        except BudgetClientError as error:
            self._errors += 1
            if self.settings.fail_open and not isinstance(error, UnknownModel):
                log.warning("budget_client: no hold for proxy call %s of %r (%s); let through (fail open)",
                            call_id, user, error)
                return data
            log.error("budget_client: no hold for proxy call %s of %r: %s", call_id, user, error)
            status = 400 if isinstance(error, UnknownModel) else 503
            raise _unavailable_error(f"Budget Manager: {error.message}", status) from error
        if reservation is not None:
            self._reserved += 1
            metadata[RESERVATION_KEY] = reservation
        return data

    async def _routable_fallback(self, refused: BudgetExceeded, key: Any) -> str | None:
        """The refusal's fallback model, if the setting is on and the proxy would route it for this key."""
        if not self.settings.fallback or refused.fallback is None:
            return None
        model = refused.fallback.model
        routable = await proxy_may_call(model, key)
        if routable is False:
            log.warning("budget_client: the fallback %s is not a model this proxy routes for the key; refused",
                        model)
            return None
        return model

    async def _reserve(self, user: str, data: Mapping[str, Any], call_id: str) -> int | None:
        client = self.client()
        key = f"litellm-proxy-reserve:{call_id}"
        common: dict[str, Any] = {"ttl_seconds": self.settings.ttl_seconds, "tags": request_tags(data) or None,
                                  "idempotency_key": key}
        model, messages = data.get("model"), data.get("messages")
        if isinstance(model, str) and isinstance(messages, list) and messages:
            max_tokens = _max_tokens(data) or self.settings.default_max_tokens
            try:
                reservation = await client.create_reservation(user, model=model, messages=messages,
                                                              max_tokens=max_tokens, **common)
                return reservation.id
            except UnknownModel:
                if self.settings.default_cost is None:
                    raise
        if self.settings.default_cost is None:
            return None  # nothing to price the worst case with: recorded when it succeeds
        reservation = await client.create_reservation(
            user, model=model if isinstance(model, str) else None, estimated_cost=self.settings.default_cost,
            **{**common, "idempotency_key": key + ":default"})
        return reservation.id

    # --- after the call -------------------------------------------------------------------------

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        metadata = _call_metadata(kwargs)
        user = metadata.get(USER_KEY)
        if not isinstance(user, str):
            return
        call_id = kwargs.get("litellm_call_id")
        key = f"litellm:{call_id}" if call_id else None
        reservation_id = metadata.get(RESERVATION_KEY)
        try:
            fields = cost_fields(kwargs, response_obj)
            if reservation_id is not None:
                await self.client().settle_reservation(int(reservation_id), idempotency_key=key, **fields)
            else:
                await self.client().record_cost(user, idempotency_key=key, **fields)
        except Exception:
            self._errors += 1
            log.exception("budget_client: could not record the cost of proxy call %s for %r", call_id, user)
        else:
            self._settled += 1

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        await self._release(_call_metadata(kwargs).get(RESERVATION_KEY))

    async def async_post_call_failure_hook(self, request_data: dict[str, Any], original_exception: Exception,
                                           user_api_key_dict: Any, traceback_str: str | None = None) -> None:
        await self._release(_call_metadata(request_data).get(RESERVATION_KEY))

    async def _release(self, reservation_id: Any) -> None:
        if reservation_id is None:
            return
        try:
            await self.client().release_reservation(int(reservation_id))
        except BudgetClientError as error:
            # 409: settled already (the failure came after the answer); else the hold expires on the server.
            if error.status != 409:
                self._errors += 1
                log.warning("budget_client: could not release reservation %s (%s); it expires", reservation_id,
                            error)
        else:
            self._released += 1


# The instance the proxy's config names: `callbacks: budget_client.litellm_proxy.budget_hook`.
budget_hook = BudgetProxyHook()
