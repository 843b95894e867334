"""Where spend is heading: the one forecast method, shared by the overview (the project's period)
and every limit (its window).

Linear from the period's start: what was used so far, at the same average rate until the
period's end, `used × (elapsed + left) / elapsed`. The elapsed time counts as at least an hour
(a twenty-fourth of the period for periods shorter than a day), so that the first minutes of a
period do not give wild rates. A period without an end (a lifetime limit, a cap that never
resets) has no forecast.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from ..base.money import MONEY_PLACES

FIRST_HOUR = Decimal(3600)
ZERO = Decimal(0)


def seconds(delta: timedelta) -> Decimal:
    """A duration in seconds, exactly (microseconds included)."""
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def elapsed_seconds(start: datetime, end: datetime | None, at: datetime) -> Decimal:
    """Seconds since the period's start, at least an hour (or a twenty-fourth of a shorter period)."""
    floor = FIRST_HOUR if end is None else min(FIRST_HOUR, seconds(end - start) / 24)
    return max(seconds(at - start), floor)


def projected(used: Decimal, start: datetime, end: datetime | None, at: datetime) -> Decimal | None:
    """What will be used at the period's end at the average rate so far (12 places); None without an end."""
    if end is None:
        return None
    elapsed = elapsed_seconds(start, end, at)
    left = max(seconds(end - at), ZERO)
    return (used * (elapsed + left) / elapsed).quantize(MONEY_PLACES)
