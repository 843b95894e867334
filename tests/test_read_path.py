"""The API's read path: what a request with a key in use costs, and what the process-local caches promise.

A web process remembers an active key for API_KEY_CACHE_SECONDS (revoked at once in the
revoking process, within those seconds elsewhere): a read with a key in use then asks neither
the database for the key nor the shared cache for the failure counter, which only wrong keys touch;
it reads one number from the shared cache, the key generation, which every revocation, project
change and project deletion moves, so that a key stops in every process at once.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

from budgets import selectors, services
from budgets.api import auth
from budgets.models import ApiKey
from budgets.selectors.budgets import KEY_GENERATION, remembered_api_key
from tests.api_helpers import assert_error, db_state, new_key

pytestmark = pytest.mark.django_db


def unique_address() -> str:
    number = uuid.uuid4().int
    return f"10.{number % 250}.{number // 250 % 250}.{number // 62500 % 250 + 1}"


def get_user(raw: str, address: str, user: str = "alice"):
    return Client().get(f"/api/v1/users/{user}", headers={"Authorization": f"Bearer {raw}"}, REMOTE_ADDR=address)


@pytest.fixture
def limited(settings):
    settings.API_AUTH_FAILURE_LIMIT = 3
    return settings


@pytest.fixture
def counted_cache_reads(monkeypatch):
    """How many times the shared cache was read since the fixture started (on Redis, every read of the
    server, Django's cache's own and the key generation's through its kept client)."""
    reads: list[str] = []
    if isinstance(caches["default"], RedisCache):
        original_redis = redis.Redis.get

        def redis_get(client, name):
            reads.append(KEY_GENERATION if str(name).endswith(KEY_GENERATION) else name)
            return original_redis(client, name)

        monkeypatch.setattr(redis.Redis, "get", redis_get)
        return reads
    original = cache.get

    def get(key, *args, **kwargs):
        reads.append(key)
        return original(key, *args, **kwargs)

    monkeypatch.setattr(cache, "get", get)
    return reads


# --- what a read costs ---------------------------------------------------------------------------


def test_a_read_with_a_key_in_use_asks_the_shared_cache_only_for_the_key_generation(project, make_budget,
                                                                                    counted_cache_reads):
    make_budget("alice")
    raw, address = new_key(project), unique_address()
    assert get_user(raw, address).status_code == 200
    counted_cache_reads.clear()

    for _ in range(5):
        assert get_user(raw, address).status_code == 200

    # One read each, to learn whether a key was revoked anywhere; never the failure counter.
    assert counted_cache_reads == [KEY_GENERATION] * 5


def test_a_read_with_a_key_in_use_is_one_statement_and_writes_nothing(project, make_budget):
    make_budget("alice")
    raw, address = new_key(project), unique_address()
    assert get_user(raw, address).status_code == 200  # finds the key, stamps last_used_at
    before = db_state()

    with CaptureQueriesContext(connection) as queries:
        response = get_user(raw, address)

    assert response.status_code == 200
    assert len(queries.captured_queries) == (1 if connection.vendor == "postgresql" else 2), \
        [q["sql"] for q in queries.captured_queries]
    assert not any(q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
                   for q in queries.captured_queries)
    assert db_state() == before


# --- the failed-authentication limit never refuses a key in use --------------------------------


def test_a_key_in_use_is_served_after_its_address_fails_past_the_limit(project, make_budget, limited):
    make_budget("alice")
    raw, address = new_key(project), unique_address()
    assert get_user(raw, address).status_code == 200
    for _ in range(5):
        get_user("bm_wrong_key_0123456789", address)
    assert_error(get_user("bm_wrong_key_0123456789", address), 429, "too_many_requests")

    assert get_user(raw, address).status_code == 200


def test_failures_counted_by_another_process_throttle_a_wrong_key_here(project, limited):
    address = unique_address()
    counter, _ = auth._failure_counter(RequestFactory().get("/", REMOTE_ADDR=address))
    cache.set(counter, 3, 120)  # another web process counted three failures from this address

    response = get_user("bm_wrong_key_0123456789", address)

    assert_error(response, 429, "too_many_requests")
    assert int(response["Retry-After"]) > 0


# --- the key cache -------------------------------------------------------------------------------


def test_a_key_is_remembered_after_it_is_found_and_forgotten_at_once_when_revoked_here(
        project, django_capture_on_commit_callbacks):
    raw = new_key(project)
    assert remembered_api_key(raw) is None
    assert selectors.active_api_key(raw) is not None
    assert remembered_api_key(raw) is not None

    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(key=ApiKey.objects.get(project=project), actor="test")

    assert remembered_api_key(raw) is None
    assert_error(get_user(raw, unique_address()), 401, "unauthorized")


def test_a_key_revoked_by_another_process_stops_within_the_cache_seconds(project, make_budget, settings):
    settings.API_KEY_CACHE_SECONDS = 0.05
    make_budget("alice")
    raw, address = new_key(project), unique_address()
    assert get_user(raw, address).status_code == 200
    # Another process revokes: the row changes, this process's cache is not told.
    ApiKey.objects.filter(project=project).update(revoked_at=ApiKey.objects.get(project=project).created_at)

    time.sleep(0.06)

    assert remembered_api_key(raw) is None
    assert_error(get_user(raw, address), 401, "unauthorized")


def test_a_remembered_key_is_a_copy_per_request(project):
    raw = new_key(project)
    selectors.active_api_key(raw)
    first, second = remembered_api_key(raw), remembered_api_key(raw)

    assert first is not None and second is not None
    first.project.current_spend = 99

    assert second.project.current_spend != 99
    assert remembered_api_key(raw).project.current_spend != 99  # type: ignore[union-attr]
