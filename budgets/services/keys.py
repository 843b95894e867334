"""Projects' API keys: create (the secret shown once), mark used, revoke."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import transaction
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, InvalidInput
from ..models import ApiKey, Project
from ..selectors.budgets import (
    KEY_GENERATION,
    KEY_PREFIX,
    SHOWN_LENGTH,
    active_api_key,
    cache_breaker,
    forget_api_keys,
    hash_key,
)
from .audit import write_audit

USED_STAMP_EVERY = timedelta(minutes=1)


def api_keys_changed() -> None:
    """After a key is revoked or its project changed or deleted (on commit): every process reads keys again.

    This process forgets its cached keys at once; the others see the shared generation move at
    their next request (selectors.key_generation). Without a shared cache they forget within
    API_KEY_CACHE_SECONDS.
    """
    forget_api_keys()
    if not cache_breaker.available():
        return
    # A lost generation (Redis restarted, evicted) starts again at a random number, not at one
    # a process may have cached keys under.
    try:
        if not cache.add(KEY_GENERATION, secrets.randbits(60), timeout=None):
            try:
                cache.incr(KEY_GENERATION)
            except ValueError:  # evicted between add and incr
                cache.add(KEY_GENERATION, secrets.randbits(60), timeout=None)
    except Exception as exc:
        cache_breaker.failed(exc)


def api_key_create(*, project: Project, name: str, actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key; the raw secret is returned once and only its hash is kept."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("key name must be a non-empty string of at most 100 characters")
    if ApiKey.objects.filter(project=project, name=name.strip()).exists():
        # Key limits name their key, so a name is taken for good (a revoked key keeps its name).
        raise Conflict(f"the project already has a key named {name.strip()!r}")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    with transaction.atomic():
        key = ApiKey.objects.create(project=project, name=name.strip(), prefix=raw[:SHOWN_LENGTH],
                                    key_hash=hash_key(raw))
        write_audit(project_id=project.pk, action="api_key_create", actor=actor,
                    after={"name": key.name, "prefix": key.prefix})
    return key, raw


# When this process last stamped each key: the key objects are cached copies, so their own
# last_used_at does not say it.
_stamped: dict[str, datetime] = {}  # by key hash: ids can be reused (SQLite), hashes not


def api_key_mark_used(key: ApiKey) -> None:
    """Stamp `last_used_at`, at most once a minute per key and process (no write on the usual request)."""
    at = utcnow()
    last = max((t for t in (key.last_used_at, _stamped.get(key.key_hash)) if t is not None), default=None)
    if last is None or at - last > USED_STAMP_EVERY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=at)
        _stamped[key.key_hash] = key.last_used_at = at


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The active key for this secret (marked used), or None."""
    key = active_api_key(raw)
    if key is not None:
        api_key_mark_used(key)
    return key


def api_key_revoke(*, key: ApiKey, actor: str) -> ApiKey:
    with transaction.atomic():
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=utcnow()):
            transaction.on_commit(api_keys_changed)  # every process at its next request
            write_audit(project_id=key.project_id, action="api_key_revoke", actor=actor,
                        after={"name": key.name, "prefix": key.prefix})
        key.refresh_from_db()
    return key
