"""LiteLLM's BudgetManager API, server-side, backed by the database.

Same method names, arguments and return shapes as `litellm.BudgetManager`; money
comes back as Decimal. Every method goes through budgets.services.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .base.validation import validate_tags
from .domain.usage import usage_from_completion, usage_from_texts
from .models import CostEvent, Duration, Project, UserBudget
from .selectors.budgets import budget_record, projected_cost, user_ids
from .services.audit import actor_for_manager
from .services.costs import cost_record
from .services.projects import project_get_or_create
from .services.resets import CurrentBudget, budget_current, ensure_current_period
from .services.user_budgets import budget_reset, budget_set

SEED_DURATIONS = {None: Duration.NONE, "daily": Duration.DAILY, "weekly": Duration.WEEKLY,
                  "monthly": Duration.MONTHLY, "yearly": Duration.YEARLY}


class BudgetManager:
    """`BudgetManager(project_name)`; a new project name creates the project."""

    def __init__(self, project_name: str, client_type: str = "local", api_base: str | None = None,
                 headers: dict | None = None) -> None:
        # client_type, api_base and headers are accepted for compatibility: the database is the store.
        self.project_name = project_name
        self.client_type = client_type
        self.api_base = api_base
        self.project: Project = project_get_or_create(name=project_name)
        self.actor = actor_for_manager(project_name)

    def _current(self, user: str) -> CurrentBudget:
        """Every read of a user goes through here: the budget in its current period (the lazy reset)."""
        self.project.refresh_from_db()
        return budget_current(project=self.project, user_id=user)

    def _budget(self, user: str) -> UserBudget:
        return self._current(user).budget

    def create_budget(self, total_budget: Any, user: str,
                      duration: str | None = None, created_at: float | None = None) -> dict[str, Any]:
        """Create or replace the user's budget; returns the user's record."""
        if duration not in SEED_DURATIONS:
            raise ValueError('duration needs to be one of ["daily", "weekly", "monthly", "yearly"]')
        anchor = datetime.fromtimestamp(created_at if created_at is not None else time.time(), tz=UTC)
        budget, _ = budget_set(
            project=self.project, user_id=user, total_budget=total_budget, duration=SEED_DURATIONS[duration],
            created_at=anchor, actor=self.actor,
        )
        return budget_record(budget)

    def projected_cost(self, model: str, messages: list, user: str) -> Decimal:
        """The user's current cost plus the prompt cost of `messages` (counted with chat framing)."""
        return projected_cost(self._budget(user), model, messages).projected_cost

    def get_total_budget(self, user: str) -> Decimal:
        return self._budget(user).total_budget

    def update_cost(self, user: str, completion_obj: Any = None, model: str | None = None,
                    input_text: str | None = None, output_text: str | None = None,
                    tags: list[str] | None = None) -> dict[str, Any]:
        """Record a call's cost from model + texts, or from a completion object; returns {"user": record}.

        `tags` (at most 10 short identifiers) are kept on the ledger row and their limits count the call.
        """
        tags_given = validate_tags(tags)
        if model and input_text is not None and output_text is not None:
            usage = usage_from_texts(model, input_text, output_text)
        elif completion_obj:
            usage = usage_from_completion(completion_obj)
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in."
            )
        recorded = cost_record(
            project=self.project, user_id=user, usage=usage, source=CostEvent.Source.MANAGER, tags=tags_given,
        )
        return {"user": budget_record(recorded.budget)}

    def get_current_cost(self, user: str) -> Decimal:
        """Spend in the current period, as the seed meant it: open reservations' holds are not cost."""
        return self._budget(user).current_spend

    def get_model_cost(self, user: str) -> dict[str, Decimal]:
        return self._current(user).model_costs

    def is_valid_user(self, user: str) -> bool:
        try:
            self._budget(user)
        except KeyError:
            return False
        return True

    def get_users(self) -> list[str]:
        return user_ids(self.project)

    def reset_cost(self, user: str) -> dict[str, Any]:
        """Set the user's spend to zero (audited; the ledger stays); returns {"user": record}."""
        budget = budget_reset(budget=self._budget(user), actor=self.actor)
        return {"user": budget_record(budget)}

    def reset_on_duration(self, user: str) -> None:
        """Reset the user if their period has ended (reading the budget does it)."""
        self._budget(user)

    def update_budget_all_users(self) -> None:
        """Reset every user of the project whose period has ended."""
        ensure_current_period(self.project, all_users=True)

    def save_data(self) -> dict[str, str]:
        """Every change is already in the database; answers as the seed does."""
        return {"status": "success"}

