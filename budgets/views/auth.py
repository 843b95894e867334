"""The login page's lockout: django-axes calls `locked_out` once a username+address has failed too often."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

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
    context = {"form": form, "lockout": lockout_message(), "next": request.POST.get("next", "")}
    answer = render(request, "registration/login.html", context, status=LOCKOUT_STATUS)
    answer["Retry-After"] = str(round(settings.AXES_COOLOFF_TIME * 3600))
    return answer
