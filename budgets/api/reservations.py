"""Reservations: reserve → call the model → settle (or release). SPEC §8, docs/api.md."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Header, Router

from ..base.errors import BudgetExceeded, Conflict
from ..domain.codec import dumps
from ..models import CostEvent, Reservation
from ..selectors.call_limits import reservation_limits
from ..services.fallbacks import fallback_for
from ..services.reservations import (
    DEFAULT_TTL_SECONDS,
    reservation_create,
    reservation_get,
    reservation_release,
    reservation_settle,
)
from . import requests
from .auth import request_project
from .common import ERROR_STATUSES, current_budget, raw_json, with_budget_headers
from .schemas import (
    CostIn,
    ErrorOut,
    IdempotencyKey,
    ReleaseOut,
    ReservationIn,
    ReservationOut,
    SettleOut,
    UserId,
    settle_out,
)

router = Router(tags=["reservations"])
ERRORS = {**dict.fromkeys(ERROR_STATUSES, ErrorOut), 409: ErrorOut, 422: ErrorOut}


@router.post("/users/{path:user}/reservations", response={201: ReservationOut, 402: ErrorOut, **ERRORS})
def reserve(
    request: HttpRequest, user: UserId, payload: ReservationIn,
    idempotency_key: IdempotencyKey | None = Header(None, alias="Idempotency-Key"),  # noqa: B008
):
    """Hold a call's worst case against every applicable hard limit: its cost on dollar limits (the
    user's budget and the project's cap too), prompt + max_tokens on token limits, one request.

    201 with the open reservation; 402 budget_exceeded naming the limit without room (and, in
    `fallback`, the first of the project's fallback models whose worst case would fit).
    With `Idempotency-Key`, a retry answers as the first request did (`Idempotent-Replayed: true`).
    """
    project = request_project(request)
    amount, model, tokens = requests.reservation_amount(payload)
    fingerprint = requests.reservation_fingerprint(user, payload) if idempotency_key is not None else ""

    api_key = request.api_key  # type: ignore[attr-defined]
    try:
        reservation, created = reservation_create(
            project=project, user_id=user, amount=amount, model=model,
            ttl_seconds=DEFAULT_TTL_SECONDS if payload.ttl_seconds is None else payload.ttl_seconds,
            idempotency_key=idempotency_key, fingerprint=fingerprint, tokens=tokens, tags=payload.tags or (),
            api_key=api_key,
        )
    except BudgetExceeded as refused:  # advice, after the refusal's transaction: error.fallback
        refused.fallback = fallback_for(project=project, user_id=user, key_name=api_key.name,
                                        usage=requests.worst_case_usage(model, tokens, payload.max_tokens),
                                        tags=payload.tags or ())
        raise
    response = raw_json(dumps(ReservationOut.model_validate(reservation).model_dump()), 201, replayed=not created)
    # The limits as the hold left them, when the one-statement reservation returned them; else read now.
    held_on = getattr(reservation, "held_on", None)
    return with_budget_headers(response, held_on if held_on is not None
                               else reservation_limits(current_budget(request, user).budget, reservation))


@router.get("/reservations/{int:reservation_id}", response={200: ReservationOut, **ERRORS})
def get_reservation(request: HttpRequest, reservation_id: int):
    """One reservation of the key's project (404 for any other)."""
    return ReservationOut.model_validate(
        reservation_get(project=request_project(request), reservation_id=reservation_id))


# The body is read after the reservation's state (a released one is a 409 whatever the body), so
# ninja does not parse it: the schema is declared here for the OpenAPI document.
SETTLE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/CostIn"}}}}}


@router.post("/reservations/{int:reservation_id}/settle", response={200: SettleOut, **ERRORS},
             openapi_extra=SETTLE_BODY)
def settle(request: HttpRequest, reservation_id: int):
    """Record the call's real cost once (the body as for POST /users/{user}/costs) and free the hold.

    Without a model the reservation's model is meant. A retried settle answers the same and
    records nothing; a released or expired reservation is a 409, whatever the body.
    """
    project = request_project(request)
    reservation = reservation_get(project=project, reservation_id=reservation_id)
    if reservation.status in (Reservation.Status.RELEASED, Reservation.Status.EXPIRED):
        raise Conflict(f"reservation {reservation_id} is {reservation.status}; it cannot be settled")
    payload = requests.read_body(request, CostIn)
    usage, cost = requests.usage_and_cost(requests.with_model(payload, reservation.model))

    settled = reservation_settle(
        project=project, reservation_id=reservation_id, usage=usage, cost=cost, source=CostEvent.Source.API,
    )
    return raw_json(dumps(settle_out(settled).model_dump()), 200, replayed=not settled.created)


@router.post("/reservations/{int:reservation_id}/release", response={200: ReleaseOut, **ERRORS})
def release(request: HttpRequest, reservation_id: int):
    """Cancel the reservation and free its hold; releasing again changes nothing."""
    reservation = reservation_release(project=request_project(request), reservation_id=reservation_id)
    return {"reservation": ReservationOut.model_validate(reservation)}
