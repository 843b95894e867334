"""Routes: the console at /, the LiteLLM hosted protocol at the root, the JSON API under /api/v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from budgets.api import api
from budgets.hosted import urlpatterns as hosted_urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    *hosted_urls,
    path("", include("budgets.urls")),
]
