"""What every console view shares: the one ownership helper, the actor name, rendering."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.timezone import now as utcnow

from .. import services
from ..console_selectors import visible_projects
from ..errors import UnknownUser
from ..models import Project, UserBudget


def get_project_for_user(request: HttpRequest, project_id: int) -> Project:
    """The project, if the logged-in person may see it (a member, or staff); 404 otherwise.

    Every console view gets its project here, and everything else (budgets, keys, the
    ledger) through the project, so no page can reach another project's data.
    """
    project = get_object_or_404(visible_projects(request.user), pk=project_id)
    # Reading a project whose period has ended starts its new period first (as the API does).
    return services.project_refresh(project)


def get_budget_for_project(project: Project, user_id: str) -> UserBudget:
    """The user's budget in this project (reset first if its period has ended), or 404."""
    try:
        return services.budget_get(project=project, user_id=user_id)
    except UnknownUser:
        raise Http404("no such user in this project") from None


def refresh_due_budgets(project: Project) -> None:
    """Reset the project's budgets whose period has ended, so the page shows current spend.

    One cheap read when nothing is due (the usual case: the beat sweep got there first).
    """
    if UserBudget.objects.filter(project=project, next_reset_at__lte=utcnow()).exists():
        services.reset_due_budgets(project=project)


def actor(request: HttpRequest) -> str:
    """Who did it, as the audit log names console users."""
    return f"user:{request.user.get_username()}"


def render_page(request: HttpRequest, template: str, context: dict[str, Any], *, project: Project | None = None,
                nav: str = "", status: int = 200) -> HttpResponse:
    """Render a console page; times on a project's pages are shown in the project's time zone."""
    context = {"project": project, "nav": nav, "tz": project.timezone if project else None, **context}
    return render(request, template, context, status=status)
