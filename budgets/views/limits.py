"""Limits: every limit of the project with its utilisation, filtered by scope; create, edit, delete."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.timezone import now as utcnow
from django.views.decorators.http import require_POST

from ..base.errors import NotFound
from ..forms import LimitEditForm, LimitForm, plain_amount, rollover_allowed
from ..models import Action, Limit, Project
from ..selectors.grants import states_with_rooms
from ..selectors.limit_requests import active_raises
from ..selectors.limits import LimitState
from ..selectors.teams import limit_of, limit_rows, limits_of
from ..services.limit_windows import limits_current
from ..services.limits import limit_create, limit_delete, limit_update
from .common import actor, current_project, render_page, run_action, run_form


def _scope(request: HttpRequest) -> str | None:
    scope = request.GET.get("scope") or None
    return scope if scope in Limit.Scope.values else None


def edit_form(state: LimitState) -> LimitEditForm:
    """A limit row's edit form with the limit's values."""
    return LimitEditForm(initial={"amount": plain_amount(state.amount), "mode": state.mode,
                                  "thresholds": ", ".join(str(t) for t in state.thresholds or ()),
                                  "grace_percent": state.grace_percent,
                                  "rollover_max": plain_amount(state.rollover_max)},
                         rollover_allowed=rollover_allowed(state.scope, state.unit, state.model, state.window),
                         auto_id=f"id_limit{state.id}_%s")


def _limits_page(request: HttpRequest, project: Project, form: LimitForm, *, status: int = 200,
                 refused: tuple[int, LimitEditForm] | None = None) -> HttpResponse:
    scope = _scope(request)
    states = [LimitState.of_limit(limit) for limit in limits_current(project, limits_of(project, scope=scope))]
    cap = LimitState.of_project(project) if scope in (None, Limit.Scope.PROJECT) else None
    rows = limit_rows(([cap] if cap else []) + states_with_rooms(project.pk, states, utcnow()))
    edit_forms: dict[int | None, LimitEditForm] = {row.pk: edit_form(row.state) for row in rows if row.pk is not None}
    if refused is not None:  # the refused edit again, with what was typed and why
        refused[1].rollover_allowed = edit_forms[refused[0]].rollover_allowed if refused[0] in edit_forms else False
        edit_forms[refused[0]] = refused[1]
    context = {"form": form, "rows": [(row, edit_forms.get(row.pk)) for row in rows], "scope": scope,
               "scopes": Limit.Scope.choices, "show_forecast": True, "raises": active_raises(project, utcnow()),
               "project_thresholds": ", ".join(str(t) for t in project.alert_thresholds or [])}
    return render_page(request, "console/limits.html", context, project=project, nav="limits", status=status)


@login_required
def limit_list(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    return _limits_page(request, project, LimitForm())


@login_required
@require_POST
def limit_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = LimitForm(request.POST)
    return run_form(
        request, form,
        lambda data: limit_create(project=project, scope=data["scope"], subject=data["subject"],
                                  model=data["model"], unit=data["unit"], window=data["window"],
                                  amount=data["amount"], mode=data["mode"], thresholds=data["thresholds"],
                                  grace_percent=data["grace_percent"], rollover=data["rollover_max"],
                                  actor=actor(request)),
        message=lambda limit: f"Created the limit: {limit}.", done=lambda limit: redirect("limit_list", project.pk),
        refused=lambda: _limits_page(request, project, form, status=400))


def _limit(project: Project, limit_id: int) -> Limit:
    try:
        return limit_of(project, limit_id)
    except NotFound:
        raise Http404("no such limit in this project") from None


@login_required
@require_POST
def limit_edit(request: HttpRequest, project_id: int, limit_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    limit = _limit(project, limit_id)
    form = LimitEditForm(request.POST, auto_id=f"id_limit{limit.pk}_%s")
    return run_form(
        request, form, lambda _: limit_update(limit=limit, **form.changes(), actor=actor(request)),
        message=lambda saved: f"Saved the limit: {saved}.", done=lambda saved: redirect("limit_list", project.pk),
        refused=lambda: _limits_page(request, project, LimitForm(), status=400, refused=(limit.pk, form)))


@login_required
@require_POST
def limit_remove(request: HttpRequest, project_id: int, limit_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    limit = _limit(project, limit_id)
    return run_action(request, lambda: limit_delete(limit=limit, actor=actor(request)),
                      message=f"Deleted the limit: {limit}. Its calls stay in the ledger.",
                      done=lambda _: redirect("limit_list", project.pk),
                      refused=lambda: redirect("limit_list", project.pk))
