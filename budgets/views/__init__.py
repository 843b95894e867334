"""The console's views, one module per page (budgets/urls.py routes them)."""

from __future__ import annotations

from .bulk import budget_bulk, budget_import
from .export import export_csv
from .history import alert_history, audit_log, webhook_test
from .invitations import invitation_accept
from .keys import key_create, key_list, key_revoke
from .members import invitation_revoke, member_invite, member_list, member_remove, member_role
from .models_page import model_list
from .periods import project_periods
from .project_manage import project_delete, project_new
from .project_settings import (
    alert_settings_save,
    project_settings,
    project_settings_save,
)
from .projects import project_list, project_overview
from .users import (
    budget_create,
    budget_delete,
    budget_edit,
    budget_reset,
    user_detail,
    user_list,
)

__all__ = [
    "alert_history",
    "alert_settings_save",
    "audit_log",
    "budget_bulk",
    "budget_create",
    "budget_delete",
    "budget_edit",
    "budget_import",
    "budget_reset",
    "export_csv",
    "invitation_accept",
    "invitation_revoke",
    "key_create",
    "key_list",
    "key_revoke",
    "member_invite",
    "member_list",
    "member_remove",
    "member_role",
    "model_list",
    "project_delete",
    "project_list",
    "project_new",
    "project_overview",
    "project_periods",
    "project_settings",
    "project_settings_save",
    "user_detail",
    "user_list",
    "webhook_test",
]
