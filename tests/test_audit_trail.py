"""One change, one audit row, whatever the door: the console, the API and Django admin write the same row."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.models import AuditLog
from tests.api_helpers import ApiClient, new_key

pytestmark = pytest.mark.django_db


def _row(user_id: str) -> AuditLog:
    rows = list(AuditLog.objects.filter(user_id=user_id, action="budget_update"))
    assert len(rows) == 1, rows
    return rows[0]


def _shape(row: AuditLog) -> tuple:
    """What must be the same whoever made the change: the action and the before/after figures."""
    return row.action, row.before["total_budget"], row.after["total_budget"], row.after["duration"], \
        sorted(row.before), sorted(row.after)


def test_an_edit_writes_the_same_audit_row_through_the_console_the_api_and_the_admin(project):
    for user in ("by-console", "by-api", "by-admin"):
        services.budget_set(project=project, user_id=user, total_budget="10", duration="monthly", actor="setup")
    staff = get_user_model().objects.create_superuser("sam", "sam@example.com", "pw")
    console = Client()
    console.force_login(staff)

    response = console.post(reverse("budget_edit", args=[project.pk, "by-console"]),
                            {"total_budget": "25", "duration": "weekly"})
    assert response.status_code == 302
    api = ApiClient(new_key(project))
    assert api.put("/api/v1/users/by-api/budget", {"total_budget": 25, "duration": "weekly"}).status_code == 200
    budget = services.budget_get(project=project, user_id="by-admin")
    response = console.post(reverse("admin:budgets_userbudget_change", args=[budget.pk]), {
        "project": project.pk, "user_id": "by-admin", "total_budget": "25", "duration": "weekly",
        "duration_days": "", "model_spends-TOTAL_FORMS": "0", "model_spends-INITIAL_FORMS": "0",
    })
    assert response.status_code == 302, response.content.decode()[:3000]

    rows = {user: _row(user) for user in ("by-console", "by-api", "by-admin")}
    assert _shape(rows["by-console"]) == _shape(rows["by-api"]) == _shape(rows["by-admin"])
    assert rows["by-console"].after["total_budget"].startswith("25")
    assert (rows["by-console"].actor, rows["by-admin"].actor) == ("user:sam", "admin:sam")
    assert rows["by-api"].actor.startswith("key:bm_")
