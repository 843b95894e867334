"""What a call used: tokens from a completion object, from texts, or from messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..base.errors import InvalidInput, Unprocessable
from ..base.money import to_tokens
from ..base.validation import validate_model
from . import tokens

__all__ = ["Usage", "prompt_usage", "usage_from_completion", "usage_from_texts", "usage_of_counts", "validate_model"]


class Usage(NamedTuple):
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_creation_tokens: int = 0


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """Read a key from a dict or an attribute from an object (OpenAI and LiteLLM responses are both)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return obj[key]
    except (KeyError, TypeError, IndexError, AttributeError):
        return getattr(obj, key, default)


def check_cached(prompt_tokens: int, cached_tokens: int) -> None:
    """Cached tokens are the part of the prompt read from the cache: never more than the prompt."""
    if cached_tokens > prompt_tokens:
        raise Unprocessable(
            f"cached_tokens ({cached_tokens}) cannot exceed prompt_tokens ({prompt_tokens}): "
            "cached tokens are part of the prompt"
        )


def usage_of_counts(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                    cache_creation_tokens: int = 0) -> Usage:
    """Usage from token counts the caller gave, checked."""
    check_cached(prompt_tokens, cached_tokens)
    return Usage(model, prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens)


def usage_from_completion(completion: Any) -> Usage:
    """Usage of an OpenAI/LiteLLM-style completion: its `model` and `usage`.

    Reads OpenAI's prompt_tokens/completion_tokens (and prompt_tokens_details.cached_tokens),
    or Anthropic's input_tokens/output_tokens (cache_read_input_tokens, cache_creation_input_tokens).
    """
    model = validate_model(_get(completion, "model"))
    usage = _get(completion, "usage")
    if usage is None:
        raise InvalidInput("completion.usage is missing")
    prompt = _get(usage, "prompt_tokens")
    completion_tokens = _get(usage, "completion_tokens")
    anthropic_style = prompt is None and _get(usage, "input_tokens") is not None
    if anthropic_style:
        prompt = _get(usage, "input_tokens")
        completion_tokens = _get(usage, "output_tokens", 0)
    if prompt is None:
        raise InvalidInput("completion.usage.prompt_tokens is missing")
    prompt = to_tokens(prompt, "usage.prompt_tokens")
    completion_tokens = to_tokens(completion_tokens or 0, "usage.completion_tokens")

    details = _get(usage, "prompt_tokens_details")
    cached = _get(details, "cached_tokens") or _get(usage, "cache_read_input_tokens") or 0
    cached = to_tokens(cached, "usage.cached_tokens")
    creation = to_tokens(_get(usage, "cache_creation_input_tokens") or 0, "usage.cache_creation_input_tokens")
    if anthropic_style:
        # Anthropic's input_tokens exclude cache reads; OpenAI's prompt_tokens include them.
        prompt += cached
    return usage_of_counts(model, prompt, completion_tokens, cached, creation)


def usage_from_texts(model: Any, input_text: Any, output_text: Any) -> Usage:
    """Usage as the provider bills it: input as one user chat message, output as plain completion tokens."""
    model = validate_model(model)
    if not isinstance(input_text, str) or not isinstance(output_text, str):
        raise InvalidInput("input_text and output_text must be strings")
    prompt = tokens.count_message_tokens(model, [{"role": "user", "content": input_text}])
    return Usage(model, prompt, tokens.count_text_tokens(model, output_text))


def prompt_usage(model: Any, messages: Any) -> Usage:
    """Prompt tokens of chat `messages`, with OpenAI's framing."""
    model = validate_model(model)
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise InvalidInput("messages must be a list of {role, content} objects")
    try:
        count = tokens.count_message_tokens(model, list(messages))
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"messages: {exc}") from None
    return Usage(model, count, 0)
