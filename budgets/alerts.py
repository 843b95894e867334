"""Budget alerts: thresholds crossed by recorded spend.

Called by services.cost_record inside its transaction; delivery is built on top
(see the background-work issue). Until then crossing a threshold records nothing.
"""

from __future__ import annotations

from decimal import Decimal

from .models import Project, UserBudget


def spend_recorded(*, project: Project, budget: UserBudget, amount: Decimal) -> None:
    """Hook after spend was added; alert rows are written here once alerts exist."""
    return None
