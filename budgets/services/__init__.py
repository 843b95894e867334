"""Writes: every change to budgets, spend and keys goes through these functions.

The console, the JSON API, the hosted protocol, the admin and the Celery tasks
all call them, so each rule (validation, audit, lazy reset) lives in one place.
Spend is only ever changed with F() expressions or conditional updates.
"""

from __future__ import annotations

from .common import (
    SYSTEM_LAZY,
    SYSTEM_SWEEP,
    budget_snapshot,
    validate_duration,
    validate_timezone,
    validate_user_id,
    write_audit,
)
from .costs import (
    CostRecorded,
    cost_of_usage,
    cost_record,
    exceeded_scope,
    set_event_response,
)
from .projects import (
    KEY_PREFIX,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    hash_key,
    project_create,
    project_get_or_create,
    project_refresh,
    project_update,
)
from .resets import RESET_BATCH_SIZE, reset_due_budgets, reset_due_projects
from .user_budgets import budget_delete, budget_get, budget_reset, budget_set

__all__ = [
    "KEY_PREFIX", "RESET_BATCH_SIZE", "SYSTEM_LAZY", "SYSTEM_SWEEP", "CostRecorded", "api_key_authenticate",
    "api_key_create", "api_key_revoke", "budget_delete", "budget_get", "budget_reset", "budget_set",
    "budget_snapshot", "cost_of_usage", "cost_record", "exceeded_scope", "hash_key", "project_create",
    "project_get_or_create", "project_refresh", "project_update", "reset_due_budgets", "reset_due_projects",
    "set_event_response", "validate_duration", "validate_timezone", "validate_user_id", "write_audit",
]
