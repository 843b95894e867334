"""JSON in and out of the API, exact for money.

In: `loads` parses numbers with a fraction as Decimal (never float), refuses NaN and
Infinity (Python's json accepts them), an object with the same key twice at any depth
(Python's json keeps the last one silently), bodies nested deeper than MAX_DEPTH, and
strings that a database cannot store (NUL, lone surrogates).

Out: `dumps` writes a Decimal as its exact decimal text, as a JSON *number* token
(0.000000150000 → 0.00000015), so money is never rounded through a float on the
server. A client that parses numbers into doubles still rounds; that is its choice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from ninja.parser import Parser
from ninja.renderers import BaseRenderer
from pydantic import BaseModel

from ..base.errors import InvalidInput, InvalidJSON

MAX_DEPTH = 64
CONTENT_TYPE = "application/json; charset=utf-8"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise InvalidJSON(f"the key {duplicate!r} appears twice in one JSON object: give each field once")
    return obj


def loads(body: bytes | str) -> Any:
    """Parse a request body strictly; raise InvalidJSON, or InvalidInput for text no column can hold."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        value = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_object)
    except RecursionError:
        raise InvalidJSON(f"the JSON body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    # Decoded UTF-8 holds no lone surrogate and json refuses a raw NUL (a control character) in a
    # string: either can only come from a \u escape, so without one the strings need no walk.
    check_tree(value, strings=not isinstance(body, bytes) or _RISKY_ESCAPE.search(text) is not None)
    return value


# \u0000 or a surrogate's \uD800-\uDFFF (an escaped backslash before "u" only costs the full check).
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def check_string(text: str, what: str = "a string") -> str:
    if "\x00" in text:
        raise InvalidInput(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must be valid Unicode (no lone surrogates)") from None
    return text


def check_tree(value: Any, *, strings: bool = True) -> None:
    """Walk a parsed body one level at a time, without recursion: depth, and strings unless told they are safe."""
    level = [value]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            raise InvalidJSON(f"the JSON body is nested more than {MAX_DEPTH} levels deep")
        below: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                if strings:
                    for key in node:
                        check_string(key, "a JSON key")
                below += node.values()
            elif isinstance(node, list):
                below += node
            elif strings and isinstance(node, str):
                check_string(node, "a JSON string")
        level = below
        depth += 1


# --- output -------------------------------------------------------------------------------------


def decimal_text(amount: Decimal) -> str:
    """A finite Decimal as a JSON number token, exact, without exponent or trailing zeros."""
    if not amount.is_finite():
        raise ValueError(f"{amount} cannot be written as a JSON number")
    if not -40 <= amount.adjusted() <= 40:
        # Exponent form (valid JSON, still exact): "f" would expand 1E+100000000 into a huge string.
        return str(amount.normalize()).replace("E", "e")
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def _scalar(value: Any) -> str | None:
    """The JSON token of a scalar, or None for containers."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as a JSON number")
        return float.__repr__(value)
    if isinstance(value, datetime):
        return encode_basestring(value.isoformat().replace("+00:00", "Z"))
    if isinstance(value, (date, time)):
        return encode_basestring(value.isoformat())
    if isinstance(value, UUID):
        return encode_basestring(str(value))
    return None


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Serialise API data (dicts, lists, str, int, Decimal, datetimes, pydantic models)."""
    out: list[str] = []
    write = out.append

    def emit(node: Any, depth: int) -> None:
        if depth > MAX_DEPTH * 2:
            raise ValueError("data nested too deeply to write as JSON")
        token = _scalar(node)
        if token is not None:
            write(token)
            return
        if isinstance(node, BaseModel):
            node = node.model_dump()
        if isinstance(node, Mapping):
            items = sorted(node.items(), key=lambda kv: str(kv[0])) if sort_keys else node.items()
            write("{")
            for index, (key, item) in enumerate(items):
                if index:
                    write(",")
                write(encode_basestring(key if isinstance(key, str) else str(key)))
                write(":")
                emit(item, depth + 1)
            write("}")
        elif isinstance(node, (list, tuple, set, frozenset)):
            write("[")
            for index, item in enumerate(node):
                if index:
                    write(",")
                emit(item, depth + 1)
            write("]")
        else:
            raise TypeError(f"{type(node).__name__} is not JSON serialisable")

    emit(value, 0)
    return "".join(out)


class StrictJSONParser(Parser):
    """ninja's body parser, with `loads` above."""

    def parse_body(self, request: HttpRequest) -> Any:
        return loads(request.body)


class ExactJSONRenderer(BaseRenderer):
    """ninja's renderer, with `dumps` above (Decimal as an exact number)."""

    media_type = "application/json"
    charset = "utf-8"

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> Any:
        return dumps(data)
