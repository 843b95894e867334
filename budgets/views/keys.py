"""API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from ..forms import ApiKeyForm
from ..models import Action, ApiKey, Project
from ..selectors import console as selectors
from ..services.keys import api_key_create, api_key_revoke
from .common import actor, current_project, render_page, run_form


def _keys_page(request: HttpRequest, project: Project, form: ApiKeyForm, *, new_key: str | None = None,
               status: int = 200) -> HttpResponse:
    context = {"form": form, "keys": selectors.api_keys(project), "new_key": new_key}
    return render_page(request, "console/keys.html", context, project=project, nav="keys", status=status)


@login_required
def key_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    return _keys_page(request, project, ApiKeyForm())


@never_cache  # the answer carries the secret: no cache may keep it
@login_required
@require_POST
def key_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = ApiKeyForm(request.POST)
    # Rendered, not redirected: the secret is shown in this answer only (only its hash is stored).
    return run_form(
        request, form, lambda data: api_key_create(project=project, name=data["name"], actor=actor(request)),
        error_field="name", done=lambda created: _keys_page(request, project, ApiKeyForm(), new_key=created[1],
                                                           status=201),
        refused=lambda: _keys_page(request, project, form, status=400))


@login_required
@require_POST
def key_revoke(request: HttpRequest, project_id: int, key_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    key = get_object_or_404(ApiKey, project=project, pk=key_id)
    api_key_revoke(key=key, actor=actor(request))
    messages.success(request, f"Revoked the key “{key.name}” ({key.prefix}…). Requests with it now get 401.")
    return redirect("key_list", project.pk)
