"""A project's past periods: what was spent in each against the cap it had (dates in the project's zone)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse

from ..selectors import console as selectors
from . import charts
from .common import current_project, render_page


@login_required
def project_periods(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    zone = selectors.project_zone(project)
    past = selectors.project_past_periods(project)
    labels = [p.start.astimezone(zone).strftime("%Y-%m-%d") for p in past]
    series = [charts.series("Spent", [p.spend for p in past], charts.SPEND_COLOUR)]
    if past and all(p.budget is not None for p in past):
        series.append(charts.series("Cap", [p.budget for p in past if p.budget is not None], charts.BUDGET_COLOUR))
    chart = charts.with_ticks({"kind": "bar", "stack": False, "x": labels, "xType": "category", "series": series,
                               "yTitle": "USD"})
    context = {"periods": past, "periods_chart": chart}
    return render_page(request, "console/periods.html", context, project=project, nav="periods")
