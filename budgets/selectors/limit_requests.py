"""Reads of temporary raises and limit requests, for the API and the console."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Case, IntegerField, QuerySet, Value, When

from ..base.errors import NotFound
from ..models import Limit, LimitIncrease, LimitRequest, Project


def increases_of(limit: Limit, *, active_at: datetime | None = None) -> QuerySet[LimitIncrease]:
    """A limit's raises, the earliest end first; with `active_at` only those active then."""
    increases = LimitIncrease.objects.filter(limit=limit)
    if active_at is not None:
        increases = increases.filter(ended_at__isnull=True, starts_at__lte=active_at, ends_at__gt=active_at)
    return increases.order_by("ends_at", "id")


def active_raises(project: Project, at: datetime) -> QuerySet[LimitIncrease]:
    """The project's raises active at `at`, with their limits, the earliest end first."""
    return (LimitIncrease.objects.filter(limit__project=project, ended_at__isnull=True, starts_at__lte=at,
                                         ends_at__gt=at).select_related("limit").order_by("ends_at", "id"))


def increase_of(limit: Limit, increase_id: int) -> LimitIncrease:
    """One raise of the limit; NotFound otherwise."""
    increase = LimitIncrease.objects.select_related("limit").filter(limit=limit, pk=increase_id).first()
    if increase is None:
        raise NotFound(f"no raise {increase_id} on limit {limit.pk}")
    return increase


def request_of(project: Project, request_id: int) -> LimitRequest:
    """One limit request of the project; NotFound for another project's or none."""
    request = LimitRequest.objects.select_related("limit", "increase").filter(project=project, pk=request_id).first()
    if request is None:
        raise NotFound(f"no limit request {request_id} in project {project.name!r}")
    return request


def requests_of(project: Project) -> QuerySet[LimitRequest]:
    """The project's requests for the console: pending first (oldest first), then decided (newest first)."""
    pending = Case(When(status=LimitRequest.Status.PENDING, then=Value(0)), default=Value(1),
                   output_field=IntegerField())
    return (LimitRequest.objects.filter(project=project).select_related("limit", "increase")
            .annotate(pending=pending).order_by("pending", "-decided_at", "created_at", "id"))


def pending_count(project: Project) -> int:
    """How many requests wait for a decision (the navigation's badge)."""
    return LimitRequest.objects.filter(project=project, status=LimitRequest.Status.PENDING).count()
