"""Creating a project from the console, and deleting one (owners, with the name typed to confirm)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from ..forms import NewProjectForm, ProjectDeleteForm
from ..models import Action, Project
from ..selectors import console as selectors
from ..services.projects import project_create
from ..services.projects import project_delete as project_delete_service
from .common import actor, project_for, render_page, run_form


def can_create_projects(user: object) -> bool:
    """Staff, or people given the `budgets.add_project` permission."""
    return bool(getattr(user, "is_staff", False) or user.has_perm("budgets.add_project"))  # type: ignore[attr-defined]


@login_required
@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    if not can_create_projects(request.user):
        raise PermissionDenied("creating projects needs staff or the budgets.add_project permission")
    form = NewProjectForm(request.POST or None)
    if request.method == "GET":
        return render_page(request, "console/project_new.html", {"form": form}, nav="projects")
    return run_form(
        request, form,
        lambda data: project_create(
            name=data["name"].strip(), max_budget=data["max_budget"], timezone=data["timezone"],
            duration=data["duration"] or None, actor=actor(request),
            owner=request.user,  # type: ignore[arg-type]  # logged in: a User
        ),
        message=lambda project: f"Created the project {project.name}; you are its owner.", done=redirect,
        refused=lambda: render_page(request, "console/project_new.html", {"form": form}, nav="projects", status=400))


def _delete_page(request: HttpRequest, project: Project, form: ProjectDeleteForm, status: int = 200) -> HttpResponse:
    context = {"form": form, "counts": selectors.project_contents(project)}
    return render_page(request, "console/project_delete.html", context, project=project, nav="settings",
                       status=status)


@login_required
@require_http_methods(["GET", "POST"])
def project_delete(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.DELETE)
    form = ProjectDeleteForm(request.POST or None, project_name=project.name)
    if request.method == "POST":
        if not form.is_valid():
            return _delete_page(request, project, form, status=400)
        summary = project_delete_service(project=project, actor=actor(request))
        messages.success(request, f"Deleted the project {summary['name']}: its keys stopped working, and its "
                                  f"{summary['ledger_events']:,} ledger events are removed in the background.")
        return redirect("project_list")
    return _delete_page(request, project, form)
