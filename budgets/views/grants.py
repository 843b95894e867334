"""Grants (credits) in the console: the card on a user's and a team's page, giving one, revoking one, and a
grant's page with the ledger rows it paid. The writes are services.grants' (audited there)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.timezone import now as utcnow
from django.views.decorators.http import require_POST

from ..base.errors import NotFound
from ..forms import GrantForm
from ..models import Action, Grant, Project
from ..services.grants import grant_create, grant_get, grant_uses, grant_void, grants_of
from ..templatetags.console import format_dollars
from .common import actor, current_project, render_page, run_action, run_form

ZERO = Decimal(0)


@dataclass(frozen=True)
class GrantRow:
    """A grant as the card shows it: its status and what it has left now."""

    grant: Grant
    status: str

    @property
    def remaining(self) -> Decimal:
        return self.grant.remaining if self.status == "active" else ZERO


def grants_card(project: Project, scope: str, subject: str, form: GrantForm | None = None) -> dict[str, Any]:
    """The Grants card's context: the subject's grants (active first, in the order they are used), the total
    they have left, and the Give credit form."""
    at = utcnow()
    rows = [GrantRow(grant, grant.status_at(at)) for grant in grants_of(project, scope, subject)]
    return {"grants": rows, "grants_left": sum((row.remaining for row in rows), ZERO),
            "grant_form": form or GrantForm(tz=project.timezone)}


def subject_url(project: Project, scope: str, subject: str) -> str:
    if scope == Grant.Scope.USER:
        return reverse("user_detail", args=[project.pk, subject])
    return reverse("team_detail", args=[project.pk, subject])


def grant_give(request: HttpRequest, project: Project, scope: str, subject: str,
               refused: Callable[[GrantForm], HttpResponse]) -> HttpResponse:
    """The Give credit form's action (a user's or a team's page): a refused grant shows the page again with
    the form and why (status 400), and writes nothing."""
    form = GrantForm(request.POST, tz=project.timezone)
    return run_form(
        request, form,
        lambda data: grant_create(project=project, scope=scope, subject=subject, amount=data["amount"],
                                  expires_at=data["expires_at"], priority=data["priority"], note=data["note"],
                                  actor=actor(request)),
        message=lambda grant: f"Gave {format_dollars(grant.amount)} of credit to {scope} {subject} (grant {grant.pk}).",
        done=lambda _: redirect(subject_url(project, scope, subject)), refused=lambda: refused(form))


def _grant(project: Project, grant_id: int) -> Grant:
    try:
        return grant_get(project, grant_id)
    except NotFound:
        raise Http404("no such grant in this project") from None


@login_required
def grant_detail(request: HttpRequest, project_id: int, grant_id: int) -> HttpResponse:
    """A grant and the ledger rows it paid (the newest 100)."""
    project = current_project(request, project_id)
    grant = _grant(project, grant_id)
    row = GrantRow(grant, grant.status_at(utcnow()))
    context = {"row": row, "grant": grant, "uses": grant_uses(grant),
               "back": subject_url(project, grant.scope, grant.subject)}
    nav = "users" if grant.scope == Grant.Scope.USER else "teams"
    return render_page(request, "console/grant_detail.html", context, project=project, nav=nav)


@login_required
@require_POST
def grant_revoke(request: HttpRequest, project_id: int, grant_id: int) -> HttpResponse:
    """Revoke a grant: its rest is void (audited by the service); what it paid stays paid."""
    project = current_project(request, project_id, Action.CHANGE)
    grant = _grant(project, grant_id)
    back = request.POST.get("next") == "grant" and reverse("grant_detail", args=[project.pk, grant.pk])
    back = back or subject_url(project, grant.scope, grant.subject)
    if grant.status_at(utcnow()) != "active":
        messages.error(request, f"Grant {grant.pk} is not active: there is nothing left to revoke.")
        return redirect(back)
    return run_action(request, lambda: grant_void(grant=grant, actor=actor(request)),
                      message=lambda done: f"Revoked grant {done.pk}: its rest ({format_dollars(done.voided)}) is "
                                           "void; what it paid stays paid.",
                      done=lambda _: redirect(back), refused=lambda: redirect(back))
