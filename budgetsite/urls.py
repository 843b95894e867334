"""Routes: the console at /, the LiteLLM hosted protocol at the root, the JSON API under /api/v1/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("budgets.api.urls")),
    path("", include("budgets.urls")),
]
