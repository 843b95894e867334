"""The price table: load LiteLLM's price map into it, and edits made in Django admin."""

from __future__ import annotations

from typing import Any

from django.db import router, transaction
from django.utils.timezone import now

from ..domain.pricing import (
    ADMIN_SOURCE,
    BATCH_SIZE,
    PRICE_FIELDS,
    LoadResult,
    PriceMapError,
    _read_source,
    clear_price_cache,
    parse_price_map,
)
from ..models import ModelPrice


def load_price_map(source: str | None = None, *, model_class: Any = None, using: str | None = None) -> LoadResult:
    """Load a LiteLLM price map into the price table; running it again changes nothing.

    `source` is None for the shipped snapshot, a path (.json or .json.gz) or an http(s) URL.
    Models are added or updated in bulk inside one transaction; rows edited in admin
    (source "admin") are kept as they are, and models missing from the map are not deleted.
    Loaded rows get source "snapshot", "file" or "url". `model_class` lets a data migration pass
    its historical model. Raises PriceMapError, having written nothing, for a bad source.
    """
    model_class = model_class or ModelPrice
    data, label, kind = _read_source(source)
    try:
        prices = parse_price_map(data)
    except ValueError as exc:
        raise PriceMapError(f"{label}: {exc}") from exc

    db = using or router.db_for_write(model_class)
    manager = model_class._default_manager.db_manager(db)
    stamp = now()
    added: list[Any] = []
    changed: list[Any] = []
    unchanged = kept = 0
    with transaction.atomic(using=db):
        # Locked so that an admin edit made during the load is not overwritten.
        rows = manager.select_for_update().order_by().only("model", "source", *PRICE_FIELDS)
        existing = {row.model: row for row in rows}
        for model, values in prices.items():
            row = existing.get(model)
            if row is None:
                added.append(model_class(model=model, source=kind, updated_at=stamp, **values))
            elif row.source == ADMIN_SOURCE:
                kept += 1
            elif all(getattr(row, field) == value for field, value in values.items()):
                unchanged += 1
            else:
                for field, value in values.items():
                    setattr(row, field, value)
                row.source, row.updated_at = kind, stamp
                changed.append(row)
        manager.bulk_create(added, batch_size=BATCH_SIZE)
        manager.bulk_update(changed, [*PRICE_FIELDS, "source", "updated_at"], batch_size=BATCH_SIZE)
        # Bulk writes send no signals; if this is inside a longer transaction, clear again on commit.
        transaction.on_commit(clear_price_cache, using=db)
    clear_price_cache()
    return LoadResult(added=len(added), changed=len(changed), unchanged=unchanged, kept=kept, source=label)


def price_save_edited(*, price: ModelPrice) -> ModelPrice:
    """Save a price edited by hand (Django admin); later loads of the price map leave it alone."""
    price.source = ADMIN_SOURCE
    price.updated_at = now()
    price.save()
    return price
