"""JSON shapes of the native API (pydantic/ninja schemas), in and out.

Each output shape is built from the domain object, one way per resource (`from_attributes`, or the
`<resource>_out` function beside the class): the API, an idempotent replay and (alerts) the
webhook use the same class.

Inputs are strict about types: money and token counts are JSON numbers (a string
"10" is a validation error, as is true), money is finite and non-negative, and an
unknown field is an error (a typo must not silently change what is recorded).
Money comes out as an exact JSON number (see budgets.domain.codec).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, Union

from django.utils.timezone import now as utcnow
from ninja import Schema
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from ..base.errors import InvalidInput
from ..base.fields import money_bound
from ..base.money import to_money, to_tokens
from ..base.validation import (
    IDEMPOTENCY_KEY_MAX,
    IDENTIFIER_PATTERN,
    MAX_FALLBACK_MODELS,
    MAX_FALLBACKS,
    MAX_TAGS,
    MODEL_NAME_MAX,
    NAME_PATTERN,
    TAG_PATTERN,
    USER_ID_MAX,
    USER_ID_PATTERN,
    validate_idempotency_key,
    validate_model,
    validate_short_identifier,
    validate_tags,
    validate_user_id,
)
from ..domain import periods
from ..models import CostEvent, UserBudget
from ..selectors.limits import LimitState
from ..services.alerts import AlertFields, LimitRequestFields
from ..services.costs import CostRecorded, exceeded_scope
from ..services.grants import MAX_PRIORITY
from ..services.limit_raises import MAX_WINDOWS
from ..services.limit_requests import MAX_REASON
from ..services.reservations import MAX_TTL_SECONDS, Settled

PRICE_LIMIT = Decimal(1)  # dollars per token: far above any real price


def _amount(value: Any, info: ValidationInfo, *, exact: bool) -> Decimal:
    if isinstance(value, str):
        raise PydanticCustomError("money", "must be a JSON number, not a string")
    field = info.field_name or "amount"
    try:
        return to_money(value, field, exact=exact)
    except InvalidInput as exc:
        raise PydanticCustomError("money", exc.message.removeprefix(f"{field} ")) from None


def _money(value: Any, info: ValidationInfo) -> Decimal:
    """A budget: refused if the 12 places money keeps would change it (money.to_money)."""
    return _amount(value, info, exact=True)


def _cost(value: Any, info: ValidationInfo) -> Decimal:
    """A cost (float arithmetic in the caller adds places): rounded to 12 places, refused if that gives $0."""
    return _amount(value, info, exact=False)


def _price(value: Any, info: ValidationInfo) -> Decimal:
    price = _cost(value, info)
    if price >= PRICE_LIMIT:
        raise PydanticCustomError("money", "a price per token must be below $1")
    return price


def _tokens(value: Any, info: ValidationInfo) -> int:
    field = info.field_name or "tokens"
    try:
        return to_tokens(value, field)
    except InvalidInput as exc:
        raise PydanticCustomError("tokens", exc.message.removeprefix(f"{field} ")) from None


def _days(value: Any, info: ValidationInfo) -> int:
    days = _tokens(value, info)
    if not 1 <= days <= periods.MAX_DAYS:
        raise PydanticCustomError("days", f"must be a whole number of days from 1 to {periods.MAX_DAYS}")
    return days


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string", "must be a string")
    return value


def _in_utc(at: datetime) -> datetime:
    """An aware time in UTC: PostgreSQL refuses an offset past ±15:59, which ISO 8601 allows (+17:44)."""
    if at.tzinfo is None:
        return at
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime", "is out of range once in UTC") from None


def _user_id(value: Any) -> str:
    try:
        return validate_user_id(value)
    except InvalidInput as exc:
        raise PydanticCustomError("user_id", exc.message.removeprefix("user ")) from None


def _idempotency_key(value: Any) -> str | None:
    try:
        return validate_idempotency_key(value)
    except InvalidInput as exc:
        raise PydanticCustomError("idempotency_key", exc.message.removeprefix("Idempotency-Key ")) from None


def _tags(value: Any) -> tuple[str, ...]:
    try:
        return validate_tags(value)
    except InvalidInput as exc:
        raise PydanticCustomError("tags", exc.message) from None


def _model(value: Any) -> str:
    try:
        return validate_model(value)
    except InvalidInput as exc:
        raise PydanticCustomError("model", exc.message.removeprefix("model ")) from None


# A bare number ("0.5", "1700000000") is not a time: pydantic would read it as Unix seconds.
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _timestamp(value: Any) -> Any:
    if not isinstance(value, str | datetime) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise PydanticCustomError("datetime", "must be an ISO 8601 date-time, e.g. 2026-01-31T00:00:00Z")
    return value


# A JSON number of dollars in, an exact JSON number out. The schemas carry the bounds the
# validators enforce, so that every request the schema allows is one the API accepts.
Money = Annotated[Decimal, BeforeValidator(_money),
                  WithJsonSchema({"type": "number", "minimum": 0, **money_bound(), "multipleOf": 1e-12,
                                  "description": "Dollars, at most 12 decimal places."})]
# Not in (0, 5e-13]: what rounds to $0 at 12 places although it is not 0.
_NOT_BELOW_PRECISION = {"not": {"exclusiveMinimum": 0, "maximum": 5e-13}}
Cost = Annotated[Decimal, BeforeValidator(_cost),
                 WithJsonSchema({"type": "number", "minimum": 0, **money_bound(), **_NOT_BELOW_PRECISION,
                                 "description": "Dollars, rounded to 12 decimal places; not 0 < cost ≤ 5e-13."})]
Price = Annotated[Decimal, BeforeValidator(_price),
                  WithJsonSchema({"type": "number", "minimum": 0, "exclusiveMaximum": int(PRICE_LIMIT),
                                  **_NOT_BELOW_PRECISION})]
Tokens = Annotated[int, BeforeValidator(_tokens), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 10**12})]
Days = Annotated[int, BeforeValidator(_days),
                 WithJsonSchema({"type": "integer", "minimum": 1, "maximum": periods.MAX_DAYS})]
# Text the codec accepts: no NUL (budgets.domain.codec.check_string).
Text = Annotated[str, BeforeValidator(_text), WithJsonSchema({"type": "string", "pattern": "^[^\\u0000]*$"})]
# A model name: the one rule of budgets.base.validation.validate_model.
ModelName = Annotated[str, BeforeValidator(_model),
                      WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MODEL_NAME_MAX,
                                      "pattern": NAME_PATTERN})]
USER_ID_SCHEMA = {
    "type": "string", "minLength": 1, "maxLength": USER_ID_MAX, "pattern": USER_ID_PATTERN,
    "description": "1..255 characters, not blank, no control or format characters (newline, tab, U+202E, "
                   "zero-width), no '.' or '..' path segments.",
}
# A user id in a path or a query: the one rule of budgets.base.validation.validate_user_id.
UserId = Annotated[str, BeforeValidator(_user_id), WithJsonSchema(USER_ID_SCHEMA)]


def _identifier(value: Any) -> str:
    try:
        return validate_short_identifier(value, "it")
    except InvalidInput as exc:
        raise PydanticCustomError("identifier", exc.message.removeprefix("it ")) from None


IDENTIFIER_SCHEMA = {"type": "string", "pattern": IDENTIFIER_PATTERN,
                     "description": "1..64 characters: letters, digits, _ . : -"}
# A team name or a tag: the one rule of budgets.base.validation.validate_short_identifier.
Identifier = Annotated[str, BeforeValidator(_identifier), WithJsonSchema(IDENTIFIER_SCHEMA)]
_TAG = IDENTIFIER_PATTERN.strip("^$")
TAG_LIST_PATTERN = f"^{_TAG}(,{_TAG}){{0,9}}$"


def _tag_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str) or not re.fullmatch(TAG_LIST_PATTERN, value):
        raise PydanticCustomError("tags", "must be 1 to 10 tags separated by commas, each 1 to 64 letters, digits "
                                          "or _ . : -")
    return tuple(value.split(","))


# ?tags=a,b: up to 10 tags, each a short identifier.
TagList = Annotated[tuple[str, ...], BeforeValidator(_tag_list),
                    WithJsonSchema({"type": "string", "pattern": TAG_LIST_PATTERN,
                                    "description": "Up to 10 tags separated by commas."})]

IdempotencyKey = Annotated[str, BeforeValidator(_idempotency_key),
                           WithJsonSchema({"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX})]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp), AfterValidator(_in_utc)]
MoneyOut = Annotated[Decimal, WithJsonSchema({"type": "number"})]
Scope = Literal["user", "project"]
LimitScope = Literal["project", "team", "user", "key", "tag"]
LimitUnit = Literal["usd", "tokens", "requests"]
LimitWindow = Literal["hour", "day", "week", "month", "year", "lifetime"]
LimitMode = Literal["hard", "soft"]
# A call's tags: its tag limits apply, and the ledger keeps them (budgets.base.validation.validate_tags).
Tags = Annotated[tuple[str, ...], BeforeValidator(_tags),
                 WithJsonSchema({"type": "array", "maxItems": MAX_TAGS,
                                 "items": {"type": "string", "pattern": TAG_PATTERN},
                                 "description": "Up to 10 tags (letters, digits, _ . : -); their limits apply."})]
DurationName = Literal["none", "daily", "weekly", "monthly", "yearly", "days"]


TtlSeconds = Annotated[int, BeforeValidator(_tokens),
                       WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS})]

# Free-form JSON (chat messages, a completion object), as budgets.domain.codec reads it: no NUL in a
# string or a key. Declared for the OpenAPI document; the value is passed on as parsed.
_NoNul = Annotated[str, StringConstraints(pattern="^[^\\u0000]*$")]
JSONValue = TypeAliasType(  # type: ignore[misc]
    "JSONValue",
    Union[_NoNul, int, float, bool, list["JSONValue"], dict[_NoNul, "JSONValue"], None],  # type: ignore[misc]  # noqa: UP007
)


def _list_of_objects(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PydanticCustomError("messages", "must be a list of {role, content} objects")
    return value


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("object", "must be an object")
    return value


# More fields, any JSON; keys without NUL (pydantic would leave the keys of the extras unchecked).
_FREE_FORM = ConfigDict(extra="allow", json_schema_extra={"propertyNames": {"pattern": "^[^\\u0000]*$"}})


class PromptTokensDetails(BaseModel):
    model_config = _FREE_FORM
    __pydantic_extra__: dict[str, JSONValue]
    cached_tokens: Tokens | None = None


class OpenAIUsage(BaseModel):
    """OpenAI's usage: prompt_tokens (cached ones included), completion_tokens."""

    model_config = _FREE_FORM
    __pydantic_extra__: dict[str, JSONValue]
    prompt_tokens: Tokens
    completion_tokens: Tokens | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_creation_input_tokens: Tokens | None = None


class AnthropicUsage(BaseModel):
    """Anthropic's usage: input_tokens (cache reads not included), output_tokens."""

    model_config = _FREE_FORM
    __pydantic_extra__: dict[str, JSONValue]
    prompt_tokens: None = None
    input_tokens: Tokens
    output_tokens: Tokens | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_creation_input_tokens: Tokens | None = None


class CompletionIn(BaseModel):
    """What is read of a completion object: its model and usage (budgets.domain.usage.usage_from_completion)."""

    model_config = _FREE_FORM
    __pydantic_extra__: dict[str, JSONValue]
    model: ModelName
    usage: OpenAIUsage | AnthropicUsage


Messages = Annotated[list[dict[str, Any]],
                     PlainValidator(_list_of_objects, json_schema_input_type=list[dict[_NoNul, JSONValue]])]
Completion = Annotated[dict[str, Any], PlainValidator(_object, json_schema_input_type=CompletionIn)]


class Form(NamedTuple):
    """One form of a body: fields it needs (not null), fields it may have, and at least one of `any_of`."""

    title: str
    required: Sequence[str]
    optional: Sequence[str] = ()
    any_of: Sequence[str] = ()
    overrides: dict[str, dict[str, Any]] = {}  # noqa: RUF012


EVERY_FORM = ("tags",)  # fields every form of a body may have


def forms(*choices: Form) -> Callable[[dict[str, Any], Any], None]:
    """The OpenAPI schema of a body with mutually exclusive forms: `oneOf`, one branch per form.

    Each branch lists every field: those of the form with their schema, the others as null only
    (null means "not given"), and no other field. The code (api/requests.py) refuses what no
    branch matches with a message that names the fields; this says the same to a client.
    """

    def extra(schema: dict[str, Any], cls: Any) -> None:
        fields = schema.pop("properties")
        schema.pop("required", None)
        schema.pop("additionalProperties", None)
        branches = []
        for form in choices:
            properties = {}
            for name, field_schema in fields.items():
                if name in form.required:
                    properties[name] = {**_not_null(field_schema), **form.overrides.get(name, {})}
                elif name in form.optional or name in form.any_of or name in EVERY_FORM:
                    properties[name] = {**field_schema, **form.overrides.get(name, {})}
                else:
                    properties[name] = {"type": "null"}
            branch: dict[str, Any] = {"title": form.title, "type": "object", "properties": properties,
                                      "required": list(form.required), "additionalProperties": False}
            if form.any_of:
                branch["anyOf"] = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                                   for name in form.any_of]
            branches.append(branch)
        schema["oneOf"] = branches

    return extra


def _not_null(field_schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` → X (the field's description kept)."""
    options = [option for option in field_schema.get("anyOf", []) if option != {"type": "null"}]
    if len(options) != 1:
        return field_schema
    rest = {key: value for key, value in field_schema.items() if key not in ("anyOf", "default")}
    return {**options[0], **rest}


def finish_openapi(node: Any) -> Any:
    """The document as the API reads JSON: keys that pydantic writes as `patternProperties` are
    `propertyNames` (a key outside the pattern is refused, not merely left unchecked)."""
    if isinstance(node, list):
        return [finish_openapi(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: finish_openapi(value) for key, value in node.items()}
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1 and "properties" not in node:
        (pattern, value_schema), = patterns.items()
        del node["patternProperties"]
        node.update(propertyNames={"pattern": pattern}, additionalProperties=value_schema)
    return node


class StrictIn(Schema):
    model_config = ConfigDict(extra="forbid")


# --- inputs -------------------------------------------------------------------------------------


class BudgetIn(StrictIn):
    """A budget; with duration "days", duration_days is the period (ignored with any other duration)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        Form("every N days", required=("total_budget", "duration", "duration_days"), optional=("team",),
             overrides={"duration": {"const": "days"}}),
        Form("a calendar period", required=("total_budget",), optional=("duration", "duration_days", "team"),
             overrides={"duration": {"anyOf": [{"enum": ["none", "daily", "weekly", "monthly", "yearly"]},
                                               {"type": "null"}]}}),
    ))

    total_budget: Money
    duration: DurationName | None = None
    duration_days: Days | None = Field(None, description='Only with duration "days": the period length.')
    team: Identifier | None = Field(None, description="The user's team (it must exist); null: in no team; "
                                                      "left out: the team stays.")


_PRICES = ("input_cost_per_token", "output_cost_per_token")
_TOKEN_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens")


def _priced(title: str, required: Sequence[str], optional: Sequence[str] = (), any_of: Sequence[str] = (),
            *, cost: bool = True) -> list[Form]:
    """A usage form priced from the table, with a `cost`, or with both per-token prices."""
    choices = [Form(f"{title}, priced from the table", required, optional, any_of),
               Form(f"{title}, with per-token prices", (*required, *_PRICES), optional, any_of)]
    if cost:
        choices.append(Form(f"{title}, with its cost", (*required, "cost"), optional, any_of))
    return choices


class CostIn(StrictIn):
    """One of: completion; model + input_text + output_text; model + token counts; model + cost."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        *_priced("a completion", ("completion",)),
        *_priced("texts", ("model", "input_text", "output_text")),
        *_priced("token counts", ("model",), any_of=_TOKEN_COUNTS),
        Form("a cost", ("model", "cost")),
    ))

    completion: Completion | None = Field(
        None, description="An OpenAI/LiteLLM-style response: its `model` and `usage` are read."
    )
    model: ModelName | None = None
    input_text: Text | None = None
    output_text: Text | None = None
    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    cached_tokens: Tokens | None = None
    cache_creation_tokens: Tokens | None = None
    cost: Cost | None = Field(None, description="The call's cost in dollars; overrides the price table.")
    input_cost_per_token: Price | None = None
    output_cost_per_token: Price | None = None
    tags: Tags | None = None


class MessagesIn(StrictIn):
    model: ModelName
    messages: Messages


class CheckIn(StrictIn):
    """Either model + messages (optional max_tokens), or estimated_cost."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        Form("messages", ("model", "messages"), ("max_tokens",)),
        Form("an estimated cost", ("estimated_cost",)),
    ))

    model: ModelName | None = None
    messages: Messages | None = None
    max_tokens: Tokens | None = Field(None, description="Completion tokens to reserve, at the output price.")
    estimated_cost: Cost | None = None
    tags: Tags | None = None


class QuoteIn(StrictIn):
    """Either model + prompt_tokens + completion_tokens, or model + messages (+ output_text)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        *_priced("token counts", ("model",), ("cached_tokens", "cache_creation_tokens"),
                 ("prompt_tokens", "completion_tokens"), cost=False),
        *_priced("messages", ("model", "messages"), ("output_text",), cost=False),
    ))

    model: ModelName
    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    cached_tokens: Tokens | None = None
    cache_creation_tokens: Tokens | None = None
    messages: Messages | None = None
    output_text: Text | None = None
    input_cost_per_token: Price | None = None
    output_cost_per_token: Price | None = None


# --- outputs ------------------------------------------------------------------------------------


class UserOut(Schema):
    """A user's budget: built by `user_out` below, the one way to answer with a user."""

    user: str
    total_budget: MoneyOut
    duration: DurationName
    duration_days: int | None = Field(description='Period length for "days"; LiteLLM day count otherwise.')
    current_cost: MoneyOut
    model_cost: dict[str, MoneyOut]
    held: MoneyOut = Field(description="Open reservations' holds.")
    remaining: MoneyOut = Field(description="Budget left in this period (budget − spend − held), never below 0.")
    budget_exceeded: bool
    exceeded_scope: Scope | None = Field(description="Which budget is used up: the user's or the project's.")
    period_start: datetime
    next_reset_at: datetime | None
    created_at: datetime
    updated_at: datetime


def user_out(budget: UserBudget, model_costs: dict[str, Decimal]) -> UserOut:
    """A user's answer from the budget (`budget.project` holding the project's figures) and its spend per model."""
    scope = exceeded_scope(budget, budget.project)
    # Built, not validated: every value is already the field's type (the hot path's answer; ninja's
    # validation of a model from attributes cost more than the record's SQL took to send).
    return UserOut.model_construct(
        user=budget.user_id, total_budget=budget.total_budget, duration=budget.duration,  # type: ignore[arg-type]
        duration_days=budget.duration_days, current_cost=budget.current_spend, model_cost=model_costs,
        held=budget.held, remaining=max(budget.remaining, Decimal(0)), budget_exceeded=scope is not None,
        exceeded_scope=scope, period_start=budget.period_start,  # type: ignore[arg-type]
        next_reset_at=budget.next_reset_at, created_at=budget.created_at, updated_at=budget.updated_at,
    )


class UserPage(Schema):
    items: list[UserOut]
    total: int
    limit: int
    offset: int


class EventOut(Schema):
    """A ledger event, validated from the CostEvent (`EventOut.model_validate(event)`)."""

    id: int
    user: str = Field(validation_alias=AliasChoices("user", "user_id"))
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    cost: MoneyOut
    source: str
    idempotency_key: str | None
    created_at: datetime


class EventPage(Schema):
    items: list[EventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null at the end.")


def event_out(event: CostEvent) -> EventOut:
    """A ledger event's answer, built from the row's own values (EventOut.model_validate(event) checks them)."""
    return EventOut.model_construct(
        id=event.pk, user=event.user_id, model=event.model, prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens, cached_tokens=event.cached_tokens,
        cache_creation_tokens=event.cache_creation_tokens, cost=event.cost, source=event.source,
        idempotency_key=event.idempotency_key, created_at=event.created_at,
    )


class CostOut(Schema):
    cost: MoneyOut
    event: EventOut
    user: UserOut
    budget_exceeded: bool
    exceeded_scope: Scope | None


def cost_out(recorded: CostRecorded) -> CostOut:
    """A recorded cost's answer, from what services.cost_record returned (the first figures, on a retry)."""
    return CostOut.model_construct(
        cost=recorded.event.cost, event=event_out(recorded.event),
        user=user_out(recorded.budget, recorded.model_costs), budget_exceeded=recorded.budget_exceeded,
        exceeded_scope=recorded.exceeded,  # type: ignore[arg-type]
    )


class ProjectedCostOut(Schema):
    model: str
    prompt_tokens: int
    prompt_cost: MoneyOut
    current_cost: MoneyOut
    projected_cost: MoneyOut


class RolloverOut(Schema):
    max: MoneyOut = Field(description="The most of a window's unused part that becomes a grant.")


class LimitOut(Schema):
    """A limit with its figures, validated from a selectors.limits.LimitState (the user budget and the
    project cap too: their `id` is null)."""

    id: int | None = Field(description="null for the user's budget and the project's cap (their own endpoints).")
    scope: LimitScope
    subject: str | None = Field(description="null for a project limit.")
    model: str | None
    unit: LimitUnit
    window: str = Field(description="hour, day, week, month, year, lifetime (or days: an every-N-days budget).")
    mode: LimitMode
    limit: MoneyOut
    used: MoneyOut = Field(description="Used in this window: dollars, tokens or requests.")
    held: MoneyOut = Field(description="Held by open reservations.")
    remaining: MoneyOut = Field(description="limit + granted + grants − used − held, never below 0.")
    resets_at: datetime | None = Field(description="When the window ends; null for lifetime.")
    forecast: MoneyOut | None = Field(
        None, description="Usage forecast at the window's end: linear from the window's start at the rate so far "
                          "(the elapsed time counts as at least an hour); null for a lifetime window.")
    thresholds: list[int] | None = Field(
        None, description="The limit's own alert thresholds (percent); null: the project's alert_thresholds.")
    raised: MoneyOut = Field(Decimal(0), description="The active temporary raises' sum, included in `limit`.")
    raises_end_at: datetime | None = Field(None, description="When the first active raise ends; null: none.")
    granted: MoneyOut = Field(Decimal(0), description="What grants paid of `used` in this window (a user's or a "
                                                      "team's dollar limits on every model).")
    grants: MoneyOut = Field(Decimal(0), description="What the subject's active grants have left, room beyond "
                                                     "`limit` (0 for a limit grants do not extend).",
                             validation_alias="grant_room")
    grace_percent: int | None = Field(None, description="A hard limit refuses only past limit × (1 + grace/100).")
    rollover: RolloverOut | None = Field(None, description="At each reset the unused part, up to max, becomes a "
                                                           "grant until the next window's end.")

    @staticmethod
    def resolve_rollover(state: Any) -> dict[str, Decimal] | None:
        value = getattr(state, "rollover_max", None)
        return None if value is None else {"max": value}

    @staticmethod
    def resolve_subject(state: Any) -> str | None:
        return state.subject or None

    @staticmethod
    def resolve_forecast(state: Any) -> Decimal | None:
        forecast = getattr(state, "forecast", None)  # LimitState.forecast (ninja hands the state wrapped)
        return forecast() if callable(forecast) else forecast

    @staticmethod
    def resolve_thresholds(state: Any) -> list[int] | None:
        thresholds = getattr(state, "thresholds", None)
        return None if thresholds is None else list(thresholds)


class LimitRefusedOut(LimitOut):
    """The limit a refusal names (`error.limit`, a check's `limit`), with what the call asked."""

    requested: MoneyOut | None = Field(None, description="What the call asked, in the limit's unit.")


def limit_out(state: LimitState, requested: Decimal | None = None) -> LimitRefusedOut:
    return LimitRefusedOut.model_validate(state).model_copy(update={"requested": requested})


class FallbackOut(Schema):
    """A model to retry a refused call with (services.fallbacks.Fallback): the first of the project's
    fallbacks for the call's model whose worst case, re-priced for it, fits every applicable limit now."""

    model: str
    worst_case: MoneyOut = Field(description="The call's worst case in dollars at this model's price "
                                             "(the same token counts).")


def fallback_json(fallback: Any) -> dict[str, Any] | None:
    """`error.fallback` and a check's `fallback`: {"model", "worst_case"}, or None."""
    return None if fallback is None else FallbackOut.model_validate(fallback).model_dump()


class CheckOut(Schema):
    allowed: bool
    reason: str | None
    remaining: MoneyOut = Field(description="Room left under the tighter of the user's and the project's budget.")
    scope: LimitScope | None = Field(description="The level of the limit without room (null: allowed).")
    estimated_cost: MoneyOut
    limit: LimitRefusedOut | None = Field(None, description="The first hard limit without room for the call.")
    fallback: FallbackOut | None = Field(None, description="Not allowed: the first fallback model that fits "
                                                           "(the project's fallbacks), else null.")


class QuoteOut(Schema):
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    prompt_cost: MoneyOut
    completion_cost: MoneyOut
    cost: MoneyOut


class PriceOut(Schema):
    """A model's price as recording charges it, in dollars per token; `model` is the table's name for it."""

    model: str
    provider: str
    mode: str
    input_cost_per_token: MoneyOut = Field(validation_alias="input")
    output_cost_per_token: MoneyOut = Field(validation_alias="output")
    cache_read_input_token_cost: MoneyOut | None = Field(
        validation_alias="cache_read", description="Per cached prompt token; null: the input price.")
    cache_creation_input_token_cost: MoneyOut | None = Field(
        validation_alias="cache_creation", description="Per token written to the cache; null: the input price.")


class AlertOut(AlertFields):
    """An alert row as the API lists it: the webhook's fields (services.alerts.AlertFields), its id and delivery."""

    id: int
    delivered_at: datetime | None


class AlertPage(Schema):
    items: list[AlertOut]
    total: int
    limit: int
    offset: int


class ErrorBody(Schema):
    type: str
    message: str
    scope: LimitScope | None = None
    limit: LimitRefusedOut | None = Field(None, description="budget_exceeded: the limit that has no room.")
    spend: MoneyOut | None = Field(None, description="budget_exceeded: its spend in this period.")
    held: MoneyOut | None = Field(None, description="budget_exceeded: its open reservations.")
    requested: MoneyOut | None = Field(None, description="budget_exceeded: the amount asked for.")
    fallback: FallbackOut | None = Field(None, description="budget_exceeded: the first of the project's fallback "
                                                           "models for the call's model whose worst case fits; "
                                                           "null if none (or the call names no model and tokens).")
    details: list[dict[str, Any]] | None = None


class ErrorOut(Schema):
    error: ErrorBody


# --- reservations -------------------------------------------------------------------------------


class ReservationIn(StrictIn):
    """Either model + messages + max_tokens (the worst case is held), or estimated_cost (model optional)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        Form("the worst case of a call", ("model", "messages", "max_tokens"), ("ttl_seconds",)),
        Form("an estimated cost", ("estimated_cost",), ("model", "ttl_seconds"),
             overrides={"estimated_cost": {"exclusiveMinimum": 0}}),
    ))

    model: ModelName | None = None
    messages: Messages | None = None
    max_tokens: Tokens | None = Field(None, description="The call's max_tokens: held at the output price.")
    estimated_cost: Cost | None = Field(None, description="Dollars to hold, instead of messages + max_tokens.")
    ttl_seconds: TtlSeconds | None = Field(None, description="Seconds until the hold expires: 1 to 86400, default 600.")
    tags: Tags | None = None


ReservationStatus = Literal["open", "settled", "released", "expired"]


class ReservationOut(Schema):
    """A reservation, validated from the Reservation (`ReservationOut.model_validate(reservation)`)."""

    id: int
    user: str = Field(validation_alias=AliasChoices("user", "user_id"))
    model: str | None
    amount: MoneyOut = Field(description="The amount held while open.")
    status: ReservationStatus
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None = Field(description="When it was settled or released.")
    cost: MoneyOut | None = Field(description="The real cost recorded by settling.",
                                  validation_alias=AliasChoices("cost", "settled_cost"))


class SettleOut(Schema):
    reservation: ReservationOut
    cost: MoneyOut
    event: EventOut
    user: UserOut
    over_hold: bool = Field(description="The real cost was more than the hold (recorded anyway).")


def settle_out(settled: Settled) -> SettleOut:
    """A settle's answer, from what services.reservation_settle returned (the first figures, on a retry)."""
    recorded, reservation = settled.recorded, settled.reservation
    return SettleOut(
        reservation=ReservationOut.model_validate(reservation), cost=recorded.event.cost,
        event=event_out(recorded.event), user=user_out(recorded.budget, recorded.model_costs),
        over_hold=recorded.event.cost > reservation.amount,
    )


class ReleaseOut(Schema):
    reservation: ReservationOut


# --- limits, teams, tags ----------------------------------------------------------------------


# A limit's amount: dollars (12 places at most) or a whole number of tokens or requests.
LimitAmount = Annotated[Decimal, BeforeValidator(_money),
                        WithJsonSchema({"type": "number", "minimum": 0, **money_bound(), "multipleOf": 1e-12,
                                        "description": "Dollars (12 places at most), or a whole number of "
                                                       "tokens or requests."})]


_LIMIT_OPTIONAL = ("model", "unit", "window", "mode", "thresholds", "grace_percent", "rollover")

# A limit's own alert thresholds: whole percentages (the service checks 1..1000, each once, at most 10).
def _percent(value: Any, info: ValidationInfo) -> int:
    percent = _tokens(value, info)
    if not 1 <= percent <= 1000:
        raise PydanticCustomError("percent", "must be a whole percentage from 1 to 1000")
    return percent


Percent = Annotated[int, BeforeValidator(_percent), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 1000})]
LimitThresholds = Annotated[
    Annotated[list[Percent], Field(max_length=10, json_schema_extra={"uniqueItems": True})] | None,
    Field(description="The limit's own alert thresholds: up to 10 different whole percentages from 1 to 1000 "
                      "(e.g. [50, 90, 100]); null or left out: the project's alert_thresholds."),
]


_NULL_MEANS_NONE = ("thresholds", "grace_percent", "rollover")


def _thresholds_may_be_null(extra: Callable[[dict[str, Any], Any], None]) -> Callable[[dict[str, Any], Any], None]:
    """A PATCH may give only `"thresholds": null` (back to the project's list), `"grace_percent": null` or
    `"rollover": null` (none): given, even as null, each counts."""

    def patched(schema: dict[str, Any], cls: Any) -> None:
        extra(schema, cls)
        for branch in schema["oneOf"]:
            branch["anyOf"] = [{"required": option["required"]} if option["required"][0] in _NULL_MEANS_NONE
                               else option for option in branch.get("anyOf", [])]

    return patched


Grace = Annotated[int | None, Field(None, ge=0, le=100, description=(
    "Whole percent (0–100): a hard limit refuses only past limit × (1 + grace/100); alerts still fire at "
    "100 %. null or 0: none."))]


# Dollars more than 0 (a grant's amount, a rollover's max), 12 places at most.
PositiveAmount = Annotated[Decimal, BeforeValidator(_money),
                           WithJsonSchema({"type": "number", "exclusiveMinimum": 0, **money_bound(),
                                           "multipleOf": 1e-12, "description": "Dollars (12 places at most), more "
                                                                                "than 0."})]


class RolloverIn(StrictIn):
    """A limit's rollover: at each reset the unused part, up to `max` dollars, becomes a grant."""

    max: PositiveAmount


class LimitIn(StrictIn):
    """A new limit: what it counts (scope, subject, model, unit), over which window, how much, hard or soft."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        Form("a project limit", required=("scope", "limit"), optional=_LIMIT_OPTIONAL,
             overrides={"scope": {"const": "project"}}),
        Form("a team, user, API key or tag limit", required=("scope", "subject", "limit"), optional=_LIMIT_OPTIONAL,
             overrides={"scope": {"enum": ["team", "user", "key", "tag"]}, "subject": {"minLength": 1}}),
    ))

    scope: LimitScope
    subject: Text | None = Field(None, description="The team's name, the user id, the API key's name or the "
                                                    "tag; none for a project limit.")
    model: ModelName | None = Field(None, description="Only this model's calls (the price table's name).")
    unit: LimitUnit = "usd"
    window: LimitWindow = "month"
    limit: LimitAmount
    mode: LimitMode = Field("hard", description="hard refuses a call without room; soft only alerts.")
    thresholds: LimitThresholds = None
    grace_percent: Grace = None
    rollover: RolloverIn | None = Field(None, description="Only a dollar limit of a user or a team on every model, "
                                                          "with a window.")


class LimitPatchIn(StrictIn):
    """A limit's new amount, mode or thresholds (another scope, subject, model, unit or window is a new
    limit); `"thresholds": null` gives it the project's list again."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_thresholds_may_be_null(forms(
        Form("a new amount, mode, thresholds, grace or rollover", required=(),
             any_of=("limit", "mode", "thresholds", "grace_percent", "rollover")),
    )))

    limit: LimitAmount | None = None
    mode: LimitMode | None = None
    thresholds: LimitThresholds = None
    grace_percent: Grace = None
    rollover: RolloverIn | None = Field(None, description="null: no rollover.")


class LimitPage(Schema):
    items: list[LimitOut]
    total: int
    limit: int
    offset: int


class UserLimitsOut(Schema):
    """Every limit that applies to a user's calls, the binding one (least room) first."""

    user: str
    team: str | None
    items: list[LimitOut]


class TeamIn(StrictIn):
    members: list[UserId] = Field(max_length=10_000, description="The team's user ids (replaces the list).")


class TeamSummaryOut(Schema):
    name: str
    members: int = Field(description="How many users are in the team.")
    created_at: datetime


class TeamList(Schema):
    items: list[TeamSummaryOut]


class TeamOut(Schema):
    name: str
    members: list[str]
    month_start: date = Field(description="First day of this calendar month in the project's time zone.")
    spend_this_month: MoneyOut = Field(description="What the members spent since month_start (ledger rollups).")
    limits: list[LimitOut]
    created_at: datetime


# --- fallbacks ----------------------------------------------------------------------------------


_MODEL_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MODEL_NAME_MAX, "pattern": NAME_PATTERN}
FallbackList = Annotated[list[ModelName], Field(min_length=1, max_length=MAX_FALLBACKS)]
# Written out whole: pydantic would keep only the keys' pattern (finish_openapi), not their length.
FallbackMap = Annotated[dict[ModelName, FallbackList], Field(max_length=MAX_FALLBACK_MODELS), WithJsonSchema({
    "type": "object", "maxProperties": MAX_FALLBACK_MODELS, "propertyNames": _MODEL_NAME_SCHEMA,
    "additionalProperties": {"type": "array", "minItems": 1, "maxItems": MAX_FALLBACKS, "items": _MODEL_NAME_SCHEMA},
})]


class FallbacksIn(StrictIn):
    """The project's fallbacks, replacing them all: {model: [fallback model, ...]} ({} for none)."""

    fallbacks: FallbackMap = Field(
        description=f"Per model (as calls name it, or the price table's name), 1 to {MAX_FALLBACKS} models to "
                    f"suggest in order when a call of it is refused; not the model itself, none twice.")


class FallbacksOut(Schema):
    """The project's fallbacks (the stored JSON: services.fallbacks.project_fallbacks)."""

    fallbacks: dict[str, list[str]]


# --- temporary raises, limit requests ---------------------------------------------------------


def _windows(value: Any, info: ValidationInfo) -> int:
    count = _tokens(value, info)
    if not 1 <= count <= MAX_WINDOWS:
        raise PydanticCustomError("windows", f"must be a whole number of windows from 1 to {MAX_WINDOWS}")
    return count


Windows = Annotated[int, BeforeValidator(_windows),
                    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_WINDOWS,
                                    "description": "Until the end of the Nth window (the current one is 1)."})]
Reason = Annotated[str, BeforeValidator(_text), StringConstraints(max_length=MAX_REASON),
                   WithJsonSchema({"type": "string", "maxLength": MAX_REASON, "pattern": "^[^\\u0000]*$"})]


class LimitIncreaseIn(StrictIn):
    """A temporary raise: how much more (in the limit's unit), until an instant or for N windows."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=forms(
        Form("until an instant", required=("amount", "expires_at")),
        Form("for N windows", required=("amount", "windows")),
    ))

    amount: LimitAmount
    expires_at: Timestamp | None = Field(None, description="When the raise ends (exclusive), with its UTC offset.")
    windows: Windows | None = None


class LimitIncreaseOut(Schema):
    """A temporary raise of a limit."""

    id: int
    limit_id: int
    amount: MoneyOut
    starts_at: datetime
    ends_at: datetime
    ended_at: datetime | None = Field(description="When it was ended early (DELETE); null otherwise.")
    status: Literal["active", "ended", "expired"] = Field(
        description="active; ended (early, by DELETE); expired (ends_at has passed).")
    actor: str = Field(description="Who raised it, as the audit log names it.")
    request_id: int | None = Field(description="The limit request it approved, if any.")

    @staticmethod
    def resolve_status(increase: Any) -> str:
        if increase.ended_at is not None:
            return "ended"
        return "active" if increase.ends_at > utcnow() else "expired"


class LimitIncreaseList(Schema):
    items: list[LimitIncreaseOut]


class LimitDetailOut(LimitOut):
    """One limit with its active temporary raises (the earliest end first)."""

    increases: list[LimitIncreaseOut] = Field(default_factory=list)


class LimitRequestIn(StrictIn):
    """A request, on a user's behalf, for more room under a limit (the binding one by default)."""

    limit_id: int | None = Field(None, strict=True,
                                 description="A limit that applies to the user; default: the binding one.")
    amount: LimitAmount
    reason: Reason | None = None
    until: Timestamp | None = Field(None, description="When the asked raise would end; null: the approver says.")


class LimitRequestOut(LimitRequestFields):
    """A limit request as the API answers it and its webhook events carry it (services.alerts.LimitRequestFields)."""


# --- grants ------------------------------------------------------------------------------------


def _priority(value: Any, info: ValidationInfo) -> int:
    priority = _tokens(value, info)
    if priority > MAX_PRIORITY:
        raise PydanticCustomError("priority", f"must be a whole number from 0 to {MAX_PRIORITY}")
    return priority


Priority = Annotated[int, BeforeValidator(_priority),
                     WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY})]


class GrantIn(StrictIn):
    """Prepaid dollars for a user or a team, used after the periodic limits are."""

    amount: PositiveAmount
    expires_at: Timestamp | None = Field(None, description="When its rest becomes void; null: never.")
    priority: Priority | None = Field(None, description="Grants are used by priority (lower first), then the "
                                                         "earliest expiry. Default 1.")
    note: Reason | None = None


class GrantOut(Schema):
    """A grant with what it paid and what it has left."""

    id: int
    scope: Literal["user", "team"]
    subject: str = Field(description="The user's id or the team's name.")
    amount: MoneyOut
    used: MoneyOut = Field(description="What it paid (the ledger's GrantUse rows add up to it).")
    remaining: MoneyOut = Field(description="amount − used; 0 once expired or void.")
    priority: int
    expires_at: datetime | None
    status: Literal["active", "used", "expired", "void"] = Field(
        description="active; used (nothing left); expired (its expires_at passed: the rest is void); void (revoked).")
    voided: MoneyOut | None = Field(description="The rest made void at expiry or revocation.")
    source: Literal["manual", "rollover"] = Field(description="manual, or a limit's rollover.")
    limit_id: int | None = Field(description="The limit it rolled over from (source rollover).")
    note: str
    actor: str
    created_at: datetime

    @staticmethod
    def resolve_status(grant: Any) -> str:
        return grant.status_at(utcnow())

    @staticmethod
    def resolve_remaining(grant: Any) -> Decimal:
        return grant.remaining if grant.active_at(utcnow()) else Decimal(0)


class GrantList(Schema):
    items: list[GrantOut]
    remaining: MoneyOut = Field(description="What the active grants have left together.")


class GrantUseOut(Schema):
    event_id: int
    amount: MoneyOut
    created_at: datetime
    user_id: str
    model: str

    @staticmethod
    def resolve_created_at(use: Any) -> datetime:
        return use.event.created_at

    @staticmethod
    def resolve_user_id(use: Any) -> str:
        return use.event.user_id

    @staticmethod
    def resolve_model(use: Any) -> str:
        return use.event.model


class GrantDetailOut(GrantOut):
    """A grant and the ledger rows it paid (newest first, at most 100)."""

    uses: list[GrantUseOut] = Field(default_factory=list)
