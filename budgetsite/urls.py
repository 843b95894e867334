"""Routes: the console at /, the LiteLLM hosted protocol at the root, the JSON API under /api/v1/."""

from __future__ import annotations

from allauth.socialaccount import views as socialaccount_views
from django.contrib import admin
from django.urls import include, path

from budgets.views.auth import admin_login

urlpatterns = [
    # Django admin's login follows PASSWORD_LOGIN (off: the console's single sign-on).
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    # Single sign-on (OpenID Connect, django-allauth): /accounts/oidc/sso/login/ and its callback
    # /accounts/oidc/sso/login/callback/ (the redirect URI registered at the provider). They answer 404
    # while OIDC_ISSUER is unset. allauth's other pages (its own sign-up and password login) are not routed.
    path("accounts/", include("allauth.socialaccount.providers.openid_connect.urls")),
    path("accounts/login/cancelled/", socialaccount_views.login_cancelled, name="socialaccount_login_cancelled"),
    path("accounts/login/error/", socialaccount_views.login_error, name="socialaccount_login_error"),
    path("", include("budgets.api.urls")),
    path("", include("budgets.urls")),
]
