"""Limit requests: an application (or a person) asks for more room under a limit on a user's behalf;
an owner or a manager approves it in the console (a temporary raise, or a new amount) or denies it.

Deciding is a conditional update on the request's status (pending → approved/denied) under the
project's lock, so two people deciding at once yield one decision and at most one raise. A new
request and each decision are events of the alerts outbox (signed webhook, Slack, email), once each.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, Forbidden, InvalidInput, Unprocessable
from ..models import Alert, Limit, LimitRequest, Project
from ..selectors.teams import limit_of
from . import alerts
from .admission import lock_project
from .audit import write_audit
from .common import validate_user_id
from .limit_raises import limit_raise, raise_end
from .limits import limit_update, limits_for_user, validate_amount

MAX_REASON = 2000
DECISIONS = ("raise", "permanent")


def request_snapshot(request: LimitRequest) -> dict[str, Any]:
    """A request as the audit log keeps it."""
    return {
        "id": request.pk, "user_id": request.user_id, "limit_id": request.limit_id, "amount": str(request.amount),
        "until": request.until.isoformat() if request.until else None, "status": request.status,
        "requested_by": request.requested_by, "decided_by": request.decided_by, "decision": request.decision,
        "note": request.note, "increase_id": request.increase_id,
    }


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise InvalidInput(f"{field} must be a string of at most {MAX_REASON} characters")
    return value.strip()


def _requested_limit(project: Project, user_id: str, limit_id: Any, at: datetime) -> Limit:
    """The named limit (it must count the user's calls), or the binding one of the user's Limit rows."""
    states = [state for state in limits_for_user(project=project, user_id=user_id, at=at).items
              if state.id is not None]
    if limit_id is None:
        if not states:
            raise Unprocessable(f"no limit of the project applies to user {user_id!r}: a request raises a limit "
                                "(the user's own budget is changed with PUT /api/v1/users/{user})")
        return limit_of(project, states[0].id)  # type: ignore[arg-type]  # not None: filtered above
    if isinstance(limit_id, bool) or not isinstance(limit_id, int):
        raise InvalidInput("limit_id must be a limit's id (a whole number)")
    limit = limit_of(project, limit_id)
    if limit.pk not in {state.id for state in states}:
        raise Unprocessable(f"limit {limit_id} does not apply to user {user_id!r}'s calls")
    return limit


def limit_request_create(*, project: Project, user_id: Any, amount: Any, limit_id: Any = None, reason: Any = None,
                         until: Any = None, requested_by: str, at: datetime | None = None) -> LimitRequest:
    """A pending request for `amount` more under a limit that applies to the user (the binding one by
    default), until `until` (optional); audited and announced (webhook, Slack, email)."""
    at = at or utcnow()
    user_id = validate_user_id(user_id)
    reason = _text(reason, "reason")
    limit = _requested_limit(project, user_id, limit_id, at)
    value = validate_amount(amount, limit.unit)
    if value <= 0:
        raise InvalidInput("a request's amount must be more than 0")
    if until is not None:
        raise_end(project, limit, expires_at=until, at=at)  # the same rule as a raise's end
    with transaction.atomic():
        request = LimitRequest.objects.create(project=project, user_id=user_id, limit=limit, amount=value,
                                              reason=reason, until=until, requested_by=requested_by, created_at=at)
        write_audit(project_id=project.pk, action="limit_request", actor=requested_by, user_id=user_id,
                    after=request_snapshot(request))
        alerts.limit_request_event(request, Alert.Kind.LIMIT_REQUEST)
    return request


def limit_request_decide(*, request: LimitRequest, approve: bool, actor: str, note: Any = None,
                         decision: str = "raise", amount: Any = None, until: Any = None, windows: Any = None,
                         at: datetime | None = None) -> LimitRequest:
    """Approve (as a raise of `amount` until `until` or for `windows`, by default what was asked; or
    `decision` "permanent": the limit's amount grows by `amount`) or deny a pending request.

    Conflict if it was decided already (two people at once: one wins), Forbidden for its own requester.
    """
    at = at or utcnow()
    note = _text(note, "note")
    if approve and decision not in DECISIONS:
        raise InvalidInput(f"decision must be one of: {', '.join(DECISIONS)}")
    if request.requested_by == actor:
        raise Forbidden("you made this request: another owner or manager decides it")
    status = LimitRequest.Status.APPROVED if approve else LimitRequest.Status.DENIED
    with transaction.atomic():
        project = Project.objects.get(pk=request.project_id)
        lock_project(project)
        claimed = LimitRequest.objects.filter(pk=request.pk, status=LimitRequest.Status.PENDING).update(
            status=status, decided_by=actor, decided_at=at, note=note, decision=decision if approve else "")
        if not claimed:
            request.refresh_from_db()
            raise Conflict(f"request {request.pk} was already {request.status} by {request.decided_by or 'someone'}")
        request.refresh_from_db()
        before = {"status": LimitRequest.Status.PENDING}
        if approve:
            value = request.amount if amount in (None, "") else amount
            limit = Limit.objects.get(pk=request.limit_id)
            if decision == "permanent":
                limit_update(limit=limit, amount=limit.amount + validate_amount(value, limit.unit), actor=actor)
            else:
                ends = {"windows": windows} if windows not in (None, "") else {
                    "expires_at": until if until not in (None, "") else request.until}
                if ends.get("expires_at") is None and "windows" not in ends:
                    raise InvalidInput("give the raise's end (`until` or `windows`): the request asked for none")
                increase = limit_raise(limit=limit, amount=value, actor=actor, request=request, at=at, **ends)
                LimitRequest.objects.filter(pk=request.pk).update(increase=increase)
                request.increase = increase
        write_audit(project_id=project.pk, action="limit_request_decide", actor=actor, user_id=request.user_id,
                    before=before, after=request_snapshot(request))
        alerts.limit_request_event(request, Alert.Kind.LIMIT_REQUEST_DECIDED)
    return request

