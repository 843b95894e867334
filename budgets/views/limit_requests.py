"""Limit requests and temporary raises in the console: the Requests page (pending first, then decided),
deciding a request, asking on a user's behalf, raising a limit and ending a raise early."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from ..base.errors import NotFound
from ..forms import DecideForm, LimitRequestForm, RaiseForm, plain_amount
from ..models import Action, Limit, LimitRequest, Project
from ..selectors.limit_requests import increase_of, request_of, requests_of
from ..selectors.teams import limit_of
from ..services.limit_raises import limit_raise, limit_raise_end
from ..services.limit_requests import limit_request_create, limit_request_decide
from .common import actor, current_project, render_page, run_action, run_form


def _limit(project: Project, limit_id: int) -> Limit:
    try:
        return limit_of(project, limit_id)
    except NotFound:
        raise Http404("no such limit in this project") from None


def _request(project: Project, request_id: int) -> LimitRequest:
    try:
        return request_of(project, request_id)
    except NotFound:
        raise Http404("no such request in this project") from None


def _requests_page(request: HttpRequest, project: Project, *, form: LimitRequestForm | None = None,
                   refused: tuple[int, DecideForm] | None = None, status: int = 200) -> HttpResponse:
    rows = []
    for item in requests_of(project):
        decide = refused[1] if refused and refused[0] == item.pk else DecideForm(
            tz=project.timezone, auto_id=f"id_request{item.pk}_%s",
            initial={"decision": "raise", "amount": plain_amount(item.amount), "until": item.until})
        rows.append((item, decide))
    context = {"rows": rows, "form": form or LimitRequestForm(tz=project.timezone), "me": actor(request),
               "pending": sum(1 for item, _ in rows if item.status == LimitRequest.Status.PENDING)}
    return render_page(request, "console/requests.html", context, project=project, nav="requests", status=status)


@login_required
def request_list(request: HttpRequest, project_id: int) -> HttpResponse:
    return _requests_page(request, current_project(request, project_id))


@login_required
@require_POST
def request_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = LimitRequestForm(request.POST, tz=project.timezone)
    return run_form(
        request, form,
        lambda data: limit_request_create(project=project, user_id=data["user_id"], limit_id=data["limit_id"],
                                          amount=data["amount"], reason=data["reason"], until=data["until"],
                                          requested_by=actor(request)),
        message=lambda made: f"Asked for {made.amount} more for {made.user_id} (request {made.pk}): "
                             "another owner or manager decides it.",
        done=lambda _: redirect("limit_requests", project.pk),
        refused=lambda: _requests_page(request, project, form=form, status=400))


@login_required
@require_POST
def request_decide(request: HttpRequest, project_id: int, request_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    item = _request(project, request_id)
    form = DecideForm(request.POST, tz=project.timezone, auto_id=f"id_request{item.pk}_%s")

    def decide(data: dict) -> LimitRequest:
        approve = data["decision"] != "deny"
        return limit_request_decide(request=item, approve=approve, actor=actor(request), note=data["note"],
                                    decision=data["decision"] if approve else "raise", amount=data["amount"],
                                    until=data["until"], windows=data["windows"])

    return run_form(
        request, form, decide,
        message=lambda decided: f"Request {decided.pk} {decided.status}.",
        done=lambda _: redirect("limit_requests", project.pk),
        refused=lambda: _requests_page(request, project, refused=(item.pk, form), status=400))


def _back(request: HttpRequest, project: Project) -> HttpResponse:
    """Back to the page the raise was made on: a user's page (`user`) or the Limits page."""
    user = request.POST.get("user", "")
    if user:
        return redirect("user_detail", project.pk, user)
    return redirect("limit_list", project.pk)


@login_required
@require_POST
def limit_raise_new(request: HttpRequest, project_id: int, limit_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    limit = _limit(project, limit_id)
    form = RaiseForm(request.POST, tz=project.timezone)

    def refused() -> HttpResponse:
        errors = " ".join(str(error) for errors in form.errors.values() for error in errors)
        messages.error(request, f"The raise was not made: {errors}")
        return _back(request, project)

    return run_form(
        request, form,
        lambda data: limit_raise(limit=limit, amount=data["amount"], expires_at=data["until"],
                                 windows=data["windows"], actor=actor(request)),
        message=lambda made: f"Raised the limit ({limit}) by {made.amount} until "
                             f"{made.ends_at.isoformat(timespec='minutes')}.",
        done=lambda _: _back(request, project), refused=refused)


@login_required
@require_POST
def limit_raise_remove(request: HttpRequest, project_id: int, limit_id: int, increase_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    try:
        increase = increase_of(_limit(project, limit_id), increase_id)
    except NotFound:
        raise Http404("no such raise") from None
    return run_action(request, lambda: limit_raise_end(increase=increase, actor=actor(request)),
                      message=f"Ended the raise of {increase.amount} early.",
                      done=lambda _: _back(request, project), refused=lambda: _back(request, project))

