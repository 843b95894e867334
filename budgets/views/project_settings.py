"""Project settings: the project cap and time zone, where alerts go (webhook, email, Slack), fallback models."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from ..base.validation import fallbacks_text
from ..domain.slack import mask_url
from ..forms import AlertSettingsForm, FallbacksForm, ProjectSettingsForm, plain_amount
from ..models import Action, Project
from ..services.projects import project_update
from .common import actor, current_project, render_page, run_form


def _initial_project(project: Project) -> dict:
    return {"name": project.name, "duration": project.duration, "max_budget": plain_amount(project.max_budget),
            "timezone": project.timezone}


def _initial_alerts(project: Project) -> dict:
    return {"alert_thresholds": ", ".join(str(t) for t in project.alert_thresholds or []),
            "alert_webhook_url": project.alert_webhook_url, "alert_email": project.alert_email,
            "anomaly_alerts": project.anomaly_alerts, "anomaly_multiple": project.anomaly_multiple.normalize(),
            "anomaly_floor": plain_amount(project.anomaly_floor)}


def _settings_page(request: HttpRequest, project: Project, *, project_form: ProjectSettingsForm | None = None,
                   alert_form: AlertSettingsForm | None = None, fallbacks_form: FallbacksForm | None = None,
                   status: int = 200) -> HttpResponse:
    context = {
        "fallbacks_form": fallbacks_form or FallbacksForm(initial={"fallbacks": fallbacks_text(project.fallbacks)}),
        "project_form": project_form or ProjectSettingsForm(initial=_initial_project(project)),
        "alert_form": alert_form or AlertSettingsForm(initial=_initial_alerts(project),
                                                      slack_mask=mask_url(project.slack_webhook_url)),
    }
    return render_page(request, "console/settings.html", context, project=project, nav="settings", status=status)


@login_required
def project_settings(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id)
    return _settings_page(request, project)


@login_required
@require_POST
def project_settings_save(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = ProjectSettingsForm(request.POST)
    return run_form(
        request, form, lambda _: project_update(project=project, actor=actor(request), **form.changes()),
        message="Saved the project settings.", done=lambda _: redirect("project_settings", project.pk),
        refused=lambda: _settings_page(request, project, project_form=form, status=400))


@login_required
@require_POST
def alert_settings_save(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = AlertSettingsForm(request.POST, slack_mask=mask_url(project.slack_webhook_url))
    return run_form(
        request, form,
        lambda data: project_update(
            project=project, actor=actor(request), alert_thresholds=data["alert_thresholds"],
            alert_webhook_url=data["alert_webhook_url"], alert_email=data["alert_email"], **form.slack_change(),
            **form.anomaly_change()),
        message="Saved the alert settings.", done=lambda _: redirect("project_settings", project.pk),
        refused=lambda: _settings_page(request, project, alert_form=form, status=400))


@login_required
@require_POST
def fallbacks_save(request: HttpRequest, project_id: int) -> HttpResponse:
    project = current_project(request, project_id, Action.CHANGE)
    form = FallbacksForm(request.POST)
    return run_form(
        request, form, lambda data: project_update(project=project, actor=actor(request), fallbacks=data["fallbacks"]),
        message="Saved the fallback models.", done=lambda _: redirect("project_settings", project.pk),
        refused=lambda: _settings_page(request, project, fallbacks_form=form, status=400), error_field="fallbacks")
