"""A project's members: invitations, roles, removal.

Inviting answers the same whatever exists ("Invitation sent to …"): the form tells nobody whether
an account has that username or email, and nobody joins until they accept the link
(views/invitations.py). The link is emailed through the configured backend; it is also shown on
the page when no real mail leaves the machine (DEBUG, the embedded setup, or the console/locmem
backend), so a single-machine install can hand it over by other means. Whether it is shown
depends on the settings only, never on the invited person.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils import formats
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from ..forms import InviteForm, MemberRoleForm
from ..models import Action, Invitation, Membership, Project
from ..selectors import console as selectors
from ..services.members import invitation_recipient, invitation_token, member_set_role
from ..services.members import invitation_revoke as invitation_revoke_service
from ..services.members import member_invite as member_invite_service
from ..services.members import member_remove as member_remove_service
from .common import actor, project_for, render_page, run_action, run_form

LOCAL_EMAIL_BACKENDS = ("django.core.mail.backends.console.EmailBackend",
                        "django.core.mail.backends.locmem.EmailBackend")


def shows_links_on_screen() -> bool:
    """True when mail does not really leave this machine: the page shows the link too."""
    local = settings.EMAIL_BACKEND in LOCAL_EMAIL_BACKENDS
    return bool(settings.DEBUG or getattr(settings, "EMBEDDED", False) or local)


def invitation_link(request: HttpRequest, invitation: Invitation) -> str:
    path = reverse("invitation_accept", args=[invitation_token(invitation)])
    return request.build_absolute_uri(path)


def _members_page(request: HttpRequest, project: Project, *, invite_form: InviteForm | None = None,
                  link: str | None = None, status: int = 200) -> HttpResponse:
    access = getattr(request, "project_access", None)
    context = {
        "members": selectors.members_of(project),
        "invitations": selectors.pending_invitations(project) if access and access.manage_members else [],
        "invite_form": invite_form or InviteForm(),
        "role_form": MemberRoleForm(),
        "link": link,
    }
    return render_page(request, "console/members.html", context, project=project, nav="members", status=status)


@login_required
def member_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id)
    return _members_page(request, project)


def _send_invitation(request: HttpRequest, invitation: Invitation, link: str) -> None:
    """Email the link to the invited address, or to the invited username's account (if it has an email)."""
    recipient = invitation_recipient(invitation)
    if recipient is None:
        return
    expires = formats.date_format(invitation.expires_at, "DATETIME_FORMAT")
    send_mail(
        subject=f"Invitation to the project {invitation.project.name} on Budget Manager",
        message=(f"{request.user.get_username()} invites you to join the project {invitation.project.name} "
                 f"as {invitation.role}.\n\nOpen this link to accept (it works until {expires} UTC): {link}\n"
                 "If you have an account, log in to accept; otherwise create one on that page.\n"
                 "If you did not expect this, ignore this email: nothing happens unless you accept.\n"),
        from_email=None, recipient_list=[recipient], fail_silently=True,
    )


@never_cache  # the answer may carry the invitation link
@login_required
@require_POST
def member_invite(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    form = InviteForm(request.POST)
    return run_form(
        request, form,
        lambda data: member_invite_service(project=project, invitee=data["invitee"], role=data["role"],
                                            invited_by=request.user, actor=actor(request)),  # type: ignore[arg-type]
        error_field="invitee", done=lambda invitation: _invited(request, project, invitation),
        refused=lambda: _members_page(request, project, invite_form=form, status=400))


def _invited(request: HttpRequest, project: Project, invitation: Invitation) -> HttpResponse:
    """The same answer whatever accounts exist: the invitation, not an account, is what was made."""
    link = invitation_link(request, invitation)
    _send_invitation(request, invitation, link)
    messages.success(request, f"Invitation sent to {invitation.invitee} ({invitation.role}). They become a "
                              "member when they accept it.")
    if shows_links_on_screen():
        return _members_page(request, project, link=link, status=201)
    return redirect("member_list", project.pk)


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, project_id: int, invitation_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    invitation = get_object_or_404(Invitation, project=project, pk=invitation_id)
    return run_action(
        request, lambda: invitation_revoke_service(project=project, invitation=invitation, actor=actor(request)),
        message=f"Withdrew the invitation to {invitation.invitee}.",
        done=lambda _: redirect("member_list", project.pk), refused=lambda: _members_page(request, project, status=400))


@login_required
@require_POST
def member_role(request: HttpRequest, project_id: int, membership_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    membership = get_object_or_404(Membership.objects.select_related("user"), project=project, pk=membership_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner, manager or viewer.")
        return _members_page(request, project, status=400)
    return run_action(
        request, lambda: member_set_role(project=project, membership=membership,
                                                  role=form.cleaned_data["role"], actor=actor(request)),
        message=f"{membership.user.get_username()} is now {form.cleaned_data['role']}.",
        done=lambda _: redirect("member_list", project.pk), refused=lambda: _members_page(request, project, status=400))


@login_required
@require_POST
def member_remove(request: HttpRequest, project_id: int, membership_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.MANAGE_MEMBERS)
    membership = get_object_or_404(Membership.objects.select_related("user"), project=project, pk=membership_id)
    left = membership.user_id == request.user.pk and not request.user.is_staff
    return run_action(
        request, lambda: member_remove_service(project=project, membership=membership, actor=actor(request)),
        message=f"Removed {membership.user.get_username()} from the project.",
        # Someone who removed themselves no longer sees the project.
        done=lambda _: redirect("project_list") if left else redirect("member_list", project.pk),
        refused=lambda: _members_page(request, project, status=400))
