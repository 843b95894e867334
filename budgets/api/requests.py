"""What a cost request means: which form it is, its usage, its cost. No writes.

Shared by POST /users/{user}/costs, /cost-quote and /check, so the forms and the
pricing rules (price table, explicit cost, explicit per-token prices) live once.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import pydantic
from django.http import HttpRequest
from ninja.errors import ValidationError

from ..base.errors import InvalidInput
from ..domain import pricing, tokens
from ..domain.codec import dumps, loads
from ..domain.usage import Usage, prompt_usage, usage_from_completion, usage_from_texts, usage_of_counts
from ..selectors.budgets import prompt_cost as prompt_cost_selector
from .schemas import CheckIn, CostIn, QuoteIn, ReservationIn

BodyT = TypeVar("BodyT", bound=pydantic.BaseModel)
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens")


def _given(body: Any, *names: str) -> list[str]:
    return [name for name in names if getattr(body, name) is not None]


def explicit_price(model: str, body: CostIn | QuoteIn) -> pricing.Price | None:
    """Per-token prices from the body (both or neither), for a model the table lacks."""
    given = _given(body, "input_cost_per_token", "output_cost_per_token")
    if not given:
        return None
    if len(given) == 1:
        raise InvalidInput("input_cost_per_token and output_cost_per_token must be given together")
    assert body.input_cost_per_token is not None and body.output_cost_per_token is not None  # both given
    return pricing.Price(model=model, input=body.input_cost_per_token, output=body.output_cost_per_token)


def usage_and_cost(body: CostIn) -> tuple[Usage, Decimal | None]:
    """The usage of a cost request and its explicit cost (None: price it from the table)."""
    tokens_given = _given(body, *TOKEN_FIELDS)
    texts_given = _given(body, "input_text", "output_text")
    if body.completion is not None:
        extra = _given(body, "model", *TOKEN_FIELDS, "input_text", "output_text")
        if extra:
            raise InvalidInput(f"completion cannot be combined with {', '.join(extra)}")
        usage = usage_from_completion(body.completion)
    else:
        if body.model is None:
            raise InvalidInput("give a completion, or a model with texts, token counts or a cost")
        model = body.model  # checked once, by the schema (schemas.ModelName)
        if texts_given:
            if tokens_given:
                raise InvalidInput("give either input_text/output_text or token counts, not both")
            if len(texts_given) == 1:
                raise InvalidInput("input_text and output_text must be given together")
            usage = usage_from_texts(model, body.input_text, body.output_text)
        elif tokens_given:
            usage = usage_of_counts(model, *(getattr(body, name) or 0 for name in TOKEN_FIELDS))
        elif body.cost is not None:
            usage = Usage(model, 0, 0)
        else:
            raise InvalidInput("give input_text and output_text, prompt_tokens and completion_tokens, or a cost")

    price = explicit_price(usage.model, body)
    if body.cost is not None:
        if price is not None:
            raise InvalidInput("give either cost or per-token prices, not both")
        return usage, body.cost
    if price is not None:
        if not (texts_given or tokens_given or body.completion is not None):
            raise InvalidInput("per-token prices need token counts, texts or a completion")
        return usage, pricing.cost_of_usage(usage, price)
    return usage, None


def fingerprint(user_id: str, body: CostIn) -> str:
    """sha256 of the canonical JSON of (user, body): sorted keys, nulls dropped, exact numbers."""
    canonical = dumps({"user": user_id, "body": body.model_dump(exclude_none=True)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Quote(NamedTuple):
    usage: Usage
    prompt_cost: Decimal
    completion_cost: Decimal

    @property
    def cost(self) -> Decimal:
        return self.prompt_cost + self.completion_cost


def quote(body: QuoteIn) -> Quote:
    """Tokens and cost of a call, priced from the table or the body's per-token prices."""
    model = body.model
    if body.messages is not None:
        extra = _given(body, *TOKEN_FIELDS)
        if extra:
            raise InvalidInput(f"messages cannot be combined with {', '.join(extra)}")
        completion = 0 if body.output_text is None else tokens.count_text_tokens(model, body.output_text)
        usage = prompt_usage(model, body.messages)._replace(completion_tokens=completion)
    else:
        if body.output_text is not None:
            raise InvalidInput("output_text goes with messages; with token counts give completion_tokens")
        if body.prompt_tokens is None and body.completion_tokens is None:
            raise InvalidInput("give prompt_tokens and completion_tokens, or messages")
        usage = usage_of_counts(model, *(getattr(body, name) or 0 for name in TOKEN_FIELDS))
    price = explicit_price(model, body) or pricing.get_price(model)
    prompt_cost = pricing.cost_of_usage(usage._replace(completion_tokens=0), price)
    completion_cost = pricing.cost_of_usage(Usage(model, 0, usage.completion_tokens), price)
    return Quote(usage, prompt_cost, completion_cost)


def estimated_cost(body: CheckIn) -> tuple[Decimal, int]:
    """What a /check request asks room for: its estimated_cost, or messages priced (+ max_tokens);
    and its tokens (prompt + max_tokens; 0 for an estimated_cost), for token limits."""
    if body.estimated_cost is not None:
        extra = _given(body, "model", "messages", "max_tokens")
        if extra:
            raise InvalidInput(f"estimated_cost cannot be combined with {', '.join(extra)}")
        return body.estimated_cost, 0
    if body.model is None or body.messages is None:
        raise InvalidInput("give model and messages (optionally max_tokens), or estimated_cost")
    prompt = prompt_cost_selector(body.model, body.messages)
    tokens_asked = prompt.usage.prompt_tokens + (body.max_tokens or 0)
    if not body.max_tokens:
        return prompt.cost, tokens_asked
    return prompt.cost + pricing.cost_of_usage(Usage(prompt.usage.model, 0, body.max_tokens)), tokens_asked


def reservation_amount(body: ReservationIn) -> tuple[Decimal, str | None, int]:
    """What a reservation holds and for which model: estimated_cost, or the worst case of the call;
    and the tokens it holds on token limits (prompt + max_tokens; 0 with estimated_cost).

    The worst case is the prompt (counted with tiktoken) plus max_tokens at the output price;
    a model without a price needs estimated_cost (UnknownModel otherwise, never a $0 hold).
    """
    if body.estimated_cost is not None:
        extra = _given(body, "messages", "max_tokens")
        if extra:
            raise InvalidInput(f"estimated_cost cannot be combined with {', '.join(extra)}")
        return body.estimated_cost, body.model, 0
    if body.model is None or body.messages is None or body.max_tokens is None:
        raise InvalidInput("give model, messages and max_tokens (the worst case is held), or estimated_cost")
    prompt = prompt_usage(body.model, body.messages)
    return (pricing.cost_of_usage(prompt._replace(completion_tokens=body.max_tokens)), prompt.model,
            prompt.prompt_tokens + body.max_tokens)


def worst_case_usage(model: str | None, tokens: int, max_tokens: int | None) -> Usage | None:
    """The usage a check's or a reservation's worst case prices — the prompt plus `max_tokens` completion
    tokens — from the tokens estimated_cost/reservation_amount returned (prompt + max_tokens), to re-price
    it for a fallback model; None for an estimated_cost (no model or no tokens to re-price)."""
    if model is None or not tokens:
        return None
    return Usage(model, tokens - (max_tokens or 0), max_tokens or 0)


def reservation_fingerprint(user_id: str, body: ReservationIn) -> str:
    canonical = dumps({"user": user_id, "body": body.model_dump(exclude_none=True)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_model(body: CostIn, model: str | None) -> CostIn:
    """A settle body without a model means the reservation's model."""
    if body.completion is not None or body.model is not None:
        return body
    if model is None:
        raise InvalidInput("model is required: this reservation was made without one")
    return body.model_copy(update={"model": model})


def read_body(request: HttpRequest, schema: type[BodyT]) -> BodyT:
    """The body as ninja reads a `payload` (same parser, same 400), for a handler that decides first.

    (A settle of a released reservation is a 409 whatever its body: the state is checked before this.)
    """
    try:
        return schema.model_validate(loads(request.body))
    except pydantic.ValidationError as exc:
        raise ValidationError([{**error, "loc": ("body", "payload", *error["loc"])}
                               for error in exc.errors(include_url=False)]) from None
