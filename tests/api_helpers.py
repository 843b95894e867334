"""Helpers for the JSON API and hosted-protocol tests: plain functions; the fixtures on them are in conftest.py."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.test import Client

from budgets import services
from budgets.models import (
    Alert,
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    ModelSpend,
    Project,
    SpendDay,
    UserBudget,
)

_MISSING = object()


def new_key(project: Project, name: str = "test key") -> str:
    """A fresh API key for `project`; returns the raw secret."""
    _, raw = services.api_key_create(project=project, name=name)
    return raw


def body_of(response: Any) -> Any:
    """The JSON body, numbers with a fraction as Decimal (to check exactness)."""
    return json.loads(response.content, parse_float=Decimal)


class ApiClient:
    """Django's test client with a bearer key and JSON bodies."""

    def __init__(self, raw_key: str | None, client: Client | None = None) -> None:
        self.client = client or Client()
        self.raw_key = raw_key

    def call(self, method: str, path: str, body: Any = _MISSING, *, raw: bytes | str | None = None,
             headers: dict[str, str] | None = None, key: Any = _MISSING) -> Any:
        extra: dict[str, str] = dict(headers or {})
        raw_key = self.raw_key if key is _MISSING else key
        if raw_key is not None:
            extra.setdefault("Authorization", f"Bearer {raw_key}")
        kwargs: dict[str, Any] = {"headers": extra}
        if raw is not None:
            kwargs.update(data=raw, content_type="application/json")
        elif body is not _MISSING:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(self.client, method.lower())(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("get", path, **kwargs)

    def post(self, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        return self.call("post", path, body, **kwargs)

    def put(self, path: str, body: Any = _MISSING, **kwargs: Any) -> Any:
        return self.call("put", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.call("delete", path, **kwargs)


def assert_error(response: Any, status: int, type_: str) -> dict[str, Any]:
    """The one error shape of the native API; returns the error object."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = body_of(response)["error"]
    assert error["type"] == type_, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def db_state() -> dict[str, Any]:
    """Everything a request could write, to assert that a rejected one wrote nothing.

    ApiKey.last_used_at is left out: authenticating a request may stamp it.
    """
    return {
        "projects": list(Project.objects.order_by("pk").values_list("pk", "name", "current_spend", "max_budget")),
        "budgets": list(UserBudget.objects.order_by("pk").values_list(
            "pk", "project_id", "user_id", "total_budget", "duration", "duration_days", "current_spend",
            "period_start", "next_reset_at", "hosted_model_cost", "hosted_period_start", "updated_at")),
        "model_spend": list(ModelSpend.objects.order_by("pk").values_list(
            "pk", "budget_id", "model", "spend", "prompt_tokens", "completion_tokens")),
        "events": list(CostEvent.objects.order_by("pk").values_list("pk", "cost", "response")),
        "audit": list(AuditLog.objects.order_by("pk").values_list("pk", "action")),
        "periods": list(BudgetPeriod.objects.order_by("pk").values_list("pk", "spend")),
        "alerts": list(Alert.objects.order_by("pk").values_list("pk")),
        "keys": list(ApiKey.objects.order_by("pk").values_list("pk", "revoked_at")),
        "spend_days": list(SpendDay.objects.order_by("pk").values_list("pk", "spend", "events")),
    }
