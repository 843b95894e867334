"""Security headers on every page: a Content-Security-Policy, and no-store for a logged-in person.

The console loads only the service's own files (Bootstrap, Plotly and its own JS, through
WhiteNoise) and has no inline script or event handler, so the policy allows scripts from
the service alone. Written as a plain middleware rather than Django 6's SECURE_CSP because
the project also runs on Django 5.2, which has no CSP support.

With single sign-on (OIDC_ISSUER) the login page's button posts to this site, which answers
with a redirect to the provider; Chromium checks `form-action` along that redirect, so the
issuer's origin is added to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers, patch_cache_control

CSP_HEADER = "Content-Security-Policy"


@lru_cache(maxsize=4)
def policy_for(policy: str, issuer: str) -> str:
    """The policy, with the provider's origin allowed as a form target when single sign-on is on."""
    if not issuer:
        return policy
    origin = re.sub(r"^(https?://[^/]+).*$", r"\1", issuer)
    return re.sub(r"(^|;\s*)form-action ([^;]*)", lambda m: f"{m.group(1)}form-action {m.group(2)} {origin}", policy)


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if CSP_HEADER not in response:
            response[CSP_HEADER] = policy_for(settings.CONTENT_SECURITY_POLICY,
                                              settings.OIDC_ISSUER if settings.SSO_ENABLED else "")
        user = getattr(request, "user", None)
        # Pages for a logged-in person show spend, members and keys: no cache may keep them
        # (a shared proxy, or the browser's back button after logging out).
        if user is not None and user.is_authenticated:
            if response.has_header("Cache-Control"):
                patch_cache_control(response, no_store=True, private=True)
            else:
                add_never_cache_headers(response)
        return response
