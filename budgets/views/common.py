"""What every console view shares: the one ownership helper, the actor name, rendering."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from .. import services
from ..errors import UnknownUser
from ..models import Project, UserBudget
from ..selectors.console import visible_projects


def get_project_for_user(request: HttpRequest, project_id: int) -> Project:
    """The project, if the logged-in person may see it (a member, or staff); 404 otherwise.

    Every console view gets its project here, and everything else (budgets, keys, the
    ledger) through the project, so no page can reach another project's data.
    """
    return get_object_or_404(visible_projects(request.user), pk=project_id)


def current_project(request: HttpRequest, project_id: int, *, all_users: bool = False) -> Project:
    """The project through the ownership helper, brought into its current period (the one lazy reset)."""
    return services.ensure_current_period(get_project_for_user(request, project_id), all_users=all_users)


def get_budget_for_project(project: Project, user_id: str) -> UserBudget:
    """The user's budget in this project (reset first if its period has ended), or 404."""
    try:
        return services.ensure_current_period(project, user_id=user_id)
    except UnknownUser:
        raise Http404("no such user in this project") from None


def actor(request: HttpRequest) -> str:
    """Who did it, as the audit log names console users."""
    return services.actor_for_user(request.user)


def render_page(request: HttpRequest, template: str, context: dict[str, Any], *, project: Project | None = None,
                nav: str = "", status: int = 200) -> HttpResponse:
    """Render a console page; times on a project's pages are shown in the project's time zone."""
    context = {"project": project, "nav": nav, "tz": project.timezone if project else None, **context}
    return render(request, template, context, status=status)
