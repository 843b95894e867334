"""Writes: every change to budgets, spend, keys, projects and alerts goes through these functions.

The console, the JSON API, the hosted protocol, the admin and the Celery tasks all call
them, so each rule (validation, audit, lazy reset) lives in one place. Spend is only
ever changed with F() expressions or conditional updates. Locks: project, then budgets.
"""

from __future__ import annotations

from .accounts import superuser_ensure
from .alerts import alert_deliver, alert_retry, alerts_requeue
from .audit import (
    SYSTEM,
    SYSTEM_LAZY,
    SYSTEM_SWEEP,
    actor_for_key,
    actor_for_manager,
    actor_for_system,
    actor_for_user,
    budget_snapshot,
    write_audit,
)
from .bulk_budgets import BudgetRow, budget_reset_many, budget_row_check, budget_set_many
from .common import validate_duration, validate_timezone, validate_user_id
from .costs import (
    CostRecorded,
    Verdict,
    admission_check,
    cost_record,
    exceeded_scope,
)
from .hosted import hosted_budget_get, hosted_budget_set
from .keys import api_key_authenticate, api_key_create, api_key_mark_used, api_key_revoke, api_keys_changed
from .members import (
    invitation_accept,
    invitation_accept_new_account,
    invitation_open,
    invitation_recipient,
    invitation_revoke,
    invitation_token,
    member_add,
    member_invite,
    member_remove,
    member_set_role,
)
from .prices import load_price_map, price_save_edited
from .projects import (
    project_create,
    project_delete,
    project_get_or_create,
    project_purge,
    project_update,
    projects_purge,
)
from .reservations import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    Settled,
    reservation_create,
    reservation_get,
    reservation_release,
    reservation_settle,
    reservations_expire,
)
from .resets import (
    RESET_BATCH_SIZE,
    CurrentBudget,
    budget_current,
    budget_get,
    ensure_current_period,
    project_refresh,
    reset_due_budgets,
    reset_due_projects,
)
from .rollups import rollups_rebuild
from .user_budgets import budget_delete, budget_reset, budget_set
from .webhook_test import WebhookTest, alert_test_webhook

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MAX_TTL_SECONDS",
    "RESET_BATCH_SIZE",
    "SYSTEM",
    "SYSTEM_LAZY",
    "SYSTEM_SWEEP",
    "BudgetRow",
    "CostRecorded",
    "CurrentBudget",
    "Settled",
    "Verdict",
    "WebhookTest",
    "actor_for_key",
    "actor_for_manager",
    "actor_for_system",
    "actor_for_user",
    "admission_check",
    "alert_deliver",
    "alert_retry",
    "alert_test_webhook",
    "alerts_requeue",
    "api_key_authenticate",
    "api_key_create",
    "api_key_mark_used",
    "api_key_revoke",
    "api_keys_changed",
    "budget_current",
    "budget_delete",
    "budget_get",
    "budget_reset",
    "budget_reset_many",
    "budget_row_check",
    "budget_set",
    "budget_set_many",
    "budget_snapshot",
    "cost_record",
    "ensure_current_period",
    "exceeded_scope",
    "hosted_budget_get",
    "hosted_budget_set",
    "invitation_accept",
    "invitation_accept_new_account",
    "invitation_open",
    "invitation_recipient",
    "invitation_revoke",
    "invitation_token",
    "load_price_map",
    "member_add",
    "member_invite",
    "member_remove",
    "member_set_role",
    "price_save_edited",
    "project_create",
    "project_delete",
    "project_get_or_create",
    "project_purge",
    "project_refresh",
    "project_update",
    "projects_purge",
    "reservation_create",
    "reservation_get",
    "reservation_release",
    "reservation_settle",
    "reservations_expire",
    "reset_due_budgets",
    "reset_due_projects",
    "rollups_rebuild",
    "superuser_ensure",
    "validate_duration",
    "validate_timezone",
    "validate_user_id",
    "write_audit",
]
