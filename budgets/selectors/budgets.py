"""Reads of budgets, spend, the ledger, prices and keys for the manager, the API and the pages. No writes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models import Model, Q, QuerySet
from django.db.models.base import ModelState

from .. import periods, pricing
from ..errors import Unprocessable
from ..models import ApiKey, CostEvent, ModelSpend, Project, UserBudget
from ..usage import Usage, prompt_usage


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
    since: datetime | None = None, until: datetime | None = None,
) -> QuerySet[CostEvent]:
    """The project's ledger, newest first, filtered."""
    events = CostEvent.objects.filter(project=project)
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
    cursor: str | None, limit: int,
) -> tuple[list[CostEvent], str | None]:
    """One page of the ledger, newest first, and the cursor of the next (older) page."""
    events = cost_events(project, user_id=user_id, model=model, since=since, until=until)
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


# Active keys found recently: digest → (expiry on the monotonic clock, key with its project).
# Every API request starts with this lookup; the cache saves it a query. A revoked key or a
# changed project is forgotten at once in the process that changed it (services call
# forget_api_keys) and within API_KEY_CACHE_SECONDS everywhere else.
_key_cache: dict[str, tuple[float, ApiKey]] = {}
_key_cache_lock = threading.Lock()
KEY_CACHE_MAX = 10_000


def forget_api_keys() -> None:
    with _key_cache_lock:
        _key_cache.clear()


def _copy_instance(instance: Model) -> Any:
    """A shallow copy of a model instance, its cached relations not shared.

    What copy.copy does through Model.__reduce__/__getstate__, without pickling's model lookup:
    that took ~80 µs per request, this ~5 µs.
    """
    clone = instance.__class__.__new__(instance.__class__)
    clone.__dict__ = instance.__dict__.copy()
    clone._state = ModelState()
    clone._state.db, clone._state.adding = instance._state.db, instance._state.adding
    clone._state.fields_cache = dict(instance._state.fields_cache)
    return clone


def _fresh_copy(key: ApiKey) -> ApiKey:
    """A copy per request: a request may change its project object's figures, another must not see that."""
    clone: ApiKey = _copy_instance(key)
    clone.project = _copy_instance(key.project)
    return clone


def _well_formed(raw: object) -> bool:
    return isinstance(raw, str) and raw.startswith(KEY_PREFIX) and len(raw) <= 200


def remembered_api_key(raw: str) -> ApiKey | None:
    """The key for this secret if this process found it active within API_KEY_CACHE_SECONDS; no query."""
    if not _well_formed(raw):
        return None
    cached = _key_cache.get(hash_key(raw))
    if cached is not None and cached[0] > time.monotonic():
        return _fresh_copy(cached[1])
    return None


def active_api_key(raw: str) -> ApiKey | None:
    """The active key for this secret (with its project), or None."""
    if not _well_formed(raw):
        return None
    digest = hash_key(raw)
    ttl = float(getattr(settings, "API_KEY_CACHE_SECONDS", 5))
    now = time.monotonic()
    cached = _key_cache.get(digest)
    if cached is not None and cached[0] > now:
        return _fresh_copy(cached[1])
    # Found by its public prefix, then the secret's hash compared in constant time.
    candidates = ApiKey.objects.select_related("project").filter(prefix=raw[:SHOWN_LENGTH], revoked_at__isnull=True)
    key = next((k for k in candidates if hmac.compare_digest(k.key_hash, digest)), None)
    if key is not None and ttl > 0:
        with _key_cache_lock:
            if len(_key_cache) >= KEY_CACHE_MAX:
                _key_cache.clear()
            _key_cache[digest] = (now + ttl, _fresh_copy(key))
    return key
