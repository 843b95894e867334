"""The syntax rules of the input every entry point shares, each written once.

The API's schemas (api/schemas.py), the console's forms (forms.py), the hosted protocol
(api/hosted.py, services/hosted.py) and the seed's Python API all call these; the services
keep the rules of meaning (a budget's room, a reservation's state). Money is in money.py.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from .errors import InvalidInput, Unprocessable

USER_ID_MAX = 255
MODEL_NAME_MAX = 255
IDEMPOTENCY_KEY_MAX = 255
PROJECT_NAME_MAX = 200
THRESHOLD_MIN, THRESHOLD_MAX = 1, 1000

# Characters refused in ids and names: control characters (Cc: NUL, newline, tab, C1 controls),
# format characters (Cf: the bidirectional overrides U+202A-E and isolates U+2066-9, the marks
# U+200E/F, zero-width characters, the BOM), which make one id look like another in the console,
# and the line and paragraph separators U+2028/9.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf"})
_REFUSED_EXTRA = frozenset("\u2028\u2029")


def _is_refused(char: str) -> bool:
    return char in _REFUSED_EXTRA or unicodedata.category(char) in _REFUSED_CATEGORIES


def has_refused_characters(text: str) -> bool:
    """True if `text` holds a control, format (bidirectional, zero-width) or line-separator character."""
    if text.isascii():  # the usual id: printable ASCII has none of them, the other ASCII is Cc
        return not text.isprintable()
    return any(_is_refused(char) for char in text)


def _refused_ranges() -> str:
    """The refused characters as a regular-expression class body (for the OpenAPI patterns)."""
    parts: list[str] = []
    start = previous = -2
    for code in [*range(0xD800), *range(0xE000, 0x110000)]:  # surrogates are never in decoded text
        if not _is_refused(chr(code)):
            continue
        if code != previous + 1:
            if start >= 0:
                parts.append(_range(start, previous))
            start = code
        previous = code
    parts.append(_range(start, previous))
    return "".join(parts)


def _range(start: int, end: int) -> str:
    def char(code: int) -> str:
        # Past the BMP the character itself: "\\U" is no escape in ECMA-262 (OpenAPI's regex dialect).
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return char(start) if start == end else f"{char(start)}-{char(end)}"


REFUSED_CLASS = _refused_ranges()
# A name: no refused character, at least one that is not white space (Python's and ECMA's \s).
NAME_PATTERN = f"^[^{REFUSED_CLASS}]*[^{REFUSED_CLASS}\\s][^{REFUSED_CLASS}]*$"
# A user id also has no "." or ".." path segment.
USER_ID_PATTERN = f"^(?!(?:.*/)?\\.\\.?(?:/|$)){NAME_PATTERN[1:]}"


def validate_user_id(user_id: Any) -> str:
    """The one rule for user ids, so that every id can be addressed in a URL (API and console).

    Refused: blank, over 255 characters, control and format characters (newline, tab, NUL, the
    bidirectional overrides that make the console show another id; they do not survive a URL or a
    log line either), and "." or ".." path segments (clients and browsers resolve "a/../b" to "b",
    so such a user could be created but never opened, edited or deleted).
    """
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("user must be a non-empty string")
    if len(user_id) > USER_ID_MAX:
        raise InvalidInput(f"user must be at most {USER_ID_MAX} characters")
    if has_refused_characters(user_id):
        raise InvalidInput("user must not contain control characters (newline, tab, NUL, ...) or format "
                           "characters (bidirectional overrides such as U+202E, zero-width spaces)")
    if any(segment in (".", "..") for segment in user_id.split("/")):
        raise InvalidInput('user must not contain "." or ".." path segments (e.g. "a/../b")')
    return user_id


def validate_model(model: Any) -> str:
    """A model name: 1..255 characters once stripped, none of them a control or format character."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidInput("model must be a non-empty string")
    if len(model) > MODEL_NAME_MAX:
        raise InvalidInput(f"model must be at most {MODEL_NAME_MAX} characters")
    if has_refused_characters(model):
        raise InvalidInput("model must not contain control characters (newline, tab, CR, ...) or format "
                           "characters (U+202E, zero-width spaces)")
    return model.strip()


MAX_FALLBACKS = 5  # fallback models per model
MAX_FALLBACK_MODELS = 100  # models with fallbacks in a project


def _fallback_name(name: Any, what: str) -> str:
    try:
        return validate_model(name)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc.message}") from None


def validate_fallbacks(fallbacks: Any) -> dict[str, list[str]]:
    """A project's fallbacks: {model: [fallback, ...]}, each name a model name (validate_model, so any
    name: one the price table lacks is skipped when advising), at most MAX_FALLBACKS per model, none
    twice in a list and none the model itself; at most MAX_FALLBACK_MODELS models. Names are stripped.

    The rules a schema cannot say (a self-reference, a repeat once stripped) are Unprocessable (422).
    """
    if not isinstance(fallbacks, dict):
        raise InvalidInput('fallbacks must be an object: {"model": ["fallback model", ...]}')
    if len(fallbacks) > MAX_FALLBACK_MODELS:
        raise InvalidInput(f"fallbacks may name at most {MAX_FALLBACK_MODELS} models")
    clean: dict[str, list[str]] = {}
    for raw_model, raw_list in fallbacks.items():
        model = _fallback_name(raw_model, "a model with fallbacks")
        if model in clean:
            raise Unprocessable(f"fallbacks name the model {model!r} twice")
        if not isinstance(raw_list, list) or not 1 <= len(raw_list) <= MAX_FALLBACKS:
            raise InvalidInput(f"the fallbacks of {model!r} must be a list of 1 to {MAX_FALLBACKS} model names")
        names = [_fallback_name(name, f"a fallback of {model!r}") for name in raw_list]
        if model in names:
            raise Unprocessable(f"{model!r} cannot be its own fallback")
        if len(set(names)) != len(names):
            raise Unprocessable(f"the fallbacks of {model!r} name a model twice")
        clean[model] = names
    return clean


_FALLBACK_ARROW = re.compile(r"\s*(?:→|->|:\s)\s*")


def parse_fallbacks(text: str) -> dict[str, list[str]]:
    """Fallbacks as a person types them, one model a line: "gpt-4o → gpt-4o-mini, gpt-3.5-turbo" (or "->",
    or ": " — a colon and a space: model names such as "…-v1:0" hold a bare colon). Only the lines' form:
    the names and lists are the service's to check (validate_fallbacks)."""
    fallbacks: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = _FALLBACK_ARROW.split(line.strip() + " ", maxsplit=1)
        if len(parts) != 2:
            raise InvalidInput(f"line {number}: write the model, → and its fallbacks separated by commas, "
                               f"e.g. “gpt-4o → gpt-4o-mini”")
        model, rest = parts[0].strip(), [name.strip() for name in parts[1].split(",") if name.strip()]
        if model in fallbacks:
            raise InvalidInput(f"line {number}: {model!r} has fallbacks on an earlier line already")
        fallbacks[model] = rest
    return fallbacks


def fallbacks_text(fallbacks: dict[str, list[str]]) -> str:
    """The fallbacks as parse_fallbacks reads them: one model a line."""
    return "\n".join(f"{model} → {', '.join(names)}" for model, names in fallbacks.items())


def validate_project_name(name: Any) -> str:
    """A project name: 1..200 characters, not blank, no control or format characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > PROJECT_NAME_MAX:
        raise InvalidInput(f"project name must be a non-empty string of at most {PROJECT_NAME_MAX} characters")
    if has_refused_characters(name):
        raise InvalidInput("project name must not contain control characters (newline, tab, ...) or format "
                           "characters (U+202E, zero-width spaces)")
    return name


def validate_idempotency_key(key: str | None) -> str | None:
    """An Idempotency-Key header: absent, or 1..255 characters."""
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise InvalidInput(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
    return key


def validate_alert_thresholds(thresholds: Any) -> list[int]:
    """Alert thresholds: whole percentages from 1 to 1000, sorted, each once."""
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and THRESHOLD_MIN <= t <= THRESHOLD_MAX for t in thresholds
    ):
        raise InvalidInput(f"alert_thresholds must be a list of whole percentages between {THRESHOLD_MIN} "
                           f"and {THRESHOLD_MAX}")
    return sorted(set(thresholds))


LIMIT_THRESHOLDS_MAX = 10


def validate_limit_thresholds(thresholds: Any) -> list[int] | None:
    """A limit's own thresholds: None (the project's list), or at most 10 whole percentages from 1
    to 1000, each once; kept sorted."""
    if thresholds is None:
        return None
    try:
        values = validate_alert_thresholds(thresholds)
    except InvalidInput:
        values = None
    if values is None or len(values) != len(thresholds) or len(values) > LIMIT_THRESHOLDS_MAX:
        raise InvalidInput(f"thresholds must be null (the project's) or a list of at most {LIMIT_THRESHOLDS_MAX} "
                           f"different whole percentages between {THRESHOLD_MIN} and {THRESHOLD_MAX}")
    return values


def parse_alert_thresholds(text: str, *, unique: bool = True) -> list[int]:
    """Thresholds as a person types them ("80, 100%" or "80;100") → validate_alert_thresholds (with
    `unique=False`: as typed, repeats kept, for a check that refuses them)."""
    values = []
    for part in re.split(r"[,;]", text):
        part = part.strip().rstrip("%").strip()
        if not part:
            continue
        try:
            values += validate_alert_thresholds([int(part) if part.isascii() and part.isdigit() else None])
        except InvalidInput:
            raise InvalidInput(f"“{part}” is not a whole percentage between {THRESHOLD_MIN} and "
                               f"{THRESHOLD_MAX}.") from None
    return validate_alert_thresholds(values) if unique else values


def url_path_is_utf8(path_info: str) -> bool:
    """Whether a WSGI PATH_INFO (the URL's bytes, percent-decoded, as latin-1 text) is UTF-8.

    Django turns bytes that are not UTF-8 (`%FF`) back into the literal text "%FF", so an id
    sent with a broken escape would otherwise be read as another id.
    """
    try:
        path_info.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return False
    return True


IDENTIFIER_MAX = 64
IDENTIFIER_PATTERN = f"^[A-Za-z0-9_.:-]{{1,{IDENTIFIER_MAX}}}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def validate_short_identifier(value: Any, what: str) -> str:
    """A tag or a team name: 1..64 characters, each a letter, a digit or one of `_ . : -`."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidInput(f"{what} must be 1 to {IDENTIFIER_MAX} characters, each a letter, a digit or one of "
                           f"_ . : - (got {value!r})")
    return value


# A call's tags: short identifiers, at most MAX_TAGS of them.
TAG_PATTERN = IDENTIFIER_PATTERN
MAX_TAGS = 10


def validate_tag(value: Any) -> str:
    """One tag: 1-64 letters, digits, `_ . : -` (ASCII)."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidInput("a tag is 1 to 64 letters, digits or _ . : - (e.g. \"summarizer\")")
    return value


def validate_tags(value: Any) -> tuple[str, ...]:
    """A call's tags: a list of at most MAX_TAGS tags, each once (repeats are dropped, order kept)."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > MAX_TAGS:
        raise InvalidInput(f"tags must be a list of at most {MAX_TAGS} tags")
    return tuple(dict.fromkeys(validate_tag(tag) for tag in value))
