"""MoneyField: a DecimalField that stays exact on SQLite too.

SQLite has no decimal type: Django stores DecimalField there as a float, so
adding $0.15 a thousand times gives 150.000000000003. On SQLite this field
stores an integer count of 10^-12 dollars instead (exact, and summed exactly
by SQL), which caps an amount at about $9.2 million there. PostgreSQL keeps
numeric(24, 12) as usual.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any

from django.conf import settings
from django.db import DataError, models
from django.db.models import Value

from .money import MONEY_MAX
from .money import MONEY_PLACES as PLACES

SCALE = Decimal(10) ** 12  # 1 / PLACES
SQLITE_INTEGER_MAX = 2**63 - 1  # about $9.2 million in units of 10^-12 dollars


@cache
def _default_is_sqlite() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"


def money_bound() -> dict[str, int]:
    """The JSON-schema bound of an amount the default database holds: SQLite's is about $9.2 million."""
    if _default_is_sqlite():
        return {"maximum": int(Decimal(SQLITE_INTEGER_MAX) / SCALE)}
    return {"exclusiveMaximum": int(MONEY_MAX)}


class MoneyField(models.DecimalField):
    description = "An amount of dollars, exact to 12 decimal places"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 24)
        kwargs.setdefault("decimal_places", 12)
        super().__init__(*args, **kwargs)

    def get_internal_type(self) -> str:
        # On SQLite an integer type keeps Django's float converters and NUMERIC casts away from
        # the integer form (and makes Sum() return the exact integer total); elsewhere it is a
        # plain decimal, so aggregates keep their cents. Fields don't see the connection, and
        # money lives in the default database only.
        return "BigIntegerField" if _default_is_sqlite() else "DecimalField"

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "sqlite":
            return "integer"
        return connection.data_types["DecimalField"] % self.db_type_parameters(connection)

    def rel_db_type(self, connection: Any) -> str:
        return self.db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if connection.vendor != "sqlite":
            if value is None or hasattr(value, "resolve_expression"):
                return value
            return connection.ops.adapt_decimalfield_value(self.to_python(value), self.max_digits,
                                                          self.decimal_places)
        if value is None or hasattr(value, "resolve_expression"):
            return value
        units = int((self.to_python(value) * SCALE).to_integral_value(ROUND_HALF_EVEN))
        if not -SQLITE_INTEGER_MAX <= units <= SQLITE_INTEGER_MAX:
            # A database error, before the driver's OverflowError: the transaction stays usable and
            # the API answers it as any out-of-range value (400).
            raise DataError(f"an amount of ${value} is more than SQLite's money column holds")
        return units

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Decimal | None:
        if value is None:
            return None
        if connection.vendor == "sqlite":
            return (Decimal(int(value)) / SCALE).quantize(PLACES)
        return Decimal(value).quantize(PLACES)


def money(amount: Decimal) -> Value:
    """An amount inside an F() expression, converted as the money columns store it."""
    return Value(amount, output_field=MoneyField())
