"""The JSON side's routes: the native API under /api/v1/, the hosted protocol and /healthz at the root."""

from __future__ import annotations

from django.urls import path, re_path

from . import health, hosted, metrics
from .v1 import api

urlpatterns = [
    path("api/v1/", api.urls),
    # The client posts to api_base + "/get_budget": an api_base ending in "/" gives "//get_budget".
    # (?:/)? rather than /? so Django's check does not mistake it for a needless leading slash.
    re_path(r"^(?:/)?get_budget/?$", hosted.get_budget, name="hosted_get_budget"),
    re_path(r"^(?:/)?set_budget/?$", hosted.set_budget, name="hosted_set_budget"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
