"""A project's members: add an account (or create one with a set-password link), change a role, remove.

The set-password link is Django's password reset link (`default_token_generator`, one use, expires
after PASSWORD_RESET_TIMEOUT). It is emailed through the configured backend; it is also shown on
the page when no real mail leaves the machine (DEBUG, the embedded setup, or the console/locmem
backend), so a single-machine install can hand it over by other means.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User  # AUTH_USER_MODEL
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from .. import services
from ..errors import BudgetError
from ..forms import MemberAddForm, MemberCreateForm, MemberRoleForm
from ..models import Action, Membership, Project
from ..selectors import console as selectors
from .common import actor, project_for, render_page

LOCAL_EMAIL_BACKENDS = ("django.core.mail.backends.console.EmailBackend",
                        "django.core.mail.backends.locmem.EmailBackend")


def shows_links_on_screen() -> bool:
    """True when mail does not really leave this machine: the page shows the link too."""
    local = settings.EMAIL_BACKEND in LOCAL_EMAIL_BACKENDS
    return bool(settings.DEBUG or getattr(settings, "EMBEDDED", False) or local)


def set_password_link(request: HttpRequest, user: User) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    path = reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": default_token_generator.make_token(user)})
    return request.build_absolute_uri(path)


def _members_page(request: HttpRequest, project: Project, *, add_form: MemberAddForm | None = None,
                  create_form: MemberCreateForm | None = None, link: str | None = None,
                  status: int = 200) -> HttpResponse:
    context = {
        "members": selectors.members_of(project),
        "add_form": add_form or MemberAddForm(),
        "create_form": create_form or MemberCreateForm(),
        "role_form": MemberRoleForm(),
        "link": link,
    }
    return render_page(request, "console/members.html", context, project=project, nav="members", status=status)


@login_required
def member_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id)
    return _members_page(request, project)


@login_required
@require_POST
def member_add(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    form = MemberAddForm(request.POST)
    if form.is_valid():
        try:
            user = selectors.account_by_login(form.cleaned_data["login"])
            services.member_add(project=project, user=user, role=form.cleaned_data["role"], actor=actor(request))
        except BudgetError as exc:
            form.add_error("login", exc.message)
        else:
            messages.success(request, f"Added {user.get_username()} as {form.cleaned_data['role']}.")
            return redirect("member_list", project.pk)
    return _members_page(request, project, add_form=form, status=400)


@never_cache  # the answer may carry a set-password link
@login_required
@require_POST
def member_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    form = MemberCreateForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            user, _ = services.member_create_account(project=project, username=data["username"], email=data["email"],
                                                     role=data["role"], actor=actor(request))
        except BudgetError as exc:
            form.add_error(None, exc.message)
        else:
            link = set_password_link(request, user)
            send_mail(
                subject=f"Your Budget Manager account for {project.name}",
                message=(f"{request.user.get_username()} added you to the project {project.name} as "
                         f"{data['role']}.\n\nSet your password (the link works once): {link}\n"
                         f"Your username: {user.get_username()}\n"),
                from_email=None, recipient_list=[data["email"]], fail_silently=True,
            )
            messages.success(request, f"Created {user.get_username()} ({data['role']}) and emailed a link to "
                                      f"{data['email']} to set a password.")
            shown = link if shows_links_on_screen() else None
            return _members_page(request, project, link=shown, status=201)
    return _members_page(request, project, create_form=form, status=400)


@login_required
@require_POST
def member_role(request: HttpRequest, project_id: int, membership_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    membership = get_object_or_404(Membership.objects.select_related("user"), project=project, pk=membership_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner, manager or viewer.")
        return _members_page(request, project, status=400)
    try:
        services.member_set_role(project=project, membership=membership, role=form.cleaned_data["role"],
                                 actor=actor(request))
    except BudgetError as exc:
        messages.error(request, exc.message)
        return _members_page(request, project, status=400)
    messages.success(request, f"{membership.user.get_username()} is now {form.cleaned_data['role']}.")
    return redirect("member_list", project.pk)


@login_required
@require_POST
def member_remove(request: HttpRequest, project_id: int, membership_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    membership = get_object_or_404(Membership.objects.select_related("user"), project=project, pk=membership_id)
    try:
        services.member_remove(project=project, membership=membership, actor=actor(request))
    except BudgetError as exc:
        messages.error(request, exc.message)
        return _members_page(request, project, status=400)
    messages.success(request, f"Removed {membership.user.get_username()} from the project.")
    if membership.user_id == request.user.pk and not request.user.is_staff:
        return redirect("project_list")
    return redirect("member_list", project.pk)
