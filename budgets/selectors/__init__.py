"""Every read: budgets, spend, the ledger and keys (`budgets`), the console's aggregates (`console`).

Nothing here writes. A read that must see the current period calls
`services.ensure_current_period` first; selectors never reset anything themselves.
"""

from __future__ import annotations

from .budgets import (
    KEY_PREFIX,
    SHOWN_LENGTH,
    ProjectedCost,
    PromptCost,
    active_api_key,
    budget_record,
    budgets_with_costs,
    cost_events,
    forget_api_keys,
    has_budget_or_costs,
    hash_key,
    ledger_slice,
    model_costs,
    projected_cost,
    prompt_cost,
    unix,
    user_ids,
)

__all__ = [
    "KEY_PREFIX", "SHOWN_LENGTH", "ProjectedCost", "PromptCost", "active_api_key", "budget_record",
    "budgets_with_costs", "cost_events", "forget_api_keys", "has_budget_or_costs", "hash_key", "ledger_slice",
    "model_costs",
    "projected_cost", "prompt_cost", "unix", "user_ids",
]
