"""Fixtures shared by the whole suite."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings

from budgets import pricing, services
from budgets.models import ModelPrice, Project
from budgets.services.prices import load_price_map

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL=postgres://...)")
    for item in items:
        if "postgres" in item.keywords and not ON_POSTGRES:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_price_cache():
    """A rolled-back test sends no signal: clear the in-process price cache around each test."""
    pricing.clear_price_cache()
    yield
    pricing.clear_price_cache()


@pytest.fixture(autouse=True)
def prices_after_flush(request: pytest.FixtureRequest) -> None:
    """Transactional tests flush every table afterwards, the price map too: load it again."""
    marker = request.node.get_closest_marker("django_db")
    transactional = (marker is not None and marker.kwargs.get("transaction")) or any(
        name in request.fixturenames for name in ("transactional_db", "live_server")
    )
    if transactional:
        request.getfixturevalue("transactional_db")
        if not ModelPrice.objects.exists():
            load_price_map()


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
