"""Fixtures shared by the whole suite.

A module that needs a variant asks for the factory (`make_budget`, `make_api`, `make_live_project`)
or overrides the fixture with one that takes it (`def api(api, make_budget): ...`); it does not copy it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from pytest_django.plugin import blocking_manager_key

from budgets import services
from budgets.domain import pricing
from budgets.models import ModelPrice, Project
from budgets.services.prices import load_price_map
from tests.api_helpers import ApiClient, new_key
from tests.server_support import start_server

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs PostgreSQL: `make test` runs it on 127.0.0.1's when it answers, "
                                   "or set DATABASE_URL=postgres://...")
    for item in items:
        if "postgres" in item.keywords and not ON_POSTGRES:
            item.add_marker(skip)
        # Schemathesis names each operation's test `test_...[GET /api/v1/users]` but, on pytest 9,
        # leaves all of them the function's node id; pytest-xdist (`make test`) schedules by node id
        # and would run one of the 17. Each gets the id its name says.
        if item.parent is not None and not item.nodeid.endswith(f"::{item.name}"):
            nodeid = f"{item.parent.nodeid}::{item.name}"
            if hasattr(item, "_id"):  # pytest 9: a structured NodeId
                item._id = type(item._id).parse(nodeid)
            else:
                item._nodeid = nodeid
    twice = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if twice:  # pytest-xdist would run one test of each such id and say nothing of the others
        raise pytest.UsageError(f"tests that share a node id: {twice}")


@pytest.fixture(autouse=True)
def fresh_price_cache():
    """A rolled-back test sends no signal: clear the in-process price cache around each test."""
    pricing.clear_price_cache()
    yield
    pricing.clear_price_cache()


def _transactional(item: pytest.Item) -> bool:
    """Whether pytest-django runs `item` on committed data, and empties every table after it."""
    marker = item.get_closest_marker("django_db")
    return bool((marker is not None and marker.kwargs.get("transaction")) or any(
        name in getattr(item, "fixturenames", ()) for name in ("transactional_db", "live_server")
    ))


@pytest.fixture(autouse=True)
def prices_after_flush(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush every table afterwards, the price map too: load it again."""
    if _transactional(request.node):
        request.getfixturevalue("transactional_db")
        if not ModelPrice.objects.exists():
            load_price_map()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """After a transactional test's flush, write again the rows the migrations wrote (prices, beat schedule).

    Run alone, pytest-django puts every transactional test after the others; with pytest-xdist
    (`make test`, --dist loadfile) a worker runs a file at a time, so the next file's tests,
    which read the price snapshot and the beat schedule as `migrate` left them, can come after a flush.
    """
    result = yield
    if _transactional(item) and nextitem is not None:  # after the last test, the test database is gone
        from budgets.services.schedule import beat_schedule_install

        with item.config.stash[blocking_manager_key].unblock():
            if not ModelPrice.objects.exists():
                load_price_map()
            beat_schedule_install()
    return result


@pytest.fixture
def project(db) -> Project:
    return services.project_create(name="acme", timezone="UTC")


@pytest.fixture
def make_budget(project):
    """Create a budget in `project` (or another project) through the service."""

    def make(user_id: str = "alice", total_budget: str = "10", duration: str | None = None, *, in_project=None):
        budget, _ = services.budget_set(
            project=in_project or project, user_id=user_id, total_budget=Decimal(total_budget),
            duration=duration, actor="test",
        )
        return budget

    return make


# --- alerts -------------------------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    """Alert ids handed to the broker (nothing is really queued)."""
    from budgets.services import alerts

    ids: list[int] = []

    def fake_queue(alert_id: int, **options) -> bool:
        ids.append(alert_id)
        return True

    monkeypatch.setattr(alerts, "queue_delivery", fake_queue)
    return ids


@pytest.fixture
def hooked(project) -> Project:
    """The project, with a webhook (its URL is replaced per test when one is received)."""
    project.alert_webhook_url = "http://127.0.0.1:9/hook"
    project.save(update_fields=["alert_webhook_url"])
    return project


# --- a project's API key and a client that sends it ------------------------------------------------


@pytest.fixture
def api_key(project) -> str:
    """The raw secret of a fresh API key of `project`."""
    return new_key(project)


@pytest.fixture
def make_api(project) -> Callable[..., ApiClient]:
    """An ApiClient with a fresh key of `project` (or `in_project`), on Django's test `client` if given."""

    def make(*, in_project: Project | None = None, client: Client | None = None) -> ApiClient:
        return ApiClient(new_key(in_project or project), client)

    return make


@pytest.fixture
def api(make_api) -> ApiClient:
    """An ApiClient authenticated with a fresh key of `project`."""
    return make_api()


# --- the same against a live server (the Python client, LiteLLM) ----------------------------------


@pytest.fixture
def make_live_project(transactional_db, monkeypatch) -> Callable[..., tuple[Project, str]]:
    """Make a project with an API key (and budgets) for a live server; returns (project, raw key)."""
    # The live server answers each request in a new thread: close its connection after the
    # request, or PostgreSQL still sees sessions when the test database is dropped.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)

    def make(name: str = "acme", *, budgets: dict[str, str] | None = None) -> tuple[Project, str]:
        project = services.project_create(name=name)
        _, raw = services.api_key_create(project=project, name="test")
        for user_id, total in (budgets or {}).items():
            services.budget_set(project=project, user_id=user_id, total_budget=Decimal(total), actor="test")
        return project, raw

    return make


@pytest.fixture
def acme(make_live_project) -> tuple[Project, str]:
    """The project `acme` and the raw secret of its key, for tests served by live_server."""
    return make_live_project()


@pytest.fixture
def budget_client(live_server, acme) -> Iterator[Any]:
    """The Python client (clients/python) on the live server with acme's key; no waiting between retries."""
    from budget_client import Client as BudgetClient

    with BudgetClient(live_server.url, acme[1], backoff=0.01) as client:
        yield client


# --- a real server: gunicorn with 4 workers (the concurrency proofs) -------------------------------


@pytest.fixture(scope="module")
def server(django_db_setup) -> Iterator[str]:
    """gunicorn -w 4 on the test database, started once per module; yields its base URL (tests.server_support).

    Each test still starts from its own committed data (its transactional_db empties the tables
    after it): the server holds no database connection between requests (DB_CONN_MAX_AGE=0), what
    its workers cache is keyed by API key, and every test makes keys of its own.
    """
    with start_server() as base:
        yield base
