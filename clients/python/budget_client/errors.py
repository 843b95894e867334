"""Exceptions, mapped from the service's one error shape `{"error": {"type", "message", "scope"?}}`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .results import Fallback


class BudgetClientError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        # Not super(): a subclass may also derive from an exception with another signature
        # (budget_client.litellm's error is a litellm.BudgetExceededError too).
        Exception.__init__(self, message)
        self.message = message
        self.status = status
        self.type = type
        self.body = body or {}

    def __str__(self) -> str:
        return self.message


class Unauthorized(BudgetClientError):
    """401: no key, an unknown key or a revoked key."""


class NotFound(BudgetClientError, KeyError):
    """404: an unknown user (in the key's project), reservation or route.

    A KeyError too, as the seed BudgetManager's dict lookup raised for an unknown user.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class ValidationError(BudgetClientError, ValueError):
    """400 (validation_error, invalid_json, ...) or 422 (unknown_model): the request cannot be served as sent."""


class UnknownModel(ValidationError):
    """422 unknown_model: the price table does not know the model and no cost or prices were given."""


class IdempotencyConflict(BudgetClientError):
    """409: an Idempotency-Key reused with a different request."""


class BudgetExceeded(BudgetClientError):
    """402 budget_exceeded: the user's or the project's budget (`scope`) has no room.

    `remaining`, `amount` and `limit` carry the figures the error body gives (None when absent);
    `fallback` the model the service suggests instead (`error.fallback`: a `Fallback` with its
    `model` and `worst_case`, None when there is none); `body` holds the whole error object.
    """

    def __init__(self, message: str, *, scope: str | None = None, status: int | None = 402,
                 type: str | None = "budget_exceeded", body: dict[str, Any] | None = None) -> None:
        super().__init__(message, status=status, type=type, body=body)
        self.scope = scope
        self.remaining = _money(self.body.get("remaining"))
        self.amount = _money(self.body.get("amount", self.body.get("estimated_cost")))
        self.limit = _money(self.body.get("limit", self.body.get("total_budget")))
        self.fallback = Fallback.from_json(self.body.get("fallback"))


class ServerError(BudgetClientError):
    """A 5xx or 429 answer that outlasted the retries (or any other unexpected status)."""


class TransportError(BudgetClientError):
    """The service could not be reached (connection refused, timeout, ...) after the retries."""


def _money(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    except ArithmeticError:
        return None


_BY_TYPE: dict[str, type[BudgetClientError]] = {
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "validation_error": ValidationError,
    "invalid_json": ValidationError,
    "unknown_model": UnknownModel,
    "idempotency_conflict": IdempotencyConflict,
}
_BY_STATUS: dict[int, type[BudgetClientError]] = {
    400: ValidationError,
    401: Unauthorized,
    404: NotFound,
    409: IdempotencyConflict,
    413: ValidationError,
    422: ValidationError,
}


def error_from(status: int, body: Any) -> BudgetClientError:
    """The exception for an error answer: by the body's error type first, then by the status."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    raw_type, raw_message = error.get("type"), error.get("message")
    type_ = raw_type if isinstance(raw_type, str) else None
    message = raw_message if isinstance(raw_message, str) else f"HTTP {status}"
    if type_ == "budget_exceeded" or status == 402:
        return BudgetExceeded(message, scope=error.get("scope"), status=status, type=type_, body=error)
    cls = _BY_TYPE.get(type_ or "") or _BY_STATUS.get(status) or (
        ServerError if status >= 500 or status == 429 else BudgetClientError
    )
    return cls(message, status=status, type=type_, body=error)
