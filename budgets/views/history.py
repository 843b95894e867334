"""History on screen: a project's audit log and its alerts (with a signed test webhook and a test Slack message)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST

from ..base.errors import BudgetError
from ..models import Action, Project
from ..selectors import console as selectors
from ..services.webhook_test import WebhookTest, alert_test_slack, alert_test_webhook
from .common import actor, project_for, render_page

AUDIT_FILTERS = ("user_id", "action", "actor")


def _same(before: Any, after: Any) -> bool:
    """Equal values, counting amounts written with different precision ("100.000000000000", "100") as equal."""
    if before == after:
        return True
    if isinstance(before, str) and isinstance(after, str):
        try:
            return Decimal(before) == Decimal(after)
        except InvalidOperation:
            return False
    return False


def changes(before: Any, after: Any) -> list[dict[str, Any]]:
    """Each field of an audit row as before → after.

    When the row has both sides, only what changed: the fields of `after` whose value differs.
    An update writes every setting it read in `before` but only the fields it was given in
    `after`, so a field missing from `after` did not change.
    """
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    if before and after:
        return [{"field": k, "before": before.get(k), "after": v} for k, v in after.items()
                if not _same(before.get(k), v)]
    keys = list(dict.fromkeys([*before, *after]))
    return [{"field": k, "before": before.get(k), "after": after.get(k)} for k in keys]


@login_required
def audit_log(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id)
    filters = {name: request.GET.get(name, "").strip()[:255] for name in AUDIT_FILTERS}
    page = selectors.audit_page(project, page=request.GET.get("page"), **filters)
    rows = [{"entry": e, "changes": changes(e.before, e.after)} for e in page.object_list]
    context = {"page": page, "rows": rows, "filters": filters, "actions": selectors.audit_actions(project)}
    return render_page(request, "console/audit.html", context, project=project, nav="audit")


def _alerts_page(request: HttpRequest, project: Project, *, test: WebhookTest | None = None,
                 error: str = "", status: int = 200, target: str = "webhook") -> HttpResponse:
    context = {"page": selectors.alerts_page(project, page=request.GET.get("page")), "test": test,
               "test_error": error, "test_target": target}
    return render_page(request, "console/alerts.html", context, project=project, nav="alerts", status=status)


@login_required
def alert_history(request: HttpRequest, project_id: int) -> HttpResponse:
    return _alerts_page(request, project_for(request, project_id))


@login_required
@require_POST
def webhook_test(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.CHANGE)
    # Not run_action: the answer is the test's outcome shown on the alerts page, not a redirect.
    try:
        result = alert_test_webhook(project=project, actor=actor(request))
    except BudgetError as exc:
        return _alerts_page(request, project, error=exc.message, status=400)
    return _alerts_page(request, project, test=result)


@login_required
@require_POST
def slack_test(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.CHANGE)
    try:
        result = alert_test_slack(project=project, actor=actor(request))
    except BudgetError as exc:
        return _alerts_page(request, project, error=exc.message, status=400, target="slack")
    return _alerts_page(request, project, test=result, target="slack")
