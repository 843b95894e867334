"""The projects list and a project's overview."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now as utcnow

from ..forms import RangeForm
from ..selectors import console as selectors
from ..services.resets import ensure_current_period
from . import charts
from .common import current_project, render_page
from .project_manage import can_create_projects


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    projects = selectors.visible_projects(request.user)
    # Projects whose period ended start a new one before their spend is shown (rare: beat does it).
    for due in projects.filter(next_reset_at__lte=utcnow()):
        ensure_current_period(due)
    rows = [
        {"project": p, "cap_use": selectors.cap_use(p.current_spend, p.max_budget)}
        for p in selectors.project_summaries(projects)
    ]
    context = {"rows": rows, "can_create": can_create_projects(request.user)}
    return render_page(request, "console/projects.html", context, nav="projects")


@login_required
def project_overview(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    form = RangeForm(request.GET or None, zone=selectors.project_zone(project))
    rng = form.date_range()
    daily = selectors.daily_spend(project, rng)
    users = selectors.top_users(project, rng, daily.total)
    models = selectors.top_models(project, rng, daily.total)
    context = {
        "form": form,
        "range": rng,
        "range_query": form.query(),
        "daily": daily,
        "daily_totals": daily.day_totals(),
        "spend_chart": charts.daily_by_model(daily),
        "users_chart": charts.bars([u.name for u in users], [u.spend for u in users]),
        "models_chart": charts.pie([m.name for m in models], [m.spend for m in models]),
        "top_users": users,
        "top_models": models,
        "forecast": selectors.forecast(project),
        "alerts": selectors.recent_alerts(project),
        "has_budgets": project.budgets.exists(),
    }
    return render_page(request, "console/overview.html", context, project=project, nav="overview")
