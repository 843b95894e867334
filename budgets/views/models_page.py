"""Models: spend per model over time and by user, tokens, and the price each model is charged at."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse

from ..admin import admin_url_for
from ..forms import RangeForm
from ..selectors import console as selectors
from ..selectors.teams import UNTAGGED, tag_split
from . import charts
from .common import current_project, render_page


@login_required
def model_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    form = RangeForm(request.GET or None, zone=selectors.project_zone(project))
    rng = form.date_range()
    daily = selectors.daily_spend(project, rng)
    usage = selectors.model_usage(project, rng)
    matrix = selectors.model_by_user(project, rng, [u.model for u in usage])
    tags = tag_split(project, rng)
    # Support staff edit prices in Django admin; others see the price without the link.
    show_admin = request.user.is_staff
    range_query = form.query()
    rows = [
        {"usage": u, "admin_url": admin_url_for(u.price_row) if show_admin and u.price_row else None,
         "export_query": "&".join(filter(None, [urlencode({"model": u.model}), range_query]))}
        for u in usage
    ]
    context = {
        "form": form,
        "range": rng,
        "range_query": range_query,
        "daily": daily,
        "rows": rows,
        "over_time_chart": charts.daily_by_model(daily, kind="line"),
        "by_user_chart": charts.model_by_user(matrix, selectors.OTHER_USERS),
        "matrix": matrix,
        "tags": tags,
        "tags_chart": charts.bars([t.tag for t in tags], [t.spend for t in tags]),
        "has_tags": any(t.tag != UNTAGGED for t in tags),
    }
    return render_page(request, "console/models.html", context, project=project, nav="models")
