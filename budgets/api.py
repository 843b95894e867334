"""The native JSON API under /api/v1/ (django-ninja)."""

from __future__ import annotations

from ninja import NinjaAPI

api = NinjaAPI(title="Budget Manager API", version="1", urls_namespace="api")
