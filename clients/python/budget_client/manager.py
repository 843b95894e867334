"""A drop-in for LiteLLM's `BudgetManager`, backed by the service's native API.

Same methods, arguments and return shapes as `litellm.BudgetManager` (and as the server-side
`budgets.manager.BudgetManager`); money comes back as Decimal. Unlike LiteLLM's hosted
client, it keeps no copy of the users: every method is one request, and `update_cost` is
one idempotent ledger record, so any number of processes share one exact ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .client import Client
from .errors import NotFound

SEED_DURATIONS = {None: "none", "daily": "daily", "weekly": "weekly", "monthly": "monthly", "yearly": "yearly"}


class BudgetManager:
    """`BudgetManager(project_name, api_base, api_key)`.

    The API key decides the project (a key opens its own project only); `project_name` is kept
    for compatibility and logging. `client_type` and `headers` are accepted as LiteLLM's class
    takes them: a `Authorization: Bearer ...` header gives the key when `api_key` is not passed.
    """

    def __init__(self, project_name: str, api_base: str | None = None, api_key: str | None = None, *,
                 client_type: str | None = None, headers: Mapping[str, str] | None = None,
                 client: Client | None = None, **client_options: Any) -> None:
        self.project_name = project_name
        self.client_type = client_type or "budget-manager"
        self.api_base = api_base
        if api_key is None and headers:
            authorization = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
            if authorization.lower().startswith("bearer "):
                api_key = authorization[7:].strip()
        self.client = client or Client(api_base, api_key, **client_options)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> BudgetManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_budget(self, total_budget: Any, user: str, duration: str | None = None,
                      created_at: float | None = None) -> dict[str, Any]:
        """Create or replace the user's budget; returns the user's record.

        Replacing keeps the spend of the current period (spend is a fact); periods are the
        service's calendar periods, so `created_at` is accepted and not used.
        """
        if duration not in SEED_DURATIONS:
            raise ValueError('duration needs to be one of ["daily", "weekly", "monthly", "yearly"]')
        return self.client.set_budget(user, total_budget, SEED_DURATIONS[duration]).seed_record()

    def projected_cost(self, model: str, messages: list[dict[str, Any]], user: str) -> Decimal:
        """The user's current cost plus the prompt cost of `messages` for `model`."""
        return self.client.projected_cost(user, model, messages).projected_cost

    def get_total_budget(self, user: str) -> Decimal:
        return self.client.get_user(user).total_budget

    def update_cost(self, user: str, completion_obj: Any = None, model: str | None = None,
                    input_text: str | None = None, output_text: str | None = None) -> dict[str, Any]:
        """Record a call's cost from model + texts, or from a completion object; returns {"user": record}.

        One request with its own Idempotency-Key: retried after a lost answer, it records once.
        """
        if model and input_text is not None and output_text is not None:
            recorded = self.client.record_cost(user, model=model, input_text=input_text, output_text=output_text)
        elif completion_obj:
            recorded = self.client.record_cost(user, completion_obj)
        else:
            raise ValueError("Either a chat completion object or the text response needs to be passed in.")
        return {"user": recorded.user.seed_record()}

    def get_current_cost(self, user: str) -> Decimal:
        return self.client.get_user(user).current_cost

    def get_model_cost(self, user: str) -> dict[str, Decimal]:
        """Spend per model in the current period (an empty dict where LiteLLM's answers 0 before any spend)."""
        return self.client.get_user(user).model_cost

    def is_valid_user(self, user: str) -> bool:
        try:
            self.client.get_user(user)
        except NotFound:
            return False
        return True

    def get_users(self) -> list[str]:
        return [user.user for user in self.client.iter_users()]

    def reset_cost(self, user: str) -> dict[str, Any]:
        """Set the user's spend to zero (audited; the ledger stays); returns {"user": record}."""
        return {"user": self.client.reset_user(user).seed_record()}

    def reset_on_duration(self, user: str) -> None:
        """Reset the user if their period has ended: the service does it on reading the budget."""
        self.client.get_user(user)

    def update_budget_all_users(self) -> None:
        """Reset every user whose period has ended: listing the users does it on the service."""
        self.client.list_users(limit=1)

    def save_data(self) -> dict[str, str]:
        """Every change is already on the service; answers as LiteLLM's does."""
        return {"status": "success"}
