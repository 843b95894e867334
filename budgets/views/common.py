"""What every console view shares: the one access helper, the actor name, rendering, the form action."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from ..base.errors import BudgetError, UnknownUser
from ..models import Action, Project, UserBudget, role_allows
from ..selectors.console import role_in, visible_projects
from ..selectors.limit_requests import pending_count
from ..services.audit import actor_for_user
from ..services.resets import ensure_current_period


@dataclass(frozen=True)
class Access:
    """What the logged-in person may do in one project; pages show only the buttons it allows."""

    role: str | None  # None for staff who are not members
    is_staff: bool

    def allows(self, action: str) -> bool:
        return self.is_staff or role_allows(self.role, action)

    @property
    def change(self) -> bool:
        return self.allows(Action.CHANGE)

    @property
    def manage_members(self) -> bool:
        return self.allows(Action.MANAGE_MEMBERS)

    @property
    def delete(self) -> bool:
        return self.allows(Action.DELETE)

    @property
    def label(self) -> str:
        return self.role or "staff"


def project_for(request: HttpRequest, project_id: int, action: str = Action.VIEW) -> Project:
    """The project, if the person may see it (404 otherwise) and do `action` in it (403 otherwise).

    Every console view and action gets its project here, and everything else (budgets, keys,
    the ledger, members) through the project, so no page can reach another project's data and
    no role can do more than its row in models.ROLE_ACTIONS. Staff see and do everything.
    """
    project = get_object_or_404(visible_projects(request.user), pk=project_id)
    access = Access(role=role_in(project, request.user), is_staff=bool(getattr(request.user, "is_staff", False)))
    if not access.allows(action):
        raise PermissionDenied(f"your role in this project ({access.label}) may not {Action(action).label}")
    request.project_access = access  # type: ignore[attr-defined]  # read by render_page
    return project


def get_project_for_user(request: HttpRequest, project_id: int) -> Project:
    """The project for reading (a member of any role, or staff); 404 otherwise."""
    return project_for(request, project_id, Action.VIEW)


def current_project(request: HttpRequest, project_id: int, action: str = Action.VIEW, *,
                    all_users: bool = False) -> Project:
    """The project through the access helper, brought into its current period (the one lazy reset)."""
    project = project_for(request, project_id, action)
    return ensure_current_period(project, all_users=all_users)


def get_budget_for_project(project: Project, user_id: str) -> UserBudget:
    """The user's budget in this project (reset first if its period has ended), or 404."""
    try:
        return ensure_current_period(project, user_id=user_id)
    except UnknownUser:
        raise Http404("no such user in this project") from None


def actor(request: HttpRequest) -> str:
    """Who did it, as the audit log names console users."""
    return actor_for_user(request.user)


def render_page(request: HttpRequest, template: str, context: dict[str, Any], *, project: Project | None = None,
                nav: str = "", status: int = 200) -> HttpResponse:
    """Render a console page; times on a project's pages are shown in the project's time zone."""
    access = getattr(request, "project_access", None) if project else None
    context = {"project": project, "nav": nav, "tz": project.timezone if project else None, "access": access,
               # The navigation's badge: requests waiting for someone who may decide them.
               "pending_requests": pending_count(project) if project and access and access.change else 0,
               **context}
    return render(request, template, context, status=status)


T = TypeVar("T")


def run_form(request: HttpRequest, form: forms.Form, service: Callable[[dict[str, Any]], T], *,
             done: Callable[[T], HttpResponse], refused: Callable[[], HttpResponse],
             message: str | Callable[[T], str] | None = None, error_field: str | None = None) -> HttpResponse:
    """The console's one form action: a valid form → its service → the success message → `done`.

    A service's BudgetError becomes the form's error (on `error_field`, else the whole form's) and,
    like an invalid form, answers `refused()` (the page again with the form, status 400): a refused
    change writes nothing, and the person sees why beside what they typed.
    """
    if form.is_valid():
        try:
            result = service(form.cleaned_data)
        except BudgetError as exc:
            form.add_error(error_field, exc.message)
        else:
            if message is not None:
                messages.success(request, message(result) if callable(message) else message)
            return done(result)
    return refused()


def run_action(request: HttpRequest, service: Callable[[], T], *, done: Callable[[T], HttpResponse],
               refused: Callable[[], HttpResponse], message: str | Callable[[T], str]) -> HttpResponse:
    """An action without a form (a button): its service, then the message and `done`; a BudgetError is
    shown as an error message above `refused()`."""
    try:
        result = service()
    except BudgetError as exc:
        messages.error(request, exc.message)
        return refused()
    messages.success(request, message(result) if callable(message) else message)
    return done(result)
