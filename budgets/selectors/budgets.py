"""Reads of budgets, spend, the ledger, prices and keys for the manager, the API and the pages. No writes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Model, Q, QuerySet

from ..base.errors import Unprocessable
from ..domain import periods, pricing
from ..domain.usage import Usage, prompt_usage
from ..models import ApiKey, CostEvent, ModelSpend, Project, UserBudget

logger = logging.getLogger(__name__)


def model_costs(budget: UserBudget) -> dict[str, Decimal]:
    """Spend per model in the budget's current period."""
    return dict(ModelSpend.objects.filter(budget_id=budget.pk).values_list("model", "spend"))


def unix(at: datetime) -> float:
    return at.timestamp()


def budget_record(budget: UserBudget, costs: dict[str, Decimal] | None = None) -> dict[str, Any]:
    """The budget as LiteLLM's BudgetManager keeps a user (its `user_dict[user]`), money as Decimal.

    duration is in days (1, 7, 28, 365 as the client uses them); created_at and
    last_updated_at are Unix seconds, the latter the current period's start.
    """
    record: dict[str, Any] = {"total_budget": budget.total_budget}
    days = periods.duration_to_days(budget.duration, budget.duration_days)
    if days is not None:
        record["duration"] = days
    record["created_at"] = unix(budget.created_at)
    record["last_updated_at"] = unix(budget.period_start)
    record["current_cost"] = budget.current_spend
    record["model_cost"] = model_costs(budget) if costs is None else costs
    return record


def user_ids(project: Project) -> list[str]:
    return list(UserBudget.objects.filter(project=project).order_by("user_id").values_list("user_id", flat=True))


def cost_events(
    project: Project, *, user_id: str | None = None, model: str | None = None,
    since: datetime | None = None, until: datetime | None = None, tag: str | None = None,
) -> QuerySet[CostEvent]:
    """The project's ledger, newest first, filtered (`tag`: the events that carry it)."""
    events = CostEvent.objects.filter(project=project)
    if tag is not None:
        events = events.filter(tags__contains=f",{tag},")
    if user_id is not None:
        events = events.filter(user_id=user_id)
    if model is not None:
        events = events.filter(model=model)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-id")


class PromptCost(NamedTuple):
    usage: Usage
    cost: Decimal


def prompt_cost(model: Any, messages: Any) -> PromptCost:
    """Prompt tokens of chat `messages` (OpenAI framing) and their cost; UnknownModel if unpriced."""
    usage = prompt_usage(model, messages)
    price = pricing.get_price(usage.model)
    return PromptCost(usage, pricing.cost_of_tokens(price, prompt_tokens=usage.prompt_tokens, completion_tokens=0))


class ProjectedCost(NamedTuple):
    model: str
    prompt_tokens: int
    prompt_cost: Decimal
    current_cost: Decimal
    projected_cost: Decimal


def projected_cost(budget: UserBudget, model: Any, messages: Any) -> ProjectedCost:
    """The seed's projected_cost: the user's current cost plus the prompt cost of `messages`."""
    prompt = prompt_cost(model, messages)
    return ProjectedCost(
        model=prompt.usage.model, prompt_tokens=prompt.usage.prompt_tokens, prompt_cost=prompt.cost,
        current_cost=budget.current_spend, projected_cost=budget.current_spend + prompt.cost,
    )


def budgets_with_costs(
    project: Project, *, offset: int, limit: int,
) -> tuple[list[UserBudget], dict[int, dict[str, Decimal]], int]:
    """A page of the project's budgets by user id, each one's spend per model, and the total count."""
    budgets = UserBudget.objects.filter(project=project).order_by("user_id")
    page = list(budgets[offset: offset + limit])
    costs: dict[int, dict[str, Decimal]] = {budget.pk: {} for budget in page}
    for budget_id, model, spend in ModelSpend.objects.filter(budget_id__in=costs).values_list(
        "budget_id", "model", "spend"
    ):
        costs[budget_id][model] = spend
    return page, costs, budgets.count()


def has_budget_or_costs(project: Project, user_id: str) -> bool:
    return (UserBudget.objects.filter(project=project, user_id=user_id).exists()
            or CostEvent.objects.filter(project=project, user_id=user_id).exists())


def _encode_cursor(event: CostEvent) -> str:
    raw = json.dumps([event.created_at.isoformat(), event.pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, pk = json.loads(raw)
        at = datetime.fromisoformat(at)
        if at.tzinfo is None or isinstance(pk, bool) or not isinstance(pk, int) or not 0 < pk < 2**63:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable("cursor is not one this API gave out") from None
    return at, pk


def ledger_slice(
    project: Project, *, user_id: str | None, model: str | None, since: datetime | None, until: datetime | None,
    cursor: str | None, limit: int, tag: str | None = None,
) -> tuple[list[CostEvent], str | None]:
    """One page of the ledger, newest first, and the cursor of the next (older) page."""
    events = cost_events(project, user_id=user_id, model=model, since=since, until=until, tag=tag)
    if cursor:
        at, pk = _decode_cursor(cursor)
        events = events.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
    page = list(events[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, _encode_cursor(page[-1]) if more else None


KEY_PREFIX = "bm_"
SHOWN_LENGTH = 10  # the part of a key kept in clear (ApiKey.prefix), to find and recognise it


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# Active keys found recently: digest → (expiry on the monotonic clock, key with its project, the
# key generation read before the key was looked up). Every API request starts with this lookup;
# the cache saves it a query. A revoked key, a changed project or a deleted one is forgotten at
# once in the process that changed it (forget_api_keys) and, through the generation every service
# that changes keys bumps in the shared cache (Redis), at the next request in every other process.
# Without a shared cache (or while it fails) the others forget it within API_KEY_CACHE_SECONDS.
_key_cache: dict[str, tuple[float, tuple[_Row, _Row], int | None]] = {}
_key_cache_lock = threading.Lock()
KEY_CACHE_MAX = 10_000
KEY_GENERATION = "budgets:api-key-generation"


class CacheBreaker:
    """The shared cache is a guard, not a dependency: while it fails, requests go on without it.

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
            logger.warning("the shared cache (the API's failed-authentication limit and key generation) does not "
                           "answer (%s); requests go on without it for %d s", type(exc).__name__, self.pause)
        self.down_until = time.monotonic() + self.pause


cache_breaker = CacheBreaker()


def key_generation() -> int | None:
    """The shared key generation (one cache read, no SQL), or None while the cache does not answer."""
    if not cache_breaker.available():
        return None
    try:
        return int(_generation_read() or 0)
    except Exception as exc:  # Redis down or hung: keys then expire by API_KEY_CACHE_SECONDS alone
        cache_breaker.failed(exc)
        return None


_redis_reader: list[Any] = []  # [(the cache's connection pool, a client on it, the generation's Redis key)]


def _generation_read() -> Any:
    """cache.get(KEY_GENERATION), which every API request makes. Django's Redis cache builds a new
    redis-py client per call (~0.3 ms, more than the round trip); on Redis one client per connection
    pool is kept and reused (the pool is the cache's own: its connections, timeouts and fork check)."""
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return backend.get(KEY_GENERATION)
    redis_client: Any = backend._cache  # Django's RedisCacheClient: its pool, client class and serializer
    pool = redis_client._get_connection_pool(write=False)
    if not _redis_reader or _redis_reader[0][0] is not pool:
        _redis_reader[:] = [(pool, redis_client._client(connection_pool=pool),
                             backend.make_and_validate_key(KEY_GENERATION))]
    _, client, key = _redis_reader[0]
    raw = client.get(key)
    return None if raw is None else redis_client._serializer.loads(raw)


def forget_api_keys() -> None:
    with _key_cache_lock:
        _key_cache.clear()


class _Row(NamedTuple):
    """A model instance as plain values: what the key cache keeps, so no instance is shared."""

    names: list[str]
    values: list[Any]

    @classmethod
    def of(cls, instance: Model) -> _Row:
        names = [field.attname for field in instance._meta.concrete_fields]
        return cls(names, [getattr(instance, name) for name in names])


def _fresh_copy(cached: tuple[_Row, _Row]) -> ApiKey:
    """A new key with a new project per request: a request may change its project object's figures,
    another must not see that. Built with Model.from_db (positional, ~5 µs; copy.copy took ~80 µs)."""
    key_row, project_row = cached
    key = ApiKey.from_db(DEFAULT_DB_ALIAS, key_row.names, key_row.values)
    key.project = Project.from_db(DEFAULT_DB_ALIAS, project_row.names, project_row.values)
    return key


def _well_formed(raw: object) -> bool:
    return isinstance(raw, str) and raw.startswith(KEY_PREFIX) and len(raw) <= 200


def _remembered(digest: str, now: float) -> ApiKey | None:
    cached = _key_cache.get(digest)
    if cached is None or cached[0] <= now:
        return None
    generation = key_generation()
    if generation is not None and generation != cached[2]:
        _key_cache.pop(digest, None)  # a key changed somewhere since this one was read: read it again
        return None
    return _fresh_copy(cached[1])


def remembered_api_key(raw: str) -> ApiKey | None:
    """The key for this secret if this process found it active within API_KEY_CACHE_SECONDS and no key
    was revoked (or project changed or deleted) since; no query."""
    if not _well_formed(raw):
        return None
    return _remembered(hash_key(raw), time.monotonic())


def active_api_key(raw: str) -> ApiKey | None:
    """The active key for this secret (with its project), or None."""
    if not _well_formed(raw):
        return None
    digest = hash_key(raw)
    ttl = float(getattr(settings, "API_KEY_CACHE_SECONDS", 5))
    now = time.monotonic()
    remembered = _remembered(digest, now)
    if remembered is not None:
        return remembered
    generation = key_generation() if ttl > 0 else None  # read before the row: a bump after it is seen
    # Found by its public prefix, then the secret's hash compared in constant time.
    candidates = ApiKey.objects.select_related("project").filter(
        prefix=raw[:SHOWN_LENGTH], revoked_at__isnull=True, project__deleting_since__isnull=True)
    key = next((k for k in candidates if hmac.compare_digest(k.key_hash, digest)), None)
    if key is not None and ttl > 0:
        with _key_cache_lock:
            if len(_key_cache) >= KEY_CACHE_MAX:
                _key_cache.clear()
            _key_cache[digest] = (now + ttl, (_Row.of(key), _Row.of(key.project)), generation)
    return key
