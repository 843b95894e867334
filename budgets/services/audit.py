"""The audit log: one writer, one way of naming who did it.

Actors: `user:<username>` (console), `admin:<username>` (Django admin), `sso:<username>` (a role set from the
identity provider's groups at that person's single sign-on), `key:<prefix>` (the API; `hosted:key:<prefix>`
through the LiteLLM hosted protocol), `manager:<project>` (the Python BudgetManager),
`system:<job>` (sweeps, lazy resets, commands).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ..models import ApiKey, AuditLog, UserBudget

SYSTEM = "system"
SYSTEM_SWEEP = "system:sweep"
SYSTEM_LAZY = "system:lazy-reset"  # the spellings of actor_for_system("sweep") and ("lazy-reset")


def actor_for_user(user: Any, *, via: str = "user") -> str:
    """A logged-in person: `user:<name>` in the console, `admin:<name>` in Django admin, `sso:<name>` at SSO."""
    return f"{via}:{user.get_username()}"


def actor_for_key(key: ApiKey, *, via: str | None = None) -> str:
    """A change made with an API key; `via` names the protocol when it is not the native API."""
    return f"{via}:key:{key.prefix}" if via else f"key:{key.prefix}"


def actor_for_manager(project_name: str) -> str:
    return f"manager:{project_name}"


def actor_for_system(job: str) -> str:
    """Work nobody asked for in a request: a sweep, a command, the demo seed."""
    return f"system:{job}"


class BudgetState(Protocol):
    """What a snapshot reads: a UserBudget, or one about to be inserted (the hosted merge's NewBudget)."""

    @property
    def total_budget(self) -> Decimal: ...
    @property
    def duration(self) -> str: ...
    @property
    def duration_days(self) -> int | None: ...
    @property
    def current_spend(self) -> Decimal: ...
    @property
    def period_start(self) -> datetime: ...
    @property
    def next_reset_at(self) -> datetime | None: ...


def budget_snapshot(budget: BudgetState) -> dict[str, Any]:
    """A budget's state as the audit log keeps it."""
    return {
        "total_budget": str(budget.total_budget),
        "duration": budget.duration,
        "duration_days": budget.duration_days,
        "current_spend": str(budget.current_spend),
        "period_start": budget.period_start.isoformat(),
        "next_reset_at": budget.next_reset_at.isoformat() if budget.next_reset_at else None,
    }


def write_audit(
    *, project_id: int, action: str, actor: str, budget: UserBudget | None = None, budget_id: int | None = None,
    user_id: str = "", before: dict | None = None, after: dict | None = None,
) -> AuditLog:
    return AuditLog.objects.create(
        project_id=project_id,
        budget_id=budget.pk if budget is not None else budget_id,
        user_id=user_id or (budget.user_id if budget else ""),
        action=action,
        actor=actor,
        before=before,
        after=after,
    )


def write_audits(entries: list[AuditLog]) -> None:
    """Many audit rows in one statement (sweeps and bulk changes)."""
    AuditLog.objects.bulk_create(entries)
