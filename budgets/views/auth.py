"""The login page: password login (with django-axes' lockout) and, when configured, single sign-on.

django-axes calls `locked_out` once a username+address has failed too often. With PASSWORD_LOGIN
off the page offers single sign-on only and a password POST is refused (views/sso.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView, redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from .sso import refused_password_post, sso_context

LOCKOUT_STATUS = 429


def lockout_message() -> str:
    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    return (f"Too many failed logins for this account from your address: logging in is locked "
            f"for {minutes} minutes. Try again later, or ask an administrator to unlock it.")


def locked_out(request: HttpRequest, response: HttpResponse | None = None,
               credentials: dict[str, Any] | None = None) -> HttpResponse:
    """The login page again, with the lockout said plainly (429 with Retry-After)."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    form = AuthenticationForm(request, initial={"username": username})
    context = {"form": form, "lockout": lockout_message(), "next": request.POST.get("next", ""), **sso_context()}
    answer = render(request, "registration/login.html", context, status=LOCKOUT_STATUS)
    answer["Retry-After"] = str(round(settings.AXES_COOLOFF_TIME * 3600))
    return answer


class ConsoleLoginView(LoginView):
    """Django's login view, with the single sign-on button and the switch that turns passwords off."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.PASSWORD_LOGIN:
            return refused_password_post(request)
        return super().post(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return {**super().get_context_data(**kwargs), **sso_context()}


def admin_login(request: HttpRequest) -> HttpResponse:
    """Django admin's login page; while PASSWORD_LOGIN is off, the console's login (single sign-on), then back."""
    if settings.PASSWORD_LOGIN:
        return admin.site.login(request)
    if request.method == "POST":
        return refused_password_post(request)
    target = request.GET.get("next") or reverse("admin:index")
    if admin.site.has_permission(request):  # staff, logged in through single sign-on
        return redirect(target if url_has_allowed_host_and_scheme(target, {request.get_host()}) else "admin:index")
    if request.user.is_authenticated:  # logged in, but not staff: the console's login would send them back here
        return render(request, "403.html", {"exception": "Your account has no access to Django admin."},
                      status=403)
    return redirect_to_login(target, reverse("login"))
