"""Python client of the Budget Manager service.

`Client`/`AsyncClient` wrap the native API (/api/v1/) with retries and idempotency keys;
`client.reserve(...)` is the reserve → call → settle pattern; `BudgetManager` is a drop-in
for LiteLLM's class. The LiteLLM callback and guard live in `budget_client.litellm`, the LiteLLM
Proxy hook in `budget_client.litellm_proxy`.
"""

from __future__ import annotations

from .client import VERSION, AsyncClient, Client, RetryPolicy
from .errors import (
    BudgetClientError,
    BudgetExceeded,
    IdempotencyConflict,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
    UnknownModel,
    ValidationError,
)
from .manager import BudgetManager
from .reservations import AsyncHold, Hold
from .results import (
    Alert,
    AlertPage,
    Check,
    CostEvent,
    EventPage,
    Fallback,
    ProjectedCost,
    Quote,
    RecordedCost,
    Reservation,
    Settlement,
    User,
    UserPage,
)

__version__ = VERSION
__all__ = [
    "Alert",
    "AlertPage",
    "AsyncClient",
    "AsyncHold",
    "BudgetClientError",
    "BudgetExceeded",
    "BudgetManager",
    "Check",
    "Client",
    "CostEvent",
    "EventPage",
    "Fallback",
    "Hold",
    "IdempotencyConflict",
    "NotFound",
    "ProjectedCost",
    "Quote",
    "RecordedCost",
    "Reservation",
    "RetryPolicy",
    "ServerError",
    "Settlement",
    "TransportError",
    "Unauthorized",
    "UnknownModel",
    "User",
    "UserPage",
    "ValidationError",
]
