"""Accepting an invitation: the page its link opens (no project access needed, the link is the key).

GET shows the invitation and never accepts (mail scanners and link previews open links): the
invited person accepts with a POST. Logged in with the invited account: an Accept button.
Logged out: log in (the login page comes back here) or, for an emailed invitation, create an
account with the invited address and a password, which accepts it at once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from ..base.errors import BudgetError
from ..forms import InvitationSignupForm
from ..models import Invitation
from ..services.members import invitation_accept as invitation_accept_service
from ..services.members import invitation_accept_new_account, invitation_open
from .common import render_page

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def _page(request: HttpRequest, token: str, invitation: Invitation | None, *, error: str = "",
          signup: InvitationSignupForm | None = None, status: int = 200) -> HttpResponse:
    context: dict[str, Any] = {"invitation": invitation, "error": error, "token": token,
               "login_url": f"{reverse('login')}?{urlencode({'next': reverse('invitation_accept', args=[token])})}"}
    if invitation is not None:
        user = request.user
        context["for_you"] = user.is_authenticated and invitation.is_for(user)
        # With PASSWORD_LOGIN off a new account comes from single sign-on, not from a password typed here.
        if invitation.is_email and not user.is_authenticated and settings.PASSWORD_LOGIN:
            context["signup"] = signup or InvitationSignupForm(email=invitation.invitee)
    return render_page(request, "console/invitation.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    try:
        invitation = invitation_open(token)
    except BudgetError as exc:
        return _page(request, token, None, error=exc.message, status=exc.status)
    if request.method == "GET":
        return _page(request, token, invitation)
    if request.user.is_authenticated:
        try:
            invitation_accept_service(token=token, user=request.user)  # type: ignore[arg-type]
        except BudgetError as exc:
            return _page(request, token, invitation, error=exc.message, status=exc.status)
    elif not settings.PASSWORD_LOGIN:
        return _page(request, token, invitation, status=403,
                     error="Password accounts are switched off here: log in with single sign-on to accept.")
    else:
        form = InvitationSignupForm(request.POST, email=invitation.invitee)
        if not form.is_valid():
            return _page(request, token, invitation, signup=form, status=400)
        try:
            user, _ = invitation_accept_new_account(token=token, username=form.cleaned_data["username"],
                                                             password=form.cleaned_data["password1"])
        except BudgetError as exc:
            form.add_error(None, exc.message)
            return _page(request, token, invitation, signup=form, status=exc.status)
        login(request, user, backend=MODEL_BACKEND)
    messages.success(request, f"You joined {invitation.project.name} as {invitation.role}.")
    return redirect("project_overview", invitation.project_id)
