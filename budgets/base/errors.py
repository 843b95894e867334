"""Domain errors. Each carries the error type and HTTP status the API answers with."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class BudgetError(Exception):
    """Base of the errors a caller can cause; never a server fault."""

    type = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra(self) -> dict[str, Any]:
        """More fields for the API's error body."""
        return {}


class InvalidInput(BudgetError):
    type = "validation_error"
    status = 400


class Unprocessable(InvalidInput):
    """Input of the right form that means nothing here (more cached tokens than prompt tokens, a cursor
    this API did not give out): 422, where a request the schema refuses is a 400."""

    status = 422


class InvalidJSON(BudgetError):
    type = "invalid_json"
    status = 400


class PayloadTooLarge(BudgetError):
    type = "payload_too_large"
    status = 413


class UnknownUser(BudgetError, KeyError):
    """No budget for this user; a KeyError too, as the seed's dict lookup raised."""

    type = "not_found"
    status = 404

    def __str__(self) -> str:
        return self.message


class Forbidden(BudgetError):
    type = "forbidden"
    status = 403


class UnknownModel(BudgetError):
    type = "unknown_model"
    status = 422


class IdempotencyConflict(BudgetError):
    type = "idempotency_conflict"
    status = 409


class BudgetExceeded(BudgetError):
    """A limit has no room for this call; `scope` names its level (user, project, team, key, tag).

    `state` is the limit without room (selectors.limits.LimitState, also for the user budget and
    the project cap) and `requested` what the call asked in the limit's unit. `fallback` is the
    model the native API suggests retrying with (services.fallbacks.Fallback: `model`, `worst_case`),
    set after the refusal; None when there is none.
    """

    type = "budget_exceeded"
    status = 402

    def __init__(
        self, message: str, *, scope: str, limit: Decimal | None = None, spend: Decimal | None = None,
        held: Decimal | None = None, requested: Decimal | None = None, state: Any = None,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.state = state
        self.requested = requested
        self.figures = {"limit": limit, "spend": spend, "held": held, "requested": requested}
        self.fallback: Any = None

    def extra(self) -> dict[str, Any]:
        figures: dict[str, Any] = {key: value for key, value in self.figures.items() if value is not None}
        if self.state is not None:  # `limit`: the limit itself, where older answers had its amount
            state = self.state
            figures["limit"] = {
                "id": state.id, "scope": state.scope, "subject": state.subject, "model": state.model,
                "unit": state.unit, "window": state.window, "limit": state.limit, "used": state.used,
                "held": state.held, "raised": state.raised, "requested": self.requested,
                "resets_at": state.resets_at.isoformat() if state.resets_at is not None else None,
            }
        return figures


class TooManyRequests(BudgetError):
    """Too many failed authentications from one address: wait `retry_after` seconds."""

    type = "too_many_requests"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BudgetError):
    type = "not_found"
    status = 404


class Conflict(BudgetError):
    """The request does not fit the object's state (e.g. settling a released reservation)."""

    type = "conflict"
    status = 409
