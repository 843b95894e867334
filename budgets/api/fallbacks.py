"""Fallbacks: the project's fallback models per model (read and replace; audited as a settings change)."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router

from ..services.fallbacks import project_fallbacks
from ..services.projects import project_update
from .auth import request_actor, request_project
from .common import ERROR_STATUSES
from .schemas import ErrorOut, FallbacksIn, FallbacksOut

router = Router(tags=["fallbacks"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 422: ErrorOut}


@router.get("/fallbacks", response={200: FallbacksOut, **ERRORS})
def get_fallbacks(request: HttpRequest):
    """The project's fallbacks: {model: [fallback model, ...]}."""
    return FallbacksOut(fallbacks=project_fallbacks(request_project(request)))


@router.put("/fallbacks", response={200: FallbacksOut, **ERRORS})
def put_fallbacks(request: HttpRequest, payload: FallbacksIn):
    """Replace the project's fallbacks ({} removes them); a refused list changes nothing (400/422)."""
    project = project_update(project=request_project(request), actor=request_actor(request),
                             fallbacks=payload.fallbacks)
    return FallbacksOut(fallbacks=project.fallbacks)
