"""JSON with exact money: numbers are read as Decimal and Decimals are written as number tokens.

Python's json module writes a Decimal only through float (or not at all); the service
reads every number as a decimal, so the client writes the decimal's own digits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

_string = json.JSONEncoder(ensure_ascii=False).encode


def dumps(value: Any) -> str:
    """Serialise `value`; a Decimal becomes its exact text, a float its shortest repr (what was meant)."""
    parts: list[str] = []
    _write(value, parts, 0)
    return "".join(parts)


def loads(text: str | bytes) -> Any:
    """Parse JSON, numbers with a fraction or an exponent as Decimal."""
    return json.loads(text, parse_float=Decimal)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 64:
        raise ValueError("the body is nested too deeply to send")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot send a non-finite amount ({value})")
        out.append(str(value))  # always a valid JSON number for a finite Decimal, e.g. 1E-7
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot send a non-finite number ({value})")
        out.append(repr(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_string(str(key)))
            out.append(":")
            _write(item, out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"cannot send a {type(value).__name__} as JSON")
