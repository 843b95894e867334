"""Model prices: LiteLLM's price map loaded into `ModelPrice`, looked up as LiteLLM does, costed exactly.

Prices are dollars per token, `Decimal` from the JSON text to the cost: the map is parsed with
`parse_float=Decimal`, so 2.5e-06 is Decimal("0.0000025"), never a float.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, NamedTuple, cast

from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from budgets.base.errors import InvalidInput, UnknownModel
from budgets.domain.usage import Usage, check_cached
from budgets.models import ModelPrice

PROJECT_DIR = Path(__file__).resolve().parents[2]
SNAPSHOT_PATH = Path(__file__).resolve().parents[1] / "data" / "model_prices.json.gz"

# LiteLLM's map documents its own format in this entry; it prices nothing.
SKIPPED_ENTRIES = frozenset({"sample_spec"})
COST_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)
# Missing input/output prices mean free (LiteLLM's own default); missing cache prices mean "use the input price".
ZERO_WHEN_MISSING = frozenset({"input_cost_per_token", "output_cost_per_token"})
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_input_tokens", "max_output_tokens")
PRICE_FIELDS = ("provider", "mode", *COST_FIELDS, *TOKEN_LIMIT_FIELDS)

ADMIN_SOURCE = "admin"
BATCH_SIZE = 500
URL_TIMEOUT = 30  # seconds
MAX_MAP_BYTES = 64 * 1024 * 1024  # LiteLLM's map is ~3 MB; refuse anything absurd.
MAX_POSITIVE_INT = 2_147_483_647  # PositiveIntegerField's range on every backend.

_price_field = ModelPrice._meta.get_field("input_cost_per_token")
PRICE_PLACES: int = cast(int, _price_field.decimal_places)
PRICE_QUANTUM = Decimal(1).scaleb(-PRICE_PLACES)
# The largest price the column holds is below 10 ** (max_digits - decimal_places).
PRICE_LIMIT = Decimal(10) ** (cast(int, _price_field.max_digits) - PRICE_PLACES)
MODEL_MAX_LENGTH: int = cast(int, ModelPrice._meta.get_field("model").max_length)
PROVIDER_MAX_LENGTH: int = cast(int, ModelPrice._meta.get_field("provider").max_length)
MODE_MAX_LENGTH: int = cast(int, ModelPrice._meta.get_field("mode").max_length)


class PriceMapError(ValueError):
    """A price map could not be read or parsed; nothing was written."""


@dataclass(frozen=True, slots=True)
class Price:
    """A model's prices in dollars per token, detached from the ORM so it can be cached.

    `model` is the table's name for the model (e.g. "gpt-4o" when "openai/gpt-4o" was asked for).
    A cache price of None means "charge the input price".
    """

    model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    provider: str = ""
    mode: str = ""

    @classmethod
    def from_row(cls, row: Any) -> Price:
        return cls(
            model=row.model,
            input=row.input_cost_per_token,
            output=row.output_cost_per_token,
            cache_read=row.cache_read_input_token_cost,
            cache_creation=row.cache_creation_input_token_cost,
            provider=row.provider,
            mode=row.mode,
        )


class LoadResult(NamedTuple):
    """What a load did: rows added, changed, unchanged, and admin-edited rows kept as they are."""

    added: int
    changed: int
    unchanged: int
    kept: int
    source: str


# --- Parsing -----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a price")


def _cost(model: str, entry: dict[str, Any], field: str) -> Decimal | None:
    value = entry.get(field)
    if value is None:
        return Decimal(0) if field in ZERO_WHEN_MISSING else None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError(f"model {model!r}: {field} must be a number, not {value!r}")  # noqa: TRY004 (bad data)
    value = Decimal(value)
    if value < 0:
        raise ValueError(f"model {model!r}: {field} must not be negative, got {value}")
    if value >= PRICE_LIMIT:
        raise ValueError(f"model {model!r}: {field} {value} is too large for a price per token")
    # The column keeps PRICE_PLACES places; rounding here (not in the database) keeps reloads idempotent.
    # Only float noise is lost, e.g. 2.0000000000000002E-7 → 0.000000200000000000.
    if value.as_tuple().exponent < -PRICE_PLACES:  # type: ignore[operator]
        value = value.quantize(PRICE_QUANTUM)
    return value


def _token_limit(entry: dict[str, Any], field: str) -> int | None:
    value = entry.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITIVE_INT:
        return None
    return value


def _text(entry: dict[str, Any], field: str, max_length: int) -> str:
    value = entry.get(field)
    return value[:max_length] if isinstance(value, str) else ""


def parse_price_map(data: bytes | str) -> dict[str, dict[str, Any]]:
    """Parse LiteLLM's model price map into `ModelPrice` field values keyed by model name.

    Skips `sample_spec` and entries that are not objects. Raises ValueError for input that is not
    a JSON object or for a price that is not a non-negative number.
    """
    try:
        raw = json.loads(data, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        # A ValueError like any other malformed map, so callers catch one error.
        kind = type(raw).__name__
        raise ValueError(f"a price map is a JSON object of model name → prices, not a JSON {kind}")  # noqa: TRY004

    prices: dict[str, dict[str, Any]] = {}
    for model, entry in raw.items():
        if model in SKIPPED_ENTRIES or not isinstance(entry, dict):
            continue
        if not model or len(model) > MODEL_MAX_LENGTH:
            raise ValueError(f"model name {model[:80]!r} must be 1 to {MODEL_MAX_LENGTH} characters")
        values: dict[str, Any] = {
            "provider": _text(entry, "litellm_provider", PROVIDER_MAX_LENGTH),
            "mode": _text(entry, "mode", MODE_MAX_LENGTH),
        }
        for field in COST_FIELDS:
            values[field] = _cost(model, entry, field)
        for field in TOKEN_LIMIT_FIELDS:
            values[field] = _token_limit(entry, field)
        prices[model] = values
    return prices


# --- Loading -----------------------------------------------------------------------------------------


def _read_limited(stream: Any, label: str) -> bytes:
    data = stream.read(MAX_MAP_BYTES + 1)
    if len(data) > MAX_MAP_BYTES:
        raise PriceMapError(f"{label}: larger than {MAX_MAP_BYTES // (1024 * 1024)} MB, not a price map")
    return data


def _read_source(source: str | None) -> tuple[bytes, str, str]:
    """Return (bytes of the map, a label for messages, the `source` value for loaded rows)."""
    if source is None:
        path, kind = SNAPSHOT_PATH, "snapshot"
        label = str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)
    elif source.lower().startswith(("http://", "https://")):
        label, kind = source, "url"
        request = urllib.request.Request(
            source, headers={"User-Agent": "budget-manager load_prices", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as response:
                data = _read_limited(response, label)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise PriceMapError(f"cannot download {label}: {exc}") from exc
        return _gunzip(data, label), label, kind
    else:
        path, kind, label = Path(source), "file", source

    try:
        with path.open("rb") as file:
            data = _read_limited(file, label)
    except OSError as exc:
        raise PriceMapError(f"cannot read {label}: {exc.strerror or exc}") from exc
    return _gunzip(data, label), label, kind


def _gunzip(data: bytes, label: str) -> bytes:
    # By content, not by name: a .json.gz saved as .json, or a gzip body from a URL, still loads.
    if not data.startswith(b"\x1f\x8b"):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as file:
            return _read_limited(file, label)
    except (OSError, EOFError, zlib.error) as exc:
        raise PriceMapError(f"{label}: not a valid gzip file: {exc}") from exc


# --- Lookup ------------------------------------------------------------------------------------------

# Model name → (expiry on the monotonic clock, Price or None for "not in the table").
# Signals clear it on this process's edits; the TTL bounds how stale other processes' edits can be.
CACHE_TTL = 60.0  # seconds
CACHE_MAX_ENTRIES = 10_000  # unknown names are cached too; this bounds memory.
_cache: dict[str, tuple[float, Price | None]] = {}
_cache_generation = 0
_cache_lock = threading.Lock()


def clear_price_cache() -> None:
    """Forget every cached lookup (after prices change)."""
    global _cache_generation
    with _cache_lock:
        _cache.clear()
        _cache_generation += 1


@receiver(post_save, sender=ModelPrice, dispatch_uid="budgets.domain.pricing.price_saved")
@receiver(post_delete, sender=ModelPrice, dispatch_uid="budgets.domain.pricing.price_deleted")
def _price_changed(**kwargs: Any) -> None:
    clear_price_cache()


def _without_prefix(model: str) -> str | None:
    prefix, slash, rest = model.partition("/")
    return rest if slash and prefix and rest else None


def _pick(rows: list[Any]) -> Price | None:
    # Deterministic whatever the database's order: OpenAI's own entry first, then alphabetical.
    if not rows:
        return None
    return Price.from_row(min(rows, key=lambda row: (row.provider != "openai", row.model)))


def _lookup(model: str) -> Price | None:
    names = [model]
    bare = _without_prefix(model)
    if bare is not None:
        names.append(bare)
    for ignore_case in (False, True):
        key = str.lower if ignore_case else str
        if ignore_case:
            query = Q(model__iendswith=f"/{model}")
            for name in names:
                query |= Q(model__iexact=name)
        else:
            query = Q(model__in=names) | Q(model__endswith=f"/{model}")
        # One query per pass: the candidates for every step below.
        rows = list(ModelPrice.objects.filter(query).order_by())
        # 1. The exact name, then 2. the name without its "provider/" prefix.
        for name in names:
            price = _pick([row for row in rows if key(row.model) == key(name)])
            if price is not None:
                return price
        # 3. The name with a provider prefix added: a row named "<its provider>/<model>".
        price = _pick([row for row in rows if key(row.model) == key(f"{row.provider}/{model}")])
        if price is not None:
            return price
    return None


def find_price(model: str) -> Price | None:
    """The price of `model` as LiteLLM would match it, or None; cached in-process for CACHE_TTL.

    Tried in order, case-sensitive first and then case-insensitive: the exact name; the name
    without its "provider/" prefix ("openai/gpt-4o" → "gpt-4o"); the name with a provider prefix
    added, i.e. a row "<provider>/<model>" whose provider column is that prefix ("llama-guard-3-8b"
    → "groq/llama-guard-3-8b"). Several matches: provider "openai" first, then alphabetical.
    """
    now_ = time.monotonic()
    hit = _cache.get(model)
    if hit is not None and hit[0] > now_:
        return hit[1]
    generation = _cache_generation
    price = _lookup(model) if model else None
    with _cache_lock:
        # A clear during the lookup means the rows read may be stale: answer, but don't cache.
        if generation == _cache_generation:
            if len(_cache) >= CACHE_MAX_ENTRIES:
                _cache.clear()
            _cache[model] = (now_ + CACHE_TTL, price)
    return price


def get_price(model: str) -> Price:
    """The price of `model`; raises UnknownModel when the table has no match."""
    price = find_price(model)
    if price is None:
        raise UnknownModel(f"unknown model {model!r}: give prices or a cost")
    return price


# --- Cost --------------------------------------------------------------------------------------------


def cost_of_tokens(
    price: Price,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_creation_tokens: int = 0,
) -> Decimal:
    """The exact dollar cost of a call's tokens.

    `cached_tokens` are the part of `prompt_tokens` read from the cache (OpenAI's
    prompt_tokens_details.cached_tokens), charged at the cache read price. `cache_creation_tokens`
    (Anthropic's cache_creation_input_tokens) are counted apart from `prompt_tokens`, charged at
    the cache creation price. A missing cache price falls back to the input price.
    """
    counts = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "cache_creation_tokens": cache_creation_tokens,
    }
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidInput(f"{name} must be a whole number, not {count!r}")
        if count < 0:
            raise InvalidInput(f"{name} must not be negative, got {count}")
    check_cached(prompt_tokens, cached_tokens)
    cache_read = price.input if price.cache_read is None else price.cache_read
    cache_creation = price.input if price.cache_creation is None else price.cache_creation
    # Enough digits that no product or sum is ever rounded.
    with localcontext() as context:
        context.prec = 100
        return (
            (prompt_tokens - cached_tokens) * price.input
            + cached_tokens * cache_read
            + cache_creation_tokens * cache_creation
            + completion_tokens * price.output
        )


def cost_of_usage(usage: Usage, price: Price | None = None) -> Decimal:
    """The cost of a call's usage at `price` (default: the model's price in the table)."""
    return cost_of_tokens(
        price or get_price(usage.model), prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens,
    )
