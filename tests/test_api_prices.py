"""GET /api/v1/prices/{model}: the price recording charges, read through the API."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgets.models import ModelPrice

pytestmark = pytest.mark.django_db


def test_it_answers_a_models_price_per_token(api):
    ModelPrice.objects.update_or_create(
        model="house-model",
        defaults={"input_cost_per_token": Decimal("0.000001"), "output_cost_per_token": Decimal("0.000004"),
                  "provider": "house", "mode": "chat"},
    )

    response = api.get("/api/v1/prices/house-model")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "model": "house-model", "provider": "house", "mode": "chat",
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000004,
        "cache_read_input_token_cost": None, "cache_creation_input_token_cost": None,
    }


def test_it_matches_a_provider_prefixed_name_as_recording_does(api):
    response = api.get("/api/v1/prices/openai/gpt-4o")

    assert response.status_code == 200, response.content
    assert response.json()["model"] == "gpt-4o"
    assert Decimal(str(response.json()["input_cost_per_token"])) > 0


def test_an_unknown_model_is_a_422_naming_it(api):
    response = api.get("/api/v1/prices/no-such-model")

    assert response.status_code == 422
    assert response.json()["error"]["type"] == "unknown_model"
    assert "no-such-model" in response.json()["error"]["message"]


def test_it_needs_a_key(client):
    assert client.get("/api/v1/prices/gpt-4o").status_code == 401
