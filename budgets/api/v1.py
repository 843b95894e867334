"""The native JSON API under /api/v1/ (django-ninja): one NinjaAPI, one router per resource.

Authenticated with the project's API key (`auth`), errors in one shape (`errors`),
money as exact JSON numbers (`budgets.domain.codec`). Documented in docs/api.md; the OpenAPI
schema is at /api/v1/openapi.json and Swagger UI (ninja's own, served locally) at /api/v1/docs.
"""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI

from ..domain.codec import ExactJSONRenderer, StrictJSONParser
from . import alerts, checks, costs, fallbacks, grants, limit_requests, limits, reservations, schemas, teams, users
from .auth import api_key_auth
from .errors import install_exception_handlers


class BudgetAPI(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        return schemas.finish_openapi(super().get_openapi_schema(*args, **kwargs))


api = BudgetAPI(
    title="Budget Manager API",
    version="1",
    description="Per-user LLM budgets, a cost ledger and budget checks. See docs/api.md.",
    urls_namespace="api",
    auth=api_key_auth,
    renderer=ExactJSONRenderer(),
    parser=StrictJSONParser(),
)
install_exception_handlers(api)

# Order matters: `/users/{path:user}` would swallow `/users/{user}/costs`, so it comes last.
api.add_router("", users.router)
api.add_router("", costs.router)
api.add_router("", checks.router)
api.add_router("", alerts.router)
api.add_router("", reservations.router)
api.add_router("", limits.router)
api.add_router("", teams.router)
api.add_router("", fallbacks.router)
api.add_router("", limit_requests.router)
api.add_router("", grants.router)
api.add_router("", users.bare_router)
