"""Temporary raises of a limit and limit requests.

A key may raise a limit, end a raise early, and ask for more room on a user's behalf; approving or
denying a request is for people (owners and managers, in the console): the approve and deny routes
here exist to say so (403) to a key that tries.
"""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.timezone import now as utcnow
from ninja import Router, Status

from ..base.errors import Forbidden
from ..selectors.grants import states_with_rooms
from ..selectors.limit_requests import increase_of, increases_of, request_of
from ..selectors.limits import LimitState
from ..selectors.teams import limit_of
from ..services.limit_raises import limit_raise, limit_raise_end
from ..services.limit_requests import limit_request_create
from ..services.limit_windows import limits_current
from .auth import request_actor, request_project
from .common import ERROR_STATUSES
from .schemas import (
    ErrorOut,
    LimitDetailOut,
    LimitIncreaseIn,
    LimitIncreaseList,
    LimitIncreaseOut,
    LimitRequestIn,
    LimitRequestOut,
    UserId,
)

router = Router(tags=["limit requests"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 409: ErrorOut, 422: ErrorOut}
PEOPLE_ONLY = ("an API key cannot {verb} a limit request: an owner or a manager of the project decides it "
               "in the console (Requests page)")


def limit_detail(request: HttpRequest, limit_id: int) -> LimitDetailOut:
    """A limit in its current window (its ended raises taken off) with its active raises."""
    project = request_project(request)
    (limit,) = limits_current(project, [limit_of(project, limit_id)])
    (state,) = states_with_rooms(project.pk, [LimitState.of_limit(limit)], utcnow())
    detail = LimitDetailOut.model_validate(state)
    active = [LimitIncreaseOut.model_validate(increase) for increase in increases_of(limit, active_at=utcnow())]
    return detail.model_copy(update={"increases": active})


@router.post("/limits/{limit_id}/increases", response={201: LimitIncreaseOut, **ERRORS})
def raise_limit(request: HttpRequest, limit_id: int, payload: LimitIncreaseIn):
    """Raise a limit by `amount` until `expires_at` or the end of the Nth window (`windows`); raises stack."""
    increase = limit_raise(limit=limit_of(request_project(request), limit_id), amount=payload.amount,
                           expires_at=payload.expires_at, windows=payload.windows, actor=request_actor(request))
    return Status(201, LimitIncreaseOut.model_validate(increase))


@router.get("/limits/{limit_id}/increases", response={200: LimitIncreaseList, **ERRORS})
def list_increases(request: HttpRequest, limit_id: int):
    """Every raise of the limit, active, ended early or expired, the earliest end first."""
    limit = limit_of(request_project(request), limit_id)
    return LimitIncreaseList(items=[LimitIncreaseOut.model_validate(item) for item in increases_of(limit)])


@router.delete("/limits/{limit_id}/increases/{increase_id}", response={200: LimitIncreaseOut, **ERRORS})
def end_increase(request: HttpRequest, limit_id: int, increase_id: int):
    """End a raise now (audited); 409 if it has already ended."""
    increase = increase_of(limit_of(request_project(request), limit_id), increase_id)
    return LimitIncreaseOut.model_validate(limit_raise_end(increase=increase, actor=request_actor(request)))


@router.post("/users/{path:user}/limit-requests", response={201: LimitRequestOut, **ERRORS})
def create_request(request: HttpRequest, user: UserId, payload: LimitRequestIn):
    """Ask, on the user's behalf, for `amount` more under a limit (the binding one by default) until `until`."""
    made = limit_request_create(project=request_project(request), user_id=user, limit_id=payload.limit_id,
                                amount=payload.amount, reason=payload.reason, until=payload.until,
                                requested_by=request_actor(request))
    return Status(201, LimitRequestOut.model_validate(made))


@router.get("/limit-requests/{request_id}", response={200: LimitRequestOut, **ERRORS})
def get_request(request: HttpRequest, request_id: int):
    """A request: pending, approved (with the raise it made) or denied, with the note."""
    return LimitRequestOut.model_validate(request_of(request_project(request), request_id))


@router.post("/limit-requests/{request_id}/approve", response={403: ErrorOut, **ERRORS})
def approve_request(request: HttpRequest, request_id: int):
    """Always 403 for an API key: people approve, in the console."""
    request_of(request_project(request), request_id)  # 404 for another project's request
    raise Forbidden(PEOPLE_ONLY.format(verb="approve"))


@router.post("/limit-requests/{request_id}/deny", response={403: ErrorOut, **ERRORS})
def deny_request(request: HttpRequest, request_id: int):
    """Always 403 for an API key: people deny, in the console."""
    request_of(request_project(request), request_id)
    raise Forbidden(PEOPLE_ONLY.format(verb="deny"))
