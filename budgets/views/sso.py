"""Single sign-on with OpenID Connect: django-allauth's adapters, set up from the OIDC_* settings.

allauth runs the protocol (discovery, the redirect, the code exchange, the ID token's issuer,
audience and nonce); this module decides who may come in and what they may see:

- the address must be in OIDC_ALLOWED_DOMAINS, and not one the provider says is unverified; a
  refused login gets `registration/sso_refused.html` (403) and creates nothing;
- the first login creates the account (no form); an existing account with the same address is the
  same person when the provider says the address is verified;
- at every login, the groups claim (OIDC_GROUPS_CLAIM) through OIDC_ROLE_MAP sets the person's
  role in each project the map names (services.members.member_roles_sync: added, changed or removed,
  audited as `sso:<username>`). Without the claim in the answer, memberships are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.signals import user_logged_in
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialLogin
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from ..models import Role
from ..services.audit import actor_for_user
from ..services.members import member_roles_sync

log = logging.getLogger(__name__)

REFUSED_STATUS = 403
# Highest first: a person in two groups that map to one project gets the higher role.
ROLE_RANK = {Role.OWNER.value: 3, Role.MANAGER.value: 2, Role.VIEWER.value: 1}


def sso_context() -> dict[str, Any]:
    """What the login page needs to offer single sign-on (and whether it still shows the password form)."""
    if not settings.SSO_ENABLED:
        return {"sso": None, "password_login": True}
    return {"sso": {"name": settings.OIDC_PROVIDER_NAME,
                    "url": reverse("openid_connect_login", kwargs={"provider_id": settings.SSO_PROVIDER_ID})},
            "password_login": settings.PASSWORD_LOGIN}


def refuse(request: HttpRequest, reason: str) -> ImmediateHttpResponse:
    """The refusal page (403), raised through allauth before anything is written."""
    log.warning("single sign-on refused: %s", reason)
    page = render(request, "registration/sso_refused.html", {"reason": reason, **sso_context()},
                  status=REFUSED_STATUS)
    return ImmediateHttpResponse(page)


def claims_of(sociallogin: SocialLogin) -> dict[str, Any]:
    """The person's claims: the userinfo answer over the ID token's (allauth keeps both)."""
    data = sociallogin.account.extra_data or {}
    merged: dict[str, Any] = {}
    merged.update(data.get("id_token") or {})
    merged.update(data.get("userinfo") or {})
    return merged


def domain_allowed(email: str) -> bool:
    domains = settings.OIDC_ALLOWED_DOMAINS
    return "*" in domains or email.rpartition("@")[2].lower() in domains


def roles_from_groups(groups: list[str]) -> dict[str, str]:
    """Project name -> the highest role OIDC_ROLE_MAP gives these groups there."""
    roles: dict[str, str] = {}
    member_of = set(groups)
    for group, project, role in settings.OIDC_ROLE_MAP:
        if group in member_of and ROLE_RANK[role] > ROLE_RANK.get(roles.get(project, ""), 0):
            roles[project] = role
    return roles


def groups_of(claims: dict[str, Any]) -> list[str] | None:
    """The groups claim as a list of names; None when the answer has no such claim."""
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    log.warning("single sign-on: the %s claim is neither a list nor a string: ignored", settings.OIDC_GROUPS_CLAIM)
    return None


class SsoAdapter(DefaultSocialAccountAdapter):
    """Who may log in with the provider, and accounts created without a form."""

    def pre_social_login(self, request: HttpRequest, sociallogin: SocialLogin) -> None:
        claims = claims_of(sociallogin)
        email = str(claims.get("email") or "").strip()
        if not email or "@" not in email:
            raise refuse(request, "The identity provider did not give an email address for your account.")
        if claims.get("email_verified") is False or str(claims.get("email_verified")).lower() == "false":
            raise refuse(request, f"The identity provider says {email} is not verified: verify it there first.")
        if not domain_allowed(email):
            raise refuse(request, f"{email} is not allowed to log in here: this console accepts addresses at "
                                  f"{', '.join(settings.OIDC_ALLOWED_DOMAINS)}.")
        user = sociallogin.user if sociallogin.is_existing else None
        if user is not None and not user.is_active:
            raise refuse(request, f"The account {user.get_username()} is deactivated: ask an administrator.")
        if user is None and get_user_model().objects.filter(email__iexact=email).exists():
            # allauth matches an existing account by a verified address only (email authentication).
            raise refuse(request, f"An account with the address {email} exists, and the identity provider did not "
                                  f"say the address is verified: ask an administrator to link it.")

    def is_open_for_signup(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        return True  # the address was checked in pre_social_login

    def is_auto_signup_allowed(self, request: HttpRequest, sociallogin: SocialLogin) -> bool:
        return True


class AccountAdapter(DefaultAccountAdapter):
    """allauth's account side: no sign-up of its own (accounts come from invitations, admin or SSO)."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False

    def login(self, request: HttpRequest, user: AbstractBaseUser) -> None:
        # The session remembers Django's model backend (django-axes' backend checks passwords only).
        if not hasattr(user, "backend"):
            user.backend = "django.contrib.auth.backends.ModelBackend"  # type: ignore[attr-defined]
        super().login(request, user)


def sync_roles(user: Any, sociallogin: SocialLogin) -> None:
    """The person's roles in the projects OIDC_ROLE_MAP names, from the groups claim of this login."""
    if not settings.OIDC_ROLE_MAP:
        return
    groups = groups_of(claims_of(sociallogin))
    if groups is None:
        log.warning("single sign-on: no %r claim for %s: project roles left as they are",
                    settings.OIDC_GROUPS_CLAIM, user.get_username())
        return
    managed = {project for _, project, _ in settings.OIDC_ROLE_MAP}
    changes, problems = member_roles_sync(user=user, roles=roles_from_groups(groups), managed=managed,
                                          actor=actor_for_user(user, via="sso"),
                                          note={"via": "sso", "groups": sorted(groups)})
    for change in changes:
        log.info("single sign-on: %s in %s: %s -> %s", user.get_username(), change.project, change.before,
                 change.after)
    for problem in problems:
        log.warning("single sign-on: %s: role not applied: %s", user.get_username(), problem)


@receiver(user_logged_in, dispatch_uid="budgets.sso.sync_roles")
def on_login(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """allauth's login signal: a login through the provider carries its `sociallogin`."""
    sociallogin = kwargs.get("sociallogin")
    if sociallogin is not None:
        sync_roles(user, sociallogin)


def refused_password_post(request: HttpRequest) -> HttpResponse:
    """A password POST while PASSWORD_LOGIN is off: the login page with single sign-on only (403)."""
    return render(request, "registration/login.html",
                  {**sso_context(), "refused": "Password login is switched off here: log in with "
                                               f"{settings.OIDC_PROVIDER_NAME}."}, status=REFUSED_STATUS)
