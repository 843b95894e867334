"""Typed answers of the native API (dataclasses); money is Decimal, times are aware datetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# LiteLLM's BudgetManager counts durations in days (1, 7, 28, 365).
SEED_DAYS = {"daily": 1, "weekly": 7, "monthly": 28, "yearly": 365}


def money(value: Any) -> Decimal:
    """A JSON number (int or Decimal as parsed by the client) as Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise TypeError(f"expected a JSON number for an amount, got {value!r}")
    return Decimal(value)


def when(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class User:
    """A user's budget and the spend of the current period."""

    user: str
    total_budget: Decimal
    duration: str
    duration_days: int | None
    current_cost: Decimal
    model_cost: dict[str, Decimal]
    remaining: Decimal
    budget_exceeded: bool
    exceeded_scope: str | None
    period_start: datetime
    next_reset_at: datetime | None
    created_at: datetime
    updated_at: datetime
    held: Decimal = Decimal(0)  # open reservations; 0 from a server without them
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(
            user=data["user"],
            total_budget=money(data["total_budget"]),
            duration=data["duration"],
            duration_days=data.get("duration_days"),
            current_cost=money(data["current_cost"]),
            model_cost={model: money(cost) for model, cost in data.get("model_cost", {}).items()},
            remaining=money(data["remaining"]),
            budget_exceeded=data["budget_exceeded"],
            exceeded_scope=data.get("exceeded_scope"),
            period_start=datetime.fromisoformat(data["period_start"]),
            next_reset_at=when(data.get("next_reset_at")),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
            held=money(data.get("held", 0)),
            raw=data,
        )

    @property
    def duration_in_days(self) -> int | None:
        """The duration as LiteLLM counts it (1, 7, 28, 365, or N for "every N days"); None for no reset."""
        if self.duration == "days":
            return self.duration_days
        return SEED_DAYS.get(self.duration)

    def seed_record(self) -> dict[str, Any]:
        """The user as LiteLLM's BudgetManager keeps it (`user_dict[user]`), money as Decimal."""
        record: dict[str, Any] = {"total_budget": self.total_budget}
        if self.duration_in_days is not None:
            record["duration"] = self.duration_in_days
        record["created_at"] = self.created_at.timestamp()
        record["last_updated_at"] = self.period_start.timestamp()
        record["current_cost"] = self.current_cost
        record["model_cost"] = dict(self.model_cost)
        return record


@dataclass(frozen=True)
class UserPage:
    items: list[User]
    total: int
    limit: int
    offset: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UserPage:
        return cls([User.from_json(item) for item in data["items"]], data["total"], data["limit"], data["offset"])


@dataclass(frozen=True)
class CostEvent:
    """One ledger row."""

    id: int
    user: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    cost: Decimal
    source: str
    idempotency_key: str | None
    created_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostEvent:
        return cls(
            id=data["id"], user=data["user"], model=data["model"], prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"], cached_tokens=data.get("cached_tokens", 0),
            cache_creation_tokens=data.get("cache_creation_tokens", 0), cost=money(data["cost"]),
            source=data["source"], idempotency_key=data.get("idempotency_key"),
            created_at=datetime.fromisoformat(data["created_at"]),
        )


@dataclass(frozen=True)
class EventPage:
    items: list[CostEvent]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventPage:
        return cls([CostEvent.from_json(item) for item in data["items"]], data.get("next_cursor"))


@dataclass(frozen=True)
class RecordedCost:
    """The answer to a recorded cost; `replayed` when the service answered a retry from its first answer."""

    cost: Decimal
    event: CostEvent
    user: User
    budget_exceeded: bool
    exceeded_scope: str | None
    replayed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any], replayed: bool = False) -> RecordedCost:
        return cls(money(data["cost"]), CostEvent.from_json(data["event"]), User.from_json(data["user"]),
                   data["budget_exceeded"], data.get("exceeded_scope"), replayed)


@dataclass(frozen=True)
class ProjectedCost:
    model: str
    prompt_tokens: int
    prompt_cost: Decimal
    current_cost: Decimal
    projected_cost: Decimal

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectedCost:
        return cls(data["model"], data["prompt_tokens"], money(data["prompt_cost"]), money(data["current_cost"]),
                   money(data["projected_cost"]))


@dataclass(frozen=True)
class Fallback:
    """The model a refusal suggests (`error.fallback`, a check's `fallback`): the first of the project's
    fallbacks for the call's model whose worst case (the same tokens at its price) fits every limit."""

    model: str
    worst_case: Decimal

    @classmethod
    def from_json(cls, data: Any) -> Fallback | None:
        """None for null, or for anything that is not the service's {"model", "worst_case"}."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return None
        try:
            return cls(data["model"], money(data.get("worst_case")))
        except TypeError:
            return None


@dataclass(frozen=True)
class Check:
    """May the user spend `estimated_cost` now? `scope` names the budget without room; `fallback` the
    model that would fit instead, when the project names one (None otherwise)."""

    allowed: bool
    reason: str | None
    remaining: Decimal
    scope: str | None
    estimated_cost: Decimal
    fallback: Fallback | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        return cls(data["allowed"], data.get("reason"), money(data["remaining"]), data.get("scope"),
                   money(data["estimated_cost"]), Fallback.from_json(data.get("fallback")))


@dataclass(frozen=True)
class Quote:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    prompt_cost: Decimal
    completion_cost: Decimal
    cost: Decimal

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quote:
        return cls(data["model"], data["prompt_tokens"], data["completion_tokens"], data.get("cached_tokens", 0),
                   data.get("cache_creation_tokens", 0), money(data["prompt_cost"]),
                   money(data["completion_cost"]), money(data["cost"]))


@dataclass(frozen=True)
class Alert:
    id: int
    scope: str
    user: str | None
    threshold: int
    period_start: datetime
    spend: Decimal
    limit: Decimal
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        return cls(data["id"], data["scope"], data.get("user"), data["threshold"],
                   datetime.fromisoformat(data["period_start"]), money(data["spend"]), money(data["limit"]),
                   datetime.fromisoformat(data["created_at"]), when(data.get("delivered_at")))


@dataclass(frozen=True)
class AlertPage:
    items: list[Alert]
    total: int
    limit: int
    offset: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertPage:
        return cls([Alert.from_json(item) for item in data["items"]], data["total"], data["limit"], data["offset"])


@dataclass(frozen=True)
class Reservation:
    """A hold of a call's worst-case cost against the user's and the project's remaining budget."""

    id: int
    user: str
    model: str | None
    amount: Decimal
    status: str  # "open", "settled", "released" (or "expired")
    expires_at: datetime | None
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reservation:
        return cls(data["id"], data["user"], data.get("model"), money(data["amount"]), data["status"],
                   when(data.get("expires_at")), when(data.get("created_at")), data)


@dataclass(frozen=True)
class Settlement:
    """A settled reservation: the real cost recorded once, the hold freed."""

    reservation: Reservation
    cost: Decimal
    event: CostEvent
    user: User
    over_hold: bool
    replayed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any], replayed: bool = False) -> Settlement:
        return cls(Reservation.from_json(data["reservation"]), money(data["cost"]),
                   CostEvent.from_json(data["event"]), User.from_json(data["user"]), bool(data["over_hold"]),
                   replayed)
